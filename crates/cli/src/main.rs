//! `bursar`: the command line for Bursar.
//!
//! - `bursar dev` runs a whole x402 network on this machine: the embedded chain, the facilitator and
//!   a demo paid API, with a funded demo buyer.
//! - `bursar pay <url>` pays for a resource and prints the content and the receipt.
//! - `bursar balance` / `bursar faucet` read and fund dev-chain accounts.
//! - `bursar facilitator` serves the facilitator alone, on the embedded chain or a JSON-RPC node.
//! - `bursar keys` creates, lists and revokes the facilitator's API keys.
//! - `bursar demo-api` serves the demo paid API alone, against any facilitator, chain and token.
//! - `bursar paywall` sells the routes of any HTTP service: a reverse proxy that charges for the
//!   routes its configuration file prices.
//! - `bursar runtime` serves the agent payments runtime; `bursar wallet`, `grant`, `session`,
//!   `ledger` and `operator-keys` manage it.
//! - `bursar audit` verifies the runtime's decision trace and shows why a payment was made or
//!   refused.
//! - `bursar bench` measures signature verification and the facilitator's `/verify`.

/// mimalloc instead of the system allocator: the facilitator's hot paths allocate per request
/// (HTTP, JSON, chain calls), and glibc's malloc/free showed up as a tenth of a `/verify` profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_mcp;
mod audit;
mod bench;
mod demo_tools;
mod dev;
mod devnet;
mod discovery;
mod keys;
mod pay;
mod paywall;
mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, so scripts can tell failures apart.
pub mod exit {
    pub const FAILURE: u8 = 1;
    /// The seller asked more than `--max`, or nothing offered is payable.
    pub const NOT_PAYABLE: u8 = 3;
    /// The payment was made but refused by the seller or its facilitator.
    pub const PAYMENT_REJECTED: u8 = 4;
    /// `bursar ledger reconcile` found differences between the ledger and the chain.
    pub const RECONCILE_DIFFERENCES: u8 = 5;
    /// `bursar audit verify` found a decision that does not verify.
    pub const AUDIT_BROKEN: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "bursar",
    version,
    about = "Self-hosted x402 payments: facilitator, paywall and paying client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local x402 network: embedded chain, facilitator and a demo paid API.
    Dev(dev::DevArgs),
    /// Pay for a URL and print the content and the settlement receipt.
    Pay(pay::PayArgs),
    /// Show the USDC balance of an address.
    Balance(pay::BalanceArgs),
    /// Mint dev USDC to an address (the `bursar dev` chain only).
    Faucet(pay::FaucetArgs),
    /// Serve the facilitator alone.
    Facilitator(dev::FacilitatorArgs),
    /// Manage the facilitator's API keys: create, list, revoke.
    Keys(keys::KeysArgs),
    /// Serve the demo paid API alone, priced in any token and settled by any facilitator.
    DemoApi(pay::DemoApiArgs),
    /// Sell the routes of any HTTP service: a reverse proxy that charges for the routes its
    /// configuration file prices and forwards the rest.
    Paywall(paywall::PaywallArgs),
    /// Serve the agent payments runtime: wallets, grants, budgeted sessions, paying for agents.
    Runtime(runtime::RuntimeArgs),
    /// The runtime's wallets: create, import, export (encrypted), list, balance.
    Wallet(runtime::WalletArgs),
    /// Grants: allow an agent to spend from a wallet for a while; revoke one or all.
    Grant(runtime::GrantArgs),
    /// Payment sessions: create (prints the agent's token), show, transfers, close, fail.
    Session(runtime::SessionArgs),
    /// The runtime's ledger: export (CSV or JSON lines), reconcile with the chain.
    Ledger(runtime::LedgerArgs),
    /// Compensation records of failed steps and sessions (`bursar session fail`).
    Compensation(runtime::CompensationArgs),
    /// Budget alerts: list them with their webhook delivery state.
    Alerts(runtime::AlertsArgs),
    /// Policies: attach, show, remove; learn an allowlist from past payments.
    Policy(runtime::PolicyArgs),
    /// The runtime's operator keys: create, list, revoke.
    OperatorKeys(runtime::OperatorKeysArgs),
    /// The decision trace: verify the hash chain, show why a payment was made or refused.
    Audit(audit::AuditArgs),
    /// Measure signature verification and facilitator /verify throughput.
    Bench(bench::BenchArgs),
    /// Search discovery catalogs (x402 Bazaar, GET /discovery/resources) for paid resources and
    /// tools.
    Discover(discovery::DiscoverArgs),
    /// An MCP server for agents (stdio, or streamable HTTP with --listen): fetch paid resources
    /// and read the budget within a runtime session; the agent never sees a key.
    Mcp(agent_mcp::McpArgs),
}

/// The default data dir.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".bursar")
}

/// Which spans are exported as OpenTelemetry traces: Bursar's own, at info and above.
const OTEL_FILTER: &str = "warn,bursar=info";

/// Logs go to stderr. Servers log at info by default, one-shot commands only warnings;
/// `BURSAR_LOG` (an `EnvFilter` directive such as `debug`) overrides both.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are
/// also exported as OpenTelemetry traces over OTLP/HTTP with protobuf bodies, as service
/// `bursar` (unless `OTEL_SERVICE_NAME` says otherwise). The returned provider must be shut down
/// before exit to flush them. Unset (or `OTEL_SDK_DISABLED=true`): no exporter, no thread, no
/// network.
fn init_tracing(server: bool) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if server { "warn,bursar=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURSAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let provider = otel_tracer_provider();
    let traces = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bursar"))
            .with_filter(tracing_subscriber::EnvFilter::new(OTEL_FILTER))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    provider
}

/// The OTLP/HTTP trace pipeline, when the standard environment asks for one.
fn otel_tracer_provider() -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("warning: OpenTelemetry traces are not exported: {error}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("bursar");
    }
    Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = init_tracing(matches!(
        cli.command,
        Command::Dev(_)
            | Command::Facilitator(_)
            | Command::DemoApi(_)
            | Command::Paywall(_)
            | Command::Runtime(_)
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Pay(args) => pay::pay(args).await,
            Command::Balance(args) => pay::balance(args).await,
            Command::Faucet(args) => pay::faucet(args).await,
            Command::Facilitator(args) => dev::facilitator(args).await,
            Command::DemoApi(args) => pay::serve_demo_api(args).await,
            Command::Paywall(args) => paywall::serve(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Runtime(args) => runtime::serve(args).await,
            Command::Wallet(args) => runtime::wallet(args).await,
            Command::Grant(args) => runtime::grant(args).await,
            Command::Session(args) => runtime::session(args).await,
            Command::Ledger(args) => runtime::ledger(args).await,
            Command::Compensation(args) => runtime::compensation(args).await,
            Command::OperatorKeys(args) => runtime::operator_keys(args).await,
            Command::Policy(args) => runtime::policy(args).await,
            Command::Alerts(args) => runtime::alerts(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Mcp(args) => agent_mcp::serve(args).await,
            Command::Discover(args) => discovery::discover(args).await,
        }
    });
    drop(runtime);
    if let Some(provider) = traces
        && let Err(error) = provider.shutdown()
    {
        eprintln!("warning: OpenTelemetry traces were not all exported: {error}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error
                .downcast_ref::<pay::CommandFailure>()
                .map_or(exit::FAILURE, |failure| failure.code);
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
