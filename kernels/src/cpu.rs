//! The CPU backend: each entry's arithmetic emulated with `half::bf16` (round to nearest even) at
//! exactly the entry's rounding points. It emulates numerics, not schedules: every variant with
//! HF numerics gives the same bits here, and every suite runs without a GPU.

use crate::backend::{Backend, BackendError, BackendId, Layer, PreparedOp, check_layer, check_x};
use crate::op::{Dims, Observed, OpInputs, Shape, Stage, StageData, Weights};
use crate::registry::{Accumulate, Entry, Fault, NormRounding};
use half::bf16;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One RMSNorm row with HF's rounding points: returns inv_rms and writes A and B.
///
/// `mean` multiplies by 1/H as PyTorch's mean reduction does; rsqrt is 1/sqrt in fp32 (CUDA's
/// rsqrtf can differ by an ulp: the rare A flips NUMERICS.md expects).
pub fn hf_rmsnorm_row(x: &[bf16], w: &[bf16], eps: f32, a: &mut [bf16], b: &mut [bf16]) -> f32 {
    let r = inv_rms(x, eps);
    for ((&xi, &wi), (ai, bi)) in x.iter().zip(w).zip(a.iter_mut().zip(b.iter_mut())) {
        *ai = bf16::from_f32(xi.to_f32() * r);
        *bi = bf16::from_f32(wi.to_f32() * ai.to_f32());
    }
    r
}

/// fp32 rsqrt(mean(x^2) + eps), summing in 8 fixed lanes (an fp32 reduction order like a GPU's).
pub fn inv_rms(x: &[bf16], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    for (i, &v) in x.iter().enumerate() {
        let f = v.to_f32();
        acc[i % 8] += f * f;
    }
    let sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    1.0 / (sum * (1.0 / x.len() as f32) + eps).sqrt()
}

/// HF RMSNorm over consecutive rows of `width` (Qwen3's q_norm / k_norm over each head).
pub fn hf_rmsnorm_rows(x: &[bf16], w: &[bf16], eps: f32, width: usize) -> Vec<bf16> {
    let mut a = vec![bf16::ZERO; width];
    let mut out = vec![bf16::NAN; x.len()];
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        hf_rmsnorm_row(row, w, eps, &mut a, o);
    }
    out
}

/// The order in which a dot product is reduced over H.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// 8 interleaved lanes, combined as a tree.
    Lanes8,
    /// 4 interleaved lanes, reversed over H: a different, equally honest fp32 order.
    Lanes4Reversed,
}

/// An fp32 dot product in 8 interleaved lanes combined as a tree: a GPU-like reduction order (a
/// correct fp32 GEMM's order is unspecified; which one it is shows as sub-ulp noise).
pub fn dot_lanes8(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above).
        return unsafe { dot_lanes8_avx2(a, b) };
    }
    dot_lanes8_any(a, b)
}

/// [`dot_lanes8_any`] compiled for AVX2: the 8 lanes become one register. The same additions in the
/// same order (no FMA: AVX2 alone does not contract), so the same bits as without it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_lanes8_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes8_any(a, b)
}

#[inline(always)]
fn dot_lanes8_any(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, at) = a.as_chunks::<8>();
    let (bc, bt) = b.as_chunks::<8>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in at.iter().zip(bt).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `dot(a, row, _, Accumulate::Bf16)` for up to 8 rows at once (every partial sum rounded to bf16).
fn dots_bf16(a: &[f32], rows: &[&[f32]]) -> Vec<f32> {
    let mut acc = [0f32; 8];
    for (k, &x) in a.iter().enumerate() {
        for (s, row) in acc.iter_mut().zip(rows) {
            *s = round_bf16(*s + x * row[k]);
        }
    }
    acc[..rows.len()].to_vec()
}

/// `bf16::from_f32(v).to_f32()` (round to nearest even) on the bits, for the hot loop above.
#[inline(always)]
fn round_bf16(v: f32) -> f32 {
    if v.is_nan() {
        return v;
    }
    let b = v.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

fn dot(a: &[f32], b: &[f32], order: Order, accumulate: Accumulate) -> f32 {
    match (accumulate, order) {
        (Accumulate::F32, Order::Lanes8) => dot_lanes8(a, b),
        (Accumulate::F32, Order::Lanes4Reversed) => {
            let mut acc = [0f32; 4];
            for (i, (x, y)) in a.iter().zip(b).rev().enumerate() {
                acc[i % 4] += x * y;
            }
            (acc[0] + acc[1]) + (acc[2] + acc[3])
        }
        (Accumulate::Bf16, _) => {
            a.iter().zip(b).fold(bf16::ZERO, |s, (x, y)| bf16::from_f32(s.to_f32() + x * y)).to_f32()
        }
    }
}

/// The GEMM's left operand for every row, plus the rounding points the entry passes through.
fn normalize(entry: &Entry, inp: &OpInputs, obs: &mut Observed) -> Vec<f32> {
    let (t, h) = (inp.shape.t, inp.shape.h);
    let w = &inp.weights.norm;
    let mut operand = vec![0f32; t * h];
    let mut r_all = vec![0f32; t];
    let mut a_all = vec![bf16::NAN; t * h];
    let mut b_all = vec![bf16::NAN; t * h];
    operand
        .par_chunks_mut(h)
        .zip(r_all.par_iter_mut())
        .zip(a_all.par_chunks_mut(h).zip(b_all.par_chunks_mut(h)))
        .enumerate()
        .for_each(|(row, ((op, r_out), (a, b)))| {
            let x = &inp.x[row * h..(row + 1) * h];
            let r = match entry.numerics.norm {
                NormRounding::HfTwoRoundings => hf_rmsnorm_row(x, w, inp.eps, a, b),
                NormRounding::SkipWeight => {
                    let r = inv_rms(x, inp.eps);
                    for (ai, &xi) in a.iter_mut().zip(x) {
                        *ai = bf16::from_f32(xi.to_f32() * r);
                    }
                    b.copy_from_slice(a);
                    r
                }
                NormRounding::OnceAfterWeight => {
                    let r = inv_rms(x, inp.eps);
                    for ((bi, &xi), &wi) in b.iter_mut().zip(x).zip(w) {
                        *bi = bf16::from_f32(xi.to_f32() * r * wi.to_f32());
                    }
                    r
                }
                NormRounding::Fp32 => {
                    let r = inv_rms(x, inp.eps);
                    for ((o, &xi), &wi) in op.iter_mut().zip(x).zip(w) {
                        *o = xi.to_f32() * r * wi.to_f32();
                    }
                    r
                }
            };
            if entry.numerics.norm != NormRounding::Fp32 {
                for (o, bi) in op.iter_mut().zip(b.iter()) {
                    *o = bi.to_f32();
                }
            }
            *r_out = r;
        });
    obs.insert(Stage::InvRms, StageData::F32(r_all));
    match entry.numerics.norm {
        NormRounding::HfTwoRoundings | NormRounding::SkipWeight => {
            obs.insert(Stage::A, StageData::Bf16(a_all));
            obs.insert(Stage::B, StageData::Bf16(b_all));
        }
        NormRounding::OnceAfterWeight => {
            obs.insert(Stage::B, StageData::Bf16(b_all));
        }
        NormRounding::Fp32 => {}
    }
    operand
}

/// Counts runs, so that the run-variant mutant can change its order on every call.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Rows of W per parallel task: 64 rows of fp32 (256 KiB at H = 1024) stay in L2 across all T.
const N_BLOCK: usize = 64;

/// Emulates `entry` on the CPU. Outputs start as NaN and every honest element is overwritten.
pub fn run_entry(entry: &Entry, inp: &OpInputs) -> Observed {
    let w32: Vec<f32> = inp.weights.qkv.iter().map(|v| v.to_f32()).collect();
    run_with(entry, inp, &w32)
}

/// [`run_entry`] with W already widened to fp32 (`w32`, [N, H]).
fn run_with(entry: &Entry, inp: &OpInputs, w32: &[f32]) -> Observed {
    let s = inp.shape;
    let mut obs = Observed::new();
    let operand = normalize(entry, inp, &mut obs);
    let order = match entry.fault {
        Some(Fault::BatchVariantOrder { from_t }) if s.t >= from_t => Order::Lanes4Reversed,
        Some(Fault::RunVariantOrder) if RUNS.fetch_add(1, Ordering::Relaxed) % 2 == 1 => Order::Lanes4Reversed,
        _ => Order::Lanes8,
    };
    let (h, n) = (s.h, s.n());
    // out is [N, T] (column-major in T) so that each task owns a contiguous block.
    let mut out_nt = vec![bf16::NAN; n * s.t];
    out_nt.par_chunks_mut(N_BLOCK * s.t).enumerate().for_each(|(blk, out)| {
        let n0 = blk * N_BLOCK;
        let rows: Vec<&[f32]> = w32[n0 * h..].chunks_exact(h).take(out.len() / s.t).collect();
        for t in 0..s.t {
            let a = &operand[t * h..(t + 1) * h];
            if entry.numerics.accumulate == Accumulate::Bf16 {
                // Eight independent rounding chains at a time: the same sums, without each waiting
                // on the one before it.
                for (g, group) in rows.chunks(8).enumerate() {
                    for (j, v) in dots_bf16(a, group).into_iter().enumerate() {
                        out[(g * 8 + j) * s.t + t] = bf16::from_f32(v);
                    }
                }
                continue;
            }
            for (j, wrow) in rows.iter().enumerate() {
                out[j * s.t + t] = bf16::from_f32(dot(a, wrow, order, entry.numerics.accumulate));
            }
        }
    });
    let (q, k, v) = split_qkv(entry, &s, &out_nt);
    obs.insert(Stage::Q, StageData::Bf16(q));
    obs.insert(Stage::K, StageData::Bf16(k));
    obs.insert(Stage::V, StageData::Bf16(v));
    obs
}

/// q, k, v from the GEMM's [N, T] output, with the entry's output fault applied.
fn split_qkv(entry: &Entry, s: &Shape, out_nt: &[bf16]) -> (Vec<bf16>, Vec<bf16>, Vec<bf16>) {
    let (qw, kw, n) = (s.q_width(), s.kv_width(), s.n());
    let mut q = vec![bf16::NAN; s.t * qw];
    let mut k = vec![bf16::NAN; s.t * kw];
    let mut v = vec![bf16::NAN; s.t * kw];
    let skip = (entry.fault == Some(Fault::Unwritten)).then_some(q.len() / 2);
    for t in 0..s.t {
        for col in 0..n {
            let val = out_nt[col * s.t + t];
            if col < qw {
                let i = t * qw + col;
                if Some(i) != skip {
                    q[i] = val;
                }
            } else if col < qw + kw {
                k[t * kw + col - qw] = val;
            } else {
                v[t * kw + col - qw - kw] = val;
            }
        }
    }
    if let Some(Fault::UlpBias { every }) = entry.fault {
        for c in [&mut q, &mut k, &mut v] {
            for x in c.iter_mut().step_by(every) {
                *x = next_up(*x);
            }
        }
    }
    (q, k, v)
}

/// The next bf16 toward +inf (NaN and +inf stay).
pub fn next_up(x: bf16) -> bf16 {
    if x.is_nan() || x == bf16::INFINITY {
        return x;
    }
    let b = x.to_bits();
    bf16::from_bits(match b {
        0x8000 => 0x0001,
        _ if b & 0x8000 != 0 => b - 1,
        _ => b + 1,
    })
}

/// The always-available backend.
pub struct Cpu;

impl Backend for Cpu {
    fn id(&self) -> BackendId {
        BackendId::Cpu
    }

    fn supports(&self, entry: &Entry) -> Result<(), String> {
        match entry.fault {
            Some(Fault::ReadsXEarly) => {
                Err(format!("{}: a defect of chained launches, and the CPU backend has no launches", entry.name))
            }
            _ => Ok(()),
        }
    }

    fn same_results(&self, a: &Entry, b: &Entry) -> bool {
        // Only what `run_with` reads; the run-to-run fault draws on a shared counter, so never.
        a.numerics == b.numerics && a.fault == b.fault && a.fault != Some(Fault::RunVariantOrder)
    }

    fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError> {
        check_layer(&layer)?;
        self.supports(entry).map_err(|_| BackendError::Unsupported { backend: BackendId::Cpu, entry: entry.name })?;
        let w32 = layer.weights.qkv.iter().map(|v| v.to_f32()).collect();
        Ok(Box::new(CpuOp { entry, dims: layer.dims, weights: layer.weights.clone(), eps: layer.eps, w32 }))
    }
}

/// An entry with its layer's weights, W widened to fp32 once.
struct CpuOp {
    entry: &'static Entry,
    dims: Dims,
    weights: Weights,
    eps: f32,
    w32: Vec<f32>,
}

impl PreparedOp for CpuOp {
    fn entry(&self) -> &'static Entry {
        self.entry
    }

    fn run(&mut self, x: &[bf16]) -> Result<Observed, BackendError> {
        let shape = check_x(&self.dims, x)?;
        let inputs = OpInputs { shape, x, weights: &self.weights, eps: self.eps };
        Ok(run_with(self.entry, &inputs, &self.w32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lets conformance count mixed's and exact's CPU rows once: the CPU claims they are
    /// standard's computation, and they are, bit for bit; entries it keeps apart differ.
    #[test]
    fn entries_the_cpu_calls_one_computation_give_the_same_bits() {
        use crate::registry::{self, EntryId};
        let shape = Dims { h: 256, nq: 4, nkv: 2, d: 32 }.with_t(9);
        let weights = crate::synth::weights(&shape.dims, 5);
        let x = crate::synth::activations(&shape, 5);
        let inputs = OpInputs { shape, x: &x, weights: &weights, eps: 1e-6 };
        let std = EntryId::Standard.entry();
        for id in [EntryId::Mixed, EntryId::Exact] {
            assert!(Cpu.same_results(std, id.entry()), "{id}");
        }
        assert!(!Cpu.same_results(std, EntryId::F32.entry()));
        let run = |e| crate::run_once(&Cpu, e, &inputs).unwrap();
        let base = run(std);
        for e in registry::all().iter().filter(|e| Cpu.supports(e).is_ok() && e.id != std.id) {
            let same = run(e) == base;
            if Cpu.same_results(std, e) {
                assert!(same, "{} is called standard's computation but differs", e.name);
            } else if !matches!(e.fault, Some(Fault::RunVariantOrder | Fault::BatchVariantOrder { .. })) {
                assert!(!same, "{} is kept apart from standard but gives its bits", e.name);
            }
        }
    }

    #[test]
    fn next_up_moves_one_ulp_toward_positive_infinity() {
        for v in [1.0f32, -1.0, 0.0, -0.0, 3.5e-38, -2.0e5] {
            let x = bf16::from_f32(v);
            let y = next_up(x);
            assert!(y > x, "{v}");
            // Nothing representable lies strictly between.
            assert_eq!(
                bf16::from_f32((x.to_f32() + y.to_f32()) / 2.0).max(x),
                bf16::from_f32((x.to_f32() + y.to_f32()) / 2.0)
            );
        }
    }

    #[test]
    fn the_dot_product_is_the_same_bits_with_and_without_avx2() {
        let mut rng = crate::synth::Rng::new(3);
        for n in [1usize, 7, 8, 9, 1000, 1024, 3072] {
            let a: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 1e-3).collect();
            assert_eq!(dot_lanes8(&a, &b).to_bits(), dot_lanes8_any(&a, &b).to_bits(), "n = {n}");
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot_lanes8(&a, &b) as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()), "n = {n}");
        }
    }

    #[test]
    fn bit_rounding_is_half_s_round_to_nearest_even() {
        let mut rng = crate::synth::Rng::new(4);
        let specials =
            [0.0f32, -0.0, f32::MAX, -f32::MAX, f32::INFINITY, f32::MIN_POSITIVE, 1e-40, 3.0e38, 1.0 + 1.0 / 256.0];
        let draws = (0..100_000).map(|_| (rng.normal() * 10f64.powi((rng.next_u64() % 60) as i32 - 30)) as f32);
        for v in specials.into_iter().chain(draws) {
            assert_eq!(round_bf16(v).to_bits(), bf16::from_f32(v).to_f32().to_bits(), "{v:e}");
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn eight_bf16_chains_at_once_are_the_one_chain_sums() {
        let mut rng = crate::synth::Rng::new(9);
        let a: Vec<f32> = (0..300).map(|_| rng.normal() as f32).collect();
        let rows: Vec<Vec<f32>> = (0..5).map(|_| (0..300).map(|_| rng.normal() as f32 * 0.02).collect()).collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let batched = dots_bf16(&a, &refs);
        for (r, got) in rows.iter().zip(batched) {
            let one = a.iter().zip(r).fold(bf16::ZERO, |s, (x, y)| bf16::from_f32(s.to_f32() + x * y)).to_f32();
            assert_eq!(got.to_bits(), one.to_bits());
        }
    }

    #[test]
    fn hf_row_rounds_twice() {
        // x * r lands between bf16 values; rounding before the weight multiply differs from after.
        let x: Vec<bf16> = (1..=16).map(|i| bf16::from_f32(0.37 * i as f32)).collect();
        let w = vec![bf16::from_f32(1.3); 16];
        let (mut a, mut b) = (vec![bf16::ZERO; 16], vec![bf16::ZERO; 16]);
        let r = hf_rmsnorm_row(&x, &w, 1e-6, &mut a, &mut b);
        for i in 0..16 {
            assert_eq!(a[i], bf16::from_f32(x[i].to_f32() * r));
            assert_eq!(b[i], bf16::from_f32(w[i].to_f32() * a[i].to_f32()));
        }
    }
}
