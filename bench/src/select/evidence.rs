//! What select demands of its conformance evidence before any gate can open.
//! - Complete: every variant it decides on was judged on every committed golden case (a partial
//!   run, `conform --case` or `--variant`, cannot decide: select refuses it, naming what is
//!   missing).
//! - Sighted: every mutant of a variant that the backend implements was rejected by that variant's
//!   contract. A mutant that slips through shows the gate blind to that defect, so the variant's
//!   gate closes. (A mutant the backend does not implement is ignored there, not counted: the CPU
//!   suite judges it.)
//! - Of the benchmarked build: conformance judged the code the bench timed (the same commit, not
//!   a modified tree) on the same class of GPU. Gates from other code, or from another GPU, say
//!   nothing about the kernels being timed.

use std::collections::{BTreeMap, BTreeSet};

use fusegate_harness::results::ConformanceRun;
use fusegate_harness::{Check, Outcome};
use fusegate_kernels::{BackendId, EntryId};

use super::Gates;
use crate::schema::BenchRun;

/// Refuses a conformance run in which a variant of `gates` lacks a golden trial of a case in
/// `cases` (the committed manifest's case names).
pub fn check_complete(
    run: &ConformanceRun,
    backend: BackendId,
    gates: &BTreeMap<EntryId, Gates>,
    cases: &[String],
) -> Result<(), String> {
    for &variant in gates.keys() {
        let seen: BTreeSet<&str> = run
            .trials
            .iter()
            .filter(|t| t.backend == backend && t.entry == variant && t.mutant_of.is_none())
            .filter_map(|t| match &t.check {
                Check::Golden { case } => Some(case.as_str()),
                _ => None,
            })
            .collect();
        let missing: Vec<&str> = cases.iter().map(String::as_str).filter(|c| !seen.contains(c)).collect();
        if let Some(first) = missing.first() {
            return Err(format!(
                "{variant} was judged on {} of the {} committed golden cases (missing {first}{}): a partial \
                 conformance run cannot decide; run `cargo xtask conform --backend {backend}` without --case/--variant",
                cases.len() - missing.len(),
                cases.len(),
                if missing.len() > 1 { format!(" and {} more", missing.len() - 1) } else { String::new() }
            ));
        }
    }
    Ok(())
}

/// Closes the gate of every variant one of whose mutants slipped through on `backend`.
pub fn close_blind(gates: &mut BTreeMap<EntryId, Gates>, run: &ConformanceRun, backend: BackendId) {
    for t in run.trials.iter().filter(|t| t.backend == backend) {
        let (Some(of), Outcome::Failed(why)) = (t.mutant_of, &t.outcome) else { continue };
        if let Some(g) = gates.get_mut(&of) {
            if g.sighted {
                g.reason = Some(format!("blind: {} slipped through its contract ({}: {why})", t.entry, t.name));
            }
            g.sighted = false;
        }
    }
}

/// Refuses conformance that did not judge the build the bench timed: another commit, a tree with
/// uncommitted changes (its commit does not name its code), or another GPU model.
pub fn check_same_build(bench: &BenchRun, conformance: &ConformanceRun) -> Result<(), String> {
    let (timed, judged) = (&bench.git_commit, &conformance.environment.git_commit);
    if let Some(c) = [timed, judged].into_iter().find(|c| c.ends_with("-dirty") || c.as_str() == "unknown") {
        return Err(format!(
            "built from {c}: a build with uncommitted changes (or of unknown origin) cannot be named as \
             evidence; commit, then rerun conform and bench"
        ));
    }
    if timed != judged {
        return Err(format!(
            "conformance judged commit {judged}, the bench timed commit {timed}: rerun both from one build \
             (./bundle/run.sh all)"
        ));
    }
    let device = conformance.environment.device.as_deref().unwrap_or("no GPU");
    if device != bench.fingerprint.gpu {
        return Err(format!(
            "conformance ran on {device}, the bench on {}: gates must come from the GPU that was timed",
            bench.fingerprint.gpu
        ));
    }
    Ok(())
}
