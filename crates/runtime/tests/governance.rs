//! Hostile sellers against policies, end to end over the runtime's API on the embedded chain,
//! on SQLite and PostgreSQL. For each: what was denied (before anything was signed), the decision
//! trace, and that the chain moved exactly what policy allowed.
//!
//! The runtime applies the default policy to every session (as `bursar runtime` does); the
//! policies these tests attach compose with it (any failing rule denies), which is the
//! documented rule. Tests of the language's own defaults switch the default policy off.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use bursar_chain::EvmChain;
use bursar_chain::testkit::{self, TOKEN_NAME};
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator};
use bursar_facilitator_client::Facilitator;
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequired, PaymentRequirements,
    Resource, X402Version,
};
use bursar_store::runtime::{EntryKind, TransferState};
use common::{Network_, PRICE, RuntimeUnderTest, network, runtime, runtime_with};
use http::Method;
use serde_json::{Value, json};

/// A seller whose 402 terms move with every unpaid call: the price rises by 1000 atomic units
/// and, when `rotate_pay_to`, the payTo address changes. It settles what it is paid through a
/// real facilitator.
async fn shifty_seller(network: &Network_, rotate_pay_to: bool) -> (String, Vec<Address>) {
    let chain: Arc<dyn bursar_chain::DevChain> = network.chain.clone();
    let settler = testkit::funded_account(&chain).await;
    let evm: Arc<dyn EvmChain> = network.chain.clone();
    let facilitator = Arc::new(LocalFacilitator::new(
        evm,
        settler,
        FacilitatorConfig::default(),
    ));
    let payees: Vec<Address> = (0..8)
        .map(|_| PrivateKeySigner::random().address())
        .collect();
    let calls = Arc::new(AtomicU64::new(0));
    let token = network.token.address();
    let chain_id = network.chain.chain_id();
    let handler = {
        let payees = payees.clone();
        move |headers: HeaderMap| {
            let (facilitator, payees, calls) = (facilitator.clone(), payees.clone(), calls.clone());
            async move {
                if let Some(header) = headers.get("payment-signature") {
                    let payload = PaymentPayload::from_header(header.to_str().unwrap()).unwrap();
                    let requirements = payload.accepted.clone().unwrap();
                    let request = FacilitatorRequest {
                        version: X402Version::V2,
                        payload,
                        requirements,
                        resource: None,
                    };
                    let settled = facilitator.settle(&request).await.unwrap();
                    let status = if settled.success {
                        StatusCode::OK
                    } else {
                        StatusCode::PAYMENT_REQUIRED
                    };
                    return (
                        status,
                        [("payment-response", settled.to_header())],
                        "content".to_string(),
                    )
                        .into_response();
                }
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let pay_to = if rotate_pay_to {
                    payees[(call as usize) % payees.len()]
                } else {
                    payees[0]
                };
                let requirement = PaymentRequirements {
                    scheme: "exact".into(),
                    network: Network::Eip155(chain_id),
                    amount: Amount::from(PRICE + if rotate_pay_to { 0 } else { call * 1000 }),
                    asset: token.into(),
                    pay_to: pay_to.into(),
                    max_timeout_seconds: 60,
                    extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
                };
                let required = PaymentRequired {
                    version: X402Version::V2,
                    error: Some("payment required".into()),
                    resource: Resource::default(),
                    accepts: vec![requirement],
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/shifty", listener.local_addr().unwrap());
    let app = Router::new().route("/shifty", get(handler));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, payees)
}

static WALLETS: AtomicU64 = AtomicU64::new(0);

struct Agent {
    session: String,
    token: String,
    address: Address,
    start_balance: u64,
}

/// A funded wallet, a grant, a session with `budget` and `policy` attached to the session.
async fn agent(rt: &RuntimeUnderTest, network: &Network_, budget: &str, policy: &str) -> Agent {
    let start_balance = 10_000_000;
    let (wallet, address) = rt
        .funded_wallet(
            network,
            &format!("w{}", WALLETS.fetch_add(1, Ordering::SeqCst)),
            start_balance,
        )
        .await;
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, budget, None).await;
    if !policy.is_empty() {
        let response = rt
            .http
            .put(format!("{}/v1/sessions/{session}/policy", rt.url))
            .bearer_auth(&rt.operator_key)
            .body(policy.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    Agent {
        session,
        token,
        address,
        start_balance,
    }
}

impl Agent {
    async fn fetch(&self, rt: &RuntimeUnderTest, url: &str, phase: Option<&str>) -> (u16, Value) {
        let mut body = json!({"url": url});
        if let Some(phase) = phase {
            body["phase"] = json!(phase);
        }
        rt.call(
            Method::POST,
            &format!("/v1/sessions/{}/fetch", self.session),
            Some(&self.token),
            Some(body),
        )
        .await
    }

    async fn spent(&self, network: &Network_) -> u64 {
        let balance = network.balance(self.address).await;
        self.start_balance - u64::try_from(balance).unwrap()
    }
}

/// The decisions recorded for a session: (allowed, reason, the failing rule's name).
async fn decisions(
    rt: &RuntimeUnderTest,
    session: &str,
) -> Vec<(bool, Option<String>, Option<String>)> {
    let store = rt.runtime.store().decision_store();
    store
        .decisions_for(session)
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            let failing = d.rules.as_array().and_then(|rules| {
                rules
                    .iter()
                    .find(|rule| rule["passed"] == false)
                    .and_then(|rule| rule["rule"].as_str().map(str::to_string))
            });
            (d.allowed, d.reason, failing)
        })
        .collect()
}

/// "Verify your wallet": a poisoned page makes the agent pay a 0.005 endpoint 200 times, each
/// under every per-call limit. Loop detection stops it after 5.
pub async fn drain_by_repetition_is_stopped(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let agent = agent(
        &rt,
        &network,
        "5.00",
        "max_per_call = \"0.05\"\n[endpoints]\nloop_count = 5\nloop_window = \"10m\"",
    )
    .await;
    let url = format!("{}/paid?verify=wallet", network.seller_url);
    let mut paid = 0;
    let mut denied = 0;
    for attempt in 0..200 {
        let (status, body) = agent.fetch(&rt, &format!("{url}&n={attempt}"), None).await;
        match status {
            200 => paid += 1,
            403 => {
                assert_eq!(body["error"]["code"], "loop_detected", "{body}");
                denied += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((paid, denied), (5, 195));
    assert_eq!(agent.spent(&network).await, 5 * PRICE);
    assert_eq!(
        network.payments_seen(),
        5,
        "no signature for the refused calls"
    );
    let trace = decisions(&rt, &agent.session).await;
    assert_eq!(trace.len(), 200);
    assert_eq!(trace.iter().filter(|(allowed, ..)| *allowed).count(), 5);
    assert!(
        trace
            .iter()
            .filter(|(allowed, ..)| !allowed)
            .all(|(_, reason, rule)| {
                reason.as_deref() == Some("loop_detected")
                    && rule.as_deref() == Some("loop_detection")
            })
    );
    let check = rt
        .runtime
        .store()
        .decision_store()
        .verify_decisions()
        .await
        .unwrap();
    assert!(check.broken.is_none(), "{check:?}");
}

/// An endpoint whose 402 changes payTo, or raises the price, between calls: the first payment
/// pins the terms; later ones are refused.
pub async fn shifting_terms_are_refused(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    for rotate in [true, false] {
        let (url, payees) = shifty_seller(&network, rotate).await;
        let agent = agent(&rt, &network, "1.00", "").await;
        let (status, body) = agent.fetch(&rt, &url, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payment"]["state"], "posted", "{body}");
        for _ in 0..3 {
            let (status, body) = agent.fetch(&rt, &url, None).await;
            assert_eq!(status, 403, "{body}");
            assert_eq!(body["error"]["code"], "terms_changed", "{body}");
        }
        assert_eq!(
            agent.spent(&network).await,
            PRICE,
            "only the first call was paid"
        );
        assert_eq!(network.balance(payees[0]).await, U256::from(PRICE));
        for payee in &payees[1..] {
            assert_eq!(network.balance(*payee).await, U256::ZERO);
        }
        let trace = decisions(&rt, &agent.session).await;
        assert_eq!(trace.len(), 4);
        assert!(
            trace[1..]
                .iter()
                .all(|(allowed, _, rule)| !allowed && rule.as_deref() == Some("pin_terms"))
        );
    }
}

/// A stored transfer whose payee no longer reads as an address fails the next payment to its
/// endpoint (the pinned terms cannot be checked): it is denied, nothing more is paid, the rule
/// is never skipped.
pub async fn unreadable_pinned_terms_fail_closed(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let url = format!("{}/paid", network.seller_url);
    let agent = agent(&rt, &network, "1.00", "").await;
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payment"]["state"], "posted", "{body}");
    corrupt_payee(store_url, &agent.session).await;
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "ledger_unavailable", "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(
            |message| message.contains("payee") && message.contains("does not read back")
        ),
        "{body}"
    );
    assert_eq!(
        agent.spent(&network).await,
        PRICE,
        "the second call was not paid"
    );
    assert_eq!(
        network.payments_seen(),
        1,
        "nothing signed for the second call"
    );
}

/// Overwrites the payee of every transfer of `session` with text that is not an address.
async fn corrupt_payee(store_url: &str, session: &str) {
    use sqlx::Connection as _;
    const CORRUPT: &str = "UPDATE transfers SET payee = 'not-an-address' WHERE session_id = $1";
    let updated = if store_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(store_url).await.unwrap();
        sqlx::query(CORRUPT)
            .bind(session)
            .execute(&mut connection)
            .await
            .unwrap()
            .rows_affected()
    } else {
        let mut connection = sqlx::PgConnection::connect(store_url).await.unwrap();
        sqlx::query(CORRUPT)
            .bind(session)
            .execute(&mut connection)
            .await
            .unwrap()
            .rows_affected()
    };
    assert_eq!(updated, 1);
}

/// One call priced just under the session cap is refused by the per-call maximum; payees off
/// the allowlist, networks and assets the policy does not allow, and spending while exploring
/// are refused too. Nothing is signed for any of them.
pub async fn policy_refusals_sign_nothing(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let paid = format!("{}/paid", network.seller_url);
    let expensive = format!("{}/expensive", network.seller_url);
    let cases: [(&str, &str, &str, Option<&str>, &str); 6] = [
        (
            "10.01",
            "max_per_call = \"0.50\"",
            &expensive,
            None,
            "max_per_call_exceeded",
        ),
        (
            "1",
            "[payees]\nallow_domains = [\"api.trusted.test\"]",
            &paid,
            None,
            "payee_not_allowed",
        ),
        (
            "1",
            "networks = [\"eip155:8453\"]",
            &paid,
            None,
            "network_not_allowed",
        ),
        (
            "1",
            "assets = [\"0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913\"]",
            &paid,
            None,
            "asset_not_allowed",
        ),
        (
            "1",
            "[phases.explore]\nspend = false",
            &paid,
            Some("explore"),
            "phase_no_spend",
        ),
        (
            "1",
            "[[limits]]\npayee = \"127.0.0.1\"\nmax_per_call = \"0.001\"",
            &paid,
            None,
            "payee_limit_exceeded",
        ),
    ];
    for (budget, policy, url, phase, code) in cases {
        let agent = agent(&rt, &network, budget, policy).await;
        let (status, body) = agent.fetch(&rt, url, phase).await;
        assert_eq!(status, 403, "{policy}: {body}");
        assert_eq!(body["error"]["code"], code, "{policy}: {body}");
        assert_eq!(agent.spent(&network).await, 0);
        let trace = decisions(&rt, &agent.session).await;
        assert_eq!(trace.len(), 1, "{policy}");
        assert_eq!(trace[0].1.as_deref(), Some(code));
    }
    assert_eq!(network.payments_seen(), 0);
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
    // The same phase policy lets the execute phase pay.
    let agent = agent(&rt, &network, "1", "[phases.explore]\nspend = false").await;
    let (status, body) = agent.fetch(&rt, &paid, Some("execute")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(agent.spent(&network).await, PRICE);
    let deny_entries = rt
        .runtime
        .store()
        .entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Deny)
        .count();
    assert_eq!(deny_entries, 6);
}

/// A wallet's hourly cap holds across its sessions; the session budgets alone would allow more.
pub async fn wallet_window_caps_span_sessions(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, address) = rt.funded_wallet(&network, "capped", 1_000_000).await;
    let response = rt
        .http
        .put(format!("{}/v1/wallets/capped/policy", rt.url))
        .bearer_auth(&rt.operator_key)
        .body("[[windows]]\nscope = \"wallet\"\nperiod = \"1h\"\nmax = \"0.03\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let grant = rt.grant(&wallet, "a", None).await;
    let sessions = [
        rt.session(&grant, "1", None).await,
        rt.session(&grant, "1", None).await,
    ];
    let url = format!("{}/paid", network.seller_url);
    let mut codes = Vec::new();
    for round in 0..3 {
        for (session, token) in &sessions {
            let (status, body) = rt.fetch(session, token, &format!("{url}?r={round}")).await;
            codes.push((status, body["error"]["code"].as_str().map(str::to_string)));
        }
    }
    let paid = codes.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(paid, 3, "{codes:?}");
    assert!(
        codes
            .iter()
            .filter(|(status, _)| *status != 200)
            .all(|(status, code)| *status == 403 && code.as_deref() == Some("window_cap_exceeded"))
    );
    assert_eq!(
        network.balance(address).await,
        U256::from(1_000_000 - 3 * PRICE)
    );
    // An invalid policy is refused when attached, with the field named.
    let response = rt
        .http
        .put(format!("{}/v1/wallets/capped/policy", rt.url))
        .bearer_auth(&rt.operator_key)
        .body("[[windows]]\nscope = \"planet\"\nperiod = \"1h\"\nmax = \"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("windows.scope"),
        "{body}"
    );
}

/// A seller that answers 402 again after being paid is not paid twice for one request; the
/// signed authorization it kept stays reserved (it could still settle it) with its decision.
pub async fn second_402_is_not_paid_again(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let agent = agent(&rt, &network, "1", "").await;
    let (status, body) = agent
        .fetch(&rt, &format!("{}/rejects", network.seller_url), None)
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(network.payments_seen(), 1);
    let transfers = rt
        .runtime
        .store()
        .transfers(Some(&agent.session))
        .await
        .unwrap();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].state, TransferState::Pending);
    let trace = decisions(&rt, &agent.session).await;
    assert_eq!(trace.len(), 1);
    assert!(trace[0].0, "the payment itself was allowed");
}

/// An endpoint that keeps answering 402 to paid requests: after three in a row (the language's
/// own default, with the default policy switched off), payments to it back off (1 s, then
/// doubling) — refused before signing while the backoff lasts.
pub async fn repeated_402_backs_off(store_url: &str) {
    let network = network().await;
    let rt = runtime_with(&network, store_url, |config| config.default_policy = false).await;
    let agent = agent(&rt, &network, "1", "").await;
    let url = format!("{}/rejects", network.seller_url);
    for _ in 0..3 {
        let (status, body) = agent.fetch(&rt, &url, None).await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["code"], "payment_rejected");
    }
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_backing_off", "{body}");
    assert_eq!(network.payments_seen(), 3, "no signature while backing off");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 502, "one more try after the wait: {body}");
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(
        body["error"]["code"], "endpoint_backing_off",
        "{status} {body}"
    );
    assert_eq!(network.payments_seen(), 4);
    let trace = decisions(&rt, &agent.session).await;
    assert_eq!(trace.iter().filter(|(allowed, ..)| !allowed).count(), 2);
    assert!(
        trace
            .iter()
            .filter(|(allowed, ..)| !allowed)
            .all(|(_, _, rule)| rule.as_deref() == Some("rejection_backoff"))
    );
}

/// An endpoint that returns garbage after payment: each paid response fails validation; after
/// three in a row payments to it pause (refused before signing), the pause and its reason are
/// listed, and an operator can lift it.
pub async fn garbage_after_payment_pauses_the_endpoint(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let agent = agent(
        &rt,
        &network,
        "1",
        "[validation]\ncontent_type = \"application/json\"\njson_schema = { type = \"object\", required = [\"content\"] }\nfailures_before_pause = 3\ncooldown = \"24h\"",
    )
    .await;
    let url = format!("{}/garbage", network.seller_url);
    for attempt in 1..=3u64 {
        let (status, body) = agent.fetch(&rt, &url, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payment"]["state"], "posted", "{body}");
        assert_eq!(body["validation"]["passed"], false, "{body}");
        assert_eq!(body["validation"]["consecutiveFailures"], attempt, "{body}");
        assert_eq!(
            body["validation"]["pausedUntilMs"].is_number(),
            attempt == 3,
            "{body}"
        );
    }
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_paused", "{body}");
    assert_eq!(network.payments_seen(), 3, "nothing signed while paused");
    assert_eq!(agent.spent(&network).await, 3 * PRICE);
    // A valid endpoint of the same seller is unaffected.
    let (status, body) = agent
        .fetch(&rt, &format!("{}/paid", network.seller_url), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["validation"]["passed"], true, "{body}");

    let (status, pauses) = rt.operator(Method::GET, "/v1/pauses", None).await;
    assert_eq!(status, 200);
    let pauses = pauses["pauses"].as_array().unwrap().clone();
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert!(
        pauses[0]["reason"]
            .as_str()
            .unwrap()
            .contains("content type"),
        "{pauses:?}"
    );
    // The session's policy saw the failures: the pause is that policy's.
    assert_eq!(
        pauses[0]["policy"],
        format!("session {}", agent.session),
        "{pauses:?}"
    );
    assert_eq!(pauses[0]["sessionId"], agent.session.as_str());
    let endpoint = pauses[0]["endpoint"].as_str().unwrap().to_string();
    let policy = pauses[0]["policy"].as_str().unwrap().to_string();
    let (status, lifted) = rt
        .operator(
            Method::POST,
            "/v1/pauses/lift",
            Some(json!({"policy": policy, "endpoint": endpoint})),
        )
        .await;
    assert_eq!(
        (status, lifted["lifted"].as_bool()),
        (200, Some(true)),
        "{lifted}"
    );
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 200, "paid again after the lift: {body}");
    assert_eq!(body["validation"]["consecutiveFailures"], 1);
    let trace = decisions(&rt, &agent.session).await;
    assert!(trace.iter().any(|(allowed, reason, rule)| !allowed
        && reason.as_deref() == Some("endpoint_paused")
        && rule.as_deref() == Some("endpoint_pause")));
}

/// Validation against the schema the seller itself published in its 402 (the v2 bazaar
/// extension): a response that keeps to it passes; one that breaks it fails and, after three,
/// pauses the endpoint. A validator for one endpoint leaves the others alone.
pub async fn responses_are_held_to_the_sellers_schema(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let host = url::Url::parse(&network.seller_url).unwrap();
    let garbage_endpoint = format!(
        "{}:{}/garbage",
        host.host_str().unwrap(),
        host.port().unwrap()
    );
    let policy = format!(
        "[validation]\nseller_schema = true\nfailures_before_pause = 3\n\
         [[validators]]\nendpoint = \"{garbage_endpoint}\"\ncontent_type = \"application/json\"\n"
    );
    let agent = agent(&rt, &network, "1", &policy).await;
    let (status, body) = agent
        .fetch(&rt, &format!("{}/report", network.seller_url), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["validation"]["passed"], true, "{body}");
    let broken = format!("{}/report-broken", network.seller_url);
    for attempt in 1..=3u64 {
        let (status, body) = agent.fetch(&rt, &broken, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payment"]["state"], "posted", "{body}");
        assert_eq!(body["validation"]["passed"], false, "{body}");
        assert!(
            body["validation"]["failure"]
                .as_str()
                .unwrap()
                .contains("seller's published schema"),
            "{body}"
        );
        assert_eq!(body["validation"]["consecutiveFailures"], attempt, "{body}");
    }
    let (status, body) = agent.fetch(&rt, &broken, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_paused", "{body}");
    // The /garbage validator (JSON only) fails it; /paid answers JSON and has no validator of
    // its own, and publishes no schema: it passes.
    let (status, body) = agent
        .fetch(&rt, &format!("{}/garbage", network.seller_url), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["validation"]["failure"]
            .as_str()
            .unwrap()
            .contains("content type"),
        "{body}"
    );
    let (status, body) = agent
        .fetch(&rt, &format!("{}/paid", network.seller_url), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["validation"]["passed"], true, "{body}");
    // Six payments went out (the paused one was refused before signing): exactly that moved.
    assert_eq!(network.payments_seen(), 6);
    assert_eq!(agent.spent(&network).await, 6 * PRICE);
}

/// The paid-response cache (opt-in): the same resource asked again within the session is served
/// from the cache instead of being paid twice; another session pays for itself.
pub async fn paid_responses_are_served_from_cache(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let agent = agent(&rt, &network, "1", "[cache]\nttl = \"1h\"").await;
    let url = format!("{}/paid?q=report", network.seller_url);
    let (status, first) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 200, "{first}");
    let transfer = first["payment"]["transferId"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (status, again) = agent.fetch(&rt, &url, None).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["body"], first["body"]);
        assert!(again["payment"].is_null(), "{again}");
        assert_eq!(again["cachedFrom"], transfer.as_str());
    }
    assert_eq!(network.payments_seen(), 1);
    assert_eq!(agent.spent(&network).await, PRICE);
    // Another URL is another resource; another session has its own cache.
    let (status, other) = agent.fetch(&rt, &format!("{url}&page=2"), None).await;
    assert_eq!(
        (status, other["cachedFrom"].is_null()),
        (200, true),
        "{other}"
    );
    let second = agent_in_new_session(&rt, &network, "[cache]\nttl = \"1h\"").await;
    let (status, theirs) = second.fetch(&rt, &url, None).await;
    assert_eq!(
        (status, theirs["payment"]["state"].as_str()),
        (200, Some("posted")),
        "{theirs}"
    );
    assert_eq!(network.payments_seen(), 3);
}

async fn agent_in_new_session(rt: &RuntimeUnderTest, network: &Network_, policy: &str) -> Agent {
    agent(rt, network, "1", policy).await
}

/// `learn` proposes an allowlist from settled payments: the hosts and payTo addresses paid, most
/// paid first; attached, it lets those payments through and refuses another payee.
pub async fn learn_proposes_an_allowlist(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let agent = agent(&rt, &network, "1", "").await;
    for page in 0..2 {
        let (status, body) = agent
            .fetch(
                &rt,
                &format!("{}/paid?page={page}", network.seller_url),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, learned) = rt
        .operator(Method::GET, "/v1/policy/learn?days=30", None)
        .await;
    assert_eq!(status, 200, "{learned}");
    let policy = learned["policy"].as_str().unwrap().to_string();
    assert!(policy.contains("\"127.0.0.1\", # 2 payments"), "{policy}");
    assert!(
        policy.contains(&network.payee.to_checksum(None)),
        "{policy}"
    );
    let (status, _) = rt
        .operator(Method::GET, "/v1/policy/learn?days=0", None)
        .await;
    assert_eq!(status, 400);

    // Attached to a new session: the learned payee is paid, a shifting seller's new payTo is not.
    let next = agent_in_new_session(&rt, &network, &policy).await;
    let (status, body) = next
        .fetch(&rt, &format!("{}/paid", network.seller_url), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (url, _) = shifty_seller(&network, true).await;
    let (status, body) = next.fetch(&rt, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "payee_not_allowed", "{body}");
}

/// Several rules refuse one payment: a seller that moved its payTo off the session's allowlist
/// (pinned terms and the allowlist both fail). The agent hears the most specific reason,
/// `payee_not_allowed`; the trace records both failures with their codes.
pub async fn the_most_specific_refusal_is_reported(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (url, payees) = shifty_seller(&network, true).await;
    let policy = format!("[payees]\nallow_addresses = [\"{}\"]", payees[0]);
    let agent = agent(&rt, &network, "1", &policy).await;
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = agent.fetch(&rt, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "payee_not_allowed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("also refused: terms_changed"), "{message}");
    assert_eq!(agent.spent(&network).await, PRICE);
    let store = rt.runtime.store().decision_store();
    let decisions = store.decisions_for(&agent.session).await.unwrap();
    assert_eq!(decisions.len(), 2);
    let refused = &decisions[1];
    assert_eq!(refused.reason.as_deref(), Some("payee_not_allowed"));
    let mut failing: Vec<(String, String)> = refused
        .rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["passed"] == false)
        .map(|rule| {
            (
                rule["rule"].as_str().unwrap().to_string(),
                rule["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    failing.sort();
    // The default policy pins terms too: two pin_terms failures, one allowlist failure.
    assert_eq!(
        failing,
        [
            (
                "payee_allowlist".to_string(),
                "payee_not_allowed".to_string()
            ),
            ("pin_terms".to_string(), "terms_changed".to_string()),
            ("pin_terms".to_string(), "terms_changed".to_string()),
        ]
    );
}

/// Refusals that happen before any policy runs are in the decision trace too: nothing the
/// seller offered is payable (another network), and a closed session.
pub async fn every_refusal_is_in_the_trace(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let elsewhere = foreign_seller().await;
    let agent = agent(&rt, &network, "1", "").await;
    let (status, body) = agent.fetch(&rt, &elsewhere, None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "no_payable_offer", "{body}");
    let (status, closed) = rt
        .operator(
            Method::POST,
            &format!("/v1/sessions/{}/close", agent.session),
            None,
        )
        .await;
    assert_eq!(status, 200, "{closed}");
    let (status, body) = agent
        .fetch(&rt, &format!("{}/paid", network.seller_url), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "session_closed", "{body}");
    assert_eq!(network.payments_seen(), 0);

    let store = rt.runtime.store().decision_store();
    let decisions = store.decisions_for(&agent.session).await.unwrap();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    let not_payable = &decisions[0];
    assert!(!not_payable.allowed);
    assert_eq!(not_payable.reason.as_deref(), Some("no_payable_offer"));
    assert_eq!(not_payable.resource.as_deref(), Some(elsewhere.as_str()));
    assert_eq!(not_payable.amount, Some(Amount::from(PRICE)));
    let rule = &not_payable.rules[0];
    assert_eq!(rule["rule"], "payable_offer");
    assert_eq!(rule["code"], "no_payable_offer");
    assert_eq!(rule["input"]["offered"][0]["network"], "eip155:8453");
    let closed = &decisions[1];
    assert_eq!(closed.reason.as_deref(), Some("session_closed"));
    assert_eq!(closed.rules[0]["rule"], "session_live");
    // The ledger has the same two denials.
    let denials: Vec<_> = rt
        .runtime
        .store()
        .entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Deny && e.session_id.as_deref() == Some(&agent.session))
        .filter_map(|e| Some(e.reason?.split(':').next()?.to_string()))
        .collect();
    // Each reason is the code, then the message.
    assert_eq!(denials, ["no_payable_offer", "session_closed"]);
    assert!(
        store.verify_decisions().await.unwrap().broken.is_none(),
        "the chain of decisions verifies"
    );
}

/// A seller that asks to be paid on Base mainnet, which this runtime does not pay.
async fn foreign_seller() -> String {
    let requirement = PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(8453),
        amount: Amount::from(PRICE),
        asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
        pay_to: PrivateKeySigner::random().address().into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": "USD Coin", "version": "2"})),
    };
    let header = PaymentRequired {
        version: X402Version::V2,
        error: Some("payment required".into()),
        resource: Resource::default(),
        accepts: vec![requirement],
        extensions: None,
    }
    .to_v2_header();
    let handler = move || {
        let header = header.clone();
        async move {
            (
                StatusCode::PAYMENT_REQUIRED,
                [("payment-required", header)],
                "",
            )
                .into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/base-only", listener.local_addr().unwrap());
    let app = Router::new().route("/base-only", get(handler));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A validation pause covers what its policy covers. A session's own validation rule pauses
/// /garbage for that session only: another session of the same wallet still pays it. The
/// default policy covers every session: garbage calling itself JSON, three times in a row,
/// pauses it for all of them, of any wallet, until an operator lifts it.
pub async fn pauses_cover_what_their_policy_covers(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, _) = rt.funded_wallet(&network, "shared", 1_000_000).await;
    let grant = rt.grant(&wallet, "agent", None).await;
    let strict = rt.session(&grant, "1", None).await;
    let lenient = rt.session(&grant, "1", None).await;
    let response = rt
        .http
        .put(format!("{}/v1/sessions/{}/policy", rt.url, strict.0))
        .bearer_auth(&rt.operator_key)
        .body("[validation]\ncontent_type = \"application/json\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let garbage = format!("{}/garbage", network.seller_url);
    for _ in 0..3 {
        let (status, body) = rt.fetch(&strict.0, &strict.1, &garbage).await;
        assert_eq!(
            (status, &body["validation"]["passed"]),
            (200, &json!(false)),
            "{body}"
        );
    }
    let (status, body) = rt.fetch(&strict.0, &strict.1, &garbage).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("endpoint_paused")),
        "{body}"
    );
    // The other session of the same wallet is not under that policy: it pays, and the
    // default policy finds nothing wrong (text that says it is text).
    let (status, body) = rt.fetch(&lenient.0, &lenient.1, &garbage).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payment"]["state"], "posted", "{body}");
    assert_eq!(body["validation"]["passed"], true, "{body}");
    assert_eq!(network.payments_seen(), 4);

    // Garbage that calls itself JSON fails the default policy, whichever session sees it.
    let lying = format!("{}/garbage-json", network.seller_url);
    for (session, token) in [&lenient, &strict, &lenient] {
        let (status, body) = rt.fetch(session, token, &lying).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["validation"]["failure"]
                .as_str()
                .unwrap()
                .contains("not JSON"),
            "{body}"
        );
    }
    let (other_wallet, _) = rt.funded_wallet(&network, "other", 1_000_000).await;
    let other_grant = rt.grant(&other_wallet, "agent", None).await;
    let other = rt.session(&other_grant, "1", None).await;
    for (session, token) in [&lenient, &strict, &other] {
        let (status, body) = rt.fetch(session, token, &lying).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "endpoint_paused", "{body}");
    }
    assert_eq!(network.payments_seen(), 7, "nothing signed while paused");
    let (status, pauses) = rt
        .operator(Method::GET, "/v1/pauses?policy=default%20policy", None)
        .await;
    assert_eq!(status, 200, "{pauses}");
    let pauses = pauses["pauses"].as_array().unwrap();
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert!(
        pauses[0]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/garbage-json")
    );
    let (status, lifted) = rt
        .operator(
            Method::POST,
            "/v1/pauses/lift",
            Some(json!({"policy": "default policy", "endpoint": pauses[0]["endpoint"]})),
        )
        .await;
    assert_eq!((status, &lifted["lifted"]), (200, &json!(true)), "{lifted}");
    let (status, body) = rt.fetch(&other.0, &other.1, &lying).await;
    assert_eq!(status, 200, "paid again after the lift: {body}");
    // The old request shape is refused with a clear error.
    let (status, body) = rt
        .operator(
            Method::POST,
            "/v1/pauses/lift",
            Some(json!({"walletId": wallet, "endpoint": "x"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
}

/// The default policy's backoff after a 402 to a paid request is kept in the database: a
/// second runtime sharing it refuses the next payment to that endpoint before signing.
pub async fn backoff_is_shared_by_runtimes(store_url: &str) {
    let network = network().await;
    let first = runtime(&network, store_url).await;
    let second = runtime(&network, store_url).await;
    let agent = agent(&first, &network, "1", "").await;
    let url = format!("{}/rejects", network.seller_url);
    let (status, body) = agent.fetch(&first, &url, None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "payment_rejected");
    // The same session through the other runtime: within the minute's wait.
    let (status, body) = agent.fetch(&second, &url, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_backing_off", "{body}");
    let (status, body) = agent.fetch(&first, &url, None).await;
    assert_eq!(
        body["error"]["code"], "endpoint_backing_off",
        "{status} {body}"
    );
    assert_eq!(network.payments_seen(), 1, "one signed payment, then none");
    let rejections = second
        .runtime
        .store()
        .rejections(&agent.session, &url)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(rejections.count, 1);
    // Another session starts with a clean slate.
    let fresh = agent_in_new_session(&second, &network, "").await;
    let (status, body) = fresh.fetch(&second, &url, None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(network.payments_seen(), 2);
    let trace = decisions(&first, &agent.session).await;
    assert_eq!(trace.len(), 3);
    assert!(trace[0].0);
    assert!(trace[1..].iter().all(|(allowed, reason, rule)| !allowed
        && reason.as_deref() == Some("endpoint_backing_off")
        && rule.as_deref() == Some("rejection_backoff")));
}

on_both_databases!(
    the_most_specific_refusal_is_reported,
    every_refusal_is_in_the_trace,
    pauses_cover_what_their_policy_covers,
    backoff_is_shared_by_runtimes,
    drain_by_repetition_is_stopped,
    shifting_terms_are_refused,
    unreadable_pinned_terms_fail_closed,
    policy_refusals_sign_nothing,
    wallet_window_caps_span_sessions,
    second_402_is_not_paid_again,
    repeated_402_backs_off,
    garbage_after_payment_pauses_the_endpoint,
    responses_are_held_to_the_sellers_schema,
    paid_responses_are_served_from_cache,
    learn_proposes_an_allowlist,
);
