//! Two-phase accounting against the chain: a pending transfer is posted when the token shows
//! its authorization used and voided when the chain proves it can never be used.

use std::time::Duration;

use alloy_primitives::{Address, B256};
use alloy_sol_types::SolEvent;
use bursar_chain::Token;
use bursar_contracts::BursarUSD;
use bursar_store::runtime::{TransferRecord, TransferState};

use super::{RESOLVE_BATCH_MAX, Resolution, Runtime};
use crate::error::RuntimeError;

impl Runtime {
    /// Consults the chain about one pending transfer and posts or voids it when the chain
    /// decides: posted when the token shows the authorization used (with the transaction, when
    /// a receipt proves it), voided when it is unused and `validBefore` has passed on chain.
    pub async fn resolve_transfer(
        &self,
        transfer: &TransferRecord,
    ) -> Result<Resolution, RuntimeError> {
        if transfer.state != TransferState::Pending {
            return Ok(Resolution::AlreadyResolved);
        }
        let evidence = self.chain_evidence(transfer).await?;
        let resolution = match evidence {
            ChainEvidence::Used { tx_hash } => {
                if self.inner.store.post(&transfer.id, tx_hash).await? {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, tx = ?tx_hash, "payment posted");
                    Resolution::Posted { tx_hash }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Expired => {
                let reason = "expired_unused";
                if self.inner.store.void(&transfer.id, reason).await? {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, "reservation voided: authorization expired unused");
                    Resolution::Voided {
                        reason: reason.into(),
                    }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Cancelled { tx_hash } => {
                let reason = "cancelled";
                if self.inner.store.void(&transfer.id, reason).await? {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, tx = %tx_hash, "reservation voided: authorization cancelled on chain");
                    Resolution::Voided {
                        reason: reason.into(),
                    }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Unused => Resolution::StillPending,
        };
        Ok(resolution)
    }

    /// What the chain says about a transfer's authorization.
    pub(crate) async fn chain_evidence(
        &self,
        transfer: &TransferRecord,
    ) -> Result<ChainEvidence, RuntimeError> {
        let (payer, asset, nonce) = authorization_key(transfer);
        if transfer.network != self.currency().network {
            return Err(RuntimeError::Internal(format!(
                "transfer {} is on {}, this runtime watches {}",
                transfer.id,
                transfer.network,
                self.currency().network
            )));
        }
        let verified_tx = match &transfer.tx_hash {
            Some(hash) => self.receipt_proves(*hash, asset, payer, nonce).await?,
            None => None,
        };
        if verified_tx.is_some() {
            return Ok(ChainEvidence::Used {
                tx_hash: verified_tx,
            });
        }
        let token = Token::new(self.inner.chain.clone(), asset);
        // `authorizationState` is true once the nonce is used *or cancelled*: a cancel the
        // runtime sent and recorded, whose receipt shows it, is not a payment.
        let used_or_cancelled = || async {
            match crate::compensation::cancel_proof(self, transfer, asset, payer, nonce).await? {
                Some(tx_hash) => Ok::<_, RuntimeError>(ChainEvidence::Cancelled { tx_hash }),
                None => Ok(ChainEvidence::Used { tx_hash: None }),
            }
        };
        if token.authorization_state(payer, nonce).await? {
            return used_or_cancelled().await;
        }
        let head = self.inner.chain.latest_block().await?;
        if head.timestamp >= transfer.valid_before_s {
            // Every later block is later still: the authorization can never be used.
            // Read the state once more, in case it was used in the block we just saw.
            if token.authorization_state(payer, nonce).await? {
                return used_or_cancelled().await;
            }
            return Ok(ChainEvidence::Expired);
        }
        Ok(ChainEvidence::Unused)
    }

    /// The transaction hash if its receipt shows the token marking this authorization used.
    async fn receipt_proves(
        &self,
        hash: B256,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> Result<Option<B256>, RuntimeError> {
        let Some(receipt) = self.inner.chain.receipt(hash).await? else {
            return Ok(None);
        };
        let used = receipt.success
            && receipt.logs.iter().any(|log| {
                log.address == asset
                    && log.topics.len() == 3
                    && log.topics[0] == BursarUSD::AuthorizationUsed::SIGNATURE_HASH
                    && log.topics[1] == payer.into_word()
                    && log.topics[2] == nonce
            });
        Ok(used.then_some(hash))
    }

    /// One pass over pending transfers (oldest first). Returns how many were posted and voided.
    pub async fn resolve_pending(&self) -> Result<(usize, usize), RuntimeError> {
        let pending = self
            .inner
            .store
            .pending_transfers(RESOLVE_BATCH_MAX)
            .await?;
        let mut posted = 0;
        let mut voided = 0;
        for transfer in pending {
            match self.resolve_transfer(&transfer).await {
                Ok(Resolution::Posted { .. }) => posted += 1,
                Ok(Resolution::Voided { .. }) => voided += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(transfer = %transfer.id, %error, "could not resolve transfer")
                }
            }
        }
        // Compensations waiting on the chain's decision (made in this pass or elsewhere) finish.
        match self.finish_compensations(RESOLVE_BATCH_MAX).await {
            Ok(0) => {}
            Ok(finished) => tracing::info!(finished, "compensations finished"),
            Err(error) => tracing::warn!(%error, "could not finish compensations"),
        }
        Ok((posted, voided))
    }

    /// Runs [`Runtime::resolve_pending`] every `interval` until the task is aborted.
    pub fn spawn_resolver(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = runtime.resolve_pending().await {
                    tracing::warn!(%error, "resolver pass failed");
                }
            }
        })
    }
}

/// What the chain says about one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChainEvidence {
    /// Used on chain; the transaction when a receipt proves it.
    Used { tx_hash: Option<B256> },
    /// Unused and can never be used any more.
    Expired,
    /// Cancelled on chain by the runtime's recorded `cancelAuthorization` (its receipt shows
    /// `AuthorizationCanceled` for this nonce): it can never be used.
    Cancelled { tx_hash: B256 },
    /// Unused and still valid.
    Unused,
}

pub(crate) fn authorization_key(transfer: &TransferRecord) -> (Address, Address, B256) {
    (transfer.payer, transfer.asset, transfer.nonce)
}
