//! Tokens that are not BursarUSD, for tests that settle against what real chains hold.
//!
//! - [`Eip3009OnlyToken`] (`contracts/src/test/Eip3009OnlyToken.sol`): EIP-3009 exactly as the
//!   EIP specifies it, with only the `(uint8 v, bytes32 r, bytes32 s)` forms of
//!   `transferWithAuthorization`, `receiveWithAuthorization` and `cancelAuthorization` (no
//!   `bytes signature` overloads, no ERC-1271), like many EIP-3009 tokens and USDC before
//!   FiatToken v2.2. Its EIP-712 name and version are chosen at deployment; failures are revert
//!   strings.
//! - [`PlainErc20`] (`contracts/src/test/PlainErc20.sol`): an ERC-20 without EIP-3009.
//! - [`BytesOnlyAuthorizationToken`] (`contracts/src/test/BytesOnlyAuthorizationToken.sol`):
//!   `transferWithAuthorization(..., bytes signature)` and `authorizationState`, but not EIP-3009's
//!   own `(v, r, s)` function, which Bursar settles EOA signatures through.
//!
//! All have 6 decimals and an owner who may `mint(address,uint256)` (the selector BursarUSD
//! uses, so `mint_call` funds them too). Their artifacts are committed and checked like the
//! others; nothing in Bursar deploys them outside tests.

use std::sync::LazyLock;

use alloy_primitives::{Address, Bytes};
use alloy_sol_types::{SolConstructor, sol};

use crate::artifact::Artifact;

// Bound from the committed artifacts' ABIs (written nowhere else, so they cannot drift).
sol!(
    /// A token with EIP-3009's own functions only (no `bytes signature` overloads).
    #[derive(Debug, PartialEq, Eq)]
    #[sol(abi)]
    Eip3009OnlyToken,
    "../../contracts/artifacts/Eip3009OnlyToken.json"
);

sol!(
    /// An ERC-20 without EIP-3009.
    #[derive(Debug, PartialEq, Eq)]
    #[sol(abi)]
    PlainErc20,
    "../../contracts/artifacts/PlainErc20.json"
);

sol!(
    /// `transferWithAuthorization` with a `bytes signature` only.
    #[derive(Debug, PartialEq, Eq)]
    #[sol(abi)]
    BytesOnlyAuthorizationToken,
    "../../contracts/artifacts/BytesOnlyAuthorizationToken.json"
);

/// The Eip3009OnlyToken artifact JSON, embedded at build time.
pub const EIP3009_ONLY_TOKEN_ARTIFACT_JSON: &str =
    include_str!("../../../contracts/artifacts/Eip3009OnlyToken.json");
/// The PlainErc20 artifact JSON, embedded at build time.
pub const PLAIN_ERC20_ARTIFACT_JSON: &str =
    include_str!("../../../contracts/artifacts/PlainErc20.json");
/// The BytesOnlyAuthorizationToken artifact JSON, embedded at build time.
pub const BYTES_ONLY_AUTHORIZATION_TOKEN_ARTIFACT_JSON: &str =
    include_str!("../../../contracts/artifacts/BytesOnlyAuthorizationToken.json");

static EIP3009_ONLY_TOKEN_ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    serde_json::from_str(EIP3009_ONLY_TOKEN_ARTIFACT_JSON)
        .expect("contracts/artifacts/Eip3009OnlyToken.json is a valid artifact (checked by tests)")
});
static PLAIN_ERC20_ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    serde_json::from_str(PLAIN_ERC20_ARTIFACT_JSON)
        .expect("contracts/artifacts/PlainErc20.json is a valid artifact (checked by tests)")
});
static BYTES_ONLY_AUTHORIZATION_TOKEN_ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    serde_json::from_str(BYTES_ONLY_AUTHORIZATION_TOKEN_ARTIFACT_JSON).expect(
        "contracts/artifacts/BytesOnlyAuthorizationToken.json is a valid artifact (checked by tests)",
    )
});

/// The Eip3009OnlyToken artifact, parsed once.
pub fn eip3009_only_token_artifact() -> &'static Artifact {
    &EIP3009_ONLY_TOKEN_ARTIFACT
}

/// The PlainErc20 artifact, parsed once.
pub fn plain_erc20_artifact() -> &'static Artifact {
    &PLAIN_ERC20_ARTIFACT
}

/// The BytesOnlyAuthorizationToken artifact, parsed once.
pub fn bytes_only_authorization_token_artifact() -> &'static Artifact {
    &BYTES_ONLY_AUTHORIZATION_TOKEN_ARTIFACT
}

fn with_arguments(creation: &Bytes, arguments: Vec<u8>) -> Bytes {
    let mut code = Vec::with_capacity(creation.len() + arguments.len());
    code.extend_from_slice(creation);
    code.extend_from_slice(&arguments);
    Bytes::from(code)
}

/// Deployment code for an Eip3009OnlyToken whose EIP-712 domain is `{name, version, chainId,
/// verifyingContract}`; `owner` may mint.
pub fn eip3009_only_token_creation_code(name: &str, version: &str, owner: Address) -> Bytes {
    let arguments = Eip3009OnlyToken::constructorCall {
        name_: name.to_string(),
        version_: version.to_string(),
        initialOwner: owner,
    }
    .abi_encode();
    with_arguments(&eip3009_only_token_artifact().bytecode, arguments)
}

/// Deployment code for a PlainErc20; `owner` may mint.
pub fn plain_erc20_creation_code(name: &str, symbol: &str, owner: Address) -> Bytes {
    let arguments = PlainErc20::constructorCall {
        name_: name.to_string(),
        symbol_: symbol.to_string(),
        initialOwner: owner,
    }
    .abi_encode();
    with_arguments(&plain_erc20_artifact().bytecode, arguments)
}

/// Deployment code for a BytesOnlyAuthorizationToken with the EIP-712 domain `{name, version,
/// chainId, verifyingContract}` (the name at most 31 bytes); `owner` may mint.
pub fn bytes_only_authorization_token_creation_code(
    name: &str,
    version: &str,
    owner: Address,
) -> Bytes {
    let arguments = BytesOnlyAuthorizationToken::constructorCall {
        name_: name.to_string(),
        version_: version.to_string(),
        initialOwner: owner,
    }
    .abi_encode();
    with_arguments(
        &bytes_only_authorization_token_artifact().bytecode,
        arguments,
    )
}
