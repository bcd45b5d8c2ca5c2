//! `bursar bench --settle`: `POST /verify` requests per second and confirmed settlements per
//! second through `POST /settle`, for Bursar (one transaction per settlement, and batched) and,
//! side by side, the official TypeScript facilitator (@x402/core + @x402/evm, the interop
//! server in `interop/servers/facilitator.mjs`, when `npm ci --prefix interop` has been run), at
//! several concurrency levels. Each level runs on a fresh anvil (its cost per transaction grows
//! with history); every process is started and stopped here by its handle. A settlement counts
//! when `/settle` answers `success: true`, which both give only after the receipt.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::U256;
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, Result};
use bursar_chain::{Account, DevChain, EvmChain, Token};
use bursar_facilitator::{BatchConfig, FacilitatorConfig, LocalFacilitator};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{FacilitatorRequest, PaymentPayload, X402Version};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{BenchArgs, CONCURRENCY_MAX, PRICE_ATOMIC, TOKEN_NAME, now, requirements};

/// The chain id of the benchmark's anvil (the dev chain id, so [`requirements`] fits).
const CHAIN_ID: u64 = bursar_protocol::DEV_CHAIN_ID;
/// How long anvil may take to answer after it was started.
const ANVIL_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Payers the signed payments rotate through.
const PAYERS: usize = 64;
/// Payments signed per level: enough for the level's seconds at this many settlements/s.
const SETTLEMENTS_PER_SECOND_PLANNED: usize = 2_500;
/// The most payments signed per level.
const PAYMENTS_PER_LEVEL_MAX: usize = 40_000;
/// The sender accounts allowed.
const SENDERS_MAX: usize = bursar_facilitator::batch::SENDERS_MAX;

/// An anvil this benchmark started; killed (by its handle) when dropped.
struct Anvil {
    child: Child,
    url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anvil_binary() -> PathBuf {
    match std::env::var("BURSAR_ANVIL") {
        Ok(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"),
    }
}

async fn start_anvil() -> Result<(Anvil, Arc<bursar_chain_rpc::RpcChain>)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let binary = anvil_binary();
    let child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", &CHAIN_ID.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run anvil at {} (npm ci --prefix tools/anvil, or set BURSAR_ANVIL)",
                binary.display()
            )
        })?;
    let anvil = Anvil {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        let options = bursar_chain_rpc::RpcOptions {
            receipt_poll_interval: RECEIPT_POLL_INTERVAL,
            ..Default::default()
        };
        match bursar_chain_rpc::RpcChain::connect_with(&anvil.url, Some(CHAIN_ID), options).await {
            Ok(chain) => return Ok((anvil, chain)),
            Err(error) if started.elapsed() > ANVIL_START_TIMEOUT => {
                anyhow::bail!("anvil did not answer at {}: {error}", anvil.url)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How often Bursar asks the benchmark's anvil for a receipt. anvil mines each transaction as it
/// arrives, so a short interval measures the facilitator rather than the poll (the official
/// facilitator's script polls every 50 ms).
const RECEIPT_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long a batch waits for company in the benchmark.
const BATCH_WAIT: Duration = Duration::from_millis(10);

/// The official facilitator's server script, relative to the workspace root.
const OFFICIAL_SCRIPT: &str = "interop/servers/facilitator.mjs";
/// Seconds of `/verify` load per level (before the settlements).
const VERIFY_SECONDS_MAX: u64 = 3;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Unbatched,
    Batched,
    Official,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Unbatched => "bursar",
            Mode::Batched => "bursar-batched",
            Mode::Official => "official-ts",
        }
    }
}

/// A child process (the official facilitator); killed by its handle when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Level {
    mode: &'static str,
    concurrency: usize,
    verify_per_second: f64,
    verify_failures: u64,
    settled: u64,
    failures: u64,
    seconds: f64,
    transactions: u64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.concurrency
            .iter()
            .all(|c| (1..=CONCURRENCY_MAX).contains(c)),
        "concurrency must be between 1 and {CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        (1..=SENDERS_MAX).contains(&args.senders),
        "--senders must be 1 to {SENDERS_MAX}"
    );
    anyhow::ensure!(args.seconds > 0, "--seconds must be positive");
    let mut modes = vec![Mode::Unbatched, Mode::Batched];
    if std::path::Path::new("interop/node_modules/@x402/core").exists() {
        modes.push(Mode::Official);
    } else {
        eprintln!(
            "the official facilitator is skipped: run `npm ci --prefix interop` in the workspace root"
        );
    }
    let mut levels = Vec::new();
    for mode in modes {
        for &concurrency in &args.concurrency {
            let level = level(&args, mode, concurrency).await?;
            eprintln!(
                "      {:<14} c{:>3}: verify {:>7.0}/s, settle {:>7.0}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  {} transactions  failures {}",
                level.mode,
                level.concurrency,
                level.verify_per_second,
                level.settled as f64 / level.seconds,
                level.p50_ms,
                level.p99_ms,
                level.transactions,
                level.failures
            );
            levels.push(level);
        }
    }
    if args.json {
        let document = json!({
            "settle": levels.iter().map(|l| json!({
                "mode": l.mode,
                "concurrency": l.concurrency,
                "verifyPerSecond": l.verify_per_second.round(),
                "verifyFailures": l.verify_failures,
                "settlementsPerSecond": (l.settled as f64 / l.seconds).round(),
                "p50Millis": l.p50_ms,
                "p99Millis": l.p99_ms,
                "transactions": l.transactions,
                "failures": l.failures,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!(
            "POST /verify and POST /settle on a fresh anvil per level (settlements confirmed):"
        );
        println!(
            "  facilitator      conc.   verify/s   settled/s   p50 ms   p99 ms   transactions   failures"
        );
        for l in &levels {
            println!(
                "  {:<14}   {:>5}   {:>8.0}   {:>9.0}   {:>6.1}   {:>6.1}   {:>12}   {}",
                l.mode,
                l.concurrency,
                l.verify_per_second,
                l.settled as f64 / l.seconds,
                l.p50_ms,
                l.p99_ms,
                l.transactions,
                l.failures
            );
        }
    }
    let failures: u64 = levels
        .iter()
        .filter(|l| l.mode != Mode::Official.name())
        .map(|l| l.failures + l.verify_failures)
        .sum();
    anyhow::ensure!(
        failures == 0,
        "{failures} Bursar verifications or settlements failed"
    );
    Ok(())
}

async fn level(args: &BenchArgs, mode: Mode, concurrency: usize) -> Result<Level> {
    let batched = mode == Mode::Batched;
    let (anvil, chain) = start_anvil().await?;
    let dev: Arc<dyn DevChain> = chain.clone();
    let evm: Arc<dyn EvmChain> = chain.clone();
    let ether = U256::from(1_000_000_000_000_000_000_000u128);
    let deployer = PrivateKeySigner::random();
    dev.set_native_balance(deployer.address(), ether).await?;
    let owner = Account::new(evm.clone(), deployer);
    let token = Token::deploy(&owner, TOKEN_NAME, "USDC", owner.address()).await?;
    let senders: Vec<PrivateKeySigner> = (0..if batched { args.senders } else { 1 })
        .map(|_| PrivateKeySigner::random())
        .collect();
    for sender in &senders {
        dev.set_native_balance(sender.address(), ether).await?;
    }
    let payers: Vec<PrivateKeySigner> = (0..PAYERS).map(|_| PrivateKeySigner::random()).collect();
    for payer in &payers {
        token
            .mint(
                &owner,
                payer.address(),
                U256::from(PRICE_ATOMIC * 1_000_000),
            )
            .await?;
    }
    let batch = if batched {
        let settler = owner
            .deploy(bursar_facilitator::batch::batch_settler_creation_code())
            .await?;
        Some(BatchConfig {
            settler,
            items_max: bursar_facilitator::batch::BATCH_ITEMS_MAX_DEFAULT,
            wait_max: BATCH_WAIT,
            simulate_items: args.batch_simulate,
        })
    } else {
        None
    };
    let pay_to = PrivateKeySigner::random().address();
    let requirements = requirements(token.address(), pay_to);
    let count = (SETTLEMENTS_PER_SECOND_PLANNED * args.seconds as usize)
        .clamp(concurrency * 4, PAYMENTS_PER_LEVEL_MAX);
    let bodies = signed_bodies(&requirements, &payers, token.address(), count)?;
    let sender_addresses: Vec<_> = senders.iter().map(PrivateKeySigner::address).collect();
    let sender_addresses_key = alloy_primitives::hex::encode_prefixed(senders[0].to_bytes());
    let facilitator = LocalFacilitator::with_senders(
        evm.clone(),
        senders
            .into_iter()
            .map(|signer| Account::new(evm.clone(), signer))
            .collect(),
        FacilitatorConfig {
            assets: Some(vec![token.address()]),
            batch,
            confirmations: 1,
            group_reads: !args.single_reads,
            ..Default::default()
        },
        Arc::new(bursar_store::SqliteDatabase::memory()),
    );
    let nonces_before = transaction_total(evm.as_ref(), &sender_addresses).await?;
    let (address, server, _official) =
        serve_facilitator(mode, &anvil.url, &sender_addresses_key, facilitator).await?;

    let bodies = Arc::new(bodies);
    // /verify first: it consumes nothing, so the same payments settle afterwards.
    let verify_seconds = args.seconds.min(VERIFY_SECONDS_MAX);
    let (verify_per_second, verify_failures) =
        verify_load(address, bodies.clone(), concurrency, verify_seconds).await?;
    let (latencies_us, failures, seconds) =
        settle_load(address, bodies, concurrency, args.seconds).await?;
    if let Some(server) = server {
        server.abort();
    }
    let nonces_after = transaction_total(evm.as_ref(), &sender_addresses).await?;
    drop(anvil);
    let percentile = |p: usize| f64::from(super::percentile_us(&latencies_us, p)) / 1_000.0;
    Ok(Level {
        mode: mode.name(),
        concurrency,
        verify_per_second,
        verify_failures,
        settled: latencies_us.len() as u64 - failures,
        failures,
        seconds,
        transactions: nonces_after - nonces_before,
        p50_ms: percentile(50),
        p99_ms: percentile(99),
    })
}

/// The facilitator under test, listening on loopback: the official one (a child process), or
/// Bursar's (a task serving `facilitator`).
async fn serve_facilitator(
    mode: Mode,
    rpc_url: &str,
    key: &str,
    facilitator: LocalFacilitator,
) -> Result<(
    std::net::SocketAddr,
    Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    Option<ChildGuard>,
)> {
    Ok(if mode == Mode::Official {
        let (address, child) = start_official(rpc_url, key)?;
        (address, None, Some(child))
    } else {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = bursar_facilitator::router(facilitator);
        (
            address,
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            )),
            None,
        )
    })
}

/// `count` signed payments (`/verify` and `/settle` bodies) of the payers in turn, in `token`.
fn signed_bodies(
    requirements: &bursar_protocol::PaymentRequirements,
    payers: &[PrivateKeySigner],
    token: bursar_protocol::Address,
    count: usize,
) -> Result<Vec<Bytes>> {
    let domain = exact_evm::token_domain(TOKEN_NAME, "2", CHAIN_ID, token);
    let now = now();
    let mut bodies = Vec::with_capacity(count);
    for index in 0..count {
        let payer = &payers[index % payers.len()];
        let authorization = exact_evm::authorization_for(requirements, payer.address(), now)
            .map_err(anyhow::Error::msg)?;
        let signature = exact_evm::sign_authorization(payer, &authorization, &domain)?;
        let request = FacilitatorRequest {
            version: X402Version::V2,
            payload: PaymentPayload::new_v2(
                requirements.clone(),
                None,
                ExactEvmPayload {
                    signature,
                    authorization,
                },
            ),
            requirements: requirements.clone(),
            resource: None,
        };
        bodies.push(Bytes::from(request.to_json_value().to_string()));
    }
    Ok(bodies)
}

/// Settles `bodies` from `concurrency` workers until they are used up or `seconds` pass:
/// each settlement's latency (µs), how many failed, and the seconds it took.
async fn settle_load(
    address: std::net::SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    seconds: u64,
) -> Result<(Vec<u32>, u64, f64)> {
    let cursor = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (bodies, cursor, stop) = (bodies.clone(), cursor.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            settle_loop(address, bodies, cursor, stop).await
        }));
    }
    let deadline = started + Duration::from_secs(seconds);
    while Instant::now() < deadline && cursor.load(Ordering::Relaxed) < bodies.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (latencies_us, failures) = super::join_workers(workers).await?;
    Ok((latencies_us, failures, started.elapsed().as_secs_f64()))
}

/// The transactions the accounts have sent so far, together.
async fn transaction_total(
    evm: &dyn EvmChain,
    accounts: &[bursar_protocol::Address],
) -> Result<u64> {
    let mut total = 0;
    for account in accounts {
        total += evm.transaction_count(*account).await?;
    }
    Ok(total)
}

/// Starts the official facilitator on `rpc_url`, settling from `key`; returns where it listens.
fn start_official(rpc_url: &str, key: &str) -> Result<(std::net::SocketAddr, ChildGuard)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new("node")
        .arg(OFFICIAL_SCRIPT)
        .env("RPC_URL", rpc_url)
        .env("CHAIN_ID", CHAIN_ID.to_string())
        .env("FACILITATOR_KEY", key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run node for the official facilitator")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let guard = ChildGuard(child);
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(url) = line.split("http://").nth(1) {
                let _ = found.send(url.trim().to_string());
            }
        }
    });
    let address = address
        .recv_timeout(ANVIL_START_TIMEOUT)
        .context("the official facilitator did not start")?;
    Ok((address.parse()?, guard))
}

/// `/verify` load for `seconds`: requests per second and failures.
async fn verify_load(
    address: std::net::SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    seconds: u64,
) -> Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (bodies, stop) = (bodies.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let (mut done, mut failures) = (0u64, 0u64);
            let mut index = worker;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[index % bodies.len()].clone();
                index += 7;
                let request = hyper::Request::post("/verify")
                    .header("host", address.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(body))?;
                let response = sender.send_request(request).await?;
                let ok = response.status() == 200;
                let bytes = response.into_body().collect().await?.to_bytes();
                done += 1;
                if !ok || !contains(&bytes, b"\"isValid\":true") {
                    failures += 1;
                }
            }
            anyhow::Ok((done, failures))
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut failures) = (0, 0);
    for worker in workers {
        let (worker_done, worker_failures) = worker.await??;
        done += worker_done;
        failures += worker_failures;
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), failures))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// One connection settling distinct payments until told to stop or out of payments.
async fn settle_loop(
    address: std::net::SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    cursor: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<u32>, u64)> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::new();
    let mut failures = 0;
    while !stop.load(Ordering::Relaxed) {
        let index = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(index).cloned() else {
            break;
        };
        let request = hyper::Request::post("/settle")
            .header("host", address.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status() == 200;
        let bytes = response.into_body().collect().await?.to_bytes();
        latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        if !ok || !contains(&bytes, b"\"success\":true") {
            failures += 1;
            if failures <= 3 {
                tracing::warn!(answer = %String::from_utf8_lossy(&bytes), "settlement failed");
            }
        }
    }
    Ok((latencies, failures))
}
