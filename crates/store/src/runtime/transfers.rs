//! Transfers: one EIP-3009 authorization's amount held against a session, then posted or voided
//! exactly once; the reads of them. The writing transactions are in `two_phase.rs`.

use alloy_primitives::{Address, B256};
use bursar_protocol::{Amount, Network};
use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use crate::common::{LIST_ROWS_MAX, RESOURCE_BYTES_MAX, StoreError, truncate};
use crate::db::{Row, statement};

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferState {
    /// Reserved against the session; the authorization may have been signed and sent.
    Pending,
    /// Seen settled on chain. Final.
    Posted,
    /// Proven unusable (never signed, cancelled, or expired unused). Final.
    Voided,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Pending => "pending",
            TransferState::Posted => "posted",
            TransferState::Voided => "voided",
        }
    }

    pub fn parse(text: &str) -> Option<TransferState> {
        match text {
            "pending" => Some(TransferState::Pending),
            "posted" => Some(TransferState::Posted),
            "voided" => Some(TransferState::Voided),
            _ => None,
        }
    }
}

impl std::fmt::Display for TransferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One EIP-3009 authorization's amount, held against a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: String,
    pub session_id: String,
    pub grant_id: String,
    pub wallet_id: String,
    pub agent: String,
    pub network: Network,
    pub asset: Address,
    pub payer: Address,
    pub payee: Address,
    pub amount: Amount,
    /// The EIP-3009 authorization's nonce.
    pub nonce: B256,
    pub valid_before_s: u64,
    pub resource: String,
    pub state: TransferState,
    /// The settling transaction: reported by the seller while pending, seen on chain once
    /// posted.
    pub tx_hash: Option<B256>,
    pub void_reason: Option<String>,
    pub created_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

/// The authorization a reservation is for.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub session_id: String,
    pub network: Network,
    pub asset: Address,
    pub payer: Address,
    pub payee: Address,
    pub amount: Amount,
    pub nonce: B256,
    pub valid_before_s: u64,
    pub resource: String,
    /// The endpoint paid (`scheme://host[:port]/path` of the resource), for the session's
    /// history with it ([`TransferStore::endpoint_payments`]).
    pub endpoint: String,
    /// Caps over rolling windows to check with the budget, in the same transaction.
    pub caps: Vec<SpendCap>,
}

/// What a session paid one endpoint so far: transfers reserved or settled (not voided).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPayments {
    pub count: u64,
    /// The oldest of them.
    pub first: Option<TransferRecord>,
    /// When those made at or after the `since` asked for were created (unix ms), oldest first.
    pub recent_at_ms: Vec<i64>,
}

/// A cap on what a wallet (or one agent on it) may reserve or spend over a rolling window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendCap {
    /// Only the agent's transfers count (else every transfer of the wallet).
    pub agent_only: bool,
    pub period_ms: i64,
    pub max: Amount,
    /// Where the cap comes from, for messages.
    pub label: String,
}

/// Why a reservation was refused. Codes are stable (API and runtime ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    SessionClosed,
    SessionExpired,
    GrantRevoked,
    GrantExpired,
    /// The payment is in another network or asset than the session's currency.
    CurrencyMismatch,
    /// `reserved + posted + amount` would exceed `max_spend`.
    BudgetExhausted,
    /// A cap over a rolling window (per wallet or agent) would be exceeded.
    WindowCapExceeded,
    /// Refused by a rule outside the store (the runtime's checks); the message says which.
    Refused,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::SessionClosed => "session_closed",
            DenyReason::SessionExpired => "session_expired",
            DenyReason::GrantRevoked => "grant_revoked",
            DenyReason::GrantExpired => "grant_expired",
            DenyReason::CurrencyMismatch => "currency_mismatch",
            DenyReason::BudgetExhausted => "budget_exhausted",
            DenyReason::WindowCapExceeded => "window_cap_exceeded",
            DenyReason::Refused => "payment_refused",
        }
    }
}

/// The outcome of [`TransferStore::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Reserved(Box<TransferRecord>),
    /// Nothing was reserved; a `deny` entry was written.
    Denied {
        reason: DenyReason,
        message: String,
    },
}

/// A denial decided outside the store (no payable offer, policy), to record in the runtime
/// ledger.
#[derive(Debug, Clone, Default)]
pub struct Denial {
    pub session_id: Option<String>,
    pub amount: Option<Amount>,
    pub payee: Option<Address>,
    pub resource: Option<String>,
    /// A stable code, e.g. `no_payable_offer`.
    pub reason: String,
    pub message: String,
}

/// The transfers: two-phase reservations against sessions, and their reads.
#[async_trait::async_trait]
pub trait TransferStore: Send + Sync + 'static {
    /// Reserves `transfer.amount` against its session, atomically; see the module docs.
    async fn reserve(&self, transfer: NewTransfer) -> Result<Reservation, StoreError>;
    /// [`TransferStore::reserve`], and when it reserves, `decision` (its transfer id filled in)
    /// appended to the decision trace in the same transaction: one commit for both. A denial
    /// writes only its deny entry; its decision is the caller's to record.
    async fn reserve_and_decide(
        &self,
        transfer: NewTransfer,
        decision: crate::decisions::NewDecision,
    ) -> Result<Reservation, StoreError>;
    /// Records a denial decided outside the store.
    async fn deny(&self, denial: Denial) -> Result<(), StoreError>;
    /// Remembers the transaction a seller reported for a pending transfer (not yet trusted).
    async fn note_tx_hash(&self, transfer_id: &str, tx_hash: B256) -> Result<(), StoreError>;
    /// `pending` → `posted`; returns whether this call posted it.
    async fn post(&self, transfer_id: &str, tx_hash: Option<B256>) -> Result<bool, StoreError>;
    /// `pending` → `voided`; returns whether this call voided it.
    async fn void(&self, transfer_id: &str, reason: &str) -> Result<bool, StoreError>;
    async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>, StoreError>;
    /// Pending transfers, oldest first, at most `limit`.
    async fn pending_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>, StoreError>;
    /// One page of the transfers of a session (of every session when `None`), oldest first (by
    /// creation time, then id): those after `after` (the creation time and id of the previous
    /// page's last transfer), at most `limit` (capped at [`LIST_ROWS_MAX`]).
    async fn transfers_page(
        &self,
        session_id: Option<&str>,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<TransferRecord>, StoreError>;

    /// Every transfer of a session (of every session when `None`), oldest first, read a page
    /// of [`LIST_ROWS_MAX`] at a time.
    async fn transfers(&self, session_id: Option<&str>) -> Result<Vec<TransferRecord>, StoreError> {
        let mut all: Vec<TransferRecord> = Vec::new();
        loop {
            let after = all.last().map(|t| (t.created_at_ms, t.id.as_str()));
            let page = self
                .transfers_page(session_id, after, LIST_ROWS_MAX)
                .await?;
            let last_page = page.len() < LIST_ROWS_MAX;
            all.extend(page);
            if last_page {
                return Ok(all);
            }
        }
    }

    /// What `session_id` paid `endpoint` (reserved or settled), read through an index: the
    /// count, the oldest transfer, and the creation times of those made at or after `since_ms`.
    async fn endpoint_payments(
        &self,
        session_id: &str,
        endpoint: &str,
        since_ms: i64,
    ) -> Result<EndpointPayments, StoreError>;
}

pub(super) const TRANSFER_COLUMNS: &str = "id, session_id, grant_id, wallet_id, agent, network, \
     asset, payer, payee, amount, nonce, valid_before_s, resource, state, tx_hash, void_reason, \
     created_at_ms, resolved_at_ms";

pub(super) fn transfer_from_row(row: &Row) -> Result<TransferRecord, StoreError> {
    let id: String = row.get("id")?;
    let state: String = row.get("state")?;
    let valid_before_s: i64 = row.get("valid_before_s")?;
    Ok(TransferRecord {
        session_id: row.get("session_id")?,
        grant_id: row.get("grant_id")?,
        wallet_id: row.get("wallet_id")?,
        agent: row.get("agent")?,
        network: row.typed("network")?,
        asset: row.typed("asset")?,
        payer: row.typed("payer")?,
        payee: row.typed("payee")?,
        amount: row.typed("amount")?,
        nonce: row.typed("nonce")?,
        valid_before_s: u64::try_from(valid_before_s)
            .map_err(|_| StoreError::Corrupt(format!("transfer {id}: negative valid_before_s")))?,
        resource: row.get("resource")?,
        state: TransferState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("transfer {id}: state {state:?}")))?,
        tx_hash: row.typed_opt("tx_hash")?,
        void_reason: row.get("void_reason")?,
        created_at_ms: row.get("created_at_ms")?,
        resolved_at_ms: row.get("resolved_at_ms")?,
        id,
    })
}

#[async_trait::async_trait]
impl TransferStore for SqlRuntimeStore {
    async fn reserve(&self, transfer: NewTransfer) -> Result<Reservation, StoreError> {
        super::two_phase::reserve(self, transfer, None).await
    }

    async fn reserve_and_decide(
        &self,
        transfer: NewTransfer,
        decision: crate::decisions::NewDecision,
    ) -> Result<Reservation, StoreError> {
        let decision = crate::decisions::prepare(decision)?;
        super::two_phase::reserve(self, transfer, Some(decision)).await
    }

    async fn deny(&self, denial: Denial) -> Result<(), StoreError> {
        super::two_phase::deny(self, denial).await
    }

    async fn note_tx_hash(&self, transfer_id: &str, tx_hash: B256) -> Result<(), StoreError> {
        let db = self.db().await?;
        db.execute(
            statement("UPDATE transfers SET tx_hash = $2 WHERE id = $1 AND state = 'pending'")
                .bind(transfer_id)
                .bind(tx_hash),
        )
        .await?;
        Ok(())
    }

    async fn post(&self, transfer_id: &str, tx_hash: Option<B256>) -> Result<bool, StoreError> {
        super::two_phase::resolve(self, transfer_id, TransferState::Posted, tx_hash, None).await
    }

    async fn void(&self, transfer_id: &str, reason: &str) -> Result<bool, StoreError> {
        super::two_phase::resolve(self, transfer_id, TransferState::Voided, None, Some(reason))
            .await
    }

    async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1"
                )))
                .bind(id),
            )
            .await?;
        row.as_ref().map(transfer_from_row).transpose()
    }

    async fn pending_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>, StoreError> {
        let db = self.db().await?;
        let limit = limit.min(LIST_ROWS_MAX);
        let rows = db
            .fetch_all(statement(AssertSqlSafe(format!(
                "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE state = 'pending' \
                 ORDER BY created_at_ms, id LIMIT {limit}"
            ))))
            .await?;
        rows.iter().map(transfer_from_row).collect()
    }

    async fn transfers_page(
        &self,
        session_id: Option<&str>,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let db = self.db().await?;
        let limit = limit.min(LIST_ROWS_MAX);
        let (after_ms, after_id) = match after {
            Some((ms, id)) => (Some(ms), Some(id)),
            None => (None, None),
        };
        let rows = db
            .fetch_all(
                statement(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers \
                     WHERE ($1 IS NULL OR session_id = $1) \
                     AND ($2 IS NULL OR created_at_ms > $2 OR (created_at_ms = $2 AND id > $3)) \
                     ORDER BY created_at_ms, id LIMIT {limit}"
                )))
                .bind(session_id)
                .bind(after_ms)
                .bind(after_id),
            )
            .await?;
        rows.iter().map(transfer_from_row).collect()
    }

    async fn endpoint_payments(
        &self,
        session_id: &str,
        endpoint: &str,
        since_ms: i64,
    ) -> Result<EndpointPayments, StoreError> {
        let db = self.db().await?;
        let endpoint = truncate(endpoint, RESOURCE_BYTES_MAX);
        // Three independent reads at once (their round trips overlap on PostgreSQL).
        let count = db.fetch_one(
            statement(
                "SELECT COUNT(*) AS count FROM transfers \
                 WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided'",
            )
            .bind(session_id)
            .bind(&endpoint),
        );
        let first = db.fetch_optional(
            statement(AssertSqlSafe(format!(
                "SELECT {TRANSFER_COLUMNS} FROM transfers \
                 WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided' \
                 ORDER BY created_at_ms, id LIMIT 1"
            )))
            .bind(session_id)
            .bind(&endpoint),
        );
        let recent = db.fetch_all(
            statement(
                "SELECT created_at_ms FROM transfers \
                 WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided' \
                 AND created_at_ms >= $3 ORDER BY created_at_ms",
            )
            .bind(session_id)
            .bind(&endpoint)
            .bind(since_ms),
        );
        let (count, first, recent) = tokio::join!(count, first, recent);
        let count: i64 = count?.get("count")?;
        let (first, recent) = (first?, recent?);
        Ok(EndpointPayments {
            count: u64::try_from(count).unwrap_or_default(),
            first: first.as_ref().map(transfer_from_row).transpose()?,
            recent_at_ms: recent
                .iter()
                .map(|row| row.get("created_at_ms"))
                .collect::<Result<_, _>>()?,
        })
    }
}
