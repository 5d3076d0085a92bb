//! The conditional view of a candidate: each stage recomputed at HF's rounding point from the
//! candidate's *own* upstream values, so that 1-ulp noise inherited from upstream (another fp32
//! summation order of inv_rms flips an A element, and with it a row of outputs) is never blamed
//! on a rounding point, while a rounding point that is wrong is named where it happens.
//!
//! The chain is anchored on what the candidate observed: inv_rms, A, B where it wrote them, and
//! the stages between recomputed from the nearest one it wrote (A = bf16(x * r), B = bf16(w * A),
//! in fp32 as HF computes them). q, k, v are then judged against the exact product of the
//! anchored B with W: an element must be one of the two bf16 values around it, and the farther one
//! only within fp32 accumulation's worst-case error, 2 H 2^-24 sum |b w| (any order, truncating
//! or not). A candidate that observed nothing (a fused kernel writing only q, k, v) has no
//! conditional view: it is judged end to end.

use crate::metrics::rounds_from;
use fusegate_kernels::{Observed, OpInputs, Stage, StageData};
use half::bf16;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Elements of each stage that HF's rounding point, applied to the candidate's own inputs, does
/// not explain; only stages whose inputs the candidate anchored.
pub fn misses(inputs: &OpInputs, candidate: &Observed) -> BTreeMap<Stage, usize> {
    let (s, h) = (&inputs.shape, inputs.shape.h);
    let own = |stage: Stage| candidate.get(&stage);
    let mut out = BTreeMap::new();
    // The head norms, given the candidate's own q and k: HF's RMSNorm over each head. (Today the
    // harness applies it to every candidate, so this holds by construction; a kernel that fused
    // the head norms would be judged here.)
    let w = inputs.weights;
    for (from, to, weight) in [(Stage::Q, Stage::QNormed, &w.q_norm), (Stage::K, Stage::KNormed, &w.k_norm)] {
        if let (Some(v), Some(normed)) = (own(from).and_then(StageData::as_bf16), own(to).and_then(StageData::as_bf16))
        {
            let expected = fusegate_kernels::cpu::hf_rmsnorm_rows(v, weight, inputs.eps, s.d);
            out.insert(to, count_differing(normed, &expected));
        }
    }
    let r: Option<Vec<f32>> = match own(Stage::InvRms) {
        Some(StageData::F32(r)) if r.len() == s.t => Some(r.clone()),
        _ => None,
    };
    // A from the candidate's own inv_rms.
    let a_of_r = r
        .as_ref()
        .map(|r| inputs.x.iter().enumerate().map(|(i, x)| bf16::from_f32(x.to_f32() * r[i / h])).collect::<Vec<_>>());
    let a = anchor(Stage::A, own(Stage::A).and_then(StageData::as_bf16), a_of_r, &mut out);
    let b_of_a = a.as_ref().map(|a| {
        let w = &inputs.weights.norm;
        a.iter().enumerate().map(|(i, a)| bf16::from_f32(w[i % h].to_f32() * a.to_f32())).collect::<Vec<_>>()
    });
    let b = anchor(Stage::B, own(Stage::B).and_then(StageData::as_bf16), b_of_a, &mut out);
    let Some(b) = b.filter(|b| b.len() == s.t * h) else { return out };
    let (qw, kw, n) = (s.q_width(), s.kv_width(), s.n());
    let qkv = inputs.weights.qkv.iter().map(|v| f64::from(v.to_f32())).collect::<Vec<_>>();
    // Per token row: for each output column, whether the candidate's value is explained.
    let unexplained: Vec<[usize; 3]> = b
        .par_chunks(h)
        .enumerate()
        .map(|(t, row)| {
            let row: Vec<f64> = row.iter().map(|v| f64::from(v.to_f32())).collect();
            let mut m = [0usize; 3];
            for (col, w) in qkv.chunks_exact(h).enumerate().take(n) {
                let (exact, magnitude) = dot_and_magnitude(&row, w);
                let slack = 2.0 * h as f64 * f64::from(f32::EPSILON) / 2.0 * magnitude;
                let (part, i) = match col {
                    c if c < qw => (0, t * qw + c),
                    c if c < qw + kw => (1, t * kw + c - qw),
                    c => (2, t * kw + c - qw - kw),
                };
                let stage = [Stage::Q, Stage::K, Stage::V][part];
                let Some(got) = own(stage).and_then(StageData::as_bf16).and_then(|v| v.get(i)) else { continue };
                if got.is_finite() && !explained(*got, exact, slack) {
                    m[part] += 1;
                }
            }
            m
        })
        .collect();
    for (part, stage) in [Stage::Q, Stage::K, Stage::V].into_iter().enumerate() {
        if own(stage).is_some() {
            out.insert(stage, unexplained.iter().map(|m| m[part]).sum());
        }
    }
    out
}

/// sum b w and sum |b w| in fp64, in 8 independent lanes (vectorised; fp64's own error is 2^-29
/// of fp32's, far inside the slack).
fn dot_and_magnitude(b: &[f64], w: &[f64]) -> (f64, f64) {
    let (mut e, mut m) = ([0.0f64; 8], [0.0f64; 8]);
    let (bc, wc) = (b.chunks_exact(8), w.chunks_exact(8));
    let (br, wr) = (bc.remainder(), wc.remainder());
    for (bs, ws) in bc.zip(wc) {
        for j in 0..8 {
            let p = bs[j] * ws[j];
            e[j] += p;
            m[j] += p.abs();
        }
    }
    for (b, w) in br.iter().zip(wr) {
        e[0] += b * w;
        m[0] += (b * w).abs();
    }
    (e.iter().sum(), m.iter().sum())
}

/// Where the chain goes on from at `stage`: the candidate's own values where it observed them
/// (judged against `expected`, HF's rounding point applied to its own upstream, where that is
/// known), else `expected`.
fn anchor(
    stage: Stage,
    observed: Option<&[bf16]>,
    expected: Option<Vec<bf16>>,
    misses: &mut BTreeMap<Stage, usize>,
) -> Option<Vec<bf16>> {
    match (observed, expected) {
        (Some(own), Some(expected)) => {
            misses.insert(stage, count_differing(own, &expected));
            Some(own.to_vec())
        }
        (Some(own), None) => Some(own.to_vec()),
        (None, expected) => expected,
    }
}

fn count_differing(got: &[bf16], expected: &[bf16]) -> usize {
    got.iter().zip(expected).filter(|(g, e)| g.is_finite() && g != e).count()
}

/// `got` is the bf16 rounding of some value within `slack` of `exact` (near zero, where an
/// output cancels, the slack may span several bf16 values).
fn explained(got: bf16, exact: f64, slack: f64) -> bool {
    let (lo, hi) = rounds_from(got);
    lo <= exact + slack && exact - slack <= hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::{Dims, Weights};

    fn case() -> (fusegate_kernels::Shape, Vec<bf16>, Weights) {
        let s = Dims { h: 16, nq: 1, nkv: 1, d: 4 }.with_t(2);
        let mut r = fusegate_kernels::synth::Rng::new(7);
        let x = r.bf16s(s.t * s.h, 0.0, 1.0);
        let w = Weights {
            norm: r.bf16s(s.h, 1.0, 0.1),
            qkv: r.bf16s(s.n() * s.h, 0.0, 0.3),
            q_norm: r.bf16s(s.d, 1.0, 0.1),
            k_norm: r.bf16s(s.d, 1.0, 0.1),
        };
        (s, x, w)
    }

    #[test]
    fn the_cpu_emulation_is_explained_and_a_moved_rounding_point_is_named_where_it_moved() {
        let (shape, x, w) = case();
        let inputs = OpInputs { shape, x: &x, weights: &w, eps: 1e-6 };
        let run = |id: fusegate_kernels::EntryId| fusegate_kernels::cpu::run_entry(id.entry(), &inputs);
        let honest = misses(&inputs, &run(fusegate_kernels::EntryId::Mixed));
        assert_eq!(honest.keys().copied().collect::<Vec<_>>(), [Stage::A, Stage::B, Stage::Q, Stage::K, Stage::V]);
        assert!(honest.values().all(|&m| m == 0), "{honest:?}");
        // Skipping the weight multiply moves B's rounding point: named at B, not at q, k, v (which
        // follow from the candidate's own B).
        let skip = misses(&inputs, &run(fusegate_kernels::EntryId::MutantSkipWeight));
        assert!(skip[&Stage::B] > 0 && skip[&Stage::A] == 0 && skip[&Stage::Q] == 0, "{skip:?}");
        // One output moved by one ulp is one miss at its stage.
        let mut biased = run(fusegate_kernels::EntryId::Mixed);
        if let Some(StageData::Bf16(v)) = biased.get_mut(&Stage::V) {
            v[3] = bf16::from_bits(v[3].to_bits() + 1);
        }
        let m = misses(&inputs, &biased);
        assert_eq!((m[&Stage::V], m[&Stage::Q], m[&Stage::K]), (1, 0, 0), "{m:?}");
        // Nothing observed upstream (a fused kernel): no conditional view of q, k, v.
        let mut fused = run(fusegate_kernels::EntryId::Mixed);
        fused.retain(|s, _| Stage::C.contains(s));
        assert!(misses(&inputs, &fused).is_empty());
    }
}
