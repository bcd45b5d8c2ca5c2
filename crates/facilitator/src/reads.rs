//! Grouped chain reads for `/verify` and `/settle`.
//!
//! Each payment needs its payer's balance and its nonce's state. Against a JSON-RPC node those
//! are two `eth_call`s per payment, and under load the node's per-request work dominates. With
//! [`FacilitatorConfig::group_reads`](crate::FacilitatorConfig::group_reads), reads go through one
//! task that answers whatever has queued in one deployless `eth_call` of
//! BursarAuthorizationReader (up to [`READS_PER_CALL_MAX`] items), with at most
//! [`READ_CALLS_IN_FLIGHT_MAX`] such calls at a time. Nothing waits for company: a read that
//! finds the reader idle goes out alone at once; reads arriving while calls are in flight share
//! the next one (group commit). Every answer is read at the chain head when its call runs, never
//! cached, so it is as fresh as a read of its own.
//!
//! An item whose token does not answer (no code, no `authorizationState`, a malformed answer)
//! comes back as `Ok(None)`, apart from failures of the read itself, so verification can tell a
//! token without EIP-3009 from an unreachable node.

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use bursar_chain::{CallOutcome, CallRequest, ChainError, EvmChain};
use bursar_contracts::{
    AuthorizationRead, READER_ITEMS_MAX, authorization_reads_call, decode_authorization_reads,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most reads answered by one `eth_call`.
pub const READS_PER_CALL_MAX: usize = 256;
/// The most grouped `eth_call`s in flight at once.
pub const READ_CALLS_IN_FLIGHT_MAX: usize = 4;
/// Reads waiting for a call; beyond it a read fails at once rather than queue without bound.
const READ_QUEUE_MAX: usize = 16_384;

const _: () = assert!(READS_PER_CALL_MAX <= READER_ITEMS_MAX);

/// `(balance, used)`; `None` when the token did not answer `balanceOf` / `authorizationState`.
type Answer = Result<Option<(U256, bool)>, ChainError>;

struct Pending {
    read: AuthorizationRead,
    reply: oneshot::Sender<Answer>,
}

/// The handle: queue reads; the task runs until every handle is dropped.
#[derive(Clone)]
pub(crate) struct ReadGroup {
    queue: mpsc::Sender<Pending>,
}

impl ReadGroup {
    /// Starts the reading task. Must be called inside a Tokio runtime.
    pub fn start(chain: Arc<dyn EvmChain>) -> ReadGroup {
        let (queue, incoming) = mpsc::channel(READ_QUEUE_MAX);
        tokio::spawn(run(chain, incoming));
        ReadGroup { queue }
    }

    /// `owner`'s balance of `token` and whether `nonce` is used there, read at the chain head;
    /// `Ok(None)` when the token did not answer.
    pub async fn read(&self, token: Address, owner: Address, nonce: B256) -> Answer {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            read: AuthorizationRead {
                token,
                owner,
                nonce,
            },
            reply,
        };
        self.queue
            .try_send(pending)
            .map_err(|_| ChainError::Rejected("too many chain reads queued".into()))?;
        answer
            .await
            .map_err(|_| ChainError::Rejected("the chain reader stopped".into()))?
    }
}

async fn run(chain: Arc<dyn EvmChain>, mut incoming: mpsc::Receiver<Pending>) {
    let calls = Arc::new(Semaphore::new(READ_CALLS_IN_FLIGHT_MAX));
    while let Some(first) = incoming.recv().await {
        // Wait for a free call first: meanwhile more reads queue and join this one.
        let Ok(permit) = calls.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < READS_PER_CALL_MAX {
            match incoming.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let chain = chain.clone();
        tokio::spawn(async move {
            answer_group(chain.as_ref(), group).await;
            drop(permit);
        });
    }
}

async fn answer_group(chain: &dyn EvmChain, group: Vec<Pending>) {
    let reads: Vec<AuthorizationRead> = group.iter().map(|pending| pending.read).collect();
    let answers: Vec<Answer> = match chain
        .call(CallRequest {
            to: None,
            data: authorization_reads_call(&reads),
            ..Default::default()
        })
        .await
    {
        Ok(CallOutcome::Success(output)) => {
            match decode_authorization_reads(&output, reads.len()) {
                Ok(readings) => readings
                    .into_iter()
                    .map(|reading| Ok(reading.map(|r| (r.balance, r.used))))
                    .collect(),
                Err(error) => failed(&reads, &format!("malformed read answer: {error}")),
            }
        }
        Ok(CallOutcome::Revert(data)) => failed(&reads, &format!("the read reverted ({data})")),
        Err(error) => failed(&reads, &error.to_string()),
    };
    for (pending, answer) in group.into_iter().zip(answers) {
        // A caller that hung up no longer needs its answer.
        let _ = pending.reply.send(answer);
    }
}

fn failed(reads: &[AuthorizationRead], message: &str) -> Vec<Answer> {
    reads
        .iter()
        .map(|_| Err(ChainError::Rejected(message.to_string())))
        .collect()
}
