//! Keystore v3 behaviour: the published test vectors, geth and foundry documents,
//! interoperability with an independent implementation (`eth-keystore`), every refusal,
//! passphrase sources, and that no secret ever reaches an error or `Debug` output.

use std::{
    path::Path,
    process::Command,
    sync::LazyLock,
    time::{Duration, Instant, UNIX_EPOCH},
};

use alloy_primitives::address;
use bursar_wallet::{
    Kdf, Keystore, Passphrase, PrivateKeySigner, WalletError, generate,
    kdf::{PBKDF2_C_MAX, SCRYPT_LOG_N_MAX},
};
use proptest::prelude::*;
use serde_json::{Value, json};

const VECTOR_KEY: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
const VECTOR_PASSWORD: &str = "testpassword";

/// Web3 Secret Storage Definition, test vector 1 (AES-128-CTR, PBKDF2-SHA-256).
const PBKDF2_VECTOR: &str = r#"{
    "crypto" : {
        "cipher" : "aes-128-ctr",
        "cipherparams" : {
            "iv" : "6087dab2f9fdbbfaddc31a909735c1e6"
        },
        "ciphertext" : "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf" : "pbkdf2",
        "kdfparams" : {
            "c" : 262144,
            "dklen" : 32,
            "prf" : "hmac-sha256",
            "salt" : "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"
        },
        "mac" : "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"
    },
    "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version" : 3
}"#;

/// Web3 Secret Storage Definition, test vector 2 (AES-128-CTR, scrypt n=2^18 r=1 p=8).
const SCRYPT_VECTOR: &str = r#"{
    "crypto" : {
        "cipher" : "aes-128-ctr",
        "cipherparams" : {
            "iv" : "83dbcc02d8ccb40e466191a123791e0e"
        },
        "ciphertext" : "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
        "kdf" : "scrypt",
        "kdfparams" : {
            "dklen" : 32,
            "n" : 262144,
            "p" : 8,
            "r" : 1,
            "salt" : "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"
        },
        "mac" : "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"
    },
    "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version" : 3
}"#;

/// The pbkdf2 vector as older geth-era tools (keythereum, MyEtherWallet) wrote it:
/// capitalised `Crypto`, an `address` field.
const GETH_STYLE_VECTOR: &str = r#"{
    "address": "008aeeda4d805471df9b2a5b0f38a0c3bcba786b",
    "Crypto": {
        "cipher": "aes-128-ctr",
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "cipherparams": { "iv": "6087dab2f9fdbbfaddc31a909735c1e6" },
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
        "kdf": "pbkdf2",
        "kdfparams": {
            "c": 262144,
            "dklen": 32,
            "prf": "hmac-sha256",
            "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"
        }
    },
    "id": "e13b209c-3b2f-4327-bab0-3bef2e51630d",
    "version": 3
}"#;

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_owned()).unwrap()
}

fn key_hex(signer: &PrivateKeySigner) -> String {
    hex::encode(signer.to_bytes())
}

fn light_keystore() -> (Keystore, PrivateKeySigner) {
    let signer = PrivateKeySigner::random();
    let keystore = Keystore::encrypt(&signer, &pass("light passphrase"), Kdf::light()).unwrap();
    (keystore, signer)
}

/// One light keystore (passphrase "light passphrase") shared by the tests that only
/// edit or parse its JSON, so that they do not each pay for a key derivation.
static LIGHT_JSON: LazyLock<String> = LazyLock::new(|| light_keystore().0.to_json());

/// The shared light keystore's JSON as a mutable value.
fn light_value() -> Value {
    serde_json::from_str(&LIGHT_JSON).unwrap()
}

/// The test vector's key under light scrypt parameters, for tests that decrypt repeatedly.
static LIGHT_VECTOR: LazyLock<Keystore> = LazyLock::new(|| {
    let signer = PrivateKeySigner::from_slice(&hex::decode(VECTOR_KEY).unwrap()).unwrap();
    Keystore::encrypt(&signer, &pass(VECTOR_PASSWORD), Kdf::light()).unwrap()
});

fn parse_value(value: &Value) -> Result<Keystore, WalletError> {
    Keystore::from_json(&value.to_string())
}

// ---------------------------------------------------------------- published vectors

#[test]
fn pbkdf2_test_vector_decrypts_to_the_published_key() {
    let keystore = Keystore::from_json(PBKDF2_VECTOR).unwrap();
    assert_eq!(keystore.kdf(), Kdf::Pbkdf2 { c: 262_144 });
    assert_eq!(keystore.address(), None);
    assert_eq!(
        keystore.id().to_string(),
        "3198bc9c-6672-5ab3-d995-4942343ae5b6"
    );
    let signer = keystore.decrypt(&pass(VECTOR_PASSWORD)).unwrap();
    assert_eq!(key_hex(&signer), VECTOR_KEY);
    assert_eq!(
        signer.address(),
        address!("008aeeda4d805471df9b2a5b0f38a0c3bcba786b")
    );
}

#[test]
fn scrypt_test_vector_decrypts_to_the_published_key() {
    let keystore = Keystore::from_json(SCRYPT_VECTOR).unwrap();
    assert_eq!(
        keystore.kdf(),
        Kdf::Scrypt {
            log_n: 18,
            r: 1,
            p: 8
        }
    );
    let signer = keystore.decrypt(&pass(VECTOR_PASSWORD)).unwrap();
    assert_eq!(key_hex(&signer), VECTOR_KEY);
}

#[test]
fn test_vectors_refuse_a_wrong_passphrase() {
    for vector in [PBKDF2_VECTOR, SCRYPT_VECTOR] {
        let err = Keystore::from_json(vector)
            .unwrap()
            .decrypt(&pass("testpassworD"))
            .unwrap_err();
        assert!(matches!(err, WalletError::WrongPassphrase), "{err}");
    }
}

// ---------------------------------------------------------------- geth and foundry documents

#[test]
fn geth_style_document_with_address_round_trips() {
    let keystore = Keystore::from_json(GETH_STYLE_VECTOR).unwrap();
    assert_eq!(
        keystore.address(),
        Some(address!("008aeeda4d805471df9b2a5b0f38a0c3bcba786b"))
    );
    let signer = keystore.decrypt(&pass(VECTOR_PASSWORD)).unwrap();
    assert_eq!(key_hex(&signer), VECTOR_KEY);

    // Written back in geth's layout: lowercase `crypto`, address without 0x, same values.
    let written: Value = serde_json::from_str(&keystore.to_json()).unwrap();
    assert_eq!(
        written["address"],
        "008aeeda4d805471df9b2a5b0f38a0c3bcba786b"
    );
    assert_eq!(written["version"], 3);
    assert_eq!(written["id"], "e13b209c-3b2f-4327-bab0-3bef2e51630d");
    assert_eq!(written["crypto"]["kdfparams"]["c"], 262_144);
    assert_eq!(written["crypto"]["kdfparams"]["prf"], "hmac-sha256");
    assert!(written.get("Crypto").is_none());

    let again = Keystore::from_json(&keystore.to_json()).unwrap();
    assert_eq!(again, keystore);
    assert_eq!(again.to_json(), keystore.to_json());
    assert_eq!(
        Keystore::from_json(&keystore.to_json_pretty()).unwrap(),
        keystore
    );
}

#[test]
fn bursar_writes_geth_layout() {
    let (keystore, signer) = light_keystore();
    let json = keystore.to_json();
    // Field order and shapes exactly as geth writes them.
    let address = hex::encode(signer.address());
    assert!(
        json.starts_with(&format!(
            r#"{{"address":"{address}","crypto":{{"cipher":"aes-128-ctr","ciphertext":""#
        )),
        "{json}"
    );
    let value: Value = serde_json::from_str(&json).unwrap();
    let params = &value["crypto"]["kdfparams"];
    assert_eq!(
        params.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["dklen", "n", "p", "r", "salt"]
    );
    assert_eq!(params["n"], 4096);
    assert_eq!(params["r"], 8);
    assert_eq!(params["p"], 6);
    assert_eq!(params["dklen"], 32);
    assert_eq!(params["salt"].as_str().unwrap().len(), 64);
    assert_eq!(
        value["crypto"]["cipherparams"]["iv"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
    let id = uuid::Uuid::parse_str(value["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 4);
    assert!(json.ends_with(r#","version":3}"#));
    assert!(!json.contains("0x"));
    // Deterministic.
    assert_eq!(json, keystore.to_json());
    assert_eq!(keystore.address(), Some(signer.address()));
}

#[test]
fn encryption_is_fresh_each_time() {
    let signer = PrivateKeySigner::random();
    let p = pass("same passphrase");
    let a = Keystore::encrypt(&signer, &p, Kdf::light()).unwrap();
    let b = Keystore::encrypt(&signer, &p, Kdf::light()).unwrap();
    assert_ne!(a.id(), b.id());
    let (va, vb): (Value, Value) = (
        serde_json::from_str(&a.to_json()).unwrap(),
        serde_json::from_str(&b.to_json()).unwrap(),
    );
    assert_ne!(
        va["crypto"]["kdfparams"]["salt"],
        vb["crypto"]["kdfparams"]["salt"]
    );
    assert_ne!(
        va["crypto"]["cipherparams"]["iv"],
        vb["crypto"]["cipherparams"]["iv"]
    );
    assert_ne!(va["crypto"]["ciphertext"], vb["crypto"]["ciphertext"]);
    assert_eq!(key_hex(&a.decrypt(&p).unwrap()), key_hex(&signer));
    assert_eq!(key_hex(&b.decrypt(&p).unwrap()), key_hex(&signer));
}

#[test]
fn pbkdf2_keystores_round_trip() {
    let signer = PrivateKeySigner::random();
    let p = pass("pbkdf2 passphrase");
    let keystore = Keystore::encrypt(&signer, &p, Kdf::Pbkdf2 { c: 4096 }).unwrap();
    let parsed = Keystore::from_json(&keystore.to_json()).unwrap();
    assert_eq!(parsed.kdf(), Kdf::Pbkdf2 { c: 4096 });
    assert_eq!(key_hex(&parsed.decrypt(&p).unwrap()), key_hex(&signer));
}

#[test]
fn generate_makes_a_decryptable_key() {
    let p = pass("generated");
    let (keystore, address) = generate(Kdf::light(), &p).unwrap();
    assert_eq!(keystore.address(), Some(address));
    let reparsed = Keystore::from_json(&keystore.to_json()).unwrap();
    assert_eq!(reparsed.decrypt(&p).unwrap().address(), address);
    let (other, other_address) = generate(Kdf::light(), &p).unwrap();
    assert_ne!(address, other_address);
    assert_ne!(other.to_json(), keystore.to_json());
}

/// geth's standard parameters (n = 2^18, r = 8, 256 MiB): one round trip, timed.
#[test]
fn standard_parameters_round_trip() {
    let signer = PrivateKeySigner::random();
    let p = pass("standard");
    let started = Instant::now();
    let keystore = Keystore::encrypt(&signer, &p, Kdf::standard()).unwrap();
    let encrypted_in = started.elapsed();
    let json = keystore.to_json();
    assert!(
        json.contains(r#""n":262144"#) && json.contains(r#""r":8"#) && json.contains(r#""p":1"#)
    );
    assert_eq!(
        key_hex(&Keystore::from_json(&json).unwrap().decrypt(&p).unwrap()),
        key_hex(&signer)
    );
    assert!(
        encrypted_in < Duration::from_secs(10),
        "standard scrypt took {encrypted_in:?}"
    );
}

#[test]
fn file_name_follows_geth() {
    let keystore = Keystore::from_json(GETH_STYLE_VECTOR).unwrap();
    let at = UNIX_EPOCH + Duration::new(1_774_934_645, 920_751_759);
    assert_eq!(
        keystore.file_name_at(at),
        "UTC--2026-03-31T05-24-05.920751759Z--008aeeda4d805471df9b2a5b0f38a0c3bcba786b"
    );
    // Without an address the id names the file.
    let foundry = Keystore::from_json(PBKDF2_VECTOR).unwrap();
    assert_eq!(
        foundry.file_name_at(UNIX_EPOCH),
        "UTC--1970-01-01T00-00-00.000000000Z--3198bc9c-6672-5ab3-d995-4942343ae5b6"
    );
    assert!(keystore.file_name().starts_with("UTC--20"));
}

// ---------------------------------------------------------------- interop with eth-keystore

/// foundry (`cast wallet new`, `cast wallet import`) writes keystores with `eth-keystore`:
/// no `address` field, scrypt n=2^13 r=8 p=1. Bursar reads them.
#[test]
fn foundry_style_keystore_written_by_eth_keystore_decrypts_with_bursar() {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    let mut rng = rand_08::thread_rng();
    eth_keystore::encrypt_key(
        dir.path(),
        &mut rng,
        signer.to_bytes(),
        "foundry passphrase",
        Some("agent"),
    )
    .unwrap();
    let json = std::fs::read_to_string(dir.path().join("agent")).unwrap();

    let keystore = Keystore::from_json(&json).unwrap();
    assert_eq!(keystore.address(), None, "foundry writes no address");
    assert!(matches!(keystore.kdf(), Kdf::Scrypt { .. }));
    let decrypted = keystore.decrypt(&pass("foundry passphrase")).unwrap();
    assert_eq!(key_hex(&decrypted), key_hex(&signer));
    assert!(matches!(
        keystore.decrypt(&pass("not it")),
        Err(WalletError::WrongPassphrase)
    ));

    // And the foundry document round-trips through Bursar unchanged in substance.
    let rewritten = Keystore::from_json(&keystore.to_json()).unwrap();
    assert_eq!(rewritten, keystore);
    assert_eq!(
        key_hex(&rewritten.decrypt(&pass("foundry passphrase")).unwrap()),
        key_hex(&signer)
    );
}

#[test]
fn keystore_written_by_bursar_decrypts_with_eth_keystore() {
    let dir = tempfile::tempdir().unwrap();
    for kdf in [Kdf::light(), Kdf::Pbkdf2 { c: 8192 }] {
        let signer = PrivateKeySigner::random();
        let keystore = Keystore::encrypt(&signer, &pass("exported"), kdf).unwrap();
        let path = dir.path().join(keystore.file_name());
        std::fs::write(&path, keystore.to_json_pretty()).unwrap();
        let key = eth_keystore::decrypt_key(&path, "exported").unwrap();
        assert_eq!(hex::encode(key), key_hex(&signer), "{kdf:?}");
        assert!(eth_keystore::decrypt_key(&path, "exported!").is_err());
    }
}

// ---------------------------------------------------------------- refusals

#[test]
fn tampered_ciphertext_fails_the_mac() {
    let mut value = light_value();
    let ct = value["crypto"]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if &ct[..1] == "0" { "1" } else { "0" }, &ct[1..]);
    value["crypto"]["ciphertext"] = json!(flipped);
    let err = parse_value(&value)
        .unwrap()
        .decrypt(&pass("light passphrase"))
        .unwrap_err();
    assert!(matches!(err, WalletError::WrongPassphrase));
    assert!(err.to_string().contains("modified or corrupted"), "{err}");
}

#[test]
fn tampered_mac_iv_or_salt_is_refused() {
    for (object, field) in [
        ("crypto", "mac"),
        ("cipherparams", "iv"),
        ("kdfparams", "salt"),
    ] {
        let mut value = light_value();
        let target = if object == "crypto" {
            &mut value["crypto"]
        } else {
            &mut value["crypto"][object]
        };
        let old = target[field].as_str().unwrap().to_owned();
        let new = format!(
            "{}{}",
            &old[..old.len() - 1],
            if old.ends_with('0') { "1" } else { "0" }
        );
        target[field] = json!(new);
        let result = parse_value(&value)
            .unwrap()
            .decrypt(&pass("light passphrase"));
        match (field, result) {
            // A changed IV still passes the MAC (it covers the ciphertext only) but yields
            // a different key, caught by the address check.
            ("iv", Err(WalletError::AddressMismatch { .. })) => {}
            ("iv", other) => panic!("iv: {other:?}"),
            (_, Err(WalletError::WrongPassphrase)) => {}
            (field, other) => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn address_must_match_the_key() {
    let mut value: Value = serde_json::from_str(&LIGHT_VECTOR.to_json()).unwrap();
    value["address"] = json!("0x000000000000000000000000000000000000dead");
    let err = parse_value(&value)
        .unwrap()
        .decrypt(&pass(VECTOR_PASSWORD))
        .unwrap_err();
    match &err {
        WalletError::AddressMismatch { expected, actual } => {
            assert_eq!(
                *expected,
                address!("000000000000000000000000000000000000dead")
            );
            assert_eq!(
                *actual,
                address!("008aeeda4d805471df9b2a5b0f38a0c3bcba786b")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().contains(VECTOR_KEY));
}

#[test]
fn garbage_and_truncated_json_are_clear_errors() {
    for text in [
        "",
        "not json",
        "{",
        "[1,2",
        "null",
        "42",
        "\"keystore\"",
        "[]",
    ] {
        let err = Keystore::from_json(text).unwrap_err();
        assert!(
            matches!(
                err,
                WalletError::Json { .. }
                    | WalletError::InvalidField {
                        field: "(document)",
                        ..
                    }
            ),
            "{text:?}: {err:?}"
        );
    }
    let full = LIGHT_JSON.clone();
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        let err = Keystore::from_json(&full[..cut]).unwrap_err();
        assert!(matches!(err, WalletError::Json { .. }), "{cut}: {err:?}");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
    let err = Keystore::from_json(&full[..full.len() - 1]).unwrap_err();
    assert!(err.to_string().contains("truncated input"), "{err}");
    // A byte order mark in front is tolerated.
    assert!(Keystore::from_json(&format!("\u{feff}{full}")).is_ok());
}

#[test]
fn wrong_version_is_refused() {
    for (version, shown) in [
        (json!(1), "1"),
        (json!(2), "2"),
        (json!(4), "4"),
        (json!(-3), "-3"),
        (json!(3.5), "(a fractional number)"),
        (json!("3"), "(a JSON string)"),
    ] {
        let mut value = light_value();
        value["version"] = version;
        let err = parse_value(&value).unwrap_err();
        assert!(
            matches!(&err, WalletError::UnsupportedVersion { found } if found == shown),
            "{err:?}"
        );
        assert!(err.to_string().contains("only version 3"), "{err}");
    }
    let mut value = light_value();
    value.as_object_mut().unwrap().remove("version");
    assert!(matches!(
        parse_value(&value),
        Err(WalletError::InvalidField {
            field: "version",
            ..
        })
    ));
}

#[test]
fn unsupported_cipher_kdf_and_prf_are_refused() {
    let mut value = light_value();
    value["crypto"]["cipher"] = json!("aes-128-cbc");
    let err = parse_value(&value).unwrap_err();
    assert!(
        matches!(&err, WalletError::UnsupportedCipher { found } if found == "\"aes-128-cbc\""),
        "{err:?}"
    );
    assert!(err.to_string().contains("only aes-128-ctr"));

    let mut value = light_value();
    value["crypto"]["kdf"] = json!("argon2id");
    let err = parse_value(&value).unwrap_err();
    assert!(matches!(&err, WalletError::UnsupportedKdf { found } if found == "\"argon2id\""));

    let mut value: Value = serde_json::from_str(PBKDF2_VECTOR).unwrap();
    value["crypto"]["kdfparams"]["prf"] = json!("hmac-sha512");
    let err = parse_value(&value).unwrap_err();
    assert!(
        matches!(&err, WalletError::UnsupportedPrf { .. }),
        "{err:?}"
    );

    // Long or odd names are not echoed.
    let mut value = light_value();
    value["crypto"]["cipher"] = json!(VECTOR_KEY);
    let err = parse_value(&value).unwrap_err();
    assert!(!err.to_string().contains(VECTOR_KEY), "{err}");
    assert!(!format!("{err:?}").contains(VECTOR_KEY));
}

#[test]
fn absurd_kdf_parameters_are_refused_before_any_work() {
    let cases: Vec<(&str, Value)> = vec![
        ("n", json!(1u64 << 30)),
        ("n", json!(1u64 << (SCRYPT_LOG_N_MAX + 1))),
        ("n", json!(u64::MAX)),
        ("n", json!(1000)),
        ("n", json!(0)),
        ("n", json!(1)),
        ("r", json!(0)),
        ("r", json!(1_000_000)),
        ("r", json!(u64::MAX)),
        ("p", json!(0)),
        ("p", json!(1 << 20)),
        ("dklen", json!(16)),
        ("dklen", json!(1 << 20)),
    ];
    for (param, bad) in cases {
        let mut value = light_value();
        value["crypto"]["kdfparams"][param] = bad.clone();
        let started = Instant::now();
        let err = parse_value(&value).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(
            matches!(
                err,
                WalletError::KdfParams { .. } | WalletError::InvalidField { .. }
            ),
            "{param}={bad}: {err:?}"
        );
    }
    // Memory: n = 2^20 with r = 8 would need 1 GiB.
    let mut value = light_value();
    value["crypto"]["kdfparams"]["n"] = json!(1 << 20);
    value["crypto"]["kdfparams"]["p"] = json!(1);
    let err = parse_value(&value).unwrap_err();
    assert!(err.to_string().contains("memory"), "{err}");
    // Work: n = 2^18, r = 8, p = 8.
    let mut value = light_value();
    value["crypto"]["kdfparams"]["n"] = json!(1 << 18);
    value["crypto"]["kdfparams"]["p"] = json!(8);
    let err = parse_value(&value).unwrap_err();
    assert!(err.to_string().contains("n*r*p"), "{err}");

    for c in [
        json!(0),
        json!(u64::from(PBKDF2_C_MAX) + 1),
        json!(u64::MAX),
    ] {
        let mut value: Value = serde_json::from_str(PBKDF2_VECTOR).unwrap();
        value["crypto"]["kdfparams"]["c"] = c.clone();
        let err = parse_value(&value).unwrap_err();
        assert!(
            matches!(
                err,
                WalletError::KdfParams { .. } | WalletError::InvalidField { .. }
            ),
            "c={c}: {err:?}"
        );
    }

    // And encryption refuses them too.
    let signer = PrivateKeySigner::random();
    assert!(matches!(
        Keystore::encrypt(
            &signer,
            &pass("x"),
            Kdf::Scrypt {
                log_n: 30,
                r: 8,
                p: 1
            }
        ),
        Err(WalletError::KdfParams { .. })
    ));
    assert!(matches!(
        generate(Kdf::Pbkdf2 { c: 0 }, &pass("x")),
        Err(WalletError::KdfParams { .. })
    ));
}

#[test]
fn malformed_fields_name_the_field() {
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 12] = [
        ("crypto", |v| {
            v.as_object_mut().unwrap().remove("crypto");
        }),
        ("crypto", |v| v["crypto"] = json!("x")),
        ("crypto.cipherparams.iv", |v| {
            v["crypto"]["cipherparams"]["iv"] = json!("00")
        }),
        ("crypto.cipherparams.iv", |v| {
            v["crypto"]["cipherparams"]["iv"] = json!("zz")
        }),
        ("crypto.ciphertext", |v| {
            v["crypto"]["ciphertext"] = json!("abcd")
        }),
        ("crypto.ciphertext", |v| {
            v["crypto"]["ciphertext"] = json!(12)
        }),
        ("crypto.mac", |v| {
            v["crypto"].as_object_mut().unwrap().remove("mac");
        }),
        ("crypto.kdfparams.salt", |v| {
            v["crypto"]["kdfparams"]["salt"] = json!("not hex")
        }),
        ("crypto.kdfparams.r", |v| {
            v["crypto"]["kdfparams"]["r"] = json!(-1)
        }),
        ("id", |v| v["id"] = json!("not-a-uuid")),
        ("address", |v| v["address"] = json!("0x1234")),
        ("address", |v| v["address"] = json!(7)),
    ];
    for (field, edit) in cases {
        let mut value = light_value();
        edit(&mut value);
        let err = parse_value(&value).unwrap_err();
        assert!(
            matches!(&err, WalletError::InvalidField { field: f, .. } if *f == field),
            "{field}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }

    // Lenient where real tools differ: 0x prefixes, uppercase hex, null address.
    let mut value = light_value();
    let ct = value["crypto"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_uppercase();
    value["crypto"]["ciphertext"] = json!(format!("0x{ct}"));
    value["address"] = Value::Null;
    // Extra fields (ethers writes `x-ethers`, some wallets `meta`) are ignored.
    value["x-ethers"] = json!({"client": "ethers.js", "version": "0.1"});
    value["crypto"]["meta"] = json!("anything");
    let keystore = parse_value(&value).unwrap();
    assert!(!keystore.to_json().contains("x-ethers"));
    assert_eq!(keystore.address(), None);
    keystore.decrypt(&pass("light passphrase")).unwrap();
}

#[test]
fn oversized_documents_are_refused() {
    let mut value = light_value();
    value["padding"] = json!("x".repeat(70 * 1024));
    assert!(matches!(
        parse_value(&value),
        Err(WalletError::InvalidField {
            field: "(document)",
            ..
        })
    ));
}

// ---------------------------------------------------------------- passphrases

#[test]
fn passphrase_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let keystore = &*LIGHT_VECTOR;

    for content in ["testpassword\n", "testpassword", "testpassword\r\n"] {
        std::fs::write(&path, content).unwrap();
        let p = Passphrase::from_file(&path).unwrap();
        assert_eq!(
            key_hex(&keystore.decrypt(&p).unwrap()),
            VECTOR_KEY,
            "{content:?}"
        );
    }
    // Only one newline is dropped; the rest is part of the passphrase.
    std::fs::write(&path, "testpassword\n\n").unwrap();
    assert!(matches!(
        keystore.decrypt(&Passphrase::from_file(&path).unwrap()),
        Err(WalletError::WrongPassphrase)
    ));

    for (content, problem) in [
        (&b""[..], "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ] {
        std::fs::write(&path, content).unwrap();
        let err = Passphrase::from_file(&path).unwrap_err();
        assert!(
            matches!(&err, WalletError::PassphraseFileInvalid { problem: p, .. } if *p == problem),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }
    std::fs::write(&path, vec![b'a'; 65 * 1024]).unwrap();
    assert!(matches!(
        Passphrase::from_file(&path),
        Err(WalletError::PassphraseFileInvalid { .. })
    ));

    let missing = dir.path().join("no-such-file");
    let err = Passphrase::from_file(&missing).unwrap_err();
    assert!(matches!(err, WalletError::PassphraseFileUnreadable { .. }));
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("check the path"), "{message}");
}

#[test]
fn passphrase_file_errors_do_not_leak_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let secret = "s3cret-passphrase-content";
    std::fs::write(&path, vec![b'x'; 65 * 1024]).unwrap();
    let big = Passphrase::from_file(&path).unwrap_err();
    let mut bytes = secret.as_bytes().to_vec();
    bytes.push(0xff);
    std::fs::write(&path, bytes).unwrap();
    let bad_utf8 = Passphrase::from_file(&path).unwrap_err();
    for err in [big, bad_utf8] {
        assert!(!err.to_string().contains(secret));
        assert!(!format!("{err:?}").contains(secret));
        assert!(!err.to_string().contains("xxxx"));
    }
}

const CHILD_VAR: &str = "BURSAR_WALLET_TEST_PASSPHRASE";

#[test]
fn passphrase_from_env_missing_names_the_variable() {
    let var = "BURSAR_WALLET_TEST_SURELY_UNSET_5f0c";
    let err = Passphrase::from_env(var).unwrap_err();
    assert!(matches!(&err, WalletError::PassphraseEnvMissing { var: v } if v == var));
    assert!(err.to_string().contains(&format!("set {var}")), "{err}");
}

/// The environment cannot be changed safely inside a test process, so this test runs the
/// test binary again with the variable set and checks the child's verdict.
#[test]
fn passphrase_from_env_and_resolve() {
    let run = |value: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, value)
            .output()
            .unwrap()
    };
    let ok = run("testpassword");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("env child ran"));
    let empty = run("");
    assert!(
        empty.status.success(),
        "{}",
        String::from_utf8_lossy(&empty.stdout)
    );
    assert!(String::from_utf8_lossy(&empty.stdout).contains("env child saw an empty variable"));
}

/// Runs for real only as the child of `passphrase_from_env_and_resolve`.
#[test]
fn env_child() {
    let Some(value) = std::env::var_os(CHILD_VAR) else {
        return;
    };
    if value.is_empty() {
        let err = Passphrase::from_env(CHILD_VAR).unwrap_err();
        assert!(matches!(
            err,
            WalletError::PassphraseEnvInvalid {
                problem: "is empty",
                ..
            }
        ));
        assert!(err.to_string().contains(&format!("set {CHILD_VAR}")));
        println!("env child saw an empty variable");
        return;
    }
    let keystore = &*LIGHT_VECTOR;
    let p = Passphrase::from_env(CHILD_VAR).unwrap();
    assert_eq!(key_hex(&keystore.decrypt(&p).unwrap()), VECTOR_KEY);

    // resolve: env when no file ...
    let p = Passphrase::resolve(CHILD_VAR, None).unwrap();
    assert_eq!(key_hex(&keystore.decrypt(&p).unwrap()), VECTOR_KEY);
    // ... and the file wins when one is given.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from the file\n").unwrap();
    let p = Passphrase::resolve(CHILD_VAR, Some(&file)).unwrap();
    assert!(matches!(
        keystore.decrypt(&p),
        Err(WalletError::WrongPassphrase)
    ));
    let err = Passphrase::resolve(CHILD_VAR, Some(Path::new("/nonexistent/pw"))).unwrap_err();
    assert!(matches!(err, WalletError::PassphraseFileUnreadable { .. }));
    println!("env child ran");
}

// ---------------------------------------------------------------- secrets never printed

#[test]
fn no_error_or_debug_output_contains_a_secret() {
    let secret_pass = "Tr0ub4dor&3-unique-passphrase";
    let p = pass(secret_pass);
    let signer = PrivateKeySigner::random();
    let key = key_hex(&signer);
    let keystore = Keystore::encrypt(&signer, &p, Kdf::light()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "").unwrap();
    let empty_file = Passphrase::from_file(&file).unwrap_err();

    let mut wrong_address: Value = serde_json::from_str(&keystore.to_json()).unwrap();
    wrong_address["address"] = json!("000000000000000000000000000000000000dead");
    let mut invalid_key = light_value();
    invalid_key["crypto"]["cipher"] = json!(key.clone());

    let errors: Vec<WalletError> = vec![
        Keystore::from_json(&key).unwrap_err(),
        Keystore::from_json(&format!("{{\"x\": \"{key}\"")).unwrap_err(),
        Keystore::from_json(&format!("{{\"version\": 3, \"crypto\": \"{key}\"}}")).unwrap_err(),
        parse_value(&invalid_key).unwrap_err(),
        parse_value(&json!({"version": key})).unwrap_err(),
        parse_value(&json!({"version": 3, "crypto": {"cipher": "aes-128-ctr", "cipherparams": {"iv": "00"}}}))
            .unwrap_err(),
        parse_value(&json!({"version": 3, "crypto": {"cipher": "aes-128-ctr", "kdf": key}}))
            .unwrap_err(),
        keystore.decrypt(&pass("wrong")).unwrap_err(),
        parse_value(&wrong_address).unwrap().decrypt(&p).unwrap_err(),
        Keystore::encrypt(&signer, &p, Kdf::Pbkdf2 { c: 0 }).unwrap_err(),
        Passphrase::new(String::new()).unwrap_err(),
        Passphrase::from_file(dir.path().join("missing")).unwrap_err(),
        empty_file,
        Passphrase::from_env("BURSAR_WALLET_TEST_SURELY_UNSET_5f0c").unwrap_err(),
        WalletError::InvalidKey,
        WalletError::PassphraseEnvInvalid {
            var: CHILD_VAR.to_owned(),
            problem: "is empty",
        },
    ];
    for err in &errors {
        for text in [err.to_string(), format!("{err:?}"), format!("{err:#?}")] {
            assert!(!text.contains(&key), "{text}");
            assert!(!text.contains(&key.to_uppercase()), "{text}");
            assert!(!text.contains(secret_pass), "{text}");
            assert!(!text.contains(VECTOR_KEY), "{text}");
        }
        // Lowercase, actionable messages.
        let message = err.to_string();
        assert!(
            message.starts_with(|c: char| !c.is_uppercase()),
            "{message}"
        );
        assert!(message.contains(';'), "no advice in: {message}");
    }

    for text in [
        format!("{p:?}"),
        format!("{p}"),
        format!("{p:#?}"),
        format!("{keystore:?}"),
        format!("{keystore:#?}"),
        format!("{signer:?}"),
        format!("{signer:#?}"),
        format!("{:?}", keystore.decrypt(&p)),
        format!("{:?}", generate(Kdf::light(), &p)),
    ] {
        assert!(!text.contains(&key), "{text}");
        assert!(!text.contains(secret_pass), "{text}");
    }
    assert_eq!(format!("{p:?}"), "Passphrase(***)");
    // The JSON itself holds only the encrypted key.
    assert!(!keystore.to_json().contains(&key));
}

// ---------------------------------------------------------------- fuzzing the parser

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[0-9a-fA-Fx]{0,70}".prop_map(Value::from),
        prop_oneof![
            Just("aes-128-ctr"),
            Just("scrypt"),
            Just("pbkdf2"),
            Just("hmac-sha256"),
            Just("3198bc9c-6672-5ab3-d995-4942343ae5b6"),
        ]
        .prop_map(Value::from),
        ".*".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        let key = prop_oneof![
            Just("version".to_owned()),
            Just("crypto".to_owned()),
            Just("Crypto".to_owned()),
            Just("cipher".to_owned()),
            Just("cipherparams".to_owned()),
            Just("ciphertext".to_owned()),
            Just("iv".to_owned()),
            Just("kdf".to_owned()),
            Just("kdfparams".to_owned()),
            Just("mac".to_owned()),
            Just("n".to_owned()),
            Just("r".to_owned()),
            Just("p".to_owned()),
            Just("c".to_owned()),
            Just("dklen".to_owned()),
            Just("salt".to_owned()),
            Just("prf".to_owned()),
            Just("id".to_owned()),
            Just("address".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths of fields in a valid document, to replace one at a time.
const FIELDS: &[&[&str]] = &[
    &["version"],
    &["id"],
    &["address"],
    &["crypto"],
    &["crypto", "cipher"],
    &["crypto", "cipherparams"],
    &["crypto", "cipherparams", "iv"],
    &["crypto", "ciphertext"],
    &["crypto", "kdf"],
    &["crypto", "kdfparams"],
    &["crypto", "kdfparams", "n"],
    &["crypto", "kdfparams", "r"],
    &["crypto", "kdfparams", "p"],
    &["crypto", "kdfparams", "dklen"],
    &["crypto", "kdfparams", "salt"],
    &["crypto", "mac"],
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn from_json_never_panics_on_arbitrary_text(text in ".*") {
        let _ = Keystore::from_json(&text);
    }

    #[test]
    fn from_json_never_panics_on_arbitrary_json(value in arbitrary_json()) {
        let _ = parse_value(&value);
    }

    #[test]
    fn from_json_never_panics_on_a_document_with_one_field_replaced(
        field in 0..FIELDS.len(),
        replacement in arbitrary_json(),
    ) {
        let mut value: Value = serde_json::from_str(SCRYPT_VECTOR).unwrap();
        let path = FIELDS[field];
        let mut target = &mut value;
        for key in &path[..path.len() - 1] {
            target = &mut target[*key];
        }
        target[path[path.len() - 1]] = replacement;
        if let Ok(keystore) = parse_value(&value) {
            // Whatever was accepted is within the limits and re-serialises to itself.
            prop_assert_eq!(Keystore::from_json(&keystore.to_json()).unwrap(), keystore);
        }
    }

    #[test]
    fn from_json_never_panics_on_cut_or_corrupted_documents(
        cut in 0usize..2000,
        byte in any::<u8>(),
        at in 0usize..2000,
    ) {
        let json = SCRYPT_VECTOR.as_bytes();
        let mut bytes = json[..cut.min(json.len())].to_vec();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        let _ = Keystore::from_json(&String::from_utf8_lossy(&bytes));
    }
}
