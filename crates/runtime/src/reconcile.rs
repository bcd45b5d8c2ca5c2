//! `ledger reconcile`: the ledger checked against itself and against the chain.
//!
//! For every transfer: its ledger entries (one `reserve`, then exactly one `post` or `void`
//! matching its state, with the same amount), and the chain (a posted transfer's authorization is
//! used on chain, and its recorded transaction shows it; a voided one is unused, or cancelled
//! by the runtime's recorded `cancelAuthorization`; a pending one is neither used, cancelled nor
//! expired). For every session: `posted` and `reserved` equal the sums of its
//! posted and pending transfers, and never exceed `max_spend` together.
//!
//! Then the chain against the ledger: every authorization of the runtime's wallets that the
//! token marked used since the runtime ledger began ([`LEDGER_FIRST_BLOCK_SETTING`]) must be a
//! transfer in the ledger, posted (or still pending), and the transaction that used it must move
//! exactly the transfer's amount to its payee.

use std::collections::HashMap;

use alloy_primitives::{Address, B256};
use bursar_chain::EvmChain;
use bursar_chain::events::{self, TransferEvent};
use bursar_protocol::Amount;
use bursar_store::runtime::{
    EntryKind, LIST_ROWS_MAX, RuntimeStore, TransferRecord, TransferState,
};

use crate::error::RuntimeError;
use crate::service::{ChainEvidence, Runtime};

/// One disagreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The transfer or session concerned.
    pub subject: String,
    pub problem: String,
}

/// What reconciliation looked at and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries_checked: usize,
    pub transfers_checked: usize,
    pub sessions_checked: usize,
    /// Authorizations of the runtime's wallets found used on chain.
    pub chain_uses_checked: usize,
    /// Sum of posted transfers (atomic units of the runtime's currency).
    pub posted_total: Amount,
    pub pending_total: Amount,
    pub voided_total: Amount,
    pub differences: Vec<Difference>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Ledger entries per transfer id: (kind, amount) in ledger order.
type EntriesByTransfer = HashMap<String, Vec<(EntryKind, Option<Amount>)>>;
/// Per session id: the sums of its posted and of its pending transfers.
type SessionSums = HashMap<String, (Amount, Amount)>;

/// Reconciles the whole ledger. Read-only: it never posts or voids.
pub async fn reconcile(runtime: &Runtime) -> Result<Report, RuntimeError> {
    let mut report = Report::default();
    let mut differences = Vec::new();
    let mut entries = entries_by_transfer(runtime.store().as_ref(), &mut report).await?;
    let transfers = runtime.store().transfers(None).await?;
    report.transfers_checked = transfers.len();
    let mut session_sums = SessionSums::new();
    for transfer in &transfers {
        let recorded = entries.remove(&transfer.id).unwrap_or_default();
        check_entries(transfer, &recorded, &mut differences);
        let evidence = runtime.chain_evidence(transfer).await?;
        let sums = session_sums
            .entry(transfer.session_id.clone())
            .or_insert((Amount::ZERO, Amount::ZERO));
        match transfer.state {
            TransferState::Posted => {
                report.posted_total = add(report.posted_total, transfer.amount)?;
                sums.0 = add(sums.0, transfer.amount)?;
            }
            TransferState::Voided => {
                report.voided_total = add(report.voided_total, transfer.amount)?;
            }
            TransferState::Pending => {
                report.pending_total = add(report.pending_total, transfer.amount)?;
                sums.1 = add(sums.1, transfer.amount)?;
            }
        }
        check_evidence(transfer, &evidence, &mut differences);
    }
    for (transfer, recorded) in entries {
        differences.push(difference(
            &transfer,
            format!(
                "{} ledger entries name a transfer that does not exist",
                recorded.len()
            ),
        ));
    }
    report.sessions_checked = check_sessions(runtime, session_sums, &mut differences).await?;
    report.chain_uses_checked = check_chain_uses(runtime, &transfers, &mut differences).await?;
    report.differences = differences;
    Ok(report)
}

/// Every ledger entry that names a transfer, read a page at a time.
async fn entries_by_transfer(
    store: &dyn RuntimeStore,
    report: &mut Report,
) -> Result<EntriesByTransfer, RuntimeError> {
    let mut entries = EntriesByTransfer::new();
    let mut after = 0;
    loop {
        let page = store.entries(after, LIST_ROWS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        report.entries_checked += page.len();
        for entry in page {
            if let Some(transfer) = entry.transfer_id {
                entries
                    .entry(transfer)
                    .or_default()
                    .push((entry.kind, entry.amount));
            }
        }
    }
    Ok(entries)
}

/// One `reserve`, then exactly one `post` or `void` matching the transfer's state, each with
/// the transfer's amount.
fn check_entries(
    transfer: &TransferRecord,
    recorded: &[(EntryKind, Option<Amount>)],
    differences: &mut Vec<Difference>,
) {
    let count = |kind: EntryKind| recorded.iter().filter(|(k, _)| *k == kind).count();
    let (reserve, post, void) = (
        count(EntryKind::Reserve),
        count(EntryKind::Post),
        count(EntryKind::Void),
    );
    let expected = match transfer.state {
        TransferState::Pending => (1, 0, 0),
        TransferState::Posted => (1, 1, 0),
        TransferState::Voided => (1, 0, 1),
    };
    if (reserve, post, void) != expected {
        differences.push(difference(
            &transfer.id,
            format!(
                "is {} but the ledger has {reserve} reserve, {post} post and {void} void entries",
                transfer.state
            ),
        ));
    }
    if recorded
        .iter()
        .any(|(_, amount)| *amount != Some(transfer.amount))
    {
        differences.push(difference(
            &transfer.id,
            format!(
                "ledger entries disagree with the transfer's amount {}",
                transfer.amount
            ),
        ));
    }
}

/// The transfer's state against what the chain shows of its authorization.
fn check_evidence(
    transfer: &TransferRecord,
    evidence: &ChainEvidence,
    differences: &mut Vec<Difference>,
) {
    let problem = match (transfer.state, evidence) {
        (TransferState::Posted, ChainEvidence::Used { tx_hash }) => {
            if transfer.tx_hash.is_some() && tx_hash.is_none() {
                format!(
                    "recorded transaction {} does not show this authorization used",
                    transfer
                        .tx_hash
                        .map(|hash| format!("{hash:#x}"))
                        .unwrap_or_default()
                )
            } else {
                return;
            }
        }
        (TransferState::Posted, ChainEvidence::Cancelled { tx_hash }) => {
            format!("is posted but the authorization was cancelled on chain in {tx_hash:#x}")
        }
        (TransferState::Posted, _) => "is posted but the authorization is unused on chain".into(),
        (TransferState::Voided, ChainEvidence::Used { .. }) => {
            "is voided but the authorization was used on chain: money moved".into()
        }
        (TransferState::Voided, _) => return,
        (TransferState::Pending, ChainEvidence::Used { .. }) => {
            "is pending but settled on chain (the resolver has not posted it yet)".into()
        }
        (TransferState::Pending, ChainEvidence::Expired) => {
            "is pending but expired unused on chain (the resolver has not voided it yet)".into()
        }
        (TransferState::Pending, ChainEvidence::Cancelled { tx_hash }) => {
            format!("is pending but cancelled on chain in {tx_hash} (not voided yet)")
        }
        (TransferState::Pending, ChainEvidence::Unused) => return,
    };
    differences.push(difference(&transfer.id, problem));
}

/// Every session's totals against its transfers' sums and its budget: the newest sessions in
/// one listing, then any other session that has transfers. Returns how many it checked.
async fn check_sessions(
    runtime: &Runtime,
    mut session_sums: SessionSums,
    differences: &mut Vec<Difference>,
) -> Result<usize, RuntimeError> {
    let store = runtime.store();
    let mut sessions = store.sessions(None).await?;
    let listed: std::collections::HashSet<String> =
        sessions.iter().map(|session| session.id.clone()).collect();
    let mut others: Vec<&String> = session_sums
        .keys()
        .filter(|id| !listed.contains(*id))
        .collect();
    others.sort();
    let mut unlisted = Vec::new();
    for id in others {
        match store.session(id).await? {
            Some(session) => unlisted.push(session),
            None => differences.push(difference(
                id,
                "transfers name a session that does not exist".into(),
            )),
        }
    }
    sessions.extend(unlisted);
    for session in &sessions {
        let (posted, reserved) = session_sums
            .remove(&session.id)
            .unwrap_or((Amount::ZERO, Amount::ZERO));
        if session.posted != posted || session.reserved != reserved {
            differences.push(difference(
                &session.id,
                format!(
                    "records posted {} and reserved {}, its transfers add up to {posted} and {reserved}",
                    session.posted, session.reserved
                ),
            ));
        }
        if add(session.posted, session.reserved)? > session.max_spend {
            differences.push(difference(
                &session.id,
                format!(
                    "posted {} + reserved {} exceed the budget {}",
                    session.posted, session.reserved, session.max_spend
                ),
            ));
        }
    }
    Ok(sessions.len())
}

/// The meta setting holding the chain block at which the runtime ledger began (written once, by
/// [`note_first_block`] when the runtime first opens its database). A database from before the
/// setting existed gets the head at its first open since: older history is not scanned.
pub const LEDGER_FIRST_BLOCK_SETTING: &str = "ledger.first_block";

/// Records the chain's head as the block the runtime ledger began at, unless one is recorded.
pub(crate) async fn note_first_block(
    store: &dyn RuntimeStore,
    chain: &dyn EvmChain,
) -> Result<(), RuntimeError> {
    let head = chain.latest_block().await?.number;
    store
        .put_meta_if_absent(LEDGER_FIRST_BLOCK_SETTING, &head.to_string())
        .await?;
    Ok(())
}

/// Compares the authorizations of the runtime's wallets used on chain since the runtime ledger
/// began with the ledger's transfers (see the module doc); returns how many uses it checked.
async fn check_chain_uses(
    runtime: &Runtime,
    transfers: &[TransferRecord],
    differences: &mut Vec<Difference>,
) -> Result<usize, RuntimeError> {
    let store = runtime.store();
    let chain = runtime.chain().as_ref();
    let asset = runtime.currency().asset;
    let first_block = match store.meta(LEDGER_FIRST_BLOCK_SETTING).await? {
        Some(text) => text.parse::<u64>().map_err(|_| {
            RuntimeError::Internal(format!(
                "the {LEDGER_FIRST_BLOCK_SETTING} setting {text:?} is not a block number"
            ))
        })?,
        None => 0,
    };
    let head = chain.latest_block().await?.number;
    let mut by_authorization: HashMap<(Address, B256), &TransferRecord> = HashMap::new();
    for transfer in transfers {
        let (payer, transfer_asset, nonce) = crate::service::authorization_key(transfer);
        if transfer_asset == asset {
            by_authorization.insert((payer, nonce), transfer);
        }
    }
    let mut checked = 0;
    for wallet in runtime.wallets().await? {
        let uses =
            events::authorizations_used(chain, asset, wallet.address, first_block, head).await?;
        for used in uses {
            checked += 1;
            let tx = used.transaction_hash;
            let Some(transfer) = by_authorization.get(&(wallet.address, used.nonce)) else {
                differences.push(difference(
                    &format!("wallet {}", wallet.address),
                    format!(
                        "authorization {} was used on chain in {tx} (block {}) but the ledger \
                         has no transfer for it: money left the wallet unrecorded",
                        used.nonce, used.block_number
                    ),
                ));
                continue;
            };
            if transfer.state == TransferState::Voided {
                continue; // Reported above: voided, yet used on chain.
            }
            let Some(receipt) = chain.receipt(tx).await? else {
                continue; // A reorganised block: the next reconciliation sees the new one.
            };
            let payee = transfer.payee;
            let expected = TransferEvent {
                from: wallet.address,
                to: payee,
                value: transfer.amount.atomic(),
            };
            let moved: Vec<TransferEvent> = events::transfers_in(&receipt, asset)
                .into_iter()
                .filter(|event| event.from == wallet.address)
                .collect();
            if !moved.contains(&expected) {
                let seen: Vec<String> = moved
                    .iter()
                    .map(|event| format!("{} to {}", event.value, event.to))
                    .collect();
                differences.push(difference(
                    &transfer.id,
                    format!(
                        "records {} to {payee}, but {tx} moved {} from the wallet",
                        transfer.amount,
                        if seen.is_empty() {
                            "nothing".to_string()
                        } else {
                            seen.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(checked)
}

fn difference(subject: &str, problem: String) -> Difference {
    report_difference(subject, &problem);
    Difference {
        subject: subject.to_string(),
        problem,
    }
}

fn add(a: Amount, b: Amount) -> Result<Amount, RuntimeError> {
    a.checked_add(b)
        .ok_or_else(|| RuntimeError::Internal("ledger totals overflow".into()))
}

fn report_difference(subject: &str, problem: &str) {
    tracing::warn!(%subject, %problem, "reconciliation difference");
}
