//! The egress guard end to end, on SQLite and on PostgreSQL, with loopback targets only: by
//! default the fetch API and the proxy refuse a seller on 127.0.0.1 (by address, by a name that
//! resolves to loopback, in IPv4-mapped form) and the runtime's own API, with `egress_refused`
//! and nothing sent, reserved or paid; the allowlist opens exactly what it lists (a network, an
//! address and port, a host name and port); a redirect is handed back, not followed, and its
//! target is checked when the agent asks for it.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy_primitives::U256;
use axum::Router;
use bursar_runtime::proxy::proxy_router;
use bursar_runtime::{EgressAllow, EgressPolicy};
use bursar_store::runtime::EntryKind;
use common::{Network_, PRICE, RuntimeUnderTest, network, runtime_with};
use http::Method;
use serde_json::Value;

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    address
}

/// A runtime with `policy` instead of the tests' usual loopback allowance.
async fn runtime(network: &Network_, store_url: &str, policy: EgressPolicy) -> RuntimeUnderTest {
    runtime_with(network, store_url, |config| config.egress = policy).await
}

fn allow(entries: &[&str]) -> EgressPolicy {
    EgressPolicy::public_only().allowing(
        entries
            .iter()
            .map(|entry| entry.parse::<EgressAllow>().unwrap()),
    )
}

/// A funded wallet, a grant and a session: (session id, token, payer).
async fn agent(
    rt: &RuntimeUnderTest,
    network: &Network_,
    name: &str,
) -> (String, String, alloy_primitives::Address) {
    let (wallet, payer) = rt.funded_wallet(network, name, 1_000_000).await;
    let grant = rt.grant(&wallet, "agent", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    (session, token, payer)
}

/// Asserts an `egress_refused` answer naming `address` and the flag that would allow it.
fn assert_refused(status: u16, answer: &Value, address: &str, allow_entry: &str) {
    assert_eq!(status, 403, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], "egress_refused", "{answer}");
    assert_eq!(error["address"], address, "{answer}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("--egress-allow {allow_entry}")),
        "{message}"
    );
    assert!(message.contains("nothing was sent or paid"), "{message}");
}

/// Nothing reached the seller, moved on chain or entered the ledger as a reservation.
async fn nothing_happened(
    rt: &RuntimeUnderTest,
    network: &Network_,
    payer: alloy_primitives::Address,
) {
    assert_eq!(network.requests_seen(), 0);
    assert_eq!(network.payments_seen(), 0);
    assert_eq!(network.balance(payer).await, U256::from(1_000_000u64));
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
    let entries = rt.runtime.store().entries(0, 1_000).await.unwrap();
    assert!(
        entries.iter().all(|entry| entry.kind != EntryKind::Reserve),
        "{entries:?}"
    );
}

/// Outside dev mode (the default policy), a loopback seller, a name resolving to loopback, the
/// IPv4-mapped form and the runtime's own API are refused by the fetch API and by the proxy.
async fn loopback_is_refused_by_default(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url, EgressPolicy::default()).await;
    let (session, token, payer) = agent(&rt, &network, "w").await;
    let port = network.seller_port();
    let api_port: u16 = rt.url.rsplit(':').next().unwrap().parse().unwrap();

    let (status, answer) = rt
        .fetch(&session, &token, &format!("{}/paid", network.seller_url))
        .await;
    assert_refused(status, &answer, "127.0.0.1", &format!("127.0.0.1:{port}"));
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is loopback")
    );
    let (status, answer) = rt
        .fetch(&session, &token, &format!("http://localhost:{port}/paid"))
        .await;
    assert_eq!(answer["error"]["host"], "localhost", "{answer}");
    let address = answer["error"]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        address == "127.0.0.1" || address == "::1",
        "localhost refused as {address}"
    );
    assert_refused(status, &answer, &address, &format!("localhost:{port}"));
    let (status, answer) = rt
        .fetch(
            &session,
            &token,
            &format!("http://[::ffff:127.0.0.1]:{port}/paid"),
        )
        .await;
    assert_refused(
        status,
        &answer,
        "::ffff:127.0.0.1",
        &format!("[::ffff:127.0.0.1]:{port}"),
    );
    // The runtime's own operator API, through the agent's session.
    let (status, answer) = rt
        .fetch(&session, &token, &format!("{}/v1/wallets", rt.url))
        .await;
    assert_refused(
        status,
        &answer,
        "127.0.0.1",
        &format!("127.0.0.1:{api_port}"),
    );

    // The proxy answers the same, with the code in X-Bursar-Error.
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let agent = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://agent:{token}@{proxy}")).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for url in [
        format!("{}/paid", network.seller_url),
        format!("http://localhost:{port}/paid"),
        format!("{}/health", rt.url),
    ] {
        let response = agent.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers().get("x-bursar-error").unwrap(),
            "egress_refused"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 403, "{url}: {answer}");
        assert_eq!(answer["error"]["code"], "egress_refused", "{answer}");
        assert!(answer["error"]["address"].is_string(), "{answer}");
    }
    nothing_happened(&rt, &network, payer).await;
}

/// The allowlist opens what it lists and nothing more: loopback as a network; one address and
/// port (not another port, not a name for it); a host name and port (not the address).
async fn the_allowlist_opens_what_it_lists(store_url: &str) {
    let network = network().await;
    let port = network.seller_port();
    let by_address = format!("{}/paid", network.seller_url);
    let by_name = format!("http://localhost:{port}/paid");
    let mut paid = 0u64;

    let network_wide = runtime(&network, store_url, allow(&["127.0.0.0/8"])).await;
    let (session, token, _) = agent(&network_wide, &network, "network").await;
    for url in [&by_address, &by_name] {
        let (status, answer) = network_wide.fetch(&session, &token, url).await;
        assert_eq!(status, 200, "{url}: {answer}");
        assert_eq!(answer["payment"]["state"], "posted", "{answer}");
        paid += 1;
    }

    let one_port = runtime(&network, store_url, allow(&[&format!("127.0.0.1:{port}")])).await;
    let (session, token, _) = agent(&one_port, &network, "address").await;
    let (status, answer) = one_port.fetch(&session, &token, &by_address).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payment"]["state"], "posted", "{answer}");
    paid += 1;
    let api_port: u16 = one_port.url.rsplit(':').next().unwrap().parse().unwrap();
    let (status, answer) = one_port
        .fetch(&session, &token, &format!("{}/health", one_port.url))
        .await;
    assert_refused(
        status,
        &answer,
        "127.0.0.1",
        &format!("127.0.0.1:{api_port}"),
    );
    let (status, answer) = one_port.fetch(&session, &token, &by_name).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "egress_refused");

    let named = runtime(&network, store_url, allow(&[&format!("localhost:{port}")])).await;
    let (session, token, _) = agent(&named, &network, "name").await;
    let (status, answer) = named.fetch(&session, &token, &by_name).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payment"]["state"], "posted", "{answer}");
    paid += 1;
    let (status, answer) = named.fetch(&session, &token, &by_address).await;
    assert_refused(status, &answer, "127.0.0.1", &format!("127.0.0.1:{port}"));
    let (status, answer) = named
        .fetch(
            &session,
            &token,
            &format!("http://localhost:{api_port}/health"),
        )
        .await;
    assert_eq!(status, 403, "{answer}");

    // Exactly the allowed payments happened.
    assert_eq!(network.payments_seen(), paid as usize);
    assert_eq!(
        network.balance(network.payee).await,
        U256::from(PRICE * paid)
    );
    let entries = named.runtime.store().entries(0, 1_000).await.unwrap();
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EntryKind::Reserve), paid as usize);
    assert_eq!(count(EntryKind::Post), paid as usize);
}

/// A redirect from an allowed host to a refused one: the runtime hands the 3xx back without
/// following it (the refused seller gets no request), and asking for its target is refused.
async fn redirects_to_refused_hosts_are_refused(store_url: &str) {
    let network = network().await;
    let seller = network.seller_url.clone();
    let port = network.seller_port();
    let hops = Arc::new(AtomicUsize::new(0));
    let counter = hops.clone();
    let redirector = serve(
        Router::new().fallback(move |request: axum::extract::Request| {
            let counter = counter.clone();
            let seller = seller.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let target = match request.uri().path() {
                    "/to-name" => format!("http://localhost:{port}/paid"),
                    "/to-metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
                    _ => format!("{seller}/paid"),
                };
                (
                    http::StatusCode::FOUND,
                    [(http::header::LOCATION, target)],
                    "moved",
                )
            }
        }),
    )
    .await;
    let rt = runtime(&network, store_url, allow(&[&redirector.to_string()])).await;
    let (session, token, payer) = agent(&rt, &network, "w").await;
    for path in ["/to-address", "/to-name", "/to-metadata"] {
        let (status, answer) = rt
            .fetch(&session, &token, &format!("http://{redirector}{path}"))
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], 302, "{answer}");
        assert!(answer["payment"].is_null());
        let location = answer["headers"]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("a location header in {answer}"))
            .to_string();
        let (status, answer) = rt.fetch(&session, &token, &location).await;
        assert_eq!(status, 403, "{location}: {answer}");
        assert_eq!(answer["error"]["code"], "egress_refused", "{answer}");
    }
    assert_eq!(hops.load(Ordering::SeqCst), 3);
    nothing_happened(&rt, &network, payer).await;
    let (status, shown) = rt
        .call(
            Method::GET,
            &format!("/v1/sessions/{session}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["reservedAtomic"], "0");
    assert_eq!(shown["postedAtomic"], "0");
}

on_both_databases!(
    loopback_is_refused_by_default,
    the_allowlist_opens_what_it_lists,
    redirects_to_refused_hosts_are_refused,
);
