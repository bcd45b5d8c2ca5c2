//! `/v1/wallets`: keys the runtime holds and signs with.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bursar_wallet::Passphrase;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Operator;
use super::body::{IdempotencyKey, JsonBody};
use super::created_status;
use super::error::ApiResult;
use crate::error::RuntimeError;
use crate::service::{Runtime, WalletInfo};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWallet {
    pub name: String,
    /// A keystore v3 document (object or JSON string) to import instead of generating a key.
    pub keystore: Option<Value>,
    /// The imported keystore's passphrase.
    pub keystore_passphrase: Option<String>,
}

/// A wallet: its key never leaves the runtime.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletBody {
    pub id: String,
    pub name: String,
    /// EIP-55 checksummed.
    pub address: String,
    pub created_at_ms: i64,
}

impl From<&WalletInfo> for WalletBody {
    fn from(wallet: &WalletInfo) -> Self {
        WalletBody {
            id: wallet.id.clone(),
            name: wallet.name.clone(),
            address: wallet.address.to_checksum(None),
            created_at_ms: wallet.created_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WalletList {
    pub wallets: Vec<WalletBody>,
}

/// A wallet with its token balance on chain.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletBalanceBody {
    pub id: String,
    pub name: String,
    /// EIP-55 checksummed.
    pub address: String,
    pub created_at_ms: i64,
    pub balance: BalanceBody,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceBody {
    pub currency: String,
    /// In the currency's units (`"1.50"`).
    pub amount: String,
    /// In the token's smallest unit.
    #[schema(value_type = String)]
    pub atomic: bursar_protocol::Amount,
}

#[utoipa::path(post, path = "/v1/wallets", tag = "wallets", request_body = CreateWallet,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first wallet.")),
    responses((status = 201, body = WalletBody, description = "Created"),
        (status = 200, body = WalletBody, description = "Created before with this idempotency key")),
    security(("bearer" = [])))]
pub async fn create_wallet(
    State(runtime): State<Runtime>,
    _: Operator,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<CreateWallet>,
) -> ApiResult<(StatusCode, Json<WalletBody>)> {
    let created = match (request.keystore, request.keystore_passphrase) {
        (None, None) => runtime.create_wallet(&request.name, key).await?,
        (Some(keystore), Some(passphrase)) => {
            let document = match keystore {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let passphrase = Passphrase::new(passphrase).map_err(RuntimeError::from)?;
            runtime
                .import_wallet(&request.name, &document, passphrase, key)
                .await?
        }
        _ => {
            return Err(RuntimeError::Invalid(
                "to import, give both keystore and keystorePassphrase".into(),
            )
            .into());
        }
    };
    let status = created_status(created.is_new());
    Ok((status, Json(WalletBody::from(&created.into_inner()))))
}

#[utoipa::path(get, path = "/v1/wallets", tag = "wallets",
    responses((status = 200, body = WalletList)),
    security(("bearer" = [])))]
pub async fn list_wallets(
    State(runtime): State<Runtime>,
    _: Operator,
) -> ApiResult<Json<WalletList>> {
    let wallets = runtime
        .wallets()
        .await?
        .iter()
        .map(WalletBody::from)
        .collect();
    Ok(Json(WalletList { wallets }))
}

#[utoipa::path(get, path = "/v1/wallets/{wallet}", tag = "wallets",
    params(("wallet" = String, Path, description = "Wallet id, name or address.")),
    responses((status = 200, body = WalletBalanceBody)),
    security(("bearer" = [])))]
pub async fn show_wallet(
    State(runtime): State<Runtime>,
    _: Operator,
    Path(wallet): Path<String>,
) -> ApiResult<Json<WalletBalanceBody>> {
    let info = runtime.wallet(&wallet).await?;
    let balance = runtime.wallet_balance(&info.id).await?;
    let currency = runtime.currency();
    let wallet = WalletBody::from(&info);
    Ok(Json(WalletBalanceBody {
        id: wallet.id,
        name: wallet.name,
        address: wallet.address,
        created_at_ms: wallet.created_at_ms,
        balance: BalanceBody {
            currency: currency.name.clone(),
            amount: balance.to_human(currency.unit.decimals),
            atomic: balance,
        },
    }))
}
