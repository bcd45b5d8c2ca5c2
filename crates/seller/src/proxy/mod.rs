//! A paywall in front of any HTTP service: [`ReverseProxy`] forwards requests to an upstream
//! server, and the [`PaywallLayer`] around it charges for the priced ones.
//!
//! ```text
//! client ──► PaywallLayer ──► ReverseProxy ──► upstream (any HTTP server)
//!            (402 / verify)   (forward, stream)
//!            (settle on 2xx) ◄─────────────────── status + headers, then the body streams
//! ```
//!
//! For a priced request the paywall verifies the payment first; the request then goes upstream,
//! and the payment is settled only when the upstream answered 2xx. The paywall holds the
//! upstream's response head until the settlement is done (the `PAYMENT-RESPONSE` header goes out
//! with it), then the body streams through; a failed settlement drops the upstream's response,
//! body unread. Non-2xx answers pass through unsettled.
//!
//! Forwarding:
//! - Request and response bodies are streamed, never buffered whole.
//! - Hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade`) are not forwarded, nor is `Host` (the upstream's
//!   own is sent) or the payment headers (`PAYMENT-SIGNATURE`, `X-PAYMENT`): the upstream never
//!   sees a payment. `X-Forwarded-For` (appended to), `X-Forwarded-Host` and `X-Forwarded-Proto`
//!   tell the upstream who asked. Settlement headers the upstream itself sends are dropped.
//! - Redirects are passed to the client, not followed.
//! - Paths that servers normalize differently (`.` or `..` segments, `//`, an encoded `/` or
//!   `\`, control characters) are refused with `400` before anything is forwarded, so a path
//!   cannot reach a priced upstream route while dodging its pattern.
//! - The upstream is given [`ProxyOptions::connect_timeout`] to accept the connection and
//!   [`ProxyOptions::response_timeout`] to send its response head. An upstream that does not answer
//!   in time is a `504`, one that cannot be reached a `502`, both JSON `{error}`; neither is
//!   settled.
//!
//! Requests that no priced route matches are forwarded free by default. With
//! [`ProxyOptions::deny_unpriced`], only the [`ProxyOptions::free_routes`] are, and any other
//! unpriced request is a `404`. The routes of a configuration file are read by [`file`](mod@file).

pub mod file;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::TryStreamExt;
use http_body_util::LengthLimitError;
use serde_json::json;

use crate::pattern::{PathMatching, RoutePattern, percent_decode};
use crate::{PaymentInfo, PaywallLayer, SellerError};

/// How long the upstream has to accept a connection, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the upstream has to send its response head once the request is sent, by default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that describe one connection, not the message: never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Payment headers a client sends: for the paywall only.
const PAYMENT_REQUEST_HEADERS: [&str; 2] = ["payment-signature", "x-payment"];
/// Settlement headers only the paywall may send.
const PAYMENT_RESPONSE_HEADERS: [&str; 2] = ["payment-response", "x-payment-response"];

/// A route forwarded without payment when unpriced requests are denied.
#[derive(Debug, Clone)]
pub struct FreeRoute {
    /// Empty: any method.
    methods: Vec<Method>,
    pattern: RoutePattern,
}

impl FreeRoute {
    /// `path` is a pattern as for priced routes (`/health`, `/docs/*page`); matched strictly.
    pub fn new(methods: Vec<Method>, path: &str) -> Result<FreeRoute, SellerError> {
        let pattern = RoutePattern::parse(path).map_err(|message| SellerError::InvalidRoute {
            route: path.to_string(),
            message,
        })?;
        Ok(FreeRoute { methods, pattern })
    }

    pub fn path(&self) -> &str {
        self.pattern.as_str()
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    fn allows(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.pattern.matches(path, PathMatching::Strict).is_some()
    }
}

/// How the proxy forwards.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The scheme clients used, sent upstream as `X-Forwarded-Proto` (`http` or `https`).
    pub forwarded_proto: String,
    /// Refuse (`404`) unpriced requests unless a free route allows them.
    pub deny_unpriced: bool,
    pub free_routes: Vec<FreeRoute>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            forwarded_proto: "http".into(),
            deny_unpriced: false,
            free_routes: Vec::new(),
        }
    }
}

/// Forwards requests to one upstream server.
#[derive(Debug)]
pub struct ReverseProxy {
    client: reqwest::Client,
    /// `http://host:port[/prefix]`, without a trailing slash.
    base: String,
    options: ProxyOptions,
}

impl ReverseProxy {
    /// A proxy to `upstream`, an `http://` URL; its path, if any, prefixes every forwarded path.
    pub fn new(upstream: &str, options: ProxyOptions) -> Result<ReverseProxy, SellerError> {
        let invalid = |message: &str| SellerError::InvalidUpstream {
            url: upstream.to_string(),
            message: message.to_string(),
        };
        let parsed = url::Url::parse(upstream).map_err(|e| invalid(&e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(invalid(
                "the upstream must be an http:// URL (run the paywall next to the service)",
            ));
        }
        if parsed.host_str().is_none() {
            return Err(invalid("the upstream URL has no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "the upstream URL must not carry a query or fragment",
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("the upstream URL must not carry credentials"));
        }
        if options.connect_timeout.is_zero() || options.response_timeout.is_zero() {
            return Err(invalid("timeouts must be positive"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| invalid(&format!("cannot build the HTTP client: {e}")))?;
        Ok(ReverseProxy {
            client,
            base: parsed.as_str().trim_end_matches('/').to_string(),
            options,
        })
    }

    /// The upstream's base URL.
    pub fn upstream(&self) -> &str {
        &self.base
    }

    /// An axum router that forwards every request to the upstream, behind `paywall`.
    ///
    /// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` for
    /// `X-Forwarded-For` to name the client.
    pub fn into_router(self, paywall: PaywallLayer) -> Router {
        Router::new()
            .fallback(forward)
            .with_state(Arc::new(self))
            .layer(paywall)
    }

    /// Forwards one request and returns the upstream's answer (or the proxy's own error).
    pub async fn forward(&self, request: Request) -> Response {
        let path = request.uri().path();
        if let Err(message) = check_path(path) {
            return json_error(StatusCode::BAD_REQUEST, message);
        }
        let priced = request.extensions().get::<PaymentInfo>().is_some();
        if !priced
            && self.options.deny_unpriced
            && !self
                .options
                .free_routes
                .iter()
                .any(|route| route.allows(request.method(), path))
        {
            return json_error(StatusCode::NOT_FOUND, "no such route");
        }
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{}{path_and_query}", self.base);
        let (parts, body) = request.into_parts();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let headers = self.upstream_headers(&parts.headers, client);

        let mut upstream = reqwest::Request::new(
            parts.method.clone(),
            match url.parse() {
                Ok(url) => url,
                Err(_) => return json_error(StatusCode::BAD_REQUEST, "the request URL is invalid"),
            },
        );
        *upstream.headers_mut() = headers;
        let body_too_large = Arc::new(AtomicBool::new(false));
        // A body known to be empty is sent as none (not as an empty chunked body).
        if body.size_hint().exact() != Some(0) {
            let flag = body_too_large.clone();
            let stream = body.into_data_stream().map_err(move |error| {
                let error = error.into_inner();
                if error.downcast_ref::<LengthLimitError>().is_some() {
                    flag.store(true, Ordering::Relaxed);
                }
                error
            });
            *upstream.body_mut() = Some(reqwest::Body::wrap_stream(stream));
        }

        let method = parts.method;
        let answer =
            tokio::time::timeout(self.options.response_timeout, self.client.execute(upstream))
                .await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Err(_elapsed) => {
                tracing::warn!(%method, path = %parts.uri.path(), timeout = ?self.options.response_timeout, "upstream did not answer in time");
                return json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                );
            }
            Ok(Err(error)) => {
                return self.upstream_failure(&method, parts.uri.path(), &error, &body_too_large);
            }
        };
        let status = response.status();
        let mut headers = response.headers().clone();
        strip_hop_by_hop(&mut headers);
        for name in PAYMENT_RESPONSE_HEADERS {
            headers.remove(name);
        }
        let mut answer = Response::new(Body::from_stream(response.bytes_stream()));
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        answer
    }

    fn upstream_failure(
        &self,
        method: &Method,
        path: &str,
        error: &reqwest::Error,
        body_too_large: &AtomicBool,
    ) -> Response {
        if body_too_large.load(Ordering::Relaxed) {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than the paywall accepts",
            );
        }
        if error.is_connect() && error.is_timeout() {
            tracing::warn!(%method, %path, %error, "upstream did not accept the connection in time");
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not accept the connection in time",
            );
        }
        if error.is_connect() {
            tracing::warn!(%method, %path, %error, "upstream unreachable");
            return json_error(StatusCode::BAD_GATEWAY, "the upstream is unreachable");
        }
        tracing::warn!(%method, %path, %error, "upstream request failed");
        json_error(StatusCode::BAD_GATEWAY, "the upstream request failed")
    }

    /// The request's headers as sent upstream.
    fn upstream_headers(&self, incoming: &HeaderMap, client: Option<SocketAddr>) -> HeaderMap {
        let mut headers = incoming.clone();
        let host = headers.remove(HOST);
        strip_hop_by_hop(&mut headers);
        for name in PAYMENT_REQUEST_HEADERS {
            headers.remove(name);
        }
        if let Some(client) = client {
            let ip = client.ip().to_string();
            let forwarded_for = match incoming
                .get("x-forwarded-for")
                .and_then(|value| value.to_str().ok())
            {
                Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
                _ => ip,
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
                headers.insert(HeaderName::from_static("x-forwarded-for"), value);
            }
        }
        match host {
            Some(host) => {
                headers.insert(HeaderName::from_static("x-forwarded-host"), host);
            }
            None => {
                headers.remove("x-forwarded-host");
            }
        }
        if let Ok(value) = HeaderValue::from_str(&self.options.forwarded_proto) {
            headers.insert(HeaderName::from_static("x-forwarded-proto"), value);
        }
        headers
    }
}

async fn forward(State(proxy): State<Arc<ReverseProxy>>, request: Request) -> Response {
    proxy.forward(request).await
}

/// Removes the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Refuses paths that servers are known to normalize in different ways.
fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the request path must start with '/'");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let count = segments.len();
    for (index, segment) in segments.into_iter().enumerate() {
        let decoded = percent_decode(segment);
        if decoded.is_empty() && index + 1 < count {
            return Err("the request path must not contain an empty segment (\"//\")");
        }
        if decoded == b"." || decoded == b".." {
            return Err("the request path must not contain \".\" or \"..\" segments");
        }
        if decoded.iter().any(|b| *b == b'/' || *b == b'\\') {
            return Err("the request path must not contain an encoded '/' or '\\'");
        }
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err("the request path must not contain control characters");
        }
    }
    Ok(())
}

fn json_error(status: StatusCode, error: &str) -> Response {
    let body = serde_json::to_vec(&json!({ "error": error })).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths_are_refused() {
        for good in [
            "/",
            "/forecast/paris",
            "/forecast/paris/",
            "/a%20b",
            "/x/.well",
            "/..a",
        ] {
            assert!(check_path(good).is_ok(), "{good:?} was refused");
        }
        for bad in [
            "/a/../b",
            "/..",
            "/./a",
            "/a/%2e%2E/b",
            "/a//b",
            "//a",
            "/a%2Fb",
            "/a%5cb",
            "/a%00b",
            "relative",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn hop_by_hop_and_payment_headers_stay_here() {
        let proxy = ReverseProxy::new("http://127.0.0.1:9", ProxyOptions::default()).unwrap();
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("host", "shop.example"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("payment-signature", "eyJ9"),
            ("x-payment", "eyJ9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("authorization", "Bearer upstream-token"),
            ("content-type", "application/json"),
        ] {
            incoming.append(name, HeaderValue::from_static(value));
        }
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let sent = proxy.upstream_headers(&incoming, Some(client));
        for gone in [
            "host",
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "payment-signature",
            "x-payment",
        ] {
            assert!(!sent.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(sent["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(sent["x-forwarded-host"], "shop.example");
        assert_eq!(sent["x-forwarded-proto"], "http");
        assert_eq!(sent["authorization"], "Bearer upstream-token");
        assert_eq!(sent["content-type"], "application/json");
    }

    #[test]
    fn upstreams_must_be_plain_http_urls() {
        let options = ProxyOptions::default;
        assert_eq!(
            ReverseProxy::new("http://127.0.0.1:8000/api/", options())
                .unwrap()
                .upstream(),
            "http://127.0.0.1:8000/api"
        );
        for bad in [
            "127.0.0.1:8000",
            "https://example.com",
            "ftp://example.com",
            "http://example.com/?a=1",
            "http://user:pw@example.com",
        ] {
            assert!(ReverseProxy::new(bad, options()).is_err(), "{bad:?}");
        }
        let zero = ProxyOptions {
            response_timeout: Duration::ZERO,
            ..options()
        };
        assert!(ReverseProxy::new("http://127.0.0.1:8000", zero).is_err());
    }
}
