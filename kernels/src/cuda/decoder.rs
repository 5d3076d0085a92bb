//! The rest of HF's Qwen3 decoder layer on the device (`kernels/cuda/decoder.cu`, cuBLAS for the
//! GEMMs, rmsnorm.cu for the layer norms): the ops the model gate's device forward pass runs
//! around an entry's fused op, each at HF's rounding points. Every op only enqueues (no
//! allocation, copy or synchronisation), so a whole forward step can be captured in a graph and
//! timed; every operand is checked to hold what the op touches before anything is launched.

use cudarc::driver::CudaFunction;
use half::bf16;

use super::args::{Geometry, KernelArgs, launch};
use super::memory::{DevBuf, View};
use super::outputs::Rows;
use super::plan::norm_threads;
use super::source::Source;
use super::{Cuda, device_err};
use crate::backend::BackendError;
use crate::op::Dims;

/// Threads of the attention kernel (its launch bound): 32 warps share the keys of a row when
/// there are few rows (decode: one block per query head), 4 warps when there are enough rows to
/// fill the GPU (prefill), where 1024-thread blocks took twice as long (NOTES.md).
const ATTENTION_THREADS: u32 = 1024;
const ATTENTION_THREADS_MANY_ROWS: u32 = 128;
/// Rows (query heads x tokens) from which the small blocks are used.
const MANY_ROWS: usize = 1024;
/// Dynamic shared memory the attention kernel may use: the query row, each warp's partial
/// p * v row and one score per visible position, in fp32 (96 KiB: about 20 000 positions at
/// D = 128).
const ATTENTION_SMEM: u32 = 96 << 10;

/// The decoder kernels, loaded once.
pub struct DecoderOps<'a> {
    cuda: &'a Cuda,
    embed: CudaFunction,
    qk_norm_rope: CudaFunction,
    attention: CudaFunction,
    silu_mul: CudaFunction,
    add: CudaFunction,
    rmsnorm: CudaFunction,
}

/// One layer's attention geometry on the device: its dims and where this step's rows sit.
#[derive(Clone, Copy, Debug)]
pub struct AttnStep {
    pub dims: Dims,
    /// Tokens in this step.
    pub t: usize,
    /// The position of the step's first token (cache rows 0..first_pos are already written).
    pub first_pos: usize,
}

impl AttnStep {
    fn last_pos(&self) -> usize {
        self.first_pos + self.t
    }
}

impl Cuda {
    /// The decoder kernels (compiled on first use, like every module).
    pub fn decoder_ops(&self) -> Result<DecoderOps<'_>, BackendError> {
        let f = |name: &str, smem: u32| self.function(Source::Decoder, None, name, smem);
        Ok(DecoderOps {
            cuda: self,
            embed: f("fusegate_embed", 0)?,
            qk_norm_rope: f("fusegate_qk_norm_rope", 0)?,
            attention: f("fusegate_attention", ATTENTION_SMEM)?,
            silu_mul: f("fusegate_silu_mul", 0)?,
            add: f("fusegate_add", 0)?,
            rmsnorm: self.function(Source::Rmsnorm, None, "fusegate_hf_rmsnorm", 0)?,
        })
    }
}

fn elementwise(n: usize) -> Geometry {
    Geometry { grid: (n.div_ceil(256) as u32, 1, 1), block: 256, smem: 0 }
}

impl DecoderOps<'_> {
    fn run(&self, func: &CudaFunction, name: &str, g: Geometry, args: KernelArgs) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        // SAFETY: every caller below builds `args` in the order and types of `name`'s parameters in
        // decoder.cu (or rmsnorm.cu), from views checked to hold what the kernel touches, and
        // follows its launch rule.
        unsafe { launch(func.cu_function(), g, st.cu_stream(), args, false) }
            .map_err(|e| device_err(format!("launching {name}"), e))
    }

    /// out [T, H] = the embedding rows of `ids` (T token ids, checked against the table's rows by
    /// the caller, which knows the vocabulary).
    pub fn embed(
        &self,
        ids: &DevBuf<i32>,
        table: &DevBuf<bf16>,
        out: View<bf16>,
        h: usize,
    ) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let t = ids.len();
        let args = KernelArgs::new()
            .ptr(ids.all().checked_ptr(st, t, "token ids")?)
            .ptr(table.all().checked_ptr(st, h, "embedding table")?)
            .ptr(out.checked_ptr(st, t * h, "embedding output")?)
            .dims(&[t, h]);
        self.run(&self.embed, "fusegate_embed", Geometry { grid: (t as u32, 1, 1), block: 256, smem: 0 }, args)
    }

    /// out [T, H] = HF RMSNorm of x's rows (A = bf16(x * r), bf16(w * A)).
    pub fn rmsnorm(
        &self,
        x: View<bf16>,
        w: &DevBuf<bf16>,
        out: View<bf16>,
        t: usize,
        h: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let args = KernelArgs::new()
            .ptr(x.checked_ptr(st, t * h, "norm input")?)
            .ptr(w.all().checked_ptr(st, h, "norm weight")?)
            .ptr(out.checked_ptr(st, t * h, "norm output")?)
            .ptr(0)
            .dims(&[t, h])
            .f32(eps);
        let g = Geometry { grid: (t as u32, 1, 1), block: norm_threads(h), smem: 0 };
        self.run(&self.rmsnorm, "fusegate_hf_rmsnorm", g, args)
    }

    /// out [T, N] = x [T, K] @ w [N, K]^T (F.linear on bf16: cuBLAS, fp32 compute).
    pub fn linear(
        &self,
        w: &DevBuf<bf16>,
        x: View<bf16>,
        out: View<bf16>,
        t: usize,
        n: usize,
        k: usize,
    ) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let w = w.all().checked_ptr(st, n * k, "linear weight")?;
        let x = x.checked_ptr(st, t * k, "linear input")?;
        let out = out.checked_ptr(st, t * n, "linear output")?;
        self.cuda.linear_raw(w, x, out, n, t, k)
    }

    /// q_norm and k_norm, then RoPE (cos and sin: bf16 tables [positions, D]); q into `q_out`
    /// [T, Nq, D], k and v into the caches [positions, Nkv, D] at the step's positions. q, k and v
    /// are read as rows of any stride (the standard path's are column ranges of one [T, N]).
    #[allow(clippy::too_many_arguments)]
    pub fn qk_norm_rope(
        &self,
        qkv: [Rows<'_>; 3],
        norms: [&DevBuf<bf16>; 2],
        rope: [&DevBuf<bf16>; 2],
        q_out: &DevBuf<bf16>,
        cache: [&DevBuf<bf16>; 2],
        s: AttnStep,
        eps: f32,
    ) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let d = s.dims;
        if !d.d.is_multiple_of(32) || d.d > 1024 {
            return Err(BackendError::BadInput(format!("head_dim {} must be a multiple of 32, at most 1024", d.d)));
        }
        let (qw, kw, pos) = (d.nq * d.d, d.nkv * d.d, s.last_pos());
        let args = KernelArgs::new()
            .ptr(qkv[0].checked_ptr(st, s.t, "q")?)
            .ptr(qkv[1].checked_ptr(st, s.t, "k")?)
            .ptr(qkv[2].checked_ptr(st, s.t, "v")?)
            .ptr(norms[0].all().checked_ptr(st, d.d, "q_norm weight")?)
            .ptr(norms[1].all().checked_ptr(st, d.d, "k_norm weight")?)
            .ptr(rope[0].all().checked_ptr(st, pos * d.d, "RoPE cos table")?)
            .ptr(rope[1].all().checked_ptr(st, pos * d.d, "RoPE sin table")?)
            .ptr(q_out.all().checked_ptr(st, s.t * qw, "rotated q")?)
            .ptr(cache[0].all().checked_ptr(st, pos * kw, "key cache")?)
            .ptr(cache[1].all().checked_ptr(st, pos * kw, "value cache")?)
            .dims(&[s.t, d.nq, d.nkv, d.d, s.first_pos])
            .dims(&qkv.map(|r| r.stride))
            .f32(eps);
        let g = Geometry { grid: (s.t as u32, (d.nq + 2 * d.nkv) as u32, 1), block: d.d as u32, smem: 0 };
        self.run(&self.qk_norm_rope, "fusegate_qk_norm_rope", g, args)
    }

    /// out [T, Nq * D] = HF's eager attention of the rotated q over the caches (causal).
    pub fn attention(
        &self,
        q: &DevBuf<bf16>,
        cache: [&DevBuf<bf16>; 2],
        out: View<bf16>,
        s: AttnStep,
    ) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let d = s.dims;
        let (qw, kw, pos) = (d.nq * d.d, d.nkv * d.d, s.last_pos());
        let threads = if d.nq * s.t >= MANY_ROWS { ATTENTION_THREADS_MANY_ROWS } else { ATTENTION_THREADS };
        let floats = (1 + threads as usize / 32) * d.d + pos;
        let fits = floats * 4 <= ATTENTION_SMEM as usize && d.d.is_multiple_of(32) && d.d <= 256;
        if !fits || d.nkv == 0 || !d.nq.is_multiple_of(d.nkv) {
            return Err(BackendError::BadInput(format!(
                "attention over {pos} positions (D = {}, {} / {} heads) does not fit the kernel",
                d.d, d.nq, d.nkv
            )));
        }
        let smem = (floats * 4) as u32;
        // HF's scaling: head_dim ** -0.5 as a Python float, applied in fp32.
        let scaling = (d.d as f64).powf(-0.5) as f32;
        let args = KernelArgs::new()
            .ptr(q.all().checked_ptr(st, s.t * qw, "rotated q")?)
            .ptr(cache[0].all().checked_ptr(st, pos * kw, "key cache")?)
            .ptr(cache[1].all().checked_ptr(st, pos * kw, "value cache")?)
            .ptr(out.checked_ptr(st, s.t * qw, "attention output")?)
            .dims(&[s.t, d.nq, d.nkv, d.d, s.first_pos])
            .f32(scaling);
        let g = Geometry { grid: (d.nq as u32, s.t as u32, 1), block: threads, smem };
        self.run(&self.attention, "fusegate_attention", g, args)
    }

    /// out = bf16(bf16(silu(gate)) * up), element-wise over n elements.
    pub fn silu_mul(&self, gate: View<bf16>, up: View<bf16>, out: View<bf16>, n: usize) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let args = KernelArgs::new()
            .ptr(gate.checked_ptr(st, n, "gate")?)
            .ptr(up.checked_ptr(st, n, "up")?)
            .ptr(out.checked_ptr(st, n, "SiLU output")?)
            .i64(n as i64);
        self.run(&self.silu_mul, "fusegate_silu_mul", elementwise(n), args)
    }

    /// out = bf16(a + b), element-wise over n elements (the residual adds).
    pub fn add(&self, a: View<bf16>, b: View<bf16>, out: View<bf16>, n: usize) -> Result<(), BackendError> {
        let st = self.cuda.stream();
        let args = KernelArgs::new()
            .ptr(a.checked_ptr(st, n, "residual")?)
            .ptr(b.checked_ptr(st, n, "branch")?)
            .ptr(out.checked_ptr(st, n, "sum")?)
            .i64(n as i64);
        self.run(&self.add, "fusegate_add", elementwise(n), args)
    }
}
