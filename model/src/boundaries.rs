//! Boundary prefills: the model-level version of op conformance's boundary trials. Where a
//! backend changes kernel or tile with T (decode kernels, tile picks), a path chosen by shape can
//! hide a bug that the goldens' prompt lengths never reach (vLLM #48271, #51049). So each entry
//! also prefills the prompts' tokens, cut to both sides of every switch point, and its pass is
//! measured against the baseline's (standard: no path of its own changes with T) on the same
//! backend, layer by layer, with the model contract's drift rule against HF's floor.

use fusegate_kernels::registry;
use fusegate_kernels::{Backend, Entry};
use serde::{Deserialize, Serialize};

use crate::check::Model;
use crate::forward::tap::Untouched;
use crate::forward::{Logits, PassError};
use crate::metrics;

/// One prefill length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundaryPrefill {
    pub t: usize,
    /// The largest (layer drift from the baseline's pass) / (HF's floor drift at that layer).
    #[serde(with = "crate::metrics::maybe_nan")]
    pub worst_over_floor: f64,
    /// The layer where that ratio is largest.
    pub worst_layer: usize,
    pub passed: bool,
}

/// The token counts where `backend` switches paths for `entry` (none for the baseline itself).
pub fn lengths(backend: &dyn Backend, entry: &Entry, model: &Model) -> Vec<usize> {
    if entry.id == registry::baseline().id {
        return Vec::new();
    }
    let mut ts = backend.path_boundaries(entry, &model.weights.config.op_dims());
    ts.sort_unstable();
    ts.dedup();
    ts
}

/// The longest boundary prefill any entry needs on `backend`.
pub fn longest(backend: &dyn Backend, model: &Model) -> usize {
    registry::all().iter().flat_map(|e| lengths(backend, e, model)).max().unwrap_or(0)
}

/// `n` tokens: the golden prompts' ids, one after another, repeated as needed.
fn tokens(model: &Model, n: usize) -> Vec<u32> {
    let all: Vec<u32> = model.golden.manifest.prompts.iter().flat_map(|p| p.ids.iter().copied()).collect();
    all.iter().copied().cycle().take(n).collect()
}

/// Prefills `entry` and the baseline at each boundary length and judges each length's drift.
pub fn check(model: &Model, backend: &dyn Backend, entry: &'static Entry) -> Result<Vec<BoundaryPrefill>, PassError> {
    let ts = lengths(backend, entry, model);
    let Some(&max) = ts.last() else { return Ok(Vec::new()) };
    let seq = tokens(model, max);
    let c = entry.contract().model;
    let h = model.weights.config.hidden_size;
    let (mut ours, mut base) = (model.pass(backend, entry)?, model.pass(backend, registry::baseline())?);
    let mut out = Vec::with_capacity(ts.len());
    for t in ts {
        let a = ours.teacher_forced(&seq[..t], Logits::None, &mut Untouched)?;
        let b = base.teacher_forced(&seq[..t], Logits::None, &mut Untouched)?;
        let drift = metrics::layer_drift(&a.layers, &b.layers, h);
        let ratios: Vec<f64> = drift.iter().zip(&model.floor.drift).map(|(d, f)| d / f).collect();
        // NaN (an unwritten element) is the worst ratio of all.
        let key = |r: f64| if r.is_nan() { f64::INFINITY } else { r };
        let worst_layer = (0..ratios.len()).max_by(|&i, &j| key(ratios[i]).total_cmp(&key(ratios[j]))).unwrap_or(0);
        let worst = ratios.get(worst_layer).copied().unwrap_or(f64::NAN);
        let passed = !worst.is_nan() && worst <= c.max_drift_over_floor;
        out.push(BoundaryPrefill { t, worst_over_floor: worst, worst_layer, passed });
    }
    Ok(out)
}
