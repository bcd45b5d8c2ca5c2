//! The facilitator on a persistent ledger, on the embedded chain (and anvil where noted):
//! duplicates after a restart, two facilitators sharing one PostgreSQL ledger, crash recovery,
//! claim holders and their hold, and paid authorizations answered with the transaction that paid.
//! Every case checks the chain (sender nonces, balances, receipts) and the ledger rows, not just
//! the answers.

#[allow(dead_code)]
mod scenarios;

use std::collections::BTreeSet;
use std::sync::Arc;

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::{Account, ChainError, DevChain, EvmChain, wait_for_receipt};
use bursar_facilitator::{
    FacilitatorConfig, LocalFacilitator, RecoveryOutcome, SETTLE_GAS_LIMIT, payment_fingerprint,
};
use bursar_protocol::exact_evm::ExactEvmPayload;
use bursar_protocol::{Amount, FacilitatorRequest, Network, Reason, SettleResponse, X402Version};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{
    Claim, Claimant, DatabaseError, SettlementKey, SettlementLedger, SettlementRecord,
    SettlementState, Submission,
};
use scenarios::{Harness, PAYER_BALANCE, PRICE};

/// A facilitator process that claimed settlements and died (anonymous: its claims lapse only
/// after the claim hold).
const DEAD: &str = "crashed/00000000000000d1";
/// The name a restarted facilitator keeps across lives.
const INSTANCE: &str = "facilitator-1";
/// The holder name of an earlier life of [`INSTANCE`].
const EARLIER_LIFE: &str = "facilitator-1/00000000000000e1";

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
    facilitator_with(chain, key, ledger, FacilitatorConfig::default())
}

fn facilitator_with(
    chain: &Arc<dyn DevChain>,
    key: &PrivateKeySigner,
    ledger: Arc<dyn SettlementLedger>,
    config: FacilitatorConfig,
) -> LocalFacilitator {
    let evm: Arc<dyn EvmChain> = chain.clone();
    LocalFacilitator::with_ledger(evm.clone(), Account::new(evm, key.clone()), config, ledger)
}

/// The configuration of a facilitator named [`INSTANCE`].
fn named() -> FacilitatorConfig {
    FacilitatorConfig {
        instance: Some(INSTANCE.into()),
        ..Default::default()
    }
}

/// A configuration whose claim hold is `hold`.
fn holding(hold: Duration) -> FacilitatorConfig {
    FacilitatorConfig {
        claim_hold: Some(hold),
        ..Default::default()
    }
}

fn exact(request: &FacilitatorRequest) -> ExactEvmPayload {
    request.payload.payload.exact_evm().unwrap().clone()
}

/// `holder` claiming `request`'s payment, as the facilitator does.
fn claimant(request: &FacilitatorRequest, holder: &str) -> Claimant {
    let authorization = exact(request).authorization;
    Claimant {
        fingerprint: payment_fingerprint(request),
        holder: holder.into(),
        payment_id: None,
        pay_to: authorization.to,
        amount: authorization.value,
    }
}

/// What a live settle answers when `hash` settles `h`'s payment.
fn paid_by(h: &Harness, hash: B256) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(h.fixture.payer.address().into()),
        transaction: hash.into(),
        network: format!("eip155:{}", h.chain_id()),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Uses `payload`'s authorization on chain from `account`, as a front-runner (or the payer, or
/// another facilitator) would, directly with the token; returns the mined transaction.
async fn front_run(h: &Harness, account: &Account, payload: &ExactEvmPayload) -> B256 {
    let hash = h
        .fixture
        .token
        .submit_transfer_with_authorization(
            account,
            &payload.authorization,
            &payload.signature,
            Some(SETTLE_GAS_LIMIT),
        )
        .await
        .unwrap();
    let receipt = wait_for_receipt(account.chain().as_ref(), hash, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(receipt.success, "the front-run transfer succeeds");
    hash
}

/// Another authorization of the payer with the same nonce as `request`'s but a different value:
/// a different payment the payer signed with the nonce.
async fn same_nonce_other_value(h: &Harness, request: &FacilitatorRequest) -> ExactEvmPayload {
    let nonce = exact(request).authorization.nonce;
    h.authorization(&h.requirements(), &h.fixture.payer, |a| {
        a.nonce = nonce;
        a.value = Amount::from(PRICE + 1);
    })
    .await
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

fn ledger_key(h: &Harness, request: &FacilitatorRequest) -> SettlementKey {
    let authorization = exact(request).authorization;
    SettlementKey::new(
        Network::Eip155(h.chain_id()),
        h.fixture.token.address(),
        authorization.from,
        authorization.nonce,
    )
}

async fn assert_paid_once(h: &Harness) {
    assert_eq!(h.balance(h.pay_to).await, U256::from(PRICE));
    assert_eq!(
        h.balance(h.fixture.payer.address()).await,
        U256::from(PAYER_BALANCE - PRICE)
    );
}

/// A payment's fingerprint names its terms whatever the case of their addresses (EIP-55 or
/// lowercase, as the ledger has always compared them), and changes with the payee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_ignore_address_case_and_follow_the_terms() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let request = signed_request(&h).await;
    let fingerprint = payment_fingerprint(&request);
    let mut checksummed = request.clone();
    let asset: Address = request.requirements.asset.evm().unwrap();
    let pay_to: Address = request.requirements.pay_to.evm().unwrap();
    checksummed.requirements.asset = asset.into();
    checksummed.requirements.pay_to = pay_to.into();
    let mut lowercase = request.clone();
    lowercase.requirements.asset = format!("{asset:#x}").into();
    lowercase.requirements.pay_to = format!("{pay_to:#x}").into();
    assert_eq!(payment_fingerprint(&checksummed), fingerprint);
    assert_eq!(payment_fingerprint(&lowercase), fingerprint);
    let mut other = request.clone();
    other.requirements.pay_to = format!("{:#x}", Address::repeat_byte(0x42)).into();
    assert_ne!(payment_fingerprint(&other), fingerprint);
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
    let nonce: B256 = exact(&request).authorization.nonce;
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
    assert_eq!(
        record.tx_hash,
        hashes.iter().next().and_then(|hash| hash.evm())
    );
}

/// A crash leaves `submitted` rows; recovery finishes them from the chain, never broadcasting:
/// mined → confirmed (and duplicates get its hash); not mined but the authorization used by a
/// transaction that made exactly this payment → confirmed with that transaction; used by another
/// authorization with the same nonce → failed; not mined, unused, expired → failed; not mined,
/// unused, valid → left alone while its holder may be at work. Once the claim hold has passed,
/// what the dead holder left is judged: a claim whose authorization was paid → confirmed with the
/// transaction that paid, an unused claim → released (the payer's retry settles), a recorded
/// transaction that never reached the chain → released.
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

    // Mined: the "crashed" facilitator recorded the transaction, sent it, then died.
    let Broadcast {
        request,
        key: mined_key,
        pending,
        valid_before,
    } = broadcast_then_crashed(&h, &*ledger, &account).await;

    // Never mined, but the authorization is used: the payment was settled by a facilitator with
    // another ledger; recorded here with a transaction that never existed.
    let spent_request = signed_request(&h).await;
    let other = LocalFacilitator::new(
        evm.clone(),
        Account::new(evm.clone(), funded_key(&chain).await),
        FacilitatorConfig::default(),
    );
    let spent_settled = other.settle(&spent_request).await;
    assert!(spent_settled.success, "{spent_settled:?}");
    let spent_key = ledger_key(&h, &spent_request);
    let ghost = B256::repeat_byte(0x11);
    record_unsent(
        &*ledger,
        &spent_key,
        &claimant(&spent_request, DEAD),
        ghost,
        valid_before,
        &pending,
    )
    .await;

    // Never mined, and the nonce used by another authorization of the payer (another value):
    // this payment was not made.
    let superseded_request = signed_request(&h).await;
    let superseding = same_nonce_other_value(&h, &superseded_request).await;
    front_run(&h, &h.fixture.sender, &superseding).await;
    let superseded_key = ledger_key(&h, &superseded_request);
    record_unsent(
        &*ledger,
        &superseded_key,
        &claimant(&superseded_request, DEAD),
        B256::repeat_byte(0x12),
        valid_before,
        &pending,
    )
    .await;

    // Never mined, unused: one expired, one still valid.
    let unused = |fingerprint: u8| Claimant {
        fingerprint: B256::with_last_byte(fingerprint),
        holder: DEAD.into(),
        payment_id: None,
        pay_to: h.pay_to,
        amount: Amount::from(PRICE),
    };
    let unused_expired = SettlementKey::parse(
        &network,
        &h.fixture.token.address().to_string(),
        &h.fixture.payer.address().to_string(),
        &B256::repeat_byte(0x22).to_string(),
    )
    .unwrap();
    record_unsent(
        &*ledger,
        &unused_expired,
        &unused(2),
        B256::repeat_byte(0x33),
        1_000,
        &pending,
    )
    .await;
    let unused_valid = SettlementKey::parse(
        &network,
        &h.fixture.token.address().to_string(),
        &h.fixture.payer.address().to_string(),
        &B256::repeat_byte(0x44).to_string(),
    )
    .unwrap();
    record_unsent(
        &*ledger,
        &unused_valid,
        &unused(3),
        B256::repeat_byte(0x55),
        valid_before,
        &pending,
    )
    .await;

    // Claimed, then the facilitator died before recording a transaction: one whose authorization
    // got used (settled elsewhere), one that never reached the chain.
    let abandoned_used_request = signed_request(&h).await;
    let abandoned_used_settled = other.settle(&abandoned_used_request).await;
    assert!(abandoned_used_settled.success);
    let abandoned_used = ledger_key(&h, &abandoned_used_request);
    ledger
        .claim(
            &abandoned_used,
            &Claimant {
                fingerprint: B256::with_last_byte(4),
                ..claimant(&abandoned_used_request, DEAD)
            },
        )
        .await
        .unwrap();
    let abandoned_unused_request = signed_request(&h).await;
    let abandoned_unused = ledger_key(&h, &abandoned_unused_request);
    ledger
        .claim(
            &abandoned_unused,
            &claimant(&abandoned_unused_request, DEAD),
        )
        .await
        .unwrap();

    let restarted = facilitator(&chain, &key, ledger.clone());
    let sent_before = chain.transaction_count(key.address()).await.unwrap();
    let recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 5, "{recovered:?}");
    let outcome = |k: &SettlementKey| {
        recovered
            .iter()
            .find(|r| &r.key == k)
            .map(|r| r.outcome.clone())
            .unwrap()
    };
    assert_eq!(outcome(&mined_key), RecoveryOutcome::Confirmed);
    assert_eq!(
        outcome(&spent_key),
        RecoveryOutcome::Confirmed,
        "paid by another transaction"
    );
    assert!(matches!(
        outcome(&superseded_key),
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

    let state = |k: SettlementKey| {
        let ledger = ledger.clone();
        async move { ledger.get(&k).await.unwrap().unwrap() }
    };
    let confirmed = state(mined_key.clone()).await;
    assert_eq!(confirmed.state, SettlementState::Confirmed);
    assert_eq!(confirmed.response, Some(pending.clone()));
    let spent = state(spent_key.clone()).await;
    assert_eq!(spent.state, SettlementState::Confirmed);
    assert_eq!(
        spent.tx_hash,
        Some(spent_settled.transaction.evm().unwrap()),
        "the transaction that paid, not the one recorded"
    );
    assert_eq!(spent.response, Some(spent_settled.clone()));
    let superseded = state(superseded_key).await;
    assert_eq!(superseded.state, SettlementState::Failed);
    assert_eq!(
        superseded.error_reason.as_deref(),
        Some(Reason::NONCE_ALREADY_USED.as_str())
    );
    assert_eq!(state(unused_expired).await.state, SettlementState::Failed);
    assert_eq!(
        state(unused_valid.clone()).await.state,
        SettlementState::Submitted
    );
    assert_eq!(ledger.unfinished().await.unwrap().len(), 1);

    // Young `received` claims are someone's work in progress: left alone by `recover`.
    assert!(ledger.get(&abandoned_used).await.unwrap().is_some());
    assert!(ledger.get(&abandoned_unused).await.unwrap().is_some());

    // The recovered settlements answer duplicates with the transaction that paid; nothing was
    // re-sent.
    let again = restarted.settle(&request).await;
    assert_eq!(again, pending);
    assert_eq!(restarted.settle(&spent_request).await, spent_settled);
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        sent_before
    );
    // Mined, spent, abandoned-used (PRICE each) and the superseding authorization (PRICE + 1).
    assert_eq!(h.balance(h.pay_to).await, U256::from(4 * PRICE + 1));

    // Once the claim hold has passed, the dead holder's rows are judged: used → confirmed with
    // the transaction that paid, unused → released and the payer's retry settles, the recorded
    // transaction that never reached the chain → released.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let aged = facilitator_with(&chain, &key, ledger.clone(), holding(Duration::ZERO));
    let recovered = aged.recover().await.unwrap();
    let outcome = |k: &SettlementKey| {
        recovered
            .iter()
            .find(|r| &r.key == k)
            .map(|r| r.outcome.clone())
            .unwrap()
    };
    assert_eq!(recovered.len(), 3, "{recovered:?}");
    assert_eq!(outcome(&abandoned_used), RecoveryOutcome::Confirmed);
    assert_eq!(outcome(&abandoned_unused), RecoveryOutcome::Released);
    assert_eq!(outcome(&unused_valid), RecoveryOutcome::Released);
    let used = ledger.get(&abandoned_used).await.unwrap().unwrap();
    assert_eq!(used.state, SettlementState::Confirmed);
    assert_eq!(
        used.tx_hash,
        Some(abandoned_used_settled.transaction.evm().unwrap())
    );
    assert!(ledger.get(&abandoned_unused).await.unwrap().is_none());
    assert!(ledger.get(&unused_valid).await.unwrap().is_none());
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        sent_before,
        "recovery sends nothing"
    );
    let retried = aged.settle(&abandoned_unused_request).await;
    assert!(retried.success, "{retried:?}");
    assert_eq!(h.balance(h.pay_to).await, U256::from(5 * PRICE + 1));
}

/// A running facilitator recovers in the background, without a restart: a broadcast a crashed
/// process never saw mined is finished, a claim that process abandoned is left alone while
/// younger than the claim hold (its holder might be at work) and released once older, and the
/// payer's retry then settles it.
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
        .claim(&abandoned, &claimant(&abandoned_request, DEAD))
        .await
        .unwrap();
    let Broadcast {
        request: mined_request,
        key: mined,
        pending,
        ..
    } = broadcast_then_crashed(&h, &*ledger, &account).await;

    // A process whose claim hold outlasts the test: its passes finish the mined broadcast and
    // leave the claim (the same pass looks at claims first).
    let patient = facilitator_with(
        &chain,
        &key,
        ledger.clone(),
        holding(Duration::from_secs(86_400)),
    );
    let task = patient.spawn_recovery(Duration::from_millis(20));
    wait_until("the mined broadcast is confirmed", || async {
        ledger.get(&mined).await.unwrap().unwrap().state == SettlementState::Confirmed
    })
    .await;
    task.abort();
    let claim = ledger.get(&abandoned).await.unwrap().unwrap();
    assert_eq!(claim.state, SettlementState::Received);
    assert_eq!(claim.holder.as_deref(), Some(DEAD));

    // A process with a 1 s hold releases the claim once it is older than that.
    let running = facilitator_with(
        &chain,
        &key,
        ledger.clone(),
        holding(Duration::from_secs(1)),
    );
    let task = running.spawn_recovery(Duration::from_millis(20));
    wait_until("the abandoned claim is released", || async {
        ledger.get(&abandoned).await.unwrap().is_none()
    })
    .await;
    task.abort();
    // The mined one answers duplicates with its transaction; the released one settles now.
    assert_eq!(running.settle(&mined_request).await, pending);
    let retried = running.settle(&abandoned_request).await;
    assert!(retried.success, "{retried:?}");
    assert_eq!(h.balance(h.pay_to).await, U256::from(2 * PRICE));
}

/// Polls `condition` until it holds; fails after a generous deadline.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A payment a facilitator recorded `submitted`, sent on chain (mined) and then crashed.
struct Broadcast {
    request: FacilitatorRequest,
    key: SettlementKey,
    /// What a live settle answers for it.
    pending: SettleResponse,
    valid_before: u64,
}

/// Signs a payment, claims it as [`DEAD`], records its transaction and settles it on chain from
/// `account` (mined), as a facilitator that crashed right after broadcasting leaves it.
async fn broadcast_then_crashed(
    h: &Harness,
    ledger: &dyn SettlementLedger,
    account: &Account,
) -> Broadcast {
    let request = signed_request(h).await;
    let payload = exact(&request);
    let key = ledger_key(h, &request);
    assert_eq!(
        ledger.claim(&key, &claimant(&request, DEAD)).await.unwrap(),
        Claim::Claimed
    );
    let valid_before = u64::try_from(payload.authorization.valid_before).unwrap();
    let hash = h
        .fixture
        .token
        .submit_transfer_with_authorization_recorded(
            account,
            &payload.authorization,
            &payload.signature,
            Some(SETTLE_GAS_LIMIT),
            |hash, nonce| {
                let submission = Submission {
                    tx_hash: hash,
                    sender: account.address(),
                    sender_nonce: nonce,
                    valid_before_s: valid_before,
                    pending_response: paid_by(h, hash),
                };
                let key = &key;
                async move {
                    ledger
                        .mark_submitted(key, DEAD, &submission)
                        .await
                        .map_err(|error| ChainError::Transport(error.to_string()))
                }
            },
        )
        .await
        .unwrap();
    assert!(
        wait_for_receipt(account.chain().as_ref(), hash, Duration::from_secs(10))
            .await
            .unwrap()
            .success
    );
    Broadcast {
        request,
        key,
        pending: paid_by(h, hash),
        valid_before,
    }
}

/// Claims `key` for `claimant` and records `hash` (with `pending` naming it) as sent from an
/// account that never sent anything: a transaction that never reached the chain.
async fn record_unsent(
    ledger: &dyn SettlementLedger,
    key: &SettlementKey,
    claimant: &Claimant,
    hash: B256,
    valid_before_s: u64,
    pending: &SettleResponse,
) {
    assert_eq!(ledger.claim(key, claimant).await.unwrap(), Claim::Claimed);
    let mut pending = pending.clone();
    pending.transaction = hash.into();
    ledger
        .mark_submitted(
            key,
            &claimant.holder,
            &Submission {
                tx_hash: hash,
                sender: PrivateKeySigner::random().address(),
                sender_nonce: 0,
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
    let payload = exact(&request);
    let key = ledger_key(&h, &request);
    // The other facilitator (alive) claimed, recorded and broadcast; its receipt wait is still
    // running.
    let holder = "elsewhere/00000000000000e5";
    ledger
        .claim(&key, &claimant(&request, holder))
        .await
        .unwrap();
    let valid_before_s = u64::try_from(payload.authorization.valid_before).unwrap();
    let hash = h
        .fixture
        .token
        .submit_transfer_with_authorization_recorded(
            &elsewhere,
            &payload.authorization,
            &payload.signature,
            Some(SETTLE_GAS_LIMIT),
            |hash, nonce| {
                let submission = Submission {
                    tx_hash: hash,
                    sender: elsewhere.address(),
                    sender_nonce: nonce,
                    valid_before_s,
                    pending_response: paid_by(&h, hash),
                };
                let (ledger, key) = (ledger.clone(), key.clone());
                async move {
                    ledger
                        .mark_submitted(&key, holder, &submission)
                        .await
                        .map_err(|error| ChainError::Transport(error.to_string()))
                }
            },
        )
        .await
        .unwrap();
    let pending = paid_by(&h, hash);

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

async fn anvil() -> Arc<dyn DevChain> {
    bursar_chain_rpc::AnvilInstance::spawn()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_chain()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}"))
}

/// A process records its transaction (hash, sending account, account nonce) and dies before
/// handing it to the node. Another process leaves the row alone (its holder might be alive and
/// about to broadcast); the same instance, restarted, knows its earlier life is gone, sees that
/// the account's nonce never reached the recorded one, and releases the row at once; the payer's
/// retry then settles it, paying exactly once.
async fn recorded_but_never_broadcast_is_released_by_the_same_instance(
    chain: Arc<dyn DevChain>,
    url: &str,
) {
    let h = scenarios::harness(chain.clone()).await;
    let ledger = open(url).await;
    let key = funded_key(&chain).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let request = signed_request(&h).await;
    let payload = exact(&request);
    let k = ledger_key(&h, &request);
    assert_eq!(
        ledger
            .claim(&k, &claimant(&request, EARLIER_LIFE))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let earlier = Account::new(evm.clone(), key.clone());
    let valid_before_s = u64::try_from(payload.authorization.valid_before).unwrap();
    let died = h
        .fixture
        .token
        .submit_transfer_with_authorization_recorded(
            &earlier,
            &payload.authorization,
            &payload.signature,
            Some(SETTLE_GAS_LIMIT),
            |hash, nonce| {
                let submission = Submission {
                    tx_hash: hash,
                    sender: key.address(),
                    sender_nonce: nonce,
                    valid_before_s,
                    pending_response: paid_by(&h, hash),
                };
                let (ledger, k) = (ledger.clone(), k.clone());
                async move {
                    ledger
                        .mark_submitted(&k, EARLIER_LIFE, &submission)
                        .await
                        .unwrap();
                    Err(ChainError::Transport(
                        "the process died before broadcasting".into(),
                    ))
                }
            },
        )
        .await;
    assert!(died.is_err());
    drop(earlier);
    let nonce_before = chain.transaction_count(key.address()).await.unwrap();
    let recorded = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(recorded.state, SettlementState::Submitted);
    assert_eq!(recorded.sender, Some(key.address()));
    assert_eq!(
        recorded.sender_nonce,
        Some(nonce_before),
        "the account's next nonce: never used"
    );
    let recorded_hash: B256 = recorded.tx_hash.unwrap();
    assert_eq!(chain.receipt(recorded_hash).await.unwrap(), None);

    let stranger = facilitator(&chain, &funded_key(&chain).await, ledger.clone());
    let recovered = stranger.recover().await.unwrap();
    assert!(
        matches!(
            recovered.iter().find(|r| r.key == k).map(|r| &r.outcome),
            Some(RecoveryOutcome::Pending { .. })
        ),
        "{recovered:?}"
    );
    assert_eq!(ledger.get(&k).await.unwrap().unwrap(), recorded);

    let restarted = facilitator_with(&chain, &key, ledger.clone(), named());
    let recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].key, k);
    assert_eq!(recovered[0].tx_hash, Some(recorded_hash));
    assert_eq!(recovered[0].outcome, RecoveryOutcome::Released);
    assert!(ledger.get(&k).await.unwrap().is_none());
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        nonce_before,
        "recovery sends nothing"
    );
    assert_eq!(h.balance(h.pay_to).await, U256::ZERO);

    let settled = restarted.settle(&request).await;
    assert!(settled.success, "{settled:?}");
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        nonce_before + 1,
        "one transaction"
    );
    let receipt = chain
        .receipt(settled.transaction.evm().unwrap())
        .await
        .unwrap()
        .expect("mined");
    assert!(receipt.success);
    assert_paid_once(&h).await;
    let row = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(row.tx_hash, Some(settled.transaction.evm().unwrap()));
    let holder = row.holder.unwrap();
    assert!(
        holder.starts_with(&format!("{INSTANCE}/")) && holder != EARLIER_LIFE,
        "held by this life: {holder}"
    );
    assert_eq!(restarted.settle(&request).await, settled);
    assert_paid_once(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_but_never_broadcast_is_released_embedded_sqlite() {
    let database = TempSqlite::new();
    recorded_but_never_broadcast_is_released_by_the_same_instance(chain().await, &database.url())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_but_never_broadcast_is_released_anvil_postgres() {
    let database = TempPostgres::create().await;
    recorded_but_never_broadcast_is_released_by_the_same_instance(anvil().await, database.url())
        .await;
}

/// Claims an earlier life of this instance left (nothing recorded for them) are its own to
/// judge at once after a restart: a retry takes one over immediately and settles it, recovery
/// releases another. A young claim of another instance (whose name merely starts alike) is that
/// instance's work in progress and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_lifes_claims_are_judged_at_once() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let ledger = open(&database.url()).await;
    let key = funded_key(&chain).await;
    let taken = signed_request(&h).await;
    let released = signed_request(&h).await;
    for request in [&taken, &released] {
        assert_eq!(
            ledger
                .claim(&ledger_key(&h, request), &claimant(request, EARLIER_LIFE))
                .await
                .unwrap(),
            Claim::Claimed
        );
    }
    let neighbour_request = signed_request(&h).await;
    let neighbour_key = ledger_key(&h, &neighbour_request);
    let neighbour = "facilitator-10/00000000000000a1";
    ledger
        .claim(&neighbour_key, &claimant(&neighbour_request, neighbour))
        .await
        .unwrap();

    let restarted = facilitator_with(&chain, &key, ledger.clone(), named());
    let settled = restarted.settle(&taken).await;
    assert!(settled.success, "{settled:?}");
    let row = ledger.get(&ledger_key(&h, &taken)).await.unwrap().unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(row.tx_hash, Some(settled.transaction.evm().unwrap()));
    assert_ne!(row.holder.as_deref(), Some(EARLIER_LIFE));

    let recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].key, ledger_key(&h, &released));
    assert_eq!(recovered[0].outcome, RecoveryOutcome::Released);
    assert!(
        ledger
            .get(&ledger_key(&h, &released))
            .await
            .unwrap()
            .is_none()
    );
    let theirs = ledger.get(&neighbour_key).await.unwrap().unwrap();
    assert_eq!(theirs.state, SettlementState::Received);
    assert_eq!(theirs.holder.as_deref(), Some(neighbour));
    assert_eq!(chain.transaction_count(key.address()).await.unwrap(), 1);

    let retried = restarted.settle(&released).await;
    assert!(retried.success, "{retried:?}");
    assert_eq!(chain.transaction_count(key.address()).await.unwrap(), 2);
    assert_eq!(h.balance(h.pay_to).await, U256::from(2 * PRICE));
}

/// A claim a live process holds (fresh, another instance) and has recorded nothing for: a
/// duplicate answers `settlement_in_progress` (after a short wait, saying when the claim lapses)
/// and sends nothing; once the claim is older than the hold, the retry takes it over and settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_claim_answers_in_progress_until_its_hold_lapses() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let ledger = open(&database.url()).await;
    let request = signed_request(&h).await;
    let k = ledger_key(&h, &request);
    let live = "other-process/00000000000000f1";
    ledger.claim(&k, &claimant(&request, live)).await.unwrap();

    // The default hold (15 s) is far from over when the duplicate gives up waiting.
    let serving_key = funded_key(&chain).await;
    let serving = facilitator(&chain, &serving_key, ledger.clone());
    let answer = serving.settle(&request).await;
    assert!(!answer.success, "{answer:?}");
    assert_eq!(
        answer.error_reason,
        Some(Reason::SETTLEMENT_IN_PROGRESS),
        "{answer:?}"
    );
    assert!(
        answer
            .error_message
            .as_deref()
            .is_some_and(|message| message.contains("lapses")),
        "{answer:?}"
    );
    assert_eq!(answer.transaction, "");
    assert_eq!(
        chain
            .transaction_count(serving_key.address())
            .await
            .unwrap(),
        0
    );
    let row = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(row.state, SettlementState::Received);
    assert_eq!(row.holder.as_deref(), Some(live));
    assert_eq!(h.balance(h.pay_to).await, U256::ZERO);

    // A process whose hold is 1 s, once the claim is older than that: the retry takes it over.
    let retry_key = funded_key(&chain).await;
    let retrying = facilitator_with(
        &chain,
        &retry_key,
        ledger.clone(),
        holding(Duration::from_secs(1)),
    );
    wait_until("the claim is older than 1 s", || async {
        let row = ledger.get(&k).await.unwrap().unwrap();
        now_ms() - row.updated_at_ms > 1_000
    })
    .await;
    let settled = retrying.settle(&request).await;
    assert!(settled.success, "{settled:?}");
    assert_eq!(
        chain.transaction_count(retry_key.address()).await.unwrap(),
        1
    );
    assert_eq!(
        chain
            .transaction_count(serving_key.address())
            .await
            .unwrap(),
        0
    );
    let row = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(row.tx_hash, Some(settled.transaction.evm().unwrap()));
    assert_ne!(row.holder.as_deref(), Some(live));
    assert_paid_once(&h).await;
}

/// What an earlier settlement attempt left in the ledger for a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// Recorded failed (`failure` as its response) by a process that is gone.
    Failed,
    /// Claimed by a crashed earlier life of [`INSTANCE`], nothing recorded.
    Received,
    /// Recorded `submitted` by a crashed earlier life of [`INSTANCE`], never broadcast.
    Submitted,
}

async fn leave_row(
    h: &Harness,
    ledger: &dyn SettlementLedger,
    request: &FacilitatorRequest,
    left: Left,
    failure: &SettleResponse,
) {
    let k = ledger_key(h, request);
    let valid_before_s = u64::try_from(exact(request).authorization.valid_before).unwrap();
    let never_sent = B256::random();
    match left {
        Left::Failed => {
            record_unsent(
                ledger,
                &k,
                &claimant(request, DEAD),
                never_sent,
                valid_before_s,
                &paid_by(h, never_sent),
            )
            .await;
            ledger
                .finish(&k, failure, SettlementState::Failed)
                .await
                .unwrap();
        }
        Left::Received => {
            assert_eq!(
                ledger
                    .claim(&k, &claimant(request, EARLIER_LIFE))
                    .await
                    .unwrap(),
                Claim::Claimed
            );
        }
        Left::Submitted => {
            record_unsent(
                ledger,
                &k,
                &claimant(request, EARLIER_LIFE),
                never_sent,
                valid_before_s,
                &paid_by(h, never_sent),
            )
            .await;
        }
    }
}

/// An authorization used on chain by another transaction (a front-runner submitting it directly
/// to the token) that moved exactly what the payment names is paid: a duplicate /settle answers
/// success with that transaction and the row becomes confirmed with it, whether the row was
/// recorded failed or left `received` / `submitted` by a crashed earlier life. When the payer's
/// other authorization with the same nonce (another value) was used instead, the payment was not
/// made: the answer is a failure (`nonce_already_used` for rows a crash left), never success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_authorization_answers_success_with_the_transaction_that_paid() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let ledger = open(&database.url()).await;
    let key = funded_key(&chain).await;
    let front = &h.fixture.sender;
    let network = format!("eip155:{}", h.chain_id());
    let payer = Some(h.fixture.payer.address().into());
    let reverted = SettleResponse::failed(
        Reason::TRANSACTION_FAILED,
        "reverted",
        payer.clone(),
        network.clone(),
    );

    // Three rows: one recorded failed, two left by a crashed earlier life of this instance
    // (claimed only; recorded but never broadcast). Each authorization is then used on chain.
    let serving = facilitator_with(&chain, &key, ledger.clone(), named());
    for how in [Left::Failed, Left::Received, Left::Submitted] {
        let request = signed_request(&h).await;
        leave_row(&h, &*ledger, &request, how, &reverted).await;
        let paid = front_run(&h, front, &exact(&request)).await;
        let answer = serving.settle(&request).await;
        assert_eq!(
            answer,
            paid_by(&h, paid),
            "{how:?}: success with the transaction that paid"
        );
        let row = ledger
            .get(&ledger_key(&h, &request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, SettlementState::Confirmed, "{how:?}");
        assert_eq!(row.tx_hash, Some(paid), "{how:?}");
        assert_eq!(row.response, Some(paid_by(&h, paid)), "{how:?}");
        assert_eq!(
            serving.settle(&request).await,
            answer,
            "{how:?}: duplicates"
        );
    }
    assert_eq!(h.balance(h.pay_to).await, U256::from(3 * PRICE));

    // The payer's other authorization with the same nonce (another value) is used instead: this
    // payment was never made, whatever the row says.
    for how in [Left::Failed, Left::Received, Left::Submitted] {
        let request = signed_request(&h).await;
        leave_row(&h, &*ledger, &request, how, &reverted).await;
        let other = same_nonce_other_value(&h, &request).await;
        front_run(&h, front, &other).await;
        let answer = serving.settle(&request).await;
        assert!(!answer.success, "{how:?}: {answer:?}");
        assert_eq!(answer.transaction, "", "{how:?}");
        let row = ledger.get(&ledger_key(&h, &request)).await.unwrap();
        if how == Left::Failed {
            assert_eq!(answer, reverted, "the recorded failure");
            assert_eq!(row.unwrap().state, SettlementState::Failed);
        } else {
            assert_eq!(
                answer.error_reason,
                Some(Reason::NONCE_ALREADY_USED),
                "{how:?}: {answer:?}"
            );
            let row = row.expect("recorded, not released: the nonce can never be used again");
            assert_eq!(row.state, SettlementState::Failed, "{how:?}");
            assert_eq!(
                row.error_reason.as_deref(),
                Some(Reason::NONCE_ALREADY_USED.as_str())
            );
        }
    }
    assert_eq!(
        h.balance(h.pay_to).await,
        U256::from(3 * PRICE + 3 * (PRICE + 1))
    );
    assert_eq!(
        chain.transaction_count(key.address()).await.unwrap(),
        0,
        "the facilitator sent nothing"
    );
}

/// A real ledger that, when the facilitator records its transaction (signed, not yet
/// broadcast), first lets a front-runner use the same authorization on chain: the race in which
/// the facilitator's own transaction is mined and reverts.
struct FrontRunWhenRecorded {
    inner: Arc<dyn SettlementLedger>,
    chain: Arc<dyn EvmChain>,
    token: bursar_chain::Token,
    front_runner: Account,
    payload: ExactEvmPayload,
    /// The front-runner's transaction, and what the facilitator recorded.
    front_run: tokio::sync::Mutex<Option<B256>>,
    recorded: std::sync::Mutex<Vec<Submission>>,
}

#[async_trait::async_trait]
impl SettlementLedger for FrontRunWhenRecorded {
    async fn claim(
        &self,
        key: &SettlementKey,
        claimant: &Claimant,
    ) -> Result<Claim, DatabaseError> {
        self.inner.claim(key, claimant).await
    }

    async fn take_over(
        &self,
        seen: &SettlementRecord,
        holder: &str,
    ) -> Result<bool, DatabaseError> {
        self.inner.take_over(seen, holder).await
    }

    async fn get_by_payment_id(
        &self,
        payment_id: &str,
    ) -> Result<Option<SettlementRecord>, DatabaseError> {
        self.inner.get_by_payment_id(payment_id).await
    }

    async fn mark_batch_submitted(
        &self,
        holder: &str,
        items: &[(SettlementKey, Submission)],
    ) -> Result<(), DatabaseError> {
        self.inner.mark_batch_submitted(holder, items).await
    }

    async fn finish_many(
        &self,
        items: &[(SettlementKey, SettleResponse, SettlementState)],
    ) -> Result<u64, DatabaseError> {
        self.inner.finish_many(items).await
    }

    async fn release_unsent(
        &self,
        keys: &[SettlementKey],
        tx_hash: B256,
    ) -> Result<u64, DatabaseError> {
        self.inner.release_unsent(keys, tx_hash).await
    }

    async fn mark_submitted(
        &self,
        key: &SettlementKey,
        holder: &str,
        submission: &Submission,
    ) -> Result<(), DatabaseError> {
        let mut front_run = self.front_run.lock().await;
        if front_run.is_none() {
            let hash = self
                .token
                .submit_transfer_with_authorization(
                    &self.front_runner,
                    &self.payload.authorization,
                    &self.payload.signature,
                    Some(SETTLE_GAS_LIMIT),
                )
                .await
                .expect("the front-runner's transaction is accepted");
            let receipt = wait_for_receipt(self.chain.as_ref(), hash, Duration::from_secs(30))
                .await
                .expect("the front-runner's transaction is mined");
            assert!(receipt.success);
            *front_run = Some(hash);
        }
        self.recorded.lock().unwrap().push(submission.clone());
        self.inner.mark_submitted(key, holder, submission).await
    }

    async fn finish(
        &self,
        key: &SettlementKey,
        response: &SettleResponse,
        state: SettlementState,
    ) -> Result<(), DatabaseError> {
        self.inner.finish(key, response, state).await
    }

    async fn correct_to_paid(
        &self,
        key: &SettlementKey,
        response: &SettleResponse,
    ) -> Result<bool, DatabaseError> {
        self.inner.correct_to_paid(key, response).await
    }

    async fn release(
        &self,
        key: &SettlementKey,
        holder: Option<&str>,
    ) -> Result<bool, DatabaseError> {
        self.inner.release(key, holder).await
    }

    async fn unfinished(&self) -> Result<Vec<SettlementRecord>, DatabaseError> {
        self.inner.unfinished().await
    }

    async fn received_before(
        &self,
        created_before_ms: i64,
    ) -> Result<Vec<SettlementRecord>, DatabaseError> {
        self.inner.received_before(created_before_ms).await
    }

    async fn get(&self, key: &SettlementKey) -> Result<Option<SettlementRecord>, DatabaseError> {
        self.inner.get(key).await
    }
}

/// The live unbatched path: between signing and broadcasting the facilitator's transaction, a
/// front-runner uses the authorization (paying exactly what the payment names). The
/// facilitator's transaction is mined and reverts; the answer is success with the
/// front-runner's transaction, and the row is confirmed with it. The payee is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_run_settlement_answers_with_the_transaction_that_paid() {
    let chain = chain().await;
    let h = scenarios::harness(chain.clone()).await;
    let database = TempSqlite::new();
    let key = funded_key(&chain).await;
    let request = signed_request(&h).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let ledger = Arc::new(FrontRunWhenRecorded {
        inner: open(&database.url()).await,
        chain: evm.clone(),
        token: h.fixture.token.clone(),
        front_runner: Account::new(evm.clone(), funded_key(&chain).await),
        payload: exact(&request),
        front_run: Default::default(),
        recorded: Default::default(),
    });
    let serving = facilitator(&chain, &key, ledger.clone());
    let settled = serving.settle(&request).await;

    let front_run = ledger.front_run.lock().await.expect("the front-runner ran");
    assert_eq!(settled, paid_by(&h, front_run), "the transaction that paid");
    let recorded = ledger.recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].sender, key.address());
    let own: B256 = recorded[0].tx_hash;
    assert_ne!(own, front_run);
    let receipt = chain
        .receipt(own)
        .await
        .unwrap()
        .expect("our transaction was mined");
    assert!(!receipt.success, "and reverted: the authorization was used");
    assert_eq!(chain.transaction_count(key.address()).await.unwrap(), 1);
    let row = ledger
        .get(&ledger_key(&h, &request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SettlementState::Confirmed);
    assert_eq!(row.tx_hash, Some(front_run));
    assert_eq!(row.response, Some(paid_by(&h, front_run)));
    assert_eq!(serving.settle(&request).await, settled, "duplicates");
    assert_paid_once(&h).await;
}
