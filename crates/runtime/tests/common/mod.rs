//! A whole x402 network in one process for runtime tests: the embedded chain, the token, an
//! in-process facilitator, a seller behind Bursar's paywall, and the runtime's API — each over
//! real loopback HTTP.

#![allow(dead_code, unused_macros)]

pub mod mcp;
pub mod openapi;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use bursar_chain::testkit::{self, TOKEN_NAME};
use bursar_chain::{Account, DevChain, EvmChain, Token};
use bursar_chain_revm::EmbeddedChain;
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator};
use bursar_facilitator_client::Facilitator;
use bursar_protocol::{Amount, AssetUnit, Network};
use bursar_runtime::{Currency, Runtime, RuntimeConfig};
use bursar_seller::{Asset, Offer, PaywallLayer, PricedRoute};
use bursar_store::RuntimeStore;
use bursar_wallet::{Kdf, Passphrase};
use http::Method;
use serde_json::{Value, json};

/// The price of `/paid`: 0.01 USDC.
pub const PRICE: u64 = 10_000;
pub const PASSPHRASE: &str = "correct horse battery staple";

pub struct Network_ {
    pub chain: Arc<dyn DevChain>,
    pub token: Token,
    pub owner: Account,
    pub payee: Address,
    pub seller_url: String,
    /// The payees `/mcp-shifty`'s `paid` tool names in turn.
    pub shifty_payees: Vec<Address>,
    /// Requests that reached the seller carrying a payment header.
    pub payments_seen: Arc<AtomicUsize>,
    /// Requests that reached the seller at all.
    pub requests_seen: Arc<AtomicUsize>,
    /// The facilitator's discovery catalog (its base URL, serving `/discovery/resources`).
    pub catalog_url: String,
}

async fn serve(app: Router) -> String {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // As Bursar's servers do: streamed answers are not held back by Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

/// The response schema `/report` and `/report-broken` publish.
pub fn report_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "integer"}}},
        "required": ["rows"],
    })
}

/// Chain, token, facilitator and seller.
pub async fn network() -> Network_ {
    let embedded = EmbeddedChain::memory();
    let chain: Arc<dyn DevChain> = embedded;
    let owner = testkit::funded_account(&chain).await;
    let settler = testkit::funded_account(&chain).await;
    let token = Token::deploy(&owner, TOKEN_NAME, "USDC", owner.address())
        .await
        .expect("deploy token");
    let evm: Arc<dyn EvmChain> = chain.clone();
    let catalog = bursar_catalog::Catalog::new(
        Arc::new(bursar_store::SqliteDatabase::memory()),
        bursar_catalog::CatalogConfig::default(),
    );
    let catalog_url = serve(bursar_catalog::router(catalog.clone())).await;
    let facilitator: Arc<dyn Facilitator> = Arc::new(
        LocalFacilitator::new(evm, settler, FacilitatorConfig::default()).with_catalog(catalog),
    );
    let payee = PrivateKeySigner::random().address();
    let asset = Asset::new(
        token.address().to_checksum(None),
        TOKEN_NAME.to_string(),
        "2".to_string(),
        AssetUnit::usdc(),
    );
    let network = Network::Eip155(chain.chain_id());
    let offer = |amount: u64| {
        Offer::exact(
            network.clone(),
            asset.clone(),
            Amount::from(amount),
            payee.to_checksum(None),
        )
    };
    let tools = mcp::service(facilitator.clone(), offer(PRICE));
    let shifty_payees: Vec<Address> = (0..3)
        .map(|_| PrivateKeySigner::random().address())
        .collect();
    let shifty = mcp::shifty_service(
        facilitator.clone(),
        shifty_payees
            .iter()
            .map(|payee| {
                Offer::exact(
                    network.clone(),
                    asset.clone(),
                    Amount::from(PRICE),
                    payee.to_checksum(None),
                )
            })
            .collect(),
        offer(PRICE),
    );
    let paywall = PaywallLayer::builder(facilitator)
        .route(PricedRoute::new(Method::GET, "/paid").offer(offer(PRICE)))
        .route(PricedRoute::new(Method::GET, "/expensive").offer(offer(PRICE * 1000)))
        .route(PricedRoute::new(Method::GET, "/garbage").offer(offer(PRICE)))
        .route(PricedRoute::new(Method::GET, "/garbage-json").offer(offer(PRICE)))
        // Both publish the schema of their response (v2: bazaar extension); the second breaks it.
        .route(
            PricedRoute::new(Method::GET, "/report")
                .output_schema(report_schema())
                .offer(offer(PRICE)),
        )
        .route(
            PricedRoute::new(Method::GET, "/report-broken")
                .output_schema(report_schema())
                .offer(offer(PRICE)),
        )
        .build()
        .expect("paywall");
    let payments_seen = Arc::new(AtomicUsize::new(0));
    let requests_seen = Arc::new(AtomicUsize::new(0));
    let seen = payments_seen.clone();
    let requests = requests_seen.clone();
    let count_payments = move |request: Request, next: Next| {
        let seen = seen.clone();
        let requests = requests.clone();
        async move {
            requests.fetch_add(1, Ordering::SeqCst);
            let headers = request.headers();
            if headers.contains_key("payment-signature") || headers.contains_key("x-payment") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            next.run(request).await
        }
    };
    // A hostile seller: asks for payment, then answers 402 again to the paid request without
    // settling it (the signed authorization is left unused).
    let rejecting = {
        let required = bursar_protocol::PaymentRequired {
            version: bursar_protocol::X402Version::V2,
            error: Some("payment required".into()),
            resource: bursar_protocol::Resource::default(),
            accepts: vec![offer(PRICE).requirement()],
            extensions: None,
        }
        .to_v2_header();
        move || {
            let required = required.clone();
            async move {
                (
                    http::StatusCode::PAYMENT_REQUIRED,
                    [("payment-required", required)],
                    axum::Json(json!({})),
                )
                    .into_response()
            }
        }
    };
    let app = Router::new()
        .route(
            "/paid",
            get(|| async { axum::Json(json!({"content": "paid"})) }),
        )
        .route("/expensive", get(|| async { "expensive" }))
        .route(
            "/report",
            get(|| async { axum::Json(json!({"rows": [1, 2, 3]})) }),
        )
        .route(
            "/report-broken",
            get(|| async { axum::Json(json!({"rows": "none today"})) }),
        )
        // Paid, then answers garbage: not JSON, whatever it promised.
        .route(
            "/garbage",
            get(|| async { "%%% not what you paid for %%%" }),
        )
        // Paid, then answers garbage that calls itself JSON.
        .route(
            "/garbage-json",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    "%%% not JSON %%%",
                )
            }),
        )
        .layer(paywall)
        .route("/free", get(|| async { "free" }))
        .nest_service("/mcp", tools)
        .nest_service("/mcp-shifty", shifty)
        .route("/rejects", get(rejecting))
        .layer(axum::middleware::from_fn(count_payments));
    let seller_url = serve(app).await;
    Network_ {
        chain,
        token,
        owner,
        payee,
        seller_url,
        shifty_payees,
        payments_seen,
        requests_seen,
        catalog_url,
    }
}

impl Network_ {
    pub fn payments_seen(&self) -> usize {
        self.payments_seen.load(Ordering::SeqCst)
    }

    pub fn requests_seen(&self) -> usize {
        self.requests_seen.load(Ordering::SeqCst)
    }

    /// The seller's port on 127.0.0.1.
    pub fn seller_port(&self) -> u16 {
        self.seller_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub async fn balance(&self, address: Address) -> U256 {
        self.token.balance_of(address).await.unwrap()
    }

    pub async fn mint(&self, to: Address, amount: u64) {
        self.token
            .mint(&self.owner, to, U256::from(amount))
            .await
            .expect("mint");
    }

    pub fn currency(&self) -> Currency {
        Currency {
            name: "USDC".into(),
            network: Network::Eip155(self.chain.chain_id()),
            asset: self.token.address(),
            unit: AssetUnit::usdc(),
        }
    }
}

/// A runtime on `store_url` against `network`, with its API served on loopback.
pub struct RuntimeUnderTest {
    pub runtime: Runtime,
    pub url: String,
    pub operator_key: String,
    pub http: reqwest::Client,
}

pub async fn runtime(network: &Network_, store_url: &str) -> RuntimeUnderTest {
    runtime_with(network, store_url, |_| {}).await
}

/// [`runtime`] with its configuration changed by `configure` (which starts from light keys and
/// loopback allowed).
pub async fn runtime_with(
    network: &Network_,
    store_url: &str,
    configure: impl FnOnce(&mut RuntimeConfig),
) -> RuntimeUnderTest {
    let store: Arc<dyn RuntimeStore> = bursar_store::open_runtime_store(store_url)
        .await
        .expect("open store");
    let evm: Arc<dyn EvmChain> = network.chain.clone();
    let mut config = RuntimeConfig::new(network.currency());
    config.kdf = Kdf::light();
    // Sellers in tests run on loopback.
    config.egress = bursar_runtime::EgressPolicy::loopback();
    configure(&mut config);
    let runtime = Runtime::open(
        store.clone(),
        evm,
        Passphrase::new(PASSPHRASE.into()).unwrap(),
        config,
    )
    .await
    .expect("open runtime");
    let operator_key = store.create_operator_key("tests").await.unwrap().key;
    let url = serve(bursar_runtime::api::router(runtime.clone())).await;
    RuntimeUnderTest {
        runtime,
        url,
        operator_key,
        http: reqwest::Client::new(),
    }
}

impl RuntimeUnderTest {
    /// A call with a bearer credential; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        credential: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("runtime answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("runtime answered non-JSON ({status}): {text}"));
        if path != "/openapi.json" {
            let document = self.openapi().await;
            if let Err(mismatch) = openapi::check(&document, method.as_str(), path, status, &body) {
                panic!("{mismatch}\n{body:#}");
            }
        }
        (status, body)
    }

    /// The runtime's own `/openapi.json`, made strict ([`openapi::strict`]); fetched once per
    /// runtime.
    pub async fn openapi(&self) -> Arc<Value> {
        static DOCUMENTS: LazyLock<Mutex<HashMap<String, Arc<Value>>>> =
            LazyLock::new(Default::default);
        if let Some(document) = DOCUMENTS.lock().unwrap().get(&self.url) {
            return document.clone();
        }
        let response = self
            .http
            .get(format!("{}/openapi.json", self.url))
            .send()
            .await
            .expect("runtime answers");
        assert_eq!(response.status(), 200, "GET /openapi.json");
        let document: Value = response.json().await.expect("/openapi.json is JSON");
        let document = Arc::new(openapi::strict(&document));
        DOCUMENTS
            .lock()
            .unwrap()
            .insert(self.url.clone(), document.clone());
        document
    }

    pub async fn operator(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let key = self.operator_key.clone();
        self.call(method, path, Some(&key), body).await
    }

    /// A wallet funded with `balance`, via the API.
    pub async fn funded_wallet(
        &self,
        network: &Network_,
        name: &str,
        balance: u64,
    ) -> (String, Address) {
        let (status, wallet) = self
            .operator(Method::POST, "/v1/wallets", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "{wallet}");
        let address: Address = wallet["address"].as_str().unwrap().parse().unwrap();
        network.mint(address, balance).await;
        (wallet["id"].as_str().unwrap().to_string(), address)
    }

    pub async fn grant(&self, wallet_id: &str, agent: &str, seconds: Option<u64>) -> String {
        let mut body = json!({"walletId": wallet_id, "agent": agent});
        if let Some(seconds) = seconds {
            body["expiresInSeconds"] = json!(seconds);
        }
        let (status, grant) = self.operator(Method::POST, "/v1/grants", Some(body)).await;
        assert_eq!(status, 201, "{grant}");
        grant["id"].as_str().unwrap().to_string()
    }

    /// A session with `max` (human USDC) under `grant`: (session id, token).
    pub async fn session(
        &self,
        grant_id: &str,
        max: &str,
        seconds: Option<u64>,
    ) -> (String, String) {
        let mut body = json!({"grantId": grant_id, "maxSpendAmount": max, "currency": "USDC"});
        if let Some(seconds) = seconds {
            body["expiresInSeconds"] = json!(seconds);
        }
        let (status, session) = self
            .operator(Method::POST, "/v1/sessions", Some(body))
            .await;
        assert_eq!(status, 201, "{session}");
        (
            session["id"].as_str().unwrap().to_string(),
            session["token"].as_str().unwrap().to_string(),
        )
    }

    /// The agent's call of `tool` of the test network's MCP server, through its session.
    pub async fn call_tool(
        &self,
        network: &Network_,
        session_id: &str,
        token: &str,
        tool: &str,
    ) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{session_id}/tools/call"),
            Some(token),
            Some(
                json!({"server": format!("{}/mcp", network.seller_url), "tool": tool,
                        "arguments": {"city": "Lisbon"}}),
            ),
        )
        .await
    }

    /// The agent's paid GET through its session.
    pub async fn fetch(&self, session_id: &str, token: &str, url: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{session_id}/fetch"),
            Some(token),
            Some(json!({"method": "GET", "url": url})),
        )
        .await
    }
}

/// Runs each named `async fn case(store_url: &str)` as two tests: on a temporary SQLite file
/// and on a fresh PostgreSQL database.
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let database = bursar_store::testkit::TempSqlite::new();
                    super::$case(&database.url()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let database = bursar_store::testkit::TempPostgres::create().await;
                    super::$case(database.url()).await;
                }
            )*
        }
    };
}
