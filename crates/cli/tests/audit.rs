//! `bursar audit verify` and `bursar audit show` against a runtime database in a temporary data
//! dir: decisions are recorded through the store, the binary verifies them (exit 0), an edit made
//! to the database file is found (exit 6, naming the decision), and `show` explains a payment
//! rule by rule.

use std::path::Path;
use std::process::{Command, Output};

use bursar_protocol::Amount;
use bursar_store::{DecisionRecord, DecisionStore, NewDecision, SqliteDatabase};
use serde_json::json;

/// The amount of the decision the test edits: digits that appear nowhere else in the file.
const TAMPERED_AMOUNT: u64 = 7_316_529_048;
/// `bursar audit verify`'s exit code for a broken chain.
const AUDIT_BROKEN: i32 = 6;

fn bursar(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("BURSAR_DATABASE_URL")
        .env_remove("BURSAR_DATA_DIR")
        .output()
        .expect("run bursar")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Records the decisions the test reads back: an allowed payment, a refused one, and one whose
/// amount is edited later.
async fn record(url: &str) -> Vec<DecisionRecord> {
    let store = SqliteDatabase::open(url)
        .await
        .expect("open the runtime database");
    let paid = NewDecision {
        session_id: Some("ses_audit".into()),
        wallet_id: Some("wal_audit".into()),
        agent: Some("agent-7".into()),
        transfer_id: Some("tfr_paid".into()),
        resource: Some("https://api.example/report".into()),
        payee: Some("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into()),
        amount: Some(Amount::from(2_500u64)),
        allowed: true,
        reason: None,
        rules: json!([
            {"rule": "per_call_max", "input": {"amount": "2500", "max": "10000"},
             "passed": true, "detail": null},
            {"rule": "payee_allowlist", "input": {"payee": "api.example"},
             "passed": true, "detail": "host is on the allow list"},
        ]),
    };
    let refused = NewDecision {
        transfer_id: None,
        amount: Some(Amount::from(90_000u64)),
        allowed: false,
        reason: Some("budget_exhausted".into()),
        rules: json!([
            {"rule": "session_budget", "input": {"remaining": "7500", "amount": "90000"},
             "passed": false, "detail": "would exceed the session budget"},
        ]),
        ..paid.clone()
    };
    let edited = NewDecision {
        transfer_id: Some("tfr_edited".into()),
        amount: Some(Amount::from(TAMPERED_AMOUNT)),
        ..paid.clone()
    };
    let mut records = Vec::new();
    for decision in [paid, refused, edited, NewDecision::default()] {
        match store.record_decision(decision).await {
            Ok(record) => records.push(record),
            // The last one has no rules (null): refused, and nothing recorded.
            Err(error) => assert!(error.to_string().contains("JSON array"), "{error}"),
        }
    }
    // Closing the last connection checkpoints the WAL into the database file.
    store.close().await;
    records
}

/// Changes the edited decision's amount in the database file itself (same length, so the file
/// stays well-formed), as someone with access to the disk could.
fn edit_amount(database: &Path) {
    let wal = database.with_extension("sqlite-wal");
    assert!(
        std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0) == 0,
        "the WAL was not checkpointed into {}",
        database.display()
    );
    let mut bytes = std::fs::read(database).unwrap();
    let from = TAMPERED_AMOUNT.to_string().into_bytes();
    let to = (TAMPERED_AMOUNT + 1).to_string().into_bytes();
    let at: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, window)| *window == from.as_slice())
        .map(|(at, _)| at)
        .collect();
    assert_eq!(at.len(), 1, "the amount occurs once in the file");
    bytes[at[0]..at[0] + to.len()].copy_from_slice(&to);
    std::fs::write(database, bytes).unwrap();
}

#[test]
fn verify_and_show_the_decision_trace() {
    let data_dir = tempfile::tempdir().unwrap();
    // The default database of `--data-dir`.
    let database = data_dir.path().join("runtime.sqlite");
    let url = bursar_store::sqlite_file_url(&database);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let records = runtime.block_on(record(&url));
    assert_eq!(records.len(), 3);
    let head = &records[2];

    let verified = bursar(data_dir.path(), &["audit", "verify"]);
    let out = text(&verified);
    assert_eq!(verified.status.code(), Some(0), "{out}");
    assert!(out.contains("checked 3 decisions"), "{out}");
    assert!(out.contains(&head.hash), "prints the head hash: {out}");
    assert!(out.contains("intact"), "{out}");
    let expected = format!("{}:{}", head.seq, head.hash);
    let pinned = bursar(data_dir.path(), &["audit", "verify", "--expect", &expected]);
    assert_eq!(pinned.status.code(), Some(0), "{}", text(&pinned));
    let wrong = format!("{}:{}", head.seq, records[1].hash);
    let rewritten = bursar(data_dir.path(), &["audit", "verify", "--expect", &wrong]);
    assert_eq!(
        rewritten.status.code(),
        Some(AUDIT_BROKEN),
        "{}",
        text(&rewritten)
    );

    let shown = bursar(data_dir.path(), &["audit", "show", "tfr_paid"]);
    let out = text(&shown);
    assert_eq!(shown.status.code(), Some(0), "{out}");
    for expected in [
        "ALLOWED",
        "2500 (atomic units)",
        "https://api.example/report",
        "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
        "1. per_call_max: passed",
        r#"input: {"amount":"2500","max":"10000"}"#,
        "2. payee_allowlist: passed",
        "detail: host is on the allow list",
        records[0].id.as_str(),
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("budget_exhausted"), "{out}");

    // The session's decisions include the refusal and say why.
    let shown = bursar(data_dir.path(), &["audit", "show", "ses_audit"]);
    let out = text(&shown);
    assert_eq!(shown.status.code(), Some(0), "{out}");
    for expected in [
        "DENIED: budget_exhausted",
        "1. session_budget: FAILED",
        "detail: would exceed the session budget",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let json_out = bursar(
        data_dir.path(),
        &["audit", "show", &records[1].id, "--json"],
    );
    assert_eq!(json_out.status.code(), Some(0), "{}", text(&json_out));
    let listed: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["allowed"], false);
    assert_eq!(listed[0]["reason"], "budget_exhausted");
    assert_eq!(listed[0]["amountAtomic"], "90000");
    assert_eq!(listed[0]["rules"][0]["rule"], "session_budget");
    assert_eq!(listed[0]["hash"], records[1].hash.as_str());
    let unknown = bursar(data_dir.path(), &["audit", "show", "tfr_unknown"]);
    assert_ne!(unknown.status.code(), Some(0));
    assert!(
        text(&unknown).contains("no decisions"),
        "{}",
        text(&unknown)
    );

    edit_amount(&database);
    let broken = bursar(data_dir.path(), &["audit", "verify"]);
    let out = text(&broken);
    assert_eq!(broken.status.code(), Some(AUDIT_BROKEN), "{out}");
    assert!(
        out.contains(&format!("BROKEN at decision {}", head.seq)),
        "names the edited decision: {out}"
    );
    assert!(out.contains("checked 2 decisions"), "{out}");
}
