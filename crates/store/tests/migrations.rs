//! Data migrations, on SQLite and PostgreSQL: rows written before a migration get the values the
//! current code would have written.

use bursar_protocol::Amount;
use bursar_store::open_runtime_store;
use bursar_store::runtime::{NewGrant, NewSession, NewTransfer, NewWallet, Reservation};

/// The statement of `migration` that starts with `UPDATE` (comments dropped).
fn update_statement(migration: &str) -> String {
    let code: String = migration
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .find(|statement| statement.starts_with("UPDATE"))
        .expect("the migration has an UPDATE")
        .to_string()
}

/// Migration 0011 gives transfers written before it the endpoint of their resource: the URL
/// without its query string and fragment.
async fn transfer_endpoints_are_backfilled(url: &str, migration: &str) {
    let store = open_runtime_store(url).await.unwrap();
    let wallet = store
        .create_wallet(NewWallet {
            name: "w".into(),
            address: format!("0x{:040x}", 7),
            keystore: "{}".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let grant = store
        .create_grant(NewGrant {
            wallet_id: wallet.id,
            agent: "a".into(),
            expires_at_ms: now + 3_600_000,
            request: "60m".into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    let session = store
        .create_session(NewSession {
            grant_id: grant.id,
            network: "eip155:31337".into(),
            asset: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
            currency: "USDC".into(),
            max_spend: Amount::from(1_000u64),
            expires_at_ms: now + 600_000,
            client_token: None,
            request: "10m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let resources = [
        (
            "https://api.example.com:8443/v1/report?city=Lisbon&units=metric",
            "https://api.example.com:8443/v1/report",
        ),
        ("http://127.0.0.1/paid#section", "http://127.0.0.1/paid"),
        ("http://127.0.0.1/paid", "http://127.0.0.1/paid"),
        ("http://[::1]:9000/x/y?q=1#f", "http://[::1]:9000/x/y"),
    ];
    for (index, (resource, _)) in resources.iter().enumerate() {
        let reservation = store
            .reserve(NewTransfer {
                session_id: session.id.clone(),
                network: "eip155:31337".into(),
                asset: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
                payer: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".into(),
                payee: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into(),
                amount: Amount::from(1u64),
                nonce: format!("0x{index:064x}"),
                valid_before_s: 4_000_000_000,
                resource: resource.to_string(),
                endpoint: "written before the migration".into(),
                caps: Vec::new(),
            })
            .await
            .unwrap();
        assert!(matches!(reservation, Reservation::Reserved(_)));
    }
    // As if written before the column existed, then the migration's backfill.
    let forget = "UPDATE transfers SET endpoint = NULL";
    let backfill = update_statement(migration);
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(forget))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(backfill))
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(forget))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(backfill))
            .execute(&pool)
            .await
            .unwrap();
    }
    let count = |endpoint: &'static str| {
        let store = store.clone();
        let session = session.id.clone();
        async move {
            store
                .endpoint_payments(&session, endpoint, 0)
                .await
                .unwrap()
                .count
        }
    };
    assert_eq!(count("https://api.example.com:8443/v1/report").await, 1);
    assert_eq!(count("http://127.0.0.1/paid").await, 2);
    assert_eq!(count("http://[::1]:9000/x/y").await, 1);
    assert_eq!(count("written before the migration").await, 0);
    for (resource, endpoint) in resources {
        let parsed = url::Url::parse(resource).unwrap();
        let expected = format!(
            "{}://{}{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap(),
            parsed.port().map(|p| format!(":{p}")).unwrap_or_default(),
            parsed.path()
        );
        assert_eq!(
            expected, endpoint,
            "the expectation follows the runtime's endpoint"
        );
    }
}

#[tokio::test]
async fn sqlite_transfer_endpoints_are_backfilled() {
    let database = bursar_store::testkit::TempSqlite::new();
    transfer_endpoints_are_backfilled(
        &database.url(),
        include_str!("../migrations/sqlite/0011_transfer_endpoints.sql"),
    )
    .await;
}

#[tokio::test]
async fn postgres_transfer_endpoints_are_backfilled() {
    let database = bursar_store::testkit::TempPostgres::create().await;
    transfer_endpoints_are_backfilled(
        database.url(),
        include_str!("../migrations/postgres/0011_transfer_endpoints.sql"),
    )
    .await;
}
