//! Reasons a payment is invalid or a settlement failed.
//!
//! x402 reports failures as snake_case strings. Different implementations use different strings, so
//! [`Reason`] is an open set: Bursar emits the constants below and accepts any string from others.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A machine-readable failure reason, such as `invalid_exact_evm_payload_signature`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reason(Cow<'static, str>);

impl Reason {
    pub const INVALID_X402_VERSION: Reason = Reason::known("invalid_x402_version");
    pub const INVALID_SCHEME: Reason = Reason::known("invalid_scheme");
    pub const INVALID_NETWORK: Reason = Reason::known("invalid_network");
    pub const INVALID_PAYLOAD: Reason = Reason::known("invalid_payload");
    pub const INVALID_PAYMENT_REQUIREMENTS: Reason = Reason::known("invalid_payment_requirements");
    pub const MISSING_EIP712_DOMAIN: Reason =
        Reason::known("invalid_exact_evm_payload_missing_eip712_domain");
    pub const INVALID_SIGNATURE: Reason = Reason::known("invalid_exact_evm_payload_signature");
    pub const RECIPIENT_MISMATCH: Reason =
        Reason::known("invalid_exact_evm_payload_recipient_mismatch");
    pub const ASSET_MISMATCH: Reason = Reason::known("invalid_exact_evm_payload_asset_mismatch");
    pub const VALID_BEFORE: Reason =
        Reason::known("invalid_exact_evm_payload_authorization_valid_before");
    pub const VALID_AFTER: Reason =
        Reason::known("invalid_exact_evm_payload_authorization_valid_after");
    pub const VALUE_MISMATCH: Reason =
        Reason::known("invalid_exact_evm_payload_authorization_value_mismatch");
    pub const INSUFFICIENT_FUNDS: Reason = Reason::known("insufficient_funds");
    pub const NONCE_ALREADY_USED: Reason = Reason::known("invalid_exact_evm_nonce_already_used");
    pub const TOKEN_DOMAIN_MISMATCH: Reason =
        Reason::known("invalid_exact_evm_token_name_or_version");
    /// The asset cannot be settled by an EIP-3009 facilitator: there is no contract at it, it has
    /// no EIP-3009, or it lacks EIP-3009's own `transferWithAuthorization(..., v, r, s)`.
    pub const UNSUPPORTED_TOKEN: Reason = Reason::known("invalid_exact_evm_unsupported_token");
    pub const SIMULATION_FAILED: Reason =
        Reason::known("invalid_exact_evm_transaction_simulation_failed");
    pub const SETTLEMENT_IN_PROGRESS: Reason = Reason::known("settlement_in_progress");
    pub const TRANSACTION_FAILED: Reason = Reason::known("invalid_transaction_state");
    pub const UNEXPECTED_VERIFY_ERROR: Reason = Reason::known("unexpected_verify_error");
    pub const UNEXPECTED_SETTLE_ERROR: Reason = Reason::known("unexpected_settle_error");

    const fn known(text: &'static str) -> Reason {
        Reason(Cow::Borrowed(text))
    }

    /// A reason reported by another party, kept as written.
    pub fn other(text: impl Into<String>) -> Reason {
        Reason(Cow::Owned(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({})", self.0)
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Reason::other)
    }
}
