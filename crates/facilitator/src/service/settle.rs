//! Settlement: at most one settlement per authorization in this process, the broadcast recorded
//! in the settlement ledger before it leaves, and the outcome recorded once mined.

//! Verification and exactly-once settlement, independent of HTTP.

use std::time::Instant;

use alloy_primitives::{Address, B256, U256, keccak256};
use bursar_chain::{CallOutcome, CallRequest, ChainError, TxRequest};
use bursar_contracts::describe_revert;
use bursar_protocol::exact_evm::{self, CheckedPayment, ExactEvm};
use bursar_protocol::facilitator::network_name;
use bursar_protocol::{ChainAddress, ChainTx, FacilitatorRequest, Reason, SettleResponse};
use bursar_store::{DatabaseError, SettlementKey, SettlementState, Submission};
use tokio::sync::{oneshot, watch};

use crate::batch::{self, Batcher, Queued};
use crate::hooks::payer_of;
use crate::paid::Terms;
use crate::scheme::{PaymentKey, Scheme, SettlementScheme};

use super::{
    Entry, LocalFacilitator, PAYMENT_ID_CONFLICT, PAYMENT_ID_INVALID, PAYMENT_IDENTIFIER_EXTENSION,
    SETTLE_GAS_LIMIT, SETTLE_RECEIPT_TIMEOUT, SETTLED_REMEMBERED_MAX,
};

impl LocalFacilitator {
    /// Settles a payment exactly once.
    ///
    /// Concurrent or later calls with the identical payment get the first call's outcome (same
    /// transaction hash) and never cause a second transaction. A different payment that reuses an
    /// authorization nonce is verified on its own and refused.
    ///
    /// The hooks' `before_settle` runs first (a refusal moves nothing); `after_settle` sees the
    /// answer.
    #[tracing::instrument(name = "facilitator.settle", skip_all, fields(
        network = %request.requirements.network.caip2(), outcome = tracing::field::Empty,
        reason = tracing::field::Empty, transaction = tracing::field::Empty,
    ))]
    pub async fn settle(&self, request: &FacilitatorRequest) -> SettleResponse {
        let started = Instant::now();
        let hooks = self.hooks();
        let mut response = match hooks.before_settle(request).await {
            Ok(()) => self.settle_unhooked(request).await,
            Err(refusal) => SettleResponse::failed(
                refusal.reason,
                refusal.message,
                payer_of(request).map(ChainAddress::from),
                request.network_name(),
            ),
        };
        // A recorded outcome (or one recovery derived) may name the network in the other x402
        // version's form; the caller gets its own.
        response.network = request.network_name();
        hooks.after_settle(request, &response).await;
        if let Some(catalog) = self.catalog() {
            catalog.recorder().settled(request, &response);
        }
        self.metrics.settled(&response, started.elapsed());
        response
    }

    pub(super) async fn settle_unhooked(&self, request: &FacilitatorRequest) -> SettleResponse {
        let network = request.network_name();
        let exact = match Scheme::of(&request.payload.payload) {
            Ok(Scheme::ExactEvm(exact)) => exact,
            Err(message) => {
                // Another scheme is refused for its scheme, as verification refuses it.
                let (reason, message) =
                    match exact_evm::check_scheme(&request.payload, &request.requirements) {
                        Err(invalid) => (invalid.reason, invalid.message),
                        Ok(()) => (Reason::INVALID_PAYLOAD, message.to_string()),
                    };
                return SettleResponse::failed(reason, message, None, network);
            }
        };
        let Some(key) = ExactEvm::payment_key(exact, &request.requirements) else {
            return SettleResponse::failed(
                Reason::INVALID_PAYMENT_REQUIREMENTS,
                format!(
                    "asset {:?} is not an EVM address",
                    request.requirements.asset
                ),
                Some(exact.authorization.from.into()),
                network,
            );
        };
        let fingerprint = payment_fingerprint(request);
        let terms = Terms {
            pay_to: exact.authorization.to,
            value: exact.authorization.value.atomic(),
        };
        let payer = Some(key.payer.into());
        match payment_identifier(request) {
            Err(message) => {
                return SettleResponse::failed(
                    Reason::other(PAYMENT_ID_INVALID),
                    message,
                    payer,
                    network,
                );
            }
            Ok(None) => {}
            Ok(Some(id)) => match self.ledger.get_by_payment_id(&id).await {
                Ok(Some(holder))
                    if holder.key != self.ledger_key(key) || holder.fingerprint != fingerprint =>
                {
                    return payment_id_conflict(&id, payer, network);
                }
                Ok(_) => {}
                Err(error) => return ledger_failure(error, payer, network),
            },
        }

        let action = self.join_or_lead(key, fingerprint, &network);
        let publisher = match action {
            Action::Return(outcome) => return outcome,
            Action::Join(mut outcome) => return wait_for_outcome(&mut outcome, network).await,
            Action::VerifyAlone => return self.refuse_reused_nonce(request, network).await,
            Action::Lead(publisher) => publisher,
        };
        // Settle in a task of its own so a caller that hangs up cannot abandon a settlement that
        // other callers are waiting on, or that has already been broadcast.
        let this = self.clone();
        let request = request.clone();
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let (outcome, remember) = this
                .settle_durably(&request, key, fingerprint, terms, request.network_name())
                .await;
            this.finish(key, fingerprint, &outcome, remember);
            let _ = publisher.send(Some(outcome.clone()));
            outcome
        }));
        match task.await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.settlements.lock().expect("lock").entries.remove(&key);
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("settlement task failed: {error}"),
                    Some(key.payer.into()),
                    network,
                )
            }
        }
    }

    /// What this process does with a settle of `key`, from the settlements in memory: answer a
    /// finished one, join one running, or lead it (a settle entry is inserted as in flight).
    fn join_or_lead(&self, key: PaymentKey, fingerprint: B256, network: &str) -> Action {
        let mut settlements = self.settlements.lock().expect("lock");
        match settlements.entries.get(&key) {
            Some(Entry::Done {
                fingerprint: done,
                outcome,
            }) if *done == fingerprint => Action::Return(outcome.clone()),
            Some(Entry::InFlight {
                fingerprint: running,
                outcome,
            }) => {
                if *running == fingerprint {
                    Action::Join(outcome.clone())
                } else {
                    Action::Return(SettleResponse::failed(
                        Reason::SETTLEMENT_IN_PROGRESS,
                        "another payment with this authorization nonce is being settled",
                        Some(key.payer.into()),
                        network.to_string(),
                    ))
                }
            }
            // A finished entry for a different payment: verify this one on its own (the nonce is
            // used, so it will be refused).
            Some(Entry::Done { .. }) => Action::VerifyAlone,
            None => {
                let (publisher, outcome) = watch::channel(None);
                settlements.entries.insert(
                    key,
                    Entry::InFlight {
                        fingerprint,
                        outcome,
                    },
                );
                Action::Lead(publisher)
            }
        }
    }

    /// Records a finished settlement. Outcomes that reached the chain are remembered; refusals
    /// before broadcast are forgotten so the payer may fix the problem and try again.
    pub(super) fn finish(
        &self,
        key: PaymentKey,
        fingerprint: B256,
        outcome: &SettleResponse,
        remember: bool,
    ) {
        let mut settlements = self.settlements.lock().expect("lock");
        if !remember {
            settlements.entries.remove(&key);
            return;
        }
        settlements.entries.insert(
            key,
            Entry::Done {
                fingerprint,
                outcome: outcome.clone(),
            },
        );
        settlements.finished.push_back(key);
        while settlements.finished.len() > SETTLED_REMEMBERED_MAX {
            if let Some(oldest) = settlements.finished.pop_front() {
                settlements.entries.remove(&oldest);
            }
        }
    }

    /// The ledger's name for an authorization on this facilitator's chain.
    pub(super) fn ledger_key(&self, key: PaymentKey) -> SettlementKey {
        SettlementKey::new(self.network(), key.asset, key.payer, key.nonce)
    }

    /// Verifies, simulates, records the transaction, broadcasts it, waits, records the outcome.
    /// The caller holds `key` in the ledger.
    pub(super) async fn settle_claimed(
        &self,
        request: &FacilitatorRequest,
        key: &SettlementKey,
        network: String,
    ) -> Settled {
        if let Some(batcher) = &self.batcher {
            let (outcome, remember) = self.settle_batched(batcher, request, key, network).await;
            return Settled::Done(outcome, remember);
        }
        let checked = match self.prepare(request, network.clone()).await {
            Ok(checked) => checked,
            Err(refusal) => {
                self.release_claim(key).await;
                return Settled::Done(refusal, false);
            }
        };
        let payer = ChainAddress::from(checked.payer);
        let pending = |hash: B256| SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(payer.clone()),
            transaction: hash.into(),
            network: network.clone(),
        };
        let valid_before_s = ExactEvm::valid_before_seconds(&checked);
        // The transaction is recorded before it is broadcast: a crash at any point leaves either
        // a `received` claim (nothing was sent) or a `submitted` row naming the transaction.
        let recorded: std::sync::Mutex<Option<B256>> = std::sync::Mutex::new(None);
        let ledger_error: std::sync::Mutex<Option<DatabaseError>> = std::sync::Mutex::new(None);
        let call = ExactEvm::settlement_call(&checked);
        let sent = self
            .sender
            .send_recorded(
                TxRequest {
                    to: Some(call.to),
                    data: call.data,
                    value: U256::ZERO,
                    gas_limit: Some(SETTLE_GAS_LIMIT),
                },
                |hash, nonce| {
                    let submission = Submission {
                        tx_hash: hash,
                        sender: self.sender.address(),
                        sender_nonce: nonce,
                        valid_before_s,
                        pending_response: pending(hash),
                    };
                    let (recorded, ledger_error) = (&recorded, &ledger_error);
                    async move {
                        match self
                            .ledger
                            .mark_submitted(key, &self.holder, &submission)
                            .await
                        {
                            Ok(()) => {
                                *recorded.lock().expect("lock") = Some(hash);
                                Ok(())
                            }
                            Err(error) => {
                                *ledger_error.lock().expect("lock") = Some(error);
                                Err(ChainError::Rejected(
                                    "the settlement ledger did not record the transaction".into(),
                                ))
                            }
                        }
                    }
                },
            )
            .await;
        let recorded = *recorded.lock().expect("lock");
        let ledger_error = ledger_error.lock().expect("lock").take();
        let hash = match (sent, recorded, ledger_error) {
            (Ok(hash), _, _) => hash,
            (Err(_), _, Some(DatabaseError::Transition { .. })) => return Settled::ClaimLost,
            (Err(_), _, Some(error)) => {
                self.release_claim(key).await;
                return Settled::Done(ledger_failure(error, Some(payer), network), false);
            }
            // The answer to the broadcast was lost: it may be in a mempool. The row stays
            // `submitted`; wait for the receipt as if it had been sent.
            (
                Err(error @ (ChainError::Transport(_) | ChainError::Timeout(_))),
                Some(hash),
                None,
            ) => {
                tracing::warn!(%error, tx = %hash, "settlement broadcast answer lost; waiting for its receipt");
                hash
            }
            (Err(error), recorded, None) => {
                return self
                    .refused_broadcast(key, recorded, error, payer, network)
                    .await;
            }
        };
        self.await_receipt(key, &checked, hash, pending(hash), network)
            .await
    }

    /// The node definitively refused the settlement transaction (or it was never signed): nothing
    /// was broadcast; the authorization is freed so the payer may retry.
    async fn refused_broadcast(
        &self,
        key: &SettlementKey,
        recorded: Option<B256>,
        error: ChainError,
        payer: ChainAddress,
        network: String,
    ) -> Settled {
        let released = match recorded {
            Some(hash) => self
                .ledger
                .release_unsent(std::slice::from_ref(key), hash)
                .await
                .map(|_| ()),
            None => self
                .ledger
                .release(key, Some(&self.holder))
                .await
                .map(|_| ()),
        };
        if let Err(release_error) = released {
            tracing::error!(%release_error, %key, "could not release a refused settlement");
        }
        tracing::warn!(%error, payer = %payer, "settlement transaction was not accepted");
        Settled::Done(
            SettleResponse::failed(
                Reason::UNEXPECTED_SETTLE_ERROR,
                error.to_string(),
                Some(payer),
                network,
            ),
            false,
        )
    }

    /// Waits for a recorded, broadcast settlement transaction to be mined and records its
    /// outcome.
    async fn await_receipt(
        &self,
        key: &SettlementKey,
        checked: &CheckedPayment,
        hash: B256,
        pending: SettleResponse,
        network: String,
    ) -> Settled {
        let payer = ChainAddress::from(checked.payer);
        let authorization = &checked.payload.authorization;
        match batch::confirmed_receipt(
            self.chain.as_ref(),
            hash,
            self.config.confirmations,
            SETTLE_RECEIPT_TIMEOUT,
        )
        .await
        {
            Ok(receipt) => {
                self.metrics
                    .gas_spent(receipt.gas_used, receipt.effective_gas_price);
                let (mut outcome, mut state) = mined_outcome(&pending, hash, receipt.success);
                if receipt.success {
                    tracing::info!(tx = %hash, payer = %payer, value = %authorization.value, "settled");
                } else if let Some(paid_by) = self
                    .used_to_pay(
                        ExactEvm::checked_key(checked),
                        Some(ExactEvm::terms(checked)),
                    )
                    .await
                {
                    // Another transaction used the authorization first and paid exactly this.
                    tracing::warn!(tx = %hash, %paid_by, "settlement transaction reverted; the authorization was paid by another transaction");
                    outcome = paid_response(checked.payer, paid_by, network.clone());
                    state = SettlementState::Confirmed;
                }
                self.record_finish(key, &outcome, state).await;
                Settled::Done(outcome, true)
            }
            // Broadcast but not seen mined: the ledger keeps it `submitted`, so a retry waits on
            // the chain rather than sending again, and recovery finishes it.
            Err(error) => Settled::Done(
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("transaction {hash} was sent but not confirmed: {error}"),
                    Some(payer),
                    network,
                ),
                false,
            ),
        }
    }

    /// Gives up this process's claim on `key` (nothing was broadcast for it).
    pub(super) async fn release_claim(&self, key: &SettlementKey) {
        if let Err(error) = self.ledger.release(key, Some(&self.holder)).await {
            tracing::error!(%error, %key, "could not release a refused settlement");
        }
    }

    pub(super) async fn record_finish(
        &self,
        key: &SettlementKey,
        outcome: &SettleResponse,
        state: SettlementState,
    ) {
        if let Err(error) = self.ledger.finish(key, outcome, state).await {
            // Another process finishing the same mined transaction first is expected; the outcome
            // is the same, derived from the same receipt.
            tracing::debug!(%error, %key, "settlement already finished");
        }
    }

    /// Verifies and simulates, then queues the settlement for a batch and waits for its outcome.
    pub(super) async fn settle_batched(
        &self,
        batcher: &Batcher,
        request: &FacilitatorRequest,
        key: &SettlementKey,
        network: String,
    ) -> (SettleResponse, bool) {
        let prepared = if batcher.simulate_items() {
            self.prepare(request, network.clone()).await
        } else {
            self.check(request).await.map_err(|invalid| {
                SettleResponse::failed(
                    invalid.reason,
                    invalid.message,
                    invalid.payer.map(ChainAddress::from),
                    network.clone(),
                )
            })
        };
        let checked = match prepared {
            Ok(checked) => checked,
            Err(refusal) => {
                self.release_claim(key).await;
                return (refusal, false);
            }
        };
        let payer = ChainAddress::from(checked.payer);
        let (reply, outcome) = oneshot::channel();
        let queued = Queued {
            key: key.clone(),
            item: ExactEvm::batch_item(&checked),
            pending: SettleResponse {
                success: true,
                error_reason: None,
                error_message: None,
                payer: Some(payer.clone()),
                transaction: ChainTx::default(),
                network: network.clone(),
            },
            valid_before_s: ExactEvm::valid_before_seconds(&checked),
            reply,
        };
        if !batcher.enqueue(queued) {
            self.release_claim(key).await;
            return (
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!(
                        "the settlement queue is full ({} waiting); try again shortly",
                        batch::BATCH_QUEUE_MAX
                    ),
                    Some(payer),
                    network,
                ),
                false,
            );
        }
        match outcome.await {
            Ok(outcome) => outcome,
            Err(_) => (
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    "the batcher stopped before this settlement finished",
                    Some(payer),
                    network,
                ),
                false,
            ),
        }
    }

    /// Verifies and simulates. `Err` is a refusal.
    pub(super) async fn prepare(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> Result<CheckedPayment, SettleResponse> {
        let checked = match self.check(request).await {
            Ok(checked) => checked,
            Err(invalid) => {
                let payer = invalid.payer.map(ChainAddress::from);
                return Err(SettleResponse::failed(
                    invalid.reason,
                    invalid.message,
                    payer,
                    network,
                ));
            }
        };
        let payer = ChainAddress::from(checked.payer);
        let call = ExactEvm::settlement_call(&checked);
        let refused = |reason: Reason, message: String| {
            SettleResponse::failed(reason, message, Some(payer.clone()), network.clone())
        };

        // Simulate first: a transaction that would revert costs gas and settles nothing.
        let simulated = self
            .chain
            .call(CallRequest {
                from: Some(self.sender.address()),
                to: Some(call.to),
                data: call.data,
                value: U256::ZERO,
            })
            .await;
        match simulated {
            Ok(CallOutcome::Success(_)) => {}
            Ok(CallOutcome::Revert(data)) => {
                return Err(refused(
                    Reason::SIMULATION_FAILED,
                    format!(
                        "transferWithAuthorization would revert: {}",
                        describe_revert(&data)
                    ),
                ));
            }
            Err(error) => return Err(refused(Reason::UNEXPECTED_SETTLE_ERROR, error.to_string())),
        }
        Ok(checked)
    }
}

/// What a settle does first ([`LocalFacilitator::join_or_lead`]).
enum Action {
    Return(SettleResponse),
    Join(watch::Receiver<Option<SettleResponse>>),
    Lead(watch::Sender<Option<SettleResponse>>),
    VerifyAlone,
}

/// How [`LocalFacilitator::settle_claimed`] ended.
pub(super) enum Settled {
    /// The outcome, and whether it is final (to be remembered).
    Done(SettleResponse, bool),
    /// The claim was taken over by another process before the broadcast was recorded; nothing
    /// was sent.
    ClaimLost,
}

/// The answer for an authorization that `hash` used to pay.
pub(super) fn paid_response(payer: Address, hash: B256, network: String) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(payer.into()),
        transaction: hash.into(),
        network,
    }
}

/// The outcome of a mined settlement transaction: the pending response, or a revert.
pub(super) fn mined_outcome(
    pending: &SettleResponse,
    hash: B256,
    success: bool,
) -> (SettleResponse, SettlementState) {
    if success {
        (pending.clone(), SettlementState::Confirmed)
    } else {
        (
            SettleResponse::failed(
                Reason::TRANSACTION_FAILED,
                format!("transaction {hash} reverted"),
                pending.payer.clone(),
                pending.network.clone(),
            ),
            SettlementState::Failed,
        )
    }
}

pub(super) fn in_progress(payer: Option<ChainAddress>, network: String) -> SettleResponse {
    SettleResponse::failed(
        Reason::SETTLEMENT_IN_PROGRESS,
        "another payment with this authorization nonce is being settled",
        payer,
        network,
    )
}

pub(super) fn ledger_failure(
    error: DatabaseError,
    payer: Option<ChainAddress>,
    network: String,
) -> SettleResponse {
    tracing::error!(%error, "settlement ledger unavailable");
    SettleResponse::failed(
        Reason::UNEXPECTED_SETTLE_ERROR,
        "the settlement ledger is unavailable",
        payer,
        network,
    )
}

pub(super) async fn wait_for_outcome(
    outcome: &mut watch::Receiver<Option<SettleResponse>>,
    network: String,
) -> SettleResponse {
    match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone().expect("waited for Some"),
        Err(_) => SettleResponse::failed(
            Reason::UNEXPECTED_SETTLE_ERROR,
            "the settlement this request joined did not finish",
            None,
            network,
        ),
    }
}

/// The x402 `payment-identifier` of a payment: `extensions["payment-identifier"].info.id`.
/// `Ok(None)` without one; `Err` for an id that is not a string of 16 to 128 characters from
/// `A-Z a-z 0-9 _ -`.
pub fn payment_identifier(request: &FacilitatorRequest) -> Result<Option<String>, String> {
    let Some(extension) = request
        .payload
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get(PAYMENT_IDENTIFIER_EXTENSION))
    else {
        return Ok(None);
    };
    let Some(id) = extension.get("info").and_then(|info| info.get("id")) else {
        // Declared (as a server echoes it) but no id chosen.
        return Ok(None);
    };
    match id.as_str() {
        Some(id) if bursar_store::valid_payment_id(id) => Ok(Some(id.to_string())),
        _ => Err(format!(
            "payment-identifier must be a string of {} to {} characters from A-Z a-z 0-9 _ -",
            bursar_store::PAYMENT_ID_CHARS_MIN,
            bursar_store::PAYMENT_ID_CHARS_MAX
        )),
    }
}

pub(super) fn payment_id_conflict(
    id: &str,
    payer: Option<ChainAddress>,
    network: String,
) -> SettleResponse {
    SettleResponse::failed(
        Reason::other(PAYMENT_ID_CONFLICT),
        format!("payment-identifier {id:?} was already used for a different payment"),
        payer,
        network,
    )
}

/// Identifies one exact payment: the signed authorization plus what it was checked against.
/// The ledger records it (as 0x hex) to tell a duplicate from another payment reusing a nonce.
pub fn payment_fingerprint(request: &FacilitatorRequest) -> B256 {
    let requirements = &request.requirements;
    // An address in its one stored form (lowercase 0x hex); anything else as given (such a
    // payment fails verification whatever its fingerprint).
    let address = |spelled: &ChainAddress| {
        spelled.evm().map_or_else(
            || spelled.as_str().to_string(),
            |address| format!("{address:#x}"),
        )
    };
    let material = serde_json::json!([
        request.payload.payload.to_json_value(),
        requirements.scheme,
        requirements.network.caip2(),
        address(&requirements.asset),
        address(&requirements.pay_to),
        requirements.amount,
        network_name(&requirements.network, request.version),
    ]);
    keccak256(material.to_string())
}
