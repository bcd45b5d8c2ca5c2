//! The decision trace on SQLite (a temporary file) and PostgreSQL (a fresh database per case):
//! concurrent writers form one gapless chain, and every kind of edit made directly in the
//! database is found by `verify_decisions`, which names the first broken row.

use std::collections::HashSet;
use std::sync::Arc;

use bursar_protocol::Amount;
use bursar_store::decisions::{DECISION_ID_PREFIX, GENESIS_HASH};
use bursar_store::{DecisionStore, NewDecision, StoreError, open_decision_store};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection};

/// Decisions written concurrently.
const WRITERS: i64 = 100;
/// Sessions the decisions are spread over.
const SESSIONS: i64 = 5;

async fn store(url: &str) -> Arc<dyn DecisionStore> {
    open_decision_store(url)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"))
}

/// Runs `sql` (one or more statements) on a connection of its own, as an intruder would.
async fn exec(url: &str, sql: &str) {
    let statement = AssertSqlSafe(sql.to_string());
    if url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(statement)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        connection.close().await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(statement)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        connection.close().await.unwrap();
    }
}

fn decision(i: i64) -> NewDecision {
    let allowed = i % 3 != 0;
    NewDecision {
        session_id: Some(format!("ses_{}", i % SESSIONS)),
        wallet_id: Some("wal_1".into()),
        agent: Some("agent-1".into()),
        transfer_id: allowed.then(|| format!("tfr_{i}")),
        resource: Some(format!("https://api.example/items/{i}")),
        payee: Some("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into()),
        amount: Some(Amount::from(1_000 + i as u64)),
        allowed,
        reason: (!allowed).then(|| "budget_exhausted".to_string()),
        rules: json!([
            {"rule": "per_call_max", "input": {"amount": (1_000 + i).to_string(), "max": "5000"},
             "passed": true, "detail": null},
            {"rule": "session_budget", "input": {"spent": (i * 10).to_string()},
             "passed": allowed, "detail": if allowed { "" } else { "over budget" }},
        ]),
    }
}

pub async fn concurrent_writers_form_one_chain(url: &str) {
    // Two handles (two pools), as two runtime processes sharing the database would have.
    let first = store(url).await;
    let second = store(url).await;
    let empty = first.verify_decisions().await.unwrap();
    assert_eq!(empty.checked, 0);
    assert_eq!(empty.head_hash, GENESIS_HASH);
    assert_eq!(empty.broken, None);

    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            store.record_decision(decision(i)).await
        }));
    }
    let mut records = Vec::new();
    for task in tasks {
        records.push(task.await.unwrap().unwrap());
    }
    let mut seqs: Vec<i64> = records.iter().map(|record| record.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=WRITERS).collect::<Vec<_>>());
    let ids: HashSet<&str> = records.iter().map(|record| record.id.as_str()).collect();
    assert_eq!(ids.len(), WRITERS as usize);
    assert!(ids.iter().all(|id| id.starts_with(DECISION_ID_PREFIX)));

    let listed = first.decisions(0, usize::MAX).await.unwrap();
    assert_eq!(listed.len(), WRITERS as usize);
    let mut prev = GENESIS_HASH.to_string();
    for (index, record) in listed.iter().enumerate() {
        assert_eq!(record.seq, index as i64 + 1);
        assert_eq!(record.prev_hash, prev, "decision {} links back", record.seq);
        assert_eq!(record.hash.len(), 64);
        assert!(
            record
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // What the writer got back is what is stored.
        let returned = records.iter().find(|r| r.id == record.id).unwrap();
        assert_eq!(returned, record);
        prev = record.hash.clone();
    }
    let page = first.decisions(10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(first.decisions(WRITERS, 10).await.unwrap().is_empty());

    let check = second.verify_decisions().await.unwrap();
    assert_eq!(check.broken, None);
    assert_eq!(check.checked, WRITERS as u64);
    assert_eq!(check.head_hash, prev);

    // Refused input records nothing.
    let bad = NewDecision {
        rules: json!({"rule": "not an array"}),
        ..decision(1)
    };
    assert!(matches!(
        first.record_decision(bad).await,
        Err(StoreError::Invalid(_))
    ));
    let next = first.record_decision(decision(WRITERS)).await.unwrap();
    assert_eq!(next.seq, WRITERS + 1);
    assert_eq!(next.prev_hash, prev);
    let check = first.verify_decisions().await.unwrap();
    assert_eq!((check.checked, check.broken), (WRITERS as u64 + 1, None));
    assert_eq!(check.head_hash, next.hash);
}

pub async fn decisions_are_found_by_id(url: &str) {
    let store = store(url).await;
    let mut records = Vec::new();
    for i in 0..20 {
        records.push(store.record_decision(decision(i)).await.unwrap());
    }
    // By transfer id.
    let paid = &records[4];
    let transfer = paid.transfer_id.clone().unwrap();
    let found = store.decisions_for(&transfer).await.unwrap();
    assert_eq!(found, vec![paid.clone()]);
    assert!(found[0].allowed);
    assert_eq!(found[0].amount, Some(Amount::from(1_004u64)));
    assert_eq!(found[0].rules, decision(4).rules);
    // By session id: every decision of the session, in order.
    let found = store.decisions_for("ses_3").await.unwrap();
    let expected: Vec<_> = records
        .iter()
        .filter(|r| r.session_id.as_deref() == Some("ses_3"))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(found, expected);
    // By decision id, a refusal with its reason.
    let refused = &records[6];
    let found = store.decisions_for(&refused.id).await.unwrap();
    assert_eq!(found, vec![refused.clone()]);
    assert!(!found[0].allowed);
    assert_eq!(found[0].reason.as_deref(), Some("budget_exhausted"));
    assert_eq!(found[0].transfer_id, None);
    assert!(store.decisions_for("tfr_nothing").await.unwrap().is_empty());

    // A decision with nothing but its rules round-trips too.
    let bare = store
        .record_decision(NewDecision {
            allowed: false,
            reason: Some("no_payable_offer".into()),
            rules: json!([]),
            ..NewDecision::default()
        })
        .await
        .unwrap();
    assert_eq!(store.decisions(bare.seq - 1, 1).await.unwrap(), vec![bare]);
    assert!(store.verify_decisions().await.unwrap().is_intact());
}

/// Each edit is made, found at `seq` by `verify_decisions`, then undone from a copy of the tables
/// (and the chain is intact again), so the cases are independent.
pub async fn edits_are_detected(url: &str) {
    let store = store(url).await;
    for i in 0..WRITERS {
        store.record_decision(decision(i)).await.unwrap();
    }
    let intact = store.verify_decisions().await.unwrap();
    assert_eq!((intact.checked, &intact.broken), (WRITERS as u64, &None));
    exec(
        url,
        "CREATE TABLE decisions_copy AS SELECT * FROM decisions; \
         CREATE TABLE decision_chain_copy AS SELECT * FROM decision_chain",
    )
    .await;

    let cases: &[(&str, &str, i64, &str)] = &[
        (
            "amount changed",
            "UPDATE decisions SET amount = '999999' WHERE seq = 37",
            37,
            "hash",
        ),
        (
            "allowed flipped",
            "UPDATE decisions SET allowed = NOT allowed WHERE seq = 50",
            50,
            "hash",
        ),
        (
            "reason removed",
            // Decision 52 (the 51st written, i = 51) is a refusal with a reason.
            "UPDATE decisions SET reason = NULL WHERE seq = 52",
            52,
            "hash",
        ),
        (
            "rules edited",
            "UPDATE decisions SET rules = \
             '[{\"rule\":\"session_budget\",\"input\":{},\"passed\":true,\"detail\":\"\"}]' \
             WHERE seq = 61",
            61,
            "hash",
        ),
        (
            "rules unreadable",
            "UPDATE decisions SET rules = '[{\"rule\": ' WHERE seq = 62",
            62,
            "JSON",
        ),
        (
            "amount unreadable",
            "UPDATE decisions SET amount = 'a lot' WHERE seq = 63",
            63,
            "amount",
        ),
        (
            "middle row deleted",
            "DELETE FROM decisions WHERE seq = 40",
            40,
            "missing",
        ),
        (
            "last row deleted",
            "DELETE FROM decisions WHERE seq = 100",
            100,
            "missing",
        ),
        (
            "relinked by prev_hash",
            "UPDATE decisions SET prev_hash = (SELECT hash FROM decisions WHERE seq = 10) \
             WHERE seq = 20",
            20,
            "prev_hash",
        ),
        (
            "two rows swapped",
            "UPDATE decisions SET seq = -30 WHERE seq = 30; \
             UPDATE decisions SET seq = 30 WHERE seq = 31; \
             UPDATE decisions SET seq = 31 WHERE seq = -30",
            30,
            "prev_hash",
        ),
        (
            "head hash replaced",
            "UPDATE decision_chain SET head_hash = \
             (SELECT hash FROM decisions WHERE seq = 99) WHERE id = 1",
            100,
            "head",
        ),
        (
            "row forged after the head",
            "INSERT INTO decisions (seq, id, at_ms, session_id, wallet_id, agent, transfer_id, \
             resource, payee, amount, allowed, reason, rules, prev_hash, hash) \
             SELECT 101, 'dec_forged', at_ms, session_id, wallet_id, agent, transfer_id, \
             resource, payee, amount, allowed, reason, rules, hash, hash \
             FROM decisions WHERE seq = 100",
            101,
            "beyond",
        ),
    ];
    for (name, sql, seq, why) in cases {
        exec(url, sql).await;
        let check = store.verify_decisions().await.unwrap();
        let (broken_seq, reason) = check
            .broken
            .clone()
            .unwrap_or_else(|| panic!("{name}: not detected"));
        assert_eq!(broken_seq, *seq, "{name}: {reason}");
        assert!(reason.contains(why), "{name}: {reason}");
        // Rows before the broken one verified; a wrong head is found after the last row.
        let verified = if *why == "head" { WRITERS } else { *seq - 1 };
        assert_eq!(check.checked, verified as u64, "{name}");
        exec(
            url,
            "DELETE FROM decisions; INSERT INTO decisions SELECT * FROM decisions_copy; \
             DELETE FROM decision_chain; \
             INSERT INTO decision_chain SELECT * FROM decision_chain_copy",
        )
        .await;
        let restored = store.verify_decisions().await.unwrap();
        assert_eq!(restored, intact, "{name}: restored");
    }

    // SQLite columns take any type: a value of the wrong type is a broken row, not a failure.
    if url.starts_with("sqlite") {
        for (sql, seq) in [
            ("UPDATE decisions SET at_ms = 'yesterday' WHERE seq = 5", 5),
            ("UPDATE decisions SET allowed = 'maybe' WHERE seq = 6", 6),
            ("UPDATE decisions SET rules = x'00ff' WHERE seq = 7", 7),
        ] {
            exec(url, sql).await;
            let check = store.verify_decisions().await.unwrap();
            assert_eq!(check.broken.map(|(seq, _)| seq), Some(seq), "{sql}");
            exec(
                url,
                "DELETE FROM decisions; INSERT INTO decisions SELECT * FROM decisions_copy",
            )
            .await;
        }
        assert_eq!(store.verify_decisions().await.unwrap(), intact);
    }

    // Listings refuse a corrupt row rather than inventing a value for it.
    exec(url, "UPDATE decisions SET rules = 'x' WHERE seq = 3").await;
    assert!(matches!(
        store.decisions(0, 10).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Verifying while decisions are being written sees an intact chain every time: the walk stops
/// at the head it read first, and rows written meanwhile are not taken for forgeries.
pub async fn verify_while_writing(url: &str) {
    let store = store(url).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITERS {
                store.record_decision(decision(i)).await.unwrap();
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() {
        let check = store.verify_decisions().await.unwrap();
        assert_eq!(check.broken, None, "after {} rows", check.checked);
        checks += 1;
    }
    writer.await.unwrap();
    let check = store.verify_decisions().await.unwrap();
    assert_eq!((check.checked, check.broken), (WRITERS as u64, None));
    assert!(checks > 0);
}

macro_rules! conformance {
    ($backend:ident, $database:expr, $url:ident) => {
        mod $backend {
            conformance!(@cases $database, $url;
                concurrent_writers_form_one_chain,
                decisions_are_found_by_id,
                edits_are_detected,
                verify_while_writing
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
