//! `POST /v1/sessions/{session}/fetch`: the agent's request, paid through its session when the
//! seller asks for payment.

use super::hex;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use bursar_buyer::RequestSpec;
use bursar_protocol::Amount;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::SessionAgent;
use super::body::JsonBody;
use super::error::ApiResult;
use crate::error::RuntimeError;
use crate::service::{Fetched, PaymentSummary, Runtime, ValidationOutcome};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchRequest {
    #[serde(default = "default_method")]
    #[schema(default = "GET")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub body_base64: Option<String>,
    /// The agent's phase (`explore`, `execute`, ...), for phase policies.
    pub phase: Option<String>,
    /// The agent's step label, kept with the payment's evidence (see `/failures`).
    pub step: Option<String>,
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

/// A tool call of an MCP server (streamable HTTP), paid through the session when the server asks.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolCallRequest {
    /// The server's MCP endpoint (http or https), such as `https://tools.example.com/mcp`.
    pub server: String,
    pub tool: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// The agent's phase (`explore`, `execute`, ...), for phase policies.
    pub phase: Option<String>,
    /// The agent's step label, kept with the payment's evidence (see `/failures`).
    pub step: Option<String>,
}

impl ToolCallRequest {
    fn into_spec(self) -> Result<RequestSpec, RuntimeError> {
        let server = url::Url::parse(&self.server)
            .map_err(|e| RuntimeError::Invalid(format!("server {:?}: {e}", self.server)))?;
        RequestSpec::tool_call(bursar_buyer::mcp::ToolCall {
            server,
            name: self.tool,
            arguments: self.arguments,
        })
        .map_err(|e| RuntimeError::Invalid(e.to_string()))
    }
}

/// The payment made for a request; amounts in the token's smallest unit and in the currency's.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentBody {
    pub transfer_id: String,
    /// `pending`, `posted` or `voided`.
    pub state: String,
    /// In the currency's units (`"0.01"`).
    pub amount: String,
    #[schema(value_type = String)]
    pub amount_atomic: Amount,
    pub currency: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    pub tx_hash: Option<String>,
}

impl PaymentBody {
    pub fn of(runtime: &Runtime, payment: &PaymentSummary) -> PaymentBody {
        PaymentBody {
            transfer_id: payment.transfer_id.clone(),
            state: payment.state.as_str().into(),
            amount: payment.amount.to_human(runtime.currency().unit.decimals),
            amount_atomic: payment.amount,
            currency: runtime.currency().name.clone(),
            network: payment.network.to_string(),
            asset: hex(payment.asset),
            pay_to: hex(payment.pay_to),
            tx_hash: payment.tx_hash.map(hex),
        }
    }
}

/// How a paid response fared against the policies' validation rules.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationBody {
    pub passed: bool,
    pub failure: Option<String>,
    pub consecutive_failures: u64,
    /// Set when this failure paused payments to the endpoint.
    pub paused_until_ms: Option<i64>,
}

impl From<&ValidationOutcome> for ValidationBody {
    fn from(outcome: &ValidationOutcome) -> Self {
        ValidationBody {
            passed: outcome.failure.is_none(),
            failure: outcome.failure.clone(),
            consecutive_failures: outcome.consecutive_failures,
            paused_until_ms: outcome.paused_until_ms,
        }
    }
}

/// The seller's answer: `body` when it is UTF-8 text, `bodyBase64` otherwise.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FetchedBody {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub payment: Option<PaymentBody>,
    /// Set when the response came from the paid-response cache: the transfer that paid for it.
    pub cached_from: Option<String>,
    pub validation: Option<ValidationBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl FetchedBody {
    fn of(runtime: &Runtime, fetched: Fetched) -> FetchedBody {
        let (body, body_base64) = match String::from_utf8(fetched.body.to_vec()) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&fetched.body)),
            ),
        };
        FetchedBody {
            status: fetched.status,
            headers: fetched.headers.into_iter().collect(),
            payment: fetched.payment.map(|p| PaymentBody::of(runtime, &p)),
            cached_from: fetched.cached_from,
            validation: fetched.validation.as_ref().map(ValidationBody::from),
            body,
            body_base64,
        }
    }
}

#[utoipa::path(post, path = "/v1/sessions/{session}/fetch", tag = "sessions",
    request_body = FetchRequest, params(("session" = String, Path)),
    responses((status = 200, body = FetchedBody,
        description = "The seller's answer (whatever its status), paid for when it asked")),
    security(("bearer" = [])))]
pub async fn fetch(
    State(runtime): State<Runtime>,
    SessionAgent(session): SessionAgent,
    JsonBody(mut request): JsonBody<FetchRequest>,
) -> ApiResult<Json<FetchedBody>> {
    let (phase, step) = (request.phase.take(), request.step.take());
    paid(&runtime, &session, request.into_spec()?, phase, step).await
}

#[utoipa::path(post, path = "/v1/sessions/{session}/tools/call", tag = "sessions",
    request_body = ToolCallRequest, params(("session" = String, Path)),
    responses((status = 200, body = FetchedBody,
        description = "The tool's answer as a response: 200 with its structured output (JSON) or \
            its text, 500 when the tool reported an error; paid for when the server asked. Its \
            payments are accounted under the server's URL with the tool's name appended")),
    security(("bearer" = [])))]
pub async fn call_tool(
    State(runtime): State<Runtime>,
    SessionAgent(session): SessionAgent,
    JsonBody(mut request): JsonBody<ToolCallRequest>,
) -> ApiResult<Json<FetchedBody>> {
    let (phase, step) = (request.phase.take(), request.step.take());
    paid(&runtime, &session, request.into_spec()?, phase, step).await
}

/// The request (an HTTP request or a tool call) made, and paid when asked, within `session`.
async fn paid(
    runtime: &Runtime,
    session: &bursar_store::runtime::SessionRecord,
    spec: RequestSpec,
    phase: Option<String>,
    step: Option<String>,
) -> ApiResult<Json<FetchedBody>> {
    let fetched = runtime.fetch_labelled(session, spec, phase, step).await?;
    Ok(Json(FetchedBody::of(runtime, fetched)))
}
