//! `bursar paywall`: sells the routes of any HTTP service without touching its code. A reverse
//! proxy in front of the service charges for the routes its configuration file prices
//! ([`bursar_seller::proxy::file`] describes the file) and forwards the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bursar_facilitator_client::{Facilitator, HttpFacilitator};
use bursar_seller::proxy::file::PaywallConfig;
use bursar_seller::proxy::{ProxyOptions, ReverseProxy};
use bursar_seller::{PathMatching, PaywallLayer};

use crate::pay::failure;

/// Exit code of a configuration that cannot be used.
const BAD_CONFIG: u8 = 2;

#[derive(clap::Args)]
pub struct PaywallArgs {
    /// The service to sell: its base URL (http://host:port), which the configuration file may
    /// give instead.
    #[arg(long)]
    pub upstream: Option<String>,
    /// The configuration file: priced routes, their prices, the token and who is paid.
    #[arg(long)]
    pub config: PathBuf,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:4022")]
    pub listen: SocketAddr,
    /// The facilitator that verifies and settles the payments (its base URL), unless the
    /// configuration file names it.
    #[arg(long)]
    pub facilitator_url: Option<String>,
    /// The facilitator API key (from `bursar keys create`), when the facilitator requires one.
    #[arg(long, env = "BURSAR_FACILITATOR_API_KEY", hide_env_values = true)]
    pub facilitator_api_key: Option<String>,
    /// The paywall's public base URL, if not http://<listen address> (the resource URLs of its
    /// offers start with it).
    #[arg(long)]
    pub public_url: Option<String>,
}

/// `bursar paywall`: the proxy, until Ctrl-C or SIGTERM.
pub async fn serve(args: PaywallArgs) -> Result<()> {
    let shown = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .map_err(|error| failure(BAD_CONFIG, format!("cannot read {shown}: {error}")))?;
    let config = PaywallConfig::from_toml(&text)
        .map_err(|error| failure(BAD_CONFIG, format!("{shown}: {error}")))?;
    let upstream = args.upstream.or(config.upstream.clone()).ok_or_else(|| {
        failure(
            BAD_CONFIG,
            format!("no upstream: pass --upstream or set upstream in {shown}"),
        )
    })?;
    let facilitator_url = args
        .facilitator_url
        .or(config.facilitator_url.clone())
        .ok_or_else(|| {
            failure(
                BAD_CONFIG,
                format!("no facilitator: pass --facilitator-url or set facilitator_url in {shown}"),
            )
        })?;
    if config.routes.is_empty() {
        return Err(failure(
            BAD_CONFIG,
            format!("{shown} prices no route: add a [[route]]"),
        ));
    }
    let invalid = |error: &dyn std::fmt::Display| failure(BAD_CONFIG, error.to_string());
    let mut client = HttpFacilitator::new(&facilitator_url)
        .map_err(|e| invalid(&format!("facilitator {facilitator_url:?}: {e}")))?;
    if let Some(key) = args.facilitator_api_key {
        client = client.with_api_key(key);
    }
    let facilitator: Arc<dyn Facilitator> = Arc::new(client);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the paywall", args.listen))?;
    let public_url = match args.public_url.or(config.public_url.clone()) {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let forwarded_proto = if public_url.starts_with("https://") {
        "https"
    } else {
        "http"
    };

    let mut paywall = PaywallLayer::builder(facilitator)
        .public_base_url(public_url.clone())
        .path_matching(PathMatching::Loose);
    for route in &config.routes {
        paywall = paywall.route(route.clone());
    }
    let paywall = paywall.build().map_err(|e| invalid(&e))?;
    let options = ProxyOptions {
        connect_timeout: config.connect_timeout,
        response_timeout: config.response_timeout,
        forwarded_proto: forwarded_proto.into(),
        deny_unpriced: config.deny_unpriced,
        free_routes: config.free_routes.clone(),
    };
    let proxy = ReverseProxy::new(&upstream, options).map_err(|e| invalid(&e))?;
    let upstream = proxy.upstream().to_string();
    let app = proxy.into_router(paywall);

    // One line: whoever reads the address may stop reading after it.
    println!(
        "Bursar paywall on {public_url} for {upstream} ({} priced routes, facilitator {facilitator_url}; unpriced requests {})",
        config.routes.len(),
        if config.deny_unpriced {
            "refused unless free"
        } else {
            "forwarded free"
        }
    );
    for route in &config.routes {
        for offer in route.offers() {
            tracing::info!(
                method = %route.method(),
                path = route.path(),
                price = %offer.price(),
                amount = %offer.amount,
                network = %offer.network,
                asset = %offer.asset.address,
                pay_to = %offer.pay_to,
                "priced route"
            );
        }
    }
    for route in &config.free_routes {
        let methods = if route.methods().is_empty() {
            "any".to_string()
        } else {
            route
                .methods()
                .iter()
                .map(|method| method.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        tracing::info!(%methods, path = route.path(), "free route");
    }
    // TCP_NODELAY on every connection, as the other servers; the client's address for
    // X-Forwarded-For.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(crate::dev::shutdown_signal())
    .await?;
    Ok(())
}
