//! End-to-end: the `bursar` binary. `bursar dev` runs as a child process on loopback ports; the
//! tests pay with `bursar pay` and with hand-built payments, and check balances on the dev chain.

use std::process::{Command, Stdio};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use bursar_protocol::codec::{HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{PaymentPayload, PaymentRequired, SettleResponse};
use serde_json::Value;

mod common;
use common::*;

#[test]
fn bursar_pay_moves_exactly_the_price_with_v2_and_v1() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let buyer_start = dev.balance(&buyer);
    let seller_start = dev.balance(&seller);
    assert_eq!(
        buyer_start, 1_000_000_000,
        "the demo buyer starts with 1000 USDC"
    );

    for (round, flags) in [vec!["--max", "0.05"], vec!["--max", "0.05 USDC", "--v1"]]
        .iter()
        .enumerate()
    {
        let result = pay_json(&dev, "/weather", flags);
        assert_eq!(result["status"], 200, "{result}");
        assert!(
            result["body"].as_str().unwrap().contains("Lisbon"),
            "{result}"
        );
        let receipt = &result["receipt"];
        assert_eq!(receipt["settled"], true, "{result}");
        assert_eq!(receipt["amount"], "10000");
        assert_eq!(receipt["x402Version"], if round == 0 { 2 } else { 1 });
        let transaction = receipt["transaction"].as_str().unwrap();
        assert_eq!(transaction.len(), 66, "{transaction}");
        assert!(
            receipt["payee"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(&seller)
        );

        let paid = WEATHER_PRICE * (round as u128 + 1);
        assert_eq!(
            dev.balance(&buyer),
            buyer_start - paid,
            "the buyer paid exactly the price"
        );
        assert_eq!(
            dev.balance(&seller),
            seller_start + paid,
            "the seller got exactly the price"
        );
    }
}

/// `bursar dev --batch` settles through the batch contract: the payment is settled and exactly
/// the price moves, and paying again (a second batch) does the same.
#[test]
fn dev_with_batching_settles_exactly_the_price() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start_with(dir.path(), &["--batch"]);
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let (buyer_start, seller_start) = (dev.balance(&buyer), dev.balance(&seller));
    let mut transactions = Vec::new();
    for round in 1..=2u128 {
        let result = pay_json(&dev, "/weather", &["--max", "0.05"]);
        assert_eq!(result["status"], 200, "{result}");
        assert_eq!(result["receipt"]["settled"], true, "{result}");
        transactions.push(
            result["receipt"]["transaction"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        assert_eq!(dev.balance(&buyer), buyer_start - round * WEATHER_PRICE);
        assert_eq!(dev.balance(&seller), seller_start + round * WEATHER_PRICE);
    }
    assert_ne!(
        transactions[0], transactions[1],
        "one batch per payment here"
    );
    // Both went out as batches (the facilitator's own count).
    let metrics = reqwest::blocking::get(format!(
        "{}/metrics",
        dev.info["facilitatorUrl"].as_str().unwrap()
    ))
    .unwrap()
    .text()
    .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "bursar_facilitator_batches_total 2"),
        "{metrics}"
    );
}

#[test]
fn pay_refuses_above_max_and_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let buyer_start = dev.balance(&dev.buyer());
    let url = dev.api("/report");
    let output = dev.bursar(&["pay", &url, "--max", "0.1"]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("0.25 USDC exceeds your maximum 0.1 USDC"),
        "{stderr}"
    );
    assert_eq!(dev.balance(&dev.buyer()), buyer_start);

    let output = dev.bursar(&["pay", &url, "--max", "lots"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad --max is a usage error"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max"));
}

#[test]
fn balance_and_faucet_commands() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let someone = PrivateKeySigner::random().address().to_checksum(None);
    let output = dev.bursar(&["faucet", &someone, "2.5"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(dev.balance(&someone), 2_500_000);
    let output = dev.bursar(&["balance", &someone]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("2.5 USDC"));
    let output = dev.bursar(&["faucet", "not-an-address", "1"]);
    assert!(!output.status.success());
}

/// Pays `/weather` by hand with the demo buyer's key and returns the payment header used.
fn pay_by_hand(dev: &Dev) -> (String, String) {
    let http = reqwest::blocking::Client::new();
    let unpaid = http.get(dev.api("/weather")).send().unwrap();
    assert_eq!(unpaid.status().as_u16(), 402);
    let header = unpaid.headers()[HEADER_PAYMENT_REQUIRED]
        .to_str()
        .unwrap()
        .to_string();
    let required = PaymentRequired::from_v2_header(&header).expect("a well-formed v2 402");
    let v1_body = unpaid.bytes().unwrap();
    let v1 = PaymentRequired::from_v1_body(&v1_body).expect("a well-formed v1 402 body");
    assert_eq!(
        v1.accepts, required.accepts,
        "both forms offer the same terms"
    );
    assert_eq!(required.resource.url, dev.api("/weather"));

    let requirement = required.accepts[0].clone();
    let key: PrivateKeySigner = dev.info["buyerPrivateKey"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let authorization = exact_evm::authorization_for(&requirement, key.address(), now).unwrap();
    let (name, version) = requirement.eip712_name_version().unwrap();
    let token: Address = requirement.asset.evm().unwrap();
    let domain = exact_evm::token_domain(
        name,
        version,
        requirement.network.chain_id().unwrap(),
        token,
    );
    let signature = exact_evm::sign_authorization(&key, &authorization, &domain).unwrap();
    let payload = PaymentPayload::new_v2(
        requirement,
        None,
        ExactEvmPayload {
            signature,
            authorization,
        },
    );
    let payment_header = payload.to_header();
    let paid = http
        .get(dev.api("/weather"))
        .header(payload.header_name(), &payment_header)
        .send()
        .unwrap();
    assert_eq!(paid.status().as_u16(), 200);
    let settlement =
        SettleResponse::from_header(paid.headers()[HEADER_PAYMENT_RESPONSE].to_str().unwrap())
            .unwrap();
    assert!(settlement.success);
    (payment_header, settlement.transaction.to_string())
}

#[test]
fn restart_after_sigkill_keeps_balances_and_used_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let (payment_header, transaction) = pay_by_hand(&dev);
    assert_eq!(transaction.len(), 66);
    let someone = PrivateKeySigner::random().address().to_checksum(None);
    assert!(dev.bursar(&["faucet", &someone, "7"]).status.success());
    let (buyer, seller) = (dev.buyer(), dev.seller());
    let before = (
        dev.balance(&buyer),
        dev.balance(&seller),
        dev.balance(&someone),
    );
    assert_eq!(before.2, 7_000_000);
    dev.kill();

    let dev = Dev::start(dir.path());
    let after = (
        dev.balance(&buyer),
        dev.balance(&seller),
        dev.balance(&someone),
    );
    assert_eq!(after, before, "balances survive a SIGKILL and restart");

    // The authorization used before the restart stays used: replaying it is refused and moves nothing.
    let replay = reqwest::blocking::Client::new()
        .get(dev.api("/weather"))
        .header("PAYMENT-SIGNATURE", &payment_header)
        .send()
        .unwrap();
    assert_eq!(replay.status().as_u16(), 402);
    let required = PaymentRequired::from_v2_header(
        replay.headers()[HEADER_PAYMENT_REQUIRED].to_str().unwrap(),
    )
    .unwrap();
    let error = required.error.unwrap_or_default();
    assert!(error.contains("nonce_already_used"), "{error}");
    assert_eq!(
        (dev.balance(&buyer), dev.balance(&seller)),
        (before.0, before.1)
    );

    // And the chain still works after the restart.
    let result = pay_json(&dev, "/joke", &[]);
    assert_eq!(result["receipt"]["settled"], true, "{result}");
    assert_eq!(dev.balance(&seller), before.1 + 1_000);
}

#[test]
fn garbage_payment_headers_get_402_json_and_nothing_moves() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let buyer_start = dev.balance(&dev.buyer());
    let huge_number = format!(
        "{{\"x402Version\":2,\"accepted\":{{\"scheme\":\"exact\",\"network\":\"eip155:31337\",\"amount\":\"{}\",\"asset\":\"0x0\",\"payTo\":\"0x0\",\"maxTimeoutSeconds\":1}},\"payload\":{{}}}}",
        "9".repeat(200)
    );
    let garbage = [
        "not base64 at all!".to_string(),
        "e30=".to_string(), // {}
        bursar_protocol::codec::encode_header(&serde_json::json!({"x402Version": "two"})),
        bursar_protocol::codec::encode_header(&serde_json::json!([1, 2, 3])),
        base64_of(&huge_number),
        "A".repeat(40_000),
    ];
    for value in &garbage {
        for header in ["PAYMENT-SIGNATURE", "X-PAYMENT"] {
            // A client per request: a refused oversized header may close its connection.
            let response = reqwest::blocking::Client::new()
                .get(dev.api("/weather"))
                .header(header, value)
                .send()
                .unwrap();
            let status = response.status().as_u16();
            assert!(
                status == 402 || status == 431 || status == 400,
                "{header}: status {status}"
            );
            if status == 402 {
                let body: Value = response.json().expect("a JSON body");
                assert!(body["error"].is_string(), "{body}");
            }
        }
    }
    assert_eq!(dev.balance(&dev.buyer()), buyer_start);
    // The server is still healthy.
    assert_eq!(pay_json(&dev, "/joke", &[])["status"], 200);
}

fn base64_of(text: &str) -> String {
    bursar_protocol::codec::encode_header(&serde_json::from_str::<Value>(text).unwrap())
}

/// `bursar demo-api` serves the demo routes priced in the given token, settled by the given
/// facilitator, paying the given address.
#[test]
fn demo_api_command_charges_through_the_given_facilitator_and_pays_the_given_address() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let pay_to = PrivateKeySigner::random().address().to_checksum(None);
    let chain_id = dev.info["chainId"].to_string();
    let mut api = Command::new(BURSAR)
        .args(["demo-api", "--listen", "127.0.0.1:0", "--facilitator-url"])
        .arg(dev.info["facilitatorUrl"].as_str().unwrap())
        .args(["--chain-id", &chain_id, "--token"])
        .arg(dev.info["token"].as_str().unwrap())
        .args(["--token-name", dev.info["tokenName"].as_str().unwrap()])
        .args(["--pay-to", &pay_to])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bursar demo-api");
    let mut line = String::new();
    BufReader::new(api.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();

    let buyer_start = dev.balance(&dev.buyer());
    let output = dev.bursar(&["pay", &format!("{url}/joke"), "--json", "--max", "0.01"]);
    let _ = api.kill();
    let _ = api.wait();
    assert!(
        output.status.success(),
        "bursar pay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["receipt"]["settled"], true, "{result}");
    assert_eq!(
        dev.balance(&pay_to),
        1_000,
        "the given address got the price"
    );
    assert_eq!(dev.balance(&dev.buyer()), buyer_start - 1_000);
}
