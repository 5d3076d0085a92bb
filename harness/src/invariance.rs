//! Determinism (same inputs twice, same bits) and batch invariance (row t alone and inside a batch
//! of T rows, same bits), on fresh synthetic Qwen3-0.6B inputs.

use crate::verdict::Verdict;
use fusegate_kernels::{Backend, BackendError, Contract, Entry, Observed, OpInputs, Shape, Stage, synth};
use serde::Serialize;

/// Token counts each row is checked inside. The CPU stops at 256 to keep CI fast; GPUs go to a
/// prefill-sized 2048, where tile choices change.
pub fn token_counts(backend: &str) -> &'static [usize] {
    if backend == "cpu" { &[7, 64, 256] } else { &[7, 64, 256, 2048] }
}

#[derive(Clone, Debug, Serialize)]
pub struct InvarianceReport {
    pub seed: u64,
    pub token_counts: Vec<usize>,
    pub rows_checked: Vec<usize>,
    /// Two runs at the largest T gave the same bits.
    pub deterministic: bool,
    /// Every checked row was the same alone and inside every T.
    pub batch_invariant: bool,
    /// What differed, one line each.
    pub differences: Vec<String>,
}

impl InvarianceReport {
    pub fn verdict(&self, contract: &Contract) -> Verdict {
        let mut reasons = Vec::new();
        if contract.deterministic && !self.deterministic {
            reasons.push("not deterministic: two runs on the same inputs differ".to_string());
        }
        if contract.batch_invariant && !self.batch_invariant {
            reasons.push("not batch-invariant: a row's output depends on T".to_string());
        }
        if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail { reasons } }
    }
}

/// Elements of q, k, v in `rows` of `a` (a run at some T) that differ from `b` (bits, NaN by class).
fn differing(a: &Observed, a_row0: usize, b: &Observed, b_row0: usize, rows: usize, shape: &Shape) -> usize {
    Stage::C
        .iter()
        .map(|s| {
            let width = s.len(shape) / shape.t;
            let (Some(x), Some(y)) = (a.get(s).and_then(|d| d.as_bf16()), b.get(s).and_then(|d| d.as_bf16())) else {
                return usize::MAX / 4;
            };
            let xs = &x[a_row0 * width..(a_row0 + rows) * width];
            let ys = &y[b_row0 * width..(b_row0 + rows) * width];
            xs.iter().zip(ys).filter(|(p, q)| !(p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()))).count()
        })
        .sum()
}

/// Runs `entry` on `backend` at every token count and compares bits.
pub fn check(backend: &dyn Backend, entry: &Entry, seed: u64) -> Result<InvarianceReport, BackendError> {
    let ts = token_counts(backend.name());
    let t_max = *ts.iter().max().expect("token counts are non-empty");
    let full = Shape::qwen3_06b(t_max);
    let weights = synth::weights(&full, seed);
    let x = synth::activations(&full, seed);
    let h = full.h;
    let run = |t: usize, row0: usize| {
        let shape = full.with_t(t);
        backend.run(entry, &OpInputs { shape, x: &x[row0 * h..(row0 + t) * h], weights: &weights, eps: 1e-6 })
    };
    let mut differences = Vec::new();
    let first = run(t_max, 0)?;
    let second = run(t_max, 0)?;
    let n = differing(&first, 0, &second, 0, t_max, &full);
    if n > 0 {
        differences.push(format!("T={t_max}: {n} elements differ between two runs"));
    }
    let deterministic = n == 0;
    // Row t is checked alone (T = 1) against itself inside each T: the first rows and the last.
    let mut rows: Vec<usize> = vec![0, 1, 2];
    rows.extend(ts.iter().map(|t| t - 1));
    rows.sort_unstable();
    rows.dedup();
    let mut batch_invariant = true;
    let alone: Vec<(usize, Observed)> = rows.iter().map(|&r| run(1, r).map(|o| (r, o))).collect::<Result<_, _>>()?;
    for &t in ts {
        let batch = if t == t_max { first.clone() } else { run(t, 0)? };
        for (r, single) in alone.iter().filter(|(r, _)| *r < t) {
            let n = differing(&batch, *r, single, 0, 1, &full.with_t(1));
            if n > 0 {
                batch_invariant = false;
                differences.push(format!("row {r}: {n} elements differ between T=1 and T={t}"));
            }
        }
    }
    Ok(InvarianceReport {
        seed,
        token_counts: ts.to_vec(),
        rows_checked: rows,
        deterministic,
        batch_invariant,
        differences,
    })
}
