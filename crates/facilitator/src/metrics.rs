//! The facilitator's Prometheus metrics, served by `GET /metrics` in the OpenMetrics text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `bursar_facilitator_verify_total` | counter | `outcome` (`valid`/`invalid`), `reason` |
//! | `bursar_facilitator_settle_total` | counter | `outcome` (`success`/`failure`), `reason` |
//! | `bursar_facilitator_verify_duration_seconds` | histogram | `outcome` |
//! | `bursar_facilitator_settle_duration_seconds` | histogram | `outcome` |
//! | `bursar_facilitator_http_requests_total` | counter | `route`, `status` |
//! | `bursar_facilitator_batches_total` | counter | |
//! | `bursar_facilitator_batch_items` | histogram | |
//! | `bursar_facilitator_pending_settlements` | gauge | |
//! | `bursar_facilitator_pending_settlements_read_errors_total` | counter | |
//! | `bursar_facilitator_gas_used_total` | counter | |
//! | `bursar_facilitator_gas_spent_wei_total` | counter | |
//!
//! - `reason` is the x402 reason of an invalid payment or a failed settlement, empty for a valid
//!   or successful one. Label values are bounded whatever a caller sends: Bursar's own reasons
//!   and those given to [`FacilitatorMetrics::allow_reasons`] are kept; other snake_case reasons
//!   of at most [`REASON_LABEL_BYTES_MAX`] bytes are kept until [`EXTRA_REASONS_MAX`] distinct ones
//!   were seen; anything else is counted as `other`.
//! - `route` is one of the facilitator's routes or `other`, so unknown paths add no label values.
//! - The pending gauge is the ledger's count of `received` and `submitted` settlements, read when
//!   scraped (at most once per [`PENDING_REFRESH_INTERVAL`]). Facilitators sharing one database
//!   all report the whole ledger's count.
//! - Gas is counted when a settlement transaction's receipt arrives, whether it succeeded or
//!   reverted: `gas_used × effective_gas_price` wei.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bursar_protocol::{Reason, SettleResponse, VerifyResponse};
use bursar_store::SettlementLedger;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of a scrape: the OpenMetrics text format.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest reason kept as a label value; longer ones count as `other`.
pub const REASON_LABEL_BYTES_MAX: usize = 64;
/// How many distinct reasons outside the known set are kept as label values; later ones count
/// as `other`.
pub const EXTRA_REASONS_MAX: usize = 32;
/// The label value of every reason not kept.
pub const OTHER_REASON: &str = "other";
/// The pending-settlements count is read from the ledger at most this often; scrapes in between
/// see the last count.
pub const PENDING_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Latency buckets, in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Batch size buckets, in settlements per transaction.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The routes counted by name in `bursar_facilitator_http_requests_total`.
const ROUTES: [&str; 9] = [
    "/verify",
    "/settle",
    "/supported",
    "/health",
    "/metrics",
    "/openapi.json",
    "/discovery/resources",
    "/discovery/search",
    "/discovery/reports",
];

/// The `route` label of a request path: the route, or `other`.
pub(crate) fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("other")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeReason {
    outcome: &'static str,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The reasons Bursar itself reports.
fn bursar_reasons() -> [Reason; 21] {
    [
        Reason::INVALID_X402_VERSION,
        Reason::INVALID_SCHEME,
        Reason::INVALID_NETWORK,
        Reason::INVALID_PAYLOAD,
        Reason::INVALID_PAYMENT_REQUIREMENTS,
        Reason::MISSING_EIP712_DOMAIN,
        Reason::INVALID_SIGNATURE,
        Reason::RECIPIENT_MISMATCH,
        Reason::ASSET_MISMATCH,
        Reason::VALID_BEFORE,
        Reason::VALID_AFTER,
        Reason::VALUE_MISMATCH,
        Reason::INSUFFICIENT_FUNDS,
        Reason::NONCE_ALREADY_USED,
        Reason::TOKEN_DOMAIN_MISMATCH,
        Reason::UNSUPPORTED_TOKEN,
        Reason::SIMULATION_FAILED,
        Reason::SETTLEMENT_IN_PROGRESS,
        Reason::TRANSACTION_FAILED,
        Reason::UNEXPECTED_VERIFY_ERROR,
        Reason::UNEXPECTED_SETTLE_ERROR,
    ]
}

/// snake_case, starting with a letter, at most [`REASON_LABEL_BYTES_MAX`] bytes.
fn is_label_shaped(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= REASON_LABEL_BYTES_MAX
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

#[derive(Default)]
struct Reasons {
    /// Always kept: Bursar's reasons and those allowed explicitly.
    known: HashSet<String>,
    /// Kept because they came first, at most [`EXTRA_REASONS_MAX`].
    extra: HashSet<String>,
}

struct Inner {
    registry: Registry,
    verify: Family<OutcomeReason, Counter>,
    settle: Family<OutcomeReason, Counter>,
    verify_seconds: Family<Outcome, Histogram, fn() -> Histogram>,
    settle_seconds: Family<Outcome, Histogram, fn() -> Histogram>,
    http_requests: Family<RouteStatus, Counter>,
    batches: Counter,
    batch_items: Histogram,
    pending: Gauge,
    pending_read_errors: Counter,
    gas_used: Counter,
    gas_spent_wei: Counter<f64, AtomicU64>,
    reasons: Mutex<Reasons>,
    /// When the pending count was last read; a tokio mutex so concurrent scrapes share one read.
    pending_read_at: tokio::sync::Mutex<Option<Instant>>,
}

/// The facilitator's metrics. A cheap handle: clones share one registry.
///
/// Every [`crate::LocalFacilitator`] has one ([`crate::LocalFacilitator::metrics`]) and records
/// each verify and settle in it; [`crate::router`] and [`crate::protected_router`] serve it.
#[derive(Clone)]
pub struct FacilitatorMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FacilitatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilitatorMetrics").finish_non_exhaustive()
    }
}

impl Default for FacilitatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FacilitatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bursar_facilitator");
        let verify = Family::<OutcomeReason, Counter>::default();
        registry.register(
            "verify",
            "Verifications answered, by outcome and x402 reason",
            verify.clone(),
        );
        let settle = Family::<OutcomeReason, Counter>::default();
        registry.register(
            "settle",
            "Settlements answered, by outcome and x402 reason",
            settle.clone(),
        );
        let verify_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "verify_duration",
            "Time to answer a verification",
            Unit::Seconds,
            verify_seconds.clone(),
        );
        let settle_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "settle_duration",
            "Time to answer a settlement, including the wait for the receipt",
            Unit::Seconds,
            settle_seconds.clone(),
        );
        let http_requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let batches = Counter::default();
        registry.register(
            "batches",
            "Batched settlement transactions submitted",
            batches.clone(),
        );
        let batch_items = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "batch_items",
            "Settlements per batched settlement transaction",
            batch_items.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "pending_settlements",
            "Settlements received or submitted but not finished, in the ledger",
            pending.clone(),
        );
        let pending_read_errors = Counter::default();
        registry.register(
            "pending_settlements_read_errors",
            "Scrapes that could not read the pending settlements from the ledger",
            pending_read_errors.clone(),
        );
        let gas_used = Counter::default();
        registry.register(
            "gas_used",
            "Gas used by settlement transactions",
            gas_used.clone(),
        );
        let gas_spent_wei = Counter::<f64, AtomicU64>::default();
        registry.register(
            "gas_spent_wei",
            "Wei paid for the gas of settlement transactions (gas used times effective gas price)",
            gas_spent_wei.clone(),
        );
        let reasons = Reasons {
            known: bursar_reasons()
                .iter()
                .map(|reason| reason.as_str().to_string())
                .collect(),
            extra: HashSet::new(),
        };
        FacilitatorMetrics {
            inner: Arc::new(Inner {
                registry,
                verify,
                settle,
                verify_seconds,
                settle_seconds,
                http_requests,
                batches,
                batch_items,
                pending,
                pending_read_errors,
                gas_used,
                gas_spent_wei,
                reasons: Mutex::new(reasons),
                pending_read_at: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Keeps these reasons as label values whatever else was seen (for example the reasons of
    /// [`crate::FacilitatorHooks`] refusals). Reasons that are not snake_case or longer than
    /// [`REASON_LABEL_BYTES_MAX`] still count as `other`.
    pub fn allow_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        let mut set = self.inner.reasons.lock().expect("lock");
        for reason in reasons {
            if is_label_shaped(reason) {
                set.known.insert(reason.to_string());
            }
        }
    }

    /// The label value of `reason`; see the module docs.
    fn reason_label(&self, reason: Option<&Reason>) -> String {
        let Some(reason) = reason else {
            return OTHER_REASON.to_string();
        };
        let text = reason.as_str();
        if !is_label_shaped(text) {
            return OTHER_REASON.to_string();
        }
        let mut set = self.inner.reasons.lock().expect("lock");
        if set.known.contains(text) || set.extra.contains(text) {
            return text.to_string();
        }
        if set.extra.len() < EXTRA_REASONS_MAX {
            set.extra.insert(text.to_string());
            return text.to_string();
        }
        OTHER_REASON.to_string()
    }

    /// Records one verification's answer and how long it took, and notes the outcome on the
    /// current span.
    pub(crate) fn verified(&self, response: &VerifyResponse, elapsed: Duration) {
        let (outcome, reason) = if response.is_valid {
            ("valid", String::new())
        } else {
            (
                "invalid",
                self.reason_label(response.invalid_reason.as_ref()),
            )
        };
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        if !response.is_valid {
            span.record("reason", reason.as_str());
        }
        self.inner
            .verify
            .get_or_create(&OutcomeReason { outcome, reason })
            .inc();
        self.inner
            .verify_seconds
            .get_or_create(&Outcome { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one settlement's answer and how long it took, and notes the outcome on the
    /// current span.
    pub(crate) fn settled(&self, response: &SettleResponse, elapsed: Duration) {
        let (outcome, reason) = if response.success {
            ("success", String::new())
        } else {
            ("failure", self.reason_label(response.error_reason.as_ref()))
        };
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        if response.success {
            span.record("transaction", response.transaction.as_str());
        } else {
            span.record("reason", reason.as_str());
        }
        self.inner
            .settle
            .get_or_create(&OutcomeReason { outcome, reason })
            .inc();
        self.inner
            .settle_seconds
            .get_or_create(&Outcome { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one HTTP answer on `route` (see [`route_label`]).
    pub(crate) fn http_request(&self, route: &'static str, status: u16) {
        self.inner
            .http_requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
    }

    /// Records one batched settlement transaction carrying `items` settlements.
    pub fn batch_submitted(&self, items: usize) {
        self.inner.batches.inc();
        self.inner.batch_items.observe(items as f64);
    }

    /// Records the gas of one mined settlement transaction (successful or reverted):
    /// `gas_used` and `gas_used × effective_gas_price_wei` wei.
    pub fn gas_spent(&self, gas_used: u64, effective_gas_price_wei: u128) {
        self.inner.gas_used.inc_by(gas_used);
        let wei = u128::from(gas_used).saturating_mul(effective_gas_price_wei);
        // Prometheus values are floats: exact while the total stays below 2^53 wei.
        self.inner.gas_spent_wei.inc_by(wei as f64);
    }

    /// Reads the pending settlements from `ledger`, unless read less than
    /// [`PENDING_REFRESH_INTERVAL`] ago. A failed read keeps the last count and is counted.
    pub async fn refresh_pending(&self, ledger: &dyn SettlementLedger) {
        let mut read_at = self.inner.pending_read_at.lock().await;
        if read_at.is_some_and(|at| at.elapsed() < PENDING_REFRESH_INTERVAL) {
            return;
        }
        match ledger.count_unfinished().await {
            Ok(count) => {
                self.inner
                    .pending
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot count pending settlements for /metrics");
                self.inner.pending_read_errors.inc();
            }
        }
        *read_at = Some(Instant::now());
    }

    /// The OpenMetrics text exposition of every metric ([`METRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_bounded_in_length_and_shape() {
        let metrics = FacilitatorMetrics::new();
        let label = |text: &str| metrics.reason_label(Some(&Reason::other(text.to_string())));
        assert_eq!(label("insufficient_funds"), "insufficient_funds");
        let longest = format!("a{}", "b".repeat(REASON_LABEL_BYTES_MAX - 1));
        assert_eq!(label(&longest), longest);
        assert_eq!(label(&format!("{longest}c")), OTHER_REASON);
        for malformed in [
            "",
            "9lives",
            "_x",
            "Upper",
            "with space",
            "caf\u{e9}",
            "a-b",
            "a\"b",
        ] {
            assert_eq!(label(malformed), OTHER_REASON, "{malformed:?}");
        }
        assert_eq!(metrics.reason_label(None), OTHER_REASON);
    }

    #[test]
    fn extra_reasons_fill_a_fixed_number_of_slots() {
        let metrics = FacilitatorMetrics::new();
        let label = |text: String| metrics.reason_label(Some(&Reason::other(text)));
        for n in 0..EXTRA_REASONS_MAX {
            assert_eq!(label(format!("r{n}")), format!("r{n}"));
        }
        assert_eq!(label("late".into()), OTHER_REASON);
        assert_eq!(label("r0".into()), "r0", "a kept reason stays kept");
        metrics.allow_reasons(["late"]);
        assert_eq!(label("late".into()), "late");
        assert_eq!(
            label(Reason::NONCE_ALREADY_USED.as_str().into()),
            Reason::NONCE_ALREADY_USED.as_str()
        );
    }
}
