//! The op every variant computes: RMSNorm(x; w, eps) followed by the fused QKV projection.
//!
//! x [T, H] bf16, norm weight w [H] bf16, fused weight W [(Nq + 2 Nkv) D, H] bf16
//! -> q [T, Nq, D], k [T, Nkv, D], v [T, Nkv, D] bf16 (stage C), plus the intermediate rounding
//! points HF passes through (inv_rms, A, B) where a backend can observe them.

use half::bf16;
use serde::{Deserialize, Serialize};

/// A layer's dimensions: everything about the op's size except the token count, so that one set
/// of weights (and one prepared entry) serves every T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub h: usize,
    pub nq: usize,
    pub nkv: usize,
    pub d: usize,
}

impl Dims {
    /// Qwen3-0.6B's attention projection.
    pub const QWEN3_06B: Dims = Dims { h: 1024, nq: 16, nkv: 8, d: 128 };

    /// The fused projection's output width.
    pub fn n(&self) -> usize {
        (self.nq + 2 * self.nkv) * self.d
    }
    pub fn q_width(&self) -> usize {
        self.nq * self.d
    }
    pub fn kv_width(&self) -> usize {
        self.nkv * self.d
    }
    /// These dims at `t` tokens.
    pub const fn with_t(self, t: usize) -> Shape {
        Shape { t, dims: self }
    }
}

/// One run's dimensions: a layer's [`Dims`] at T tokens. Serialised flat (`t, h, nq, nkv, d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub t: usize,
    #[serde(flatten)]
    pub dims: Dims,
}

impl Shape {
    /// Qwen3-0.6B's attention projection at `t` tokens.
    pub const fn qwen3_06b(t: usize) -> Shape {
        Dims::QWEN3_06B.with_t(t)
    }
    pub fn with_t(&self, t: usize) -> Shape {
        Shape { t, ..*self }
    }
}

/// A shape reads as its dims (`shape.h`, `shape.n()`) plus `t`: every dimension but T belongs to
/// the layer, and code that sizes per-token work needs both.
impl std::ops::Deref for Shape {
    type Target = Dims;
    fn deref(&self) -> &Dims {
        &self.dims
    }
}

/// The op's weights: shared by every token count of one model layer.
#[derive(Clone, Debug)]
pub struct Weights {
    pub norm: Vec<bf16>,
    /// Row-major [N, H], as nn.Linear stores it.
    pub qkv: Vec<bf16>,
    /// Qwen3's per-head q_norm / k_norm weights [D], applied downstream of the op.
    pub q_norm: Vec<bf16>,
    pub k_norm: Vec<bf16>,
}

/// Everything one run of the op reads.
#[derive(Clone, Debug)]
pub struct OpInputs<'a> {
    pub shape: Shape,
    pub x: &'a [bf16],
    pub weights: &'a Weights,
    pub eps: f32,
}

/// The observable points of the computation, in HF's order. C is q, k and v.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// fp32 rsqrt(mean(x^2) + eps), one per row.
    InvRms,
    /// bf16(x * inv_rms): HF's first rounding, before the weight multiply.
    A,
    /// bf16(w * A): HF's second rounding; the GEMM's left operand.
    B,
    Q,
    K,
    V,
    /// q after Qwen3's per-head q_norm (computed downstream, with HF semantics, from the candidate's q).
    QNormed,
    /// k after Qwen3's per-head k_norm; the seed documents blamed this stage for the blow-up.
    KNormed,
}

impl Stage {
    pub const ALL: [Stage; 8] =
        [Stage::InvRms, Stage::A, Stage::B, Stage::Q, Stage::K, Stage::V, Stage::QNormed, Stage::KNormed];
    /// The op's outputs proper (stage C).
    pub const C: [Stage; 3] = [Stage::Q, Stage::K, Stage::V];

    /// Name of the stage's tensor in golden files.
    pub fn tensor_name(self) -> &'static str {
        match self {
            Stage::InvRms => "inv_rms",
            Stage::A => "a",
            Stage::B => "b",
            Stage::Q => "q",
            Stage::K => "k",
            Stage::V => "v",
            Stage::QNormed => "q_normed",
            Stage::KNormed => "k_normed",
        }
    }

    /// Element count of the stage for a shape.
    pub fn len(self, s: &Shape) -> usize {
        match self {
            Stage::InvRms => s.t,
            Stage::A | Stage::B => s.t * s.h,
            Stage::Q | Stage::QNormed => s.t * s.q_width(),
            Stage::K | Stage::V | Stage::KNormed => s.t * s.kv_width(),
        }
    }

    /// Length of the longest reduction that feeds the stage: the sum of squares over H (inv_rms,
    /// and through it A and B), the dot products over H (q, k, v), the head norms over D. Error
    /// bounds that come from an fp32 reduction scale with it.
    pub fn reduction_len(self, s: &Shape) -> usize {
        match self {
            Stage::InvRms | Stage::A | Stage::B | Stage::Q | Stage::K | Stage::V => s.h,
            Stage::QNormed | Stage::KNormed => s.d,
        }
    }

    /// Dimensions as stored in golden files.
    pub fn dims(self, s: &Shape) -> Vec<usize> {
        match self {
            Stage::InvRms => vec![s.t],
            Stage::A | Stage::B => vec![s.t, s.h],
            Stage::Q | Stage::QNormed => vec![s.t, s.nq, s.d],
            Stage::K | Stage::V | Stage::KNormed => vec![s.t, s.nkv, s.d],
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tensor_name())
    }
}

/// A stage's values: inv_rms is fp32, every other stage bf16.
#[derive(Clone, Debug, PartialEq)]
pub enum StageData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl StageData {
    pub fn len(&self) -> usize {
        match self {
            StageData::F32(v) => v.len(),
            StageData::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            StageData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            StageData::Bf16(v) => v.iter().map(|&x| x.to_f64()).collect(),
        }
    }
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            StageData::Bf16(v) => Some(v),
            StageData::F32(_) => None,
        }
    }
}

/// What one run observed, by stage. Fused GPU kernels expose only C; emulations expose their
/// own rounding points.
pub type Observed = std::collections::BTreeMap<Stage, StageData>;
