//! `/v1/sessions`: one agent run under a grant, with a budget, and its transfers.

use super::body::QueryParams;
use super::hex;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bursar_protocol::Amount;
use bursar_store::runtime::{SessionRecord, TransferRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Operator, SessionReader};
use super::body::{IdempotencyKey, JsonBody};
use super::error::ApiResult;
use super::{LEDGER_PAGE_MAX, created_status};
use crate::error::RuntimeError;
use crate::service::{Runtime, SessionRequest};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    pub grant_id: String,
    /// In the currency's units, as a decimal string (`"5.00"`).
    #[schema(examples("5.00"))]
    pub max_spend_amount: String,
    /// The runtime's currency (the only one sessions are budgeted in) when omitted; naming
    /// another currency is refused with 400 invalid_request.
    #[schema(examples("USDC"))]
    pub currency: Option<String>,
    #[schema(minimum = 1)]
    pub expires_in_seconds: Option<u64>,
    /// Idempotent creation: the same token returns the same session and session token.
    pub client_token: Option<String>,
}

/// A session and its budget; amounts in `*Atomic` fields are the token's smallest unit.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    pub id: String,
    pub grant_id: String,
    pub wallet_id: String,
    pub agent: String,
    pub network: String,
    pub asset: String,
    pub currency: String,
    /// In the currency's units (`"5.00"`).
    pub max_spend_amount: String,
    #[schema(value_type = String)]
    pub max_spend_atomic: Amount,
    #[schema(value_type = String)]
    pub reserved_atomic: Amount,
    #[schema(value_type = String)]
    pub posted_atomic: Amount,
    #[schema(value_type = String)]
    pub remaining_atomic: Amount,
    pub client_token: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

impl SessionBody {
    pub fn of(runtime: &Runtime, session: &SessionRecord) -> SessionBody {
        SessionBody {
            id: session.id.clone(),
            grant_id: session.grant_id.clone(),
            wallet_id: session.wallet_id.clone(),
            agent: session.agent.clone(),
            network: session.network.to_string(),
            asset: hex(session.asset),
            currency: session.currency.clone(),
            max_spend_amount: session.max_spend.to_human(runtime.currency().unit.decimals),
            max_spend_atomic: session.max_spend,
            reserved_atomic: session.reserved,
            posted_atomic: session.posted,
            remaining_atomic: session.remaining(),
            client_token: session.client_token.clone(),
            created_at_ms: session.created_at_ms,
            expires_at_ms: session.expires_at_ms,
            closed_at_ms: session.closed_at_ms,
        }
    }
}

/// A new session with the agent's credential.
#[derive(Serialize, ToSchema)]
pub struct IssuedSessionBody {
    #[serde(flatten)]
    pub session: SessionBody,
    /// The session token (`bst_...`): the agent's only credential.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClosedBody {
    pub id: String,
    /// `false` when it was closed already.
    pub closed: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferBody {
    pub id: String,
    pub session_id: String,
    /// `pending`, `posted` or `voided`.
    pub state: String,
    #[schema(value_type = String)]
    pub amount_atomic: Amount,
    pub network: String,
    pub asset: String,
    pub payer: String,
    pub pay_to: String,
    pub nonce: String,
    /// Unix seconds.
    pub valid_before: u64,
    pub resource: String,
    pub tx_hash: Option<String>,
    pub void_reason: Option<String>,
    pub created_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

impl From<&TransferRecord> for TransferBody {
    fn from(transfer: &TransferRecord) -> Self {
        TransferBody {
            id: transfer.id.clone(),
            session_id: transfer.session_id.clone(),
            state: transfer.state.as_str().into(),
            amount_atomic: transfer.amount,
            network: transfer.network.to_string(),
            asset: hex(transfer.asset),
            payer: hex(transfer.payer),
            pay_to: hex(transfer.payee),
            nonce: hex(transfer.nonce),
            valid_before: transfer.valid_before_s,
            resource: transfer.resource.clone(),
            tx_hash: transfer.tx_hash.map(hex),
            void_reason: transfer.void_reason.clone(),
            created_at_ms: transfer.created_at_ms,
            resolved_at_ms: transfer.resolved_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TransferList {
    pub transfers: Vec<TransferBody>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TransfersQuery {
    /// The last transfer id of the previous page.
    pub after: Option<String>,
    /// 1 to 1000 (the default).
    pub limit: Option<usize>,
}

#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Used as the client token when the body has none.")),
    responses((status = 201, body = IssuedSessionBody, description = "Created"),
        (status = 200, body = IssuedSessionBody, description = "Created before with this client token")),
    security(("bearer" = [])))]
pub async fn create_session(
    State(runtime): State<Runtime>,
    _: Operator,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<CreateSession>,
) -> ApiResult<(StatusCode, Json<IssuedSessionBody>)> {
    let currency = runtime.currency();
    if let Some(named) = &request.currency
        && !named.eq_ignore_ascii_case(&currency.name)
    {
        return Err(RuntimeError::Invalid(format!(
            "this runtime budgets sessions in {}, not {named:?}; omit currency or give {0}",
            currency.name
        ))
        .into());
    }
    let max_spend = currency
        .unit
        .parse(&request.max_spend_amount)
        .map_err(|e| RuntimeError::Invalid(format!("maxSpendAmount: {e}")))?;
    let issued = runtime
        .create_session(SessionRequest {
            grant_id: request.grant_id,
            max_spend,
            expires_in: request.expires_in_seconds.map(Duration::from_secs),
            client_token: request.client_token.or(key),
        })
        .await?;
    let body = IssuedSessionBody {
        session: SessionBody::of(&runtime, &issued.session),
        token: issued.token,
    };
    Ok((created_status(issued.created), Json(body)))
}

#[utoipa::path(get, path = "/v1/sessions/{session}", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = SessionBody)), security(("bearer" = [])))]
pub async fn show_session(
    State(runtime): State<Runtime>,
    reader: SessionReader,
) -> ApiResult<Json<SessionBody>> {
    let session = runtime.session(&reader.session_id).await?;
    Ok(Json(SessionBody::of(&runtime, &session)))
}

#[utoipa::path(post, path = "/v1/sessions/{session}/close", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = ClosedBody)), security(("bearer" = [])))]
pub async fn close_session(
    State(runtime): State<Runtime>,
    _: Operator,
    axum::extract::Path(session): axum::extract::Path<String>,
) -> ApiResult<Json<ClosedBody>> {
    let closed = runtime.close_session(&session).await?;
    Ok(Json(ClosedBody {
        id: session,
        closed,
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{session}/transfers", tag = "sessions",
    params(("session" = String, Path), TransfersQuery),
    responses((status = 200, body = TransferList)), security(("bearer" = [])))]
pub async fn session_transfers(
    State(runtime): State<Runtime>,
    reader: SessionReader,
    QueryParams(page): QueryParams<TransfersQuery>,
) -> ApiResult<Json<TransferList>> {
    let limit = page
        .limit
        .unwrap_or(LEDGER_PAGE_MAX)
        .clamp(1, LEDGER_PAGE_MAX);
    let transfers = runtime
        .session_transfers(&reader.session_id, page.after.as_deref(), limit)
        .await?;
    // A full page may have a next one.
    let next = transfers
        .last()
        .filter(|_| transfers.len() == limit)
        .map(|transfer| transfer.id.clone());
    let transfers = transfers.iter().map(TransferBody::from).collect();
    Ok(Json(TransferList { transfers, next }))
}
