//! The committed compiler output for BursarUSD (`contracts/artifacts/BursarUSD.json`).
//!
//! `contracts/compile.mjs` writes the artifact and `node compile.mjs --check` proves it matches the
//! sources, so the bytes embedded here are exactly what the pinned compiler makes of them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use alloy_primitives::{Address, Bytes};
use alloy_sol_types::SolConstructor;
use serde::Deserialize;
use serde_json::Value;

use crate::bindings::BursarUSD;

/// The artifact JSON, embedded at build time.
pub const ARTIFACT_JSON: &str = include_str!("../../../contracts/artifacts/BursarUSD.json");

/// The longest token name the contract accepts, in bytes: OpenZeppelin's EIP712 keeps the domain
/// name in a short string, and deployment reverts with `StringTooLong` beyond it.
pub const NAME_BYTES_MAX: usize = 31;

/// A compiled contract as written by `contracts/compile.mjs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub contract_name: String,
    /// Source path relative to `contracts/`.
    pub source_name: String,
    /// The Solidity JSON ABI.
    pub abi: Value,
    /// Creation code, without constructor arguments.
    pub bytecode: Bytes,
    /// Runtime code as the compiler emits it: immutables (the EIP-712 domain cache) are zero
    /// placeholders, so this cannot be installed at an address directly; deploy the creation code.
    pub deployed_bytecode: Bytes,
    /// Function signature (`name(type,...)`) to 4-byte selector as 8 hex digits.
    pub method_identifiers: BTreeMap<String, String>,
    pub compiler: CompilerInfo,
}

/// Which compiler made an artifact, and how.
#[derive(Debug, Clone, Deserialize)]
pub struct CompilerInfo {
    pub name: String,
    /// Full version, e.g. `0.8.37+commit.f401782d.Emscripten.clang`.
    pub version: String,
    /// The standard-JSON settings used (evmVersion, optimizer, metadata).
    pub settings: Value,
}

static ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    // The artifact is a build-time constant, not input: the unit tests prove it parses.
    serde_json::from_str(ARTIFACT_JSON)
        .expect("contracts/artifacts/BursarUSD.json is a valid artifact (checked by tests)")
});

/// The BursarUSD artifact, parsed once.
pub fn artifact() -> &'static Artifact {
    &ARTIFACT
}

/// Deployment code for a BursarUSD: the creation bytecode followed by the ABI-encoded constructor
/// arguments `(name, symbol, initialOwner)`. Send it as a contract-creation transaction.
///
/// `name` is also the EIP-712 domain name, so buyers must sign with `extra.name == name` and
/// `extra.version == "2"`. It must be at most [`NAME_BYTES_MAX`] bytes, or deployment reverts.
/// `owner` may mint and transfer ownership; the zero address makes deployment revert.
pub fn token_creation_code(name: &str, symbol: &str, owner: Address) -> Bytes {
    let arguments = BursarUSD::constructorCall {
        name_: name.to_string(),
        symbol_: symbol.to_string(),
        initialOwner: owner,
    }
    .abi_encode();
    let creation = &artifact().bytecode;
    let mut code = Vec::with_capacity(creation.len() + arguments.len());
    code.extend_from_slice(creation);
    code.extend_from_slice(&arguments);
    Bytes::from(code)
}
