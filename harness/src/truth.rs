//! fp64 truths of a case, computed in Rust: the yardstick for "more or less accurate than PyTorch".
//!
//! bf16 x bf16 products are exact in f64 and 1024-term sums lose ~1e-16, so these are the true
//! values to far below any bf16 ULP.

use fusegate_kernels::{Shape, Stage, StageData, Truth, Weights};
use rayon::prelude::*;
use std::collections::BTreeMap;

pub type Stages64 = BTreeMap<Stage, Vec<f64>>;

/// Both truths of one case (see `Truth`).
pub struct Truths {
    pub ideal: Stages64,
    pub golden_operands: Stages64,
    /// Per token: whether the row's mean square is a normal fp32 number. Elsewhere fp32
    /// arithmetic cannot hold the exact op (x^2 overflows, so inv_rms = 0; or the squares
    /// underflow, so inv_rms = rsqrt(eps)), and no fp32 kernel can be the ideal truth rounded.
    pub rows_in_fp32_range: Vec<bool>,
}

/// See [`Truths::rows_in_fp32_range`] (the sum is exact to far below an fp32 ulp in f64).
pub fn rows_in_fp32_range(x: &[f64], h: usize) -> Vec<bool> {
    x.chunks_exact(h.max(1))
        .map(|row| {
            let mean_square = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
            mean_square >= f32::MIN_POSITIVE as f64 && mean_square <= f32::MAX as f64
        })
        .collect()
}

impl Truths {
    pub fn get(&self, truth: Truth, stage: Stage) -> Option<&[f64]> {
        match truth {
            Truth::IdealMath => &self.ideal,
            Truth::GoldenOperands => &self.golden_operands,
        }
        .get(&stage)
        .map(Vec::as_slice)
    }
}

fn f64s(v: &[half::bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Per-row exact RMSNorm pieces: (inv_rms, x * inv_rms, x * inv_rms * w).
fn rmsnorm64(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let width = w.len();
    let rows = x.len() / width;
    let (mut r, mut a, mut b) = (Vec::with_capacity(rows), Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
    for row in x.chunks_exact(width) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / width as f64 + eps).sqrt();
        r.push(inv);
        a.extend(row.iter().map(|v| v * inv));
        b.extend(row.iter().zip(w).map(|(v, wi)| v * inv * wi));
    }
    (r, a, b)
}

/// out[t, n] = sum_h a[t, h] * w[n, h], in f64.
fn gemm64(a: &[f64], w: &[f64], s: &Shape) -> Vec<f64> {
    let (h, n) = (s.h, s.n());
    let mut out = vec![0.0; s.t * n];
    out.par_chunks_mut(n).enumerate().for_each(|(t, row)| {
        let ar = &a[t * h..(t + 1) * h];
        for (o, wr) in row.iter_mut().zip(w.chunks_exact(h)) {
            let mut acc = [0.0f64; 4];
            for (i, (x, y)) in ar.iter().zip(wr).enumerate() {
                acc[i % 4] += x * y;
            }
            *o = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    });
    out
}

/// Splits a [T, N] product into q, k and v.
fn split_qkv(c: &[f64], s: &Shape) -> [Vec<f64>; 3] {
    let (qw, kw) = (s.q_width(), s.kv_width());
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    for row in c.chunks_exact(s.n()) {
        parts[0].extend_from_slice(&row[..qw]);
        parts[1].extend_from_slice(&row[qw..qw + kw]);
        parts[2].extend_from_slice(&row[qw + kw..]);
    }
    parts
}

/// Computes both truths of a case from its inputs and (for `golden_operands`) its golden stages.
pub fn compute(shape: &Shape, eps: f32, x: &[half::bf16], w: &Weights, golden: &BTreeMap<Stage, StageData>) -> Truths {
    let eps = eps as f64;
    let (x64, wn, wqkv) = (f64s(x), f64s(&w.norm), f64s(&w.qkv));
    let (qn, kn) = (f64s(&w.q_norm), f64s(&w.k_norm));
    let head_norm = |v: &[f64], wv: &[f64]| rmsnorm64(v, wv, eps).2;

    let (r, a, b) = rmsnorm64(&x64, &wn, eps);
    let [q, k, v] = split_qkv(&gemm64(&b, &wqkv, shape), shape);
    let mut ideal = Stages64::new();
    ideal.insert(Stage::QNormed, head_norm(&q, &qn));
    ideal.insert(Stage::KNormed, head_norm(&k, &kn));
    ideal.insert(Stage::InvRms, r.clone());
    ideal.insert(Stage::A, a.clone());
    ideal.insert(Stage::B, b);
    ideal.insert(Stage::Q, q);
    ideal.insert(Stage::K, k);
    ideal.insert(Stage::V, v);

    let g = |s: Stage| golden.get(&s).map(StageData::to_f64).unwrap_or_default();
    let ga = g(Stage::A);
    let gb = g(Stage::B);
    let h = shape.h;
    let b_of_golden_a: Vec<f64> = ga.iter().enumerate().map(|(i, a)| a * wn[i % h]).collect();
    let [q_, k_, v_] = split_qkv(&gemm64(&gb, &wqkv, shape), shape);
    let mut golden_operands = Stages64::new();
    golden_operands.insert(Stage::InvRms, r);
    golden_operands.insert(Stage::A, a);
    golden_operands.insert(Stage::B, b_of_golden_a);
    golden_operands.insert(Stage::Q, q_);
    golden_operands.insert(Stage::K, k_);
    golden_operands.insert(Stage::V, v_);
    golden_operands.insert(Stage::QNormed, head_norm(&g(Stage::Q), &qn));
    golden_operands.insert(Stage::KNormed, head_norm(&g(Stage::K), &kn));
    let rows_in_fp32_range = rows_in_fp32_range(&x64, h);
    Truths { ideal, golden_operands, rows_in_fp32_range }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::Dims;

    #[test]
    fn rows_whose_mean_square_leaves_fp32_are_out_of_range() {
        let rows = [1.0, -2.0, 1e-30, 1e-30, 1e20, 3.0, 1e-20, 1e-20, f64::NAN, 1.0];
        // 1e-60 underflows, 5e39 overflows; 1e-40 is subnormal (below fp32's smallest normal).
        assert_eq!(rows_in_fp32_range(&rows, 2), [true, false, false, false, false]);
        assert_eq!(rows_in_fp32_range(&[1e-18, 1e18], 2), [true]);
    }

    #[test]
    fn gemm64_matches_hand_computed_product() {
        let s = Dims { h: 3, nq: 1, nkv: 1, d: 1 }.with_t(2);
        let a = [1.0, 2.0, 3.0, -1.0, 0.5, 4.0];
        let w = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(gemm64(&a, &w, &s), vec![1.0, 2.0, 6.0, -1.0, 0.5, 3.5]);
    }

    #[test]
    fn rmsnorm64_normalises_rows_to_unit_rms() {
        let x = [3.0, 4.0, -1.0, 7.0];
        let (r, a, b) = rmsnorm64(&x, &[2.0, 2.0], 0.0);
        assert!((r[0] - 1.0 / 12.5f64.sqrt()).abs() < 1e-15);
        for row in a.chunks(2) {
            assert!(((row[0] * row[0] + row[1] * row[1]) / 2.0 - 1.0).abs() < 1e-12);
        }
        assert!((b[3] - 2.0 * a[3]).abs() < 1e-15);
    }
}
