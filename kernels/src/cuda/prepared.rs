//! An entry made ready on the device: one layer's weights uploaded once ([`DeviceWeights`]), and
//! per T a [`Prepared`]: activation and output buffers plus the launch plan, so that
//! [`Cuda::launch`] only enqueues kernels (no allocation, copy or synchronisation) and a benchmark
//! can time repeated launches with events or capture them in a graph; [`Cuda::write_x`] swaps
//! inputs in place.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{CudaFunction, sys};
use half::bf16;
use serde::{Deserialize, Serialize};

use super::args::{Geometry, KernelArgs, launch};
use super::memory::DevBuf;
use super::modules::occupancy;
use super::outputs::{Outputs, Rows};
use super::plan::{Route, grid_for, norm_threads};
use super::source::Source;
use super::{Cuda, device_err};
use crate::backend::{BackendError, BackendId, Layer, check_inputs, check_layer};
use crate::op::{Dims, Observed, OpInputs, Shape, Stage, StageData};
use crate::registry::{CudaImpl, Entry, NormRounding};

/// bf16 quiet NaN: outputs start as this, so an element no kernel wrote stays visible.
pub const BF16_POISON: u16 = 0x7FC0;

/// How a launch relates to the one before it on the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// A plain launch: the kernel starts once the previous one has finished.
    #[default]
    Serial,
    /// Programmatic dependent launch: the kernel starts while the previous one runs, fetches W,
    /// and waits for it (griddepcontrol.wait) before it reads x or writes. What a kernel gets in
    /// a serving stack whose kernels all take part; only the tensor-core decode kernels do.
    Chained,
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Launch::Serial => "serial",
            Launch::Chained => "chained",
        })
    }
}

/// One layer's op weights on the device, shared by the plans of every T.
pub struct DeviceWeights {
    dims: Dims,
    eps: f32,
    norm: DevBuf<bf16>,
    qkv: DevBuf<bf16>,
}

impl DeviceWeights {
    pub fn dims(&self) -> Dims {
        self.dims
    }
}

/// How one prepared entry is launched.
enum Plan {
    Fused {
        func: CudaFunction,
        name: String,
        geometry: Geometry,
        /// Launched with programmatic stream serialization ([`Launch::Chained`]).
        chained: bool,
        /// Blocks of this kernel one SM holds at once (the driver's occupancy figure).
        per_sm: u32,
    },
    /// HF RMSNorm into B, then one cuBLAS GEMM into the packed [T, N] output.
    Standard { norm: CudaFunction },
}

/// An entry's device buffers and launch plan at one T: [`Cuda::launch`] re-runs it without
/// re-uploading.
pub struct Prepared {
    entry: &'static Entry,
    shape: Shape,
    weights: Arc<DeviceWeights>,
    pub(super) x: DevBuf<bf16>,
    /// q, k and v: packed for the standard path, separate for the fused kernels.
    pub(super) out: Outputs,
    /// B [T, H]: the standard path's GEMM operand, or a fused kernel's debug copy.
    b: Option<DevBuf<bf16>>,
    inv_rms: Option<DevBuf<f32>>,
    /// Whether the kernels' 16-byte vector path applies (H % 8 == 0 and aligned inputs).
    vec16: bool,
    plan: Plan,
}

impl Prepared {
    pub fn entry(&self) -> &'static Entry {
        self.entry
    }
    /// The op's input [T, H]: a device forward pass writes each layer's input here in place.
    pub fn x(&self) -> &DevBuf<bf16> {
        &self.x
    }
    /// The op's outputs, q [T, Nq*D], k and v [T, Nkv*D], as rows on the device (strided where
    /// they are column ranges of the standard path's [T, N] output).
    pub fn qkv(&self) -> [Rows<'_>; 3] {
        self.out.rows(&self.shape)
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The kernel name and launch configuration, for reports.
    pub fn describe(&self) -> String {
        match &self.plan {
            Plan::Fused { name, geometry: g, chained, per_sm, .. } => format!(
                "{name} grid=({},{},{}) block={} smem={} {per_sm}/SM vec16={}{}",
                g.grid.0,
                g.grid.1,
                g.grid.2,
                g.block,
                g.smem,
                self.vec16,
                if *chained { " pdl" } else { "" }
            ),
            Plan::Standard { .. } => format!(
                "fusegate_hf_rmsnorm grid={} block={} + cublasGemmEx(bf16, COMPUTE_32F) into [T, N] (q, k, v as views)",
                self.shape.t,
                norm_threads(self.shape.h)
            ),
        }
    }
}

impl Cuda {
    /// What runs `entry` at `s` on this device (`None`: no CUDA implementation).
    pub fn route(&self, entry: &Entry, s: &Shape) -> Option<Route> {
        super::plan::route(entry, s, self.max_smem, self.decode)
    }

    /// Whether `entry` at `s` can be launched [`Launch::Chained`]: its kernel is a tensor-core
    /// decode kernel, the only ones that wait for their predecessor, on a GPU with programmatic
    /// dependent launch (sm_90 and later; below it the launches would not overlap at all).
    pub fn chains(&self, entry: &Entry, s: &Shape) -> bool {
        self.cc.0 >= 9
            && entry.numerics.norm != NormRounding::Fp32
            && matches!(self.route(entry, s), Some(Route::Decode(_)))
    }

    /// Uploads one layer's weights (checked against its dims).
    pub fn upload_weights(&self, layer: Layer<'_>) -> Result<Arc<DeviceWeights>, BackendError> {
        check_layer(&layer)?;
        Ok(Arc::new(DeviceWeights {
            dims: layer.dims,
            eps: layer.eps,
            norm: self.upload(&layer.weights.norm, "norm weight")?,
            qkv: self.upload(&layer.weights.qkv, "qkv weight")?,
        }))
    }

    /// Allocates x and the outputs at `t` tokens and plans the launch (x is unset: write it with
    /// [`Cuda::write_x`]). With `debug`, the fused kernels also write stage B and inv_rms (one
    /// block per T-tile does); production timing passes `false`. Chained where [`Cuda::chains`]
    /// says no is an error.
    pub fn prepare(
        &self,
        entry: &'static Entry,
        weights: &Arc<DeviceWeights>,
        t: usize,
        debug: bool,
        launch: Launch,
    ) -> Result<Prepared, BackendError> {
        let s = weights.dims.with_t(t);
        check_sizes(&s)?;
        if launch == Launch::Chained && !self.chains(entry, &s) {
            return Err(BackendError::BadInput(format!(
                "{} at T = {t}: only the tensor-core decode kernels can be launched chained (PDL)",
                entry.name
            )));
        }
        // Callers may be on any thread (trials run on workers): bind the context first, since some
        // driver calls below (the occupancy query) do not bind it and fail with INVALID_CONTEXT.
        self.ctx.bind_to_thread().map_err(|e| device_err("binding the CUDA context to this thread", e))?;
        let plan = self.plan(entry, &s, launch)?;
        let standard = matches!(plan, Plan::Standard { .. });
        let x = self.alloc(s.t * s.h, "x")?;
        let out = Outputs::alloc(self, &s, standard)?;
        let has_b = standard || (debug && entry.numerics.norm != NormRounding::Fp32);
        let b = if has_b { Some(self.alloc(s.t * s.h, "B")?) } else { None };
        let inv_rms = if debug { Some(self.alloc(s.t, "inv_rms")?) } else { None };
        let st = &self.stream;
        let aligned = (x.ptr(st) | weights.norm.ptr(st) | weights.qkv.ptr(st)).is_multiple_of(16);
        let vec16 = s.h.is_multiple_of(8) && aligned;
        let weights = weights.clone();
        Ok(Prepared { entry, shape: s, weights, x, out, b, inv_rms, vec16, plan })
    }

    /// One run's inputs uploaded whole: the layer's weights, then a plan at the inputs' T with x
    /// written (benchmarks give each cold-cache copy its own weights this way).
    pub fn prepare_inputs(
        &self,
        entry: &'static Entry,
        inp: &OpInputs,
        debug: bool,
        launch: Launch,
    ) -> Result<Prepared, BackendError> {
        check_inputs(inp)?;
        let layer = Layer { dims: inp.shape.dims, weights: inp.weights, eps: inp.eps };
        let weights = self.upload_weights(layer)?;
        let mut p = self.prepare(entry, &weights, inp.shape.t, debug, launch)?;
        self.write_x(&mut p, inp.x)?;
        Ok(p)
    }

    /// The kernel(s) of `entry` at `s`, loaded, with their launch geometry.
    fn plan(&self, entry: &'static Entry, s: &Shape, launch: Launch) -> Result<Plan, BackendError> {
        let unsupported = || BackendError::Unsupported { backend: BackendId::Cuda, entry: entry.name };
        let route = self.route(entry, s).ok_or_else(unsupported)?;
        let CudaImpl::Fused { kernel } = entry.cuda else {
            let Route::Standard = route else { return Err(unsupported()) };
            return Ok(Plan::Standard { norm: self.function(Source::Rmsnorm, None, "fusegate_hf_rmsnorm", 0)? });
        };
        let name = format!("{kernel}{}", route.suffix());
        let (func, geometry, per_sm) = match route {
            Route::Decode(dec) => {
                let func = self.function(Source::Fused, Some(kernel), &name, (self.max_smem - 1024) as u32)?;
                // All of the SM's shared memory, so that a block of the next (chained) grid
                // fits beside a running one where two blocks' W and operand do.
                func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
                    .map_err(|e| device_err(format!("{name}: shared memory carveout"), e))?;
                let per_sm = occupancy(&func, &name, dec.threads, dec.smem)?;
                (func, Geometry { grid: dec.grid, block: dec.threads, smem: dec.smem }, per_sm)
            }
            Route::Tile(tile) => {
                let func = self.function(Source::Fused, Some(kernel), &name, tile.smem)?;
                let per_sm = occupancy(&func, &name, tile.threads, tile.smem)?;
                let grid = grid_for(tile, s, self.sms * per_sm);
                (func, Geometry { grid, block: tile.threads, smem: tile.smem }, per_sm)
            }
            Route::Standard => return Err(unsupported()),
        };
        Ok(Plan::Fused { func, name, geometry, chained: launch == Launch::Chained, per_sm })
    }

    /// Overwrites the prepared x with new activations of the same shape (no reallocation, so a
    /// captured graph sees them). Enqueued on [`Cuda::stream`].
    pub fn write_x(&self, p: &mut Prepared, x: &[bf16]) -> Result<(), BackendError> {
        self.write(&mut p.x, x, "x")
    }

    /// Fills q, k, v (and the debug stages) with NaN, so that unwritten elements show.
    pub fn poison(&self, p: &mut Prepared) -> Result<(), BackendError> {
        let nan = bf16::from_bits(BF16_POISON);
        for buf in p.out.buffers_mut() {
            self.fill(buf, nan)?;
        }
        if let Some(b) = p.b.as_mut() {
            self.fill(b, nan)?;
        }
        if let Some(r) = p.inv_rms.as_mut() {
            self.fill(r, f32::NAN)?;
        }
        Ok(())
    }

    /// Enqueues the entry's kernel(s) on [`Cuda::stream`]: no allocation, copy or
    /// synchronisation, so that events around it time the kernels alone.
    pub fn launch(&self, p: &Prepared) -> Result<(), BackendError> {
        self.ctx.bind_to_thread().map_err(|e| device_err("binding the CUDA context", e))?;
        let st = &self.stream;
        let s = p.shape;
        let w = &p.weights;
        let opt = |b: Option<u64>| b.unwrap_or(0);
        let (b, r) = (opt(p.b.as_ref().map(|b| b.ptr(st))), opt(p.inv_rms.as_ref().map(|r| r.ptr(st))));
        match (&p.plan, &p.out) {
            (Plan::Fused { func, name, geometry, chained, .. }, Outputs::Separate([q, k, v])) => {
                let args = KernelArgs::new()
                    .ptr(p.x.ptr(st))
                    .ptr(w.norm.ptr(st))
                    .ptr(w.qkv.ptr(st))
                    .ptr(q.ptr(st))
                    .ptr(k.ptr(st))
                    .ptr(v.ptr(st))
                    .ptr(b)
                    .ptr(r)
                    .dims(&[s.t, s.h, s.nq, s.nkv, s.d])
                    .f32(w.eps);
                // SAFETY: the arguments match the fused ABI (FG_PARAMS) in order and type, the
                // buffers hold the sizes the shape implies (allocated in `prepare`), and the
                // geometry follows the launch rule of `name`; a chained kernel waits
                // (griddepcontrol.wait) for the previous grid before it reads x or writes.
                unsafe { launch(func.cu_function(), *geometry, st.cu_stream(), args, *chained) }
                    .map_err(|e| device_err(format!("launching {name}{}", if *chained { " (PDL)" } else { "" }), e))
            }
            (Plan::Standard { norm }, Outputs::Packed(out)) => self.launch_standard(p, norm, out.ptr(st), b, r),
            _ => Err(BackendError::Device(format!("{}: outputs not laid out for its plan", p.entry.name))),
        }
    }

    /// HF RMSNorm into B, then cuBLAS B @ W^T into the packed [T, N] output `out`: what torch
    /// does for F.linear on the concatenated weight, whose `split` into q, k, v is views.
    fn launch_standard(&self, p: &Prepared, norm: &CudaFunction, out: u64, b: u64, r: u64) -> Result<(), BackendError> {
        let st = &self.stream;
        let (s, w) = (p.shape, &p.weights);
        let args = KernelArgs::new().ptr(p.x.ptr(st)).ptr(w.norm.ptr(st)).ptr(b).ptr(r).dims(&[s.t, s.h]).f32(w.eps);
        let rows = Geometry { grid: (s.t as u32, 1, 1), block: norm_threads(s.h), smem: 0 };
        // SAFETY: fusegate_hf_rmsnorm(x, w, b_out, inv_rms_out nullable, T, H, eps); b has T*H
        // elements; one block of norm_threads(H) per row.
        unsafe { launch(norm.cu_function(), rows, st.cu_stream(), args, false) }
            .map_err(|e| device_err("launching fusegate_hf_rmsnorm", e))?;
        self.gemm_bf16(w.qkv.ptr(st), b, out, &s)
    }

    /// out [T, N] = b [T, H] @ w [N, H]^T: PyTorch's F.linear, bf16 with fp32 compute.
    fn gemm_bf16(&self, w: u64, b: u64, out: u64, s: &Shape) -> Result<(), BackendError> {
        self.linear_raw(w, b, out, s.n(), s.t, s.h)
    }

    /// out [t, n] = x [t, k] @ w [n, k]^T (nn.Linear's layout), bf16 operands and output with
    /// fp32 compute: cuBLAS's GemmEx, as PyTorch calls it for a bf16 F.linear.
    pub(super) fn linear_raw(
        &self,
        w: u64,
        x: u64,
        out: u64,
        n: usize,
        t: usize,
        k: usize,
    ) -> Result<(), BackendError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| BackendError::BadInput(format!("GEMM {what} = {v} overflows cuBLAS's int")))
        };
        let (n, t, k) = (int(n, "N")?, int(t, "T")?, int(k, "K")?);
        // out[t,n] row-major is column-major n x t (ld n) = W (col-major k x n, ld k)^T times
        // x (col-major k x t, ld k).
        // SAFETY: device pointers of the sizes above (checked by the callers); alpha/beta are host
        // f32 (the handle's default pointer mode) matching CUBLAS_COMPUTE_32F.
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                t,
                k,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k,
                x as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k,
                (&beta as *const f32).cast(),
                out as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_16BF,
                n,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_err("cublasGemmEx", e))
    }

    /// Waits for the stream and surfaces any asynchronous error (a faulting kernel, a trap).
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.stream.synchronize().map_err(|e| device_err("kernel execution", e))?;
        self.ctx.check_err().map_err(|e| device_err("CUDA context", e))
    }

    /// Synchronises, then copies the observed stages back.
    pub fn download(&self, p: &Prepared) -> Result<Observed, BackendError> {
        self.synchronize()?;
        let mut obs = Observed::new();
        for (stage, data) in Stage::C.into_iter().zip(self.download_qkv(p)?) {
            obs.insert(stage, StageData::Bf16(data));
        }
        if let Some(b) = &p.b {
            obs.insert(Stage::B, StageData::Bf16(self.download_buf(b, "B")?));
        }
        if let Some(r) = &p.inv_rms {
            obs.insert(Stage::InvRms, StageData::F32(self.download_buf(r, "inv_rms")?));
        }
        self.synchronize()?;
        Ok(obs)
    }
}

/// The kernels index with `int`, and store q/k/v in bf16 pairs.
fn check_sizes(s: &Shape) -> Result<(), BackendError> {
    if s.t == 0 {
        return Err(BackendError::BadInput(format!("every dimension must be positive, got {s:?}")));
    }
    for (what, v) in [("T*H", s.t * s.h), ("N*H", s.n() * s.h), ("T*N", s.t * s.n())] {
        if v > i32::MAX as usize {
            return Err(BackendError::BadInput(format!("{what} = {v} overflows the kernels' int indexing")));
        }
    }
    if !s.d.is_multiple_of(2) {
        return Err(BackendError::BadInput(format!("head_dim {} must be even (bf16 pair stores)", s.d)));
    }
    Ok(())
}
