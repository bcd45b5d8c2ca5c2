//! End-to-end: the runtime inside `bursar dev`: sessions paying, SIGKILL mid-payment,
//! compensation, keys never shown, egress flags.

mod common;
use common::*;

use std::process::{Command, Output};
use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use serde_json::Value;

/// The runtime inside `bursar dev`: an operator grants and opens a session over the API, the
/// agent pays with `bursar pay --session`; then the process is SIGKILLed in the middle of
/// concurrent payments and restarted: no reservation is lost, nothing is paid twice (the chain's
/// spend equals the ledger's posted total), and `bursar ledger reconcile` finds no difference.
#[test]
fn runtime_session_pays_and_survives_sigkill_mid_payment() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let buyer = dev.buyer();
    let start_balance = dev.balance(&buyer);

    let (session_id, token) = open_session(&dev, &key, "crawler", "0.30");

    let weather = dev.api("/weather");
    let output = dev.bursar(&["pay", &weather, "--session", &token]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Lisbon"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("posted"));
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);

    // Concurrent payments through the session, and a SIGKILL while they run.
    let runtime_url = dev.info["runtimeUrl"].as_str().unwrap().to_string();
    let workers: Vec<_> = (0..40)
        .map(|_| {
            let (url, token, session_id, weather) = (
                runtime_url.clone(),
                token.clone(),
                session_id.clone(),
                weather.clone(),
            );
            std::thread::spawn(move || {
                let _ = reqwest::blocking::Client::new()
                    .post(format!("{url}/v1/sessions/{session_id}/fetch"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"url": weather}))
                    .timeout(Duration::from_secs(20))
                    .send();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(35));
    dev.kill();
    for worker in workers {
        worker.join().unwrap();
    }

    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let output = dev.bursar(&["ledger", "reconcile"]);
    assert!(
        output.status.success(),
        "reconcile after restart: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, session) = runtime_call(
        &dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session_id}"),
        &key,
        None,
    );
    assert_eq!(status, 200, "{session}");
    let posted: u128 = session["postedAtomic"].as_str().unwrap().parse().unwrap();
    let reserved: u128 = session["reservedAtomic"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "after SIGKILL and restart: posted {posted}, still reserved {reserved} (atomic units)"
    );
    assert!(posted + reserved <= 300_000, "over budget: {session}");
    assert!(posted >= WEATHER_PRICE);
    assert_eq!(posted % WEATHER_PRICE, 0);
    // Nothing paid twice, nothing paid unrecorded: the chain moved exactly what was posted.
    assert_eq!(start_balance - dev.balance(&buyer), posted, "{session}");
    let (_, transfers) = runtime_call(
        &dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session_id}/transfers"),
        &token,
        None,
    );
    let transfers = transfers["transfers"].as_array().unwrap();
    let sum = |state: &str| -> u128 {
        transfers
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| t["amountAtomic"].as_str().unwrap().parse::<u128>().unwrap())
            .sum()
    };
    assert_eq!(sum("posted"), posted);
    assert_eq!(sum("pending"), reserved);

    let output = dev.bursar(&["ledger", "export", "--csv"]);
    assert!(output.status.success());
    let csv = String::from_utf8_lossy(&output.stdout);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("seq,kind,at_ms,transfer_id")
    );
    let posts = lines.filter(|line| line.contains(",post,")).count() as u128;
    assert_eq!(posts * WEATHER_PRICE, posted);

    // Policies from the command line: learn an allowlist from these payments, attach it, read it.
    let output = dev.bursar(&["policy", "learn", "--days", "1"]);
    assert!(output.status.success(), "{output:?}");
    let learned = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(learned.contains("\"127.0.0.1\""), "{learned}");
    assert!(
        learned
            .to_ascii_lowercase()
            .contains(&dev.seller().to_ascii_lowercase()),
        "{learned}"
    );
    let file = dir.path().join("learned.toml");
    std::fs::write(&file, &learned).unwrap();
    let file_text = file.display().to_string();
    let output = dev.bursar(&["policy", "set", "session", &session_id, &file_text]);
    assert!(output.status.success(), "{output:?}");
    let output = dev.bursar(&["policy", "show", "session", &session_id]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), learned);
    std::fs::write(&file, "max_per_call = \"lots\"").unwrap();
    let output = dev.bursar(&["policy", "set", "session", &session_id, &file_text]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_per_call"));
}

/// The compensation commands against `bursar dev`: a payment made with `bursar pay --session
/// --step`, then `bursar session fail --step` with the agent's own token: the settled payment
/// becomes a refund claim carrying its evidence and settlement, `bursar compensation list` shows
/// it, an unknown step is refused with a non-zero exit, and the money moved exactly once.
#[test]
fn compensation_commands_turn_a_failed_step_into_a_refund_claim() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let buyer = dev.buyer();
    let start_balance = dev.balance(&buyer);
    let (session_id, token) = open_session(&dev, &key, "summarizer", "0.10");

    let weather = dev.api("/weather");
    let paid = dev.bursar(&["pay", &weather, "--session", &token, "--step", "forecast"]);
    assert!(
        paid.status.success(),
        "{}",
        String::from_utf8_lossy(&paid.stderr)
    );
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);

    let failed = dev.bursar(&[
        "session",
        "fail",
        &session_id,
        "--step",
        "forecast",
        "--reason",
        "the forecast was for the wrong city",
        "--token",
        &token,
    ]);
    assert!(
        failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let marked: Value = serde_json::from_slice(&failed.stdout).unwrap();
    let record = &marked["compensations"][0];
    assert_eq!(record["outcome"], "refund_claim", "{marked}");
    assert_eq!(record["requestedBy"], "agent", "{record}");
    assert_eq!(record["transfer"]["state"], "posted", "{record}");
    assert!(
        record["settleTxHash"]
            .as_str()
            .is_some_and(|tx| tx.len() == 66),
        "{record}"
    );
    assert!(
        record["evidence"]["request"]["url"]
            .as_str()
            .is_some_and(|url| url.ends_with("/weather")),
        "{record}"
    );
    assert_eq!(record["evidence"]["response"]["status"], 200, "{record}");

    let listed = dev.bursar(&["compensation", "list", "--session", &session_id]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["compensations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["compensations"][0]["id"], record["id"]);

    let unknown = dev.bursar(&[
        "session",
        "fail",
        &session_id,
        "--step",
        "nope",
        "--reason",
        "x",
        "--token",
        &token,
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // A refund claim moves nothing by itself: the price left once.
    assert_eq!(dev.balance(&buyer), start_balance - WEATHER_PRICE);
}

/// The wallet, grant and session commands against `bursar dev`, keeping every output and the
/// server's debug log: a keystore v3 file is imported (a wrong passphrase is refused), listed,
/// funded and exported (it decrypts under the runtime's passphrase to the same key); a grant
/// (60 minutes by default) and a session on it pay; the kill switch (`grant revoke-all`) stops
/// the next payment with nothing moving. Nothing printed or logged anywhere contains the private
/// key or either passphrase.
#[test]
fn wallet_grant_and_session_commands_never_reveal_a_key() {
    use bursar_wallet::{Kdf, Keystore, Passphrase};
    const RUNTIME_PASSPHRASE: &str = "runtime-passphrase-7f3a9c";
    const IMPORT_PASSPHRASE: &str = "import-passphrase-51be02";

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev = Dev::start_logged(dir.path(), RUNTIME_PASSPHRASE, &log);
    let signer = PrivateKeySigner::random();
    let address = signer.address();
    let key_hex = alloy_primitives::hex::encode(signer.to_bytes());
    let keystore = Keystore::encrypt(
        &signer,
        &Passphrase::new(IMPORT_PASSPHRASE.into()).unwrap(),
        Kdf::light(),
    )
    .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("imported.json"), keystore.to_json()).unwrap();
    std::fs::write(path("their-passphrase"), IMPORT_PASSPHRASE).unwrap();
    std::fs::write(path("wrong-passphrase"), "not it").unwrap();

    let mut printed = String::new();
    let mut run = |args: &[&str]| -> Output {
        let output = dev.bursar(args);
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        printed.push_str(&String::from_utf8_lossy(&output.stderr));
        output
    };
    let json = |output: &Output| -> Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    };

    let imported = path("imported.json");
    // The keystore imported with the passphrase in `passphrase_file`.
    let mut import = |passphrase_file: &str| {
        run(&[
            "wallet",
            "import",
            "--name",
            "imported",
            "--keystore",
            &imported,
            "--keystore-passphrase-file",
            passphrase_file,
        ])
    };
    let output = import(&path("wrong-passphrase"));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("passphrase"),
        "{output:?}"
    );
    let wallet = json(&import(&path("their-passphrase")));
    assert_eq!(wallet["address"], address.to_checksum(None));
    let checksummed = address.to_checksum(None);
    let listed = run(&["wallet", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.contains("\timported\t") && line.ends_with(&checksummed)),
        "{listed}"
    );
    assert!(listed.contains("\tdemo\t"), "{listed}");
    assert!(run(&["faucet", &checksummed, "1"]).status.success());
    let balance = run(&["wallet", "balance", "imported"]);
    assert_eq!(String::from_utf8_lossy(&balance.stdout).trim(), "1 USDC");

    let exported = path("exported.json");
    assert!(
        run(&["wallet", "export", "imported", "--out", &exported])
            .status
            .success()
    );
    let exported = Keystore::from_json(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    let decrypted = exported
        .decrypt(&Passphrase::new(RUNTIME_PASSPHRASE.into()).unwrap())
        .unwrap();
    assert_eq!(decrypted.address(), address);

    let grant = json(&run(&[
        "grant",
        "create",
        "--wallet",
        "imported",
        "--agent",
        "cli-agent",
    ]));
    let lasts_ms = grant["expiresAtMs"].as_i64().unwrap() - grant["createdAtMs"].as_i64().unwrap();
    assert!(
        (3_590_000..=3_600_000).contains(&lasts_ms),
        "a grant lasts 60 minutes by default: {grant}"
    );
    let grant_id = grant["id"].as_str().unwrap();
    let session = json(&run(&[
        "session", "create", "--grant", grant_id, "--max", "0.05",
    ]));
    let (session_id, token) = (
        session["id"].as_str().unwrap(),
        session["token"].as_str().unwrap(),
    );
    let weather = dev.api("/weather");
    let output = run(&["pay", &weather, "--session", token]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(dev.balance(&checksummed), 1_000_000 - WEATHER_PRICE);

    let revoked = json(&run(&["grant", "revoke-all", "--reason", "kill switch"]));
    assert!(revoked["revoked"].as_u64().unwrap() >= 2, "{revoked}");
    let output = run(&["pay", &weather, "--session", token]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("grant_revoked"),
        "{output:?}"
    );
    assert_eq!(dev.balance(&checksummed), 1_000_000 - WEATHER_PRICE);
    let shown = json(&run(&["session", "show", session_id]));
    assert_eq!(shown["postedAtomic"], WEATHER_PRICE.to_string(), "{shown}");
    assert_eq!(shown["reservedAtomic"], "0", "{shown}");
    let listed = json(&run(&["session", "transfers", session_id]));
    let transfers = listed["transfers"].as_array().unwrap();
    assert_eq!(transfers.len(), 1, "{listed}");
    assert_eq!(transfers[0]["state"], "posted");

    dev.kill();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("payment posted"),
        "the debug log was captured"
    );
    // The banner says the dev runtime reaches loopback (its demo sellers), and why.
    assert!(
        logged.contains("agents' requests may reach public addresses and 127.0.0.0/8, ::1/128"),
        "{logged}"
    );
    for (what, text) in [("printed", &printed), ("logged", &logged)] {
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains(&key_hex), "the private key was {what}");
        assert!(
            !text.contains(RUNTIME_PASSPHRASE),
            "the runtime passphrase was {what}"
        );
        assert!(
            !text.contains(IMPORT_PASSPHRASE),
            "the import passphrase was {what}"
        );
    }
}

/// `bursar runtime`'s egress flags are checked before anything starts: a malformed entry and
/// --egress-allow-any together with entries are refused with a message and exit code 2.
#[test]
fn runtime_egress_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            vec!["--egress-allow", "not a host"],
            "is not an egress entry",
        ),
        (vec!["--egress-allow", "10.0.0.0/33"], "prefix length"),
        (
            vec!["--egress-allow-any", "--egress-allow", "10.0.0.0/8"],
            "cannot be used with",
        ),
    ] {
        let output = Command::new(BURSAR)
            .arg("runtime")
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("BURSAR_PASSPHRASE", "unused passphrase")
            .env_remove("BURSAR_EGRESS_ALLOW")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
