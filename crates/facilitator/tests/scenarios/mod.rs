//! Facilitator scenarios, run against every chain backend (see `embedded.rs` and `anvil.rs`).
//! Every case checks the chain, not just the HTTP answer.

use std::sync::Arc;

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::DevChain;
use bursar_chain::testkit::{self, Fixture, TOKEN_NAME, TokenKind};
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator, TokenSupport, router};
use bursar_protocol::exact_evm::{self, Authorization, ExactEvmPayload};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequirements, Reason, X402Version,
};
use serde_json::{Value, json};

/// The answers' check against the served OpenAPI document, shared with the runtime's tests.
#[path = "../../../runtime/tests/common/openapi.rs"]
pub mod openapi;

pub const PRICE: u64 = 10_000;
pub const PAYER_BALANCE: u64 = 1_000_000;

pub struct Harness {
    pub fixture: Fixture,
    pub facilitator: LocalFacilitator,
    pub url: String,
    pub http: reqwest::Client,
    pub pay_to: Address,
    /// The facilitator's own `/openapi.json`, made strict, once fetched.
    document: tokio::sync::OnceCell<Value>,
    _server: tokio::task::JoinHandle<()>,
}

pub async fn harness(chain: Arc<dyn DevChain>) -> Harness {
    harness_with(chain, TokenKind::BursarUsd).await
}

/// A harness whose token is of `kind`.
pub async fn harness_with(chain: Arc<dyn DevChain>, kind: TokenKind) -> Harness {
    let fixture = testkit::fixture_with(chain.clone(), PAYER_BALANCE, kind).await;
    let settler = testkit::funded_account(&chain).await;
    let facilitator = LocalFacilitator::new(chain.clone(), settler, FacilitatorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(facilitator.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Harness {
        fixture,
        facilitator,
        url,
        http: reqwest::Client::new(),
        pay_to: PrivateKeySigner::random().address(),
        document: tokio::sync::OnceCell::new(),
        _server: server,
    }
}

impl Harness {
    pub fn chain_id(&self) -> u64 {
        self.fixture.chain.chain_id()
    }

    pub fn requirements(&self) -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: Network::Eip155(self.chain_id()),
            amount: Amount::from(PRICE),
            asset: self.fixture.token.address().into(),
            pay_to: self.pay_to.into(),
            max_timeout_seconds: 60,
            extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
        }
    }

    pub async fn now(&self) -> u64 {
        self.fixture
            .chain
            .latest_block()
            .await
            .unwrap()
            .timestamp
            .max(testkit::now_seconds())
    }

    /// A correctly signed authorization for `requirements` (under the domain of its asset),
    /// edited before signing by `edit`.
    pub async fn authorization(
        &self,
        requirements: &PaymentRequirements,
        signer: &PrivateKeySigner,
        edit: impl FnOnce(&mut Authorization),
    ) -> ExactEvmPayload {
        let mut authorization =
            exact_evm::authorization_for(requirements, signer.address(), self.now().await).unwrap();
        edit(&mut authorization);
        // Signed for the requirement's asset, which is the fixture's token unless a case names
        // another.
        let asset = requirements.asset.evm().expect("an EVM asset");
        let domain = exact_evm::token_domain(TOKEN_NAME, "2", self.chain_id(), asset);
        let signature = exact_evm::sign_authorization(signer, &authorization, &domain).unwrap();
        ExactEvmPayload {
            signature,
            authorization,
        }
    }

    pub fn request(
        &self,
        version: X402Version,
        requirements: &PaymentRequirements,
        exact: &ExactEvmPayload,
    ) -> Value {
        let payload = match version {
            X402Version::V2 => PaymentPayload::new_v2(requirements.clone(), None, exact.clone()),
            X402Version::V1 => {
                PaymentPayload::new_v1("exact".into(), requirements.network.clone(), exact.clone())
            }
        };
        FacilitatorRequest {
            version,
            payload,
            requirements: requirements.clone(),
            resource: Some(bursar_protocol::Resource {
                url: "http://seller.test/paid".into(),
                ..Default::default()
            }),
        }
        .to_json_value()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer = response.json().await.unwrap();
        self.check("POST", path, status, &answer).await;
        (status, answer)
    }

    /// The facilitator's `/openapi.json`, made strict ([`openapi::strict`]).
    pub async fn openapi(&self) -> &Value {
        self.document
            .get_or_init(|| async {
                let response = self
                    .http
                    .get(format!("{}/openapi.json", self.url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "GET /openapi.json");
                openapi::strict(&response.json().await.expect("/openapi.json is JSON"))
            })
            .await
    }

    /// Fails the test when `answer` differs from what the served document says of it.
    pub async fn check(&self, method: &str, path: &str, status: u16, answer: &Value) {
        if let Err(mismatch) = openapi::check(self.openapi().await, method, path, status, answer) {
            panic!("{mismatch}\n{answer:#}");
        }
    }

    pub async fn balance(&self, owner: Address) -> U256 {
        self.fixture.token.balance_of(owner).await.unwrap()
    }
}

/// v1 and v2 payments verify and settle, and exactly the price moves.
pub async fn settles_v1_and_v2(chain: Arc<dyn DevChain>) {
    let h = harness(chain).await;
    let requirements = h.requirements();
    let payer = h.fixture.payer.address();
    for (round, version) in [X402Version::V2, X402Version::V1].into_iter().enumerate() {
        let exact = h
            .authorization(&requirements, &h.fixture.payer, |_| {})
            .await;
        let body = h.request(version, &requirements, &exact);
        let (status, verified) = h.post("/verify", &body).await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["isValid"], true, "{verified}");
        assert_eq!(verified["payer"], payer.to_checksum(None));

        let (status, settled) = h.post("/settle", &body).await;
        assert_eq!(status, 200, "{settled}");
        assert_eq!(settled["success"], true, "{settled}");
        let tx = settled["transaction"].as_str().unwrap();
        assert_eq!(tx.len(), 66, "a transaction hash: {tx}");
        let expected_network = match version {
            X402Version::V2 => format!("eip155:{}", h.chain_id()),
            X402Version::V1 => Network::Eip155(h.chain_id()).v1_name(),
        };
        assert_eq!(settled["network"], expected_network);
        let receipt = h
            .fixture
            .chain
            .receipt(tx.parse().unwrap())
            .await
            .unwrap()
            .expect("mined");
        assert!(receipt.success);
        let paid = PRICE * (round as u64 + 1);
        assert_eq!(h.balance(h.pay_to).await, U256::from(paid));
        assert_eq!(h.balance(payer).await, U256::from(PAYER_BALANCE - paid));
    }
    assert_eq!(
        h.facilitator.token_support(h.fixture.token.address()),
        Some(TokenSupport::Settles {
            bytes_signatures: true
        }),
        "BursarUSD has both forms"
    );
    let (status, supported) = {
        let response = h
            .http
            .get(format!("{}/supported", h.url))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    assert_eq!(
        supported["kinds"].as_array().unwrap().len(),
        2,
        "{supported}"
    );
    assert_eq!(
        supported["signers"]["eip155:*"][0],
        h.facilitator.sender_address().to_checksum(None)
    );
}

/// Each invalid payment gets its own reason from /verify and /settle, and no money moves.
pub async fn invalid_payments_get_their_reason_and_move_nothing(chain: Arc<dyn DevChain>) {
    let h = harness(chain.clone()).await;
    let requirements = h.requirements();
    let payer = h.fixture.payer.address();
    let now = h.now().await;
    let stranger = PrivateKeySigner::random();

    // A payer with less than the price.
    let poor = PrivateKeySigner::random();
    h.fixture
        .token
        .mint(&h.fixture.owner, poor.address(), U256::from(PRICE - 1))
        .await
        .unwrap();

    // A nonce that is already used: settle one payment, then present another with the same nonce.
    let spent = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let (_, settled) = h
        .post(
            "/settle",
            &h.request(X402Version::V2, &requirements, &spent),
        )
        .await;
    assert_eq!(settled["success"], true, "{settled}");
    let payer_after_setup = h.balance(payer).await;
    let payee_after_setup = h.balance(h.pay_to).await;
    assert_eq!(payee_after_setup, U256::from(PRICE));

    let mut wrong_network = requirements.clone();
    wrong_network.network = Network::Eip155(h.chain_id() + 1);

    let mut cases: Vec<(&str, Value, Reason)> = Vec::new();
    let forged = {
        // Signed by a stranger, but claiming the payer's funds.
        let mut exact = h.authorization(&requirements, &stranger, |_| {}).await;
        exact.authorization.from = payer;
        exact
    };
    cases.push((
        "forged signature",
        h.request(X402Version::V2, &requirements, &forged),
        Reason::INVALID_SIGNATURE,
    ));
    let wrong_recipient = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.to = stranger.address()
        })
        .await;
    cases.push((
        "wrong recipient",
        h.request(X402Version::V2, &requirements, &wrong_recipient),
        Reason::RECIPIENT_MISMATCH,
    ));
    let expired = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.valid_before = U256::from(now + 2)
        })
        .await;
    cases.push((
        "expired",
        h.request(X402Version::V1, &requirements, &expired),
        Reason::VALID_BEFORE,
    ));
    let early = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.valid_after = U256::from(now + 3600)
        })
        .await;
    cases.push((
        "not yet valid",
        h.request(X402Version::V2, &requirements, &early),
        Reason::VALID_AFTER,
    ));
    let short = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.value = Amount::from(PRICE - 1)
        })
        .await;
    cases.push((
        "amount mismatch",
        h.request(X402Version::V2, &requirements, &short),
        Reason::VALUE_MISMATCH,
    ));
    let other_chain = h
        .authorization(&wrong_network, &h.fixture.payer, |_| {})
        .await;
    cases.push((
        "wrong network",
        h.request(X402Version::V2, &wrong_network, &other_chain),
        Reason::INVALID_NETWORK,
    ));
    let broke = h.authorization(&requirements, &poor, |_| {}).await;
    cases.push((
        "insufficient balance",
        h.request(X402Version::V2, &requirements, &broke),
        Reason::INSUFFICIENT_FUNDS,
    ));
    let reused = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.nonce = spent.authorization.nonce;
            a.valid_before += U256::from(1);
        })
        .await;
    cases.push((
        "reused nonce",
        h.request(X402Version::V1, &requirements, &reused),
        Reason::NONCE_ALREADY_USED,
    ));

    for (name, body, reason) in &cases {
        let (status, verified) = h.post("/verify", body).await;
        assert_eq!(status, 200, "{name}: {verified}");
        assert_eq!(verified["isValid"], false, "{name}: {verified}");
        assert_eq!(
            verified["invalidReason"],
            reason.as_str(),
            "{name}: {verified}"
        );
        let (status, settled) = h.post("/settle", body).await;
        assert_eq!(status, 200, "{name}: {settled}");
        assert_eq!(settled["success"], false, "{name}: {settled}");
        assert_eq!(settled["errorReason"], reason.as_str(), "{name}: {settled}");
        assert_eq!(settled["transaction"], "", "{name}: {settled}");
    }
    assert_eq!(
        h.balance(payer).await,
        payer_after_setup,
        "the payer lost nothing"
    );
    assert_eq!(
        h.balance(h.pay_to).await,
        payee_after_setup,
        "the payee gained nothing"
    );
    assert_eq!(h.balance(stranger.address()).await, U256::ZERO);
    assert_eq!(h.balance(poor.address()).await, U256::from(PRICE - 1));
}

/// 100 identical concurrent /settle calls: one transfer, one transaction, one hash for all.
pub async fn concurrent_identical_settles_make_one_transfer(chain: Arc<dyn DevChain>) {
    const CALLERS: usize = 100;
    let h = Arc::new(harness(chain.clone()).await);
    let requirements = h.requirements();
    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let body = Arc::new(h.request(X402Version::V2, &requirements, &exact));
    let sender = h.facilitator.sender_address();
    let nonce_before = chain.transaction_count(sender).await.unwrap();

    let mut calls = Vec::new();
    for _ in 0..CALLERS {
        let (h, body) = (h.clone(), body.clone());
        calls.push(tokio::spawn(async move { h.post("/settle", &body).await }));
    }
    let mut hashes = std::collections::BTreeSet::new();
    for call in calls {
        let (status, settled) = call.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(settled["success"], true, "{settled}");
        hashes.insert(settled["transaction"].as_str().unwrap().to_string());
    }
    assert_eq!(
        hashes.len(),
        1,
        "every caller gets the same transaction: {hashes:?}"
    );
    assert_eq!(
        chain.transaction_count(sender).await.unwrap(),
        nonce_before + 1,
        "exactly one transaction was sent"
    );
    assert_eq!(h.balance(h.pay_to).await, U256::from(PRICE));
    assert_eq!(
        h.balance(h.fixture.payer.address()).await,
        U256::from(PAYER_BALANCE - PRICE)
    );

    // Later duplicates get the recorded outcome, not a second transfer.
    let (_, again) = h.post("/settle", &body).await;
    assert_eq!(
        again["transaction"].as_str().unwrap(),
        hashes.iter().next().unwrap()
    );
    assert_eq!(
        chain.transaction_count(sender).await.unwrap(),
        nonce_before + 1
    );
}

/// Garbage bodies get a 400 with a JSON explanation; nothing is settled.
pub async fn malformed_requests_get_400(chain: Arc<dyn DevChain>) {
    let h = harness(chain.clone()).await;
    let requirements = h.requirements();
    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let good = h.request(X402Version::V2, &requirements, &exact);
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"{\"x402Version\": 2}".to_vec(),
        vec![0xff, 0xfe, 0x00],
    ];
    let mutations: Vec<(&str, Value)> = vec![
        ("/paymentPayload/x402Version", json!(99)),
        ("/paymentRequirements/amount", json!("1".repeat(100))),
        ("/paymentRequirements/amount", json!(10_000)),
        ("/paymentRequirements/amount", json!("-5")),
        ("/paymentRequirements/network", json!(12)),
        ("/paymentRequirements/maxTimeoutSeconds", json!("sixty")),
        ("/paymentPayload/accepted", json!(null)),
    ];
    for (pointer, value) in mutations {
        let mut body = good.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        bodies.push(body.to_string().into_bytes());
    }
    for body in bodies {
        for path in ["/verify", "/settle"] {
            let response = h
                .http
                .post(format!("{}{path}", h.url))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let document: Value = response.json().await.expect("a JSON body");
            h.check("POST", path, status, &document).await;
            assert_eq!(
                status,
                400,
                "{path} {:?}: {document}",
                String::from_utf8_lossy(&body)
            );
            assert!(document["error"].is_string(), "{document}");
        }
    }
    // Just over the limit: small enough to fit in socket buffers, so the early 413 cannot race
    // the upload.
    let huge = vec![b' '; bursar_protocol::types::BODY_BYTES_MAX + 1024];
    // A client of its own: the server closes a connection whose body it refused, and that
    // connection must not be reused for the requests below.
    let response = reqwest::Client::new()
        .post(format!("{}/verify", h.url))
        .header("connection", "close")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // The payload in the original request is intact and still settles: nothing was consumed.
    let (_, settled) = h.post("/settle", &good).await;
    assert_eq!(settled["success"], true, "{settled}");
    assert_eq!(h.balance(h.pay_to).await, U256::from(PRICE));
}

/// The one way a payment reported valid can fail to settle: between /verify and /settle the
/// payer spends the balance elsewhere (here, another payment for almost all of it). /verify read
/// the balance at the chain head, so it was right when it answered; /settle reads it again and
/// refuses with nothing broadcast and nothing moved. Without that, a valid payment settles.
pub async fn verified_then_drained_is_refused_without_a_transaction(chain: Arc<dyn DevChain>) {
    let h = harness(chain.clone()).await;
    let requirements = h.requirements();
    let payer = h.fixture.payer.address();
    let first = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let body = h.request(X402Version::V2, &requirements, &first);
    let (status, verified) = h.post("/verify", &body).await;
    assert_eq!(
        (status, &verified["isValid"]),
        (200, &json!(true)),
        "{verified}"
    );

    // The payer moves the funds: a second authorization for everything but PRICE - 1.
    let drain_to = PrivateKeySigner::random().address();
    let mut drain_requirements = requirements.clone();
    drain_requirements.pay_to = drain_to.into();
    drain_requirements.amount = Amount::from(PAYER_BALANCE - (PRICE - 1));
    let drain = h
        .authorization(&drain_requirements, &h.fixture.payer, |_| {})
        .await;
    let (_, drained) = h
        .post(
            "/settle",
            &h.request(X402Version::V2, &drain_requirements, &drain),
        )
        .await;
    assert_eq!(drained["success"], true, "{drained}");
    let sender = h.facilitator.sender_addresses()[0];
    let nonce_before = chain.transaction_count(sender).await.unwrap();

    let (_, settled) = h.post("/settle", &body).await;
    assert_eq!(settled["success"], false, "{settled}");
    assert_eq!(
        settled["errorReason"],
        Reason::INSUFFICIENT_FUNDS.as_str(),
        "{settled}"
    );
    assert_eq!(settled["transaction"], "", "{settled}");
    assert_eq!(
        chain.transaction_count(sender).await.unwrap(),
        nonce_before,
        "nothing broadcast"
    );
    assert_eq!(h.balance(h.pay_to).await, U256::ZERO);
    assert_eq!(h.balance(payer).await, U256::from(PRICE - 1));
    // Verified again now, it is invalid for the same reason.
    let (_, reverified) = h.post("/verify", &body).await;
    assert_eq!(reverified["isValid"], false, "{reverified}");
    assert_eq!(
        reverified["invalidReason"],
        Reason::INSUFFICIENT_FUNDS.as_str()
    );
}

/// A token with EIP-3009 exactly as the EIP writes it (only the `(v, r, s)` functions): /verify
/// says valid and /settle settles through `transferWithAuthorization(..., v, r, s)`, also for a
/// signature whose recovery byte is 0/1; exactly the price moves. A smart-wallet (non-65-byte)
/// signature is refused at /verify and moves nothing.
pub async fn eip3009_only_token_settles(chain: Arc<dyn DevChain>) {
    let h = harness_with(chain.clone(), TokenKind::Eip3009Only).await;
    let requirements = h.requirements();
    let payer = h.fixture.payer.address();
    let token = h.fixture.token.address();
    assert_eq!(h.facilitator.token_support(token), None);
    for round in 1..=2u64 {
        let mut exact = h
            .authorization(&requirements, &h.fixture.payer, |_| {})
            .await;
        if round == 2 {
            // The same signature with the recovery byte as 0/1 (some signers produce it).
            let mut signature = exact.signature.to_vec();
            signature[64] -= 27;
            exact.signature = signature.into();
        }
        let body = h.request(X402Version::V2, &requirements, &exact);
        let (status, verified) = h.post("/verify", &body).await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["isValid"], true, "round {round}: {verified}");
        assert_eq!(verified["payer"], payer.to_checksum(None));
        let (status, settled) = h.post("/settle", &body).await;
        assert_eq!(status, 200, "{settled}");
        assert_eq!(settled["success"], true, "round {round}: {settled}");
        let tx = settled["transaction"].as_str().unwrap();
        let receipt = h
            .fixture
            .chain
            .receipt(tx.parse().unwrap())
            .await
            .unwrap()
            .expect("mined");
        assert!(receipt.success);
        assert_eq!(receipt.logs.first().map(|log| log.address), Some(token));
        assert_eq!(h.balance(h.pay_to).await, U256::from(PRICE * round));
        assert_eq!(
            h.balance(payer).await,
            U256::from(PAYER_BALANCE - PRICE * round)
        );
    }
    assert_eq!(
        h.facilitator.token_support(token),
        Some(TokenSupport::Settles {
            bytes_signatures: false
        })
    );

    // A smart wallet's signature (ERC-1271 / ERC-6492 data) could only go to the bytes overload,
    // which this token lacks: refused at /verify and at /settle, nothing sent.
    let mut smart = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    smart.signature = vec![0x5a; 96].into();
    let body = h.request(X402Version::V2, &requirements, &smart);
    let sender = h.facilitator.sender_address();
    let nonce_before = chain.transaction_count(sender).await.unwrap();
    let (_, verified) = h.post("/verify", &body).await;
    assert_eq!(verified["isValid"], false, "{verified}");
    assert_eq!(
        verified["invalidReason"],
        Reason::INVALID_SIGNATURE.as_str(),
        "{verified}"
    );
    assert!(
        verified["invalidMessage"]
            .as_str()
            .unwrap()
            .contains("contract-wallet signatures are not supported"),
        "{verified}"
    );
    let (_, settled) = h.post("/settle", &body).await;
    assert_eq!(settled["success"], false, "{settled}");
    assert_eq!(settled["transaction"], "");
    assert_eq!(chain.transaction_count(sender).await.unwrap(), nonce_before);
    assert_eq!(h.balance(h.pay_to).await, U256::from(2 * PRICE));
}

/// Payments in an ERC-20 without EIP-3009, or at an address without code, are refused at /verify
/// (with and without grouped reads) and at /settle with `invalid_exact_evm_unsupported_token`,
/// and nothing moves.
pub async fn token_without_eip3009_is_refused(chain: Arc<dyn DevChain>) {
    let h = harness_with(chain.clone(), TokenKind::PlainErc20).await;
    let evm: Arc<dyn bursar_chain::EvmChain> = chain.clone();
    let grouped = LocalFacilitator::new(
        evm,
        testkit::funded_account(&chain).await,
        FacilitatorConfig {
            group_reads: true,
            ..Default::default()
        },
    );
    let token = h.fixture.token.address();
    let payer = h.fixture.payer.address();
    let mut no_code = h.requirements();
    no_code.asset = Address::repeat_byte(0x42).into();
    let cases = [
        (h.requirements(), "does not implement EIP-3009"),
        (no_code, "there is no contract"),
    ];
    let sender = h.facilitator.sender_address();
    let nonce_before = chain.transaction_count(sender).await.unwrap();
    for (requirements, why) in &cases {
        // Twice: learned on the first payment, answered from what was learned on the second.
        for _ in 0..2 {
            let exact = h
                .authorization(requirements, &h.fixture.payer, |_| {})
                .await;
            let body = h.request(X402Version::V2, requirements, &exact);
            let (status, verified) = h.post("/verify", &body).await;
            assert_eq!(status, 200, "{verified}");
            assert_eq!(verified["isValid"], false, "{verified}");
            assert_eq!(
                verified["invalidReason"],
                Reason::UNSUPPORTED_TOKEN.as_str(),
                "{verified}"
            );
            let message = verified["invalidMessage"].as_str().unwrap();
            assert!(message.contains(why), "{message}");
            assert!(message.contains("cannot settle"), "{message}");
            assert_eq!(verified["payer"], payer.to_checksum(None));

            let request = FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap();
            let together = grouped.verify(&request).await;
            assert!(!together.is_valid);
            assert_eq!(together.invalid_reason, Some(Reason::UNSUPPORTED_TOKEN));
            assert_eq!(together.invalid_message.as_deref(), Some(message));

            let (status, settled) = h.post("/settle", &body).await;
            assert_eq!(status, 200, "{settled}");
            assert_eq!(settled["success"], false, "{settled}");
            assert_eq!(
                settled["errorReason"],
                Reason::UNSUPPORTED_TOKEN.as_str(),
                "{settled}"
            );
            assert_eq!(settled["transaction"], "");
        }
    }
    assert!(matches!(
        h.facilitator.token_support(token),
        Some(TokenSupport::Unsupported { .. })
    ));
    assert!(matches!(
        grouped.token_support(token),
        Some(TokenSupport::Unsupported { .. })
    ));
    assert_eq!(
        chain.transaction_count(sender).await.unwrap(),
        nonce_before,
        "nothing broadcast"
    );
    assert_eq!(h.balance(payer).await, U256::from(PAYER_BALANCE));
    assert_eq!(h.balance(h.pay_to).await, U256::ZERO);
}

/// A token with only the `bytes signature` form of `transferWithAuthorization` (not EIP-3009's
/// `(v, r, s)` one, through which this facilitator settles EOA signatures) is refused at /verify
/// and /settle with `invalid_exact_evm_unsupported_token`, though the bytes form would take the
/// payment; nothing moves.
pub async fn bytes_only_token_is_refused(chain: Arc<dyn DevChain>) {
    let h = harness_with(chain.clone(), TokenKind::BytesOnly).await;
    let requirements = h.requirements();
    let token = h.fixture.token.address();
    let sender = h.facilitator.sender_address();
    let nonce_before = chain.transaction_count(sender).await.unwrap();
    for _ in 0..2 {
        let exact = h
            .authorization(&requirements, &h.fixture.payer, |_| {})
            .await;
        // The bytes form alone would settle it.
        let bytes_form = chain
            .call(bursar_chain::CallRequest {
                from: Some(sender),
                to: Some(token),
                data: bursar_contracts::transfer_with_authorization_bytes_call(
                    &exact.authorization,
                    &exact.signature,
                ),
                value: U256::ZERO,
            })
            .await
            .unwrap();
        assert!(
            matches!(bytes_form, bursar_chain::CallOutcome::Success(_)),
            "{bytes_form:?}"
        );
        let body = h.request(X402Version::V2, &requirements, &exact);
        let (_, verified) = h.post("/verify", &body).await;
        assert_eq!(verified["isValid"], false, "{verified}");
        assert_eq!(
            verified["invalidReason"],
            Reason::UNSUPPORTED_TOKEN.as_str(),
            "{verified}"
        );
        let message = verified["invalidMessage"].as_str().unwrap();
        assert!(
            message.contains("lacks EIP-3009's transferWithAuthorization"),
            "{message}"
        );
        let (_, settled) = h.post("/settle", &body).await;
        assert_eq!(settled["success"], false, "{settled}");
        assert_eq!(settled["errorReason"], Reason::UNSUPPORTED_TOKEN.as_str());
        assert_eq!(settled["transaction"], "");
    }
    assert!(matches!(
        h.facilitator.token_support(token),
        Some(TokenSupport::Unsupported { .. })
    ));
    assert_eq!(chain.transaction_count(sender).await.unwrap(), nonce_before);
    assert_eq!(
        h.balance(h.fixture.payer.address()).await,
        U256::from(PAYER_BALANCE)
    );
    assert_eq!(h.balance(h.pay_to).await, U256::ZERO);
}

#[macro_export]
macro_rules! facilitator_scenarios {
    ($make:expr) => {
        $crate::facilitator_scenarios!(@cases $make;
            settles_v1_and_v2,
            invalid_payments_get_their_reason_and_move_nothing,
            concurrent_identical_settles_make_one_transfer,
            malformed_requests_get_400,
            verified_then_drained_is_refused_without_a_transaction,
            eip3009_only_token_settles,
            token_without_eip3009_is_refused,
            bytes_only_token_is_refused
        );
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let chain: ::std::sync::Arc<dyn ::bursar_chain::DevChain> = $make;
                scenarios::$case(chain).await;
            }
        )*
    };
}
