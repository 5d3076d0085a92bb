//! The reference ops of the forward pass, each at HF's rounding points (NUMERICS.md, "The whole
//! Qwen3 decoder layer"): a bf16 GEMM with fp32 accumulation, bf16 elementwise ops computed in
//! fp32 and rounded once, and the HF RMSNorm of the kernels crate.

use fusegate_kernels::cpu::dot_lanes8 as dot;
use half::bf16;
use rayon::prelude::*;

/// Rows of W per parallel task: the task's rows stay in cache across every token.
const ROWS_PER_TASK: usize = 32;

/// A linear layer's weight [out, in] (nn.Linear's layout) widened to fp32 once: a product of two
/// bf16 values is exact in fp32, so `forward`'s only roundings are the fp32 accumulation and the
/// bf16 output, as in cuBLAS's bf16 GEMM with fp32 compute.
pub struct Linear {
    w: Vec<f32>,
    out: usize,
    inp: usize,
}

impl Linear {
    pub fn new(w: &[bf16], out: usize, inp: usize) -> Linear {
        assert_eq!(w.len(), out * inp, "Linear: weight length (checked by the loader)");
        Linear { w: w.par_iter().map(|v| v.to_f32()).collect(), out, inp }
    }

    /// y [T, out] = bf16(x [T, in] @ W^T): F.linear on bf16 tensors.
    pub fn forward(&self, x: &[bf16]) -> Vec<bf16> {
        let t = x.len() / self.inp;
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        // [out, T] so that each task owns a contiguous block; transposed at the end.
        let mut out_t = vec![bf16::ZERO; self.out * t];
        out_t.par_chunks_mut(ROWS_PER_TASK * t).enumerate().for_each(|(blk, out)| {
            let rows = self.w[blk * ROWS_PER_TASK * self.inp..].chunks_exact(self.inp).take(out.len() / t);
            for (j, wrow) in rows.enumerate() {
                for (k, xrow) in xf.chunks_exact(self.inp).enumerate() {
                    out[j * t + k] = bf16::from_f32(dot(xrow, wrow));
                }
            }
        });
        let mut y = vec![bf16::ZERO; t * self.out];
        for (o, col) in out_t.chunks_exact(t).enumerate() {
            for (k, &v) in col.iter().enumerate() {
                y[k * self.out + o] = v;
            }
        }
        y
    }
}

impl Linear {
    /// The outputs `ids` of `x`'s rows ([T, in] -> [T, ids.len()]), each as [`Linear::forward`]
    /// computes it (the same dot, the same rounding): a few logits without the whole vocabulary.
    pub fn rows(&self, x: &[bf16], ids: &[u32]) -> Vec<bf16> {
        x.chunks_exact(self.inp)
            .flat_map(|row| {
                let xf: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
                ids.iter()
                    .map(move |&i| bf16::from_f32(dot(&xf, &self.w[i as usize * self.inp..][..self.inp])))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// bf16(a + b) element-wise: the residual add of two bf16 tensors.
pub fn add(a: &[bf16], b: &[bf16]) -> Vec<bf16> {
    a.iter().zip(b).map(|(x, y)| bf16::from_f32(x.to_f32() + y.to_f32())).collect()
}

/// bf16(silu(gate)) * up, each rounded to bf16: HF's `act_fn(gate_proj(x)) * up_proj(x)`.
pub fn silu_mul(gate: &[bf16], up: &[bf16]) -> Vec<bf16> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| {
            let g = g.to_f32();
            let act = bf16::from_f32(g / (1.0 + (-g).exp()));
            bf16::from_f32(act.to_f32() * u.to_f32())
        })
        .collect()
}

/// HF RMSNorm over rows of `width` (two roundings: before and after the weight multiply).
pub fn rmsnorm(x: &[bf16], w: &[bf16], eps: f32) -> Vec<bf16> {
    fusegate_kernels::cpu::hf_rmsnorm_rows(x, w, eps, w.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_is_f_linear_with_one_rounding_per_output() {
        // x @ W^T for a 2x3 x and a 4x3 W, with values whose exact products need more than bf16.
        let xv = [1.5f32, -2.25, 0.375, 3.0, 0.0078125, -1.0];
        let wv: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.3).collect();
        let x: Vec<bf16> = xv.iter().map(|&v| bf16::from_f32(v)).collect();
        let w: Vec<bf16> = wv.iter().map(|&v| bf16::from_f32(v)).collect();
        let y = Linear::new(&w, 4, 3).forward(&x);
        for t in 0..2 {
            for o in 0..4 {
                let exact: f64 = (0..3).map(|k| x[t * 3 + k].to_f64() * w[o * 3 + k].to_f64()).sum();
                // Three terms: fp32 accumulation is exact enough that one bf16 rounding decides.
                assert_eq!(y[t * 4 + o], bf16::from_f64(exact), "t {t} o {o}");
            }
        }
    }

    #[test]
    fn silu_rounds_before_the_product() {
        let g = [bf16::from_f32(1.7)];
        let u = [bf16::from_f32(3.1)];
        let gv = g[0].to_f64();
        let act = bf16::from_f64(gv / (1.0 + (-gv).exp()));
        assert_eq!(silu_mul(&g, &u)[0], bf16::from_f64(act.to_f64() * u[0].to_f64()));
    }
}
