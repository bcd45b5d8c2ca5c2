//! Catalog search over 12,000 listings, on SQLite and on PostgreSQL.
//!
//! `cargo bench -p bursar-catalog --bench search` (a few minutes). Each store is filled through
//! [`CatalogStore::record`], in batches of 500 observations made from payment requests as the
//! facilitator sees them: 400 payees, a third of the listings settled with one to six payments
//! each, a fifth offered on a second network, some failed settlements, HTTP and MCP resources
//! with words from a varied vocabulary in their URLs, descriptions and tags, seven prices.
//!
//! PostgreSQL's tables are then vacuumed and analyzed, as autovacuum would after so many writes;
//! SQLite is searched as it is (it keeps no planner statistics unless told to). Then every query
//! below (20 listings a page) runs under criterion, and once more [`TIMED_RUNS`] times in a row,
//! timed one by one, for the p50 / p99 lines printed at the end.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use bursar_catalog::observation;
use bursar_protocol::discovery::ResourceKind;
use bursar_protocol::{Amount, FacilitatorRequest};
use bursar_store::catalog::{
    CatalogEvent, CatalogLimits, CatalogQuery, CatalogStore, PaymentOutcome,
};
use bursar_store::testkit::{TempPostgres, TempSqlite};
use bursar_store::{PostgresDatabase, SqliteDatabase};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

const LISTINGS: u64 = 12_000;
/// Observations per `record` call.
const BATCH: usize = 500;
const PAYEES: u64 = 400;
const PAYERS: u64 = 250;
/// Timed runs of each query, after [`WARM_UP`] untimed ones, unless [`TIMED_BUDGET`] runs out.
const TIMED_RUNS: usize = 500;
const WARM_UP: usize = 20;
const TIMED_BUDGET: Duration = Duration::from_secs(10);
const PAGE: u64 = 20;
const NOW: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;
const PRICES: [u64; 7] = [1_000, 5_000, 10_000, 25_000, 100_000, 500_000, 2_000_000];
const NETWORKS: [&str; 2] = ["eip155:8453", "eip155:84532"];
const USDC: Address = Address::repeat_byte(0x5f);
const EURC: Address = Address::repeat_byte(0x6e);

/// One of them leads each listing (about 1% of the listings each).
const TOPICS: [&str; 100] = [
    "weather",
    "equities",
    "forex",
    "bitcoin",
    "geocode",
    "translate",
    "sentiment",
    "headlines",
    "flights",
    "hotels",
    "traffic",
    "parking",
    "recipes",
    "nutrition",
    "genomics",
    "proteins",
    "patents",
    "lawsuits",
    "invoices",
    "payroll",
    "shipping",
    "customs",
    "tariffs",
    "earthquakes",
    "wildfire",
    "pollen",
    "airquality",
    "tides",
    "satellite",
    "imagery",
    "lidar",
    "transcribe",
    "diarize",
    "summarize",
    "classify",
    "embeddings",
    "rerank",
    "captions",
    "thumbnails",
    "receipts",
    "barcode",
    "vintage",
    "auctions",
    "realestate",
    "mortgage",
    "zoning",
    "census",
    "elections",
    "polling",
    "sports",
    "fixtures",
    "betting",
    "gaming",
    "lyrics",
    "podcasts",
    "audiobooks",
    "chess",
    "puzzles",
    "horoscope",
    "astronomy",
    "exoplanets",
    "telescope",
    "volcano",
    "glaciers",
    "rainfall",
    "drought",
    "harvest",
    "livestock",
    "fisheries",
    "forestry",
    "mining",
    "uranium",
    "lithium",
    "carbon",
    "emissions",
    "recycling",
    "compost",
    "plumbing",
    "roofing",
    "dentistry",
    "pharmacy",
    "vaccines",
    "clinics",
    "triage",
    "insurance",
    "underwriting",
    "actuarial",
    "fraud",
    "sanctions",
    "identity",
    "passport",
    "visas",
    "currency",
    "bonds",
    "futures",
    "options",
    "dividends",
    "mergers",
    "startups",
    "venture",
];
const REGIONS: [&str; 10] = [
    "lisbon", "nairobi", "osaka", "denver", "santiago", "mumbai", "toronto", "cairo", "sydney",
    "berlin",
];
const CADENCES: [&str; 6] = [
    "realtime",
    "hourly",
    "daily",
    "historical",
    "streaming",
    "bulk",
];
const NOUNS: [&str; 8] = [
    "data", "feed", "index", "report", "alerts", "lookup", "scores", "forecast",
];
const CATEGORIES: [&str; 8] = [
    "finance",
    "science",
    "media",
    "health",
    "geo",
    "commerce",
    "legal",
    "machine-learning",
];
const BRANDS: [&str; 20] = [
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Wonka",
    "Oscorp",
    "Aperture",
    "Massive",
    "Gringotts",
    "Monarch",
    "Pied",
    "Dunder",
];
const TOOL_VERBS: [&str; 4] = ["get", "search", "compute", "explain"];

/// SplitMix64: the same listings on every run and backend.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len() as u64) as usize]
    }
}

fn address(tag: u8, n: u64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = tag;
    bytes[12..].copy_from_slice(&n.to_be_bytes());
    Address::from(bytes)
}

fn payee(n: u64) -> Address {
    address(0x70, n)
}

/// What one listing is offered as.
struct Resource {
    url: String,
    extension: Value,
    description: String,
    service_name: String,
    tags: Vec<String>,
}

/// The terms one payment is made on.
struct Offer<'a> {
    network: &'a str,
    asset: Address,
    amount: u64,
    pay_to: Address,
}

/// A v2 /verify or /settle body for `resource`, paid by `payer` with `nonce`.
fn request(resource: &Resource, offer: &Offer, payer: Address, nonce: u64) -> FacilitatorRequest {
    let accepted = json!({
        "scheme": "exact", "network": offer.network, "amount": offer.amount.to_string(),
        "asset": offer.asset.to_string(), "payTo": offer.pay_to.to_string(),
        "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"},
    });
    let body = json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "resource": {"url": resource.url, "description": resource.description,
                         "mimeType": "application/json", "serviceName": resource.service_name,
                         "tags": resource.tags},
            "accepted": accepted,
            "payload": {
                "signature": format!("0x{}", "11".repeat(65)),
                "authorization": {
                    "from": payer.to_string(), "to": offer.pay_to.to_string(),
                    "value": offer.amount.to_string(), "validAfter": "0",
                    "validBefore": "99999999999",
                    "nonce": B256::from(U256::from(nonce)).to_string(),
                },
            },
            "extensions": {"bazaar": resource.extension},
        },
        "paymentRequirements": accepted,
    });
    FacilitatorRequest::from_json(body.to_string().as_bytes()).expect("a valid request")
}

/// Every observation of the catalog, in the order a facilitator would make them.
fn observations() -> Vec<CatalogEvent> {
    let mut events = Vec::new();
    let mut nonce = 0u64;
    let observe = |events: &mut Vec<CatalogEvent>, request: &FacilitatorRequest, outcome, at_ms| {
        events.push(observation(request, outcome, at_ms).expect("a listed resource"));
    };
    for index in 0..LISTINGS {
        let mut mix = Mix(index);
        let topic = mix.pick(&TOPICS);
        let region = mix.pick(&REGIONS);
        let cadence = mix.pick(&CADENCES);
        let noun = mix.pick(&NOUNS);
        let category = mix.pick(&CATEGORIES);
        let payee_index = mix.below(PAYEES);
        let brand = BRANDS[(payee_index % BRANDS.len() as u64) as usize];
        let host = format!("{}{payee_index}.example", brand.to_lowercase());
        let (url, extension) = if mix.below(4) == 0 {
            let tool = format!("{topic}_{}", mix.pick(&TOOL_VERBS));
            (
                format!("mcp://tools.{host}/{index}"),
                json!({"info": {"input": {"type": "mcp", "toolName": tool,
                    "inputSchema": {"type": "object", "properties": {"region": {"type": "string"}}}}}}),
            )
        } else {
            let method = if mix.below(3) == 0 { "POST" } else { "GET" };
            (
                format!(
                    "https://api.{host}/v{}/{topic}/{region}/{index}",
                    1 + mix.below(3)
                ),
                json!({"info": {"input": {"type": "http", "method": method},
                    "output": {"type": "json"}}}),
            )
        };
        let resource = Resource {
            url,
            extension,
            description: format!("{cadence} {topic} {noun} for {region}, by {brand}"),
            service_name: format!("{brand} {payee_index}"),
            tags: vec![topic.into(), region.into(), category.into()],
        };
        let network = mix.below(2) as usize;
        let offer = Offer {
            network: NETWORKS[network],
            asset: if mix.below(4) == 0 { EURC } else { USDC },
            amount: PRICES[mix.below(PRICES.len() as u64) as usize],
            pay_to: payee(payee_index),
        };
        let first_seen = NOW - 20 * DAY_MS + mix.below(20 * DAY_MS as u64) as i64;
        let mut at = first_seen;
        let mut pay = |mix: &mut Mix, offer: &Offer| {
            nonce += 1;
            at += 1 + mix.below(60_000) as i64;
            (
                request(&resource, offer, address(0xa0, mix.below(PAYERS)), nonce),
                at,
            )
        };
        let (first, at_ms) = pay(&mut mix, &offer);
        observe(&mut events, &first, PaymentOutcome::Verified, at_ms);
        if mix.below(5) == 0 {
            let second = Offer {
                network: NETWORKS[1 - network],
                ..offer
            };
            let (other, at_ms) = pay(&mut mix, &second);
            observe(&mut events, &other, PaymentOutcome::Verified, at_ms);
        }
        if index % 3 == 0 {
            for _ in 0..1 + mix.below(6) {
                let (paid, at_ms) = pay(&mut mix, &offer);
                if mix.below(2) == 0 {
                    observe(&mut events, &paid, PaymentOutcome::Verified, at_ms);
                }
                observe(&mut events, &paid, PaymentOutcome::Settled, at_ms + 500);
            }
            if mix.below(8) == 0 {
                let (failed, at_ms) = pay(&mut mix, &offer);
                observe(&mut events, &failed, PaymentOutcome::Verified, at_ms);
                observe(
                    &mut events,
                    &failed,
                    PaymentOutcome::SettleFailed,
                    at_ms + 500,
                );
            }
        }
    }
    events
}

async fn fill(name: &str, store: &dyn CatalogStore, events: &[CatalogEvent]) {
    let started = Instant::now();
    let mut listed = 0;
    for (done, batch) in events.chunks(BATCH).enumerate() {
        listed += store
            .record(batch, CatalogLimits::default())
            .await
            .expect("record a batch");
        eprint!(
            "\r{name}: {} / {} observations recorded ({:.0} s)",
            (done * BATCH + batch.len()),
            events.len(),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    assert_eq!(listed, events.len(), "every observation listed");
}

fn queries() -> Vec<(&'static str, CatalogQuery)> {
    let base = CatalogQuery {
        seen_since_ms: NOW - 30 * DAY_MS,
        limit: PAGE,
        ..CatalogQuery::default()
    };
    vec![
        ("first page", base.clone()),
        (
            "one word",
            CatalogQuery {
                words: vec!["geocode".into()],
                ..base.clone()
            },
        ),
        (
            "two words",
            CatalogQuery {
                words: vec!["geocode".into(), "lisbon".into()],
                ..base.clone()
            },
        ),
        (
            "network+asset+maxPrice",
            CatalogQuery {
                network: Some(NETWORKS[0].into()),
                asset: Some(USDC),
                max_amount: Some(Amount::from(10_000u64)),
                ..base.clone()
            },
        ),
        (
            "settled mcp",
            CatalogQuery {
                settled_only: true,
                kind: Some(ResourceKind::Mcp),
                ..base.clone()
            },
        ),
        (
            "offset 5,000",
            CatalogQuery {
                offset: 5_000,
                ..base.clone()
            },
        ),
        (
            "payTo",
            CatalogQuery {
                pay_to: Some(payee(17)),
                ..base
            },
        ),
    ]
}

/// One query on one backend: matches and timed runs.
struct Measured {
    backend: &'static str,
    query: &'static str,
    total: u64,
    samples: Vec<Duration>,
}

impl Measured {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
    }
}

fn measure_backend(
    c: &mut Criterion,
    runtime: &Runtime,
    backend: &'static str,
    store: Arc<dyn CatalogStore>,
    measured: &mut Vec<Measured>,
) {
    let mut group = c.benchmark_group(format!("catalog_search/{backend}"));
    for (name, query) in queries() {
        let page = runtime.block_on(store.search(&query)).expect("search");
        assert!(!page.listings.is_empty(), "{backend}: {name} finds nothing");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| runtime.block_on(store.search(black_box(&query))).unwrap())
        });
        for _ in 0..WARM_UP {
            runtime.block_on(store.search(&query)).unwrap();
        }
        let started = Instant::now();
        let mut samples = Vec::with_capacity(TIMED_RUNS);
        while samples.len() < TIMED_RUNS && started.elapsed() < TIMED_BUDGET {
            let run = Instant::now();
            black_box(runtime.block_on(store.search(&query)).unwrap());
            samples.push(run.elapsed());
        }
        let result = Measured {
            backend,
            query: name,
            total: page.total,
            samples,
        };
        println!(
            "{backend} {name}: p50 {:.2} ms, p99 {:.2} ms ({} runs, {} matches)",
            result.percentile(50.0),
            result.percentile(99.0),
            result.samples.len(),
            result.total
        );
        measured.push(result);
    }
    group.finish();
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn search(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let events = observations();
    eprintln!(
        "{} observations of {LISTINGS} listings made in {:.1} s",
        events.len(),
        started.elapsed().as_secs_f64()
    );
    let mut measured = Vec::new();

    let sqlite_file = TempSqlite::new();
    let sqlite = runtime
        .block_on(SqliteDatabase::open(&sqlite_file.url()))
        .expect("open SQLite");
    runtime.block_on(fill("sqlite", &sqlite, &events));
    measure_backend(c, &runtime, "sqlite", Arc::new(sqlite), &mut measured);

    let postgres_database = runtime.block_on(TempPostgres::create());
    let postgres = runtime
        .block_on(PostgresDatabase::open(postgres_database.url()))
        .expect("open PostgreSQL");
    runtime.block_on(async {
        fill("postgresql", &postgres, &events).await;
        // What autovacuum does to tables written this much (the test server may run without it):
        // planner statistics and the visibility map. SQLite keeps no statistics unless asked.
        let mut connection = PgConnection::connect(postgres_database.url())
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql("VACUUM ANALYZE")
            .execute(&mut connection)
            .await
            .expect("VACUUM ANALYZE");
        let _ = connection.close().await;
    });
    measure_backend(c, &runtime, "postgresql", Arc::new(postgres), &mut measured);

    println!();
    println!(
        "Catalog search, {LISTINGS} listings, {PAGE} a page: p50 / p99 over up to {TIMED_RUNS} \
         sequential runs each (ms); {} cores, load average {}; whole bench {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<24} {:>8} {:>15} {:>15}",
        "query", "matches", "SQLite", "PostgreSQL"
    );
    for (name, _) in queries() {
        let cell = |backend: &str| {
            measured
                .iter()
                .find(|m| m.backend == backend && m.query == name)
                .map(|m| format!("{:.2} / {:.2}", m.percentile(50.0), m.percentile(99.0)))
                .unwrap_or_default()
        };
        let total = measured
            .iter()
            .find(|m| m.query == name)
            .map_or(0, |m| m.total);
        println!(
            "{name:<24} {total:>8} {:>15} {:>15}",
            cell("sqlite"),
            cell("postgresql")
        );
    }
    drop(postgres_database);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = search
}
criterion_main!(benches);
