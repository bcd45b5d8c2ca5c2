//! Every public decoder is total: arbitrary bytes, arbitrary strings, arbitrary JSON, and valid
//! documents with fields removed or replaced by wrong types give an error value, never a panic.
//! Where an independent oracle exists the outcome is checked too, and a mutated payment that still
//! passes `check_payment` must still pay the signed amount to the signed recipient from the signer.

use std::sync::LazyLock;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use base64::Engine;
use bursar_protocol::codec;
use bursar_protocol::exact_evm::{
    self, Authorization, ExactEvmPayload, check_payment, sign_authorization, token_domain,
};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequired, PaymentRequirements,
    Resource, SettleResponse, X402Version,
};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

const CHAIN: u64 = 31337;
const NOW: u64 = 1_800_000_000;
const TOKEN_NAME: &str = "Bursar USD";

// ---------------------------------------------------------------------------------------------
// fixtures: one valid document of every kind, signed once

struct Fixture {
    signer: Address,
    requirements: PaymentRequirements,
    payload_v2: PaymentPayload,
    payload_v1: PaymentPayload,
    /// JSON documents of every kind a decoder reads, each valid as built.
    documents: Vec<(&'static str, Value)>,
}

fn token() -> Address {
    Address::repeat_byte(0x5f)
}

fn pay_to() -> Address {
    Address::repeat_byte(0x70)
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let key = PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11)).unwrap();
    let requirements = PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(CHAIN),
        amount: Amount::from(10_000u64),
        asset: token().into(),
        pay_to: pay_to().into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
    };
    let authorization = Authorization {
        from: key.address(),
        to: pay_to(),
        value: requirements.amount,
        valid_after: U256::from(NOW - 600),
        valid_before: U256::from(NOW + 60),
        nonce: B256::repeat_byte(0x42),
    };
    let domain = token_domain(TOKEN_NAME, "2", CHAIN, token());
    let signature = sign_authorization(&key, &authorization, &domain).unwrap();
    let exact = ExactEvmPayload {
        signature,
        authorization,
    };
    let resource = Resource {
        url: "https://api.example/report".into(),
        description: Some("a report".into()),
        mime_type: Some("application/json".into()),
        output_schema: None,
        ..Default::default()
    };
    let payload_v2 =
        PaymentPayload::new_v2(requirements.clone(), Some(resource.clone()), exact.clone());
    let payload_v1 = PaymentPayload::new_v1("exact".into(), Network::Eip155(CHAIN), exact.clone());
    let required = PaymentRequired {
        version: X402Version::V2,
        error: Some("payment required".into()),
        resource: resource.clone(),
        accepts: vec![requirements.clone()],
        extensions: Some(json!({"bazaar": {"info": {"input": {"method": "GET"}}}})),
    };
    let request_v2 = FacilitatorRequest {
        version: X402Version::V2,
        payload: payload_v2.clone(),
        requirements: requirements.clone(),
        resource: None,
    };
    let request_v1 = FacilitatorRequest {
        version: X402Version::V1,
        payload: payload_v1.clone(),
        requirements: requirements.clone(),
        resource: Some(resource),
    };
    let settled = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(key.address().into()),
        transaction: B256::repeat_byte(0xab).into(),
        network: "eip155:31337".into(),
    };
    let documents = vec![
        ("payload v2", payload_v2.to_json_value()),
        ("payload v1", payload_v1.to_json_value()),
        (
            "required v2",
            serde_json::to_value(required.to_v2()).unwrap(),
        ),
        (
            "required v1",
            serde_json::to_value(required.to_v1()).unwrap(),
        ),
        ("request v2", request_v2.to_json_value()),
        ("request v1", request_v1.to_json_value()),
        ("settle", serde_json::to_value(&settled).unwrap()),
        ("exact payload", exact.to_value()),
        ("requirements", serde_json::to_value(&requirements).unwrap()),
    ];
    Fixture {
        signer: key.address(),
        requirements,
        payload_v2,
        payload_v1,
        documents,
    }
});

// ---------------------------------------------------------------------------------------------
// feeding every decoder

/// Runs every byte-level decoder on `bytes`.
fn decode_bytes(bytes: &[u8]) {
    let _ = PaymentPayload::from_json(bytes);
    let _ = PaymentRequired::from_v1_body(bytes);
    let _ = FacilitatorRequest::from_json(bytes);
    let _ = bursar_protocol::types::peek_version(bytes);
}

/// Runs every string-level decoder on `text`.
fn decode_text(text: &str) {
    let _ = PaymentPayload::from_header(text);
    let _ = PaymentRequired::from_v2_header(text);
    let _ = SettleResponse::from_header(text);
    let _ = codec::decode_header::<Value>(text);
    let _ = codec::decode_header::<PaymentRequirements>(text);
    let _ = codec::decode_header_json(text);
    let _ = Amount::parse_atomic(text);
    let _ = Amount::parse_human(text, 6, "USDC");
    let _ = Amount::parse_human(text, 0, "");
    let _ = Amount::parse_human(text, u8::MAX, "USDC");
    let _ = Network::parse(text);
}

/// Runs every decoder on a JSON value: as a body, as a header, and as a scheme payload. When it
/// decodes as a payment, also runs the stateless checks and returns the outcome.
fn decode_value(value: &Value) {
    let bytes = serde_json::to_vec(value).unwrap();
    decode_bytes(&bytes);
    decode_text(&codec::encode_header(value));
    let _ = ExactEvmPayload::from_value(value);
    let _ = serde_json::from_value::<PaymentRequirements>(value.clone());
    if let Ok(payload) = PaymentPayload::from_json(&bytes) {
        checked_payment_is_sound(&payload, &FIXTURE.requirements);
    }
    if let Ok(request) = FacilitatorRequest::from_json(&bytes) {
        checked_payment_is_sound(&request.payload, &request.requirements);
    }
}

/// Runs `check_payment`; if it accepts, the money must go where the signature says.
fn checked_payment_is_sound(payload: &PaymentPayload, requirements: &PaymentRequirements) {
    for (chain, now) in [(CHAIN, NOW), (CHAIN, 0), (CHAIN, u64::MAX), (1, NOW)] {
        if let Ok(checked) = check_payment(payload, requirements, chain, now) {
            let authorization = &checked.payload.authorization;
            assert_eq!(checked.chain_id, chain);
            assert_eq!(requirements.network.chain_id(), Some(chain));
            assert_eq!(authorization.value, requirements.amount);
            assert_eq!(Some(authorization.to), requirements.pay_to.evm());
            assert_eq!(checked.payer, authorization.from);
            assert!(authorization.valid_after <= U256::from(now));
            assert!(authorization.valid_before >= U256::from(now.saturating_add(6)));
            // Only the fixture's key ever signs here, so any accepted payer is that key's address.
            assert_eq!(checked.payer, FIXTURE.signer);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generators

/// Field names of x402 documents, so generated objects reach deep into the decoders.
const FIELD_NAMES: &[&str] = &[
    "x402Version",
    "scheme",
    "network",
    "payload",
    "accepted",
    "accepts",
    "resource",
    "amount",
    "maxAmountRequired",
    "asset",
    "payTo",
    "maxTimeoutSeconds",
    "extra",
    "name",
    "version",
    "signature",
    "authorization",
    "from",
    "to",
    "value",
    "validAfter",
    "validBefore",
    "nonce",
    "error",
    "url",
    "description",
    "mimeType",
    "outputSchema",
    "extensions",
    "paymentPayload",
    "paymentRequirements",
    "success",
    "transaction",
    "errorReason",
    "payer",
];

/// Strings that are nearly valid somewhere.
const TRICKY_STRINGS: &[&str] = &[
    "",
    "exact",
    "eip155:31337",
    "eip155:",
    "eip155:-1",
    "eip155:18446744073709551616",
    "base",
    "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    "0x",
    "0x5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f",
    "0x7070707070707070707070707070707070707070",
    "0x4242424242424242424242424242424242424242424242424242424242424242",
    "115792089237316195423570985008687907853269984665640564039457584007913129639935",
    "115792089237316195423570985008687907853269984665640564039457584007913129639936",
    "-1",
    "1e6",
    " 1",
    "0.5",
    "10000",
    "\u{0}",
    "\u{feff}1",
    "１２３",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(Value::from(1)),
        Just(Value::from(2)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::from)),
        any::<String>().prop_map(Value::from),
        "[0-9]{0,100}".prop_map(Value::from),
        "0x[0-9a-fA-F]{0,140}".prop_map(Value::from),
        select(TRICKY_STRINGS).prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(FIELD_NAMES).prop_map(String::from),
        1 => "[a-zA-Z]{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..10)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Values that have the wrong type or an extreme value wherever they land.
fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        leaf(),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, 2])),
        Just(json!({"x402Version": 2})),
        Just(Value::from("9".repeat(200))),
        Just(Value::from("a".repeat(70_000))),
        Just(nested(120)),
        json_value(),
    ]
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    /// Wrap the node in an array, turning objects into arrays where objects are expected.
    Wrap(Index),
    /// Replace an object by the array of its values: serde reads structs from sequences too.
    ObjectToArray(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), wrong_value()).prop_map(|(at, value)| Mutation::Replace(at, value)),
        any::<Index>().prop_map(Mutation::Wrap),
        any::<Index>().prop_map(Mutation::ObjectToArray),
    ]
}

/// JSON pointers to every node of `value`, root first.
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    walk(child, format!("{at}/{escaped}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn apply(document: &mut Value, mutation: &Mutation) {
    let all = pointers(document);
    let pick = |at: &Index| all[at.index(all.len())].clone();
    match mutation {
        Mutation::Remove(at) => {
            let pointer = pick(at);
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                *document = Value::Null;
                return;
            };
            let key = last.replace("~1", "/").replace("~0", "~");
            match document.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        Mutation::Replace(at, value) => {
            if let Some(node) = document.pointer_mut(&pick(at)) {
                *node = value.clone();
            }
        }
        Mutation::Wrap(at) => {
            if let Some(node) = document.pointer_mut(&pick(at)) {
                *node = Value::Array(vec![node.take()]);
            }
        }
        Mutation::ObjectToArray(at) => {
            if let Some(node) = document.pointer_mut(&pick(at))
                && let Value::Object(map) = node
            {
                let values = std::mem::take(map).into_iter().map(|(_, v)| v).collect();
                *node = Value::Array(values);
            }
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// properties

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_bytes(&bytes);
        decode_text(&String::from_utf8_lossy(&bytes));
        // Valid base64 of garbage reaches the JSON stage of the header decoders.
        decode_text(&base64::engine::general_purpose::STANDARD.encode(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        decode_text(&text);
        decode_bytes(text.as_bytes());
    }

    #[test]
    fn base64_looking_strings_never_panic(text in "[A-Za-z0-9+/=_-]{0,200}") {
        decode_text(&text);
    }

    #[test]
    fn atomic_amounts_match_a_digit_by_digit_oracle(text in prop_oneof![
        "[0-9]{0,90}",
        "0{0,100}[1-9][0-9]{70,80}",
        any::<String>(),
    ]) {
        let expected = text.bytes().try_fold((U256::ZERO, !text.is_empty()), |(acc, ok), b| {
            if !b.is_ascii_digit() {
                return None;
            }
            let next = acc.checked_mul(U256::from(10))?.checked_add(U256::from(b - b'0'))?;
            Some((next, ok))
        });
        match (Amount::parse_atomic(&text), expected) {
            (Ok(amount), Some((value, true))) => {
                prop_assert_eq!(amount.atomic(), value);
                // Display is canonical and parses back to the same amount.
                prop_assert_eq!(Amount::parse_atomic(&amount.to_string()).unwrap(), amount);
            }
            (Err(_), None) | (Err(_), Some((_, false))) => {}
            (got, want) => prop_assert!(false, "{:?}: got {:?}, oracle {:?}", text, got, want),
        }
    }

    #[test]
    fn human_amounts_round_trip(atomic in any::<u128>(), decimals in 0u8..=30) {
        let amount = Amount::from_u128(atomic);
        let human = amount.to_human(decimals);
        prop_assert_eq!(Amount::parse_human(&human, decimals, "USDC").unwrap(), amount);
        prop_assert_eq!(
            Amount::parse_human(&format!("{human} usdc"), decimals, "USDC").unwrap(),
            amount
        );
    }

    #[test]
    fn networks_parse_to_a_canonical_form(text in prop_oneof![
        "eip155:[0-9]{0,25}",
        "[a-z0-9-]{1,12}:[A-Za-z0-9_-]{1,40}",
        select(TRICKY_STRINGS).prop_map(String::from),
        any::<String>(),
    ]) {
        if let Ok(network) = Network::parse(&text) {
            let canonical = network.to_string();
            prop_assert_eq!(Network::parse(&canonical).unwrap(), network.clone());
            prop_assert_eq!(Network::parse(&network.v1_name()).unwrap(), network);
        }
    }
}

proptest! {
    #![proptest_config(config(768))]

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        decode_value(&value);
        // The same value inside the envelopes the decoders expect.
        for version in [1, 2] {
            decode_value(&json!({"x402Version": version, "paymentPayload": value.clone(),
                "paymentRequirements": value.clone()}));
            decode_value(&json!({"x402Version": version, "accepted": value.clone(),
                "payload": value.clone(), "scheme": "exact", "network": "eip155:31337"}));
            decode_value(&json!({"x402Version": version, "accepts": [value.clone()],
                "resource": value.clone()}));
        }
        let mut payload = FIXTURE.payload_v2.to_json_value();
        payload["payload"] = value;
        decode_value(&payload);
    }

    #[test]
    fn mutated_documents_never_panic(
        which in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let (_, original) = &FIXTURE.documents[which.index(FIXTURE.documents.len())];
        let mut document = original.clone();
        for m in &mutations {
            apply(&mut document, m);
        }
        decode_value(&document);
    }

    #[test]
    fn payments_against_mutated_requirements_stay_sound(
        mutations in prop::collection::vec(mutation(), 1..4),
        v1 in any::<bool>(),
    ) {
        let mut document = serde_json::to_value(&FIXTURE.requirements).unwrap();
        for m in &mutations {
            apply(&mut document, m);
        }
        if let Ok(requirements) = serde_json::from_value::<PaymentRequirements>(document) {
            let payload = if v1 { &FIXTURE.payload_v1 } else { &FIXTURE.payload_v2 };
            checked_payment_is_sound(payload, &requirements);
        }
    }

    #[test]
    fn check_payment_is_total_over_clock_and_chain(now in any::<u64>(), chain in any::<u64>()) {
        for payload in [&FIXTURE.payload_v1, &FIXTURE.payload_v2] {
            match check_payment(payload, &FIXTURE.requirements, chain, now) {
                Ok(checked) => {
                    prop_assert_eq!(chain, CHAIN);
                    prop_assert!((NOW - 600..=NOW + 60 - 6).contains(&now));
                    prop_assert_eq!(checked.payer, FIXTURE.signer);
                }
                Err(invalid) => prop_assert!(!invalid.message.is_empty()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// fixed cases

#[test]
fn every_fixture_document_decodes_as_built() {
    let f = &*FIXTURE;
    let body = |name: &str| {
        let (_, value) = f.documents.iter().find(|(n, _)| *n == name).unwrap();
        serde_json::to_vec(value).unwrap()
    };
    let v2 = PaymentPayload::from_json(&body("payload v2")).unwrap();
    assert_eq!(v2, f.payload_v2);
    let v1 = PaymentPayload::from_header(&codec::encode_header(
        &serde_json::from_slice::<Value>(&body("payload v1")).unwrap(),
    ))
    .unwrap();
    assert_eq!(v1, f.payload_v1);
    let required = PaymentRequired::from_v1_body(&body("required v1")).unwrap();
    assert_eq!(required.accepts, vec![f.requirements.clone()]);
    let required = PaymentRequired::from_v2_header(&codec::encode_header(
        &serde_json::from_slice::<Value>(&body("required v2")).unwrap(),
    ))
    .unwrap();
    assert_eq!(required.accepts, vec![f.requirements.clone()]);
    for name in ["request v1", "request v2"] {
        let request = FacilitatorRequest::from_json(&body(name)).unwrap();
        assert_eq!(request.requirements, f.requirements);
        let checked = check_payment(&request.payload, &request.requirements, CHAIN, NOW).unwrap();
        assert_eq!(checked.payer, f.signer);
    }
    let settled = SettleResponse::from_header(&codec::encode_header(
        &serde_json::from_slice::<Value>(&body("settle")).unwrap(),
    ))
    .unwrap();
    assert!(settled.success);
    let exact = f.payload_v2.payload.exact_evm().unwrap();
    assert_eq!(exact.authorization.to, pay_to());
    assert_eq!(exact_evm::SCHEME_EXACT, "exact");
}

#[test]
fn documents_as_json_arrays_are_refused_not_panicked_on() {
    // serde reads a struct from a JSON array of its fields in order, so these arrays get past the
    // first typed read; the decoders must still refuse them with an error.
    let bodies: [&[u8]; 4] = [
        br#"[null, {"x402Version": 1}]"#,
        br#"[2, {"x402Version": 2}]"#,
        br#"[1, {"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}}, {}]"#,
        br#"[{"x402Version": 2}]"#,
    ];
    for body in bodies {
        assert!(
            FacilitatorRequest::from_json(body).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(PaymentPayload::from_json(body).is_err());
        assert!(PaymentRequired::from_v1_body(body).is_err());
    }
}

#[test]
fn oversized_and_deeply_nested_inputs_are_refused() {
    let deep = serde_json::to_vec(&json!({"x402Version": 2, "accepted": nested(120)})).unwrap();
    assert!(PaymentPayload::from_json(&deep).is_err());
    let raw_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(PaymentPayload::from_json(raw_deep.as_bytes()).is_err());
    assert!(FacilitatorRequest::from_json(raw_deep.as_bytes()).is_err());
    let big = vec![b' '; 70 * 1024];
    assert!(FacilitatorRequest::from_json(&big).is_err());
    assert!(PaymentRequired::from_v1_body(&big).is_err());
    assert!(PaymentPayload::from_header(&"QUFB".repeat(5000)).is_err());
}
