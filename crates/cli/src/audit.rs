//! `bursar audit`: the runtime's decision trace, read straight from its database.
//!
//! - `bursar audit verify` walks the hash chain of decisions and reports the first row that does
//!   not verify (exit code [`exit::AUDIT_BROKEN`]). It prints the head hash: copy it elsewhere
//!   from time to time, and check it later with `--expect <seq>:<hash>`, because someone who can
//!   write to the database could rewrite the whole chain and its head (see
//!   [`bursar_store::decisions`]).
//! - `bursar audit show <id>` explains why a payment was made or refused: every decision about a
//!   transfer, a session or one decision, with each rule that ran, its input and its result.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use bursar_store::{DecisionRecord, DecisionStore};
use serde_json::{Value, json};

use crate::exit;
use crate::pay::failure;
use crate::runtime::database_url;

#[derive(clap::Args)]
pub struct AuditArgs {
    #[arg(
        long,
        env = "BURSAR_DATA_DIR",
        default_value = ".bursar",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The runtime database. Default: <data-dir>/runtime.sqlite.
    #[arg(long, env = "BURSAR_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute every decision's hash and check the chain is whole; print the head hash.
    Verify {
        /// Also check that decision SEQ still has HASH (a head printed earlier): `SEQ:HASH`.
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<String>,
    },
    /// Why a payment was made or refused: the decisions about a transfer, session or decision id.
    Show {
        /// A transfer id (tfr_…), session id (ses_…) or decision id (dec_…).
        id: String,
        /// Print JSON (an array of decisions) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: AuditArgs) -> Result<()> {
    let url = database_url(args.database_url.as_deref(), &args.data_dir)?;
    let store = bursar_store::open_decision_store(&url)
        .await
        .context("cannot open the runtime database")?;
    match args.command {
        AuditCommand::Verify { expect } => verify(store.as_ref(), expect.as_deref()).await,
        AuditCommand::Show { id, json } => show(store.as_ref(), &id, json).await,
    }
}

async fn verify(store: &dyn DecisionStore, expect: Option<&str>) -> Result<()> {
    // Parse before the walk, so a typo is not reported after a long verification.
    let expect = expect.map(parse_expect).transpose()?;
    let check = store.verify_decisions().await?;
    println!("checked {} decisions", check.checked);
    if let Some((seq, why)) = &check.broken {
        println!("BROKEN at decision {seq}: {why}");
        println!("head hash (as recorded): {}", check.head_hash);
        return Err(failure(
            exit::AUDIT_BROKEN,
            format!("the decision trace does not verify from decision {seq} on"),
        ));
    }
    println!("head: decision {} hash {}", check.checked, check.head_hash);
    if let Some((seq, hash)) = expect {
        let found = store.decisions(seq.saturating_sub(1), 1).await?;
        match found.first() {
            Some(record) if record.seq == seq && record.hash == hash => {
                println!("decision {seq} still has the expected hash {hash}");
            }
            Some(record) if record.seq == seq => {
                println!(
                    "REWRITTEN: decision {seq} has hash {}, expected {hash}",
                    record.hash
                );
                return Err(failure(
                    exit::AUDIT_BROKEN,
                    format!(
                        "decision {seq} does not have the expected hash: the chain was rewritten"
                    ),
                ));
            }
            _ => {
                println!("MISSING: there is no decision {seq}, expected hash {hash}");
                return Err(failure(
                    exit::AUDIT_BROKEN,
                    format!("decision {seq} is missing: the chain was rewritten or truncated"),
                ));
            }
        }
    }
    println!("the decision trace is intact");
    Ok(())
}

/// `SEQ:HASH` → (seq, lowercase hash).
fn parse_expect(text: &str) -> Result<(i64, String)> {
    let bad =
        || anyhow!("--expect takes SEQ:HASH (a decision number and 64 hex digits), not {text:?}");
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq: i64 = seq.trim().parse().map_err(|_| bad())?;
    let hash = hash.trim().to_ascii_lowercase();
    if seq < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((seq, hash))
}

async fn show(store: &dyn DecisionStore, id: &str, as_json: bool) -> Result<()> {
    let decisions = store.decisions_for(id).await?;
    if decisions.is_empty() {
        return Err(anyhow!(
            "no decisions recorded for {id:?} (a transfer, session or decision id)"
        ));
    }
    if as_json {
        let list: Vec<Value> = decisions.iter().map(decision_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (index, decision) in decisions.iter().enumerate() {
        if index > 0 {
            println!();
        }
        print!("{}", describe(decision));
    }
    Ok(())
}

fn decision_json(decision: &DecisionRecord) -> Value {
    json!({
        "seq": decision.seq,
        "id": decision.id,
        "atMs": decision.at_ms,
        "at": utc_time(decision.at_ms),
        "allowed": decision.allowed,
        "reason": decision.reason,
        "sessionId": decision.session_id,
        "walletId": decision.wallet_id,
        "agent": decision.agent,
        "transferId": decision.transfer_id,
        "resource": decision.resource,
        "payee": decision.payee,
        "amountAtomic": decision.amount.map(|amount| amount.to_string()),
        "rules": decision.rules,
        "prevHash": decision.prev_hash,
        "hash": decision.hash,
    })
}

/// A decision as text, one fact per line.
fn describe(decision: &DecisionRecord) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "decision {} (#{}) at {}",
        decision.id,
        decision.seq,
        utc_time(decision.at_ms)
    ));
    let compensation = decision
        .reason
        .as_deref()
        .and_then(|reason| reason.strip_prefix("compensation_"));
    let verdict = if let Some(outcome) = compensation {
        // Recorded when a failed step or session was compensated, not a payment decision.
        format!("COMPENSATION: {outcome}")
    } else if decision.allowed {
        "ALLOWED".to_string()
    } else {
        format!(
            "DENIED: {}",
            decision.reason.as_deref().unwrap_or("no reason recorded")
        )
    };
    line(format!("  {verdict}"));
    if decision.allowed
        && let Some(reason) = &decision.reason
    {
        line(format!("  reason: {reason}"));
    }
    let absent = "-";
    line(format!(
        "  amount: {}",
        decision.amount.map_or(absent.to_string(), |amount| format!(
            "{amount} (atomic units)"
        ))
    ));
    line(format!(
        "  payee: {}",
        decision.payee.as_deref().unwrap_or(absent)
    ));
    line(format!(
        "  resource: {}",
        decision.resource.as_deref().unwrap_or(absent)
    ));
    for (label, value) in [
        ("transfer", &decision.transfer_id),
        ("session", &decision.session_id),
        ("wallet", &decision.wallet_id),
        ("agent", &decision.agent),
    ] {
        if let Some(value) = value {
            line(format!("  {label}: {value}"));
        }
    }
    let rules = decision.rules.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rules.is_empty() {
        line("  rules: none ran".to_string());
    } else {
        line("  rules:".to_string());
    }
    for (index, rule) in rules.iter().enumerate() {
        line(format!("    {}. {}", index + 1, describe_rule(rule)));
        if let Some(input) = rule.get("input").filter(|input| !input.is_null()) {
            line(format!("       input: {}", compact(input)));
        }
        match rule.get("detail") {
            None | Some(Value::Null) => {}
            Some(Value::String(detail)) if detail.is_empty() => {}
            Some(Value::String(detail)) => line(format!("       detail: {detail}")),
            Some(detail) => line(format!("       detail: {}", compact(detail))),
        }
    }
    line(format!("  hash: {}", decision.hash));
    out
}

/// `name: passed|FAILED`, or the rule as JSON when it is not shaped like one.
fn describe_rule(rule: &Value) -> String {
    let name = rule.get("rule").and_then(Value::as_str);
    let passed = rule.get("passed").and_then(Value::as_bool);
    match (name, passed) {
        (Some(name), Some(true)) => format!("{name}: passed"),
        (Some(name), Some(false)) => format!("{name}: FAILED"),
        (Some(name), None) => format!("{name}: no result recorded"),
        (None, _) => compact(rule),
    }
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn utc_time(at_ms: i64) -> String {
    const MS_PER_DAY: i64 = 86_400_000;
    let days = at_ms.div_euclid(MS_PER_DAY);
    let in_day = at_ms.rem_euclid(MS_PER_DAY);
    // Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_time(1_795_341_600_000), "2026-11-22T10:00:00.000Z");
        assert_eq!(utc_time(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn expected_heads() {
        let hash = "AB".repeat(32);
        assert_eq!(
            parse_expect(&format!("12:{hash}")).unwrap(),
            (12, hash.to_ascii_lowercase())
        );
        assert!(parse_expect("12").is_err());
        assert!(parse_expect("0:abcd").is_err());
        assert!(parse_expect(&format!("x:{hash}")).is_err());
        assert!(parse_expect(&format!("3:{}", "g".repeat(64))).is_err());
    }
}
