//! Choosing backends: the CPU emulation always runs; CUDA runs where a driver and device exist.

use crate::trials::BackendSlot;
use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::cuda::Cuda;
use fusegate_kernels::{Backend, BackendId};
use std::sync::{Arc, OnceLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// CUDA where a device is present, else the CPU emulation.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Choice::Auto);
        }
        match s.parse::<BackendId>() {
            Ok(BackendId::Cpu) => Ok(Choice::Cpu),
            Ok(BackendId::Cuda) => Ok(Choice::Cuda),
            Err(_) => Err(format!("unknown backend {s:?} (expected auto, cpu or cuda)")),
        }
    }
}

pub fn cpu() -> BackendSlot {
    BackendSlot { id: BackendId::Cpu, backend: Ok(Arc::new(Cpu)) }
}

/// The CUDA backend (probed once per process), or why it cannot run on this machine (never a panic).
pub fn cuda() -> BackendSlot {
    static CUDA: OnceLock<Result<Arc<dyn Backend>, String>> = OnceLock::new();
    let backend = CUDA.get_or_init(|| Cuda::probe().map(|c| Arc::new(c) as Arc<dyn Backend>)).clone();
    BackendSlot { id: BackendId::Cuda, backend }
}
