//! Verification and exactly-once settlement, independent of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, keccak256};
use alloy_sol_types::{SolCall, sol};
use bursar_chain::{Account, CallOutcome, CallRequest, ChainError, EvmChain, Token};
use bursar_contracts::{describe_revert, revert_reason};
use bursar_protocol::exact_evm::{self, CheckedPayment, ExactEvmPayload, Invalid, SCHEME_EXACT};
use bursar_protocol::facilitator::network_name;
use bursar_protocol::{
    FacilitatorRequest, Network, Reason, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse,
};
use bursar_store::{
    Claim, LedgerError, LedgerKey, SettlementLedger, SettlementRecord, SettlementState,
    SqliteLedger, Submission,
};
use tokio::sync::{oneshot, watch};

use crate::batch::{self, BatchConfig, Batcher, Queued};
use crate::hooks::{FacilitatorHooks, NoHooks, payer_of};
use crate::metrics::FacilitatorMetrics;
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
/// How old a `received` claim must be for recovery to treat its holder as dead. Far longer than
/// verifying, simulating and broadcasting take.
pub const RECEIVED_ABANDONED_AFTER: Duration = Duration::from_secs(300);
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
        let metrics = FacilitatorMetrics::new();
        let batcher = config.batch.clone().map(|batch_config| {
            Batcher::start(
                chain.clone(),
                ledger.clone(),
                batch_config,
                senders.clone(),
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
        let response = match hooks.before_settle(request).await {
            Ok(()) => self.settle_unhooked(request).await,
            Err(refusal) => SettleResponse::failed(
                refusal.reason,
                refusal.message,
                payer_of(request).map(|payer| payer.to_checksum(None)),
                request.network_name(),
            ),
        };
        hooks.after_settle(request, &response).await;
        self.metrics.settled(&response, started.elapsed());
        response
    }

    async fn settle_unhooked(&self, request: &FacilitatorRequest) -> SettleResponse {
        let network = request.network_name();
        let exact = match ExactEvmPayload::from_value(&request.payload.payload) {
            Ok(exact) => exact,
            Err(message) => {
                return SettleResponse::failed(Reason::INVALID_PAYLOAD, message, None, network);
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
                .settle_durably(&request, key, fingerprint, request.network_name())
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
        LedgerKey::new(
            &self.network().caip2(),
            &key.token.to_string(),
            &key.payer.to_string(),
            &key.nonce.to_string(),
        )
    }

    /// Settles through the ledger: claim the authorization, or follow whoever holds it.
    /// Returns the outcome and whether it is final (to be remembered in memory).
    async fn settle_durably(
        &self,
        request: &FacilitatorRequest,
        key: AuthorizationKey,
        fingerprint: B256,
        network: String,
    ) -> (SettleResponse, bool) {
        let ledger_key = self.ledger_key(key);
        let fingerprint = fingerprint.to_string();
        let payer = Some(key.payer.to_checksum(None));
        let deadline = Instant::now() + SETTLED_ELSEWHERE_WAIT_TIMEOUT;
        let payment_id = payment_identifier(request).ok().flatten();
        loop {
            let claim = match &payment_id {
                Some(id) => {
                    self.ledger
                        .claim_identified(&ledger_key, &fingerprint, id)
                        .await
                }
                None => self.ledger.claim(&ledger_key, &fingerprint).await,
            };
            let claim = match claim {
                Ok(claim) => claim,
                Err(error) => return (ledger_failure(error, payer, network), false),
            };
            match claim {
                Claim::Claimed => return self.settle_claimed(request, &ledger_key, network).await,
                Claim::PaymentIdConflict { .. } => {
                    let id = payment_id.as_deref().unwrap_or_default();
                    return (payment_id_conflict(id, payer, network), false);
                }
                Claim::Existing {
                    state,
                    fingerprint: held,
                    ..
                } if held != fingerprint => {
                    let outcome = if state.is_final() {
                        self.refuse_reused_nonce(request, network).await
                    } else {
                        in_progress(payer, network)
                    };
                    return (outcome, false);
                }
                Claim::Existing { .. } => {
                    match self.follow(&ledger_key, deadline).await {
                        Ok(Followed::Finished(outcome)) => return (outcome, true),
                        // Released by its holder before broadcast: claim it again.
                        Ok(Followed::Released) => continue,
                        Ok(Followed::StillRunning) => return (in_progress(payer, network), false),
                        Err(error) => return (ledger_failure(error, payer, network), false),
                    }
                }
            }
        }
    }

    /// Waits for a settlement of this same payment held elsewhere (another process, or this one
    /// before a restart) to finish, finishing it itself once its transaction is mined.
    async fn follow(&self, key: &LedgerKey, deadline: Instant) -> Result<Followed, LedgerError> {
        loop {
            let Some(record) = self.ledger.get(key).await? else {
                return Ok(Followed::Released);
            };
            if record.state.is_final() {
                return Ok(Followed::Finished(record.response.unwrap_or_else(|| {
                    SettleResponse::failed(
                        Reason::UNEXPECTED_SETTLE_ERROR,
                        format!("the ledger holds no response for settlement {key}"),
                        None,
                        self.network().caip2(),
                    )
                })));
            }
            if record.state == SettlementState::Submitted
                && let Some((hash, pending)) = submitted_transaction(&record)
                && let Ok(Some(receipt)) = self.chain.receipt(hash).await
            {
                let (outcome, state) = self
                    .mined_row_outcome(&record, &pending, hash, &receipt)
                    .await;
                self.record_finish(key, &outcome, state).await;
                return Ok(Followed::Finished(outcome));
            }
            if Instant::now() >= deadline {
                return Ok(Followed::StillRunning);
            }
            tokio::time::sleep(LEDGER_POLL_INTERVAL).await;
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

    /// Verifies, simulates, submits, records the submission, waits, records the outcome.
    /// The caller owns `key` in the ledger. Returns the outcome and whether it is final.
    async fn settle_claimed(
        &self,
        request: &FacilitatorRequest,
        key: &LedgerKey,
        network: String,
    ) -> (SettleResponse, bool) {
        if let Some(batcher) = &self.batcher {
            return self.settle_batched(batcher, request, key, network).await;
        }
        let (checked, submitted) = match self.submit(request, network.clone()).await {
            Ok(submitted) => submitted,
            Err(refusal) => {
                // Nothing was broadcast: free the authorization so the payer may try again.
                if let Err(error) = self.ledger.release(key).await {
                    tracing::error!(%error, %key, "could not release a refused settlement");
                }
                return (refusal, false);
            }
        };
        let hash = submitted;
        let payer = checked.payer.to_checksum(None);
        let authorization = &checked.payload.authorization;
        let pending = SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(payer.clone()),
            transaction: hash.to_string(),
            network: network.clone(),
        };
        let submission = Submission {
            tx_hash: hash.to_string(),
            valid_before_s: u64::try_from(authorization.valid_before).unwrap_or(u64::MAX),
            pending_response: pending.clone(),
        };
        if let Err(error) = self.ledger.mark_submitted(key, &submission).await {
            tracing::error!(%error, %key, tx = %hash, "could not record a broadcast settlement");
        }
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
                let (outcome, state) = mined_outcome(&pending, hash, receipt.success);
                if receipt.success {
                    tracing::info!(tx = %hash, payer = %payer, value = %authorization.value, "settled");
                }
                self.record_finish(key, &outcome, state).await;
                (outcome, true)
            }
            // Broadcast but not seen mined: the ledger keeps it `submitted`, so a retry waits on
            // the chain rather than sending again, and recovery finishes it after a restart.
            Err(error) => (
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
                if let Err(error) = self.ledger.release(key).await {
                    tracing::error!(%error, %key, "could not release a refused settlement");
                }
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
            if let Err(error) = self.ledger.release(key).await {
                tracing::error!(%error, %key, "could not release a refused settlement");
            }
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

    /// The outcome a mined transaction gives a `submitted` row: per item for a batch.
    async fn mined_row_outcome(
        &self,
        record: &SettlementRecord,
        pending: &SettleResponse,
        hash: B256,
        receipt: &bursar_chain::Receipt,
    ) -> (SettleResponse, SettlementState) {
        let parsed = (
            record.key.asset().parse::<Address>(),
            record.key.payer().parse::<Address>(),
            record.key.nonce().parse::<B256>(),
        );
        if let (Ok(token), Ok(payer), Ok(nonce)) = parsed
            && receipt.success
            && let Some(outcome) = batch::receipt_item_outcome(receipt, token, payer, nonce)
        {
            let item = bursar_contracts::BatchItem {
                token,
                authorization: exact_evm::Authorization {
                    from: payer,
                    to: Address::ZERO,
                    value: Default::default(),
                    valid_after: Default::default(),
                    valid_before: Default::default(),
                    nonce,
                },
                signature: Default::default(),
            };
            return batch::item_response(self.chain.clone(), pending, &item, hash, outcome).await;
        }
        mined_outcome(pending, hash, receipt.success)
    }

    /// Verifies, simulates and submits. `Err` is a refusal before anything was broadcast.
    async fn submit(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> Result<(CheckedPayment, B256), SettleResponse> {
        let checked = self.prepare(request, network.clone()).await?;
        let payer = checked.payer.to_checksum(None);
        let authorization = &checked.payload.authorization;
        let signature = &checked.payload.signature;
        let token = Token::new(self.chain.clone(), checked.token);
        match token
            .submit_transfer_with_authorization(
                &self.sender,
                authorization,
                signature,
                Some(SETTLE_GAS_LIMIT),
            )
            .await
        {
            Ok(hash) => Ok((checked, hash)),
            Err(error) => {
                tracing::warn!(%error, payer = %payer, "settlement transaction was not accepted");
                Err(SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    error.to_string(),
                    Some(payer),
                    network,
                ))
            }
        }
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

    /// Finishes the settlements a previous life of this facilitator (or another process sharing
    /// its ledger) broadcast but did not see mined. Call it at startup; see the crate docs for
    /// the rules. Never broadcasts anything.
    pub async fn recover(&self) -> Result<Vec<Recovered>, LedgerError> {
        self.recover_with(RECEIVED_ABANDONED_AFTER).await
    }

    /// [`LocalFacilitator::recover`], treating `received` claims older than
    /// `received_abandoned_after` as abandoned by a facilitator that stopped before recording a
    /// broadcast: used authorization → failed (the hash is unknown); unused → released, so the
    /// payer may retry (the token's nonce still allows one transfer at most).
    pub async fn recover_with(
        &self,
        received_abandoned_after: Duration,
    ) -> Result<Vec<Recovered>, LedgerError> {
        self.recover_rows(received_abandoned_after, None).await
    }

    /// Recovers again every `every`, for as long as the process runs, in a task of its own:
    /// what a crash (of this process or of another sharing the ledger) left behind is finished
    /// without waiting for the next restart. Each pass is [`LocalFacilitator::recover_with`]
    /// `received_abandoned_after`, limited to `submitted` rows untouched for that long too, so
    /// settlements this process is still confirming (at most [`SETTLE_RECEIPT_TIMEOUT`] plus the
    /// confirmation depth) are left to it. Like recovery at startup, it never broadcasts.
    pub fn spawn_recovery(
        &self,
        every: Duration,
        received_abandoned_after: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: startup recovery has just run.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match this
                    .recover_rows(received_abandoned_after, Some(received_abandoned_after))
                    .await
                {
                    Ok(recovered) => {
                        let finished = recovered
                            .iter()
                            .filter(|r| !matches!(r.outcome, RecoveryOutcome::Pending { .. }))
                            .count();
                        if finished > 0 {
                            tracing::info!(finished, "background recovery finished settlements");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "background recovery could not read the ledger; trying again later")
                    }
                }
            }
        })
    }

    /// Recovery over `received` claims older than `received_abandoned_after` and the `submitted`
    /// rows (all of them, or those untouched for `submitted_idle_for`).
    async fn recover_rows(
        &self,
        received_abandoned_after: Duration,
        submitted_idle_for: Option<Duration>,
    ) -> Result<Vec<Recovered>, LedgerError> {
        let network = self.network().caip2();
        let mut recovered = Vec::new();
        let age_ms = i64::try_from(received_abandoned_after.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms().saturating_sub(age_ms);
        let idle_cutoff_ms = submitted_idle_for.map(|idle| {
            now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX))
        });
        for record in self.ledger.received_before(cutoff_ms).await? {
            if record.key.network() != network {
                continue;
            }
            let outcome = self.recover_abandoned(&record).await;
            tracing::warn!(key = %record.key, outcome = ?outcome, "abandoned settlement claim");
            recovered.push(Recovered {
                tx_hash: String::new(),
                key: record.key,
                outcome,
            });
        }
        for record in self.ledger.unfinished().await? {
            if record.key.network() != network
                || idle_cutoff_ms.is_some_and(|cutoff| record.updated_at_ms > cutoff)
            {
                continue;
            }
            let outcome = self.recover_one(&record).await;
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

    async fn recover_abandoned(&self, record: &SettlementRecord) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let (Ok(token), Ok(payer), Ok(nonce)) = (
            record.key.asset().parse::<Address>(),
            record.key.payer().parse::<Address>(),
            record.key.nonce().parse::<B256>(),
        ) else {
            return pending("the row's key is not an EVM authorization".into());
        };
        let token = Token::new(self.chain.clone(), token);
        match token.authorization_state(payer, nonce).await {
            Err(error) => pending(format!("cannot read the authorization state: {error}")),
            Ok(true) => {
                let outcome = SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    "the authorization was used, but the facilitator stopped before recording the \
                     transaction that used it",
                    Some(payer.to_checksum(None)),
                    record.key.network().to_string(),
                );
                match self
                    .ledger
                    .finish(&record.key, &outcome, SettlementState::Failed)
                    .await
                {
                    Ok(()) => RecoveryOutcome::Failed {
                        reason: Reason::UNEXPECTED_SETTLE_ERROR,
                        message: outcome.error_message.unwrap_or_default(),
                    },
                    Err(error) => pending(format!("cannot record the outcome: {error}")),
                }
            }
            Ok(false) => match self.ledger.release(&record.key).await {
                Ok(_) => RecoveryOutcome::Released,
                Err(error) => pending(format!("cannot release the claim: {error}")),
            },
        }
    }

    async fn recover_one(&self, record: &SettlementRecord) -> RecoveryOutcome {
        let pending = |why: String| RecoveryOutcome::Pending { why };
        let Some((hash, pending_response)) = submitted_transaction(record) else {
            return pending("the row has no readable transaction hash or response".into());
        };
        let (Ok(token), Ok(payer), Ok(nonce)) = (
            record.key.asset().parse::<Address>(),
            record.key.payer().parse::<Address>(),
            record.key.nonce().parse::<B256>(),
        ) else {
            return pending("the row's key is not an EVM authorization".into());
        };
        let receipt = match self.chain.receipt(hash).await {
            Ok(receipt) => receipt,
            Err(error) => return pending(format!("cannot read the receipt of {hash}: {error}")),
        };
        let (outcome, state) = match receipt {
            Some(receipt) => {
                self.mined_row_outcome(record, &pending_response, hash, &receipt)
                    .await
            }
            None => {
                let token = Token::new(self.chain.clone(), token);
                let used = match token.authorization_state(payer, nonce).await {
                    Ok(used) => used,
                    Err(error) => {
                        return pending(format!("cannot read the authorization state: {error}"));
                    }
                };
                let chain_now = match self.chain.latest_block().await {
                    Ok(block) => block.timestamp,
                    Err(_) => now_seconds(),
                };
                let valid_before = record.valid_before_s.unwrap_or(u64::MAX);
                let failed = |reason: Reason, message: String| {
                    SettleResponse::failed(
                        reason,
                        message,
                        pending_response.payer.clone(),
                        pending_response.network.clone(),
                    )
                };
                if used {
                    let message = format!(
                        "transaction {hash} was never mined; the authorization was used by another transaction"
                    );
                    (
                        failed(Reason::NONCE_ALREADY_USED, message),
                        SettlementState::Failed,
                    )
                } else if chain_now >= valid_before {
                    let message = format!(
                        "transaction {hash} was never mined and the authorization expired at {valid_before}; nothing was transferred"
                    );
                    (
                        failed(Reason::VALID_BEFORE, message),
                        SettlementState::Failed,
                    )
                } else {
                    return pending(format!(
                        "transaction {hash} is not mined and the authorization is unused and valid until {valid_before}; not re-broadcast"
                    ));
                }
            }
        };
        if let Err(error) = self.ledger.finish(&record.key, &outcome, state).await {
            return pending(format!("cannot record the outcome: {error}"));
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
}

/// Where a settlement held elsewhere stands after following it.
enum Followed {
    /// Final: the recorded (or just derived) outcome.
    Finished(SettleResponse),
    /// Its row was released before broadcast: the authorization is free to claim.
    Released,
    /// Still `received` or unmined when the wait ran out.
    StillRunning,
}

/// What [`LocalFacilitator::recover`] did with one `submitted` settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub key: LedgerKey,
    pub tx_hash: String,
    pub outcome: RecoveryOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryOutcome {
    /// Mined and successful: recorded as confirmed with the response a live settle gives.
    Confirmed,
    /// Mined and reverted, superseded, or expired unmined: recorded as failed.
    Failed { reason: Reason, message: String },
    /// Left as it was (still valid and unmined, or the chain could not be read).
    Pending { why: String },
    /// An abandoned `received` claim whose authorization is unused: deleted, so it may be retried.
    Released,
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
        request.payload.payload,
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
