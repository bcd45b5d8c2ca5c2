//! Evaluation: every rule of every policy runs, each is recorded with its input and result, and
//! any failing rule denies (deny wins). No policy at all allows (the session budget still
//! applies); a policy that cannot be read denies (fail closed) — the caller turns a
//! [`crate::PolicyError`] into a denial.
//!
//! When several rules fail, every failure is recorded (each [`RuleResult`] carries its code)
//! and the agent is told the most specific one, by [`DenyCode`]'s order: who is paid, then on
//! which network and in which asset, then whether the agent may spend at all, then what the
//! endpoint did (paused, changed its terms, refused payments), then how often the agent calls
//! it, then how much it costs (the narrowest price limit first). The reasoning: a fact about
//! the counterparty is what the agent (and its operator) must act on, and it stays true
//! whatever else changes; a price limit is the last thing to mention, because a cheaper offer
//! from an untrusted payee would still be refused. Rules that tie keep evaluation order.

use alloy_primitives::Address;
use bursar_protocol::Amount;
use serde_json::{Value, json};

use crate::policy::{Policy, WindowCap, domain_matches};

/// The payment about to be signed.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub url: url::Url,
    /// CAIP-2.
    pub network: String,
    pub asset: Address,
    pub pay_to: Address,
    pub amount: Amount,
    /// The phase the agent declared, if any (`explore`, `execute`, ...).
    pub phase: Option<String>,
    /// The session's whole budget, for `max_per_call_percent`; `None` outside a session.
    pub session_budget: Option<Amount>,
    /// What each catalog named by a `[reputation]` rule in force lists for this endpoint under
    /// these terms (the caller looks them up; see [`crate::ReputationRule`]).
    pub listings: std::collections::BTreeMap<url::Url, ListingLookup>,
}

/// What a catalog lists for the endpoint being paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingLookup {
    /// Listed under the terms being paid (its payee, network and asset), with these facts.
    Listed(ListingFacts),
    /// Not listed, or listed under other terms (another payee): the listing's reputation is not
    /// this seller's.
    NotListed,
    /// The catalog could not be read (why): fail closed.
    Unreadable(String),
}

/// A listing's reputation, as a catalog computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListingFacts {
    pub settled_count: u64,
    pub distinct_payers: u64,
    /// Basis points (0 to 10,000).
    pub failure_rate_bps: u64,
}

/// The terms of an earlier payment to the same endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub network: String,
    pub asset: Address,
    pub pay_to: Address,
    pub amount: Amount,
}

/// What the session already paid this endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointHistory {
    /// Payments (reserved or settled) to this endpoint in this session.
    pub paid_in_session: u32,
    /// When they were made (unix ms), any order.
    pub paid_at_ms: Vec<i64>,
    /// The terms of the first payment to this endpoint in this session.
    pub first_terms: Option<Terms>,
    /// Paid requests in a row that the endpoint answered with 402 again, and when the last was.
    pub rejections: u32,
    pub last_rejection_ms: Option<i64>,
    /// Pauses of payments to the endpoint (failed response validations), one per policy that
    /// observed the failures; only those of policies in force for the session belong here.
    pub pauses: Vec<EndpointPause>,
}

/// Payments to an endpoint paused by one policy's response validations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPause {
    /// The source of the policy whose validations paused it (`default policy`, `session ...`).
    pub policy: String,
    pub until_ms: i64,
    pub reason: Option<String>,
}

/// Why a payment is denied, most specific first (see the module docs): when several rules
/// fail, the agent is told the first of them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyCode {
    /// The payee (host or payTo) is on a denylist.
    PayeeDenied,
    /// An allowlist is in force and the payee is not on it.
    PayeeNotAllowed,
    NetworkNotAllowed,
    AssetNotAllowed,
    /// A `[reputation]` catalog does not list the endpoint under these terms.
    NotListed,
    /// The endpoint's listing falls below a `[reputation]` bar.
    ReputationTooLow,
    /// A `[reputation]` catalog could not be read (fail closed).
    ReputationUnknown,
    /// The declared phase allows no payments.
    PhaseNoSpend,
    /// The endpoint failed response validations and is paused.
    EndpointPaused,
    /// The endpoint's payTo, asset or network changed, or its price rose, within the session.
    TermsChanged,
    /// The endpoint answered paid requests with 402 again; payments to it wait.
    EndpointBackingOff,
    /// The endpoint was paid too often within the loop window.
    LoopDetected,
    /// The endpoint was paid as often as a session may.
    EndpointCallLimit,
    /// The price is above a per-payee or per-asset limit.
    PayeeLimitExceeded,
    /// The price is above the declared phase's per-call maximum.
    PhaseMaxPerCallExceeded,
    /// The price is above the per-call maximum (absolute, or the share of the session budget).
    MaxPerCallExceeded,
}

impl DenyCode {
    /// Every code, most specific first.
    pub const ALL: [DenyCode; 16] = [
        DenyCode::PayeeDenied,
        DenyCode::PayeeNotAllowed,
        DenyCode::NetworkNotAllowed,
        DenyCode::AssetNotAllowed,
        DenyCode::NotListed,
        DenyCode::ReputationTooLow,
        DenyCode::ReputationUnknown,
        DenyCode::PhaseNoSpend,
        DenyCode::EndpointPaused,
        DenyCode::TermsChanged,
        DenyCode::EndpointBackingOff,
        DenyCode::LoopDetected,
        DenyCode::EndpointCallLimit,
        DenyCode::PayeeLimitExceeded,
        DenyCode::PhaseMaxPerCallExceeded,
        DenyCode::MaxPerCallExceeded,
    ];

    /// The code the agent is told.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::PayeeDenied => "payee_denied",
            DenyCode::PayeeNotAllowed => "payee_not_allowed",
            DenyCode::NetworkNotAllowed => "network_not_allowed",
            DenyCode::AssetNotAllowed => "asset_not_allowed",
            DenyCode::NotListed => "not_listed",
            DenyCode::ReputationTooLow => "reputation_too_low",
            DenyCode::ReputationUnknown => "reputation_unknown",
            DenyCode::PhaseNoSpend => "phase_no_spend",
            DenyCode::EndpointPaused => "endpoint_paused",
            DenyCode::TermsChanged => "terms_changed",
            DenyCode::EndpointBackingOff => "endpoint_backing_off",
            DenyCode::LoopDetected => "loop_detected",
            DenyCode::EndpointCallLimit => "endpoint_call_limit",
            DenyCode::PayeeLimitExceeded => "payee_limit_exceeded",
            DenyCode::PhaseMaxPerCallExceeded => "phase_max_per_call_exceeded",
            DenyCode::MaxPerCallExceeded => "max_per_call_exceeded",
        }
    }
}

impl std::fmt::Display for DenyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first wait after `backoff_after_rejections` rejections in a row; it doubles with each
/// further rejection, up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_BASE_MS: i64 = 1_000;
pub const BACKOFF_MAX_MS: i64 = 60 * 60 * 1_000;

/// How long to wait after `rejections` in a row, once at least `after` of them happened, with
/// the first wait [`BACKOFF_BASE_MS`].
pub fn backoff_ms(rejections: u32, after: u32) -> Option<i64> {
    backoff_ms_from(rejections, after, BACKOFF_BASE_MS)
}

/// [`backoff_ms`] with the first wait `first_ms` (it doubles with each further rejection, up
/// to [`BACKOFF_MAX_MS`]).
pub fn backoff_ms_from(rejections: u32, after: u32, first_ms: i64) -> Option<i64> {
    if after == 0 || rejections < after {
        return None;
    }
    let doublings = (rejections - after).min(32);
    Some(
        first_ms
            .max(1)
            .saturating_mul(1i64 << doublings)
            .min(BACKOFF_MAX_MS),
    )
}

/// One rule that ran.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleResult {
    /// The rule's name, e.g. `max_per_call`.
    pub rule: String,
    /// The policy it comes from.
    pub source: String,
    pub input: Value,
    pub passed: bool,
    pub detail: String,
    /// The code it denies with, when it failed.
    pub code: Option<DenyCode>,
}

impl RuleResult {
    pub fn to_json(&self) -> Value {
        let mut document = json!({
            "rule": self.rule,
            "source": self.source,
            "input": self.input,
            "passed": self.passed,
            "detail": self.detail,
        });
        if let Some(code) = self.code {
            document["code"] = json!(code.as_str());
        }
        document
    }
}

/// The outcome of evaluating the policies for one proposal.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub rules: Vec<RuleResult>,
    /// Caps over rolling windows the store must enforce with the reservation.
    pub windows: Vec<WindowCap>,
    /// The most specific failing rule's code and message (by [`DenyCode`]'s order; ties in
    /// evaluation order), the message naming the other codes that refused too; `None` when
    /// every rule passed.
    pub denial: Option<(String, String)>,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// The codes of every failing rule, in evaluation order.
    pub fn failures(&self) -> Vec<DenyCode> {
        self.rules.iter().filter_map(|rule| rule.code).collect()
    }

    fn check(
        &mut self,
        rule: &str,
        source: &str,
        input: Value,
        failure: Option<(DenyCode, String)>,
    ) {
        let passed = failure.is_none();
        let (code, detail) = match failure {
            Some((code, message)) => (Some(code), message),
            None => (None, "ok".into()),
        };
        self.rules.push(RuleResult {
            rule: rule.to_string(),
            source: source.to_string(),
            input,
            passed,
            detail,
            code,
        });
    }

    /// Picks the denial once every rule ran.
    fn decide(&mut self) {
        let Some(chosen) = self
            .rules
            .iter()
            .filter_map(|rule| rule.code.map(|code| (code, rule)))
            .min_by_key(|(code, _)| *code)
        else {
            return;
        };
        let (code, rule) = chosen;
        let mut others: Vec<&str> = Vec::new();
        for other in self.failures() {
            if other != code && !others.contains(&other.as_str()) {
                others.push(other.as_str());
            }
        }
        let message = if others.is_empty() {
            rule.detail.clone()
        } else {
            format!("{} (also refused: {})", rule.detail, others.join(", "))
        };
        self.denial = Some((code.as_str().to_string(), message));
    }
}

/// The `[reputation]` rule of one policy against what its catalog lists.
fn check_reputation(
    evaluation: &mut Evaluation,
    source: &str,
    rule: &crate::ReputationRule,
    proposal: &Proposal,
) {
    let catalog = rule.catalog.as_str();
    let lookup = proposal.listings.get(&rule.catalog);
    let input = |facts: Option<&ListingFacts>| {
        json!({"catalog": catalog, "minSettled": rule.min_settled,
               "minDistinctPayers": rule.min_distinct_payers,
               "maxFailureRateBps": rule.max_failure_rate_bps,
               "settledCount": facts.map(|f| f.settled_count),
               "distinctPayers": facts.map(|f| f.distinct_payers),
               "failureRateBps": facts.map(|f| f.failure_rate_bps)})
    };
    let (facts, failure) = match lookup {
        None => (
            None,
            Some((
                DenyCode::ReputationUnknown,
                format!("the catalog {catalog} was not consulted"),
            )),
        ),
        Some(ListingLookup::Unreadable(why)) => (
            None,
            Some((
                DenyCode::ReputationUnknown,
                format!(
                    "the catalog {catalog} could not be read ({why}); a reputation rule fails closed"
                ),
            )),
        ),
        Some(ListingLookup::NotListed) => (
            None,
            Some((
                DenyCode::NotListed,
                format!(
                    "the catalog {catalog} does not list this endpoint with this payee, network and asset"
                ),
            )),
        ),
        Some(ListingLookup::Listed(facts)) => {
            let mut short = Vec::new();
            if facts.settled_count < rule.min_settled {
                short.push(format!(
                    "{} settled payments (at least {} wanted)",
                    facts.settled_count, rule.min_settled
                ));
            }
            if facts.distinct_payers < rule.min_distinct_payers {
                short.push(format!(
                    "{} distinct payers (at least {} wanted)",
                    facts.distinct_payers, rule.min_distinct_payers
                ));
            }
            if let Some(max) = rule.max_failure_rate_bps
                && facts.failure_rate_bps > max
            {
                short.push(format!(
                    "a failure rate of {} bps (at most {max} allowed)",
                    facts.failure_rate_bps
                ));
            }
            let failure = (!short.is_empty()).then(|| {
                (
                    DenyCode::ReputationTooLow,
                    format!(
                        "the endpoint's listing in {catalog} shows {}",
                        short.join(", ")
                    ),
                )
            });
            (Some(facts), failure)
        }
    };
    evaluation.check("reputation", source, input(facts), failure);
}

/// The part of a URL that names an endpoint: scheme, host, port and path (no query).
pub fn endpoint_of(url: &url::Url) -> String {
    format!(
        "{}://{}{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        url.path()
    )
}

/// Runs every rule of every policy against `proposal`.
pub fn evaluate(
    policies: &[Policy],
    proposal: &Proposal,
    history: &EndpointHistory,
    now_ms: i64,
) -> Evaluation {
    let mut evaluation = Evaluation::default();
    let host = proposal
        .url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let amount = proposal.amount;
    for pause in &history.pauses {
        evaluation.check(
            "endpoint_pause",
            &pause.policy,
            json!({"endpoint": endpoint_of(&proposal.url), "pausedUntilMs": pause.until_ms,
                   "reason": pause.reason}),
            (now_ms < pause.until_ms).then(|| {
                (
                    DenyCode::EndpointPaused,
                    format!(
                        "payments to this endpoint are paused after failed response validations ({}); \
                         an operator can lift the pause",
                        pause.reason.as_deref().unwrap_or("no reason recorded")
                    ),
                )
            }),
        );
    }
    for policy in policies {
        let source = policy.source.as_str();
        if let Some(rule) = &policy.reputation {
            check_reputation(&mut evaluation, source, rule, proposal);
        }
        if let Some(max) = policy.max_per_call {
            evaluation.check(
                "max_per_call",
                source,
                json!({"amount": amount.to_string(), "max": max.to_string()}),
                (amount > max).then(|| {
                    (
                        DenyCode::MaxPerCallExceeded,
                        format!("the price {amount} is above the per-call maximum {max}"),
                    )
                }),
            );
        }
        if let Some(percent) = policy.max_per_call_percent
            && let Some(budget) = proposal.session_budget
        {
            let max = percent_of(budget, percent);
            evaluation.check(
                "max_per_call_percent",
                source,
                json!({"amount": amount.to_string(), "percent": percent,
                       "sessionBudget": budget.to_string(), "max": max.to_string()}),
                (amount > max).then(|| {
                    (
                        DenyCode::MaxPerCallExceeded,
                        format!(
                            "the price {amount} is above {percent}% of the session's budget \
                             ({max} of {budget})"
                        ),
                    )
                }),
            );
        }
        if let Some(networks) = &policy.networks {
            let allowed = networks
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&proposal.network));
            evaluation.check(
                "networks",
                source,
                json!({"network": proposal.network, "allowed": networks}),
                (!allowed).then(|| {
                    (
                        DenyCode::NetworkNotAllowed,
                        format!("network {} is not allowed", proposal.network),
                    )
                }),
            );
        }
        if let Some(assets) = &policy.assets {
            let allowed = assets.contains(&proposal.asset);
            evaluation.check(
                "assets",
                source,
                json!({"asset": proposal.asset.to_string(), "allowed": assets.iter().map(|a| a.to_string()).collect::<Vec<_>>()}),
                (!allowed).then(|| {
                    (
                        DenyCode::AssetNotAllowed,
                        format!("asset {} is not allowed", proposal.asset),
                    )
                }),
            );
        }
        let payee_input = json!({"host": host, "payTo": proposal.pay_to.to_string()});
        if !policy.deny_payees.is_empty() {
            let denied = policy
                .deny_payees
                .iter()
                .find(|m| m.matches(&host, proposal.pay_to));
            evaluation.check(
                "payee_denylist",
                source,
                payee_input.clone(),
                denied.map(|m| {
                    (
                        DenyCode::PayeeDenied,
                        format!("payee is on the denylist ({m:?})"),
                    )
                }),
            );
        }
        if let Some(allow) = &policy.allow_payees {
            let domains: Vec<_> = allow
                .iter()
                .filter(|m| matches!(m, crate::policy::PayeeMatch::Domain(_)))
                .collect();
            let addresses: Vec<_> = allow
                .iter()
                .filter(|m| matches!(m, crate::policy::PayeeMatch::Address(_)))
                .collect();
            // Each kind of list, when given, must match: a trusted host that names an unknown
            // payTo is refused, and so is a known payTo behind an unknown host.
            let host_ok =
                domains.is_empty() || domains.iter().any(|m| m.matches(&host, proposal.pay_to));
            let address_ok =
                addresses.is_empty() || addresses.iter().any(|m| m.matches(&host, proposal.pay_to));
            evaluation.check(
                "payee_allowlist",
                source,
                payee_input.clone(),
                (!(host_ok && address_ok)).then(|| {
                    (
                        DenyCode::PayeeNotAllowed,
                        if host_ok {
                            format!("payTo {} is not on the allowlist", proposal.pay_to)
                        } else {
                            format!("host {host} is not on the allowlist")
                        },
                    )
                }),
            );
        }
        for limit in &policy.limits {
            let payee_applies = limit
                .payee
                .as_ref()
                .is_none_or(|m| m.matches(&host, proposal.pay_to));
            let asset_applies = limit.asset.is_none_or(|a| a == proposal.asset);
            if payee_applies && asset_applies {
                evaluation.check(
                    "payee_asset_limit",
                    source,
                    json!({"amount": amount.to_string(), "max": limit.max_per_call.to_string(),
                           "payee": format!("{:?}", limit.payee), "asset": limit.asset.map(|a| a.to_string())}),
                    (amount > limit.max_per_call).then(|| {
                        (
                            DenyCode::PayeeLimitExceeded,
                            format!(
                                "the price {amount} is above this payee's per-call maximum {}",
                                limit.max_per_call
                            ),
                        )
                    }),
                );
            }
        }
        if let Some(phase_name) = &proposal.phase
            && let Some(phase) = policy.phases.get(&phase_name.to_ascii_lowercase())
        {
            let input = json!({"phase": phase_name, "spend": phase.spend,
                               "max": phase.max_per_call.map(|m| m.to_string()), "amount": amount.to_string()});
            let failure = if !phase.spend {
                Some((
                    DenyCode::PhaseNoSpend,
                    format!("no payments during the {phase_name} phase"),
                ))
            } else {
                phase.max_per_call.filter(|max| amount > *max).map(|max| {
                    (
                        DenyCode::PhaseMaxPerCallExceeded,
                        format!(
                            "the price {amount} is above the {phase_name} phase's maximum {max}"
                        ),
                    )
                })
            };
            evaluation.check("phase", source, input, failure);
        }
        if let Some(max) = policy.max_calls_per_session {
            evaluation.check(
                "endpoint_calls_per_session",
                source,
                json!({"endpoint": endpoint_of(&proposal.url), "paid": history.paid_in_session, "max": max}),
                (history.paid_in_session >= max).then(|| {
                    (
                        DenyCode::EndpointCallLimit,
                        format!(
                            "this endpoint was already paid {} times in this session (limit {max})",
                            history.paid_in_session
                        ),
                    )
                }),
            );
        }
        if let Some((count, within_seconds)) = policy.loop_limit {
            let since =
                now_ms.saturating_sub(i64::try_from(within_seconds * 1000).unwrap_or(i64::MAX));
            let recent = history.paid_at_ms.iter().filter(|at| **at >= since).count();
            evaluation.check(
                "loop_detection",
                source,
                json!({"endpoint": endpoint_of(&proposal.url), "paidRecently": recent,
                       "count": count, "withinSeconds": within_seconds}),
                (recent >= count as usize).then(|| {
                    (
                        DenyCode::LoopDetected,
                        format!(
                            "this endpoint was paid {recent} times in the last {within_seconds} s: a loop"
                        ),
                    )
                }),
            );
        }
        if policy.pin_terms
            && let Some(first) = &history.first_terms
        {
            let changed = if first.pay_to != proposal.pay_to {
                Some(format!(
                    "payTo changed from {} to {}",
                    first.pay_to, proposal.pay_to
                ))
            } else if first.asset != proposal.asset || first.network != proposal.network {
                Some("the asset or network changed".to_string())
            } else if proposal.amount > first.amount {
                Some(format!(
                    "the price rose from {} to {}",
                    first.amount, proposal.amount
                ))
            } else {
                None
            };
            evaluation.check(
                "pin_terms",
                source,
                json!({"first": {"payTo": first.pay_to.to_string(), "amount": first.amount.to_string(),
                                  "asset": first.asset.to_string(), "network": first.network},
                       "now": {"payTo": proposal.pay_to.to_string(), "amount": amount.to_string(),
                               "asset": proposal.asset.to_string(), "network": proposal.network}}),
                changed.map(|message| (DenyCode::TermsChanged, format!("{message} for this endpoint"))),
            );
        }
        let first_wait_ms =
            i64::try_from(policy.backoff_wait_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let (Some(wait_ms), Some(last)) = (
            backoff_ms_from(
                history.rejections,
                policy.backoff_after_rejections,
                first_wait_ms,
            ),
            history.last_rejection_ms,
        ) {
            let retry_at = last.saturating_add(wait_ms);
            evaluation.check(
                "rejection_backoff",
                source,
                json!({"endpoint": endpoint_of(&proposal.url), "rejectionsInARow": history.rejections,
                       "after": policy.backoff_after_rejections, "waitMs": wait_ms}),
                (now_ms < retry_at).then(|| {
                    (
                        DenyCode::EndpointBackingOff,
                        format!(
                            "this endpoint refused {} paid requests in a row; next try allowed in {} ms",
                            history.rejections,
                            retry_at - now_ms
                        ),
                    )
                }),
            );
        }
        evaluation.windows.extend(policy.windows.iter().cloned());
    }
    evaluation.decide();
    evaluation
}

/// `percent`% of `budget`, rounded down (integer arithmetic on atomic units).
pub fn percent_of(budget: Amount, percent: u8) -> Amount {
    let atomic = budget.atomic();
    let hundred = alloy_primitives::U256::from(100u8);
    let percent = alloy_primitives::U256::from(percent);
    // (budget / 100) * percent + (budget % 100) * percent / 100: never overflows.
    Amount::from_atomic((atomic / hundred) * percent + (atomic % hundred) * percent / hundred)
}

/// Whether `host` matches `pattern` (exported for callers that filter by domain).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    domain_matches(pattern, host)
}
