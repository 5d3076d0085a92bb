//! A Qwen3 model's weights in HF's layout and names (nn.Linear weights are [out, in], row-major).

use std::fmt;

use fusegate_kernels::Weights;
use half::bf16;

use crate::Qwen3Config;

/// HF's name of the embedding.
pub const EMBED: &str = "model.embed_tokens.weight";
/// HF's name of the final norm.
pub const FINAL_NORM: &str = "model.norm.weight";
/// HF's name of the output projection (stored only when not tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// One tensor of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    InputNorm,
    QProj,
    KProj,
    VProj,
    QNorm,
    KNorm,
    OProj,
    PostNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 11] = [
        LayerTensor::InputNorm,
        LayerTensor::QProj,
        LayerTensor::KProj,
        LayerTensor::VProj,
        LayerTensor::QNorm,
        LayerTensor::KNorm,
        LayerTensor::OProj,
        LayerTensor::PostNorm,
        LayerTensor::GateProj,
        LayerTensor::UpProj,
        LayerTensor::DownProj,
    ];

    /// The part of the HF name after `model.layers.{i}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            LayerTensor::InputNorm => "input_layernorm.weight",
            LayerTensor::QProj => "self_attn.q_proj.weight",
            LayerTensor::KProj => "self_attn.k_proj.weight",
            LayerTensor::VProj => "self_attn.v_proj.weight",
            LayerTensor::QNorm => "self_attn.q_norm.weight",
            LayerTensor::KNorm => "self_attn.k_norm.weight",
            LayerTensor::OProj => "self_attn.o_proj.weight",
            LayerTensor::PostNorm => "post_attention_layernorm.weight",
            LayerTensor::GateProj => "mlp.gate_proj.weight",
            LayerTensor::UpProj => "mlp.up_proj.weight",
            LayerTensor::DownProj => "mlp.down_proj.weight",
        }
    }

    /// HF's name of this tensor in layer `layer`.
    pub fn hf_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.suffix())
    }

    /// The shape `config` implies.
    pub fn shape(self, c: &Qwen3Config) -> Vec<usize> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        match self {
            LayerTensor::InputNorm | LayerTensor::PostNorm => vec![h],
            LayerTensor::QProj => vec![q, h],
            LayerTensor::KProj | LayerTensor::VProj => vec![kv, h],
            LayerTensor::QNorm | LayerTensor::KNorm => vec![d],
            LayerTensor::OProj => vec![h, q],
            LayerTensor::GateProj | LayerTensor::UpProj => vec![i, h],
            LayerTensor::DownProj => vec![h, i],
        }
    }
}

/// One decoder layer, HF layout (nn.Linear weights are [out, in], row-major).
#[derive(Clone, PartialEq)]
pub struct LayerWeights {
    /// [H]
    pub input_norm: Vec<bf16>,
    /// [nq*d, H]
    pub q_proj: Vec<bf16>,
    /// [nkv*d, H]
    pub k_proj: Vec<bf16>,
    /// [nkv*d, H]
    pub v_proj: Vec<bf16>,
    /// [d]
    pub q_norm: Vec<bf16>,
    /// [d]
    pub k_norm: Vec<bf16>,
    /// [H, nq*d]
    pub o_proj: Vec<bf16>,
    /// [H]
    pub post_norm: Vec<bf16>,
    /// [I, H]
    pub gate_proj: Vec<bf16>,
    /// [I, H]
    pub up_proj: Vec<bf16>,
    /// [H, I]
    pub down_proj: Vec<bf16>,
}

impl LayerWeights {
    /// The fused op's weights: norm = input_norm, qkv = q_proj rows, then k_proj rows, then
    /// v_proj rows ([(nq+2nkv)*d, H]), q_norm, k_norm.
    pub fn op_weights(&self) -> Weights {
        Weights {
            norm: self.input_norm.clone(),
            qkv: [&self.q_proj[..], &self.k_proj, &self.v_proj].concat(),
            q_norm: self.q_norm.clone(),
            k_norm: self.k_norm.clone(),
        }
    }

    /// Builds a layer from one value per tensor, in [`LayerTensor::ALL`]'s order of calls.
    pub fn try_from_fn<E>(mut f: impl FnMut(LayerTensor) -> Result<Vec<bf16>, E>) -> Result<LayerWeights, E> {
        Ok(LayerWeights {
            input_norm: f(LayerTensor::InputNorm)?,
            q_proj: f(LayerTensor::QProj)?,
            k_proj: f(LayerTensor::KProj)?,
            v_proj: f(LayerTensor::VProj)?,
            q_norm: f(LayerTensor::QNorm)?,
            k_norm: f(LayerTensor::KNorm)?,
            o_proj: f(LayerTensor::OProj)?,
            post_norm: f(LayerTensor::PostNorm)?,
            gate_proj: f(LayerTensor::GateProj)?,
            up_proj: f(LayerTensor::UpProj)?,
            down_proj: f(LayerTensor::DownProj)?,
        })
    }

    pub fn get(&self, t: LayerTensor) -> &[bf16] {
        match t {
            LayerTensor::InputNorm => &self.input_norm,
            LayerTensor::QProj => &self.q_proj,
            LayerTensor::KProj => &self.k_proj,
            LayerTensor::VProj => &self.v_proj,
            LayerTensor::QNorm => &self.q_norm,
            LayerTensor::KNorm => &self.k_norm,
            LayerTensor::OProj => &self.o_proj,
            LayerTensor::PostNorm => &self.post_norm,
            LayerTensor::GateProj => &self.gate_proj,
            LayerTensor::UpProj => &self.up_proj,
            LayerTensor::DownProj => &self.down_proj,
        }
    }
}

/// Lengths only: the values would be megabytes of text.
impl fmt::Debug for LayerWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("LayerWeights");
        for t in LayerTensor::ALL {
            s.field(t.suffix(), &self.get(t).len());
        }
        s.finish()
    }
}

/// A whole model's weights and the config they belong to.
#[derive(Clone, PartialEq)]
pub struct Qwen3Weights {
    pub config: Qwen3Config,
    /// [V, H]
    pub embed: Vec<bf16>,
    pub layers: Vec<LayerWeights>,
    /// [H]
    pub norm: Vec<bf16>,
    /// [V, H]; `None` when tied to `embed`.
    pub lm_head: Option<Vec<bf16>>,
}

impl Qwen3Weights {
    /// The output projection [V, H]: `embed` when tied.
    pub fn lm_head(&self) -> &[bf16] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Every tensor a checkpoint of this model stores, in HF's names, with its shape and values:
    /// the embedding, each layer's tensors, the final norm, then lm_head when it is not tied.
    /// (A tied model with `lm_head: Some` is inconsistent; the stored copy is not listed.)
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, &[bf16])> {
        let c = &self.config;
        let mut out = vec![(EMBED.to_string(), vec![c.vocab_size, c.hidden_size], &self.embed[..])];
        for (i, layer) in self.layers.iter().enumerate() {
            out.extend(LayerTensor::ALL.iter().map(|&t| (t.hf_name(i), t.shape(c), layer.get(t))));
        }
        out.push((FINAL_NORM.to_string(), vec![c.hidden_size], &self.norm[..]));
        if !c.tie_word_embeddings {
            out.push((LM_HEAD.to_string(), vec![c.vocab_size, c.hidden_size], self.lm_head()));
        }
        out
    }
}

/// Config and lengths only.
impl fmt::Debug for Qwen3Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qwen3Weights")
            .field("config", &self.config)
            .field("embed", &self.embed.len())
            .field("layers", &self.layers.len())
            .field("norm", &self.norm.len())
            .field("lm_head", &self.lm_head.as_ref().map(Vec::len))
            .finish()
    }
}

/// Every tensor `config` implies, in [`Qwen3Weights::hf_tensors`]'s order, with its shape.
pub fn hf_shapes(c: &Qwen3Config) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(EMBED.to_string(), vec![c.vocab_size, c.hidden_size])];
    for i in 0..c.num_hidden_layers {
        out.extend(LayerTensor::ALL.iter().map(|&t| (t.hf_name(i), t.shape(c))));
    }
    out.push((FINAL_NORM.to_string(), vec![c.hidden_size]));
    if !c.tie_word_embeddings {
        out.push((LM_HEAD.to_string(), vec![c.vocab_size, c.hidden_size]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, start: f32) -> Vec<bf16> {
        (0..n).map(|i| bf16::from_f32(start + i as f32)).collect()
    }

    #[test]
    fn op_weights_stack_q_then_k_then_v_rows() {
        let mut c = Qwen3Config::qwen3_06b(1);
        (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) = (2, 2, 1, 2);
        // Tensor number p of LayerTensor::ALL holds 10p + 1, 10p + 2, ... (exact in bf16).
        let layer = LayerWeights::try_from_fn::<()>(|t| {
            let p = LayerTensor::ALL.iter().position(|&u| u == t).unwrap();
            Ok(ramp(t.shape(&c).iter().product(), 10.0 * p as f32 + 1.0))
        })
        .unwrap();
        let w = layer.op_weights();
        let q_rows = [11., 12., 13., 14., 15., 16., 17., 18.]; // q_proj [4, 2]
        let want: Vec<f32> = q_rows.into_iter().chain([21., 22., 23., 24.]).chain([31., 32., 33., 34.]).collect();
        assert_eq!(w.qkv.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), want);
        assert_eq!(w.qkv.len(), c.op_dims().n() * c.hidden_size);
        assert_eq!(w.norm, layer.input_norm);
        assert_eq!((w.q_norm[0].to_f32(), w.k_norm[0].to_f32()), (41.0, 51.0));
    }
}
