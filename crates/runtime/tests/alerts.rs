//! Graduated budget alerts end to end, on SQLite and PostgreSQL: payments through the runtime's
//! API cross thresholds of the session budget and of a window cap; each crossing is recorded
//! once (an alert row and an `alert` ledger entry), also when payments race in two runtimes
//! sharing the database; a real webhook receiver that fails the first two deliveries of every
//! alert gets each alert accepted once, signed with the configured secret, after 3 attempts.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bursar_chain::EvmChain;
use bursar_runtime::alerts::{SIGNATURE_HEADER, verify_signature};
use bursar_runtime::{AlertWebhook, Runtime, RuntimeConfig};
use bursar_store::RuntimeStore;
use bursar_store::runtime::EntryKind;
use bursar_wallet::{Kdf, Passphrase};
use common::{Network_, PASSPHRASE, PRICE, RuntimeUnderTest, network};
use http::Method;
use serde_json::Value;

const SECRET: &[u8] = b"alert-secret-for-tests-0123456789";
/// How long a test waits for deliveries before failing.
const DEADLINE: Duration = Duration::from_secs(30);

/// What the receiver saw: deliveries per alert id, and the accepted ones (signature header and
/// body).
#[derive(Default)]
struct Received {
    deliveries: HashMap<String, u32>,
    accepted: Vec<(String, Bytes)>,
}

/// A webhook receiver on loopback that answers 503 to the first two deliveries of each alert,
/// then 200.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    async fn hook(
        State(received): State<Arc<Mutex<Received>>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let id = headers
            .get("x-bursar-alert-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut received = received.lock().unwrap();
        let count = received.deliveries.entry(id).or_default();
        *count += 1;
        if *count <= 2 {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        received.accepted.push((signature, body));
        StatusCode::OK
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// A runtime on `store_url` delivering alerts to `hook` (fast retries for tests), its API
/// served on loopback, its delivery task running.
async fn runtime_with_alerts(
    network: &Network_,
    store_url: &str,
    hook: &str,
) -> (RuntimeUnderTest, tokio::task::JoinHandle<()>) {
    let mut webhook = AlertWebhook::new(hook, SECRET.to_vec()).unwrap();
    webhook.retry_base = Duration::from_millis(100);
    webhook.poll_interval = Duration::from_millis(50);
    webhook.timeout = Duration::from_secs(5);
    runtime_with_webhook(network, store_url, webhook).await
}

async fn runtime_with_webhook(
    network: &Network_,
    store_url: &str,
    webhook: AlertWebhook,
) -> (RuntimeUnderTest, tokio::task::JoinHandle<()>) {
    let store: Arc<dyn RuntimeStore> = bursar_store::open_runtime_store(store_url)
        .await
        .expect("open store");
    let evm: Arc<dyn EvmChain> = network.chain.clone();
    let mut config = RuntimeConfig::new(network.currency());
    config.kdf = Kdf::light();
    // Sellers in tests run on loopback.
    config.egress = bursar_runtime::EgressPolicy::loopback();
    config.alert_webhook = Some(webhook);
    let runtime = Runtime::open(
        store.clone(),
        evm,
        Passphrase::new(PASSPHRASE.into()).unwrap(),
        config,
    )
    .await
    .expect("open runtime");
    let delivery = runtime.spawn_alert_delivery().expect("a webhook is set");
    let operator_key = store.create_operator_key("tests").await.unwrap().key;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = bursar_runtime::api::router(runtime.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        RuntimeUnderTest {
            runtime,
            url,
            operator_key,
            http: reqwest::Client::new(),
        },
        delivery,
    )
}

async fn put_policy(rt: &RuntimeUnderTest, path: &str, policy: &str) -> (u16, Value) {
    let response = rt
        .http
        .put(format!("{}{path}", rt.url))
        .bearer_auth(&rt.operator_key)
        .body(policy.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn alerts(rt: &RuntimeUnderTest, subject: &str) -> Vec<Value> {
    let (status, body) = rt
        .operator(Method::GET, &format!("/v1/alerts?subject={subject}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["alerts"].as_array().unwrap().clone()
}

/// Polls the alert listing until every alert of `subject` is delivered (or the deadline).
async fn delivered(rt: &RuntimeUnderTest, subject: &str, count: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let listed = alerts(rt, subject).await;
        if listed.len() == count && listed.iter().all(|a| a["delivery"]["state"] == "delivered") {
            return listed;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "alerts not delivered in time: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ledger's alert entries of a session.
async fn alert_entries(rt: &RuntimeUnderTest, session: &str) -> Vec<Value> {
    let (status, body) = rt
        .operator(Method::GET, "/v1/ledger?limit=1000", None)
        .await;
    assert_eq!(status, 200);
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == EntryKind::Alert.as_str() && e["sessionId"] == session)
        .cloned()
        .collect()
}

/// Each accepted delivery verifies with the secret (and not with another), and names an alert
/// of `listed`; every alert was accepted exactly once after three deliveries.
fn check_deliveries(received: &Mutex<Received>, listed: &[Value]) {
    let received = received.lock().unwrap();
    assert_eq!(received.accepted.len(), listed.len());
    for (signature, body) in &received.accepted {
        assert!(signature.starts_with("t=") && signature.contains(",v1="));
        assert!(verify_signature(
            SECRET,
            signature,
            body,
            Duration::from_secs(300)
        ));
        assert!(!verify_signature(
            b"another-secret-0123456789abcdef",
            signature,
            body,
            Duration::from_secs(300)
        ));
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(!verify_signature(
            SECRET,
            signature,
            &tampered,
            Duration::from_secs(300)
        ));
        let sent: Value = serde_json::from_slice(body).unwrap();
        let alert = listed
            .iter()
            .find(|a| a["id"] == sent["id"])
            .unwrap_or_else(|| panic!("delivered an unknown alert {sent}"));
        for field in [
            "budget",
            "threshold",
            "usedAtomic",
            "capAtomic",
            "currency",
            "sessionId",
            "walletId",
            "atMs",
        ] {
            assert_eq!(sent[field], alert[field], "{field}");
        }
        assert!(sent.get("delivery").is_none());
    }
    for alert in listed {
        let id = alert["id"].as_str().unwrap();
        assert_eq!(received.deliveries.get(id), Some(&3), "deliveries of {id}");
        assert_eq!(alert["delivery"]["attempts"], 3);
        assert_eq!(
            alert["delivery"]["lastError"],
            "the webhook answered HTTP 503"
        );
        assert!(alert["delivery"]["deliveredAtMs"].as_i64().is_some());
    }
}

/// A session of 0.10 paying 0.01 per call: 50% and 75% each alert once, at the payment that
/// reached them, with a ledger entry; each is delivered once, signed, after two 503s.
pub async fn session_budget_thresholds_alert_once(store_url: &str) {
    let network = network().await;
    let (hook, received) = receiver().await;
    let (rt, delivery) = runtime_with_alerts(&network, store_url, &hook).await;
    let (wallet, _) = rt.funded_wallet(&network, "alerts", 1_000_000).await;
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, "0.10", None).await;
    assert_eq!(100_000, 10 * PRICE);
    let url = format!("{}/paid", network.seller_url);
    for call in 0..8 {
        let (status, body) = rt.fetch(&session, &token, &format!("{url}?c={call}")).await;
        assert_eq!(status, 200, "{body}");
        let expected = match call {
            0..=3 => 0,
            4..=6 => 1,
            _ => 2,
        };
        assert_eq!(
            alerts(&rt, &session).await.len(),
            expected,
            "after {} paid",
            call + 1
        );
    }
    let listed = delivered(&rt, &session, 2).await;
    let summary: Vec<(u64, &str, &str, &str)> = listed
        .iter()
        .map(|a| {
            (
                a["threshold"].as_u64().unwrap(),
                a["budget"].as_str().unwrap(),
                a["usedAtomic"].as_str().unwrap(),
                a["capAtomic"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (50, "session", "50000", "100000"),
            (75, "session", "80000", "100000")
        ]
    );
    let entries = alert_entries(&rt, &session).await;
    let amounts: Vec<&str> = entries
        .iter()
        .map(|e| e["amountAtomic"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, vec!["50000", "80000"]);
    assert!(
        entries[0]["reason"]
            .as_str()
            .unwrap()
            .contains("reached 50%")
    );
    assert!(entries.iter().all(|e| e["transferId"].is_null()));
    // Alert entries leave each transfer's reserve/post entries as reconciliation expects.
    rt.runtime.resolve_pending().await.unwrap();
    let (status, report) = rt.operator(Method::GET, "/v1/ledger/reconcile", None).await;
    assert_eq!(status, 200);
    assert_eq!(report["clean"], true, "{report}");
    check_deliveries(&received, &listed);
    // Two more payments reach 100%: no threshold is configured there, nothing new.
    for call in 8..10 {
        let (status, _) = rt.fetch(&session, &token, &format!("{url}?c={call}")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(alerts(&rt, &session).await.len(), 2);
    assert_eq!(alert_entries(&rt, &session).await.len(), 2);
    delivery.abort();
}

/// Payments racing through two runtimes on one database (both delivering) cross 50% and 75%
/// together: still one alert and one ledger entry per threshold, each delivered once.
pub async fn concurrent_payments_alert_once(store_url: &str) {
    let network = network().await;
    let (hook, received) = receiver().await;
    let (first, first_delivery) = runtime_with_alerts(&network, store_url, &hook).await;
    let (second, second_delivery) = runtime_with_alerts(&network, store_url, &hook).await;
    let (wallet, _) = first.funded_wallet(&network, "racing", 1_000_000).await;
    let grant = first.grant(&wallet, "agent", None).await;
    let (session, token) = first.session(&grant, "0.10", None).await;
    let url = format!("{}/paid", network.seller_url);
    for call in 0..4 {
        let (status, body) = first
            .fetch(&session, &token, &format!("{url}?warm={call}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(alerts(&first, &session).await.is_empty());
    // Four at once, two through each runtime: 40% → 80%.
    let racers = [&first, &second, &first, &second];
    let results = futures::future::join_all(racers.iter().enumerate().map(|(i, rt)| {
        let (session, token, url) = (&session, &token, &url);
        async move { rt.fetch(session, token, &format!("{url}?race={i}")).await }
    }))
    .await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let listed = delivered(&second, &session, 2).await;
    let thresholds: Vec<u64> = listed
        .iter()
        .map(|a| a["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![50, 75]);
    for alert in &listed {
        let used: u64 = alert["usedAtomic"].as_str().unwrap().parse().unwrap();
        assert!((50_000..=80_000).contains(&used), "{alert}");
    }
    assert_eq!(alert_entries(&first, &session).await.len(), 2);
    check_deliveries(&received, &listed);
    first_delivery.abort();
    second_delivery.abort();
}

/// A wallet's hourly cap of 0.04 and the agent's daily cap of 0.06 with `[alerts] thresholds =
/// [50]`: the second payment brings the wallet window to 50%, the third the agent window, each
/// alerting once (the session budget, far from 50%, does not); an invalid threshold is refused
/// with the field named.
pub async fn window_cap_alerts(store_url: &str) {
    let network = network().await;
    let (hook, received) = receiver().await;
    let (rt, delivery) = runtime_with_alerts(&network, store_url, &hook).await;
    let (wallet, _) = rt.funded_wallet(&network, "windowed", 1_000_000).await;
    let (status, body) = put_policy(
        &rt,
        "/v1/wallets/windowed/policy",
        "[[windows]]\nscope = \"wallet\"\nperiod = \"1h\"\nmax = \"0.04\"\n\n\
         [[windows]]\nscope = \"agent\"\nperiod = \"1d\"\nmax = \"0.06\"\n\n\
         [alerts]\nthresholds = [50]",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    let url = format!("{}/paid", network.seller_url);
    for call in 0..3 {
        let (status, body) = rt.fetch(&session, &token, &format!("{url}?w={call}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(alerts(&rt, &wallet).await.len(), call);
    }
    let listed = delivered(&rt, &wallet, 2).await;
    let agent = &listed[1];
    assert_eq!(agent["budget"], "agent_window");
    assert_eq!(agent["agent"], "agent");
    assert_eq!(agent["usedAtomic"], "30000");
    assert_eq!(agent["capAtomic"], "60000");
    assert_eq!(agent["windowSeconds"], 86_400);
    let alert = &listed[0];
    assert_eq!(alert["budget"], "wallet_window");
    assert_eq!(alert["threshold"], 50);
    assert_eq!(alert["usedAtomic"], "20000");
    assert_eq!(alert["capAtomic"], "40000");
    assert_eq!(alert["windowSeconds"], 3600);
    assert!(alert["windowStartMs"].as_i64().unwrap() <= alert["atMs"].as_i64().unwrap());
    let entries = alert_entries(&rt, &session).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["amountAtomic"], "20000");
    assert_eq!(entries[1]["amountAtomic"], "30000");
    assert!(
        entries[0]["reason"]
            .as_str()
            .unwrap()
            .contains("wallet window cap"),
        "{}",
        entries[0]
    );
    check_deliveries(&received, &listed);

    for bad in ["[alerts]\nthresholds = [0]", "[alerts]\nthresholds = [101]"] {
        let (status, body) = put_policy(&rt, "/v1/wallets/windowed/policy", bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("alerts.thresholds"),
            "{body}"
        );
    }
    // Agents may not read alerts.
    let (status, _) = rt.call(Method::GET, "/v1/alerts", Some(&token), None).await;
    assert_eq!(status, 403);
    delivery.abort();
}

/// A webhook that cannot be reached: the payment goes through, the alert is recorded, and its
/// delivery is given up after the configured attempts, with the error kept.
pub async fn undeliverable_alerts_are_given_up(store_url: &str) {
    let network = network().await;
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", unused.local_addr().unwrap());
    drop(unused);
    let mut webhook = AlertWebhook::new(&hook, SECRET.to_vec()).unwrap();
    webhook.retry_base = Duration::from_millis(50);
    webhook.poll_interval = Duration::from_millis(50);
    webhook.attempts_max = 3;
    let (rt, delivery) = runtime_with_webhook(&network, store_url, webhook).await;
    let (wallet, _) = rt.funded_wallet(&network, "unreachable", 1_000_000).await;
    let grant = rt.grant(&wallet, "agent", None).await;
    // Two payments of 0.01 bring 0.04 to 50% (the default policy allows a quarter a call).
    let (session, token) = rt.session(&grant, "0.04", None).await;
    for page in 0..2 {
        let url = format!("{}/paid?page={page}", network.seller_url);
        let (status, body) = rt.fetch(&session, &token, &url).await;
        assert_eq!(status, 200, "{body}");
    }
    let start = Instant::now();
    let alert = loop {
        let listed = alerts(&rt, &session).await;
        assert_eq!(listed.len(), 1, "{listed:#?}");
        if listed[0]["delivery"]["state"] == "failed" {
            break listed[0].clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not given up in time: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alert["threshold"], 50);
    assert_eq!(alert["delivery"]["attempts"], 3);
    assert!(alert["delivery"]["deliveredAtMs"].is_null());
    assert!(
        alert["delivery"]["lastError"]
            .as_str()
            .unwrap()
            .starts_with("request failed"),
        "{alert}"
    );
    delivery.abort();
}

on_both_databases!(
    session_budget_thresholds_alert_once,
    concurrent_payments_alert_once,
    window_cap_alerts,
    undeliverable_alerts_are_given_up,
);
