//! `bursar dev` and `bursar facilitator`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bursar_chain::{Account, EvmChain};
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator, RecoveryOutcome};
use bursar_protocol::Amount;
use serde::Deserialize;
use serde_json::json;

use crate::devnet::{self, DevInfo, DevNetwork};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the chain and dev info live.
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port of the facilitator (and the dev faucet/balance API).
    #[arg(long, default_value_t = 4020)]
    pub facilitator_port: u16,
    /// Port of the demo paid API.
    #[arg(long, default_value_t = 4021)]
    pub api_port: u16,
    /// The facilitator's settlement ledger, such as postgres://user@host/db.
    /// Default: a SQLite file, <data-dir>/facilitator.sqlite.
    #[arg(long, env = "BURSAR_LEDGER_URL")]
    pub ledger_url: Option<String>,
    /// Port of the agent payments runtime.
    #[arg(long, default_value_t = 4030)]
    pub runtime_port: u16,
    /// The runtime's database, such as postgres://user@host/db.
    /// Default: a SQLite file, <data-dir>/runtime.sqlite.
    #[arg(long, env = "BURSAR_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Settle in batches: many authorizations per transaction through a BursarBatchSettler,
    /// deployed on the dev chain at start (as `bursar facilitator --batch` does).
    #[arg(long)]
    pub batch: bool,
    /// The runtime's policy: the default policy unless --policy FILE replaces it or
    /// --no-default-policy switches it off.
    #[command(flatten)]
    pub policy: crate::runtime::PolicyFlags,
    #[command(flatten)]
    pub catalog: CatalogFlags,
}

/// The discovery catalog a facilitator keeps (`GET /discovery/resources`), in its ledger's
/// database.
#[derive(clap::Args, Debug, Clone)]
pub struct CatalogFlags {
    /// Keep no discovery catalog (by default the facilitator lists the resources whose payments
    /// it verifies and settles, when their sellers publish the bazaar extension).
    #[arg(long)]
    pub no_catalog: bool,
    /// Days a listing stays in the catalog without being paid for again.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub catalog_ttl_days: u64,
    /// Most resources one payee may have listed (more are not listed; their payments are not
    /// affected).
    #[arg(long, default_value_t = 1_000)]
    pub catalog_listings_per_payee: u64,
}

impl CatalogFlags {
    /// `facilitator` with its catalog in the database at `url`, unless switched off.
    pub async fn attach(
        &self,
        facilitator: LocalFacilitator,
        url: &str,
    ) -> Result<LocalFacilitator> {
        if self.no_catalog {
            return Ok(facilitator);
        }
        let store = bursar_store::open_catalog_store(url)
            .await
            .context("cannot open the discovery catalog")?;
        let catalog = bursar_catalog::Catalog::new(
            store,
            bursar_catalog::CatalogConfig {
                ttl: std::time::Duration::from_secs(self.catalog_ttl_days * 24 * 3600),
                limits: bursar_store::catalog::CatalogLimits {
                    listings_per_payee_max: self.catalog_listings_per_payee,
                    ..Default::default()
                },
            },
        );
        catalog.spawn_pruning(bursar_catalog::PRUNE_INTERVAL_DEFAULT);
        Ok(facilitator.with_catalog(catalog))
    }
}

#[derive(clap::Args)]
pub struct FacilitatorArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:4020")]
    pub listen: SocketAddr,
    /// A JSON-RPC node to settle on. Without it, the embedded dev chain in --data-dir is used.
    #[arg(long, env = "BURSAR_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The chain id the node must report.
    #[arg(long)]
    pub chain_id: Option<u64>,
    /// Name of the environment variable holding the settlement account's private key (hex).
    /// Required with --rpc-url; the embedded dev chain uses its dev facilitator key.
    #[arg(long, default_value = "BURSAR_FACILITATOR_KEY")]
    pub key_env: String,
    /// Only settle these token addresses (repeatable). Default: any EIP-3009 token.
    #[arg(long = "asset")]
    pub assets: Vec<Address>,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
    /// The settlement ledger, such as postgres://user@host/db (several facilitators may share
    /// one). Default: a SQLite file, <data-dir>/facilitator.sqlite.
    #[arg(long, env = "BURSAR_LEDGER_URL")]
    pub ledger_url: Option<String>,
    /// Let callers without an API key use /verify (limited per client IP).
    #[arg(long)]
    pub open_verify: bool,
    /// Let callers without an API key use /settle (limited per client IP); it spends this
    /// facilitator's gas.
    #[arg(long)]
    pub open_settle: bool,
    /// Share rate limits with other facilitators through Redis, such as redis://127.0.0.1:6379.
    /// Default: limits in this process's memory. When Redis fails, /settle is refused (503).
    #[arg(long, env = "BURSAR_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Do not serve GET /metrics (Prometheus). By default it is served on --listen, without an
    /// API key.
    #[arg(long, conflicts_with = "metrics_listen")]
    pub no_metrics: bool,
    /// Serve GET /metrics on this address (a private interface, say) instead of --listen.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Settle in batches: many authorizations per transaction through a BursarBatchSettler.
    #[arg(long)]
    pub batch: bool,
    /// The BursarBatchSettler contract for --batch. Required with --rpc-url; on the embedded dev
    /// chain one is deployed at start when omitted.
    #[arg(long, requires = "batch")]
    pub batch_contract: Option<Address>,
    /// Send a batch once it holds this many settlements (1 to 256).
    #[arg(long, default_value_t = bursar_facilitator::batch::BATCH_ITEMS_MAX_DEFAULT)]
    pub batch_items_max: usize,
    /// Send a batch at the latest this many milliseconds after its first settlement (at most 5000).
    #[arg(long, default_value_t = 25)]
    pub batch_wait_ms: u64,
    /// Simulate each settlement on its own before it joins a batch (one more eth_call each;
    /// the batch contract already isolates an item that reverts).
    #[arg(long, requires = "batch")]
    pub batch_simulate: bool,
    /// Sender accounts (each with its own nonces). On the embedded dev chain the extra ones are
    /// derived from public labels and funded; with --rpc-url they are read from --sender-keys-file.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// A file of extra sender private keys for --rpc-url, hex, one per line (never on the
    /// command line, where other users could read them).
    #[arg(long)]
    pub sender_keys_file: Option<PathBuf>,
    /// Blocks (the settlement's own included) a settlement must be under before it is answered
    /// confirmed; 1 answers once it is mined (at most 64).
    #[arg(long, default_value_t = 1)]
    pub confirmations: u64,
    /// This facilitator's name in the settlement ledger, the same across restarts and unique
    /// among the processes sharing the ledger. Default: one kept in <data-dir>/facilitator.instance
    /// (give each process its own --data-dir or --instance). After a restart, what the previous
    /// run left unfinished is recovered at once.
    #[arg(long, env = "BURSAR_INSTANCE")]
    pub instance: Option<String>,
    /// Seconds a settlement claim nothing was broadcast for stays its holder's before a retry
    /// (or recovery) may take it over: covers verifying, simulating and recording a broadcast.
    #[arg(long, default_value_t = bursar_facilitator::CLAIM_HOLD_DEFAULT.as_secs())]
    pub claim_hold_secs: u64,
    #[command(flatten)]
    pub catalog: CatalogFlags,
}

/// The instance name file in the data dir.
pub const INSTANCE_FILE_NAME: &str = "facilitator.instance";
/// The longest instance name accepted.
pub const INSTANCE_NAME_CHARS_MAX: usize = 64;

/// The facilitator's instance name: `given`, or the one kept in `data_dir` (created on first
/// use).
pub fn instance_name(given: Option<&str>, data_dir: &Path) -> Result<String> {
    let valid = |name: &str| {
        !name.is_empty()
            && name.len() <= INSTANCE_NAME_CHARS_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if let Some(name) = given {
        anyhow::ensure!(
            valid(name),
            "--instance must be 1 to {INSTANCE_NAME_CHARS_MAX} characters from A-Z a-z 0-9 . _ -"
        );
        return Ok(name.to_string());
    }
    let path = data_dir.join(INSTANCE_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            anyhow::ensure!(
                valid(name),
                "{} does not hold a valid instance name; delete it to make a new one",
                path.display()
            );
            Ok(name.to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let name = format!("f{:016x}", rand::random::<u64>());
            std::fs::write(&path, format!("{name}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(name)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The prefix of the facilitator's rate-limit keys in Redis.
pub const REDIS_KEY_PREFIX: &str = "bursar:ratelimit:";

/// The settlement ledger's file name in the data dir.
pub const LEDGER_FILE_NAME: &str = "facilitator.sqlite";

/// The ledger's URL: `url`, or the SQLite file in `data_dir` (created).
pub fn ledger_url(url: Option<&str>, data_dir: &Path) -> Result<String> {
    match url {
        Some(url) => Ok(url.to_string()),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            Ok(bursar_store::sqlite_file_url(
                &data_dir.join(LEDGER_FILE_NAME),
            ))
        }
    }
}

/// Opens the ledger at `url`, or the SQLite file in `data_dir`.
async fn open_ledger(
    url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn bursar_store::SettlementLedger>> {
    let url = ledger_url(url, data_dir)?;
    bursar_store::open(&url)
        .await
        .context("cannot open the settlement ledger")
}

/// Finishes settlements left broadcast but unconfirmed by an earlier run, says what it did, and
/// keeps recovering in the background while the process runs.
async fn recover(facilitator: &LocalFacilitator) -> Result<()> {
    let recovered = facilitator
        .recover()
        .await
        .context("cannot read the settlement ledger for recovery")?;
    for settlement in recovered {
        let outcome = match &settlement.outcome {
            RecoveryOutcome::Confirmed => "confirmed".to_string(),
            RecoveryOutcome::Failed { reason, message } => format!("failed: {reason} ({message})"),
            RecoveryOutcome::Pending { why } => format!("left pending: {why}"),
            RecoveryOutcome::Released => "released (never broadcast; the payer may retry)".into(),
        };
        println!(
            "recovered settlement of payer {} nonce {} (tx {}): {outcome}",
            settlement.key.payer(),
            settlement.key.nonce(),
            settlement
                .tx_hash
                .map_or_else(|| "none".to_string(), |hash| hash.to_string())
        );
    }
    facilitator.spawn_recovery(bursar_facilitator::RECOVERY_INTERVAL_DEFAULT);
    Ok(())
}

/// Deploys a BursarBatchSettler on the dev chain from `account`.
async fn deploy_batch_settler(account: &Account) -> Result<Address> {
    account
        .deploy(bursar_facilitator::batch::batch_settler_creation_code())
        .await
        .context("cannot deploy the batch settler on the dev chain")
}

/// How settlement is batched, for the startup banner.
fn describe_batching(config: &bursar_facilitator::BatchConfig) -> String {
    format!(
        "batches of up to {} through {} (wait {:?})",
        config.items_max, config.settler, config.wait_max
    )
}

/// Serves a router until Ctrl-C or SIGTERM.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> Result<()> {
    axum::serve(nodelay(listener), app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// `listener` with `TCP_NODELAY` on every connection it accepts: small writes go out at once, so
/// a streamed answer (an MCP event after its priming event, say) is not held back waiting for the
/// client's delayed ACK.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    })
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn bind(address: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address} for the {what}: is another bursar running? choose another port")
    })
}

pub async fn run(args: DevArgs) -> Result<()> {
    let network = Arc::new(DevNetwork::open(&args.data_dir).await?);
    let (facilitator, batching) = dev_facilitator(&network, &args).await?;
    recover(&facilitator).await?;

    let facilitator_listener = bind(
        SocketAddr::new(args.host, args.facilitator_port),
        "facilitator",
    )
    .await?;
    let api_listener = bind(SocketAddr::new(args.host, args.api_port), "demo API").await?;
    let runtime_listener = bind(
        SocketAddr::new(args.host, args.runtime_port),
        "agent runtime",
    )
    .await?;
    let facilitator_url = format!("http://{}", facilitator_listener.local_addr()?);
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let runtime_url = format!("http://{}", runtime_listener.local_addr()?);
    let previous_operator_key = DevInfo::load(&args.data_dir)
        .ok()
        .and_then(|info| info.operator_key);
    let dev_runtime = crate::runtime::dev_runtime(
        &network,
        &args.data_dir,
        args.database_url.as_deref(),
        previous_operator_key,
        &args.policy,
        dev_egress(api_listener.local_addr()?),
        // Its own facilitator's catalog, unless the facilitator keeps none.
        if args.catalog.no_catalog {
            Vec::new()
        } else {
            vec![facilitator_url.parse()?]
        },
    )
    .await?;

    let info = DevInfo {
        chain_id: network.chain.chain_id(),
        network: format!("eip155:{}", network.chain.chain_id()),
        token: network.token.address(),
        token_name: devnet::TOKEN_NAME.into(),
        token_version: devnet::TOKEN_VERSION.into(),
        facilitator_url: facilitator_url.clone(),
        api_url: api_url.clone(),
        buyer: network.keys.buyer.address(),
        buyer_private_key: alloy_primitives::hex::encode_prefixed(network.keys.buyer.to_bytes()),
        seller: network.keys.seller.address(),
        facilitator_signer: network.keys.facilitator.address(),
        runtime_url: Some(runtime_url.clone()),
        operator_key: Some(dev_runtime.operator_key.clone()),
    };
    info.save(&args.data_dir)?;

    let facilitator_app =
        bursar_facilitator::router(facilitator).merge(dev_routes(network.clone()));
    let api_app = crate::pay::demo_api(&crate::pay::DemoApiConfig::from_dev_info(&info))?;
    let ledger_description = match &args.ledger_url {
        Some(_) => "--ledger-url (BURSAR_LEDGER_URL)".to_string(),
        None => args.data_dir.join(LEDGER_FILE_NAME).display().to_string(),
    };
    print_banner(&network, &info, &ledger_description).await;
    if let Some(batching) = batching {
        println!("  settlement   {batching}");
    }
    crate::runtime::print_dev_banner(&dev_runtime, &runtime_url, &info.api_url);
    println!();

    let facilitator_task = tokio::spawn(serve(facilitator_listener, facilitator_app));
    let api_task = tokio::spawn(serve(api_listener, api_app));
    let runtime_task = tokio::spawn(crate::runtime::run_service(
        dev_runtime.runtime.clone(),
        runtime_listener,
        None,
        1000,
    ));
    let (facilitator_result, api_result, runtime_result) =
        tokio::join!(facilitator_task, api_task, runtime_task);
    facilitator_result??;
    api_result??;
    runtime_result??;
    eprintln!(
        "bursar dev stopped; state kept in {}",
        args.data_dir.display()
    );
    Ok(())
}

/// The facilitator inside `bursar dev`: settling on the dev chain from the demo facilitator
/// account, batched with `--batch`; and how it batches, for the banner.
async fn dev_facilitator(
    network: &DevNetwork,
    args: &DevArgs,
) -> Result<(LocalFacilitator, Option<String>)> {
    let evm: Arc<dyn EvmChain> = network.chain.clone();
    let ledger = open_ledger(args.ledger_url.as_deref(), &args.data_dir).await?;
    let sender = Account::new(network.chain.clone(), network.keys.facilitator.clone());
    let batch = if args.batch {
        Some(bursar_facilitator::BatchConfig::new(
            deploy_batch_settler(&sender).await?,
        ))
    } else {
        None
    };
    let batching = batch.as_ref().map(describe_batching);
    let facilitator = LocalFacilitator::with_ledger(
        evm,
        sender,
        FacilitatorConfig {
            assets: Some(vec![network.token.address()]),
            batch,
            instance: Some(instance_name(None, &args.data_dir)?),
            ..Default::default()
        },
        ledger,
    );
    let facilitator = args
        .catalog
        .attach(
            facilitator,
            &ledger_url(args.ledger_url.as_deref(), &args.data_dir)?,
        )
        .await?;
    Ok((facilitator, batching))
}

/// Where `bursar dev`'s runtime lets agents' requests go: public addresses and loopback, where
/// the demo sellers run (and the demo API's own address when it listens elsewhere).
fn dev_egress(api: SocketAddr) -> bursar_runtime::EgressPolicy {
    let policy = bursar_runtime::EgressPolicy::loopback();
    if api.ip().is_loopback() {
        return policy;
    }
    policy.allowing([bursar_runtime::EgressAllow::Network {
        network: bursar_runtime::egress::Cidr::host(api.ip()),
        port: Some(api.port()),
    }])
}

async fn print_banner(network: &DevNetwork, info: &DevInfo, ledger: &str) {
    let usdc = devnet::usdc();
    let balance = network
        .token
        .balance_of(info.buyer)
        .await
        .map(Amount::from_atomic)
        .unwrap_or_default();
    println!("Bursar dev network is running (Ctrl-C to stop)\n");
    println!(
        "  chain        embedded EVM, {} (chain id {})",
        info.network, info.chain_id
    );
    println!("  data dir     {}", network.data_dir.display());
    println!("  ledger       {ledger}");
    println!(
        "  token        {} ({} v{}, 6 decimals)",
        info.token, info.token_name, info.token_version
    );
    println!(
        "  facilitator  {}  (POST /verify, POST /settle, GET /supported)",
        info.facilitator_url
    );
    println!(
        "               open to callers without an API key (a local dev network); \
         `bursar facilitator` requires keys (`bursar keys create`)"
    );
    println!("  demo API     {}", info.api_url);
    for route in crate::pay::DEMO_ROUTES {
        println!(
            "                 GET {:<16} {}",
            route.path,
            usdc.format(Amount::from(route.price_atomic))
        );
    }
    println!(
        "  demo MCP     {}{} (streamable HTTP; x402 over MCP, paid per tools/call)",
        info.api_url,
        crate::demo_tools::MCP_PATH
    );
    for tool in crate::demo_tools::DEMO_TOOLS {
        println!(
            "                 tool {:<15} {}",
            tool.name,
            usdc.format(Amount::from(tool.price_atomic))
        );
    }
    println!(
        "  buyer        {}  balance {}",
        info.buyer,
        usdc.format(balance)
    );
    println!(
        "               private key {} (dev chain only)",
        info.buyer_private_key
    );
    println!("  seller       {}", info.seller);
    println!("\nTry:");
    println!("  bursar pay {}/weather --max 0.05", info.api_url);
    println!("  bursar balance {}", info.seller);
    println!("  bursar faucet 0x0000000000000000000000000000000000000001 5\n");
}

#[derive(Deserialize)]
struct FaucetRequest {
    address: String,
    /// Atomic units, as a decimal string.
    amount: String,
}

fn dev_routes(network: Arc<DevNetwork>) -> Router {
    Router::new()
        .route("/dev/faucet", post(faucet))
        .route("/dev/balance/{address}", get(balance))
        .with_state(network)
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "bad_request", "message": message})),
    )
        .into_response()
}

async fn faucet(State(network): State<Arc<DevNetwork>>, body: axum::body::Bytes) -> Response {
    let request: FaucetRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("expected {{\"address\", \"amount\"}}: {error}")),
    };
    let Ok(address) = request.address.parse::<Address>() else {
        return bad_request(format!("{:?} is not an address", request.address));
    };
    let amount = match Amount::parse_atomic(&request.amount) {
        Ok(amount) => amount,
        Err(error) => return bad_request(error.to_string()),
    };
    match network.faucet(address, amount.atomic()).await {
        Ok(hash) => {
            let balance = network
                .token
                .balance_of(address)
                .await
                .unwrap_or(U256::ZERO);
            axum::Json(json!({"transaction": hash.to_string(), "address": address, "balance": balance.to_string()}))
                .into_response()
        }
        Err(error) => bad_request(format!("{error:#}")),
    }
}

async fn balance(
    State(network): State<Arc<DevNetwork>>,
    UrlPath(address): UrlPath<String>,
) -> Response {
    let Ok(address) = address.parse::<Address>() else {
        return bad_request(format!("{address:?} is not an address"));
    };
    match tokio::join!(
        network.token.balance_of(address),
        network.chain.native_balance(address)
    ) {
        (Ok(balance), Ok(native)) => axum::Json(json!({
            "address": address,
            "token": network.token.address(),
            "balance": balance.to_string(),
            "nativeBalance": native.to_string(),
        }))
        .into_response(),
        (Err(error), _) | (_, Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "chain", "message": error.to_string()})),
        )
            .into_response(),
    }
}

pub async fn facilitator(args: FacilitatorArgs) -> Result<()> {
    let assets = if args.assets.is_empty() {
        None
    } else {
        Some(args.assets.clone())
    };
    let (chain, key, dev_chain) = settlement_chain(&args).await?;
    let address = key.address();
    let (senders, batch) = settlement_senders(&args, &chain, dev_chain.as_ref(), key).await?;
    let ledger = open_ledger(args.ledger_url.as_deref(), &args.data_dir).await?;
    let access = facilitator_access(&args).await?;
    let batching = batch
        .as_ref()
        .map(|config| format!("{}, ", describe_batching(config)));
    let facilitator = LocalFacilitator::with_senders(
        chain.clone(),
        senders,
        FacilitatorConfig {
            assets,
            batch,
            confirmations: args.confirmations,
            // Against a node, one eth_call answers many payments' balance and nonce reads.
            group_reads: args.rpc_url.is_some(),
            instance: Some(instance_name(args.instance.as_deref(), &args.data_dir)?),
            claim_hold: Some(std::time::Duration::from_secs(args.claim_hold_secs)),
        },
        ledger,
    );
    let facilitator = args
        .catalog
        .attach(
            facilitator,
            &ledger_url(args.ledger_url.as_deref(), &args.data_dir)?,
        )
        .await?;
    recover(&facilitator).await?;
    let listener = bind(args.listen, "facilitator").await?;
    println!(
        "settlement: {}{} sender account(s), {} confirmation(s)",
        batching.unwrap_or_default(),
        facilitator.sender_addresses().len(),
        args.confirmations.max(1)
    );
    println!(
        "Bursar facilitator on http://{} for eip155:{} (settling from {address})",
        listener.local_addr()?,
        chain.chain_id()
    );
    let open = |on: bool| if on { "open" } else { "api key" };
    println!(
        "access: /verify {}, /settle {}; rate limits in {}",
        open(args.open_verify),
        open(args.open_settle),
        if args.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        }
    );
    let metrics_task = match args.metrics_listen {
        Some(address) => {
            let metrics_listener = bind(address, "metrics").await?;
            println!(
                "metrics on http://{}/metrics",
                metrics_listener.local_addr()?
            );
            let app = bursar_facilitator::metrics_router(facilitator.clone());
            Some(tokio::spawn(serve(metrics_listener, app)))
        }
        None => None,
    };
    let options = bursar_facilitator::RouterOptions {
        metrics: !args.no_metrics && args.metrics_listen.is_none(),
    };
    let app = bursar_facilitator::protected_router_with(facilitator, access, options);
    // Whole answers, one write each: no stream for Nagle's algorithm to hold back (and the
    // client address needs the plain listener).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    if let Some(task) = metrics_task {
        task.await??;
    }
    Ok(())
}

/// The chain `bursar facilitator` settles on and its settlement key: the node at `--rpc-url`
/// with the key from `--key-env`, or the `bursar dev` chain (also returned as a dev chain) with
/// its facilitator key.
async fn settlement_chain(
    args: &FacilitatorArgs,
) -> Result<(
    Arc<dyn EvmChain>,
    PrivateKeySigner,
    Option<Arc<dyn bursar_chain::DevChain>>,
)> {
    let mut dev_chain: Option<Arc<dyn bursar_chain::DevChain>> = None;
    let (chain, key): (Arc<dyn EvmChain>, PrivateKeySigner) = match &args.rpc_url {
        Some(url) => {
            let key = std::env::var(&args.key_env).with_context(|| {
                format!(
                    "set {} to the settlement account's private key (hex) to settle on {url}",
                    args.key_env
                )
            })?;
            let key: PrivateKeySigner = key.trim().parse().map_err(|_| {
                anyhow::anyhow!("{} does not hold a valid private key", args.key_env)
            })?;
            let chain = bursar_chain_rpc::RpcChain::connect(url, args.chain_id)
                .await
                .with_context(|| format!("cannot use the node at {url}"))?;
            (chain, key)
        }
        None => {
            let network = DevNetwork::open(&args.data_dir).await?;
            dev_chain = Some(network.chain.clone());
            (network.chain.clone(), network.keys.facilitator.clone())
        }
    };
    Ok((chain, key, dev_chain))
}

/// Who may call `bursar facilitator`: its API keys (in the settlement ledger's database), the
/// open flags, and rate limits in Redis (`--redis-url`) or in memory.
async fn facilitator_access(args: &FacilitatorArgs) -> Result<bursar_facilitator::Access> {
    let keys =
        bursar_store::open_key_store(&ledger_url(args.ledger_url.as_deref(), &args.data_dir)?)
            .await
            .context("cannot open the api key store")?;
    let limiter: Arc<dyn bursar_facilitator::RateLimiter> = match &args.redis_url {
        Some(url) => Arc::new(
            bursar_facilitator::RedisLimiter::connect(url, REDIS_KEY_PREFIX)
                .await
                .context("cannot reach Redis for rate limits (--redis-url)")?,
        ),
        None => Arc::new(bursar_facilitator::MemoryLimiter::new()),
    };
    let access = bursar_facilitator::Access {
        policy: bursar_facilitator::AccessPolicy {
            open_verify: args.open_verify,
            open_settle: args.open_settle,
            ..Default::default()
        },
        keys,
        limiter,
    };
    Ok(access)
}

/// The sender accounts and the batch configuration `bursar facilitator` settles with.
async fn settlement_senders(
    args: &FacilitatorArgs,
    chain: &Arc<dyn EvmChain>,
    dev_chain: Option<&Arc<dyn bursar_chain::DevChain>>,
    key: PrivateKeySigner,
) -> Result<(Vec<Account>, Option<bursar_facilitator::BatchConfig>)> {
    use bursar_facilitator::batch::SENDERS_MAX;
    if args.senders == 0 || args.senders > SENDERS_MAX {
        anyhow::bail!("--senders must be 1 to {SENDERS_MAX}");
    }
    let mut signers = vec![key];
    if let Some(path) = &args.sender_keys_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --sender-keys-file {}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let signer: PrivateKeySigner = line.parse().map_err(|_| {
                anyhow::anyhow!(
                    "line {} of {} is not a private key (hex)",
                    number + 1,
                    path.display()
                )
            })?;
            signers.push(signer);
        }
    }
    while signers.len() < args.senders {
        let Some(dev) = dev_chain else {
            anyhow::bail!(
                "--senders {} needs {} keys in --sender-keys-file with --rpc-url",
                args.senders,
                args.senders - 1
            );
        };
        let signer = devnet::dev_key(&format!("facilitator-sender-{}", signers.len()));
        dev.set_native_balance(signer.address(), U256::from(devnet::DEV_ETHER_WEI))
            .await
            .context("cannot fund a dev sender account")?;
        signers.push(signer);
    }
    signers.truncate(SENDERS_MAX);
    let senders: Vec<Account> = signers
        .into_iter()
        .map(|signer| Account::new(chain.clone(), signer))
        .collect();
    if args.confirmations > bursar_facilitator::batch::CONFIRMATIONS_MAX {
        anyhow::bail!(
            "--confirmations must be at most {}",
            bursar_facilitator::batch::CONFIRMATIONS_MAX
        );
    }
    if !args.batch {
        return Ok((senders, None));
    }
    let settler = match (args.batch_contract, dev_chain) {
        (Some(address), _) => address,
        (None, Some(_)) => deploy_batch_settler(&senders[0]).await?,
        (None, None) => anyhow::bail!(
            "--batch with --rpc-url needs --batch-contract (a deployed BursarBatchSettler)"
        ),
    };
    let code = chain
        .code(settler)
        .await
        .context("cannot read the batch contract")?;
    if code.is_empty() {
        anyhow::bail!("--batch-contract {settler} has no code on this chain");
    }
    let config = bursar_facilitator::BatchConfig {
        settler,
        items_max: args.batch_items_max,
        wait_max: std::time::Duration::from_millis(args.batch_wait_ms),
        simulate_items: args.batch_simulate,
    };
    config
        .validate()
        .map_err(|message| anyhow::anyhow!(message))?;
    Ok((senders, Some(config)))
}
