//! [`ChainlessFacilitator`]: an in-memory facilitator for tests.
//!
//! It runs the real stateless checks ([`bursar_protocol::exact_evm::check_payment`]) for one chain,
//! remembers settled nonces (a second settlement of the same authorization fails, as on chain), and
//! records every call so tests can count them. It never touches a chain: the balance check is
//! skipped and a settlement's "transaction hash" is the authorization nonce, which is
//! deterministic and unique per payment.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bursar_protocol::exact_evm::{self, ExactEvmPayload, SCHEME_EXACT};
use bursar_protocol::facilitator::network_name;
use bursar_protocol::{
    B256, ChainAddress, ChainTx, FacilitatorRequest, Network, Reason, SettleResponse,
    SupportedKind, SupportedResponse, VerifyResponse,
};

use crate::{Facilitator, FacilitatorError};

/// Where the clock of a [`ChainlessFacilitator`] comes from.
#[derive(Debug, Clone, Copy)]
enum Clock {
    System,
    Fixed(u64),
}

#[derive(Default)]
struct Record {
    verified: Vec<FacilitatorRequest>,
    settled: Vec<FacilitatorRequest>,
    used_nonces: HashSet<B256>,
}

/// An in-memory facilitator running the stateless exact-EVM checks for one chain.
pub struct ChainlessFacilitator {
    chain_id: u64,
    clock: Clock,
    record: Mutex<Record>,
    settle_failure: Mutex<Option<Reason>>,
    unreachable: AtomicBool,
}

impl std::fmt::Debug for ChainlessFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainlessFacilitator")
            .field("chain_id", &self.chain_id)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl ChainlessFacilitator {
    /// A facilitator for `eip155:<chain_id>` that reads the system clock.
    pub fn new(chain_id: u64) -> Self {
        ChainlessFacilitator {
            chain_id,
            clock: Clock::System,
            record: Mutex::default(),
            settle_failure: Mutex::new(None),
            unreachable: AtomicBool::new(false),
        }
    }

    /// Uses a fixed time (unix seconds) instead of the system clock.
    pub fn at_time(mut self, now_seconds: u64) -> Self {
        self.clock = Clock::Fixed(now_seconds);
        self
    }

    /// Makes every later settlement fail with `reason` (or succeed again with `None`).
    pub fn fail_settlements(&self, reason: Option<Reason>) {
        *lock(&self.settle_failure) = reason;
    }

    /// Makes every later call fail as if the facilitator could not be reached.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// Every request `/verify` received, in order.
    pub fn verified(&self) -> Vec<FacilitatorRequest> {
        lock(&self.record).verified.clone()
    }

    /// Every request `/settle` received, in order (successful or not).
    pub fn settled(&self) -> Vec<FacilitatorRequest> {
        lock(&self.record).settled.clone()
    }

    pub fn verify_count(&self) -> usize {
        lock(&self.record).verified.len()
    }

    pub fn settle_count(&self) -> usize {
        lock(&self.record).settled.len()
    }

    /// The fake transaction hash a successful settlement of this nonce reports.
    pub fn transaction_for(nonce: &B256) -> ChainTx {
        ChainTx::from(*nonce)
    }

    fn now(&self) -> u64 {
        match self.clock {
            Clock::Fixed(now) => now,
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    fn check_unreachable(&self) -> Result<(), FacilitatorError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(FacilitatorError::Transport(
                "connection refused (test facilitator is unreachable)".into(),
            ));
        }
        Ok(())
    }

    /// The stateless checks plus the nonce record.
    fn check(&self, request: &FacilitatorRequest) -> Result<ExactEvmPayload, VerifyResponse> {
        if request.payload.version != request.version {
            return Err(VerifyResponse::invalid(
                Reason::INVALID_X402_VERSION,
                "request and payload versions differ",
                None,
            ));
        }
        let checked = exact_evm::check_payment(
            &request.payload,
            &request.requirements,
            self.chain_id,
            self.now(),
        )
        .map_err(|invalid| {
            VerifyResponse::invalid(
                invalid.reason,
                invalid.message,
                invalid.payer.map(ChainAddress::from),
            )
        })?;
        if lock(&self.record)
            .used_nonces
            .contains(&checked.payload.authorization.nonce)
        {
            return Err(VerifyResponse::invalid(
                Reason::NONCE_ALREADY_USED,
                "authorization nonce was already used",
                Some(checked.payer.into()),
            ));
        }
        Ok(checked.payload)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Facilitator for ChainlessFacilitator {
    async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        self.check_unreachable()?;
        lock(&self.record).verified.push(request.clone());
        Ok(match self.check(request) {
            Ok(payload) => VerifyResponse::valid(payload.authorization.from.into()),
            Err(invalid) => invalid,
        })
    }

    async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, FacilitatorError> {
        self.check_unreachable()?;
        lock(&self.record).settled.push(request.clone());
        let network = network_name(&request.requirements.network, request.version);
        let payload = match self.check(request) {
            Ok(payload) => payload,
            Err(invalid) => {
                return Ok(SettleResponse::failed(
                    invalid.invalid_reason.unwrap_or(Reason::INVALID_PAYLOAD),
                    invalid.invalid_message.unwrap_or_default(),
                    invalid.payer,
                    network,
                ));
            }
        };
        let payer = ChainAddress::from(payload.authorization.from);
        if let Some(reason) = lock(&self.settle_failure).clone() {
            return Ok(SettleResponse::failed(
                reason,
                "settlement failed (test facilitator)",
                Some(payer.clone()),
                network,
            ));
        }
        let nonce = payload.authorization.nonce;
        if !lock(&self.record).used_nonces.insert(nonce) {
            return Ok(SettleResponse::failed(
                Reason::NONCE_ALREADY_USED,
                "authorization nonce was already used",
                Some(payer.clone()),
                network,
            ));
        }
        Ok(SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(payer),
            transaction: Self::transaction_for(&nonce),
            network,
        })
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        self.check_unreachable()?;
        let network = Network::Eip155(self.chain_id);
        Ok(SupportedResponse {
            kinds: vec![
                SupportedKind {
                    x402_version: 1,
                    scheme: SCHEME_EXACT.into(),
                    network: network.v1_name(),
                    extra: None,
                },
                SupportedKind {
                    x402_version: 2,
                    scheme: SCHEME_EXACT.into(),
                    network: network.caip2(),
                    extra: None,
                },
            ],
            ..SupportedResponse::default()
        })
    }
}
