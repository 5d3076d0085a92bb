//! The model gate on one model: HF's goldens and floors, then each registry entry (and each control)
//! inside the forward pass, judged by its model contract against HF's own noise.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use fusegate_harness::Verdict;
use fusegate_kernels::cuda::{Cuda, Launch};
use fusegate_kernels::registry::{self, Role};
use fusegate_kernels::{Backend, BackendError, Entry, ModelContract};
use serde::{Deserialize, Serialize};

use crate::boundaries::{self, BoundaryPrefill};
use crate::controls::{Control, Expect, Perturb, Perturbation};
use crate::forward::device::{DeviceForward, DeviceTables};
use crate::forward::tap::{Tap, Untouched};
use crate::forward::{Forward, ForwardPass, Logits, ModelTables, PassError};
use crate::golden::{ModelGolden, PromptRecord, RunId};
use crate::metrics::{self, Candidate, Figures};
use crate::{Checkpoint, ModelError, Qwen3Weights, SynthStyle, synthesize};

/// Same-top-1 agreement of every HF floor run at or above which a model's output is stable enough
/// for KL, top-1 and greedy agreement to mean something (NUMERICS.md: 95% for the stable synthetic
/// model; 48% for the seed-shaped one, where only per-layer drift separates).
pub const STABLE_TOP1_PCT: f64 = 95.0;

/// Whether output figures can separate anything on this model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// HF's own floors agree on top-1 at >= 95% of positions: judged at the output and per layer.
    Stable,
    /// HF's own floors disagree at the output: judged by per-layer drift alone.
    Chaotic,
}

/// HF's noise floor: per figure, the worst of its floor runs against its reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Floor {
    pub drift: Vec<f64>,
    pub mean_kl: f64,
    pub same_top1_pct: f64,
    pub rms_delta_p_pct: f64,
    /// The earliest first-divergent greedy token of any floor run (None: none diverged).
    pub first_divergent_token: Option<usize>,
}

impl Floor {
    fn from_runs(runs: &BTreeMap<RunId, Figures>) -> Floor {
        let n = runs.values().map(|f| f.layers.len()).max().unwrap_or(0);
        let worst = |g: &dyn Fn(&Figures) -> f64| runs.values().map(g).fold(0.0, f64::max);
        let output = |f: &Figures| f.output.clone().unwrap_or_default();
        Floor {
            drift: (0..n).map(|l| worst(&|f| f.layers.get(l).map_or(0.0, |d| d.rel_l2))).collect(),
            mean_kl: worst(&|f| output(f).mean_kl),
            same_top1_pct: runs.values().map(|f| output(f).same_top1_pct).fold(100.0, f64::min),
            rms_delta_p_pct: worst(&|f| output(f).rms_delta_p_pct),
            first_divergent_token: runs.values().flat_map(|f| f.first_divergent_token.iter().flatten()).min().copied(),
        }
    }
}

/// A model ready to judge entries on.
pub struct Model {
    pub name: String,
    pub golden: ModelGolden,
    pub weights: Qwen3Weights,
    pub floors: BTreeMap<RunId, Figures>,
    pub floor: Floor,
    pub regime: Regime,
    /// The host pass's widened weights, made on first use (a device pass never needs them).
    tables: OnceLock<ModelTables>,
    /// The weights on the device, uploaded on first use by a GPU backend.
    device: OnceLock<DeviceTables>,
}

impl Model {
    /// The golden in `golden_dir` and its checkpoint: `checkpoint` where given, else regenerated
    /// from the golden's synthetic spec, checked bit for bit against the file HF read (sha256).
    pub fn load(golden_dir: &Path, checkpoint: Option<&Path>) -> Result<Model, ModelError> {
        let golden = ModelGolden::load(golden_dir)?;
        let weights = match checkpoint {
            Some(dir) => Checkpoint::open(dir)?.weights,
            None => regenerate(&golden)?,
        };
        let prompts = prompt_ids(&golden);
        let mut floors = BTreeMap::new();
        for run in RunId::FLOORS {
            if let Some(records) = golden.runs.get(&run) {
                let candidates: Vec<Candidate> = records.iter().map(Candidate::Golden).collect();
                let greedy: Option<Vec<Vec<u32>>> = records.iter().map(|r| r.greedy.clone()).collect();
                let f = metrics::figures(
                    golden.reference(),
                    &candidates,
                    &prompts,
                    greedy.as_deref(),
                    weights.config.hidden_size,
                );
                floors.insert(run, f);
            }
        }
        let floor = Floor::from_runs(&floors);
        let regime = if floor.same_top1_pct >= STABLE_TOP1_PCT { Regime::Stable } else { Regime::Chaotic };
        let name =
            golden_dir.file_name().map_or_else(|| golden_dir.display().to_string(), |n| n.to_string_lossy().into());
        let (tables, device) = (OnceLock::new(), OnceLock::new());
        Ok(Model { name, golden, weights, floors, floor, regime, tables, device })
    }

    /// The weights widened for the host pass.
    pub fn tables(&self) -> &ModelTables {
        self.tables.get_or_init(|| ModelTables::new(&self.weights))
    }

    /// Positions a pass over the goldens reaches on `backend`: the longest prompt and its greedy
    /// continuation, or the longest boundary prefill.
    pub fn positions(&self, backend: &dyn Backend) -> usize {
        let m = &self.golden.manifest;
        let golden = m.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0) + m.greedy + 1;
        golden.max(boundaries::longest(backend, self))
    }

    /// The weights on `cuda`, uploaded on first use.
    pub fn device_tables(&self, cuda: &Cuda) -> Result<&DeviceTables, BackendError> {
        if let Some(t) = self.device.get() {
            return Ok(t);
        }
        let t = DeviceTables::upload(cuda, &self.weights, self.positions(cuda))?;
        Ok(self.device.get_or_init(|| t))
    }

    /// Judges `entry` on `backend` (with `tap` perturbing its q, k, v where a control asks); with
    /// `greedy`, also decodes greedily against HF's continuations (informative, not judged: only
    /// where the output is stable, and it costs a decode step per token).
    pub fn judge(
        &self,
        backend: &dyn Backend,
        entry: &'static Entry,
        tap: &mut dyn Tap,
        greedy: bool,
    ) -> Result<Judged, PassError> {
        let prompts = prompt_ids(&self.golden);
        let logits = self.output_logits();
        let mut pass = self.pass(backend, entry)?;
        let outs = prompts.iter().map(|ids| pass.teacher_forced(ids, logits, tap)).collect::<Result<Vec<_>, _>>()?;
        let greedy = match (self.regime, greedy) {
            (Regime::Stable, true) => {
                let hf = self.golden.reference().iter().map(|r| r.greedy.clone().unwrap_or_default());
                Some(
                    prompts
                        .iter()
                        .zip(hf)
                        .map(|(ids, hf)| pass.greedy(ids, &hf, tap))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            _ => None,
        };
        let candidates: Vec<Candidate> =
            outs.iter().map(|o| Candidate::Pass { layers: &o.layers, logits: &o.logits }).collect();
        let figures = metrics::figures(
            self.golden.reference(),
            &candidates,
            &prompts,
            greedy.as_deref(),
            self.weights.config.hidden_size,
        );
        let (verdict, first_drifting_layer) = self.verdict(&figures, &entry.contract().model);
        Ok(Judged { figures, verdict, first_drifting_layer, boundaries: Vec::new() })
    }

    /// A pass of `entry` on `backend`: the whole pass on the device where the backend is a GPU,
    /// else the host's reference ops around the backend's prepared entry.
    pub fn pass<'a>(
        &'a self,
        backend: &'a dyn Backend,
        entry: &'static Entry,
    ) -> Result<Box<dyn ForwardPass + 'a>, PassError> {
        let err = |source| PassError::Backend { entry: entry.name, source };
        Ok(match backend.as_cuda() {
            Some(cuda) => {
                let device = self.device_tables(cuda).map_err(err)?;
                Box::new(DeviceForward::new(cuda, device, &self.weights, entry, Launch::Serial).map_err(err)?)
            }
            None => Box::new(Forward::new(self.tables(), &self.weights, backend, entry)?),
        })
    }

    /// `entry`'s host pass on `host`, recorded as a reference (see [`metrics::record_of`]).
    pub fn host_records(&self, host: &dyn Backend, entry: &'static Entry) -> Result<Vec<PromptRecord>, PassError> {
        let k = self.golden.manifest.topk;
        let prompts = prompt_ids(&self.golden);
        let mut pass = self.pass(host, entry)?;
        prompts
            .iter()
            .map(|ids| Ok(metrics::record_of(&pass.teacher_forced(ids, self.output_logits(), &mut Untouched)?, ids, k)))
            .collect()
    }

    /// How far `entry`'s pass on `backend` is from `host_records` (the same numerics through the
    /// other implementation of the forward pass), measured as the gate measures against HF.
    pub fn agreement(
        &self,
        backend: &dyn Backend,
        entry: &'static Entry,
        host_records: &[PromptRecord],
    ) -> Result<Figures, PassError> {
        let prompts = prompt_ids(&self.golden);
        let mut pass = self.pass(backend, entry)?;
        let ours = prompts
            .iter()
            .map(|ids| pass.teacher_forced(ids, self.output_logits(), &mut Untouched))
            .collect::<Result<Vec<_>, _>>()?;
        let candidates: Vec<Candidate> =
            ours.iter().map(|o| Candidate::Pass { layers: &o.layers, logits: &o.logits }).collect();
        Ok(metrics::figures(host_records, &candidates, &prompts, None, self.weights.config.hidden_size))
    }

    /// A chaotic model's output cannot separate anything: its logits are not computed.
    fn output_logits(&self) -> Logits {
        if self.regime == Regime::Stable { Logits::Every } else { Logits::None }
    }

    /// The model contract's verdict, and the first layer whose drift leaves the floor (the bisect).
    pub fn verdict(&self, f: &Figures, c: &ModelContract) -> (Verdict, Option<usize>) {
        let mut reasons = Vec::new();
        let drifting: Vec<usize> = f
            .layers
            .iter()
            .zip(&self.floor.drift)
            .enumerate()
            .filter(|(_, (d, floor))| !at_most(d.rel_l2, c.max_drift_over_floor * **floor))
            .map(|(l, _)| l)
            .collect();
        if let Some(&l) = drifting.first() {
            let (d, floor) = (f.layers[l].rel_l2, self.floor.drift[l]);
            reasons.push(format!(
                "layer {l} drifts {d:.3e} from HF, over {}x HF's floor {floor:.3e} ({} layers over)",
                c.max_drift_over_floor,
                drifting.len()
            ));
        }
        if let (Regime::Stable, Some(o)) = (self.regime, &f.output) {
            let (kl, floor) = (o.mean_kl, self.floor.mean_kl);
            if !at_most(kl, c.max_kl_over_floor * floor) {
                reasons.push(format!("mean KL {kl:.3e} nats over {}x HF's floor {floor:.3e}", c.max_kl_over_floor));
            }
            let (top1, floor) = (o.same_top1_pct, self.floor.same_top1_pct);
            let allowed = c.top1_allowance_pct(floor, o.positions);
            if !at_most(floor - allowed, top1) {
                reasons.push(format!(
                    "same top-1 {top1:.1}% below HF's floor {floor:.1}% by more than {allowed:.1} points"
                ));
            }
        }
        let verdict = if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail { reasons } };
        (verdict, drifting.first().copied())
    }

    /// Judges a control: the honest baseline with the control's perturbation on its q, k, v.
    pub fn judge_control(&self, backend: &dyn Backend, control: &Control) -> Result<(Judged, bool), PassError> {
        let judged = self.judge(backend, registry::baseline(), &mut Perturb::new(control.perturbation), false)?;
        let as_expected = match control.expect {
            Expect::Rejected { layer } => !judged.verdict.passed() && judged.first_drifting_layer == Some(layer),
            Expect::Accepted => judged.verdict.passed(),
        };
        Ok((judged, as_expected))
    }

    /// The smallest of `sizes` (largest first) whose injected error at `layer` the gate rejects
    /// and locates there; the sweep stops at the first size it does not.
    pub fn resolution(&self, backend: &dyn Backend, layer: usize, sizes: &[f64]) -> Result<Option<f64>, PassError> {
        let mut smallest = None;
        for &size in sizes {
            let p = Perturbation::RelativeNoise { layer, size, seed: 0x5e5 };
            let j = self.judge(backend, registry::baseline(), &mut Perturb::new(p), false)?;
            if j.verdict.passed() || j.first_drifting_layer != Some(layer) {
                break;
            }
            smallest = Some(size);
        }
        Ok(smallest)
    }

    /// Judges an entry with nothing perturbed; variants also decode greedily.
    /// Judges an entry with nothing perturbed; variants also decode greedily. The boundary
    /// prefills join the verdict: a path chosen by shape that leaves the floor fails the entry.
    pub fn judge_entry(&self, backend: &dyn Backend, entry: &'static Entry) -> Result<Judged, PassError> {
        let mut judged = self.judge(backend, entry, &mut Untouched, decides(entry))?;
        judged.boundaries = boundaries::check(self, backend, entry)?;
        let over: Vec<String> = judged
            .boundaries
            .iter()
            .filter(|b| !b.passed)
            .map(|b| format!("T = {} ({:.2}x the floor at layer {})", b.t, b.worst_over_floor, b.worst_layer))
            .collect();
        if !over.is_empty() {
            let reason = format!(
                "boundary prefills outside {}x HF's floor against {}'s pass: {}",
                entry.contract().model.max_drift_over_floor,
                registry::baseline().name,
                over.join(", ")
            );
            judged.verdict = match judged.verdict {
                Verdict::Pass => Verdict::Fail { reasons: vec![reason] },
                Verdict::Fail { mut reasons } => {
                    reasons.push(reason);
                    Verdict::Fail { reasons }
                }
            };
        }
        Ok(judged)
    }
}

/// One entry (or control) on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Judged {
    pub figures: Figures,
    pub verdict: Verdict,
    pub first_drifting_layer: Option<usize>,
    /// Prefills on both sides of every T where the backend switches the entry's path, against
    /// the baseline's pass (empty where the backend has no switch points).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundaries: Vec<BoundaryPrefill>,
}

/// `value <= bound`, false for NaN: an unwritten element poisons everything after it, and a NaN
/// figure must fail a bound, not slip past every comparison.
pub(crate) fn at_most(value: f64, bound: f64) -> bool {
    value <= bound
}

pub(crate) fn prompt_ids(golden: &ModelGolden) -> Vec<Vec<u32>> {
    golden.manifest.prompts.iter().map(|p| p.ids.clone()).collect()
}

/// The golden's synthetic checkpoint, regenerated from its spec and checked against the sha256 of
/// the model.safetensors HF read.
fn regenerate(golden: &ModelGolden) -> Result<Qwen3Weights, ModelError> {
    let path = golden.dir.join(crate::golden::MANIFEST);
    let Some(spec) = &golden.manifest.checkpoint.synth else {
        let reason = "the golden is of a real checkpoint: pass its directory (--model)".to_string();
        return Err(ModelError::IndexInvalid { path, reason });
    };
    let mut config = golden.manifest.config.clone();
    config.num_hidden_layers = spec.layers;
    let weights = synthesize(&config, spec.seed, spec.style);
    let pinned = golden.manifest.checkpoint.files.iter().find(|f| f.file == crate::WEIGHTS_FILE);
    let found = crate::weights_sha256(&weights);
    match pinned {
        Some(p) if p.sha256 == found => Ok(weights),
        Some(p) => Err(ModelError::Inconsistent {
            path,
            what: format!("synthetic checkpoint {:?} seed {}", spec.style, spec.seed),
            reason: format!("regenerated model.safetensors has sha256 {found}, HF read {}", p.sha256),
        }),
        None => Err(ModelError::IndexInvalid { path, reason: "no pinned model.safetensors".into() }),
    }
}

/// The entries a model check judges by default: every variant, then the mutants with a CUDA or CPU
/// implementation (their model figures are shown; only variants and controls decide the exit).
pub fn default_entries(backend: &dyn Backend) -> Vec<&'static Entry> {
    registry::all().iter().filter(|e| backend.supports(e).is_ok()).collect()
}

/// Whether the entry is a variant (its verdict decides) or a mutant (its figures inform).
pub fn decides(entry: &Entry) -> bool {
    matches!(entry.role, Role::Variant)
}

/// The style a golden was made with, for reports.
pub fn style_of(golden: &ModelGolden) -> Option<SynthStyle> {
    golden.manifest.checkpoint.synth.as_ref().map(|s| s.style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_figure_is_never_within_a_bound() {
        assert!(at_most(1.0, 1.5) && at_most(1.5, 1.5));
        assert!(!at_most(1.6, 1.5) && !at_most(f64::NAN, 1.5) && !at_most(1.0, f64::NAN));
    }
}
