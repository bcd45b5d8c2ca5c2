//! The SQLite and PostgreSQL ledgers. Both run the same statements (`$n` placeholders work on
//! both), so one macro writes both implementations; only opening and migrations differ.

use std::borrow::Cow;
use std::str::FromStr;

use alloy_primitives::{Address, B256};
use bursar_protocol::{Amount, SettleResponse};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use tokio::sync::OnceCell;

use crate::{
    CLAIM_ATTEMPTS_MAX, Claim, Claimant, DatabaseError, POOL_ACQUIRE_TIMEOUT,
    POSTGRES_POOL_CONNECTIONS_MAX, SQLITE_BUSY_TIMEOUT, SQLITE_POOL_CONNECTIONS_MAX, SettlementKey,
    SettlementLedger, SettlementRecord, SettlementState, Submission, now_ms,
};

/// The embedded migrations of one backend, in order. Never edit a committed one: add a file.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "settlements",
        include_str!("../migrations/sqlite/0001_settlements.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../migrations/sqlite/0002_api_keys.sql"),
    ),
    (
        3,
        "payment identifier",
        include_str!("../migrations/sqlite/0003_payment_identifier.sql"),
    ),
    (
        4,
        "agent runtime",
        include_str!("../migrations/sqlite/0004_agent_runtime.sql"),
    ),
    (
        5,
        "governance",
        include_str!("../migrations/sqlite/0005_governance.sql"),
    ),
    (
        6,
        "endpoint health",
        include_str!("../migrations/sqlite/0006_endpoint_health.sql"),
    ),
    (
        7,
        "ledger kinds",
        include_str!("../migrations/sqlite/0007_ledger_kinds.sql"),
    ),
    (
        8,
        "alerts",
        include_str!("../migrations/sqlite/0008_alerts.sql"),
    ),
    (
        9,
        "compensation",
        include_str!("../migrations/sqlite/0009_compensation.sql"),
    ),
    (
        10,
        "unfinished compensations",
        include_str!("../migrations/sqlite/0010_unfinished_compensations.sql"),
    ),
    (
        11,
        "transfer endpoints",
        include_str!("../migrations/sqlite/0011_transfer_endpoints.sql"),
    ),
    (
        12,
        "settlement holders",
        include_str!("../migrations/sqlite/0012_settlement_holders.sql"),
    ),
    (
        13,
        "policy state",
        include_str!("../migrations/sqlite/0013_policy_state.sql"),
    ),
    (
        14,
        "discovery catalog",
        include_str!("../migrations/sqlite/0014_catalog.sql"),
    ),
    (
        15,
        "catalog search",
        include_str!("../migrations/sqlite/0015_catalog_search.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "settlements",
        include_str!("../migrations/postgres/0001_settlements.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../migrations/postgres/0002_api_keys.sql"),
    ),
    (
        3,
        "payment identifier",
        include_str!("../migrations/postgres/0003_payment_identifier.sql"),
    ),
    (
        4,
        "agent runtime",
        include_str!("../migrations/postgres/0004_agent_runtime.sql"),
    ),
    (
        5,
        "governance",
        include_str!("../migrations/postgres/0005_governance.sql"),
    ),
    (
        6,
        "endpoint health",
        include_str!("../migrations/postgres/0006_endpoint_health.sql"),
    ),
    (
        7,
        "ledger kinds",
        include_str!("../migrations/postgres/0007_ledger_kinds.sql"),
    ),
    (
        8,
        "alerts",
        include_str!("../migrations/postgres/0008_alerts.sql"),
    ),
    (
        9,
        "compensation",
        include_str!("../migrations/postgres/0009_compensation.sql"),
    ),
    (
        10,
        "unfinished compensations",
        include_str!("../migrations/postgres/0010_unfinished_compensations.sql"),
    ),
    (
        11,
        "transfer endpoints",
        include_str!("../migrations/postgres/0011_transfer_endpoints.sql"),
    ),
    (
        12,
        "settlement holders",
        include_str!("../migrations/postgres/0012_settlement_holders.sql"),
    ),
    (
        13,
        "policy state",
        include_str!("../migrations/postgres/0013_policy_state.sql"),
    ),
    (
        14,
        "discovery catalog",
        include_str!("../migrations/postgres/0014_catalog.sql"),
    ),
    (
        15,
        "catalog search",
        include_str!("../migrations/postgres/0015_catalog_search.sql"),
    ),
];

fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

const COLUMNS: &str = "network, asset, payer, nonce, fingerprint, state, tx_hash, valid_before_s, \
                       response, error_reason, created_at_ms, updated_at_ms, payment_id, holder, \
                       sender, sender_nonce, pay_to, amount";

/// Either unique constraint (the authorization, the payment id) stops it.
const INSERT_RECEIVED: &str = "INSERT INTO settlements \
     (network, asset, payer, nonce, fingerprint, state, created_at_ms, updated_at_ms, payment_id, \
      holder, pay_to, amount) \
     VALUES ($1, $2, $3, $4, $5, 'received', $6, $6, $7, $8, $9, $10) \
     ON CONFLICT DO NOTHING";

const TAKE_OVER: &str = "UPDATE settlements SET holder = $5, updated_at_ms = $6 \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 AND state = 'received' \
     AND holder IS NOT DISTINCT FROM $7 AND updated_at_ms = $8";

/// A row already `submitted` by the same holder takes the new transaction (signed again after a
/// nonce resynchronization).
const MARK_SUBMITTED: &str = "UPDATE settlements \
     SET state = 'submitted', tx_hash = $5, valid_before_s = $6, response = $7, updated_at_ms = $8, \
     sender = $9, sender_nonce = $10 \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 \
     AND state IN ('received', 'submitted') AND holder = $11";

const RELEASE_UNSENT: &str = "DELETE FROM settlements \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 \
     AND state = 'submitted' AND tx_hash = $5";

const FINISH: &str = "UPDATE settlements \
     SET state = $5, response = $6, error_reason = $7, updated_at_ms = $8, \
     tx_hash = COALESCE($9, tx_hash) \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 \
     AND state IN ('received', 'submitted')";

const CORRECT_TO_PAID: &str = "UPDATE settlements \
     SET state = 'confirmed', response = $5, error_reason = NULL, tx_hash = $6, updated_at_ms = $7 \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 AND state = 'failed'";

const RELEASE: &str = "DELETE FROM settlements \
     WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4 AND state = 'received' \
     AND holder IS NOT DISTINCT FROM $5";

fn select_one() -> String {
    format!(
        "SELECT {COLUMNS} FROM settlements \
         WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4"
    )
}

fn select_by_payment_id() -> String {
    format!("SELECT {COLUMNS} FROM settlements WHERE payment_id = $1")
}

fn select_received_before() -> String {
    format!(
        "SELECT {COLUMNS} FROM settlements WHERE state = 'received' AND created_at_ms < $1 \
         ORDER BY created_at_ms, id"
    )
}

fn select_submitted() -> String {
    format!(
        "SELECT {COLUMNS} FROM settlements WHERE state = 'submitted' \
         ORDER BY created_at_ms, id"
    )
}

const COUNT_UNFINISHED: &str =
    "SELECT COUNT(*) FROM settlements WHERE state IN ('received', 'submitted')";

fn record_from_row<R>(row: &R) -> Result<SettlementRecord, DatabaseError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let (network, asset, payer, nonce): (String, String, String, String) = (
        row.try_get("network")?,
        row.try_get("asset")?,
        row.try_get("payer")?,
        row.try_get("nonce")?,
    );
    let key = SettlementKey::parse(&network, &asset, &payer, &nonce)?;
    let corrupt = |message: String| DatabaseError::Corrupt {
        key: key.clone(),
        message,
    };
    let state: String = row.try_get("state")?;
    let state = SettlementState::parse(&state)
        .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
    let response: Option<String> = row.try_get("response")?;
    let response = response
        .map(|json| serde_json::from_str::<SettleResponse>(&json))
        .transpose()
        .map_err(|error| corrupt(format!("unreadable response: {error}")))?;
    let valid_before_s: Option<i64> = row.try_get("valid_before_s")?;
    let valid_before_s = valid_before_s
        .map(u64::try_from)
        .transpose()
        .map_err(|_| corrupt("negative valid_before_s".into()))?;
    let sender_nonce: Option<i64> = row.try_get("sender_nonce")?;
    let sender_nonce = sender_nonce
        .map(u64::try_from)
        .transpose()
        .map_err(|_| corrupt("negative sender_nonce".into()))?;
    let address = |column: &str| -> Result<Option<Address>, DatabaseError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|text| {
            text.parse::<Address>()
                .map_err(|_| corrupt(format!("{column} {text:?} is not an address")))
        })
        .transpose()
    };
    let hash = |column: &str| -> Result<Option<B256>, DatabaseError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|text| {
            text.parse::<B256>()
                .map_err(|_| corrupt(format!("{column} {text:?} is not a 32-byte hash")))
        })
        .transpose()
    };
    let sender = address("sender")?;
    let pay_to = address("pay_to")?;
    let amount: Option<String> = row.try_get("amount")?;
    let amount = amount
        .map(|text| {
            Amount::parse_atomic(&text)
                .map_err(|_| corrupt(format!("amount {text:?} is not an amount")))
        })
        .transpose()?;
    Ok(SettlementRecord {
        fingerprint: hash("fingerprint")?.ok_or_else(|| corrupt("no fingerprint".to_string()))?,
        state,
        tx_hash: hash("tx_hash")?,
        valid_before_s,
        response,
        error_reason: row.try_get("error_reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        payment_id: row.try_get("payment_id")?,
        holder: row.try_get("holder")?,
        sender,
        sender_nonce,
        pay_to,
        amount,
        key,
    })
}

/// Addresses are stored as lowercase 0x hex, like the key's.
fn lower_hex(address: &Address) -> String {
    format!("{address:#x}")
}

/// The transaction a confirmed outcome records as the row's (it may be another than the one the
/// row recorded, when another transaction used the authorization).
fn confirmed_transaction(response: &SettleResponse, state: SettlementState) -> Option<String> {
    (state == SettlementState::Confirmed && !response.transaction.is_empty())
        .then(|| response.transaction.to_string())
}

/// Binds [`MARK_SUBMITTED`]'s parameters.
fn bind_submission<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    key: &'q SettlementKey,
    holder: &'q str,
    submission: &'q Submission,
    now: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(key.network.caip2())
        .bind(lower_hex(&key.asset))
        .bind(lower_hex(&key.payer))
        .bind(key.nonce.to_string())
        .bind(submission.tx_hash.to_string())
        .bind(i64::try_from(submission.valid_before_s).unwrap_or(i64::MAX))
        .bind(response_json(&submission.pending_response))
        .bind(now)
        .bind(lower_hex(&submission.sender))
        .bind(i64::try_from(submission.sender_nonce).unwrap_or(i64::MAX))
        .bind(holder)
}

fn response_json(response: &SettleResponse) -> String {
    serde_json::to_string(response).expect("a SettleResponse always serializes")
}

/// Writes one ledger implementation over a sqlx pool type.
macro_rules! ledger_impl {
    ($ledger:ident, $pool:ty, $migrations:expr) => {
        impl $ledger {
            /// Runs the embedded migrations once per handle.
            pub(crate) async fn ready(&self) -> Result<&$pool, DatabaseError> {
                self.migrated
                    .get_or_try_init(|| async {
                        migrator($migrations).run(&self.pool).await?;
                        Ok::<(), DatabaseError>(())
                    })
                    .await?;
                Ok(&self.pool)
            }

            /// Closes the pool; later calls fail.
            pub async fn close(&self) {
                self.pool.close().await;
            }
        }

        #[async_trait::async_trait]
        impl SettlementLedger for $ledger {
            async fn claim(
                &self,
                key: &SettlementKey,
                claimant: &Claimant,
            ) -> Result<Claim, DatabaseError> {
                let pool = self.ready().await?;
                for _ in 0..CLAIM_ATTEMPTS_MAX {
                    if let Some(id) = &claimant.payment_id
                        && let Some(holder) = self.get_by_payment_id(id).await?
                    {
                        if holder.key != *key || holder.fingerprint != claimant.fingerprint {
                            return Ok(Claim::PaymentIdConflict {
                                held_by: holder.key,
                            });
                        }
                        return Ok(Claim::Existing(Box::new(holder)));
                    }
                    let inserted = sqlx::query(INSERT_RECEIVED)
                        .bind(key.network.caip2())
                        .bind(lower_hex(&key.asset))
                        .bind(lower_hex(&key.payer))
                        .bind(key.nonce.to_string())
                        .bind(claimant.fingerprint.to_string())
                        .bind(now_ms())
                        .bind(claimant.payment_id.as_deref())
                        .bind(&claimant.holder)
                        .bind(lower_hex(&claimant.pay_to))
                        .bind(claimant.amount.to_string())
                        .execute(pool)
                        .await?
                        .rows_affected();
                    if inserted == 1 {
                        return Ok(Claim::Claimed);
                    }
                    if let Some(id) = &claimant.payment_id
                        && self.get_by_payment_id(id).await?.is_some()
                    {
                        continue; // report who holds the id
                    }
                    // The row exists; unless it was released since, report it.
                    if let Some(record) = self.get(key).await? {
                        return Ok(Claim::Existing(Box::new(record)));
                    }
                }
                Err(DatabaseError::ClaimContended {
                    key: key.clone(),
                    attempts: CLAIM_ATTEMPTS_MAX,
                })
            }

            async fn take_over(
                &self,
                seen: &SettlementRecord,
                holder: &str,
            ) -> Result<bool, DatabaseError> {
                let pool = self.ready().await?;
                let key = &seen.key;
                let updated = sqlx::query(TAKE_OVER)
                    .bind(key.network.caip2())
                    .bind(lower_hex(&key.asset))
                    .bind(lower_hex(&key.payer))
                    .bind(key.nonce.to_string())
                    .bind(holder)
                    // Strictly later than what was seen, so a second take-over of the row as
                    // seen cannot match again.
                    .bind(now_ms().max(seen.updated_at_ms + 1))
                    .bind(seen.holder.as_deref())
                    .bind(seen.updated_at_ms)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(updated == 1)
            }

            async fn get_by_payment_id(
                &self,
                payment_id: &str,
            ) -> Result<Option<SettlementRecord>, DatabaseError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(select_by_payment_id()))
                    .bind(payment_id)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(record_from_row).transpose()
            }

            async fn mark_batch_submitted(
                &self,
                holder: &str,
                items: &[(SettlementKey, Submission)],
            ) -> Result<(), DatabaseError> {
                let pool = self.ready().await?;
                let mut transaction = pool.begin().await?;
                let now = now_ms();
                for (key, submission) in items {
                    let updated =
                        bind_submission(sqlx::query(MARK_SUBMITTED), key, holder, submission, now)
                            .execute(&mut *transaction)
                            .await?
                            .rows_affected();
                    if updated != 1 {
                        transaction.rollback().await?;
                        return self
                            .check_transition(key, 0, SettlementState::Submitted)
                            .await;
                    }
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn finish_many(
                &self,
                items: &[(SettlementKey, SettleResponse, SettlementState)],
            ) -> Result<u64, DatabaseError> {
                if let Some((key, _, state)) = items.iter().find(|(_, _, state)| !state.is_final())
                {
                    return Err(DatabaseError::Transition {
                        key: key.clone(),
                        to: *state,
                        reason: "finish takes confirmed or failed".into(),
                    });
                }
                let pool = self.ready().await?;
                let mut transaction = pool.begin().await?;
                let now = now_ms();
                let mut changed = 0;
                for (key, response, state) in items {
                    let error_reason = response
                        .error_reason
                        .as_ref()
                        .map(|reason| reason.as_str().to_string());
                    changed += sqlx::query(FINISH)
                        .bind(key.network.caip2())
                        .bind(lower_hex(&key.asset))
                        .bind(lower_hex(&key.payer))
                        .bind(key.nonce.to_string())
                        .bind(state.as_str())
                        .bind(response_json(response))
                        .bind(error_reason)
                        .bind(now)
                        .bind(confirmed_transaction(response, *state))
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected();
                }
                transaction.commit().await?;
                Ok(changed)
            }

            async fn release_unsent(
                &self,
                keys: &[SettlementKey],
                tx_hash: B256,
            ) -> Result<u64, DatabaseError> {
                let pool = self.ready().await?;
                let mut transaction = pool.begin().await?;
                let mut deleted = 0;
                for key in keys {
                    deleted += sqlx::query(RELEASE_UNSENT)
                        .bind(key.network.caip2())
                        .bind(lower_hex(&key.asset))
                        .bind(lower_hex(&key.payer))
                        .bind(key.nonce.to_string())
                        .bind(tx_hash.to_string())
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected();
                }
                transaction.commit().await?;
                Ok(deleted)
            }

            async fn mark_submitted(
                &self,
                key: &SettlementKey,
                holder: &str,
                submission: &Submission,
            ) -> Result<(), DatabaseError> {
                let pool = self.ready().await?;
                let updated = bind_submission(
                    sqlx::query(MARK_SUBMITTED),
                    key,
                    holder,
                    submission,
                    now_ms(),
                )
                .execute(pool)
                .await?
                .rows_affected();
                self.check_transition(key, updated, SettlementState::Submitted)
                    .await
            }

            async fn finish(
                &self,
                key: &SettlementKey,
                response: &SettleResponse,
                state: SettlementState,
            ) -> Result<(), DatabaseError> {
                if !state.is_final() {
                    return Err(DatabaseError::Transition {
                        key: key.clone(),
                        to: state,
                        reason: "finish takes confirmed or failed".into(),
                    });
                }
                let pool = self.ready().await?;
                let error_reason = response
                    .error_reason
                    .as_ref()
                    .map(|reason| reason.as_str().to_string());
                let updated = sqlx::query(FINISH)
                    .bind(key.network.caip2())
                    .bind(lower_hex(&key.asset))
                    .bind(lower_hex(&key.payer))
                    .bind(key.nonce.to_string())
                    .bind(state.as_str())
                    .bind(response_json(response))
                    .bind(error_reason)
                    .bind(now_ms())
                    .bind(confirmed_transaction(response, state))
                    .execute(pool)
                    .await?
                    .rows_affected();
                self.check_transition(key, updated, state).await
            }

            async fn correct_to_paid(
                &self,
                key: &SettlementKey,
                response: &SettleResponse,
            ) -> Result<bool, DatabaseError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(CORRECT_TO_PAID)
                    .bind(key.network.caip2())
                    .bind(lower_hex(&key.asset))
                    .bind(lower_hex(&key.payer))
                    .bind(key.nonce.to_string())
                    .bind(response_json(response))
                    .bind(response.transaction.as_str())
                    .bind(now_ms())
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(updated == 1)
            }

            async fn release(
                &self,
                key: &SettlementKey,
                holder: Option<&str>,
            ) -> Result<bool, DatabaseError> {
                let pool = self.ready().await?;
                let deleted = sqlx::query(RELEASE)
                    .bind(key.network.caip2())
                    .bind(lower_hex(&key.asset))
                    .bind(lower_hex(&key.payer))
                    .bind(key.nonce.to_string())
                    .bind(holder)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(deleted == 1)
            }

            async fn unfinished(&self) -> Result<Vec<SettlementRecord>, DatabaseError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(select_submitted()))
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn received_before(
                &self,
                created_before_ms: i64,
            ) -> Result<Vec<SettlementRecord>, DatabaseError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(select_received_before()))
                    .bind(created_before_ms)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn get(
                &self,
                key: &SettlementKey,
            ) -> Result<Option<SettlementRecord>, DatabaseError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(select_one()))
                    .bind(key.network.caip2())
                    .bind(lower_hex(&key.asset))
                    .bind(lower_hex(&key.payer))
                    .bind(key.nonce.to_string())
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(record_from_row).transpose()
            }

            async fn count_unfinished(&self) -> Result<u64, DatabaseError> {
                let pool = self.ready().await?;
                let count: i64 = sqlx::query_scalar(COUNT_UNFINISHED).fetch_one(pool).await?;
                Ok(u64::try_from(count).unwrap_or(0))
            }
        }

        impl $ledger {
            /// Turns "no row updated" into an error naming what the row holds instead.
            async fn check_transition(
                &self,
                key: &SettlementKey,
                updated: u64,
                to: SettlementState,
            ) -> Result<(), DatabaseError> {
                if updated == 1 {
                    return Ok(());
                }
                let reason = match self.get(key).await? {
                    Some(record) => format!("it is {}", record.state),
                    None => "there is no such settlement".to_string(),
                };
                Err(DatabaseError::Transition {
                    key: key.clone(),
                    to,
                    reason,
                })
            }
        }
    };
}

/// Bursar's database in a SQLite file (WAL, busy timeout) or in memory: the settlement ledger,
/// and every other store on the same pool ([`crate::SqlRuntimeStore`] wraps it for the runtime).
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    migrated: std::sync::Arc<OnceCell<()>>,
}

impl SqliteDatabase {
    /// Opens and migrates `sqlite://path?mode=rwc` or `sqlite::memory:`.
    pub async fn open(url: &str) -> Result<SqliteDatabase, DatabaseError> {
        let ledger = SqliteDatabase::lazy(url)?;
        ledger.ready().await?;
        Ok(ledger)
    }

    /// A fresh, private in-memory ledger, usable without an async context: connections are made
    /// and migrations run on first use. Its contents end with the process.
    pub fn memory() -> SqliteDatabase {
        SqliteDatabase::lazy("sqlite::memory:").expect("the in-memory url is valid")
    }

    fn lazy(url: &str) -> Result<SqliteDatabase, DatabaseError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)?.busy_timeout(SQLITE_BUSY_TIMEOUT);
        // An in-memory database lives as long as its one connection: never close it, never open
        // a second (shared-cache writers would fail with SQLITE_LOCKED instead of waiting).
        let pool_options = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            options = options.journal_mode(SqliteJournalMode::Wal);
            SqlitePoolOptions::new().max_connections(SQLITE_POOL_CONNECTIONS_MAX)
        };
        let pool = pool_options
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(SqliteDatabase {
            pool,
            migrated: Default::default(),
        })
    }
}

ledger_impl!(SqliteDatabase, SqlitePool, SQLITE_MIGRATIONS);

/// Bursar's database in PostgreSQL; several facilitator or runtime processes may share one.
#[derive(Debug, Clone)]
pub struct PostgresDatabase {
    pool: PgPool,
    migrated: std::sync::Arc<OnceCell<()>>,
}

impl PostgresDatabase {
    /// Connects to `postgres://...` and migrates.
    pub async fn open(url: &str) -> Result<PostgresDatabase, DatabaseError> {
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_POOL_CONNECTIONS_MAX)
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        let ledger = PostgresDatabase {
            pool,
            migrated: Default::default(),
        };
        ledger.ready().await?;
        Ok(ledger)
    }
}

ledger_impl!(PostgresDatabase, PgPool, POSTGRES_MIGRATIONS);
