//! Massive activations (Sun et al. 2024): residual-stream values with |x| > 100 and > 1000x the
//! layer's median |x|, found with one forward pass over the prompt set (the `standard` entry on
//! the CPU backend, HF's rounding points). They are what the fused kernel's input RMSNorm reduces
//! over: a row dominated by one channel is where the variance's accumulation order matters most.

use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::registry;
use serde::{Deserialize, Serialize};

use crate::Qwen3Weights;
use crate::forward::tap::Untouched;
use crate::forward::{Forward, ForwardPass, Logits, ModelTables, PassError};

/// |x| above this, and
pub const MASSIVE_ABS: f64 = 100.0;
/// above this multiple of the layer's median |x|.
pub const MASSIVE_OVER_MEDIAN: f64 = 1000.0;
/// Massive activations listed per layer (largest first); the count is always whole.
pub const LISTED_PER_LAYER: usize = 8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Massive {
    pub prompt: usize,
    pub position: usize,
    pub token: u32,
    pub channel: usize,
    pub value: f64,
}

/// One layer's output over every prompt and position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerActivations {
    pub layer: usize,
    pub median_abs: f64,
    pub max_abs: f64,
    pub massive_count: usize,
    pub massive: Vec<Massive>,
}

/// Every layer's output on `prompts` (token ids), scanned.
pub fn scan(weights: &Qwen3Weights, prompts: &[Vec<u32>]) -> Result<Vec<LayerActivations>, PassError> {
    let tables = ModelTables::new(weights);
    let mut pass = Forward::new(&tables, weights, &Cpu, registry::baseline())?;
    let h = weights.config.hidden_size;
    let outs = prompts
        .iter()
        .map(|ids| pass.teacher_forced(ids, Logits::None, &mut Untouched).map(|p| p.layers))
        .collect::<Result<Vec<_>, _>>()?;
    let n = weights.config.num_hidden_layers;
    Ok((0..n)
        .map(|l| {
            let mut abs: Vec<f64> = outs.iter().flat_map(|p| p[l].iter().map(|x| x.to_f64().abs())).collect();
            let max_abs = abs.iter().copied().fold(0.0, f64::max);
            let mid = abs.len() / 2;
            let median_abs = if abs.is_empty() { 0.0 } else { *abs.select_nth_unstable_by(mid, f64::total_cmp).1 };
            let bound = MASSIVE_ABS.max(MASSIVE_OVER_MEDIAN * median_abs);
            let mut massive: Vec<Massive> = Vec::new();
            for (prompt, (p, ids)) in outs.iter().zip(prompts).enumerate() {
                for (i, x) in p[l].iter().enumerate() {
                    let value = x.to_f64();
                    if value.abs() > bound {
                        let position = i / h;
                        massive.push(Massive { prompt, position, token: ids[position], channel: i % h, value });
                    }
                }
            }
            massive.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
            let massive_count = massive.len();
            massive.truncate(LISTED_PER_LAYER);
            LayerActivations { layer: l, median_abs, max_abs, massive_count, massive }
        })
        .collect())
}
