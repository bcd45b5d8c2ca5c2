//! `bursar runtime` (the agent payments runtime as a service) and the operator's commands:
//! `bursar wallet`, `bursar grant`, `bursar session`, `bursar ledger`, `bursar operator-keys`.
//!
//! The service keeps its records in a database (`--database-url`, default a SQLite file in the
//! data dir) and settles against a chain (`--rpc-url`, or the embedded dev chain). Operator
//! commands talk to the running service over its HTTP API with an operator key
//! (`BURSAR_OPERATOR_KEY`), except `operator-keys create` (the bootstrap, straight to the
//! database) and `wallet export` (the encrypted keystore, straight from the database).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use anyhow::{Context, Result, anyhow, bail};
use bursar_chain::EvmChain;
use bursar_protocol::{AssetUnit, Network};
use bursar_runtime::{Currency, EgressAllow, EgressPolicy, Runtime, RuntimeConfig};
use bursar_wallet::{Kdf, Passphrase};
use serde_json::{Value, json};

use crate::devnet::{DevInfo, DevNetwork};
use crate::exit;
use crate::pay::failure;

/// The runtime database's file name in the data dir.
pub const RUNTIME_DB_FILE_NAME: &str = "runtime.sqlite";
/// Where the runtime listens by default.
pub const RUNTIME_LISTEN_DEFAULT: &str = "127.0.0.1:4030";
/// The environment variable holding the passphrase that encrypts wallet keys.
pub const PASSPHRASE_ENV: &str = "BURSAR_PASSPHRASE";

/// The runtime database URL: `url`, or the SQLite file in `data_dir` (created).
pub fn database_url(url: Option<&str>, data_dir: &Path) -> Result<String> {
    match url {
        Some(url) => Ok(url.to_string()),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            Ok(bursar_store::sqlite_file_url(
                &data_dir.join(RUNTIME_DB_FILE_NAME),
            ))
        }
    }
}

#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Address and port of the JSON API.
    #[arg(long, default_value = RUNTIME_LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// Also serve the HTTP forward proxy for agents on this address.
    #[arg(long)]
    pub proxy_listen: Option<SocketAddr>,
    #[arg(long, env = "BURSAR_DATA_DIR", default_value = ".bursar")]
    pub data_dir: PathBuf,
    /// The runtime database, such as postgres://user@host/db (several runtimes may share one).
    /// Default: a SQLite file, <data-dir>/runtime.sqlite.
    #[arg(long, env = "BURSAR_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A JSON-RPC node to watch settlements on. Without it, the embedded dev chain in
    /// --data-dir is used (and `bursar dev` must not be running on it).
    #[arg(long, env = "BURSAR_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The chain id the node must report.
    #[arg(long)]
    pub chain_id: Option<u64>,
    /// The token sessions are budgeted in (required with --rpc-url; default the dev token).
    #[arg(long)]
    pub token: Option<Address>,
    /// The currency's name, as sessions name it.
    #[arg(long, default_value = "USDC")]
    pub currency: String,
    /// The token's decimals.
    #[arg(long, default_value_t = 6)]
    pub decimals: u8,
    /// A file holding the wallet passphrase. Default: the BURSAR_PASSPHRASE variable.
    #[arg(long, env = "BURSAR_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// How often pending payments are checked on chain, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub resolve_interval_ms: u64,
    #[command(flatten)]
    pub policy: PolicyFlags,
    /// Encrypt new keys with scrypt's light parameters (fast, weaker; for tests).
    #[arg(long, hide = true)]
    pub light_kdf: bool,
    /// Deliver budget alerts (thresholds from the policies' [alerts], default 50% and 75%) to
    /// this URL as JSON, signed with HMAC-SHA256 (X-Bursar-Signature) and retried with backoff.
    #[arg(long, env = "BURSAR_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
    /// A file holding the alert webhook's signing secret. Default: the BURSAR_ALERT_SECRET
    /// variable.
    #[arg(long, env = "BURSAR_ALERT_SECRET_FILE")]
    pub alert_secret_file: Option<PathBuf>,
    /// A file holding the private key (hex) of an account that pays the gas of
    /// cancelAuthorization when a failed step is compensated. Default: the paying wallet pays.
    #[arg(long, env = "BURSAR_CANCEL_GAS_KEY_FILE")]
    pub cancel_gas_key_file: Option<PathBuf>,
    /// Let agents' requests reach this destination although it is not public: a network
    /// (10.0.0.0/8, fd00::/8), an address (10.1.2.3), an address and port (10.1.2.3:8443) or a
    /// host name with an optional port (api.internal:8443, *.corp.example). Repeatable. By
    /// default loopback, private networks, link-local (cloud metadata) and other non-public
    /// addresses are refused (403 egress_refused).
    #[arg(
        long = "egress-allow",
        value_name = "ENTRY",
        env = "BURSAR_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<EgressAllow>,
    /// Turn the egress guard off: agents' requests may reach any address, including this
    /// runtime's own API, private networks and cloud metadata endpoints.
    #[arg(long, conflicts_with = "egress_allow")]
    pub egress_allow_any: bool,
    /// A discovery catalog (a facilitator's base URL serving /discovery/resources; repeatable):
    /// problems with paid responses (failed validations, payment required again after paying,
    /// compensated steps) are reported to it, signed by the paying wallet.
    #[arg(long = "catalog", env = "BURSAR_CATALOGS", value_delimiter = ',')]
    pub catalogs: Vec<url::Url>,
}

impl RuntimeArgs {
    /// The egress policy the flags describe.
    pub fn egress(&self) -> EgressPolicy {
        if self.egress_allow_any {
            EgressPolicy::allow_any()
        } else {
            EgressPolicy::public_only().allowing(self.egress_allow.iter().cloned())
        }
    }
}

/// Prints where agents' requests may go (and warns loudly when anywhere).
pub fn print_egress(policy: &EgressPolicy) {
    if policy.allow_any {
        eprintln!(
            "WARNING: --egress-allow-any: the egress guard is off; agents' requests may reach any \
             address, including this runtime's API, private networks and cloud metadata endpoints"
        );
    }
    println!("agents' requests may reach {}", policy.describe());
}

/// Which policy applies to every session: `bursar runtime` and `bursar dev` share these flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyFlags {
    /// A policy file (TOML) for every payment, replacing the default policy (start from
    /// `bursar policy init`); re-read when it changes. While it cannot be read or parsed, every
    /// payment is denied.
    #[arg(long, env = "BURSAR_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// Switch the default policy off: sessions without a policy of their own are then limited
    /// only by their budget, pinned terms and the backoff after three rejected payments.
    #[arg(long, conflicts_with = "policy")]
    pub no_default_policy: bool,
}

impl PolicyFlags {
    /// Checks the policy file (when given) before anything starts, so a typo stops the command
    /// instead of denying every payment.
    pub fn check(&self, unit: &AssetUnit) -> Result<()> {
        if let Some(path) = &self.policy {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy file {}", path.display()))?;
            bursar_governance::Policy::parse(&text, unit, "file")
                .with_context(|| format!("the policy file {} is invalid", path.display()))?;
        }
        Ok(())
    }

    /// What the runtime applies to every session, in one line; said loudly when nothing is.
    pub fn describe(&self) -> String {
        match (&self.policy, self.no_default_policy) {
            (Some(path), _) => format!(
                "{} on every session (replaces the default policy)",
                path.display()
            ),
            (None, false) => "the default policy on every session: a call at most 25% of the \
                 session's budget, 10 payments to one endpoint a minute, 100 per session, pinned \
                 terms, a 1-minute backoff after a 402 to a paid request, paid responses held to \
                 their declared type and schema (`bursar policy init` writes it out; --policy \
                 FILE replaces it)"
                .to_string(),
            (None, true) => "NONE: the default policy is switched off (--no-default-policy); \
                 sessions without a policy of their own are limited only by their budget, \
                 pinned terms and the backoff after three rejected payments"
                .to_string(),
        }
    }

    /// Says what applies, on stdout, and warns on stderr when the default policy is off.
    pub fn announce(&self, indent: &str) {
        println!("{indent}{}", self.describe());
        if self.policy.is_none() && self.no_default_policy {
            eprintln!(
                "WARNING: the default policy is switched off (--no-default-policy): a hostile \
                 seller can take a session's whole budget unless each session carries its own policy"
            );
            tracing::warn!("the default policy is switched off (--no-default-policy)");
        }
    }
}

/// The gas account `bursar runtime` was given for cancels. Errors never show the key.
fn cancel_gas_key(args: &RuntimeArgs) -> Result<Option<alloy_signer_local::PrivateKeySigner>> {
    let Some(path) = &args.cancel_gas_key_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the cancel gas key file {}", path.display()))?;
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| anyhow!("{} does not hold a hex private key", path.display()))
}

/// The alert webhook `bursar runtime` was told about, with its secret.
fn alert_webhook(args: &RuntimeArgs) -> Result<Option<bursar_runtime::AlertWebhook>> {
    let Some(url) = &args.alert_webhook else {
        if args.alert_secret_file.is_some() {
            bail!("--alert-secret-file needs --alert-webhook");
        }
        return Ok(None);
    };
    let secret = bursar_runtime::AlertWebhook::read_secret(args.alert_secret_file.as_deref())
        .map_err(|message| anyhow!(message))?;
    bursar_runtime::AlertWebhook::new(url, secret)
        .map(Some)
        .map_err(|error| anyhow!("--alert-webhook: {error}"))
}

/// Opens the runtime on `chain` with the given currency.
#[allow(clippy::too_many_arguments)]
pub async fn open_runtime(
    database_url: &str,
    chain: Arc<dyn EvmChain>,
    currency: Currency,
    passphrase: Passphrase,
    light_kdf: bool,
    policy: &PolicyFlags,
    alert_webhook: Option<bursar_runtime::AlertWebhook>,
    cancel_gas_key: Option<alloy_signer_local::PrivateKeySigner>,
    egress: EgressPolicy,
    catalogs: Vec<url::Url>,
) -> Result<Runtime> {
    let store = bursar_store::open_runtime_store(database_url)
        .await
        .context("cannot open the runtime database")?;
    let mut config = RuntimeConfig::new(currency);
    config.egress = egress;
    config.catalogs = catalogs;
    config.policy_file = policy.policy.clone();
    config.default_policy = !policy.no_default_policy;
    config.alert_webhook = alert_webhook;
    config.cancel_gas_account =
        cancel_gas_key.map(|key| Arc::new(bursar_chain::Account::new(chain.clone(), key)));
    if light_kdf {
        config.kdf = Kdf::light();
    }
    Runtime::open(store, chain, passphrase, config)
        .await
        .map_err(|error| match error {
            bursar_runtime::RuntimeError::Wallet(bursar_wallet::WalletError::WrongPassphrase) => {
                anyhow!(
                    "the passphrase does not open this runtime database's keys; \
                     use the passphrase it was created with"
                )
            }
            other => anyhow::Error::new(other).context("cannot start the runtime"),
        })
}

pub fn passphrase(file: Option<&Path>) -> Result<Passphrase> {
    Passphrase::resolve(PASSPHRASE_ENV, file).map_err(|error| {
        anyhow!("{error} (the runtime encrypts wallet keys with it: set {PASSPHRASE_ENV} or --passphrase-file)")
    })
}

/// `bursar runtime`: serves the API (and the proxy) and resolves pending payments.
pub async fn serve(args: RuntimeArgs) -> Result<()> {
    let passphrase = passphrase(args.passphrase_file.as_deref())?;
    let alert_webhook = alert_webhook(&args)?;
    let cancel_gas_key = cancel_gas_key(&args)?;
    let (chain, currency) = match &args.rpc_url {
        Some(url) => {
            let token = args
                .token
                .ok_or_else(|| anyhow!("--token is required with --rpc-url"))?;
            let chain = bursar_chain_rpc::RpcChain::connect(url, args.chain_id)
                .await
                .with_context(|| format!("cannot reach the node at {url}"))?;
            let chain: Arc<dyn EvmChain> = chain;
            let currency = Currency {
                name: args.currency.clone(),
                network: Network::Eip155(chain.chain_id()),
                asset: token,
                unit: AssetUnit {
                    symbol: args.currency.clone(),
                    decimals: args.decimals,
                },
            };
            (chain, currency)
        }
        None => {
            let network = DevNetwork::open(&args.data_dir).await.context(
                "cannot open the embedded dev chain (is `bursar dev` running on this data dir? \
                 it includes the runtime; or give --rpc-url)",
            )?;
            let currency = dev_currency(&network);
            let chain: Arc<dyn EvmChain> = network.chain.clone();
            (chain, currency)
        }
    };
    let url = database_url(args.database_url.as_deref(), &args.data_dir)?;
    args.policy.check(&currency.unit)?;
    let runtime = open_runtime(
        &url,
        chain,
        currency,
        passphrase,
        args.light_kdf,
        &args.policy,
        alert_webhook,
        cancel_gas_key,
        args.egress(),
        args.catalogs.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the runtime API", args.listen))?;
    println!(
        "Bursar runtime listening on http://{} ({} on {})",
        listener.local_addr()?,
        runtime.currency().name,
        runtime.currency().network
    );
    print_egress(runtime.egress());
    args.policy.announce("policy: ");
    run_service(
        runtime,
        listener,
        args.proxy_listen,
        args.resolve_interval_ms,
    )
    .await
}

/// Serves the runtime's API (and proxy) with its resolver until Ctrl-C or SIGTERM.
pub async fn run_service(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    proxy_listen: Option<SocketAddr>,
    resolve_interval_ms: u64,
) -> Result<()> {
    // Payments left pending by an earlier run (or another process) are looked at right away.
    match runtime.resolve_pending().await {
        Ok((posted, voided)) if posted + voided > 0 => {
            println!("resolved payments left pending: {posted} posted, {voided} voided")
        }
        Ok(_) => {}
        Err(error) => eprintln!("warning: could not resolve pending payments yet: {error}"),
    }
    let resolver = runtime.spawn_resolver(Duration::from_millis(resolve_interval_ms.max(50)));
    if let Some(webhook) = runtime.alert_webhook() {
        println!("budget alerts delivered to {}", webhook.display_url());
    }
    let alerts = runtime.spawn_alert_delivery();
    let proxy = match proxy_listen {
        Some(address) => {
            let proxy_listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for the agent proxy"))?;
            println!("agent proxy on http://{}", proxy_listener.local_addr()?);
            let app = bursar_runtime::proxy::proxy_router(runtime.clone());
            Some(tokio::spawn(crate::dev::serve(proxy_listener, app)))
        }
        None => None,
    };
    let result = crate::dev::serve(listener, bursar_runtime::api::router(runtime)).await;
    resolver.abort();
    if let Some(alerts) = alerts {
        alerts.abort();
    }
    if let Some(proxy) = proxy {
        proxy.abort();
    }
    result
}

pub fn dev_currency(network: &DevNetwork) -> Currency {
    Currency {
        name: "USDC".into(),
        network: Network::Eip155(network.chain.chain_id()),
        asset: network.token.address(),
        unit: AssetUnit::usdc(),
    }
}

// ----- operator commands -----

mod accounts;
mod books;
mod dev;
mod remote;

pub use accounts::*;
pub use books::*;
pub use dev::*;
pub use remote::*;
