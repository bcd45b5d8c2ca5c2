//! Compensation for failed steps, end to end over the runtime's API on the embedded chain, on
//! SQLite and PostgreSQL: a seller that takes the payment header and never settles gets its
//! authorization cancelled on chain (nothing moves, the reservation is voided), a settled payment
//! becomes a refund claim with its evidence, and the ledger, the decision trace and the chain
//! agree.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolEvent;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use bursar_chain::DevChain;
use bursar_chain::testkit::{self, TOKEN_NAME};
use bursar_contracts::BursarUSD;
use bursar_protocol::exact_evm::ExactEvmPayload;
use bursar_protocol::{
    Amount, Network, PaymentPayload, PaymentRequired, PaymentRequirements, Resource, X402Version,
};
use bursar_store::runtime::{EntryKind, TransferState};
use common::{Network_, PRICE, RuntimeUnderTest, network, runtime};
use http::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Every case finishes well within this.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the hostile seller kept of the payments it was sent.
type Kept = Arc<Mutex<Vec<ExactEvmPayload>>>;

/// A seller that asks for payment, takes the payment header and answers without ever settling:
/// `/content` with 200 and content, `/broken` with 500.
async fn hostile_seller(network: &Network_) -> (String, Address, Kept) {
    let payee = alloy_signer_local::PrivateKeySigner::random().address();
    let token = network.token.address();
    let chain_id = network.chain.chain_id();
    let kept: Kept = Arc::default();
    let handler = |status: StatusCode| {
        let kept = kept.clone();
        move |headers: HeaderMap| {
            let kept = kept.clone();
            async move {
                if let Some(header) = headers.get("payment-signature") {
                    let payload = PaymentPayload::from_header(header.to_str().unwrap()).unwrap();
                    kept.lock()
                        .unwrap()
                        .push(payload.payload.exact_evm().unwrap().clone());
                    return (status, axum::Json(json!({"content": "kept your money"})))
                        .into_response();
                }
                let required = PaymentRequired {
                    version: X402Version::V2,
                    error: Some("payment required".into()),
                    resource: Resource::default(),
                    accepts: vec![PaymentRequirements {
                        scheme: "exact".into(),
                        network: Network::Eip155(chain_id),
                        amount: Amount::from(PRICE),
                        asset: token.into(),
                        pay_to: payee.into(),
                        max_timeout_seconds: 600,
                        extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
                    }],
                    extensions: None,
                };
                (
                    StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", required.to_v2_header())],
                    String::new(),
                )
                    .into_response()
            }
        }
    };
    let app = Router::new()
        .route("/content", get(handler(StatusCode::OK)))
        .route("/broken", get(handler(StatusCode::INTERNAL_SERVER_ERROR)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, payee, kept)
}

struct Agent {
    session: String,
    token: String,
    address: Address,
}

const START_BALANCE: u64 = 1_000_000;

/// A wallet with tokens (and, when `gas`, native currency for a cancel), a grant and a session.
async fn agent(rt: &RuntimeUnderTest, network: &Network_, name: &str, gas: bool) -> Agent {
    let (wallet, address) = rt.funded_wallet(network, name, START_BALANCE).await;
    if gas {
        network
            .chain
            .set_native_balance(address, U256::from(10u64).pow(U256::from(17u64)))
            .await
            .unwrap();
    }
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    Agent {
        session,
        token,
        address,
    }
}

impl Agent {
    async fn fetch(&self, rt: &RuntimeUnderTest, url: &str, step: &str) -> (u16, Value) {
        rt.call(
            Method::POST,
            &format!("/v1/sessions/{}/fetch", self.session),
            Some(&self.token),
            Some(json!({"url": url, "step": step})),
        )
        .await
    }

    async fn fail(&self, rt: &RuntimeUnderTest, body: Value) -> (u16, Value) {
        rt.call(
            Method::POST,
            &format!("/v1/sessions/{}/failures", self.session),
            Some(&self.token),
            Some(body),
        )
        .await
    }
}

/// The ledger entry kinds written for one transfer, in order.
async fn entry_kinds(rt: &RuntimeUnderTest, transfer: &str) -> Vec<EntryKind> {
    rt.runtime
        .store()
        .entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.transfer_id.as_deref() == Some(transfer))
        .map(|entry| entry.kind)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn balance(network: &Network_, address: Address) -> u64 {
    u64::try_from(network.balance(address).await).unwrap()
}

/// The transfer a fetch's payment reserved.
fn transfer_id_of(fetched: &Value) -> String {
    fetched["payment"]["transferId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `bursar ledger reconcile` finds no difference between the ledger and the chain; its report.
async fn assert_reconciled(rt: &RuntimeUnderTest) -> bursar_runtime::reconcile::Report {
    let report = bursar_runtime::reconcile::reconcile(&rt.runtime)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
    report
}

/// The hostile seller submits the first authorization it kept, on chain, from an account of its
/// own (the transaction's hash, or the node's refusal).
async fn seller_settles_kept(
    network: &Network_,
    kept: &Kept,
) -> Result<B256, bursar_chain::ChainError> {
    let chain: Arc<dyn DevChain> = network.chain.clone();
    let settler = testkit::funded_account(&chain).await;
    let payload = kept.lock().unwrap()[0].clone();
    network
        .token
        .submit_transfer_with_authorization(
            &settler,
            &payload.authorization,
            &payload.signature,
            None,
        )
        .await
}

/// The acceptance case: a failed step whose unsettled authorization is cancelled on chain
/// (balances unchanged, reservation voided).
pub async fn unsettled_authorization_is_cancelled_on_chain(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "cancel", true).await;
        let url = format!("{seller}/content");

        let (status, fetched) = agent.fetch(&rt, &url, "lookup").await;
        assert_eq!(status, 200, "{fetched}");
        assert_eq!(fetched["payment"]["state"], "pending", "{fetched}");
        let transfer_id = transfer_id_of(&fetched);
        let body = fetched["body"].as_str().unwrap().to_string();
        assert_eq!(
            kept.lock().unwrap().len(),
            1,
            "the seller holds a signed authorization"
        );
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);

        // Another agent's token cannot mark this session failed.
        let other = agent_in(&rt, &network, "other").await;
        let (status, refused) = rt
            .call(
                Method::POST,
                &format!("/v1/sessions/{}/failures", agent.session),
                Some(&other.token),
                Some(json!({"step": "lookup", "reason": "not mine"})),
            )
            .await;
        assert_eq!(status, 403, "{refused}");
        let (status, _) = rt
            .call(
                Method::POST,
                &format!("/v1/sessions/{}/failures", agent.session),
                Some("bst_forged_token"),
                Some(json!({"reason": "forged"})),
            )
            .await;
        assert_eq!(status, 401);
        // A reason is required; an unknown step is a 404.
        let (status, _) = agent.fail(&rt, json!({"step": "lookup"})).await;
        assert_eq!(status, 400);
        let (status, _) = agent
            .fail(&rt, json!({"step": "nope", "reason": "x"}))
            .await;
        assert_eq!(status, 404);

        let (status, marked) = agent
            .fail(
                &rt,
                json!({"step": "lookup", "reason": "the answer was useless"}),
            )
            .await;
        assert_eq!(status, 200, "{marked}");
        let records = marked["compensations"].as_array().unwrap();
        assert_eq!(records.len(), 1, "{marked}");
        let record = &records[0];
        assert_eq!(record["outcome"], "cancelled", "{record}");
        assert_eq!(record["final"], true);
        assert_eq!(record["transferId"], transfer_id.as_str());
        assert_eq!(record["requestedBy"], "agent");
        assert_eq!(record["amountAtomic"], PRICE.to_string());
        assert_eq!(record["transfer"]["state"], "voided");
        assert_eq!(record["transfer"]["voidReason"], "cancelled");
        // The evidence: what was asked, what came back, what was signed.
        let evidence = &record["evidence"];
        assert_eq!(evidence["step"], "lookup");
        assert_eq!(evidence["request"]["method"], "GET");
        assert_eq!(evidence["request"]["url"], url.as_str());
        assert_eq!(evidence["response"]["status"], 200);
        assert_eq!(
            evidence["response"]["bodySha256"],
            sha256_hex(body.as_bytes()).as_str()
        );
        let signed = kept.lock().unwrap()[0].authorization.clone();
        assert_eq!(
            evidence["authorization"]["nonce"],
            format!("{:#x}", signed.nonce).as_str()
        );
        assert_eq!(evidence["authorization"]["value"], PRICE.to_string());
        assert_eq!(
            evidence["authorization"]["validAfter"],
            signed.valid_after.to_string().as_str()
        );
        assert!(
            !evidence["request"]["headers"]
                .to_string()
                .to_ascii_lowercase()
                .contains("authorization\""),
            "no credentials in the evidence: {evidence}"
        );

        // The cancel transaction is mined and shows AuthorizationCanceled for the nonce.
        let cancel: B256 = record["cancelTxHash"].as_str().unwrap().parse().unwrap();
        let receipt = network.chain.receipt(cancel).await.unwrap().unwrap();
        assert!(receipt.success);
        assert!(receipt.logs.iter().any(|log| {
            log.address == network.token.address()
                && log.topics[0] == BursarUSD::AuthorizationCanceled::SIGNATURE_HASH
                && log.topics[1] == agent.address.into_word()
                && log.topics[2] == signed.nonce
        }));
        assert!(
            network
                .token
                .authorization_state(agent.address, signed.nonce)
                .await
                .unwrap()
        );

        // Nothing moved; the reservation is released.
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
        let transfer = rt
            .runtime
            .store()
            .transfer(&transfer_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(transfer.state, TransferState::Voided);
        assert_eq!(transfer.void_reason.as_deref(), Some("cancelled"));
        let session = rt.runtime.session(&agent.session).await.unwrap();
        assert_eq!(session.reserved, Amount::ZERO);
        assert_eq!(session.posted, Amount::ZERO);
        assert!(
            session.closed_at_ms.is_none(),
            "a failed step leaves the session open"
        );
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Void, EntryKind::Compensate]
        );
        // The decision trace explains it.
        let decisions = rt
            .runtime
            .store()
            .decision_store()
            .decisions_for(&transfer_id)
            .await
            .unwrap();
        assert!(
            decisions
                .iter()
                .any(|d| d.reason.as_deref() == Some("compensation_cancelled")),
            "{decisions:?}"
        );

        // The seller tries the stale authorization on chain: refused, nothing moves.
        let submitted = seller_settles_kept(&network, &kept).await;
        if let Ok(hash) = submitted {
            let receipt = testkit::mined(network.chain.as_ref(), hash).await;
            assert!(!receipt.success, "the cancelled authorization settled");
        }
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);

        // Marking again returns the same record; the ledger does not grow.
        let (status, again) = agent
            .fail(&rt, json!({"step": "lookup", "reason": "again"}))
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["compensations"][0]["id"], record["id"]);
        assert_eq!(
            again["compensations"][0]["reason"],
            "the answer was useless"
        );
        assert_eq!(entry_kinds(&rt, &transfer_id).await.len(), 3);

        // Listings: the agent sees its own, the operator sees all.
        let (status, listed) = rt
            .call(
                Method::GET,
                &format!("/v1/sessions/{}/compensations", agent.session),
                Some(&agent.token),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(listed["compensations"][0]["id"], record["id"]);
        let (status, _) = rt
            .call(Method::GET, "/v1/compensations", Some(&agent.token), None)
            .await;
        assert_eq!(status, 403);
        let (status, all) = rt.operator(Method::GET, "/v1/compensations", None).await;
        assert_eq!(status, 200);
        assert_eq!(all["compensations"].as_array().unwrap().len(), 1);

        let report = assert_reconciled(&rt).await;
        assert_eq!(report.voided_total, Amount::from(PRICE));
    })
    .await
    .expect("the case finishes in time");
}

/// A session with tokens and gas, without the step machinery (for the other-agent check).
async fn agent_in(rt: &RuntimeUnderTest, network: &Network_, name: &str) -> Agent {
    agent(rt, network, name, false).await
}

/// A payment that did settle: the failure becomes a refund claim with the evidence; the money
/// stays moved and the ledger posted. Without a step, the session is closed.
pub async fn settled_payment_becomes_a_refund_claim(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let agent = agent(&rt, &network, "refund", true).await;
        let url = format!("{}/paid", network.seller_url);
        let (status, fetched) = agent.fetch(&rt, &url, "buy").await;
        assert_eq!(status, 200, "{fetched}");
        assert_eq!(fetched["payment"]["state"], "posted", "{fetched}");
        let transfer_id = transfer_id_of(&fetched);
        let tx = fetched["payment"]["txHash"].as_str().unwrap().to_string();

        let (status, marked) = rt
            .operator(
                Method::POST,
                &format!("/v1/sessions/{}/failures", agent.session),
                Some(json!({"reason": "the run failed"})),
            )
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["outcome"], "refund_claim", "{record}");
        assert_eq!(record["requestedBy"], "operator");
        assert_eq!(record["settleTxHash"], tx.as_str());
        assert!(record["cancelTxHash"].is_null());
        assert!(
            record["message"]
                .as_str()
                .unwrap()
                .contains("claim a refund of 0.01 USDC"),
            "{record}"
        );
        let evidence = &record["evidence"];
        assert_eq!(evidence["step"], "buy");
        assert_eq!(evidence["request"]["url"], url.as_str());
        assert_eq!(evidence["response"]["status"], 200);
        assert_eq!(evidence["receipt"]["transaction"], tx.as_str());
        assert_eq!(evidence["receipt"]["success"], true);

        // The money moved by exactly the price and stays moved.
        assert_eq!(
            balance(&network, agent.address).await,
            START_BALANCE - PRICE
        );
        assert_eq!(balance(&network, network.payee).await, PRICE);
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Post, EntryKind::Compensate]
        );
        let session = rt.runtime.session(&agent.session).await.unwrap();
        assert!(session.closed_at_ms.is_some(), "a failed session is closed");
        assert_eq!(session.posted, Amount::from(PRICE));
        let (status, refused) = agent.fetch(&rt, &url, "more").await;
        assert_eq!(status, 403, "{refused}");
        assert_eq!(refused["error"]["code"], "session_closed");

        let report = assert_reconciled(&rt).await;
        assert_eq!(report.posted_total, Amount::from(PRICE));
    })
    .await
    .expect("the case finishes in time");
}

/// A wallet without gas cannot cancel: the record says so and what to do, the reservation stays
/// (no proof, no void); with gas, marking again cancels. The seller answered 500.
pub async fn cancel_without_gas_fails_then_retries(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, _kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "nogas", false).await;
        let (status, fetched) = agent
            .fetch(&rt, &format!("{seller}/broken"), "render")
            .await;
        assert_eq!(status, 200, "{fetched}");
        assert_eq!(fetched["status"], 500);
        let transfer_id = transfer_id_of(&fetched);

        let (status, marked) = agent
            .fail(
                &rt,
                json!({"step": "render", "reason": "500 after payment"}),
            )
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["outcome"], "cancel_failed", "{record}");
        assert_eq!(record["final"], false);
        assert!(
            record["message"].as_str().unwrap().contains("gas"),
            "{record}"
        );
        assert_eq!(record["evidence"]["response"]["status"], 500);
        assert_eq!(record["transfer"]["state"], "pending");
        assert_eq!(
            rt.runtime.session(&agent.session).await.unwrap().reserved,
            Amount::from(PRICE)
        );
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve]
        );

        network
            .chain
            .set_native_balance(agent.address, U256::from(10u64).pow(U256::from(17u64)))
            .await
            .unwrap();
        let (status, again) = agent
            .fail(
                &rt,
                json!({"step": "render", "reason": "500 after payment"}),
            )
            .await;
        assert_eq!(status, 200, "{again}");
        let retried = &again["compensations"][0];
        assert_eq!(retried["id"], record["id"]);
        assert_eq!(retried["outcome"], "cancelled", "{retried}");
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Void, EntryKind::Compensate]
        );
        assert_reconciled(&rt).await;
    })
    .await
    .expect("the case finishes in time");
}

/// A compensation left `cancel_failed` (no gas) finishes by itself once the chain decides: the
/// seller settles the kept authorization, the resolver posts the transfer, and the same pass turns
/// the record into a refund claim with its ledger entry, without the failure being marked again.
pub async fn unfinished_compensation_finishes_when_the_chain_decides(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "decided", false).await;
        let (status, fetched) = agent
            .fetch(&rt, &format!("{seller}/broken"), "render")
            .await;
        assert_eq!(status, 200, "{fetched}");
        let transfer_id = transfer_id_of(&fetched);
        let (status, marked) = agent
            .fail(
                &rt,
                json!({"step": "render", "reason": "500 after payment"}),
            )
            .await;
        assert_eq!(status, 200, "{marked}");
        assert_eq!(marked["compensations"][0]["outcome"], "cancel_failed");
        // Nothing to finish while the transfer is pending.
        assert_eq!(rt.runtime.finish_compensations(100).await.unwrap(), 0);

        let hash = seller_settles_kept(&network, &kept).await.unwrap();
        assert!(testkit::mined(network.chain.as_ref(), hash).await.success);

        assert_eq!(rt.runtime.resolve_pending().await.unwrap(), (1, 0));
        let records = rt
            .runtime
            .compensations(Some(&agent.session))
            .await
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].record.outcome.as_str(),
            "refund_claim",
            "{:?}",
            records[0].record
        );
        assert_eq!(
            balance(&network, agent.address).await,
            START_BALANCE - PRICE
        );
        assert_eq!(balance(&network, payee).await, PRICE);
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Post, EntryKind::Compensate]
        );
        // Finished records are not looked at again.
        assert_eq!(rt.runtime.finish_compensations(100).await.unwrap(), 0);
    })
    .await
    .expect("the case finishes in time");
}

/// The seller settles the kept authorization on chain (without telling anyone) before the
/// failure is marked: the settlement won, so the transfer posts and the record is a refund claim;
/// no cancel is sent and the money moved by exactly the price, once.
pub async fn late_settlement_wins_over_the_cancel(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "race", true).await;
        let (status, fetched) = agent
            .fetch(&rt, &format!("{seller}/content"), "fetch")
            .await;
        assert_eq!(status, 200, "{fetched}");
        let transfer_id = transfer_id_of(&fetched);

        let hash = seller_settles_kept(&network, &kept).await.unwrap();
        assert!(testkit::mined(network.chain.as_ref(), hash).await.success);

        let (status, marked) = agent
            .fail(&rt, json!({"step": "fetch", "reason": "too late"}))
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["outcome"], "refund_claim", "{record}");
        assert!(record["cancelTxHash"].is_null(), "{record}");
        assert_eq!(record["transfer"]["state"], "posted");
        assert_eq!(
            balance(&network, agent.address).await,
            START_BALANCE - PRICE
        );
        assert_eq!(balance(&network, payee).await, PRICE);
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Post, EntryKind::Compensate]
        );
        assert_reconciled(&rt).await;
    })
    .await
    .expect("the case finishes in time");
}

/// Two markings of the same step at once: one cancel, one record, one compensate entry.
pub async fn concurrent_markings_cancel_once(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, _kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "twice", true).await;
        let (status, fetched) = agent
            .fetch(&rt, &format!("{seller}/content"), "step-1")
            .await;
        assert_eq!(status, 200, "{fetched}");
        let transfer_id = transfer_id_of(&fetched);
        let body = json!({"step": "step-1", "reason": "both at once"});
        let ((first, a), (second, b)) =
            tokio::join!(agent.fail(&rt, body.clone()), agent.fail(&rt, body.clone()));
        assert_eq!((first, second), (200, 200), "{a} {b}");
        assert_eq!(a["compensations"][0]["id"], b["compensations"][0]["id"]);
        let (_, settled) = agent.fail(&rt, body).await;
        let record = &settled["compensations"][0];
        assert_eq!(record["outcome"], "cancelled", "{record}");
        assert_eq!(record["transfer"]["voidReason"], "cancelled");
        let traced = rt
            .runtime
            .store()
            .decision_store()
            .decisions_for(&transfer_id)
            .await
            .unwrap()
            .iter()
            .filter(|d| d.reason.as_deref() == Some("compensation_cancelled"))
            .count();
        assert_eq!(traced, 1, "one trace row per compensation");
        assert_eq!(
            entry_kinds(&rt, &transfer_id).await,
            vec![EntryKind::Reserve, EntryKind::Void, EntryKind::Compensate]
        );
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
        assert_reconciled(&rt).await;
    })
    .await
    .expect("the case finishes in time");
}

/// Through the forward proxy, `X-Bursar-Step` labels the payment; that step marked failed is
/// cancelled like one paid through the API.
pub async fn proxied_step_is_compensated(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let rt = runtime(&network, store_url).await;
        let (seller, payee, _kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "proxied", true).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let router = bursar_runtime::proxy::proxy_router(rt.runtime.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://agent:{}@{proxy}", agent.token)).unwrap())
            .build()
            .unwrap();
        let response = client
            .get(format!("{seller}/content"))
            .header("X-Bursar-Step", "via-proxy")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bad = client
            .get(format!("{seller}/content"))
            .header("X-Bursar-Step", "x".repeat(300))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "an overlong step label is refused");

        let (status, marked) = agent
            .fail(&rt, json!({"step": "via-proxy", "reason": "wrong answer"}))
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["outcome"], "cancelled", "{record}");
        assert_eq!(record["evidence"]["step"], "via-proxy");
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
    })
    .await
    .expect("the case finishes in time");
}

/// With a gas account configured, a wallet without native currency still cancels: the gas
/// account sends the wallet's signed cancel and pays for it.
pub async fn gas_account_pays_for_the_cancel(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let chain: Arc<dyn DevChain> = network.chain.clone();
        let gas = Arc::new(testkit::funded_account(&chain).await);
        let gas_before = network.chain.native_balance(gas.address()).await.unwrap();
        let store = bursar_store::open_runtime_store(store_url).await.unwrap();
        let mut config = bursar_runtime::RuntimeConfig::new(network.currency());
        config.kdf = bursar_wallet::Kdf::light();
        // Sellers in tests run on loopback.
        config.egress = bursar_runtime::EgressPolicy::loopback();
        config.cancel_gas_account = Some(gas.clone());
        let evm: Arc<dyn bursar_chain::EvmChain> = network.chain.clone();
        let runtime = bursar_runtime::Runtime::open(
            store.clone(),
            evm,
            bursar_wallet::Passphrase::new(common::PASSPHRASE.into()).unwrap(),
            config,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = bursar_runtime::api::router(runtime.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let rt = RuntimeUnderTest {
            runtime,
            url,
            operator_key: store.create_operator_key("tests").await.unwrap().key,
            http: reqwest::Client::new(),
        };
        let (seller, payee, _kept) = hostile_seller(&network).await;
        let agent = agent(&rt, &network, "gasless", false).await;
        let (status, fetched) = agent.fetch(&rt, &format!("{seller}/content"), "s").await;
        assert_eq!(status, 200, "{fetched}");
        let (status, marked) = agent
            .fail(&rt, json!({"step": "s", "reason": "no good"}))
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["outcome"], "cancelled", "{record}");
        assert_eq!(
            network.chain.native_balance(agent.address).await.unwrap(),
            U256::ZERO
        );
        assert!(network.chain.native_balance(gas.address()).await.unwrap() < gas_before);
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
    })
    .await
    .expect("the case finishes in time");
}

/// The evidence is stored when the payment is made: a runtime opened afresh on the same
/// database (a restart) compensates with it.
pub async fn evidence_survives_a_restart(store_url: &str) {
    tokio::time::timeout(CASE_TIMEOUT, async {
        let network = network().await;
        let (seller, payee, _kept) = hostile_seller(&network).await;
        let url = format!("{seller}/content");
        let (agent, transfer_id) = {
            let before = runtime(&network, store_url).await;
            let agent = agent(&before, &network, "restart", true).await;
            let (status, fetched) = agent.fetch(&before, &url, "before-restart").await;
            assert_eq!(status, 200, "{fetched}");
            let transfer_id = transfer_id_of(&fetched);
            (agent, transfer_id)
        };
        let after = runtime(&network, store_url).await;
        let (status, marked) = agent
            .fail(
                &after,
                json!({"step": "before-restart", "reason": "found out later"}),
            )
            .await;
        assert_eq!(status, 200, "{marked}");
        let record = &marked["compensations"][0];
        assert_eq!(record["transferId"], transfer_id.as_str());
        assert_eq!(record["outcome"], "cancelled", "{record}");
        assert_eq!(record["evidence"]["request"]["url"], url.as_str());
        assert_eq!(record["evidence"]["response"]["status"], 200);
        assert_eq!(balance(&network, agent.address).await, START_BALANCE);
        assert_eq!(balance(&network, payee).await, 0);
    })
    .await
    .expect("the case finishes in time");
}

on_both_databases!(
    unsettled_authorization_is_cancelled_on_chain,
    settled_payment_becomes_a_refund_claim,
    cancel_without_gas_fails_then_retries,
    late_settlement_wins_over_the_cancel,
    unfinished_compensation_finishes_when_the_chain_decides,
    concurrent_markings_cancel_once,
    proxied_step_is_compensated,
    gas_account_pays_for_the_cancel,
    evidence_survives_a_restart,
);
