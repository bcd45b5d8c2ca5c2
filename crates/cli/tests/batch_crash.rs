//! `bursar facilitator --batch` killed with SIGKILL at random moments while it settles, then
//! restarted, repeatedly, against one anvil (the chain outlives every kill) and one settlement
//! ledger (SQLite, then PostgreSQL). After the last restart (whose recovery finishes what the kills left behind) every
//! authorization must be either confirmed exactly once, on chain and in the ledger, or unused on
//! chain and not confirmed in the ledger; payees hold exactly what the ledger says they were paid.

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
use bursar_store::{LedgerKey, SettlementState};
use serde_json::{Value, json};

const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const TRIALS: usize = 10;
const PAYMENTS_PER_TRIAL: usize = 60;
const PRICE: u64 = 1_000;
/// The kill lands this long after the trial's settlements start, chosen at random.
const KILL_AFTER_MS_MAX: u64 = 600;
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
        asset: token.to_checksum(None),
        pay_to: pay_to.to_checksum(None),
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
        payload: PaymentPayload::new_v2(requirements.clone(), None, exact.to_value()),
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

/// SQLite, then PostgreSQL: one after the other, so two anvils and two facilitators never share
/// the two cores (kills land at random moments either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_batch_submission_loses_and_doubles_nothing() {
    sigkill_trials(Db::Sqlite).await;
    sigkill_trials(Db::Postgres).await;
}

async fn sigkill_trials(db: Db) {
    eprintln!("--- settlement ledger on {db:?}");
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
    let settler = fixture
        .owner
        .deploy(bursar_facilitator::batch::batch_settler_creation_code())
        .await
        .expect("deploy the batch settler");

    // Three sender keys: one in the environment, two in a key file.
    let data_dir = tempfile::tempdir().unwrap();
    let keys: Vec<PrivateKeySigner> = (0..3).map(|_| PrivateKeySigner::random()).collect();
    for key in &keys {
        chain
            .set_native_balance(key.address(), U256::from(testkit::ONE_ETHER))
            .await
            .unwrap();
    }
    let hex = |key: &PrivateKeySigner| alloy_primitives::hex::encode_prefixed(key.to_bytes());
    let keys_file = data_dir.path().join("senders.keys");
    std::fs::write(
        &keys_file,
        format!("{}\n{}\n", hex(&keys[1]), hex(&keys[2])),
    )
    .unwrap();
    let args: Vec<String> = vec![
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
        "--asset".into(),
        token.to_string(),
    ];
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
    let mut args = args;
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
    for trial in 0..TRIALS {
        let mut facilitator = Facilitator::start(&rpc_url, &primary_key, data_dir.path(), &args);
        let now = chain
            .latest_block()
            .await
            .unwrap()
            .timestamp
            .max(testkit::now_seconds());
        let fresh: Vec<Arc<Payment>> = (0..PAYMENTS_PER_TRIAL)
            .map(|_| Arc::new(payment(chain_id, token, &fixture.payer, now)))
            .collect();
        payments.extend(fresh.iter().cloned());
        // Fresh payments, plus duplicates of earlier trials' payments.
        let mut calls = Vec::new();
        let earlier = payments.len() - fresh.len();
        let duplicates: Vec<Arc<Payment>> = (0..earlier.min(10))
            .map(|_| payments[random_below(earlier as u64) as usize].clone())
            .collect();
        for p in fresh.iter().chain(duplicates.iter()) {
            let (http, url, p, key) = (
                http.clone(),
                facilitator.url.clone(),
                p.clone(),
                api_key.clone(),
            );
            calls.push(tokio::spawn(async move {
                settle(&http, &url, &key, &p.body).await
            }));
        }
        let kill_after = Duration::from_millis(random_below(KILL_AFTER_MS_MAX + 1));
        tokio::time::sleep(kill_after).await;
        facilitator.kill();
        let mut answered = 0;
        for call in calls {
            if let Some(answer) = call.await.unwrap()
                && answer["success"] == true
            {
                answered += 1;
            }
        }
        eprintln!("trial {trial}: killed after {kill_after:?}, {answered} successes answered");
    }

    // The last restart recovers; then every payment whose row is confirmed or gone is posted
    // once more: confirmed ones must answer their recorded transaction, gone ones settle now.
    let ledger = bursar_store::open(&ledger_url).await.unwrap();
    let network = format!("eip155:{chain_id}");
    let key_of = |p: &Payment| {
        LedgerKey::new(
            &network,
            &token.to_string(),
            &p.exact.authorization.from.to_string(),
            &p.exact.authorization.nonce.to_string(),
        )
    };
    let mut facilitator = Facilitator::start(&rpc_url, &primary_key, data_dir.path(), &args);
    let mut retried = 0;
    for p in &payments {
        let row = ledger.get(&key_of(p)).await.unwrap();
        let recorded = match &row {
            None => None,
            Some(row) if row.state == SettlementState::Confirmed => row.tx_hash.clone(),
            Some(_) => continue,
        };
        let answer = settle(&http, &facilitator.url, &api_key, &p.body)
            .await
            .expect("the restarted facilitator answers");
        assert_eq!(answer["success"], true, "{answer}");
        if let Some(hash) = recorded {
            assert_eq!(answer["transaction"].as_str(), Some(hash.as_str()));
        } else {
            retried += 1;
        }
    }
    facilitator.kill();

    // Ledger == chain, payment by payment.
    let transfer_topic = keccak256("Transfer(address,address,uint256)");
    let (mut confirmed, mut unused_pending, mut paid_total) = (0u64, 0u64, U256::ZERO);
    for p in &payments {
        let used = fixture
            .token
            .authorization_state(fixture.payer.address(), p.exact.authorization.nonce)
            .await
            .unwrap();
        let balance = fixture.token.balance_of(p.pay_to).await.unwrap();
        paid_total += balance;
        let row = ledger.get(&key_of(p)).await.unwrap();
        let state = row.as_ref().map(|row| row.state);
        if used {
            let row = row.expect("a used authorization has a ledger row: none lost");
            assert_eq!(
                row.state,
                SettlementState::Confirmed,
                "a used authorization is confirmed in the ledger: {row:?}"
            );
            assert_eq!(balance, U256::from(PRICE), "paid exactly once");
            let hash: B256 = row.tx_hash.as_deref().unwrap().parse().unwrap();
            let receipt = evm.receipt(hash).await.unwrap().expect("mined");
            assert!(receipt.success);
            let pay_to_topic = B256::left_padding_from(p.pay_to.as_slice());
            assert!(
                receipt.logs.iter().any(|log| log.address == token
                    && log.topics.first() == Some(&transfer_topic)
                    && log.topics.get(2) == Some(&pay_to_topic)),
                "the recorded transaction is the one that paid {}",
                p.pay_to
            );
            confirmed += 1;
        } else {
            assert_eq!(balance, U256::ZERO);
            assert_ne!(
                state,
                Some(SettlementState::Confirmed),
                "confirmed but unused"
            );
            if state.is_some() {
                unused_pending += 1;
            }
        }
    }
    assert_eq!(paid_total, U256::from(PRICE * confirmed));
    assert_eq!(
        fixture
            .token
            .balance_of(fixture.payer.address())
            .await
            .unwrap(),
        U256::from(PRICE * (total - confirmed))
    );
    assert!(confirmed > 0);
    // Nothing was broadcast beyond the batches: every sender transaction is a mined batch.
    let mut sent = 0;
    for key in &keys {
        sent += chain.transaction_count(key.address()).await.unwrap();
    }
    assert!(
        sent <= confirmed,
        "{sent} transactions for {confirmed} settlements"
    );
    eprintln!(
        "{} payments: {confirmed} confirmed, {retried} settled after the last restart, \
         {unused_pending} unused and held (claimed or recorded but never broadcast), in {:?}",
        payments.len(),
        started.elapsed()
    );
}
