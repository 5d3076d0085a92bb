//! The CUDA C sources (one `.cu` per op family, embedded in the binary) and their compilation by
//! NVRTC to CUBIN for one architecture. Needs libnvrtc but no device, so it also serves offline
//! checks (`cargo xtask kernels compile`).

use std::ffi::CString;
use std::time::Instant;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use crate::backend::{BackendError, BackendId};

/// Shared device helpers, spliced into each source in place of its `#include "common.cuh"`.
pub const COMMON_CUH: &str = include_str!("../../cuda/common.cuh");
/// The fused kernels of every variant and mutant: the wrapper lines, over the two families below.
pub const FUSED_CU: &str = include_str!("../../cuda/fused_rmsnorm_qkv.cu");
/// The fused tile kernels (tensor-core and fp32), spliced into [`FUSED_CU`].
pub const TILES_CUH: &str = include_str!("../../cuda/tiles.cuh");
/// The fused decode kernels, spliced into [`FUSED_CU`].
pub const DECODE_CUH: &str = include_str!("../../cuda/decode.cuh");
/// The standard path's HF RMSNorm and q/k/v split kernels.
pub const RMSNORM_CU: &str = include_str!("../../cuda/rmsnorm.cu");
pub const PROBES_CU: &str = include_str!("../../cuda/probes.cu");
/// The rest of HF's decoder layer (head norms and RoPE, eager attention, SiLU * up, residual adds,
/// the embedding gather): the model gate's device forward pass.
pub const DECODER_CU: &str = include_str!("../../cuda/decoder.cu");

/// The headers a source may include, by name: NVRTC sees them spliced in, never looks one up.
const HEADERS: [(&str, &str); 3] = [("common.cuh", COMMON_CUH), ("tiles.cuh", TILES_CUH), ("decode.cuh", DECODE_CUH)];

/// One `.cu` file of `kernels/cuda` (one per op family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Fused,
    Rmsnorm,
    /// Kernels that test the launch machinery (`probes.cu`).
    Probes,
    Decoder,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Fused, Source::Rmsnorm, Source::Probes, Source::Decoder];

    pub fn file_name(self) -> &'static str {
        match self {
            Source::Fused => "fused_rmsnorm_qkv.cu",
            Source::Rmsnorm => "rmsnorm.cu",
            Source::Probes => "probes.cu",
            Source::Decoder => "decoder.cu",
        }
    }

    /// The source as NVRTC compiles it: its headers spliced in, so none is looked up.
    pub fn text(self) -> String {
        let body = match self {
            Source::Fused => FUSED_CU,
            Source::Rmsnorm => RMSNORM_CU,
            Source::Probes => PROBES_CU,
            Source::Decoder => DECODER_CU,
        };
        HEADERS
            .iter()
            .fold(body.to_string(), |text, (name, header)| text.replacen(&format!("#include \"{name}\""), header, 1))
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

/// The macros whose invocations (one line each, at the start of a line) define a variant's kernels.
const WRAPPER_MACROS: [&str; 2] = ["FG_MMA_VARIANT(", "FG_F32_VARIANT("];

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
        return Err(BackendError::Unavailable {
            backend: BackendId::Cuda,
            reason: "no NVRTC (libnvrtc.so not found)".into(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{self, CudaImpl, NormRounding};

    #[test]
    fn sources_splice_their_headers() {
        for s in Source::ALL {
            let text = s.text();
            assert!(!text.contains("#include \""), "{}: a header left to look up", s.file_name());
            assert!(text.contains("namespace fg"), "{}", s.file_name());
        }
        let fused = Source::Fused.text();
        for header in [COMMON_CUH, TILES_CUH, DECODE_CUH] {
            assert!(fused.contains(header));
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
    }

    #[test]
    fn every_fused_registry_kernel_has_its_wrappers() {
        for e in registry::all() {
            if let CudaImpl::Fused { kernel } = e.cuda {
                let line = if e.numerics.norm == NormRounding::Fp32 { "FG_F32_VARIANT(" } else { "FG_MMA_VARIANT(" };
                assert!(FUSED_CU.contains(&format!("{line}{kernel},")), "{} ({kernel}) has no wrapper line", e.name);
            }
        }
        // Every wrapper line belongs to a registry entry: no kernel ships that nothing runs.
        for line in FUSED_CU.lines() {
            if let Some(args) = WRAPPER_MACROS.iter().find_map(|m| line.strip_prefix(m)) {
                let kernel = args.split(',').next().unwrap_or("").trim();
                let known =
                    registry::all().iter().any(|e| matches!(e.cuda, CudaImpl::Fused { kernel: k } if k == kernel));
                assert!(known, "{line}: no registry entry runs {kernel}");
            }
        }
    }
}
