//! Checks the committed artifact, the bindings' agreement with it, and the calldata helpers.

use std::collections::BTreeSet;

use alloy_primitives::{Address, B256, Bytes, U256, hex, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{ContractError, Revert, SolCall, SolError, SolStruct, SolValue};
use bursar_contracts::bindings::{
    BursarUSD, CancelAuthorization, CancelAuthorizationBytesCall, CancelAuthorizationVrsCall,
    ReceiveWithAuthorization, ReceiveWithAuthorizationBytesCall, ReceiveWithAuthorizationVrsCall,
    TransferWithAuthorizationBytesCall, TransferWithAuthorizationVrsCall,
};
use bursar_contracts::*;
use bursar_protocol::exact_evm::{Authorization, TransferWithAuthorization, recover_signer};
use bursar_protocol::{Amount, Reason};
use serde_json::Value;

const SOURCE: &str = include_str!("../../../contracts/src/BursarUSD.sol");

// ---------------------------------------------------------------------------------------------
// artifact

#[test]
fn artifact_loads_with_the_pinned_compiler_settings() {
    let artifact = artifact();
    assert_eq!(artifact.contract_name, "BursarUSD");
    assert_eq!(artifact.source_name, "src/BursarUSD.sol");
    assert_eq!(artifact.compiler.name, "solc");
    assert!(
        artifact.compiler.version.starts_with("0.8.37+commit."),
        "{}",
        artifact.compiler.version
    );
    let settings = &artifact.compiler.settings;
    assert_eq!(settings["evmVersion"], "cancun");
    assert_eq!(settings["optimizer"]["enabled"], true);
    assert_eq!(settings["optimizer"]["runs"], 200);
    // solc code starts by setting the free memory pointer: `PUSH1 0x80 PUSH1 0x40 MSTORE` at run
    // time; the constructor reserves room for the immutables first (`PUSH2 0x.... PUSH1 0x40 MSTORE`).
    let creation = &artifact.bytecode;
    assert_eq!(creation[0], 0x61, "creation code should start with PUSH2");
    assert_eq!(creation[3..6], hex!("604052"));
    assert!(artifact.deployed_bytecode.starts_with(&hex!("6080604052")));
    assert!(artifact.bytecode.len() > artifact.deployed_bytecode.len());
    // Under the EIP-170 runtime size limit, so it deploys on any chain.
    assert!(artifact.deployed_bytecode.len() <= 24_576);
    assert!(ARTIFACT_JSON.ends_with("}\n"));
}

#[test]
fn creation_code_is_bytecode_then_constructor_arguments() {
    let owner = Address::repeat_byte(0x11);
    let code = token_creation_code("Bursar USD", "bUSD", owner);
    let creation = &artifact().bytecode;
    assert!(code.starts_with(creation));
    let arguments = &code[creation.len()..];
    let (name, symbol, decoded_owner) =
        <(String, String, Address)>::abi_decode_params(arguments).unwrap();
    assert_eq!(name, "Bursar USD");
    assert_eq!(symbol, "bUSD");
    assert_eq!(decoded_owner, owner);
    // Independent of the bindings: three head words, then two short strings of one word each.
    let expected = (String::from("Bursar USD"), String::from("bUSD"), owner).abi_encode_params();
    assert_eq!(arguments, expected.as_slice());
    assert_eq!(arguments.len(), 32 * 7);
}

// ---------------------------------------------------------------------------------------------
// bindings versus the compiled ABI

/// The canonical type of an ABI parameter, expanding tuples: `(uint256,address)[]`.
fn canonical_type(param: &Value) -> String {
    let ty = param["type"].as_str().unwrap();
    match ty.strip_prefix("tuple") {
        Some(suffix) => {
            let inner: Vec<String> = param["components"]
                .as_array()
                .unwrap()
                .iter()
                .map(canonical_type)
                .collect();
            format!("({}){suffix}", inner.join(","))
        }
        None => ty.to_string(),
    }
}

fn types_of(params: &Value) -> Vec<String> {
    params
        .as_array()
        .map(|list| list.iter().map(canonical_type).collect())
        .unwrap_or_default()
}

fn signature_of(item: &Value) -> String {
    format!(
        "{}({})",
        item["name"].as_str().unwrap(),
        types_of(&item["inputs"]).join(",")
    )
}

/// Everything about an ABI item that affects encoding or calling it, parameter names aside.
fn shape_of(item: &Value) -> String {
    let indexed: Vec<bool> = item["inputs"]
        .as_array()
        .map(|list| list.iter().map(|p| p["indexed"] == true).collect())
        .unwrap_or_default();
    format!(
        "{} {} in={:?} indexed={:?} out={:?} mutability={} anonymous={}",
        item["type"],
        item["name"],
        types_of(&item["inputs"]),
        indexed,
        types_of(&item["outputs"]),
        item["stateMutability"],
        item["anonymous"] == true,
    )
}

fn items_of_kind<'a>(abi: &'a Value, kind: &str) -> Vec<&'a Value> {
    abi.as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == kind)
        .collect()
}

fn hex4(selector: &[u8]) -> String {
    hex::encode(selector)
}

#[test]
fn every_function_selector_in_the_artifact_is_bound() {
    let artifact = artifact();
    let functions = items_of_kind(&artifact.abi, "function");
    assert_eq!(functions.len(), artifact.method_identifiers.len());

    let from_abi: BTreeSet<(String, String)> = functions
        .iter()
        .map(|f| {
            let signature = signature_of(f);
            let selector = hex4(&keccak256(signature.as_bytes())[..4]);
            (signature, selector)
        })
        .collect();
    let from_compiler: BTreeSet<(String, String)> = artifact
        .method_identifiers
        .iter()
        .map(|(s, id)| (s.clone(), id.clone()))
        .collect();
    assert_eq!(
        from_abi, from_compiler,
        "ABI and solc's method identifiers disagree"
    );

    let bound: BTreeSet<(String, String)> = BursarUSD::BursarUSDCalls::SIGNATURES
        .iter()
        .zip(BursarUSD::BursarUSDCalls::SELECTORS)
        .map(|(s, id)| (s.to_string(), hex4(id)))
        .collect();
    let missing: Vec<_> = from_compiler.difference(&bound).collect();
    let extra: Vec<_> = bound.difference(&from_compiler).collect();
    assert!(
        missing.is_empty(),
        "functions missing from the bindings: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "bound functions the contract lacks: {extra:?}"
    );
}

#[test]
fn every_event_and_error_in_the_artifact_is_bound() {
    let abi = &artifact().abi;
    let events: BTreeSet<B256> = items_of_kind(abi, "event")
        .iter()
        .map(|e| keccak256(signature_of(e).as_bytes()))
        .collect();
    let bound_events: BTreeSet<B256> = BursarUSD::BursarUSDEvents::SELECTORS
        .iter()
        .map(|topic| B256::from(*topic))
        .collect();
    assert_eq!(events, bound_events);

    let errors: BTreeSet<String> = items_of_kind(abi, "error")
        .iter()
        .map(|e| hex4(&keccak256(signature_of(e).as_bytes())[..4]))
        .collect();
    let bound_errors: BTreeSet<String> = BursarUSD::BursarUSDErrors::SELECTORS
        .iter()
        .map(|id| hex4(id))
        .collect();
    assert_eq!(errors, bound_errors);
}

/// Stricter than selectors: also outputs, indexed flags, mutability and the constructor.
fn assert_bound_abi_matches(artifact: &Artifact, bound_abi: &impl serde::Serialize) {
    let compiled: BTreeSet<String> = artifact
        .abi
        .as_array()
        .unwrap()
        .iter()
        .map(shape_of)
        .collect();
    let bound_abi = serde_json::to_value(bound_abi).unwrap();
    let bound: BTreeSet<String> = bound_abi.as_array().unwrap().iter().map(shape_of).collect();
    let missing: Vec<_> = compiled.difference(&bound).collect();
    let extra: Vec<_> = bound.difference(&compiled).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: compiled but not bound: {missing:#?}\nbound but not compiled: {extra:#?}",
        artifact.contract_name
    );
}

#[test]
fn bound_abi_matches_the_artifact_item_for_item() {
    assert_bound_abi_matches(artifact(), &BursarUSD::abi::contract());
}

#[test]
fn the_test_tokens_are_bound_and_have_no_bytes_signature_functions() {
    use bursar_contracts::test_tokens::*;
    let eip3009 = eip3009_only_token_artifact();
    let plain = plain_erc20_artifact();
    assert_eq!(eip3009.contract_name, "Eip3009OnlyToken");
    assert_eq!(eip3009.source_name, "src/test/Eip3009OnlyToken.sol");
    assert_eq!(plain.contract_name, "PlainErc20");
    assert_eq!(plain.source_name, "src/test/PlainErc20.sol");
    // The test tokens are bound from these artifacts' ABIs, so this checks the binding (and
    // the artifact's own consistency); the selectors below are checked against fixed values.
    assert_bound_abi_matches(eip3009, &Eip3009OnlyToken::abi::contract());
    assert_bound_abi_matches(plain, &PlainErc20::abi::contract());
    let bytes_only = bytes_only_authorization_token_artifact();
    assert_eq!(bytes_only.contract_name, "BytesOnlyAuthorizationToken");
    assert_bound_abi_matches(bytes_only, &BytesOnlyAuthorizationToken::abi::contract());
    // The bytes overload (USDC's selector) and not the (v, r, s) one.
    assert_eq!(
        bytes_only
            .method_identifiers
            .get("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)")
            .map(String::as_str),
        Some("cf092995")
    );
    assert!(
        !bytes_only
            .method_identifiers
            .values()
            .any(|id| id == "e3ee160e")
    );

    // EIP-3009's own functions with USDC's selectors, and no `bytes signature` overload.
    let ids = &eip3009.method_identifiers;
    let expected = [
        (
            "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
            "e3ee160e",
        ),
        (
            "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
            "ef55bec6",
        ),
        (
            "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)",
            "5a049a70",
        ),
        ("authorizationState(address,bytes32)", "e94a0102"),
        ("mint(address,uint256)", "40c10f19"),
    ];
    for (signature, selector) in expected {
        assert_eq!(
            ids.get(signature).map(String::as_str),
            Some(selector),
            "{signature}"
        );
    }
    assert!(
        ids.keys().all(|signature| !signature.contains("bytes)")),
        "{ids:?}"
    );
    // The plain ERC-20 has nothing of EIP-3009, but mints like BursarUSD.
    assert!(
        plain
            .method_identifiers
            .keys()
            .all(|signature| !signature.contains("uthorization"))
    );
    assert_eq!(
        plain
            .method_identifiers
            .get("mint(address,uint256)")
            .map(String::as_str),
        Some("40c10f19")
    );

    let owner = Address::repeat_byte(0x11);
    let code = eip3009_only_token_creation_code("Dollar", "1", owner);
    assert!(code.starts_with(&eip3009.bytecode));
    assert_eq!(
        <(String, String, Address)>::abi_decode_params(&code[eip3009.bytecode.len()..]).unwrap(),
        ("Dollar".to_string(), "1".to_string(), owner)
    );
    let code = plain_erc20_creation_code("Plain", "PLN", owner);
    assert!(code.starts_with(&plain.bytecode));
}

#[test]
fn selectors_are_the_usdc_ones() {
    // Circle's FiatToken v2.2 selectors, so calldata built here also works against real USDC.
    assert_eq!(
        TransferWithAuthorizationBytesCall::SELECTOR,
        hex!("cf092995")
    );
    assert_eq!(TransferWithAuthorizationVrsCall::SELECTOR, hex!("e3ee160e"));
    assert_eq!(
        ReceiveWithAuthorizationBytesCall::SELECTOR,
        hex!("88b7ab63")
    );
    assert_eq!(
        BursarUSD::receiveWithAuthorization_1Call::SELECTOR,
        hex!("ef55bec6")
    );
    assert_eq!(CancelAuthorizationBytesCall::SELECTOR, hex!("b7b72899"));
    assert_eq!(
        BursarUSD::cancelAuthorization_1Call::SELECTOR,
        hex!("5a049a70")
    );
    assert_eq!(
        BursarUSD::authorizationStateCall::SELECTOR,
        hex!("e94a0102")
    );
    assert_eq!(BursarUSD::balanceOfCall::SELECTOR, hex!("70a08231"));
    assert_eq!(BursarUSD::eip712DomainCall::SELECTOR, hex!("84b0196e"));
}

#[test]
fn typed_data_matches_the_solidity_type_hashes() {
    let transfer = TransferWithAuthorization::eip712_encode_type();
    let receive = ReceiveWithAuthorization::eip712_encode_type();
    let cancel = CancelAuthorization::eip712_encode_type();
    assert_eq!(
        transfer,
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    assert_eq!(
        receive,
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    assert_eq!(
        cancel,
        "CancelAuthorization(address authorizer,bytes32 nonce)"
    );
    for encoded in [&transfer, &receive, &cancel] {
        assert!(
            SOURCE.contains(&format!("keccak256(\n        \"{encoded}\"\n    )"))
                || SOURCE.contains(&format!("keccak256(\"{encoded}\")")),
            "the contract does not hash {encoded}"
        );
    }
    // The published constants (EIP-3009).
    assert_eq!(
        keccak256(transfer.as_bytes()),
        hex!("7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
    );
    assert_eq!(
        keccak256(receive.as_bytes()),
        hex!("d099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8")
    );
    assert_eq!(
        keccak256(cancel.as_bytes()),
        hex!("158b0a9edf7a828aad02f63cd515c68ef2f50ba807396f6d12842833a1597429")
    );
}

// ---------------------------------------------------------------------------------------------
// calldata

fn authorization() -> Authorization {
    Authorization {
        from: Address::repeat_byte(0xaa),
        to: Address::repeat_byte(0xbb),
        value: Amount::from(1_250_000u64),
        valid_after: U256::from(1_700_000_000u64),
        valid_before: U256::from(1_700_000_060u64),
        nonce: B256::repeat_byte(0x42),
    }
}

fn signature(v: u8) -> Vec<u8> {
    let mut bytes = vec![0x5a; 64];
    bytes.push(v);
    bytes
}

fn word(value: impl Into<U256>) -> [u8; 32] {
    value.into().to_be_bytes::<32>()
}

fn address_word(address: Address) -> [u8; 32] {
    let mut word = [0u8; 32];
    word[12..].copy_from_slice(address.as_slice());
    word
}

#[test]
fn eoa_signatures_use_the_eips_own_v_r_s_function() {
    let a = authorization();
    let mut sig = signature(27);
    sig[..32].copy_from_slice(&[0x11; 32]);
    sig[32..64].copy_from_slice(&[0x22; 32]);
    let calldata = transfer_with_authorization_call(&a, &sig);

    // transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)
    let mut expected = hex!("e3ee160e").to_vec();
    expected.extend(address_word(a.from));
    expected.extend(address_word(a.to));
    expected.extend(word(U256::from(1_250_000u64)));
    expected.extend(word(U256::from(1_700_000_000u64)));
    expected.extend(word(U256::from(1_700_000_060u64)));
    expected.extend(a.nonce.0);
    expected.extend(word(U256::from(27)));
    expected.extend([0x11; 32]);
    expected.extend([0x22; 32]);
    assert_eq!(calldata.as_ref(), expected.as_slice());
    assert_eq!(
        keccak256(
            "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
        )[..4],
        hex!("e3ee160e")
    );

    let decoded = TransferWithAuthorizationVrsCall::abi_decode(&calldata).unwrap();
    assert_eq!(decoded.from, a.from);
    assert_eq!(decoded.value, a.value.atomic());
    assert_eq!(
        (decoded.v, decoded.r, decoded.s),
        (27, B256::repeat_byte(0x11), B256::repeat_byte(0x22))
    );
}

#[test]
fn the_bytes_overload_is_laid_out_by_hand() {
    let a = authorization();
    let sig = signature(27);
    let calldata = transfer_with_authorization_bytes_call(&a, &sig);

    let mut expected = hex!("cf092995").to_vec();
    expected.extend(address_word(a.from));
    expected.extend(address_word(a.to));
    expected.extend(word(U256::from(1_250_000u64)));
    expected.extend(word(U256::from(1_700_000_000u64)));
    expected.extend(word(U256::from(1_700_000_060u64)));
    expected.extend(a.nonce.0);
    expected.extend(word(U256::from(7 * 32))); // offset of the bytes tail
    expected.extend(word(U256::from(65))); // signature length
    expected.extend(&sig);
    expected.extend([0u8; 31]); // pad 65 to 96
    assert_eq!(calldata.as_ref(), expected.as_slice());

    let decoded = TransferWithAuthorizationBytesCall::abi_decode(&calldata).unwrap();
    assert_eq!(decoded.from, a.from);
    assert_eq!(decoded.value, a.value.atomic());
    assert_eq!(decoded.signature.as_ref(), sig.as_slice());
}

#[test]
fn other_signatures_use_the_bytes_overload_untouched() {
    let a = authorization();
    // ERC-1271 / ERC-6492 data of a smart wallet, and a short blob: never split.
    for blob in [vec![1u8; 130], vec![0u8; 64], vec![7u8; 66], Vec::new()] {
        assert_eq!(split_signature(&blob), None, "{} bytes", blob.len());
        let calldata = transfer_with_authorization_call(&a, &blob);
        assert_eq!(calldata, transfer_with_authorization_bytes_call(&a, &blob));
        let decoded = TransferWithAuthorizationBytesCall::abi_decode(&calldata).unwrap();
        assert_eq!(decoded.signature.as_ref(), blob.as_slice());
    }
}

#[test]
fn recovery_bytes_zero_and_one_become_ecrecover_ready() {
    let a = authorization();
    for (v, expected) in [(0u8, 27u8), (1, 28), (27, 27), (28, 28), (5, 5)] {
        let calldata = transfer_with_authorization_call(&a, &signature(v));
        let decoded = TransferWithAuthorizationVrsCall::abi_decode(&calldata).unwrap();
        assert_eq!(decoded.v, expected, "v = {v}");
        assert_eq!(decoded.r, B256::repeat_byte(0x5a));
        assert_eq!(decoded.s, B256::repeat_byte(0x5a));

        let calldata = transfer_with_authorization_bytes_call(&a, &signature(v));
        let decoded = TransferWithAuthorizationBytesCall::abi_decode(&calldata).unwrap();
        assert_eq!(decoded.signature[64], expected, "v = {v}");
        assert_eq!(decoded.signature[..64], signature(v)[..64]);
    }
    // Not a 65-byte ECDSA signature (e.g. ERC-1271 or ERC-6492 data): untouched.
    let blob = vec![1u8; 130];
    assert_eq!(
        ecrecover_compatible_signature(&blob).as_ref(),
        blob.as_slice()
    );
    let short = vec![0u8; 64];
    assert_eq!(
        ecrecover_compatible_signature(&short).as_ref(),
        short.as_slice()
    );
    assert!(ecrecover_compatible_signature(&[]).is_empty());
}

#[test]
fn receive_and_cancel_pick_their_overload_by_signature() {
    let a = authorization();
    let calldata = receive_with_authorization_call(&a, &signature(28));
    assert_eq!(calldata[..4], hex!("ef55bec6"));
    let decoded = ReceiveWithAuthorizationVrsCall::abi_decode(&calldata).unwrap();
    assert_eq!(
        (decoded.from, decoded.to, decoded.nonce, decoded.v),
        (a.from, a.to, a.nonce, 28)
    );
    assert_eq!(decoded.validBefore, a.valid_before);
    let blob = vec![3u8; 100];
    let calldata = receive_with_authorization_call(&a, &blob);
    assert_eq!(calldata[..4], hex!("88b7ab63"));
    let decoded = ReceiveWithAuthorizationBytesCall::abi_decode(&calldata).unwrap();
    assert_eq!(decoded.signature.as_ref(), blob.as_slice());

    let calldata = cancel_authorization_call(a.from, a.nonce, &signature(1));
    assert_eq!(calldata[..4], hex!("5a049a70"));
    let decoded = CancelAuthorizationVrsCall::abi_decode(&calldata).unwrap();
    assert_eq!(decoded.authorizer, a.from);
    assert_eq!(decoded.nonce, a.nonce);
    assert_eq!(decoded.v, 28);
    assert_eq!(calldata.len(), 4 + 32 * 5);
    let calldata = cancel_authorization_call(a.from, a.nonce, &blob);
    assert_eq!(calldata[..4], hex!("b7b72899"));
    let decoded = CancelAuthorizationBytesCall::abi_decode(&calldata).unwrap();
    assert_eq!(decoded.signature.as_ref(), blob.as_slice());
}

#[test]
fn read_and_mint_calldata_are_laid_out_by_hand() {
    let owner = Address::repeat_byte(0x33);
    let nonce = B256::repeat_byte(0x77);

    let mut expected = hex!("70a08231").to_vec();
    expected.extend(address_word(owner));
    assert_eq!(balance_of_call(owner).as_ref(), expected.as_slice());

    let mut expected = hex!("e94a0102").to_vec();
    expected.extend(address_word(owner));
    expected.extend(nonce.0);
    assert_eq!(
        authorization_state_call(owner, nonce).as_ref(),
        expected.as_slice()
    );

    let amount = Amount::parse_atomic("1000000000000").unwrap();
    let mut expected = hex!("40c10f19").to_vec();
    expected.extend(address_word(owner));
    expected.extend(word(U256::from(1_000_000_000_000u64)));
    assert_eq!(mint_call(owner, amount).as_ref(), expected.as_slice());

    assert_eq!(eip712_domain_call().as_ref(), hex!("84b0196e"));
}

// ---------------------------------------------------------------------------------------------
// decoders

#[test]
fn balance_and_state_decode_strictly() {
    let balance = word(U256::from(5_000_000u64));
    assert_eq!(
        decode_balance_of(&balance).unwrap(),
        Amount::from(5_000_000u64)
    );
    assert_eq!(
        decode_balance_of(&word(U256::MAX)).unwrap(),
        Amount::from_atomic(U256::MAX)
    );
    let error = decode_balance_of(&balance[..31]).unwrap_err();
    assert_eq!(error.function, "balanceOf(address)");
    assert!(decode_balance_of(&[]).is_err());

    assert!(decode_authorization_state(&word(U256::from(1))).unwrap());
    assert!(!decode_authorization_state(&word(U256::ZERO)).unwrap());
    // A boolean word other than 0 or 1 is not a valid answer.
    assert!(decode_authorization_state(&word(U256::from(2))).is_err());
    assert!(decode_authorization_state(&[1]).is_err());
}

#[test]
fn eip712_domain_decodes() {
    let token = Address::repeat_byte(0x5f);
    let answer = BursarUSD::eip712DomainCall::abi_encode_returns(&BursarUSD::eip712DomainReturn {
        fields: alloy_primitives::FixedBytes([0x0f]),
        name: "Bursar USD".into(),
        version: "2".into(),
        chainId: U256::from(31337u64),
        verifyingContract: token,
        salt: B256::ZERO,
        extensions: vec![],
    });
    let domain = decode_eip712_domain(&answer).unwrap();
    assert_eq!(
        domain,
        TokenDomain {
            name: "Bursar USD".into(),
            version: "2".into(),
            chain_id: U256::from(31337u64),
            verifying_contract: token,
        }
    );
    assert!(decode_eip712_domain(&answer[..answer.len() - 1]).is_err());
    assert!(decode_eip712_domain(&word(U256::from(1))).is_err());
}

#[test]
fn reverts_decode_to_reasons() {
    let used = BursarUSD::AuthorizationAlreadyUsed {
        authorizer: Address::repeat_byte(1),
        nonce: B256::repeat_byte(2),
    }
    .abi_encode();
    assert_eq!(revert_reason(&used), Some(Reason::NONCE_ALREADY_USED));
    assert!(describe_revert(&used).contains("already used or canceled"));
    assert!(matches!(
        decode_revert(&used),
        Some(ContractError::CustomError(
            BursarUSD::BursarUSDErrors::AuthorizationAlreadyUsed(_)
        ))
    ));

    let broke = BursarUSD::ERC20InsufficientBalance {
        sender: Address::repeat_byte(1),
        balance: U256::from(5),
        needed: U256::from(10),
    }
    .abi_encode();
    assert_eq!(revert_reason(&broke), Some(Reason::INSUFFICIENT_FUNDS));
    assert_eq!(
        describe_revert(&broke),
        format!(
            "insufficient balance: {} holds 5 but needs 10",
            Address::repeat_byte(1)
        )
    );

    let cases = [
        (
            BursarUSD::InvalidAuthorizationSignature {
                authorizer: Address::ZERO,
            }
            .abi_encode(),
            Reason::INVALID_SIGNATURE,
        ),
        (
            BursarUSD::AuthorizationExpired {
                validBefore: U256::from(10),
                blockTimestamp: U256::from(11),
            }
            .abi_encode(),
            Reason::VALID_BEFORE,
        ),
        (
            BursarUSD::AuthorizationNotYetValid {
                validAfter: U256::from(10),
                blockTimestamp: U256::from(10),
            }
            .abi_encode(),
            Reason::VALID_AFTER,
        ),
    ];
    for (data, reason) in cases {
        assert_eq!(revert_reason(&data), Some(reason));
    }

    let owner_only = BursarUSD::OwnableUnauthorizedAccount {
        account: Address::repeat_byte(9),
    }
    .abi_encode();
    assert_eq!(revert_reason(&owner_only), None);
    assert!(describe_revert(&owner_only).contains("is not the token owner"));

    let message = Revert::from("nope").abi_encode();
    assert_eq!(revert_reason(&message), None);
    assert_eq!(describe_revert(&message), "reverted: nope");

    assert!(decode_revert(&[]).is_none());
    assert_eq!(describe_revert(&[]), "reverted without data");
    assert!(decode_revert(&hex!("deadbeef00")).is_none());
    assert!(describe_revert(&hex!("deadbeef")).contains("0xdeadbeef"));
    // A known selector with a truncated body is not that error.
    assert!(decode_revert(&used[..used.len() - 1]).is_none());
}

// ---------------------------------------------------------------------------------------------
// typed data for the receive and cancel paths

#[test]
fn receive_and_cancel_digests_sign_and_recover() {
    let signer = PrivateKeySigner::random();
    let token = Address::repeat_byte(0x5f);
    let domain = token_domain("Bursar USD", 31337, token);
    assert_eq!(domain.version.as_deref(), Some("2"));

    let mut a = authorization();
    a.from = signer.address();
    let receive = receive_authorization_signing_hash(&a, &domain);
    let transfer = a.signing_hash(&domain);
    assert_ne!(
        receive, transfer,
        "receive and transfer digests must differ"
    );
    let signature = signer.sign_hash_sync(&receive).unwrap().as_bytes();
    assert_eq!(
        recover_signer(&receive, &signature).unwrap(),
        signer.address()
    );

    let cancel = cancel_authorization_signing_hash(a.from, a.nonce, &domain);
    let signature = signer.sign_hash_sync(&cancel).unwrap().as_bytes();
    assert_eq!(
        recover_signer(&cancel, &signature).unwrap(),
        signer.address()
    );
    // Bound to the domain: another chain gives another digest.
    let elsewhere = token_domain("Bursar USD", 1, token);
    assert_ne!(
        cancel,
        cancel_authorization_signing_hash(a.from, a.nonce, &elsewhere)
    );
    assert_eq!(Bytes::from(signature.to_vec()).len(), 65);
}
