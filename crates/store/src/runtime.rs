//! The agent runtime's records: wallets, grants, payment sessions, two-phase transfers and the
//! append-only ledger, plus operator keys.
//!
//! The budget rule lives here, in one transaction per operation, so it holds across concurrent
//! requests and across processes sharing a database:
//!
//! - [`RuntimeStore::reserve`] locks the session row (an `UPDATE` first: a row lock on
//!   PostgreSQL, the write lock on SQLite), checks the session, its grant and its budget
//!   (`reserved + posted + amount <= max_spend`), and writes the pending transfer, its `reserve`
//!   ledger entry and the new `reserved` total together. A refusal writes a `deny` entry instead.
//! - [`RuntimeStore::post`] and [`RuntimeStore::void`] move a `pending` transfer to its final
//!   state exactly once (a conditional `UPDATE ... WHERE state = 'pending'`, and a UNIQUE index on
//!   `(transfer_id, kind)` in the ledger as a second check of the same rule), moving its amount
//!   from `reserved` to `posted`, or releasing it.
//! - Ledger entries are never updated or deleted (triggers refuse it).
//!
//! Amounts are stored as decimal strings of atomic units and added up in Rust with
//! [`Amount`]'s checked arithmetic, so no database integer limit applies.

use bursar_protocol::Amount;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use crate::keys::{KeyDigest, hex_lower, random_hex};
use crate::sql::{PostgresLedger, SqliteLedger};
use crate::{LedgerError, now_ms};

/// Longest wallet, agent, operator-key name accepted.
pub const NAME_BYTES_MAX: usize = 200;
/// Longest idempotency key or client token accepted.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 200;
/// Longest resource URL recorded in the ledger (longer ones are truncated for the record).
pub const RESOURCE_BYTES_MAX: usize = 2048;
/// Most rows one listing returns.
pub const LIST_ROWS_MAX: usize = 10_000;
/// Most policies [`RuntimeStore::endpoint_pauses`] looks at in one query (a session has at
/// most four: the runtime's, the wallet's, the grant's and its own).
pub const POLICIES_PER_QUERY_MAX: usize = 16;
/// Prefix of operator API keys.
pub const OPERATOR_KEY_PREFIX: &str = "bok_";
/// Random bytes in an operator key.
pub const OPERATOR_KEY_SECRET_BYTES: usize = 32;

/// Runtime store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Store(Box<LedgerError>),
    /// The same idempotency key (or client token, or unique name) was used with other content.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("corrupt runtime row: {0}")]
    Corrupt(String),
}

impl From<LedgerError> for StoreError {
    fn from(error: LedgerError) -> Self {
        StoreError::Store(Box::new(error))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Store(Box::new(LedgerError::Database(error)))
    }
}

/// A new id: `prefix` + 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(12))
}

/// SHA-256 over the parts, hex: how creates remember what they were asked, for idempotency.
pub fn request_digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex_lower(&hasher.finalize())
}

/// Whether a create made a new row or found the one an earlier identical request made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    New(T),
    Existing(T),
}

impl<T> Created<T> {
    pub fn into_inner(self) -> T {
        match self {
            Created::New(value) | Created::Existing(value) => value,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, Created::New(_))
    }
}

/// An encrypted signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRecord {
    pub id: String,
    pub name: String,
    /// Lowercase 0x hex.
    pub address: String,
    /// Web3 Secret Storage v3 JSON (encrypted).
    pub keystore: String,
    pub created_at_ms: i64,
}

/// What a wallet insert needs.
#[derive(Debug, Clone)]
pub struct NewWallet {
    pub name: String,
    pub address: String,
    pub keystore: String,
    pub idempotency_key: Option<String>,
}

/// A wallet owner's authorization for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: String,
    pub wallet_id: String,
    pub agent: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl GrantRecord {
    /// Live: not revoked and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

#[derive(Debug, Clone)]
pub struct NewGrant {
    pub wallet_id: String,
    pub agent: String,
    pub expires_at_ms: i64,
    /// What the caller asked for (for example the duration), compared on idempotent retries.
    pub request: String,
    pub idempotency_key: Option<String>,
}

/// A payment session: one agent run with a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub grant_id: String,
    pub wallet_id: String,
    pub agent: String,
    /// CAIP-2.
    pub network: String,
    /// Token address, lowercase 0x hex.
    pub asset: String,
    /// The currency's name, e.g. `USDC`.
    pub currency: String,
    pub max_spend: Amount,
    /// Held by pending transfers.
    pub reserved: Amount,
    /// Seen settled on chain.
    pub posted: Amount,
    pub client_token: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

impl SessionRecord {
    /// What may still be reserved.
    pub fn remaining(&self) -> Amount {
        self.max_spend
            .checked_sub(self.reserved)
            .and_then(|left| left.checked_sub(self.posted))
            .unwrap_or(Amount::ZERO)
    }
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub grant_id: String,
    pub network: String,
    pub asset: String,
    pub currency: String,
    pub max_spend: Amount,
    pub expires_at_ms: i64,
    /// Idempotent creation: the same grant and token return the same session.
    pub client_token: Option<String>,
    /// What the caller asked for, compared on idempotent retries.
    pub request: String,
}

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
    pub network: String,
    pub asset: String,
    pub payer: String,
    pub payee: String,
    pub amount: Amount,
    pub nonce: String,
    pub valid_before_s: u64,
    pub resource: String,
    pub state: TransferState,
    pub tx_hash: Option<String>,
    pub void_reason: Option<String>,
    pub created_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

/// The authorization a reservation is for. Addresses and nonce in 0x hex (lowercased on insert).
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub session_id: String,
    pub network: String,
    pub asset: String,
    pub payer: String,
    pub payee: String,
    pub amount: Amount,
    pub nonce: String,
    pub valid_before_s: u64,
    pub resource: String,
    /// The endpoint paid (`scheme://host[:port]/path` of the resource), for the session's
    /// history with it ([`RuntimeStore::endpoint_payments`]).
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

/// Why a reservation was refused. Codes are stable (API and ledger).
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

/// The outcome of [`RuntimeStore::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Reserved(Box<TransferRecord>),
    /// Nothing was reserved; a `deny` entry was written.
    Denied {
        reason: DenyReason,
        message: String,
    },
}

/// A denial decided outside the store (no payable offer, policy), to record in the ledger.
#[derive(Debug, Clone, Default)]
pub struct Denial {
    pub session_id: Option<String>,
    pub amount: Option<Amount>,
    pub payee: Option<String>,
    pub resource: Option<String>,
    /// A stable code, e.g. `no_payable_offer`.
    pub reason: String,
    pub message: String,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Reserve,
    Post,
    Void,
    Deny,
    /// A budget crossed an alert threshold.
    Alert,
    /// A payment was claimed back after its step failed.
    Compensate,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Reserve => "reserve",
            EntryKind::Post => "post",
            EntryKind::Void => "void",
            EntryKind::Deny => "deny",
            EntryKind::Alert => "alert",
            EntryKind::Compensate => "compensate",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        match text {
            "reserve" => Some(EntryKind::Reserve),
            "post" => Some(EntryKind::Post),
            "void" => Some(EntryKind::Void),
            "deny" => Some(EntryKind::Deny),
            "alert" => Some(EntryKind::Alert),
            "compensate" => Some(EntryKind::Compensate),
            _ => None,
        }
    }
}

/// One row of the append-only ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Order of writing; increasing, possibly with gaps.
    pub seq: i64,
    pub kind: EntryKind,
    pub transfer_id: Option<String>,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub network: Option<String>,
    pub asset: Option<String>,
    pub amount: Option<Amount>,
    pub payee: Option<String>,
    pub resource: Option<String>,
    pub tx_hash: Option<String>,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// The validation record of one endpoint under one policy: the failures in a row that the
/// policy's response validations found, and the pause they caused. A pause applies only to the
/// sessions the policy covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// The policy's source: `default policy`, `file <path>`, `wallet <id>`, `grant <id>`,
    /// `session <id>`.
    pub policy: String,
    pub endpoint: String,
    pub consecutive_failures: u64,
    pub last_failure: Option<String>,
    /// Payments to the endpoint are refused until then (unix ms).
    pub paused_until_ms: Option<i64>,
    /// Where the last validation was made.
    pub wallet_id: Option<String>,
    pub session_id: Option<String>,
    pub updated_at_ms: i64,
}

/// Where a validation of a paid response was made.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub wallet_id: &'a str,
    pub session_id: &'a str,
}

/// Paid requests in a row that an endpoint answered with 402 again, within one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejections {
    pub count: u32,
    pub last_at_ms: i64,
}

impl EndpointHealth {
    pub fn is_paused(&self, now_ms: i64) -> bool {
        self.paused_until_ms.is_some_and(|until| now_ms < until)
    }
}

/// An operator key without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorKeyRecord {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// An operator key just created: the only time its plaintext exists.
pub struct NewOperatorKey {
    pub record: OperatorKeyRecord,
    pub key: String,
}

impl std::fmt::Debug for NewOperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOperatorKey")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The runtime's storage. [`SqliteLedger`] and [`PostgresLedger`] implement it over the same
/// database as the settlement ledger; [`open_runtime_store`] picks one from a URL.
#[async_trait::async_trait]
pub trait RuntimeStore: Send + Sync + 'static {
    async fn create_wallet(&self, wallet: NewWallet) -> Result<Created<WalletRecord>, StoreError>;
    /// By id, name or address.
    async fn wallet(&self, id_name_or_address: &str) -> Result<Option<WalletRecord>, StoreError>;
    async fn wallets(&self) -> Result<Vec<WalletRecord>, StoreError>;

    async fn create_grant(&self, grant: NewGrant) -> Result<Created<GrantRecord>, StoreError>;
    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError>;
    /// Grants of a wallet (all wallets when `None`), newest first.
    async fn grants(&self, wallet_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError>;
    /// Revokes one live grant; returns whether it was live.
    async fn revoke_grant(&self, id: &str, reason: &str) -> Result<bool, StoreError>;
    /// Revokes every unrevoked grant (of one wallet, or of all): the kill switch. Returns how many.
    async fn revoke_all_grants(
        &self,
        wallet_id: Option<&str>,
        reason: &str,
    ) -> Result<u64, StoreError>;

    /// Creates a session under a live grant. The grant must be live at `now`.
    async fn create_session(
        &self,
        session: NewSession,
    ) -> Result<Created<SessionRecord>, StoreError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Sessions of a grant (all when `None`), newest first.
    async fn sessions(&self, grant_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError>;
    /// Closes a session: no more reservations. Pending transfers still resolve.
    async fn close_session(&self, id: &str) -> Result<bool, StoreError>;

    /// Reserves `transfer.amount` against its session, atomically; see the module docs.
    async fn reserve(&self, transfer: NewTransfer) -> Result<Reservation, StoreError>;
    /// [`RuntimeStore::reserve`], and when it reserves, `decision` (its transfer id filled in)
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
    async fn note_tx_hash(&self, transfer_id: &str, tx_hash: &str) -> Result<(), StoreError>;
    /// `pending` → `posted`; returns whether this call posted it.
    async fn post(&self, transfer_id: &str, tx_hash: Option<&str>) -> Result<bool, StoreError>;
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
    /// Ledger entries with `seq > after`, in order, at most `limit`.
    async fn entries(&self, after: i64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;

    async fn create_operator_key(&self, name: &str) -> Result<NewOperatorKey, StoreError>;
    /// The unrevoked key with this digest.
    async fn operator_key(
        &self,
        digest: &KeyDigest,
    ) -> Result<Option<OperatorKeyRecord>, StoreError>;
    async fn operator_keys(&self) -> Result<Vec<OperatorKeyRecord>, StoreError>;
    async fn revoke_operator_key(&self, id: &str) -> Result<bool, StoreError>;

    /// The policy document attached to a wallet, grant or session (`scope`), if any.
    async fn policy(&self, scope: &str, subject_id: &str) -> Result<Option<String>, StoreError>;
    /// Attaches (replaces) a policy document.
    async fn put_policy(
        &self,
        scope: &str,
        subject_id: &str,
        document: &str,
    ) -> Result<(), StoreError>;
    /// Detaches a policy; returns whether there was one.
    async fn delete_policy(&self, scope: &str, subject_id: &str) -> Result<bool, StoreError>;

    /// Records one validation of a paid response under `policy`: a pass resets the count of
    /// failures; a failure adds one, and the `pause_after`-th in a row pauses the endpoint for
    /// `cooldown_ms` (for the sessions `policy` covers).
    async fn record_validation(
        &self,
        policy: &str,
        endpoint: &str,
        observed: Observed<'_>,
        failure: Option<&str>,
        pause_after: u64,
        cooldown_ms: i64,
    ) -> Result<EndpointHealth, StoreError>;
    async fn endpoint_health(
        &self,
        policy: &str,
        endpoint: &str,
    ) -> Result<Option<EndpointHealth>, StoreError>;
    /// The pauses of `endpoint` in force now under any of `policies` (at most
    /// [`POLICIES_PER_QUERY_MAX`] are looked at).
    async fn endpoint_pauses(
        &self,
        policies: &[String],
        endpoint: &str,
    ) -> Result<Vec<EndpointHealth>, StoreError>;
    /// Endpoints paused now (under one policy, or all).
    async fn paused_endpoints(
        &self,
        policy: Option<&str>,
    ) -> Result<Vec<EndpointHealth>, StoreError>;
    /// Lifts a pause and forgets the failures; returns whether the endpoint was paused.
    async fn lift_pause(&self, policy: &str, endpoint: &str) -> Result<bool, StoreError>;

    /// Counts one more paid request of `session_id` that `endpoint` answered with 402 again, at
    /// `at_ms`; returns the count in a row (atomic: concurrent callers and processes add up).
    async fn note_rejection(
        &self,
        session_id: &str,
        endpoint: &str,
        at_ms: i64,
    ) -> Result<Rejections, StoreError>;
    /// A paid request the endpoint accepted: the count starts again.
    async fn clear_rejections(&self, session_id: &str, endpoint: &str) -> Result<(), StoreError>;
    async fn rejections(
        &self,
        session_id: &str,
        endpoint: &str,
    ) -> Result<Option<Rejections>, StoreError>;

    /// The decision trace in the same database.
    fn decision_store(&self) -> std::sync::Arc<dyn crate::decisions::DecisionStore>;
    /// Payment evidence and compensations in the same database.
    fn compensation_store(&self) -> std::sync::Arc<dyn crate::compensation::CompensationStore>;

    /// Budget alerts and their webhook outbox in the same database.
    fn alert_store(&self) -> std::sync::Arc<dyn crate::alerts::AlertStore>;

    /// A shared setting; `put_meta_if_absent` returns the value that is stored afterwards.
    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError>;
    async fn put_meta_if_absent(&self, name: &str, value: &str) -> Result<String, StoreError>;
}

/// Opens (creating and migrating) the runtime store at `url`.
pub async fn open_runtime_store(
    url: &str,
) -> Result<std::sync::Arc<dyn RuntimeStore>, LedgerError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteLedger::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresLedger::open(url).await?))
    } else {
        Err(LedgerError::UnsupportedUrl {
            url: crate::redact(url),
        })
    }
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {NAME_BYTES_MAX} bytes of printable text"
        )));
    }
    Ok(())
}

fn check_idempotency_key(key: Option<&str>) -> Result<(), StoreError> {
    if let Some(key) = key
        && (key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || key.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(format!(
            "idempotency key / client token must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable bytes"
        )));
    }
    Ok(())
}

fn truncate(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_string();
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn amount(text: &str, what: &str) -> Result<Amount, StoreError> {
    Amount::parse_atomic(text).map_err(|_| StoreError::Corrupt(format!("{what}: {text:?}")))
}

macro_rules! row_get {
    ($row:expr, $name:literal) => {
        $row.try_get($name).map_err(StoreError::from)?
    };
}

fn wallet_from_row<R>(row: &R) -> Result<WalletRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WalletRecord {
        id: row_get!(row, "id"),
        name: row_get!(row, "name"),
        address: row_get!(row, "address"),
        keystore: row_get!(row, "keystore"),
        created_at_ms: row_get!(row, "created_at_ms"),
    })
}

fn grant_from_row<R>(row: &R) -> Result<GrantRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(GrantRecord {
        id: row_get!(row, "id"),
        wallet_id: row_get!(row, "wallet_id"),
        agent: row_get!(row, "agent"),
        created_at_ms: row_get!(row, "created_at_ms"),
        expires_at_ms: row_get!(row, "expires_at_ms"),
        revoked_at_ms: row_get!(row, "revoked_at_ms"),
        revoke_reason: row_get!(row, "revoke_reason"),
    })
}

fn session_from_row<R>(row: &R) -> Result<SessionRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let max_spend: String = row_get!(row, "max_spend");
    let reserved: String = row_get!(row, "reserved");
    let posted: String = row_get!(row, "posted");
    Ok(SessionRecord {
        id: row_get!(row, "id"),
        grant_id: row_get!(row, "grant_id"),
        wallet_id: row_get!(row, "wallet_id"),
        agent: row_get!(row, "agent"),
        network: row_get!(row, "network"),
        asset: row_get!(row, "asset"),
        currency: row_get!(row, "currency"),
        max_spend: amount(&max_spend, "sessions.max_spend")?,
        reserved: amount(&reserved, "sessions.reserved")?,
        posted: amount(&posted, "sessions.posted")?,
        client_token: row_get!(row, "client_token"),
        created_at_ms: row_get!(row, "created_at_ms"),
        expires_at_ms: row_get!(row, "expires_at_ms"),
        closed_at_ms: row_get!(row, "closed_at_ms"),
    })
}

fn transfer_from_row<R>(row: &R) -> Result<TransferRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row_get!(row, "id");
    let value: String = row_get!(row, "amount");
    let state: String = row_get!(row, "state");
    let valid_before_s: i64 = row_get!(row, "valid_before_s");
    Ok(TransferRecord {
        session_id: row_get!(row, "session_id"),
        grant_id: row_get!(row, "grant_id"),
        wallet_id: row_get!(row, "wallet_id"),
        agent: row_get!(row, "agent"),
        network: row_get!(row, "network"),
        asset: row_get!(row, "asset"),
        payer: row_get!(row, "payer"),
        payee: row_get!(row, "payee"),
        amount: amount(&value, "transfers.amount")?,
        nonce: row_get!(row, "nonce"),
        valid_before_s: u64::try_from(valid_before_s)
            .map_err(|_| StoreError::Corrupt(format!("transfer {id}: negative valid_before_s")))?,
        resource: row_get!(row, "resource"),
        state: TransferState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("transfer {id}: state {state:?}")))?,
        tx_hash: row_get!(row, "tx_hash"),
        void_reason: row_get!(row, "void_reason"),
        created_at_ms: row_get!(row, "created_at_ms"),
        resolved_at_ms: row_get!(row, "resolved_at_ms"),
        id,
    })
}

fn entry_from_row<R>(row: &R) -> Result<LedgerEntry, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row_get!(row, "seq");
    let kind: String = row_get!(row, "kind");
    let value: Option<String> = row_get!(row, "amount");
    Ok(LedgerEntry {
        seq,
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("ledger entry {seq}: kind {kind:?}")))?,
        transfer_id: row_get!(row, "transfer_id"),
        session_id: row_get!(row, "session_id"),
        grant_id: row_get!(row, "grant_id"),
        wallet_id: row_get!(row, "wallet_id"),
        agent: row_get!(row, "agent"),
        network: row_get!(row, "network"),
        asset: row_get!(row, "asset"),
        amount: value
            .map(|text| amount(&text, "ledger_entries.amount"))
            .transpose()?,
        payee: row_get!(row, "payee"),
        resource: row_get!(row, "resource"),
        tx_hash: row_get!(row, "tx_hash"),
        reason: row_get!(row, "reason"),
        at_ms: row_get!(row, "at_ms"),
    })
}

fn health_from_row<R>(row: &R) -> Result<EndpointHealth, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let failures: i64 = row_get!(row, "consecutive_failures");
    Ok(EndpointHealth {
        policy: row_get!(row, "policy"),
        endpoint: row_get!(row, "endpoint"),
        consecutive_failures: u64::try_from(failures)
            .map_err(|_| StoreError::Corrupt("negative consecutive_failures".into()))?,
        last_failure: row_get!(row, "last_failure"),
        paused_until_ms: row_get!(row, "paused_until_ms"),
        wallet_id: row_get!(row, "wallet_id"),
        session_id: row_get!(row, "session_id"),
        updated_at_ms: row_get!(row, "updated_at_ms"),
    })
}

fn rejections_from_row<R>(row: &R) -> Result<Rejections, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count: i64 = row_get!(row, "rejections");
    Ok(Rejections {
        count: u32::try_from(count.max(0)).unwrap_or(u32::MAX),
        last_at_ms: row_get!(row, "last_rejection_ms"),
    })
}

fn operator_key_from_row<R>(row: &R) -> Result<OperatorKeyRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OperatorKeyRecord {
        id: row_get!(row, "id"),
        name: row_get!(row, "name"),
        created_at_ms: row_get!(row, "created_at_ms"),
        revoked_at_ms: row_get!(row, "revoked_at_ms"),
    })
}

const WALLET_COLUMNS: &str = "id, name, address, keystore, created_at_ms";
const GRANT_COLUMNS: &str =
    "id, wallet_id, agent, created_at_ms, expires_at_ms, revoked_at_ms, revoke_reason";
const SESSION_COLUMNS: &str = "id, grant_id, wallet_id, agent, network, asset, currency, \
     max_spend, reserved, posted, client_token, created_at_ms, expires_at_ms, closed_at_ms";
const TRANSFER_COLUMNS: &str = "id, session_id, grant_id, wallet_id, agent, network, asset, \
     payer, payee, amount, nonce, valid_before_s, resource, state, tx_hash, void_reason, \
     created_at_ms, resolved_at_ms";
const PAUSE_COLUMNS: &str = "policy, endpoint, consecutive_failures, last_failure, \
     paused_until_ms, wallet_id, session_id, updated_at_ms";
const ENTRY_COLUMNS: &str = "seq, kind, transfer_id, session_id, grant_id, wallet_id, agent, \
     network, asset, amount, payee, resource, tx_hash, reason, at_ms";
const INSERT_ENTRY: &str = "INSERT INTO ledger_entries (kind, transfer_id, session_id, grant_id, \
     wallet_id, agent, network, asset, amount, payee, resource, tx_hash, reason, at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}

/// Writes the [`RuntimeStore`] implementation for one pool type. Both backends run the same
/// statements (`$n` placeholders work on both).
macro_rules! runtime_store_impl {
    ($store:ident) => {
        impl $store {
            /// Writes one ledger entry inside `tx`.
            #[allow(clippy::too_many_arguments)]
            async fn write_entry<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as StoreDb>::Db>,
                kind: EntryKind,
                transfer: Option<&TransferRecord>,
                session: Option<&SessionRecord>,
                amount: Option<Amount>,
                payee: Option<&str>,
                resource: Option<&str>,
                tx_hash: Option<&str>,
                reason: Option<&str>,
            ) -> Result<(), StoreError> {
                sqlx::query(INSERT_ENTRY)
                    .bind(kind.as_str())
                    .bind(transfer.map(|t| t.id.clone()))
                    .bind(
                        transfer
                            .map(|t| t.session_id.clone())
                            .or(session.map(|s| s.id.clone())),
                    )
                    .bind(
                        transfer
                            .map(|t| t.grant_id.clone())
                            .or(session.map(|s| s.grant_id.clone())),
                    )
                    .bind(
                        transfer
                            .map(|t| t.wallet_id.clone())
                            .or(session.map(|s| s.wallet_id.clone())),
                    )
                    .bind(
                        transfer
                            .map(|t| t.agent.clone())
                            .or(session.map(|s| s.agent.clone())),
                    )
                    .bind(
                        transfer
                            .map(|t| t.network.clone())
                            .or(session.map(|s| s.network.clone())),
                    )
                    .bind(
                        transfer
                            .map(|t| t.asset.clone())
                            .or(session.map(|s| s.asset.clone())),
                    )
                    .bind(amount.map(|a| a.to_string()))
                    .bind(payee.map(str::to_string))
                    .bind(resource.map(|r| truncate(r, RESOURCE_BYTES_MAX)))
                    .bind(tx_hash.map(str::to_string))
                    .bind(reason.map(str::to_string))
                    .bind(now_ms())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Reserves, and when it reserves appends `decision` (its transfer id filled in) to
            /// the decision trace before the one commit. Too long to split without passing the
            /// transaction's half-made state between pieces: one transaction, read top to bottom.
            async fn reserve_with(
                &self,
                transfer: NewTransfer,
                decision: Option<crate::decisions::StoredDecision>,
            ) -> Result<Reservation, StoreError> {
                let pool = self.ready().await?;
                let valid_before_s = i64::try_from(transfer.valid_before_s)
                    .map_err(|_| StoreError::Invalid("validBefore out of range".into()))?;
                let mut tx = pool.begin().await?;
                let Some((session, grant)) = Self::lock_session(&mut tx, &transfer.session_id).await?
                else {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound(format!("session {}", transfer.session_id)));
                };
                let now = now_ms();
                let asset = transfer.asset.to_ascii_lowercase();
                let wanted = session.reserved.checked_add(session.posted).and_then(|spent| spent.checked_add(transfer.amount));
                let cap_refusal = if session.closed_at_ms.is_none() && !transfer.caps.is_empty() {
                    Self::check_caps(&mut tx, &session, &transfer, now).await?
                } else {
                    None
                };
                let refusal = if session.closed_at_ms.is_some() {
                    Some((DenyReason::SessionClosed, format!("session {} is closed", session.id)))
                } else if grant.revoked_at_ms.is_some() {
                    // The grant first: a session's expiry is capped at its grant's, so the
                    // grant is the cause when both have passed.
                    Some((DenyReason::GrantRevoked, format!("grant {} was revoked", grant.id)))
                } else if now >= grant.expires_at_ms {
                    Some((DenyReason::GrantExpired, format!("grant {} has expired", grant.id)))
                } else if now >= session.expires_at_ms {
                    Some((DenyReason::SessionExpired, format!("session {} has expired", session.id)))
                } else if transfer.network != session.network || asset != session.asset {
                    Some((
                        DenyReason::CurrencyMismatch,
                        format!(
                            "the payment is in {} on {}; this session spends {} ({} on {})",
                            asset, transfer.network, session.currency, session.asset, session.network
                        ),
                    ))
                } else if wanted.is_none_or(|total| total > session.max_spend) {
                    Some((
                        DenyReason::BudgetExhausted,
                        format!(
                            "paying {} would exceed the session budget: {} of {} is spent or reserved",
                            transfer.amount,
                            session.reserved.checked_add(session.posted).unwrap_or(session.max_spend),
                            session.max_spend
                        ),
                    ))
                } else {
                    cap_refusal
                };
                if let Some((reason, message)) = refusal {
                    Self::write_entry(
                        &mut tx,
                        EntryKind::Deny,
                        None,
                        Some(&session),
                        Some(transfer.amount),
                        Some(&transfer.payee.to_ascii_lowercase()),
                        Some(&transfer.resource),
                        None,
                        Some(&format!("{}: {message}", reason.code())),
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(Reservation::Denied { reason, message });
                }
                let record = TransferRecord {
                    id: new_id("tfr_"),
                    session_id: session.id.clone(),
                    grant_id: session.grant_id.clone(),
                    wallet_id: session.wallet_id.clone(),
                    agent: session.agent.clone(),
                    network: transfer.network.clone(),
                    asset,
                    payer: transfer.payer.to_ascii_lowercase(),
                    payee: transfer.payee.to_ascii_lowercase(),
                    amount: transfer.amount,
                    nonce: transfer.nonce.to_ascii_lowercase(),
                    valid_before_s: transfer.valid_before_s,
                    resource: truncate(&transfer.resource, RESOURCE_BYTES_MAX),
                    state: TransferState::Pending,
                    tx_hash: None,
                    void_reason: None,
                    created_at_ms: now,
                    resolved_at_ms: None,
                };
                sqlx::query(
                    "INSERT INTO transfers (id, session_id, grant_id, wallet_id, agent, network, \
                     asset, payer, payee, amount, nonce, valid_before_s, resource, state, \
                     created_at_ms, endpoint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     $12, $13, 'pending', $14, $15)",
                )
                .bind(&record.id)
                .bind(&record.session_id)
                .bind(&record.grant_id)
                .bind(&record.wallet_id)
                .bind(&record.agent)
                .bind(&record.network)
                .bind(&record.asset)
                .bind(&record.payer)
                .bind(&record.payee)
                .bind(record.amount.to_string())
                .bind(&record.nonce)
                .bind(valid_before_s)
                .bind(&record.resource)
                .bind(record.created_at_ms)
                .bind(truncate(&transfer.endpoint, RESOURCE_BYTES_MAX))
                .execute(&mut *tx)
                .await?;
                let reserved = session
                    .reserved
                    .checked_add(record.amount)
                    .ok_or_else(|| StoreError::Corrupt("reserved total overflows".into()))?;
                Self::set_totals(&mut tx, &session.id, reserved, session.posted).await?;
                Self::write_entry(
                    &mut tx,
                    EntryKind::Reserve,
                    Some(&record),
                    None,
                    Some(record.amount),
                    Some(&record.payee),
                    Some(&record.resource),
                    None,
                    None,
                )
                .await?;
                if let Some(mut decision) = decision {
                    decision.set_transfer(&record.id);
                    Self::append_decision(&mut tx, decision).await?;
                }
                tx.commit().await?;
                Ok(Reservation::Reserved(Box::new(record)))
            }

            /// Locks the session row for the rest of `tx` and reads it with its grant.
            async fn lock_session<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as StoreDb>::Db>,
                id: &str,
            ) -> Result<Option<(SessionRecord, GrantRecord)>, StoreError> {
                // Locks the row and reads it in one statement.
                let Some(row) = sqlx::query(AssertSqlSafe(format!(
                    "UPDATE sessions SET lock_version = lock_version + 1 WHERE id = $1 \
                     RETURNING {SESSION_COLUMNS}"
                )))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
                else {
                    return Ok(None);
                };
                let session = session_from_row(&row)?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"
                )))
                .bind(&session.grant_id)
                .fetch_one(&mut **tx)
                .await?;
                Ok(Some((session, grant_from_row(&row)?)))
            }

            async fn set_totals<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as StoreDb>::Db>,
                id: &str,
                reserved: Amount,
                posted: Amount,
            ) -> Result<(), StoreError> {
                sqlx::query("UPDATE sessions SET reserved = $2, posted = $3 WHERE id = $1")
                    .bind(id)
                    .bind(reserved.to_string())
                    .bind(posted.to_string())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Checks rolling-window caps under the wallet's row lock: what the wallet (or the
            /// agent on it) reserved or spent within each window, plus this transfer.
            async fn check_caps<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as StoreDb>::Db>,
                session: &SessionRecord,
                transfer: &NewTransfer,
                now: i64,
            ) -> Result<Option<(DenyReason, String)>, StoreError> {
                sqlx::query("UPDATE wallets SET lock_version = lock_version + 1 WHERE id = $1")
                    .bind(&session.wallet_id)
                    .execute(&mut **tx)
                    .await?;
                for cap in &transfer.caps {
                    let since = now.saturating_sub(cap.period_ms);
                    let rows = sqlx::query(
                        "SELECT amount FROM transfers WHERE wallet_id = $1 \
                         AND state IN ('pending', 'posted') AND created_at_ms >= $2 \
                         AND ($3 = 0 OR agent = $4)",
                    )
                    .bind(&session.wallet_id)
                    .bind(since)
                    .bind(i64::from(cap.agent_only))
                    .bind(&session.agent)
                    .fetch_all(&mut **tx)
                    .await?;
                    let mut total = transfer.amount;
                    for row in &rows {
                        let text: String = row.try_get("amount")?;
                        total = total
                            .checked_add(amount(&text, "transfers.amount")?)
                            .ok_or_else(|| StoreError::Corrupt("window total overflows".into()))?;
                    }
                    if total > cap.max {
                        return Ok(Some((
                            DenyReason::WindowCapExceeded,
                            format!(
                                "paying {} would bring {} to {total} within the window, above the cap {} ({})",
                                transfer.amount,
                                if cap.agent_only { "the agent" } else { "the wallet" },
                                cap.max,
                                cap.label
                            ),
                        )));
                    }
                }
                Ok(None)
            }

            /// Moves a pending transfer to `to` (posted or voided), exactly once.
            async fn resolve(
                &self,
                transfer_id: &str,
                to: TransferState,
                tx_hash: Option<&str>,
                reason: Option<&str>,
            ) -> Result<bool, StoreError> {
                debug_assert!(to != TransferState::Pending);
                let pool = self.ready().await?;
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE transfers SET state = $2, tx_hash = COALESCE($3, tx_hash), \
                     void_reason = $4, resolved_at_ms = $5 WHERE id = $1 AND state = 'pending'",
                )
                .bind(transfer_id)
                .bind(to.as_str())
                .bind(tx_hash.map(str::to_ascii_lowercase))
                .bind(reason.map(str::to_string))
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1"
                )))
                .bind(transfer_id)
                .fetch_one(&mut *tx)
                .await?;
                let transfer = transfer_from_row(&row)?;
                let Some((session, _grant)) = Self::lock_session(&mut tx, &transfer.session_id).await?
                else {
                    return Err(StoreError::Corrupt(format!(
                        "transfer {transfer_id} names missing session {}",
                        transfer.session_id
                    )));
                };
                let reserved = session.reserved.checked_sub(transfer.amount).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "session {} reserves {} but transfer {transfer_id} holds {}",
                        session.id, session.reserved, transfer.amount
                    ))
                })?;
                let posted = if to == TransferState::Posted {
                    session
                        .posted
                        .checked_add(transfer.amount)
                        .ok_or_else(|| StoreError::Corrupt("posted total overflows".into()))?
                } else {
                    session.posted
                };
                Self::set_totals(&mut tx, &session.id, reserved, posted).await?;
                let kind = if to == TransferState::Posted {
                    EntryKind::Post
                } else {
                    EntryKind::Void
                };
                Self::write_entry(
                    &mut tx,
                    kind,
                    Some(&transfer),
                    None,
                    Some(transfer.amount),
                    Some(&transfer.payee),
                    Some(&transfer.resource),
                    transfer.tx_hash.as_deref(),
                    reason,
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }
        }

        #[async_trait::async_trait]
        impl RuntimeStore for $store {
            async fn create_wallet(
                &self,
                wallet: NewWallet,
            ) -> Result<Created<WalletRecord>, StoreError> {
                check_name("wallet name", &wallet.name)?;
                check_idempotency_key(wallet.idempotency_key.as_deref())?;
                let pool = self.ready().await?;
                let address = wallet.address.to_ascii_lowercase();
                let digest = request_digest(&[&wallet.name, &address]);
                let record = WalletRecord {
                    id: new_id("wal_"),
                    name: wallet.name.clone(),
                    address: address.clone(),
                    keystore: wallet.keystore.clone(),
                    created_at_ms: now_ms(),
                };
                let inserted = sqlx::query(
                    "INSERT INTO wallets (id, name, address, keystore, idempotency_key, \
                     request_digest, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&record.id)
                .bind(&record.name)
                .bind(&record.address)
                .bind(&record.keystore)
                .bind(wallet.idempotency_key.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms)
                .execute(pool)
                .await;
                match inserted {
                    Ok(_) => Ok(Created::New(record)),
                    Err(error) if is_unique_violation(&error) => {
                        if let Some(key) = &wallet.idempotency_key {
                            let row = sqlx::query(AssertSqlSafe(format!(
                                "SELECT {WALLET_COLUMNS}, request_digest FROM wallets \
                                 WHERE idempotency_key = $1"
                            )))
                            .bind(key)
                            .fetch_optional(pool)
                            .await?;
                            if let Some(row) = row {
                                let stored: String = row.try_get("request_digest")?;
                                if stored == digest {
                                    return Ok(Created::Existing(wallet_from_row(&row)?));
                                }
                                return Err(StoreError::Conflict(
                                    "this idempotency key was used to create another wallet"
                                        .into(),
                                ));
                            }
                        }
                        Err(StoreError::Conflict(format!(
                            "a wallet named {:?} or with address {address} already exists",
                            wallet.name
                        )))
                    }
                    Err(error) => Err(error.into()),
                }
            }

            async fn wallet(
                &self,
                id_name_or_address: &str,
            ) -> Result<Option<WalletRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {WALLET_COLUMNS} FROM wallets \
                     WHERE id = $1 OR name = $1 OR address = $2"
                )))
                .bind(id_name_or_address)
                .bind(id_name_or_address.to_ascii_lowercase())
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(wallet_from_row).transpose()
            }

            async fn wallets(&self) -> Result<Vec<WalletRecord>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {WALLET_COLUMNS} FROM wallets ORDER BY created_at_ms, id LIMIT {LIST_ROWS_MAX}"
                )))
                .fetch_all(pool)
                .await?;
                rows.iter().map(wallet_from_row).collect()
            }

            async fn create_grant(
                &self,
                grant: NewGrant,
            ) -> Result<Created<GrantRecord>, StoreError> {
                check_name("agent name", &grant.agent)?;
                check_idempotency_key(grant.idempotency_key.as_deref())?;
                let pool = self.ready().await?;
                let digest = request_digest(&[&grant.wallet_id, &grant.agent, &grant.request]);
                if let Some(key) = &grant.idempotency_key {
                    let row = sqlx::query(AssertSqlSafe(format!(
                        "SELECT {GRANT_COLUMNS}, request_digest FROM grants WHERE idempotency_key = $1"
                    )))
                    .bind(key)
                    .fetch_optional(pool)
                    .await?;
                    if let Some(row) = row {
                        let stored: String = row.try_get("request_digest")?;
                        if stored == digest {
                            return Ok(Created::Existing(grant_from_row(&row)?));
                        }
                        return Err(StoreError::Conflict(
                            "this idempotency key was used to create another grant".into(),
                        ));
                    }
                }
                let exists = sqlx::query("SELECT id FROM wallets WHERE id = $1")
                    .bind(&grant.wallet_id)
                    .fetch_optional(pool)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("wallet {}", grant.wallet_id)));
                }
                let now = now_ms();
                if grant.expires_at_ms <= now {
                    return Err(StoreError::Invalid("a grant must expire in the future".into()));
                }
                let record = GrantRecord {
                    id: new_id("grt_"),
                    wallet_id: grant.wallet_id.clone(),
                    agent: grant.agent.clone(),
                    created_at_ms: now,
                    expires_at_ms: grant.expires_at_ms,
                    revoked_at_ms: None,
                    revoke_reason: None,
                };
                let inserted = sqlx::query(
                    "INSERT INTO grants (id, wallet_id, agent, idempotency_key, request_digest, \
                     created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&record.id)
                .bind(&record.wallet_id)
                .bind(&record.agent)
                .bind(grant.idempotency_key.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms)
                .bind(record.expires_at_ms)
                .execute(pool)
                .await;
                match inserted {
                    Ok(_) => Ok(Created::New(record)),
                    // A concurrent create with the same key won; answer as it would.
                    Err(error) if is_unique_violation(&error) => Box::pin(self.create_grant(grant)).await,
                    Err(error) => Err(error.into()),
                }
            }

            async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(grant_from_row).transpose()
            }

            async fn grants(&self, wallet_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE ($1 IS NULL OR wallet_id = $1) \
                     ORDER BY created_at_ms DESC, id LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(wallet_id)
                .fetch_all(pool)
                .await?;
                rows.iter().map(grant_from_row).collect()
            }

            async fn revoke_grant(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3 \
                     WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .bind(reason)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn revoke_all_grants(
                &self,
                wallet_id: Option<&str>,
                reason: &str,
            ) -> Result<u64, StoreError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3 \
                     WHERE revoked_at_ms IS NULL AND ($1 IS NULL OR wallet_id = $1)",
                )
                .bind(wallet_id)
                .bind(now_ms())
                .bind(reason)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated)
            }

            async fn create_session(
                &self,
                session: NewSession,
            ) -> Result<Created<SessionRecord>, StoreError> {
                check_idempotency_key(session.client_token.as_deref())?;
                let pool = self.ready().await?;
                let digest = request_digest(&[
                    &session.grant_id,
                    &session.network,
                    &session.asset.to_ascii_lowercase(),
                    &session.currency,
                    &session.max_spend.to_string(),
                    &session.request,
                ]);
                if let Some(token) = &session.client_token {
                    let row = sqlx::query(AssertSqlSafe(format!(
                        "SELECT {SESSION_COLUMNS}, request_digest FROM sessions \
                         WHERE grant_id = $1 AND client_token = $2"
                    )))
                    .bind(&session.grant_id)
                    .bind(token)
                    .fetch_optional(pool)
                    .await?;
                    if let Some(row) = row {
                        let stored: String = row.try_get("request_digest")?;
                        if stored == digest {
                            return Ok(Created::Existing(session_from_row(&row)?));
                        }
                        return Err(StoreError::Conflict(
                            "this client token was used to create another session".into(),
                        ));
                    }
                }
                let Some(grant) = self.grant(&session.grant_id).await? else {
                    return Err(StoreError::NotFound(format!("grant {}", session.grant_id)));
                };
                let now = now_ms();
                if grant.revoked_at_ms.is_some() {
                    return Err(StoreError::Invalid(format!("grant {} is revoked", grant.id)));
                }
                if now >= grant.expires_at_ms {
                    return Err(StoreError::Invalid(format!("grant {} has expired", grant.id)));
                }
                if session.expires_at_ms <= now {
                    return Err(StoreError::Invalid("a session must expire in the future".into()));
                }
                let record = SessionRecord {
                    id: new_id("ses_"),
                    grant_id: grant.id.clone(),
                    wallet_id: grant.wallet_id.clone(),
                    agent: grant.agent.clone(),
                    network: session.network.clone(),
                    asset: session.asset.to_ascii_lowercase(),
                    currency: session.currency.clone(),
                    max_spend: session.max_spend,
                    reserved: Amount::ZERO,
                    posted: Amount::ZERO,
                    client_token: session.client_token.clone(),
                    created_at_ms: now,
                    // A session never outlives its grant.
                    expires_at_ms: session.expires_at_ms.min(grant.expires_at_ms),
                    closed_at_ms: None,
                };
                let inserted = sqlx::query(
                    "INSERT INTO sessions (id, grant_id, wallet_id, agent, network, asset, currency, \
                     max_spend, reserved, posted, client_token, request_digest, created_at_ms, \
                     expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&record.id)
                .bind(&record.grant_id)
                .bind(&record.wallet_id)
                .bind(&record.agent)
                .bind(&record.network)
                .bind(&record.asset)
                .bind(&record.currency)
                .bind(record.max_spend.to_string())
                .bind(record.reserved.to_string())
                .bind(record.posted.to_string())
                .bind(record.client_token.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms)
                .bind(record.expires_at_ms)
                .execute(pool)
                .await;
                match inserted {
                    Ok(_) => Ok(Created::New(record)),
                    Err(error) if is_unique_violation(&error) => {
                        Box::pin(self.create_session(session)).await
                    }
                    Err(error) => Err(error.into()),
                }
            }

            async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(session_from_row).transpose()
            }

            async fn sessions(
                &self,
                grant_id: Option<&str>,
            ) -> Result<Vec<SessionRecord>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE ($1 IS NULL OR grant_id = $1) \
                     ORDER BY created_at_ms DESC, id LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(grant_id)
                .fetch_all(pool)
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            async fn close_session(&self, id: &str) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE sessions SET closed_at_ms = $2 WHERE id = $1 AND closed_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn reserve(&self, transfer: NewTransfer) -> Result<Reservation, StoreError> {
                self.reserve_with(transfer, None).await
            }

            async fn reserve_and_decide(
                &self,
                transfer: NewTransfer,
                decision: crate::decisions::NewDecision,
            ) -> Result<Reservation, StoreError> {
                let decision = crate::decisions::prepare(decision)?;
                self.reserve_with(transfer, Some(decision)).await
            }

            async fn deny(&self, denial: Denial) -> Result<(), StoreError> {
                let pool = self.ready().await?;
                let session = match &denial.session_id {
                    Some(id) => self.session(id).await?,
                    None => None,
                };
                let mut tx = pool.begin().await?;
                Self::write_entry(
                    &mut tx,
                    EntryKind::Deny,
                    None,
                    session.as_ref(),
                    denial.amount,
                    denial.payee.as_deref(),
                    denial.resource.as_deref(),
                    None,
                    Some(&format!("{}: {}", denial.reason, denial.message)),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn note_tx_hash(&self, transfer_id: &str, tx_hash: &str) -> Result<(), StoreError> {
                let pool = self.ready().await?;
                sqlx::query(
                    "UPDATE transfers SET tx_hash = $2 WHERE id = $1 AND state = 'pending'",
                )
                .bind(transfer_id)
                .bind(tx_hash.to_ascii_lowercase())
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn post(&self, transfer_id: &str, tx_hash: Option<&str>) -> Result<bool, StoreError> {
                self.resolve(transfer_id, TransferState::Posted, tx_hash, None).await
            }

            async fn void(&self, transfer_id: &str, reason: &str) -> Result<bool, StoreError> {
                self.resolve(transfer_id, TransferState::Voided, None, Some(reason)).await
            }

            async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(transfer_from_row).transpose()
            }

            async fn pending_transfers(
                &self,
                limit: usize,
            ) -> Result<Vec<TransferRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = limit.min(LIST_ROWS_MAX);
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE state = 'pending' \
                     ORDER BY created_at_ms, id LIMIT {limit}"
                )))
                .fetch_all(pool)
                .await?;
                rows.iter().map(transfer_from_row).collect()
            }

            async fn transfers_page(
                &self,
                session_id: Option<&str>,
                after: Option<(i64, &str)>,
                limit: usize,
            ) -> Result<Vec<TransferRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = limit.min(LIST_ROWS_MAX);
                let (after_ms, after_id) = match after {
                    Some((ms, id)) => (Some(ms), Some(id)),
                    None => (None, None),
                };
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers \
                     WHERE ($1 IS NULL OR session_id = $1) \
                     AND ($2 IS NULL OR created_at_ms > $2 OR (created_at_ms = $2 AND id > $3)) \
                     ORDER BY created_at_ms, id LIMIT {limit}"
                )))
                .bind(session_id)
                .bind(after_ms)
                .bind(after_id)
                .fetch_all(pool)
                .await?;
                rows.iter().map(transfer_from_row).collect()
            }

            async fn endpoint_payments(
                &self,
                session_id: &str,
                endpoint: &str,
                since_ms: i64,
            ) -> Result<EndpointPayments, StoreError> {
                let pool = self.ready().await?;
                let endpoint = truncate(endpoint, RESOURCE_BYTES_MAX);
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM transfers \
                     WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided'",
                )
                .bind(session_id)
                .bind(&endpoint)
                .fetch_one(pool)
                .await?;
                if count == 0 {
                    return Ok(EndpointPayments::default());
                }
                let first = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers \
                     WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided' \
                     ORDER BY created_at_ms, id LIMIT 1"
                )))
                .bind(session_id)
                .bind(&endpoint)
                .fetch_optional(pool)
                .await?;
                let recent_at_ms: Vec<i64> = sqlx::query_scalar(
                    "SELECT created_at_ms FROM transfers \
                     WHERE session_id = $1 AND endpoint = $2 AND state <> 'voided' \
                     AND created_at_ms >= $3 ORDER BY created_at_ms",
                )
                .bind(session_id)
                .bind(&endpoint)
                .bind(since_ms)
                .fetch_all(pool)
                .await?;
                Ok(EndpointPayments {
                    count: u64::try_from(count).unwrap_or_default(),
                    first: first.as_ref().map(transfer_from_row).transpose()?,
                    recent_at_ms,
                })
            }

            async fn entries(&self, after: i64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
                let pool = self.ready().await?;
                let limit = limit.min(LIST_ROWS_MAX);
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq > $1 \
                     ORDER BY seq LIMIT {limit}"
                )))
                .bind(after)
                .fetch_all(pool)
                .await?;
                rows.iter().map(entry_from_row).collect()
            }

            async fn create_operator_key(&self, name: &str) -> Result<NewOperatorKey, StoreError> {
                check_name("operator key name", name)?;
                let pool = self.ready().await?;
                let key = format!("{OPERATOR_KEY_PREFIX}{}", random_hex(OPERATOR_KEY_SECRET_BYTES));
                let record = OperatorKeyRecord {
                    id: new_id("opk_"),
                    name: name.to_string(),
                    created_at_ms: now_ms(),
                    revoked_at_ms: None,
                };
                sqlx::query(
                    "INSERT INTO operator_keys (id, name, digest, created_at_ms) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&record.id)
                .bind(&record.name)
                .bind(KeyDigest::of(&key).to_hex())
                .bind(record.created_at_ms)
                .execute(pool)
                .await?;
                Ok(NewOperatorKey { record, key })
            }

            async fn operator_key(
                &self,
                digest: &KeyDigest,
            ) -> Result<Option<OperatorKeyRecord>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(
                    "SELECT id, name, digest, created_at_ms, revoked_at_ms FROM operator_keys \
                     WHERE digest = $1 AND revoked_at_ms IS NULL",
                )
                .bind(digest.to_hex())
                .fetch_optional(pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let stored: String = row.try_get("digest")?;
                if !KeyDigest::from_hex(&stored).is_some_and(|stored| stored.constant_time_eq(digest)) {
                    return Ok(None);
                }
                operator_key_from_row(&row).map(Some)
            }

            async fn operator_keys(&self) -> Result<Vec<OperatorKeyRecord>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(
                    "SELECT id, name, created_at_ms, revoked_at_ms FROM operator_keys \
                     ORDER BY created_at_ms, id",
                )
                .fetch_all(pool)
                .await?;
                rows.iter().map(operator_key_from_row).collect()
            }

            async fn revoke_operator_key(&self, id: &str) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE operator_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn policy(
                &self,
                scope: &str,
                subject_id: &str,
            ) -> Result<Option<String>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(
                    "SELECT document FROM policies WHERE scope = $1 AND subject_id = $2",
                )
                .bind(scope)
                .bind(subject_id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(|row| row.try_get("document")).transpose()?)
            }

            async fn put_policy(
                &self,
                scope: &str,
                subject_id: &str,
                document: &str,
            ) -> Result<(), StoreError> {
                if !matches!(scope, "wallet" | "grant" | "session") {
                    return Err(StoreError::Invalid(format!("policy scope {scope:?}")));
                }
                let pool = self.ready().await?;
                sqlx::query(
                    "INSERT INTO policies (scope, subject_id, document, updated_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (scope, subject_id) \
                     DO UPDATE SET document = $3, updated_at_ms = $4",
                )
                .bind(scope)
                .bind(subject_id)
                .bind(document)
                .bind(now_ms())
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn delete_policy(&self, scope: &str, subject_id: &str) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let deleted = sqlx::query("DELETE FROM policies WHERE scope = $1 AND subject_id = $2")
                    .bind(scope)
                    .bind(subject_id)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(deleted == 1)
            }

            async fn record_validation(
                &self,
                policy: &str,
                endpoint: &str,
                observed: Observed<'_>,
                failure: Option<&str>,
                pause_after: u64,
                cooldown_ms: i64,
            ) -> Result<EndpointHealth, StoreError> {
                let pool = self.ready().await?;
                let now = now_ms();
                // One statement: the row is created or updated and read back atomically.
                let row = match failure {
                    None => sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO endpoint_pauses (policy, endpoint, consecutive_failures, \
                         updated_at_ms, wallet_id, session_id) VALUES ($1, $2, 0, $3, $4, $5) \
                         ON CONFLICT (policy, endpoint) DO UPDATE SET consecutive_failures = 0, \
                         updated_at_ms = $3, wallet_id = $4, session_id = $5 \
                         RETURNING {PAUSE_COLUMNS}"
                    )))
                    .bind(policy)
                    .bind(endpoint)
                    .bind(now)
                    .bind(observed.wallet_id)
                    .bind(observed.session_id)
                    .fetch_one(pool)
                    .await?,
                    Some(reason) => sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO endpoint_pauses (policy, endpoint, consecutive_failures, \
                         last_failure, updated_at_ms, wallet_id, session_id, paused_until_ms) \
                         VALUES ($1, $2, 1, $3, $4, $5, $6, CASE WHEN 1 >= $8 THEN $7 END) \
                         ON CONFLICT (policy, endpoint) DO UPDATE SET \
                         consecutive_failures = endpoint_pauses.consecutive_failures + 1, \
                         last_failure = $3, updated_at_ms = $4, wallet_id = $5, session_id = $6, \
                         paused_until_ms = CASE \
                         WHEN endpoint_pauses.consecutive_failures + 1 >= $8 THEN $7 \
                         ELSE endpoint_pauses.paused_until_ms END \
                         RETURNING {PAUSE_COLUMNS}"
                    )))
                    .bind(policy)
                    .bind(endpoint)
                    .bind(truncate(reason, RESOURCE_BYTES_MAX))
                    .bind(now)
                    .bind(observed.wallet_id)
                    .bind(observed.session_id)
                    .bind(now.saturating_add(cooldown_ms))
                    .bind(i64::try_from(pause_after.max(1)).unwrap_or(i64::MAX))
                    .fetch_one(pool)
                    .await?,
                };
                health_from_row(&row)
            }

            async fn endpoint_health(
                &self,
                policy: &str,
                endpoint: &str,
            ) -> Result<Option<EndpointHealth>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses WHERE policy = $1 AND endpoint = $2"
                )))
                .bind(policy)
                .bind(endpoint)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(health_from_row).transpose()
            }

            async fn endpoint_pauses(
                &self,
                policies: &[String],
                endpoint: &str,
            ) -> Result<Vec<EndpointHealth>, StoreError> {
                let policies = &policies[..policies.len().min(POLICIES_PER_QUERY_MAX)];
                if policies.is_empty() {
                    return Ok(Vec::new());
                }
                let pool = self.ready().await?;
                // Placeholders only: the policies are bound, never written into the statement.
                let placeholders: Vec<String> =
                    (3..3 + policies.len()).map(|n| format!("${n}")).collect();
                let statement = format!(
                    "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses WHERE endpoint = $1 \
                     AND paused_until_ms > $2 AND policy IN ({}) ORDER BY policy",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(AssertSqlSafe(statement))
                    .bind(endpoint)
                    .bind(now_ms());
                for policy in policies {
                    query = query.bind(policy);
                }
                let rows = query.fetch_all(pool).await?;
                rows.iter().map(health_from_row).collect()
            }

            async fn paused_endpoints(
                &self,
                policy: Option<&str>,
            ) -> Result<Vec<EndpointHealth>, StoreError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses WHERE paused_until_ms > $1 \
                     AND ($2 IS NULL OR policy = $2) ORDER BY updated_at_ms LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(now_ms())
                .bind(policy)
                .fetch_all(pool)
                .await?;
                rows.iter().map(health_from_row).collect()
            }

            async fn lift_pause(&self, policy: &str, endpoint: &str) -> Result<bool, StoreError> {
                let pool = self.ready().await?;
                let now = now_ms();
                let updated = sqlx::query(
                    "UPDATE endpoint_pauses SET paused_until_ms = NULL, consecutive_failures = 0, \
                     updated_at_ms = $3 WHERE policy = $1 AND endpoint = $2 AND paused_until_ms > $3",
                )
                .bind(policy)
                .bind(endpoint)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn note_rejection(
                &self,
                session_id: &str,
                endpoint: &str,
                at_ms: i64,
            ) -> Result<Rejections, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(
                    "INSERT INTO endpoint_rejections (session_id, endpoint, rejections, last_rejection_ms) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (session_id, endpoint) DO UPDATE SET \
                     rejections = endpoint_rejections.rejections + 1, \
                     last_rejection_ms = CASE WHEN endpoint_rejections.last_rejection_ms > excluded.last_rejection_ms \
                     THEN endpoint_rejections.last_rejection_ms ELSE excluded.last_rejection_ms END \
                     RETURNING rejections, last_rejection_ms",
                )
                .bind(session_id)
                .bind(endpoint)
                .bind(at_ms)
                .fetch_one(pool)
                .await?;
                rejections_from_row(&row)
            }

            async fn clear_rejections(&self, session_id: &str, endpoint: &str) -> Result<(), StoreError> {
                let pool = self.ready().await?;
                sqlx::query("DELETE FROM endpoint_rejections WHERE session_id = $1 AND endpoint = $2")
                    .bind(session_id)
                    .bind(endpoint)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            async fn rejections(
                &self,
                session_id: &str,
                endpoint: &str,
            ) -> Result<Option<Rejections>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query(
                    "SELECT rejections, last_rejection_ms FROM endpoint_rejections \
                     WHERE session_id = $1 AND endpoint = $2",
                )
                .bind(session_id)
                .bind(endpoint)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(rejections_from_row).transpose()
            }

            fn decision_store(&self) -> std::sync::Arc<dyn crate::decisions::DecisionStore> {
                std::sync::Arc::new(self.clone())
            }

            fn compensation_store(
                &self,
            ) -> std::sync::Arc<dyn crate::compensation::CompensationStore> {
                std::sync::Arc::new(self.clone())
            }

            fn alert_store(&self) -> std::sync::Arc<dyn crate::alerts::AlertStore> {
                std::sync::Arc::new(self.clone())
            }

            async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
                let pool = self.ready().await?;
                let row = sqlx::query("SELECT value FROM runtime_meta WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(|row| row.try_get("value")).transpose()?)
            }

            async fn put_meta_if_absent(&self, name: &str, value: &str) -> Result<String, StoreError> {
                let pool = self.ready().await?;
                sqlx::query(
                    "INSERT INTO runtime_meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .execute(pool)
                .await?;
                self.meta(name)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("runtime setting {name} vanished")))
            }
        }
    };
}

/// The sqlx database type behind a store handle.
pub(crate) trait StoreDb {
    type Db: sqlx::Database;
}

impl StoreDb for SqliteLedger {
    type Db = sqlx::Sqlite;
}

impl StoreDb for PostgresLedger {
    type Db = sqlx::Postgres;
}

runtime_store_impl!(SqliteLedger);
runtime_store_impl!(PostgresLedger);
