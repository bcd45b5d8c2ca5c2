//! `/v1/grants`: a wallet owner's time-bound authorization for a named agent.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bursar_store::runtime::GrantRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Operator;
use super::body::QueryParams;
use super::body::{IdempotencyKey, JsonBody};
use super::created_status;
use super::error::ApiResult;
use crate::service::Runtime;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGrant {
    /// Wallet id or name.
    pub wallet_id: String,
    pub agent: String,
    /// Default 3600.
    #[schema(minimum = 1)]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantBody {
    pub id: String,
    pub wallet_id: String,
    pub agent: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl From<&GrantRecord> for GrantBody {
    fn from(grant: &GrantRecord) -> Self {
        GrantBody {
            id: grant.id.clone(),
            wallet_id: grant.wallet_id.clone(),
            agent: grant.agent.clone(),
            created_at_ms: grant.created_at_ms,
            expires_at_ms: grant.expires_at_ms,
            revoked_at_ms: grant.revoked_at_ms,
            revoke_reason: grant.revoke_reason.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantBody>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct GrantFilter {
    /// Only this wallet's grants.
    pub wallet_id: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revoke {
    pub reason: Option<String>,
    /// revoke-all only: limit to one wallet.
    pub wallet_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedBody {
    pub id: String,
    /// `false` when it was revoked already.
    pub revoked: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedAllBody {
    /// How many live grants were revoked.
    pub revoked: u64,
}

#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = CreateGrant,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first grant.")),
    responses((status = 201, body = GrantBody, description = "Created"),
        (status = 200, body = GrantBody, description = "Created before with this idempotency key")),
    security(("bearer" = [])))]
pub async fn create_grant(
    State(runtime): State<Runtime>,
    _: Operator,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<CreateGrant>,
) -> ApiResult<(StatusCode, Json<GrantBody>)> {
    let created = runtime
        .create_grant(
            &request.wallet_id,
            &request.agent,
            request.expires_in_seconds.map(Duration::from_secs),
            key,
        )
        .await?;
    let status = created_status(created.is_new());
    Ok((status, Json(GrantBody::from(&created.into_inner()))))
}

#[utoipa::path(get, path = "/v1/grants", tag = "grants", params(GrantFilter),
    responses((status = 200, body = GrantList)), security(("bearer" = [])))]
pub async fn list_grants(
    State(runtime): State<Runtime>,
    _: Operator,
    QueryParams(filter): QueryParams<GrantFilter>,
) -> ApiResult<Json<GrantList>> {
    let grants = runtime.grants(filter.wallet_id.as_deref()).await?;
    let grants = grants.iter().map(GrantBody::from).collect();
    Ok(Json(GrantList { grants }))
}

#[utoipa::path(post, path = "/v1/grants/{grant}/revoke", tag = "grants", request_body = Revoke,
    params(("grant" = String, Path)),
    responses((status = 200, body = RevokedBody)), security(("bearer" = [])))]
pub async fn revoke_grant(
    State(runtime): State<Runtime>,
    _: Operator,
    Path(grant): Path<String>,
    JsonBody(request): JsonBody<Revoke>,
) -> ApiResult<Json<RevokedBody>> {
    let reason = request
        .reason
        .unwrap_or_else(|| "revoked by operator".into());
    let revoked = runtime.revoke_grant(&grant, &reason).await?;
    Ok(Json(RevokedBody { id: grant, revoked }))
}

/// The kill switch.
#[utoipa::path(post, path = "/v1/grants/revoke-all", tag = "grants", request_body = Revoke,
    responses((status = 200, body = RevokedAllBody)), security(("bearer" = [])))]
pub async fn revoke_all_grants(
    State(runtime): State<Runtime>,
    _: Operator,
    JsonBody(request): JsonBody<Revoke>,
) -> ApiResult<Json<RevokedAllBody>> {
    let reason = request.reason.unwrap_or_else(|| "kill switch".into());
    let revoked = runtime
        .revoke_all_grants(request.wallet_id.as_deref(), &reason)
        .await?;
    Ok(Json(RevokedAllBody { revoked }))
}
