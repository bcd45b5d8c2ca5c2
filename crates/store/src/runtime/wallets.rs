//! Wallets: encrypted signing keys, by id, name or address.

use alloy_primitives::Address;
use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use crate::common::{
    Created, LIST_ROWS_MAX, StoreError, check_idempotency_key, check_name, is_unique_violation,
    new_id, request_digest,
};
use crate::db::{Row, statement};
use crate::now_ms;

/// An encrypted signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRecord {
    pub id: String,
    pub name: String,
    pub address: Address,
    /// Web3 Secret Storage v3 JSON (encrypted).
    pub keystore: String,
    pub created_at_ms: i64,
}

/// What a wallet insert needs.
#[derive(Debug, Clone)]
pub struct NewWallet {
    pub name: String,
    pub address: Address,
    pub keystore: String,
    pub idempotency_key: Option<String>,
}

/// The wallets.
#[async_trait::async_trait]
pub trait WalletStore: Send + Sync + 'static {
    async fn create_wallet(&self, wallet: NewWallet) -> Result<Created<WalletRecord>, StoreError>;
    /// By id, name or address (`0x` hex in any case).
    async fn wallet(&self, id_name_or_address: &str) -> Result<Option<WalletRecord>, StoreError>;
    async fn wallets(&self) -> Result<Vec<WalletRecord>, StoreError>;
}

const WALLET_COLUMNS: &str = "id, name, address, keystore, created_at_ms";

fn wallet_from_row(row: &Row) -> Result<WalletRecord, StoreError> {
    Ok(WalletRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        address: row.typed("address")?,
        keystore: row.get("keystore")?,
        created_at_ms: row.get("created_at_ms")?,
    })
}

#[async_trait::async_trait]
impl WalletStore for SqlRuntimeStore {
    async fn create_wallet(&self, wallet: NewWallet) -> Result<Created<WalletRecord>, StoreError> {
        check_name("wallet name", &wallet.name)?;
        check_idempotency_key(wallet.idempotency_key.as_deref())?;
        let db = self.db().await?;
        let address = wallet.address;
        let digest = request_digest(&[&wallet.name, &format!("{address:#x}")]);
        let record = WalletRecord {
            id: new_id("wal_"),
            name: wallet.name.clone(),
            address,
            keystore: wallet.keystore.clone(),
            created_at_ms: now_ms(),
        };
        let inserted = db
            .execute(
                statement(
                    "INSERT INTO wallets (id, name, address, keystore, idempotency_key, \
                     request_digest, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&record.id)
                .bind(&record.name)
                .bind(record.address)
                .bind(&record.keystore)
                .bind(wallet.idempotency_key.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms),
            )
            .await;
        match inserted {
            Ok(_) => Ok(Created::New(record)),
            Err(error) if is_unique_violation(&error) => {
                if let Some(key) = &wallet.idempotency_key {
                    let row = db
                        .fetch_optional(
                            statement(AssertSqlSafe(format!(
                                "SELECT {WALLET_COLUMNS}, request_digest FROM wallets \
                                 WHERE idempotency_key = $1"
                            )))
                            .bind(key),
                        )
                        .await?;
                    if let Some(row) = row {
                        let stored: String = row.get("request_digest")?;
                        if stored == digest {
                            return Ok(Created::Existing(wallet_from_row(&row)?));
                        }
                        return Err(StoreError::Conflict(
                            "this idempotency key was used to create another wallet".into(),
                        ));
                    }
                }
                Err(StoreError::Conflict(format!(
                    "a wallet named {:?} or with address {address} already exists",
                    wallet.name
                )))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn wallet(&self, id_name_or_address: &str) -> Result<Option<WalletRecord>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement(AssertSqlSafe(format!(
                    "SELECT {WALLET_COLUMNS} FROM wallets \
                     WHERE id = $1 OR name = $1 OR address = $2"
                )))
                .bind(id_name_or_address)
                .bind(id_name_or_address.parse::<Address>().ok()),
            )
            .await?;
        row.as_ref().map(wallet_from_row).transpose()
    }

    async fn wallets(&self) -> Result<Vec<WalletRecord>, StoreError> {
        let db = self.db().await?;
        let rows = db
            .fetch_all(statement(AssertSqlSafe(format!(
                "SELECT {WALLET_COLUMNS} FROM wallets ORDER BY created_at_ms, id \
                 LIMIT {LIST_ROWS_MAX}"
            ))))
            .await?;
        rows.iter().map(wallet_from_row).collect()
    }
}
