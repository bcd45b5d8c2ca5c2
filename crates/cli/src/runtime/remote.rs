//! The operator commands' client: the runtime's HTTP API with an operator key, and the helpers they share.

use super::*;

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

pub(super) struct Api {
    http: reqwest::Client,
    url: String,
    pub(super) key: Option<String>,
}

impl Remote {
    pub(super) fn api(&self) -> Api {
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
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.call_with(method, path, body, self.key.as_deref(), None)
            .await
    }

    pub(super) async fn call_with(
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
pub(super) fn keystore_passphrase(file: Option<&Path>) -> Result<String> {
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

pub(super) fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
