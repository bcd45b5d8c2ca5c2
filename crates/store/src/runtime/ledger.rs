//! The runtime ledger: append-only entries for every reserve, post, void, deny, alert and
//! compensation, in order of writing. (The facilitator's records are the settlement ledger.)

use alloy_primitives::{Address, B256};
use bursar_protocol::{Amount, Network};
use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use super::sessions::SessionRecord;
use super::transfers::TransferRecord;
use crate::common::{EntryKind, LIST_ROWS_MAX, RESOURCE_BYTES_MAX, StoreError, truncate};
use crate::db::{Row, Tx, statement};
use crate::now_ms;

/// One row of the append-only runtime ledger.
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
    pub network: Option<Network>,
    pub asset: Option<Address>,
    pub amount: Option<Amount>,
    pub payee: Option<Address>,
    pub resource: Option<String>,
    pub tx_hash: Option<B256>,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// Reads the runtime ledger. Entries are written by the operations they record, in the same
/// transaction.
#[async_trait::async_trait]
pub trait RuntimeLedger: Send + Sync + 'static {
    /// Runtime ledger entries with `seq > after`, in order, at most `limit`.
    async fn entries(&self, after: i64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
}

const ENTRY_COLUMNS: &str = "seq, kind, transfer_id, session_id, grant_id, wallet_id, agent, \
     network, asset, amount, payee, resource, tx_hash, reason, at_ms";
const INSERT_ENTRY: &str = "INSERT INTO ledger_entries (kind, transfer_id, session_id, grant_id, \
     wallet_id, agent, network, asset, amount, payee, resource, tx_hash, reason, at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// What one entry records beyond the transfer or session it is about.
pub(super) struct EntryFacts<'a> {
    pub kind: EntryKind,
    pub amount: Option<Amount>,
    pub payee: Option<Address>,
    pub resource: Option<&'a str>,
    pub tx_hash: Option<B256>,
    pub reason: Option<&'a str>,
}

/// Writes one runtime ledger entry inside `tx`, about `transfer` (or, without one, `session`).
pub(super) async fn write_entry(
    tx: &mut Tx,
    transfer: Option<&TransferRecord>,
    session: Option<&SessionRecord>,
    facts: EntryFacts<'_>,
) -> Result<(), StoreError> {
    let of = |from_transfer: fn(&TransferRecord) -> &String,
              from_session: fn(&SessionRecord) -> &String| {
        transfer
            .map(from_transfer)
            .or(session.map(from_session))
            .cloned()
    };
    let network = transfer.map(|t| &t.network).or(session.map(|s| &s.network));
    let asset = transfer.map(|t| t.asset).or(session.map(|s| s.asset));
    tx.execute(
        statement(INSERT_ENTRY)
            .bind(facts.kind.as_str())
            .bind(transfer.map(|t| t.id.clone()))
            .bind(of(|t| &t.session_id, |s| &s.id))
            .bind(of(|t| &t.grant_id, |s| &s.grant_id))
            .bind(of(|t| &t.wallet_id, |s| &s.wallet_id))
            .bind(of(|t| &t.agent, |s| &s.agent))
            .bind(network)
            .bind(asset)
            .bind(facts.amount)
            .bind(facts.payee)
            .bind(facts.resource.map(|r| truncate(r, RESOURCE_BYTES_MAX)))
            .bind(facts.tx_hash)
            .bind(facts.reason)
            .bind(now_ms()),
    )
    .await?;
    Ok(())
}

fn entry_from_row(row: &Row) -> Result<LedgerEntry, StoreError> {
    let seq: i64 = row.get("seq")?;
    let kind: String = row.get("kind")?;
    Ok(LedgerEntry {
        seq,
        kind: EntryKind::parse(&kind).ok_or_else(|| {
            StoreError::Corrupt(format!("runtime ledger entry {seq}: kind {kind:?}"))
        })?,
        transfer_id: row.get("transfer_id")?,
        session_id: row.get("session_id")?,
        grant_id: row.get("grant_id")?,
        wallet_id: row.get("wallet_id")?,
        agent: row.get("agent")?,
        network: row.typed_opt("network")?,
        asset: row.typed_opt("asset")?,
        amount: row.typed_opt("amount")?,
        payee: row.typed_opt("payee")?,
        resource: row.get("resource")?,
        tx_hash: row.typed_opt("tx_hash")?,
        reason: row.get("reason")?,
        at_ms: row.get("at_ms")?,
    })
}

#[async_trait::async_trait]
impl RuntimeLedger for SqlRuntimeStore {
    async fn entries(&self, after: i64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let db = self.db().await?;
        let limit = limit.min(LIST_ROWS_MAX);
        let rows = db
            .fetch_all(
                statement(AssertSqlSafe(format!(
                    "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq > $1 \
                     ORDER BY seq LIMIT {limit}"
                )))
                .bind(after),
            )
            .await?;
        rows.iter().map(entry_from_row).collect()
    }
}
