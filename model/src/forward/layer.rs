//! One Qwen3 decoder layer as HF's eager path computes it. The input RMSNorm and the q/k/v
//! projections are the registry entry's op, run by the chosen backend (the same `PreparedOp` the
//! conformance suite judges); everything else is the reference ops of [`super::ops`].

use super::attention::{self, Heads, KvCache};
use super::ops::{Linear, add, rmsnorm, silu_mul};
use super::rope::Rope;
use super::tap::{LayerStage, Tap};
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

impl LayerTables {
    /// The rest of the layer after attention: `h + o_proj(attn)`, then the post-attention norm,
    /// the MLP and its residual add.
    pub fn finish(&self, h: &[bf16], attn: &[bf16], eps: f32) -> Vec<bf16> {
        let h1 = add(h, &self.o_proj.forward(attn));
        let n2 = rmsnorm(&h1, &self.post_norm, eps);
        let mlp = self.down.forward(&silu_mul(&self.gate.forward(&n2), &self.up.forward(&n2)));
        add(&h1, &mlp)
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
        let (l, p) = (self.index, first_pos);
        let mut observed = self.op.run(h)?;
        tap.qkv(l, &mut observed);
        if let Some(StageData::Bf16(b)) = observed.get_mut(&Stage::B) {
            tap.stage(l, LayerStage::InputNorm, p, b);
        }
        let mut take = |s: Stage| match observed.remove(&s) {
            Some(StageData::Bf16(v)) => Ok(v),
            _ => Err(BackendError::Device(format!("layer {l}: the op produced no {s}"))),
        };
        let (q, k, mut v) = (take(Stage::Q)?, take(Stage::K)?, take(Stage::V)?);
        let mut q = rmsnorm(&q, &self.tables.q_norm, self.eps);
        let mut k = rmsnorm(&k, &self.tables.k_norm, self.eps);
        tap.stage(l, LayerStage::Q, p, &mut q);
        tap.stage(l, LayerStage::K, p, &mut k);
        tap.stage(l, LayerStage::V, p, &mut v);
        for tok in 0..t {
            rope.apply(&mut q[tok * hd.nq * hd.d..][..hd.nq * hd.d], p + tok);
            rope.apply(&mut k[tok * hd.nkv * hd.d..][..hd.nkv * hd.d], p + tok);
        }
        tap.stage(l, LayerStage::QRope, p, &mut q);
        tap.stage(l, LayerStage::KRope, p, &mut k);
        tap.cache_write(l, p, &mut k, &mut v);
        self.cache.append(&k, &v);
        let mut attn = attention::attend(&q, p, &self.cache, hd);
        tap.stage(l, LayerStage::Attention, p, &mut attn);
        let mut out = self.tables.finish(h, &attn, self.eps);
        tap.stage(l, LayerStage::Output, p, &mut out);
        Ok(out)
    }
}
