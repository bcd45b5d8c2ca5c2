//! The paywall's configuration file (`paywall.toml`): what to forward where, and what each route
//! costs.
//!
//! ```toml
//! # Top level: all optional. Command-line flags win over them.
//! upstream = "http://127.0.0.1:8000"        # the service to sell
//! facilitator_url = "http://127.0.0.1:4020" # verifies and settles the payments
//! public_url = "https://api.example.com"    # the URL clients reach the paywall at
//! deny_unpriced = false                     # true: 404 for requests no route prices or frees
//! connect_timeout_seconds = 5               # the upstream must accept a connection within this
//! response_timeout_seconds = 30             # ... and send its response head within this
//!
//! [defaults]                  # for every route that does not say otherwise
//! network = "eip155:8453"     # CAIP-2
//! asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # the EIP-3009 token
//! asset_name = "USD Coin"     # its EIP-712 domain name
//! asset_version = "2"         # its EIP-712 domain version
//! asset_symbol = "USDC"       # for logs only (default USDC)
//! asset_decimals = 6          # for logs only (default 6)
//! pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
//! max_timeout_seconds = 60
//!
//! [[route]]
//! path = "/forecast/:city"    # a pattern: literal segments, :param segments, a last *rest
//! methods = ["GET"]           # default ["GET"]
//! price = "10000"             # atomic units of the asset, a decimal string (10000 = 0.01 USDC)
//! description = "Forecast for a city"
//! mime_type = "application/json"
//! input_schema = { properties = { days = { type = "integer" } } }   # query or JSON body
//! output_schema = '''{"type": "object", "required": ["city"]}'''     # a table, or JSON text
//! # network, asset, asset_name, asset_version, asset_symbol, asset_decimals, pay_to and
//! # max_timeout_seconds may be set here too, for this route only.
//!
//! [[free]]                    # forwarded without payment even with deny_unpriced
//! path = "/health"
//! methods = ["GET"]           # default: any method
//! ```
//!
//! Prices are strings of integer atomic units: a TOML number is refused, so no price ever passes
//! through a float. Unknown keys are refused (a typo is an error, not a free route). Schemas are
//! TOML tables or strings of JSON; they are published in the v2 `bazaar` extension. Requests that
//! no `[[route]]` prices are forwarded free unless `deny_unpriced = true`, and a route listed in
//! both `[[route]]` and `[[free]]` is priced.

use std::time::Duration;

use axum::http::Method;
use bursar_protocol::{Amount, AssetUnit, ChainAddress, Network};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;
use toml::Spanned;

use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, FreeRoute};
use crate::pattern::RoutePattern;
use crate::{Asset, DEFAULT_MAX_TIMEOUT_SECONDS, Offer, PricedRoute};

/// What is wrong with a configuration file; the message names the line and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A read and checked configuration file.
#[derive(Debug, Clone)]
pub struct PaywallConfig {
    pub upstream: Option<String>,
    pub facilitator_url: Option<String>,
    pub public_url: Option<String>,
    pub deny_unpriced: bool,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub routes: Vec<PricedRoute>,
    pub free_routes: Vec<FreeRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    upstream: Option<String>,
    facilitator_url: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    deny_unpriced: bool,
    connect_timeout_seconds: Option<Seconds>,
    response_timeout_seconds: Option<Seconds>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "route")]
    routes: Vec<RouteEntry>,
    #[serde(default, rename = "free")]
    free: Vec<FreeEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    network: Option<Network>,
    asset: Option<EvmAddress>,
    asset_name: Option<String>,
    asset_version: Option<String>,
    asset_symbol: Option<String>,
    asset_decimals: Option<u8>,
    pay_to: Option<EvmAddress>,
    max_timeout_seconds: Option<Seconds>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    path: Spanned<String>,
    methods: Option<Vec<String>>,
    price: AtomicPrice,
    description: Option<String>,
    mime_type: Option<String>,
    input_schema: Option<Schema>,
    output_schema: Option<Schema>,
    network: Option<Network>,
    asset: Option<EvmAddress>,
    asset_name: Option<String>,
    asset_version: Option<String>,
    asset_symbol: Option<String>,
    asset_decimals: Option<u8>,
    pay_to: Option<EvmAddress>,
    max_timeout_seconds: Option<Seconds>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreeEntry {
    path: Spanned<String>,
    methods: Option<Vec<String>>,
}

impl PaywallConfig {
    /// Reads a configuration file's text.
    pub fn from_toml(text: &str) -> Result<PaywallConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|error| {
            let message = error.message().trim_end().to_string();
            match error.span() {
                Some(span) => ConfigError(format!("line {}: {message}", line_of(text, span.start))),
                None => ConfigError(message),
            }
        })?;
        let seconds = |value: Option<Seconds>, default: Duration| {
            value.map_or(default, |s| Duration::from_secs(s.0))
        };
        let mut routes = Vec::new();
        let mut priced: Vec<(Method, RoutePattern)> = Vec::new();
        for entry in &file.routes {
            let at = Place::new(text, &entry.path);
            let pattern = RoutePattern::parse(entry.path.get_ref()).map_err(|m| at.error(&m))?;
            for method in methods(&at, entry.methods.as_deref(), &[Method::GET])? {
                if let Some((_, twin)) = priced
                    .iter()
                    .find(|(other, twin)| *other == method && twin.same_shape(&pattern))
                {
                    return Err(at.error(&format!(
                        "{method} {} is already priced by an earlier route",
                        twin.as_str()
                    )));
                }
                priced.push((method.clone(), pattern.clone()));
                routes.push(priced_route(&at, entry, &file.defaults, method)?);
            }
        }
        let mut free_routes = Vec::new();
        for entry in &file.free {
            let at = Place::new(text, &entry.path);
            let methods = methods(&at, entry.methods.as_deref(), &[])?;
            free_routes.push(
                FreeRoute::new(methods, entry.path.get_ref())
                    .map_err(|error| at.error(&error.to_string()))?,
            );
        }
        Ok(PaywallConfig {
            upstream: file.upstream,
            facilitator_url: file.facilitator_url,
            public_url: file.public_url,
            deny_unpriced: file.deny_unpriced,
            connect_timeout: seconds(file.connect_timeout_seconds, DEFAULT_CONNECT_TIMEOUT),
            response_timeout: seconds(file.response_timeout_seconds, DEFAULT_RESPONSE_TIMEOUT),
            routes,
            free_routes,
        })
    }
}

/// Where a route is in the file, for messages.
struct Place<'a> {
    line: usize,
    path: &'a str,
}

impl<'a> Place<'a> {
    fn new(text: &str, path: &'a Spanned<String>) -> Self {
        Place {
            line: line_of(text, path.span().start),
            path: path.get_ref(),
        }
    }

    fn error(&self, message: &str) -> ConfigError {
        ConfigError(format!(
            "line {}: route {:?}: {message}",
            self.line, self.path
        ))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

fn methods(
    at: &Place<'_>,
    given: Option<&[String]>,
    default: &[Method],
) -> Result<Vec<Method>, ConfigError> {
    let Some(given) = given else {
        return Ok(default.to_vec());
    };
    if given.is_empty() && !default.is_empty() {
        return Err(at.error("methods must not be empty"));
    }
    let mut methods = Vec::with_capacity(given.len());
    for name in given {
        let upper = name.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes())
            .ok()
            .filter(|_| !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_alphabetic()))
            .ok_or_else(|| at.error(&format!("methods: {name:?} is not an HTTP method")))?;
        if methods.contains(&method) {
            return Err(at.error(&format!("methods: {method} is listed twice")));
        }
        methods.push(method);
    }
    Ok(methods)
}

fn priced_route(
    at: &Place<'_>,
    entry: &RouteEntry,
    defaults: &Defaults,
    method: Method,
) -> Result<PricedRoute, ConfigError> {
    let missing = |field: &str| {
        at.error(&format!(
            "no {field} (set it on the route or in [defaults])"
        ))
    };
    if entry.price.0.is_zero() {
        return Err(at.error(
            "price must be more than 0 (list the route under [[free]], or leave it out, to serve it free)",
        ));
    }
    let network = entry
        .network
        .clone()
        .or_else(|| defaults.network.clone())
        .ok_or_else(|| missing("network"))?;
    let address = entry
        .asset
        .as_ref()
        .or(defaults.asset.as_ref())
        .ok_or_else(|| missing("asset"))?;
    let name = entry
        .asset_name
        .as_ref()
        .or(defaults.asset_name.as_ref())
        .ok_or_else(|| missing("asset_name"))?;
    let version = entry
        .asset_version
        .as_ref()
        .or(defaults.asset_version.as_ref())
        .ok_or_else(|| missing("asset_version"))?;
    let pay_to = entry
        .pay_to
        .as_ref()
        .or(defaults.pay_to.as_ref())
        .ok_or_else(|| missing("pay_to"))?;
    let unit = AssetUnit {
        symbol: entry
            .asset_symbol
            .clone()
            .or_else(|| defaults.asset_symbol.clone())
            .unwrap_or_else(|| AssetUnit::usdc().symbol),
        decimals: entry
            .asset_decimals
            .or(defaults.asset_decimals)
            .unwrap_or(AssetUnit::usdc().decimals),
    };
    let max_timeout = entry
        .max_timeout_seconds
        .or(defaults.max_timeout_seconds)
        .map_or(DEFAULT_MAX_TIMEOUT_SECONDS, |s| s.0);
    let asset = Asset::new(address.0.clone(), name.clone(), version.clone(), unit);
    let offer = Offer::exact(network, asset, entry.price.0, pay_to.0.clone())
        .max_timeout_seconds(max_timeout);
    offer.validate().map_err(|message| at.error(&message))?;
    let mut route = PricedRoute::new(method, entry.path.get_ref().clone()).offer(offer);
    if let Some(description) = &entry.description {
        route = route.description(description.clone());
    }
    if let Some(mime_type) = &entry.mime_type {
        route = route.mime_type(mime_type.clone());
    }
    if let Some(schema) = &entry.input_schema {
        route = route.input_schema(schema.0.clone());
    }
    if let Some(schema) = &entry.output_schema {
        route = route.output_schema(schema.0.clone());
    }
    Ok(route)
}

/// A price: a decimal string of atomic units.
struct AtomicPrice(Amount);

impl<'de> Deserialize<'de> for AtomicPrice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PriceVisitor;
        impl Visitor<'_> for PriceVisitor {
            type Value = AtomicPrice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal string of atomic units, such as \"10000\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<AtomicPrice, E> {
                Amount::parse_atomic(text)
                    .map(AtomicPrice)
                    .map_err(|error| E::custom(format!("price {text:?}: {error}")))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<AtomicPrice, E> {
                Err(E::custom(format!(
                    "price must be a string of atomic units: write price = \"{value}\""
                )))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<AtomicPrice, E> {
                Err(E::custom(format!(
                    "price {value} is a fraction: write the price in integer atomic units, as a string (\"10000\" is 0.01 of a 6-decimal token)"
                )))
            }
        }
        deserializer.deserialize_any(PriceVisitor)
    }
}

/// A `0x` EVM address.
struct EvmAddress(ChainAddress);

impl<'de> Deserialize<'de> for EvmAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let address = ChainAddress::new(text.trim());
        if address.evm().is_none() {
            return Err(de::Error::custom(format!(
                "{text:?} is not an EVM address (0x and 40 hex digits)"
            )));
        }
        Ok(EvmAddress(address))
    }
}

/// Whole seconds, more than 0.
#[derive(Clone, Copy)]
struct Seconds(u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = u64::deserialize(deserializer)?;
        if seconds == 0 {
            return Err(de::Error::custom("must be at least 1 second"));
        }
        Ok(Seconds(seconds))
    }
}

/// A JSON Schema: a TOML table, or a string of JSON.
struct Schema(Value);

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let value = match value {
            Value::String(text) => serde_json::from_str(&text)
                .map_err(|error| de::Error::custom(format!("schema is not JSON: {error}")))?,
            other => other,
        };
        if !value.is_object() {
            return Err(de::Error::custom(
                "a schema must be a table (a JSON object)",
            ));
        }
        Ok(Schema(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    fn config(routes: &str) -> String {
        format!(
            r#"
upstream = "http://127.0.0.1:8000"

[defaults]
network = "eip155:31337"
asset = "{TOKEN}"
asset_name = "USD Coin"
asset_version = "2"
pay_to = "{PAY_TO}"
{routes}"#
        )
    }

    fn error(text: &str) -> String {
        PaywallConfig::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_file_is_read() {
        let text = config(
            r#"
[[route]]
path = "/forecast/:city"
price = "10000"
description = "Forecast for a city"
mime_type = "application/json"
input_schema = { properties = { days = { type = "integer" } } }
output_schema = '{"type": "object", "required": ["city"]}'

[[route]]
path = "/summarize"
methods = ["post", "PUT"]
price = "25000"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
max_timeout_seconds = 120
[route.output_schema]
type = "object"
properties = { summary = { type = "string" } }

[[free]]
path = "/health"
"#,
        );
        let config = PaywallConfig::from_toml(&text).unwrap();
        assert_eq!(config.upstream.as_deref(), Some("http://127.0.0.1:8000"));
        assert!(!config.deny_unpriced);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let names: Vec<String> = config
            .routes
            .iter()
            .map(|route| {
                format!(
                    "{} {} {}",
                    route.method(),
                    route.path(),
                    route.offers()[0].amount
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "GET /forecast/:city 10000",
                "POST /summarize 25000",
                "PUT /summarize 25000"
            ]
        );
        let summarize = &config.routes[1].offers()[0];
        assert_eq!(
            summarize.pay_to.as_str(),
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
        );
        assert_eq!(summarize.max_timeout_seconds, 120);
        assert_eq!(config.routes[0].offers()[0].pay_to.as_str(), PAY_TO);
        assert_eq!(config.free_routes.len(), 1);
        assert!(config.free_routes[0].methods().is_empty());
    }

    #[test]
    fn prices_are_strings_of_atomic_units() {
        // The [[route]] header is on line 10, its path on 11, its price on 12.
        let route = |price: &str| config(&format!("[[route]]\npath = \"/a\"\nprice = {price}\n"));
        let message = error(&route("10000"));
        assert!(
            message.starts_with("line 12: ") && message.contains("price = \"10000\""),
            "{message}"
        );
        let message = error(&route("0.01"));
        assert!(
            message.starts_with("line 12: ") && message.contains("fraction"),
            "{message}"
        );
        let message = error(&route("\"0.01\""));
        assert!(
            message.starts_with("line 12: ") && message.contains("decimal string"),
            "{message}"
        );
        let message = error(&route("\"0\""));
        assert!(
            message.starts_with("line 11: route \"/a\": ") && message.contains("more than 0"),
            "{message}"
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let cases = [
            (
                config("[[route]]\npath = \"/a\"\nprice = \"1\"\nprise = \"2\"\n"),
                "line 13: ",
                "unknown field `prise`",
            ),
            (
                "[[route]]\npath = \"/a\"\nprice = \"1\"\n".to_string(),
                "line 2: route \"/a\": ",
                "no network (set it on the route or in [defaults])",
            ),
            (
                config("[[route]]\npath = \"a\"\nprice = \"1\"\n"),
                "line 11: route \"a\": ",
                "must start with '/'",
            ),
            (
                config("[[route]]\npath = \"/a\"\nprice = \"1\"\nmethods = [\"GE T\"]\n"),
                "line 11: route \"/a\": ",
                "\"GE T\" is not an HTTP method",
            ),
            (
                config(
                    "[[route]]\npath = \"/a/:x\"\nprice = \"1\"\n[[route]]\npath = \"/a/:y\"\nprice = \"2\"\n",
                ),
                "line 14: route \"/a/:y\": ",
                "GET /a/:x is already priced",
            ),
            (
                "[defaults]\npay_to = \"0x12\"\n".to_string(),
                "line 2: ",
                "not an EVM address",
            ),
            (
                "[defaults]\nnetwork = \"nowhere\"\n".to_string(),
                "line 2: ",
                "\"nowhere\"",
            ),
            (
                config("[[route]]\npath = \"/a\"\nprice = \"1\"\noutput_schema = \"not json\"\n"),
                "line 13: ",
                "schema is not JSON",
            ),
            (
                "response_timeout_seconds = 0\n".to_string(),
                "line 1: ",
                "at least 1 second",
            ),
            (
                config("[[free]]\npath = \"/a/:\"\n"),
                "line 11: route \"/a/:\": ",
                "parameter's name",
            ),
        ];
        for (text, prefix, needle) in cases {
            let message = error(&text);
            assert!(
                message.starts_with(prefix) && message.contains(needle),
                "{message:?} should start with {prefix:?} and say {needle:?}"
            );
        }
    }
}
