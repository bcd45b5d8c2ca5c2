//! The agent runtime's records: wallets, grants, payment sessions, two-phase transfers and the
//! append-only runtime ledger, plus policies, endpoint health, operator keys and settings.
//!
//! Each aggregate has its own narrow trait in its own file ([`WalletStore`], [`GrantStore`],
//! [`SessionStore`], [`TransferStore`], [`RuntimeLedger`], [`PolicyStore`], [`EndpointStore`],
//! [`OperatorKeyStore`], [`MetaStore`]); [`RuntimeStore`] is all of them together, which is
//! what the runtime holds. [`SqlRuntimeStore`] implements every one once, for SQLite and
//! PostgreSQL alike (the statements are shared; see `db.rs`). Bring the traits' methods into
//! scope with `use bursar_store::runtime::prelude::*`.
//!
//! The budget rule lives here, in one transaction per operation, so it holds across concurrent
//! requests and across processes sharing a database:
//!
//! - [`TransferStore::reserve`] locks the session row (an `UPDATE` first: a row lock on
//!   PostgreSQL, the write lock on SQLite), checks the session, its grant and its budget
//!   (`reserved + posted + amount <= max_spend`), and writes the pending transfer, its `reserve`
//!   runtime ledger entry and the new `reserved` total together. A refusal writes a `deny` entry
//!   instead.
//! - [`TransferStore::post`] and [`TransferStore::void`] move a `pending` transfer to its final
//!   state exactly once (a conditional `UPDATE ... WHERE state = 'pending'`, and a UNIQUE index on
//!   `(transfer_id, kind)` in the runtime ledger as a second check of the same rule), moving its
//!   amount from `reserved` to `posted`, or releasing it.
//! - Runtime ledger entries are never updated or deleted (triggers refuse it).
//!
//! Amounts are stored as decimal strings of atomic units and added up in Rust with
//! [`Amount`](bursar_protocol::Amount)'s checked arithmetic, so no database integer limit applies.

mod endpoints;
mod grants;
mod group_commit;
mod ledger;
mod meta;
mod operator_keys;
mod policies;
mod sessions;
mod transfers;
mod two_phase;
mod wallets;

use std::sync::Arc;

pub use crate::common::{
    Created, EntryKind, IDEMPOTENCY_KEY_BYTES_MAX, LIST_ROWS_MAX, NAME_BYTES_MAX,
    RESOURCE_BYTES_MAX, StoreError, new_id, request_digest,
};
pub use endpoints::{EndpointHealth, EndpointStore, Observed, POLICIES_PER_QUERY_MAX, Rejections};
pub use grants::{GrantRecord, GrantStore, NewGrant};
pub use ledger::{LedgerEntry, RuntimeLedger};
pub use meta::MetaStore;
pub use operator_keys::{
    NewOperatorKey, OPERATOR_KEY_PREFIX, OPERATOR_KEY_SECRET_BYTES, OperatorKeyRecord,
    OperatorKeyStore,
};
pub use policies::PolicyStore;
pub use sessions::{NewSession, SessionRecord, SessionStore};
pub use transfers::{
    Denial, DenyReason, EndpointPayments, NewTransfer, Reservation, SpendCap, TransferRecord,
    TransferState, TransferStore,
};
pub use wallets::{NewWallet, WalletRecord, WalletStore};

use crate::alerts::AlertStore;
use crate::compensation::CompensationStore;
use crate::db::Db;
use crate::decisions::DecisionStore;
use crate::sql::{PostgresDatabase, SqliteDatabase};
use crate::{DatabaseError, redact};

/// The narrow runtime store traits, for `use bursar_store::runtime::prelude::*`.
pub mod prelude {
    pub use super::{
        EndpointStore, GrantStore, MetaStore, OperatorKeyStore, PolicyStore, RuntimeLedger,
        RuntimeStore, SessionStore, TransferStore, WalletStore,
    };
}

/// The runtime's storage: every narrow store, and the decision, compensation and alert stores
/// in the same database.
pub trait RuntimeStore:
    WalletStore
    + GrantStore
    + SessionStore
    + TransferStore
    + RuntimeLedger
    + PolicyStore
    + EndpointStore
    + OperatorKeyStore
    + MetaStore
{
    /// The decision trace in the same database.
    fn decision_store(&self) -> Arc<dyn DecisionStore>;
    /// Payment evidence and compensations in the same database.
    fn compensation_store(&self) -> Arc<dyn CompensationStore>;
    /// Budget alerts and their webhook outbox in the same database.
    fn alert_store(&self) -> Arc<dyn AlertStore>;
}

/// The runtime store over SQLite or PostgreSQL, in the settlement ledger's database.
#[derive(Debug, Clone)]
pub struct SqlRuntimeStore {
    backend: Backend,
    /// SQLite's reservation committer, started on first use.
    group: Arc<tokio::sync::OnceCell<Option<group_commit::GroupCommit>>>,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqliteDatabase),
    Postgres(PostgresDatabase),
}

impl SqlRuntimeStore {
    /// The reservation committer, on SQLite (`None` on PostgreSQL, where each reservation
    /// holds its own session's row lock in its own transaction).
    async fn group_commit(&self) -> Result<Option<&group_commit::GroupCommit>, StoreError> {
        let Backend::Sqlite(ledger) = &self.backend else {
            return Ok(None);
        };
        ledger.ready().await?;
        Ok(self
            .group
            .get_or_init(|| async { Some(group_commit::GroupCommit::start(ledger.clone())) })
            .await
            .as_ref())
    }

    /// The migrated pool.
    pub(crate) async fn db(&self) -> Result<Db<'_>, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(ledger) => Db::Sqlite(ledger.ready().await?),
            Backend::Postgres(ledger) => Db::Postgres(ledger.ready().await?),
        })
    }
}

impl From<SqliteDatabase> for SqlRuntimeStore {
    fn from(ledger: SqliteDatabase) -> Self {
        SqlRuntimeStore {
            backend: Backend::Sqlite(ledger),
            group: Arc::default(),
        }
    }
}

impl From<PostgresDatabase> for SqlRuntimeStore {
    fn from(ledger: PostgresDatabase) -> Self {
        SqlRuntimeStore {
            backend: Backend::Postgres(ledger),
            group: Arc::default(),
        }
    }
}

impl RuntimeStore for SqlRuntimeStore {
    fn decision_store(&self) -> Arc<dyn DecisionStore> {
        match &self.backend {
            Backend::Sqlite(ledger) => Arc::new(ledger.clone()),
            Backend::Postgres(ledger) => Arc::new(ledger.clone()),
        }
    }

    fn compensation_store(&self) -> Arc<dyn CompensationStore> {
        match &self.backend {
            Backend::Sqlite(ledger) => Arc::new(ledger.clone()),
            Backend::Postgres(ledger) => Arc::new(ledger.clone()),
        }
    }

    fn alert_store(&self) -> Arc<dyn AlertStore> {
        match &self.backend {
            Backend::Sqlite(ledger) => Arc::new(ledger.clone()),
            Backend::Postgres(ledger) => Arc::new(ledger.clone()),
        }
    }
}

/// Opens (creating and migrating) the runtime store at `url`.
pub async fn open_runtime_store(url: &str) -> Result<Arc<dyn RuntimeStore>, DatabaseError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqlRuntimeStore::from(
            SqliteDatabase::open(url).await?,
        )))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(SqlRuntimeStore::from(
            PostgresDatabase::open(url).await?,
        )))
    } else {
        Err(DatabaseError::UnsupportedUrl { url: redact(url) })
    }
}
