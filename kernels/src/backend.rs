//! What a backend is: something that prepares a registry entry with one layer's weights once, then
//! runs it on many inputs and reports the stages it observed. The suites, the benchmarks' checks
//! and the model are written against these two traits alone.

use crate::op::{Dims, Observed, OpInputs, Shape, Weights};
use crate::registry::Entry;
use half::bf16;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A backend's typed identity (its name in results files and on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendId {
    /// The CPU emulation of each entry's arithmetic: the reference every GPU result is checked against.
    Cpu,
    Cuda,
}

impl BackendId {
    pub const ALL: [BackendId; 2] = [BackendId::Cpu, BackendId::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            BackendId::Cpu => "cpu",
            BackendId::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for BackendId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackendId::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| format!("unknown backend {s:?}"))
    }
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("backend {backend} is unavailable: {reason}")]
    Unavailable { backend: BackendId, reason: String },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{backend}: {entry} is not implemented on this backend")]
    Unsupported { backend: BackendId, entry: &'static str },
    #[error("{0}")]
    Device(String),
}

/// One layer's op parameters: what an entry is prepared with, shared by every T.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    pub dims: Dims,
    pub weights: &'a Weights,
    pub eps: f32,
}

pub trait Backend: Send + Sync {
    fn id(&self) -> BackendId;
    /// `Err(reason)` when this backend has no implementation of the entry.
    fn supports(&self, entry: &Entry) -> Result<(), String>;
    /// Readies `entry` with one layer's weights (uploads, compiled kernels, plans): done once, then
    /// [`PreparedOp::run`] as often as needed.
    fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError>;
    /// Token counts on both sides of every T at which this backend changes what runs for `entry`
    /// (kernel or tile), so that checks cover every path chosen by shape by construction.
    fn path_boundaries(&self, _entry: &Entry, _dims: &Dims) -> Vec<usize> {
        Vec::new()
    }
    /// Whether `a` and `b` give the same bits on every input here (the CPU emulates arithmetic, not
    /// schedules: entries with the same numerics and fault are one computation there), so a
    /// caller may judge one and report it for both.
    fn same_results(&self, _a: &Entry, _b: &Entry) -> bool {
        false
    }
    /// The device it runs on, for results' environment fingerprint (`None` for the host CPU).
    fn device(&self) -> Option<String> {
        None
    }
    /// Facts about this run worth recording beside the results (e.g. run-time compile times).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// The GPU, where this backend is one: a model runs its whole forward pass there.
    fn as_cuda(&self) -> Option<&crate::cuda::Cuda> {
        None
    }
}

/// An entry ready to run on one layer's weights.
pub trait PreparedOp: Send {
    fn entry(&self) -> &'static Entry;
    /// Runs the entry once on `x` ([T, H], T >= 1) into fresh NaN-poisoned outputs.
    fn run(&mut self, x: &[bf16]) -> Result<Observed, BackendError>;
    /// Whether a chained launch (programmatic dependent launch: it starts while the previous kernel
    /// still runs) waits for that kernel before reading x: behind a kernel that writes `x_late`
    /// over `x` late, its q, k, v must be a plain launch's on `x_late`, bit for bit. `None` where
    /// this backend does not chain the entry at this T.
    fn chained_sees_late_x(&mut self, _x: &[bf16], _x_late: &[bf16]) -> Result<Option<bool>, BackendError> {
        Ok(None)
    }
}

/// Prepares `entry` with the inputs' layer and runs it once on their x: for one-shot callers (a
/// golden case, a test). Inputs are checked first, so bad ones are a `BadInput` on every backend.
pub fn run_once(backend: &dyn Backend, entry: &'static Entry, inp: &OpInputs) -> Result<Observed, BackendError> {
    check_inputs(inp)?;
    let layer = Layer { dims: inp.shape.dims, weights: inp.weights, eps: inp.eps };
    backend.prepare(entry, layer)?.run(inp.x)
}

/// Checks every backend makes on a layer before touching memory.
pub fn check_layer(layer: &Layer<'_>) -> Result<(), BackendError> {
    let s = layer.dims;
    let w = layer.weights;
    let bad = |what: &str, got: usize, want: usize| {
        Err(BackendError::BadInput(format!("{what} has {got} elements, the shape needs {want}")))
    };
    if s.h == 0 || s.d == 0 || s.nq == 0 || s.nkv == 0 {
        return Err(BackendError::BadInput(format!("every dimension must be positive, got {:?}", s.with_t(1))));
    }
    if w.norm.len() != s.h {
        return bad("norm weight", w.norm.len(), s.h);
    }
    if w.qkv.len() != s.n() * s.h {
        return bad("qkv weight", w.qkv.len(), s.n() * s.h);
    }
    if w.q_norm.len() != s.d || w.k_norm.len() != s.d {
        return bad("q/k norm weight", w.q_norm.len().min(w.k_norm.len()), s.d);
    }
    if !(layer.eps.is_finite() && layer.eps > 0.0) {
        return Err(BackendError::BadInput(format!("eps must be finite and positive, got {}", layer.eps)));
    }
    Ok(())
}

/// Checks x against the layer's dims: `T = len / H` rows, at least one.
pub fn check_x(dims: &Dims, x: &[bf16]) -> Result<Shape, BackendError> {
    if x.is_empty() || !x.len().is_multiple_of(dims.h.max(1)) {
        return Err(BackendError::BadInput(format!(
            "x has {} elements, the shape needs a positive multiple of H = {}",
            x.len(),
            dims.h
        )));
    }
    Ok(dims.with_t(x.len() / dims.h))
}

/// Shape checks of one run's inputs (the layer's, and x against them).
pub fn check_inputs(inp: &OpInputs) -> Result<(), BackendError> {
    let layer = Layer { dims: inp.shape.dims, weights: inp.weights, eps: inp.eps };
    check_layer(&layer)?;
    if inp.shape.t == 0 {
        return Err(BackendError::BadInput(format!("every dimension must be positive, got {:?}", inp.shape)));
    }
    if inp.x.len() != inp.shape.t * inp.shape.h {
        return Err(BackendError::BadInput(format!(
            "x has {} elements, the shape needs {}",
            inp.x.len(),
            inp.shape.t * inp.shape.h
        )));
    }
    Ok(())
}
