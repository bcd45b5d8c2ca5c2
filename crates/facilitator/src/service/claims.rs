//! Claims in the settlement ledger: claiming an authorization, or following the process that
//! holds it (another one, or an earlier life of this one) until it finishes or is gone.

//! Verification and exactly-once settlement, independent of HTTP.

use std::time::Instant;

use alloy_primitives::B256;
use bursar_chain::Token;
use bursar_protocol::{Amount, ChainAddress, FacilitatorRequest, Reason, SettleResponse};
use bursar_store::{
    Claim, Claimant, DatabaseError, SettlementKey, SettlementRecord, SettlementState,
};

use crate::paid::{self, Terms};
use crate::scheme::PaymentKey;

use super::recovery::submitted_transaction;
use super::settle::{Settled, in_progress, ledger_failure, paid_response, payment_id_conflict};

use super::recovery::RecoveryOutcome;
use super::settle::payment_identifier;
use super::{
    HELD_CLAIM_WAIT, LocalFacilitator, SETTLE_RECEIPT_TIMEOUT, SETTLED_ELSEWHERE_WAIT_TIMEOUT,
    SETTLEMENT_LEDGER_POLL_INTERVAL, duration_ms, now_ms,
};

impl LocalFacilitator {
    /// Settles through the ledger: claim the authorization, or follow whoever holds it.
    /// Returns the outcome and whether it is final (to be remembered in memory).
    pub(super) async fn settle_durably(
        &self,
        request: &FacilitatorRequest,
        key: PaymentKey,
        fingerprint: B256,
        terms: Terms,
        network: String,
    ) -> (SettleResponse, bool) {
        let ledger_key = self.ledger_key(key);
        let payer = Some(key.payer.into());
        let deadline = Instant::now() + SETTLED_ELSEWHERE_WAIT_TIMEOUT;
        let payment_id = payment_identifier(request).ok().flatten();
        let claimant = Claimant {
            fingerprint,
            holder: self.holder.clone(),
            payment_id: payment_id.clone(),
            pay_to: terms.pay_to,
            amount: Amount::from_atomic(terms.value),
        };
        loop {
            let claim = match self.ledger.claim(&ledger_key, &claimant).await {
                Ok(claim) => claim,
                Err(error) => return (ledger_failure(error, payer, network), false),
            };
            let record = match claim {
                Claim::Claimed => match self
                    .settle_claimed(request, &ledger_key, network.clone())
                    .await
                {
                    Settled::Done(outcome, remember) => return (outcome, remember),
                    // Another process took the claim over before the broadcast was recorded:
                    // nothing was sent; follow the new holder.
                    Settled::ClaimLost => continue,
                },
                Claim::PaymentIdConflict { .. } => {
                    let id = payment_id.as_deref().unwrap_or_default();
                    return (payment_id_conflict(id, payer, network), false);
                }
                Claim::Existing(record) => record,
            };
            if record.fingerprint != fingerprint {
                // Another payment holds this authorization.
                let outcome = if record.state.is_final() {
                    self.refuse_reused_nonce(request, network).await
                } else if record.state == SettlementState::Received
                    && self.abandoned(&record)
                    && matches!(
                        self.ledger
                            .release(&record.key, record.holder.as_deref())
                            .await,
                        Ok(true)
                    )
                {
                    // Its holder stopped before broadcasting anything: free it and claim again.
                    continue;
                } else {
                    in_progress(payer, network)
                };
                return (outcome, false);
            }
            match self.follow(*record, deadline, key, terms).await {
                Ok(Followed::Finished(outcome)) => return (outcome, true),
                // Released before broadcast (by its holder or by recovery): claim it again.
                Ok(Followed::Released) => continue,
                // Its holder died before recording a broadcast; the claim is now ours.
                Ok(Followed::TakenOver) => {
                    match self
                        .settle_claimed(request, &ledger_key, network.clone())
                        .await
                    {
                        Settled::Done(outcome, remember) => return (outcome, remember),
                        Settled::ClaimLost => continue,
                    }
                }
                Ok(Followed::Held { message }) => {
                    return (
                        SettleResponse::failed(
                            Reason::SETTLEMENT_IN_PROGRESS,
                            message,
                            payer,
                            network,
                        ),
                        false,
                    );
                }
                Ok(Followed::StillRunning) => return (in_progress(payer, network), false),
                Err(error) => return (ledger_failure(error, payer, network), false),
            }
        }
    }

    /// Whether the holder of an unfinished row is gone, so that its claim may be taken over or
    /// released, and an unmined transaction it recorded may be judged from the chain: the row is
    /// older than the claim hold, or was left by an earlier life of this instance. Rows this
    /// process holds are its own settlements at work, unless older than any of them can take.
    pub(super) fn abandoned(&self, record: &SettlementRecord) -> bool {
        let age_ms = now_ms().saturating_sub(record.updated_at_ms);
        let hold_ms = duration_ms(self.claim_hold);
        match record.holder.as_deref() {
            Some(holder) if holder == self.holder => {
                age_ms > hold_ms.saturating_add(duration_ms(SETTLE_RECEIPT_TIMEOUT))
            }
            Some(holder)
                if self
                    .instance_prefix
                    .as_deref()
                    .is_some_and(|prefix| holder.starts_with(prefix)) =>
            {
                true
            }
            _ => age_ms > hold_ms,
        }
    }

    /// Follows a settlement of this same payment held elsewhere (another process, an earlier
    /// life of this one): finishes it from the chain once its transaction is mined, takes over
    /// or releases what its dead holder left, and otherwise waits, at most until `deadline` for a
    /// broadcast transaction and [`HELD_CLAIM_WAIT`] for a claim nothing was broadcast for.
    pub(super) async fn follow(
        &self,
        mut record: SettlementRecord,
        deadline: Instant,
        authorization: PaymentKey,
        terms: Terms,
    ) -> Result<Followed, DatabaseError> {
        let started = Instant::now();
        let mut examined = false;
        loop {
            match record.state {
                SettlementState::Confirmed => {
                    return Ok(Followed::Finished(self.recorded_response(&record)));
                }
                SettlementState::Failed => {
                    let recorded = self.recorded_response(&record);
                    return Ok(Followed::Finished(
                        self.paid_after_all(&record.key, authorization, terms, recorded)
                            .await,
                    ));
                }
                SettlementState::Received => {
                    if self.abandoned(&record) {
                        // Nothing was broadcast for it, so an authorization the chain shows used
                        // was used by another transaction: answer from the chain, as recovery
                        // does, rather than take the claim over only to be refused for a used
                        // nonce.
                        let token = Token::new(self.chain.clone(), authorization.asset);
                        if let Ok(true) = token
                            .authorization_state(authorization.payer, authorization.nonce)
                            .await
                        {
                            let mut judged = record.clone();
                            judged.pay_to.get_or_insert(terms.pay_to);
                            judged
                                .amount
                                .get_or_insert(Amount::from_atomic(terms.value));
                            let network = self.network().caip2();
                            if let RecoveryOutcome::Confirmed | RecoveryOutcome::Failed { .. } =
                                self.finish_used(&judged, authorization, network).await
                                && let Some(finished) = self.ledger.get(&record.key).await?
                            {
                                return Ok(Followed::Finished(self.recorded_response(&finished)));
                            }
                        } else if self.ledger.take_over(&record, &self.holder).await? {
                            return Ok(Followed::TakenOver);
                        }
                    } else if started.elapsed() >= HELD_CLAIM_WAIT {
                        let lapses_in_ms = duration_ms(self.claim_hold)
                            .saturating_sub(now_ms().saturating_sub(record.updated_at_ms))
                            .max(0);
                        return Ok(Followed::Held {
                            message: format!(
                                "another facilitator process claimed this authorization and has not \
                                 broadcast it yet; if that process stopped, its claim lapses in {} s: \
                                 retry then",
                                (lapses_in_ms + 999) / 1_000
                            ),
                        });
                    }
                }
                SettlementState::Submitted => {
                    if let Some((hash, pending)) = submitted_transaction(&record)
                        && let Ok(Some(receipt)) = self.chain.receipt(hash).await
                    {
                        let (outcome, state) = self
                            .mined_row_outcome(&record, &pending, hash, &receipt)
                            .await;
                        self.record_finish(&record.key, &outcome, state).await;
                        return Ok(Followed::Finished(outcome));
                    }
                    if !examined && self.abandoned(&record) {
                        examined = true;
                        match self.recover_submitted(&record, true).await {
                            RecoveryOutcome::Released => return Ok(Followed::Released),
                            RecoveryOutcome::Pending { .. } => {}
                            RecoveryOutcome::Confirmed | RecoveryOutcome::Failed { .. } => {
                                if let Some(finished) = self.ledger.get(&record.key).await? {
                                    return Ok(Followed::Finished(
                                        self.recorded_response(&finished),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Followed::StillRunning);
            }
            tokio::time::sleep(SETTLEMENT_LEDGER_POLL_INTERVAL).await;
            match self.ledger.get(&record.key).await? {
                Some(again) => record = again,
                None => return Ok(Followed::Released),
            }
        }
    }

    /// The response a final row recorded.
    pub(super) fn recorded_response(&self, record: &SettlementRecord) -> SettleResponse {
        record.response.clone().unwrap_or_else(|| {
            SettleResponse::failed(
                Reason::UNEXPECTED_SETTLE_ERROR,
                format!("the ledger holds no response for settlement {}", record.key),
                None,
                self.network().caip2(),
            )
        })
    }

    /// A recorded failure, unless the chain shows the payment made after all (another
    /// transaction used the authorization and moved exactly what it names): then the row is
    /// corrected and the answer is success with that transaction. A paid authorization is never
    /// answered with an error.
    pub(super) async fn paid_after_all(
        &self,
        key: &SettlementKey,
        authorization: PaymentKey,
        terms: Terms,
        recorded: SettleResponse,
    ) -> SettleResponse {
        if recorded.success {
            return recorded;
        }
        let Some(hash) = self.used_to_pay(authorization, Some(terms)).await else {
            return recorded;
        };
        let paid = paid_response(authorization.payer, hash, recorded.network.clone());
        match self.ledger.correct_to_paid(key, &paid).await {
            Ok(_) => {
                tracing::warn!(%key, tx = %hash, "a settlement recorded as failed was paid on chain; corrected")
            }
            Err(error) => {
                tracing::error!(%error, %key, "could not correct a settlement paid on chain")
            }
        }
        paid
    }

    /// The transaction that used `authorization` to pay `terms`, when the token says it is used;
    /// `None` when unused, used otherwise, or the chain could not be read.
    pub(super) async fn used_to_pay(
        &self,
        authorization: PaymentKey,
        terms: Option<Terms>,
    ) -> Option<B256> {
        let token = Token::new(self.chain.clone(), authorization.asset);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                tracing::warn!(%error, "cannot read an authorization's state");
                return None;
            }
        }
        match paid::transaction_that_paid(
            self.chain.as_ref(),
            authorization.asset,
            authorization.payer,
            authorization.nonce,
            terms,
        )
        .await
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot search the chain for the transaction that used an authorization");
                None
            }
        }
    }

    /// A payment presenting an authorization the ledger holds for a different payment: verified
    /// on its own for the precise reason, and never broadcast.
    pub(super) async fn refuse_reused_nonce(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> SettleResponse {
        match self.check(request).await {
            Err(invalid) => {
                let payer = invalid.payer.map(ChainAddress::from);
                SettleResponse::failed(invalid.reason, invalid.message, payer, network)
            }
            Ok(checked) => SettleResponse::failed(
                Reason::NONCE_ALREADY_USED,
                format!(
                    "authorization nonce {} was already presented with a different payment",
                    checked.payload.authorization.nonce
                ),
                Some(checked.payer.into()),
                network,
            ),
        }
    }
}

/// Where a settlement held elsewhere stands after following it.
pub(super) enum Followed {
    /// Final: the recorded (or just derived) outcome.
    Finished(SettleResponse),
    /// Its row was released before broadcast: the authorization is free to claim.
    Released,
    /// Its holder was gone before recording a broadcast; this process holds the claim now.
    TakenOver,
    /// A live holder has claimed it and broadcast nothing yet.
    Held { message: String },
    /// Still unmined when the wait ran out.
    StillRunning,
}
