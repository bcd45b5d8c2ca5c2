//! Embedded-chain behaviour beyond the shared conformance suite: node-like rejections, gas
//! accounting, persistence across restarts, torn and corrupt journals, data-dir guards.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_network::TxSignerSync;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit::{ONE_ETHER, fixture};
use bursar_chain::{
    Account, CallOutcome, CallRequest, ChainError, DevChain, EvmChain, RECEIPT_TIMEOUT, Token,
    wait_for_receipt,
};
use bursar_chain_revm::{
    BASE_FEE_PER_GAS_DEFAULT, EmbeddedChain, EmbeddedConfig, EmbeddedError, JOURNAL_FILE_NAME,
    LOCK_FILE_NAME,
};

const GWEI: u128 = 1_000_000_000;

/// An EIP-1559 transaction to sign; defaults to a 1-wei transfer on the dev chain.
#[derive(Clone, Copy)]
struct Tx {
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: u128,
    gas_limit: u64,
    max_fee: u128,
    priority: u128,
}

impl Default for Tx {
    fn default() -> Self {
        Tx {
            chain_id: 31337,
            nonce: 0,
            to: Address::repeat_byte(0x77),
            value: 1,
            gas_limit: 21_000,
            max_fee: 2 * GWEI,
            priority: 0,
        }
    }
}

impl Tx {
    fn sign(self, signer: &PrivateKeySigner) -> Bytes {
        let mut tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce: self.nonce,
            gas_limit: self.gas_limit,
            max_fee_per_gas: self.max_fee,
            max_priority_fee_per_gas: self.priority,
            to: TxKind::Call(self.to),
            value: U256::from(self.value),
            access_list: Default::default(),
            input: Bytes::new(),
        };
        let signature = signer.sign_transaction_sync(&mut tx).unwrap();
        TxEnvelope::from(tx.into_signed(signature))
            .encoded_2718()
            .into()
    }
}

fn transfer(signer: &PrivateKeySigner, nonce: u64, to: Address, value: u128) -> Bytes {
    Tx {
        nonce,
        to,
        value,
        ..Tx::default()
    }
    .sign(signer)
}

/// What a refused transaction's error must look like.
type Expect = fn(&ChainError) -> bool;

/// Everything a rejected transaction must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    head: u64,
    sender_balance: U256,
    sender_nonce: u64,
    recipient_balance: U256,
}

async fn snapshot(chain: &EmbeddedChain, sender: Address, recipient: Address) -> Snapshot {
    Snapshot {
        head: chain.head().number,
        sender_balance: chain.native_balance(sender).await.unwrap(),
        sender_nonce: chain.transaction_count(sender).await.unwrap(),
        recipient_balance: chain.native_balance(recipient).await.unwrap(),
    }
}

#[tokio::test]
async fn invalid_transactions_are_refused_without_state_change() {
    let chain = EmbeddedChain::memory();
    let signer = PrivateKeySigner::random();
    let sender = signer.address();
    let recipient = Address::repeat_byte(0x77);
    chain
        .set_native_balance(sender, U256::from(ONE_ETHER))
        .await
        .unwrap();

    // One good transfer so that nonce 0 is used.
    let first = chain
        .send_raw_transaction(transfer(&signer, 0, recipient, 5))
        .await
        .unwrap();
    assert!(chain.receipt(first).await.unwrap().unwrap().success);
    let before = snapshot(&chain, sender, recipient).await;

    let next = Tx {
        nonce: 1,
        to: recipient,
        ..Tx::default()
    };
    let cases: Vec<(&str, Bytes, Expect)> = vec![
        ("nonce reused", Tx { nonce: 0, ..next }.sign(&signer), |e| {
            matches!(e, ChainError::NonceTooLow(_))
        }),
        (
            "nonce gap",
            Tx { nonce: 5, ..next }.sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("nonce gap")),
        ),
        (
            "max fee below base fee",
            Tx {
                max_fee: GWEI / 2,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("below the base fee")),
        ),
        (
            "insufficient funds for gas",
            Tx {
                max_fee: ONE_ETHER / 21_000 + 1,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("insufficient funds")),
        ),
        (
            "insufficient funds for value",
            Tx {
                value: ONE_ETHER,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("insufficient funds")),
        ),
        (
            "gas limit above the block's",
            Tx {
                gas_limit: 30_000_001,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("gas limit")),
        ),
        (
            "wrong chain id",
            Tx {
                chain_id: 1,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(m) if m.contains("chain id")),
        ),
        (
            "priority fee above max fee",
            Tx {
                priority: 3 * GWEI,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(_)),
        ),
        (
            "intrinsic gas too low",
            Tx {
                gas_limit: 20_000,
                ..next
            }
            .sign(&signer),
            |e| matches!(e, ChainError::Rejected(_)),
        ),
        ("empty", Bytes::new(), |e| {
            matches!(e, ChainError::Rejected(_))
        }),
        ("garbage", Bytes::from(vec![0x02, 0xff, 0x00, 0x13]), |e| {
            matches!(e, ChainError::Rejected(_))
        }),
        (
            "trailing bytes",
            {
                let mut raw = next.sign(&signer).to_vec();
                raw.push(0);
                raw.into()
            },
            |e| matches!(e, ChainError::Rejected(_)),
        ),
    ];
    for (name, raw, expected) in cases {
        let hash = keccak256(&raw);
        let result = chain.send_raw_transaction(raw).await;
        match &result {
            Err(error) => assert!(expected(error), "{name}: unexpected error {error:?}"),
            Ok(hash) => panic!("{name}: accepted as {hash}"),
        }
        assert_eq!(
            snapshot(&chain, sender, recipient).await,
            before,
            "{name} changed state"
        );
        assert_eq!(
            chain.receipt(hash).await.unwrap(),
            None,
            "{name} left a receipt"
        );
    }

    // Random bytes never panic.
    for length in 0..200 {
        let raw: Vec<u8> = (0..length).map(|_| rand::random::<u8>()).collect();
        let _ = chain.send_raw_transaction(raw.into()).await;
    }
    assert_eq!(snapshot(&chain, sender, recipient).await, before);

    // The account still works with the right nonce.
    let next = chain
        .send_raw_transaction(transfer(&signer, 1, recipient, 1))
        .await
        .unwrap();
    assert!(chain.receipt(next).await.unwrap().unwrap().success);
}

#[tokio::test]
async fn gas_is_paid_like_on_a_real_chain() {
    let coinbase = Address::repeat_byte(0xcb);
    let chain = EmbeddedChain::open(EmbeddedConfig {
        coinbase,
        ..Default::default()
    })
    .unwrap();
    let signer = PrivateKeySigner::random();
    let recipient = Address::repeat_byte(0x55);
    chain
        .set_native_balance(signer.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();

    let tip = GWEI / 10;
    let raw = Tx {
        to: recipient,
        value: 1_000,
        gas_limit: 50_000,
        max_fee: 3 * GWEI,
        priority: tip,
        ..Tx::default()
    }
    .sign(&signer);
    let head = chain.head().number;
    let hash = chain.send_raw_transaction(raw.clone()).await.unwrap();
    assert_eq!(
        hash,
        keccak256(&raw),
        "the hash is the keccak of the envelope"
    );
    let receipt = chain.receipt(hash).await.unwrap().unwrap();
    assert!(receipt.success);
    assert_eq!(receipt.block_number, head + 1, "mined in a new block");
    assert_eq!(receipt.gas_used, 21_000);
    let price = u128::from(BASE_FEE_PER_GAS_DEFAULT) + tip;
    assert_eq!(receipt.effective_gas_price, price);
    assert_eq!(
        chain.native_balance(recipient).await.unwrap(),
        U256::from(1_000u64)
    );
    assert_eq!(
        chain.native_balance(signer.address()).await.unwrap(),
        U256::from(ONE_ETHER - 1_000 - 21_000 * price),
        "the sender pays gas used times the effective price, not the gas limit"
    );
    assert_eq!(
        chain.native_balance(coinbase).await.unwrap(),
        U256::from(21_000 * tip),
        "the tip goes to the coinbase, the base fee is burned"
    );

    // Legacy transactions (with EIP-155 chain id) work; unprotected ones are refused.
    let mut legacy = TxLegacy {
        chain_id: Some(31337),
        nonce: 1,
        gas_price: 2 * GWEI,
        gas_limit: 21_000,
        to: TxKind::Call(recipient),
        value: U256::from(1u64),
        input: Bytes::new(),
    };
    let signature = signer.sign_transaction_sync(&mut legacy).unwrap();
    let raw: Bytes = TxEnvelope::from(legacy.clone().into_signed(signature))
        .encoded_2718()
        .into();
    let hash = chain.send_raw_transaction(raw.clone()).await.unwrap();
    assert_eq!(hash, keccak256(&raw));
    let receipt = chain.receipt(hash).await.unwrap().unwrap();
    assert_eq!(
        receipt.effective_gas_price,
        2 * GWEI,
        "legacy pays its gas price"
    );

    legacy.chain_id = None;
    legacy.nonce = 2;
    let signature = signer.sign_transaction_sync(&mut legacy).unwrap();
    let raw: Bytes = TxEnvelope::from(legacy.into_signed(signature))
        .encoded_2718()
        .into();
    let refused = chain.send_raw_transaction(raw).await;
    assert!(
        matches!(refused, Err(ChainError::Rejected(ref m)) if m.contains("unprotected")),
        "{refused:?}"
    );

    // Estimates and calls.
    let estimate = chain
        .estimate_gas(CallRequest {
            from: Some(signer.address()),
            to: Some(recipient),
            value: U256::from(1u64),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(estimate, 21_000);
    let fees = chain.fees().await.unwrap();
    assert!(fees.max_fee_per_gas >= u128::from(BASE_FEE_PER_GAS_DEFAULT));
}

#[tokio::test]
async fn reverts_are_mined_and_pay_gas_and_estimates_refuse_them() {
    let chain = EmbeddedChain::memory();
    let signer = PrivateKeySigner::random();
    chain
        .set_native_balance(signer.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    let evm: Arc<dyn EvmChain> = chain.clone();
    let account = Account::new(evm, signer.clone());
    // Creation code that deploys runtime code which always reverts with 4 bytes of data:
    // runtime = PUSH4 0xdeadbeef PUSH1 0 MSTORE PUSH1 4 PUSH1 28 REVERT
    let runtime = [
        0x63, 0xde, 0xad, 0xbe, 0xef, 0x60, 0x00, 0x52, 0x60, 0x04, 0x60, 0x1c, 0xfd,
    ];
    let mut creation = vec![
        0x60,
        runtime.len() as u8,
        0x60,
        0x0c,
        0x60,
        0x00,
        0x39,
        0x60,
        runtime.len() as u8,
        0x60,
        0x00,
        0xf3,
    ];
    creation.extend_from_slice(&runtime);
    let address = account.deploy(creation.into()).await.unwrap();
    assert_eq!(chain.code(address).await.unwrap().as_ref(), &runtime[..]);

    let call = CallRequest {
        to: Some(address),
        ..Default::default()
    };
    assert_eq!(
        chain.call(call.clone()).await.unwrap(),
        CallOutcome::Revert(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]))
    );
    assert!(matches!(
        chain.estimate_gas(call).await,
        Err(ChainError::Reverted(_))
    ));

    let balance = chain.native_balance(signer.address()).await.unwrap();
    let receipt = account
        .send_and_wait(bursar_chain::TxRequest {
            to: Some(address),
            gas_limit: Some(60_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!receipt.success);
    assert!(receipt.gas_used >= 21_000 && receipt.gas_used < 60_000);
    let paid = balance - chain.native_balance(signer.address()).await.unwrap();
    assert_eq!(
        paid,
        U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let funded = Address::repeat_byte(0x99);
    let config = EmbeddedConfig {
        genesis: vec![(funded, U256::from(123u64))],
        ..EmbeddedConfig::persistent(dir.path())
    };

    let chain = EmbeddedChain::open(config.clone()).unwrap();
    assert_eq!(
        chain.native_balance(funded).await.unwrap(),
        U256::from(123u64)
    );
    let dev: Arc<dyn DevChain> = chain.clone();
    let f = fixture(dev, 1_000_000).await;
    let payee = Address::repeat_byte(0x42);
    let (authorization, signature) = f.authorization(payee, 250_000).await;
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &authorization, &signature, None)
        .await
        .unwrap();
    let receipt = wait_for_receipt(chain.as_ref(), hash, RECEIPT_TIMEOUT)
        .await
        .unwrap();
    assert!(receipt.success);
    chain
        .set_native_balance(funded, U256::from(456u64))
        .await
        .unwrap();
    chain.increase_time(1_000).await.unwrap();

    let token = f.token.address();
    let sender = f.sender.address();
    let payer = f.payer.address();
    let head = chain.head();
    let sender_gas = chain.native_balance(sender).await.unwrap();
    let sender_nonce = chain.transaction_count(sender).await.unwrap();
    let code = chain.code(token).await.unwrap();
    drop(f);
    drop(chain);

    let chain = EmbeddedChain::open(config).unwrap();
    assert_eq!(chain.head(), head, "the head is restored");
    assert_eq!(
        chain.native_balance(funded).await.unwrap(),
        U256::from(456u64),
        "genesis is not re-applied"
    );
    assert_eq!(chain.native_balance(sender).await.unwrap(), sender_gas);
    assert_eq!(chain.transaction_count(sender).await.unwrap(), sender_nonce);
    assert_eq!(chain.code(token).await.unwrap(), code);
    assert_eq!(
        chain.receipt(hash).await.unwrap(),
        Some(receipt),
        "receipts are kept"
    );

    let evm: Arc<dyn EvmChain> = chain.clone();
    let token = Token::new(evm.clone(), token);
    assert_eq!(
        token.balance_of(payee).await.unwrap(),
        U256::from(250_000u64)
    );
    assert_eq!(
        token.balance_of(payer).await.unwrap(),
        U256::from(750_000u64)
    );
    assert!(
        token
            .authorization_state(payer, authorization.nonce)
            .await
            .unwrap(),
        "the nonce stays used"
    );

    // Replaying the authorization after the restart reverts on chain and moves nothing.
    let relayer = PrivateKeySigner::random();
    chain
        .set_native_balance(relayer.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    let relayer = Account::new(evm, relayer);
    let outcome = token
        .simulate_transfer_with_authorization(relayer.address(), &authorization, &signature)
        .await
        .unwrap();
    assert!(matches!(outcome, CallOutcome::Revert(_)), "{outcome:?}");
    let replay = token
        .submit_transfer_with_authorization(&relayer, &authorization, &signature, Some(200_000))
        .await
        .unwrap();
    let replay = wait_for_receipt(chain.as_ref(), replay, RECEIPT_TIMEOUT)
        .await
        .unwrap();
    assert!(!replay.success);
    assert!(replay.block_number > head.number, "block numbers continue");
    assert_eq!(
        token.balance_of(payee).await.unwrap(),
        U256::from(250_000u64)
    );

    // The clock offset survived too: new blocks are not earlier than the time-travelled head.
    assert!(chain.head().timestamp >= head.timestamp);
}

async fn build_history(dir: &Path) -> (Address, u64) {
    let chain = EmbeddedChain::open(EmbeddedConfig::persistent(dir)).unwrap();
    let signer = PrivateKeySigner::random();
    chain
        .set_native_balance(signer.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    for nonce in 0..3 {
        chain
            .send_raw_transaction(transfer(&signer, nonce, Address::repeat_byte(0x11), 1))
            .await
            .unwrap();
    }
    (signer.address(), chain.head().number)
}

#[tokio::test]
async fn a_torn_final_record_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, head) = build_history(dir.path()).await;
    let journal = dir.path().join(JOURNAL_FILE_NAME);
    let good_len = std::fs::metadata(&journal).unwrap().len();

    // A record whose length says 500 bytes but only 10 made it to disk.
    let mut file = OpenOptions::new().append(true).open(&journal).unwrap();
    file.write_all(&500u32.to_le_bytes()).unwrap();
    file.write_all(&[0xab; 18]).unwrap();
    drop(file);

    let chain = EmbeddedChain::open(EmbeddedConfig::persistent(dir.path())).unwrap();
    assert_eq!(chain.head().number, head);
    assert_eq!(chain.transaction_count(sender).await.unwrap(), 3);
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        good_len,
        "the torn tail was cut off"
    );
    chain.mine().await.unwrap();
    drop(chain);

    // A complete-length final record with a bad checksum (payload not fully written) is also torn.
    let mut file = OpenOptions::new().append(true).open(&journal).unwrap();
    file.write_all(&8u32.to_le_bytes()).unwrap();
    file.write_all(&[0u8; 16]).unwrap();
    drop(file);
    let chain = EmbeddedChain::open(EmbeddedConfig::persistent(dir.path())).unwrap();
    assert_eq!(
        chain.head().number,
        head + 1,
        "records appended after a cut are kept"
    );
}

#[tokio::test]
async fn a_damaged_record_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    build_history(dir.path()).await;
    let journal = dir.path().join(JOURNAL_FILE_NAME);
    let mut bytes = std::fs::read(&journal).unwrap();
    // Header is 20 bytes, the first record's frame 12: flip a byte of its payload.
    bytes[20 + 12 + 3] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    let error = EmbeddedChain::open(EmbeddedConfig::persistent(dir.path())).unwrap_err();
    assert!(
        matches!(error, EmbeddedError::Corrupt { offset: 20, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_data_dir_of_another_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build_history(dir.path()).await;
    let error = EmbeddedChain::open(EmbeddedConfig {
        chain_id: 8453,
        ..EmbeddedConfig::persistent(dir.path())
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            EmbeddedError::ChainIdMismatch {
                found: 31337,
                expected: 8453,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("31337") && message.contains("8453"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn a_data_dir_opens_once_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedChain::open(EmbeddedConfig::persistent(dir.path())).unwrap();
    let error = EmbeddedChain::open(EmbeddedConfig::persistent(dir.path())).unwrap_err();
    match &error {
        EmbeddedError::Locked { path } => assert_eq!(path, &dir.path().join(LOCK_FILE_NAME)),
        other => panic!("expected Locked, got {other}"),
    }
    assert!(error.to_string().contains(LOCK_FILE_NAME), "{error}");
    drop(first);
    EmbeddedChain::open(EmbeddedConfig::persistent(dir.path()))
        .expect("the lock is released on drop");
}

#[tokio::test]
async fn unsynced_journal_also_persists() {
    let dir = tempfile::tempdir().unwrap();
    let address = Address::repeat_byte(0x21);
    let config = EmbeddedConfig {
        sync_writes: false,
        ..EmbeddedConfig::persistent(dir.path())
    };
    let chain = EmbeddedChain::open(config.clone()).unwrap();
    chain
        .set_native_balance(address, U256::from(7u64))
        .await
        .unwrap();
    drop(chain);
    let chain = EmbeddedChain::open(config).unwrap();
    assert_eq!(
        chain.native_balance(address).await.unwrap(),
        U256::from(7u64)
    );
    assert_eq!(chain.receipt(B256::ZERO).await.unwrap(), None);
}
