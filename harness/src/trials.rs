//! The trial list: one trial per (backend, entry, golden case), plus one invariance trial per
//! (backend, entry). The same list runs under `cargo test` (suites/) and `cargo xtask conform`.

use crate::invariance::{self, InvarianceReport};
use crate::metrics::{self, Comparison};
use crate::truth::{self, Truths};
use crate::verdict::{self, StageReport, Verdict};
use fusegate_golden::{Case, CaseEntry, Manifest, WeightsCache};
use fusegate_kernels::registry::{Fault, Role};
use fusegate_kernels::{Backend, BackendError, Entry, Observed, Stage, StageData, cpu};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// What a trial checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum Check {
    /// The entry against one PyTorch golden case and its contract.
    Golden { case: String },
    /// Determinism and batch invariance on fresh synthetic inputs.
    Invariance,
}

/// Which checks can catch an entry: a variant faces all of them; a mutant only those that can see
/// its defect (a run-to-run reduction-order change is invisible to a single golden comparison).
pub fn checks_for(entry: &Entry) -> (bool, bool) {
    match (entry.role, entry.fault) {
        (Role::Variant, _) => (true, true),
        (_, Some(Fault::BatchVariantOrder { .. } | Fault::RunVariantOrder | Fault::ReadsXEarly)) => (false, true),
        _ => (true, false),
    }
}

/// A backend by name, or why it cannot run here.
#[derive(Clone)]
pub struct BackendSlot {
    pub name: &'static str,
    pub backend: Result<Arc<dyn Backend>, String>,
}

#[derive(Clone)]
pub struct Trial {
    pub backend: BackendSlot,
    pub entry: &'static Entry,
    pub check: Check,
}

impl Trial {
    /// `backend/entry/case`, the name libtest-mimic and the results file use.
    pub fn name(&self) -> String {
        let what = match &self.check {
            Check::Golden { case } => case.as_str(),
            Check::Invariance => "invariance",
        };
        format!("{}/{}/{}", self.backend.name, self.entry.name, what)
    }

    /// Why this trial cannot run here, known before running it (no GPU, no implementation).
    pub fn skip_reason(&self) -> Option<String> {
        match &self.backend.backend {
            Err(why) => Some(why.clone()),
            Ok(b) => b.supports(self.entry).err(),
        }
    }
}

/// Every trial for these backends, entries and cases, in a stable order.
pub fn list(backends: &[BackendSlot], entries: &[&'static Entry], cases: &[CaseEntry]) -> Vec<Trial> {
    let mut out = Vec::new();
    for b in backends {
        for &entry in entries {
            let (golden, invariance) = checks_for(entry);
            if golden {
                for c in cases {
                    out.push(Trial { backend: b.clone(), entry, check: Check::Golden { case: c.name.clone() } });
                }
            }
            if invariance {
                out.push(Trial { backend: b.clone(), entry, check: Check::Invariance });
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// A variant met its contract, or a mutant was rejected.
    Passed,
    /// A variant broke its contract, a mutant slipped through, or the trial could not run.
    Failed(String),
    /// Not runnable here (no GPU, no implementation on this backend).
    Ignored(String),
}

/// Agreement of a GPU result with the CPU emulation of the same entry, per stage.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub stage: Stage,
    pub bit_exact_fraction: f64,
    pub max_ulp: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    pub name: String,
    pub backend: &'static str,
    pub entry: &'static str,
    pub mutant_of: Option<&'static str>,
    #[serde(flatten)]
    pub check: Check,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The contract's verdict on the entry (for a mutant, Fail is the wanted result).
    pub verdict: Option<Verdict>,
    pub stages: Vec<StageReport>,
    pub invariance: Option<InvarianceReport>,
    pub agreement_with_cpu: Vec<Agreement>,
    pub seconds: f64,
}

impl TrialReport {
    /// q, k and v taken together: (bit-exact fraction, max scaled ulp, worst error ratio under the contract's truth).
    pub fn stage_c(&self) -> Option<(f64, u64, f64)> {
        let c: Vec<&StageReport> = self.stages.iter().filter(|s| Stage::C.contains(&s.stage)).collect();
        if c.is_empty() {
            return None;
        }
        let (exact, total) = c.iter().fold((0, 0), |(e, t), s| (e + s.comparison.bit_exact, t + s.comparison.elements));
        let max_ulp = c.iter().map(|s| s.comparison.max_scaled_ulp).max().unwrap_or(0);
        let ratio = c
            .iter()
            .map(|s| s.error_ratio(s.bound.map_or(fusegate_kernels::Truth::GoldenOperands, |b| b.truth)))
            .fold(0.0, f64::max);
        Some((exact as f64 / total.max(1) as f64, max_ulp, ratio))
    }
}

/// A golden case with its truths, loaded once and shared by every trial that needs it.
pub struct Prepared {
    pub case: Case,
    pub truths: Truths,
}

type CaseCell = Arc<OnceLock<Result<Arc<Prepared>, String>>>;

/// Shared state for one run of the trial list: the manifest and the cases already loaded.
pub struct Suite {
    pub manifest: Manifest,
    weights: WeightsCache,
    cases: Mutex<HashMap<String, CaseCell>>,
    /// Seed of the synthetic inputs of invariance trials.
    pub seed: u64,
}

impl Suite {
    pub fn new(manifest: Manifest, seed: u64) -> Suite {
        Suite { manifest, weights: WeightsCache::default(), cases: Mutex::default(), seed }
    }

    /// Loads a case and its truths once; every later call shares the result (or the error).
    ///
    /// The first call for a case must not come from a rayon job that another job for the same case
    /// can be stolen into (re-entrant initialisation deadlocks): parallel runners load every case
    /// first, one job per case (`conform::run`).
    pub fn prepared(&self, name: &str) -> Result<Arc<Prepared>, String> {
        let cell = self.cases.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        cell.get_or_init(|| {
            let entry = self
                .manifest
                .cases
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("no golden case named {name:?} in {}", self.manifest.dir.display()))?;
            let case = self.manifest.load_case(entry, &self.weights).map_err(|e| e.to_string())?;
            let truths = truth::compute(&case.shape, case.eps, &case.x, &case.weights, &case.reference);
            Ok(Arc::new(Prepared { case, truths }))
        })
        .clone()
    }

    /// One line per golden case that failed to load, in case order.
    pub fn load_errors(&self) -> Vec<String> {
        let cases = self.cases.lock().unwrap_or_else(|p| p.into_inner());
        self.manifest
            .cases
            .iter()
            .filter_map(|c| match cases.get(&c.name)?.get()? {
                Err(e) => Some(e.clone()),
                Ok(_) => None,
            })
            .collect()
    }

    /// Runs one trial. Never panics on bad data: every problem becomes a Failed outcome.
    pub fn run(&self, trial: &Trial) -> TrialReport {
        let start = Instant::now();
        let mut report = TrialReport {
            name: trial.name(),
            backend: trial.backend.name,
            entry: trial.entry.name,
            mutant_of: match trial.entry.role {
                Role::Mutant { of } => Some(of),
                Role::Variant => None,
            },
            check: trial.check.clone(),
            outcome: Outcome::Passed,
            verdict: None,
            stages: Vec::new(),
            invariance: None,
            agreement_with_cpu: Vec::new(),
            seconds: 0.0,
        };
        report.outcome = match self.judge(trial, &mut report) {
            Ok(verdict) => {
                let outcome = outcome_of(trial.entry, &verdict);
                report.verdict = Some(verdict);
                outcome
            }
            Err(o) => o,
        };
        report.seconds = start.elapsed().as_secs_f64();
        report
    }

    /// The contract verdict, or the outcome that stopped the trial before a verdict.
    fn judge(&self, trial: &Trial, report: &mut TrialReport) -> Result<Verdict, Outcome> {
        let backend = trial.backend.backend.as_ref().map_err(|why| Outcome::Ignored(why.clone()))?;
        backend.supports(trial.entry).map_err(Outcome::Ignored)?;
        let contract = trial.entry.contract();
        match &trial.check {
            Check::Invariance => {
                let inv = invariance::check(backend.as_ref(), trial.entry, self.seed).map_err(backend_failure)?;
                let verdict = inv.verdict(&contract);
                report.invariance = Some(inv);
                Ok(verdict)
            }
            Check::Golden { case } => {
                let p = self.prepared(case).map_err(Outcome::Failed)?;
                let inputs = p.case.inputs();
                let mut observed = backend.run(trial.entry, &inputs).map_err(backend_failure)?;
                add_head_norms(&mut observed, &p.case);
                if backend.name() != "cpu" {
                    let mut emulated = cpu::run_entry(trial.entry, &inputs);
                    add_head_norms(&mut emulated, &p.case);
                    report.agreement_with_cpu = agreement(&observed, &emulated, &p.case.shape);
                }
                let (verdict, stages) =
                    verdict::evaluate(&contract, &observed, &p.case.reference, &p.truths, &p.case.shape);
                report.stages = stages;
                Ok(verdict)
            }
        }
    }
}

fn backend_failure(e: BackendError) -> Outcome {
    match e {
        BackendError::Unavailable { .. } | BackendError::Unsupported { .. } => Outcome::Ignored(e.to_string()),
        _ => Outcome::Failed(e.to_string()),
    }
}

/// A variant passes by meeting its contract; a mutant passes by being rejected.
fn outcome_of(entry: &Entry, verdict: &Verdict) -> Outcome {
    match (entry.is_mutant(), verdict) {
        (false, Verdict::Pass) => Outcome::Passed,
        (false, Verdict::Fail { reasons }) => Outcome::Failed(reasons.join("; ")),
        (true, Verdict::Fail { .. }) => Outcome::Passed,
        (true, Verdict::Pass) => {
            Outcome::Failed("mutant accepted: the contract cannot see this defect on this case".into())
        }
    }
}

/// Qwen3 applies q_norm / k_norm (HF semantics) to the projection's q and k; measuring the
/// candidate's q/k through them shows whether extreme k_norm weights amplify its error.
fn add_head_norms(observed: &mut Observed, case: &Case) {
    let (d, eps, w) = (case.shape.d, case.eps, &case.weights);
    for (from, to, weight) in [(Stage::Q, Stage::QNormed, &w.q_norm), (Stage::K, Stage::KNormed, &w.k_norm)] {
        if let Some(StageData::Bf16(v)) = observed.get(&from) {
            let normed = cpu::hf_rmsnorm_rows(v, weight, eps, d);
            observed.insert(to, StageData::Bf16(normed));
        }
    }
}

fn agreement(gpu: &Observed, cpu: &Observed, shape: &fusegate_kernels::Shape) -> Vec<Agreement> {
    gpu.iter()
        .filter_map(|(&stage, g)| {
            let c: Comparison = metrics::compare_stage(g, cpu.get(&stage)?, stage.len(shape) / shape.t)?;
            Some(Agreement { stage, bit_exact_fraction: c.bit_exact_fraction(), max_ulp: c.max_scaled_ulp })
        })
        .collect()
}
