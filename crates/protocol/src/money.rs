//! Money: one integer type in atomic units.
//!
//! [`Amount`] is the only representation of a sum of money in Bursar. It is an unsigned 256-bit
//! integer counted in the asset's smallest unit (for USDC, 10^-6 USDC). Arithmetic is checked.
//! Decimals exist only for display and for parsing what a person typed ("0.01 USDC").
//! On the wire amounts are decimal strings of atomic units.

use std::fmt;
use std::str::FromStr;

use alloy_primitives::U256;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest decimal string accepted for an atomic amount: `U256::MAX` has 78 digits.
pub const AMOUNT_DIGITS_MAX: usize = 78;

/// A sum of money in atomic units of some asset.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(U256);

/// Why a string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount must be a decimal string of digits, got {0:?}")]
    NotDecimal(String),
    #[error("amount does not fit in 256 bits")]
    Overflow,
    #[error("amount has more than {decimals} decimal places")]
    TooPrecise { decimals: u8 },
    #[error("unknown asset unit {found:?}, expected {expected:?}")]
    WrongUnit { found: String, expected: String },
}

impl Amount {
    pub const ZERO: Amount = Amount(U256::ZERO);

    pub const fn from_atomic(atomic: U256) -> Self {
        Amount(atomic)
    }

    pub fn from_u128(atomic: u128) -> Self {
        Amount(U256::from(atomic))
    }

    pub const fn atomic(self) -> U256 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// Parses a decimal string of atomic units, as amounts travel on the wire.
    /// Only ASCII digits are accepted: no sign, no exponent, no whitespace, no hex.
    pub fn parse_atomic(text: &str) -> Result<Self, AmountError> {
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimal(truncate_for_error(text)));
        }
        // Leading zeros are tolerated, but never let a long string reach the parser.
        let significant = text.trim_start_matches('0');
        if significant.len() > AMOUNT_DIGITS_MAX {
            return Err(AmountError::Overflow);
        }
        if significant.is_empty() {
            return Ok(Amount::ZERO);
        }
        U256::from_str_radix(significant, 10)
            .map(Amount)
            .map_err(|_| AmountError::Overflow)
    }

    /// Parses a human amount such as `0.01` or `1.5 USDC` with the asset's decimals.
    /// When a unit is written it must match `symbol` (case-insensitive).
    pub fn parse_human(text: &str, decimals: u8, symbol: &str) -> Result<Self, AmountError> {
        let text = text.trim();
        let (number, unit) = match text.split_once(char::is_whitespace) {
            Some((number, unit)) => (number, Some(unit.trim())),
            None => (text, None),
        };
        if let Some(unit) = unit
            && !unit.eq_ignore_ascii_case(symbol)
        {
            return Err(AmountError::WrongUnit {
                found: unit.to_string(),
                expected: symbol.to_string(),
            });
        }
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(AmountError::Empty);
        }
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok(whole) || !digits_ok(fraction) {
            return Err(AmountError::NotDecimal(truncate_for_error(number)));
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > usize::from(decimals) {
            return Err(AmountError::TooPrecise { decimals });
        }
        let mut atomic_digits = String::with_capacity(whole.len() + usize::from(decimals));
        atomic_digits.push_str(whole);
        atomic_digits.push_str(fraction);
        for _ in fraction.len()..usize::from(decimals) {
            atomic_digits.push('0');
        }
        if atomic_digits.is_empty() {
            return Ok(Amount::ZERO);
        }
        Amount::parse_atomic(&atomic_digits)
    }

    /// Formats with the asset's decimals, trimming trailing zeros: `10000` with 6 decimals is `0.01`.
    pub fn to_human(self, decimals: u8) -> String {
        let digits = self.0.to_string();
        let decimals = usize::from(decimals);
        if decimals == 0 {
            return digits;
        }
        let padded = if digits.len() <= decimals {
            format!("{}{}", "0".repeat(decimals - digits.len() + 1), digits)
        } else {
            digits
        };
        let (whole, fraction) = padded.split_at(padded.len() - decimals);
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{fraction}")
        }
    }
}

fn truncate_for_error(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_string()
    } else {
        let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        shown.push('…');
        shown
    }
}

impl fmt::Display for Amount {
    /// Atomic units, as on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse_atomic(s)
    }
}

impl From<u64> for Amount {
    fn from(value: u64) -> Self {
        Amount(U256::from(value))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Amount::parse_atomic(&text).map_err(serde::de::Error::custom)
    }
}

/// Describes an asset for display: symbol and decimals. Never used for arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetUnit {
    pub symbol: String,
    pub decimals: u8,
}

impl AssetUnit {
    pub fn usdc() -> Self {
        AssetUnit {
            symbol: "USDC".to_string(),
            decimals: 6,
        }
    }

    pub fn format(&self, amount: Amount) -> String {
        format!("{} {}", amount.to_human(self.decimals), self.symbol)
    }

    pub fn parse(&self, text: &str) -> Result<Amount, AmountError> {
        Amount::parse_human(text, self.decimals, &self.symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_atomic_strictly() {
        assert_eq!(
            Amount::parse_atomic("10000").unwrap(),
            Amount::from(10_000u64)
        );
        assert_eq!(Amount::parse_atomic("000").unwrap(), Amount::ZERO);
        for bad in ["", "-1", "+1", "1e6", "0x10", " 1", "1.0", "１"] {
            assert!(
                Amount::parse_atomic(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
        let max = U256::MAX.to_string();
        assert_eq!(Amount::parse_atomic(&max).unwrap().atomic(), U256::MAX);
        let over = format!("{max}0");
        assert_eq!(Amount::parse_atomic(&over), Err(AmountError::Overflow));
        assert_eq!(
            Amount::parse_atomic(&"9".repeat(10_000)),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn human_round_trip() {
        let usdc = AssetUnit::usdc();
        assert_eq!(usdc.parse("0.01 USDC").unwrap(), Amount::from(10_000u64));
        assert_eq!(usdc.parse("1").unwrap(), Amount::from(1_000_000u64));
        assert_eq!(usdc.parse(".5 usdc").unwrap(), Amount::from(500_000u64));
        assert_eq!(
            usdc.parse("1.000000000").unwrap(),
            Amount::from(1_000_000u64)
        );
        assert_eq!(
            usdc.parse("0.0000001"),
            Err(AmountError::TooPrecise { decimals: 6 })
        );
        assert!(matches!(
            usdc.parse("1 ETH"),
            Err(AmountError::WrongUnit { .. })
        ));
        assert!(usdc.parse("1,5").is_err());
        assert!(usdc.parse(".").is_err());
        assert_eq!(usdc.format(Amount::from(10_000u64)), "0.01 USDC");
        assert_eq!(usdc.format(Amount::from(1_500_000u64)), "1.5 USDC");
        assert_eq!(usdc.format(Amount::ZERO), "0 USDC");
        assert_eq!(Amount::from(7u64).to_human(0), "7");
    }

    #[test]
    fn serde_is_a_decimal_string() {
        let json = serde_json::to_string(&Amount::from(42u64)).unwrap();
        assert_eq!(json, "\"42\"");
        let back: Amount = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Amount::from(42u64));
        assert!(
            serde_json::from_str::<Amount>("42").is_err(),
            "numbers are not amounts"
        );
    }

    #[test]
    fn checked_arithmetic() {
        let max = Amount::from_atomic(U256::MAX);
        assert_eq!(max.checked_add(Amount::from(1u64)), None);
        assert_eq!(Amount::ZERO.checked_sub(Amount::from(1u64)), None);
        assert_eq!(
            Amount::from(3u64).checked_sub(Amount::from(1u64)),
            Some(Amount::from(2u64))
        );
    }
}
