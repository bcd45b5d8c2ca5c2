//! The shared chain conformance suite, on a fresh memory-only embedded chain per case.

use bursar_chain_revm::EmbeddedChain;

bursar_chain::conformance_tests!(EmbeddedChain::memory());
