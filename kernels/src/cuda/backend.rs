//! The [`Backend`] implementation: an entry prepared once per layer (weights on the device),
//! with a plan and buffers per T made on first use.

use std::collections::HashMap;
use std::sync::Arc;

use half::bf16;

use super::prepared::{DeviceWeights, Launch, Prepared};
use super::{Cuda, lock};
use crate::backend::{Backend, BackendError, BackendId, Layer, PreparedOp, check_x};
use crate::op::{Dims, Observed};
use crate::registry::{CudaImpl, Entry};

impl Backend for Cuda {
    fn id(&self) -> BackendId {
        BackendId::Cuda
    }

    fn supports(&self, entry: &Entry) -> Result<(), String> {
        match entry.cuda {
            CudaImpl::None => Err(format!("{} has no CUDA implementation", entry.name)),
            _ => Ok(()),
        }
    }

    fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError> {
        self.supports(entry).map_err(|_| BackendError::Unsupported { backend: BackendId::Cuda, entry: entry.name })?;
        let _serial = lock(&self.run_lock);
        let weights = Some(self.upload_weights(layer)?);
        Ok(Box::new(CudaOp { cuda: self, entry, weights, by_t: HashMap::new() }))
    }

    fn path_boundaries(&self, entry: &Entry, dims: &Dims) -> Vec<usize> {
        super::plan::route_boundaries(entry, dims, self.max_smem, self.decode)
    }

    fn device(&self) -> Option<String> {
        Some(self.device_name().to_string())
    }

    fn as_cuda(&self) -> Option<&Cuda> {
        Some(self)
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!("decode rule: {:?}", self.decode)];
        notes.extend(self.compile_times().iter().map(|(what, ms)| format!("NVRTC compiled {what} in {ms:.0} ms")));
        notes
    }
}

/// An entry on one layer's device weights; plans and buffers per T, made on first use.
struct CudaOp<'a> {
    cuda: &'a Cuda,
    entry: &'static Entry,
    /// `None` only while dropping (released under the run lock).
    weights: Option<Arc<DeviceWeights>>,
    by_t: HashMap<usize, Prepared>,
}

impl CudaOp<'_> {
    fn weights(&self) -> Result<&Arc<DeviceWeights>, BackendError> {
        self.weights.as_ref().ok_or_else(|| BackendError::Device("prepared entry already released".into()))
    }
}

impl PreparedOp for CudaOp<'_> {
    fn entry(&self) -> &'static Entry {
        self.entry
    }

    fn run(&mut self, x: &[bf16]) -> Result<Observed, BackendError> {
        let weights = self.weights()?.clone();
        let shape = check_x(&weights.dims(), x)?;
        let cuda = self.cuda;
        let _serial = lock(&cuda.run_lock);
        let p = match self.by_t.entry(shape.t) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cuda.prepare(self.entry, &weights, shape.t, true, Launch::Serial)?)
            }
        };
        cuda.write_x(p, x)?;
        cuda.poison(p)?;
        cuda.synchronize()?;
        cuda.launch(p)?;
        cuda.download(p)
    }

    fn chained_sees_late_x(&mut self, x: &[bf16], x_late: &[bf16]) -> Result<Option<bool>, BackendError> {
        let weights = self.weights()?.clone();
        let shape = check_x(&weights.dims(), x)?;
        if !self.cuda.chains(self.entry, &shape) {
            return Ok(None);
        }
        let _serial = lock(&self.cuda.run_lock);
        self.cuda.chained_waits_with(self.entry, &weights, x, x_late).map(Some)
    }
}

impl Drop for CudaOp<'_> {
    /// Device buffers are freed on the stream: under the run lock, so that no free lands between
    /// another run's two launches (the late-writer probe needs them adjacent).
    fn drop(&mut self) {
        let _serial = lock(&self.cuda.run_lock);
        self.by_t.clear();
        self.weights = None;
    }
}
