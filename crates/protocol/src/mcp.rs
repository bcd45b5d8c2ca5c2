//! x402 over MCP: how a paid `tools/call` carries its terms, its payment and its receipt.
//!
//! - An unpaid call to a priced tool answers with a tool result marked `isError: true` whose
//!   `structuredContent` is the payment-required document and whose `content[0]` is the same
//!   document as JSON text. The document's `resource.url` is `mcp://tool/<name>`.
//! - The client calls again with the payment in `params._meta["x402/payment"]` (the payment
//!   document as a JSON object, not base64).
//! - A paid result carries the settlement in `_meta["x402/payment-response"]`. When settlement
//!   fails, the result is an error carrying the payment-required document again, with the failed
//!   settlement under the same key, and the tool's output is withheld.
//! - Older servers answer an unpaid call with a JSON-RPC error of code 402 whose `data` is the
//!   payment-required document; clients accept both forms.
//!
//! This module reads and writes those documents as JSON values; the MCP types themselves belong
//! to the transports that use an MCP library.
//!
//! ```
//! use bursar_protocol::mcp;
//! use bursar_protocol::{PaymentRequired, Resource, X402Version};
//!
//! let required = PaymentRequired {
//!     version: X402Version::V2,
//!     error: Some("payment required".into()),
//!     resource: Resource { url: mcp::tool_url("forecast"), ..Resource::default() },
//!     accepts: vec![],
//!     extensions: None,
//! };
//! let result = mcp::payment_required_result(&required);
//! assert_eq!(result["isError"], true);
//! let read = mcp::payment_required_in_result(&result).unwrap().unwrap();
//! assert_eq!(read, required);
//! assert_eq!(mcp::tool_name(&read.resource.url), Some("forecast"));
//! ```

use serde_json::{Map, Value, json};

use crate::facilitator::SettleResponse;
use crate::types::{DecodeError, PaymentPayload, PaymentRequired};

/// The `_meta` key of a call's payment.
pub const PAYMENT_META_KEY: &str = "x402/payment";
/// The `_meta` key of a result's settlement (and of a failed settlement in an error result).
pub const PAYMENT_RESPONSE_META_KEY: &str = "x402/payment-response";
/// The JSON-RPC error code older servers use for payment required.
pub const PAYMENT_REQUIRED_ERROR_CODE: i64 = 402;
/// How a tool's resource URL starts.
pub const TOOL_URL_PREFIX: &str = "mcp://tool/";

/// The resource URL of the tool `name`.
pub fn tool_url(name: &str) -> String {
    format!("{TOOL_URL_PREFIX}{name}")
}

/// The tool a resource URL names, when it is a tool URL.
pub fn tool_name(url: &str) -> Option<&str> {
    url.strip_prefix(TOOL_URL_PREFIX)
        .filter(|name| !name.is_empty())
}

/// The tool result (as its JSON object) that asks for payment: `isError`, the document as
/// `structuredContent`, and again as the text of `content[0]`.
pub fn payment_required_result(required: &PaymentRequired) -> Value {
    error_result(required.to_json_value())
}

/// The error result of a paid call whose settlement failed: the payment-required document with
/// the failed settlement under [`PAYMENT_RESPONSE_META_KEY`]. The tool's output is not in it.
pub fn settlement_failed_result(required: &PaymentRequired, failure: &SettleResponse) -> Value {
    let mut document = required.to_json_value();
    if let Value::Object(fields) = &mut document {
        fields.insert(
            PAYMENT_RESPONSE_META_KEY.into(),
            serde_json::to_value(failure).expect("a settle response serializes"),
        );
    }
    let mut result = error_result(document);
    result["_meta"] = json!({ PAYMENT_RESPONSE_META_KEY: failure });
    result
}

fn error_result(document: Value) -> Value {
    json!({
        "content": [{"type": "text", "text": document.to_string()}],
        "structuredContent": document,
        "isError": true,
    })
}

/// The payment-required document a tool result carries, if it carries one: `structuredContent`
/// first, then the text of `content[0]`. `None` when the result is no such answer (a tool's own
/// error, or its output); `Some(Err)` when it claims to be one but does not read.
pub fn payment_required_in_result(result: &Value) -> Option<Result<PaymentRequired, DecodeError>> {
    if result.get("isError").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    if let Some(document) = result.get("structuredContent").filter(|v| is_document(v)) {
        return Some(read_document(document));
    }
    let text = result.get("content")?.get(0)?.get("text")?.as_str()?;
    let document: Value = serde_json::from_str(text).ok()?;
    is_document(&document).then(|| read_document(&document))
}

/// The payment-required document of a JSON-RPC error with code 402, in the older form.
pub fn payment_required_in_error(
    code: i64,
    data: Option<&Value>,
) -> Option<Result<PaymentRequired, DecodeError>> {
    if code != PAYMENT_REQUIRED_ERROR_CODE {
        return None;
    }
    let document = data.filter(|v| is_document(v))?;
    Some(read_document(document))
}

/// The payment a call carries in its `_meta`, if any.
pub fn payment_in_meta(meta: &Map<String, Value>) -> Option<Result<PaymentPayload, DecodeError>> {
    let document = meta.get(PAYMENT_META_KEY).filter(|v| !v.is_null())?;
    if !document.is_object() {
        return Some(Err(DecodeError::Invalid(format!(
            "_meta[\"{PAYMENT_META_KEY}\"] is not an object"
        ))));
    }
    Some(PaymentPayload::from_json(document.to_string().as_bytes()))
}

/// `meta` with `payment` under [`PAYMENT_META_KEY`], as a client sends it.
pub fn attach_payment(meta: &mut Map<String, Value>, payment: &PaymentPayload) {
    meta.insert(PAYMENT_META_KEY.into(), payment.to_json_value());
}

/// The settlement a result carries in its `_meta`, if any.
pub fn settlement_in_meta(
    meta: &Map<String, Value>,
) -> Option<Result<SettleResponse, DecodeError>> {
    let document = meta
        .get(PAYMENT_RESPONSE_META_KEY)
        .filter(|v| !v.is_null())?;
    Some(
        serde_json::from_value(document.clone())
            .map_err(|error| DecodeError::Json(error.to_string())),
    )
}

/// Whether a JSON value looks like a payment-required document (it names its x402 version and
/// lists the ways to pay).
fn is_document(value: &Value) -> bool {
    value.get("x402Version").is_some() && value.get("accepts").is_some()
}

fn read_document(document: &Value) -> Result<PaymentRequired, DecodeError> {
    PaymentRequired::from_json(document.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, Amount, Network, PaymentRequirements, Reason, Resource, X402Version};

    fn required(version: X402Version) -> PaymentRequired {
        PaymentRequired {
            version,
            error: Some("Payment required to access this tool".into()),
            resource: Resource {
                url: tool_url("forecast"),
                description: Some("Tool: forecast".into()),
                mime_type: Some("application/json".into()),
                output_schema: None,
                ..Default::default()
            },
            accepts: vec![PaymentRequirements {
                scheme: "exact".into(),
                network: Network::Eip155(84532),
                amount: Amount::from(1_000u64),
                asset: Address::repeat_byte(0x11).into(),
                pay_to: Address::repeat_byte(0x22).into(),
                max_timeout_seconds: 60,
                extra: Some(json!({"name": "USDC", "version": "2"})),
            }],
            extensions: None,
        }
    }

    #[test]
    fn a_payment_required_result_carries_the_document_twice() {
        let required = required(X402Version::V2);
        let result = payment_required_result(&required);
        assert_eq!(result["isError"], true);
        assert_eq!(result["structuredContent"]["x402Version"], 2);
        assert_eq!(
            result["structuredContent"]["resource"]["url"],
            "mcp://tool/forecast"
        );
        let text: Value =
            serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(text, result["structuredContent"]);
        assert_eq!(payment_required_in_result(&result), Some(Ok(required)));
    }

    #[test]
    fn the_text_form_alone_is_read_and_v1_documents_too() {
        let required = required(X402Version::V1);
        let mut result = payment_required_result(&required);
        result.as_object_mut().unwrap().remove("structuredContent");
        let read = payment_required_in_result(&result).unwrap().unwrap();
        assert_eq!(read.version, X402Version::V1);
        assert_eq!(read.accepts, required.accepts);
    }

    #[test]
    fn results_that_ask_for_nothing_are_not_payment_required() {
        let output = json!({"content": [{"type": "text", "text": "sunny"}], "isError": false});
        assert_eq!(payment_required_in_result(&output), None);
        let own_error =
            json!({"content": [{"type": "text", "text": "no such city"}], "isError": true});
        assert_eq!(payment_required_in_result(&own_error), None);
        let json_error =
            json!({"content": [{"type": "text", "text": "{\"city\": 1}"}], "isError": true});
        assert_eq!(payment_required_in_result(&json_error), None);
        let broken =
            json!({"structuredContent": {"x402Version": 7, "accepts": []}, "isError": true});
        assert!(matches!(payment_required_in_result(&broken), Some(Err(_))));
    }

    #[test]
    fn the_older_json_rpc_error_form_is_read() {
        let document = required(X402Version::V2).to_json_value();
        assert_eq!(
            payment_required_in_error(402, Some(&document)),
            Some(Ok(required(X402Version::V2)))
        );
        assert_eq!(payment_required_in_error(-32603, Some(&document)), None);
        assert_eq!(
            payment_required_in_error(402, Some(&json!({"detail": 1}))),
            None
        );
        assert_eq!(payment_required_in_error(402, None), None);
    }

    #[test]
    fn a_failed_settlement_withholds_output_and_says_why() {
        let failure = SettleResponse::failed(
            Reason::INSUFFICIENT_FUNDS,
            "balance too low",
            None,
            "eip155:84532".into(),
        );
        let result = settlement_failed_result(&required(X402Version::V2), &failure);
        assert_eq!(result["isError"], true);
        assert_eq!(
            result["structuredContent"][PAYMENT_RESPONSE_META_KEY]["success"],
            false
        );
        let meta = result["_meta"].as_object().unwrap();
        assert_eq!(settlement_in_meta(meta), Some(Ok(failure)));
        assert!(payment_required_in_result(&result).unwrap().is_ok());
    }

    #[test]
    fn a_payment_in_meta_is_read_and_nulls_are_tolerated() {
        let mut meta = Map::new();
        assert!(payment_in_meta(&meta).is_none());
        meta.insert(PAYMENT_META_KEY.into(), Value::Null);
        assert!(payment_in_meta(&meta).is_none());
        meta.insert(PAYMENT_META_KEY.into(), json!("eyJ4NDAy"));
        assert!(matches!(payment_in_meta(&meta), Some(Err(_))));
        let accepted = required(X402Version::V2).accepts[0].clone();
        let payment = PaymentPayload::new_v2(
            accepted,
            None,
            crate::SchemePayload::decode("exact", json!({})),
        );
        let mut document = payment.to_json_value();
        // What the official client sends: explicit nulls where it has nothing.
        document["resource"] = json!({"url": "mcp://tool/forecast", "description": null,
            "mimeType": null, "serviceName": null, "tags": null, "iconUrl": null});
        document["extensions"] = Value::Null;
        meta.insert(PAYMENT_META_KEY.into(), document);
        let read = payment_in_meta(&meta).unwrap().unwrap();
        assert_eq!(read.accepted, payment.accepted);
        assert_eq!(read.resource.unwrap().url, "mcp://tool/forecast");
    }

    #[test]
    fn tool_urls_round_trip() {
        assert_eq!(tool_url("a.b"), "mcp://tool/a.b");
        assert_eq!(tool_name("mcp://tool/a.b"), Some("a.b"));
        assert_eq!(tool_name("mcp://tool/"), None);
        assert_eq!(tool_name("https://example.com/a"), None);
    }
}
