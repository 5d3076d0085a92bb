//! One benchmark run: fingerprint, ceilings (cached per machine), every (variant, T, cache), the
//! PyTorch baselines, and the results files under results/<gpu>/.

use crate::bench::gpu::{self, Sampler};
use crate::bench::nvml::Gpu;
use crate::bench::schema::{self, Baseline, BenchConfig, BenchRun, Cache, Fingerprint, Launch};
use crate::bench::stats::{Estimate, StopRule};
use crate::results::{utc_now, write_atomically};
use crate::roofline::{self, Ceilings};
use fusegate_kernels::cuda::Cuda;
use fusegate_kernels::registry::{self, CudaImpl, Entry};
use fusegate_kernels::{BackendError, Shape, synth};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub const DEFAULT_TOKENS: [usize; 7] = [1, 8, 32, 128, 512, 2048, 8192];

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

/// Ceilings from results/<gpu>/ceilings.json when its fingerprint matches, else measured and saved.
pub fn ceilings(cuda: &Cuda, fp: &Fingerprint, dir: &Path) -> Result<(Ceilings, bool), BackendError> {
    let path = dir.join("ceilings.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && serde_json::from_value::<Fingerprint>(v["fingerprint"].clone()).is_ok_and(|f| &f == fp)
        && let Ok(c) = serde_json::from_value::<Ceilings>(v["ceilings"].clone())
    {
        return Ok((c, true));
    }
    let c = gpu::measure_ceilings(cuda)?;
    let doc = serde_json::json!({"fingerprint": fp, "ceilings": c, "utc": utc_now()});
    let _ = write_atomically(&path, serde_json::to_string_pretty(&doc).unwrap_or_default().as_bytes());
    Ok((c, false))
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
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let mut b = Vec::new();
    for r in v["baselines"].as_array().into_iter().flatten() {
        let t = r["t"].as_u64().unwrap_or(0) as usize;
        let cache = if r["cache"] == "hot" { Cache::Hot } else { Cache::Cold };
        let time_us: Estimate = serde_json::from_value(r["time_us"].clone()).map_err(|e| e.to_string())?;
        b.push(Baseline {
            name: r["name"].as_str().unwrap_or("?").to_string(),
            t,
            cache,
            time_us,
            floor_us: roofline::floor_s(&Shape::qwen3_06b(t), ceil) * 1e6,
        });
    }
    match v["note"].as_str() {
        Some(note) if b.is_empty() => Err(note.to_string()),
        _ => Ok(b),
    }
}

/// Measures everything in `opts`; `progress` hears one line per finished measurement.
pub fn run(cuda: &Cuda, opts: &Options, progress: impl Fn(&str)) -> Result<BenchRun, BackendError> {
    let start = Instant::now();
    let gpu =
        Gpu::open().map(Arc::new).map_err(|e| progress(&format!("note: {e}; memory and clocks not recorded"))).ok();
    let fp = fingerprint(cuda, gpu.as_deref());
    let dir = opts.results_dir.join(fp.gpu_slug());
    let conditions_start = gpu::conditions(gpu.as_deref());
    let (ceil, cached) = ceilings(cuda, &fp, &dir)?;
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
        gpu: gpu.clone(),
        ceilings: ceil,
        l2_bytes: fp.l2_bytes,
        stop: opts.stop,
        seed: opts.seed,
        chained_waits: Default::default(),
    };
    let weights = synth::weights(&Shape::qwen3_06b(1), opts.seed);
    let mut measurements = Vec::new();
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
    let total = plan.len();
    for (t, entry, launch, cache) in plan {
        let m = sampler.measure(entry, Shape::qwen3_06b(t), &weights, cache, launch)?;
        progress(&format!(
            "[{:>3}/{total}] {:<9} T={:<5} {:<4} {:<7} {:>9.2} us  (CI +-{:.2}%, {:.0}% of floor{})",
            measurements.len() + 1,
            entry.name,
            t,
            cache,
            launch.to_string(),
            m.time_us.median,
            100.0 * m.time_us.rel_ci(),
            m.pct_of_floor,
            if m.usable() { String::new() } else { format!("; {}", m.status) }
        ));
        measurements.push(m);
    }
    let (baselines, baseline_note) = match &opts.torch_script {
        None => (Vec::new(), Some("PyTorch baselines skipped (--no-torch)".to_string())),
        Some(script) => {
            progress("PyTorch baselines (eager, torch.compile)...");
            match torch_baselines(script, &opts.tokens, &opts.caches, &ceil) {
                Ok(b) => (b, None),
                Err(why) => {
                    progress(&format!("note: no PyTorch baselines: {why}"));
                    (Vec::new(), Some(why))
                }
            }
        }
    };
    Ok(BenchRun {
        schema: schema::SCHEMA.into(),
        utc: utc_now(),
        git_commit: crate::results::Environment::capture(None).git_commit,
        fingerprint: fp,
        conditions_start,
        conditions_end: gpu::conditions(gpu.as_deref()),
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
