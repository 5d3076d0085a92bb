//! Sample statistics for device timings: the median with a distribution-free 95% confidence
//! interval (order statistics of a binomial), and the stopping rule.

use serde::{Deserialize, Serialize};

/// Median and its 95% CI of a set of samples (same unit as the samples).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub median: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub samples: usize,
}

impl Estimate {
    /// Half the CI's width over the median.
    pub fn rel_ci(&self) -> f64 {
        if self.median > 0.0 { (self.ci_hi - self.ci_lo) / 2.0 / self.median } else { f64::INFINITY }
    }

    /// From unsorted samples; `None` for fewer than 5 (no meaningful interval).
    pub fn from_samples(samples: &[f64]) -> Option<Estimate> {
        let n = samples.len();
        if n < 5 {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        // The ranks n/2 -+ 1.96 sqrt(n)/2 bound the median with ~95% confidence for any distribution.
        let half = 1.96 * (n as f64).sqrt() / 2.0;
        let lo = ((n as f64 / 2.0 - half).floor().max(0.0)) as usize;
        let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
        Some(Estimate { median, ci_lo: s[lo], ci_hi: s[hi], samples: n })
    }

    /// Two estimates' CIs overlap: the difference is within noise.
    pub fn overlaps(&self, other: &Estimate) -> bool {
        self.ci_lo <= other.ci_hi && other.ci_lo <= self.ci_hi
    }
}

/// When to stop sampling: the median is known to `target_rel_ci`, or the budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopRule {
    pub target_rel_ci: f64,
    pub min_samples: usize,
    pub max_samples: usize,
    pub budget_s: f64,
}

impl Default for StopRule {
    fn default() -> Self {
        StopRule { target_rel_ci: 0.01, min_samples: 20, max_samples: 2000, budget_s: 2.0 }
    }
}

impl StopRule {
    pub fn done(&self, samples: &[f64], elapsed_s: f64) -> bool {
        if samples.len() >= self.max_samples || elapsed_s >= self.budget_s {
            return true;
        }
        samples.len() >= self.min_samples
            && Estimate::from_samples(samples).is_some_and(|e| e.rel_ci() < self.target_rel_ci)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ci_of_a_known_set() {
        let s: Vec<f64> = (1..=101).map(f64::from).rev().collect();
        let e = Estimate::from_samples(&s).unwrap();
        assert_eq!(e.median, 51.0);
        // n = 101: ranks 50.5 -+ 9.85 -> [40, 61] (0-based) -> values 41 and 62.
        assert_eq!((e.ci_lo, e.ci_hi), (41.0, 62.0));
        assert!(e.ci_lo < e.median && e.median < e.ci_hi);
        assert!(Estimate::from_samples(&[1.0, 2.0]).is_none());
    }

    #[test]
    fn stops_on_precision_or_budget() {
        let r = StopRule { target_rel_ci: 0.01, min_samples: 10, max_samples: 1000, budget_s: 1.0 };
        let tight: Vec<f64> = (0..30).map(|i| 100.0 + (i % 3) as f64 * 0.1).collect();
        assert!(r.done(&tight, 0.1));
        let noisy: Vec<f64> = (0..30).map(|i| 100.0 + (i * 37 % 50) as f64).collect();
        assert!(!r.done(&noisy, 0.1));
        assert!(r.done(&noisy, 1.5));
        assert!(!r.done(&tight[..5], 0.1), "fewer than min_samples never stops early");
    }

    #[test]
    fn overlap_is_symmetric() {
        let a = Estimate { median: 10.0, ci_lo: 9.0, ci_hi: 11.0, samples: 50 };
        let b = Estimate { median: 12.0, ci_lo: 10.5, ci_hi: 13.0, samples: 50 };
        let c = Estimate { median: 20.0, ci_lo: 19.0, ci_hi: 21.0, samples: 50 };
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }
}
