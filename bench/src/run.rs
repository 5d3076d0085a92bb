//! One benchmark run: fingerprint, ceilings (cached per machine), every (variant, T, cache), the
//! PyTorch baselines, and the results files under results/<gpu>/.

use crate::gpu::{self, Sampler};
use crate::nvml::Gpu;
use crate::roofline::{self, Ceilings};
use crate::schema::{
    self, Baseline, BaselineId, BenchConfig, BenchRun, Cache, Conditions, Fingerprint, Launch, Measurement,
};
use crate::stats::{Estimate, StopRule};
use fusegate_harness::results::{utc_now, write_atomically};
use fusegate_kernels::cuda::Cuda;
use fusegate_kernels::registry::{self, CudaImpl, Entry};
use fusegate_kernels::{BackendError, Dims, Shape, Weights, synth};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub const DEFAULT_TOKENS: [usize; 7] = [1, 8, 32, 128, 512, 2048, 8192];
/// The seed of the synthetic weights and inputs every timing uses unless told otherwise.
pub const DEFAULT_SEED: u64 = 0x0f05_e6a7;

#[derive(Clone, Debug)]
pub struct Options {
    pub variants: Vec<&'static Entry>,
    pub tokens: Vec<usize>,
    pub caches: Vec<Cache>,
    /// Launch regimes; `Chained` is measured only where the kernel takes part ([`Cuda::chains`]).
    pub launches: Vec<Launch>,
    pub stop: StopRule,
    pub seed: u64,
    /// The PyTorch baseline script; `None` skips the baselines.
    pub torch_script: Option<PathBuf>,
    /// results/ (the run writes results/<gpu>/...).
    pub results_dir: PathBuf,
}

impl Options {
    /// The whole default matrix (every GPU variant, [`DEFAULT_TOKENS`], both caches and launch
    /// regimes, the default stop rule), no PyTorch baselines.
    pub fn full_matrix(results_dir: PathBuf) -> Options {
        Options {
            variants: default_variants(),
            tokens: DEFAULT_TOKENS.to_vec(),
            caches: vec![Cache::Cold, Cache::Hot],
            launches: vec![Launch::Serial, Launch::Chained],
            stop: StopRule::default(),
            seed: DEFAULT_SEED,
            torch_script: None,
            results_dir,
        }
    }
}

/// The variants with a GPU implementation, in registry order.
pub fn default_variants() -> Vec<&'static Entry> {
    registry::variants().filter(|e| e.cuda != CudaImpl::None).collect()
}

pub fn fingerprint(cuda: &Cuda, gpu: Option<&Gpu>) -> Fingerprint {
    let (major, minor) = cuda.compute_capability();
    Fingerprint {
        gpu: cuda.device_name().to_string(),
        sm_count: cuda.sm_count(),
        l2_bytes: cuda.l2_bytes(),
        memory_bytes: gpu.map_or(0, |g| g.total_memory),
        compute_capability: format!("{major}.{minor}"),
        driver: gpu.map_or("unknown (no NVML)".into(), Gpu::driver),
        cuda_driver_api: gpu.map_or("unknown (no NVML)".into(), Gpu::cuda_driver_api),
        cublas: cuda.cublas_version(),
    }
}

/// results/<gpu>/ceilings.json: the ceilings measured on the machine with this fingerprint.
#[derive(Serialize, Deserialize)]
struct CeilingsFile {
    fingerprint: Fingerprint,
    ceilings: Ceilings,
    utc: String,
}

/// Ceilings from results/<gpu>/ceilings.json when its fingerprint matches and it holds every
/// ceiling, else all measured now and saved.
pub fn ceilings(cuda: &Cuda, fp: &Fingerprint, dir: &Path) -> Result<(Ceilings, bool), BackendError> {
    let path = dir.join("ceilings.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(file) = serde_json::from_str::<CeilingsFile>(&text)
        && &file.fingerprint == fp
        && file.ceilings.mma_sync_flops.is_some()
    {
        return Ok((file.ceilings, true));
    }
    let c = gpu::measure_ceilings(cuda)?;
    let file = CeilingsFile { fingerprint: fp.clone(), ceilings: c, utc: utc_now() };
    let _ = write_atomically(&path, serde_json::to_string_pretty(&file).unwrap_or_default().as_bytes());
    Ok((c, false))
}

/// What bench/scripts/torch_baseline.py writes.
#[derive(Deserialize)]
struct TorchOutput {
    baselines: Vec<TorchFigure>,
    /// Why some baselines are missing.
    note: Option<String>,
}

#[derive(Deserialize)]
struct TorchFigure {
    name: BaselineId,
    t: usize,
    cache: Cache,
    time_us: Estimate,
    #[serde(default)]
    bit_exact_vs_hf: Option<f64>,
}

/// Runs the PyTorch baseline script; `Err` says why there are no baselines.
fn torch_baselines(
    script: &Path,
    tokens: &[usize],
    caches: &[Cache],
    ceil: &Ceilings,
) -> Result<Vec<Baseline>, String> {
    let out = std::env::temp_dir().join(format!("fusegate-torch-{}.json", std::process::id()));
    let list = |v: Vec<String>| v.join(",");
    let status = std::process::Command::new("python3")
        .arg(script)
        .args(["--tokens", &list(tokens.iter().map(usize::to_string).collect())])
        .args(["--caches", &list(caches.iter().map(Cache::to_string).collect())])
        .arg("--out")
        .arg(&out)
        .status()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !status.success() {
        return Err(format!("{} exited with {status} (torch or a GPU missing?)", script.display()));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&out);
    let output: TorchOutput = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", out.display()))?;
    let baselines: Vec<Baseline> = output
        .baselines
        .into_iter()
        .map(|f| Baseline {
            name: f.name,
            t: f.t,
            cache: f.cache,
            time_us: f.time_us,
            floor_us: roofline::floor_s(&Shape::qwen3_06b(f.t), ceil) * 1e6,
            bit_exact_vs_hf: f.bit_exact_vs_hf,
        })
        .collect();
    match output.note {
        Some(note) if baselines.is_empty() => Err(note),
        _ => Ok(baselines),
    }
}

/// What every timing pass starts from: the fingerprint, the card's conditions before anything
/// ran, and a sampler with this machine's ceilings.
pub struct Session<'a> {
    pub sampler: Sampler<'a>,
    pub fingerprint: Fingerprint,
    pub conditions_start: Conditions,
}

/// Opens NVML (a note when it is missing), fingerprints the machine and reads or measures its
/// ceilings; `progress` hears what it found.
pub fn session<'a>(cuda: &'a Cuda, opts: &Options, progress: &impl Fn(&str)) -> Result<Session<'a>, BackendError> {
    let gpu =
        Gpu::open().map(Arc::new).map_err(|e| progress(&format!("note: {e}; memory and clocks not recorded"))).ok();
    let fp = fingerprint(cuda, gpu.as_deref());
    let conditions_start = gpu::conditions(gpu.as_deref());
    let (ceil, cached) = ceilings(cuda, &fp, &opts.results_dir.join(fp.gpu_slug()))?;
    progress(&format!(
        "{} ({} SMs, L2 {} MiB): copy {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s{}",
        fp.gpu,
        fp.sm_count,
        fp.l2_bytes >> 20,
        ceil.bandwidth / 1e12,
        ceil.bf16_flops / 1e12,
        if cached { " (cached ceilings)" } else { " (measured now)" }
    ));
    let sampler = Sampler {
        cuda,
        gpu,
        ceilings: ceil,
        l2_bytes: fp.l2_bytes,
        stop: opts.stop,
        seed: opts.seed,
        chained_waits: Default::default(),
    };
    Ok(Session { sampler, fingerprint: fp, conditions_start })
}

/// What a run reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event<'a> {
    /// The machine, a missing library, the baselines.
    Note(&'a str),
    /// Measurement `done` of the plan's `of` finished.
    Measured { done: usize, of: usize, line: &'a str },
}

/// Measures everything in `opts`; `progress` hears each finished measurement and the notes.
pub fn run(cuda: &Cuda, opts: &Options, progress: impl Fn(Event)) -> Result<BenchRun, BackendError> {
    let start = Instant::now();
    let note = |line: &str| progress(Event::Note(line));
    let Session { sampler, fingerprint: fp, conditions_start } = session(cuda, opts, &note)?;
    let ceil = sampler.ceilings;
    let weights = synth::weights(&Dims::QWEN3_06B, opts.seed);
    let measurements = measure_all(&sampler, &plan(cuda, opts), &weights, &progress)?;
    let (baselines, baseline_note) = baselines(opts, &ceil, &note);
    Ok(BenchRun {
        schema: schema::SCHEMA.into(),
        utc: utc_now(),
        git_commit: fusegate_harness::results::Environment::capture(None).git_commit,
        fingerprint: fp,
        conditions_start,
        conditions_end: gpu::conditions(sampler.gpu.as_deref()),
        ceilings: ceil,
        config: BenchConfig {
            tokens: opts.tokens.clone(),
            caches: opts.caches.clone(),
            launches: opts.launches.clone(),
            stop: opts.stop,
            shape: "Qwen3-0.6B attention: H=1024, 16 q heads, 8 kv heads, D=128 (W 4096x1024 bf16)".into(),
        },
        measurements,
        baselines,
        baseline_note,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One measurement to make: (T, variant, launch, cache).
pub type Job = (usize, &'static Entry, Launch, Cache);

/// Every (T, variant, launch, cache) in that nesting order; chained only where the kernel takes part.
pub fn plan(cuda: &Cuda, opts: &Options) -> Vec<Job> {
    let mut plan = Vec::new();
    for &t in &opts.tokens {
        for &entry in &opts.variants {
            for &launch in &opts.launches {
                if launch == Launch::Chained && !cuda.chains(entry, &Shape::qwen3_06b(t)) {
                    continue;
                }
                plan.extend(opts.caches.iter().map(|&cache| (t, entry, launch, cache)));
            }
        }
    }
    plan
}

fn measure_all(
    sampler: &Sampler,
    plan: &[Job],
    weights: &Weights,
    progress: &impl Fn(Event),
) -> Result<Vec<Measurement>, BackendError> {
    let mut measurements = Vec::new();
    for &(t, entry, launch, cache) in plan {
        let m = sampler.measure(entry, Shape::qwen3_06b(t), weights, cache, launch)?;
        let line = format!(
            "[{:>3}/{}] {:<9} T={:<5} {:<4} {:<7} {:>9.2} us  (CI +-{:.2}%, {:.0}% of floor{})",
            measurements.len() + 1,
            plan.len(),
            entry.name,
            t,
            cache,
            launch.to_string(),
            m.time_us.median,
            100.0 * m.time_us.rel_ci(),
            m.pct_of_floor,
            if m.usable() { String::new() } else { format!("; {}", m.status) }
        );
        progress(Event::Measured { done: measurements.len() + 1, of: plan.len(), line: &line });
        measurements.push(m);
    }
    Ok(measurements)
}

/// The PyTorch baselines, or none and why.
fn baselines(opts: &Options, ceil: &Ceilings, progress: &impl Fn(&str)) -> (Vec<Baseline>, Option<String>) {
    let Some(script) = &opts.torch_script else {
        return (Vec::new(), Some("PyTorch baselines skipped (--no-torch)".to_string()));
    };
    progress("PyTorch baselines (eager, torch.compile)...");
    match torch_baselines(script, &opts.tokens, &opts.caches, ceil) {
        Ok(b) => (b, None),
        Err(why) => {
            progress(&format!("note: no PyTorch baselines: {why}"));
            (Vec::new(), Some(why))
        }
    }
}

/// Writes results/<gpu>/bench-<UTC>.json and latest.json; returns the timestamped path.
pub fn save(run: &BenchRun, results_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = results_dir.join(run.fingerprint.gpu_slug());
    let json = serde_json::to_vec_pretty(run).map_err(std::io::Error::other)?;
    let stamp: String = run.utc.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let path = dir.join(format!("bench-{stamp}.json"));
    write_atomically(&path, &json)?;
    write_atomically(&dir.join("latest.json"), &json)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_ceilings_files_read_as_the_type_that_writes_them() {
        for gpu in ["nvidia-h200", "nvidia-h100-80gb-hbm3"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results").join(gpu).join("ceilings.json");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let file: CeilingsFile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(schema::slug(&file.fingerprint.gpu), gpu);
            assert!(file.ceilings.bandwidth > 1e12 && file.ceilings.bf16_flops > 1e14, "{}", path.display());
        }
    }

    #[test]
    fn torch_script_output_parses_typed() {
        let text = r#"{"baselines": [{"name": "torch-compile", "t": 8, "cache": "hot",
            "time_us": {"median": 40.0, "ci_lo": 39.0, "ci_hi": 41.0, "samples": 30}}],
            "note": null, "torch": "2.9.0"}"#;
        let out: TorchOutput = serde_json::from_str(text).unwrap();
        assert_eq!(out.baselines.len(), 1);
        let f = &out.baselines[0];
        assert_eq!((f.name, f.t, f.cache, f.time_us.median), (BaselineId::TorchCompile, 8, Cache::Hot, 40.0));
        assert!(out.note.is_none());
        assert!(serde_json::from_str::<TorchOutput>(&text.replace("torch-compile", "torch-jit")).is_err());
    }
}
