//! # bursar-facilitator-client
//!
//! The seam between a seller and a facilitator. A seller verifies and settles payments through the
//! [`Facilitator`] trait and does not care where the facilitator runs:
//!
//! - [`HttpFacilitator`] speaks the x402 facilitator HTTP API (`POST /verify`, `POST /settle`,
//!   `GET /supported`) to any facilitator, hosted or self-run.
//! - Bursar's own facilitator service implements the trait directly for in-process use.
//! - With the `testkit` feature, [`testkit::ChainlessFacilitator`] runs the stateless exact-EVM checks in
//!   memory and records every call, so sellers and buyers can be tested without a chain.
//!
//! Layering: `bursar-protocol` (documents, no I/O) → this crate (transport) → `bursar-seller`.
//!
//! A facilitator that answers with a verify or settle document reporting failure is a *result*
//! (`Ok` with `is_valid == false` / `success == false`), whatever HTTP status carried it. Only a
//! facilitator that cannot be reached or answers something that is not such a document is an
//! [`FacilitatorError`].

use std::sync::Arc;

use bursar_protocol::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};

mod http;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use http::{
    CONNECT_TIMEOUT_SECONDS, ERROR_BODY_CHARS_MAX, HttpFacilitator, RESPONSE_BYTES_MAX,
    SETTLE_TIMEOUT_SECONDS, SUPPORTED_TIMEOUT_SECONDS, VERIFY_TIMEOUT_SECONDS,
};

/// A facilitator: verifies payments and settles them on chain.
#[async_trait::async_trait]
pub trait Facilitator: Send + Sync + 'static {
    /// Checks a payment without moving money.
    async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError>;

    /// Executes a payment. A failed settlement is `Ok` with `success == false`.
    async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, FacilitatorError>;

    /// The (version, scheme, network) kinds this facilitator handles.
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError>;
}

#[async_trait::async_trait]
impl<T: Facilitator + ?Sized> Facilitator for Arc<T> {
    async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        (**self).verify(request).await
    }

    async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, FacilitatorError> {
        (**self).settle(request).await
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        (**self).supported().await
    }
}

/// Why a facilitator gave no verify, settle or supported document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorError {
    /// The facilitator could not be reached, or the exchange broke or timed out.
    #[error("facilitator unreachable: {0}")]
    Transport(String),
    /// The facilitator answered a non-success status with a body that is not a failure document.
    #[error("facilitator answered status {status}: {body}")]
    Status {
        status: u16,
        /// The start of the body, at most [`ERROR_BODY_CHARS_MAX`] characters.
        body: String,
    },
    /// The facilitator answered success with a body that is not the expected document.
    #[error("facilitator response could not be decoded: {0}")]
    Decode(String),
    /// The facilitator's base URL is unusable.
    #[error("invalid facilitator url: {0}")]
    InvalidUrl(String),
}
