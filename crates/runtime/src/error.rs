//! The runtime's one error type, with a stable code and an HTTP status for each variant.

use bursar_chain::ChainError;
use bursar_store::StoreError;
use bursar_wallet::WalletError;

/// Everything the runtime can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No credential, or one that is not valid.
    #[error("a valid operator key or session token is required (Authorization: Bearer ...)")]
    Unauthorized,
    /// A valid credential that may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An idempotency key or client token reused with other content, or a duplicate name.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The session, its grant or its budget does not allow this payment. Nothing was signed.
    #[error("payment denied ({code}): {message}")]
    Denied { code: String, message: String },
    /// The seller asked for payment but nothing it offered can be paid. Nothing was signed.
    #[error("nothing the seller offered can be paid: {}", .reasons.join("; "))]
    NotPayable { reasons: Vec<String> },
    /// The seller refused the signed payment. The amount stays reserved until the chain shows
    /// the authorization settled or expired.
    #[error("the seller refused the payment: {reason}")]
    PaymentRejected {
        reason: String,
        transfer_id: Option<String>,
    },
    /// The destination is one the runtime does not connect to for agents (loopback, a private
    /// network, link-local, ...; see [`crate::egress`]). Nothing was sent, reserved or paid.
    #[error("{message}")]
    EgressRefused {
        /// The URL's host.
        host: String,
        /// The refused address it is or resolves to.
        address: String,
        message: String,
    },
    /// The upstream request failed.
    #[error("upstream request failed: {message}")]
    Upstream {
        message: String,
        /// Set when a signed payment had already been sent; it stays reserved.
        transfer_id: Option<String>,
    },
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error("chain unavailable: {0}")]
    Chain(#[from] ChainError),
    #[error("storage unavailable: {0}")]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RuntimeError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => RuntimeError::Conflict(message),
            StoreError::NotFound(message) => RuntimeError::NotFound(message),
            StoreError::Invalid(message) => RuntimeError::Invalid(message),
            other => RuntimeError::Store(other),
        }
    }
}

impl RuntimeError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            RuntimeError::Unauthorized => "unauthorized",
            RuntimeError::Forbidden(_) => "forbidden",
            RuntimeError::NotFound(_) => "not_found",
            RuntimeError::Invalid(_) => "invalid_request",
            RuntimeError::Conflict(_) => "conflict",
            RuntimeError::Denied { code, .. } => code,
            RuntimeError::NotPayable { .. } => "no_payable_offer",
            RuntimeError::PaymentRejected { .. } => "payment_rejected",
            RuntimeError::Upstream { .. } => "upstream_failed",
            RuntimeError::EgressRefused { .. } => "egress_refused",
            RuntimeError::Wallet(WalletError::WrongPassphrase) => "wrong_passphrase",
            RuntimeError::Wallet(_) => "invalid_keystore",
            RuntimeError::Chain(_) => "chain_unavailable",
            RuntimeError::Store(_) => "storage_unavailable",
            RuntimeError::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            RuntimeError::Unauthorized => 401,
            RuntimeError::Forbidden(_)
            | RuntimeError::Denied { .. }
            | RuntimeError::EgressRefused { .. } => 403,
            RuntimeError::NotFound(_) => 404,
            RuntimeError::Invalid(_) | RuntimeError::Wallet(_) => 400,
            RuntimeError::Conflict(_) => 409,
            RuntimeError::NotPayable { .. } => 402,
            RuntimeError::PaymentRejected { .. } | RuntimeError::Upstream { .. } => 502,
            RuntimeError::Chain(_) | RuntimeError::Store(_) => 503,
            RuntimeError::Internal(_) => 500,
        }
    }

    /// The transfer a failed paid request left reserved, if any.
    pub fn transfer_id(&self) -> Option<&str> {
        match self {
            RuntimeError::PaymentRejected { transfer_id, .. }
            | RuntimeError::Upstream { transfer_id, .. } => transfer_id.as_deref(),
            _ => None,
        }
    }
}
