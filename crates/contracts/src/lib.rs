//! # bursar-contracts
//!
//! BursarUSD, the token Bursar deploys on development and private chains, seen from Rust.
//!
//! BursarUSD (`contracts/src/BursarUSD.sol`) behaves like Circle's USDC where x402 cares: 6
//! decimals, the EIP-712 domain `{name, version: "2", chainId, verifyingContract}` published
//! through ERC-5267, and EIP-3009 `transferWithAuthorization` / `receiveWithAuthorization` /
//! `cancelAuthorization` with the same type hashes, time window and one-time nonces. Its owner
//! can `mint`, which makes dev faucets possible. Code that settles payments against BursarUSD
//! therefore settles them against USDC too.
//!
//! This crate provides:
//! - [`bindings`]: typed `sol!` bindings for the token's functions, events and errors, checked
//!   against the compiled ABI by tests;
//! - [`artifact()`] and [`token_creation_code`]: the committed compiler output
//!   (`contracts/artifacts/BursarUSD.json`, produced by `contracts/compile.mjs`) and deployment
//!   code with constructor arguments;
//! - calldata builders and return-data decoders for the calls the chain and facilitator layers
//!   make ([`transfer_with_authorization_call`], [`balance_of_call`], [`decode_revert`], ...).
//!
//! - [`batch`]: BursarBatchSettler, which settles many authorizations in one transaction with
//!   per-item failure isolation: bindings, calldata, deployment code and receipt decoding.
//! - [`reader`]: BursarAuthorizationReader, which reads many payers' balances and nonce states in
//!   one `eth_call` without being deployed.
//! - [`test_tokens`]: tokens that are not BursarUSD, for tests: one with EIP-3009 exactly as the
//!   EIP writes it (no `bytes signature` overloads), a plain ERC-20 without EIP-3009, and one with
//!   only the `bytes signature` form of `transferWithAuthorization`.
//!
//! ## Which `transferWithAuthorization`
//!
//! EIP-3009 defines `transferWithAuthorization`, `receiveWithAuthorization` and
//! `cancelAuthorization` with the signature as `(uint8 v, bytes32 r, bytes32 s)`; every EIP-3009
//! token has them. Circle's USDC v2.2+ (and BursarUSD) add overloads taking `bytes signature`,
//! which also accept smart-wallet (ERC-1271 / ERC-6492) signatures. The calldata builders here
//! pick the overload from the signature: a 65-byte EOA signature `r || s || v` goes to the
//! `(v, r, s)` form, with a `v` of 0 or 1 rewritten to 27 or 28 (the only values `ecrecover`
//! accepts; Bursar's own signer already produces them), any other `v` left for the token to
//! refuse; every other signature goes to the `bytes` form. BursarBatchSettler applies the same
//! rule on chain.
//!
//! Nothing here performs I/O.

pub mod artifact;
pub mod batch;
pub mod bindings;
mod calls;
pub mod reader;
pub mod test_tokens;

pub use artifact::{
    ARTIFACT_JSON, Artifact, CompilerInfo, NAME_BYTES_MAX, artifact, token_creation_code,
};
pub use batch::{
    BATCH_ITEM_GAS_MAX, BATCH_ITEMS_MAX, BATCH_SETTLER_ARTIFACT_JSON, BatchItem,
    BursarBatchSettler, ItemOutcome, LogRef, batch_outcomes, batch_settle_call,
    batch_settler_artifact, batch_settler_creation_code,
};
pub use bindings::BursarUSD;
pub use calls::{
    DecodeError, SplitSignature, TOKEN_DECIMALS, TOKEN_EIP712_VERSION, TokenDomain, TokenRevert,
    authorization_state_call, balance_of_call, cancel_authorization_call,
    cancel_authorization_signing_hash, decode_authorization_state, decode_balance_of,
    decode_eip712_domain, decode_revert, describe_revert, ecrecover_compatible_signature,
    eip712_domain_call, mint_call, receive_authorization_signing_hash,
    receive_with_authorization_call, revert_reason, split_signature, token_domain,
    transfer_with_authorization_bytes_call, transfer_with_authorization_call,
};
pub use reader::{
    AUTHORIZATION_READER_ARTIFACT_JSON, AuthorizationRead, AuthorizationReading, READER_ITEMS_MAX,
    authorization_reader_artifact, authorization_reads_call, decode_authorization_reads,
};
