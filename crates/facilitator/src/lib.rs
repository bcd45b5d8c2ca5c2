//! # bursar-facilitator
//!
//! Verifies x402 `exact` payments on EVM chains and settles each EIP-3009 authorization exactly
//! once, from the facilitator's own account, on any [`bursar_chain::EvmChain`].
//!
//! - [`LocalFacilitator`] is the service, usable in-process (it implements
//!   [`bursar_facilitator_client::Facilitator`]) or over HTTP through [`router`].
//! - Verification runs the stateless checks of [`bursar_protocol::exact_evm::check_payment`] in the
//!   reference order, then reads the chain: the token's EIP-712 domain (cached), whether the nonce
//!   is used, and the payer's balance; then, once per token, what the token lets this facilitator
//!   settle (see below).
//! - Settlement re-verifies, simulates, submits `transferWithAuthorization` and waits for the
//!   receipt. Identical concurrent or repeated settles share one outcome and one transaction.
//!
//! ## Which `transferWithAuthorization`, and tokens that cannot be settled
//!
//! A 65-byte EOA signature is settled through EIP-3009's own `transferWithAuthorization(from, to,
//! value, validAfter, validBefore, nonce, uint8 v, bytes32 r, bytes32 s)`, which every EIP-3009
//! token has (a recovery byte of 0/1 is sent as 27/28); only other signatures would use the
//! `bytes signature` overload that USDC v2.2+ and BursarUSD add. Unbatched settlement and the
//! batch settler follow the same rule. Verification accepts 65-byte signatures only (smart-wallet
//! signatures are refused with `invalid_exact_evm_payload_signature`).
//!
//! `/verify` never calls valid a payment this facilitator cannot settle. The first payment that
//! reaches a token finds out what the token supports ([`tokens`]; [`LocalFacilitator::token_support`]
//! shows it), and the answer is kept for the life of the process, so later payments cost no
//! extra chain call. Refused with [`bursar_protocol::Reason::UNSUPPORTED_TOKEN`]
//! (`invalid_exact_evm_unsupported_token`), at `/verify` and `/settle` alike, with a message that
//! says which:
//!
//! - there is no contract at the asset address;
//! - the asset has no EIP-3009 (`authorizationState` reverts or answers no boolean), whether its
//!   reads go out alone or grouped ([`FacilitatorConfig::group_reads`]);
//! - the asset has only the `bytes signature` form of `transferWithAuthorization`, not the
//!   EIP's `(v, r, s)` one.
//!
//! If the simulation of both forms reverts on that first payment, nothing is learned and that
//! payment is refused with the simulation's reason (the revert decoded, or
//! `invalid_exact_evm_transaction_simulation_failed`); the next payment asks again.
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
//! 1. Before anything else, the authorization (network, token, payer, nonce) is claimed, with the
//!    payee and amount it pays and the claiming process as its holder. The database's UNIQUE
//!    constraint decides who owns it, so two facilitators sharing one database never both settle
//!    it.
//! 2. The owner verifies and simulates, signs the transaction, and records it (`submitted`: hash,
//!    sending account, account nonce) **before** broadcasting it; only the holder may record.
//!    A crash at any moment therefore leaves either a `received` claim, for which nothing was
//!    broadcast, or a `submitted` row naming the one transaction that may be on chain.
//! 3. Then it waits for the receipt and records the outcome (`confirmed` / `failed`) with the
//!    response every later duplicate receives, also after a restart.
//! 4. A claim already held for the same payment returns the recorded response, or, while the
//!    holder is at work, waits: for a broadcast transaction, until it is mined (at most
//!    [`SETTLED_ELSEWHERE_WAIT_TIMEOUT`]); for a claim nothing was broadcast for, at most
//!    [`HELD_CLAIM_WAIT`], then answers `settlement_in_progress` saying when the claim lapses.
//!    A claim lapses after [`FacilitatorConfig::claim_hold`] ([`CLAIM_HOLD_DEFAULT`], 15 s):
//!    the next retry takes it over and settles. Held for a different payment: refused with the
//!    reason verification gives (typically the nonce is used) or `settlement_in_progress`.
//! 5. A refusal before broadcast deletes the claim, so the payer may fix the problem and retry.
//!
//! **A paid authorization is never answered with an error.** When the facilitator's own
//! transaction did not use the authorization (it reverted because another transaction was first;
//! a crash lost track of it; an older row recorded a failure) but the token reports it used, the
//! transaction that used it is found from the token's `AuthorizationUsed` event ([`paid`]), and,
//! if it moved exactly the payee and amount the payment names, the answer is success with that
//! transaction and the row is recorded (or corrected) as confirmed. A different authorization
//! with the same nonce used instead is a failure (`invalid_exact_evm_nonce_already_used`).
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
//! [`LocalFacilitator::recover`] (the `bursar` command runs it at startup, before serving) and
//! [`LocalFacilitator::spawn_recovery`] (every [`RECOVERY_INTERVAL_DEFAULT`] while running, over
//! rows untouched that long) never broadcast anything. A row's holder is *gone* when the row is
//! older than the claim hold, or when it was left by an earlier life of the same instance
//! ([`FacilitatorConfig::instance`]; the `bursar` command keeps one per data dir): after a
//! restart, everything the previous life left is judged at once.
//!
//! - `received`, holder gone: nothing was broadcast. Unused on chain → released, so the payer's
//!   retry settles it; used → paid by someone else's transaction: confirmed with it (see above).
//! - `submitted`, mined → recorded as confirmed (or failed, if it reverted and nothing paid the
//!   authorization) with the same response a live settle would have given; for a batch, each
//!   item from its own `ItemSettled` / `ItemFailed` event.
//! - `submitted`, not mined, authorization used → confirmed with the transaction that used it.
//! - `submitted`, not mined, unused, and `validBefore` has passed → failed: it can never settle
//!   and nothing moved (`invalid_exact_evm_payload_authorization_valid_before`).
//! - `submitted`, not mined, unused, valid, holder gone, and the recorded transaction provably
//!   never reached the chain — the sending account's pending nonce never reached the recorded
//!   one (the process died between recording and broadcasting), or its mined nonce passed it
//!   with another transaction — → released, so the payer's retry settles it.
//! - otherwise (the transaction may be in a mempool) → left `submitted`; duplicates wait on it
//!   and a later pass looks again.
//!
//! ## The discovery catalog
//!
//! With [`LocalFacilitator::with_catalog`], every valid verification and every settlement of a
//! payment whose seller published the `bazaar` extension is queued for a
//! [`bursar_catalog::Catalog`] (never delaying the payment), and the routers serve it at
//! `/discovery/resources`, `/discovery/search` and `/discovery/reports` (open to anyone, like
//! `/supported`). The `bursar` command keeps one in the ledger's database unless `--no-catalog`.
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
pub mod openapi;
pub mod paid;
pub mod reads;
pub mod scheme;
mod server;
mod service;
pub mod tokens;

pub use access::{Access, AccessPolicy};
pub use batch::BatchConfig;
pub use hooks::{FacilitatorHooks, NoHooks, Refusal, payer_of};
pub use limit::{Admission, BucketRule, MemoryLimiter, RateLimiter, RedisLimiter};
pub use metrics::FacilitatorMetrics;
pub use server::{
    RouterOptions, metrics_router, protected_router, protected_router_with, router, router_with,
};
pub use service::{
    CLAIM_HOLD_DEFAULT, FacilitatorConfig, HELD_CLAIM_WAIT, LocalFacilitator, PAYMENT_ID_CONFLICT,
    PAYMENT_ID_INVALID, PAYMENT_IDENTIFIER_EXTENSION, RECOVERY_INTERVAL_DEFAULT, Recovered,
    RecoveryOutcome, SETTLE_GAS_LIMIT, SETTLE_RECEIPT_TIMEOUT, SETTLED_ELSEWHERE_WAIT_TIMEOUT,
    SETTLED_REMEMBERED_MAX, SETTLEMENT_LEDGER_POLL_INTERVAL, payment_fingerprint,
    payment_identifier,
};
pub use tokens::{TOKENS_REMEMBERED_MAX, TokenSupport};
