//! Property tests (proptest) over random shapes and values.
//!
//! The variants against a reference written here, independently of the CPU backend
//! ([`hf_reference`]: HF's op and head norms, rounding point by rounding point, with
//! correctly rounded reductions in fp64 where PyTorch reduces in fp32), standing in for the
//! PyTorch golden, with the harness's fp64 truths and verdicts. (The CPU backend's own `standard`
//! once stood in for it: `mixed` and `exact` are the same computation there, so they could not
//! fail against it.)
//!
//! - The rounding points, given each entry's own upstream stage ([`rounding_point_misses`]): every
//!   element of A, B, q, k, v of `mixed`, `exact` and `standard` is what HF's rounding point makes
//!   of the entry's own inv_rms, A, B (q, k, v up to fp32 accumulation's worst-case error), on any
//!   shape; the mutants that move a rounding point miss it on every problem.
//! - The whole contracts. Against this reference, contracts that judged bit-exactness end to end
//!   failed on small shapes although every rounding point held: a 1-ulp difference in inv_rms,
//!   from another summation order, flips one A element of a row of ~200 and ~7% of that row's
//!   outputs (standard at t 8, h 198 read 99.87% bit-exact at A against 99.99%, and 97.3% at q
//!   against 99.5%). Bit-exactness is now judged on the candidate's own inputs where it observes
//!   them (harness::own_inputs), which is what these properties hold the CPU variants to.
//! - On any shape (h 8..300, d in {4, 8, 16, 32}, nq 1..=4, nkv 1..=2, t 1..=9): `f32`'s
//!   q, k and v are at least as accurate as PyTorch's against the exact op (error ratio <= 1.0).
//!   That is close to a theorem: f32's output is the exact value rounded once to the nearest bf16
//!   (up to fp32 accumulation noise), so no bf16 output, PyTorch's included, is closer element by
//!   element.
//! - On shapes large enough to measure them (see [`measurable_problem`]), every variant meets its
//!   contract without the fractions. Two of f32's bounds are statistical, not per-input guarantees, and fail on tiny
//!   shapes for reasons of measurement, not arithmetic (measured over 20,000 random problems of
//!   the full generator: 5% fail, every failure one of these two):
//!   * the head-norm accuracy bound (q_normed / k_normed error ratio <= 1.0 against the exact op):
//!     both candidates pass q and k through the same HF head norm, whose own two bf16 roundings
//!     dominate the error, so f32's advantage shrinks to a mean ratio of ~0.77 and the ratio of
//!     two L2 errors over n elements scatters by ~1/sqrt(n) with a heavy tail: it exceeds 1.0 for
//!     ~1% of problems with >= 64 elements in k, 0.4% with >= 128, more below. It also drifts up
//!     for small h (mean 0.81 at h < 16, 0.77 at h >= 64; failures ~10x as frequent at h < 32 as
//!     above), likely because the head norm is scale-invariant per head: the part of HF's
//!     inherited A/B rounding error that lies along b (about 1/h of its energy) is normalised away
//!     with the scale, so f32's advantage is smallest when h is small.
//!   * the 4-ULP bound at q, k, v: ULPs are measured at the row's scale (its RMS: harness::metrics), and a row of
//!     4-16 elements (nkv * d) estimates that scale too poorly for outputs that cancel to ~0
//!     (up to 19 ULPs at rows of 4; at rows of 32, 2 draws in ~80,000 reached 5).
//!
//!   Even on measurable shapes those bounds fail about once in 10,000 random problems (the heavy
//!   tail; 5 in ~56,000 at h >= 32, 7 more in ~3,400 at 16 <= h < 32), which would fail ~0.6% of
//!   CI runs at random, so that property runs from a fixed seed: CI stays deterministic, and
//!   `PROPTEST_RNG_SEED=<n>` explores other draws.
//! - The ULP metric is symmetric, zero only for equal values (by class; +0 == -0) and monotone
//!   (indeed additive) along the number line.
//!
//! No failure is persisted (no proptest-regressions files in the repository): a failure prints its
//! minimal input, which belongs in a named regression test.

use fusegate_harness::metrics::{self, Ordered, ulp_distance};
use fusegate_harness::truth;
use fusegate_harness::verdict::{self, StageReport, Verdict};
use fusegate_kernels::cpu::{self, Cpu};
use fusegate_kernels::synth::Rng;
use fusegate_kernels::{
    Dims, Entry, EntryId, Observed, OpInputs, Shape, Stage, StageData, Truth, Weights, registry, run_once,
};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// The seed of the measurable-shape property unless $PROPTEST_RNG_SEED names another.
const SEED: u64 = 0x0f05_e6a7;

fn seeded(cases: u32) -> Config {
    let mut c = config(cases);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c
}

/// Random op inputs: a shape, and data drawn from `seed` at random scales (never all zeros).
#[derive(Clone, Debug)]
struct Problem {
    shape: Shape,
    seed: u64,
    /// log2 of x's standard deviation: activations from 2^-8 to 2^8.
    x_log2: i32,
    /// Standard deviation of the fused weight.
    w_std: f64,
    /// Rows across bf16's range: row 0 scaled by 2^-101 (its squares underflow fp32), row 1 by
    /// 2^-130 (bf16 subnormals), row 2 by 2^66 (its squares overflow fp32: HF's row is 0).
    extreme_rows: bool,
}

fn data_params() -> impl Strategy<Value = (u64, i32, f64)> {
    (any::<u64>(), -8i32..=8, prop::sample::select(vec![0.02, 0.1, 0.5]))
}

/// Any shape of the ranges: h 8..300, d in {4, 8, 16, 32}, nq 1..=4, nkv 1..=2, t 1..=9.
fn any_problem() -> impl Strategy<Value = Problem> {
    (8usize..300, prop::sample::select(vec![4usize, 8, 16, 32]), 1usize..=4, 1usize..=2, 1usize..=9, data_params())
        .prop_map(|(h, d, nq, nkv, t, (seed, x_log2, w_std))| Problem {
            shape: Dims { h, nq, nkv, d }.with_t(t),
            seed,
            x_log2,
            w_std,
            extreme_rows: false,
        })
}

/// Shapes of the same ranges on which a whole contract can be judged (module doc): every judged
/// row of q, k, v holds >= 32 elements (nq * d, nkv * d), every judged stage >= 256 (t * nq * d,
/// t * nkv * d), and h >= 32. Within t <= 9 that means d of 16 or 32 and t of 4 to 9.
fn measurable_problem() -> impl Strategy<Value = Problem> {
    (prop::sample::select(vec![(16usize, 2usize), (32, 1), (32, 2)]), 1usize..=4, 32usize..300)
        .prop_flat_map(|((d, nkv), nq, h)| {
            let nq = nq.max(32 / d);
            let t_min = 256usize.div_ceil(d * nq.min(nkv));
            (Just(Dims { h, nq, nkv, d }.with_t(t_min)), t_min..=9, data_params())
        })
        .prop_map(|(s, t, (seed, x_log2, w_std))| Problem {
            shape: s.with_t(t),
            seed,
            x_log2,
            w_std,
            extreme_rows: false,
        })
}

/// The sweep across the ranges a user's model may have: H 8..=8192 and T 1..=2048 (log-uniform),
/// D 8..=256, 1-4 q heads and 1-2 kv heads, activations from 2^-8 to 2^16, under a work budget
/// (T N H <= 2^23 multiply-adds: T shrinks to fit, so the whole sweep runs in seconds). Shapes
/// stay measurable (rows of q, k, v >= 32 elements, stages >= 256: [`measurable_problem`]).
/// One problem in two also holds rows across bf16's range ([`Problem::extreme_rows`]): where the
/// squares underflow, inv_rms is rsqrt(eps), whose last bit differs between implementations, and
/// x * r lands on bf16 ties often; a 1-ulp flip of A is HF's rounding point applied to the
/// candidate's own r, and w * A then differs by up to ceil(|w|) + 1 ulps at B (found here before
/// the conditional view replaced the end-to-end bound: standard, h 66, t 256, x ~ 2^-101, b and k
/// 2 ulps). Where they overflow, HF's row (and any fp32 kernel's) is 0, so f32's rounding point
/// is judged only on rows in fp32's range (`Truths::rows_in_fp32_range`).
fn sweep_problem() -> impl Strategy<Value = Problem> {
    let log2 = |lo: u32, hi: u32| (lo..=hi, 0.0f64..1.0).prop_map(|(e, f)| (f64::from(e) + f).exp2() as usize);
    let x_log2 = -8i32..=16;
    let scale = (any::<u64>(), x_log2, prop::sample::select(vec![0.02, 0.1, 0.5]), any::<bool>());
    let heads = (prop::sample::select(vec![8usize, 16, 32, 64, 128, 256]), 1usize..=4, 1usize..=2);
    (log2(3, 13), log2(0, 11), heads, scale).prop_map(|(h, t, (d, nq, nkv), (seed, x_log2, w_std, extreme_rows))| {
        let (h, d) = (h.clamp(8, 8192), d.max(32 / nkv));
        let nq = nq.max(32usize.div_ceil(d));
        let n = (nq + 2 * nkv) * d;
        let t_min = 256usize.div_ceil(nkv * d);
        let t = t.clamp(1, 2048).min((1 << 23) / (n * h)).max(t_min);
        Problem { shape: Dims { h, nq, nkv, d }.with_t(t), seed, x_log2, w_std, extreme_rows }
    })
}

impl Problem {
    fn data(&self) -> (Vec<bf16>, Weights) {
        let s = &self.shape;
        let mut r = Rng::new(self.seed);
        let mut x = r.bf16s(s.t * s.h, 0.0, f64::from(self.x_log2).exp2());
        if self.extreme_rows {
            // Relative to the problem's own scale, so the row lands where its exponent says.
            for (row, target) in x.chunks_mut(s.h).zip([-101, -130, 66]) {
                let k = f64::from(target - self.x_log2).exp2();
                row.iter_mut().for_each(|v| *v = bf16::from_f64(v.to_f64() * k));
            }
        }
        let w = Weights {
            norm: r.bf16s(s.h, 1.0, 0.1),
            qkv: r.bf16s(s.n() * s.h, 0.0, self.w_std),
            q_norm: r.bf16s(s.d, 1.0, 0.1),
            k_norm: r.bf16s(s.d, 1.0, 0.1),
        };
        (x, w)
    }
}

/// q_norm / k_norm with HF semantics, as the harness applies them downstream of every candidate.
fn with_head_norms(mut obs: Observed, w: &Weights, shape: &Shape, eps: f32) -> Observed {
    for (from, to, weight) in [(Stage::Q, Stage::QNormed, &w.q_norm), (Stage::K, Stage::KNormed, &w.k_norm)] {
        let v = obs[&from].as_bf16().expect("q and k are bf16").to_vec();
        obs.insert(to, StageData::Bf16(cpu::hf_rmsnorm_rows(&v, weight, eps, shape.d)));
    }
    obs
}

/// HF's `Qwen3RMSNorm` on rows of `width`: the fp32 sum of squares (here correctly rounded from
/// fp64) times 1/width (PyTorch's mean multiplies by the reciprocal), rsqrt (here correctly
/// rounded), A = bf16(x * r), B = bf16(w * A). Returns (r per row, A, B).
fn reference_rmsnorm(x: &[bf16], w: &[bf16], eps: f32, width: usize) -> (Vec<f32>, Vec<bf16>, Vec<bf16>) {
    let (mut r, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for row in x.chunks_exact(width) {
        let sum: f64 = row.iter().map(|v| f64::from(v.to_f32()).powi(2)).sum();
        let mean = (sum as f32) * (1.0 / width as f32);
        let inv = (1.0 / f64::from(mean + eps).sqrt()) as f32;
        for (xi, wi) in row.iter().zip(w) {
            let ai = bf16::from_f32(xi.to_f32() * inv);
            a.push(ai);
            b.push(bf16::from_f32(wi.to_f32() * ai.to_f32()));
        }
        r.push(inv);
    }
    (r, a, b)
}

/// The reference: HF's norm, `F.linear` in bf16 (each output's dot product correctly rounded in
/// fp64, then to bf16), split into q, k, v, and the head norms on q and k.
fn hf_reference(p: &Problem, x: &[bf16], w: &Weights, eps: f32) -> Observed {
    let s = &p.shape;
    let (r, a, b) = reference_rmsnorm(x, &w.norm, eps, s.h);
    let (qw, kw) = (s.nq * s.d, s.nkv * s.d);
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in b.chunks_exact(s.h) {
        for (col, wrow) in w.qkv.chunks_exact(s.h).enumerate() {
            let dot: f64 = row.iter().zip(wrow).map(|(bi, wi)| f64::from(bi.to_f32()) * f64::from(wi.to_f32())).sum();
            let out = bf16::from_f32(dot as f32);
            match col {
                c if c < qw => q.push(out),
                c if c < qw + kw => k.push(out),
                _ => v.push(out),
            }
        }
    }
    let head_norm = |rows: &[bf16], weight: &[bf16]| StageData::Bf16(reference_rmsnorm(rows, weight, eps, s.d).2);
    let mut obs = Observed::new();
    obs.insert(Stage::QNormed, head_norm(&q, &w.q_norm));
    obs.insert(Stage::KNormed, head_norm(&k, &w.k_norm));
    for (stage, data) in [(Stage::A, a), (Stage::B, b), (Stage::Q, q), (Stage::K, k), (Stage::V, v)] {
        obs.insert(stage, StageData::Bf16(data));
    }
    obs.insert(Stage::InvRms, StageData::F32(r));
    obs
}

struct Judged {
    id: EntryId,
    /// The whole contract against the reference.
    verdict: Verdict,
    reports: Vec<StageReport>,
    /// Elements that break a rounding point given the entry's own inputs ([`rounding_point_misses`]).
    misses: Vec<(Stage, usize)>,
}

/// Every entry judged by its contract, with the independent reference as the golden.
fn judge(p: &Problem, entries: impl Iterator<Item = &'static Entry>) -> Vec<Judged> {
    const EPS: f32 = 1e-6;
    let (x, w) = p.data();
    let inputs = OpInputs { shape: p.shape, x: &x, weights: &w, eps: EPS };
    let golden = hf_reference(p, &x, &w, EPS);
    let truths = truth::compute(&p.shape, EPS, &x, &w, &golden);
    entries
        .map(|e| {
            let obs = with_head_norms(run_once(&Cpu, e, &inputs).expect("valid inputs"), &w, &p.shape, EPS);
            let (verdict, reports) = verdict::evaluate(&e.contract(), &obs, &golden, &truths, &inputs);
            let misses = rounding_point_misses(p, &x, &w, EPS, &obs, &golden);
            Judged { id: e.id, verdict, reports, misses }
        })
        .collect()
}

/// The interval of reals that round to the finite `v` (to nearest, ends included). Computed from
/// v's neighbours, not with `half`'s f64 conversion, which drops the low 32 bits before rounding.
fn rounds_from(v: bf16) -> (f64, f64) {
    let bits = v.to_bits();
    let step = |up: bool| match (bits & 0x8000 == 0, bits & 0x7fff == 0) {
        (_, true) => bf16::from_bits(if up { 0x0001 } else { 0x8001 }),
        (true, false) => bf16::from_bits(if up { bits + 1 } else { bits - 1 }),
        (false, false) => bf16::from_bits(if up { bits - 1 } else { bits + 1 }),
    };
    let g = v.to_f64();
    ((g + step(false).to_f64()) / 2.0, (g + step(true).to_f64()) / 2.0)
}

/// Elements of A, B, q, k, v that an HF rounding point does not explain, given the entry's own
/// upstream stage (the reference's where the entry does not observe it): A = bf16(x * r),
/// B = bf16(w * A), and each output the bf16 rounding of the exact dot product of B with W, or
/// its other neighbour where the exact value lies within fp32 accumulation's worst-case error
/// (2 h 2^-24 sum |b w|) of the tie between them.
fn rounding_point_misses(
    p: &Problem,
    x: &[bf16],
    w: &Weights,
    eps: f32,
    obs: &Observed,
    golden: &Observed,
) -> Vec<(Stage, usize)> {
    let s = &p.shape;
    let own = |stage: Stage| obs.get(&stage).or(golden.get(&stage));
    let r = match own(Stage::InvRms) {
        Some(StageData::F32(r)) => r.clone(),
        _ => reference_rmsnorm(x, &w.norm, eps, s.h).0,
    };
    let mut misses = Vec::new();
    if let Some(StageData::Bf16(a)) = obs.get(&Stage::A) {
        let bad = x.iter().zip(a).enumerate().filter(|(i, (xi, ai))| bf16::from_f32(xi.to_f32() * r[i / s.h]) != **ai);
        misses.push((Stage::A, bad.count()));
    }
    let a = own(Stage::A).and_then(StageData::as_bf16).expect("the reference observes A");
    let b = own(Stage::B).and_then(StageData::as_bf16).expect("the reference observes B");
    if obs.contains_key(&Stage::B) {
        let bad = a
            .iter()
            .zip(b)
            .enumerate()
            .filter(|(i, (ai, bi))| bf16::from_f32(w.norm[i % s.h].to_f32() * ai.to_f32()) != **bi);
        misses.push((Stage::B, bad.count()));
    }
    if !obs.contains_key(&Stage::B) {
        return misses; // the operand was never rounded to bf16 (f32): no rounding point to hold C to
    }
    let (qw, kw) = (s.nq * s.d, s.nkv * s.d);
    let mut c_misses = [0usize; 3];
    for (t, row) in b.chunks_exact(s.h).enumerate() {
        for (col, wrow) in w.qkv.chunks_exact(s.h).enumerate() {
            let terms = row.iter().zip(wrow).map(|(bi, wi)| f64::from(bi.to_f32()) * f64::from(wi.to_f32()));
            let (exact, magnitude) = terms.fold((0.0, 0.0), |(e, m), v| (e + v, m + v.abs()));
            let slack = 2.0 * s.h as f64 * f64::from(f32::EPSILON / 2.0) * magnitude;
            let (stage, i) = match col {
                c if c < qw => (0, t * qw + c),
                c if c < qw + kw => (1, t * kw + c - qw),
                c => (2, t * kw + c - qw - kw),
            };
            let got = obs[&[Stage::Q, Stage::K, Stage::V][stage]].as_bf16().expect("q, k, v are bf16")[i];
            let (lo, hi) = rounds_from(got);
            c_misses[stage] += usize::from(!(lo <= exact + slack && exact - slack <= hi));
        }
    }
    misses.extend([Stage::Q, Stage::K, Stage::V].into_iter().zip(c_misses));
    misses
}

/// f32's q, k, v against the exact op, with the bound its contract sets.
fn f32_stage_c(judged: &[Judged]) -> Vec<(Stage, f64, f64, f64)> {
    let f32 = judged.iter().find(|j| j.id == EntryId::F32).expect("f32 is a variant");
    let contract = EntryId::F32.entry().contract();
    f32.reports
        .iter()
        .filter(|r| Stage::C.contains(&r.stage))
        .map(|r| {
            let bound = contract.bound(r.stage).expect("f32 bounds q, k, v");
            assert_eq!(bound.truth, Truth::IdealMath, "f32 is judged against the exact op");
            let max = bound.max_error_ratio.expect("f32 bounds its error at q, k, v");
            (r.stage, r.error_ratio(Truth::IdealMath), max, r.rel_l2_golden_ideal)
        })
        .collect()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn on_any_shape_hf_variants_keep_hf_rounding_points_and_f32_beats_pytorch_at_qkv(p in any_problem()) {
        let judged = judge(&p, registry::variants());
        prop_assert_eq!(judged.len(), 4);
        // (Their whole contracts are not judged here: on rows of a few elements ULPs at the row's
        // scale are not measurable; the next property judges them where they are.)
        for j in judged.iter().filter(|j| j.id != EntryId::F32) {
            // A, B, q, k, v: each element is what HF's rounding point makes of the entry's own inputs.
            prop_assert_eq!(j.misses.len(), 5, "{} observes A and B", j.id);
            prop_assert!(j.misses.iter().all(|&(_, n)| n == 0), "{} on {:?}: {:?}", j.id, p, j.misses);
        }
        let c = f32_stage_c(&judged);
        prop_assert_eq!(c.len(), 3);
        for (stage, ratio, max, golden_err) in c {
            // PyTorch's own error is not zero (else the ratio would be trivially 1).
            prop_assert!(golden_err > 0.0, "{}: golden error 0 on {:?}", stage, p);
            prop_assert!(ratio <= max, "f32 {}: error ratio {} > {} on {:?}", stage, ratio, max, p);
        }
        // NaN/Inf positions never differ on finite data, whatever the shape.
        for j in &judged {
            for r in &j.reports {
                prop_assert_eq!(r.comparison.class_mismatches, 0, "{} {}", j.id, r.stage);
            }
        }
    }
}

proptest! {
    #![proptest_config(seeded(64))]

    #[test]
    fn on_measurable_shapes_every_cpu_variant_meets_its_whole_contract_and_mutants_miss_a_rounding_point(
        p in measurable_problem()
    ) {
        let s = p.shape;
        prop_assert!(s.nq * s.d >= 32 && s.nkv * s.d >= 32 && s.t * s.nq.min(s.nkv) * s.d >= 256 && s.t <= 9);
        let judged = judge(&p, registry::variants());
        for j in &judged {
            prop_assert!(j.verdict.passed(), "{} on {:?}: {:?}", j.id, p, j.verdict);
            prop_assert!(j.misses.iter().all(|&(_, n)| n == 0), "{} on {:?}: {:?}", j.id, p, j.misses);
            // Not vacuous: every bounded stage was measured.
            for b in j.id.entry().contract().stages {
                prop_assert!(j.reports.iter().any(|r| r.stage == b.stage), "{}: {} not measured", j.id, b.stage);
            }
        }
        // Strictly more accurate here: f32 differs from HF on about half the outputs, and each
        // differing output is the closer one. (A ratio of exactly 1 would mean f32 had become HF.)
        for (stage, ratio, _, golden_err) in f32_stage_c(&judged) {
            prop_assert!(golden_err > 0.0 && ratio < 1.0, "f32 {}: error ratio {} on {:?}", stage, ratio, p);
        }
        // The rounding-point check can fail: the mutants that move a rounding point miss it on
        // every such problem. (A bias of one output in 1024 touches 1-3 outputs here, each
        // explained when it lies in its tie zone, fp32 accumulation's worst-case error: found on
        // 1 draw in a few hundred. The golden cases reject it on every case: README.)
        let mutants = [EntryId::MutantRoundOnce, EntryId::MutantSkipWeight];
        for j in judge(&p, mutants.iter().map(|id| id.entry())) {
            prop_assert!(j.misses.iter().any(|&(_, n)| n > 0), "{} explained on {:?}", j.id, p);
        }
    }
}

proptest! {
    #![proptest_config(seeded(48))]

    #[test]
    fn across_the_sweep_every_cpu_variant_meets_its_whole_contract_and_keeps_its_rounding_points(
        p in sweep_problem()
    ) {
        let judged = judge(&p, registry::variants());
        for j in &judged {
            prop_assert!(j.verdict.passed(), "{} on {:?}: {:?}", j.id, p, j.verdict);
            prop_assert!(j.misses.iter().all(|&(_, n)| n == 0), "{} on {:?}: {:?}", j.id, p, j.misses);
        }
        // The rounding-point mutants. (Not the bias of 1 output in 1024: at large H an output
        // that cancels has a tie zone (fp32 accumulation's worst-case error) several bf16 ulps
        // wide, and a biased output there is explained; the measurable property above judges it.)
        for j in judge(&p, [EntryId::MutantRoundOnce, EntryId::MutantSkipWeight].map(EntryId::entry).into_iter()) {
            prop_assert!(!j.verdict.passed(), "{} accepted on {:?}", j.id, p);
        }
    }
}

// ---- The ULP metric ----

/// Any bf16 bit pattern: NaNs, infinities, subnormals and both zeros included.
fn any_bf16() -> impl Strategy<Value = bf16> {
    any::<u16>().prop_map(bf16::from_bits)
}

fn finite_bf16() -> impl Strategy<Value = bf16> {
    any_bf16().prop_filter("finite", |v| v.is_finite())
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |v| v.is_finite())
}

/// Equal by class: the same finite value (+0 == -0), both NaN, or the same infinity.
fn same<T: Ordered>(a: T, b: T) -> bool {
    let (x, y) = (a.to_f64(), b.to_f64());
    x == y || (x.is_nan() && y.is_nan())
}

fn class(v: bf16) -> u8 {
    match v.to_f64() {
        x if x.is_nan() => 1,
        f64::INFINITY => 2,
        f64::NEG_INFINITY => 3,
        _ => 0,
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn ulp_distance_is_symmetric(a in finite_bf16(), b in finite_bf16(), c in finite_f32(), d in finite_f32()) {
        prop_assert_eq!(ulp_distance(a, b), ulp_distance(b, a));
        prop_assert_eq!(ulp_distance(c, d), ulp_distance(d, c));
    }

    #[test]
    fn ulp_distance_is_zero_only_for_equal_values(a in finite_bf16(), b in finite_bf16(), c in finite_f32(), d in finite_f32()) {
        prop_assert_eq!(ulp_distance(a, b) == 0, a.to_f64() == b.to_f64());
        prop_assert_eq!(ulp_distance(c, d) == 0, c == d);
        prop_assert_eq!(ulp_distance(a, -a) == 0, a.to_f64() == 0.0, "only zeros equal their negation");
        // Neighbours are one apart, across zero too (-0 and +0 are one point).
        if a != bf16::MAX {
            prop_assert_eq!(ulp_distance(a, cpu::next_up(a)), 1);
        }
    }

    #[test]
    fn ulp_distance_is_monotone_and_additive_along_the_line(
        v in prop::array::uniform3(finite_bf16()),
        w in prop::array::uniform3(finite_f32()),
    ) {
        let mut v = v;
        v.sort_by(|x, y| x.to_f64().total_cmp(&y.to_f64()));
        let [a, b, c] = v;
        prop_assert!(ulp_distance(a, b) <= ulp_distance(a, c));
        prop_assert!(ulp_distance(b, c) <= ulp_distance(a, c));
        prop_assert_eq!(ulp_distance(a, b) + ulp_distance(b, c), ulp_distance(a, c));
        let mut w = w;
        w.sort_by(|x, y| x.total_cmp(y));
        let [a, b, c] = w;
        prop_assert!(ulp_distance(a, b) <= ulp_distance(a, c));
        prop_assert!(ulp_distance(b, c) <= ulp_distance(a, c));
        prop_assert_eq!(ulp_distance(a, b) + ulp_distance(b, c), ulp_distance(a, c));
    }

    #[test]
    fn compare_is_symmetric_and_exact_only_for_equal_classes(pairs in prop::collection::vec((any_bf16(), any_bf16()), 1..40)) {
        let (a, b): (Vec<bf16>, Vec<bf16>) = pairs.iter().copied().unzip();
        let ab = metrics::compare(&a, &b, a.len());
        let ba = metrics::compare(&b, &a, a.len());
        // Raw metrics do not depend on which side is the golden (the scaled ULP's row floor does).
        prop_assert_eq!(ab.bit_exact, ba.bit_exact);
        prop_assert_eq!(ab.class_mismatches, ba.class_mismatches);
        prop_assert_eq!(&ab.first_class_mismatch, &ba.first_class_mismatch);
        prop_assert_eq!(ab.max_ulp, ba.max_ulp);
        prop_assert_eq!(ab.ulp_histogram, ba.ulp_histogram);
        prop_assert_eq!(ab.bit_exact, pairs.iter().filter(|(x, y)| same(*x, *y)).count());
        prop_assert_eq!(ab.class_mismatches, pairs.iter().filter(|(x, y)| class(*x) != class(*y)).count());
        // Distances are counted over the elements finite in both, each exactly once.
        let finite_both = pairs.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).count();
        prop_assert_eq!(ab.ulp_histogram.iter().sum::<usize>(), finite_both);
        // The scaled distance is zero exactly where every finite pair is equal.
        let all_equal = pairs.iter().all(|(x, y)| !(x.is_finite() && y.is_finite()) || same(*x, *y));
        prop_assert_eq!(ab.max_scaled_ulp == 0, all_equal);
    }
}
