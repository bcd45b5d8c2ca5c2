//! The one error type of the crate.
//!
//! Messages never carry a private key, a passphrase or a value copied out of the document
//! being parsed: only field names, limits, addresses (which are public) and file paths.

use std::path::PathBuf;

use alloy_primitives::Address;

/// Everything that can go wrong while reading, decrypting or writing a keystore, or while
/// obtaining a passphrase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// The text is not JSON at all.
    #[error(
        "keystore is not valid JSON ({kind} at line {line}, column {column}); \
         check that the whole keystore file was copied"
    )]
    Json {
        /// `syntax error`, `truncated input`, ...
        kind: &'static str,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },

    /// A required field is missing or has the wrong shape.
    #[error(
        "keystore field `{field}` {problem}; the document is not a valid keystore v3 file, \
         export it again from the wallet that created it"
    )]
    InvalidField {
        /// Dotted path of the field, e.g. `crypto.cipherparams.iv`.
        field: &'static str,
        /// What is wrong with it, e.g. `must be 16 bytes of hex`.
        problem: &'static str,
    },

    /// The `version` field is not 3.
    #[error(
        "keystore version {found} is not supported; only version 3 (Web3 Secret Storage) is, \
         convert the key with the wallet that created it"
    )]
    UnsupportedVersion {
        /// The version found, or a description of the value when it is not a number.
        found: String,
    },

    /// The cipher is not `aes-128-ctr`.
    #[error(
        "keystore cipher {found} is not supported; only aes-128-ctr is, \
         re-export the key from its wallet as a standard keystore v3 file"
    )]
    UnsupportedCipher {
        /// The cipher name (shortened and sanitised) or a description of the value.
        found: String,
    },

    /// The key derivation function is neither `scrypt` nor `pbkdf2`.
    #[error(
        "keystore kdf {found} is not supported; only scrypt and pbkdf2 are, \
         re-export the key from its wallet as a standard keystore v3 file"
    )]
    UnsupportedKdf {
        /// The kdf name (shortened and sanitised) or a description of the value.
        found: String,
    },

    /// The pbkdf2 pseudo-random function is not `hmac-sha256`.
    #[error(
        "keystore pbkdf2 prf {found} is not supported; only hmac-sha256 is, \
         re-export the key with scrypt or pbkdf2 over hmac-sha256"
    )]
    UnsupportedPrf {
        /// The prf name (shortened and sanitised) or a description of the value.
        found: String,
    },

    /// A key derivation parameter is outside the range this crate accepts, either because
    /// it is meaningless (n not a power of two, zero iterations) or because deriving the key
    /// would take minutes or gigabytes.
    #[error(
        "keystore {kdf} parameter {param} = {value} is out of range (allowed: {allowed}); \
         re-encrypt the key with standard parameters before importing it"
    )]
    KdfParams {
        /// `scrypt` or `pbkdf2`.
        kdf: &'static str,
        /// The parameter, e.g. `n`, `r`, `p`, `n*r*p`, `c`, `dklen`, `salt length`.
        param: &'static str,
        /// The value found.
        value: u64,
        /// Human-readable range, e.g. `2..=1048576, a power of two`.
        allowed: String,
    },

    /// The MAC does not match: the passphrase is wrong or the document was altered.
    #[error(
        "wrong passphrase for this keystore (the MAC does not match); check the passphrase, \
         and if it is right the keystore file has been modified or corrupted"
    )]
    WrongPassphrase,

    /// The MAC matched but the plaintext is not a valid secp256k1 private key.
    #[error(
        "the keystore decrypts to an invalid secp256k1 private key; \
         the keystore was written by a faulty tool, restore it from a backup"
    )]
    InvalidKey,

    /// The document's `address` field is not the address of the key inside it.
    #[error(
        "keystore says it holds address {expected} but its key belongs to {actual}; \
         the file was edited or mixed up, use the keystore exported for {expected}"
    )]
    AddressMismatch {
        /// The `address` field of the document.
        expected: Address,
        /// The address of the decrypted key.
        actual: Address,
    },

    /// An empty passphrase was given.
    #[error("the passphrase is empty; choose a non-empty passphrase")]
    EmptyPassphrase,

    /// The passphrase file could not be read.
    #[error(
        "cannot read the passphrase file {}: {source}; check the path and its permissions",
        path.display()
    )]
    PassphraseFileUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error (carries no file content).
        source: std::io::Error,
    },

    /// The passphrase file was read but cannot hold a passphrase.
    #[error("the passphrase file {} {problem}; put the passphrase alone in the file", path.display())]
    PassphraseFileInvalid {
        /// The file.
        path: PathBuf,
        /// `is empty`, `is not UTF-8`, `is larger than 64 KiB`.
        problem: &'static str,
    },

    /// The passphrase environment variable is not set.
    #[error(
        "environment variable {var} is not set; set {var} to the wallet passphrase, or give a passphrase file"
    )]
    PassphraseEnvMissing {
        /// The variable name.
        var: String,
    },

    /// The passphrase environment variable is set but unusable.
    #[error(
        "environment variable {var} {problem}; set {var} to the wallet passphrase, or give a passphrase file"
    )]
    PassphraseEnvInvalid {
        /// The variable name.
        var: String,
        /// `is empty` or `is not valid UTF-8`.
        problem: &'static str,
    },
}

/// Describes a JSON value found where a name was expected, without echoing arbitrary
/// content: short names made of `[A-Za-z0-9_-]` are quoted, everything else is described
/// by its type.
pub(crate) fn describe_name(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s)
            if !s.is_empty()
                && s.len() <= 24
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            format!("\"{s}\"")
        }
        serde_json::Value::String(_) => "(an unrecognised string)".to_owned(),
        other => format!("(a JSON {})", json_type(other)),
    }
}

pub(crate) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}
