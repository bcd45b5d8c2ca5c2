//! What each token lets the facilitator settle, learned once per token.
//!
//! x402's `exact` scheme names any EIP-3009 token, and tokens differ in what they offer:
//!
//! - EIP-3009 itself defines `transferWithAuthorization(from, to, value, validAfter, validBefore,
//!   nonce, uint8 v, bytes32 r, bytes32 s)`; every EIP-3009 token has it, and the facilitator
//!   settles EOA (65-byte) signatures through it, unbatched and batched.
//! - Circle's USDC v2.2+ (and BursarUSD) add a `bytes signature` overload, which also takes the
//!   ERC-1271 / ERC-6492 signatures of smart wallets. Tokens written to the letter of the EIP
//!   (and older USDC deployments) do not have it.
//! - An ERC-20 without EIP-3009, or an address without code, cannot be settled at all.
//!
//! Verification must not call valid what settlement cannot do, yet at ~10,000 verifications a
//! second it cannot afford to ask the token on every payment. So the first payment that reaches a
//! token whose support is unknown finds out, and the answer is kept for the life of the process
//! (for at most [`TOKENS_REMEMBERED_MAX`] tokens):
//!
//! - when the payment's chain reads fail (`authorizationState` / `balanceOf`), the token's code
//!   and `authorizationState` are read directly: no code, a revert or a malformed answer means
//!   the token has no EIP-3009 ([`TokenSupport::Unsupported`]);
//! - when the payment passed every other check, `transferWithAuthorization` is simulated
//!   (`eth_call` from the facilitator's sender) in both forms with the payment itself:
//!   the `(v, r, s)` form succeeds → [`TokenSupport::Settles`], noting whether the `bytes` form
//!   succeeded too; only the `bytes` form succeeds → [`TokenSupport::Unsupported`] (the token
//!   lacks EIP-3009's own function, through which this facilitator settles EOA signatures);
//!   both revert → nothing is learned, and the payment is refused with the simulation's reason.
//!
//! One probe runs at a time per token; payments arriving meanwhile wait for its answer and probe
//! again themselves only if it was inconclusive.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use alloy_primitives::{Address, B256, Bytes, U256};
use bursar_chain::{CallOutcome, CallRequest, ChainError, EvmChain};
use bursar_contracts::{
    authorization_state_call, decode_authorization_state, split_signature,
    transfer_with_authorization_bytes_call, transfer_with_authorization_call,
};
use bursar_protocol::exact_evm::Authorization;
use tokio::sync::OnceCell;

/// How many tokens' support is remembered. Past it, a new token is probed on each payment that
/// reaches it instead (memory stays bounded against payments naming arbitrary addresses).
pub const TOKENS_REMEMBERED_MAX: usize = 10_000;

/// What a token lets this facilitator settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSupport {
    /// EOA payments settle through EIP-3009's own `transferWithAuthorization(..., v, r, s)`.
    Settles {
        /// Whether the token also has the `bytes signature` overload (USDC v2.2+, BursarUSD),
        /// the only form that takes smart-wallet (ERC-1271 / ERC-6492) signatures.
        bytes_signatures: bool,
    },
    /// Payments in this token cannot be settled here; `why` is the message `/verify` gives
    /// with [`bursar_protocol::Reason::UNSUPPORTED_TOKEN`].
    Unsupported { why: String },
}

type Cell = Arc<OnceCell<TokenSupport>>;

/// The learned support of every token seen, bounded by [`TOKENS_REMEMBERED_MAX`].
#[derive(Default)]
pub(crate) struct TokenSupportCache {
    tokens: RwLock<HashMap<Address, Cell>>,
}

impl TokenSupportCache {
    /// What is known about `token`, if anything.
    pub fn known(&self, token: Address) -> Option<TokenSupport> {
        self.tokens
            .read()
            .expect("lock")
            .get(&token)
            .and_then(|cell| cell.get().cloned())
    }

    /// `token`'s cell, created if there is room; past the bound, a cell of its own that is
    /// forgotten after use.
    fn cell(&self, token: Address) -> Cell {
        if let Some(cell) = self.tokens.read().expect("lock").get(&token) {
            return cell.clone();
        }
        let mut tokens = self.tokens.write().expect("lock");
        if tokens.len() >= TOKENS_REMEMBERED_MAX && !tokens.contains_key(&token) {
            return Cell::default();
        }
        tokens.entry(token).or_default().clone()
    }

    /// Records `support` for `token` unless something was learned first; returns what is known.
    pub fn learn(&self, token: Address, support: TokenSupport) -> TokenSupport {
        let cell = self.cell(token);
        let _ = cell.set(support.clone());
        cell.get().cloned().unwrap_or(support)
    }

    /// `token`'s support, running `probe` if it is unknown (one probe per token at a time). An
    /// inconclusive probe (`Err`) learns nothing: the error goes to its caller alone, and the
    /// next payment probes again.
    pub async fn get_or_probe<E, F, Fut>(&self, token: Address, probe: F) -> Result<TokenSupport, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenSupport, E>>,
    {
        self.cell(token).get_or_try_init(probe).await.cloned()
    }
}

/// Why `token` has no EIP-3009, if it has none: no code, `authorizationState(payer, nonce)`
/// reverts, or it answers something that is not a boolean. `Ok(None)` when it answers.
pub(crate) async fn missing_eip3009(
    chain: &dyn EvmChain,
    token: Address,
    payer: Address,
    nonce: B256,
) -> Result<Option<String>, ChainError> {
    if chain.code(token).await?.is_empty() {
        return Ok(Some(format!(
            "there is no contract at the asset address {token}"
        )));
    }
    let outcome = chain
        .call(CallRequest {
            to: Some(token),
            data: authorization_state_call(payer, nonce),
            ..Default::default()
        })
        .await?;
    Ok(match outcome {
        CallOutcome::Revert(_) => Some(format!(
            "the asset {token} does not implement EIP-3009: authorizationState(address,bytes32) reverts"
        )),
        CallOutcome::Success(output) => decode_authorization_state(&output)
            .err()
            .map(|error| format!("the asset {token} does not implement EIP-3009: {error}")),
    })
}

/// Why a settlement probe learned nothing.
#[derive(Debug)]
pub(crate) enum ProbeFailure {
    /// Both forms of `transferWithAuthorization` reverted; the `(v, r, s)` form's revert data.
    Reverted(Bytes),
    /// The chain could not be asked.
    Chain(ChainError),
}

/// Simulates `transferWithAuthorization` in both forms, as `sender` would send it, with a payment
/// that passed every other check; `signature` must be a 65-byte EOA signature.
pub(crate) async fn probe_settlement(
    chain: &dyn EvmChain,
    sender: Address,
    token: Address,
    authorization: &Authorization,
    signature: &[u8],
) -> Result<TokenSupport, ProbeFailure> {
    debug_assert!(
        split_signature(signature).is_some(),
        "probed with an EOA signature"
    );
    let simulate = |data: Bytes| {
        chain.call(CallRequest {
            from: Some(sender),
            to: Some(token),
            data,
            value: U256::ZERO,
        })
    };
    let (vrs, bytes) = tokio::join!(
        simulate(transfer_with_authorization_call(authorization, signature)),
        simulate(transfer_with_authorization_bytes_call(
            authorization,
            signature
        )),
    );
    let vrs = vrs.map_err(ProbeFailure::Chain)?;
    let bytes = bytes.map_err(ProbeFailure::Chain)?;
    match (vrs, bytes) {
        (CallOutcome::Success(_), bytes) => Ok(TokenSupport::Settles {
            bytes_signatures: matches!(bytes, CallOutcome::Success(_)),
        }),
        (CallOutcome::Revert(_), CallOutcome::Success(_)) => Ok(TokenSupport::Unsupported {
            why: format!(
                "the asset {token} lacks EIP-3009's transferWithAuthorization(address,address,\
                 uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32), through which this \
                 facilitator settles EOA signatures; it has only the bytes signature overload"
            ),
        }),
        (CallOutcome::Revert(data), CallOutcome::Revert(_)) => Err(ProbeFailure::Reverted(data)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SETTLES: TokenSupport = TokenSupport::Settles {
        bytes_signatures: false,
    };

    #[test]
    fn the_first_answer_is_kept() {
        let cache = TokenSupportCache::default();
        let token = Address::repeat_byte(1);
        assert_eq!(cache.known(token), None);
        assert_eq!(cache.learn(token, SETTLES), SETTLES);
        let refused = TokenSupport::Unsupported { why: "no".into() };
        assert_eq!(cache.learn(token, refused), SETTLES);
        assert_eq!(cache.known(token), Some(SETTLES));
        assert_eq!(cache.known(Address::repeat_byte(2)), None);
    }

    #[tokio::test]
    async fn one_probe_per_token_and_an_inconclusive_one_learns_nothing() {
        let cache = Arc::new(TokenSupportCache::default());
        let token = Address::repeat_byte(3);
        let inconclusive: Result<TokenSupport, &str> = cache
            .get_or_probe(token, || async { Err("reverted") })
            .await;
        assert_eq!(inconclusive, Err("reverted"));
        assert_eq!(cache.known(token), None);

        let probes = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (cache, probes) = (cache.clone(), probes.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_probe(token, || async move {
                            probes.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<_, &str>(SETTLES)
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(SETTLES));
        }
        assert_eq!(
            probes.load(Ordering::SeqCst),
            1,
            "one probe for all callers"
        );
        assert_eq!(cache.known(token), Some(SETTLES));
    }

    #[test]
    fn past_the_bound_new_tokens_are_not_remembered() {
        let cache = TokenSupportCache::default();
        for index in 0..TOKENS_REMEMBERED_MAX as u64 {
            let token = Address::left_padding_from(&index.to_be_bytes());
            cache.learn(token, SETTLES);
        }
        let late = Address::repeat_byte(0xee);
        // Answered for this caller, but not kept.
        assert_eq!(cache.learn(late, SETTLES), SETTLES);
        assert_eq!(cache.known(late), None);
        assert_eq!(cache.tokens.read().unwrap().len(), TOKENS_REMEMBERED_MAX);
        // Tokens already known stay known.
        assert_eq!(cache.known(Address::ZERO), Some(SETTLES));
    }
}
