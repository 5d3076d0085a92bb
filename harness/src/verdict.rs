//! Judging a candidate's stages against a contract: Pass, or Fail with every reason (which stage,
//! which metric, which bound, the first offending indices).

use crate::metrics::{self, Comparison};
use crate::truth::Truths;
use fusegate_kernels::{Contract, Observed, OpInputs, Shape, Stage, StageBound, Truth};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail { reasons: Vec<String> },
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
    fn from_reasons(reasons: Vec<String>) -> Verdict {
        if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail { reasons } }
    }
}

/// Everything measured on one stage, bounded or not.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: Stage,
    pub comparison: Comparison,
    /// Relative L2 errors against the exact op and against the golden's own operands.
    pub rel_l2_ideal: f64,
    pub rel_l2_golden_ideal: f64,
    pub rel_l2_operands: f64,
    pub rel_l2_golden_operands: f64,
    /// Candidate's error over PyTorch's against each truth.
    pub error_ratio_ideal: f64,
    pub error_ratio_operands: f64,
    /// Elements that are not the bf16 rounding of the bound's truth (where the bound judges the
    /// rounding point element by element).
    #[serde(default)]
    pub rounding_misses: Option<usize>,
    /// The conditional view (`own_inputs`): elements HF's rounding point, applied to the
    /// candidate's own upstream values, does not explain. `None` where the candidate did not
    /// observe what the stage is computed from (judged end to end only).
    #[serde(default)]
    pub own_input_misses: Option<usize>,
    pub bound: Option<StageBound>,
}

impl StageReport {
    pub fn error_ratio(&self, truth: Truth) -> f64 {
        match truth {
            Truth::IdealMath => self.error_ratio_ideal,
            Truth::GoldenOperands => self.error_ratio_operands,
        }
    }
}

/// A flat index as coordinates in the stage's dims, e.g. q[3, 7, 100].
pub fn coords(stage: Stage, shape: &Shape, flat: usize) -> String {
    let dims = stage.dims(shape);
    let mut rest = flat;
    let mut idx = vec![0; dims.len()];
    for (slot, &d) in idx.iter_mut().zip(&dims).rev() {
        *slot = rest % d;
        rest /= d;
    }
    let inner: Vec<String> = idx.iter().map(usize::to_string).collect();
    format!("{stage}[{}]", inner.join(", "))
}

fn list(stage: Stage, shape: &Shape, flats: &[usize]) -> String {
    flats.iter().map(|&i| coords(stage, shape, i)).collect::<Vec<_>>().join(" ")
}

/// One bounded figure of a stage: what was measured, what the bound allows, and the reason
/// it gives when over.
struct Judged {
    measured: f64,
    allowed: f64,
    reason: String,
}

impl Judged {
    fn over(&self) -> bool {
        self.measured.is_nan() || self.measured > self.allowed
    }
    /// measured / allowed: above 1 the bound is broken, by that factor. A count allowed none
    /// reads 0 when none is seen and 1 + the count otherwise (a finite margin past a zero bound).
    fn margin(&self) -> f64 {
        match (self.allowed > 0.0, self.measured > 0.0) {
            (true, _) => self.measured / self.allowed,
            (false, false) => 0.0,
            (false, true) => 1.0 + self.measured,
        }
    }
}

/// Every bounded figure of one stage.
fn judged(report: &StageReport, bound: &StageBound, shape: &Shape) -> Vec<Judged> {
    let (s, c) = (report.stage, &report.comparison);
    let n = s.len(shape);
    let mut out = Vec::new();
    let truth_name = |t: Truth| match t {
        Truth::IdealMath => "ideal",
        Truth::GoldenOperands => "golden-operand",
    };
    out.push(Judged {
        measured: c.class_mismatches as f64,
        allowed: 0.0,
        reason: format!(
            "{s}: {} NaN/Inf positions differ from PyTorch (first: {})",
            c.class_mismatches,
            list(s, shape, &c.first_class_mismatch)
        ),
    });
    // Where the stage's rounding point is judged on the candidate's own inputs, its distance to
    // the golden is inherited noise (a 1-ulp flip of A becomes up to ceil(|w|) + 1 ulps of B),
    // bounded upstream by inv_rms's bound and the exact rounding points in between: the
    // conditional view replaces the end-to-end ULP and bit-exact bounds there. (Judged exactly:
    // an honest rounding point never misses.)
    match report.own_input_misses {
        Some(misses) if bound.min_bit_exact > 0.0 => out.push(
            Judged {
                measured: misses as f64,
                allowed: 0.0,
                reason: format!(
                    "{s} (own inputs): {misses} of {n} elements are not HF's rounding point applied to the candidate's own inputs"
                ),
            },
        ),
        _ => {
            if let Some(max_ulp) = bound.max_ulp_on(shape) {
                out.push(
                    Judged {
                        measured: c.max_scaled_ulp as f64,
                        allowed: max_ulp as f64,
                        reason: format!(
                            "{s}: max ulp {} > {max_ulp} (at {})",
                            c.max_scaled_ulp,
                            list(s, shape, &c.offenders_over(max_ulp))
                        ),
                    },
                );
            }
            if bound.min_bit_exact > 0.0 {
                out.push(
                    Judged {
                        measured: (1.0 - c.bit_exact_fraction()) * n as f64,
                        allowed: (1.0 - bound.min_bit_exact) * n as f64,
                        reason: format!(
                            "{s}: bit-exact {:.4}% < {:.4}% (worst at {})",
                            100.0 * c.bit_exact_fraction(),
                            100.0 * bound.min_bit_exact,
                            list(s, shape, &c.worst.iter().map(|w| w.0).collect::<Vec<_>>())
                        ),
                    },
                );
            }
        }
    }
    if let Some(max) = bound.max_ratio_over(n) {
        let ratio = report.error_ratio(bound.truth);
        let reason = format!("{s}: error ratio to {} truth {ratio:.3} > {max:.3}", truth_name(bound.truth));
        out.push(Judged { measured: ratio, allowed: max, reason });
    }
    if let (Some(r), Some(misses)) = (bound.rounded_from, report.rounding_misses) {
        let allowed = r.allowed(n);
        let reason = format!(
            "{s}: {misses} of {n} elements are not the {} truth rounded to bf16 (rounding point; allowed {allowed})",
            truth_name(r.truth)
        );
        out.push(Judged { measured: misses as f64, allowed: allowed as f64, reason });
    }
    out
}

/// Checks one stage against its bound; returns the reasons it fails.
fn check(report: &StageReport, bound: &StageBound, shape: &Shape) -> Vec<String> {
    judged(report, bound, shape).into_iter().filter(Judged::over).map(|j| j.reason).collect()
}

/// How far past its bounds a trial's worst stage figure lands: above 1 the contract rejects it
/// by that factor (a mutant's margin), at or below 1 the headroom left (a variant's). Reports
/// written before a bound existed are measured by the bounds they carry.
pub fn margin(reports: &[StageReport], shape: &Shape) -> Option<f64> {
    reports
        .iter()
        .filter_map(|r| r.bound.as_ref().map(|b| judged(r, b, shape)))
        .flatten()
        .map(|j| if j.measured.is_nan() { f64::INFINITY } else { j.margin() })
        .reduce(f64::max)
}

/// Measures every stage the candidate observed and judges the bounded ones, end to end against
/// the golden and, where the candidate's own inputs to a stage are known, conditionally
/// (`own_inputs`).
///
/// Stage C (q, k, v) and the head norms must be present; an unobserved intermediate stage (A, B
/// or inv_rms inside a fused kernel) is not judged.
pub fn evaluate(
    contract: &Contract,
    candidate: &Observed,
    golden: &Observed,
    truths: &Truths,
    inputs: &OpInputs,
) -> (Verdict, Vec<StageReport>) {
    let shape = &inputs.shape;
    let own = crate::own_inputs::misses(inputs, candidate);
    let mut reasons = Vec::new();
    let mut reports = Vec::new();
    for stage in Stage::ALL {
        let bound = contract.bound(stage).copied();
        let (Some(cand), Some(gold)) = (candidate.get(&stage), golden.get(&stage)) else {
            let required = Stage::C.contains(&stage) || matches!(stage, Stage::QNormed | Stage::KNormed);
            if required && bound.is_some() {
                reasons.push(format!("{stage}: not produced by the candidate"));
            }
            continue;
        };
        let Some(comparison) = metrics::compare_stage(cand, gold, stage.len(shape) / shape.t.max(1)) else {
            reasons.push(format!("{stage}: {} elements or format differ from the golden's {}", cand.len(), gold.len()));
            continue;
        };
        // Accuracy is measured on the rows where fp32 can hold the op (Truths::rows_in_fp32_range).
        let err = |truth: Truth, data| {
            truths.get(truth, stage).map_or(f64::NAN, |t| metrics::rel_l2_in(data, t, &truths.rows_in_fp32_range))
        };
        let (ci, gi) = (err(Truth::IdealMath, cand), err(Truth::IdealMath, gold));
        let (co, go) = (err(Truth::GoldenOperands, cand), err(Truth::GoldenOperands, gold));
        let rounding_misses = match (bound.and_then(|b| b.rounded_from), cand.as_bf16()) {
            (Some(r), Some(values)) => {
                truths.get(r.truth, stage).map(|t| metrics::rounding_misses(values, t, &truths.rows_in_fp32_range))
            }
            _ => None,
        };
        let report = StageReport {
            stage,
            comparison,
            rel_l2_ideal: ci,
            rel_l2_golden_ideal: gi,
            rel_l2_operands: co,
            rel_l2_golden_operands: go,
            error_ratio_ideal: metrics::error_ratio(ci, gi),
            error_ratio_operands: metrics::error_ratio(co, go),
            rounding_misses,
            own_input_misses: own.get(&stage).copied(),
            bound,
        };
        if let Some(b) = &bound {
            reasons.extend(check(&report, b, shape));
        }
        reports.push(report);
    }
    (Verdict::from_reasons(reasons), reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::Dims;

    #[test]
    fn coords_unflatten_row_major() {
        let s = Dims { h: 8, nq: 3, nkv: 1, d: 4 }.with_t(2);
        assert_eq!(coords(Stage::Q, &s, 0), "q[0, 0, 0]");
        assert_eq!(coords(Stage::Q, &s, 12 + 4 + 3), "q[1, 1, 3]");
        assert_eq!(coords(Stage::A, &s, 9), "a[1, 1]");
    }
}
