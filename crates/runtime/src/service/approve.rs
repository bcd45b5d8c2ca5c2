//! The steps between a seller's 402 and the signature: the policies, then the reservation.
//! Either one refusing means nothing is signed; every outcome goes into the decision trace.

use alloy_primitives::Address;
use bursar_buyer::{Quote, RequestSpec};
use bursar_governance::{Evaluation, Policy, Proposal, WindowScope, endpoint_of};
use bursar_protocol::Amount;
use bursar_store::runtime::{Denial, NewTransfer, Reservation, SessionRecord, SpendCap};
use bursar_store::{NewDecision, StoreError};
use serde_json::{Value, json};

use super::{Runtime, now_ms};
use crate::error::RuntimeError;

/// One payment the runtime is deciding on: for which session and request, and what the 402 asked.
#[derive(Clone, Copy)]
pub(super) struct Payment<'a> {
    pub session: &'a SessionRecord,
    pub request: &'a RequestSpec,
    pub quote: &'a Quote,
}

/// A payment the policies allowed and the store reserved: what the later steps need.
#[derive(Debug)]
pub(super) struct Approved {
    pub transfer: bursar_store::runtime::TransferRecord,
    /// The window caps the reservation was checked against (for the budget alerts).
    pub caps: Vec<SpendCap>,
    /// Whether the endpoint had answered paid requests of this session with 402 again.
    pub had_rejections: bool,
    /// The JSON Schema the seller published for the response (kept only when a policy
    /// validates against it).
    pub published_schema: Option<Value>,
    /// The content type the seller declared in its 402 (kept only when a policy checks it).
    pub declared_type: Option<String>,
}

/// What a decision in the trace is about.
pub(super) struct DecisionSubject {
    pub resource: String,
    pub payee: Option<String>,
    pub amount: Option<Amount>,
}

impl DecisionSubject {
    fn of(payment: Payment<'_>) -> DecisionSubject {
        DecisionSubject {
            resource: payment.request.url.to_string(),
            payee: Some(format!("{:#x}", payment.quote.authorization.to)),
            amount: Some(payment.quote.authorization.value),
        }
    }
}

/// The offer's validity window end and asset, or why the offer cannot be paid.
fn offer_terms(quote: &Quote) -> Result<(u64, Address), &'static str> {
    let valid_before_s = u64::try_from(quote.authorization.valid_before)
        .map_err(|_| "the offer's validity window is out of range")?;
    let asset = quote
        .requirement
        .asset
        .evm()
        .ok_or("the offer's asset is not an address")?;
    Ok((valid_before_s, asset))
}

/// The rolling-window caps of an evaluation, as the store enforces them with the reservation.
fn spend_caps(evaluation: &Evaluation) -> Vec<SpendCap> {
    evaluation
        .windows
        .iter()
        .map(|window| SpendCap {
            agent_only: window.scope == WindowScope::Agent,
            period_ms: i64::try_from(window.period_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max: window.max,
            label: window.source.clone(),
        })
        .collect()
}

/// The transfer to reserve for a payment.
fn new_transfer(
    payment: Payment<'_>,
    valid_before_s: u64,
    asset: Address,
    caps: Vec<SpendCap>,
) -> NewTransfer {
    let Payment {
        session,
        request,
        quote,
    } = payment;
    let authorization = &quote.authorization;
    NewTransfer {
        session_id: session.id.clone(),
        network: quote.requirement.network.clone(),
        asset,
        payer: authorization.from,
        payee: authorization.to,
        amount: authorization.value,
        nonce: authorization.nonce,
        valid_before_s,
        resource: request.url.to_string(),
        endpoint: endpoint_of(&request.url),
        caps,
    }
}

/// The budget rule's input in the trace: the amount and every window cap in force.
fn budget_input(amount: Amount, caps: &[SpendCap]) -> Value {
    let windows: Vec<Value> = caps
        .iter()
        .map(|cap| {
            json!({"max": cap.max.to_string(), "periodMs": cap.period_ms,
                   "scope": if cap.agent_only { "agent" } else { "wallet" }, "source": cap.label})
        })
        .collect();
    json!({"amount": amount.to_string(), "windows": windows})
}

/// Since when payment times matter: the longest loop window of the policies in force.
fn history_since_ms(policies: &[Policy], now: i64) -> i64 {
    let loop_window_s = policies
        .iter()
        .filter_map(|policy| policy.loop_limit.map(|(_, within_seconds)| within_seconds))
        .max();
    match loop_window_s {
        Some(seconds) => {
            now.saturating_sub(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
        }
        None => i64::MAX,
    }
}

impl Runtime {
    /// The policy and reservation steps: checks the offer, evaluates every policy in force
    /// against the session's history with the endpoint, then reserves the price (with the
    /// window caps) in one store transaction. Returns the reservation, or the refusal (recorded
    /// in the ledger and the trace) as [`RuntimeError::Denied`].
    pub(super) async fn approve(
        &self,
        payment: Payment<'_>,
        policies: &Result<Vec<Policy>, String>,
        phase: Option<String>,
    ) -> Result<Approved, RuntimeError> {
        let (valid_before_s, asset) = match offer_terms(payment.quote) {
            Ok(terms) => terms,
            Err(message) => {
                return Err(self
                    .deny(payment, "invalid_offer", message, Vec::new())
                    .await);
            }
        };
        let policies = match policies {
            Ok(policies) => policies,
            Err(message) => {
                let rule = json!({"rule": "load_policies", "source": "runtime", "input": {},
                                  "passed": false, "code": "policy_unavailable", "detail": message});
                return Err(self
                    .deny(payment, "policy_unavailable", message, vec![rule])
                    .await);
            }
        };
        let since_ms = history_since_ms(policies, now_ms());
        let history = match self
            .endpoint_history(payment.session, policies, &payment.request.url, since_ms)
            .await
        {
            Ok(history) => history,
            Err(error) => {
                let message = format!("the payment history could not be read: {error}");
                return Err(self
                    .deny(payment, "ledger_unavailable", &message, Vec::new())
                    .await);
            }
        };
        let listings = super::reputation::lookups(policies, payment.request, payment.quote).await;
        let proposal = Proposal {
            listings,
            url: payment.request.url.clone(),
            network: payment.quote.requirement.network.caip2(),
            asset,
            pay_to: payment.quote.authorization.to,
            amount: payment.quote.authorization.value,
            phase,
            session_budget: Some(payment.session.max_spend),
        };
        let evaluation = bursar_governance::evaluate(policies, &proposal, &history, now_ms());
        let rules: Vec<Value> = evaluation.rules.iter().map(|r| r.to_json()).collect();
        if let Some((code, message)) = &evaluation.denial {
            return Err(self.deny(payment, code, message, rules).await);
        }
        let caps = spend_caps(&evaluation);
        let transfer = self
            .reserve(
                payment,
                new_transfer(payment, valid_before_s, asset, caps.clone()),
                rules,
            )
            .await?;
        Ok(Approved {
            transfer,
            caps,
            had_rejections: history.rejections > 0,
            published_schema: wanted(policies, |v| v.seller_schema)
                .then(|| {
                    bursar_protocol::bazaar::published_output_schema(&payment.quote.required)
                        .cloned()
                })
                .flatten(),
            declared_type: wanted(policies, |v| v.declared_type)
                .then(|| payment.quote.required.resource.mime_type.clone())
                .flatten(),
        })
    }

    /// The reservation step: the store checks the session's budget and the window caps and
    /// reserves atomically (or writes the deny entry); the decision goes into the trace. (The
    /// budget alerts a reservation raises are recorded by the caller, while it signs and pays.)
    async fn reserve(
        &self,
        payment: Payment<'_>,
        transfer: NewTransfer,
        mut rules: Vec<Value>,
    ) -> Result<bursar_store::runtime::TransferRecord, RuntimeError> {
        let input = budget_input(transfer.amount, &transfer.caps);
        let budget_rule = |passed: bool, code: Option<&str>, detail: &str| {
            let mut rule = json!({"rule": "session_budget_and_windows", "source": "runtime",
                                  "input": input, "passed": passed, "detail": detail});
            if let Some(code) = code {
                rule["code"] = json!(code);
            }
            rule
        };
        // The decision if it is reserved, appended in the reservation's own transaction (one
        // commit for both); a refusal's decision is recorded below.
        let mut allowed = rules.clone();
        allowed.push(budget_rule(true, None, "reserved"));
        let decision = self.decision(
            payment.session,
            DecisionSubject::of(payment),
            None,
            None,
            allowed,
        );
        match self
            .inner
            .store
            .reserve_and_decide(transfer, decision)
            .await
        {
            Ok(Reservation::Reserved(record)) => Ok(*record),
            Ok(Reservation::Denied { reason, message }) => {
                // The store wrote the deny entry; record the decision.
                rules.push(budget_rule(false, Some(reason.code()), &message));
                let subject = DecisionSubject::of(payment);
                self.record_decision(payment.session, subject, None, Some(reason.code()), rules)
                    .await;
                Err(RuntimeError::Denied {
                    code: reason.code().to_string(),
                    message,
                })
            }
            Err(error) => Err(self
                .reservation_failed(payment, error, rules, budget_rule)
                .await),
        }
    }

    /// The store could not reserve: nothing is paid; the denial is recorded where the database
    /// still allows it.
    async fn reservation_failed(
        &self,
        payment: Payment<'_>,
        error: StoreError,
        mut rules: Vec<Value>,
        budget_rule: impl Fn(bool, Option<&str>, &str) -> Value,
    ) -> RuntimeError {
        tracing::error!(%error, "reservation failed; refusing to pay");
        let message = format!("the budget could not be checked, so nothing was paid: {error}");
        rules.push(budget_rule(false, Some("ledger_unavailable"), &message));
        self.deny(payment, "ledger_unavailable", &message, rules)
            .await
    }

    /// Refuses a payment before the store was asked: writes the deny entry and the decision.
    async fn deny(
        &self,
        payment: Payment<'_>,
        code: &str,
        message: &str,
        rules: Vec<Value>,
    ) -> RuntimeError {
        let denial = Denial {
            session_id: Some(payment.session.id.clone()),
            amount: Some(payment.quote.authorization.value),
            payee: Some(payment.quote.authorization.to),
            resource: Some(payment.request.url.to_string()),
            reason: code.to_string(),
            message: message.to_string(),
        };
        if let Err(error) = self.inner.store.deny(denial).await {
            tracing::error!(%error, "could not record a denial");
        }
        let subject = DecisionSubject::of(payment);
        self.record_decision(payment.session, subject, None, Some(code), rules)
            .await;
        RuntimeError::Denied {
            code: code.to_string(),
            message: message.to_string(),
        }
    }

    /// Appends a decision to the hash-chained trace: every payment allowed and every refusal
    /// (policy, budget, session state, nothing payable). A trace write that fails is logged
    /// loudly; the ledger entry (reserve or deny) was already written in the same step.
    pub(super) async fn record_decision(
        &self,
        session: &SessionRecord,
        subject: DecisionSubject,
        transfer_id: Option<&str>,
        denial: Option<&str>,
        rules: Vec<Value>,
    ) {
        let decision = self.decision(session, subject, transfer_id, denial, rules);
        if let Err(error) = self
            .inner
            .store
            .decision_store()
            .record_decision(decision)
            .await
        {
            tracing::error!(%error, session = %session.id, "could not record the decision trace");
        }
    }

    /// A decision about a payment of `session`, for the trace.
    fn decision(
        &self,
        session: &SessionRecord,
        subject: DecisionSubject,
        transfer_id: Option<&str>,
        denial: Option<&str>,
        rules: Vec<Value>,
    ) -> NewDecision {
        NewDecision {
            session_id: Some(session.id.clone()),
            wallet_id: Some(session.wallet_id.clone()),
            agent: Some(session.agent.clone()),
            transfer_id: transfer_id.map(str::to_string),
            resource: Some(subject.resource),
            payee: subject.payee,
            amount: subject.amount,
            allowed: denial.is_none(),
            reason: denial.map(str::to_string),
            rules: Value::Array(rules),
        }
    }
}

/// Whether any validation rule of the policies in force asks for `what`.
fn wanted(policies: &[Policy], what: impl Fn(&bursar_governance::Validation) -> bool) -> bool {
    policies
        .iter()
        .flat_map(|policy| policy.validation.iter().chain(&policy.validators))
        .any(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bursar_protocol::exact_evm::authorization_for;
    use bursar_protocol::{Network, PaymentRequired, PaymentRequirements, Resource, X402Version};

    fn quote(amount: u64) -> Quote {
        let requirement = PaymentRequirements {
            scheme: "exact".into(),
            network: Network::Eip155(84_532),
            amount: Amount::from(amount),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 60,
            extra: Some(json!({"name": "USDC", "version": "2"})),
        };
        let authorization =
            authorization_for(&requirement, Address::repeat_byte(7), 1_800_000_000).unwrap();
        Quote {
            required: PaymentRequired {
                version: X402Version::V2,
                error: None,
                resource: Resource::default(),
                accepts: vec![requirement.clone()],
                extensions: None,
            },
            requirement,
            authorization,
        }
    }

    fn session() -> SessionRecord {
        SessionRecord {
            id: "ses_1".into(),
            grant_id: "gra_1".into(),
            wallet_id: "wal_1".into(),
            agent: "agent".into(),
            network: Network::Eip155(84_532),
            asset: "0x036cbd53842c5426634e7929541ec2318f3dcf7e"
                .parse()
                .unwrap(),
            currency: "USDC".into(),
            max_spend: Amount::from(1_000u64),
            reserved: Amount::ZERO,
            posted: Amount::ZERO,
            client_token: None,
            created_at_ms: 0,
            expires_at_ms: i64::MAX,
            closed_at_ms: None,
        }
    }

    #[test]
    fn the_transfer_reserved_is_the_quote_signed() {
        let quote = quote(25);
        let session = session();
        let request = RequestSpec::get("https://seller.example/data?q=1").unwrap();
        let payment = Payment {
            session: &session,
            request: &request,
            quote: &quote,
        };
        let (valid_before_s, asset) = offer_terms(&quote).unwrap();
        assert_eq!(asset, quote.requirement.asset.evm().unwrap());
        assert_eq!(valid_before_s, 1_800_000_060);
        let transfer = new_transfer(payment, valid_before_s, asset, Vec::new());
        assert_eq!(transfer.session_id, "ses_1");
        assert_eq!(transfer.network, Network::Eip155(84532));
        assert_eq!(
            transfer.asset,
            "0x036cbd53842c5426634e7929541ec2318f3dcf7e"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(transfer.amount, Amount::from(25u64));
        assert_eq!(transfer.payer, Address::repeat_byte(7));
        assert_eq!(transfer.payee, quote.authorization.to);
        assert_eq!(transfer.nonce, quote.authorization.nonce);
        assert_eq!(transfer.resource, "https://seller.example/data?q=1");
        assert_eq!(transfer.endpoint, endpoint_of(&request.url));
        let subject = DecisionSubject::of(payment);
        assert_eq!(
            subject.payee.as_deref(),
            Some("0x209693bc6afc0c5328ba36faf03c514ef312287c")
        );
        assert_eq!(subject.amount, Some(Amount::from(25u64)));
    }

    #[test]
    fn an_offer_with_a_bad_asset_is_refused() {
        let mut quote = quote(1);
        quote.requirement.asset = "not an address".into();
        assert_eq!(
            offer_terms(&quote),
            Err("the offer's asset is not an address")
        );
    }

    #[test]
    fn the_budget_input_lists_every_window() {
        let caps = vec![SpendCap {
            agent_only: true,
            period_ms: 60_000,
            max: Amount::from(500u64),
            label: "grant gra_1".into(),
        }];
        assert_eq!(
            budget_input(Amount::from(25u64), &caps),
            json!({"amount": "25", "windows": [{"max": "500", "periodMs": 60_000,
                   "scope": "agent", "source": "grant gra_1"}]})
        );
    }

    #[test]
    fn history_is_read_from_the_longest_loop_window() {
        let unit = bursar_protocol::AssetUnit::usdc();
        let none = Policy::defaults("none");
        assert_eq!(
            history_since_ms(std::slice::from_ref(&none), 100_000),
            i64::MAX
        );
        let looping = Policy::parse(
            "[endpoints]\nloop_count = 5\nloop_window = \"30s\"\n",
            &unit,
            "looping",
        )
        .unwrap();
        assert_eq!(history_since_ms(&[none, looping], 100_000), 70_000);
    }
}
