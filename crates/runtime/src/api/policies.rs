//! Policies on wallets, grants and sessions; endpoints paused by validation failures; a policy
//! learned from past payments.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use bursar_store::runtime::EndpointHealth;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Operator;
use super::body::JsonBody;
use super::body::QueryParams;
use super::error::ApiResult;
use crate::admin::PolicyScope;
use crate::error::RuntimeError;
use crate::service::Runtime;

/// Most days `learn` looks back.
pub const LEARN_DAYS_MAX: u64 = 366;

/// A policy document (TOML) and what it is attached to.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBody {
    /// `wallet`, `grant` or `session`.
    pub scope: &'static str,
    pub subject_id: String,
    /// The policy, TOML.
    pub policy: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDeletedBody {
    pub scope: &'static str,
    pub subject_id: String,
    /// `false` when there was none.
    pub deleted: bool,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PauseFilter {
    /// A policy's source (`default policy`, `session ses_...`, ...).
    pub policy: Option<String>,
}

/// An endpoint a policy paused after failed validations.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseBody {
    pub policy: String,
    pub endpoint: String,
    pub consecutive_failures: u64,
    pub reason: Option<String>,
    pub paused_until_ms: Option<i64>,
    pub wallet_id: Option<String>,
    pub session_id: Option<String>,
}

impl From<&EndpointHealth> for PauseBody {
    fn from(health: &EndpointHealth) -> Self {
        PauseBody {
            policy: health.policy.clone(),
            endpoint: health.endpoint.clone(),
            consecutive_failures: health.consecutive_failures,
            reason: health.last_failure.clone(),
            paused_until_ms: health.paused_until_ms,
            wallet_id: health.wallet_id.clone(),
            session_id: health.session_id.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PauseList {
    pub pauses: Vec<PauseBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiftPause {
    /// The source of the policy that paused the endpoint, as `GET /v1/pauses` lists it.
    pub policy: String,
    pub endpoint: String,
}

#[derive(Serialize, ToSchema)]
pub struct PauseLiftedBody {
    pub policy: String,
    pub endpoint: String,
    /// `false` when it was not paused by that policy.
    pub lifted: bool,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct LearnQuery {
    /// Only this wallet's payments (id, name or address).
    pub wallet_id: Option<String>,
    /// 1 to 366; default 30.
    pub days: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct LearnedBody {
    pub days: u64,
    /// An allowlist policy (TOML) of what was paid for.
    pub policy: String,
}

/// `wallets` / `grants` / `sessions` in the path → the policy scope and the subject's id, after
/// checking the subject exists.
async fn policy_subject(
    runtime: &Runtime,
    scope: &str,
    subject: &str,
) -> Result<(PolicyScope, String), RuntimeError> {
    let scope = match scope {
        "wallets" => PolicyScope::Wallet,
        "grants" => PolicyScope::Grant,
        "sessions" => PolicyScope::Session,
        other => {
            return Err(RuntimeError::NotFound(format!(
                "/v1/{other}/.../policy: policies attach to wallets, grants and sessions"
            )));
        }
    };
    Ok((scope, runtime.policy_subject(scope, subject).await?))
}

#[utoipa::path(get, path = "/v1/{scope}/{subject}/policy", tag = "policies",
    params(("scope" = String, Path, description = "`wallets`, `grants` or `sessions`."),
        ("subject" = String, Path, description = "Its id (a wallet also by name or address).")),
    responses((status = 200, body = PolicyBody)), security(("bearer" = [])))]
pub async fn show_policy(
    State(runtime): State<Runtime>,
    _: Operator,
    Path((scope, subject)): Path<(String, String)>,
) -> ApiResult<Json<PolicyBody>> {
    let (scope, id) = policy_subject(&runtime, &scope, &subject).await?;
    match runtime.policy(scope, &id).await? {
        Some(policy) => Ok(Json(PolicyBody {
            scope: scope.as_str(),
            subject_id: id,
            policy,
        })),
        None => Err(RuntimeError::NotFound(format!("no policy on {} {id}", scope.as_str())).into()),
    }
}

/// The body is the TOML document itself, or JSON `{"policy": "<toml>"}`.
#[utoipa::path(put, path = "/v1/{scope}/{subject}/policy", tag = "policies",
    params(("scope" = String, Path), ("subject" = String, Path)),
    request_body(content(
        (String = "application/toml"),
        (Object = "application/json"))),
    responses((status = 200, body = PolicyBody)), security(("bearer" = [])))]
pub async fn put_policy(
    State(runtime): State<Runtime>,
    _: Operator,
    Path((scope, subject)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<PolicyBody>> {
    let (scope, id) = policy_subject(&runtime, &scope, &subject).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| RuntimeError::Invalid("the policy must be UTF-8 text".into()))?;
    let policy = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => object
            .get("policy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                RuntimeError::Invalid("JSON bodies carry the TOML in \"policy\"".into())
            })?,
        _ => text.to_string(),
    };
    runtime.put_policy(scope, &id, &policy).await?;
    Ok(Json(PolicyBody {
        scope: scope.as_str(),
        subject_id: id,
        policy,
    }))
}

#[utoipa::path(delete, path = "/v1/{scope}/{subject}/policy", tag = "policies",
    params(("scope" = String, Path), ("subject" = String, Path)),
    responses((status = 200, body = PolicyDeletedBody)), security(("bearer" = [])))]
pub async fn delete_policy(
    State(runtime): State<Runtime>,
    _: Operator,
    Path((scope, subject)): Path<(String, String)>,
) -> ApiResult<Json<PolicyDeletedBody>> {
    let (scope, id) = policy_subject(&runtime, &scope, &subject).await?;
    let deleted = runtime.delete_policy(scope, &id).await?;
    Ok(Json(PolicyDeletedBody {
        scope: scope.as_str(),
        subject_id: id,
        deleted,
    }))
}

#[utoipa::path(get, path = "/v1/pauses", tag = "policies", params(PauseFilter),
    responses((status = 200, body = PauseList)), security(("bearer" = [])))]
pub async fn list_pauses(
    State(runtime): State<Runtime>,
    _: Operator,
    QueryParams(filter): QueryParams<PauseFilter>,
) -> ApiResult<Json<PauseList>> {
    let pauses = runtime.paused_endpoints(filter.policy.as_deref()).await?;
    Ok(Json(PauseList {
        pauses: pauses.iter().map(PauseBody::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/pauses/lift", tag = "policies", request_body = LiftPause,
    responses((status = 200, body = PauseLiftedBody)), security(("bearer" = [])))]
pub async fn lift_pause(
    State(runtime): State<Runtime>,
    _: Operator,
    JsonBody(request): JsonBody<LiftPause>,
) -> ApiResult<Json<PauseLiftedBody>> {
    let lifted = runtime
        .lift_pause(&request.policy, &request.endpoint)
        .await?;
    Ok(Json(PauseLiftedBody {
        policy: request.policy,
        endpoint: request.endpoint,
        lifted,
    }))
}

#[utoipa::path(get, path = "/v1/policy/learn", tag = "policies", params(LearnQuery),
    responses((status = 200, body = LearnedBody)), security(("bearer" = [])))]
pub async fn learn_policy(
    State(runtime): State<Runtime>,
    _: Operator,
    QueryParams(query): QueryParams<LearnQuery>,
) -> ApiResult<Json<LearnedBody>> {
    let days = query.days.unwrap_or(30);
    if days == 0 || days > LEARN_DAYS_MAX {
        return Err(RuntimeError::Invalid(format!("days must be 1 to {LEARN_DAYS_MAX}")).into());
    }
    let policy = runtime
        .learn_allowlist(query.wallet_id.as_deref(), days)
        .await?;
    Ok(Json(LearnedBody { days, policy }))
}
