//! The forward pass on a GPU: every layer's input RMSNorm + QKV is the entry's own CUDA launch
//! (the same `Prepared` launch the bench times), the rest of the layer is
//! `kernels/cuda/decoder.cu` and cuBLAS at HF's rounding points, and the KV cache stays on the
//! device. The residual stream lives in the entry's own input buffers: each layer's last add
//! writes the next layer's x in place, so a step is only launches (a graph can hold it).
//!
//! Checked like op conformance: the entry's q, k, v start as NaN at every step, every intermediate
//! buffer when it is allocated, the KV cache at every new sequence (an element a kernel leaves
//! unwritten reaches the layer outputs as NaN, which fails every bound); every launch's error is
//! returned, and every step ends with a synchronisation that surfaces any asynchronous one.

use std::collections::HashMap;
use std::sync::Arc;

use fusegate_kernels::cuda::{AttnStep, Cuda, DecoderOps, DevBuf, DeviceWeights, Launch, Prepared};
use fusegate_kernels::op::Dims;
use fusegate_kernels::{BackendError, Entry, Layer, Observed, Stage, StageData};
use half::bf16;

use super::rope::Rope;
use super::tap::Tap;
use super::{ForwardPass, Logits, Pass, PassError};
use crate::{Qwen3Config, Qwen3Weights};

/// bf16 quiet NaN, the poison of every buffer a kernel must write.
const POISON: bf16 = bf16::from_bits(0x7FC0);

/// One layer's weights on the device, beside the entry's (which each entry uploads itself).
struct DeviceLayer {
    q_norm: DevBuf<bf16>,
    k_norm: DevBuf<bf16>,
    o_proj: DevBuf<bf16>,
    post_norm: DevBuf<bf16>,
    gate: DevBuf<bf16>,
    up: DevBuf<bf16>,
    down: DevBuf<bf16>,
}

/// A model's weights on the device, uploaded once and shared by every entry's pass.
pub struct DeviceTables {
    config: Qwen3Config,
    embed: DevBuf<bf16>,
    /// `None` when tied to the embedding (Qwen3-0.6B's case).
    lm_head: Option<DevBuf<bf16>>,
    norm: DevBuf<bf16>,
    layers: Vec<DeviceLayer>,
    /// RoPE's bf16 cos and sin, [positions, D]: the host pass's own values.
    cos: DevBuf<bf16>,
    sin: DevBuf<bf16>,
    positions: usize,
}

impl DeviceTables {
    /// Uploads `w` with RoPE tables for `positions` positions (the longest sequence a pass runs).
    pub fn upload(cuda: &Cuda, w: &Qwen3Weights, positions: usize) -> Result<DeviceTables, BackendError> {
        let c = &w.config;
        let up = |v: &[bf16], what: &str| cuda.upload(v, what);
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    q_norm: up(&l.q_norm, "q_norm weight")?,
                    k_norm: up(&l.k_norm, "k_norm weight")?,
                    o_proj: up(&l.o_proj, "o_proj weight")?,
                    post_norm: up(&l.post_norm, "post-attention norm weight")?,
                    gate: up(&l.gate_proj, "gate_proj weight")?,
                    up: up(&l.up_proj, "up_proj weight")?,
                    down: up(&l.down_proj, "down_proj weight")?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let (cos, sin) = Rope::new(c.head_dim, c.rope_theta).tables(positions);
        Ok(DeviceTables {
            config: c.clone(),
            embed: up(&w.embed, "embedding")?,
            lm_head: w.lm_head.as_deref().map(|v| up(v, "lm_head weight")).transpose()?,
            norm: up(&w.norm, "final norm weight")?,
            layers,
            cos: up(&cos, "RoPE cos table")?,
            sin: up(&sin, "RoPE sin table")?,
            positions,
        })
    }
}

/// The buffers of a step of T tokens, allocated on first use of that T.
struct StepBuffers {
    ids: DevBuf<i32>,
    /// Per layer, the entry prepared at T: its x is the layer's input (the residual stream).
    ops: Vec<Prepared>,
    /// The last layer's output.
    out: DevBuf<bf16>,
    q_rot: DevBuf<bf16>,
    attn: DevBuf<bf16>,
    o: DevBuf<bf16>,
    h1: DevBuf<bf16>,
    n2: DevBuf<bf16>,
    gate: DevBuf<bf16>,
    up: DevBuf<bf16>,
    act: DevBuf<bf16>,
    mlp: DevBuf<bf16>,
    normed: DevBuf<bf16>,
    logits: DevBuf<bf16>,
}

/// The entry's pass on the device; it keeps its KV cache between steps.
pub struct DeviceForward<'a> {
    cuda: &'a Cuda,
    ops: DecoderOps<'a>,
    tables: &'a DeviceTables,
    entry: &'static Entry,
    launch: Launch,
    weights: Vec<Arc<DeviceWeights>>,
    steps: HashMap<usize, StepBuffers>,
    /// Per layer, keys and values [positions, Nkv, D].
    cache: Vec<[DevBuf<bf16>; 2]>,
    next_pos: usize,
}

impl<'a> DeviceForward<'a> {
    /// Uploads the entry's op weights of every layer; `launch` says how its kernels are launched
    /// (chained where the entry's decode kernels take part, at T where they serve).
    pub fn new(
        cuda: &'a Cuda,
        tables: &'a DeviceTables,
        weights: &Qwen3Weights,
        entry: &'static Entry,
        launch: Launch,
    ) -> Result<DeviceForward<'a>, BackendError> {
        let c = &tables.config;
        let eps = c.rms_norm_eps as f32;
        let op_weights = weights
            .layers
            .iter()
            .map(|l| cuda.upload_weights(Layer { dims: c.op_dims(), weights: &l.op_weights(), eps }))
            .collect::<Result<Vec<_>, _>>()?;
        let kv = tables.positions * c.num_key_value_heads * c.head_dim;
        let cache = (0..c.num_hidden_layers)
            .map(|_| Ok([cuda.alloc(kv, "key cache")?, cuda.alloc(kv, "value cache")?]))
            .collect::<Result<Vec<_>, BackendError>>()?;
        let ops = cuda.decoder_ops()?;
        let mut pass = DeviceForward {
            cuda,
            ops,
            tables,
            entry,
            launch,
            weights: op_weights,
            steps: HashMap::new(),
            cache,
            next_pos: 0,
        };
        pass.poison_cache()?;
        Ok(pass)
    }

    fn dims(&self) -> Dims {
        self.tables.config.op_dims()
    }

    fn poison_cache(&mut self) -> Result<(), BackendError> {
        for kv in &mut self.cache {
            for buf in kv.iter_mut() {
                self.cuda.fill(buf, POISON)?;
            }
        }
        Ok(())
    }

    /// The step buffers at `t` tokens, allocated on first use.
    fn buffers(&mut self, t: usize) -> Result<&mut StepBuffers, BackendError> {
        if !self.steps.contains_key(&t) {
            let step = self.allocate(t)?;
            self.steps.insert(t, step);
        }
        Ok(self.steps.get_mut(&t).expect("inserted above"))
    }

    fn allocate(&self, t: usize) -> Result<StepBuffers, BackendError> {
        let c = &self.tables.config;
        let (h, i, qw) = (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim);
        let launch = if self.launch == Launch::Chained && self.cuda.chains(self.entry, &self.dims().with_t(t)) {
            Launch::Chained
        } else {
            Launch::Serial
        };
        let ops = self
            .weights
            .iter()
            .map(|w| self.cuda.prepare(self.entry, w, t, false, launch))
            .collect::<Result<Vec<_>, _>>()?;
        let buf = |n: usize, what: &str| -> Result<DevBuf<bf16>, BackendError> {
            let mut b = self.cuda.alloc(n, what)?;
            self.cuda.fill(&mut b, POISON)?;
            Ok(b)
        };
        Ok(StepBuffers {
            ids: self.cuda.alloc(t, "token ids")?,
            ops,
            out: buf(t * h, "last layer output")?,
            q_rot: buf(t * qw, "rotated q")?,
            attn: buf(t * qw, "attention output")?,
            o: buf(t * h, "o_proj output")?,
            h1: buf(t * h, "attention residual")?,
            n2: buf(t * h, "post-attention norm")?,
            gate: buf(t * i, "gate_proj output")?,
            up: buf(t * i, "up_proj output")?,
            act: buf(t * i, "SiLU output")?,
            mlp: buf(t * h, "MLP output")?,
            normed: buf(t * h, "final norm")?,
            logits: buf(t * c.vocab_size, "logits")?,
        })
    }

    /// Writes the step's token ids (checked against the vocabulary) and allocates its buffers.
    fn load_tokens(&mut self, tokens: &[u32]) -> Result<(), PassError> {
        let c = &self.tables.config;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(PassError::Token { token, vocab: c.vocab_size });
        }
        if self.next_pos + tokens.len() > self.tables.positions {
            let reason = format!(
                "{} positions asked of a device pass sized for {}",
                self.next_pos + tokens.len(),
                self.tables.positions
            );
            return Err(self.err(BackendError::BadInput(reason)));
        }
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let (cuda, entry) = (self.cuda, self.entry.name);
        let written = self.buffers(tokens.len()).and_then(|step| cuda.write(&mut step.ids, &ids, "token ids"));
        written.map_err(|source| PassError::Backend { entry, source })
    }

    fn err(&self, source: BackendError) -> PassError {
        PassError::Backend { entry: self.entry.name, source }
    }

    /// Enqueues the step of T = `t` tokens at the current position: the embedding, every layer,
    /// and (for `rows` > 0) the final norm and lm_head of the last `rows` positions. With `tap`,
    /// each layer it touches has its q, k, v copied to the host, changed and copied back.
    pub fn enqueue(&mut self, t: usize, rows: usize, mut tap: Option<&mut dyn Tap>) -> Result<(), BackendError> {
        let (cuda, ops, tables) = (self.cuda, &self.ops, self.tables);
        let c = &tables.config;
        let (h, i, qw, eps) =
            (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim, c.rms_norm_eps as f32);
        if rows > t {
            return Err(BackendError::BadInput(format!("logits of {rows} positions asked of a step of {t}")));
        }
        let s = AttnStep { dims: c.op_dims(), t, first_pos: self.next_pos };
        let step = self.steps.get_mut(&t).ok_or_else(|| BackendError::Device(format!("no buffers at T = {t}")))?;
        ops.embed(&step.ids, &tables.embed, step.ops[0].x().all(), h)?;
        for (l, (tl, cache)) in tables.layers.iter().zip(&self.cache).enumerate() {
            cuda.launch(&step.ops[l])?;
            if let Some(tap) = tap.as_deref_mut().filter(|tap| tap.touches(l)) {
                perturb(cuda, &mut step.ops[l], l, tap)?;
            }
            let cache = [&cache[0], &cache[1]];
            let op = &step.ops[l];
            ops.qk_norm_rope(
                op.qkv(),
                [&tl.q_norm, &tl.k_norm],
                [&tables.cos, &tables.sin],
                &step.q_rot,
                cache,
                s,
                eps,
            )?;
            ops.attention(&step.q_rot, cache, step.attn.all(), s)?;
            ops.linear(&tl.o_proj, step.attn.all(), step.o.all(), t, h, qw)?;
            ops.add(op.x().all(), step.o.all(), step.h1.all(), t * h)?;
            ops.rmsnorm(step.h1.all(), &tl.post_norm, step.n2.all(), t, h, eps)?;
            ops.linear(&tl.gate, step.n2.all(), step.gate.all(), t, i, h)?;
            ops.linear(&tl.up, step.n2.all(), step.up.all(), t, i, h)?;
            ops.silu_mul(step.gate.all(), step.up.all(), step.act.all(), t * i)?;
            ops.linear(&tl.down, step.act.all(), step.mlp.all(), t, h, i)?;
            let next = step.ops.get(l + 1).map_or(&step.out, Prepared::x);
            ops.add(step.h1.all(), step.mlp.all(), next.all(), t * h)?;
        }
        if rows > 0 {
            let last = step.out.at((t - rows) * h);
            ops.rmsnorm(last, &tables.norm, step.normed.all(), rows, h, eps)?;
            let lm_head = tables.lm_head.as_ref().unwrap_or(&tables.embed);
            ops.linear(lm_head, step.normed.all(), step.logits.all(), rows, c.vocab_size, h)?;
        }
        Ok(())
    }

    /// Poisons what the step must write: the entry's q, k, v in every layer.
    fn poison_step(&mut self, t: usize) -> Result<(), BackendError> {
        let cuda = self.cuda;
        let step = self.steps.get_mut(&t).ok_or_else(|| BackendError::Device(format!("no buffers at T = {t}")))?;
        for op in &mut step.ops {
            cuda.poison(op)?;
        }
        Ok(())
    }

    /// Every layer's output and the logits of the step just enqueued.
    fn collect(&self, t: usize, rows: usize) -> Result<Pass, BackendError> {
        self.cuda.synchronize()?;
        let step = &self.steps[&t];
        let h = self.tables.config.hidden_size;
        let mut layers = Vec::with_capacity(step.ops.len());
        for l in 0..step.ops.len() {
            let out = step.ops.get(l + 1).map_or(&step.out, Prepared::x);
            layers.push(self.cuda.download_view(out.all(), t * h, "a layer output")?);
        }
        let logits = self.cuda.download_view(step.logits.all(), rows * self.tables.config.vocab_size, "logits")?;
        self.cuda.synchronize()?;
        Ok(Pass { layers, logits })
    }

    /// The first logits row of the step at T = `t` last enqueued (waits for it).
    pub fn last_logits(&self, t: usize) -> Result<Vec<bf16>, BackendError> {
        self.cuda.synchronize()?;
        let step = self.steps.get(&t).ok_or_else(|| BackendError::Device(format!("no buffers at T = {t}")))?;
        self.cuda.download_view(step.logits.all(), self.tables.config.vocab_size, "logits")
    }

    /// Readies a step of `tokens` without running it: ids written, buffers allocated (what a
    /// graph capture of [`DeviceForward::enqueue`] needs first).
    pub fn ready(&mut self, tokens: &[u32]) -> Result<(), PassError> {
        self.load_tokens(tokens)
    }
}

/// Copies layer `l`'s q, k, v to the host, lets `tap` change them, and writes them back.
fn perturb(cuda: &Cuda, op: &mut Prepared, l: usize, tap: &mut dyn Tap) -> Result<(), BackendError> {
    let mut observed = Observed::new();
    for (stage, data) in Stage::C.into_iter().zip(cuda.download_qkv(op)?) {
        observed.insert(stage, StageData::Bf16(data));
    }
    tap.qkv(l, &mut observed);
    let part = |stage: Stage| match observed.get(&stage) {
        Some(StageData::Bf16(v)) => Ok(v.as_slice()),
        _ => Err(BackendError::Device(format!("a control dropped {stage:?} of layer {l}"))),
    };
    cuda.write_qkv(op, [part(Stage::Q)?, part(Stage::K)?, part(Stage::V)?])
}

impl ForwardPass for DeviceForward<'_> {
    fn reset(&mut self) {
        self.next_pos = 0;
    }

    fn step(&mut self, tokens: &[u32], logits: Logits, tap: &mut dyn Tap) -> Result<Pass, PassError> {
        if tokens.is_empty() {
            return Err(self.err(BackendError::BadInput("a step of no tokens".into())));
        }
        if self.next_pos == 0 {
            self.poison_cache().map_err(|e| self.err(e))?;
        }
        self.load_tokens(tokens)?;
        let t = tokens.len();
        let rows = match logits {
            Logits::Every => t,
            Logits::Last => 1,
            Logits::None => 0,
        };
        let mut run = |pass: &mut Self| -> Result<Pass, BackendError> {
            pass.poison_step(t)?;
            pass.enqueue(t, rows, Some(tap))?;
            pass.collect(t, rows)
        };
        let out = run(self).map_err(|e| self.err(e))?;
        self.next_pos += t;
        Ok(out)
    }
}
