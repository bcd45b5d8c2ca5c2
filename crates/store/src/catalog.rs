//! The discovery catalog's store: listings, their terms, the payments counted for them and the
//! problems their payers reported. [`CatalogStore`] is implemented by [`SqliteDatabase`] and
//! [`PostgresDatabase`] over the same database as the settlement ledger (several facilitators
//! sharing one PostgreSQL database share one catalog).
//!
//! Every counter is a fact, counted once per payment (an EIP-3009 authorization, keyed as the
//! settlement ledger keys it), however often the same payment is verified or settled:
//! - `verified_count`: payments verified valid;
//! - `settled_count`, `distinct_payers`, `last_settled`: payments settled;
//! - `settle_failures`: payments verified valid whose settlement then failed (a settle refused
//!   without a prior valid verification is not counted, so forged payments cannot lower anyone's
//!   standing);
//! - `price_changes`, `payee_changes`: changes of the price or payee of the same (scheme, network,
//!   asset) terms;
//! - `validation_failures`, `paid_then_required`, `compensations`: reported by the payer of a
//!   settled payment, at most once per payment and kind.
//!
//! A payee lists at most [`CatalogLimits::listings_per_payee_max`] resources and the catalog at
//! most [`CatalogLimits::listings_max`]: beyond them new resources are not listed (their payments
//! are unaffected), so one payee cannot crowd out others.

use alloy_primitives::{Address, B256};
use bursar_protocol::Amount;
use bursar_protocol::discovery::{Discovered, ReportKind, ResourceKind};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use crate::DatabaseError;
use crate::keys::hex_lower;
use crate::sql::{PostgresDatabase, SqliteDatabase};

/// Most words of a search used.
pub const QUERY_WORDS_MAX: usize = 8;
/// Listings removed per statement when pruning.
const PRUNE_BATCH: i64 = 500;

/// Bounds on what the catalog takes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogLimits {
    pub listings_per_payee_max: u64,
    pub listings_max: u64,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            listings_per_payee_max: 1_000,
            listings_max: 1_000_000,
        }
    }
}

/// One payment: an EIP-3009 authorization (CAIP-2 network, token, payer, nonce).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentRef {
    pub network: String,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
}

/// The terms a payment was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub scheme: String,
    /// CAIP-2.
    pub network: String,
    pub asset: Address,
    pub pay_to: Address,
    pub amount: Amount,
    /// The requirement as offered, JSON.
    pub accepted: String,
}

/// What happened to a payment, as the facilitator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    Verified,
    Settled,
    SettleFailed,
}

/// One observation for the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEvent {
    pub listing: Discovered,
    pub terms: Terms,
    pub payment: PaymentRef,
    pub outcome: PaymentOutcome,
    pub at_ms: i64,
}

/// A search of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogQuery {
    /// Words every listing must contain (in its URL, description, service name, tags, method or
    /// tool name), case-insensitively; at most [`QUERY_WORDS_MAX`] are used.
    pub words: Vec<String>,
    pub kind: Option<ResourceKind>,
    pub scheme: Option<String>,
    pub network: Option<String>,
    pub asset: Option<Address>,
    pub pay_to: Option<Address>,
    /// Only listings offered at this price or less (in some terms that match the other filters).
    pub max_amount: Option<Amount>,
    pub settled_only: bool,
    /// Only listings of this resource (a normalized URL): listed under it exactly, or under a
    /// route template of its origin (the caller matches the template's segments).
    pub resource: Option<String>,
    /// Only listings seen at or after this time (older ones have aged out).
    pub seen_since_ms: i64,
    pub limit: u64,
    pub offset: u64,
}

/// A listing's terms, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsRecord {
    pub scheme: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    pub amount: String,
    pub accepted: String,
    pub last_seen_ms: i64,
}

/// A listing, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingRecord {
    pub id: String,
    pub resource: String,
    pub kind: String,
    pub operation: String,
    pub route_template: Option<String>,
    pub x402_version: i64,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub service_name: Option<String>,
    /// JSON array.
    pub tags: String,
    /// JSON.
    pub extension: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_settled_ms: Option<i64>,
    pub verified_count: i64,
    pub settled_count: i64,
    pub settle_failures: i64,
    pub distinct_payers: i64,
    pub price_changes: i64,
    pub payee_changes: i64,
    pub validation_failures: i64,
    pub paid_then_required: i64,
    pub compensations: i64,
    pub terms: Vec<TermsRecord>,
}

/// A page of a search and how many listings match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogPage {
    pub total: u64,
    pub listings: Vec<ListingRecord>,
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Counted,
    AlreadyReported,
    /// This catalog counted no settled payment under that authorization.
    UnknownPayment,
}

/// The catalog's store.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Records `events` in one transaction; returns how many were listed (the rest were beyond
    /// the limits).
    async fn record(
        &self,
        events: &[CatalogEvent],
        limits: CatalogLimits,
    ) -> Result<usize, DatabaseError>;

    /// The listings matching `query`: settled ones first (most settlements first), then by when
    /// they were last seen.
    async fn search(&self, query: &CatalogQuery) -> Result<CatalogPage, DatabaseError>;

    /// The payer of `payment` reports `kind` (the signature was checked by the caller).
    async fn report(
        &self,
        payment: &PaymentRef,
        kind: ReportKind,
        at_ms: i64,
    ) -> Result<ReportOutcome, DatabaseError>;

    /// Removes listings not seen since `cutoff_ms`, with everything recorded for them; returns
    /// how many.
    async fn prune(&self, cutoff_ms: i64) -> Result<u64, DatabaseError>;
}

/// A listing's id: a digest of its resource, kind and operation.
pub fn listing_id(listing: &Discovered) -> String {
    let mut hasher = Sha256::new();
    for part in [
        listing.resource.as_str(),
        listing.kind.as_str(),
        listing.operation.as_str(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    format!("lst_{}", &hex_lower(&hasher.finalize())[..32])
}

/// Lowercased text a search looks in.
fn search_text(listing: &Discovered) -> String {
    let mut text = format!(
        "{} {} {}",
        listing.resource,
        listing.operation,
        listing.kind.as_str()
    );
    for part in [&listing.description, &listing.service_name]
        .into_iter()
        .flatten()
    {
        text.push(' ');
        text.push_str(part);
    }
    for tag in &listing.tags {
        text.push(' ');
        text.push_str(tag);
    }
    text.to_lowercase()
}

/// An amount as 78 zero-padded digits: text order is numeric order.
fn amount_key(amount: &Amount) -> String {
    format!("{:0>78}", amount.to_string())
}

fn address_text(address: &Address) -> String {
    format!("0x{}", hex_lower(address.as_slice()))
}

/// `text` with `%`, `_` and `\` escaped for `LIKE ... ESCAPE '\'`.
fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Contains `word`.
fn like_pattern(word: &str) -> String {
    format!("%{}%", like_escaped(word))
}

/// `origin` followed by a path.
fn like_prefix(origin: &str) -> String {
    format!("{}/%", like_escaped(origin))
}

const LISTING_COLUMNS: &str = "id, resource, kind, operation, route_template, x402_version, \
     description, mime_type, service_name, tags, extension, first_seen_ms, last_seen_ms, \
     last_settled_ms, verified_count, settled_count, settle_failures, distinct_payers, \
     price_changes, payee_changes, validation_failures, paid_then_required, compensations";

fn listing_from_row<R>(row: &R) -> Result<ListingRecord, DatabaseError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ListingRecord {
        id: row.try_get("id")?,
        resource: row.try_get("resource")?,
        kind: row.try_get("kind")?,
        operation: row.try_get("operation")?,
        route_template: row.try_get("route_template")?,
        x402_version: row.try_get("x402_version")?,
        description: row.try_get("description")?,
        mime_type: row.try_get("mime_type")?,
        service_name: row.try_get("service_name")?,
        tags: row.try_get("tags")?,
        extension: row.try_get("extension")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        last_settled_ms: row.try_get("last_settled_ms")?,
        verified_count: row.try_get("verified_count")?,
        settled_count: row.try_get("settled_count")?,
        settle_failures: row.try_get("settle_failures")?,
        distinct_payers: row.try_get("distinct_payers")?,
        price_changes: row.try_get("price_changes")?,
        payee_changes: row.try_get("payee_changes")?,
        validation_failures: row.try_get("validation_failures")?,
        paid_then_required: row.try_get("paid_then_required")?,
        compensations: row.try_get("compensations")?,
        terms: Vec::new(),
    })
}

/// The `WHERE` of a search, with `$1`.. placeholders from `first`; the binds in order.
fn search_filter(query: &CatalogQuery) -> (String, Vec<SearchBind>) {
    let mut clauses = vec!["l.last_seen_ms >= $1".to_string()];
    let mut binds = vec![SearchBind::Int(query.seen_since_ms)];
    let next = |binds: &mut Vec<SearchBind>, bind: SearchBind| {
        binds.push(bind);
        format!("${}", binds.len())
    };
    if let Some(kind) = query.kind {
        let slot = next(&mut binds, SearchBind::Text(kind.as_str().into()));
        clauses.push(format!("l.kind = {slot}"));
    }
    if query.settled_only {
        clauses.push("l.settled_count > 0".into());
    }
    if let Some(resource) = &query.resource {
        let exact = next(&mut binds, SearchBind::Text(resource.clone()));
        let origin = bursar_protocol::discovery::split_origin(resource)
            .map(|(origin, _)| origin)
            .unwrap_or(resource);
        let templates = next(&mut binds, SearchBind::Text(like_prefix(origin)));
        clauses.push(format!(
            "(l.resource = {exact} OR (l.route_template IS NOT NULL AND l.resource LIKE {templates} ESCAPE '\\'))"
        ));
    }
    for word in query
        .words
        .iter()
        .map(|word| word.trim().to_lowercase())
        .filter(|word| !word.is_empty())
        .take(QUERY_WORDS_MAX)
    {
        let slot = next(&mut binds, SearchBind::Text(like_pattern(&word)));
        clauses.push(format!("l.search_text LIKE {slot} ESCAPE '\\'"));
    }
    let mut terms = Vec::new();
    if let Some(scheme) = &query.scheme {
        let slot = next(&mut binds, SearchBind::Text(scheme.clone()));
        terms.push(format!("t.scheme = {slot}"));
    }
    if let Some(network) = &query.network {
        let slot = next(&mut binds, SearchBind::Text(network.clone()));
        terms.push(format!("t.network = {slot}"));
    }
    if let Some(asset) = &query.asset {
        let slot = next(&mut binds, SearchBind::Text(address_text(asset)));
        terms.push(format!("t.asset = {slot}"));
    }
    if let Some(pay_to) = &query.pay_to {
        let slot = next(&mut binds, SearchBind::Text(address_text(pay_to)));
        terms.push(format!("t.pay_to = {slot}"));
    }
    if let Some(max) = &query.max_amount {
        let slot = next(&mut binds, SearchBind::Text(amount_key(max)));
        terms.push(format!("t.amount_key <= {slot}"));
    }
    if !terms.is_empty() {
        // The matching terms are found once (by catalog_terms_offer or catalog_terms_payee), not
        // looked up again for every listing.
        clauses.push(format!(
            "l.id IN (SELECT t.listing_id FROM catalog_terms t WHERE {})",
            terms.join(" AND ")
        ));
    }
    (clauses.join(" AND "), binds)
}

enum SearchBind {
    Int(i64),
    Text(String),
}

fn terms_from_row<R>(row: &R) -> Result<(String, TermsRecord), DatabaseError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        row.try_get("listing_id")?,
        TermsRecord {
            scheme: row.try_get("scheme")?,
            network: row.try_get("network")?,
            asset: row.try_get("asset")?,
            pay_to: row.try_get("pay_to")?,
            amount: row.try_get("amount")?,
            accepted: row.try_get("accepted")?,
            last_seen_ms: row.try_get("last_seen_ms")?,
        },
    ))
}

macro_rules! catalog_store_impl {
    ($store:ident) => {
        impl $store {
            /// Records one event inside `tx`; returns whether it was listed.
            async fn record_one<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as DbOf>::Db>,
                event: &CatalogEvent,
                limits: CatalogLimits,
            ) -> Result<bool, DatabaseError> {
                let listing = &event.listing;
                let id = listing_id(listing);
                let at = event.at_ms;
                let tags = serde_json::to_string(&listing.tags).unwrap_or_else(|_| "[]".into());
                let extension = serde_json::to_string(&listing.extension)
                    .unwrap_or_else(|_| "{}".into());
                let updated = sqlx::query(
                    "UPDATE catalog_listings SET last_seen_ms = CASE WHEN last_seen_ms > $2 \
                     THEN last_seen_ms ELSE $2 END, route_template = $3, x402_version = $4, \
                     description = $5, mime_type = $6, service_name = $7, tags = $8, \
                     extension = $9, search_text = $10 WHERE id = $1",
                )
                .bind(&id)
                .bind(at)
                .bind(listing.route_template.as_deref())
                .bind(i64::from(listing.version.number()))
                .bind(listing.description.as_deref())
                .bind(listing.mime_type.as_deref())
                .bind(listing.service_name.as_deref())
                .bind(&tags)
                .bind(&extension)
                .bind(search_text(listing))
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let pay_to = address_text(&event.terms.pay_to);
                if updated == 0 {
                    let of_payee: i64 = sqlx::query(
                        "SELECT COUNT(DISTINCT listing_id) AS n FROM catalog_terms WHERE pay_to = $1",
                    )
                    .bind(&pay_to)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get("n")?;
                    let all: i64 = sqlx::query("SELECT COUNT(*) AS n FROM catalog_listings")
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get("n")?;
                    if of_payee as u64 >= limits.listings_per_payee_max
                        || all as u64 >= limits.listings_max
                    {
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO catalog_listings (id, resource, kind, operation, \
                         route_template, x402_version, description, mime_type, service_name, \
                         tags, extension, search_text, first_seen_ms, last_seen_ms) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&id)
                    .bind(&listing.resource)
                    .bind(listing.kind.as_str())
                    .bind(&listing.operation)
                    .bind(listing.route_template.as_deref())
                    .bind(i64::from(listing.version.number()))
                    .bind(listing.description.as_deref())
                    .bind(listing.mime_type.as_deref())
                    .bind(listing.service_name.as_deref())
                    .bind(&tags)
                    .bind(&extension)
                    .bind(search_text(listing))
                    .bind(at)
                    .execute(&mut **tx)
                    .await?;
                }
                Self::record_terms(tx, &id, event).await?;
                Self::record_outcome(tx, &id, event).await?;
                Ok(true)
            }

            async fn record_terms<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as DbOf>::Db>,
                id: &str,
                event: &CatalogEvent,
            ) -> Result<(), DatabaseError> {
                let terms = &event.terms;
                let asset = address_text(&terms.asset);
                let pay_to = address_text(&terms.pay_to);
                let amount = terms.amount.to_string();
                let before = sqlx::query(
                    "SELECT amount, pay_to FROM catalog_terms WHERE listing_id = $1 \
                     AND scheme = $2 AND network = $3 AND asset = $4",
                )
                .bind(id)
                .bind(&terms.scheme)
                .bind(&terms.network)
                .bind(&asset)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(before) = before else {
                    sqlx::query(
                        "INSERT INTO catalog_terms (listing_id, scheme, network, asset, pay_to, \
                         amount, amount_key, accepted, first_seen_ms, last_seen_ms) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(&terms.scheme)
                    .bind(&terms.network)
                    .bind(&asset)
                    .bind(&pay_to)
                    .bind(&amount)
                    .bind(amount_key(&terms.amount))
                    .bind(&terms.accepted)
                    .bind(event.at_ms)
                    .execute(&mut **tx)
                    .await?;
                    return Ok(());
                };
                let old_amount: String = before.try_get("amount")?;
                let old_pay_to: String = before.try_get("pay_to")?;
                let price_changed = old_amount != amount;
                let payee_changed = old_pay_to != pay_to;
                sqlx::query(
                    "UPDATE catalog_terms SET pay_to = $5, amount = $6, amount_key = $7, \
                     accepted = $8, last_seen_ms = CASE WHEN last_seen_ms > $9 THEN last_seen_ms \
                     ELSE $9 END WHERE listing_id = $1 AND scheme = $2 AND network = $3 \
                     AND asset = $4",
                )
                .bind(id)
                .bind(&terms.scheme)
                .bind(&terms.network)
                .bind(&asset)
                .bind(&pay_to)
                .bind(&amount)
                .bind(amount_key(&terms.amount))
                .bind(&terms.accepted)
                .bind(event.at_ms)
                .execute(&mut **tx)
                .await?;
                if price_changed || payee_changed {
                    sqlx::query(
                        "INSERT INTO catalog_term_changes (listing_id, changed_at_ms, network, \
                         asset, old_amount, new_amount, old_pay_to, new_pay_to) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(id)
                    .bind(event.at_ms)
                    .bind(&terms.network)
                    .bind(&asset)
                    .bind(&old_amount)
                    .bind(&amount)
                    .bind(&old_pay_to)
                    .bind(&pay_to)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query(
                        "UPDATE catalog_listings SET price_changes = price_changes + $2, \
                         payee_changes = payee_changes + $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(i64::from(price_changed))
                    .bind(i64::from(payee_changed))
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            async fn record_outcome<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as DbOf>::Db>,
                id: &str,
                event: &CatalogEvent,
            ) -> Result<(), DatabaseError> {
                let payment = &event.payment;
                let key = (
                    payment.network.as_str(),
                    address_text(&payment.asset),
                    address_text(&payment.payer),
                    payment.nonce.to_string(),
                );
                let before: Option<String> = sqlx::query(
                    "SELECT outcome FROM catalog_payments WHERE network = $1 AND asset = $2 \
                     AND payer = $3 AND nonce = $4",
                )
                .bind(key.0)
                .bind(&key.1)
                .bind(&key.2)
                .bind(&key.3)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| row.try_get("outcome"))
                .transpose()?;
                let (write, counter) = match (event.outcome, before.as_deref()) {
                    (PaymentOutcome::Verified, None) => ("verified", Some("verified_count")),
                    (PaymentOutcome::Settled, None | Some("verified") | Some("failed")) => {
                        ("settled", Some("settled_count"))
                    }
                    (PaymentOutcome::SettleFailed, Some("verified")) => {
                        ("failed", Some("settle_failures"))
                    }
                    _ => return Ok(()),
                };
                sqlx::query(
                    "INSERT INTO catalog_payments (network, asset, payer, nonce, listing_id, \
                     outcome, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (network, asset, payer, nonce) DO UPDATE SET \
                     outcome = excluded.outcome, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(key.0)
                .bind(&key.1)
                .bind(&key.2)
                .bind(&key.3)
                .bind(id)
                .bind(write)
                .bind(event.at_ms)
                .execute(&mut **tx)
                .await?;
                if let Some(counter) = counter {
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE catalog_listings SET {counter} = {counter} + 1 WHERE id = $1"
                    )))
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                }
                if write == "settled" {
                    sqlx::query(
                        "UPDATE catalog_listings SET last_settled_ms = $2 WHERE id = $1 \
                         AND (last_settled_ms IS NULL OR last_settled_ms < $2)",
                    )
                    .bind(id)
                    .bind(event.at_ms)
                    .execute(&mut **tx)
                    .await?;
                    let new_payer = sqlx::query(
                        "INSERT INTO catalog_payers (listing_id, payer) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(&key.2)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if new_payer == 1 {
                        sqlx::query(
                            "UPDATE catalog_listings SET distinct_payers = distinct_payers + 1 \
                             WHERE id = $1",
                        )
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl CatalogStore for $store {
            async fn record(
                &self,
                events: &[CatalogEvent],
                limits: CatalogLimits,
            ) -> Result<usize, DatabaseError> {
                let pool = self.ready().await?;
                let mut tx = pool.begin().await?;
                let mut listed = 0;
                for event in events {
                    if Self::record_one(&mut tx, event, limits).await? {
                        listed += 1;
                    }
                }
                tx.commit().await?;
                Ok(listed)
            }

            async fn search(&self, query: &CatalogQuery) -> Result<CatalogPage, DatabaseError> {
                let pool = self.ready().await?;
                let (filter, binds) = search_filter(query);
                let count_sql = format!("SELECT COUNT(*) AS n FROM catalog_listings l WHERE {filter}");
                let mut count = sqlx::query(AssertSqlSafe(count_sql));
                for bind in &binds {
                    count = match bind {
                        SearchBind::Int(value) => count.bind(*value),
                        SearchBind::Text(value) => count.bind(value.clone()),
                    };
                }
                let total: i64 = count.fetch_one(pool).await?.try_get("n")?;
                // Most settlements first (counters are never negative, so the never settled come
                // last), then the most recently seen: the order of catalog_listings_order. The
                // page's ids are found on that index; only their rows are read whole, however deep
                // the page.
                let page_sql = format!(
                    "SELECT {LISTING_COLUMNS} FROM catalog_listings WHERE id IN \
                     (SELECT l.id FROM catalog_listings l WHERE {filter} \
                     ORDER BY l.settled_count DESC, l.last_seen_ms DESC, l.id LIMIT {} OFFSET {}) \
                     ORDER BY settled_count DESC, last_seen_ms DESC, id",
                    query.limit.min(1_000),
                    query.offset.min(i64::MAX as u64)
                );
                let mut page = sqlx::query(AssertSqlSafe(page_sql));
                for bind in &binds {
                    page = match bind {
                        SearchBind::Int(value) => page.bind(*value),
                        SearchBind::Text(value) => page.bind(value.clone()),
                    };
                }
                let rows = page.fetch_all(pool).await?;
                let mut listings = rows
                    .iter()
                    .map(listing_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                if !listings.is_empty() {
                    let slots: Vec<String> =
                        (1..=listings.len()).map(|index| format!("${index}")).collect();
                    let terms_sql = format!(
                        "SELECT listing_id, scheme, network, asset, pay_to, amount, accepted, \
                         last_seen_ms FROM catalog_terms WHERE listing_id IN ({}) \
                         ORDER BY last_seen_ms DESC",
                        slots.join(", ")
                    );
                    let mut terms = sqlx::query(AssertSqlSafe(terms_sql));
                    for listing in &listings {
                        terms = terms.bind(listing.id.clone());
                    }
                    for row in terms.fetch_all(pool).await? {
                        let (listing_id, record) = terms_from_row(&row)?;
                        if let Some(listing) =
                            listings.iter_mut().find(|listing| listing.id == listing_id)
                        {
                            listing.terms.push(record);
                        }
                    }
                }
                Ok(CatalogPage {
                    total: u64::try_from(total).unwrap_or_default(),
                    listings,
                })
            }

            async fn report(
                &self,
                payment: &PaymentRef,
                kind: ReportKind,
                at_ms: i64,
            ) -> Result<ReportOutcome, DatabaseError> {
                let pool = self.ready().await?;
                let mut tx = pool.begin().await?;
                let payer = address_text(&payment.payer);
                let asset = address_text(&payment.asset);
                let nonce = payment.nonce.to_string();
                let row = sqlx::query(
                    "SELECT listing_id, outcome FROM catalog_payments WHERE network = $1 \
                     AND asset = $2 AND payer = $3 AND nonce = $4",
                )
                .bind(&payment.network)
                .bind(&asset)
                .bind(&payer)
                .bind(&nonce)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(ReportOutcome::UnknownPayment);
                };
                let listing_id: String = row.try_get("listing_id")?;
                let outcome: String = row.try_get("outcome")?;
                if outcome != "settled" {
                    return Ok(ReportOutcome::UnknownPayment);
                }
                let inserted = sqlx::query(
                    "INSERT INTO catalog_reports (network, asset, payer, nonce, kind, \
                     listing_id, reported_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&payment.network)
                .bind(&asset)
                .bind(&payer)
                .bind(&nonce)
                .bind(kind.as_str())
                .bind(&listing_id)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Ok(ReportOutcome::AlreadyReported);
                }
                let counter = match kind {
                    ReportKind::ValidationFailed => "validation_failures",
                    ReportKind::PaymentRequiredAfterPayment => "paid_then_required",
                    ReportKind::Compensated => "compensations",
                };
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE catalog_listings SET {counter} = {counter} + 1 WHERE id = $1"
                )))
                .bind(&listing_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(ReportOutcome::Counted)
            }

            async fn prune(&self, cutoff_ms: i64) -> Result<u64, DatabaseError> {
                let pool = self.ready().await?;
                let mut removed = 0u64;
                loop {
                    let ids: Vec<String> = sqlx::query(
                        "SELECT id FROM catalog_listings WHERE last_seen_ms < $1 LIMIT $2",
                    )
                    .bind(cutoff_ms)
                    .bind(PRUNE_BATCH)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| row.try_get("id"))
                    .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        return Ok(removed);
                    }
                    let mut tx = pool.begin().await?;
                    for id in &ids {
                        for table in [
                            "catalog_terms",
                            "catalog_term_changes",
                            "catalog_payments",
                            "catalog_payers",
                            "catalog_reports",
                        ] {
                            sqlx::query(AssertSqlSafe(format!(
                                "DELETE FROM {table} WHERE listing_id = $1"
                            )))
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        }
                        sqlx::query("DELETE FROM catalog_listings WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    removed += ids.len() as u64;
                }
            }
        }
    };
}

/// The sqlx database type of a store, for the transactions the macro's functions take.
trait DbOf {
    type Db: sqlx::Database;
}

impl DbOf for SqliteDatabase {
    type Db = sqlx::Sqlite;
}

impl DbOf for PostgresDatabase {
    type Db = sqlx::Postgres;
}

catalog_store_impl!(SqliteDatabase);
catalog_store_impl!(PostgresDatabase);

/// Opens (creating and migrating as [`crate::open`] does) the catalog store at `url`.
pub async fn open_catalog_store(
    url: &str,
) -> Result<std::sync::Arc<dyn CatalogStore>, DatabaseError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteDatabase::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresDatabase::open(url).await?))
    } else {
        Err(DatabaseError::UnsupportedUrl {
            url: crate::redact(url),
        })
    }
}
