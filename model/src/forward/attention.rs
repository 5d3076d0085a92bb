//! HF's eager attention (`eager_attention_forward`) for one layer, with the KV cache: scores as a
//! bf16 GEMM (fp32 accumulation, bf16 out), times the scaling in bf16, the causal mask (masked
//! scores are exactly 0 after the softmax, so they are simply left out), softmax in fp32 rounded to
//! bf16, then probabilities @ V as a bf16 GEMM. Key/value heads are shared by `nq / nkv` query
//! heads (GQA, `repeat_kv`).

use fusegate_kernels::cpu::dot_lanes8;
use half::bf16;
use rayon::prelude::*;

/// One layer's keys and values so far, after k_norm and RoPE: [positions, nkv, d] each.
#[derive(Default, Clone)]
pub struct KvCache {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    /// Appends T positions of keys and values ([T, nkv, d], bf16).
    pub fn append(&mut self, k: &[bf16], v: &[bf16]) {
        self.keys.extend(k.iter().map(|x| x.to_f32()));
        self.values.extend(v.iter().map(|x| x.to_f32()));
    }
}

/// Head layout of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub nq: usize,
    pub nkv: usize,
    pub d: usize,
}

/// Attention output [T, nq * d] for queries `q` ([T, nq, d], after q_norm and RoPE) at positions
/// `first_pos..first_pos + T`, over the cache (which already holds these positions' keys).
pub fn attend(q: &[bf16], first_pos: usize, cache: &KvCache, h: Heads) -> Vec<bf16> {
    let width = h.nq * h.d;
    let t = q.len() / width;
    // HF's scaling: head_dim ** -0.5 as a Python float, applied to a bf16 tensor in fp32.
    let scaling = (h.d as f64).powf(-0.5) as f32;
    let mut out = vec![bf16::ZERO; q.len()];
    out.par_chunks_mut(h.d).enumerate().for_each(|(i, o)| {
        let (tok, head) = (i / h.nq, i % h.nq);
        let kv = head / (h.nq / h.nkv);
        let qf: Vec<f32> = q[(tok * h.nq + head) * h.d..][..h.d].iter().map(|x| x.to_f32()).collect();
        let visible = first_pos + tok + 1;
        let row = h.nkv * h.d;
        let scores: Vec<f32> = (0..visible)
            .map(|s| {
                let k = &cache.keys[s * row + kv * h.d..][..h.d];
                let w = bf16::from_f32(dot_lanes8(&qf, k));
                bf16::from_f32(w.to_f32() * scaling).to_f32()
            })
            .collect();
        let probs = softmax_bf16(&scores);
        for (j, oj) in o.iter_mut().enumerate() {
            let v: Vec<f32> = (0..visible).map(|s| cache.values[s * row + kv * h.d + j]).collect();
            *oj = bf16::from_f32(dot_lanes8(&probs, &v));
        }
    });
    debug_assert_eq!(out.len(), t * width);
    out
}

/// softmax in fp32 (`dtype=torch.float32`), each probability rounded to bf16 (`.to(query.dtype)`).
fn softmax_bf16(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| bf16::from_f32(v / sum).to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    #[test]
    fn one_visible_key_returns_its_value_and_gqa_shares_kv_heads() {
        let h = Heads { nq: 2, nkv: 1, d: 4 };
        let mut cache = KvCache::default();
        cache.append(&bf(&[0.5, -1.0, 2.0, 0.25]), &bf(&[1.5, -2.0, 0.75, 3.0]));
        let q = bf(&[1.0, 2.0, -0.5, 0.125, -3.0, 0.5, 1.0, 2.0]);
        let out = attend(&q, 0, &cache, h);
        // softmax over one score is 1: both query heads read the one value row.
        assert_eq!(out, bf(&[1.5, -2.0, 0.75, 3.0, 1.5, -2.0, 0.75, 3.0]));
    }

    #[test]
    fn causal_positions_see_only_their_past() {
        let h = Heads { nq: 1, nkv: 1, d: 2 };
        let mut cache = KvCache::default();
        cache.append(&bf(&[1.0, 0.0, 0.0, 1.0]), &bf(&[10.0, 0.0, 0.0, 20.0]));
        let q = bf(&[4.0, 0.0, 4.0, 0.0]);
        let out = attend(&q, 0, &cache, h);
        assert_eq!(&out[..2], &bf(&[10.0, 0.0])[..], "position 0 sees key 0 only");
        // Position 1: scores bf16(4 / sqrt 2) and 0, softmax weights p and 1 - p (bf16 each).
        let s = bf16::from_f32(bf16::from_f32(4.0).to_f32() * (2f64.powf(-0.5) as f32)).to_f64();
        let p = 1.0 / (1.0 + (-s).exp());
        let (p0, p1) = (bf16::from_f64(p).to_f64(), bf16::from_f64(1.0 - p).to_f64());
        assert_eq!(out[2], bf16::from_f64(10.0 * p0));
        assert_eq!(out[3], bf16::from_f64(20.0 * p1));
    }
}
