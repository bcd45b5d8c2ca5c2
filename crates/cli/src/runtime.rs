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
) -> Result<Runtime> {
    let store = bursar_store::open_runtime_store(database_url)
        .await
        .context("cannot open the runtime database")?;
    let mut config = RuntimeConfig::new(currency);
    config.egress = egress;
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

/// Where the running runtime is and the operator's key.
#[derive(clap::Args, Clone)]
pub struct Remote {
    /// The runtime's API. Default: the one `bursar dev` runs, else http://127.0.0.1:4030.
    #[arg(long, env = "BURSAR_RUNTIME_URL", global = true)]
    pub runtime_url: Option<String>,
    /// An operator key (bok_...). Default: the one `bursar dev` printed.
    #[arg(
        long,
        env = "BURSAR_OPERATOR_KEY",
        global = true,
        hide_env_values = true
    )]
    pub operator_key: Option<String>,
    #[arg(
        long,
        env = "BURSAR_DATA_DIR",
        default_value = ".bursar",
        global = true
    )]
    pub data_dir: PathBuf,
}

struct Api {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Remote {
    fn api(&self) -> Api {
        let dev = DevInfo::load(&self.data_dir).ok();
        let url = self
            .runtime_url
            .clone()
            .or_else(|| dev.as_ref().and_then(|info| info.runtime_url.clone()))
            .unwrap_or_else(|| format!("http://{RUNTIME_LISTEN_DEFAULT}"));
        let key = self
            .operator_key
            .clone()
            .or_else(|| dev.and_then(|info| info.operator_key));
        Api {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_string(),
            key,
        }
    }
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.call_with(method, path, body, self.key.as_deref(), None)
            .await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        credential: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the runtime at {}: start `bursar runtime` (or `bursar dev`), or set --runtime-url",
                self.url
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let document: Value = serde_json::from_str(&text)
            .with_context(|| format!("the runtime answered HTTP {status} with non-JSON: {text}"))?;
        if !status.is_success() {
            let code = document["error"]["code"].as_str().unwrap_or("error");
            let message = document["error"]["message"].as_str().unwrap_or(&text);
            let exit_code = match status.as_u16() {
                401 => {
                    return Err(failure(
                        exit::FAILURE,
                        format!(
                            "{message} (set BURSAR_OPERATOR_KEY; create one with `bursar operator-keys create`)"
                        ),
                    ));
                }
                402 | 403 => exit::NOT_PAYABLE,
                502 => exit::PAYMENT_REJECTED,
                _ => exit::FAILURE,
            };
            return Err(failure(exit_code, format!("{code}: {message}")));
        }
        Ok(document)
    }
}

/// The passphrase of a keystore being imported: the file's content (one trailing newline
/// dropped) or BURSAR_KEYSTORE_PASSPHRASE.
fn keystore_passphrase(file: Option<&Path>) -> Result<String> {
    const VARIABLE: &str = "BURSAR_KEYSTORE_PASSPHRASE";
    let text = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the keystore passphrase file {}",
                    path.display()
                )
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_string()
        }
        None => std::env::var(VARIABLE).map_err(|_| {
            anyhow!(
                "the keystore's passphrase is needed: set {VARIABLE} or --keystore-passphrase-file"
            )
        })?,
    };
    if text.is_empty() {
        bail!("the keystore's passphrase is empty");
    }
    Ok(text)
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct WalletArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The runtime database, for `export`. Default: <data-dir>/runtime.sqlite.
    #[arg(long, env = "BURSAR_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: WalletCommand,
}

#[derive(clap::Subcommand)]
pub enum WalletCommand {
    /// Create a wallet with a new key (kept encrypted by the runtime; never shown).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Import a keystore v3 file (geth, foundry `cast wallet`, ...).
    Import {
        #[arg(long)]
        name: String,
        /// The keystore file.
        #[arg(long)]
        keystore: PathBuf,
        /// A file holding the keystore's passphrase. Default: BURSAR_KEYSTORE_PASSPHRASE.
        #[arg(long)]
        keystore_passphrase_file: Option<PathBuf>,
    },
    /// Print a wallet's keystore (encrypted under the runtime's passphrase) for backup or use
    /// in other tools.
    Export {
        wallet: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List wallets.
    List,
    /// A wallet's on-chain balance.
    Balance { wallet: String },
}

pub async fn wallet(args: WalletArgs) -> Result<()> {
    let api = args.remote.api();
    match args.command {
        WalletCommand::Create {
            name,
            idempotency_key,
        } => {
            let created = api
                .call_with(
                    reqwest::Method::POST,
                    "/v1/wallets",
                    Some(json!({"name": name})),
                    api.key.as_deref(),
                    idempotency_key.as_deref(),
                )
                .await?;
            print_json(&created)
        }
        WalletCommand::Import {
            name,
            keystore,
            keystore_passphrase_file,
        } => {
            let document = std::fs::read_to_string(&keystore)
                .with_context(|| format!("cannot read {}", keystore.display()))?;
            let their = keystore_passphrase(keystore_passphrase_file.as_deref())?;
            let created = api
                .call(
                    reqwest::Method::POST,
                    "/v1/wallets",
                    Some(json!({"name": name, "keystore": document, "keystorePassphrase": their})),
                )
                .await?;
            print_json(&created)
        }
        WalletCommand::Export { wallet, out } => {
            let url = database_url(args.database_url.as_deref(), &args.remote.data_dir)?;
            let store = bursar_store::open_runtime_store(&url)
                .await
                .context("cannot open the runtime database")?;
            let record = store
                .wallet(&wallet)
                .await?
                .ok_or_else(|| failure(exit::FAILURE, format!("no wallet {wallet:?}")))?;
            let keystore = bursar_wallet::Keystore::from_json(&record.keystore)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, keystore.to_json_pretty())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "wrote {} (encrypted with the runtime's passphrase)",
                        path.display()
                    );
                }
                None => println!("{}", keystore.to_json_pretty()),
            }
            Ok(())
        }
        WalletCommand::List => {
            let listed = api.call(reqwest::Method::GET, "/v1/wallets", None).await?;
            println!("id\tname\taddress");
            for wallet in listed["wallets"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    wallet["id"].as_str().unwrap_or_default(),
                    wallet["name"].as_str().unwrap_or_default(),
                    wallet["address"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        WalletCommand::Balance { wallet } => {
            let shown = api
                .call(reqwest::Method::GET, &format!("/v1/wallets/{wallet}"), None)
                .await?;
            println!(
                "{} {}",
                shown["balance"]["amount"].as_str().unwrap_or_default(),
                shown["balance"]["currency"].as_str().unwrap_or_default()
            );
            Ok(())
        }
    }
}

#[derive(clap::Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: GrantCommand,
}

#[derive(clap::Subcommand)]
pub enum GrantCommand {
    /// Allow an agent to spend from a wallet for a while.
    Create {
        #[arg(long)]
        wallet: String,
        #[arg(long)]
        agent: String,
        /// How long the grant lasts.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    List {
        #[arg(long)]
        wallet: Option<String>,
    },
    /// Revoke one grant.
    Revoke {
        grant: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The kill switch: revoke every live grant (of one wallet, or of all).
    RevokeAll {
        #[arg(long)]
        wallet: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn grant(args: GrantArgs) -> Result<()> {
    let api = args.remote.api();
    let document = match args.command {
        GrantCommand::Create {
            wallet,
            agent,
            minutes,
            idempotency_key,
        } => {
            api.call_with(
                reqwest::Method::POST,
                "/v1/grants",
                Some(json!({"walletId": wallet, "agent": agent, "expiresInSeconds": minutes.saturating_mul(60)})),
                api.key.as_deref(),
                idempotency_key.as_deref(),
            )
            .await?
        }
        GrantCommand::List { wallet } => {
            let path = match wallet {
                Some(wallet) => format!("/v1/grants?walletId={wallet}"),
                None => "/v1/grants".into(),
            };
            api.call(reqwest::Method::GET, &path, None).await?
        }
        GrantCommand::Revoke { grant, reason } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/grants/{grant}/revoke"),
                Some(json!({"reason": reason})),
            )
            .await?
        }
        GrantCommand::RevokeAll { wallet, reason } => {
            api.call(
                reqwest::Method::POST,
                "/v1/grants/revoke-all",
                Some(json!({"walletId": wallet, "reason": reason})),
            )
            .await?
        }
    };
    print_json(&document)
}

#[derive(clap::Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(clap::Subcommand)]
pub enum SessionCommand {
    /// Start a payment session under a grant; prints its token (the agent's credential).
    Create {
        #[arg(long)]
        grant: String,
        /// The budget, e.g. 5.00 (in the runtime's currency).
        #[arg(long)]
        max: String,
        #[arg(long, default_value = "USDC")]
        currency: String,
        /// How long the session lasts. Default: as long as the grant.
        #[arg(long)]
        minutes: Option<u64>,
        /// Idempotent creation: the same token returns the same session.
        #[arg(long)]
        client_token: Option<String>,
    },
    /// A session's budget and state.
    Show { session: String },
    /// A session's payments.
    Transfers { session: String },
    /// Close a session: no more payments.
    Close { session: String },
    /// Mark a step (or, without --step, the whole session) failed: unsettled authorizations are
    /// cancelled on chain, settled ones become refund claims with their evidence.
    Fail {
        session: String,
        /// The step label given when paying (`bursar pay --step`).
        #[arg(long)]
        step: Option<String>,
        /// Why it failed (kept with the compensation records).
        #[arg(long)]
        reason: String,
        /// Act as the session's agent with its token (bst_...) instead of the operator key.
        #[arg(long, env = "BURSAR_SESSION_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

pub async fn session(args: SessionArgs) -> Result<()> {
    let api = args.remote.api();
    let document = match args.command {
        SessionCommand::Create {
            grant,
            max,
            currency,
            minutes,
            client_token,
        } => {
            let mut body = json!({"grantId": grant, "maxSpendAmount": max, "currency": currency});
            if let Some(minutes) = minutes {
                body["expiresInSeconds"] = json!(minutes.saturating_mul(60));
            }
            if let Some(token) = client_token {
                body["clientToken"] = json!(token);
            }
            api.call(reqwest::Method::POST, "/v1/sessions", Some(body))
                .await?
        }
        SessionCommand::Show { session } => {
            api.call(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session}"),
                None,
            )
            .await?
        }
        SessionCommand::Transfers { session } => {
            // Every page, oldest first.
            let mut transfers = Vec::new();
            let mut path = format!("/v1/sessions/{session}/transfers?limit=1000");
            loop {
                let page = api.call(reqwest::Method::GET, &path, None).await?;
                transfers.extend(page["transfers"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => {
                        path = format!("/v1/sessions/{session}/transfers?limit=1000&after={next}")
                    }
                    None => break json!({ "transfers": transfers }),
                }
            }
        }
        SessionCommand::Close { session } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/sessions/{session}/close"),
                None,
            )
            .await?
        }
        SessionCommand::Fail {
            session,
            step,
            reason,
            token,
        } => {
            let mut body = json!({"reason": reason});
            if let Some(step) = step {
                body["step"] = json!(step);
            }
            let credential = token.as_deref().or(api.key.as_deref());
            api.call_with(
                reqwest::Method::POST,
                &format!("/v1/sessions/{session}/failures"),
                Some(body),
                credential,
                None,
            )
            .await?
        }
    };
    print_json(&document)
}

#[derive(clap::Args)]
pub struct CompensationArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: CompensationCommand,
}

#[derive(clap::Subcommand)]
pub enum CompensationCommand {
    /// Compensation records (all, or one session's) with their outcome and evidence.
    List {
        /// Only this session's.
        #[arg(long)]
        session: Option<String>,
    },
}

pub async fn compensation(args: CompensationArgs) -> Result<()> {
    let api = args.remote.api();
    let document = match args.command {
        CompensationCommand::List { session: None } => {
            api.call(reqwest::Method::GET, "/v1/compensations", None)
                .await?
        }
        CompensationCommand::List {
            session: Some(session),
        } => {
            api.call(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session}/compensations"),
                None,
            )
            .await?
        }
    };
    print_json(&document)
}

#[derive(clap::Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(clap::Subcommand)]
pub enum LedgerCommand {
    /// Every reservation, post, void and denial, in order.
    Export {
        /// CSV instead of JSON lines.
        #[arg(long)]
        csv: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the ledger against itself and the chain; exits with 5 on any difference.
    Reconcile,
}

const CSV_COLUMNS: [(&str, &str); 15] = [
    ("seq", "seq"),
    ("kind", "kind"),
    ("at_ms", "atMs"),
    ("transfer_id", "transferId"),
    ("session_id", "sessionId"),
    ("grant_id", "grantId"),
    ("wallet_id", "walletId"),
    ("agent", "agent"),
    ("network", "network"),
    ("asset", "asset"),
    ("amount_atomic", "amountAtomic"),
    ("pay_to", "payTo"),
    ("resource", "resource"),
    ("tx_hash", "txHash"),
    ("reason", "reason"),
];

fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

pub async fn ledger(args: LedgerArgs) -> Result<()> {
    let api = args.remote.api();
    match args.command {
        LedgerCommand::Export { csv, out } => {
            let mut output = String::new();
            if csv {
                let header: Vec<&str> = CSV_COLUMNS.iter().map(|(name, _)| *name).collect();
                output.push_str(&header.join(","));
                output.push('\n');
            }
            let mut after = 0i64;
            let mut rows = 0usize;
            loop {
                let page = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/ledger?after={after}&limit=1000"),
                        None,
                    )
                    .await?;
                let entries = page["entries"].as_array().cloned().unwrap_or_default();
                if entries.is_empty() {
                    break;
                }
                for entry in &entries {
                    if csv {
                        let fields: Vec<String> = CSV_COLUMNS
                            .iter()
                            .map(|(_, key)| csv_field(&entry[*key]))
                            .collect();
                        output.push_str(&fields.join(","));
                    } else {
                        output.push_str(&serde_json::to_string(entry)?);
                    }
                    output.push('\n');
                }
                rows += entries.len();
                after = page["next"]
                    .as_i64()
                    .ok_or_else(|| anyhow!("the runtime's ledger page has no `next`"))?;
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, output)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {rows} entries to {}", path.display());
                }
                None => print!("{output}"),
            }
            Ok(())
        }
        LedgerCommand::Reconcile => {
            let report = api
                .call(reqwest::Method::GET, "/v1/ledger/reconcile", None)
                .await?;
            println!(
                "checked {} entries, {} transfers, {} sessions, {} authorizations used on chain",
                report["entriesChecked"],
                report["transfersChecked"],
                report["sessionsChecked"],
                report["chainUsesChecked"]
            );
            println!(
                "posted {} / pending {} / voided {} (atomic units)",
                report["postedAtomic"].as_str().unwrap_or_default(),
                report["pendingAtomic"].as_str().unwrap_or_default(),
                report["voidedAtomic"].as_str().unwrap_or_default()
            );
            let differences = report["differences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if differences.is_empty() {
                println!("no differences: the ledger agrees with the chain");
                return Ok(());
            }
            for difference in &differences {
                println!(
                    "DIFFERENCE {}: {}",
                    difference["subject"].as_str().unwrap_or_default(),
                    difference["problem"].as_str().unwrap_or_default()
                );
            }
            Err(failure(
                exit::RECONCILE_DIFFERENCES,
                format!(
                    "{} differences between the ledger and the chain",
                    differences.len()
                ),
            ))
        }
    }
}

#[derive(clap::Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: AlertsCommand,
}

#[derive(clap::Subcommand)]
pub enum AlertsCommand {
    /// Budget alerts raised so far, oldest first, with their webhook delivery state.
    List {
        /// Only alerts of this session or wallet id.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn alerts(args: AlertsArgs) -> Result<()> {
    let api = args.remote.api();
    match args.command {
        AlertsCommand::List {
            subject,
            limit,
            json,
        } => {
            let mut path = format!("/v1/alerts?limit={limit}");
            if let Some(subject) = subject {
                path.push_str(&format!("&subject={}", url_component(&subject)));
            }
            let listed = api.call(reqwest::Method::GET, &path, None).await?;
            let alerts = listed["alerts"].as_array().cloned().unwrap_or_default();
            if json {
                for alert in &alerts {
                    println!("{}", serde_json::to_string(alert)?);
                }
                return Ok(());
            }
            if listed["webhook"].is_null() {
                eprintln!("no alert webhook is configured: alerts are recorded, not delivered");
            }
            if alerts.is_empty() {
                println!("no alerts");
            }
            for alert in &alerts {
                let delivery = &alert["delivery"];
                println!(
                    "{}  {:>3}%  {:<13}  {} of {} {}  {}  [{} after {} attempts{}]",
                    alert["id"].as_str().unwrap_or_default(),
                    alert["threshold"],
                    alert["budget"].as_str().unwrap_or_default(),
                    alert["usedAtomic"].as_str().unwrap_or_default(),
                    alert["capAtomic"].as_str().unwrap_or_default(),
                    alert["currency"].as_str().unwrap_or_default(),
                    alert["sessionId"].as_str().unwrap_or_default(),
                    delivery["state"].as_str().unwrap_or_default(),
                    delivery["attempts"],
                    delivery["lastError"]
                        .as_str()
                        .map(|error| format!("; last error: {error}"))
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
    }
}

/// `text` percent-encoded for a query string.
fn url_component(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// `bursar policy init`: the default policy, commented, to a file (never over one unless
/// `force`) or to stdout.
fn policy_init(path: &Path, force: bool) -> Result<()> {
    let document = bursar_governance::DEFAULT_POLICY_TOML;
    if path == Path::new("-") {
        print!("{document}");
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            failure(
                exit::FAILURE,
                format!(
                    "{} exists; pass --force to overwrite it, or give another path",
                    path.display()
                ),
            )
        } else {
            anyhow!("cannot write {}: {error}", path.display())
        }
    })?;
    std::io::Write::write_all(&mut file, document.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote the default policy to {}; edit it, then run `bursar runtime --policy {0}` \
         (or `bursar dev --policy {0}`) to use it instead of the default",
        path.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// What a policy attaches to.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum PolicyScope {
    Wallet,
    Grant,
    Session,
}

impl PolicyScope {
    fn path(self) -> &'static str {
        match self {
            PolicyScope::Wallet => "wallets",
            PolicyScope::Grant => "grants",
            PolicyScope::Session => "sessions",
        }
    }
}

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Attach a policy file (TOML) to a wallet, grant or session; it is checked first.
    Set {
        scope: PolicyScope,
        id: String,
        file: PathBuf,
    },
    /// Print the policy attached to a wallet, grant or session.
    Show { scope: PolicyScope, id: String },
    /// Detach it.
    Remove { scope: PolicyScope, id: String },
    /// Write the default policy out as a commented TOML file to start from (then pass it to
    /// `bursar runtime --policy FILE` or `bursar dev --policy FILE`, or attach it).
    Init {
        /// Where to write it; `-` prints it.
        #[arg(default_value = "bursar-policy.toml")]
        path: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Propose an allowlist from the payments that settled in the last days.
    Learn {
        #[arg(long)]
        wallet: Option<String>,
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
}

pub async fn policy(args: PolicyArgs) -> Result<()> {
    if let PolicyCommand::Init { path, force } = &args.command {
        return policy_init(path, *force);
    }
    let api = args.remote.api();
    match args.command {
        PolicyCommand::Init { .. } => unreachable!("handled above"),
        PolicyCommand::Set { scope, id, file } => {
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            api.call(
                reqwest::Method::PUT,
                &format!("/v1/{}/{id}/policy", scope.path()),
                Some(json!({"policy": document})),
            )
            .await?;
            println!("attached {} to {} {id}", file.display(), scope.path());
        }
        PolicyCommand::Show { scope, id } => {
            let shown = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/{}/{id}/policy", scope.path()),
                    None,
                )
                .await?;
            print!("{}", shown["policy"].as_str().unwrap_or_default());
        }
        PolicyCommand::Remove { scope, id } => {
            let removed = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/{}/{id}/policy", scope.path()),
                    None,
                )
                .await?;
            println!("removed: {}", removed["deleted"]);
        }
        PolicyCommand::Learn { wallet, days } => {
            let mut path = format!("/v1/policy/learn?days={days}");
            if let Some(wallet) = wallet {
                path.push_str(&format!("&walletId={wallet}"));
            }
            let learned = api.call(reqwest::Method::GET, &path, None).await?;
            print!("{}", learned["policy"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct OperatorKeysArgs {
    #[arg(
        long,
        env = "BURSAR_DATA_DIR",
        default_value = ".bursar",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The runtime database. Default: <data-dir>/runtime.sqlite.
    #[arg(long, env = "BURSAR_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: OperatorKeysCommand,
}

#[derive(clap::Subcommand)]
pub enum OperatorKeysCommand {
    /// Create an operator key and print it (shown this once only).
    Create {
        #[arg(long)]
        name: String,
    },
    List,
    Revoke {
        id: String,
    },
}

pub async fn operator_keys(args: OperatorKeysArgs) -> Result<()> {
    let url = database_url(args.database_url.as_deref(), &args.data_dir)?;
    let store = bursar_store::open_runtime_store(&url)
        .await
        .context("cannot open the runtime database")?;
    match args.command {
        OperatorKeysCommand::Create { name } => {
            let created = store.create_operator_key(&name).await?;
            println!("id: {}", created.record.id);
            println!("key: {}", created.key);
            eprintln!("store the key now: it is not shown again (only its SHA-256 digest is kept)");
        }
        OperatorKeysCommand::List => {
            println!("id\tname\tcreated_at_ms\tstatus");
            for key in store.operator_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    key.id,
                    key.name,
                    key.created_at_ms,
                    if key.revoked_at_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
        OperatorKeysCommand::Revoke { id } => {
            if !store.revoke_operator_key(&id).await? {
                bail!("no active operator key with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `bursar pay --session <token>`: pays through the runtime instead of with a local key.
#[allow(clippy::too_many_arguments)]
pub async fn pay_through_session(
    remote: &Remote,
    token: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&str>,
    step: Option<&str>,
    as_json: bool,
) -> Result<()> {
    let session_id = token
        .strip_prefix(bursar_runtime::tokens::SESSION_TOKEN_PREFIX)
        .and_then(|rest| rest.rsplit_once('_'))
        .map(|(id, _)| id.to_string())
        .ok_or_else(|| failure(2, "--session must be a session token (bst_...)".into()))?;
    let api = remote.api();
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    let mut request = json!({"method": method, "url": url, "headers": headers});
    if let Some(body) = body {
        request["body"] = json!(body);
    }
    if let Some(step) = step {
        request["step"] = json!(step);
    }
    let fetched = api
        .call_with(
            reqwest::Method::POST,
            &format!("/v1/sessions/{session_id}/fetch"),
            Some(request),
            Some(token),
            None,
        )
        .await?;
    if as_json {
        return print_json(&fetched);
    }
    let body = fetched["body"].as_str().unwrap_or_default();
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    match fetched["payment"].as_object() {
        Some(payment) => {
            eprintln!("--- receipt (through session {session_id}) ---");
            eprintln!(
                "{:<12} {} {}",
                "paid",
                payment.get("amount").map_or(String::new(), csv_field),
                payment.get("currency").map_or(String::new(), csv_field)
            );
            for (label, key) in [
                ("state", "state"),
                ("transfer", "transferId"),
                ("payee", "payTo"),
                ("network", "network"),
                ("transaction", "txHash"),
            ] {
                eprintln!(
                    "{label:<12} {}",
                    payment.get(key).map_or(String::new(), csv_field)
                );
            }
        }
        None => eprintln!(
            "--- not paid: the server did not ask for payment (HTTP {}) ---",
            fetched["status"]
        ),
    }
    let status = fetched["status"].as_u64().unwrap_or(0);
    if !(200..300).contains(&status) {
        return Err(failure(
            exit::FAILURE,
            format!("the server answered HTTP {status}"),
        ));
    }
    Ok(())
}

// ----- the runtime inside `bursar dev` -----

/// The passphrase file `bursar dev` creates when BURSAR_PASSPHRASE is not set.
pub const DEV_PASSPHRASE_FILE_NAME: &str = "dev-passphrase";
/// The demo session's budget.
pub const DEV_SESSION_BUDGET: &str = "1.00";

/// The runtime `bursar dev` runs, with its demo wallet, grant and session.
pub struct DevRuntime {
    pub runtime: Runtime,
    pub operator_key: String,
    pub wallet: bursar_runtime::WalletInfo,
    pub grant_id: String,
    pub session_id: String,
    pub session_token: String,
    pub passphrase_source: String,
    pub policy: PolicyFlags,
}

fn dev_passphrase(data_dir: &Path) -> Result<(Passphrase, String)> {
    if std::env::var_os(PASSPHRASE_ENV).is_some() {
        return Ok((passphrase(None)?, PASSPHRASE_ENV.to_string()));
    }
    let path = data_dir.join(DEV_PASSPHRASE_FILE_NAME);
    if !path.exists() {
        let secret: [u8; 24] = rand_bytes();
        let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let passphrase = Passphrase::from_file(&path)?;
    Ok((passphrase, path.display().to_string()))
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for byte in bytes.iter_mut() {
        *byte = alloy_primitives::B256::random()[0];
    }
    bytes
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Opens the dev runtime: the demo buyer's key as the `demo` wallet, a 60-minute grant for
/// `demo-agent` and a fresh session with a small budget. Keys use scrypt's light parameters
/// (dev-chain money only).
pub async fn dev_runtime(
    network: &DevNetwork,
    data_dir: &Path,
    database_url_arg: Option<&str>,
    previous_operator_key: Option<String>,
    policy: &PolicyFlags,
    egress: EgressPolicy,
) -> Result<DevRuntime> {
    let (passphrase, passphrase_source) = dev_passphrase(data_dir)?;
    let url = database_url(database_url_arg, data_dir)?;
    let chain: Arc<dyn EvmChain> = network.chain.clone();
    let currency = dev_currency(network);
    policy.check(&currency.unit)?;
    let runtime = open_runtime(
        &url, chain, currency, passphrase, true, policy, None, None, egress,
    )
    .await?;
    let store = runtime.store().clone();
    let operator_key = match previous_operator_key {
        Some(key)
            if store
                .operator_key(&bursar_store::KeyDigest::of(&key))
                .await?
                .is_some() =>
        {
            key
        }
        _ => store.create_operator_key("bursar dev").await?.key,
    };
    let wallet = runtime
        .add_wallet_key(
            "demo",
            &network.keys.buyer,
            Some("bursar-dev-demo-wallet".into()),
        )
        .await
        .context("cannot create the demo wallet")?
        .into_inner();
    let grant = runtime
        .create_grant(&wallet.id, "demo-agent", None, None)
        .await?
        .into_inner();
    let unit = AssetUnit::usdc();
    let issued = runtime
        .create_session(bursar_runtime::SessionRequest {
            grant_id: grant.id.clone(),
            max_spend: unit.parse(DEV_SESSION_BUDGET)?,
            expires_in: None,
            client_token: None,
        })
        .await?;
    Ok(DevRuntime {
        runtime,
        operator_key,
        wallet,
        grant_id: grant.id,
        session_id: issued.session.id,
        session_token: issued.token,
        passphrase_source,
        policy: policy.clone(),
    })
}

/// The runtime part of `bursar dev`'s banner.
pub fn print_dev_banner(dev: &DevRuntime, runtime_url: &str, api_url: &str) {
    println!("  runtime      {runtime_url}  (agent payments API; GET /openapi.json)");
    println!("               operator key {}", dev.operator_key);
    println!(
        "               wallet `demo` {} (the demo buyer's key, encrypted with {})",
        dev.wallet.address, dev.passphrase_source
    );
    println!(
        "               grant {} for demo-agent (60 min), session {} (budget {DEV_SESSION_BUDGET} USDC)",
        dev.grant_id, dev.session_id
    );
    println!("               session token {}", dev.session_token);
    dev.policy.announce("               policy: ");
    println!(
        "               agents' requests may reach {} (the demo sellers run here; \
         `bursar runtime` refuses non-public addresses unless --egress-allow)",
        dev.runtime.egress().describe()
    );
    println!(
        "\n  bursar pay {api_url}/weather --session {}",
        dev.session_token
    );
}
