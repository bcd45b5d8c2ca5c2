//! `bursar wallet`, `bursar grant`, `bursar session` and `bursar compensation`.

use super::*;

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
