//! The local development network behind `bursar dev`: the embedded chain in the data dir, the
//! token, and the demo accounts.
//!
//! The demo keys are derived from fixed labels, so they are the same on every machine — like a
//! local node's dev accounts, they are public and worthless anywhere but this dev chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy_primitives::{Address, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, Result};
use bursar_chain::{Account, EvmChain, Token};
use bursar_chain_revm::{EmbeddedChain, EmbeddedConfig};
use bursar_protocol::{AssetUnit, DEV_CHAIN_ID};
use serde::{Deserialize, Serialize};

/// The dev token's name and EIP-712 version (as USDC's).
pub const TOKEN_NAME: &str = "USD Coin";
pub const TOKEN_VERSION: &str = "2";
pub const TOKEN_SYMBOL: &str = "USDC";
/// What the demo buyer starts with: 1,000 USDC.
pub const BUYER_START_ATOMIC: u64 = 1_000_000_000;
/// Gas money for each dev account: 10,000 ETH.
pub const DEV_ETHER_WEI: u128 = 10_000 * 1_000_000_000_000_000_000;
/// The most one faucet call mints: 1,000,000 USDC.
pub const FAUCET_ATOMIC_MAX: u64 = 1_000_000_000_000;

/// A dev key, derived from a public label.
pub fn dev_key(label: &str) -> PrivateKeySigner {
    let seed = keccak256(format!("bursar dev account: {label}"));
    PrivateKeySigner::from_bytes(&seed).expect("a keccak digest is a valid secp256k1 key")
}

pub struct DevKeys {
    pub deployer: PrivateKeySigner,
    pub facilitator: PrivateKeySigner,
    pub buyer: PrivateKeySigner,
    pub seller: PrivateKeySigner,
}

impl DevKeys {
    pub fn new() -> Self {
        DevKeys {
            deployer: dev_key("deployer"),
            facilitator: dev_key("facilitator"),
            buyer: dev_key("buyer"),
            seller: dev_key("seller"),
        }
    }
}

/// The opened dev network.
pub struct DevNetwork {
    pub chain: Arc<EmbeddedChain>,
    pub token: Token,
    pub minter: Account,
    pub keys: DevKeys,
    pub data_dir: PathBuf,
}

pub fn usdc() -> AssetUnit {
    AssetUnit::usdc()
}

/// Where a data dir keeps the chain.
pub fn chain_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("chain")
}

impl DevNetwork {
    /// Opens (or creates) the dev chain in `data_dir`, deploying the token and funding the demo
    /// buyer on first start.
    pub async fn open(data_dir: &Path) -> Result<DevNetwork> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        let keys = DevKeys::new();
        let ether = U256::from(DEV_ETHER_WEI);
        let config = EmbeddedConfig {
            chain_id: DEV_CHAIN_ID,
            data_dir: Some(chain_dir(data_dir)),
            genesis: vec![
                (keys.deployer.address(), ether),
                (keys.facilitator.address(), ether),
                (keys.buyer.address(), ether),
                (keys.seller.address(), ether),
            ],
            ..EmbeddedConfig::default()
        };
        let chain = EmbeddedChain::open(config).with_context(|| {
            format!(
                "cannot open the dev chain in {}",
                chain_dir(data_dir).display()
            )
        })?;
        let evm: Arc<dyn EvmChain> = chain.clone();
        let minter = Account::new(evm.clone(), keys.deployer.clone());
        // The token is the deployer's first contract, so its address never changes.
        let token_address = keys.deployer.address().create(0);
        let token = if evm.code(token_address).await?.is_empty() {
            let token = Token::deploy(&minter, TOKEN_NAME, TOKEN_SYMBOL, minter.address()).await?;
            anyhow::ensure!(
                token.address() == token_address,
                "the dev token landed at an unexpected address"
            );
            token
                .mint(
                    &minter,
                    keys.buyer.address(),
                    U256::from(BUYER_START_ATOMIC),
                )
                .await?;
            token
        } else {
            Token::new(evm, token_address)
        };
        Ok(DevNetwork {
            chain,
            token,
            minter,
            keys,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Mints dev USDC to `to`.
    pub async fn faucet(&self, to: Address, atomic: U256) -> Result<alloy_primitives::B256> {
        anyhow::ensure!(
            atomic <= U256::from(FAUCET_ATOMIC_MAX),
            "the faucet gives at most 1000000 USDC at a time"
        );
        let receipt = self.token.mint(&self.minter, to, atomic).await?;
        Ok(receipt.transaction_hash)
    }
}

/// What `bursar dev` writes to `<data dir>/dev.json` so other commands can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevInfo {
    pub chain_id: u64,
    pub network: String,
    pub token: Address,
    pub token_name: String,
    pub token_version: String,
    pub facilitator_url: String,
    pub api_url: String,
    pub buyer: Address,
    /// The demo buyer's key. Public: it only holds dev-chain money.
    pub buyer_private_key: String,
    pub seller: Address,
    pub facilitator_signer: Address,
    /// The agent runtime's API, when `bursar dev` runs it.
    #[serde(default)]
    pub runtime_url: Option<String>,
    /// An operator key for the dev runtime (a local dev network's; printed at start).
    #[serde(default)]
    pub operator_key: Option<String>,
}

pub fn info_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev.json")
}

impl DevInfo {
    pub fn load(data_dir: &Path) -> Result<DevInfo> {
        let path = info_path(data_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: start `bursar dev` first (or pass --data-dir)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Bursar dev info file", path.display()))
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let path = info_path(data_dir);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }
}
