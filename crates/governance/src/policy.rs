//! Policy documents (TOML) and their compiled form.
//!
//! ```toml
//! max_per_call = "0.10"                 # in the runtime's currency
//! max_per_call_percent = 25              # and at most this share of the session's budget
//! networks = ["eip155:8453"]             # allowed networks (CAIP-2); omit for any
//! assets = ["0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"]   # allowed tokens; omit for any
//!
//! [payees]
//! allow_domains = ["api.example.com", "*.data.example"]     # when set, only these hosts
//! deny_domains = ["evil.example"]
//! allow_addresses = []                   # when set, only these payTo addresses
//! deny_addresses = ["0x0000000000000000000000000000000000000bad"]
//!
//! [[limits]]                             # per payee (host or address) and/or asset
//! payee = "api.example.com"
//! max_per_call = "0.05"
//!
//! [[windows]]                            # caps over rolling windows, across sessions
//! scope = "wallet"                       # or "agent"
//! period = "1h"                          # s, m, h, d
//! max = "5.00"
//!
//! [endpoints]
//! max_calls_per_session = 20             # paid calls per endpoint per session
//! loop_count = 5                         # the same endpoint paid this many times ...
//! loop_window = "60s"                    # ... within this long is a loop
//! pin_terms = true                       # payTo, asset and network fixed, price never rising
//! backoff_after_rejections = 3           # paid but answered 402 again this often in a row:
//!                                        # wait 1 s, 2 s, 4 s, ... (at most 1 h) between tries
//! backoff_wait = "1s"                    # the first of those waits (then doubling)
//!
//! [validation]                           # what a paid response must look like
//! status = [200]                         # default: any 2xx
//! content_type = "application/json"
//! json_schema = { type = "object", required = ["content"] }
//! seller_schema = true                   # also check the body against the schema the seller
//!                                        # published in its 402 (v1 outputSchema, v2 bazaar)
//! declared_type = true                   # the body must be what its type says: the response's
//!                                        # Content-Type must agree with the mimeType the seller
//!                                        # declared in its 402, and a JSON type must parse
//! failures_before_pause = 3              # failures in a row before payments pause
//! cooldown = "24h"                       # how long the pause lasts (an operator can lift it)
//!
//! [[validators]]                         # checks for one endpoint (host, host/path prefix or
//! endpoint = "api.example.com/v1/report" # URL prefix), in addition to [validation]
//! content_type = "application/json"
//! json_schema = { type = "object", required = ["rows"] }
//!
//! [alerts]                               # graduated budget alerts (webhook + ledger entry)
//! thresholds = [50, 75]                  # percent of any budget: the session's, each window cap
//!                                        # (default [50, 75] when no policy sets them)
//!
//! [reputation]                           # before signing, the endpoint must be listed in this
//! catalog = "https://facilitator.example" # discovery catalog (GET /discovery/resources), with
//! min_settled = 10                       # at least this many settled payments,
//! min_distinct_payers = 3                # from at least this many payers,
//! max_failure_rate_percent = 5           # and problems in at most this share of its payments
//!                                        # (a catalog that cannot be read denies: fail closed)
//!
//! [cache]                                # opt-in: serve a paid GET again instead of paying twice
//! ttl = "24h"
//! scope = "session"                      # or "wallet"
//!
//! [phases.explore]
//! spend = false                          # no payments while exploring
//! [phases.execute]
//! max_per_call = "1.00"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use alloy_primitives::Address;
use bursar_protocol::{Amount, AssetUnit};
use serde::Deserialize;

/// Longest policy document accepted.
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Most list entries (domains, addresses, limits, windows, phases) in one document.
pub const POLICY_ENTRIES_MAX: usize = 1000;
/// The shortest and longest rolling window.
pub const WINDOW_SECONDS_MIN: u64 = 1;
pub const WINDOW_SECONDS_MAX: u64 = 366 * 24 * 60 * 60;
/// The default of `endpoints.pin_terms`.
pub const PIN_TERMS_DEFAULT: bool = true;
/// The default of `endpoints.backoff_after_rejections`: after this many paid requests in a row
/// that an endpoint answered with 402 again, payments to it back off exponentially.
pub const BACKOFF_AFTER_REJECTIONS_DEFAULT: u32 = 3;
/// The default of `endpoints.backoff_wait`, the first wait of a backoff: 1 second.
pub const BACKOFF_WAIT_SECONDS_DEFAULT: u64 = 1;
/// The longest first wait of a backoff: 1 hour (no wait is longer, see [`crate::BACKOFF_MAX_MS`]).
pub const BACKOFF_WAIT_SECONDS_MAX: u64 = 60 * 60;

/// A policy that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is {0} bytes; at most {POLICY_BYTES_MAX} are accepted")]
    TooLarge(usize),
    #[error("policy is not valid TOML for Bursar: {0}")]
    Syntax(String),
    #[error("policy field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    max_per_call: Option<String>,
    max_per_call_percent: Option<i64>,
    networks: Option<Vec<String>>,
    assets: Option<Vec<String>>,
    #[serde(default)]
    payees: PayeesDocument,
    #[serde(default)]
    limits: Vec<LimitDocument>,
    #[serde(default)]
    windows: Vec<WindowDocument>,
    #[serde(default)]
    endpoints: EndpointsDocument,
    #[serde(default)]
    phases: BTreeMap<String, PhaseDocument>,
    validation: Option<ValidationDocument>,
    #[serde(default)]
    validators: Vec<ValidationDocument>,
    cache: Option<CacheDocument>,
    alerts: Option<AlertsDocument>,
    reputation: Option<ReputationDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReputationDocument {
    catalog: String,
    min_settled: Option<u64>,
    min_distinct_payers: Option<u64>,
    max_failure_rate_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsDocument {
    thresholds: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheDocument {
    ttl: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidationDocument {
    endpoint: Option<String>,
    status: Option<Vec<u16>>,
    content_type: Option<String>,
    json_schema: Option<toml::Value>,
    seller_schema: Option<bool>,
    declared_type: Option<bool>,
    failures_before_pause: Option<u32>,
    cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayeesDocument {
    allow_domains: Option<Vec<String>>,
    #[serde(default)]
    deny_domains: Vec<String>,
    allow_addresses: Option<Vec<String>>,
    #[serde(default)]
    deny_addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDocument {
    payee: Option<String>,
    asset: Option<String>,
    max_per_call: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDocument {
    scope: String,
    period: String,
    max: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsDocument {
    max_calls_per_session: Option<u32>,
    loop_count: Option<u32>,
    loop_window: Option<String>,
    pin_terms: Option<bool>,
    backoff_after_rejections: Option<u32>,
    backoff_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseDocument {
    spend: Option<bool>,
    max_per_call: Option<String>,
}

/// Whose spending a rolling window adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowScope {
    /// Every session of the wallet.
    Wallet,
    /// Every session of the agent (on this wallet).
    Agent,
}

impl WindowScope {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowScope::Wallet => "wallet",
            WindowScope::Agent => "agent",
        }
    }
}

/// A cap over a rolling window. Enforced by the store, atomically with the reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCap {
    pub scope: WindowScope,
    pub period_seconds: u64,
    pub max: Amount,
    /// Where the cap comes from, for the decision trace.
    pub source: String,
}

/// A payee matcher: a host (exact, or `*.suffix`) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayeeMatch {
    Domain(String),
    Address(Address),
}

impl PayeeMatch {
    fn parse(text: &str, field: &str) -> Result<PayeeMatch, PolicyError> {
        if text.starts_with("0x") {
            return text
                .parse()
                .map(PayeeMatch::Address)
                .map_err(|_| invalid(field, format!("{text:?} is not an address")));
        }
        let domain = text.trim().to_ascii_lowercase();
        let bare = domain.strip_prefix("*.").unwrap_or(&domain);
        if bare.is_empty()
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(invalid(field, format!("{text:?} is not a host name")));
        }
        Ok(PayeeMatch::Domain(domain))
    }

    /// Whether a payment to `pay_to` for a resource on `host` matches.
    pub fn matches(&self, host: &str, pay_to: Address) -> bool {
        match self {
            PayeeMatch::Address(address) => *address == pay_to,
            PayeeMatch::Domain(pattern) => domain_matches(pattern, host),
        }
    }
}

/// `pattern` is a host or `*.suffix` (which matches the suffix's subdomains, not the suffix).
pub fn domain_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

/// A per-call limit for one payee and/or asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub payee: Option<PayeeMatch>,
    pub asset: Option<Address>,
    pub max_per_call: Amount,
}

/// What a phase allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseRule {
    pub spend: bool,
    pub max_per_call: Option<Amount>,
}

/// The default of `validation.failures_before_pause`.
pub const FAILURES_BEFORE_PAUSE_DEFAULT: u32 = 3;
/// The default of `validation.cooldown`: 24 hours.
pub const PAUSE_COOLDOWN_SECONDS_DEFAULT: u64 = 24 * 60 * 60;

/// What a paid response must look like. After `failures_before_pause` failures in a row,
/// payments to the endpoint pause for `cooldown_seconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Accepted statuses; `None` accepts any 2xx.
    pub status: Option<Vec<u16>>,
    /// The content type must start with this (case-insensitive), e.g. `application/json`.
    pub content_type: Option<String>,
    /// The body must be JSON valid against this schema.
    pub json_schema: Option<serde_json::Value>,
    /// The body must be JSON valid against the schema the seller published for it, when the
    /// seller published one.
    pub seller_schema: bool,
    /// The body must be what its type says: the response's Content-Type must agree with the
    /// type the seller declared in its 402 (`mimeType`) when it declared one, and a JSON type
    /// (`application/json`, `*/*+json`) must parse as JSON.
    pub declared_type: bool,
    /// For `[[validators]]`: the endpoints these checks apply to (see [`Validation::applies_to`]);
    /// `None` for `[validation]`, which applies to every endpoint.
    pub endpoint: Option<String>,
    pub failures_before_pause: u32,
    pub cooldown_seconds: u64,
}

impl Validation {
    /// Why a response fails these rules, or `None` when it passes.
    pub fn check(&self, status: u16, content_type: Option<&str>, body: &[u8]) -> Option<String> {
        self.check_against(status, content_type, body, None)
    }

    /// Whether these checks apply to `endpoint` (as [`crate::endpoint_of`] writes it:
    /// `scheme://host[:port]/path`). A pattern with a scheme is a prefix of the whole endpoint;
    /// one without is matched against the endpoint without its scheme. Prefixes end at a path
    /// segment: `api.example.com/v1` matches `/v1` and `/v1/report`, not `/v10`.
    pub fn applies_to(&self, endpoint: &str) -> bool {
        let Some(pattern) = &self.endpoint else {
            return true;
        };
        let subject = if pattern.contains("://") {
            endpoint
        } else {
            endpoint
                .split_once("://")
                .map_or(endpoint, |(_, rest)| rest)
        };
        match subject.strip_prefix(pattern.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || pattern.ends_with('/'),
            None => false,
        }
    }

    /// [`Validation::check`], with the schema the seller published for the response (checked
    /// when `seller_schema` is on).
    pub fn check_against(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
        published: Option<&serde_json::Value>,
    ) -> Option<String> {
        self.check_response(&PaidResponse {
            status,
            content_type,
            body,
            published_schema: published,
            declared_type: None,
        })
    }

    /// Why a paid response fails these rules, or `None` when it passes.
    pub fn check_response(&self, response: &PaidResponse<'_>) -> Option<String> {
        let PaidResponse {
            status,
            content_type,
            body,
            published_schema,
            declared_type,
        } = *response;
        match &self.status {
            Some(allowed) if !allowed.contains(&status) => {
                return Some(format!("status {status} is not one of {allowed:?}"));
            }
            None if !(200..300).contains(&status) => {
                return Some(format!("status {status} is not a success"));
            }
            _ => {}
        }
        if let Some(expected) = &self.content_type {
            let actual = content_type.unwrap_or_default();
            if !actual
                .to_ascii_lowercase()
                .starts_with(&expected.to_ascii_lowercase())
            {
                return Some(format!("content type {actual:?} is not {expected:?}"));
            }
        }
        if self.declared_type
            && let Some(failure) = declared_type_failure(content_type, declared_type, body)
        {
            return Some(failure);
        }
        if let Some(schema) = &self.json_schema
            && let Some(failure) = schema_failure(schema, body, "the schema")
        {
            return Some(failure);
        }
        if self.seller_schema
            && let Some(schema) = published_schema
            && let Some(failure) = schema_failure(schema, body, "the seller's published schema")
        {
            return Some(failure);
        }
        None
    }
}

/// What is known about a paid response when it is validated.
#[derive(Debug, Clone, Copy)]
pub struct PaidResponse<'a> {
    pub status: u16,
    /// The response's `Content-Type` header.
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// The JSON Schema the seller published in its 402, if it published one.
    pub published_schema: Option<&'a serde_json::Value>,
    /// The content type the seller declared in its 402 (`mimeType`), if it declared one.
    pub declared_type: Option<&'a str>,
}

/// A media type without its parameters, lowercased: `application/json; charset=utf-8` →
/// `application/json`. `None` for an empty one.
fn media_type_essence(text: &str) -> Option<String> {
    let essence = text.split(';').next().unwrap_or_default().trim();
    (!essence.is_empty()).then(|| essence.to_ascii_lowercase())
}

/// Whether a media type essence is JSON: `application/json` or any `+json` type.
fn is_json_type(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

/// Whether `actual` is what `declared` allows: the same type, or any type under a wildcard
/// (`*/*`, `text/*`).
fn media_type_allows(declared: &str, actual: &str) -> bool {
    if declared == "*/*" || declared == actual {
        return true;
    }
    match declared.strip_suffix("/*") {
        Some(main) => actual.split('/').next() == Some(main),
        None => false,
    }
}

/// Why a body is not what its type says: the response's type disagrees with what the seller
/// declared in its 402, or a JSON type (the response's, else the declared one) does not parse.
fn declared_type_failure(
    content_type: Option<&str>,
    declared: Option<&str>,
    body: &[u8],
) -> Option<String> {
    let actual = content_type.and_then(media_type_essence);
    let declared = declared.and_then(media_type_essence);
    if let (Some(actual), Some(declared)) = (&actual, &declared)
        && !media_type_allows(declared, actual)
    {
        return Some(format!(
            "the seller declared {declared} in its 402 but answered {actual}"
        ));
    }
    let effective = actual.or(declared)?;
    if is_json_type(&effective)
        && let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(body)
    {
        return Some(format!(
            "the body is declared {effective} but is not JSON: {error}"
        ));
    }
    None
}

/// Most compiled JSON Schemas kept in a process (the cache is emptied when it is full).
pub const SCHEMA_CACHE_ENTRIES_MAX: usize = 256;

/// `schema` compiled, from a process-wide cache keyed by its JSON text: a policy's schema, and a
/// seller's published one, are the same on every paid response, and compiling one costs far
/// more than checking a body against it. Schemas that do not compile are not kept.
fn compiled_schema(schema: &serde_json::Value) -> Result<Arc<jsonschema::Validator>, String> {
    static COMPILED: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let cache = COMPILED.get_or_init(Mutex::default);
    if let Some(validator) = cache.lock().expect("schema cache lock").get(&key) {
        return Ok(validator.clone());
    }
    let validator = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    let mut cache = cache.lock().expect("schema cache lock");
    if cache.len() >= SCHEMA_CACHE_ENTRIES_MAX {
        cache.clear();
    }
    cache.insert(key, validator.clone());
    Ok(validator)
}

/// Why `body` is not JSON valid against `schema`, if it is not.
fn schema_failure(schema: &serde_json::Value, body: &[u8], which: &str) -> Option<String> {
    let document: serde_json::Value = match serde_json::from_slice(body) {
        Ok(document) => document,
        Err(error) => return Some(format!("the body is not JSON: {error}")),
    };
    let validator = match compiled_schema(schema) {
        Ok(validator) => validator,
        // A seller's broken schema cannot vouch for its response.
        Err(error) => return Some(format!("{which} is not a valid JSON Schema: {error}")),
    };
    validator.iter_errors(&document).next().map(|error| {
        format!(
            "the body does not match {which} at {}: {error}",
            error.instance_path
        )
    })
}

/// The default of `cache.ttl`: 24 hours.
pub const CACHE_TTL_SECONDS_DEFAULT: u64 = 24 * 60 * 60;

/// Who shares a cached paid response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheScope {
    Session,
    Wallet,
}

/// Opt-in: a paid GET response is kept and served again (without paying) for the same URL
/// within the scope, for `ttl_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    pub ttl_seconds: u64,
    pub scope: CacheScope,
}

/// A policy, checked and with amounts in atomic units.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Where it comes from (`file /etc/bursar/policy.toml`, `wallet wal_...`), for traces.
    pub source: String,
    pub max_per_call: Option<Amount>,
    /// At most this percentage (1..=100) of the session's budget per call.
    pub max_per_call_percent: Option<u8>,
    pub networks: Option<Vec<String>>,
    pub assets: Option<Vec<Address>>,
    pub allow_payees: Option<Vec<PayeeMatch>>,
    pub deny_payees: Vec<PayeeMatch>,
    pub limits: Vec<Limit>,
    pub windows: Vec<WindowCap>,
    pub max_calls_per_session: Option<u32>,
    /// `(count, within seconds)`.
    pub loop_limit: Option<(u32, u64)>,
    pub pin_terms: bool,
    /// After this many rejected payments in a row to one endpoint, back off (0 = never).
    pub backoff_after_rejections: u32,
    /// The first wait of a backoff (it doubles with each further rejection, up to
    /// [`crate::BACKOFF_MAX_MS`]).
    pub backoff_wait_seconds: u64,
    pub phases: BTreeMap<String, PhaseRule>,
    pub validation: Option<Validation>,
    /// `[[validators]]`: checks for particular endpoints.
    pub validators: Vec<Validation>,
    pub cache: Option<CacheRule>,
    /// `[reputation]`: what the endpoint's listing in a discovery catalog must show.
    pub reputation: Option<ReputationRule>,
    /// `[alerts] thresholds`: percentages (1..=100, ascending, no duplicates) of any budget at
    /// which an alert is raised; `None` when this policy does not say (see
    /// [`alert_thresholds`]).
    pub alert_thresholds: Option<Vec<u8>>,
}

/// `[reputation]`: the endpoint must be listed in `catalog` (a facilitator's base URL serving
/// `GET /discovery/resources`) under the terms being paid, with at least `min_settled` settled
/// payments from at least `min_distinct_payers` payers, and a failure rate (settlement failures
/// and payers' reports per payment) of at most `max_failure_rate_bps` basis points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReputationRule {
    pub catalog: url::Url,
    pub min_settled: u64,
    pub min_distinct_payers: u64,
    pub max_failure_rate_bps: Option<u64>,
}

/// The alert thresholds when no policy sets them: 50% and 75% of any budget.
pub const ALERT_THRESHOLDS_DEFAULT: [u8; 2] = [50, 75];

/// The alert thresholds in force under `policies`: every threshold any of them sets (ascending,
/// once each), or [`ALERT_THRESHOLDS_DEFAULT`] when none sets any. An empty `thresholds = []`
/// in every policy that has `[alerts]` turns alerts off.
pub fn alert_thresholds(policies: &[Policy]) -> Vec<u8> {
    let mut said = false;
    let mut thresholds: Vec<u8> = Vec::new();
    for policy in policies {
        if let Some(own) = &policy.alert_thresholds {
            said = true;
            thresholds.extend(own);
        }
    }
    if !said {
        return ALERT_THRESHOLDS_DEFAULT.to_vec();
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    thresholds
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d`.
pub fn parse_period(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    (WINDOW_SECONDS_MIN..=WINDOW_SECONDS_MAX)
        .contains(&seconds)
        .then_some(seconds)
}

fn bounded<T>(items: &[T], field: &str) -> Result<(), PolicyError> {
    if items.len() > POLICY_ENTRIES_MAX {
        return Err(invalid(
            field,
            format!("at most {POLICY_ENTRIES_MAX} entries"),
        ));
    }
    Ok(())
}

/// The default policy as a commented TOML document: what `bursar runtime` and `bursar dev`
/// apply to every session unless it is replaced or switched off, and what `bursar policy init`
/// writes out. Its comments justify each number.
pub const DEFAULT_POLICY_TOML: &str = include_str!("default_policy.toml");

/// The source name of the default policy in decision traces and pauses.
pub const DEFAULT_POLICY_SOURCE: &str = "default policy";

impl Policy {
    /// The default policy ([`DEFAULT_POLICY_TOML`]), with amounts in `unit`.
    pub fn default_policy(unit: &AssetUnit) -> Policy {
        Policy::parse(DEFAULT_POLICY_TOML, unit, DEFAULT_POLICY_SOURCE)
            .expect("the default policy is a valid policy (checked by the crate's tests)")
    }

    /// The rules every policy has unless it says otherwise (terms pinned per endpoint and
    /// session, backoff after three rejected payments in a row), and nothing else: what
    /// applies when the default policy is switched off and no policy file is given.
    pub fn defaults(source: &str) -> Policy {
        Policy {
            source: source.to_string(),
            max_per_call: None,
            max_per_call_percent: None,
            networks: None,
            assets: None,
            allow_payees: None,
            deny_payees: Vec::new(),
            limits: Vec::new(),
            windows: Vec::new(),
            max_calls_per_session: None,
            loop_limit: None,
            pin_terms: PIN_TERMS_DEFAULT,
            backoff_after_rejections: BACKOFF_AFTER_REJECTIONS_DEFAULT,
            backoff_wait_seconds: BACKOFF_WAIT_SECONDS_DEFAULT,
            phases: BTreeMap::new(),
            validation: None,
            validators: Vec::new(),
            cache: None,
            alert_thresholds: None,
            reputation: None,
        }
    }

    /// The response checks for a paid response from `endpoint`: `[validation]` and the
    /// `[[validators]]` whose endpoint matches.
    pub fn validations_for<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> impl Iterator<Item = &'a Validation> {
        self.validation
            .iter()
            .chain(self.validators.iter())
            .filter(move |validation| validation.applies_to(endpoint))
    }

    /// Reads a TOML policy whose amounts are in `unit` (the runtime's currency).
    pub fn parse(text: &str, unit: &AssetUnit, source: &str) -> Result<Policy, PolicyError> {
        if text.len() > POLICY_BYTES_MAX {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let document: Document =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.message().to_string()))?;
        let amount = |text: &str, field: &str| {
            unit.parse(text)
                .map_err(|e| invalid(field, format!("{text:?}: {e}")))
        };
        let address = |text: &str, field: &str| {
            text.parse::<Address>()
                .map_err(|_| invalid(field, format!("{text:?} is not an address")))
        };
        let payees = |items: &[String], field: &str| -> Result<Vec<PayeeMatch>, PolicyError> {
            bounded(items, field)?;
            items.iter().map(|i| PayeeMatch::parse(i, field)).collect()
        };

        let mut allow_payees: Option<Vec<PayeeMatch>> = None;
        if let Some(domains) = &document.payees.allow_domains {
            allow_payees
                .get_or_insert_default()
                .extend(payees(domains, "payees.allow_domains")?);
        }
        if let Some(addresses) = &document.payees.allow_addresses {
            allow_payees
                .get_or_insert_default()
                .extend(payees(addresses, "payees.allow_addresses")?);
        }
        let mut deny_payees = payees(&document.payees.deny_domains, "payees.deny_domains")?;
        deny_payees.extend(payees(
            &document.payees.deny_addresses,
            "payees.deny_addresses",
        )?);

        bounded(&document.limits, "limits")?;
        let limits = document
            .limits
            .iter()
            .map(|limit| {
                if limit.payee.is_none() && limit.asset.is_none() {
                    return Err(invalid("limits", "each limit names a payee or an asset"));
                }
                Ok(Limit {
                    payee: limit
                        .payee
                        .as_deref()
                        .map(|p| PayeeMatch::parse(p, "limits.payee"))
                        .transpose()?,
                    asset: limit
                        .asset
                        .as_deref()
                        .map(|a| address(a, "limits.asset"))
                        .transpose()?,
                    max_per_call: amount(&limit.max_per_call, "limits.max_per_call")?,
                })
            })
            .collect::<Result<_, _>>()?;

        bounded(&document.windows, "windows")?;
        let windows = document
            .windows
            .iter()
            .map(|window| {
                let scope = match window.scope.as_str() {
                    "wallet" => WindowScope::Wallet,
                    "agent" => WindowScope::Agent,
                    other => {
                        return Err(invalid(
                            "windows.scope",
                            format!("{other:?}: expected \"wallet\" or \"agent\""),
                        ));
                    }
                };
                let period_seconds = parse_period(&window.period).ok_or_else(|| {
                    invalid(
                        "windows.period",
                        format!(
                            "{:?}: expected a duration such as 30m, 1h or 1d (at most 366d)",
                            window.period
                        ),
                    )
                })?;
                Ok(WindowCap {
                    scope,
                    period_seconds,
                    max: amount(&window.max, "windows.max")?,
                    source: format!("{source}: {} per {}", window.max, window.period),
                })
            })
            .collect::<Result<_, _>>()?;

        let loop_limit = match (
            document.endpoints.loop_count,
            &document.endpoints.loop_window,
        ) {
            (None, None) => None,
            (Some(count), window) => {
                if count == 0 {
                    return Err(invalid("endpoints.loop_count", "must be at least 1"));
                }
                let seconds = match window {
                    Some(text) => parse_period(text).ok_or_else(|| {
                        invalid(
                            "endpoints.loop_window",
                            format!("{text:?} is not a duration"),
                        )
                    })?,
                    None => 60,
                };
                Some((count, seconds))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "endpoints.loop_window",
                    "needs endpoints.loop_count",
                ));
            }
        };

        bounded(&document.phases.keys().collect::<Vec<_>>(), "phases")?;
        let phases = document
            .phases
            .iter()
            .map(|(name, phase)| {
                Ok((
                    name.to_ascii_lowercase(),
                    PhaseRule {
                        spend: phase.spend.unwrap_or(true),
                        max_per_call: phase
                            .max_per_call
                            .as_deref()
                            .map(|m| amount(m, &format!("phases.{name}.max_per_call")))
                            .transpose()?,
                    },
                ))
            })
            .collect::<Result<_, PolicyError>>()?;

        let networks = match document.networks {
            Some(networks) => {
                bounded(&networks, "networks")?;
                for network in &networks {
                    bursar_protocol::Network::parse(network)
                        .map_err(|_| invalid("networks", format!("{network:?} is not CAIP-2")))?;
                }
                Some(networks)
            }
            None => None,
        };
        let assets = match document.assets {
            Some(assets) => {
                bounded(&assets, "assets")?;
                Some(
                    assets
                        .iter()
                        .map(|a| address(a, "assets"))
                        .collect::<Result<_, _>>()?,
                )
            }
            None => None,
        };
        let validation = match document.validation {
            None => None,
            Some(validation) => {
                if validation.endpoint.is_some() {
                    return Err(invalid(
                        "validation.endpoint",
                        "[validation] applies to every endpoint; use [[validators]] for one",
                    ));
                }
                Some(compile_validation(validation, "validation")?)
            }
        };
        bounded(&document.validators, "validators")?;
        let validators = document
            .validators
            .into_iter()
            .enumerate()
            .map(|(index, validator)| {
                let field = format!("validators[{index}]");
                match validator.endpoint.as_deref().map(str::trim) {
                    None | Some("") => Err(invalid(
                        format!("{field}.endpoint"),
                        "required: the host, host/path or URL prefix these checks apply to",
                    )),
                    Some(_) => compile_validation(validator, &field),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cache = match document.cache {
            None => None,
            Some(cache) => Some(CacheRule {
                ttl_seconds: match &cache.ttl {
                    Some(text) => parse_period(text).ok_or_else(|| {
                        invalid("cache.ttl", format!("{text:?} is not a duration"))
                    })?,
                    None => CACHE_TTL_SECONDS_DEFAULT,
                },
                scope: match cache.scope.as_deref() {
                    None | Some("session") => CacheScope::Session,
                    Some("wallet") => CacheScope::Wallet,
                    Some(other) => {
                        return Err(invalid(
                            "cache.scope",
                            format!("{other:?}: expected \"session\" or \"wallet\""),
                        ));
                    }
                },
            }),
        };
        let alert_thresholds = match document.alerts.and_then(|alerts| alerts.thresholds) {
            None => None,
            Some(thresholds) => {
                bounded(&thresholds, "alerts.thresholds")?;
                let mut percents = Vec::with_capacity(thresholds.len());
                for threshold in thresholds {
                    match u8::try_from(threshold) {
                        Ok(percent) if (1..=100).contains(&percent) => percents.push(percent),
                        _ => {
                            return Err(invalid(
                                "alerts.thresholds",
                                format!("{threshold} is not a whole percentage from 1 to 100"),
                            ));
                        }
                    }
                }
                percents.sort_unstable();
                percents.dedup();
                Some(percents)
            }
        };
        let reputation = match document.reputation {
            None => None,
            Some(rule) => {
                let catalog = url::Url::parse(&rule.catalog)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        invalid(
                            "reputation.catalog",
                            format!("{:?} is not an http(s) URL of a catalog", rule.catalog),
                        )
                    })?;
                let max_failure_rate_bps = match rule.max_failure_rate_percent {
                    None => None,
                    Some(percent) if (0..=100).contains(&percent) => Some(percent as u64 * 100),
                    Some(percent) => {
                        return Err(invalid(
                            "reputation.max_failure_rate_percent",
                            format!("{percent} is not a whole percentage from 0 to 100"),
                        ));
                    }
                };
                Some(ReputationRule {
                    catalog,
                    min_settled: rule.min_settled.unwrap_or(0),
                    min_distinct_payers: rule.min_distinct_payers.unwrap_or(0),
                    max_failure_rate_bps,
                })
            }
        };
        let max_per_call_percent = match document.max_per_call_percent {
            None => None,
            Some(percent) => match u8::try_from(percent) {
                Ok(percent) if (1..=100).contains(&percent) => Some(percent),
                _ => {
                    return Err(invalid(
                        "max_per_call_percent",
                        format!(
                            "{percent} is not a whole percentage of the session's budget from 1 to 100"
                        ),
                    ));
                }
            },
        };
        let backoff_wait_seconds = match &document.endpoints.backoff_wait {
            None => BACKOFF_WAIT_SECONDS_DEFAULT,
            Some(text) => parse_period(text)
                .filter(|seconds| *seconds <= BACKOFF_WAIT_SECONDS_MAX)
                .ok_or_else(|| {
                    invalid(
                        "endpoints.backoff_wait",
                        format!("{text:?}: expected a duration from 1s to 1h, such as 30s or 1m"),
                    )
                })?,
        };
        Ok(Policy {
            reputation,
            alert_thresholds,
            cache,
            validation,
            validators,
            source: source.to_string(),
            max_per_call: document
                .max_per_call
                .as_deref()
                .map(|m| amount(m, "max_per_call"))
                .transpose()?,
            max_per_call_percent,
            networks,
            assets,
            allow_payees,
            deny_payees,
            limits,
            windows,
            max_calls_per_session: document.endpoints.max_calls_per_session,
            loop_limit,
            pin_terms: document.endpoints.pin_terms.unwrap_or(PIN_TERMS_DEFAULT),
            backoff_after_rejections: document
                .endpoints
                .backoff_after_rejections
                .unwrap_or(BACKOFF_AFTER_REJECTIONS_DEFAULT),
            backoff_wait_seconds,
            phases,
        })
    }
}

/// Compiles a `[validation]` table or one `[[validators]]` entry (`field` names it in errors).
fn compile_validation(
    validation: ValidationDocument,
    field: &str,
) -> Result<Validation, PolicyError> {
    let json_schema = match validation.json_schema {
        Some(schema) => {
            let schema = serde_json::to_value(schema)
                .map_err(|e| invalid(format!("{field}.json_schema"), e.to_string()))?;
            jsonschema::validator_for(&schema)
                .map_err(|e| invalid(format!("{field}.json_schema"), e.to_string()))?;
            Some(schema)
        }
        None => None,
    };
    let cooldown_seconds = match &validation.cooldown {
        Some(text) => parse_period(text).ok_or_else(|| {
            invalid(
                format!("{field}.cooldown"),
                format!("{text:?} is not a duration"),
            )
        })?,
        None => PAUSE_COOLDOWN_SECONDS_DEFAULT,
    };
    let endpoint = match validation.endpoint {
        None => None,
        Some(pattern) => Some(endpoint_pattern(pattern.trim(), field)?),
    };
    Ok(Validation {
        status: validation.status,
        content_type: validation.content_type,
        json_schema,
        seller_schema: validation.seller_schema.unwrap_or(false),
        declared_type: validation.declared_type.unwrap_or(false),
        endpoint,
        failures_before_pause: validation
            .failures_before_pause
            .unwrap_or(FAILURES_BEFORE_PAUSE_DEFAULT)
            .max(1),
        cooldown_seconds,
    })
}

/// An endpoint pattern with its host lowercased (hosts compare case-insensitively, paths do not)
/// and no query or fragment.
fn endpoint_pattern(pattern: &str, field: &str) -> Result<String, PolicyError> {
    if pattern.contains(['?', '#', ' ']) {
        return Err(invalid(
            format!("{field}.endpoint"),
            format!("{pattern:?}: give a host, host/path or URL prefix without query or spaces"),
        ));
    }
    let (scheme, rest) = match pattern.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, pattern),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if host.is_empty() {
        return Err(invalid(
            format!("{field}.endpoint"),
            format!("{pattern:?} names no host"),
        ));
    }
    let host = host.to_ascii_lowercase();
    Ok(match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_compiled_once_and_a_broken_one_never_kept() {
        let schema = serde_json::json!({"type": "object", "required": ["compiled_once"]});
        let first = compiled_schema(&schema).unwrap();
        let second = compiled_schema(&schema.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(schema_failure(&schema, br#"{"compiled_once": 1}"#, "the schema").is_none());
        let failure = schema_failure(&schema, b"{}", "the schema").unwrap();
        assert!(
            failure.starts_with("the body does not match the schema"),
            "{failure}"
        );

        let broken = serde_json::json!({"type": "no such type"});
        for _ in 0..2 {
            let failure = schema_failure(&broken, b"{}", "the seller's published schema").unwrap();
            assert!(
                failure.starts_with("the seller's published schema is not a valid JSON Schema"),
                "{failure}"
            );
        }
    }
}
