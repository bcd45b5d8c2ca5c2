//! # bursar-store
//!
//! Bursar's database, on SQLite ([`SqliteDatabase`]) or PostgreSQL ([`PostgresDatabase`]): the
//! facilitator's settlement ledger, the runtime's store ([`runtime`]: wallets, grants, sessions,
//! transfers and the runtime ledger of their entries) and the stores below, in one schema.
//!
//! The facilitator's settlement ledger: one row per EIP-3009 authorization it has taken on, so
//! that a duplicate `/settle` gets the original outcome even after a restart, a settlement that
//! was broadcast when the process died can be finished later, and several facilitator processes
//! sharing one database never settle one authorization twice.
//!
//! - [`SettlementLedger`] is the seam; [`SqliteDatabase`] and [`PostgresDatabase`] implement it, and
//!   [`open`] picks one from a URL (`sqlite://path?mode=rwc`, `sqlite::memory:`,
//!   `postgres://...`).
//! - A row is keyed by [`SettlementKey`] (network, asset, payer, nonce). The table's UNIQUE constraint
//!   on that key is the arbiter of [`SettlementLedger::claim`]: `INSERT ... ON CONFLICT DO
//!   NOTHING`, then read. Whoever inserted the row owns the settlement.
//! - States move one way: `received` → `submitted` → `confirmed` | `failed`; a `received` row
//!   refused before anything was broadcast is deleted ([`SettlementLedger::release`]) so the payer
//!   may try again. The one way back: a `failed` row becomes `confirmed` when the chain shows the
//!   payment made after all ([`SettlementLedger::correct_to_paid`]).
//! - Every row names its holder, the facilitator process that claimed it. Only the holder records
//!   a transaction, and it records it (hash, sending account and account nonce) before the
//!   broadcast, so a row still `received` was never broadcast: a claim whose holder died can be
//!   taken over ([`SettlementLedger::take_over`]) or released at once.
//! - [`KeyStore`] (same implementations, same database, [`open_key_store`]) holds the
//!   facilitator's API keys: per seller, stored only as SHA-256 digests, revocable, each with a
//!   rate limit and an optional daily settlement quota.
//! - [`DecisionStore`] (same implementations, [`open_decision_store`]) is the runtime's
//!   decision trace: every allow and deny with the rules that ran, hash-chained so an edit is
//!   detectable; see [`decisions`].
//! - [`AlertStore`] (reached with `RuntimeStore::alert_store`) records budget alerts exactly
//!   once per budget and threshold, with their ledger entries, and is the outbox of their
//!   webhook deliveries; see [`alerts`].
//! - Migrations are embedded per backend (`migrations/sqlite`, `migrations/postgres`) and run by
//!   [`open`]. Committed migrations are never edited; changes are new files.
//!
//! ## Features
//! - `testkit`: [`testkit`] helpers for tests: a temporary SQLite file and a fresh PostgreSQL
//!   database per test.

pub mod alerts;
pub mod catalog;
mod common;
pub mod compensation;
mod db;
pub mod decisions;
mod keys;
pub mod runtime;
mod sql;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256};
use bursar_protocol::{Amount, Network, SettleResponse};

pub use alerts::{AlertRecord, AlertStore, AttemptOutcome, DeliveryState, NewAlert};
pub use catalog::{CatalogStore, open_catalog_store};
pub use common::StoreError;
pub use compensation::{
    CompensationOutcome, CompensationRecord, CompensationStore, EvidenceRecord, NewCompensation,
    NewEvidence,
};
pub use decisions::{ChainCheck, DecisionRecord, DecisionStore, NewDecision, open_decision_store};
pub use keys::{
    API_KEY_PREFIX, API_KEY_SECRET_BYTES, ApiKeyRecord, KeyDigest, KeyError, KeyLimits, KeyStore,
    NewApiKey, SELLER_NAME_BYTES_MAX, open_key_store,
};
pub use runtime::{RuntimeStore, SqlRuntimeStore, open_runtime_store};
pub use sql::{PostgresDatabase, SqliteDatabase};

/// Connections in a SQLite file ledger's pool (SQLite serializes writers anyway).
pub const SQLITE_POOL_CONNECTIONS_MAX: u32 = 4;
/// Connections in a PostgreSQL ledger's pool.
pub const POSTGRES_POOL_CONNECTIONS_MAX: u32 = 8;
/// How long a SQLite writer waits for the database lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection.
pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times [`SettlementLedger::claim`] retries when the row it collided with is released
/// before it could be read.
pub const CLAIM_ATTEMPTS_MAX: usize = 16;

/// One EIP-3009 authorization, as the settlement ledger identifies it: the token's network and
/// address, the payer, and the authorization nonce.
///
/// Stored as CAIP-2 and lowercase 0x hex, so one authorization has one row however its addresses
/// were spelled; a stored key that does not read back is a corrupt row ([`DatabaseError::CorruptKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SettlementKey {
    network: Network,
    asset: Address,
    payer: Address,
    nonce: B256,
}

impl SettlementKey {
    pub fn new(network: Network, asset: Address, payer: Address, nonce: B256) -> Self {
        SettlementKey {
            network,
            asset,
            payer,
            nonce,
        }
    }

    /// Reads a key from text (CAIP-2 or a v1 network name, 0x hex in any case); a part that does
    /// not parse is a [`DatabaseError::CorruptKey`].
    pub fn parse(
        network: &str,
        asset: &str,
        payer: &str,
        nonce: &str,
    ) -> Result<Self, DatabaseError> {
        let corrupt = |message: String| DatabaseError::CorruptKey {
            key: format!("{network}/{asset}/{payer}/{nonce}"),
            message,
        };
        let network = Network::parse(network).map_err(|error| corrupt(error.to_string()))?;
        let address = |part: &str, text: &str| {
            text.parse::<Address>()
                .map_err(|_| corrupt(format!("{part} is not an address")))
        };
        let asset = address("asset", asset)?;
        let payer = address("payer", payer)?;
        let nonce = nonce
            .parse::<B256>()
            .map_err(|_| corrupt("nonce is not 32 bytes of hex".into()))?;
        Ok(SettlementKey::new(network, asset, payer, nonce))
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The token.
    pub fn asset(&self) -> Address {
        self.asset
    }

    pub fn payer(&self) -> Address {
        self.payer
    }

    pub fn nonce(&self) -> B256 {
        self.nonce
    }
}

impl std::fmt::Display for SettlementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{:#x}/{:#x}/{}",
            self.network.caip2(),
            self.asset,
            self.payer,
            self.nonce
        )
    }
}

/// Where a settlement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettlementState {
    /// Claimed by a facilitator; nothing broadcast yet (or the process died before recording it).
    Received,
    /// A transaction was broadcast; its hash is recorded, its receipt not yet seen.
    Submitted,
    /// Mined and successful. Final.
    Confirmed,
    /// Mined and reverted, or given up on. Final.
    Failed,
}

impl SettlementState {
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementState::Received => "received",
            SettlementState::Submitted => "submitted",
            SettlementState::Confirmed => "confirmed",
            SettlementState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<SettlementState> {
        match text {
            "received" => Some(SettlementState::Received),
            "submitted" => Some(SettlementState::Submitted),
            "confirmed" => Some(SettlementState::Confirmed),
            "failed" => Some(SettlementState::Failed),
            _ => None,
        }
    }

    /// Confirmed or failed: nothing will change it any more.
    pub fn is_final(self) -> bool {
        matches!(self, SettlementState::Confirmed | SettlementState::Failed)
    }
}

impl std::fmt::Display for SettlementState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who claims an authorization, for which payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The payment (see the facilitator's `payment_fingerprint`): a different one holding the
    /// same authorization is another payment reusing the nonce.
    pub fingerprint: B256,
    /// The facilitator process claiming it (`<instance>/<life>`). Only the holder records a
    /// broadcast or releases the claim.
    pub holder: String,
    /// The client's x402 `payment-identifier`, already validated with [`valid_payment_id`].
    pub payment_id: Option<String>,
    /// The payee and amount the payment names: what a transfer found on chain is checked against
    /// when the request is not at hand (recovery).
    pub pay_to: Address,
    pub amount: Amount,
}

/// The outcome of [`SettlementLedger::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller inserted the row (as `received`) and owns the settlement.
    Claimed,
    /// Someone already holds this authorization: the row as it stands. A different
    /// fingerprint is another payment reusing the nonce.
    Existing(Box<SettlementRecord>),
    /// The x402 `payment-identifier` is already taken by another authorization or another
    /// payload: a conflict (HTTP 409 in the extension). Nothing was inserted.
    PaymentIdConflict {
        /// The authorization that holds the id.
        held_by: SettlementKey,
    },
}

/// What [`SettlementLedger::mark_submitted`] records about a transaction, before it is broadcast.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The transaction's hash.
    pub tx_hash: B256,
    /// The account that signed it and the account nonce it carries: if the chain has no receipt
    /// and the account's nonce has not reached this one, the transaction never reached the chain.
    pub sender: Address,
    pub sender_nonce: u64,
    /// The authorization's `validBefore` (unix seconds): after it, an unmined transaction can
    /// never succeed. Used by recovery.
    pub valid_before_s: u64,
    /// The response to give if the transaction is mined successfully.
    pub pending_response: SettleResponse,
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct SettlementRecord {
    pub key: SettlementKey,
    pub fingerprint: B256,
    pub state: SettlementState,
    pub tx_hash: Option<B256>,
    pub valid_before_s: Option<u64>,
    /// The recorded response: final once `confirmed`/`failed`; while `submitted`, the response
    /// the settlement will give if its transaction succeeds.
    pub response: Option<SettleResponse>,
    pub error_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The x402 `payment-identifier` the client sent, if any.
    pub payment_id: Option<String>,
    /// The process holding the claim ([`Claimant::holder`]); `None` on rows written before
    /// holders were recorded.
    pub holder: Option<String>,
    /// The account and account nonce of the recorded transaction ([`Submission`]).
    pub sender: Option<Address>,
    pub sender_nonce: Option<u64>,
    /// What the payment pays ([`Claimant`]); `None` on rows written before it was recorded.
    pub pay_to: Option<Address>,
    pub amount: Option<Amount>,
}

/// The shortest and longest x402 `payment-identifier` accepted, in characters.
pub const PAYMENT_ID_CHARS_MIN: usize = 16;
pub const PAYMENT_ID_CHARS_MAX: usize = 128;

/// Whether `id` is an acceptable `payment-identifier`: 16 to 128 characters from `A-Z a-z 0-9 _ -`.
pub fn valid_payment_id(id: &str) -> bool {
    (PAYMENT_ID_CHARS_MIN..=PAYMENT_ID_CHARS_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Failures of Bursar's database (opening and migrating it) and of the settlement ledger in it.
/// Operating errors, to be reported, never asserted away.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported database url {url:?}: expected sqlite://path, sqlite::memory: or postgres://"
    )]
    UnsupportedUrl { url: String },
    #[error("settlement {key} cannot move to {to}: {reason}")]
    Transition {
        key: SettlementKey,
        to: SettlementState,
        reason: String,
    },
    #[error("settlement {key} was claimed and released {attempts} times while claiming it")]
    ClaimContended { key: SettlementKey, attempts: usize },
    #[error("corrupt ledger row {key}: {message}")]
    Corrupt { key: SettlementKey, message: String },
    #[error("corrupt ledger row key {key:?}: {message}")]
    CorruptKey { key: String, message: String },
}

/// The settlement ledger. Implementations must make [`claim`](Self::claim) atomic across
/// processes sharing the database.
#[async_trait::async_trait]
pub trait SettlementLedger: Send + Sync + 'static {
    /// Takes the authorization `key` for `claimant`: [`Claim::Claimed`] if no row existed (one is
    /// inserted as `received`, held by `claimant.holder`), else what the existing row says.
    ///
    /// With a `payment_id`, the id names one payment forever: if a row holds it for another
    /// authorization or another fingerprint the answer is [`Claim::PaymentIdConflict`] and
    /// nothing is inserted; if a row holds it for this same payment, the answer is that row.
    async fn claim(&self, key: &SettlementKey, claimant: &Claimant)
    -> Result<Claim, DatabaseError>;

    /// Takes over a `received` claim exactly as `seen` shows it (same holder, same update time):
    /// its holder died or stalled before recording a broadcast, so nothing was broadcast for it.
    /// Returns whether `holder` now holds it; `false` when the row changed in between.
    async fn take_over(&self, seen: &SettlementRecord, holder: &str)
    -> Result<bool, DatabaseError>;

    /// The row holding `payment_id`, if any.
    async fn get_by_payment_id(
        &self,
        payment_id: &str,
    ) -> Result<Option<SettlementRecord>, DatabaseError>;

    /// `received` → `submitted` for every item of one batch transaction, atomically (all rows
    /// or none). A row already `submitted` takes the new hash: the batch was signed again after
    /// the node refused the earlier transaction's nonce, so the earlier one can never be mined.
    /// Called before the transaction is broadcast.
    /// Only rows `holder` holds move; if any does not, nothing is recorded
    /// ([`DatabaseError::Transition`] names it).
    async fn mark_batch_submitted(
        &self,
        holder: &str,
        items: &[(SettlementKey, Submission)],
    ) -> Result<(), DatabaseError>;

    /// Finishes many settlements in one database transaction. Rows already final are left as
    /// they are (another process finished them from the same receipt); returns how many changed.
    /// A confirmed outcome records its response's transaction as the row's.
    async fn finish_many(
        &self,
        items: &[(SettlementKey, SettleResponse, SettlementState)],
    ) -> Result<u64, DatabaseError>;

    /// Deletes `submitted` rows recorded with `tx_hash` when the node definitively refused that
    /// transaction (it was never broadcast), so the payers may retry. Returns how many were
    /// deleted.
    async fn release_unsent(
        &self,
        keys: &[SettlementKey],
        tx_hash: B256,
    ) -> Result<u64, DatabaseError>;

    /// `received` → `submitted`, recording the transaction before it is broadcast, so a crash
    /// at any point after is recoverable. Only the row's holder may; a row it already moved to
    /// `submitted` takes the new transaction (signed again after the node refused the earlier
    /// one's nonce, which can therefore never be mined).
    async fn mark_submitted(
        &self,
        key: &SettlementKey,
        holder: &str,
        submission: &Submission,
    ) -> Result<(), DatabaseError>;

    /// `received`/`submitted` → `confirmed`/`failed`, recording the response given to callers
    /// (and, when confirmed, its transaction as the row's).
    async fn finish(
        &self,
        key: &SettlementKey,
        response: &SettleResponse,
        state: SettlementState,
    ) -> Result<(), DatabaseError>;

    /// `failed` → `confirmed`: the chain shows the payment made after all (by a transaction the
    /// row did not know, such as one that front-ran its own). Returns whether the row changed.
    async fn correct_to_paid(
        &self,
        key: &SettlementKey,
        response: &SettleResponse,
    ) -> Result<bool, DatabaseError>;

    /// Deletes a `received` row held by `holder` (`None`: a row written without a holder), refused
    /// or abandoned before anything was broadcast, so the payer may retry. Returns whether a row
    /// was deleted; rows in any other state or held by another are left alone.
    async fn release(
        &self,
        key: &SettlementKey,
        holder: Option<&str>,
    ) -> Result<bool, DatabaseError>;

    /// Every `submitted` row, oldest first: what crash recovery must look at.
    async fn unfinished(&self) -> Result<Vec<SettlementRecord>, DatabaseError>;

    /// `received` rows created before `created_before_ms` (unix ms), oldest first: claims whose
    /// holder may have died before recording a broadcast.
    async fn received_before(
        &self,
        created_before_ms: i64,
    ) -> Result<Vec<SettlementRecord>, DatabaseError>;

    /// The row for `key`, if any.
    async fn get(&self, key: &SettlementKey) -> Result<Option<SettlementRecord>, DatabaseError>;

    /// How many rows are `received` or `submitted` (every network, every process sharing the
    /// database): settlements not finished yet. The SQL ledgers count in the database; this
    /// default reads the rows.
    async fn count_unfinished(&self) -> Result<u64, DatabaseError> {
        let submitted = self.unfinished().await?.len();
        let received = self.received_before(i64::MAX).await?.len();
        Ok(u64::try_from(submitted + received).unwrap_or(u64::MAX))
    }
}

/// Opens (creating if needed, for `sqlite://...?mode=rwc`) and migrates the ledger at `url`.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn SettlementLedger>, DatabaseError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteDatabase::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresDatabase::open(url).await?))
    } else {
        Err(DatabaseError::UnsupportedUrl { url: redact(url) })
    }
}

/// The URL of a SQLite ledger file, created on first use.
pub fn sqlite_file_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// A URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
