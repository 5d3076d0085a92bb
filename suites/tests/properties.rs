//! Property tests (proptest) over random shapes and values.
//!
//! The variants, with the CPU `standard` entry (plus HF's head norms) standing in for the PyTorch
//! golden and the harness's fp64 truths and verdicts:
//!
//! - On any shape (h 8..300, d in {4, 8, 16, 32}, nq 1..=4, nkv 1..=2, t 1..=9): `mixed`, `exact`
//!   and `standard` meet their whole contracts (the emulation is one computation), and `f32`'s
//!   q, k and v are at least as accurate as PyTorch's against the exact op (error ratio <= 1.0).
//!   That is close to a theorem: f32's output is the exact value rounded once to the nearest bf16
//!   (up to fp32 accumulation noise), so no bf16 output, PyTorch's included, is closer element by
//!   element.
//! - On shapes large enough to measure them (see [`measurable_problem`]), `f32` meets its whole
//!   contract too. Two of its bounds are statistical, not per-input guarantees, and fail on tiny
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
//!   * the 4-ULP bound at q, k, v: ULPs are measured at the row's scale (RMS / 16), and a row of
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
        .prop_map(|(s, t, (seed, x_log2, w_std))| Problem { shape: s.with_t(t), seed, x_log2, w_std })
}

impl Problem {
    fn data(&self) -> (Vec<bf16>, Weights) {
        let s = &self.shape;
        let mut r = Rng::new(self.seed);
        let x = r.bf16s(s.t * s.h, 0.0, f64::from(self.x_log2).exp2());
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

struct Judged {
    id: EntryId,
    verdict: Verdict,
    reports: Vec<StageReport>,
}

/// Every variant judged by its own contract, with the CPU `standard` as the golden.
fn judge(p: &Problem) -> Vec<Judged> {
    const EPS: f32 = 1e-6;
    let (x, w) = p.data();
    let inputs = OpInputs { shape: p.shape, x: &x, weights: &w, eps: EPS };
    let run = |e: &'static Entry| with_head_norms(run_once(&Cpu, e, &inputs).expect("valid inputs"), &w, &p.shape, EPS);
    let golden = run(registry::baseline());
    let truths = truth::compute(&p.shape, EPS, &x, &w, &golden);
    registry::variants()
        .map(|e| {
            let (verdict, reports) = verdict::evaluate(&e.contract(), &run(e), &golden, &truths, &p.shape);
            Judged { id: e.id, verdict, reports }
        })
        .collect()
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
    fn on_any_shape_hf_variants_meet_their_contracts_and_f32_beats_pytorch_at_qkv(p in any_problem()) {
        let judged = judge(&p);
        prop_assert_eq!(judged.len(), 4);
        for j in judged.iter().filter(|j| j.id != EntryId::F32) {
            prop_assert!(j.verdict.passed(), "{} on {:?}: {:?}", j.id, p, j.verdict);
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
    fn on_measurable_shapes_every_cpu_variant_meets_its_whole_contract(p in measurable_problem()) {
        let s = p.shape;
        prop_assert!(s.nq * s.d >= 32 && s.nkv * s.d >= 32 && s.t * s.nq.min(s.nkv) * s.d >= 256 && s.t <= 9);
        let judged = judge(&p);
        for j in &judged {
            prop_assert!(j.verdict.passed(), "{} on {:?}: {:?}", j.id, p, j.verdict);
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
