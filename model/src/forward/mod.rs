//! A Qwen3 forward pass at HF transformers' rounding points (eager attention, bf16 everywhere HF
//! is bf16), with one registry entry doing every layer's input RMSNorm + QKV projection on the
//! chosen backend. Prefill, decode with a KV cache, teacher-forced scoring and greedy generation.
//!
//! Two implementations of [`ForwardPass`]: [`Forward`] runs the reference ops on the host around
//! any backend's prepared entry; [`device::DeviceForward`] runs the whole pass on a GPU (the
//! entry's own kernels and `kernels/cuda/decoder.cu` at the same rounding points), where a
//! 28-layer model takes seconds and a decode step can be timed as one graph.

pub mod attention;
pub mod device;
pub mod layer;
pub mod ops;
pub mod rope;
pub mod tap;

use crate::{Qwen3Config, Qwen3Weights};
use fusegate_kernels::{Backend, BackendError, Entry};
use half::bf16;
use layer::{DecoderLayer, LayerTables};
use ops::{Linear, rmsnorm};
use rope::Rope;
use tap::Tap;

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{entry}: {source}")]
    Backend { entry: &'static str, source: BackendError },
    #[error("token id {token} is outside the vocabulary ({vocab})")]
    Token { token: u32, vocab: usize },
}

/// The model's weights prepared for the reference ops once, shared by every entry's pass.
pub struct ModelTables {
    pub config: Qwen3Config,
    pub(crate) embed: Vec<bf16>,
    pub(crate) layers: Vec<LayerTables>,
    pub(crate) norm: Vec<bf16>,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
}

impl ModelTables {
    pub fn new(w: &Qwen3Weights) -> ModelTables {
        let c = &w.config;
        ModelTables {
            config: c.clone(),
            embed: w.embed.clone(),
            layers: w.layers.iter().map(|l| LayerTables::new(l, c)).collect(),
            norm: w.norm.clone(),
            lm_head: Linear::new(w.lm_head(), c.vocab_size, c.hidden_size),
            rope: Rope::new(c.head_dim, c.rope_theta),
        }
    }
}

/// What one call computed: every decoder layer's output ([T, H] each, before the final norm) and
/// the logits of the positions asked for ([rows, V], bf16 as HF's lm_head gives them).
#[derive(Debug)]
pub struct Pass {
    pub layers: Vec<Vec<bf16>>,
    pub logits: Vec<bf16>,
}

/// Which positions get logits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Every,
    Last,
    /// None at all (the final norm and lm_head are skipped).
    None,
}

/// A forward pass with one entry in every layer that keeps its KV cache between calls.
pub trait ForwardPass {
    /// Starts a new sequence.
    fn reset(&mut self);

    /// Runs `tokens` at the next positions (the whole prompt for a prefill, one token for a decode
    /// step), appending them to the cache.
    fn step(&mut self, tokens: &[u32], logits: Logits, tap: &mut dyn Tap) -> Result<Pass, PassError>;

    /// Every position of `tokens` in one prefill (teacher-forced: no position depends on an
    /// earlier prediction, so a difference cannot compound), with `logits` for its positions.
    fn teacher_forced(&mut self, tokens: &[u32], logits: Logits, tap: &mut dyn Tap) -> Result<Pass, PassError> {
        self.reset();
        self.step(tokens, logits, tap)
    }

    /// Greedy continuation of `prompt`, each token the argmax (first on ties, as torch) of the
    /// previous step's logits, decoded one at a time through the KV cache: as many tokens as
    /// `until` holds, stopping after the first that differs from it (all that the first divergent
    /// token needs).
    fn greedy(&mut self, prompt: &[u32], until: &[u32], tap: &mut dyn Tap) -> Result<Vec<u32>, PassError> {
        self.reset();
        let mut logits = self.step(prompt, Logits::Last, tap)?.logits;
        let mut out = Vec::with_capacity(until.len());
        for (i, &theirs) in until.iter().enumerate() {
            let next = argmax(&logits);
            out.push(next);
            if next != theirs || i + 1 == until.len() {
                break;
            }
            logits = self.step(&[next], Logits::Last, tap)?.logits;
        }
        Ok(out)
    }
}

/// A pass of the model on the host with one entry in every layer.
pub struct Forward<'a> {
    entry: &'static Entry,
    tables: &'a ModelTables,
    layers: Vec<DecoderLayer<'a>>,
    next_pos: usize,
}

impl<'a> Forward<'a> {
    pub fn new(
        tables: &'a ModelTables,
        weights: &Qwen3Weights,
        backend: &'a dyn Backend,
        entry: &'static Entry,
    ) -> Result<Forward<'a>, PassError> {
        let c = &tables.config;
        let layers = weights
            .layers
            .iter()
            .zip(&tables.layers)
            .enumerate()
            .map(|(i, (w, t))| DecoderLayer::new(i, backend, entry, w, t, c))
            .collect::<Result<_, _>>()
            .map_err(|source| PassError::Backend { entry: entry.name, source })?;
        Ok(Forward { entry, tables, layers, next_pos: 0 })
    }
}

impl ForwardPass for Forward<'_> {
    fn reset(&mut self) {
        self.layers.iter_mut().for_each(DecoderLayer::reset);
        self.next_pos = 0;
    }

    fn step(&mut self, tokens: &[u32], logits: Logits, tap: &mut dyn Tap) -> Result<Pass, PassError> {
        let c = &self.tables.config;
        let h = c.hidden_size;
        let mut x = Vec::with_capacity(tokens.len() * h);
        for &tok in tokens {
            let row = self.tables.embed.get(tok as usize * h..(tok as usize + 1) * h);
            let row = row.ok_or(PassError::Token { token: tok, vocab: c.vocab_size })?;
            x.extend_from_slice(row);
        }
        let mut outputs = Vec::with_capacity(self.layers.len());
        for layer in &mut self.layers {
            x = layer
                .forward(&x, self.next_pos, &self.tables.rope, tap)
                .map_err(|source| PassError::Backend { entry: self.entry.name, source })?;
            outputs.push(x.clone());
        }
        self.next_pos += tokens.len();
        let rows = match logits {
            Logits::Every => &x[..],
            Logits::Last => &x[x.len() - h..],
            Logits::None => return Ok(Pass { layers: outputs, logits: Vec::new() }),
        };
        let normed = rmsnorm(rows, &self.tables.norm, c.rms_norm_eps as f32);
        Ok(Pass { layers: outputs, logits: self.tables.lm_head.forward(&normed) })
    }
}

/// Index of the largest logit, the first of equals (torch.argmax's choice).
pub fn argmax(logits: &[bf16]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if v.to_f32() > logits[best].to_f32() {
            best = i;
        }
    }
    best as u32
}
