//! What the runtime learns about the endpoints it pays: validations of paid responses and the
//! pauses they cause (per policy), and paid requests answered with 402 again (per session).

use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use crate::common::{LIST_ROWS_MAX, RESOURCE_BYTES_MAX, StoreError, truncate};
use crate::db::{Row, Statement, statement};
use crate::now_ms;

/// Most policies [`EndpointStore::endpoint_pauses`] looks at in one query (a session has at
/// most four: the runtime's, the wallet's, the grant's and its own).
pub const POLICIES_PER_QUERY_MAX: usize = 16;

/// The validation record of one endpoint under one policy: the failures in a row that the
/// policy's response validations found, and the pause they caused. A pause applies only to the
/// sessions the policy covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// The policy's source: `default policy`, `file <path>`, `wallet <id>`, `grant <id>`,
    /// `session <id>`.
    pub policy: String,
    pub endpoint: String,
    pub consecutive_failures: u64,
    pub last_failure: Option<String>,
    /// Payments to the endpoint are refused until then (unix ms).
    pub paused_until_ms: Option<i64>,
    /// Where the last validation was made.
    pub wallet_id: Option<String>,
    pub session_id: Option<String>,
    pub updated_at_ms: i64,
}

impl EndpointHealth {
    pub fn is_paused(&self, now_ms: i64) -> bool {
        self.paused_until_ms.is_some_and(|until| now_ms < until)
    }
}

/// Where a validation of a paid response was made.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub wallet_id: &'a str,
    pub session_id: &'a str,
}

/// Paid requests in a row that an endpoint answered with 402 again, within one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejections {
    pub count: u32,
    pub last_at_ms: i64,
}

/// Endpoint health: validations, pauses and rejections.
#[async_trait::async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// Records one validation of a paid response under `policy`: a pass resets the count of
    /// failures; a failure adds one, and the `pause_after`-th in a row pauses the endpoint for
    /// `cooldown_ms` (for the sessions `policy` covers).
    async fn record_validation(
        &self,
        policy: &str,
        endpoint: &str,
        observed: Observed<'_>,
        failure: Option<&str>,
        pause_after: u64,
        cooldown_ms: i64,
    ) -> Result<EndpointHealth, StoreError>;
    async fn endpoint_health(
        &self,
        policy: &str,
        endpoint: &str,
    ) -> Result<Option<EndpointHealth>, StoreError>;
    /// The pauses of `endpoint` in force now under any of `policies` (at most
    /// [`POLICIES_PER_QUERY_MAX`] are looked at).
    async fn endpoint_pauses(
        &self,
        policies: &[String],
        endpoint: &str,
    ) -> Result<Vec<EndpointHealth>, StoreError>;
    /// Endpoints paused now (under one policy, or all).
    async fn paused_endpoints(
        &self,
        policy: Option<&str>,
    ) -> Result<Vec<EndpointHealth>, StoreError>;
    /// Lifts a pause and forgets the failures; returns whether the endpoint was paused.
    async fn lift_pause(&self, policy: &str, endpoint: &str) -> Result<bool, StoreError>;

    /// Counts one more paid request of `session_id` that `endpoint` answered with 402 again, at
    /// `at_ms`; returns the count in a row (atomic: concurrent callers and processes add up).
    async fn note_rejection(
        &self,
        session_id: &str,
        endpoint: &str,
        at_ms: i64,
    ) -> Result<Rejections, StoreError>;
    /// A paid request the endpoint accepted: the count starts again.
    async fn clear_rejections(&self, session_id: &str, endpoint: &str) -> Result<(), StoreError>;
    async fn rejections(
        &self,
        session_id: &str,
        endpoint: &str,
    ) -> Result<Option<Rejections>, StoreError>;
}

const PAUSE_COLUMNS: &str = "policy, endpoint, consecutive_failures, last_failure, \
     paused_until_ms, wallet_id, session_id, updated_at_ms";

fn health_from_row(row: &Row) -> Result<EndpointHealth, StoreError> {
    let failures: i64 = row.get("consecutive_failures")?;
    Ok(EndpointHealth {
        policy: row.get("policy")?,
        endpoint: row.get("endpoint")?,
        consecutive_failures: u64::try_from(failures)
            .map_err(|_| StoreError::Corrupt("negative consecutive_failures".into()))?,
        last_failure: row.get("last_failure")?,
        paused_until_ms: row.get("paused_until_ms")?,
        wallet_id: row.get("wallet_id")?,
        session_id: row.get("session_id")?,
        updated_at_ms: row.get("updated_at_ms")?,
    })
}

fn rejections_from_row(row: &Row) -> Result<Rejections, StoreError> {
    let count: i64 = row.get("rejections")?;
    Ok(Rejections {
        count: u32::try_from(count.max(0)).unwrap_or(u32::MAX),
        last_at_ms: row.get("last_rejection_ms")?,
    })
}

/// Counts one more validation of `endpoint` under `policy` in one statement: a pass resets the
/// failures in a row, a failure adds one and pauses the endpoint once they reach `pause_after`;
/// the row is created or updated and read back atomically.
fn count_validation(
    policy: &str,
    endpoint: &str,
    observed: Observed<'_>,
    failure: Option<&str>,
    pause_after: u64,
    pause_until_ms: i64,
    now: i64,
) -> Statement {
    match failure {
        None => statement(AssertSqlSafe(format!(
            "INSERT INTO endpoint_pauses (policy, endpoint, consecutive_failures, \
             updated_at_ms, wallet_id, session_id) VALUES ($1, $2, 0, $3, $4, $5) \
             ON CONFLICT (policy, endpoint) DO UPDATE SET consecutive_failures = 0, \
             updated_at_ms = $3, wallet_id = $4, session_id = $5 \
             RETURNING {PAUSE_COLUMNS}"
        )))
        .bind(policy)
        .bind(endpoint)
        .bind(now)
        .bind(observed.wallet_id)
        .bind(observed.session_id),
        Some(reason) => statement(AssertSqlSafe(format!(
            "INSERT INTO endpoint_pauses (policy, endpoint, consecutive_failures, \
             last_failure, updated_at_ms, wallet_id, session_id, paused_until_ms) \
             VALUES ($1, $2, 1, $3, $4, $5, $6, CASE WHEN 1 >= $8 THEN $7 END) \
             ON CONFLICT (policy, endpoint) DO UPDATE SET \
             consecutive_failures = endpoint_pauses.consecutive_failures + 1, \
             last_failure = $3, updated_at_ms = $4, wallet_id = $5, session_id = $6, \
             paused_until_ms = CASE \
             WHEN endpoint_pauses.consecutive_failures + 1 >= $8 THEN $7 \
             ELSE endpoint_pauses.paused_until_ms END \
             RETURNING {PAUSE_COLUMNS}"
        )))
        .bind(policy)
        .bind(endpoint)
        .bind(truncate(reason, RESOURCE_BYTES_MAX))
        .bind(now)
        .bind(observed.wallet_id)
        .bind(observed.session_id)
        .bind(pause_until_ms)
        .bind(i64::try_from(pause_after.max(1)).unwrap_or(i64::MAX)),
    }
}

#[async_trait::async_trait]
impl EndpointStore for SqlRuntimeStore {
    async fn record_validation(
        &self,
        policy: &str,
        endpoint: &str,
        observed: Observed<'_>,
        failure: Option<&str>,
        pause_after: u64,
        cooldown_ms: i64,
    ) -> Result<EndpointHealth, StoreError> {
        let db = self.db().await?;
        let now = now_ms();
        let counted = count_validation(
            policy,
            endpoint,
            observed,
            failure,
            pause_after,
            now.saturating_add(cooldown_ms),
            now,
        );
        let row = db.fetch_one(counted).await?;
        health_from_row(&row)
    }

    async fn endpoint_health(
        &self,
        policy: &str,
        endpoint: &str,
    ) -> Result<Option<EndpointHealth>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement(AssertSqlSafe(format!(
                    "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses \
                     WHERE policy = $1 AND endpoint = $2"
                )))
                .bind(policy)
                .bind(endpoint),
            )
            .await?;
        row.as_ref().map(health_from_row).transpose()
    }

    async fn endpoint_pauses(
        &self,
        policies: &[String],
        endpoint: &str,
    ) -> Result<Vec<EndpointHealth>, StoreError> {
        let policies = &policies[..policies.len().min(POLICIES_PER_QUERY_MAX)];
        if policies.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db().await?;
        // Placeholders only: the policies are bound, never written into the statement.
        let placeholders: Vec<String> = (3..3 + policies.len()).map(|n| format!("${n}")).collect();
        let mut query = statement(AssertSqlSafe(format!(
            "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses WHERE endpoint = $1 \
             AND paused_until_ms > $2 AND policy IN ({}) ORDER BY policy",
            placeholders.join(", ")
        )))
        .bind(endpoint)
        .bind(now_ms());
        for policy in policies {
            query = query.bind(policy);
        }
        let rows = db.fetch_all(query).await?;
        rows.iter().map(health_from_row).collect()
    }

    async fn paused_endpoints(
        &self,
        policy: Option<&str>,
    ) -> Result<Vec<EndpointHealth>, StoreError> {
        let db = self.db().await?;
        let rows = db
            .fetch_all(
                statement(AssertSqlSafe(format!(
                    "SELECT {PAUSE_COLUMNS} FROM endpoint_pauses WHERE paused_until_ms > $1 \
                     AND ($2 IS NULL OR policy = $2) ORDER BY updated_at_ms LIMIT {LIST_ROWS_MAX}"
                )))
                .bind(now_ms())
                .bind(policy),
            )
            .await?;
        rows.iter().map(health_from_row).collect()
    }

    async fn lift_pause(&self, policy: &str, endpoint: &str) -> Result<bool, StoreError> {
        let db = self.db().await?;
        let updated = db
            .execute(
                statement(
                    "UPDATE endpoint_pauses SET paused_until_ms = NULL, consecutive_failures = 0, \
                     updated_at_ms = $3 WHERE policy = $1 AND endpoint = $2 \
                     AND paused_until_ms > $3",
                )
                .bind(policy)
                .bind(endpoint)
                .bind(now_ms()),
            )
            .await?;
        Ok(updated == 1)
    }

    async fn note_rejection(
        &self,
        session_id: &str,
        endpoint: &str,
        at_ms: i64,
    ) -> Result<Rejections, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_one(
                statement(
                    "INSERT INTO endpoint_rejections \
                     (session_id, endpoint, rejections, last_rejection_ms) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (session_id, endpoint) DO UPDATE SET \
                     rejections = endpoint_rejections.rejections + 1, \
                     last_rejection_ms = CASE \
                     WHEN endpoint_rejections.last_rejection_ms > excluded.last_rejection_ms \
                     THEN endpoint_rejections.last_rejection_ms \
                     ELSE excluded.last_rejection_ms END \
                     RETURNING rejections, last_rejection_ms",
                )
                .bind(session_id)
                .bind(endpoint)
                .bind(at_ms),
            )
            .await?;
        rejections_from_row(&row)
    }

    async fn clear_rejections(&self, session_id: &str, endpoint: &str) -> Result<(), StoreError> {
        let db = self.db().await?;
        db.execute(
            statement("DELETE FROM endpoint_rejections WHERE session_id = $1 AND endpoint = $2")
                .bind(session_id)
                .bind(endpoint),
        )
        .await?;
        Ok(())
    }

    async fn rejections(
        &self,
        session_id: &str,
        endpoint: &str,
    ) -> Result<Option<Rejections>, StoreError> {
        let db = self.db().await?;
        let row = db
            .fetch_optional(
                statement(
                    "SELECT rejections, last_rejection_ms FROM endpoint_rejections \
                     WHERE session_id = $1 AND endpoint = $2",
                )
                .bind(session_id)
                .bind(endpoint),
            )
            .await?;
        row.as_ref().map(rejections_from_row).transpose()
    }
}
