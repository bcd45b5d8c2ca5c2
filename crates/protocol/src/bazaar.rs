//! The `bazaar` discovery extension, as far as a paid response's shape is concerned.
//!
//! A seller publishes what its paid response looks like in two places, by protocol version:
//! - v1: each requirement's `outputSchema`, either the response's JSON Schema itself or, as the
//!   reference middleware writes it, `{input: {...}, output: <schema>}`;
//! - v2: `extensions.bazaar = {info, schema}`, where `schema` is a JSON Schema of `info` and the
//!   response body's own schema sits at `schema.properties.output.properties.example`.
//!
//! [`published_output_schema`] reads either; [`HttpDiscovery`] (or [`http_extension`]) writes the
//! v2 form for an HTTP route, with its input and, for a route with path parameters, its
//! `routeTemplate`; [`mcp_extension`] writes it for an MCP tool.

use serde_json::{Value, json};

use crate::types::PaymentRequired;

/// The extension's key in `extensions`.
pub const BAZAAR: &str = "bazaar";

/// The JSON Schema the seller published for the paid response's body, if it published one.
///
/// Only a document that looks like a schema counts (an object with `type`, `properties`,
/// `required`, `items`, `enum`, `const`, `$ref` or a combinator): the `{type, example}` wrapper
/// that describes the output format is not a schema of the body.
pub fn published_output_schema(required: &PaymentRequired) -> Option<&Value> {
    let from_v2 = required
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get(BAZAAR))
        .and_then(|bazaar| bazaar.pointer("/schema/properties/output/properties/example"))
        .filter(|schema| looks_like_schema(schema));
    if from_v2.is_some() {
        return from_v2;
    }
    let v1 = required.resource.output_schema.as_ref()?;
    match v1.get("output") {
        Some(output) if v1.get("input").is_some() || !looks_like_schema(v1) => {
            Some(output).filter(|schema| looks_like_schema(schema))
        }
        _ => Some(v1).filter(|schema| looks_like_schema(schema)),
    }
}

fn looks_like_schema(value: &Value) -> bool {
    const KEYWORDS: [&str; 12] = [
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "const",
        "$ref",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "$schema",
    ];
    let Some(object) = value.as_object() else {
        return false;
    };
    // `{type: "json", example: ...}` describes a format, not a body.
    if object.contains_key("example") && !object.contains_key("properties") {
        return false;
    }
    KEYWORDS.iter().any(|keyword| object.contains_key(*keyword))
}

/// The v2 `bazaar` extension for an HTTP route whose JSON response follows `output_schema`:
/// `info` describes the call, `schema` validates `info` and carries the response's schema at
/// `properties.output.properties.example`.
pub fn http_extension(method: &str, output_schema: &Value) -> Value {
    HttpDiscovery {
        output_schema: Some(output_schema),
        ..HttpDiscovery::new(method)
    }
    .extension()
}

/// What an HTTP route publishes about itself in the v2 `bazaar` extension.
///
/// The extension's `info.input` is the official SDKs' `QueryInput` for methods without a body
/// (`{type: "http", method, pathParams?}`) and `BodyInput` for `POST`, `PUT` and `PATCH`
/// (`{type: "http", method, bodyType: "json", body: {}, pathParams?}`). The input schema, when
/// given, goes in `schema.properties.input.properties.queryParams` (or `.body`), the output schema
/// in `schema.properties.output.properties.example` (where [`published_output_schema`] reads it),
/// and a route with path parameters adds `routeTemplate` (`/users/:id`) next to `info` and
/// `schema`, with the concrete values in `info.input.pathParams`.
#[derive(Debug, Clone, Copy)]
pub struct HttpDiscovery<'a> {
    pub method: &'a str,
    /// The route's pattern in `:param` syntax, for routes with parameters.
    pub route_template: Option<&'a str>,
    /// The parameters' values in the requested path (name, value).
    pub path_params: &'a [(String, String)],
    /// JSON Schema of the query parameters (methods without a body) or of the JSON body.
    pub input_schema: Option<&'a Value>,
    /// JSON Schema of the JSON response body.
    pub output_schema: Option<&'a Value>,
}

impl<'a> HttpDiscovery<'a> {
    pub fn new(method: &'a str) -> Self {
        HttpDiscovery {
            method,
            route_template: None,
            path_params: &[],
            input_schema: None,
            output_schema: None,
        }
    }

    /// Whether the method sends its input as a body (`POST`, `PUT`, `PATCH`).
    pub fn has_body(&self) -> bool {
        matches!(self.method, "POST" | "PUT" | "PATCH")
    }

    /// The extension's value (what goes under `extensions.bazaar`).
    pub fn extension(&self) -> Value {
        let method = self.method;
        let mut input = json!({"type": "http", "method": method});
        let mut input_properties = json!({
            "type": {"type": "string", "const": "http"},
            "method": {"type": "string", "enum": [method]},
        });
        let mut input_required = vec!["type", "method"];
        if self.has_body() {
            input["bodyType"] = json!("json");
            input["body"] = json!({});
            input_properties["bodyType"] = json!({"type": "string", "enum": ["json"]});
            input_properties["body"] = self
                .input_schema
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            input_required.extend(["bodyType", "body"]);
        } else if let Some(schema) = self.input_schema {
            let mut query = json!({"type": "object"});
            if let (Some(query), Some(schema)) = (query.as_object_mut(), schema.as_object()) {
                for (key, value) in schema {
                    query.insert(key.clone(), value.clone());
                }
            }
            input_properties["queryParams"] = query;
        }
        if self.route_template.is_some() {
            let values: serde_json::Map<String, Value> = self
                .path_params
                .iter()
                .map(|(name, value)| (name.clone(), json!(value)))
                .collect();
            input["pathParams"] = Value::Object(values);
            input_properties["pathParams"] = json!({"type": "object"});
        }
        let mut info = json!({ "input": input });
        let mut properties = json!({
            "input": {
                "type": "object",
                "properties": input_properties,
                "required": input_required,
                "additionalProperties": false,
            },
        });
        if let Some(output_schema) = self.output_schema {
            info["output"] = json!({"type": "json"});
            properties["output"] = json!({
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "example": output_schema,
                },
                "required": ["type"],
            });
        }
        let mut extension = json!({
            "info": info,
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": properties,
                "required": ["input"],
            },
        });
        if let Some(template) = self.route_template {
            extension["routeTemplate"] = json!(template);
        }
        extension
    }
}

/// The v2 `bazaar` extension for a paid MCP tool: `info.input` describes the tool (its name,
/// description, transport and input schema), and when the tool publishes an output schema it sits
/// where [`published_output_schema`] reads it, as for HTTP routes.
pub fn mcp_extension(
    tool_name: &str,
    description: Option<&str>,
    input_schema: &Value,
    output_schema: Option<&Value>,
) -> Value {
    let mut input = json!({
        "type": "mcp",
        "toolName": tool_name,
        "transport": "streamable-http",
        "inputSchema": input_schema,
    });
    let mut input_properties = json!({
        "type": {"type": "string", "const": "mcp"},
        "toolName": {"type": "string"},
        "transport": {"type": "string", "enum": ["streamable-http", "sse"]},
        "inputSchema": {"type": "object"},
    });
    if let Some(description) = description {
        input["description"] = json!(description);
        input_properties["description"] = json!({"type": "string"});
    }
    let mut info = json!({ "input": input });
    let mut properties = json!({
        "input": {
            "type": "object",
            "properties": input_properties,
            "required": ["type", "toolName", "inputSchema"],
            "additionalProperties": false,
        },
    });
    if let Some(output_schema) = output_schema {
        info["output"] = json!({"type": "json"});
        properties["output"] = json!({
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "example": output_schema,
            },
            "required": ["type"],
        });
    }
    json!({
        "info": info,
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
            "required": ["input"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Resource, X402Version};

    fn required(resource_schema: Option<Value>, extensions: Option<Value>) -> PaymentRequired {
        PaymentRequired {
            version: X402Version::V2,
            error: None,
            resource: Resource {
                output_schema: resource_schema,
                ..Resource::default()
            },
            accepts: Vec::new(),
            extensions,
        }
    }

    #[test]
    fn an_mcp_tool_publishes_its_schemas() {
        let input = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let output = json!({"type": "object", "required": ["forecast"]});
        let extension = mcp_extension("forecast", Some("Weather"), &input, Some(&output));
        assert_eq!(extension["info"]["input"]["type"], "mcp");
        assert_eq!(extension["info"]["input"]["toolName"], "forecast");
        assert_eq!(extension["info"]["input"]["inputSchema"], input);
        let extensions = json!({ BAZAAR: extension });
        assert_eq!(
            published_output_schema(&required(None, Some(extensions))),
            Some(&output)
        );
        let bare = mcp_extension("ping", None, &json!({"type": "object"}), None);
        assert!(bare["info"].get("output").is_none());
        assert!(bare["info"]["input"].get("description").is_none());
        let extensions = json!({ BAZAAR: bare });
        assert_eq!(
            published_output_schema(&required(None, Some(extensions))),
            None
        );
    }

    #[test]
    fn reads_the_v2_extension() {
        let schema = json!({"type": "object", "required": ["content"]});
        let extensions = json!({ BAZAAR: http_extension("GET", &schema) });
        assert_eq!(
            published_output_schema(&required(None, Some(extensions))),
            Some(&schema)
        );
    }

    #[test]
    fn a_route_template_and_an_input_schema_are_published() {
        let output = json!({"type": "object", "required": ["city"]});
        let query = json!({"properties": {"days": {"type": "integer"}}});
        let params = vec![("city".to_string(), "paris".to_string())];
        let extension = HttpDiscovery {
            route_template: Some("/forecast/:city"),
            path_params: &params,
            input_schema: Some(&query),
            output_schema: Some(&output),
            ..HttpDiscovery::new("GET")
        }
        .extension();
        assert_eq!(extension["routeTemplate"], "/forecast/:city");
        assert_eq!(
            extension["info"]["input"],
            json!({"type": "http", "method": "GET", "pathParams": {"city": "paris"}})
        );
        let input = &extension["schema"]["properties"]["input"]["properties"];
        assert_eq!(input["queryParams"]["type"], "object");
        assert_eq!(
            input["queryParams"]["properties"]["days"]["type"],
            "integer"
        );
        assert_eq!(input["pathParams"], json!({"type": "object"}));
        let extensions = json!({ BAZAAR: extension });
        assert_eq!(
            published_output_schema(&required(None, Some(extensions))),
            Some(&output)
        );

        let body = json!({"type": "object", "required": ["text"]});
        let post = HttpDiscovery {
            input_schema: Some(&body),
            ..HttpDiscovery::new("POST")
        }
        .extension();
        assert!(post.get("routeTemplate").is_none());
        assert_eq!(
            post["info"]["input"],
            json!({"type": "http", "method": "POST", "bodyType": "json", "body": {}})
        );
        assert_eq!(
            post["schema"]["properties"]["input"]["properties"]["body"],
            body
        );
        assert!(post["info"].get("output").is_none());
    }

    #[test]
    fn reads_both_v1_shapes() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        assert_eq!(
            published_output_schema(&required(Some(schema.clone()), None)),
            Some(&schema)
        );
        let wrapped = json!({"input": {"type": "http", "method": "GET"}, "output": schema});
        assert_eq!(
            published_output_schema(&required(Some(wrapped), None)),
            Some(&schema)
        );
    }

    #[test]
    fn a_format_description_or_nothing_is_no_schema() {
        let wrapper = json!({"type": "json", "example": {"a": 1}});
        let extensions = json!({ BAZAAR: {"info": {"output": wrapper.clone()}, "schema": {"properties": {"output": {"properties": {"example": wrapper}}}}} });
        assert_eq!(
            published_output_schema(&required(None, Some(extensions))),
            None
        );
        assert_eq!(published_output_schema(&required(None, None)), None);
        let input_only = json!({"input": {"type": "http"}});
        assert_eq!(
            published_output_schema(&required(Some(input_only), None)),
            None
        );
        assert_eq!(
            published_output_schema(&required(Some(json!("text")), None)),
            None
        );
    }
}
