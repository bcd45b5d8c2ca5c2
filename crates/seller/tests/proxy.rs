//! The paywall in front of an upstream HTTP server (`ReverseProxy`), over real loopback sockets,
//! with an in-memory facilitator that runs the real stateless checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use bursar_buyer::{PayingClient, RequestSpec};
use bursar_facilitator_client::testkit::ChainlessFacilitator;
use bursar_protocol::bazaar::published_output_schema;
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, AssetUnit, Network, PaymentPayload, PaymentRequired, PaymentRequirements, Reason,
};
use bursar_seller::proxy::{FreeRoute, ProxyOptions, ReverseProxy};
use bursar_seller::{Asset, Offer, PathMatching, PaywallLayer, PricedRoute};
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const CHAIN: u64 = 31337;
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const PRICE: u64 = 10_000;
/// Bounds every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(10);

type Chunks = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// The upstream's state: where a streaming handler hands its body's sender to the test.
#[derive(Clone)]
struct Upstream {
    senders: Arc<Mutex<tokio::sync::mpsc::UnboundedSender<Chunks>>>,
}

fn headers_json(headers: &HeaderMap) -> Value {
    let map: BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    json!(map)
}

async fn streamed(State(upstream): State<Upstream>) -> Body {
    let (sender, receiver) = mpsc::unbounded();
    upstream.senders.lock().await.send(sender).unwrap();
    Body::from_stream(receiver)
}

/// Starts the upstream; returns its URL and where the streaming handlers' senders arrive.
async fn start_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<Chunks>) {
    let (senders, receiver) = tokio::sync::mpsc::unbounded_channel();
    let state = Upstream {
        senders: Arc::new(Mutex::new(senders)),
    };
    let app = Router::new()
        .route(
            "/forecast/{city}",
            get(|Path(city): Path<String>, headers: HeaderMap| async move {
                axum::Json(json!({"city": city, "high": 21, "headers": headers_json(&headers)}))
            }),
        )
        .route(
            "/summarize",
            post(|headers: HeaderMap, body: Bytes| async move {
                axum::Json(json!({
                    "bytes": body.len(),
                    "text": String::from_utf8_lossy(&body[..body.len().min(64)]),
                    "headers": headers_json(&headers),
                }))
            }),
        )
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(DEADLINE).await;
                "too late"
            }),
        )
        .route("/stream", get(streamed))
        .route("/free-stream", get(streamed))
        .route(
            "/headers",
            get(|headers: HeaderMap| async move { axum::Json(headers_json(&headers)) }),
        )
        .with_state(state);
    (serve(app).await, receiver)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    format!("http://{address}")
}

fn offer() -> Offer {
    Offer::exact(
        Network::Eip155(CHAIN),
        Asset::new(TOKEN, "USD Coin", "2", AssetUnit::usdc()),
        Amount::from(PRICE),
        PAY_TO,
    )
}

struct Paywalled {
    base: String,
    facilitator: Arc<ChainlessFacilitator>,
    chunks: tokio::sync::mpsc::UnboundedReceiver<Chunks>,
}

async fn start(upstream: Option<&str>, options: ProxyOptions) -> Paywalled {
    let (upstream_url, chunks) = start_upstream().await;
    let upstream = upstream.unwrap_or(&upstream_url);
    let facilitator = Arc::new(ChainlessFacilitator::new(CHAIN));
    let paywall = PaywallLayer::builder(facilitator.clone())
        .path_matching(PathMatching::Loose)
        .route(
            PricedRoute::new(Method::GET, "/forecast/:city")
                .description("Forecast for a city")
                .mime_type("application/json")
                .input_schema(json!({"properties": {"days": {"type": "integer"}}}))
                .output_schema(json!({"type": "object", "required": ["city", "high"]}))
                .offer(offer()),
        )
        .route(PricedRoute::new(Method::POST, "/summarize").offer(offer()))
        .route(PricedRoute::new(Method::GET, "/broken").offer(offer()))
        .route(PricedRoute::new(Method::GET, "/slow").offer(offer()))
        .route(PricedRoute::new(Method::GET, "/stream").offer(offer()))
        .build()
        .unwrap();
    let proxy = ReverseProxy::new(upstream, options).unwrap();
    Paywalled {
        base: serve(proxy.into_router(paywall)).await,
        facilitator,
        chunks,
    }
}

fn buyer() -> PayingClient {
    PayingClient::new(reqwest::Client::new(), Arc::new(PrivateKeySigner::random()))
        .max_amount(Amount::from(1_000_000u64))
}

/// The v2 document of an unpaid request's 402.
async fn required(url: &str) -> PaymentRequired {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    PaymentRequired::from_v2_header(response.headers()["payment-required"].to_str().unwrap())
        .unwrap()
}

fn pay(requirement: &PaymentRequirements) -> PaymentPayload {
    let signer = PrivateKeySigner::random();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let authorization = exact_evm::authorization_for(requirement, signer.address(), now).unwrap();
    let domain = exact_evm::token_domain("USD Coin", "2", CHAIN, requirement.asset.evm().unwrap());
    let signature = exact_evm::sign_authorization(&signer, &authorization, &domain).unwrap();
    PaymentPayload::new_v2(
        requirement.clone(),
        None,
        ExactEvmPayload {
            signature,
            authorization,
        },
    )
}

#[tokio::test]
async fn a_pattern_route_offers_the_concrete_url_and_publishes_its_template() {
    let paywalled = start(None, ProxyOptions::default()).await;
    let url = format!("{}/forecast/paris?days=2", paywalled.base);
    let required = required(&url).await;
    assert_eq!(required.resource.url, url);
    assert_eq!(required.accepts[0].amount, Amount::from(PRICE));
    let bazaar = &required.extensions.as_ref().unwrap()["bazaar"];
    assert_eq!(bazaar["routeTemplate"], "/forecast/:city");
    assert_eq!(
        bazaar["info"]["input"],
        json!({"type": "http", "method": "GET", "pathParams": {"city": "paris"}})
    );
    assert_eq!(
        bazaar["schema"]["properties"]["input"]["properties"]["queryParams"]["properties"]["days"],
        json!({"type": "integer"})
    );
    assert_eq!(
        published_output_schema(&required),
        Some(&json!({"type": "object", "required": ["city", "high"]}))
    );
    // Spellings a server may fold are priced too.
    for path in ["/Forecast/paris", "/forecast/paris/", "/forec%61st/paris"] {
        let response = reqwest::get(format!("{}{path}", paywalled.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED, "{path}");
    }
    assert_eq!(paywalled.facilitator.verify_count(), 0);
}

#[tokio::test]
async fn a_paid_request_is_forwarded_without_the_payment_and_settled() {
    let paywalled = start(None, ProxyOptions::default()).await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/forecast/lisbon", paywalled.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["city"], "lisbon");
    assert_eq!(body["high"], 21);
    let seen = &body["headers"];
    assert!(seen.get("payment-signature").is_none(), "{seen}");
    assert!(seen.get("x-payment").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-host"],
        paywalled.base.trim_start_matches("http://")
    );
    let settlement = response.payment.unwrap().settlement.unwrap();
    assert!(settlement.success);
    assert_eq!(paywalled.facilitator.settle_count(), 1);
}

#[tokio::test]
async fn a_request_body_is_streamed_through_intact() {
    let paywalled = start(None, ProxyOptions::default()).await;
    let text = "The quick brown fox. ".repeat(50_000); // ~1 MB
    let response = buyer()
        .send(
            RequestSpec::post(&format!("{}/summarize", paywalled.base), text.clone())
                .unwrap()
                .header("content-type", "text/plain")
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["bytes"], text.len());
    assert_eq!(body["text"], &text[..64]);
    assert_eq!(body["headers"]["content-type"], "text/plain");
    assert_eq!(paywalled.facilitator.settle_count(), 1);
}

#[tokio::test]
async fn upstream_failures_are_not_settled() {
    let options = ProxyOptions {
        response_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let paywalled = start(None, options).await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/broken", paywalled.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(&response.body[..], b"upstream broke");
    assert_eq!(response.payment.unwrap().settlement, None);

    let response = buyer()
        .send(RequestSpec::get(&format!("{}/slow", paywalled.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "the upstream did not answer in time");
    assert_eq!(paywalled.facilitator.verify_count(), 2);
    assert_eq!(paywalled.facilitator.settle_count(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_nothing_is_settled() {
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let paywalled = start(Some(&closed), ProxyOptions::default()).await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/forecast/oslo", paywalled.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "the upstream is unreachable");
    assert!(!String::from_utf8_lossy(&response.body).contains("127.0.0.1"));
    assert_eq!(paywalled.facilitator.verify_count(), 1);
    assert_eq!(paywalled.facilitator.settle_count(), 0);
}

/// The status of a GET of `path` sent as is.
async fn raw_status(base: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// The client reads the first chunk before the upstream has sent the second: nothing is buffered.
async fn assert_streams(paywalled: &mut Paywalled, request: reqwest::RequestBuilder) {
    let pending = tokio::spawn(request.send());
    let sender = tokio::time::timeout(DEADLINE, paywalled.chunks.recv())
        .await
        .unwrap()
        .unwrap();
    sender
        .unbounded_send(Ok(Bytes::from_static(b"first\n")))
        .unwrap();
    let mut response = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("the response head arrives while the body is still open")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = tokio::time::timeout(DEADLINE, response.chunk())
        .await
        .expect("the first chunk arrives before the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    sender
        .unbounded_send(Ok(Bytes::from_static(b"second\n")))
        .unwrap();
    drop(sender);
    let rest = tokio::time::timeout(DEADLINE, response.bytes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&rest[..], b"second\n");
}

#[tokio::test]
async fn response_bodies_stream_after_the_settlement() {
    let mut paywalled = start(None, ProxyOptions::default()).await;
    let client = reqwest::Client::new();
    let free = client.get(format!("{}/free-stream", paywalled.base));
    assert_streams(&mut paywalled, free).await;

    let url = format!("{}/stream", paywalled.base);
    let payment = pay(&required(&url).await.accepts[0]);
    let request = client
        .get(&url)
        .header(payment.header_name(), payment.to_header());
    assert_streams(&mut paywalled, request).await;
    assert_eq!(paywalled.facilitator.settle_count(), 1);
}

#[tokio::test]
async fn a_failed_settlement_withholds_the_upstream_body() {
    let paywalled = start(None, ProxyOptions::default()).await;
    paywalled
        .facilitator
        .fail_settlements(Some(Reason::INSUFFICIENT_FUNDS));
    let url = format!("{}/forecast/rome", paywalled.base);
    let payment = pay(&required(&url).await.accepts[0]);
    let response = reqwest::Client::new()
        .get(&url)
        .header(payment.header_name(), payment.to_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let body = response.text().await.unwrap();
    assert!(body.contains("settlement failed"), "{body}");
    assert!(
        !body.contains("\"high\":21"),
        "upstream body withheld: {body}"
    );
}

#[tokio::test]
async fn unpriced_requests_are_forwarded_or_denied() {
    let paywalled = start(None, ProxyOptions::default()).await;
    let response = reqwest::get(format!("{}/headers", paywalled.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Not an upstream route: the upstream's own 404 passes through.
    let response = reqwest::get(format!("{}/nowhere", paywalled.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.text().await.unwrap(), "");
    // Paths servers normalize differently are refused before anything is forwarded (sent raw:
    // an HTTP client would resolve the dot segments itself).
    for path in [
        "/forecast/../headers",
        "/forecast/%2e%2E/headers",
        "/forecast//paris",
        "/a%2F..%2Fheaders",
    ] {
        assert_eq!(raw_status(&paywalled.base, path).await, 400, "{path}");
    }

    let denying = ProxyOptions {
        deny_unpriced: true,
        free_routes: vec![FreeRoute::new(vec![Method::GET], "/headers").unwrap()],
        ..ProxyOptions::default()
    };
    let paywalled = start(None, denying).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", paywalled.base));
    assert_eq!(get("/headers").await.unwrap().status(), StatusCode::OK);
    let denied = get("/free-stream").await.unwrap();
    assert_eq!(denied.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        denied.json::<Value>().await.unwrap(),
        json!({"error": "no such route"})
    );
    let response = reqwest::Client::new()
        .post(format!("{}/headers", paywalled.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET only");
    // Priced routes still work.
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/forecast/paris", paywalled.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
}
