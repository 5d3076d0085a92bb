//! The one registry: every variant and every mutant is one entry here.
//!
//! An entry names its arithmetic (`Numerics`, which the CPU backend emulates), an optional fault
//! (how a mutant breaks), the CUDA implementation that runs it on a GPU, and the contract it is
//! judged by. Mutants are judged by the contract of the variant they impersonate and must FAIL it.

use crate::contract::{Contract, ModelContract, RoundedFrom, StageBound, Truth};
use crate::op::Stage;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An entry's typed identity: what code, results files and reports refer to an entry by. Its name
/// (the text in results and on the command line) is the entry's `name`, written only in
/// [`REGISTRY`]; [`EntryId::name`] and parsing go through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryId {
    Standard,
    F32,
    Mixed,
    Exact,
    MutantRoundOnce,
    MutantSkipWeight,
    MutantUlpBias,
    MutantUnwritten,
    MutantEarlyX,
    MutantBf16Accumulate,
    MutantBatchVariant,
    MutantRunVariant,
    MutantF32RoundOnce,
    MutantF32Bias,
    MutantF32HfNumerics,
}

impl EntryId {
    pub fn entry(self) -> &'static Entry {
        get(self)
    }
    pub fn name(self) -> &'static str {
        get(self).name
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for EntryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        find(s).map(|e| e.id).ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
            format!("no such variant or mutant {s:?} (known: {})", known.join(", "))
        })
    }
}

impl Serialize for EntryId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for EntryId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the norm rounds before the GEMM (see NUMERICS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormRounding {
    /// HF Qwen3RMSNorm: A = bf16(x * r), B = bf16(w * A): two roundings.
    HfTwoRoundings,
    /// FlashInfer / TensorRT-LLM / torch.nn.RMSNorm: B = bf16(x * r * w) in fp32, one rounding.
    OnceAfterWeight,
    /// No rounding: the GEMM's left operand is x * r * w in fp32.
    Fp32,
    /// A wrong kernel that forgets the weight: B = A.
    SkipWeight,
}

/// How the GEMM accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulate {
    F32,
    /// Every partial sum rounded to bf16: what a careless bf16 kernel does.
    Bf16,
}

/// The arithmetic of one entry, independent of how a backend schedules it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Numerics {
    pub norm: NormRounding,
    pub accumulate: Accumulate,
}

impl Numerics {
    pub const HF: Numerics = Numerics { norm: NormRounding::HfTwoRoundings, accumulate: Accumulate::F32 };
    pub const F32: Numerics = Numerics { norm: NormRounding::Fp32, accumulate: Accumulate::F32 };
}

/// A deliberate defect, injected by the backend around the honest arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// +1 ulp (toward +inf) on every `every`-th output of q, k and v.
    UlpBias { every: usize },
    /// The middle element of q is never written (outputs are poisoned with NaN first).
    Unwritten,
    /// The reduction order over H depends on T (like a tile size chosen by batch size).
    BatchVariantOrder { from_t: usize },
    /// The reduction order changes from run to run (like split-K with atomics).
    RunVariantOrder,
    /// Launched chained (programmatic dependent launch), reads x before waiting for the previous
    /// kernel: every launch on its own is right; in a stack whose kernels overlap it reads a stale
    /// x. Only a chained launch behind a late writer of x shows it, so only GPUs have it.
    ReadsXEarly,
}

/// How the CUDA backend runs an entry (kernels/cuda/).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CudaImpl {
    /// One fused kernel from kernels/cuda/fused_rmsnorm_qkv.cu, by its extern "C" name.
    Fused { kernel: &'static str },
    /// HF-semantics RMSNorm kernel, then a cuBLAS bf16 GEMM with fp32 accumulation.
    NormThenCublas,
    /// No GPU implementation (the mutant exists on the CPU backend only).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    Variant,
    /// A negative control: the suites must reject it under `of`'s contract.
    Mutant {
        of: EntryId,
    },
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Entry {
    pub id: EntryId,
    /// The entry's name in results files, reports and on the command line.
    pub name: &'static str,
    /// One line: what it is and why it exists.
    pub summary: &'static str,
    pub role: Role,
    pub numerics: Numerics,
    pub fault: Option<Fault>,
    pub cuda: CudaImpl,
    /// For a mutant, `None`: it borrows the contract of the variant it impersonates.
    pub contract: Option<Contract>,
}

impl Entry {
    pub fn is_mutant(&self) -> bool {
        matches!(self.role, Role::Mutant { .. })
    }

    /// The contract this entry is judged by (its own, or its target's for a mutant).
    pub fn contract(&self) -> Contract {
        match (self.contract, self.role) {
            (Some(c), _) => c,
            (None, Role::Mutant { of }) => {
                get(of).contract.expect("registry: a mutant's target is a variant with a contract (checked by a test)")
            }
            (None, Role::Variant) => {
                unreachable!("registry: every variant has a contract (checked by a test)")
            }
        }
    }
}

// inv_rms: two fp32 sums of squares over the same H terms in different orders differ by
// O(sqrt(H)) ulp, so the bound is 4 + sqrt(H)/2 fp32 ulps (H = 1024: 20; H = 8192: 50). Measured
// (numpy, fp32 orders against the exact sum, thousands of normal and t(2) heavy-tailed rows per
// H; ARCHITECTURE.md, "Error models"): a 256-thread block reduction (the GPU's) and pairwise summation
// stay within 3 ulp of exact at every H up to 16384; 8 interleaved lanes (the CPU emulation's
// order) reach 4, 12, 16, 37 ulp at H = 1024, 4096, 8192, 16384, i.e. ~0.28 sqrt(H), and a single
// sequential sum ~0.77 sqrt(H). A fixed 8 failed every honest CPU variant above H ~ 5000.
// Ratios of two errors over n elements scatter by ~1/sqrt(n) (tokens share a row's rounding, so
// less on few tokens): each ratio bound gets allowance / sqrt(n) on top.
//
// HF rounding points: A and B bit-exact to PyTorch except rare 1-ulp flips from fp32 reduction
// order and rsqrt implementation (NUMERICS.md: well under 0.01%); C within GEMM
// accumulation-order noise (~0.06% of outputs at K=1024 against cuBLAS; 0.05-0.18% measured on
// the CPU emulation) and no less accurate than PyTorch itself against the exact product of its
// own operands. The head norms round twice more, so an inherited 1-ulp difference in q or k may
// become 3 ulps there (measured: 3, on a row whose A had a reduction-order flip).
const HF_STAGES: &[StageBound] = &[
    StageBound::matches_hf(Stage::InvRms, 4, 0.0).growing_with_sqrt_len(0.5),
    StageBound::matches_hf(Stage::A, 1, 0.9999),
    StageBound::matches_hf(Stage::B, 1, 0.9999),
    StageBound::matches_hf(Stage::Q, 1, 0.995).with_error_ratio(1.05, Truth::GoldenOperands).with_ratio_allowance(1.0),
    StageBound::matches_hf(Stage::K, 1, 0.995).with_error_ratio(1.05, Truth::GoldenOperands).with_ratio_allowance(1.0),
    StageBound::matches_hf(Stage::V, 1, 0.995).with_error_ratio(1.05, Truth::GoldenOperands).with_ratio_allowance(1.0),
    StageBound::matches_hf(Stage::QNormed, 3, 0.99)
        .with_error_ratio(1.10, Truth::GoldenOperands)
        .with_ratio_allowance(1.0),
    StageBound::matches_hf(Stage::KNormed, 3, 0.99)
        .with_error_ratio(1.10, Truth::GoldenOperands)
        .with_ratio_allowance(1.0),
];

// fp32 throughout: not bitwise HF (one rounding instead of three: ~50% of C differs), but at
// least as accurate as PyTorch against the exact op (measured ratio 0.56-0.72). Its distance to HF
// at C is HF's own A/B rounding (measured max 3 row-scale ULPs). After the head norms that
// distance is HF's error amplified by outlier q/k_norm weights, so only accuracy is promised there.
// Its one rounding point is the output: q, k, v are the exact op rounded to bf16 but for near
// ties (measured on the CPU emulation over random shapes H 8-8192: at most 0.26% of the outputs
// miss, 0.78% at 128 outputs; HF's numerics miss 35-65%, a round-once kernel 30-46%), so the
// misses may be 0.5% of the outputs plus 3 standard deviations of that count (none at 8 outputs,
// 3 at 128, 19 at 2048). The accuracy ratios scatter widely on tiny shapes (q_normed up to 3.0 at
// 8 elements, measured over 400 draws): allowance 6 / sqrt(n).
const F32_ROUNDING: RoundedFrom = RoundedFrom { truth: Truth::IdealMath, share: 0.005, sigmas: 3.0 };
const F32_STAGES: &[StageBound] = &[
    StageBound::matches_hf(Stage::InvRms, 4, 0.0).growing_with_sqrt_len(0.5),
    StageBound::matches_hf(Stage::Q, 4, 0.0)
        .with_error_ratio(1.0, Truth::IdealMath)
        .with_ratio_allowance(6.0)
        .rounded_from(F32_ROUNDING),
    StageBound::matches_hf(Stage::K, 4, 0.0)
        .with_error_ratio(1.0, Truth::IdealMath)
        .with_ratio_allowance(6.0)
        .rounded_from(F32_ROUNDING),
    StageBound::matches_hf(Stage::V, 4, 0.0)
        .with_error_ratio(1.0, Truth::IdealMath)
        .with_ratio_allowance(6.0)
        .rounded_from(F32_ROUNDING),
    StageBound::at_least_as_accurate(Stage::QNormed, 1.0, Truth::IdealMath).with_ratio_allowance(6.0),
    StageBound::at_least_as_accurate(Stage::KNormed, 1.0, Truth::IdealMath).with_ratio_allowance(6.0),
];

// Inside a model every variant is held to HF's own noise: its deviation from HF's reference may be
// as large as the largest of HF's own (batch size, sdpa, decode vs prefill), with an allowance of
// 1.5x for the sampling noise of figures taken over ~170 positions and the CPU emulation's other
// fp32 reduction orders (the unfused standard path must pass it: the proof the pass is faithful),
// and 2 points of same-top-1 or 3 sigmas of the floor's count of differing positions, whichever is
// more (contract.rs: measured on the 28-layer model, where 0.1% of 1-ulp flips per layer, the
// sub-floor control, lands 2.4 points below the floor).
const WITHIN_HF_FLOOR: ModelContract =
    ModelContract { max_drift_over_floor: 1.5, max_kl_over_floor: 1.5, max_top1_drop_pct: 2.0, top1_sigmas: 3.0 };

const HF_CONTRACT: Contract =
    Contract { stages: HF_STAGES, deterministic: true, batch_invariant: false, model: WITHIN_HF_FLOOR };

static REGISTRY: &[Entry] = &[
    Entry {
        id: EntryId::Standard,
        name: "standard",
        summary: "the unfused baseline: HF Qwen3RMSNorm, then a plain bf16 GEMM (cuBLAS on GPU)",
        role: Role::Variant,
        numerics: Numerics::HF,
        fault: None,
        cuda: CudaImpl::NormThenCublas,
        contract: Some(HF_CONTRACT),
    },
    Entry {
        id: EntryId::F32,
        name: "f32",
        summary: "fused, fp32 throughout (norm, weight multiply, GEMM), one rounding at the output",
        role: Role::Variant,
        numerics: Numerics::F32,
        fault: None,
        cuda: CudaImpl::Fused { kernel: "fusegate_f32" },
        contract: Some(Contract {
            stages: F32_STAGES,
            deterministic: true,
            batch_invariant: false,
            model: WITHIN_HF_FLOOR,
        }),
    },
    Entry {
        id: EntryId::Mixed,
        name: "mixed",
        summary: "fused with HF's rounding points (A, then B), bf16 GEMM with fp32 accumulation",
        role: Role::Variant,
        numerics: Numerics::HF,
        fault: None,
        cuda: CudaImpl::Fused { kernel: "fusegate_mixed" },
        contract: Some(HF_CONTRACT),
    },
    Entry {
        id: EntryId::Exact,
        name: "exact",
        summary: "mixed's numerics in a single pass over x, deterministic and batch-invariant by contract",
        role: Role::Variant,
        numerics: Numerics::HF,
        fault: None,
        cuda: CudaImpl::Fused { kernel: "fusegate_exact" },
        contract: Some(Contract { batch_invariant: true, ..HF_CONTRACT }),
    },
    Entry {
        id: EntryId::MutantRoundOnce,
        name: "mutant-round-once",
        summary: "rounds once after the weight multiply (FlashInfer / TensorRT-LLM style) instead of HF's two roundings",
        role: Role::Mutant { of: EntryId::Mixed },
        numerics: Numerics { norm: NormRounding::OnceAfterWeight, accumulate: Accumulate::F32 },
        fault: None,
        cuda: CudaImpl::Fused { kernel: "mutant_round_once" },
        contract: None,
    },
    Entry {
        id: EntryId::MutantSkipWeight,
        name: "mutant-skip-weight",
        summary: "forgets the RMSNorm weight multiply",
        role: Role::Mutant { of: EntryId::Mixed },
        numerics: Numerics { norm: NormRounding::SkipWeight, accumulate: Accumulate::F32 },
        fault: None,
        cuda: CudaImpl::Fused { kernel: "mutant_skip_weight" },
        contract: None,
    },
    Entry {
        id: EntryId::MutantUlpBias,
        name: "mutant-ulp-bias",
        summary: "+1 ulp on one output in 1024: a bias no atol/rtol check, and no bit-exact fraction, sees",
        role: Role::Mutant { of: EntryId::Mixed },
        numerics: Numerics::HF,
        fault: Some(Fault::UlpBias { every: 1024 }),
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantUnwritten,
        name: "mutant-unwritten",
        summary: "leaves one element of q unwritten: caught only because outputs are poisoned with NaN",
        role: Role::Mutant { of: EntryId::Mixed },
        numerics: Numerics::HF,
        fault: Some(Fault::Unwritten),
        cuda: CudaImpl::Fused { kernel: "mutant_unwritten" },
        contract: None,
    },
    Entry {
        id: EntryId::MutantEarlyX,
        name: "mutant-early-x",
        summary: "exact's kernels, but a chained (PDL) launch reads x before the previous kernel has written it",
        role: Role::Mutant { of: EntryId::Exact },
        numerics: Numerics::HF,
        fault: Some(Fault::ReadsXEarly),
        cuda: CudaImpl::Fused { kernel: "mutant_early_x" },
        contract: None,
    },
    Entry {
        id: EntryId::MutantBf16Accumulate,
        name: "mutant-bf16-accumulate",
        summary: "accumulates the GEMM in bf16 instead of fp32",
        role: Role::Mutant { of: EntryId::Mixed },
        numerics: Numerics { norm: NormRounding::HfTwoRoundings, accumulate: Accumulate::Bf16 },
        fault: None,
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantBatchVariant,
        name: "mutant-batch-variant",
        summary: "exact's numerics, but the reduction order changes with T (like a batch-size-dependent tile)",
        role: Role::Mutant { of: EntryId::Exact },
        numerics: Numerics::HF,
        fault: Some(Fault::BatchVariantOrder { from_t: 64 }),
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantRunVariant,
        name: "mutant-run-variant",
        summary: "exact's numerics, but the reduction order changes from run to run (like split-K atomics)",
        role: Role::Mutant { of: EntryId::Exact },
        numerics: Numerics::HF,
        fault: Some(Fault::RunVariantOrder),
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantF32RoundOnce,
        name: "mutant-f32-round-once",
        summary: "claims fp32 throughout but rounds the normalised operand to bf16 once before the GEMM",
        role: Role::Mutant { of: EntryId::F32 },
        numerics: Numerics { norm: NormRounding::OnceAfterWeight, accumulate: Accumulate::F32 },
        fault: None,
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantF32Bias,
        name: "mutant-f32-bias",
        summary: "fp32 throughout, but +1 ulp on one output in 8: within f32's 4-ulp distance to HF",
        role: Role::Mutant { of: EntryId::F32 },
        numerics: Numerics::F32,
        fault: Some(Fault::UlpBias { every: 8 }),
        cuda: CudaImpl::None,
        contract: None,
    },
    Entry {
        id: EntryId::MutantF32HfNumerics,
        name: "mutant-f32-hf-numerics",
        summary: "HF's numerics (two bf16 roundings) posing as fp32 throughout: as accurate as PyTorch, not more",
        role: Role::Mutant { of: EntryId::F32 },
        numerics: Numerics::HF,
        fault: None,
        cuda: CudaImpl::None,
        contract: None,
    },
];

/// Every entry, variants first.
pub fn all() -> &'static [Entry] {
    REGISTRY
}

pub fn variants() -> impl Iterator<Item = &'static Entry> {
    REGISTRY.iter().filter(|e| !e.is_mutant())
}

pub fn mutants() -> impl Iterator<Item = &'static Entry> {
    REGISTRY.iter().filter(|e| e.is_mutant())
}

/// The entry of `id` (every id has one: checked by a test).
pub fn get(id: EntryId) -> &'static Entry {
    REGISTRY.iter().find(|e| e.id == id).expect("registry: every EntryId has an entry (checked by a test)")
}

/// The entry named `name` (parsing a name from a command line or a results file).
pub fn find(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// The unfused baseline every fused variant is measured against: the variant that runs HF's
/// norm and a library GEMM.
pub fn baseline() -> &'static Entry {
    get(EntryId::Standard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_unique_and_contracts_resolve() {
        let mut names: Vec<_> = all().iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all().len(), "duplicate registry names");
        let mut ids: Vec<_> = all().iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all().len(), "duplicate registry ids");
        for e in all() {
            assert_eq!(get(e.id).name, e.name);
            assert_eq!(e.name.parse::<EntryId>(), Ok(e.id));
            assert_eq!(serde_json::to_string(&e.id).unwrap(), format!("\"{}\"", e.name));
            match e.role {
                Role::Variant => assert!(e.contract.is_some(), "{} has no contract", e.name),
                Role::Mutant { of } => {
                    assert!(!get(of).is_mutant(), "{}: a mutant must impersonate a variant", e.name);
                }
            }
            assert!(!e.contract().stages.is_empty());
        }
        assert!(!baseline().is_mutant() && baseline().cuda == CudaImpl::NormThenCublas);
        assert!("fast".parse::<EntryId>().unwrap_err().contains("known: standard"));
    }

    #[test]
    fn every_variant_bounds_stage_c() {
        for e in variants() {
            for s in Stage::C {
                assert!(e.contract().bound(s).is_some(), "{} does not bound {s}", e.name);
            }
        }
    }
}
