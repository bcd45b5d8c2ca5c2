//! Paywall configuration: assets, offers, priced routes and the builder.

use std::sync::Arc;

use axum::http::Method;
use bursar_facilitator_client::Facilitator;
use bursar_protocol::exact_evm::SCHEME_EXACT;
use bursar_protocol::{Amount, AssetUnit, ChainAddress, Network, PaymentRequirements};
use serde_json::{Value, json};

use crate::SellerError;
use crate::pattern::{PathMatching, RoutePattern};
use crate::service::{Paywall, PaywallLayer, PricedRouteSpec};

/// Default `maxTimeoutSeconds` of an offer: how long a buyer's authorization stays valid.
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 60;
/// Default largest request body forwarded to a priced handler. A request that declares a larger
/// `Content-Length` is refused with `413` before any payment is verified; a body that turns out
/// larger while streaming fails the handler's body read (so nothing is settled).
pub const REQUEST_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

/// A token a seller accepts: its address, its EIP-712 domain name and version (sent to buyers in
/// `extra` so they can sign), and its display unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub address: ChainAddress,
    pub eip712_name: String,
    pub eip712_version: String,
    /// Symbol and decimals, for logs and messages only.
    pub unit: AssetUnit,
}

impl Asset {
    pub fn new(
        address: impl Into<ChainAddress>,
        eip712_name: impl Into<String>,
        eip712_version: impl Into<String>,
        unit: AssetUnit,
    ) -> Self {
        Asset {
            address: address.into(),
            eip712_name: eip712_name.into(),
            eip712_version: eip712_version.into(),
            unit,
        }
    }

    /// USDC on Base mainnet (`eip155:8453`).
    pub fn usdc_base() -> Self {
        Asset::new(
            "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "USD Coin",
            "2",
            AssetUnit::usdc(),
        )
    }

    /// USDC on Base Sepolia (`eip155:84532`).
    pub fn usdc_base_sepolia() -> Self {
        Asset::new(
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            "USDC",
            "2",
            AssetUnit::usdc(),
        )
    }
}

/// One way to pay for a route: the `exact` scheme on an EVM network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub network: Network,
    pub asset: Asset,
    pub amount: Amount,
    pub pay_to: ChainAddress,
    pub max_timeout_seconds: u64,
}

impl Offer {
    /// An `exact` offer of `amount` (atomic units of `asset`) paid to `pay_to` on `network`.
    pub fn exact(
        network: Network,
        asset: Asset,
        amount: Amount,
        pay_to: impl Into<ChainAddress>,
    ) -> Self {
        Offer {
            network,
            asset,
            amount,
            pay_to: pay_to.into(),
            max_timeout_seconds: DEFAULT_MAX_TIMEOUT_SECONDS,
        }
    }

    pub fn max_timeout_seconds(mut self, seconds: u64) -> Self {
        self.max_timeout_seconds = seconds;
        self
    }

    /// The requirement this offer is advertised as.
    pub fn requirement(&self) -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME_EXACT.to_string(),
            network: self.network.clone(),
            amount: self.amount,
            asset: self.asset.address.clone(),
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: self.max_timeout_seconds,
            extra: Some(json!({
                "name": self.asset.eip712_name,
                "version": self.asset.eip712_version,
            })),
        }
    }

    /// The price for people, for example `0.01 USDC`.
    pub fn price(&self) -> String {
        self.asset.unit.format(self.amount)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.network.chain_id().is_none() {
            return Err(format!(
                "network {} is not an EVM (eip155) network",
                self.network
            ));
        }
        if self.asset.address.evm().is_none() {
            return Err(format!(
                "asset {:?} is not an EVM address",
                self.asset.address
            ));
        }
        if self.pay_to.evm().is_none() {
            return Err(format!("payTo {:?} is not an EVM address", self.pay_to));
        }
        if self.asset.eip712_name.is_empty() || self.asset.eip712_version.is_empty() {
            return Err("asset EIP-712 name and version must not be empty".into());
        }
        if self.max_timeout_seconds == 0 {
            return Err("maxTimeoutSeconds must be positive".into());
        }
        Ok(())
    }
}

/// A priced route: a method and a path pattern, what it sells, and the offers that pay for it.
///
/// The request's method must equal `method` (`HEAD` does not match a `GET` route) and its path,
/// without the query, must match the pattern: a path such as `/weather`, or one with parameters
/// such as `/users/:id` or `/files/*path` (see [`crate::pattern`] for the rules). Segments are
/// compared percent-decoded; by default there is no case or trailing-slash folding (see
/// [`PaywallBuilder::path_matching`]). When several routes match, the most specific prices the
/// request: at the first segment where they differ, a literal beats a parameter, which beats a
/// rest parameter.
///
/// The resource URL of a 402 is the concrete URL requested; a route with parameters also
/// publishes its pattern as `routeTemplate` in the v2 `bazaar` extension, so discovery catalogs
/// list the route once.
#[derive(Debug, Clone)]
pub struct PricedRoute {
    method: Method,
    path: String,
    description: Option<String>,
    mime_type: Option<String>,
    input_schema: Option<Value>,
    output_schema: Option<Value>,
    offers: Vec<Offer>,
}

impl PricedRoute {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        PricedRoute {
            method,
            path: path.into(),
            description: None,
            mime_type: None,
            input_schema: None,
            output_schema: None,
            offers: Vec::new(),
        }
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.mime_type = Some(mime_type.into());
        self
    }

    /// The JSON Schema of the request's input, published in v2's `bazaar` extension: of the query
    /// parameters for methods without a body, of the JSON body for `POST`, `PUT` and `PATCH`.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(schema);
        self
    }

    /// The JSON Schema of the response body, advertised in v1 requirements' `outputSchema` and in
    /// v2's `bazaar` extension; buyers may validate what they paid for against it.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Adds a way to pay. A route needs at least one; buyers pick one of them.
    pub fn offer(mut self, offer: Offer) -> Self {
        self.offers.push(offer);
        self
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path pattern, as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Builds a [`PaywallLayer`].
pub struct PaywallBuilder {
    facilitator: Arc<dyn Facilitator>,
    routes: Vec<PricedRoute>,
    public_base_url: Option<String>,
    settle_before_handler: bool,
    request_body_bytes_max: usize,
    path_matching: PathMatching,
}

impl std::fmt::Debug for PaywallBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallBuilder")
            .field("routes", &self.routes)
            .field("public_base_url", &self.public_base_url)
            .field("settle_before_handler", &self.settle_before_handler)
            .field("path_matching", &self.path_matching)
            .finish_non_exhaustive()
    }
}

impl PaywallBuilder {
    pub(crate) fn new(facilitator: Arc<dyn Facilitator>) -> Self {
        PaywallBuilder {
            facilitator,
            routes: Vec::new(),
            public_base_url: None,
            settle_before_handler: false,
            request_body_bytes_max: REQUEST_BODY_BYTES_MAX,
            path_matching: PathMatching::Strict,
        }
    }

    pub fn route(mut self, route: PricedRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// The URL the service is reached at from outside, such as `https://api.example.com` or
    /// `https://example.com/api`. A resource's URL is this base followed by the request's path and
    /// query. Without it, the URL is `http://{Host header}{path and query}`.
    pub fn public_base_url(mut self, url: impl Into<String>) -> Self {
        self.public_base_url = Some(url.into());
        self
    }

    /// Settle before running the handler (and run it only when settlement succeeded), instead of
    /// the default: run the handler and settle only if it answered 2xx.
    pub fn settle_before_handler(mut self, enabled: bool) -> Self {
        self.settle_before_handler = enabled;
        self
    }

    /// Overrides [`REQUEST_BODY_BYTES_MAX`] for priced routes.
    pub fn request_body_bytes_max(mut self, bytes: usize) -> Self {
        self.request_body_bytes_max = bytes;
        self
    }

    /// How literally request paths must equal the routes' patterns: [`PathMatching::Strict`] by
    /// default; [`PathMatching::Loose`] for a paywall in front of a server whose routing folds
    /// case or trailing slashes.
    pub fn path_matching(mut self, matching: PathMatching) -> Self {
        self.path_matching = matching;
        self
    }

    pub fn build(self) -> Result<PaywallLayer, SellerError> {
        let public_base_url = match self.public_base_url {
            Some(url) => Some(validate_base_url(&url)?),
            None => None,
        };
        let mut routes: Vec<PricedRouteSpec> = Vec::with_capacity(self.routes.len());
        for route in self.routes {
            let invalid = |message: String| SellerError::InvalidRoute {
                route: route.name(),
                message,
            };
            let pattern = RoutePattern::parse(&route.path).map_err(invalid)?;
            if let Some(twin) = routes
                .iter()
                .find(|other| other.method == route.method && other.pattern.same_shape(&pattern))
            {
                return Err(invalid(if twin.pattern.as_str() == route.path {
                    "route is priced twice".into()
                } else {
                    format!(
                        "route matches the same paths as {} {}",
                        twin.method,
                        twin.pattern.as_str()
                    )
                }));
            }
            if route.offers.is_empty() {
                return Err(invalid("route has no offers".into()));
            }
            if route.offers.len() > bursar_protocol::types::ACCEPTS_MAX {
                return Err(invalid(format!(
                    "more than {} offers",
                    bursar_protocol::types::ACCEPTS_MAX
                )));
            }
            for offer in &route.offers {
                offer.validate().map_err(invalid)?;
            }
            routes.push(PricedRouteSpec {
                method: route.method,
                pattern,
                description: route.description,
                mime_type: route.mime_type,
                input_schema: route.input_schema,
                output_schema: route.output_schema,
                requirements: route.offers.iter().map(Offer::requirement).collect(),
                offers: route.offers,
            });
        }
        // The most specific pattern first: the first route that matches prices the request.
        routes.sort_by(|a, b| a.pattern.specificity_cmp(&b.pattern));
        Ok(PaywallLayer::new(Paywall {
            facilitator: self.facilitator,
            routes,
            public_base_url,
            settle_before_handler: self.settle_before_handler,
            request_body_bytes_max: self.request_body_bytes_max,
            path_matching: self.path_matching,
        }))
    }
}

fn validate_base_url(url: &str) -> Result<String, SellerError> {
    let invalid = |message: String| SellerError::InvalidBaseUrl {
        url: url.to_string(),
        message,
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("scheme must be http or https".into()));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not carry a query or fragment".into()));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        assert_eq!(
            validate_base_url("https://api.example.com/").unwrap(),
            "https://api.example.com"
        );
        assert_eq!(
            validate_base_url("https://example.com/api/").unwrap(),
            "https://example.com/api"
        );
        assert!(validate_base_url("example.com").is_err());
        assert!(validate_base_url("ftp://example.com").is_err());
        assert!(validate_base_url("https://example.com/?x=1").is_err());
    }

    #[test]
    fn offers_advertise_the_domain_in_extra() {
        let offer = Offer::exact(
            Network::Eip155(8453),
            Asset::usdc_base(),
            Amount::from(10_000u64),
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        );
        let requirement = offer.requirement();
        assert_eq!(requirement.eip712_name_version(), Some(("USD Coin", "2")));
        assert_eq!(requirement.max_timeout_seconds, DEFAULT_MAX_TIMEOUT_SECONDS);
        assert_eq!(offer.price(), "0.01 USDC");
        assert!(offer.validate().is_ok());
        assert!(offer.clone().max_timeout_seconds(0).validate().is_err());
        let mut bad = offer;
        bad.pay_to = "alice".into();
        assert!(bad.validate().is_err());
    }
}
