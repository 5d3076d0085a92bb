//! Comparing one stage of a candidate with the PyTorch golden, element by element.
//!
//! Distances are in ULPs of the stage's own format (bf16, or fp32 for inv_rms) on an ordered
//! integer view. NaN is compared by class (is it NaN at the same position), never by bits:
//! PyTorch, CUDA and `half` all spell NaN differently.
//!
//! Raw ULPs mislead on GEMM outputs near zero: a dot product of 1024 terms that cancels to 1e-6
//! carries fp32 accumulation noise far larger than its own bf16 ULP, so two correct GEMMs can be
//! thousands of raw ULPs apart there (a sign flip alone spans the whole exponent range). Contracts
//! therefore bound the *scaled* ULP distance: |a - g| in ULPs of max(|a|, |g|, the row's RMS),
//! rounded up, so it is 0 only for equal values and equals the raw distance for elements of
//! typical size. The raw histogram is reported beside it.

use fusegate_kernels::StageData;
use half::bf16;
use serde::{Deserialize, Serialize};

/// Where a value sits on the number line as an integer: adjacent floats differ by 1, +0 == -0.
pub trait Ordered: Copy {
    const IS_BF16: bool;
    fn ordered(self) -> i64;
    fn class(self) -> Class;
    fn to_f64(self) -> f64;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Finite,
    Nan,
    PosInf,
    NegInf,
}

fn class_of(v: f64) -> Class {
    if v.is_nan() {
        Class::Nan
    } else if v == f64::INFINITY {
        Class::PosInf
    } else if v == f64::NEG_INFINITY {
        Class::NegInf
    } else {
        Class::Finite
    }
}

impl Ordered for bf16 {
    const IS_BF16: bool = true;
    fn ordered(self) -> i64 {
        let b = self.to_bits();
        let mag = (b & 0x7fff) as i64;
        if b & 0x8000 != 0 { -mag } else { mag }
    }
    fn class(self) -> Class {
        class_of(self.to_f64())
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

impl Ordered for f32 {
    const IS_BF16: bool = false;
    fn ordered(self) -> i64 {
        let b = self.to_bits();
        let mag = (b & 0x7fff_ffff) as i64;
        if b & 0x8000_0000 != 0 { -mag } else { mag }
    }
    fn class(self) -> Class {
        class_of(self as f64)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// ULP distance between two finite values of one format (0 for +0 vs -0).
pub fn ulp_distance<T: Ordered>(a: T, b: T) -> u64 {
    a.ordered().abs_diff(b.ordered())
}

/// Upper edges of the ULP histogram's buckets: 0, 1, 2, 3-4, 5-8, 9-16, 17-256, more.
pub const ULP_BUCKETS: [(u64, &str); 8] =
    [(0, "0"), (1, "1"), (2, "2"), (4, "3-4"), (8, "5-8"), (16, "9-16"), (256, "17-256"), (u64::MAX, ">256")];

/// How many offending indices a report keeps.
const FIRST_N: usize = 5;

/// One stage of a candidate against the golden.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub elements: usize,
    /// Elements equal to the golden (same bits, +0 == -0, or NaN / same-signed inf at the same place).
    pub bit_exact: usize,
    /// Largest raw (ordered-integer) ULP distance.
    pub max_ulp: u64,
    /// Largest ULP distance at the row's scale (see the module doc): what contracts bound.
    pub max_scaled_ulp: u64,
    /// Counts of raw ULP distances per ULP_BUCKETS entry, over elements finite in both.
    pub ulp_histogram: [usize; 8],
    /// Mean signed ULP difference (candidate - golden): rounding noise is centred, a bias is not.
    pub mean_signed_ulp: f64,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Elements whose class (finite / NaN / +inf / -inf) differs from the golden's.
    pub class_mismatches: usize,
    /// First flat indices where the class differs.
    pub first_class_mismatch: Vec<usize>,
    /// First flat indices with the largest scaled ULP distances (worst first).
    pub worst: Vec<(usize, u64)>,
}

impl Comparison {
    pub fn bit_exact_fraction(&self) -> f64 {
        if self.elements == 0 { 1.0 } else { self.bit_exact as f64 / self.elements as f64 }
    }

    /// Flat indices of elements more than `max_ulp` scaled ULPs apart, at most FIRST_N of them.
    pub fn offenders_over(&self, max_ulp: u64) -> Vec<usize> {
        self.worst.iter().filter(|(_, u)| *u > max_ulp).map(|(i, _)| *i).collect()
    }
}

/// The ULP of a value of `T`'s format at magnitude `m` (m finite, > 0).
fn ulp_at<T: Ordered>(m: f64) -> f64 {
    let (mant_bits, min_exp) = if T::IS_BF16 { (7, -126) } else { (23, -126) };
    let e = m.log2().floor().max(min_exp as f64);
    (e - mant_bits as f64).exp2()
}

/// Per element: the RMS of its row of the golden, the magnitude below which ULPs are measured at
/// the row's scale.
fn row_floors<T: Ordered>(golden: &[T], row: usize) -> Vec<f64> {
    golden
        .chunks(row.max(1))
        .flat_map(|r| {
            let (sum, n) = r
                .iter()
                .map(|v| v.to_f64())
                .filter(|v| v.is_finite())
                .fold((0.0, 0usize), |(s, n), v| (s + v * v, n + 1));
            let rms = if n == 0 { 0.0 } else { (sum / n as f64).sqrt() };
            std::iter::repeat_n(rms, r.len())
        })
        .collect()
}

/// Compares two equally long slices of one format; `row` is the length of one token's row.
pub fn compare<T: Ordered>(candidate: &[T], golden: &[T], row: usize) -> Comparison {
    assert_eq!(candidate.len(), golden.len(), "compare: lengths differ (checked by the caller)");
    let floors = row_floors(golden, row);
    let mut c = Comparison {
        elements: golden.len(),
        bit_exact: 0,
        max_ulp: 0,
        max_scaled_ulp: 0,
        ulp_histogram: [0; 8],
        mean_signed_ulp: 0.0,
        max_abs: 0.0,
        max_rel: 0.0,
        class_mismatches: 0,
        first_class_mismatch: Vec::new(),
        worst: Vec::new(),
    };
    let (mut signed_sum, mut finite) = (0i128, 0usize);
    for (i, (&a, &g)) in candidate.iter().zip(golden).enumerate() {
        let (ca, cg) = (a.class(), g.class());
        if ca != cg {
            c.class_mismatches += 1;
            if c.first_class_mismatch.len() < FIRST_N {
                c.first_class_mismatch.push(i);
            }
            continue;
        }
        if ca != Class::Finite {
            c.bit_exact += 1;
            continue;
        }
        let u = ulp_distance(a, g);
        signed_sum += (a.ordered() - g.ordered()) as i128;
        finite += 1;
        if u == 0 {
            c.bit_exact += 1;
        }
        let bucket = ULP_BUCKETS.iter().position(|&(edge, _)| u <= edge).unwrap_or(ULP_BUCKETS.len() - 1);
        c.ulp_histogram[bucket] += 1;
        c.max_ulp = c.max_ulp.max(u);
        let (af, gf) = (a.to_f64(), g.to_f64());
        let abs = (af - gf).abs();
        let scaled = if u == 0 {
            0
        } else {
            u.min((abs / ulp_at::<T>(af.abs().max(gf.abs()).max(floors[i]))).ceil() as u64).max(1)
        };
        if scaled > 0 && (c.worst.len() < FIRST_N || scaled > c.worst[FIRST_N - 1].1) {
            c.worst.push((i, scaled));
            c.worst.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            c.worst.truncate(FIRST_N);
        }
        c.max_scaled_ulp = c.max_scaled_ulp.max(scaled);
        c.max_abs = c.max_abs.max(abs);
        if gf != 0.0 {
            c.max_rel = c.max_rel.max(abs / gf.abs());
        }
    }
    if finite > 0 {
        c.mean_signed_ulp = signed_sum as f64 / finite as f64;
    }
    c
}

/// Compares two stages of the same format; `None` when the formats or lengths differ.
pub fn compare_stage(candidate: &StageData, golden: &StageData, row: usize) -> Option<Comparison> {
    match (candidate, golden) {
        (StageData::Bf16(a), StageData::Bf16(g)) if a.len() == g.len() => Some(compare(a, g, row)),
        (StageData::F32(a), StageData::F32(g)) if a.len() == g.len() => Some(compare(a, g, row)),
        _ => None,
    }
}

/// ||values - truth|| / ||truth|| over elements where both are finite.
pub fn rel_l2(values: &StageData, truth: &[f64]) -> f64 {
    rel_l2_in(values, truth, &[true])
}

/// [`rel_l2`] over the token rows `rows` marks (one flag per row, rows of equal length): rows
/// whose mean square leaves fp32's range carry no accuracy claim (truth.rs), and none at all is
/// an exact match (0).
pub fn rel_l2_in(values: &StageData, truth: &[f64], rows: &[bool]) -> f64 {
    let width = (truth.len() / rows.len().max(1)).max(1);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (v, &t)) in values.to_f64().into_iter().zip(truth).enumerate() {
        if v.is_finite() && t.is_finite() && rows.get(i / width).copied().unwrap_or(true) {
            num += (v - t) * (v - t);
            den += t * t;
        }
    }
    if den == 0.0 { if num == 0.0 { 0.0 } else { f64::INFINITY } } else { (num / den).sqrt() }
}

/// `v` rounded to the nearest bf16, ties to even. (`half`'s conversion from f64 drops the low 32
/// bits of the mantissa first, which can round a value just above a tie down.)
pub fn round_to_bf16(v: f64) -> half::bf16 {
    let near = half::bf16::from_f32(v as f32);
    if !v.is_finite() || !near.is_finite() {
        return near;
    }
    let bits = near.to_bits();
    let mut best = near;
    for c in [bits.wrapping_sub(1), bits.wrapping_add(1)].map(half::bf16::from_bits) {
        let (dc, db) = ((c.to_f64() - v).abs(), (best.to_f64() - v).abs());
        if c.is_finite() && (dc < db || (dc == db && c.to_bits() & 1 == 0)) {
            best = c;
        }
    }
    best
}

/// The reals that round to the finite `v` (to nearest; both ends included): half-way to each
/// neighbour.
pub fn rounds_from(v: half::bf16) -> (f64, f64) {
    let bits = v.to_bits();
    let toward = |up: bool| {
        let b = match (bits & 0x8000 == 0, bits & 0x7fff == 0) {
            (_, true) => {
                if up {
                    0x0001
                } else {
                    0x8001
                }
            }
            (true, false) => {
                if up {
                    bits + 1
                } else {
                    bits - 1
                }
            }
            (false, false) => {
                if up {
                    bits - 1
                } else {
                    bits + 1
                }
            }
        };
        half::bf16::from_bits(b).to_f64()
    };
    let g = v.to_f64();
    ((g + toward(false)) / 2.0, (g + toward(true)) / 2.0)
}

/// Finite elements of `values` that are not `truth` rounded to bf16, in the rows (of equal
/// length, one flag each) that `rows` marks (NaN/Inf positions are counted by the class
/// comparison instead).
pub fn rounding_misses(values: &[half::bf16], truth: &[f64], rows: &[bool]) -> usize {
    let width = values.len() / rows.len().max(1);
    values
        .chunks(width.max(1))
        .zip(truth.chunks(width.max(1)))
        .zip(rows)
        .filter(|(_, judged)| **judged)
        .map(|((v, t), _)| {
            v.iter().zip(t).filter(|&(&v, &t)| v.is_finite() && t.is_finite() && v != round_to_bf16(t)).count()
        })
        .sum()
}

/// candidate's error over the golden's error against the same truth (1.0 when both are exact).
pub fn error_ratio(candidate_err: f64, golden_err: f64) -> f64 {
    match (candidate_err, golden_err) {
        (c, g) if g > 0.0 => c / g,
        (0.0, _) => 1.0,
        _ => f64::INFINITY,
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;
    use half::bf16;

    #[test]
    fn rounds_to_nearest_even_where_half_truncates() {
        // 1 + 2^-8 is the tie between 1 and 1 + 2^-7: to even (1). A hair above, it must go up;
        // half's f64 conversion loses the hair (it sits below the 32 bits it keeps) and goes to 1.
        let tie = 1.0 + 2f64.powi(-8);
        assert_eq!(round_to_bf16(tie), bf16::ONE);
        assert_eq!(round_to_bf16(tie + 2f64.powi(-40)).to_f64(), 1.0 + 2f64.powi(-7));
        assert_eq!(bf16::from_f64(tie + 2f64.powi(-40)), bf16::ONE, "half's conversion changed: simplify");
        assert_eq!(round_to_bf16(-3.0), bf16::from_f32(-3.0));
        assert_eq!(rounding_misses(&[bf16::ONE, bf16::ONE, bf16::NAN], &[1.0, 1.02, 1.0], &[true]), 1);
        // Only the rows marked are judged.
        assert_eq!(
            rounding_misses(&[bf16::ONE, bf16::ONE, bf16::ONE, bf16::ONE], &[1.0, 1.02, 1.02, 1.0], &[true, false]),
            1
        );
        // 1's neighbours are 1 - 2^-8 and 1 + 2^-7: it takes the reals half-way to each.
        assert_eq!(rounds_from(bf16::ONE), (1.0 - 2f64.powi(-9), 1.0 + 2f64.powi(-8)));
        let (lo, hi) = rounds_from(bf16::from_f32(-0.0));
        assert!(lo < 0.0 && hi > 0.0 && hi == -lo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: f32) -> bf16 {
        bf16::from_f32(v)
    }

    #[test]
    fn ulp_counts_representable_steps_across_zero() {
        assert_eq!(ulp_distance(b(1.0), b(1.0 + 1.0 / 128.0)), 1);
        assert_eq!(ulp_distance(b(0.0), b(-0.0)), 0);
        let tiny = bf16::from_bits(1);
        assert_eq!(ulp_distance(tiny, -tiny), 2);
        assert_eq!(ulp_distance(1.0f32, f32::from_bits(1.0f32.to_bits() + 3)), 3);
    }

    #[test]
    fn nan_compares_by_class_not_bits() {
        let g = [bf16::from_bits(0x7fc0), b(1.0), bf16::INFINITY];
        let same = [bf16::from_bits(0xffff), b(1.0), bf16::INFINITY];
        let c = compare(&same, &g, 3);
        assert_eq!((c.bit_exact, c.class_mismatches), (3, 0));
        let moved = [b(1.0), bf16::NAN, bf16::NEG_INFINITY];
        let c = compare(&moved, &g, 3);
        assert_eq!((c.bit_exact, c.class_mismatches, c.first_class_mismatch.clone()), (0, 3, vec![0, 1, 2]));
    }

    #[test]
    fn histogram_bias_and_worst_offenders() {
        let g: Vec<bf16> = (1..=100).map(|i| b(i as f32 * 0.37)).collect();
        let mut c: Vec<bf16> = g.clone();
        c[10] = fusegate_kernels::cpu::next_up(c[10]);
        c[20] = bf16::from_bits(c[20].to_bits() + 5);
        // Rows of one element: every value is its own scale, so scaled == raw.
        let r = compare(&c, &g, 1);
        assert_eq!(r.bit_exact, 98);
        assert_eq!((r.max_ulp, r.max_scaled_ulp), (5, 5));
        // One row of RMS ~21: 5 ulps at 7.4 are 2 ulps (rounded up) at the row's scale.
        assert_eq!(compare(&c, &g, 100).max_scaled_ulp, 2);
        assert_eq!(r.ulp_histogram[..5], [98, 1, 0, 0, 1]);
        assert_eq!(r.worst, vec![(20, 5), (10, 1)]);
        assert!((r.mean_signed_ulp - 0.06).abs() < 1e-12);
        assert_eq!(r.offenders_over(1), vec![20]);
    }

    #[test]
    fn near_zero_cancellation_is_measured_at_the_row_scale() {
        // A row of magnitude ~1 whose one element cancelled to 1e-6 and came out as -1e-6.
        let mut g: Vec<bf16> = (0..64).map(|i| b(1.0 + i as f32 / 64.0)).collect();
        g[5] = b(1e-6);
        let mut c = g.clone();
        c[5] = b(-1e-6);
        let r = compare(&c, &g, 64);
        assert!(r.max_ulp > 10_000, "raw distance spans the exponent range: {}", r.max_ulp);
        assert_eq!(r.max_scaled_ulp, 1, "2e-6 is far below one ULP at the row's scale");
        assert_eq!(r.worst, vec![(5, 1)]);
    }

    #[test]
    fn rel_l2_and_ratio() {
        let truth = [3.0, 4.0];
        let v = StageData::F32(vec![3.0, 4.5]);
        assert!((rel_l2(&v, &truth) - 0.1).abs() < 1e-12);
        // Rows left out of the figure: the second row's error does not count.
        let two = StageData::F32(vec![1.1, 0.0, 5.0, 0.0]);
        let truth2 = [1.0, 0.0, 4.0, 0.0];
        assert!((rel_l2_in(&two, &truth2, &[true, false]) - 0.1).abs() < 1e-6);
        assert_eq!(rel_l2_in(&two, &truth2, &[false, false]), 0.0);
        assert_eq!(error_ratio(0.2, 0.1), 2.0);
        assert_eq!(error_ratio(0.0, 0.0), 1.0);
        assert_eq!(error_ratio(1e-9, 0.0), f64::INFINITY);
    }
}
