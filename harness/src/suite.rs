//! Running the trial list: the references trials are judged against (golden cases, and fresh
//! boundary cases), loaded once and shared, and the judging of one trial.

use crate::invariance;
use crate::metrics::{self, Comparison};
use crate::trials::{Agreement, Check, Outcome, Trial, TrialReport};
use crate::truth::{self, Truths};
use crate::verdict::{self, Verdict};
use fusegate_golden::{Case, Manifest, WeightsCache};
use fusegate_kernels::registry::{self, Role};
use fusegate_kernels::{BackendError, BackendId, Entry, Observed, OpInputs, Shape, Stage, StageData, Weights};
use fusegate_kernels::{cpu, run_once, synth};
use half::bf16;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// What a trial is judged against: the op's inputs, the reference at every stage and its fp64
/// truths. Loaded or computed once and shared by every trial that needs it.
pub struct Reference {
    pub shape: Shape,
    pub eps: f32,
    pub x: Vec<bf16>,
    pub weights: Arc<Weights>,
    /// HF's value at all 8 stages (PyTorch's, or the CPU emulation of HF's numerics).
    pub reference: Observed,
    pub truths: Truths,
}

impl Reference {
    fn new(shape: Shape, eps: f32, x: Vec<bf16>, weights: Arc<Weights>, reference: Observed) -> Reference {
        let truths = truth::compute(&shape, eps, &x, &weights, &reference);
        Reference { shape, eps, x, weights, reference, truths }
    }

    fn from_case(case: Case) -> Reference {
        Reference::new(case.shape, case.eps, case.x, case.weights, case.reference)
    }

    /// Fresh inputs of `shape`, and the CPU emulation of the unfused HF path on them.
    fn fresh(shape: Shape, seed: u64) -> Reference {
        const EPS: f32 = 1e-6;
        let weights = Arc::new(synth::weights(&shape.dims, seed));
        let x = synth::activations(&shape, seed);
        let inputs = OpInputs { shape, x: &x, weights: &weights, eps: EPS };
        let mut reference = cpu::run_entry(registry::baseline(), &inputs);
        add_head_norms(&mut reference, &shape, EPS, &weights);
        Reference::new(shape, EPS, x, weights, reference)
    }

    pub fn inputs(&self) -> OpInputs<'_> {
        OpInputs { shape: self.shape, x: &self.x, weights: &self.weights, eps: self.eps }
    }
}

type Cell<T> = Arc<OnceLock<T>>;
/// One-time cells by key: each reference is computed once, by whichever trial asks first.
type Cells<K, T> = Mutex<HashMap<K, Cell<T>>>;

/// Shared state for one run of the trial list: the manifest and the references already loaded.
pub struct Suite {
    pub manifest: Manifest,
    weights: WeightsCache,
    cases: Cells<String, Result<Arc<Reference>, String>>,
    boundaries: Cells<Shape, Arc<Reference>>,
    /// Seed of the synthetic inputs of invariance and boundary trials.
    pub seed: u64,
}

fn cell<K: std::hash::Hash + Eq, T>(map: &Cells<K, T>, key: K) -> Cell<T> {
    map.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
}

impl Suite {
    pub fn new(manifest: Manifest, seed: u64) -> Suite {
        Suite {
            manifest,
            weights: WeightsCache::default(),
            cases: Mutex::default(),
            boundaries: Mutex::default(),
            seed,
        }
    }

    /// Loads a golden case and its truths once; every later call shares the result (or the error).
    ///
    /// The first call for a reference must not come from a rayon job that another job for the same
    /// reference can be stolen into (re-entrant initialisation deadlocks): parallel runners load
    /// every reference first, one job each ([`Suite::preload`]).
    pub fn prepared(&self, name: &str) -> Result<Arc<Reference>, String> {
        cell(&self.cases, name.to_string())
            .get_or_init(|| {
                let entry = self
                    .manifest
                    .cases
                    .iter()
                    .find(|c| c.name == name)
                    .ok_or_else(|| format!("no golden case named {name:?} in {}", self.manifest.dir.display()))?;
                let case = self.manifest.load_case(entry, &self.weights).map_err(|e| e.to_string())?;
                Ok(Arc::new(Reference::from_case(case)))
            })
            .clone()
    }

    /// The fresh reference of the boundary trials at `shape` (computed once; see [`Suite::prepared`]).
    pub fn boundary(&self, shape: Shape) -> Arc<Reference> {
        let seed = self.seed ^ ((shape.h as u64) << 32) ^ shape.t as u64;
        cell(&self.boundaries, shape).get_or_init(|| Arc::new(Reference::fresh(shape, seed))).clone()
    }

    /// Loads every reference the runnable trials need, one rayon job each, before any trial runs.
    pub fn preload(&self, trials: &[Trial]) {
        use rayon::prelude::*;
        let mut checks: Vec<&Check> = trials
            .iter()
            .filter(|t| t.skip_reason().is_none())
            .map(|t| &t.check)
            .filter(|c| !matches!(c, Check::Invariance))
            .collect();
        checks.sort_by_key(|c| format!("{c:?}"));
        checks.dedup();
        checks.par_iter().for_each(|c| match c {
            Check::Golden { case } => {
                let _ = self.prepared(case); // errors stay cached; the case's trials report them
            }
            Check::Boundary { shape } => {
                self.boundary(*shape);
            }
            Check::Invariance => {}
        });
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
            backend: trial.backend.id,
            entry: trial.entry.id,
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
            same_computation_as: trial.same_computation_as,
            margin: None,
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
        let reference = match &trial.check {
            Check::Invariance => {
                let inv = invariance::check(backend.as_ref(), trial.entry, self.seed).map_err(backend_failure)?;
                let verdict = inv.verdict(&contract);
                report.invariance = Some(inv);
                return Ok(verdict);
            }
            Check::Golden { case } => self.prepared(case).map_err(Outcome::Failed)?,
            Check::Boundary { shape } => self.boundary(*shape),
        };
        let p = reference.as_ref();
        let inputs = p.inputs();
        let mut observed = run_once(backend.as_ref(), trial.entry, &inputs).map_err(backend_failure)?;
        add_head_norms(&mut observed, &p.shape, p.eps, &p.weights);
        // A GPU result on a golden case is also compared with the CPU emulation of the same entry
        // (a boundary trial's reference already is that emulation, of HF's numerics).
        if backend.id() != BackendId::Cpu && matches!(trial.check, Check::Golden { .. }) {
            let mut emulated = cpu::run_entry(trial.entry, &inputs);
            add_head_norms(&mut emulated, &p.shape, p.eps, &p.weights);
            report.agreement_with_cpu = agreement(&observed, &emulated, &p.shape);
        }
        let (verdict, stages) = verdict::evaluate(&contract, &observed, &p.reference, &p.truths, &inputs);
        report.margin = verdict::margin(&stages, &p.shape);
        report.stages = stages;
        Ok(verdict)
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
pub(crate) fn add_head_norms(observed: &mut Observed, shape: &Shape, eps: f32, w: &Weights) {
    let d = shape.d;
    for (from, to, weight) in [(Stage::Q, Stage::QNormed, &w.q_norm), (Stage::K, Stage::KNormed, &w.k_norm)] {
        if let Some(StageData::Bf16(v)) = observed.get(&from) {
            let normed = cpu::hf_rmsnorm_rows(v, weight, eps, d);
            observed.insert(to, StageData::Bf16(normed));
        }
    }
}

fn agreement(gpu: &Observed, cpu: &Observed, shape: &Shape) -> Vec<Agreement> {
    gpu.iter()
        .filter_map(|(&stage, g)| {
            let c: Comparison = metrics::compare_stage(g, cpu.get(&stage)?, stage.len(shape) / shape.t)?;
            Some(Agreement { stage, bit_exact_fraction: c.bit_exact_fraction(), max_ulp: c.max_scaled_ulp })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trials::{self, BOUNDARY_DIMS, BackendSlot};
    use fusegate_kernels::cpu::{Cpu, next_up};
    use fusegate_kernels::{Backend, Dims, EntryId, Layer, PreparedOp};

    static CPU: Cpu = Cpu;

    /// A stand-in GPU (CI has none): the CPU's arithmetic, a kernel change between T = 16 and 17,
    /// and, from `broken_from` tokens on, +1 ulp on every 7th element of q (a wrong path).
    struct FakeGpu {
        broken_from: usize,
    }

    struct FakeOp {
        inner: Box<dyn PreparedOp>,
        h: usize,
        broken_from: usize,
    }

    impl Backend for FakeGpu {
        fn id(&self) -> BackendId {
            BackendId::Cuda
        }
        fn supports(&self, _: &Entry) -> Result<(), String> {
            Ok(())
        }
        fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError> {
            let inner = CPU.prepare(entry, layer)?;
            Ok(Box::new(FakeOp { inner, h: layer.dims.h, broken_from: self.broken_from }))
        }
        fn path_boundaries(&self, _: &Entry, _: &Dims) -> Vec<usize> {
            vec![16, 17]
        }
    }

    impl PreparedOp for FakeOp {
        fn entry(&self) -> &'static Entry {
            self.inner.entry()
        }
        fn run(&mut self, x: &[bf16]) -> Result<Observed, BackendError> {
            let mut obs = self.inner.run(x)?;
            if x.len() / self.h >= self.broken_from
                && let Some(StageData::Bf16(q)) = obs.get_mut(&Stage::Q)
            {
                q.iter_mut().step_by(7).for_each(|v| *v = next_up(*v));
            }
            Ok(obs)
        }
    }

    fn outcomes(broken_from: usize) -> Vec<(String, bool)> {
        let slot = BackendSlot { id: BackendId::Cuda, backend: Ok(Arc::new(FakeGpu { broken_from })) };
        let trials = trials::list(&[slot], &[EntryId::Mixed.entry()], &[]);
        let suite = Suite::new(Manifest::load(&Manifest::default_dir()).expect("committed goldens"), 7);
        suite.preload(&trials);
        trials
            .iter()
            .filter(|t| matches!(t.check, Check::Boundary { .. }))
            .map(|t| (t.name(), suite.run(t).outcome == Outcome::Passed))
            .collect()
    }

    #[test]
    fn boundary_trials_judge_both_sides_of_every_kernel_change_on_every_layer_shape() {
        let honest = outcomes(usize::MAX);
        assert_eq!(honest.len(), 2 * BOUNDARY_DIMS.len(), "{honest:?}");
        assert!(honest.iter().all(|(_, ok)| *ok), "an honest path failed: {honest:?}");
        // A path wrong only above the threshold fails exactly there, on every layer shape.
        let broken = outcomes(17);
        for (name, ok) in &broken {
            assert_eq!(*ok, name.ends_with("-t16"), "{name}: {broken:?}");
        }
    }
}
