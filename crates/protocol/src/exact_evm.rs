//! The `exact` scheme on EVM chains, paid with EIP-3009 `transferWithAuthorization`.
//!
//! The buyer signs EIP-712 typed data
//! `TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)`
//! under the token's domain `{name, version, chainId, verifyingContract = asset}`, where name and
//! version come from the requirement's `extra`. This module builds, signs, recovers and checks such
//! payloads without touching a chain: the balance and nonce checks need a chain and live in the
//! facilitator.

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolStruct, sol};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::money::Amount;
use crate::reason::Reason;
use crate::scheme::PaymentScheme;
use crate::types::{PaymentPayload, PaymentRequirements};

/// The scheme name.
pub const SCHEME_EXACT: &str = "exact";
/// A payment must stay valid this long after verification so settlement can land.
pub const VALID_BEFORE_HEADROOM_SECONDS: u64 = 6;
/// The reference clients back-date `validAfter` by this much to absorb clock skew.
pub const VALID_AFTER_BACKDATE_SECONDS: u64 = 600;

sol! {
    /// The EIP-3009 typed-data struct.
    #[derive(Debug, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The authorization a buyer signs. Numbers travel as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub from: Address,
    pub to: Address,
    pub value: Amount,
    #[serde(with = "decimal_u256")]
    pub valid_after: U256,
    #[serde(with = "decimal_u256")]
    pub valid_before: U256,
    pub nonce: B256,
}

/// The scheme payload: `{signature, authorization}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    pub signature: Bytes,
    pub authorization: Authorization,
}

mod decimal_u256 {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<U256, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        crate::money::Amount::parse_atomic(&text)
            .map(|a| a.atomic())
            .map_err(serde::de::Error::custom)
    }
}

impl ExactEvmPayload {
    pub fn from_value(value: &Value) -> Result<Self, String> {
        Self::deserialize(value).map_err(|e| format!("exact EVM payload: {e}"))
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("payload serializes")
    }
}

impl Authorization {
    fn typed(&self) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value.atomic(),
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
        }
    }

    /// The EIP-712 digest the buyer signs.
    pub fn signing_hash(&self, domain: &Eip712Domain) -> B256 {
        self.typed().eip712_signing_hash(domain)
    }
}

/// The token's EIP-712 domain.
pub fn token_domain(name: &str, version: &str, chain_id: u64, token: Address) -> Eip712Domain {
    Eip712Domain {
        name: Some(name.to_string().into()),
        version: Some(version.to_string().into()),
        chain_id: Some(U256::from(chain_id)),
        verifying_contract: Some(token),
        salt: None,
    }
}

/// Why a signature does not recover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "signature must be 65 bytes (r, s, v), got {0}; contract-wallet signatures are not supported"
    )]
    Length(usize),
    #[error("signature recovery id must be 0, 1, 27 or 28, got {0}")]
    RecoveryId(u8),
    #[error(
        "signature s value is in the upper half of the curve order (malleable); tokens reject it"
    )]
    HighS,
    #[error("signature does not recover to any address")]
    Unrecoverable,
}

/// Recovers the signer of a 65-byte `r || s || v` signature over `digest` (libsecp256k1).
pub fn recover_signer(digest: &B256, signature: &[u8]) -> Result<Address, SignatureError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    use secp256k1::{Message, SECP256K1};

    if signature.len() != 65 {
        return Err(SignatureError::Length(signature.len()));
    }
    let v = signature[64];
    let recovery = match v {
        0 | 1 => v,
        27 | 28 => v - 27,
        other => return Err(SignatureError::RecoveryId(other)),
    };
    let recovery =
        RecoveryId::try_from(i32::from(recovery)).map_err(|_| SignatureError::RecoveryId(v))?;
    let compact: &[u8; 64] = signature[..64].try_into().expect("length checked");
    let normalized = secp256k1::ecdsa::Signature::from_compact(compact)
        .map_err(|_| SignatureError::Unrecoverable)?;
    // Tokens built on OpenZeppelin's ECDSA refuse malleable signatures; refuse them here too so a
    // payment that verifies also settles.
    let mut low = normalized;
    low.normalize_s();
    if low != normalized {
        return Err(SignatureError::HighS);
    }
    let recoverable = RecoverableSignature::from_compact(compact, recovery)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let message = Message::from_digest(digest.0);
    let public = SECP256K1
        .recover_ecdsa(message, &recoverable)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let uncompressed = public.serialize_uncompressed();
    let hash = alloy_primitives::keccak256(&uncompressed[1..]);
    Ok(Address::from_slice(&hash[12..]))
}

/// Signs an authorization with a local key. Produces `r || s || v` with v in {27, 28}.
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    authorization: &Authorization,
    domain: &Eip712Domain,
) -> Result<Bytes, alloy_signer::Error> {
    let signature = signer.sign_hash_sync(&authorization.signing_hash(domain))?;
    Ok(Bytes::from(signature.as_bytes().to_vec()))
}

/// A fresh random 32-byte authorization nonce.
pub fn random_nonce() -> B256 {
    B256::from(rand::random::<[u8; 32]>())
}

/// Builds the authorization a reference client would for these requirements at time `now`.
pub fn authorization_for(
    requirements: &PaymentRequirements,
    from: Address,
    now_seconds: u64,
) -> Result<Authorization, String> {
    let to = requirements
        .pay_to
        .evm()
        .ok_or_else(|| format!("payTo {:?} is not an EVM address", requirements.pay_to))?;
    Ok(Authorization {
        from,
        to,
        value: requirements.amount,
        valid_after: U256::from(now_seconds.saturating_sub(VALID_AFTER_BACKDATE_SECONDS)),
        valid_before: U256::from(now_seconds.saturating_add(requirements.max_timeout_seconds)),
        nonce: random_nonce(),
    })
}

/// The `exact` scheme with EIP-3009, as a [`PaymentScheme`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactEvm;

impl PaymentScheme for ExactEvm {
    const NAME: &'static str = SCHEME_EXACT;
    type Payload = ExactEvmPayload;
    type Message = Authorization;
    type Checked = CheckedPayment;

    fn decode(value: &Value) -> Result<ExactEvmPayload, String> {
        ExactEvmPayload::from_value(value)
    }

    fn encode(payload: &ExactEvmPayload) -> Value {
        payload.to_value()
    }

    fn message(
        requirements: &PaymentRequirements,
        payer: Address,
        now_seconds: u64,
    ) -> Result<Authorization, String> {
        authorization_for(requirements, payer, now_seconds)
    }

    fn signing_hash(
        authorization: &Authorization,
        requirements: &PaymentRequirements,
    ) -> Result<B256, String> {
        Ok(authorization.signing_hash(&requirement_domain(requirements)?))
    }

    fn payload(authorization: Authorization, signature: Bytes) -> ExactEvmPayload {
        ExactEvmPayload {
            signature,
            authorization,
        }
    }

    fn check(
        payment: &PaymentPayload,
        payload: &ExactEvmPayload,
        requirements: &PaymentRequirements,
        chain_id: u64,
        now_seconds: u64,
    ) -> Result<CheckedPayment, Invalid> {
        let terms = check_terms(payment, requirements, chain_id)?;
        check_signed(payload, &terms, requirements, now_seconds)
    }
}

/// The token's EIP-712 domain a requirement names: name and version from `extra`, the chain from
/// the network, the token from the asset.
pub fn requirement_domain(requirements: &PaymentRequirements) -> Result<Eip712Domain, String> {
    let chain_id = requirements
        .network
        .chain_id()
        .ok_or_else(|| format!("network {} is not an EVM chain", requirements.network))?;
    let (name, version) = requirements
        .eip712_name_version()
        .ok_or("requirement extra must carry the token's EIP-712 name and version")?;
    let token = requirements
        .asset
        .evm()
        .ok_or_else(|| format!("asset {:?} is not an EVM address", requirements.asset))?;
    Ok(token_domain(name, version, chain_id, token))
}

/// A failed check: the x402 reason plus a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
    /// The payer, when it was known by the time the check failed.
    pub payer: Option<Address>,
}

impl Invalid {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            message: message.into(),
            payer: None,
        }
    }

    fn with_payer(mut self, payer: Address) -> Self {
        self.payer = Some(payer);
        self
    }
}

/// What the stateless checks established about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPayment {
    pub payer: Address,
    pub token: Address,
    pub chain_id: u64,
    pub payload: ExactEvmPayload,
}

/// Runs every check that needs no chain, in the reference order:
/// version, scheme, network, EIP-712 domain in `extra`, signature, recipient, `validBefore` (with
/// [`VALID_BEFORE_HEADROOM_SECONDS`] of headroom), `validAfter`, value. The caller then checks the
/// balance and the nonce on chain.
pub fn check_payment(
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    expected_chain_id: u64,
    now_seconds: u64,
) -> Result<CheckedPayment, Invalid> {
    let terms = check_terms(payload, requirements, expected_chain_id)?;
    let exact = payload
        .payload
        .exact_evm()
        .map_err(|e| Invalid::new(Reason::INVALID_PAYLOAD, e))?;
    check_signed(exact, &terms, requirements, now_seconds)
}

/// What the requirement names, once checked against the payment: the token's EIP-712 domain,
/// the token and the payee.
struct Terms<'a> {
    name: &'a str,
    version: &'a str,
    chain_id: u64,
    token: Address,
    pay_to: Address,
}

/// The checks before the signed payload is looked at: scheme, network, `accepted`, domain.
fn check_terms<'a>(
    payload: &PaymentPayload,
    requirements: &'a PaymentRequirements,
    expected_chain_id: u64,
) -> Result<Terms<'a>, Invalid> {
    check_scheme(payload, requirements)?;
    if payload.network != requirements.network {
        return Err(Invalid::new(
            Reason::INVALID_NETWORK,
            format!(
                "payload is for {} but the requirement is for {}",
                payload.network, requirements.network
            ),
        ));
    }
    if requirements.network.chain_id() != Some(expected_chain_id) {
        return Err(Invalid::new(
            Reason::INVALID_NETWORK,
            format!(
                "network {} is not served here (eip155:{expected_chain_id})",
                requirements.network
            ),
        ));
    }
    if let Some(accepted) = &payload.accepted {
        check_accepted_matches(accepted, requirements)?;
    }
    let Some((name, version)) = requirements.eip712_name_version() else {
        return Err(Invalid::new(
            Reason::MISSING_EIP712_DOMAIN,
            "requirement extra must carry the token's EIP-712 name and version",
        ));
    };
    let token = requirements.asset.evm().ok_or_else(|| {
        Invalid::new(
            Reason::INVALID_PAYMENT_REQUIREMENTS,
            format!("asset {:?} is not an EVM address", requirements.asset),
        )
    })?;
    let pay_to = requirements.pay_to.evm().ok_or_else(|| {
        Invalid::new(
            Reason::INVALID_PAYMENT_REQUIREMENTS,
            format!("payTo {:?} is not an EVM address", requirements.pay_to),
        )
    })?;
    Ok(Terms {
        name,
        version,
        chain_id: expected_chain_id,
        token,
        pay_to,
    })
}

/// The checks of the signed authorization against the terms: signature, recipient, validity
/// window, value.
fn check_signed(
    exact: &ExactEvmPayload,
    terms: &Terms<'_>,
    requirements: &PaymentRequirements,
    now_seconds: u64,
) -> Result<CheckedPayment, Invalid> {
    let Terms {
        name,
        version,
        chain_id: expected_chain_id,
        token,
        pay_to,
    } = *terms;
    let authorization = &exact.authorization;
    let payer = authorization.from;

    let domain = token_domain(name, version, expected_chain_id, token);
    let digest = authorization.signing_hash(&domain);
    match recover_signer(&digest, &exact.signature) {
        Ok(signer) if signer == payer => {}
        Ok(signer) => {
            return Err(Invalid::new(
                Reason::INVALID_SIGNATURE,
                format!("signature recovers to {signer}, not the payer {payer}"),
            )
            .with_payer(payer));
        }
        Err(error) => {
            return Err(
                Invalid::new(Reason::INVALID_SIGNATURE, error.to_string()).with_payer(payer)
            );
        }
    }
    if authorization.to != pay_to {
        return Err(Invalid::new(
            Reason::RECIPIENT_MISMATCH,
            format!(
                "authorization pays {} but the requirement's payTo is {pay_to}",
                authorization.to
            ),
        )
        .with_payer(payer));
    }
    let deadline = U256::from(now_seconds.saturating_add(VALID_BEFORE_HEADROOM_SECONDS));
    if authorization.valid_before < deadline {
        return Err(Invalid::new(
            Reason::VALID_BEFORE,
            format!(
                "authorization expires at {} which is less than {VALID_BEFORE_HEADROOM_SECONDS}s from now ({now_seconds})",
                authorization.valid_before
            ),
        )
        .with_payer(payer));
    }
    // Tokens require `block.timestamp > validAfter`, strictly.
    if authorization.valid_after >= U256::from(now_seconds) {
        return Err(Invalid::new(
            Reason::VALID_AFTER,
            format!(
                "authorization is not valid until {} (now {now_seconds})",
                authorization.valid_after
            ),
        )
        .with_payer(payer));
    }
    if authorization.value != requirements.amount {
        return Err(Invalid::new(
            Reason::VALUE_MISMATCH,
            format!(
                "authorization value {} differs from the required amount {}",
                authorization.value, requirements.amount
            ),
        )
        .with_payer(payer));
    }
    Ok(CheckedPayment {
        payer,
        token,
        chain_id: expected_chain_id,
        payload: exact.clone(),
    })
}

/// The first check: payment and requirement are both in the `exact` scheme.
pub fn check_scheme(
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
) -> Result<(), Invalid> {
    if requirements.scheme != SCHEME_EXACT || payload.scheme != SCHEME_EXACT {
        Err(Invalid::new(
            Reason::INVALID_SCHEME,
            format!(
                "scheme {:?} / {:?} is not \"exact\"",
                payload.scheme, requirements.scheme
            ),
        ))
    } else {
        Ok(())
    }
}

/// A v2 payload's `accepted` must be the requirement being verified.
fn check_accepted_matches(
    accepted: &PaymentRequirements,
    requirements: &PaymentRequirements,
) -> Result<(), Invalid> {
    if accepted.scheme != requirements.scheme {
        return Err(Invalid::new(
            Reason::INVALID_SCHEME,
            "accepted scheme differs from the requirement",
        ));
    }
    if accepted.network != requirements.network {
        return Err(Invalid::new(
            Reason::INVALID_NETWORK,
            "accepted network differs from the requirement",
        ));
    }
    if !accepted.asset.names_same(&requirements.asset) {
        return Err(Invalid::new(
            Reason::ASSET_MISMATCH,
            "accepted asset differs from the requirement",
        ));
    }
    if !accepted.pay_to.names_same(&requirements.pay_to) {
        return Err(Invalid::new(
            Reason::RECIPIENT_MISMATCH,
            "accepted payTo differs from the requirement",
        ));
    }
    if accepted.amount != requirements.amount {
        return Err(Invalid::new(
            Reason::VALUE_MISMATCH,
            "accepted amount differs from the requirement",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const CHAIN: u64 = 31337;

    fn token() -> Address {
        "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap()
    }

    fn pay_to() -> Address {
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse()
            .unwrap()
    }

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: Network::Eip155(CHAIN),
            amount: Amount::from(10_000u64),
            asset: token().into(),
            pay_to: pay_to().into(),
            max_timeout_seconds: 60,
            extra: Some(json!({"name": "USD Coin", "version": "2"})),
        }
    }

    fn signed(
        requirements: &PaymentRequirements,
        edit: impl FnOnce(&mut Authorization),
    ) -> (PrivateKeySigner, PaymentPayload) {
        let signer = PrivateKeySigner::random();
        let mut authorization = authorization_for(requirements, signer.address(), NOW).unwrap();
        edit(&mut authorization);
        let domain = token_domain("USD Coin", "2", CHAIN, token());
        let signature = sign_authorization(&signer, &authorization, &domain).unwrap();
        let exact = ExactEvmPayload {
            signature,
            authorization,
        };
        (
            signer,
            PaymentPayload::new_v2(requirements.clone(), None, exact),
        )
    }

    fn exact_mut(payload: &mut PaymentPayload) -> &mut ExactEvmPayload {
        match &mut payload.payload {
            crate::scheme::SchemePayload::ExactEvm(exact) => exact,
            other => panic!("not an exact payload: {other:?}"),
        }
    }

    fn reason_of(result: Result<CheckedPayment, Invalid>) -> Reason {
        result.unwrap_err().reason
    }

    #[test]
    fn a_correct_payment_passes() {
        let (signer, payload) = signed(&requirements(), |_| {});
        let checked = check_payment(&payload, &requirements(), CHAIN, NOW).unwrap();
        assert_eq!(checked.payer, signer.address());
        assert_eq!(checked.token, token());
    }

    #[test]
    fn wire_form_uses_decimal_strings() {
        let (_, payload) = signed(&requirements(), |_| {});
        let wire = payload.to_json_value();
        let auth = &wire["payload"]["authorization"];
        assert_eq!(auth["value"], "10000");
        assert_eq!(auth["validAfter"], (NOW - 600).to_string());
        assert_eq!(auth["validBefore"], (NOW + 60).to_string());
        assert_eq!(
            wire["payload"]["signature"].as_str().unwrap().len(),
            2 + 130
        );
    }

    #[test]
    fn each_check_names_its_reason() {
        let r = requirements();
        let (_, p) = signed(&r, |a| a.to = Address::repeat_byte(9));
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::RECIPIENT_MISMATCH
        );
        let (_, p) = signed(&r, |a| a.valid_before = U256::from(NOW + 5));
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::VALID_BEFORE
        );
        let (_, p) = signed(&r, |a| a.valid_after = U256::from(NOW + 1));
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::VALID_AFTER
        );
        let (_, p) = signed(&r, |a| a.value = Amount::from(9_999u64));
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::VALUE_MISMATCH
        );
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN + 1, NOW)),
            Reason::INVALID_NETWORK
        );

        let mut other_scheme = r.clone();
        other_scheme.scheme = "upto".into();
        let (_, p) = signed(&other_scheme, |_| {});
        assert_eq!(
            reason_of(check_payment(&p, &other_scheme, CHAIN, NOW)),
            Reason::INVALID_SCHEME
        );

        let mut no_domain = r.clone();
        no_domain.extra = None;
        let (_, p) = signed(&no_domain, |_| {});
        assert_eq!(
            reason_of(check_payment(&p, &no_domain, CHAIN, NOW)),
            Reason::MISSING_EIP712_DOMAIN
        );
    }

    #[test]
    fn forged_and_malformed_signatures_are_refused() {
        let r = requirements();
        let (_, mut p) = signed(&r, |_| {});
        // Claim someone else's funds: change `from` after signing.
        exact_mut(&mut p).authorization.from = Address::repeat_byte(7);
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::INVALID_SIGNATURE
        );

        let (_, mut p) = signed(&r, |_| {});
        exact_mut(&mut p).signature = Bytes::from_static(&[0x12, 0x34]);
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::INVALID_SIGNATURE
        );

        // High-s twin of a valid signature: recovers, but tokens refuse it, so do we.
        let (_, mut p) = signed(&r, |_| {});
        let mut bytes = exact_mut(&mut p).signature.to_vec();
        let n = U256::from_str_radix(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
            16,
        )
        .unwrap();
        let s = U256::from_be_slice(&bytes[32..64]);
        bytes[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        bytes[64] = if bytes[64] == 27 { 28 } else { 27 };
        exact_mut(&mut p).signature = Bytes::from(bytes);
        assert_eq!(
            reason_of(check_payment(&p, &r, CHAIN, NOW)),
            Reason::INVALID_SIGNATURE
        );
    }

    #[test]
    fn signature_for_another_token_or_chain_does_not_verify() {
        let r = requirements();
        let signer = PrivateKeySigner::random();
        let authorization = authorization_for(&r, signer.address(), NOW).unwrap();
        for domain in [
            token_domain("USD Coin", "2", CHAIN + 1, token()),
            token_domain("USD Coin", "2", CHAIN, Address::repeat_byte(1)),
            token_domain("USDC", "2", CHAIN, token()),
        ] {
            let signature = sign_authorization(&signer, &authorization, &domain).unwrap();
            let exact = ExactEvmPayload {
                signature,
                authorization: authorization.clone(),
            };
            let p = PaymentPayload::new_v2(r.clone(), None, exact);
            assert_eq!(
                reason_of(check_payment(&p, &r, CHAIN, NOW)),
                Reason::INVALID_SIGNATURE
            );
        }
    }

    #[test]
    fn recovery_matches_alloy() {
        let signer = PrivateKeySigner::random();
        let digest = alloy_primitives::keccak256(b"bursar");
        let signature = signer.sign_hash_sync(&digest).unwrap();
        assert_eq!(
            recover_signer(&digest, &signature.as_bytes()).unwrap(),
            signer.address()
        );
        let mut zero_v = signature.as_bytes();
        zero_v[64] -= 27;
        assert_eq!(recover_signer(&digest, &zero_v).unwrap(), signer.address());
        zero_v[64] = 5;
        assert_eq!(
            recover_signer(&digest, &zero_v),
            Err(SignatureError::RecoveryId(5))
        );
    }
}
