//! Paid MCP tools for runtime tests and benches, served over streamable HTTP at `/mcp` of the
//! test network's seller: `free` (not priced), `paid` (priced, answers what its output schema
//! promises), `broken-output` (priced, answers something else), `reask` (asks for payment
//! again after being paid, and never settles) and `legacy` (asks for payment the older way, as
//! JSON-RPC error 402, and answers a paid call without settling it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bursar_facilitator_client::Facilitator;
use bursar_protocol::{PaymentRequired, Resource, X402Version, mcp};
use bursar_seller::{Offer, PaidTools, PricedTool};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};

fn object(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

fn definitions() -> Vec<Tool> {
    let input = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let output = json!({"type": "object", "properties": {"sky": {"type": "string"}},
                        "required": ["sky"]});
    ["free", "paid", "broken-output", "reask", "legacy"]
        .into_iter()
        .map(|name| {
            let mut tool = Tool::new(name, format!("the {name} tool"), object(input.clone()));
            tool.output_schema = Some(object(output.clone()));
            tool
        })
        .collect()
}

/// The tools, unpriced; `reask` needs the offer it keeps asking for.
#[derive(Clone)]
pub struct TestTools {
    reask: Arc<PaymentRequired>,
}

impl ServerHandler for TestTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
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
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let result = match request.name.as_ref() {
            "free" | "paid" => CallToolResult::structured(json!({"sky": "clear"})),
            "broken-output" => CallToolResult::structured(json!({"rain": "maybe"})),
            // Asks for payment whatever it is sent, so a paid call is asked again.
            "reask" => serde_json::from_value(mcp::payment_required_result(&self.reask))
                .map_err(|e| McpError::internal_error(e.to_string(), None))?,
            // The older form: payment required as JSON-RPC error 402; a call carrying a payment
            // is answered (this lenient server never settles it).
            "legacy" if mcp::payment_in_meta(&context.meta.0.0).is_none() => {
                return Err(McpError::new(
                    rmcp::model::ErrorCode(
                        i32::try_from(mcp::PAYMENT_REQUIRED_ERROR_CODE).unwrap(),
                    ),
                    "Payment required",
                    Some(self.reask.to_json_value()),
                ));
            }
            "legacy" => CallToolResult::structured(json!({"sky": "clear"})),
            other => CallToolResult::error(vec![ContentBlock::text(format!("no tool {other}"))]),
        };
        Ok(result.into())
    }
}

/// The streamable HTTP service of the tools, priced with `offer` (`free` and `reask` are not
/// priced by the payment layer; `reask` asks by itself).
pub fn service(
    facilitator: Arc<dyn Facilitator>,
    offer: Offer,
) -> StreamableHttpService<PaidTools<TestTools>, LocalSessionManager> {
    let reask = Arc::new(PaymentRequired {
        version: X402Version::V2,
        error: Some("Payment required to access this tool".into()),
        resource: Resource {
            url: mcp::tool_url("reask"),
            ..Resource::default()
        },
        accepts: vec![offer.requirement()],
        extensions: None,
    });
    let tools = PaidTools::new(
        TestTools { reask },
        facilitator,
        [
            PricedTool::new("paid").offer(offer.clone()),
            PricedTool::new("broken-output").offer(offer),
        ],
    )
    .expect("valid prices");
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}

/// A tool server whose `paid` tool changes its payee on every call that asks for payment (the
/// payment for the terms last asked is still accepted): the shifting-terms seller of MCP.
#[derive(Clone)]
pub struct ShiftyTools {
    priced: Arc<Vec<PaidTools<TestTools>>>,
    asks: Arc<AtomicUsize>,
}

impl ServerHandler for ShiftyTools {
    fn get_info(&self) -> ServerConfig {
        self.priced[0].get_info()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.priced[0].list_tools(request, context).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let paying = mcp::payment_in_meta(&context.meta.0.0).is_some();
        let index = if paying {
            self.asks.load(Ordering::SeqCst).saturating_sub(1)
        } else {
            self.asks.fetch_add(1, Ordering::SeqCst)
        };
        let tools = &self.priced[index % self.priced.len()];
        tools.call_tool(request, context).await
    }
}

/// [`ShiftyTools`] with one priced `paid` tool per offer, served over streamable HTTP.
pub fn shifty_service(
    facilitator: Arc<dyn Facilitator>,
    offers: Vec<Offer>,
    reask: Offer,
) -> StreamableHttpService<ShiftyTools, LocalSessionManager> {
    let reask = Arc::new(PaymentRequired {
        version: X402Version::V2,
        error: None,
        resource: Resource::default(),
        accepts: vec![reask.requirement()],
        extensions: None,
    });
    let priced: Vec<_> = offers
        .into_iter()
        .map(|offer| {
            PaidTools::new(
                TestTools {
                    reask: reask.clone(),
                },
                facilitator.clone(),
                [PricedTool::new("paid").offer(offer)],
            )
            .expect("valid prices")
        })
        .collect();
    let tools = ShiftyTools {
        priced: Arc::new(priced),
        asks: Arc::default(),
    };
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}
