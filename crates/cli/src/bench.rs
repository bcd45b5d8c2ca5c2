//! `bursar bench`: signature verification and facilitator `/verify` throughput, measured on this
//! machine with the load generator in the same process (so the numbers include its cost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::U256;
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, Result};
use bursar_chain::{Account, EvmChain, Token};
use bursar_chain_revm::{EmbeddedChain, EmbeddedConfig};
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator};
use bursar_protocol::exact_evm::{self, ExactEvmPayload};
use bursar_protocol::{
    Amount, FacilitatorRequest, Network, PaymentPayload, PaymentRequirements, X402Version,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Concurrency levels for the /verify load (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Seconds of load per concurrency level.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Distinct signed payments cycled through by the load generator.
    #[arg(long, default_value_t = 2_000)]
    pub payments: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure confirmed settlements per second instead: `POST /settle`, unbatched and batched,
    /// each concurrency level on a fresh anvil (`$BURSAR_ANVIL` or the one pinned in tools/anvil).
    #[arg(long)]
    pub settle: bool,
    /// Sender accounts for the batched settle benchmark.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Batched settle benchmark: also simulate each settlement before it joins a batch (as
    /// `bursar facilitator --batch-simulate`), to compare.
    #[arg(long)]
    pub batch_simulate: bool,
    /// Settle benchmark: read each payment's balance and nonce state with calls of its own
    /// instead of grouped reads (as `bursar facilitator` does with the embedded chain), to compare.
    #[arg(long)]
    pub single_reads: bool,
}

/// The most connections the load generator opens.
const CONCURRENCY_MAX: usize = 1_024;
const PRICE_ATOMIC: u64 = 10_000;
const TOKEN_NAME: &str = "USD Coin";

struct Level {
    concurrency: usize,
    requests: u64,
    failures: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.settle {
        return settle::run(args).await;
    }
    anyhow::ensure!(
        args.concurrency
            .iter()
            .all(|c| (1..=CONCURRENCY_MAX).contains(c)),
        "concurrency must be between 1 and {CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        args.payments > 0 && args.seconds > 0,
        "--payments and --seconds must be positive"
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "bursar bench on {cores} cores; load generator and facilitator share this process and machine"
    );

    eprintln!("[1/3] signature recovery and stateless checks ...");
    let signatures = signature_rates(Duration::from_secs(args.seconds.min(3)));

    eprintln!(
        "[2/3] preparing an embedded chain, token and {} signed payments ...",
        args.payments
    );
    let setup = Setup::new(args.payments).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = bursar_facilitator::router(setup.facilitator.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    eprintln!("[3/3] POST /verify load, {}s per level ...", args.seconds);
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let level = load(
            address,
            setup.bodies.clone(),
            concurrency,
            Duration::from_secs(args.seconds),
        )
        .await?;
        eprintln!(
            "      concurrency {:>3}: {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  failures {}",
            level.concurrency,
            level.requests as f64 / level.seconds,
            level.p50_us,
            level.p99_us,
            level.failures
        );
        levels.push(level);
    }
    server.abort();

    if args.json {
        let document = json!({
            "cores": cores,
            "signatureRecoveriesPerSecond": signatures.recoveries_per_second.round(),
            "checksPerSecond": signatures.checks_per_second.round(),
            "verify": levels.iter().map(|l| json!({
                "concurrency": l.concurrency,
                "requestsPerSecond": (l.requests as f64 / l.seconds).round(),
                "p50Micros": l.p50_us,
                "p99Micros": l.p99_us,
                "failures": l.failures,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!(
            "signature recoveries/s (1 thread): {:.0}",
            signatures.recoveries_per_second
        );
        println!(
            "stateless payment checks/s (1 thread): {:.0}",
            signatures.checks_per_second
        );
        println!("facilitator POST /verify (embedded chain, load generator in-process):");
        println!("  concurrency   req/s      p50 µs   p99 µs   failures");
        for l in &levels {
            println!(
                "  {:>11}   {:>8.0}   {:>6}   {:>6}   {}",
                l.concurrency,
                l.requests as f64 / l.seconds,
                l.p50_us,
                l.p99_us,
                l.failures
            );
        }
    }
    let failures: u64 = levels.iter().map(|l| l.failures).sum();
    anyhow::ensure!(
        failures == 0,
        "{failures} verifications did not answer isValid=true"
    );
    Ok(())
}

struct SignatureRates {
    recoveries_per_second: f64,
    checks_per_second: f64,
}

fn signature_rates(duration: Duration) -> SignatureRates {
    let signer = PrivateKeySigner::random();
    let requirements = requirements(alloy_primitives::Address::repeat_byte(1), signer.address());
    let authorization = exact_evm::authorization_for(&requirements, signer.address(), now())
        .expect("authorization");
    let domain = exact_evm::token_domain(
        TOKEN_NAME,
        "2",
        bursar_protocol::DEV_CHAIN_ID,
        alloy_primitives::Address::repeat_byte(1),
    );
    let signature = exact_evm::sign_authorization(&signer, &authorization, &domain).expect("sign");
    let digest = authorization.signing_hash(&domain);
    let payload = PaymentPayload::new_v2(
        requirements.clone(),
        None,
        ExactEvmPayload {
            signature: signature.clone(),
            authorization,
        },
    );

    let started = Instant::now();
    let mut recoveries = 0u64;
    while started.elapsed() < duration / 2 {
        for _ in 0..100 {
            let recovered = exact_evm::recover_signer(&digest, &signature);
            assert_eq!(recovered.ok(), Some(signer.address()));
            recoveries += 1;
        }
    }
    let recoveries_per_second = recoveries as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut checks = 0u64;
    let now = now();
    while started.elapsed() < duration / 2 {
        for _ in 0..100 {
            let checked = exact_evm::check_payment(
                &payload,
                &requirements,
                bursar_protocol::DEV_CHAIN_ID,
                now,
            );
            assert!(checked.is_ok());
            checks += 1;
        }
    }
    SignatureRates {
        recoveries_per_second,
        checks_per_second: checks as f64 / started.elapsed().as_secs_f64(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn requirements(
    token: alloy_primitives::Address,
    pay_to: alloy_primitives::Address,
) -> PaymentRequirements {
    PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(bursar_protocol::DEV_CHAIN_ID),
        amount: Amount::from(PRICE_ATOMIC),
        asset: token.into(),
        pay_to: pay_to.into(),
        max_timeout_seconds: 3600,
        extra: Some(json!({"name": TOKEN_NAME, "version": "2"})),
    }
}

struct Setup {
    facilitator: LocalFacilitator,
    bodies: Arc<Vec<Bytes>>,
}

impl Setup {
    async fn new(payments: usize) -> Result<Setup> {
        const PAYERS: usize = 64;
        let deployer = PrivateKeySigner::random();
        let settler = PrivateKeySigner::random();
        let ether = U256::from(1_000_000_000_000_000_000_000u128);
        let chain = EmbeddedChain::open(EmbeddedConfig {
            genesis: vec![(deployer.address(), ether), (settler.address(), ether)],
            ..EmbeddedConfig::default()
        })
        .context("cannot open an embedded chain")?;
        let evm: Arc<dyn EvmChain> = chain.clone();
        let owner = Account::new(evm.clone(), deployer);
        let token = Token::deploy(&owner, TOKEN_NAME, "USDC", owner.address()).await?;
        let payers: Vec<PrivateKeySigner> =
            (0..PAYERS).map(|_| PrivateKeySigner::random()).collect();
        for payer in &payers {
            token
                .mint(
                    &owner,
                    payer.address(),
                    U256::from(PRICE_ATOMIC * 1_000_000),
                )
                .await?;
        }
        let pay_to = PrivateKeySigner::random().address();
        let requirements = requirements(token.address(), pay_to);
        let domain = exact_evm::token_domain(TOKEN_NAME, "2", chain.chain_id(), token.address());
        let now = now();
        let mut bodies = Vec::with_capacity(payments);
        for index in 0..payments {
            let payer = &payers[index % PAYERS];
            let authorization = exact_evm::authorization_for(&requirements, payer.address(), now)
                .map_err(anyhow::Error::msg)?;
            let signature = exact_evm::sign_authorization(payer, &authorization, &domain)?;
            let payload = PaymentPayload::new_v2(
                requirements.clone(),
                None,
                ExactEvmPayload {
                    signature,
                    authorization,
                },
            );
            let request = FacilitatorRequest {
                version: X402Version::V2,
                payload,
                requirements: requirements.clone(),
                resource: None,
            };
            bodies.push(Bytes::from(request.to_json_value().to_string()));
        }
        let facilitator = LocalFacilitator::new(
            evm.clone(),
            Account::new(evm, settler),
            FacilitatorConfig::default(),
        );
        Ok(Setup {
            facilitator,
            bodies: Arc::new(bodies),
        })
    }
}

async fn load(
    address: std::net::SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    duration: Duration,
) -> Result<Level> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (bodies, stop) = (bodies.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            worker_loop(address, bodies, worker, stop).await
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (latencies_us, failures) = join_workers(workers).await?;
    let seconds = started.elapsed().as_secs_f64();
    let percentile = |p: usize| u64::from(percentile_us(&latencies_us, p));
    Ok(Level {
        concurrency,
        requests: latencies_us.len() as u64,
        failures,
        seconds,
        p50_us: percentile(50),
        p99_us: percentile(99),
    })
}

async fn worker_loop(
    address: std::net::SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    worker: usize,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<u32>, u64)> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut index = worker;
    while !stop.load(Ordering::Relaxed) {
        let body = bodies[index % bodies.len()].clone();
        index += 7;
        let request = hyper::Request::post("/verify")
            .header("host", address.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status() == 200;
        let bytes = response.into_body().collect().await?.to_bytes();
        latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        // `"isValid":true` is the first field of a valid answer.
        if !ok || !bytes.starts_with(b"{\"isValid\":true") {
            failures += 1;
        }
    }
    Ok((latencies, failures))
}

mod settle;

/// What one load worker measured: latencies (µs) and failures.
type WorkerResult = Result<(Vec<u32>, u64)>;

/// Waits for the load workers; returns every latency (µs), sorted, and the failures.
async fn join_workers(workers: Vec<tokio::task::JoinHandle<WorkerResult>>) -> WorkerResult {
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (latencies, worker_failures) = worker.await??;
        latencies_us.extend(latencies);
        failures += worker_failures;
    }
    latencies_us.sort_unstable();
    Ok((latencies_us, failures))
}

/// The `p`th percentile of sorted latencies (0 when there are none).
fn percentile_us(sorted_us: &[u32], p: usize) -> u32 {
    match sorted_us.len() {
        0 => 0,
        len => sorted_us[(len * p / 100).min(len - 1)],
    }
}
