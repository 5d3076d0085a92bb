//! A whole model check: every selected model golden, every selected entry, the controls and the
//! resolution sweep, into a results file. The one implementation behind `cargo xtask model-check`
//! and the tests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fusegate_harness::cancel::{Cancel, Ran};
use fusegate_harness::results::Environment;
use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::registry::Role;
use fusegate_kernels::{Backend, Entry};

use crate::check::{Model, default_entries};
use crate::controls::{CONTROLS, Expect, INJECTED_LAYER, Perturbation, RESOLUTION_SIZES};
use crate::forward::PassError;
use crate::golden::{MANIFEST, PromptRecord};
use crate::results::{ControlReport, EntryReport, ModelCheckRun, ModelReport, ModelSchema};
use crate::{ModelError, check};

/// Why a model check could not finish.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("{0}: no model golden (manifest.json) here")]
    NoGolden(PathBuf),
}

/// What to check.
pub struct Options {
    /// Model golden directories (each holds manifest.json).
    pub goldens: Vec<PathBuf>,
    /// A checkpoint directory to judge instead of regenerating the goldens' synthetic one.
    pub checkpoint: Option<PathBuf>,
    /// Entries to judge; empty: every entry the backend supports.
    pub entries: Vec<&'static Entry>,
    /// Run the controls and the resolution sweep.
    pub controls: bool,
}

/// The committed model goldens: every directory under `root` holding a manifest, in name order.
pub fn committed_goldens(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(MANIFEST).is_file())
        .collect();
    dirs.sort();
    dirs
}

/// golden/model in the workspace (or `$FUSEGATE_MODEL_GOLDEN_DIR`).
pub fn default_golden_root() -> PathBuf {
    std::env::var_os("FUSEGATE_MODEL_GOLDEN_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/model"), PathBuf::from)
}

/// Runs the check; `progress` hears a line per step (a model loaded, an entry judged).
pub fn run(backend: &dyn Backend, opts: &Options, progress: &dyn Fn(&str)) -> Result<ModelCheckRun, GateError> {
    match run_until(backend, opts, progress, &Cancel::new())? {
        Ran::Complete(run) | Ran::Interrupted { partial: run, .. } => Ok(run),
    }
}

/// The steps of a whole check: per model, every entry and every control.
pub fn planned_steps(backend: &dyn Backend, opts: &Options) -> usize {
    let entries = if opts.entries.is_empty() { default_entries(backend).len() } else { opts.entries.len() };
    opts.goldens.len() * (entries + if opts.controls { CONTROLS.len() } else { 0 })
}

/// [`run`], stopping when `cancel` is requested: no entry or control starts after that, and the
/// check comes back as [`Ran::Interrupted`] with what finished.
pub fn run_until(
    backend: &dyn Backend,
    opts: &Options,
    progress: &dyn Fn(&str),
    cancel: &Cancel,
) -> Result<Ran<ModelCheckRun>, GateError> {
    let start = Instant::now();
    let entries = if opts.entries.is_empty() { default_entries(backend) } else { opts.entries.clone() };
    let mut models = Vec::new();
    let steps = Steps { cancel, done: std::cell::Cell::new(0) };
    for dir in &opts.goldens {
        if cancel.requested() {
            break;
        }
        if !dir.join(MANIFEST).is_file() {
            return Err(GateError::NoGolden(dir.clone()));
        }
        let model = Model::load(dir, opts.checkpoint.as_deref())?;
        progress(&format!(
            "{}: loaded ({:?}, {} layers)",
            model.name, model.regime, model.weights.config.num_hidden_layers
        ));
        models.push(check_model(backend, &model, &entries, opts.controls, progress, &steps)?);
    }
    let run = ModelCheckRun {
        schema: ModelSchema::default(),
        backend: backend.id(),
        environment: Environment::capture(backend.device()),
        models,
        seconds: start.elapsed().as_secs_f64(),
    };
    let (ran, planned) = (steps.done.get(), planned_steps(backend, opts));
    Ok(if ran < planned { Ran::Interrupted { partial: run, ran, planned } } else { Ran::Complete(run) })
}

/// The steps done so far, and whether to start another.
struct Steps<'a> {
    cancel: &'a Cancel,
    done: std::cell::Cell<usize>,
}

impl Steps<'_> {
    /// Whether the next step may start.
    fn go(&self) -> bool {
        !self.cancel.requested()
    }

    fn done(&self) {
        self.done.set(self.done.get() + 1);
    }
}

fn check_model(
    backend: &dyn Backend,
    model: &Model,
    entries: &[&'static Entry],
    controls: bool,
    progress: &dyn Fn(&str),
    steps: &Steps,
) -> Result<ModelReport, GateError> {
    let mut reports: Vec<EntryReport> = Vec::new();
    // The host passes the device passes are compared with, one per distinct CPU computation.
    let mut host_refs: Vec<(&'static Entry, Vec<PromptRecord>)> = Vec::new();
    for &entry in entries {
        if !steps.go() {
            break;
        }
        let start = Instant::now();
        // An entry the backend computes exactly as one already judged is reported, not rerun.
        let same = reports.iter().find(|r| backend.same_results(r.entry.entry(), entry));
        let (judged, same_as) = match same {
            Some(r) => (r.judged.clone(), Some(r.entry)),
            None => (model.judge_entry(backend, entry)?, None),
        };
        let word = if judged.verdict.passed() { "within" } else { "outside" };
        let how =
            same_as.map_or(format!("{:.1} s", start.elapsed().as_secs_f64()), |s| format!("the same bits as {s} here"));
        progress(&format!("{}: {} {word} ({how})", model.name, entry.name));
        let mutant_of = match entry.role {
            Role::Mutant { of } => Some(of),
            Role::Variant => None,
        };
        let host_agreement = match backend.as_cuda() {
            Some(_) if check::decides(entry) && Cpu.supports(entry).is_ok() => {
                let known = host_refs.iter().position(|(e, _)| Cpu.same_results(e, entry));
                let i = match known {
                    Some(i) => i,
                    None => {
                        host_refs.push((entry, model.host_records(&Cpu, entry)?));
                        host_refs.len() - 1
                    }
                };
                let figures = model.agreement(backend, entry, &host_refs[i].1)?;
                let worst = figures.layers.iter().map(|d| d.rel_l2).fold(0.0, f64::max);
                progress(&format!("{}: {} device vs host pass: worst layer drift {worst:.2e}", model.name, entry.name));
                Some(figures)
            }
            _ => None,
        };
        reports.push(EntryReport { entry: entry.id, mutant_of, same_as, judged, host_agreement });
        steps.done();
    }
    let (mut control_reports, mut resolution) = (Vec::new(), None);
    if controls {
        for c in &CONTROLS {
            if !steps.go() {
                break;
            }
            let (judged, as_expected) = model.judge_control(backend, c)?;
            progress(&format!("{}: {} {}", model.name, c.name, if as_expected { "as it must" } else { "WRONG" }));
            if let (Perturbation::RelativeNoise { size, .. }, Expect::Rejected { .. }, true) =
                (c.perturbation, c.expect, as_expected)
            {
                // The control is the sweep's first point: smaller errors are tried only below it.
                resolution = Some(model.resolution(backend, INJECTED_LAYER, &RESOLUTION_SIZES)?.unwrap_or(size));
            }
            control_reports.push(ControlReport {
                name: c.name.into(),
                summary: c.summary.into(),
                perturbation: c.perturbation,
                judged,
                as_expected,
            });
            steps.done();
        }
    }
    let prompts = &model.golden.manifest.prompts;
    Ok(ModelReport {
        name: model.name.clone(),
        style: check::style_of(&model.golden),
        layers: model.weights.config.num_hidden_layers,
        prompts: prompts.len(),
        positions: prompts.iter().map(|p| p.ids.len()).sum(),
        provenance: model.golden.manifest.provenance.clone(),
        regime: model.regime,
        floors: model.floors.clone(),
        floor: model.floor.clone(),
        entries: reports,
        controls: control_reports,
        resolution,
    })
}
