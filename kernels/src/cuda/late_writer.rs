//! Whether a chained (PDL) launch waits for the kernel before it: the bench's graphs cannot show
//! this (nothing writes x between their launches), so a probe makes a late writer of x and checks
//! what the chained launch read.

use std::sync::Arc;

use half::bf16;

use super::args::{Geometry, KernelArgs, launch};
use super::prepared::{DeviceWeights, Launch};
use super::source::Source;
use super::{Cuda, device_err};
use crate::backend::{BackendError, Layer};
use crate::op::{Observed, OpInputs, Stage, StageData};
use crate::registry::Entry;

/// Clock cycles the writer spins before writing: ~100 us at 2 GHz. 20,000 (~10 us) let an early
/// read at T = 1 slip past unseen once on an H100 (NOTES.md, run 16).
const WRITER_SPIN_CYCLES: i64 = 200_000;

impl Cuda {
    /// [`Cuda::chained_waits_with`] on freshly uploaded weights.
    pub fn chained_waits_for_x(
        &self,
        entry: &'static Entry,
        inp: &OpInputs,
        x_late: &[bf16],
    ) -> Result<bool, BackendError> {
        let weights = self.upload_weights(Layer { dims: inp.shape.dims, weights: inp.weights, eps: inp.eps })?;
        self.chained_waits_with(entry, &weights, inp.x, x_late)
    }

    /// Whether a chained launch of `entry` waits for its predecessor before it reads x: a kernel
    /// that releases it at once and writes `x_late` over x ~100 us later runs first, then the
    /// chained launch on `x`, whose q, k, v must equal a serial launch's on `x_late`, bit for bit.
    pub fn chained_waits_with(
        &self,
        entry: &'static Entry,
        weights: &Arc<DeviceWeights>,
        x: &[bf16],
        x_late: &[bf16],
    ) -> Result<bool, BackendError> {
        let h = weights.dims().h;
        if x.len() != x_late.len() || x.is_empty() || !x.len().is_multiple_of(h) || !x.len().is_multiple_of(8) {
            return Err(BackendError::BadInput(format!(
                "x_late: {} elements for an x of {} (rows of {h}, a multiple of 8 elements)",
                x_late.len(),
                x.len()
            )));
        }
        let t = x.len() / h;
        let mut chained = self.prepare(entry, weights, t, false, Launch::Chained)?;
        let mut serial = self.prepare(entry, weights, t, false, Launch::Serial)?;
        self.write_x(&mut chained, x)?;
        self.write_x(&mut serial, x_late)?;
        self.poison(&mut chained)?;
        self.poison(&mut serial)?;
        let late = self.upload(x_late, "x_late")?;
        let writer = self.function(Source::Probes, None, "fusegate_late_writer", 0)?;
        let st = &self.stream;
        let args = KernelArgs::new()
            .ptr(chained.x.ptr(st))
            .ptr(late.ptr(st))
            .i32((x.len() / 8) as i32)
            .i64(WRITER_SPIN_CYCLES);
        let g = Geometry { grid: (4, 1, 1), block: 256, smem: 0 };
        // SAFETY: fusegate_late_writer(uint4* dst, const uint4* src, int n16, long long spin); dst
        // and src hold T*H bf16 = n16 16-byte units (DevBuf is 16-byte aligned).
        unsafe { launch(writer.cu_function(), g, st.cu_stream(), args, false) }
            .map_err(|e| device_err("launching fusegate_late_writer", e))?;
        self.launch(&chained)?;
        self.launch(&serial)?;
        let (got, want) = (self.download(&chained)?, self.download(&serial)?);
        // Bits, so that an unwritten (NaN) element in both compares equal.
        let bits = |o: &Observed, st: &Stage| match o.get(st) {
            Some(StageData::Bf16(v)) => v.iter().map(|x| x.to_bits()).collect(),
            _ => Vec::new(),
        };
        Ok(Stage::C.iter().all(|st| bits(&got, st) == bits(&want, st)))
    }
}
