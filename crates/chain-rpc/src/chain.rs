//! [`RpcChain`]: [`EvmChain`] and [`DevChain`] over a JSON-RPC node.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use alloy_network::{Ethereum, TransactionBuilder};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_provider::{Provider, ProviderBuilder, RootProvider};
use alloy_rpc_types_eth::{
    BlockId, BlockNumberOrTag, Filter, TransactionReceipt, TransactionRequest,
};
use alloy_transport::TransportError;
use alloy_transport_http::reqwest;
use async_trait::async_trait;
use bursar_chain::{
    BlockInfo, CallOutcome, CallRequest, ChainError, DevChain, EvmChain, Fees, Log, LogEntry,
    LogFilter, Receipt,
};
use serde_json::{Value, json};
use url::Url;

use crate::errors::{Refusal, classify, split};

/// Receipt poll interval for a node on this machine (anvil mines at once): 50 ms.
pub const RECEIPT_POLL_INTERVAL_LOCAL_MS: u64 = 50;
/// Receipt poll interval suggested for remote nodes (block times of 1-12 s, rate limits): 1 s.
pub const RECEIPT_POLL_INTERVAL_REMOTE_MS: u64 = 1_000;
/// Default limit on one JSON-RPC request, connection included: 10 s.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default limit on opening a connection to the node: 2 s.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Tuning for an [`RpcChain`]. [`RpcOptions::default`] suits a local node;
/// [`RpcOptions::remote`] a node across the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcOptions {
    /// How often [`bursar_chain::wait_for_receipt`] asks for a receipt.
    pub receipt_poll_interval: Duration,
    /// Limit on one request, from sending it to reading the whole answer.
    pub request_timeout: Duration,
    /// Limit on opening a connection.
    pub connect_timeout: Duration,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            receipt_poll_interval: Duration::from_millis(RECEIPT_POLL_INTERVAL_LOCAL_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
        }
    }
}

impl RpcOptions {
    /// Settings for a remote node: receipts are polled every second, which is enough for chains
    /// with block times of a second or more and stays well inside public rate limits.
    pub fn remote() -> Self {
        RpcOptions {
            receipt_poll_interval: Duration::from_millis(RECEIPT_POLL_INTERVAL_REMOTE_MS),
            ..Self::default()
        }
    }
}

/// Why [`RpcChain::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be used (malformed, unsupported scheme, https without the `rustls` feature).
    #[error("invalid node URL: {0}")]
    InvalidUrl(String),
    /// The node serves another chain than the one configured.
    #[error(
        "the node at {endpoint} serves chain id {actual}, but chain id {expected} was expected"
    )]
    ChainIdMismatch {
        endpoint: String,
        expected: u64,
        actual: u64,
    },
    /// Reading the chain id failed (unreachable node, garbage answer).
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// An Ethereum JSON-RPC node as an [`EvmChain`] (and, for anvil, a [`DevChain`]).
///
/// The chain id is read once when connecting. Every call is one request without retries: a
/// failure to reach the node is [`ChainError::Transport`] and the caller decides whether to retry.
pub struct RpcChain {
    provider: RootProvider<Ethereum>,
    chain_id: u64,
    /// The node's URL without path, query or credentials (those often carry API keys).
    endpoint: String,
    /// The full URL, to scrub it out of error messages.
    url: String,
    receipt_poll_interval: Duration,
    /// A test node this chain owns; dropping the chain stops it.
    #[cfg(feature = "testkit")]
    pub(crate) anvil: Option<crate::anvil::AnvilInstance>,
}

impl std::fmt::Debug for RpcChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcChain")
            .field("endpoint", &self.endpoint)
            .field("chain_id", &self.chain_id)
            .finish()
    }
}

impl RpcChain {
    /// Connects to the node at `url` with [`RpcOptions::default`] (suited to a local node) and
    /// reads its chain id. With `expected_chain_id`, a node serving another chain is refused.
    pub async fn connect(
        url: &str,
        expected_chain_id: Option<u64>,
    ) -> Result<Arc<RpcChain>, ConnectError> {
        Self::connect_with(url, expected_chain_id, RpcOptions::default()).await
    }

    /// [`RpcChain::connect`] with explicit options.
    pub async fn connect_with(
        url: &str,
        expected_chain_id: Option<u64>,
        options: RpcOptions,
    ) -> Result<Arc<RpcChain>, ConnectError> {
        Ok(Arc::new(Self::open(url, expected_chain_id, options).await?))
    }

    pub(crate) async fn open(
        url: &str,
        expected_chain_id: Option<u64>,
        options: RpcOptions,
    ) -> Result<RpcChain, ConnectError> {
        let parsed = Url::parse(url)
            .map_err(|e| ConnectError::InvalidUrl(format!("{}: {e}", redact_text(url))))?;
        let endpoint = redact(&parsed);
        match parsed.scheme() {
            "http" => {}
            "https" if cfg!(feature = "rustls") => {}
            "https" => {
                return Err(ConnectError::InvalidUrl(format!(
                    "{endpoint}: https needs bursar-chain-rpc's `rustls` feature"
                )));
            }
            other => {
                return Err(ConnectError::InvalidUrl(format!(
                    "{endpoint}: unsupported scheme {other:?} (use http:// or https://)"
                )));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| {
                ConnectError::InvalidUrl(format!("{endpoint}: cannot build an HTTP client: {e}"))
            })?;
        let provider = ProviderBuilder::default().connect_reqwest(client, parsed.clone());
        let mut chain = RpcChain {
            provider,
            chain_id: 0,
            endpoint,
            url: parsed.to_string(),
            receipt_poll_interval: options.receipt_poll_interval,
            #[cfg(feature = "testkit")]
            anvil: None,
        };
        let actual = chain
            .provider
            .get_chain_id()
            .await
            .map_err(|e| chain.read_error("eth_chainId", e))?;
        if let Some(expected) = expected_chain_id
            && expected != actual
        {
            return Err(ConnectError::ChainIdMismatch {
                endpoint: chain.endpoint.clone(),
                expected,
                actual,
            });
        }
        chain.chain_id = actual;
        tracing::debug!(endpoint = %chain.endpoint, chain_id = actual, "connected to node");
        Ok(chain)
    }

    /// The node's scheme, host and port (path, query and credentials left out).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying alloy provider, for requests the chain seam does not cover.
    pub fn provider(&self) -> &RootProvider<Ethereum> {
        &self.provider
    }

    /// Removes the full URL (which may hold an API key) from a message.
    fn scrub(&self, message: String) -> String {
        let trimmed = self.url.trim_end_matches('/');
        if trimmed.len() > self.endpoint.len() {
            message.replace(trimmed, &self.endpoint)
        } else {
            message
        }
    }

    /// Prefixes transport failures with the endpoint (and scrubs the URL out of them).
    fn at_endpoint(&self, error: ChainError) -> ChainError {
        match error {
            ChainError::Transport(message) => {
                ChainError::Transport(format!("{}: {}", self.endpoint, self.scrub(message)))
            }
            other => other,
        }
    }

    /// A read whose refusals are unexpected: they are reported as [`ChainError::Transport`]
    /// ("answered garbage"), since a healthy node does not refuse them.
    fn read_error(&self, what: &str, error: TransportError) -> ChainError {
        match split(error) {
            Ok(payload) => {
                ChainError::Transport(format!("{}: {what} refused: {payload}", self.endpoint))
            }
            Err(error) => self.at_endpoint(error),
        }
    }

    /// A development control; a node without it answers [`ChainError::Unsupported`].
    async fn dev_request(
        &self,
        method: &'static str,
        params: Vec<Value>,
    ) -> Result<(), ChainError> {
        match self
            .provider
            .raw_request::<_, Value>(Cow::Borrowed(method), params)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let payload = split(error).map_err(|e| self.at_endpoint(e))?;
                // Public nodes word a missing method in many ways (method not found, not
                // whitelisted, not available, HTTP 200 with an arbitrary code): whatever the
                // refusal, the control is not available here.
                Err(ChainError::Unsupported(format!(
                    "{method} on {}: {payload}",
                    self.endpoint
                )))
            }
        }
    }
}

/// Scheme, host and port of a URL; path, query and credentials are left out.
fn redact(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}://", url.scheme()),
    }
}

/// Like [`redact`] for text that did not parse: keeps what precedes the path.
fn redact_text(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let authority = &url[..end];
    match authority.rfind('@') {
        Some(at) if at >= after_scheme => {
            format!("{}{}", &authority[..after_scheme], &authority[at + 1..])
        }
        _ => authority.to_string(),
    }
}

fn transaction_request(request: CallRequest) -> TransactionRequest {
    let mut tx = TransactionRequest::default()
        .with_input(request.data)
        .with_value(request.value);
    if let Some(from) = request.from {
        tx = tx.with_from(from);
    }
    match request.to {
        Some(to) => tx.with_to(to),
        None => tx.into_create(),
    }
}

fn convert_receipt(receipt: TransactionReceipt) -> Option<Receipt> {
    // A receipt without a block is not mined yet (some nodes answer for pending transactions).
    let block_number = receipt.block_number?;
    let logs = receipt
        .inner
        .logs()
        .iter()
        .map(|log| Log {
            address: log.address(),
            topics: log.topics().to_vec(),
            data: log.data().data.clone(),
        })
        .collect();
    Some(Receipt {
        transaction_hash: receipt.transaction_hash,
        success: receipt.status(),
        block_number,
        gas_used: receipt.gas_used,
        effective_gas_price: receipt.effective_gas_price,
        contract_address: receipt.contract_address,
        logs,
    })
}

#[async_trait]
impl EvmChain for RpcChain {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    async fn latest_block(&self) -> Result<BlockInfo, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.read_error("eth_getBlockByNumber", e))?
            .ok_or_else(|| {
                ChainError::Transport(format!("{}: the node has no latest block", self.endpoint))
            })?;
        Ok(BlockInfo {
            number: block.header.number,
            timestamp: block.header.timestamp,
        })
    }

    async fn call(&self, request: CallRequest) -> Result<CallOutcome, ChainError> {
        let result = self
            .provider
            .call(transaction_request(request))
            .block(BlockId::latest())
            .await;
        match result {
            Ok(output) => Ok(CallOutcome::Success(output)),
            Err(error) => {
                let payload = split(error).map_err(|e| self.at_endpoint(e))?;
                match classify(&payload) {
                    Refusal::Reverted(data) => Ok(CallOutcome::Revert(data)),
                    // The call could not run at all (for example the sender cannot pay the value).
                    _ => Err(ChainError::Rejected(format!("eth_call: {payload}"))),
                }
            }
        }
    }

    async fn estimate_gas(&self, request: CallRequest) -> Result<u64, ChainError> {
        let result = self
            .provider
            .estimate_gas(transaction_request(request))
            .block(BlockId::latest())
            .await;
        result.or_else(|error| {
            let payload = split(error).map_err(|e| self.at_endpoint(e))?;
            match classify(&payload) {
                Refusal::Reverted(_) => {
                    Err(ChainError::Reverted(format!("eth_estimateGas: {payload}")))
                }
                _ => Err(ChainError::Rejected(format!("eth_estimateGas: {payload}"))),
            }
        })
    }

    async fn transaction_count(&self, address: Address) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(address)
            .pending()
            .await
            .map_err(|e| self.read_error("eth_getTransactionCount", e))
    }

    async fn mined_transaction_count(&self, address: Address) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(address)
            .latest()
            .await
            .map_err(|e| self.read_error("eth_getTransactionCount", e))
    }

    async fn logs(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, ChainError> {
        let mut query = Filter::new()
            .address(filter.address)
            .from_block(filter.from_block)
            .to_block(filter.to_block);
        for (position, topic) in filter.topics.iter().enumerate().take(4) {
            if let Some(topic) = topic {
                query.topics[position] = (*topic).into();
            }
        }
        let logs = self
            .provider
            .get_logs(&query)
            .await
            .map_err(|e| self.read_error("eth_getLogs", e))?;
        Ok(logs
            .into_iter()
            .filter_map(|log| {
                // Logs of pending blocks carry no block number or transaction: not mined yet.
                Some(LogEntry {
                    transaction_hash: log.transaction_hash?,
                    block_number: log.block_number?,
                    log: Log {
                        address: log.address(),
                        topics: log.topics().to_vec(),
                        data: log.data().data.clone(),
                    },
                })
            })
            .collect())
    }

    async fn native_balance(&self, address: Address) -> Result<U256, ChainError> {
        self.provider
            .get_balance(address)
            .latest()
            .await
            .map_err(|e| self.read_error("eth_getBalance", e))
    }

    async fn code(&self, address: Address) -> Result<Bytes, ChainError> {
        self.provider
            .get_code_at(address)
            .latest()
            .await
            .map_err(|e| self.read_error("eth_getCode", e))
    }

    async fn fees(&self) -> Result<Fees, ChainError> {
        let estimate = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| self.read_error("eth_feeHistory", e))?;
        Ok(Fees {
            max_fee_per_gas: estimate.max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_priority_fee_per_gas,
        })
    }

    async fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, ChainError> {
        match self.provider.send_raw_transaction(&raw).await {
            Ok(pending) => Ok(*pending.tx_hash()),
            Err(error) => {
                let payload = split(error).map_err(|e| self.at_endpoint(e))?;
                match classify(&payload) {
                    Refusal::NonceTooLow(message) => Err(ChainError::NonceTooLow(message)),
                    // Broadcasting is idempotent: the node already holds this very transaction.
                    Refusal::AlreadyKnown => Ok(keccak256(&raw)),
                    _ => Err(ChainError::Rejected(payload.to_string())),
                }
            }
        }
    }

    async fn receipt(&self, hash: B256) -> Result<Option<Receipt>, ChainError> {
        let receipt = self
            .provider
            .get_transaction_receipt(hash)
            .await
            .map_err(|e| self.read_error("eth_getTransactionReceipt", e))?;
        Ok(receipt.and_then(convert_receipt))
    }

    fn receipt_poll_interval(&self) -> Duration {
        self.receipt_poll_interval
    }
}

#[async_trait]
impl DevChain for RpcChain {
    async fn set_native_balance(&self, address: Address, wei: U256) -> Result<(), ChainError> {
        self.dev_request("anvil_setBalance", vec![json!(address), json!(wei)])
            .await
    }

    async fn increase_time(&self, seconds: u64) -> Result<(), ChainError> {
        self.dev_request("evm_increaseTime", vec![json!(seconds)])
            .await?;
        self.dev_request("evm_mine", Vec::new()).await
    }

    async fn mine(&self) -> Result<(), ChainError> {
        self.dev_request("evm_mine", Vec::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_paths_and_credentials() {
        let url = Url::parse("https://user:secret@rpc.example:8545/v2/API-KEY?x=1").unwrap();
        assert_eq!(redact(&url), "https://rpc.example:8545");
        assert_eq!(
            redact(&Url::parse("http://127.0.0.1:8545/").unwrap()),
            "http://127.0.0.1:8545"
        );
        assert_eq!(
            redact_text("http://user:pw@host:bad/v2/key"),
            "http://host:bad"
        );
        assert_eq!(redact_text("not a url/with/key"), "not a url");
    }
}
