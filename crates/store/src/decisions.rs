//! The decision trace: every payment the runtime allows or refuses, with the rules that ran, their
//! inputs and their results, in one hash chain so that an edit is detectable.
//!
//! ## What is hashed
//!
//! Decisions are numbered `seq` = 1, 2, 3, … with no gaps. Each row stores `prev_hash` (the hash
//! of the row before it; 64 zeros for the first) and
//!
//! ```text
//! hash = SHA-256(prev_hash_hex || content)
//! ```
//!
//! in lowercase hex, where `content` is an unambiguous encoding of everything else the row says:
//! a version tag, then `seq`, `id`, `at_ms`, `session_id`, `wallet_id`, `agent`, `transfer_id`,
//! `resource`, `payee`, `amount` (the decimal text as stored), `allowed`, `reason` and `rules`
//! (the compact JSON text exactly as stored), in that order. Every field is length-prefixed
//! (8 bytes, big-endian) and every optional field is preceded by a presence byte, so no two
//! different rows encode alike.
//!
//! Writers serialize on the one-row `decision_chain` table: in one transaction,
//! [`DecisionStore::record_decision`] bumps its `seq` first (a row lock on PostgreSQL, the write
//! lock on SQLite), reads the head hash, inserts the new row and moves the head to it. Concurrent
//! writers, in this process or in others sharing the database, therefore form one chain.
//!
//! ## What verification proves
//!
//! [`DecisionStore::verify_decisions`] (`bursar audit verify`) walks the whole chain and reports
//! the first row that does not verify:
//!
//! - a changed field (amount, allowed, reason, rules, …) changes the row's hash;
//! - a deleted row leaves a gap in `seq`; a deleted last row leaves the chain short of the head
//!   recorded in `decision_chain`;
//! - a moved or re-linked row breaks `prev_hash`;
//! - a row added after the head is not covered by it;
//! - an unreadable row (rules that are not JSON, an amount that is not a number) is broken too.
//!
//! What it cannot prove: the chain is not signed. Someone with write access to the database who
//! rewrites a row *and* recomputes every hash after it *and* the head produces a chain that
//! verifies. Such a rewrite changes the hash of every row from the edited one on, so it is
//! caught by comparing with a copy of the head kept elsewhere: operators should periodically copy
//! the head hash and seq that `bursar audit verify` prints to another system (a ticket, a log
//! store, a notebook), and check that the row with that seq still has that hash
//! (`bursar audit verify --expect <seq>:<hash>`).

use bursar_protocol::Amount;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::common::{LIST_ROWS_MAX, RESOURCE_BYTES_MAX, StoreError, new_id, truncate};
use crate::sql::{PostgresDatabase, SqliteDatabase};
use crate::{DatabaseError, now_ms};

/// The `prev_hash` of the first decision: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Prefix of decision ids.
pub const DECISION_ID_PREFIX: &str = "dec_";
/// Longest `rules` accepted, as compact JSON text.
pub const RULES_JSON_BYTES_MAX: usize = 256 * 1024;
/// Longest text accepted in one of a decision's other fields (ids, agent, payee, reason).
pub const DECISION_FIELD_BYTES_MAX: usize = 4096;
/// Rows read per page while verifying the chain.
pub const VERIFY_PAGE_ROWS: usize = 1000;

/// The first field of the hashed content: names the encoding, so it can change without ambiguity.
const CONTENT_VERSION: &[u8] = b"bursar.decision.v1";

/// A decision to record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewDecision {
    pub session_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub transfer_id: Option<String>,
    /// Truncated to [`RESOURCE_BYTES_MAX`] for the record.
    pub resource: Option<String>,
    pub payee: Option<String>,
    pub amount: Option<Amount>,
    pub allowed: bool,
    /// e.g. "budget_exhausted", "payee_not_allowed"; None when allowed.
    pub reason: Option<String>,
    /// The rules that ran, in order: a JSON array of {"rule","input","passed","detail"} objects.
    /// Anything but an array is refused.
    pub rules: serde_json::Value,
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// Position in the chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    /// `dec_` + 24 hex digits.
    pub id: String,
    /// When it was recorded, unix ms.
    pub at_ms: i64,
    pub session_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub transfer_id: Option<String>,
    pub resource: Option<String>,
    pub payee: Option<String>,
    pub amount: Option<Amount>,
    pub allowed: bool,
    pub reason: Option<String>,
    pub rules: serde_json::Value,
    /// The previous decision's hash ([`GENESIS_HASH`] for the first), lowercase hex.
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this row's content, lowercase hex.
    pub hash: String,
}

/// The outcome of [`DecisionStore::verify_decisions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// Rows that verified (all of them when the chain is intact).
    pub checked: u64,
    /// The head hash recorded in `decision_chain`: the last row's hash when the chain is intact,
    /// [`GENESIS_HASH`] when it is empty.
    pub head_hash: String,
    /// The first row that does not verify, and why.
    pub broken: Option<(i64, String)>,
}

impl ChainCheck {
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// The decision trace. [`SqliteDatabase`] and [`PostgresDatabase`] implement it over the runtime's
/// database; [`open_decision_store`] picks one from a URL.
#[async_trait::async_trait]
pub trait DecisionStore: Send + Sync + 'static {
    /// Appends a decision to the chain (see the module docs); returns it as stored.
    async fn record_decision(&self, decision: NewDecision) -> Result<DecisionRecord, StoreError>;
    /// seq > after, in order, at most limit (cap at runtime::LIST_ROWS_MAX).
    async fn decisions(&self, after: i64, limit: usize) -> Result<Vec<DecisionRecord>, StoreError>;
    /// Decisions whose id, transfer_id or session_id equals `id`, in order.
    async fn decisions_for(&self, id: &str) -> Result<Vec<DecisionRecord>, StoreError>;
    /// Walks the whole chain (paged) and recomputes every hash.
    async fn verify_decisions(&self) -> Result<ChainCheck, StoreError>;
}

/// Opens (creating and migrating) the decision store at `url`.
pub async fn open_decision_store(
    url: &str,
) -> Result<std::sync::Arc<dyn DecisionStore>, DatabaseError> {
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

/// A row as stored: every value as the database holds it, before interpretation.
#[derive(Debug, Clone)]
pub(crate) struct StoredDecision {
    seq: i64,
    id: String,
    at_ms: i64,
    session_id: Option<String>,
    wallet_id: Option<String>,
    agent: Option<String>,
    transfer_id: Option<String>,
    resource: Option<String>,
    payee: Option<String>,
    amount: Option<String>,
    allowed: bool,
    reason: Option<String>,
    rules: String,
    prev_hash: String,
    hash: String,
}

impl StoredDecision {
    /// Names the transfer the decision allowed, once the store has made it.
    pub(crate) fn set_transfer(&mut self, transfer_id: &str) {
        self.transfer_id = Some(transfer_id.to_string());
    }

    /// SHA-256 over `prev_hash` and this row's canonical content (everything but the hashes).
    fn compute_hash(&self, prev_hash: &str) -> String {
        fn field(hasher: &mut Sha256, bytes: &[u8]) {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        }
        fn optional(hasher: &mut Sha256, value: Option<&str>) {
            match value {
                None => hasher.update([0u8]),
                Some(text) => {
                    hasher.update([1u8]);
                    field(hasher, text.as_bytes());
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        field(&mut hasher, CONTENT_VERSION);
        field(&mut hasher, &self.seq.to_be_bytes());
        field(&mut hasher, self.id.as_bytes());
        field(&mut hasher, &self.at_ms.to_be_bytes());
        optional(&mut hasher, self.session_id.as_deref());
        optional(&mut hasher, self.wallet_id.as_deref());
        optional(&mut hasher, self.agent.as_deref());
        optional(&mut hasher, self.transfer_id.as_deref());
        optional(&mut hasher, self.resource.as_deref());
        optional(&mut hasher, self.payee.as_deref());
        optional(&mut hasher, self.amount.as_deref());
        hasher.update([u8::from(self.allowed)]);
        optional(&mut hasher, self.reason.as_deref());
        field(&mut hasher, self.rules.as_bytes());
        crate::keys::hex_lower(&hasher.finalize())
    }

    /// The record, or why the stored values do not make one.
    fn record(&self) -> Result<DecisionRecord, String> {
        let amount = self
            .amount
            .as_deref()
            .map(|text| {
                Amount::parse_atomic(text).map_err(|_| format!("amount {text:?} is not a number"))
            })
            .transpose()?;
        let rules: serde_json::Value = serde_json::from_str(&self.rules)
            .map_err(|error| format!("rules are not valid JSON: {error}"))?;
        if !rules.is_array() {
            return Err("rules are not a JSON array".into());
        }
        Ok(DecisionRecord {
            seq: self.seq,
            id: self.id.clone(),
            at_ms: self.at_ms,
            session_id: self.session_id.clone(),
            wallet_id: self.wallet_id.clone(),
            agent: self.agent.clone(),
            transfer_id: self.transfer_id.clone(),
            resource: self.resource.clone(),
            payee: self.payee.clone(),
            amount,
            allowed: self.allowed,
            reason: self.reason.clone(),
            rules,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

const INSERT_DECISION: &str = "INSERT INTO decisions (seq, id, at_ms, session_id, wallet_id, \
     agent, transfer_id, resource, payee, amount, allowed, reason, rules, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";
const SELECT_AFTER: &str = "SELECT seq, id, at_ms, session_id, wallet_id, agent, transfer_id, \
     resource, payee, amount, allowed, reason, rules, prev_hash, hash FROM decisions \
     WHERE seq > $1 ORDER BY seq LIMIT $2";
const SELECT_PAGE_UPTO: &str = "SELECT seq, id, at_ms, session_id, wallet_id, agent, \
     transfer_id, resource, payee, amount, allowed, reason, rules, prev_hash, hash FROM decisions \
     WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3";
const SELECT_FOR: &str = "SELECT seq, id, at_ms, session_id, wallet_id, agent, transfer_id, \
     resource, payee, amount, allowed, reason, rules, prev_hash, hash FROM decisions \
     WHERE id = $1 OR transfer_id = $1 OR session_id = $1 ORDER BY seq LIMIT $2";
const SELECT_HEAD: &str = "SELECT seq, head_hash FROM decision_chain WHERE id = 1";
/// Takes the next sequence number, locking the chain head until the transaction ends.
const ADVANCE_HEAD: &str =
    "UPDATE decision_chain SET seq = seq + 1 WHERE id = 1 RETURNING seq, head_hash";

/// Appends a prepared decision to the hash chain inside `tx`, a transaction of the runtime's
/// store: the chain head is locked by the first statement and held until `tx` commits, so the
/// decision and whatever else `tx` writes are one commit.
pub(crate) async fn append_decision(
    tx: &mut crate::db::Tx,
    mut stored: StoredDecision,
) -> Result<DecisionRecord, StoreError> {
    use crate::db::statement;
    let head = tx
        .fetch_optional(statement(ADVANCE_HEAD))
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt("the decision chain head (decision_chain row 1) is missing".into())
        })?;
    stored.seq = head.get("seq")?;
    stored.prev_hash = head.get("head_hash")?;
    stored.hash = stored.compute_hash(&stored.prev_hash);
    // The row and the head that names it: one statement on PostgreSQL (a data-modifying CTE,
    // one round trip), two on SQLite.
    let insert = if tx.is_postgres() {
        statement(sqlx::AssertSqlSafe(format!(
            "WITH inserted AS ({INSERT_DECISION}) \
             UPDATE decision_chain SET head_hash = $15 WHERE id = 1"
        )))
    } else {
        statement(INSERT_DECISION)
    };
    tx.execute(
        insert
            .bind(stored.seq)
            .bind(&stored.id)
            .bind(stored.at_ms)
            .bind(stored.session_id.clone())
            .bind(stored.wallet_id.clone())
            .bind(stored.agent.clone())
            .bind(stored.transfer_id.clone())
            .bind(stored.resource.clone())
            .bind(stored.payee.clone())
            .bind(stored.amount.clone())
            .bind(stored.allowed)
            .bind(stored.reason.clone())
            .bind(&stored.rules)
            .bind(&stored.prev_hash)
            .bind(&stored.hash),
    )
    .await?;
    if !tx.is_postgres() {
        tx.execute(
            statement("UPDATE decision_chain SET head_hash = $1 WHERE id = 1").bind(&stored.hash),
        )
        .await?;
    }
    stored
        .record()
        .map_err(|message| corrupt(Some(stored.seq), &message))
}

/// Reads a row's columns; an undecodable column (possible on SQLite, whose columns accept any
/// type) is reported as text, with the seq when it could be read.
fn stored_from_row<R>(row: &R) -> Result<StoredDecision, (Option<i64>, String)>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row
        .try_get("seq")
        .map_err(|error| (None, format!("unreadable seq: {error}")))?;
    let unreadable = |column: &str, error: sqlx::Error| {
        (Some(seq), format!("unreadable column {column}: {error}"))
    };
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column)
                .map_err(|error| unreadable($column, error))?
        };
    }
    Ok(StoredDecision {
        seq,
        id: get!("id"),
        at_ms: get!("at_ms"),
        session_id: get!("session_id"),
        wallet_id: get!("wallet_id"),
        agent: get!("agent"),
        transfer_id: get!("transfer_id"),
        resource: get!("resource"),
        payee: get!("payee"),
        amount: get!("amount"),
        allowed: get!("allowed"),
        reason: get!("reason"),
        rules: get!("rules"),
        prev_hash: get!("prev_hash"),
        hash: get!("hash"),
    })
}

/// A row for a listing: corrupt rows are errors.
fn record_from_row<R>(row: &R) -> Result<DecisionRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let stored = stored_from_row(row).map_err(|(seq, message)| corrupt(seq, &message))?;
    let seq = stored.seq;
    stored
        .record()
        .map_err(|message| corrupt(Some(seq), &message))
}

fn corrupt(seq: Option<i64>, message: &str) -> StoreError {
    match seq {
        Some(seq) => StoreError::Corrupt(format!("decision {seq}: {message}")),
        None => StoreError::Corrupt(format!("decision: {message}")),
    }
}

fn check_field(what: &str, value: Option<&str>) -> Result<(), StoreError> {
    if value.is_some_and(|text| text.len() > DECISION_FIELD_BYTES_MAX) {
        return Err(StoreError::Invalid(format!(
            "decision {what} is longer than {DECISION_FIELD_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// The checked, stored form of a new decision (seq, prev_hash and hash still to fill in).
pub(crate) fn prepare(decision: NewDecision) -> Result<StoredDecision, StoreError> {
    if !decision.rules.is_array() {
        return Err(StoreError::Invalid(
            "decision rules must be a JSON array".into(),
        ));
    }
    let rules = serde_json::to_string(&decision.rules)
        .map_err(|error| StoreError::Invalid(format!("decision rules: {error}")))?;
    if rules.len() > RULES_JSON_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "decision rules are {} bytes of JSON, more than {RULES_JSON_BYTES_MAX}",
            rules.len()
        )));
    }
    check_field("session id", decision.session_id.as_deref())?;
    check_field("wallet id", decision.wallet_id.as_deref())?;
    check_field("agent", decision.agent.as_deref())?;
    check_field("transfer id", decision.transfer_id.as_deref())?;
    check_field("payee", decision.payee.as_deref())?;
    check_field("reason", decision.reason.as_deref())?;
    Ok(StoredDecision {
        seq: 0,
        id: new_id(DECISION_ID_PREFIX),
        at_ms: now_ms(),
        session_id: decision.session_id,
        wallet_id: decision.wallet_id,
        agent: decision.agent,
        transfer_id: decision.transfer_id,
        resource: decision
            .resource
            .map(|resource| truncate(&resource, RESOURCE_BYTES_MAX)),
        payee: decision.payee,
        amount: decision.amount.map(|amount| amount.to_string()),
        allowed: decision.allowed,
        reason: decision.reason,
        rules,
        prev_hash: String::new(),
        hash: String::new(),
    })
}

/// Where a walk of the chain stands.
struct Walk {
    checked: u64,
    /// The seq of the last row that verified (0 before the first).
    seq: i64,
    /// The hash of the last row that verified (the genesis hash before the first).
    hash: String,
}

impl Walk {
    /// Checks the next row; `Err` names why it is broken.
    fn step(&mut self, stored: StoredDecision) -> Result<(), (i64, String)> {
        let expected = self.seq + 1;
        if stored.seq != expected {
            return Err(if stored.seq > expected {
                (
                    expected,
                    format!(
                        "decision {expected} is missing (the row after {} is {})",
                        self.seq, stored.seq
                    ),
                )
            } else {
                (
                    stored.seq,
                    format!("unexpected seq {} after {}", stored.seq, self.seq),
                )
            });
        }
        if stored.prev_hash != self.hash {
            return Err((
                stored.seq,
                format!(
                    "prev_hash {} is not the hash of decision {} ({})",
                    stored.prev_hash, self.seq, self.hash
                ),
            ));
        }
        stored.record().map_err(|message| (stored.seq, message))?;
        let computed = stored.compute_hash(&self.hash);
        if stored.hash != computed {
            return Err((
                stored.seq,
                format!(
                    "content does not match its hash: stored {}, computed {computed}",
                    stored.hash
                ),
            ));
        }
        self.checked += 1;
        self.seq = stored.seq;
        self.hash = stored.hash;
        Ok(())
    }
}

/// Writes the [`DecisionStore`] implementation for one store type. Both backends run the same
/// statements (`$n` placeholders work on both).
macro_rules! decision_store_impl {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl DecisionStore for $store {
            async fn record_decision(
                &self,
                decision: NewDecision,
            ) -> Result<DecisionRecord, StoreError> {
                let mut stored = prepare(decision)?;
                let pool = self.ready().await?;
                let mut tx = pool.begin().await?;
                // The write comes first, so that this transaction holds the chain until commit.
                let locked = sqlx::query("UPDATE decision_chain SET seq = seq + 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if locked != 1 {
                    return Err(StoreError::Corrupt(
                        "the decision chain head (decision_chain row 1) is missing".into(),
                    ));
                }
                let head = sqlx::query(SELECT_HEAD).fetch_one(&mut *tx).await?;
                stored.seq = head.try_get("seq")?;
                stored.prev_hash = head.try_get("head_hash")?;
                stored.hash = stored.compute_hash(&stored.prev_hash);
                sqlx::query(INSERT_DECISION)
                    .bind(stored.seq)
                    .bind(&stored.id)
                    .bind(stored.at_ms)
                    .bind(&stored.session_id)
                    .bind(&stored.wallet_id)
                    .bind(&stored.agent)
                    .bind(&stored.transfer_id)
                    .bind(&stored.resource)
                    .bind(&stored.payee)
                    .bind(&stored.amount)
                    .bind(stored.allowed)
                    .bind(&stored.reason)
                    .bind(&stored.rules)
                    .bind(&stored.prev_hash)
                    .bind(&stored.hash)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE decision_chain SET head_hash = $1 WHERE id = 1")
                    .bind(&stored.hash)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                stored
                    .record()
                    .map_err(|message| corrupt(Some(stored.seq), &message))
            }

            async fn decisions(
                &self,
                after: i64,
                limit: usize,
            ) -> Result<Vec<DecisionRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = i64::try_from(limit.min(LIST_ROWS_MAX)).unwrap_or(0);
                let rows = sqlx::query(SELECT_AFTER)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn decisions_for(&self, id: &str) -> Result<Vec<DecisionRecord>, StoreError> {
                let pool = self.ready().await?;
                let limit = i64::try_from(LIST_ROWS_MAX).unwrap_or(0);
                let rows = sqlx::query(SELECT_FOR)
                    .bind(id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn verify_decisions(&self) -> Result<ChainCheck, StoreError> {
                let pool = self.ready().await?;
                // The head first: every row up to it was committed with it, so is visible now.
                let head = sqlx::query(SELECT_HEAD)
                    .fetch_optional(pool)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Corrupt(
                            "the decision chain head (decision_chain row 1) is missing".into(),
                        )
                    })?;
                let head_seq: i64 = head.try_get("seq")?;
                let head_hash: String = head.try_get("head_hash")?;
                let mut walk = Walk {
                    checked: 0,
                    seq: 0,
                    hash: GENESIS_HASH.to_string(),
                };
                let page = i64::try_from(VERIFY_PAGE_ROWS).unwrap_or(1);
                // Rows at or below seq 0 are never written; start below them so they are seen.
                let mut after = i64::MIN;
                let broken = 'walk: loop {
                    let rows = sqlx::query(SELECT_PAGE_UPTO)
                        .bind(after)
                        .bind(head_seq)
                        .bind(page)
                        .fetch_all(pool)
                        .await?;
                    for row in &rows {
                        let stored = match stored_from_row(row) {
                            Ok(stored) => stored,
                            Err((seq, message)) => {
                                break 'walk Some((seq.unwrap_or(walk.seq + 1), message));
                            }
                        };
                        after = stored.seq;
                        if let Err(broken) = walk.step(stored) {
                            break 'walk Some(broken);
                        }
                    }
                    if rows.len() < VERIFY_PAGE_ROWS {
                        break None;
                    }
                };
                let broken = match broken {
                    Some(broken) => Some(broken),
                    None if walk.seq < head_seq => Some((
                        walk.seq + 1,
                        format!(
                            "decision {} is missing: the chain head is at decision {head_seq}",
                            walk.seq + 1
                        ),
                    )),
                    None if walk.hash != head_hash => Some((
                        walk.seq,
                        format!(
                            "the chain head records hash {head_hash} for decision {head_seq}, \
                             the row has {}",
                            walk.hash
                        ),
                    )),
                    None => {
                        // Rows beyond the head: read them before the head, so that rows written
                        // meanwhile (committed with a newer head) are not taken for forgeries.
                        let beyond: Option<i64> =
                            sqlx::query_scalar("SELECT MAX(seq) FROM decisions")
                                .fetch_one(pool)
                                .await?;
                        let now: i64 =
                            sqlx::query_scalar("SELECT seq FROM decision_chain WHERE id = 1")
                                .fetch_one(pool)
                                .await?;
                        match beyond {
                            Some(last) if last > now => {
                                let first: i64 = sqlx::query_scalar(
                                    "SELECT MIN(seq) FROM decisions WHERE seq > $1",
                                )
                                .bind(now)
                                .fetch_one(pool)
                                .await?;
                                Some((
                                    first,
                                    format!(
                                        "decision {first} is beyond the chain head (decision {now})"
                                    ),
                                ))
                            }
                            _ => None,
                        }
                    }
                };
                Ok(ChainCheck {
                    checked: walk.checked,
                    head_hash,
                    broken,
                })
            }
        }
    };
}

decision_store_impl!(SqliteDatabase);
decision_store_impl!(PostgresDatabase);
