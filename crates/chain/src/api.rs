//! The EVM access every backend provides.
//!
//! The trait is deliberately small and node-shaped (call, send a raw transaction, read a receipt),
//! so the embedded EVM and any JSON-RPC node implement the same thing and everything above
//! (accounts, token access, the facilitator) is written once.

use alloy_primitives::{Address, B256, Bytes, U256};
use async_trait::async_trait;

/// The most blocks one [`EvmChain::logs`] query should span (public nodes refuse wider ranges).
pub const LOG_QUERY_BLOCKS_MAX: u64 = 1_000;

/// The head of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

/// The result of a read-only call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    Success(Bytes),
    /// The call reverted; the revert data (possibly empty).
    Revert(Bytes),
}

/// A log emitted by a mined transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
}

/// The receipt of a mined transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub transaction_hash: B256,
    /// True when the transaction executed without reverting.
    pub success: bool,
    pub block_number: u64,
    pub gas_used: u64,
    /// Wei per gas actually paid.
    pub effective_gas_price: u128,
    /// Set for contract creations.
    pub contract_address: Option<Address>,
    pub logs: Vec<Log>,
}

/// Which logs [`EvmChain::logs`] returns: those `address` emitted in blocks `from_block..=to_block`
/// whose topics match `topics` position by position (`None` matches anything; topics past the
/// end of the list are not constrained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub address: Address,
    pub topics: Vec<Option<B256>>,
    pub from_block: u64,
    pub to_block: u64,
}

impl LogFilter {
    /// Whether `log` (emitted in a block of the range) matches the address and topics.
    pub fn matches(&self, log: &Log) -> bool {
        log.address == self.address
            && self
                .topics
                .iter()
                .enumerate()
                .all(|(i, wanted)| wanted.is_none_or(|wanted| log.topics.get(i) == Some(&wanted)))
    }
}

/// A log with where it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub log: Log,
    pub transaction_hash: B256,
    pub block_number: u64,
}

/// EIP-1559 fee parameters, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// A read-only call or gas estimate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallRequest {
    pub from: Option<Address>,
    /// `None` for a contract creation.
    pub to: Option<Address>,
    pub data: Bytes,
    pub value: U256,
}

/// Chain errors, classified so callers know whether to retry, resync or give up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or answered garbage; the same call may succeed later.
    #[error("chain unreachable: {0}")]
    Transport(String),
    /// The transaction's nonce was already used; resynchronize the account's nonce.
    #[error("nonce too low: {0}")]
    NonceTooLow(String),
    /// The node refused the transaction (bad signature, fee too low, insufficient funds for gas,
    /// wrong chain id, nonce gap, ...). It was not included.
    #[error("transaction rejected: {0}")]
    Rejected(String),
    /// Gas estimation failed because the call reverts.
    #[error("execution reverted: {0}")]
    Reverted(String),
    /// Waiting for something on chain took longer than allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The backend cannot do this (for example time travel on a public network).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// An EVM chain: the embedded one or a JSON-RPC node.
///
/// Reads are at the latest block. `send_raw_transaction` takes an EIP-2718 encoded signed
/// transaction; the backend validates it as a node would (signature, chain id, nonce, gas funds).
#[async_trait]
pub trait EvmChain: Send + Sync + 'static {
    /// The EIP-155 chain id.
    fn chain_id(&self) -> u64;

    /// The latest block.
    async fn latest_block(&self) -> Result<BlockInfo, ChainError>;

    /// Executes a read-only call against the latest state.
    async fn call(&self, request: CallRequest) -> Result<CallOutcome, ChainError>;

    /// Estimates the gas a transaction would use. A reverting call is [`ChainError::Reverted`].
    async fn estimate_gas(&self, request: CallRequest) -> Result<u64, ChainError>;

    /// The next nonce for `address`, counting pending transactions.
    async fn transaction_count(&self, address: Address) -> Result<u64, ChainError>;

    /// The next nonce for `address` at the latest block: transactions mined, not pending ones.
    /// A transaction whose nonce is below it and that has no receipt can never be mined.
    async fn mined_transaction_count(&self, address: Address) -> Result<u64, ChainError>;

    /// The logs matching `filter`, oldest first. Nodes limit how many blocks one query may span;
    /// callers query in windows of at most [`LOG_QUERY_BLOCKS_MAX`] blocks.
    async fn logs(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, ChainError>;

    /// Native (gas) balance in wei.
    async fn native_balance(&self, address: Address) -> Result<U256, ChainError>;

    /// Contract code at `address` (empty for accounts without code).
    async fn code(&self, address: Address) -> Result<Bytes, ChainError>;

    /// Suggested EIP-1559 fees for the next block.
    async fn fees(&self) -> Result<Fees, ChainError>;

    /// Broadcasts a signed transaction; returns its hash.
    async fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, ChainError>;

    /// The receipt, once the transaction is mined.
    async fn receipt(&self, hash: B256) -> Result<Option<Receipt>, ChainError>;

    /// How often to poll for receipts. Local chains answer at once; remote nodes need longer.
    fn receipt_poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(50)
    }
}

/// Development controls that local chains (embedded, anvil) offer and public networks do not.
#[async_trait]
pub trait DevChain: EvmChain {
    /// Sets an account's native balance.
    async fn set_native_balance(&self, address: Address, wei: U256) -> Result<(), ChainError>;

    /// Moves the chain's clock forward and mines a block at the new time.
    async fn increase_time(&self, seconds: u64) -> Result<(), ChainError>;

    /// Mines an empty block.
    async fn mine(&self) -> Result<(), ChainError>;
}
