//! The `bursar dev` harness shared by the end-to-end tests: the binary runs as a child process on
//! loopback ports; helpers call its runtime API and read its chain.
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use serde_json::Value;

pub const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const WEATHER_PRICE: u128 = 10_000;

pub struct Dev {
    pub child: Child,
    pub data_dir: PathBuf,
    pub info: Value,
}

impl Dev {
    /// Starts `bursar dev` on free loopback ports and waits until it answers.
    pub fn start(data_dir: &Path) -> Dev {
        Dev::start_with(data_dir, &[])
    }

    /// [`Dev::start`] with more arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Dev {
        Dev::spawn(data_dir, extra, None)
    }

    /// [`Dev::start`] with the runtime's passphrase given and everything it prints, debug logs
    /// included, written to `log`.
    pub fn start_logged(data_dir: &Path, passphrase: &str, log: &Path) -> Dev {
        Dev::spawn(data_dir, &[], Some((passphrase, log)))
    }

    pub fn spawn(data_dir: &Path, extra: &[&str], logged: Option<(&str, &Path)>) -> Dev {
        let info_path = data_dir.join("dev.json");
        let _ = std::fs::remove_file(&info_path);
        let mut command = Command::new(BURSAR);
        command
            .args([
                "dev",
                "--facilitator-port",
                "0",
                "--api-port",
                "0",
                "--runtime-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra);
        match logged {
            Some((passphrase, log)) => {
                let file = std::fs::File::create(log).unwrap();
                command
                    .env("BURSAR_PASSPHRASE", passphrase)
                    .env("BURSAR_LOG", "debug")
                    .stdout(file.try_clone().unwrap())
                    .stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().expect("spawn bursar dev");
        let mut dev = Dev {
            child,
            data_dir: data_dir.to_path_buf(),
            info: Value::Null,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = dev.child.try_wait().unwrap() {
                panic!("bursar dev exited early with {status}");
            }
            if let Ok(text) = std::fs::read_to_string(&info_path)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                let health = format!("{}/health", info["facilitatorUrl"].as_str().unwrap());
                if reqwest::blocking::get(&health)
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
                {
                    dev.info = info;
                    return dev;
                }
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "bursar dev did not start within {STARTUP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.info["apiUrl"].as_str().unwrap())
    }

    pub fn balance(&self, address: &str) -> u128 {
        let url = format!(
            "{}/dev/balance/{address}",
            self.info["facilitatorUrl"].as_str().unwrap()
        );
        let document: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        document["balance"].as_str().unwrap().parse().unwrap()
    }

    pub fn buyer(&self) -> String {
        self.info["buyer"].as_str().unwrap().to_string()
    }

    pub fn seller(&self) -> String {
        self.info["seller"].as_str().unwrap().to_string()
    }

    pub fn bursar(&self, args: &[&str]) -> Output {
        Command::new(BURSAR)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_remove("BURSAR_PRIVATE_KEY")
            .output()
            .expect("run bursar")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pay_json(dev: &Dev, path: &str, extra: &[&str]) -> Value {
    let url = dev.api(path);
    let mut args = vec!["pay", url.as_str(), "--json"];
    args.extend_from_slice(extra);
    let output = dev.bursar(&args);
    assert!(
        output.status.success(),
        "bursar pay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bursar pay --json prints JSON")
}

/// A call to the dev runtime's API with a bearer credential.
pub fn runtime_call(
    dev: &Dev,
    method: reqwest::Method,
    path: &str,
    credential: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", dev.info["runtimeUrl"].as_str().unwrap());
    let mut request = reqwest::blocking::Client::new()
        .request(method, url)
        .bearer_auth(credential);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().expect("the runtime answers");
    let status = response.status().as_u16();
    (status, response.json().expect("JSON"))
}

/// A grant on the demo wallet for `agent` and a session under it with `max` USDC, opened by the
/// operator over the dev runtime's API: the session's id and token.
pub fn open_session(dev: &Dev, operator_key: &str, agent: &str, max: &str) -> (String, String) {
    let (status, grant) = runtime_call(
        dev,
        reqwest::Method::POST,
        "/v1/grants",
        operator_key,
        Some(serde_json::json!({"walletId": "demo", "agent": agent})),
    );
    assert_eq!(status, 201, "{grant}");
    let (status, session) = runtime_call(
        dev,
        reqwest::Method::POST,
        "/v1/sessions",
        operator_key,
        Some(
            serde_json::json!({"grantId": grant["id"], "maxSpendAmount": max, "currency": "USDC"}),
        ),
    );
    assert_eq!(status, 201, "{session}");
    (
        session["id"].as_str().unwrap().to_string(),
        session["token"].as_str().unwrap().to_string(),
    )
}

/// The price of each hostile route: 0.005 USDC (200 calls take a 1.00 budget).
pub const HOSTILE_PRICE: u128 = 5_000;

/// A hostile seller for the default-policy tests, on loopback, in this test only (the demo API
/// stays honest): Bursar's paywall settled by the `bursar dev` facilitator over HTTP, one payTo
/// address per route so what each pattern took is read from the chain.
pub struct HostileSeller {
    pub url: String,
    /// payTo of /verify-wallet, /garbage, /premium, /again.
    pub drain: Address,
    pub garbage: Address,
    pub premium: Address,
    pub again: Address,
    _runtime: tokio::runtime::Runtime,
}

impl HostileSeller {
    pub fn start(dev: &Dev) -> HostileSeller {
        use axum::Router;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::get;
        use bursar_facilitator_client::{Facilitator, HttpFacilitator};
        use bursar_protocol::{
            Amount, AssetUnit, FacilitatorRequest, Network, Resource, X402Version,
        };
        use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
        use std::sync::Arc;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let facilitator: Arc<dyn Facilitator> =
            Arc::new(HttpFacilitator::new(dev.info["facilitatorUrl"].as_str().unwrap()).unwrap());
        let asset = Asset::new(
            dev.info["token"].as_str().unwrap().to_string(),
            dev.info["tokenName"].as_str().unwrap().to_string(),
            dev.info["tokenVersion"].as_str().unwrap().to_string(),
            AssetUnit::usdc(),
        );
        let network = Network::Eip155(dev.info["chainId"].as_u64().unwrap());
        let [drain, garbage, premium, again] =
            std::array::from_fn(|_| PrivateKeySigner::random().address());
        let offer = |amount: u128, pay_to: Address| {
            Offer::exact(
                network.clone(),
                asset.clone(),
                Amount::from_u128(amount),
                pay_to.to_checksum(None),
            )
        };
        let paywall = PaywallLayer::builder(facilitator.clone())
            .route(
                PricedRoute::new(axum::http::Method::GET, "/verify-wallet")
                    .mime_type("application/json")
                    .offer(offer(HOSTILE_PRICE, drain)),
            )
            .route(
                PricedRoute::new(axum::http::Method::GET, "/garbage")
                    .mime_type("application/json")
                    .offer(offer(HOSTILE_PRICE, garbage)),
            )
            // Just under a 1.00 session budget.
            .route(
                PricedRoute::new(axum::http::Method::GET, "/premium")
                    .mime_type("application/json")
                    .offer(offer(990_000, premium)),
            )
            .build()
            .unwrap();
        // /again: takes the payment, settles it, then asks to be paid again.
        let required = bursar_protocol::PaymentRequired {
            version: X402Version::V2,
            error: Some("payment required".into()),
            resource: Resource::default(),
            accepts: vec![offer(HOSTILE_PRICE, again).requirement()],
            extensions: None,
        }
        .to_v2_header();
        let settle_then_ask_again = move |headers: HeaderMap| {
            let (facilitator, required) = (facilitator.clone(), required.clone());
            async move {
                if let Some(header) = headers.get("payment-signature") {
                    let payload =
                        bursar_protocol::PaymentPayload::from_header(header.to_str().unwrap())
                            .unwrap();
                    let requirements = payload.accepted.clone().unwrap();
                    let settled = facilitator
                        .settle(&FacilitatorRequest {
                            version: X402Version::V2,
                            payload,
                            requirements,
                            resource: None,
                        })
                        .await
                        .unwrap();
                    assert!(settled.success, "{settled:?}");
                }
                (
                    StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", required)],
                    "",
                )
                    .into_response()
            }
        };
        let app = Router::new()
            .route(
                "/verify-wallet",
                get(|| async {
                    axum::Json(serde_json::json!({"verified": false, "next": "verify again"}))
                }),
            )
            .route(
                "/garbage",
                get(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        "%%% not what you paid for %%%",
                    )
                }),
            )
            .route(
                "/premium",
                get(|| async { axum::Json(serde_json::json!({"premium": true})) }),
            )
            .layer(paywall)
            .route("/again", get(settle_then_ask_again));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        HostileSeller {
            url,
            drain,
            garbage,
            premium,
            again,
            _runtime: runtime,
        }
    }
}

/// The session's agent asks the runtime to fetch `url`: the status and the JSON answer.
pub fn agent_fetch(dev: &Dev, session: &str, token: &str, url: &str) -> (u16, Value) {
    runtime_call(
        dev,
        reqwest::Method::POST,
        &format!("/v1/sessions/{session}/fetch"),
        token,
        Some(serde_json::json!({"url": url})),
    )
}

/// `bursar audit show <session> --json`: the session's decisions as (allowed, reason, the
/// failing rules as "rule@source").
pub fn trace(dev: &Dev, session: &str) -> Vec<(bool, Option<String>, Vec<String>)> {
    let output = dev.bursar(&["audit", "show", session, "--json"]);
    assert!(output.status.success(), "{output:?}");
    let decisions: Value = serde_json::from_slice(&output.stdout).unwrap();
    decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|decision| {
            let failing = decision["rules"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| rule["passed"] == false)
                .map(|rule| {
                    format!(
                        "{}@{}",
                        rule["rule"].as_str().unwrap(),
                        rule["source"].as_str().unwrap()
                    )
                })
                .collect();
            (
                decision["allowed"].as_bool().unwrap(),
                decision["reason"].as_str().map(str::to_string),
                failing,
            )
        })
        .collect()
}

/// The session's transfers (state, atomic amount), read through its agent's token.
pub fn transfers_of(dev: &Dev, session: &str, token: &str) -> Vec<(String, u128)> {
    let (status, listed) = runtime_call(
        dev,
        reqwest::Method::GET,
        &format!("/v1/sessions/{session}/transfers"),
        token,
        None,
    );
    assert_eq!(status, 200, "{listed}");
    listed["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["state"].as_str().unwrap().to_string(),
                t["amountAtomic"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}
