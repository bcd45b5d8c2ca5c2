//! The catalog on SQLite and on a real PostgreSQL server: listings recorded from payments (each
//! counted once), reputation figures, filters and pagination, aging out, per-payee bounds,
//! hostile extensions, and the HTTP API (x402 v2 shape, errors, signed reports).

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bursar_catalog::{Catalog, CatalogConfig, observation};
use bursar_protocol::FacilitatorRequest;
use bursar_protocol::discovery::{ListingPage, ReportKind, report_message};
use bursar_store::catalog::{
    CatalogEvent, CatalogLimits, CatalogQuery, CatalogStore, PaymentOutcome,
};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{PostgresDatabase, SqliteDatabase};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: Address = Address::repeat_byte(0x5f);
const NOW: i64 = 1_800_000_000_000;

fn payee(n: u8) -> Address {
    Address::repeat_byte(n)
}

/// A v2 /verify or /settle body paying `amount` to `pay_to` for `url`, with `extension` as the
/// payload's bazaar extension.
fn request(
    url: &str,
    extension: Value,
    payer: Address,
    nonce: u64,
    amount: u64,
    pay_to: Address,
) -> FacilitatorRequest {
    let accepted = json!({
        "scheme": "exact", "network": "eip155:31337", "amount": amount.to_string(),
        "asset": TOKEN.to_string(), "payTo": pay_to.to_string(), "maxTimeoutSeconds": 60,
        "extra": {"name": "Bursar USD", "version": "2"},
    });
    let body = json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "resource": {"url": url, "description": "Weather <script>alert(1)</script> forecasts",
                         "mimeType": "application/json", "serviceName": "Sky", "tags": ["weather"]},
            "accepted": accepted,
            "payload": {
                "signature": format!("0x{}", "11".repeat(65)),
                "authorization": {
                    "from": payer.to_string(), "to": pay_to.to_string(), "value": amount.to_string(),
                    "validAfter": "0", "validBefore": "99999999999",
                    "nonce": B256::from(U256::from(nonce)).to_string(),
                },
            },
            "extensions": {"bazaar": extension},
        },
        "paymentRequirements": accepted,
    });
    FacilitatorRequest::from_json(body.to_string().as_bytes()).expect("a valid request")
}

fn http_extension(method: &str) -> Value {
    json!({
        "info": {"input": {"type": "http", "method": method}, "output": {"type": "json"}},
        "schema": {"type": "object", "properties": {"output": {"type": "object",
            "properties": {"example": {"type": "object", "properties": {"temp": {"type": "number"}}}}}}},
    })
}

fn event(request: &FacilitatorRequest, outcome: PaymentOutcome, at: i64) -> CatalogEvent {
    observation(request, outcome, at).expect("listed")
}

fn query() -> CatalogQuery {
    CatalogQuery {
        limit: 20,
        seen_since_ms: 0,
        ..CatalogQuery::default()
    }
}

async fn counts_each_payment_once(store: Arc<dyn CatalogStore>) {
    let limits = CatalogLimits::default();
    let alice = payee(0xa1);
    let bob = payee(0xb0);
    let seller = payee(0x70);
    let url = "https://api.example.com/weather?city=paris";
    let first = request(url, http_extension("GET"), alice, 1, 1_000, seller);
    let second = request(url, http_extension("GET"), bob, 2, 1_000, seller);
    let third = request(url, http_extension("GET"), alice, 3, 1_000, seller);
    // Verified, then settled, each twice (duplicates count once).
    for (req, at) in [(&first, NOW), (&second, NOW + 1), (&third, NOW + 2)] {
        store
            .record(
                &[
                    event(req, PaymentOutcome::Verified, at),
                    event(req, PaymentOutcome::Verified, at),
                ],
                limits,
            )
            .await
            .unwrap();
    }
    store
        .record(
            &[
                event(&first, PaymentOutcome::Settled, NOW + 10),
                event(&first, PaymentOutcome::Settled, NOW + 11),
            ],
            limits,
        )
        .await
        .unwrap();
    store
        .record(&[event(&second, PaymentOutcome::Settled, NOW + 12)], limits)
        .await
        .unwrap();
    // The third fails to settle: a failure. A failure of a payment never verified is not counted.
    let forged = request(url, http_extension("GET"), bob, 99, 1_000, seller);
    store
        .record(
            &[
                event(&third, PaymentOutcome::SettleFailed, NOW + 13),
                event(&forged, PaymentOutcome::SettleFailed, NOW + 14),
            ],
            limits,
        )
        .await
        .unwrap();

    let page = store.search(&query()).await.unwrap();
    assert_eq!(page.total, 1);
    let listing = &page.listings[0];
    assert_eq!(listing.resource, "https://api.example.com/weather");
    assert_eq!(listing.operation, "GET");
    assert_eq!(
        (
            listing.verified_count,
            listing.settled_count,
            listing.distinct_payers,
            listing.settle_failures
        ),
        (3, 2, 2, 1)
    );
    assert_eq!(listing.last_settled_ms, Some(NOW + 12));
    assert_eq!(listing.terms.len(), 1);
    assert_eq!(listing.terms[0].amount, "1000");
    assert_eq!(bursar_catalog::failure_rate_bps(listing), 3_333);

    // Terms change: a new price, then a new payee.
    let pricier = request(url, http_extension("GET"), alice, 4, 2_500, seller);
    let moved = request(url, http_extension("GET"), alice, 5, 2_500, payee(0x71));
    store
        .record(
            &[
                event(&pricier, PaymentOutcome::Verified, NOW + 20),
                event(&moved, PaymentOutcome::Verified, NOW + 21),
            ],
            limits,
        )
        .await
        .unwrap();
    let listing = &store.search(&query()).await.unwrap().listings[0];
    assert_eq!((listing.price_changes, listing.payee_changes), (1, 1));
    assert_eq!(listing.terms[0].amount, "2500");
    assert_eq!(listing.last_seen_ms, NOW + 21);
    assert_eq!(listing.first_seen_ms, NOW);
}

async fn filters_and_pages(store: Arc<dyn CatalogStore>) {
    let limits = CatalogLimits::default();
    let mut events = Vec::new();
    for index in 0..30u64 {
        let url = format!(
            "https://svc{index}.example.com/{}",
            if index % 2 == 0 { "weather" } else { "stocks" }
        );
        let req = request(
            &url,
            http_extension(if index % 3 == 0 { "POST" } else { "GET" }),
            payee(0xa1),
            index,
            100 * (index + 1),
            payee(0x10 + (index % 3) as u8),
        );
        events.push(event(&req, PaymentOutcome::Verified, NOW + index as i64));
        if index < 5 {
            events.push(event(
                &req,
                PaymentOutcome::Settled,
                NOW + 100 + index as i64,
            ));
        }
    }
    let mcp = request(
        "mcp://tool/summarize",
        json!({"info": {"input": {"type": "mcp", "toolName": "summarize", "inputSchema": {"type": "object"}}}}),
        payee(0xa2),
        500,
        50,
        payee(0x10),
    );
    events.push(event(&mcp, PaymentOutcome::Verified, NOW + 200));
    store.record(&events, limits).await.unwrap();

    let all = store.search(&query()).await.unwrap();
    assert_eq!(all.total, 31);
    assert_eq!(all.listings.len(), 20);
    // Settled first, most recently settled among equals by last seen.
    assert!(
        all.listings[..5]
            .iter()
            .all(|listing| listing.settled_count == 1)
    );
    assert!(
        all.listings[5..]
            .iter()
            .all(|listing| listing.settled_count == 0)
    );
    let second_page = store
        .search(&CatalogQuery {
            offset: 20,
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(second_page.listings.len(), 11);
    let words = store
        .search(&CatalogQuery {
            words: vec!["STOCKS".into()],
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(words.total, 15);
    let mcp_only = store
        .search(&CatalogQuery {
            kind: Some(bursar_protocol::discovery::ResourceKind::Mcp),
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(mcp_only.total, 1);
    assert_eq!(mcp_only.listings[0].operation, "summarize");
    let cheap = store
        .search(&CatalogQuery {
            max_amount: Some(bursar_protocol::Amount::from(500u64)),
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(cheap.total, 6, "prices 100..=500 and the 50 tool");
    let to_payee = store
        .search(&CatalogQuery {
            pay_to: Some(payee(0x11)),
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(to_payee.total, 10);
    let settled = store
        .search(&CatalogQuery {
            settled_only: true,
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(settled.total, 5);
    let wrong_network = store
        .search(&CatalogQuery {
            network: Some("eip155:1".into()),
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(wrong_network.total, 0);
    let asset = store
        .search(&CatalogQuery {
            asset: Some(TOKEN),
            network: Some("eip155:31337".into()),
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(asset.total, 31);
    // A LIKE wildcard in the words is a plain character.
    let wildcard = store
        .search(&CatalogQuery {
            words: vec!["%".into()],
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(wildcard.total, 0);

    // Aging out: only listings seen since the cutoff are served; pruning deletes the others.
    // (Settled listings were seen again when settled, at NOW + 100 and later.)
    let recent = store
        .search(&CatalogQuery {
            seen_since_ms: NOW + 25,
            ..query()
        })
        .await
        .unwrap();
    assert_eq!(recent.total, 5 + 5 + 1);
    assert_eq!(store.prune(NOW + 25).await.unwrap(), 20);
    assert_eq!(store.search(&query()).await.unwrap().total, 11);
}

async fn one_payee_cannot_crowd_out_others(store: Arc<dyn CatalogStore>) {
    let limits = CatalogLimits {
        listings_per_payee_max: 5,
        listings_max: 1_000,
    };
    let flooder = payee(0xee);
    let events: Vec<CatalogEvent> = (0..200u64)
        .map(|index| {
            event(
                &request(
                    &format!("https://spam.example/r{index}"),
                    http_extension("GET"),
                    payee(0xa1),
                    index,
                    1,
                    flooder,
                ),
                PaymentOutcome::Verified,
                NOW,
            )
        })
        .collect();
    assert_eq!(store.record(&events, limits).await.unwrap(), 5);
    let honest = request(
        "https://honest.example/data",
        http_extension("GET"),
        payee(0xa1),
        1_000,
        1,
        payee(0x33),
    );
    assert_eq!(
        store
            .record(&[event(&honest, PaymentOutcome::Verified, NOW)], limits)
            .await
            .unwrap(),
        1
    );
    let page = store.search(&query()).await.unwrap();
    assert_eq!(page.total, 6);
    // A listing already there is still updated by its payee's payments.
    let again = request(
        "https://spam.example/r0",
        http_extension("GET"),
        payee(0xa1),
        5_000,
        1,
        flooder,
    );
    assert_eq!(
        store
            .record(&[event(&again, PaymentOutcome::Settled, NOW + 1)], limits)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn sqlite_catalog() {
    let file = TempSqlite::new();
    let store: Arc<dyn CatalogStore> = Arc::new(SqliteDatabase::open(&file.url()).await.unwrap());
    counts_each_payment_once(store).await;
    let file = TempSqlite::new();
    filters_and_pages(Arc::new(SqliteDatabase::open(&file.url()).await.unwrap())).await;
    let file = TempSqlite::new();
    one_payee_cannot_crowd_out_others(Arc::new(SqliteDatabase::open(&file.url()).await.unwrap()))
        .await;
}

#[tokio::test]
async fn postgres_catalog() {
    let database = TempPostgres::create().await;
    counts_each_payment_once(Arc::new(
        PostgresDatabase::open(database.url()).await.unwrap(),
    ))
    .await;
    let database = TempPostgres::create().await;
    filters_and_pages(Arc::new(
        PostgresDatabase::open(database.url()).await.unwrap(),
    ))
    .await;
    let database = TempPostgres::create().await;
    one_payee_cannot_crowd_out_others(Arc::new(
        PostgresDatabase::open(database.url()).await.unwrap(),
    ))
    .await;
}

#[test]
fn hostile_extensions_are_not_listed() {
    let payer = payee(0xa1);
    let listed = |extension: Value| {
        observation(
            &request("https://x.example/a", extension, payer, 1, 1, payee(0x70)),
            PaymentOutcome::Verified,
            NOW,
        )
        .is_some()
    };
    assert!(listed(http_extension("GET")));
    // Oversized.
    let mut big = http_extension("GET");
    big["info"]["input"]["queryParams"] = json!({"blob": "x".repeat(20_000)});
    assert!(!listed(big));
    // Deeply nested.
    let mut deep = json!("leaf");
    for _ in 0..30 {
        deep = json!([deep]);
    }
    let mut nested = http_extension("GET");
    nested["schema"]["properties"]["deep"] = deep;
    assert!(!listed(nested));
    // A schema that refers outside itself (a fetch, or a bomb of remote references).
    let mut outside = http_extension("GET");
    outside["schema"]["$ref"] = json!("https://evil.example/bomb.json");
    assert!(!listed(outside));
    // Unsafe route templates.
    for template in ["/../admin", "/%2e%2e/x", "no-slash", "/x/<script>"] {
        let mut routed = http_extension("GET");
        routed["routeTemplate"] = json!(template);
        assert!(!listed(routed), "{template}");
    }
    let mut routed = http_extension("GET");
    routed["routeTemplate"] = json!("/users/:id");
    let event = observation(
        &request(
            "https://x.example/users/42?a=1",
            routed,
            payer,
            1,
            1,
            payee(0x70),
        ),
        PaymentOutcome::Verified,
        NOW,
    )
    .unwrap();
    assert_eq!(event.listing.resource, "https://x.example/users/:id");
    // Unknown kinds and methods.
    assert!(!listed(json!({"info": {"input": {"type": "ftp"}}})));
    assert!(!listed(
        json!({"info": {"input": {"type": "http", "method": "TRACE"}}})
    ));
    assert!(
        !listed(json!({"info": {"input": {"type": "mcp", "toolName": "t"}}})),
        "an MCP tool needs its input schema"
    );
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post(app: &axum::Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn http_api() {
    let file = TempSqlite::new();
    let store = Arc::new(SqliteDatabase::open(&file.url()).await.unwrap());
    let catalog = Catalog::new(store, CatalogConfig::default());
    let app = bursar_catalog::router(catalog.clone());
    let payer = PrivateKeySigner::random();
    let seller = payee(0x70);
    let paid = request(
        "https://api.example.com/weather",
        http_extension("GET"),
        payer.address(),
        7,
        1_000,
        seller,
    );
    let recorder = catalog.recorder();
    recorder.observe(&paid, PaymentOutcome::Verified);
    recorder.observe(&paid, PaymentOutcome::Settled);
    let only_verified = request(
        "https://api.example.com/other",
        http_extension("POST"),
        payer.address(),
        8,
        5,
        seller,
    );
    recorder.observe(&only_verified, PaymentOutcome::Verified);

    // The x402 v2 shape, read back by Bursar's own reader; the listing's script is inert text.
    let (status, headers, body) = get(&app, "/discovery/resources").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let page: ListingPage = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(page.x402_version, 2);
    assert_eq!(
        (
            page.pagination.limit,
            page.pagination.offset,
            page.pagination.total
        ),
        (20, 0, 2)
    );
    let first = &page.items[0];
    assert_eq!(first.resource, "https://api.example.com/weather");
    assert_eq!(first.kind, "http");
    assert_eq!(first.accepts[0].amount.to_string(), "1000");
    assert_eq!(
        first.description.as_deref(),
        Some("Weather <script>alert(1)</script> forecasts")
    );
    assert_eq!(first.service_name.as_deref(), Some("Sky"));
    assert_eq!(
        first.extensions.as_ref().unwrap()["bazaar"]["info"]["input"]["method"],
        "GET"
    );
    let reputation = first.reputation.as_ref().unwrap();
    assert!(reputation.settled);
    assert_eq!(
        (reputation.settled_count, reputation.distinct_payers),
        (1, 1)
    );
    assert!(!page.items[1].reputation.as_ref().unwrap().settled);
    assert!(body["items"][0]["lastUpdated"].is_string());

    // A dynamic route is found by any of its URLs, and only by those.
    let mut routed = http_extension("GET");
    routed["routeTemplate"] = json!("/users/:id");
    recorder.observe(
        &request(
            "https://api.example.com/users/7",
            routed,
            payer.address(),
            9,
            3,
            seller,
        ),
        PaymentOutcome::Verified,
    );
    for (url, found) in [
        ("https://api.example.com/users/42?x=1", 1),
        ("https://API.example.com/users/abc", 1),
        ("https://api.example.com/users/42/more", 0),
        ("https://other.example.com/users/42", 0),
        ("https://api.example.com/weather", 1),
    ] {
        let (status, _, body) = get(&app, &format!("/discovery/resources?resource={url}")).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(body["pagination"]["total"], found, "{url}: {body}");
    }
    let (status, _, _) = get(&app, "/discovery/resources?resource=javascript:alert(1)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Filters and errors.
    let (_, _, body) = get(&app, "/discovery/resources?settled=true").await;
    assert_eq!(body["pagination"]["total"], 1);
    let (_, _, body) = get(&app, "/discovery/resources?q=other&type=http").await;
    assert_eq!(body["pagination"]["total"], 1);
    let (_, _, body) = get(&app, "/discovery/resources?maxPrice=5&q=other").await;
    assert_eq!(
        body["items"][0]["resource"],
        "https://api.example.com/other"
    );
    let (_, _, body) = get(&app, "/discovery/resources?maxPrice=4").await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(
        body["items"][0]["resource"],
        "https://api.example.com/users/:id"
    );
    let (_, _, body) = get(
        &app,
        &format!("/discovery/resources?payTo={seller}&limit=1"),
    )
    .await;
    assert_eq!(
        (
            body["items"].as_array().unwrap().len(),
            body["pagination"]["total"].as_u64()
        ),
        (1, Some(3))
    );
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "offset=-1",
        "type=ftp",
        "maxPrice=1.5",
        "payTo=0x12",
        "network=nowhere",
        "settled=maybe",
    ] {
        let (status, _, body) = get(&app, &format!("/discovery/resources?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "invalid_query", "{bad}");
    }
    let (status, _, body) = get(&app, "/discovery/search?query=weather").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["resources"][0]["resource"],
        "https://api.example.com/weather"
    );
    assert_eq!(body["partialResults"], false);

    // Reports: signed by the payer of a settled payment, counted once.
    let nonce = B256::from(U256::from(7u64));
    let signed = |signer: &PrivateKeySigner, kind: ReportKind, nonce: B256| {
        let message = report_message(kind, "eip155:31337", TOKEN, payer.address(), nonce);
        let signature = signer.sign_message_sync(message.as_bytes()).unwrap();
        json!({"kind": kind.as_str(), "network": "eip155:31337", "asset": TOKEN, "payer": payer.address(),
               "nonce": nonce, "signature": alloy_primitives::Bytes::from(signature.as_bytes().to_vec())})
    };
    let (status, body) = post(
        &app,
        "/discovery/reports",
        signed(
            &PrivateKeySigner::random(),
            ReportKind::ValidationFailed,
            nonce,
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("invalid_report_signature"))
    );
    let (status, body) = post(
        &app,
        "/discovery/reports",
        signed(&payer, ReportKind::ValidationFailed, nonce),
    )
    .await;
    assert_eq!(
        (status, body["counted"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, body) = post(
        &app,
        "/discovery/reports",
        signed(&payer, ReportKind::ValidationFailed, nonce),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::OK, Some("already_reported"))
    );
    let (status, _) = post(
        &app,
        "/discovery/reports",
        signed(
            &payer,
            ReportKind::Compensated,
            B256::from(U256::from(8u64)),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a payment only verified cannot be reported"
    );
    let (status, _) = post(&app, "/discovery/reports", json!({"kind": "nonsense"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, _, body) = get(&app, "/discovery/resources?settled=true").await;
    let reputation = &body["items"][0]["reputation"];
    assert_eq!(reputation["validationFailures"], 1);
    assert_eq!(reputation["failureRateBps"], 10_000);
}
