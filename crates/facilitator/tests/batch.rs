//! Batched settlement on both chain backends (embedded, anvil) and both ledgers (SQLite,
//! PostgreSQL): many distinct payments, identical concurrent settles, per-item failure isolation,
//! the payment-identifier extension, and recovery of a batch left `submitted`.
//!
//! Every case checks the chain (balances, authorization state, receipts) and the ledger rows, not
//! just the answers. PostgreSQL must be running on 127.0.0.1:5432: its cases fail otherwise.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit::{self, Fixture, TOKEN_NAME, TokenKind};
use bursar_chain::{Account, DevChain, EvmChain, TxRequest};
use bursar_contracts::{BatchItem, ItemOutcome, LogRef, batch_outcomes, batch_settle_call};
use bursar_facilitator::{
    BatchConfig, FacilitatorConfig, LocalFacilitator, PAYMENT_ID_CONFLICT, RecoveryOutcome, router,
};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequirements, Reason,
    SettleResponse, X402Version,
};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{Claimant, SettlementKey, SettlementLedger, SettlementState, Submission};
use futures::StreamExt;
use serde_json::{Value, json};

const PRICE: u64 = 1_000;
const PAYMENTS: usize = 1_000;
const CONCURRENCY: usize = 128;
const SENDERS: usize = 3;

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Anvil,
}

#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// Keeps the chain process and the database alive for the test.
struct Env {
    chain: Arc<dyn DevChain>,
    ledger: Arc<dyn SettlementLedger>,
    _sqlite: Option<TempSqlite>,
    _postgres: Option<TempPostgres>,
}

async fn env(backend: Backend, db: Db) -> Env {
    let chain: Arc<dyn DevChain> = match backend {
        Backend::Embedded => bursar_chain_revm::EmbeddedChain::memory(),
        Backend::Anvil => bursar_chain_rpc::AnvilInstance::spawn()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_chain()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}")),
    };
    let (ledger, sqlite, postgres) = match db {
        Db::Sqlite => {
            let file = TempSqlite::new();
            let ledger = bursar_store::open(&file.url()).await.unwrap();
            (ledger, Some(file), None)
        }
        Db::Postgres => {
            let database = TempPostgres::create().await;
            let ledger = bursar_store::open(database.url()).await.unwrap();
            (ledger, None, Some(database))
        }
    };
    Env {
        chain,
        ledger,
        _sqlite: sqlite,
        _postgres: postgres,
    }
}

struct Setup {
    fixture: Fixture,
    settler: Address,
    senders: Vec<Address>,
}

async fn setup(chain: &Arc<dyn DevChain>, payer_balance: u64) -> (Setup, Vec<Account>) {
    setup_with(chain, payer_balance, TokenKind::BursarUsd).await
}

async fn setup_with(
    chain: &Arc<dyn DevChain>,
    payer_balance: u64,
    kind: TokenKind,
) -> (Setup, Vec<Account>) {
    let fixture = testkit::fixture_with(chain.clone(), payer_balance, kind).await;
    let settler = fixture
        .owner
        .deploy(bursar_contracts::batch_settler_creation_code())
        .await
        .expect("deploy the batch settler");
    let mut accounts = Vec::new();
    for _ in 0..SENDERS {
        accounts.push(testkit::funded_account(chain).await);
    }
    let senders = accounts.iter().map(Account::address).collect();
    (
        Setup {
            fixture,
            settler,
            senders,
        },
        accounts,
    )
}

fn batching(settler: Address) -> FacilitatorConfig {
    FacilitatorConfig {
        batch: Some(BatchConfig {
            settler,
            items_max: 100,
            wait_max: Duration::from_millis(20),
            simulate_items: false,
        }),
        ..Default::default()
    }
}

fn requirements(setup: &Setup, pay_to: Address) -> PaymentRequirements {
    PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(setup.fixture.chain.chain_id()),
        amount: Amount::from(PRICE),
        asset: setup.fixture.token.address().into(),
        pay_to: pay_to.into(),
        max_timeout_seconds: 600,
        extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
    }
}

async fn chain_now(chain: &Arc<dyn DevChain>) -> u64 {
    chain
        .latest_block()
        .await
        .unwrap()
        .timestamp
        .max(testkit::now_seconds())
}

fn signed(
    setup: &Setup,
    requirements: &PaymentRequirements,
    payer: &PrivateKeySigner,
    now: u64,
) -> ExactEvmPayload {
    let authorization = exact_evm::authorization_for(requirements, payer.address(), now).unwrap();
    let domain = exact_evm::token_domain(
        TOKEN_NAME,
        "2",
        setup.fixture.chain.chain_id(),
        setup.fixture.token.address(),
    );
    ExactEvmPayload {
        signature: exact_evm::sign_authorization(payer, &authorization, &domain).unwrap(),
        authorization,
    }
}

fn request(
    requirements: &PaymentRequirements,
    exact: &ExactEvmPayload,
    extensions: Option<Value>,
) -> FacilitatorRequest {
    let mut payload = PaymentPayload::new_v2(requirements.clone(), None, exact.clone());
    payload.extensions = extensions;
    FacilitatorRequest {
        version: X402Version::V2,
        payload,
        requirements: requirements.clone(),
        resource: None,
    }
}

fn ledger_key(setup: &Setup, exact: &ExactEvmPayload) -> SettlementKey {
    SettlementKey::new(
        Network::Eip155(setup.fixture.chain.chain_id()),
        setup.fixture.token.address(),
        exact.authorization.from,
        exact.authorization.nonce,
    )
}

async fn total_nonces(chain: &Arc<dyn DevChain>, senders: &[Address]) -> u64 {
    let mut total = 0;
    for sender in senders {
        total += chain.transaction_count(*sender).await.unwrap();
    }
    total
}

// ---------------------------------------------------------------------------------------------
// 1,000 distinct payments

async fn thousand_distinct_payments(backend: Backend, db: Db) {
    let started = Instant::now();
    let env = env(backend, db).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup(&chain, PRICE * PAYMENTS as u64).await;
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        accounts,
        batching(setup.settler),
        env.ledger.clone(),
    );
    let nonces_before = total_nonces(&chain, &setup.senders).await;
    let now = chain_now(&chain).await;
    let payer = setup.fixture.payer.clone();
    let payments: Vec<(Address, FacilitatorRequest, ExactEvmPayload)> = (0..PAYMENTS)
        .map(|_| {
            let pay_to = PrivateKeySigner::random().address();
            let requirements = requirements(&setup, pay_to);
            let exact = signed(&setup, &requirements, &payer, now);
            (pay_to, request(&requirements, &exact, None), exact)
        })
        .collect();

    let outcomes: Vec<SettleResponse> = futures::stream::iter(payments.iter().map(|(_, r, _)| {
        let facilitator = facilitator.clone();
        let r = r.clone();
        async move { facilitator.settle(&r).await }
    }))
    .buffered(CONCURRENCY)
    .collect()
    .await;

    let mut transactions = BTreeSet::new();
    for ((pay_to, _, exact), outcome) in payments.iter().zip(&outcomes) {
        assert!(outcome.success, "{outcome:?}");
        transactions.insert(outcome.transaction.clone());
        // Each payee credited exactly once.
        assert_eq!(
            setup.fixture.token.balance_of(*pay_to).await.unwrap(),
            U256::from(PRICE)
        );
        // Ledger == chain: confirmed with the transaction the caller got, authorization used.
        let row = env
            .ledger
            .get(&ledger_key(&setup, exact))
            .await
            .unwrap()
            .expect("a ledger row per payment");
        assert_eq!(row.state, SettlementState::Confirmed);
        assert_eq!(row.tx_hash, Some(outcome.transaction.evm().unwrap()));
        assert!(
            setup
                .fixture
                .token
                .authorization_state(payer.address(), exact.authorization.nonce)
                .await
                .unwrap()
        );
    }
    // Every transaction mined successfully, and they were real batches.
    for hash in &transactions {
        let receipt = chain
            .receipt(hash.evm().unwrap())
            .await
            .unwrap()
            .expect("mined");
        assert!(receipt.success);
    }
    assert_eq!(
        setup
            .fixture
            .token
            .balance_of(payer.address())
            .await
            .unwrap(),
        U256::ZERO,
        "the payer paid for exactly {PAYMENTS} payments"
    );
    let sent = total_nonces(&chain, &setup.senders).await - nonces_before;
    assert_eq!(sent as usize, transactions.len(), "no extra transaction");
    assert!(
        transactions.len() <= PAYMENTS / 4,
        "{} transactions for {PAYMENTS} payments: not batched",
        transactions.len()
    );
    assert!(env.ledger.unfinished().await.unwrap().is_empty());
    eprintln!(
        "{PAYMENTS} payments in {} batches in {:?}",
        transactions.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_embedded_sqlite() {
    thousand_distinct_payments(Backend::Embedded, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_embedded_postgres() {
    thousand_distinct_payments(Backend::Embedded, Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_anvil_sqlite() {
    thousand_distinct_payments(Backend::Anvil, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_anvil_postgres() {
    thousand_distinct_payments(Backend::Anvil, Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// A token with only EIP-3009's own (v, r, s) functions, batched

/// Against a token without the `bytes signature` overload, the batch settler calls EIP-3009's
/// `transferWithAuthorization(..., v, r, s)`: every payment (half of them signed with a 0/1
/// recovery byte) settles in a BursarBatchSettler transaction, each payee gets exactly the price.
async fn eip3009_only_token_settles_in_batches(backend: Backend) {
    const COUNT: usize = 24;
    let env = env(backend, Db::Sqlite).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup_with(&chain, PRICE * COUNT as u64, TokenKind::Eip3009Only).await;
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        accounts,
        batching(setup.settler),
        env.ledger.clone(),
    );
    let now = chain_now(&chain).await;
    let payer = setup.fixture.payer.clone();
    let payments: Vec<(Address, FacilitatorRequest, ExactEvmPayload)> = (0..COUNT)
        .map(|index| {
            let pay_to = PrivateKeySigner::random().address();
            let requirements = requirements(&setup, pay_to);
            let mut exact = signed(&setup, &requirements, &payer, now);
            if index % 2 == 1 {
                let mut signature = exact.signature.to_vec();
                signature[64] -= 27;
                exact.signature = signature.into();
            }
            (pay_to, request(&requirements, &exact, None), exact)
        })
        .collect();
    let verified = facilitator.verify(&payments[0].1).await;
    assert!(verified.is_valid, "{verified:?}");

    let outcomes: Vec<SettleResponse> = futures::stream::iter(payments.iter().map(|(_, r, _)| {
        let facilitator = facilitator.clone();
        let r = r.clone();
        async move { facilitator.settle(&r).await }
    }))
    .buffered(COUNT)
    .collect()
    .await;
    let mut transactions = BTreeSet::new();
    for ((pay_to, _, exact), outcome) in payments.iter().zip(&outcomes) {
        assert!(outcome.success, "{outcome:?}");
        transactions.insert(outcome.transaction.clone());
        assert_eq!(
            setup.fixture.token.balance_of(*pay_to).await.unwrap(),
            U256::from(PRICE)
        );
        let row = env
            .ledger
            .get(&ledger_key(&setup, exact))
            .await
            .unwrap()
            .expect("a ledger row per payment");
        assert_eq!(row.state, SettlementState::Confirmed);
    }
    let mut gas_used = 0;
    for hash in &transactions {
        let receipt = chain
            .receipt(hash.evm().unwrap())
            .await
            .unwrap()
            .expect("mined");
        assert!(receipt.success);
        gas_used += receipt.gas_used;
        assert!(
            receipt.logs.iter().any(|log| log.address == setup.settler),
            "{hash} went through the batch settler"
        );
    }
    assert_eq!(
        setup
            .fixture
            .token
            .balance_of(payer.address())
            .await
            .unwrap(),
        U256::ZERO,
        "the payer paid for exactly {COUNT} payments"
    );
    eprintln!(
        "{COUNT} payments in {} batches, {} gas per payment",
        transactions.len(),
        gas_used / COUNT as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip3009_only_token_batched_embedded() {
    eip3009_only_token_settles_in_batches(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip3009_only_token_batched_anvil() {
    eip3009_only_token_settles_in_batches(Backend::Anvil).await;
}

// ---------------------------------------------------------------------------------------------
// 100 identical concurrent /settle calls over HTTP

async fn serve(facilitator: LocalFacilitator) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(facilitator);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, server)
}

async fn identical_concurrent_settles(backend: Backend, db: Db) {
    const CALLERS: usize = 100;
    let env = env(backend, db).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup(&chain, PRICE * 10).await;
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        accounts,
        batching(setup.settler),
        env.ledger.clone(),
    );
    let (url, server) = serve(facilitator).await;
    let pay_to = PrivateKeySigner::random().address();
    let requirements = requirements(&setup, pay_to);
    let exact = signed(
        &setup,
        &requirements,
        &setup.fixture.payer,
        chain_now(&chain).await,
    );
    let body = Arc::new(request(&requirements, &exact, None).to_json_value());
    let nonces_before = total_nonces(&chain, &setup.senders).await;
    let http = reqwest::Client::new();
    let calls: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let response = http
                    .post(format!("{url}/settle"))
                    .json(&*body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut hashes = BTreeSet::new();
    for call in calls {
        let (status, answer) = call.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["success"], true, "{answer}");
        hashes.insert(answer["transaction"].as_str().unwrap().to_string());
    }
    assert_eq!(hashes.len(), 1, "every caller gets the same transaction");
    assert_eq!(
        total_nonces(&chain, &setup.senders).await,
        nonces_before + 1,
        "one batch transaction in all"
    );
    assert_eq!(
        setup.fixture.token.balance_of(pay_to).await.unwrap(),
        U256::from(PRICE)
    );
    let row = env
        .ledger
        .get(&ledger_key(&setup, &exact))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(
        row.tx_hash.map(|hash| hash.to_string()).as_ref(),
        hashes.iter().next()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_settles_embedded_sqlite() {
    identical_concurrent_settles(Backend::Embedded, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_settles_embedded_postgres() {
    identical_concurrent_settles(Backend::Embedded, Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_settles_anvil_sqlite() {
    identical_concurrent_settles(Backend::Anvil, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_settles_anvil_postgres() {
    identical_concurrent_settles(Backend::Anvil, Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// The contract: one bad item never reverts the others

async fn bad_items_fail_alone(backend: Backend) {
    let env = env(backend, Db::Sqlite).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup(&chain, PRICE * 10).await;
    let f = &setup.fixture;
    let token = f.token.address();
    let payee = Address::repeat_byte(0x42);
    let (good, good_signature) = f.authorization(payee, PRICE).await;
    let (used, used_signature) = f.authorization(payee, PRICE).await;
    let (forged, _) = f.authorization(payee, PRICE).await;
    let (no_code, no_code_signature) = f.authorization(payee, PRICE).await;
    // Someone else uses `used` first.
    let front_run = f
        .token
        .submit_transfer_with_authorization(&f.sender, &used, &used_signature, None)
        .await
        .unwrap();
    assert!(testkit::mined(chain.as_ref(), front_run).await.success);
    let items = vec![
        BatchItem {
            token,
            authorization: used.clone(),
            signature: Bytes::from(used_signature),
        },
        BatchItem {
            token,
            authorization: forged.clone(),
            signature: Bytes::from(vec![7u8; 65]),
        },
        BatchItem {
            token: Address::repeat_byte(0x99),
            authorization: no_code.clone(),
            signature: Bytes::from(no_code_signature),
        },
        BatchItem {
            token,
            authorization: good.clone(),
            signature: Bytes::from(good_signature),
        },
    ];
    let hash = accounts[0]
        .send(TxRequest {
            to: Some(setup.settler),
            data: batch_settle_call(&items),
            value: U256::ZERO,
            gas_limit: Some(1_000_000),
        })
        .await
        .unwrap();
    let receipt = testkit::mined(chain.as_ref(), hash).await;
    assert!(receipt.success, "the batch itself never reverts");
    let outcomes = batch_outcomes(
        setup.settler,
        &items,
        receipt.logs.iter().map(|log| LogRef {
            address: log.address,
            topics: &log.topics,
            data: &log.data,
        }),
    );
    let reasons: Vec<Option<Reason>> = outcomes
        .iter()
        .map(|outcome| match outcome {
            ItemOutcome::Failed(data) => bursar_contracts::revert_reason(data),
            _ => None,
        })
        .collect();
    assert!(matches!(outcomes[0], ItemOutcome::Failed(_)));
    assert_eq!(reasons[0], Some(Reason::NONCE_ALREADY_USED));
    assert!(matches!(outcomes[1], ItemOutcome::Failed(_)));
    assert_eq!(reasons[1], Some(Reason::INVALID_SIGNATURE));
    assert_eq!(outcomes[2], ItemOutcome::Failed(Bytes::new()));
    assert_eq!(outcomes[3], ItemOutcome::Settled);
    // Exactly the front-run and the good item moved money.
    assert_eq!(
        f.token.balance_of(payee).await.unwrap(),
        U256::from(2 * PRICE)
    );
    assert!(
        !f.token
            .authorization_state(f.payer.address(), forged.nonce)
            .await
            .unwrap()
    );
    // An empty batch and an oversized one are refused as a whole.
    for count in [0, bursar_contracts::BATCH_ITEMS_MAX + 1] {
        let data = batch_settle_call(&vec![items[3].clone(); count]);
        let outcome = chain
            .call(bursar_chain::CallRequest {
                from: Some(accounts[0].address()),
                to: Some(setup.settler),
                data,
                value: U256::ZERO,
            })
            .await
            .unwrap();
        assert!(
            matches!(outcome, bursar_chain::CallOutcome::Revert(_)),
            "{count} items"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_fail_alone_embedded() {
    bad_items_fail_alone(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_fail_alone_anvil() {
    bad_items_fail_alone(Backend::Anvil).await;
}

// ---------------------------------------------------------------------------------------------
// payment-identifier

async fn payment_identifier_cases(backend: Backend, db: Db) {
    let env = env(backend, db).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup(&chain, PRICE * 10).await;
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        accounts,
        batching(setup.settler),
        env.ledger.clone(),
    );
    let (url, server) = serve(facilitator).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .post(format!("{url}/settle"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let pay_to = PrivateKeySigner::random().address();
    let requirements = requirements(&setup, pay_to);
    let now = chain_now(&chain).await;
    let id = "pay_7d5d747be160e280504c099d984bcfe0";
    let extension =
        |id: &str| Some(json!({"payment-identifier": {"info": {"required": false, "id": id}}}));
    let first = signed(&setup, &requirements, &setup.fixture.payer, now);
    let second = signed(&setup, &requirements, &setup.fixture.payer, now);

    let (status, settled) =
        post(request(&requirements, &first, extension(id)).to_json_value()).await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["success"], true, "{settled}");
    // The same id and payload again: the recorded outcome.
    let (status, again) = post(request(&requirements, &first, extension(id)).to_json_value()).await;
    assert_eq!(status, 200);
    assert_eq!(again["transaction"], settled["transaction"]);
    // The same id with another payload: 409, nothing moves, the row is not taken.
    let (status, conflict) =
        post(request(&requirements, &second, extension(id)).to_json_value()).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["success"], false);
    assert_eq!(conflict["errorReason"], PAYMENT_ID_CONFLICT);
    assert!(
        env.ledger
            .get(&ledger_key(&setup, &second))
            .await
            .unwrap()
            .is_none()
    );
    // A malformed id: 400.
    let (status, malformed) =
        post(request(&requirements, &second, extension("short")).to_json_value()).await;
    assert_eq!(status, 400, "{malformed}");
    assert_eq!(
        setup.fixture.token.balance_of(pay_to).await.unwrap(),
        U256::from(PRICE)
    );
    // The other payload under its own id settles.
    let (status, own) = post(
        request(
            &requirements,
            &second,
            extension("pay_0123456789abcdef_other"),
        )
        .to_json_value(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(own["success"], true, "{own}");
    let row = env
        .ledger
        .get_by_payment_id(id)
        .await
        .unwrap()
        .expect("the id is recorded");
    assert_eq!(row.key, ledger_key(&setup, &first));
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(
        setup.fixture.token.balance_of(pay_to).await.unwrap(),
        U256::from(2 * PRICE)
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_identifier_embedded_sqlite() {
    payment_identifier_cases(Backend::Embedded, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_identifier_anvil_postgres() {
    payment_identifier_cases(Backend::Anvil, Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// Recovery of a batch that was broadcast but never seen mined by its facilitator

async fn recovery_finishes_a_mined_batch(backend: Backend, db: Db) {
    let env = env(backend, db).await;
    let chain = env.chain.clone();
    let (setup, mut accounts) = setup(&chain, PRICE * 10).await;
    let f = &setup.fixture;
    let pay_to = PrivateKeySigner::random().address();
    let requirements = requirements(&setup, pay_to);
    let now = chain_now(&chain).await;
    let good = signed(&setup, &requirements, &f.payer, now);
    let spent = signed(&setup, &requirements, &f.payer, now);
    // `spent` is used by someone else before the batch (paying exactly what it names).
    let hash = f
        .token
        .submit_transfer_with_authorization(&f.sender, &spent.authorization, &spent.signature, None)
        .await
        .unwrap();
    testkit::mined(chain.as_ref(), hash).await;
    // `superseded`'s nonce is used before the batch by another authorization of the payer
    // (another value): that payment is never made.
    let superseded = signed(&setup, &requirements, &f.payer, now);
    let mut other = superseded.authorization.clone();
    other.value = Amount::from(PRICE + 1);
    let domain = exact_evm::token_domain(TOKEN_NAME, "2", chain.chain_id(), f.token.address());
    let superseding = ExactEvmPayload {
        signature: exact_evm::sign_authorization(&f.payer, &other, &domain).unwrap(),
        authorization: other,
    };
    let superseding_hash = f
        .token
        .submit_transfer_with_authorization(
            &f.sender,
            &superseding.authorization,
            &superseding.signature,
            None,
        )
        .await
        .unwrap();
    testkit::mined(chain.as_ref(), superseding_hash).await;
    // What a facilitator does before it dies: claim, record submitted, broadcast.
    let network = format!("eip155:{}", chain.chain_id());
    let crashed = "crashed-facilitator/0000000000000001";
    let mut submissions = Vec::new();
    for exact in [&good, &spent, &superseded] {
        let key = ledger_key(&setup, exact);
        let claimant = Claimant {
            fingerprint: B256::repeat_byte(0xf1),
            holder: crashed.into(),
            payment_id: None,
            pay_to,
            amount: Amount::from(PRICE),
        };
        env.ledger.claim(&key, &claimant).await.unwrap();
        submissions.push((key, exact.authorization.valid_before));
    }
    let items: Vec<BatchItem> = [&good, &spent, &superseded]
        .iter()
        .map(|exact| BatchItem {
            token: f.token.address(),
            authorization: exact.authorization.clone(),
            signature: exact.signature.clone(),
        })
        .collect();
    let sender = accounts.remove(0);
    let sender_address = sender.address();
    let ledger = env.ledger.clone();
    let batch_hash = sender
        .send_recorded(
            TxRequest {
                to: Some(setup.settler),
                data: batch_settle_call(&items),
                value: U256::ZERO,
                gas_limit: Some(1_000_000),
            },
            |hash, sender_nonce| {
                let rows: Vec<(SettlementKey, Submission)> = submissions
                    .iter()
                    .map(|(key, valid_before)| {
                        (
                            key.clone(),
                            Submission {
                                tx_hash: hash,
                                sender: sender_address,
                                sender_nonce,
                                valid_before_s: valid_before.to::<u64>(),
                                pending_response: SettleResponse {
                                    success: true,
                                    error_reason: None,
                                    error_message: None,
                                    payer: Some(f.payer.address().into()),
                                    transaction: hash.into(),
                                    network: network.clone(),
                                },
                            },
                        )
                    })
                    .collect();
                let ledger = ledger.clone();
                async move {
                    ledger
                        .mark_batch_submitted(crashed, &rows)
                        .await
                        .map_err(|e| bursar_chain::ChainError::Transport(e.to_string()))
                }
            },
        )
        .await
        .unwrap();
    testkit::mined(chain.as_ref(), batch_hash).await;
    assert_eq!(env.ledger.unfinished().await.unwrap().len(), 3);

    // A new life of the facilitator recovers without broadcasting anything.
    let nonce_before = chain.transaction_count(sender.address()).await.unwrap();
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        vec![sender],
        batching(setup.settler),
        env.ledger.clone(),
    );
    let recovered = facilitator.recover().await.unwrap();
    assert_eq!(recovered.len(), 3);
    let good_key = ledger_key(&setup, &good);
    let spent_key = ledger_key(&setup, &spent);
    let superseded_key = ledger_key(&setup, &superseded);
    for entry in &recovered {
        assert_eq!(entry.tx_hash, Some(batch_hash));
        if entry.key == good_key || entry.key == spent_key {
            // `spent` was paid by the front-runner's transaction: confirmed with it.
            assert_eq!(entry.outcome, RecoveryOutcome::Confirmed);
        } else {
            assert_eq!(entry.key, superseded_key);
            assert!(
                matches!(&entry.outcome, RecoveryOutcome::Failed { reason, .. } if *reason == Reason::NONCE_ALREADY_USED),
                "{:?}",
                entry.outcome
            );
        }
    }
    let good_row = env.ledger.get(&good_key).await.unwrap().unwrap();
    assert_eq!(good_row.state, SettlementState::Confirmed);
    assert_eq!(
        good_row.response.unwrap().transaction,
        batch_hash.to_string()
    );
    assert_eq!(good_row.tx_hash, Some(batch_hash));
    let spent_row = env.ledger.get(&spent_key).await.unwrap().unwrap();
    assert_eq!(spent_row.state, SettlementState::Confirmed);
    assert_eq!(
        spent_row.response.unwrap().transaction,
        hash.to_string(),
        "the transaction that paid"
    );
    assert_eq!(spent_row.tx_hash, Some(hash));
    let superseded_row = env.ledger.get(&superseded_key).await.unwrap().unwrap();
    assert_eq!(superseded_row.state, SettlementState::Failed);
    assert_eq!(
        superseded_row.error_reason.as_deref(),
        Some(Reason::NONCE_ALREADY_USED.as_str())
    );
    assert!(env.ledger.unfinished().await.unwrap().is_empty());
    assert_eq!(
        chain
            .transaction_count(facilitator.sender_address())
            .await
            .unwrap(),
        nonce_before,
        "recovery broadcast nothing"
    );
    // Ledger == chain: the payee got both payments (one by the front-runner, one by the batch)
    // and the payer's other authorization (PRICE + 1), not the superseded payment.
    assert_eq!(
        f.token.balance_of(pay_to).await.unwrap(),
        U256::from(3 * PRICE + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_a_mined_batch_embedded_sqlite() {
    recovery_finishes_a_mined_batch(Backend::Embedded, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_a_mined_batch_anvil_postgres() {
    recovery_finishes_a_mined_batch(Backend::Anvil, Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// Confirmation depth

/// With a confirmation depth of 3, a mined batch is not reported (nor recorded confirmed) until
/// two more blocks sit on top of it.
async fn confirmation_depth_is_waited_for(backend: Backend, db: Db) {
    let env = env(backend, db).await;
    let chain = env.chain.clone();
    let (setup, accounts) = setup(&chain, PRICE).await;
    let mut config = batching(setup.settler);
    config.confirmations = 3;
    let facilitator = LocalFacilitator::with_senders(
        chain.clone().into_evm(),
        accounts,
        config,
        env.ledger.clone(),
    );
    let pay_to = PrivateKeySigner::random().address();
    let requirements = requirements(&setup, pay_to);
    let exact = signed(
        &setup,
        &requirements,
        &setup.fixture.payer,
        chain_now(&chain).await,
    );
    let settle = tokio::spawn({
        let facilitator = facilitator.clone();
        let request = request(&requirements, &exact, None);
        async move { facilitator.settle(&request).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.fixture.token.balance_of(pay_to).await.unwrap() != U256::from(PRICE) {
        assert!(Instant::now() < deadline, "the batch was never mined");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = ledger_key(&setup, &exact);
    for depth in 1..3 {
        // Mined `depth` deep: however long we wait, not yet final.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!settle.is_finished(), "reported at depth {depth}");
        let row = env.ledger.get(&key).await.unwrap().unwrap();
        assert_eq!(row.state, SettlementState::Submitted, "at depth {depth}");
        chain.mine().await.unwrap();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), settle)
        .await
        .expect("settled once 3 deep")
        .unwrap();
    assert!(outcome.success, "{outcome:?}");
    let row = env.ledger.get(&key).await.unwrap().unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(row.tx_hash, Some(outcome.transaction.evm().unwrap()));
    let receipt = chain
        .receipt(outcome.transaction.evm().unwrap())
        .await
        .unwrap()
        .unwrap();
    let head = chain.latest_block().await.unwrap().number;
    assert!(
        head >= receipt.block_number + 2,
        "head {head}, mined in {}",
        receipt.block_number
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_depth_embedded_sqlite() {
    confirmation_depth_is_waited_for(Backend::Embedded, Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_depth_anvil_postgres() {
    confirmation_depth_is_waited_for(Backend::Anvil, Db::Postgres).await;
}

trait IntoEvm {
    fn into_evm(self) -> Arc<dyn EvmChain>;
}

impl IntoEvm for Arc<dyn DevChain> {
    fn into_evm(self) -> Arc<dyn EvmChain> {
        self
    }
}
