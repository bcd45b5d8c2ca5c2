//! `bursar mcp` as an agent uses it: an MCP client (rmcp's) spawns it over stdio with a session
//! token, lists its tools and calls them; payments go through the runtime inside `bursar dev`,
//! and balances are read from the chain.

mod common;
use common::*;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

/// Spawns `bursar mcp` over stdio with `token` and connects to it.
async fn connect(dev: &Dev, token: &str) -> RunningService<RoleClient, ()> {
    connect_with(dev, token, &[]).await
}

/// [`connect`] with more arguments for `bursar mcp`.
async fn connect_with(dev: &Dev, token: &str, extra: &[&str]) -> RunningService<RoleClient, ()> {
    let mut command = tokio::process::Command::new(BURSAR);
    command
        .args(["mcp", "--session", token])
        .args(extra)
        .arg("--runtime-url")
        .arg(dev.info["runtimeUrl"].as_str().unwrap())
        .env_remove("BURSAR_SESSION_TOKEN")
        .env("BURSAR_LOG", "warn");
    let transport = TokioChildProcess::new(command).expect("spawn bursar mcp");
    ().serve(transport).await.expect("the MCP handshake")
}

async fn call(
    client: &RunningService<RoleClient, ()>,
    tool: &str,
    arguments: Value,
) -> CallToolResult {
    let arguments = arguments.as_object().cloned().unwrap_or_default();
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
        .await
        .expect("a tool result")
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|text| text.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_agent_pays_through_bursar_mcp_over_stdio_within_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (_session, token) = open_session(&dev, &key, "mcp-agent", "0.20");
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let (buyer_start, seller_start) = (dev.balance(&buyer), dev.balance(&seller));
    let weather = dev.api("/weather");
    let report = dev.api("/report");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let tools_url = dev.api("/mcp");
    let (tools, paid, tool_paid, budget, refused) = runtime.block_on(async {
        let client = connect(&dev, &token).await;
        let tools: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|tool| tool.name.to_string())
            .collect();
        let paid = call(&client, "fetch", json!({"url": weather, "step": "look-up"})).await;
        // A paid tool of an upstream MCP server (the demo tools of `bursar dev`).
        let tool_paid = call(
            &client,
            "call_tool",
            json!({"server": tools_url, "tool": "weather", "arguments": {"city": "Porto"}}),
        )
        .await;
        let budget = call(&client, "budget", json!({})).await;
        // The report (0.25) is above what the session may spend (0.18 left): refused below the
        // agent, nothing signed.
        let refused = call(&client, "fetch", json!({"url": report})).await;
        client.cancel().await.ok();
        (tools, paid, tool_paid, budget, refused)
    });

    assert_eq!(tools, ["fetch", "call_tool", "search", "budget"]);
    assert_ne!(paid.is_error, Some(true), "{}", text(&paid));
    let outcome = paid.structured_content.clone().expect("structured output");
    assert_eq!(outcome["status"], 200, "{outcome}");
    assert!(outcome["body"].as_str().unwrap().contains("Lisbon"));
    assert_eq!(outcome["payment"]["amountAtomic"], "10000");
    assert_eq!(
        outcome["payment"]["payTo"].as_str().unwrap().to_lowercase(),
        seller.to_lowercase()
    );
    // The agent sees a receipt, never a key or a signed payload.
    let shown = serde_json::to_string(&paid).unwrap();
    for secret in [
        "privateKey",
        "signature",
        "PAYMENT-SIGNATURE",
        "authorization",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }

    assert_ne!(tool_paid.is_error, Some(true), "{}", text(&tool_paid));
    let outcome = tool_paid
        .structured_content
        .clone()
        .expect("structured output");
    assert_eq!(outcome["status"], 200, "{outcome}");
    let output: Value = serde_json::from_str(outcome["body"].as_str().unwrap()).unwrap();
    assert_eq!(output["city"], "Porto");
    assert_eq!(outcome["contentType"], "application/json");
    assert_eq!(outcome["payment"]["amountAtomic"], "10000");
    assert_eq!(outcome["payment"]["state"], "posted", "{outcome}");
    assert!(
        outcome["validation"]["passed"].as_bool().unwrap_or(true),
        "{outcome}"
    );

    let budget = budget.structured_content.expect("the session");
    assert_eq!(budget["maxSpendAtomic"], "200000", "{budget}");
    let spent = budget["postedAtomic"]
        .as_str()
        .unwrap()
        .parse::<u128>()
        .unwrap()
        + budget["reservedAtomic"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap();
    assert_eq!(spent, 2 * WEATHER_PRICE);
    assert_eq!(budget["remainingAtomic"], "180000");
    assert!(
        budget["alerts"].is_array(),
        "the session's alerts: {budget}"
    );

    assert_eq!(refused.is_error, Some(true));
    let why = text(&refused);
    assert!(why.contains("budget") || why.contains("exceed"), "{why}");
    assert_eq!(dev.balance(&buyer), buyer_start - 2 * WEATHER_PRICE);
    assert_eq!(dev.balance(&seller), seller_start + 2 * WEATHER_PRICE);
}

#[test]
fn wrong_and_expired_session_tokens_are_refused_and_nothing_moves() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (session, _token) = open_session(&dev, &key, "mcp-agent", "0.20");
    let buyer = dev.buyer();
    let buyer_start = dev.balance(&buyer);
    let weather = dev.api("/weather");
    let forged = format!("bst_{session}_{}", "0".repeat(64));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (fetched, budget) = runtime.block_on(async {
        let client = connect(&dev, &forged).await;
        let fetched = call(&client, "fetch", json!({"url": weather})).await;
        let budget = call(&client, "budget", json!({})).await;
        client.cancel().await.ok();
        (fetched, budget)
    });
    for result in [&fetched, &budget] {
        assert_eq!(result.is_error, Some(true));
        assert!(text(result).contains("unauthorized"), "{}", text(result));
    }
    assert_eq!(dev.balance(&buyer), buyer_start);

    // An expired session: refused too, and nothing moves.
    let (status, grant) = runtime_call(
        &dev,
        reqwest::Method::POST,
        "/v1/grants",
        &key,
        Some(json!({"walletId": "demo", "agent": "brief-agent"})),
    );
    assert_eq!(status, 201, "{grant}");
    let (status, brief) = runtime_call(
        &dev,
        reqwest::Method::POST,
        "/v1/sessions",
        &key,
        Some(json!({"grantId": grant["id"], "maxSpendAmount": "0.20", "expiresInSeconds": 1})),
    );
    assert_eq!(status, 201, "{brief}");
    // Past its expiry by the wall clock, whatever the load: the runtime compares times.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let expired = runtime.block_on(async {
        let client = connect(&dev, brief["token"].as_str().unwrap()).await;
        let fetched = call(&client, "fetch", json!({"url": weather})).await;
        client.cancel().await.ok();
        fetched
    });
    assert_eq!(expired.is_error, Some(true));
    assert!(
        text(&expired).contains("session_expired"),
        "{}",
        text(&expired)
    );
    assert_eq!(dev.balance(&buyer), buyer_start);

    // Not a session token at all: the command refuses to start.
    let output = dev.bursar(&["mcp", "--session", "not-a-token"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("session token"));
}

#[test]
fn proxy_mode_offers_upstream_paid_tools_as_plain_tools_paid_within_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (_session, token) = open_session(&dev, &key, "proxy-agent", "0.20");
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let (buyer_start, seller_start) = (dev.balance(&buyer), dev.balance(&seller));
    let upstream = dev.api("/mcp");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tools, answer) = runtime.block_on(async {
        let client = connect_with(&dev, &token, &["--upstream", &upstream]).await;
        let tools: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|tool| tool.name.to_string())
            .collect();
        let answer = call(&client, "weather", json!({"city": "Evora"})).await;
        client.cancel().await.ok();
        (tools, answer)
    });
    assert_eq!(
        tools,
        [
            "fetch",
            "call_tool",
            "search",
            "budget",
            "joke",
            "report",
            "weather"
        ]
    );
    // The agent gets the tool's own output, and a receipt beside it.
    assert_ne!(answer.is_error, Some(true), "{}", text(&answer));
    let output = answer
        .structured_content
        .clone()
        .expect("the tool's output");
    assert_eq!(output["city"], "Evora");
    let receipt = &answer.meta.as_ref().expect("a receipt").0["bursar/payment"];
    assert_eq!(receipt["amountAtomic"], "10000", "{receipt}");
    assert_eq!(receipt["state"], "posted", "{receipt}");
    assert_eq!(dev.balance(&buyer), buyer_start - WEATHER_PRICE);
    assert_eq!(dev.balance(&seller), seller_start + WEATHER_PRICE);
}

/// A discovery catalog (`GET /discovery/resources`, x402 Bazaar's shape) on loopback, honoring
/// `type`.
async fn catalog() -> String {
    use axum::extract::Query;
    let items = json!([
        {"resource": "https://api.example.com/weather", "type": "http", "x402Version": 2,
         "accepts": [], "lastUpdated": "2026-12-01T00:00:00Z",
         "metadata": {"description": "Current weather for a city"}},
        {"resource": "mcp://tool/joke", "type": "mcp", "x402Version": 2, "accepts": [],
         "lastUpdated": "2026-12-01T00:00:00Z", "metadata": {"description": "A programmer joke"}},
        {"resource": "mcp://tool/forecast", "type": "mcp", "x402Version": 2, "accepts": [],
         "lastUpdated": "2026-12-01T00:00:00Z", "metadata": {"description": "Weather tomorrow"}},
    ]);
    let app = axum::Router::new().route(
        "/discovery/resources",
        axum::routing::get(
            move |Query(query): Query<std::collections::HashMap<String, String>>| {
                let items: Vec<Value> = items
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|item| query.get("type").is_none_or(|kind| item["type"] == *kind))
                    .cloned()
                    .collect();
                let total = items.len();
                async move {
                    axum::Json(json!({"x402Version": 2, "items": items,
                        "pagination": {"limit": 100, "offset": 0, "total": total}}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[test]
fn search_reads_the_configured_discovery_catalogs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (_session, token) = open_session(&dev, &key, "searching-agent", "0.20");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (weather, tools, unreachable) = runtime.block_on(async {
        let catalog = catalog().await;
        let client = connect_with(
            &dev,
            &token,
            &["--catalog", &catalog, "--catalog", "http://127.0.0.1:9"],
        )
        .await;
        let weather = call(&client, "search", json!({"query": "weather"})).await;
        let tools = call(&client, "search", json!({"type": "mcp"})).await;
        client.cancel().await.ok();
        let bare = connect(&dev, &token).await;
        let unreachable = call(&bare, "search", json!({})).await;
        bare.cancel().await.ok();
        (weather, tools, unreachable)
    });
    let found = weather.structured_content.expect("results");
    let resources: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        ["https://api.example.com/weather", "mcp://tool/forecast"]
    );
    assert_eq!(
        found["unreadable"].as_array().unwrap().len(),
        1,
        "the closed port is reported"
    );
    let found = tools.structured_content.expect("results");
    assert_eq!(found["items"].as_array().unwrap().len(), 2);
    assert!(
        found["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["type"] == "mcp")
    );
    assert_eq!(unreachable.is_error, Some(true));
    assert!(text(&unreachable).contains("--catalog"));
}

/// `bursar mcp --listen`: rmcp's streamable HTTP client with the session token as bearer lists
/// and calls the tools; without a token, or with another's, nothing is paid.
#[test]
fn over_streamable_http_the_bearer_token_is_the_session() {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (_session, token) = open_session(&dev, &key, "http-agent", "0.20");
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let (buyer_start, seller_start) = (dev.balance(&buyer), dev.balance(&seller));
    let mut server = std::process::Command::new(BURSAR)
        .args(["mcp", "--listen", "127.0.0.1:0", "--runtime-url"])
        .arg(dev.info["runtimeUrl"].as_str().unwrap())
        .env_remove("BURSAR_SESSION_TOKEN")
        .env("BURSAR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bursar mcp --listen");
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let weather = dev.api("/weather");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connect_http = |bearer: Option<&str>| {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
        if let Some(bearer) = bearer {
            config = config.auth_header(bearer.to_string());
        }
        ().serve(StreamableHttpClientTransport::from_config(config))
    };
    let (tools, paid, anonymous) = runtime.block_on(async {
        let client = connect_http(Some(&token)).await.expect("the MCP handshake");
        let tools: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|tool| tool.name.to_string())
            .collect();
        let paid = call(&client, "fetch", json!({"url": weather})).await;
        client.cancel().await.ok();
        let anonymous = connect_http(None).await.expect("the MCP handshake");
        let refused = call(&anonymous, "fetch", json!({"url": weather})).await;
        anonymous.cancel().await.ok();
        (tools, paid, refused)
    });
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(tools, ["fetch", "call_tool", "search", "budget"]);
    let outcome = paid.structured_content.clone().expect("structured output");
    assert_eq!(outcome["status"], 200, "{outcome}");
    assert_eq!(outcome["payment"]["amountAtomic"], "10000");
    assert_eq!(anonymous.is_error, Some(true));
    assert!(
        text(&anonymous).contains("no session token"),
        "{}",
        text(&anonymous)
    );
    assert_eq!(dev.balance(&buyer), buyer_start - WEATHER_PRICE);
    assert_eq!(dev.balance(&seller), seller_start + WEATHER_PRICE);
}

/// `bursar discover`: the same search on the command line, as JSON or one line per listing; no
/// readable catalog is an error that says what to check.
#[test]
fn discover_searches_catalogs_from_the_command_line() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let catalog = runtime.block_on(catalog());
    let output = std::process::Command::new(BURSAR)
        .args(["discover", "weather", "--catalog", &catalog, "--json"])
        .env_remove("BURSAR_CATALOGS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let found: Value = serde_json::from_slice(&output.stdout).unwrap();
    let resources: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        ["https://api.example.com/weather", "mcp://tool/forecast"]
    );

    let output = std::process::Command::new(BURSAR)
        .args(["discover", "--type", "mcp", "--catalog", &catalog])
        .env_remove("BURSAR_CATALOGS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.lines().all(|line| line.starts_with("mcp://tool/")),
        "{listed}"
    );

    let output = std::process::Command::new(BURSAR)
        .args(["discover", "--catalog", "http://127.0.0.1:9"])
        .env_remove("BURSAR_CATALOGS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no catalog could be read"));
}
