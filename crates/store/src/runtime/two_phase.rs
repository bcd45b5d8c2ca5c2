//! The transactions that move money in the runtime's books: reserve (or deny), then post or
//! void exactly once. Each runs in one database transaction holding the session's row lock.

use alloy_primitives::B256;
use bursar_protocol::Amount;
use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use super::ledger::{EntryFacts, write_entry};
use super::sessions::{GrantStanding, SessionRecord, SessionStore, lock_session, set_totals};
use super::transfers::{
    Denial, DenyReason, NewTransfer, Reservation, TRANSFER_COLUMNS, TransferRecord, TransferState,
    transfer_from_row,
};
use crate::common::{EntryKind, RESOURCE_BYTES_MAX, StoreError, new_id, truncate};
use crate::db::{Tx, statement};
use crate::decisions::{StoredDecision, append_decision};
use crate::now_ms;

/// Reserves `transfer.amount` against its session, or records why not; when it reserves,
/// appends `decision` (naming the new transfer) to the decision trace before the commit. On
/// SQLite (one writer at a time) concurrent reservations share a transaction and its commit
/// ([`super::group_commit`]); on PostgreSQL each has its own, holding its session's row lock.
/// Either way the answer is given only once its commit succeeded.
pub(super) async fn reserve(
    store: &SqlRuntimeStore,
    transfer: NewTransfer,
    decision: Option<StoredDecision>,
) -> Result<Reservation, StoreError> {
    let (transfer, decision) = match store.group_commit().await? {
        Some(group) => match group.reserve(transfer, decision).await {
            Ok(answer) => return answer,
            Err(unsent) => unsent,
        },
        None => (transfer, decision),
    };
    let db = store.db().await?;
    let mut tx = db.begin().await?;
    match reserve_in(&mut tx, transfer, decision).await {
        Ok(reservation) => {
            tx.commit().await?;
            Ok(reservation)
        }
        Err(error) => {
            tx.rollback().await?;
            Err(error)
        }
    }
}

/// [`reserve`]'s work inside `tx`, which the caller commits (or rolls back on an error).
pub(super) async fn reserve_in(
    tx: &mut Tx,
    transfer: NewTransfer,
    decision: Option<StoredDecision>,
) -> Result<Reservation, StoreError> {
    let valid_before_s = i64::try_from(transfer.valid_before_s)
        .map_err(|_| StoreError::Invalid("validBefore out of range".into()))?;
    let Some((session, grant)) = lock_session(tx, &transfer.session_id).await? else {
        return Err(StoreError::NotFound(format!(
            "session {}",
            transfer.session_id
        )));
    };
    let now = now_ms();
    let cap_refusal = if session.closed_at_ms.is_none() && !transfer.caps.is_empty() {
        check_caps(tx, &session, &transfer, now).await?
    } else {
        None
    };
    if let Some((reason, message)) = refusal(&session, &grant, &transfer, now).or(cap_refusal) {
        let reason_text = format!("{}: {message}", reason.code());
        let facts = EntryFacts {
            kind: EntryKind::Deny,
            amount: Some(transfer.amount),
            payee: Some(transfer.payee),
            resource: Some(&transfer.resource),
            tx_hash: None,
            reason: Some(&reason_text),
        };
        write_entry(tx, None, Some(&session), facts).await?;
        return Ok(Reservation::Denied { reason, message });
    }
    let record = TransferRecord {
        id: new_id("tfr_"),
        session_id: session.id.clone(),
        grant_id: session.grant_id.clone(),
        wallet_id: session.wallet_id.clone(),
        agent: session.agent.clone(),
        network: transfer.network.clone(),
        asset: transfer.asset,
        payer: transfer.payer,
        payee: transfer.payee,
        amount: transfer.amount,
        nonce: transfer.nonce,
        valid_before_s: transfer.valid_before_s,
        resource: truncate(&transfer.resource, RESOURCE_BYTES_MAX),
        state: TransferState::Pending,
        tx_hash: None,
        void_reason: None,
        created_at_ms: now,
        resolved_at_ms: None,
    };
    let reserved = session
        .reserved
        .checked_add(record.amount)
        .ok_or_else(|| StoreError::Corrupt("reserved total overflows".into()))?;
    if tx.is_postgres() {
        // One round trip: the transfer, the session's totals and the reserve entry.
        insert_reservation_joined(tx, &record, &transfer, valid_before_s, reserved, &session)
            .await?;
    } else {
        insert_reservation(tx, &record, &transfer, valid_before_s, reserved, &session).await?;
    }
    if let Some(mut decision) = decision {
        decision.set_transfer(&record.id);
        append_decision(tx, decision).await?;
    }
    Ok(Reservation::Reserved(Box::new(record)))
}

const INSERT_TRANSFER: &str = "INSERT INTO transfers (id, session_id, grant_id, wallet_id, agent, \
     network, asset, payer, payee, amount, nonce, valid_before_s, resource, state, created_at_ms, \
     endpoint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', $14, \
     $15)";

/// The reservation's writes as three statements (SQLite, where they cost no round trip).
async fn insert_reservation(
    tx: &mut Tx,
    record: &TransferRecord,
    transfer: &NewTransfer,
    valid_before_s: i64,
    reserved: Amount,
    session: &SessionRecord,
) -> Result<(), StoreError> {
    tx.execute(bind_transfer(
        statement(INSERT_TRANSFER),
        record,
        transfer,
        valid_before_s,
    ))
    .await?;
    set_totals(tx, &session.id, reserved, session.posted).await?;
    let facts = EntryFacts {
        kind: EntryKind::Reserve,
        amount: Some(record.amount),
        payee: Some(record.payee),
        resource: Some(&record.resource),
        tx_hash: None,
        reason: None,
    };
    write_entry(tx, Some(record), None, facts).await
}

/// The same writes as one PostgreSQL statement (data-modifying CTEs): the transfer, the
/// session's totals and the `reserve` entry, which copies the transfer's identity.
async fn insert_reservation_joined(
    tx: &mut Tx,
    record: &TransferRecord,
    transfer: &NewTransfer,
    valid_before_s: i64,
    reserved: Amount,
    session: &SessionRecord,
) -> Result<(), StoreError> {
    let joined = AssertSqlSafe(format!(
        "WITH inserted AS ({INSERT_TRANSFER}), \
         totals AS (UPDATE sessions SET reserved = $16, posted = $17 WHERE id = $2) \
         INSERT INTO ledger_entries (kind, transfer_id, session_id, grant_id, wallet_id, agent, \
         network, asset, amount, payee, resource, tx_hash, reason, at_ms) \
         VALUES ('reserve', $1, $2, $3, $4, $5, $6, $7, $10, $9, $13, NULL, NULL, $18)"
    ));
    tx.execute(
        bind_transfer(statement(joined), record, transfer, valid_before_s)
            .bind(reserved)
            .bind(session.posted)
            .bind(now_ms()),
    )
    .await?;
    Ok(())
}

/// Binds [`INSERT_TRANSFER`]'s parameters `$1`..`$15`.
fn bind_transfer(
    statement: crate::db::Statement,
    record: &TransferRecord,
    transfer: &NewTransfer,
    valid_before_s: i64,
) -> crate::db::Statement {
    statement
        .bind(&record.id)
        .bind(&record.session_id)
        .bind(&record.grant_id)
        .bind(&record.wallet_id)
        .bind(&record.agent)
        .bind(&record.network)
        .bind(record.asset)
        .bind(record.payer)
        .bind(record.payee)
        .bind(record.amount)
        .bind(record.nonce)
        .bind(valid_before_s)
        .bind(&record.resource)
        .bind(record.created_at_ms)
        .bind(truncate(&transfer.endpoint, RESOURCE_BYTES_MAX))
}

/// Why the session and its grant refuse `transfer` at `now`, if they do (window caps apart).
fn refusal(
    session: &SessionRecord,
    grant: &GrantStanding,
    transfer: &NewTransfer,
    now: i64,
) -> Option<(DenyReason, String)> {
    let asset = transfer.asset;
    let spent = session.reserved.checked_add(session.posted);
    let wanted = spent.and_then(|spent| spent.checked_add(transfer.amount));
    if session.closed_at_ms.is_some() {
        Some((
            DenyReason::SessionClosed,
            format!("session {} is closed", session.id),
        ))
    } else if grant.revoked_at_ms.is_some() {
        // The grant first: a session's expiry is capped at its grant's, so the grant is the
        // cause when both have passed.
        Some((
            DenyReason::GrantRevoked,
            format!("grant {} was revoked", session.grant_id),
        ))
    } else if now >= grant.expires_at_ms {
        Some((
            DenyReason::GrantExpired,
            format!("grant {} has expired", session.grant_id),
        ))
    } else if now >= session.expires_at_ms {
        Some((
            DenyReason::SessionExpired,
            format!("session {} has expired", session.id),
        ))
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
                spent.unwrap_or(session.max_spend),
                session.max_spend
            ),
        ))
    } else {
        None
    }
}

/// Checks rolling-window caps under the wallet's row lock: what the wallet (or the agent on it)
/// reserved or spent within each window, plus this transfer.
async fn check_caps(
    tx: &mut Tx,
    session: &SessionRecord,
    transfer: &NewTransfer,
    now: i64,
) -> Result<Option<(DenyReason, String)>, StoreError> {
    tx.execute(
        statement("UPDATE wallets SET lock_version = lock_version + 1 WHERE id = $1")
            .bind(&session.wallet_id),
    )
    .await?;
    for cap in &transfer.caps {
        let since = now.saturating_sub(cap.period_ms);
        let rows = tx
            .fetch_all(
                statement(
                    "SELECT amount FROM transfers WHERE wallet_id = $1 \
                     AND state IN ('pending', 'posted') AND created_at_ms >= $2 \
                     AND ($3 = 0 OR agent = $4)",
                )
                .bind(&session.wallet_id)
                .bind(since)
                .bind(i64::from(cap.agent_only))
                .bind(&session.agent),
            )
            .await?;
        let mut total = transfer.amount;
        for row in &rows {
            total = total
                .checked_add(row.typed("amount")?)
                .ok_or_else(|| StoreError::Corrupt("window total overflows".into()))?;
        }
        if total > cap.max {
            let whose = if cap.agent_only {
                "the agent"
            } else {
                "the wallet"
            };
            return Ok(Some((
                DenyReason::WindowCapExceeded,
                format!(
                    "paying {} would bring {whose} to {total} within the window, above the cap \
                     {} ({})",
                    transfer.amount, cap.max, cap.label
                ),
            )));
        }
    }
    Ok(None)
}

/// Moves a pending transfer to `to` (posted or voided), exactly once.
pub(super) async fn resolve(
    store: &SqlRuntimeStore,
    transfer_id: &str,
    to: TransferState,
    tx_hash: Option<B256>,
    reason: Option<&str>,
) -> Result<bool, StoreError> {
    debug_assert!(to != TransferState::Pending);
    let db = store.db().await?;
    let mut tx = db.begin().await?;
    let updated = tx
        .execute(
            statement(
                "UPDATE transfers SET state = $2, tx_hash = COALESCE($3, tx_hash), \
                 void_reason = $4, resolved_at_ms = $5 WHERE id = $1 AND state = 'pending'",
            )
            .bind(transfer_id)
            .bind(to.as_str())
            .bind(tx_hash)
            .bind(reason)
            .bind(now_ms()),
        )
        .await?;
    if updated == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let row = tx
        .fetch_one(
            statement(AssertSqlSafe(format!(
                "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1"
            )))
            .bind(transfer_id),
        )
        .await?;
    let transfer = transfer_from_row(&row)?;
    let Some((session, _grant)) = lock_session(&mut tx, &transfer.session_id).await? else {
        return Err(StoreError::Corrupt(format!(
            "transfer {transfer_id} names missing session {}",
            transfer.session_id
        )));
    };
    let (reserved, posted) = resolved_totals(&session, &transfer, to)?;
    set_totals(&mut tx, &session.id, reserved, posted).await?;
    let facts = EntryFacts {
        kind: if to == TransferState::Posted {
            EntryKind::Post
        } else {
            EntryKind::Void
        },
        amount: Some(transfer.amount),
        payee: Some(transfer.payee),
        resource: Some(&transfer.resource),
        tx_hash: transfer.tx_hash,
        reason,
    };
    write_entry(&mut tx, Some(&transfer), None, facts).await?;
    tx.commit().await?;
    Ok(true)
}

/// The session's `reserved` and `posted` totals once `transfer` moves to `to`.
fn resolved_totals(
    session: &SessionRecord,
    transfer: &TransferRecord,
    to: TransferState,
) -> Result<(Amount, Amount), StoreError> {
    let reserved = session
        .reserved
        .checked_sub(transfer.amount)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "session {} reserves {} but transfer {} holds {}",
                session.id, session.reserved, transfer.id, transfer.amount
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
    Ok((reserved, posted))
}

/// Records a denial decided outside the store.
pub(super) async fn deny(store: &SqlRuntimeStore, denial: Denial) -> Result<(), StoreError> {
    let session = match &denial.session_id {
        Some(id) => store.session(id).await?,
        None => None,
    };
    let db = store.db().await?;
    let mut tx = db.begin().await?;
    let reason = format!("{}: {}", denial.reason, denial.message);
    let facts = EntryFacts {
        kind: EntryKind::Deny,
        amount: denial.amount,
        payee: denial.payee,
        resource: denial.resource.as_deref(),
        tx_hash: None,
        reason: Some(&reason),
    };
    write_entry(&mut tx, None, session.as_ref(), facts).await?;
    tx.commit().await?;
    Ok(())
}
