//! Header codec: standard base64 (with padding) of compact UTF-8 JSON.
//!
//! Every x402 header (`PAYMENT-REQUIRED`, `PAYMENT-SIGNATURE`, `PAYMENT-RESPONSE`, and v1's
//! `X-PAYMENT`, `X-PAYMENT-RESPONSE`) carries a JSON document this way. Output is always padded;
//! input may omit the padding. URL-safe base64 is rejected, as the reference decoders do.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest header value Bursar decodes. Real payloads are well under 4 KiB.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

pub const HEADER_PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
pub const HEADER_PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
pub const HEADER_PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
pub const HEADER_X_PAYMENT: &str = "X-PAYMENT";
pub const HEADER_X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";

const ENCODER: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("header is larger than {HEADER_BYTES_MAX} bytes")]
    TooLarge,
    #[error("header is not standard base64: {0}")]
    NotBase64(String),
    #[error("header does not decode to UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("header JSON has the wrong shape: {0}")]
    WrongShape(String),
}

/// Encodes a value as a header: compact JSON, then padded standard base64.
pub fn encode_header<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing our own types cannot fail: they contain no maps with non-string keys.
    let json = serde_json::to_vec(value).expect("x402 types serialize to JSON");
    ENCODER.encode(json)
}

/// Decodes a header value into `T`, with a size limit and errors that say which step failed.
pub fn decode_header<T: DeserializeOwned>(header: &str) -> Result<T, CodecError> {
    let json = decode_header_json(header)?;
    serde_json::from_slice(&json).map_err(|e| CodecError::WrongShape(e.to_string()))
}

/// Decodes a header value into raw JSON bytes, checking it is valid JSON.
pub fn decode_header_json(header: &str) -> Result<Vec<u8>, CodecError> {
    let header = header.trim();
    if header.len() > HEADER_BYTES_MAX {
        return Err(CodecError::TooLarge);
    }
    let json = DECODER
        .decode(header)
        .map_err(|e| CodecError::NotBase64(e.to_string()))?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&json).is_err() {
        return Err(CodecError::NotJson(match std::str::from_utf8(&json) {
            Ok(_) => "invalid JSON".to_string(),
            Err(_) => "not UTF-8".to_string(),
        }));
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn round_trip_is_padded_standard_base64() {
        let value = json!({"a": "b?>"});
        let header = encode_header(&value);
        assert!(header.ends_with('='), "{header} must be padded");
        assert_eq!(decode_header::<Value>(&header).unwrap(), value);
        let unpadded = header.trim_end_matches('=');
        assert_eq!(decode_header::<Value>(unpadded).unwrap(), value);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            decode_header::<Value>("***"),
            Err(CodecError::NotBase64(_))
        ));
        let url_safe = "eyJhIjoiYj8-In0"; // {"a":"b?>"} with '-' instead of '+'
        assert!(matches!(
            decode_header::<Value>(url_safe),
            Err(CodecError::NotBase64(_))
        ));
        let not_json = ENCODER.encode(b"hello");
        assert!(matches!(
            decode_header::<Value>(&not_json),
            Err(CodecError::NotJson(_))
        ));
        let huge = "A".repeat(HEADER_BYTES_MAX + 4);
        assert_eq!(decode_header::<Value>(&huge), Err(CodecError::TooLarge));
    }
}
