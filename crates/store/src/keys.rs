//! Facilitator API keys: one or more per seller, stored as SHA-256 digests, with per-key limits.
//!
//! A key is 32 random bytes shown once as `bsk_<64 hex>`; only its digest is stored. Lookups go
//! by digest (an index), and the digest read back is compared to the presented one in constant
//! time before it is trusted.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use crate::sql::{PostgresDatabase, SqliteDatabase};
use crate::{DatabaseError, now_ms};

/// The prefix of every key, so a leaked key is recognizable in a scanner.
pub const API_KEY_PREFIX: &str = "bsk_";
/// Random bytes in a key.
pub const API_KEY_SECRET_BYTES: usize = 32;
/// Longest seller name accepted.
pub const SELLER_NAME_BYTES_MAX: usize = 200;

/// The SHA-256 digest of an API key: what the database stores and lookups go by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of a presented key.
    pub fn of(key: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex, as stored.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    pub(crate) fn from_hex(text: &str) -> Option<KeyDigest> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(KeyDigest(bytes))
    }

    /// Equality whose time does not depend on where the digests differ.
    pub fn constant_time_eq(&self, other: &KeyDigest) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({})", self.to_hex())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Sustained requests per second (token bucket refill rate). At least 1.
    pub requests_per_second: u32,
    /// Requests allowed at once (token bucket size). At least 1.
    pub burst: u32,
    /// Settlements per UTC day; `None` for no quota.
    pub daily_settlements_max: Option<u64>,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            requests_per_second: 10,
            burst: 20,
            daily_settlements_max: None,
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub seller: String,
    pub digest: KeyDigest,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub limits: KeyLimits,
}

impl ApiKeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }
}

/// A key just created: the only time its plaintext exists outside the caller's hands.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    /// The key to give to the seller. Never stored, never logged.
    pub key: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Key failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(Box<DatabaseError>),
    #[error("invalid key limits: {0}")]
    InvalidLimits(String),
    #[error("invalid seller name: {0}")]
    InvalidSeller(String),
    #[error("corrupt api key row {id}: {message}")]
    Corrupt { id: String, message: String },
}

impl From<DatabaseError> for KeyError {
    fn from(error: DatabaseError) -> Self {
        KeyError::Store(Box::new(error))
    }
}

impl From<sqlx::Error> for KeyError {
    fn from(error: sqlx::Error) -> Self {
        KeyError::Store(Box::new(DatabaseError::Database(error)))
    }
}

/// The API key store. Implemented by [`SqliteDatabase`] and [`PostgresDatabase`] over the same
/// database as the settlement ledger.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Creates a key for `seller`; the returned plaintext is never available again.
    async fn create(&self, seller: &str, limits: KeyLimits) -> Result<NewApiKey, KeyError>;

    /// Every key, revoked ones too, oldest first. No secrets.
    async fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyError>;

    /// Revokes key `id`; returns whether a key that was not yet revoked was revoked.
    async fn revoke(&self, id: &str) -> Result<bool, KeyError>;

    /// The key with this digest (revoked or not), compared in constant time.
    async fn lookup(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>, KeyError>;

    /// Counts one settlement against key `id` on UTC day `day` (days since the epoch) if fewer
    /// than `max` were counted; returns whether it was counted. Atomic across processes.
    async fn take_daily_settlement(&self, id: &str, day: i64, max: u64) -> Result<bool, KeyError>;
}

/// Opens (creating and migrating as [`crate::open`] does) the key store at `url`.
pub async fn open_key_store(url: &str) -> Result<std::sync::Arc<dyn KeyStore>, DatabaseError> {
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

fn check_new(seller: &str, limits: &KeyLimits) -> Result<(), KeyError> {
    if seller.trim().is_empty() || seller.len() > SELLER_NAME_BYTES_MAX {
        return Err(KeyError::InvalidSeller(format!(
            "must be 1 to {SELLER_NAME_BYTES_MAX} bytes"
        )));
    }
    if limits.requests_per_second == 0 || limits.burst == 0 {
        return Err(KeyError::InvalidLimits(
            "requests per second and burst must be at least 1".into(),
        ));
    }
    if limits
        .daily_settlements_max
        .is_some_and(|max| i64::try_from(max).is_err())
    {
        return Err(KeyError::InvalidLimits(
            "daily settlements too large".into(),
        ));
    }
    Ok(())
}

/// `bytes` random bytes, as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex_lower(&buffer)
}

const KEY_COLUMNS: &str = "id, seller, digest, created_at_ms, revoked_at_ms, requests_per_second, burst, \
     daily_settlements_max";

fn key_from_row<R>(row: &R) -> Result<ApiKeyRecord, KeyError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let corrupt = |message: &str| KeyError::Corrupt {
        id: id.clone(),
        message: message.to_string(),
    };
    let digest: String = row.try_get("digest")?;
    let digest = KeyDigest::from_hex(&digest).ok_or_else(|| corrupt("unreadable digest"))?;
    let requests_per_second: i64 = row.try_get("requests_per_second")?;
    let burst: i64 = row.try_get("burst")?;
    let daily: Option<i64> = row.try_get("daily_settlements_max")?;
    let limits = KeyLimits {
        requests_per_second: u32::try_from(requests_per_second)
            .map_err(|_| corrupt("requests_per_second out of range"))?,
        burst: u32::try_from(burst).map_err(|_| corrupt("burst out of range"))?,
        daily_settlements_max: daily
            .map(u64::try_from)
            .transpose()
            .map_err(|_| corrupt("negative daily_settlements_max"))?,
    };
    Ok(ApiKeyRecord {
        seller: row.try_get("seller")?,
        digest,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        limits,
        id,
    })
}

macro_rules! key_store_impl {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl KeyStore for $store {
            async fn create(&self, seller: &str, limits: KeyLimits) -> Result<NewApiKey, KeyError> {
                check_new(seller, &limits)?;
                let pool = self.ready().await?;
                let key = format!("{API_KEY_PREFIX}{}", random_hex(API_KEY_SECRET_BYTES));
                let record = ApiKeyRecord {
                    id: format!("key_{}", random_hex(8)),
                    seller: seller.to_string(),
                    digest: KeyDigest::of(&key),
                    created_at_ms: now_ms(),
                    revoked_at_ms: None,
                    limits,
                };
                sqlx::query(
                    "INSERT INTO api_keys (id, seller, digest, created_at_ms, requests_per_second, \
                     burst, daily_settlements_max) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&record.id)
                .bind(&record.seller)
                .bind(record.digest.to_hex())
                .bind(record.created_at_ms)
                .bind(i64::from(limits.requests_per_second))
                .bind(i64::from(limits.burst))
                .bind(limits.daily_settlements_max.map(|max| max as i64))
                .execute(pool)
                .await?;
                Ok(NewApiKey { record, key })
            }

            async fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyError> {
                let pool = self.ready().await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at_ms, id"
                )))
                .fetch_all(pool)
                .await?;
                rows.iter().map(key_from_row).collect()
            }

            async fn revoke(&self, id: &str) -> Result<bool, KeyError> {
                let pool = self.ready().await?;
                let updated = sqlx::query(
                    "UPDATE api_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn lookup(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>, KeyError> {
                let pool = self.ready().await?;
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE digest = $1"
                )))
                .bind(digest.to_hex())
                .fetch_optional(pool)
                .await?;
                let record = row.as_ref().map(key_from_row).transpose()?;
                Ok(record.filter(|record| record.digest.constant_time_eq(digest)))
            }

            async fn take_daily_settlement(
                &self,
                id: &str,
                day: i64,
                max: u64,
            ) -> Result<bool, KeyError> {
                let pool = self.ready().await?;
                let max = i64::try_from(max).unwrap_or(i64::MAX);
                sqlx::query(
                    "INSERT INTO api_key_usage (key_id, day, settlements) VALUES ($1, $2, 0) \
                     ON CONFLICT (key_id, day) DO NOTHING",
                )
                .bind(id)
                .bind(day)
                .execute(pool)
                .await?;
                let counted = sqlx::query(
                    "UPDATE api_key_usage SET settlements = settlements + 1 \
                     WHERE key_id = $1 AND day = $2 AND settlements < $3",
                )
                .bind(id)
                .bind(day)
                .bind(max)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(counted == 1)
            }
        }
    };
}

key_store_impl!(SqliteDatabase);
key_store_impl!(PostgresDatabase);
