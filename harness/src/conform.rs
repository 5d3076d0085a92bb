//! `conform`: select entries, cases and backends, run the trial list, collect a results file.
//! The one implementation behind `cargo xtask conform`, the suites test and the bundled binary.

use crate::backends::{self, Choice};
use crate::cancel::{Cancel, Ran};
use crate::results::{ConformanceRun, Environment};
use crate::suite::Suite;
use crate::trials::{self, BackendSlot, Trial, TrialReport};
use fusegate_golden::{GoldenError, Manifest};
use fusegate_kernels::BackendId;
use fusegate_kernels::registry::{self, Entry, EntryId, Role};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;
use thiserror::Error;

/// Seed of the invariance trials' synthetic inputs unless one is given.
pub const DEFAULT_SEED: u64 = 0x0f05_e6a7;

#[derive(Debug, Error)]
pub enum ConformError {
    #[error("--variant {0:?}: no such variant or mutant (known: {1})")]
    UnknownEntry(String, String),
    #[error("--case {0:?}: matches no golden case in {1}")]
    NoCase(String, String),
    #[error("--backend cuda: {0}")]
    CudaUnavailable(String),
    #[error(transparent)]
    Golden(#[from] GoldenError),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Variant or mutant names; empty means all. A variant brings the mutants that impersonate it.
    pub entries: Vec<String>,
    /// Case name pattern (`*` matches any run of characters); `None` means every case.
    pub case: Option<String>,
    pub backend: Choice,
    pub golden_dir: Option<PathBuf>,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { entries: Vec::new(), case: None, backend: Choice::Auto, golden_dir: None, seed: DEFAULT_SEED }
    }
}

/// The trials to run and what was decided on the way (e.g. which backend `auto` chose).
pub struct Plan {
    pub suite: Suite,
    pub trials: Vec<Trial>,
    pub backend: BackendId,
    pub notes: Vec<String>,
}

/// `*`-glob match; a pattern without `*` matches as a substring.
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else {
                return false;
            };
            rest = &rest[pos + part.len()..];
        }
    }
    rest.is_empty()
}

/// The registry entries named (with the mutants of named variants), or all of them.
pub fn select_entries(names: &[String]) -> Result<Vec<&'static Entry>, ConformError> {
    if names.is_empty() {
        return Ok(registry::all().iter().collect());
    }
    let mut ids = Vec::new();
    for n in names {
        let known = || registry::all().iter().map(|e| e.name).collect::<Vec<_>>().join(", ");
        ids.push(n.parse::<EntryId>().map_err(|_| ConformError::UnknownEntry(n.clone(), known()))?);
    }
    Ok(registry::all()
        .iter()
        .filter(|e| ids.iter().any(|&id| id == e.id || matches!(e.role, Role::Mutant { of } if of == id)))
        .collect())
}

/// Resolves `--backend`: `auto` falls back to the CPU with a note; `cuda` without a GPU is an error.
pub fn resolve_backend(choice: Choice) -> Result<(BackendSlot, Vec<String>), ConformError> {
    match choice {
        Choice::Cpu => Ok((backends::cpu(), vec![])),
        Choice::Cuda => {
            let slot = backends::cuda();
            match &slot.backend {
                Ok(_) => Ok((slot, vec![])),
                Err(why) => Err(ConformError::CudaUnavailable(why.clone())),
            }
        }
        Choice::Auto => {
            let slot = backends::cuda();
            match &slot.backend {
                Ok(_) => Ok((slot, vec!["backend auto: using CUDA".into()])),
                Err(why) => Ok((backends::cpu(), vec![format!("backend auto: {why}; using the CPU emulation")])),
            }
        }
    }
}

pub fn plan(opts: &Options) -> Result<Plan, ConformError> {
    let entries = select_entries(&opts.entries)?;
    let (slot, notes) = resolve_backend(opts.backend)?;
    let dir = opts.golden_dir.clone().unwrap_or_else(Manifest::default_dir);
    let manifest = Manifest::load(&dir)?;
    let cases: Vec<_> =
        manifest.cases.iter().filter(|c| opts.case.as_deref().is_none_or(|p| matches(p, &c.name))).cloned().collect();
    if cases.is_empty() {
        return Err(ConformError::NoCase(opts.case.clone().unwrap_or_default(), dir.display().to_string()));
    }
    let backend = slot.id;
    let trials = trials::list(&[slot], &entries, &cases);
    Ok(Plan { suite: Suite::new(manifest, opts.seed), trials, backend, notes })
}

/// Runs every trial of the plan (in parallel) and assembles the results file's content.
pub fn run(plan: &Plan, on_done: impl Fn(&TrialReport) + Sync) -> ConformanceRun {
    match run_until(plan, &Cancel::new(), on_done) {
        Ran::Complete(run) | Ran::Interrupted { partial: run, .. } => run,
    }
}

/// [`run`], stopping when `cancel` is requested: no trial starts after that, the ones running
/// finish, and the run comes back as [`Ran::Interrupted`] with the trials that ran.
pub fn run_until(plan: &Plan, cancel: &Cancel, on_done: impl Fn(&TrialReport) + Sync) -> Ran<ConformanceRun> {
    let start = Instant::now();
    // Load every reference (and its truths) before any trial runs. Loading computes truths with
    // rayon; a rayon worker waiting inside one reference's one-time initialisation may steal
    // another trial of the same reference and re-enter that initialisation, which deadlocks.
    if !cancel.requested() {
        plan.suite.preload(&plan.trials);
    }
    let reports: Vec<TrialReport> = plan
        .trials
        .par_iter()
        .filter_map(|t| {
            if cancel.requested() {
                return None;
            }
            let r = plan.suite.run(t);
            on_done(&r);
            Some(r)
        })
        .collect();
    let device = plan.trials.iter().find_map(|t| t.backend.backend.as_ref().ok().and_then(|b| b.device()));
    let mut notes: Vec<String> = Vec::new();
    for t in &plan.trials {
        if let Ok(b) = &t.backend.backend {
            for n in b.notes() {
                if !notes.contains(&n) {
                    notes.push(n);
                }
            }
        }
    }
    let (ran, planned) = (reports.len(), plan.trials.len());
    let mut run = ConformanceRun::new(
        plan.backend,
        Environment::capture(device),
        plan.suite.manifest.provenance.clone(),
        plan.suite.load_errors(),
        reports,
        start.elapsed().as_secs_f64(),
    );
    run.backend_notes = notes;
    if ran < planned { Ran::Interrupted { partial: run, ran, planned } } else { Ran::Complete(run) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_substring_matching() {
        assert!(matches("qwen3-*-t1", "qwen3-typical-t1"));
        assert!(!matches("qwen3-*-t1", "qwen3-typical-t128"));
        assert!(matches("typical", "qwen3-typical-t5"));
        assert!(matches("*h64*", "small-h64-t3"));
        assert!(!matches("odd-*", "small-h64-t3"));
    }

    #[test]
    fn a_variant_brings_its_mutants_and_unknown_names_are_errors() {
        let exact = EntryId::Exact.name().to_string();
        let picked: Vec<_> = select_entries(&[exact]).unwrap().iter().map(|e| e.id).collect();
        assert!(picked.contains(&EntryId::Exact) && picked.contains(&EntryId::MutantBatchVariant));
        assert!(!picked.contains(&EntryId::Mixed));
        let err = select_entries(&["fast".into()]).unwrap_err().to_string();
        assert!(err.contains("\"fast\"") && err.contains(EntryId::Mixed.name()) && !err.contains('\n'), "{err}");
    }

    /// Every CPU trial of `exact` and its mutants on one golden case.
    fn small_plan() -> Plan {
        let opts = Options {
            entries: vec![EntryId::Exact.name().into()],
            case: Some("qwen3-typical-t1".into()),
            backend: Choice::Cpu,
            ..Options::default()
        };
        plan(&opts).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_cancel_after_k_trials_stops_the_run_there_and_marks_it_interrupted() {
        let plan = small_plan();
        let planned = plan.trials.len();
        assert!(planned >= 4, "{planned} trials");
        const K: usize = 2;
        let cancel = Cancel::new();
        let done = std::sync::atomic::AtomicUsize::new(0);
        // One worker: no trial is in flight when the k-th finishes, so exactly k run.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let ran = pool.install(|| {
            run_until(&plan, &cancel, |_| {
                if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == K {
                    cancel.request();
                }
            })
        });
        let Ran::Interrupted { partial, ran, planned: p } = ran else { panic!("a cancelled run came back complete") };
        assert_eq!((ran, p), (K, planned));
        assert_eq!(partial.trials.len(), K);
        let s = &partial.summary;
        assert_eq!(s.passed + s.failed + s.ignored + s.shared, K, "{s:?}");
    }

    #[test]
    fn a_run_whose_every_trial_is_ignored_checked_nothing_and_is_not_ok() {
        // The CPU has no launches, so the early-x mutant's one trial (chained launches) is ignored.
        let opts =
            Options { entries: vec![EntryId::MutantEarlyX.name().into()], backend: Choice::Cpu, ..Options::default() };
        let run = run(&plan(&opts).unwrap_or_else(|e| panic!("{e}")), |_| {});
        assert!(!run.trials.is_empty() && run.summary.ignored == run.trials.len(), "{}", run.table());
        assert!(run.checked_nothing() && !run.ok(), "{:?}", run.summary);
    }

    #[test]
    fn on_the_cpu_exact_repeats_standard_and_its_passes_count_as_shared_once() {
        let opts = Options {
            entries: vec![EntryId::Standard.name().into(), EntryId::Exact.name().into()],
            case: Some("qwen3-typical-t1".into()),
            backend: Choice::Cpu,
            ..Options::default()
        };
        let run = run(&plan(&opts).unwrap_or_else(|e| panic!("{e}")), |_| {});
        let of = |id: EntryId| run.trials.iter().filter(move |t| t.entry == id);
        assert!(of(EntryId::Standard).all(|t| t.same_computation_as.is_none()));
        assert!(of(EntryId::Exact).all(|t| t.same_computation_as == Some(EntryId::Standard)));
        // Exact's mutants are computations of their own, judged and counted as ever.
        let mutants: Vec<_> = run.trials.iter().filter(|t| t.mutant_of.is_some()).collect();
        assert!(!mutants.is_empty() && mutants.iter().all(|t| t.same_computation_as.is_none()));
        let s = &run.summary;
        assert_eq!(s.shared, of(EntryId::Exact).count(), "{s:?}");
        assert_eq!(s.passed, of(EntryId::Standard).count() + mutants.len() - s.ignored, "{s:?}");
        let table = run.table();
        let note = "exact shares standard's emulation on the cpu: its rows are one computation, counted once";
        assert_eq!(table.matches(note).count(), 1, "{table}");
        assert!(table.contains(&format!(", {} shared in", s.shared)), "{table}");
        assert!(run.ok(), "{table}");
    }

    #[test]
    fn an_uncancelled_run_is_complete() {
        let plan = small_plan();
        let ran = run_until(&plan, &Cancel::new(), |_| {});
        let Ran::Complete(run) = ran else { panic!("nothing cancelled it") };
        assert_eq!(run.trials.len(), plan.trials.len());
        assert!(run.ok(), "{}", run.table());
    }
}
