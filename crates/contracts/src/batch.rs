//! BursarBatchSettler (`contracts/src/BursarBatchSettler.sol`): many EIP-3009 authorizations in one
//! transaction, each in its own try/catch, each reported by one event.
//!
//! [`batch_settle_call`] builds the calldata, [`batch_outcomes`] reads a mined receipt's logs back
//! into one [`ItemOutcome`] per item, and [`batch_settler_creation_code`] deploys the contract
//! (it has no constructor arguments and no state, so one deployment per chain serves everyone).

use std::sync::LazyLock;

use alloy_primitives::{Address, B256, Bytes};
use alloy_sol_types::{SolCall, SolEvent, sol};
use bursar_protocol::exact_evm::Authorization;

use crate::artifact::Artifact;
use crate::calls::ecrecover_compatible_signature;

sol! {
    /// The batch settler: `settle(Item[])` with per-item failure isolation.
    #[derive(Debug, PartialEq, Eq)]
    #[sol(abi)]
    contract BursarBatchSettler {
        struct Item {
            address token;
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
            bytes signature;
        }

        event ItemSettled(uint256 indexed index, address indexed token, address indexed from, bytes32 nonce);
        event ItemFailed(uint256 indexed index, address indexed token, address indexed from, bytes32 nonce, bytes reason);

        error NoItems();
        error TooManyItems(uint256 count, uint256 max);

        function ITEMS_MAX() external view returns (uint256);
        function ITEM_GAS_MAX() external view returns (uint256);
        function settle(Item[] calldata items) external returns (uint256 settled);
    }
}

/// The most items one `settle` call accepts (the contract's `ITEMS_MAX`).
pub const BATCH_ITEMS_MAX: usize = 256;
/// Gas the contract forwards to each item's `transferWithAuthorization` (its `ITEM_GAS_MAX`).
pub const BATCH_ITEM_GAS_MAX: u64 = 300_000;

/// The artifact JSON, embedded at build time.
pub const BATCH_SETTLER_ARTIFACT_JSON: &str =
    include_str!("../../../contracts/artifacts/BursarBatchSettler.json");

static BATCH_ARTIFACT: LazyLock<Artifact> = LazyLock::new(|| {
    serde_json::from_str(BATCH_SETTLER_ARTIFACT_JSON).expect(
        "contracts/artifacts/BursarBatchSettler.json is a valid artifact (checked by tests)",
    )
});

/// The BursarBatchSettler artifact, parsed once.
pub fn batch_settler_artifact() -> &'static Artifact {
    &BATCH_ARTIFACT
}

/// Deployment code for a BursarBatchSettler (no constructor arguments).
pub fn batch_settler_creation_code() -> Bytes {
    batch_settler_artifact().bytecode.clone()
}

/// One authorization to settle in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub token: Address,
    pub authorization: Authorization,
    pub signature: Bytes,
}

/// Calldata for `settle(items)`. Signatures pass through [`ecrecover_compatible_signature`].
pub fn batch_settle_call(items: &[BatchItem]) -> Bytes {
    BursarBatchSettler::settleCall {
        items: items
            .iter()
            .map(|item| BursarBatchSettler::Item {
                token: item.token,
                from: item.authorization.from,
                to: item.authorization.to,
                value: item.authorization.value.atomic(),
                validAfter: item.authorization.valid_after,
                validBefore: item.authorization.valid_before,
                nonce: item.authorization.nonce,
                signature: ecrecover_compatible_signature(&item.signature),
            })
            .collect(),
    }
    .abi_encode()
    .into()
}

/// What the receipt says about one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// `ItemSettled`: the transfer happened in this transaction.
    Settled,
    /// `ItemFailed`, with the token's revert data.
    Failed(Bytes),
    /// No event for this item (the transaction reverted as a whole, or the logs are not the
    /// settler's): read `authorizationState` to learn the truth.
    Unknown,
}

/// A log as the settler emitted it: its address, topics and data.
pub struct LogRef<'a> {
    pub address: Address,
    pub topics: &'a [B256],
    pub data: &'a [u8],
}

/// Reads the outcome of each of `count` items from a mined batch's logs. Only logs emitted by
/// `settler` count; an item whose event is missing, or whose event names another token, payer or
/// nonce than `items[index]`, is [`ItemOutcome::Unknown`].
pub fn batch_outcomes<'a>(
    settler: Address,
    items: &[BatchItem],
    logs: impl IntoIterator<Item = LogRef<'a>>,
) -> Vec<ItemOutcome> {
    let mut outcomes = vec![ItemOutcome::Unknown; items.len()];
    for log in logs {
        if log.address != settler {
            continue;
        }
        let topics = log.topics.iter().copied();
        let data = log.data;
        let (index, token, from, nonce, outcome) = match log.topics.first() {
            Some(t) if *t == BursarBatchSettler::ItemSettled::SIGNATURE_HASH => {
                let Ok(event) = BursarBatchSettler::ItemSettled::decode_raw_log(topics, data)
                else {
                    continue;
                };
                (
                    event.index,
                    event.token,
                    event.from,
                    event.nonce,
                    ItemOutcome::Settled,
                )
            }
            Some(t) if *t == BursarBatchSettler::ItemFailed::SIGNATURE_HASH => {
                let Ok(event) = BursarBatchSettler::ItemFailed::decode_raw_log(topics, data) else {
                    continue;
                };
                (
                    event.index,
                    event.token,
                    event.from,
                    event.nonce,
                    ItemOutcome::Failed(event.reason),
                )
            }
            _ => continue,
        };
        let Ok(index) = usize::try_from(index) else {
            continue;
        };
        if index >= items.len() {
            continue;
        }
        let item = &items[index];
        if item.token == token
            && item.authorization.from == from
            && item.authorization.nonce == nonce
        {
            outcomes[index] = outcome;
        }
    }
    outcomes
}
