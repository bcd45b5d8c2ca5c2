//! The paying client against sellers on a real loopback socket: Bursar's paywall, and hand-written
//! sellers that misbehave. Payments are checked by an in-memory facilitator running the real
//! stateless checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::Eip712Domain;
use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bursar_buyer::{Asked, BuyerError, PayingClient, PaymentSigner, RequestSpec};
use bursar_facilitator_client::Facilitator;
use bursar_facilitator_client::testkit::ChainlessFacilitator;
use bursar_protocol::exact_evm::Authorization;
use bursar_protocol::{
    Address, Amount, AssetUnit, Bytes, FacilitatorRequest, Network, PaymentPayload,
    PaymentRequired, Resource, X402Version,
};
use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
use serde_json::json;

const CHAIN: u64 = 31337;
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/// A signer that counts its signatures.
struct CountingSigner {
    key: PrivateKeySigner,
    signatures: AtomicUsize,
}

#[async_trait::async_trait]
impl PaymentSigner for CountingSigner {
    fn address(&self) -> Address {
        self.key.address()
    }

    async fn sign_authorization(
        &self,
        authorization: &Authorization,
        domain: &Eip712Domain,
    ) -> Result<Bytes, BuyerError> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        PaymentSigner::sign_authorization(&self.key, authorization, domain).await
    }
}

fn signer() -> Arc<CountingSigner> {
    Arc::new(CountingSigner {
        key: PrivateKeySigner::random(),
        signatures: AtomicUsize::new(0),
    })
}

fn client(signer: Arc<CountingSigner>, max: u64) -> PayingClient {
    PayingClient::new(reqwest::Client::new(), signer)
        .max_amount(Amount::from(max))
        .asset_unit(
            Network::Eip155(CHAIN),
            TOKEN.parse().unwrap(),
            AssetUnit::usdc(),
        )
}

fn offer(amount: u64) -> Offer {
    Offer::exact(
        Network::Eip155(CHAIN),
        Asset::new(TOKEN, "USD Coin", "2", AssetUnit::usdc()),
        Amount::from(amount),
        PAY_TO,
    )
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Bursar's paywall selling `/data` for `price`; `v1_only` strips the v2 header.
async fn paywalled(price: u64, v1_only: bool) -> (String, Arc<ChainlessFacilitator>) {
    let facilitator = Arc::new(ChainlessFacilitator::new(CHAIN));
    let paywall = PaywallLayer::builder(facilitator.clone())
        .route(PricedRoute::new(Method::GET, "/data").offer(offer(price)))
        .build()
        .unwrap();
    let mut app = Router::new()
        .route("/data", get(|| async { "the data" }))
        .route("/free", get(|| async { (StatusCode::IM_A_TEAPOT, "free") }))
        .layer(paywall);
    if v1_only {
        app = app.layer(tower::util::MapResponseLayer::new(
            |mut response: Response| {
                response.headers_mut().remove("payment-required");
                response
            },
        ));
    }
    (serve(app).await, facilitator)
}

#[tokio::test]
async fn pays_v2_and_v1_sellers_and_returns_receipts() {
    for v1_only in [false, true] {
        let (base, facilitator) = paywalled(10_000, v1_only).await;
        let signer = signer();
        let response = client(signer.clone(), 1_000_000)
            .send(RequestSpec::get(&format!("{base}/data")).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(&response.body[..], b"the data");
        let receipt = response.payment.unwrap();
        let version = if v1_only {
            X402Version::V1
        } else {
            X402Version::V2
        };
        assert_eq!(receipt.version, version);
        assert_eq!(receipt.authorization.from, signer.key.address());
        assert_eq!(receipt.authorization.to, PAY_TO.parse::<Address>().unwrap());
        assert_eq!(receipt.authorization.value, Amount::from(10_000u64));
        let settlement = receipt.settlement.unwrap();
        assert!(settlement.success);
        assert_eq!(
            settlement.transaction,
            ChainlessFacilitator::transaction_for(&receipt.authorization.nonce)
        );
        assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);
        assert_eq!(facilitator.verify_count(), 1);
        assert_eq!(facilitator.settle_count(), 1);
        assert_eq!(facilitator.settled()[0].version, version);
    }
}

/// The steps of `send`, one at a time: asking signs nothing and sends one request; a quote
/// that is never signed costs nothing; signing does not send; paying sends once.
#[tokio::test]
async fn the_steps_return_their_results_and_sign_only_when_asked() {
    let (base, facilitator) = paywalled(10_000, false).await;
    let signer = signer();
    let client = client(signer.clone(), 1_000_000);
    let request = RequestSpec::get(&format!("{base}/data")).unwrap();
    let Asked::PaymentRequired(quote) = client.ask(&request).await.unwrap() else {
        panic!("the paywall asks for payment");
    };
    assert_eq!(quote.required.version, X402Version::V2);
    assert_eq!(quote.requirement.amount, Amount::from(10_000u64));
    assert_eq!(quote.authorization.from, signer.key.address());
    assert_eq!(quote.authorization.to, PAY_TO.parse::<Address>().unwrap());
    assert_eq!(quote.authorization.value, Amount::from(10_000u64));
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 0);
    assert_eq!(facilitator.verify_count(), 0);

    let signed = client.sign(&quote).await.unwrap();
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);
    assert_eq!(signed.payload().version, X402Version::V2);
    assert_eq!(facilitator.verify_count(), 0, "signing sends nothing");

    let response = client.pay(&request, *quote, signed).await.unwrap();
    assert_eq!(&response.body[..], b"the data");
    let receipt = response.payment.unwrap();
    assert_eq!(receipt.authorization.value, Amount::from(10_000u64));
    assert!(receipt.settlement.unwrap().success);
    assert_eq!(facilitator.settle_count(), 1);
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);

    let free = RequestSpec::get(&format!("{base}/free")).unwrap();
    let Asked::Answered(answered) = client.ask(&free).await.unwrap() else {
        panic!("a free route is answered");
    };
    assert_eq!(answered.status, StatusCode::IM_A_TEAPOT);
    assert!(answered.payment.is_none());
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn responses_other_than_402_are_returned_without_paying() {
    let (base, facilitator) = paywalled(10_000, false).await;
    let signer = signer();
    let response = client(signer.clone(), 1_000_000)
        .send(RequestSpec::get(&format!("{base}/free")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&response.body[..], b"free");
    assert!(response.payment.is_none());
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 0);
    assert_eq!(facilitator.verify_count(), 0);
}

#[tokio::test]
async fn refuses_to_pay_above_the_maximum() {
    let (base, facilitator) = paywalled(2_000_000, false).await;
    let signer = signer();
    let error = client(signer.clone(), 1_000_000)
        .send(RequestSpec::get(&format!("{base}/data")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no payable requirement among 1 offered: cheapest offer 2 USDC exceeds your maximum 1 USDC"
    );
    match error {
        BuyerError::NoPayableRequirement { offered, .. } => {
            assert_eq!(offered, vec![offer(2_000_000).requirement()]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        signer.signatures.load(Ordering::SeqCst),
        0,
        "nothing signed"
    );
    assert_eq!(facilitator.verify_count(), 0);
    assert_eq!(facilitator.settle_count(), 0);
}

#[tokio::test]
async fn refuses_to_pay_without_a_maximum() {
    let (base, facilitator) = paywalled(1, false).await;
    let signer = signer();
    let error = PayingClient::new(reqwest::Client::new(), signer.clone())
        .send(RequestSpec::get(&format!("{base}/data")).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, BuyerError::NoPayableRequirement { .. }));
    assert!(error.to_string().contains("no per-payment maximum"));
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 0);
    assert_eq!(facilitator.verify_count(), 0);
}

/// A seller that verifies and settles every payment and still answers 402.
#[tokio::test]
async fn a_seller_answering_402_after_payment_is_paid_exactly_once() {
    let facilitator = Arc::new(ChainlessFacilitator::new(CHAIN));
    let requests = Arc::new(AtomicUsize::new(0));
    let required = PaymentRequired {
        version: X402Version::V2,
        error: Some("pay".into()),
        resource: Resource {
            url: "http://seller/data".into(),
            ..Resource::default()
        },
        accepts: vec![offer(10_000).requirement()],
        extensions: None,
    };
    let handler = {
        let facilitator = facilitator.clone();
        let requests = requests.clone();
        move |headers: HeaderMap| {
            let facilitator = facilitator.clone();
            let requests = requests.clone();
            let required = required.clone();
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let mut response_headers = HeaderMap::new();
                response_headers
                    .insert("payment-required", required.to_v2_header().parse().unwrap());
                if let Some(header) = headers.get("payment-signature") {
                    let payload = PaymentPayload::from_header(header.to_str().unwrap()).unwrap();
                    let request = FacilitatorRequest {
                        version: payload.version,
                        requirements: payload.accepted.clone().unwrap(),
                        payload,
                        resource: None,
                    };
                    assert!(facilitator.verify(&request).await.unwrap().is_valid);
                    let settlement = facilitator.settle(&request).await.unwrap();
                    assert!(settlement.success);
                    response_headers
                        .insert("payment-response", settlement.to_header().parse().unwrap());
                }
                (
                    StatusCode::PAYMENT_REQUIRED,
                    response_headers,
                    axum::Json(json!({"error": "still want money"})),
                )
                    .into_response()
            }
        }
    };
    let base = serve(Router::new().route("/data", any(handler))).await;
    let signer = signer();
    let error = client(signer.clone(), 1_000_000)
        .send(RequestSpec::post(&format!("{base}/data"), "body").unwrap())
        .await
        .unwrap_err();
    match error {
        BuyerError::PaymentRejected { reason, settlement } => {
            // The seller settled, so its settlement is reported; the reason is what it said.
            assert!(settlement.unwrap().success);
            assert_eq!(reason, "pay");
        }
        other => panic!("expected PaymentRejected, got {other:?}"),
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "one request, one paid retry"
    );
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);
    assert_eq!(facilitator.verify_count(), 1);
    assert_eq!(facilitator.settle_count(), 1);
}

#[tokio::test]
async fn a_failed_settlement_is_a_rejection_with_the_settlement() {
    let (base, facilitator) = paywalled(10_000, false).await;
    facilitator.fail_settlements(Some(bursar_protocol::Reason::INSUFFICIENT_FUNDS));
    let signer = signer();
    let error = client(signer.clone(), 1_000_000)
        .send(RequestSpec::get(&format!("{base}/data")).unwrap())
        .await
        .unwrap_err();
    match &error {
        BuyerError::PaymentRejected { reason, settlement } => {
            assert!(reason.starts_with("insufficient_funds"), "{reason}");
            assert!(!settlement.as_ref().unwrap().success);
        }
        other => panic!("expected PaymentRejected, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .starts_with("payment rejected by the seller")
    );
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 1);
    assert_eq!(facilitator.settle_count(), 1);
}

#[tokio::test]
async fn unreadable_402_answers_are_errors() {
    let app = Router::new()
        .route(
            "/bad-header",
            get(|| async {
                (
                    StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", "!!!")],
                    "{}",
                )
            }),
        )
        .route(
            "/no-requirements",
            get(|| async { (StatusCode::PAYMENT_REQUIRED, "pay me") }),
        )
        .route(
            "/solana-only",
            get(|| async {
                (
                    StatusCode::PAYMENT_REQUIRED,
                    axum::Json(json!({"x402Version": 1, "error": "", "accepts": [{
                        "scheme": "exact", "network": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
                        "maxAmountRequired": "1", "resource": "http://x/y", "payTo": "abc",
                        "maxTimeoutSeconds": 60, "asset": "def"}]})),
                )
            }),
        );
    let base = serve(app).await;
    let signer = signer();
    let client = client(signer.clone(), 1_000_000);
    let error = client
        .send(RequestSpec::get(&format!("{base}/bad-header")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BuyerError::InvalidPaymentRequired(m) if m.starts_with("PAYMENT-REQUIRED header")),
        "{error}"
    );
    let error = client
        .send(RequestSpec::get(&format!("{base}/no-requirements")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BuyerError::InvalidPaymentRequired(_)),
        "{error}"
    );
    let error = client
        .send(RequestSpec::get(&format!("{base}/solana-only")).unwrap())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("is not an EVM network"),
        "{error}"
    );
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_already_carrying_a_payment_is_not_paid_again() {
    let (base, facilitator) = paywalled(10_000, false).await;
    let signer = signer();
    let response = client(signer.clone(), 1_000_000)
        .send(
            RequestSpec::get(&format!("{base}/data"))
                .unwrap()
                .header("X-PAYMENT", "garbage")
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::PAYMENT_REQUIRED);
    assert!(response.payment.is_none());
    assert_eq!(signer.signatures.load(Ordering::SeqCst), 0);
    assert_eq!(facilitator.verify_count(), 0);
}

#[tokio::test]
async fn request_specs_from_reqwest_and_limits() {
    let http = reqwest::Client::new();
    let request = http
        .post("http://127.0.0.1:1/x")
        .header("x-a", "b")
        .body("hello")
        .build()
        .unwrap();
    let spec = RequestSpec::try_from(request).unwrap();
    assert_eq!(spec.method, Method::POST);
    assert_eq!(&spec.body[..], b"hello");
    assert_eq!(spec.headers["x-a"], "b");

    let big = RequestSpec::post(
        "http://127.0.0.1:1/x",
        vec![0u8; bursar_buyer::REQUEST_BODY_BYTES_MAX + 1],
    )
    .unwrap();
    let error = client(signer(), 1).send(big).await.unwrap_err();
    assert!(matches!(error, BuyerError::RequestTooLarge(_)));
    assert!(matches!(
        RequestSpec::get("not a url"),
        Err(BuyerError::InvalidRequest(_))
    ));
}
