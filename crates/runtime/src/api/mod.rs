//! The runtime's HTTP API (JSON). The OpenAPI document, generated from the handlers and their
//! types, is served at `/openapi.json`.
//!
//! Two kinds of caller, both as `Authorization: Bearer <credential>` ([`auth`]):
//! - operators, with an operator key (`bok_...`): wallets, grants, sessions, the ledger;
//! - agents, with a session token (`bst_...`): their own session only (read it, pay through it).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a status that fits: 401 for a
//! missing or unknown credential, 403 for a valid one that may not do this (or a payment the
//! session may not make), 404, 409 for idempotency conflicts, 402 when nothing offered is
//! payable, 502 when the seller failed or refused, 503 when the chain or database is down.

pub mod auth;
mod body;
mod compensations;
mod error;
mod fetch;
mod grants;
mod ledger;
mod policies;
mod sessions;
mod wallets;

use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use fetch::PaymentBody;
pub use policies::LEARN_DAYS_MAX;

use crate::service::Runtime;

/// Largest request body the API reads (a fetch carries the agent's request body, base64).
pub const API_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most ledger entries one page returns.
pub const LEDGER_PAGE_MAX: usize = 1000;

/// The runtime's routes, ready to serve.
pub fn router(runtime: Runtime) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_document))
        .route(
            "/v1/wallets",
            post(wallets::create_wallet).get(wallets::list_wallets),
        )
        .route("/v1/wallets/{wallet}", get(wallets::show_wallet))
        .route(
            "/v1/grants",
            post(grants::create_grant).get(grants::list_grants),
        )
        .route("/v1/grants/revoke-all", post(grants::revoke_all_grants))
        .route("/v1/grants/{grant}/revoke", post(grants::revoke_grant))
        .route("/v1/sessions", post(sessions::create_session))
        .route("/v1/sessions/{session}", get(sessions::show_session))
        .route(
            "/v1/sessions/{session}/close",
            post(sessions::close_session),
        )
        .route("/v1/sessions/{session}/fetch", post(fetch::fetch))
        .route("/v1/sessions/{session}/tools/call", post(fetch::call_tool))
        .route("/v1/sessions/{session}/alerts", get(ledger::session_alerts))
        .route(
            "/v1/sessions/{session}/transfers",
            get(sessions::session_transfers),
        )
        .route(
            "/v1/sessions/{session}/failures",
            post(compensations::mark_failed),
        )
        .route(
            "/v1/sessions/{session}/compensations",
            get(compensations::session_compensations),
        )
        .route("/v1/compensations", get(compensations::list_compensations))
        .route(
            "/v1/{scope}/{subject}/policy",
            get(policies::show_policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/v1/policy/learn", get(policies::learn_policy))
        .route("/v1/pauses", get(policies::list_pauses))
        .route("/v1/pauses/lift", post(policies::lift_pause))
        .route("/v1/ledger", get(ledger::ledger))
        .route("/v1/alerts", get(ledger::list_alerts))
        .route("/v1/ledger/reconcile", get(ledger::reconcile))
        .fallback(not_found)
        .with_state(runtime)
        .layer(RequestBodyLimitLayer::new(API_BODY_BYTES_MAX))
        .layer(CatchPanicLayer::custom(|_| {
            ErrorDetail::new("internal_error", "internal error").into_response(500)
        }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bursar agent payments runtime",
        version = "1",
        description = "Wallets the agent never sees, grants, payment sessions with budgets, and \
            paying x402 sellers for agents. Amounts in *Atomic fields are decimal strings of the \
            token's smallest unit; maxSpendAmount is a decimal string in the currency (\"5.00\")."
    ),
    paths(
        health, openapi_document,
        wallets::create_wallet, wallets::list_wallets, wallets::show_wallet,
        grants::create_grant, grants::list_grants, grants::revoke_grant,
        grants::revoke_all_grants,
        sessions::create_session, sessions::show_session, sessions::close_session,
        sessions::session_transfers, fetch::fetch, fetch::call_tool,
        compensations::mark_failed, compensations::session_compensations,
        compensations::list_compensations,
        policies::show_policy, policies::put_policy, policies::delete_policy,
        policies::list_pauses, policies::lift_pause, policies::learn_policy,
        ledger::ledger, ledger::list_alerts, ledger::session_alerts, ledger::reconcile,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Conventions),
)]
struct ApiDoc;

/// What every operation shares: the bearer scheme, and errors as [`ErrorBody`].
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An operator key (bok_...) or, for agent endpoints, a session token \
                         (bst_...).",
                    ))
                    .build(),
            ),
        );
        let error = ResponseBuilder::new()
            .description("An error, with the status that fits its code")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                add_default(operation, &error);
            }
        }
    }
}

fn add_default(operation: &mut Operation, error: &utoipa::openapi::Response) {
    operation
        .responses
        .responses
        .insert("default".into(), error.clone().into());
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`openapi`] as JSON, as `/openapi.json` serves it.
pub fn openapi_json() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    &DOCUMENT
}

fn created_status(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// `ok`.
    pub status: &'static str,
    /// CAIP-2.
    pub network: String,
    /// The chain's latest block.
    pub block_number: u64,
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = HealthBody)))]
async fn health(State(runtime): State<Runtime>) -> Response {
    match runtime.chain().latest_block().await {
        Ok(block) => axum::Json(HealthBody {
            status: "ok",
            network: runtime.currency().network.caip2(),
            block_number: block.number,
        })
        .into_response(),
        Err(error) => ApiError(error.into()).into_response(),
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, body = Object, description = "This document")))]
async fn openapi_document() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

async fn not_found() -> Response {
    ErrorDetail::new("not_found", "no such endpoint; see GET /openapi.json").into_response(404)
}

/// An address or 32-byte value as the API writes it: `0x` and lowercase hex.
pub(crate) fn hex(value: impl std::fmt::LowerHex) -> String {
    format!("{value:#x}")
}
