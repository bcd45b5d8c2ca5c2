//! Verification and exactly-once settlement, independent of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, keccak256};
use alloy_sol_types::{SolCall, sol};
use bursar_chain::{
    Account, CallOutcome, CallRequest, ChainError, EvmChain, Token, wait_for_receipt,
};
use bursar_protocol::exact_evm::{self, CheckedPayment, ExactEvmPayload, Invalid, SCHEME_EXACT};
use bursar_protocol::facilitator::network_name;
use bursar_protocol::{
    FacilitatorRequest, Network, Reason, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse,
};
use tokio::sync::watch;

/// Gas limit for one `transferWithAuthorization`; an EOA-signed one uses about 60-90k.
pub const SETTLE_GAS_LIMIT: u64 = 200_000;
/// How long settle waits for the transaction to be mined.
pub const SETTLE_RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How many finished settlements are remembered, so duplicates get the original outcome.
pub const SETTLED_REMEMBERED_MAX: usize = 100_000;

sol! {
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}

/// What the facilitator serves.
#[derive(Debug, Clone, Default)]
pub struct FacilitatorConfig {
    /// Tokens it settles; `None` accepts any EIP-3009 token on its chain.
    pub assets: Option<Vec<Address>>,
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
    /// Each token's on-chain EIP-712 domain separator, read once.
    domain_separators: RwLock<HashMap<Address, Option<B256>>>,
}

impl std::fmt::Debug for LocalFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFacilitator")
            .field("chain_id", &self.chain.chain_id())
            .field("sender", &self.sender.address())
            .finish()
    }
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
    pub fn new(chain: Arc<dyn EvmChain>, sender: Account, config: FacilitatorConfig) -> Self {
        LocalFacilitator {
            inner: Arc::new(Inner {
                chain,
                sender: Arc::new(sender),
                config,
                settlements: Mutex::new(Settlements::default()),
                domain_separators: RwLock::new(HashMap::new()),
            }),
        }
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
            vec![self.sender.address().to_checksum(None)],
        );
        response
    }

    /// Verifies a payment: every stateless check, then the token's domain, the nonce and the balance.
    pub async fn verify(&self, request: &FacilitatorRequest) -> VerifyResponse {
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
        let token = Token::new(self.chain.clone(), checked.token);
        let chain_failure = |error: ChainError| Invalid {
            reason: Reason::UNEXPECTED_VERIFY_ERROR,
            message: format!("could not read the chain: {error}"),
            payer: Some(payer),
        };
        let (separator, used, balance) = tokio::join!(
            self.domain_separator(checked.token),
            token.authorization_state(payer, authorization.nonce),
            token.balance_of(payer),
        );
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
        if used.map_err(chain_failure)? {
            return Err(Invalid {
                reason: Reason::NONCE_ALREADY_USED,
                message: format!(
                    "authorization nonce {} was already used or cancelled",
                    authorization.nonce
                ),
                payer: Some(payer),
            });
        }
        let balance = balance.map_err(chain_failure)?;
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
        Ok(())
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
    pub async fn settle(&self, request: &FacilitatorRequest) -> SettleResponse {
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
        let fingerprint = fingerprint(request);

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
            Action::VerifyAlone => return self.settle_once(request, network).await.0,
            Action::Lead(publisher) => publisher,
        };
        // Settle in a task of its own so a caller that hangs up cannot abandon a settlement that
        // other callers are waiting on, or that has already been broadcast.
        let this = self.clone();
        let request = request.clone();
        let task = tokio::spawn(async move {
            let (outcome, remember) = this.settle_once(&request, request.network_name()).await;
            this.finish(key, fingerprint, &outcome, remember);
            let _ = publisher.send(Some(outcome.clone()));
            outcome
        });
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

    /// Verifies, simulates, submits and waits. Returns the outcome and whether it reached the chain.
    async fn settle_once(
        &self,
        request: &FacilitatorRequest,
        network: String,
    ) -> (SettleResponse, bool) {
        let checked = match self.check(request).await {
            Ok(checked) => checked,
            Err(invalid) => {
                let payer = invalid.payer.map(|p| p.to_checksum(None));
                return (
                    SettleResponse::failed(invalid.reason, invalid.message, payer, network),
                    false,
                );
            }
        };
        let payer = checked.payer.to_checksum(None);
        let authorization = &checked.payload.authorization;
        let signature = &checked.payload.signature;
        let token = Token::new(self.chain.clone(), checked.token);
        // Refused before anything was broadcast: not remembered, so the payer may try again.
        let refused = |reason: Reason, message: String| {
            (
                SettleResponse::failed(reason, message, Some(payer.clone()), network.clone()),
                false,
            )
        };

        // Simulate first: a transaction that would revert costs gas and settles nothing.
        match token
            .simulate_transfer_with_authorization(self.sender.address(), authorization, signature)
            .await
        {
            Ok(CallOutcome::Success(_)) => {}
            Ok(CallOutcome::Revert(data)) => {
                return refused(
                    Reason::SIMULATION_FAILED,
                    format!("transferWithAuthorization would revert ({data})"),
                );
            }
            Err(error) => return refused(Reason::UNEXPECTED_SETTLE_ERROR, error.to_string()),
        }
        let hash = match token
            .submit_transfer_with_authorization(
                &self.sender,
                authorization,
                signature,
                Some(SETTLE_GAS_LIMIT),
            )
            .await
        {
            Ok(hash) => hash,
            Err(error) => {
                tracing::warn!(%error, payer = %payer, "settlement transaction was not accepted");
                return refused(Reason::UNEXPECTED_SETTLE_ERROR, error.to_string());
            }
        };
        match wait_for_receipt(self.chain.as_ref(), hash, SETTLE_RECEIPT_TIMEOUT).await {
            Ok(receipt) if receipt.success => {
                tracing::info!(tx = %hash, payer = %payer, value = %authorization.value, "settled");
                let response = SettleResponse {
                    success: true,
                    error_reason: None,
                    error_message: None,
                    payer: Some(payer),
                    transaction: hash.to_string(),
                    network,
                };
                (response, true)
            }
            Ok(_) => (
                SettleResponse::failed(
                    Reason::TRANSACTION_FAILED,
                    format!("transaction {hash} reverted"),
                    Some(payer),
                    network,
                ),
                true,
            ),
            // Broadcast but not seen mined: remember it, so a retry waits on the chain rather than
            // sending again; the token's nonce makes a second transfer impossible anyway.
            Err(error) => (
                SettleResponse::failed(
                    Reason::UNEXPECTED_SETTLE_ERROR,
                    format!("transaction {hash} was sent but not confirmed: {error}"),
                    Some(payer),
                    network,
                ),
                true,
            ),
        }
    }
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

/// Identifies one exact payment: the signed authorization plus what it was checked against.
fn fingerprint(request: &FacilitatorRequest) -> B256 {
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
