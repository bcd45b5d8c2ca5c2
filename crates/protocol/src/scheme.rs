//! Payment schemes: the seam a scheme plugs into, and the typed payload each one signs.
//!
//! A scheme ([`PaymentScheme`]) owns its payload type, how a buyer builds and signs one, and the
//! checks that need no chain. `exact` with EIP-3009 ([`crate::exact_evm::ExactEvm`]) is one
//! implementation; Permit2 `exact` or `upto` are added beside it, as another implementation and
//! another [`SchemePayload`] variant, without touching what runs on top (buyer, seller, runtime,
//! governance, store). What needs a chain (balances, nonces, the settlement transaction) belongs to
//! the facilitator's side of the seam.
//!
//! A payment document carries its scheme's payload as JSON. [`SchemePayload::decode`] reads it
//! into the scheme's own type when the document is read at the edge (a header, a facilitator
//! request body); past that point no code looks at the payload's JSON again.
//!
//! A second scheme plugs in like this (a toy that signs the keccak of the price):
//!
//! ```
//! use bursar_protocol::exact_evm::Invalid;
//! use bursar_protocol::scheme::PaymentScheme;
//! use bursar_protocol::{
//!     Address, Amount, B256, Bytes, PaymentPayload, PaymentRequirements, Reason, SchemePayload,
//! };
//! use serde_json::{Value, json};
//!
//! /// Pays `amount` by signing its keccak; the facilitator trusts the signer's word.
//! struct Tally;
//!
//! #[derive(Debug, Clone, PartialEq)]
//! struct TallyPayload {
//!     payer: Address,
//!     amount: Amount,
//!     signature: Bytes,
//! }
//!
//! impl PaymentScheme for Tally {
//!     const NAME: &'static str = "tally";
//!     type Payload = TallyPayload;
//!     type Message = (Address, Amount);
//!     type Checked = Address;
//!
//!     fn decode(value: &Value) -> Result<TallyPayload, String> {
//!         let field = |name: &str| value[name].as_str().ok_or(format!("{name} is missing"));
//!         Ok(TallyPayload {
//!             payer: field("payer")?.parse().map_err(|_| "payer is not an address")?,
//!             amount: field("amount")?.parse().map_err(|e| format!("amount: {e}"))?,
//!             signature: field("signature")?.parse().map_err(|_| "signature is not hex")?,
//!         })
//!     }
//!
//!     fn encode(payload: &TallyPayload) -> Value {
//!         json!({"payer": payload.payer, "amount": payload.amount, "signature": payload.signature})
//!     }
//!
//!     fn message(
//!         requirements: &PaymentRequirements,
//!         payer: Address,
//!         _now_seconds: u64,
//!     ) -> Result<(Address, Amount), String> {
//!         Ok((payer, requirements.amount))
//!     }
//!
//!     fn signing_hash(
//!         message: &(Address, Amount),
//!         _requirements: &PaymentRequirements,
//!     ) -> Result<B256, String> {
//!         Ok(alloy_primitives::keccak256(message.1.to_string().as_bytes()))
//!     }
//!
//!     fn payload((payer, amount): (Address, Amount), signature: Bytes) -> TallyPayload {
//!         TallyPayload { payer, amount, signature }
//!     }
//!
//!     fn check(
//!         _payment: &PaymentPayload,
//!         payload: &TallyPayload,
//!         requirements: &PaymentRequirements,
//!         _chain_id: u64,
//!         _now_seconds: u64,
//!     ) -> Result<Address, Invalid> {
//!         if payload.amount != requirements.amount {
//!             return Err(Invalid::new(Reason::VALUE_MISMATCH, "amount differs"));
//!         }
//!         Ok(payload.payer)
//!     }
//! }
//!
//! // A buyer builds, signs and sends; a facilitator decodes once and checks.
//! let requirements = PaymentRequirements {
//!     scheme: Tally::NAME.into(),
//!     network: "eip155:31337".parse().unwrap(),
//!     amount: Amount::from(5u64),
//!     asset: Address::ZERO.into(),
//!     pay_to: Address::repeat_byte(2).into(),
//!     max_timeout_seconds: 60,
//!     extra: None,
//! };
//! let payer = Address::repeat_byte(1);
//! let message = Tally::message(&requirements, payer, 0).unwrap();
//! let digest = Tally::signing_hash(&message, &requirements).unwrap();
//! let signature = Bytes::copy_from_slice(digest.as_slice()); // a real scheme signs `digest`
//! let wire = Tally::encode(&Tally::payload(message, signature));
//!
//! let payload = Tally::decode(&wire).unwrap();
//! // Until the toy has its own `SchemePayload` variant, documents carry its payload unread.
//! let unread = SchemePayload::decode(Tally::NAME, wire);
//! let payment = PaymentPayload::new_v1(Tally::NAME.into(), requirements.network.clone(), unread);
//! assert_eq!(Tally::check(&payment, &payload, &requirements, 31337, 0), Ok(payer));
//! ```

use alloy_primitives::{Address, B256, Bytes};
use serde_json::Value;

use crate::exact_evm::{ExactEvm, ExactEvmPayload, Invalid};
use crate::types::{PaymentPayload, PaymentRequirements};

/// One payment scheme on one chain family. A scheme is a type: every function is associated.
pub trait PaymentScheme {
    /// The scheme's name on the wire (`exact`).
    const NAME: &'static str;
    /// The signed payload its payments carry.
    type Payload: Clone + std::fmt::Debug + PartialEq;
    /// What a buyer signs, before it becomes a payload (for `exact`: the EIP-3009 authorization).
    type Message;
    /// What the stateless checks established: what the chain checks and settlement work from.
    type Checked;

    /// Reads the payload from its JSON (the edge; nothing else reads it).
    fn decode(value: &Value) -> Result<Self::Payload, String>;
    /// The payload's JSON, as it travels.
    fn encode(payload: &Self::Payload) -> Value;

    /// Buyer: the message paying `requirements` from `payer` at `now_seconds`.
    fn message(
        requirements: &PaymentRequirements,
        payer: Address,
        now_seconds: u64,
    ) -> Result<Self::Message, String>;
    /// Buyer: the digest the payer's key signs.
    fn signing_hash(
        message: &Self::Message,
        requirements: &PaymentRequirements,
    ) -> Result<B256, String>;
    /// Buyer: the payload, from the message and the signature over its digest.
    fn payload(message: Self::Message, signature: Bytes) -> Self::Payload;

    /// Every check of `payload` (carried by `payment`) against `requirements` that needs no chain,
    /// for a facilitator on `chain_id` at `now_seconds`.
    fn check(
        payment: &PaymentPayload,
        payload: &Self::Payload,
        requirements: &PaymentRequirements,
        chain_id: u64,
        now_seconds: u64,
    ) -> Result<Self::Checked, Invalid>;
}

/// A scheme's signed payload, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemePayload {
    /// `exact` on an EVM chain with EIP-3009 `transferWithAuthorization`.
    ExactEvm(ExactEvmPayload),
    /// A payload Bursar cannot read: a scheme it does not know, or a known scheme's payload that
    /// is malformed. Kept verbatim so it can be forwarded, and refused with the reason the checks
    /// give; `error` says why it could not be read.
    Unreadable { value: Value, error: String },
}

impl SchemePayload {
    /// Reads the payload of a payment in `scheme`. Each scheme is one arm.
    pub fn decode(scheme: &str, value: Value) -> Self {
        let decoded = match scheme {
            ExactEvm::NAME => ExactEvm::decode(&value).map(SchemePayload::ExactEvm),
            _ => Err(format!("scheme {scheme:?} is not supported")),
        };
        decoded.unwrap_or_else(|error| SchemePayload::Unreadable { value, error })
    }

    /// The `exact` EVM payload, or why this is not one.
    pub fn exact_evm(&self) -> Result<&ExactEvmPayload, &str> {
        match self {
            SchemePayload::ExactEvm(exact) => Ok(exact),
            SchemePayload::Unreadable { error, .. } => Err(error),
        }
    }

    /// The payload as it travels on the wire.
    pub fn to_json_value(&self) -> Value {
        match self {
            SchemePayload::ExactEvm(exact) => ExactEvm::encode(exact),
            SchemePayload::Unreadable { value, .. } => value.clone(),
        }
    }
}

impl From<ExactEvmPayload> for SchemePayload {
    fn from(exact: ExactEvmPayload) -> Self {
        SchemePayload::ExactEvm(exact)
    }
}
