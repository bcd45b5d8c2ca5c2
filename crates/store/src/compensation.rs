//! Compensation for failed steps: the evidence of every paid request, and one compensation record
//! per transfer of a step or session marked failed.
//!
//! - Evidence ([`NewEvidence`]) is written when a payment is made, so it survives restarts: the
//!   request, the response (or the error instead of one), the seller's receipt and the signed
//!   authorization, as JSON documents the runtime builds. The step label the agent gave travels
//!   with it. The first record for a transfer wins.
//! - A compensation ([`CompensationRecord`]) is opened once per transfer
//!   ([`CompensationStore::open_compensation`] is idempotent), may record the cancel transaction
//!   *before* it is broadcast ([`CompensationStore::note_cancel_tx`]), and ends in one final
//!   outcome; reaching it writes the transfer's one `compensate` ledger entry in the same
//!   database transaction ([`CompensationStore::finish_compensation`]).

use alloy_primitives::B256;
use bursar_protocol::Amount;
use sqlx::{AssertSqlSafe, Row};

use crate::common::{LIST_ROWS_MAX, StoreError, new_id};
use crate::now_ms;
use crate::sql::{PostgresDatabase, SqliteDatabase};

/// Prefix of compensation ids.
pub const COMPENSATION_ID_PREFIX: &str = "cmp_";
/// Largest JSON document accepted in one evidence field.
pub const EVIDENCE_JSON_BYTES_MAX: usize = 512 * 1024;
/// Longest step label, reason or message accepted.
pub const COMPENSATION_TEXT_BYTES_MAX: usize = 2048;

/// Where a compensation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompensationOutcome {
    /// A cancel transaction is being sent or awaited.
    Cancelling,
    /// The authorization was cancelled on chain before anyone settled it: nothing moved.
    Cancelled,
    /// The money moved: a refund is to be claimed from the payee with the evidence.
    RefundClaim,
    /// Nothing was spent (the authorization was never signed, or expired unused).
    NothingSpent,
    /// The cancel could not be made (no gas, chain down); the reservation stays until the chain
    /// decides. Marking the failure again retries.
    CancelFailed,
}

impl CompensationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CompensationOutcome::Cancelling => "cancelling",
            CompensationOutcome::Cancelled => "cancelled",
            CompensationOutcome::RefundClaim => "refund_claim",
            CompensationOutcome::NothingSpent => "nothing_spent",
            CompensationOutcome::CancelFailed => "cancel_failed",
        }
    }

    pub fn parse(text: &str) -> Option<CompensationOutcome> {
        match text {
            "cancelling" => Some(CompensationOutcome::Cancelling),
            "cancelled" => Some(CompensationOutcome::Cancelled),
            "refund_claim" => Some(CompensationOutcome::RefundClaim),
            "nothing_spent" => Some(CompensationOutcome::NothingSpent),
            "cancel_failed" => Some(CompensationOutcome::CancelFailed),
            _ => None,
        }
    }

    /// Final outcomes never change.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CompensationOutcome::Cancelled
                | CompensationOutcome::RefundClaim
                | CompensationOutcome::NothingSpent
        )
    }
}

impl std::fmt::Display for CompensationOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The evidence of one paid request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvidence {
    pub transfer_id: String,
    pub session_id: String,
    pub step: Option<String>,
    /// `{method, url, headers, bodyBase64, bodyBytes, bodySha256, bodyTruncated}`.
    pub request: serde_json::Value,
    /// The same shape plus `status`; `None` when no response came back.
    pub response: Option<serde_json::Value>,
    /// Why there is no response (or why the seller refused).
    pub error: Option<String>,
    /// The seller's decoded payment response.
    pub receipt: Option<serde_json::Value>,
    /// The signed authorization: from, to, value, validAfter, validBefore, nonce.
    pub authorization: serde_json::Value,
}

/// Evidence as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceRecord {
    pub transfer_id: String,
    pub session_id: String,
    pub step: Option<String>,
    pub request: serde_json::Value,
    pub response: Option<serde_json::Value>,
    pub error: Option<String>,
    pub receipt: Option<serde_json::Value>,
    pub authorization: serde_json::Value,
    pub recorded_at_ms: i64,
}

/// A compensation to open.
#[derive(Debug, Clone)]
pub struct NewCompensation {
    pub transfer_id: String,
    pub session_id: String,
    pub step: Option<String>,
    pub reason: String,
    /// `agent` or `operator`.
    pub requested_by: String,
    pub amount: Amount,
}

/// One compensation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompensationRecord {
    /// `cmp_` + 24 hex digits.
    pub id: String,
    pub transfer_id: String,
    pub session_id: String,
    pub step: Option<String>,
    pub reason: String,
    pub requested_by: String,
    pub outcome: CompensationOutcome,
    pub amount: Amount,
    /// The cancelAuthorization transaction, recorded before it was broadcast.
    pub cancel_tx_hash: Option<B256>,
    /// The settlement that moved the money, for refund claims.
    pub settle_tx_hash: Option<B256>,
    /// What happened, or what to do.
    pub message: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Evidence and compensation records. [`SqliteDatabase`] and [`PostgresDatabase`] implement it over
/// the runtime's database; reach it with `RuntimeStore::compensation_store`.
#[async_trait::async_trait]
pub trait CompensationStore: Send + Sync + 'static {
    /// Records the evidence of a paid request; returns false when the transfer already has some
    /// (the first record stays).
    async fn record_evidence(&self, evidence: NewEvidence) -> Result<bool, StoreError>;
    async fn evidence(&self, transfer_id: &str) -> Result<Option<EvidenceRecord>, StoreError>;
    /// The step label of every transfer of a session that has evidence: (transfer id, step).
    async fn steps(&self, session_id: &str) -> Result<Vec<(String, Option<String>)>, StoreError>;

    /// Opens the transfer's compensation with `outcome`, or returns the one already open.
    async fn open_compensation(
        &self,
        compensation: NewCompensation,
        outcome: CompensationOutcome,
    ) -> Result<CompensationRecord, StoreError>;
    /// Records the cancel transaction (before broadcasting it) in place of `replacing` (`None`:
    /// only when none is recorded), so one sender at a time owns the cancel; `tx_hash` `None`
    /// forgets the sender's own unsent transaction. The outcome becomes `cancelling`. Returns
    /// false when another cancel is recorded or the compensation is final.
    async fn note_cancel_tx(
        &self,
        id: &str,
        tx_hash: Option<B256>,
        replacing: Option<B256>,
    ) -> Result<bool, StoreError>;
    /// Sets a non-final outcome (`cancel_failed`, `cancelling`) and its message.
    async fn set_pending_outcome(
        &self,
        id: &str,
        outcome: CompensationOutcome,
        message: &str,
    ) -> Result<CompensationRecord, StoreError>;
    /// Moves the compensation to a final outcome once, writing the transfer's `compensate`
    /// ledger entry in the same transaction; a compensation already final is returned as is.
    /// The flag says whether this call finished it.
    async fn finish_compensation(
        &self,
        id: &str,
        outcome: CompensationOutcome,
        settle_tx_hash: Option<B256>,
        message: &str,
    ) -> Result<(CompensationRecord, bool), StoreError>;
    async fn compensation(&self, id: &str) -> Result<Option<CompensationRecord>, StoreError>;
    async fn compensation_for(
        &self,
        transfer_id: &str,
    ) -> Result<Option<CompensationRecord>, StoreError>;
    /// Compensations of a session (all when `None`), oldest first, at most [`LIST_ROWS_MAX`].
    async fn compensations(
        &self,
        session_id: Option<&str>,
    ) -> Result<Vec<CompensationRecord>, StoreError>;

    /// Records not final yet (`cancelling`, `cancel_failed`), oldest first, at most `limit`.
    async fn unfinished_compensations(
        &self,
        limit: usize,
    ) -> Result<Vec<CompensationRecord>, StoreError>;
}

const COMPENSATION_COLUMNS: &str = "id, transfer_id, session_id, step, reason, requested_by, \
     outcome, amount, cancel_tx_hash, settle_tx_hash, message, created_at_ms, updated_at_ms";
const EVIDENCE_COLUMNS: &str = "transfer_id, session_id, step, request, response, error, \
     receipt, authorization_doc, recorded_at_ms";

fn check_text(what: &str, value: Option<&str>) -> Result<(), StoreError> {
    if value.is_some_and(|text| text.len() > COMPENSATION_TEXT_BYTES_MAX) {
        return Err(StoreError::Invalid(format!(
            "{what} is longer than {COMPENSATION_TEXT_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn json_text(what: &str, value: &serde_json::Value) -> Result<String, StoreError> {
    let text = serde_json::to_string(value)
        .map_err(|error| StoreError::Invalid(format!("evidence {what}: {error}")))?;
    if text.len() > EVIDENCE_JSON_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "evidence {what} is {} bytes of JSON, more than {EVIDENCE_JSON_BYTES_MAX}",
            text.len()
        )));
    }
    Ok(text)
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("evidence {what} is not JSON: {error}")))
}

fn compensation_from_row<R>(row: &R) -> Result<CompensationRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let outcome: String = row.try_get("outcome")?;
    let amount: String = row.try_get("amount")?;
    Ok(CompensationRecord {
        outcome: CompensationOutcome::parse(&outcome).ok_or_else(|| {
            StoreError::Corrupt(format!("compensation {id}: unknown outcome {outcome:?}"))
        })?,
        amount: Amount::parse_atomic(&amount)
            .map_err(|_| StoreError::Corrupt(format!("compensation {id}: amount {amount:?}")))?,
        transfer_id: row.try_get("transfer_id")?,
        session_id: row.try_get("session_id")?,
        step: row.try_get("step")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        cancel_tx_hash: hash_column(row, "cancel_tx_hash")?,
        settle_tx_hash: hash_column(row, "settle_tx_hash")?,
        message: row.try_get("message")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        id,
    })
}

/// A nullable transaction hash column; text that is not a 32-byte hash is a corrupt row.
fn hash_column<R>(row: &R, column: &str) -> Result<Option<B256>, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        text.parse()
            .map_err(|_| StoreError::Corrupt(format!("{column} holds {text:?}, not a hash")))
    })
    .transpose()
}

fn evidence_from_row<R>(row: &R) -> Result<EvidenceRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let optional = |column: &str| -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|text| parse_json(column, &text)).transpose()
    };
    let request: String = row.try_get("request")?;
    let authorization: String = row.try_get("authorization_doc")?;
    Ok(EvidenceRecord {
        transfer_id: row.try_get("transfer_id")?,
        session_id: row.try_get("session_id")?,
        step: row.try_get("step")?,
        request: parse_json("request", &request)?,
        response: optional("response")?,
        error: row.try_get("error")?,
        receipt: optional("receipt")?,
        authorization: parse_json("authorization", &authorization)?,
        recorded_at_ms: row.try_get("recorded_at_ms")?,
    })
}

/// Writes the [`CompensationStore`] implementation for one store type. Both backends run the same
/// statements (`$n` placeholders work on both).
macro_rules! compensation_store_impl {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl CompensationStore for $store {
            async fn record_evidence(&self, evidence: NewEvidence) -> Result<bool, StoreError> {
                check_text("step", evidence.step.as_deref())?;
                let request = json_text("request", &evidence.request)?;
                let response = evidence
                    .response
                    .as_ref()
                    .map(|value| json_text("response", value))
                    .transpose()?;
                let receipt = evidence
                    .receipt
                    .as_ref()
                    .map(|value| json_text("receipt", value))
                    .transpose()?;
                let authorization = json_text("authorization", &evidence.authorization)?;
                let error = evidence.error.as_deref().map(|text| {
                    let mut end = text.len().min(COMPENSATION_TEXT_BYTES_MAX);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text[..end].to_string()
                });
                let pool = self.ready().await?;
                let inserted = sqlx::query(
                    "INSERT INTO payment_evidence (transfer_id, session_id, step, request, \
                     response, error, receipt, authorization_doc, recorded_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (transfer_id) DO NOTHING",
                )
                .bind(&evidence.transfer_id)
                .bind(&evidence.session_id)
                .bind(&evidence.step)
                .bind(request)
                .bind(response)
                .bind(error)
                .bind(receipt)
                .bind(authorization)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(inserted == 1)
            }

            async fn evidence(
                &self,
                transfer_id: &str,
            ) -> Result<Option<EvidenceRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {EVIDENCE_COLUMNS} FROM payment_evidence WHERE transfer_id = $1"
                )))
                .bind(transfer_id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(evidence_from_row).transpose()
            }

            async fn steps(
                &self,
                session_id: &str,
            ) -> Result<Vec<(String, Option<String>)>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT transfer_id, step FROM payment_evidence WHERE session_id = $1 \
                     ORDER BY recorded_at_ms, transfer_id LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(session_id)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("transfer_id")?, row.try_get("step")?)))
                    .collect()
            }

            async fn open_compensation(
                &self,
                compensation: NewCompensation,
                outcome: CompensationOutcome,
            ) -> Result<CompensationRecord, StoreError> {
                check_text("step", compensation.step.as_deref())?;
                check_text("reason", Some(&compensation.reason))?;
                check_text("requested by", Some(&compensation.requested_by))?;
                let pool = self.ready().await?;
                let now = now_ms();
                sqlx::query(
                    "INSERT INTO compensations (id, transfer_id, session_id, step, reason, \
                     requested_by, outcome, amount, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                     ON CONFLICT (transfer_id) DO NOTHING",
                )
                .bind(new_id(COMPENSATION_ID_PREFIX))
                .bind(&compensation.transfer_id)
                .bind(&compensation.session_id)
                .bind(&compensation.step)
                .bind(&compensation.reason)
                .bind(&compensation.requested_by)
                .bind(outcome.as_str())
                .bind(compensation.amount.to_string())
                .bind(now)
                .execute(pool)
                .await?;
                self.compensation_for(&compensation.transfer_id)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "the compensation of transfer {} vanished",
                            compensation.transfer_id
                        ))
                    })
            }

            async fn note_cancel_tx(
                &self,
                id: &str,
                tx_hash: Option<B256>,
                replacing: Option<B256>,
            ) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE compensations SET cancel_tx_hash = $2, outcome = 'cancelling', \
                     updated_at_ms = $3 WHERE id = $1 \
                     AND outcome IN ('cancelling', 'cancel_failed') \
                     AND ((cancel_tx_hash IS NULL AND $4 = '') OR cancel_tx_hash = $4)",
                )
                .bind(id)
                .bind(tx_hash.map(|hash| format!("{hash:#x}")))
                .bind(now_ms())
                .bind(replacing.map(|hash| format!("{hash:#x}")).unwrap_or_default())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn set_pending_outcome(
                &self,
                id: &str,
                outcome: CompensationOutcome,
                message: &str,
            ) -> Result<CompensationRecord, StoreError> {
                if outcome.is_final() {
                    return Err(StoreError::Invalid(format!(
                        "{outcome} is final: use finish_compensation"
                    )));
                }
                let pool = self.ready().await?;
                sqlx::query(
                    "UPDATE compensations SET outcome = $2, message = $3, updated_at_ms = $4 \
                     WHERE id = $1 AND outcome IN ('cancelling', 'cancel_failed')",
                )
                .bind(id)
                .bind(outcome.as_str())
                .bind(message)
                .bind(now_ms())
                .execute(pool)
                .await?;
                self.compensation(id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("compensation {id}")))
            }

            async fn finish_compensation(
                &self,
                id: &str,
                outcome: CompensationOutcome,
                settle_tx_hash: Option<B256>,
                message: &str,
            ) -> Result<(CompensationRecord, bool), StoreError> {
                if !outcome.is_final() {
                    return Err(StoreError::Invalid(format!("{outcome} is not final")));
                }
                check_text("message", Some(message))?;
                let pool = self.ready().await?;
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE compensations SET outcome = $2, settle_tx_hash = $3, message = $4, \
                     updated_at_ms = $5 WHERE id = $1 \
                     AND outcome IN ('cancelling', 'cancel_failed')",
                )
                .bind(id)
                .bind(outcome.as_str())
                .bind(settle_tx_hash.map(|hash| format!("{hash:#x}")))
                .bind(message)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 1 {
                    let row = sqlx::query(AssertSqlSafe(format!(
                        "SELECT {COMPENSATION_COLUMNS} FROM compensations WHERE id = $1"
                    )))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let record = compensation_from_row(&row)?;
                    let tx_hash = match outcome {
                        CompensationOutcome::RefundClaim => record.settle_tx_hash,
                        _ => record.cancel_tx_hash,
                    }
                    .map(|hash| format!("{hash:#x}"));
                    // The entry copies the transfer's identity, as the other entries do.
                    sqlx::query(
                        "INSERT INTO ledger_entries (kind, transfer_id, session_id, grant_id, \
                         wallet_id, agent, network, asset, amount, payee, resource, tx_hash, \
                         reason, at_ms) \
                         SELECT 'compensate', id, session_id, grant_id, wallet_id, agent, \
                         network, asset, amount, payee, resource, $2, $3, $4 \
                         FROM transfers WHERE id = $1",
                    )
                    .bind(&record.transfer_id)
                    .bind(tx_hash)
                    .bind(format!("{}: {}", outcome.as_str(), record.reason))
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                let record = self
                    .compensation(id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("compensation {id}")))?;
                Ok((record, updated == 1))
            }

            async fn compensation(
                &self,
                id: &str,
            ) -> Result<Option<CompensationRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COMPENSATION_COLUMNS} FROM compensations WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(compensation_from_row).transpose()
            }

            async fn compensation_for(
                &self,
                transfer_id: &str,
            ) -> Result<Option<CompensationRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COMPENSATION_COLUMNS} FROM compensations WHERE transfer_id = $1"
                )))
                .bind(transfer_id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(compensation_from_row).transpose()
            }

            async fn compensations(
                &self,
                session_id: Option<&str>,
            ) -> Result<Vec<CompensationRecord>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COMPENSATION_COLUMNS} FROM compensations \
                     WHERE ($1 IS NULL OR session_id = $1) \
                     ORDER BY created_at_ms, id LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(session_id)
                .fetch_all(pool)
                .await?;
                rows.iter().map(compensation_from_row).collect()
            }

            async fn unfinished_compensations(
                &self,
                limit: usize,
            ) -> Result<Vec<CompensationRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = limit.min(LIST_ROWS_MAX);
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COMPENSATION_COLUMNS} FROM compensations \
                     WHERE outcome IN ('{}', '{}') \
                     ORDER BY updated_at_ms, id LIMIT {limit}",
                    CompensationOutcome::Cancelling.as_str(),
                    CompensationOutcome::CancelFailed.as_str(),
                )))
                .fetch_all(pool)
                .await?;
                rows.iter().map(compensation_from_row).collect()
            }
        }
    };
}

compensation_store_impl!(SqliteDatabase);
compensation_store_impl!(PostgresDatabase);
