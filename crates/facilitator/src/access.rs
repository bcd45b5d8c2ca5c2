//! Who may call `/verify` and `/settle`, and how often.
//!
//! - By default both require `Authorization: Bearer <key>` with a key from the
//!   [`bursar_store::KeyStore`]; `/supported` and `/health` are always open. [`AccessPolicy`]
//!   can open `/verify` and/or `/settle` to anonymous callers (limited per client IP).
//! - A missing, unknown or revoked key on a closed endpoint, or any unknown or revoked key even on
//!   an open one, is answered 401 with `WWW-Authenticate: Bearer`; the facilitator is not called.
//! - Every admitted call takes a token from its key's bucket (its limits) or, anonymous, from its
//!   IP's bucket ([`AccessPolicy::anonymous`]); an empty bucket answers 429 with `Retry-After`.
//!   A `/settle` by a key with a daily quota also counts against it (429 once spent).
//! - When the limiter or the key store cannot answer (Redis or the database down), `/settle`
//!   fails closed with 503: an unlimited settle spends the facilitator's gas. `/verify` spends
//!   nothing and stays available: it is admitted without a token and the failure is logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bursar_store::{KeyDigest, KeyStore};
use serde_json::json;

use crate::limit::{Admission, BucketRule, RateLimiter};

/// Which endpoints anonymous callers may use, and their per-IP limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    pub open_verify: bool,
    pub open_settle: bool,
    /// Each anonymous client IP's bucket.
    pub anonymous: BucketRule,
}

impl Default for AccessPolicy {
    /// Keys required on both `/verify` and `/settle`.
    fn default() -> Self {
        AccessPolicy {
            open_verify: false,
            open_settle: false,
            anonymous: BucketRule {
                rate_per_second: 20,
                burst: 40,
            },
        }
    }
}

/// Everything the access layer needs.
#[derive(Clone)]
pub struct Access {
    pub policy: AccessPolicy,
    pub keys: Arc<dyn KeyStore>,
    pub limiter: Arc<dyn RateLimiter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Verify,
    Settle,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn too_many(code: &str, message: &str, retry_after: Duration) -> Response {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, code, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits"),
    );
    response
}

fn bearer(request: &Request) -> Option<Result<&str, ()>> {
    let value = request.headers().get(header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some(Err(()));
    };
    let Some((scheme, key)) = text.split_once(' ') else {
        return Some(Err(()));
    };
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Some(Err(()));
    }
    Some(Ok(key.trim()))
}

fn day_and_rest() -> (i64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let day = i64::try_from(now / 86_400).unwrap_or(i64::MAX);
    (day, Duration::from_secs(86_400 - now % 86_400))
}

/// The middleware: see the module docs. Install with [`crate::protected_router`].
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    let endpoint = match request.uri().path() {
        "/verify" => Endpoint::Verify,
        "/settle" => Endpoint::Settle,
        _ => return next.run(request).await,
    };
    let open = match endpoint {
        Endpoint::Verify => access.policy.open_verify,
        Endpoint::Settle => access.policy.open_settle,
    };
    let (bucket, rule, quota) = match bearer(&request) {
        None if open => {
            let ip = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string());
            (format!("ip:{ip}"), access.policy.anonymous, None)
        }
        None => return unauthorized("this endpoint needs Authorization: Bearer <api key>"),
        Some(Err(())) => return unauthorized("the Authorization header is not Bearer <api key>"),
        Some(Ok(key)) => match access.keys.lookup(&KeyDigest::of(key)).await {
            Ok(Some(record)) if !record.is_revoked() => {
                let rule = BucketRule {
                    rate_per_second: record.limits.requests_per_second,
                    burst: record.limits.burst,
                };
                let quota = record
                    .limits
                    .daily_settlements_max
                    .map(|max| (record.id.clone(), max));
                (format!("key:{}", record.id), rule, quota)
            }
            Ok(Some(_)) => return unauthorized("this api key was revoked"),
            Ok(None) => return unauthorized("unknown api key"),
            Err(failure) => {
                tracing::error!(error = %failure, "api key lookup failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_store_unavailable",
                    "api keys cannot be checked right now; try again later",
                );
            }
        },
    };
    match access.limiter.take(&bucket, rule).await {
        Ok(Admission::Allowed) => {}
        Ok(Admission::Limited { retry_after }) => {
            return too_many("rate_limited", "too many requests", retry_after);
        }
        Err(failure) if endpoint == Endpoint::Settle => {
            tracing::error!(error = %failure, "rate limiter unavailable; refusing /settle");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limiter_unavailable",
                "the rate limiter is unavailable, so settlement is refused; try again later",
            );
        }
        Err(failure) => {
            tracing::warn!(error = %failure, "rate limiter unavailable; admitting /verify");
        }
    }
    if endpoint == Endpoint::Settle
        && let Some((id, max)) = quota
    {
        let (day, rest) = day_and_rest();
        match access.keys.take_daily_settlement(&id, day, max).await {
            Ok(true) => {}
            Ok(false) => {
                return too_many(
                    "quota_exceeded",
                    "this api key's daily settlement quota is spent",
                    rest,
                );
            }
            Err(failure) => {
                tracing::error!(error = %failure, "daily quota unavailable; refusing /settle");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_store_unavailable",
                    "the daily quota cannot be checked right now; try again later",
                );
            }
        }
    }
    next.run(request).await
}
