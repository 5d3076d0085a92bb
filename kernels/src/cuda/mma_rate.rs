//! The tensor cores' bf16 rate through mma.sync, the instruction all of fusegate's tensor-core
//! kernels are built on: flops over this rate is the least time any of them, or a fused prefill
//! built the same way, can take. cuBLAS reaches a higher rate on sm_90 through wgmma, so the
//! bench reports both ceilings, and a T where this bound exceeds the standard path's measured
//! time is a T where no mma.sync kernel can beat it.

use cudarc::driver::CudaFunction;
use half::bf16;

use super::args::{Geometry, KernelArgs, launch};
use super::memory::DevBuf;
use super::source::Source;
use super::{Cuda, device_err};
use crate::backend::BackendError;

/// Independent accumulator chains per warp (`MMA_RATE_CHAINS` in probes.cu).
const CHAINS: u32 = 8;
/// One m16n8k16 MMA: 16 x 8 outputs, each a 16-term dot product (a multiply-add is two flops).
const FLOPS_PER_MMA: f64 = (2 * 16 * 8 * 16) as f64;

/// The probe's operands and outputs on the device, for repeated launches.
pub struct MmaRateProbe {
    /// 64 16-byte units: lane l's A fragment at l, its B fragment at 32 + l.
    frags: DevBuf<bf16>,
    sums: DevBuf<f32>,
    /// Loaded here, so that a timed launch does no lookup.
    func: CudaFunction,
    blocks: u32,
    warps: u32,
}

impl Cuda {
    /// A probe of one block per SM with `warps` warps each; `frags` are 512 bf16 values (the A
    /// and B fragments of 32 lanes), non-zero so that every MMA does real work.
    pub fn mma_rate_probe(&self, frags: &[bf16], warps: u32) -> Result<MmaRateProbe, BackendError> {
        if frags.len() != 512 || !(1..=32).contains(&warps) {
            return Err(BackendError::BadInput(format!(
                "mma rate probe: {} fragment values (need 512) and {warps} warps (need 1..=32)",
                frags.len()
            )));
        }
        let blocks = self.sm_count();
        Ok(MmaRateProbe {
            frags: self.upload(frags, "mma rate fragments")?,
            sums: self.alloc((blocks * warps * 32) as usize, "mma rate sums")?,
            func: self.function(Source::Probes, None, "fusegate_mma_rate", 0)?,
            blocks,
            warps,
        })
    }

    /// Enqueues one launch of `probe` in which each warp runs `rounds` rounds; returns the flops
    /// it does.
    pub fn enqueue_mma_rate(&self, probe: &MmaRateProbe, rounds: u32) -> Result<f64, BackendError> {
        let st = &self.stream;
        let args = KernelArgs::new().ptr(probe.frags.ptr(st)).ptr(probe.sums.ptr(st)).i32(rounds as i32);
        let g = Geometry { grid: (probe.blocks, 1, 1), block: probe.warps * 32, smem: 0 };
        // SAFETY: fusegate_mma_rate(const uint4* frags, float* out, int rounds): frags holds 64
        // 16-byte units (512 bf16, DevBuf is 16-byte aligned), out one float per launched thread.
        unsafe { launch(probe.func.cu_function(), g, st.cu_stream(), args, false) }
            .map_err(|e| device_err("launching fusegate_mma_rate", e))?;
        Ok(f64::from(probe.blocks * probe.warps) * f64::from(rounds) * f64::from(CHAINS) * FLOPS_PER_MMA)
    }

    /// Whether the last launch did its work: every warp computes the same sums from the same
    /// fragments, so each lane's sum must be finite, non-zero and equal in every warp.
    pub fn mma_rate_checked(&self, probe: &MmaRateProbe) -> Result<bool, BackendError> {
        let sums = self.download_buf(&probe.sums, "mma rate sums")?;
        let first = &sums[..32];
        Ok(first.iter().all(|s| s.is_finite() && *s != 0.0) && sums.chunks(32).all(|w| w == first))
    }
}
