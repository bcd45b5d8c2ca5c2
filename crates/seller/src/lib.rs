//! # bursar-seller
//!
//! The x402 paywall for axum 0.8: a tower [`Layer`](tower::Layer) that charges for priced routes.
//!
//! ```text
//! request ──► PaywallService ──► (verify via Facilitator) ──► inner handler ──► (settle) ──► response
//! ```
//!
//! Layering: `bursar-protocol` (documents) → `bursar-facilitator-client` (the [`Facilitator`]
//! seam) → this crate. The paywall never talks to a chain itself.
//!
//! For a request to a priced route (matched by method and path pattern, such as `/weather` or
//! `/users/:id`; see [`PricedRoute`] and [`pattern`]):
//! 1. No payment header: answer `402` with both x402 forms at once, the v2 `PAYMENT-REQUIRED`
//!    header and the v1 JSON body `{x402Version: 1, error, accepts}`.
//! 2. `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1): decode it and pick the offered requirement it
//!    pays (v2: the one equal to `accepted`; v1: by scheme and network). Anything unreadable or not
//!    offered is a `402` that says what was wrong.
//! 3. Verify through the facilitator: invalid is a `402` with the reason; an unreachable
//!    facilitator is a `502` and nothing runs.
//! 4. By default, run the handler, and settle only if it answered 2xx; the settlement goes back in
//!    `PAYMENT-RESPONSE` (v2) or `X-PAYMENT-RESPONSE` (v1). A failed settlement is a `402` and the
//!    handler's body is withheld. With [`PaywallBuilder::settle_before_handler`], settle first and
//!    run the handler only once paid.
//!
//! The handler finds what was paid in the [`PaymentInfo`] request extension. Requests to routes
//! that are not priced pass through untouched.
//!
//! The 402's resource URL is the concrete URL requested. In v2 the route publishes itself in the
//! `bazaar` extension: its method, input and output schemas, and for a pattern route its
//! `routeTemplate` (`/users/:id`) and the requested path's parameters.
//!
//! MCP tools are priced the same way with [`PaidTools`], which wraps any rmcp server (see
//! [`mcp`]).
//!
//! Any HTTP service, in any language, can be sold without changing it: [`proxy::ReverseProxy`]
//! forwards requests to it behind the paywall (streamed bodies, no payment headers upstream,
//! settlement only on its 2xx), configured in code or by a `paywall.toml`
//! ([`proxy::file`](mod@proxy::file)); `bursar paywall` runs it.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use axum::{Router, routing::get, http::Method};
//! # use bursar_protocol::{Amount, Network};
//! # use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
//! # fn demo(facilitator: Arc<dyn bursar_facilitator_client::Facilitator>) -> Result<(), bursar_seller::SellerError> {
//! let paywall = PaywallLayer::builder(facilitator)
//!     .public_base_url("https://api.example.com")
//!     .route(
//!         PricedRoute::new(Method::GET, "/weather")
//!             .description("Current weather")
//!             .mime_type("application/json")
//!             .offer(Offer::exact(
//!                 Network::Eip155(84_532),
//!                 Asset::usdc_base_sepolia(),
//!                 Amount::from(10_000u64), // 0.01 USDC
//!                 "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
//!             )),
//!     )
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/weather", get(|| async { "sunny" }))
//!     .layer(paywall);
//! # Ok(()) }
//! ```

mod config;
pub mod mcp;
pub mod pattern;
pub mod proxy;
mod service;

pub use bursar_facilitator_client::Facilitator;
pub use config::{
    Asset, DEFAULT_MAX_TIMEOUT_SECONDS, Offer, PaywallBuilder, PricedRoute, REQUEST_BODY_BYTES_MAX,
};
pub use mcp::{PaidTools, PricedTool};
pub use pattern::PathMatching;
pub use service::{PaymentInfo, PaywallLayer, PaywallService};

/// Why a paywall could not be built. Requests never fail with this type: every request problem is
/// an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SellerError {
    #[error("invalid priced route {route}: {message}")]
    InvalidRoute { route: String, message: String },
    #[error("invalid public base url {url:?}: {message}")]
    InvalidBaseUrl { url: String, message: String },
    #[error("invalid upstream {url:?}: {message}")]
    InvalidUpstream { url: String, message: String },
}
