//! The paid-response cache: paid GET responses kept in this process for the policies that opt
//! in with `[cache]`.

use bursar_buyer::RequestSpec;
use bursar_governance::Policy;
use bursar_store::runtime::SessionRecord;

use super::{PAID_CACHE_ENTRIES_MAX, Runtime, now_ms};

/// Where a cached response is kept: the scope (`wallet <id>` or `session <id>`) and the URL.
pub(super) type CacheKey = (String, String);

impl Runtime {
    /// The cache key and lifetime when a policy opts into the paid-response cache for this GET.
    pub(super) fn cache_rule(
        &self,
        session: &SessionRecord,
        policies: &[Policy],
        request: &RequestSpec,
    ) -> Option<(CacheKey, i64)> {
        // A GET by its URL; a tool call (MCP) by its tool and arguments: tool calls are POSTs
        // underneath, but a call with the same arguments asks for the same answer.
        let resource = match &request.tool {
            Some(call) => format!(
                "{} {}",
                request.url,
                serde_json::Value::Object(call.arguments.clone())
            ),
            None if request.method == http::Method::GET => request.url.to_string(),
            None => return None,
        };
        // The most restrictive wins: the shortest lifetime, and session scope over wallet.
        let rules: Vec<_> = policies.iter().filter_map(|p| p.cache).collect();
        let ttl_seconds = rules.iter().map(|r| r.ttl_seconds).min()?;
        let wallet_wide = rules
            .iter()
            .all(|r| r.scope == bursar_governance::CacheScope::Wallet);
        let scope = if wallet_wide {
            format!("wallet {}", session.wallet_id)
        } else {
            format!("session {}", session.id)
        };
        let ttl_ms = i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        Some(((scope, resource), ttl_ms))
    }

    pub(super) fn cached(&self, key: &CacheKey) -> Option<CachedResponse> {
        let mut cache = self.inner.paid_cache.lock().expect("paid cache lock");
        match cache.get(key) {
            Some(hit) if now_ms() < hit.expires_at_ms => Some(hit.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn remember(
        &self,
        key: CacheKey,
        ttl_ms: i64,
        response: &bursar_buyer::PaidResponse,
        transfer_id: &str,
    ) {
        let now = now_ms();
        let mut cache = self.inner.paid_cache.lock().expect("paid cache lock");
        if cache.len() >= PAID_CACHE_ENTRIES_MAX {
            cache.retain(|_, entry| now < entry.expires_at_ms);
        }
        if cache.len() >= PAID_CACHE_ENTRIES_MAX
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, entry)| entry.expires_at_ms)
                .map(|(key, _)| key.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(
            key,
            CachedResponse {
                expires_at_ms: now.saturating_add(ttl_ms),
                status: response.status.as_u16(),
                headers: response
                    .headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((name.to_string(), value.to_str().ok()?.to_string()))
                    })
                    .collect(),
                body: response.body.clone(),
                transfer_id: transfer_id.to_string(),
            },
        );
    }
}

/// A paid response kept for the paid-response cache.
#[derive(Debug, Clone)]
pub(super) struct CachedResponse {
    expires_at_ms: i64,
    status: u16,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
    pub(super) transfer_id: String,
}

impl CachedResponse {
    /// The response as the agent gets it, naming the transfer that paid for it.
    pub(super) fn fetched(self) -> super::Fetched {
        super::Fetched {
            status: self.status,
            headers: self.headers,
            body: self.body,
            payment: None,
            validation: None,
            cached_from: Some(self.transfer_id),
        }
    }
}
