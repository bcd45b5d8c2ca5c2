//! `bursar`: the command line for Bursar.
//!
//! - `bursar dev` runs a whole x402 network on this machine: the embedded chain, the facilitator and
//!   a demo paid API, with a funded demo buyer.
//! - `bursar pay <url>` pays for a resource and prints the content and the receipt.
//! - `bursar balance` / `bursar faucet` read and fund dev-chain accounts.
//! - `bursar facilitator` serves the facilitator alone, on the embedded chain or a JSON-RPC node.
//! - `bursar keys` creates, lists and revokes the facilitator's API keys.
//! - `bursar demo-api` serves the demo paid API alone, against any facilitator, chain and token.
//! - `bursar bench` measures signature verification and the facilitator's `/verify`.

mod bench;
mod dev;
mod devnet;
mod keys;
mod pay;

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
    /// Measure signature verification and facilitator /verify throughput.
    Bench(bench::BenchArgs),
}

/// The default data dir.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".bursar")
}

/// Logs go to stderr. Servers log at info by default, one-shot commands only warnings;
/// `BURSAR_LOG` (an `EnvFilter` directive such as `debug`) overrides both.
fn init_tracing(server: bool) {
    use std::io::IsTerminal;
    let default = if server { "warn,bursar=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURSAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(
        cli.command,
        Command::Dev(_) | Command::Facilitator(_) | Command::DemoApi(_)
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
            Command::Keys(args) => keys::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
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
