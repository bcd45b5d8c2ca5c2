//! Grants: a wallet owner's authorization for one agent, until it expires or is revoked.

use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use crate::common::{
    Created, LIST_ROWS_MAX, StoreError, check_idempotency_key, check_name, is_unique_violation,
    new_id, request_digest,
};
use crate::db::{Row, statement};
use crate::now_ms;

/// A wallet owner's authorization for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: String,
    pub wallet_id: String,
    pub agent: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl GrantRecord {
    /// Live: not revoked and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

#[derive(Debug, Clone)]
pub struct NewGrant {
    pub wallet_id: String,
    pub agent: String,
    pub expires_at_ms: i64,
    /// What the caller asked for (for example the duration), compared on idempotent retries.
    pub request: String,
    pub idempotency_key: Option<String>,
}

/// The grants.
#[async_trait::async_trait]
pub trait GrantStore: Send + Sync + 'static {
    async fn create_grant(&self, grant: NewGrant) -> Result<Created<GrantRecord>, StoreError>;
    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError>;
    /// Grants of a wallet (all wallets when `None`), newest first.
    async fn grants(&self, wallet_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError>;
    /// Revokes one live grant; returns whether it was live.
    async fn revoke_grant(&self, id: &str, reason: &str) -> Result<bool, StoreError>;
    /// Revokes every unrevoked grant (of one wallet, or of all): the kill switch. Returns how many.
    async fn revoke_all_grants(
        &self,
        wallet_id: Option<&str>,
        reason: &str,
    ) -> Result<u64, StoreError>;
}

pub(super) const GRANT_COLUMNS: &str =
    "id, wallet_id, agent, created_at_ms, expires_at_ms, revoked_at_ms, revoke_reason";

pub(super) fn grant_from_row(row: &Row) -> Result<GrantRecord, StoreError> {
    Ok(GrantRecord {
        id: row.get("id")?,
        wallet_id: row.get("wallet_id")?,
        agent: row.get("agent")?,
        created_at_ms: row.get("created_at_ms")?,
        expires_at_ms: row.get("expires_at_ms")?,
        revoked_at_ms: row.get("revoked_at_ms")?,
        revoke_reason: row.get("revoke_reason")?,
    })
}

#[async_trait::async_trait]
impl GrantStore for SqlRuntimeStore {
    async fn create_grant(&self, grant: NewGrant) -> Result<Created<GrantRecord>, StoreError> {
        check_name("agent name", &grant.agent)?;
        check_idempotency_key(grant.idempotency_key.as_deref())?;
        let db = self.db().await?;
        let digest = request_digest(&[&grant.wallet_id, &grant.agent, &grant.request]);
        if let Some(key) = &grant.idempotency_key {
            let row = db
                .fetch_optional(
                    statement(AssertSqlSafe(format!(
                        "SELECT {GRANT_COLUMNS}, request_digest FROM grants \
                         WHERE idempotency_key = $1"
                    )))
                    .bind(key),
                )
                .await?;
            if let Some(row) = row {
                let stored: String = row.get("request_digest")?;
                if stored == digest {
                    return Ok(Created::Existing(grant_from_row(&row)?));
                }
                return Err(StoreError::Conflict(
                    "this idempotency key was used to create another grant".into(),
                ));
            }
        }
        let exists = db
            .fetch_optional(
                statement("SELECT id FROM wallets WHERE id = $1").bind(&grant.wallet_id),
            )
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("wallet {}", grant.wallet_id)));
        }
        let now = now_ms();
        if grant.expires_at_ms <= now {
            return Err(StoreError::Invalid(
                "a grant must expire in the future".into(),
            ));
        }
        let record = GrantRecord {
            id: new_id("grt_"),
            wallet_id: grant.wallet_id.clone(),
            agent: grant.agent.clone(),
            created_at_ms: now,
            expires_at_ms: grant.expires_at_ms,
            revoked_at_ms: None,
            revoke_reason: None,
        };
        let inserted = db
            .execute(
                statement(
                    "INSERT INTO grants (id, wallet_id, agent, idempotency_key, request_digest, \
                     created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&record.id)
                .bind(&record.wallet_id)
                .bind(&record.agent)
                .bind(grant.idempotency_key.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms)
                .bind(record.expires_at_ms),
            )
            .await;
        match inserted {
            Ok(_) => Ok(Created::New(record)),
            // A concurrent create with the same key won; answer as it would.
            Err(error) if is_unique_violation(&error) => Box::pin(self.create_grant(grant)).await,
            Err(error) => Err(error.into()),
        }
    }

    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError> {
        let query = statement(AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"
        )))
        .bind(id);
        self.db()
            .await?
            .fetch_optional_as(query, grant_from_row)
            .await
    }

    async fn grants(&self, wallet_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError> {
        let query = statement(AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE ($1 IS NULL OR wallet_id = $1) \
             ORDER BY created_at_ms DESC, id LIMIT {LIST_ROWS_MAX}"
        )))
        .bind(wallet_id);
        self.db().await?.fetch_all_as(query, grant_from_row).await
    }

    async fn revoke_grant(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let db = self.db().await?;
        let updated = db
            .execute(
                statement(
                    "UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3 \
                     WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .bind(reason),
            )
            .await?;
        Ok(updated == 1)
    }

    async fn revoke_all_grants(
        &self,
        wallet_id: Option<&str>,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let db = self.db().await?;
        let updated = db
            .execute(
                statement(
                    "UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3 \
                     WHERE revoked_at_ms IS NULL AND ($1 IS NULL OR wallet_id = $1)",
                )
                .bind(wallet_id)
                .bind(now_ms())
                .bind(reason),
            )
            .await?;
        Ok(updated)
    }
}
