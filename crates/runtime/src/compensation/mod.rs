//! Compensation for failed steps.
//!
//! - **Evidence**: every paid request leaves a record when it is paid (`record_evidence`, one
//!   call from [`Runtime::fetch_labelled`]): the request (method, URL, headers without
//!   credentials, body capped at [`EVIDENCE_BODY_BYTES_MAX`] with the SHA-256 of the whole), the
//!   response (status, headers, body the same way) or the error instead of one, the seller's
//!   receipt and the signed authorization (from, to, value, validAfter, validBefore, nonce), with
//!   the agent's step label.
//! - **Marking a failure** ([`Runtime::mark_failed`]): the agent (its own session) or an operator
//!   marks one step, or the whole session (which is then closed), failed. Each transfer concerned
//!   gets one compensation record:
//!   - pending (signed, not settled): the wallet signs `cancelAuthorization` for the nonce and
//!     sends it itself (it needs a little native balance for gas); the transaction is recorded
//!     before it is broadcast. Once mined, the transfer is resolved against the chain: voided
//!     `cancelled` when the recorded cancel's receipt shows the token's `AuthorizationCanceled`
//!     for this nonce (outcome `cancelled`: nothing moved), posted when the seller's settlement
//!     was mined first (outcome `refund_claim`). Without gas, or with the chain down, the outcome
//!     is `cancel_failed` with what to do; the reservation stays until the chain decides (never
//!     voided without proof);
//!   - posted: `refund_claim`, with the evidence and the settlement transaction;
//!   - voided: `nothing_spent`.
//!
//!   Final outcomes write the transfer's one `compensate` ledger entry. Marking again returns the
//!   same records (and retries the ones that are not final).

use std::collections::HashMap;
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use alloy_signer::SignerSync;
use alloy_sol_types::SolEvent;
use base64::Engine;
use bursar_buyer::{BuyerError, PaidResponse, RequestSpec};
use bursar_chain::{Account, CallOutcome, CallRequest, ChainError, TxRequest};
use bursar_contracts::BursarUSD;
use bursar_store::runtime::{SessionRecord, TransferRecord, TransferState};
use bursar_store::{
    CompensationOutcome, CompensationRecord, CompensationStore, EvidenceRecord, NewCompensation,
    NewEvidence,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::RuntimeError;
use crate::service::Runtime;

mod cancel;

use cancel::Cancel;
pub(crate) use cancel::cancel_proof;

/// Bytes of a request or response body kept as evidence (the SHA-256 covers the whole body).
pub const EVIDENCE_BODY_BYTES_MAX: usize = 64 * 1024;
/// Headers kept per request or response, and bytes kept per header value.
pub const EVIDENCE_HEADERS_MAX: usize = 100;
pub const EVIDENCE_HEADER_VALUE_BYTES_MAX: usize = 1024;
/// Longest step label.
pub const STEP_BYTES_MAX: usize = 200;
/// Longest failure reason.
pub const FAILURE_REASON_BYTES_MAX: usize = 1000;
/// How long a cancel transaction is awaited before the failure call answers `cancelling`.
pub const CANCEL_RECEIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a cancel was not sent: another one is recorded for the same compensation.
const ANOTHER_CANCEL: &str = "another cancel transaction is recorded for this compensation";

/// Headers that carry credentials: never kept as evidence.
const CREDENTIAL_HEADERS: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "payment-signature",
    "x-payment",
    "x-bursar-session",
];

/// A step or session marked failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `None`: the whole session failed (it is closed).
    pub step: Option<String>,
    pub reason: String,
    /// `agent` or `operator`.
    pub requested_by: String,
}

/// One transfer's compensation, with what it is about.
#[derive(Debug, Clone)]
pub struct Compensation {
    pub record: CompensationRecord,
    pub transfer: Option<TransferRecord>,
    pub evidence: Option<EvidenceRecord>,
}

/// Checks a step label an agent gave.
pub fn check_step(step: &str) -> Result<(), RuntimeError> {
    if step.is_empty() || step.len() > STEP_BYTES_MAX || step.chars().any(char::is_control) {
        return Err(RuntimeError::Invalid(format!(
            "step must be 1 to {STEP_BYTES_MAX} bytes of printable text"
        )));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn body_json(body: &[u8]) -> Value {
    let kept = &body[..body.len().min(EVIDENCE_BODY_BYTES_MAX)];
    json!({
        "bodyBase64": base64::engine::general_purpose::STANDARD.encode(kept),
        "bodyBytes": body.len(),
        "bodySha256": sha256_hex(body),
        "bodyTruncated": kept.len() < body.len(),
    })
}

fn headers_json(headers: &http::HeaderMap) -> Value {
    let kept: Vec<Value> = headers
        .iter()
        .filter(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()))
        .take(EVIDENCE_HEADERS_MAX)
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes());
            let mut end = text.len().min(EVIDENCE_HEADER_VALUE_BYTES_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            json!([name.as_str(), &text[..end]])
        })
        .collect();
    Value::Array(kept)
}

fn request_json(request: &RequestSpec) -> Value {
    let mut document = json!({
        "method": request.method.as_str(),
        "url": request.url.as_str(),
        "headers": headers_json(&request.headers),
    });
    merge(&mut document, body_json(&request.body));
    document
}

fn response_json(response: &PaidResponse) -> Value {
    let mut document = json!({
        "status": response.status.as_u16(),
        "headers": headers_json(&response.headers),
    });
    merge(&mut document, body_json(&response.body));
    document
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// The authorization as the transfer records it (validAfter is not kept there).
fn transfer_authorization(transfer: &TransferRecord) -> Value {
    json!({
        "from": transfer.payer,
        "to": transfer.payee,
        "value": transfer.amount.to_string(),
        "validAfter": Value::Null,
        "validBefore": transfer.valid_before_s.to_string(),
        "nonce": transfer.nonce,
    })
}

/// Records the evidence of a paid request (its reserved transfer and outcome). Failures are
/// logged, never returned: the payment already happened, and the agent gets its response.
pub(crate) async fn record_evidence(
    runtime: &Runtime,
    session: &SessionRecord,
    request: &RequestSpec,
    step: Option<&str>,
    transfer: &TransferRecord,
    outcome: Result<&PaidResponse, &BuyerError>,
) {
    let (response, error, receipt, authorization) = match outcome {
        Ok(response) => {
            let (receipt, authorization) = match &response.payment {
                Some(payment) => (
                    payment
                        .settlement
                        .as_ref()
                        .and_then(|settlement| serde_json::to_value(settlement).ok()),
                    json!({
                        "from": format!("{:#x}", payment.authorization.from),
                        "to": format!("{:#x}", payment.authorization.to),
                        "value": payment.authorization.value.to_string(),
                        "validAfter": payment.authorization.valid_after.to_string(),
                        "validBefore": payment.authorization.valid_before.to_string(),
                        "nonce": format!("{:#x}", payment.authorization.nonce),
                    }),
                ),
                None => (None, transfer_authorization(transfer)),
            };
            (Some(response_json(response)), None, receipt, authorization)
        }
        Err(error) => {
            let receipt = match error {
                BuyerError::PaymentRejected {
                    settlement: Some(settlement),
                    ..
                } => serde_json::to_value(settlement.as_ref()).ok(),
                _ => None,
            };
            (
                None,
                Some(error.to_string()),
                receipt,
                transfer_authorization(transfer),
            )
        }
    };
    let evidence = NewEvidence {
        transfer_id: transfer.id.clone(),
        session_id: session.id.clone(),
        step: step.map(str::to_string),
        request: request_json(request),
        response,
        error,
        receipt,
        authorization,
    };
    if let Err(error) = runtime
        .store()
        .compensation_store()
        .record_evidence(evidence)
        .await
    {
        tracing::error!(transfer = %transfer.id, %error, "could not record the payment's evidence");
    }
}

impl Runtime {
    /// Marks a step (or, without one, the whole session) failed and compensates every transfer
    /// concerned; see the module docs. Idempotent: marking again returns the same records.
    pub async fn mark_failed(
        &self,
        session_id: &str,
        failure: Failure,
    ) -> Result<Vec<Compensation>, RuntimeError> {
        let reason = failure.reason.trim();
        if reason.is_empty() || reason.len() > FAILURE_REASON_BYTES_MAX {
            return Err(RuntimeError::Invalid(format!(
                "reason must be 1 to {FAILURE_REASON_BYTES_MAX} bytes"
            )));
        }
        if let Some(step) = &failure.step {
            check_step(step)?;
        }
        let session = self.session(session_id).await?;
        let store = self.store();
        let compensations = store.compensation_store();
        if failure.step.is_none() && session.closed_at_ms.is_none() {
            store.close_session(&session.id).await?;
            tracing::info!(session = %session.id, "session marked failed and closed");
        }
        let steps: HashMap<String, Option<String>> = compensations
            .steps(&session.id)
            .await?
            .into_iter()
            .collect();
        let transfers: Vec<TransferRecord> = store
            .transfers(Some(&session.id))
            .await?
            .into_iter()
            .filter(|transfer| match &failure.step {
                None => true,
                Some(step) => steps
                    .get(&transfer.id)
                    .is_some_and(|s| s.as_ref() == Some(step)),
            })
            .collect();
        if let Some(step) = &failure.step
            && transfers.is_empty()
        {
            return Err(RuntimeError::NotFound(format!(
                "no payment of session {} is labelled step {step:?}",
                session.id
            )));
        }
        let mut account: Option<Arc<Account>> = None;
        let mut out = Vec::with_capacity(transfers.len());
        for transfer in transfers {
            // A settled payment for a failed step: the catalogs hear of it (a refund is claimed).
            if transfer.state == bursar_store::runtime::TransferState::Posted {
                self.report(
                    &transfer,
                    bursar_protocol::discovery::ReportKind::Compensated,
                    &[],
                );
            }
            let record = self
                .compensate(&session, transfer, &failure, reason, &mut account)
                .await?;
            out.push(self.compensation_view(record).await?);
        }
        Ok(out)
    }

    /// Finishes, at most `limit` at a time, the compensation records whose transfer the chain
    /// has decided since they were written (the resolver posted or voided it): a `cancelling` or
    /// `cancel_failed` record becomes `cancelled`, `refund_claim` or `nothing_spent`, with its
    /// ledger entry and trace row, without anyone marking the failure again. Records whose
    /// transfer is still pending are left as they are (no cancel is sent from here; marking the
    /// failure again retries one). Returns how many were finished.
    pub async fn finish_compensations(&self, limit: usize) -> Result<usize, RuntimeError> {
        let records = self
            .store()
            .compensation_store()
            .unfinished_compensations(limit)
            .await?;
        let mut finished = 0;
        let mut account = None;
        for record in records {
            let Some(transfer) = self.store().transfer(&record.transfer_id).await? else {
                continue;
            };
            if transfer.state == TransferState::Pending {
                continue;
            }
            let session = self.session(&record.session_id).await?;
            let failure = Failure {
                step: record.step.clone(),
                reason: record.reason.clone(),
                requested_by: record.requested_by.clone(),
            };
            let done = self
                .compensate(&session, transfer, &failure, &record.reason, &mut account)
                .await?;
            if done.outcome.is_final() {
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// A record with its transfer and evidence.
    pub async fn compensation_view(
        &self,
        record: CompensationRecord,
    ) -> Result<Compensation, RuntimeError> {
        let transfer = self.store().transfer(&record.transfer_id).await?;
        let evidence = self
            .store()
            .compensation_store()
            .evidence(&record.transfer_id)
            .await?;
        Ok(Compensation {
            record,
            transfer,
            evidence,
        })
    }

    /// Compensations of a session, or all.
    pub async fn compensations(
        &self,
        session_id: Option<&str>,
    ) -> Result<Vec<Compensation>, RuntimeError> {
        let records = self
            .store()
            .compensation_store()
            .compensations(session_id)
            .await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(self.compensation_view(record).await?);
        }
        Ok(out)
    }

    async fn compensate(
        &self,
        session: &SessionRecord,
        transfer: TransferRecord,
        failure: &Failure,
        reason: &str,
        account: &mut Option<Arc<Account>>,
    ) -> Result<CompensationRecord, RuntimeError> {
        let compensations = self.store().compensation_store();
        if let Some(existing) = compensations.compensation_for(&transfer.id).await?
            && existing.outcome.is_final()
        {
            return Ok(existing);
        }
        let mut transfer = transfer;
        if transfer.state == TransferState::Pending {
            // The chain may have decided already (settled, expired, an earlier cancel mined).
            if let Err(error) = self.resolve_transfer(&transfer).await {
                tracing::warn!(transfer = %transfer.id, %error, "could not consult the chain before compensating");
            }
            transfer = self.fresh(&transfer.id).await?;
        }
        let record = compensations
            .open_compensation(
                NewCompensation {
                    transfer_id: transfer.id.clone(),
                    session_id: session.id.clone(),
                    step: failure.step.clone(),
                    reason: reason.to_string(),
                    requested_by: failure.requested_by.clone(),
                    amount: transfer.amount,
                },
                CompensationOutcome::Cancelling,
            )
            .await?;
        if record.outcome.is_final() {
            return Ok(record);
        }
        if transfer.state == TransferState::Pending {
            match self
                .cancel(&record, &transfer, compensations.clone(), account)
                .await
            {
                Cancel::Done => {
                    if let Err(error) = self.resolve_transfer(&transfer).await {
                        tracing::warn!(transfer = %transfer.id, %error, "could not resolve after the cancel");
                    }
                    transfer = self.fresh(&transfer.id).await?;
                }
                Cancel::NotYet(outcome, message) => {
                    tracing::warn!(transfer = %transfer.id, %message, "compensation not final yet");
                    return Ok(compensations
                        .set_pending_outcome(&record.id, outcome, &message)
                        .await?);
                }
            }
        }
        let record = compensations
            .compensation(&record.id)
            .await?
            .unwrap_or(record);
        let (outcome, settle_tx, message) = match self.conclusion(&transfer, &record) {
            Ok(conclusion) => conclusion,
            Err(message) => {
                return Ok(compensations
                    .set_pending_outcome(&record.id, CompensationOutcome::CancelFailed, &message)
                    .await?);
            }
        };
        let (finished, by_us) = compensations
            .finish_compensation(&record.id, outcome, settle_tx, &message)
            .await?;
        if by_us {
            tracing::info!(transfer = %transfer.id, %outcome, "compensation recorded");
            self.trace_compensation(session, &transfer, &finished).await;
        }
        Ok(finished)
    }

    /// How a compensation ends, from where the transfer stands on chain: the final outcome,
    /// the settlement (for a refund claim) and the message; or, while the transfer is still
    /// pending, why it is not final yet.
    fn conclusion(
        &self,
        transfer: &TransferRecord,
        record: &CompensationRecord,
    ) -> Result<(CompensationOutcome, Option<B256>, String), String> {
        Ok(match transfer.state {
            TransferState::Posted => (
                CompensationOutcome::RefundClaim,
                transfer.tx_hash,
                format!(
                    "the payment settled on chain{}: claim a refund of {} {} ({} atomic units) \
                     from {} with this evidence",
                    transfer
                        .tx_hash
                        .map(|tx| format!(" in {tx:#x}"))
                        .unwrap_or_default(),
                    transfer.amount.to_human(self.currency().unit.decimals),
                    self.currency().name,
                    transfer.amount,
                    transfer.payee
                ),
            ),
            TransferState::Voided if transfer.void_reason.as_deref() == Some("cancelled") => (
                CompensationOutcome::Cancelled,
                None,
                format!(
                    "the authorization was cancelled on chain{} before it was settled: nothing moved",
                    record
                        .cancel_tx_hash
                        .map(|tx| format!(" in {tx:#x}"))
                        .unwrap_or_default()
                ),
            ),
            TransferState::Voided => (
                CompensationOutcome::NothingSpent,
                None,
                format!(
                    "nothing was spent: the reservation was voided ({})",
                    transfer.void_reason.as_deref().unwrap_or("unknown reason")
                ),
            ),
            TransferState::Pending => {
                return Err(format!(
                    "the authorization is still unsettled and not proven cancelled; its amount \
                     stays reserved until the chain decides (validBefore {}); mark the failure \
                     again to retry",
                    transfer.valid_before_s
                ));
            }
        })
    }

    async fn fresh(&self, transfer_id: &str) -> Result<TransferRecord, RuntimeError> {
        self.store()
            .transfer(transfer_id)
            .await?
            .ok_or_else(|| RuntimeError::Internal(format!("transfer {transfer_id} vanished")))
    }

    /// Adds the compensation to the decision trace: not a payment decision, so `allowed` is
    /// false and the reason is `compensation_<outcome>` (`bursar audit show` prints it as such).
    async fn trace_compensation(
        &self,
        session: &SessionRecord,
        transfer: &TransferRecord,
        record: &CompensationRecord,
    ) {
        let decision = bursar_store::NewDecision {
            session_id: Some(session.id.clone()),
            wallet_id: Some(session.wallet_id.clone()),
            agent: Some(session.agent.clone()),
            transfer_id: Some(transfer.id.clone()),
            resource: Some(transfer.resource.clone()),
            payee: Some(format!("{:#x}", transfer.payee)),
            amount: Some(transfer.amount),
            allowed: false,
            reason: Some(format!("compensation_{}", record.outcome)),
            rules: json!([{
                "rule": "compensation",
                "source": "runtime",
                "input": {
                    "step": record.step,
                    "reason": record.reason,
                    "requestedBy": record.requested_by,
                    "transferState": transfer.state.as_str(),
                    "cancelTxHash": record.cancel_tx_hash,
                    "settleTxHash": record.settle_tx_hash,
                },
                "passed": true,
                "detail": record.message,
            }]),
        };
        if let Err(error) = self
            .store()
            .decision_store()
            .record_decision(decision)
            .await
        {
            tracing::error!(%error, "could not record the compensation in the decision trace");
        }
    }
}
