//! Determinism (same inputs twice, same bits), batch invariance (row t alone and inside a batch
//! of T rows, same bits) and, where the backend chains launches, that a chained launch sees what
//! the kernel before it wrote; on fresh synthetic Qwen3-0.6B inputs.

use crate::verdict::Verdict;
use fusegate_kernels::{Backend, BackendError, BackendId, Contract, Dims, Entry, Layer, Observed, Shape, Stage, synth};
use serde::{Deserialize, Serialize};

/// Token counts each row is checked inside: a partial tile, two decode-sized and a prefill-sized
/// batch, plus both sides of every T where the backend changes kernel or tile for the entry
/// ([`Backend::path_boundaries`]), so a new threshold is covered by construction. The CPU stops
/// at 256 to keep CI fast (it has no such thresholds); GPUs go to a prefill-sized 2048.
pub fn token_counts(backend: &dyn Backend, entry: &Entry, dims: &Dims) -> Vec<usize> {
    let base: &[usize] = match backend.id() {
        BackendId::Cpu => &[7, 64, 256],
        BackendId::Cuda => &[7, 64, 256, 2048],
    };
    let mut ts = base.to_vec();
    ts.extend(backend.path_boundaries(entry, dims));
    ts.sort_unstable();
    ts.dedup();
    ts
}

/// Token counts of the chained-launch check: one token, a partial T-tile, a full 32-token tile,
/// and every path boundary (the backend reports which of them it chains; only the decode kernels
/// do). The check needs launches that really overlap: under compute-sanitizer, which runs kernels
/// one at a time, an early read cannot show (and mutant-early-x passes for right).
pub fn chained_token_counts(backend: &dyn Backend, entry: &Entry, dims: &Dims) -> Vec<usize> {
    let mut ts = vec![1, 5, 32];
    ts.extend(backend.path_boundaries(entry, dims));
    ts.sort_unstable();
    ts.dedup();
    ts
}

/// One chained launch behind a late writer of x.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainedRun {
    pub t: usize,
    /// Its outputs were those of the x written late (it waited for the writer).
    pub saw_late_x: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvarianceReport {
    pub seed: u64,
    pub token_counts: Vec<usize>,
    pub rows_checked: Vec<usize>,
    /// Two runs at the largest T gave the same bits.
    pub deterministic: bool,
    /// Every checked row was the same alone and inside every T.
    pub batch_invariant: bool,
    /// Chained launches, at the token counts where the backend chains this entry (none on the CPU).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chained: Vec<ChainedRun>,
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
        // Every contract: a kernel that races its predecessor is wrong whatever its numerics.
        if !self.chains_safely() {
            reasons.push("a chained launch read x before the kernel before it had written it".to_string());
        }
        if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail { reasons } }
    }

    /// Every chained launch checked saw the late x (true where none was).
    pub fn chains_safely(&self) -> bool {
        self.chained.iter().all(|c| c.saw_late_x)
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
pub fn check(backend: &dyn Backend, entry: &'static Entry, seed: u64) -> Result<InvarianceReport, BackendError> {
    let dims = Dims::QWEN3_06B;
    let ts = token_counts(backend, entry, &dims);
    let t_max = *ts.iter().max().expect("token counts are non-empty");
    let full = dims.with_t(t_max);
    let weights = synth::weights(&dims, seed);
    let x = synth::activations(&full, seed);
    let h = dims.h;
    let mut op = backend.prepare(entry, Layer { dims, weights: &weights, eps: 1e-6 })?;
    let mut run = |t: usize, row0: usize| op.run(&x[row0 * h..(row0 + t) * h]);
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
    for &t in &ts {
        let batch = if t == t_max { first.clone() } else { run(t, 0)? };
        for (r, single) in alone.iter().filter(|(r, _)| *r < t) {
            let n = differing(&batch, *r, single, 0, 1, &full.with_t(1));
            if n > 0 {
                batch_invariant = false;
                differences.push(format!("row {r}: {n} elements differ between T=1 and T={t}"));
            }
        }
    }
    let chained = chained_runs(backend, op.as_mut(), &dims, &x, seed, t_max, &mut differences)?;
    Ok(InvarianceReport {
        seed,
        token_counts: ts,
        rows_checked: rows,
        deterministic,
        batch_invariant,
        chained,
        differences,
    })
}

/// The chained-launch check at every chained token count up to `t_max` that the backend chains.
fn chained_runs(
    backend: &dyn Backend,
    op: &mut dyn fusegate_kernels::PreparedOp,
    dims: &Dims,
    x: &[half::bf16],
    seed: u64,
    t_max: usize,
    differences: &mut Vec<String>,
) -> Result<Vec<ChainedRun>, BackendError> {
    let mut chained = Vec::new();
    for t in chained_token_counts(backend, op.entry(), dims).into_iter().filter(|&t| t <= t_max) {
        let x_late = synth::activations(&dims.with_t(t), seed.wrapping_add(1));
        if let Some(saw_late_x) = op.chained_sees_late_x(&x[..t * dims.h], &x_late)? {
            if !saw_late_x {
                differences.push(format!("T={t}: a chained launch read x before the kernel before it wrote x"));
            }
            chained.push(ChainedRun { t, saw_late_x });
        }
    }
    Ok(chained)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::cpu::Cpu;
    use fusegate_kernels::{EntryId, PreparedOp};
    use half::bf16;

    static CPU: Cpu = Cpu;

    /// The CPU's arithmetic, plus a chained launch regime for T <= 32 whose launch at `races_at`
    /// tokens reads x early, and kernel changes at `boundaries` (a stand-in for a GPU, which CI
    /// does not have).
    struct Chaining {
        races_at: Option<usize>,
        boundaries: Vec<usize>,
    }

    struct ChainingOp {
        inner: Box<dyn PreparedOp>,
        races_at: Option<usize>,
    }

    impl Backend for Chaining {
        fn id(&self) -> BackendId {
            BackendId::Cpu
        }
        fn supports(&self, _: &Entry) -> Result<(), String> {
            Ok(())
        }
        fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError> {
            Ok(Box::new(ChainingOp { inner: CPU.prepare(entry, layer)?, races_at: self.races_at }))
        }
        fn path_boundaries(&self, _: &Entry, _: &Dims) -> Vec<usize> {
            self.boundaries.clone()
        }
    }

    impl PreparedOp for ChainingOp {
        fn entry(&self) -> &'static Entry {
            self.inner.entry()
        }
        fn run(&mut self, x: &[bf16]) -> Result<Observed, BackendError> {
            self.inner.run(x)
        }
        fn chained_sees_late_x(&mut self, x: &[bf16], _: &[bf16]) -> Result<Option<bool>, BackendError> {
            let t = x.len() / Dims::QWEN3_06B.h;
            Ok((t <= 32).then_some(self.races_at != Some(t)))
        }
    }

    #[test]
    fn a_chained_launch_that_reads_x_early_fails_every_contract() {
        let exact = EntryId::Exact.entry();
        let honest = check(&Chaining { races_at: None, boundaries: vec![] }, exact, 11).unwrap();
        let ts: Vec<usize> = honest.chained.iter().map(|c| c.t).collect();
        assert_eq!(ts, [1, 5, 32], "the chained token counts the backend chains");
        assert!(honest.chains_safely() && honest.verdict(&exact.contract()) == Verdict::Pass);

        let racing = check(&Chaining { races_at: Some(5), boundaries: vec![] }, exact, 11).unwrap();
        assert!(!racing.chains_safely() && racing.deterministic && racing.batch_invariant);
        assert!(racing.differences.iter().any(|d| d.starts_with("T=5: a chained launch read x")));
        // Even a contract that promises nothing else rejects it.
        let lax = fusegate_kernels::Contract { deterministic: false, batch_invariant: false, ..exact.contract() };
        match racing.verdict(&lax) {
            Verdict::Fail { reasons } => assert_eq!(reasons.len(), 1, "{reasons:?}"),
            Verdict::Pass => panic!("a racing chained launch passed"),
        }
        // The CPU itself has no chained launches: nothing is recorded, nothing fails.
        assert!(check(&Cpu, exact, 11).unwrap().chained.is_empty());
    }

    #[test]
    fn every_path_boundary_is_checked_for_batch_invariance_and_chaining() {
        let exact = EntryId::Exact.entry();
        // A race at a boundary that no fixed list names is still caught.
        let backend = Chaining { races_at: Some(17), boundaries: vec![16, 17] };
        let report = check(&backend, exact, 11).unwrap();
        assert_eq!(report.token_counts, [7, 16, 17, 64, 256]);
        assert!(report.rows_checked.contains(&15) && report.rows_checked.contains(&16));
        let ts: Vec<usize> = report.chained.iter().map(|c| c.t).collect();
        assert_eq!(ts, [1, 5, 16, 17, 32]);
        assert!(!report.chains_safely());
        // A batch-variant order switching at a boundary is seen on both sides of it.
        let variant = check(&backend, EntryId::MutantBatchVariant.entry(), 11).unwrap();
        assert!(!variant.batch_invariant);
    }
}
