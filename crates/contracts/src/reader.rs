//! BursarAuthorizationReader (`contracts/src/BursarAuthorizationReader.sol`): for many
//! (token, owner, nonce) items in one `eth_call`, the owner's balance and whether the EIP-3009
//! nonce is used.
//!
//! The contract is never deployed: [`authorization_reads_call`] is its creation code with the
//! constructor arguments, sent as an `eth_call` without a `to`, and the constructor returns the
//! answers (read back by [`decode_authorization_reads`]). Any node that executes `eth_call` runs
//! it, with no state overrides and nothing on chain.

use std::sync::LazyLock;

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_sol_types::SolValue;

use crate::artifact::Artifact;
use crate::calls::DecodeError;

/// The most items one read answers (the contract's `ITEMS_MAX`).
pub const READER_ITEMS_MAX: usize = 512;

/// The artifact JSON, embedded at build time.
pub const AUTHORIZATION_READER_ARTIFACT_JSON: &str =
    include_str!("../../../contracts/artifacts/BursarAuthorizationReader.json");

static READER_ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    serde_json::from_str(AUTHORIZATION_READER_ARTIFACT_JSON).expect(
        "contracts/artifacts/BursarAuthorizationReader.json is a valid artifact (checked by tests)",
    )
});

/// The BursarAuthorizationReader artifact, parsed once.
pub fn authorization_reader_artifact() -> &'static Artifact {
    &READER_ARTIFACT
}

/// One thing to read: `owner`'s balance of `token` and the state of `owner`'s `nonce` there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizationRead {
    pub token: Address,
    pub owner: Address,
    pub nonce: B256,
}

/// What the chain said about one [`AuthorizationRead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizationReading {
    pub balance: U256,
    /// `authorizationState`: used or cancelled.
    pub used: bool,
}

/// The data of a deployless `eth_call` (no `to`) reading `items` (at most [`READER_ITEMS_MAX`]).
pub fn authorization_reads_call(items: &[AuthorizationRead]) -> Bytes {
    debug_assert!(
        items.len() <= READER_ITEMS_MAX,
        "at most {READER_ITEMS_MAX} reads per call"
    );
    let tokens: Vec<Address> = items.iter().map(|item| item.token).collect();
    let owners: Vec<Address> = items.iter().map(|item| item.owner).collect();
    let nonces: Vec<B256> = items.iter().map(|item| item.nonce).collect();
    let mut data = authorization_reader_artifact().bytecode.to_vec();
    data.extend_from_slice(&(tokens, owners, nonces).abi_encode_params());
    data.into()
}

/// The answers to a read of `count` items, in order: `None` for an item whose token calls failed
/// or answered malformed data.
pub fn decode_authorization_reads(
    output: &[u8],
    count: usize,
) -> Result<Vec<Option<AuthorizationReading>>, DecodeError> {
    const FUNCTION: &str = "BursarAuthorizationReader(address[],address[],bytes32[])";
    let (balances, used, ok) = <(Vec<U256>, Vec<bool>, Vec<bool>)>::abi_decode_params(output)
        .map_err(|source| DecodeError {
            function: FUNCTION,
            source,
        })?;
    if balances.len() != count || used.len() != count || ok.len() != count {
        return Err(DecodeError {
            function: FUNCTION,
            source: alloy_sol_types::Error::custom(format!(
                "{count} items read, {} / {} / {} answers",
                balances.len(),
                used.len(),
                ok.len()
            )),
        });
    }
    Ok(balances
        .into_iter()
        .zip(used)
        .zip(ok)
        .map(|((balance, used), ok)| ok.then_some(AuthorizationReading { balance, used }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_parses_and_has_creation_code() {
        let artifact = authorization_reader_artifact();
        assert_eq!(artifact.contract_name, "BursarAuthorizationReader");
        assert!(!artifact.bytecode.is_empty());
    }

    #[test]
    fn answers_decode_in_order_and_mismatches_are_errors() {
        let output = (
            vec![U256::from(7), U256::ZERO],
            vec![true, false],
            vec![true, false],
        )
            .abi_encode_params();
        assert_eq!(
            decode_authorization_reads(&output, 2).unwrap(),
            vec![
                Some(AuthorizationReading {
                    balance: U256::from(7),
                    used: true
                }),
                None
            ]
        );
        assert!(decode_authorization_reads(&output, 3).is_err());
        assert!(decode_authorization_reads(b"garbage", 1).is_err());
    }
}
