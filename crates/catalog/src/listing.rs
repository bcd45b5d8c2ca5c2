//! A stored listing as `GET /discovery/resources` lists it.

use bursar_protocol::PaymentRequirements;
use bursar_protocol::discovery::{Listing, Reputation, ResourceKind, iso8601_ms};
use bursar_store::catalog::ListingRecord;
use serde_json::{Value, json};

/// Problems per attempt in basis points: (settlement failures + reported problems) × 10,000 /
/// (settled + settlement failures), at most 10,000; 0 with no attempts.
pub fn failure_rate_bps(record: &ListingRecord) -> u64 {
    let count = |value: i64| u64::try_from(value).unwrap_or_default();
    let attempts = count(record.settled_count) + count(record.settle_failures);
    let problems = count(record.settle_failures)
        + count(record.validation_failures)
        + count(record.paid_then_required)
        + count(record.compensations);
    if attempts == 0 {
        return 0;
    }
    (problems.saturating_mul(10_000) / attempts).min(10_000)
}

/// `record` as a listing, with its reputation.
pub fn listing_of(record: &ListingRecord) -> Listing {
    let count = |value: i64| u64::try_from(value).unwrap_or_default();
    let accepts: Vec<PaymentRequirements> = record
        .terms
        .iter()
        .filter_map(|terms| serde_json::from_str(&terms.accepted).ok())
        .collect();
    let extension: Value = serde_json::from_str(&record.extension).unwrap_or(Value::Null);
    let tags: Vec<String> = serde_json::from_str(&record.tags).unwrap_or_default();
    let kind = ResourceKind::parse(&record.kind);
    Listing {
        resource: record.resource.clone(),
        kind: record.kind.clone(),
        x402_version: u8::try_from(record.x402_version).unwrap_or(2),
        accepts,
        last_updated: iso8601_ms(record.last_seen_ms),
        description: record.description.clone(),
        mime_type: record.mime_type.clone(),
        service_name: record.service_name.clone(),
        tags,
        extensions: (!extension.is_null()).then(|| json!({ "bazaar": extension })),
        tool_name: (kind == Some(ResourceKind::Mcp)).then(|| record.operation.clone()),
        method: (kind == Some(ResourceKind::Http)).then(|| record.operation.clone()),
        route_template: record.route_template.clone(),
        reputation: Some(Reputation {
            settled: record.settled_count > 0,
            settled_count: count(record.settled_count),
            distinct_payers: count(record.distinct_payers),
            verified_count: count(record.verified_count),
            settlement_failures: count(record.settle_failures),
            validation_failures: count(record.validation_failures),
            payment_required_after_payment: count(record.paid_then_required),
            compensations: count(record.compensations),
            price_changes: count(record.price_changes),
            payee_changes: count(record.payee_changes),
            failure_rate_bps: failure_rate_bps(record),
            first_seen: iso8601_ms(record.first_seen_ms),
            last_seen: iso8601_ms(record.last_seen_ms),
            last_settled: record.last_settled_ms.map(iso8601_ms),
        }),
    }
}
