//! The agent runtime end to end over its HTTP API, on SQLite and on PostgreSQL: wallets, grants,
//! sessions, paying a real paywall on the embedded chain, budgets under concurrency, refusals,
//! authorization, two-phase accounting and reconciliation. Every case checks the chain and the
//! ledger, not only the HTTP answers.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use alloy_primitives::U256;
use bursar_protocol::Amount;
use bursar_runtime::reconcile::reconcile;
use bursar_store::runtime::{EntryKind, TransferState};
use common::{PRICE, network, runtime};
use http::Method;
use serde_json::json;

/// One paid request: the content comes back with a receipt; exactly the price moves on chain;
/// the transfer is posted with the settlement transaction; the ledger has reserve + post.
pub async fn pays_and_posts(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, address) = rt.funded_wallet(&network, "main", 1_000_000).await;
    let grant = rt.grant(&wallet, "researcher", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;

    let (status, free) = rt
        .fetch(&session, &token, &format!("{}/free", network.seller_url))
        .await;
    assert_eq!(status, 200, "{free}");
    assert_eq!(free["body"], "free");
    assert!(free["payment"].is_null());

    let (status, paid) = rt
        .fetch(&session, &token, &format!("{}/paid", network.seller_url))
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], 200);
    let body: serde_json::Value = serde_json::from_str(paid["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["content"], "paid");
    let payment = &paid["payment"];
    assert_eq!(payment["state"], "posted", "{paid}");
    assert_eq!(payment["amountAtomic"], PRICE.to_string());
    assert_eq!(payment["amount"], "0.01");
    let tx_hash = payment["txHash"].as_str().expect("tx hash").to_string();

    assert_eq!(
        network.balance(address).await,
        U256::from(1_000_000 - PRICE)
    );
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));

    let (status, shown) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{session}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["postedAtomic"], PRICE.to_string());
    assert_eq!(shown["reservedAtomic"], "0");
    assert_eq!(shown["remainingAtomic"], (1_000_000 - PRICE).to_string());

    let entries = rt.runtime.store().entries(0, 100).await.unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Reserve, EntryKind::Post]);
    assert_eq!(entries[1].tx_hash, Some(tx_hash.parse().unwrap()));
    assert_eq!(entries[1].amount, Some(Amount::from(PRICE)));
    assert_eq!(entries[1].agent.as_deref(), Some("researcher"));
    assert!(entries[1].resource.as_deref().unwrap().ends_with("/paid"));

    let report = reconcile(&rt.runtime).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
    assert_eq!(report.posted_total, Amount::from(PRICE));
}

/// 500 concurrent paid requests over 50 sessions on one wallet: each session pays exactly as
/// many times as its budget allows, never one atomic unit more, and the chain agrees with the
/// ledger to the unit.
pub async fn concurrent_sessions_never_overspend(store_url: &str) {
    const SESSIONS: usize = 50;
    const REQUESTS_PER_SESSION: usize = 10;
    const PAYABLE_PER_SESSION: u64 = 7;
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let start_balance = 100_000_000u64;
    let (wallet, address) = rt.funded_wallet(&network, "shared", start_balance).await;
    let grant = rt.grant(&wallet, "swarm", None).await;
    let budget = Amount::from(PRICE * PAYABLE_PER_SESSION).to_human(6);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(rt.session(&grant, &budget, None).await);
    }
    let rt = std::sync::Arc::new(rt);
    let url = format!("{}/paid", network.seller_url);
    let mut tasks = Vec::new();
    for (session, token) in &sessions {
        for _ in 0..REQUESTS_PER_SESSION {
            let (rt, session, token, url) =
                (rt.clone(), session.clone(), token.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (status, body) = rt.fetch(&session, &token, &url).await;
                (session, status, body)
            }));
        }
    }
    let mut paid: HashMap<String, u64> = HashMap::new();
    let mut denied = 0;
    for task in tasks {
        let (session, status, body) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["payment"]["state"], "posted", "{body}");
                *paid.entry(session).or_default() += 1;
            }
            403 => {
                assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
                denied += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let runtime = &rt.runtime;
    runtime.resolve_pending().await.unwrap();
    let mut posted_total = Amount::ZERO;
    for (session, _) in &sessions {
        let record = runtime.session(session).await.unwrap();
        assert!(
            record.posted.checked_add(record.reserved).unwrap() <= record.max_spend,
            "session {session} overspent: {record:?}"
        );
        assert_eq!(record.posted, Amount::from(PRICE * PAYABLE_PER_SESSION));
        assert_eq!(record.reserved, Amount::ZERO);
        assert_eq!(paid.get(session).copied(), Some(PAYABLE_PER_SESSION));
        posted_total = posted_total.checked_add(record.posted).unwrap();
    }
    assert_eq!(
        denied,
        SESSIONS * REQUESTS_PER_SESSION - SESSIONS * PAYABLE_PER_SESSION as usize
    );
    let spent_on_chain = U256::from(start_balance) - network.balance(address).await;
    assert_eq!(Amount::from_atomic(spent_on_chain), posted_total);
    assert_eq!(
        Amount::from_atomic(network.balance(network.payee).await),
        posted_total
    );

    let transfers = runtime.store().transfers(None).await.unwrap();
    assert_eq!(transfers.len(), SESSIONS * PAYABLE_PER_SESSION as usize);
    assert!(
        transfers
            .iter()
            .all(|t| t.state == TransferState::Posted && t.tx_hash.is_some())
    );
    let report = reconcile(runtime).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
    assert_eq!(report.posted_total, posted_total);
    let entries = runtime.store().entries(0, 10_000).await.unwrap();
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EntryKind::Reserve), 350);
    assert_eq!(count(EntryKind::Post), 350);
    assert_eq!(count(EntryKind::Deny), 150);

    // A session's transfers a page at a time: 3 + 3 + 1, each once, `next` null on the last.
    let (session, token) = &sessions[0];
    let mut seen = Vec::new();
    let mut path = format!("/v1/sessions/{session}/transfers?limit=3");
    let mut sizes = Vec::new();
    loop {
        let (status, page) = rt.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(status, 200, "{page}");
        let transfers = page["transfers"].as_array().unwrap();
        sizes.push(transfers.len());
        seen.extend(
            transfers
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/sessions/{session}/transfers?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), PAYABLE_PER_SESSION as usize);
    let foreign = runtime
        .store()
        .transfers(Some(&sessions[1].0))
        .await
        .unwrap()[0]
        .id
        .clone();
    let (status, answer) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{session}/transfers?after={foreign}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(
        status, 400,
        "another session's transfer as the cursor: {answer}"
    );
    let (status, answer) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{session}/transfers?limit=many"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("limit")),
        "the message names the bad parameter: {answer}"
    );
}

/// Expired session, expired grant, revoked grant and the kill switch: denied with their code,
/// and no signature ever reaches the seller; nothing moves.
pub async fn refusals_sign_nothing(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, address) = rt.funded_wallet(&network, "w", 1_000_000).await;
    let url = format!("{}/paid", network.seller_url);

    let short_grant = rt.grant(&wallet, "a1", Some(1)).await;
    let (grant_session, grant_token) = rt.session(&short_grant, "1", None).await;
    let grant = rt.grant(&wallet, "a2", None).await;
    let (short_session, short_token) = rt.session(&grant, "1", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = rt.fetch(&short_session, &short_token, &url).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("session_expired")),
        "{body}"
    );
    let (status, body) = rt.fetch(&grant_session, &grant_token, &url).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("grant_expired")),
        "{body}"
    );

    let (session, token) = rt.session(&grant, "1", None).await;
    let (status, _) = rt
        .operator(
            Method::POST,
            &format!("/v1/grants/{grant}/revoke"),
            Some(json!({"reason": "owner"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = rt.fetch(&session, &token, &url).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("grant_revoked")),
        "{body}"
    );
    // No new session under a revoked grant either.
    let (status, body) = rt
        .operator(
            Method::POST,
            "/v1/sessions",
            Some(json!({"grantId": grant, "maxSpendAmount": "1", "currency": "USDC"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    let live = rt.grant(&wallet, "a3", None).await;
    let (session, token) = rt.session(&live, "1", None).await;
    let (status, body) = rt
        .operator(Method::POST, "/v1/grants/revoke-all", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked"].as_u64().unwrap() >= 1);
    let (status, body) = rt.fetch(&session, &token, &url).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("grant_revoked")),
        "{body}"
    );

    // A price above the whole budget: the default policy refuses it (a call may take at most
    // a quarter of the budget) before the budget is consulted; nothing signed. (The budget's
    // own refusal: concurrent_sessions_never_overspend, and the proxy's budget test.)
    let grant = rt.grant(&wallet, "a4", None).await;
    let (session, token) = rt.session(&grant, "0.005", None).await;
    let (status, body) = rt.fetch(&session, &token, &url).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "max_per_call_exceeded", "{body}");

    assert_eq!(
        network.payments_seen(),
        0,
        "a payment header reached the seller"
    );
    assert_eq!(network.balance(address).await, U256::from(1_000_000u64));
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
    let entries = rt.runtime.store().entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 5);
    assert!(entries.iter().all(|e| e.kind == EntryKind::Deny));
}

/// Wrong tokens get 401; another agent's token and agent tokens on admin endpoints get 403;
/// nothing is paid for them.
pub async fn credentials_are_enforced(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, _) = rt.funded_wallet(&network, "w", 1_000_000).await;
    let grant = rt.grant(&wallet, "alice", None).await;
    let (alice, alice_token) = rt.session(&grant, "1", None).await;
    let other_grant = rt.grant(&wallet, "bob", None).await;
    let (bob, bob_token) = rt.session(&other_grant, "1", None).await;
    let url = format!("{}/paid", network.seller_url);
    let fetch_body = Some(json!({"url": url}));

    for credential in [
        None,
        Some("nonsense"),
        Some("bst_ses_0123_abcd"),
        Some("bok_0000"),
    ] {
        let (status, body) = rt
            .call(
                Method::POST,
                &format!("/v1/sessions/{alice}/fetch"),
                credential,
                fetch_body.clone(),
            )
            .await;
        assert_eq!(status, 401, "{credential:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // A forged token for alice's session (right shape, wrong MAC).
    let forged = format!("{}0", &alice_token[..alice_token.len() - 1]);
    let forged = if forged == alice_token {
        format!("{}1", &alice_token[..alice_token.len() - 1])
    } else {
        forged
    };
    let (status, _) = rt
        .call(
            Method::POST,
            &format!("/v1/sessions/{alice}/fetch"),
            Some(&forged),
            fetch_body.clone(),
        )
        .await;
    assert_eq!(status, 401);

    let (status, body) = rt
        .call(
            Method::POST,
            &format!("/v1/sessions/{alice}/fetch"),
            Some(&bob_token),
            fetch_body.clone(),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{alice}"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{bob}/transfers"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    for (method, path, body) in [
        (Method::GET, "/v1/wallets".to_string(), None),
        (
            Method::POST,
            "/v1/wallets".to_string(),
            Some(json!({"name": "mine"})),
        ),
        (
            Method::POST,
            "/v1/grants".to_string(),
            Some(json!({"walletId": wallet, "agent": "alice"})),
        ),
        (
            Method::POST,
            "/v1/sessions".to_string(),
            Some(json!({"grantId": grant, "maxSpendAmount": "100", "currency": "USDC"})),
        ),
        (
            Method::POST,
            format!("/v1/grants/{other_grant}/revoke"),
            None,
        ),
        (Method::POST, format!("/v1/sessions/{bob}/close"), None),
        (Method::GET, "/v1/ledger".to_string(), None),
    ] {
        let (status, answer) = rt.call(method, &path, Some(&alice_token), body).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
    }
    // The operator manages but cannot spend.
    let key = rt.operator_key.clone();
    let (status, _) = rt
        .call(
            Method::POST,
            &format!("/v1/sessions/{alice}/fetch"),
            Some(&key),
            fetch_body.clone(),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(network.payments_seen(), 0);
    assert_eq!(rt.runtime.store().grants(None).await.unwrap().len(), 2);
    assert_eq!(rt.runtime.store().sessions(None).await.unwrap().len(), 2);
    let (status, own) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{alice}"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{own}");
}

/// Creates are idempotent: the same client token returns the same session and token; other
/// content under the same key is a 409. Bad input is a 400 with a JSON body.
pub async fn creates_are_idempotent(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, _) = rt.funded_wallet(&network, "w", 0).await;
    let grant = rt.grant(&wallet, "alice", None).await;
    let body = json!({"grantId": grant, "maxSpendAmount": "2.50", "currency": "USDC", "clientToken": "run-42"});
    let (first_status, first) = rt
        .operator(Method::POST, "/v1/sessions", Some(body.clone()))
        .await;
    let (again_status, again) = rt
        .operator(Method::POST, "/v1/sessions", Some(body.clone()))
        .await;
    assert_eq!((first_status, again_status), (201, 200));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["token"], again["token"]);
    assert_eq!(first["maxSpendAtomic"], "2500000");
    let mut other = body.clone();
    other["maxSpendAmount"] = json!("3");
    let (status, conflict) = rt.operator(Method::POST, "/v1/sessions", Some(other)).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "conflict");

    let request = |key: &str| {
        rt.http
            .post(format!("{}/v1/grants", rt.url))
            .bearer_auth(&rt.operator_key)
            .header("Idempotency-Key", key)
            .json(&json!({"walletId": wallet, "agent": "bob", "expiresInSeconds": 600}))
    };
    let one: serde_json::Value = request("g-1").send().await.unwrap().json().await.unwrap();
    let two: serde_json::Value = request("g-1").send().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], two["id"]);
    assert_eq!(rt.runtime.store().grants(None).await.unwrap().len(), 2);

    for (body, code) in [
        (
            json!({"grantId": grant, "maxSpendAmount": "1.0000001", "currency": "USDC"}),
            400,
        ),
        (
            json!({"grantId": grant, "maxSpendAmount": "-1", "currency": "USDC"}),
            400,
        ),
        (
            json!({"grantId": grant, "maxSpendAmount": "1", "currency": "EUR"}),
            400,
        ),
        (
            json!({"grantId": grant, "maxSpendAmount": "0", "currency": "USDC"}),
            400,
        ),
        (
            json!({"grantId": "grt_missing", "maxSpendAmount": "1", "currency": "USDC"}),
            404,
        ),
        (
            json!({"grantId": grant, "maxSpendAmount": 1.5, "currency": "USDC"}),
            400,
        ),
        (json!([1, 2]), 400),
    ] {
        let (status, answer) = rt
            .operator(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        assert_eq!(status, code, "{body} -> {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    let (status, _) = rt
        .operator(Method::POST, "/v1/wallets", Some(json!({"name": "w"})))
        .await;
    assert_eq!(status, 409, "duplicate wallet name");

    // The currency may be left out (there is one); named, it must be the runtime's.
    for body in [
        json!({"grantId": grant, "maxSpendAmount": "0.75"}),
        json!({"grantId": grant, "maxSpendAmount": "0.75", "currency": "usdc"}),
    ] {
        let (status, session) = rt
            .operator(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        assert_eq!(status, 201, "{body} -> {session}");
        assert_eq!(session["currency"], "USDC");
        assert_eq!(session["maxSpendAtomic"], "750000");
        assert_eq!(
            session["asset"],
            network.token.address().to_string().to_ascii_lowercase()
        );
    }
    let (status, refused) = rt
        .operator(
            Method::POST,
            "/v1/sessions",
            Some(json!({"grantId": grant, "maxSpendAmount": "1", "currency": "EUR"})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_request");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("USDC") && message.contains("EUR"),
        "{message}"
    );
}

/// A seller that answers 402 again after receiving the signed payment is not paid twice; the
/// amount stays reserved while the authorization could still be settled, and is voided once the
/// chain passes validBefore with the authorization unused.
pub async fn unsettled_payments_are_voided_after_expiry(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, address) = rt.funded_wallet(&network, "w", 1_000_000).await;
    let grant = rt.grant(&wallet, "a", None).await;
    let (session, token) = rt.session(&grant, "1", None).await;
    let (status, body) = rt
        .fetch(&session, &token, &format!("{}/rejects", network.seller_url))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "payment_rejected");
    let transfer_id = body["error"]["transferId"].as_str().unwrap().to_string();
    assert_eq!(network.payments_seen(), 1, "paid once, never twice");

    let runtime = &rt.runtime;
    assert_eq!(runtime.resolve_pending().await.unwrap(), (0, 0));
    let record = runtime.session(&session).await.unwrap();
    assert_eq!(record.reserved, Amount::from(PRICE));
    let report = reconcile(runtime).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);

    network.chain.increase_time(120).await.unwrap();
    assert_eq!(runtime.resolve_pending().await.unwrap(), (0, 1));
    let transfer = runtime
        .store()
        .transfer(&transfer_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(transfer.state, TransferState::Voided);
    assert_eq!(transfer.void_reason.as_deref(), Some("expired_unused"));
    let record = runtime.session(&session).await.unwrap();
    assert_eq!(record.reserved, Amount::ZERO);
    assert_eq!(record.posted, Amount::ZERO);
    assert_eq!(network.balance(address).await, U256::from(1_000_000u64));
    let report = reconcile(runtime).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
    assert_eq!(report.voided_total, Amount::from(PRICE));
}

on_both_databases!(
    pays_and_posts,
    concurrent_sessions_never_overspend,
    refusals_sign_nothing,
    credentials_are_enforced,
    creates_are_idempotent,
    unsettled_payments_are_voided_after_expiry,
);

#[tokio::test]
async fn openapi_names_every_route() {
    let document: serde_json::Value =
        serde_json::from_str(bursar_runtime::api::openapi_json()).expect("openapi.json is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let source = include_str!("../src/api/mod.rs");
    let mut routes = 0;
    for (index, _) in source.match_indices(".route(") {
        let rest = source[index + ".route(".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let path = rest.split('"').next().unwrap();
        assert!(
            paths.contains_key(path),
            "{path} is missing from openapi.json"
        );
        routes += 1;
    }
    assert_eq!(
        routes,
        paths.len(),
        "openapi.json documents routes the API does not serve"
    );
    // Request shapes the API accepts: a session's currency is optional; a pause is lifted by
    // the policy that paused it.
    let create = &document["components"]["schemas"]["CreateSession"];
    let required: Vec<&str> = create["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["grantId", "maxSpendAmount"]);
    assert!(create["properties"]["currency"].is_object());
    let lift =
        &paths["/v1/pauses/lift"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let lift = match lift["$ref"].as_str() {
        Some(reference) => document
            .pointer(reference.trim_start_matches('#'))
            .expect("the reference resolves"),
        None => lift,
    };
    assert_eq!(lift["required"], json!(["policy", "endpoint"]));
    let listed = &paths["/v1/pauses"]["get"];
    assert_eq!(listed["parameters"][0]["name"], "policy");
}

/// The check every test's calls go through catches an answer that differs from the served
/// document: a wrong type, a missing field, an undeclared field, an undocumented status, an
/// error body that is not one, a route the document does not have.
#[tokio::test]
async fn answers_that_differ_from_the_document_are_caught() {
    let network = network().await;
    let database = bursar_store::testkit::TempSqlite::new();
    let rt = runtime(&network, &database.url()).await;
    let (status, wallet) = rt
        .operator(
            Method::POST,
            "/v1/wallets",
            Some(json!({"name": "checked"})),
        )
        .await;
    assert_eq!(status, 201, "{wallet}");
    let document = rt.openapi().await;
    let check = |method: &str, path: &str, status: u16, body: &serde_json::Value| {
        common::openapi::check(&document, method, path, status, body)
    };
    assert_eq!(check("POST", "/v1/wallets", 201, &wallet), Ok(()));
    let id = wallet["id"].as_str().unwrap();
    let (status, shown) = rt
        .operator(Method::GET, &format!("/v1/wallets/{id}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");

    let mut wrong_type = wallet.clone();
    wrong_type["createdAtMs"] = json!("yesterday");
    let mut missing = wallet.clone();
    missing.as_object_mut().unwrap().remove("address");
    let mut undeclared = wallet.clone();
    undeclared["secret"] = json!("0x00");
    let mut balance_as_number = shown.clone();
    balance_as_number["balance"]["atomic"] = json!(100);
    let mut shown_undeclared = shown.clone();
    shown_undeclared["key"] = json!("0x00");
    let not_an_error = json!({"message": "no"});
    for (method, path, status, body) in [
        ("POST", "/v1/wallets", 201, &wrong_type),
        ("POST", "/v1/wallets", 201, &missing),
        ("POST", "/v1/wallets", 201, &undeclared),
        ("GET", "/v1/wallets/w", 200, &balance_as_number),
        ("GET", "/v1/wallets/w", 200, &shown_undeclared),
        ("POST", "/v1/wallets", 202, &wallet),
        ("POST", "/v1/wallets", 404, &not_an_error),
        ("PATCH", "/v1/wallets", 200, &wallet),
        ("GET", "/v1/nowhere/else/at/all", 200, &wallet),
    ] {
        let checked = check(method, path, status, body);
        assert!(checked.is_err(), "{method} {path} {status} {body} passed");
    }
    assert_eq!(
        check("GET", &format!("/v1/wallets/{id}"), 200, &shown),
        Ok(())
    );
}
