//! Facilitator scenarios on the embedded chain.

mod scenarios;

facilitator_scenarios!(bursar_chain_revm::EmbeddedChain::memory());
