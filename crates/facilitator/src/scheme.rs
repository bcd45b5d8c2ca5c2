//! The chain side of a payment scheme: what the facilitator settles, and how.
//!
//! A scheme's stateless side (its payload type, how a buyer signs one, the checks that need no
//! chain) is [`PaymentScheme`] in `bursar-protocol`. [`SettlementScheme`] adds what a facilitator
//! does with such a payment on an EVM chain: the key that makes its settlement exactly once, the
//! transfer a mined settlement must show, the call that settles it and the item the batch
//! settler takes. The exactly-once machinery (the settlement ledger, joining concurrent callers,
//! recovery after a crash, batching) works from these alone; `exact` with EIP-3009
//! ([`ExactEvm`]) is the one implementation today.
//!
//! A new scheme (Permit2 `exact`, `upto`) is its `PaymentScheme`, its `SchemePayload` variant,
//! this trait, and one arm in [`Scheme::of`]; the settlement code above does not change.
//!
//! ```
//! use bursar_facilitator::scheme::{Scheme, SettlementScheme};
//! use bursar_protocol::exact_evm::{self, ExactEvm};
//! use bursar_protocol::scheme::PaymentScheme;
//! use bursar_protocol::{Address, Amount, PaymentRequirements, SchemePayload};
//!
//! let token = Address::repeat_byte(0x70);
//! let requirements = PaymentRequirements {
//!     scheme: "exact".into(),
//!     network: "eip155:31337".parse().unwrap(),
//!     amount: Amount::from(10_000u64),
//!     asset: token.into(),
//!     pay_to: Address::repeat_byte(2).into(),
//!     max_timeout_seconds: 60,
//!     extra: Some(serde_json::json!({"name": "Bursar USD", "version": "2"})),
//! };
//! let payer = Address::repeat_byte(1);
//! let authorization = exact_evm::authorization_for(&requirements, payer, 1_000).unwrap();
//! let payload = SchemePayload::from(ExactEvm::payload(authorization.clone(), vec![0u8; 65].into()));
//!
//! // Before anything is checked, the payment is identified by what the payer signed.
//! let Scheme::ExactEvm(exact) = Scheme::of(&payload).unwrap();
//! let key = ExactEvm::payment_key(exact, &requirements).unwrap();
//! assert_eq!((key.asset, key.payer, key.nonce), (token, payer, authorization.nonce));
//! ```

use alloy_primitives::{Address, B256, Bytes};
use bursar_contracts::BatchItem;
use bursar_protocol::exact_evm::{CheckedPayment, ExactEvm, ExactEvmPayload};
use bursar_protocol::scheme::PaymentScheme;
use bursar_protocol::{PaymentRequirements, SchemePayload};

use crate::paid::Terms;

/// One payment as the chain identifies it: a payer's nonce in an asset. The facilitator
/// settles at most one payment per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentKey {
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
}

/// A transaction's call: the contract and the calldata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementCall {
    pub to: Address,
    pub data: Bytes,
}

/// The chain side of a payment scheme (see the module documentation).
pub trait SettlementScheme: PaymentScheme {
    /// Which payment `payload` is, before it is verified: `None` when the requirement names no
    /// asset of this chain family (the payment is then refused by its checks).
    fn payment_key(
        payload: &Self::Payload,
        requirements: &PaymentRequirements,
    ) -> Option<PaymentKey>;
    /// The key of a verified payment.
    fn checked_key(checked: &Self::Checked) -> PaymentKey;
    /// The transfer a mined settlement of `checked` must show.
    fn terms(checked: &Self::Checked) -> Terms;
    /// The call that settles `checked`, sent from the facilitator's account.
    fn settlement_call(checked: &Self::Checked) -> SettlementCall;
    /// The last second in which the settlement can still be mined.
    fn valid_before_seconds(checked: &Self::Checked) -> u64;
    /// `checked` as an item of the batch settler's `settle(items)`.
    fn batch_item(checked: &Self::Checked) -> BatchItem;
}

impl SettlementScheme for ExactEvm {
    fn payment_key(
        payload: &ExactEvmPayload,
        requirements: &PaymentRequirements,
    ) -> Option<PaymentKey> {
        Some(PaymentKey {
            asset: requirements.asset.evm()?,
            payer: payload.authorization.from,
            nonce: payload.authorization.nonce,
        })
    }

    fn checked_key(checked: &CheckedPayment) -> PaymentKey {
        PaymentKey {
            asset: checked.token,
            payer: checked.payer,
            nonce: checked.payload.authorization.nonce,
        }
    }

    fn terms(checked: &CheckedPayment) -> Terms {
        let authorization = &checked.payload.authorization;
        Terms {
            pay_to: authorization.to,
            value: authorization.value.atomic(),
        }
    }

    fn settlement_call(checked: &CheckedPayment) -> SettlementCall {
        SettlementCall {
            to: checked.token,
            data: bursar_contracts::transfer_with_authorization_call(
                &checked.payload.authorization,
                &checked.payload.signature,
            ),
        }
    }

    fn valid_before_seconds(checked: &CheckedPayment) -> u64 {
        u64::try_from(checked.payload.authorization.valid_before).unwrap_or(u64::MAX)
    }

    fn batch_item(checked: &CheckedPayment) -> BatchItem {
        BatchItem {
            token: checked.token,
            authorization: checked.payload.authorization.clone(),
            signature: checked.payload.signature.clone(),
        }
    }
}

/// The scheme of a payment this facilitator settles, with its typed payload: the one place a
/// request is dispatched by scheme. A scheme it does not settle is refused with the reason its
/// checks give.
#[derive(Debug, Clone, Copy)]
pub enum Scheme<'a> {
    ExactEvm(&'a ExactEvmPayload),
}

impl<'a> Scheme<'a> {
    /// The scheme `payload` belongs to, or why it cannot be settled here.
    pub fn of(payload: &'a SchemePayload) -> Result<Self, &'a str> {
        match payload {
            SchemePayload::ExactEvm(exact) => Ok(Scheme::ExactEvm(exact)),
            SchemePayload::Unreadable { error, .. } => Err(error),
        }
    }
}
