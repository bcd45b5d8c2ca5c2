//! Verification and exactly-once settlement, independent of HTTP.

mod claims;
mod recovery;
mod settle;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256};
use bursar_chain::{Account, EvmChain};
use bursar_protocol::exact_evm::SCHEME_EXACT;
use bursar_protocol::{
    FacilitatorRequest, Network, SettleResponse, SupportedKind, SupportedResponse, VerifyResponse,
};
use bursar_store::{SettlementLedger, SqliteDatabase};
use tokio::sync::watch;

use crate::batch::{self, BatchConfig, Batcher};
use crate::hooks::{FacilitatorHooks, NoHooks};
use crate::metrics::FacilitatorMetrics;
use crate::scheme::PaymentKey;
use crate::tokens::TokenSupportCache;

pub use recovery::{Recovered, RecoveryOutcome};
pub use settle::{payment_fingerprint, payment_identifier};

/// Gas limit for one `transferWithAuthorization`; an EOA-signed one uses about 60-90k.
pub const SETTLE_GAS_LIMIT: u64 = 200_000;
/// How long settle waits for the transaction to be mined.
pub const SETTLE_RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How many finished settlements are remembered in memory (the ledger remembers all of them).
pub const SETTLED_REMEMBERED_MAX: usize = 100_000;
/// How long a settle waits for a settlement of the same payment that another facilitator process
/// (or an earlier life of this one) holds in the ledger, before answering `settlement_in_progress`.
pub const SETTLED_ELSEWHERE_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often that wait re-reads the ledger and the chain.
pub const SETTLEMENT_LEDGER_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a claim is its holder's alone ([`FacilitatorConfig::claim_hold`]) unless configured
/// otherwise: far longer than verifying, simulating and recording a broadcast take (milliseconds
/// to a second or two against a remote node), far shorter than an authorization lives (typically
/// a minute or more). A holder that takes longer loses nothing: its claim is taken over only
/// when someone retries, and it then broadcasts nothing.
pub const CLAIM_HOLD_DEFAULT: Duration = Duration::from_secs(15);
/// How long a duplicate `/settle` waits on a claim another live process holds and has broadcast
/// nothing for, before answering `settlement_in_progress` with when the claim lapses.
pub const HELD_CLAIM_WAIT: Duration = Duration::from_secs(5);
/// How often a running facilitator recovers again ([`LocalFacilitator::spawn_recovery`]).
pub const RECOVERY_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// The `errorReason` of a `/settle` whose x402 `payment-identifier` already names another
/// payment (HTTP 409).
pub const PAYMENT_ID_CONFLICT: &str = "payment_identifier_conflict";
/// The `errorReason` of a `/settle` whose `payment-identifier` is malformed (HTTP 400).
pub const PAYMENT_ID_INVALID: &str = "invalid_payment_identifier";
/// The extension's key in a payment payload's `extensions`.
pub const PAYMENT_IDENTIFIER_EXTENSION: &str = "payment-identifier";

/// What the facilitator serves.
#[derive(Debug, Clone, Default)]
pub struct FacilitatorConfig {
    /// Tokens it settles; `None` accepts any EIP-3009 token on its chain.
    pub assets: Option<Vec<Address>>,
    /// Settle in batches through a BursarBatchSettler; `None` sends one transaction per
    /// settlement.
    pub batch: Option<BatchConfig>,
    /// Blocks (the transaction's own included) a settlement must be under before it is answered
    /// confirmed; 0 and 1 both mean "mined". At most [`batch::CONFIRMATIONS_MAX`].
    pub confirmations: u64,
    /// Read payers' balances and nonce states for many payments in one `eth_call` (see
    /// [`crate::reads`]) instead of two calls each. Worth it against a JSON-RPC node; the embedded
    /// chain answers single reads in microseconds.
    pub group_reads: bool,
    /// This facilitator's name, the same across restarts and different from every other process
    /// sharing its ledger (the `bursar` command keeps one in its data dir). Claims an earlier
    /// life of the same instance left unfinished are recovered at once after a restart instead
    /// of after [`FacilitatorConfig::claim_hold`]. `None`: each life is anonymous.
    pub instance: Option<String>,
    /// How long a claim nothing was recorded as broadcast for stays its holder's before another
    /// process may take it over or release it; `None` is [`CLAIM_HOLD_DEFAULT`].
    pub claim_hold: Option<Duration>,
}

enum Entry {
    InFlight {
        fingerprint: B256,
        outcome: watch::Receiver<Option<SettleResponse>>,
    },
    Done {
        fingerprint: B256,
        outcome: SettleResponse,
    },
}

#[derive(Default)]
struct Settlements {
    entries: HashMap<PaymentKey, Entry>,
    /// Finished keys, oldest first, to bound memory.
    finished: VecDeque<PaymentKey>,
}

/// The facilitator: stateless checks, chain checks, and settlement from its own account.
///
/// A cheap handle: clones share one state.
#[derive(Clone)]
pub struct LocalFacilitator {
    inner: Arc<Inner>,
}

#[doc(hidden)]
pub struct Inner {
    chain: Arc<dyn EvmChain>,
    sender: Arc<Account>,
    config: FacilitatorConfig,
    settlements: Mutex<Settlements>,
    /// Durable record of every authorization taken on; the arbiter across processes.
    ledger: Arc<dyn SettlementLedger>,
    /// Policy and observers around verify and settle.
    hooks: RwLock<Arc<dyn FacilitatorHooks>>,
    /// Each token's on-chain EIP-712 domain separator, read once.
    domain_separators: RwLock<HashMap<Address, Option<B256>>>,
    /// What each token lets this facilitator settle, learned once.
    token_support: TokenSupportCache,
    /// Prometheus metrics of every verify and settle.
    metrics: FacilitatorMetrics,
    /// The batch queue, when batching is configured.
    batcher: Option<Batcher>,
    /// Every sender account (the first is `sender`).
    senders: Vec<Arc<Account>>,
    /// Grouped chain reads, when configured.
    reads: Option<crate::reads::ReadGroup>,
    /// This process's name in the ledger's `holder` column: `<instance>/<life>`.
    holder: String,
    /// `<instance>/` when the instance is named: the prefix of the claims earlier lives left.
    instance_prefix: Option<String>,
    /// See [`FacilitatorConfig::claim_hold`].
    claim_hold: Duration,
    /// The discovery catalog fed by verifications and settlements, when kept.
    catalog: RwLock<Option<bursar_catalog::Catalog>>,
}

impl std::fmt::Debug for LocalFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFacilitator")
            .field("chain_id", &self.chain.chain_id())
            .field("sender", &self.sender.address())
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl std::ops::Deref for LocalFacilitator {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl LocalFacilitator {
    /// A facilitator with a private in-memory ledger: exactly-once within this process only, and
    /// forgotten on exit. Servers use [`LocalFacilitator::with_ledger`].
    pub fn new(chain: Arc<dyn EvmChain>, sender: Account, config: FacilitatorConfig) -> Self {
        Self::with_ledger(chain, sender, config, Arc::new(SqliteDatabase::memory()))
    }

    /// A facilitator that records settlements in `ledger` (see [`bursar_store::open`]).
    pub fn with_ledger(
        chain: Arc<dyn EvmChain>,
        sender: Account,
        config: FacilitatorConfig,
        ledger: Arc<dyn SettlementLedger>,
    ) -> Self {
        Self::with_senders(chain, vec![sender], config, ledger)
    }

    /// A facilitator settling from several accounts (each with its own nonces). Batches go out
    /// from any of them; single transactions from the first. Must be called inside a Tokio
    /// runtime when `config.batch` is set (the batcher's tasks start here).
    ///
    /// # Panics
    /// If `senders` is empty.
    pub fn with_senders(
        chain: Arc<dyn EvmChain>,
        senders: Vec<Account>,
        mut config: FacilitatorConfig,
        ledger: Arc<dyn SettlementLedger>,
    ) -> Self {
        assert!(!senders.is_empty(), "a facilitator needs a sender account");
        let senders: Vec<Arc<Account>> = senders
            .into_iter()
            .take(batch::SENDERS_MAX)
            .map(Arc::new)
            .collect();
        config.confirmations = config.confirmations.min(batch::CONFIRMATIONS_MAX);
        let life = format!("{:016x}", rand::random::<u64>());
        let (holder, instance_prefix) = match &config.instance {
            Some(instance) => (format!("{instance}/{life}"), Some(format!("{instance}/"))),
            None => (life, None),
        };
        let claim_hold = config.claim_hold.unwrap_or(CLAIM_HOLD_DEFAULT);
        let metrics = FacilitatorMetrics::new();
        let batcher = config.batch.clone().map(|batch_config| {
            Batcher::start(
                chain.clone(),
                ledger.clone(),
                batch_config,
                senders.clone(),
                holder.clone(),
                config.confirmations,
                SETTLE_RECEIPT_TIMEOUT,
                metrics.clone(),
            )
        });
        let reads = config
            .group_reads
            .then(|| crate::reads::ReadGroup::start(chain.clone()));
        LocalFacilitator {
            inner: Arc::new(Inner {
                reads,
                chain,
                sender: senders[0].clone(),
                config,
                settlements: Mutex::new(Settlements::default()),
                ledger,
                hooks: RwLock::new(Arc::new(NoHooks)),
                domain_separators: RwLock::new(HashMap::new()),
                token_support: TokenSupportCache::default(),
                metrics,
                batcher,
                senders,
                holder,
                instance_prefix,
                claim_hold,
                catalog: RwLock::new(None),
            }),
        }
    }

    /// Every account that submits settlements.
    pub fn sender_addresses(&self) -> Vec<Address> {
        self.senders.iter().map(|sender| sender.address()).collect()
    }

    /// Installs `hooks` (replacing any installed before) for this facilitator and its clones.
    pub fn with_hooks(self, hooks: Arc<dyn FacilitatorHooks>) -> Self {
        *self.hooks.write().expect("lock") = hooks;
        self
    }

    /// Keeps `catalog` (for this facilitator and its clones): every valid verification and every
    /// settlement of a payment whose seller published the `bazaar` extension is recorded in it,
    /// and the routers serve it at `/discovery/*`.
    pub fn with_catalog(self, catalog: bursar_catalog::Catalog) -> Self {
        *self.catalog.write().expect("lock") = Some(catalog);
        self
    }

    /// The catalog this facilitator feeds, if it keeps one.
    pub fn catalog(&self) -> Option<bursar_catalog::Catalog> {
        self.catalog.read().expect("lock").clone()
    }

    /// The metrics this facilitator records, served by `GET /metrics`.
    pub fn metrics(&self) -> &FacilitatorMetrics {
        &self.metrics
    }

    fn hooks(&self) -> Arc<dyn FacilitatorHooks> {
        self.hooks.read().expect("lock").clone()
    }

    pub fn ledger(&self) -> &Arc<dyn SettlementLedger> {
        &self.ledger
    }

    pub fn chain(&self) -> &Arc<dyn EvmChain> {
        &self.chain
    }

    /// The account that submits settlements (and pays their gas).
    pub fn sender_address(&self) -> Address {
        self.sender.address()
    }

    pub fn network(&self) -> Network {
        Network::Eip155(self.chain.chain_id())
    }

    /// What this facilitator handles.
    pub fn supported(&self) -> SupportedResponse {
        let network = self.network();
        let mut response = SupportedResponse::default();
        response.kinds.push(SupportedKind {
            x402_version: 1,
            scheme: SCHEME_EXACT.to_string(),
            network: network.v1_name(),
            extra: None,
        });
        response.kinds.push(SupportedKind {
            x402_version: 2,
            scheme: SCHEME_EXACT.to_string(),
            network: network.caip2(),
            extra: None,
        });
        response.signers.insert(
            "eip155:*".to_string(),
            self.senders
                .iter()
                .map(|sender| sender.address().to_checksum(None))
                .collect(),
        );
        response
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl bursar_facilitator_client::Facilitator for LocalFacilitator {
    async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, bursar_facilitator_client::FacilitatorError> {
        Ok(LocalFacilitator::verify(self, request).await)
    }

    async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, bursar_facilitator_client::FacilitatorError> {
        Ok(LocalFacilitator::settle(self, request).await)
    }

    async fn supported(
        &self,
    ) -> Result<SupportedResponse, bursar_facilitator_client::FacilitatorError> {
        Ok(LocalFacilitator::supported(self))
    }
}
