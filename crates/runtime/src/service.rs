//! The runtime service: wallets, grants, sessions and paying, on a store and a chain.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::{EvmChain, Token};
use bursar_governance::Policy;
use bursar_protocol::{Amount, AssetUnit, Network};
use bursar_store::runtime::{
    Created, GrantRecord, NewGrant, NewSession, NewWallet, SessionRecord, TransferState,
    WalletRecord,
};
use bursar_store::{RuntimeStore, StoreError};
use bursar_wallet::{Kdf, Keystore, Passphrase};

use crate::egress::{EgressGuard, EgressPolicy};
use crate::error::RuntimeError;
use crate::tokens::TokenKey;

mod accounting;
mod approve;
mod cache;
mod pay;
mod policies;
pub mod reputation;
mod signers;

pub(crate) use accounting::{ChainEvidence, authorization_key};
use cache::{CacheKey, CachedResponse};
use signers::{KeyDecryptions, SignerSlot};

/// How long a grant lasts unless the owner says otherwise.
pub const GRANT_DURATION_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// The longest grant.
pub const GRANT_DURATION_MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Timeout of one upstream request made for an agent.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Most paid responses kept in a process's paid-response cache.
pub const PAID_CACHE_ENTRIES_MAX: usize = 10_000;
/// Largest body the paid-response cache keeps.
pub const PAID_CACHE_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Most parsed policy documents kept in a process (the cache is emptied when it is full).
pub const POLICY_CACHE_ENTRIES_MAX: usize = 10_000;
/// Pending transfers looked at per resolver pass.
pub const RESOLVE_BATCH_MAX: usize = 500;

/// The currency sessions are budgeted in: one token on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    /// The name agents and owners use, e.g. `USDC`.
    pub name: String,
    pub network: Network,
    pub asset: Address,
    pub unit: AssetUnit,
}

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub currency: Currency,
    /// A policy file (TOML) that applies to every payment; re-read when it changes. A file
    /// that cannot be read or parsed denies every payment until it is fixed (fail closed). It
    /// replaces the default policy.
    pub policy_file: Option<std::path::PathBuf>,
    /// Whether the default policy ([`bursar_governance::DEFAULT_POLICY_TOML`]) applies to every
    /// session when no policy file is given (on unless switched off). Off, only the rules every
    /// policy has by default apply (pinned terms, backoff after three rejected payments).
    pub default_policy: bool,
    /// The key derivation for wallets Bursar encrypts (standard scrypt by default).
    pub kdf: Kdf,
    pub upstream_timeout: Duration,
    /// Where budget alerts are delivered (signed), if anywhere; see [`crate::alerts`].
    pub alert_webhook: Option<crate::alerts::AlertWebhook>,
    /// Pays the gas of `cancelAuthorization` when a failed step is compensated (anyone may send
    /// the wallet's signed cancel). Without it, the paying wallet sends it itself.
    pub cancel_gas_account: Option<Arc<bursar_chain::Account>>,
    /// Which destinations the runtime connects to for agents: public addresses only by
    /// default; see [`crate::egress`].
    pub egress: EgressPolicy,
    /// Most key derivations (scrypt: about 256 MiB and a second of CPU each at the standard
    /// parameters) running at once, across wallets. Default: the number of cores, at most
    /// [`KDF_CONCURRENCY_MAX_DEFAULT`].
    pub kdf_concurrency: usize,
    /// Discovery catalogs (facilitators' base URLs serving `/discovery/resources`) the runtime
    /// reads for agents and reports problems with paid responses to; see
    /// [`crate::service::reputation`]. `[reputation]` rules name their own catalogs.
    pub catalogs: Vec<url::Url>,
}

/// The default bound on concurrent key derivations: the cores, at most 4 (about 1 GiB of
/// scrypt memory at the standard parameters).
pub const KDF_CONCURRENCY_MAX_DEFAULT: usize = 4;

fn kdf_concurrency_default() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .clamp(1, KDF_CONCURRENCY_MAX_DEFAULT)
}

impl RuntimeConfig {
    pub fn new(currency: Currency) -> Self {
        RuntimeConfig {
            currency,
            policy_file: None,
            default_policy: true,
            kdf: Kdf::standard(),
            upstream_timeout: UPSTREAM_TIMEOUT,
            alert_webhook: None,
            cancel_gas_account: None,
            egress: EgressPolicy::default(),
            kdf_concurrency: kdf_concurrency_default(),
            catalogs: Vec::new(),
        }
    }
}

/// A wallet as the API shows it: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletInfo {
    pub id: String,
    pub name: String,
    pub address: Address,
    pub created_at_ms: i64,
}

impl WalletInfo {
    fn of(record: &WalletRecord) -> WalletInfo {
        WalletInfo {
            id: record.id.clone(),
            name: record.name.clone(),
            address: record.address,
            created_at_ms: record.created_at_ms,
        }
    }
}

/// What the caller asks for a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub grant_id: String,
    pub max_spend: Amount,
    /// Defaults to the rest of the grant's life.
    pub expires_in: Option<Duration>,
    pub client_token: Option<String>,
}

/// A session and its bearer token (the only credential the agent holds).
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub session: SessionRecord,
    pub token: String,
    pub created: bool,
}

/// The payment made for a fetched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSummary {
    pub transfer_id: String,
    pub state: TransferState,
    pub amount: Amount,
    pub network: Network,
    pub asset: Address,
    pub pay_to: Address,
    /// The settlement transaction: verified on chain once `state` is posted; as reported by the
    /// seller while pending.
    pub tx_hash: Option<B256>,
}

/// A response fetched for an agent.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub payment: Option<PaymentSummary>,
    /// How the paid response fared against the policies' validation rules, when any apply.
    pub validation: Option<ValidationOutcome>,
    /// Set when the response came from the paid-response cache: the transfer that paid for it.
    pub cached_from: Option<String>,
}

/// The result of validating a paid response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOutcome {
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
    /// Failed validations in a row for this endpoint, under the policy that has seen the most
    /// (each policy with validation rules counts its own; see [`Runtime::policies_for`]).
    pub consecutive_failures: u64,
    /// Set when this failure paused payments to the endpoint.
    pub paused_until_ms: Option<i64>,
}

/// What happened to one pending transfer when the chain was consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Posted {
        tx_hash: Option<B256>,
    },
    Voided {
        reason: String,
    },
    StillPending,
    /// Another process resolved it first.
    AlreadyResolved,
}

/// The payments runtime. A cheap handle: clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn RuntimeStore>,
    chain: Arc<dyn EvmChain>,
    config: RuntimeConfig,
    passphrase: Arc<Passphrase>,
    token_key: TokenKey,
    /// Signers by wallet id: decrypted, or being decrypted (one decryption per wallet per
    /// process, whatever the concurrency; see [`Runtime::signer`]).
    signers: Mutex<HashMap<String, SignerSlot>>,
    /// Numbers the decryptions started, so a finished one only replaces its own slot.
    signer_flights: AtomicU64,
    /// Bounds the key derivations (scrypt) running at once, across wallets.
    kdf_slots: Arc<tokio::sync::Semaphore>,
    /// Wallet keys decrypted (scrypt runs) since the runtime opened.
    key_decryptions: Arc<KeyDecryptions>,
    /// The egress guard: which destinations agents' requests may reach.
    egress: Arc<EgressGuard>,
    http: reqwest::Client,
    /// Paid GET responses kept for policies with `[cache]`, by (scope id, URL). In this
    /// process's memory, bounded by [`PAID_CACHE_ENTRIES_MAX`].
    paid_cache: Mutex<HashMap<CacheKey, CachedResponse>>,
    /// The policy file's last reading: its modification time and what it said.
    policy_file: Mutex<Option<(SystemTime, Result<Policy, String>)>>,
    /// The default policy, parsed once.
    default_policy: Policy,
    /// Attached policies parsed, by source (`wallet <id>`, ...): the document and its policy.
    parsed_policies: Mutex<HashMap<String, (String, Policy)>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("currency", &self.inner.config.currency)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Runtime {
    /// Opens the runtime: reads (or, on a new database, creates) the session-token key, which is
    /// stored encrypted under `passphrase` so every process sharing the database uses the same.
    pub async fn open(
        store: Arc<dyn RuntimeStore>,
        chain: Arc<dyn EvmChain>,
        passphrase: Passphrase,
        config: RuntimeConfig,
    ) -> Result<Runtime, RuntimeError> {
        let passphrase = Arc::new(passphrase);
        let config_unit = config.currency.unit.clone();
        let token_key = TokenKey::load_or_create(store.as_ref(), &passphrase, config.kdf).await?;
        crate::reconcile::note_first_block(store.as_ref(), chain.as_ref()).await?;
        let egress = EgressGuard::new(config.egress.clone());
        let kdf_slots = Arc::new(tokio::sync::Semaphore::new(config.kdf_concurrency.max(1)));
        if config.egress.allow_any {
            tracing::warn!(
                "egress guard off: the runtime will connect agents to any address, including \
                 loopback, private networks and cloud metadata endpoints"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(config.upstream_timeout)
            // Never followed: a redirect goes back to the agent, and its next request is
            // checked again (the allowlist's ports are enforced per request URL).
            .redirect(reqwest::redirect::Policy::none())
            // No ambient HTTP_PROXY / HTTPS_PROXY: through a proxy, the destination could not
            // be checked.
            .no_proxy()
            // Host names resolve to permitted addresses only (IP literals are checked per
            // request, in `fetch_labelled`).
            .dns_resolver(egress.resolver())
            .build()
            .map_err(|e| RuntimeError::Internal(format!("http client: {e}")))?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                store,
                chain,
                config,
                passphrase,
                token_key,
                signers: Mutex::default(),
                signer_flights: AtomicU64::new(0),
                kdf_slots,
                key_decryptions: Arc::default(),
                egress,
                http,
                policy_file: Mutex::new(None),
                default_policy: Policy::default_policy(&config_unit),
                parsed_policies: Mutex::default(),
                paid_cache: Mutex::default(),
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn RuntimeStore> {
        &self.inner.store
    }

    pub fn chain(&self) -> &Arc<dyn EvmChain> {
        &self.inner.chain
    }

    pub fn currency(&self) -> &Currency {
        &self.inner.config.currency
    }

    /// The account that pays for cancels, when one is configured.
    pub fn cancel_gas_account(&self) -> Option<&Arc<bursar_chain::Account>> {
        self.inner.config.cancel_gas_account.as_ref()
    }

    /// Which destinations the runtime connects to for agents.
    pub fn egress(&self) -> &EgressPolicy {
        self.inner.egress.policy()
    }

    pub fn alert_webhook(&self) -> Option<&crate::alerts::AlertWebhook> {
        self.inner.config.alert_webhook.as_ref()
    }

    // ----- wallets -----

    /// Creates a wallet with a new random key, encrypted under the runtime's passphrase.
    pub async fn create_wallet(
        &self,
        name: &str,
        idempotency_key: Option<String>,
    ) -> Result<Created<WalletInfo>, RuntimeError> {
        let passphrase = self.inner.passphrase.clone();
        let kdf = self.inner.config.kdf;
        let permit = self.kdf_permit().await?;
        let (keystore, address) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bursar_wallet::generate(kdf, &passphrase)
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("key generation: {e}")))??;
        self.insert_wallet(name, address, &keystore, idempotency_key)
            .await
    }

    /// Stores `signer`'s key as a wallet, encrypted under the runtime's passphrase (for keys the
    /// operator already holds in memory, such as a dev network's demo account).
    pub async fn add_wallet_key(
        &self,
        name: &str,
        signer: &PrivateKeySigner,
        idempotency_key: Option<String>,
    ) -> Result<Created<WalletInfo>, RuntimeError> {
        let signer = signer.clone();
        let passphrase = self.inner.passphrase.clone();
        let kdf = self.inner.config.kdf;
        let address = signer.address();
        let permit = self.kdf_permit().await?;
        let keystore = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Keystore::encrypt(&signer, &passphrase, kdf)
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("key encryption: {e}")))??;
        self.insert_wallet(name, address, &keystore, idempotency_key)
            .await
    }

    /// Imports a keystore v3 document (geth, foundry, ...) encrypted with `keystore_passphrase`;
    /// Bursar stores it re-encrypted under its own passphrase.
    pub async fn import_wallet(
        &self,
        name: &str,
        keystore_json: &str,
        keystore_passphrase: Passphrase,
        idempotency_key: Option<String>,
    ) -> Result<Created<WalletInfo>, RuntimeError> {
        let imported = Keystore::from_json(keystore_json)?;
        let theirs = keystore_passphrase;
        let ours = self.inner.passphrase.clone();
        let kdf = self.inner.config.kdf;
        let permit = self.kdf_permit().await?;
        let (keystore, address) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let signer = imported.decrypt(&theirs)?;
            let keystore = Keystore::encrypt(&signer, &ours, kdf)?;
            Ok::<_, bursar_wallet::WalletError>((keystore, signer.address()))
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("key import: {e}")))??;
        self.insert_wallet(name, address, &keystore, idempotency_key)
            .await
    }

    async fn insert_wallet(
        &self,
        name: &str,
        address: Address,
        keystore: &Keystore,
        idempotency_key: Option<String>,
    ) -> Result<Created<WalletInfo>, RuntimeError> {
        let created = self
            .inner
            .store
            .create_wallet(NewWallet {
                name: name.to_string(),
                address,
                keystore: keystore.to_json(),
                idempotency_key,
            })
            .await?;
        Ok(match created {
            Created::New(record) => Created::New(WalletInfo::of(&record)),
            Created::Existing(record) => Created::Existing(WalletInfo::of(&record)),
        })
    }

    /// A wallet by id, name or address.
    pub async fn wallet(&self, id_name_or_address: &str) -> Result<WalletInfo, RuntimeError> {
        let record = self.wallet_record(id_name_or_address).await?;
        Ok(WalletInfo::of(&record))
    }

    async fn wallet_record(&self, id_name_or_address: &str) -> Result<WalletRecord, RuntimeError> {
        self.inner
            .store
            .wallet(id_name_or_address)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("wallet {id_name_or_address:?}")))
    }

    pub async fn wallets(&self) -> Result<Vec<WalletInfo>, RuntimeError> {
        Ok(self
            .inner
            .store
            .wallets()
            .await?
            .iter()
            .map(WalletInfo::of)
            .collect())
    }

    /// The wallet's keystore document (encrypted under the runtime's passphrase), for backup or
    /// use in other tools.
    pub async fn export_wallet(&self, id_name_or_address: &str) -> Result<String, RuntimeError> {
        let record = self.wallet_record(id_name_or_address).await?;
        Ok(Keystore::from_json(&record.keystore)?.to_json_pretty())
    }

    /// The wallet's balance in the runtime's currency, read from the chain.
    pub async fn wallet_balance(&self, id_name_or_address: &str) -> Result<Amount, RuntimeError> {
        let wallet = self.wallet(id_name_or_address).await?;
        let token = Token::new(self.inner.chain.clone(), self.currency().asset);
        let balance = token.balance_of(wallet.address).await?;
        Ok(Amount::from_atomic(balance))
    }

    // ----- grants -----

    /// The wallet owner's authorization for `agent` to spend from `wallet`, for `duration`
    /// (default [`GRANT_DURATION_DEFAULT`]).
    pub async fn create_grant(
        &self,
        wallet: &str,
        agent: &str,
        duration: Option<Duration>,
        idempotency_key: Option<String>,
    ) -> Result<Created<GrantRecord>, RuntimeError> {
        let duration = duration.unwrap_or(GRANT_DURATION_DEFAULT);
        if duration.is_zero() || duration > GRANT_DURATION_MAX {
            return Err(RuntimeError::Invalid(format!(
                "a grant lasts from 1 second to {} days",
                GRANT_DURATION_MAX.as_secs() / 86_400
            )));
        }
        let wallet = self.wallet_record(wallet).await?;
        Ok(self
            .inner
            .store
            .create_grant(NewGrant {
                wallet_id: wallet.id,
                agent: agent.to_string(),
                expires_at_ms: now_ms().saturating_add(duration_ms(duration)),
                request: format!("{}s", duration.as_secs()),
                idempotency_key,
            })
            .await?)
    }

    pub async fn revoke_grant(&self, id: &str, reason: &str) -> Result<bool, RuntimeError> {
        if self.inner.store.grant(id).await?.is_none() {
            return Err(RuntimeError::NotFound(format!("grant {id}")));
        }
        Ok(self.inner.store.revoke_grant(id, reason).await?)
    }

    /// The kill switch: revokes every live grant (of one wallet, or of all).
    pub async fn revoke_all_grants(
        &self,
        wallet: Option<&str>,
        reason: &str,
    ) -> Result<u64, RuntimeError> {
        let wallet_id = match wallet {
            Some(wallet) => Some(self.wallet_record(wallet).await?.id),
            None => None,
        };
        Ok(self
            .inner
            .store
            .revoke_all_grants(wallet_id.as_deref(), reason)
            .await?)
    }

    // ----- sessions -----

    /// Creates a payment session under a live grant; the same client token returns the same
    /// session (and the same bearer token).
    pub async fn create_session(
        &self,
        request: SessionRequest,
    ) -> Result<IssuedSession, RuntimeError> {
        if request.max_spend.is_zero() {
            return Err(RuntimeError::Invalid(
                "maxSpendAmount must be greater than zero".into(),
            ));
        }
        let grant = self
            .inner
            .store
            .grant(&request.grant_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("grant {}", request.grant_id)))?;
        let expires_at_ms = match request.expires_in {
            Some(duration) if duration.is_zero() => {
                return Err(RuntimeError::Invalid(
                    "a session must last at least one second".into(),
                ));
            }
            Some(duration) => now_ms().saturating_add(duration_ms(duration)),
            None => grant.expires_at_ms,
        };
        let currency = self.currency();
        let created = self
            .inner
            .store
            .create_session(NewSession {
                grant_id: grant.id.clone(),
                network: currency.network.clone(),
                asset: currency.asset,
                currency: currency.name.clone(),
                max_spend: request.max_spend,
                expires_at_ms,
                client_token: request.client_token.clone(),
                request: request
                    .expires_in
                    .map(|d| format!("{}s", d.as_secs()))
                    .unwrap_or_else(|| "grant".into()),
            })
            .await
            .map_err(|error| match error {
                StoreError::Invalid(message) => RuntimeError::Denied {
                    code: if message.contains("revoked") {
                        "grant_revoked".into()
                    } else if message.contains("expired") {
                        "grant_expired".into()
                    } else {
                        "invalid".into()
                    },
                    message,
                },
                other => other.into(),
            })?;
        let is_new = created.is_new();
        let session = created.into_inner();
        Ok(IssuedSession {
            token: self.inner.token_key.token_for(&session.id),
            session,
            created: is_new,
        })
    }

    /// The session a bearer token belongs to. Unknown or forged tokens are
    /// [`RuntimeError::Unauthorized`].
    pub async fn authenticate(&self, token: &str) -> Result<SessionRecord, RuntimeError> {
        let session_id = self
            .inner
            .token_key
            .session_of(token)
            .ok_or(RuntimeError::Unauthorized)?;
        self.inner
            .store
            .session(&session_id)
            .await?
            .ok_or(RuntimeError::Unauthorized)
    }

    pub async fn session(&self, id: &str) -> Result<SessionRecord, RuntimeError> {
        self.inner
            .store
            .session(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("session {id}")))
    }
}
