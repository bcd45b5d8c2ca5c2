//! `bursar facilitator` killed with SIGKILL at random moments while it settles, then restarted,
//! repeatedly, against one anvil (the chain outlives every kill) and one settlement ledger: one
//! transaction per settlement and batched, each on SQLite and on PostgreSQL.
//!
//! After the last restart every payment is presented once more, and every one must be answered
//! success at once: an authorization the chain shows used is answered with the transaction that
//! used it (the one the ledger records), and one a kill left unused was released by the restart's
//! recovery and settles now. Nothing is paid twice: each payee holds exactly its price, the payer
//! lost exactly the sum, and a success answered before a kill is never contradicted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit::{self, TOKEN_NAME};
use bursar_chain::{DevChain, EvmChain};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequirements, X402Version,
};
use bursar_store::{SettlementKey, SettlementState};
use serde_json::{Value, json};

const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const TRIALS: usize = 10;
const PAYMENTS_PER_TRIAL: usize = 60;
const PRICE: u64 = 1_000;
/// The kill lands this long after the trial's settlements start, chosen at random.
const KILL_AFTER_MS_MAX: u64 = 500;
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// A running `bursar facilitator`; SIGKILLed on drop if still running.
struct Facilitator {
    child: Child,
    url: String,
}

impl Facilitator {
    fn start(rpc_url: &str, key: &str, data_dir: &Path, args: &[String]) -> Facilitator {
        let mut child = Command::new(BURSAR)
            .args(["facilitator", "--listen", "127.0.0.1:0"])
            .args(["--no-metrics"])
            .args(["--rpc-url", rpc_url])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("BURSAR_FACILITATOR_KEY", key)
            .env_remove("BURSAR_LEDGER_URL")
            .env_remove("BURSAR_REDIS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bursar facilitator");
        let stdout = child.stdout.take().expect("stdout");
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("recovered settlement") {
                    let outcome = line.rsplit("): ").next().unwrap_or_default();
                    let word = outcome.split_whitespace().next().unwrap_or_default();
                    eprintln!("  recovery at start: {word}");
                }
                if let Some(rest) = line.strip_prefix("Bursar facilitator on ") {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = found.send(address.to_string());
                }
            }
        });
        let mut facilitator = Facilitator {
            child,
            url: String::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(address) = url.recv_timeout(Duration::from_millis(50)) {
                facilitator.url = address;
                return facilitator;
            }
            if let Some(status) = facilitator.child.try_wait().unwrap() {
                panic!("bursar facilitator exited early with {status}");
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "bursar facilitator did not start within {STARTUP_TIMEOUT:?}"
            );
        }
    }

    /// SIGKILL, by the handle of the process this test started.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Facilitator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A random number below `n` (std's per-hasher random keys; no RNG crate needed).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n
}

struct Payment {
    pay_to: Address,
    exact: ExactEvmPayload,
    body: Value,
}

fn payment(chain_id: u64, token: Address, payer: &PrivateKeySigner, now: u64) -> Payment {
    let pay_to = PrivateKeySigner::random().address();
    let requirements = PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(chain_id),
        amount: Amount::from(PRICE),
        asset: token.into(),
        pay_to: pay_to.into(),
        max_timeout_seconds: 900,
        extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
    };
    let authorization = exact_evm::authorization_for(&requirements, payer.address(), now).unwrap();
    let domain = exact_evm::token_domain(TOKEN_NAME, "2", chain_id, token);
    let exact = ExactEvmPayload {
        signature: exact_evm::sign_authorization(payer, &authorization, &domain).unwrap(),
        authorization,
    };
    let body = FacilitatorRequest {
        version: X402Version::V2,
        payload: PaymentPayload::new_v2(requirements.clone(), None, exact.clone()),
        requirements,
        resource: None,
    }
    .to_json_value();
    Payment {
        pay_to,
        exact,
        body,
    }
}

async fn settle(http: &reqwest::Client, url: &str, api_key: &str, body: &Value) -> Option<Value> {
    let response = http
        .post(format!("{url}/settle"))
        .bearer_auth(api_key)
        .json(body)
        .send()
        .await
        .ok()?;
    response.json::<Value>().await.ok()
}

/// The settlement ledger the facilitator keeps across kills.
#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// How the facilitator settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One transferWithAuthorization per settlement, from one sender (the default).
    Unbatched,
    /// BursarBatchSettler batches from three senders (`--batch`).
    Batched,
}

// One test per mode; each runs SQLite, then PostgreSQL, one after the other, so two anvils and
// two facilitators never share the two cores (kills land at random moments either way).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_settlement_loses_and_doubles_nothing() {
    sigkill_trials(Mode::Unbatched, Db::Sqlite).await;
    sigkill_trials(Mode::Unbatched, Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_batch_submission_loses_and_doubles_nothing() {
    sigkill_trials(Mode::Batched, Db::Sqlite).await;
    sigkill_trials(Mode::Batched, Db::Postgres).await;
}

async fn sigkill_trials(mode: Mode, db: Db) {
    eprintln!("--- {mode:?} settlement, ledger on {db:?}");
    let started = Instant::now();
    let anvil = bursar_chain_rpc::AnvilInstance::spawn().unwrap_or_else(|e| panic!("{e}"));
    let rpc_url = anvil.url().to_string();
    let chain: Arc<dyn DevChain> = anvil
        .into_chain()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}"));
    let evm: Arc<dyn EvmChain> = chain.clone();
    let total = (TRIALS * PAYMENTS_PER_TRIAL) as u64;
    let fixture = testkit::fixture(chain.clone(), PRICE * total).await;
    let token = fixture.token.address();

    // Batches go out from three sender keys (one in the environment, two in a key file); single
    // transactions from the first.
    let data_dir = tempfile::tempdir().unwrap();
    let keys: Vec<PrivateKeySigner> = (0..3).map(|_| PrivateKeySigner::random()).collect();
    for key in &keys {
        chain
            .set_native_balance(key.address(), U256::from(testkit::ONE_ETHER))
            .await
            .unwrap();
    }
    let hex = |key: &PrivateKeySigner| alloy_primitives::hex::encode_prefixed(key.to_bytes());
    let mut args: Vec<String> = vec!["--asset".into(), token.to_string()];
    if mode == Mode::Batched {
        let settler = fixture
            .owner
            .deploy(bursar_facilitator::batch::batch_settler_creation_code())
            .await
            .expect("deploy the batch settler");
        let keys_file = data_dir.path().join("senders.keys");
        std::fs::write(
            &keys_file,
            format!("{}\n{}\n", hex(&keys[1]), hex(&keys[2])),
        )
        .unwrap();
        args.extend([
            "--batch".into(),
            "--batch-contract".into(),
            settler.to_string(),
            "--batch-items-max".into(),
            "16".into(),
            "--batch-wait-ms".into(),
            "30".into(),
            "--senders".into(),
            "3".into(),
            "--sender-keys-file".into(),
            keys_file.display().to_string(),
        ]);
    }
    let primary_key = hex(&keys[0]);

    let (ledger_url, _postgres) = match db {
        Db::Sqlite => (
            bursar_store::sqlite_file_url(&data_dir.path().join("facilitator.sqlite")),
            None,
        ),
        Db::Postgres => {
            let database = bursar_store::testkit::TempPostgres::create().await;
            (database.url().to_string(), Some(database))
        }
    };
    args.extend(["--ledger-url".to_string(), ledger_url.clone()]);
    let key_store = bursar_store::open_key_store(&ledger_url).await.unwrap();
    let api_key = key_store
        .create(
            "crash-test",
            bursar_store::KeyLimits {
                requests_per_second: 100_000,
                burst: 100_000,
                daily_settlements_max: None,
            },
        )
        .await
        .unwrap();
    let api_key = api_key.key.clone();
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap();
    let chain_id = chain.chain_id();
    let mut payments: Vec<Arc<Payment>> = Vec::new();
    // Every success answered before a kill, by payment.
    let mut answered: Vec<Option<String>> = Vec::new();
    for trial in 0..TRIALS {
        let mut facilitator = Facilitator::start(&rpc_url, &primary_key, data_dir.path(), &args);
        let now = chain
            .latest_block()
            .await
            .unwrap()
            .timestamp
            .max(testkit::now_seconds());
        let first_fresh = payments.len();
        payments.extend(
            (0..PAYMENTS_PER_TRIAL)
                .map(|_| Arc::new(payment(chain_id, token, &fixture.payer, now))),
        );
        answered.resize(payments.len(), None);
        // Fresh payments, plus duplicates of earlier trials' payments.
        let mut chosen: Vec<usize> = (first_fresh..payments.len()).collect();
        chosen.extend((0..first_fresh.min(10)).map(|_| random_below(first_fresh as u64) as usize));
        let mut calls = Vec::new();
        for index in chosen {
            let (http, url, p, key) = (
                http.clone(),
                facilitator.url.clone(),
                payments[index].clone(),
                api_key.clone(),
            );
            calls.push(tokio::spawn(async move {
                (index, settle(&http, &url, &key, &p.body).await)
            }));
        }
        let kill_after = Duration::from_millis(random_below(KILL_AFTER_MS_MAX + 1));
        tokio::time::sleep(kill_after).await;
        facilitator.kill();
        let mut successes = 0;
        for call in calls {
            let (index, answer) = call.await.unwrap();
            if let Some(answer) = answer
                && answer["success"] == true
            {
                let hash = answer["transaction"].as_str().unwrap().to_string();
                if let Some(earlier) = &answered[index] {
                    assert_eq!(earlier, &hash, "one payment, two transactions answered");
                }
                answered[index] = Some(hash);
                successes += 1;
            }
        }
        eprintln!("trial {trial}: killed after {kill_after:?}, {successes} successes answered");
    }

    // The last restart recovers; then every payment is presented once more and must settle (or
    // answer its transaction) at once.
    let ledger = bursar_store::open(&ledger_url).await.unwrap();
    let key_of = |p: &Payment| {
        SettlementKey::new(
            Network::Eip155(chain_id),
            token,
            p.exact.authorization.from,
            p.exact.authorization.nonce,
        )
    };
    let mut used_before = Vec::with_capacity(payments.len());
    for p in &payments {
        used_before.push(
            fixture
                .token
                .authorization_state(fixture.payer.address(), p.exact.authorization.nonce)
                .await
                .unwrap(),
        );
    }
    let mut facilitator = Facilitator::start(&rpc_url, &primary_key, data_dir.path(), &args);
    let mut retried = 0;
    let mut final_answers = Vec::with_capacity(payments.len());
    for (index, p) in payments.iter().enumerate() {
        let answer = settle(&http, &facilitator.url, &api_key, &p.body)
            .await
            .expect("the restarted facilitator answers");
        assert_eq!(
            answer["success"], true,
            "after the restart every payment settles at once (used before: {}): {answer}",
            used_before[index]
        );
        let hash = answer["transaction"].as_str().unwrap().to_string();
        if let Some(earlier) = &answered[index] {
            assert_eq!(earlier, &hash, "a success answered before a kill is kept");
        }
        if !used_before[index] {
            retried += 1;
        }
        final_answers.push(hash);
    }
    facilitator.kill();

    // Ledger == chain == answers, payment by payment.
    let transfer_topic = keccak256("Transfer(address,address,uint256)");
    for (p, answer) in payments.iter().zip(&final_answers) {
        assert!(
            fixture
                .token
                .authorization_state(fixture.payer.address(), p.exact.authorization.nonce)
                .await
                .unwrap(),
            "every authorization is used"
        );
        assert_eq!(
            fixture.token.balance_of(p.pay_to).await.unwrap(),
            U256::from(PRICE),
            "paid exactly once"
        );
        let row = ledger
            .get(&key_of(p))
            .await
            .unwrap()
            .expect("a used authorization has a ledger row: none lost");
        assert_eq!(row.state, SettlementState::Confirmed, "{row:?}");
        assert_eq!(row.tx_hash, Some(answer.parse().unwrap()));
        let hash: B256 = answer.parse().unwrap();
        let receipt = evm.receipt(hash).await.unwrap().expect("mined");
        assert!(receipt.success);
        let pay_to_topic = B256::left_padding_from(p.pay_to.as_slice());
        assert!(
            receipt.logs.iter().any(|log| log.address == token
                && log.topics.first() == Some(&transfer_topic)
                && log.topics.get(2) == Some(&pay_to_topic)),
            "the answered transaction is the one that paid {}",
            p.pay_to
        );
    }
    assert_eq!(
        fixture
            .token
            .balance_of(fixture.payer.address())
            .await
            .unwrap(),
        U256::ZERO,
        "the payer paid every payment once"
    );
    let mut sent = 0;
    for key in &keys {
        sent += chain.transaction_count(key.address()).await.unwrap();
    }
    match mode {
        // Every transaction sent settled exactly one authorization: none was sent twice.
        Mode::Unbatched => assert_eq!(sent, total, "{sent} transactions for {total} payments"),
        Mode::Batched => assert!(sent <= total, "{sent} transactions for {total} payments"),
    }
    eprintln!(
        "{total} payments settled exactly once in {sent} transactions; {retried} were unused \
         after the kills and settled on the retry after the last restart; {:?}",
        started.elapsed()
    );
}
