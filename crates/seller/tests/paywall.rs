//! The paywall over a real loopback socket, with the buyer client and an in-memory facilitator that
//! runs the real stateless checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use base64::Engine;
use bursar_buyer::{BuyerError, PayingClient, RequestSpec};
use bursar_facilitator_client::testkit::ChainlessFacilitator;
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, AssetUnit, Network, PaymentPayload, PaymentRequired, PaymentRequirements, Reason,
    SettleResponse, X402Version,
};
use bursar_seller::{Asset, Offer, PaymentInfo, PaywallLayer, PricedRoute};
use serde_json::{Value, json};

const CHAIN: u64 = 31337;
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const PRICE: u64 = 10_000; // 0.01 USDC

fn asset() -> Asset {
    Asset::new(TOKEN, "USD Coin", "2", AssetUnit::usdc())
}

fn offer(amount: u64) -> Offer {
    Offer::exact(
        Network::Eip155(CHAIN),
        asset(),
        Amount::from(amount),
        PAY_TO,
    )
}

struct Seller {
    base: String,
    facilitator: Arc<ChainlessFacilitator>,
    handler_runs: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Options {
    settle_before_handler: bool,
    public_base_url: Option<&'static str>,
    /// Strip the v2 header from every answer, so only the v1 body remains (a v1-only seller).
    v1_only: bool,
}

async fn start(options: Options) -> Seller {
    let facilitator = Arc::new(ChainlessFacilitator::new(CHAIN));
    let handler_runs = Arc::new(AtomicUsize::new(0));
    let mut builder = PaywallLayer::builder(facilitator.clone())
        .settle_before_handler(options.settle_before_handler)
        .route(
            PricedRoute::new(Method::GET, "/weather")
                .description("Current weather")
                .mime_type("application/json")
                .output_schema(json!({"type": "object"}))
                .offer(offer(PRICE)),
        )
        .route(
            PricedRoute::new(Method::POST, "/echo")
                .description("Echo")
                .offer(offer(PRICE)),
        )
        .route(PricedRoute::new(Method::GET, "/broken").offer(offer(PRICE)))
        .route(
            PricedRoute::new(Method::GET, "/multi")
                .offer(offer(50_000))
                .offer(offer(20_000).max_timeout_seconds(120)),
        );
    if let Some(url) = options.public_base_url {
        builder = builder.public_base_url(url);
    }
    let paywall = builder.build().unwrap();

    let runs = handler_runs.clone();
    let weather = move |Extension(info): Extension<PaymentInfo>| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let settled = info
                .settlement
                .as_ref()
                .map(|s| s.transaction.clone())
                .unwrap_or_default();
            Json(json!({
                "weather": "sunny",
                "payer": info.payer,
                "amount": info.amount.to_string(),
                "network": info.network.to_string(),
                "settledBeforeHandler": settled,
            }))
        }
    };
    let runs = handler_runs.clone();
    let echo = move |Extension(info): Extension<PaymentInfo>, body: Bytes| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            (
                [("x-payer", info.payer.unwrap_or_default().to_string())],
                body,
            )
        }
    };
    let runs = handler_runs.clone();
    let broken = move || {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            (StatusCode::INTERNAL_SERVER_ERROR, "secret content").into_response()
        }
    };
    let mut app = Router::new()
        .route("/weather", get(weather))
        .route("/echo", post(echo))
        .route("/broken", get(broken))
        .route("/multi", get(|| async { "multi" }))
        .route("/free", get(|| async { "free" }))
        .layer(paywall);
    if options.v1_only {
        app = app.layer(tower::util::MapResponseLayer::new(
            |mut response: Response| {
                response.headers_mut().remove("payment-required");
                response
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Seller {
        base: format!("http://{address}"),
        facilitator,
        handler_runs,
    }
}

fn buyer() -> PayingClient {
    PayingClient::new(reqwest::Client::new(), Arc::new(PrivateKeySigner::random()))
        .max_amount(Amount::from(1_000_000u64))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A correctly signed payment for `requirement`.
fn pay(requirement: &PaymentRequirements, version: X402Version) -> PaymentPayload {
    let signer = PrivateKeySigner::random();
    let authorization = exact_evm::authorization_for(requirement, signer.address(), now()).unwrap();
    let (name, domain_version) = requirement.eip712_name_version().unwrap();
    let domain = exact_evm::token_domain(
        name,
        domain_version,
        CHAIN,
        requirement.asset.evm().unwrap(),
    );
    let signature = exact_evm::sign_authorization(&signer, &authorization, &domain).unwrap();
    let payload = ExactEvmPayload {
        signature,
        authorization,
    };
    match version {
        X402Version::V2 => PaymentPayload::new_v2(requirement.clone(), None, payload),
        X402Version::V1 => PaymentPayload::new_v1(
            requirement.scheme.clone(),
            requirement.network.clone(),
            payload,
        ),
    }
}

/// The 402 of an unpaid request, both forms decoded.
async fn unpaid(url: &str) -> (reqwest::Response, PaymentRequired, PaymentRequired) {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let header = response.headers()["payment-required"]
        .to_str()
        .unwrap()
        .to_string();
    let v2 = PaymentRequired::from_v2_header(&header).unwrap();
    let body = response.bytes().await.unwrap();
    let v1 = PaymentRequired::from_v1_body(&body).unwrap();
    let response = reqwest::get(url).await.unwrap();
    (response, v2, v1)
}

async fn json_body(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        HeaderValue::from_static("application/json")
    );
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn unpaid_request_gets_a_402_in_both_forms() {
    let seller = start(Options::default()).await;
    let url = format!("{}/weather?city=Paris", seller.base);
    let (response, v2, v1) = unpaid(&url).await;
    let expected = offer(PRICE).requirement();

    assert_eq!(v2.version, X402Version::V2);
    assert_eq!(v2.accepts, vec![expected.clone()]);
    assert_eq!(v2.resource.url, url);
    assert_eq!(v2.resource.description.as_deref(), Some("Current weather"));
    assert_eq!(v2.resource.mime_type.as_deref(), Some("application/json"));
    assert!(v2.error.as_deref().unwrap().contains("PAYMENT-SIGNATURE"));

    assert_eq!(v1.version, X402Version::V1);
    assert_eq!(v1.accepts, vec![expected]);
    assert_eq!(v1.resource.url, url);
    assert_eq!(v1.resource.output_schema, Some(json!({"type": "object"})));
    // Both forms publish the same response schema: v1 in outputSchema, v2 through bazaar.
    assert_eq!(
        bursar_protocol::bazaar::published_output_schema(&v2),
        Some(&json!({"type": "object"}))
    );
    assert_eq!(
        bursar_protocol::bazaar::published_output_schema(&v1),
        Some(&json!({"type": "object"}))
    );
    assert_eq!(
        v2.extensions.as_ref().unwrap()["bazaar"]["info"]["input"]["method"],
        "GET"
    );

    let body = json_body(response).await;
    assert_eq!(body["x402Version"], 1);
    assert_eq!(body["accepts"][0]["maxAmountRequired"], "10000");
    assert_eq!(body["accepts"][0]["network"], "eip155:31337");
    assert_eq!(
        body["accepts"][0]["extra"],
        json!({"name": "USD Coin", "version": "2"})
    );
    assert!(!body["error"].as_str().unwrap().is_empty());
    assert_eq!(seller.facilitator.verify_count(), 0);
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn resource_url_uses_the_public_base_url() {
    let seller = start(Options {
        public_base_url: Some("https://api.example.com/v1/"),
        ..Options::default()
    })
    .await;
    let (_, v2, v1) = unpaid(&format!("{}/weather?x=1", seller.base)).await;
    assert_eq!(v2.resource.url, "https://api.example.com/v1/weather?x=1");
    assert_eq!(v1.resource.url, "https://api.example.com/v1/weather?x=1");
}

#[tokio::test]
async fn free_routes_and_other_methods_pass_through() {
    let seller = start(Options::default()).await;
    let response = reqwest::get(format!("{}/free", seller.base)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "free");
    // Exact matching: a trailing slash is another (unpriced, unknown) path.
    let response = reqwest::get(format!("{}/weather/", seller.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn v2_round_trip_returns_content_and_receipt() {
    let seller = start(Options::default()).await;
    let client = buyer();
    let response = client
        .send(RequestSpec::get(&format!("{}/weather", seller.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["weather"], "sunny");
    assert_eq!(body["payer"], client.payer().to_string());
    assert_eq!(body["amount"], "10000");
    assert_eq!(body["network"], "eip155:31337");

    let receipt = response.payment.unwrap();
    assert_eq!(receipt.version, X402Version::V2);
    assert_eq!(receipt.requirement, offer(PRICE).requirement());
    assert_eq!(receipt.authorization.from, client.payer());
    assert_eq!(receipt.authorization.value, Amount::from(PRICE));
    let settlement = receipt.settlement.unwrap();
    assert!(settlement.success);
    assert_eq!(
        settlement.transaction,
        ChainlessFacilitator::transaction_for(&receipt.authorization.nonce)
    );
    assert_eq!(settlement.network, "eip155:31337");
    assert!(response.headers.contains_key("payment-response"));
    assert!(!response.headers.contains_key("x-payment-response"));
    assert_eq!(seller.facilitator.verify_count(), 1);
    assert_eq!(seller.facilitator.settle_count(), 1);
    assert_eq!(seller.facilitator.settled()[0].version, X402Version::V2);
}

#[tokio::test]
async fn v1_round_trip_returns_content_and_receipt() {
    let seller = start(Options {
        v1_only: true,
        ..Options::default()
    })
    .await;
    let client = buyer();
    let body = Bytes::from(vec![7u8; 100_000]);
    let response = client
        .send(RequestSpec::post(&format!("{}/echo", seller.base), body.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.body, body,
        "the request body reaches the handler intact"
    );
    assert_eq!(response.headers["x-payer"], client.payer().to_string());
    let receipt = response.payment.unwrap();
    assert_eq!(receipt.version, X402Version::V1);
    let settlement = receipt.settlement.unwrap();
    assert!(settlement.success);
    assert!(response.headers.contains_key("x-payment-response"));
    let settled = seller.facilitator.settled();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].version, X402Version::V1);
    assert_eq!(
        settled[0].resource.as_ref().unwrap().url,
        format!("{}/echo", seller.base)
    );
}

#[tokio::test]
async fn the_cheapest_of_several_offers_is_paid() {
    let seller = start(Options::default()).await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/multi", seller.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let receipt = response.payment.unwrap();
    assert_eq!(receipt.requirement.amount, Amount::from(20_000u64));
    assert_eq!(receipt.requirement.max_timeout_seconds, 120);
}

#[tokio::test]
async fn a_failing_handler_is_not_settled() {
    let seller = start(Options::default()).await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/broken", seller.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 1);
    assert_eq!(seller.facilitator.verify_count(), 1);
    assert_eq!(seller.facilitator.settle_count(), 0, "no settle call");
    let receipt = response.payment.unwrap();
    assert_eq!(receipt.settlement, None);
}

#[tokio::test]
async fn a_failed_settlement_withholds_the_body() {
    let seller = start(Options::default()).await;
    seller
        .facilitator
        .fail_settlements(Some(Reason::INSUFFICIENT_FUNDS));
    let (_, v2, _) = unpaid(&format!("{}/weather", seller.base)).await;
    let payment = pay(&v2.accepts[0], X402Version::V2);
    let response = reqwest::Client::new()
        .get(format!("{}/weather", seller.base))
        .header(payment.header_name(), payment.to_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let settlement =
        SettleResponse::from_header(response.headers()["payment-response"].to_str().unwrap())
            .unwrap();
    assert!(!settlement.success);
    assert_eq!(settlement.error_reason, Some(Reason::INSUFFICIENT_FUNDS));
    assert!(response.headers().contains_key("payment-required"));
    let body = json_body(response).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("settlement failed: insufficient_funds")
    );
    assert!(!body.to_string().contains("sunny"), "handler body withheld");
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 1);
    assert_eq!(seller.facilitator.settle_count(), 1);

    // Through the buyer: rejected, with the settlement, and paid exactly once.
    let error = buyer()
        .send(RequestSpec::get(&format!("{}/weather", seller.base)).unwrap())
        .await
        .unwrap_err();
    match error {
        BuyerError::PaymentRejected { reason, settlement } => {
            assert!(reason.starts_with("insufficient_funds"), "{reason}");
            assert!(!settlement.unwrap().success);
        }
        other => panic!("expected PaymentRejected, got {other:?}"),
    }
    assert_eq!(seller.facilitator.verify_count(), 2);
    assert_eq!(seller.facilitator.settle_count(), 2);
}

#[tokio::test]
async fn garbage_payment_headers_get_a_402_with_an_error() {
    let seller = start(Options::default()).await;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let requirement = offer(PRICE).requirement();
    let valid_accepted = serde_json::to_value(&requirement).unwrap();
    let mut huge_amount = valid_accepted.clone();
    huge_amount["amount"] = json!("9".repeat(200));
    let mut numeric_amount = valid_accepted.clone();
    numeric_amount["amount"] = json!(10000);
    let mut negative_timeout = valid_accepted.clone();
    negative_timeout["maxTimeoutSeconds"] = json!(-1);
    let mut huge_timeout = valid_accepted.clone();
    huge_timeout["maxTimeoutSeconds"] = json!(1e300);
    let good_auth = pay(&requirement, X402Version::V2).payload.to_json_value();
    let mut huge_value = good_auth.clone();
    huge_value["authorization"]["value"] = json!("1".repeat(100));
    let mut overflow_value = good_auth.clone();
    overflow_value["authorization"]["validBefore"] =
        json!("115792089237316195423570985008687907853269984665640564039457584007913129639936");

    let garbage: Vec<String> =
        vec![
        "not base64 at all!!!".into(),
        "%%%".into(),
        String::new(),
        b64("hello"),
        b64("{}"),
        b64("[]"),
        b64("null"),
        b64(r#"{"x402Version": "2"}"#),
        b64(r#"{"x402Version": 3, "accepted": {}, "payload": {}}"#),
        b64(r#"{"x402Version": 99999999999999999999999999}"#),
        b64(r#"{"x402Version": 2, "accepted": 5, "payload": {}}"#),
        b64(&json!({"x402Version": 2, "accepted": huge_amount, "payload": {}}).to_string()),
        b64(&json!({"x402Version": 2, "accepted": numeric_amount, "payload": {}}).to_string()),
        b64(&json!({"x402Version": 2, "accepted": negative_timeout, "payload": {}}).to_string()),
        b64(&json!({"x402Version": 2, "accepted": huge_timeout, "payload": {}}).to_string()),
        b64(&json!({"x402Version": 2, "accepted": valid_accepted, "payload": "x"}).to_string()),
        b64(&json!({"x402Version": 2, "accepted": valid_accepted, "payload": {"signature": 5}})
            .to_string()),
        b64(&json!({"x402Version": 2, "accepted": valid_accepted, "payload": huge_value})
            .to_string()),
        b64(&json!({"x402Version": 2, "accepted": valid_accepted, "payload": overflow_value})
            .to_string()),
        b64(r#"{"x402Version": 1, "scheme": "exact", "network": "nowhere", "payload": {}}"#),
        b64(r#"{"x402Version": 1, "scheme": 7, "network": "base", "payload": {}}"#),
        b64(&json!({"x402Version": 1, "scheme": "exact", "network": "eip155:31337", "payload": {}})
            .to_string()),
        b64(&json!({"x402Version": 1, "scheme": "x".repeat(5000), "network": "eip155:31337",
                    "payload": {}})
            .to_string()),
        "A".repeat(40_000),
        b64(&"[".repeat(10_000)),
    ];
    let client = reqwest::Client::new();
    for header in ["PAYMENT-SIGNATURE", "X-PAYMENT"] {
        for value in &garbage {
            let response = client
                .get(format!("{}/weather", seller.base))
                .header(header, value.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::PAYMENT_REQUIRED,
                "{header}: {}",
                &value[..value.len().min(80)]
            );
            assert!(response.headers().contains_key("payment-required"));
            let body = json_body(response).await;
            let error = body["error"].as_str().unwrap();
            assert!(!error.is_empty());
            assert_eq!(body["accepts"].as_array().unwrap().len(), 1);
        }
        // Bytes that are not visible ASCII.
        let response = client
            .get(format!("{}/weather", seller.base))
            .header(header, HeaderValue::from_bytes(b"\xff\xfe").unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = json_body(response).await;
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("invalid payment header")
        );
    }
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 0);
    assert_eq!(seller.facilitator.settle_count(), 0);
    // The server is still serving.
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/weather", seller.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn an_accepted_requirement_that_was_not_offered_is_refused() {
    let seller = start(Options::default()).await;
    let mut cheaper = offer(PRICE).requirement();
    cheaper.amount = Amount::from(1u64);
    let mut other_extra = offer(PRICE).requirement();
    other_extra.extra = Some(json!({"name": "USD Coin", "version": "3"}));
    let mut longer = offer(PRICE).requirement();
    longer.max_timeout_seconds = 3600;
    for accepted in [cheaper, other_extra, longer] {
        let payment = pay(&accepted, X402Version::V2);
        let response = reqwest::Client::new()
            .get(format!("{}/weather", seller.base))
            .header("PAYMENT-SIGNATURE", payment.to_header())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = json_body(response).await;
        assert_eq!(body["error"], "accepted requirement is not offered");
    }
    assert_eq!(seller.facilitator.verify_count(), 0);
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_and_replayed_payments_are_refused() {
    let seller = start(Options::default()).await;
    let requirement = offer(PRICE).requirement();
    let url = format!("{}/weather", seller.base);
    let client = reqwest::Client::new();

    // Signed for another chain: the signature does not verify here.
    let signer = PrivateKeySigner::random();
    let authorization =
        exact_evm::authorization_for(&requirement, signer.address(), now()).unwrap();
    let domain = exact_evm::token_domain("USD Coin", "2", CHAIN + 1, TOKEN.parse().unwrap());
    let signature = exact_evm::sign_authorization(&signer, &authorization, &domain).unwrap();
    let forged = PaymentPayload::new_v2(
        requirement.clone(),
        None,
        ExactEvmPayload {
            signature,
            authorization,
        },
    );
    let response = client
        .get(&url)
        .header("PAYMENT-SIGNATURE", forged.to_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let body = json_body(response).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("payment invalid: invalid_exact_evm_payload_signature"),
        "{body}"
    );

    // A good payment works once; the same header again is refused.
    let payment = pay(&requirement, X402Version::V2);
    for expected in [StatusCode::OK, StatusCode::PAYMENT_REQUIRED] {
        let response = client
            .get(&url)
            .header("PAYMENT-SIGNATURE", payment.to_header())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 1);
    assert_eq!(seller.facilitator.settle_count(), 1);
}

#[tokio::test]
async fn an_unreachable_facilitator_is_a_502_and_nothing_runs() {
    let seller = start(Options::default()).await;
    seller.facilitator.set_unreachable(true);
    let payment = pay(&offer(PRICE).requirement(), X402Version::V2);
    let response = reqwest::Client::new()
        .get(format!("{}/weather", seller.base))
        .header("PAYMENT-SIGNATURE", payment.to_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = json_body(response).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("facilitator unreachable")
    );
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn settle_before_handler_mode() {
    let seller = start(Options {
        settle_before_handler: true,
        ..Options::default()
    })
    .await;
    let response = buyer()
        .send(RequestSpec::get(&format!("{}/weather", seller.base)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let receipt = response.payment.unwrap();
    let transaction = receipt.settlement.unwrap().transaction;
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["settledBeforeHandler"], transaction.as_str());

    // A failed settlement: the handler never runs.
    seller
        .facilitator
        .fail_settlements(Some(Reason::TRANSACTION_FAILED));
    let error = buyer()
        .send(RequestSpec::get(&format!("{}/weather", seller.base)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BuyerError::PaymentRejected { .. }),
        "{error}"
    );
    assert_eq!(seller.handler_runs.load(Ordering::SeqCst), 1);
    assert_eq!(seller.facilitator.settle_count(), 2);
}

#[tokio::test]
async fn declared_oversized_bodies_are_refused_before_payment() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seller = start(Options::default()).await;
    let payment = pay(&offer(PRICE).requirement(), X402Version::V2);
    // Only the head is sent: the refusal must come from the declared length alone, before any
    // body is read (and without racing an upload the server has stopped reading).
    let address = seller.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: {address}\r\nPAYMENT-SIGNATURE: {}\r\ncontent-length: {}\r\n\r\n",
        payment.to_header(),
        bursar_seller::REQUEST_BODY_BYTES_MAX + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the refusal comes without waiting for the body")
        .unwrap();
    let status_line = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    assert_eq!(seller.facilitator.verify_count(), 0);
}

#[test]
fn invalid_configurations_are_refused() {
    let facilitator = Arc::new(ChainlessFacilitator::new(CHAIN));
    let build = |route: PricedRoute| {
        PaywallLayer::builder(facilitator.clone())
            .route(route)
            .build()
    };
    assert!(
        build(PricedRoute::new(Method::GET, "/a")).is_err(),
        "no offers"
    );
    assert!(build(PricedRoute::new(Method::GET, "a").offer(offer(1))).is_err());
    assert!(build(PricedRoute::new(Method::GET, "/a?b").offer(offer(1))).is_err());
    let mut bad = offer(1);
    bad.network = Network::Other("solana:x".into());
    assert!(build(PricedRoute::new(Method::GET, "/a").offer(bad)).is_err());
    let twice = PaywallLayer::builder(facilitator.clone())
        .route(PricedRoute::new(Method::GET, "/a").offer(offer(1)))
        .route(PricedRoute::new(Method::GET, "/a").offer(offer(2)))
        .build();
    assert!(twice.is_err());
    let error = PaywallLayer::builder(facilitator)
        .public_base_url("api.example.com")
        .build()
        .unwrap_err();
    assert!(error.to_string().starts_with("invalid public base url"));
}
