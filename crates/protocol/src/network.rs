//! Networks as CAIP-2 identifiers, with the v1 names mapped to them.
//!
//! x402 v2 names networks by CAIP-2 (`eip155:8453`); v1 used short names (`base`). Internally every
//! network is a [`Network`]; v1 names are accepted on input and produced on v1 output.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Chain id of Bursar's embedded development chain (the same id local EVM nodes use by default).
pub const DEV_CHAIN_ID: u64 = 31337;

/// Known v1 network names and their EIP-155 chain ids.
const V1_NAMES: &[(&str, u64)] = &[
    ("ethereum", 1),
    ("sepolia", 11_155_111),
    ("base", 8453),
    ("base-sepolia", 84_532),
    ("avalanche", 43_114),
    ("avalanche-fuji", 43_113),
    ("polygon", 137),
    ("polygon-amoy", 80_002),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
    ("abstract", 2741),
    ("abstract-testnet", 11_124),
    ("peaq", 3338),
    ("story", 1514),
    ("xlayer", 196),
    ("xlayer-testnet", 1952),
];

/// A payment network.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    /// An EVM chain, `eip155:<chain id>`.
    Eip155(u64),
    /// Any other CAIP-2 network (`solana:...`), kept verbatim so it can be echoed and refused cleanly.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("network is empty")]
    Empty,
    #[error("network {0:?} is neither CAIP-2 (namespace:reference) nor a known x402 v1 name")]
    Unknown(String),
}

impl Network {
    /// Parses a CAIP-2 identifier or a v1 network name.
    pub fn parse(text: &str) -> Result<Self, NetworkError> {
        const NETWORK_CHARS_MAX: usize = 128;
        if text.is_empty() {
            return Err(NetworkError::Empty);
        }
        if text.len() > NETWORK_CHARS_MAX {
            return Err(NetworkError::Unknown(
                text.chars().take(32).collect::<String>() + "…",
            ));
        }
        if let Some((namespace, reference)) = text.split_once(':') {
            let valid_part = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !valid_part(namespace) || !valid_part(reference) {
                return Err(NetworkError::Unknown(text.to_string()));
            }
            if namespace == "eip155" {
                let chain_id = reference
                    .parse::<u64>()
                    .ok()
                    .filter(|_| reference.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| NetworkError::Unknown(text.to_string()))?;
                return Ok(Network::Eip155(chain_id));
            }
            return Ok(Network::Other(text.to_string()));
        }
        V1_NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, id)| Network::Eip155(*id))
            .ok_or_else(|| NetworkError::Unknown(text.to_string()))
    }

    /// The EIP-155 chain id, if this is an EVM network.
    pub fn chain_id(&self) -> Option<u64> {
        match self {
            Network::Eip155(id) => Some(*id),
            Network::Other(_) => None,
        }
    }

    /// The CAIP-2 form, used by x402 v2.
    pub fn caip2(&self) -> String {
        self.to_string()
    }

    /// The v1 name where one exists; otherwise the CAIP-2 form (Bursar accepts it in v1 too).
    pub fn v1_name(&self) -> String {
        match self {
            Network::Eip155(id) => V1_NAMES
                .iter()
                .find(|(_, known)| known == id)
                .map(|(name, _)| (*name).to_string())
                .unwrap_or_else(|| self.caip2()),
            Network::Other(text) => text.clone(),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::Eip155(id) => write!(f, "eip155:{id}"),
            Network::Other(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Network({self})")
    }
}

impl FromStr for Network {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Network::parse(s)
    }
}

impl Serialize for Network {
    /// Serializes as CAIP-2. v1 wire types serialize [`Network::v1_name`] themselves.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Network::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_map_to_caip2() {
        assert_eq!(Network::parse("base").unwrap(), Network::Eip155(8453));
        assert_eq!(
            Network::parse("base-sepolia").unwrap(),
            Network::Eip155(84_532)
        );
        assert_eq!(Network::Eip155(8453).v1_name(), "base");
        assert_eq!(Network::Eip155(DEV_CHAIN_ID).v1_name(), "eip155:31337");
        assert_eq!(Network::Eip155(84_532).caip2(), "eip155:84532");
    }

    #[test]
    fn caip2_parsing() {
        assert_eq!(Network::parse("eip155:1").unwrap(), Network::Eip155(1));
        assert!(Network::parse("eip155:+1").is_err());
        assert!(Network::parse("eip155:99999999999999999999999").is_err());
        assert!(Network::parse("eip155:").is_err());
        assert!(Network::parse(":1").is_err());
        assert!(Network::parse("basee").is_err());
        assert!(Network::parse("").is_err());
        assert_eq!(
            Network::parse("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp").unwrap(),
            Network::Other("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".into())
        );
    }
}
