//! The facilitator's HTTP API: `POST /verify`, `POST /settle`, `GET /supported`, `GET /health`.
//!
//! Layers, outermost first: panic catcher (a bug answers 500 JSON, never a dropped connection),
//! request body limit, the access layer (with [`protected_router`]), then the routes. Malformed bodies get 400 with a JSON body in the shape of
//! the endpoint's answer (`isValid: false` / `success: false`) plus an `error` field, so both
//! x402 clients and people can read it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bursar_protocol::types::BODY_BYTES_MAX;
use bursar_protocol::{FacilitatorRequest, SettleResponse, VerifyResponse};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::access::{Access, guard};
use crate::service::LocalFacilitator;

/// The facilitator's routes without access control (anyone may verify and settle): for
/// in-process use and trusted networks. Servers use [`protected_router`].
pub fn router(facilitator: LocalFacilitator) -> Router {
    with_outer_layers(routes(facilitator))
}

/// The routes behind the access layer ([`crate::access`]): API keys, rate limits, quotas.
/// Serve with `into_make_service_with_connect_info::<SocketAddr>()` so anonymous callers are
/// limited per IP.
pub fn protected_router(facilitator: LocalFacilitator, access: Access) -> Router {
    with_outer_layers(
        routes(facilitator).layer(axum::middleware::from_fn_with_state(access, guard)),
    )
}

fn routes(facilitator: LocalFacilitator) -> Router {
    Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .route("/supported", get(supported))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(facilitator)
}

fn with_outer_layers(routes: Router) -> Router {
    routes
        .layer(RequestBodyLimitLayer::new(BODY_BYTES_MAX))
        .layer(CatchPanicLayer::custom(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error".to_string(),
            )
        }))
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

async fn verify(State(facilitator): State<LocalFacilitator>, body: Bytes) -> Response {
    match FacilitatorRequest::from_json(&body) {
        Ok(request) => axum::Json(facilitator.verify(&request).await).into_response(),
        Err(error) => {
            let mut document = serde_json::to_value(VerifyResponse::invalid(
                error.reason(),
                error.to_string(),
                None,
            ))
            .expect("serializes");
            document["error"] = json!(error.to_string());
            (StatusCode::BAD_REQUEST, axum::Json(document)).into_response()
        }
    }
}

async fn settle(State(facilitator): State<LocalFacilitator>, body: Bytes) -> Response {
    match FacilitatorRequest::from_json(&body) {
        Ok(request) => axum::Json(facilitator.settle(&request).await).into_response(),
        Err(error) => {
            let failed =
                SettleResponse::failed(error.reason(), error.to_string(), None, String::new());
            let mut document = serde_json::to_value(failed).expect("serializes");
            document["error"] = json!(error.to_string());
            (StatusCode::BAD_REQUEST, axum::Json(document)).into_response()
        }
    }
}

async fn supported(State(facilitator): State<LocalFacilitator>) -> Response {
    axum::Json(facilitator.supported()).into_response()
}

async fn health(State(facilitator): State<LocalFacilitator>) -> Response {
    match facilitator.chain().latest_block().await {
        Ok(block) => axum::Json(json!({
            "status": "ok",
            "network": facilitator.network().caip2(),
            "blockNumber": block.number,
            "signer": facilitator.sender_address().to_checksum(None),
        }))
        .into_response(),
        Err(error) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain_unreachable",
            error.to_string(),
        ),
    }
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the facilitator serves POST /verify, POST /settle, GET /supported, GET /health".into(),
    )
}
