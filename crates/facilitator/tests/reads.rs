//! Grouped chain reads (`FacilitatorConfig::group_reads`) give exactly the verdicts single reads
//! give: the same payments verified concurrently by a facilitator with grouped reads and by one
//! without, on the embedded chain and on anvil. A token that cannot answer fails its own
//! payments only; grouped settlement moves exactly the price.

#[allow(dead_code)]
mod scenarios;

use std::sync::Arc;

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::testkit;
use bursar_chain::{DevChain, EvmChain};
use bursar_facilitator::{FacilitatorConfig, LocalFacilitator};
use bursar_protocol::{FacilitatorRequest, Reason, X402Version};
use scenarios::{Harness, PAYER_BALANCE, PRICE};

fn request(_h: &Harness, body: &serde_json::Value) -> FacilitatorRequest {
    FacilitatorRequest::from_json(body.to_string().as_bytes()).unwrap()
}

async fn grouped_reads_agree_with_single_reads(chain: Arc<dyn DevChain>) {
    let h = scenarios::harness(chain.clone()).await;
    let evm: Arc<dyn EvmChain> = chain.clone();
    let grouped = LocalFacilitator::new(
        evm.clone(),
        testkit::funded_account(&chain).await,
        FacilitatorConfig {
            group_reads: true,
            ..Default::default()
        },
    );
    let requirements = h.requirements();

    // A poor payer (less than the price), a used nonce, and a token with no code.
    let poor = PrivateKeySigner::random();
    h.fixture
        .token
        .mint(&h.fixture.owner, poor.address(), U256::from(PRICE - 1))
        .await
        .unwrap();
    let spent = h
        .authorization(&requirements, &h.fixture.payer, |_| {})
        .await;
    let spent = request(&h, &h.request(X402Version::V2, &requirements, &spent));
    assert!(h.facilitator.settle(&spent).await.success);
    let mut no_token = requirements.clone();
    no_token.asset = Address::repeat_byte(0x42).into();

    let mut payments = vec![spent];
    for index in 0..60 {
        let (signer, requirements) = match index % 4 {
            0 => (&poor, &requirements),
            1 => (&h.fixture.payer, &no_token),
            _ => (&h.fixture.payer, &requirements),
        };
        let exact = h.authorization(requirements, signer, |_| {}).await;
        payments.push(request(
            &h,
            &h.request(X402Version::V2, requirements, &exact),
        ));
    }
    let verdicts = |facilitator: LocalFacilitator| {
        let payments = payments.clone();
        async move {
            let calls = payments.into_iter().map(|payment| {
                let facilitator = facilitator.clone();
                tokio::spawn(async move { facilitator.verify(&payment).await })
            });
            let mut out = Vec::new();
            for call in calls.collect::<Vec<_>>() {
                out.push(call.await.unwrap());
            }
            out
        }
    };
    let single = verdicts(h.facilitator.clone()).await;
    let together = verdicts(grouped.clone()).await;
    assert_eq!(together, single);
    let reason = |i: usize| together[i].invalid_reason.clone();
    assert_eq!(reason(0), Some(Reason::NONCE_ALREADY_USED));
    assert_eq!(reason(1), Some(Reason::INSUFFICIENT_FUNDS));
    // The token with no code: refused as unsupported, by grouped reads as by single ones.
    assert_eq!(
        reason(2),
        Some(Reason::UNSUPPORTED_TOKEN),
        "{:?}",
        together[2]
    );
    assert!(together[3].is_valid, "{:?}", together[3]);
    assert_eq!(together.iter().filter(|v| v.is_valid).count(), 30);

    // Settled through grouped reads: exactly the price per payment.
    let payee_before = h.balance(h.pay_to).await;
    for payment in &payments[3..5] {
        let settled = grouped.settle(payment).await;
        assert!(settled.success, "{settled:?}");
    }
    assert_eq!(
        h.balance(h.pay_to).await,
        payee_before + U256::from(2 * PRICE)
    );
    assert_eq!(
        h.balance(h.fixture.payer.address()).await,
        U256::from(PAYER_BALANCE - 3 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_reads_agree_embedded() {
    grouped_reads_agree_with_single_reads(bursar_chain_revm::EmbeddedChain::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_reads_agree_anvil() {
    let anvil = bursar_chain_rpc::AnvilInstance::spawn().unwrap_or_else(|e| panic!("{e}"));
    let chain = anvil
        .into_chain()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}"));
    grouped_reads_agree_with_single_reads(chain).await;
}
