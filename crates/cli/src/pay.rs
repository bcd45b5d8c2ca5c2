//! `bursar pay`, `bursar balance`, `bursar faucet`, and the demo paid API of `bursar dev`.

use std::path::PathBuf;
use std::sync::Arc;

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, Result};
use axum::Router;
use axum::http::Method;
use axum::routing::get;
use bursar_buyer::{BuyerError, PayingClient, RequestSpec};
use bursar_facilitator_client::{Facilitator, HttpFacilitator};
use bursar_protocol::{Amount, AssetUnit, Network};
use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
use serde_json::json;

use crate::devnet::{self, DevInfo};
use crate::exit;

/// A failure with a specific exit code.
#[derive(Debug)]
pub struct CommandFailure {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandFailure {}

pub fn failure(code: u8, message: String) -> anyhow::Error {
    anyhow::Error::new(CommandFailure { code, message })
}

/// A priced route of the demo API.
pub struct DemoRoute {
    pub path: &'static str,
    pub price_atomic: u64,
    pub description: &'static str,
    pub mime_type: &'static str,
}

/// The demo API's routes: prices in atomic USDC units (6 decimals).
pub const DEMO_ROUTES: &[DemoRoute] = &[
    DemoRoute {
        path: "/weather",
        price_atomic: 10_000,
        description: "Current weather for a city",
        mime_type: "application/json",
    },
    DemoRoute {
        path: "/joke",
        price_atomic: 1_000,
        description: "A programming joke",
        mime_type: "text/plain",
    },
    DemoRoute {
        path: "/report",
        price_atomic: 250_000,
        description: "A premium market report",
        mime_type: "application/json",
    },
];

/// What the demo paid API needs: where its facilitator is, which token it charges in, who is paid.
#[derive(Debug, Clone)]
pub struct DemoApiConfig {
    pub facilitator_url: String,
    /// Sent as `Authorization: Bearer <key>` to the facilitator, when it requires keys.
    pub facilitator_api_key: Option<String>,
    /// The API's own public base URL (the `resource` of its offers).
    pub api_url: String,
    pub chain_id: u64,
    pub token: Address,
    /// The token's EIP-712 domain name and version (sent in `extra`).
    pub token_name: String,
    pub token_version: String,
    pub pay_to: Address,
}

impl DemoApiConfig {
    /// The demo API of `bursar dev`.
    pub fn from_dev_info(info: &DevInfo) -> DemoApiConfig {
        DemoApiConfig {
            facilitator_url: info.facilitator_url.clone(),
            facilitator_api_key: None,
            api_url: info.api_url.clone(),
            chain_id: info.chain_id,
            token: info.token,
            token_name: info.token_name.clone(),
            token_version: info.token_version.clone(),
            pay_to: info.seller,
        }
    }
}

/// The demo paid API: three priced routes behind the paywall, verified and settled through the
/// facilitator's HTTP API, a free index at `/`, and three paid MCP tools at `/mcp` (streamable
/// HTTP) settled through the same facilitator.
pub fn demo_api(config: &DemoApiConfig) -> Result<Router> {
    let mut client = HttpFacilitator::new(&config.facilitator_url)?;
    if let Some(key) = &config.facilitator_api_key {
        client = client.with_api_key(key.clone());
    }
    let facilitator: Arc<dyn Facilitator> = Arc::new(client);
    let asset = Asset::new(
        config.token.to_checksum(None),
        config.token_name.clone(),
        config.token_version.clone(),
        AssetUnit::usdc(),
    );
    let network = Network::Eip155(config.chain_id);
    let mut paywall =
        PaywallLayer::builder(facilitator.clone()).public_base_url(config.api_url.clone());
    for route in DEMO_ROUTES {
        paywall = paywall.route(
            PricedRoute::new(Method::GET, route.path)
                .description(route.description)
                .mime_type(route.mime_type)
                .offer(Offer::exact(
                    network.clone(),
                    asset.clone(),
                    Amount::from(route.price_atomic),
                    config.pay_to.to_checksum(None),
                )),
        );
    }
    let paywall = paywall.build()?;
    let tools = crate::demo_tools::paid_demo_tools(
        facilitator,
        &network,
        &asset,
        &config.pay_to.to_checksum(None),
    )?;
    let public_host = url::Url::parse(&config.api_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string));
    let mcp = crate::demo_tools::mcp_service(tools, public_host);
    let index = DEMO_ROUTES
        .iter()
        .map(|r| {
            json!({"path": r.path, "price": AssetUnit::usdc().format(Amount::from(r.price_atomic)),
                   "description": r.description})
        })
        .collect::<Vec<_>>();
    Ok(Router::new()
        .route(
            "/weather",
            get(|| async {
                axum::Json(json!({"city": "Lisbon", "temperatureC": 21, "conditions": "sunny", "windKph": 12}))
            }),
        )
        .route("/joke", get(|| async { "There are 10 kinds of people: those who read binary and those who don't.\n" }))
        .route(
            "/report",
            get(|| async {
                axum::Json(json!({"title": "Stablecoin payments, weekly", "summary": "Volume up; fees flat.",
                                  "sections": ["volume", "fees", "outlook"]}))
            }),
        )
        .layer(paywall)
        .nest_service(crate::demo_tools::MCP_PATH, mcp)
        .route("/", get(move || async move { axum::Json(json!({"routes": index})) })))
}

#[derive(clap::Args)]
pub struct DemoApiArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:4021")]
    pub listen: std::net::SocketAddr,
    /// The facilitator that verifies and settles the payments (its base URL).
    #[arg(long)]
    pub facilitator_url: String,
    /// The facilitator API key (from `bursar keys create`), when the facilitator requires one.
    #[arg(long, env = "BURSAR_FACILITATOR_API_KEY", hide_env_values = true)]
    pub facilitator_api_key: Option<String>,
    /// The EVM chain id the offers name (network `eip155:<id>`).
    #[arg(long)]
    pub chain_id: u64,
    /// The EIP-3009 token to charge in (6 decimals).
    #[arg(long)]
    pub token: Address,
    /// The token's EIP-712 domain name, e.g. "USD Coin".
    #[arg(long)]
    pub token_name: String,
    /// The token's EIP-712 domain version.
    #[arg(long, default_value = "2")]
    pub token_version: String,
    /// Who is paid.
    #[arg(long)]
    pub pay_to: Address,
    /// The API's public base URL, if not http://<listen address>.
    #[arg(long)]
    pub public_url: Option<String>,
}

/// `bursar demo-api`: the demo paid API alone, against any facilitator, chain and token.
pub async fn serve_demo_api(args: DemoApiArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the demo API", args.listen))?;
    let api_url = match args.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let config = DemoApiConfig {
        facilitator_url: args.facilitator_url,
        facilitator_api_key: args.facilitator_api_key,
        api_url: api_url.clone(),
        chain_id: args.chain_id,
        token: args.token,
        token_name: args.token_name,
        token_version: args.token_version,
        pay_to: args.pay_to,
    };
    let app = demo_api(&config)?;
    // One line: whoever reads the address may stop reading after it.
    println!(
        "Bursar demo API on {api_url} for eip155:{} (token {}, paying {}, facilitator {}); paid MCP tools at {api_url}{} ({})",
        config.chain_id,
        config.token,
        config.pay_to,
        config.facilitator_url,
        crate::demo_tools::MCP_PATH,
        crate::demo_tools::DEMO_TOOLS
            .iter()
            .map(|tool| tool.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    crate::dev::serve(listener, app).await
}

#[derive(clap::Args)]
pub struct PayArgs {
    /// The URL to pay for.
    pub url: String,
    /// The most to pay for this request, e.g. 0.05 or "0.05 USDC".
    #[arg(long, default_value = "0.10")]
    pub max: String,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Request body (sent as is).
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Extra request headers, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Name of the environment variable holding the payer's private key (hex). Without it, the
    /// demo buyer of `bursar dev` (from --data-dir) pays.
    #[arg(long, default_value = "BURSAR_PRIVATE_KEY")]
    pub key_env: String,
    /// Pay with x402 v1 even when the seller offers v2.
    #[arg(long)]
    pub v1: bool,
    /// Print the result as JSON (body as text, receipt fields).
    #[arg(long)]
    pub json: bool,
    /// Pay through the agent runtime with this session token (bst_...) instead of a local key:
    /// the session's budget and grant apply.
    #[arg(long, env = "BURSAR_SESSION_TOKEN", hide_env_values = true)]
    pub session: Option<String>,
    /// The runtime's API for --session. Default: the one `bursar dev` runs.
    #[arg(long, env = "BURSAR_RUNTIME_URL")]
    pub runtime_url: Option<String>,
    /// With --session: label the payment with the agent's step, so the step can be marked
    /// failed and compensated later (`bursar session fail <id> --step S`).
    #[arg(long, requires = "session")]
    pub step: Option<String>,
    /// Call this tool of the MCP server at the URL (streamable HTTP) instead of fetching the
    /// URL, paying when the tool asks (x402 over MCP).
    #[arg(long, conflicts_with_all = ["session", "method", "data", "headers", "v1"])]
    pub tool: Option<String>,
    /// The tool's arguments, a JSON object (with --tool).
    #[arg(long, requires = "tool", default_value = "{}")]
    pub arguments: String,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
}

/// The request `bursar pay` makes: the URL, or (with --tool) a tool call of the MCP server there.
fn pay_request(args: &PayArgs) -> Result<RequestSpec> {
    if let Some(tool) = &args.tool {
        let server =
            url::Url::parse(&args.url).map_err(|e| failure(2, format!("{}: {e}", args.url)))?;
        let arguments = match serde_json::from_str(&args.arguments) {
            Ok(serde_json::Value::Object(arguments)) => arguments,
            _ => {
                return Err(failure(
                    2,
                    format!("--arguments {:?} is not a JSON object", args.arguments),
                ));
            }
        };
        let call = bursar_buyer::mcp::ToolCall {
            server,
            name: tool.clone(),
            arguments,
        };
        return RequestSpec::tool_call(call).map_err(|e| failure(2, e.to_string()));
    }
    let method: Method = args
        .method
        .parse()
        .map_err(|_| failure(2, format!("{:?} is not an HTTP method", args.method)))?;
    let mut request = RequestSpec::new(method, &args.url)
        .map_err(|e| failure(2, format!("{}: {e}", args.url)))?;
    for header in &args.headers {
        let (name, value) = parse_header(header)?;
        request = request
            .header(name, value)
            .map_err(|e| failure(2, format!("header {header:?}: {e}")))?;
    }
    if let Some(data) = &args.data {
        request = request.body(data.clone());
    }
    Ok(request)
}

fn payer_key(key_env: &str, data_dir: &std::path::Path) -> Result<PrivateKeySigner> {
    if let Ok(key) = std::env::var(key_env) {
        return key
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{key_env} does not hold a valid private key"));
    }
    let info = DevInfo::load(data_dir).with_context(|| {
        format!("no payer key: set {key_env}, or run `bursar dev` to use its demo buyer")
    })?;
    info.buyer_private_key
        .parse()
        .map_err(|_| anyhow::anyhow!("the dev info file holds an invalid buyer key"))
}

pub async fn pay(args: PayArgs) -> Result<()> {
    if let Some(token) = &args.session {
        let headers = args
            .headers
            .iter()
            .map(|header| {
                parse_header(header).map(|(name, value)| (name.to_string(), value.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let remote = crate::runtime::Remote {
            runtime_url: args.runtime_url.clone(),
            operator_key: None,
            data_dir: args.data_dir.clone(),
        };
        return crate::runtime::pay_through_session(
            &remote,
            token,
            &args.method,
            &args.url,
            &headers,
            args.data.as_deref(),
            args.step.as_deref(),
            args.json,
        )
        .await;
    }
    let usdc = AssetUnit::usdc();
    let max = usdc
        .parse(&args.max)
        .map_err(|e| failure(2, format!("--max {:?}: {e}", args.max)))?;
    let signer = payer_key(&args.key_env, &args.data_dir)?;
    let payer = signer.address();
    let mut client = PayingClient::new(reqwest::Client::new(), Arc::new(signer))
        .max_amount(max)
        .v1_only(args.v1);
    if let Ok(info) = DevInfo::load(&args.data_dir) {
        client = client.asset_unit(Network::Eip155(info.chain_id), info.token, usdc.clone());
    }
    let request = pay_request(&args)?;
    let response = match client.send(request).await {
        Ok(response) => response,
        Err(error @ BuyerError::NoPayableRequirement { .. }) => {
            return Err(failure(exit::NOT_PAYABLE, format!("not paid: {error}")));
        }
        Err(error @ BuyerError::PaymentRejected { .. }) => {
            return Err(failure(
                exit::PAYMENT_REJECTED,
                format!("payment rejected: {error}"),
            ));
        }
        Err(error) => {
            return Err(
                anyhow::Error::new(error).context(format!("request to {} failed", args.url))
            );
        }
    };
    print_outcome(&response, payer, &usdc, args.json)?;
    if !response.status.is_success() {
        return Err(failure(
            exit::FAILURE,
            format!("the server answered HTTP {}", response.status),
        ));
    }
    Ok(())
}

/// `"Name: value"` → (name, value), trimmed.
fn parse_header(header: &str) -> Result<(&str, &str)> {
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| failure(2, format!("header {header:?} must be \"Name: value\"")))?;
    Ok((name.trim(), value.trim()))
}

/// Prints the response body, then the payment receipt (JSON with `--json`, else on stderr).
fn print_outcome(
    response: &bursar_buyer::PaidResponse,
    payer: Address,
    usdc: &AssetUnit,
    json_output: bool,
) -> Result<()> {
    let body = String::from_utf8_lossy(&response.body).to_string();
    let receipt = response.payment.as_ref().map(|payment| {
        let settlement = payment.settlement.as_ref();
        json!({
            "paid": usdc.format(payment.authorization.value),
            "amount": payment.authorization.value,
            "payer": payer,
            "payee": payment.authorization.to.to_checksum(None),
            "asset": payment.requirement.asset,
            "network": payment.requirement.network.caip2(),
            "x402Version": payment.version.number(),
            "transaction": settlement.map(|s| s.transaction.clone()),
            "settled": settlement.map(|s| s.success),
        })
    });
    if json_output {
        let document =
            json!({"status": response.status.as_u16(), "body": body, "receipt": receipt});
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!("{body}");
        if !body.ends_with('\n') {
            println!();
        }
        match &receipt {
            Some(receipt) => {
                eprintln!("--- receipt (x402 v{}) ---", receipt["x402Version"]);
                eprintln!(
                    "paid         {}",
                    receipt["paid"].as_str().unwrap_or_default()
                );
                eprintln!("payer        {payer}");
                eprintln!(
                    "payee        {}",
                    receipt["payee"].as_str().unwrap_or_default()
                );
                eprintln!(
                    "network      {}",
                    receipt["network"].as_str().unwrap_or_default()
                );
                eprintln!(
                    "transaction  {}",
                    receipt["transaction"]
                        .as_str()
                        .unwrap_or("(no settlement header)")
                );
            }
            None => eprintln!(
                "--- not paid: the server did not ask for payment (HTTP {}) ---",
                response.status
            ),
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BalanceArgs {
    /// The address to look up.
    pub address: Address,
    /// A JSON-RPC node to read from. Without it, the running `bursar dev` is asked.
    #[arg(long, env = "BURSAR_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The token to read (required with --rpc-url).
    #[arg(long)]
    pub token: Option<Address>,
    /// Token decimals for display with --rpc-url.
    #[arg(long, default_value_t = 6)]
    pub decimals: u8,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
}

/// Sends a request to the running `bursar dev` and returns its JSON answer; `refused` names the
/// refusal in the error when the status is not a success.
async fn dev_call(
    info: &DevInfo,
    request: reqwest::RequestBuilder,
    refused: &str,
) -> Result<serde_json::Value> {
    let response = request.send().await.with_context(|| {
        format!(
            "bursar dev is not reachable at {}: is it running?",
            info.facilitator_url
        )
    })?;
    let status = response.status();
    let document: serde_json::Value = response
        .json()
        .await
        .context("bursar dev answered something unreadable")?;
    anyhow::ensure!(status.is_success(), "{refused}: {}", document["message"]);
    Ok(document)
}

pub async fn balance(args: BalanceArgs) -> Result<()> {
    if let Some(url) = &args.rpc_url {
        let token = args
            .token
            .ok_or_else(|| failure(2, "--token is required with --rpc-url".into()))?;
        let chain = bursar_chain_rpc::RpcChain::connect(url, None)
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let balance = bursar_chain::Token::new(chain, token)
            .balance_of(args.address)
            .await?;
        let unit = AssetUnit {
            symbol: "tokens".into(),
            decimals: args.decimals,
        };
        println!(
            "{}  {}  ({} atomic)",
            args.address,
            unit.format(Amount::from_atomic(balance)),
            balance
        );
        return Ok(());
    }
    let info = DevInfo::load(&args.data_dir)?;
    let url = format!("{}/dev/balance/{}", info.facilitator_url, args.address);
    let document = dev_call(&info, reqwest::Client::new().get(url), "bursar dev refused").await?;
    let atomic = Amount::parse_atomic(document["balance"].as_str().unwrap_or_default())
        .context("bursar dev returned a malformed balance")?;
    println!(
        "{}  {}  ({} atomic)",
        args.address,
        devnet::usdc().format(atomic),
        atomic
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct FaucetArgs {
    /// Who receives the dev USDC.
    pub address: Address,
    /// How much, e.g. 25 or "0.5 USDC".
    pub amount: String,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
}

pub async fn faucet(args: FaucetArgs) -> Result<()> {
    let usdc = devnet::usdc();
    let amount = usdc
        .parse(&args.amount)
        .map_err(|e| failure(2, format!("amount {:?}: {e}", args.amount)))?;
    let info = DevInfo::load(&args.data_dir)?;
    let url = format!("{}/dev/faucet", info.facilitator_url);
    let request = reqwest::Client::new()
        .post(&url)
        .json(&json!({"address": args.address, "amount": amount}));
    let document = dev_call(&info, request, "faucet refused").await?;
    let balance =
        Amount::parse_atomic(document["balance"].as_str().unwrap_or_default()).unwrap_or_default();
    println!(
        "sent {} to {} (transaction {})",
        usdc.format(amount),
        args.address,
        document["transaction"].as_str().unwrap_or_default()
    );
    println!("balance now {}", usdc.format(balance));
    Ok(())
}
