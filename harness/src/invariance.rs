//! Determinism (same inputs twice, same bits), batch invariance (row t alone and inside a batch
//! of T rows, same bits) and, where the backend chains launches, that a chained launch sees what
//! the kernel before it wrote; on fresh synthetic Qwen3-0.6B inputs.

use crate::verdict::Verdict;
use fusegate_kernels::{Backend, BackendError, Contract, Entry, Observed, OpInputs, Shape, Stage, synth};
use serde::Serialize;

/// Token counts each row is checked inside. The CPU stops at 256 to keep CI fast; GPUs go to a
/// prefill-sized 2048, where tile choices change.
pub fn token_counts(backend: &str) -> &'static [usize] {
    if backend == "cpu" { &[7, 64, 256] } else { &[7, 64, 256, 2048] }
}

/// Token counts of the chained-launch check: the decode kernels' range (the only kernels that
/// chain), both of their block sizes and a second T-tile. The check needs launches that really
/// overlap: under compute-sanitizer, which runs kernels one at a time, an early read cannot show
/// (and mutant-early-x passes for right).
pub const CHAINED_TOKEN_COUNTS: [usize; 4] = [1, 5, 32, 64];

/// One chained launch behind a late writer of x.
#[derive(Clone, Debug, Serialize)]
pub struct ChainedRun {
    pub t: usize,
    /// Its outputs were those of the x written late (it waited for the writer).
    pub saw_late_x: bool,
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
    /// Chained launches, at the token counts where the backend chains this entry (none on the CPU).
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
    let mut chained = Vec::new();
    for t in CHAINED_TOKEN_COUNTS.into_iter().filter(|&t| t <= t_max) {
        let shape = full.with_t(t);
        let x_late = synth::activations(&shape, seed.wrapping_add(1));
        let inputs = OpInputs { shape, x: &x[..t * h], weights: &weights, eps: 1e-6 };
        if let Some(saw_late_x) = backend.chained_sees_late_x(entry, &inputs, &x_late)? {
            if !saw_late_x {
                differences.push(format!("T={t}: a chained launch read x before the kernel before it wrote x"));
            }
            chained.push(ChainedRun { t, saw_late_x });
        }
    }
    Ok(InvarianceReport {
        seed,
        token_counts: ts.to_vec(),
        rows_checked: rows,
        deterministic,
        batch_invariant,
        chained,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::{cpu::Cpu, registry};
    use half::bf16;

    /// The CPU's arithmetic, plus a chained launch regime for T <= 32 whose launch at `races_at`
    /// tokens reads x early (a stand-in for a GPU, which CI does not have).
    struct Chaining {
        races_at: Option<usize>,
    }

    impl Backend for Chaining {
        fn name(&self) -> &'static str {
            "cpu"
        }
        fn supports(&self, _: &Entry) -> Result<(), String> {
            Ok(())
        }
        fn run(&self, entry: &Entry, inputs: &OpInputs) -> Result<Observed, BackendError> {
            Cpu.run(entry, inputs)
        }
        fn chained_sees_late_x(&self, _: &Entry, i: &OpInputs, _: &[bf16]) -> Result<Option<bool>, BackendError> {
            Ok((i.shape.t <= 32).then_some(self.races_at != Some(i.shape.t)))
        }
    }

    #[test]
    fn a_chained_launch_that_reads_x_early_fails_every_contract() {
        let exact = registry::find("exact").unwrap();
        let honest = check(&Chaining { races_at: None }, exact, 11).unwrap();
        let ts: Vec<usize> = honest.chained.iter().map(|c| c.t).collect();
        assert_eq!(ts, [1, 5, 32], "the chained token counts the backend chains");
        assert!(honest.chains_safely() && honest.verdict(&exact.contract()) == Verdict::Pass);

        let racing = check(&Chaining { races_at: Some(5) }, exact, 11).unwrap();
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
}
