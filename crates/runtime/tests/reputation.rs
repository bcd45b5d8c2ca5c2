//! `[reputation]` rules: checked against the facilitator's discovery catalog before anything is
//! signed. A listing the catalog does not have, one below the bar, or a catalog that cannot be
//! read all refuse with nothing signed; once the endpoint's listing shows enough settled
//! payments, the same policy pays.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::Address;
use common::{Network_, PRICE, RuntimeUnderTest, network, runtime, runtime_with};
use http::Method;
use serde_json::{Value, json};

static WALLETS: AtomicU64 = AtomicU64::new(0);

struct Agent {
    session: String,
    token: String,
    address: Address,
}

const START: u64 = 10_000_000;

async fn agent(rt: &RuntimeUnderTest, network: &Network_, policy: &str) -> Agent {
    let name = format!("rep{}", WALLETS.fetch_add(1, Ordering::SeqCst));
    let (wallet, address) = rt.funded_wallet(network, &name, START).await;
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    if !policy.is_empty() {
        let response = rt
            .http
            .put(format!("{}/v1/sessions/{session}/policy", rt.url))
            .bearer_auth(&rt.operator_key)
            .body(policy.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    Agent {
        session,
        token,
        address,
    }
}

impl Agent {
    async fn fetch(&self, rt: &RuntimeUnderTest, url: &str) -> (u16, Value) {
        rt.call(
            Method::POST,
            &format!("/v1/sessions/{}/fetch", self.session),
            Some(&self.token),
            Some(json!({"url": url})),
        )
        .await
    }

    async fn spent(&self, network: &Network_) -> u64 {
        START - network.balance(self.address).await.to::<u64>()
    }
}

async fn listing(network: &Network_, resource: &str) -> Value {
    let page: Value = reqwest::get(format!(
        "{}/discovery/resources?resource={resource}",
        network.catalog_url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    page["items"][0].clone()
}

pub async fn reputation_is_checked_before_signing(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let report = format!("{}/report", network.seller_url);
    let careful_policy = format!(
        "[reputation]\ncatalog = \"{}\"\nmin_settled = 1\nmax_failure_rate_percent = 0\n",
        network.catalog_url
    );

    // Not listed yet: refused before signing.
    let careful = agent(&rt, &network, &careful_policy).await;
    let (status, body) = careful.fetch(&rt, &report).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_listed", "{body}");
    assert_eq!(network.payments_seen(), 0, "nothing signed");
    assert_eq!(careful.spent(&network).await, 0);

    // Another agent, without the rule, pays: the facilitator lists the route, settled once.
    let plain = agent(&rt, &network, "").await;
    let (status, body) = plain.fetch(&rt, &report).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(plain.spent(&network).await, PRICE);
    let listed = listing(&network, &report).await;
    assert_eq!(listed["resource"], report.as_str());
    assert_eq!(listed["method"], "GET");
    assert_eq!(listed["reputation"]["settledCount"], 1);
    assert_eq!(listed["reputation"]["distinctPayers"], 1);
    assert_eq!(listed["accepts"][0]["amount"], PRICE.to_string());
    assert_eq!(
        listed["extensions"]["bazaar"]["schema"]["properties"]["output"]["properties"]["example"],
        common::report_schema(),
        "the seller's published output schema is listed"
    );

    // Now the same policy pays.
    let (status, body) = careful.fetch(&rt, &report).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(careful.spent(&network).await, PRICE);
    assert_eq!(network.payments_seen(), 2);

    // A bar the listing does not reach (two payers so far, three wanted).
    let strict = agent(
        &rt,
        &network,
        &format!(
            "[reputation]\ncatalog = \"{}\"\nmin_distinct_payers = 3\n",
            network.catalog_url
        ),
    )
    .await;
    let (status, body) = strict.fetch(&rt, &report).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "reputation_too_low", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 distinct payers"),
        "{body}"
    );

    // A catalog that cannot be read: fail closed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    };
    let blind = agent(
        &rt,
        &network,
        &format!("[reputation]\ncatalog = \"{closed}\"\n"),
    )
    .await;
    let (status, body) = blind.fetch(&rt, &report).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "reputation_unknown", "{body}");

    assert_eq!(network.payments_seen(), 2, "no refused payment was signed");
    for agent in [&strict, &blind] {
        assert_eq!(agent.spent(&network).await, 0);
    }
}

/// A runtime with catalogs reports a paid response that failed validation to them (signed by
/// the paying wallet), and its learned allowlist says what the catalogs know of each payee.
pub async fn runtimes_report_to_their_catalogs(store_url: &str) {
    let network = network().await;
    let catalog: url::Url = network.catalog_url.parse().unwrap();
    let rt = runtime_with(&network, store_url, |config| {
        config.catalogs = vec![catalog.clone()];
    })
    .await;
    // The default policy holds paid responses to the seller's published schema: /report-broken
    // breaks it after being paid.
    let agent = agent(&rt, &network, "").await;
    let broken = format!("{}/report-broken", network.seller_url);
    let (status, body) = agent.fetch(&rt, &broken).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["validation"]["failure"].is_string(), "{body}");
    // The report travels in the background: wait (bounded) until the catalog counts it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let listed = loop {
        let listed = listing(&network, &broken).await;
        if listed["reputation"]["validationFailures"] == 1 {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the catalog never counted the report: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(listed["reputation"]["settledCount"], 1);
    assert_eq!(listed["reputation"]["failureRateBps"], 10_000);

    let learned = rt.runtime.learn_allowlist(None, 30).await.unwrap();
    assert!(
        learned.contains("left out: 1 listing(s) in"),
        "a payee whose listing failed every payment is proposed commented out:\n{learned}"
    );
}

on_both_databases!(
    reputation_is_checked_before_signing,
    runtimes_report_to_their_catalogs
);
