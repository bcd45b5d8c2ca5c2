//! The runtime as an HTTP forward proxy: an agent sets `HTTP_PROXY` to it and makes its requests
//! as usual; each one is made through [`Runtime::fetch`] under the agent's payment session, so a
//! `402 Payment Required` is paid within the session's budget like a `POST
//! /v1/sessions/{id}/fetch` call would be.
//!
//! - **Credentials**: the session token, as `Proxy-Authorization: Basic base64(<any>:<token>)`
//!   (what HTTP clients send for a proxy URL such as `http://agent:<token>@127.0.0.1:8403`) or
//!   `Proxy-Authorization: Bearer <token>`. Missing or invalid: `407` with
//!   `Proxy-Authenticate: Basic realm="bursar"`.
//! - **Requests**: absolute-form (`GET http://host/path HTTP/1.1`). The upstream request carries
//!   the agent's method, headers and body (at most [`PROXY_BODY_BYTES_MAX`] bytes), without
//!   hop-by-hop headers, `Proxy-*` headers, payment headers (only the runtime pays) or
//!   `X-Bursar-*` headers. [`HEADER_PHASE`] declares the agent's phase (`explore`, `execute`,
//!   ...) for phase policies, like the API's `phase`; [`HEADER_STEP`] labels the payment with the
//!   agent's step, like the API's `step` (see [`crate::compensation`]). The answer is the
//!   upstream status, headers and body as they came, plus [`HEADER_PAYMENT`] (the payment as
//!   compact JSON) when the runtime paid for it.
//! - **Refusals and failures** have the API's status and JSON body (`{"error": {"code",
//!   "message"}}`: 403 `budget_exhausted`, 402 `no_payable_offer`, 502 `payment_rejected`, ...)
//!   and the code again in [`HEADER_ERROR`].
//! - **Destinations** are checked like the API's ([`crate::egress`]): a non-public address is
//!   refused with `403 egress_refused` unless the runtime allows it.
//! - **Refused bodies** are read and discarded up to [`PROXY_BODY_DRAIN_BYTES_MAX`] before the
//!   answer, so a client still sending one reads the refusal (413, 407, ...) instead of a
//!   reset connection; a body declared larger than that is refused from the headers and the
//!   connection closed.
//! - **`CONNECT`** (HTTPS tunnels) is refused with `405`: inside a TLS tunnel the proxy cannot see
//!   a 402, so it could not pay. For HTTPS sellers use the API; for plain HTTP, send the request
//!   through the proxy. A request that is not a proxy request (origin-form) gets `400`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bursar_buyer::RequestSpec;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Map, json};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::RuntimeError;
use crate::service::Runtime;
use crate::tokens::is_session_token;

/// Largest request body the proxy forwards (it is kept in memory to be sent again with a
/// payment).
pub const PROXY_BODY_BYTES_MAX: usize = bursar_buyer::REQUEST_BODY_BYTES_MAX;
/// A request body the proxy refuses (too large, or sent with a request it refuses for another
/// reason) is still read and discarded up to this many bytes in all, so that a client still
/// sending it gets the refusal instead of a reset connection. Larger bodies are cut off: the
/// connection is closed and the client may see a reset.
pub const PROXY_BODY_DRAIN_BYTES_MAX: usize = 2 * PROXY_BODY_BYTES_MAX;
/// Response header carrying the payment made for the request, as compact JSON.
pub const HEADER_PAYMENT: &str = "x-bursar-payment";
/// Response header carrying the error code when the proxy refused or failed.
pub const HEADER_ERROR: &str = "x-bursar-error";
/// Request header declaring the agent's phase, for phase policies; not forwarded.
pub const HEADER_PHASE: &str = "x-bursar-phase";
/// Longest phase name accepted.
const PHASE_BYTES_MAX: usize = 64;
/// Request header labelling the paid request with the agent's step, so the step can be marked
/// failed and compensated later; not forwarded.
pub const HEADER_STEP: &str = "x-bursar-step";
/// The realm in `Proxy-Authenticate`.
pub const REALM: &str = "bursar";
/// What the proxy adds to `Via` (RFC 9110 §7.6.3); a request already carrying it is a loop.
const VIA_ENTRY: &str = "1.1 bursar";
/// Longest `Proxy-Authorization` value looked at.
const CREDENTIAL_BYTES_MAX: usize = 1024;
/// Methods the proxy forwards (for `Allow` on a refused `CONNECT`).
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Headers that belong to one connection, never forwarded either way (RFC 9110 §7.6.1), plus
/// `Host` and `Content-Length`, which the upstream client writes itself.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "http2-settings",
];

/// Payment headers: only the runtime writes them on upstream requests.
const PAYMENT_HEADERS: [&str; 2] = ["payment-signature", "x-payment"];

/// The forward proxy, ready to serve on its own port (`axum::serve`). Every request, whatever
/// its target, is handled here; see the module docs.
pub fn proxy_router(runtime: Runtime) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(runtime)
        .layer(CatchPanicLayer::custom(|_| {
            ProxyError::Internal.into_response()
        }))
}

/// Why the proxy answered itself instead of relaying the upstream answer.
#[derive(Debug)]
enum ProxyError {
    /// No usable session token.
    Credentials(&'static str),
    Connect,
    NotAProxyRequest(String),
    BodyTooLarge,
    BadRequest(String),
    Loop,
    Runtime(RuntimeError),
    Internal,
}

impl From<RuntimeError> for ProxyError {
    fn from(error: RuntimeError) -> Self {
        match error {
            RuntimeError::Unauthorized => ProxyError::Credentials("the session token is not valid"),
            other => ProxyError::Runtime(other),
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut extra = Map::new();
        let (status, code, message) = match self {
            ProxyError::Credentials(why) => (
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "unauthorized".to_string(),
                format!(
                    "{why}: send the session token as Proxy-Authorization (Basic with the token as \
                     the password, e.g. a proxy URL http://agent:<token>@host:port, or Bearer <token>)"
                ),
            ),
            ProxyError::Connect => (
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_not_supported".into(),
                "CONNECT tunnels cannot be paid for: inside TLS the proxy cannot see a 402. Send \
                 plain http:// requests through the proxy, or use POST /v1/sessions/{id}/fetch on \
                 the runtime API for https:// sellers"
                    .into(),
            ),
            ProxyError::NotAProxyRequest(why) => (
                StatusCode::BAD_REQUEST,
                "not_a_proxy_request".into(),
                format!(
                    "{why}: this is Bursar's forward proxy; send absolute-form requests (set \
                     HTTP_PROXY=http://agent:<session token>@host:port), or call the runtime API"
                ),
            ),
            ProxyError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large".into(),
                format!("the request body is larger than {PROXY_BODY_BYTES_MAX} bytes"),
            ),
            ProxyError::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, "invalid_request".into(), message)
            }
            ProxyError::Loop => (
                StatusCode::LOOP_DETECTED,
                "proxy_loop".into(),
                "the request has already passed through a Bursar proxy (Via); the runtime must \
                 not send its upstream requests through its own proxy"
                    .into(),
            ),
            ProxyError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error".into(),
                "internal error".into(),
            ),
            ProxyError::Runtime(error) => {
                if error.status() >= 500 {
                    tracing::warn!(code = error.code(), %error, "proxied request failed");
                }
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
                (
                    StatusCode::from_u16(error.status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    error.code().to_string(),
                    error.to_string(),
                )
            }
        };
        let mut error = json!({"code": code, "message": message});
        if let Some(object) = error.as_object_mut() {
            object.extend(extra);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&code) {
            headers.insert(HEADER_ERROR, value);
        }
        match status {
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"bursar\""),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            }
            _ => {}
        }
        response
    }
}

async fn handle(State(runtime): State<Runtime>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let result = forward(&runtime, parts, &mut body).await;
    // Refused before its body was read: read what the client is still sending (bounded), so
    // that it gets the answer rather than a reset.
    if let Some(body) = body.take() {
        drain(body.into_data_stream(), 0).await;
    }
    match result {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward(
    runtime: &Runtime,
    parts: http::request::Parts,
    body: &mut Option<Body>,
) -> Result<Response, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    let url = target_url(&parts.uri)?;
    if passed_through_bursar(&parts.headers) {
        return Err(ProxyError::Loop);
    }
    let token = session_token(&parts.headers)?;
    let session = runtime.authenticate(&token).await?;
    let phase = phase(&parts.headers)?;
    let step = match parts.headers.get(HEADER_STEP) {
        None => None,
        Some(value) => {
            let step = value.to_str().map(str::trim).unwrap_or_default();
            crate::compensation::check_step(step).map_err(|_| {
                ProxyError::BadRequest(
                    "X-Bursar-Step must be a step label of 1 to 200 visible characters".into(),
                )
            })?;
            Some(step.to_string())
        }
    };
    let body = read_body(&parts.headers, body.take().unwrap_or_default()).await?;

    let mut spec = RequestSpec::new(parts.method.clone(), url.as_str())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    spec.headers = upstream_headers(&parts.headers);
    spec.body = body;
    tracing::debug!(
        session = %session.id,
        method = %parts.method,
        host = url.host_str().unwrap_or(""),
        "proxying request"
    );

    let fetched = runtime.fetch_labelled(&session, spec, phase, step).await?;
    let status = StatusCode::from_u16(fetched.status).map_err(|_| {
        ProxyError::Runtime(RuntimeError::Upstream {
            message: format!("unusable status {}", fetched.status),
            transfer_id: fetched.payment.as_ref().map(|p| p.transfer_id.clone()),
        })
    })?;
    let mut response = Response::new(Body::from(fetched.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let connection_scoped = connection_tokens(
        fetched
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .map(|(_, value)| value.as_str()),
    );
    for (name, value) in &fetched.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str())
            || lower.starts_with("proxy-")
            || lower == HEADER_PAYMENT
            || lower == HEADER_ERROR
            || connection_scoped.contains(&lower)
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.append(header::VIA, HeaderValue::from_static(VIA_ENTRY));
    if let Some(payment) = &fetched.payment {
        let document = serde_json::to_string(&crate::api::PaymentBody::of(runtime, payment))
            .unwrap_or_default();
        match HeaderValue::from_str(&document) {
            Ok(value) => {
                headers.insert(HEADER_PAYMENT, value);
            }
            Err(_) => {
                tracing::warn!(transfer = %payment.transfer_id, "payment summary is not a valid header value");
            }
        }
    }
    Ok(response)
}

/// The absolute http(s) URL of a proxy request.
fn target_url(uri: &http::Uri) -> Result<url::Url, ProxyError> {
    let Some(scheme) = uri.scheme_str() else {
        return Err(ProxyError::NotAProxyRequest(format!(
            "the request target {:?} is not an absolute URL",
            truncate(&uri.to_string(), 200)
        )));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(ProxyError::BadRequest(format!(
            "only http:// and https:// URLs can be fetched, not {:?}",
            truncate(scheme, 40)
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ProxyError::BadRequest(
            "the request target has no host".into(),
        ));
    }
    url::Url::parse(&uri.to_string())
        .map_err(|e| ProxyError::BadRequest(format!("the request target is not a valid URL: {e}")))
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn passed_through_bursar(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|entry| entry.trim().eq_ignore_ascii_case(VIA_ENTRY))
}

/// The session token in `Proxy-Authorization`: the password (or, without one, the user) of Basic
/// credentials, or a Bearer credential.
fn session_token(headers: &HeaderMap) -> Result<String, ProxyError> {
    let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
        return Err(ProxyError::Credentials("no Proxy-Authorization"));
    };
    let invalid = ProxyError::Credentials("Proxy-Authorization holds no session token");
    if value.len() > CREDENTIAL_BYTES_MAX {
        return Err(invalid);
    }
    let Ok(value) = value.to_str() else {
        return Err(invalid);
    };
    let Some((scheme, credential)) = value.trim().split_once(' ') else {
        return Err(invalid);
    };
    let credential = credential.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        credential.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some(decoded) = decoded else {
            return Err(invalid);
        };
        match decoded.split_once(':') {
            Some((_, password)) if !password.is_empty() => password.to_string(),
            Some((user, _)) => user.to_string(),
            None => decoded,
        }
    } else {
        return Err(invalid);
    };
    if !is_session_token(&token) {
        return Err(invalid);
    }
    Ok(token)
}

/// The phase the agent declares in [`HEADER_PHASE`], if any.
fn phase(headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let Some(value) = headers.get(HEADER_PHASE) else {
        return Ok(None);
    };
    let phase = value.to_str().map(str::trim).unwrap_or_default();
    if phase.is_empty() || phase.len() > PHASE_BYTES_MAX {
        return Err(ProxyError::BadRequest(format!(
            "X-Bursar-Phase must be a phase name of 1 to {PHASE_BYTES_MAX} visible characters"
        )));
    }
    Ok(Some(phase.to_string()))
}

/// The request body, refusing more than [`PROXY_BODY_BYTES_MAX`] bytes (at once when
/// `Content-Length` says so). A refused body is drained up to [`PROXY_BODY_DRAIN_BYTES_MAX`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ProxyError> {
    let mut stream = body.into_data_stream();
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let Some(length) = length
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        else {
            // hyper refuses such requests before they get here; never read a body of unknown
            // length.
            return Err(ProxyError::BadRequest(
                "Content-Length is not a number".into(),
            ));
        };
        if length > PROXY_BODY_BYTES_MAX as u64 {
            if length <= PROXY_BODY_DRAIN_BYTES_MAX as u64 {
                drain(stream, 0).await;
            }
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let mut collected = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ProxyError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if collected.len() + chunk.len() > PROXY_BODY_BYTES_MAX {
            drain(stream, collected.len() + chunk.len()).await;
            return Err(ProxyError::BodyTooLarge);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected.freeze())
}

/// Reads and discards the rest of a body, `read` bytes of which were read already, until it
/// ends or [`PROXY_BODY_DRAIN_BYTES_MAX`] bytes were read in all. Whether it ended.
async fn drain(mut stream: axum::body::BodyDataStream, read: usize) -> bool {
    let mut read = read;
    while read <= PROXY_BODY_DRAIN_BYTES_MAX {
        match stream.next().await {
            Some(Ok(chunk)) => read = read.saturating_add(chunk.len()),
            Some(Err(_)) => return false,
            None => return true,
        }
    }
    false
}

/// Lowercased header names listed in `Connection` values.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// The agent's headers as sent upstream: without hop-by-hop, `Proxy-*`, payment and `X-Bursar-*`
/// headers, with the proxy added to `Via`.
fn upstream_headers(agent: &HeaderMap) -> HeaderMap {
    let connection_scoped = connection_tokens(
        agent
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in agent {
        let name_text = name.as_str();
        if HOP_BY_HOP.contains(&name_text)
            || name_text.starts_with("proxy-")
            || PAYMENT_HEADERS.contains(&name_text)
            || name_text.starts_with("x-bursar-")
            || connection_scoped.iter().any(|token| token == name_text)
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.append(header::VIA, HeaderValue::from_static(VIA_ENTRY));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    fn basic(text: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }

    #[test]
    fn session_tokens_are_read_from_basic_and_bearer() {
        let token = "bst_ses_1_abc";
        for value in [
            basic(&format!("agent:{token}")),
            basic(&format!(":{token}")),
            basic(&format!("{token}:")),
            basic(token),
            format!("Bearer {token}"),
            format!("bearer   {token} "),
        ] {
            let read = session_token(&with("proxy-authorization", &value));
            assert_eq!(read.ok().as_deref(), Some(token), "{value}");
        }
    }

    #[test]
    fn hostile_credentials_are_refused_without_panicking() {
        let long = format!("Bearer bst_{}", "a".repeat(4000));
        for value in [
            "",
            "Basic",
            "Basic !!!not base64!!!",
            "Basic /w==",
            "Digest username=x",
            "Bearer bok_operator_key",
            "Bearer ",
            long.as_str(),
        ] {
            let read = session_token(&with("proxy-authorization", value));
            assert!(
                matches!(read, Err(ProxyError::Credentials(_))),
                "{value:?}: {read:?}"
            );
        }
        assert!(matches!(
            session_token(&HeaderMap::new()),
            Err(ProxyError::Credentials(_))
        ));
        let mut binary = HeaderMap::new();
        binary.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(session_token(&binary).is_err());
    }

    #[test]
    fn upstream_headers_drop_hop_by_hop_proxy_and_payment_headers() {
        let mut agent = HeaderMap::new();
        for (name, value) in [
            ("host", "seller"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Bearer bst_x_y"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("payment-signature", "forged"),
            ("x-payment", "forged"),
            ("content-length", "3"),
            ("accept", "application/json"),
            ("authorization", "Bearer upstream-key"),
            ("x-custom", "kept"),
            ("x-bursar-phase", "explore"),
        ] {
            agent.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        agent.append("x-custom", HeaderValue::from_static("twice"));
        let sent = upstream_headers(&agent);
        let names: Vec<&str> = sent.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "authorization", "x-custom", "via"]);
        assert_eq!(sent.get_all("x-custom").iter().count(), 2);
        assert_eq!(sent["via"], VIA_ENTRY);
        assert!(passed_through_bursar(&sent));
        assert!(!passed_through_bursar(&with("via", "1.1 squid")));
        assert!(passed_through_bursar(&with("via", "1.0 squid, 1.1 bursar")));
    }

    #[test]
    fn phases_are_bounded() {
        assert_eq!(phase(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            phase(&with("x-bursar-phase", " explore "))
                .unwrap()
                .as_deref(),
            Some("explore")
        );
        for bad in [String::new(), "x".repeat(PHASE_BYTES_MAX + 1)] {
            assert!(matches!(
                phase(&with("x-bursar-phase", &bad)),
                Err(ProxyError::BadRequest(_))
            ));
        }
        let mut binary = HeaderMap::new();
        binary.insert(HEADER_PHASE, HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(phase(&binary).is_err());
    }

    #[test]
    fn only_absolute_http_targets_are_forwarded() {
        let parse = |text: &str| target_url(&text.parse::<http::Uri>().unwrap());
        assert_eq!(
            parse("http://seller.example:8080/paid?q=1")
                .unwrap()
                .as_str(),
            "http://seller.example:8080/paid?q=1"
        );
        assert!(parse("https://seller.example/").is_ok());
        assert!(matches!(
            parse("/paid"),
            Err(ProxyError::NotAProxyRequest(_))
        ));
        assert!(matches!(
            parse("ftp://seller.example/file"),
            Err(ProxyError::BadRequest(_))
        ));
    }
}
