//! Memory of a cold start: a burst of concurrent first payments from one wallet whose key is not
//! yet decrypted in this process.
//!
//! `cargo bench -p bursar-runtime --bench cold_start -- 8 50` (burst sizes; default 8 and 50).
//! For each size: a wallet is created with the standard key derivation (scrypt, geth's
//! parameters: about 256 MiB per derivation), funded, granted and given a session; then a second
//! runtime is opened on the same database (so nothing is decrypted yet in it) and the burst is
//! sent at once through its API (`POST /v1/sessions/{id}/fetch`) to a paywalled seller that
//! settles on the embedded chain. Printed: the process's resident memory before the burst and its
//! peak during it (Linux `VmHWM`, reset before each burst through `/proc/self/clear_refs`), how
//! many times the key was decrypted, and how many payments settled.
//!
//! The peak includes everything else the process holds (the chain, the seller, the client), so
//! compare bursts within one run. Numbers depend on the machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use bursar_runtime::{Runtime, RuntimeConfig};
use bursar_store::RuntimeStore;
use bursar_wallet::Passphrase;
use common::{PASSPHRASE, PRICE};
use http::Method;
use serde_json::{Value, json};

/// Bursts measured when no sizes are given.
const BURSTS_DEFAULT: [usize; 2] = [8, 50];
/// The largest burst accepted (each payment is a real settlement on the embedded chain).
const BURST_MAX: usize = 1_000;

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak resident size (`VmHWM`) to the current one (Linux 4.0+).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|kib| format!("{:.0} MiB", kib as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

async fn open(store: Arc<dyn RuntimeStore>, network: &common::Network_) -> Runtime {
    // The standard key derivation, as `bursar runtime` uses.
    let mut config = RuntimeConfig::new(network.currency());
    // The seller runs on loopback.
    config.egress = bursar_runtime::EgressPolicy::loopback();
    Runtime::open(
        store,
        network.chain.clone(),
        Passphrase::new(PASSPHRASE.into()).unwrap(),
        config,
    )
    .await
    .expect("open runtime")
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    credential: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(Method::POST, url)
        .bearer_auth(credential)
        .timeout(std::time::Duration::from_secs(600));
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
        Err(error) => (0, json!({ "error": error.to_string() })),
    }
}

async fn burst(network: &common::Network_, size: usize) {
    let database = bursar_store::testkit::TempSqlite::new();
    let store: Arc<dyn RuntimeStore> = bursar_store::open_runtime_store(&database.url())
        .await
        .expect("open store");
    // Set up with one runtime...
    let setup = open(store.clone(), network).await;
    let wallet = setup
        .create_wallet("cold", None)
        .await
        .expect("wallet")
        .into_inner();
    network
        .mint(wallet.address, PRICE * u64::try_from(size).unwrap())
        .await;
    let grant = setup
        .create_grant(&wallet.id, "agent", None, None)
        .await
        .expect("grant")
        .into_inner();
    let session = setup
        .create_session(bursar_runtime::SessionRequest {
            grant_id: grant.id,
            max_spend: bursar_protocol::Amount::from(PRICE * u64::try_from(size).unwrap()),
            expires_in: None,
            client_token: None,
        })
        .await
        .expect("session");
    drop(setup);
    // ...and pay through another, as a freshly started process would.
    let runtime = open(store.clone(), network).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let router = bursar_runtime::api::router(runtime.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let fetch_url = format!("{api}/v1/sessions/{}/fetch", session.session.id);
    let paid_url = format!("{}/paid", network.seller_url);

    let before = status_kib("VmRSS");
    let reset = reset_peak();
    let started = Instant::now();
    let answers = futures::future::join_all((0..size).map(|_| {
        call(
            &http,
            &fetch_url,
            &session.token,
            Some(json!({"method": "GET", "url": paid_url})),
        )
    }))
    .await;
    let elapsed = started.elapsed();
    let peak = status_kib("VmHWM");
    let paid = answers
        .iter()
        .filter(|(status, body)| *status == 200 && body["payment"]["state"] == "posted")
        .count();
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .take(3)
        .collect();
    println!(
        "burst {size:>4}: key decryptions {:>3}, payments posted {paid:>4}/{size}, \
         RSS before {}, peak during the burst {}{}, {:.1} s",
        runtime.key_decryptions(),
        mib(before),
        mib(peak),
        if reset { "" } else { " (peak since start)" },
        elapsed.as_secs_f64(),
    );
    for (status, body) in failed {
        println!("    failed ({status}): {body}");
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .map(|arg| {
            arg.parse()
                .ok()
                .filter(|size| (1..=BURST_MAX).contains(size))
                .unwrap_or_else(|| panic!("burst sizes are numbers from 1 to {BURST_MAX}: {arg}"))
        })
        .collect();
    let sizes = if sizes.is_empty() {
        BURSTS_DEFAULT.to_vec()
    } else {
        sizes
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cold start: {cores} cores, bursts {sizes:?}");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let network = common::network().await;
            for size in sizes {
                burst(&network, size).await;
            }
        });
}
