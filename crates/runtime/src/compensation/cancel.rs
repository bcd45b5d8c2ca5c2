//! Cancelling an unsettled authorization on chain (`cancelAuthorization`, signed by the
//! wallet, sent by the wallet or the configured gas account), and reading whether a recorded
//! cancel did cancel it.

use alloy_primitives::Bytes;

use super::*;

/// The recorded cancel transaction of a transfer, if its receipt shows the token cancelling
/// this authorization (`AuthorizationCanceled(payer, nonce)`, no `AuthorizationUsed`).
pub(crate) async fn cancel_proof(
    runtime: &Runtime,
    transfer: &TransferRecord,
    asset: Address,
    payer: Address,
    nonce: B256,
) -> Result<Option<B256>, RuntimeError> {
    let Some(record) = runtime
        .store()
        .compensation_store()
        .compensation_for(&transfer.id)
        .await?
    else {
        return Ok(None);
    };
    let Some(hash) = record.cancel_tx_hash else {
        return Ok(None);
    };
    let Some(receipt) = runtime.chain().receipt(hash).await? else {
        return Ok(None);
    };
    let event = |signature: B256| {
        receipt.logs.iter().any(|log| {
            log.address == asset
                && log.topics.len() == 3
                && log.topics[0] == signature
                && log.topics[1] == payer.into_word()
                && log.topics[2] == nonce
        })
    };
    let cancelled = receipt.success
        && event(BursarUSD::AuthorizationCanceled::SIGNATURE_HASH)
        && !event(BursarUSD::AuthorizationUsed::SIGNATURE_HASH);
    Ok(cancelled.then_some(hash))
}

/// How one cancel attempt ended.
pub(super) enum Cancel {
    /// Mined (or the authorization turned out used or cancelled already): resolve from the chain.
    Done,
    /// Not final: the outcome and message to record.
    NotYet(CompensationOutcome, String),
}

impl Runtime {
    /// Signs and sends `cancelAuthorization` for a pending transfer from the wallet itself, and
    /// waits for it to be mined.
    pub(super) async fn cancel(
        &self,
        record: &CompensationRecord,
        transfer: &TransferRecord,
        compensations: Arc<dyn CompensationStore>,
        account: &mut Option<Arc<Account>>,
    ) -> Cancel {
        if let Some(hash) = record.cancel_tx_hash
            && let Some(early) = self
                .earlier_cancel(hash, record, transfer, &compensations)
                .await
        {
            return early;
        }
        let (sender, data, gas_advice) = match self.prepare_cancel(transfer, account).await {
            Ok(prepared) => prepared,
            Err(not_yet) => return not_yet,
        };
        let (_, asset, _) = crate::service::authorization_key(transfer);
        let hash = match self
            .send_cancel(&sender, asset, data, record, &compensations, &gas_advice)
            .await
        {
            Ok(hash) => hash,
            Err(done_or_not_yet) => return done_or_not_yet,
        };
        tracing::info!(transfer = %transfer.id, tx = %format!("{hash:#x}"), "cancelAuthorization sent");
        let chain = self.chain();
        match bursar_chain::wait_for_receipt(chain.as_ref(), hash, CANCEL_RECEIPT_TIMEOUT).await {
            Ok(_) => Cancel::Done,
            Err(error) => Cancel::NotYet(
                CompensationOutcome::Cancelling,
                format!(
                    "cancel transaction {hash:#x} was sent but is not mined yet ({error}); mark the failure again later"
                ),
            ),
        }
    }

    /// A cancel sent earlier (`hash`): wait for it rather than send another. `None` when it
    /// reverted and the authorization is still unused (a cancel that ran out of gas, say): it
    /// is forgotten and another may be sent.
    async fn earlier_cancel(
        &self,
        hash: B256,
        record: &CompensationRecord,
        transfer: &TransferRecord,
        compensations: &Arc<dyn CompensationStore>,
    ) -> Option<Cancel> {
        let chain = self.chain().clone();
        match chain.receipt(hash).await {
            Ok(Some(receipt)) if receipt.success => Some(Cancel::Done),
            Ok(Some(_)) => {
                let (payer, asset, nonce) = crate::service::authorization_key(transfer);
                let retry = matches!(
                    bursar_chain::Token::new(chain.clone(), asset)
                        .authorization_state(payer, nonce)
                        .await,
                    Ok(false)
                ) && matches!(
                    compensations
                        .note_cancel_tx(&record.id, None, Some(hash))
                        .await,
                    Ok(true)
                );
                (!retry).then_some(Cancel::Done)
            }
            Ok(None) => Some(Cancel::NotYet(
                CompensationOutcome::Cancelling,
                format!(
                    "cancel transaction {hash:#x} is not mined yet; mark the failure again later"
                ),
            )),
            Err(error) => Some(Cancel::NotYet(
                CompensationOutcome::CancelFailed,
                format!("the chain is unavailable ({error}); mark the failure again later"),
            )),
        }
    }

    /// Who sends the cancel (the configured gas account, else the wallet itself), the signed
    /// `cancelAuthorization` call, and what to say if the sender cannot pay gas.
    async fn prepare_cancel(
        &self,
        transfer: &TransferRecord,
        account: &mut Option<Arc<Account>>,
    ) -> Result<(Arc<Account>, Bytes, String), Cancel> {
        let not_yet = |message: String| Cancel::NotYet(CompensationOutcome::CancelFailed, message);
        let chain = self.chain().clone();
        let (payer, asset, nonce) = crate::service::authorization_key(transfer);
        let signer = self
            .signer(&transfer.wallet_id)
            .await
            .map_err(|error| not_yet(format!("the wallet's key is unavailable: {error}")))?;
        let sender = match (self.cancel_gas_account(), account.as_ref()) {
            (Some(gas), _) => gas.clone(),
            (None, Some(wallet)) => wallet.clone(),
            (None, None) => {
                let wallet = Arc::new(Account::new(chain.clone(), (*signer).clone()));
                *account = Some(wallet.clone());
                wallet
            }
        };
        let gas_payer = sender.address();
        let gas_advice = format!(
            "{} {gas_payer} cannot pay gas for cancelAuthorization: send it a little native \
             currency and mark the failure again; until then {} stays reserved until \
             validBefore ({}) passes unused, or posts if the seller settles",
            if gas_payer == signer.address() {
                "wallet"
            } else {
                "gas account"
            },
            transfer.amount,
            transfer.valid_before_s
        );
        match chain.native_balance(gas_payer).await {
            Ok(balance) if balance == U256::ZERO => return Err(not_yet(gas_advice)),
            Ok(_) => {}
            Err(error) => {
                return Err(not_yet(format!(
                    "the chain is unavailable ({error}); mark the failure again later"
                )));
            }
        }
        let domain = token_domain(self, asset).await.map_err(|error| {
            not_yet(format!(
                "the token's EIP-712 domain could not be read: {error}"
            ))
        })?;
        let digest = bursar_contracts::cancel_authorization_signing_hash(payer, nonce, &domain);
        let signature = signer
            .sign_hash_sync(&digest)
            .map_err(|error| not_yet(format!("signing the cancel failed: {error}")))?
            .as_bytes();
        let data = bursar_contracts::cancel_authorization_call(payer, nonce, &signature);
        Ok((sender, data, gas_advice))
    }

    /// Sends the cancel, recording its hash before it is broadcast (so one sender at a time owns
    /// the cancel). `Err` carries how the attempt ended when nothing was sent.
    async fn send_cancel(
        &self,
        sender: &Account,
        asset: Address,
        data: Bytes,
        record: &CompensationRecord,
        compensations: &Arc<dyn CompensationStore>,
        gas_advice: &str,
    ) -> Result<B256, Cancel> {
        let id = record.id.clone();
        let recorder = compensations.clone();
        // The hash this call recorded (the sender signs again after a nonce resynchronization).
        let ours: Arc<std::sync::Mutex<Option<B256>>> = Arc::default();
        let mine = ours.clone();
        let sent = sender
            .send_recorded(
                TxRequest {
                    to: Some(asset),
                    data,
                    value: U256::ZERO,
                    gas_limit: None,
                },
                move |hash, _nonce| {
                    let (recorder, id, mine) = (recorder.clone(), id.clone(), mine.clone());
                    async move {
                        let previous = *mine.lock().expect("cancel hash slot");
                        let claimed = recorder
                            .note_cancel_tx(&id, Some(hash), previous)
                            .await
                            .map_err(|error| {
                                ChainError::Rejected(format!(
                                    "the cancel transaction could not be recorded: {error}"
                                ))
                            })?;
                        if !claimed {
                            return Err(ChainError::Rejected(ANOTHER_CANCEL.into()));
                        }
                        *mine.lock().expect("cancel hash slot") = Some(hash);
                        Ok(())
                    }
                },
            )
            .await;
        match sent {
            Ok(hash) => Ok(hash),
            // Gas estimation reverted: the nonce is used or cancelled already (nothing of ours was
            // recorded). The chain says which.
            Err(ChainError::Reverted(_)) => Err(Cancel::Done),
            Err(ChainError::Rejected(message)) if message == ANOTHER_CANCEL => Err(Cancel::NotYet(
                CompensationOutcome::Cancelling,
                "another cancel of this authorization is in flight; mark the failure again \
                     later"
                    .into(),
            )),
            Err(ChainError::Rejected(message)) => {
                // Not broadcast: forget our own hash, never another sender's.
                let ours = *ours.lock().expect("cancel hash slot");
                if let Some(ours) = ours {
                    let _ = compensations
                        .note_cancel_tx(&record.id, None, Some(ours))
                        .await;
                }
                let lower = message.to_ascii_lowercase();
                let text = if lower.contains("fund") || lower.contains("balance") {
                    gas_advice.to_string()
                } else {
                    format!(
                        "the chain refused the cancel transaction: {message}; mark the failure again to retry"
                    )
                };
                Err(Cancel::NotYet(CompensationOutcome::CancelFailed, text))
            }
            Err(error) => Err(Cancel::NotYet(
                CompensationOutcome::CancelFailed,
                format!("sending the cancel failed ({error}); mark the failure again later"),
            )),
        }
    }
}

/// The token's EIP-712 domain, read from the chain (ERC-5267 `eip712Domain()`).
async fn token_domain(
    runtime: &Runtime,
    asset: Address,
) -> Result<alloy_sol_types::Eip712Domain, RuntimeError> {
    let outcome = runtime
        .chain()
        .call(CallRequest {
            from: None,
            to: Some(asset),
            data: bursar_contracts::eip712_domain_call(),
            value: U256::ZERO,
        })
        .await?;
    let CallOutcome::Success(output) = outcome else {
        return Err(RuntimeError::Internal(
            "eip712Domain() reverted on the token".into(),
        ));
    };
    let domain = bursar_contracts::decode_eip712_domain(&output)
        .map_err(|error| RuntimeError::Internal(error.to_string()))?;
    let chain_id = u64::try_from(domain.chain_id)
        .map_err(|_| RuntimeError::Internal("the token's chain id is out of range".into()))?;
    Ok(bursar_protocol::exact_evm::token_domain(
        &domain.name,
        &domain.version,
        chain_id,
        domain.verifying_contract,
    ))
}
