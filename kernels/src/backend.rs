//! What a backend is: something that runs a registry entry on the op's inputs and reports the
//! stages it observed. The suites are written against this trait alone.

use crate::op::{Observed, OpInputs};
use crate::registry::Entry;
use half::bf16;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("backend {backend} is unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{backend}: {entry} is not implemented on this backend")]
    Unsupported { backend: &'static str, entry: &'static str },
    #[error("{0}")]
    Device(String),
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Err(reason)` when this backend has no implementation of the entry.
    fn supports(&self, entry: &Entry) -> Result<(), String>;
    /// Runs the entry once on fresh NaN-poisoned outputs.
    fn run(&self, entry: &Entry, inputs: &OpInputs) -> Result<Observed, BackendError>;
    /// Whether a chained launch of the entry (programmatic dependent launch: it starts while the
    /// previous kernel still runs) waits for that kernel before reading x: behind a kernel that
    /// writes `x_late` over x late, its q, k, v must be a plain launch's on `x_late`, bit for bit.
    /// `None` where this backend does not chain the entry at this shape.
    fn chained_sees_late_x(
        &self,
        _entry: &Entry,
        _inputs: &OpInputs,
        _x_late: &[bf16],
    ) -> Result<Option<bool>, BackendError> {
        Ok(None)
    }
    /// The device it runs on, for results' environment fingerprint (`None` for the host CPU).
    fn device(&self) -> Option<String> {
        None
    }
    /// Facts about this run worth recording beside the results (e.g. run-time compile times).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Shape checks every backend makes before touching memory.
pub fn check_inputs(inp: &OpInputs) -> Result<(), BackendError> {
    let s = inp.shape;
    let w = inp.weights;
    let bad = |what: &str, got: usize, want: usize| {
        Err(BackendError::BadInput(format!("{what} has {got} elements, the shape needs {want}")))
    };
    if s.t == 0 || s.h == 0 || s.d == 0 || s.nq == 0 || s.nkv == 0 {
        return Err(BackendError::BadInput(format!("every dimension must be positive, got {s:?}")));
    }
    if inp.x.len() != s.t * s.h {
        return bad("x", inp.x.len(), s.t * s.h);
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
    if !(inp.eps.is_finite() && inp.eps > 0.0) {
        return Err(BackendError::BadInput(format!("eps must be finite and positive, got {}", inp.eps)));
    }
    Ok(())
}
