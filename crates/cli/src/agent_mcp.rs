//! `bursar mcp`: an MCP server for agents, paying inside a runtime session.
//!
//! The agent's MCP client lists and calls tools; each tool is an authenticated call to the
//! runtime's API with the session's token, so every payment goes through the session's budget,
//! policies, evidence and ledger below the agent. The agent never sees a key or a signed payload:
//! the runtime holds the wallet and answers with the content and a receipt.
//!
//! Tools: `fetch` (an HTTP resource, paid within the session when the seller asks),
//! `call_tool` (a tool of an upstream MCP server, paid the same way when it asks) and `budget`
//! (what the session may still spend), and `search` (the discovery catalogs given with `--catalog`).
//! In proxy mode (`--upstream URL`, repeatable) every tool
//! of the upstream servers is offered as a plain tool too: the agent calls it by name and gets
//! its output, and the runtime pays it within the session. Served over stdio (the default: the agent
//! spawns `bursar mcp`) or streamable HTTP (`--listen`), where each request must carry the
//! session token as `Authorization: Bearer`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

use bursar_runtime::tokens::session_named as session_of;

use crate::demo_tools::object;
use crate::devnet::DevInfo;

#[derive(clap::Args)]
pub struct McpArgs {
    /// The session's token (bst_...), as `bursar session create` printed it. Over streamable
    /// HTTP, a request's own `Authorization: Bearer` token is used instead.
    #[arg(long, env = "BURSAR_SESSION_TOKEN", hide_env_values = true)]
    pub session: Option<String>,
    /// The runtime's API. Default: the one `bursar dev` runs, else http://127.0.0.1:4030.
    #[arg(long, env = "BURSAR_RUNTIME_URL")]
    pub runtime_url: Option<String>,
    /// Serve MCP over streamable HTTP on this address (path /mcp) instead of stdio.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Proxy mode: re-expose every tool of this paid MCP server (its streamable HTTP URL) as a
    /// plain tool, paid below the agent within the session (repeatable).
    #[arg(long = "upstream")]
    pub upstreams: Vec<url::Url>,
    /// A facilitator whose discovery catalog (`GET /discovery/resources`) the `search` tool reads
    /// (repeatable).
    #[arg(long = "catalog")]
    pub catalogs: Vec<url::Url>,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: std::path::PathBuf,
}

/// The agent-facing tools, calling the runtime.
#[derive(Clone)]
pub struct AgentTools {
    http: reqwest::Client,
    runtime_url: Arc<str>,
    /// The token given at start (stdio); over HTTP each request brings its own.
    token: Option<Arc<str>>,
    /// Proxy mode: the upstream servers, and the tools of theirs last listed, by the name the
    /// agent sees.
    upstreams: Arc<[url::Url]>,
    proxied: Arc<std::sync::Mutex<std::collections::HashMap<String, Proxied>>>,
    /// Facilitators whose discovery catalogs `search` reads.
    catalogs: Arc<[url::Url]>,
}

/// An upstream tool, as the agent sees it.
#[derive(Clone)]
struct Proxied {
    server: url::Url,
    tool: String,
    definition: Tool,
}

fn definitions() -> Vec<Tool> {
    let fetch_input = json!({
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "The http(s) URL to fetch"},
            "method": {"type": "string", "default": "GET"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": "string", "description": "The request body, as text"},
            "phase": {"type": "string", "description": "The agent's phase, for phase policies"},
            "step": {"type": "string", "description": "The agent's step label, kept with the payment's evidence"},
        },
        "required": ["url"],
    });
    vec![
        Tool::new(
            "fetch",
            "Fetch an HTTP resource. When the server asks for payment (HTTP 402, x402), it is \
             paid from this session's budget, under its policies; the answer says what was paid.",
            object(fetch_input),
        ),
        Tool::new(
            "call_tool",
            "Call a tool of an MCP server (streamable HTTP). When the tool asks for payment \
             (x402), it is paid from this session's budget, under its policies; the answer says \
             what was paid.",
            object(json!({
                "type": "object",
                "properties": {
                    "server": {"type": "string", "description": "The server's MCP endpoint URL"},
                    "tool": {"type": "string"},
                    "arguments": {"type": "object"},
                    "phase": {"type": "string"},
                    "step": {"type": "string"},
                },
                "required": ["server", "tool"],
            })),
        ),
        Tool::new(
            "search",
            "Search the discovery catalogs of paid resources and tools (x402 Bazaar): what they \
             are, their price and how to call them.",
            object(json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for"},
                    "type": {"type": "string", "enum": ["http", "mcp"]},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                },
            })),
        ),
        Tool::new(
            "budget",
            "What this session has spent, has reserved and may still spend, until when, and its \
             budget alerts.",
            object(json!({"type": "object", "properties": {}})),
        ),
    ]
}

impl AgentTools {
    pub fn new(
        runtime_url: &str,
        token: Option<String>,
        upstreams: Vec<url::Url>,
        catalogs: Vec<url::Url>,
    ) -> AgentTools {
        AgentTools {
            http: reqwest::Client::new(),
            runtime_url: runtime_url.trim_end_matches('/').into(),
            token: token.map(Into::into),
            upstreams: upstreams.into(),
            proxied: Arc::default(),
            catalogs: catalogs.into(),
        }
    }

    /// Searches the configured discovery catalogs: the items (`resource`, `type`, `accepts`,
    /// `metadata`, ...) whose resource URL or description contains `query` (every item when it
    /// is empty), at most `limit`. A catalog that cannot be read is reported beside the results.
    async fn search(&self, arguments: &JsonObject) -> CallToolResult {
        if self.catalogs.is_empty() {
            return refusal(
                "no discovery catalog is configured: start bursar mcp with --catalog URL",
            );
        }
        let query = arguments
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = arguments.get("type").and_then(Value::as_str);
        let limit = arguments
            .get("limit")
            .and_then(Value::as_u64)
            .map_or(20, |limit| usize::try_from(limit).unwrap_or(usize::MAX));
        let found = crate::discovery::search(&self.http, &self.catalogs, query, kind, limit).await;
        CallToolResult::structured(found.to_json())
    }

    /// Lists the upstream servers' tools again. A tool named like one of Bursar's own, or like
    /// one listed before it, is offered as `<name>_<n>` (n: the upstream's position, from 1).
    /// An upstream that cannot be listed is left out, and logged.
    async fn list_upstreams(&self) -> Vec<Tool> {
        let mut proxied = std::collections::HashMap::new();
        let own: Vec<String> = definitions()
            .into_iter()
            .map(|tool| tool.name.to_string())
            .collect();
        for (position, server) in self.upstreams.iter().enumerate() {
            let listed = match bursar_buyer::mcp::list_tools(&self.http, server).await {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(%server, %error, "upstream MCP server not listed");
                    continue;
                }
            };
            for value in listed {
                let Ok(mut definition) = serde_json::from_value::<Tool>(value) else {
                    continue;
                };
                let tool = definition.name.to_string();
                let mut name = tool.clone();
                if own.contains(&name) || proxied.contains_key(&name) {
                    name = format!("{tool}_{}", position + 1);
                }
                definition.name = name.clone().into();
                let described = definition
                    .description
                    .as_deref()
                    .unwrap_or(&tool)
                    .to_string();
                definition.description = Some(
                    format!("{described} (from {server}; paid within your session when it asks)")
                        .into(),
                );
                proxied.insert(
                    name,
                    Proxied {
                        server: server.clone(),
                        tool,
                        definition,
                    },
                );
            }
        }
        let mut tools: Vec<Tool> = proxied.values().map(|p| p.definition.clone()).collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        *self.proxied.lock().expect("lock") = proxied;
        tools
    }

    /// The upstream tool the agent's `name` stands for (listing the upstreams when it is not
    /// known yet).
    async fn proxied(&self, name: &str) -> Option<Proxied> {
        if self.upstreams.is_empty() {
            return None;
        }
        if let Some(known) = self.proxied.lock().expect("lock").get(name) {
            return Some(known.clone());
        }
        self.list_upstreams().await;
        self.proxied.lock().expect("lock").get(name).cloned()
    }

    /// Calls an upstream tool within the session; the agent gets the tool's own output (and the
    /// receipt in `_meta["bursar/payment"]`).
    async fn call_proxied(
        &self,
        token: &str,
        proxied: &Proxied,
        arguments: JsonObject,
    ) -> CallToolResult {
        let request = json!({
            "server": proxied.server.as_str(),
            "tool": proxied.tool,
            "arguments": arguments,
        });
        let answered = self.paid_call(token, "tools/call", request).await;
        let Some(outcome) = answered.structured_content.clone() else {
            return answered; // a refusal: its message is the content
        };
        let body = outcome["body"].as_str().unwrap_or_default();
        let mut result = match serde_json::from_str::<Value>(body) {
            Ok(structured @ Value::Object(_)) => CallToolResult::structured(structured),
            _ => CallToolResult::success(vec![ContentBlock::text(body)]),
        };
        result.is_error = answered.is_error;
        if !outcome["payment"].is_null() {
            let mut meta = rmcp::model::MetaObject::default();
            meta.0
                .insert("bursar/payment".into(), outcome["payment"].clone());
            result.meta = Some(meta);
        }
        result
    }

    /// The token of this call: the HTTP request's bearer token, else the one given at start.
    fn token_of(&self, context: &RequestContext<RoleServer>) -> Option<String> {
        let from_http = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get(http::header::AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_string);
        from_http.or_else(|| self.token.as_deref().map(str::to_string))
    }

    /// Calls the runtime; `Err` is the message the agent reads.
    async fn runtime(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> std::result::Result<Value, String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.runtime_url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("the payments runtime cannot be reached: {error}"))?;
        let status = response.status();
        let document: Value = response
            .json()
            .await
            .map_err(|error| format!("the payments runtime answered HTTP {status}: {error}"))?;
        if status.is_success() {
            return Ok(document);
        }
        let code = document["error"]["code"].as_str().unwrap_or("error");
        let message = document["error"]["message"].as_str().unwrap_or_default();
        Err(format!("{code}: {message}"))
    }

    async fn fetch(&self, token: &str, arguments: &JsonObject) -> CallToolResult {
        let Some(url) = arguments.get("url").and_then(Value::as_str) else {
            return refusal("fetch needs a url");
        };
        let mut request = json!({
            "url": url,
            "method": arguments.get("method").and_then(Value::as_str).unwrap_or("GET"),
        });
        copy_fields(
            arguments,
            &mut request,
            &["headers", "body", "phase", "step"],
        );
        self.paid_call(token, "fetch", request).await
    }

    async fn call_tool(&self, token: &str, arguments: &JsonObject) -> CallToolResult {
        let (Some(server), Some(tool)) = (
            arguments.get("server").and_then(Value::as_str),
            arguments.get("tool").and_then(Value::as_str),
        ) else {
            return refusal("call_tool needs a server and a tool");
        };
        let mut request = json!({"server": server, "tool": tool});
        copy_fields(arguments, &mut request, &["arguments", "phase", "step"]);
        self.paid_call(token, "tools/call", request).await
    }

    /// A request the runtime pays within the session (`fetch` or `tools/call`), its answer as
    /// the tool's result.
    async fn paid_call(&self, token: &str, action: &str, request: Value) -> CallToolResult {
        let Some(session) = session_of(token) else {
            return refusal("the session token is not a Bursar session token (bst_...)");
        };
        let path = format!("/v1/sessions/{session}/{action}");
        match self
            .runtime(reqwest::Method::POST, &path, token, Some(request))
            .await
        {
            Ok(fetched) => {
                let status = fetched["status"].as_u64().unwrap_or(0);
                let outcome = json!({
                    "status": status,
                    "contentType": fetched["headers"]["content-type"],
                    "body": fetched["body"],
                    "bodyBase64": fetched["bodyBase64"],
                    "payment": fetched["payment"],
                    "cachedFrom": fetched["cachedFrom"],
                    "validation": fetched["validation"],
                });
                let mut result = CallToolResult::structured(outcome);
                // A seller's failure is the agent's to handle; it is still an error result.
                result.is_error = Some(!(200..300).contains(&status));
                result
            }
            Err(message) => refusal(&message),
        }
    }

    async fn budget(&self, token: &str) -> CallToolResult {
        let Some(session) = session_of(token) else {
            return refusal("the session token is not a Bursar session token (bst_...)");
        };
        match self
            .runtime(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session}"),
                token,
                None,
            )
            .await
        {
            Ok(mut shown) => {
                // The session's budget alerts beside it (a failure to read them is said, not
                // hidden).
                let alerts = self
                    .runtime(
                        reqwest::Method::GET,
                        &format!("/v1/sessions/{session}/alerts"),
                        token,
                        None,
                    )
                    .await;
                shown["alerts"] = match alerts {
                    Ok(listed) => listed["alerts"].clone(),
                    Err(message) => json!({"unreadable": message}),
                };
                CallToolResult::structured(shown)
            }
            Err(message) => refusal(&message),
        }
    }
}

fn copy_fields(from: &JsonObject, to: &mut Value, fields: &[&str]) {
    for field in fields {
        if let Some(value) = from.get(*field).filter(|value| !value.is_null()) {
            to[*field] = value.clone();
        }
    }
}

fn refusal(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

impl ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bursar", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut tools = definitions();
        tools.extend(self.list_upstreams().await);
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        definitions()
            .into_iter()
            .find(|tool| tool.name == name)
            .or_else(|| {
                let proxied = self.proxied.lock().expect("lock");
                proxied.get(name).map(|p| p.definition.clone())
            })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(token) = self.token_of(&context) else {
            return Ok(refusal(
                "no session token: start `bursar mcp --session bst_...` (or set \
                 BURSAR_SESSION_TOKEN), or send Authorization: Bearer bst_... over HTTP",
            )
            .into());
        };
        let arguments = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "fetch" => self.fetch(&token, &arguments).await,
            "call_tool" => self.call_tool(&token, &arguments).await,
            "budget" => self.budget(&token).await,
            "search" => self.search(&arguments).await,
            other => {
                if let Some(proxied) = self.proxied(other).await {
                    return Ok(self.call_proxied(&token, &proxied, arguments).await.into());
                }
                return Err(McpError::invalid_params(
                    format!(
                        "there is no tool {other:?}; see tools/list (fetch, call_tool, search, budget \
                         and the upstream servers' tools)"
                    ),
                    None,
                ));
            }
        };
        Ok(result.into())
    }
}

/// `bursar mcp`: serves the agent tools over stdio, or over streamable HTTP with `--listen`.
pub async fn serve(args: McpArgs) -> Result<()> {
    let runtime_url = args
        .runtime_url
        .clone()
        .or_else(|| {
            DevInfo::load(&args.data_dir)
                .ok()
                .and_then(|info| info.runtime_url)
        })
        .unwrap_or_else(|| format!("http://{}", crate::runtime::RUNTIME_LISTEN_DEFAULT));
    if let Some(token) = &args.session
        && session_of(token).is_none()
    {
        return Err(crate::pay::failure(
            2,
            "--session must be a session token (bst_...), as `bursar session create` printed it"
                .into(),
        ));
    }
    let tools = AgentTools::new(
        &runtime_url,
        args.session.clone(),
        args.upstreams.clone(),
        args.catalogs.clone(),
    );
    match args.listen {
        None => {
            let running = tools
                .serve(rmcp::transport::stdio())
                .await
                .context("starting the MCP server on stdio")?;
            running.waiting().await.context("the MCP session ended")?;
            Ok(())
        }
        Some(listen) => serve_http(tools, listen).await,
    }
}

async fn serve_http(tools: AgentTools, listen: SocketAddr) -> Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for MCP"))?;
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    eprintln!(
        "bursar mcp on http://{}/mcp (streamable HTTP; send Authorization: Bearer <session token>)",
        listener.local_addr()?
    );
    crate::dev::serve(listener, app).await
}
