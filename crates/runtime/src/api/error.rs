//! Errors as JSON: `{"error": {"code": "...", "message": "...", ...}}`, with the status of the
//! [`RuntimeError`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::RuntimeError;

/// What every refusal and failure answers.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error: a stable code, a message for people, and what the code needs besides.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// The transfer a failed paid request left reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// `no_payable_offer`: why each offer could not be paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// `egress_refused`: the host of the refused URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `egress_refused`: the non-public address the host is or resolves to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl ErrorDetail {
    pub(crate) fn new(code: &str, message: &str) -> ErrorDetail {
        ErrorDetail {
            code: code.into(),
            message: message.into(),
            transfer_id: None,
            reasons: None,
            host: None,
            address: None,
        }
    }

    pub(crate) fn into_response(self, status: u16) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(ErrorBody { error: self })).into_response()
    }
}

/// A [`RuntimeError`] on its way out as an HTTP answer.
pub struct ApiError(pub(crate) RuntimeError);

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
        let status = error.status();
        let mut detail = ErrorDetail::new(error.code(), &error.to_string());
        detail.transfer_id = error.transfer_id().map(str::to_string);
        match error {
            RuntimeError::NotPayable { reasons } => detail.reasons = Some(reasons),
            RuntimeError::EgressRefused { host, address, .. } => {
                detail.host = Some(host);
                detail.address = Some(address);
            }
            _ => {}
        }
        detail.into_response(status)
    }
}

/// What a handler answers: a typed body, or an error.
pub type ApiResult<T> = Result<T, ApiError>;
