//! RpcChain behaviour beyond the conformance suite: connecting, error classification, the harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_network::TxSignerSync;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::{CallOutcome, CallRequest, ChainError, DevChain, EvmChain};
use bursar_chain_rpc::{AnvilError, AnvilInstance, ConnectError, RpcChain};

/// Unreachable nodes must fail fast; this bounds "fast" with room for a loaded machine.
const FAIL_FAST_LIMIT_MS: u64 = 3_000;
const ONE_ETHER: u128 = 1_000_000_000_000_000_000;

fn anvil() -> AnvilInstance {
    AnvilInstance::spawn().unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn creation(code: &[u8]) -> CallRequest {
    CallRequest {
        data: Bytes::copy_from_slice(code),
        ..Default::default()
    }
}

/// Signs a plain value transfer.
fn transfer(signer: &PrivateKeySigner, chain_id: u64, nonce: u64, value: u64) -> Bytes {
    let mut tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 10_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(Address::repeat_byte(0x99)),
        value: U256::from(value),
        access_list: Default::default(),
        input: Default::default(),
    };
    let signature = signer.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(signature))
        .encoded_2718()
        .into()
}

#[tokio::test]
async fn connect_reads_the_chain_id_and_refuses_a_mismatch() {
    let node = AnvilInstance::spawn_with_chain_id(8453).unwrap_or_else(|e| panic!("{e}"));
    let chain = RpcChain::connect(node.url(), Some(8453)).await.unwrap();
    assert_eq!(chain.chain_id(), 8453);
    let unchecked = RpcChain::connect(node.url(), None).await.unwrap();
    assert_eq!(unchecked.chain_id(), 8453);

    let error = RpcChain::connect(node.url(), Some(84532))
        .await
        .unwrap_err();
    match &error {
        ConnectError::ChainIdMismatch {
            expected: 84532,
            actual: 8453,
            ..
        } => {}
        other => panic!("expected a chain id mismatch, got {other:?}"),
    }
    assert!(error.to_string().contains("8453"), "{error}");
}

#[tokio::test]
async fn unreachable_node_is_a_transport_error_not_a_hang() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let error = RpcChain::connect(&url, Some(31337)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(FAIL_FAST_LIMIT_MS),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, ConnectError::Chain(ChainError::Transport(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_node_that_goes_away_is_a_transport_error() {
    let node = anvil();
    let chain = RpcChain::connect(node.url(), None).await.unwrap();
    chain.latest_block().await.unwrap();
    drop(node);
    let started = Instant::now();
    let error = chain.latest_block().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(FAIL_FAST_LIMIT_MS),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, ChainError::Transport(_)), "{error:?}");
    let error = chain
        .send_raw_transaction(Bytes::from_static(&[0x02]))
        .await
        .unwrap_err();
    assert!(matches!(error, ChainError::Transport(_)), "{error:?}");
}

#[tokio::test]
async fn invalid_urls_are_refused() {
    for url in ["not a url", "ftp://127.0.0.1:1", "ws://127.0.0.1:8545"] {
        let error = RpcChain::connect(url, None).await.unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidUrl(_)),
            "{url}: {error:?}"
        );
    }
}

#[tokio::test]
async fn reverts_carry_their_data_and_halts_revert_empty() {
    let chain = anvil().into_chain().await.unwrap();
    // PUSH1 0x2a PUSH1 0 MSTORE PUSH1 32 PUSH1 0 REVERT: reverts with the word 42.
    let reverting = creation(&[0x60, 0x2a, 0x60, 0x00, 0x52, 0x60, 0x20, 0x60, 0x00, 0xfd]);
    let mut expected = [0u8; 32];
    expected[31] = 0x2a;
    assert_eq!(
        chain.call(reverting.clone()).await.unwrap(),
        CallOutcome::Revert(Bytes::copy_from_slice(&expected))
    );
    let error = chain.estimate_gas(reverting).await.unwrap_err();
    assert!(matches!(error, ChainError::Reverted(_)), "{error:?}");

    // PUSH1 0 PUSH1 0 REVERT: no data.
    let empty = creation(&[0x60, 0x00, 0x60, 0x00, 0xfd]);
    assert_eq!(
        chain.call(empty).await.unwrap(),
        CallOutcome::Revert(Bytes::new())
    );

    // INVALID halts.
    let invalid = creation(&[0xfe]);
    assert_eq!(
        chain.call(invalid.clone()).await.unwrap(),
        CallOutcome::Revert(Bytes::new())
    );
    let error = chain.estimate_gas(invalid).await.unwrap_err();
    assert!(matches!(error, ChainError::Reverted(_)), "{error:?}");

    // PUSH1 0x2a PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN: succeeds with the word 42.
    let returning = creation(&[0x60, 0x2a, 0x60, 0x00, 0x52, 0x60, 0x20, 0x60, 0x00, 0xf3]);
    assert_eq!(
        chain.call(returning.clone()).await.unwrap(),
        CallOutcome::Success(Bytes::copy_from_slice(&expected))
    );
    assert!(chain.estimate_gas(returning).await.unwrap() > 21_000);
}

#[tokio::test]
async fn send_refusals_are_classified() {
    let chain = anvil().into_chain().await.unwrap();
    let id = chain.chain_id();
    let key = PrivateKeySigner::random();
    chain
        .set_native_balance(key.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();

    let first = transfer(&key, id, 0, 1);
    let hash = chain.send_raw_transaction(first.clone()).await.unwrap();
    let receipt = bursar_chain::wait_for_receipt(chain.as_ref(), hash, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(receipt.success);
    assert_eq!(receipt.transaction_hash, hash);
    assert_eq!(receipt.gas_used, 21_000);
    assert!(receipt.contract_address.is_none());

    // Another transaction with the used nonce.
    let error = chain
        .send_raw_transaction(transfer(&key, id, 0, 2))
        .await
        .unwrap_err();
    assert!(matches!(error, ChainError::NonceTooLow(_)), "{error:?}");
    assert_eq!(chain.transaction_count(key.address()).await.unwrap(), 1);

    // No money for gas.
    let poor = PrivateKeySigner::random();
    let error = chain
        .send_raw_transaction(transfer(&poor, id, 0, 1))
        .await
        .unwrap_err();
    assert!(matches!(error, ChainError::Rejected(_)), "{error:?}");

    // Not a transaction at all.
    let error = chain
        .send_raw_transaction(Bytes::from_static(&[0x02, 0x01]))
        .await
        .unwrap_err();
    assert!(matches!(error, ChainError::Rejected(_)), "{error:?}");
}

#[tokio::test]
async fn resending_a_pending_transaction_returns_its_hash() {
    let node = AnvilInstance::spawn_with(31337, &["--no-mining"]).unwrap_or_else(|e| panic!("{e}"));
    let chain = node.into_chain().await.unwrap();
    let key = PrivateKeySigner::random();
    chain
        .set_native_balance(key.address(), U256::from(ONE_ETHER))
        .await
        .unwrap();
    let raw = transfer(&key, chain.chain_id(), 0, 1);
    let hash = chain.send_raw_transaction(raw.clone()).await.unwrap();
    assert_eq!(chain.send_raw_transaction(raw).await.unwrap(), hash);
    assert_eq!(chain.receipt(hash).await.unwrap(), None, "not mined yet");
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        1,
        "pending transactions count"
    );
    chain.mine().await.unwrap();
    let receipt = chain.receipt(hash).await.unwrap().expect("mined");
    assert!(receipt.success);
}

#[tokio::test]
async fn dev_controls_work_on_anvil() {
    let chain = anvil().into_chain().await.unwrap();
    let who = Address::repeat_byte(0x11);
    chain
        .set_native_balance(who, U256::from(12345u64))
        .await
        .unwrap();
    assert_eq!(
        chain.native_balance(who).await.unwrap(),
        U256::from(12345u64)
    );
    let before = chain.latest_block().await.unwrap();
    chain.increase_time(3600).await.unwrap();
    let after = chain.latest_block().await.unwrap();
    assert_eq!(after.number, before.number + 1);
    assert!(after.timestamp >= before.timestamp + 3600);
    chain.mine().await.unwrap();
    assert_eq!(chain.latest_block().await.unwrap().number, after.number + 1);
    let fees = chain.fees().await.unwrap();
    assert!(
        fees.max_fee_per_gas >= fees.max_priority_fee_per_gas && fees.max_fee_per_gas > 0,
        "{fees:?}"
    );
    assert!(chain.code(who).await.unwrap().is_empty());
}

/// A node that serves only `eth_chainId` and refuses every other method, as public nodes refuse
/// anvil's; `garbage` makes it answer other methods with something that is not JSON-RPC.
fn spawn_limited_node(garbage: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || serve_limited(stream, garbage));
        }
    });
    url
}

fn serve_limited(stream: TcpStream, garbage: bool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).unwrap();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = request["id"].clone();
        let answer = if request["method"] == "eth_chainId" {
            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": "0x2105"}).to_string()
        } else if garbage {
            "<html>bad gateway</html>".to_string()
        } else {
            let message = format!(
                "the method {} does not exist/is not available",
                request["method"]
            );
            serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": message}}).to_string()
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn dev_controls_are_unsupported_on_a_node_without_them() {
    let chain: Arc<RpcChain> = RpcChain::connect(&spawn_limited_node(false), Some(8453))
        .await
        .unwrap();
    let error = chain
        .set_native_balance(Address::ZERO, U256::from(1u64))
        .await
        .unwrap_err();
    assert!(matches!(error, ChainError::Unsupported(_)), "{error:?}");
    let error = chain.increase_time(60).await.unwrap_err();
    assert!(matches!(error, ChainError::Unsupported(_)), "{error:?}");
    let error = chain.mine().await.unwrap_err();
    assert!(matches!(error, ChainError::Unsupported(_)), "{error:?}");
}

#[tokio::test]
async fn garbage_answers_are_transport_errors() {
    let chain = RpcChain::connect(&spawn_limited_node(true), Some(8453))
        .await
        .unwrap();
    let error = chain.latest_block().await.unwrap_err();
    assert!(matches!(error, ChainError::Transport(_)), "{error:?}");
    let error = chain.call(CallRequest::default()).await.unwrap_err();
    assert!(matches!(error, ChainError::Transport(_)), "{error:?}");
}

#[test]
fn dropping_the_instance_stops_anvil() {
    let node = anvil();
    let pid = node.pid();
    let proc_entry = std::path::PathBuf::from(format!("/proc/{pid}"));
    if cfg!(target_os = "linux") {
        assert!(proc_entry.exists());
    }
    drop(node);
    if cfg!(target_os = "linux") {
        assert!(!proc_entry.exists(), "anvil {pid} still running");
    }
}

#[test]
fn a_missing_binary_says_how_to_install_it() {
    let error = AnvilError::NotFound {
        path: "/nowhere/anvil".into(),
        origin: "from BURSAR_ANVIL",
    };
    let message = error.to_string();
    assert!(message.contains("npm ci --prefix tools/anvil"), "{message}");
    assert!(message.contains("BURSAR_ANVIL"), "{message}");
    // The pinned binary is installed on machines that run the suite.
    bursar_chain_rpc::anvil_binary().unwrap_or_else(|e| panic!("{e}"));
}
