//! bursar-chain's conformance suite against anvil, a fresh node per case.
//!
//! Each chain owns its anvil: the process is killed when the case drops the chain.

use std::sync::Arc;

use bursar_chain::DevChain;
use bursar_chain_rpc::AnvilInstance;

async fn fresh_anvil_chain() -> Arc<dyn DevChain> {
    let anvil = AnvilInstance::spawn().unwrap_or_else(|e| panic!("{e}"));
    anvil
        .into_chain()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}"))
}

bursar_chain::conformance_tests!(fresh_anvil_chain().await);
