//! The CUDA backend: runs registry entries on an NVIDIA GPU.
//!
//! Kernels live in `kernels/cuda/*.cu` and are embedded in the binary (`include_str!`), so a
//! binary copied to the GPU machine needs nothing beside it; they are compiled at run time by
//! NVRTC to CUBIN for the device's own architecture, lazily and once per process for each
//! (source file, variant) pair: one variant's kernels alone compile in seconds, the whole fused
//! file in tens of seconds (compile times: [`Cuda::compile_times`]; figures in
//! kernels/cuda/NOTES.md).
//!
//! Which kernel runs (decode kernels for few tokens, tile kernels otherwise) and with which grid
//! is decided in one place, [`Cuda::prepare`], from [`decode_plan`], [`pick_tile`] and
//! [`grid_for`]; the launch rules are documented beside the kernels in fused_rmsnorm_qkv.cu.
//!
//! cudarc panics when a CUDA library is missing, so [`Cuda::probe`] checks that each library can
//! be loaded before the first call into it and returns a one-line reason instead; nothing in
//! this module panics on a machine without CUDA.
//!
//! Two levels of API:
//! - [`Backend::run`]: upload, outputs poisoned with NaN, launch, synchronise, check, download.
//! - [`Cuda::prepare`] + [`Cuda::launch`]: device buffers held in a [`Prepared`]; `launch` only
//!   enqueues the kernel(s) on [`Cuda::stream`] (no allocation, no copy, no synchronisation), so
//!   a benchmark can time repeated launches with events or capture them in a graph (event
//!   tracking is off for this context, as graph capture needs); [`Cuda::write_x`] swaps inputs
//!   in place.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cudarc::cublas::{CudaBlas, result as blas_result, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, result as drv, sys,
};
use cudarc::nvrtc::{Ptx, result as nvrtc_result, sys as nvrtc_sys};
use half::bf16;

use crate::backend::{Backend, BackendError, check_inputs};
use crate::op::{Observed, OpInputs, Shape, Stage, StageData};
use crate::registry::{CudaImpl, Entry, NormRounding};

const BACKEND: &str = "cuda";

/// Shared device helpers, spliced into each source in place of its `#include "common.cuh"`.
pub const COMMON_CUH: &str = include_str!("../cuda/common.cuh");
/// The fused kernels of every variant and mutant.
pub const FUSED_CU: &str = include_str!("../cuda/fused_rmsnorm_qkv.cu");
/// The standard path's HF RMSNorm and q/k/v split kernels.
pub const RMSNORM_CU: &str = include_str!("../cuda/rmsnorm.cu");
pub const PROBES_CU: &str = include_str!("../cuda/probes.cu");

/// bf16 quiet NaN: outputs start as this, so an element no kernel wrote stays visible.
pub const BF16_POISON: u16 = 0x7FC0;

/// One `.cu` file of `kernels/cuda` (one per op family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Fused,
    Rmsnorm,
    /// Kernels that test the launch machinery (`probes.cu`).
    Probes,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Fused, Source::Rmsnorm, Source::Probes];

    pub fn file_name(self) -> &'static str {
        match self {
            Source::Fused => "fused_rmsnorm_qkv.cu",
            Source::Rmsnorm => "rmsnorm.cu",
            Source::Probes => "probes.cu",
        }
    }

    /// The source as NVRTC compiles it: common.cuh spliced in, so no header is looked up.
    pub fn text(self) -> String {
        let body = match self {
            Source::Fused => FUSED_CU,
            Source::Rmsnorm => RMSNORM_CU,
            Source::Probes => PROBES_CU,
        };
        body.replacen("#include \"common.cuh\"", COMMON_CUH, 1)
    }

    /// The source with only one variant's wrapper line kept (`variant` = the registry's kernel
    /// name), or all of them for `None`. Each wrapper line instantiates five kernels, and ptxas
    /// spends ~0.3 s on each: compiling the whole fused file for one entry took ~20 s on a
    /// 2-core machine. Dropped lines become blank, so compiler line numbers still match the file.
    pub fn text_for(self, variant: Option<&str>) -> String {
        let text = self.text();
        let Some(want) = variant else { return text };
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let wrapper = WRAPPER_MACROS.iter().find_map(|m| line.strip_prefix(m));
            match wrapper {
                Some(args) if args.split(',').next().map(str::trim) != Some(want) => {}
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

/// The module (a `text_for` key) holding exact's timing-only ablation kernels (`__dec16_abl1..4`,
/// wrong outputs), compiled only when `$FUSEGATE_DEC_VARIANT` names one.
pub const ABLATION_MODULE: &str = "fusegate_exact_ablations";

/// The macros whose invocations (one line each, at the start of a line) define a variant's kernels.
const WRAPPER_MACROS: [&str; 3] = ["FG_MMA_VARIANT(", "FG_F32_VARIANT(", "FG_DV_ABLATIONS("];

/// CUDA include directories for NVRTC (NVRTC 13 has no built-in cuda_bf16.h): `$CUDA_HOME`,
/// `$CUDA_PATH` or /usr/local/cuda, each with `include` and, where it exists, `include/cccl`.
pub fn include_paths() -> Vec<String> {
    let mut roots: Vec<String> = ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(|v| std::env::var(v).ok()).collect();
    roots.push("/usr/local/cuda".into());
    let mut out = Vec::new();
    for root in roots {
        for sub in ["include", "include/cccl"] {
            let p = std::path::Path::new(&root).join(sub);
            let s = p.to_string_lossy().into_owned();
            if p.is_dir() && !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// One NVRTC compilation's product.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub source: Source,
    /// The variant compiled alone, or `None` for the whole file.
    pub variant: Option<String>,
    pub arch: String,
    /// SASS for `arch`, ready for `cuModuleLoadData`.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings; ptxas's resource report when asked with `--ptxas-options=-v`).
    pub log: String,
    pub millis: f64,
}

/// Whether NVRTC can be loaded (cudarc panics on a missing library, so ask first).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// Compiles one source with NVRTC for `arch` (e.g. "sm_90"). Needs libnvrtc but no device, so it
/// also serves offline checks. Errors carry the file name and the compiler log.
pub fn compile(
    source: Source,
    variant: Option<&str>,
    arch: &str,
    extra_options: &[String],
) -> Result<Compiled, BackendError> {
    if !nvrtc_present() {
        return Err(BackendError::Unavailable { backend: BACKEND, reason: "no NVRTC (libnvrtc.so not found)".into() });
    }
    let dev = |what: &str, e: &dyn std::fmt::Display| {
        BackendError::Device(format!("NVRTC {what} of {} failed: {e}", source.file_name()))
    };
    let src = CString::new(source.text_for(variant)).map_err(|e| dev("reading", &e))?;
    let name = CString::new(source.file_name()).map_err(|e| dev("naming", &e))?;
    let mut options: Vec<String> = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    options.extend(include_paths().into_iter().map(|p| format!("--include-path={p}")));
    options.extend(extra_options.iter().cloned());
    let start = Instant::now();
    let prog = nvrtc_result::create_program(&src, Some(name.as_c_str())).map_err(|e| dev("program creation", &e))?;
    // The program is destroyed on every path below.
    struct Guard(nvrtc_sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created by create_program above and destroyed only here.
            let _ = unsafe { nvrtc_result::destroy_program(self.0) };
        }
    }
    let guard = Guard(prog);
    // SAFETY: `prog` is a live program (guarded above).
    let compiled = unsafe { nvrtc_result::compile_program(guard.0, &options) };
    // SAFETY: as above; the log exists after any compile attempt.
    let log = unsafe { nvrtc_result::get_program_log(guard.0) }
        .map(|raw| {
            let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(BackendError::Device(format!(
            "NVRTC failed to compile {} for {arch}: {e}\noptions: {}\n{log}",
            source.file_name(),
            options.join(" ")
        )));
    }
    let mut size = 0usize;
    // SAFETY: a successfully compiled program for a real architecture has a CUBIN.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(guard.0, &mut size) }.result().map_err(|e| dev("CUBIN size query", &e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(guard.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| dev("CUBIN copy", &e))?;
    drop(guard);
    Ok(Compiled {
        source,
        variant: variant.map(str::to_string),
        arch: arch.to_string(),
        cubin,
        log,
        millis: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// A block tile of one fused kernel specialisation, mirroring the `MmaCfg` / `F32Cfg` typedefs in
/// fused_rmsnorm_qkv.cu (the kernel traps when launched with fewer threads or less shared memory
/// than its config needs, so a mismatch fails loudly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Appended to the registry's kernel name: `fusegate_mixed__t16`.
    pub suffix: &'static str,
    /// Tokens per block.
    pub bt: u32,
    /// Rows of W (output columns) per block.
    pub bn: u32,
    pub threads: u32,
    /// Dynamic shared memory, bytes.
    pub smem: u32,
}

/// `MmaCfg<BT, BN, WT, WN, BK, S>`: S stages of raw x, W and norm-weight k-tiles.
const fn mma_tile(suffix: &'static str, bt: u32, bn: u32, warps: u32, bk: u32, stages: u32) -> Tile {
    Tile { suffix, bt, bn, threads: warps * 32, smem: stages * (bt + bn + 1) * bk * 2 }
}

/// `F32Cfg<BT, BN, TM, TN, BK, S>`: raw stages plus fp32 operand and W tiles ([BK][rows + 4]).
const fn f32_tile(suffix: &'static str, bt: u32, bn: u32, tm: u32, tn: u32, bk: u32, stages: u32) -> Tile {
    let raw = stages * (bt + bn + 1) * bk * 2;
    Tile { suffix, bt, bn, threads: (bt / tm) * (bn / tn), smem: raw + bk * (bt + 4) * 4 + bk * (bn + 4) * 4 }
}

/// Tensor-core specialisations, smallest first.
pub const MMA_TILES: [Tile; 4] = [
    mma_tile("__t16", 16, 16, 2, 128, 6),
    mma_tile("__t32", 32, 16, 2, 128, 5),
    mma_tile("__t64", 64, 64, 8, 64, 4),
    mma_tile("__t128", 128, 128, 8, 64, 4),
];

/// fp32 (CUDA-core) specialisations, smallest first.
pub const F32_TILES: [Tile; 4] = [
    f32_tile("__t8", 8, 32, 2, 2, 64, 6),
    f32_tile("__t32", 32, 32, 4, 2, 64, 4),
    f32_tile("__t64", 64, 64, 4, 4, 32, 4),
    f32_tile("__t128", 128, 128, 8, 8, 32, 3),
];

/// The tile kernel for T, used where [`decode_plan`] declines (T > [`DEC_MAX_T`], H % 8 != 0, or
/// an operand too large for shared memory). Small T takes the smallest tile whose N-split
/// (N / BN blocks) still covers every SM; mid-size T the 64x64 tile; T > 256 the 128x128 tile
/// (with the persistent N-loop, one wave). Every tensor-core tile shares one k-order with each
/// other and with exact's decode kernels, so this choice never changes exact's bits.
///
/// Launch selection, in full (`Cuda::prepare`): fused entries go to `NAME__dec16` (T <= 16) or
/// `NAME__dec32` (T <= DEC_MAX_T) when [`decode_plan`] accepts the shape (fp32: `__dec16` for
/// T <= 32), else to `NAME` + [`pick_tile`]'s suffix with [`grid_for`]'s grid.
pub fn pick_tile(fp32: bool, t: usize) -> Tile {
    if fp32 {
        match t {
            0..=8 => F32_TILES[0],
            9..=32 => F32_TILES[1],
            33..=256 => F32_TILES[2],
            _ => F32_TILES[3],
        }
    } else {
        match t {
            0..=16 => MMA_TILES[0],
            17..=64 => MMA_TILES[1],
            65..=256 => MMA_TILES[2],
            _ => MMA_TILES[3],
        }
    }
}

/// A decode-kernel launch (`__dec16` / `__dec32` in fused_rmsnorm_qkv.cu). Tensor-core variants
/// (`dv_kernel`): 512 threads, 16 warps = 4 groups of 8 W rows x 4 k-slices, 32 rows of W per
/// block, the block's 16 or 32 tokens normalised over all of H into shared memory, plus the
/// k-slices' partial sums, plus (`__dec16` / `__dec32`) the block's W, fetched by bulk copies; the
/// `r` kernels (`__dec16r` / `__dec32r`) hold W in registers instead, for an H whose W rows do not
/// fit. fp32 (`dec_f32_kernel`): 256 threads (8 warps normalise, 4 stream W), 32 rows, 16 tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    pub suffix: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub smem: u32,
}

/// Threads of an fp32 decode block (`DEC_THREADS`), of a tensor-core one (`DV_THREADS`), and rows of
/// W either owns (`DEC_ROWS` = `DV_ROWS`).
pub const DEC_THREADS: u32 = 256;
pub const DV_THREADS: u32 = 512;
pub const DEC_ROWS: usize = 32;
/// Shared memory of a tensor-core decode block beyond its operand: the partial sums of k-slices
/// 1..3, a float4 per lane of each of 4 groups and MT m-tiles (`dv_red_bytes`).
pub const fn dv_red_bytes(mt: usize) -> usize {
    3 * 4 * mt * 32 * 16
}
/// Dynamic shared memory of a tensor-core decode block (`dv_smem_bytes`): operand [16*MT][hp],
/// partial sums, and with `w_smem` the block's 32 rows of W at `hp * 2 + 64` bytes each.
pub const fn dv_smem_bytes(mt: usize, hp: usize, w_smem: bool) -> usize {
    16 * mt * hp * 2 + dv_red_bytes(mt) + if w_smem { DEC_ROWS * (hp * 2 + 64) } else { 0 }
}

/// Where the tensor-core decode kernels keep W (`$FUSEGATE_DEC_W` picks one, to compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeW {
    /// Bulk copies into shared memory where the rows fit and the device has them (sm_90), else
    /// registers. The default.
    Auto,
    /// Always the register kernels (`__dec16r` / `__dec32r`).
    Registers,
}

/// The decode kernels serve up to [`DEC_MAX_T`] tokens (32 for fp32): they stream W once per 16
/// or 32 tokens (from L2 after the first T-slice), with no k-tile loop or barrier. They need the
/// 16-byte path (H % 8 == 0) and their shared memory ([`dv_smem_bytes`]) within `max_smem` (the
/// device's opt-in limit per block). `None`: use the tile kernels.
pub fn decode_plan(fp32: bool, s: &Shape, max_smem: usize) -> Option<DecodePlan> {
    decode_plan_with(fp32, s, max_smem, DecodeRule::default())
}

/// Which tensor-core decode kernel serves which T, and where it keeps W. The default is the
/// measured choice; `$FUSEGATE_DEC_MAX_T`, `$FUSEGATE_DEC16_MAX_T` and `$FUSEGATE_DEC_W` override
/// it for [`Cuda`], to measure the alternatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeRule {
    /// Largest T of any decode kernel (tile kernels above).
    pub max_t: usize,
    /// Largest T of the 16-token kernels (`__dec16`, several T-tiles above 16); the 32-token
    /// ones above it.
    pub dec16_max_t: usize,
    pub w: DecodeW,
}

impl Default for DecodeRule {
    fn default() -> Self {
        DecodeRule { max_t: DEC_MAX_T, dec16_max_t: 16, w: DecodeW::Auto }
    }
}

/// Largest T the MMA decode kernels take by default (above it the tile kernels are used).
/// Measured on an H200 (NOTES.md): decode 11.7 us against the tile kernel's 25 us at T = 32,
/// but 40 us against 30 us at T = 128 (each 32-token slice re-runs the prologue and re-streams
/// W); 64 is between the two measurements.
pub const DEC_MAX_T: usize = 64;

/// [`decode_plan`] under a given [`DecodeRule`]. Shared-memory W needs sm_90 ([`Cuda`] asks for
/// [`DecodeW::Registers`] below it).
pub fn decode_plan_with(fp32: bool, s: &Shape, max_smem: usize, rule: DecodeRule) -> Option<DecodePlan> {
    let hp = s.h.div_ceil(64) * 64;
    let fits = |smem: usize| smem + 1024 <= max_smem;
    let (suffix, rows, threads, smem, max_t) = match (fp32, s.t) {
        (true, 0..=32) => ("__dec16", 16, DEC_THREADS, 16 * hp * 4, 32),
        (true, _) => return None,
        (false, t) => {
            let mt = if t <= rule.dec16_max_t { 1 } else { 2 };
            let w_smem = rule.w == DecodeW::Auto && fits(dv_smem_bytes(mt, hp, true));
            let suffix = match (mt, w_smem) {
                (1, true) => "__dec16",
                (1, false) => "__dec16r",
                (_, true) => "__dec32",
                (_, false) => "__dec32r",
            };
            (suffix, 16 * mt, DV_THREADS, dv_smem_bytes(mt, hp, w_smem), rule.max_t)
        }
    };
    if s.t > max_t || !s.h.is_multiple_of(8) || !fits(smem) {
        return None;
    }
    let grid = (s.n().div_ceil(DEC_ROWS) as u32, s.t.div_ceil(rows) as u32, 1);
    Some(DecodePlan { suffix, grid, threads, smem: smem as u32 })
}

/// Grid x for `tile` at `shape`: with `slots` = SMs x resident blocks per SM, each block takes
/// ceil(tiles / slots) consecutive N-tiles, so that the grid is one wave where it can be.
pub fn grid_for(tile: Tile, shape: &Shape, slots: u32) -> (u32, u32, u32) {
    let tiles_n = shape.n().div_ceil(tile.bn as usize) as u32;
    let tiles_t = shape.t.div_ceil(tile.bt as usize) as u32;
    let npb = (tiles_n * tiles_t).div_ceil(slots.max(1)).clamp(1, tiles_n);
    (tiles_n.div_ceil(npb), tiles_t, 1)
}

/// A device buffer whose first element is 16-byte aligned: the fused kernels take their
/// 16-byte vector path (cp.async, LDG.128) only when x, W and the norm weight are, and fall back
/// to scalar loads otherwise. Allocated with 8 spare elements and offset if the allocator's
/// pointer is not aligned.
struct DevBuf<T> {
    buf: CudaSlice<T>,
    off: usize,
    len: usize,
}

impl<T: DeviceRepr> DevBuf<T> {
    fn ptr(&self, stream: &CudaStream) -> sys::CUdeviceptr {
        dptr(&self.buf, stream) + (self.off * std::mem::size_of::<T>()) as u64
    }
}

/// How a launch relates to the one before it on the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
        f.write_str(match self {
            Launch::Serial => "serial",
            Launch::Chained => "chained",
        })
    }
}

/// How one prepared entry is launched.
enum Plan {
    /// `pdl`: launched with programmatic stream serialization ([`Launch::Chained`]).
    Fused {
        func: CudaFunction,
        name: String,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        pdl: bool,
        /// Blocks of this kernel one SM holds at once (the driver's occupancy figure).
        per_sm: u32,
    },
    Standard {
        norm: CudaFunction,
        split: CudaFunction,
    },
}

/// An entry's device buffers and launch plan: [`Cuda::launch`] re-runs it without re-uploading.
pub struct Prepared {
    entry: &'static Entry,
    shape: Shape,
    eps: f32,
    x: DevBuf<bf16>,
    w_norm: DevBuf<bf16>,
    w_qkv: DevBuf<bf16>,
    q: DevBuf<bf16>,
    k: DevBuf<bf16>,
    v: DevBuf<bf16>,
    /// B [T, H]: the standard path's GEMM operand, or a fused kernel's debug copy.
    b: Option<DevBuf<bf16>>,
    inv_rms: Option<DevBuf<f32>>,
    /// The standard path's [T, N] GEMM output before the split.
    gemm_out: Option<DevBuf<bf16>>,
    /// Whether the kernels' 16-byte vector path applies (H % 8 == 0 and aligned inputs).
    vec16: bool,
    plan: Plan,
}

impl Prepared {
    pub fn entry(&self) -> &'static Entry {
        self.entry
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The kernel name and launch configuration, for reports.
    pub fn describe(&self) -> String {
        match &self.plan {
            Plan::Fused { name, grid, block, smem, pdl, per_sm, .. } => format!(
                "{name} grid=({},{},{}) block={block} smem={smem} {per_sm}/SM vec16={}{}",
                grid.0,
                grid.1,
                grid.2,
                self.vec16,
                if *pdl { " pdl" } else { "" }
            ),
            Plan::Standard { .. } => format!(
                "fusegate_hf_rmsnorm grid={} block=256 + cublasGemmEx(bf16, COMPUTE_32F) + fusegate_split_qkv",
                self.shape.t
            ),
        }
    }
}

/// Resource usage of one loaded kernel, as the driver reports it.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub name: String,
    pub registers: i32,
    /// Local memory per thread: non-zero means spills or a stack array.
    pub local_bytes: i32,
    pub static_smem: i32,
}

/// cuBLAS workspace: PyTorch's default on Hopper (CUBLAS_WORKSPACE_CONFIG :4096:8 = 32 MiB).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// A compiled module: a source file, restricted to one variant's kernels or whole.
type ModuleKey = (Source, Option<&'static str>);

/// The CUDA backend. All work goes to one stream; `run` calls are serialised.
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
    /// Which decode kernel serves which T ([`DecodeRule`]'s default unless overridden).
    decode: DecodeRule,
    /// Appended to the tensor-core decode kernel's name (`$FUSEGATE_DEC_VARIANT`, e.g. `_abl1`):
    /// a measurement hook for exact's timing-only ablation kernels ([`ABLATION_MODULE`]; wrong
    /// outputs; NOTES.md v8).
    dec_variant: String,
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, (CudaFunction, KernelInfo)>>,
    compile_ms: Mutex<Vec<(String, f64)>>,
    run_lock: Mutex<()>,
}

/// The default [`DecodeRule`], with `$FUSEGATE_DEC_MAX_T`, `$FUSEGATE_DEC16_MAX_T` and
/// `$FUSEGATE_DEC_W=registers` applied (measurement hooks); registers below sm_90.
fn decode_rule_from_env(cc: (i32, i32)) -> DecodeRule {
    let num = |var: &str| std::env::var(var).ok().and_then(|v| v.parse().ok());
    let d = DecodeRule::default();
    DecodeRule {
        max_t: num("FUSEGATE_DEC_MAX_T").unwrap_or(d.max_t),
        dec16_max_t: num("FUSEGATE_DEC16_MAX_T").unwrap_or(d.dec16_max_t),
        w: if cc.0 < 9 || std::env::var("FUSEGATE_DEC_W").is_ok_and(|v| v == "registers") {
            DecodeW::Registers
        } else {
            d.w
        },
    }
}

/// Launches `func` with programmatic stream serialization ([`Launch::Chained`]): it may start
/// before the previous kernel on `stream` has finished.
///
/// # Safety
/// As `cuLaunchKernelEx`: `args` match the kernel's parameters, and grid, block and shared memory
/// its launch rule; the kernel must not read what the previous kernel writes before its
/// griddepcontrol.wait.
pub unsafe fn launch_chained(
    func: sys::CUfunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    stream: sys::CUstream,
    args: &mut [*mut c_void],
) -> Result<(), cudarc::driver::DriverError> {
    // SAFETY: an all-zero launch attribute is valid plain data; id and value are set next.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: the caller's contract; `cfg` and `attr` outlive the call.
    unsafe { sys::cuLaunchKernelEx(&cfg, func, args.as_mut_ptr(), std::ptr::null_mut()) }.result()
}

/// Blocks of `func` one SM holds at once; a kernel that fits none is an error naming it.
fn occupancy(func: &CudaFunction, name: &str, threads: u32, smem: u32) -> Result<u32, BackendError> {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn device_err(what: impl std::fmt::Display, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> sys::CUdeviceptr {
    // Event tracking is off for this context, so the guard records nothing.
    let (p, _guard) = s.device_ptr(stream);
    p
}

impl Cuda {
    /// Opens device `$FUSEGATE_CUDA_DEVICE` (default 0), or says in one line why it cannot.
    /// Never panics: each library cudarc would load is checked first.
    pub fn probe() -> Result<Cuda, String> {
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
            decode: decode_rule_from_env(cc),
            dec_variant: std::env::var("FUSEGATE_DEC_VARIANT").unwrap_or_default(),
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
    /// Workspace fusegate gives cuBLAS: none (0); the handle uses cuBLAS's own default pool,
    /// allocated with the handle and not queryable, so memory reports should say so.
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
    fn function(
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

    fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<DevBuf<T>, BackendError> {
        let len = len.max(1);
        let size = std::mem::size_of::<T>();
        // SAFETY: every buffer allocated here is uploaded, poisoned or fully written by a kernel
        // before it is read back.
        let buf = unsafe { self.stream.alloc::<T>(len + 16 / size) }
            .map_err(|e| device_err(format!("allocating {what}"), e))?;
        let misalign = (dptr(&buf, &self.stream) % 16) as usize;
        let off = if misalign == 0 || !misalign.is_multiple_of(size) { 0 } else { (16 - misalign) / size };
        Ok(DevBuf { buf, off, len })
    }

    fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<DevBuf<T>, BackendError> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        let (off, len) = (d.off, host.len());
        self.stream
            .memcpy_htod(host, &mut d.buf.slice_mut(off..off + len))
            .map_err(|e| device_err(format!("uploading {what}"), e))?;
        Ok(d)
    }

    fn download_buf<T: DeviceRepr>(&self, d: &DevBuf<T>, what: &str) -> Result<Vec<T>, BackendError> {
        self.stream
            .clone_dtoh(&d.buf.slice(d.off..d.off + d.len))
            .map_err(|e| device_err(format!("downloading {what}"), e))
    }

    fn fill<T: DeviceRepr + Clone>(&self, d: &mut DevBuf<T>, value: T) -> Result<(), BackendError> {
        let host = vec![value; d.len];
        let (off, len) = (d.off, d.len);
        self.stream
            .memcpy_htod(&host, &mut d.buf.slice_mut(off..off + len))
            .map_err(|e| device_err("poisoning outputs", e))
    }

    /// The decode kernel `entry` runs at `s`, if one does (else a tile kernel or the standard path).
    fn decode_for(&self, entry: &Entry, s: &Shape) -> Option<DecodePlan> {
        let CudaImpl::Fused { .. } = entry.cuda else { return None };
        let fp32 = entry.numerics.norm == NormRounding::Fp32;
        decode_plan_with(fp32, s, self.max_smem, self.decode)
    }

    /// Whether `entry` at `s` can be launched [`Launch::Chained`]: its kernel is a tensor-core
    /// decode kernel, the only ones that wait for their predecessor, on a GPU with programmatic
    /// dependent launch (sm_90 and later; below it the launches would not overlap at all).
    pub fn chains(&self, entry: &Entry, s: &Shape) -> bool {
        self.cc.0 >= 9 && entry.numerics.norm != NormRounding::Fp32 && self.decode_for(entry, s).is_some()
    }

    /// Uploads the inputs and plans a serial launch. With `debug`, the fused kernels also write
    /// stage B and inv_rms (one block per T-tile does); production timing passes `false`.
    pub fn prepare(&self, entry: &'static Entry, inp: &OpInputs, debug: bool) -> Result<Prepared, BackendError> {
        self.prepare_with(entry, inp, debug, Launch::Serial)
    }

    /// [`Cuda::prepare`] for a given [`Launch`]; chained where [`Cuda::chains`] says no is an error.
    pub fn prepare_with(
        &self,
        entry: &'static Entry,
        inp: &OpInputs,
        debug: bool,
        launch: Launch,
    ) -> Result<Prepared, BackendError> {
        check_inputs(inp)?;
        if launch == Launch::Chained && !self.chains(entry, &inp.shape) {
            return Err(BackendError::BadInput(format!(
                "{} at T = {}: only the tensor-core decode kernels can be launched chained (PDL)",
                entry.name, inp.shape.t
            )));
        }
        // Callers may be on any thread (trials run on workers): bind the context first, since some
        // driver calls below (the occupancy query) do not bind it and fail with INVALID_CONTEXT.
        self.ctx.bind_to_thread().map_err(|e| device_err("binding the CUDA context to this thread", e))?;
        let s = inp.shape;
        for (what, v) in [("T*H", s.t * s.h), ("N*H", s.n() * s.h), ("T*N", s.t * s.n())] {
            if v > i32::MAX as usize {
                return Err(BackendError::BadInput(format!("{what} = {v} overflows the kernels' int indexing")));
            }
        }
        if !s.d.is_multiple_of(2) {
            return Err(BackendError::BadInput(format!("head_dim {} must be even (bf16 pair stores)", s.d)));
        }
        let plan = match entry.cuda {
            CudaImpl::None => {
                return Err(BackendError::Unsupported { backend: BACKEND, entry: entry.name });
            }
            CudaImpl::Fused { kernel } => {
                let fp32 = entry.numerics.norm == NormRounding::Fp32;
                if let Some(dec) = self.decode_for(entry, &s) {
                    let pdl = launch == Launch::Chained;
                    let variant = if fp32 { "" } else { self.dec_variant.as_str() };
                    let name = format!("{kernel}{}{variant}", dec.suffix);
                    let module = if variant.is_empty() { kernel } else { ABLATION_MODULE };
                    let func = self.function(Source::Fused, Some(module), &name, (self.max_smem - 1024) as u32)?;
                    // All of the SM's shared memory, so that a block of the next (chained) grid
                    // fits beside a running one where two blocks' W and operand do.
                    func.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                        100,
                    )
                    .map_err(|e| device_err(format!("{name}: shared memory carveout"), e))?;
                    let per_sm = occupancy(&func, &name, dec.threads, dec.smem)?;
                    Plan::Fused { func, name, grid: dec.grid, block: dec.threads, smem: dec.smem, pdl, per_sm }
                } else {
                    let tile = pick_tile(fp32, s.t);
                    let name = format!("{kernel}{}", tile.suffix);
                    let func = self.function(Source::Fused, Some(kernel), &name, tile.smem)?;
                    let per_sm = occupancy(&func, &name, tile.threads, tile.smem)?;
                    let grid = grid_for(tile, &s, self.sms * per_sm);
                    Plan::Fused { func, name, grid, block: tile.threads, smem: tile.smem, pdl: false, per_sm }
                }
            }
            CudaImpl::NormThenCublas => Plan::Standard {
                norm: self.function(Source::Rmsnorm, None, "fusegate_hf_rmsnorm", 0)?,
                split: self.function(Source::Rmsnorm, None, "fusegate_split_qkv", 0)?,
            },
        };
        let standard = matches!(plan, Plan::Standard { .. });
        let x = self.upload(inp.x, "x")?;
        let w_norm = self.upload(&inp.weights.norm, "norm weight")?;
        let w_qkv = self.upload(&inp.weights.qkv, "qkv weight")?;
        let q = self.alloc(s.t * s.q_width(), "q")?;
        let k = self.alloc(s.t * s.kv_width(), "k")?;
        let v = self.alloc(s.t * s.kv_width(), "v")?;
        let has_b = standard || (debug && entry.numerics.norm != NormRounding::Fp32);
        let b = if has_b { Some(self.alloc(s.t * s.h, "B")?) } else { None };
        let inv_rms = if debug { Some(self.alloc(s.t, "inv_rms")?) } else { None };
        let gemm_out = if standard { Some(self.alloc(s.t * s.n(), "GEMM output")?) } else { None };
        let st = &self.stream;
        let vec16 = s.h.is_multiple_of(8) && (x.ptr(st) | w_norm.ptr(st) | w_qkv.ptr(st)).is_multiple_of(16);
        Ok(Prepared { entry, shape: s, eps: inp.eps, x, w_norm, w_qkv, q, k, v, b, inv_rms, gemm_out, vec16, plan })
    }

    /// Whether a chained launch of `entry` waits for its predecessor before it reads x: a kernel
    /// that releases it at once and writes `x_late` over x ~100 us later runs first, then the
    /// chained launch, whose q, k, v must equal a serial launch's on `x_late`, bit for bit. (The
    /// bench's graphs cannot show this: there nothing writes x between launches.)
    pub fn chained_waits_for_x(
        &self,
        entry: &'static Entry,
        inp: &OpInputs,
        x_late: &[bf16],
    ) -> Result<bool, BackendError> {
        let s = inp.shape;
        if x_late.len() != s.t * s.h || !(s.t * s.h).is_multiple_of(8) {
            return Err(BackendError::BadInput(format!("x_late: {} elements for a {}x{} x", x_late.len(), s.t, s.h)));
        }
        let mut chained = self.prepare_with(entry, inp, false, Launch::Chained)?;
        let mut serial = self.prepare(entry, &OpInputs { x: x_late, ..*inp }, false)?;
        self.poison(&mut chained)?;
        self.poison(&mut serial)?;
        let late = self.upload(x_late, "x_late")?;
        let writer = self.function(Source::Probes, None, "fusegate_late_writer", 0)?;
        let st = &self.stream;
        let (mut dst, mut src) = (chained.x.ptr(st), late.ptr(st));
        let mut n16 = (s.t * s.h / 8) as i32;
        // Clock cycles: ~100 us at 2 GHz. 20,000 (~10 us) let an early read at T = 1 slip past
        // unseen once on an H100 (run 16).
        let mut spin: i64 = 200_000;
        let mut args: [*mut c_void; 4] = [
            (&mut dst as *mut u64).cast(),
            (&mut src as *mut u64).cast(),
            (&mut n16 as *mut i32).cast(),
            (&mut spin as *mut i64).cast(),
        ];
        // SAFETY: fusegate_late_writer(uint4* dst, const uint4* src, int n16, long long spin); dst
        // and src hold T*H bf16 = n16 16-byte units (DevBuf is 16-byte aligned).
        unsafe { drv::launch_kernel(writer.cu_function(), (4, 1, 1), (256, 1, 1), 0, st.cu_stream(), &mut args) }
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

    /// Overwrites the prepared x with new activations of the same shape (no reallocation, so a
    /// captured graph sees them). Enqueued on [`Cuda::stream`].
    pub fn write_x(&self, p: &mut Prepared, x: &[bf16]) -> Result<(), BackendError> {
        let want = p.shape.t * p.shape.h;
        if x.len() != want {
            return Err(BackendError::BadInput(format!("x has {} elements, the prepared shape needs {want}", x.len())));
        }
        let (off, len) = (p.x.off, p.x.len);
        self.stream.memcpy_htod(x, &mut p.x.buf.slice_mut(off..off + len)).map_err(|e| device_err("writing x", e))
    }

    /// Fills q, k, v (and the debug stages) with NaN, so that unwritten elements show.
    pub fn poison(&self, p: &mut Prepared) -> Result<(), BackendError> {
        let nan = bf16::from_bits(BF16_POISON);
        for buf in [&mut p.q, &mut p.k, &mut p.v] {
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
        let (t, h, nq, nkv, d) = (s.t as i32, s.h as i32, s.nq as i32, s.nkv as i32, s.d as i32);
        let mut eps = p.eps;
        let mut x = p.x.ptr(st);
        let mut wn = p.w_norm.ptr(st);
        let mut wq = p.w_qkv.ptr(st);
        let (mut q, mut k, mut v) = (p.q.ptr(st), p.k.ptr(st), p.v.ptr(st));
        let mut b = p.b.as_ref().map_or(0, |b| b.ptr(st));
        let mut r = p.inv_rms.as_ref().map_or(0, |r| r.ptr(st));
        match &p.plan {
            Plan::Fused { func, name, grid, block, smem, pdl, .. } => {
                let (mut t, mut h, mut nq, mut nkv, mut d) = (t, h, nq, nkv, d);
                let mut args: [*mut c_void; 14] = [
                    (&mut x as *mut u64).cast(),
                    (&mut wn as *mut u64).cast(),
                    (&mut wq as *mut u64).cast(),
                    (&mut q as *mut u64).cast(),
                    (&mut k as *mut u64).cast(),
                    (&mut v as *mut u64).cast(),
                    (&mut b as *mut u64).cast(),
                    (&mut r as *mut u64).cast(),
                    (&mut t as *mut i32).cast(),
                    (&mut h as *mut i32).cast(),
                    (&mut nq as *mut i32).cast(),
                    (&mut nkv as *mut i32).cast(),
                    (&mut d as *mut i32).cast(),
                    (&mut eps as *mut f32).cast(),
                ];
                if *pdl {
                    // SAFETY: as below, and the kernel waits (griddepcontrol.wait) for the previous
                    // grid before it reads x or writes.
                    unsafe { launch_chained(func.cu_function(), *grid, *block, *smem, st.cu_stream(), &mut args) }
                        .map_err(|e| device_err(format!("launching {name} (PDL)"), e))?;
                } else {
                    // SAFETY: the arguments match the fused ABI (FG_PARAMS) in order and type, the
                    // buffers hold the sizes the shape implies (allocated in `prepare`), and the
                    // grid, block and shared memory follow the launch rule of `name`.
                    unsafe {
                        drv::launch_kernel(func.cu_function(), *grid, (*block, 1, 1), *smem, st.cu_stream(), &mut args)
                    }
                    .map_err(|e| device_err(format!("launching {name}"), e))?;
                }
            }
            Plan::Standard { norm, split } => {
                let (mut t_, mut h_) = (t, h);
                let mut args: [*mut c_void; 7] = [
                    (&mut x as *mut u64).cast(),
                    (&mut wn as *mut u64).cast(),
                    (&mut b as *mut u64).cast(),
                    (&mut r as *mut u64).cast(),
                    (&mut t_ as *mut i32).cast(),
                    (&mut h_ as *mut i32).cast(),
                    (&mut eps as *mut f32).cast(),
                ];
                // SAFETY: fusegate_hf_rmsnorm(x, w, b_out, inv_rms_out nullable, T, H, eps);
                // b has T*H elements; one 256-thread block per row.
                unsafe {
                    drv::launch_kernel(
                        norm.cu_function(),
                        (s.t as u32, 1, 1),
                        (256, 1, 1),
                        0,
                        st.cu_stream(),
                        &mut args,
                    )
                }
                .map_err(|e| device_err("launching fusegate_hf_rmsnorm", e))?;
                let out = p.gemm_out.as_ref().map_or(0, |o| o.ptr(st));
                let (alpha, beta) = (1.0f32, 0.0f32);
                let n = s.n() as i32;
                // out[T,N] row-major is column-major N x T (ld N) = W (col-major H x N, ld H)^T
                // times B (col-major H x T, ld H): PyTorch's F.linear, bf16 with fp32 compute.
                // SAFETY: device pointers of the sizes above; alpha/beta are host f32 (the
                // handle's default pointer mode) matching CUBLAS_COMPUTE_32F.
                unsafe {
                    blas_result::gemm_ex(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_T,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        n,
                        t,
                        h,
                        (&alpha as *const f32).cast(),
                        wq as *const c_void,
                        blas_sys::cudaDataType::CUDA_R_16BF,
                        h,
                        b as *const c_void,
                        blas_sys::cudaDataType::CUDA_R_16BF,
                        h,
                        (&beta as *const f32).cast(),
                        out as *mut c_void,
                        blas_sys::cudaDataType::CUDA_R_16BF,
                        n,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(|e| device_err("cublasGemmEx", e))?;
                let mut out = out;
                let (mut t_, mut nq_, mut nkv_, mut d_) = (t, nq, nkv, d);
                let mut args: [*mut c_void; 8] = [
                    (&mut out as *mut u64).cast(),
                    (&mut q as *mut u64).cast(),
                    (&mut k as *mut u64).cast(),
                    (&mut v as *mut u64).cast(),
                    (&mut t_ as *mut i32).cast(),
                    (&mut nq_ as *mut i32).cast(),
                    (&mut nkv_ as *mut i32).cast(),
                    (&mut d_ as *mut i32).cast(),
                ];
                let blocks = (s.t * s.n() / 2).div_ceil(256) as u32;
                // SAFETY: fusegate_split_qkv(out [T,N], q, k, v, T, Nq, Nkv, D), one pair per thread.
                unsafe {
                    drv::launch_kernel(split.cu_function(), (blocks, 1, 1), (256, 1, 1), 0, st.cu_stream(), &mut args)
                }
                .map_err(|e| device_err("launching fusegate_split_qkv", e))?;
            }
        }
        Ok(())
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
        obs.insert(Stage::Q, StageData::Bf16(self.download_buf(&p.q, "q")?));
        obs.insert(Stage::K, StageData::Bf16(self.download_buf(&p.k, "k")?));
        obs.insert(Stage::V, StageData::Bf16(self.download_buf(&p.v, "v")?));
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

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn supports(&self, entry: &Entry) -> Result<(), String> {
        match entry.cuda {
            CudaImpl::None => Err(format!("{} has no CUDA implementation", entry.name)),
            _ => Ok(()),
        }
    }

    fn chained_sees_late_x(
        &self,
        entry: &Entry,
        inputs: &OpInputs,
        x_late: &[bf16],
    ) -> Result<Option<bool>, BackendError> {
        let entry = crate::registry::find(entry.name)
            .ok_or_else(|| BackendError::BadInput(format!("{} is not a registry entry", entry.name)))?;
        if !self.chains(entry, &inputs.shape) {
            return Ok(None);
        }
        let _serial = lock(&self.run_lock);
        self.chained_waits_for_x(entry, inputs, x_late).map(Some)
    }

    fn run(&self, entry: &Entry, inputs: &OpInputs) -> Result<Observed, BackendError> {
        // `prepare` keeps the entry; registry entries are 'static, so look it up by name.
        let entry = crate::registry::find(entry.name)
            .ok_or_else(|| BackendError::BadInput(format!("{} is not a registry entry", entry.name)))?;
        let _serial = lock(&self.run_lock);
        let mut p = self.prepare(entry, inputs, true)?;
        self.poison(&mut p)?;
        self.synchronize()?;
        self.launch(&p)?;
        self.download(&p)
    }

    fn device(&self) -> Option<String> {
        Some(self.device_name().to_string())
    }

    fn notes(&self) -> Vec<String> {
        self.compile_times().iter().map(|(what, ms)| format!("NVRTC compiled {what} in {ms:.0} ms")).collect()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_without_a_gpu_gives_a_one_line_reason() {
        // This machine (and CI) has no CUDA driver: probe must say so, not panic.
        if unsafe { sys::is_culib_present() } {
            eprintln!("a CUDA driver is present here; the no-GPU path is not exercised");
            return;
        }
        match Cuda::probe() {
            Ok(_) => panic!("probe succeeded without a CUDA driver"),
            Err(reason) => {
                assert!(is_one_line(&reason), "{reason:?}");
                assert!(reason.contains("no CUDA driver"), "{reason}");
            }
        }
    }

    #[test]
    fn sources_splice_the_common_header() {
        for s in Source::ALL {
            let text = s.text();
            assert!(!text.contains("#include \"common.cuh\""), "{}", s.file_name());
            assert!(text.contains("namespace fg"), "{}", s.file_name());
        }
    }

    #[test]
    fn one_variant_sources_keep_only_that_wrapper() {
        let full = Source::Fused.text();
        let one = Source::Fused.text_for(Some("fusegate_exact"));
        assert_eq!(full.lines().count(), one.lines().count(), "line numbers must survive");
        assert!(one.contains("FG_MMA_VARIANT(fusegate_exact,"));
        assert!(!one.contains("FG_MMA_VARIANT(fusegate_mixed,"));
        assert!(!one.contains("FG_F32_VARIANT(fusegate_f32,"));
        assert!(one.contains("#define FG_MMA_VARIANT(NAME, NORM, FAULT, CHAINS)"));
        // The timing-only ablations live in a module of their own.
        assert!(!one.contains("FG_DV_ABLATIONS(fusegate_exact_ablations,"));
        let abl = Source::Fused.text_for(Some(ABLATION_MODULE));
        assert!(abl.contains("FG_DV_ABLATIONS(fusegate_exact_ablations, fusegate_exact,"));
        assert!(!abl.contains("FG_MMA_VARIANT(fusegate_exact,"));
    }

    #[test]
    fn every_fused_registry_kernel_has_its_wrappers() {
        for e in crate::registry::all() {
            if let CudaImpl::Fused { kernel } = e.cuda {
                let line = if e.numerics.norm == NormRounding::Fp32 { "FG_F32_VARIANT(" } else { "FG_MMA_VARIANT(" };
                assert!(FUSED_CU.contains(&format!("{line}{kernel},")), "{} ({kernel}) has no wrapper line", e.name);
            }
        }
    }

    #[test]
    fn tiles_match_the_kernel_configs() {
        // Mirrors of the typedefs in fused_rmsnorm_qkv.cu (checked again on the device: the
        // kernels trap on a smaller block or less shared memory than they need).
        let mma = [
            "MmaCfg<16, 16, 1, 2, 128, 6> MmaT16",
            "MmaCfg<32, 16, 1, 2, 128, 5> MmaT32",
            "MmaCfg<64, 64, 2, 4, 64, 4> MmaT64",
            "MmaCfg<128, 128, 2, 4, 64, 4> MmaT128",
        ];
        let f32 = [
            "F32Cfg<8, 32, 2, 2, 64, 6> F32T8",
            "F32Cfg<32, 32, 4, 2, 64, 4> F32T32",
            "F32Cfg<64, 64, 4, 4, 32, 4> F32T64",
            "F32Cfg<128, 128, 8, 8, 32, 3> F32T128",
        ];
        for (tile, cfg) in MMA_TILES.iter().zip(mma).chain(F32_TILES.iter().zip(f32)) {
            assert!(FUSED_CU.contains(cfg), "{cfg}");
            assert!(cfg.ends_with(&format!("T{}", tile.bt)), "{cfg} vs {tile:?}");
            assert!(tile.smem <= 227 * 1024);
        }
    }

    #[test]
    fn decode_plans_follow_the_launch_rule() {
        let optin = 227 * 1024;
        let p = decode_plan(false, &Shape::qwen3_06b(1), optin).unwrap();
        let smem = (16 * 1024 * 2 + dv_red_bytes(1) + 32 * (2048 + 64)) as u32;
        assert_eq!(p, DecodePlan { suffix: "__dec16", grid: (128, 1, 1), threads: 512, smem });
        // Two such blocks fit one SM (228 KiB, 1 KiB reserved per block): the next grid's beside.
        assert!(2 * (smem as usize + 1024) <= 228 * 1024);
        let p = decode_plan(false, &Shape::qwen3_06b(32), optin).unwrap();
        let smem = (32 * 1024 * 2 + dv_red_bytes(2) + 32 * (2048 + 64)) as u32;
        assert_eq!(p, DecodePlan { suffix: "__dec32", grid: (128, 1, 1), threads: 512, smem });
        let rule = DecodeRule { w: DecodeW::Registers, ..DecodeRule::default() };
        let regs = decode_plan_with(false, &Shape::qwen3_06b(5), optin, rule).unwrap();
        assert_eq!(regs.suffix, "__dec16r");
        assert_eq!(regs.smem as usize, 16 * 1024 * 2 + dv_red_bytes(1));
        assert_eq!(decode_plan(false, &Shape::qwen3_06b(64), optin).unwrap().grid, (128, 2, 1));
        assert!(decode_plan(false, &Shape::qwen3_06b(65), optin).is_none());
        let rule = DecodeRule { max_t: 2048, ..DecodeRule::default() };
        let p = decode_plan_with(false, &Shape::qwen3_06b(128), optin, rule).unwrap();
        assert_eq!(p.grid, (128, 4, 1));
        let p = decode_plan(true, &Shape::qwen3_06b(32), optin).unwrap();
        assert_eq!(p, DecodePlan { suffix: "__dec16", grid: (128, 2, 1), threads: 256, smem: 16 * 1024 * 4 });
        assert!(decode_plan(true, &Shape::qwen3_06b(33), optin).is_none());
        // W rows too wide for shared memory: registers; an operand too large too: tile kernels.
        let wide = decode_plan(false, &Shape { t: 3, h: 4096, nq: 4, nkv: 2, d: 64 }, optin).unwrap();
        assert_eq!(wide.suffix, "__dec16r");
        assert!(decode_plan(false, &Shape { t: 20, h: 8192, nq: 4, nkv: 2, d: 64 }, optin).is_none());
        // H not a multiple of 8: tile kernels.
        assert!(decode_plan(false, &Shape { t: 5, h: 769, nq: 4, nkv: 2, d: 64 }, optin).is_none());
        // H = 1000 rounds up to 1024 in shared memory.
        let p = decode_plan(false, &Shape { t: 3, h: 1000, nq: 4, nkv: 2, d: 32 }, optin).unwrap();
        assert_eq!(p.smem as usize, dv_smem_bytes(1, 1024, true));
    }

    #[test]
    fn every_decode_kernel_has_a_wrapper() {
        assert!(FUSED_CU.contains("NAME##__dec16(FG_PARAMS)"));
        for (suffix, mt, w_smem, minb) in
            [("dec16", 1, true, 2), ("dec32", 2, true, 1), ("dec16r", 1, false, 1), ("dec32r", 2, false, 1)]
        {
            let line =
                format!("FG_DV_KERNEL(NAME##__{suffix}, NORM, FAULT, {mt}, CHAINS, {w_smem}, {minb}, fg::DV_FULL)");
            assert!(FUSED_CU.contains(&line), "{line}");
        }
        assert!(FUSED_CU.contains("constexpr int DEC_WARPS = 8, DEC_THREADS = DEC_WARPS * 32;"));
        assert!(FUSED_CU.contains("constexpr int DEC_CWARPS = 4, DEC_ROWS = DEC_CWARPS * 8;"));
        // The tensor-core decode kernels' constants, mirrored by DV_THREADS, DEC_ROWS, dv_red_bytes,
        // dv_smem_bytes.
        assert!(FUSED_CU.contains("constexpr int KSLICES = 4;"));
        assert!(FUSED_CU.contains("constexpr int DV_GROUPS = 4, DV_ROWS = DV_GROUPS * 8;"));
        assert!(FUSED_CU.contains("constexpr int DV_WARPS = DV_GROUPS * KSLICES, DV_THREADS = DV_WARPS * 32;"));
        assert!(FUSED_CU.contains("return (KSLICES - 1) * DV_GROUPS * mt * 32 * 16;"));
        assert!(FUSED_CU.contains("constexpr int dv_w_stride(int hp) { return hp * 2 + 64; }"));
        assert!(
            FUSED_CU.contains("return 16 * mt * hp * 2 + dv_red_bytes(mt) + (wsmem ? DV_ROWS * dv_w_stride(hp) : 0);")
        );
        assert_eq!(DV_THREADS, 4 * 4 * 32);
    }

    #[test]
    fn decode_grids_cover_the_sms_and_prefill_is_one_wave() {
        let s1 = Shape::qwen3_06b(1);
        let tile = pick_tile(false, 1);
        assert_eq!(grid_for(tile, &s1, 132 * 2), (256, 1, 1));
        let s = Shape::qwen3_06b(2048);
        let tile = pick_tile(false, 2048);
        let g = grid_for(tile, &s, 132);
        assert_eq!(g, (8, 16, 1));
        assert!(g.0 * g.1 <= 132);
        // Odd shapes still cover every tile.
        let odd = Shape { t: 37, h: 769, nq: 4, nkv: 2, d: 64 };
        let tile = pick_tile(false, 37);
        let (gx, gy, _) = grid_for(tile, &odd, 132);
        let tiles_n = odd.n().div_ceil(tile.bn as usize) as u32;
        assert!(gx * tiles_n.div_ceil(gx) >= tiles_n && gy * tile.bt >= 37);
    }
}
