//! The typed x402 model, and its v1 and v2 wire forms.
//!
//! Both protocol versions parse into one model at the edge:
//! - [`PaymentRequirements`] is the v2 shape (CAIP-2 network, `amount`); a v1 requirement is a
//!   [`v1::PaymentRequirements`] that splits into requirements plus its [`Resource`].
//! - [`PaymentRequired`] is what a seller answers with a 402, in either version.
//! - [`PaymentPayload`] is what a buyer sends back; in v2 it echoes the chosen requirement.
//!
//! A payload's scheme `payload` is decoded here too, once, into a [`SchemePayload`]; nothing past
//! this module looks at its JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::{self, CodecError};
use crate::money::Amount;
use crate::network::Network;
use crate::reason::Reason;
use crate::scheme::SchemePayload;
use crate::spelled::ChainAddress;

/// Largest JSON body Bursar parses for x402 documents and facilitator requests.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Most requirements Bursar reads from one 402 answer.
pub const ACCEPTS_MAX: usize = 32;

/// The protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum X402Version {
    V1,
    V2,
}

impl X402Version {
    pub fn number(self) -> u8 {
        match self {
            X402Version::V1 => 1,
            X402Version::V2 => 2,
        }
    }

    pub fn from_number(number: u64) -> Option<Self> {
        match number {
            1 => Some(X402Version::V1),
            2 => Some(X402Version::V2),
            _ => None,
        }
    }
}

impl Serialize for X402Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for X402Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = u64::deserialize(deserializer)?;
        X402Version::from_number(number)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported x402Version {number}")))
    }
}

/// What is being paid for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// v1 carries the output schema on each requirement; v2 moves it to extensions. Kept here.
    #[serde(default, skip_serializing)]
    pub output_schema: Option<Value>,
    /// Bazaar service metadata (v2): a short name for the service, topical tags and an icon,
    /// kept as sent (a catalog checks them before listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

/// One way to pay: scheme, network, price, asset and recipient. This is the v2 wire shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    pub network: Network,
    pub amount: Amount,
    pub asset: ChainAddress,
    pub pay_to: ChainAddress,
    pub max_timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl PaymentRequirements {
    /// The EIP-712 domain name and version a seller put in `extra`, if both are there.
    pub fn eip712_name_version(&self) -> Option<(&str, &str)> {
        let extra = self.extra.as_ref()?;
        let name = extra.get("name")?.as_str()?;
        let version = extra.get("version")?.as_str()?;
        Some((name, version))
    }
}

/// A seller's 402 answer: what it sells and the ways to pay.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRequired {
    pub version: X402Version,
    pub error: Option<String>,
    pub resource: Resource,
    pub accepts: Vec<PaymentRequirements>,
    pub extensions: Option<Value>,
}

/// A buyer's signed payment.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentPayload {
    pub version: X402Version,
    pub scheme: String,
    pub network: Network,
    /// v2 only: the requirement the buyer chose, echoed exactly as offered.
    pub accepted: Option<PaymentRequirements>,
    pub resource: Option<Resource>,
    /// The scheme's own payload, decoded when the document was read.
    pub payload: SchemePayload,
    pub extensions: Option<Value>,
}

/// Why an x402 document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("body is larger than {BODY_BYTES_MAX} bytes")]
    TooLarge,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unsupported x402Version {0}")]
    Version(String),
    #[error("{0}")]
    Invalid(String),
}

impl DecodeError {
    /// The x402 reason that best describes this error in a verify or settle response.
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::Version(_) => Reason::INVALID_X402_VERSION,
            _ => Reason::INVALID_PAYLOAD,
        }
    }
}

fn json_error(error: serde_json::Error) -> DecodeError {
    DecodeError::Json(error.to_string())
}

/// Reads only `x402Version` from a JSON document.
pub fn peek_version(json: &[u8]) -> Result<X402Version, DecodeError> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "x402Version")]
        version: Value,
    }
    if json.len() > BODY_BYTES_MAX {
        return Err(DecodeError::TooLarge);
    }
    let peek: Peek = serde_json::from_slice(json).map_err(json_error)?;
    peek.version
        .as_u64()
        .and_then(X402Version::from_number)
        .ok_or_else(|| DecodeError::Version(peek.version.to_string()))
}

/// The v1 wire forms.
pub mod v1 {
    use super::*;

    /// A v1 requirement: v2's fields plus the resource it pays for.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentRequirements {
        pub scheme: String,
        /// A v1 network name (`base`) or, for chains without one, CAIP-2.
        pub network: String,
        pub max_amount_required: Amount,
        pub resource: String,
        #[serde(default)]
        pub description: String,
        #[serde(default)]
        pub mime_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub output_schema: Option<Value>,
        pub pay_to: ChainAddress,
        pub max_timeout_seconds: u64,
        pub asset: ChainAddress,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extra: Option<Value>,
    }

    impl PaymentRequirements {
        pub fn from_model(requirements: &super::PaymentRequirements, resource: &Resource) -> Self {
            PaymentRequirements {
                scheme: requirements.scheme.clone(),
                network: requirements.network.v1_name(),
                max_amount_required: requirements.amount,
                resource: resource.url.clone(),
                description: resource.description.clone().unwrap_or_default(),
                mime_type: resource.mime_type.clone().unwrap_or_default(),
                output_schema: resource.output_schema.clone(),
                pay_to: requirements.pay_to.clone(),
                max_timeout_seconds: requirements.max_timeout_seconds,
                asset: requirements.asset.clone(),
                extra: requirements.extra.clone(),
            }
        }

        pub fn to_model(&self) -> Result<(super::PaymentRequirements, Resource), DecodeError> {
            let network =
                Network::parse(&self.network).map_err(|e| DecodeError::Invalid(e.to_string()))?;
            let requirements = super::PaymentRequirements {
                scheme: self.scheme.clone(),
                network,
                amount: self.max_amount_required,
                asset: self.asset.clone(),
                pay_to: self.pay_to.clone(),
                max_timeout_seconds: self.max_timeout_seconds,
                extra: self.extra.clone(),
            };
            let resource = Resource {
                url: self.resource.clone(),
                description: Some(self.description.clone()).filter(|d| !d.is_empty()),
                mime_type: Some(self.mime_type.clone()).filter(|m| !m.is_empty()),
                output_schema: self.output_schema.clone(),
                ..Resource::default()
            };
            Ok((requirements, resource))
        }
    }

    /// The v1 402 body.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentRequired {
        pub x402_version: u8,
        #[serde(default)]
        pub error: String,
        pub accepts: Vec<PaymentRequirements>,
    }

    /// The v1 `X-PAYMENT` document.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentPayload {
        pub x402_version: u8,
        pub scheme: String,
        pub network: String,
        pub payload: Value,
    }
}

/// The v2 wire forms.
pub mod v2 {
    use super::*;

    /// The v2 `PAYMENT-REQUIRED` document.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentRequired {
        pub x402_version: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
        pub resource: Resource,
        pub accepts: Vec<super::PaymentRequirements>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extensions: Option<Value>,
    }

    /// The v2 `PAYMENT-SIGNATURE` document.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentPayload {
        pub x402_version: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub resource: Option<Resource>,
        pub accepted: super::PaymentRequirements,
        pub payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extensions: Option<Value>,
    }
}

fn expect_version(found: u8, expected: X402Version) -> Result<(), DecodeError> {
    if found == expected.number() {
        Ok(())
    } else {
        Err(DecodeError::Version(found.to_string()))
    }
}

fn check_accepts(count: usize) -> Result<(), DecodeError> {
    if count > ACCEPTS_MAX {
        return Err(DecodeError::Invalid(format!(
            "more than {ACCEPTS_MAX} payment options"
        )));
    }
    Ok(())
}

impl PaymentRequired {
    /// The v1 402 JSON body.
    pub fn to_v1(&self) -> v1::PaymentRequired {
        v1::PaymentRequired {
            x402_version: 1,
            error: self.error.clone().unwrap_or_default(),
            accepts: self
                .accepts
                .iter()
                .map(|r| v1::PaymentRequirements::from_model(r, &self.resource))
                .collect(),
        }
    }

    /// The v2 document carried by the `PAYMENT-REQUIRED` header.
    pub fn to_v2(&self) -> v2::PaymentRequired {
        v2::PaymentRequired {
            x402_version: 2,
            error: self.error.clone(),
            resource: self.resource.clone(),
            accepts: self.accepts.clone(),
            extensions: self.extensions.clone(),
        }
    }

    pub fn to_v2_header(&self) -> String {
        codec::encode_header(&self.to_v2())
    }

    pub fn from_v2_header(header: &str) -> Result<Self, DecodeError> {
        let wire: v2::PaymentRequired = codec::decode_header(header)?;
        Self::from_v2(wire)
    }

    pub fn from_v2(wire: v2::PaymentRequired) -> Result<Self, DecodeError> {
        expect_version(wire.x402_version, X402Version::V2)?;
        check_accepts(wire.accepts.len())?;
        Ok(PaymentRequired {
            version: X402Version::V2,
            error: wire.error,
            resource: wire.resource,
            accepts: wire.accepts,
            extensions: wire.extensions,
        })
    }

    /// The document in its own version's JSON: the v1 body or the v2 `PAYMENT-REQUIRED`
    /// document (what an MCP payment-required result carries).
    pub fn to_json_value(&self) -> Value {
        let value = match self.version {
            X402Version::V1 => serde_json::to_value(self.to_v1()),
            X402Version::V2 => serde_json::to_value(self.to_v2()),
        };
        value.expect("a payment-required document serializes")
    }

    /// Reads a document of either version from its JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, DecodeError> {
        match peek_version(json)? {
            X402Version::V1 => Self::from_v1_body(json),
            X402Version::V2 => Self::from_v2(serde_json::from_slice(json).map_err(json_error)?),
        }
    }

    pub fn from_v1_body(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > BODY_BYTES_MAX {
            return Err(DecodeError::TooLarge);
        }
        let wire: v1::PaymentRequired = serde_json::from_slice(body).map_err(json_error)?;
        expect_version(wire.x402_version, X402Version::V1)?;
        check_accepts(wire.accepts.len())?;
        let mut resource = None;
        let mut accepts = Vec::with_capacity(wire.accepts.len());
        for requirement in &wire.accepts {
            let (requirements, this_resource) = requirement.to_model()?;
            resource.get_or_insert(this_resource);
            accepts.push(requirements);
        }
        Ok(PaymentRequired {
            version: X402Version::V1,
            error: Some(wire.error).filter(|e| !e.is_empty()),
            resource: resource.unwrap_or_default(),
            accepts,
            extensions: None,
        })
    }
}

impl PaymentPayload {
    /// Builds a v2 payload that echoes `accepted`.
    pub fn new_v2(
        accepted: PaymentRequirements,
        resource: Option<Resource>,
        payload: impl Into<SchemePayload>,
    ) -> Self {
        PaymentPayload {
            version: X402Version::V2,
            scheme: accepted.scheme.clone(),
            network: accepted.network.clone(),
            accepted: Some(accepted),
            resource,
            payload: payload.into(),
            extensions: None,
        }
    }

    pub fn new_v1(scheme: String, network: Network, payload: impl Into<SchemePayload>) -> Self {
        PaymentPayload {
            version: X402Version::V1,
            scheme,
            network,
            accepted: None,
            resource: None,
            payload: payload.into(),
            extensions: None,
        }
    }

    /// Decodes a header value of either version (`PAYMENT-SIGNATURE` or `X-PAYMENT`).
    pub fn from_header(header: &str) -> Result<Self, DecodeError> {
        let json = codec::decode_header_json(header)?;
        Self::from_json(&json)
    }

    /// Decodes a JSON document of either version.
    pub fn from_json(json: &[u8]) -> Result<Self, DecodeError> {
        match peek_version(json)? {
            X402Version::V1 => Self::from_v1(serde_json::from_slice(json).map_err(json_error)?),
            X402Version::V2 => Self::from_v2(serde_json::from_slice(json).map_err(json_error)?),
        }
    }

    pub fn from_v1(wire: v1::PaymentPayload) -> Result<Self, DecodeError> {
        expect_version(wire.x402_version, X402Version::V1)?;
        let network =
            Network::parse(&wire.network).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let payload = SchemePayload::decode(&wire.scheme, wire.payload);
        Ok(PaymentPayload::new_v1(wire.scheme, network, payload))
    }

    pub fn from_v2(wire: v2::PaymentPayload) -> Result<Self, DecodeError> {
        expect_version(wire.x402_version, X402Version::V2)?;
        Ok(PaymentPayload {
            version: X402Version::V2,
            scheme: wire.accepted.scheme.clone(),
            network: wire.accepted.network.clone(),
            payload: SchemePayload::decode(&wire.accepted.scheme, wire.payload),
            accepted: Some(wire.accepted),
            resource: wire.resource,
            extensions: wire.extensions,
        })
    }

    /// The wire document, as JSON, in this payload's version.
    pub fn to_json_value(&self) -> Value {
        let result = match (self.version, &self.accepted) {
            (X402Version::V2, Some(accepted)) => serde_json::to_value(v2::PaymentPayload {
                x402_version: 2,
                resource: self.resource.clone(),
                accepted: accepted.clone(),
                payload: self.payload.to_json_value(),
                extensions: self.extensions.clone(),
            }),
            _ => serde_json::to_value(v1::PaymentPayload {
                x402_version: 1,
                scheme: self.scheme.clone(),
                network: self.network.v1_name(),
                payload: self.payload.to_json_value(),
            }),
        };
        result.expect("payload serializes")
    }

    /// The header value: `PAYMENT-SIGNATURE` for v2, `X-PAYMENT` for v1.
    pub fn to_header(&self) -> String {
        codec::encode_header(&self.to_json_value())
    }

    /// The header name this payload travels in.
    pub fn header_name(&self) -> &'static str {
        match self.version {
            X402Version::V1 => codec::HEADER_X_PAYMENT,
            X402Version::V2 => codec::HEADER_PAYMENT_SIGNATURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: Network::Eip155(84_532),
            amount: Amount::from(10_000u64),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 60,
            extra: Some(json!({"name": "USDC", "version": "2"})),
        }
    }

    fn required() -> PaymentRequired {
        PaymentRequired {
            version: X402Version::V2,
            error: Some("PAYMENT-SIGNATURE header is required".into()),
            resource: Resource {
                url: "https://api.example.com/weather".into(),
                description: Some("Weather".into()),
                mime_type: Some("application/json".into()),
                ..Resource::default()
            },
            accepts: vec![requirements()],
            extensions: None,
        }
    }

    #[test]
    fn v2_wire_shape() {
        let value = serde_json::to_value(required().to_v2()).unwrap();
        assert_eq!(
            value,
            json!({
                "x402Version": 2,
                "error": "PAYMENT-SIGNATURE header is required",
                "resource": {"url": "https://api.example.com/weather", "description": "Weather", "mimeType": "application/json"},
                "accepts": [{
                    "scheme": "exact", "network": "eip155:84532", "amount": "10000",
                    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                    "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
                }]
            })
        );
        let back = PaymentRequired::from_v2_header(&required().to_v2_header()).unwrap();
        assert_eq!(back, required());
    }

    #[test]
    fn v1_wire_shape() {
        let body = serde_json::to_vec(&required().to_v1()).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            json!({
                "x402Version": 1,
                "error": "PAYMENT-SIGNATURE header is required",
                "accepts": [{
                    "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "10000",
                    "resource": "https://api.example.com/weather", "description": "Weather",
                    "mimeType": "application/json",
                    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
                    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                    "extra": {"name": "USDC", "version": "2"}
                }]
            })
        );
        let back = PaymentRequired::from_v1_body(&body).unwrap();
        assert_eq!(back.accepts, vec![requirements()]);
        assert_eq!(back.resource.url, "https://api.example.com/weather");
        assert_eq!(back.version, X402Version::V1);
    }

    #[test]
    fn payload_round_trips_in_both_versions() {
        let unreadable = SchemePayload::decode("exact", json!({"signature": "0x00"}));
        assert!(unreadable.exact_evm().is_err());
        let v2 = PaymentPayload::new_v2(requirements(), None, unreadable);
        let decoded = PaymentPayload::from_header(&v2.to_header()).unwrap();
        assert_eq!(decoded, v2);
        assert_eq!(v2.header_name(), "PAYMENT-SIGNATURE");

        let v1 = PaymentPayload::new_v1(
            "exact".into(),
            Network::Eip155(8453),
            SchemePayload::decode("exact", json!({"a": 1})),
        );
        let wire = v1.to_json_value();
        assert_eq!(wire["network"], "base");
        assert_eq!(PaymentPayload::from_header(&v1.to_header()).unwrap(), v1);
    }

    #[test]
    fn version_errors_are_named() {
        let doc = json!({"x402Version": 3, "accepted": {}, "payload": {}});
        let err = PaymentPayload::from_json(doc.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason(), Reason::INVALID_X402_VERSION);
        let doc = json!({"x402Version": "2"});
        assert!(matches!(
            PaymentPayload::from_json(doc.to_string().as_bytes()),
            Err(DecodeError::Version(_))
        ));
    }
}
