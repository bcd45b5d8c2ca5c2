//! # bursar-catalog
//!
//! The discovery catalog (the x402 "Bazaar") a Bursar facilitator keeps: every resource whose
//! payment it verified or settled and whose seller published the `bazaar` extension, with a
//! reputation built only from what the facilitator saw and what payers reported about their own
//! payments.
//!
//! ```text
//! /verify, /settle ──► Recorder (queue) ──► writer task ──► CatalogStore (SQLite | PostgreSQL)
//!                                                                  ▲
//! GET /discovery/resources, /discovery/search, POST /discovery/reports ┘
//! ```
//!
//! - Recording never slows a payment down: [`Recorder::observe`] reads the payment once
//!   ([`bursar_protocol::discovery::discovered`] checks and bounds it) and queues it; a writer task
//!   stores queued observations in batches, one transaction each. When the queue is full (the
//!   database is far behind) observations are dropped and counted ([`Recorder::dropped`]); a
//!   catalog is not money. Reads wait for what was queued before them ([`Recorder::flush`]), so a
//!   client that paid sees its payment in the catalog at once.
//! - [`router`] serves `GET /discovery/resources` as x402 v2 defines it (`type`, `limit` 1-100
//!   default 20, `offset`; `items`, `pagination.total`; also the official clients' `payTo`,
//!   `scheme`, `network`), plus `q` (words), `asset`, `maxPrice` (atomic units), `payee` (same as
//!   `payTo`) and `settled=true`; `GET /discovery/search?query=` answers the official clients'
//!   search; `POST /discovery/reports` takes a payer's signed report.
//! - Listings not seen for [`CatalogConfig::ttl`] are not served, and [`Catalog::spawn_pruning`]
//!   deletes them.
//!
//! ## Reputation: how each figure is computed
//!
//! Counted once per payment (EIP-3009 authorization), however often it is verified or settled:
//! - `settledCount`: payments for the listing this facilitator settled; `settled` is
//!   `settledCount > 0` (otherwise the listing was only ever verified);
//! - `distinctPayers`: distinct payer addresses among those settlements;
//! - `verifiedCount`: payments verified valid;
//! - `settlementFailures`: payments verified valid whose settlement then failed (settles of
//!   payments never verified valid are not counted: a forged payment cannot lower anyone's
//!   standing);
//! - `priceChanges`, `payeeChanges`: times the price or payee of the same (scheme, network,
//!   asset) terms changed;
//! - `validationFailures`, `paymentRequiredAfterPayment`, `compensations`: reported by the payer
//!   of a settled payment, signed by its key (EIP-191 over
//!   [`bursar_protocol::discovery::report_message`]), at most once per payment and kind;
//! - `failureRateBps`: (settlement failures + the three reported kinds) × 10,000 / (settled +
//!   settlement failures), at most 10,000; 0 with no attempts;
//! - `firstSeen`, `lastSeen`, `lastSettled`: ISO 8601 times.

mod http;
mod listing;
mod recorder;

pub use http::{LISTING_LIMIT_DEFAULT, LISTING_LIMIT_MAX, router};
pub use listing::{failure_rate_bps, listing_of};
pub use recorder::{QUEUE_CAPACITY, Recorder, observation};

use std::sync::Arc;
use std::time::Duration;

use bursar_store::catalog::{CatalogLimits, CatalogStore};

/// How long a listing stays without being seen again, unless configured.
pub const TTL_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often [`Catalog::spawn_pruning`] removes aged-out listings, unless configured.
pub const PRUNE_INTERVAL_DEFAULT: Duration = Duration::from_secs(3600);

/// How the catalog behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogConfig {
    /// Listings not seen for this long age out.
    pub ttl: Duration,
    pub limits: CatalogLimits,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            ttl: TTL_DEFAULT,
            limits: CatalogLimits::default(),
        }
    }
}

/// The catalog: its store, its configuration and the recorder feeding it. Clones share all.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    config: CatalogConfig,
    recorder: Recorder,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("config", &self.config)
            .finish()
    }
}

impl Catalog {
    /// A catalog over `store`; starts its writer task (call inside a Tokio runtime).
    pub fn new(store: Arc<dyn CatalogStore>, config: CatalogConfig) -> Catalog {
        let recorder = Recorder::start(store.clone(), config.limits);
        Catalog {
            store,
            config,
            recorder,
        }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    pub fn config(&self) -> &CatalogConfig {
        &self.config
    }

    /// The oldest `lastSeen` still served, for `now_ms`.
    pub fn seen_since_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::try_from(self.config.ttl.as_millis()).unwrap_or(i64::MAX))
    }

    /// Removes aged-out listings every `every`.
    pub fn spawn_pruning(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let catalog = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let cutoff = catalog.seen_since_ms(now_ms());
                match catalog.store.prune(cutoff).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "catalog: aged-out listings removed"),
                    Err(error) => tracing::warn!(%error, "catalog: pruning failed"),
                }
            }
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
