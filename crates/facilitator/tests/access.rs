//! API keys, rate limits, quotas and hooks, over HTTP on the embedded chain. Every refusal checks
//! the chain: the payer's balance and the facilitator's transaction count do not move.
//!
//! The Redis case needs a real Redis on 127.0.0.1:6379 (or `BURSAR_TEST_REDIS_URL`); it fails,
//! never skips, when none answers.

#[allow(dead_code)]
mod scenarios;

use std::sync::Arc;

use alloy_primitives::{Address, U256};
use bursar_chain::DevChain;
use bursar_facilitator::{
    Access, AccessPolicy, BucketRule, FacilitatorHooks, MemoryLimiter, RateLimiter, RedisLimiter,
    Refusal, payer_of, protected_router,
};
use bursar_protocol::{FacilitatorRequest, X402Version};
use bursar_store::{KeyLimits, KeyStore, SqliteDatabase};
use rand::Rng;
use scenarios::{Harness, PAYER_BALANCE, PRICE};
use serde_json::Value;

struct Protected {
    h: Harness,
    keys: Arc<SqliteDatabase>,
    url: String,
}

fn chain() -> Arc<dyn DevChain> {
    bursar_chain_revm::EmbeddedChain::memory()
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    url
}

async fn protected(policy: AccessPolicy, limiter: Arc<dyn RateLimiter>) -> Protected {
    let h = scenarios::harness(chain()).await;
    let keys = Arc::new(SqliteDatabase::memory());
    let access = Access {
        policy,
        keys: keys.clone(),
        limiter,
    };
    let url = serve(protected_router(h.facilitator.clone(), access)).await;
    Protected { h, keys, url }
}

impl Protected {
    async fn payment(&self) -> Value {
        let requirements = self.h.requirements();
        let exact = self
            .h
            .authorization(&requirements, &self.h.fixture.payer, |_| {})
            .await;
        self.h.request(X402Version::V2, &requirements, &exact)
    }

    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.h.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let answer = response.json().await.unwrap();
        self.h.check("POST", path, status, &answer).await;
        (status, headers, answer)
    }

    async fn sender_nonce(&self) -> u64 {
        self.h
            .fixture
            .chain
            .transaction_count(self.h.facilitator.sender_address())
            .await
            .unwrap()
    }

    async fn assert_nothing_moved(&self, nonce_before: u64) {
        let payer = self.h.fixture.payer.address();
        assert_eq!(self.h.balance(payer).await, U256::from(PAYER_BALANCE));
        assert_eq!(self.h.balance(self.h.pay_to).await, U256::ZERO);
        assert_eq!(self.sender_nonce().await, nonce_before);
    }
}

fn assert_unauthorized(status: u16, headers: &reqwest::header::HeaderMap, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_keys_get_401_and_nothing_settles() {
    let p = protected(AccessPolicy::default(), Arc::new(MemoryLimiter::new())).await;
    let nonce = p.sender_nonce().await;
    let payment = p.payment().await;
    let revoked = p.keys.create("gone", KeyLimits::default()).await.unwrap();
    assert!(p.keys.revoke(&revoked.record.id).await.unwrap());

    for path in ["/settle", "/verify"] {
        let (status, headers, body) = p.post(path, None, &payment).await;
        assert_unauthorized(status, &headers, &body);
        let (status, headers, body) = p.post(path, Some("bsk_unknown"), &payment).await;
        assert_unauthorized(status, &headers, &body);
        let (status, headers, body) = p.post(path, Some(&revoked.key), &payment).await;
        assert_unauthorized(status, &headers, &body);
    }
    p.assert_nothing_moved(nonce).await;

    // Open endpoints stay open.
    let supported =
        p.h.http
            .get(format!("{}/supported", p.url))
            .send()
            .await
            .unwrap();
    assert_eq!(supported.status().as_u16(), 200);
    let health =
        p.h.http
            .get(format!("{}/health", p.url))
            .send()
            .await
            .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_verifies_and_settles() {
    let p = protected(AccessPolicy::default(), Arc::new(MemoryLimiter::new())).await;
    let key = p.keys.create("acme", KeyLimits::default()).await.unwrap();
    let payment = p.payment().await;
    let (status, _, verified) = p.post("/verify", Some(&key.key), &payment).await;
    assert_eq!((status, &verified["isValid"]), (200, &Value::Bool(true)));
    let (status, _, settled) = p.post("/settle", Some(&key.key), &payment).await;
    assert_eq!(
        (status, &settled["success"]),
        (200, &Value::Bool(true)),
        "{settled}"
    );
    assert_eq!(p.h.balance(p.h.pay_to).await, U256::from(PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_endpoints_admit_anonymous_callers() {
    let policy = AccessPolicy {
        open_verify: true,
        open_settle: true,
        ..AccessPolicy::default()
    };
    let p = protected(policy, Arc::new(MemoryLimiter::new())).await;
    let payment = p.payment().await;
    let (status, _, settled) = p.post("/settle", None, &payment).await;
    assert_eq!(
        (status, &settled["success"]),
        (200, &Value::Bool(true)),
        "{settled}"
    );
    // A wrong key is still refused on an open endpoint.
    let (status, headers, body) = p.post("/verify", Some("bsk_wrong"), &payment).await;
    assert_unauthorized(status, &headers, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_calls_get_429_with_retry_after_and_settle_nothing() {
    let p = protected(AccessPolicy::default(), Arc::new(MemoryLimiter::new())).await;
    let limits = KeyLimits {
        requests_per_second: 1,
        burst: 2,
        daily_settlements_max: None,
    };
    let key = p.keys.create("slow", limits).await.unwrap();
    let payment = p.payment().await;
    // Two verifies spend the burst; the settle that follows is refused before it runs.
    for _ in 0..2 {
        let (status, _, _) = p.post("/verify", Some(&key.key), &payment).await;
        assert_eq!(status, 200);
    }
    let nonce = p.sender_nonce().await;
    let (status, headers, body) = p.post("/settle", Some(&key.key), &payment).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    p.assert_nothing_moved(nonce).await;
    // Another key has its own bucket.
    let other = p.keys.create("other", KeyLimits::default()).await.unwrap();
    let (status, _, _) = p.post("/verify", Some(&other.key), &payment).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_quota_gets_429_and_settles_nothing() {
    let p = protected(AccessPolicy::default(), Arc::new(MemoryLimiter::new())).await;
    let limits = KeyLimits {
        daily_settlements_max: Some(0),
        ..KeyLimits::default()
    };
    let key = p.keys.create("none", limits).await.unwrap();
    let nonce = p.sender_nonce().await;
    let payment = p.payment().await;
    let (status, headers, body) = p.post("/settle", Some(&key.key), &payment).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "quota_exceeded");
    assert!(headers.contains_key("retry-after"));
    p.assert_nothing_moved(nonce).await;
}

fn redis_url() -> String {
    std::env::var("BURSAR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_one_limit_through_redis() {
    let url = redis_url();
    let prefix = format!("bursar-test-{:016x}:", rand::rng().random::<u64>());
    let connect =
        || async {
            RedisLimiter::connect(&url, &prefix).await.unwrap_or_else(|error| {
            panic!(
                "this test needs a real Redis at {url} and none answered ({error}). Start one \
                 (redis-server --port 6379) or set BURSAR_TEST_REDIS_URL"
            )
        })
        };
    let first = Arc::new(connect().await);
    let second = Arc::new(connect().await);
    let chain = chain();
    let h = scenarios::harness(chain).await;
    let keys = Arc::new(SqliteDatabase::memory());
    let app = |limiter: Arc<RedisLimiter>| {
        protected_router(
            h.facilitator.clone(),
            Access {
                policy: AccessPolicy::default(),
                keys: keys.clone(),
                limiter,
            },
        )
    };
    let urls = [serve(app(first)).await, serve(app(second)).await];
    let limits = KeyLimits {
        requests_per_second: 1,
        burst: 3,
        daily_settlements_max: None,
    };
    let key = keys.create("shared", limits).await.unwrap();
    let p = Protected {
        h,
        keys: keys.clone(),
        url: urls[0].clone(),
    };
    let payment = p.payment().await;
    let post = |url: &str| {
        p.h.http
            .post(format!("{url}/verify"))
            .bearer_auth(&key.key)
            .json(&payment)
            .send()
    };
    // The burst of 3 is spent across both routers; the fourth call, on either, is refused.
    for url in [&urls[0], &urls[1], &urls[0]] {
        assert_eq!(post(url).await.unwrap().status().as_u16(), 200);
    }
    let nonce = p.sender_nonce().await;
    let refused =
        p.h.http
            .post(format!("{}/settle", urls[1]))
            .bearer_auth(&key.key)
            .json(&payment)
            .send()
            .await
            .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    p.assert_nothing_moved(nonce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unreachable_redis_fails() {
    // Nothing listens on port 1 of the loopback.
    let limiter = RedisLimiter::connect("redis://127.0.0.1:1", "unused:").await;
    assert!(limiter.is_err(), "connecting fails loudly");
}

struct Unreachable;

#[async_trait::async_trait]
impl RateLimiter for Unreachable {
    async fn take(
        &self,
        _bucket: &str,
        _rule: BucketRule,
    ) -> Result<bursar_facilitator::Admission, bursar_facilitator::limit::LimiterUnavailable> {
        Err(bursar_facilitator::limit::LimiterUnavailable(
            "connection refused".into(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_outage_fails_settle_closed() {
    let p = protected(AccessPolicy::default(), Arc::new(Unreachable)).await;
    let key = p.keys.create("acme", KeyLimits::default()).await.unwrap();
    let nonce = p.sender_nonce().await;
    let payment = p.payment().await;
    let (status, _, body) = p.post("/settle", Some(&key.key), &payment).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "rate_limiter_unavailable");
    p.assert_nothing_moved(nonce).await;
    let (status, _, _) = p.post("/verify", Some(&key.key), &payment).await;
    assert_eq!(status, 200, "verify stays available");
}

struct Allowlist(Vec<Address>);

#[async_trait::async_trait]
impl FacilitatorHooks for Allowlist {
    async fn before_settle(&self, request: &FacilitatorRequest) -> Result<(), Refusal> {
        match payer_of(request) {
            Some(payer) if self.0.contains(&payer) => Ok(()),
            _ => Err(Refusal::new("payer_not_allowed", "not on the allowlist")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_settle_hook_refuses_a_payer_and_no_money_moves() {
    let p = protected(AccessPolicy::default(), Arc::new(MemoryLimiter::new())).await;
    let _ =
        p.h.facilitator
            .clone()
            .with_hooks(Arc::new(Allowlist(vec![Address::ZERO])));
    let key = p.keys.create("acme", KeyLimits::default()).await.unwrap();
    let nonce = p.sender_nonce().await;
    let payment = p.payment().await;
    let (status, _, settled) = p.post("/settle", Some(&key.key), &payment).await;
    assert_eq!(status, 200);
    assert_eq!(settled["success"], false);
    assert_eq!(settled["errorReason"], "payer_not_allowed", "{settled}");
    assert_eq!(
        settled["payer"],
        p.h.fixture.payer.address().to_checksum(None)
    );
    p.assert_nothing_moved(nonce).await;
    // Verification is not hooked by before_settle.
    let (_, _, verified) = p.post("/verify", Some(&key.key), &payment).await;
    assert_eq!(verified["isValid"], true);
}
