//! The facilitator HTTP API documents: `/verify`, `/settle` and `/supported`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec;
use crate::network::Network;
use crate::reason::Reason;
use crate::spelled::{ChainAddress, ChainTx};
use crate::types::{
    BODY_BYTES_MAX, DecodeError, PaymentPayload, PaymentRequirements, Resource, X402Version, v1, v2,
};

/// The body of `POST /verify` and `POST /settle`, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct FacilitatorRequest {
    pub version: X402Version,
    pub payload: PaymentPayload,
    pub requirements: PaymentRequirements,
    /// v1 requirements name the resource; v2 carries it in the payload.
    pub resource: Option<Resource>,
}

mod wire {
    use super::*;

    #[derive(Deserialize)]
    pub struct Peek {
        #[serde(rename = "x402Version", default)]
        pub version: Option<Value>,
        #[serde(rename = "paymentPayload")]
        pub payload: PeekPayload,
    }

    #[derive(Deserialize)]
    pub struct PeekPayload {
        #[serde(rename = "x402Version")]
        pub version: Value,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RequestV1 {
        pub x402_version: u8,
        pub payment_payload: v1::PaymentPayload,
        pub payment_requirements: v1::PaymentRequirements,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RequestV2 {
        pub x402_version: u8,
        pub payment_payload: v2::PaymentPayload,
        pub payment_requirements: PaymentRequirements,
    }
}

fn version_of(value: &Value) -> Result<X402Version, DecodeError> {
    value
        .as_u64()
        .and_then(X402Version::from_number)
        .ok_or_else(|| DecodeError::Version(value.to_string()))
}

/// Sets the top-level `x402Version` of a request body. The body must be a JSON object: serde also
/// reads structs from arrays, so an array can get this far, and indexing it by key would panic.
fn with_version(mut value: Value, version: u8) -> Result<Value, DecodeError> {
    let Some(object) = value.as_object_mut() else {
        return Err(DecodeError::Invalid(
            "request body must be a JSON object".to_string(),
        ));
    };
    object.insert("x402Version".to_string(), Value::from(version));
    Ok(value)
}

impl FacilitatorRequest {
    /// Parses a request body of either version. The top-level `x402Version` may be absent, in which
    /// case the payload's version is used; when present the two must agree.
    pub fn from_json(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > BODY_BYTES_MAX {
            return Err(DecodeError::TooLarge);
        }
        let peek: wire::Peek =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        let payload_version = version_of(&peek.payload.version)?;
        if let Some(top) = &peek.version
            && version_of(top)? != payload_version
        {
            return Err(DecodeError::Version(format!(
                "request says {top} but its paymentPayload says {}",
                payload_version.number()
            )));
        }
        let json_error = |e: serde_json::Error| DecodeError::Json(e.to_string());
        match payload_version {
            X402Version::V1 => {
                let value = with_version(serde_json::from_slice(body).map_err(json_error)?, 1)?;
                let request: wire::RequestV1 = serde_json::from_value(value).map_err(json_error)?;
                let (requirements, resource) = request.payment_requirements.to_model()?;
                Ok(FacilitatorRequest {
                    version: X402Version::V1,
                    payload: PaymentPayload::from_v1(request.payment_payload)?,
                    requirements,
                    resource: Some(resource),
                })
            }
            X402Version::V2 => {
                let value = with_version(serde_json::from_slice(body).map_err(json_error)?, 2)?;
                let request: wire::RequestV2 = serde_json::from_value(value).map_err(json_error)?;
                Ok(FacilitatorRequest {
                    version: X402Version::V2,
                    payload: PaymentPayload::from_v2(request.payment_payload)?,
                    requirements: request.payment_requirements,
                    resource: None,
                })
            }
        }
    }

    /// The request body in this request's version.
    pub fn to_json_value(&self) -> Value {
        let payload = self.payload.to_json_value();
        match self.version {
            X402Version::V1 => serde_json::json!({
                "x402Version": 1,
                "paymentPayload": payload,
                "paymentRequirements": v1::PaymentRequirements::from_model(
                    &self.requirements,
                    self.resource.as_ref().unwrap_or(&Resource::default()),
                ),
            }),
            X402Version::V2 => serde_json::json!({
                "x402Version": 2,
                "paymentPayload": payload,
                "paymentRequirements": self.requirements,
            }),
        }
    }

    /// The network name as this request's version writes it.
    pub fn network_name(&self) -> String {
        network_name(&self.requirements.network, self.version)
    }
}

/// The network as a version writes it: v1 names for v1, CAIP-2 for v2.
pub fn network_name(network: &Network, version: X402Version) -> String {
    match version {
        X402Version::V1 => network.v1_name(),
        X402Version::V2 => network.caip2(),
    }
}

/// The answer to `/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub invalid_reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<ChainAddress>,
}

impl VerifyResponse {
    pub fn valid(payer: ChainAddress) -> Self {
        VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(payer),
        }
    }

    pub fn invalid(
        reason: Reason,
        message: impl Into<String>,
        payer: Option<ChainAddress>,
    ) -> Self {
        VerifyResponse {
            is_valid: false,
            invalid_reason: Some(reason),
            invalid_message: Some(message.into()),
            payer,
        }
    }
}

/// The answer to `/settle`, and the document in `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub error_reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<ChainAddress>,
    /// The transaction hash; empty on failure.
    #[serde(default)]
    pub transaction: ChainTx,
    #[serde(default)]
    pub network: String,
}

impl SettleResponse {
    pub fn failed(
        reason: Reason,
        message: impl Into<String>,
        payer: Option<ChainAddress>,
        network: String,
    ) -> Self {
        SettleResponse {
            success: false,
            error_reason: Some(reason),
            error_message: Some(message.into()),
            payer,
            transaction: ChainTx::default(),
            network,
        }
    }

    pub fn to_header(&self) -> String {
        codec::encode_header(self)
    }

    pub fn from_header(header: &str) -> Result<Self, DecodeError> {
        Ok(codec::decode_header(header)?)
    }
}

/// One (version, scheme, network) a facilitator handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: u8,
    pub scheme: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The answer to `/supported`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Amount;
    use serde_json::json;

    fn v2_body() -> Value {
        json!({
            "x402Version": 2,
            "paymentPayload": {
                "x402Version": 2,
                "accepted": {"scheme": "exact", "network": "eip155:31337", "amount": "5", "asset": "0xa",
                             "payTo": "0xb", "maxTimeoutSeconds": 60},
                "payload": {"x": 1}
            },
            "paymentRequirements": {"scheme": "exact", "network": "eip155:31337", "amount": "5", "asset": "0xa",
                                    "payTo": "0xb", "maxTimeoutSeconds": 60}
        })
    }

    #[test]
    fn parses_v2_and_round_trips() {
        let request = FacilitatorRequest::from_json(v2_body().to_string().as_bytes()).unwrap();
        assert_eq!(request.version, X402Version::V2);
        assert_eq!(request.requirements.amount, Amount::from(5u64));
        assert_eq!(request.to_json_value(), v2_body());
    }

    #[test]
    fn parses_v1() {
        let body = json!({
            "x402Version": 1,
            "paymentPayload": {"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}},
            "paymentRequirements": {"scheme": "exact", "network": "base", "maxAmountRequired": "7",
                "resource": "http://x/y", "description": "", "mimeType": "", "payTo": "0xb",
                "maxTimeoutSeconds": 5, "asset": "0xa"}
        });
        let request = FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.version, X402Version::V1);
        assert_eq!(request.requirements.network, Network::Eip155(8453));
        assert_eq!(request.network_name(), "base");
        assert_eq!(request.resource.unwrap().url, "http://x/y");
    }

    #[test]
    fn version_disagreement_is_an_error() {
        let mut body = v2_body();
        body["x402Version"] = json!(1);
        let err = FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason(), Reason::INVALID_X402_VERSION);
    }

    #[test]
    fn reasons_are_an_open_set() {
        let response: VerifyResponse =
            serde_json::from_value(json!({"isValid": false, "invalidReason": "something_new"}))
                .unwrap();
        assert_eq!(response.invalid_reason.unwrap().as_str(), "something_new");
    }
}
