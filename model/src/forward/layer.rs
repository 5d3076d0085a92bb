//! One Qwen3 decoder layer as HF's eager path computes it. The input RMSNorm and the q/k/v
//! projections are the registry entry's op, run by the chosen backend (the same `PreparedOp` the
//! conformance suite judges); everything else is the reference ops of [`super::ops`].

use super::attention::{self, Heads, KvCache};
use super::ops::{Linear, add, rmsnorm, silu_mul};
use super::rope::Rope;
use super::tap::Tap;
use crate::Qwen3Config;
use crate::weights::LayerWeights;
use fusegate_kernels::{Backend, BackendError, Entry, Layer, PreparedOp, Stage, StageData};
use half::bf16;

/// A layer's weights widened for the reference ops, shared by every entry's pass.
pub struct LayerTables {
    pub q_norm: Vec<bf16>,
    pub k_norm: Vec<bf16>,
    pub o_proj: Linear,
    pub post_norm: Vec<bf16>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl LayerTables {
    pub fn new(w: &LayerWeights, c: &Qwen3Config) -> LayerTables {
        let (h, i, q) = (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim);
        LayerTables {
            q_norm: w.q_norm.clone(),
            k_norm: w.k_norm.clone(),
            o_proj: Linear::new(&w.o_proj, h, q),
            post_norm: w.post_norm.clone(),
            gate: Linear::new(&w.gate_proj, i, h),
            up: Linear::new(&w.up_proj, i, h),
            down: Linear::new(&w.down_proj, h, i),
        }
    }
}

/// A layer ready to run: the entry's op prepared with this layer's weights, and its cache.
pub struct DecoderLayer<'a> {
    index: usize,
    op: Box<dyn PreparedOp + 'a>,
    tables: &'a LayerTables,
    heads: Heads,
    eps: f32,
    cache: KvCache,
}

impl<'a> DecoderLayer<'a> {
    pub fn new(
        index: usize,
        backend: &'a dyn Backend,
        entry: &'static Entry,
        weights: &LayerWeights,
        tables: &'a LayerTables,
        c: &Qwen3Config,
    ) -> Result<DecoderLayer<'a>, BackendError> {
        let eps = c.rms_norm_eps as f32;
        let op = backend.prepare(entry, Layer { dims: c.op_dims(), weights: &weights.op_weights(), eps })?;
        let heads = Heads { nq: c.num_attention_heads, nkv: c.num_key_value_heads, d: c.head_dim };
        Ok(DecoderLayer { index, op, tables, heads, eps, cache: KvCache::default() })
    }

    /// Forgets every cached position (a new sequence).
    pub fn reset(&mut self) {
        self.cache = KvCache::default();
    }

    /// The layer's output for `h` ([T, H], positions `first_pos..first_pos + T`), appending these
    /// positions' keys and values to the cache.
    pub fn forward(
        &mut self,
        h: &[bf16],
        first_pos: usize,
        rope: &Rope,
        tap: &mut dyn Tap,
    ) -> Result<Vec<bf16>, BackendError> {
        let (hd, t) = (self.heads, h.len() / self.tables.post_norm.len());
        let mut observed = self.op.run(h)?;
        tap.qkv(self.index, &mut observed);
        let mut take = |s: Stage| match observed.remove(&s) {
            Some(StageData::Bf16(v)) => Ok(v),
            _ => Err(BackendError::Device(format!("layer {}: the op produced no {s}", self.index))),
        };
        let (q, k, v) = (take(Stage::Q)?, take(Stage::K)?, take(Stage::V)?);
        let mut q = rmsnorm(&q, &self.tables.q_norm, self.eps);
        let mut k = rmsnorm(&k, &self.tables.k_norm, self.eps);
        for tok in 0..t {
            rope.apply(&mut q[tok * hd.nq * hd.d..][..hd.nq * hd.d], first_pos + tok);
            rope.apply(&mut k[tok * hd.nkv * hd.d..][..hd.nkv * hd.d], first_pos + tok);
        }
        self.cache.append(&k, &v);
        let attn = attention::attend(&q, first_pos, &self.cache, hd);
        let h1 = add(h, &self.tables.o_proj.forward(&attn));
        let n2 = rmsnorm(&h1, &self.tables.post_norm, self.eps);
        let mlp = self.tables.down.forward(&silu_mul(&self.tables.gate.forward(&n2), &self.tables.up.forward(&n2)));
        Ok(add(&h1, &mlp))
    }
}
