//! `HttpFacilitator` against small axum servers on a loopback socket.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bursar_facilitator_client::{Facilitator, FacilitatorError, HttpFacilitator};
use bursar_protocol::{FacilitatorRequest, Reason};
use serde_json::{Value, json};

fn request() -> FacilitatorRequest {
    let body = json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "accepted": {"scheme": "exact", "network": "eip155:31337", "amount": "5", "asset": "0xa",
                         "payTo": "0xb", "maxTimeoutSeconds": 60},
            "payload": {"x": 1}
        },
        "paymentRequirements": {"scheme": "exact", "network": "eip155:31337", "amount": "5",
                                "asset": "0xa", "payTo": "0xb", "maxTimeoutSeconds": 60}
    });
    FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn failure_documents_with_400_are_results() {
    let seen = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let seen_verify = seen.clone();
    let seen_settle = seen.clone();
    let router = Router::new()
        .route(
            "/facilitator/verify",
            post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let seen = seen_verify.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().unwrap().push((auth, body.0));
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({
                            "isValid": false,
                            "invalidReason": "insufficient_funds",
                            "invalidMessage": "balance 0",
                            "payer": "0xabc"
                        })),
                    )
                }
            }),
        )
        .route(
            "/facilitator/settle",
            post(move |body: axum::Json<Value>| {
                let seen = seen_settle.clone();
                async move {
                    seen.lock().unwrap().push((String::new(), body.0));
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({
                            "success": false,
                            "errorReason": "invalid_exact_evm_nonce_already_used",
                            "transaction": "",
                            "network": "eip155:31337"
                        })),
                    )
                }
            }),
        );
    let base = serve(router).await;
    let facilitator = HttpFacilitator::new(&format!("{base}/facilitator/"))
        .unwrap()
        .with_api_key("k-123");

    let verify = facilitator.verify(&request()).await.unwrap();
    assert!(!verify.is_valid);
    assert_eq!(verify.invalid_reason, Some(Reason::INSUFFICIENT_FUNDS));
    assert_eq!(
        verify.payer.as_ref().map(|payer| payer.as_str()),
        Some("0xabc")
    );

    let settle = facilitator.settle(&request()).await.unwrap();
    assert!(!settle.success);
    assert_eq!(settle.error_reason, Some(Reason::NONCE_ALREADY_USED));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "Bearer k-123");
    assert_eq!(seen[0].1, request().to_json_value());
    assert_eq!(seen[1].1, request().to_json_value());
}

#[tokio::test]
async fn other_error_bodies_are_status_errors() {
    let router = Router::new()
        .route(
            "/verify",
            post(|| async { (StatusCode::BAD_REQUEST, "x".repeat(10_000)) }),
        )
        .route(
            "/settle",
            // A "success" document with an error status is contradictory: not accepted.
            post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"success": true, "transaction": "0x1", "network": "x"})),
                )
            }),
        )
        .route(
            "/supported",
            get(|| async { (StatusCode::UNAUTHORIZED, "{\"error\":\"no key\"}") }),
        );
    let base = serve(router).await;
    let facilitator = HttpFacilitator::new(&base).unwrap();

    match facilitator.verify(&request()).await {
        Err(FacilitatorError::Status { status, body }) => {
            assert_eq!(status, 400);
            assert!(body.len() < 1_000, "body is truncated");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(matches!(
        facilitator.settle(&request()).await,
        Err(FacilitatorError::Status { status: 500, .. })
    ));
    let error = facilitator.supported().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "facilitator answered status 401: {\"error\":\"no key\"}"
    );
}

#[tokio::test]
async fn success_with_a_wrong_body_is_a_decode_error() {
    let router = Router::new()
        .route("/verify", post(|| async { "not json" }))
        .route(
            "/supported",
            get(|| async {
                axum::Json(json!({
                    "kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:8453"}],
                    "extensions": [], "signers": {"eip155:*": ["0x1"]}
                }))
            }),
        );
    let base = serve(router).await;
    let facilitator = HttpFacilitator::new(&base).unwrap();
    assert!(matches!(
        facilitator.verify(&request()).await,
        Err(FacilitatorError::Decode(_))
    ));
    let supported = facilitator.supported().await.unwrap();
    assert_eq!(supported.kinds.len(), 1);
    assert_eq!(supported.signers["eip155:*"], vec!["0x1".to_string()]);
}

#[tokio::test]
async fn unreachable_is_a_transport_error() {
    // Bind then drop a listener so the port is very likely closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let facilitator = HttpFacilitator::new(&format!("http://{address}")).unwrap();
    let shared: Arc<dyn Facilitator> = Arc::new(facilitator);
    match shared.verify(&request()).await {
        Err(FacilitatorError::Transport(message)) => assert!(!message.is_empty()),
        other => panic!("expected a transport error, got {other:?}"),
    }
}
