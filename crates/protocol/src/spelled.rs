//! Values the wire spells in a chain's own form: an asset, a recipient, a payer, a transaction.
//!
//! x402 names them as text so that any chain family fits (an EVM address, a Solana public key). A
//! v2 payment must echo the requirement it accepts exactly as offered (servers compare documents
//! field by field), so the text is kept as it arrived. The EVM form is read once, when the text
//! is: code past the edge asks [`Spelled::evm`] and never parses the text again.
//!
//! ```
//! use bursar_protocol::{Address, ChainAddress};
//!
//! let offered: ChainAddress = "0x036cbd53842c5426634e7929541ec2318f3dcf7e".into();
//! let token: Address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e".parse().unwrap();
//! assert_eq!(offered.evm(), Some(token));
//! assert_eq!(offered.as_str(), "0x036cbd53842c5426634e7929541ec2318f3dcf7e"); // as offered
//! assert_eq!(ChainAddress::from(token).as_str(), token.to_checksum(None));
//! assert_eq!(ChainAddress::from("So11111111111111111111111111111111111111112").evm(), None);
//! ```

use std::fmt;
use std::str::FromStr;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Text as the wire spelled it, with the EVM value it names when it names one (`T` is `Address`
/// or `B256`). Two values are equal when their text is: that is how a v2 server matches an
/// echoed requirement.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Spelled<T> {
    text: String,
    evm: Option<T>,
}

/// An account or an asset on some chain, as a requirement or a facilitator's answer names it.
pub type ChainAddress = Spelled<Address>;
/// A settlement transaction as a facilitator's answer names it (an EVM transaction hash, or a
/// signature on another chain family); empty when nothing was settled.
pub type ChainTx = Spelled<B256>;

impl<T: FromStr + Copy> Spelled<T> {
    /// The text, kept as it is, and its EVM reading.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let evm = text.parse().ok();
        Spelled { text, evm }
    }
}

impl<T: Copy> Spelled<T> {
    /// The EVM value the text names; `None` when it names none (another chain family's form, or
    /// text that is not an address at all).
    pub fn evm(&self) -> Option<T> {
        self.evm
    }

    /// The text as it was received or offered.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `other` names the same thing: the same EVM value however it is spelled (hex case),
    /// or otherwise the same text (other chain families' forms are case-sensitive).
    pub fn names_same(&self, other: &Self) -> bool
    where
        T: PartialEq,
    {
        match (self.evm, other.evm) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => self.text == other.text,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl<T> Default for Spelled<T> {
    fn default() -> Self {
        Spelled {
            text: String::new(),
            evm: None,
        }
    }
}

/// An EVM address spelled in its checksum form, as Bursar offers and answers.
impl From<Address> for Spelled<Address> {
    fn from(address: Address) -> Self {
        Spelled {
            text: address.to_checksum(None),
            evm: Some(address),
        }
    }
}

/// A transaction hash spelled as lowercase 0x hex.
impl From<B256> for Spelled<B256> {
    fn from(hash: B256) -> Self {
        Spelled {
            text: hash.to_string(),
            evm: Some(hash),
        }
    }
}

impl<T: FromStr + Copy> From<String> for Spelled<T> {
    fn from(text: String) -> Self {
        Spelled::new(text)
    }
}

impl<T: FromStr + Copy> From<&str> for Spelled<T> {
    fn from(text: &str) -> Self {
        Spelled::new(text)
    }
}

impl<T> fmt::Display for Spelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> fmt::Debug for Spelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> PartialEq<String> for Spelled<T> {
    fn eq(&self, other: &String) -> bool {
        self.text == *other
    }
}

/// Ordered by text, so a set of them is stable.
impl<T: Eq> PartialOrd for Spelled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Eq> Ord for Spelled<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<T> PartialEq<str> for Spelled<T> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<T> PartialEq<&str> for Spelled<T> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<T> Serialize for Spelled<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, T: FromStr + Copy> Deserialize<'de> for Spelled<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Spelled::new)
    }
}

#[cfg(feature = "openapi")]
impl<T> utoipa::PartialSchema for Spelled<T> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        String::schema()
    }
}

#[cfg(feature = "openapi")]
impl<T> utoipa::ToSchema for Spelled<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_kept_and_read_once() {
        let lower = "0x036cbd53842c5426634e7929541ec2318f3dcf7e";
        let spelled = ChainAddress::from(lower);
        assert_eq!(spelled.as_str(), lower);
        assert_eq!(spelled.evm(), Some(lower.parse().unwrap()));
        assert_eq!(serde_json::to_value(&spelled).unwrap(), lower);
        let back: ChainAddress = serde_json::from_value(lower.into()).unwrap();
        assert_eq!(back, spelled);
    }

    #[test]
    fn equality_is_the_text_as_an_echo_is_compared() {
        let lower = ChainAddress::from("0x036cbd53842c5426634e7929541ec2318f3dcf7e");
        let checksum = ChainAddress::from("0x036CbD53842c5426634e7929541eC2318f3dCF7e");
        assert_eq!(lower.evm(), checksum.evm());
        assert_ne!(lower, checksum);
        assert!(lower.names_same(&checksum));
        let base58 = ChainAddress::from("So11111111111111111111111111111111111111112");
        assert!(!base58.names_same(&ChainAddress::from(
            "so11111111111111111111111111111111111111112"
        )));
        assert!(base58.names_same(&base58.clone()));
    }

    #[test]
    fn text_that_names_no_evm_value_has_none() {
        for text in [
            "",
            "not an address",
            "0x036cbd",
            "So11111111111111111111111111111111111111112",
        ] {
            assert_eq!(ChainAddress::from(text).evm(), None, "{text:?}");
        }
        assert_eq!(ChainTx::default().evm(), None);
        assert!(ChainTx::default().is_empty());
        let hash = B256::repeat_byte(0xab);
        assert_eq!(ChainTx::from(hash.to_string()).evm(), Some(hash));
        assert_eq!(ChainTx::from(hash).as_str(), hash.to_string());
    }
}
