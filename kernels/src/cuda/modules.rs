//! Compiled modules and loaded kernels, cached per process: each (source, variant) pair is
//! compiled once (NVRTC, for the device's own architecture), each kernel loaded once.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, sys};
use cudarc::nvrtc::Ptx;

use super::source::{Source, compile};
use super::{Cuda, device_err, lock};
use crate::backend::BackendError;

/// A compiled module: a source file, restricted to one variant's kernels or whole.
pub(super) type ModuleKey = (Source, Option<&'static str>);

/// Resource usage of one loaded kernel, as the driver reports it.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub name: String,
    pub registers: i32,
    /// Local memory per thread: non-zero means spills or a stack array.
    pub local_bytes: i32,
    pub static_smem: i32,
}

/// Blocks of `func` one SM holds at once; a kernel that fits none is an error naming it.
pub(super) fn occupancy(func: &CudaFunction, name: &str, threads: u32, smem: u32) -> Result<u32, BackendError> {
    let per_sm = func
        .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)
        .map_err(|e| device_err(format!("occupancy of {name}"), e))?;
    if per_sm == 0 {
        return Err(BackendError::Device(format!(
            "{name} cannot run: {threads} threads with {smem} bytes of shared memory fit no SM"
        )));
    }
    Ok(per_sm)
}

impl Cuda {
    /// NVRTC compile time (ms, CUBIN for the device's arch) of each module compiled so far,
    /// labelled `file` or `file:variant`.
    pub fn compile_times(&self) -> Vec<(String, f64)> {
        lock(&self.compile_ms).clone()
    }

    /// Registers, local memory and static shared memory of every kernel loaded so far.
    pub fn kernel_infos(&self) -> Vec<KernelInfo> {
        let mut v: Vec<KernelInfo> = lock(&self.functions).values().map(|(_, i)| i.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The module of `source` (restricted to one variant's kernels), compiled on first use.
    fn module(&self, source: Source, variant: Option<&'static str>) -> Result<Arc<CudaModule>, BackendError> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(&(source, variant)) {
            return Ok(m.clone());
        }
        let compiled = compile(source, variant, &self.arch, &[])?;
        let label = match variant {
            Some(v) => format!("{}:{v}", source.file_name()),
            None => source.file_name().to_string(),
        };
        lock(&self.compile_ms).push((label.clone(), compiled.millis));
        let module = self
            .ctx
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(|e| device_err(format!("loading {label} ({})", self.arch), e))?;
        modules.insert((source, variant), module.clone());
        Ok(module)
    }

    /// A kernel by its extern "C" name, with its dynamic shared memory limit raised to `smem`.
    pub(super) fn function(
        &self,
        source: Source,
        variant: Option<&'static str>,
        name: &str,
        smem: u32,
    ) -> Result<CudaFunction, BackendError> {
        if let Some((f, _)) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let module = self.module(source, variant)?;
        let f = module
            .load_function(name)
            .map_err(|e| device_err(format!("kernel {name} not found in {}", source.file_name()), e))?;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem.max(1) as i32)
            .map_err(|e| device_err(format!("{name}: {smem} bytes of dynamic shared memory refused"), e))?;
        let attr = |a: sys::CUfunction_attribute| -> i32 {
            let mut v = 0i32;
            // SAFETY: a valid function handle and an out-pointer to an i32.
            let _ = unsafe { sys::cuFuncGetAttribute(&mut v, a, f.cu_function()) };
            v
        };
        let info = KernelInfo {
            name: name.to_string(),
            registers: attr(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS),
            local_bytes: attr(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
            static_smem: attr(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
        };
        lock(&self.functions).insert(name.to_string(), (f.clone(), info));
        Ok(f)
    }
}
