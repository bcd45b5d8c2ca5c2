//! Calldata builders and return-data decoders for the calls the chain and facilitator layers make.

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_sol_types::{ContractError, Eip712Domain, SolCall, SolInterface, SolStruct};
use bursar_protocol::exact_evm::Authorization;
use bursar_protocol::{Amount, Reason};

use crate::bindings::{
    BursarUSD, CancelAuthorization, CancelAuthorizationBytesCall, CancelAuthorizationVrsCall,
    ReceiveWithAuthorization, ReceiveWithAuthorizationBytesCall, ReceiveWithAuthorizationVrsCall,
    TransferWithAuthorizationBytesCall, TransferWithAuthorizationVrsCall,
};

/// BursarUSD has 6 decimals, like USDC.
pub const TOKEN_DECIMALS: u8 = 6;

/// The EIP-712 domain version of every BursarUSD (and of Circle's USDC).
pub const TOKEN_EIP712_VERSION: &str = "2";

/// A BursarUSD's EIP-712 domain: `{name, version: "2", chainId, verifyingContract: token}`.
pub fn token_domain(name: &str, chain_id: u64, token: Address) -> Eip712Domain {
    bursar_protocol::exact_evm::token_domain(name, TOKEN_EIP712_VERSION, chain_id, token)
}

/// Return data that does not decode as the function's declared outputs (decoding is strict:
/// short data, dirty padding and booleans other than 0 or 1 are refused).
#[derive(Debug, thiserror::Error)]
#[error("{function} returned malformed data: {source}")]
pub struct DecodeError {
    /// The Solidity signature of the function whose output was malformed.
    pub function: &'static str,
    #[source]
    pub source: alloy_sol_types::Error,
}

fn decode_returns<C: SolCall>(output: &[u8]) -> Result<C::Return, DecodeError> {
    C::abi_decode_returns_validate(output).map_err(|source| DecodeError {
        function: C::SIGNATURE,
        source,
    })
}

/// Makes a 65-byte `r || s || v` signature acceptable to `ecrecover`-based tokens.
///
/// [`bursar_protocol::exact_evm::recover_signer`] accepts a recovery byte of 0 or 1 as well as 27
/// or 28, but the `ecrecover` precompile, and hence OpenZeppelin's ECDSA (BursarUSD), Circle's
/// USDC and tokens that follow EIP-3009 to the letter, accept only 27 and 28. This rewrites 0/1
/// to 27/28 so a signature that verified off chain also settles. Any other signature (other
/// lengths, e.g. ERC-1271 or ERC-6492 blobs, or other v values) is returned unchanged.
pub fn ecrecover_compatible_signature(signature: &[u8]) -> Bytes {
    let mut bytes = signature.to_vec();
    if let [.., v @ (0 | 1)] = bytes.as_mut_slice()
        && signature.len() == 65
    {
        *v += 27;
    }
    Bytes::from(bytes)
}

/// An EOA signature split for EIP-3009's own functions, which take it as `(uint8 v, bytes32 r,
/// bytes32 s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSignature {
    /// 27 or 28 for any signature that can verify (0 and 1 are rewritten to them).
    pub v: u8,
    pub r: B256,
    pub s: B256,
}

/// Splits a 65-byte `r || s || v` signature for the `(v, r, s)` functions, with `v` made
/// `ecrecover`-ready as [`ecrecover_compatible_signature`] does (0/1 → 27/28, other values
/// unchanged, so the token refuses them). `None` for any other length: such a signature (ERC-1271
/// or ERC-6492 data of a smart wallet) can only go to the `bytes signature` overloads.
pub fn split_signature(signature: &[u8]) -> Option<SplitSignature> {
    let bytes: &[u8; 65] = signature.try_into().ok()?;
    let v = match bytes[64] {
        recovery @ (0 | 1) => recovery + 27,
        other => other,
    };
    Some(SplitSignature {
        v,
        r: B256::from_slice(&bytes[..32]),
        s: B256::from_slice(&bytes[32..64]),
    })
}

/// Calldata for `transferWithAuthorization`, the call that settles an x402 `exact` EVM payment.
/// Anyone may send it.
///
/// A 65-byte EOA signature uses EIP-3009's own overload, `transferWithAuthorization(from, to,
/// value, validAfter, validBefore, nonce, uint8 v, bytes32 r, bytes32 s)`, which every EIP-3009
/// token has (see [`split_signature`]). Any other signature (a smart wallet's ERC-1271 or ERC-6492
/// data) uses the `bytes signature` overload ([`transfer_with_authorization_bytes_call`]), which
/// only some tokens (Circle's USDC v2.2+, BursarUSD) have.
pub fn transfer_with_authorization_call(authorization: &Authorization, signature: &[u8]) -> Bytes {
    let Some(split) = split_signature(signature) else {
        return transfer_with_authorization_bytes_call(authorization, signature);
    };
    TransferWithAuthorizationVrsCall {
        from: authorization.from,
        to: authorization.to,
        value: authorization.value.atomic(),
        validAfter: authorization.valid_after,
        validBefore: authorization.valid_before,
        nonce: authorization.nonce,
        v: split.v,
        r: split.r,
        s: split.s,
    }
    .abi_encode()
    .into()
}

/// Calldata for the `transferWithAuthorization(..., bytes signature)` overload, whatever the
/// signature's length. Tokens that follow EIP-3009 to the letter do not have it (their answer is
/// a revert); settle with [`transfer_with_authorization_call`], which uses it only when it must.
///
/// The signature passes through [`ecrecover_compatible_signature`].
pub fn transfer_with_authorization_bytes_call(
    authorization: &Authorization,
    signature: &[u8],
) -> Bytes {
    TransferWithAuthorizationBytesCall {
        from: authorization.from,
        to: authorization.to,
        value: authorization.value.atomic(),
        validAfter: authorization.valid_after,
        validBefore: authorization.valid_before,
        nonce: authorization.nonce,
        signature: ecrecover_compatible_signature(signature),
    }
    .abi_encode()
    .into()
}

/// Calldata for `receiveWithAuthorization`. Only `authorization.to` may send it, and the buyer
/// must have signed `ReceiveWithAuthorization` typed data (see
/// [`receive_authorization_signing_hash`]), not `TransferWithAuthorization`.
///
/// Like [`transfer_with_authorization_call`]: the `(v, r, s)` overload for a 65-byte signature,
/// the `bytes signature` overload (signature through [`ecrecover_compatible_signature`]) for any
/// other.
pub fn receive_with_authorization_call(authorization: &Authorization, signature: &[u8]) -> Bytes {
    let Some(split) = split_signature(signature) else {
        return ReceiveWithAuthorizationBytesCall {
            from: authorization.from,
            to: authorization.to,
            value: authorization.value.atomic(),
            validAfter: authorization.valid_after,
            validBefore: authorization.valid_before,
            nonce: authorization.nonce,
            signature: ecrecover_compatible_signature(signature),
        }
        .abi_encode()
        .into();
    };
    ReceiveWithAuthorizationVrsCall {
        from: authorization.from,
        to: authorization.to,
        value: authorization.value.atomic(),
        validAfter: authorization.valid_after,
        validBefore: authorization.valid_before,
        nonce: authorization.nonce,
        v: split.v,
        r: split.r,
        s: split.s,
    }
    .abi_encode()
    .into()
}

/// Calldata for `cancelAuthorization`, which burns an unused nonce. The authorizer signs
/// `CancelAuthorization` typed data (see [`cancel_authorization_signing_hash`]).
///
/// Like [`transfer_with_authorization_call`]: `cancelAuthorization(authorizer, nonce, uint8 v,
/// bytes32 r, bytes32 s)` for a 65-byte signature, `cancelAuthorization(authorizer, nonce, bytes
/// signature)` (signature through [`ecrecover_compatible_signature`]) for any other.
pub fn cancel_authorization_call(authorizer: Address, nonce: B256, signature: &[u8]) -> Bytes {
    let Some(split) = split_signature(signature) else {
        return CancelAuthorizationBytesCall {
            authorizer,
            nonce,
            signature: ecrecover_compatible_signature(signature),
        }
        .abi_encode()
        .into();
    };
    CancelAuthorizationVrsCall {
        authorizer,
        nonce,
        v: split.v,
        r: split.r,
        s: split.s,
    }
    .abi_encode()
    .into()
}

/// Calldata for `balanceOf(owner)`; decode the answer with [`decode_balance_of`].
pub fn balance_of_call(owner: Address) -> Bytes {
    BursarUSD::balanceOfCall { account: owner }
        .abi_encode()
        .into()
}

/// Calldata for `authorizationState(authorizer, nonce)`; decode the answer with
/// [`decode_authorization_state`].
pub fn authorization_state_call(authorizer: Address, nonce: B256) -> Bytes {
    BursarUSD::authorizationStateCall { authorizer, nonce }
        .abi_encode()
        .into()
}

/// Calldata for `mint(to, amount)`. Only the token's owner may send it.
pub fn mint_call(to: Address, amount: Amount) -> Bytes {
    BursarUSD::mintCall {
        to,
        amount: amount.atomic(),
    }
    .abi_encode()
    .into()
}

/// Calldata for ERC-5267 `eip712Domain()`; decode the answer with [`decode_eip712_domain`].
pub fn eip712_domain_call() -> Bytes {
    BursarUSD::eip712DomainCall {}.abi_encode().into()
}

/// Decodes the output of `balanceOf`.
pub fn decode_balance_of(output: &[u8]) -> Result<Amount, DecodeError> {
    decode_returns::<BursarUSD::balanceOfCall>(output).map(Amount::from_atomic)
}

/// Decodes the output of `authorizationState`: `true` once the nonce is used or canceled.
pub fn decode_authorization_state(output: &[u8]) -> Result<bool, DecodeError> {
    decode_returns::<BursarUSD::authorizationStateCall>(output)
}

/// The parts of a token's ERC-5267 domain that an `exact` EVM payment depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDomain {
    pub name: String,
    pub version: String,
    pub chain_id: U256,
    pub verifying_contract: Address,
}

/// Decodes the output of `eip712Domain()` (works for any ERC-5267 token, including USDC v2.2+).
pub fn decode_eip712_domain(output: &[u8]) -> Result<TokenDomain, DecodeError> {
    let domain = decode_returns::<BursarUSD::eip712DomainCall>(output)?;
    Ok(TokenDomain {
        name: domain.name,
        version: domain.version,
        chain_id: domain.chainId,
        verifying_contract: domain.verifyingContract,
    })
}

/// A decoded revert from a BursarUSD call: one of its custom errors, an `Error(string)` or a
/// `Panic(uint256)`.
pub type TokenRevert = ContractError<BursarUSD::BursarUSDErrors>;

/// Decodes revert data from a BursarUSD call. `None` when the data is empty or not a known error.
pub fn decode_revert(data: &[u8]) -> Option<TokenRevert> {
    TokenRevert::abi_decode(data).ok()
}

/// Maps revert data from `transferWithAuthorization` to the x402 reason it implies, when it implies
/// one: nonce used or canceled, insufficient balance, signature refused, too early, expired.
///
/// A refused signature maps to [`Reason::INVALID_SIGNATURE`]; if the same signature already passed
/// the off-chain check, the token's EIP-712 name or version differs from the requirement's `extra`
/// and [`Reason::TOKEN_DOMAIN_MISMATCH`] describes it better. Other reverts give `None`.
pub fn revert_reason(data: &[u8]) -> Option<Reason> {
    use BursarUSD::BursarUSDErrors as E;
    match decode_revert(data)? {
        ContractError::CustomError(error) => match error {
            E::AuthorizationAlreadyUsed(_) => Some(Reason::NONCE_ALREADY_USED),
            E::ERC20InsufficientBalance(_) => Some(Reason::INSUFFICIENT_FUNDS),
            E::InvalidAuthorizationSignature(_) => Some(Reason::INVALID_SIGNATURE),
            E::AuthorizationExpired(_) => Some(Reason::VALID_BEFORE),
            E::AuthorizationNotYetValid(_) => Some(Reason::VALID_AFTER),
            _ => None,
        },
        ContractError::Revert(_) | ContractError::Panic(_) => None,
    }
}

/// Describes revert data from a BursarUSD call for logs and error messages.
pub fn describe_revert(data: &[u8]) -> String {
    use BursarUSD::BursarUSDErrors as E;
    let Some(revert) = decode_revert(data) else {
        return if data.is_empty() {
            "reverted without data".to_string()
        } else {
            format!(
                "reverted with unrecognized data {}",
                Bytes::copy_from_slice(data)
            )
        };
    };
    match revert {
        ContractError::Revert(revert) => format!("reverted: {}", revert.reason),
        ContractError::Panic(panic) => format!("panicked: {panic}"),
        ContractError::CustomError(error) => match error {
            E::AuthorizationAlreadyUsed(e) => format!(
                "authorization nonce {} of {} was already used or canceled",
                e.nonce, e.authorizer
            ),
            E::AuthorizationExpired(e) => format!(
                "authorization expired: validBefore {} <= block time {}",
                e.validBefore, e.blockTimestamp
            ),
            E::AuthorizationNotYetValid(e) => format!(
                "authorization not yet valid: validAfter {} >= block time {}",
                e.validAfter, e.blockTimestamp
            ),
            E::InvalidAuthorizationSignature(e) => {
                format!("signature is not valid for authorizer {}", e.authorizer)
            }
            E::CallerMustBePayee(e) => format!(
                "receiveWithAuthorization sent by {}, must be sent by the payee {}",
                e.caller, e.payee
            ),
            E::ERC20InsufficientBalance(e) => format!(
                "insufficient balance: {} holds {} but needs {}",
                e.sender, e.balance, e.needed
            ),
            E::ERC20InsufficientAllowance(e) => format!(
                "insufficient allowance: {} may spend {} but needs {}",
                e.spender, e.allowance, e.needed
            ),
            E::ERC20InvalidSender(e) => format!("invalid sender {}", e.sender),
            E::ERC20InvalidReceiver(e) => format!("invalid receiver {}", e.receiver),
            E::ERC20InvalidApprover(e) => format!("invalid approver {}", e.approver),
            E::ERC20InvalidSpender(e) => format!("invalid spender {}", e.spender),
            E::OwnableUnauthorizedAccount(e) => {
                format!("{} is not the token owner", e.account)
            }
            E::OwnableInvalidOwner(e) => format!("invalid owner {}", e.owner),
            E::StringTooLong(e) => format!("string too long for the EIP-712 domain: {:?}", e.str),
            E::InvalidShortString(_) => "invalid short string".to_string(),
        },
    }
}

/// The EIP-712 digest a buyer signs for `receiveWithAuthorization`.
pub fn receive_authorization_signing_hash(
    authorization: &Authorization,
    domain: &Eip712Domain,
) -> B256 {
    ReceiveWithAuthorization {
        from: authorization.from,
        to: authorization.to,
        value: authorization.value.atomic(),
        validAfter: authorization.valid_after,
        validBefore: authorization.valid_before,
        nonce: authorization.nonce,
    }
    .eip712_signing_hash(domain)
}

/// The EIP-712 digest an authorizer signs to cancel `nonce`.
pub fn cancel_authorization_signing_hash(
    authorizer: Address,
    nonce: B256,
    domain: &Eip712Domain,
) -> B256 {
    CancelAuthorization { authorizer, nonce }.eip712_signing_hash(domain)
}
