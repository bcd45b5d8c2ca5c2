//! A paid request, top to bottom ([`Runtime::fetch_labelled`]): the session and its grant,
//! the egress guard, the policies (and the paid-response cache), the first request, then on a
//! 402 the policy and reservation steps ([`super::approve`]), the signature, the paid request,
//! its evidence, posting or voiding against the chain, and the response's validation. Each
//! step returns its result to the next; a refusal at any step before the signature means
//! nothing is signed.

use std::sync::Arc;

use alloy_signer_local::PrivateKeySigner;
use bursar_buyer::{Asked, BuyerError, PaidResponse, PayingClient, RequestSpec};
use bursar_governance::{Policy, endpoint_of};
use bursar_protocol::discovery::ReportKind;
use bursar_protocol::{Amount, B256};
use bursar_store::runtime::{Denial, SessionRecord, TransferRecord, TransferState};
use serde_json::{Value, json};

use super::approve::{Approved, DecisionSubject, Payment};
use super::{
    Fetched, PAID_CACHE_BODY_BYTES_MAX, PaymentSummary, Resolution, Runtime, ValidationOutcome,
    now_ms,
};
use crate::error::RuntimeError;

impl Runtime {
    /// Sends `request` for the agent of `session`; on 402 reserves the price against the
    /// session (refusing, with nothing signed, when the session cannot pay), signs with the
    /// session's wallet, retries once with the payment, and returns the response and receipt.
    pub async fn fetch(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
    ) -> Result<Fetched, RuntimeError> {
        self.fetch_in_phase(session, request, None).await
    }

    /// [`Runtime::fetch`] with the phase the agent declares (`explore`, `execute`, ...), which
    /// phase policies apply to.
    pub async fn fetch_in_phase(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
        phase: Option<String>,
    ) -> Result<Fetched, RuntimeError> {
        self.fetch_labelled(session, request, phase, None).await
    }

    /// [`Runtime::fetch_in_phase`] with the agent's step label, kept with the payment's evidence
    /// so the step can be marked failed later ([`Runtime::mark_failed`]).
    pub async fn fetch_labelled(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
        phase: Option<String>,
        step: Option<String>,
    ) -> Result<Fetched, RuntimeError> {
        if let Some(step) = &step {
            crate::compensation::check_step(step)?;
        }
        // The grant and the session: live, or nothing is sent. The policies are read at the
        // same time (once per request: the approval, the cache and the response validation
        // use them).
        let (live, policies) = tokio::join!(
            self.check_session(session, &request),
            self.policies_for(session)
        );
        live?;
        // Before anything is sent (and so before anything can be reserved or signed): a
        // destination the runtime may not reach for agents is refused.
        self.check_egress(session, &request).await?;
        let cache = match &policies {
            Ok(policies) => self.cache_rule(session, policies, &request),
            Err(_) => None,
        };
        if let Some((key, _)) = &cache
            && let Some(hit) = self.cached(key)
        {
            tracing::info!(url = %request.url, transfer = %hit.transfer_id, "served from the paid-response cache");
            return Ok(hit.fetched());
        }
        let client = self.paying_client(self.signer(&session.wallet_id).await?);
        let quote = match client.ask(&request).await {
            Ok(Asked::Answered(response)) => return Ok(fetched(*response, None, None)),
            Ok(Asked::PaymentRequired(quote)) => quote,
            Err(error) => return Err(self.not_asked(session, &request, error).await),
        };
        let payment = Payment {
            session,
            request: &request,
            quote: &quote,
        };
        let approved = self.approve(payment, &policies, phase).await?;
        // The budget alerts the reservation raised are recorded while the payment is signed
        // and sent: they never gate it, and the reservation they read is committed.
        let alerts = async {
            if let Ok(policies) = &policies {
                crate::alerts::after_reservation(
                    self,
                    session,
                    policies,
                    &approved.caps,
                    &approved.transfer,
                )
                .await;
            }
        };
        let send = async {
            match client.sign(&quote).await {
                Ok(signed) => Ok(client.pay(&request, *quote, signed).await),
                Err(error) => Err(error),
            }
        };
        let ((), sent) = tokio::join!(alerts, send);
        let outcome = match sent {
            Ok(outcome) => outcome,
            Err(error) => return Err(self.not_signed(&approved.transfer, error).await),
        };
        match outcome {
            Ok(response) => {
                // The evidence and the rest of the bookkeeping are independent: at once.
                let evidence = self.record_outcome(
                    session,
                    &request,
                    step.as_deref(),
                    &approved,
                    Ok(&response),
                );
                let paid = self.paid(session, &request, &policies, cache, &approved, &response);
                let ((), payment) = tokio::join!(evidence, paid);
                let (payment, validation) = payment?;
                Ok(fetched(response, Some(payment), validation))
            }
            Err(error) => {
                self.record_outcome(session, &request, step.as_deref(), &approved, Err(&error))
                    .await;
                if matches!(error, BuyerError::PaymentRejected { .. }) {
                    self.report(
                        &approved.transfer,
                        ReportKind::PaymentRequiredAfterPayment,
                        policies.as_deref().unwrap_or_default(),
                    );
                }
                Err(self.not_paid(approved.transfer, error).await)
            }
        }
    }

    /// After a paid response: posts or keeps the reservation pending, validates the response
    /// (at the same time), and keeps it in the paid-response cache when a policy asks for that.
    async fn paid(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
        policies: &Result<Vec<Policy>, String>,
        cache: Option<(super::cache::CacheKey, i64)>,
        approved: &Approved,
        response: &PaidResponse,
    ) -> Result<(PaymentSummary, Option<ValidationOutcome>), RuntimeError> {
        let endpoint = endpoint_of(&request.url);
        let (payment, validation) = tokio::join!(
            self.after_payment(approved.transfer.clone(), reported_tx(response)),
            self.validate_paid_response(
                session,
                policies,
                &endpoint,
                response,
                approved.published_schema.as_ref(),
                approved.declared_type.as_deref(),
            )
        );
        let payment = payment?;
        if validation.as_ref().is_some_and(|v| v.failure.is_some()) {
            self.report(
                &approved.transfer,
                ReportKind::ValidationFailed,
                policies.as_deref().unwrap_or_default(),
            );
        }
        if let Some((key, ttl_ms)) = cache
            && response.status.is_success()
            && validation.as_ref().is_none_or(|v| v.failure.is_none())
            && response.body.len() <= PAID_CACHE_BODY_BYTES_MAX
        {
            self.remember(key, ttl_ms, response, &payment.transfer_id);
        }
        Ok((payment, validation))
    }

    /// The session step: a closed or expired session, or a revoked or expired grant, is refused
    /// (a deny entry and a decision) before anything is sent.
    async fn check_session(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
    ) -> Result<(), RuntimeError> {
        let Some((code, message)) = self.session_refusal(session).await? else {
            return Ok(());
        };
        let resource = request.url.to_string();
        self.inner
            .store
            .deny(Denial {
                session_id: Some(session.id.clone()),
                resource: Some(resource.clone()),
                reason: code.clone(),
                message: message.clone(),
                ..Denial::default()
            })
            .await?;
        let rule = json!({"rule": "session_live", "source": "runtime",
                          "input": {"sessionId": session.id, "grantId": session.grant_id},
                          "passed": false, "code": code, "detail": message});
        let subject = DecisionSubject {
            resource,
            payee: None,
            amount: None,
        };
        self.record_decision(session, subject, None, Some(&code), vec![rule])
            .await;
        Err(RuntimeError::Denied { code, message })
    }

    /// The egress step: a destination the runtime may not reach for agents is refused.
    async fn check_egress(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
    ) -> Result<(), RuntimeError> {
        let Err(error) = self.inner.egress.check(&request.url).await else {
            return Ok(());
        };
        if let RuntimeError::EgressRefused { host, address, .. } = &error {
            tracing::warn!(session = %session.id, %host, %address, "egress refused");
        }
        Err(error)
    }

    /// The paying client for one request, with the session wallet's signer. It only asks,
    /// signs and sends: the budget is enforced by the reservation, atomically, so the client's
    /// own per-payment maximum is not what decides.
    fn paying_client(&self, signer: Arc<PrivateKeySigner>) -> PayingClient {
        let currency = self.currency();
        PayingClient::new(self.inner.http.clone(), signer)
            .max_amount(Amount::from_atomic(alloy_primitives::U256::MAX))
            .allow_network(currency.network.clone())
            .allow_asset(currency.network.clone(), currency.asset)
            .asset_unit(
                currency.network.clone(),
                currency.asset,
                currency.unit.clone(),
            )
    }

    /// The first request failed, or its 402 offered nothing payable: nothing was reserved.
    async fn not_asked(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
        error: BuyerError,
    ) -> RuntimeError {
        match error {
            BuyerError::NoPayableRequirement { offered, reasons } => {
                self.deny_unpayable(session, request, &offered, reasons)
                    .await
            }
            BuyerError::InvalidRequest(_) | BuyerError::RequestTooLarge(_) => {
                RuntimeError::Invalid(error.to_string())
            }
            other => RuntimeError::Upstream {
                message: other.to_string(),
                transfer_id: None,
            },
        }
    }

    /// Nothing the seller offered can be paid: a deny entry and a decision.
    async fn deny_unpayable(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
        offered: &[bursar_protocol::PaymentRequirements],
        reasons: Vec<String>,
    ) -> RuntimeError {
        let offer = offered.first();
        let code = "no_payable_offer";
        let message = reasons.join("; ");
        let payee = offer.and_then(|offer| offer.pay_to.evm());
        let denied = self
            .inner
            .store
            .deny(Denial {
                session_id: Some(session.id.clone()),
                amount: offer.map(|offer| offer.amount),
                payee,
                resource: Some(request.url.to_string()),
                reason: code.into(),
                message: message.clone(),
            })
            .await;
        if let Err(error) = denied {
            return error.into();
        }
        let currency = self.currency();
        let offers: Vec<Value> = offered
            .iter()
            .map(|offer| {
                json!({"scheme": offer.scheme, "network": offer.network.caip2(),
                       "asset": offer.asset, "payTo": offer.pay_to,
                       "amount": offer.amount.to_string()})
            })
            .collect();
        let rule = json!({"rule": "payable_offer", "source": "runtime",
                          "input": {"offered": offers,
                                    "network": currency.network.caip2(),
                                    "asset": currency.asset.to_string()},
                          "passed": false, "code": code, "detail": message});
        // The trace names the payee as offered when it is not an address.
        let subject = DecisionSubject {
            resource: request.url.to_string(),
            payee: payee
                .map(|payee| format!("{payee:#x}"))
                .or_else(|| offer.map(|offer| offer.pay_to.to_string())),
            amount: offer.map(|offer| offer.amount),
        };
        self.record_decision(session, subject, None, Some(code), vec![rule])
            .await;
        RuntimeError::NotPayable { reasons }
    }

    /// The signature was never made (or never encoded): nothing left Bursar, so nothing can be
    /// settled and the reservation is voided.
    async fn not_signed(&self, transfer: &TransferRecord, error: BuyerError) -> RuntimeError {
        if let Err(error) = self.inner.store.void(&transfer.id, "not_signed").await {
            return error.into();
        }
        match error {
            BuyerError::Signer(message) => {
                RuntimeError::Internal(format!("signing failed: {message}"))
            }
            other => RuntimeError::Internal(format!("signing failed: {other}")),
        }
    }

    /// The paid request's evidence (for compensation later) and its outcome for the backoff
    /// rule, whatever the outcome.
    async fn record_outcome(
        &self,
        session: &SessionRecord,
        request: &RequestSpec,
        step: Option<&str>,
        approved: &Approved,
        outcome: Result<&PaidResponse, &BuyerError>,
    ) {
        crate::compensation::record_evidence(
            self,
            session,
            request,
            step,
            &approved.transfer,
            outcome,
        )
        .await;
        let endpoint = endpoint_of(&request.url);
        self.note_outcome(&session.id, &endpoint, approved.had_rejections, outcome)
            .await;
    }

    /// The paid request failed after the signature left: the amount stays reserved until the
    /// chain shows the authorization settled or unusable.
    async fn not_paid(&self, transfer: TransferRecord, error: BuyerError) -> RuntimeError {
        match error {
            BuyerError::PaymentRejected { reason, settlement } => {
                // A hash the seller reported, if it reads as one; the chain decides later.
                if let Some(settlement) = &settlement
                    && let Some(hash) = settlement.transaction.evm()
                    && let Err(error) = self.inner.store.note_tx_hash(&transfer.id, hash).await
                {
                    return error.into();
                }
                RuntimeError::PaymentRejected {
                    reason,
                    transfer_id: Some(transfer.id),
                }
            }
            other => {
                tracing::warn!(
                    transfer = %transfer.id,
                    error = %other,
                    "request failed after the payment was signed; the amount stays reserved until the chain settles or expires it"
                );
                RuntimeError::Upstream {
                    message: other.to_string(),
                    transfer_id: Some(transfer.id),
                }
            }
        }
    }

    /// Why the session cannot pay at all right now, if it cannot.
    async fn session_refusal(
        &self,
        session: &SessionRecord,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let now = now_ms();
        if session.closed_at_ms.is_some() {
            return Ok(Some((
                "session_closed".into(),
                format!("session {} is closed", session.id),
            )));
        }
        // The grant first: a session's expiry is capped at its grant's, so the grant is the
        // cause when both have passed.
        let grant = self
            .inner
            .store
            .grant(&session.grant_id)
            .await?
            .ok_or_else(|| {
                RuntimeError::Internal(format!("grant {} vanished", session.grant_id))
            })?;
        if grant.revoked_at_ms.is_some() {
            return Ok(Some((
                "grant_revoked".into(),
                format!("grant {} was revoked", grant.id),
            )));
        }
        if now >= grant.expires_at_ms {
            return Ok(Some((
                "grant_expired".into(),
                format!("grant {} has expired", grant.id),
            )));
        }
        if now >= session.expires_at_ms {
            return Ok(Some((
                "session_expired".into(),
                format!("session {} has expired", session.id),
            )));
        }
        Ok(None)
    }

    /// Records what the seller reported and tries to post at once.
    async fn after_payment(
        &self,
        transfer: TransferRecord,
        reported_tx: Option<B256>,
    ) -> Result<PaymentSummary, RuntimeError> {
        let mut transfer = transfer;
        if let Some(hash) = reported_tx {
            self.inner.store.note_tx_hash(&transfer.id, hash).await?;
            transfer.tx_hash = Some(hash);
        }
        let resolution = match self.resolve_transfer(&transfer).await {
            Ok(resolution) => resolution,
            Err(error) => {
                tracing::warn!(transfer = %transfer.id, %error, "could not check the settlement yet; the resolver will");
                Resolution::StillPending
            }
        };
        let (state, tx_hash) = match resolution {
            Resolution::Posted { tx_hash } => (TransferState::Posted, tx_hash),
            Resolution::Voided { .. } => (TransferState::Voided, None),
            // Still pending as this call reserved it: nothing to read again.
            Resolution::StillPending => (TransferState::Pending, transfer.tx_hash),
            Resolution::AlreadyResolved => {
                let current = self.inner.store.transfer(&transfer.id).await?;
                match current {
                    Some(current) => (current.state, current.tx_hash),
                    None => (TransferState::Pending, reported_tx),
                }
            }
        };
        Ok(PaymentSummary {
            transfer_id: transfer.id,
            state,
            amount: transfer.amount,
            network: transfer.network,
            asset: transfer.asset,
            pay_to: transfer.payee,
            tx_hash,
        })
    }
}

/// The settlement transaction the seller reported as successful, if any.
fn reported_tx(response: &PaidResponse) -> Option<B256> {
    response
        .payment
        .as_ref()?
        .settlement
        .as_ref()
        .filter(|settlement| settlement.success)
        .and_then(|settlement| settlement.transaction.evm())
}

/// A fetched response as the agent gets it.
fn fetched(
    response: PaidResponse,
    payment: Option<PaymentSummary>,
    validation: Option<ValidationOutcome>,
) -> Fetched {
    Fetched {
        cached_from: None,
        validation,
        status: response.status.as_u16(),
        headers: response
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect(),
        body: response.body,
        payment,
    }
}
