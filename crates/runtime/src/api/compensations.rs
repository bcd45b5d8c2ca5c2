//! Compensation: a step or session marked failed, and what became of each of its payments.

use super::hex;
use axum::Json;
use axum::extract::State;
use bursar_protocol::Amount;
use bursar_store::compensation::EvidenceRecord;
use bursar_store::runtime::TransferRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{Caller, Operator, SessionReader};
use super::body::JsonBody;
use super::error::ApiResult;
use crate::compensation::{Compensation, Failure};
use crate::service::Runtime;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarkFailed {
    /// The step label given when paying; without it the whole session failed (and is closed).
    pub step: Option<String>,
    /// Why it failed (1 to 1000 bytes).
    pub reason: String,
}

/// One payment's compensation: its authorization cancelled on chain, or a refund claim.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompensationBody {
    pub id: String,
    pub transfer_id: String,
    pub session_id: String,
    pub step: Option<String>,
    pub reason: String,
    /// `agent` or `operator`.
    pub requested_by: String,
    pub outcome: String,
    /// Final outcomes never change.
    #[serde(rename = "final")]
    pub done: bool,
    #[schema(value_type = String)]
    pub amount_atomic: Amount,
    pub cancel_tx_hash: Option<String>,
    pub settle_tx_hash: Option<String>,
    pub message: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub transfer: Option<CompensatedTransferBody>,
    pub evidence: Option<EvidenceBody>,
}

/// The transfer a compensation is about.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompensatedTransferBody {
    pub state: String,
    pub void_reason: Option<String>,
    pub tx_hash: Option<String>,
    pub pay_to: String,
    pub payer: String,
    pub nonce: String,
    pub resource: String,
}

impl From<&TransferRecord> for CompensatedTransferBody {
    fn from(transfer: &TransferRecord) -> Self {
        CompensatedTransferBody {
            state: transfer.state.as_str().into(),
            void_reason: transfer.void_reason.clone(),
            tx_hash: transfer.tx_hash.map(hex),
            pay_to: hex(transfer.payee),
            payer: hex(transfer.payer),
            nonce: hex(transfer.nonce),
            resource: transfer.resource.clone(),
        }
    }
}

/// What the paid request was, kept when it was paid.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceBody {
    pub step: Option<String>,
    pub request: Value,
    pub response: Option<Value>,
    pub error: Option<String>,
    pub receipt: Option<Value>,
    pub authorization: Value,
    pub recorded_at_ms: i64,
}

impl From<&EvidenceRecord> for EvidenceBody {
    fn from(evidence: &EvidenceRecord) -> Self {
        EvidenceBody {
            step: evidence.step.clone(),
            request: evidence.request.clone(),
            response: evidence.response.clone(),
            error: evidence.error.clone(),
            receipt: evidence.receipt.clone(),
            authorization: evidence.authorization.clone(),
            recorded_at_ms: evidence.recorded_at_ms,
        }
    }
}

impl From<&Compensation> for CompensationBody {
    fn from(compensation: &Compensation) -> Self {
        let record = &compensation.record;
        CompensationBody {
            id: record.id.clone(),
            transfer_id: record.transfer_id.clone(),
            session_id: record.session_id.clone(),
            step: record.step.clone(),
            reason: record.reason.clone(),
            requested_by: record.requested_by.clone(),
            outcome: record.outcome.as_str().into(),
            done: record.outcome.is_final(),
            amount_atomic: record.amount,
            cancel_tx_hash: record.cancel_tx_hash.map(hex),
            settle_tx_hash: record.settle_tx_hash.map(hex),
            message: record.message.clone(),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            transfer: compensation.transfer.as_ref().map(Into::into),
            evidence: compensation.evidence.as_ref().map(Into::into),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CompensationList {
    pub compensations: Vec<CompensationBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MarkedFailedBody {
    pub session_id: String,
    pub compensations: Vec<CompensationBody>,
}

fn bodies(compensations: &[Compensation]) -> Vec<CompensationBody> {
    compensations.iter().map(CompensationBody::from).collect()
}

#[utoipa::path(post, path = "/v1/sessions/{session}/failures", tag = "compensation",
    request_body = MarkFailed, params(("session" = String, Path)),
    responses((status = 200, body = MarkedFailedBody)), security(("bearer" = [])))]
pub async fn mark_failed(
    State(runtime): State<Runtime>,
    reader: SessionReader,
    JsonBody(request): JsonBody<MarkFailed>,
) -> ApiResult<Json<MarkedFailedBody>> {
    let requested_by = match reader.caller {
        Caller::Operator => "operator",
        Caller::Agent(_) => "agent",
    };
    let failure = Failure {
        step: request.step,
        reason: request.reason,
        requested_by: requested_by.into(),
    };
    let compensations = runtime.mark_failed(&reader.session_id, failure).await?;
    Ok(Json(MarkedFailedBody {
        session_id: reader.session_id,
        compensations: bodies(&compensations),
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{session}/compensations", tag = "compensation",
    params(("session" = String, Path)),
    responses((status = 200, body = CompensationList)), security(("bearer" = [])))]
pub async fn session_compensations(
    State(runtime): State<Runtime>,
    reader: SessionReader,
) -> ApiResult<Json<CompensationList>> {
    runtime.session(&reader.session_id).await?;
    let compensations = runtime.compensations(Some(&reader.session_id)).await?;
    Ok(Json(CompensationList {
        compensations: bodies(&compensations),
    }))
}

#[utoipa::path(get, path = "/v1/compensations", tag = "compensation",
    responses((status = 200, body = CompensationList)), security(("bearer" = [])))]
pub async fn list_compensations(
    State(runtime): State<Runtime>,
    _: Operator,
) -> ApiResult<Json<CompensationList>> {
    let compensations = runtime.compensations(None).await?;
    Ok(Json(CompensationList {
        compensations: bodies(&compensations),
    }))
}
