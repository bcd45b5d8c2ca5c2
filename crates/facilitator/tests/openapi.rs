//! The facilitator's `/openapi.json` is generated from its routes and answers: it names every
//! route, and what the routes answer fits it (the scenarios check each answer they get; here
//! the routes they do not call, and a check that catches answers that differ).

#[allow(dead_code)]
mod scenarios;

use std::sync::Arc;

use bursar_chain::DevChain;
use bursar_chain_revm::EmbeddedChain;
use bursar_protocol::X402Version;
use serde_json::{Value, json};

fn chain() -> Arc<dyn DevChain> {
    EmbeddedChain::memory()
}

async fn get(h: &scenarios::Harness, path: &str) -> (u16, Value) {
    let response = h.http.get(format!("{}{path}", h.url)).send().await.unwrap();
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap();
    h.check("GET", path, status, &answer).await;
    (status, answer)
}

#[tokio::test]
async fn the_document_names_every_route_and_the_answers_fit_it() {
    let h = scenarios::harness(chain()).await;
    let document = h.openapi().await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/health",
            "/metrics",
            "/openapi.json",
            "/settle",
            "/supported",
            "/verify"
        ]
    );
    let (status, supported) = get(&h, "/supported").await;
    assert_eq!(status, 200, "{supported}");
    assert!(!supported["kinds"].as_array().unwrap().is_empty());
    let (status, health) = get(&h, "/health").await;
    assert_eq!(status, 200, "{health}");
    let (status, missing) = get(&h, "/nowhere").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"], "not_found");
    let requirements = h.requirements();
    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let payment = h.request(X402Version::V2, &requirements, &exact);
    let (status, verified) = h.post("/verify", &payment).await;
    assert_eq!((status, &verified["isValid"]), (200, &json!(true)));
    let (status, settled) = h.post("/settle", &payment).await;
    assert_eq!((status, &settled["success"]), (200, &json!(true)));
}

#[tokio::test]
async fn answers_that_differ_from_the_document_are_caught() {
    let h = scenarios::harness(chain()).await;
    let (_, supported) = get(&h, "/supported").await;
    let (_, health) = get(&h, "/health").await;
    let document = h.openapi().await;
    let check = |method: &str, path: &str, status: u16, body: &Value| {
        scenarios::openapi::check(document, method, path, status, body)
    };
    assert_eq!(check("GET", "/health", 200, &health), Ok(()));
    let mut block_as_text = health.clone();
    block_as_text["blockNumber"] = json!("latest");
    let mut undeclared = health.clone();
    undeclared["key"] = json!("0x00");
    let mut kinds_missing = supported.clone();
    kinds_missing.as_object_mut().unwrap().remove("kinds");
    let verify_without_verdict = json!({"payer": "0x0000000000000000000000000000000000000001"});
    let failure_without_message = json!({"error": "not_found"});
    for (method, path, status, body) in [
        ("GET", "/health", 200, &block_as_text),
        ("GET", "/health", 200, &undeclared),
        ("GET", "/supported", 200, &kinds_missing),
        ("POST", "/verify", 200, &verify_without_verdict),
        ("GET", "/nowhere", 404, &failure_without_message),
        ("GET", "/supported", 201, &supported),
        ("DELETE", "/settle", 200, &supported),
    ] {
        let checked = check(method, path, status, body);
        assert!(checked.is_err(), "{method} {path} {status} {body} passed");
    }
}
