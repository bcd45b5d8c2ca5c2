//! Classifying node answers into [`ChainError`].
//!
//! Nodes disagree on codes and wording, so classification looks at both: JSON-RPC code 3 and any
//! message mentioning a revert mean the EVM reverted; the nonce phrases of geth, reth, anvil,
//! Erigon, Besu and Nethermind mean the nonce was already used. Everything that is not an error
//! response from the node (connection refused, timeout, HTTP status, unparsable answer) is a
//! transport failure.

use std::error::Error as StdError;

use alloy_primitives::Bytes;
use alloy_transport::{RpcError, TransportError};
use bursar_chain::ChainError;
use serde_json::Value;

/// JSON-RPC code for "execution reverted" (geth, reth, anvil).
const CODE_EXECUTION_REVERTED: i64 = 3;
/// Transport error messages are cut to this many characters (a proxy's HTML error page can be
/// many kilobytes).
const TRANSPORT_MESSAGE_CHARS_MAX: usize = 600;

/// Message fragments (lower case) meaning the transaction's nonce is already taken.
const NONCE_TOO_LOW_PHRASES: &[&str] = &[
    // geth, reth, anvil, Erigon, Besu ("Nonce too low")
    "nonce too low",
    "nonce is too low",
    // Nethermind
    "oldnonce",
    "nonce has already been used",
    // A pending transaction holds the nonce; resynchronizing from the pending count skips it.
    "replacement transaction underpriced",
    "replacement fee too low",
];

/// Message fragments (lower case) meaning the node already has this exact transaction.
const ALREADY_KNOWN_PHRASES: &[&str] = &[
    // geth, reth, Erigon
    "already known",
    // anvil
    "already imported",
    // Besu
    "known transaction",
    // Nethermind
    "alreadyknown",
];

/// Message fragments (lower case) for an execution that halted without revert data (invalid
/// opcode, out of gas, ...), as anvil and geth word them.
const HALT_PHRASES: &[&str] = &[
    "evm error",
    "invalid opcode",
    "out of gas",
    "gas required exceeds",
    "stack underflow",
    "stack overflow",
    "invalid jump",
];

/// What a node's refusal means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The call reverted (or halted); the revert data, possibly empty.
    Reverted(Bytes),
    /// The transaction's nonce is already used.
    NonceTooLow(String),
    /// The node already holds this exact transaction.
    AlreadyKnown,
    /// Any other refusal.
    Other,
}

/// Formats an error with its chain of sources (transport errors hide the useful part in a source).
pub(crate) fn describe(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(TRANSPORT_MESSAGE_CHARS_MAX) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A node's JSON-RPC error object, with its data parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payload {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)?;
        if let Some(data) = &self.data {
            write!(f, ", data {data}")?;
        }
        Ok(())
    }
}

/// Separates the node's error response (if it sent one) from failures to talk to it, which become
/// [`ChainError::Transport`].
pub(crate) fn split(error: TransportError) -> Result<Payload, ChainError> {
    match error {
        RpcError::ErrorResp(payload) => {
            let data = payload
                .data
                .as_ref()
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
            Ok(Payload {
                code: payload.code,
                message: payload.message.into_owned(),
                data,
            })
        }
        RpcError::NullResp => Err(ChainError::Transport("the node answered null".into())),
        other => Err(ChainError::Transport(truncate(describe(&other)))),
    }
}

/// Classifies a node's error response.
pub(crate) fn classify(payload: &Payload) -> Refusal {
    let message = payload.message.to_ascii_lowercase();
    let contains_any = |phrases: &[&str]| phrases.iter().any(|phrase| message.contains(phrase));
    if payload.code == CODE_EXECUTION_REVERTED || message.contains("revert") {
        return Refusal::Reverted(
            payload
                .data
                .as_ref()
                .and_then(find_revert_data)
                .unwrap_or_default(),
        );
    }
    if contains_any(NONCE_TOO_LOW_PHRASES) {
        return Refusal::NonceTooLow(payload.to_string());
    }
    if contains_any(ALREADY_KNOWN_PHRASES) {
        return Refusal::AlreadyKnown;
    }
    if contains_any(HALT_PHRASES) {
        return Refusal::Reverted(Bytes::new());
    }
    Refusal::Other
}

/// Finds revert data in an error's `data`: a hex string, or (Hardhat, some proxies) nested in an
/// object, preferring a `data` field.
fn find_revert_data(value: &Value) -> Option<Bytes> {
    match value {
        Value::String(text) => {
            // Nethermind prefixes the data with prose ("Reverted 0x...").
            let start = text.find("0x")?;
            text[start..].split_whitespace().next()?.parse().ok()
        }
        Value::Object(fields) => fields
            .get("data")
            .and_then(find_revert_data)
            .or_else(|| fields.values().find_map(find_revert_data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(code: i64, message: &str, data: Option<Value>) -> Payload {
        Payload {
            code,
            message: message.into(),
            data,
        }
    }

    #[test]
    fn reverts_carry_their_data() {
        let anvil = payload(3, "execution reverted: custom", Some(json!("0x08c379a0")));
        assert_eq!(
            classify(&anvil),
            Refusal::Reverted(Bytes::from_static(&[0x08, 0xc3, 0x79, 0xa0]))
        );
        let empty = payload(3, "execution reverted", Some(json!("0x")));
        assert_eq!(classify(&empty), Refusal::Reverted(Bytes::new()));
        let no_data = payload(-32000, "execution reverted", None);
        assert_eq!(classify(&no_data), Refusal::Reverted(Bytes::new()));
        let nested = payload(
            -32603,
            "Error: VM Exception while processing transaction: reverted",
            Some(json!({"message": "x", "data": "0x1234"})),
        );
        assert_eq!(
            classify(&nested),
            Refusal::Reverted(Bytes::from_static(&[0x12, 0x34]))
        );
        let prose = payload(
            -32015,
            "VM execution error: revert",
            Some(json!("Reverted 0xabcd")),
        );
        assert_eq!(
            classify(&prose),
            Refusal::Reverted(Bytes::from_static(&[0xab, 0xcd]))
        );
    }

    #[test]
    fn halts_are_reverts_without_data() {
        assert_eq!(
            classify(&payload(-32603, "EVM error InvalidFEOpcode", None)),
            Refusal::Reverted(Bytes::new())
        );
        assert_eq!(
            classify(&payload(-32000, "invalid opcode: INVALID", None)),
            Refusal::Reverted(Bytes::new())
        );
        assert_eq!(
            classify(&payload(
                -32000,
                "gas required exceeds allowance (30000000)",
                None
            )),
            Refusal::Reverted(Bytes::new())
        );
    }

    #[test]
    fn nonce_variants_are_recognized() {
        for message in [
            "nonce too low",
            "nonce too low: next nonce 5, tx nonce 4",
            "Nonce too low",
            "OldNonce, Current nonce: 5, nonce of rejected tx: 4",
            "replacement transaction underpriced",
        ] {
            assert!(
                matches!(
                    classify(&payload(-32000, message, None)),
                    Refusal::NonceTooLow(_)
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn long_transport_messages_are_cut() {
        let cut = truncate("é".repeat(TRANSPORT_MESSAGE_CHARS_MAX * 2));
        assert_eq!(cut.chars().count(), TRANSPORT_MESSAGE_CHARS_MAX + 3);
        assert_eq!(truncate("short".into()), "short");
    }

    #[test]
    fn other_refusals() {
        assert_eq!(
            classify(&payload(-32000, "already known", None)),
            Refusal::AlreadyKnown
        );
        assert_eq!(
            classify(&payload(-32003, "transaction already imported", None)),
            Refusal::AlreadyKnown
        );
        assert_eq!(
            classify(&payload(-32601, "Method not found", None)),
            Refusal::Other
        );
        assert_eq!(
            classify(&payload(
                -32003,
                "Insufficient funds for gas * price + value",
                None
            )),
            Refusal::Other
        );
        assert_eq!(
            classify(&payload(-32000, "invalid chain id for signer", None)),
            Refusal::Other
        );
    }
}
