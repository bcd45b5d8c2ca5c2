//! End-to-end: the default policy in `bursar dev` against hostile sellers, and replacing it.

mod common;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

use alloy_primitives::Address;

/// Sessions with no policy written by anyone, in `bursar dev`, against the four hostile
/// patterns: each is stopped by the default policy after a small, known number of payments
/// (read on chain and in the ledger), the agent is told why, and the decision trace shows
/// the rule that refused, from the default policy.
#[test]
fn the_default_policy_stops_hostile_sellers_in_bursar_dev() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev = Dev::spawn(
        dir.path(),
        &[],
        Some(("default-policy-passphrase", log.as_path())),
    );
    let banner = std::fs::read_to_string(&log).unwrap();
    assert!(
        banner.contains("the default policy on every session"),
        "{banner}"
    );
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let buyer = dev.buyer();
    let buyer_start = dev.balance(&buyer);
    let paid_to = |address: Address| dev.balance(&address.to_string());

    // 1. "Verify your wallet", 200 times, each 0.005 (the whole 1.00 budget): loop detection
    // stops it after 10 payments within a minute.
    let (drain, drain_token) = open_session(&dev, &key, "drained", "1.00");
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for attempt in 0..200 {
        let url = format!("{}/verify-wallet?attempt={attempt}", seller.url);
        let (status, body) = agent_fetch(&dev, &drain, &drain_token, &url);
        let code = match status {
            200 => "paid".to_string(),
            403 => body["error"]["code"].as_str().unwrap().to_string(),
            other => panic!("{other}: {body}"),
        };
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(
        codes,
        [("loop_detected".to_string(), 190), ("paid".to_string(), 10)].into()
    );
    assert_eq!(paid_to(seller.drain), 10 * HOSTILE_PRICE);
    let transfers = transfers_of(&dev, &drain, &drain_token);
    assert_eq!(transfers.len(), 10);
    assert!(
        transfers
            .iter()
            .all(|(state, amount)| state == "posted" && *amount == HOSTILE_PRICE)
    );
    let decisions = trace(&dev, &drain);
    assert_eq!(decisions.len(), 200);
    assert_eq!(
        decisions.iter().filter(|(allowed, ..)| *allowed).count(),
        10
    );
    assert!(
        decisions[10..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("loop_detected")
                && failing == &["loop_detection@default policy".to_string()])
    );

    // 2. A 402 again after every payment (the seller settles each one): one payment, then the
    // endpoint backs off for a minute.
    let (again, again_token) = open_session(&dev, &key, "asked-again", "1.00");
    let url = format!("{}/again", seller.url);
    let (status, body) = agent_fetch(&dev, &again, &again_token, &url);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "payment_rejected", "{body}");
    for _ in 0..4 {
        let (status, body) = agent_fetch(&dev, &again, &again_token, &url);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "endpoint_backing_off", "{body}");
    }
    assert_eq!(paid_to(seller.again), HOSTILE_PRICE, "one payment moved");
    // The runtime's resolver finds the settled authorization and posts it.
    let started = Instant::now();
    while transfers_of(&dev, &again, &again_token) != [("posted".to_string(), HOSTILE_PRICE)] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            transfers_of(&dev, &again, &again_token)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let decisions = trace(&dev, &again);
    assert_eq!(decisions.len(), 5);
    assert!(decisions[0].0);
    assert!(
        decisions[1..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("endpoint_backing_off")
                && failing == &["rejection_backoff@default policy".to_string()])
    );

    // 3. Garbage that calls itself JSON after payment: three paid failures, then the endpoint
    // is paused for every session under the default policy.
    let (garbage, garbage_token) = open_session(&dev, &key, "served-garbage", "1.00");
    let url = format!("{}/garbage", seller.url);
    for attempt in 1..=3u64 {
        let (status, body) = agent_fetch(&dev, &garbage, &garbage_token, &url);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["validation"]["passed"], false, "{body}");
        assert!(
            body["validation"]["failure"]
                .as_str()
                .unwrap()
                .contains("not JSON"),
            "{body}"
        );
        assert_eq!(body["validation"]["consecutiveFailures"], attempt);
    }
    for _ in 0..2 {
        let (status, body) = agent_fetch(&dev, &garbage, &garbage_token, &url);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "endpoint_paused", "{body}");
    }
    // Another session (its own budget, no policy either) is covered by the same pause.
    let (other, other_token) = open_session(&dev, &key, "next-run", "1.00");
    let (status, body) = agent_fetch(&dev, &other, &other_token, &url);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("endpoint_paused")),
        "{body}"
    );
    assert_eq!(paid_to(seller.garbage), 3 * HOSTILE_PRICE);
    assert_eq!(transfers_of(&dev, &garbage, &garbage_token).len(), 3);
    let decisions = trace(&dev, &garbage);
    assert_eq!(decisions.iter().filter(|(allowed, ..)| *allowed).count(), 3);
    assert!(
        decisions[3..]
            .iter()
            .all(|(allowed, reason, failing)| !allowed
                && reason.as_deref() == Some("endpoint_paused")
                && failing == &["endpoint_pause@default policy".to_string()])
    );
    let (status, pauses) = runtime_call(&dev, reqwest::Method::GET, "/v1/pauses", &key, None);
    assert_eq!(status, 200);
    assert_eq!(pauses["pauses"][0]["policy"], "default policy", "{pauses}");

    // 4. One call priced 0.99 against a 1.00 budget: refused (a quarter of the budget at most),
    // nothing signed; `bursar pay --session` exits 3 with the code.
    let (premium, premium_token) = open_session(&dev, &key, "upsold", "1.00");
    let url = format!("{}/premium", seller.url);
    let output = dev.bursar(&["pay", &url, "--session", &premium_token]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_per_call_exceeded"), "{stderr}");
    assert_eq!(paid_to(seller.premium), 0);
    assert!(transfers_of(&dev, &premium, &premium_token).is_empty());
    let decisions = trace(&dev, &premium);
    assert_eq!(
        decisions,
        [(
            false,
            Some("max_per_call_exceeded".to_string()),
            vec!["max_per_call_percent@default policy".to_string()]
        )]
    );

    // What the buyer lost to all four: exactly what the sellers' addresses received.
    let taken = 10 * HOSTILE_PRICE + HOSTILE_PRICE + 3 * HOSTILE_PRICE;
    assert_eq!(buyer_start - dev.balance(&buyer), taken);
    let reconcile = dev.bursar(&["ledger", "reconcile"]);
    assert!(reconcile.status.success(), "{reconcile:?}");
}

/// `--no-default-policy` says loudly that sessions are unprotected, and then the call priced
/// just under the budget is paid; `--policy FILE` (the default written out by `bursar policy
/// init`, loosened) replaces the default.
#[test]
fn the_default_policy_is_replaced_or_switched_off_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    // `bursar policy init`: the commented default, never over an existing file without --force.
    let file = dir.path().join("policy.toml");
    let file_text = file.display().to_string();
    let init = |extra: &[&str]| {
        let mut args = vec!["policy", "init", file_text.as_str()];
        args.extend_from_slice(extra);
        Command::new(BURSAR).args(&args).output().unwrap()
    };
    let output = init(&[]);
    assert!(output.status.success(), "{output:?}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("max_per_call_percent = 25"), "{written}");
    assert!(written.lines().filter(|l| l.starts_with('#')).count() > 20);
    let output = init(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--force"),
        "{output:?}"
    );
    std::fs::write(
        &file,
        written.replace("max_per_call_percent = 25", "max_per_call_percent = 100"),
    )
    .unwrap();
    let printed = Command::new(BURSAR)
        .args(["policy", "init", "-"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), written);

    // Replaced by the loosened copy: the 0.99 call is paid; the copy's loop rule still holds.
    let replaced_dir = dir.path().join("replaced");
    let replaced_log = dir.path().join("replaced.log");
    let dev = Dev::spawn(
        &replaced_dir,
        &["--policy", &file_text],
        Some(("replaced-passphrase", replaced_log.as_path())),
    );
    let banner = std::fs::read_to_string(&replaced_log).unwrap();
    assert!(banner.contains("replaces the default policy"), "{banner}");
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let (session, token) = open_session(&dev, &key, "replaced", "1.00");
    let (status, body) = agent_fetch(&dev, &session, &token, &format!("{}/premium", seller.url));
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.balance(&seller.premium.to_string()), 990_000);
    let decisions = trace(&dev, &session);
    assert!(decisions[0].0);
    drop(dev);

    // Switched off: a loud warning, and nothing but the budget and pinned terms.
    let off_dir = dir.path().join("off");
    let off_log = dir.path().join("off.log");
    let dev = Dev::spawn(
        &off_dir,
        &["--no-default-policy"],
        Some(("off-passphrase", off_log.as_path())),
    );
    let banner = std::fs::read_to_string(&off_log).unwrap();
    assert!(
        banner.contains("WARNING: the default policy is switched off"),
        "{banner}"
    );
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let (session, token) = open_session(&dev, &key, "unprotected", "1.00");
    let (status, body) = agent_fetch(&dev, &session, &token, &format!("{}/premium", seller.url));
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.balance(&seller.premium.to_string()), 990_000);
    // Both flags at once is a usage error.
    let output = Command::new(BURSAR)
        .args(["dev", "--policy", &file_text, "--no-default-policy"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// `--policy FILE` is re-read when the file changes, while the runtime runs: a loosened file
/// lets the call it refused through, a broken file denies every payment (fail closed, the agent
/// told why), and the file fixed is obeyed again; nothing moves while payments are denied.
#[test]
fn the_policy_file_is_reloaded_and_a_broken_file_denies_every_payment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    let init = Command::new(BURSAR)
        .args(["policy", "init"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let strict = std::fs::read_to_string(&file).unwrap();
    assert!(strict.contains("max_per_call_percent = 25"), "{strict}");
    let loose = strict.replace("max_per_call_percent = 25", "max_per_call_percent = 100");
    // Each version gets its own modification time, a second apart, so a change is seen however
    // coarse the file system's clock is.
    let mut version = 0u64;
    let mut write_policy = |text: &str| {
        version += 1;
        std::fs::write(&file, text).unwrap();
        let at = std::time::SystemTime::now() + Duration::from_secs(version);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(at)
            .unwrap();
    };

    let dev = Dev::start_with(
        &dir.path().join("data"),
        &["--policy", &file.to_string_lossy()],
    );
    let key = dev.info["operatorKey"].as_str().unwrap().to_string();
    let seller = HostileSeller::start(&dev);
    let premium = format!("{}/premium", seller.url);
    let weather = dev.api("/weather");
    let buyer = dev.buyer();

    // The file as written by `policy init`: 0.99 of a 1.00 budget is over 25% per call.
    let (session, token) = open_session(&dev, &key, "strict", "1.00");
    let (status, body) = agent_fetch(&dev, &session, &token, &premium);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "max_per_call_exceeded", "{body}");

    // Loosened while running: the same call in the same session is paid.
    write_policy(&loose);
    let (status, body) = agent_fetch(&dev, &session, &token, &premium);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.balance(&seller.premium.to_string()), 990_000);

    // Broken: every payment is denied, even a small one, and nothing moves.
    write_policy("max_per_call_percent = [this is not TOML");
    let before = dev.balance(&buyer);
    let (session, token) = open_session(&dev, &key, "broken", "1.00");
    for url in [&weather, &premium] {
        let (status, body) = agent_fetch(&dev, &session, &token, url);
        assert_eq!(status, 403, "{url}: {body}");
        assert_eq!(body["error"]["code"], "policy_unavailable", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("policy.toml is invalid"), "{body}");
    }
    assert_eq!(
        dev.balance(&buyer),
        before,
        "nothing paid while the file is broken"
    );
    let decisions = trace(&dev, &session);
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert!(decisions.iter().all(|(allowed, reason, _)| {
        !allowed && reason.as_deref() == Some("policy_unavailable")
    }));

    // Fixed (the strict file again): the small call is paid, the large one refused by it.
    write_policy(&strict);
    let (status, body) = agent_fetch(&dev, &session, &token, &weather);
    assert_eq!(status, 200, "{body}");
    let (status, body) = agent_fetch(&dev, &session, &token, &premium);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "max_per_call_exceeded", "{body}");
    assert_eq!(dev.balance(&buyer), before - WEATHER_PRICE);
}
