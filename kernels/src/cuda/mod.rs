//! The CUDA backend: runs registry entries on an NVIDIA GPU.
//!
//! Kernels live in `kernels/cuda/*.cu` and are embedded in the binary ([`source`]), so a binary
//! copied to the GPU machine needs nothing beside it; they are compiled at run time by NVRTC to
//! CUBIN for the device's own architecture, lazily and once per process for each (source file,
//! variant) pair ([`modules`]; compile times: [`Cuda::compile_times`], figures in
//! kernels/cuda/NOTES.md).
//!
//! By concern:
//! - [`source`]: the sources and NVRTC;
//! - [`plan`]: the one place a kernel and tile are chosen from T ([`plan::route`]);
//! - [`memory`]: aligned device buffers and views of them; [`args`]: the argument builder and the
//!   two launch forms;
//! - [`prepared`]: weights uploaded once per layer, per-T buffers and plans, `launch` (enqueue
//!   only, for timing and graph capture), `poison`, `download`;
//! - [`late_writer`]: whether a chained (PDL) launch waits for the kernel before it;
//! - [`mma_rate`]: the tensor cores' rate through mma.sync, the bound on every fusegate tensor-core
//!   kernel;
//! - [`decoder`]: the rest of HF's decoder layer (head norms, RoPE, attention, MLP glue, GEMMs)
//!   for the model gate's device forward pass;
//! - `backend`: the [`Backend`](crate::Backend) implementation over the above.
//!
//! cudarc panics when a CUDA library is missing, so [`Cuda::probe`] checks that each library can
//! be loaded before the first call into it and returns a one-line reason instead; nothing in
//! this module panics on a machine without CUDA.

pub mod args;
mod backend;
pub mod decoder;
pub mod late_writer;
pub mod memory;
pub mod mma_rate;
pub mod modules;
pub mod outputs;
pub mod plan;
pub mod prepared;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, sys};

use crate::backend::BackendError;
pub use decoder::{AttnStep, DecoderOps};
pub use memory::{DevBuf, View};
pub use modules::KernelInfo;
pub use plan::{DecodeRule, DecodeW, Route};
pub use prepared::{DeviceWeights, Launch, Prepared};
pub use source::{Source, compile, nvrtc_present};

/// cuBLAS workspace: PyTorch's default on Hopper (CUBLAS_WORKSPACE_CONFIG :4096:8 = 32 MiB).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// The CUDA backend. All work goes to one stream; runs, preparations and releases of device
/// buffers are serialised (`run_lock`), so that nothing lands between a probe's two launches.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    name: String,
    arch: String,
    cc: (i32, i32),
    sms: u32,
    /// Shared memory one block may opt in to (bytes).
    max_smem: usize,
    l2_bytes: u64,
    /// cuBLAS's version number (e.g. 130100), queried at probe.
    cublas_version: i32,
    /// An explicit cuBLAS workspace (PyTorch sets one too): no allocation happens inside a graph
    /// capture, and its size is reported apart from the variants' own memory.
    cublas_workspace: CudaSlice<u8>,
    /// Which decode kernel serves which T.
    decode: DecodeRule,
    modules: Mutex<HashMap<modules::ModuleKey, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, (CudaFunction, KernelInfo)>>,
    compile_ms: Mutex<Vec<(String, f64)>>,
    run_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn device_err(what: impl std::fmt::Display, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

impl Cuda {
    /// Opens device `$FUSEGATE_CUDA_DEVICE` (default 0) with the measured [`DecodeRule`], or says
    /// in one line why it cannot. Never panics: each library cudarc would load is checked first.
    pub fn probe() -> Result<Cuda, String> {
        Cuda::probe_with(DecodeRule::default())
    }

    /// [`Cuda::probe`] with another decode rule (kernel development); below sm_90 the decode
    /// kernels keep W in registers whatever the rule says (no bulk copies there).
    pub fn probe_with(decode: DecodeRule) -> Result<Cuda, String> {
        // SAFETY (all three): only try to dlopen the library by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so.1 not found)".into());
        }
        if !nvrtc_present() {
            return Err("no NVRTC (libnvrtc.so not found)".into());
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err("no cuBLAS (libcublas.so not found)".into());
        }
        let count = CudaContext::device_count().map_err(|e| format!("CUDA driver failed to initialise: {e:?}"))?;
        if count < 1 {
            return Err("no CUDA device".into());
        }
        let ordinal = match std::env::var("FUSEGATE_CUDA_DEVICE") {
            Ok(s) => s.trim().parse::<usize>().map_err(|_| format!("FUSEGATE_CUDA_DEVICE={s} is not an index"))?,
            Err(_) => 0,
        };
        if ordinal >= count as usize {
            return Err(format!("CUDA device {ordinal} requested, {count} present"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open CUDA device {ordinal}: {e:?}"))?;
        // One stream, explicit synchronisation: cudarc's per-buffer events would only add work
        // to every launch and break graph capture (GPU.md). Nothing was allocated before this.
        // SAFETY: called before any allocation on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| format!("cannot create a CUDA stream: {e:?}"))?;
        let cc = ctx.compute_capability().map_err(|e| format!("compute capability query failed: {e:?}"))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("SM count query failed: {e:?}"))? as u32;
        let max_smem = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| format!("shared memory limit query failed: {e:?}"))? as usize;
        // Informational queries (never added to the GPU-verified path's failure modes): 0 when
        // the driver does not answer.
        let l2_bytes =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE).map_or(0, |v| v as u64);
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS initialisation failed: {e:?}"))?;
        let mut cublas_version = 0i32;
        // SAFETY: a live handle and an out-pointer to an i32.
        if unsafe { blas_sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) }.result().is_err() {
            cublas_version = 0;
        }
        let cublas_workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .map_err(|e| format!("allocating the cuBLAS workspace: {e:?}"))?;
        {
            let (ptr, _guard) = cublas_workspace.device_ptr(&stream);
            // SAFETY: a live handle and a device buffer of CUBLAS_WORKSPACE_BYTES that outlives it (both in Cuda).
            unsafe {
                blas_sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut std::ffi::c_void, CUBLAS_WORKSPACE_BYTES)
            }
            .result()
            .map_err(|e| format!("setting the cuBLAS workspace: {e:?}"))?;
        }
        Ok(Cuda {
            ctx,
            stream,
            blas,
            name,
            arch: format!("sm_{}{}", cc.0, cc.1),
            cc,
            sms,
            max_smem,
            l2_bytes,
            cublas_version,
            cublas_workspace,
            decode: if cc.0 < 9 { DecodeRule { w: DecodeW::Registers, ..decode } } else { decode },
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            compile_ms: Mutex::new(Vec::new()),
            run_lock: Mutex::new(()),
        })
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    pub fn sm_count(&self) -> u32 {
        self.sms
    }
    /// L2 cache size in bytes (cold-cache timing must read more than this between reuses); 0 if
    /// the driver did not say.
    pub fn l2_bytes(&self) -> u64 {
        self.l2_bytes
    }
    /// cuBLAS's version number as cublasGetVersion reports it (e.g. "130100"), or "unknown".
    pub fn cublas_version(&self) -> String {
        if self.cublas_version > 0 { self.cublas_version.to_string() } else { "unknown".into() }
    }
    /// Bytes of the explicit workspace fusegate gives cuBLAS (PyTorch's Hopper default), allocated
    /// at probe: memory reports show it apart from an entry's own buffers.
    pub fn cublas_workspace_bytes(&self) -> usize {
        self.cublas_workspace.len()
    }

    /// The stream every launch goes to (record timing events on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The decode rule this backend routes by.
    pub fn decode_rule(&self) -> DecodeRule {
        self.decode
    }
    /// Shared memory one block may opt in to (bytes).
    pub fn max_smem(&self) -> usize {
        self.max_smem
    }
}

/// Whether a reason string from [`Cuda::probe`] is a one-liner (for callers that print it).
pub fn is_one_line(reason: &str) -> bool {
    !reason.is_empty() && !reason.contains('\n')
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Cuda>();
    is::<Prepared>();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides of the probe: without a driver (this machine, CI) a one-line reason, never a
    /// panic; with one, a device that answers its queries.
    #[test]
    fn probe_gives_a_one_line_reason_or_a_device_that_answers() {
        let present = unsafe { sys::is_culib_present() };
        match Cuda::probe() {
            Ok(cuda) => {
                assert!(present, "probe succeeded without a CUDA driver");
                assert!(!cuda.device_name().is_empty() && cuda.sm_count() > 0 && cuda.max_smem() > 0);
                assert!(cuda.compute_capability().0 >= 5, "{:?}", cuda.compute_capability());
            }
            Err(reason) => {
                assert!(is_one_line(&reason), "{reason:?}");
                if !present {
                    assert!(reason.contains("no CUDA driver"), "{reason}");
                }
            }
        }
    }
}
