//! The policies in force for a session, checking paid responses against their validation
//! rules, the history they are evaluated with, and allowlists learned from past payments.

use std::collections::HashMap;

use bursar_buyer::BuyerError;
use bursar_governance::{EndpointHistory, EndpointPause, PaidResponse, Policy, Terms, endpoint_of};
use bursar_store::runtime::{SessionRecord, TransferRecord, TransferState};
use serde_json::Value;

use super::{POLICY_CACHE_ENTRIES_MAX, Runtime, ValidationOutcome, now_ms};
use crate::error::RuntimeError;

/// A payee whose catalog listings fail more often than this (basis points) is left out of a
/// learned allowlist.
pub const LEARN_FAILURE_RATE_BPS_MAX: u64 = 1_000;

impl Runtime {
    // ----- governance -----

    /// The policies that apply to a session, all of them evaluated for every payment (any
    /// failing rule denies): the runtime's own — its policy file when one is given, else the
    /// default policy ([`bursar_governance::DEFAULT_POLICY_TOML`]), else (switched off) only
    /// the rules every policy has by default — then the wallet's, the grant's and the
    /// session's own. A policy that cannot be read is an error (the payment is denied).
    ///
    /// Each policy's source (`default policy`, `file <path>`, `wallet <id>`, `grant <id>`,
    /// `session <id>`) also names the validation pauses it causes: a pause applies to the
    /// sessions its policy covers, and to none once the policy is detached.
    pub async fn policies_for(&self, session: &SessionRecord) -> Result<Vec<Policy>, String> {
        let mut policies = Vec::new();
        match self.file_policy()? {
            Some(policy) => policies.push(policy),
            None if self.inner.config.default_policy => {
                policies.push(self.inner.default_policy.clone())
            }
            None => policies.push(Policy::defaults("runtime defaults")),
        }
        let scopes = [
            ("wallet", &session.wallet_id),
            ("grant", &session.grant_id),
            ("session", &session.id),
        ];
        // Read at once: on PostgreSQL three round trips overlap.
        let documents = futures::future::join_all(
            scopes
                .iter()
                .map(|(scope, id)| self.inner.store.policy(scope, id)),
        )
        .await;
        for ((scope, id), document) in scopes.iter().zip(documents) {
            let document = document.map_err(|e| format!("cannot read the {scope} policy: {e}"))?;
            if let Some(document) = document {
                policies.push(self.parsed_policy(format!("{scope} {id}"), document)?);
            }
        }
        Ok(policies)
    }

    /// An attached policy document, parsed: from the cache while the document is unchanged.
    fn parsed_policy(&self, source: String, document: String) -> Result<Policy, String> {
        let mut cache = self
            .inner
            .parsed_policies
            .lock()
            .expect("policy cache lock");
        if let Some((cached, policy)) = cache.get(&source)
            && *cached == document
        {
            return Ok(policy.clone());
        }
        let policy = Policy::parse(&document, &self.currency().unit, &source)
            .map_err(|e| format!("the {source} policy is invalid: {e}"))?;
        if cache.len() >= POLICY_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(source, (document, policy.clone()));
        Ok(policy)
    }

    /// The policy file, re-read when its modification time changes.
    fn file_policy(&self) -> Result<Option<Policy>, String> {
        let Some(path) = &self.inner.config.policy_file else {
            return Ok(None);
        };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
        let mut cached = self.inner.policy_file.lock().expect("policy cache lock");
        if let Some((at, policy)) = cached.as_ref()
            && *at == modified
        {
            return policy.clone().map(Some);
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))
            .and_then(|text| {
                Policy::parse(
                    &text,
                    &self.currency().unit,
                    &format!("file {}", path.display()),
                )
                .map_err(|e| format!("the policy file {} is invalid: {e}", path.display()))
            });
        match &parsed {
            Ok(_) => tracing::info!(path = %path.display(), "policy file loaded"),
            Err(error) => {
                tracing::error!(%error, "policy file rejected; payments are denied until it is fixed")
            }
        }
        *cached = Some((modified, parsed.clone()));
        parsed.map(Some)
    }

    /// one wallet, or all): the hosts paid and the payTo addresses used, most paid first, as a
    /// TOML document ready to attach, with each entry's count as a comment. With catalogs
    /// configured ([`crate::RuntimeConfig::catalogs`]), each payee's standing there is said
    /// beside it, and a payee whose listings fail in more than
    /// [`LEARN_FAILURE_RATE_BPS_MAX`] basis points of their payments is left out (commented).
    pub async fn learn_allowlist(
        &self,
        wallet: Option<&str>,
        days: u64,
    ) -> Result<String, RuntimeError> {
        let wallet_id = match wallet {
            Some(wallet) => Some(self.wallet_record(wallet).await?.id),
            None => None,
        };
        let since = now_ms()
            .saturating_sub(i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX));
        let mut hosts: HashMap<String, u64> = HashMap::new();
        let mut payees: HashMap<String, u64> = HashMap::new();
        for transfer in self.inner.store.transfers(None).await? {
            if transfer.state != TransferState::Posted
                || transfer.created_at_ms < since
                || wallet_id
                    .as_ref()
                    .is_some_and(|id| *id != transfer.wallet_id)
            {
                continue;
            }
            if let Some(host) = url::Url::parse(&transfer.resource)
                .ok()
                .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            {
                *hosts.entry(host).or_default() += 1;
            }
            *payees.entry(transfer.payee.to_checksum(None)).or_default() += 1;
        }
        let sorted = |counts: HashMap<String, u64>| {
            let mut entries: Vec<_> = counts.into_iter().collect();
            entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            entries
        };
        let list = |entries: &[(String, u64)]| {
            entries
                .iter()
                .map(|(value, count)| format!("    \"{value}\", # {count} payments\n"))
                .collect::<String>()
        };
        let (hosts, payees) = (sorted(hosts), sorted(payees));
        // What the runtime's catalogs know of each payee: said beside it, and a payee whose
        // listings fail too often is proposed commented out.
        let mut payee_lines = String::new();
        for (payee, count) in &payees {
            let standing =
                super::reputation::payee_standing(&self.inner.config.catalogs, payee).await;
            match standing {
                Some(standing) if standing.worst_failure_rate_bps > LEARN_FAILURE_RATE_BPS_MAX => {
                    payee_lines.push_str(&format!(
                        "    # \"{payee}\", # {count} payments; left out: {}\n",
                        standing.describe()
                    ));
                }
                Some(standing) => payee_lines.push_str(&format!(
                    "    \"{payee}\", # {count} payments; {}\n",
                    standing.describe()
                )),
                None => payee_lines.push_str(&format!("    \"{payee}\", # {count} payments\n")),
            }
        }
        let mut document = format!(
            "# Proposed from the payments that settled in the last {days} days{}.\n\
             # Review before attaching: only these hosts and payTo addresses could be paid.\n\
             [payees]\n",
            wallet_id
                .as_deref()
                .map(|id| format!(" from wallet {id}"))
                .unwrap_or_default()
        );
        document.push_str(&format!("allow_domains = [\n{}]\n", list(&hosts)));
        document.push_str(&format!("allow_addresses = [\n{payee_lines}]\n"));
        // The proposal must itself be a valid policy.
        self.check_policy(&document)?;
        Ok(document)
    }

    /// Checks a policy document without attaching it.
    pub fn check_policy(&self, document: &str) -> Result<Policy, RuntimeError> {
        Policy::parse(document, &self.currency().unit, "check")
            .map_err(|e| RuntimeError::Invalid(e.to_string()))
    }

    /// Checks a paid response against every validation rule of the session's policies and
    /// records the outcome per policy: each policy with rules for this endpoint counts its own
    /// failures in a row, and enough of them pause payments to the endpoint for the sessions
    /// that policy covers.
    pub(super) async fn validate_paid_response(
        &self,
        session: &SessionRecord,
        policies: &Result<Vec<Policy>, String>,
        endpoint: &str,
        response: &bursar_buyer::PaidResponse,
        published_schema: Option<&Value>,
        declared_type: Option<&str>,
    ) -> Option<ValidationOutcome> {
        let policies = match policies {
            Ok(policies) => policies,
            Err(error) => {
                tracing::warn!(%error, "cannot read the policies to validate a paid response");
                return None;
            }
        };
        let facts = PaidResponse {
            status: response.status.as_u16(),
            content_type: response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok()),
            body: &response.body,
            published_schema,
            declared_type,
        };
        let mut outcome: Option<ValidationOutcome> = None;
        let observed = bursar_store::runtime::Observed {
            wallet_id: &session.wallet_id,
            session_id: &session.id,
        };
        for policy in policies {
            let rules: Vec<_> = policy.validations_for(endpoint).collect();
            if rules.is_empty() {
                continue;
            }
            let failure = rules.iter().find_map(|rule| rule.check_response(&facts));
            let pause_after = rules
                .iter()
                .map(|rule| u64::from(rule.failures_before_pause))
                .min()
                .unwrap_or(1);
            let cooldown_ms = rules
                .iter()
                .map(|rule| rule.cooldown_seconds.saturating_mul(1000))
                .max()
                .unwrap_or(0);
            let recorded = self
                .inner
                .store
                .record_validation(
                    &policy.source,
                    endpoint,
                    observed,
                    failure.as_deref(),
                    pause_after,
                    i64::try_from(cooldown_ms).unwrap_or(i64::MAX),
                )
                .await;
            let (failures, paused_until_ms) = match recorded {
                Ok(health) => {
                    if let Some(reason) = &failure {
                        tracing::warn!(%endpoint, policy = %policy.source, %reason, failures = health.consecutive_failures, "paid response failed validation");
                    }
                    (
                        health.consecutive_failures,
                        health.paused_until_ms.filter(|until| *until > now_ms()),
                    )
                }
                Err(error) => {
                    tracing::error!(%error, policy = %policy.source, "could not record a response validation");
                    (0, None)
                }
            };
            let merged = outcome.get_or_insert(ValidationOutcome {
                failure: None,
                consecutive_failures: 0,
                paused_until_ms: None,
            });
            if merged.failure.is_none() {
                merged.failure = failure;
            }
            merged.consecutive_failures = merged.consecutive_failures.max(failures);
            merged.paused_until_ms = merged.paused_until_ms.max(paused_until_ms);
        }
        outcome
    }

    /// Counts paid requests that the endpoint answered with 402 again, in the database (so the
    /// backoff holds across processes sharing it); a paid success starts the count again.
    pub(super) async fn note_outcome(
        &self,
        session_id: &str,
        endpoint: &str,
        had_rejections: bool,
        outcome: Result<&bursar_buyer::PaidResponse, &BuyerError>,
    ) {
        let store = &self.inner.store;
        let result = match outcome {
            Err(BuyerError::PaymentRejected { .. }) => store
                .note_rejection(session_id, endpoint, now_ms())
                .await
                .map(|_| ()),
            Ok(response) if response.payment.is_some() && had_rejections => {
                store.clear_rejections(session_id, endpoint).await
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(%error, session = %session_id, %endpoint, "could not record a paid request's outcome for the backoff rule");
        }
    }

    /// What this session already paid (reserved or settled) the endpoint of `url`, the paid
    /// requests in a row it answered with 402 again, and the pauses of payments to it under
    /// `policies` (those in force for the session). Payment times are read from `since_ms` on
    /// (the longest loop window of the policies in force).
    pub(super) async fn endpoint_history(
        &self,
        session: &SessionRecord,
        policies: &[Policy],
        url: &url::Url,
        since_ms: i64,
    ) -> Result<EndpointHistory, RuntimeError> {
        let session_id = session.id.as_str();
        let endpoint = endpoint_of(url);
        let mut history = EndpointHistory::default();
        let sources: Vec<String> = policies.iter().map(|p| p.source.clone()).collect();
        let now = now_ms();
        // Three reads at once: on PostgreSQL their round trips overlap.
        let store = &self.inner.store;
        let (pauses, rejections, paid) = tokio::try_join!(
            store.endpoint_pauses(&sources, &endpoint),
            store.rejections(session_id, &endpoint),
            store.endpoint_payments(session_id, &endpoint, since_ms),
        )?;
        for health in pauses {
            if let Some(until_ms) = health.paused_until_ms.filter(|until| *until > now) {
                history.pauses.push(EndpointPause {
                    policy: health.policy,
                    until_ms,
                    reason: health.last_failure,
                });
            }
        }
        if let Some(rejections) = rejections {
            history.rejections = rejections.count;
            history.last_rejection_ms = Some(rejections.last_at_ms);
        }
        history.paid_in_session = u32::try_from(paid.count).unwrap_or(u32::MAX);
        history.paid_at_ms = paid.recent_at_ms;
        // An unreadable stored transfer fails the request: the pinned terms are never skipped.
        history.first_terms = paid.first.as_ref().map(terms_of);
        Ok(history)
    }
}

/// The terms a stored transfer paid on. (A stored transfer whose asset or payee does not read
/// back fails the read itself: the rule is never dropped.)
fn terms_of(first: &TransferRecord) -> Terms {
    Terms {
        asset: first.asset,
        pay_to: first.payee,
        network: first.network.to_string(),
        amount: first.amount,
    }
}
