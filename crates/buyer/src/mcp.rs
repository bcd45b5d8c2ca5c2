//! Paying for MCP tools: a `tools/call` over MCP's streamable HTTP transport, asked and paid the
//! way an HTTP request is ([`crate::PayingClient::ask`], [`crate::PayingClient::pay`]).
//!
//! A [`ToolCall`] travels inside a [`RequestSpec`] (see [`RequestSpec::tool_call`]), so whatever
//! accounts for requests (a budget, policies, evidence) accounts for tool calls the same way: its
//! URL is the server's URL with the tool's name as one more path segment. The exchange uses the
//! paying client's own HTTP client (and so its egress rules): `initialize`, the `initialized`
//! notification, then `tools/call`, on one MCP session that is closed afterwards. The tool's
//! answer becomes a [`PaidResponse`]: status 200 with its structured output (JSON) or its text, or
//! 500 when the tool reported an error. A payment-required answer is recognized in both forms
//! (an error result carrying the document, or the older JSON-RPC error 402).

use bursar_protocol::mcp;
use bursar_protocol::{PaymentPayload, PaymentRequired, SettleResponse};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value, json};

use crate::{BuyerError, PaidResponse, PaymentReceipt, RESPONSE_BODY_BYTES_MAX, RequestSpec};

/// The MCP protocol version the client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// One call of a tool of an MCP server (streamable HTTP).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The server's MCP endpoint, such as `https://tools.example.com/mcp`.
    pub server: Url,
    pub name: String,
    pub arguments: Map<String, Value>,
}

impl ToolCall {
    /// The URL the call is accounted under: the server's URL with the tool's name appended as a
    /// path segment (`https://tools.example.com/mcp/weather`).
    pub fn resource_url(&self) -> Result<Url, BuyerError> {
        let mut url = self.server.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|_| BuyerError::InvalidRequest("the MCP server URL has no path".into()))?
            .pop_if_empty()
            .push(&self.name);
        Ok(url)
    }
}

impl RequestSpec {
    /// A tool call, as a request the paying client asks and pays like any other: `POST` to the
    /// call's [`ToolCall::resource_url`], its arguments as the JSON body.
    pub fn tool_call(call: ToolCall) -> Result<RequestSpec, BuyerError> {
        if !matches!(call.server.scheme(), "http" | "https") {
            return Err(BuyerError::InvalidRequest(
                "the MCP server URL must be http or https".into(),
            ));
        }
        if call.name.is_empty() {
            return Err(BuyerError::InvalidRequest("the tool needs a name".into()));
        }
        let url = call.resource_url()?;
        let body = Value::Object(call.arguments.clone()).to_string();
        let mut spec = RequestSpec::new(Method::POST, url.as_str())?.body(body);
        spec.tool = Some(Box::new(call));
        Ok(spec)
    }
}

/// What the server answered to `tools/call`.
pub(crate) enum Answer {
    /// The tool result (a `CallToolResult` as JSON).
    Result(Value),
    /// The older form of payment required: JSON-RPC error 402.
    PaymentRequired(Box<PaymentRequired>),
}

/// The payment-required document a tool result carries, if it asks for payment.
pub(crate) fn payment_required_in(result: &Value) -> Option<Result<PaymentRequired, BuyerError>> {
    mcp::payment_required_in_result(result)
        .map(|read| read.map_err(|error| BuyerError::InvalidPaymentRequired(error.to_string())))
}

/// Calls the tool once, with `payment` in `_meta` when given.
pub(crate) async fn call(
    http: &reqwest::Client,
    call: &ToolCall,
    payment: Option<&PaymentPayload>,
) -> Result<Answer, BuyerError> {
    let mut session = Session::open(http, &call.server).await?;
    let mut params = json!({"name": call.name, "arguments": call.arguments});
    if let Some(payment) = payment {
        let mut meta = Map::new();
        mcp::attach_payment(&mut meta, payment);
        params["_meta"] = Value::Object(meta);
    }
    let answered = session.request(1, "tools/call", params).await;
    session.close().await;
    match answered? {
        Ok(result) => Ok(Answer::Result(result)),
        Err(error) => match mcp::payment_required_in_error(error.code, error.data.as_ref()) {
            Some(Ok(required)) => Ok(Answer::PaymentRequired(Box::new(required))),
            Some(Err(read)) => Err(BuyerError::InvalidPaymentRequired(read.to_string())),
            None => Err(BuyerError::Http(format!(
                "the MCP server answered tools/call with error {}: {}",
                error.code, error.message
            ))),
        },
    }
}

/// The tools `server` lists (`tools/list`, following its pages up to 20), each as its JSON
/// definition (`name`, `description`, `inputSchema`, ...). Listing is free: nothing is paid.
pub async fn list_tools(http: &reqwest::Client, server: &Url) -> Result<Vec<Value>, BuyerError> {
    const PAGES_MAX: u64 = 20;
    let mut session = Session::open(http, server).await?;
    let listed = async {
        let mut tools = Vec::new();
        let mut cursor: Option<Value> = None;
        for page in 1..=PAGES_MAX {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let result = session
                .request(page, "tools/list", params)
                .await?
                .map_err(|error| {
                    BuyerError::Http(format!("the MCP server refused tools/list: {error}"))
                })?;
            if let Some(listed) = result.get("tools").and_then(Value::as_array) {
                tools.extend(listed.iter().cloned());
            }
            cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }
    .await;
    session.close().await;
    listed
}

/// A tool result as a response: 200 with the structured output or the text, 500 when the tool
/// reported an error, and the settlement from `_meta` in the receipt.
pub(crate) fn response(
    result: &Value,
    payment: Option<PaymentReceipt>,
) -> Result<PaidResponse, BuyerError> {
    let failed = result.get("isError").and_then(Value::as_bool) == Some(true);
    let (content_type, body) = match result.get("structuredContent").filter(|v| !v.is_null()) {
        Some(structured) => ("application/json", structured.to_string()),
        None => {
            let text: Vec<&str> = result
                .get("content")
                .and_then(Value::as_array)
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter_map(|block| block.get("text").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            ("text/plain; charset=utf-8", text.join("\n"))
        }
    };
    if body.len() > RESPONSE_BODY_BYTES_MAX {
        return Err(BuyerError::ResponseTooLarge);
    }
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(PaidResponse {
        status: if failed {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        },
        headers,
        body: body.into(),
        payment,
    })
}

/// The settlement a tool result reports in `_meta`.
pub(crate) fn settlement(result: &Value) -> Option<SettleResponse> {
    let meta = result.get("_meta")?.as_object()?;
    match mcp::settlement_in_meta(meta)? {
        Ok(settlement) => Some(settlement),
        Err(error) => {
            tracing::warn!(%error, "the tool's settlement could not be read");
            None
        }
    }
}

struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// One MCP session over streamable HTTP.
struct Session<'a> {
    http: &'a reqwest::Client,
    url: &'a Url,
    id: Option<HeaderValue>,
}

impl<'a> Session<'a> {
    /// Opens a session: `initialize`, then the `initialized` notification. A session the server
    /// opened but that failed on the way is closed.
    async fn open(http: &'a reqwest::Client, url: &'a Url) -> Result<Session<'a>, BuyerError> {
        let mut session = Session {
            http,
            url,
            id: None,
        };
        let initialize = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bursar", "version": env!("CARGO_PKG_VERSION")},
        });
        let opened = async {
            session
                .request(0, "initialize", initialize)
                .await?
                .map_err(|error| {
                    BuyerError::Http(format!("the MCP server refused to initialize: {error}"))
                })?;
            session.notify("notifications/initialized").await
        }
        .await;
        match opened {
            Ok(()) => Ok(session),
            Err(error) => {
                session.close().await;
                Err(error)
            }
        }
    }

    fn post(&self, body: Value) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .post(self.url.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(VERSION_HEADER, PROTOCOL_VERSION)
            .json(&body);
        if let Some(id) = &self.id {
            builder = builder.header(SESSION_HEADER, id.clone());
        }
        builder
    }

    /// Sends a request and reads its answer: `Ok(Err)` is a JSON-RPC error.
    async fn request(
        &mut self,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, RpcError>, BuyerError> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self
            .post(body)
            .send()
            .await
            .map_err(|error| crate::http_error(&error))?;
        if let Some(session) = response.headers().get(SESSION_HEADER) {
            self.id = Some(session.clone());
        }
        let status = response.status();
        let streamed = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !status.is_success() {
            let text = crate::read_body(response, RESPONSE_BODY_BYTES_MAX)
                .await?
                .unwrap_or_default();
            return Err(BuyerError::Http(format!(
                "the MCP server answered {method} with HTTP {status}: {}",
                String::from_utf8_lossy(&text)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )));
        }
        let message = if streamed {
            answer_in_stream(response, id).await?
        } else {
            let text = crate::read_body(response, RESPONSE_BODY_BYTES_MAX)
                .await?
                .ok_or(BuyerError::ResponseTooLarge)?;
            serde_json::from_slice::<Value>(&text).ok()
        };
        let Some(message) = message else {
            return Err(BuyerError::Http(format!(
                "the MCP server sent no answer to {method}"
            )));
        };
        if let Some(error) = message.get("error") {
            return Ok(Err(RpcError {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                data: error.get("data").cloned(),
            }));
        }
        Ok(Ok(message.get("result").cloned().unwrap_or(Value::Null)))
    }

    async fn notify(&self, method: &str) -> Result<(), BuyerError> {
        let response = self
            .post(json!({"jsonrpc": "2.0", "method": method}))
            .send()
            .await
            .map_err(|error| crate::http_error(&error))?;
        if !response.status().is_success() {
            return Err(BuyerError::Http(format!(
                "the MCP server answered {method} with HTTP {}",
                response.status()
            )));
        }
        Ok(())
    }

    /// Ends the session; a server that does not support it is left to expire it.
    async fn close(self) {
        if let Some(id) = self.id {
            let _ = self
                .http
                .request(Method::DELETE, self.url.clone())
                .header(SESSION_HEADER, id)
                .header(VERSION_HEADER, PROTOCOL_VERSION)
                .send()
                .await;
        }
    }
}

/// The message answering request `id` in a server-sent event stream, read as it arrives: the
/// stream is left as soon as the answer is in (a server may keep it open for more).
async fn answer_in_stream(
    mut response: reqwest::Response,
    id: u64,
) -> Result<Option<Value>, BuyerError> {
    let answers = |text: &str| events(text).find(|message| message.get("id") == Some(&json!(id)));
    let mut buffer: Vec<u8> = Vec::new();
    let mut read = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| crate::http_error(&error))?
    {
        read += chunk.len();
        if read > RESPONSE_BODY_BYTES_MAX {
            return Err(BuyerError::ResponseTooLarge);
        }
        // CR LF line ends read as LF (CRs carry nothing in the JSON-RPC messages).
        buffer.extend(chunk.iter().filter(|byte| **byte != b'\r'));
        // Complete events only: up to the last blank line (an ASCII boundary).
        let Some(end) = buffer.windows(2).rposition(|pair| pair == b"\n\n") else {
            continue;
        };
        let complete: Vec<u8> = buffer.drain(..end + 2).collect();
        if let Some(found) = answers(&String::from_utf8_lossy(&complete)) {
            return Ok(Some(found));
        }
    }
    Ok(answers(&String::from_utf8_lossy(&buffer)))
}

/// The JSON messages of a server-sent event stream (one per event's `data` lines).
fn events(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.split("\n\n").filter_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        serde_json::from_str(&data.join("\n")).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_are_accounted_under_the_server_url_and_the_tool() {
        let call = ToolCall {
            server: Url::parse("https://tools.example.com/mcp?x=1").unwrap(),
            name: "weather report".into(),
            arguments: Map::new(),
        };
        assert_eq!(
            call.resource_url().unwrap().as_str(),
            "https://tools.example.com/mcp/weather%20report"
        );
        let root = ToolCall {
            server: Url::parse("http://127.0.0.1:9/").unwrap(),
            ..call.clone()
        };
        assert_eq!(root.resource_url().unwrap().path(), "/weather%20report");
        let spec = RequestSpec::tool_call(call.clone()).unwrap();
        assert_eq!(spec.method, Method::POST);
        assert_eq!(spec.tool.as_deref(), Some(&call));
        let ftp = ToolCall {
            server: Url::parse("ftp://example.com/mcp").unwrap(),
            ..call
        };
        assert!(RequestSpec::tool_call(ftp).is_err());
    }

    #[test]
    fn event_streams_yield_their_messages() {
        let stream = "id: 0\nretry: 3000\ndata:\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let messages: Vec<Value> = events(stream).collect();
        assert_eq!(messages, [json!({"jsonrpc": "2.0", "id": 1, "result": {}})]);
    }

    #[test]
    fn tool_results_become_responses() {
        let structured = json!({"content": [{"type": "text", "text": "{}"}],
                                "structuredContent": {"sky": "clear"}, "isError": false});
        let response = response(&structured, None).unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers[CONTENT_TYPE], "application/json");
        assert_eq!(&response.body[..], br#"{"sky":"clear"}"#);
        let failed = json!({"content": [{"type": "text", "text": "down"}], "isError": true});
        let response = super::response(&failed, None).unwrap();
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(&response.body[..], b"down");
    }
}
