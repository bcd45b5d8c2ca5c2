//! Hooks around verification and settlement: policy (a before-hook may refuse) and observation.

use alloy_primitives::Address;
use bursar_protocol::{FacilitatorRequest, Reason, SettleResponse, VerifyResponse};

/// Why a before-hook refused a payment. It becomes an invalid [`VerifyResponse`] or a failed
/// [`SettleResponse`] with this reason and message; nothing is read from or sent to the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            reason: Reason::other(reason),
            message: message.into(),
        }
    }
}

/// Code run around every verify and settle of a [`crate::LocalFacilitator`] (installed with
/// [`crate::LocalFacilitator::with_hooks`]). Every method defaults to doing nothing.
///
/// A payer allowlist:
///
/// ```
/// use alloy_primitives::Address;
/// use bursar_facilitator::{FacilitatorHooks, Refusal, payer_of};
/// use bursar_protocol::FacilitatorRequest;
///
/// struct Allowlist(Vec<Address>);
///
/// #[async_trait::async_trait]
/// impl FacilitatorHooks for Allowlist {
///     async fn before_settle(&self, request: &FacilitatorRequest) -> Result<(), Refusal> {
///         match payer_of(request) {
///             Some(payer) if self.0.contains(&payer) => Ok(()),
///             _ => Err(Refusal::new("payer_not_allowed", "this payer is not on the allowlist")),
///         }
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait FacilitatorHooks: Send + Sync + 'static {
    /// Before any check; `Err` answers invalid with the refusal's reason.
    async fn before_verify(&self, _request: &FacilitatorRequest) -> Result<(), Refusal> {
        Ok(())
    }

    /// After verification, with its answer (also a refusal by `before_verify`).
    async fn after_verify(&self, _request: &FacilitatorRequest, _response: &VerifyResponse) {}

    /// Before anything is claimed, checked or broadcast; `Err` answers a failed settlement.
    async fn before_settle(&self, _request: &FacilitatorRequest) -> Result<(), Refusal> {
        Ok(())
    }

    /// After settlement, with its answer (also a refusal by `before_settle`).
    async fn after_settle(&self, _request: &FacilitatorRequest, _response: &SettleResponse) {}
}

/// Hooks that do nothing: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl FacilitatorHooks for NoHooks {}

/// The payer (`authorization.from`) of an `exact` EVM payment, if the payload is one.
pub fn payer_of(request: &FacilitatorRequest) -> Option<Address> {
    request
        .payload
        .payload
        .exact_evm()
        .ok()
        .map(|exact| exact.authorization.from)
}
