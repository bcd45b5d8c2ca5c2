//! `bursar runtime` processes sharing one PostgreSQL database, paying a real seller
//! (`bursar demo-api` + `bursar facilitator`) on an anvil chain:
//! - 500 concurrent paid requests over 50 sessions on one wallet, spread across two processes:
//!   no session exceeds its budget by one atomic unit, and the chain's spend equals the ledger's
//!   posted total exactly;
//! - one process SIGKILLed in the middle of paying, three times, and restarted: no reservation
//!   is lost, nothing is paid twice, and `bursar ledger reconcile` finds no difference.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit::TOKEN_NAME;
use bursar_chain::{Account, DevChain, EvmChain, Token};
use bursar_chain_rpc::AnvilInstance;
use bursar_protocol::Amount;
use bursar_store::runtime::{EntryKind, TransferRecord, TransferState};
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

/// A seller (`bursar demo-api` + `bursar facilitator`) on a fresh anvil chain with Bursar's
/// token, an empty PostgreSQL database for the runtimes, and an operator key for it.
/// Processes are declared first so they are stopped before the chain and the database go.
struct Stack {
    _facilitator: Process,
    _seller: Process,
    seller_url: String,
    rpc_url: String,
    token: Token,
    owner: Account,
    payee: Address,
    operator_key: String,
    data_dir: tempfile::TempDir,
    chain: Arc<dyn DevChain>,
    _anvil: AnvilInstance,
    database: bursar_store::testkit::TempPostgres,
}

impl Stack {
    async fn start() -> Stack {
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
        // The seller's facilitator key, with room for a burst of settlements.
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
        let operator_key = stdout
            .lines()
            .find_map(|line| line.strip_prefix("key: "))
            .expect("the key is printed")
            .to_string();
        Stack {
            _facilitator: facilitator,
            _seller: seller,
            seller_url,
            rpc_url,
            token,
            owner,
            payee,
            operator_key,
            data_dir,
            chain,
            _anvil: anvil,
            database,
        }
    }

    /// A `bursar runtime` process on the shared database, listening on `url`, up and answering.
    async fn runtime(&self, url: &str) -> Process {
        let data_dir = self.data_dir.path().display().to_string();
        let token = self.token.address().to_string();
        let mut process = spawn(
            &[
                "runtime",
                "--listen",
                url.trim_start_matches("http://"),
                "--rpc-url",
                &self.rpc_url,
                "--token",
                &token,
                "--database-url",
                self.database.url(),
                "--data-dir",
                &data_dir,
                "--light-kdf",
                // The seller runs on loopback.
                "--egress-allow",
                "127.0.0.0/8",
                "--resolve-interval-ms",
                "200",
            ],
            &[("BURSAR_PASSPHRASE", PASSPHRASE)],
        );
        wait_until_up(&format!("{url}/health"), &mut process).await;
        process
    }

    /// Creates wallet `name` through the runtime at `url` and mints `atomic` units to it.
    async fn funded_wallet(
        &self,
        http: &reqwest::Client,
        url: &str,
        name: &str,
        atomic: u64,
    ) -> Address {
        let (status, wallet) = call(
            http,
            reqwest::Method::POST,
            format!("{url}/v1/wallets"),
            &self.operator_key,
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(status, 201, "{wallet}");
        let address: Address = wallet["address"].as_str().unwrap().parse().unwrap();
        self.token
            .mint(&self.owner, address, U256::from(atomic))
            .await
            .unwrap();
        address
    }

    /// A grant on `wallet` for `agent`, created through the runtime at `url`.
    async fn grant(&self, http: &reqwest::Client, url: &str, wallet: &str, agent: &str) -> Value {
        let (status, grant) = call(
            http,
            reqwest::Method::POST,
            format!("{url}/v1/grants"),
            &self.operator_key,
            Some(json!({"walletId": wallet, "agent": agent})),
        )
        .await;
        assert_eq!(status, 201, "{grant}");
        grant
    }

    /// What left `wallet` since it held `start` units.
    async fn spent(&self, wallet: Address, start: u64) -> Amount {
        let balance = self.token.balance_of(wallet).await.unwrap();
        Amount::from_atomic(U256::from(start) - balance)
    }

    /// Opens `count` sessions of `max_spend` each under `grant` (alternating over `urls`).
    async fn sessions(
        &self,
        http: &reqwest::Client,
        urls: &[&String],
        grant: &Value,
        count: usize,
        max_spend: &str,
    ) -> Vec<(String, String)> {
        let mut sessions = Vec::new();
        for index in 0..count {
            let url = urls[index % urls.len()];
            let (status, session) = call(
                http,
                reqwest::Method::POST,
                format!("{url}/v1/sessions"),
                &self.operator_key,
                Some(json!({"grantId": grant["id"], "maxSpendAmount": max_spend, "currency": "USDC"})),
            )
            .await;
            assert_eq!(status, 201, "{session}");
            sessions.push((
                session["id"].as_str().unwrap().to_string(),
                session["token"].as_str().unwrap().to_string(),
            ));
        }
        sessions
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runtimes_sharing_postgres_never_overspend() {
    const SESSIONS: usize = 50;
    const REQUESTS_PER_SESSION: usize = 10;
    const PAYABLE_PER_SESSION: u64 = 7;

    let stack = Stack::start().await;
    let runtime_urls: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let mut runtimes = Vec::new();
    for url in &runtime_urls {
        runtimes.push(stack.runtime(url).await);
    }
    let key = stack.operator_key.clone();
    let http = reqwest::Client::new();
    let (a, b) = (&runtime_urls[0], &runtime_urls[1]);
    let start_balance = 100_000_000u64;
    let wallet_address = stack.funded_wallet(&http, a, "shared", start_balance).await;
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
    let grant = stack.grant(&http, b, "shared", "swarm").await;
    let sessions = stack
        .sessions(&http, &[a, b], &grant, SESSIONS, "0.07")
        .await;

    let weather = format!("{}/weather", stack.seller_url);
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
    assert_eq!(
        stack.spent(wallet_address, start_balance).await,
        Amount::from_u128(posted_total)
    );
    assert_eq!(
        stack.token.balance_of(stack.payee).await.unwrap(),
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
}

fn total<'a>(transfers: impl Iterator<Item = &'a TransferRecord>) -> Amount {
    transfers.fold(Amount::ZERO, |sum, t| sum.checked_add(t.amount).unwrap())
}

/// A `bursar runtime` on PostgreSQL SIGKILLed in the middle of concurrent payments, three
/// times, then restarted, while a second runtime on the same database keeps running. After each
/// restart: no session is over budget, and every token that left the wallet is covered by a
/// transfer in the ledger (posted or still reserved). Once the chain passes every authorization's
/// `validBefore`, nothing is left pending: the chain's spend equals the posted total exactly,
/// each transfer has one reservation and one post or void, and `bursar ledger reconcile` finds
/// no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_killed_mid_payment_on_postgres_loses_nothing() {
    const TRIALS: usize = 3;
    const REQUESTS_PER_TRIAL: usize = 30;
    const SESSIONS: usize = 20;
    const PAYABLE_PER_SESSION: u64 = 5;

    let stack = Stack::start().await;
    let store = bursar_store::runtime::open_runtime_store(stack.database.url())
        .await
        .unwrap();
    let (a, b) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let mut killed = stack.runtime(&a).await;
    let _witness = stack.runtime(&b).await;
    let http = reqwest::Client::new();
    let key = stack.operator_key.clone();
    let start_balance = 100_000_000u64;
    let wallet = stack.funded_wallet(&http, &a, "w", start_balance).await;
    let grant = stack.grant(&http, &b, "w", "crawler").await;
    let sessions = stack
        .sessions(&http, &[&a, &b], &grant, SESSIONS, "0.05")
        .await;
    let weather = format!("{}/weather", stack.seller_url);

    let reservations = || async { store.transfers(None).await.unwrap().len() };
    let mut pending_at_kill = 0;
    for trial in 0..TRIALS {
        let before = reservations().await;
        let tasks: Vec<_> = (0..REQUESTS_PER_TRIAL)
            .map(|request| {
                let (session, token) =
                    sessions[(trial * REQUESTS_PER_TRIAL + request) % SESSIONS].clone();
                let (http, url, weather) = (http.clone(), a.clone(), weather.clone());
                tokio::spawn(async move {
                    http.post(format!("{url}/v1/sessions/{session}/fetch"))
                        .bearer_auth(token)
                        .json(&json!({"url": weather}))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .map(|response| response.status().as_u16())
                })
            })
            .collect();
        // Kill once a few of this trial's reservations are in the database (a different number
        // each trial), while the rest of its requests are in flight.
        let started = Instant::now();
        while reservations().await < before + 1 + trial * 9 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no reservations appeared"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        killed.0.kill().unwrap();
        killed.0.wait().unwrap();
        pending_at_kill += store
            .transfers(None)
            .await
            .unwrap()
            .iter()
            .filter(|t| t.state == TransferState::Pending)
            .count();
        let mut answered = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(200 | 403) => answered += 1,
                Ok(other) => panic!("unexpected status {other}"),
                Err(_) => {} // cut off by the kill
            }
        }
        eprintln!(
            "trial {trial}: killed after {} reservations, {answered}/{REQUESTS_PER_TRIAL} answered",
            reservations().await - before
        );

        killed = stack.runtime(&a).await;
        // At every moment: within budget, and every token that left is in the ledger.
        let transfers = store.transfers(None).await.unwrap();
        let sum = |state: TransferState| total(transfers.iter().filter(|t| t.state == state));
        let spent = stack.spent(wallet, start_balance).await;
        let (posted, pending) = (sum(TransferState::Posted), sum(TransferState::Pending));
        assert!(
            posted <= spent,
            "posted more than was spent: {posted} > {spent}"
        );
        assert!(
            spent <= posted.checked_add(pending).unwrap(),
            "tokens left the wallet without a transfer in the ledger: spent {spent}, posted {posted}, pending {pending}"
        );
        for (session, _) in &sessions {
            let record = store.session(session).await.unwrap().unwrap();
            assert!(
                record.posted.checked_add(record.reserved).unwrap() <= record.max_spend,
                "over budget: {record:?}"
            );
        }
    }
    assert!(
        pending_at_kill > 0,
        "no kill landed in the middle of a payment"
    );

    // The restarted process pays as before.
    let (status, paid) = call(
        &http,
        reqwest::Method::POST,
        format!("{a}/v1/sessions/{}/fetch", sessions[0].0),
        &sessions[0].1,
        Some(json!({"url": weather})),
    )
    .await;
    assert!(
        status == 200 && paid["payment"]["state"] == "posted"
            || status == 403 && paid["error"]["code"] == "budget_exhausted",
        "{status}: {paid}"
    );

    // Past every validBefore, the resolvers of both processes settle the books.
    stack.chain.increase_time(3_600).await.unwrap();
    let started = Instant::now();
    let transfers = loop {
        let transfers = store.transfers(None).await.unwrap();
        if transfers.iter().all(|t| t.state != TransferState::Pending) {
            break transfers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "transfers still pending a minute after they expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let posted: Vec<_> = transfers
        .iter()
        .filter(|t| t.state == TransferState::Posted)
        .collect();
    let posted_total = total(posted.iter().copied());
    assert_eq!(
        stack.spent(wallet, start_balance).await,
        posted_total,
        "nothing paid twice, nothing unrecorded"
    );
    assert_eq!(
        Amount::from_atomic(stack.token.balance_of(stack.payee).await.unwrap()),
        posted_total
    );
    assert!(posted.len() as u64 <= SESSIONS as u64 * PAYABLE_PER_SESSION);
    let entries = store.entries(0, 10_000).await.unwrap();
    for transfer in &transfers {
        let kinds: Vec<EntryKind> = entries
            .iter()
            .filter(|e| e.transfer_id.as_deref() == Some(transfer.id.as_str()))
            .map(|e| e.kind)
            .collect();
        let closing = if transfer.state == TransferState::Posted {
            EntryKind::Post
        } else {
            EntryKind::Void
        };
        assert_eq!(kinds, [EntryKind::Reserve, closing], "{transfer:?}");
    }
    for (session, _) in &sessions {
        let record = store.session(session).await.unwrap().unwrap();
        assert_eq!(record.reserved, Amount::ZERO, "{record:?}");
        assert!(record.posted <= record.max_spend, "{record:?}");
    }
    eprintln!(
        "{} transfers: {} posted, {} voided; {pending_at_kill} pending at the kills",
        transfers.len(),
        posted.len(),
        transfers.len() - posted.len()
    );

    let output = Command::new(BURSAR)
        .args([
            "ledger",
            "reconcile",
            "--runtime-url",
            &a,
            "--operator-key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "reconcile: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("no differences"));
}
