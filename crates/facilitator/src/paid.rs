//! Finding, on chain, the transaction that used an authorization.
//!
//! An EIP-3009 token emits `AuthorizationUsed(authorizer, nonce)` in the transaction that uses an
//! authorization, and `Transfer(from, to, value)` for what it moved. When the facilitator's own
//! transaction did not use an authorization it settled (it reverted because another transaction
//! was first, or a crash lost track of it), these events name the transaction that did, so a
//! payment made on chain is always answered with the transaction that made it.

use alloy_primitives::{Address, B256, U256, b256};
use bursar_chain::{ChainError, EvmChain, LOG_QUERY_BLOCKS_MAX, LogFilter, Receipt};

/// `keccak256("AuthorizationUsed(address,bytes32)")`, the EIP-3009 event.
pub const AUTHORIZATION_USED_TOPIC: B256 =
    b256!("98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5");
/// `keccak256("Transfer(address,address,uint256)")`, the ERC-20 event.
pub const TRANSFER_TOPIC: B256 =
    b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");
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
    receipt.logs.iter().any(|log| {
        log.address == token
            && log.topics.len() == 3
            && log.topics[0] == TRANSFER_TOPIC
            && log.topics[1] == address_topic(payer)
            && log.topics[2] == address_topic(terms.pay_to)
            && log.data.len() == 32
            && U256::from_be_slice(&log.data) == terms.value
    })
}

fn address_topic(address: Address) -> B256 {
    B256::left_padding_from(address.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::keccak256;

    #[test]
    fn topics_are_the_event_signatures() {
        assert_eq!(
            AUTHORIZATION_USED_TOPIC,
            keccak256("AuthorizationUsed(address,bytes32)")
        );
        assert_eq!(
            TRANSFER_TOPIC,
            keccak256("Transfer(address,address,uint256)")
        );
    }
}
