//! Discovery (the x402 "Bazaar"): what a facilitator may catalog from a payment it verifies or
//! settles, and the documents of `GET /discovery/resources`.
//!
//! - [`discovered`] reads the resource a payment pays for and the `bazaar` extension its seller
//!   published (v2: `paymentPayload.extensions.bazaar`, copied by the buyer from the 402; v1: the
//!   requirement's `outputSchema`), checked and bounded once, here: a facilitator stores what
//!   this returns and nothing else of the request. Hostile input (oversized or deeply nested
//!   extensions, schemas pointing outside themselves, unsafe route templates, control characters)
//!   is refused for the catalog with [`NotListed`]; the payment itself is not affected.
//! - [`Listing`] and [`ListingPage`] are the catalog's answer as x402 v2 defines it (`items`,
//!   `pagination.total`), with Bursar's [`Reputation`] of each listing beside the standard fields.
//!   `lastUpdated` is written as an ISO 8601 string (as the official SDKs type it) and read as
//!   either that or a Unix number (as the specification types it).
//! - [`report_message`] is the text a payer signs (EIP-191) to report a problem with one of its
//!   own settled payments.

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::bazaar::BAZAAR;
use crate::facilitator::FacilitatorRequest;
use crate::types::{PaymentRequirements, X402Version};

/// Largest `bazaar` extension cataloged, as compact JSON.
pub const EXTENSION_BYTES_MAX: usize = 16 * 1024;
/// Deepest nesting of objects and arrays in a cataloged extension.
pub const EXTENSION_DEPTH_MAX: usize = 16;
/// Longest resource URL cataloged.
pub const RESOURCE_BYTES_MAX: usize = 2048;
/// Longest description kept (longer ones are cut at a character boundary).
pub const DESCRIPTION_CHARS_MAX: usize = 512;
/// Longest MCP tool name cataloged.
pub const TOOL_NAME_BYTES_MAX: usize = 128;
/// Longest service name (printable ASCII), as the bazaar specification bounds it.
pub const SERVICE_NAME_CHARS_MAX: usize = 32;
/// Most tags kept, and the longest tag (printable ASCII).
pub const TAGS_MAX: usize = 5;
pub const TAG_CHARS_MAX: usize = 32;
/// Longest `mimeType` kept.
pub const MIME_TYPE_BYTES_MAX: usize = 128;

/// What kind of resource a listing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Http,
    Mcp,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Http => "http",
            ResourceKind::Mcp => "mcp",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceKind> {
        match text {
            "http" => Some(ResourceKind::Http),
            "mcp" => Some(ResourceKind::Mcp),
            _ => None,
        }
    }
}

/// A resource as a catalog lists it, read from one payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// The resource URL without query or fragment; for a dynamic route, with the seller's
    /// `routeTemplate` as its path.
    pub resource: String,
    pub kind: ResourceKind,
    /// The HTTP method (upper case) or the MCP tool name.
    pub operation: String,
    pub route_template: Option<String>,
    pub version: X402Version,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub service_name: Option<String>,
    pub tags: Vec<String>,
    /// The `bazaar` extension as the seller published it (bounded; see the module docs).
    pub extension: Value,
}

/// Why a payment's resource is not cataloged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not cataloged: {0}")]
pub struct NotListed(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, NotListed> {
    Err(NotListed(why.into()))
}

/// The resource `request` pays for, as a catalog would list it: `Ok(None)` when the seller
/// published no discovery information (nothing to list), `Err` when what it published is refused.
pub fn discovered(request: &FacilitatorRequest) -> Result<Option<Discovered>, NotListed> {
    let payload = &request.payload;
    let (resource, extension) = match payload.version {
        X402Version::V2 => {
            let Some(extension) = payload
                .extensions
                .as_ref()
                .and_then(|extensions| extensions.get(BAZAAR))
            else {
                return Ok(None);
            };
            let Some(resource) = payload.resource.as_ref().or(request.resource.as_ref()) else {
                return refuse("the payment names no resource");
            };
            (resource, extension.clone())
        }
        X402Version::V1 => {
            let Some(resource) = request.resource.as_ref() else {
                return Ok(None);
            };
            let Some(schema) = resource.output_schema.as_ref() else {
                return Ok(None);
            };
            (resource, v1_extension(schema))
        }
    };
    check_shape(&extension)?;
    let input = extension.pointer("/info/input").unwrap_or(&Value::Null);
    let (kind, operation) = match input.get("type").and_then(Value::as_str) {
        Some("mcp") => {
            let Some(tool) = input.get("toolName").and_then(Value::as_str) else {
                return refuse("an MCP listing needs info.input.toolName");
            };
            if tool.is_empty() || tool.len() > TOOL_NAME_BYTES_MAX || has_control(tool) {
                return refuse("info.input.toolName is empty, too long or has control characters");
            }
            if !input.get("inputSchema").is_some_and(Value::is_object) {
                return refuse("an MCP listing needs info.input.inputSchema (an object)");
            }
            (ResourceKind::Mcp, tool.to_string())
        }
        Some("http") | None => {
            let method = input
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase();
            if !["GET", "HEAD", "DELETE", "POST", "PUT", "PATCH"].contains(&method.as_str()) {
                return refuse(format!("unknown HTTP method {method:?}"));
            }
            (ResourceKind::Http, method)
        }
        Some(other) => return refuse(format!("unknown info.input.type {other:?}")),
    };
    let route_template = match extension.get("routeTemplate") {
        None | Some(Value::Null) => None,
        Some(Value::String(template)) if route_template_is_safe(template) => Some(template.clone()),
        Some(_) => return refuse("routeTemplate is not a safe path template"),
    };
    let resource_url = normalize_url(&resource.url, route_template.as_deref())?;
    Ok(Some(Discovered {
        resource: resource_url,
        kind,
        operation,
        route_template,
        version: payload.version,
        description: resource
            .description
            .as_deref()
            .map(clean_text)
            .filter(|text| !text.is_empty()),
        mime_type: resource
            .mime_type
            .as_deref()
            .filter(|mime| mime.len() <= MIME_TYPE_BYTES_MAX && !has_control(mime))
            .map(str::to_string),
        service_name: resource
            .service_name
            .as_deref()
            .filter(|name| printable_ascii(name, SERVICE_NAME_CHARS_MAX))
            .map(str::to_string),
        tags: clean_tags(resource.tags.as_ref()),
        extension,
    }))
}

/// The v1 form (`outputSchema` on the requirement) as a v2 extension, so one shape is stored.
fn v1_extension(schema: &Value) -> Value {
    let input = schema.get("input").cloned().unwrap_or(Value::Null);
    let mut info = serde_json::json!({ "input": input });
    if let Some(output) = schema.get("output") {
        info["output"] = output.clone();
    }
    serde_json::json!({ "info": info })
}

fn check_shape(extension: &Value) -> Result<(), NotListed> {
    if !extension.is_object() || !extension.get("info").is_some_and(Value::is_object) {
        return refuse("the bazaar extension must be an object with an `info` object");
    }
    let bytes = serde_json::to_vec(extension)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if bytes > EXTENSION_BYTES_MAX {
        return refuse(format!(
            "the bazaar extension is {bytes} bytes; at most {EXTENSION_BYTES_MAX} are cataloged"
        ));
    }
    if depth(extension) > EXTENSION_DEPTH_MAX {
        return refuse(format!(
            "the bazaar extension nests deeper than {EXTENSION_DEPTH_MAX} levels"
        ));
    }
    if has_outside_reference(extension) {
        return refuse(
            "the bazaar extension's schema refers outside itself ($ref not starting with #)",
        );
    }
    Ok(())
}

/// Nesting depth of objects and arrays (a scalar is 0), without recursion on the call stack.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Object(map) => {
                deepest = deepest.max(level + 1);
                stack.extend(map.values().map(|child| (child, level + 1)));
            }
            Value::Array(items) => {
                deepest = deepest.max(level + 1);
                stack.extend(items.iter().map(|child| (child, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

fn has_outside_reference(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if (key == "$ref" || key == "$dynamicRef" || key == "$id")
                        && child
                            .as_str()
                            .is_some_and(|target| !target.starts_with('#'))
                    {
                        return true;
                    }
                    stack.push(child);
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
}

/// A `routeTemplate` is a path of safe characters and `:param` segments, starting with `/`, with
/// no `..` and no `://` however deeply percent-encoded.
pub fn route_template_is_safe(template: &str) -> bool {
    if template.is_empty() || template.len() > RESOURCE_BYTES_MAX || !template.starts_with('/') {
        return false;
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || "_/:.-~%".contains(c);
    if !template.chars().all(safe) {
        return false;
    }
    let mut decoded = template.to_string();
    for _ in 0..5 {
        let next = percent_decode(&decoded);
        if next == decoded {
            return !decoded.contains("..") && !decoded.contains("://");
        }
        decoded = next;
    }
    false
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` without query or fragment, with `template` as its path when given. Only `http`,
/// `https` and `mcp` URLs, without whitespace or control characters, are cataloged.
fn normalize_url(url: &str, template: Option<&str>) -> Result<String, NotListed> {
    if url.len() > RESOURCE_BYTES_MAX || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("the resource URL is too long or has whitespace or control characters");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return refuse("the resource is not a URL");
    };
    let scheme = scheme.to_ascii_lowercase();
    if !["http", "https", "mcp"].contains(&scheme.as_str()) {
        return refuse(format!("resources of scheme {scheme:?} are not cataloged"));
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return refuse("the resource URL has no host");
    }
    let path = template.unwrap_or(path);
    Ok(format!(
        "{scheme}://{}{path}",
        authority.to_ascii_lowercase()
    ))
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn printable_ascii(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Control characters become spaces; at most [`DESCRIPTION_CHARS_MAX`] characters are kept.
fn clean_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(DESCRIPTION_CHARS_MAX)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Printable-ASCII tags of at most [`TAG_CHARS_MAX`], case-insensitively distinct, the first
/// [`TAGS_MAX`].
fn clean_tags(tags: Option<&Value>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    let tags = tags
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for tag in tags.iter().filter_map(Value::as_str) {
        if kept.len() == TAGS_MAX {
            break;
        }
        if printable_ascii(tag, TAG_CHARS_MAX)
            && !kept.iter().any(|seen| seen.eq_ignore_ascii_case(tag))
        {
            kept.push(tag.to_string());
        }
    }
    kept
}

/// A listing's reputation: facts the catalog saw, never the seller's claims. How each is
/// computed is in the catalog crate's documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Reputation {
    /// Whether a payment for it was ever settled (or only verified).
    pub settled: bool,
    pub settled_count: u64,
    pub distinct_payers: u64,
    pub verified_count: u64,
    /// Payments verified valid whose settlement then failed.
    pub settlement_failures: u64,
    /// Reported by payers: the paid response failed their validation.
    pub validation_failures: u64,
    /// Reported by payers: payment was required again right after paying.
    pub payment_required_after_payment: u64,
    /// Reported by payers: a step paid for here was compensated (refund claimed).
    pub compensations: u64,
    pub price_changes: u64,
    pub payee_changes: u64,
    /// Problems (settlement failures and reports) per attempt (settled + failed), in basis
    /// points (0 to 10,000).
    pub failure_rate_bps: u64,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_settled: Option<String>,
}

/// One listing of `GET /discovery/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub resource: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub x402_version: u8,
    pub accepts: Vec<PaymentRequirements>,
    #[serde(deserialize_with = "last_updated")]
    pub last_updated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// Bursar's: the MCP tool name or HTTP method, and the route template of a dynamic route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_template: Option<String>,
    /// Bursar's: absent from catalogs that keep none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<Reputation>,
}

/// `lastUpdated` as an ISO 8601 string, or a Unix number (seconds) turned into one.
fn last_updated<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Number(number) => number
            .as_i64()
            .map(|seconds| iso8601_ms(seconds.saturating_mul(1000)))
            .unwrap_or_default(),
        _ => String::new(),
    })
}

impl Listing {
    /// Whether this listing describes a call of `operation` (HTTP method or MCP tool name) to
    /// `url` (its query and fragment ignored; a listing with a route template matches any value
    /// of its `:param` segments) paid to `pay_to` on `network` in `asset`. A listing of the same
    /// resource under another payee does not: its reputation is not this seller's.
    pub fn describes(
        &self,
        url: &str,
        operation: &str,
        pay_to: &Address,
        network: &str,
        asset: &Address,
    ) -> bool {
        let Ok(wanted) = normalize_url(url, None) else {
            return false;
        };
        let resource_matches = match &self.route_template {
            None => self.resource.eq_ignore_ascii_case(&wanted),
            Some(template) => match (
                self.resource.strip_suffix(template.as_str()),
                split_origin(&wanted),
            ) {
                (Some(origin), Some((wanted_origin, path))) => {
                    origin.eq_ignore_ascii_case(wanted_origin) && template_matches(template, path)
                }
                _ => false,
            },
        };
        let operation_matches = match self.kind.as_str() {
            "mcp" => self.tool_name.as_deref() == Some(operation),
            _ => self
                .method
                .as_deref()
                .unwrap_or("GET")
                .eq_ignore_ascii_case(operation),
        };
        resource_matches
            && operation_matches
            && self.accepts.iter().any(|terms| {
                terms.pay_to.evm().as_ref() == Some(pay_to)
                    && terms.asset.evm().as_ref() == Some(asset)
                    && terms.network.caip2() == network
            })
    }
}

/// `url` as a catalog keys resources (no query or fragment, lower-case scheme and host), or
/// `None` when a catalog would not list it.
pub fn normalized_resource(url: &str) -> Option<String> {
    normalize_url(url, None).ok()
}

/// `scheme://authority` and the path of a normalized URL.
pub fn split_origin(url: &str) -> Option<(&str, &str)> {
    let after_scheme = url.find("://")? + 3;
    match url[after_scheme..].find('/') {
        Some(slash) => Some(url.split_at(after_scheme + slash)),
        None => Some((url, "/")),
    }
}

/// Whether `path` fits `template` segment by segment (`:name` matches any one non-empty
/// segment).
pub fn template_matches(template: &str, path: &str) -> bool {
    let mut wanted = path.split('/');
    for part in template.split('/') {
        match wanted.next() {
            Some(segment) if part.starts_with(':') => {
                if segment.is_empty() {
                    return false;
                }
            }
            Some(segment) if segment == part => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

/// The page `GET /discovery/resources` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListingPage {
    pub x402_version: u8,
    pub items: Vec<Listing>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub limit: u64,
    pub offset: u64,
    pub total: u64,
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn iso8601_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

/// What a payer reports about one of its own settled payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The paid response failed the payer's validation.
    ValidationFailed,
    /// The seller asked for payment again right after being paid.
    PaymentRequiredAfterPayment,
    /// The paid step was compensated (a refund was claimed).
    Compensated,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::ValidationFailed => "validation_failed",
            ReportKind::PaymentRequiredAfterPayment => "payment_required_after_payment",
            ReportKind::Compensated => "compensated",
        }
    }

    pub fn parse(text: &str) -> Option<ReportKind> {
        [
            ReportKind::ValidationFailed,
            ReportKind::PaymentRequiredAfterPayment,
            ReportKind::Compensated,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// `POST /discovery/reports`: one payment (named by its EIP-3009 authorization) and what went
/// wrong, signed by the payer over [`report_message`] (EIP-191 `personal_sign`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReport {
    pub kind: ReportKind,
    /// CAIP-2.
    pub network: String,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
    /// 65 bytes, 0x hex.
    pub signature: alloy_primitives::Bytes,
}

/// The text a payer signs to report `kind` about its payment.
pub fn report_message(
    kind: ReportKind,
    network: &str,
    asset: Address,
    payer: Address,
    nonce: B256,
) -> String {
    format!(
        "x402 payment report\nkind: {}\nnetwork: {network}\nasset: {}\npayer: {}\nnonce: {nonce}",
        kind.as_str(),
        asset.to_string().to_lowercase(),
        payer.to_string().to_lowercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_segments() {
        assert!(template_matches("/users/:id", "/users/42"));
        assert!(template_matches("/w/:country/:city", "/w/fr/paris"));
        assert!(!template_matches("/users/:id", "/users/"));
        assert!(!template_matches("/users/:id", "/users/42/x"));
        assert!(!template_matches("/users/:id", "/admins/42"));
        assert_eq!(
            split_origin("https://h:1/a/b"),
            Some(("https://h:1", "/a/b"))
        );
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_796_515_200_123), "2026-12-06T00:00:00.123Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn route_templates() {
        assert!(route_template_is_safe("/users/:id"));
        assert!(route_template_is_safe("/weather/:country/:city"));
        assert!(!route_template_is_safe("users/:id"));
        assert!(!route_template_is_safe("/a/../b"));
        assert!(!route_template_is_safe("/a/%2e%2e/b"));
        assert!(!route_template_is_safe("/a/%252e%252e/b"));
        assert!(!route_template_is_safe("/x/http:%2f%2fevil"));
        assert!(!route_template_is_safe("/a b"));
        assert!(!route_template_is_safe("/<script>"));
    }

    #[test]
    fn urls_lose_query_and_take_templates() {
        assert_eq!(
            normalize_url("https://API.example.com/users/7?x=1#f", Some("/users/:id")).unwrap(),
            "https://api.example.com/users/:id"
        );
        assert_eq!(
            normalize_url("http://h:80/a?b", None).unwrap(),
            "http://h:80/a"
        );
        assert!(normalize_url("javascript://alert(1)", None).is_err());
        assert!(normalize_url("https:///nohost", None).is_err());
        assert!(normalize_url("https://h/a\nb", None).is_err());
    }

    #[test]
    fn deep_and_outside_references_refused() {
        let mut deep = serde_json::json!({"leaf": 1});
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        let extension = serde_json::json!({"info": {"input": {"type": "http"}}, "schema": deep});
        assert!(check_shape(&extension).is_err());
        let outside = serde_json::json!({
            "info": {"input": {"type": "http"}},
            "schema": {"$ref": "https://evil.example/schema.json"},
        });
        assert!(check_shape(&outside).is_err());
        let inside = serde_json::json!({
            "info": {"input": {"type": "http"}},
            "schema": {"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"},
        });
        assert!(check_shape(&inside).is_ok());
    }

    #[test]
    fn last_updated_either_form() {
        let page: ListingPage = serde_json::from_value(serde_json::json!({
            "x402Version": 2,
            "items": [
                {"resource": "https://a/x", "type": "http", "x402Version": 2, "accepts": [],
                 "lastUpdated": 0},
                {"resource": "https://a/y", "type": "http", "x402Version": 2, "accepts": [],
                 "lastUpdated": "2026-01-01T00:00:00.000Z"},
            ],
            "pagination": {"limit": 20, "offset": 0, "total": 2},
        }))
        .unwrap();
        assert_eq!(page.items[0].last_updated, "1970-01-01T00:00:00.000Z");
        assert_eq!(page.items[1].last_updated, "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn tags_and_text_cleaned() {
        let tags = serde_json::json!(["a", "A", "", "x".repeat(40), 7, "b", "c", "d", "e", "f"]);
        assert_eq!(clean_tags(Some(&tags)), ["a", "b", "c", "d", "e"]);
        assert_eq!(clean_text("hi\u{0}there\n"), "hi there");
        assert_eq!(
            clean_text(&"é".repeat(900)).chars().count(),
            DESCRIPTION_CHARS_MAX
        );
    }
}
