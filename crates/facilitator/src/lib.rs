//! # bursar-facilitator
//!
//! Verifies x402 `exact` payments on EVM chains and settles each EIP-3009 authorization exactly
//! once, from the facilitator's own account, on any [`bursar_chain::EvmChain`].
//!
//! - [`LocalFacilitator`] is the service, usable in-process (it implements
//!   [`bursar_facilitator_client::Facilitator`]) or over HTTP through [`router`].
//! - Verification runs the stateless checks of [`bursar_protocol::exact_evm::check_payment`] in the
//!   reference order, then reads the chain: the token's EIP-712 domain (cached), whether the nonce
//!   is used, and the payer's balance.
//! - Settlement re-verifies, simulates, submits `transferWithAuthorization` and waits for the
//!   receipt. Identical concurrent or repeated settles share one outcome and one transaction.

mod server;
mod service;

pub use server::router;
pub use service::{
    FacilitatorConfig, LocalFacilitator, SETTLE_GAS_LIMIT, SETTLE_RECEIPT_TIMEOUT,
    SETTLED_REMEMBERED_MAX,
};
