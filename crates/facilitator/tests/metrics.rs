//! `GET /metrics` over HTTP on the embedded chain: exact counts of verifications, settlements and
//! HTTP answers, latency histograms, gas from the settlement's receipt, the pending settlements
//! read from the ledger, bounded reason labels, and where `/metrics` is (not) served.
//!
//! The ledger count case also runs on PostgreSQL; it fails, never skips, when none answers (see
//! `bursar_store::testkit`).

#[allow(dead_code)]
mod scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy_primitives::B256;
use alloy_signer_local::PrivateKeySigner;
use bursar_facilitator::metrics::{
    EXTRA_REASONS_MAX, METRICS_CONTENT_TYPE, OTHER_REASON, PENDING_REFRESH_INTERVAL,
};
use bursar_facilitator::{
    Access, AccessPolicy, FacilitatorHooks, MemoryLimiter, Refusal, RouterOptions, metrics_router,
    protected_router, router_with,
};
use bursar_protocol::{FacilitatorRequest, Reason, SettleResponse, X402Version};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{Claimant, SettlementKey, SettlementLedger, SettlementState, SqliteDatabase};
use scenarios::Harness;
use serde_json::Value;

/// The process that claims in these cases.
const HOLDER: &str = "metrics-test/0000000000000001";

fn claimant(fingerprint: u8) -> Claimant {
    Claimant {
        fingerprint: B256::with_last_byte(fingerprint),
        holder: HOLDER.into(),
        payment_id: None,
        pay_to: PrivateKeySigner::random().address(),
        amount: bursar_protocol::Amount::from(1_000u64),
    }
}

const VALID_VERIFIES: u64 = 3;
const INVALID_VERIFIES: u64 = 2;

async fn harness() -> Harness {
    scenarios::harness(bursar_chain_revm::EmbeddedChain::memory()).await
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    url
}

/// One parsed sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the series `name` with exactly `labels`, if exposed.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|sample| sample.name == name && sample.labels == wanted)
        .map(|sample| sample.value)
}

fn expect(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

async fn scrape(http: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = http.get(format!("{url}/metrics")).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn scrape_samples(h: &Harness) -> Vec<Sample> {
    let (status, content_type, text) = scrape(&h.http, &h.url).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, METRICS_CONTENT_TYPE);
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition: {text}"
    );
    parse(&text)
}

#[tokio::test]
async fn counts_verifications_settlements_gas_and_pending() {
    let h = harness().await;
    let requirements = h.requirements();

    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let body = h.request(X402Version::V2, &requirements, &exact);
    for _ in 0..VALID_VERIFIES {
        let (status, verified) = h.post("/verify", &body).await;
        assert_eq!((status, &verified["isValid"]), (200, &Value::Bool(true)));
    }
    // Signed by a payer without a single token: insufficient funds.
    let broke = PrivateKeySigner::random();
    let broke_exact = h.authorization(&requirements, &broke, |_| {}).await;
    let broke_body = h.request(X402Version::V2, &requirements, &broke_exact);
    for _ in 0..INVALID_VERIFIES {
        let (status, verified) = h.post("/verify", &broke_body).await;
        assert_eq!(status, 200);
        assert_eq!(
            verified["invalidReason"],
            Reason::INSUFFICIENT_FUNDS.as_str(),
            "{verified}"
        );
    }
    let (status, settled) = h.post("/settle", &body).await;
    assert_eq!((status, &settled["success"]), (200, &Value::Bool(true)));
    let receipt = h
        .fixture
        .chain
        .receipt(settled["transaction"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .expect("mined");
    let (status, refused) = h.post("/settle", &broke_body).await;
    assert_eq!(status, 200);
    assert_eq!(refused["success"], false);
    assert_eq!(
        refused["errorReason"],
        Reason::INSUFFICIENT_FUNDS.as_str(),
        "{refused}"
    );
    let not_found = h.http.get(format!("{}/nope", h.url)).send().await.unwrap();
    assert_eq!(not_found.status().as_u16(), 404);
    let document = h
        .http
        .get(format!("{}/openapi.json", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(document.status().as_u16(), 200);

    let samples = scrape_samples(&h).await;
    let verify = "bursar_facilitator_verify_total";
    assert_eq!(
        expect(&samples, verify, &[("outcome", "valid"), ("reason", "")]),
        VALID_VERIFIES as f64
    );
    assert_eq!(
        expect(
            &samples,
            verify,
            &[("outcome", "invalid"), ("reason", "insufficient_funds")]
        ),
        INVALID_VERIFIES as f64
    );
    assert_eq!(
        samples.iter().filter(|s| s.name == verify).count(),
        2,
        "no other verify series"
    );
    assert_eq!(
        expect(
            &samples,
            "bursar_facilitator_settle_total",
            &[("outcome", "success"), ("reason", "")]
        ),
        1.0
    );
    assert_eq!(
        expect(
            &samples,
            "bursar_facilitator_settle_total",
            &[("outcome", "failure"), ("reason", "insufficient_funds")]
        ),
        1.0
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "bursar_facilitator_settle_total")
            .count(),
        2
    );

    // Histograms: one observation per answer, each under the +Inf bucket and a positive sum.
    for (histogram, outcome, count) in [
        ("verify", "valid", VALID_VERIFIES),
        ("verify", "invalid", INVALID_VERIFIES),
        ("settle", "success", 1),
        ("settle", "failure", 1),
    ] {
        let name = format!("bursar_facilitator_{histogram}_duration_seconds");
        let labels = [("outcome", outcome)];
        assert_eq!(
            expect(&samples, &format!("{name}_count"), &labels),
            count as f64,
            "{name} {outcome}"
        );
        assert_eq!(
            expect(
                &samples,
                &format!("{name}_bucket"),
                &[("outcome", outcome), ("le", "+Inf")]
            ),
            count as f64
        );
        assert!(expect(&samples, &format!("{name}_sum"), &labels) > 0.0);
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket") && s.labels["outcome"] == outcome)
            .collect();
        assert_eq!(buckets.len(), 18, "17 bounds and +Inf");
        assert_eq!(buckets[0].labels["le"], "0.0001");
        assert_eq!(buckets[16].labels["le"], "30.0");
    }

    let http = "bursar_facilitator_http_requests_total";
    assert_eq!(
        expect(&samples, http, &[("route", "/verify"), ("status", "200")]),
        (VALID_VERIFIES + INVALID_VERIFIES) as f64
    );
    assert_eq!(
        expect(&samples, http, &[("route", "/settle"), ("status", "200")]),
        2.0
    );
    assert_eq!(
        expect(&samples, http, &[("route", "other"), ("status", "404")]),
        1.0
    );
    // The test client reads the document too (to check responses against it); `other` above
    // counts only the unknown path.
    assert!(
        expect(
            &samples,
            http,
            &[("route", "/openapi.json"), ("status", "200")]
        ) >= 1.0,
        "the document is counted under its own route"
    );

    // Gas: exactly what the settlement's receipt says it cost (the refusal sent nothing).
    assert!(receipt.gas_used > 21_000 && receipt.effective_gas_price > 0);
    assert_eq!(
        expect(&samples, "bursar_facilitator_gas_used_total", &[]),
        receipt.gas_used as f64
    );
    let wei = u128::from(receipt.gas_used) * receipt.effective_gas_price;
    assert!(wei < 1 << 53, "exact as a float");
    assert_eq!(
        expect(&samples, "bursar_facilitator_gas_spent_wei_total", &[]),
        wei as f64
    );
    assert_eq!(
        expect(&samples, "bursar_facilitator_batches_total", &[]),
        0.0
    );
    assert_eq!(
        expect(&samples, "bursar_facilitator_batch_items_count", &[]),
        0.0
    );
    assert_eq!(
        expect(&samples, "bursar_facilitator_pending_settlements", &[]),
        0.0
    );

    // The gauge follows the ledger: a claim nobody finished is pending at the next read.
    let ledger = h.facilitator.ledger().clone();
    let key = SettlementKey::parse(
        &format!("eip155:{}", h.chain_id()),
        &h.fixture.token.address().to_string(),
        &broke.address().to_string(),
        &format!("0x{}", "07".repeat(32)),
    )
    .unwrap();
    ledger.claim(&key, &claimant(1)).await.unwrap();
    tokio::time::sleep(PENDING_REFRESH_INTERVAL + std::time::Duration::from_millis(100)).await;
    let samples = scrape_samples(&h).await;
    assert_eq!(
        expect(&samples, "bursar_facilitator_pending_settlements", &[]),
        1.0
    );
    // The first scrape was answered and counted.
    assert_eq!(
        expect(&samples, http, &[("route", "/metrics"), ("status", "200")]),
        1.0
    );
}

/// Refuses every verification with a reason the caller controls: a new one each time.
struct ReasonFlood {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl FacilitatorHooks for ReasonFlood {
    async fn before_verify(&self, _request: &FacilitatorRequest) -> Result<(), Refusal> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let reason = match n % 4 {
            0 => format!("bogus_{n}"),
            1 => format!("Bogus-{n} with spaces"),
            2 => format!("long_{}", "x".repeat(100 + n)),
            _ if n == 3 => "payer_not_allowed".to_string(),
            _ => format!("b\u{00e9}gus_{n}"),
        };
        Err(Refusal::new(reason, "refused"))
    }
}

#[tokio::test]
async fn caller_chosen_reasons_cannot_grow_the_label_set() {
    const FLOOD: usize = 400;
    let h = harness().await;
    h.facilitator
        .metrics()
        .allow_reasons(["payer_not_allowed", "Not Snake Case"]);
    let facilitator = h.facilitator.clone().with_hooks(Arc::new(ReasonFlood {
        calls: AtomicUsize::new(0),
    }));
    let requirements = h.requirements();
    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let body = h.request(X402Version::V2, &requirements, &exact);
    let request = FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap();
    for _ in 0..FLOOD {
        let verified = facilitator.verify(&request).await;
        assert!(!verified.is_valid);
    }

    let samples = scrape_samples(&h).await;
    let series: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "bursar_facilitator_verify_total")
        .collect();
    let reasons: BTreeSet<&str> = series.iter().map(|s| s.labels["reason"].as_str()).collect();
    // Snake_case reasons seen first fill the extra slots; the allowed one keeps its own label;
    // the rest (malformed, too long, non-ASCII, or late) are `other`.
    assert_eq!(
        reasons.len(),
        EXTRA_REASONS_MAX + 2,
        "{reasons:?}: the extra slots, payer_not_allowed and other"
    );
    assert!(reasons.contains("payer_not_allowed"));
    assert!(reasons.contains(OTHER_REASON));
    assert!(reasons.contains("bogus_0"));
    assert!(!reasons.iter().any(|r| r.len() > 64 || r.contains(' ')));
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, FLOOD as f64, "every refusal counted once");
    let other = expect(
        &samples,
        "bursar_facilitator_verify_total",
        &[("outcome", "invalid"), ("reason", OTHER_REASON)],
    );
    assert_eq!(other, (FLOOD - EXTRA_REASONS_MAX - 1) as f64);

    // A further flood adds no series at all.
    for _ in 0..FLOOD {
        facilitator.verify(&request).await;
    }
    let samples = scrape_samples(&h).await;
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "bursar_facilitator_verify_total")
            .count(),
        EXTRA_REASONS_MAX + 2
    );
}

#[tokio::test]
async fn metrics_route_is_open_can_be_left_out_or_served_alone() {
    let h = harness().await;
    let access = Access {
        policy: AccessPolicy::default(),
        keys: Arc::new(SqliteDatabase::memory()),
        limiter: Arc::new(MemoryLimiter::new()),
    };
    // Behind API keys, /verify refuses a caller without a key; /metrics answers and counts it.
    let protected = serve(protected_router(h.facilitator.clone(), access)).await;
    let response = h
        .http
        .post(format!("{protected}/verify"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, _, text) = scrape(&h.http, &protected).await;
    assert_eq!(status, 200);
    let samples = parse(&text);
    assert_eq!(
        expect(
            &samples,
            "bursar_facilitator_http_requests_total",
            &[("route", "/verify"), ("status", "401")]
        ),
        1.0
    );

    let without = serve(router_with(
        h.facilitator.clone(),
        RouterOptions { metrics: false },
    ))
    .await;
    let (status, _, _) = scrape(&h.http, &without).await;
    assert_eq!(status, 404);

    let alone = serve(metrics_router(h.facilitator.clone())).await;
    let (status, content_type, text) = scrape(&h.http, &alone).await;
    assert_eq!((status, content_type.as_str()), (200, METRICS_CONTENT_TYPE));
    assert!(text.contains("bursar_facilitator_pending_settlements 0"));
    let verify = h
        .http
        .post(format!("{alone}/verify"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status().as_u16(), 404, "only /metrics");
}

async fn assert_counts_unfinished(ledger: Arc<dyn SettlementLedger>) {
    let key = |n: u8| {
        SettlementKey::parse(
            "eip155:31337",
            "0x00000000000000000000000000000000000000aa",
            "0x00000000000000000000000000000000000000bb",
            &format!("0x{}", format!("{n:02x}").repeat(32)),
        )
        .unwrap()
    };
    let count = || async { ledger.count_unfinished().await.unwrap() };
    assert_eq!(count().await, 0);
    for n in 1..=3 {
        ledger.claim(&key(n), &claimant(0xf1)).await.unwrap();
    }
    assert_eq!(count().await, 3);
    let pending = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: None,
        transaction: format!("0x{}", "ab".repeat(32)).into(),
        network: "eip155:31337".into(),
    };
    let submission = bursar_store::Submission {
        tx_hash: pending.transaction.evm().unwrap(),
        sender: PrivateKeySigner::random().address(),
        sender_nonce: 0,
        valid_before_s: u64::MAX >> 1,
        pending_response: pending.clone(),
    };
    ledger
        .mark_submitted(&key(1), HOLDER, &submission)
        .await
        .unwrap();
    ledger
        .mark_submitted(&key(2), HOLDER, &submission)
        .await
        .unwrap();
    assert_eq!(count().await, 3, "received and submitted both count");
    ledger
        .finish(&key(1), &pending, SettlementState::Confirmed)
        .await
        .unwrap();
    assert_eq!(count().await, 2);
    ledger
        .finish(&key(2), &pending, SettlementState::Failed)
        .await
        .unwrap();
    assert!(ledger.release(&key(3), Some(HOLDER)).await.unwrap());
    assert_eq!(count().await, 0, "finished and released rows do not count");
}

#[tokio::test]
async fn ledgers_count_unfinished_settlements() {
    let file = TempSqlite::new();
    assert_counts_unfinished(bursar_store::open(&file.url()).await.unwrap()).await;
    let database = TempPostgres::create().await;
    assert_counts_unfinished(bursar_store::open(database.url()).await.unwrap()).await;
}
