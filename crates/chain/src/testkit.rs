//! The conformance suite every chain backend runs (feature `testkit`).
//!
//! Each case takes a fresh [`DevChain`] and checks real outcomes on it: balances, gas paid,
//! authorization state, reverts. A backend runs all of them with
//! `bursar_chain::conformance_tests!(async_constructor_expression);`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_protocol::exact_evm::{Authorization, sign_authorization, token_domain};
use bursar_protocol::money::Amount;

use crate::account::{Account, TxRequest};
use crate::api::{CallOutcome, DevChain, EvmChain};
use crate::token::Token;

/// One ether in wei, for funding test accounts with gas money.
pub const ONE_ETHER: u128 = 1_000_000_000_000_000_000;
/// The token name the suite deploys; its EIP-712 version is always "2".
pub const TOKEN_NAME: &str = "USD Coin";

/// Which token a [`Fixture`] deploys. Each takes the name [`TOKEN_NAME`]; the EIP-3009 ones have
/// the EIP-712 version "2", so [`Fixture::sign`] signs for any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// BursarUSD: EIP-3009 with both signature forms, like USDC v2.2+.
    BursarUsd,
    /// EIP-3009 as the EIP writes it: the `(v, r, s)` functions only, no `bytes signature`
    /// overloads (`bursar_contracts::test_tokens::Eip3009OnlyToken`).
    Eip3009Only,
    /// An ERC-20 without EIP-3009 (`bursar_contracts::test_tokens::PlainErc20`).
    PlainErc20,
    /// `transferWithAuthorization` with a `bytes signature` only, without EIP-3009's `(v, r, s)`
    /// function (`bursar_contracts::test_tokens::BytesOnlyAuthorizationToken`).
    BytesOnly,
}

/// A deployed token with a funded owner, payer and gas-paying sender.
pub struct Fixture {
    pub chain: Arc<dyn DevChain>,
    pub token: Token,
    pub owner: Account,
    pub payer: PrivateKeySigner,
    pub sender: Account,
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Waits for a transaction's receipt, failing the test if it never comes.
pub async fn mined(chain: &dyn EvmChain, hash: B256) -> crate::api::Receipt {
    crate::account::wait_for_receipt(chain, hash, crate::account::RECEIPT_TIMEOUT)
        .await
        .expect("transaction mined")
}

/// Funds a fresh random key with one ether of gas money.
pub async fn funded_account(chain: &Arc<dyn DevChain>) -> Account {
    let signer = PrivateKeySigner::random();
    chain
        .set_native_balance(signer.address(), U256::from(ONE_ETHER))
        .await
        .expect("fund account");
    let evm: Arc<dyn EvmChain> = chain.clone();
    Account::new(evm, signer)
}

/// Deploys BursarUSD and mints `payer_balance` atomic units to a fresh payer.
pub async fn fixture(chain: Arc<dyn DevChain>, payer_balance: u64) -> Fixture {
    fixture_with(chain, payer_balance, TokenKind::BursarUsd).await
}

/// Deploys a token of `kind` owned by `owner` (who may mint).
pub async fn deploy_token(owner: &Account, kind: TokenKind) -> Token {
    use bursar_contracts::test_tokens::{
        bytes_only_authorization_token_creation_code, eip3009_only_token_creation_code,
        plain_erc20_creation_code,
    };
    let code = match kind {
        TokenKind::BursarUsd => {
            return Token::deploy(owner, TOKEN_NAME, "USDC", owner.address())
                .await
                .expect("deploy BursarUSD");
        }
        TokenKind::Eip3009Only => {
            eip3009_only_token_creation_code(TOKEN_NAME, "2", owner.address())
        }
        TokenKind::PlainErc20 => plain_erc20_creation_code(TOKEN_NAME, "PLAIN", owner.address()),
        TokenKind::BytesOnly => {
            bytes_only_authorization_token_creation_code(TOKEN_NAME, "2", owner.address())
        }
    };
    let address = owner.deploy(code).await.expect("deploy token");
    Token::new(owner.chain().clone(), address)
}

/// Deploys a token of `kind` and mints `payer_balance` atomic units to a fresh payer.
pub async fn fixture_with(
    chain: Arc<dyn DevChain>,
    payer_balance: u64,
    kind: TokenKind,
) -> Fixture {
    let owner = funded_account(&chain).await;
    let sender = funded_account(&chain).await;
    let token = deploy_token(&owner, kind).await;
    let payer = PrivateKeySigner::random();
    token
        .mint(&owner, payer.address(), U256::from(payer_balance))
        .await
        .expect("mint");
    Fixture {
        chain,
        token,
        owner,
        payer,
        sender,
    }
}

impl Fixture {
    /// A signed authorization from the payer to `to`, valid around the chain's current time.
    pub async fn authorization(&self, to: Address, value: u64) -> (Authorization, Vec<u8>) {
        let now = self
            .chain
            .latest_block()
            .await
            .expect("latest block")
            .timestamp;
        let authorization = Authorization {
            from: self.payer.address(),
            to,
            value: Amount::from(value),
            valid_after: U256::from(now.saturating_sub(600)),
            valid_before: U256::from(now + 3600),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        };
        let signature = self.sign(&authorization);
        (authorization, signature)
    }

    /// Simulates `transferWithAuthorization` from the fixture's sender.
    pub async fn simulate(&self, authorization: &Authorization, signature: &[u8]) -> CallOutcome {
        self.token
            .simulate_transfer_with_authorization(self.sender.address(), authorization, signature)
            .await
            .expect("simulation reaches the chain")
    }

    pub fn sign(&self, authorization: &Authorization) -> Vec<u8> {
        let domain = token_domain(TOKEN_NAME, "2", self.chain.chain_id(), self.token.address());
        sign_authorization(&self.payer, authorization, &domain)
            .expect("sign")
            .to_vec()
    }
}

/// Deploying the token and minting credit exactly the minted amount.
pub async fn deploy_and_mint(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    assert_eq!(
        f.token.balance_of(f.payer.address()).await.unwrap(),
        U256::from(1_000_000u64)
    );
    assert_eq!(
        f.token.balance_of(f.sender.address()).await.unwrap(),
        U256::ZERO
    );
    assert!(
        !chain.code(f.token.address()).await.unwrap().is_empty(),
        "token has code"
    );
}

/// A transferWithAuthorization moves exactly `value`, the sender pays the gas, and the nonce is spent.
pub async fn transfer_with_authorization_moves_exact_value(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let payee = Address::repeat_byte(0x42);
    let (authorization, signature) = f.authorization(payee, 250_000).await;
    let gas_before = chain.native_balance(f.sender.address()).await.unwrap();

    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    let receipt = mined(chain.as_ref(), hash).await;
    assert!(receipt.success, "transfer must succeed: {receipt:?}");
    assert_eq!(receipt.transaction_hash, hash);
    assert!(
        receipt.gas_used > 21_000,
        "a token transfer costs more than a plain transfer"
    );
    assert!(
        !receipt.logs.is_empty(),
        "Transfer and AuthorizationUsed are logged"
    );

    assert_eq!(
        f.token.balance_of(f.payer.address()).await.unwrap(),
        U256::from(750_000u64)
    );
    assert_eq!(
        f.token.balance_of(payee).await.unwrap(),
        U256::from(250_000u64)
    );
    assert!(
        f.token
            .authorization_state(f.payer.address(), authorization.nonce)
            .await
            .unwrap()
    );

    let gas_after = chain.native_balance(f.sender.address()).await.unwrap();
    let gas_cost = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert!(gas_cost > U256::ZERO, "gas is not free");
    assert_eq!(
        gas_before - gas_after,
        gas_cost,
        "the sender paid exactly the gas"
    );
}

/// The same authorization cannot be used twice; the replay moves nothing.
pub async fn replayed_authorization_reverts(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let payee = Address::repeat_byte(0x43);
    let (authorization, signature) = f.authorization(payee, 100).await;
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    let receipt = mined(chain.as_ref(), hash).await;
    assert!(receipt.success);

    let simulated = f
        .token
        .simulate_transfer_with_authorization(f.sender.address(), &authorization, &signature)
        .await;
    assert!(
        matches!(simulated, Ok(CallOutcome::Revert(_))),
        "replay simulation must revert: {simulated:?}"
    );
    // Forced on chain with an explicit gas limit, it is mined and reverts.
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, Some(200_000))
        .await
        .unwrap();
    let receipt = mined(chain.as_ref(), hash).await;
    assert!(!receipt.success, "replay must revert on chain");
    assert_eq!(f.token.balance_of(payee).await.unwrap(), U256::from(100u64));
    assert_eq!(
        f.token.balance_of(f.payer.address()).await.unwrap(),
        U256::from(999_900u64)
    );
}

/// Expired, not-yet-valid and forged authorizations revert in simulation.
pub async fn invalid_authorizations_revert(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let payee = Address::repeat_byte(0x44);
    let now = chain.latest_block().await.unwrap().timestamp;

    let (mut expired, _) = f.authorization(payee, 10).await;
    expired.valid_before = U256::from(now.saturating_sub(1));
    let signature = f.sign(&expired);
    let outcome = f.simulate(&expired, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "expired: {outcome:?}"
    );

    let (mut early, _) = f.authorization(payee, 10).await;
    early.valid_after = U256::from(now + 3600);
    early.valid_before = U256::from(now + 7200);
    let signature = f.sign(&early);
    let outcome = f.simulate(&early, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "not yet valid: {outcome:?}"
    );

    let (mut forged, signature) = f.authorization(payee, 10).await;
    forged.value = Amount::from(999_999u64);
    let outcome = f.simulate(&forged, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "forged: {outcome:?}"
    );

    let (too_much, signature) = f.authorization(payee, 2_000_000).await;
    let outcome = f.simulate(&too_much, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "insufficient balance: {outcome:?}"
    );

    let (valid, signature) = f.authorization(payee, 10).await;
    let outcome = f.simulate(&valid, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Success(_)),
        "valid: {outcome:?}"
    );
    assert_eq!(
        f.token.balance_of(payee).await.unwrap(),
        U256::ZERO,
        "simulations move nothing"
    );
}

/// Moving the clock forward is seen by the chain and by contracts.
pub async fn time_travel_expires_authorizations(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let (authorization, signature) = f.authorization(Address::repeat_byte(0x45), 10).await;
    let before = chain.latest_block().await.unwrap();
    chain.increase_time(7200).await.unwrap();
    let after = chain.latest_block().await.unwrap();
    assert!(after.number > before.number, "a block was mined");
    assert!(
        after.timestamp >= before.timestamp + 7200,
        "{after:?} vs {before:?}"
    );
    let outcome = f.simulate(&authorization, &signature).await;
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "authorization must have expired: {outcome:?}"
    );
    chain.mine().await.unwrap();
    assert!(chain.latest_block().await.unwrap().number > after.number);
}

/// Many concurrent sends from one account all land, each with its own nonce.
pub async fn concurrent_sends_share_one_nonce_sequence(chain: Arc<dyn DevChain>) {
    const SENDS: u64 = 20;
    let f = Arc::new(fixture(chain.clone(), 1_000_000).await);
    let start_nonce = chain.transaction_count(f.sender.address()).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..SENDS {
        let f = f.clone();
        handles.push(tokio::spawn(async move {
            let (authorization, signature) = f.authorization(Address::repeat_byte(0x46), 1).await;
            f.token
                .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
                .await
        }));
    }
    let mut hashes = Vec::new();
    for handle in handles {
        hashes.push(handle.await.unwrap().unwrap());
    }
    for hash in &hashes {
        let receipt = mined(chain.as_ref(), *hash).await;
        assert!(receipt.success);
    }
    assert_eq!(
        chain.transaction_count(f.sender.address()).await.unwrap(),
        start_nonce + SENDS
    );
    assert_eq!(
        f.token
            .balance_of(Address::repeat_byte(0x46))
            .await
            .unwrap(),
        U256::from(SENDS)
    );
}

/// A transaction with a nonce that was already used is refused and nothing changes; the account
/// recovers by resynchronizing.
pub async fn stale_nonce_is_rejected_then_recovered(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let key = PrivateKeySigner::random();
    chain
        .set_native_balance(key.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    let evm: Arc<dyn EvmChain> = chain.clone();
    let first = Account::new(evm.clone(), key.clone());
    let second = Account::new(evm, key);
    let payee = Address::repeat_byte(0x47);
    async fn send(
        f: &Fixture,
        account: &Account,
        payee: Address,
        value: u64,
    ) -> Result<B256, crate::ChainError> {
        let (authorization, signature) = f.authorization(payee, value).await;
        f.token
            .submit_transfer_with_authorization(account, &authorization, &signature, None)
            .await
    }
    // The second account caches nonce N+1 after its first send; the first account then uses N+1
    // behind its back, so the second's next send is stale and must resynchronize, not fail.
    let start = chain.transaction_count(second.address()).await.unwrap();
    let h1 = send(&f, &second, payee, 2).await.unwrap();
    let h2 = send(&f, &first, payee, 3).await.unwrap();
    let h3 = send(&f, &second, payee, 7).await.unwrap();
    for hash in [h1, h2, h3] {
        let receipt = mined(chain.as_ref(), hash).await;
        assert!(receipt.success);
    }
    assert_eq!(
        chain.transaction_count(second.address()).await.unwrap(),
        start + 3
    );
    assert_eq!(f.token.balance_of(payee).await.unwrap(), U256::from(12u64));
}

/// A token with EIP-3009 exactly as the EIP writes it (no `bytes signature` overloads): EOA
/// signatures settle through its `(v, r, s)` functions, also with a recovery byte of 0/1;
/// `receiveWithAuthorization` works for the payee only; `cancelAuthorization` burns a nonce; the
/// `bytes` overload it lacks reverts.
pub async fn eip3009_only_token_uses_the_v_r_s_functions(chain: Arc<dyn DevChain>) {
    use alloy_signer::SignerSync;
    let f = fixture_with(chain.clone(), 1_000_000, TokenKind::Eip3009Only).await;
    let payee = Address::repeat_byte(0x48);

    // transferWithAuthorization(..., v, r, s), once with v = 27/28 and once with v = 0/1.
    let (authorization, signature) = f.authorization(payee, 100).await;
    let bytes_form =
        bursar_contracts::transfer_with_authorization_bytes_call(&authorization, &signature);
    let outcome = chain
        .call(crate::CallRequest {
            from: Some(f.sender.address()),
            to: Some(f.token.address()),
            data: bytes_form,
            value: U256::ZERO,
        })
        .await
        .unwrap();
    assert!(
        matches!(outcome, CallOutcome::Revert(_)),
        "the token has no bytes overload: {outcome:?}"
    );
    assert!(matches!(
        f.simulate(&authorization, &signature).await,
        CallOutcome::Success(_)
    ));
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    assert!(mined(chain.as_ref(), hash).await.success);
    let (authorization, mut signature) = f.authorization(payee, 200).await;
    signature[64] -= 27;
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    assert!(mined(chain.as_ref(), hash).await.success);
    assert_eq!(f.token.balance_of(payee).await.unwrap(), U256::from(300u64));

    // receiveWithAuthorization: the payee sends it; anyone else is refused.
    let receiver = funded_account(&chain).await;
    let (authorization, _) = f.authorization(receiver.address(), 400).await;
    let domain = token_domain(TOKEN_NAME, "2", chain.chain_id(), f.token.address());
    let digest = bursar_contracts::receive_authorization_signing_hash(&authorization, &domain);
    let signature = f.payer.sign_hash_sync(&digest).unwrap().as_bytes();
    let data = bursar_contracts::receive_with_authorization_call(&authorization, &signature);
    let stranger = chain
        .call(crate::CallRequest {
            from: Some(f.sender.address()),
            to: Some(f.token.address()),
            data: data.clone(),
            value: U256::ZERO,
        })
        .await
        .unwrap();
    assert!(matches!(stranger, CallOutcome::Revert(_)), "{stranger:?}");
    let receipt = receiver
        .send_and_wait(TxRequest {
            to: Some(f.token.address()),
            data,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(
        f.token.balance_of(receiver.address()).await.unwrap(),
        U256::from(400u64)
    );

    // cancelAuthorization(authorizer, nonce, v, r, s) burns the nonce; the transfer then reverts.
    let (authorization, signature) = f.authorization(payee, 500).await;
    let digest = bursar_contracts::cancel_authorization_signing_hash(
        authorization.from,
        authorization.nonce,
        &domain,
    );
    let cancel = f.payer.sign_hash_sync(&digest).unwrap().as_bytes();
    let receipt = f
        .sender
        .send_and_wait(TxRequest {
            to: Some(f.token.address()),
            data: bursar_contracts::cancel_authorization_call(
                authorization.from,
                authorization.nonce,
                &cancel,
            ),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert!(
        f.token
            .authorization_state(authorization.from, authorization.nonce)
            .await
            .unwrap()
    );
    assert!(matches!(
        f.simulate(&authorization, &signature).await,
        CallOutcome::Revert(_)
    ));
    assert_eq!(f.token.balance_of(payee).await.unwrap(), U256::from(300u64));
    assert_eq!(
        f.token.balance_of(f.payer.address()).await.unwrap(),
        U256::from(1_000_000u64 - 700)
    );
}

/// A plain value transfer with the wrong chain id is refused.
pub async fn wrong_chain_id_is_rejected(chain: Arc<dyn DevChain>) {
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy_eips::eip2718::Encodable2718;
    use alloy_network::TxSignerSync;
    let account = funded_account(&chain).await;
    let signer = PrivateKeySigner::random();
    chain
        .set_native_balance(signer.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    let fees = chain.fees().await.unwrap();
    let mut tx = TxEip1559 {
        chain_id: chain.chain_id() + 1,
        nonce: 0,
        gas_limit: 21_000,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: alloy_primitives::TxKind::Call(account.address()),
        value: U256::from(1u64),
        access_list: Default::default(),
        input: Default::default(),
    };
    let signature = signer.sign_transaction_sync(&mut tx).unwrap();
    let raw = TxEnvelope::from(tx.into_signed(signature)).encoded_2718();
    let result = chain.send_raw_transaction(raw.into()).await;
    assert!(
        result.is_err(),
        "wrong chain id must be refused: {result:?}"
    );
    assert_eq!(
        chain.native_balance(account.address()).await.unwrap(),
        U256::from(ONE_ETHER)
    );
    // A correct plain transfer works.
    let sender = Account::new(chain.clone(), signer);
    let receipt = sender
        .send_and_wait(TxRequest {
            to: Some(account.address()),
            value: U256::from(1u64),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(receipt.success);
    assert_eq!(
        chain.native_balance(account.address()).await.unwrap(),
        U256::from(ONE_ETHER + 1)
    );
}

/// `logs` finds an authorization's `AuthorizationUsed` event by authorizer and nonce, in the
/// block of the transaction that used it, and nothing outside the block range; the mined nonce
/// counts the mined transaction.
pub async fn logs_find_the_transaction_that_used_an_authorization(chain: Arc<dyn DevChain>) {
    let f = fixture(chain.clone(), 1_000_000).await;
    let payee = Address::repeat_byte(0x44);
    let (authorization, signature) = f.authorization(payee, 1_000).await;
    let (other, other_signature) = f.authorization(payee, 2_000).await;
    let mined_before = chain
        .mined_transaction_count(f.sender.address())
        .await
        .unwrap();
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    let receipt = mined(chain.as_ref(), hash).await;
    let other_hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &other, &other_signature, None)
        .await
        .unwrap();
    mined(chain.as_ref(), other_hash).await;
    assert_eq!(
        chain
            .mined_transaction_count(f.sender.address())
            .await
            .unwrap(),
        mined_before + 2
    );

    let used = alloy_primitives::keccak256("AuthorizationUsed(address,bytes32)");
    let head = chain.latest_block().await.unwrap().number;
    let filter = |nonce: B256, from_block: u64, to_block: u64| crate::api::LogFilter {
        address: f.token.address(),
        topics: vec![
            Some(used),
            Some(B256::left_padding_from(f.payer.address().as_slice())),
            Some(nonce),
        ],
        from_block,
        to_block,
    };
    let found = chain
        .logs(&filter(authorization.nonce, 0, head))
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].transaction_hash, hash);
    assert_eq!(found[0].block_number, receipt.block_number);
    assert_eq!(found[0].log.address, f.token.address());
    // Outside the range: nothing.
    let before = chain
        .logs(&filter(authorization.nonce, 0, receipt.block_number - 1))
        .await
        .unwrap();
    assert!(before.is_empty(), "{before:?}");
    // An unused nonce: nothing.
    let unused = chain
        .logs(&filter(B256::repeat_byte(7), 0, head))
        .await
        .unwrap();
    assert!(unused.is_empty());
    // Without the nonce topic: both transfers' events, oldest first.
    let mut both = filter(authorization.nonce, 0, head);
    both.topics.truncate(2);
    let both = chain.logs(&both).await.unwrap();
    assert_eq!(
        both.iter()
            .map(|entry| entry.transaction_hash)
            .collect::<Vec<_>>(),
        vec![hash, other_hash]
    );
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression that
/// yields an `Arc<dyn DevChain>` (a fresh chain for each case).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            deploy_and_mint,
            transfer_with_authorization_moves_exact_value,
            replayed_authorization_reverts,
            invalid_authorizations_revert,
            time_travel_expires_authorizations,
            concurrent_sends_share_one_nonce_sequence,
            stale_nonce_is_rejected_then_recovered,
            eip3009_only_token_uses_the_v_r_s_functions,
            wrong_chain_id_is_rejected,
            logs_find_the_transaction_that_used_an_authorization
        );
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let chain: ::std::sync::Arc<dyn $crate::DevChain> = $make;
                $crate::testkit::$case(chain).await;
            }
        )*
    };
}
