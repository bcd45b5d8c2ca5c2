//! # bursar-chain
//!
//! The seam between Bursar and an EVM chain. [`EvmChain`] is the small, node-shaped trait both
//! backends implement — the embedded in-process EVM (`bursar-chain-revm`) and any JSON-RPC node
//! (`bursar-chain-rpc`) — and [`DevChain`] adds the controls local chains offer (funding, time).
//! On top of it, written once: [`Account`] (signing, nonce management, receipts) and [`Token`]
//! (EIP-3009 token access), and [`events`] reads what a token emitted. With the `testkit` feature, [`testkit`] is the conformance suite every
//! backend runs.

mod account;
mod api;
pub mod events;
mod token;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use account::{
    Account, GAS_MARGIN_PERCENT, NONCE_RETRIES_MAX, RECEIPT_TIMEOUT, TxRequest, wait_for_receipt,
};
pub use api::{
    BlockInfo, CallOutcome, CallRequest, ChainError, DevChain, EvmChain, Fees,
    LOG_QUERY_BLOCKS_MAX, Log, LogEntry, LogFilter, Receipt,
};
pub use token::Token;
