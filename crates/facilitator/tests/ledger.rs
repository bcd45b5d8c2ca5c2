//! The facilitator on a persistent ledger, on the embedded chain: duplicates after a restart,
//! two facilitators sharing one PostgreSQL ledger, and crash recovery. Every case checks the
//! chain (sender nonces, balances), not just the answers.

#[allow(dead_code)]
mod scenarios;

use std::collections::BTreeSet;
use std::sync::Arc;

use alloy_primitives::{B256, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::{Account, DevChain, EvmChain, wait_for_receipt};
use bursar_facilitator::{
    FacilitatorConfig, LocalFacilitator, RecoveryOutcome, payment_fingerprint,
};
use bursar_protocol::{FacilitatorRequest, Reason, SettleResponse, X402Version};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{LedgerKey, SettlementLedger, SettlementState, Submission};
use scenarios::{Harness, PAYER_BALANCE, PRICE};

async fn chain() -> Arc<dyn DevChain> {
    bursar_chain_revm::EmbeddedChain::memory()
}

/// A settlement key with gas money.
async fn funded_key(chain: &Arc<dyn DevChain>) -> PrivateKeySigner {
    let key = PrivateKeySigner::random();
    chain
        .set_native_balance(key.address(), U256::from(10u64.pow(18)))
        .await
        .unwrap();
    key
}

fn facilitator(
    chain: &Arc<dyn DevChain>,
    key: &PrivateKeySigner,
    ledger: Arc<dyn SettlementLedger>,
) -> LocalFacilitator {
    let evm: Arc<dyn EvmChain> = chain.clone();
    LocalFacilitator::with_ledger(
        evm.clone(),
        Account::new(evm, key.clone()),
        FacilitatorConfig::default(),
        ledger,
    )
}

async fn open(url: &str) -> Arc<dyn SettlementLedger> {
    bursar_store::open(url).await.unwrap()
}

async fn signed_request(h: &Harness) -> FacilitatorRequest {
    let requirements = h.requirements();
    let exact = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let body = h.request(X402Version::V2, &requirements, &exact);
    FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap()
}

fn ledger_key(h: &Harness, request: &FacilitatorRequest) -> LedgerKey {
    let authorization = &request.payload.payload["authorization"];
    LedgerKey::new(
        &format!("eip155:{}", h.chain_id()),
        &h.fixture.token.address().to_string(),
        authorization["from"].as_str().unwrap(),
        authorization["nonce"].as_str().unwrap(),
    )
}

async fn assert_paid_once(h: &Harness) {
    assert_eq!(h.balance(h.pay_to).await, U256::from(PRICE));
    assert_eq!(
        h.balance(h.fixture.payer.address()).await,
        U256::from(PAYER_BALANCE - PRICE)
    );
}

/// A duplicate /settle after a restart gets the original transaction; nothing new is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_after_restart_returns_the_original_transaction() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let key = funded_key(&chain).await;
    let request = signed_request(&h).await;

    let first = facilitator(&chain, &key, open(&database.url()).await);
    let settled = first.settle(&request).await;
    assert!(settled.success, "{settled:?}");
    drop(first);

    let restarted = facilitator(&chain, &key, open(&database.url()).await);
    assert!(
        restarted.recover().await.unwrap().is_empty(),
        "nothing unfinished"
    );
    let nonce_before = chain.transaction_count(key.address()).await.unwrap();
    let again = restarted.settle(&request).await;
    assert_eq!(
        again, settled,
        "the recorded response, transaction included"
    );
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        nonce_before,
        "no new transaction"
    );
    assert_paid_once(&h).await;

    // Another payment reusing the nonce is refused for that reason, also after the restart.
    let requirements = h.requirements();
    let nonce: B256 = request.payload.payload["authorization"]["nonce"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reused = h
        .authorization(&requirements, &h.fixture.payer, |a| {
            a.nonce = nonce;
            a.valid_before += U256::from(1);
        })
        .await;
    let reused = FacilitatorRequest::from_json(
        h.request(X402Version::V2, &requirements, &reused)
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let refused = restarted.settle(&reused).await;
    assert!(!refused.success);
    assert_eq!(
        refused.error_reason,
        Some(Reason::NONCE_ALREADY_USED),
        "{refused:?}"
    );
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        nonce_before
    );
    assert_paid_once(&h).await;
}

/// Two facilitators (two processes, two settlement accounts) on one PostgreSQL ledger and one
/// chain: 50 concurrent identical settles split between them make one transfer with one hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_facilitators_sharing_postgres_settle_once() {
    const CALLERS: usize = 50;
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempPostgres::create().await;
    let keys = [funded_key(&chain).await, funded_key(&chain).await];
    let facilitators = [
        facilitator(&chain, &keys[0], open(database.url()).await),
        facilitator(&chain, &keys[1], open(database.url()).await),
    ];
    let request = Arc::new(signed_request(&h).await);
    let sent_before = [
        chain.transaction_count(keys[0].address()).await.unwrap(),
        chain.transaction_count(keys[1].address()).await.unwrap(),
    ];

    let mut calls = Vec::new();
    for caller in 0..CALLERS {
        let facilitator = facilitators[caller % 2].clone();
        let request = request.clone();
        calls.push(tokio::spawn(
            async move { facilitator.settle(&request).await },
        ));
    }
    let mut hashes = BTreeSet::new();
    for call in calls {
        let settled: SettleResponse = call.await.unwrap();
        assert!(settled.success, "{settled:?}");
        hashes.insert(settled.transaction);
    }
    assert_eq!(hashes.len(), 1, "one transaction for everyone: {hashes:?}");
    let sent = chain.transaction_count(keys[0].address()).await.unwrap() - sent_before[0]
        + chain.transaction_count(keys[1].address()).await.unwrap()
        - sent_before[1];
    assert_eq!(sent, 1, "exactly one transaction between both facilitators");
    assert_paid_once(&h).await;
    let record = facilitators[0]
        .ledger()
        .get(&ledger_key(&h, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, SettlementState::Confirmed);
    assert_eq!(record.tx_hash.as_ref(), hashes.iter().next());
}

/// A crash after broadcast leaves a `submitted` row; recovery finishes it from the chain, never
/// re-broadcasting: mined → confirmed (and duplicates get its hash); not mined but the nonce used
/// → failed; not mined, unused, expired → failed; not mined, unused, valid → left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_broadcast_settlements_from_the_chain() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let key = funded_key(&chain).await;
    let ledger = open(&database.url()).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let account = Account::new(evm.clone(), key.clone());
    let network = format!("eip155:{}", h.chain_id());

    // Mined: the "crashed" facilitator sent the transaction and recorded it, then died.
    let Broadcast {
        request,
        key: mined_key,
        pending,
        valid_before,
    } = broadcast_then_crashed(&h, &*ledger, &account).await;

    // Never mined, but the authorization is used: a second payment, settled by a facilitator
    // with another ledger, recorded here with a transaction that never existed.
    let spent_request = signed_request(&h).await;
    let other = LocalFacilitator::new(
        evm.clone(),
        Account::new(evm.clone(), funded_key(&chain).await),
        FacilitatorConfig::default(),
    );
    assert!(other.settle(&spent_request).await.success);
    let spent_key = ledger_key(&h, &spent_request);
    let ghost = B256::repeat_byte(0x11);
    record_submitted(&*ledger, &spent_key, "0x01", ghost, valid_before, &pending).await;

    // Never mined, unused: one expired, one still valid.
    let unused_expired = LedgerKey::new(
        &network,
        &h.fixture.token.address().to_string(),
        &h.fixture.payer.address().to_string(),
        &B256::repeat_byte(0x22).to_string(),
    );
    record_submitted(
        &*ledger,
        &unused_expired,
        "0x02",
        B256::repeat_byte(0x33),
        1_000,
        &pending,
    )
    .await;
    let unused_valid = LedgerKey::new(
        &network,
        &h.fixture.token.address().to_string(),
        &h.fixture.payer.address().to_string(),
        &B256::repeat_byte(0x44).to_string(),
    );
    record_submitted(
        &*ledger,
        &unused_valid,
        "0x03",
        B256::repeat_byte(0x55),
        valid_before,
        &pending,
    )
    .await;

    // Claimed, then the facilitator died before recording a broadcast: one whose authorization
    // got used (settled elsewhere), one that never reached the chain.
    let abandoned_used_request = signed_request(&h).await;
    assert!(other.settle(&abandoned_used_request).await.success);
    let abandoned_used = ledger_key(&h, &abandoned_used_request);
    ledger.claim(&abandoned_used, "0x04").await.unwrap();
    let abandoned_unused_request = signed_request(&h).await;
    let abandoned_unused = ledger_key(&h, &abandoned_unused_request);
    ledger
        .claim(
            &abandoned_unused,
            &payment_fingerprint(&abandoned_unused_request).to_string(),
        )
        .await
        .unwrap();

    let restarted = facilitator(&chain, &key, ledger.clone());
    let sent_before = chain.transaction_count(key.address()).await.unwrap();
    let recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 4, "{recovered:?}");
    let outcome = |k: &LedgerKey| {
        recovered
            .iter()
            .find(|r| &r.key == k)
            .map(|r| r.outcome.clone())
            .unwrap()
    };
    assert_eq!(outcome(&mined_key), RecoveryOutcome::Confirmed);
    assert!(matches!(
        outcome(&spent_key),
        RecoveryOutcome::Failed { reason, .. } if reason == Reason::NONCE_ALREADY_USED
    ));
    assert!(matches!(
        outcome(&unused_expired),
        RecoveryOutcome::Failed { reason, .. } if reason == Reason::VALID_BEFORE
    ));
    assert!(matches!(
        outcome(&unused_valid),
        RecoveryOutcome::Pending { .. }
    ));

    let state = |k: LedgerKey| {
        let ledger = ledger.clone();
        async move { ledger.get(&k).await.unwrap().unwrap() }
    };
    let confirmed = state(mined_key.clone()).await;
    assert_eq!(confirmed.state, SettlementState::Confirmed);
    assert_eq!(confirmed.response, Some(pending.clone()));
    assert_eq!(state(spent_key).await.state, SettlementState::Failed);
    assert_eq!(state(unused_expired).await.state, SettlementState::Failed);
    assert_eq!(
        state(unused_valid.clone()).await.state,
        SettlementState::Submitted
    );
    assert_eq!(ledger.unfinished().await.unwrap().len(), 1);

    // Young `received` claims are someone's work in progress: left alone by `recover`.
    assert!(ledger.get(&abandoned_used).await.unwrap().is_some());
    assert!(ledger.get(&abandoned_unused).await.unwrap().is_some());

    // The recovered settlement answers duplicates with its transaction; nothing was re-sent.
    let again = restarted.settle(&request).await;
    assert_eq!(again, pending);
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        sent_before
    );
    assert_eq!(h.balance(h.pay_to).await, U256::from(3 * PRICE));

    // Old ones are abandoned: used → failed, unused → released and the payer's retry settles.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let recovered = restarted
        .recover_with(std::time::Duration::ZERO)
        .await
        .unwrap();
    let outcome = |k: &LedgerKey| {
        recovered
            .iter()
            .find(|r| &r.key == k)
            .map(|r| r.outcome.clone())
            .unwrap()
    };
    assert_eq!(recovered.len(), 3, "{recovered:?}");
    assert!(matches!(
        outcome(&abandoned_used),
        RecoveryOutcome::Failed { .. }
    ));
    assert_eq!(outcome(&abandoned_unused), RecoveryOutcome::Released);
    assert!(matches!(
        outcome(&unused_valid),
        RecoveryOutcome::Pending { .. }
    ));
    assert_eq!(
        ledger.get(&abandoned_used).await.unwrap().unwrap().state,
        SettlementState::Failed
    );
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        sent_before,
        "recovery sends nothing"
    );
    let retried = restarted.settle(&abandoned_unused_request).await;
    assert!(retried.success, "{retried:?}");
    assert_eq!(h.balance(h.pay_to).await, U256::from(4 * PRICE));
}

/// A running facilitator recovers in the background: a claim a crashed process abandoned is
/// released (and the payer's retry settles) and a broadcast it never saw mined is finished,
/// without a restart; rows younger than the idle limit (live work) are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_recovery_finishes_what_a_crash_left_without_a_restart() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let key = funded_key(&chain).await;
    let ledger = open(&database.url()).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let account = Account::new(evm.clone(), key.clone());

    // The crashed process: claimed one payment and died; broadcast another and died.
    let abandoned_request = signed_request(&h).await;
    let abandoned = ledger_key(&h, &abandoned_request);
    ledger
        .claim(
            &abandoned,
            &payment_fingerprint(&abandoned_request).to_string(),
        )
        .await
        .unwrap();
    let Broadcast {
        request: mined_request,
        key: mined,
        pending,
        ..
    } = broadcast_then_crashed(&h, &*ledger, &account).await;

    let running = facilitator(&chain, &key, ledger.clone());
    // Idle limit of a day: nothing here is old enough, so passes leave both rows.
    let patient = running.spawn_recovery(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_secs(86_400),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    patient.abort();
    assert_eq!(
        ledger.get(&abandoned).await.unwrap().unwrap().state,
        SettlementState::Received
    );
    assert_eq!(
        ledger.get(&mined).await.unwrap().unwrap().state,
        SettlementState::Submitted
    );

    // Idle limit of 50 ms: once the rows are that old, a pass finishes them.
    let task = running.spawn_recovery(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(50),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let released = ledger.get(&abandoned).await.unwrap().is_none();
        let confirmed =
            ledger.get(&mined).await.unwrap().unwrap().state == SettlementState::Confirmed;
        if released && confirmed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background recovery did not finish: released {released}, confirmed {confirmed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    // The mined one answers duplicates with its transaction; the released one settles now.
    assert_eq!(running.settle(&mined_request).await, pending);
    let retried = running.settle(&abandoned_request).await;
    assert!(retried.success, "{retried:?}");
    assert_eq!(h.balance(h.pay_to).await, U256::from(2 * PRICE));
}

/// A payment a facilitator sent on chain and recorded `submitted` before it crashed.
struct Broadcast {
    request: FacilitatorRequest,
    key: LedgerKey,
    /// What a live settle answers for it.
    pending: SettleResponse,
    valid_before: u64,
}

/// Signs a payment, settles it on chain from `account` (mined) and records it `submitted` in
/// `ledger` with that transaction, as a facilitator that crashed right after broadcasting leaves
/// it.
async fn broadcast_then_crashed(
    h: &Harness,
    ledger: &dyn SettlementLedger,
    account: &Account,
) -> Broadcast {
    let request = signed_request(h).await;
    let exact =
        bursar_protocol::exact_evm::ExactEvmPayload::from_value(&request.payload.payload).unwrap();
    let hash = h
        .fixture
        .token
        .submit_transfer_with_authorization(
            account,
            &exact.authorization,
            &exact.signature,
            Some(bursar_facilitator::SETTLE_GAS_LIMIT),
        )
        .await
        .unwrap();
    assert!(
        wait_for_receipt(
            account.chain().as_ref(),
            hash,
            std::time::Duration::from_secs(10)
        )
        .await
        .unwrap()
        .success
    );
    let key = ledger_key(h, &request);
    let pending = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(h.fixture.payer.address().to_checksum(None)),
        transaction: hash.to_string(),
        network: format!("eip155:{}", h.chain_id()),
    };
    let valid_before = u64::try_from(exact.authorization.valid_before).unwrap();
    record_submitted(
        ledger,
        &key,
        &payment_fingerprint(&request).to_string(),
        hash,
        valid_before,
        &pending,
    )
    .await;
    Broadcast {
        request,
        key,
        pending,
        valid_before,
    }
}

async fn record_submitted(
    ledger: &dyn SettlementLedger,
    key: &LedgerKey,
    fingerprint: &str,
    hash: B256,
    valid_before_s: u64,
    pending: &SettleResponse,
) {
    assert_eq!(
        ledger.claim(key, fingerprint).await.unwrap(),
        bursar_store::Claim::Claimed
    );
    let mut pending = pending.clone();
    pending.transaction = hash.to_string();
    ledger
        .mark_submitted(
            key,
            &Submission {
                tx_hash: hash.to_string(),
                valid_before_s,
                pending_response: pending,
            },
        )
        .await
        .unwrap();
}

/// A duplicate arriving while another facilitator's settlement is `submitted` follows it: it
/// waits for that transaction's receipt, answers with its hash and records the outcome, sending
/// nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_follows_a_settlement_submitted_elsewhere() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let ledger = open(&database.url()).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let elsewhere = Account::new(evm.clone(), funded_key(&chain).await);
    let request = signed_request(&h).await;
    let exact =
        bursar_protocol::exact_evm::ExactEvmPayload::from_value(&request.payload.payload).unwrap();
    let key = ledger_key(&h, &request);
    // The other facilitator claimed, broadcast and recorded; its receipt wait is still running.
    ledger
        .claim(&key, &payment_fingerprint(&request).to_string())
        .await
        .unwrap();
    let hash = h
        .fixture
        .token
        .submit_transfer_with_authorization(
            &elsewhere,
            &exact.authorization,
            &exact.signature,
            Some(bursar_facilitator::SETTLE_GAS_LIMIT),
        )
        .await
        .unwrap();
    let pending = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(h.fixture.payer.address().to_checksum(None)),
        transaction: hash.to_string(),
        network: format!("eip155:{}", h.chain_id()),
    };
    ledger
        .mark_submitted(
            &key,
            &Submission {
                tx_hash: hash.to_string(),
                valid_before_s: u64::try_from(exact.authorization.valid_before).unwrap(),
                pending_response: pending.clone(),
            },
        )
        .await
        .unwrap();

    let settler = funded_key(&chain).await;
    let follower = facilitator(&chain, &settler, ledger.clone());
    let settled = follower.settle(&request).await;
    assert_eq!(settled, pending, "the other facilitator's transaction");
    assert_eq!(chain.transaction_count(settler.address()).await.unwrap(), 0);
    assert_eq!(
        ledger.get(&key).await.unwrap().unwrap().state,
        SettlementState::Confirmed
    );
    assert_paid_once(&h).await;
}
