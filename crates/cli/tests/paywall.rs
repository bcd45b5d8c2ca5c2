//! End-to-end: `bursar paywall` sells the routes of the standard-library Python service of
//! `examples/paywall-python`, settled by a fresh `bursar dev`. Payments are made with `bursar pay`;
//! balances are read from the dev chain.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use alloy_signer_local::PrivateKeySigner;
use bursar_protocol::PaymentRequired;
use bursar_protocol::bazaar::published_output_schema;
use serde_json::{Value, json};

mod common;
use common::*;

const FORECAST_PRICE: u128 = 10_000;
const SUMMARIZE_PRICE: u128 = 25_000;
const HEADERS_PRICE: u128 = 1_000;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/paywall-python")
}

/// A child process killed (by its own PID) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` with its stdout piped and returns it with the first `http://` URL of its
/// first line (the servers print their address first; EOF ends the wait if one fails to start).
fn start_announcing(mut command: Command, what: &str) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {what}: {error}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("{what} printed no URL: {line:?}"))
        .to_string();
    (Process(child), url)
}

fn output_schema() -> Value {
    json!({"type": "object", "required": ["city", "days"], "properties": {"city": {"type": "string"}}})
}

/// The paywall's configuration: the dev chain's token, a fresh payee.
fn config(dev: &Dev, pay_to: &str) -> String {
    format!(
        r#"
facilitator_url = "{facilitator}"

[defaults]
network = "eip155:{chain}"
asset = "{token}"
asset_name = "{name}"
asset_version = "{version}"
pay_to = "{pay_to}"

[[route]]
path = "/forecast/:city"
price = "{FORECAST_PRICE}"
description = "Forecast for a city"
mime_type = "application/json"
output_schema = '{schema}'

[[route]]
path = "/summarize"
methods = ["POST"]
price = "{SUMMARIZE_PRICE}"

[[route]]
path = "/echo-headers"
methods = ["POST"]
price = "{HEADERS_PRICE}"

[[route]]
path = "/broken"
price = "{FORECAST_PRICE}"
"#,
        facilitator = dev.info["facilitatorUrl"].as_str().unwrap(),
        chain = dev.info["chainId"],
        token = dev.info["token"].as_str().unwrap(),
        name = dev.info["tokenName"].as_str().unwrap(),
        version = dev.info["tokenVersion"].as_str().unwrap(),
        schema = output_schema(),
    )
}

/// `bursar pay <url> --json --max 0.05` plus `extra`: its JSON output and whether it succeeded.
fn pay(dev: &Dev, url: &str, extra: &[&str]) -> (Value, bool) {
    let mut args = vec!["pay", url, "--json", "--max", "0.05"];
    args.extend_from_slice(extra);
    let output = dev.bursar(&args);
    let result = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "bursar pay printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (result, output.status.success())
}

fn body_json(result: &Value) -> Value {
    serde_json::from_str(result["body"].as_str().unwrap())
        .unwrap_or_else(|_| panic!("the body is not JSON: {result}"))
}

#[test]
fn bursar_paywall_sells_a_python_service() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let (buyer, payee) = (
        dev.buyer(),
        PrivateKeySigner::random().address().to_checksum(None),
    );

    let mut python = Command::new("python3");
    python
        .arg(example_dir().join("service.py"))
        .args(["--port", "0"]);
    let (mut service, service_url) = start_announcing(python, "the Python service");

    let config_path = dir.path().join("paywall.toml");
    std::fs::write(&config_path, config(&dev, &payee)).unwrap();
    let mut paywall = Command::new(BURSAR);
    paywall
        .args([
            "paywall",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &service_url,
        ])
        .arg("--config")
        .arg(&config_path);
    let (_paywall, url) = start_announcing(paywall, "bursar paywall");
    let http = reqwest::blocking::Client::new();

    // Unpaid: a 402 for the concrete URL, publishing the route's template and output schema.
    let response = http.get(format!("{url}/forecast/paris")).send().unwrap();
    assert_eq!(response.status(), 402);
    let required =
        PaymentRequired::from_v2_header(response.headers()["payment-required"].to_str().unwrap())
            .unwrap();
    assert_eq!(required.resource.url, format!("{url}/forecast/paris"));
    assert_eq!(required.accepts[0].amount.to_string(), "10000");
    let bazaar = &required.extensions.as_ref().unwrap()["bazaar"];
    assert_eq!(bazaar["routeTemplate"], "/forecast/:city");
    assert_eq!(
        bazaar["info"]["input"]["pathParams"],
        json!({"city": "paris"})
    );
    assert_eq!(published_output_schema(&required), Some(&output_schema()));

    // Paid: exactly the price moves, and the body is the service's.
    let buyer_start = dev.balance(&buyer);
    let (result, paid) = pay(&dev, &format!("{url}/forecast/paris"), &[]);
    assert!(paid, "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["receipt"]["settled"], true, "{result}");
    let forecast = body_json(&result);
    assert_eq!(forecast["city"], "paris");
    assert_eq!(forecast["source"], "forecast-service");
    assert_eq!(forecast["days"].as_array().unwrap().len(), 3);
    assert_eq!(dev.balance(&buyer), buyer_start - FORECAST_PRICE);
    assert_eq!(dev.balance(&payee), FORECAST_PRICE);

    // A JSON body reaches the service intact.
    let text = "the quick brown fox jumps over the lazy dog again";
    let body = json!({ "text": text }).to_string();
    let (result, paid) = pay(
        &dev,
        &format!("{url}/summarize"),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ],
    );
    assert!(paid, "{result}");
    let summary = body_json(&result);
    assert_eq!(summary["shouted"], text.to_uppercase());
    assert_eq!(summary["words"], 10);
    assert_eq!(summary["characters"], text.len());
    assert_eq!(
        dev.balance(&buyer),
        buyer_start - FORECAST_PRICE - SUMMARIZE_PRICE
    );
    assert_eq!(dev.balance(&payee), FORECAST_PRICE + SUMMARIZE_PRICE);
    let spent = FORECAST_PRICE + SUMMARIZE_PRICE;

    // The service never sees a payment header, paid or not.
    let (result, paid) = pay(&dev, &format!("{url}/echo-headers"), &["-X", "POST"]);
    assert!(paid, "{result}");
    let seen = &body_json(&result)["headers"];
    assert!(seen.get("payment-signature").is_none(), "{seen}");
    assert!(seen.get("x-payment").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-host"], url.trim_start_matches("http://"));
    let spent = spent + HEADERS_PRICE;
    assert_eq!(dev.balance(&payee), spent);

    // Unpriced routes are forwarded free; payment headers are dropped there too.
    let response = http
        .get(format!("{url}/echo-headers"))
        .header("x-payment", "eyJub3QiOiJhIHBheW1lbnQifQ==")
        .header("payment-signature", "eyJub3QiOiJhIHBheW1lbnQifQ==")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().unwrap();
    assert!(seen["headers"].get("x-payment").is_none(), "{seen}");
    assert!(seen["headers"].get("payment-signature").is_none(), "{seen}");
    let health: Value = http
        .get(format!("{url}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health, json!({"ok": true}));

    // The service fails: its 500 passes through and nothing is settled.
    let (result, paid) = pay(&dev, &format!("{url}/broken"), &[]);
    assert!(!paid, "bursar pay reports the failure: {result}");
    assert_eq!(result["status"], 500, "{result}");
    assert_eq!(result["receipt"]["settled"], Value::Null, "{result}");
    assert_eq!(
        body_json(&result),
        json!({"error": "the forecast model is down"})
    );
    assert_eq!(dev.balance(&buyer), buyer_start - spent);
    assert_eq!(dev.balance(&payee), spent);

    // The service is gone: a 502, and nothing is settled.
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    let (result, paid) = pay(&dev, &format!("{url}/forecast/oslo"), &[]);
    assert!(!paid, "{result}");
    assert_eq!(result["status"], 502, "{result}");
    assert_eq!(result["receipt"]["settled"], Value::Null, "{result}");
    assert_eq!(
        body_json(&result),
        json!({"error": "the upstream is unreachable"})
    );
    assert_eq!(dev.balance(&buyer), buyer_start - spent);
    assert_eq!(dev.balance(&payee), spent);
}

/// The example's own paywall.toml prices in the `bursar dev` chain's token and pays its seller.
#[test]
fn the_example_configuration_matches_the_dev_chain() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let text = std::fs::read_to_string(example_dir().join("paywall.toml")).unwrap();
    let line = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{key} = \"")))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no {key} in the example"))
            .to_ascii_lowercase()
    };
    assert_eq!(
        line("asset"),
        dev.info["token"].as_str().unwrap().to_ascii_lowercase()
    );
    assert_eq!(line("pay_to"), dev.seller().to_ascii_lowercase());
    assert_eq!(line("network"), format!("eip155:{}", dev.info["chainId"]));

    // And `bursar paywall` accepts it: it starts and announces itself.
    let mut paywall = Command::new(BURSAR);
    paywall
        .args(["paywall", "--listen", "127.0.0.1:0", "--config"])
        .arg(example_dir().join("paywall.toml"));
    let (_paywall, url) = start_announcing(paywall, "bursar paywall");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // A configuration that cannot be used exits with 2 and says where.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[route]]\npath = \"/a\"\nprice = 0.01\n").unwrap();
    let output = Command::new(BURSAR)
        .args(["paywall", "--upstream", "http://127.0.0.1:9", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("fraction"),
        "{stderr}"
    );
}
