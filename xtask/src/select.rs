//! `cargo xtask select`: the production decision from the latest conformance and bench results.

use crate::bench::{load_bench, write_report};
use crate::outputs::results_dir;
use anyhow::{Context, bail};
use fusegate_bench::schema::{Launch, slug};
use fusegate_bench::select::{self, Mix, ModelEvidence};
use fusegate_golden::Manifest;
use fusegate_harness::results::{ConformanceRun, write_atomically};
use fusegate_kernels::BackendId;
use fusegate_model::results::ModelCheckRun;

/// The model check whose verdicts gate the decision, in results/<gpu>/.
const MODEL_CHECK: &str = "model-cuda.json";
use std::process::ExitCode;

/// Choose the production variant per token bucket from results/<gpu>/{latest,conformance-cuda,model-cuda}.json.
#[derive(clap::Args)]
pub struct Args {
    /// GPU directory under results/ (e.g. nvidia-h200). Default: this machine's GPU, else the only
    /// one with a bench.
    #[arg(long)]
    gpu: Option<String>,
    /// Traffic shares of decode (T 1-32), small prefill (33-512) and prefill (> 512).
    #[arg(long, default_value = "0.7,0.2,0.1")]
    mix: Mix,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let results = results_dir();
    // On a GPU machine, its own results; elsewhere, the only GPU with results.
    let here = fusegate_kernels::cuda::Cuda::probe().ok().map(|c| slug(c.device_name()));
    let gpu = match a.gpu.or(here) {
        Some(g) => g,
        None => {
            let found: Vec<String> = std::fs::read_dir(&results)
                .with_context(|| format!("reading {}", results.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("latest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            match found.as_slice() {
                [one] => one.clone(),
                [] => bail!("no results/<gpu>/latest.json: run `cargo xtask bench` on a GPU first"),
                many => bail!("several GPUs have results ({}): pass --gpu", many.join(", ")),
            }
        }
    };
    let dir = results.join(&gpu);
    let bench_path = dir.join("latest.json");
    let conf_path = dir.join("conformance-cuda.json");
    let bench = load_bench(&bench_path)?;
    if !conf_path.is_file() {
        bail!("no {} (run `cargo xtask conform --backend cuda` on this GPU)", conf_path.display());
    }
    let conf = ConformanceRun::load(&conf_path).map_err(anyhow::Error::msg)?;
    let gates = select::gates_from_conformance(&conf, BackendId::Cuda);
    if gates.is_empty() {
        bail!("{}: no CUDA conformance trials", conf_path.display());
    }
    let manifest = Manifest::load_default().context("the committed golden manifest (what conformance must cover)")?;
    let cases: Vec<String> = manifest.cases.iter().map(|c| c.name.clone()).collect();
    select::check_complete(&conf, BackendId::Cuda, &gates, &cases)
        .map_err(|why| anyhow::anyhow!("{}: {why}", conf_path.display()))?;
    select::check_same_build(&bench, &conf).map_err(|why| anyhow::anyhow!("{}: {why}", conf_path.display()))?;
    let model_path = dir.join(MODEL_CHECK);
    if !model_path.is_file() {
        bail!(
            "no {} (run `cargo xtask model-check --backend cuda` on this GPU: README, Model gate)",
            model_path.display()
        );
    }
    let model_run = ModelCheckRun::load(&model_path).map_err(anyhow::Error::msg)?;
    let judged_on = model_run.environment.device.clone().unwrap_or_default();
    if model_run.backend != BackendId::Cuda || !judged_on.starts_with(&bench.fingerprint.gpu) {
        bail!(
            "{}: a model check on {} ({judged_on}), the bench ran on {}: the model gate must come from the same GPU",
            model_path.display(),
            model_run.backend,
            bench.fingerprint.gpu
        );
    }
    // Sources as the repository names them (results/<gpu>/...), not as this machine's paths.
    let name = |f: &str| format!("results/{gpu}/{f}");
    let model = ModelEvidence::from_run(&model_run, name(MODEL_CHECK));
    let sources = (name("latest.json"), name("conformance-cuda.json"));
    // The serial decision is the default; where the bench has chained figures, the decision for
    // a PDL-enabled stack goes beside it.
    let chained = bench.measurements.iter().any(|m| m.launch == Launch::Chained);
    let mut decision = None;
    for launch in [Launch::Serial, Launch::Chained].into_iter().filter(|&l| l == Launch::Serial || chained) {
        let d = select::decide(&bench, gates.clone(), &model, a.mix, sources.clone(), launch);
        let stem = if launch == Launch::Serial { "decision" } else { "decision-chained" };
        let json = serde_json::to_vec_pretty(&d).context("serialising the decision")?;
        write_atomically(&dir.join(format!("{stem}.json")), &json).with_context(|| format!("writing {stem}.json"))?;
        let md = d.markdown();
        write_atomically(&dir.join(format!("{stem}.md")), md.as_bytes())
            .with_context(|| format!("writing {stem}.md"))?;
        print!("{md}");
        decision.get_or_insert(d);
    }
    write_report(&bench, decision.as_ref(), &results)?;
    Ok(ExitCode::SUCCESS)
}
