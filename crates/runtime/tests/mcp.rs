//! The runtime paying MCP tools inside sessions, over the test network's paid MCP tools
//! (streamable HTTP, settled by the in-process facilitator on the embedded chain): the same
//! reservation, policies, evidence, posting and validation as HTTP, and the hostile cases.

mod common;

use alloy_primitives::U256;
use common::{Network_, PRICE, RuntimeUnderTest};
use serde_json::Value;

struct Setup {
    network: Network_,
    rt: RuntimeUnderTest,
    session: String,
    token: String,
    // Removed when the test ends, after the runtime.
    _database: bursar_store::testkit::TempSqlite,
}

async fn setup(budget: &str) -> Setup {
    let network = common::network().await;
    let database = bursar_store::testkit::TempSqlite::new();
    let rt = common::runtime(&network, &database.url()).await;
    let (wallet, _) = rt.funded_wallet(&network, "agent", 1000 * PRICE).await;
    let grant = rt.grant(&wallet, "tool-agent", None).await;
    let (session, token) = rt.session(&grant, budget, None).await;
    Setup {
        network,
        rt,
        session,
        token,
        _database: database,
    }
}

impl Setup {
    async fn call(&self, tool: &str) -> (u16, Value) {
        self.rt
            .call_tool(&self.network, &self.session, &self.token, tool)
            .await
    }

    async fn ledger_kinds(&self) -> Vec<String> {
        let (status, ledger) = self
            .rt
            .operator(
                http::Method::GET,
                &format!("/v1/ledger?sessionId={}", self.session),
                None,
            )
            .await;
        assert_eq!(status, 200, "{ledger}");
        ledger["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["kind"].as_str().unwrap().to_string())
            .collect()
    }
}

fn atomic(value: &Value) -> u64 {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_tool_is_reserved_paid_posted_and_validated_like_a_request() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let (status, free) = setup.call("free").await;
    assert_eq!(status, 200, "{free}");
    assert!(free["payment"].is_null(), "a free tool is not paid: {free}");

    let (status, paid) = setup.call("paid").await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], 200);
    assert_eq!(paid["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(paid["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["sky"], "clear");
    assert_eq!(atomic(&paid["payment"]["amountAtomic"]), PRICE);
    assert_eq!(paid["payment"]["state"], "posted", "{paid}");
    assert_eq!(paid["validation"]["passed"], true, "{paid}");
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));

    // The ledger holds the reservation and the post.
    assert_eq!(setup.ledger_kinds().await, ["reserve", "post"]);
    let (_, session_body) = setup
        .rt
        .operator(
            http::Method::GET,
            &format!("/v1/sessions/{}", setup.session),
            None,
        )
        .await;
    assert_eq!(atomic(&session_body["postedAtomic"]), PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_payment_fails_validation() {
    let setup = setup("1.00").await;
    let (status, paid) = setup.call("broken-output").await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(
        atomic(&paid["payment"]["amountAtomic"]),
        PRICE,
        "it was paid"
    );
    assert_eq!(paid["validation"]["passed"], false, "{paid}");
    let why = paid["validation"]["failure"].as_str().unwrap();
    assert!(why.contains("schema"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_required_again_after_paying_is_rejected_and_nothing_settles() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let (status, rejected) = setup.call("reask").await;
    assert_eq!(status, 502, "{rejected}");
    assert_eq!(rejected["error"]["code"], "payment_rejected", "{rejected}");
    assert_eq!(network.balance(network.payee).await, U256::ZERO);
    // Not paid twice: the next call is held back by the backoff after a 402 to a paid call.
    let (status, again) = setup.call("reask").await;
    assert_eq!(status, 403, "{again}");
    assert_eq!(network.balance(network.payee).await, U256::ZERO);
    assert_eq!(
        setup
            .ledger_kinds()
            .await
            .iter()
            .filter(|kind| *kind == "reserve")
            .count(),
        1,
        "one reservation, for the one payment made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_by_repetition_is_stopped_with_nothing_signed() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let mut paid = 0;
    let mut refusal = None;
    for _ in 0..15 {
        let (status, answer) = setup.call("paid").await;
        if status == 200 {
            paid += 1;
        } else {
            refusal = Some((status, answer));
            break;
        }
    }
    let (status, refusal) = refusal.expect("the repetition was stopped");
    assert_eq!(status, 403, "{refusal}");
    assert!(
        paid <= 10,
        "at most the default's per-endpoint rate: {paid}"
    );
    assert_eq!(
        network.balance(network.payee).await,
        U256::from(PRICE * paid),
        "exactly the calls that were paid moved money"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_priced_just_under_the_session_cap_is_refused_with_nothing_signed() {
    // 0.01 of a 0.0101 session: under the cap, but over the default policy's per-call maximum
    // (a quarter of the budget), as the HTTP twin.
    let setup = setup("0.0101").await;
    let network = &setup.network;
    let (status, refused) = setup.call("paid").await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["error"]["code"], "max_per_call_exceeded",
        "{refused}"
    );
    assert_eq!(network.balance(network.payee).await, U256::ZERO);
    assert_eq!(
        setup.ledger_kinds().await,
        ["deny"],
        "denied before anything was reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_whose_terms_shift_after_the_first_payment_is_refused() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let path = format!("/v1/sessions/{}/tools/call", setup.session);
    let call = |tool: &'static str| {
        setup.rt.call(
            http::Method::POST,
            &path,
            Some(&setup.token),
            Some(
                serde_json::json!({"server": format!("{}/mcp-shifty", network.seller_url),
                                    "tool": tool}),
            ),
        )
    };
    let (status, first) = call("paid").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["payment"]["state"], "posted", "{first}");
    for _ in 0..2 {
        let (status, shifted) = call("paid").await;
        assert_eq!(status, 403, "{shifted}");
        assert_eq!(shifted["error"]["code"], "terms_changed", "{shifted}");
    }
    let payees = &network.shifty_payees;
    assert_eq!(network.balance(payees[0]).await, U256::from(PRICE));
    for payee in &payees[1..] {
        assert_eq!(
            network.balance(*payee).await,
            U256::ZERO,
            "the new payee got nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_tool_call_keeps_its_evidence_and_its_failed_step_is_compensated() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let server = format!("{}/mcp", network.seller_url);
    let (status, paid) = setup
        .rt
        .call(
            http::Method::POST,
            &format!("/v1/sessions/{}/tools/call", setup.session),
            Some(&setup.token),
            Some(serde_json::json!({"server": server, "tool": "paid", "step": "forecast"})),
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["payment"]["state"], "posted", "{paid}");
    let tx = paid["payment"]["txHash"].as_str().unwrap().to_string();

    // The agent marks the step failed: settled, so a refund claim with the call's evidence.
    let (status, marked) = setup
        .rt
        .call(
            http::Method::POST,
            &format!("/v1/sessions/{}/failures", setup.session),
            Some(&setup.token),
            Some(serde_json::json!({"step": "forecast", "reason": "the forecast was wrong"})),
        )
        .await;
    assert_eq!(status, 200, "{marked}");
    let record = &marked["compensations"][0];
    assert_eq!(record["outcome"], "refund_claim", "{record}");
    assert_eq!(record["settleTxHash"], tx.as_str());
    let evidence = &record["evidence"];
    assert_eq!(evidence["step"], "forecast");
    assert_eq!(evidence["request"]["url"], format!("{server}/paid"));
    assert_eq!(evidence["response"]["status"], 200);
    assert_eq!(evidence["receipt"]["transaction"], tx.as_str());
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_tool_call_again_is_served_from_the_paid_response_cache() {
    let setup = setup("1.00").await;
    let network = &setup.network;
    let response = setup
        .rt
        .http
        .put(format!(
            "{}/v1/sessions/{}/policy",
            setup.rt.url, setup.session
        ))
        .bearer_auth(&setup.rt.operator_key)
        .body("[cache]\nttl = \"1h\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let (status, first) = setup.call("paid").await;
    assert_eq!(status, 200, "{first}");
    let transfer = first["payment"]["transferId"].as_str().unwrap().to_string();
    let (status, again) = setup.call("paid").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cachedFrom"], transfer.as_str(), "{again}");
    assert_eq!(again["body"], first["body"]);
    assert_eq!(
        network.balance(network.payee).await,
        U256::from(PRICE),
        "paid once"
    );
    // Other arguments ask another question: paid for, not served from the cache.
    let (status, other) = setup
        .rt
        .call(
            http::Method::POST,
            &format!("/v1/sessions/{}/tools/call", setup.session),
            Some(&setup.token),
            Some(
                serde_json::json!({"server": format!("{}/mcp", network.seller_url),
                                    "tool": "paid", "arguments": {"city": "Porto"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{other}");
    assert!(other["cachedFrom"].is_null(), "{other}");
    assert_eq!(network.balance(network.payee).await, U256::from(2 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_json_rpc_402_form_is_understood_and_paid() {
    let setup = setup("1.00").await;
    let (status, paid) = setup.call("legacy").await;
    assert_eq!(status, 200, "{paid}");
    let body: Value = serde_json::from_str(paid["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["sky"], "clear");
    assert_eq!(atomic(&paid["payment"]["amountAtomic"]), PRICE, "{paid}");
    // The server never settled: the reservation stays pending until the chain decides.
    assert_eq!(paid["payment"]["state"], "pending", "{paid}");
    assert_eq!(setup.ledger_kinds().await, ["reserve"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_its_sessions_budget_alerts() {
    // Two tool calls of 0.01 spend half of 0.04: the default policy's 50% alert.
    let setup = setup("0.04").await;
    for _ in 0..2 {
        let (status, paid) = setup.call("paid").await;
        assert_eq!(status, 200, "{paid}");
    }
    let (status, listed) = setup
        .rt
        .call(
            http::Method::GET,
            &format!("/v1/sessions/{}/alerts", setup.session),
            Some(&setup.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    let alerts = listed["alerts"].as_array().unwrap();
    assert!(!alerts.is_empty(), "{listed}");
    assert!(
        listed["webhook"].is_null(),
        "the webhook is the operator's: {listed}"
    );
}
