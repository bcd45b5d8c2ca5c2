//! The ledger conformance suite, run against SQLite (a temporary file) and PostgreSQL (a fresh
//! database on the local server per case; the cases fail when no server answers).

use std::sync::Arc;

use alloy_primitives::{Address, B256, address};
use bursar_protocol::{Amount, Reason, SettleResponse};
use bursar_store::{
    Claim, Claimant, DatabaseError, SettlementKey, SettlementLedger, SettlementState, Submission,
    open,
};

const NETWORK: &str = "eip155:31337";
const ASSET: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// The facilitator process that claims in these cases, and two others.
const HOLDER: &str = "facilitator-a/00000000000000a1";
const OTHER: &str = "facilitator-b/00000000000000b1";
const THIRD: &str = "facilitator-c/00000000000000c1";
const PAY_TO: Address = address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
const SENDER: Address = address!("0x90F79bf6EB2c4f870365E785982E1f101E93b906");
const AMOUNT: u64 = 10_000;
const SENDER_NONCE: u64 = 7;

fn key(nonce: u64) -> SettlementKey {
    SettlementKey::parse(NETWORK, ASSET, PAYER, &format!("0x{nonce:064X}")).unwrap()
}

fn fingerprint(n: u8) -> B256 {
    B256::repeat_byte(n)
}

fn success(tx: B256) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(PAYER.into()),
        transaction: tx.to_string().into(),
        network: NETWORK.into(),
    }
}

fn submission(tx: B256) -> Submission {
    Submission {
        tx_hash: tx,
        sender: SENDER,
        sender_nonce: SENDER_NONCE,
        valid_before_s: 4_000_000_000,
        pending_response: success(tx),
    }
}

/// [`HOLDER`] claiming the payment with fingerprint `fingerprint`.
fn claimant(fingerprint: B256) -> Claimant {
    Claimant {
        fingerprint,
        holder: HOLDER.into(),
        payment_id: None,
        pay_to: PAY_TO,
        amount: Amount::from(AMOUNT),
    }
}

/// [`claimant`] with a `payment-identifier`.
fn identified(fingerprint: B256, id: &str) -> Claimant {
    Claimant {
        payment_id: Some(id.into()),
        ..claimant(fingerprint)
    }
}

/// [`claimant`] as another process.
fn held_by(fingerprint: B256, holder: &str) -> Claimant {
    Claimant {
        holder: holder.into(),
        ..claimant(fingerprint)
    }
}

fn tx(n: u8) -> B256 {
    B256::repeat_byte(n)
}

async fn ledger(url: &str) -> Arc<dyn SettlementLedger> {
    open(url)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"))
}

/// 50 concurrent claims of one authorization: exactly one owner, everyone else sees its row.
pub async fn concurrent_claims_have_one_winner(url: &str) {
    const CLAIMANTS: usize = 50;
    let ledger = ledger(url).await;
    let mut claims = Vec::new();
    for _ in 0..CLAIMANTS {
        let ledger = ledger.clone();
        claims.push(tokio::spawn(async move {
            ledger.claim(&key(1), &claimant(fingerprint(1))).await
        }));
    }
    let mut claimed = 0;
    for claim in claims {
        match claim.await.unwrap().unwrap() {
            Claim::Claimed => claimed += 1,
            Claim::Existing(record) => {
                assert_eq!(record.state, SettlementState::Received);
                assert_eq!(record.fingerprint, fingerprint(1));
                assert_eq!(
                    record.holder.as_deref(),
                    Some(HOLDER),
                    "the winner holds it"
                );
                assert_eq!((record.tx_hash, record.response), (None, None));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1, "exactly one claimant owns the settlement");

    // Two handles on one database (two processes) race too.
    let other = open(url).await.unwrap();
    let (k, mine, theirs) = (
        key(2),
        claimant(fingerprint(2)),
        held_by(fingerprint(2), OTHER),
    );
    let (first, second) = tokio::join!(ledger.claim(&k, &mine), other.claim(&k, &theirs));
    let owners = [first.unwrap(), second.unwrap()]
        .iter()
        .filter(|claim| **claim == Claim::Claimed)
        .count();
    assert_eq!(owners, 1);
}

/// The same key with another fingerprint is reported with the holder's fingerprint; keys ignore
/// the case of their hex.
pub async fn fingerprint_mismatch_is_reported(url: &str) {
    let ledger = ledger(url).await;
    assert_eq!(
        ledger
            .claim(&key(7), &claimant(fingerprint(1)))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let lowercase = SettlementKey::parse(
        NETWORK,
        &ASSET.to_lowercase(),
        &PAYER.to_lowercase(),
        &format!("0x{:064x}", 7),
    )
    .unwrap();
    assert_eq!(lowercase, key(7));
    match ledger
        .claim(&lowercase, &claimant(fingerprint(2)))
        .await
        .unwrap()
    {
        Claim::Existing(record) => {
            assert_eq!(record.state, SettlementState::Received);
            assert_eq!(
                record.fingerprint,
                fingerprint(1),
                "the holder's fingerprint"
            );
        }
        other => panic!("a second payment claimed a held authorization: {other:?}"),
    }
    // Another nonce, another network or another payer is another authorization.
    assert_eq!(
        ledger
            .claim(&key(8), &claimant(fingerprint(2)))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let other_network =
        SettlementKey::parse("eip155:8453", ASSET, PAYER, &format!("0x{:064x}", 7)).unwrap();
    assert_eq!(
        ledger
            .claim(&other_network, &claimant(fingerprint(2)))
            .await
            .unwrap(),
        Claim::Claimed
    );
}

/// received → submitted → confirmed | failed, each once; release only frees `received`.
pub async fn states_move_one_way(url: &str) {
    let ledger = ledger(url).await;
    let k = key(3);
    assert!(ledger.get(&k).await.unwrap().is_none());
    assert!(matches!(
        ledger.mark_submitted(&k, HOLDER, &submission(tx(1))).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert_eq!(
        ledger.claim(&k, &claimant(fingerprint(3))).await.unwrap(),
        Claim::Claimed
    );
    let received = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(received.state, SettlementState::Received);
    assert_eq!(received.created_at_ms, received.updated_at_ms);
    assert!(received.created_at_ms > 1_700_000_000_000, "unix ms");

    ledger
        .mark_submitted(&k, HOLDER, &submission(tx(1)))
        .await
        .unwrap();
    let submitted = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(submitted.state, SettlementState::Submitted);
    assert_eq!(submitted.tx_hash, Some(tx(1)));
    assert_eq!(submitted.valid_before_s, Some(4_000_000_000));
    assert_eq!(submitted.response, Some(success(tx(1))));
    assert!(submitted.updated_at_ms >= submitted.created_at_ms);
    assert_eq!(
        ledger.claim(&k, &claimant(fingerprint(3))).await.unwrap(),
        Claim::Existing(Box::new(submitted.clone())),
        "the row as it stands"
    );
    assert!(matches!(
        ledger.mark_submitted(&k, OTHER, &submission(tx(2))).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap(),
        submitted,
        "only the holder records a transaction"
    );
    assert!(
        !ledger.release(&k, Some(HOLDER)).await.unwrap(),
        "a broadcast row stays"
    );
    assert!(matches!(
        ledger
            .finish(&k, &success(tx(1)), SettlementState::Submitted)
            .await,
        Err(DatabaseError::Transition { .. })
    ));

    ledger
        .finish(&k, &success(tx(1)), SettlementState::Confirmed)
        .await
        .unwrap();
    let confirmed = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(confirmed.state, SettlementState::Confirmed);
    assert_eq!(confirmed.response, Some(success(tx(1))));
    assert_eq!(confirmed.error_reason, None);
    let failed = SettleResponse::failed(
        Reason::TRANSACTION_FAILED,
        "reverted",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    assert!(matches!(
        ledger.finish(&k, &failed, SettlementState::Failed).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert!(!ledger.release(&k, Some(HOLDER)).await.unwrap());
    assert!(matches!(
        ledger.mark_submitted(&k, HOLDER, &submission(tx(2))).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap().state,
        SettlementState::Confirmed,
        "final states are final"
    );

    // A failure records its reason.
    let k = key(4);
    ledger.claim(&k, &claimant(fingerprint(4))).await.unwrap();
    ledger
        .mark_submitted(&k, HOLDER, &submission(tx(4)))
        .await
        .unwrap();
    ledger
        .finish(&k, &failed, SettlementState::Failed)
        .await
        .unwrap();
    let record = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(record.state, SettlementState::Failed);
    assert_eq!(
        record.error_reason.as_deref(),
        Some(Reason::TRANSACTION_FAILED.as_str())
    );
    assert_eq!(record.response, Some(failed));

    // A refusal before broadcast frees the authorization for a retry.
    let k = key(5);
    ledger.claim(&k, &claimant(fingerprint(5))).await.unwrap();
    assert!(ledger.release(&k, Some(HOLDER)).await.unwrap());
    assert!(ledger.get(&k).await.unwrap().is_none());
    assert!(!ledger.release(&k, Some(HOLDER)).await.unwrap());
    assert_eq!(
        ledger.claim(&k, &claimant(fingerprint(6))).await.unwrap(),
        Claim::Claimed
    );
}

/// `unfinished` lists the `submitted` rows, oldest first, and nothing else.
pub async fn unfinished_lists_submitted_rows(url: &str) {
    let ledger = ledger(url).await;
    assert!(ledger.unfinished().await.unwrap().is_empty());
    for nonce in 10..16u64 {
        let k = key(nonce);
        ledger
            .claim(&k, &claimant(fingerprint(nonce as u8)))
            .await
            .unwrap();
        // Distinct creation times, so "oldest first" is observable.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    for nonce in [14u64, 11, 12, 13] {
        ledger
            .mark_submitted(&key(nonce), HOLDER, &submission(tx(nonce as u8)))
            .await
            .unwrap();
    }
    ledger
        .finish(&key(13), &success(tx(13)), SettlementState::Confirmed)
        .await
        .unwrap();
    let unfinished = ledger.unfinished().await.unwrap();
    let nonces: Vec<_> = unfinished.iter().map(|r| r.key.clone()).collect();
    assert_eq!(nonces, vec![key(11), key(12), key(14)]);
    for record in &unfinished {
        assert_eq!(record.state, SettlementState::Submitted);
        assert!(record.tx_hash.is_some());
        assert_eq!(record.response, Some(success(record.tx_hash.unwrap())));
    }
}

/// `received_before` lists old `received` rows only, oldest first.
pub async fn received_before_lists_old_claims(url: &str) {
    let ledger = ledger(url).await;
    ledger
        .claim(&key(30), &claimant(fingerprint(30)))
        .await
        .unwrap();
    ledger
        .claim(&key(31), &claimant(fingerprint(31)))
        .await
        .unwrap();
    ledger
        .claim(&key(32), &claimant(fingerprint(32)))
        .await
        .unwrap();
    ledger
        .mark_submitted(&key(31), HOLDER, &submission(tx(31)))
        .await
        .unwrap();
    let created = ledger.get(&key(30)).await.unwrap().unwrap().created_at_ms;
    assert!(ledger.received_before(created).await.unwrap().is_empty());
    let cutoff = ledger.get(&key(32)).await.unwrap().unwrap().created_at_ms + 1;
    let old: Vec<_> = ledger
        .received_before(cutoff)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.key)
        .collect();
    assert_eq!(old, vec![key(30), key(32)]);
}

/// Rows outlive the handle: reopening (which migrates again) finds them.
pub async fn rows_survive_reopening(url: &str) {
    {
        let ledger = ledger(url).await;
        ledger
            .claim(&key(20), &claimant(fingerprint(20)))
            .await
            .unwrap();
        ledger
            .mark_submitted(&key(20), HOLDER, &submission(tx(20)))
            .await
            .unwrap();
    }
    let reopened = ledger(url).await;
    let record = reopened.get(&key(20)).await.unwrap().expect("kept");
    assert_eq!(record.state, SettlementState::Submitted);
    assert_eq!(reopened.unfinished().await.unwrap().len(), 1);
}

/// The payment-identifier names one payment: same id and payment → the row; same id with another
/// authorization or another fingerprint → conflict, nothing inserted; concurrent claims of one
/// id for different authorizations have one winner.
pub async fn payment_ids_name_one_payment(url: &str) {
    let ledger = ledger(url).await;
    let id = "pay_0123456789abcdef0123";
    assert!(bursar_store::valid_payment_id(id));
    assert!(!bursar_store::valid_payment_id("short"));
    assert!(!bursar_store::valid_payment_id(&"x".repeat(129)));
    assert!(!bursar_store::valid_payment_id("pay_0123456789abcdef/0123"));
    assert_eq!(
        ledger
            .claim(&key(30), &identified(fingerprint(1), id))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert!(matches!(
        ledger
            .claim(&key(30), &identified(fingerprint(1), id))
            .await
            .unwrap(),
        Claim::Existing(record) if record.state == SettlementState::Received
    ));
    assert_eq!(
        ledger
            .claim(&key(31), &identified(fingerprint(1), id))
            .await
            .unwrap(),
        Claim::PaymentIdConflict { held_by: key(30) }
    );
    assert_eq!(
        ledger
            .claim(&key(30), &identified(fingerprint(2), id))
            .await
            .unwrap(),
        Claim::PaymentIdConflict { held_by: key(30) }
    );
    assert!(ledger.get(&key(31)).await.unwrap().is_none());
    let record = ledger.get_by_payment_id(id).await.unwrap().unwrap();
    assert_eq!(record.key, key(30));
    assert_eq!(record.payment_id.as_deref(), Some(id));
    // Released before broadcast: the id is free again.
    assert!(ledger.release(&key(30), Some(HOLDER)).await.unwrap());
    assert!(ledger.get_by_payment_id(id).await.unwrap().is_none());
    // Racing claims of one id for different authorizations: one winner.
    let other = open(url).await.unwrap();
    let race = "pay_race_0123456789abcdef";
    let (key_a, key_b) = (key(32), key(33));
    let (claim_a, claim_b) = (
        identified(fingerprint(1), race),
        identified(fingerprint(2), race),
    );
    let (a, b) = tokio::join!(
        ledger.claim(&key_a, &claim_a),
        other.claim(&key_b, &claim_b)
    );
    let claims = [a.unwrap(), b.unwrap()];
    assert_eq!(claims.iter().filter(|c| **c == Claim::Claimed).count(), 1);
    assert_eq!(
        claims
            .iter()
            .filter(|c| matches!(c, Claim::PaymentIdConflict { .. }))
            .count(),
        1
    );
}

/// A batch's rows move to `submitted` together (or not at all), may take a re-signed hash, are
/// finished together, and are released only with the hash they were recorded with.
pub async fn batch_rows_move_together(url: &str) {
    let ledger = ledger(url).await;
    for n in 40..43 {
        ledger
            .claim(&key(n), &claimant(fingerprint(1)))
            .await
            .unwrap();
    }
    let rows = |hash: B256| -> Vec<(SettlementKey, Submission)> {
        (40..43).map(|n| (key(n), submission(hash))).collect()
    };
    // One row missing: nothing changes.
    let mut with_missing = rows(tx(1));
    with_missing.push((key(49), submission(tx(1))));
    assert!(
        ledger
            .mark_batch_submitted(HOLDER, &with_missing)
            .await
            .is_err()
    );
    assert_eq!(
        ledger.get(&key(40)).await.unwrap().unwrap().state,
        SettlementState::Received
    );
    ledger
        .mark_batch_submitted(HOLDER, &rows(tx(1)))
        .await
        .unwrap();
    // Re-signed after a nonce refusal: the new hash replaces the old.
    ledger
        .mark_batch_submitted(HOLDER, &rows(tx(2)))
        .await
        .unwrap();
    let record = ledger.get(&key(41)).await.unwrap().unwrap();
    assert_eq!(record.state, SettlementState::Submitted);
    assert_eq!(record.tx_hash, Some(tx(2)));
    // Released only with the recorded hash.
    assert_eq!(ledger.release_unsent(&[key(42)], tx(1)).await.unwrap(), 0);
    assert_eq!(ledger.release_unsent(&[key(42)], tx(2)).await.unwrap(), 1);
    assert!(ledger.get(&key(42)).await.unwrap().is_none());
    let failed = SettleResponse::failed(
        Reason::NONCE_ALREADY_USED,
        "used elsewhere",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    let finished = vec![
        (key(40), success(tx(2)), SettlementState::Confirmed),
        (key(41), failed, SettlementState::Failed),
    ];
    assert_eq!(ledger.finish_many(&finished).await.unwrap(), 2);
    // Already final: unchanged, counted as nothing.
    assert_eq!(ledger.finish_many(&finished).await.unwrap(), 0);
    assert!(
        ledger
            .finish_many(&[(key(40), success(tx(2)), SettlementState::Submitted)])
            .await
            .is_err()
    );
    assert_eq!(
        ledger.get(&key(40)).await.unwrap().unwrap().state,
        SettlementState::Confirmed
    );
    assert_eq!(
        ledger
            .get(&key(41))
            .await
            .unwrap()
            .unwrap()
            .error_reason
            .as_deref(),
        Some(Reason::NONCE_ALREADY_USED.as_str())
    );
    assert!(ledger.unfinished().await.unwrap().is_empty());
}

/// Runs `statements` on the database at `url` directly, as an earlier version of the software
/// would have written it.
async fn execute_raw(url: &str, statements: &[String]) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        pool.close().await;
    }
}

/// A row as written before holders, senders and payment terms were recorded (only the columns
/// of migrations 0001 and 0003).
fn legacy_row(
    key: &SettlementKey,
    state: &str,
    tx_hash: Option<B256>,
    payment_id: Option<&str>,
) -> String {
    let text = |value: Option<&str>| value.map_or("NULL".to_string(), |v| format!("'{v}'"));
    let response = tx_hash.map(|hash| serde_json::to_string(&success(hash)).unwrap());
    let valid_before = if tx_hash.is_some() {
        "4000000000"
    } else {
        "NULL"
    };
    let (asset, payer) = (format!("{:#x}", key.asset()), format!("{:#x}", key.payer()));
    format!(
        "INSERT INTO settlements (network, asset, payer, nonce, fingerprint, state, tx_hash, \
         valid_before_s, response, error_reason, created_at_ms, updated_at_ms, payment_id) \
         VALUES ('{}', '{}', '{}', '{}', '{}', '{state}', {}, {valid_before}, {}, NULL, \
         1700000000000, 1700000000000, {})",
        key.network().caip2(),
        asset,
        payer,
        key.nonce(),
        fingerprint(0xee),
        text(tx_hash.map(|hash| hash.to_string()).as_deref()),
        text(response.as_deref()),
        text(payment_id),
    )
}

/// The claim records its holder and what the payment pays; only the holder records a
/// transaction (with its sending account and account nonce), and may record a new one over it
/// (signed again); another process is refused and nothing changes. Batches: all rows or none.
pub async fn only_the_holder_records_a_transaction(url: &str) {
    let ledger = ledger(url).await;
    let k = key(50);
    ledger.claim(&k, &claimant(fingerprint(50))).await.unwrap();
    let received = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(received.holder.as_deref(), Some(HOLDER));
    assert_eq!(received.pay_to, Some(PAY_TO));
    assert_eq!(received.amount, Some(Amount::from(AMOUNT)));
    assert_eq!((received.sender, received.sender_nonce), (None, None));
    assert_eq!(received.tx_hash, None);

    match ledger.mark_submitted(&k, OTHER, &submission(tx(1))).await {
        Err(DatabaseError::Transition { key, to, .. }) => {
            assert_eq!(key, k);
            assert_eq!(to, SettlementState::Submitted);
        }
        other => panic!("another process recorded a transaction for a claim: {other:?}"),
    }
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap(),
        received,
        "a refused record changes nothing"
    );

    ledger
        .mark_submitted(&k, HOLDER, &submission(tx(1)))
        .await
        .unwrap();
    let submitted = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(submitted.state, SettlementState::Submitted);
    assert_eq!(submitted.tx_hash, Some(tx(1)));
    assert_eq!(submitted.sender, Some(SENDER));
    assert_eq!(submitted.sender_nonce, Some(SENDER_NONCE));
    assert_eq!(submitted.holder.as_deref(), Some(HOLDER));
    assert_eq!(submitted.pay_to, Some(PAY_TO));
    assert_eq!(submitted.amount, Some(Amount::from(AMOUNT)));
    assert_eq!(submitted.valid_before_s, Some(4_000_000_000));
    assert_eq!(submitted.response, Some(success(tx(1))));

    // Signed again after the node refused the first nonce: the holder records the new
    // transaction over the old one; another process still may not.
    let resigned = Submission {
        sender_nonce: SENDER_NONCE + 1,
        ..submission(tx(2))
    };
    assert!(matches!(
        ledger.mark_submitted(&k, OTHER, &resigned).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert_eq!(ledger.get(&k).await.unwrap().unwrap(), submitted);
    ledger.mark_submitted(&k, HOLDER, &resigned).await.unwrap();
    let again = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(again.state, SettlementState::Submitted);
    assert_eq!(again.tx_hash, Some(tx(2)));
    assert_eq!(again.sender_nonce, Some(SENDER_NONCE + 1));
    assert_eq!(again.response, Some(success(tx(2))));
    assert_eq!(again.created_at_ms, submitted.created_at_ms);

    // A batch with a row another process holds records nothing, for either holder.
    let (mine, theirs) = (key(51), key(52));
    ledger
        .claim(&mine, &claimant(fingerprint(51)))
        .await
        .unwrap();
    ledger
        .claim(&theirs, &held_by(fingerprint(52), OTHER))
        .await
        .unwrap();
    let both = vec![
        (mine.clone(), submission(tx(3))),
        (theirs.clone(), submission(tx(3))),
    ];
    for holder in [HOLDER, OTHER] {
        assert!(matches!(
            ledger.mark_batch_submitted(holder, &both).await,
            Err(DatabaseError::Transition { .. })
        ));
        for k in [&mine, &theirs] {
            let record = ledger.get(k).await.unwrap().unwrap();
            assert_eq!(record.state, SettlementState::Received, "{holder}: {k}");
            assert_eq!(record.tx_hash, None);
        }
    }
    ledger
        .mark_batch_submitted(HOLDER, &both[..1])
        .await
        .unwrap();
    ledger
        .mark_batch_submitted(OTHER, &both[1..])
        .await
        .unwrap();
    for (k, holder) in [(&mine, HOLDER), (&theirs, OTHER)] {
        let record = ledger.get(k).await.unwrap().unwrap();
        assert_eq!(record.state, SettlementState::Submitted);
        assert_eq!(record.tx_hash, Some(tx(3)));
        assert_eq!(record.holder.as_deref(), Some(holder));
        assert_eq!(record.sender, Some(SENDER));
    }
}

/// `release` deletes a `received` row only for exactly its holder; a row written without a
/// holder only for `None` (NULL-safe); never a `submitted` row.
pub async fn release_is_for_the_holder_only(url: &str) {
    let ledger = ledger(url).await;
    let k = key(60);
    ledger.claim(&k, &claimant(fingerprint(60))).await.unwrap();
    assert!(
        !ledger.release(&k, Some(OTHER)).await.unwrap(),
        "another process's claim stays"
    );
    assert!(
        !ledger.release(&k, None).await.unwrap(),
        "a held claim is not a claim without a holder"
    );
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap().holder.as_deref(),
        Some(HOLDER)
    );
    assert!(ledger.release(&k, Some(HOLDER)).await.unwrap());
    assert!(ledger.get(&k).await.unwrap().is_none());

    let legacy = key(61);
    execute_raw(url, &[legacy_row(&legacy, "received", None, None)]).await;
    assert_eq!(ledger.get(&legacy).await.unwrap().unwrap().holder, None);
    assert!(!ledger.release(&legacy, Some(HOLDER)).await.unwrap());
    assert!(ledger.get(&legacy).await.unwrap().is_some());
    assert!(ledger.release(&legacy, None).await.unwrap());
    assert!(ledger.get(&legacy).await.unwrap().is_none());

    let sent = key(62);
    ledger
        .claim(&sent, &claimant(fingerprint(62)))
        .await
        .unwrap();
    ledger
        .mark_submitted(&sent, HOLDER, &submission(tx(62)))
        .await
        .unwrap();
    assert!(!ledger.release(&sent, Some(HOLDER)).await.unwrap());
    assert!(!ledger.release(&sent, None).await.unwrap());
    assert_eq!(
        ledger.get(&sent).await.unwrap().unwrap().state,
        SettlementState::Submitted
    );
}

/// `take_over` is a compare-and-swap on a `received` row as seen: of concurrent take-overs one
/// wins, a stale record never matches again, and the former holder can then neither record a
/// transaction nor release the claim. A `submitted` row is never taken over.
pub async fn take_over_is_compare_and_swap(url: &str) {
    let ledger = ledger(url).await;
    let k = key(70);
    ledger.claim(&k, &claimant(fingerprint(70))).await.unwrap();
    let seen = ledger.get(&k).await.unwrap().unwrap();

    let other = open(url).await.unwrap();
    let (a, b) = tokio::join!(
        ledger.take_over(&seen, OTHER),
        other.take_over(&seen, THIRD)
    );
    let won = [a.unwrap(), b.unwrap()];
    assert_eq!(won.iter().filter(|won| **won).count(), 1, "{won:?}");
    let winner = if won[0] { OTHER } else { THIRD };
    let taken = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(taken.holder.as_deref(), Some(winner));
    assert!(taken.updated_at_ms > seen.updated_at_ms);
    assert_eq!(taken.state, SettlementState::Received);
    assert_eq!(taken.fingerprint, seen.fingerprint);
    assert_eq!(taken.created_at_ms, seen.created_at_ms);
    assert_eq!((taken.pay_to, taken.amount), (seen.pay_to, seen.amount));

    assert!(
        !ledger.take_over(&seen, HOLDER).await.unwrap(),
        "the stale record never matches again"
    );
    assert!(!ledger.take_over(&seen, winner).await.unwrap());
    assert!(matches!(
        ledger.mark_submitted(&k, HOLDER, &submission(tx(1))).await,
        Err(DatabaseError::Transition { .. })
    ));
    assert!(!ledger.release(&k, Some(HOLDER)).await.unwrap());
    assert_eq!(ledger.get(&k).await.unwrap().unwrap(), taken);

    ledger
        .mark_submitted(&k, winner, &submission(tx(1)))
        .await
        .unwrap();
    let submitted = ledger.get(&k).await.unwrap().unwrap();
    assert!(!ledger.take_over(&submitted, HOLDER).await.unwrap());
    assert_eq!(ledger.get(&k).await.unwrap().unwrap(), submitted);

    // A claim written without a holder is taken over as seen too.
    let legacy = key(71);
    execute_raw(url, &[legacy_row(&legacy, "received", None, None)]).await;
    let seen = ledger.get(&legacy).await.unwrap().unwrap();
    assert_eq!(seen.holder, None);
    assert!(ledger.take_over(&seen, HOLDER).await.unwrap());
    assert_eq!(
        ledger
            .get(&legacy)
            .await
            .unwrap()
            .unwrap()
            .holder
            .as_deref(),
        Some(HOLDER)
    );
    assert!(!ledger.take_over(&seen, OTHER).await.unwrap());
}

/// `correct_to_paid` turns `failed` into `confirmed` with the transaction that paid, once, and
/// touches no row in another state.
pub async fn correct_to_paid_only_corrects_failures(url: &str) {
    let ledger = ledger(url).await;
    let failed = SettleResponse::failed(
        Reason::TRANSACTION_FAILED,
        "reverted",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    let k = key(80);
    ledger.claim(&k, &claimant(fingerprint(80))).await.unwrap();
    ledger
        .mark_submitted(&k, HOLDER, &submission(tx(1)))
        .await
        .unwrap();
    ledger
        .finish(&k, &failed, SettlementState::Failed)
        .await
        .unwrap();
    let before = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(
        before.tx_hash,
        Some(tx(1)),
        "a failure keeps its transaction"
    );

    let paid = success(tx(9));
    assert!(ledger.correct_to_paid(&k, &paid).await.unwrap());
    let corrected = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(corrected.state, SettlementState::Confirmed);
    assert_eq!(corrected.tx_hash, Some(tx(9)));
    assert_eq!(corrected.response, Some(paid.clone()));
    assert_eq!(corrected.error_reason, None);
    assert!(corrected.updated_at_ms >= before.updated_at_ms);
    assert_eq!(corrected.holder, before.holder);

    assert!(!ledger.correct_to_paid(&k, &success(tx(10))).await.unwrap());
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap(),
        corrected,
        "confirmed is final"
    );

    let received = key(81);
    ledger
        .claim(&received, &claimant(fingerprint(81)))
        .await
        .unwrap();
    let submitted = key(82);
    ledger
        .claim(&submitted, &claimant(fingerprint(82)))
        .await
        .unwrap();
    ledger
        .mark_submitted(&submitted, HOLDER, &submission(tx(82)))
        .await
        .unwrap();
    for k in [&received, &submitted] {
        let before = ledger.get(k).await.unwrap().unwrap();
        assert!(!ledger.correct_to_paid(k, &paid).await.unwrap(), "{k}");
        assert_eq!(ledger.get(k).await.unwrap().unwrap(), before);
    }
    assert!(!ledger.correct_to_paid(&key(83), &paid).await.unwrap());
    assert!(ledger.get(&key(83)).await.unwrap().is_none());
}

/// A confirmed outcome records its response's transaction as the row's (it may be another than
/// the one recorded, or the row may have recorded none); a failure keeps the recorded one.
pub async fn confirmed_finish_records_its_transaction(url: &str) {
    let ledger = ledger(url).await;
    let submitted = |n: u64| {
        let ledger = ledger.clone();
        async move {
            ledger
                .claim(&key(n), &claimant(fingerprint(n as u8)))
                .await
                .unwrap();
            ledger
                .mark_submitted(&key(n), HOLDER, &submission(tx(1)))
                .await
                .unwrap();
        }
    };

    submitted(90).await;
    ledger
        .finish(&key(90), &success(tx(2)), SettlementState::Confirmed)
        .await
        .unwrap();
    let record = ledger.get(&key(90)).await.unwrap().unwrap();
    assert_eq!(record.tx_hash, Some(tx(2)));
    assert_eq!(record.response, Some(success(tx(2))));

    submitted(91).await;
    let failed = SettleResponse::failed(
        Reason::NONCE_ALREADY_USED,
        "used elsewhere",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    ledger
        .finish(&key(91), &failed, SettlementState::Failed)
        .await
        .unwrap();
    assert_eq!(
        ledger.get(&key(91)).await.unwrap().unwrap().tx_hash,
        Some(tx(1))
    );

    // Never broadcast, found paid on chain: confirmed with the transaction that paid.
    ledger
        .claim(&key(92), &claimant(fingerprint(92)))
        .await
        .unwrap();
    ledger
        .finish(&key(92), &success(tx(3)), SettlementState::Confirmed)
        .await
        .unwrap();
    let record = ledger.get(&key(92)).await.unwrap().unwrap();
    assert_eq!(record.state, SettlementState::Confirmed);
    assert_eq!(record.tx_hash, Some(tx(3)));

    submitted(93).await;
    assert_eq!(
        ledger
            .finish_many(&[(key(93), success(tx(4)), SettlementState::Confirmed)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ledger.get(&key(93)).await.unwrap().unwrap().tx_hash,
        Some(tx(4))
    );

    // A confirmed response naming no transaction keeps the recorded one.
    submitted(94).await;
    ledger
        .finish(
            &key(94),
            &SettleResponse {
                transaction: String::new().into(),
                ..success(tx(0))
            },
            SettlementState::Confirmed,
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.get(&key(94)).await.unwrap().unwrap().tx_hash,
        Some(tx(1))
    );
}

/// The migrations before 0012 of each backend, as a database written before it holds them.
fn migrations_before_0012(sqlite: bool) -> Vec<sqlx::migrate::Migration> {
    macro_rules! files {
        ($dir:literal: $($version:literal $description:literal $file:literal),*) => {
            vec![$((
                $version,
                $description,
                include_str!(concat!("../migrations/", $dir, "/", $file)),
            )),*]
        };
    }
    macro_rules! both {
        ($($version:literal $description:literal $file:literal),*) => {
            if sqlite {
                files!("sqlite": $($version $description $file),*)
            } else {
                files!("postgres": $($version $description $file),*)
            }
        };
    }
    let files: Vec<(i64, &str, &str)> = both!(
        1 "settlements" "0001_settlements.sql",
        2 "api keys" "0002_api_keys.sql",
        3 "payment identifier" "0003_payment_identifier.sql",
        4 "agent runtime" "0004_agent_runtime.sql",
        5 "governance" "0005_governance.sql",
        6 "endpoint health" "0006_endpoint_health.sql",
        7 "ledger kinds" "0007_ledger_kinds.sql",
        8 "alerts" "0008_alerts.sql",
        9 "compensation" "0009_compensation.sql",
        10 "unfinished compensations" "0010_unfinished_compensations.sql",
        11 "transfer endpoints" "0011_transfer_endpoints.sql"
    );
    files
        .into_iter()
        .map(|(version, description, sql)| {
            sqlx::migrate::Migration::new(
                version,
                std::borrow::Cow::Borrowed(description),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
                false,
            )
        })
        .collect()
}

/// Rows written before migration 0012 stay readable after it (no holder, sender or payment
/// terms) and keep working: a submitted one is finished, a claim without a holder is recorded
/// by nobody until taken over, and released only as holderless.
pub async fn migration_0012_keeps_earlier_rows(url: &str) {
    let migrator = sqlx::migrate::Migrator::with_migrations(migrations_before_0012(
        url.starts_with("sqlite:"),
    ));
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        migrator.run(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        migrator.run(&pool).await.unwrap();
        pool.close().await;
    }
    let (claimed, sent, done) = (key(100), key(101), key(102));
    let id = "pay_written_before_0012_x";
    execute_raw(
        url,
        &[
            legacy_row(&claimed, "received", None, None),
            legacy_row(&sent, "submitted", Some(tx(101)), None),
            legacy_row(&done, "confirmed", Some(tx(102)), Some(id)),
        ],
    )
    .await;

    // Opening migrates (0012 runs now).
    let ledger = ledger(url).await;
    for (k, state, hash) in [
        (&claimed, SettlementState::Received, None),
        (&sent, SettlementState::Submitted, Some(tx(101))),
        (&done, SettlementState::Confirmed, Some(tx(102))),
    ] {
        let record = ledger.get(k).await.unwrap().expect("kept");
        assert_eq!(record.state, state, "{k}");
        assert_eq!(record.fingerprint, fingerprint(0xee));
        assert_eq!(record.tx_hash, hash);
        assert_eq!(record.response, record.tx_hash.map(success));
        assert_eq!(record.created_at_ms, 1_700_000_000_000);
        assert_eq!(record.holder, None);
        assert_eq!((record.sender, record.sender_nonce), (None, None));
        assert_eq!((record.pay_to, record.amount), (None, None));
    }
    assert_eq!(
        ledger.get_by_payment_id(id).await.unwrap().unwrap().key,
        done
    );
    assert_eq!(ledger.count_unfinished().await.unwrap(), 2);
    assert_eq!(ledger.unfinished().await.unwrap()[0].key, sent);
    assert_eq!(
        ledger.received_before(i64::MAX).await.unwrap()[0].key,
        claimed
    );
    assert!(matches!(
        ledger.claim(&done, &claimant(fingerprint(0xee))).await.unwrap(),
        Claim::Existing(record) if record.state == SettlementState::Confirmed && record.holder.is_none()
    ));

    // The broadcast row is finished from its receipt, as before.
    ledger
        .finish(&sent, &success(tx(101)), SettlementState::Confirmed)
        .await
        .unwrap();
    assert_eq!(
        ledger.get(&sent).await.unwrap().unwrap().state,
        SettlementState::Confirmed
    );
    // The claim: nobody records a transaction for it until it is taken over.
    assert!(matches!(
        ledger
            .mark_submitted(&claimed, HOLDER, &submission(tx(1)))
            .await,
        Err(DatabaseError::Transition { .. })
    ));
    assert!(!ledger.release(&claimed, Some(HOLDER)).await.unwrap());
    let seen = ledger.get(&claimed).await.unwrap().unwrap();
    assert!(ledger.take_over(&seen, HOLDER).await.unwrap());
    ledger
        .mark_submitted(&claimed, HOLDER, &submission(tx(1)))
        .await
        .unwrap();
    let record = ledger.get(&claimed).await.unwrap().unwrap();
    assert_eq!(record.state, SettlementState::Submitted);
    assert_eq!(record.sender, Some(SENDER));
    assert_eq!(
        record.pay_to, None,
        "terms are not invented for an old claim"
    );
}

macro_rules! conformance {
    ($backend:ident, $database:expr, $url:ident) => {
        mod $backend {
            conformance!(@cases $database, $url;
                concurrent_claims_have_one_winner,
                fingerprint_mismatch_is_reported,
                states_move_one_way,
                unfinished_lists_submitted_rows,
                received_before_lists_old_claims,
                rows_survive_reopening,
                payment_ids_name_one_payment,
                batch_rows_move_together,
                only_the_holder_records_a_transaction,
                release_is_for_the_holder_only,
                take_over_is_compare_and_swap,
                correct_to_paid_only_corrects_failures,
                confirmed_finish_records_its_transaction,
                migration_0012_keeps_earlier_rows
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

#[tokio::test]
async fn in_memory_ledger_works_without_opening() {
    let ledger = bursar_store::SqliteDatabase::memory();
    assert_eq!(
        ledger
            .claim(&key(1), &claimant(fingerprint(1)))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(ledger.get(&key(1)).await.unwrap().unwrap().key, key(1));
    assert!(matches!(
        open("mysql://localhost/x").await,
        Err(DatabaseError::UnsupportedUrl { .. })
    ));
}
