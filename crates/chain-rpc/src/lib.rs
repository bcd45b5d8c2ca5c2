//! # bursar-chain-rpc
//!
//! The JSON-RPC backend of Bursar's chain seam: [`RpcChain`] implements
//! [`bursar_chain::EvmChain`] over any Ethereum node (anvil, geth, reth, a hosted endpoint) with
//! alloy's HTTP provider, and [`bursar_chain::DevChain`] through anvil's development methods.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use bursar_chain_rpc::{RpcChain, RpcOptions};
//!
//! // A local node, refusing to run against anything but chain 31337.
//! let local = RpcChain::connect("http://127.0.0.1:8545", Some(31337)).await?;
//! // A remote node: poll receipts every second rather than every 50 ms.
//! let base = RpcChain::connect_with("http://node.internal:8545", Some(8453), RpcOptions::remote()).await?;
//! # let _ = (local, base);
//! # Ok(())
//! # }
//! ```
//!
//! ## Behaviour
//!
//! - The chain id is read once, when connecting; a node serving another chain than the expected
//!   one is refused with [`ConnectError::ChainIdMismatch`].
//! - Every method is one request, without retries. Failing to reach the node (refused connection,
//!   timeout, HTTP error status, unparsable answer) is [`bursar_chain::ChainError::Transport`].
//! - `eth_call` reverts are answers, not errors: [`bursar_chain::CallOutcome::Revert`] with the
//!   revert data found in the JSON-RPC error. Executions that halt without data (invalid opcode,
//!   out of gas) are reverts with empty data.
//! - `eth_estimateGas` on a reverting call is [`bursar_chain::ChainError::Reverted`].
//! - `eth_sendRawTransaction` refusals: "nonce too low" in its various spellings (and a nonce held
//!   by a pending transaction) is [`bursar_chain::ChainError::NonceTooLow`], so accounts
//!   resynchronize; a transaction the node already holds is accepted and its hash returned; any
//!   other refusal is [`bursar_chain::ChainError::Rejected`].
//! - Development controls use `anvil_setBalance`, `evm_increaseTime` and `evm_mine`; a node that
//!   refuses them (any public network) yields [`bursar_chain::ChainError::Unsupported`].
//! - Receipts are polled every [`RECEIPT_POLL_INTERVAL_LOCAL_MS`] ms by default, right for a node
//!   on the same machine. Remote nodes should use [`RpcOptions::remote`]
//!   ([`RECEIPT_POLL_INTERVAL_REMOTE_MS`] ms): polling faster only spends rate limit, while a
//!   client library's multi-second default adds that much latency to every settlement.
//! - Node URLs often carry API keys; errors and logs show only scheme, host and port.
//! - `https://` URLs need the `rustls` feature.
//!
//! ## Tests
//!
//! With the `testkit` feature, [`AnvilInstance`] starts a fresh anvil (pinned in `tools/anvil`;
//! install it with `npm ci --prefix tools/anvil`) for each test and stops it on drop.

mod chain;
mod errors;

#[cfg(feature = "testkit")]
mod anvil;

pub use chain::{
    CONNECT_TIMEOUT_MS, ConnectError, RECEIPT_POLL_INTERVAL_LOCAL_MS,
    RECEIPT_POLL_INTERVAL_REMOTE_MS, REQUEST_TIMEOUT_MS, RpcChain, RpcOptions,
};

#[cfg(feature = "testkit")]
pub use anvil::{
    ANVIL_BINARY_ENV, ANVIL_BINARY_RELATIVE_PATH, ANVIL_CHAIN_ID_DEFAULT, ANVIL_START_TIMEOUT_MS,
    AnvilError, AnvilInstance, anvil_binary,
};
