//! What a pass lets an observer see and change: the controls that show the model gate's resolution
//! perturb one layer's q, k, v here, as a wrong kernel would; an engine dump records every stage of
//! every layer here, and its controls plant integration faults (a stage computed wrongly, the KV
//! cache written wrongly) at the same points.

use std::fmt;

use fusegate_kernels::Observed;
use half::bf16;
use serde::{Deserialize, Serialize};

/// A point inside a decoder layer where an engine's activations can be compared with HF's, in the
/// order the layer computes them. Each holds [T, width] bf16 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerStage {
    /// input_layernorm's output (HF's B), [T, H].
    InputNorm,
    /// q after q_norm, before RoPE, [T, nq*d].
    Q,
    /// k after k_norm, before RoPE, [T, nkv*d].
    K,
    /// v (no norm), [T, nkv*d].
    V,
    /// q after RoPE, [T, nq*d].
    QRope,
    /// k after RoPE (what the KV cache holds), [T, nkv*d].
    KRope,
    /// The attention output before o_proj, heads concatenated, [T, nq*d].
    Attention,
    /// The decoder layer's output (the residual stream), [T, H].
    Output,
}

impl LayerStage {
    pub const ALL: [LayerStage; 8] = [
        LayerStage::InputNorm,
        LayerStage::Q,
        LayerStage::K,
        LayerStage::V,
        LayerStage::QRope,
        LayerStage::KRope,
        LayerStage::Attention,
        LayerStage::Output,
    ];

    /// The stage's name in dump files (`layers.{i}.{name}`) and reports.
    pub fn name(self) -> &'static str {
        match self {
            LayerStage::InputNorm => "input_norm",
            LayerStage::Q => "q",
            LayerStage::K => "k",
            LayerStage::V => "v",
            LayerStage::QRope => "q_rope",
            LayerStage::KRope => "k_rope",
            LayerStage::Attention => "attention",
            LayerStage::Output => "output",
        }
    }

    /// Values per position: the hidden size, or the q or k/v heads' width.
    pub fn width(self, c: &crate::Qwen3Config) -> usize {
        match self {
            LayerStage::InputNorm | LayerStage::Output => c.hidden_size,
            LayerStage::Q | LayerStage::QRope | LayerStage::Attention => c.num_attention_heads * c.head_dim,
            LayerStage::K | LayerStage::V | LayerStage::KRope => c.num_key_value_heads * c.head_dim,
        }
    }
}

impl fmt::Display for LayerStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sees (and may change) what a pass computes. Only `qkv` must be implemented: the other points
/// default to seeing nothing.
pub trait Tap {
    /// Each layer's q, k and v as the entry's op produced them (before the head norms).
    fn qkv(&mut self, layer: usize, observed: &mut Observed);
    /// Whether [`Tap::qkv`] may change `layer`'s q, k, v: a device pass copies them to the host
    /// and back only for such layers. (The device pass calls only `qkv`: stages and cache writes
    /// are seen by the host pass alone.)
    fn touches(&self, _layer: usize) -> bool {
        true
    }

    /// One stage of layer `layer` at positions `first_pos..first_pos + T` ([T, width]); changes
    /// reach every later stage (the input norm is seen after the op used it: changing it changes nothing).
    fn stage(&mut self, _layer: usize, _stage: LayerStage, _first_pos: usize, _values: &mut Vec<bf16>) {}

    /// The keys (after RoPE) and values about to be written to layer `layer`'s cache at positions
    /// `first_pos..`: what attention will read for them.
    fn cache_write(&mut self, _layer: usize, _first_pos: usize, _k: &mut Vec<bf16>, _v: &mut Vec<bf16>) {}
}

/// Changes nothing.
pub struct Untouched;

impl Tap for Untouched {
    fn qkv(&mut self, _: usize, _: &mut Observed) {}
    fn touches(&self, _: usize) -> bool {
        false
    }
}
