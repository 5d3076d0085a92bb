//! `cargo xtask conform`: run the conformance suite, print the table, write the results file.

use crate::cases::CaseArgs;
use crate::interrupt::{self, EXIT_INTERRUPTED};
use crate::outputs::results_dir;
use crate::progress::Progress;
use anyhow::Context;
use fusegate_bench::schema::slug;
use fusegate_harness::cancel::Ran;
use fusegate_harness::conform::{self, DEFAULT_SEED, Options};
use fusegate_harness::results::{ConformanceRun, prepare_output, write_atomically};
use fusegate_kernels::BackendId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Check every variant against its precision contract and every mutant for rejection.
#[derive(clap::Args)]
pub struct Args {
    /// Variant or mutant to check (repeatable); a variant brings its mutants. Default: all.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<String>,
    #[command(flatten)]
    cases: CaseArgs,
    /// Results file. Default: conformance-<backend>.json in the results folder (`--record`:
    /// results/, else target/fusegate/results/), on a GPU under <gpu>/ (a run narrowed by
    /// --variant, --case or --golden: conformance-<backend>-partial.json).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Seed of the synthetic inputs used by the invariance trials.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    // A run narrowed by any of these checks less than select needs: it never replaces the
    // results file a decision reads, but goes beside it.
    let partial: Vec<&str> =
        (!a.variants.is_empty()).then_some("--variant").into_iter().chain(a.cases.narrowing()).collect();
    if let Some(json) = &a.json {
        prepare_output(json).with_context(|| format!("writing {}", json.display()))?;
    }
    let CaseArgs { case, backend, golden } = a.cases;
    let opts = Options { entries: a.variants, case, backend, golden_dir: golden, seed: a.seed };
    let plan = conform::plan(&opts)?;
    anyhow::ensure!(!plan.trials.is_empty(), "no trial matches the options: nothing would be checked");
    let cancel = interrupt::install();
    for n in &plan.notes {
        println!("{n}");
    }
    println!("{} trials on {}", plan.trials.len(), plan.backend);
    let total = plan.trials.len();
    let progress = Progress::new("conform", total as u64);
    let done = AtomicUsize::new(0);
    // GPU runs also print each trial as it finishes (a hung kernel then shows where it hung).
    let gpu = plan.backend != BackendId::Cpu;
    let ran = conform::run_until(&plan, cancel, |r| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        progress.step(&r.name);
        if gpu {
            progress.println(&format!("[{n:>3}/{total}] {} {:?} ({:.2} s)", r.name, r.outcome, r.seconds));
        }
    });
    progress.finish();
    // GPU results live beside that GPU's benchmarks (select reads them from there).
    let name = format!("conformance-{}{}.json", plan.backend, if partial.is_empty() { "" } else { "-partial" });
    let path = a.json.unwrap_or_else(|| match &ran.result().environment.device {
        Some(device) => results_dir().join(slug(device)).join(&name),
        None => results_dir().join(&name),
    });
    conclude(&ran, &path, &partial)
}

/// Prints what ran; writes the results file only for a complete run. The exit code: 130 for an
/// interrupted run, 1 for a failure or a run that checked nothing, else 0.
fn conclude(ran: &Ran<ConformanceRun>, path: &Path, partial: &[&str]) -> anyhow::Result<ExitCode> {
    let run = ran.result();
    print!("{}", run.table());
    for n in &run.backend_notes {
        println!("{n}");
    }
    for e in &run.errors {
        eprintln!("error: {e}");
    }
    if let Some(line) = ran.interrupted_line("trials") {
        println!("{line}");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let json = fusegate_harness::results::to_json_lines(run).context("serialising results")?;
    interrupt::uninterrupted(|| write_atomically(path, &json))
        .with_context(|| format!("writing {}", path.display()))?;
    if !partial.is_empty() {
        println!("a partial run ({}): written beside, never over, the whole run's file", partial.join(", "));
    }
    println!("results: {}", path.display());
    if run.checked_nothing() {
        println!("nothing was checked: every trial was ignored (the reasons are in the table)");
    }
    Ok(if run.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_harness::backends::Choice;
    use fusegate_harness::cancel::Cancel;

    #[test]
    fn an_interrupted_run_writes_nothing_and_exits_130() {
        let opts = Options {
            entries: vec!["exact".into()],
            case: Some("qwen3-typical-t1".into()),
            backend: Choice::Cpu,
            ..Options::default()
        };
        let plan = conform::plan(&opts).unwrap();
        let cancel = Cancel::new();
        cancel.request();
        let ran = conform::run_until(&plan, &cancel, |_| {});
        assert!(matches!(ran, Ran::Interrupted { ran: 0, .. }), "{ran:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conformance-cpu.json");
        let code = conclude(&ran, &path, &[]).unwrap();
        assert_eq!(code, ExitCode::from(EXIT_INTERRUPTED));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "an interrupted run wrote something");
        // The control: the same path is written by a complete run.
        let ran = conform::run_until(&plan, &Cancel::new(), |_| {});
        assert_eq!(conclude(&ran, &path, &[]).unwrap(), ExitCode::SUCCESS);
        assert!(ConformanceRun::load(&path).is_ok());
    }
}
