//! Wallet keys at a cold start, on SQLite and on PostgreSQL: a runtime that has just started
//! decrypts each wallet's key once, whatever the number of concurrent first payments; a failed
//! decryption is not kept; decryptions across wallets are bounded. Each case pays through the
//! API against the real paywall and checks the decryption count, the chain and the ledger.

#[macro_use]
mod common;

use alloy_primitives::U256;
use bursar_store::runtime::{EntryKind, NewWallet, TransferState};
use bursar_wallet::{Kdf, Keystore, Passphrase};
use common::{Network_, PRICE, RuntimeUnderTest, network, runtime_with};
use futures::future::join_all;
use http::Method;

/// A runtime on `store_url` that encrypts (and so decrypts) wallet keys with `kdf`. The default
/// policy is off: these cases pay one endpoint many times at once on purpose (the default policy
/// would call that a loop), and what they test is key decryption, not governance.
async fn runtime_kdf(
    network: &Network_,
    store_url: &str,
    kdf: Kdf,
    kdf_concurrency: Option<usize>,
) -> RuntimeUnderTest {
    runtime_with(network, store_url, |config| {
        config.default_policy = false;
        config.kdf = kdf;
        if let Some(concurrency) = kdf_concurrency {
            config.kdf_concurrency = concurrency;
        }
    })
    .await
}

/// 50 concurrent first payments from one wallet, through the API of a runtime that has just
/// started (the wallet was created by another, so nothing is decrypted in this one): the key
/// (geth's standard scrypt) is decrypted exactly once, every payment settles, and the chain and
/// the ledger show exactly 50 payments.
async fn concurrent_first_payments_decrypt_the_key_once(store_url: &str) {
    const PAYMENTS: u64 = 50;
    let network = network().await;
    let setup = runtime_kdf(&network, store_url, Kdf::standard(), None).await;
    let (wallet, payer) = setup
        .funded_wallet(&network, "cold", PRICE * (PAYMENTS + 1))
        .await;
    let grant = setup.grant(&wallet, "agent", None).await;
    let (session, token) = setup.session(&grant, "1.00", None).await;

    let rt = runtime_kdf(&network, store_url, Kdf::standard(), None).await;
    assert_eq!(rt.runtime.key_decryptions(), 0);
    let paid = format!("{}/paid", network.seller_url);
    let answers = join_all((0..PAYMENTS).map(|_| rt.fetch(&session, &token, &paid))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["payment"]["state"], "posted", "{answer}");
    }
    assert_eq!(rt.runtime.key_decryptions(), 1);
    // Later payments use the decrypted key.
    let (status, answer) = rt.fetch(&session, &token, &paid).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rt.runtime.key_decryptions(), 1);

    assert_eq!(network.balance(payer).await, U256::ZERO);
    assert_eq!(
        network.balance(network.payee).await,
        U256::from(PRICE * (PAYMENTS + 1))
    );
    let transfers = rt.runtime.store().transfers(None).await.unwrap();
    assert_eq!(transfers.len(), (PAYMENTS + 1) as usize);
    assert!(transfers.iter().all(|t| t.state == TransferState::Posted));
    let entries = rt.runtime.store().entries(0, 1_000).await.unwrap();
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EntryKind::Reserve), (PAYMENTS + 1) as usize);
    assert_eq!(count(EntryKind::Post), (PAYMENTS + 1) as usize);
    let report = bursar_runtime::reconcile::reconcile(&rt.runtime)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.differences);
}

/// A wallet whose keystore does not open under the runtime's passphrase: each payment is
/// refused before anything is sent (wrong_passphrase), and each tries the decryption again
/// (the failure is not kept). Nothing reaches the seller or the ledger.
async fn failed_decryptions_are_not_kept(store_url: &str) {
    let network = network().await;
    let rt = runtime_kdf(&network, store_url, Kdf::light(), None).await;
    let signer = alloy_signer_local::PrivateKeySigner::random();
    let keystore = Keystore::encrypt(
        &signer,
        &Passphrase::new("another passphrase".into()).unwrap(),
        Kdf::light(),
    )
    .unwrap();
    let wallet = rt
        .runtime
        .store()
        .create_wallet(NewWallet {
            name: "foreign".into(),
            address: signer.address(),
            keystore: keystore.to_json(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    network.mint(signer.address(), 1_000_000).await;
    let grant = rt.grant(&wallet.id, "agent", None).await;
    let (session, token) = rt.session(&grant, "1.00", None).await;
    let paid = format!("{}/paid", network.seller_url);
    for attempt in 1..=2 {
        let (status, answer) = rt.fetch(&session, &token, &paid).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "wrong_passphrase", "{answer}");
        assert_eq!(rt.runtime.key_decryptions(), attempt);
    }
    assert_eq!(network.requests_seen(), 0);
    assert_eq!(
        network.balance(signer.address()).await,
        U256::from(1_000_000)
    );
    assert!(rt.runtime.store().transfers(None).await.unwrap().is_empty());
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

/// Six wallets paying for the first time at once through a runtime bounded to two key
/// derivations at a time: six decryptions, never more than two running together, every payment
/// settled.
async fn decryptions_across_wallets_are_bounded(store_url: &str) {
    const WALLETS: usize = 6;
    // 32 MiB per derivation: long enough for six to overlap without a bound.
    let kdf = Kdf::Scrypt {
        log_n: 15,
        r: 8,
        p: 1,
    };
    let network = network().await;
    let setup = runtime_kdf(&network, store_url, kdf, Some(2)).await;
    let mut sessions = Vec::new();
    let mut payers = Vec::new();
    for index in 0..WALLETS {
        let (wallet, payer) = setup
            .funded_wallet(&network, &format!("w{index}"), PRICE)
            .await;
        let grant = setup.grant(&wallet, "agent", None).await;
        sessions.push(setup.session(&grant, "0.01", None).await);
        payers.push(payer);
    }
    let rt = runtime_kdf(&network, store_url, kdf, Some(2)).await;
    let paid = format!("{}/paid", network.seller_url);
    let answers = join_all(
        sessions
            .iter()
            .map(|(session, token)| rt.fetch(session, token, &paid)),
    )
    .await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["payment"]["state"], "posted", "{answer}");
    }
    assert_eq!(rt.runtime.key_decryptions(), WALLETS as u64);
    let concurrent = rt.runtime.key_decryptions_concurrent_max();
    assert!((1..=2).contains(&concurrent), "{concurrent} ran at once");
    for payer in payers {
        assert_eq!(network.balance(payer).await, U256::ZERO);
    }
    assert_eq!(
        network.balance(network.payee).await,
        U256::from(PRICE * WALLETS as u64)
    );
}

on_both_databases!(
    concurrent_first_payments_decrypt_the_key_once,
    failed_decryptions_are_not_kept,
    decryptions_across_wallets_are_bounded,
);
