//! The cost of one view call on the embedded chain: `balanceOf` and `authorizationState` on a
//! deployed BursarUSD, the two reads the facilitator makes per verification.
//!
//! Run with `cargo bench -p bursar-chain-revm --bench view_call`. Besides criterion's
//! single-thread numbers it prints the throughput of two threads calling concurrently.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use bursar_chain::{Account, CallOutcome, CallRequest, DevChain, EvmChain, Token};
use bursar_chain_revm::EmbeddedChain;
use criterion::{Criterion, criterion_group, criterion_main};

struct Setup {
    chain: Arc<EmbeddedChain>,
    token: Address,
    holder: Address,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let chain = EmbeddedChain::memory();
        let owner = PrivateKeySigner::random();
        chain
            .set_native_balance(owner.address(), U256::from(10u128.pow(18)))
            .await
            .unwrap();
        let evm: Arc<dyn EvmChain> = chain.clone();
        let owner_account = Account::new(evm, owner.clone());
        let token = Token::deploy(&owner_account, "USD Coin", "USDC", owner.address())
            .await
            .unwrap();
        let holder = Address::repeat_byte(0x11);
        token
            .mint(&owner_account, holder, U256::from(1_000_000u64))
            .await
            .unwrap();
        Setup {
            chain,
            token: token.address(),
            holder,
        }
    })
}

fn view(setup: &Setup, data: alloy_primitives::Bytes) -> CallRequest {
    CallRequest {
        to: Some(setup.token),
        data,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let balance_of = view(&setup, bursar_contracts::balance_of_call(setup.holder));
    let authorization_state = view(
        &setup,
        bursar_contracts::authorization_state_call(setup.holder, B256::repeat_byte(7)),
    );
    assert!(matches!(
        setup.chain.call_blocking(&balance_of),
        Ok(CallOutcome::Success(_))
    ));
    assert!(matches!(
        setup.chain.call_blocking(&authorization_state),
        Ok(CallOutcome::Success(_))
    ));

    c.bench_function("view_call/balance_of", |b| {
        b.iter(|| black_box(setup.chain.call_blocking(black_box(&balance_of))))
    });
    c.bench_function("view_call/authorization_state", |b| {
        b.iter(|| black_box(setup.chain.call_blocking(black_box(&authorization_state))))
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function("view_call/balance_of_via_async_trait", |b| {
        b.iter(|| runtime.block_on(setup.chain.call(black_box(balance_of.clone()))))
    });

    // Two threads, both calls per "verification", as the facilitator would on 2 cores.
    const VERIFICATIONS_PER_THREAD: u32 = 50_000;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..VERIFICATIONS_PER_THREAD {
                    black_box(setup.chain.call_blocking(&balance_of).unwrap());
                    black_box(setup.chain.call_blocking(&authorization_state).unwrap());
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let calls = f64::from(4 * VERIFICATIONS_PER_THREAD);
    println!(
        "2 threads: {:.0} view calls/s, {:.0} verifications (2 calls)/s",
        calls / elapsed.as_secs_f64(),
        calls / 2.0 / elapsed.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
