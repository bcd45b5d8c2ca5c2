//! The facilitator's HTTP API: `POST /verify`, `POST /settle`, `GET /supported`, `GET /health`,
//! `GET /metrics` (Prometheus, see [`crate::metrics`]) and `GET /openapi.json` (generated, see
//! [`crate::openapi`]).
//!
//! `/metrics` is open to anyone, also behind [`protected_router`] (it tells counts, never keys or
//! payments). [`RouterOptions`] leaves it out, and [`metrics_router`] serves it alone, on another
//! listener (a private address, say).
//!
//! Layers, outermost first: the request counter of `bursar_facilitator_http_requests_total`, panic catcher (a bug answers 500 JSON, never a dropped connection),
//! request body limit, the access layer (with [`protected_router`]), then the routes. Malformed bodies get 400 with a JSON body in the shape of
//! the endpoint's answer (`isValid: false` / `success: false`) plus an `error` field, so both
//! x402 clients and people can read it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bursar_protocol::types::BODY_BYTES_MAX;
use bursar_protocol::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::access::{Access, guard};
use crate::metrics::{FacilitatorMetrics, METRICS_CONTENT_TYPE, route_label};
use crate::openapi::{
    FacilitatorHealthBody, FailureBody, MalformedVerifyBody, SettleRefusalBody, openapi_json,
};
use crate::service::LocalFacilitator;

/// What the routers serve besides the x402 endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterOptions {
    /// Serve `GET /metrics`. Default: true.
    pub metrics: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions { metrics: true }
    }
}

/// The facilitator's routes without access control (anyone may verify and settle): for
/// in-process use and trusted networks. Servers use [`protected_router`].
pub fn router(facilitator: LocalFacilitator) -> Router {
    router_with(facilitator, RouterOptions::default())
}

/// [`router`] with `options`.
pub fn router_with(facilitator: LocalFacilitator, options: RouterOptions) -> Router {
    let metrics = facilitator.metrics().clone();
    with_outer_layers(routes(facilitator, options), metrics)
}

/// The routes behind the access layer ([`crate::access`]): API keys, rate limits, quotas.
/// Serve with `into_make_service_with_connect_info::<SocketAddr>()` so anonymous callers are
/// limited per IP.
pub fn protected_router(facilitator: LocalFacilitator, access: Access) -> Router {
    protected_router_with(facilitator, access, RouterOptions::default())
}

/// [`protected_router`] with `options`.
pub fn protected_router_with(
    facilitator: LocalFacilitator,
    access: Access,
    options: RouterOptions,
) -> Router {
    let metrics = facilitator.metrics().clone();
    with_outer_layers(
        routes(facilitator, options).layer(axum::middleware::from_fn_with_state(access, guard)),
        metrics,
    )
}

/// `GET /metrics` alone, to serve on a listener of its own (with
/// [`RouterOptions`] `metrics: false` on the main one).
pub fn metrics_router(facilitator: LocalFacilitator) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(facilitator)
}

fn routes(facilitator: LocalFacilitator, options: RouterOptions) -> Router {
    let mut routes = Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .route("/supported", get(supported))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_document));
    if options.metrics {
        routes = routes.route("/metrics", get(metrics));
    }
    let catalog = facilitator.catalog();
    let mut routes = routes.with_state(facilitator);
    if let Some(catalog) = catalog {
        routes = routes.merge(bursar_catalog::router(catalog));
    }
    routes.fallback(not_found)
}

fn with_outer_layers(routes: Router, metrics: FacilitatorMetrics) -> Router {
    routes
        .layer(RequestBodyLimitLayer::new(BODY_BYTES_MAX))
        .layer(CatchPanicLayer::custom(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error".to_string(),
            )
        }))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            count_requests,
        ))
}

/// Counts every answer in `bursar_facilitator_http_requests_total`.
async fn count_requests(
    State(metrics): State<FacilitatorMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    let response = next.run(request).await;
    metrics.http_request(route, response.status().as_u16());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text exposition (absent when not served on this listener)")))]
pub(crate) async fn metrics(State(facilitator): State<LocalFacilitator>) -> Response {
    let metrics = facilitator.metrics();
    metrics.refresh_pending(facilitator.ledger().as_ref()).await;
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = FailureBody {
        error: code.into(),
        message,
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(post, path = "/verify", tag = "x402", request_body = Object,
    responses((status = 200, body = VerifyResponse, description = "Valid or not, with the reason"),
        (status = 400, body = MalformedVerifyBody, description = "The body could not be read")),
    security((), ("apiKey" = [])))]
pub(crate) async fn verify(State(facilitator): State<LocalFacilitator>, body: Bytes) -> Response {
    match FacilitatorRequest::from_json(&body) {
        Ok(request) => axum::Json(facilitator.verify(&request).await).into_response(),
        Err(error) => {
            let body = MalformedVerifyBody {
                response: VerifyResponse::invalid(error.reason(), error.to_string(), None),
                error: error.to_string(),
            };
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
    }
}

#[utoipa::path(post, path = "/settle", tag = "x402", request_body = Object,
    responses(
        (status = 200, body = SettleResponse, description = "Settled, or x402's failure answer"),
        (status = 400, body = SettleRefusalBody,
            description = "The body could not be read, or its payment id is malformed"),
        (status = 409, body = SettleResponse,
            description = "The payment id names another payment")),
    security((), ("apiKey" = [])))]
pub(crate) async fn settle(State(facilitator): State<LocalFacilitator>, body: Bytes) -> Response {
    match FacilitatorRequest::from_json(&body) {
        Ok(request) => {
            let response = facilitator.settle(&request).await;
            // The payment-identifier extension's statuses: 409 for an id naming another
            // payment, 400 for a malformed id. Other failures keep x402's 200 with a body.
            let status = match response.error_reason.as_ref().map(|reason| reason.as_str()) {
                Some(crate::service::PAYMENT_ID_CONFLICT) => StatusCode::CONFLICT,
                Some(crate::service::PAYMENT_ID_INVALID) => StatusCode::BAD_REQUEST,
                _ => StatusCode::OK,
            };
            (status, axum::Json(response)).into_response()
        }
        Err(error) => {
            let body = SettleRefusalBody {
                response: SettleResponse::failed(
                    error.reason(),
                    error.to_string(),
                    None,
                    String::new(),
                ),
                error: Some(error.to_string()),
            };
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
    }
}

#[utoipa::path(get, path = "/supported", tag = "x402",
    responses((status = 200, body = SupportedResponse)))]
pub(crate) async fn supported(State(facilitator): State<LocalFacilitator>) -> Response {
    axum::Json(facilitator.supported()).into_response()
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = FacilitatorHealthBody),
        (status = 503, body = FailureBody, description = "The chain is unreachable")))]
pub(crate) async fn health(State(facilitator): State<LocalFacilitator>) -> Response {
    match facilitator.chain().latest_block().await {
        Ok(block) => axum::Json(FacilitatorHealthBody {
            status: "ok",
            network: facilitator.network().caip2(),
            block_number: block.number,
            signer: facilitator.sender_address().to_checksum(None),
        })
        .into_response(),
        Err(error) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain_unreachable",
            error.to_string(),
        ),
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = Object, description = "This document")))]
pub(crate) async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the facilitator serves POST /verify, POST /settle, GET /supported, GET /health; see GET /openapi.json".into(),
    )
}
