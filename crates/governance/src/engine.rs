//! Evaluation: every rule of every policy runs, each is recorded with its input and result, and
//! any failing rule denies (deny wins). No policy at all allows (the session budget still
//! applies); a policy that cannot be read denies (fail closed) — the caller turns a
//! [`crate::PolicyError`] into a denial.

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
    /// Payments to the endpoint are paused until then (failed response validations).
    pub paused_until_ms: Option<i64>,
    pub pause_reason: Option<String>,
}

/// The first wait after `backoff_after_rejections` rejections in a row; it doubles with each
/// further rejection, up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_BASE_MS: i64 = 1_000;
pub const BACKOFF_MAX_MS: i64 = 60 * 60 * 1_000;

/// How long to wait after `rejections` in a row, once at least `after` of them happened.
pub fn backoff_ms(rejections: u32, after: u32) -> Option<i64> {
    if after == 0 || rejections < after {
        return None;
    }
    let doublings = (rejections - after).min(32);
    Some(
        BACKOFF_BASE_MS
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
}

impl RuleResult {
    pub fn to_json(&self) -> Value {
        json!({
            "rule": self.rule,
            "source": self.source,
            "input": self.input,
            "passed": self.passed,
            "detail": self.detail,
        })
    }
}

/// The outcome of evaluating the policies for one proposal.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub rules: Vec<RuleResult>,
    /// Caps over rolling windows the store must enforce with the reservation.
    pub windows: Vec<WindowCap>,
    /// The first failing rule's code and message; `None` when every rule passed.
    pub denial: Option<(String, String)>,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }

    fn check(&mut self, rule: &str, source: &str, input: Value, failure: Option<(&str, String)>) {
        let passed = failure.is_none();
        let detail = match &failure {
            Some((_, message)) => message.clone(),
            None => "ok".into(),
        };
        if let Some((code, message)) = failure
            && self.denial.is_none()
        {
            self.denial = Some((code.to_string(), message));
        }
        self.rules.push(RuleResult {
            rule: rule.to_string(),
            source: source.to_string(),
            input,
            passed,
            detail,
        });
    }
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
    if let Some(until) = history.paused_until_ms {
        evaluation.check(
            "endpoint_pause",
            "response validation",
            json!({"endpoint": endpoint_of(&proposal.url), "pausedUntilMs": until,
                   "reason": history.pause_reason}),
            (now_ms < until).then(|| {
                (
                    "endpoint_paused",
                    format!(
                        "payments to this endpoint are paused after failed response validations ({}); \
                         an operator can lift the pause",
                        history.pause_reason.as_deref().unwrap_or("no reason recorded")
                    ),
                )
            }),
        );
    }
    for policy in policies {
        let source = policy.source.as_str();
        if let Some(max) = policy.max_per_call {
            evaluation.check(
                "max_per_call",
                source,
                json!({"amount": amount.to_string(), "max": max.to_string()}),
                (amount > max).then(|| {
                    (
                        "max_per_call_exceeded",
                        format!("the price {amount} is above the per-call maximum {max}"),
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
                        "network_not_allowed",
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
                        "asset_not_allowed",
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
                denied.map(|m| ("payee_denied", format!("payee is on the denylist ({m:?})"))),
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
                        "payee_not_allowed",
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
                            "payee_limit_exceeded",
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
                    "phase_no_spend",
                    format!("no payments during the {phase_name} phase"),
                ))
            } else {
                phase.max_per_call.filter(|max| amount > *max).map(|max| {
                    (
                        "phase_max_per_call_exceeded",
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
                        "endpoint_call_limit",
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
                        "loop_detected",
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
                changed.map(|message| ("terms_changed", format!("{message} for this endpoint"))),
            );
        }
        if let (Some(wait_ms), Some(last)) = (
            backoff_ms(history.rejections, policy.backoff_after_rejections),
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
                        "endpoint_backing_off",
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
    evaluation
}

/// Whether `host` matches `pattern` (exported for callers that filter by domain).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    domain_matches(pattern, host)
}
