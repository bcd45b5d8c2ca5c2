//! CPU cost of verifying an `exact` EVM payment without a chain: the EIP-712 digest, signature
//! recovery (libsecp256k1), the full stateless `check_payment`, and decoding a header first.
//! Throughput is reported in payments per second on one core.
//!
//! Run with `cargo bench -p bursar-protocol --bench signatures`.

use std::hint::black_box;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_protocol::exact_evm::{
    Authorization, ExactEvmPayload, check_payment, recover_signer, sign_authorization, token_domain,
};
use bursar_protocol::{Amount, Network, PaymentPayload, PaymentRequirements};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const CHAIN: u64 = 8453;
const NOW: u64 = 1_800_000_000;

fn signatures(c: &mut Criterion) {
    let token: Address = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
        .parse()
        .unwrap();
    let pay_to = Address::repeat_byte(0x70);
    let signer = PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11)).unwrap();
    let requirements = PaymentRequirements {
        scheme: "exact".into(),
        network: Network::Eip155(CHAIN),
        amount: Amount::from(10_000u64),
        asset: token.into(),
        pay_to: pay_to.into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": "USD Coin", "version": "2"})),
    };
    let authorization = Authorization {
        from: signer.address(),
        to: pay_to,
        value: requirements.amount,
        valid_after: U256::from(NOW - 600),
        valid_before: U256::from(NOW + 60),
        nonce: B256::repeat_byte(0x42),
    };
    let domain = token_domain("USD Coin", "2", CHAIN, token);
    let digest = authorization.signing_hash(&domain);
    let signature = sign_authorization(&signer, &authorization, &domain).unwrap();
    let payload = PaymentPayload::new_v2(
        requirements.clone(),
        None,
        ExactEvmPayload {
            signature: signature.clone(),
            authorization: authorization.clone(),
        },
    );
    let header = payload.to_header();
    // Sanity: the benchmarked paths succeed, so failures are not what is being timed.
    assert_eq!(
        recover_signer(&digest, &signature).unwrap(),
        signer.address()
    );
    assert_eq!(
        check_payment(&payload, &requirements, CHAIN, NOW)
            .unwrap()
            .payer,
        signer.address()
    );

    let mut group = c.benchmark_group("exact_evm");
    group.throughput(Throughput::Elements(1));
    group.bench_function("eip712_signing_hash", |b| {
        b.iter(|| black_box(&authorization).signing_hash(black_box(&domain)))
    });
    group.bench_function("recover_signer", |b| {
        b.iter(|| recover_signer(black_box(&digest), black_box(&signature)))
    });
    group.bench_function("check_payment", |b| {
        b.iter(|| check_payment(black_box(&payload), black_box(&requirements), CHAIN, NOW))
    });
    group.bench_function("decode_header_then_check_payment", |b| {
        b.iter(|| {
            let payload = PaymentPayload::from_header(black_box(&header)).unwrap();
            check_payment(&payload, black_box(&requirements), CHAIN, NOW)
        })
    });
    group.finish();
}

criterion_group!(benches, signatures);
criterion_main!(benches);
