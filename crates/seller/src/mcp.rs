//! Paid MCP tools: [`PaidTools`] prices the tools of any rmcp server.
//!
//! A call to a priced tool follows x402's MCP transport ([`bursar_protocol::mcp`]):
//! 1. Without `_meta["x402/payment"]`: an error result carrying the payment-required document
//!    (as `structuredContent` and as the text of `content[0]`); the tool does not run.
//! 2. With a payment: pick the offered requirement it pays, verify it through the facilitator;
//!    an unreadable, unoffered or invalid payment is a payment-required result saying why.
//! 3. Run the tool. A tool that fails (`isError`) is not settled: the caller gets its error and
//!    pays nothing.
//! 4. Settle. A settled result carries the settlement in `_meta["x402/payment-response"]`; a
//!    failed settlement is an error result with the failure, and the tool's output is withheld.
//!
//! Calls to tools that are not priced, and every other request, go to the wrapped server as they
//! are. An unreachable facilitator is a JSON-RPC internal error and the tool does not run.

use std::collections::HashMap;
use std::sync::Arc;

use bursar_facilitator_client::Facilitator;
use bursar_protocol::bazaar::{BAZAAR, mcp_extension};
use bursar_protocol::mcp::{self, PAYMENT_META_KEY, PAYMENT_RESPONSE_META_KEY};
use bursar_protocol::{
    FacilitatorRequest, PaymentRequired, PaymentRequirements, Resource, SettleResponse, X402Version,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};

use crate::SellerError;
use crate::config::Offer;
use crate::service::select;

/// A priced tool: its name and the ways to pay for one call.
#[derive(Debug, Clone)]
pub struct PricedTool {
    name: String,
    offers: Vec<Offer>,
}

impl PricedTool {
    pub fn new(name: impl Into<String>) -> Self {
        PricedTool {
            name: name.into(),
            offers: Vec::new(),
        }
    }

    /// Adds a way to pay. A tool needs at least one.
    pub fn offer(mut self, offer: Offer) -> Self {
        self.offers.push(offer);
        self
    }
}

/// What one priced tool offers, checked.
#[derive(Debug)]
struct ToolPrice {
    offers: Vec<Offer>,
    requirements: Vec<PaymentRequirements>,
}

/// An rmcp server whose priced tools are paid per call (see the module documentation).
pub struct PaidTools<S> {
    inner: S,
    facilitator: Arc<dyn Facilitator>,
    prices: Arc<HashMap<String, ToolPrice>>,
}

/// A copy serving another session: the same prices and facilitator, a copy of the server.
impl<S: Clone> Clone for PaidTools<S> {
    fn clone(&self) -> Self {
        PaidTools {
            inner: self.inner.clone(),
            facilitator: self.facilitator.clone(),
            prices: self.prices.clone(),
        }
    }
}

impl<S> std::fmt::Debug for PaidTools<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidTools")
            .field("prices", &self.prices)
            .finish_non_exhaustive()
    }
}

impl<S: ServerHandler> PaidTools<S> {
    /// Prices `tools` of `inner`, paid through `facilitator`.
    pub fn new(
        inner: S,
        facilitator: Arc<dyn Facilitator>,
        tools: impl IntoIterator<Item = PricedTool>,
    ) -> Result<Self, SellerError> {
        let mut prices = HashMap::new();
        for tool in tools {
            let invalid = |message: String| SellerError::InvalidRoute {
                route: mcp::tool_url(&tool.name),
                message,
            };
            if tool.name.is_empty() {
                return Err(invalid("a tool needs a name".into()));
            }
            if tool.offers.is_empty() {
                return Err(invalid("tool has no offers".into()));
            }
            if tool.offers.len() > bursar_protocol::types::ACCEPTS_MAX {
                return Err(invalid(format!(
                    "more than {} offers",
                    bursar_protocol::types::ACCEPTS_MAX
                )));
            }
            for offer in &tool.offers {
                offer.validate().map_err(invalid)?;
            }
            let price = ToolPrice {
                requirements: tool.offers.iter().map(Offer::requirement).collect(),
                offers: tool.offers,
            };
            if prices.insert(tool.name.clone(), price).is_some() {
                return Err(invalid("tool is priced twice".into()));
            }
        }
        Ok(PaidTools {
            inner,
            facilitator,
            prices: Arc::new(prices),
        })
    }

    /// The wrapped server.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The payment-required document for `tool`: its offers, its resource URL and, from the
    /// tool's own definition, its input and output schemas in the bazaar extension.
    fn payment_required(&self, tool: &str, price: &ToolPrice, error: &str) -> PaymentRequired {
        let definition = self.inner.get_tool(tool);
        let extension = definition.as_ref().map(|definition| {
            let input = Value::Object(definition.input_schema.as_ref().clone());
            let output = definition
                .output_schema
                .as_ref()
                .map(|schema| Value::Object(schema.as_ref().clone()));
            json!({ BAZAAR: mcp_extension(
                tool,
                definition.description.as_deref(),
                &input,
                output.as_ref(),
            ) })
        });
        PaymentRequired {
            version: X402Version::V2,
            error: Some(error.to_string()),
            resource: Resource {
                url: mcp::tool_url(tool),
                description: definition
                    .and_then(|definition| definition.description.map(|d| d.to_string()))
                    .or_else(|| Some(format!("Tool: {tool}"))),
                mime_type: Some("application/json".into()),
                ..Resource::default()
            },
            accepts: price.requirements.clone(),
            extensions: extension,
        }
    }

    async fn call_priced(
        &self,
        price: &ToolPrice,
        mut request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let tool = request.name.to_string();
        let asked = |error: &str| -> Result<CallToolResponse, McpError> {
            let required = self.payment_required(&tool, price, error);
            Ok(into_result(mcp::payment_required_result(&required))?.into())
        };
        let meta = meta_of(&request, &context);
        let payload = match mcp::payment_in_meta(&meta) {
            None => return asked("Payment required to access this tool"),
            Some(Err(error)) => return asked(&format!("invalid payment: {error}")),
            Some(Ok(payload)) => payload,
        };
        let requirement = match select(&price.requirements, &payload) {
            Ok(requirement) => requirement.clone(),
            Err(message) => return asked(&message),
        };
        let facilitator_request = FacilitatorRequest {
            version: payload.version,
            resource: (payload.version == X402Version::V1).then(|| Resource {
                url: mcp::tool_url(&tool),
                ..Resource::default()
            }),
            requirements: requirement.clone(),
            payload,
        };
        let verified = self
            .facilitator
            .verify(&facilitator_request)
            .await
            .map_err(|error| unavailable("verified", &error))?;
        if !verified.is_valid {
            let reason = verified
                .invalid_reason
                .map(|reason| reason.to_string())
                .unwrap_or_else(|| "invalid_payment".into());
            let message = verified.invalid_message.unwrap_or_default();
            tracing::info!(%tool, payer = ?verified.payer, %reason, %message, "tool payment refused");
            return asked(&format!("payment invalid: {reason}: {message}"));
        }
        // The tool sees the call without the payment; the payment is this layer's business.
        strip_payment(&mut request, &mut context);
        let response = self.inner.call_tool(request, context).await?;
        let CallToolResponse::Complete(result) = response else {
            // Nothing was delivered yet (the tool asks for input, or runs as a task): not settled.
            return Ok(response);
        };
        if result.is_error == Some(true) {
            tracing::info!(%tool, "tool failed; payment not settled");
            return Ok(result.into());
        }
        self.settle(&tool, price, &facilitator_request, result)
            .await
            .map(CallToolResponse::from)
    }

    /// Settles a successful call: the result with its settlement, or (settlement failed) an
    /// error result without the tool's output.
    async fn settle(
        &self,
        tool: &str,
        price: &ToolPrice,
        request: &FacilitatorRequest,
        mut result: CallToolResult,
    ) -> Result<CallToolResult, McpError> {
        let settlement = match self.facilitator.settle(request).await {
            Ok(settlement) => settlement,
            Err(error) => {
                tracing::error!(%tool, %error, "tool settlement failed: facilitator unavailable");
                let failure = SettleResponse::failed(
                    bursar_protocol::Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("the facilitator could not be reached: {error}"),
                    None,
                    request.network_name(),
                );
                return self.settlement_failed(tool, price, &failure);
            }
        };
        if !settlement.success {
            tracing::warn!(%tool, reason = ?settlement.error_reason, "tool settlement failed");
            return self.settlement_failed(tool, price, &settlement);
        }
        let offer = price
            .offers
            .iter()
            .zip(&price.requirements)
            .find(|(_, offered)| **offered == request.requirements)
            .map(|(offer, _)| offer.price());
        tracing::info!(%tool, price = ?offer, transaction = %settlement.transaction, "tool call settled");
        let mut meta = result.meta.take().map(|meta| meta.0).unwrap_or_default();
        meta.insert(
            PAYMENT_RESPONSE_META_KEY.into(),
            serde_json::to_value(&settlement).map_err(internal)?,
        );
        result.meta = Some(rmcp::model::MetaObject(meta));
        Ok(result)
    }

    fn settlement_failed(
        &self,
        tool: &str,
        price: &ToolPrice,
        failure: &SettleResponse,
    ) -> Result<CallToolResult, McpError> {
        let reason = failure
            .error_reason
            .as_ref()
            .map(|reason| reason.to_string())
            .unwrap_or_else(|| "settlement_failed".into());
        let required =
            self.payment_required(tool, price, &format!("Payment settlement failed: {reason}"));
        into_result(mcp::settlement_failed_result(&required, failure))
    }
}

/// The call's `_meta`, wherever the transport left it (rmcp moves a request's `_meta` into its
/// context).
fn meta_of(
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Map<String, Value> {
    let mut meta = context.meta.0.0.clone();
    if let Some(params_meta) = &request.meta {
        for (key, value) in &params_meta.0.0 {
            meta.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    meta
}

fn strip_payment(request: &mut CallToolRequestParams, context: &mut RequestContext<RoleServer>) {
    if let Some(meta) = &mut request.meta {
        meta.0.0.remove(PAYMENT_META_KEY);
    }
    context.meta.0.0.remove(PAYMENT_META_KEY);
}

fn into_result(value: Value) -> Result<CallToolResult, McpError> {
    serde_json::from_value(value).map_err(internal)
}

fn internal(error: impl std::fmt::Display) -> McpError {
    McpError::internal_error(format!("payment layer: {error}"), None)
}

fn unavailable(what: &str, error: &impl std::fmt::Display) -> McpError {
    tracing::warn!(%error, "tool payment could not be {what}: facilitator unavailable");
    McpError::internal_error(
        format!("the payment could not be {what}: the facilitator is unavailable ({error})"),
        None,
    )
}

impl<S: ServerHandler> ServerHandler for PaidTools<S> {
    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        match self.prices.get(request.name.as_ref()) {
            Some(price) => self.call_priced(price, request, context).await,
            None => self.inner.call_tool(request, context).await,
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.inner.list_tools(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.inner.list_prompts(request, context).await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.inner.get_prompt(request, context).await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.inner.list_resources(request, context).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.inner.list_resource_templates(request, context).await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.inner.read_resource(request, context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.inner.complete(request, context).await
    }
}
