//! The runtime store conformance suite (wallets, grants, sessions, two-phase transfers, the
//! ledger, data migrations), run against SQLite (a temporary file) and PostgreSQL (a fresh
//! database per case).

use std::sync::Arc;

use alloy_primitives::{Address, B256, address, b256};
use bursar_protocol::{Amount, Network};
use bursar_store::runtime::{
    Created, DenyReason, EntryKind, NewGrant, NewSession, NewTransfer, NewWallet, Observed,
    Reservation, SpendCap, TransferState,
};
use bursar_store::{KeyDigest, RuntimeStore, StoreError, open_runtime_store};

const NETWORK: Network = Network::Eip155(31337);
const ASSET: Address = address!("0x5fbdb2315678afecb367f032d93f642f64180aa3");
const PAYER: Address = address!("0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
const PAYEE: Address = address!("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc");

async fn store(url: &str) -> Arc<dyn RuntimeStore> {
    open_runtime_store(url)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A wallet, a grant for `agent` and a session with `max` atomic units.
async fn session_with(store: &dyn RuntimeStore, max: u64) -> (String, String, String) {
    let wallet = store
        .create_wallet(NewWallet {
            name: format!("w-{}", rand_suffix()),
            address: Address::random(),
            keystore: "{}".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let grant = store
        .create_grant(NewGrant {
            wallet_id: wallet.id.clone(),
            agent: "agent-1".into(),
            expires_at_ms: now_ms() + 3_600_000,
            request: "60m".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let session = store
        .create_session(new_session(&grant.id, max, None))
        .await
        .unwrap()
        .into_inner();
    (wallet.id, grant.id, session.id)
}

fn new_session(grant_id: &str, max: u64, client_token: Option<&str>) -> NewSession {
    NewSession {
        grant_id: grant_id.into(),
        network: NETWORK,
        asset: ASSET,
        currency: "USDC".into(),
        max_spend: Amount::from(max),
        expires_at_ms: now_ms() + 600_000,
        client_token: client_token.map(str::to_string),
        request: "10m".into(),
    }
}

fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn transfer(session_id: &str, amount: u64) -> NewTransfer {
    NewTransfer {
        session_id: session_id.into(),
        network: NETWORK,
        asset: ASSET,
        payer: PAYER,
        payee: PAYEE,
        amount: Amount::from(amount),
        nonce: B256::random(),
        valid_before_s: 4_000_000_000,
        resource: "http://127.0.0.1/paid".into(),
        endpoint: "http://127.0.0.1/paid".into(),
        caps: Vec::new(),
    }
}

async fn reserved(store: &dyn RuntimeStore, transfer: NewTransfer) -> String {
    match store.reserve(transfer).await.unwrap() {
        Reservation::Reserved(record) => record.id,
        Reservation::Denied { reason, message } => panic!("denied {reason:?}: {message}"),
    }
}

/// Creating with the same idempotency key and content returns the first row; other content is a
/// conflict; names and addresses are unique.
pub async fn creates_are_idempotent(url: &str) {
    let store = store(url).await;
    let wallet = NewWallet {
        name: "ops".into(),
        address: address!("0xAbC0000000000000000000000000000000000001"),
        keystore: "{\"version\":3}".into(),
        idempotency_key: Some("create-ops".into()),
    };
    let first = store.create_wallet(wallet.clone()).await.unwrap();
    assert!(first.is_new());
    let first = first.into_inner();
    assert_eq!(
        store
            .wallet("0xABC0000000000000000000000000000000000001")
            .await
            .unwrap()
            .map(|wallet| wallet.id),
        Some(first.id.clone()),
        "found by its address in any case"
    );
    let again = store.create_wallet(wallet.clone()).await.unwrap();
    assert_eq!(again, Created::Existing(first.clone()));
    let mut other = wallet.clone();
    other.name = "ops-2".into();
    assert!(matches!(
        store.create_wallet(other).await,
        Err(StoreError::Conflict(_))
    ));
    let mut same_name = wallet.clone();
    same_name.idempotency_key = None;
    assert!(matches!(
        store.create_wallet(same_name).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.wallet("ops").await.unwrap().unwrap(), first);
    assert_eq!(
        store
            .wallet("0xABC0000000000000000000000000000000000001")
            .await
            .unwrap()
            .unwrap(),
        first
    );

    let grant = |key: &str, request: &str| NewGrant {
        wallet_id: first.id.clone(),
        agent: "researcher".into(),
        expires_at_ms: now_ms() + 60_000,
        request: request.into(),
        idempotency_key: Some(key.into()),
    };
    let made = store.create_grant(grant("g1", "60m")).await.unwrap();
    assert!(made.is_new());
    let made = made.into_inner();
    assert_eq!(
        store.create_grant(grant("g1", "60m")).await.unwrap(),
        Created::Existing(made.clone())
    );
    assert!(matches!(
        store.create_grant(grant("g1", "30m")).await,
        Err(StoreError::Conflict(_))
    ));

    let session = store
        .create_session(new_session(&made.id, 100, Some("run-7")))
        .await
        .unwrap();
    assert!(session.is_new());
    let session = session.into_inner();
    let again = store
        .create_session(new_session(&made.id, 100, Some("run-7")))
        .await
        .unwrap();
    assert_eq!(again, Created::Existing(session.clone()));
    assert!(matches!(
        store
            .create_session(new_session(&made.id, 101, Some("run-7")))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(session.expires_at_ms <= made.expires_at_ms);
}

/// A reservation and its decision commit together: the decision names the transfer and joins
/// the hash chain; a denial writes its deny entry and no decision (the caller records that one);
/// racing reservations keep the budget and the chain intact.
pub async fn reservations_carry_their_decision(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 300).await;
    let decision = |amount: u64| bursar_store::NewDecision {
        session_id: Some(session_id.clone()),
        wallet_id: None,
        agent: None,
        transfer_id: None,
        resource: Some("http://127.0.0.1/paid".into()),
        payee: Some(format!("{PAYEE:#x}")),
        amount: Some(Amount::from(amount)),
        allowed: true,
        reason: None,
        rules: serde_json::json!([{"rule": "session_budget_and_windows", "passed": true}]),
    };
    let Reservation::Reserved(record) = store
        .reserve_and_decide(transfer(&session_id, 100), decision(100))
        .await
        .unwrap()
    else {
        panic!("reserved");
    };
    let decisions = store.decision_store();
    let trace = decisions.decisions_for(&record.id).await.unwrap();
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0].transfer_id.as_deref(), Some(record.id.as_str()));
    assert_eq!(trace[0].amount, Some(Amount::from(100u64)));
    assert!(trace[0].allowed);

    let denied = store
        .reserve_and_decide(transfer(&session_id, 250), decision(250))
        .await
        .unwrap();
    assert!(matches!(
        denied,
        Reservation::Denied {
            reason: DenyReason::BudgetExhausted,
            ..
        }
    ));
    assert_eq!(decisions.decisions(0, 100).await.unwrap().len(), 1);
    let denies = store.entries(0, 100).await.unwrap();
    assert_eq!(
        denies.iter().filter(|e| e.kind == EntryKind::Deny).count(),
        1,
        "the denial's ledger entry is written"
    );

    let racing = (0..10).map(|_| {
        let store = store.clone();
        let (transfer, decision) = (transfer(&session_id, 50), decision(50));
        async move { store.reserve_and_decide(transfer, decision).await.unwrap() }
    });
    let results = futures::future::join_all(racing).await;
    let reserved = results
        .iter()
        .filter(|r| matches!(r, Reservation::Reserved(_)))
        .count();
    assert_eq!(reserved, 4, "200 of the budget was left: four of 50");
    let session = store.session(&session_id).await.unwrap().unwrap();
    assert_eq!(session.reserved, Amount::from(300u64));
    assert_eq!(decisions.decisions(0, 100).await.unwrap().len(), 5);
    let check = decisions.verify_decisions().await.unwrap();
    assert_eq!(check.checked, 5);
    assert!(check.broken.is_none(), "{:?}", check.broken);
}

/// Concurrent reservations never overspend: with a budget for 20, 50 racing requests reserve
/// exactly 20 and 30 are denied for the budget, each with a deny entry.
pub async fn reservations_are_atomic(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 20 * 7).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        let transfer = transfer(&session_id, 7);
        tasks.push(tokio::spawn(async move { store.reserve(transfer).await }));
    }
    let mut reserved = 0;
    let mut denied = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Reservation::Reserved(_) => reserved += 1,
            Reservation::Denied { reason, .. } => {
                assert_eq!(reason, DenyReason::BudgetExhausted);
                denied += 1;
            }
        }
    }
    assert_eq!((reserved, denied), (20, 30));
    let session = store.session(&session_id).await.unwrap().unwrap();
    assert_eq!(session.reserved, Amount::from(140u64));
    assert_eq!(session.posted, Amount::ZERO);
    assert_eq!(session.remaining(), Amount::ZERO);
    let entries = store.entries(0, 1000).await.unwrap();
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EntryKind::Reserve), 20);
    assert_eq!(count(EntryKind::Deny), 30);
    assert!(entries.windows(2).all(|pair| pair[0].seq < pair[1].seq));
}

/// Reservations made at once, some of which fail (an unknown session, a validity window out of
/// range), some denied: each outcome is its own. (On SQLite they share transactions, each in
/// its own savepoint: a failed one must undo its own writes and none of the others'.)
pub async fn failed_reservations_spoil_none_of_the_others(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 5 * 7).await;
    let (_, _, other_id) = session_with(store.as_ref(), 1_000).await;
    let reused = B256::repeat_byte(0x5e);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        let mut transfer = transfer(&session_id, 7);
        match i % 5 {
            0 => transfer.session_id = format!("ses_missing_{i}"),
            1 => transfer.valid_before_s = u64::MAX,
            // One authorization offered ten times: it is reserved once; the others fail on
            // the uniqueness of (network, asset, payer, nonce) after locking their session.
            2 => {
                transfer.session_id = other_id.clone();
                transfer.nonce = reused;
            }
            _ => {}
        }
        tasks.push(tokio::spawn(async move { store.reserve(transfer).await }));
    }
    let (mut reserved, mut denied, mut not_found, mut invalid, mut failed) = (0, 0, 0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(Reservation::Reserved(_)) => reserved += 1,
            Ok(Reservation::Denied { reason, .. }) => {
                assert_eq!(reason, DenyReason::BudgetExhausted);
                denied += 1;
            }
            Err(StoreError::NotFound(_)) => not_found += 1,
            Err(StoreError::Invalid(_)) => invalid += 1,
            Err(StoreError::Store(_)) => failed += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (reserved, denied, not_found, invalid, failed),
        (6, 15, 10, 10, 9)
    );
    let session = store.session(&session_id).await.unwrap().unwrap();
    assert_eq!(session.reserved, Amount::from(35u64));
    let other = store.session(&other_id).await.unwrap().unwrap();
    assert_eq!(other.reserved, Amount::from(7u64), "the reused nonce once");
    let entries = store.entries(0, 1000).await.unwrap();
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!((count(EntryKind::Reserve), count(EntryKind::Deny)), (6, 15));
    assert_eq!(store.transfers(Some(&session_id)).await.unwrap().len(), 5);
    assert_eq!(store.transfers(Some(&other_id)).await.unwrap().len(), 1);
}

/// Post and void resolve a pending transfer once; totals move with them.
pub async fn transfers_resolve_exactly_once(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 100).await;
    let first = reserved(store.as_ref(), transfer(&session_id, 30)).await;
    let second = reserved(store.as_ref(), transfer(&session_id, 50)).await;
    let tx = b256!("0xAA00000000000000000000000000000000000000000000000000000000000001");
    store.note_tx_hash(&first, tx).await.unwrap();

    let (a, b) = tokio::join!(store.post(&first, None), store.post(&first, None));
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|won| **won).count(),
        1
    );
    assert!(!store.void(&first, "late").await.unwrap());
    assert!(store.void(&second, "expired unused").await.unwrap());
    assert!(!store.post(&second, None).await.unwrap());

    let session = store.session(&session_id).await.unwrap().unwrap();
    assert_eq!(session.posted, Amount::from(30u64));
    assert_eq!(session.reserved, Amount::ZERO);
    assert_eq!(session.remaining(), Amount::from(70u64));
    let posted = store.transfer(&first).await.unwrap().unwrap();
    assert_eq!(posted.state, TransferState::Posted);
    assert_eq!(posted.tx_hash, Some(tx));
    let voided = store.transfer(&second).await.unwrap().unwrap();
    assert_eq!(voided.state, TransferState::Voided);
    assert_eq!(voided.void_reason.as_deref(), Some("expired unused"));
    assert!(store.pending_transfers(10).await.unwrap().is_empty());

    let entries = store.entries(0, 100).await.unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Reserve,
            EntryKind::Reserve,
            EntryKind::Post,
            EntryKind::Void
        ]
    );
    assert_eq!(entries[2].tx_hash, Some(tx));
    assert_eq!(entries[2].amount, Some(Amount::from(30u64)));
    assert_eq!(entries[3].reason.as_deref(), Some("expired unused"));
}

/// Closed sessions, revoked grants (one or all) and other currencies are denied with their code.
pub async fn refusals_have_reasons(url: &str) {
    let store = store(url).await;
    let (wallet_id, grant_id, session_id) = session_with(store.as_ref(), 100).await;
    let mut other_asset = transfer(&session_id, 1);
    other_asset.asset = PAYEE;
    let denied = |reservation: Reservation| match reservation {
        Reservation::Denied { reason, .. } => reason,
        Reservation::Reserved(record) => panic!("reserved {record:?}"),
    };
    assert_eq!(
        denied(store.reserve(other_asset).await.unwrap()),
        DenyReason::CurrencyMismatch
    );
    assert!(
        store
            .revoke_grant(&grant_id, "owner said stop")
            .await
            .unwrap()
    );
    assert!(!store.revoke_grant(&grant_id, "again").await.unwrap());
    assert_eq!(
        denied(store.reserve(transfer(&session_id, 1)).await.unwrap()),
        DenyReason::GrantRevoked
    );
    assert!(matches!(
        store.create_session(new_session(&grant_id, 5, None)).await,
        Err(StoreError::Invalid(_))
    ));

    // The kill switch revokes every live grant of the wallet.
    let more = store
        .create_grant(NewGrant {
            wallet_id: wallet_id.clone(),
            agent: "agent-2".into(),
            expires_at_ms: now_ms() + 60_000,
            request: "1m".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let session = store
        .create_session(new_session(&more.id, 5, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        store
            .revoke_all_grants(Some(&wallet_id), "kill switch")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        denied(store.reserve(transfer(&session.id, 1)).await.unwrap()),
        DenyReason::GrantRevoked
    );

    let (_, _, closed) = session_with(store.as_ref(), 100).await;
    assert!(store.close_session(&closed).await.unwrap());
    assert_eq!(
        denied(store.reserve(transfer(&closed, 1)).await.unwrap()),
        DenyReason::SessionClosed
    );
    assert!(matches!(
        store.reserve(transfer("ses_missing", 1)).await,
        Err(StoreError::NotFound(_))
    ));
    let entries = store.entries(0, 100).await.unwrap();
    assert!(entries.iter().all(|e| e.kind == EntryKind::Deny));
    assert!(
        entries
            .iter()
            .any(|e| e.reason.as_deref().unwrap().starts_with("grant_revoked"))
    );
}

/// The ledger refuses edits and deletions; operator keys are stored as digests only.
pub async fn ledger_is_append_only(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 100).await;
    reserved(store.as_ref(), transfer(&session_id, 1)).await;
    let pool_url = url.to_string();
    let tamper = async {
        use sqlx::Connection;
        if pool_url.starts_with("sqlite") {
            let mut connection = sqlx::SqliteConnection::connect(&pool_url).await.unwrap();
            let update = sqlx::query("UPDATE ledger_entries SET amount = '0'")
                .execute(&mut connection)
                .await;
            let delete = sqlx::query("DELETE FROM ledger_entries")
                .execute(&mut connection)
                .await;
            (update.is_err(), delete.is_err())
        } else {
            let mut connection = sqlx::PgConnection::connect(&pool_url).await.unwrap();
            let update = sqlx::query("UPDATE ledger_entries SET amount = '0'")
                .execute(&mut connection)
                .await;
            let delete = sqlx::query("DELETE FROM ledger_entries")
                .execute(&mut connection)
                .await;
            (update.is_err(), delete.is_err())
        }
    };
    assert_eq!(tamper.await, (true, true));
    let entries = store.entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].amount, Some(Amount::from(1u64)));

    let key = store.create_operator_key("ops team").await.unwrap();
    assert!(key.key.starts_with("bok_"));
    assert!(!format!("{key:?}").contains(&key.key));
    let found = store.operator_key(&KeyDigest::of(&key.key)).await.unwrap();
    assert_eq!(found.as_ref(), Some(&key.record));
    assert!(store.revoke_operator_key(&key.record.id).await.unwrap());
    assert!(
        store
            .operator_key(&KeyDigest::of(&key.key))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.put_meta_if_absent("k", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.put_meta_if_absent("k", "second").await.unwrap(),
        "first"
    );
}

/// A cap over a rolling window holds across all sessions of a wallet, under concurrency; the
/// agent-only cap counts only that agent's transfers; posted transfers count, voided ones not.
pub async fn window_caps_span_sessions(url: &str) {
    let store = store(url).await;
    let (wallet_id, grant_id, first) = session_with(store.as_ref(), 1_000).await;
    let second = store
        .create_session(new_session(&grant_id, 1_000, None))
        .await
        .unwrap()
        .into_inner()
        .id;
    let cap = |agent_only: bool, max: u64| SpendCap {
        agent_only,
        period_ms: 3_600_000,
        max: Amount::from(max),
        label: "test cap".into(),
    };
    let mut tasks = Vec::new();
    for index in 0..30 {
        let store = store.clone();
        let session = if index % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let mut transfer = transfer(&session, 10);
        transfer.caps = vec![cap(false, 100)];
        tasks.push(tokio::spawn(async move {
            store.reserve(transfer).await.unwrap()
        }));
    }
    let mut reserved = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Reservation::Reserved(record) => reserved.push(record.id),
            Reservation::Denied { reason, .. } => assert_eq!(reason, DenyReason::WindowCapExceeded),
        }
    }
    assert_eq!(
        reserved.len(),
        10,
        "the wallet cap of 100 allows ten payments of 10"
    );
    // Voiding one frees its share of the window; posting keeps it counted.
    assert!(store.void(&reserved[0], "test").await.unwrap());
    assert!(store.post(&reserved[1], None).await.unwrap());
    let mut again = transfer(&first, 10);
    again.caps = vec![cap(false, 100)];
    assert!(matches!(
        store.reserve(again.clone()).await.unwrap(),
        Reservation::Reserved(_)
    ));
    assert!(matches!(
        store.reserve(again).await.unwrap(),
        Reservation::Denied {
            reason: DenyReason::WindowCapExceeded,
            ..
        }
    ));
    // Another agent on the same wallet: the agent-only cap does not count agent-1's spending.
    let other = store
        .create_grant(NewGrant {
            wallet_id,
            agent: "agent-2".into(),
            expires_at_ms: now_ms() + 60_000,
            request: "1m".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let session = store
        .create_session(new_session(&other.id, 1_000, None))
        .await
        .unwrap()
        .into_inner();
    let mut theirs = transfer(&session.id, 10);
    theirs.caps = vec![cap(true, 10)];
    assert!(matches!(
        store.reserve(theirs.clone()).await.unwrap(),
        Reservation::Reserved(_)
    ));
    assert!(matches!(
        store.reserve(theirs).await.unwrap(),
        Reservation::Denied {
            reason: DenyReason::WindowCapExceeded,
            ..
        }
    ));
}

/// Transfers page through in order, each exactly once, also when many share a creation
/// millisecond (the id breaks ties), for one session and across all.
pub async fn transfers_page_through_everything(url: &str) {
    let store = store(url).await;
    let (_, _, one) = session_with(store.as_ref(), 1_000).await;
    let (_, _, two) = session_with(store.as_ref(), 1_000).await;
    let mut ids_one = Vec::new();
    for index in 0..7 {
        ids_one.push(reserved(store.as_ref(), transfer(&one, 1)).await);
        if index % 3 == 0 {
            reserved(store.as_ref(), transfer(&two, 1)).await;
        }
    }
    let pages = |session: Option<String>, limit: usize| {
        let store = store.clone();
        async move {
            let mut seen: Vec<(i64, String)> = Vec::new();
            let mut pages = 0;
            loop {
                let after = seen.last().map(|(ms, id)| (*ms, id.as_str()));
                let page = store
                    .transfers_page(session.as_deref(), after, limit)
                    .await
                    .unwrap();
                assert!(page.len() <= limit);
                if page.is_empty() {
                    return (seen, pages);
                }
                pages += 1;
                seen.extend(page.into_iter().map(|t| (t.created_at_ms, t.id)));
            }
        }
    };
    let (of_one, page_count) = pages(Some(one.clone()), 2).await;
    assert_eq!(page_count, 4);
    let mut sorted = of_one.clone();
    sorted.sort();
    assert_eq!(of_one, sorted, "oldest first, then by id");
    let mut expected = ids_one.clone();
    expected.sort();
    let mut got: Vec<String> = of_one.into_iter().map(|(_, id)| id).collect();
    got.sort();
    assert_eq!(got, expected, "every transfer of the session, once");

    let (all, _) = pages(None, 3).await;
    assert_eq!(all.len(), 10);
    let listed: Vec<(i64, String)> = store
        .transfers(None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.created_at_ms, t.id))
        .collect();
    assert_eq!(all, listed);
    assert_eq!(store.transfers(Some(&two)).await.unwrap().len(), 3);
}

/// A session's payments to one endpoint: counted without voided ones, the oldest first, and
/// the times of those since a moment; other endpoints and other sessions are apart.
pub async fn endpoint_payments_are_per_session_and_endpoint(url: &str) {
    let store = store(url).await;
    let (_, _, one) = session_with(store.as_ref(), 1_000).await;
    let (_, _, two) = session_with(store.as_ref(), 1_000).await;
    let to = |session: &str, endpoint: &str, amount: u64| {
        let mut transfer = transfer(session, amount);
        transfer.resource = format!("{endpoint}?q={amount}");
        transfer.endpoint = endpoint.to_string();
        transfer
    };
    let (a, b) = ("http://127.0.0.1/a", "http://127.0.0.1/b");
    let first = reserved(store.as_ref(), to(&one, a, 11)).await;
    let voided = reserved(store.as_ref(), to(&one, a, 12)).await;
    assert!(store.void(&voided, "expired unused").await.unwrap());
    let before_third = now_ms();
    reserved(store.as_ref(), to(&one, a, 13)).await;
    reserved(store.as_ref(), to(&one, b, 14)).await;
    reserved(store.as_ref(), to(&two, a, 15)).await;

    let paid = store.endpoint_payments(&one, a, 0).await.unwrap();
    assert_eq!(paid.count, 2, "the voided one does not count");
    let oldest = paid.first.as_ref().unwrap();
    assert_eq!(oldest.id, first);
    assert_eq!(oldest.amount, Amount::from(11u64));
    assert_eq!(paid.recent_at_ms.len(), 2);
    let recent = store
        .endpoint_payments(&one, a, before_third)
        .await
        .unwrap();
    assert_eq!(recent.count, 2);
    assert_eq!(recent.recent_at_ms.len(), 1);
    assert!(recent.recent_at_ms[0] >= before_third);
    assert_eq!(store.endpoint_payments(&one, b, 0).await.unwrap().count, 1);
    assert_eq!(store.endpoint_payments(&two, a, 0).await.unwrap().count, 1);
    let none = store
        .endpoint_payments(&one, "http://127.0.0.1/c", 0)
        .await
        .unwrap();
    assert_eq!(none, Default::default());
}

/// The statement of `migration` that starts with `UPDATE` (comments dropped).
fn update_statement(migration: &str) -> String {
    statement_starting(migration, "UPDATE")
}

/// The statement of `migration` that starts with `prefix` (comments dropped).
fn statement_starting(migration: &str, prefix: &str) -> String {
    let code: String = migration
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .find(|statement| statement.starts_with(prefix))
        .unwrap_or_else(|| panic!("the migration has a statement starting {prefix}"))
        .to_string()
}

/// Runs `statements` on the database at `url`, outside the store.
async fn run_sql(url: &str, statements: &[String]) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&pool)
                .await
                .unwrap();
        }
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

/// Reads one text value from the database at `url`, outside the store.
async fn fetch_text(url: &str, query: &str) -> String {
    let query = sqlx::AssertSqlSafe(query.to_string());
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&pool).await.unwrap()
    }
}

/// Addresses, hashes and networks go into their columns in one text form (lowercase `0x` hex,
/// CAIP-2) and come back typed; a value that does not read back is a corrupt row, never a
/// guess or a silently missing field.
pub async fn stored_values_are_canonical_and_fail_closed(url: &str) {
    let store = store(url).await;
    let (_, _, session_id) = session_with(store.as_ref(), 100).await;
    let mut new = transfer(&session_id, 10);
    new.nonce = b256!("0xABCDEF0000000000000000000000000000000000000000000000000000000001");
    let id = reserved(store.as_ref(), new).await;
    let tx = b256!("0xBB00000000000000000000000000000000000000000000000000000000000002");
    assert!(store.post(&id, Some(tx)).await.unwrap());
    let column = |name: &str| format!("SELECT {name} FROM transfers WHERE id = '{id}'");
    assert_eq!(
        fetch_text(url, &column("payee")).await,
        "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"
    );
    assert_eq!(
        fetch_text(url, &column("nonce")).await,
        "0xabcdef0000000000000000000000000000000000000000000000000000000001"
    );
    assert_eq!(
        fetch_text(url, &column("tx_hash")).await,
        "0xbb00000000000000000000000000000000000000000000000000000000000002"
    );
    assert_eq!(fetch_text(url, &column("network")).await, "eip155:31337");
    let record = store.transfer(&id).await.unwrap().unwrap();
    assert_eq!((record.payee, record.tx_hash), (PAYEE, Some(tx)));

    for (column, bad) in [
        ("payee", "not an address"),
        ("nonce", "0x1234"),
        ("tx_hash", "0xnothex"),
        ("network", ""),
    ] {
        run_sql(
            url,
            &[format!(
                "UPDATE transfers SET {column} = '{bad}' WHERE id = '{id}'"
            )],
        )
        .await;
        match store.transfer(&id).await {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(column), "{column}: {message}")
            }
            other => panic!("{column} = {bad:?} read back as {other:?}"),
        }
        // Put the canonical value back before breaking the next column.
        let canonical = match column {
            "payee" => format!("{PAYEE:#x}"),
            "nonce" => "0xabcdef0000000000000000000000000000000000000000000000000000000001".into(),
            "tx_hash" => format!("{tx:#x}"),
            _ => NETWORK.to_string(),
        };
        run_sql(
            url,
            &[format!(
                "UPDATE transfers SET {column} = '{canonical}' WHERE id = '{id}'"
            )],
        )
        .await;
        assert_eq!(store.transfer(&id).await.unwrap().unwrap(), record);
    }
}

/// Validation pauses belong to the policy that observed the failures: three failures in a row
/// under one policy pause the endpoint for that policy only; a pass starts the count again; an
/// operator lifts a pause by policy and endpoint.
pub async fn pauses_are_per_policy(url: &str) {
    let store = store(url).await;
    let (wallet, _, session) = session_with(store.as_ref(), 1_000).await;
    let observed = Observed {
        wallet_id: &wallet,
        session_id: &session,
    };
    let endpoint = "http://127.0.0.1:9/garbage";
    let mine = format!("session {session}");
    let policies = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    for attempt in 1..=2u64 {
        let health = store
            .record_validation(&mine, endpoint, observed, Some("not JSON"), 3, 60_000)
            .await
            .unwrap();
        assert_eq!(health.consecutive_failures, attempt);
        assert_eq!(health.paused_until_ms, None);
    }
    // A pass starts again.
    let health = store
        .record_validation(&mine, endpoint, observed, None, 3, 60_000)
        .await
        .unwrap();
    assert_eq!(health.consecutive_failures, 0);
    let before = now_ms();
    for _ in 0..3 {
        store
            .record_validation(&mine, endpoint, observed, Some("not JSON"), 3, 60_000)
            .await
            .unwrap();
    }
    let health = store
        .endpoint_health(&mine, endpoint)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.consecutive_failures, 3);
    assert!(health.paused_until_ms.unwrap() >= before + 60_000);
    assert_eq!(health.wallet_id.as_deref(), Some(wallet.as_str()));
    assert_eq!(health.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(health.last_failure.as_deref(), Some("not JSON"));
    // Another policy's failures are counted apart and pause nothing yet.
    store
        .record_validation(
            "default policy",
            endpoint,
            observed,
            Some("schema"),
            3,
            60_000,
        )
        .await
        .unwrap();
    let found = store
        .endpoint_pauses(
            &policies(&["default policy", &mine, "wallet other"]),
            endpoint,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].policy, mine);
    assert!(
        store
            .endpoint_pauses(&policies(&["default policy", "session other"]), endpoint)
            .await
            .unwrap()
            .is_empty(),
        "a session under other policies is not paused"
    );
    assert!(
        store
            .endpoint_pauses(&policies(&[&mine]), "http://127.0.0.1:9/other")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .endpoint_pauses(&[], endpoint)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.paused_endpoints(None).await.unwrap().len(), 1);
    assert_eq!(store.paused_endpoints(Some(&mine)).await.unwrap().len(), 1);
    assert!(
        store
            .paused_endpoints(Some("default policy"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.lift_pause("default policy", endpoint).await.unwrap());
    assert!(store.lift_pause(&mine, endpoint).await.unwrap());
    assert!(
        !store.lift_pause(&mine, endpoint).await.unwrap(),
        "lifted once"
    );
    assert!(
        store
            .endpoint_pauses(&policies(&[&mine]), endpoint)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .endpoint_health(&mine, endpoint)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
}

/// The backoff's count of 402s to paid requests is in the database: increments from two
/// handles on one database (as from two runtimes) add up, per session and endpoint, and a
/// clear starts again.
pub async fn rejections_add_up_across_handles(url: &str) {
    let one = store(url).await;
    let two = store(url).await;
    let (_, _, session) = session_with(one.as_ref(), 1_000).await;
    let (_, _, other) = session_with(one.as_ref(), 1_000).await;
    let endpoint = "http://127.0.0.1:9/rejects";
    assert_eq!(one.rejections(&session, endpoint).await.unwrap(), None);
    let base = now_ms();
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let handle = if i % 2 == 0 { one.clone() } else { two.clone() };
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            handle
                .note_rejection(&session, endpoint, base + i)
                .await
                .unwrap()
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap().count);
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=20).collect::<Vec<u32>>(),
        "each increment seen once"
    );
    let seen = two.rejections(&session, endpoint).await.unwrap().unwrap();
    assert_eq!(seen.count, 20);
    assert_eq!(seen.last_at_ms, base + 19, "the latest time is kept");
    assert_eq!(one.rejections(&other, endpoint).await.unwrap(), None);
    assert_eq!(
        one.rejections(&session, "http://127.0.0.1:9/else")
            .await
            .unwrap(),
        None
    );
    two.clear_rejections(&session, endpoint).await.unwrap();
    assert_eq!(one.rejections(&session, endpoint).await.unwrap(), None);
    let again = one.note_rejection(&session, endpoint, base).await.unwrap();
    assert_eq!(again.count, 1);
}

/// Migration 0013 keeps the pauses of the old per-wallet table as pauses of the wallet's policy.
async fn wallet_pauses_are_kept(url: &str, old_table: &str, migration: &str) {
    let store = store(url).await;
    let until = now_ms() + 3_600_000;
    let statements = [
        statement_starting(old_table, "CREATE TABLE"),
        format!(
            "INSERT INTO endpoint_health (wallet_id, endpoint, consecutive_failures, \
             last_failure, paused_until_ms, updated_at_ms) \
             VALUES ('wal_old', 'http://127.0.0.1:9/x', 3, 'not JSON', {until}, 1)"
        ),
        statement_starting(migration, "INSERT INTO endpoint_pauses"),
        statement_starting(migration, "DROP TABLE"),
    ];
    run_sql(url, &statements).await;
    let kept = store
        .endpoint_health("wallet wal_old", "http://127.0.0.1:9/x")
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(kept.consecutive_failures, 3);
    assert_eq!(kept.paused_until_ms, Some(until));
    assert_eq!(kept.last_failure.as_deref(), Some("not JSON"));
    assert_eq!(kept.wallet_id.as_deref(), Some("wal_old"));
    assert_eq!(kept.session_id, None);
}

#[tokio::test]
async fn sqlite_wallet_pauses_are_kept() {
    let database = bursar_store::testkit::TempSqlite::new();
    wallet_pauses_are_kept(
        &database.url(),
        include_str!("../migrations/sqlite/0006_endpoint_health.sql"),
        include_str!("../migrations/sqlite/0013_policy_state.sql"),
    )
    .await;
}

#[tokio::test]
async fn postgres_wallet_pauses_are_kept() {
    let database = bursar_store::testkit::TempPostgres::create().await;
    wallet_pauses_are_kept(
        database.url(),
        include_str!("../migrations/postgres/0006_endpoint_health.sql"),
        include_str!("../migrations/postgres/0013_policy_state.sql"),
    )
    .await;
}

/// Migration 0011 gives transfers written before it the endpoint of their resource: the URL
/// without its query string and fragment, as the runtime computes it for new transfers.
async fn transfer_endpoints_are_backfilled(url: &str, migration: &str) {
    let store = store(url).await;
    let (_, _, session) = session_with(store.as_ref(), 1_000).await;
    let resources = [
        (
            "https://api.example.com:8443/v1/report?city=Lisbon&units=metric",
            "https://api.example.com:8443/v1/report",
        ),
        ("http://127.0.0.1/paid#section", "http://127.0.0.1/paid"),
        ("http://127.0.0.1/paid", "http://127.0.0.1/paid"),
        ("http://[::1]:9000/x/y?q=1#f", "http://[::1]:9000/x/y"),
    ];
    for (resource, endpoint) in resources {
        // The expectation follows the runtime's endpoint rule.
        let parsed = url::Url::parse(resource).unwrap();
        let expected = format!(
            "{}://{}{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap(),
            parsed.port().map(|p| format!(":{p}")).unwrap_or_default(),
            parsed.path()
        );
        assert_eq!(expected, endpoint);
        let mut new = transfer(&session, 1);
        new.resource = resource.to_string();
        new.endpoint = "written before the migration".into();
        reserved(store.as_ref(), new).await;
    }
    // As if written before the column existed, then the migration's backfill.
    let statements = [
        "UPDATE transfers SET endpoint = NULL".to_string(),
        update_statement(migration),
    ];
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    for (endpoint, count) in [
        ("https://api.example.com:8443/v1/report", 1),
        ("http://127.0.0.1/paid", 2),
        ("http://[::1]:9000/x/y", 1),
        ("written before the migration", 0),
    ] {
        let paid = store
            .endpoint_payments(&session, endpoint, 0)
            .await
            .unwrap();
        assert_eq!(paid.count, count, "{endpoint}");
    }
}

#[tokio::test]
async fn sqlite_transfer_endpoints_are_backfilled() {
    let database = bursar_store::testkit::TempSqlite::new();
    transfer_endpoints_are_backfilled(
        &database.url(),
        include_str!("../migrations/sqlite/0011_transfer_endpoints.sql"),
    )
    .await;
}

#[tokio::test]
async fn postgres_transfer_endpoints_are_backfilled() {
    let database = bursar_store::testkit::TempPostgres::create().await;
    transfer_endpoints_are_backfilled(
        database.url(),
        include_str!("../migrations/postgres/0011_transfer_endpoints.sql"),
    )
    .await;
}

macro_rules! conformance {
    ($backend:ident, $database:expr, $url:ident) => {
        mod $backend {
            conformance!(@cases $database, $url;
                creates_are_idempotent,
                reservations_are_atomic,
                reservations_carry_their_decision,
                failed_reservations_spoil_none_of_the_others,
                transfers_resolve_exactly_once,
                refusals_have_reasons,
                ledger_is_append_only,
                window_caps_span_sessions,
                transfers_page_through_everything,
                endpoint_payments_are_per_session_and_endpoint,
                pauses_are_per_policy,
                rejections_add_up_across_handles,
                stored_values_are_canonical_and_fail_closed
            );
        }
    };
    (@cases $database:expr, $url:ident; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let database = $database;
                super::$case(&database.$url()).await;
            }
        )*
    };
}

conformance!(sqlite, bursar_store::testkit::TempSqlite::new(), url);
conformance!(
    postgres,
    bursar_store::testkit::TempPostgres::create().await,
    url
);

/// A SQLite store outlives the tokio runtime its reservation committer was started in (a
/// process that builds its runtimes one after another): the next reservations are still made,
/// alone, and keep the budget.
#[test]
fn sqlite_reservations_outlive_the_runtime_that_started_the_committer() {
    let database = bursar_store::testkit::TempSqlite::new();
    let first = tokio::runtime::Runtime::new().unwrap();
    let (store, session_id) = first.block_on(async {
        let store = store(&database.url()).await;
        let (_, _, session_id) = session_with(store.as_ref(), 3 * 7).await;
        reserved(store.as_ref(), transfer(&session_id, 7)).await;
        (store, session_id)
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        reserved(store.as_ref(), transfer(&session_id, 7)).await;
        reserved(store.as_ref(), transfer(&session_id, 7)).await;
        match store.reserve(transfer(&session_id, 7)).await.unwrap() {
            Reservation::Denied { reason, .. } => assert_eq!(reason, DenyReason::BudgetExhausted),
            Reservation::Reserved(record) => panic!("over budget: {record:?}"),
        }
        let session = store.session(&session_id).await.unwrap().unwrap();
        assert_eq!(session.reserved, Amount::from(21u64));
    });
}
