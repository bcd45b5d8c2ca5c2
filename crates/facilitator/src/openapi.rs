//! The facilitator's OpenAPI document, generated from its handlers ([`crate::server`]) and the
//! x402 answer types, served at `GET /openapi.json`; and the bodies of its own that x402 does
//! not define (errors, malformed requests, health).

use std::sync::LazyLock;

use bursar_protocol::{SettleResponse, SupportedResponse, VerifyResponse};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Refusals and failures outside x402's answers: `{"error": "<code>", "message": "..."}`
/// (`unauthorized`, `rate_limited`, `not_found`, `chain_unreachable`, ...).
#[derive(Serialize, ToSchema)]
pub struct FailureBody {
    pub error: String,
    pub message: String,
}

/// A `/verify` body that could not be read: x402's answer, plus what was wrong.
#[derive(Serialize, ToSchema)]
pub struct MalformedVerifyBody {
    #[serde(flatten)]
    pub response: VerifyResponse,
    pub error: String,
}

/// A refused `/settle`: x402's answer, plus what was wrong when the body could not be read.
#[derive(Serialize, ToSchema)]
pub struct SettleRefusalBody {
    #[serde(flatten)]
    pub response: SettleResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorHealthBody {
    /// `ok`.
    pub status: &'static str,
    /// CAIP-2.
    pub network: String,
    pub block_number: u64,
    /// The address that sends settlement transactions (EIP-55).
    pub signer: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bursar x402 facilitator",
        version = "1",
        description = "Verifies and settles x402 payments (scheme exact, EIP-3009) on one \
            network. Request bodies are x402's: {x402Version, paymentPayload, \
            paymentRequirements}."
    ),
    paths(
        crate::server::verify, crate::server::settle, crate::server::supported,
        crate::server::health, crate::server::metrics, crate::server::openapi_document,
    ),
    components(schemas(FailureBody, VerifyResponse, SettleResponse, SupportedResponse)),
    modifiers(&Conventions),
)]
struct FacilitatorDoc;

/// What every operation shares: the API key scheme, and failures as [`FailureBody`].
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (bsk_...), where the facilitator requires one or to be \
                         limited by key rather than by address.",
                    ))
                    .build(),
            ),
        );
        let failure = ResponseBuilder::new()
            .description("A refusal or failure outside x402's answers")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("FailureBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                add_default(operation, &failure);
            }
        }
    }
}

fn add_default(operation: &mut Operation, failure: &utoipa::openapi::Response) {
    operation
        .responses
        .responses
        .insert("default".into(), failure.clone().into());
}

/// The facilitator's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    FacilitatorDoc::openapi()
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
