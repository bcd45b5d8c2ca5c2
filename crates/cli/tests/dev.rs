//! End-to-end: the `bursar` binary. `bursar dev` runs as a child process on loopback ports; the
//! tests pay with `bursar pay` and with hand-built payments, and check balances on the dev chain.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use bursar_protocol::codec::{HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{PaymentPayload, PaymentRequired, SettleResponse};
use serde_json::Value;

const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const WEATHER_PRICE: u128 = 10_000;

struct Dev {
    child: Child,
    data_dir: PathBuf,
    info: Value,
}

impl Dev {
    /// Starts `bursar dev` on free loopback ports and waits until it answers.
    fn start(data_dir: &Path) -> Dev {
        Dev::start_with(data_dir, &[])
    }

    /// [`Dev::start`] with more arguments.
    fn start_with(data_dir: &Path, extra: &[&str]) -> Dev {
        Dev::spawn(data_dir, extra, None)
    }

    /// [`Dev::start`] with the runtime's passphrase given and everything it prints, debug logs
    /// included, written to `log`.
    fn start_logged(data_dir: &Path, passphrase: &str, log: &Path) -> Dev {
        Dev::spawn(data_dir, &[], Some((passphrase, log)))
    }

    fn spawn(data_dir: &Path, extra: &[&str], logged: Option<(&str, &Path)>) -> Dev {
        let info_path = data_dir.join("dev.json");
        let _ = std::fs::remove_file(&info_path);
        let mut command = Command::new(BURSAR);
        command
            .args([
                "dev",
                "--facilitator-port",
                "0",
                "--api-port",
                "0",
                "--runtime-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra);
        match logged {
            Some((passphrase, log)) => {
                let file = std::fs::File::create(log).unwrap();
                command
                    .env("BURSAR_PASSPHRASE", passphrase)
                    .env("BURSAR_LOG", "debug")
                    .stdout(file.try_clone().unwrap())
                    .stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().expect("spawn bursar dev");
        let mut dev = Dev {
            child,
            data_dir: data_dir.to_path_buf(),
            info: Value::Null,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = dev.child.try_wait().unwrap() {
                panic!("bursar dev exited early with {status}");
            }
            if let Ok(text) = std::fs::read_to_string(&info_path)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                let health = format!("{}/health", info["facilitatorUrl"].as_str().unwrap());
                if reqwest::blocking::get(&health)
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
                {
                    dev.info = info;
                    return dev;
                }
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "bursar dev did not start within {STARTUP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.info["apiUrl"].as_str().unwrap())
    }

    fn balance(&self, address: &str) -> u128 {
        let url = format!(
            "{}/dev/balance/{address}",
            self.info["facilitatorUrl"].as_str().unwrap()
        );
        let document: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        document["balance"].as_str().unwrap().parse().unwrap()
    }

    fn buyer(&self) -> String {
        self.info["buyer"].as_str().unwrap().to_string()
    }

    fn seller(&self) -> String {
        self.info["seller"].as_str().unwrap().to_string()
    }

    fn bursar(&self, args: &[&str]) -> Output {
        Command::new(BURSAR)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_remove("BURSAR_PRIVATE_KEY")
            .output()
            .expect("run bursar")
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pay_json(dev: &Dev, path: &str, extra: &[&str]) -> Value {
    let url = dev.api(path);
    let mut args = vec!["pay", url.as_str(), "--json"];
    args.extend_from_slice(extra);
    let output = dev.bursar(&args);
    assert!(
        output.status.success(),
        "bursar pay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bursar pay --json prints JSON")
}

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
    let token: Address = requirement.asset.parse().unwrap();
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
        }
        .to_value(),
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
    (payment_header, settlement.transaction)
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

/// A call to the dev runtime's API with a bearer credential.
fn runtime_call(
    dev: &Dev,
    method: reqwest::Method,
    path: &str,
    credential: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", dev.info["runtimeUrl"].as_str().unwrap());
    let mut request = reqwest::blocking::Client::new()
        .request(method, url)
        .bearer_auth(credential);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().expect("the runtime answers");
    let status = response.status().as_u16();
    (status, response.json().expect("JSON"))
}

/// A grant on the demo wallet for `agent` and a session under it with `max` USDC, opened by the
/// operator over the dev runtime's API: the session's id and token.
fn open_session(dev: &Dev, operator_key: &str, agent: &str, max: &str) -> (String, String) {
    let (status, grant) = runtime_call(
        dev,
        reqwest::Method::POST,
        "/v1/grants",
        operator_key,
        Some(serde_json::json!({"walletId": "demo", "agent": agent})),
    );
    assert_eq!(status, 201, "{grant}");
    let (status, session) = runtime_call(
        dev,
        reqwest::Method::POST,
        "/v1/sessions",
        operator_key,
        Some(
            serde_json::json!({"grantId": grant["id"], "maxSpendAmount": max, "currency": "USDC"}),
        ),
    );
    assert_eq!(status, 201, "{session}");
    (
        session["id"].as_str().unwrap().to_string(),
        session["token"].as_str().unwrap().to_string(),
    )
}

/// The runtime inside `bursar dev`: an operator grants and opens a session over the API, the
/// agent pays with `bursar pay --session`; then the process is SIGKILLed in the middle of
/// concurrent payments and restarted: no reservation is lost, nothing is paid twice (the chain's
/// spend equals the ledger's posted total), and `bursar ledger reconcile` finds no difference.
#[test]
fn runtime_session_pays_and_survives_sigkill_mid_payment() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let buyer = dev.buyer();
    let start_balance = dev.balance(&buyer);

    let (session_id, token) = open_session(&dev, &key, "crawler", "0.30");

    let weather = dev.api("/weather");
    let output = dev.bursar(&["pay", &weather, "--session", &token]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Lisbon"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("posted"));
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);

    // Concurrent payments through the session, and a SIGKILL while they run.
    let runtime_url = dev.info["runtimeUrl"].as_str().unwrap().to_string();
    let workers: Vec<_> = (0..40)
        .map(|_| {
            let (url, token, session_id, weather) = (
                runtime_url.clone(),
                token.clone(),
                session_id.clone(),
                weather.clone(),
            );
            std::thread::spawn(move || {
                let _ = reqwest::blocking::Client::new()
                    .post(format!("{url}/v1/sessions/{session_id}/fetch"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"url": weather}))
                    .timeout(Duration::from_secs(20))
                    .send();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(35));
    dev.kill();
    for worker in workers {
        worker.join().unwrap();
    }

    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let output = dev.bursar(&["ledger", "reconcile"]);
    assert!(
        output.status.success(),
        "reconcile after restart: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, session) = runtime_call(
        &dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session_id}"),
        &key,
        None,
    );
    assert_eq!(status, 200, "{session}");
    let posted: u128 = session["postedAtomic"].as_str().unwrap().parse().unwrap();
    let reserved: u128 = session["reservedAtomic"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "after SIGKILL and restart: posted {posted}, still reserved {reserved} (atomic units)"
    );
    assert!(posted + reserved <= 300_000, "over budget: {session}");
    assert!(posted >= WEATHER_PRICE);
    assert_eq!(posted % WEATHER_PRICE, 0);
    // Nothing paid twice, nothing paid unrecorded: the chain moved exactly what was posted.
    assert_eq!(start_balance - dev.balance(&buyer), posted, "{session}");
    let (_, transfers) = runtime_call(
        &dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session_id}/transfers"),
        &token,
        None,
    );
    let transfers = transfers["transfers"].as_array().unwrap();
    let sum = |state: &str| -> u128 {
        transfers
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| t["amountAtomic"].as_str().unwrap().parse::<u128>().unwrap())
            .sum()
    };
    assert_eq!(sum("posted"), posted);
    assert_eq!(sum("pending"), reserved);

    let output = dev.bursar(&["ledger", "export", "--csv"]);
    assert!(output.status.success());
    let csv = String::from_utf8_lossy(&output.stdout);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("seq,kind,at_ms,transfer_id")
    );
    let posts = lines.filter(|line| line.contains(",post,")).count() as u128;
    assert_eq!(posts * WEATHER_PRICE, posted);

    // Policies from the command line: learn an allowlist from these payments, attach it, read it.
    let output = dev.bursar(&["policy", "learn", "--days", "1"]);
    assert!(output.status.success(), "{output:?}");
    let learned = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(learned.contains("\"127.0.0.1\""), "{learned}");
    assert!(
        learned
            .to_ascii_lowercase()
            .contains(&dev.seller().to_ascii_lowercase()),
        "{learned}"
    );
    let file = dir.path().join("learned.toml");
    std::fs::write(&file, &learned).unwrap();
    let file_text = file.display().to_string();
    let output = dev.bursar(&["policy", "set", "session", &session_id, &file_text]);
    assert!(output.status.success(), "{output:?}");
    let output = dev.bursar(&["policy", "show", "session", &session_id]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), learned);
    std::fs::write(&file, "max_per_call = \"lots\"").unwrap();
    let output = dev.bursar(&["policy", "set", "session", &session_id, &file_text]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_per_call"));
}

/// The compensation commands against `bursar dev`: a payment made with `bursar pay --session
/// --step`, then `bursar session fail --step` with the agent's own token: the settled payment
/// becomes a refund claim carrying its evidence and settlement, `bursar compensation list` shows
/// it, an unknown step is refused with a non-zero exit, and the money moved exactly once.
#[test]
fn compensation_commands_turn_a_failed_step_into_a_refund_claim() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let buyer = dev.buyer();
    let start_balance = dev.balance(&buyer);
    let (session_id, token) = open_session(&dev, &key, "summarizer", "0.10");

    let weather = dev.api("/weather");
    let paid = dev.bursar(&["pay", &weather, "--session", &token, "--step", "forecast"]);
    assert!(
        paid.status.success(),
        "{}",
        String::from_utf8_lossy(&paid.stderr)
    );
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);

    let failed = dev.bursar(&[
        "session",
        "fail",
        &session_id,
        "--step",
        "forecast",
        "--reason",
        "the forecast was for the wrong city",
        "--token",
        &token,
    ]);
    assert!(
        failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let marked: Value = serde_json::from_slice(&failed.stdout).unwrap();
    let record = &marked["compensations"][0];
    assert_eq!(record["outcome"], "refund_claim", "{marked}");
    assert_eq!(record["requestedBy"], "agent", "{record}");
    assert_eq!(record["transfer"]["state"], "posted", "{record}");
    assert!(
        record["settleTxHash"]
            .as_str()
            .is_some_and(|tx| tx.len() == 66),
        "{record}"
    );
    assert!(
        record["evidence"]["request"]["url"]
            .as_str()
            .is_some_and(|url| url.ends_with("/weather")),
        "{record}"
    );
    assert_eq!(record["evidence"]["response"]["status"], 200, "{record}");

    let listed = dev.bursar(&["compensation", "list", "--session", &session_id]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["compensations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["compensations"][0]["id"], record["id"]);

    let unknown = dev.bursar(&[
        "session",
        "fail",
        &session_id,
        "--step",
        "nope",
        "--reason",
        "x",
        "--token",
        &token,
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // A refund claim moves nothing by itself: the price left once.
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);
}

/// The wallet, grant and session commands against `bursar dev`, keeping every output and the
/// server's debug log: a keystore v3 file is imported (a wrong passphrase is refused), listed,
/// funded and exported (it decrypts under the runtime's passphrase to the same key); a grant
/// (60 minutes by default) and a session on it pay; the kill switch (`grant revoke-all`) stops
/// the next payment with nothing moving. Nothing printed or logged anywhere contains the private
/// key or either passphrase.
#[test]
fn wallet_grant_and_session_commands_never_reveal_a_key() {
    use bursar_wallet::{Kdf, Keystore, Passphrase};
    const RUNTIME_PASSPHRASE: &str = "runtime-passphrase-7f3a9c";
    const IMPORT_PASSPHRASE: &str = "import-passphrase-51be02";

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev = Dev::start_logged(dir.path(), RUNTIME_PASSPHRASE, &log);
    let signer = PrivateKeySigner::random();
    let address = signer.address();
    let key_hex = alloy_primitives::hex::encode(signer.to_bytes());
    let keystore = Keystore::encrypt(
        &signer,
        &Passphrase::new(IMPORT_PASSPHRASE.into()).unwrap(),
        Kdf::light(),
    )
    .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("imported.json"), keystore.to_json()).unwrap();
    std::fs::write(path("their-passphrase"), IMPORT_PASSPHRASE).unwrap();
    std::fs::write(path("wrong-passphrase"), "not it").unwrap();

    let mut printed = String::new();
    let mut run = |args: &[&str]| -> Output {
        let output = dev.bursar(args);
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        printed.push_str(&String::from_utf8_lossy(&output.stderr));
        output
    };
    let json = |output: &Output| -> Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    };

    let imported = path("imported.json");
    // The keystore imported with the passphrase in `passphrase_file`.
    let mut import = |passphrase_file: &str| {
        run(&[
            "wallet",
            "import",
            "--name",
            "imported",
            "--keystore",
            &imported,
            "--keystore-passphrase-file",
            passphrase_file,
        ])
    };
    let output = import(&path("wrong-passphrase"));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("passphrase"),
        "{output:?}"
    );
    let wallet = json(&import(&path("their-passphrase")));
    assert_eq!(wallet["address"], address.to_checksum(None));
    let checksummed = address.to_checksum(None);
    let listed = run(&["wallet", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.contains("\timported\t") && line.ends_with(&checksummed)),
        "{listed}"
    );
    assert!(listed.contains("\tdemo\t"), "{listed}");
    assert!(run(&["faucet", &checksummed, "1"]).status.success());
    let balance = run(&["wallet", "balance", "imported"]);
    assert_eq!(String::from_utf8_lossy(&balance.stdout).trim(), "1 USDC");

    let exported = path("exported.json");
    assert!(
        run(&["wallet", "export", "imported", "--out", &exported])
            .status
            .success()
    );
    let exported = Keystore::from_json(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    let decrypted = exported
        .decrypt(&Passphrase::new(RUNTIME_PASSPHRASE.into()).unwrap())
        .unwrap();
    assert_eq!(decrypted.address(), address);

    let grant = json(&run(&[
        "grant",
        "create",
        "--wallet",
        "imported",
        "--agent",
        "cli-agent",
    ]));
    let lasts_ms = grant["expiresAtMs"].as_i64().unwrap() - grant["createdAtMs"].as_i64().unwrap();
    assert!(
        (3_590_000..=3_600_000).contains(&lasts_ms),
        "a grant lasts 60 minutes by default: {grant}"
    );
    let grant_id = grant["id"].as_str().unwrap();
    let session = json(&run(&[
        "session", "create", "--grant", grant_id, "--max", "0.05",
    ]));
    let (session_id, token) = (
        session["id"].as_str().unwrap(),
        session["token"].as_str().unwrap(),
    );
    let weather = dev.api("/weather");
    let output = run(&["pay", &weather, "--session", token]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(dev.balance(&checksummed), 1_000_000 - WEATHER_PRICE);

    let revoked = json(&run(&["grant", "revoke-all", "--reason", "kill switch"]));
    assert!(revoked["revoked"].as_u64().unwrap() >= 2, "{revoked}");
    let output = run(&["pay", &weather, "--session", token]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("grant_revoked"),
        "{output:?}"
    );
    assert_eq!(dev.balance(&checksummed), 1_000_000 - WEATHER_PRICE);
    let shown = json(&run(&["session", "show", session_id]));
    assert_eq!(shown["postedAtomic"], WEATHER_PRICE.to_string(), "{shown}");
    assert_eq!(shown["reservedAtomic"], "0", "{shown}");
    let listed = json(&run(&["session", "transfers", session_id]));
    let transfers = listed["transfers"].as_array().unwrap();
    assert_eq!(transfers.len(), 1, "{listed}");
    assert_eq!(transfers[0]["state"], "posted");

    dev.kill();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("payment posted"),
        "the debug log was captured"
    );
    // The banner says the dev runtime reaches loopback (its demo sellers), and why.
    assert!(
        logged.contains("agents' requests may reach public addresses and 127.0.0.0/8, ::1/128"),
        "{logged}"
    );
    for (what, text) in [("printed", &printed), ("logged", &logged)] {
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains(&key_hex), "the private key was {what}");
        assert!(
            !text.contains(RUNTIME_PASSPHRASE),
            "the runtime passphrase was {what}"
        );
        assert!(
            !text.contains(IMPORT_PASSPHRASE),
            "the import passphrase was {what}"
        );
    }
}

/// `bursar runtime`'s egress flags are checked before anything starts: a malformed entry and
/// --egress-allow-any together with entries are refused with a message and exit code 2.
#[test]
fn runtime_egress_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            vec!["--egress-allow", "not a host"],
            "is not an egress entry",
        ),
        (vec!["--egress-allow", "10.0.0.0/33"], "prefix length"),
        (
            vec!["--egress-allow-any", "--egress-allow", "10.0.0.0/8"],
            "cannot be used with",
        ),
    ] {
        let output = Command::new(BURSAR)
            .arg("runtime")
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("BURSAR_PASSPHRASE", "unused passphrase")
            .env_remove("BURSAR_EGRESS_ALLOW")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
// ----- the default policy against hostile sellers -----

/// The price of each hostile route: 0.005 USDC (200 calls take a 1.00 budget).
const HOSTILE_PRICE: u128 = 5_000;

/// A hostile seller for the default-policy tests, on loopback, in this test only (the demo API
/// stays honest): Bursar's paywall settled by the `bursar dev` facilitator over HTTP, one payTo
/// address per route so what each pattern took is read from the chain.
struct HostileSeller {
    url: String,
    /// payTo of /verify-wallet, /garbage, /premium, /again.
    drain: Address,
    garbage: Address,
    premium: Address,
    again: Address,
    _runtime: tokio::runtime::Runtime,
}

impl HostileSeller {
    fn start(dev: &Dev) -> HostileSeller {
        use axum::Router;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::get;
        use bursar_facilitator_client::{Facilitator, HttpFacilitator};
        use bursar_protocol::{
            Amount, AssetUnit, FacilitatorRequest, Network, Resource, X402Version,
        };
        use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
        use std::sync::Arc;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let facilitator: Arc<dyn Facilitator> =
            Arc::new(HttpFacilitator::new(dev.info["facilitatorUrl"].as_str().unwrap()).unwrap());
        let asset = Asset::new(
            dev.info["token"].as_str().unwrap().to_string(),
            dev.info["tokenName"].as_str().unwrap().to_string(),
            dev.info["tokenVersion"].as_str().unwrap().to_string(),
            AssetUnit::usdc(),
        );
        let network = Network::Eip155(dev.info["chainId"].as_u64().unwrap());
        let [drain, garbage, premium, again] =
            std::array::from_fn(|_| PrivateKeySigner::random().address());
        let offer = |amount: u128, pay_to: Address| {
            Offer::exact(
                network.clone(),
                asset.clone(),
                Amount::from_u128(amount),
                pay_to.to_checksum(None),
            )
        };
        let paywall = PaywallLayer::builder(facilitator.clone())
            .route(
                PricedRoute::new(axum::http::Method::GET, "/verify-wallet")
                    .mime_type("application/json")
                    .offer(offer(HOSTILE_PRICE, drain)),
            )
            .route(
                PricedRoute::new(axum::http::Method::GET, "/garbage")
                    .mime_type("application/json")
                    .offer(offer(HOSTILE_PRICE, garbage)),
            )
            // Just under a 1.00 session budget.
            .route(
                PricedRoute::new(axum::http::Method::GET, "/premium")
                    .mime_type("application/json")
                    .offer(offer(990_000, premium)),
            )
            .build()
            .unwrap();
        // /again: takes the payment, settles it, then asks to be paid again.
        let required = bursar_protocol::PaymentRequired {
            version: X402Version::V2,
            error: Some("payment required".into()),
            resource: Resource::default(),
            accepts: vec![offer(HOSTILE_PRICE, again).requirement()],
            extensions: None,
        }
        .to_v2_header();
        let settle_then_ask_again = move |headers: HeaderMap| {
            let (facilitator, required) = (facilitator.clone(), required.clone());
            async move {
                if let Some(header) = headers.get("payment-signature") {
                    let payload =
                        bursar_protocol::PaymentPayload::from_header(header.to_str().unwrap())
                            .unwrap();
                    let requirements = payload.accepted.clone().unwrap();
                    let settled = facilitator
                        .settle(&FacilitatorRequest {
                            version: X402Version::V2,
                            payload,
                            requirements,
                            resource: None,
                        })
                        .await
                        .unwrap();
                    assert!(settled.success, "{settled:?}");
                }
                (
                    StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", required)],
                    "",
                )
                    .into_response()
            }
        };
        let app = Router::new()
            .route(
                "/verify-wallet",
                get(|| async {
                    axum::Json(serde_json::json!({"verified": false, "next": "verify again"}))
                }),
            )
            .route(
                "/garbage",
                get(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        "%%% not what you paid for %%%",
                    )
                }),
            )
            .route(
                "/premium",
                get(|| async { axum::Json(serde_json::json!({"premium": true})) }),
            )
            .layer(paywall)
            .route("/again", get(settle_then_ask_again));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        HostileSeller {
            url,
            drain,
            garbage,
            premium,
            again,
            _runtime: runtime,
        }
    }
}

/// The session's agent asks the runtime to fetch `url`: the status and the JSON answer.
fn agent_fetch(dev: &Dev, session: &str, token: &str, url: &str) -> (u16, Value) {
    runtime_call(
        dev,
        reqwest::Method::POST,
        &format!("/v1/sessions/{session}/fetch"),
        token,
        Some(serde_json::json!({"url": url})),
    )
}

/// `bursar audit show <session> --json`: the session's decisions as (allowed, reason, the
/// failing rules as "rule@source").
fn trace(dev: &Dev, session: &str) -> Vec<(bool, Option<String>, Vec<String>)> {
    let output = dev.bursar(&["audit", "show", session, "--json"]);
    assert!(output.status.success(), "{output:?}");
    let decisions: Value = serde_json::from_slice(&output.stdout).unwrap();
    decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|decision| {
            let failing = decision["rules"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| rule["passed"] == false)
                .map(|rule| {
                    format!(
                        "{}@{}",
                        rule["rule"].as_str().unwrap(),
                        rule["source"].as_str().unwrap()
                    )
                })
                .collect();
            (
                decision["allowed"].as_bool().unwrap(),
                decision["reason"].as_str().map(str::to_string),
                failing,
            )
        })
        .collect()
}

/// The session's transfers (state, atomic amount), read through its agent's token.
fn transfers_of(dev: &Dev, session: &str, token: &str) -> Vec<(String, u128)> {
    let (status, listed) = runtime_call(
        dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session}/transfers"),
        token,
        None,
    );
    assert_eq!(status, 200, "{listed}");
    listed["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["state"].as_str().unwrap().to_string(),
                t["amountAtomic"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Sessions with no policy written by anyone, in `bursar dev`, against the four hostile
/// patterns: each is stopped by the default policy after a small, known number of payments
/// (read on chain and in the ledger), the agent is told why, and the decision trace shows
/// the rule that refused, from the default policy.
#[test]
fn the_default_policy_stops_hostile_sellers_in_bursar_dev() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev = Dev::spawn(
        dir.path(),
        &[],
        Some(("default-policy-passphrase", log.as_path())),
    );
    let banner = std::fs::read_to_string(&log).unwrap();
    assert!(
        banner.contains("the default policy on every session"),
        "{banner}"
    );
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let buyer = dev.buyer();
    let buyer_start = dev.balance(&buyer);
    let paid_to = |address: Address| dev.balance(&address.to_string());

    // 1. "Verify your wallet", 200 times, each 0.005 (the whole 1.00 budget): loop detection
    // stops it after 10 payments within a minute.
    let (drain, drain_token) = open_session(&dev, &key, "drained", "1.00");
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for attempt in 0..200 {
        let url = format!("{}/verify-wallet?attempt={attempt}", seller.url);
        let (status, body) = agent_fetch(&dev, &drain, &drain_token, &url);
        let code = match status {
            200 => "paid".to_string(),
            403 => body["error"]["code"].as_str().unwrap().to_string(),
            other => panic!("{other}: {body}"),
        };
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(
        codes,
        [("loop_detected".to_string(), 190), ("paid".to_string(), 10)].into()
    );
    assert_eq!(paid_to(seller.drain), 10 * HOSTILE_PRICE);
    let transfers = transfers_of(&dev, &drain, &drain_token);
    assert_eq!(transfers.len(), 10);
    assert!(
        transfers
            .iter()
            .all(|(state, amount)| state == "posted" && *amount == HOSTILE_PRICE)
    );
    let decisions = trace(&dev, &drain);
    assert_eq!(decisions.len(), 200);
    assert_eq!(
        decisions.iter().filter(|(allowed, ..)| *allowed).count(),
        10
    );
    assert!(
        decisions[10..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("loop_detected")
                && failing == &["loop_detection@default policy".to_string()])
    );

    // 2. A 402 again after every payment (the seller settles each one): one payment, then the
    // endpoint backs off for a minute.
    let (again, again_token) = open_session(&dev, &key, "asked-again", "1.00");
    let url = format!("{}/again", seller.url);
    let (status, body) = agent_fetch(&dev, &again, &again_token, &url);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "payment_rejected", "{body}");
    for _ in 0..4 {
        let (status, body) = agent_fetch(&dev, &again, &again_token, &url);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "endpoint_backing_off", "{body}");
    }
    assert_eq!(paid_to(seller.again), HOSTILE_PRICE, "one payment moved");
    // The runtime's resolver finds the settled authorization and posts it.
    let started = Instant::now();
    while transfers_of(&dev, &again, &again_token) != [("posted".to_string(), HOSTILE_PRICE)] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            transfers_of(&dev, &again, &again_token)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let decisions = trace(&dev, &again);
    assert_eq!(decisions.len(), 5);
    assert!(decisions[0].0);
    assert!(
        decisions[1..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("endpoint_backing_off")
                && failing == &["rejection_backoff@default policy".to_string()])
    );

    // 3. Garbage that calls itself JSON after payment: three paid failures, then the endpoint
    // is paused for every session under the default policy.
    let (garbage, garbage_token) = open_session(&dev, &key, "served-garbage", "1.00");
    let url = format!("{}/garbage", seller.url);
    for attempt in 1..=3u64 {
        let (status, body) = agent_fetch(&dev, &garbage, &garbage_token, &url);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["validation"]["passed"], false, "{body}");
        assert!(
            body["validation"]["failure"]
                .as_str()
                .unwrap()
                .contains("not JSON"),
            "{body}"
        );
        assert_eq!(body["validation"]["consecutiveFailures"], attempt);
    }
    for _ in 0..2 {
        let (status, body) = agent_fetch(&dev, &garbage, &garbage_token, &url);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "endpoint_paused", "{body}");
    }
    // Another session (its own budget, no policy either) is covered by the same pause.
    let (other, other_token) = open_session(&dev, &key, "next-run", "1.00");
    let (status, body) = agent_fetch(&dev, &other, &other_token, &url);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("endpoint_paused")),
        "{body}"
    );
    assert_eq!(paid_to(seller.garbage), 3 * HOSTILE_PRICE);
    assert_eq!(transfers_of(&dev, &garbage, &garbage_token).len(), 3);
    let decisions = trace(&dev, &garbage);
    assert_eq!(decisions.iter().filter(|(allowed, ..)| *allowed).count(), 3);
    assert!(
        decisions[3..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("endpoint_paused")
                && failing == &["endpoint_pause@default policy".to_string()])
    );
    let (status, pauses) = runtime_call(&dev, reqwest::Method::GET, "/v1/pauses", &key, None);
    assert_eq!(status, 200);
    assert_eq!(pauses["pauses"][0]["policy"], "default policy", "{pauses}");

    // 4. One call priced 0.99 against a 1.00 budget: refused (a quarter of the budget at most),
    // nothing signed; `bursar pay --session` exits 3 with the code.
    let (premium, premium_token) = open_session(&dev, &key, "upsold", "1.00");
    let url = format!("{}/premium", seller.url);
    let output = dev.bursar(&["pay", &url, "--session", &premium_token]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_per_call_exceeded"), "{stderr}");
    assert_eq!(paid_to(seller.premium), 0);
    assert!(transfers_of(&dev, &premium, &premium_token).is_empty());
    let decisions = trace(&dev, &premium);
    assert_eq!(
        decisions,
        [(
            false,
            Some("max_per_call_exceeded".to_string()),
            vec!["max_per_call_percent@default policy".to_string()]
        )]
    );

    // What the buyer lost to all four: exactly what the sellers' addresses received.
    let taken = 10 * HOSTILE_PRICE + HOSTILE_PRICE + 3 * HOSTILE_PRICE;
    assert_eq!(buyer_start - dev.balance(&buyer), taken);
    let reconcile = dev.bursar(&["ledger", "reconcile"]);
    assert!(reconcile.status.success(), "{reconcile:?}");
}

/// `--no-default-policy` says loudly that sessions are unprotected, and then the call priced
/// just under the budget is paid; `--policy FILE` (the default written out by `bursar policy
/// init`, loosened) replaces the default.
#[test]
fn the_default_policy_is_replaced_or_switched_off_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    // `bursar policy init`: the commented default, never over an existing file without --force.
    let file = dir.path().join("policy.toml");
    let file_text = file.display().to_string();
    let init = |extra: &[&str]| {
        let mut args = vec!["policy", "init", file_text.as_str()];
        args.extend_from_slice(extra);
        Command::new(BURSAR).args(&args).output().unwrap()
    };
    let output = init(&[]);
    assert!(output.status.success(), "{output:?}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("max_per_call_percent = 25"), "{written}");
    assert!(written.lines().filter(|l| l.starts_with('#')).count() > 20);
    let output = init(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--force"),
        "{output:?}"
    );
    std::fs::write(
        &file,
        written.replace("max_per_call_percent = 25", "max_per_call_percent = 100"),
    )
    .unwrap();
    let printed = Command::new(BURSAR)
        .args(["policy", "init", "-"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), written);

    // Replaced by the loosened copy: the 0.99 call is paid; the copy's loop rule still holds.
    let replaced_dir = dir.path().join("replaced");
    let replaced_log = dir.path().join("replaced.log");
    let dev = Dev::spawn(
        &replaced_dir,
        &["--policy", &file_text],
        Some(("replaced-passphrase", replaced_log.as_path())),
    );
    let banner = std::fs::read_to_string(&replaced_log).unwrap();
    assert!(banner.contains("replaces the default policy"), "{banner}");
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let (session, token) = open_session(&dev, &key, "replaced", "1.00");
    let (status, body) = agent_fetch(&dev, &session, &token, &format!("{}/premium", seller.url));
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.balance(&seller.premium.to_string()), 990_000);
    let decisions = trace(&dev, &session);
    assert!(decisions[0].0);
    drop(dev);

    // Switched off: a loud warning, and nothing but the budget and pinned terms.
    let off_dir = dir.path().join("off");
    let off_log = dir.path().join("off.log");
    let dev = Dev::spawn(
        &off_dir,
        &["--no-default-policy"],
        Some(("off-passphrase", off_log.as_path())),
    );
    let banner = std::fs::read_to_string(&off_log).unwrap();
    assert!(
        banner.contains("WARNING: the default policy is switched off"),
        "{banner}"
    );
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let (session, token) = open_session(&dev, &key, "unprotected", "1.00");
    let (status, body) = agent_fetch(&dev, &session, &token, &format!("{}/premium", seller.url));
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.balance(&seller.premium.to_string()), 990_000);
    // Both flags at once is a usage error.
    let output = Command::new(BURSAR)
        .args(["dev", "--policy", &file_text, "--no-default-policy"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
