//! `bursar keys`: the facilitator's API keys, in its database (the data dir's SQLite file or
//! `--ledger-url`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use bursar_store::KeyLimits;

#[derive(clap::Args)]
pub struct KeysArgs {
    #[arg(
        long,
        env = "BURSAR_DATA_DIR",
        default_value = ".bursar",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The facilitator's database, such as postgres://user@host/db.
    /// Default: <data-dir>/facilitator.sqlite.
    #[arg(long, env = "BURSAR_LEDGER_URL", global = true)]
    pub ledger_url: Option<String>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key for a seller and print it (shown this once only).
    Create {
        #[arg(long)]
        seller: String,
        /// Sustained requests per second.
        #[arg(long, default_value_t = KeyLimits::default().requests_per_second)]
        rps: u32,
        /// Requests allowed at once.
        #[arg(long, default_value_t = KeyLimits::default().burst)]
        burst: u32,
        /// Settlements per UTC day. Default: no quota.
        #[arg(long)]
        daily_settlements: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

pub async fn run(args: KeysArgs) -> Result<()> {
    let url = crate::dev::ledger_url(args.ledger_url.as_deref(), &args.data_dir)?;
    let store = bursar_store::open_key_store(&url)
        .await
        .context("cannot open the api key store")?;
    match args.command {
        KeysCommand::Create {
            seller,
            rps,
            burst,
            daily_settlements,
        } => {
            let limits = KeyLimits {
                requests_per_second: rps,
                burst,
                daily_settlements_max: daily_settlements,
            };
            let created = store.create(&seller, limits).await?;
            println!("id: {}", created.record.id);
            println!("seller: {}", created.record.seller);
            println!("key: {}", created.key);
            eprintln!("store the key now: it is not shown again (only its SHA-256 digest is kept)");
        }
        KeysCommand::List => {
            println!("id\tseller\trps\tburst\tdaily_settlements\tcreated_at_ms\tstatus");
            for key in store.list().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.seller,
                    key.limits.requests_per_second,
                    key.limits.burst,
                    key.limits
                        .daily_settlements_max
                        .map_or("-".to_string(), |max| max.to_string()),
                    key.created_at_ms,
                    if key.is_revoked() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke(&id).await? {
                anyhow::bail!("no active key with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
