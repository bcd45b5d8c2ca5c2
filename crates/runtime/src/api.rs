//! The runtime's HTTP API (JSON). See `openapi.json` (served at `/openapi.json`) for the shapes.
//!
//! Two kinds of caller, both as `Authorization: Bearer <credential>`:
//! - operators, with an operator key (`bok_...`): wallets, grants, sessions, the ledger;
//! - agents, with a session token (`bst_...`): their own session only (read it, pay through it).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a status that fits: 401 for a
//! missing or unknown credential, 403 for a valid one that may not do this (or a payment the
//! session may not make), 404, 409 for idempotency conflicts, 402 when nothing offered is
//! payable, 502 when the seller failed or refused, 503 when the chain or database is down.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bursar_buyer::RequestSpec;
use bursar_protocol::Amount;
use bursar_store::KeyDigest;
use bursar_store::runtime::{Created, GrantRecord, LedgerEntry, SessionRecord, TransferRecord};
use bursar_wallet::Passphrase;
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::RuntimeError;
use crate::service::{Fetched, PaymentSummary, Runtime, SessionRequest, WalletInfo};
use crate::tokens::is_session_token;

/// Largest request body the API reads (a fetch carries the agent's request body, base64).
pub const API_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most ledger entries one page returns.
pub const LEDGER_PAGE_MAX: usize = 1000;
/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The runtime's routes, ready to serve.
pub fn router(runtime: Runtime) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/v1/wallets", post(create_wallet).get(list_wallets))
        .route("/v1/wallets/{wallet}", get(show_wallet))
        .route("/v1/grants", post(create_grant).get(list_grants))
        .route("/v1/grants/revoke-all", post(revoke_all_grants))
        .route("/v1/grants/{grant}/revoke", post(revoke_grant))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{session}", get(show_session))
        .route("/v1/sessions/{session}/close", post(close_session))
        .route("/v1/sessions/{session}/fetch", post(fetch))
        .route("/v1/sessions/{session}/transfers", get(session_transfers))
        .route("/v1/sessions/{session}/failures", post(mark_failed))
        .route(
            "/v1/sessions/{session}/compensations",
            get(session_compensations),
        )
        .route("/v1/compensations", get(list_compensations))
        .route(
            "/v1/{scope}/{subject}/policy",
            get(show_policy).put(put_policy).delete(delete_policy),
        )
        .route("/v1/policy/learn", get(learn_policy))
        .route("/v1/pauses", get(list_pauses))
        .route("/v1/pauses/lift", post(lift_pause))
        .route("/v1/ledger", get(ledger))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/ledger/reconcile", get(reconcile))
        .fallback(not_found)
        .with_state(runtime)
        .layer(RequestBodyLimitLayer::new(API_BODY_BYTES_MAX))
        .layer(CatchPanicLayer::custom(|_| {
            error_body(500, "internal_error", "internal error", None)
        }))
}

struct ApiError(RuntimeError);

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        if error.status() >= 500 {
            tracing::warn!(code = error.code(), %error, "runtime request failed");
        }
        let mut extra = serde_json::Map::new();
        if let Some(transfer) = error.transfer_id() {
            extra.insert("transferId".into(), json!(transfer));
        }
        if let RuntimeError::NotPayable { reasons } = &error {
            extra.insert("reasons".into(), json!(reasons));
        }
        if let RuntimeError::EgressRefused { host, address, .. } = &error {
            extra.insert("host".into(), json!(host));
            extra.insert("address".into(), json!(address));
        }
        error_body(
            error.status(),
            error.code(),
            &error.to_string(),
            Some(extra),
        )
    }
}

fn error_body(
    status: u16,
    code: &str,
    message: &str,
    extra: Option<serde_json::Map<String, Value>>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let (Some(extra), Some(object)) = (extra, error.as_object_mut()) {
        object.extend(extra);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "error": error }))).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// Who is calling.
enum Caller {
    Operator,
    Agent(Box<SessionRecord>),
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

async fn caller(runtime: &Runtime, headers: &HeaderMap) -> Result<Caller, RuntimeError> {
    let credential = bearer(headers).ok_or(RuntimeError::Unauthorized)?;
    if is_session_token(credential) {
        return Ok(Caller::Agent(Box::new(
            runtime.authenticate(credential).await?,
        )));
    }
    runtime
        .store()
        .operator_key(&KeyDigest::of(credential))
        .await?
        .map(|_| Caller::Operator)
        .ok_or(RuntimeError::Unauthorized)
}

async fn operator(runtime: &Runtime, headers: &HeaderMap) -> Result<(), RuntimeError> {
    match caller(runtime, headers).await? {
        Caller::Operator => Ok(()),
        Caller::Agent(_) => Err(RuntimeError::Forbidden(
            "session tokens cannot use operator endpoints".into(),
        )),
    }
}

/// The operator, or the agent holding this very session's token.
async fn operator_or_owner(
    runtime: &Runtime,
    headers: &HeaderMap,
    session_id: &str,
) -> Result<Caller, RuntimeError> {
    let caller = caller(runtime, headers).await?;
    if let Caller::Agent(session) = &caller
        && session.id != session_id
    {
        return Err(RuntimeError::Forbidden(
            "this token belongs to another session".into(),
        ));
    }
    Ok(caller)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, RuntimeError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| RuntimeError::Invalid(format!("a JSON body is required: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| RuntimeError::Invalid(format!("body: {e}")))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, RuntimeError> {
    headers
        .get("idempotency-key")
        .map(|value| {
            value
                .to_str()
                .map(str::to_string)
                .map_err(|_| RuntimeError::Invalid("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()
}

fn created_status<T>(created: &Created<T>) -> StatusCode {
    if created.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn health(State(runtime): State<Runtime>) -> Response {
    match runtime.chain().latest_block().await {
        Ok(block) => axum::Json(json!({
            "status": "ok",
            "network": runtime.currency().network.caip2(),
            "blockNumber": block.number,
        }))
        .into_response(),
        Err(error) => ApiError(error.into()).into_response(),
    }
}

async fn openapi() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    error_body(
        404,
        "not_found",
        "no such endpoint; see GET /openapi.json",
        None,
    )
}

// ----- wallets -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateWallet {
    name: String,
    /// A keystore v3 document (object or JSON string) to import instead of generating a key.
    keystore: Option<Value>,
    keystore_passphrase: Option<String>,
}

fn wallet_json(wallet: &WalletInfo) -> Value {
    json!({
        "id": wallet.id,
        "name": wallet.name,
        "address": wallet.address.to_checksum(None),
        "createdAtMs": wallet.created_at_ms,
    })
}

async fn create_wallet(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: CreateWallet = parse_json(&body)?;
    let key = idempotency_key(&headers)?;
    let created = match (request.keystore, request.keystore_passphrase) {
        (None, None) => runtime.create_wallet(&request.name, key).await?,
        (Some(keystore), Some(passphrase)) => {
            let document = match keystore {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let passphrase = Passphrase::new(passphrase).map_err(RuntimeError::from)?;
            runtime
                .import_wallet(&request.name, &document, passphrase, key)
                .await?
        }
        _ => {
            return Err(RuntimeError::Invalid(
                "to import, give both keystore and keystorePassphrase".into(),
            )
            .into());
        }
    };
    let status = created_status(&created);
    Ok((status, axum::Json(wallet_json(&created.into_inner()))).into_response())
}

async fn list_wallets(State(runtime): State<Runtime>, headers: HeaderMap) -> ApiResult {
    operator(&runtime, &headers).await?;
    let wallets: Vec<Value> = runtime.wallets().await?.iter().map(wallet_json).collect();
    Ok(axum::Json(json!({ "wallets": wallets })).into_response())
}

async fn show_wallet(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(wallet): Path<String>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let info = runtime.wallet(&wallet).await?;
    let balance = runtime.wallet_balance(&info.id).await?;
    let mut document = wallet_json(&info);
    document["balance"] = json!({
        "currency": runtime.currency().name,
        "amount": balance.to_human(runtime.currency().unit.decimals),
        "atomic": balance.to_string(),
    });
    Ok(axum::Json(document).into_response())
}

// ----- grants -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateGrant {
    wallet_id: String,
    agent: String,
    expires_in_seconds: Option<u64>,
}

fn grant_json(grant: &GrantRecord) -> Value {
    json!({
        "id": grant.id,
        "walletId": grant.wallet_id,
        "agent": grant.agent,
        "createdAtMs": grant.created_at_ms,
        "expiresAtMs": grant.expires_at_ms,
        "revokedAtMs": grant.revoked_at_ms,
        "revokeReason": grant.revoke_reason,
    })
}

async fn create_grant(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: CreateGrant = parse_json(&body)?;
    let created = runtime
        .create_grant(
            &request.wallet_id,
            &request.agent,
            request.expires_in_seconds.map(Duration::from_secs),
            idempotency_key(&headers)?,
        )
        .await?;
    let status = created_status(&created);
    Ok((status, axum::Json(grant_json(&created.into_inner()))).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrantFilter {
    wallet_id: Option<String>,
}

async fn list_grants(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Query(filter): Query<GrantFilter>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let grants: Vec<Value> = runtime
        .store()
        .grants(filter.wallet_id.as_deref())
        .await
        .map_err(RuntimeError::from)?
        .iter()
        .map(grant_json)
        .collect();
    Ok(axum::Json(json!({ "grants": grants })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Revoke {
    reason: Option<String>,
    wallet_id: Option<String>,
}

async fn revoke_grant(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(grant): Path<String>,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: Revoke = parse_json(&body)?;
    let reason = request
        .reason
        .unwrap_or_else(|| "revoked by operator".into());
    let revoked = runtime.revoke_grant(&grant, &reason).await?;
    Ok(axum::Json(json!({ "id": grant, "revoked": revoked })).into_response())
}

async fn revoke_all_grants(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: Revoke = parse_json(&body)?;
    let reason = request.reason.unwrap_or_else(|| "kill switch".into());
    let revoked = runtime
        .revoke_all_grants(request.wallet_id.as_deref(), &reason)
        .await?;
    Ok(axum::Json(json!({ "revoked": revoked })).into_response())
}

// ----- sessions -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateSession {
    grant_id: String,
    /// In the currency's units, as a decimal string (`"5.00"`).
    max_spend_amount: String,
    /// The runtime's currency (the only one); optional, refused when it names another.
    currency: Option<String>,
    expires_in_seconds: Option<u64>,
    client_token: Option<String>,
}

fn session_json(runtime: &Runtime, session: &SessionRecord) -> Value {
    let decimals = runtime.currency().unit.decimals;
    let human = |amount: Amount| amount.to_human(decimals);
    json!({
        "id": session.id,
        "grantId": session.grant_id,
        "walletId": session.wallet_id,
        "agent": session.agent,
        "network": session.network,
        "asset": session.asset,
        "currency": session.currency,
        "maxSpendAmount": human(session.max_spend),
        "maxSpendAtomic": session.max_spend.to_string(),
        "reservedAtomic": session.reserved.to_string(),
        "postedAtomic": session.posted.to_string(),
        "remainingAtomic": session.remaining().to_string(),
        "clientToken": session.client_token,
        "createdAtMs": session.created_at_ms,
        "expiresAtMs": session.expires_at_ms,
        "closedAtMs": session.closed_at_ms,
    })
}

async fn create_session(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: CreateSession = parse_json(&body)?;
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
    let client_token = match (request.client_token, idempotency_key(&headers)?) {
        (Some(token), _) => Some(token),
        (None, key) => key,
    };
    let issued = runtime
        .create_session(SessionRequest {
            grant_id: request.grant_id,
            max_spend,
            expires_in: request.expires_in_seconds.map(Duration::from_secs),
            client_token,
        })
        .await?;
    let mut document = session_json(&runtime, &issued.session);
    document["token"] = json!(issued.token);
    let status = if issued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(document)).into_response())
}

async fn show_session(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session): Path<String>,
) -> ApiResult {
    operator_or_owner(&runtime, &headers, &session).await?;
    let session = runtime.session(&session).await?;
    Ok(axum::Json(session_json(&runtime, &session)).into_response())
}

async fn close_session(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session): Path<String>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    runtime.session(&session).await?;
    let closed = runtime
        .store()
        .close_session(&session)
        .await
        .map_err(RuntimeError::from)?;
    Ok(axum::Json(json!({ "id": session, "closed": closed })).into_response())
}

fn transfer_json(transfer: &TransferRecord) -> Value {
    json!({
        "id": transfer.id,
        "sessionId": transfer.session_id,
        "state": transfer.state.as_str(),
        "amountAtomic": transfer.amount.to_string(),
        "network": transfer.network,
        "asset": transfer.asset,
        "payer": transfer.payer,
        "payTo": transfer.payee,
        "nonce": transfer.nonce,
        "validBefore": transfer.valid_before_s,
        "resource": transfer.resource,
        "txHash": transfer.tx_hash,
        "voidReason": transfer.void_reason,
        "createdAtMs": transfer.created_at_ms,
        "resolvedAtMs": transfer.resolved_at_ms,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TransferPage {
    /// The last transfer id of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

async fn session_transfers(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session): Path<String>,
    Query(page): Query<TransferPage>,
) -> ApiResult {
    operator_or_owner(&runtime, &headers, &session).await?;
    runtime.session(&session).await?;
    let store = runtime.store();
    let after = match &page.after {
        Some(id) => {
            let transfer = store
                .transfer(id)
                .await
                .map_err(RuntimeError::from)?
                .filter(|transfer| transfer.session_id == session)
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "after: {id} is not a transfer of session {session}"
                    ))
                })?;
            Some((transfer.created_at_ms, transfer.id))
        }
        None => None,
    };
    let limit = page
        .limit
        .unwrap_or(LEDGER_PAGE_MAX)
        .clamp(1, LEDGER_PAGE_MAX);
    let transfers = store
        .transfers_page(
            Some(&session),
            after.as_ref().map(|(ms, id)| (*ms, id.as_str())),
            limit,
        )
        .await
        .map_err(RuntimeError::from)?;
    // A full page may have a next one.
    let next = transfers
        .last()
        .filter(|_| transfers.len() == limit)
        .map(|transfer| transfer.id.clone());
    let transfers: Vec<Value> = transfers.iter().map(transfer_json).collect();
    Ok(axum::Json(json!({ "transfers": transfers, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FetchRequest {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_base64: Option<String>,
    /// The agent's phase (`explore`, `execute`, ...), for phase policies.
    phase: Option<String>,
    /// The agent's step label, kept with the payment's evidence (see `/failures`).
    step: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// Headers an agent may not set on the upstream request (hop-by-hop, or payment headers, which
/// only the runtime writes).
const FORBIDDEN_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "payment-signature",
    "x-payment",
    "proxy-authorization",
    "upgrade",
];

impl FetchRequest {
    fn into_spec(self) -> Result<RequestSpec, RuntimeError> {
        let method = http::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| RuntimeError::Invalid(format!("method {:?}", self.method)))?;
        let url = url::Url::parse(&self.url)
            .map_err(|e| RuntimeError::Invalid(format!("url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RuntimeError::Invalid("url must be http or https".into()));
        }
        let mut spec = RequestSpec::new(method, url.as_str())
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        for (name, value) in &self.headers {
            if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(RuntimeError::Invalid(format!(
                    "header {name:?} cannot be set by the agent"
                )));
            }
            spec = spec
                .header(name, value)
                .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        }
        spec.body = match (self.body, self.body_base64) {
            (Some(_), Some(_)) => {
                return Err(RuntimeError::Invalid(
                    "give body or bodyBase64, not both".into(),
                ));
            }
            (Some(text), None) => bytes::Bytes::from(text),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(bytes::Bytes::from)
                .map_err(|e| RuntimeError::Invalid(format!("bodyBase64: {e}")))?,
            (None, None) => bytes::Bytes::new(),
        };
        Ok(spec)
    }
}

pub(crate) fn payment_json(runtime: &Runtime, payment: &PaymentSummary) -> Value {
    json!({
        "transferId": payment.transfer_id,
        "state": payment.state.as_str(),
        "amount": payment.amount.to_human(runtime.currency().unit.decimals),
        "amountAtomic": payment.amount.to_string(),
        "currency": runtime.currency().name,
        "network": payment.network,
        "asset": payment.asset,
        "payTo": payment.pay_to,
        "txHash": payment.tx_hash,
    })
}

fn fetched_json(runtime: &Runtime, fetched: &Fetched) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &fetched.headers {
        headers.insert(name.clone(), json!(value));
    }
    let mut document = json!({
        "status": fetched.status,
        "headers": headers,
        "payment": fetched.payment.as_ref().map(|p| payment_json(runtime, p)),
        "cachedFrom": fetched.cached_from,
        "validation": fetched.validation.as_ref().map(|v| json!({
            "passed": v.failure.is_none(),
            "failure": v.failure,
            "consecutiveFailures": v.consecutive_failures,
            "pausedUntilMs": v.paused_until_ms,
        })),
    });
    match std::str::from_utf8(&fetched.body) {
        Ok(text) => document["body"] = json!(text),
        Err(_) => {
            document["bodyBase64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&fetched.body))
        }
    }
    document
}

async fn fetch(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let session = match caller(&runtime, &headers).await? {
        Caller::Agent(session) if session.id == session_id => *session,
        Caller::Agent(_) => {
            return Err(
                RuntimeError::Forbidden("this token belongs to another session".into()).into(),
            );
        }
        Caller::Operator => {
            return Err(RuntimeError::Forbidden(
                "only the session's agent (its session token) can pay through it".into(),
            )
            .into());
        }
    };
    let mut request: FetchRequest = parse_json(&body)?;
    let phase = request.phase.take();
    let step = request.step.take();
    let fetched = runtime
        .fetch_labelled(&session, request.into_spec()?, phase, step)
        .await?;
    Ok(axum::Json(fetched_json(&runtime, &fetched)).into_response())
}

// ----- compensation -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MarkFailed {
    /// Without a step, the whole session failed (and is closed).
    step: Option<String>,
    reason: String,
}

async fn mark_failed(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session): Path<String>,
    body: Bytes,
) -> ApiResult {
    let requested_by = match operator_or_owner(&runtime, &headers, &session).await? {
        Caller::Operator => "operator",
        Caller::Agent(_) => "agent",
    };
    let request: MarkFailed = parse_json(&body)?;
    let compensations = runtime
        .mark_failed(
            &session,
            crate::compensation::Failure {
                step: request.step,
                reason: request.reason,
                requested_by: requested_by.into(),
            },
        )
        .await?;
    let compensations: Vec<Value> = compensations
        .iter()
        .map(crate::compensation::compensation_json)
        .collect();
    Ok(axum::Json(json!({ "sessionId": session, "compensations": compensations })).into_response())
}

async fn session_compensations(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path(session): Path<String>,
) -> ApiResult {
    operator_or_owner(&runtime, &headers, &session).await?;
    runtime.session(&session).await?;
    let compensations: Vec<Value> = runtime
        .compensations(Some(&session))
        .await?
        .iter()
        .map(crate::compensation::compensation_json)
        .collect();
    Ok(axum::Json(json!({ "compensations": compensations })).into_response())
}

async fn list_compensations(State(runtime): State<Runtime>, headers: HeaderMap) -> ApiResult {
    operator(&runtime, &headers).await?;
    let compensations: Vec<Value> = runtime
        .compensations(None)
        .await?
        .iter()
        .map(crate::compensation::compensation_json)
        .collect();
    Ok(axum::Json(json!({ "compensations": compensations })).into_response())
}

// ----- ledger -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LedgerPage {
    after: Option<i64>,
    limit: Option<usize>,
}

pub(crate) fn entry_json(entry: &LedgerEntry) -> Value {
    json!({
        "seq": entry.seq,
        "kind": entry.kind.as_str(),
        "transferId": entry.transfer_id,
        "sessionId": entry.session_id,
        "grantId": entry.grant_id,
        "walletId": entry.wallet_id,
        "agent": entry.agent,
        "network": entry.network,
        "asset": entry.asset,
        "amountAtomic": entry.amount.map(|a| a.to_string()),
        "payTo": entry.payee,
        "resource": entry.resource,
        "txHash": entry.tx_hash,
        "reason": entry.reason,
        "atMs": entry.at_ms,
    })
}

async fn ledger(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Query(page): Query<LedgerPage>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let limit = page.limit.unwrap_or(100).clamp(1, LEDGER_PAGE_MAX);
    let entries = runtime
        .store()
        .entries(page.after.unwrap_or(0), limit)
        .await
        .map_err(RuntimeError::from)?;
    let next = entries.last().map(|entry| entry.seq);
    let entries: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(axum::Json(json!({ "entries": entries, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AlertFilter {
    /// A session or wallet id.
    subject: Option<String>,
    limit: Option<usize>,
}

async fn list_alerts(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Query(filter): Query<AlertFilter>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let limit = filter.limit.unwrap_or(100).clamp(1, LEDGER_PAGE_MAX);
    let alerts: Vec<Value> = runtime
        .store()
        .alert_store()
        .alerts(filter.subject.as_deref(), limit)
        .await
        .map_err(RuntimeError::from)?
        .iter()
        .map(crate::alerts::alert_listing_json)
        .collect();
    let webhook = runtime.alert_webhook().map(|webhook| webhook.display_url());
    Ok(axum::Json(json!({ "alerts": alerts, "webhook": webhook })).into_response())
}

async fn reconcile(State(runtime): State<Runtime>, headers: HeaderMap) -> ApiResult {
    operator(&runtime, &headers).await?;
    let report = crate::reconcile::reconcile(&runtime).await?;
    let differences: Vec<Value> = report
        .differences
        .iter()
        .map(|d| json!({"subject": d.subject, "problem": d.problem}))
        .collect();
    Ok(axum::Json(json!({
        "clean": report.is_clean(),
        "entriesChecked": report.entries_checked,
        "transfersChecked": report.transfers_checked,
        "sessionsChecked": report.sessions_checked,
        "chainUsesChecked": report.chain_uses_checked,
        "postedAtomic": report.posted_total.to_string(),
        "pendingAtomic": report.pending_total.to_string(),
        "voidedAtomic": report.voided_total.to_string(),
        "differences": differences,
    }))
    .into_response())
}

// ----- policies -----

/// `wallets` / `grants` / `sessions` in the path → the policy scope, after checking the subject
/// exists.
async fn policy_scope(
    runtime: &Runtime,
    scope: &str,
    subject: &str,
) -> Result<(&'static str, String), RuntimeError> {
    let store = runtime.store();
    match scope {
        "wallets" => Ok(("wallet", runtime.wallet(subject).await?.id)),
        "grants" => store
            .grant(subject)
            .await?
            .map(|grant| ("grant", grant.id))
            .ok_or_else(|| RuntimeError::NotFound(format!("grant {subject}"))),
        "sessions" => Ok(("session", runtime.session(subject).await?.id)),
        other => Err(RuntimeError::NotFound(format!(
            "/v1/{other}/.../policy: policies attach to wallets, grants and sessions"
        ))),
    }
}

async fn show_policy(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path((scope, subject)): Path<(String, String)>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let (scope, id) = policy_scope(&runtime, &scope, &subject).await?;
    let document = runtime
        .store()
        .policy(scope, &id)
        .await
        .map_err(RuntimeError::from)?;
    match document {
        Some(document) => Ok(axum::Json(
            json!({"scope": scope, "subjectId": id, "policy": document}),
        )
        .into_response()),
        None => Err(RuntimeError::NotFound(format!("no policy on {scope} {id}")).into()),
    }
}

/// The body is the TOML document itself, or JSON `{"policy": "<toml>"}`.
async fn put_policy(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path((scope, subject)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let (scope, id) = policy_scope(&runtime, &scope, &subject).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| RuntimeError::Invalid("the policy must be UTF-8 text".into()))?;
    let document = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => object
            .get("policy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                RuntimeError::Invalid("JSON bodies carry the TOML in \"policy\"".into())
            })?,
        _ => text.to_string(),
    };
    runtime.check_policy(&document)?;
    runtime
        .store()
        .put_policy(scope, &id, &document)
        .await
        .map_err(RuntimeError::from)?;
    Ok(axum::Json(json!({"scope": scope, "subjectId": id, "policy": document})).into_response())
}

async fn delete_policy(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Path((scope, subject)): Path<(String, String)>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let (scope, id) = policy_scope(&runtime, &scope, &subject).await?;
    let deleted = runtime
        .store()
        .delete_policy(scope, &id)
        .await
        .map_err(RuntimeError::from)?;
    Ok(axum::Json(json!({"scope": scope, "subjectId": id, "deleted": deleted})).into_response())
}

// ----- paused endpoints -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PauseFilter {
    /// A policy's source (`default policy`, `session ses_...`, ...).
    policy: Option<String>,
}

fn pause_json(health: &bursar_store::runtime::EndpointHealth) -> Value {
    json!({
        "policy": health.policy,
        "endpoint": health.endpoint,
        "consecutiveFailures": health.consecutive_failures,
        "reason": health.last_failure,
        "pausedUntilMs": health.paused_until_ms,
        "walletId": health.wallet_id,
        "sessionId": health.session_id,
    })
}

async fn list_pauses(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Query(filter): Query<PauseFilter>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let pauses: Vec<Value> = runtime
        .store()
        .paused_endpoints(filter.policy.as_deref())
        .await
        .map_err(RuntimeError::from)?
        .iter()
        .map(pause_json)
        .collect();
    Ok(axum::Json(json!({ "pauses": pauses })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LiftPause {
    /// The source of the policy that paused the endpoint, as `GET /v1/pauses` lists it.
    policy: String,
    endpoint: String,
}

async fn lift_pause(State(runtime): State<Runtime>, headers: HeaderMap, body: Bytes) -> ApiResult {
    operator(&runtime, &headers).await?;
    let request: LiftPause = parse_json(&body)?;
    let lifted = runtime
        .store()
        .lift_pause(&request.policy, &request.endpoint)
        .await
        .map_err(RuntimeError::from)?;
    Ok(axum::Json(
        json!({"policy": request.policy, "endpoint": request.endpoint, "lifted": lifted}),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LearnQuery {
    wallet_id: Option<String>,
    days: Option<u64>,
}

/// Most days `learn` looks back.
pub const LEARN_DAYS_MAX: u64 = 366;

async fn learn_policy(
    State(runtime): State<Runtime>,
    headers: HeaderMap,
    Query(query): Query<LearnQuery>,
) -> ApiResult {
    operator(&runtime, &headers).await?;
    let days = query.days.unwrap_or(30);
    if days == 0 || days > LEARN_DAYS_MAX {
        return Err(RuntimeError::Invalid(format!("days must be 1 to {LEARN_DAYS_MAX}")).into());
    }
    let policy = runtime
        .learn_allowlist(query.wallet_id.as_deref(), days)
        .await?;
    Ok(axum::Json(json!({"days": days, "policy": policy})).into_response())
}
