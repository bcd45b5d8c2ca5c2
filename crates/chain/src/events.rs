//! The events an EIP-3009 token emits, read from receipts and logs.
//!
//! A token emits `AuthorizationUsed(authorizer, nonce)` in the transaction that uses an
//! authorization, `AuthorizationCanceled(authorizer, nonce)` in one that cancels it, and the
//! ERC-20 `Transfer(from, to, value)` for every movement. These are how a ledger is checked
//! against the chain: which authorizations of an account were used, and what each moved.

use alloy_primitives::{Address, B256, U256, b256};

use crate::api::{ChainError, EvmChain, LOG_QUERY_BLOCKS_MAX, LogFilter, Receipt};

/// `keccak256("AuthorizationUsed(address,bytes32)")`, the EIP-3009 event.
pub const AUTHORIZATION_USED_TOPIC: B256 =
    b256!("98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5");
/// `keccak256("Transfer(address,address,uint256)")`, the ERC-20 event.
pub const TRANSFER_TOPIC: B256 =
    b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

/// An indexed `address` event argument as its 32-byte topic.
pub fn address_topic(address: Address) -> B256 {
    B256::left_padding_from(address.as_slice())
}

/// One ERC-20 `Transfer` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferEvent {
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

/// The `Transfer` events `token` emitted in `receipt`, in order. Logs of other contracts, and
/// malformed ones (not three topics, not one 32-byte word of data), are not transfers.
pub fn transfers_in(receipt: &Receipt, token: Address) -> Vec<TransferEvent> {
    receipt
        .logs
        .iter()
        .filter(|log| {
            log.address == token
                && log.topics.len() == 3
                && log.topics[0] == TRANSFER_TOPIC
                && log.data.len() == 32
        })
        .map(|log| TransferEvent {
            from: Address::from_word(log.topics[1]),
            to: Address::from_word(log.topics[2]),
            value: U256::from_be_slice(&log.data),
        })
        .collect()
}

/// An authorization used on chain: its nonce and the transaction that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizationUse {
    pub nonce: B256,
    pub transaction_hash: B256,
    pub block_number: u64,
}

/// Every authorization of `authorizer` that `token` marked used in blocks `from_block..=to_block`,
/// oldest first, read in windows of [`LOG_QUERY_BLOCKS_MAX`] blocks.
pub async fn authorizations_used(
    chain: &dyn EvmChain,
    token: Address,
    authorizer: Address,
    from_block: u64,
    to_block: u64,
) -> Result<Vec<AuthorizationUse>, ChainError> {
    let mut used = Vec::new();
    let mut window_start = from_block;
    while window_start <= to_block {
        let window_end = window_start
            .saturating_add(LOG_QUERY_BLOCKS_MAX - 1)
            .min(to_block);
        let logs = chain
            .logs(&LogFilter {
                address: token,
                topics: vec![
                    Some(AUTHORIZATION_USED_TOPIC),
                    Some(address_topic(authorizer)),
                ],
                from_block: window_start,
                to_block: window_end,
            })
            .await?;
        used.extend(logs.into_iter().filter_map(|entry| {
            let nonce = *entry.log.topics.get(2)?;
            Some(AuthorizationUse {
                nonce,
                transaction_hash: entry.transaction_hash,
                block_number: entry.block_number,
            })
        }));
        let Some(next) = window_end.checked_add(1) else {
            break;
        };
        window_start = next;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Log;
    use alloy_primitives::{address, keccak256};

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

    #[test]
    fn transfers_are_read_from_the_token_logs_only() {
        let token = address!("00000000000000000000000000000000000000aa");
        let (from, to) = (
            address!("1111111111111111111111111111111111111111"),
            address!("2222222222222222222222222222222222222222"),
        );
        let transfer = |address: Address, data: Vec<u8>| Log {
            address,
            topics: vec![TRANSFER_TOPIC, address_topic(from), address_topic(to)],
            data: data.into(),
        };
        let receipt = Receipt {
            transaction_hash: B256::ZERO,
            success: true,
            block_number: 1,
            gas_used: 0,
            effective_gas_price: 0,
            contract_address: None,
            logs: vec![
                transfer(token, U256::from(7).to_be_bytes_vec()),
                transfer(Address::ZERO, U256::from(8).to_be_bytes_vec()),
                transfer(token, vec![1, 2, 3]),
            ],
        };
        assert_eq!(
            transfers_in(&receipt, token),
            vec![TransferEvent {
                from,
                to,
                value: U256::from(7)
            }]
        );
    }
}
