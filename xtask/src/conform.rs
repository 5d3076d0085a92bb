//! `cargo xtask conform`: run the conformance suite, print the table, write the results file.

use crate::outputs::results_dir;
use anyhow::Context;
use fusegate_bench::schema::slug;
use fusegate_harness::backends::Choice;
use fusegate_harness::conform::{self, DEFAULT_SEED, Options};
use fusegate_harness::results::{prepare_output, write_atomically};
use fusegate_kernels::BackendId;
use std::path::PathBuf;
use std::process::ExitCode;

/// Check every variant against its precision contract and every mutant for rejection.
#[derive(clap::Args)]
pub struct Args {
    /// Variant or mutant to check (repeatable); a variant brings its mutants. Default: all.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<String>,
    /// Only golden cases whose name matches (substring, or a glob with *).
    #[arg(long, value_name = "PATTERN")]
    case: Option<String>,
    /// auto: CUDA where a GPU is present, else the CPU emulation.
    #[arg(long, default_value = "auto", value_parser = parse_choice)]
    backend: Choice,
    /// Results file. Default: conformance-<backend>.json in the results folder (`--record`:
    /// results/, else target/fusegate/results/), on a GPU under <gpu>/ (a run narrowed by
    /// --variant, --case or --golden: conformance-<backend>-partial.json).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Golden directory (holds manifest.json). Default: golden/data, or $FUSEGATE_GOLDEN_DIR.
    #[arg(long, value_name = "DIR")]
    golden: Option<PathBuf>,
    /// Seed of the synthetic inputs used by the invariance trials.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

fn parse_choice(s: &str) -> Result<Choice, String> {
    s.parse()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    // A run narrowed by any of these checks less than select needs: it never replaces the
    // results file a decision reads, but goes beside it.
    let partial: Vec<&str> =
        [(!a.variants.is_empty(), "--variant"), (a.case.is_some(), "--case"), (a.golden.is_some(), "--golden")]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect();
    if let Some(json) = &a.json {
        prepare_output(json).with_context(|| format!("writing {}", json.display()))?;
    }
    let opts = Options { entries: a.variants, case: a.case, backend: a.backend, golden_dir: a.golden, seed: a.seed };
    let plan = conform::plan(&opts)?;
    anyhow::ensure!(!plan.trials.is_empty(), "no trial matches the options: nothing would be checked");
    for n in &plan.notes {
        println!("{n}");
    }
    println!("{} trials on {}", plan.trials.len(), plan.backend);
    // GPU runs show each trial as it finishes (a hung kernel then shows where it hung).
    let total = plan.trials.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let gpu = plan.backend != BackendId::Cpu;
    let run = conform::run(&plan, |r| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if gpu {
            println!("[{n:>3}/{total}] {} {:?} ({:.2} s)", r.name, r.outcome, r.seconds);
        }
    });
    print!("{}", run.table());
    for n in &run.backend_notes {
        println!("{n}");
    }
    for e in &run.errors {
        eprintln!("error: {e}");
    }
    // GPU results live beside that GPU's benchmarks (select reads them from there).
    let name = format!("conformance-{}{}.json", plan.backend, if partial.is_empty() { "" } else { "-partial" });
    let path = a.json.unwrap_or_else(|| match &run.environment.device {
        Some(device) => results_dir().join(slug(device)).join(&name),
        None => results_dir().join(&name),
    });
    let json = serde_json::to_vec_pretty(&run).context("serialising results")?;
    write_atomically(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    if !partial.is_empty() {
        println!("a partial run ({}): written beside, never over, the whole run's file", partial.join(", "));
    }
    println!("results: {}", path.display());
    Ok(if run.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
