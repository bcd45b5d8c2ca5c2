//! # bursar-runtime
//!
//! The agent payments runtime: an operator runs it as a service, agents call it, and money moves
//! only within what a person authorized.
//!
//! - **Wallets**: signing keys held by Bursar, encrypted at rest as keystore v3 documents
//!   ([`bursar_wallet`]) under the runtime's passphrase. Nothing returns a key; exports are the
//!   encrypted document. A wallet's key is decrypted once per process, when it first signs:
//!   concurrent first payments share one decryption, a failed one is retried by the next
//!   payment, and at most [`RuntimeConfig::kdf_concurrency`] key derivations (scrypt, about
//!   256 MiB each at the standard parameters) run at once ([`Runtime::key_decryptions`]).
//! - **Grants**: the wallet owner's time-bound authorization for a named agent (default
//!   60 minutes); revoke one, or all (the kill switch). No live grant, no payment.
//! - **Sessions**: one agent run under a grant, with a budget (`maxSpendAmount` in the runtime's
//!   currency) and an expiry; the same client token returns the same session. The session token
//!   (`bst_...`) is the agent's only credential ([`tokens`]).
//! - **Paying** ([`Runtime::fetch`]): the runtime makes the agent's request; on 402 the paying
//!   client ([`bursar_buyer`]) picks an offer and, before signing, the runtime reserves the price
//!   against the session in one database transaction ([`bursar_store::RuntimeStore::reserve`]).
//!   A refusal (budget, expiry, revoked grant, other currency) means nothing is signed.
//! - **Egress** ([`egress`]): the runtime connects to public addresses only for agents, unless
//!   the operator allows more ([`RuntimeConfig::egress`], `--egress-allow`): loopback, private
//!   networks, link-local (cloud metadata) and other non-public addresses, in any IPv4 or IPv6
//!   form, are refused with `egress_refused` before anything is sent, checked on the addresses
//!   actually connected to; redirects are not followed and no ambient proxy is used.
//! - **Governance** ([`Runtime::policies_for`]): every payment is evaluated, before signing,
//!   against the runtime's policy — the default policy
//!   ([`bursar_governance::DEFAULT_POLICY_TOML`]) unless a policy file replaces it or
//!   [`RuntimeConfig::default_policy`] switches it off — and the wallet's, grant's and
//!   session's own; any failing rule denies, and the agent hears the most specific one. Every
//!   decision, allowed or refused (also when nothing offered was payable or the session could
//!   not pay), goes into the hash-chained decision trace. Validation pauses belong to the
//!   policy that saw the failures; the 402 backoff count is kept in the database.
//! - **Two-phase accounting**: a reservation stays pending until the chain decides: posted when
//!   the token shows the authorization used (with the transaction when a receipt proves it),
//!   voided when it is proven unusable (never signed, or unused after `validBefore` on chain).
//!   Once a signed authorization has left, its amount stays reserved until then — a seller may
//!   settle it late. [`Runtime::spawn_resolver`] keeps looking; [`reconcile`] checks the whole
//!   ledger against the chain.
//! - **API** ([`api::router`]): JSON over HTTP, operator keys for admin endpoints, session tokens
//!   for agents, idempotency keys on creates, `/openapi.json`.
//! - **Budget alerts** ([`alerts`]): at thresholds of any budget (default 50% and 75%), an
//!   alert and an `alert` ledger entry, once per budget and threshold; delivered to a webhook
//!   signed with HMAC-SHA256 and retried with backoff ([`Runtime::spawn_alert_delivery`]).
//! - **Compensation** ([`compensation`]): every paid request's evidence is kept; a step or
//!   session marked failed gets its unsettled authorizations cancelled on chain
//!   (`cancelAuthorization`, the reservation voided as `cancelled`) and its settled payments
//!   recorded as refund claims with the evidence ([`Runtime::mark_failed`]).
//! - **Forward proxy** ([`proxy::proxy_router`]): the same paying for agents that set
//!   `HTTP_PROXY` to it, with the session token as proxy credentials (no `CONNECT` tunnels).

mod admin;
pub mod alerts;
pub mod api;
pub mod compensation;
pub mod egress;
mod error;
pub mod proxy;
pub mod reconcile;
mod service;
pub mod tokens;

pub use admin::PolicyScope;
pub use alerts::{AlertBody, AlertWebhook};
pub use egress::{EgressAllow, EgressPolicy};
pub use error::RuntimeError;
pub use service::{
    Currency, Fetched, GRANT_DURATION_DEFAULT, GRANT_DURATION_MAX, IssuedSession,
    KDF_CONCURRENCY_MAX_DEFAULT, PaymentSummary, RESOLVE_BATCH_MAX, Resolution, Runtime,
    RuntimeConfig, SessionRequest, UPSTREAM_TIMEOUT, ValidationOutcome, WalletInfo,
};
