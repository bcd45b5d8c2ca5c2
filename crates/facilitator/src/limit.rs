//! Token-bucket rate limiting: in memory (one process) or in Redis (shared by every facilitator
//! using the same Redis and key prefix).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets a [`MemoryLimiter`] keeps; beyond it, full (idle) buckets are dropped first.
pub const MEMORY_BUCKETS_MAX: usize = 100_000;
/// How long a Redis call may take before the limiter counts Redis as unavailable.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// One bucket's rule: `rate_per_second` tokens added per second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRule {
    pub rate_per_second: u32,
    pub burst: u32,
}

/// What taking a token gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// No token: try again after this long.
    Limited {
        retry_after: Duration,
    },
}

/// The limiter could not decide (Redis unreachable or failing).
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterUnavailable(pub String);

/// Takes one token from a named bucket.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn take(&self, bucket: &str, rule: BucketRule) -> Result<Admission, LimiterUnavailable>;
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets in this process's memory.
#[derive(Default)]
pub struct MemoryLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl MemoryLimiter {
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }
}

fn refill(tokens: f64, elapsed: Duration, rule: BucketRule) -> f64 {
    (tokens + elapsed.as_secs_f64() * f64::from(rule.rate_per_second)).min(f64::from(rule.burst))
}

#[async_trait::async_trait]
impl RateLimiter for MemoryLimiter {
    async fn take(&self, bucket: &str, rule: BucketRule) -> Result<Admission, LimiterUnavailable> {
        assert!(
            rule.rate_per_second > 0 && rule.burst > 0,
            "limits are at least 1"
        );
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("lock");
        if buckets.len() >= MEMORY_BUCKETS_MAX && !buckets.contains_key(bucket) {
            buckets.retain(|_, kept| now.duration_since(kept.at) < Duration::from_secs(60));
        }
        let entry = buckets.entry(bucket.to_string()).or_insert(Bucket {
            tokens: f64::from(rule.burst),
            at: now,
        });
        entry.tokens = refill(entry.tokens, now.duration_since(entry.at), rule);
        entry.at = now;
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            return Ok(Admission::Allowed);
        }
        let missing = 1.0 - entry.tokens;
        Ok(Admission::Limited {
            retry_after: Duration::from_secs_f64(missing / f64::from(rule.rate_per_second)),
        })
    }
}

/// The bucket, atomically in Redis, on Redis's own clock. Returns {allowed, wait_ms}.
const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait_ms}
";

/// Buckets in Redis, shared by every facilitator with the same Redis and prefix.
pub struct RedisLimiter {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl RedisLimiter {
    /// Connects to `url` (`redis://127.0.0.1:6379`); bucket keys are `<prefix><bucket>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLimiter, LimiterUnavailable> {
        let unavailable = |error: redis::RedisError| LimiterUnavailable(error.to_string());
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::aio::ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| LimiterUnavailable(format!("no answer from redis within {REDIS_TIMEOUT:?}")))?
        .map_err(unavailable)?;
        Ok(RedisLimiter {
            connection,
            prefix: prefix.to_string(),
            script: redis::Script::new(TAKE_SCRIPT),
        })
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisLimiter {
    async fn take(&self, bucket: &str, rule: BucketRule) -> Result<Admission, LimiterUnavailable> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(format!("{}{bucket}", self.prefix));
        invocation.arg(rule.rate_per_second).arg(rule.burst);
        let (allowed, wait_ms): (i64, i64) =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| LimiterUnavailable("redis did not answer in time".into()))?
                .map_err(|error| LimiterUnavailable(error.to_string()))?;
        if allowed == 1 {
            Ok(Admission::Allowed)
        } else {
            Ok(Admission::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait_ms.max(1)).unwrap_or(1)),
            })
        }
    }
}
