//! Request bodies and headers, decoded once at the edge with the API's own errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::error::RuntimeError;

/// A JSON body; an empty body reads as `{}` (so bodies whose fields are all optional may be
/// left out). Malformed JSON is 400 `invalid_request`.
pub struct JsonBody<T>(pub T);

/// Decodes `body` as [`JsonBody`] does.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RuntimeError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| RuntimeError::Invalid(format!("a JSON body is required: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| RuntimeError::Invalid(format!("body: {e}")))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_json(&body)
            .map(JsonBody)
            .map_err(|error| ApiError(error).into_response())
    }
}

/// The `Idempotency-Key` header, when given.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .headers
            .get("idempotency-key")
            .map(|value| {
                value.to_str().map(str::to_string).map_err(|_| {
                    RuntimeError::Invalid("Idempotency-Key must be visible ASCII".into())
                })
            })
            .transpose()
            .map(IdempotencyKey)
            .map_err(ApiError)
    }
}

/// The query string, decoded as `T`. A malformed one is 400 `invalid_request` with a JSON body,
/// as every other bad input is.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|rejection| {
                ApiError(RuntimeError::Invalid(format!(
                    "query string: {}",
                    rejection.body_text()
                )))
            })
    }
}
