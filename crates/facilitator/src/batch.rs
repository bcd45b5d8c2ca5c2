//! Batched settlement: authorizations that passed verification (and, when
//! [`BatchConfig::simulate_items`] is set, a simulation of their own) queue here, and leave in one
//! BursarBatchSettler transaction per batch.
//!
//! - A collector task takes queued items and flushes a batch when it holds
//!   [`BatchConfig::items_max`] items, when the next item would pass [`BATCH_GAS_MAX`], or when
//!   [`BatchConfig::wait_max`] has passed since its first item.
//! - One worker per sender account takes batches, signs the transaction, records every item
//!   `submitted` with the transaction's hash in the ledger (one database transaction), and only
//!   then broadcasts it. A crash at any point therefore leaves either `received` claims (nothing
//!   was broadcast) or `submitted` rows naming the transaction, which recovery reconciles.
//! - Each sender keeps at most [`SENDER_IN_FLIGHT_MAX`] batches unconfirmed; each batch's
//!   receipt is awaited in a task of its own, the configured confirmation depth is waited for,
//!   and every item is finished from its own `ItemSettled` / `ItemFailed` event (or, when the
//!   transaction reverted as a whole, from the token's `authorizationState`).
//! - If the node definitively refuses the transaction (it never entered a mempool), its rows are
//!   released so the payers may retry; if the answer is ambiguous (transport error), the rows
//!   stay `submitted` and the receipt is awaited as if it had been sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use bursar_chain::{Account, ChainError, EvmChain, Receipt, Token, TxRequest, wait_for_receipt};
use bursar_contracts::{
    BatchItem, ItemOutcome, LogRef, batch_outcomes, batch_settle_call, describe_revert,
    revert_reason,
};
use bursar_protocol::{Reason, SettleResponse};
use bursar_store::{SettlementKey, SettlementLedger, SettlementState, Submission};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::metrics::FacilitatorMetrics;
use crate::paid::{self, Terms};

/// Deployment code of the BursarBatchSettler, for dev chains (see `bursar-contracts`).
pub use bursar_contracts::batch_settler_creation_code;

/// Items per batch unless configured otherwise.
pub const BATCH_ITEMS_MAX_DEFAULT: usize = 100;
/// The most items a batch may be configured to hold (the contract's `ITEMS_MAX`).
pub const BATCH_ITEMS_MAX_LIMIT: usize = bursar_contracts::BATCH_ITEMS_MAX;
/// How long the first item of a batch waits for company unless configured otherwise.
pub const BATCH_WAIT_DEFAULT: Duration = Duration::from_millis(25);
/// The longest a batch may be configured to wait.
pub const BATCH_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// Settlements waiting for a batch; beyond it `/settle` is refused at once (never queued
/// without bound).
pub const BATCH_QUEUE_MAX: usize = 20_000;
/// The most sender accounts one facilitator uses.
pub const SENDERS_MAX: usize = 64;
/// Batches one sender may have broadcast and not yet confirmed.
pub const SENDER_IN_FLIGHT_MAX: usize = 4;
/// Gas budgeted for the batch transaction itself.
pub const BATCH_GAS_BASE: u64 = 60_000;
/// Gas budgeted per item signed by an EOA (65-byte signature); 60-70k is used.
pub const BATCH_ITEM_GAS_EOA: u64 = 120_000;
/// Gas budgeted per item with another signature (ERC-1271 / ERC-6492): what the contract
/// forwards to it at most, plus the item's own overhead.
pub const BATCH_ITEM_GAS_OTHER: u64 = bursar_contracts::BATCH_ITEM_GAS_MAX + 20_000;
/// The most gas one batch transaction may ask for (under the EIP-7825 per-transaction cap).
pub const BATCH_GAS_MAX: u64 = 15_000_000;
/// The deepest confirmation depth accepted.
pub const CONFIRMATIONS_MAX: u64 = 64;

/// How the facilitator batches.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// The deployed BursarBatchSettler.
    pub settler: Address,
    /// Flush when a batch holds this many items (1..=[`BATCH_ITEMS_MAX_LIMIT`]).
    pub items_max: usize,
    /// Flush when the batch's first item has waited this long (at most [`BATCH_WAIT_LIMIT`]).
    pub wait_max: Duration,
    /// Simulate each item's `transferWithAuthorization` before queuing it (one more `eth_call`
    /// per settlement). Off by default: every item is verified first (signature, validity
    /// window, token domain, nonce unused, balance), and the batch contract isolates an item that
    /// still reverts (its `ItemFailed` event fails that settlement alone), so the simulation only
    /// catches token-specific refusals a little earlier, at a cost paid on every settlement.
    pub simulate_items: bool,
}

impl BatchConfig {
    /// Defaults for `settler`.
    pub fn new(settler: Address) -> Self {
        BatchConfig {
            settler,
            items_max: BATCH_ITEMS_MAX_DEFAULT,
            wait_max: BATCH_WAIT_DEFAULT,
            simulate_items: false,
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.items_max == 0 || self.items_max > BATCH_ITEMS_MAX_LIMIT {
            return Err(format!(
                "batch items max must be 1..={BATCH_ITEMS_MAX_LIMIT}, not {}",
                self.items_max
            ));
        }
        if self.wait_max > BATCH_WAIT_LIMIT {
            return Err(format!(
                "batch wait must be at most {BATCH_WAIT_LIMIT:?}, not {:?}",
                self.wait_max
            ));
        }
        Ok(())
    }
}

/// One verified, simulated and claimed settlement waiting for a batch.
pub(crate) struct Queued {
    pub key: SettlementKey,
    pub item: BatchItem,
    /// The successful response without its transaction hash.
    pub pending: SettleResponse,
    pub valid_before_s: u64,
    /// The outcome, and whether it is final (to be remembered).
    pub reply: oneshot::Sender<(SettleResponse, bool)>,
}

impl Queued {
    fn gas(&self) -> u64 {
        if self.item.signature.len() == 65 {
            BATCH_ITEM_GAS_EOA
        } else {
            BATCH_ITEM_GAS_OTHER
        }
    }
}

/// The batcher's handle: queue items; its tasks run until the handle and its clones are dropped.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::Sender<Queued>,
    simulate_items: bool,
}

struct Shared {
    chain: Arc<dyn EvmChain>,
    ledger: Arc<dyn SettlementLedger>,
    /// The facilitator process holding the queued items' claims.
    holder: String,
    settler: Address,
    confirmations: u64,
    receipt_timeout: Duration,
    metrics: FacilitatorMetrics,
}

impl Batcher {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        chain: Arc<dyn EvmChain>,
        ledger: Arc<dyn SettlementLedger>,
        config: BatchConfig,
        senders: Vec<Arc<Account>>,
        holder: String,
        confirmations: u64,
        receipt_timeout: Duration,
        metrics: FacilitatorMetrics,
    ) -> Batcher {
        let simulate_items = config.simulate_items;
        let (queue, incoming) = mpsc::channel(BATCH_QUEUE_MAX);
        let (batches_tx, batches_rx) = mpsc::channel::<Vec<Queued>>(1);
        let batches_rx = Arc::new(Mutex::new(batches_rx));
        let shared = Arc::new(Shared {
            chain,
            ledger,
            holder,
            settler: config.settler,
            confirmations,
            receipt_timeout,
            metrics,
        });
        tokio::spawn(collect(incoming, batches_tx, config));
        for sender in senders {
            tokio::spawn(work(shared.clone(), sender, batches_rx.clone()));
        }
        Batcher {
            queue,
            simulate_items,
        }
    }

    /// Whether each item is simulated before it is queued ([`BatchConfig::simulate_items`]).
    pub fn simulate_items(&self) -> bool {
        self.simulate_items
    }

    /// Queues an item; `false` when the queue is full or the batcher has stopped (the item is
    /// dropped, so its reply channel closes).
    pub fn enqueue(&self, item: Queued) -> bool {
        self.queue.try_send(item).is_ok()
    }
}

/// Gathers queued items into batches.
async fn collect(
    mut incoming: mpsc::Receiver<Queued>,
    batches: mpsc::Sender<Vec<Queued>>,
    config: BatchConfig,
) {
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match incoming.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::now() + config.wait_max;
        let mut gas = BATCH_GAS_BASE + first.gas();
        let mut batch = vec![first];
        while batch.len() < config.items_max {
            match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(item)) => {
                    if gas + item.gas() > BATCH_GAS_MAX {
                        carried = Some(item);
                        break;
                    }
                    gas += item.gas();
                    batch.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if batches.send(batch).await.is_err() {
            return;
        }
    }
}

/// One sender's loop: sign, record, broadcast; confirmations run in tasks of their own.
async fn work(
    shared: Arc<Shared>,
    sender: Arc<Account>,
    batches: Arc<Mutex<mpsc::Receiver<Vec<Queued>>>>,
) {
    let in_flight = Arc::new(Semaphore::new(SENDER_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let batch = { batches.lock().await.recv().await };
        let Some(batch) = batch else { return };
        if let Some((hash, batch)) = submit(&shared, &sender, batch).await {
            let shared = shared.clone();
            tokio::spawn(async move {
                confirm(&shared, hash, batch).await;
                drop(permit);
            });
        }
    }
}

fn refuse(batch: Vec<Queued>, reason: Reason, message: String) {
    for item in batch {
        let response = SettleResponse::failed(
            reason.clone(),
            message.clone(),
            item.pending.payer.clone(),
            item.pending.network.clone(),
        );
        let _ = item.reply.send((response, false));
    }
}

/// Records and broadcasts one batch. `None` when nothing was broadcast (every item answered).
async fn submit(
    shared: &Shared,
    sender: &Account,
    batch: Vec<Queued>,
) -> Option<(B256, Vec<Queued>)> {
    let items: Vec<BatchItem> = batch.iter().map(|q| q.item.clone()).collect();
    let gas_limit = BATCH_GAS_BASE + batch.iter().map(Queued::gas).sum::<u64>();
    let keys: Vec<SettlementKey> = batch.iter().map(|q| q.key.clone()).collect();
    let recorded: std::sync::Mutex<Option<B256>> = std::sync::Mutex::new(None);
    let ledger_error: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let request = TxRequest {
        to: Some(shared.settler),
        data: batch_settle_call(&items),
        value: U256::ZERO,
        gas_limit: Some(gas_limit),
    };
    let result = sender
        .send_recorded(request, |hash, nonce| {
            let submissions: Vec<(SettlementKey, Submission)> = batch
                .iter()
                .map(|q| {
                    let mut pending = q.pending.clone();
                    pending.transaction = hash.into();
                    (
                        q.key.clone(),
                        Submission {
                            tx_hash: hash,
                            sender: sender.address(),
                            sender_nonce: nonce,
                            valid_before_s: q.valid_before_s,
                            pending_response: pending,
                        },
                    )
                })
                .collect();
            let ledger = shared.ledger.clone();
            let holder = shared.holder.as_str();
            let recorded = &recorded;
            let ledger_error = &ledger_error;
            async move {
                match ledger.mark_batch_submitted(holder, &submissions).await {
                    Ok(()) => {
                        *recorded.lock().expect("lock") = Some(hash);
                        Ok(())
                    }
                    Err(error) => {
                        *ledger_error.lock().expect("lock") = Some(error.to_string());
                        Err(ChainError::Rejected(
                            "the settlement ledger refused the batch".into(),
                        ))
                    }
                }
            }
        })
        .await;
    let recorded = *recorded.lock().expect("lock");
    let ledger_error = ledger_error.lock().expect("lock").take();
    match result {
        Ok(hash) => {
            tracing::debug!(tx = %hash, items = batch.len(), sender = %sender.address(), "batch broadcast");
            shared.metrics.batch_submitted(batch.len());
            Some((hash, batch))
        }
        // Maybe broadcast: keep the rows `submitted` and wait for the receipt.
        Err(error @ (ChainError::Transport(_) | ChainError::Timeout(_)))
            if recorded.is_some() && ledger_error.is_none() =>
        {
            let hash = recorded.expect("checked");
            tracing::warn!(%error, tx = %hash, "batch broadcast answer lost; waiting for its receipt");
            Some((hash, batch))
        }
        Err(error) => {
            // Definitively not broadcast: free the authorizations so payers may retry.
            let released = match recorded {
                Some(hash) => shared.ledger.release_unsent(&keys, hash).await.map(|_| ()),
                None => release_all(shared.ledger.as_ref(), &shared.holder, &keys).await,
            };
            if let Err(release_error) = released {
                tracing::error!(%release_error, "could not release a refused batch");
            }
            let message = match ledger_error {
                Some(ledger) => format!(
                    "the batch was not recorded before its broadcast, so nothing was sent \
                     (retry): {ledger}"
                ),
                None => format!("the batch transaction was refused: {error}"),
            };
            tracing::warn!(%message, items = batch.len(), "batch not broadcast");
            refuse(batch, Reason::UNEXPECTED_SETTLE_ERROR, message);
            None
        }
    }
}

async fn release_all(
    ledger: &dyn SettlementLedger,
    holder: &str,
    keys: &[SettlementKey],
) -> Result<(), bursar_store::DatabaseError> {
    for key in keys {
        ledger.release(key, Some(holder)).await?;
    }
    Ok(())
}

/// Waits until `receipt`'s block has `confirmations` blocks (itself included) and the receipt is
/// still there, or the deadline passes.
pub(crate) async fn confirmed_receipt(
    chain: &dyn EvmChain,
    hash: B256,
    confirmations: u64,
    timeout: Duration,
) -> Result<Receipt, ChainError> {
    let started = Instant::now();
    let mut receipt = wait_for_receipt(chain, hash, timeout).await?;
    if confirmations <= 1 {
        return Ok(receipt);
    }
    loop {
        let head = chain.latest_block().await?.number;
        if head + 1 >= receipt.block_number + confirmations {
            // Still on the canonical chain?
            match chain.receipt(hash).await? {
                Some(again) if again.block_number == receipt.block_number => return Ok(again),
                Some(again) => receipt = again,
                None => {
                    let left = timeout.saturating_sub(started.elapsed());
                    receipt = wait_for_receipt(chain, hash, left).await?;
                }
            }
        }
        if started.elapsed() >= timeout {
            return Err(ChainError::Timeout(format!(
                "{hash} mined in block {} but not {confirmations} blocks deep after {timeout:?}",
                receipt.block_number
            )));
        }
        tokio::time::sleep(chain.receipt_poll_interval()).await;
    }
}

/// Waits for a broadcast batch and finishes every item.
async fn confirm(shared: &Shared, hash: B256, batch: Vec<Queued>) {
    let receipt = match confirmed_receipt(
        shared.chain.as_ref(),
        hash,
        shared.confirmations,
        shared.receipt_timeout,
    )
    .await
    {
        Ok(receipt) => receipt,
        Err(error) => {
            // The rows stay `submitted`; duplicates wait on the chain, recovery finishes them.
            refuse(
                batch,
                Reason::UNEXPECTED_SETTLE_ERROR,
                format!("transaction {hash} was sent but not confirmed: {error}"),
            );
            return;
        }
    };
    shared
        .metrics
        .gas_spent(receipt.gas_used, receipt.effective_gas_price);
    let items: Vec<BatchItem> = batch.iter().map(|q| q.item.clone()).collect();
    let outcomes = if receipt.success {
        batch_outcomes(
            shared.settler,
            &items,
            receipt.logs.iter().map(|log| LogRef {
                address: log.address,
                topics: &log.topics,
                data: &log.data,
            }),
        )
    } else {
        vec![ItemOutcome::Unknown; items.len()]
    };
    let mut finished = Vec::with_capacity(batch.len());
    for (queued, outcome) in batch.iter().zip(outcomes) {
        let authorization = &queued.item.authorization;
        let item = ItemRef {
            token: queued.item.token,
            payer: authorization.from,
            nonce: authorization.nonce,
            terms: Some(Terms {
                pay_to: authorization.to,
                value: authorization.value.atomic(),
            }),
        };
        let (response, state) =
            item_response(shared.chain.clone(), &queued.pending, &item, hash, outcome).await;
        finished.push((queued.key.clone(), response, state));
    }
    let settled = finished
        .iter()
        .filter(|(_, _, state)| *state == SettlementState::Confirmed)
        .count();
    tracing::info!(tx = %hash, items = batch.len(), settled, gas = receipt.gas_used, "batch mined");
    if let Err(error) = shared.ledger.finish_many(&finished).await {
        // The rows stay `submitted`; recovery (or a duplicate) finishes them from the receipt.
        tracing::error!(%error, tx = %hash, "could not record a mined batch");
    }
    for (queued, (_, response, _)) in batch.into_iter().zip(finished) {
        let _ = queued.reply.send((response, true));
    }
}

/// One batch item's authorization and what it pays (when known).
pub(crate) struct ItemRef {
    pub token: Address,
    pub payer: Address,
    pub nonce: B256,
    pub terms: Option<Terms>,
}

/// The final response and state of one item of a mined batch. An item that failed because
/// another transaction used its authorization first is answered with that transaction when it
/// paid exactly what the item names: a paid authorization is never answered with an error.
pub(crate) async fn item_response(
    chain: Arc<dyn EvmChain>,
    pending: &SettleResponse,
    item: &ItemRef,
    hash: B256,
    outcome: ItemOutcome,
) -> (SettleResponse, SettlementState) {
    let failed = |reason: Reason, message: String| {
        (
            SettleResponse::failed(
                reason,
                message,
                pending.payer.clone(),
                pending.network.clone(),
            ),
            SettlementState::Failed,
        )
    };
    if let ItemOutcome::Settled = outcome {
        let mut response = pending.clone();
        response.transaction = hash.into();
        return (response, SettlementState::Confirmed);
    }
    let used = Token::new(chain.clone(), item.token)
        .authorization_state(item.payer, item.nonce)
        .await;
    if let Ok(true) = used
        && item.terms.is_some()
        && let Ok(Some(paid_by)) = paid::transaction_that_paid(
            chain.as_ref(),
            item.token,
            item.payer,
            item.nonce,
            item.terms,
        )
        .await
    {
        let mut response = pending.clone();
        response.transaction = paid_by.into();
        return (response, SettlementState::Confirmed);
    }
    match outcome {
        ItemOutcome::Settled => unreachable!("answered above"),
        ItemOutcome::Failed(data) => failed(
            revert_reason(&data).unwrap_or(Reason::TRANSACTION_FAILED),
            format!(
                "transaction {hash} did not settle this authorization: {}",
                describe_revert(&data)
            ),
        ),
        // The transaction reverted as a whole: nothing in it moved. Say whether the
        // authorization was used elsewhere.
        ItemOutcome::Unknown => match used {
            Ok(true) => failed(
                Reason::NONCE_ALREADY_USED,
                format!(
                    "transaction {hash} did not settle this authorization; another transaction used it"
                ),
            ),
            _ => failed(
                Reason::TRANSACTION_FAILED,
                format!("transaction {hash} reverted; nothing was transferred"),
            ),
        },
    }
}

/// The outcome a mined receipt gives the authorization `(token, payer, nonce)`: from its batch
/// event if the transaction was a batch, else from the transaction's status.
pub(crate) fn receipt_item_outcome(
    receipt: &Receipt,
    token: Address,
    payer: Address,
    nonce: B256,
) -> Option<ItemOutcome> {
    use alloy_sol_types::SolEvent;
    use bursar_contracts::BursarBatchSettler::{ItemFailed, ItemSettled};
    let mut batch = false;
    for log in &receipt.logs {
        match log.topics.first() {
            Some(t) if *t == ItemSettled::SIGNATURE_HASH => {
                batch = true;
                if let Ok(event) =
                    ItemSettled::decode_raw_log(log.topics.iter().copied(), &log.data)
                    && event.token == token
                    && event.from == payer
                    && event.nonce == nonce
                {
                    return Some(ItemOutcome::Settled);
                }
            }
            Some(t) if *t == ItemFailed::SIGNATURE_HASH => {
                batch = true;
                if let Ok(event) = ItemFailed::decode_raw_log(log.topics.iter().copied(), &log.data)
                    && event.token == token
                    && event.from == payer
                    && event.nonce == nonce
                {
                    return Some(ItemOutcome::Failed(event.reason));
                }
            }
            _ => {}
        }
    }
    batch.then_some(ItemOutcome::Unknown)
}
