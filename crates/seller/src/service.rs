//! The paywall itself: [`PaywallLayer`] and [`PaywallService`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use bursar_facilitator_client::Facilitator;
use bursar_protocol::codec::{
    HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT,
    HEADER_X_PAYMENT_RESPONSE,
};
use bursar_protocol::{
    Amount, ChainAddress, FacilitatorRequest, Network, PaymentPayload, PaymentRequired,
    PaymentRequirements, Resource, SettleResponse, X402Version,
};
use http_body_util::Limited;
use serde_json::{Value, json};
use tower::{Layer, Service};

use crate::config::{Offer, PaywallBuilder};
use crate::pattern::{PathMatching, RoutePattern};

/// What a request paid, available to the handler as a request extension:
/// `Extension(info): Extension<PaymentInfo>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentInfo {
    /// The paying address as the facilitator reported it (or as the payload claims, when the
    /// facilitator did not say).
    pub payer: Option<ChainAddress>,
    pub amount: Amount,
    pub network: Network,
    /// The requirement the payment was verified against.
    pub requirement: PaymentRequirements,
    pub version: X402Version,
    /// The resource URL the payment was asked for.
    pub resource_url: String,
    /// The settlement, when the paywall settles before running the handler; `None` by default,
    /// where settlement happens after the handler answered.
    pub settlement: Option<SettleResponse>,
}

pub(crate) struct PricedRouteSpec {
    pub method: Method,
    pub pattern: RoutePattern,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub input_schema: Option<Value>,
    pub output_schema: Option<Value>,
    pub offers: Vec<Offer>,
    pub requirements: Vec<PaymentRequirements>,
}

pub(crate) struct Paywall {
    pub facilitator: Arc<dyn Facilitator>,
    pub routes: Vec<PricedRouteSpec>,
    pub public_base_url: Option<String>,
    pub settle_before_handler: bool,
    pub request_body_bytes_max: usize,
    pub path_matching: PathMatching,
}

/// The paywall as a tower layer; add it with `Router::layer` or `Router::route_layer`.
#[derive(Clone)]
pub struct PaywallLayer {
    paywall: Arc<Paywall>,
}

impl std::fmt::Debug for PaywallLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallLayer")
            .field("routes", &self.paywall.routes.len())
            .field("settle_before_handler", &self.paywall.settle_before_handler)
            .finish_non_exhaustive()
    }
}

impl PaywallLayer {
    /// Starts a paywall that verifies and settles through `facilitator`.
    pub fn builder(facilitator: Arc<dyn Facilitator>) -> PaywallBuilder {
        PaywallBuilder::new(facilitator)
    }

    pub(crate) fn new(paywall: Paywall) -> Self {
        PaywallLayer {
            paywall: Arc::new(paywall),
        }
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService {
            inner,
            paywall: self.paywall.clone(),
        }
    }
}

/// The service [`PaywallLayer`] wraps around a handler.
#[derive(Clone)]
pub struct PaywallService<S> {
    inner: S,
    paywall: Arc<Paywall>,
}

impl<S> std::fmt::Debug for PaywallService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallService").finish_non_exhaustive()
    }
}

impl<S> Service<Request<Body>> for PaywallService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Call the instance that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        Box::pin(async move { Ok(paywall.handle(inner, request).await) })
    }
}

/// A request's payment header, before decoding.
enum PaymentHeader<'a> {
    Missing,
    Unreadable(&'static str),
    Present(&'a str),
}

fn payment_header(headers: &HeaderMap) -> PaymentHeader<'_> {
    // v2 first: a client sending both is a v2 client with a v1 fallback.
    for name in [HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT] {
        if let Some(value) = headers.get(name) {
            return match value.to_str() {
                Ok(text) => PaymentHeader::Present(text),
                Err(_) => PaymentHeader::Unreadable(name),
            };
        }
    }
    PaymentHeader::Missing
}

impl Paywall {
    /// The route that prices `method path` (the routes are sorted most specific first), with the
    /// values of its parameters.
    fn route_for(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(&PricedRouteSpec, Vec<(String, String)>)> {
        self.routes.iter().find_map(|route| {
            if route.method != *method {
                return None;
            }
            let params = route.pattern.matches(path, self.path_matching)?;
            Some((route, params))
        })
    }

    async fn handle<S>(&self, mut inner: S, request: Request<Body>) -> Response
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible> + Send,
        S::Future: Send,
    {
        let Some((route, path_params)) = self.route_for(request.method(), request.uri().path())
        else {
            return match inner.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        };
        let resource = Resource {
            url: self.resource_url(&request),
            description: route.description.clone(),
            mime_type: route.mime_type.clone(),
            output_schema: route.output_schema.clone(),
            ..Resource::default()
        };
        let offered = Offered {
            route,
            resource,
            path_params,
        };

        if let Some(length) = declared_length(request.headers())
            && length > self.request_body_bytes_max as u64
        {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body is larger than {} bytes",
                    self.request_body_bytes_max
                ),
            );
        }

        let header = match payment_header(request.headers()) {
            PaymentHeader::Missing => {
                tracing::debug!(route = %route.pattern.as_str(), "payment required");
                return offered.payment_required(
                    "payment required: send PAYMENT-SIGNATURE (x402 v2) or X-PAYMENT (x402 v1)",
                    None,
                );
            }
            PaymentHeader::Unreadable(name) => {
                return offered.payment_required(
                    &format!("invalid payment header: {name} is not visible ASCII"),
                    None,
                );
            }
            PaymentHeader::Present(text) => text,
        };
        let payload = match PaymentPayload::from_header(header) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::debug!(route = %route.pattern.as_str(), %error, "unreadable payment header");
                return offered.payment_required(&format!("invalid payment header: {error}"), None);
            }
        };
        let requirement = match offered.select(&payload) {
            Ok(requirement) => requirement.clone(),
            Err(message) => return offered.payment_required(&message, None),
        };
        let version = payload.version;
        let facilitator_request = FacilitatorRequest {
            version,
            resource: (version == X402Version::V1).then(|| offered.resource.clone()),
            requirements: requirement.clone(),
            payload,
        };

        let verified = match self.facilitator.verify(&facilitator_request).await {
            Ok(verified) => verified,
            Err(error) => {
                tracing::warn!(route = %route.pattern.as_str(), %error, "verification failed: facilitator unavailable");
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("payment could not be verified: {error}"),
                );
            }
        };
        if !verified.is_valid {
            let reason = verified
                .invalid_reason
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "invalid_payment".into());
            let message = match &verified.invalid_message {
                Some(message) if !message.is_empty() => format!("{reason}: {message}"),
                _ => reason,
            };
            tracing::info!(route = %route.pattern.as_str(), payer = ?verified.payer, %message, "payment refused");
            return offered.payment_required(&format!("payment invalid: {message}"), None);
        }
        let payer = verified
            .payer
            .clone()
            .or_else(|| claimed_payer(&facilitator_request.payload));
        let mut info = PaymentInfo {
            payer,
            amount: requirement.amount,
            network: requirement.network.clone(),
            requirement,
            version,
            resource_url: offered.resource.url.clone(),
            settlement: None,
        };
        let mut request = self.limit_body(request);

        if self.settle_before_handler {
            let settlement = match self.settle(&offered, &facilitator_request, &info).await {
                Ok(settlement) => settlement,
                Err(response) => return response,
            };
            info.settlement = Some(settlement.clone());
            request.extensions_mut().insert(info);
            let mut response = match inner.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The buyer has paid whatever the handler answers: always say so.
            attach_settlement(response.headers_mut(), version, &settlement);
            return response;
        }

        request.extensions_mut().insert(info.clone());
        let response = match inner.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if !response.status().is_success() {
            tracing::info!(
                route = %route.pattern.as_str(),
                status = %response.status(),
                "handler did not succeed; payment not settled"
            );
            return response;
        }
        match self.settle(&offered, &facilitator_request, &info).await {
            Ok(settlement) => {
                let mut response = response;
                attach_settlement(response.headers_mut(), version, &settlement);
                response
            }
            // The handler's response is dropped here: its body is never released unpaid.
            Err(refusal) => refusal,
        }
    }

    /// Settles, turning every failure into the response to send.
    async fn settle(
        &self,
        offered: &Offered<'_>,
        request: &FacilitatorRequest,
        info: &PaymentInfo,
    ) -> Result<SettleResponse, Response> {
        let route = offered.route.pattern.as_str();
        match self.facilitator.settle(request).await {
            Ok(settlement) if settlement.success => {
                tracing::info!(
                    %route,
                    payer = ?info.payer,
                    amount = %info.amount,
                    price = %offered.price_of(&info.requirement),
                    network = %info.network,
                    transaction = %settlement.transaction,
                    "payment settled"
                );
                Ok(settlement)
            }
            Ok(settlement) => {
                let reason = settlement
                    .error_reason
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "settlement_failed".into());
                let message = match &settlement.error_message {
                    Some(message) if !message.is_empty() => format!("{reason}: {message}"),
                    _ => reason,
                };
                tracing::warn!(%route, payer = ?info.payer, %message, "settlement failed");
                Err(offered.payment_required(
                    &format!("settlement failed: {message}"),
                    Some((info.version, &settlement)),
                ))
            }
            Err(error) => {
                tracing::error!(%route, payer = ?info.payer, %error, "settlement failed: facilitator unavailable");
                Err(json_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("payment could not be settled: {error}"),
                ))
            }
        }
    }

    /// The full URL of the requested resource.
    fn resource_url(&self, request: &Request<Body>) -> String {
        let uri = request.uri();
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Some(base) = &self.public_base_url {
            return format!("{base}{path_and_query}");
        }
        if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
            return format!("{scheme}://{authority}{path_and_query}");
        }
        let host = request
            .headers()
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .filter(|host| is_plausible_host(host));
        match host {
            Some(host) => format!("http://{host}{path_and_query}"),
            None => path_and_query.to_string(),
        }
    }

    fn limit_body(&self, request: Request<Body>) -> Request<Body> {
        let (parts, body) = request.into_parts();
        Request::from_parts(
            parts,
            Body::new(Limited::new(body, self.request_body_bytes_max)),
        )
    }
}

/// A priced route as offered to one request.
struct Offered<'a> {
    route: &'a PricedRouteSpec,
    resource: Resource,
    /// The values of the route's parameters in the requested path.
    path_params: Vec<(String, String)>,
}

impl Offered<'_> {
    /// The offered requirement this payload pays.
    fn select(&self, payload: &PaymentPayload) -> Result<&PaymentRequirements, String> {
        select(&self.route.requirements, payload)
    }

    fn price_of(&self, requirement: &PaymentRequirements) -> String {
        self.route
            .offers
            .iter()
            .zip(&self.route.requirements)
            .find(|(_, offered)| *offered == requirement)
            .map(|(offer, _)| offer.price())
            .unwrap_or_else(|| requirement.amount.to_string())
    }

    /// The route's v2 `bazaar` extension, when it has something to publish: a pattern, an input
    /// or an output schema.
    fn discovery(&self) -> Option<Value> {
        let route = self.route;
        let template = route
            .pattern
            .is_template()
            .then(|| route.pattern.route_template());
        if template.is_none() && route.input_schema.is_none() && route.output_schema.is_none() {
            return None;
        }
        let discovery = bursar_protocol::bazaar::HttpDiscovery {
            route_template: template.as_deref(),
            path_params: &self.path_params,
            input_schema: route.input_schema.as_ref(),
            output_schema: route.output_schema.as_ref(),
            ..bursar_protocol::bazaar::HttpDiscovery::new(route.method.as_str())
        };
        Some(discovery.extension())
    }

    /// A 402 in both forms: the v2 `PAYMENT-REQUIRED` header and the v1 JSON body, each with
    /// `error`. After a failed settlement the settle response goes in the version's response header.
    fn payment_required(
        &self,
        error: &str,
        settlement: Option<(X402Version, &SettleResponse)>,
    ) -> Response {
        let required = PaymentRequired {
            version: X402Version::V2,
            error: Some(error.to_string()),
            resource: self.resource.clone(),
            accepts: self.route.requirements.clone(),
            // v2 publishes the route's pattern, input and response schemas through the bazaar
            // extension (v1 carries the response's schema in each requirement's outputSchema).
            extensions: self
                .discovery()
                .map(|bazaar| serde_json::json!({ bursar_protocol::bazaar::BAZAAR: bazaar })),
        };
        let body = serde_json::to_vec(&required.to_v1()).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = json_response(StatusCode::PAYMENT_REQUIRED, body);
        let headers = response.headers_mut();
        let mut exposed = HEADER_PAYMENT_REQUIRED.to_string();
        match HeaderValue::from_str(&required.to_v2_header()) {
            Ok(value) => {
                headers.insert(HEADER_PAYMENT_REQUIRED, value);
            }
            Err(_) => tracing::error!("PAYMENT-REQUIRED header is not a valid header value"),
        }
        if let Some((version, settlement)) = settlement {
            exposed = format!("{exposed}, {}", response_header_name(version));
            attach_settlement(headers, version, settlement);
        }
        if let Ok(value) = HeaderValue::from_str(&exposed) {
            headers.insert("access-control-expose-headers", value);
        }
        response
    }
}

/// The offered requirement `payload` pays: v2, the one equal to its `accepted`; v1, by scheme and
/// network (preferring the offer the authorization actually pays). `Err` says why none.
pub(crate) fn select<'a>(
    requirements: &'a [PaymentRequirements],
    payload: &PaymentPayload,
) -> Result<&'a PaymentRequirements, String> {
    match payload.version {
        X402Version::V2 => {
            let Some(accepted) = &payload.accepted else {
                return Err("payment payload has no accepted requirement".into());
            };
            requirements
                .iter()
                .find(|offered| *offered == accepted)
                .ok_or_else(|| "accepted requirement is not offered".to_string())
        }
        X402Version::V1 => {
            let candidates: Vec<&PaymentRequirements> = requirements
                .iter()
                .filter(|r| r.scheme == payload.scheme && r.network == payload.network)
                .collect();
            // Several offers on one network (different assets or prices): prefer the one the
            // authorization actually pays.
            let paid = payload.payload.exact_evm().ok();
            let best = paid
                .and_then(|paid| {
                    candidates.iter().copied().find(|r| {
                        r.amount == paid.authorization.value
                            && r.pay_to.evm() == Some(paid.authorization.to)
                    })
                })
                .or_else(|| candidates.first().copied());
            best.ok_or_else(|| {
                format!(
                    "no offered requirement uses scheme {:?} on network {}",
                    truncate(&payload.scheme),
                    payload.network
                )
            })
        }
    }
}

fn response_header_name(version: X402Version) -> &'static str {
    match version {
        X402Version::V1 => HEADER_X_PAYMENT_RESPONSE,
        X402Version::V2 => HEADER_PAYMENT_RESPONSE,
    }
}

fn attach_settlement(headers: &mut HeaderMap, version: X402Version, settlement: &SettleResponse) {
    let name = HeaderName::from_static(match version {
        X402Version::V1 => "x-payment-response",
        X402Version::V2 => "payment-response",
    });
    match HeaderValue::from_str(&settlement.to_header()) {
        Ok(value) => {
            headers.insert(name, value);
            if !headers.contains_key("access-control-expose-headers") {
                headers.insert(
                    "access-control-expose-headers",
                    HeaderValue::from_static(response_header_name(version)),
                );
            }
        }
        Err(_) => tracing::error!("settlement header is not a valid header value"),
    }
}

/// The payer a payload claims, for facilitators that do not report one.
fn claimed_payer(payload: &PaymentPayload) -> Option<ChainAddress> {
    payload
        .payload
        .exact_evm()
        .ok()
        .map(|exact| exact.authorization.from.into())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_plausible_host(host: &str) -> bool {
    const HOST_CHARS_MAX: usize = 255;
    !host.is_empty()
        && host.len() <= HOST_CHARS_MAX
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn truncate(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 32;
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(SHOWN_CHARS_MAX).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_error(status: StatusCode, error: &str) -> Response {
    let body = serde_json::to_vec(&json!({ "error": error })).unwrap_or_else(|_| b"{}".to_vec());
    json_response(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_filtered() {
        assert!(is_plausible_host("api.example.com"));
        assert!(is_plausible_host("127.0.0.1:8080"));
        assert!(is_plausible_host("[::1]:80"));
        assert!(!is_plausible_host("evil.com/path"));
        assert!(!is_plausible_host("a b"));
        assert!(!is_plausible_host(""));
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("exact"), "exact");
        assert_eq!(truncate(&"x".repeat(100)).chars().count(), 33);
    }
}
