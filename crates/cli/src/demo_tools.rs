//! The demo paid MCP tools of `bursar dev` and `bursar demo-api`: three tools priced per call
//! behind [`PaidTools`], served over MCP's streamable HTTP transport at `/mcp` beside the demo API.

use std::sync::Arc;

use anyhow::{Context, Result};
use bursar_facilitator_client::Facilitator;
use bursar_protocol::{Amount, Network};
use bursar_seller::{Asset, Offer, PaidTools, PricedTool};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};

/// Where the tools are served, below the demo API's base URL.
pub const MCP_PATH: &str = "/mcp";

/// A priced demo tool.
pub struct DemoTool {
    pub name: &'static str,
    pub price_atomic: u64,
    pub description: &'static str,
}

/// The demo tools: prices in atomic USDC units (6 decimals).
pub const DEMO_TOOLS: &[DemoTool] = &[
    DemoTool {
        name: "weather",
        price_atomic: 10_000,
        description: "Current weather for a city",
    },
    DemoTool {
        name: "joke",
        price_atomic: 1_000,
        description: "A programmer joke",
    },
    DemoTool {
        name: "report",
        price_atomic: 250_000,
        description: "A premium market report",
    },
];

/// The tools themselves, unpriced.
#[derive(Debug, Clone, Copy)]
pub struct DemoTools;

/// A JSON object (a tool's schema) as rmcp holds it; anything else is the empty object.
pub fn object(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(object) => Arc::new(object),
        _ => Arc::default(),
    }
}

fn definitions() -> Vec<Tool> {
    DEMO_TOOLS
        .iter()
        .map(|tool| {
            let input = match tool.name {
                "weather" => json!({"type": "object",
                    "properties": {"city": {"type": "string", "description": "City name"}}}),
                _ => json!({"type": "object", "properties": {}}),
            };
            let output = match tool.name {
                "weather" => json!({"type": "object",
                    "properties": {"city": {"type": "string"}, "temperatureC": {"type": "number"},
                                   "conditions": {"type": "string"}},
                    "required": ["city", "temperatureC", "conditions"]}),
                "report" => json!({"type": "object",
                    "properties": {"title": {"type": "string"}, "summary": {"type": "string"}},
                    "required": ["title", "summary"]}),
                _ => json!({"type": "object", "properties": {"joke": {"type": "string"}},
                    "required": ["joke"]}),
            };
            let mut definition = Tool::new(tool.name, tool.description, object(input));
            definition.output_schema = Some(object(output));
            definition
        })
        .collect()
}

impl ServerHandler for DemoTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("bursar-demo-tools", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(definitions()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        definitions().into_iter().find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let argument = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|arguments| arguments.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let output = match request.name.as_ref() {
            "weather" => {
                let city = argument("city").unwrap_or_else(|| "Lisbon".into());
                if city.trim().is_empty() {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(
                        "city must not be empty",
                    )])
                    .into());
                }
                json!({"city": city, "temperatureC": 21, "conditions": "sunny"})
            }
            "joke" => json!({"joke":
                "There are 10 kinds of people: those who read binary and those who don't."}),
            "report" => json!({"title": "Stablecoin payments, weekly",
                               "summary": "Volume up; fees flat."}),
            other => {
                return Err(McpError::invalid_params(
                    format!("there is no tool {other:?}"),
                    None,
                ));
            }
        };
        Ok(CallToolResult::structured(output).into())
    }
}

/// The demo tools priced in `asset` on `network`, paid to `pay_to` and settled through
/// `facilitator`.
pub fn paid_demo_tools(
    facilitator: Arc<dyn Facilitator>,
    network: &Network,
    asset: &Asset,
    pay_to: &str,
) -> Result<PaidTools<DemoTools>> {
    let priced = DEMO_TOOLS.iter().map(|tool| {
        PricedTool::new(tool.name).offer(Offer::exact(
            network.clone(),
            asset.clone(),
            Amount::from(tool.price_atomic),
            pay_to,
        ))
    });
    PaidTools::new(DemoTools, facilitator, priced).context("pricing the demo tools")
}

/// The streamable HTTP service of `tools`, accepting requests addressed to loopback names and to
/// `public_host` (the host of the API's public URL).
pub fn mcp_service(
    tools: PaidTools<DemoTools>,
    public_host: Option<String>,
) -> StreamableHttpService<PaidTools<DemoTools>, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    if let Some(host) = public_host {
        config.allowed_hosts.push(host);
    }
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
