//! # bursar-protocol
//!
//! The x402 protocol as types, with no I/O: the v1 and v2 wire forms and the one typed model they
//! parse into ([`types`]), the base64 header codec ([`codec`]), facilitator API documents
//! ([`facilitator`]), networks ([`network`]), money ([`money`]), failure reasons ([`reason`]), and
//! the `exact` scheme on EVM chains with EIP-3009 ([`exact_evm`]), and the output schema a seller
//! publishes through the `bazaar` extension ([`bazaar`]). Assets, recipients, payers and
//! transactions keep the text the wire spelled them in, read once into their EVM form ([`spelled`]).
//! [`mcp`] is x402 over MCP: the documents a paid `tools/call` carries.
//!
//! Every decoder here is total: bad input is an error value, never a panic (see the property tests).

pub mod bazaar;
pub mod codec;
pub mod discovery;
pub mod exact_evm;
pub mod facilitator;
pub mod mcp;
pub mod money;
pub mod network;
pub mod reason;
pub mod scheme;
pub mod spelled;
pub mod types;

pub use alloy_primitives::{Address, B256, Bytes, U256};
pub use facilitator::{
    FacilitatorRequest, SettleResponse, SupportedKind, SupportedResponse, VerifyResponse,
};
pub use money::{Amount, AmountError, AssetUnit};
pub use network::{DEV_CHAIN_ID, Network};
pub use reason::Reason;
pub use scheme::SchemePayload;
pub use spelled::{ChainAddress, ChainTx, Spelled};
pub use types::{
    DecodeError, PaymentPayload, PaymentRequired, PaymentRequirements, Resource, X402Version,
};
