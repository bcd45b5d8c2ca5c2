//! What paying costs the runtime, on SQLite and on PostgreSQL.
//!
//! `cargo bench -p bursar-runtime --bench overhead` (about a minute). For each store:
//!
//! 1. Latency of [`Runtime::fetch`], sequential requests after a warm-up, against a tiny seller
//!    on loopback that answers 402 with valid requirements and 200 to any request carrying a
//!    payment header, without settling: the paid request minus the unpaid one is the runtime's
//!    own work (the 402 round trip, session checks and policy, the reservation transaction,
//!    signing, the chain lookup after paying, bookkeeping). The runtime runs with the default
//!    policy switched off (the rules every policy has: pinned terms, backoff); one more row
//!    runs the default policy's rules from a policy file with its loop and per-session call
//!    caps lifted (this bench pays one endpoint hundreds of times), so its response validation
//!    and budget alerts are counted too. The paid request through the real paywall and
//!    facilitator (verify + settle on the embedded chain) is shown for context.
//! 2. [`RuntimeStore::reserve`] per second, called directly, at concurrency 1 and 16 over many
//!    sessions.
//! 3. [`RuntimeStore::post`] per second on the transfers reserved in 2.
//! 4. MCP tool calls over streamable HTTP to a [`bursar_seller::PaidTools`] server: a free tool
//!    and a paid one (verified and settled by the facilitator on the embedded chain), through the
//!    runtime and by the paying client alone; paid minus free is what paying adds to a call.
//!
//! Numbers depend on the machine: compare the ratios within one run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};
use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use bursar_buyer::RequestSpec;
use bursar_chain::testkit::TOKEN_NAME;
use bursar_protocol::exact_evm::{authorization_for, sign_authorization, token_domain};
use bursar_protocol::{Amount, AssetUnit, Network};
use bursar_runtime::Runtime;
use bursar_seller::{Asset, Offer};
use bursar_store::RuntimeStore;
use bursar_store::runtime::{NewTransfer, Reservation, SessionRecord};
use common::{PRICE, RuntimeUnderTest};

/// Sequential requests measured per route (after the warm-up).
const REQUESTS: usize = 300;
/// Paid requests through the real paywall (each settles on chain, so slower).
const REQUESTS_SETTLED: usize = 100;
const WARM_UP: usize = 30;
/// How long each throughput measurement runs.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(3);
/// Sessions the reservations are spread over.
const SESSIONS: usize = 64;
const CONCURRENCY: [usize; 2] = [1, 16];

struct Latencies {
    label: String,
    samples: Vec<Duration>,
}

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

struct Throughput {
    label: &'static str,
    concurrency: usize,
    operations: usize,
    elapsed: Duration,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

struct Report {
    store: &'static str,
    latencies: Vec<Latencies>,
    /// Paid, under the default policy's rules read from a policy file.
    policy_file: Latencies,
    /// MCP tool calls: (unpaid, paid) through the runtime, then (unpaid, paid) by the paying
    /// client alone.
    mcp: Vec<Latencies>,
    throughput: Vec<Throughput>,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A seller that asks for `PRICE` on `/paid` and accepts any payment header without settling,
/// and serves `/free` for nothing.
async fn accepting_seller(
    network: &common::Network_,
) -> (String, bursar_protocol::PaymentRequirements) {
    let asset = Asset::new(
        network.token.address().to_checksum(None),
        TOKEN_NAME.to_string(),
        "2".to_string(),
        AssetUnit::usdc(),
    );
    let offer = Offer::exact(
        Network::Eip155(network.chain.chain_id()),
        asset,
        Amount::from(PRICE),
        PrivateKeySigner::random().address().to_checksum(None),
    );
    let requirement = offer.requirement();
    let required = bursar_protocol::PaymentRequired {
        version: bursar_protocol::X402Version::V2,
        error: Some("payment required".into()),
        resource: bursar_protocol::Resource::default(),
        accepts: vec![requirement.clone()],
        extensions: None,
    }
    .to_v2_header();
    let paid = move |request: Request| {
        let required = required.clone();
        async move {
            let headers = request.headers();
            if headers.contains_key("payment-signature") || headers.contains_key("x-payment") {
                "paid".into_response()
            } else {
                (
                    http::StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", required)],
                    "{}",
                )
                    .into_response()
            }
        }
    };
    let app = Router::new()
        .route("/free", axum::routing::get(|| async { "free" }))
        .route("/paid", axum::routing::get(paid));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, requirement)
}

async fn fetch_latencies(
    runtime: &Runtime,
    session: &SessionRecord,
    label: &'static str,
    url: &str,
    requests: usize,
    paid: bool,
) -> Latencies {
    let spec = || RequestSpec::get(url).expect("url");
    spec_latencies(runtime, session, label, spec, requests, paid).await
}

/// [`fetch_latencies`] for any request (an MCP tool call, say).
async fn spec_latencies(
    runtime: &Runtime,
    session: &SessionRecord,
    label: &'static str,
    spec: impl Fn() -> RequestSpec,
    requests: usize,
    paid: bool,
) -> Latencies {
    let mut samples = Vec::with_capacity(requests);
    for i in 0..WARM_UP + requests {
        let spec = spec();
        let started = Instant::now();
        let fetched = runtime
            .fetch(session, spec)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let elapsed = started.elapsed();
        assert_eq!(fetched.status, 200, "{label}");
        assert_eq!(fetched.payment.is_some(), paid, "{label}");
        if i >= WARM_UP {
            samples.push(elapsed);
        }
    }
    Latencies {
        label: label.to_string(),
        samples,
    }
}

/// A call of `tool` of the test network's MCP server.
fn tool_call(network: &common::Network_, tool: &str) -> RequestSpec {
    RequestSpec::tool_call(bursar_buyer::mcp::ToolCall {
        server: format!("{}/mcp", network.seller_url).parse().expect("url"),
        name: tool.into(),
        arguments: serde_json::Map::new(),
    })
    .expect("tool call")
}

/// MCP tool calls, free and paid (verified and settled by the facilitator), through the runtime
/// and by the paying client alone.
async fn mcp_latencies(
    network: &common::Network_,
    runtime: &Runtime,
    session: &SessionRecord,
    paid_session: &SessionRecord,
) -> Vec<Latencies> {
    let mut rows = vec![
        spec_latencies(
            runtime,
            session,
            "runtime, unpaid (free tool)",
            || tool_call(network, "free"),
            REQUESTS_SETTLED,
            false,
        )
        .await,
        spec_latencies(
            runtime,
            paid_session,
            "runtime, paid (PaidTools + facilitator)",
            || tool_call(network, "paid"),
            REQUESTS_SETTLED,
            true,
        )
        .await,
    ];
    let signer = PrivateKeySigner::random();
    network.mint(signer.address(), 1_000_000_000).await;
    let client = bursar_buyer::PayingClient::new(reqwest::Client::new(), Arc::new(signer))
        .max_amount(Amount::from(PRICE))
        .allow_network(Network::Eip155(network.chain.chain_id()));
    for (label, tool, paid) in [
        ("client alone, unpaid (free tool)", "free", false),
        ("client alone, paid (PaidTools + facilitator)", "paid", true),
    ] {
        let mut samples = Vec::with_capacity(REQUESTS_SETTLED);
        for i in 0..WARM_UP + REQUESTS_SETTLED {
            let started = Instant::now();
            let response = client.send(tool_call(network, tool)).await.expect(label);
            let elapsed = started.elapsed();
            assert_eq!(response.status, 200, "{label}");
            assert_eq!(response.payment.is_some(), paid, "{label}");
            if i >= WARM_UP {
                samples.push(elapsed);
            }
        }
        rows.push(Latencies {
            label: label.into(),
            samples,
        });
    }
    rows
}

fn transfer_for(session: &SessionRecord, payer: Address, payee: Address) -> NewTransfer {
    NewTransfer {
        session_id: session.id.clone(),
        network: session.network.clone(),
        asset: session.asset,
        payer,
        payee,
        amount: Amount::from(PRICE),
        nonce: B256::random(),
        valid_before_s: u64::MAX / 2,
        resource: "http://127.0.0.1/bench".into(),
        endpoint: "http://127.0.0.1/bench".into(),
        caps: Vec::new(),
    }
}

/// Reservations spread over `sessions` by `concurrency` workers for [`THROUGHPUT_WINDOW`];
/// returns the measurement and the transfers reserved.
async fn reserve_throughput(
    store: &Arc<dyn RuntimeStore>,
    sessions: &[SessionRecord],
    concurrency: usize,
    payer: Address,
) -> (Throughput, Vec<String>) {
    let payee = PrivateKeySigner::random().address();
    let started = Instant::now();
    let deadline = started + THROUGHPUT_WINDOW;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let store = store.clone();
        let mine: Vec<SessionRecord> = sessions
            .iter()
            .skip(worker)
            .step_by(concurrency)
            .cloned()
            .collect();

        workers.push(tokio::spawn(async move {
            let mut reserved = Vec::new();
            let mut next = 0;
            while Instant::now() < deadline {
                let session = &mine[next % mine.len()];
                next += 1;
                match store
                    .reserve(transfer_for(session, payer, payee))
                    .await
                    .expect("reserve")
                {
                    Reservation::Reserved(record) => reserved.push(record.id),
                    Reservation::Denied { reason, message } => {
                        panic!("reservation denied ({}): {message}", reason.code())
                    }
                }
            }
            reserved
        }));
    }
    let mut reserved = Vec::new();
    for worker in workers {
        reserved.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    (
        Throughput {
            label: "reserve",
            concurrency,
            operations: reserved.len(),
            elapsed,
        },
        reserved,
    )
}

/// Posts `transfers` with `concurrency` workers, for at most [`THROUGHPUT_WINDOW`].
async fn post_throughput(
    store: &Arc<dyn RuntimeStore>,
    transfers: Vec<String>,
    concurrency: usize,
) -> Throughput {
    let queue = Arc::new(std::sync::Mutex::new(transfers));
    let started = Instant::now();
    let deadline = started + THROUGHPUT_WINDOW;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (store, queue) = (store.clone(), queue.clone());
        workers.push(tokio::spawn(async move {
            let mut posted = 0usize;
            while Instant::now() < deadline {
                let Some(id) = queue.lock().expect("queue").pop() else {
                    break;
                };
                assert!(store.post(&id, None).await.expect("post"), "posted once");
                posted += 1;
            }
            posted
        }));
    }
    let mut operations = 0;
    for worker in workers {
        operations += worker.await.expect("worker");
    }
    Throughput {
        label: "post",
        concurrency,
        operations,
        elapsed: started.elapsed(),
    }
}

/// The default policy's rules with its loop detection and per-session call cap lifted.
const BENCH_POLICY_TOML: &str = r#"
max_per_call_percent = 25
[endpoints]
loop_count = 1000000
loop_window = "1m"
max_calls_per_session = 1000000
pin_terms = true
backoff_after_rejections = 1
backoff_wait = "1m"
[validation]
declared_type = true
seller_schema = true
failures_before_pause = 3
cooldown = "24h"
"#;

async fn measure(store: &'static str, store_url: &str) -> Report {
    let network = common::network().await;
    let rt: RuntimeUnderTest = common::runtime_with(&network, store_url, |config| {
        config.default_policy = false;
    })
    .await;
    let runtime = rt.runtime.clone();
    let (wallet, payer) = rt.funded_wallet(&network, "bench", 1_000_000_000_000).await;
    let grant = rt.grant(&wallet, "bench", None).await;
    // A fresh session per route: the paid path reads the session's history of payments.
    let fresh_session = async || {
        let (id, _) = rt.session(&grant, "1000000", None).await;
        runtime.session(&id).await.expect("session")
    };
    let (seller, requirement) = accepting_seller(&network).await;

    let mut latencies = Vec::new();
    latencies.push(
        fetch_latencies(
            &runtime,
            &fresh_session().await,
            "unpaid (402-less route)",
            &format!("{seller}/free"),
            REQUESTS,
            false,
        )
        .await,
    );
    latencies.push(
        fetch_latencies(
            &runtime,
            &fresh_session().await,
            "paid (seller accepts, no settle)",
            &format!("{seller}/paid"),
            REQUESTS,
            true,
        )
        .await,
    );
    latencies.push(
        fetch_latencies(
            &runtime,
            &fresh_session().await,
            "paid (paywall + facilitator)",
            &format!("{}/paid", network.seller_url),
            REQUESTS_SETTLED,
            true,
        )
        .await,
    );

    let mcp = mcp_latencies(
        &network,
        &runtime,
        &fresh_session().await,
        &fresh_session().await,
    )
    .await;

    let policy_path = std::env::temp_dir().join(format!(
        "bursar-overhead-{}-{store}.toml",
        std::process::id()
    ));
    std::fs::write(&policy_path, BENCH_POLICY_TOML).expect("policy file");
    let with_policy = common::runtime_with(&network, store_url, |config| {
        config.policy_file = Some(policy_path.clone());
    })
    .await;
    let policy_file = fetch_latencies(
        &with_policy.runtime,
        &fresh_session().await,
        "paid, default policy's rules (file)",
        &format!("{seller}/paid"),
        REQUESTS,
        true,
    )
    .await;
    std::fs::remove_file(&policy_path).expect("policy file removed");

    // Parts of the paid request's own work, one call at a time.
    let store_handle = runtime.store().clone();
    let payee = PrivateKeySigner::random().address();
    let session = fresh_session().await;
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let transfer = transfer_for(&session, payer, payee);
        let started = Instant::now();
        let reserved = store_handle.reserve(transfer).await.expect("reserve");
        samples.push(started.elapsed());
        assert!(matches!(reserved, Reservation::Reserved(_)));
    }
    latencies.push(Latencies {
        label: "  part: reservation (one txn)".into(),
        samples,
    });
    let signer = PrivateKeySigner::random();
    let domain = token_domain(
        TOKEN_NAME,
        "2",
        network.chain.chain_id(),
        network.token.address(),
    );
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let authorization =
            authorization_for(&requirement, signer.address(), 1_800_000_000).expect("authorize");
        sign_authorization(&signer, &authorization, &domain).expect("sign");
        samples.push(started.elapsed());
    }
    latencies.push(Latencies {
        label: "  part: EIP-3009 signature".into(),
        samples,
    });
    let pending = store_handle
        .pending_transfers(REQUESTS)
        .await
        .expect("pending");
    let mut samples = Vec::with_capacity(pending.len());
    for transfer in &pending {
        let started = Instant::now();
        let resolution = runtime.resolve_transfer(transfer).await.expect("resolve");
        samples.push(started.elapsed());
        assert_eq!(resolution, bursar_runtime::Resolution::StillPending);
    }
    latencies.push(Latencies {
        label: "  part: chain check after paying".into(),
        samples,
    });

    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let (id, _) = rt.session(&grant, "1000000", None).await;
        sessions.push(runtime.session(&id).await.expect("session"));
    }
    let mut throughput = Vec::new();
    let mut reserved = Vec::new();
    for concurrency in CONCURRENCY {
        let (measured, ids) =
            reserve_throughput(runtime.store(), &sessions, concurrency, payer).await;
        throughput.push(measured);
        reserved.push(ids);
    }
    for (concurrency, ids) in CONCURRENCY.into_iter().zip(reserved) {
        throughput.push(post_throughput(runtime.store(), ids, concurrency).await);
    }
    Report {
        store,
        latencies,
        policy_file,
        mcp,
        throughput,
    }
}

fn print(reports: &[Report]) {
    println!();
    println!("Bursar runtime overhead: Runtime::fetch latency and store throughput");
    println!(
        "{} cores; shared and noisy: compare ratios within one run, not absolute numbers across \
         machines.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Latency: {REQUESTS} sequential requests per route after {WARM_UP} warm-up ({REQUESTS_SETTLED} \
         through the paywall), loopback, embedded chain."
    );
    println!();
    println!(
        "{:<11} {:<34} {:>5} {:>9} {:>9} {:>9}",
        "store", "Runtime::fetch", "n", "p50 ms", "p99 ms", "mean ms"
    );
    let row = |store: &str, latency: &Latencies| {
        println!(
            "{:<11} {:<34} {:>5} {:>9.3} {:>9.3} {:>9.3}",
            store,
            latency.label,
            latency.samples.len(),
            ms(latency.percentile(50.0)),
            ms(latency.percentile(99.0)),
            ms(latency.mean()),
        );
    };
    for report in reports {
        let (unpaid, paid) = (&report.latencies[0], &report.latencies[1]);
        row(report.store, unpaid);
        row(report.store, paid);
        println!(
            "{:<11} {:<34} {:>5} {:>9.3} {:>9.3} {:>9.3}   (paid/unpaid x{:.1} at p50)",
            report.store,
            "= paid overhead (paid - unpaid)",
            "",
            ms(paid.percentile(50.0)) - ms(unpaid.percentile(50.0)),
            ms(paid.percentile(99.0)) - ms(unpaid.percentile(99.0)),
            ms(paid.mean()) - ms(unpaid.mean()),
            ms(paid.percentile(50.0)) / ms(unpaid.percentile(50.0)),
        );
        for range in [0..50, REQUESTS - 50..REQUESTS] {
            let window = Latencies {
                label: format!(
                    "  paid, session's requests {}-{}",
                    WARM_UP + range.start + 1,
                    WARM_UP + range.end
                ),
                samples: paid.samples[range].to_vec(),
            };
            row(report.store, &window);
        }
        row(report.store, &report.policy_file);
        for part in &report.latencies[3..] {
            row(report.store, part);
        }
        row(report.store, &report.latencies[2]);
    }
    println!();
    println!(
        "MCP tool calls (streamable HTTP, a session per call; the paid tool verifies and settles \
         on the embedded chain), {REQUESTS_SETTLED} sequential calls after {WARM_UP} warm-up:"
    );
    for report in reports {
        for pair in report.mcp.chunks(2) {
            let (unpaid, paid) = (&pair[0], &pair[1]);
            row(report.store, unpaid);
            row(report.store, paid);
            println!(
                "{:<11} {:<34} {:>5} {:>9.3} {:>9.3} {:>9.3}",
                report.store,
                "= paid - unpaid",
                "",
                ms(paid.percentile(50.0)) - ms(unpaid.percentile(50.0)),
                ms(paid.percentile(99.0)) - ms(unpaid.percentile(99.0)),
                ms(paid.mean()) - ms(unpaid.mean()),
            );
        }
    }
    println!();
    println!(
        "Store throughput, called directly, {SESSIONS} sessions, {} s windows:",
        THROUGHPUT_WINDOW.as_secs()
    );
    println!(
        "{:<11} {:<10} {:>11} {:>8} {:>10}",
        "store", "operation", "concurrency", "ops", "ops/s"
    );
    for report in reports {
        for measured in &report.throughput {
            println!(
                "{:<11} {:<10} {:>11} {:>8} {:>10.0}",
                report.store,
                measured.label,
                measured.concurrency,
                measured.operations,
                measured.per_second(),
            );
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let reports = runtime.block_on(async {
        let started = Instant::now();
        let sqlite = bursar_store::testkit::TempSqlite::new();
        let mut reports = vec![measure("sqlite", &sqlite.url()).await];
        let postgres = bursar_store::testkit::TempPostgres::create().await;
        reports.push(measure("postgresql", postgres.url()).await);
        eprintln!("measured in {:.1} s", started.elapsed().as_secs_f64());
        reports
    });
    print(&reports);
}
