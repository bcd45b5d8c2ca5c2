//! Paid MCP tools end to end: an rmcp client calls tools of an rmcp server wrapped in
//! [`PaidTools`], pays with a real signature, and a local facilitator settles on the embedded
//! chain. Balances are read from the chain.

use std::sync::Arc;

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_buyer::PayingClient;
use bursar_chain::testkit::{self, Fixture, TOKEN_NAME};
use bursar_chain::{DevChain, EvmChain};
use bursar_chain_revm::EmbeddedChain;
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator};
use bursar_protocol::bazaar::published_output_schema;
use bursar_protocol::mcp::{self, PAYMENT_META_KEY};
use bursar_protocol::{
    Amount, AssetUnit, Network, PaymentPayload, PaymentRequired, Reason, SettleResponse,
};
use bursar_seller::{Asset, Offer, PaidTools, PricedTool};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, MetaObject, PaginatedRequestParams, RequestMetaObject, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

const PRICE: u64 = 25_000;
const PAYER_BALANCE: u64 = 1_000_000;

/// A tool server with a forecast (succeeds, publishes an output schema), a tool that always
/// fails, and a free tool.
#[derive(Clone)]
struct Weather;

fn object(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().expect("an object").clone())
}

fn tools() -> Vec<Tool> {
    let input = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let mut forecast = Tool::new(
        "forecast",
        "Tomorrow's weather in a city",
        object(input.clone()),
    );
    forecast.output_schema = Some(object(json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "sky": {"type": "string"}},
        "required": ["city", "sky"],
    })));
    vec![
        forecast,
        Tool::new("broken", "Always fails", object(input.clone())),
        Tool::new("time", "The time, free", object(json!({"type": "object"}))),
    ]
}

impl ServerHandler for Weather {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // The payment never reaches the tool.
        assert!(!context.meta.0.0.contains_key(PAYMENT_META_KEY));
        let city = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("city"))
            .and_then(Value::as_str)
            .unwrap_or("nowhere")
            .to_string();
        let result = match request.name.as_ref() {
            "forecast" => CallToolResult::structured(json!({"city": city, "sky": "clear"})),
            "broken" => {
                CallToolResult::error(vec![ContentBlock::text("the weather service is down")])
            }
            "time" => CallToolResult::success(vec![ContentBlock::text("noon")]),
            other => return Err(McpError::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(result.into())
    }
}

struct Setup {
    fixture: Fixture,
    payee: Address,
    client: RunningService<RoleClient, ()>,
    buyer: PayingClient,
}

async fn setup() -> Setup {
    let chain: Arc<dyn DevChain> = EmbeddedChain::memory();
    let fixture = testkit::fixture(chain.clone(), PAYER_BALANCE).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let facilitator = Arc::new(LocalFacilitator::new(
        evm,
        testkit::funded_account(&chain).await,
        FacilitatorConfig::default(),
    ));
    let payee = PrivateKeySigner::random().address();
    let network = Network::Eip155(chain.chain_id());
    let asset = Asset::new(fixture.token.address(), TOKEN_NAME, "2", AssetUnit::usdc());
    let offer = Offer::exact(network.clone(), asset, Amount::from(PRICE), payee);
    let server = PaidTools::new(
        Weather,
        facilitator,
        [
            PricedTool::new("forecast").offer(offer.clone()),
            PricedTool::new("broken").offer(offer),
        ],
    )
    .expect("valid prices");
    let (server_end, client_end) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let running = server.serve(server_end).await.expect("server starts");
        let _ = running.waiting().await;
    });
    let client = ().serve(client_end).await.expect("client connects");
    let buyer = PayingClient::new(reqwest::Client::new(), Arc::new(fixture.payer.clone()))
        .max_amount(Amount::from(PRICE))
        .allow_network(network);
    Setup {
        fixture,
        payee,
        client,
        buyer,
    }
}

async fn balance(fixture: &Fixture, who: Address) -> U256 {
    fixture.token.balance_of(who).await.expect("balance")
}

fn call(name: &str, payment: Option<&PaymentPayload>) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_string())
        .with_arguments(json!({"city": "Lisbon"}).as_object().unwrap().clone());
    if let Some(payment) = payment {
        let mut meta = serde_json::Map::new();
        mcp::attach_payment(&mut meta, payment);
        params.meta = Some(RequestMetaObject(MetaObject(meta)));
    }
    params
}

fn as_json(result: &CallToolResult) -> Value {
    serde_json::to_value(result).expect("a result serializes")
}

fn payment_required(result: &CallToolResult) -> PaymentRequired {
    mcp::payment_required_in_result(&as_json(result))
        .expect("a payment-required result")
        .expect("a readable document")
}

fn settlement(result: &CallToolResult) -> Option<SettleResponse> {
    let meta = result.meta.as_ref()?;
    mcp::settlement_in_meta(&meta.0).map(|read| read.expect("a readable settlement"))
}

/// Asks, signs and returns the payment for `tool`.
async fn pay_for(setup: &Setup, tool: &str) -> PaymentPayload {
    let asked = setup.client.call_tool(call(tool, None)).await.unwrap();
    let quote = setup
        .buyer
        .quote(payment_required(&asked))
        .expect("payable");
    setup
        .buyer
        .sign(&quote)
        .await
        .expect("signed")
        .payload()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_call_asks_for_payment_and_runs_nothing() {
    let setup = setup().await;
    let result = setup
        .client
        .call_tool(call("forecast", None))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let required = payment_required(&result);
    assert_eq!(required.resource.url, "mcp://tool/forecast");
    assert_eq!(required.accepts.len(), 1);
    assert_eq!(required.accepts[0].amount, Amount::from(PRICE));
    assert_eq!(required.accepts[0].pay_to.evm(), Some(setup.payee));
    // The same document as text, and the tool's output schema in the bazaar extension.
    let text: Value =
        serde_json::from_str(result.content[0].as_text().unwrap().text.as_str()).unwrap();
    assert_eq!(text, result.structured_content.clone().unwrap());
    let schema = published_output_schema(&required).expect("the output schema");
    assert_eq!(schema["required"], json!(["city", "sky"]));
    assert_eq!(
        required.extensions.as_ref().unwrap()["bazaar"]["info"]["input"]["toolName"],
        "forecast"
    );
    assert_eq!(balance(&setup.fixture, setup.payee).await, U256::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_call_runs_the_tool_and_settles_exactly_the_price() {
    let setup = setup().await;
    let payer = setup.fixture.payer.address();
    let payment = pay_for(&setup, "forecast").await;
    let result = setup
        .client
        .call_tool(call("forecast", Some(&payment)))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(
        result.structured_content,
        Some(json!({"city": "Lisbon", "sky": "clear"}))
    );
    let settled = settlement(&result).expect("the settlement in _meta");
    assert!(settled.success);
    assert_eq!(settled.payer.and_then(|payer| payer.evm()), Some(payer));
    let hash = settled.transaction.evm().expect("a transaction hash");
    let receipt = testkit::mined(setup.fixture.chain.as_ref(), hash).await;
    assert!(receipt.success);
    assert_eq!(
        balance(&setup.fixture, setup.payee).await,
        U256::from(PRICE)
    );
    assert_eq!(
        balance(&setup.fixture, payer).await,
        U256::from(PAYER_BALANCE - PRICE)
    );

    // The same payment again: refused, nothing moves, the tool does not answer.
    let replayed = setup
        .client
        .call_tool(call("forecast", Some(&payment)))
        .await
        .unwrap();
    assert_eq!(replayed.is_error, Some(true));
    let refused = payment_required(&replayed);
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains(Reason::NONCE_ALREADY_USED.as_str()),
        "{error}"
    );
    assert_eq!(
        balance(&setup.fixture, setup.payee).await,
        U256::from(PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tool_is_not_settled() {
    let setup = setup().await;
    let payer = setup.fixture.payer.address();
    let payment = pay_for(&setup, "broken").await;
    let result = setup
        .client
        .call_tool(call("broken", Some(&payment)))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert_eq!(
        result.content[0].as_text().unwrap().text,
        "the weather service is down"
    );
    assert!(settlement(&result).is_none());
    assert!(mcp::payment_required_in_result(&as_json(&result)).is_none());
    assert_eq!(balance(&setup.fixture, setup.payee).await, U256::ZERO);
    assert_eq!(
        balance(&setup.fixture, payer).await,
        U256::from(PAYER_BALANCE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_that_do_not_pay_this_tool_are_refused() {
    let setup = setup().await;
    let mut payment = pay_for(&setup, "forecast").await;
    // Terms changed after signing: the accepted requirement is not offered.
    let mut accepted = payment.accepted.clone().unwrap();
    accepted.amount = Amount::from(PRICE - 1);
    payment.accepted = Some(accepted);
    let result = setup
        .client
        .call_tool(call("forecast", Some(&payment)))
        .await
        .unwrap();
    let error = payment_required(&result).error.unwrap_or_default();
    assert!(error.contains("not offered"), "{error}");

    // Not a payment document at all.
    let mut params = call("forecast", None);
    let mut meta = serde_json::Map::new();
    meta.insert(
        PAYMENT_META_KEY.into(),
        json!({"x402Version": 2, "oops": true}),
    );
    params.meta = Some(RequestMetaObject(MetaObject(meta)));
    let result = setup.client.call_tool(params).await.unwrap();
    let error = payment_required(&result).error.unwrap_or_default();
    assert!(error.starts_with("invalid payment"), "{error}");
    assert_eq!(balance(&setup.fixture, setup.payee).await, U256::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_tools_and_the_tool_list_pass_through() {
    let setup = setup().await;
    let listed = setup.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|tool| tool.name.as_ref()).collect();
    assert_eq!(names, ["forecast", "broken", "time"]);
    let result = setup.client.call_tool(call("time", None)).await.unwrap();
    assert_eq!(result.content[0].as_text().unwrap().text, "noon");
    assert_eq!(result.is_error, Some(false));
}

#[test]
fn prices_are_checked_when_built() {
    let facilitator: Arc<dyn bursar_seller::Facilitator> =
        Arc::new(bursar_facilitator_client::testkit::ChainlessFacilitator::new(1));
    let unpriced = PaidTools::new(Weather, facilitator.clone(), [PricedTool::new("forecast")]);
    assert!(unpriced.unwrap_err().to_string().contains("no offers"));
    let offer = Offer::exact(
        Network::Eip155(1),
        Asset::usdc_base(),
        Amount::from(1u64),
        "not an address",
    );
    let bad = PaidTools::new(
        Weather,
        facilitator,
        [PricedTool::new("forecast").offer(offer)],
    );
    assert!(bad.unwrap_err().to_string().contains("payTo"));
}
