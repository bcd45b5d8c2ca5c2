//! Observations of verified and settled payments, queued and written in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bursar_protocol::discovery::discovered;
use bursar_protocol::{FacilitatorRequest, SettleResponse, VerifyResponse};
use bursar_store::catalog::{
    CatalogEvent, CatalogLimits, CatalogStore, PaymentOutcome, PaymentRef, Terms,
};
use tokio::sync::{mpsc, oneshot};

/// Observations waiting to be written, at most.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Observations written in one transaction, at most.
const BATCH_MAX: usize = 256;

enum Message {
    Event(Box<CatalogEvent>),
    Flush(oneshot::Sender<()>),
}

/// Queues observations for the catalog's writer task. Clones share one queue.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    pub(crate) fn start(store: Arc<dyn CatalogStore>, limits: CatalogLimits) -> Recorder {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(write(store, limits, receiver));
        Recorder {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues what `request` shows, if its seller published discovery information: a valid
    /// verification or a settlement's outcome. Never waits.
    pub fn observe(&self, request: &FacilitatorRequest, outcome: PaymentOutcome) {
        if let Some(event) = observation(request, outcome, crate::now_ms())
            && self
                .queue
                .try_send(Message::Event(Box::new(event)))
                .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Recorder::observe`] of a verification's answer (only valid ones are recorded).
    pub fn verified(&self, request: &FacilitatorRequest, response: &VerifyResponse) {
        if response.is_valid {
            self.observe(request, PaymentOutcome::Verified);
        }
    }

    /// [`Recorder::observe`] of a settlement's answer.
    pub fn settled(&self, request: &FacilitatorRequest, response: &SettleResponse) {
        let outcome = if response.success {
            PaymentOutcome::Settled
        } else {
            PaymentOutcome::SettleFailed
        };
        self.observe(request, outcome);
    }

    /// Waits until everything queued before this call is written (or failed to be).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Observations dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The catalog event `request` gives for `outcome`, when its seller published discovery
/// information that passes the checks and the payment is an `exact` EVM one.
pub fn observation(
    request: &FacilitatorRequest,
    outcome: PaymentOutcome,
    at_ms: i64,
) -> Option<CatalogEvent> {
    let listing = match discovered(request) {
        Ok(Some(listing)) => listing,
        Ok(None) => return None,
        Err(not_listed) => {
            tracing::debug!(%not_listed, "catalog: payment's resource not listed");
            return None;
        }
    };
    let exact = request.payload.payload.exact_evm().ok()?;
    let requirements = &request.requirements;
    let network = requirements.network.caip2();
    Some(CatalogEvent {
        listing,
        terms: Terms {
            scheme: requirements.scheme.clone(),
            network: network.clone(),
            asset: requirements.asset.evm()?,
            pay_to: requirements.pay_to.evm()?,
            amount: requirements.amount,
            accepted: serde_json::to_string(requirements).ok()?,
        },
        payment: PaymentRef {
            network,
            asset: requirements.asset.evm()?,
            payer: exact.authorization.from,
            nonce: exact.authorization.nonce,
        },
        outcome,
        at_ms,
    })
}

async fn write(
    store: Arc<dyn CatalogStore>,
    limits: CatalogLimits,
    mut receiver: mpsc::Receiver<Message>,
) {
    let mut batch: Vec<CatalogEvent> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => batch.push(*event),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH_MAX {
                next = receiver.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(error) = store.record(&batch, limits).await {
                tracing::warn!(%error, events = batch.len(), "catalog: observations not written");
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
