//! The operator's reads and plain changes the API offers: grants, session transfers, the ledger,
//! alerts, policies and pauses. Each is one store call behind the runtime's own error.

use bursar_store::KeyDigest;
use bursar_store::alerts::AlertRecord;
use bursar_store::runtime::{EndpointHealth, GrantRecord, LedgerEntry, TransferRecord};

use crate::error::RuntimeError;
use crate::service::Runtime;

/// Where a policy attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyScope {
    Wallet,
    Grant,
    Session,
}

impl PolicyScope {
    /// The name the store keeps policies under.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyScope::Wallet => "wallet",
            PolicyScope::Grant => "grant",
            PolicyScope::Session => "session",
        }
    }
}

impl Runtime {
    /// Whether `credential` is a live operator key.
    pub async fn is_operator_key(&self, credential: &str) -> Result<bool, RuntimeError> {
        let key = self
            .store()
            .operator_key(&KeyDigest::of(credential))
            .await?;
        Ok(key.is_some())
    }

    /// A grant by id.
    pub async fn grant(&self, id: &str) -> Result<GrantRecord, RuntimeError> {
        self.store()
            .grant(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("grant {id}")))
    }

    /// Every grant, or one wallet's.
    pub async fn grants(&self, wallet_id: Option<&str>) -> Result<Vec<GrantRecord>, RuntimeError> {
        Ok(self.store().grants(wallet_id).await?)
    }

    /// Closes a session; `false` when it was closed already.
    pub async fn close_session(&self, id: &str) -> Result<bool, RuntimeError> {
        self.session(id).await?;
        Ok(self.store().close_session(id).await?)
    }

    /// A session's transfers in creation order, `limit` at most, after the transfer `after`
    /// (which must be one of the session's).
    pub async fn session_transfers(
        &self,
        session_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TransferRecord>, RuntimeError> {
        self.session(session_id).await?;
        let after = match after {
            Some(id) => {
                let transfer = self
                    .store()
                    .transfer(id)
                    .await?
                    .filter(|transfer| transfer.session_id == session_id)
                    .ok_or_else(|| {
                        RuntimeError::Invalid(format!(
                            "after: {id} is not a transfer of session {session_id}"
                        ))
                    })?;
                Some((transfer.created_at_ms, transfer.id))
            }
            None => None,
        };
        let after = after.as_ref().map(|(ms, id)| (*ms, id.as_str()));
        Ok(self
            .store()
            .transfers_page(Some(session_id), after, limit)
            .await?)
    }

    /// Ledger entries after sequence number `after`, `limit` at most.
    pub async fn ledger_entries(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, RuntimeError> {
        Ok(self.store().entries(after, limit).await?)
    }

    /// Budget alerts, newest first, of one session or wallet or of all.
    pub async fn alerts(
        &self,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, RuntimeError> {
        Ok(self.store().alert_store().alerts(subject, limit).await?)
    }

    /// The policy scope and id of an existing wallet (id, name or address), grant or session.
    pub async fn policy_subject(
        &self,
        scope: PolicyScope,
        subject: &str,
    ) -> Result<String, RuntimeError> {
        Ok(match scope {
            PolicyScope::Wallet => self.wallet(subject).await?.id,
            PolicyScope::Grant => self.grant(subject).await?.id,
            PolicyScope::Session => self.session(subject).await?.id,
        })
    }

    /// The policy document attached to a subject, if any.
    pub async fn policy(
        &self,
        scope: PolicyScope,
        subject_id: &str,
    ) -> Result<Option<String>, RuntimeError> {
        Ok(self.store().policy(scope.as_str(), subject_id).await?)
    }

    /// Attaches a policy document to a subject, after checking it parses.
    pub async fn put_policy(
        &self,
        scope: PolicyScope,
        subject_id: &str,
        document: &str,
    ) -> Result<(), RuntimeError> {
        self.check_policy(document)?;
        Ok(self
            .store()
            .put_policy(scope.as_str(), subject_id, document)
            .await?)
    }

    /// Removes a subject's policy; `false` when it had none.
    pub async fn delete_policy(
        &self,
        scope: PolicyScope,
        subject_id: &str,
    ) -> Result<bool, RuntimeError> {
        Ok(self
            .store()
            .delete_policy(scope.as_str(), subject_id)
            .await?)
    }

    /// Endpoints paused by validation failures, of one policy or of all.
    pub async fn paused_endpoints(
        &self,
        policy: Option<&str>,
    ) -> Result<Vec<EndpointHealth>, RuntimeError> {
        Ok(self.store().paused_endpoints(policy).await?)
    }

    /// Lifts a pause; `false` when the endpoint was not paused by that policy.
    pub async fn lift_pause(&self, policy: &str, endpoint: &str) -> Result<bool, RuntimeError> {
        Ok(self.store().lift_pause(policy, endpoint).await?)
    }
}
