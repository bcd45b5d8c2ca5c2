//! Payment sessions: one agent run under a grant, with a budget in one currency.

use alloy_primitives::Address;
use bursar_protocol::{Amount, Network};
use sqlx::AssertSqlSafe;

use super::SqlRuntimeStore;
use super::grants::{GrantRecord, GrantStore};
use crate::common::{
    Created, LIST_ROWS_MAX, StoreError, check_idempotency_key, is_unique_violation, new_id,
    request_digest,
};
use crate::db::{Row, Tx, statement};
use crate::now_ms;

/// A payment session: one agent run with a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub grant_id: String,
    pub wallet_id: String,
    pub agent: String,
    pub network: Network,
    /// The token's address.
    pub asset: Address,
    /// The currency's name, e.g. `USDC`.
    pub currency: String,
    pub max_spend: Amount,
    /// Held by pending transfers.
    pub reserved: Amount,
    /// Seen settled on chain.
    pub posted: Amount,
    pub client_token: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

impl SessionRecord {
    /// What may still be reserved.
    pub fn remaining(&self) -> Amount {
        self.max_spend
            .checked_sub(self.reserved)
            .and_then(|left| left.checked_sub(self.posted))
            .unwrap_or(Amount::ZERO)
    }
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub grant_id: String,
    pub network: Network,
    pub asset: Address,
    pub currency: String,
    pub max_spend: Amount,
    pub expires_at_ms: i64,
    /// Idempotent creation: the same grant and token return the same session.
    pub client_token: Option<String>,
    /// What the caller asked for, compared on idempotent retries.
    pub request: String,
}

/// The sessions.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session under a live grant. The grant must be live at `now`.
    async fn create_session(
        &self,
        session: NewSession,
    ) -> Result<Created<SessionRecord>, StoreError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Sessions of a grant (all when `None`), newest first.
    async fn sessions(&self, grant_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError>;
    /// Closes a session: no more reservations. Pending transfers still resolve.
    async fn close_session(&self, id: &str) -> Result<bool, StoreError>;
}

const SESSION_COLUMNS: &str = "id, grant_id, wallet_id, agent, network, asset, currency, \
     max_spend, reserved, posted, client_token, created_at_ms, expires_at_ms, closed_at_ms";

fn session_from_row(row: &Row) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: row.get("id")?,
        grant_id: row.get("grant_id")?,
        wallet_id: row.get("wallet_id")?,
        agent: row.get("agent")?,
        network: row.typed("network")?,
        asset: row.typed("asset")?,
        currency: row.get("currency")?,
        max_spend: row.typed("max_spend")?,
        reserved: row.typed("reserved")?,
        posted: row.typed("posted")?,
        client_token: row.get("client_token")?,
        created_at_ms: row.get("created_at_ms")?,
        expires_at_ms: row.get("expires_at_ms")?,
        closed_at_ms: row.get("closed_at_ms")?,
    })
}

/// Locks the session row for the rest of `tx` and reads it with its grant.
pub(super) async fn lock_session(
    tx: &mut Tx,
    id: &str,
) -> Result<Option<(SessionRecord, GrantStanding)>, StoreError> {
    // Locks the row and reads it, with its grant's standing, in one statement (one round trip).
    let Some(row) = tx
        .fetch_optional(
            statement(AssertSqlSafe(format!(
                "UPDATE sessions SET lock_version = lock_version + 1 WHERE id = $1 \
                 RETURNING {SESSION_COLUMNS}, \
                 (SELECT revoked_at_ms FROM grants WHERE grants.id = sessions.grant_id) \
                 AS grant_revoked_at_ms, \
                 (SELECT expires_at_ms FROM grants WHERE grants.id = sessions.grant_id) \
                 AS grant_expires_at_ms"
            )))
            .bind(id),
        )
        .await?
    else {
        return Ok(None);
    };
    let session = session_from_row(&row)?;
    let expires_at_ms: Option<i64> = row.get("grant_expires_at_ms")?;
    let standing = GrantStanding {
        revoked_at_ms: row.get("grant_revoked_at_ms")?,
        expires_at_ms: expires_at_ms.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "session {} names grant {}, which does not exist",
                session.id, session.grant_id
            ))
        })?,
    };
    Ok(Some((session, standing)))
}

/// What a reservation needs of a session's grant: whether it was revoked and when it expires.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrantStanding {
    pub revoked_at_ms: Option<i64>,
    pub expires_at_ms: i64,
}

/// Writes a session's `reserved` and `posted` totals inside `tx`.
pub(super) async fn set_totals(
    tx: &mut Tx,
    id: &str,
    reserved: Amount,
    posted: Amount,
) -> Result<(), StoreError> {
    tx.execute(
        statement("UPDATE sessions SET reserved = $2, posted = $3 WHERE id = $1")
            .bind(id)
            .bind(reserved.to_string())
            .bind(posted.to_string()),
    )
    .await?;
    Ok(())
}

impl SqlRuntimeStore {
    /// The session an earlier create with the same grant and client token made, if any; a
    /// conflict if that create asked for something else.
    async fn session_by_token(
        &self,
        session: &NewSession,
        token: &str,
        digest: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = self
            .db()
            .await?
            .fetch_optional(
                statement(AssertSqlSafe(format!(
                    "SELECT {SESSION_COLUMNS}, request_digest FROM sessions \
                     WHERE grant_id = $1 AND client_token = $2"
                )))
                .bind(&session.grant_id)
                .bind(token),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.get("request_digest")?;
        if stored != digest {
            return Err(StoreError::Conflict(
                "this client token was used to create another session".into(),
            ));
        }
        session_from_row(&row).map(Some)
    }
}

/// Refuses a session under a grant that is not live, or one that would start expired.
fn check_grant_live(grant: &GrantRecord, session: &NewSession, now: i64) -> Result<(), StoreError> {
    if grant.revoked_at_ms.is_some() {
        return Err(StoreError::Invalid(format!(
            "grant {} is revoked",
            grant.id
        )));
    }
    if now >= grant.expires_at_ms {
        return Err(StoreError::Invalid(format!(
            "grant {} has expired",
            grant.id
        )));
    }
    if session.expires_at_ms <= now {
        return Err(StoreError::Invalid(
            "a session must expire in the future".into(),
        ));
    }
    Ok(())
}

#[async_trait::async_trait]
impl SessionStore for SqlRuntimeStore {
    async fn create_session(
        &self,
        session: NewSession,
    ) -> Result<Created<SessionRecord>, StoreError> {
        check_idempotency_key(session.client_token.as_deref())?;
        let db = self.db().await?;
        let digest = request_digest(&[
            &session.grant_id,
            &session.network.to_string(),
            &format!("{:#x}", session.asset),
            &session.currency,
            &session.max_spend.to_string(),
            &session.request,
        ]);
        if let Some(token) = &session.client_token
            && let Some(existing) = self.session_by_token(&session, token, &digest).await?
        {
            return Ok(Created::Existing(existing));
        }
        let Some(grant) = self.grant(&session.grant_id).await? else {
            return Err(StoreError::NotFound(format!("grant {}", session.grant_id)));
        };
        let now = now_ms();
        check_grant_live(&grant, &session, now)?;
        let record = SessionRecord {
            id: new_id("ses_"),
            grant_id: grant.id.clone(),
            wallet_id: grant.wallet_id.clone(),
            agent: grant.agent.clone(),
            network: session.network.clone(),
            asset: session.asset,
            currency: session.currency.clone(),
            max_spend: session.max_spend,
            reserved: Amount::ZERO,
            posted: Amount::ZERO,
            client_token: session.client_token.clone(),
            created_at_ms: now,
            // A session never outlives its grant.
            expires_at_ms: session.expires_at_ms.min(grant.expires_at_ms),
            closed_at_ms: None,
        };
        let inserted = db
            .execute(
                statement(
                    "INSERT INTO sessions (id, grant_id, wallet_id, agent, network, asset, \
                     currency, max_spend, reserved, posted, client_token, request_digest, \
                     created_at_ms, expires_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&record.id)
                .bind(&record.grant_id)
                .bind(&record.wallet_id)
                .bind(&record.agent)
                .bind(&record.network)
                .bind(record.asset)
                .bind(&record.currency)
                .bind(record.max_spend.to_string())
                .bind(record.reserved.to_string())
                .bind(record.posted.to_string())
                .bind(record.client_token.as_deref())
                .bind(&digest)
                .bind(record.created_at_ms)
                .bind(record.expires_at_ms),
            )
            .await;
        match inserted {
            Ok(_) => Ok(Created::New(record)),
            Err(error) if is_unique_violation(&error) => {
                Box::pin(self.create_session(session)).await
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let query = statement(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        )))
        .bind(id);
        self.db()
            .await?
            .fetch_optional_as(query, session_from_row)
            .await
    }

    async fn sessions(&self, grant_id: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let query = statement(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ($1 IS NULL OR grant_id = $1) \
             ORDER BY created_at_ms DESC, id LIMIT {LIST_ROWS_MAX}"
        )))
        .bind(grant_id);
        self.db().await?.fetch_all_as(query, session_from_row).await
    }

    async fn close_session(&self, id: &str) -> Result<bool, StoreError> {
        let db = self.db().await?;
        let updated = db
            .execute(
                statement(
                    "UPDATE sessions SET closed_at_ms = $2 WHERE id = $1 AND closed_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms()),
            )
            .await?;
        Ok(updated == 1)
    }
}
