//! Policy documents attached to a wallet, a grant or a session.

use super::SqlRuntimeStore;
use crate::common::StoreError;
use crate::db::statement;
use crate::now_ms;

/// The attached policy documents.
#[async_trait::async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// The policy document attached to a wallet, grant or session (`scope`), if any.
    async fn policy(&self, scope: &str, subject_id: &str) -> Result<Option<String>, StoreError>;
    /// Attaches (replaces) a policy document.
    async fn put_policy(
        &self,
        scope: &str,
        subject_id: &str,
        document: &str,
    ) -> Result<(), StoreError>;
    /// Detaches a policy; returns whether there was one.
    async fn delete_policy(&self, scope: &str, subject_id: &str) -> Result<bool, StoreError>;
}

#[async_trait::async_trait]
impl PolicyStore for SqlRuntimeStore {
    async fn policy(&self, scope: &str, subject_id: &str) -> Result<Option<String>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement("SELECT document FROM policies WHERE scope = $1 AND subject_id = $2")
                    .bind(scope)
                    .bind(subject_id),
            )
            .await?;
        Ok(row.map(|row| row.get("document")).transpose()?)
    }

    async fn put_policy(
        &self,
        scope: &str,
        subject_id: &str,
        document: &str,
    ) -> Result<(), StoreError> {
        if !matches!(scope, "wallet" | "grant" | "session") {
            return Err(StoreError::Invalid(format!("policy scope {scope:?}")));
        }
        let db = self.db().await?;
        db.execute(
            statement(
                "INSERT INTO policies (scope, subject_id, document, updated_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (scope, subject_id) \
                 DO UPDATE SET document = $3, updated_at_ms = $4",
            )
            .bind(scope)
            .bind(subject_id)
            .bind(document)
            .bind(now_ms()),
        )
        .await?;
        Ok(())
    }

    async fn delete_policy(&self, scope: &str, subject_id: &str) -> Result<bool, StoreError> {
        let db = self.db().await?;
        let deleted = db
            .execute(
                statement("DELETE FROM policies WHERE scope = $1 AND subject_id = $2")
                    .bind(scope)
                    .bind(subject_id),
            )
            .await?;
        Ok(deleted == 1)
    }
}
