//! Verification and exactly-once settlement, independent of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, keccak256};
use alloy_sol_types::{SolCall, sol};
use bursar_chain::{Account, CallOutcome, CallRequest, ChainError, EvmChain, Token};
use bursar_contracts::{describe_revert, revert_reason};
use bursar_protocol::exact_evm::{self, CheckedPayment, Invalid, SCHEME_EXACT};
use bursar_protocol::facilitator::network_name;
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, Reason, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse,
};
use bursar_store::{
    Claim, Claimant, LedgerError, LedgerKey, SettlementLedger, SettlementRecord, SettlementState,
    SqliteLedger, Submission,
};
use tokio::sync::{oneshot, watch};

use crate::batch::{self, BatchConfig, Batcher, Queued};
use crate::hooks::{FacilitatorHooks, NoHooks, payer_of};
use crate::metrics::FacilitatorMetrics;
use crate::paid::{self, Terms};
use crate::tokens::{self, ProbeFailure, TokenSupport, TokenSupportCache};

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
pub const LEDGER_POLL_INTERVAL: Duration = Duration::from_millis(100);
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

sol! {
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}

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

/// One authorization, as the token identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AuthorizationKey {
    token: Address,
    payer: Address,
    nonce: B256,
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
    entries: HashMap<AuthorizationKey, Entry>,
    /// Finished keys, oldest first, to bound memory.
    finished: VecDeque<AuthorizationKey>,
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
        Self::with_ledger(chain, sender, config, Arc::new(SqliteLedger::memory()))
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

    /// Verifies a payment: the hooks' `before_verify`, every stateless check, then the token's
    /// domain, the nonce and the balance; `after_verify` sees the answer.
    #[tracing::instrument(name = "facilitator.verify", skip_all, fields(
        network = %request.requirements.network.caip2(), outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
    ))]
    pub async fn verify(&self, request: &FacilitatorRequest) -> VerifyResponse {
        let started = Instant::now();
        let hooks = self.hooks();
        let response = match hooks.before_verify(request).await {
            Ok(()) => self.verify_unhooked(request).await,
            Err(refusal) => VerifyResponse::invalid(
                refusal.reason,
                refusal.message,
                payer_of(request).map(|payer| payer.to_checksum(None)),
            ),
        };
        hooks.after_verify(request, &response).await;
        self.metrics.verified(&response, started.elapsed());
        response
    }

    async fn verify_unhooked(&self, request: &FacilitatorRequest) -> VerifyResponse {
        match self.check(request).await {
            Ok(checked) => VerifyResponse::valid(checked.payer.to_checksum(None)),
            Err(invalid) => invalid_response(invalid),
        }
    }

    async fn check(&self, request: &FacilitatorRequest) -> Result<CheckedPayment, Invalid> {
        if request.payload.version != request.version {
            return Err(Invalid::new(
                Reason::INVALID_X402_VERSION,
                "payload version differs from the request's",
            ));
        }
        let checked = exact_evm::check_payment(
            &request.payload,
            &request.requirements,
            self.chain.chain_id(),
            now_seconds(),
        )?;
        if let Some(assets) = &self.config.assets
            && !assets.contains(&checked.token)
        {
            return Err(Invalid {
                reason: Reason::INVALID_PAYMENT_REQUIREMENTS,
                message: format!("asset {} is not settled by this facilitator", checked.token),
                payer: Some(checked.payer),
            });
        }
        self.check_on_chain(request, &checked).await?;
        Ok(checked)
    }

    async fn check_on_chain(
        &self,
        request: &FacilitatorRequest,
        checked: &CheckedPayment,
    ) -> Result<(), Invalid> {
        let payer = checked.payer;
        let authorization = &checked.payload.authorization;
        let known = self.token_support.known(checked.token);
        if let Some(TokenSupport::Unsupported { why }) = &known {
            return Err(unsupported_token(why, payer));
        }
        let token = Token::new(self.chain.clone(), checked.token);
        let chain_failure = |error: ChainError| chain_failure(error, payer);
        let (separator, reading) = match &self.reads {
            Some(reads) => {
                tokio::join!(
                    self.domain_separator(checked.token),
                    reads.read(checked.token, payer, authorization.nonce),
                )
            }
            None => {
                let (separator, used, balance) = tokio::join!(
                    self.domain_separator(checked.token),
                    token.authorization_state(payer, authorization.nonce),
                    token.balance_of(payer),
                );
                let reading = match (used, balance) {
                    (Ok(used), Ok(balance)) => Ok(Some((balance, used))),
                    (Err(error), _) | (_, Err(error)) => Err(error),
                };
                (separator, reading)
            }
        };
        let (balance, used) = match reading {
            Ok(Some(answer)) => answer,
            failed => {
                return Err(self
                    .unreadable(checked, known.is_none(), failed.err())
                    .await);
            }
        };
        if let Some(on_chain) = separator.map_err(chain_failure)? {
            let (name, version) = request
                .requirements
                .eip712_name_version()
                .unwrap_or_default();
            let claimed =
                exact_evm::token_domain(name, version, checked.chain_id, checked.token).separator();
            if claimed != on_chain {
                return Err(Invalid {
                    reason: Reason::TOKEN_DOMAIN_MISMATCH,
                    message: format!(
                        "the token's EIP-712 domain is not name {name:?}, version {version:?}"
                    ),
                    payer: Some(payer),
                });
            }
        }
        if used {
            return Err(Invalid {
                reason: Reason::NONCE_ALREADY_USED,
                message: format!(
                    "authorization nonce {} was already used or cancelled",
                    authorization.nonce
                ),
                payer: Some(payer),
            });
        }
        if balance < authorization.value.atomic() {
            return Err(Invalid {
                reason: Reason::INSUFFICIENT_FUNDS,
                message: format!(
                    "payer balance {balance} is below the amount {}",
                    authorization.value
                ),
                payer: Some(payer),
            });
        }
        if known.is_none() {
            self.learn_token_support(checked).await?;
        }
        Ok(())
    }

    /// The refusal of a payment whose chain reads failed (`error`, or `None` when the token did
    /// not answer a grouped read). For a token not known yet, whether it has EIP-3009 at all is
    /// found out first, and kept.
    async fn unreadable(
        &self,
        checked: &CheckedPayment,
        unknown: bool,
        error: Option<ChainError>,
    ) -> Invalid {
        let payer = checked.payer;
        let read_error = error.unwrap_or_else(|| {
            ChainError::Reverted("the token did not answer balanceOf / authorizationState".into())
        });
        if !unknown {
            return chain_failure(read_error, payer);
        }
        let missing = tokens::missing_eip3009(
            self.chain.as_ref(),
            checked.token,
            payer,
            checked.payload.authorization.nonce,
        )
        .await;
        match missing {
            Ok(Some(why)) => {
                tracing::warn!(token = %checked.token, %why, "asset refused");
                match self
                    .token_support
                    .learn(checked.token, TokenSupport::Unsupported { why })
                {
                    TokenSupport::Unsupported { why } => unsupported_token(&why, payer),
                    TokenSupport::Settles { .. } => chain_failure(read_error, payer),
                }
            }
            Ok(None) => chain_failure(read_error, payer),
            Err(error) => chain_failure(error, payer),
        }
    }

    /// The first payment in a token whose support is unknown finds it out (see [`crate::tokens`]):
    /// `Err` refuses this payment, for what was learned or for an inconclusive probe.
    async fn learn_token_support(&self, checked: &CheckedPayment) -> Result<(), Invalid> {
        let payer = checked.payer;
        let authorization = &checked.payload.authorization;
        let support = self
            .token_support
            .get_or_probe(checked.token, move || async move {
                let support = tokens::probe_settlement(
                    self.chain.as_ref(),
                    self.sender.address(),
                    checked.token,
                    authorization,
                    &checked.payload.signature,
                )
                .await?;
                tracing::info!(token = %checked.token, support = ?support, "learned what the asset supports");
                Ok(support)
            })
            .await;
        match support {
            Ok(TokenSupport::Settles { .. }) => Ok(()),
            Ok(TokenSupport::Unsupported { why }) => Err(unsupported_token(&why, payer)),
            Err(ProbeFailure::Reverted(data)) => Err(Invalid {
                reason: revert_reason(&data).unwrap_or(Reason::SIMULATION_FAILED),
                message: format!(
                    "transferWithAuthorization would revert: {}",
                    describe_revert(&data)
                ),
                payer: Some(payer),
            }),
            Err(ProbeFailure::Chain(error)) => Err(chain_failure(error, payer)),
        }
    }

    /// What this facilitator learned about `token` (see [`crate::tokens`]); `None` until a
    /// payment in it was verified far enough to find out.
    pub fn token_support(&self, token: Address) -> Option<TokenSupport> {
        self.token_support.known(token)
    }

    /// The token's `DOMAIN_SEPARATOR()`, cached; `None` when the token does not expose one.
    async fn domain_separator(&self, token: Address) -> Result<Option<B256>, ChainError> {
        if let Some(cached) = self.domain_separators.read().expect("lock").get(&token) {
            return Ok(*cached);
        }
        let outcome = self
            .chain
            .call(CallRequest {
                to: Some(token),
                data: DOMAIN_SEPARATORCall {}.abi_encode().into(),
                ..Default::default()
            })
            .await?;
        let separator = match outcome {
            CallOutcome::Success(output) => DOMAIN_SEPARATORCall::abi_decode_returns(&output).ok(),
            CallOutcome::Revert(_) => None,
        };
        self.domain_separators
            .write()
            .expect("lock")
            .insert(token, separator);
        Ok(separator)
    }

    /// Settles a payment exactly once.
    ///
    /// Concurrent or later calls with the identical payment get the first call's outcome (same
    /// transaction hash) and never cause a second transaction. A different payment that reuses an
    /// authorization nonce is verified on its own and refused.
    ///
    /// The hooks' `before_settle` runs first (a refusal moves nothing); `after_settle` sees the
    /// answer.
    #[tracing::instrument(name = "facilitator.settle", skip_all, fields(
        network = %request.requirements.network.caip2(), outcome = tracing::field::Empty,
        reason = tracing::field::Empty, transaction = tracing::field::Empty,
    ))]
    pub async fn settle(&self, request: &FacilitatorRequest) -> SettleResponse {
        let started = Instant::now();
        let hooks = self.hooks();
        let mut response = match hooks.before_settle(request).await {
            Ok(()) => self.settle_unhooked(request).await,
            Err(refusal) => SettleResponse::failed(
                refusal.reason,
                refusal.message,
                payer_of(request).map(|payer| payer.to_checksum(None)),
                request.network_name(),
            ),
        };
        // A recorded outcome (or one recovery derived) may name the network in the other x402
        // version's form; the caller gets its own.
        response.network = request.network_name();
        hooks.after_settle(request, &response).await;
        self.metrics.settled(&response, started.elapsed());
        response
    }

    async fn settle_unhooked(&self, request: &FacilitatorRequest) -> SettleResponse {
        let network = request.network_name();
        let exact = match request.payload.payload.exact_evm() {
            Ok(exact) => exact,
            Err(message) => {
                // Another scheme is refused for its scheme, as verification refuses it.
                let (reason, message) =
                    match exact_evm::check_scheme(&request.payload, &request.requirements) {
                        Err(invalid) => (invalid.reason, invalid.message),
                        Ok(()) => (Reason::INVALID_PAYLOAD, message.to_string()),
                    };
                return SettleResponse::failed(reason, message, None, network);
            }
        };
        let Ok(token) = request.requirements.asset.parse::<Address>() else {
            return SettleResponse::failed(
                Reason::INVALID_PAYMENT_REQUIREMENTS,
                format!(
                    "asset {:?} is not an EVM address",
                    request.requirements.asset
                ),
                Some(exact.authorization.from.to_checksum(None)),
                network,
            );
        };
        let key = AuthorizationKey {
            token,
            payer: exact.authorization.from,
            nonce: exact.authorization.nonce,
        };
        let fingerprint = payment_fingerprint(request);
        let terms = Terms {
            pay_to: exact.authorization.to,
            value: exact.authorization.value.atomic(),
        };
        let payer = Some(exact.authorization.from.to_checksum(None));
        match payment_identifier(request) {
            Err(message) => {
                return SettleResponse::failed(
                    Reason::other(PAYMENT_ID_INVALID),
                    message,
                    payer,
                    network,
                );
            }
            Ok(None) => {}
            Ok(Some(id)) => match self.ledger.get_by_payment_id(&id).await {
                Ok(Some(holder))
                    if holder.key != self.ledger_key(key)
                        || holder.fingerprint != fingerprint.to_string() =>
                {
                    return payment_id_conflict(&id, payer, network);
                }
                Ok(_) => {}
                Err(error) => return ledger_failure(error, payer, network),
            },
        }

        enum Action {
            Return(SettleResponse),
            Join(watch::Receiver<Option<SettleResponse>>),
            Lead(watch::Sender<Option<SettleResponse>>),
            VerifyAlone,
        }
        let action = {
            let mut settlements = self.settlements.lock().expect("lock");
            match settlements.entries.get(&key) {
                Some(Entry::Done {
                    fingerprint: done,
                    outcome,
                }) if *done == fingerprint => Action::Return(outcome.clone()),
                Some(Entry::InFlight {
                    fingerprint: running,
                    outcome,
                }) => {
                    if *running == fingerprint {
                        Action::Join(outcome.clone())
                    } else {
                        Action::Return(SettleResponse::failed(
                            Reason::SETTLEMENT_IN_PROGRESS,
                            "another payment with this authorization nonce is being settled",
                            Some(key.payer.to_checksum(None)),
                            network.clone(),
                        ))
                    }
                }
                // A finished entry for a different payment: verify this one on its own (the nonce is
                // used, so it will be refused).
                Some(Entry::Done { .. }) => Action::VerifyAlone,
                None => {
                    let (publisher, outcome) = watch::channel(None);
                    settlements.entries.insert(
                        key,
                        Entry::InFlight {
                            fingerprint,
                            outcome,
                        },
                    );
                    Action::Lead(publisher)
                }
            }
        };
        let publisher = match action {
            Action::Return(outcome) => return outcome,
            Action::Join(mut outcome) => return wait_for_outcome(&mut outcome, network).await,
            Action::VerifyAlone => return self.refuse_reused_nonce(request, network).await,
            Action::Lead(publisher) => publisher,
        };
        // Settle in a task of its own so a caller that hangs up cannot abandon a settlement that
        // other callers are waiting on, or that has already been broadcast.
        let this = self.clone();
        let request = request.clone();
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let (outcome, remember) = this
                .settle_durably(&request, key, fingerprint, terms, request.network_name())
                .await;
            this.finish(key, fingerprint, &outcome, remember);
            let _ = publisher.send(Some(outcome.clone()));
            outcome
        }));
        match task.await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.settlements.lock().expect("lock").entries.remove(&key);
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("settlement task failed: {error}"),
                    Some(key.payer.to_checksum(None)),
                    network,
                )
            }
        }
    }

    /// Records a finished settlement. Outcomes that reached the chain are remembered; refusals
    /// before broadcast are forgotten so the payer may fix the problem and try again.
    fn finish(
        &self,
        key: AuthorizationKey,
        fingerprint: B256,
        outcome: &SettleResponse,
        remember: bool,
    ) {
        let mut settlements = self.settlements.lock().expect("lock");
        if !remember {
            settlements.entries.remove(&key);
            return;
        }
        settlements.entries.insert(
            key,
            Entry::Done {
                fingerprint,
                outcome: outcome.clone(),
            },
        );
        settlements.finished.push_back(key);
        while settlements.finished.len() > SETTLED_REMEMBERED_MAX {
            if let Some(oldest) = settlements.finished.pop_front() {
                settlements.entries.remove(&oldest);
            }
        }
    }

    /// The ledger's name for an authorization on this facilitator's chain.
    fn ledger_key(&self, key: AuthorizationKey) -> LedgerKey {
        LedgerKey::new(self.network(), key.token, key.payer, key.nonce)
    }

    /// Settles through the ledger: claim the authorization, or follow whoever holds it.
    /// Returns the outcome and whether it is final (to be remembered in memory).
    async fn settle_durably(
        &self,
        request: &FacilitatorRequest,
        key: AuthorizationKey,
        fingerprint: B256,
        terms: Terms,
        network: String,
    ) -> (SettleResponse, bool) {
        let ledger_key = self.ledger_key(key);
        let fingerprint = fingerprint.to_string();
        let payer = Some(key.payer.to_checksum(None));
        let deadline = Instant::now() + SETTLED_ELSEWHERE_WAIT_TIMEOUT;
        let payment_id = payment_identifier(request).ok().flatten();
        let claimant = Claimant {
            fingerprint: fingerprint.clone(),
            holder: self.holder.clone(),
            payment_id: payment_id.clone(),
            pay_to: terms.pay_to,
            amount: Amount::from_atomic(terms.value),
        };
        loop {
            let claim = match self.ledger.claim(&ledger_key, &claimant).await {
                Ok(claim) => claim,
                Err(error) => return (ledger_failure(error, payer, network), false),
            };
            let record = match claim {
                Claim::Claimed => match self
                    .settle_claimed(request, &ledger_key, network.clone())
                    .await
                {
                    Settled::Done(outcome, remember) => return (outcome, remember),
                    // Another process took the claim over before the broadcast was recorded:
                    // nothing was sent; follow the new holder.
                    Settled::ClaimLost => continue,
                },
                Claim::PaymentIdConflict { .. } => {
                    let id = payment_id.as_deref().unwrap_or_default();
                    return (payment_id_conflict(id, payer, network), false);
                }
                Claim::Existing(record) => record,
            };
            if record.fingerprint != fingerprint {
                // Another payment holds this authorization.
                let outcome = if record.state.is_final() {
                    self.refuse_reused_nonce(request, network).await
                } else if record.state == SettlementState::Received
                    && self.abandoned(&record)
                    && matches!(
                        self.ledger
                            .release(&record.key, record.holder.as_deref())
                            .await,
                        Ok(true)
                    )
                {
                    // Its holder stopped before broadcasting anything: free it and claim again.
                    continue;
                } else {
                    in_progress(payer, network)
                };
                return (outcome, false);
            }
            match self.follow(*record, deadline, key, terms).await {
                Ok(Followed::Finished(outcome)) => return (outcome, true),
                // Released before broadcast (by its holder or by recovery): claim it again.
                Ok(Followed::Released) => continue,
                // Its holder died before recording a broadcast; the claim is now ours.
                Ok(Followed::TakenOver) => {
                    match self
                        .settle_claimed(request, &ledger_key, network.clone())
                        .await
                    {
                        Settled::Done(outcome, remember) => return (outcome, remember),
                        Settled::ClaimLost => continue,
                    }
                }
                Ok(Followed::Held { message }) => {
                    return (
                        SettleResponse::failed(
                            Reason::SETTLEMENT_IN_PROGRESS,
                            message,
                            payer,
                            network,
                        ),
                        false,
                    );
                }
                Ok(Followed::StillRunning) => return (in_progress(payer, network), false),
                Err(error) => return (ledger_failure(error, payer, network), false),
            }
        }
    }

    /// Whether the holder of an unfinished row is gone, so that its claim may be taken over or
    /// released, and an unmined transaction it recorded may be judged from the chain: the row is
    /// older than the claim hold, or was left by an earlier life of this instance. Rows this
    /// process holds are its own settlements at work, unless older than any of them can take.
    fn abandoned(&self, record: &SettlementRecord) -> bool {
        let age_ms = now_ms().saturating_sub(record.updated_at_ms);
        let hold_ms = duration_ms(self.claim_hold);
        match record.holder.as_deref() {
            Some(holder) if holder == self.holder => {
                age_ms > hold_ms.saturating_add(duration_ms(SETTLE_RECEIPT_TIMEOUT))
            }
            Some(holder)
                if self
                    .instance_prefix
                    .as_deref()
                    .is_some_and(|prefix| holder.starts_with(prefix)) =>
            {
                true
            }
            _ => age_ms > hold_ms,
        }
    }

    /// Follows a settlement of this same payment held elsewhere (another process, an earlier
    /// life of this one): finishes it from the chain once its transaction is mined, takes over
    /// or releases what its dead holder left, and otherwise waits, at most until `deadline` for a
    /// broadcast transaction and [`HELD_CLAIM_WAIT`] for a claim nothing was broadcast for.
    async fn follow(
        &self,
        mut record: SettlementRecord,
        deadline: Instant,
        authorization: AuthorizationKey,
        terms: Terms,
    ) -> Result<Followed, LedgerError> {
        let started = Instant::now();
        let mut examined = false;
        loop {
            match record.state {
                SettlementState::Confirmed => {
                    return Ok(Followed::Finished(self.recorded_response(&record)));
                }
                SettlementState::Failed => {
                    let recorded = self.recorded_response(&record);
                    return Ok(Followed::Finished(
                        self.paid_after_all(&record.key, authorization, terms, recorded)
                            .await,
                    ));
                }
                SettlementState::Received => {
                    if self.abandoned(&record) {
                        // Nothing was broadcast for it, so an authorization the chain shows used
                        // was used by another transaction: answer from the chain, as recovery
                        // does, rather than take the claim over only to be refused for a used
                        // nonce.
                        let token = Token::new(self.chain.clone(), authorization.token);
                        if let Ok(true) = token
                            .authorization_state(authorization.payer, authorization.nonce)
                            .await
                        {
                            let mut judged = record.clone();
                            judged.pay_to.get_or_insert(terms.pay_to);
                            judged
                                .amount
                                .get_or_insert(Amount::from_atomic(terms.value));
                            let network = self.network().caip2();
                            if let RecoveryOutcome::Confirmed | RecoveryOutcome::Failed { .. } =
                                self.finish_used(&judged, authorization, network).await
                                && let Some(finished) = self.ledger.get(&record.key).await?
                            {
                                return Ok(Followed::Finished(self.recorded_response(&finished)));
                            }
                        } else if self.ledger.take_over(&record, &self.holder).await? {
                            return Ok(Followed::TakenOver);
                        }
                    } else if started.elapsed() >= HELD_CLAIM_WAIT {
                        let lapses_in_ms = duration_ms(self.claim_hold)
                            .saturating_sub(now_ms().saturating_sub(record.updated_at_ms))
                            .max(0);
                        return Ok(Followed::Held {
                            message: format!(
                                "another facilitator process claimed this authorization and has not \
                                 broadcast it yet; if that process stopped, its claim lapses in {} s: \
                                 retry then",
                                (lapses_in_ms + 999) / 1_000
                            ),
                        });
                    }
                }
                SettlementState::Submitted => {
                    if let Some((hash, pending)) = submitted_transaction(&record)
                        && let Ok(Some(receipt)) = self.chain.receipt(hash).await
                    {
                        let (outcome, state) = self
                            .mined_row_outcome(&record, &pending, hash, &receipt)
                            .await;
                        self.record_finish(&record.key, &outcome, state).await;
                        return Ok(Followed::Finished(outcome));
                    }
                    if !examined && self.abandoned(&record) {
                        examined = true;
                        match self.recover_submitted(&record, true).await {
                            RecoveryOutcome::Released => return Ok(Followed::Released),
                            RecoveryOutcome::Pending { .. } => {}
                            RecoveryOutcome::Confirmed | RecoveryOutcome::Failed { .. } => {
                                if let Some(finished) = self.ledger.get(&record.key).await? {
                                    return Ok(Followed::Finished(
                                        self.recorded_response(&finished),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Followed::StillRunning);
            }
            tokio::time::sleep(LEDGER_POLL_INTERVAL).await;
            match self.ledger.get(&record.key).await? {
                Some(again) => record = again,
                None => return Ok(Followed::Released),
            }
        }
    }

    /// The response a final row recorded.
    fn recorded_response(&self, record: &SettlementRecord) -> SettleResponse {
        record.response.clone().unwrap_or_else(|| {
            SettleResponse::failed(
                Reason::UNEXPECTED_SETTLE_ERROR,
                format!("the ledger holds no response for settlement {}", record.key),
                None,
                self.network().caip2(),
            )
        })
    }

    /// A recorded failure, unless the chain shows the payment made after all (another
    /// transaction used the authorization and moved exactly what it names): then the row is
    /// corrected and the answer is success with that transaction. A paid authorization is never
    /// answered with an error.
    async fn paid_after_all(
        &self,
        key: &LedgerKey,
        authorization: AuthorizationKey,
        terms: Terms,
        recorded: SettleResponse,
    ) -> SettleResponse {
        if recorded.success {
            return recorded;
        }
        let Some(hash) = self.used_to_pay(authorization, Some(terms)).await else {
            return recorded;
        };
        let paid = paid_response(authorization.payer, hash, recorded.network.clone());
        match self.ledger.correct_to_paid(key, &paid).await {
            Ok(_) => {
                tracing::warn!(%key, tx = %hash, "a settlement recorded as failed was paid on chain; corrected")
            }
            Err(error) => {
                tracing::error!(%error, %key, "could not correct a settlement paid on chain")
            }
        }
        paid
    }

    /// The transaction that used `authorization` to pay `terms`, when the token says it is used;
    /// `None` when unused, used otherwise, or the chain could not be read.
    async fn used_to_pay(
        &self,
        authorization: AuthorizationKey,
        terms: Option<Terms>,
    ) -> Option<B256> {
        let token = Token::new(self.chain.clone(), authorization.token);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                tracing::warn!(%error, "cannot read an authorization's state");
                return None;
            }
        }
        match paid::transaction_that_paid(
            self.chain.as_ref(),
            authorization.token,
            authorization.payer,
            authorization.nonce,
            terms,
        )
        .await
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot search the chain for the transaction that used an authorization");
                None
            }
        }
    }

    /// A payment presenting an authorization the ledger holds for a different payment: verified
    /// on its own for the precise reason, and never broadcast.
    async fn refuse_reused_nonce(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> SettleResponse {
        match self.check(request).await {
            Err(invalid) => {
                let payer = invalid.payer.map(|p| p.to_checksum(None));
                SettleResponse::failed(invalid.reason, invalid.message, payer, network)
            }
            Ok(checked) => SettleResponse::failed(
                Reason::NONCE_ALREADY_USED,
                format!(
                    "authorization nonce {} was already presented with a different payment",
                    checked.payload.authorization.nonce
                ),
                Some(checked.payer.to_checksum(None)),
                network,
            ),
        }
    }

    /// Verifies, simulates, records the transaction, broadcasts it, waits, records the outcome.
    /// The caller holds `key` in the ledger.
    async fn settle_claimed(
        &self,
        request: &FacilitatorRequest,
        key: &LedgerKey,
        network: String,
    ) -> Settled {
        if let Some(batcher) = &self.batcher {
            let (outcome, remember) = self.settle_batched(batcher, request, key, network).await;
            return Settled::Done(outcome, remember);
        }
        let checked = match self.prepare(request, network.clone()).await {
            Ok(checked) => checked,
            Err(refusal) => {
                self.release_claim(key).await;
                return Settled::Done(refusal, false);
            }
        };
        let payer = checked.payer.to_checksum(None);
        let authorization = &checked.payload.authorization;
        let pending = |hash: B256| SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(payer.clone()),
            transaction: hash.to_string(),
            network: network.clone(),
        };
        let valid_before_s = u64::try_from(authorization.valid_before).unwrap_or(u64::MAX);
        // The transaction is recorded before it is broadcast: a crash at any point leaves either
        // a `received` claim (nothing was sent) or a `submitted` row naming the transaction.
        let recorded: std::sync::Mutex<Option<B256>> = std::sync::Mutex::new(None);
        let ledger_error: std::sync::Mutex<Option<LedgerError>> = std::sync::Mutex::new(None);
        let token = Token::new(self.chain.clone(), checked.token);
        let sent = token
            .submit_transfer_with_authorization_recorded(
                &self.sender,
                authorization,
                &checked.payload.signature,
                Some(SETTLE_GAS_LIMIT),
                |hash, nonce| {
                    let submission = Submission {
                        tx_hash: hash.to_string(),
                        sender: self.sender.address(),
                        sender_nonce: nonce,
                        valid_before_s,
                        pending_response: pending(hash),
                    };
                    let (recorded, ledger_error) = (&recorded, &ledger_error);
                    async move {
                        match self
                            .ledger
                            .mark_submitted(key, &self.holder, &submission)
                            .await
                        {
                            Ok(()) => {
                                *recorded.lock().expect("lock") = Some(hash);
                                Ok(())
                            }
                            Err(error) => {
                                *ledger_error.lock().expect("lock") = Some(error);
                                Err(ChainError::Rejected(
                                    "the settlement ledger did not record the transaction".into(),
                                ))
                            }
                        }
                    }
                },
            )
            .await;
        let recorded = *recorded.lock().expect("lock");
        let ledger_error = ledger_error.lock().expect("lock").take();
        let hash = match (sent, recorded, ledger_error) {
            (Ok(hash), _, _) => hash,
            (Err(_), _, Some(LedgerError::Transition { .. })) => return Settled::ClaimLost,
            (Err(_), _, Some(error)) => {
                self.release_claim(key).await;
                return Settled::Done(ledger_failure(error, Some(payer), network), false);
            }
            // The answer to the broadcast was lost: it may be in a mempool. The row stays
            // `submitted`; wait for the receipt as if it had been sent.
            (
                Err(error @ (ChainError::Transport(_) | ChainError::Timeout(_))),
                Some(hash),
                None,
            ) => {
                tracing::warn!(%error, tx = %hash, "settlement broadcast answer lost; waiting for its receipt");
                hash
            }
            (Err(error), recorded, None) => {
                // The node definitively refused it (or it was never signed): nothing was
                // broadcast; free the authorization so the payer may retry.
                let released = match recorded {
                    Some(hash) => self
                        .ledger
                        .release_unsent(std::slice::from_ref(key), &hash.to_string())
                        .await
                        .map(|_| ()),
                    None => self
                        .ledger
                        .release(key, Some(&self.holder))
                        .await
                        .map(|_| ()),
                };
                if let Err(release_error) = released {
                    tracing::error!(%release_error, %key, "could not release a refused settlement");
                }
                tracing::warn!(%error, payer = %payer, "settlement transaction was not accepted");
                return Settled::Done(
                    SettleResponse::failed(
                        Reason::UNEXPECTED_SETTLE_ERROR,
                        error.to_string(),
                        Some(payer),
                        network,
                    ),
                    false,
                );
            }
        };
        match batch::confirmed_receipt(
            self.chain.as_ref(),
            hash,
            self.config.confirmations,
            SETTLE_RECEIPT_TIMEOUT,
        )
        .await
        {
            Ok(receipt) => {
                self.metrics
                    .gas_spent(receipt.gas_used, receipt.effective_gas_price);
                let (mut outcome, mut state) = mined_outcome(&pending(hash), hash, receipt.success);
                if receipt.success {
                    tracing::info!(tx = %hash, payer = %payer, value = %authorization.value, "settled");
                } else if let Some(paid_by) = self
                    .used_to_pay(
                        AuthorizationKey {
                            token: checked.token,
                            payer: checked.payer,
                            nonce: authorization.nonce,
                        },
                        Some(Terms {
                            pay_to: authorization.to,
                            value: authorization.value.atomic(),
                        }),
                    )
                    .await
                {
                    // Another transaction used the authorization first and paid exactly this.
                    tracing::warn!(tx = %hash, %paid_by, "settlement transaction reverted; the authorization was paid by another transaction");
                    outcome = paid_response(checked.payer, paid_by, network.clone());
                    state = SettlementState::Confirmed;
                }
                self.record_finish(key, &outcome, state).await;
                Settled::Done(outcome, true)
            }
            // Broadcast but not seen mined: the ledger keeps it `submitted`, so a retry waits on
            // the chain rather than sending again, and recovery finishes it.
            Err(error) => Settled::Done(
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("transaction {hash} was sent but not confirmed: {error}"),
                    Some(payer),
                    network,
                ),
                false,
            ),
        }
    }

    /// Gives up this process's claim on `key` (nothing was broadcast for it).
    async fn release_claim(&self, key: &LedgerKey) {
        if let Err(error) = self.ledger.release(key, Some(&self.holder)).await {
            tracing::error!(%error, %key, "could not release a refused settlement");
        }
    }

    async fn record_finish(
        &self,
        key: &LedgerKey,
        outcome: &SettleResponse,
        state: SettlementState,
    ) {
        if let Err(error) = self.ledger.finish(key, outcome, state).await {
            // Another process finishing the same mined transaction first is expected; the outcome
            // is the same, derived from the same receipt.
            tracing::debug!(%error, %key, "settlement already finished");
        }
    }

    /// Verifies and simulates, then queues the settlement for a batch and waits for its outcome.
    async fn settle_batched(
        &self,
        batcher: &Batcher,
        request: &FacilitatorRequest,
        key: &LedgerKey,
        network: String,
    ) -> (SettleResponse, bool) {
        let prepared = if batcher.simulate_items() {
            self.prepare(request, network.clone()).await
        } else {
            self.check(request).await.map_err(|invalid| {
                SettleResponse::failed(
                    invalid.reason,
                    invalid.message,
                    invalid.payer.map(|p| p.to_checksum(None)),
                    network.clone(),
                )
            })
        };
        let checked = match prepared {
            Ok(checked) => checked,
            Err(refusal) => {
                self.release_claim(key).await;
                return (refusal, false);
            }
        };
        let payer = checked.payer.to_checksum(None);
        let authorization = checked.payload.authorization.clone();
        let (reply, outcome) = oneshot::channel();
        let queued = Queued {
            key: key.clone(),
            item: bursar_contracts::BatchItem {
                token: checked.token,
                authorization: authorization.clone(),
                signature: checked.payload.signature.clone(),
            },
            pending: SettleResponse {
                success: true,
                error_reason: None,
                error_message: None,
                payer: Some(payer.clone()),
                transaction: String::new(),
                network: network.clone(),
            },
            valid_before_s: u64::try_from(authorization.valid_before).unwrap_or(u64::MAX),
            reply,
        };
        if !batcher.enqueue(queued) {
            self.release_claim(key).await;
            return (
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!(
                        "the settlement queue is full ({} waiting); try again shortly",
                        batch::BATCH_QUEUE_MAX
                    ),
                    Some(payer),
                    network,
                ),
                false,
            );
        }
        match outcome.await {
            Ok(outcome) => outcome,
            Err(_) => (
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    "the batcher stopped before this settlement finished",
                    Some(payer),
                    network,
                ),
                false,
            ),
        }
    }

    /// The outcome a mined transaction gives a `submitted` row: per item for a batch. A
    /// transaction that did not use the row's authorization because another one did first gives
    /// success with that one, if it paid what the row's payment names.
    async fn mined_row_outcome(
        &self,
        record: &SettlementRecord,
        pending: &SettleResponse,
        hash: B256,
        receipt: &bursar_chain::Receipt,
    ) -> (SettleResponse, SettlementState) {
        let authorization = authorization_of(&record.key);
        let terms = record_terms(record);
        if receipt.success
            && let Some(outcome) = batch::receipt_item_outcome(
                receipt,
                authorization.token,
                authorization.payer,
                authorization.nonce,
            )
        {
            let item = batch::ItemRef {
                token: authorization.token,
                payer: authorization.payer,
                nonce: authorization.nonce,
                terms,
            };
            return batch::item_response(self.chain.clone(), pending, &item, hash, outcome).await;
        }
        let (outcome, state) = mined_outcome(pending, hash, receipt.success);
        if state == SettlementState::Failed
            && terms.is_some()
            && let Some(paid_by) = self.used_to_pay(authorization, terms).await
        {
            return (
                paid_response(authorization.payer, paid_by, pending.network.clone()),
                SettlementState::Confirmed,
            );
        }
        (outcome, state)
    }

    /// Verifies and simulates. `Err` is a refusal.
    async fn prepare(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> Result<CheckedPayment, SettleResponse> {
        let checked = match self.check(request).await {
            Ok(checked) => checked,
            Err(invalid) => {
                let payer = invalid.payer.map(|p| p.to_checksum(None));
                return Err(SettleResponse::failed(
                    invalid.reason,
                    invalid.message,
                    payer,
                    network,
                ));
            }
        };
        let payer = checked.payer.to_checksum(None);
        let authorization = &checked.payload.authorization;
        let signature = &checked.payload.signature;
        let token = Token::new(self.chain.clone(), checked.token);
        let refused = |reason: Reason, message: String| {
            SettleResponse::failed(reason, message, Some(payer.clone()), network.clone())
        };

        // Simulate first: a transaction that would revert costs gas and settles nothing.
        match token
            .simulate_transfer_with_authorization(self.sender.address(), authorization, signature)
            .await
        {
            Ok(CallOutcome::Success(_)) => {}
            Ok(CallOutcome::Revert(data)) => {
                return Err(refused(
                    Reason::SIMULATION_FAILED,
                    format!(
                        "transferWithAuthorization would revert: {}",
                        describe_revert(&data)
                    ),
                ));
            }
            Err(error) => return Err(refused(Reason::UNEXPECTED_SETTLE_ERROR, error.to_string())),
        }
        Ok(checked)
    }

    /// Finishes or releases what a previous life of this facilitator (or another process sharing
    /// its ledger) left unfinished. Call it at startup, before serving; see the crate docs for
    /// the rules. Never broadcasts anything.
    pub async fn recover(&self) -> Result<Vec<Recovered>, LedgerError> {
        self.recover_rows(None).await
    }

    /// Recovers again every `every`, for as long as the process runs, in a task of its own:
    /// what a crash (of this process or of another sharing the ledger) left behind is finished
    /// or released without waiting for the next restart. Each pass is [`LocalFacilitator::recover`]
    /// over rows untouched for `every` (rows being worked on are left to their holders). Like
    /// recovery at startup, it never broadcasts.
    pub fn spawn_recovery(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: startup recovery has just run.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match this.recover_rows(Some(every)).await {
                    Ok(recovered) => {
                        let finished = recovered
                            .iter()
                            .filter(|r| !matches!(r.outcome, RecoveryOutcome::Pending { .. }))
                            .count();
                        if finished > 0 {
                            tracing::info!(
                                finished,
                                "background recovery finished or released settlements"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "background recovery could not read the ledger; trying again later")
                    }
                }
            }
        })
    }

    /// Recovery over abandoned `received` claims and the `submitted` rows (all of them, or those
    /// untouched for `idle_for`).
    async fn recover_rows(
        &self,
        idle_for: Option<Duration>,
    ) -> Result<Vec<Recovered>, LedgerError> {
        let network = self.network();
        let idle_cutoff_ms = idle_for.map(|idle| now_ms().saturating_sub(duration_ms(idle)));
        let mut recovered = Vec::new();
        for record in self.ledger.received_before(i64::MAX).await? {
            if *record.key.network() != network || !self.abandoned(&record) {
                continue;
            }
            let outcome = self.recover_received(&record).await;
            tracing::warn!(key = %record.key, outcome = ?outcome, "abandoned settlement claim");
            recovered.push(Recovered {
                tx_hash: String::new(),
                key: record.key,
                outcome,
            });
        }
        for record in self.ledger.unfinished().await? {
            if *record.key.network() != network
                || idle_cutoff_ms.is_some_and(|cutoff| record.updated_at_ms > cutoff)
            {
                continue;
            }
            let abandoned = self.abandoned(&record);
            let outcome = self.recover_submitted(&record, abandoned).await;
            match &outcome {
                RecoveryOutcome::Pending { why } => {
                    tracing::warn!(key = %record.key, why = %why, "settlement left unfinished")
                }
                finished => tracing::info!(key = %record.key, outcome = ?finished, "recovered"),
            }
            recovered.push(Recovered {
                tx_hash: record.tx_hash.clone().unwrap_or_default(),
                key: record.key,
                outcome,
            });
        }
        Ok(recovered)
    }

    /// An abandoned `received` claim: nothing was broadcast for it (the broadcast is recorded
    /// first). Unused on chain → released, so the payer may retry at once. Used → paid by a
    /// transaction of someone else's (or of a version of this facilitator that recorded after
    /// broadcasting): confirmed with that transaction if it moved what the payment names.
    async fn recover_received(&self, record: &SettlementRecord) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let authorization = authorization_of(&record.key);
        let token = Token::new(self.chain.clone(), authorization.token);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Err(error) => pending(format!("cannot read the authorization state: {error}")),
            Ok(false) => match self
                .ledger
                .release(&record.key, record.holder.as_deref())
                .await
            {
                Ok(true) => RecoveryOutcome::Released,
                Ok(false) => pending("the claim changed while it was being released".into()),
                Err(error) => pending(format!("cannot release the claim: {error}")),
            },
            Ok(true) => {
                let network = record
                    .response
                    .as_ref()
                    .map_or_else(|| self.network().caip2(), |r| r.network.clone());
                self.finish_used(record, authorization, network).await
            }
        }
    }

    /// Records the outcome of a row whose authorization the chain shows used, with no receipt of
    /// its own transaction: confirmed with the transaction that paid, or failed when another
    /// authorization with the same nonce was used.
    async fn finish_used(
        &self,
        record: &SettlementRecord,
        authorization: AuthorizationKey,
        network: String,
    ) -> RecoveryOutcome {
        let (outcome, state) = match self.used_to_pay(authorization, record_terms(record)).await {
            Some(hash) => (
                paid_response(authorization.payer, hash, network),
                SettlementState::Confirmed,
            ),
            None => (
                SettleResponse::failed(
                    Reason::NONCE_ALREADY_USED,
                    "the authorization nonce was used by a transaction that did not make this payment",
                    Some(authorization.payer.to_checksum(None)),
                    network,
                ),
                SettlementState::Failed,
            ),
        };
        self.finish_recovered(record, outcome, state).await
    }

    async fn finish_recovered(
        &self,
        record: &SettlementRecord,
        outcome: SettleResponse,
        state: SettlementState,
    ) -> RecoveryOutcome {
        if let Err(error) = self.ledger.finish(&record.key, &outcome, state).await {
            return RecoveryOutcome::Pending {
                why: format!("cannot record the outcome: {error}"),
            };
        }
        match state {
            SettlementState::Confirmed => RecoveryOutcome::Confirmed,
            _ => RecoveryOutcome::Failed {
                reason: outcome
                    .error_reason
                    .clone()
                    .unwrap_or(Reason::UNEXPECTED_SETTLE_ERROR),
                message: outcome.error_message.clone().unwrap_or_default(),
            },
        }
    }

    /// A `submitted` row: finished from its receipt when mined; from the chain when the
    /// authorization was used elsewhere or expired unused; released when its holder is gone
    /// (`abandoned`) and its transaction provably never reached the chain: no receipt, and the
    /// sending account's nonce either never reached the recorded one (not even pending) or moved
    /// past it with another transaction. Otherwise it may still be in a mempool: left pending.
    async fn recover_submitted(
        &self,
        record: &SettlementRecord,
        abandoned: bool,
    ) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let Some((hash, pending_response)) = submitted_transaction(record) else {
            return pending("the row has no readable transaction hash or response".into());
        };
        let authorization = authorization_of(&record.key);
        match self.chain.receipt(hash).await {
            Err(error) => return pending(format!("cannot read the receipt of {hash}: {error}")),
            Ok(Some(receipt)) => {
                let (outcome, state) = self
                    .mined_row_outcome(record, &pending_response, hash, &receipt)
                    .await;
                return self.finish_recovered(record, outcome, state).await;
            }
            Ok(None) => {}
        }
        let token = Token::new(self.chain.clone(), authorization.token);
        match token
            .authorization_state(authorization.payer, authorization.nonce)
            .await
        {
            Err(error) => return pending(format!("cannot read the authorization state: {error}")),
            Ok(true) => {
                return self
                    .finish_used(record, authorization, pending_response.network.clone())
                    .await;
            }
            Ok(false) => {}
        }
        let chain_now = match self.chain.latest_block().await {
            Ok(block) => block.timestamp,
            Err(_) => now_seconds(),
        };
        let valid_before = record.valid_before_s.unwrap_or(u64::MAX);
        if chain_now >= valid_before {
            let outcome = SettleResponse::failed(
                Reason::VALID_BEFORE,
                format!(
                    "transaction {hash} was never mined and the authorization expired at {valid_before}; nothing was transferred"
                ),
                pending_response.payer.clone(),
                pending_response.network.clone(),
            );
            return self
                .finish_recovered(record, outcome, SettlementState::Failed)
                .await;
        }
        if !abandoned {
            return pending(format!(
                "transaction {hash} is not mined yet and its holder is at work"
            ));
        }
        let (Some(sender), Some(nonce)) = (record.sender, record.sender_nonce) else {
            return pending(format!(
                "transaction {hash} is not mined and the authorization is unused and valid until {valid_before}; the row does not name its sending account, so it waits"
            ));
        };
        let (pending_count, mined_count) = match tokio::try_join!(
            self.chain.transaction_count(sender),
            self.chain.mined_transaction_count(sender)
        ) {
            Ok(counts) => counts,
            Err(error) => return pending(format!("cannot read the nonce of {sender}: {error}")),
        };
        if pending_count > nonce && mined_count <= nonce {
            return pending(format!(
                "transaction {hash} (nonce {nonce} of {sender}) may be in a mempool; the authorization is unused and valid until {valid_before}"
            ));
        }
        // Never reached the node, or its nonce went to another mined transaction: it can
        // never be mined. Free the authorization so the payer's retry settles it.
        match self
            .ledger
            .release_unsent(std::slice::from_ref(&record.key), &hash.to_string())
            .await
        {
            Ok(1) => RecoveryOutcome::Released,
            Ok(_) => pending("the row changed while it was being released".into()),
            Err(error) => pending(format!("cannot release the settlement: {error}")),
        }
    }
}

/// How [`LocalFacilitator::settle_claimed`] ended.
enum Settled {
    /// The outcome, and whether it is final (to be remembered).
    Done(SettleResponse, bool),
    /// The claim was taken over by another process before the broadcast was recorded; nothing
    /// was sent.
    ClaimLost,
}

/// Where a settlement held elsewhere stands after following it.
enum Followed {
    /// Final: the recorded (or just derived) outcome.
    Finished(SettleResponse),
    /// Its row was released before broadcast: the authorization is free to claim.
    Released,
    /// Its holder was gone before recording a broadcast; this process holds the claim now.
    TakenOver,
    /// A live holder has claimed it and broadcast nothing yet.
    Held { message: String },
    /// Still unmined when the wait ran out.
    StillRunning,
}

/// What [`LocalFacilitator::recover`] did with one unfinished settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub key: LedgerKey,
    pub tx_hash: String,
    pub outcome: RecoveryOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryOutcome {
    /// Paid on chain (by its transaction or by the one that used its authorization): recorded
    /// as confirmed with the response a live settle gives.
    Confirmed,
    /// Mined and reverted with nothing paid, superseded by another authorization with the same
    /// nonce, or expired unmined: recorded as failed.
    Failed { reason: Reason, message: String },
    /// Left as it was (its transaction may still be mined, or the chain could not be read).
    Pending { why: String },
    /// Nothing was or can ever be broadcast for it and its authorization is unused: deleted, so
    /// the payer's retry settles it.
    Released,
}

/// The authorization a ledger key names.
fn authorization_of(key: &LedgerKey) -> AuthorizationKey {
    AuthorizationKey {
        token: key.asset(),
        payer: key.payer(),
        nonce: key.nonce(),
    }
}

/// What a row's payment pays, when the row recorded it.
fn record_terms(record: &SettlementRecord) -> Option<Terms> {
    Some(Terms {
        pay_to: record.pay_to?,
        value: record.amount?.atomic(),
    })
}

/// The answer for an authorization that `hash` used to pay.
fn paid_response(payer: Address, hash: B256, network: String) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(payer.to_checksum(None)),
        transaction: hash.to_string(),
        network,
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The transaction and the response it will give, of a `submitted` row.
fn submitted_transaction(record: &SettlementRecord) -> Option<(B256, SettleResponse)> {
    let hash = record.tx_hash.as_deref()?.parse::<B256>().ok()?;
    Some((hash, record.response.clone()?))
}

/// The outcome of a mined settlement transaction: the pending response, or a revert.
fn mined_outcome(
    pending: &SettleResponse,
    hash: B256,
    success: bool,
) -> (SettleResponse, SettlementState) {
    if success {
        (pending.clone(), SettlementState::Confirmed)
    } else {
        (
            SettleResponse::failed(
                Reason::TRANSACTION_FAILED,
                format!("transaction {hash} reverted"),
                pending.payer.clone(),
                pending.network.clone(),
            ),
            SettlementState::Failed,
        )
    }
}

fn in_progress(payer: Option<String>, network: String) -> SettleResponse {
    SettleResponse::failed(
        Reason::SETTLEMENT_IN_PROGRESS,
        "another payment with this authorization nonce is being settled",
        payer,
        network,
    )
}

fn ledger_failure(error: LedgerError, payer: Option<String>, network: String) -> SettleResponse {
    tracing::error!(%error, "settlement ledger unavailable");
    SettleResponse::failed(
        Reason::UNEXPECTED_SETTLE_ERROR,
        "the settlement ledger is unavailable",
        payer,
        network,
    )
}

async fn wait_for_outcome(
    outcome: &mut watch::Receiver<Option<SettleResponse>>,
    network: String,
) -> SettleResponse {
    match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone().expect("waited for Some"),
        Err(_) => SettleResponse::failed(
            Reason::UNEXPECTED_SETTLE_ERROR,
            "the settlement this request joined did not finish",
            None,
            network,
        ),
    }
}

/// The x402 `payment-identifier` of a payment: `extensions["payment-identifier"].info.id`.
/// `Ok(None)` without one; `Err` for an id that is not a string of 16 to 128 characters from
/// `A-Z a-z 0-9 _ -`.
pub fn payment_identifier(request: &FacilitatorRequest) -> Result<Option<String>, String> {
    let Some(extension) = request
        .payload
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get(PAYMENT_IDENTIFIER_EXTENSION))
    else {
        return Ok(None);
    };
    let Some(id) = extension.get("info").and_then(|info| info.get("id")) else {
        // Declared (as a server echoes it) but no id chosen.
        return Ok(None);
    };
    match id.as_str() {
        Some(id) if bursar_store::valid_payment_id(id) => Ok(Some(id.to_string())),
        _ => Err(format!(
            "payment-identifier must be a string of {} to {} characters from A-Z a-z 0-9 _ -",
            bursar_store::PAYMENT_ID_CHARS_MIN,
            bursar_store::PAYMENT_ID_CHARS_MAX
        )),
    }
}

fn payment_id_conflict(id: &str, payer: Option<String>, network: String) -> SettleResponse {
    SettleResponse::failed(
        Reason::other(PAYMENT_ID_CONFLICT),
        format!("payment-identifier {id:?} was already used for a different payment"),
        payer,
        network,
    )
}

/// Identifies one exact payment: the signed authorization plus what it was checked against.
/// The ledger records it (as 0x hex) to tell a duplicate from another payment reusing a nonce.
pub fn payment_fingerprint(request: &FacilitatorRequest) -> B256 {
    let requirements = &request.requirements;
    let material = serde_json::json!([
        request.payload.payload.to_json_value(),
        requirements.scheme,
        requirements.network.caip2(),
        requirements.asset.to_ascii_lowercase(),
        requirements.pay_to.to_ascii_lowercase(),
        requirements.amount,
        network_name(&requirements.network, request.version),
    ]);
    keccak256(material.to_string())
}

fn chain_failure(error: ChainError, payer: Address) -> Invalid {
    Invalid {
        reason: Reason::UNEXPECTED_VERIFY_ERROR,
        message: format!("could not read the chain: {error}"),
        payer: Some(payer),
    }
}

fn unsupported_token(why: &str, payer: Address) -> Invalid {
    Invalid {
        reason: Reason::UNSUPPORTED_TOKEN,
        message: format!("{why}; this facilitator cannot settle payments in it"),
        payer: Some(payer),
    }
}

fn invalid_response(invalid: Invalid) -> VerifyResponse {
    VerifyResponse::invalid(
        invalid.reason,
        invalid.message,
        invalid.payer.map(|p| p.to_checksum(None)),
    )
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
