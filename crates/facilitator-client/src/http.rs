//! [`HttpFacilitator`]: the facilitator HTTP API over reqwest.

use std::time::Duration;

use bursar_protocol::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Facilitator, FacilitatorError};

/// Time allowed to open a connection to the facilitator.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 5;
/// Time allowed for a whole `/verify` exchange.
pub const VERIFY_TIMEOUT_SECONDS: u64 = 15;
/// Time allowed for a whole `/settle` exchange; settlement waits for a transaction receipt.
pub const SETTLE_TIMEOUT_SECONDS: u64 = 90;
/// Time allowed for a whole `/supported` exchange.
pub const SUPPORTED_TIMEOUT_SECONDS: u64 = 10;
/// Largest facilitator response body read.
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024;
/// Most characters of an unexpected response body kept in [`FacilitatorError::Status`].
pub const ERROR_BODY_CHARS_MAX: usize = 512;

/// A facilitator reached over HTTP.
///
/// `base_url` is the facilitator's root, for example `https://x402.org/facilitator`; requests go
/// to `{base_url}/verify`, `{base_url}/settle` and `{base_url}/supported`.
#[derive(Clone)]
pub struct HttpFacilitator {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for HttpFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFacilitator")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HttpFacilitator {
    /// A client for the facilitator at `base_url` (http or https), with Bursar's timeouts.
    pub fn new(base_url: &str) -> Result<Self, FacilitatorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECONDS))
            .build()
            .map_err(|e| FacilitatorError::Transport(error_chain(&e)))?;
        Self::with_client(http, base_url)
    }

    /// A client for the facilitator at `base_url` that uses the given reqwest client. Per-request
    /// timeouts are still applied.
    pub fn with_client(http: reqwest::Client, base_url: &str) -> Result<Self, FacilitatorError> {
        let parsed =
            url::Url::parse(base_url).map_err(|e| FacilitatorError::InvalidUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FacilitatorError::InvalidUrl(format!(
                "{base_url:?} is not an http or https url"
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(FacilitatorError::InvalidUrl(format!(
                "{base_url:?} must not carry a query or fragment"
            )));
        }
        Ok(HttpFacilitator {
            http,
            base_url: parsed.as_str().trim_end_matches('/').to_string(),
            api_key: None,
        })
    }

    /// Sends `Authorization: Bearer <api_key>` with every request.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        body: Option<Value>,
        timeout_seconds: u64,
        is_failure_document: fn(&T) -> bool,
    ) -> Result<T, FacilitatorError> {
        let url = format!("{}/{endpoint}", self.base_url);
        let mut request = self
            .http
            .request(method, &url)
            .timeout(Duration::from_secs(timeout_seconds))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(%url, error = %error_chain(&e), "facilitator request failed");
            FacilitatorError::Transport(error_chain(&e))
        })?;
        let status = response.status();
        let body = read_limited(response).await;
        if status.is_success() {
            let body = body?.ok_or_else(|| {
                FacilitatorError::Decode(format!(
                    "response body is larger than {RESPONSE_BYTES_MAX} bytes"
                ))
            })?;
            return serde_json::from_slice(&body).map_err(|e| {
                tracing::warn!(%url, error = %e, "facilitator response is not the expected document");
                FacilitatorError::Decode(e.to_string())
            });
        }
        // Some facilitators report a failed verification or settlement with a 4xx status and a
        // regular document: that document is the answer. Anything else is a status error.
        let body = match body? {
            Some(body) => body,
            None => {
                return Err(FacilitatorError::Status {
                    status: status.as_u16(),
                    body: format!("(body larger than {RESPONSE_BYTES_MAX} bytes)"),
                });
            }
        };
        if let Ok(document) = serde_json::from_slice::<T>(&body)
            && is_failure_document(&document)
        {
            tracing::debug!(%url, %status, "facilitator reported a failure with an error status");
            return Ok(document);
        }
        tracing::warn!(%url, %status, "facilitator answered an error status");
        Err(FacilitatorError::Status {
            status: status.as_u16(),
            body: truncate(&String::from_utf8_lossy(&body)),
        })
    }
}

#[async_trait::async_trait]
impl Facilitator for HttpFacilitator {
    async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        self.exchange(
            reqwest::Method::POST,
            "verify",
            Some(request.to_json_value()),
            VERIFY_TIMEOUT_SECONDS,
            |response: &VerifyResponse| !response.is_valid,
        )
        .await
    }

    async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, FacilitatorError> {
        self.exchange(
            reqwest::Method::POST,
            "settle",
            Some(request.to_json_value()),
            SETTLE_TIMEOUT_SECONDS,
            |response: &SettleResponse| !response.success,
        )
        .await
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        self.exchange(
            reqwest::Method::GET,
            "supported",
            None,
            SUPPORTED_TIMEOUT_SECONDS,
            |_: &SupportedResponse| false,
        )
        .await
    }
}

/// Reads a body of at most [`RESPONSE_BYTES_MAX`] bytes; `None` when it is larger.
async fn read_limited(
    mut response: reqwest::Response,
) -> Result<Option<Vec<u8>>, FacilitatorError> {
    if response
        .content_length()
        .is_some_and(|length| length > RESPONSE_BYTES_MAX as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FacilitatorError::Transport(error_chain(&e)))?
    {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn truncate(text: &str) -> String {
    let mut chars = text.chars();
    let mut kept: String = chars.by_ref().take(ERROR_BODY_CHARS_MAX).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    kept
}

/// An error and its sources on one line: reqwest's top-level message alone rarely says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalized_and_checked() {
        let f = HttpFacilitator::new("https://x402.org/facilitator/").unwrap();
        assert_eq!(f.base_url(), "https://x402.org/facilitator");
        let f = HttpFacilitator::new("http://127.0.0.1:4021").unwrap();
        assert_eq!(f.base_url(), "http://127.0.0.1:4021");
        assert!(matches!(
            HttpFacilitator::new("ftp://example.com"),
            Err(FacilitatorError::InvalidUrl(_))
        ));
        assert!(matches!(
            HttpFacilitator::new("not a url"),
            Err(FacilitatorError::InvalidUrl(_))
        ));
        assert!(matches!(
            HttpFacilitator::new("http://x/?a=b"),
            Err(FacilitatorError::InvalidUrl(_))
        ));
    }

    #[test]
    fn debug_hides_the_api_key() {
        let f = HttpFacilitator::new("http://x")
            .unwrap()
            .with_api_key("secret");
        assert!(!format!("{f:?}").contains("secret"));
    }

    #[test]
    fn truncation_keeps_the_start() {
        let long = "é".repeat(ERROR_BODY_CHARS_MAX + 10);
        let short = truncate(&long);
        assert_eq!(short.chars().count(), ERROR_BODY_CHARS_MAX + 1);
        assert_eq!(truncate("abc"), "abc");
    }
}
