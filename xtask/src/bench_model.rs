//! `cargo xtask bench-model`: the end-to-end time of a whole Qwen3 forward step per variant
//! (decode at several KV-cache lengths, one prefill), and the share of a decode step each variant
//! saves against the standard path.

use anyhow::Context;
use fusegate_bench::e2e::{self, Options};
use fusegate_bench::gpu::measure_ceilings;
use fusegate_bench::schema::slug;
use fusegate_harness::results::{prepare_output, write_atomically};
use fusegate_kernels::EntryId;
use fusegate_kernels::cuda::Cuda;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::outputs::results_dir;

/// Time one decode step and one prefill of a 28-layer Qwen3-0.6B-shaped model per variant.
#[derive(clap::Args)]
pub struct Args {
    /// Decoder layers of the synthetic model.
    #[arg(long, default_value_t = 28)]
    layers: usize,
    /// KV-cache lengths of the decode steps.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256, 512])]
    cache: Vec<usize>,
    /// Tokens of the prefill.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Samples (single graph replays) per decode figure; a prefill takes a quarter.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Variant to time (repeatable). Default: every variant with a GPU implementation.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<EntryId>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Results file (default: results/<gpu>/e2e-cuda.json, where report.md quotes it; its .md beside it).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.layers > 0, "--layers must be at least 1");
    anyhow::ensure!(a.samples >= 5, "--samples must be at least 5");
    let cuda = Cuda::probe().map_err(|r| anyhow::anyhow!("bench-model needs a GPU: {r}"))?;
    let json = a.json.unwrap_or_else(|| results_dir().join(slug(cuda.device_name())).join("e2e-cuda.json"));
    prepare_output(&json).with_context(|| format!("writing {}", json.display()))?;
    let ceilings = measure_ceilings(&cuda).context("measuring the copy bandwidth")?;
    let entries =
        if a.variants.is_empty() { e2e::default_entries() } else { a.variants.iter().map(|v| v.entry()).collect() };
    let o =
        Options { layers: a.layers, seed: a.seed, caches: a.cache, prefill: a.prefill, samples: a.samples, entries };
    let run = e2e::run(&cuda, &ceilings, &o, &|line| eprintln!("bench-model: {line}"))?;
    let md = e2e::markdown(&run);
    print!("{md}");
    write_atomically(&json, serde_json::to_string_pretty(&run)?.as_bytes())
        .with_context(|| format!("writing {}", json.display()))?;
    let md_path = json.with_extension("md");
    write_atomically(&md_path, md.as_bytes()).with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("results: {} ({:.1} s)", json.display(), run.seconds);
    Ok(ExitCode::SUCCESS)
}
