//! The runtime ledger, budget alerts and reconciliation against the chain.

use axum::Json;
use axum::extract::State;
use bursar_protocol::Amount;
use bursar_store::alerts::AlertRecord;
use bursar_store::runtime::LedgerEntry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Operator, SessionReader};
use super::body::QueryParams;
use super::error::ApiResult;
use super::{LEDGER_PAGE_MAX, hex};
use crate::alerts::AlertBody;
use crate::service::Runtime;

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LedgerPage {
    /// The `next` of the previous page.
    pub after: Option<i64>,
    /// 1 to 1000; default 100.
    pub limit: Option<usize>,
}

/// One ledger entry; which fields are set depends on the kind.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryBody {
    pub seq: i64,
    pub kind: String,
    pub transfer_id: Option<String>,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
    pub wallet_id: Option<String>,
    pub agent: Option<String>,
    pub network: Option<String>,
    pub asset: Option<String>,
    #[schema(value_type = Option<String>)]
    pub amount_atomic: Option<Amount>,
    pub pay_to: Option<String>,
    pub resource: Option<String>,
    pub tx_hash: Option<String>,
    pub reason: Option<String>,
    pub at_ms: i64,
}

impl From<&LedgerEntry> for EntryBody {
    fn from(entry: &LedgerEntry) -> Self {
        EntryBody {
            seq: entry.seq,
            kind: entry.kind.as_str().into(),
            transfer_id: entry.transfer_id.clone(),
            session_id: entry.session_id.clone(),
            grant_id: entry.grant_id.clone(),
            wallet_id: entry.wallet_id.clone(),
            agent: entry.agent.clone(),
            network: entry.network.as_ref().map(ToString::to_string),
            asset: entry.asset.map(hex),
            amount_atomic: entry.amount,
            pay_to: entry.payee.map(hex),
            resource: entry.resource.clone(),
            tx_hash: entry.tx_hash.map(hex),
            reason: entry.reason.clone(),
            at_ms: entry.at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EntryList {
    pub entries: Vec<EntryBody>,
    /// The `after` of the next page; `null` when this one is empty.
    pub next: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertFilter {
    /// A session or wallet id.
    pub subject: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<usize>,
}

/// An alert with its delivery to the webhook.
#[derive(Serialize, ToSchema)]
pub struct AlertListingBody {
    #[serde(flatten)]
    pub alert: AlertBody,
    pub delivery: DeliveryBody,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryBody {
    pub state: String,
    pub attempts: u32,
    /// Set while delivery is pending.
    pub next_attempt_at_ms: Option<i64>,
    pub last_attempt_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at_ms: Option<i64>,
}

impl From<&AlertRecord> for AlertListingBody {
    fn from(alert: &AlertRecord) -> Self {
        let pending = alert.state == bursar_store::DeliveryState::Pending;
        AlertListingBody {
            alert: AlertBody::from(alert),
            delivery: DeliveryBody {
                state: alert.state.as_str().into(),
                attempts: alert.attempts,
                next_attempt_at_ms: pending.then_some(alert.next_attempt_at_ms),
                last_attempt_at_ms: alert.last_attempt_at_ms,
                last_error: alert.last_error.clone(),
                delivered_at_ms: alert.delivered_at_ms,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertListingBody>,
    /// Where alerts are delivered (without its secret), when configured.
    pub webhook: Option<String>,
}

/// What reconciliation looked at and found; `clean` when nothing differs.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileBody {
    pub clean: bool,
    pub entries_checked: usize,
    pub transfers_checked: usize,
    pub sessions_checked: usize,
    /// Authorizations of the runtime's wallets found used on chain, each checked against a
    /// transfer.
    pub chain_uses_checked: usize,
    #[schema(value_type = String)]
    pub posted_atomic: Amount,
    #[schema(value_type = String)]
    pub pending_atomic: Amount,
    #[schema(value_type = String)]
    pub voided_atomic: Amount,
    pub differences: Vec<DifferenceBody>,
}

#[derive(Serialize, ToSchema)]
pub struct DifferenceBody {
    /// The transfer or session concerned.
    pub subject: String,
    pub problem: String,
}

#[utoipa::path(get, path = "/v1/ledger", tag = "ledger", params(LedgerPage),
    responses((status = 200, body = EntryList)), security(("bearer" = [])))]
pub async fn ledger(
    State(runtime): State<Runtime>,
    _: Operator,
    QueryParams(page): QueryParams<LedgerPage>,
) -> ApiResult<Json<EntryList>> {
    let limit = page.limit.unwrap_or(100).clamp(1, LEDGER_PAGE_MAX);
    let entries = runtime
        .ledger_entries(page.after.unwrap_or(0), limit)
        .await?;
    let next = entries.last().map(|entry| entry.seq);
    let entries = entries.iter().map(EntryBody::from).collect();
    Ok(Json(EntryList { entries, next }))
}

#[utoipa::path(get, path = "/v1/alerts", tag = "ledger", params(AlertFilter),
    responses((status = 200, body = AlertList)), security(("bearer" = [])))]
pub async fn list_alerts(
    State(runtime): State<Runtime>,
    _: Operator,
    QueryParams(filter): QueryParams<AlertFilter>,
) -> ApiResult<Json<AlertList>> {
    let limit = filter.limit.unwrap_or(100).clamp(1, LEDGER_PAGE_MAX);
    let alerts = runtime.alerts(filter.subject.as_deref(), limit).await?;
    Ok(Json(AlertList {
        alerts: alerts.iter().map(AlertListingBody::from).collect(),
        webhook: runtime.alert_webhook().map(|webhook| webhook.display_url()),
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{session}/alerts", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = AlertList,
        description = "The session's budget alerts, newest first (its agent may read them)")),
    security(("bearer" = [])))]
pub async fn session_alerts(
    State(runtime): State<Runtime>,
    reader: SessionReader,
) -> ApiResult<Json<AlertList>> {
    let alerts = runtime
        .alerts(Some(reader.session_id.as_str()), LEDGER_PAGE_MAX)
        .await?;
    Ok(Json(AlertList {
        alerts: alerts.iter().map(AlertListingBody::from).collect(),
        // Where alerts go is the operator's business.
        webhook: None,
    }))
}

#[utoipa::path(get, path = "/v1/ledger/reconcile", tag = "ledger",
    responses((status = 200, body = ReconcileBody)), security(("bearer" = [])))]
pub async fn reconcile(
    State(runtime): State<Runtime>,
    _: Operator,
) -> ApiResult<Json<ReconcileBody>> {
    let report = crate::reconcile::reconcile(&runtime).await?;
    Ok(Json(ReconcileBody {
        clean: report.is_clean(),
        entries_checked: report.entries_checked,
        transfers_checked: report.transfers_checked,
        sessions_checked: report.sessions_checked,
        chain_uses_checked: report.chain_uses_checked,
        posted_atomic: report.posted_total,
        pending_atomic: report.pending_total,
        voided_atomic: report.voided_total,
        differences: report
            .differences
            .into_iter()
            .map(|d| DifferenceBody {
                subject: d.subject,
                problem: d.problem,
            })
            .collect(),
    }))
}
