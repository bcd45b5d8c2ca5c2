//! The API key store conformance suite, run against SQLite (a temporary file) and PostgreSQL (a
//! fresh database on the local server per case; the cases fail when no server answers).

use std::sync::Arc;

use bursar_store::{KeyDigest, KeyError, KeyLimits, KeyStore, open_key_store};

async fn store(url: &str) -> Arc<dyn KeyStore> {
    open_key_store(url)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"))
}

fn limits() -> KeyLimits {
    KeyLimits {
        requests_per_second: 5,
        burst: 7,
        daily_settlements_max: Some(3),
    }
}

/// A created key is found by its digest, with its seller and limits; its plaintext is not stored.
pub async fn created_keys_are_found_by_digest(url: &str) {
    let store = store(url).await;
    let created = store.create("acme", limits()).await.unwrap();
    assert!(created.key.starts_with("bsk_"));
    assert_eq!(created.key.len(), 4 + 64);
    assert!(!format!("{created:?}").contains(&created.key));
    let found = store
        .lookup(&KeyDigest::of(&created.key))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found, created.record);
    assert_eq!(found.seller, "acme");
    assert_eq!(found.limits, limits());
    assert!(!found.is_revoked());
    assert!(
        store
            .lookup(&KeyDigest::of("bsk_not-a-key"))
            .await
            .unwrap()
            .is_none()
    );
    let other = store.create("acme", KeyLimits::default()).await.unwrap();
    assert_ne!(other.key, created.key);
    assert_ne!(other.record.id, created.record.id);
}

/// Listing shows every key without any secret; revoking is once and is visible to lookups.
pub async fn list_and_revoke(url: &str) {
    let store = store(url).await;
    let first = store.create("first", limits()).await.unwrap();
    let second = store.create("second", KeyLimits::default()).await.unwrap();
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|record| record == &first.record));
    assert!(listed.iter().any(|record| record == &second.record));
    assert!(!format!("{listed:?}").contains(&first.key));

    assert!(store.revoke(&first.record.id).await.unwrap());
    assert!(!store.revoke(&first.record.id).await.unwrap(), "once");
    assert!(!store.revoke("key_unknown").await.unwrap());
    let revoked = store
        .lookup(&KeyDigest::of(&first.key))
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.is_revoked());
    let still = store
        .lookup(&KeyDigest::of(&second.key))
        .await
        .unwrap()
        .unwrap();
    assert!(!still.is_revoked());
}

/// The daily quota counts up to its maximum per key and day, also under concurrency.
pub async fn daily_quota_is_atomic(url: &str) {
    let store = store(url).await;
    let key = store.create("quota", limits()).await.unwrap();
    let mut takers = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        let id = key.record.id.clone();
        takers.push(tokio::spawn(async move {
            store.take_daily_settlement(&id, 100, 3).await.unwrap()
        }));
    }
    let mut taken = 0;
    for taker in takers {
        taken += usize::from(taker.await.unwrap());
    }
    assert_eq!(taken, 3);
    assert!(
        store
            .take_daily_settlement(&key.record.id, 101, 3)
            .await
            .unwrap()
    );
}

/// Bad input is refused before touching the database.
pub async fn invalid_keys_are_refused(url: &str) {
    let store = store(url).await;
    let zero = KeyLimits {
        requests_per_second: 0,
        ..KeyLimits::default()
    };
    assert!(matches!(
        store.create("acme", zero).await,
        Err(KeyError::InvalidLimits(_))
    ));
    assert!(matches!(
        store.create(" ", KeyLimits::default()).await,
        Err(KeyError::InvalidSeller(_))
    ));
    assert!(store.list().await.unwrap().is_empty());
}

macro_rules! conformance {
    ($backend:ident, $database:expr, $url:ident) => {
        mod $backend {
            conformance!(@cases $database, $url;
                created_keys_are_found_by_digest,
                list_and_revoke,
                daily_quota_is_atomic,
                invalid_keys_are_refused
            );
        }
    };
    (@cases $database:expr, $url:ident; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let database = $database;
                super::$case(&database.$url()).await;
            }
        )*
    };
}

conformance!(sqlite, bursar_store::testkit::TempSqlite::new(), url);
conformance!(
    postgres,
    bursar_store::testkit::TempPostgres::create().await,
    url
);

#[tokio::test]
async fn digests_compare_in_constant_time_and_hide_nothing_secret() {
    let digest = KeyDigest::of("bsk_example");
    assert!(digest.constant_time_eq(&KeyDigest::of("bsk_example")));
    assert!(!digest.constant_time_eq(&KeyDigest::of("bsk_examplf")));
    assert_eq!(digest.to_hex().len(), 64);
    let memory = bursar_store::SqliteDatabase::memory();
    let created = memory.create("m", KeyLimits::default()).await.unwrap();
    assert!(
        memory
            .lookup(&KeyDigest::of(&created.key))
            .await
            .unwrap()
            .is_some()
    );
}
