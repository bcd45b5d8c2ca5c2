//! End-to-end: `bursar ledger reconcile` catches each kind of difference between the runtime
//! ledger and the chain, with exit code 5, and names it; with the difference undone, it exits 0.
//!
//! The differences are made the way they happen: a ledger edited behind the runtime's back (rows
//! changed in its SQLite database while it runs, the append-only triggers dropped first), and
//! the wallet's key used outside the runtime (in `bursar dev`, the runtime's demo wallet is the
//! demo buyer, whose key `bursar pay` without `--session` signs with).

mod common;
use common::*;

use std::process::Output;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

/// `bursar ledger reconcile`'s exit code when it finds a difference.
const EXIT_RECONCILE_DIFFERENCES: i32 = 5;

/// A connection to the dev runtime's database, beside the running runtime.
struct Database {
    pool: SqlitePool,
    runtime: tokio::runtime::Runtime,
}

impl Database {
    fn open(dev: &Dev) -> Database {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dev.data_dir.join("runtime.sqlite"))
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = runtime
            .block_on(SqlitePool::connect_with(options))
            .expect("open the runtime database");
        Database { pool, runtime }
    }

    /// Runs `sql` (statements separated by `;`) in one transaction.
    fn execute(&self, sql: &str) {
        self.runtime.block_on(async {
            let mut tx = self.pool.begin().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        });
    }

    fn text(&self, sql: &str) -> String {
        self.runtime
            .block_on(
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_one(&self.pool),
            )
            .unwrap()
    }
}

fn reconcile(dev: &Dev) -> (Option<i32>, String) {
    let Output { status, stdout, .. } = dev.bursar(&["ledger", "reconcile"]);
    (status.code(), String::from_utf8_lossy(&stdout).into_owned())
}

/// Reconcile finds exactly one difference, which contains every one of `expected`, and exits 5.
fn assert_difference(dev: &Dev, what: &str, expected: &[&str]) {
    let (code, out) = reconcile(dev);
    assert_eq!(code, Some(EXIT_RECONCILE_DIFFERENCES), "{what}: {out}");
    let found: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("DIFFERENCE"))
        .collect();
    assert_eq!(found.len(), 1, "{what}: one difference expected: {out}");
    // Addresses and hashes are compared without regard to their hex case.
    let line = found[0].to_lowercase();
    for part in expected {
        assert!(
            line.contains(&part.to_lowercase()),
            "{what}: {part:?} not in {out}"
        );
    }
}

fn assert_clean(dev: &Dev, after: &str) {
    let (code, out) = reconcile(dev);
    assert_eq!(code, Some(0), "after {after}: {out}");
    assert!(out.contains("no differences"), "after {after}: {out}");
}

#[test]
fn reconcile_catches_each_kind_of_difference_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let (session, token) = open_session(&dev, &key, "reconciled", "0.50");
    let weather = dev.api("/weather");
    for _ in 0..2 {
        let (status, body) = agent_fetch(&dev, &session, &token, &weather);
        assert_eq!(status, 200, "{body}");
    }
    assert_clean(&dev, "two payments");
    let db = Database::open(&dev);
    let transfer = db.text(&format!(
        "SELECT id FROM transfers WHERE session_id = '{session}' AND state = 'posted' \
         ORDER BY id LIMIT 1"
    ));
    let price = WEATHER_PRICE.to_string();
    let less = (WEATHER_PRICE - 1).to_string();
    let posted = (2 * WEATHER_PRICE).to_string();

    // Session totals off: the session records one unit more than its transfers add up to.
    db.execute(&format!(
        "UPDATE sessions SET posted = '{}' WHERE id = '{session}'",
        2 * WEATHER_PRICE + 1
    ));
    assert_difference(
        &dev,
        "session totals off",
        &[
            &session,
            &format!("records posted {}", 2 * WEATHER_PRICE + 1),
        ],
    );
    db.execute(&format!(
        "UPDATE sessions SET posted = '{posted}' WHERE id = '{session}'"
    ));
    assert_clean(&dev, "the session's total was put back");

    // A post without a transfer: a `post` entry naming a transfer the ledger does not have.
    db.execute(&format!(
        "INSERT INTO ledger_entries (kind, transfer_id, session_id, amount, at_ms) \
         VALUES ('post', 'tr_nowhere', '{session}', '{price}', 0)"
    ));
    assert_difference(
        &dev,
        "a post without a transfer",
        &["tr_nowhere", "name a transfer that does not exist"],
    );
    db.execute(
        "DROP TRIGGER ledger_entries_no_delete; \
         DELETE FROM ledger_entries WHERE transfer_id = 'tr_nowhere'",
    );
    assert_clean(&dev, "the stray post was removed");

    // A wrong amount: the ledger agrees with itself (transfer, its entries and the session say
    // one unit less), and only the chain shows what was really paid.
    db.execute(&format!(
        "DROP TRIGGER ledger_entries_no_update; \
         UPDATE transfers SET amount = '{less}' WHERE id = '{transfer}'; \
         UPDATE ledger_entries SET amount = '{less}' WHERE transfer_id = '{transfer}'; \
         UPDATE sessions SET posted = '{}' WHERE id = '{session}'",
        2 * WEATHER_PRICE - 1
    ));
    assert_difference(
        &dev,
        "a wrong amount",
        &[
            &transfer,
            &format!("records {less} to"),
            &format!("moved {price} to"),
        ],
    );
    db.execute(&format!(
        "UPDATE transfers SET amount = '{price}' WHERE id = '{transfer}'; \
         UPDATE ledger_entries SET amount = '{price}' WHERE transfer_id = '{transfer}'; \
         UPDATE sessions SET posted = '{posted}' WHERE id = '{session}'"
    ));
    assert_clean(&dev, "the amounts were put back");

    // A chain transfer missing from the ledger: the wallet's key pays outside the runtime.
    let paid: Value = pay_json(&dev, "/weather", &[]);
    let tx = paid["receipt"]["transaction"]
        .as_str()
        .unwrap_or_else(|| panic!("a transaction in {paid}"))
        .to_string();
    assert_difference(
        &dev,
        "a chain transfer missing from the ledger",
        &[
            &format!("wallet {}", dev.buyer()),
            &tx,
            "money left the wallet unrecorded",
        ],
    );
}
