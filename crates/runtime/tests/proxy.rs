//! The runtime's forward proxy end to end, on SQLite and on PostgreSQL: an agent's HTTP client
//! configured with the proxy (and its session token as proxy credentials) pays a real paywall on
//! the embedded chain; refusals move nothing and send no payment; credentials, CONNECT, origin-form
//! requests, oversized bodies and loops get clear JSON errors. Every case checks the chain, the
//! ledger and what the seller received, not only the HTTP answers.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy_primitives::U256;
use axum::Router;
use base64::Engine;
use bursar_protocol::Amount;
use bursar_runtime::proxy::{PROXY_BODY_BYTES_MAX, proxy_router};
use bursar_runtime::reconcile::reconcile;
use bursar_store::runtime::{EntryKind, TransferState};
use common::{PRICE, network, runtime};
use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    address
}

/// An HTTP client that sends everything through the proxy at `proxy`, with `auth` as
/// `Proxy-Authorization` when given.
fn proxied_client(proxy: reqwest::Proxy) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(proxy)
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// The way agents are configured: `HTTP_PROXY=http://agent:<token>@host:port`.
fn agent_client(proxy: std::net::SocketAddr, token: &str) -> reqwest::Client {
    proxied_client(reqwest::Proxy::http(format!("http://agent:{token}@{proxy}")).unwrap())
}

fn direct_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("non-JSON answer ({}): {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    fn payment(&self) -> Option<Value> {
        self.header("x-bursar-payment")
            .map(|text| serde_json::from_str(text).expect("X-Bursar-Payment is JSON"))
    }

    /// A refusal by the proxy itself: the status, the code in the body and in X-Bursar-Error.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(self.header("x-bursar-error"), Some(code));
        assert!(self.payment().is_none());
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Answer {
    Answer::of(client.get(url).send().await.expect("the proxy answers")).await
}

/// Writes `request` on a fresh connection to the proxy and reads the whole answer (the request
/// must ask for `Connection: close`): the status and the body.
async fn raw(proxy: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("the proxy answers in time");
    let text = String::from_utf8(answer).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Sends `head` and then `size` bytes as 64 KiB chunks (stopping quietly if the proxy stops
/// reading), and reads the answer: its status and body. The writing side stays open until the
/// answer is read.
async fn chunked_upload(proxy: std::net::SocketAddr, head: &str, size: usize) -> (u16, String) {
    let head = head.to_string();
    let exchange = async move {
        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            let chunk = vec![b'y'; 65_536];
            let mut sent = 0;
            while sent < size {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                writer.write_all(&chunk).await?;
                writer.write_all(b"\r\n").await?;
                sent += chunk.len();
            }
            writer.write_all(b"0\r\n\r\n").await?;
            // Kept open until the answer is read: a client that shuts its side down is taken
            // for gone, and the server does not answer it.
            Ok::<_, std::io::Error>(writer)
        });
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer).await;
        writing.abort();
        answer
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("the proxy answers in time");
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    (status, body.to_string())
}

/// Paying through the proxy, with the token as Basic credentials in the proxy URL (the way
/// `HTTP_PROXY` carries it) and as a Bearer credential: the seller's content comes back with
/// X-Bursar-Payment (posted, the price, the transaction); exactly the price moves on chain each
/// time; the ledger holds reserve + post per payment; free requests pass untouched; payment
/// headers the agent sends itself never reach the seller.
pub async fn pays_through_the_proxy(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let start = 1_000_000u64;
    let (wallet, payer) = rt.funded_wallet(&network, "main", start).await;
    let grant = rt.grant(&wallet, "researcher", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let agent = agent_client(proxy, &token);

    let free = get(&agent, &format!("{}/free", network.seller_url)).await;
    assert_eq!(free.status, 200, "{}", free.body);
    assert_eq!(free.body, "free");
    assert!(free.payment().is_none());
    assert!(free.header("x-bursar-error").is_none());
    assert!(free.header("via").is_some_and(|via| via.contains("bursar")));
    assert_eq!(network.payments_seen(), 0);

    let paid = get(&agent, &format!("{}/paid", network.seller_url)).await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.json(), json!({"content": "paid"}));
    assert!(
        paid.header("content-type")
            .is_some_and(|kind| kind.starts_with("application/json"))
    );
    let payment = paid.payment().expect("X-Bursar-Payment on a paid request");
    assert_eq!(payment["state"], "posted", "{payment}");
    assert_eq!(payment["amountAtomic"], PRICE.to_string());
    assert_eq!(
        payment["payTo"].as_str().unwrap().to_ascii_lowercase(),
        network.payee.to_string().to_ascii_lowercase()
    );
    assert_eq!(payment["network"], network.currency().network.caip2());
    let tx_hash = payment["txHash"]
        .as_str()
        .expect("a settlement transaction");
    let transfer_id = payment["transferId"].as_str().unwrap();
    assert_eq!(network.payments_seen(), 1);
    assert_eq!(network.balance(payer).await, U256::from(start - PRICE));
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));

    let transfer = rt
        .runtime
        .store()
        .transfer(transfer_id)
        .await
        .unwrap()
        .expect("the transfer is recorded");
    assert_eq!(transfer.state, TransferState::Posted);
    assert_eq!(transfer.session_id, session);
    assert_eq!(transfer.tx_hash, Some(tx_hash.parse().unwrap()));
    let entries = rt.runtime.store().entries(0, 100).await.unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Reserve, EntryKind::Post]);
    assert_eq!(entries[1].amount, Some(Amount::from(PRICE)));
    assert_eq!(entries[1].agent.as_deref(), Some("researcher"));
    assert!(entries[1].resource.as_deref().unwrap().ends_with("/paid"));

    // Bearer credentials; and payment headers of the agent's own are dropped, so the runtime
    // pays (once) as usual rather than forwarding them.
    let bearer = proxied_client(
        reqwest::Proxy::http(format!("http://{proxy}"))
            .unwrap()
            .custom_http_auth(format!("Bearer {token}").parse().unwrap()),
    );
    let paid = Answer::of(
        bearer
            .get(format!("{}/paid", network.seller_url))
            .header("x-payment", "forged")
            .header("payment-signature", "forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.payment().unwrap()["state"], "posted");
    assert_eq!(network.payments_seen(), 2, "one payment header per payment");
    assert_eq!(network.balance(payer).await, U256::from(start - 2 * PRICE));
    assert_eq!(network.balance(network.payee).await, U256::from(2 * PRICE));

    let record = rt.runtime.session(&session).await.unwrap();
    assert_eq!(record.posted, Amount::from(2 * PRICE));
    assert_eq!(record.reserved, Amount::ZERO);
    let entries = rt.runtime.store().entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 4);
    let report = reconcile(&rt.runtime).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
    assert_eq!(report.posted_total, Amount::from(2 * PRICE));
}

/// A session whose budget cannot cover the price: 403 budget_exhausted from the proxy, no
/// payment header reaches the seller, nothing moves on chain, the ledger records the denial only.
/// A price above what is left after paying is refused the same way.
pub async fn budget_refusals_move_nothing(store_url: &str) {
    let network = network().await;
    // The budget alone: the default policy (a call at most a quarter of the budget) would
    // refuse these prices before the budget is consulted.
    let rt =
        common::runtime_with(&network, store_url, |config| config.default_policy = false).await;
    let start = 1_000_000u64;
    let (wallet, payer) = rt.funded_wallet(&network, "w", start).await;
    let grant = rt.grant(&wallet, "frugal", None).await;
    let (_, small_token) = rt.session(&grant, "0.005", None).await;
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let url = format!("{}/paid", network.seller_url);

    let refused = get(&agent_client(proxy, &small_token), &url).await;
    refused.assert_error(403, "budget_exhausted");
    assert_eq!(
        network.payments_seen(),
        0,
        "a payment header reached the seller"
    );
    assert_eq!(network.balance(payer).await, U256::from(start));
    assert_eq!(network.balance(network.payee).await, U256::ZERO);
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
    let entries = rt.runtime.store().entries(0, 100).await.unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Deny]);
    assert!(
        entries[0]
            .reason
            .as_deref()
            .is_some_and(|reason| reason.starts_with("budget_exhausted")),
        "{:?}",
        entries[0].reason
    );

    // Budget for exactly one payment: the first is paid, the second refused.
    let (session, token) = rt
        .session(&grant, &Amount::from(PRICE).to_human(6), None)
        .await;
    let agent = agent_client(proxy, &token);
    let first = get(&agent, &url).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = get(&agent, &url).await;
    second.assert_error(403, "budget_exhausted");
    assert_eq!(network.payments_seen(), 1);
    assert_eq!(network.balance(payer).await, U256::from(start - PRICE));
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));
    let record = rt.runtime.session(&session).await.unwrap();
    assert_eq!(record.posted, Amount::from(PRICE));
    assert_eq!(record.remaining(), Amount::ZERO);
}

/// No credentials, malformed or forged ones, and operator keys: 407 with a Basic challenge. A
/// closed session's valid token: 403 session_closed. Another agent's token pays from its own
/// session only. Nothing is paid for any refusal.
pub async fn credentials_are_enforced(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let start = 1_000_000u64;
    let (wallet, payer) = rt.funded_wallet(&network, "w", start).await;
    let grant = rt.grant(&wallet, "alice", None).await;
    let (alice, alice_token) = rt.session(&grant, "1", None).await;
    let other_grant = rt.grant(&wallet, "bob", None).await;
    let (bob, bob_token) = rt.session(&other_grant, "1", None).await;
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let url = format!("{}/paid", network.seller_url);
    let basic = |text: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    };

    let anonymous = proxied_client(reqwest::Proxy::http(format!("http://{proxy}")).unwrap());
    let refused = get(&anonymous, &url).await;
    refused.assert_error(407, "unauthorized");
    assert_eq!(
        refused.header("proxy-authenticate"),
        Some("Basic realm=\"bursar\"")
    );

    let forged = format!(
        "{}{}",
        &alice_token[..alice_token.len() - 1],
        if alice_token.ends_with('0') { '1' } else { '0' }
    );
    for credential in [
        basic(&format!("agent:{forged}")),
        basic(&format!("agent:{}", rt.operator_key)),
        format!("Bearer {}", rt.operator_key),
        basic("agent:bst_ses_0123_abcd"),
        "Basic %%%%".to_string(),
        "Negotiate abc".to_string(),
        format!("Bearer {alice_token}x"),
    ] {
        let client = proxied_client(
            reqwest::Proxy::http(format!("http://{proxy}"))
                .unwrap()
                .custom_http_auth(credential.parse().unwrap()),
        );
        let refused = get(&client, &url).await;
        refused.assert_error(407, "unauthorized");
    }
    // Not even valid UTF-8, on the wire.
    let (status, head, body) = raw(
        proxy,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: seller\r\nProxy-Authorization: Bearer \u{e9}\u{ff}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 407, "{body}");
    assert!(head.contains("proxy-authenticate: basic realm=\"bursar\""));
    assert_eq!(network.payments_seen(), 0);

    // Bob pays with his own token: his session is charged, alice's is untouched.
    let paid = get(&agent_client(proxy, &bob_token), &url).await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    let transfer_id = paid.payment().unwrap()["transferId"]
        .as_str()
        .unwrap()
        .to_string();
    let transfer = rt
        .runtime
        .store()
        .transfer(&transfer_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(transfer.session_id, bob);
    assert_eq!(
        rt.runtime.session(&bob).await.unwrap().posted,
        Amount::from(PRICE)
    );
    assert_eq!(
        rt.runtime.session(&alice).await.unwrap().posted,
        Amount::ZERO
    );

    let (status, closed) = rt
        .operator(Method::POST, &format!("/v1/sessions/{alice}/close"), None)
        .await;
    assert_eq!(status, 200, "{closed}");
    let alice_agent = agent_client(proxy, &alice_token);
    get(&alice_agent, &url)
        .await
        .assert_error(403, "session_closed");
    get(&alice_agent, &format!("{}/free", network.seller_url))
        .await
        .assert_error(403, "session_closed");

    assert_eq!(network.payments_seen(), 1);
    assert_eq!(network.balance(payer).await, U256::from(start - PRICE));
    assert_eq!(rt.runtime.store().transfers(None).await.unwrap().len(), 1);
}

/// What the proxy does not forward: CONNECT (405, with the way out in the message), requests that
/// are not proxy requests (400), bodies over the bound (413, also when declared far larger than
/// sent), non-HTTP schemes (400), and requests that already passed through a Bursar proxy (508).
/// A client still sending a refused body gets the answer, not a reset. None of them reaches the
/// seller.
pub async fn unforwardable_requests_are_refused(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, payer) = rt.funded_wallet(&network, "w", 1_000_000).await;
    let grant = rt.grant(&wallet, "a", None).await;
    let (_, token) = rt.session(&grant, "1", None).await;
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let credentials = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"))
    );
    let seller = network.seller_url.trim_start_matches("http://").to_string();

    for auth in [
        String::new(),
        format!("Proxy-Authorization: {credentials}\r\n"),
    ] {
        let (status, head, body) = raw(
            proxy,
            &format!(
                "CONNECT {seller} HTTP/1.1\r\nHost: {seller}\r\n{auth}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 405, "{body}");
        assert!(
            head.contains("x-bursar-error: connect_not_supported"),
            "{head}"
        );
        assert!(head.contains("allow: get"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "connect_not_supported");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("http://") && message.contains("/fetch"),
            "{message}"
        );
    }

    // Origin-form: someone talking to the proxy as if it were a web server.
    let answer = get(&direct_client(), &format!("http://{proxy}/paid")).await;
    answer.assert_error(400, "not_a_proxy_request");
    let (status, _, body) = raw(
        proxy,
        &format!(
            "GET ftp://{seller}/paid HTTP/1.1\r\nHost: {seller}\r\nProxy-Authorization: \
             {credentials}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let agent = agent_client(proxy, &token);
    // Over the bound but within what the proxy drains: it reads the whole body before
    // answering, so the client finishes writing and reads the 413 (never a reset, however
    // loaded the machine).
    let huge = vec![b'x'; PROXY_BODY_BYTES_MAX + 1];
    let answer = Answer::of(
        agent
            .post(format!("{}/paid", network.seller_url))
            .body(huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_error(413, "payload_too_large");
    // Declared far beyond what the proxy drains, and never sent: refused from the headers
    // alone, before any of the body, then the connection is closed.
    let (status, head, body) = raw(
        proxy,
        &format!(
            "POST {}/paid HTTP/1.1\r\nHost: {seller}\r\nProxy-Authorization: {credentials}\r\n\
             Content-Length: {}\r\n\r\n",
            network.seller_url,
            1u64 << 30
        ),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(head.contains("x-bursar-error: payload_too_large"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Requests refused before their body is read (origin-form, no credentials) get their
    // answer too: the body is drained first.
    let answer = Answer::of(
        direct_client()
            .post(format!("http://{proxy}/paid"))
            .body(vec![b'z'; PROXY_BODY_BYTES_MAX])
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_error(400, "not_a_proxy_request");
    let answer = Answer::of(
        proxied_client(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
            .post(format!("{}/paid", network.seller_url))
            .body(vec![b'z'; PROXY_BODY_BYTES_MAX])
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_error(407, "unauthorized");
    // The same without Content-Length (chunked), so the bound applies while reading.
    let (status, body) = chunked_upload(
        proxy,
        &format!(
            "POST {}/paid HTTP/1.1\r\nHost: {seller}\r\nProxy-Authorization: {credentials}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            network.seller_url
        ),
        PROXY_BODY_BYTES_MAX + 1,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let looped = Answer::of(
        agent
            .get(format!("{}/paid", network.seller_url))
            .header("via", "1.1 bursar")
            .send()
            .await
            .unwrap(),
    )
    .await;
    looped.assert_error(508, "proxy_loop");

    assert_eq!(network.payments_seen(), 0);
    assert_eq!(network.balance(payer).await, U256::from(1_000_000u64));
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
}

/// What the upstream sees and what the agent gets back: method, path, query, body and end-to-end
/// headers as sent, without proxy credentials, hop-by-hop or payment headers; the upstream's
/// status, headers (repeated ones too) and body as they came, except a forged X-Bursar-Payment.
pub async fn requests_and_answers_pass_through(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let (wallet, _) = rt.funded_wallet(&network, "w", 0).await;
    let grant = rt.grant(&wallet, "a", None).await;
    let (_, token) = rt.session(&grant, "1", None).await;
    let proxy = serve(proxy_router(rt.runtime.clone())).await;

    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let echo = Router::new().fallback(move |request: axum::extract::Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .keys()
                .map(|name| {
                    let values: Vec<&str> = parts
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap())
                        .collect();
                    (name.to_string(), json!(values))
                })
                .collect();
            let document = json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers,
                "body": base64::engine::general_purpose::STANDARD.encode(&body),
            });
            (
                http::StatusCode::CREATED,
                axum::response::AppendHeaders([
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("x-upstream", "yes"),
                    ("x-bursar-payment", "{\"state\":\"posted\"}"),
                ]),
                axum::Json(document),
            )
        }
    });
    let upstream = serve(echo).await;

    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let answer = Answer::of(
        agent_client(proxy, &token)
            .patch(format!("http://{upstream}/items/7?fields=a,b&x=%20y"))
            .header("authorization", "Bearer upstream-api-key")
            .header("x-request-id", "r-1")
            .header("x-payment", "forged")
            .header("x-bursar-phase", "execute")
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(answer.header("x-upstream"), Some("yes"));
    let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(
        answer.payment().is_none(),
        "a seller cannot forge X-Bursar-Payment"
    );
    assert!(answer.header("x-bursar-error").is_none());

    let echoed = answer.json();
    assert_eq!(echoed["method"], "PATCH");
    assert_eq!(echoed["uri"], "/items/7?fields=a,b&x=%20y");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(echoed["body"].as_str().unwrap())
            .unwrap(),
        body
    );
    let headers = echoed["headers"].as_object().unwrap();
    assert_eq!(headers["authorization"], json!(["Bearer upstream-api-key"]));
    assert_eq!(headers["x-request-id"], json!(["r-1"]));
    assert_eq!(headers["content-type"], json!(["application/octet-stream"]));
    assert_eq!(headers["content-length"], json!([body.len().to_string()]));
    assert_eq!(headers["via"], json!(["1.1 bursar"]));
    for absent in [
        "proxy-authorization",
        "proxy-connection",
        "x-payment",
        "payment-signature",
        "x-bursar-phase",
    ] {
        assert!(!headers.contains_key(absent), "{absent} was forwarded");
    }
    let transfers = rt.runtime.store().transfers(None).await.unwrap();
    assert!(transfers.is_empty());
}

/// X-Bursar-Phase is the API's `phase`: a session whose policy forbids spending while exploring
/// is refused in that phase (403 phase_no_spend, nothing signed or moved) and pays when executing.
pub async fn phase_policies_apply(store_url: &str) {
    let network = network().await;
    let rt = runtime(&network, store_url).await;
    let start = 1_000_000u64;
    let (wallet, payer) = rt.funded_wallet(&network, "w", start).await;
    let grant = rt.grant(&wallet, "planner", None).await;
    let (session, token) = rt.session(&grant, "1", None).await;
    let response = rt
        .http
        .put(format!("{}/v1/sessions/{session}/policy", rt.url))
        .bearer_auth(&rt.operator_key)
        .body("[phases.explore]\nspend = false")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let proxy = serve(proxy_router(rt.runtime.clone())).await;
    let agent = agent_client(proxy, &token);
    let url = format!("{}/paid", network.seller_url);
    let in_phase = async |phase: &str| {
        Answer::of(
            agent
                .get(&url)
                .header("x-bursar-phase", phase)
                .send()
                .await
                .unwrap(),
        )
        .await
    };

    in_phase("explore")
        .await
        .assert_error(403, "phase_no_spend");
    assert_eq!(network.payments_seen(), 0);
    assert_eq!(network.balance(payer).await, U256::from(start));
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
    in_phase("").await.assert_error(400, "invalid_request");

    let paid = in_phase("execute").await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.payment().unwrap()["state"], "posted");
    assert_eq!(network.payments_seen(), 1);
    assert_eq!(network.balance(payer).await, U256::from(start - PRICE));
    assert_eq!(network.balance(network.payee).await, U256::from(PRICE));
}

on_both_databases!(
    pays_through_the_proxy,
    budget_refusals_move_nothing,
    credentials_are_enforced,
    unforwardable_requests_are_refused,
    requests_and_answers_pass_through,
    phase_policies_apply,
);
