//! Graduated budget alerts: when a reservation brings a budget to a threshold (a percentage, from
//! the policies' `[alerts] thresholds`, default 50% and 75%), the runtime records an alert and an
//! `alert` ledger entry, once per budget and threshold, and delivers it to a webhook.
//!
//! - **Budgets**: the session's `max_spend` (reserved + posted), and every cap over a rolling
//!   window in force for the payment (per wallet or per agent). A window alert is recorded once
//!   per window period (the period `now / period` falls in), so it fires again in a later period.
//! - **Exactly once**: the store keys alerts by budget and threshold (a UNIQUE constraint and an
//!   insert-if-absent), so concurrent reservations and several runtimes sharing one database
//!   record one alert each ([`bursar_store::AlertStore`]).
//! - **Delivery** ([`Runtime::spawn_alert_delivery`]): alerts are an outbox in the database. A
//!   background task claims due alerts with a lease (so two processes never both send one),
//!   POSTs them as JSON signed with HMAC-SHA256 and retries failures with exponential backoff
//!   (1 s, 2 s, 4 s, … at most 5 min) until it gives up after [`ALERT_ATTEMPTS_DEFAULT`]
//!   attempts. A process that dies mid-delivery leaves the lease to expire, after which the
//!   alert is sent again: delivery is at least once, and receivers deduplicate by alert id.
//!   Neither recording nor delivery ever blocks or fails a payment.
//!
//! ## The webhook request
//!
//! `POST <url>` with `Content-Type: application/json`, `X-Bursar-Alert-Id: <id>` and
//! `X-Bursar-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is
//! `HMAC-SHA256(secret, "<unix seconds>.<body>")` in lowercase hex ([`signature`], checked with
//! [`verify_signature`]). A 2xx answer is a delivery; anything else is retried.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::U256;
use bursar_governance::Policy;
use bursar_protocol::Amount;
use bursar_store::runtime::{SessionRecord, SpendCap, TransferRecord};
use bursar_store::{AlertRecord, AlertStore, AttemptOutcome, NewAlert};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::RuntimeError;
use crate::service::Runtime;

/// The environment variable holding the webhook's signing secret.
pub const ALERT_SECRET_ENV: &str = "BURSAR_ALERT_SECRET";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Bursar-Signature";
/// The header carrying the alert id (for deduplication by receivers).
pub const ALERT_ID_HEADER: &str = "X-Bursar-Alert-Id";
/// The first retry's delay; each later one doubles it.
pub const ALERT_RETRY_BASE_DEFAULT: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
pub const ALERT_RETRY_MAX_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Attempts before an alert's delivery is given up on.
pub const ALERT_ATTEMPTS_DEFAULT: u32 = 10;
/// Timeout of one webhook request.
pub const ALERT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How often the delivery task looks for due alerts when it has nothing to do.
pub const ALERT_POLL_DEFAULT: Duration = Duration::from_secs(1);
/// Alerts claimed per pass.
pub const ALERT_BATCH_MAX: usize = 32;
/// Shortest secret accepted, in bytes.
pub const ALERT_SECRET_BYTES_MIN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Where alerts are delivered, and how. The secret never leaves this value except as HMACs; its
/// `Debug` form is redacted.
#[derive(Clone)]
pub struct AlertWebhook {
    pub url: url::Url,
    secret: Arc<Vec<u8>>,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub attempts_max: u32,
    pub timeout: Duration,
    pub poll_interval: Duration,
}

impl std::fmt::Debug for AlertWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertWebhook")
            .field("url", &self.display_url())
            .field("secret", &"<redacted>")
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("attempts_max", &self.attempts_max)
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl AlertWebhook {
    /// A webhook at `url` (http or https) signed with `secret` (at least
    /// [`ALERT_SECRET_BYTES_MIN`] bytes), with the default retry schedule.
    pub fn new(url: &str, secret: Vec<u8>) -> Result<AlertWebhook, RuntimeError> {
        let url = url::Url::parse(url)
            .map_err(|e| RuntimeError::Invalid(format!("alert webhook URL {url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RuntimeError::Invalid(format!(
                "alert webhook URL must be http or https, not {}",
                url.scheme()
            )));
        }
        if secret.len() < ALERT_SECRET_BYTES_MIN {
            return Err(RuntimeError::Invalid(format!(
                "the alert webhook secret must be at least {ALERT_SECRET_BYTES_MIN} bytes"
            )));
        }
        Ok(AlertWebhook {
            url,
            secret: Arc::new(secret),
            retry_base: ALERT_RETRY_BASE_DEFAULT,
            retry_max: ALERT_RETRY_MAX_DEFAULT,
            attempts_max: ALERT_ATTEMPTS_DEFAULT,
            timeout: ALERT_TIMEOUT_DEFAULT,
            poll_interval: ALERT_POLL_DEFAULT,
        })
    }

    /// The URL without credentials or query (which may hold tokens), for logs and listings.
    pub fn display_url(&self) -> String {
        let mut shown = self.url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        shown.to_string()
    }

    /// The secret from `file` (surrounding whitespace trimmed), else from
    /// [`ALERT_SECRET_ENV`]. Errors never contain the secret.
    pub fn read_secret(file: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read the alert secret file {}: {e}", path.display())
            })?,
            None => std::env::var(ALERT_SECRET_ENV).map_err(|_| {
                format!("no alert webhook secret: set {ALERT_SECRET_ENV} or give a secret file")
            })?,
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err("the alert webhook secret is empty".into());
        }
        Ok(secret.as_bytes().to_vec())
    }

    /// The delay before the attempt after `attempts` failed ones: base × 2^(attempts−1), capped.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }
}

/// `t=<timestamp_s>,v1=<HMAC-SHA256(secret, "<timestamp_s>.<body>") in hex>`.
pub fn signature(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp_s},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Whether `header` (an `X-Bursar-Signature` value) signs `body` with `secret`, and its
/// timestamp is within `tolerance` of now. Compares in constant time.
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<u64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now_s().abs_diff(timestamp) > tolerance.as_secs() {
        return false;
    }
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    signatures.iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|bytes| {
            use subtle::ConstantTimeEq;
            bytes.len() == expected.len() && bool::from(bytes.ct_eq(&expected))
        })
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `used` is at least `threshold` percent of `cap` (exact, in integers).
pub fn reached(used: Amount, cap: Amount, threshold: u8) -> bool {
    if cap.is_zero() {
        return false;
    }
    let used = used.atomic().saturating_mul(U256::from(100u8));
    let bar = cap.atomic().saturating_mul(U256::from(threshold));
    used >= bar
}

/// An alert as the webhook receives it (and `GET /v1/alerts` lists it, with its delivery).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertBody {
    pub id: String,
    /// Always `budget.threshold`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub budget: String,
    /// Percent of the cap.
    pub threshold: u8,
    #[schema(value_type = String)]
    pub used_atomic: Amount,
    #[schema(value_type = String)]
    pub cap_atomic: Amount,
    pub currency: String,
    pub network: String,
    pub asset: String,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub transfer_id: Option<String>,
    pub window_seconds: Option<i64>,
    pub window_start_ms: Option<i64>,
    pub reason: String,
    pub at_ms: i64,
}

impl From<&AlertRecord> for AlertBody {
    fn from(alert: &AlertRecord) -> Self {
        AlertBody {
            id: alert.id.clone(),
            kind: "budget.threshold",
            budget: alert.budget.clone(),
            threshold: alert.threshold,
            used_atomic: alert.used,
            cap_atomic: alert.cap,
            currency: alert.currency.clone(),
            network: alert.network.to_string(),
            asset: format!("{:#x}", alert.asset),
            session_id: alert.session_id.clone(),
            grant_id: alert.grant_id.clone(),
            wallet_id: alert.wallet_id.clone(),
            agent: alert.agent.clone(),
            transfer_id: alert.transfer_id.clone(),
            window_seconds: alert.window_ms.map(|ms| ms / 1000),
            window_start_ms: alert.window_start_ms,
            reason: alert.reason.clone(),
            at_ms: alert.created_at_ms,
        }
    }
}

/// One budget a reservation counts against.
struct Budget {
    key: String,
    kind: &'static str,
    /// Used so far; read only when some threshold is still unrecorded.
    usage: Usage,
    cap: Amount,
    window_ms: Option<i64>,
    window_start_ms: Option<i64>,
    label: String,
}

enum Usage {
    Session,
    Window {
        agent: Option<String>,
        since_ms: i64,
    },
}

/// After a reservation: records an alert (and its ledger entry) for every threshold a budget of
/// this payment has reached and that has none yet. Never fails the payment: errors are logged.
pub(crate) async fn after_reservation(
    runtime: &Runtime,
    session: &SessionRecord,
    policies: &[Policy],
    caps: &[SpendCap],
    transfer: &TransferRecord,
) {
    let thresholds = bursar_governance::alert_thresholds(policies);
    if thresholds.is_empty() {
        return;
    }
    if let Err(error) = record_alerts(runtime, session, &thresholds, caps, transfer).await {
        tracing::warn!(session = %session.id, %error, "could not record budget alerts");
    }
}

/// The budgets a reservation counts against: the session's, and one per window cap (keyed by
/// its window, so each window alerts once per threshold).
fn budgets_of(session: &SessionRecord, caps: &[SpendCap], now: i64) -> Vec<Budget> {
    let mut budgets = vec![Budget {
        key: format!("session:{}", session.id),
        kind: "session",
        usage: Usage::Session,
        cap: session.max_spend,
        window_ms: None,
        window_start_ms: None,
        label: format!("session {} budget", session.id),
    }];
    for cap in caps {
        if cap.period_ms <= 0 {
            continue;
        }
        let bucket = now.div_euclid(cap.period_ms);
        let (kind, subject, agent) = if cap.agent_only {
            (
                "agent_window",
                format!("agent:{}:{}", session.wallet_id, session.agent),
                Some(session.agent.clone()),
            )
        } else {
            (
                "wallet_window",
                format!("wallet:{}", session.wallet_id),
                None,
            )
        };
        budgets.push(Budget {
            key: format!("{subject}:{}:{}:{bucket}", cap.period_ms, cap.max),
            kind,
            usage: Usage::Window {
                agent,
                since_ms: now.saturating_sub(cap.period_ms),
            },
            cap: cap.max,
            window_ms: Some(cap.period_ms),
            window_start_ms: Some(bucket.saturating_mul(cap.period_ms)),
            label: format!(
                "{} window cap ({})",
                if cap.agent_only { "agent" } else { "wallet" },
                cap.label
            ),
        });
    }
    budgets
}

/// What is used of a budget now (`None` when the session is gone).
async fn used_of(
    runtime: &Runtime,
    session: &SessionRecord,
    usage: &Usage,
) -> Result<Option<Amount>, RuntimeError> {
    Ok(match usage {
        Usage::Session => runtime.store().session(&session.id).await?.map(|current| {
            current
                .reserved
                .checked_add(current.posted)
                .unwrap_or(current.max_spend)
        }),
        Usage::Window { agent, since_ms } => Some(
            runtime
                .store()
                .alert_store()
                .window_spend(&session.wallet_id, agent.as_deref(), *since_ms)
                .await?,
        ),
    })
}

async fn record_alerts(
    runtime: &Runtime,
    session: &SessionRecord,
    thresholds: &[u8],
    caps: &[SpendCap],
    transfer: &TransferRecord,
) -> Result<(), RuntimeError> {
    let store = runtime.store();
    let alerts = store.alert_store();
    let now = transfer.created_at_ms;
    let budgets = budgets_of(session, caps, now);
    let unit = &runtime.currency().unit;
    for budget in budgets {
        let recorded = alerts.thresholds_recorded(&budget.key).await?;
        let open: Vec<u8> = thresholds
            .iter()
            .copied()
            .filter(|threshold| !recorded.contains(threshold))
            .collect();
        if open.is_empty() {
            continue;
        }
        let Some(used) = used_of(runtime, session, &budget.usage).await? else {
            continue;
        };
        for threshold in open {
            if !reached(used, budget.cap, threshold) {
                continue;
            }
            let reason = format!(
                "{} reached {threshold}%: {} of {} {} used",
                budget.label,
                unit.format(used),
                unit.format(budget.cap),
                session.currency
            );
            let new = alerts
                .record_alert(NewAlert {
                    key: budget.key.clone(),
                    threshold,
                    budget: budget.kind.to_string(),
                    session_id: Some(session.id.clone()),
                    grant_id: Some(session.grant_id.clone()),
                    wallet_id: Some(session.wallet_id.clone()),
                    agent: Some(session.agent.clone()),
                    transfer_id: Some(transfer.id.clone()),
                    network: session.network.clone(),
                    asset: session.asset,
                    currency: session.currency.clone(),
                    used,
                    cap: budget.cap,
                    window_ms: budget.window_ms,
                    window_start_ms: budget.window_start_ms,
                    reason: format!("alert: {reason} (payment {})", transfer.id),
                    deliver_at_ms: now_ms(),
                })
                .await?;
            if let Some(alert) = new {
                tracing::info!(alert = %alert.id, budget = budget.kind, threshold, "budget alert");
            }
        }
    }
    Ok(())
}

impl Runtime {
    /// Delivers due alerts to the configured webhook until the task is aborted; `None` when no
    /// webhook is configured. Safe to run in every process sharing the database.
    pub fn spawn_alert_delivery(&self) -> Option<tokio::task::JoinHandle<()>> {
        let webhook = self.alert_webhook()?.clone();
        let alerts = self.store().alert_store();
        Some(tokio::spawn(deliver_forever(alerts, webhook)))
    }
}

async fn deliver_forever(alerts: Arc<dyn AlertStore>, webhook: AlertWebhook) {
    let http = match reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "alert delivery cannot start: no HTTP client");
            return;
        }
    };
    let holder = bursar_store::runtime::new_id("dlv_");
    // Long enough for a request and its bookkeeping; a crashed holder's lease runs out.
    let lease_ms = duration_ms(webhook.timeout.saturating_mul(2)).saturating_add(5_000);
    loop {
        let due = match alerts
            .claim_due_alerts(&holder, now_ms(), lease_ms, ALERT_BATCH_MAX)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "could not read due alerts");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::time::sleep(webhook.poll_interval).await;
            continue;
        }
        let attempts = due.iter().map(|alert| {
            let (http, webhook, alerts, holder) = (&http, &webhook, &alerts, &holder);
            async move {
                let outcome = match deliver(http, webhook, alert).await {
                    Ok(()) => AttemptOutcome::Delivered,
                    Err(error) => {
                        let attempts = alert.attempts.saturating_add(1);
                        tracing::warn!(alert = %alert.id, attempts, %error, "alert webhook failed");
                        if attempts >= webhook.attempts_max {
                            AttemptOutcome::GiveUp { error }
                        } else {
                            AttemptOutcome::Retry {
                                error,
                                next_attempt_at_ms: now_ms()
                                    .saturating_add(duration_ms(webhook.retry_delay(attempts))),
                            }
                        }
                    }
                };
                if let Err(error) = alerts.finish_attempt(&alert.id, holder, outcome).await {
                    tracing::warn!(alert = %alert.id, %error, "could not record an alert delivery");
                }
            }
        });
        futures::future::join_all(attempts).await;
    }
}

/// One POST of one alert; `Err` describes the failure (never with the secret).
async fn deliver(
    http: &reqwest::Client,
    webhook: &AlertWebhook,
    alert: &AlertRecord,
) -> Result<(), String> {
    let body = serde_json::to_vec(&AlertBody::from(alert)).map_err(|e| e.to_string())?;
    let signature = signature(&webhook.secret, now_s(), &body);
    let response = http
        .post(webhook.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(ALERT_ID_HEADER, &alert.id)
        .body(body)
        .send()
        .await
        .map_err(|error| format!("request failed: {}", error.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret() {
        let body = br#"{"id":"alr_1"}"#;
        let header = signature(b"0123456789abcdef", now_s(), body);
        assert!(verify_signature(
            b"0123456789abcdef",
            &header,
            body,
            Duration::from_secs(300)
        ));
        assert!(!verify_signature(
            b"0123456789abcdeX",
            &header,
            body,
            Duration::from_secs(300)
        ));
        assert!(!verify_signature(
            b"0123456789abcdef",
            &header,
            b"{}",
            Duration::from_secs(300)
        ));
        let old = signature(b"0123456789abcdef", now_s() - 3600, body);
        assert!(!verify_signature(
            b"0123456789abcdef",
            &old,
            body,
            Duration::from_secs(300)
        ));
    }

    #[test]
    fn thresholds_combine_across_policies() {
        let unit = bursar_protocol::AssetUnit::usdc();
        let policy = |text: &str| Policy::parse(text, &unit, "test").unwrap();
        let none = policy("max_per_call = \"1\"");
        assert_eq!(bursar_governance::alert_thresholds(&[]), vec![50, 75]);
        assert_eq!(
            bursar_governance::alert_thresholds(std::slice::from_ref(&none)),
            vec![50, 75]
        );
        let wallet = policy("[alerts]\nthresholds = [90, 50, 90]");
        let session = policy("[alerts]\nthresholds = [25]");
        assert_eq!(
            bursar_governance::alert_thresholds(&[none.clone(), wallet, session]),
            vec![25, 50, 90]
        );
        let off = policy("[alerts]\nthresholds = []");
        assert!(bursar_governance::alert_thresholds(&[none, off]).is_empty());
        for bad in [
            "[alerts]\nthresholds = [0]",
            "[alerts]\nthresholds = [-5]",
            "[alerts]\nthresholds = [101]",
            "[alerts]\nlevels = [50]",
        ] {
            assert!(Policy::parse(bad, &unit, "test").is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_and_backoff() {
        assert!(reached(Amount::from(50u64), Amount::from(100u64), 50));
        assert!(!reached(Amount::from(49u64), Amount::from(100u64), 50));
        assert!(reached(Amount::from(75u64), Amount::from(100u64), 75));
        assert!(!reached(Amount::from(1u64), Amount::ZERO, 1));
        let webhook =
            AlertWebhook::new("http://127.0.0.1:1/hook", b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(webhook.retry_delay(1), Duration::from_secs(1));
        assert_eq!(webhook.retry_delay(2), Duration::from_secs(2));
        assert_eq!(webhook.retry_delay(3), Duration::from_secs(4));
        assert_eq!(webhook.retry_delay(40), ALERT_RETRY_MAX_DEFAULT);
        assert!(!format!("{webhook:?}").contains("0123456789abcdef"));
        let with_token = AlertWebhook::new(
            "https://user:pw@hooks.example/alerts?token=t0k",
            b"0123456789abcdef".to_vec(),
        )
        .unwrap();
        assert_eq!(with_token.display_url(), "https://hooks.example/alerts");
        assert!(!format!("{with_token:?}").contains("t0k"));
        assert!(AlertWebhook::new("ftp://x/", b"0123456789abcdef".to_vec()).is_err());
        assert!(AlertWebhook::new("http://x/", b"short".to_vec()).is_err());
    }
}
