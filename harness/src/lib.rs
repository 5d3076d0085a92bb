//! fusegate's harness: compares candidates with PyTorch goldens (ULP histograms, bit-exact
//! fractions, error against fp64 truth relative to PyTorch's own), judges contracts, checks
//! determinism and batch invariance, and lists the trials every front end runs.

pub mod backends;
pub mod cancel;
pub mod conform;
pub mod invariance;
pub mod metrics;
pub mod own_inputs;
pub mod resolution;
pub mod results;
pub mod suite;
pub mod trials;
pub mod truth;
pub mod verdict;

pub use suite::Suite;
pub use trials::{BackendSlot, Check, Outcome, Trial, TrialReport};
pub use verdict::Verdict;
