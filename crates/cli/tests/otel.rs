//! Observability of the `bursar` binary. OpenTelemetry traces: a tiny OTLP/HTTP collector on
//! loopback records what `bursar facilitator` exports when `OTEL_EXPORTER_OTLP_ENDPOINT` points at
//! it; without the variable no exporter thread runs. The periodic export is pushed far out, so
//! spans that arrive were flushed at shutdown (SIGTERM). Also where `GET /metrics` is served
//! (`--no-metrics`, `--metrics-listen`).
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequirements, X402Version,
};
use serde_json::{Value, json};

const BURSAR: &str = env!("CARGO_BIN_EXE_bursar");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The name of the SDK's export thread, as `/proc/<pid>/task/*/comm` shows it (15 bytes).
const EXPORT_THREAD_PREFIX: &str = "OpenTelemetry";

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Records every POST; answers an empty (valid) ExportTraceServiceResponse.
async fn record(
    State(log): State<Log>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        content_type,
        body: body.to_vec(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
}

async fn collector() -> (String, Log) {
    let log: Log = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(record))
        .fallback(record)
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, log)
}

/// `bursar facilitator` on a free loopback port; killed on drop if still running.
struct Facilitator {
    child: Child,
    url: String,
    /// Where `--metrics-listen` serves `/metrics`.
    metrics_url: Option<String>,
}

impl Facilitator {
    async fn start(data_dir: &Path, otlp_endpoint: Option<&str>) -> Facilitator {
        Facilitator::start_with(data_dir, otlp_endpoint, &[]).await
    }

    async fn start_with(
        data_dir: &Path,
        otlp_endpoint: Option<&str>,
        extra_args: &[&str],
    ) -> Facilitator {
        let metrics_elsewhere = extra_args.contains(&"--metrics-listen");
        let mut command = Command::new(BURSAR);
        command
            .args(["facilitator", "--open-verify", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("BURSAR_RPC_URL")
            .env_remove("BURSAR_LEDGER_URL")
            .env_remove("BURSAR_REDIS_URL")
            // Only the flush at shutdown may export.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(endpoint) = otlp_endpoint {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        let mut child = command.spawn().expect("spawn bursar facilitator");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut facilitator = Facilitator {
            child,
            url: String::new(),
            metrics_url: None,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = facilitator.child.try_wait().unwrap() {
                panic!("bursar facilitator exited early with {status}");
            }
            while let Ok(line) = received.try_recv() {
                if let Some(rest) = line.strip_prefix("Bursar facilitator on ") {
                    facilitator.url = rest.split_whitespace().next().unwrap().to_string();
                }
                if let Some(rest) = line.strip_prefix("metrics on ") {
                    facilitator.metrics_url = Some(rest.trim().to_string());
                }
            }
            if !facilitator.url.is_empty()
                && (!metrics_elsewhere || facilitator.metrics_url.is_some())
            {
                return facilitator;
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "bursar facilitator did not start within {STARTUP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The names of the process's threads (Linux).
    fn thread_names(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                    .map(|name| name.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    async fn terminate(&mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "bursar facilitator exited with {status}");
                return;
            }
            assert!(
                started.elapsed() < EXIT_TIMEOUT,
                "bursar facilitator did not stop within {EXIT_TIMEOUT:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Facilitator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-formed, signed payment (for a chain the facilitator does not settle on: invalid).
fn payment() -> Value {
    let asset = Address::repeat_byte(0x11);
    let requirements = PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(84532),
        amount: Amount::from(10_000u64),
        asset: asset.into(),
        pay_to: Address::repeat_byte(0x22).into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": "USD Coin", "version": "2"})),
    };
    let signer = PrivateKeySigner::random();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let authorization = exact_evm::authorization_for(&requirements, signer.address(), now).unwrap();
    let domain = exact_evm::token_domain("USD Coin", "2", 84532, asset);
    let signature = exact_evm::sign_authorization(&signer, &authorization, &domain).unwrap();
    let exact = ExactEvmPayload {
        signature,
        authorization,
    };
    FacilitatorRequest {
        version: X402Version::V2,
        payload: PaymentPayload::new_v2(requirements.clone(), None, exact.clone()),
        requirements,
        resource: None,
    }
    .to_json_value()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_and_flushed_at_shutdown() {
    let (collector_url, log) = collector().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut facilitator = Facilitator::start(data_dir.path(), Some(&collector_url)).await;
    if cfg!(target_os = "linux") {
        let threads = facilitator.thread_names();
        assert!(
            threads.iter().any(|t| t.starts_with(EXPORT_THREAD_PREFIX)),
            "an export thread runs: {threads:?}"
        );
    }

    let verified: Value = reqwest::Client::new()
        .post(format!("{}/verify", facilitator.url))
        .json(&payment())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["isValid"], false, "{verified}");
    let reason = verified["invalidReason"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing is exported before the schedule or the shutdown"
    );

    facilitator.terminate().await;
    let received = log.lock().unwrap().clone();
    assert!(!received.is_empty(), "the shutdown flushed the spans");
    for request in &received {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.content_type, "application/x-protobuf");
    }
    let body: Vec<u8> = received.iter().flat_map(|r| r.body.clone()).collect();
    assert!(contains(&body, b"facilitator.verify"), "the verify span");
    assert!(contains(&body, b"service.name"));
    assert!(contains(&body, b"bursar"), "service.name is bursar");
    assert!(contains(&body, b"outcome") && contains(&body, b"invalid"));
    assert!(contains(&body, reason.as_bytes()), "the reason {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut facilitator = Facilitator::start(data_dir.path(), None).await;
    let response = reqwest::Client::new()
        .post(format!("{}/verify", facilitator.url))
        .json(&payment())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    if cfg!(target_os = "linux") {
        let threads = facilitator.thread_names();
        assert!(!threads.is_empty());
        assert!(
            !threads.iter().any(|t| t.starts_with(EXPORT_THREAD_PREFIX)),
            "no export thread: {threads:?}"
        );
    }
    facilitator.terminate().await;
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_open_elsewhere_or_not_at_all() {
    let data_dir = tempfile::tempdir().unwrap();

    // Default: on --listen, without an API key, counting the verification just made.
    let mut facilitator = Facilitator::start(data_dir.path(), None).await;
    let verified = reqwest::Client::new()
        .post(format!("{}/verify", facilitator.url))
        .json(&payment())
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status().as_u16(), 200);
    let (status, text) = get(&format!("{}/metrics", facilitator.url)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines().any(|line| line
            .starts_with("bursar_facilitator_verify_total{outcome=\"invalid\"")
            && line.ends_with(" 1")),
        "{text}"
    );
    facilitator.terminate().await;

    // --metrics-listen: only on that address.
    let mut facilitator =
        Facilitator::start_with(data_dir.path(), None, &["--metrics-listen", "127.0.0.1:0"]).await;
    let (status, _) = get(&format!("{}/metrics", facilitator.url)).await;
    assert_eq!(status, 404);
    let metrics_url = facilitator.metrics_url.clone().unwrap();
    let (status, text) = get(&metrics_url).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("bursar_facilitator_pending_settlements 0"),
        "{text}"
    );
    facilitator.terminate().await;

    // --no-metrics: nowhere.
    let mut facilitator = Facilitator::start_with(data_dir.path(), None, &["--no-metrics"]).await;
    let (status, _) = get(&format!("{}/metrics", facilitator.url)).await;
    assert_eq!(status, 404);
    let (status, _) = get(&format!("{}/health", facilitator.url)).await;
    assert_eq!(status, 200);
    facilitator.terminate().await;
}
