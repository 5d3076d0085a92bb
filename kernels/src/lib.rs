//! fusegate's kernels: the fused RMSNorm + QKV op, every variant and mutant (one registry), their
//! precision contracts, and the backends that run them.

pub mod backend;
pub mod contract;
pub mod cpu;
pub mod cuda;
pub mod op;
pub mod registry;
pub mod synth;

pub use backend::{Backend, BackendError, BackendId, Layer, PreparedOp, run_once};
pub use contract::{Contract, ModelContract, RoundedFrom, StageBound, Truth};
pub use op::{Dims, Observed, OpInputs, Shape, Stage, StageData, Weights};
pub use registry::{Entry, EntryId};
