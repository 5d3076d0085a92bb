//! `cargo xtask bench`: device-time benchmarks of the GPU variants and PyTorch baselines.

use crate::outputs::results_dir;
use crate::progress::Progress;
use anyhow::{Context, bail};
use fusegate_bench::criterion_gpu::{self, Baseline};
use fusegate_bench::noise::NoiseThreshold;
use fusegate_bench::run::{self as bench_run, DEFAULT_SEED, DEFAULT_TOKENS, Event, Options};
use fusegate_bench::schema::{BenchRun, Cache, Launch};
use fusegate_bench::stats::StopRule;
use fusegate_bench::{compare, criterion_summary};
use fusegate_bench::{report, select};
use fusegate_harness::results::write_atomically;
use fusegate_kernels::cuda::Cuda;
use fusegate_kernels::registry::{self, CudaImpl};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Time the GPU variants (CUDA events, cold and hot L2) against the floor and PyTorch.
#[derive(clap::Args)]
pub struct Args {
    /// Variant to time (repeatable). Default: every variant with a GPU implementation.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<String>,
    /// Token counts.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TOKENS)]
    tokens: Vec<usize>,
    /// L2 state: cold (flushed / rotated), hot, or both.
    #[arg(long, default_value = "both", value_parser = ["cold", "hot", "both"])]
    cache: String,
    /// Launch regime: serial (each call after the previous one), chained (programmatic dependent
    /// launch, the fused decode kernels only), or both.
    #[arg(long, default_value = "both", value_parser = ["serial", "chained", "both"])]
    launch: String,
    /// Time budget per measurement, seconds (sampling stops earlier once the median's 95% CI < 1%).
    #[arg(long, default_value_t = 2.0)]
    budget: f64,
    /// Skip the PyTorch eager / torch.compile baselines.
    #[arg(long)]
    no_torch: bool,
    /// The PyTorch baseline script (default: bench/scripts/torch_baseline.py).
    #[arg(long, value_name = "PATH")]
    torch_script: Option<PathBuf>,
    /// Compare with an earlier bench JSON: Same / Faster / Slower per (variant, T, cache, launch).
    #[arg(long, value_name = "PATH")]
    compare: Option<PathBuf>,
    /// With --compare: compare this bench JSON instead of running a new benchmark.
    #[arg(long, value_name = "PATH", requires = "compare")]
    with: Option<PathBuf>,
    /// Compare even when the two runs' fingerprints (GPU, driver, CUDA, cuBLAS) differ.
    #[arg(long)]
    force: bool,
    /// Run-to-run noise in percent, for --compare and the criterion pass: a smaller move of the
    /// median is Same. Default: measured on the committed H200 runs (2% cold, 11% hot L2).
    #[arg(long, value_name = "PCT", allow_negative_numbers = true)]
    noise: Option<f64>,
    /// Instead of the JSON bench: a criterion pass over the same matrix (the same graph replays,
    /// CUDA-event time) saved as criterion baseline NAME in results/<gpu>/criterion/.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["criterion_baseline", "compare"])]
    criterion_save: Option<String>,
    /// Instead of the JSON bench: a criterion pass compared with saved baseline NAME (kept as it
    /// is); prints Same / Faster / Slower per benchmark. A Slower row does not fail the command.
    #[arg(long, value_name = "NAME", conflicts_with = "compare")]
    criterion_baseline: Option<String>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

pub fn load_bench(path: &Path) -> anyhow::Result<BenchRun> {
    BenchRun::load(path).map_err(anyhow::Error::msg)
}

fn default_script() -> PathBuf {
    std::env::var_os("FUSEGATE_SCRIPTS")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scripts"), PathBuf::from)
        .join("torch_baseline.py")
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let noise = match a.noise {
        Some(pct) => NoiseThreshold::from_percent(pct).map_err(|e| anyhow::anyhow!("--noise {e}"))?,
        None => NoiseThreshold::default(),
    };
    if let (Some(old), Some(new)) = (&a.compare, &a.with) {
        return print_compare(&load_bench(old)?, &load_bench(new)?, a.force, &noise);
    }
    let criterion = match (a.criterion_save.clone(), a.criterion_baseline.clone()) {
        (Some(name), _) => Some((Baseline::Save(name), "--criterion-save")),
        (_, Some(name)) => Some((Baseline::Compare(name), "--criterion-baseline")),
        _ => None,
    };
    if let Some((baseline, flag)) = &criterion {
        Baseline::check_name(baseline.name()).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
    }
    if a.tokens.contains(&0) {
        bail!("--tokens: T = 0 is not a shape (every token count must be >= 1)");
    }
    if !(a.budget.is_finite() && a.budget > 0.0) {
        bail!("--budget {}: must be a positive number of seconds", a.budget);
    }
    let mut variants = Vec::new();
    for name in &a.variants {
        match registry::find(name) {
            Some(e) if e.cuda != CudaImpl::None && !e.is_mutant() => variants.push(e),
            Some(_) => bail!("--variant {name}: not a variant with a GPU implementation"),
            None => bail!("--variant {name:?}: no such variant"),
        }
    }
    if variants.is_empty() {
        variants = bench_run::default_variants();
    }
    let cuda = Cuda::probe().map_err(|why| anyhow::anyhow!("bench needs a GPU: {why}"))?;
    let caches = match a.cache.as_str() {
        "cold" => vec![Cache::Cold],
        "hot" => vec![Cache::Hot],
        _ => vec![Cache::Cold, Cache::Hot],
    };
    let launches = match a.launch.as_str() {
        "serial" => vec![Launch::Serial],
        "chained" => vec![Launch::Chained],
        _ => vec![Launch::Serial, Launch::Chained],
    };
    let opts = Options {
        variants,
        tokens: a.tokens,
        caches,
        launches,
        stop: StopRule { budget_s: a.budget, ..StopRule::default() },
        seed: a.seed,
        torch_script: (!a.no_torch).then(|| a.torch_script.unwrap_or_else(default_script)),
        results_dir: results_dir(),
    };
    if let Some((baseline, _)) = &criterion {
        return criterion_pass(&cuda, &opts, baseline, &noise);
    }
    let bar = Bar::new(bench_run::plan(&cuda, &opts).len());
    let run = bench_run::run(&cuda, &opts, |event| bar.event(event));
    bar.finish();
    let run = run.map_err(|e| anyhow::anyhow!("bench: {e}"))?;
    let path = bench_run::save(&run, &opts.results_dir).context("writing bench results")?;
    println!("results: {}", path.display());
    write_report(&run, None, &opts.results_dir)?;
    let bad = run.measurements.iter().filter(|m| !m.usable()).count();
    if let Some(old) = &a.compare {
        print_compare(&load_bench(old)?, &run, a.force, &noise)?;
    }
    if bad > 0 {
        eprintln!(
            "error: {bad} measurements are unusable (faster than the floor, or wrong): see their status in the JSON"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar over the measurement matrix on a terminal with each line printed above it; elsewhere
/// the lines alone.
struct Bar(Progress);

impl Bar {
    fn new(measurements: usize) -> Bar {
        Bar(Progress::new("bench", measurements as u64))
    }

    fn event(&self, event: Event) {
        match event {
            Event::Note(line) => self.0.println(line),
            Event::Measured { line, .. } => {
                self.0.println(line);
                self.0.step("");
            }
        }
    }

    fn finish(&self) {
        self.0.finish();
    }
}

/// `--criterion-save` / `--criterion-baseline`: the criterion pass instead of the JSON bench.
fn criterion_pass(
    cuda: &Cuda,
    opts: &Options,
    baseline: &Baseline,
    noise: &NoiseThreshold,
) -> anyhow::Result<ExitCode> {
    let pass = criterion_gpu::pass(cuda, opts, baseline, noise, &|line| println!("{line}"))
        .map_err(|e| anyhow::anyhow!("bench (criterion): {e}"))?;
    println!("criterion: {} (baseline {:?})", pass.out.display(), baseline.name());
    if let Some(rows) = &pass.summary {
        print!("{}", criterion_summary::table(rows));
        let [same, faster, slower] = compare::counts(rows.iter().map(|r| r.change));
        println!("{same} Same, {faster} Faster, {slower} Slower against baseline {:?} ({noise})", baseline.name());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_compare(old: &BenchRun, new: &BenchRun, force: bool, noise: &NoiseThreshold) -> anyhow::Result<ExitCode> {
    let rows = compare::compare(old, new, force, noise).map_err(|e| anyhow::anyhow!("--compare: {e}"))?;
    print!("{}", compare::table(&rows));
    let [same, faster, slower] = compare::counts(rows.iter().map(|r| r.change));
    println!("{same} Same, {faster} Faster, {slower} Slower ({noise})");
    Ok(ExitCode::SUCCESS)
}

/// results/<gpu>/report.md and plot.svg (select rewrites them with its decision).
pub fn write_report(run: &BenchRun, decision: Option<&select::Decision>, results: &Path) -> anyhow::Result<()> {
    let dir = results.join(run.fingerprint.gpu_slug());
    let svg = report::plot_svg(run).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
    write_atomically(&dir.join("latency.svg"), svg.as_bytes()).context("writing latency.svg")?;
    let mut md = report::markdown(run, decision, "latency.svg");
    let e2e_path = dir.join("e2e-cuda.json");
    if e2e_path.is_file() {
        let e2e = fusegate_bench::e2e::E2eRun::load(&e2e_path).map_err(anyhow::Error::msg)?;
        md.push('\n');
        md.push_str(&fusegate_bench::e2e::summary(&e2e, "e2e-cuda.json"));
    }
    write_atomically(&dir.join("report.md"), md.as_bytes()).context("writing report.md")?;
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}
