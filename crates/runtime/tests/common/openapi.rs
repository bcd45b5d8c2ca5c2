//! Checks a server's answers against the OpenAPI document it serves itself: each body against
//! the schema of its operation (method and path template) and status; errors (4xx, 5xx) against
//! the operation's `default` response when their status has none of its own.
//!
//! Objects are checked strictly: a property the document does not declare is a mismatch too.

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// `document` made strict: every component object schema refuses undeclared properties, except
/// one that is part of another (`allOf`), whose whole is checked instead.
pub fn strict(document: &Value) -> Value {
    let mut document = document.clone();
    let mut parts = BTreeSet::new();
    collect_parts(&document, &mut parts);
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            let object = schema.get("properties").is_some() || schema.get("allOf").is_some();
            if object && !parts.contains(name) {
                schema["unevaluatedProperties"] = json!(false);
            }
        }
    }
    document
}

/// Names of component schemas referenced from an `allOf`.
fn collect_parts(value: &Value, parts: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(all)) = object.get("allOf") {
                for item in all {
                    if let Some(name) = item["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    {
                        parts.insert(name.to_string());
                    }
                }
            }
            object.values().for_each(|v| collect_parts(v, parts));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_parts(v, parts)),
        _ => {}
    }
}

/// Whether `path` (without its query) fits `template` (`/v1/sessions/{session}`); the number of
/// parameters it took, to prefer literal routes.
fn fits(template: &str, path: &str) -> Option<usize> {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    if template.len() != path.len() {
        return None;
    }
    let mut parameters = 0;
    for (expected, actual) in template.iter().zip(&path) {
        if expected.starts_with('{') && expected.ends_with('}') && !actual.is_empty() {
            parameters += 1;
        } else if expected != actual {
            return None;
        }
    }
    Some(parameters)
}

/// The response `item` documents for `method` and `status`; an error status without its own
/// falls back to `default`.
fn response<'d>(
    item: &'d Value,
    method: &str,
    template: &str,
    status: u16,
) -> Result<&'d Value, String> {
    let responses = item[method.to_ascii_lowercase()]["responses"]
        .as_object()
        .ok_or_else(|| format!("{method} {template} is not in the document"))?;
    match responses.get(&status.to_string()) {
        Some(response) => Ok(response),
        None if status >= 400 => responses
            .get("default")
            .ok_or_else(|| format!("{method} {template} documents no errors")),
        None => Err(format!(
            "{method} {template} does not document status {status}"
        )),
    }
}

/// Checks one answer; the error says what differs.
pub fn check(
    document: &Value,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let path = path.split('?').next().unwrap_or(path);
    let paths = document["paths"].as_object().ok_or("no paths")?;
    let found = paths
        .iter()
        .filter_map(|(template, item)| fits(template, path).map(|n| (n, template, item)))
        .min_by_key(|(n, _, _)| *n);
    let (template, response) = match found {
        Some((_, template, item)) => (template.as_str(), response(item, method, template, status)?),
        // A route the server does not have: its 404 is an error like any other.
        None if status == 404 => {
            let any = paths.values().find_map(|item| {
                let operation = item.as_object()?.values().next()?;
                operation.pointer("/responses/default")
            });
            (
                "(no route)",
                any.ok_or("the document has no error response")?,
            )
        }
        None => return Err(format!("{path} is not in the document")),
    };
    let schema = response
        .pointer("/content/application~1json/schema")
        .ok_or_else(|| format!("{method} {template} {status} has no JSON schema"))?;
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": document["components"],
    });
    let validator = jsonschema::draft202012::new(&root)
        .map_err(|e| format!("{method} {template} {status}: the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} answered {status} with a body that differs from the document: {}",
            errors.join("; ")
        ))
    }
}
