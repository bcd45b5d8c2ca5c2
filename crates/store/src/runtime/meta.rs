//! Shared settings of the runtime, by name.

use super::SqlRuntimeStore;
use crate::common::StoreError;
use crate::db::statement;

/// Shared settings.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// A shared setting.
    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Stores `value` unless the setting has one; returns the value stored afterwards.
    async fn put_meta_if_absent(&self, name: &str, value: &str) -> Result<String, StoreError>;
}

#[async_trait::async_trait]
impl MetaStore for SqlRuntimeStore {
    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(statement("SELECT value FROM runtime_meta WHERE name = $1").bind(name))
            .await?;
        Ok(row.map(|row| row.get("value")).transpose()?)
    }

    async fn put_meta_if_absent(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let db = self.db().await?;
        db.execute(
            statement(
                "INSERT INTO runtime_meta (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(value),
        )
        .await?;
        self.meta(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("runtime setting {name} vanished")))
    }
}
