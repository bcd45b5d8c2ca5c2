//! Policy parsing and evaluation, rule by rule: what passes, what denies with which code, and
//! that every rule that ran is recorded.

use alloy_primitives::Address;
use bursar_governance::{
    DEFAULT_POLICY_SOURCE, DEFAULT_POLICY_TOML, DenyCode, EndpointHistory, EndpointPause,
    PaidResponse, Policy, PolicyError, Proposal, Terms, WindowScope, evaluate, parse_period,
};
use bursar_protocol::{Amount, AssetUnit};

const NOW_MS: i64 = 1_800_000_000_000;

fn usdc() -> AssetUnit {
    AssetUnit::usdc()
}

fn asset() -> Address {
    Address::repeat_byte(0xaa)
}

fn payee() -> Address {
    Address::repeat_byte(0xbb)
}

fn proposal(url: &str, atomic: u64) -> Proposal {
    Proposal {
        url: url.parse().unwrap(),
        network: "eip155:31337".into(),
        asset: asset(),
        pay_to: payee(),
        amount: Amount::from(atomic),
        phase: None,
        session_budget: None,
        listings: Default::default(),
    }
}

fn policy(text: &str) -> Policy {
    Policy::parse(text, &usdc(), "test").unwrap_or_else(|e| panic!("{e}"))
}

fn denial(policies: &[Policy], proposal: &Proposal, history: &EndpointHistory) -> Option<String> {
    evaluate(policies, proposal, history, NOW_MS)
        .denial
        .map(|(code, _)| code)
}

#[test]
fn no_policy_allows_and_records_nothing() {
    let evaluation = evaluate(
        &[],
        &proposal("http://a.test/x", 1),
        &EndpointHistory::default(),
        NOW_MS,
    );
    assert!(evaluation.allowed());
    assert!(evaluation.rules.is_empty());
}

#[test]
fn per_call_maximum_denies_a_call_just_under_a_large_budget() {
    let p = policy(r#"max_per_call = "0.10""#);
    let history = EndpointHistory::default();
    assert_eq!(
        denial(
            std::slice::from_ref(&p),
            &proposal("http://a.test/x", 100_000),
            &history
        ),
        None
    );
    let evaluation = evaluate(
        &[p],
        &proposal("http://a.test/x", 9_990_000),
        &history,
        NOW_MS,
    );
    assert_eq!(
        evaluation.denial.as_ref().unwrap().0,
        "max_per_call_exceeded"
    );
    assert_eq!(evaluation.rules.len(), 1);
    assert!(!evaluation.rules[0].passed);
    assert_eq!(evaluation.rules[0].input["max"], "100000");
}

#[test]
fn networks_assets_and_payees() {
    let history = EndpointHistory::default();
    let p = policy(&format!(
        r#"networks = ["eip155:8453"]
           assets = ["{}"]"#,
        asset()
    ));
    assert_eq!(
        denial(&[p], &proposal("http://a.test/x", 1), &history).as_deref(),
        Some("network_not_allowed")
    );
    let p = policy(&format!(r#"assets = ["{}"]"#, Address::repeat_byte(1)));
    assert_eq!(
        denial(&[p], &proposal("http://a.test/x", 1), &history).as_deref(),
        Some("asset_not_allowed")
    );
    let allow = policy(
        r#"[payees]
           allow_domains = ["api.good.test", "*.trusted.test"]"#,
    );
    assert_eq!(
        denial(
            std::slice::from_ref(&allow),
            &proposal("http://api.good.test/x", 1),
            &history
        ),
        None
    );
    assert_eq!(
        denial(
            std::slice::from_ref(&allow),
            &proposal("https://x.trusted.test/y", 1),
            &history
        ),
        None
    );
    for url in [
        "http://evil.test/x",
        "http://trusted.test/x",
        "http://api.good.test.evil/x",
    ] {
        assert_eq!(
            denial(std::slice::from_ref(&allow), &proposal(url, 1), &history).as_deref(),
            Some("payee_not_allowed"),
            "{url}"
        );
    }
    let both = policy(&format!(
        r#"[payees]
           allow_domains = ["api.good.test"]
           allow_addresses = ["{}"]"#,
        Address::repeat_byte(2)
    ));
    // A trusted host naming an unknown payTo is refused.
    assert_eq!(
        denial(&[both], &proposal("http://api.good.test/x", 1), &history).as_deref(),
        Some("payee_not_allowed")
    );
    let deny = policy(&format!(
        r#"[payees]
           deny_addresses = ["{}"]"#,
        payee()
    ));
    assert_eq!(
        denial(&[deny], &proposal("http://a.test/x", 1), &history).as_deref(),
        Some("payee_denied")
    );
}

#[test]
fn per_payee_limits_apply_only_to_their_payee() {
    let p = policy(
        r#"[[limits]]
           payee = "cheap.test"
           max_per_call = "0.01""#,
    );
    let history = EndpointHistory::default();
    assert_eq!(
        denial(
            std::slice::from_ref(&p),
            &proposal("http://other.test/x", 50_000),
            &history
        ),
        None
    );
    assert_eq!(
        denial(&[p], &proposal("http://cheap.test/x", 50_000), &history).as_deref(),
        Some("payee_limit_exceeded")
    );
}

#[test]
fn phases() {
    let p = policy(
        r#"[phases.explore]
           spend = false
           [phases.execute]
           max_per_call = "0.05""#,
    );
    let history = EndpointHistory::default();
    let mut exploring = proposal("http://a.test/x", 1);
    exploring.phase = Some("Explore".into());
    assert_eq!(
        denial(std::slice::from_ref(&p), &exploring, &history).as_deref(),
        Some("phase_no_spend")
    );
    let mut executing = proposal("http://a.test/x", 60_000);
    executing.phase = Some("execute".into());
    assert_eq!(
        denial(std::slice::from_ref(&p), &executing, &history).as_deref(),
        Some("phase_max_per_call_exceeded")
    );
    executing.amount = Amount::from(50_000u64);
    assert_eq!(denial(std::slice::from_ref(&p), &executing, &history), None);
    assert_eq!(
        denial(&[p], &proposal("http://a.test/x", 1), &history),
        None,
        "no phase declared"
    );
}

#[test]
fn endpoint_limits_loops_and_pinned_terms() {
    let p = policy(
        r#"[endpoints]
           max_calls_per_session = 10
           loop_count = 3
           loop_window = "60s""#,
    );
    let url = "http://a.test/verify-wallet?attempt=9";
    let recent = EndpointHistory {
        paid_in_session: 3,
        paid_at_ms: vec![NOW_MS - 1_000, NOW_MS - 2_000, NOW_MS - 3_000],
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 5_000), &recent).as_deref(),
        Some("loop_detected")
    );
    let old = EndpointHistory {
        paid_in_session: 3,
        paid_at_ms: vec![NOW_MS - 61_000, NOW_MS - 62_000, NOW_MS - 1_000],
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 5_000), &old),
        None
    );
    let many = EndpointHistory {
        paid_in_session: 10,
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 5_000), &many).as_deref(),
        Some("endpoint_call_limit")
    );

    let first = Terms {
        network: "eip155:31337".into(),
        asset: asset(),
        pay_to: payee(),
        amount: Amount::from(5_000u64),
    };
    let pinned = EndpointHistory {
        paid_in_session: 1,
        paid_at_ms: vec![NOW_MS - 100_000],
        first_terms: Some(first),
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 5_000), &pinned),
        None
    );
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 4_000), &pinned),
        None,
        "cheaper is fine"
    );
    assert_eq!(
        denial(std::slice::from_ref(&p), &proposal(url, 5_001), &pinned).as_deref(),
        Some("terms_changed")
    );
    let mut moved = proposal(url, 5_000);
    moved.pay_to = Address::repeat_byte(0xcc);
    assert_eq!(
        denial(std::slice::from_ref(&p), &moved, &pinned).as_deref(),
        Some("terms_changed")
    );
    let unpinned = policy("[endpoints]\npin_terms = false");
    assert_eq!(denial(&[unpinned], &moved, &pinned), None);
}

#[test]
fn deny_wins_across_layers_and_every_rule_is_recorded() {
    let lenient = policy(r#"max_per_call = "5""#);
    let strict = Policy::parse(r#"max_per_call = "0.01""#, &usdc(), "session ses_1").unwrap();
    let evaluation = evaluate(
        &[lenient, strict],
        &proposal("http://a.test/x", 20_000),
        &EndpointHistory::default(),
        NOW_MS,
    );
    assert_eq!(
        evaluation.denial.as_ref().unwrap().0,
        "max_per_call_exceeded"
    );
    assert_eq!(evaluation.rules.len(), 2);
    assert!(evaluation.rules[0].passed);
    assert!(!evaluation.rules[1].passed);
    assert_eq!(evaluation.rules[1].source, "session ses_1");
}

#[test]
fn windows_are_handed_to_the_store() {
    let p = policy(
        r#"[[windows]]
           scope = "wallet"
           period = "1h"
           max = "5"
           [[windows]]
           scope = "agent"
           period = "1d"
           max = "20""#,
    );
    let evaluation = evaluate(
        &[p],
        &proposal("http://a.test/x", 1),
        &EndpointHistory::default(),
        NOW_MS,
    );
    assert!(evaluation.allowed());
    assert_eq!(evaluation.windows.len(), 2);
    assert_eq!(evaluation.windows[0].scope, WindowScope::Wallet);
    assert_eq!(evaluation.windows[0].period_seconds, 3600);
    assert_eq!(evaluation.windows[0].max, Amount::from(5_000_000u64));
    assert_eq!(evaluation.windows[1].period_seconds, 86_400);
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    for (text, field) in [
        (r#"max_per_call = "lots""#, "max_per_call"),
        (r#"max_per_call = "0.0000001""#, "max_per_call"),
        (r#"networks = ["mainnet"]"#, "networks"),
        (r#"assets = ["0x12"]"#, "assets"),
        (
            "[payees]\nallow_domains = [\"bad host!\"]",
            "payees.allow_domains",
        ),
        (
            "[[windows]]\nscope = \"planet\"\nperiod = \"1h\"\nmax = \"1\"",
            "windows.scope",
        ),
        (
            "[[windows]]\nscope = \"wallet\"\nperiod = \"forever\"\nmax = \"1\"",
            "windows.period",
        ),
        ("[[limits]]\nmax_per_call = \"1\"", "limits"),
        ("[endpoints]\nloop_window = \"1m\"", "endpoints.loop_window"),
        ("[endpoints]\nloop_count = 0", "endpoints.loop_count"),
    ] {
        match Policy::parse(text, &usdc(), "t") {
            Err(PolicyError::Invalid { field: got, .. }) => assert_eq!(got, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(
        Policy::parse("max_per_cal = \"1\"", &usdc(), "t"),
        Err(PolicyError::Syntax(_))
    ));
    assert!(matches!(
        Policy::parse("[[[", &usdc(), "t"),
        Err(PolicyError::Syntax(_))
    ));
    let huge = "#".repeat(70_000);
    assert!(matches!(
        Policy::parse(&huge, &usdc(), "t"),
        Err(PolicyError::TooLarge(_))
    ));
    assert_eq!(parse_period("90s"), Some(90));
    assert_eq!(parse_period("30m"), Some(1800));
    assert_eq!(parse_period("0s"), None);
    assert_eq!(parse_period("400d"), None);
    assert_eq!(parse_period("99999999999999999999d"), None);
}

#[test]
fn repeated_rejections_back_off_exponentially() {
    let defaults = Policy::defaults("defaults");
    let url = "http://a.test/x";
    let history = |rejections, ago_ms: i64| EndpointHistory {
        rejections,
        last_rejection_ms: Some(NOW_MS - ago_ms),
        ..EndpointHistory::default()
    };
    let slice = std::slice::from_ref(&defaults);
    assert_eq!(denial(slice, &proposal(url, 1), &history(2, 0)), None);
    assert_eq!(
        denial(slice, &proposal(url, 1), &history(3, 500)).as_deref(),
        Some("endpoint_backing_off")
    );
    assert_eq!(denial(slice, &proposal(url, 1), &history(3, 1_001)), None);
    assert_eq!(
        denial(slice, &proposal(url, 1), &history(5, 3_000)).as_deref(),
        Some("endpoint_backing_off"),
        "the fifth rejection waits 4 s"
    );
    assert_eq!(
        bursar_governance::backoff_ms(40, 3),
        Some(bursar_governance::BACKOFF_MAX_MS)
    );
    let never = policy("[endpoints]\nbackoff_after_rejections = 0");
    assert_eq!(denial(&[never], &proposal(url, 1), &history(9, 0)), None);
}

#[test]
fn response_validation_checks_status_type_and_schema() {
    let p = policy(
        "[validation]\nstatus = [200]\ncontent_type = \"application/json\"\n\
         json_schema = { type = \"object\", required = [\"content\"] }\ncooldown = \"1h\"",
    );
    let rule = p.validation.expect("validation");
    assert_eq!(rule.failures_before_pause, 3);
    assert_eq!(rule.cooldown_seconds, 3600);
    let json = Some("application/json; charset=utf-8");
    assert_eq!(rule.check(200, json, br#"{"content": 1}"#), None);
    assert!(
        rule.check(201, json, br#"{"content": 1}"#)
            .unwrap()
            .contains("status 201")
    );
    assert!(
        rule.check(200, Some("text/plain"), b"{}")
            .unwrap()
            .contains("content type")
    );
    assert!(rule.check(200, json, b"%%%").unwrap().contains("not JSON"));
    assert!(
        rule.check(200, json, br#"{"other": 1}"#)
            .unwrap()
            .contains("schema")
    );
    let lenient = policy("[validation]\nfailures_before_pause = 1")
        .validation
        .unwrap();
    assert_eq!(lenient.check(204, None, b""), None);
    assert!(lenient.check(500, None, b"").is_some());
    match Policy::parse("[validation]\njson_schema = { type = 12 }", &usdc(), "t") {
        Err(PolicyError::Invalid { field, .. }) => assert_eq!(field, "validation.json_schema"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn validators_apply_to_their_endpoints_only() {
    let p = policy(
        "[validation]\nstatus = [200]\n\
         [[validators]]\nendpoint = \"API.example.com/v1\"\ncontent_type = \"application/json\"\n\
         [[validators]]\nendpoint = \"https://data.example/reports/\"\njson_schema = { type = \"array\" }",
    );
    assert_eq!(p.validators.len(), 2);
    let count = |endpoint: &str| p.validations_for(endpoint).count();
    // [validation] everywhere; the first validator under api.example.com/v1 (either scheme,
    // whole path segments, host case ignored); the second only over https under /reports/.
    assert_eq!(count("https://api.example.com/v1"), 2);
    assert_eq!(count("http://api.example.com/v1/report"), 2);
    assert_eq!(count("https://api.example.com/v10"), 1);
    assert_eq!(count("https://api.example.com/"), 1);
    assert_eq!(count("https://data.example/reports/q3"), 2);
    assert_eq!(count("http://data.example/reports/q3"), 1);
    assert_eq!(count("https://other.example/v1"), 1);
    let json = p
        .validations_for("https://api.example.com/v1/x")
        .find_map(|v| v.check(200, Some("text/html"), b"<html>"));
    assert!(json.unwrap().contains("content type"));

    for (text, field) in [
        ("[[validators]]\nstatus = [200]", "validators[0].endpoint"),
        ("[[validators]]\nendpoint = \"\"", "validators[0].endpoint"),
        (
            "[[validators]]\nendpoint = \"a.example/x?y=1\"",
            "validators[0].endpoint",
        ),
        (
            "[[validators]]\nendpoint = \"https:///x\"",
            "validators[0].endpoint",
        ),
        (
            "[validation]\nendpoint = \"a.example\"",
            "validation.endpoint",
        ),
        (
            "[[validators]]\nendpoint = \"a.example\"\n[[validators]]\nendpoint = \"b.example\"\njson_schema = { type = 1 }",
            "validators[1].json_schema",
        ),
    ] {
        match Policy::parse(text, &usdc(), "t") {
            Err(PolicyError::Invalid { field: got, .. }) => assert_eq!(got, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn seller_schema_checks_what_the_seller_published() {
    let published = serde_json::json!({
        "type": "object",
        "properties": {"rows": {"type": "array"}},
        "required": ["rows"],
    });
    let on = policy("[validation]\nseller_schema = true")
        .validation
        .unwrap();
    assert!(on.seller_schema);
    assert_eq!(
        on.check_against(200, None, br#"{"rows": []}"#, Some(&published)),
        None
    );
    let failure = on
        .check_against(200, None, br#"{"rows": "none"}"#, Some(&published))
        .unwrap();
    assert!(failure.contains("seller's published schema"), "{failure}");
    assert!(
        on.check_against(200, None, b"garbage", Some(&published))
            .unwrap()
            .contains("not JSON")
    );
    // Nothing published: nothing to hold the body to.
    assert_eq!(on.check_against(200, None, b"garbage", None), None);
    // A broken published schema cannot vouch for the response.
    let broken = serde_json::json!({"type": 12});
    assert!(on.check_against(200, None, b"{}", Some(&broken)).is_some());
    // Off (the default): the published schema is not consulted.
    let off = policy("[validation]").validation.unwrap();
    assert!(!off.seller_schema);
    assert_eq!(
        off.check_against(200, None, br#"{"rows": "none"}"#, Some(&published)),
        None
    );
}

#[test]
fn cache_rules() {
    let rule = policy("[cache]").cache.unwrap();
    assert_eq!(rule.ttl_seconds, 86_400);
    assert_eq!(rule.scope, bursar_governance::CacheScope::Session);
    let rule = policy("[cache]\nttl = \"10m\"\nscope = \"wallet\"")
        .cache
        .unwrap();
    assert_eq!(
        (rule.ttl_seconds, rule.scope),
        (600, bursar_governance::CacheScope::Wallet)
    );
    assert!(policy("max_per_call = \"1\"").cache.is_none());
    match Policy::parse("[cache]\nscope = \"galaxy\"", &usdc(), "t") {
        Err(PolicyError::Invalid { field, .. }) => assert_eq!(field, "cache.scope"),
        other => panic!("{other:?}"),
    }
}

fn in_session(url: &str, atomic: u64, budget: u64) -> Proposal {
    let mut proposal = proposal(url, atomic);
    proposal.session_budget = Some(Amount::from(budget));
    proposal
}

#[test]
fn the_default_policy_has_the_documented_numbers() {
    let default = Policy::default_policy(&usdc());
    assert_eq!(default.source, DEFAULT_POLICY_SOURCE);
    assert_eq!(default.max_per_call_percent, Some(25));
    assert_eq!(default.max_per_call, None);
    assert_eq!(default.loop_limit, Some((10, 60)));
    assert_eq!(default.max_calls_per_session, Some(100));
    assert!(default.pin_terms);
    assert_eq!(default.backoff_after_rejections, 1);
    assert_eq!(default.backoff_wait_seconds, 60);
    let validation = default.validation.as_ref().expect("[validation]");
    assert!(validation.declared_type && validation.seller_schema);
    assert_eq!(validation.status, None, "any 2xx");
    assert_eq!(validation.failures_before_pause, 3);
    assert_eq!(validation.cooldown_seconds, 24 * 60 * 60);
    assert!(default.allow_payees.is_none() && default.windows.is_empty());
    // The document is commented for people who start from it.
    assert!(
        DEFAULT_POLICY_TOML
            .lines()
            .filter(|l| l.starts_with('#'))
            .count()
            > 20
    );
    // Amounts do not depend on the currency's unit: the same policy in an 18-decimal token.
    let eighteen = AssetUnit {
        symbol: "DAI".into(),
        decimals: 18,
    };
    assert_eq!(
        Policy::default_policy(&eighteen).max_per_call_percent,
        Some(25)
    );
}

#[test]
fn the_default_policy_refuses_each_hostile_pattern() {
    let default = Policy::default_policy(&usdc());
    let slice = std::slice::from_ref(&default);
    let budget = 1_000_000; // 1.00
    let fresh = EndpointHistory::default();
    // A price just under the budget; a quarter of it passes.
    assert_eq!(
        denial(
            slice,
            &in_session("http://a.test/x", 999_999, budget),
            &fresh
        )
        .as_deref(),
        Some("max_per_call_exceeded")
    );
    assert_eq!(
        denial(
            slice,
            &in_session("http://a.test/x", 250_000, budget),
            &fresh
        ),
        None
    );
    // The eleventh payment to one endpoint within a minute.
    let ten = EndpointHistory {
        paid_in_session: 10,
        paid_at_ms: (1..=10).map(|i| NOW_MS - i * 1_000).collect(),
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(slice, &in_session("http://a.test/x", 5_000, budget), &ten).as_deref(),
        Some("loop_detected")
    );
    // A slow drain: 100 payments, none in the last minute.
    let slow = EndpointHistory {
        paid_in_session: 100,
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(slice, &in_session("http://a.test/x", 5_000, budget), &slow).as_deref(),
        Some("endpoint_call_limit")
    );
    // One 402 after a payment: a minute's wait.
    let rejected = |ago_ms: i64| EndpointHistory {
        rejections: 1,
        last_rejection_ms: Some(NOW_MS - ago_ms),
        ..EndpointHistory::default()
    };
    assert_eq!(
        denial(
            slice,
            &in_session("http://a.test/x", 5_000, budget),
            &rejected(59_000)
        )
        .as_deref(),
        Some("endpoint_backing_off")
    );
    assert_eq!(
        denial(
            slice,
            &in_session("http://a.test/x", 5_000, budget),
            &rejected(60_001)
        ),
        None
    );
    // Garbage declared as JSON fails its validation.
    let validation = default.validation.as_ref().unwrap();
    let garbage = PaidResponse {
        status: 200,
        content_type: Some("application/json"),
        body: b"%%% garbage",
        published_schema: None,
        declared_type: None,
    };
    assert!(
        validation
            .check_response(&garbage)
            .unwrap()
            .contains("not JSON")
    );
}

#[test]
fn per_call_share_of_the_session_budget() {
    let p = policy("max_per_call_percent = 10");
    assert_eq!(p.max_per_call_percent, Some(10));
    let slice = std::slice::from_ref(&p);
    let history = EndpointHistory::default();
    // 10% of 0.50 is 0.05.
    assert_eq!(
        denial(
            slice,
            &in_session("http://a.test/x", 50_000, 500_000),
            &history
        ),
        None
    );
    let evaluation = evaluate(
        slice,
        &in_session("http://a.test/x", 50_001, 500_000),
        &history,
        NOW_MS,
    );
    assert_eq!(
        evaluation.denial.as_ref().unwrap().0,
        "max_per_call_exceeded"
    );
    assert_eq!(evaluation.rules[0].rule, "max_per_call_percent");
    assert_eq!(evaluation.rules[0].input["max"], "50000");
    assert_eq!(evaluation.rules[0].input["sessionBudget"], "500000");
    assert_eq!(evaluation.rules[0].code, Some(DenyCode::MaxPerCallExceeded));
    // Rounded down, in atomic units: 10% of 9 atomic units is 0.
    assert_eq!(
        denial(slice, &in_session("http://a.test/x", 1, 9), &history).as_deref(),
        Some("max_per_call_exceeded")
    );
    // Outside a session there is no budget to take a share of: the rule does not run.
    let evaluation = evaluate(
        slice,
        &proposal("http://a.test/x", 9_000_000),
        &history,
        NOW_MS,
    );
    assert!(evaluation.allowed() && evaluation.rules.is_empty());
    // The largest budget does not overflow.
    let max = Amount::from_atomic(alloy_primitives::U256::MAX);
    assert_eq!(bursar_governance::percent_of(max, 100), max);
    assert!(bursar_governance::percent_of(max, 50) < max);
    for text in [
        "max_per_call_percent = 0",
        "max_per_call_percent = 101",
        "max_per_call_percent = -5",
    ] {
        match Policy::parse(text, &usdc(), "t") {
            Err(PolicyError::Invalid { field, .. }) => assert_eq!(field, "max_per_call_percent"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(
        Policy::parse("max_per_call_percent = \"25%\"", &usdc(), "t"),
        Err(PolicyError::Syntax(_))
    ));
}

#[test]
fn the_most_specific_failure_is_reported_and_every_failure_recorded() {
    // A seller that moved its payTo to an address off the allowlist and raised its price past
    // the per-call maximum: terms_changed, payee_not_allowed and max_per_call_exceeded all fail.
    let p = policy(&format!(
        "max_per_call = \"0.01\"\n[payees]\nallow_addresses = [\"{}\"]",
        payee()
    ));
    let first = Terms {
        network: "eip155:31337".into(),
        asset: asset(),
        pay_to: payee(),
        amount: Amount::from(5_000u64),
    };
    let history = EndpointHistory {
        paid_in_session: 1,
        paid_at_ms: vec![NOW_MS - 100_000],
        first_terms: Some(first),
        ..EndpointHistory::default()
    };
    let mut moved = proposal("http://a.test/x", 20_000);
    moved.pay_to = Address::repeat_byte(0xcc);
    let evaluation = evaluate(std::slice::from_ref(&p), &moved, &history, NOW_MS);
    let (code, message) = evaluation.denial.clone().unwrap();
    assert_eq!(code, "payee_not_allowed");
    assert!(message.contains("also refused"), "{message}");
    assert!(
        message.contains("terms_changed") && message.contains("max_per_call_exceeded"),
        "{message}"
    );
    // In evaluation order, every failure with its code.
    assert_eq!(
        evaluation.failures(),
        vec![
            DenyCode::MaxPerCallExceeded,
            DenyCode::PayeeNotAllowed,
            DenyCode::TermsChanged
        ]
    );
    let failing: Vec<_> = evaluation
        .rules
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.to_json()["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        failing,
        [
            "max_per_call_exceeded",
            "payee_not_allowed",
            "terms_changed"
        ]
    );
    // Passing rules carry no code.
    assert!(
        evaluation
            .rules
            .iter()
            .filter(|r| r.passed)
            .all(|r| r.to_json().get("code").is_none())
    );
    // Only terms changed: that is what the agent hears, without an "also".
    let mut raised = proposal("http://a.test/x", 6_000);
    raised.pay_to = payee();
    let only = evaluate(&[policy("")], &raised, &history, NOW_MS);
    assert_eq!(only.denial.clone().unwrap().0, "terms_changed");
    assert!(!only.denial.unwrap().1.contains("also"));
    // The order itself: ALL lists every code once, most specific first.
    let mut sorted = DenyCode::ALL.to_vec();
    sorted.sort();
    assert_eq!(sorted, DenyCode::ALL.to_vec());
    assert_eq!(DenyCode::ALL[0].as_str(), "payee_denied");
    assert_eq!(
        DenyCode::ALL[DenyCode::ALL.len() - 1].as_str(),
        "max_per_call_exceeded"
    );
}

#[test]
fn backoff_wait_sets_the_first_wait() {
    let p = policy("[endpoints]\nbackoff_after_rejections = 2\nbackoff_wait = \"30s\"");
    assert_eq!(p.backoff_wait_seconds, 30);
    let slice = std::slice::from_ref(&p);
    let history = |rejections, ago_ms: i64| EndpointHistory {
        rejections,
        last_rejection_ms: Some(NOW_MS - ago_ms),
        ..EndpointHistory::default()
    };
    let url = "http://a.test/x";
    assert_eq!(denial(slice, &proposal(url, 1), &history(1, 0)), None);
    assert_eq!(
        denial(slice, &proposal(url, 1), &history(2, 29_000)).as_deref(),
        Some("endpoint_backing_off")
    );
    assert_eq!(denial(slice, &proposal(url, 1), &history(2, 30_001)), None);
    assert_eq!(
        denial(slice, &proposal(url, 1), &history(3, 59_000)).as_deref(),
        Some("endpoint_backing_off"),
        "doubled to 60 s"
    );
    assert_eq!(
        bursar_governance::backoff_ms_from(30, 1, 60_000),
        Some(bursar_governance::BACKOFF_MAX_MS)
    );
    for text in [
        "backoff_wait = \"0s\"",
        "backoff_wait = \"2h\"",
        "backoff_wait = \"soon\"",
    ] {
        match Policy::parse(&format!("[endpoints]\n{text}"), &usdc(), "t") {
            Err(PolicyError::Invalid { field, .. }) => assert_eq!(field, "endpoints.backoff_wait"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn declared_type_holds_the_body_to_what_it_says() {
    let rule = policy("[validation]\ndeclared_type = true")
        .validation
        .unwrap();
    assert!(rule.declared_type);
    let check = |content_type: Option<&str>, declared: Option<&str>, body: &[u8]| {
        rule.check_response(&PaidResponse {
            status: 200,
            content_type,
            body,
            published_schema: None,
            declared_type: declared,
        })
    };
    // JSON that parses, whoever declared it.
    assert_eq!(
        check(Some("application/json; charset=utf-8"), None, b"{\"a\": 1}"),
        None
    );
    assert_eq!(check(None, Some("application/json"), b"[1, 2]"), None);
    assert_eq!(check(Some("application/problem+json"), None, b"{}"), None);
    // Declared JSON, garbage sent.
    assert!(
        check(Some("application/json"), None, b"%%% garbage")
            .unwrap()
            .contains("not JSON")
    );
    assert!(
        check(None, Some("application/json"), b"")
            .unwrap()
            .contains("not JSON")
    );
    assert!(
        check(Some("application/vnd.api+json"), None, b"<html>")
            .unwrap()
            .contains("not JSON")
    );
    // The 402 promised JSON; the response is something else.
    let failure = check(Some("text/html"), Some("application/json"), b"<html>").unwrap();
    assert!(
        failure.contains("declared application/json in its 402 but answered text/html"),
        "{failure}"
    );
    // Parameters and case do not matter; wildcards allow.
    assert_eq!(
        check(
            Some("Application/JSON"),
            Some("application/json; charset=utf-8"),
            b"1"
        ),
        None
    );
    assert_eq!(check(Some("text/csv"), Some("text/*"), b"a,b"), None);
    assert_eq!(check(Some("image/png"), Some("*/*"), b"\x89PNG"), None);
    // Nothing declared anywhere, or a type that is not JSON: nothing to hold the body to.
    assert_eq!(check(None, None, b"%%%"), None);
    assert_eq!(check(Some("text/plain"), None, b"%%% garbage"), None);
    // Off (the language's default): a garbage "JSON" body passes.
    let off = policy("[validation]").validation.unwrap();
    assert!(!off.declared_type);
    assert_eq!(off.check(200, Some("application/json"), b"%%%"), None);
}

#[test]
fn pauses_deny_with_the_policy_that_paused() {
    let history = EndpointHistory {
        pauses: vec![
            EndpointPause {
                policy: "session ses_1".into(),
                until_ms: NOW_MS + 1_000,
                reason: Some("content type \"text/plain\" is not \"application/json\"".into()),
            },
            EndpointPause {
                policy: DEFAULT_POLICY_SOURCE.into(),
                until_ms: NOW_MS - 1,
                reason: None,
            },
        ],
        ..EndpointHistory::default()
    };
    let evaluation = evaluate(&[], &proposal("http://a.test/x", 1), &history, NOW_MS);
    assert_eq!(evaluation.denial.as_ref().unwrap().0, "endpoint_paused");
    assert_eq!(evaluation.rules.len(), 2);
    assert_eq!(evaluation.rules[0].source, "session ses_1");
    assert!(!evaluation.rules[0].passed);
    assert!(evaluation.rules[1].passed, "an expired pause passes");
}

/// The ```toml blocks of `text` (lines with `prefix` stripped); blocks of other TOML files are
/// fenced ```toml <file name> and left out.
fn toml_blocks(text: &str, prefix: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let Some(line) = line.strip_prefix(prefix) else {
            continue;
        };
        let trimmed = line.trim();
        match (&mut current, trimmed) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn documented_policies_parse() {
    let readme = toml_blocks(include_str!("../../../README.md"), "");
    assert!(readme.len() >= 3, "the README's policy examples");
    let docs = toml_blocks(include_str!("../src/policy.rs"), "//! ");
    assert_eq!(docs.len(), 1, "the format example in the crate docs");
    for block in readme.iter().chain(&docs) {
        Policy::parse(block, &usdc(), "docs").unwrap_or_else(|e| panic!("{e}:\n{block}"));
    }
}

#[test]
fn reputation_rules_deny_below_the_bar_and_fail_closed() {
    use bursar_governance::{ListingFacts, ListingLookup};
    let rule = policy(
        "[reputation]\ncatalog = \"http://127.0.0.1:4020\"\nmin_settled = 3\nmin_distinct_payers = 2\nmax_failure_rate_percent = 10\n",
    );
    let catalog: url::Url = "http://127.0.0.1:4020".parse().unwrap();
    let with = |lookup: Option<ListingLookup>| {
        let mut proposal = proposal("https://api.example.com/x", 1_000);
        if let Some(lookup) = lookup {
            proposal.listings.insert(catalog.clone(), lookup);
        }
        evaluate(
            std::slice::from_ref(&rule),
            &proposal,
            &EndpointHistory::default(),
            0,
        )
    };
    let good = ListingFacts {
        settled_count: 3,
        distinct_payers: 2,
        failure_rate_bps: 1_000,
    };
    assert!(with(Some(ListingLookup::Listed(good))).allowed());
    let denial = |lookup| with(lookup).denial.map(|(code, _)| code);
    assert_eq!(denial(None).as_deref(), Some("reputation_unknown"));
    assert_eq!(
        denial(Some(ListingLookup::Unreadable("timeout".into()))).as_deref(),
        Some("reputation_unknown")
    );
    assert_eq!(
        denial(Some(ListingLookup::NotListed)).as_deref(),
        Some("not_listed")
    );
    for low in [
        ListingFacts {
            settled_count: 2,
            ..good
        },
        ListingFacts {
            distinct_payers: 1,
            ..good
        },
        ListingFacts {
            failure_rate_bps: 1_001,
            ..good
        },
    ] {
        assert_eq!(
            denial(Some(ListingLookup::Listed(low))).as_deref(),
            Some("reputation_too_low")
        );
    }
    let evaluation = with(Some(ListingLookup::Listed(ListingFacts {
        settled_count: 0,
        ..good
    })));
    let rule_json = evaluation
        .rules
        .iter()
        .find(|r| r.rule == "reputation")
        .unwrap()
        .to_json();
    assert_eq!(rule_json["input"]["settledCount"], 0);
    assert!(evaluation.denial.unwrap().1.contains("0 settled payments"));
    for bad in [
        "[reputation]\ncatalog = \"ftp://x\"\n",
        "[reputation]\nmin_settled = 1\n",
        "[reputation]\ncatalog = \"http://x\"\nmax_failure_rate_percent = 101\n",
        "[reputation]\ncatalog = \"http://x\"\nunknown = 1\n",
    ] {
        assert!(Policy::parse(bad, &usdc(), "test").is_err(), "{bad}");
    }
}
