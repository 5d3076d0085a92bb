//! `conform`: select entries, cases and backends, run the trial list, collect a results file.
//! The one implementation behind `cargo xtask conform`, the suites test and the bundled binary.

use crate::backends::{self, Choice};
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
    let start = Instant::now();
    // Load every reference (and its truths) before any trial runs. Loading computes truths with
    // rayon; a rayon worker waiting inside one reference's one-time initialisation may steal
    // another trial of the same reference and re-enter that initialisation, which deadlocks.
    plan.suite.preload(&plan.trials);
    let reports: Vec<TrialReport> = plan
        .trials
        .par_iter()
        .map(|t| {
            let r = plan.suite.run(t);
            on_done(&r);
            r
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
    let mut run = ConformanceRun::new(
        plan.backend,
        Environment::capture(device),
        plan.suite.manifest.provenance.clone(),
        plan.suite.load_errors(),
        reports,
        start.elapsed().as_secs_f64(),
    );
    run.backend_notes = notes;
    run
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
}
