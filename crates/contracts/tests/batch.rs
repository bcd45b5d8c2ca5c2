//! BursarBatchSettler: the committed artifact, the bindings' agreement with it, calldata and the
//! decoding of per-item events. Its behaviour on a chain is tested in bursar-facilitator
//! (`tests/batch_contract.rs`), which has the chain backends.

use std::collections::BTreeSet;

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_sol_types::{SolCall, SolEvent};
use bursar_contracts::*;
use bursar_protocol::Amount;
use bursar_protocol::exact_evm::Authorization;

const SOURCE: &str = include_str!("../../../contracts/src/BursarBatchSettler.sol");

fn signature_of(item: &serde_json::Value) -> String {
    fn canonical(param: &serde_json::Value) -> String {
        let ty = param["type"].as_str().unwrap();
        match ty.strip_prefix("tuple") {
            Some(suffix) => {
                let inner: Vec<String> = param["components"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(canonical)
                    .collect();
                format!("({}){suffix}", inner.join(","))
            }
            None => ty.to_string(),
        }
    }
    let inputs: Vec<String> = item["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(canonical)
        .collect();
    format!("{}({})", item["name"].as_str().unwrap(), inputs.join(","))
}

#[test]
fn artifact_is_the_pinned_compile_of_the_source() {
    let artifact = batch_settler_artifact();
    assert_eq!(artifact.contract_name, "BursarBatchSettler");
    assert_eq!(artifact.source_name, "src/BursarBatchSettler.sol");
    assert!(artifact.compiler.version.starts_with("0.8.37+commit."));
    assert_eq!(artifact.compiler.settings["evmVersion"], "cancun");
    assert!(artifact.deployed_bytecode.len() <= 24_576);
    assert_eq!(batch_settler_creation_code(), artifact.bytecode);
    assert!(BATCH_SETTLER_ARTIFACT_JSON.ends_with("}\n"));
}

#[test]
fn bindings_match_the_artifact_abi() {
    let abi = batch_settler_artifact().abi.as_array().unwrap().clone();
    let of_kind = |kind: &str| -> BTreeSet<String> {
        abi.iter()
            .filter(|item| item["type"] == kind)
            .map(signature_of)
            .collect()
    };
    let functions: BTreeSet<String> = [
        BursarBatchSettler::settleCall::SIGNATURE,
        BursarBatchSettler::ITEMS_MAXCall::SIGNATURE,
        BursarBatchSettler::ITEM_GAS_MAXCall::SIGNATURE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(of_kind("function"), functions);
    let events: BTreeSet<String> = [
        BursarBatchSettler::ItemSettled::SIGNATURE,
        BursarBatchSettler::ItemFailed::SIGNATURE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(of_kind("event"), events);
    let errors: BTreeSet<String> = of_kind("error");
    assert_eq!(
        errors,
        ["NoItems()", "TooManyItems(uint256,uint256)"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // The selector the artifact records for settle is the one the bindings send.
    let settle_selector = batch_settler_artifact()
        .method_identifiers
        .get(BursarBatchSettler::settleCall::SIGNATURE)
        .expect("settle in the artifact")
        .clone();
    assert_eq!(
        settle_selector,
        alloy_primitives::hex::encode(BursarBatchSettler::settleCall::SELECTOR)
    );
}

#[test]
fn rust_limits_equal_the_contract_constants() {
    assert!(SOURCE.contains(&format!("ITEMS_MAX = {BATCH_ITEMS_MAX};")));
    let gas = BATCH_ITEM_GAS_MAX.to_string();
    let with_separator = format!("{}_{}", &gas[..gas.len() - 3], &gas[gas.len() - 3..]);
    assert!(SOURCE.contains(&format!("ITEM_GAS_MAX = {with_separator};")));
}

fn item(seed: u8) -> BatchItem {
    let mut signature = vec![seed; 65];
    signature[64] = 0; // becomes 27
    BatchItem {
        token: Address::repeat_byte(0xaa),
        authorization: Authorization {
            from: Address::repeat_byte(seed),
            to: Address::repeat_byte(0x77),
            value: Amount::from(1_000u64 + u64::from(seed)),
            valid_after: U256::from(1u64),
            valid_before: U256::from(2_000_000_000u64),
            nonce: keccak256([seed]),
        },
        signature: Bytes::from(signature),
    }
}

#[test]
fn settle_calldata_round_trips_with_ecrecover_ready_signatures() {
    let items = vec![item(1), item(2), item(3)];
    let data = batch_settle_call(&items);
    assert_eq!(data[..4], BursarBatchSettler::settleCall::SELECTOR);
    let decoded = BursarBatchSettler::settleCall::abi_decode(&data).unwrap();
    assert_eq!(decoded.items.len(), 3);
    for (encoded, item) in decoded.items.iter().zip(&items) {
        assert_eq!(encoded.token, item.token);
        assert_eq!(encoded.from, item.authorization.from);
        assert_eq!(encoded.to, item.authorization.to);
        assert_eq!(encoded.value, item.authorization.value.atomic());
        assert_eq!(encoded.nonce, item.authorization.nonce);
        assert_eq!(encoded.signature.len(), 65);
        assert_eq!(encoded.signature[64], 27);
        assert_eq!(encoded.signature[..64], item.signature[..64]);
    }
}

fn settled_log(index: u64, item: &BatchItem) -> (Vec<B256>, Vec<u8>) {
    let event = BursarBatchSettler::ItemSettled {
        index: U256::from(index),
        token: item.token,
        from: item.authorization.from,
        nonce: item.authorization.nonce,
    };
    let log = event.encode_log_data();
    (log.topics().to_vec(), log.data.to_vec())
}

fn failed_log(index: u64, item: &BatchItem, reason: &[u8]) -> (Vec<B256>, Vec<u8>) {
    let event = BursarBatchSettler::ItemFailed {
        index: U256::from(index),
        token: item.token,
        from: item.authorization.from,
        nonce: item.authorization.nonce,
        reason: Bytes::copy_from_slice(reason),
    };
    let log = event.encode_log_data();
    (log.topics().to_vec(), log.data.to_vec())
}

#[test]
fn outcomes_come_from_the_settlers_own_matching_events_only() {
    let settler = Address::repeat_byte(0x5e);
    let stranger = Address::repeat_byte(0x66);
    let items = vec![item(1), item(2), item(3), item(4)];
    let logs = [
        (settler, settled_log(0, &items[0])),
        (settler, failed_log(1, &items[1], &[0xde, 0xad])),
        // An ItemSettled for index 2 from another contract does not count.
        (stranger, settled_log(2, &items[2])),
        // An event for index 3 naming another item's nonce does not count either.
        (settler, settled_log(3, &items[0])),
        // Out of range.
        (settler, settled_log(9, &items[0])),
    ];
    let outcomes = batch_outcomes(
        settler,
        &items,
        logs.iter().map(|(address, (topics, data))| LogRef {
            address: *address,
            topics,
            data,
        }),
    );
    assert_eq!(
        outcomes,
        vec![
            ItemOutcome::Settled,
            ItemOutcome::Failed(Bytes::from(vec![0xde, 0xad])),
            ItemOutcome::Unknown,
            ItemOutcome::Unknown,
        ]
    );
}
