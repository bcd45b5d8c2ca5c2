//! # bursar-governance
//!
//! Policies for agents that pay: evaluated before anything is signed, every rule recorded, deny
//! wins, fail closed.
//!
//! - [`Policy`] reads a TOML document (format in [`policy`]): per-call maximum (in the currency
//!   and as a share of the session's budget), allowed networks
//!   and assets, payee allow/deny lists by host or address, per-payee/asset limits, caps over
//!   rolling windows per wallet or agent, per-endpoint call limits, loop detection, pinned terms
//!   (an endpoint's payTo, asset and network may not change within a session and its price may
//!   not rise), exponential backoff after repeated 402s to paid requests, and rules per phase
//!   (`explore`, `execute`, ...), and what a paid response must look like (status, content type,
//!   its declared type, JSON Schemas; failures in a row pause the endpoint).
//! - [`Policy::default_policy`] ([`DEFAULT_POLICY_TOML`], a commented document) is the policy a
//!   careful operator starts from: a call at most 25% of the session's budget, loop detection
//!   (10 payments to one endpoint within a minute), at most 100 payments to one endpoint per
//!   session, pinned terms, a backoff of a minute (doubling) after a 402 to a paid request, and
//!   every paid response held to its declared type and the seller's published schema, with a
//!   24-hour pause after three failures in a row. The runtime applies it to every session
//!   unless it is replaced or switched off.
//! - [`evaluate`] runs every rule of every policy (a global file plus the wallet's, grant's and
//!   session's) against a [`Proposal`] and what the session already paid the endpoint
//!   ([`EndpointHistory`]). The result lists each rule with its input and outcome (for the
//!   decision trace, failures with their [`DenyCode`]), the most specific failure (the denial,
//!   by [`DenyCode`]'s order; see [`engine`]), and the rolling-window caps that the store
//!   enforces atomically with the reservation.
//!
//! Policies compose: every rule of every policy in force runs, and any failure denies. A
//! stricter policy attached to a session tightens the default; nothing attached can loosen it
//! (replace the runtime's policy for that).
//!
//! This crate does no I/O: the runtime gathers the facts and records the outcome.

pub mod engine;
pub mod policy;

pub use engine::{
    BACKOFF_BASE_MS, BACKOFF_MAX_MS, DenyCode, EndpointHistory, EndpointPause, Evaluation,
    ListingFacts, ListingLookup, Proposal, RuleResult, Terms, backoff_ms, backoff_ms_from,
    endpoint_of, evaluate, host_matches, percent_of,
};
pub use policy::{
    ALERT_THRESHOLDS_DEFAULT, CacheRule, CacheScope, DEFAULT_POLICY_SOURCE, DEFAULT_POLICY_TOML,
    Limit, PaidResponse, PayeeMatch, PhaseRule, Policy, PolicyError, ReputationRule, Validation,
    WindowCap, WindowScope, alert_thresholds, parse_period,
};
