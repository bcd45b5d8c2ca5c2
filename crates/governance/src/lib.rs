//! # bursar-governance
//!
//! Policies for agents that pay: evaluated before anything is signed, every rule recorded, deny
//! wins, fail closed.
//!
//! - [`Policy`] reads a TOML document (format in [`policy`]): per-call maximum, allowed networks
//!   and assets, payee allow/deny lists by host or address, per-payee/asset limits, caps over
//!   rolling windows per wallet or agent, per-endpoint call limits, loop detection, pinned terms
//!   (an endpoint's payTo, asset and network may not change within a session and its price may
//!   not rise), exponential backoff after repeated 402s to paid requests, and rules per phase
//!   (`explore`, `execute`, ...).
//! - [`evaluate`] runs every rule of every policy (a global file plus the wallet's, grant's and
//!   session's) against a [`Proposal`] and what the session already paid the endpoint
//!   ([`EndpointHistory`]). The result lists each rule with its input and outcome (for the
//!   decision trace), the first failure (the denial), and the rolling-window caps that the store
//!   enforces atomically with the reservation.
//!
//! This crate does no I/O: the runtime gathers the facts and records the outcome.

pub mod engine;
pub mod policy;

pub use engine::{
    BACKOFF_BASE_MS, BACKOFF_MAX_MS, EndpointHistory, Evaluation, Proposal, RuleResult, Terms,
    backoff_ms, endpoint_of, evaluate, host_matches,
};
pub use policy::{
    ALERT_THRESHOLDS_DEFAULT, CacheRule, CacheScope, Limit, PayeeMatch, PhaseRule, Policy,
    PolicyError, Validation, WindowCap, WindowScope, alert_thresholds, parse_period,
};
