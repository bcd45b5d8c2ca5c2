//! Budget alerts and their webhook outbox.
//!
//! An alert says that a budget (a session's `max_spend`, or a cap over a rolling window) has
//! reached a threshold (a percentage). It is recorded at most once per budget and threshold:
//! the `alerts` table is UNIQUE on `(alert_key, threshold)`, and [`AlertStore::record_alert`]
//! inserts with `ON CONFLICT DO NOTHING`, so concurrent reservations, in this process or in
//! others sharing the database, record one row. For a rolling window the key names the window
//! period (`bucket = now / period`), so the alert can fire again in a later period. A new alert
//! writes its `alert` ledger entry (session, wallet, agent, the amount used so far, the reason;
//! no transfer, so a transfer's entries stay its reserve/post/void) in the same transaction.
//!
//! Each alert is also an outbox row for its webhook: `pending` until delivered (`delivered`) or
//! given up on (`failed`). [`AlertStore::claim_due_alerts`] takes due rows with a lease (a
//! conditional `UPDATE` per row, so two processes never hold one alert at once), and
//! [`AlertStore::finish_attempt`] records the attempt, only for the lease's holder.

use bursar_protocol::{Address, Amount, Network};
use sqlx::{AssertSqlSafe, Row};

use crate::common::{EntryKind, LIST_ROWS_MAX, RESOURCE_BYTES_MAX, StoreError, new_id, truncate};
use crate::now_ms;
use crate::sql::{PostgresDatabase, SqliteDatabase};

/// Prefix of alert ids.
pub const ALERT_ID_PREFIX: &str = "alr_";
/// Longest alert key, budget name or reason accepted.
pub const ALERT_FIELD_BYTES_MAX: usize = 1024;
/// Longest delivery error recorded (longer ones are truncated).
pub const DELIVERY_ERROR_BYTES_MAX: usize = 1024;

/// An alert to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Names the budget (and, for a rolling window, the period): alerts are unique per key and
    /// threshold.
    pub key: String,
    /// Percent of the cap, 1..=100.
    pub threshold: u8,
    /// What kind of budget: `session`, `wallet_window`, `agent_window`.
    pub budget: String,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    /// The reservation that crossed the threshold.
    pub transfer_id: Option<String>,
    pub network: Network,
    pub asset: Address,
    pub currency: String,
    /// Reserved or spent so far against the budget.
    pub used: Amount,
    pub cap: Amount,
    /// The window's length and the start of the period the alert is for (rolling windows).
    pub window_ms: Option<i64>,
    pub window_start_ms: Option<i64>,
    /// For the ledger entry: which budget, threshold and cap.
    pub reason: String,
    /// When the first delivery is due (unix ms).
    pub deliver_at_ms: i64,
}

/// Where an alert's webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Not delivered yet; retried when due.
    Pending,
    /// The webhook accepted it (2xx). Final.
    Delivered,
    /// Given up on after the last attempt. Final.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One recorded alert with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// `alr_` + 24 hex digits.
    pub id: String,
    pub key: String,
    pub threshold: u8,
    pub budget: String,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub transfer_id: Option<String>,
    pub network: Network,
    pub asset: Address,
    pub currency: String,
    pub used: Amount,
    pub cap: Amount,
    pub window_ms: Option<i64>,
    pub window_start_ms: Option<i64>,
    pub reason: String,
    pub created_at_ms: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub last_attempt_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; try again at `next_attempt_at_ms`.
    Retry {
        error: String,
        next_attempt_at_ms: i64,
    },
    /// Failed, and that was the last attempt.
    GiveUp {
        error: String,
    },
}

/// Alerts and their outbox. [`SqliteDatabase`] and [`PostgresDatabase`] implement it over the
/// runtime's database; reach it with `RuntimeStore::alert_store`.
#[async_trait::async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// Records the alert and its `alert` ledger entry in one transaction, unless an alert with
    /// the same key and threshold exists. Returns the new record, or `None` when it existed.
    async fn record_alert(&self, alert: NewAlert) -> Result<Option<AlertRecord>, StoreError>;
    /// Alerts, oldest first, at most `limit` (capped at [`LIST_ROWS_MAX`]); of one session, or
    /// (when `subject` names no session) of one wallet, when given.
    async fn alerts(
        &self,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError>;
    async fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError>;
    /// The thresholds already recorded for the budget `key`.
    async fn thresholds_recorded(&self, key: &str) -> Result<Vec<u8>, StoreError>;
    /// What a wallet (or one agent on it) reserved or spent since `since_ms`: pending and posted
    /// transfers created then or later, as the store's window caps count them.
    async fn window_spend(
        &self,
        wallet_id: &str,
        agent: Option<&str>,
        since_ms: i64,
    ) -> Result<Amount, StoreError>;
    /// Takes up to `limit` pending alerts that are due at `now_ms` and not leased by anyone,
    /// leasing them to `holder` until `now_ms + lease_ms`. Oldest due first.
    async fn claim_due_alerts(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError>;
    /// Records an attempt by the lease's holder (one more attempt, the error or the delivery
    /// time) and releases the lease. Returns false, changing nothing, when `holder` no longer
    /// holds the alert.
    async fn finish_attempt(
        &self,
        id: &str,
        holder: &str,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError>;
}

const ALERT_COLUMNS: &str = "id, alert_key, threshold, budget, session_id, grant_id, wallet_id, \
     agent, transfer_id, network, asset, currency, used, cap, window_ms, window_start_ms, reason, \
     created_at_ms, state, attempts, next_attempt_at_ms, last_error, last_attempt_at_ms, \
     delivered_at_ms";

const INSERT_ALERT: &str = "INSERT INTO alerts (id, alert_key, threshold, budget, session_id, \
     grant_id, wallet_id, agent, transfer_id, network, asset, currency, used, cap, window_ms, \
     window_start_ms, reason, created_at_ms, state, attempts, next_attempt_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     'pending', 0, $19) ON CONFLICT (alert_key, threshold) DO NOTHING";

/// The alert's ledger entry names no transfer: a transfer's entries are its reserve, post and
/// void (with its amount), which reconciliation checks; the alert row keeps the transfer.
const INSERT_ALERT_ENTRY: &str = "INSERT INTO ledger_entries (kind, transfer_id, session_id, \
     grant_id, wallet_id, agent, network, asset, amount, payee, resource, tx_hash, reason, at_ms) \
     VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, NULL, $9, $10)";

const CLAIM_ONE: &str = "UPDATE alerts SET lease_holder = $2, lease_until_ms = $3 \
     WHERE id = $1 AND state = 'pending' AND next_attempt_at_ms <= $4 \
     AND (lease_until_ms IS NULL OR lease_until_ms <= $4)";

fn alert_from_row<R>(row: &R) -> Result<AlertRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("alert {id}: {what}"));
    let threshold: i64 = row.try_get("threshold")?;
    let used: String = row.try_get("used")?;
    let cap: String = row.try_get("cap")?;
    let state: String = row.try_get("state")?;
    let attempts: i64 = row.try_get("attempts")?;
    let network: String = row.try_get("network")?;
    let asset: String = row.try_get("asset")?;
    Ok(AlertRecord {
        key: row.try_get("alert_key")?,
        threshold: u8::try_from(threshold).map_err(|_| corrupt("threshold"))?,
        budget: row.try_get("budget")?,
        session_id: row.try_get("session_id")?,
        grant_id: row.try_get("grant_id")?,
        wallet_id: row.try_get("wallet_id")?,
        agent: row.try_get("agent")?,
        transfer_id: row.try_get("transfer_id")?,
        network: Network::parse(&network).map_err(|_| corrupt("network"))?,
        asset: asset.parse().map_err(|_| corrupt("asset"))?,
        currency: row.try_get("currency")?,
        used: Amount::parse_atomic(&used).map_err(|_| corrupt("used"))?,
        cap: Amount::parse_atomic(&cap).map_err(|_| corrupt("cap"))?,
        window_ms: row.try_get("window_ms")?,
        window_start_ms: row.try_get("window_start_ms")?,
        reason: row.try_get("reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("state"))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
        last_error: row.try_get("last_error")?,
        last_attempt_at_ms: row.try_get("last_attempt_at_ms")?,
        delivered_at_ms: row.try_get("delivered_at_ms")?,
        id,
    })
}

fn check(alert: &NewAlert) -> Result<(), StoreError> {
    if !(1..=100).contains(&alert.threshold) {
        return Err(StoreError::Invalid(format!(
            "alert threshold {} is not a percentage from 1 to 100",
            alert.threshold
        )));
    }
    for (what, text) in [
        ("key", &alert.key),
        ("budget", &alert.budget),
        ("reason", &alert.reason),
    ] {
        if text.is_empty() || text.len() > ALERT_FIELD_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "alert {what} must be 1 to {ALERT_FIELD_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

/// Writes the [`AlertStore`] implementation for one store type. Both backends run the same
/// statements (`$n` placeholders work on both).
macro_rules! alert_store_impl {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl AlertStore for $store {
            async fn record_alert(
                &self,
                alert: NewAlert,
            ) -> Result<Option<AlertRecord>, StoreError> {
                check(&alert)?;
                let pool = self.ready().await?;
                let id = new_id(ALERT_ID_PREFIX);
                let now = now_ms();
                let mut tx = pool.begin().await?;
                let inserted = sqlx::query(INSERT_ALERT)
                    .bind(&id)
                    .bind(&alert.key)
                    .bind(i64::from(alert.threshold))
                    .bind(&alert.budget)
                    .bind(&alert.session_id)
                    .bind(&alert.grant_id)
                    .bind(&alert.wallet_id)
                    .bind(&alert.agent)
                    .bind(&alert.transfer_id)
                    .bind(alert.network.to_string())
                    .bind(format!("{:#x}", alert.asset))
                    .bind(&alert.currency)
                    .bind(alert.used.to_string())
                    .bind(alert.cap.to_string())
                    .bind(alert.window_ms)
                    .bind(alert.window_start_ms)
                    .bind(truncate(&alert.reason, RESOURCE_BYTES_MAX))
                    .bind(now)
                    .bind(alert.deliver_at_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                sqlx::query(INSERT_ALERT_ENTRY)
                    .bind(EntryKind::Alert.as_str())
                    .bind(&alert.session_id)
                    .bind(&alert.grant_id)
                    .bind(&alert.wallet_id)
                    .bind(&alert.agent)
                    .bind(alert.network.to_string())
                    .bind(format!("{:#x}", alert.asset))
                    .bind(alert.used.to_string())
                    .bind(&alert.reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
                )))
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
                let record = alert_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(record))
            }

            async fn alerts(
                &self,
                subject: Option<&str>,
                limit: usize,
            ) -> Result<Vec<AlertRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = i64::try_from(limit.min(LIST_ROWS_MAX)).unwrap_or(0);
                let rows =
                    match subject {
                        Some(subject) => {
                            sqlx::query(AssertSqlSafe(format!(
                                "SELECT {ALERT_COLUMNS} FROM alerts \
                             WHERE session_id = $1 OR wallet_id = $1 OR id = $1 \
                             ORDER BY created_at_ms, id LIMIT $2"
                            )))
                            .bind(subject)
                            .bind(limit)
                            .fetch_all(pool)
                            .await?
                        }
                        None => sqlx::query(AssertSqlSafe(format!(
                            "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY created_at_ms, id LIMIT $1"
                        )))
                        .bind(limit)
                        .fetch_all(pool)
                        .await?,
                    };
                rows.iter().map(alert_from_row).collect()
            }

            async fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(alert_from_row).transpose()
            }

            async fn thresholds_recorded(&self, key: &str) -> Result<Vec<u8>, StoreError> {
                let pool = self.ready().await?;
                let thresholds: Vec<i64> =
                    sqlx::query_scalar("SELECT threshold FROM alerts WHERE alert_key = $1")
                        .bind(key)
                        .fetch_all(pool)
                        .await?;
                thresholds
                    .into_iter()
                    .map(|t| {
                        u8::try_from(t).map_err(|_| {
                            StoreError::Corrupt(format!("alert threshold {t} for {key}"))
                        })
                    })
                    .collect()
            }

            async fn window_spend(
                &self,
                wallet_id: &str,
                agent: Option<&str>,
                since_ms: i64,
            ) -> Result<Amount, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(
                    "SELECT amount FROM transfers WHERE wallet_id = $1 \
                     AND state IN ('pending', 'posted') AND created_at_ms >= $2 \
                     AND ($3 = 0 OR agent = $4)",
                )
                .bind(wallet_id)
                .bind(since_ms)
                .bind(i64::from(agent.is_some()))
                .bind(agent.unwrap_or_default())
                .fetch_all(pool)
                .await?;
                let mut total = Amount::ZERO;
                for row in &rows {
                    let text: String = row.try_get("amount")?;
                    let value = Amount::parse_atomic(&text)
                        .map_err(|_| StoreError::Corrupt(format!("transfers.amount: {text:?}")))?;
                    total = total
                        .checked_add(value)
                        .ok_or_else(|| StoreError::Corrupt("window total overflows".into()))?;
                }
                Ok(total)
            }

            async fn claim_due_alerts(
                &self,
                holder: &str,
                now_ms: i64,
                lease_ms: i64,
                limit: usize,
            ) -> Result<Vec<AlertRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = i64::try_from(limit.min(LIST_ROWS_MAX)).unwrap_or(0);
                let candidates: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM alerts WHERE state = 'pending' AND next_attempt_at_ms <= $1 \
                     AND (lease_until_ms IS NULL OR lease_until_ms <= $1) \
                     ORDER BY next_attempt_at_ms, id LIMIT $2",
                )
                .bind(now_ms)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                let mut claimed = Vec::new();
                for id in candidates {
                    // Conditional on the row still being free: of two claimers, one wins.
                    let taken = sqlx::query(CLAIM_ONE)
                        .bind(&id)
                        .bind(holder)
                        .bind(now_ms.saturating_add(lease_ms))
                        .bind(now_ms)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    if taken == 1
                        && let Some(record) = self.alert(&id).await?
                    {
                        claimed.push(record);
                    }
                }
                Ok(claimed)
            }

            async fn finish_attempt(
                &self,
                id: &str,
                holder: &str,
                outcome: AttemptOutcome,
            ) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let now = now_ms();
                let (state, error, next, delivered) = match outcome {
                    AttemptOutcome::Delivered => (DeliveryState::Delivered, None, now, Some(now)),
                    AttemptOutcome::Retry {
                        error,
                        next_attempt_at_ms,
                    } => (
                        DeliveryState::Pending,
                        Some(truncate(&error, DELIVERY_ERROR_BYTES_MAX)),
                        next_attempt_at_ms,
                        None,
                    ),
                    AttemptOutcome::GiveUp { error } => (
                        DeliveryState::Failed,
                        Some(truncate(&error, DELIVERY_ERROR_BYTES_MAX)),
                        now,
                        None,
                    ),
                };
                let updated = sqlx::query(
                    "UPDATE alerts SET state = $3, attempts = attempts + 1, \
                     last_error = COALESCE($4, last_error), next_attempt_at_ms = $5, \
                     delivered_at_ms = $6, last_attempt_at_ms = $7, \
                     lease_holder = NULL, lease_until_ms = NULL \
                     WHERE id = $1 AND lease_holder = $2 AND state = 'pending'",
                )
                .bind(id)
                .bind(holder)
                .bind(state.as_str())
                .bind(error)
                .bind(next)
                .bind(delivered)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }
        }
    };
}

alert_store_impl!(SqliteDatabase);
alert_store_impl!(PostgresDatabase);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::RuntimeStore;

    fn new_alert(key: &str, threshold: u8) -> NewAlert {
        NewAlert {
            key: key.to_string(),
            threshold,
            budget: "session".into(),
            session_id: Some("ses_test".into()),
            grant_id: None,
            wallet_id: Some("wal_test".into()),
            agent: Some("agent".into()),
            transfer_id: None,
            network: Network::Eip155(1),
            asset: Address::with_last_byte(1),
            currency: "USDC".into(),
            used: Amount::from(50u64),
            cap: Amount::from(100u64),
            window_ms: None,
            window_start_ms: None,
            reason: "session budget reached 50%".into(),
            deliver_at_ms: 0,
        }
    }

    /// Concurrent inserts of one key and threshold record one alert and one ledger entry; the
    /// lease lets one claimer hold it; only the holder records the attempt.
    async fn exactly_once(store: Arc<dyn RuntimeStore>) {
        let alerts = store.alert_store();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let alerts = alerts.clone();
                tokio::spawn(async move { alerts.record_alert(new_alert("session:x", 50)).await })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            if task.await.unwrap().unwrap().is_some() {
                new += 1;
            }
        }
        assert_eq!(new, 1);
        assert!(
            alerts
                .record_alert(new_alert("session:x", 75))
                .await
                .unwrap()
                .is_some()
        );
        let listed = alerts.alerts(Some("ses_test"), 100).await.unwrap();
        assert_eq!(listed.len(), 2);
        let mut recorded = alerts.thresholds_recorded("session:x").await.unwrap();
        recorded.sort_unstable();
        assert_eq!(recorded, vec![50, 75]);
        let entries = store.entries(0, 100).await.unwrap();
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::Alert)
                .count(),
            2
        );
        assert!(matches!(
            alerts.record_alert(new_alert("session:x", 0)).await,
            Err(StoreError::Invalid(_))
        ));

        let first = alerts
            .claim_due_alerts("a", 1000, 60_000, 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let second = alerts
            .claim_due_alerts("b", 1000, 60_000, 10)
            .await
            .unwrap();
        assert!(second.is_empty(), "leased rows are not claimed twice");
        let id = &first[0].id;
        let retry = AttemptOutcome::Retry {
            error: "503".into(),
            next_attempt_at_ms: 2000,
        };
        assert!(!alerts.finish_attempt(id, "b", retry.clone()).await.unwrap());
        assert!(alerts.finish_attempt(id, "a", retry).await.unwrap());
        let record = alerts.alert(id).await.unwrap().unwrap();
        assert_eq!((record.state, record.attempts), (DeliveryState::Pending, 1));
        assert!(
            alerts
                .claim_due_alerts("b", 1500, 60_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = alerts
            .claim_due_alerts("b", 2000, 60_000, 10)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert!(
            alerts
                .finish_attempt(id, "b", AttemptOutcome::Delivered)
                .await
                .unwrap()
        );
        let record = alerts.alert(id).await.unwrap().unwrap();
        assert_eq!(record.state, DeliveryState::Delivered);
        assert_eq!(record.attempts, 2);
        assert_eq!(record.last_error.as_deref(), Some("503"));
        assert!(record.delivered_at_ms.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn alerts_exactly_once_on_sqlite() {
        let database = crate::testkit::TempSqlite::new();
        let store = crate::open_runtime_store(&database.url()).await.unwrap();
        exactly_once(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn alerts_exactly_once_on_postgres() {
        let database = crate::testkit::TempPostgres::create().await;
        let store = crate::open_runtime_store(database.url()).await.unwrap();
        exactly_once(store).await;
    }
}
