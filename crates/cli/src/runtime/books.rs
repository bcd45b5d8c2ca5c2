//! `bursar ledger`, `bursar alerts`, `bursar policy` and `bursar operator-keys`.

use super::*;

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

pub(super) const CSV_COLUMNS: [(&str, &str); 15] = [
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

pub(super) fn csv_field(value: &Value) -> String {
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
pub(super) fn url_component(text: &str) -> String {
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
pub(super) fn policy_init(path: &Path, force: bool) -> Result<()> {
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
