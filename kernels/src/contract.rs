//! Precision contracts as data: what a variant promises, stage by stage.
//!
//! Suites evaluate these; no threshold lives in test code. The numbers come from NUMERICS.md and
//! from the measurements recorded beside each contract in `registry.rs`.

use crate::op::Stage;
use serde::{Deserialize, Serialize};

/// Which fp64 truth a stage's error is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    /// The op in exact arithmetic: no rounding anywhere before the output.
    IdealMath,
    /// The exact result of the golden's own rounded operands (B, or q/k for the head norms): the
    /// error that is left is the stage's own, not inherited from earlier roundings.
    GoldenOperands,
}

/// Bounds on one stage, judged against the PyTorch golden and an fp64 truth. Bounds that depend
/// on the case's size are stated as an error model (a base and how it grows with the reduction
/// length or shrinks with the element count), so they hold on shapes the goldens do not cover.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct StageBound {
    pub stage: Stage,
    /// Largest scaled ULP distance to the golden (bf16 ULPs; fp32 ULPs for inv_rms), measured at
    /// the row's scale below its RMS (see harness::metrics), before `ulp_per_sqrt_len` is added.
    /// `None`: no promise to match HF here.
    pub max_ulp: Option<u32>,
    /// ULPs added per square root of the stage's reduction length ([`Stage::reduction_len`]):
    /// two fp32 sums of the same n terms in different orders differ by O(sqrt(n)) ulp.
    #[serde(default)]
    pub ulp_per_sqrt_len: f64,
    /// Smallest fraction of elements bit-identical to the golden.
    pub min_bit_exact: f64,
    /// Largest (candidate's relative L2 error to truth) / (golden's relative L2 error to truth),
    /// before `ratio_allowance` is added.
    pub max_error_ratio: Option<f64>,
    /// Added to `max_error_ratio` as this many over sqrt(elements of the stage): a ratio of two
    /// errors measured over few elements scatters by ~1/sqrt(n).
    #[serde(default)]
    pub ratio_allowance: f64,
    pub truth: Truth,
    /// Each element is the bf16 rounding of its `truth` value, but for a few near ties.
    #[serde(default)]
    pub rounded_from: Option<RoundedFrom>,
}

/// The stage's one rounding point, judged element by element: each element must be the bf16
/// rounding (to nearest even) of the truth's exact value. An honest implementation misses only
/// where its fp32 arithmetic lands the value on the other side of a tie, a rare event at a rate
/// of at most `share`; allowed among n elements: the expected count `share * n` plus `sigmas`
/// standard deviations of it (Poisson), so a tiny stage (8 elements) allows no miss and a large
/// one little more than its share. Rows whose fp32 sum of squares over- or underflows are not
/// judged: there fp32 arithmetic cannot hold the exact value (the verdict excludes them).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundedFrom {
    pub truth: Truth,
    pub share: f64,
    #[serde(default)]
    pub sigmas: f64,
}

impl RoundedFrom {
    /// Misses allowed among `n` elements.
    pub fn allowed(&self, n: usize) -> usize {
        let expected = self.share * n as f64;
        (expected + self.sigmas * expected.sqrt()).floor() as usize
    }
}

impl StageBound {
    /// A stage that must match the golden's rounding point up to rare reduction-order flips.
    pub const fn matches_hf(stage: Stage, max_ulp: u32, min_bit_exact: f64) -> StageBound {
        StageBound {
            stage,
            max_ulp: Some(max_ulp),
            ulp_per_sqrt_len: 0.0,
            min_bit_exact,
            max_error_ratio: None,
            ratio_allowance: 0.0,
            truth: Truth::GoldenOperands,
            rounded_from: None,
        }
    }
    /// A stage judged only by its accuracy against `truth`, relative to PyTorch's.
    pub const fn at_least_as_accurate(stage: Stage, max_ratio: f64, truth: Truth) -> StageBound {
        StageBound { max_ulp: None, min_bit_exact: 0.0, ..StageBound::matches_hf(stage, 0, 0.0) }
            .with_error_ratio(max_ratio, truth)
    }
    pub const fn with_error_ratio(self, max: f64, truth: Truth) -> StageBound {
        StageBound { max_error_ratio: Some(max), truth, ..self }
    }
    /// The ULP bound grows by `per_sqrt` ULPs per sqrt of the reduction length.
    pub const fn growing_with_sqrt_len(self, per_sqrt: f64) -> StageBound {
        StageBound { ulp_per_sqrt_len: per_sqrt, ..self }
    }
    /// The ratio bound gets `allowance` / sqrt(elements) on top.
    pub const fn with_ratio_allowance(self, allowance: f64) -> StageBound {
        StageBound { ratio_allowance: allowance, ..self }
    }
    pub const fn rounded_from(self, rounded_from: RoundedFrom) -> StageBound {
        StageBound { rounded_from: Some(rounded_from), ..self }
    }

    /// The ULP bound on this shape.
    pub fn max_ulp_on(&self, shape: &crate::op::Shape) -> Option<u64> {
        let grow = self.ulp_per_sqrt_len * (self.stage.reduction_len(shape) as f64).sqrt();
        self.max_ulp.map(|base| u64::from(base) + grow.ceil() as u64)
    }

    /// The error-ratio bound over `n` elements.
    pub fn max_ratio_over(&self, n: usize) -> Option<f64> {
        self.max_error_ratio.map(|max| max + self.ratio_allowance / (n.max(1) as f64).sqrt())
    }
}

/// What a variant promises inside a whole Qwen3 forward pass, relative to HF's own noise floor: at
/// every layer and figure, the worst of HF's floor runs (another batch size, sdpa attention,
/// decode instead of prefill) against HF's reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelContract {
    /// Each layer's drift (relative L2 of the residual stream to HF's) at most this multiple of
    /// the floor's at that layer: judged on every model.
    pub max_drift_over_floor: f64,
    /// Mean KL(HF || entry) at most this multiple of the floor's: judged where the output is
    /// stable (a chaotic model's floor is too wide to separate anything at the output).
    pub max_kl_over_floor: f64,
    /// Same-top-1 at least the floor's minus this many percentage points (stable output only)...
    pub max_top1_drop_pct: f64,
    /// ...or minus this many standard deviations of the floor's count of differing positions,
    /// whichever allows more. Which token wins a near-tie is decided by rounding noise, so the
    /// count of positions whose top-1 differs from HF's is a Poisson count whose mean the floor
    /// estimates (sigma = sqrt(misses)): over 170 positions at 28 layers, an honest run lands
    /// 4 positions (2.4 points) below the floor's, which a fixed 2 points would reject.
    pub top1_sigmas: f64,
}

impl ModelContract {
    /// The same-top-1 drop (percentage points) allowed below a floor of `floor_pct` over
    /// `positions` positions.
    pub fn top1_allowance_pct(&self, floor_pct: f64, positions: usize) -> f64 {
        let n = positions.max(1) as f64;
        let misses = ((100.0 - floor_pct) / 100.0 * n).max(1.0);
        self.max_top1_drop_pct.max(self.top1_sigmas * 100.0 * misses.sqrt() / n)
    }
}

/// A variant's whole promise.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Contract {
    /// Checked where the backend observes the stage; C (q, k, v) and the head norms always are.
    pub stages: &'static [StageBound],
    /// Two runs on the same inputs give bitwise-equal outputs.
    pub deterministic: bool,
    /// Row t's output does not depend on how many other rows share the launch.
    pub batch_invariant: bool,
    /// Inside a Qwen3 forward pass.
    pub model: ModelContract,
}

impl Contract {
    pub fn bound(&self, stage: Stage) -> Option<&StageBound> {
        self.stages.iter().find(|b| b.stage == stage)
    }
}

#[cfg(test)]
mod tests {
    use crate::op::Dims;

    #[test]
    fn size_dependent_bounds_follow_their_error_models() {
        let inv_rms = StageBound::matches_hf(Stage::InvRms, 4, 0.0).growing_with_sqrt_len(0.5);
        let at = |h: usize| inv_rms.max_ulp_on(&Dims { h, nq: 1, nkv: 1, d: 8 }.with_t(3));
        // 4 + ceil(sqrt(H) / 2): the H > 5000 case (12 ulp measured) is inside.
        assert_eq!([at(8), at(1024), at(5120), at(8192)], [Some(6), Some(20), Some(40), Some(50)]);
        // The head norms reduce over D, not H.
        let head = StageBound::matches_hf(Stage::QNormed, 3, 0.0).growing_with_sqrt_len(1.0);
        assert_eq!(head.max_ulp_on(&Dims { h: 4096, nq: 1, nkv: 1, d: 64 }.with_t(1)), Some(11));
        let ratio = StageBound::at_least_as_accurate(Stage::Q, 1.0, Truth::IdealMath).with_ratio_allowance(6.0);
        assert_eq!([ratio.max_ratio_over(9), ratio.max_ratio_over(3600)], [Some(3.0), Some(1.1)]);
        assert_eq!(StageBound::matches_hf(Stage::Q, 1, 0.9).max_ratio_over(4), None);
        // 0.5% plus 3 Poisson sigmas: no miss among 8 elements, 3 among 128, 19 among 2048.
        let r = RoundedFrom { truth: Truth::IdealMath, share: 0.005, sigmas: 3.0 };
        assert_eq!([r.allowed(8), r.allowed(128), r.allowed(2048)], [0, 3, 19]);
    }

    use super::*;

    #[test]
    fn the_top1_allowance_is_the_larger_of_the_points_and_the_poisson_sigmas() {
        let c = ModelContract {
            max_drift_over_floor: 1.5,
            max_kl_over_floor: 1.5,
            max_top1_drop_pct: 2.0,
            top1_sigmas: 3.0,
        };
        // 28-layer stable model: the floor misses 6 of 170 positions; 3 sqrt(6) / 170 = 4.32 points.
        let a = c.top1_allowance_pct(100.0 * 164.0 / 170.0, 170);
        assert!((a - 300.0 * 6f64.sqrt() / 170.0).abs() < 1e-9, "{a}");
        // The sub-floor control there landed at 160 of 170 (94.1%): within; the skip-weight mutant at 8 (4.7%): not.
        let floor = 100.0 * 164.0 / 170.0;
        assert!(100.0 * 160.0 / 170.0 >= floor - a && 100.0 * 8.0 / 170.0 < floor - a);
        // A floor that misses nothing: one miss is assumed (3 / 170 = 1.76 points), so 2 points rule.
        assert_eq!(c.top1_allowance_pct(100.0, 170), 2.0);
        // Many positions: the sigmas shrink and the points rule.
        assert_eq!(c.top1_allowance_pct(99.0, 100_000), 2.0);
    }
}
