//! Access to an EIP-3009 token (Bursar's own, USDC, or any token that follows the EIP) on any
//! [`EvmChain`].

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_sol_types::SolValue;
use bursar_protocol::exact_evm::Authorization;

use crate::account::{Account, TxRequest};
use crate::api::{CallOutcome, CallRequest, ChainError, EvmChain, Receipt};

/// An EIP-3009 token contract.
#[derive(Clone)]
pub struct Token {
    chain: Arc<dyn EvmChain>,
    address: Address,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("address", &self.address)
            .finish()
    }
}

impl Token {
    pub fn new(chain: Arc<dyn EvmChain>, address: Address) -> Self {
        Token { chain, address }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// Deploys Bursar's token with `owner` as its minter.
    pub async fn deploy(
        deployer: &Account,
        name: &str,
        symbol: &str,
        owner: Address,
    ) -> Result<Token, ChainError> {
        let address = deployer
            .deploy(bursar_contracts::token_creation_code(name, symbol, owner))
            .await?;
        Ok(Token::new(deployer.chain().clone(), address))
    }

    async fn view(&self, data: Bytes) -> Result<Bytes, ChainError> {
        match self
            .chain
            .call(CallRequest {
                to: Some(self.address),
                data,
                ..Default::default()
            })
            .await?
        {
            CallOutcome::Success(output) => Ok(output),
            CallOutcome::Revert(data) => {
                Err(ChainError::Reverted(format!("view call reverted: {data}")))
            }
        }
    }

    pub async fn balance_of(&self, owner: Address) -> Result<U256, ChainError> {
        let output = self.view(bursar_contracts::balance_of_call(owner)).await?;
        U256::abi_decode(&output)
            .map_err(|e| ChainError::Transport(format!("balanceOf returned garbage: {e}")))
    }

    /// Whether an authorization nonce is used (or cancelled).
    pub async fn authorization_state(
        &self,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, ChainError> {
        let output = self
            .view(bursar_contracts::authorization_state_call(
                authorizer, nonce,
            ))
            .await?;
        bool::abi_decode(&output)
            .map_err(|e| ChainError::Transport(format!("authorizationState returned garbage: {e}")))
    }

    /// Simulates `transferWithAuthorization` as `sender` would send it: EIP-3009's own `(v, r, s)`
    /// function for a 65-byte EOA signature, the `bytes signature` overload for any other (see
    /// [`bursar_contracts::transfer_with_authorization_call`]).
    pub async fn simulate_transfer_with_authorization(
        &self,
        sender: Address,
        authorization: &Authorization,
        signature: &[u8],
    ) -> Result<CallOutcome, ChainError> {
        self.chain
            .call(CallRequest {
                from: Some(sender),
                to: Some(self.address),
                data: bursar_contracts::transfer_with_authorization_call(authorization, signature),
                value: U256::ZERO,
            })
            .await
    }

    /// Submits `transferWithAuthorization` from `sender` and returns the transaction hash. The
    /// overload is chosen as in [`Token::simulate_transfer_with_authorization`].
    pub async fn submit_transfer_with_authorization(
        &self,
        sender: &Account,
        authorization: &Authorization,
        signature: &[u8],
        gas_limit: Option<u64>,
    ) -> Result<B256, ChainError> {
        self.submit_transfer_with_authorization_recorded(
            sender,
            authorization,
            signature,
            gas_limit,
            |_, _| async { Ok(()) },
        )
        .await
    }

    /// [`Token::submit_transfer_with_authorization`], calling `before_broadcast` with the signed
    /// transaction's hash and account nonce before it is handed to the node (see
    /// [`Account::send_recorded`]): the caller records it durably there.
    pub async fn submit_transfer_with_authorization_recorded<F, Fut>(
        &self,
        sender: &Account,
        authorization: &Authorization,
        signature: &[u8],
        gas_limit: Option<u64>,
        before_broadcast: F,
    ) -> Result<B256, ChainError>
    where
        F: FnMut(B256, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(), ChainError>>,
    {
        sender
            .send_recorded(
                TxRequest {
                    to: Some(self.address),
                    data: bursar_contracts::transfer_with_authorization_call(
                        authorization,
                        signature,
                    ),
                    value: U256::ZERO,
                    gas_limit,
                },
                before_broadcast,
            )
            .await
    }

    /// Mints `amount` to `to`; `minter` must be the token's owner.
    pub async fn mint(
        &self,
        minter: &Account,
        to: Address,
        amount: U256,
    ) -> Result<Receipt, ChainError> {
        let receipt = minter
            .send_and_wait(TxRequest {
                to: Some(self.address),
                data: bursar_contracts::mint_call(
                    to,
                    bursar_protocol::money::Amount::from_atomic(amount),
                ),
                ..Default::default()
            })
            .await?;
        if !receipt.success {
            return Err(ChainError::Reverted(format!(
                "mint {} reverted",
                receipt.transaction_hash
            )));
        }
        Ok(receipt)
    }
}
