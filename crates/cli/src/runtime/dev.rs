//! The runtime inside `bursar dev`: its passphrase, wallet, grant and session, and paying through it.

use super::*;

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
    let session_id = bursar_runtime::tokens::session_named(token)
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

pub(super) fn dev_passphrase(data_dir: &Path) -> Result<(Passphrase, String)> {
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

pub(super) fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for byte in bytes.iter_mut() {
        *byte = alloy_primitives::B256::random()[0];
    }
    bytes
}

#[cfg(unix)]
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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
    catalogs: Vec<url::Url>,
) -> Result<DevRuntime> {
    let (passphrase, passphrase_source) = dev_passphrase(data_dir)?;
    let url = database_url(database_url_arg, data_dir)?;
    let chain: Arc<dyn EvmChain> = network.chain.clone();
    let currency = dev_currency(network);
    policy.check(&currency.unit)?;
    let runtime = open_runtime(
        &url, chain, currency, passphrase, true, policy, None, None, egress, catalogs,
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
