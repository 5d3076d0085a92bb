//! Where the goldens came from. Recorded so that a verdict can say which PyTorch, cuBLAS and GPU
//! it compared against: a golden is only "the truth" for that stack.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The software and hardware stack `capture.py` ran on, as it recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub torch: String,
    pub transformers: String,
    pub cuda: String,
    pub cublas: String,
    pub gpu: String,
    pub python: String,
    /// torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction at capture time: when
    /// true, cuBLAS may have reduced partial GEMM sums in bf16, which loosens what q/k/v can be
    /// expected to match.
    pub allow_bf16_reduced_precision_reduction: bool,
    /// UTC, `%Y-%m-%dT%H:%M:%SZ`.
    pub captured_at: String,
}

impl Provenance {
    /// The same software and hardware stack, captured at any time: what a manifest grown by
    /// `capture.py --only` holds across its cases.
    pub fn same_stack(&self, other: &Provenance) -> bool {
        Provenance { captured_at: String::new(), ..self.clone() }
            == Provenance { captured_at: String::new(), ..other.clone() }
    }
}

impl fmt::Display for Provenance {
    /// One line, for report headers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reduction = if self.allow_bf16_reduced_precision_reduction { "allowed" } else { "off" };
        write!(
            f,
            "torch {}, transformers {}, CUDA {}, cuBLAS {}, {}, python {}, \
             bf16 reduced-precision reduction {}, captured {}",
            self.torch, self.transformers, self.cuda, self.cublas, self.gpu, self.python, reduction, self.captured_at
        )
    }
}
