//! # bursar-facilitator
//!
//! Verifies x402 `exact` payments on EVM chains and settles each EIP-3009 authorization exactly
//! once, from the facilitator's own account, on any [`bursar_chain::EvmChain`].
//!
//! - [`LocalFacilitator`] is the service, usable in-process (it implements
//!   [`bursar_facilitator_client::Facilitator`]) or over HTTP through [`router`].
//! - Verification runs the stateless checks of [`bursar_protocol::exact_evm::check_payment`] in the
//!   reference order, then reads the chain: the token's EIP-712 domain (cached), whether the nonce
//!   is used, and the payer's balance.
//! - Settlement re-verifies, simulates, submits `transferWithAuthorization` and waits for the
//!   receipt. Identical concurrent or repeated settles share one outcome and one transaction.
//!
//! ## Access control and hooks
//!
//! [`protected_router`] puts the [`access`] layer in front of `/verify` and `/settle`: seller API
//! keys from [`bursar_store::KeyStore`], token-bucket rate limits per key (or per IP for
//! anonymous callers when [`AccessPolicy`] opens an endpoint) in memory ([`MemoryLimiter`]) or
//! Redis ([`RedisLimiter`]), daily settlement quotas; a limiter outage refuses `/settle` (503).
//! [`FacilitatorHooks`] ([`LocalFacilitator::with_hooks`]) run before and after each verify and
//! settle; a before-hook may refuse with a reason.
//!
//! ## The settlement ledger
//!
//! Every settlement goes through a [`bursar_store::SettlementLedger`] (SQLite or PostgreSQL;
//! [`LocalFacilitator::new`] uses a private in-memory one, [`LocalFacilitator::with_ledger`] takes
//! any). Identical concurrent calls inside one process still share one in-memory settlement; the
//! ledger adds durability and exactly-once across processes:
//!
//! 1. Before anything else, the authorization (network, token, payer, nonce) is claimed. The
//!    database's UNIQUE constraint decides who owns it, so two facilitators sharing one database
//!    never both settle it.
//! 2. A claim already held for the same payment returns the recorded response, or, while the
//!    holder is still at work, waits (polling the ledger and the transaction's receipt, at most
//!    [`SETTLED_ELSEWHERE_WAIT_TIMEOUT`]). Held for a different payment: refused with the reason
//!    verification gives (typically the nonce is used) or `settlement_in_progress`.
//! 3. A refusal before broadcast deletes the claim, so the payer may fix the problem and retry.
//! 4. The transaction hash is recorded (`submitted`) before waiting for the receipt; then the
//!    outcome (`confirmed` / `failed`) with the response every later duplicate receives, also
//!    after a restart.
//!
//! ## Batched settlement
//!
//! With [`FacilitatorConfig::batch`] set, a verified and simulated settlement is queued in the
//! [`batch`] module instead of being sent alone. Batches of up to [`BatchConfig::items_max`]
//! items (flushed after [`BatchConfig::wait_max`] at the latest) go out as one
//! `BursarBatchSettler.settle` transaction from one of several sender accounts
//! ([`LocalFacilitator::with_senders`], each with its own nonce manager). The contract runs each
//! item in its own try/catch and emits one event per item, so one bad item never reverts the
//! others. The batch transaction is signed first, every item is recorded `submitted` with its
//! hash in one database transaction, and only then is it broadcast; each item is finished from
//! its own event once the receipt is [`FacilitatorConfig::confirmations`] blocks deep.
//! Identical concurrent settles still share one queue entry, so they share one transaction.
//!
//! ## The `payment-identifier` extension
//!
//! A payload's `extensions["payment-identifier"].info.id` (16 to 128 characters of
//! `A-Z a-z 0-9 _ -`) is stored with the claim. The same id with the same payment gets the
//! recorded outcome; the same id with another payment is refused with
//! [`PAYMENT_ID_CONFLICT`] (HTTP 409 from `/settle`); a malformed id with [`PAYMENT_ID_INVALID`]
//! (HTTP 400).
//!
//! ## Crash recovery
//!
//! [`LocalFacilitator::recover`] (the `bursar` command runs it at startup) looks at every
//! `submitted` settlement on this facilitator's chain. It never broadcasts anything:
//!
//! - the transaction is mined → recorded as confirmed (or failed, if it reverted) with the same
//!   response a live settle would have given; for a batch, each item from its own
//!   `ItemSettled` / `ItemFailed` event (a used authorization whose item failed was spent by
//!   another transaction: failed, `invalid_exact_evm_nonce_already_used`);
//! - not mined, and the token reports the authorization used → failed: it was spent by another
//!   transaction (`invalid_exact_evm_nonce_already_used`);
//! - not mined, unused, and `validBefore` has passed on the chain → failed: it can never settle
//!   and nothing moved (`invalid_exact_evm_payload_authorization_valid_before`);
//! - not mined, unused and still valid (the transaction may still be in a mempool) → left
//!   `submitted` and logged; duplicates keep waiting on it and a later recovery looks again.
//!
//! A `received` claim older than [`RECEIVED_ABANDONED_AFTER`] belonged to a facilitator that
//! stopped between claiming and recording a broadcast. If the token reports the authorization
//! used, it is recorded as failed (the transaction's hash is unknown); if unused, the claim is
//! released so the payer may retry; the token's nonce still allows one transfer at most.
//!
//! A running facilitator recovers again in the background ([`LocalFacilitator::spawn_recovery`],
//! every [`RECOVERY_INTERVAL_DEFAULT`] in the `bursar` command), over rows untouched for
//! [`RECEIVED_ABANDONED_AFTER`]: what a crash left `submitted` finishes once its transaction is
//! mined or its authorization expires, and abandoned claims are released, without a restart.
//!
//! ## Observability
//!
//! Every [`LocalFacilitator`] keeps Prometheus metrics ([`FacilitatorMetrics`],
//! [`LocalFacilitator::metrics`]), served as OpenMetrics text by `GET /metrics` on [`router`] and
//! [`protected_router`]. `/metrics` needs no API key; [`RouterOptions`] leaves it out and
//! [`metrics_router`] serves it on a listener of its own. The metrics, all prefixed
//! `bursar_facilitator_` (details in [`metrics`]):
//!
//! - `verify_total{outcome="valid|invalid",reason}` and
//!   `settle_total{outcome="success|failure",reason}`: answers and rejections by x402 reason (`reason` is empty on success; unknown, malformed or
//!   too many distinct reasons count as `other`, so callers cannot grow the label set);
//! - `verify_duration_seconds{outcome}` and `settle_duration_seconds{outcome}`: latency
//!   histograms, 100 µs to 30 s;
//! - `http_requests_total{route,status}`: every HTTP answer (`route` is a known route or `other`);
//! - `batches_total` and `batch_items`: batched settlement transactions and their sizes;
//! - `pending_settlements`: settlements `received` or `submitted` in the ledger, read at scrape
//!   time;
//! - `gas_used_total` and `gas_spent_wei_total`: gas of mined settlement transactions.
//!
//! `verify` and `settle` run in `tracing` spans (`facilitator.verify`, `facilitator.settle`, with
//! the network, the outcome and the reason). The `bursar` command exports them as OpenTelemetry
//! traces over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and not at all
//! otherwise.

pub mod access;
pub mod batch;
mod hooks;
pub mod limit;
pub mod metrics;
pub mod paid;
pub mod reads;
mod server;
mod service;

pub use access::{Access, AccessPolicy};
pub use batch::BatchConfig;
pub use hooks::{FacilitatorHooks, NoHooks, Refusal, payer_of};
pub use limit::{Admission, BucketRule, MemoryLimiter, RateLimiter, RedisLimiter};
pub use metrics::FacilitatorMetrics;
pub use server::{
    RouterOptions, metrics_router, protected_router, protected_router_with, router, router_with,
};
pub use service::{
    FacilitatorConfig, LEDGER_POLL_INTERVAL, LocalFacilitator, PAYMENT_ID_CONFLICT,
    PAYMENT_ID_INVALID, PAYMENT_IDENTIFIER_EXTENSION, CLAIM_HOLD_DEFAULT, HELD_CLAIM_WAIT,
    RECOVERY_INTERVAL_DEFAULT, Recovered, RecoveryOutcome, SETTLE_GAS_LIMIT,
    SETTLE_RECEIPT_TIMEOUT, SETTLED_ELSEWHERE_WAIT_TIMEOUT, SETTLED_REMEMBERED_MAX,
    payment_fingerprint, payment_identifier,
};
