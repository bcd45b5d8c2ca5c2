//! The runtime service: wallets, grants, sessions and paying, on a store and a chain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::SolEvent;
use bursar_buyer::{
    BuyerError, PayingClient, PaymentApproval, PaymentProposal, Refusal, RequestSpec,
};
use bursar_chain::{EvmChain, Token};
use bursar_contracts::BursarUSD;
use bursar_governance::{
    EndpointHistory, EndpointPause, PaidResponse, Policy, Proposal, Terms, WindowScope, endpoint_of,
};
use bursar_protocol::{Amount, AssetUnit, Network};
use bursar_store::runtime::SpendCap;
use bursar_store::runtime::{
    Created, Denial, GrantRecord, NewGrant, NewSession, NewTransfer, NewWallet, Reservation,
    SessionRecord, TransferRecord, TransferState, WalletRecord,
};
use bursar_store::{RuntimeStore, StoreError};
use bursar_wallet::{Kdf, Keystore, Passphrase, WalletError};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::{Value, json};

use crate::egress::{EgressGuard, EgressPolicy};
use crate::error::RuntimeError;
use crate::tokens::TokenKey;

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
    fn of(record: &WalletRecord) -> Result<WalletInfo, RuntimeError> {
        Ok(WalletInfo {
            id: record.id.clone(),
            name: record.name.clone(),
            address: record.address.parse().map_err(|_| {
                RuntimeError::Internal(format!("wallet {} has an unreadable address", record.id))
            })?,
            created_at_ms: record.created_at_ms,
        })
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
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// The settlement transaction: verified on chain once `state` is posted; as reported by the
    /// seller while pending.
    pub tx_hash: Option<String>,
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
        tx_hash: Option<String>,
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
    paid_cache: Mutex<HashMap<(String, String), CachedResponse>>,
    /// The policy file's last reading: its modification time and what it said.
    policy_file: Mutex<Option<(SystemTime, Result<Policy, String>)>>,
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
                address: address.to_string(),
                keystore: keystore.to_json(),
                idempotency_key,
            })
            .await?;
        Ok(match created {
            Created::New(record) => Created::New(WalletInfo::of(&record)?),
            Created::Existing(record) => Created::Existing(WalletInfo::of(&record)?),
        })
    }

    /// A wallet by id, name or address.
    pub async fn wallet(&self, id_name_or_address: &str) -> Result<WalletInfo, RuntimeError> {
        let record = self.wallet_record(id_name_or_address).await?;
        WalletInfo::of(&record)
    }

    async fn wallet_record(&self, id_name_or_address: &str) -> Result<WalletRecord, RuntimeError> {
        self.inner
            .store
            .wallet(id_name_or_address)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("wallet {id_name_or_address:?}")))
    }

    pub async fn wallets(&self) -> Result<Vec<WalletInfo>, RuntimeError> {
        self.inner
            .store
            .wallets()
            .await?
            .iter()
            .map(WalletInfo::of)
            .collect()
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

    /// How many times this process decrypted a wallet's key to sign (each one scrypt, about
    /// 256 MiB and a second of CPU at the standard parameters).
    pub fn key_decryptions(&self) -> u64 {
        self.inner.key_decryptions.started.load(Ordering::SeqCst)
    }

    /// The most wallet key decryptions that have run at the same time in this process (at most
    /// [`RuntimeConfig::kdf_concurrency`]).
    pub fn key_decryptions_concurrent_max(&self) -> usize {
        self.inner
            .key_decryptions
            .running_max
            .load(Ordering::SeqCst)
    }

    /// The wallet's signer. Its key is decrypted once per process: concurrent first callers
    /// share one decryption (a single flight per wallet), and at most
    /// [`RuntimeConfig::kdf_concurrency`] key derivations run at once across wallets. A failed
    /// decryption is not remembered: the callers that waited for it get its error, and the next
    /// caller tries again.
    pub(crate) async fn signer(
        &self,
        wallet_id: &str,
    ) -> Result<Arc<PrivateKeySigner>, RuntimeError> {
        let (flight_id, flight) = match self.signer_slot(wallet_id) {
            Some(SignerSlot::Ready(signer)) => return Ok(signer),
            Some(SignerSlot::Loading { id, flight }) => (id, flight),
            None => {
                // Read outside the lock; whoever registers first starts the decryption.
                let record = self.wallet_record(wallet_id).await?;
                let keystore = Keystore::from_json(&record.keystore)?;
                let expected: Address = record.address.parse().map_err(|_| {
                    RuntimeError::Internal(format!("wallet {wallet_id}: bad address"))
                })?;
                let mut slots = self.inner.signers.lock().expect("signer cache lock");
                match slots.get(wallet_id) {
                    Some(SignerSlot::Ready(signer)) => return Ok(signer.clone()),
                    Some(SignerSlot::Loading { id, flight }) => (*id, flight.clone()),
                    None => {
                        let id = self.inner.signer_flights.fetch_add(1, Ordering::SeqCst);
                        let flight = decrypt_signer(
                            wallet_id.to_string(),
                            keystore,
                            expected,
                            self.inner.passphrase.clone(),
                            self.inner.kdf_slots.clone(),
                            self.inner.key_decryptions.clone(),
                        )
                        .boxed()
                        .shared();
                        slots.insert(
                            wallet_id.to_string(),
                            SignerSlot::Loading {
                                id,
                                flight: flight.clone(),
                            },
                        );
                        (id, flight)
                    }
                }
            }
        };
        let outcome = flight.await;
        let mut slots = self.inner.signers.lock().expect("signer cache lock");
        if matches!(slots.get(wallet_id), Some(SignerSlot::Loading { id, .. }) if *id == flight_id)
        {
            match &outcome {
                Ok(signer) => {
                    slots.insert(wallet_id.to_string(), SignerSlot::Ready(signer.clone()));
                }
                Err(_) => {
                    slots.remove(wallet_id);
                }
            }
        }
        drop(slots);
        outcome.map_err(RuntimeError::from)
    }

    fn signer_slot(&self, wallet_id: &str) -> Option<SignerSlot> {
        self.inner
            .signers
            .lock()
            .expect("signer cache lock")
            .get(wallet_id)
            .cloned()
    }

    /// A permit to run one key derivation (scrypt), waiting while
    /// [`RuntimeConfig::kdf_concurrency`] are running.
    async fn kdf_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RuntimeError> {
        self.inner
            .kdf_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RuntimeError::Internal("key derivation slots closed".into()))
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
                network: currency.network.caip2(),
                asset: currency.asset.to_string(),
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

    // ----- paying -----

    /// Why the session cannot pay at all right now, if it cannot.
    async fn session_refusal(
        &self,
        session: &SessionRecord,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let now = now_ms();
        if session.closed_at_ms.is_some() {
            return Ok(Some((
                "session_closed".into(),
                format!("session {} is closed", session.id),
            )));
        }
        // The grant first: a session's expiry is capped at its grant's, so the grant is the
        // cause when both have passed.
        let grant = self
            .inner
            .store
            .grant(&session.grant_id)
            .await?
            .ok_or_else(|| {
                RuntimeError::Internal(format!("grant {} vanished", session.grant_id))
            })?;
        if grant.revoked_at_ms.is_some() {
            return Ok(Some((
                "grant_revoked".into(),
                format!("grant {} was revoked", grant.id),
            )));
        }
        if now >= grant.expires_at_ms {
            return Ok(Some((
                "grant_expired".into(),
                format!("grant {} has expired", grant.id),
            )));
        }
        if now >= session.expires_at_ms {
            return Ok(Some((
                "session_expired".into(),
                format!("session {} has expired", session.id),
            )));
        }
        Ok(None)
    }

    /// Sends `request` for the agent of `session`; on 402 reserves the price against the
    /// session (refusing, with nothing signed, when the session cannot pay), signs with the
    /// session's wallet, retries once with the payment, and returns the response and receipt.
    pub async fn fetch(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
    ) -> Result<Fetched, RuntimeError> {
        self.fetch_in_phase(session, request, None).await
    }

    /// [`Runtime::fetch`] with the phase the agent declares (`explore`, `execute`, ...), which
    /// phase policies apply to.
    pub async fn fetch_in_phase(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
        phase: Option<String>,
    ) -> Result<Fetched, RuntimeError> {
        self.fetch_labelled(session, request, phase, None).await
    }

    /// [`Runtime::fetch_in_phase`] with the agent's step label, kept with the payment's evidence
    /// so the step can be marked failed later ([`Runtime::mark_failed`]).
    pub async fn fetch_labelled(
        &self,
        session: &SessionRecord,
        request: RequestSpec,
        phase: Option<String>,
        step: Option<String>,
    ) -> Result<Fetched, RuntimeError> {
        if let Some(step) = &step {
            crate::compensation::check_step(step)?;
        }
        let resource = request.url.to_string();
        if let Some((code, message)) = self.session_refusal(session).await? {
            self.inner
                .store
                .deny(Denial {
                    session_id: Some(session.id.clone()),
                    resource: Some(resource.clone()),
                    reason: code.clone(),
                    message: message.clone(),
                    ..Denial::default()
                })
                .await?;
            let rule = json!({"rule": "session_live", "source": "runtime",
                              "input": {"sessionId": session.id, "grantId": session.grant_id},
                              "passed": false, "code": code, "detail": message});
            self.record_decision(
                session,
                DecisionSubject {
                    resource,
                    payee: None,
                    amount: None,
                },
                None,
                Some(&code),
                vec![rule],
            )
            .await;
            return Err(RuntimeError::Denied { code, message });
        }
        // Before anything is sent (and so before anything can be reserved or signed): a
        // destination the runtime may not reach for agents is refused.
        if let Err(error) = self.inner.egress.check(&request.url).await {
            if let RuntimeError::EgressRefused { host, address, .. } = &error {
                tracing::warn!(session = %session.id, %host, %address, "egress refused");
            }
            return Err(error);
        }
        // Read once per request: the approval, the cache and the response validation use them.
        let policies = Arc::new(self.policies_for(session).await);
        let cache = match policies.as_ref() {
            Ok(policies) => self.cache_rule(session, policies, &request),
            Err(_) => None,
        };
        if let Some((key, _)) = &cache
            && let Some(hit) = self.cached(key)
        {
            tracing::info!(url = %request.url, transfer = %hit.transfer_id, "served from the paid-response cache");
            return Ok(Fetched {
                status: hit.status,
                headers: hit.headers,
                body: hit.body,
                payment: None,
                validation: None,
                cached_from: Some(hit.transfer_id),
            });
        }
        let signer = self.signer(&session.wallet_id).await?;
        let currency = self.currency();
        let reserve = Arc::new(Reserve {
            runtime: self.clone(),
            session: session.clone(),
            policies: policies.clone(),
            phase,
            reserved: Mutex::new(None),
            published_schema: Mutex::new(None),
            declared_type: Mutex::new(None),
            had_rejections: AtomicBool::new(false),
        });
        let client = PayingClient::new(self.inner.http.clone(), signer)
            // The budget is enforced by the reservation, atomically; the client's own
            // per-payment maximum is not what decides.
            .max_amount(Amount::from_atomic(alloy_primitives::U256::MAX))
            .allow_network(currency.network.clone())
            .allow_asset(currency.network.clone(), currency.asset)
            .asset_unit(
                currency.network.clone(),
                currency.asset,
                currency.unit.clone(),
            )
            .approval(reserve.clone());
        let endpoint = endpoint_of(&request.url);
        let sent = request.clone();
        let outcome = client.send(request).await;
        let reserved = reserve.reserved.lock().expect("reservation slot").take();
        crate::compensation::record_evidence(
            self,
            session,
            &sent,
            step.as_deref(),
            reserved.as_ref(),
            &outcome,
        )
        .await;
        let published_schema = reserve.published_schema.lock().expect("schema slot").take();
        let declared_type = reserve.declared_type.lock().expect("type slot").take();
        self.note_outcome(
            &session.id,
            &endpoint,
            reserve.had_rejections.load(Ordering::SeqCst),
            &outcome,
        )
        .await;
        match outcome {
            Ok(response) => {
                let payment = match (&response.payment, reserved) {
                    (Some(receipt), Some(transfer)) => {
                        let reported = receipt
                            .settlement
                            .as_ref()
                            .filter(|settlement| settlement.success)
                            .map(|settlement| settlement.transaction.clone())
                            .filter(|hash| !hash.is_empty());
                        Some(self.after_payment(transfer, reported).await?)
                    }
                    (None, Some(transfer)) => {
                        // Approved but the client returned without a receipt: cannot happen
                        // with the paying client; keep the reservation for the resolver.
                        tracing::error!(transfer = %transfer.id, "reserved payment without a receipt");
                        None
                    }
                    _ => None,
                };
                let validation = if payment.is_some() {
                    self.validate_paid_response(
                        session,
                        &policies,
                        &endpoint,
                        &response,
                        published_schema.as_ref(),
                        declared_type.as_deref(),
                    )
                    .await
                } else {
                    None
                };
                if let (Some((key, ttl_ms)), Some(payment)) = (cache, &payment)
                    && response.status.is_success()
                    && validation.as_ref().is_none_or(|v| v.failure.is_none())
                    && response.body.len() <= PAID_CACHE_BODY_BYTES_MAX
                {
                    self.remember(key, ttl_ms, &response, &payment.transfer_id);
                }
                Ok(Fetched {
                    cached_from: None,
                    validation,
                    status: response.status.as_u16(),
                    headers: response
                        .headers
                        .iter()
                        .filter_map(|(name, value)| {
                            Some((name.to_string(), value.to_str().ok()?.to_string()))
                        })
                        .collect(),
                    body: response.body,
                    payment,
                })
            }
            Err(BuyerError::Refused { code, message }) => {
                Err(RuntimeError::Denied { code, message })
            }
            Err(BuyerError::NoPayableRequirement { offered, reasons }) => {
                let offer = offered.first();
                let code = "no_payable_offer";
                let message = reasons.join("; ");
                self.inner
                    .store
                    .deny(Denial {
                        session_id: Some(session.id.clone()),
                        amount: offer.map(|offer| offer.amount),
                        payee: offer.map(|offer| offer.pay_to.to_ascii_lowercase()),
                        resource: Some(resource.clone()),
                        reason: code.into(),
                        message: message.clone(),
                    })
                    .await?;
                let offers: Vec<Value> = offered
                    .iter()
                    .map(|offer| {
                        json!({"scheme": offer.scheme, "network": offer.network.caip2(),
                               "asset": offer.asset, "payTo": offer.pay_to,
                               "amount": offer.amount.to_string()})
                    })
                    .collect();
                let rule = json!({"rule": "payable_offer", "source": "runtime",
                                  "input": {"offered": offers,
                                            "network": currency.network.caip2(),
                                            "asset": currency.asset.to_string()},
                                  "passed": false, "code": code, "detail": message});
                self.record_decision(
                    session,
                    DecisionSubject {
                        resource,
                        payee: offer.map(|offer| offer.pay_to.to_ascii_lowercase()),
                        amount: offer.map(|offer| offer.amount),
                    },
                    None,
                    Some(code),
                    vec![rule],
                )
                .await;
                Err(RuntimeError::NotPayable { reasons })
            }
            Err(BuyerError::Signer(message)) => {
                if let Some(transfer) = reserved {
                    // The signature was never made: nothing can be settled.
                    self.inner.store.void(&transfer.id, "not_signed").await?;
                }
                Err(RuntimeError::Internal(format!("signing failed: {message}")))
            }
            Err(BuyerError::PaymentRejected { reason, settlement }) => {
                // The authorization left Bursar: it stays reserved until the chain shows it
                // settled or unusable.
                let transfer_id = reserved.as_ref().map(|t| t.id.clone());
                if let (Some(transfer), Some(settlement)) = (&reserved, &settlement)
                    && !settlement.transaction.is_empty()
                {
                    self.inner
                        .store
                        .note_tx_hash(&transfer.id, &settlement.transaction)
                        .await?;
                }
                Err(RuntimeError::PaymentRejected {
                    reason,
                    transfer_id,
                })
            }
            Err(other) => {
                if let Some(transfer) = reserved {
                    tracing::warn!(
                        transfer = %transfer.id,
                        error = %other,
                        "request failed after the payment was signed; the amount stays reserved until the chain settles or expires it"
                    );
                    return Err(RuntimeError::Upstream {
                        message: other.to_string(),
                        transfer_id: Some(transfer.id),
                    });
                }
                Err(match other {
                    BuyerError::InvalidRequest(_) | BuyerError::RequestTooLarge(_) => {
                        RuntimeError::Invalid(other.to_string())
                    }
                    other => RuntimeError::Upstream {
                        message: other.to_string(),
                        transfer_id: None,
                    },
                })
            }
        }
    }

    /// Records what the seller reported and tries to post at once.
    async fn after_payment(
        &self,
        transfer: TransferRecord,
        reported_tx: Option<String>,
    ) -> Result<PaymentSummary, RuntimeError> {
        let mut transfer = transfer;
        if let Some(hash) = &reported_tx {
            self.inner.store.note_tx_hash(&transfer.id, hash).await?;
            transfer.tx_hash = Some(hash.to_ascii_lowercase());
        }
        let resolution = match self.resolve_transfer(&transfer).await {
            Ok(resolution) => resolution,
            Err(error) => {
                tracing::warn!(transfer = %transfer.id, %error, "could not check the settlement yet; the resolver will");
                Resolution::StillPending
            }
        };
        let (state, tx_hash) = match resolution {
            Resolution::Posted { tx_hash } => (TransferState::Posted, tx_hash),
            Resolution::Voided { .. } => (TransferState::Voided, None),
            Resolution::StillPending | Resolution::AlreadyResolved => {
                let current = self.inner.store.transfer(&transfer.id).await?;
                match current {
                    Some(current) => (current.state, current.tx_hash),
                    None => (TransferState::Pending, reported_tx),
                }
            }
        };
        Ok(PaymentSummary {
            transfer_id: transfer.id,
            state,
            amount: transfer.amount,
            network: transfer.network,
            asset: transfer.asset,
            pay_to: transfer.payee,
            tx_hash,
        })
    }

    // ----- governance -----

    /// The policies that apply to a session, all of them evaluated for every payment (any
    /// failing rule denies): the runtime's own — its policy file when one is given, else the
    /// default policy ([`bursar_governance::DEFAULT_POLICY_TOML`]), else (switched off) only
    /// the rules every policy has by default — then the wallet's, the grant's and the
    /// session's own. A policy that cannot be read is an error (the payment is denied).
    ///
    /// Each policy's source (`default policy`, `file <path>`, `wallet <id>`, `grant <id>`,
    /// `session <id>`) also names the validation pauses it causes: a pause applies to the
    /// sessions its policy covers, and to none once the policy is detached.
    pub async fn policies_for(&self, session: &SessionRecord) -> Result<Vec<Policy>, String> {
        let mut policies = Vec::new();
        match self.file_policy()? {
            Some(policy) => policies.push(policy),
            None if self.inner.config.default_policy => {
                policies.push(Policy::default_policy(&self.currency().unit))
            }
            None => policies.push(Policy::defaults("runtime defaults")),
        }
        let unit = &self.currency().unit;
        for (scope, id) in [
            ("wallet", &session.wallet_id),
            ("grant", &session.grant_id),
            ("session", &session.id),
        ] {
            let document = self
                .inner
                .store
                .policy(scope, id)
                .await
                .map_err(|e| format!("cannot read the {scope} policy: {e}"))?;
            if let Some(document) = document {
                let source = format!("{scope} {id}");
                policies.push(
                    Policy::parse(&document, unit, &source)
                        .map_err(|e| format!("the {source} policy is invalid: {e}"))?,
                );
            }
        }
        Ok(policies)
    }

    /// The policy file, re-read when its modification time changes.
    fn file_policy(&self) -> Result<Option<Policy>, String> {
        let Some(path) = &self.inner.config.policy_file else {
            return Ok(None);
        };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
        let mut cached = self.inner.policy_file.lock().expect("policy cache lock");
        if let Some((at, policy)) = cached.as_ref()
            && *at == modified
        {
            return policy.clone().map(Some);
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))
            .and_then(|text| {
                Policy::parse(
                    &text,
                    &self.currency().unit,
                    &format!("file {}", path.display()),
                )
                .map_err(|e| format!("the policy file {} is invalid: {e}", path.display()))
            });
        match &parsed {
            Ok(_) => tracing::info!(path = %path.display(), "policy file loaded"),
            Err(error) => {
                tracing::error!(%error, "policy file rejected; payments are denied until it is fixed")
            }
        }
        *cached = Some((modified, parsed.clone()));
        parsed.map(Some)
    }

    /// Appends a decision to the hash-chained trace: every payment allowed and every refusal
    /// (policy, budget, session state, nothing payable). A trace write that fails is logged
    /// loudly; the ledger entry (reserve or deny) was already written in the same step.
    async fn record_decision(
        &self,
        session: &SessionRecord,
        subject: DecisionSubject,
        transfer_id: Option<&str>,
        denial: Option<&str>,
        rules: Vec<Value>,
    ) {
        let decision = bursar_store::NewDecision {
            session_id: Some(session.id.clone()),
            wallet_id: Some(session.wallet_id.clone()),
            agent: Some(session.agent.clone()),
            transfer_id: transfer_id.map(str::to_string),
            resource: Some(subject.resource),
            payee: subject.payee,
            amount: subject.amount,
            allowed: denial.is_none(),
            reason: denial.map(str::to_string),
            rules: Value::Array(rules),
        };
        if let Err(error) = self
            .inner
            .store
            .decision_store()
            .record_decision(decision)
            .await
        {
            tracing::error!(%error, session = %session.id, "could not record the decision trace");
        }
    }

    /// Proposes an allowlist policy from the payments that settled in the last `days` days (of
    /// one wallet, or all): the hosts paid and the payTo addresses used, most paid first, as a
    /// TOML document ready to attach, with each entry's count as a comment.
    pub async fn learn_allowlist(
        &self,
        wallet: Option<&str>,
        days: u64,
    ) -> Result<String, RuntimeError> {
        let wallet_id = match wallet {
            Some(wallet) => Some(self.wallet_record(wallet).await?.id),
            None => None,
        };
        let since = now_ms()
            .saturating_sub(i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX));
        let mut hosts: HashMap<String, u64> = HashMap::new();
        let mut payees: HashMap<String, u64> = HashMap::new();
        for transfer in self.inner.store.transfers(None).await? {
            if transfer.state != TransferState::Posted
                || transfer.created_at_ms < since
                || wallet_id
                    .as_ref()
                    .is_some_and(|id| *id != transfer.wallet_id)
            {
                continue;
            }
            if let Some(host) = url::Url::parse(&transfer.resource)
                .ok()
                .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            {
                *hosts.entry(host).or_default() += 1;
            }
            if let Ok(address) = transfer.payee.parse::<Address>() {
                *payees.entry(address.to_checksum(None)).or_default() += 1;
            }
        }
        let sorted = |counts: HashMap<String, u64>| {
            let mut entries: Vec<_> = counts.into_iter().collect();
            entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            entries
        };
        let list = |entries: &[(String, u64)]| {
            entries
                .iter()
                .map(|(value, count)| format!("    \"{value}\", # {count} payments\n"))
                .collect::<String>()
        };
        let (hosts, payees) = (sorted(hosts), sorted(payees));
        let mut document = format!(
            "# Proposed from the payments that settled in the last {days} days{}.\n\
             # Review before attaching: only these hosts and payTo addresses could be paid.\n\
             [payees]\n",
            wallet_id
                .as_deref()
                .map(|id| format!(" from wallet {id}"))
                .unwrap_or_default()
        );
        document.push_str(&format!("allow_domains = [\n{}]\n", list(&hosts)));
        document.push_str(&format!("allow_addresses = [\n{}]\n", list(&payees)));
        // The proposal must itself be a valid policy.
        self.check_policy(&document)?;
        Ok(document)
    }

    /// Checks a policy document without attaching it.
    pub fn check_policy(&self, document: &str) -> Result<Policy, RuntimeError> {
        Policy::parse(document, &self.currency().unit, "check")
            .map_err(|e| RuntimeError::Invalid(e.to_string()))
    }

    /// Checks a paid response against every validation rule of the session's policies and
    /// records the outcome per policy: each policy with rules for this endpoint counts its own
    /// failures in a row, and enough of them pause payments to the endpoint for the sessions
    /// that policy covers.
    async fn validate_paid_response(
        &self,
        session: &SessionRecord,
        policies: &Result<Vec<Policy>, String>,
        endpoint: &str,
        response: &bursar_buyer::PaidResponse,
        published_schema: Option<&Value>,
        declared_type: Option<&str>,
    ) -> Option<ValidationOutcome> {
        let policies = match policies {
            Ok(policies) => policies,
            Err(error) => {
                tracing::warn!(%error, "cannot read the policies to validate a paid response");
                return None;
            }
        };
        let facts = PaidResponse {
            status: response.status.as_u16(),
            content_type: response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok()),
            body: &response.body,
            published_schema,
            declared_type,
        };
        let mut outcome: Option<ValidationOutcome> = None;
        let observed = bursar_store::runtime::Observed {
            wallet_id: &session.wallet_id,
            session_id: &session.id,
        };
        for policy in policies {
            let rules: Vec<_> = policy.validations_for(endpoint).collect();
            if rules.is_empty() {
                continue;
            }
            let failure = rules.iter().find_map(|rule| rule.check_response(&facts));
            let pause_after = rules
                .iter()
                .map(|rule| u64::from(rule.failures_before_pause))
                .min()
                .unwrap_or(1);
            let cooldown_ms = rules
                .iter()
                .map(|rule| rule.cooldown_seconds.saturating_mul(1000))
                .max()
                .unwrap_or(0);
            let recorded = self
                .inner
                .store
                .record_validation(
                    &policy.source,
                    endpoint,
                    observed,
                    failure.as_deref(),
                    pause_after,
                    i64::try_from(cooldown_ms).unwrap_or(i64::MAX),
                )
                .await;
            let (failures, paused_until_ms) = match recorded {
                Ok(health) => {
                    if let Some(reason) = &failure {
                        tracing::warn!(%endpoint, policy = %policy.source, %reason, failures = health.consecutive_failures, "paid response failed validation");
                    }
                    (
                        health.consecutive_failures,
                        health.paused_until_ms.filter(|until| *until > now_ms()),
                    )
                }
                Err(error) => {
                    tracing::error!(%error, policy = %policy.source, "could not record a response validation");
                    (0, None)
                }
            };
            let merged = outcome.get_or_insert(ValidationOutcome {
                failure: None,
                consecutive_failures: 0,
                paused_until_ms: None,
            });
            if merged.failure.is_none() {
                merged.failure = failure;
            }
            merged.consecutive_failures = merged.consecutive_failures.max(failures);
            merged.paused_until_ms = merged.paused_until_ms.max(paused_until_ms);
        }
        outcome
    }

    /// The cache key and lifetime when a policy opts into the paid-response cache for this GET.
    fn cache_rule(
        &self,
        session: &SessionRecord,
        policies: &[Policy],
        request: &RequestSpec,
    ) -> Option<((String, String), i64)> {
        if request.method != http::Method::GET {
            return None;
        }
        // The most restrictive wins: the shortest lifetime, and session scope over wallet.
        let rules: Vec<_> = policies.iter().filter_map(|p| p.cache).collect();
        let ttl_seconds = rules.iter().map(|r| r.ttl_seconds).min()?;
        let wallet_wide = rules
            .iter()
            .all(|r| r.scope == bursar_governance::CacheScope::Wallet);
        let scope = if wallet_wide {
            format!("wallet {}", session.wallet_id)
        } else {
            format!("session {}", session.id)
        };
        let ttl_ms = i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        Some(((scope, request.url.to_string()), ttl_ms))
    }

    fn cached(&self, key: &(String, String)) -> Option<CachedResponse> {
        let mut cache = self.inner.paid_cache.lock().expect("paid cache lock");
        match cache.get(key) {
            Some(hit) if now_ms() < hit.expires_at_ms => Some(hit.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(
        &self,
        key: (String, String),
        ttl_ms: i64,
        response: &bursar_buyer::PaidResponse,
        transfer_id: &str,
    ) {
        let now = now_ms();
        let mut cache = self.inner.paid_cache.lock().expect("paid cache lock");
        if cache.len() >= PAID_CACHE_ENTRIES_MAX {
            cache.retain(|_, entry| now < entry.expires_at_ms);
        }
        if cache.len() >= PAID_CACHE_ENTRIES_MAX
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, entry)| entry.expires_at_ms)
                .map(|(key, _)| key.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(
            key,
            CachedResponse {
                expires_at_ms: now.saturating_add(ttl_ms),
                status: response.status.as_u16(),
                headers: response
                    .headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((name.to_string(), value.to_str().ok()?.to_string()))
                    })
                    .collect(),
                body: response.body.clone(),
                transfer_id: transfer_id.to_string(),
            },
        );
    }

    /// Counts paid requests that the endpoint answered with 402 again, in the database (so the
    /// backoff holds across processes sharing it); a paid success starts the count again.
    async fn note_outcome(
        &self,
        session_id: &str,
        endpoint: &str,
        had_rejections: bool,
        outcome: &Result<bursar_buyer::PaidResponse, BuyerError>,
    ) {
        let store = &self.inner.store;
        let result = match outcome {
            Err(BuyerError::PaymentRejected { .. }) => store
                .note_rejection(session_id, endpoint, now_ms())
                .await
                .map(|_| ()),
            Ok(response) if response.payment.is_some() && had_rejections => {
                store.clear_rejections(session_id, endpoint).await
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(%error, session = %session_id, %endpoint, "could not record a paid request's outcome for the backoff rule");
        }
    }

    /// What this session already paid (reserved or settled) the endpoint of `url`, the paid
    /// requests in a row it answered with 402 again, and the pauses of payments to it under
    /// `policies` (those in force for the session). Payment times are read from `since_ms` on
    /// (the longest loop window of the policies in force).
    async fn endpoint_history(
        &self,
        session: &SessionRecord,
        policies: &[Policy],
        url: &url::Url,
        since_ms: i64,
    ) -> Result<EndpointHistory, RuntimeError> {
        let session_id = session.id.as_str();
        let endpoint = endpoint_of(url);
        let mut history = EndpointHistory::default();
        let sources: Vec<String> = policies.iter().map(|p| p.source.clone()).collect();
        let now = now_ms();
        for health in self
            .inner
            .store
            .endpoint_pauses(&sources, &endpoint)
            .await?
        {
            if let Some(until_ms) = health.paused_until_ms.filter(|until| *until > now) {
                history.pauses.push(EndpointPause {
                    policy: health.policy,
                    until_ms,
                    reason: health.last_failure,
                });
            }
        }
        if let Some(rejections) = self.inner.store.rejections(session_id, &endpoint).await? {
            history.rejections = rejections.count;
            history.last_rejection_ms = Some(rejections.last_at_ms);
        }
        let paid = self
            .inner
            .store
            .endpoint_payments(session_id, &endpoint, since_ms)
            .await?;
        history.paid_in_session = u32::try_from(paid.count).unwrap_or(u32::MAX);
        history.paid_at_ms = paid.recent_at_ms;
        // An unreadable stored transfer fails the request: the pinned terms are never skipped.
        history.first_terms = paid.first.as_ref().map(terms_of).transpose()?;
        Ok(history)
    }

    // ----- accounting -----

    /// Consults the chain about one pending transfer and posts or voids it when the chain
    /// decides: posted when the token shows the authorization used (with the transaction, when
    /// a receipt proves it), voided when it is unused and `validBefore` has passed on chain.
    pub async fn resolve_transfer(
        &self,
        transfer: &TransferRecord,
    ) -> Result<Resolution, RuntimeError> {
        if transfer.state != TransferState::Pending {
            return Ok(Resolution::AlreadyResolved);
        }
        let evidence = self.chain_evidence(transfer).await?;
        let resolution = match evidence {
            ChainEvidence::Used { tx_hash } => {
                if self
                    .inner
                    .store
                    .post(&transfer.id, tx_hash.as_deref())
                    .await?
                {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, tx = ?tx_hash, "payment posted");
                    Resolution::Posted { tx_hash }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Expired => {
                let reason = "expired_unused";
                if self.inner.store.void(&transfer.id, reason).await? {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, "reservation voided: authorization expired unused");
                    Resolution::Voided {
                        reason: reason.into(),
                    }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Cancelled { tx_hash } => {
                let reason = "cancelled";
                if self.inner.store.void(&transfer.id, reason).await? {
                    tracing::info!(transfer = %transfer.id, amount = %transfer.amount, tx = %tx_hash, "reservation voided: authorization cancelled on chain");
                    Resolution::Voided {
                        reason: reason.into(),
                    }
                } else {
                    Resolution::AlreadyResolved
                }
            }
            ChainEvidence::Unused => Resolution::StillPending,
        };
        Ok(resolution)
    }

    /// What the chain says about a transfer's authorization.
    pub(crate) async fn chain_evidence(
        &self,
        transfer: &TransferRecord,
    ) -> Result<ChainEvidence, RuntimeError> {
        let (payer, asset, nonce) = authorization_key(transfer)?;
        if transfer.network != self.currency().network.caip2() {
            return Err(RuntimeError::Internal(format!(
                "transfer {} is on {}, this runtime watches {}",
                transfer.id,
                transfer.network,
                self.currency().network
            )));
        }
        let verified_tx = match &transfer.tx_hash {
            Some(hash) => self.receipt_proves(hash, asset, payer, nonce).await?,
            None => None,
        };
        if verified_tx.is_some() {
            return Ok(ChainEvidence::Used {
                tx_hash: verified_tx,
            });
        }
        let token = Token::new(self.inner.chain.clone(), asset);
        // `authorizationState` is true once the nonce is used *or cancelled*: a cancel the
        // runtime sent and recorded, whose receipt shows it, is not a payment.
        let used_or_cancelled = || async {
            match crate::compensation::cancel_proof(self, transfer, asset, payer, nonce).await? {
                Some(tx_hash) => Ok::<_, RuntimeError>(ChainEvidence::Cancelled { tx_hash }),
                None => Ok(ChainEvidence::Used { tx_hash: None }),
            }
        };
        if token.authorization_state(payer, nonce).await? {
            return used_or_cancelled().await;
        }
        let head = self.inner.chain.latest_block().await?;
        if head.timestamp >= transfer.valid_before_s {
            // Every later block is later still: the authorization can never be used.
            // Read the state once more, in case it was used in the block we just saw.
            if token.authorization_state(payer, nonce).await? {
                return used_or_cancelled().await;
            }
            return Ok(ChainEvidence::Expired);
        }
        Ok(ChainEvidence::Unused)
    }

    /// The transaction hash if its receipt shows the token marking this authorization used.
    async fn receipt_proves(
        &self,
        hash: &str,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> Result<Option<String>, RuntimeError> {
        let Ok(parsed) = hash.parse::<B256>() else {
            return Ok(None);
        };
        let Some(receipt) = self.inner.chain.receipt(parsed).await? else {
            return Ok(None);
        };
        let used = receipt.success
            && receipt.logs.iter().any(|log| {
                log.address == asset
                    && log.topics.len() == 3
                    && log.topics[0] == BursarUSD::AuthorizationUsed::SIGNATURE_HASH
                    && log.topics[1] == payer.into_word()
                    && log.topics[2] == nonce
            });
        Ok(used.then(|| format!("{parsed:#x}")))
    }

    /// One pass over pending transfers (oldest first). Returns how many were posted and voided.
    pub async fn resolve_pending(&self) -> Result<(usize, usize), RuntimeError> {
        let pending = self
            .inner
            .store
            .pending_transfers(RESOLVE_BATCH_MAX)
            .await?;
        let mut posted = 0;
        let mut voided = 0;
        for transfer in pending {
            match self.resolve_transfer(&transfer).await {
                Ok(Resolution::Posted { .. }) => posted += 1,
                Ok(Resolution::Voided { .. }) => voided += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(transfer = %transfer.id, %error, "could not resolve transfer")
                }
            }
        }
        // Compensations waiting on the chain's decision (made in this pass or elsewhere) finish.
        match self.finish_compensations(RESOLVE_BATCH_MAX).await {
            Ok(0) => {}
            Ok(finished) => tracing::info!(finished, "compensations finished"),
            Err(error) => tracing::warn!(%error, "could not finish compensations"),
        }
        Ok((posted, voided))
    }

    /// Runs [`Runtime::resolve_pending`] every `interval` until the task is aborted.
    pub fn spawn_resolver(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = runtime.resolve_pending().await {
                    tracing::warn!(%error, "resolver pass failed");
                }
            }
        })
    }
}

/// What the chain says about one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChainEvidence {
    /// Used on chain; the transaction when a receipt proves it.
    Used { tx_hash: Option<String> },
    /// Unused and can never be used any more.
    Expired,
    /// Cancelled on chain by the runtime's recorded `cancelAuthorization` (its receipt shows
    /// `AuthorizationCanceled` for this nonce): it can never be used.
    Cancelled { tx_hash: String },
    /// Unused and still valid.
    Unused,
}

/// The terms a stored transfer paid on; an unreadable address is an error, never no terms.
fn terms_of(first: &TransferRecord) -> Result<Terms, RuntimeError> {
    let corrupt = |what: &str| {
        RuntimeError::Internal(format!("transfer {} has an unreadable {what}", first.id))
    };
    Ok(Terms {
        asset: first.asset.parse().map_err(|_| corrupt("asset"))?,
        pay_to: first.payee.parse().map_err(|_| corrupt("payee"))?,
        network: first.network.clone(),
        amount: first.amount,
    })
}

pub(crate) fn authorization_key(
    transfer: &TransferRecord,
) -> Result<(Address, Address, B256), RuntimeError> {
    let corrupt = |what: &str| {
        RuntimeError::Internal(format!("transfer {} has an unreadable {what}", transfer.id))
    };
    Ok((
        transfer.payer.parse().map_err(|_| corrupt("payer"))?,
        transfer.asset.parse().map_err(|_| corrupt("asset"))?,
        transfer.nonce.parse().map_err(|_| corrupt("nonce"))?,
    ))
}

/// Runs the policies, then reserves the price against the session, before the paying client
/// signs. A denial at either step means nothing is signed.
struct Reserve {
    runtime: Runtime,
    session: SessionRecord,
    /// The policies read for this request (an error denies, fail closed).
    policies: Arc<Result<Vec<Policy>, String>>,
    phase: Option<String>,
    reserved: Mutex<Option<TransferRecord>>,
    /// The JSON Schema the seller published for the response it was paid for.
    published_schema: Mutex<Option<Value>>,
    /// The content type the seller declared in its 402 for the response it was paid for.
    declared_type: Mutex<Option<String>>,
    /// Whether the endpoint had answered paid requests of this session with 402 again.
    had_rejections: AtomicBool,
}

/// What a decision in the trace is about.
struct DecisionSubject {
    resource: String,
    payee: Option<String>,
    amount: Option<Amount>,
}

impl DecisionSubject {
    fn of(proposal: &PaymentProposal<'_>) -> DecisionSubject {
        DecisionSubject {
            resource: proposal.request.url.to_string(),
            payee: Some(proposal.authorization.to.to_string().to_ascii_lowercase()),
            amount: Some(proposal.authorization.value),
        }
    }
}

impl Reserve {
    async fn deny(
        &self,
        proposal: &PaymentProposal<'_>,
        code: &str,
        message: &str,
        rules: Vec<Value>,
    ) -> Refusal {
        let store = &self.runtime.inner.store;
        let denial = Denial {
            session_id: Some(self.session.id.clone()),
            amount: Some(proposal.authorization.value),
            payee: Some(proposal.authorization.to.to_string().to_ascii_lowercase()),
            resource: Some(proposal.request.url.to_string()),
            reason: code.to_string(),
            message: message.to_string(),
        };
        if let Err(error) = store.deny(denial).await {
            tracing::error!(%error, "could not record a denial");
        }
        self.runtime
            .record_decision(
                &self.session,
                DecisionSubject::of(proposal),
                None,
                Some(code),
                rules,
            )
            .await;
        Refusal::new(code, message)
    }
}

#[async_trait::async_trait]
impl PaymentApproval for Reserve {
    async fn approve(&self, proposal: &PaymentProposal<'_>) -> Result<(), Refusal> {
        let authorization = proposal.authorization;
        let runtime = &self.runtime;
        let Ok(valid_before_s) = u64::try_from(authorization.valid_before) else {
            return Err(self
                .deny(
                    proposal,
                    "invalid_offer",
                    "the offer's validity window is out of range",
                    Vec::new(),
                )
                .await);
        };
        let Ok(asset) = proposal.requirement.asset.parse::<Address>() else {
            return Err(self
                .deny(
                    proposal,
                    "invalid_offer",
                    "the offer's asset is not an address",
                    Vec::new(),
                )
                .await);
        };
        let policies = match self.policies.as_ref() {
            Ok(policies) => policies,
            Err(message) => {
                let rule = json!({"rule": "load_policies", "source": "runtime", "input": {},
                                  "passed": false, "code": "policy_unavailable", "detail": message});
                return Err(self
                    .deny(proposal, "policy_unavailable", message, vec![rule])
                    .await);
            }
        };
        // Payment times matter only within the longest loop window in force.
        let loop_window_s = policies
            .iter()
            .filter_map(|policy| policy.loop_limit.map(|(_, within_seconds)| within_seconds))
            .max();
        let since_ms = match loop_window_s {
            Some(seconds) => now_ms()
                .saturating_sub(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)),
            None => i64::MAX,
        };
        let history = match runtime
            .endpoint_history(&self.session, policies, &proposal.request.url, since_ms)
            .await
        {
            Ok(history) => {
                self.had_rejections
                    .store(history.rejections > 0, Ordering::SeqCst);
                history
            }
            Err(error) => {
                let message = format!("the payment history could not be read: {error}");
                return Err(self
                    .deny(proposal, "ledger_unavailable", &message, Vec::new())
                    .await);
            }
        };
        let evaluation = bursar_governance::evaluate(
            policies,
            &Proposal {
                url: proposal.request.url.clone(),
                network: proposal.requirement.network.caip2(),
                asset,
                pay_to: authorization.to,
                amount: authorization.value,
                phase: self.phase.clone(),
                session_budget: Some(self.session.max_spend),
            },
            &history,
            now_ms(),
        );
        let mut rules: Vec<Value> = evaluation.rules.iter().map(|r| r.to_json()).collect();
        if let Some((code, message)) = &evaluation.denial {
            return Err(self.deny(proposal, code, message, rules).await);
        }
        let caps: Vec<SpendCap> = evaluation
            .windows
            .iter()
            .map(|window| SpendCap {
                agent_only: window.scope == WindowScope::Agent,
                period_ms: i64::try_from(window.period_seconds.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                max: window.max,
                label: window.source.clone(),
            })
            .collect();
        let transfer = NewTransfer {
            session_id: self.session.id.clone(),
            network: proposal.requirement.network.caip2(),
            asset: proposal.requirement.asset.to_ascii_lowercase(),
            payer: authorization.from.to_string(),
            payee: authorization.to.to_string(),
            amount: authorization.value,
            nonce: format!("{:#x}", authorization.nonce),
            valid_before_s,
            resource: proposal.request.url.to_string(),
            endpoint: endpoint_of(&proposal.request.url),
            caps: caps.clone(),
        };
        let budget_input = json!({"amount": authorization.value.to_string(),
                                  "windows": caps.iter().map(|c| json!({"max": c.max.to_string(), "periodMs": c.period_ms,
                                      "scope": if c.agent_only { "agent" } else { "wallet" }, "source": c.label})).collect::<Vec<_>>()});
        match runtime.inner.store.reserve(transfer).await {
            Ok(Reservation::Reserved(record)) => {
                rules.push(
                    json!({"rule": "session_budget_and_windows", "source": "runtime",
                                  "input": budget_input, "passed": true, "detail": "reserved"}),
                );
                runtime
                    .record_decision(
                        &self.session,
                        DecisionSubject::of(proposal),
                        Some(&record.id),
                        None,
                        rules,
                    )
                    .await;
                crate::alerts::after_reservation(runtime, &self.session, policies, &caps, &record)
                    .await;
                *self.reserved.lock().expect("reservation slot") = Some(*record);
                // Kept only when some policy validates against them.
                let validations = || {
                    policies
                        .iter()
                        .flat_map(|policy| policy.validation.iter().chain(&policy.validators))
                };
                if validations().any(|validation| validation.seller_schema) {
                    *self.published_schema.lock().expect("schema slot") =
                        bursar_protocol::bazaar::published_output_schema(proposal.required)
                            .cloned();
                }
                if validations().any(|validation| validation.declared_type) {
                    *self.declared_type.lock().expect("type slot") =
                        proposal.required.resource.mime_type.clone();
                }
                Ok(())
            }
            Ok(Reservation::Denied { reason, message }) => {
                // The store wrote the deny entry; record the decision.
                rules.push(
                    json!({"rule": "session_budget_and_windows", "source": "runtime",
                                  "input": budget_input, "passed": false, "code": reason.code(),
                                  "detail": message}),
                );
                runtime
                    .record_decision(
                        &self.session,
                        DecisionSubject::of(proposal),
                        None,
                        Some(reason.code()),
                        rules,
                    )
                    .await;
                Err(Refusal::new(reason.code(), message))
            }
            Err(error) => {
                tracing::error!(%error, "reservation failed; refusing to pay");
                let message =
                    format!("the budget could not be checked, so nothing was paid: {error}");
                rules.push(
                    json!({"rule": "session_budget_and_windows", "source": "runtime",
                           "input": budget_input, "passed": false, "code": "ledger_unavailable",
                           "detail": message}),
                );
                // Recorded where the database still allows it.
                Err(self
                    .deny(proposal, "ledger_unavailable", &message, rules)
                    .await)
            }
        }
    }
}

/// A paid response kept for the paid-response cache.
#[derive(Debug, Clone)]
struct CachedResponse {
    expires_at_ms: i64,
    status: u16,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
    transfer_id: String,
}

/// Counts of wallet key decryptions in this process.
#[derive(Debug, Default)]
struct KeyDecryptions {
    started: AtomicU64,
    running: AtomicUsize,
    running_max: AtomicUsize,
}

/// A wallet's signer in the cache: decrypted, or being decrypted.
#[derive(Clone)]
enum SignerSlot {
    Ready(Arc<PrivateKeySigner>),
    /// The one decryption in flight, shared by every caller waiting for it.
    Loading {
        id: u64,
        flight: SignerFlight,
    },
}

type SignerFlight = Shared<BoxFuture<'static, Result<Arc<PrivateKeySigner>, KeyLoadError>>>;

/// Why a wallet's key could not be decrypted, shared by the callers that waited for it.
#[derive(Debug, Clone)]
enum KeyLoadError {
    WrongPassphrase,
    Failed(String),
}

impl From<KeyLoadError> for RuntimeError {
    fn from(error: KeyLoadError) -> Self {
        match error {
            KeyLoadError::WrongPassphrase => RuntimeError::Wallet(WalletError::WrongPassphrase),
            KeyLoadError::Failed(message) => RuntimeError::Internal(message),
        }
    }
}

/// Decrypts one wallet's key under a key-derivation permit. The permit moves into the blocking
/// task, so it is held until scrypt has finished even when every caller has gone.
async fn decrypt_signer(
    wallet_id: String,
    keystore: Keystore,
    expected: Address,
    passphrase: Arc<Passphrase>,
    kdf_slots: Arc<tokio::sync::Semaphore>,
    decryptions: Arc<KeyDecryptions>,
) -> Result<Arc<PrivateKeySigner>, KeyLoadError> {
    let permit = kdf_slots
        .acquire_owned()
        .await
        .map_err(|_| KeyLoadError::Failed("key derivation slots closed".into()))?;
    let decrypted = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        decryptions.started.fetch_add(1, Ordering::SeqCst);
        let running = decryptions.running.fetch_add(1, Ordering::SeqCst) + 1;
        decryptions.running_max.fetch_max(running, Ordering::SeqCst);
        let decrypted = keystore.decrypt(&passphrase);
        decryptions.running.fetch_sub(1, Ordering::SeqCst);
        decrypted
    })
    .await
    .map_err(|e| KeyLoadError::Failed(format!("key decryption: {e}")))?;
    let signer = decrypted.map_err(|error| match error {
        WalletError::WrongPassphrase => KeyLoadError::WrongPassphrase,
        other => KeyLoadError::Failed(format!("wallet {wallet_id}: {other}")),
    })?;
    if signer.address() != expected {
        return Err(KeyLoadError::Failed(format!(
            "wallet {wallet_id}: the keystore holds another key than its recorded address"
        )));
    }
    tracing::debug!(wallet = %wallet_id, "wallet key decrypted");
    Ok(Arc::new(signer))
}
