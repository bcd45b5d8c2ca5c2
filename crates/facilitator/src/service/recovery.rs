//! Recovery: finishing or releasing what a stopped process left unfinished in the settlement
//! ledger. Never broadcasts.

//! Verification and exactly-once settlement, independent of HTTP.

use std::time::Duration;

use alloy_primitives::B256;
use bursar_chain::Token;
use bursar_protocol::{Reason, SettleResponse};
use bursar_store::{DatabaseError, SettlementKey, SettlementRecord, SettlementState};

use crate::batch;
use crate::paid::Terms;
use crate::scheme::PaymentKey;

use super::settle::{mined_outcome, paid_response};

use super::{LocalFacilitator, duration_ms, now_ms, now_seconds};

impl LocalFacilitator {
    /// The outcome a mined transaction gives a `submitted` row: per item for a batch. A
    /// transaction that did not use the row's authorization because another one did first gives
    /// success with that one, if it paid what the row's payment names.
    pub(super) async fn mined_row_outcome(
        &self,
        record: &SettlementRecord,
        pending: &SettleResponse,
        hash: B256,
        receipt: &bursar_chain::Receipt,
    ) -> (SettleResponse, SettlementState) {
        let authorization = authorization_of(&record.key);
        let terms = record_terms(record);
        if receipt.success
            && let Some(outcome) = batch::receipt_item_outcome(
                receipt,
                authorization.asset,
                authorization.payer,
                authorization.nonce,
            )
        {
            let item = batch::ItemRef {
                token: authorization.asset,
                payer: authorization.payer,
                nonce: authorization.nonce,
                terms,
            };
            return batch::item_response(self.chain.clone(), pending, &item, hash, outcome).await;
        }
        let (outcome, state) = mined_outcome(pending, hash, receipt.success);
        if state == SettlementState::Failed
            && terms.is_some()
            && let Some(paid_by) = self.used_to_pay(authorization, terms).await
        {
            return (
                paid_response(authorization.payer, paid_by, pending.network.clone()),
                SettlementState::Confirmed,
            );
        }
        (outcome, state)
    }

    /// Finishes or releases what a previous life of this facilitator (or another process sharing
    /// its ledger) left unfinished. Call it at startup, before serving; see the crate docs for
    /// the rules. Never broadcasts anything.
    pub async fn recover(&self) -> Result<Vec<Recovered>, DatabaseError> {
        self.recover_rows(None).await
    }

    /// Recovers again every `every`, for as long as the process runs, in a task of its own:
    /// what a crash (of this process or of another sharing the ledger) left behind is finished
    /// or released without waiting for the next restart. Each pass is [`LocalFacilitator::recover`]
    /// over rows untouched for `every` (rows being worked on are left to their holders). Like
    /// recovery at startup, it never broadcasts.
    pub fn spawn_recovery(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: startup recovery has just run.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match this.recover_rows(Some(every)).await {
                    Ok(recovered) => {
                        let finished = recovered
                            .iter()
                            .filter(|r| !matches!(r.outcome, RecoveryOutcome::Pending { .. }))
                            .count();
                        if finished > 0 {
                            tracing::info!(
                                finished,
                                "background recovery finished or released settlements"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "background recovery could not read the ledger; trying again later")
                    }
                }
            }
        })
    }

    /// Recovery over abandoned `received` claims and the `submitted` rows (all of them, or those
    /// untouched for `idle_for`).
    pub(super) async fn recover_rows(
        &self,
        idle_for: Option<Duration>,
    ) -> Result<Vec<Recovered>, DatabaseError> {
        let network = self.network();
        let idle_cutoff_ms = idle_for.map(|idle| now_ms().saturating_sub(duration_ms(idle)));
        let mut recovered = Vec::new();
        for record in self.ledger.received_before(i64::MAX).await? {
            if *record.key.network() != network || !self.abandoned(&record) {
                continue;
            }
            let outcome = self.recover_received(&record).await;
            tracing::warn!(key = %record.key, outcome = ?outcome, "abandoned settlement claim");
            recovered.push(Recovered {
                tx_hash: None,
                key: record.key,
                outcome,
            });
        }
        for record in self.ledger.unfinished().await? {
            if *record.key.network() != network
                || idle_cutoff_ms.is_some_and(|cutoff| record.updated_at_ms > cutoff)
            {
                continue;
            }
            let abandoned = self.abandoned(&record);
            let outcome = self.recover_submitted(&record, abandoned).await;
            match &outcome {
                RecoveryOutcome::Pending { why } => {
                    tracing::warn!(key = %record.key, why = %why, "settlement left unfinished")
                }
                finished => tracing::info!(key = %record.key, outcome = ?finished, "recovered"),
            }
            recovered.push(Recovered {
                tx_hash: record.tx_hash,
                key: record.key,
                outcome,
            });
        }
        Ok(recovered)
    }

    /// An abandoned `received` claim: nothing was broadcast for it (the broadcast is recorded
    /// first). Unused on chain → released, so the payer may retry at once. Used → paid by a
    /// transaction of someone else's (or of a version of this facilitator that recorded after
    /// broadcasting): confirmed with that transaction if it moved what the payment names.
    pub(super) async fn recover_received(&self, record: &SettlementRecord) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let authorization = authorization_of(&record.key);
        let token = Token::new(self.chain.clone(), authorization.asset);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Err(error) => pending(format!("cannot read the authorization state: {error}")),
            Ok(false) => match self
                .ledger
                .release(&record.key, record.holder.as_deref())
                .await
            {
                Ok(true) => RecoveryOutcome::Released,
                Ok(false) => pending("the claim changed while it was being released".into()),
                Err(error) => pending(format!("cannot release the claim: {error}")),
            },
            Ok(true) => {
                let network = record
                    .response
                    .as_ref()
                    .map_or_else(|| self.network().caip2(), |r| r.network.clone());
                self.finish_used(record, authorization, network).await
            }
        }
    }

    /// Records the outcome of a row whose authorization the chain shows used, with no receipt of
    /// its own transaction: confirmed with the transaction that paid, or failed when another
    /// authorization with the same nonce was used.
    pub(super) async fn finish_used(
        &self,
        record: &SettlementRecord,
        authorization: PaymentKey,
        network: String,
    ) -> RecoveryOutcome {
        let (outcome, state) = match self.used_to_pay(authorization, record_terms(record)).await {
            Some(hash) => (
                paid_response(authorization.payer, hash, network),
                SettlementState::Confirmed,
            ),
            None => (
                SettleResponse::failed(
                    Reason::NONCE_ALREADY_USED,
                    "the authorization nonce was used by a transaction that did not make this payment",
                    Some(authorization.payer.into()),
                    network,
                ),
                SettlementState::Failed,
            ),
        };
        self.finish_recovered(record, outcome, state).await
    }

    pub(super) async fn finish_recovered(
        &self,
        record: &SettlementRecord,
        outcome: SettleResponse,
        state: SettlementState,
    ) -> RecoveryOutcome {
        if let Err(error) = self.ledger.finish(&record.key, &outcome, state).await {
            return RecoveryOutcome::Pending {
                why: format!("cannot record the outcome: {error}"),
            };
        }
        match state {
            SettlementState::Confirmed => RecoveryOutcome::Confirmed,
            _ => RecoveryOutcome::Failed {
                reason: outcome
                    .error_reason
                    .clone()
                    .unwrap_or(Reason::UNEXPECTED_SETTLE_ERROR),
                message: outcome.error_message.clone().unwrap_or_default(),
            },
        }
    }

    /// A `submitted` row: finished from its receipt when mined; from the chain when the
    /// authorization was used elsewhere or expired unused; released when its holder is gone
    /// (`abandoned`) and its transaction provably never reached the chain: no receipt, and the
    /// sending account's nonce either never reached the recorded one (not even pending) or moved
    /// past it with another transaction. Otherwise it may still be in a mempool: left pending.
    pub(super) async fn recover_submitted(
        &self,
        record: &SettlementRecord,
        abandoned: bool,
    ) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let Some((hash, pending_response)) = submitted_transaction(record) else {
            return pending("the row has no readable transaction hash or response".into());
        };
        let authorization = authorization_of(&record.key);
        match self.chain.receipt(hash).await {
            Err(error) => return pending(format!("cannot read the receipt of {hash}: {error}")),
            Ok(Some(receipt)) => {
                let (outcome, state) = self
                    .mined_row_outcome(record, &pending_response, hash, &receipt)
                    .await;
                return self.finish_recovered(record, outcome, state).await;
            }
            Ok(None) => {}
        }
        let token = Token::new(self.chain.clone(), authorization.asset);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Err(error) => return pending(format!("cannot read the authorization state: {error}")),
            Ok(true) => {
                return self
                    .finish_used(record, authorization, pending_response.network.clone())
                    .await;
            }
            Ok(false) => {}
        }
        let chain_now = match self.chain.latest_block().await {
            Ok(block) => block.timestamp,
            Err(_) => now_seconds(),
        };
        let valid_before = record.valid_before_s.unwrap_or(u64::MAX);
        if chain_now >= valid_before {
            let outcome = SettleResponse::failed(
                Reason::VALID_BEFORE,
                format!(
                    "transaction {hash} was never mined and the authorization expired at {valid_before}; nothing was transferred"
                ),
                pending_response.payer.clone(),
                pending_response.network.clone(),
            );
            return self
                .finish_recovered(record, outcome, SettlementState::Failed)
                .await;
        }
        if !abandoned {
            return pending(format!(
                "transaction {hash} is not mined yet and its holder is at work"
            ));
        }
        let (Some(sender), Some(nonce)) = (record.sender, record.sender_nonce) else {
            return pending(format!(
                "transaction {hash} is not mined and the authorization is unused and valid until {valid_before}; the row does not name its sending account, so it waits"
            ));
        };
        let (pending_count, mined_count) = match tokio::try_join!(
            self.chain.transaction_count(sender),
            self.chain.mined_transaction_count(sender)
        ) {
            Ok(counts) => counts,
            Err(error) => return pending(format!("cannot read the nonce of {sender}: {error}")),
        };
        if pending_count > nonce && mined_count <= nonce {
            return pending(format!(
                "transaction {hash} (nonce {nonce} of {sender}) may be in a mempool; the authorization is unused and valid until {valid_before}"
            ));
        }
        // Never reached the node, or its nonce went to another mined transaction: it can
        // never be mined. Free the authorization so the payer's retry settles it.
        match self
            .ledger
            .release_unsent(std::slice::from_ref(&record.key), hash)
            .await
        {
            Ok(1) => RecoveryOutcome::Released,
            Ok(_) => pending("the row changed while it was being released".into()),
            Err(error) => pending(format!("cannot release the settlement: {error}")),
        }
    }
}

/// What [`LocalFacilitator::recover`] did with one unfinished settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub key: SettlementKey,
    /// The transaction the row recorded, if it recorded one.
    pub tx_hash: Option<B256>,
    pub outcome: RecoveryOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryOutcome {
    /// Paid on chain (by its transaction or by the one that used its authorization): recorded
    /// as confirmed with the response a live settle gives.
    Confirmed,
    /// Mined and reverted with nothing paid, superseded by another authorization with the same
    /// nonce, or expired unmined: recorded as failed.
    Failed { reason: Reason, message: String },
    /// Left as it was (its transaction may still be mined, or the chain could not be read).
    Pending { why: String },
    /// Nothing was or can ever be broadcast for it and its authorization is unused: deleted, so
    /// the payer's retry settles it.
    Released,
}

/// The authorization a ledger key names.
pub(super) fn authorization_of(key: &SettlementKey) -> PaymentKey {
    PaymentKey {
        asset: key.asset(),
        payer: key.payer(),
        nonce: key.nonce(),
    }
}

/// What a row's payment pays, when the row recorded it.
pub(super) fn record_terms(record: &SettlementRecord) -> Option<Terms> {
    Some(Terms {
        pay_to: record.pay_to?,
        value: record.amount?.atomic(),
    })
}

/// The transaction and the response it will give, of a `submitted` row.
pub(super) fn submitted_transaction(record: &SettlementRecord) -> Option<(B256, SettleResponse)> {
    let hash = record.tx_hash?;
    Some((hash, record.response.clone()?))
}
