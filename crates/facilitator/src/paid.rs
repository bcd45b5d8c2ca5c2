//! Finding, on chain, the transaction that used an authorization.
//!
//! An EIP-3009 token emits `AuthorizationUsed(authorizer, nonce)` in the transaction that uses an
//! authorization, and `Transfer(from, to, value)` for what it moved. When the facilitator's own
//! transaction did not use an authorization it settled (it reverted because another transaction
//! was first, or a crash lost track of it), these events name the transaction that did, so a
//! payment made on chain is always answered with the transaction that made it.

use alloy_primitives::{Address, B256, U256};
use bursar_chain::events::{AUTHORIZATION_USED_TOPIC, TransferEvent, address_topic, transfers_in};
use bursar_chain::{ChainError, EvmChain, LOG_QUERY_BLOCKS_MAX, LogFilter, Receipt};

/// How far back from the head the search for the transaction that used an authorization goes.
/// Authorizations live minutes to hours; 50,000 blocks are over a day at Base's 2-second blocks.
pub const AUTHORIZATION_LOOKBACK_BLOCKS: u64 = 50_000;

/// What a payment pays: the transfer the transaction that used its authorization must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub pay_to: Address,
    pub value: U256,
}

/// The transaction that used the authorization `(token, payer, nonce)`, searched newest first
/// over the last [`AUTHORIZATION_LOOKBACK_BLOCKS`] blocks, if it moved exactly `terms` from the
/// payer (`terms` unknown: any use counts). `Ok(None)` when no such transaction is found: the
/// authorization is unused, was used beyond the lookback, or a different authorization with the
/// same nonce was used (the payer signed two).
pub async fn transaction_that_paid(
    chain: &dyn EvmChain,
    token: Address,
    payer: Address,
    nonce: B256,
    terms: Option<Terms>,
) -> Result<Option<B256>, ChainError> {
    let head = chain.latest_block().await?.number;
    let lowest = head.saturating_sub(AUTHORIZATION_LOOKBACK_BLOCKS);
    let mut to_block = head;
    loop {
        let from_block = to_block
            .saturating_sub(LOG_QUERY_BLOCKS_MAX - 1)
            .max(lowest);
        let used = chain
            .logs(&LogFilter {
                address: token,
                topics: vec![
                    Some(AUTHORIZATION_USED_TOPIC),
                    Some(address_topic(payer)),
                    Some(nonce),
                ],
                from_block,
                to_block,
            })
            .await?;
        // A nonce is used once; the newest event is the one (a token that emitted more would be
        // broken, and the newest is what its state reflects).
        if let Some(entry) = used.last() {
            let hash = entry.transaction_hash;
            let Some(terms) = terms else {
                return Ok(Some(hash));
            };
            let Some(receipt) = chain.receipt(hash).await? else {
                return Ok(None);
            };
            return Ok(moved(&receipt, token, payer, terms).then_some(hash));
        }
        if from_block <= lowest {
            return Ok(None);
        }
        to_block = from_block - 1;
    }
}

/// Whether `receipt` shows `token` moving exactly `terms.value` from `payer` to `terms.pay_to`.
pub fn moved(receipt: &Receipt, token: Address, payer: Address, terms: Terms) -> bool {
    transfers_in(receipt, token).contains(&TransferEvent {
        from: payer,
        to: terms.pay_to,
        value: terms.value,
    })
}
