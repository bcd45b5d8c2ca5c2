//! Group commit of reservations on SQLite.
//!
//! SQLite has one writer at a time and every commit is an `fsync` (`synchronous=FULL`), so
//! reservations made at once would otherwise queue for the write lock and pay one `fsync`
//! each. Here one task takes the reservations waiting (up to [`GROUP_RESERVATIONS_MAX`]),
//! runs each in its own savepoint of one transaction, commits once, and only then answers
//! every caller: a reservation's answer still leaves after the commit that made it durable,
//! and a reservation that fails rolls back its savepoint alone. A reservation made alone
//! is a group of one: no waiting for others.

use tokio::sync::{mpsc, oneshot};

use super::transfers::{NewTransfer, Reservation};
use super::two_phase::reserve_in;
use crate::common::StoreError;
use crate::db::{Db, Tx, statement};
use crate::decisions::StoredDecision;
use crate::sql::SqliteDatabase;

/// The most reservations one transaction (and its one `fsync`) carries.
pub const GROUP_RESERVATIONS_MAX: usize = 64;

/// Reservations waiting for the committer, at most; callers beyond wait to enqueue.
const QUEUED_RESERVATIONS_MAX: usize = 1024;

struct Waiting {
    transfer: NewTransfer,
    decision: Option<StoredDecision>,
    answer: oneshot::Sender<Result<Reservation, StoreError>>,
}

/// The handle callers reserve through; the committer task ends when the last handle is gone.
#[derive(Debug)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("session", &self.transfer.session_id)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the committer over `ledger`'s pool (in the current tokio runtime).
    pub(super) fn start(ledger: SqliteDatabase) -> GroupCommit {
        let (queue, waiting) = mpsc::channel(QUEUED_RESERVATIONS_MAX);
        tokio::spawn(commit_groups(ledger, waiting));
        GroupCommit { queue }
    }

    /// Reserves through the committer; answers once the group's commit succeeded. When the
    /// committer is gone (the runtime that started it has shut down), the reservation is
    /// handed back unsent as `Err`, for the caller to make alone.
    pub(super) async fn reserve(
        &self,
        transfer: NewTransfer,
        decision: Option<StoredDecision>,
    ) -> Result<Result<Reservation, StoreError>, (NewTransfer, Option<StoredDecision>)> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            transfer,
            decision,
            answer,
        };
        if let Err(mpsc::error::SendError(waiting)) = self.queue.send(waiting).await {
            return Err((waiting.transfer, waiting.decision));
        }
        // Sent: whatever happens now, the caller is not to reserve again (its reservation may
        // have been committed); a lost answer is an error, and nothing is signed.
        Ok(answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the reservation committer stopped before answering".into(),
            ))
        }))
    }
}

async fn commit_groups(ledger: SqliteDatabase, mut waiting: mpsc::Receiver<Waiting>) {
    let mut group = Vec::with_capacity(GROUP_RESERVATIONS_MAX);
    while waiting.recv_many(&mut group, GROUP_RESERVATIONS_MAX).await > 0 {
        let results = match ledger.ready().await {
            Ok(pool) => commit_group(Db::Sqlite(pool), &mut group).await,
            Err(error) => Err(StoreError::from(error).to_string()),
        };
        answer(&mut group, results);
    }
}

/// Runs `group` in one transaction, each reservation in a savepoint; the results in order, or
/// why the transaction as a whole failed (then nothing of it was committed).
async fn commit_group(
    db: Db<'_>,
    group: &mut [Waiting],
) -> Result<Vec<Result<Reservation, StoreError>>, String> {
    let mut tx = db.begin().await.map_err(|error| error.to_string())?;
    if let [alone] = group {
        // A group of one needs no savepoint: its error rolls back the whole transaction.
        let decision = alone.decision.take();
        let result = reserve_in(&mut tx, alone.transfer.clone(), decision).await;
        match &result {
            Ok(_) => tx.commit().await,
            Err(_) => tx.rollback().await,
        }
        .map_err(|error| error.to_string())?;
        return Ok(vec![result]);
    }
    let mut results = Vec::with_capacity(group.len());
    for waiting in group.iter_mut() {
        let transfer = waiting.transfer.clone();
        let decision = waiting.decision.take();
        results.push(reserve_in_savepoint(&mut tx, transfer, decision).await?);
    }
    tx.commit().await.map_err(|error| error.to_string())?;
    Ok(results)
}

/// One reservation in its own savepoint: an error undoes only its own writes.
async fn reserve_in_savepoint(
    tx: &mut Tx,
    transfer: NewTransfer,
    decision: Option<StoredDecision>,
) -> Result<Result<Reservation, StoreError>, String> {
    let run = |sql: &'static str| statement(sql);
    tx.execute(run("SAVEPOINT reservation"))
        .await
        .map_err(|error| error.to_string())?;
    let result = reserve_in(tx, transfer, decision).await;
    if result.is_err() {
        tx.execute(run("ROLLBACK TO SAVEPOINT reservation"))
            .await
            .map_err(|error| error.to_string())?;
    }
    tx.execute(run("RELEASE SAVEPOINT reservation"))
        .await
        .map_err(|error| error.to_string())?;
    Ok(result)
}

/// Answers every caller of `group` (and empties it). A caller that stopped waiting is skipped.
fn answer(group: &mut Vec<Waiting>, results: Result<Vec<Result<Reservation, StoreError>>, String>) {
    match results {
        Ok(results) => {
            for (waiting, result) in group.drain(..).zip(results) {
                let _ = waiting.answer.send(result);
            }
        }
        Err(message) => {
            for waiting in group.drain(..) {
                let _ = waiting.answer.send(Err(StoreError::Unavailable(format!(
                    "the reservation's transaction failed, nothing was reserved: {message}"
                ))));
            }
        }
    }
}
