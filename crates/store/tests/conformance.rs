//! The ledger conformance suite, run against SQLite (a temporary file) and PostgreSQL (a fresh
//! database on the local server per case; the cases fail when no server answers).

use std::sync::Arc;

use bursar_protocol::{Reason, SettleResponse};
use bursar_store::{
    Claim, LedgerError, LedgerKey, SettlementLedger, SettlementState, Submission, open,
};

const NETWORK: &str = "eip155:31337";
const ASSET: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

fn key(nonce: u64) -> LedgerKey {
    LedgerKey::new(NETWORK, ASSET, PAYER, &format!("0x{nonce:064X}"))
}

fn fingerprint(n: u8) -> String {
    format!("0x{}", format!("{n:02x}").repeat(32))
}

fn success(tx: &str) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(PAYER.into()),
        transaction: tx.into(),
        network: NETWORK.into(),
    }
}

fn submission(tx: &str) -> Submission {
    Submission {
        tx_hash: tx.into(),
        valid_before_s: 4_000_000_000,
        pending_response: success(tx),
    }
}

fn tx(n: u8) -> String {
    format!("0x{}", format!("{n:02x}").repeat(32))
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
            ledger.claim(&key(1), &fingerprint(1)).await
        }));
    }
    let mut claimed = 0;
    for claim in claims {
        match claim.await.unwrap().unwrap() {
            Claim::Claimed => claimed += 1,
            Claim::Existing {
                state,
                fingerprint: held,
                tx_hash,
                response,
            } => {
                assert_eq!(state, SettlementState::Received);
                assert_eq!(held, fingerprint(1));
                assert_eq!((tx_hash, response), (None, None));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1, "exactly one claimant owns the settlement");

    // Two handles on one database (two processes) race too.
    let other = open(url).await.unwrap();
    let (k, f) = (key(2), fingerprint(2));
    let (first, second) = tokio::join!(ledger.claim(&k, &f), other.claim(&k, &f));
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
        ledger.claim(&key(7), &fingerprint(1)).await.unwrap(),
        Claim::Claimed
    );
    let lowercase = LedgerKey::new(
        NETWORK,
        &ASSET.to_lowercase(),
        &PAYER.to_lowercase(),
        &format!("0x{:064x}", 7),
    );
    assert_eq!(lowercase, key(7));
    match ledger.claim(&lowercase, &fingerprint(2)).await.unwrap() {
        Claim::Existing {
            state, fingerprint, ..
        } => {
            assert_eq!(state, SettlementState::Received);
            assert_eq!(
                fingerprint,
                self::fingerprint(1),
                "the holder's fingerprint"
            );
        }
        other => panic!("a second payment claimed a held authorization: {other:?}"),
    }
    // Another nonce, another network or another payer is another authorization.
    assert_eq!(
        ledger.claim(&key(8), &fingerprint(2)).await.unwrap(),
        Claim::Claimed
    );
    let other_network = LedgerKey::new("eip155:8453", ASSET, PAYER, &format!("0x{:064x}", 7));
    assert_eq!(
        ledger.claim(&other_network, &fingerprint(2)).await.unwrap(),
        Claim::Claimed
    );
}

/// received → submitted → confirmed | failed, each once; release only frees `received`.
pub async fn states_move_one_way(url: &str) {
    let ledger = ledger(url).await;
    let k = key(3);
    assert!(ledger.get(&k).await.unwrap().is_none());
    assert!(matches!(
        ledger.mark_submitted(&k, &submission(&tx(1))).await,
        Err(LedgerError::Transition { .. })
    ));
    assert_eq!(
        ledger.claim(&k, &fingerprint(3)).await.unwrap(),
        Claim::Claimed
    );
    let received = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(received.state, SettlementState::Received);
    assert_eq!(received.created_at_ms, received.updated_at_ms);
    assert!(received.created_at_ms > 1_700_000_000_000, "unix ms");

    ledger
        .mark_submitted(&k, &submission(&tx(1)))
        .await
        .unwrap();
    let submitted = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(submitted.state, SettlementState::Submitted);
    assert_eq!(submitted.tx_hash.as_deref(), Some(tx(1).as_str()));
    assert_eq!(submitted.valid_before_s, Some(4_000_000_000));
    assert!(submitted.updated_at_ms >= submitted.created_at_ms);
    assert_eq!(
        ledger.claim(&k, &fingerprint(3)).await.unwrap(),
        Claim::Existing {
            state: SettlementState::Submitted,
            fingerprint: fingerprint(3),
            tx_hash: Some(tx(1)),
            response: Some(success(&tx(1))),
        }
    );
    assert!(matches!(
        ledger.mark_submitted(&k, &submission(&tx(2))).await,
        Err(LedgerError::Transition { .. })
    ));
    assert!(!ledger.release(&k).await.unwrap(), "a broadcast row stays");
    assert!(matches!(
        ledger
            .finish(&k, &success(&tx(1)), SettlementState::Submitted)
            .await,
        Err(LedgerError::Transition { .. })
    ));

    ledger
        .finish(&k, &success(&tx(1)), SettlementState::Confirmed)
        .await
        .unwrap();
    let confirmed = ledger.get(&k).await.unwrap().unwrap();
    assert_eq!(confirmed.state, SettlementState::Confirmed);
    assert_eq!(confirmed.response, Some(success(&tx(1))));
    assert_eq!(confirmed.error_reason, None);
    let failed = SettleResponse::failed(
        Reason::TRANSACTION_FAILED,
        "reverted",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    assert!(matches!(
        ledger.finish(&k, &failed, SettlementState::Failed).await,
        Err(LedgerError::Transition { .. })
    ));
    assert!(!ledger.release(&k).await.unwrap());
    assert_eq!(
        ledger.get(&k).await.unwrap().unwrap().state,
        SettlementState::Confirmed,
        "final states are final"
    );

    // A failure records its reason.
    let k = key(4);
    ledger.claim(&k, &fingerprint(4)).await.unwrap();
    ledger
        .mark_submitted(&k, &submission(&tx(4)))
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
    ledger.claim(&k, &fingerprint(5)).await.unwrap();
    assert!(ledger.release(&k).await.unwrap());
    assert!(ledger.get(&k).await.unwrap().is_none());
    assert!(!ledger.release(&k).await.unwrap());
    assert_eq!(
        ledger.claim(&k, &fingerprint(6)).await.unwrap(),
        Claim::Claimed
    );
}

/// `unfinished` lists the `submitted` rows, oldest first, and nothing else.
pub async fn unfinished_lists_submitted_rows(url: &str) {
    let ledger = ledger(url).await;
    assert!(ledger.unfinished().await.unwrap().is_empty());
    for nonce in 10..16u64 {
        let k = key(nonce);
        ledger.claim(&k, &fingerprint(nonce as u8)).await.unwrap();
        // Distinct creation times, so "oldest first" is observable.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    for nonce in [14u64, 11, 12, 13] {
        ledger
            .mark_submitted(&key(nonce), &submission(&tx(nonce as u8)))
            .await
            .unwrap();
    }
    ledger
        .finish(&key(13), &success(&tx(13)), SettlementState::Confirmed)
        .await
        .unwrap();
    let unfinished = ledger.unfinished().await.unwrap();
    let nonces: Vec<_> = unfinished.iter().map(|r| r.key.clone()).collect();
    assert_eq!(nonces, vec![key(11), key(12), key(14)]);
    for record in &unfinished {
        assert_eq!(record.state, SettlementState::Submitted);
        assert!(record.tx_hash.is_some());
        assert_eq!(
            record.response,
            Some(success(record.tx_hash.as_ref().unwrap()))
        );
    }
}

/// `received_before` lists old `received` rows only, oldest first.
pub async fn received_before_lists_old_claims(url: &str) {
    let ledger = ledger(url).await;
    ledger.claim(&key(30), &fingerprint(30)).await.unwrap();
    ledger.claim(&key(31), &fingerprint(31)).await.unwrap();
    ledger.claim(&key(32), &fingerprint(32)).await.unwrap();
    ledger
        .mark_submitted(&key(31), &submission(&tx(31)))
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
        ledger.claim(&key(20), &fingerprint(20)).await.unwrap();
        ledger
            .mark_submitted(&key(20), &submission(&tx(20)))
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
            .claim_identified(&key(30), &fingerprint(1), id)
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert!(matches!(
        ledger
            .claim_identified(&key(30), &fingerprint(1), id)
            .await
            .unwrap(),
        Claim::Existing {
            state: SettlementState::Received,
            ..
        }
    ));
    assert_eq!(
        ledger
            .claim_identified(&key(31), &fingerprint(1), id)
            .await
            .unwrap(),
        Claim::PaymentIdConflict { held_by: key(30) }
    );
    assert_eq!(
        ledger
            .claim_identified(&key(30), &fingerprint(2), id)
            .await
            .unwrap(),
        Claim::PaymentIdConflict { held_by: key(30) }
    );
    assert!(ledger.get(&key(31)).await.unwrap().is_none());
    let record = ledger.get_by_payment_id(id).await.unwrap().unwrap();
    assert_eq!(record.key, key(30));
    assert_eq!(record.payment_id.as_deref(), Some(id));
    // Released before broadcast: the id is free again.
    assert!(ledger.release(&key(30)).await.unwrap());
    assert!(ledger.get_by_payment_id(id).await.unwrap().is_none());
    // Racing claims of one id for different authorizations: one winner.
    let other = open(url).await.unwrap();
    let race = "pay_race_0123456789abcdef";
    let (key_a, key_b, print_a, print_b) = (key(32), key(33), fingerprint(1), fingerprint(2));
    let (a, b) = tokio::join!(
        ledger.claim_identified(&key_a, &print_a, race),
        other.claim_identified(&key_b, &print_b, race)
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
        ledger.claim(&key(n), &fingerprint(1)).await.unwrap();
    }
    let rows = |hash: &str| -> Vec<(LedgerKey, Submission)> {
        (40..43).map(|n| (key(n), submission(hash))).collect()
    };
    // One row missing: nothing changes.
    let mut with_missing = rows(&tx(1));
    with_missing.push((key(49), submission(&tx(1))));
    assert!(ledger.mark_batch_submitted(&with_missing).await.is_err());
    assert_eq!(
        ledger.get(&key(40)).await.unwrap().unwrap().state,
        SettlementState::Received
    );
    ledger.mark_batch_submitted(&rows(&tx(1))).await.unwrap();
    // Re-signed after a nonce refusal: the new hash replaces the old.
    ledger.mark_batch_submitted(&rows(&tx(2))).await.unwrap();
    let record = ledger.get(&key(41)).await.unwrap().unwrap();
    assert_eq!(record.state, SettlementState::Submitted);
    assert_eq!(record.tx_hash, Some(tx(2)));
    // Released only with the recorded hash.
    assert_eq!(ledger.release_unsent(&[key(42)], &tx(1)).await.unwrap(), 0);
    assert_eq!(ledger.release_unsent(&[key(42)], &tx(2)).await.unwrap(), 1);
    assert!(ledger.get(&key(42)).await.unwrap().is_none());
    let failed = SettleResponse::failed(
        Reason::NONCE_ALREADY_USED,
        "used elsewhere",
        Some(PAYER.into()),
        NETWORK.into(),
    );
    let finished = vec![
        (key(40), success(&tx(2)), SettlementState::Confirmed),
        (key(41), failed, SettlementState::Failed),
    ];
    assert_eq!(ledger.finish_many(&finished).await.unwrap(), 2);
    // Already final: unchanged, counted as nothing.
    assert_eq!(ledger.finish_many(&finished).await.unwrap(), 0);
    assert!(
        ledger
            .finish_many(&[(key(40), success(&tx(2)), SettlementState::Submitted)])
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
                batch_rows_move_together
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
    let ledger = bursar_store::SqliteLedger::memory();
    assert_eq!(
        ledger.claim(&key(1), &fingerprint(1)).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(ledger.get(&key(1)).await.unwrap().unwrap().key, key(1));
    assert!(matches!(
        open("mysql://localhost/x").await,
        Err(LedgerError::UnsupportedUrl { .. })
    ));
}
