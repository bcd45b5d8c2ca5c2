//! The keystore v3 document: parsing, serialising, encryption and decryption.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use aes::Aes128;
use alloy_primitives::{Address, Keccak256};
use alloy_signer_local::PrivateKeySigner;
use ctr::cipher::{KeyIvInit, StreamCipher};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{
    Passphrase, WalletError,
    error::{describe_name, json_type},
    kdf::{self, DKLEN_MIN, Kdf, SCRYPT_LOG_N_MAX},
};

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// The only cipher of keystore v3 in practice.
pub const CIPHER: &str = "aes-128-ctr";
/// The only pbkdf2 pseudo-random function in practice.
pub const PBKDF2_PRF: &str = "hmac-sha256";
/// Largest keystore document accepted by [`Keystore::from_json`], in bytes.
pub const KEYSTORE_JSON_MAX_BYTES: usize = 64 * 1024;

/// A parsed and validated Web3 Secret Storage (keystore v3) document.
///
/// Holding a `Keystore` reveals nothing without the passphrase; its `Debug` output shows
/// only the id, address and KDF.
#[derive(Clone, PartialEq, Eq)]
pub struct Keystore {
    id: Uuid,
    address: Option<Address>,
    kdf: Kdf,
    dklen: u32,
    salt: Vec<u8>,
    iv: [u8; 16],
    ciphertext: [u8; 32],
    mac: [u8; 32],
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystore")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("kdf", &self.kdf)
            .finish_non_exhaustive()
    }
}

impl Keystore {
    /// Parses and validates a keystore v3 document.
    ///
    /// Accepts what geth, foundry (`cast wallet`), ethers and MyEtherWallet write: `crypto`
    /// or `Crypto`, with or without `address`, hex with or without `0x`. Checks version 3,
    /// cipher aes-128-ctr, kdf scrypt or pbkdf2 (hmac-sha256), every hex field and length,
    /// and the KDF parameters against the limits in [`crate::kdf`] so that decryption cannot
    /// be made to take minutes or gigabytes. Unknown fields are ignored (and not kept).
    pub fn from_json(json: &str) -> Result<Self, WalletError> {
        if json.len() > KEYSTORE_JSON_MAX_BYTES {
            return Err(WalletError::InvalidField {
                field: "(document)",
                problem: "is larger than 64 KiB",
            });
        }
        // Some Windows editors prefix a byte order mark.
        let json = json.strip_prefix('\u{feff}').unwrap_or(json);
        let value: Value = serde_json::from_str(json).map_err(|e| {
            use serde_json::error::Category;
            WalletError::Json {
                kind: match e.classify() {
                    Category::Eof => "truncated input",
                    Category::Syntax => "syntax error",
                    Category::Io => "read error",
                    Category::Data => "unexpected data",
                },
                line: e.line(),
                column: e.column(),
            }
        })?;
        Self::from_value(&value)
    }

    /// Like [`from_json`](Self::from_json), on an already parsed value.
    pub fn from_value(value: &Value) -> Result<Self, WalletError> {
        let doc = value.as_object().ok_or(WalletError::InvalidField {
            field: "(document)",
            problem: "must be a JSON object",
        })?;

        match doc.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(3) => {}
            Some(Value::Number(n)) => {
                return Err(WalletError::UnsupportedVersion {
                    found: match (n.as_u64(), n.as_i64()) {
                        (Some(v), _) => v.to_string(),
                        (None, Some(v)) => v.to_string(),
                        _ => "(a fractional number)".to_owned(),
                    },
                });
            }
            Some(other) => {
                return Err(WalletError::UnsupportedVersion {
                    found: format!("(a JSON {})", json_type(other)),
                });
            }
            None => {
                return Err(WalletError::InvalidField {
                    field: "version",
                    problem: "is missing",
                });
            }
        }

        let crypto = match doc.get("crypto").or_else(|| doc.get("Crypto")) {
            Some(Value::Object(crypto)) => crypto,
            Some(_) => return Err(invalid("crypto", "must be an object")),
            None => return Err(invalid("crypto", "is missing")),
        };

        match crypto.get("cipher") {
            Some(Value::String(c)) if c == CIPHER => {}
            Some(other) => {
                return Err(WalletError::UnsupportedCipher {
                    found: describe_name(other),
                });
            }
            None => return Err(invalid("crypto.cipher", "is missing")),
        }
        let cipherparams = object(crypto, "cipherparams", "crypto.cipherparams")?;
        let iv: [u8; 16] = hex_array(cipherparams, "iv", "crypto.cipherparams.iv")?;
        let ciphertext: [u8; 32] = hex_array(crypto, "ciphertext", "crypto.ciphertext")?;
        let mac: [u8; 32] = hex_array(crypto, "mac", "crypto.mac")?;

        let kdf_name = crypto
            .get("kdf")
            .ok_or_else(|| invalid("crypto.kdf", "is missing"))?;
        let is_scrypt = match kdf_name.as_str() {
            Some("scrypt") => true,
            Some("pbkdf2") => false,
            _ => {
                return Err(WalletError::UnsupportedKdf {
                    found: describe_name(kdf_name),
                });
            }
        };
        let params = object(crypto, "kdfparams", "crypto.kdfparams")?;
        let dklen = u32_field(params, "dklen", "crypto.kdfparams.dklen")?;
        let salt = hex_vec(params, "salt", "crypto.kdfparams.salt")?;
        let kdf = if is_scrypt {
            let n = u64_field(params, "n", "crypto.kdfparams.n")?;
            if !n.is_power_of_two() || !(2..=1u64 << SCRYPT_LOG_N_MAX).contains(&n) {
                return Err(WalletError::KdfParams {
                    kdf: "scrypt",
                    param: "n",
                    value: n,
                    allowed: format!("2..={}, a power of two", 1u64 << SCRYPT_LOG_N_MAX),
                });
            }
            Kdf::Scrypt {
                // n <= 2^20, so the exponent fits.
                log_n: n.trailing_zeros() as u8,
                r: u32_field(params, "r", "crypto.kdfparams.r")?,
                p: u32_field(params, "p", "crypto.kdfparams.p")?,
            }
        } else {
            match params.get("prf") {
                Some(Value::String(prf)) if prf == PBKDF2_PRF => {}
                Some(other) => {
                    return Err(WalletError::UnsupportedPrf {
                        found: describe_name(other),
                    });
                }
                None => return Err(invalid("crypto.kdfparams.prf", "is missing")),
            }
            Kdf::Pbkdf2 {
                c: u32_field(params, "c", "crypto.kdfparams.c")?,
            }
        };
        kdf.validate()?;
        kdf::check_salt_and_dklen(kdf.name(), salt.len(), dklen)?;

        let id = match doc.get("id") {
            Some(Value::String(id)) => Uuid::try_parse(id).map_err(|_| {
                invalid(
                    "id",
                    "must be a UUID like 3198bc9c-6672-5ab3-d995-4942343ae5b6",
                )
            })?,
            Some(_) => return Err(invalid("id", "must be a string")),
            None => return Err(invalid("id", "is missing")),
        };

        let address = match doc.get("address") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => {
                let bytes: [u8; 20] = decode_hex(a)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| invalid("address", "must be 20 bytes of hex"))?;
                Some(Address::from(bytes))
            }
            Some(_) => return Err(invalid("address", "must be a string")),
        };

        Ok(Self {
            id,
            address,
            kdf,
            dklen,
            salt,
            iv,
            ciphertext,
            mac,
        })
    }

    /// The document as compact JSON. Deterministic: fields are always written in geth's
    /// order (`address`, `crypto`, `id`, `version`), hex in lowercase without `0x`.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(&self.document()).expect("keystore serialises")
    }

    /// The document as indented JSON, in the same order as [`to_json`](Self::to_json).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.document()).expect("keystore serialises")
    }

    /// The `address` field, when the document has one (geth writes it, foundry does not).
    pub fn address(&self) -> Option<Address> {
        self.address
    }

    /// The document's `id`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The key derivation function and its cost parameters.
    pub fn kdf(&self) -> Kdf {
        self.kdf
    }

    /// Decrypts the private key.
    ///
    /// Derives the key with the document's own KDF parameters (already bounded by
    /// [`from_json`](Self::from_json)), checks the MAC `keccak256(dk[16..32] ++ ciphertext)`
    /// in constant time, then decrypts with AES-128-CTR. A MAC mismatch is
    /// [`WalletError::WrongPassphrase`]. If the document has an `address`, it must be the
    /// decrypted key's address.
    pub fn decrypt(&self, passphrase: &Passphrase) -> Result<PrivateKeySigner, WalletError> {
        let derived = self
            .kdf
            .derive(passphrase.as_bytes(), &self.salt, self.dklen)?;
        let mac = keystore_mac(&derived[16..32], &self.ciphertext);
        if !bool::from(mac.ct_eq(&self.mac)) {
            return Err(WalletError::WrongPassphrase);
        }
        let mut key = Zeroizing::new(self.ciphertext);
        aes_128_ctr(&derived[..16], &self.iv, &mut key[..]);
        let signer = PrivateKeySigner::from_slice(&key[..]).map_err(|_| WalletError::InvalidKey)?;
        if let Some(expected) = self.address
            && expected != signer.address()
        {
            return Err(WalletError::AddressMismatch {
                expected,
                actual: signer.address(),
            });
        }
        Ok(signer)
    }

    /// Encrypts a key under a passphrase: fresh random 32-byte salt and 16-byte IV, a
    /// random (v4) UUID, a 32-byte derived key, and the lowercase address without `0x`
    /// as geth writes it.
    pub fn encrypt(
        signer: &PrivateKeySigner,
        passphrase: &Passphrase,
        kdf: Kdf,
    ) -> Result<Self, WalletError> {
        let mut rng = rand::rng();
        let salt: [u8; 32] = rng.random();
        let iv: [u8; 16] = rng.random();
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();

        let derived = kdf.derive(passphrase.as_bytes(), &salt, DKLEN_MIN)?;
        let mut ciphertext = Zeroizing::new(signer.to_bytes().0);
        aes_128_ctr(&derived[..16], &iv, &mut ciphertext[..]);
        let mac = keystore_mac(&derived[16..32], &ciphertext[..]);
        Ok(Self {
            id,
            address: Some(signer.address()),
            kdf,
            dklen: DKLEN_MIN,
            salt: salt.to_vec(),
            iv,
            ciphertext: *ciphertext,
            mac,
        })
    }

    /// geth's file name for this keystore at the current time:
    /// `UTC--2026-01-02T03-04-05.123456789Z--<address>` (lowercase hex, no `0x`). A document
    /// without an address is named after its id instead.
    pub fn file_name(&self) -> String {
        self.file_name_at(SystemTime::now())
    }

    /// [`file_name`](Self::file_name) at a given time.
    pub fn file_name_at(&self, time: SystemTime) -> String {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        let suffix = match self.address {
            Some(address) => hex::encode(address),
            None => self.id.hyphenated().to_string(),
        };
        format!(
            "UTC--{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}.{:09}Z--{suffix}",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            since.subsec_nanos(),
        )
    }

    fn document(&self) -> Document {
        Document {
            address: self.address.map(hex::encode),
            crypto: CryptoDocument {
                cipher: CIPHER,
                ciphertext: hex::encode(self.ciphertext),
                cipherparams: CipherParams {
                    iv: hex::encode(self.iv),
                },
                kdf: self.kdf.name(),
                kdfparams: match self.kdf {
                    Kdf::Scrypt { log_n, r, p } => KdfParams::Scrypt {
                        dklen: self.dklen,
                        n: 1u64 << log_n,
                        p,
                        r,
                        salt: hex::encode(&self.salt),
                    },
                    Kdf::Pbkdf2 { c } => KdfParams::Pbkdf2 {
                        c,
                        dklen: self.dklen,
                        prf: PBKDF2_PRF,
                        salt: hex::encode(&self.salt),
                    },
                },
                mac: hex::encode(self.mac),
            },
            id: self.id.hyphenated().to_string(),
            version: 3,
        }
    }
}

/// Creates a new random key and its keystore. Returns the keystore and the key's address.
pub fn generate(kdf: Kdf, passphrase: &Passphrase) -> Result<(Keystore, Address), WalletError> {
    kdf.validate()?;
    let signer = PrivateKeySigner::random();
    let keystore = Keystore::encrypt(&signer, passphrase, kdf)?;
    Ok((keystore, signer.address()))
}

#[derive(Serialize)]
struct Document {
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    crypto: CryptoDocument,
    id: String,
    version: u8,
}

#[derive(Serialize)]
struct CryptoDocument {
    cipher: &'static str,
    ciphertext: String,
    cipherparams: CipherParams,
    kdf: &'static str,
    kdfparams: KdfParams,
    mac: String,
}

#[derive(Serialize)]
struct CipherParams {
    iv: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum KdfParams {
    Scrypt {
        dklen: u32,
        n: u64,
        p: u32,
        r: u32,
        salt: String,
    },
    Pbkdf2 {
        c: u32,
        dklen: u32,
        prf: &'static str,
        salt: String,
    },
}

fn keystore_mac(mac_key: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(mac_key);
    hasher.update(ciphertext);
    hasher.finalize().0
}

fn aes_128_ctr(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    // Both lengths are fixed by the callers (16-byte slice of the derived key, 16-byte IV).
    let mut cipher = Aes128Ctr::new_from_slices(key, iv).expect("16-byte AES key and IV");
    cipher.apply_keystream(data);
}

fn invalid(field: &'static str, problem: &'static str) -> WalletError {
    WalletError::InvalidField { field, problem }
}

fn object<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Map<String, Value>, WalletError> {
    match parent.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(invalid(field, "must be an object")),
        None => Err(invalid(field, "is missing")),
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    hex::decode(s)
}

fn hex_vec(
    parent: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Vec<u8>, WalletError> {
    match parent.get(key) {
        Some(Value::String(s)) => decode_hex(s).map_err(|_| invalid(field, "must be hex")),
        Some(_) => Err(invalid(field, "must be a hex string")),
        None => Err(invalid(field, "is missing")),
    }
}

fn hex_array<const N: usize>(
    parent: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<[u8; N], WalletError> {
    let bytes = hex_vec(parent, key, field)?;
    bytes.try_into().map_err(|_| {
        invalid(
            field,
            match N {
                16 => "must be 16 bytes of hex",
                20 => "must be 20 bytes of hex",
                _ => "must be 32 bytes of hex",
            },
        )
    })
}

fn u64_field(
    parent: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<u64, WalletError> {
    match parent.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| invalid(field, "must be a non-negative integer")),
        Some(_) => Err(invalid(field, "must be a number")),
        None => Err(invalid(field, "is missing")),
    }
}

fn u32_field(
    parent: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<u32, WalletError> {
    let value = u64_field(parent, key, field)?;
    u32::try_from(value).map_err(|_| invalid(field, "is far too large"))
}

/// Year, month (1..=12) and day (1..=31) of the proleptic Gregorian calendar for a count of
/// days since 1970-01-01 (the "days from civil" algorithm run backwards, in eras of 400 years).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn mac_is_keccak_of_second_half_and_ciphertext() {
        // Published intermediates of the pbkdf2 test vector.
        let dk = hex::decode("f06d69cdc7da0faffb1008270bca38f5e31891a3a773950e6d0fea48a7188551")
            .unwrap();
        let ct = hex::decode("5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46")
            .unwrap();
        assert_eq!(
            hex::encode(keystore_mac(&dk[16..32], &ct)),
            "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"
        );
        let mut plain = ct.clone();
        aes_128_ctr(
            &dk[..16],
            &hex::decode("6087dab2f9fdbbfaddc31a909735c1e6")
                .unwrap()
                .try_into()
                .unwrap(),
            &mut plain,
        );
        assert_eq!(
            hex::encode(plain),
            "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
        );
    }
}
