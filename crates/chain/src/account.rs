//! A sending account: signs EIP-1559 transactions with a local key, manages its nonce, and waits
//! for receipts.
//!
//! Nonces are assigned under a lock that is held only while one transaction is signed and handed to
//! the node, so concurrent senders never reuse or skip a nonce. When the node says the nonce is too
//! low (another process used the key, or a restart lost track) the account resynchronizes from the
//! chain and tries again, a bounded number of times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_network::TxSignerSync;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use tokio::sync::Mutex;

use crate::api::{CallRequest, ChainError, EvmChain, Receipt};

/// How many times a send is retried after a nonce resynchronization.
pub const NONCE_RETRIES_MAX: u32 = 3;
/// Gas estimates are padded by this percentage.
pub const GAS_MARGIN_PERCENT: u64 = 20;
/// Default time to wait for a receipt.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A key that sends transactions on one chain.
pub struct Account {
    chain: Arc<dyn EvmChain>,
    signer: PrivateKeySigner,
    /// The next nonce to use; `None` until read from the chain (or after a resync).
    next_nonce: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Account")
            .field("address", &self.signer.address())
            .finish()
    }
}

/// A transaction to send; gas is estimated when `gas_limit` is `None`.
#[derive(Debug, Clone, Default)]
pub struct TxRequest {
    /// `None` creates a contract.
    pub to: Option<Address>,
    pub data: Bytes,
    pub value: U256,
    pub gas_limit: Option<u64>,
}

impl Account {
    pub fn new(chain: Arc<dyn EvmChain>, signer: PrivateKeySigner) -> Self {
        Account {
            chain,
            signer,
            next_nonce: Mutex::new(None),
        }
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    pub fn chain(&self) -> &Arc<dyn EvmChain> {
        &self.chain
    }

    /// Signs and broadcasts a transaction; returns its hash without waiting for it to be mined.
    pub async fn send(&self, request: TxRequest) -> Result<B256, ChainError> {
        self.send_recorded(request, |_, _| async { Ok(()) }).await
    }

    /// Like [`Account::send`], but calls `before_broadcast` with each signed transaction's hash
    /// and nonce before handing it to the node, and broadcasts only if it succeeds. A caller
    /// records the hash durably there, so a crash after broadcast never loses the transaction.
    /// After a nonce resynchronization the transaction is signed again and `before_broadcast` is
    /// called again with the new hash (the earlier one was refused and will never be mined).
    /// The account's nonce lock is held throughout, so keep `before_broadcast` short.
    pub async fn send_recorded<F, Fut>(
        &self,
        request: TxRequest,
        mut before_broadcast: F,
    ) -> Result<B256, ChainError>
    where
        F: FnMut(B256, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(), ChainError>>,
    {
        let gas_limit = match request.gas_limit {
            Some(limit) => limit,
            None => {
                let estimate = self
                    .chain
                    .estimate_gas(CallRequest {
                        from: Some(self.address()),
                        to: request.to,
                        data: request.data.clone(),
                        value: request.value,
                    })
                    .await?;
                estimate.saturating_add(estimate * GAS_MARGIN_PERCENT / 100)
            }
        };
        let fees = self.chain.fees().await?;
        let mut attempt = 0;
        loop {
            let mut next_nonce = self.next_nonce.lock().await;
            let nonce = match *next_nonce {
                Some(nonce) => nonce,
                None => self.chain.transaction_count(self.address()).await?,
            };
            let mut tx = TxEip1559 {
                chain_id: self.chain.chain_id(),
                nonce,
                gas_limit,
                max_fee_per_gas: fees.max_fee_per_gas,
                max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                to: request.to.map_or(TxKind::Create, TxKind::Call),
                value: request.value,
                access_list: Default::default(),
                input: request.data.clone(),
            };
            let signature = self
                .signer
                .sign_transaction_sync(&mut tx)
                .map_err(|e| ChainError::Rejected(format!("signing failed: {e}")))?;
            let envelope = TxEnvelope::from(tx.into_signed(signature));
            let hash = *envelope.tx_hash();
            if let Err(error) = before_broadcast(hash, nonce).await {
                // Nothing was broadcast and the nonce is unused.
                *next_nonce = Some(nonce);
                return Err(error);
            }
            let raw = Bytes::from(envelope.encoded_2718());
            match self.chain.send_raw_transaction(raw).await {
                Ok(sent) => {
                    *next_nonce = Some(nonce + 1);
                    debug_assert_eq!(sent, hash);
                    return Ok(hash);
                }
                Err(ChainError::NonceTooLow(message)) if attempt < NONCE_RETRIES_MAX => {
                    tracing::warn!(account = %self.address(), nonce, %message, "nonce too low; resynchronizing");
                    *next_nonce = None;
                    attempt += 1;
                }
                Err(error) => {
                    *next_nonce = None;
                    return Err(error);
                }
            }
        }
    }

    /// Sends a transaction and waits for its receipt.
    pub async fn send_and_wait(&self, request: TxRequest) -> Result<Receipt, ChainError> {
        let hash = self.send(request).await?;
        wait_for_receipt(self.chain.as_ref(), hash, RECEIPT_TIMEOUT).await
    }

    /// Deploys a contract and returns its address.
    pub async fn deploy(&self, creation_code: Bytes) -> Result<Address, ChainError> {
        let receipt = self
            .send_and_wait(TxRequest {
                to: None,
                data: creation_code,
                ..Default::default()
            })
            .await?;
        if !receipt.success {
            return Err(ChainError::Reverted(format!(
                "deployment {} reverted",
                receipt.transaction_hash
            )));
        }
        receipt.contract_address.ok_or_else(|| {
            ChainError::Transport("deployment receipt has no contract address".into())
        })
    }
}

/// Polls for a receipt at the chain's poll interval until `timeout`.
pub async fn wait_for_receipt(
    chain: &dyn EvmChain,
    hash: B256,
    timeout: Duration,
) -> Result<Receipt, ChainError> {
    let started = Instant::now();
    loop {
        if let Some(receipt) = chain.receipt(hash).await? {
            return Ok(receipt);
        }
        if started.elapsed() >= timeout {
            return Err(ChainError::Timeout(format!(
                "no receipt for {hash} after {timeout:?}"
            )));
        }
        tokio::time::sleep(chain.receipt_poll_interval()).await;
    }
}
