//! Facilitator scenarios on anvil (a fresh node per case, killed when the case ends).

mod scenarios;

async fn fresh_anvil_chain() -> std::sync::Arc<dyn bursar_chain::DevChain> {
    let anvil = bursar_chain_rpc::AnvilInstance::spawn().unwrap_or_else(|e| panic!("{e}"));
    anvil
        .into_chain()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to anvil: {e}"))
}

facilitator_scenarios!(fresh_anvil_chain().await);
