//! # bursar-buyer
//!
//! A paying HTTP client for x402, built on reqwest. [`PayingClient::send`] sends a request; when
//! the seller answers `402 Payment Required` it picks the cheapest offer it is allowed to pay,
//! signs an EIP-3009 authorization (the `exact` scheme on EVM) and sends the request again,
//! once, with the payment.
//!
//! Layering: `bursar-protocol` (documents, signing) → this crate. Keys stay behind the
//! [`PaymentSigner`] trait: a local [`PrivateKeySigner`] implements it, and other key stores can.
//!
//! [`PayingClient::send`] is three steps, each public so a caller can put its own between them
//! (budgets, policy, a reservation before the signature): [`PayingClient::ask`] sends the request
//! and, on a 402, returns the [`Quote`] it would pay (the offer chosen and the authorization to
//! sign); [`PayingClient::sign`] signs a quote; [`PayingClient::pay`] sends the request again
//! with the signed payment. Each returns its result; nothing is kept in the client.
//!
//! Spending rules, all checked before anything is signed:
//! - A per-payment maximum ([`PayingClient::max_amount`]) is required. A client without one pays
//!   nothing: every 402 ends in [`BuyerError::NoPayableRequirement`]. The maximum is in atomic
//!   units and applies to whatever asset an offer names; restrict assets with
//!   [`PayingClient::allow_asset`] to give it one meaning.
//! - Optional allow-lists of networks and assets. When a list is empty, anything is allowed.
//! - Only `exact` offers on `eip155` networks whose `extra` names the token's EIP-712 domain.
//!
//! The payment goes in the same protocol version as the 402: v2 (`PAYMENT-REQUIRED` header)
//! echoes the chosen requirement as `accepted` in `PAYMENT-SIGNATURE`; v1 (JSON body) sends
//! `X-PAYMENT`. If the seller answers 402 again, the client does not pay again: it returns
//! [`BuyerError::PaymentRejected`]. A request that already carries a payment header is sent as
//! is and never paid for.

use std::sync::Arc;

pub mod mcp;

use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::Eip712Domain;
use bursar_protocol::codec::{
    HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT,
    HEADER_X_PAYMENT_RESPONSE,
};
use bursar_protocol::exact_evm::{self, Authorization, ExactEvm, SCHEME_EXACT};
use bursar_protocol::scheme::PaymentScheme;
use bursar_protocol::types::BODY_BYTES_MAX;
use bursar_protocol::{
    Address, Amount, AssetUnit, Bytes, Network, PaymentPayload, PaymentRequired,
    PaymentRequirements, SettleResponse, X402Version,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

/// Largest request body the client buffers (it is sent twice when payment is needed).
pub const REQUEST_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Largest response body the client reads.
pub const RESPONSE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest 402 body read to find v1 payment requirements.
pub const PAYMENT_REQUIRED_BYTES_MAX: usize = BODY_BYTES_MAX;

/// Everything that can go wrong while sending or paying.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuyerError {
    #[error("http request failed: {0}")]
    Http(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body is {0} bytes, more than the {REQUEST_BODY_BYTES_MAX} bytes allowed")]
    RequestTooLarge(usize),
    #[error("response body is larger than {RESPONSE_BODY_BYTES_MAX} bytes")]
    ResponseTooLarge,
    #[error("the seller's 402 answer could not be read: {0}")]
    InvalidPaymentRequired(String),
    /// No offer passed the client's rules; `reasons` says why, offer by offer.
    #[error("no payable requirement among {} offered: {}", .offered.len(), .reasons.join("; "))]
    NoPayableRequirement {
        offered: Vec<PaymentRequirements>,
        reasons: Vec<String>,
    },
    #[error("signing the payment failed: {0}")]
    Signer(String),
    /// The seller answered 402 to the paid request. The client did not pay again.
    #[error("payment rejected by the seller: {reason}")]
    PaymentRejected {
        reason: String,
        /// The settlement the seller reported, when it sent one.
        settlement: Option<Box<SettleResponse>>,
    },
}

/// Signs EIP-3009 authorizations for one address.
#[async_trait::async_trait]
pub trait PaymentSigner: Send + Sync {
    /// The address that pays.
    fn address(&self) -> Address;

    /// Signs `authorization` under the token's EIP-712 `domain`: a 65-byte `r || s || v` signature.
    async fn sign_authorization(
        &self,
        authorization: &Authorization,
        domain: &Eip712Domain,
    ) -> Result<Bytes, BuyerError>;
}

#[async_trait::async_trait]
impl PaymentSigner for PrivateKeySigner {
    fn address(&self) -> Address {
        alloy_signer_local::PrivateKeySigner::address(self)
    }

    async fn sign_authorization(
        &self,
        authorization: &Authorization,
        domain: &Eip712Domain,
    ) -> Result<Bytes, BuyerError> {
        exact_evm::sign_authorization(self, authorization, domain)
            .map_err(|e| BuyerError::Signer(e.to_string()))
    }
}

/// What a 402 asks for and what the client would sign for it: the seller's whole answer, the
/// offer chosen and the authorization (payer, payee, value, validity window, nonce). Returned by
/// [`PayingClient::ask`]; nothing is signed yet.
#[derive(Debug, Clone)]
pub struct Quote {
    pub required: PaymentRequired,
    pub requirement: PaymentRequirements,
    pub authorization: Authorization,
}

/// What [`PayingClient::ask`] found.
#[derive(Debug)]
pub enum Asked {
    /// The seller answered without asking for payment (or the request already carried one).
    Answered(Box<PaidResponse>),
    /// The seller asked for payment, and this is what the client would pay.
    PaymentRequired(Box<Quote>),
}

/// A quote's signed payment, ready to send with [`PayingClient::pay`].
#[derive(Debug, Clone)]
pub struct SignedPayment {
    payload: PaymentPayload,
    header: (&'static str, HeaderValue),
}

impl SignedPayment {
    /// The payment payload as it goes in the header.
    pub fn payload(&self) -> &PaymentPayload {
        &self.payload
    }
}

/// A request to send, with its body buffered so it can be sent again with a payment.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// Set for a tool call of an MCP server ([`RequestSpec::tool_call`]): the call is made over
    /// MCP, and `url` and `body` only account for it.
    pub tool: Option<Box<mcp::ToolCall>>,
}

impl RequestSpec {
    pub fn new(method: Method, url: &str) -> Result<Self, BuyerError> {
        let url = Url::parse(url).map_err(|e| BuyerError::InvalidRequest(format!("url: {e}")))?;
        Ok(RequestSpec {
            method,
            url,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            tool: None,
        })
    }

    pub fn get(url: &str) -> Result<Self, BuyerError> {
        Self::new(Method::GET, url)
    }

    pub fn post(url: &str, body: impl Into<bytes::Bytes>) -> Result<Self, BuyerError> {
        Ok(Self::new(Method::POST, url)?.body(body))
    }

    pub fn body(mut self, body: impl Into<bytes::Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Result<Self, BuyerError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| BuyerError::InvalidRequest(format!("header name: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| BuyerError::InvalidRequest(format!("header value: {e}")))?;
        self.headers.insert(name, value);
        Ok(self)
    }
}

impl TryFrom<reqwest::Request> for RequestSpec {
    type Error = BuyerError;

    /// Takes a built reqwest request; its body must be in memory (not a stream).
    fn try_from(request: reqwest::Request) -> Result<Self, BuyerError> {
        let body = match request.body() {
            None => bytes::Bytes::new(),
            Some(body) => match body.as_bytes() {
                Some(bytes) => bytes::Bytes::copy_from_slice(bytes),
                None => {
                    return Err(BuyerError::InvalidRequest(
                        "a streaming body cannot be replayed with a payment".into(),
                    ));
                }
            },
        };
        Ok(RequestSpec {
            method: request.method().clone(),
            url: request.url().clone(),
            headers: request.headers().clone(),
            body,
            tool: None,
        })
    }
}

/// A response, and the payment made for it if there was one.
#[derive(Debug, Clone)]
pub struct PaidResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    pub payment: Option<PaymentReceipt>,
}

/// What the client signed, and what the seller reported about settling it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentReceipt {
    pub version: X402Version,
    /// The requirement paid, as the seller offered it.
    pub requirement: PaymentRequirements,
    /// The signed authorization (from, to, value, validity window, nonce).
    pub authorization: Authorization,
    /// The seller's `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`, decoded, when it sent one.
    pub settlement: Option<SettleResponse>,
}

/// An HTTP client that pays x402 sellers within limits.
#[derive(Clone)]
pub struct PayingClient {
    http: reqwest::Client,
    signer: Arc<dyn PaymentSigner>,
    max_amount: Option<Amount>,
    allowed_networks: Vec<Network>,
    allowed_assets: Vec<(Network, Address)>,
    units: Vec<(Network, Address, AssetUnit)>,
    /// Read only the v1 JSON body of a 402, ignoring a v2 `PAYMENT-REQUIRED` header.
    v1_only: bool,
}

impl std::fmt::Debug for PayingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayingClient")
            .field("payer", &self.signer.address())
            .field("max_amount", &self.max_amount)
            .field("allowed_networks", &self.allowed_networks)
            .field("allowed_assets", &self.allowed_assets)
            .finish_non_exhaustive()
    }
}

impl PayingClient {
    /// A client that pays nothing until [`PayingClient::max_amount`] is set.
    pub fn new(http: reqwest::Client, signer: Arc<dyn PaymentSigner>) -> Self {
        let known_usdc = [
            (84_532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
            (8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        ];
        let units = known_usdc
            .iter()
            .filter_map(|(chain, address)| {
                Some((
                    Network::Eip155(*chain),
                    address.parse().ok()?,
                    AssetUnit::usdc(),
                ))
            })
            .collect();
        PayingClient {
            http,
            signer,
            max_amount: None,
            allowed_networks: Vec::new(),
            allowed_assets: Vec::new(),
            units,
            v1_only: false,
        }
    }

    /// The most the client pays for one request, in atomic units of the offer's asset. Required.
    pub fn max_amount(mut self, max: Amount) -> Self {
        self.max_amount = Some(max);
        self
    }

    /// Pays only on the networks allowed this way (any network when none is).
    pub fn allow_network(mut self, network: Network) -> Self {
        self.allowed_networks.push(network);
        self
    }

    /// Pays only in the assets allowed this way (any asset when none is).
    pub fn allow_asset(mut self, network: Network, asset: Address) -> Self {
        self.allowed_assets.push((network, asset));
        self
    }

    /// How to display amounts of an asset in messages. USDC on Base and Base Sepolia is known.
    pub fn asset_unit(mut self, network: Network, asset: Address, unit: AssetUnit) -> Self {
        self.units.push((network, asset, unit));
        self
    }

    /// Pays with x402 v1 even when the seller also offers v2 (for sellers or tests that need
    /// the legacy form). By default the v2 header is preferred and the v1 body is the fallback.
    pub fn v1_only(mut self, v1_only: bool) -> Self {
        self.v1_only = v1_only;
        self
    }

    /// The paying address.
    pub fn payer(&self) -> Address {
        self.signer.address()
    }

    /// Sends the request, paying once if the seller asks for payment: [`PayingClient::ask`],
    /// [`PayingClient::sign`], [`PayingClient::pay`]. See the crate docs.
    pub async fn send(&self, request: RequestSpec) -> Result<PaidResponse, BuyerError> {
        match self.ask(&request).await? {
            Asked::Answered(response) => Ok(*response),
            Asked::PaymentRequired(quote) => {
                let signed = self.sign(&quote).await?;
                self.pay(&request, *quote, signed).await
            }
        }
    }

    /// Sends the request as it is. On a 402 (to a request without a payment header), reads what
    /// the seller asks for and chooses the offer to pay; nothing is signed.
    pub async fn ask(&self, request: &RequestSpec) -> Result<Asked, BuyerError> {
        if request.body.len() > REQUEST_BODY_BYTES_MAX {
            return Err(BuyerError::RequestTooLarge(request.body.len()));
        }
        if let Some(call) = &request.tool {
            return self.ask_tool(call).await;
        }
        let carries_payment = request.headers.contains_key(HEADER_PAYMENT_SIGNATURE)
            || request.headers.contains_key(HEADER_X_PAYMENT);
        let first = self.execute(request, None).await?;
        if first.status() != StatusCode::PAYMENT_REQUIRED || carries_payment {
            return Ok(Asked::Answered(Box::new(finish(first, None).await?)));
        }
        let required = read_payment_required(first, self.v1_only).await?;
        Ok(Asked::PaymentRequired(Box::new(self.quote(required)?)))
    }

    /// What the client would pay for `required`, however the terms arrived (an HTTP 402, an MCP
    /// tool result): the offer chosen by the client's rules and the authorization to sign.
    /// Nothing is signed.
    pub fn quote(&self, required: PaymentRequired) -> Result<Quote, BuyerError> {
        let requirement = self.choose(&required)?.clone();
        // The scheme builds what is signed (`PaymentScheme::message`); the signer signs it as
        // EIP-712 typed data, so a remote signer sees what it signs.
        let authorization = ExactEvm::message(&requirement, self.signer.address(), now())
            .map_err(BuyerError::InvalidPaymentRequired)?;
        Ok(Quote {
            required,
            requirement,
            authorization,
        })
    }

    /// Signs a quote's authorization and encodes the payment header, in the protocol version of
    /// the 402.
    pub async fn sign(&self, quote: &Quote) -> Result<SignedPayment, BuyerError> {
        let payload = self
            .payload(&quote.required, &quote.requirement, &quote.authorization)
            .await?;
        let value = HeaderValue::from_str(&payload.to_header())
            .map_err(|e| BuyerError::Signer(format!("payment header: {e}")))?;
        Ok(SignedPayment {
            header: (payload.header_name(), value),
            payload,
        })
    }

    /// Sends the request again with the signed payment. A 402 to it is
    /// [`BuyerError::PaymentRejected`]: the client does not pay again.
    pub async fn pay(
        &self,
        request: &RequestSpec,
        quote: Quote,
        signed: SignedPayment,
    ) -> Result<PaidResponse, BuyerError> {
        let Quote {
            required,
            requirement,
            authorization,
        } = quote;
        tracing::info!(
            url = %request.url,
            amount = %self.describe(&requirement, requirement.amount),
            network = %requirement.network,
            pay_to = %requirement.pay_to,
            version = required.version.number(),
            "paying for request"
        );
        if let Some(call) = &request.tool {
            return self
                .pay_tool(call, required, requirement, authorization, signed)
                .await;
        }
        let second = self.execute(request, Some(signed.header)).await?;
        let settlement = settlement_of(second.headers());
        if second.status() == StatusCode::PAYMENT_REQUIRED {
            let reason = rejection_reason(second, settlement.as_ref()).await;
            tracing::warn!(url = %request.url, %reason, "payment rejected; not paying again");
            return Err(BuyerError::PaymentRejected {
                reason,
                settlement: settlement.map(Box::new),
            });
        }
        let receipt = PaymentReceipt {
            version: required.version,
            requirement,
            authorization,
            settlement,
        };
        finish(second, Some(receipt)).await
    }

    /// [`PayingClient::ask`] for a tool call: the call without payment.
    async fn ask_tool(&self, call: &mcp::ToolCall) -> Result<Asked, BuyerError> {
        match mcp::call(&self.http, call, None).await? {
            mcp::Answer::PaymentRequired(required) => {
                Ok(Asked::PaymentRequired(Box::new(self.quote(*required)?)))
            }
            mcp::Answer::Result(result) => match mcp::payment_required_in(&result) {
                Some(required) => Ok(Asked::PaymentRequired(Box::new(self.quote(required?)?))),
                None => Ok(Asked::Answered(Box::new(mcp::response(&result, None)?))),
            },
        }
    }

    /// [`PayingClient::pay`] for a tool call: the call again with the payment in `_meta`. Asked
    /// for payment again, the client does not pay again.
    async fn pay_tool(
        &self,
        call: &mcp::ToolCall,
        required: PaymentRequired,
        requirement: PaymentRequirements,
        authorization: Authorization,
        signed: SignedPayment,
    ) -> Result<PaidResponse, BuyerError> {
        tracing::info!(
            server = %call.server,
            tool = %call.name,
            amount = %self.describe(&requirement, requirement.amount),
            network = %requirement.network,
            pay_to = %requirement.pay_to,
            "paying for tool call"
        );
        let result = match mcp::call(&self.http, call, Some(&signed.payload)).await? {
            mcp::Answer::PaymentRequired(again) => {
                return Err(BuyerError::PaymentRejected {
                    reason: again
                        .error
                        .unwrap_or_else(|| "payment required again".into()),
                    settlement: None,
                });
            }
            mcp::Answer::Result(result) => result,
        };
        let settlement = mcp::settlement(&result);
        if let Some(again) = mcp::payment_required_in(&result) {
            let reason = match (&settlement, again) {
                (Some(failed), _) if !failed.success => failed
                    .error_reason
                    .as_ref()
                    .map(|reason| reason.to_string())
                    .unwrap_or_else(|| "settlement failed".into()),
                (_, Ok(again)) => again
                    .error
                    .unwrap_or_else(|| "payment required again".into()),
                (_, Err(error)) => error.to_string(),
            };
            tracing::warn!(tool = %call.name, %reason, "tool payment rejected; not paying again");
            return Err(BuyerError::PaymentRejected {
                reason,
                settlement: settlement.map(Box::new),
            });
        }
        let receipt = PaymentReceipt {
            version: required.version,
            requirement,
            authorization,
            settlement,
        };
        mcp::response(&result, Some(receipt))
    }

    /// The offer to pay: the cheapest that passes every rule.
    fn choose<'a>(
        &self,
        required: &'a PaymentRequired,
    ) -> Result<&'a PaymentRequirements, BuyerError> {
        let refuse = |reasons: Vec<String>| BuyerError::NoPayableRequirement {
            offered: required.accepts.clone(),
            reasons,
        };
        if required.accepts.is_empty() {
            return Err(refuse(vec!["the seller offered no way to pay".into()]));
        }
        let Some(max) = self.max_amount else {
            return Err(refuse(vec![
                "no per-payment maximum is set (PayingClient::max_amount)".into(),
            ]));
        };
        let mut reasons = Vec::new();
        let mut too_expensive: Vec<&PaymentRequirements> = Vec::new();
        let mut payable: Vec<&PaymentRequirements> = Vec::new();
        for offer in &required.accepts {
            match self.refusal(offer) {
                Some(reason) => reasons.push(reason),
                None if offer.amount > max => too_expensive.push(offer),
                None => payable.push(offer),
            }
        }
        if let Some(cheapest) = payable.iter().min_by_key(|offer| offer.amount) {
            return Ok(cheapest);
        }
        if let Some(cheapest) = too_expensive.iter().min_by_key(|offer| offer.amount) {
            reasons.push(format!(
                "cheapest offer {} exceeds your maximum {}",
                self.describe(cheapest, cheapest.amount),
                self.describe(cheapest, max)
            ));
        }
        Err(refuse(reasons))
    }

    /// Why an offer cannot be paid, price aside.
    fn refusal(&self, offer: &PaymentRequirements) -> Option<String> {
        if offer.scheme != SCHEME_EXACT {
            return Some(format!(
                "scheme {:?} is not supported (only \"exact\")",
                offer.scheme
            ));
        }
        if offer.network.chain_id().is_none() {
            return Some(format!("network {} is not an EVM network", offer.network));
        }
        if !self.allowed_networks.is_empty() && !self.allowed_networks.contains(&offer.network) {
            return Some(format!("network {} is not allowed", offer.network));
        }
        if offer.eip712_name_version().is_none() {
            return Some(format!(
                "offer on {} does not name the token's EIP-712 domain in extra",
                offer.network
            ));
        }
        let Some(asset) = offer.asset.evm() else {
            return Some(format!("asset {:?} is not an EVM address", offer.asset));
        };
        if offer.pay_to.evm().is_none() {
            return Some(format!("payTo {:?} is not an EVM address", offer.pay_to));
        }
        if !self.allowed_assets.is_empty()
            && !self
                .allowed_assets
                .iter()
                .any(|(network, allowed)| *network == offer.network && *allowed == asset)
        {
            return Some(format!("asset {asset} on {} is not allowed", offer.network));
        }
        None
    }

    /// An amount of an offer's asset, for people.
    fn describe(&self, offer: &PaymentRequirements, amount: Amount) -> String {
        let asset = offer.asset.evm();
        self.units
            .iter()
            .rev()
            .find(|(network, address, _)| *network == offer.network && Some(*address) == asset)
            .map(|(_, _, unit)| unit.format(amount))
            .unwrap_or_else(|| format!("{amount} atomic units of {}", offer.asset))
    }

    async fn payload(
        &self,
        required: &PaymentRequired,
        requirement: &PaymentRequirements,
        authorization: &Authorization,
    ) -> Result<PaymentPayload, BuyerError> {
        // `choose` checked all of these; failing here is still an error, never a panic.
        let invalid = |what: &str| BuyerError::InvalidPaymentRequired(what.to_string());
        let chain_id = requirement
            .network
            .chain_id()
            .ok_or_else(|| invalid("network is not EVM"))?;
        let (name, version) = requirement
            .eip712_name_version()
            .ok_or_else(|| invalid("no EIP-712 domain in extra"))?;
        let asset = requirement
            .asset
            .evm()
            .ok_or_else(|| invalid("asset is not an address"))?;
        let domain = exact_evm::token_domain(name, version, chain_id, asset);
        let signature = self
            .signer
            .sign_authorization(authorization, &domain)
            .await?;
        let scheme_payload = ExactEvm::payload(authorization.clone(), signature);
        let payload = match required.version {
            // The seller's extensions are echoed, as x402 v2 clients do: a facilitator catalogs
            // the resource from its `bazaar` extension.
            X402Version::V2 => PaymentPayload {
                extensions: required.extensions.clone(),
                ..PaymentPayload::new_v2(
                    requirement.clone(),
                    Some(required.resource.clone()),
                    scheme_payload,
                )
            },
            X402Version::V1 => PaymentPayload::new_v1(
                requirement.scheme.clone(),
                requirement.network.clone(),
                scheme_payload,
            ),
        };
        Ok(payload)
    }

    async fn execute(
        &self,
        request: &RequestSpec,
        payment: Option<(&'static str, HeaderValue)>,
    ) -> Result<reqwest::Response, BuyerError> {
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .headers(request.headers.clone());
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        if let Some((name, value)) = payment {
            builder = builder.header(name, value);
        }
        builder.send().await.map_err(|e| http_error(&e))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The payment requirements of a 402: the v2 header if there is one, else the v1 JSON body.
async fn read_payment_required(
    response: reqwest::Response,
    v1_only: bool,
) -> Result<PaymentRequired, BuyerError> {
    let header = response
        .headers()
        .get(HEADER_PAYMENT_REQUIRED)
        .filter(|_| !v1_only)
        .map(|value| value.to_str().map(str::to_string));
    let from_header = match header {
        None => None,
        Some(Ok(text)) => Some(PaymentRequired::from_v2_header(&text).map_err(|e| e.to_string())),
        Some(Err(_)) => Some(Err(
            "PAYMENT-REQUIRED header is not visible ASCII".to_string()
        )),
    };
    if let Some(Ok(required)) = from_header {
        return Ok(required);
    }
    let body = read_body(response, PAYMENT_REQUIRED_BYTES_MAX).await;
    let from_body = match body {
        Ok(Some(body)) => PaymentRequired::from_v1_body(&body).map_err(|e| e.to_string()),
        Ok(None) => Err(format!(
            "402 body is larger than {PAYMENT_REQUIRED_BYTES_MAX} bytes"
        )),
        Err(error) => Err(error.to_string()),
    };
    match (from_header, from_body) {
        (_, Ok(required)) => Ok(required),
        (Some(Err(header_error)), Err(_)) => Err(BuyerError::InvalidPaymentRequired(format!(
            "PAYMENT-REQUIRED header: {header_error}"
        ))),
        (_, Err(body_error)) => Err(BuyerError::InvalidPaymentRequired(format!(
            "no PAYMENT-REQUIRED header and the body is not a v1 402 document: {body_error}"
        ))),
    }
}

/// The settlement header of either version, decoded.
fn settlement_of(headers: &HeaderMap) -> Option<SettleResponse> {
    [HEADER_PAYMENT_RESPONSE, HEADER_X_PAYMENT_RESPONSE]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .and_then(|text| match SettleResponse::from_header(text) {
            Ok(settlement) => Some(settlement),
            Err(error) => {
                tracing::warn!(%error, "seller's settlement header could not be decoded");
                None
            }
        })
}

/// Why a seller refused a paid request, from what it said.
async fn rejection_reason(
    response: reqwest::Response,
    settlement: Option<&SettleResponse>,
) -> String {
    if let Some(settlement) = settlement
        && !settlement.success
    {
        let reason = settlement
            .error_reason
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "settlement failed".into());
        return match &settlement.error_message {
            Some(message) if !message.is_empty() => format!("{reason}: {message}"),
            _ => reason,
        };
    }
    let header_error = response
        .headers()
        .get(HEADER_PAYMENT_REQUIRED)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| PaymentRequired::from_v2_header(text).ok())
        .and_then(|required| required.error);
    let body_error = match read_body(response, PAYMENT_REQUIRED_BYTES_MAX).await {
        Ok(Some(body)) => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("error")?.as_str().map(str::to_string))
            .filter(|error| !error.is_empty()),
        _ => None,
    };
    header_error
        .or(body_error)
        .unwrap_or_else(|| "the seller answered 402 again without saying why".into())
}

async fn finish(
    response: reqwest::Response,
    payment: Option<PaymentReceipt>,
) -> Result<PaidResponse, BuyerError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_body(response, RESPONSE_BODY_BYTES_MAX)
        .await?
        .ok_or(BuyerError::ResponseTooLarge)?;
    Ok(PaidResponse {
        status,
        headers,
        body: body.into(),
        payment,
    })
}

/// Reads at most `limit` bytes of body; `None` when it is larger.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, BuyerError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| http_error(&e))? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn http_error(error: &dyn std::error::Error) -> BuyerError {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    BuyerError::Http(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bursar_protocol::Resource;
    use serde_json::json;

    fn offer(amount: u64) -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: Network::Eip155(84_532),
            amount: Amount::from(amount),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 60,
            extra: Some(json!({"name": "USDC", "version": "2"})),
        }
    }

    fn required(accepts: Vec<PaymentRequirements>) -> PaymentRequired {
        PaymentRequired {
            version: X402Version::V2,
            error: None,
            resource: Resource::default(),
            accepts,
            extensions: None,
        }
    }

    fn client() -> PayingClient {
        PayingClient::new(reqwest::Client::new(), Arc::new(PrivateKeySigner::random()))
    }

    #[test]
    fn without_a_maximum_nothing_is_paid() {
        let error = client().choose(&required(vec![offer(1)])).unwrap_err();
        assert!(
            error.to_string().contains("no per-payment maximum"),
            "{error}"
        );
    }

    #[test]
    fn picks_the_cheapest_payable_offer() {
        let client = client().max_amount(Amount::from(1_000_000u64));
        let mut solana = offer(1);
        solana.network = Network::Other("solana:abc".into());
        let mut upto = offer(2);
        upto.scheme = "upto".into();
        let offers = required(vec![
            offer(500_000),
            solana,
            upto,
            offer(20_000),
            offer(2_000_000),
        ]);
        assert_eq!(
            client.choose(&offers).unwrap().amount,
            Amount::from(20_000u64)
        );
    }

    #[test]
    fn explains_a_price_above_the_maximum() {
        let client = client().max_amount(Amount::from(1_000_000u64));
        let error = client
            .choose(&required(vec![offer(3_000_000), offer(2_000_000)]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no payable requirement among 2 offered: cheapest offer 2 USDC exceeds your maximum 1 USDC"
        );
        let mut unknown = offer(5);
        unknown.asset = "0x5FbDB2315678afecb367f032d93F642f64180aa3".into();
        let error = client
            .max_amount(Amount::from(4u64))
            .choose(&required(vec![unknown]))
            .unwrap_err();
        assert!(
            error.to_string().contains(
                "cheapest offer 5 atomic units of 0x5FbDB2315678afecb367f032d93F642f64180aa3 exceeds your maximum 4 atomic units"
            ),
            "{error}"
        );
    }

    #[test]
    fn allow_lists_apply() {
        let base_sepolia = Network::Eip155(84_532);
        let client = client()
            .max_amount(Amount::from(10u64))
            .allow_network(Network::Eip155(8453));
        let error = client.choose(&required(vec![offer(1)])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("network eip155:84532 is not allowed")
        );

        let client = client
            .allow_network(base_sepolia.clone())
            .allow_asset(base_sepolia.clone(), Address::repeat_byte(1));
        let error = client.choose(&required(vec![offer(1)])).unwrap_err();
        assert!(error.to_string().contains("is not allowed"), "{error}");

        let usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
            .parse()
            .unwrap();
        let client = client.allow_asset(base_sepolia, usdc);
        assert!(client.choose(&required(vec![offer(1)])).is_ok());
    }

    #[test]
    fn offers_without_a_domain_are_refused() {
        let mut no_extra = offer(1);
        no_extra.extra = None;
        let error = client()
            .max_amount(Amount::from(10u64))
            .choose(&required(vec![no_extra]))
            .unwrap_err();
        assert!(error.to_string().contains("EIP-712"), "{error}");
    }
}
