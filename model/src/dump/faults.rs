//! Integration faults an engine can have around a correct fused kernel (the user's blow-up was one
//! of these, not the kernel's rounding): each is planted into fusegate's own pass to make a dump
//! that `model-check --dumps` must locate at the right layer and stage.

use std::collections::HashMap;

use fusegate_kernels::{Observed, Stage, StageData};
use half::bf16;

use crate::Qwen3Weights;
use crate::forward::ops::rmsnorm;
use crate::forward::tap::{LayerStage, Tap};

/// One planted fault.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineFault {
    /// Layer `layer`'s k is left unrotated (RoPE applied to q only): the cache holds unrotated keys.
    UnrotatedK { layer: usize },
    /// Layer `layer` normalises k with layer `from`'s k_norm weight (an off-by-one in weight loading).
    ForeignKNorm { layer: usize, from: usize },
    /// Layer `layer`'s q projection gets a bias the config says does not exist (attention_bias
    /// false), as read from a checkpoint that stores one: one value per q output feature.
    PhantomQBias { layer: usize, bias: Vec<f32> },
    /// During decode (one token per step), every layer writes the step's key and value one cache
    /// slot late: slot p holds position p - 1's (slot 0 never written: zeros). Prefill is right.
    KvCacheOneLate,
}

impl EngineFault {
    /// Where the fault must be located: (layer, stage).
    pub fn site(&self) -> (usize, LayerStage) {
        match self {
            EngineFault::UnrotatedK { layer } => (*layer, LayerStage::KRope),
            EngineFault::ForeignKNorm { layer, .. } => (*layer, LayerStage::K),
            EngineFault::PhantomQBias { layer, .. } => (*layer, LayerStage::Q),
            EngineFault::KvCacheOneLate => (0, LayerStage::Attention),
        }
    }
}

/// A fault applied as a [`Tap`] (state for one prompt).
pub(crate) struct FaultTap<'a> {
    fault: &'a EngineFault,
    eps: f32,
    /// ForeignKNorm: the weight it uses, and the raw k of the current step.
    foreign_k_norm: Vec<bf16>,
    raw_k: Vec<bf16>,
    /// UnrotatedK: k before RoPE of the current step.
    k_before_rope: Vec<bf16>,
    /// KvCacheOneLate: per layer, the last step's key and value; one position's width.
    last_kv: HashMap<usize, (Vec<bf16>, Vec<bf16>)>,
    kv_width: usize,
}

impl<'a> FaultTap<'a> {
    pub fn new(fault: &'a EngineFault, weights: &Qwen3Weights) -> FaultTap<'a> {
        let foreign_k_norm = match fault {
            EngineFault::ForeignKNorm { from, .. } => weights.layers[*from].k_norm.clone(),
            _ => Vec::new(),
        };
        let c = &weights.config;
        FaultTap {
            fault,
            eps: c.rms_norm_eps as f32,
            foreign_k_norm,
            raw_k: Vec::new(),
            k_before_rope: Vec::new(),
            last_kv: HashMap::new(),
            kv_width: c.num_key_value_heads * c.head_dim,
        }
    }
}

impl Tap for FaultTap<'_> {
    fn qkv(&mut self, layer: usize, observed: &mut Observed) {
        match self.fault {
            EngineFault::ForeignKNorm { layer: at, .. } if *at == layer => {
                if let Some(StageData::Bf16(k)) = observed.get(&Stage::K) {
                    self.raw_k = k.clone();
                }
            }
            EngineFault::PhantomQBias { layer: at, bias } if *at == layer => {
                if let Some(StageData::Bf16(q)) = observed.get_mut(&Stage::Q) {
                    for row in q.chunks_exact_mut(bias.len()) {
                        row.iter_mut().zip(bias).for_each(|(x, b)| *x = bf16::from_f32(x.to_f32() + b));
                    }
                }
            }
            _ => {}
        }
    }

    fn stage(&mut self, layer: usize, stage: LayerStage, _first_pos: usize, values: &mut Vec<bf16>) {
        match (self.fault, stage) {
            (EngineFault::ForeignKNorm { layer: at, .. }, LayerStage::K) if *at == layer => {
                *values = rmsnorm(&self.raw_k, &self.foreign_k_norm, self.eps);
            }
            (EngineFault::UnrotatedK { layer: at }, LayerStage::K) if *at == layer => {
                self.k_before_rope = values.clone();
            }
            (EngineFault::UnrotatedK { layer: at }, LayerStage::KRope) if *at == layer => {
                *values = self.k_before_rope.clone();
            }
            _ => {}
        }
    }

    fn cache_write(&mut self, layer: usize, _first_pos: usize, k: &mut Vec<bf16>, v: &mut Vec<bf16>) {
        // Only decode steps (one position) are written late; a prefill writes its rows right.
        if *self.fault != EngineFault::KvCacheOneLate || k.len() != self.kv_width {
            return;
        }
        let zeros = (vec![bf16::ZERO; k.len()], vec![bf16::ZERO; v.len()]);
        (*k, *v) = self.last_kv.insert(layer, (k.clone(), v.clone())).unwrap_or(zeros);
    }
}
