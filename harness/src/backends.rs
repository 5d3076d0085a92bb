//! Choosing backends: the CPU emulation always runs; CUDA runs where a driver and device exist.

use crate::trials::BackendSlot;
use fusegate_kernels::cpu::Cpu;
use std::sync::Arc;

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
        match s {
            "auto" => Ok(Choice::Auto),
            "cpu" => Ok(Choice::Cpu),
            "cuda" => Ok(Choice::Cuda),
            _ => Err(format!(
                "unknown backend {s:?} (expected auto, cpu or cuda)"
            )),
        }
    }
}

pub fn cpu() -> BackendSlot {
    BackendSlot {
        name: "cpu",
        backend: Ok(Arc::new(Cpu)),
    }
}

/// The CUDA backend, or why it cannot run on this machine (never a panic).
pub fn cuda() -> BackendSlot {
    BackendSlot {
        name: "cuda",
        backend: Err("the CUDA backend is not built yet".to_string()),
    }
}
