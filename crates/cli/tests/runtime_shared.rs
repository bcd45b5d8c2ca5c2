//! Two `bursar runtime` processes sharing one PostgreSQL database, paying a real seller
//! (`bursar demo-api` + `bursar facilitator`) on an anvil chain: 500 concurrent paid requests
//! over 50 sessions on one wallet, spread across both processes. No session exceeds its budget
//! by one atomic unit, and the chain's spend equals the ledger's posted total exactly.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit::TOKEN_NAME;
use bursar_chain::{Account, DevChain, EvmChain, Token};
use bursar_chain_rpc::AnvilInstance;
use serde_json::{Value, json};

const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const WEATHER_PRICE: u64 = 10_000;
const PASSPHRASE: &str = "shared database passphrase";

/// A child process, killed (by its PID) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut command = Command::new(BURSAR);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    Process(command.spawn().expect("spawn bursar"))
}

async fn wait_until_up(url: &str, process: &mut Process) {
    let started = Instant::now();
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("{url}: the process exited early with {status}");
        }
        if reqwest::get(url).await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "{url} did not come up within {STARTUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn funded(chain: &Arc<dyn DevChain>) -> PrivateKeySigner {
    let signer = PrivateKeySigner::random();
    chain
        .set_native_balance(signer.address(), U256::from(10u128.pow(21)))
        .await
        .unwrap();
    signer
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    credential: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(credential);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("runtime answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runtimes_sharing_postgres_never_overspend() {
    const SESSIONS: usize = 50;
    const REQUESTS_PER_SESSION: usize = 10;
    const PAYABLE_PER_SESSION: u64 = 7;

    let database = bursar_store::testkit::TempPostgres::create().await;
    let anvil = AnvilInstance::spawn().expect("anvil (tools/anvil, installed by scripts/test)");
    let rpc_url = anvil.url().to_string();
    let chain: Arc<dyn DevChain> = bursar_chain_rpc::RpcChain::connect(&rpc_url, None)
        .await
        .unwrap();
    let evm: Arc<dyn EvmChain> = chain.clone();
    let owner = Account::new(evm.clone(), funded(&chain).await);
    let token = Token::deploy(&owner, TOKEN_NAME, "USDC", owner.address())
        .await
        .unwrap();
    let facilitator_key = funded(&chain).await;
    let payee = PrivateKeySigner::random().address();

    let facilitator_url = format!("http://127.0.0.1:{}", free_port());
    let key_hex = alloy_primitives::hex::encode_prefixed(facilitator_key.to_bytes());
    let data_dir = tempfile::tempdir().unwrap();
    let data_dir_text = data_dir.path().display().to_string();
    // The seller's facilitator key, with room for this test's burst of settlements.
    let output = Command::new(BURSAR)
        .args([
            "keys", "create", "--seller", "demo", "--rps", "5000", "--burst", "5000",
        ])
        .args(["--data-dir", &data_dir_text])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let seller_key = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("key: ").map(str::to_string))
        .expect("the key is printed");
    let mut facilitator = spawn(
        &[
            "facilitator",
            "--listen",
            facilitator_url.trim_start_matches("http://"),
            "--rpc-url",
            &rpc_url,
            "--data-dir",
            &data_dir_text,
        ],
        &[("BURSAR_FACILITATOR_KEY", &key_hex)],
    );
    wait_until_up(&format!("{facilitator_url}/supported"), &mut facilitator).await;
    let seller_url = format!("http://127.0.0.1:{}", free_port());
    let chain_id = chain.chain_id().to_string();
    let token_text = token.address().to_string();
    let payee_text = payee.to_string();
    let mut seller = spawn(
        &[
            "demo-api",
            "--listen",
            seller_url.trim_start_matches("http://"),
            "--facilitator-url",
            &facilitator_url,
            "--chain-id",
            &chain_id,
            "--token",
            &token_text,
            "--token-name",
            TOKEN_NAME,
            "--pay-to",
            &payee_text,
        ],
        &[("BURSAR_FACILITATOR_API_KEY", &seller_key)],
    );
    wait_until_up(&format!("{seller_url}/"), &mut seller).await;

    let mut runtimes = Vec::new();
    let mut runtime_urls = Vec::new();
    for _ in 0..2 {
        let url = format!("http://127.0.0.1:{}", free_port());
        let process = spawn(
            &[
                "runtime",
                "--listen",
                url.trim_start_matches("http://"),
                "--rpc-url",
                &rpc_url,
                "--token",
                &token_text,
                "--database-url",
                database.url(),
                "--data-dir",
                &data_dir_text,
                "--light-kdf",
            ],
            &[("BURSAR_PASSPHRASE", PASSPHRASE)],
        );
        runtimes.push(process);
        runtime_urls.push(url);
    }
    for (url, process) in runtime_urls.iter().zip(runtimes.iter_mut()) {
        wait_until_up(&format!("{url}/health"), process).await;
    }
    let output = Command::new(BURSAR)
        .args([
            "operator-keys",
            "create",
            "--name",
            "test",
            "--database-url",
        ])
        .arg(database.url())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout
        .lines()
        .find_map(|line| line.strip_prefix("key: "))
        .expect("the key is printed")
        .to_string();

    let http = reqwest::Client::new();
    let (a, b) = (&runtime_urls[0], &runtime_urls[1]);
    let (status, wallet) = call(
        &http,
        reqwest::Method::POST,
        format!("{a}/v1/wallets"),
        &key,
        Some(json!({"name": "shared"})),
    )
    .await;
    assert_eq!(status, 201, "{wallet}");
    let wallet_address: Address = wallet["address"].as_str().unwrap().parse().unwrap();
    let start_balance = 100_000_000u64;
    token
        .mint(&owner, wallet_address, U256::from(start_balance))
        .await
        .unwrap();
    // The other process sees the same wallet (shared database).
    let (status, shown) = call(
        &http,
        reqwest::Method::GET,
        format!("{b}/v1/wallets/shared"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["balance"]["atomic"], start_balance.to_string());
    let (status, grant) = call(
        &http,
        reqwest::Method::POST,
        format!("{b}/v1/grants"),
        &key,
        Some(json!({"walletId": "shared", "agent": "swarm"})),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    let mut sessions = Vec::new();
    for index in 0..SESSIONS {
        let url = if index % 2 == 0 { a } else { b };
        let (status, session) = call(
            &http,
            reqwest::Method::POST,
            format!("{url}/v1/sessions"),
            &key,
            Some(json!({"grantId": grant["id"], "maxSpendAmount": "0.07", "currency": "USDC"})),
        )
        .await;
        assert_eq!(status, 201, "{session}");
        sessions.push((
            session["id"].as_str().unwrap().to_string(),
            session["token"].as_str().unwrap().to_string(),
        ));
    }

    let weather = format!("{seller_url}/weather");
    let mut tasks = Vec::new();
    for (session, token) in &sessions {
        for request in 0..REQUESTS_PER_SESSION {
            // Each session's requests go to both processes.
            let url = runtime_urls[request % 2].clone();
            let (http, session, token, weather) = (
                http.clone(),
                session.clone(),
                token.clone(),
                weather.clone(),
            );
            tasks.push(tokio::spawn(async move {
                call(
                    &http,
                    reqwest::Method::POST,
                    format!("{url}/v1/sessions/{session}/fetch"),
                    &token,
                    Some(json!({"url": weather})),
                )
                .await
            }));
        }
    }
    let (mut paid, mut denied) = (0, 0);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["status"], 200, "{body}");
                paid += 1;
            }
            403 => {
                assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
                denied += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(paid, SESSIONS * PAYABLE_PER_SESSION as usize);
    assert_eq!(denied, SESSIONS * REQUESTS_PER_SESSION - paid);

    // Every payment is seen settled (the resolvers of both processes post what is left).
    let started = Instant::now();
    let mut posted_total = 0u128;
    for (session, _) in &sessions {
        loop {
            let (status, record) = call(
                &http,
                reqwest::Method::GET,
                format!("{a}/v1/sessions/{session}"),
                &key,
                None,
            )
            .await;
            assert_eq!(status, 200);
            let posted: u128 = record["postedAtomic"].as_str().unwrap().parse().unwrap();
            let reserved: u128 = record["reservedAtomic"].as_str().unwrap().parse().unwrap();
            assert!(posted + reserved <= 70_000, "over budget: {record}");
            if reserved == 0 {
                assert_eq!(posted, u128::from(WEATHER_PRICE * PAYABLE_PER_SESSION));
                posted_total += posted;
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "payments still pending: {record}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let spent = U256::from(start_balance) - token.balance_of(wallet_address).await.unwrap();
    assert_eq!(spent, U256::from(posted_total));
    assert_eq!(
        token.balance_of(payee).await.unwrap(),
        U256::from(posted_total)
    );
    let (status, report) = call(
        &http,
        reqwest::Method::GET,
        format!("{b}/v1/ledger/reconcile"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["postedAtomic"], posted_total.to_string());
    assert_eq!(report["transfersChecked"], paid);
    drop(runtimes);
    drop(seller);
    drop(facilitator);
    drop(anvil);
}
