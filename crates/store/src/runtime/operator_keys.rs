//! Operator keys: the runtime API's credentials, stored only as SHA-256 digests.

use super::SqlRuntimeStore;
use crate::common::{StoreError, check_name, new_id};
use crate::db::{Row, statement};
use crate::keys::{KeyDigest, random_hex};
use crate::now_ms;

/// Prefix of operator API keys.
pub const OPERATOR_KEY_PREFIX: &str = "bok_";
/// Random bytes in an operator key.
pub const OPERATOR_KEY_SECRET_BYTES: usize = 32;

/// An operator key without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorKeyRecord {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// An operator key just created: the only time its plaintext exists.
pub struct NewOperatorKey {
    pub record: OperatorKeyRecord,
    pub key: String,
}

impl std::fmt::Debug for NewOperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOperatorKey")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The operator keys.
#[async_trait::async_trait]
pub trait OperatorKeyStore: Send + Sync + 'static {
    async fn create_operator_key(&self, name: &str) -> Result<NewOperatorKey, StoreError>;
    /// The unrevoked key with this digest.
    async fn operator_key(
        &self,
        digest: &KeyDigest,
    ) -> Result<Option<OperatorKeyRecord>, StoreError>;
    async fn operator_keys(&self) -> Result<Vec<OperatorKeyRecord>, StoreError>;
    async fn revoke_operator_key(&self, id: &str) -> Result<bool, StoreError>;
}

fn operator_key_from_row(row: &Row) -> Result<OperatorKeyRecord, StoreError> {
    Ok(OperatorKeyRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        created_at_ms: row.get("created_at_ms")?,
        revoked_at_ms: row.get("revoked_at_ms")?,
    })
}

#[async_trait::async_trait]
impl OperatorKeyStore for SqlRuntimeStore {
    async fn create_operator_key(&self, name: &str) -> Result<NewOperatorKey, StoreError> {
        check_name("operator key name", name)?;
        let db = self.db().await?;
        let key = format!(
            "{OPERATOR_KEY_PREFIX}{}",
            random_hex(OPERATOR_KEY_SECRET_BYTES)
        );
        let record = OperatorKeyRecord {
            id: new_id("opk_"),
            name: name.to_string(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        db.execute(
            statement(
                "INSERT INTO operator_keys (id, name, digest, created_at_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&record.id)
            .bind(&record.name)
            .bind(KeyDigest::of(&key).to_hex())
            .bind(record.created_at_ms),
        )
        .await?;
        Ok(NewOperatorKey { record, key })
    }

    async fn operator_key(
        &self,
        digest: &KeyDigest,
    ) -> Result<Option<OperatorKeyRecord>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement(
                    "SELECT id, name, digest, created_at_ms, revoked_at_ms FROM operator_keys \
                     WHERE digest = $1 AND revoked_at_ms IS NULL",
                )
                .bind(digest.to_hex()),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.get("digest")?;
        if !KeyDigest::from_hex(&stored).is_some_and(|stored| stored.constant_time_eq(digest)) {
            return Ok(None);
        }
        operator_key_from_row(&row).map(Some)
    }

    async fn operator_keys(&self) -> Result<Vec<OperatorKeyRecord>, StoreError> {
        let db = self.db().await?;
        let rows = db
            .fetch_all(statement(
                "SELECT id, name, created_at_ms, revoked_at_ms FROM operator_keys \
                 ORDER BY created_at_ms, id",
            ))
            .await?;
        rows.iter().map(operator_key_from_row).collect()
    }

    async fn revoke_operator_key(&self, id: &str) -> Result<bool, StoreError> {
        let db = self.db().await?;
        let updated = db
            .execute(
                statement(
                    "UPDATE operator_keys SET revoked_at_ms = $2 \
                     WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms()),
            )
            .await?;
        Ok(updated == 1)
    }
}
