//! # bursar-chain-revm
//!
//! The embedded, in-process EVM Bursar runs on by default: [`EmbeddedChain`] implements
//! [`bursar_chain::EvmChain`] and [`bursar_chain::DevChain`] on top of [revm], with no external
//! node. It behaves like a real single-node chain with automining.
//!
//! ## Transactions and mining
//!
//! `send_raw_transaction` takes an EIP-2718 encoded signed transaction (legacy with an EIP-155
//! chain id, EIP-2930 or EIP-1559; blob and EIP-7702 transactions are refused), decodes it
//! exactly (trailing bytes are an error), recovers the sender (low-s signatures only) and checks,
//! in this order and without changing any state: type, chain id, gas limit against the block gas
//! limit (and the Osaka per-transaction cap of 2^24), max fee against the base fee, priority fee
//! against max fee, then the account nonce (below → [`ChainError::NonceTooLow`], above → a
//! nonce gap, [`ChainError::Rejected`]: there is no pending pool) and `gas_limit * max_fee +
//! value` against the sender's balance. A transaction that passes is executed by revm
//! ([`HARDFORK`] rules) and mined at once in its own block: block number `parent + 1`,
//! timestamp `max(wall clock + time offset, parent timestamp)`. Reverted transactions are mined
//! with `success = false` and pay for their gas. The transaction hash is the keccak of the
//! encoded envelope, as any node computes it.
//!
//! Gas is paid as on Ethereum after London: the sender pays `gas_used * effective_gas_price`; the
//! base fee part is burned, the priority fee goes to the coinbase ([`EmbeddedConfig::coinbase`],
//! the zero address by default). The base fee is fixed ([`EmbeddedConfig::base_fee_per_gas`],
//! 1 gwei by default) since blocks never fill up; [`EvmChain::fees`] suggests twice the base fee
//! and no tip.
//!
//! Block hashes (`BLOCKHASH`, `PREVRANDAO`) are synthetic: keccak of the chain id and block
//! number. There are no block headers, state roots, or transaction bodies kept — only receipts.
//!
//! ## Reads
//!
//! `call` and `estimate_gas` execute against the latest state in the environment of the block
//! that would be mined next (number `latest + 1`, timestamp as above), so a simulation sees the
//! same clock a transaction sent now would. Gas is free in calls (price 0, base fee 0) and nonces
//! are not checked. `estimate_gas` returns the gas a successful execution spent (before refunds,
//! at least the receipt's gas used); callers add their margin. Reads take a shared lock and
//! borrow the state: concurrent calls run in parallel, and a view call allocates only revm's own
//! per-execution structures. [`EmbeddedChain::call_blocking`] skips the async wrapper.
//!
//! ## Writes
//!
//! Changes (transactions, dev controls) are serialized by a writer mutex: validation, execution
//! and the journal write happen under it while readers keep reading the previous state; only then
//! is the change applied under a short exclusive lock. A transaction is therefore visible (and its
//! receipt readable) only once it is durable. With a data dir, state changes run on tokio's
//! blocking pool so an fsync never stalls the async workers.
//!
//! ## Persistence
//!
//! With [`EmbeddedConfig::data_dir`] set, every change is appended to `chain.journal` in the data
//! dir as one record: the new head (block number, timestamp, time offset), the new values of every
//! touched account (balance, nonce, code hash, changed storage slots, or removal), new contract
//! code, and receipts. Each record is length-prefixed and checksummed (first 8 bytes of
//! keccak256); opening replays the records in order. A torn final record — the process died while
//! writing it — is detected, logged and cut off; a damaged record followed by more data is
//! reported as corruption ([`EmbeddedError::Corrupt`]) rather than silently dropping history.
//! Genesis allocations are the first record and apply only when the journal is created.
//!
//! By default each record is followed by `fdatasync` ([`EmbeddedConfig::sync_writes`]), so a
//! transaction whose hash was returned survives power loss. The cost is one disk flush per block:
//! about 0.15 ms on the development machine's disk (a plain transfer took 46 µs in memory and
//! 204 µs with the flush), several milliseconds on SATA SSDs or network disks. It bounds the rate
//! of sends, not of reads, which never wait for the disk. Turning it off keeps crash safety
//! against process death (the OS still has the data) but not against power loss.
//!
//! There is no snapshot or compaction: the journal grows with every change (about 310 bytes for
//! a plain transfer, under 1 KB for a `transferWithAuthorization`) and opening replays all of it
//! (about 500,000 records per second, so 20,000 transfers reopen in 40 ms). A data dir records its
//! chain id in the journal header; opening it with another chain id fails with
//! [`EmbeddedError::ChainIdMismatch`]. `chain.lock` in the data dir is held with an exclusive
//! advisory lock for the chain's lifetime, so a second process (or a second `open` in the same
//! process) gets [`EmbeddedError::Locked`] naming the lock file.
//!
//! ## Limits
//!
//! - Whole state and all receipts are kept in memory (roughly 100 B per account and storage slot,
//!   0.3–0.5 KB per receipt).
//! - [`BLOCK_GAS_LIMIT_DEFAULT`]: 30,000,000 gas per block (so per transaction, capped further at
//!   16,777,216 gas by Osaka's EIP-7825).
//! - [`BASE_FEE_PER_GAS_DEFAULT`]: 1,000,000,000 wei (1 gwei) per gas.
//! - [`journal::RECORD_BYTES_MAX`]: 64 MiB per journal record.
//! - One transaction per block; no pending pool, no reorgs, no logs filter, no blob or EIP-7702
//!   transactions.

mod chain;
pub mod journal;
mod state;

use std::path::PathBuf;

use alloy_primitives::{Address, U256};

pub use chain::EmbeddedChain;
pub use journal::{JOURNAL_FILE_NAME, LOCK_FILE_NAME};

#[doc(no_inline)]
pub use bursar_chain::ChainError;
#[doc(no_inline)]
pub use bursar_chain::{DevChain, EvmChain};

/// The EVM rules the embedded chain runs.
pub const HARDFORK: revm::primitives::hardfork::SpecId = revm::primitives::hardfork::SpecId::OSAKA;
/// Default base fee, in wei per gas (1 gwei).
pub const BASE_FEE_PER_GAS_DEFAULT: u64 = 1_000_000_000;
/// Default block gas limit, in gas.
pub const BLOCK_GAS_LIMIT_DEFAULT: u64 = 30_000_000;

/// How to open an [`EmbeddedChain`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The EIP-155 chain id (default [`bursar_protocol::DEV_CHAIN_ID`], 31337).
    pub chain_id: u64,
    /// Where the journal and lock file live; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Native balances (wei) at genesis. Applied only when the chain is created, never on reopen.
    pub genesis: Vec<(Address, U256)>,
    /// The fixed base fee, in wei per gas.
    pub base_fee_per_gas: u64,
    /// The block gas limit, in gas.
    pub block_gas_limit: u64,
    /// Receives priority fees (the base fee is burned).
    pub coinbase: Address,
    /// `fdatasync` the journal after every block (default on).
    pub sync_writes: bool,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            chain_id: bursar_protocol::DEV_CHAIN_ID,
            data_dir: None,
            genesis: Vec::new(),
            base_fee_per_gas: BASE_FEE_PER_GAS_DEFAULT,
            block_gas_limit: BLOCK_GAS_LIMIT_DEFAULT,
            coinbase: Address::ZERO,
            sync_writes: true,
        }
    }
}

impl EmbeddedConfig {
    /// The default configuration, persisted in `data_dir`.
    pub fn persistent(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: Some(data_dir.into()),
            ..Default::default()
        }
    }
}

/// Why an embedded chain could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("invalid embedded chain configuration: {0}")]
    InvalidConfig(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the chain data dir is already in use by another process or instance (lock file {} is held)", .path.display())]
    Locked { path: PathBuf },
    #[error("data dir {} holds chain id {found}, but chain id {expected} was configured; use another data dir", .path.display())]
    ChainIdMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("chain journal {} is corrupt at byte {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}
