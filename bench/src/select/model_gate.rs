//! The model gate: a variant that fails its model contract on the committed model check of this
//! GPU is not production, whatever its speed, and one the check did not judge is not either
//! (unseen is not passed). The decision shows each variant's model-level figures beside HF's
//! floor and names the models and prompts they were judged on.

use std::collections::BTreeMap;

use fusegate_kernels::EntryId;
use fusegate_model::check::Regime;
use fusegate_model::results::{ModelCheckRun, ModelReport};
use serde::Serialize;

use super::Gates;

/// One variant on one model, beside HF's floor there.
#[derive(Clone, Debug, Serialize)]
pub struct ModelLine {
    pub model: String,
    pub passed: bool,
    /// Mean KL(HF || variant), nats (stable models only: a chaotic model's output is not judged).
    pub mean_kl: Option<f64>,
    pub floor_mean_kl: f64,
    pub same_top1_pct: Option<f64>,
    pub floor_same_top1_pct: f64,
    /// Whether the check decoded greedily on this model (stable output only).
    pub greedy_decoded: bool,
    /// The earliest first divergent greedy token over the prompts (None: none diverged).
    pub first_divergent_token: Option<usize>,
    pub floor_first_divergent_token: Option<usize>,
    pub first_drifting_layer: Option<usize>,
    pub last_layer_drift: f64,
    pub floor_last_layer_drift: f64,
}

/// The models a model check judged on and each variant's lines there.
#[derive(Clone, Debug, Serialize)]
pub struct ModelEvidence {
    /// The results file, as the repository names it.
    pub source: String,
    /// Per model: name, layers, regime, prompts and positions (what the figures are over).
    pub models: Vec<String>,
    #[serde(serialize_with = "super::serialize_by_name")]
    pub lines: BTreeMap<EntryId, Vec<ModelLine>>,
}

impl ModelEvidence {
    /// Every variant's lines in `run` (mutants are figures, not candidates).
    pub fn from_run(run: &ModelCheckRun, source: String) -> ModelEvidence {
        let models = run.models.iter().map(describe).collect();
        let mut lines: BTreeMap<EntryId, Vec<ModelLine>> = BTreeMap::new();
        for m in &run.models {
            for e in m.entries.iter().filter(|e| e.mutant_of.is_none()) {
                lines.entry(e.entry).or_default().push(line(m, e));
            }
        }
        ModelEvidence { source, models, lines }
    }

    /// Closes the model gate of every variant that failed on a model or was not judged on every
    /// model of the check.
    pub fn apply(&self, gates: &mut BTreeMap<EntryId, Gates>) {
        for (v, g) in gates.iter_mut() {
            let lines = self.lines.get(v).map_or(&[][..], Vec::as_slice);
            let failed = lines.iter().find(|l| !l.passed);
            let complete = lines.len() == self.models.len();
            g.model = Some(complete && failed.is_none());
            if g.reason.is_none() {
                g.reason = match (failed, complete) {
                    (Some(l), _) => Some(format!("outside its model contract on {} ({})", l.model, self.source)),
                    (None, false) => Some(format!("not judged on every model of {}", self.source)),
                    (None, true) => None,
                };
            }
        }
    }
}

fn describe(m: &ModelReport) -> String {
    let regime = match m.regime {
        Regime::Stable => "stable output",
        Regime::Chaotic => "chaotic output: per-layer drift only",
    };
    format!("{} ({} layers, {regime}; {} prompts, {} positions)", m.name, m.layers, m.prompts, m.positions)
}

fn line(m: &ModelReport, e: &fusegate_model::results::EntryReport) -> ModelLine {
    let f = &e.judged.figures;
    let last = |d: &[f64]| d.last().copied().unwrap_or(f64::NAN);
    ModelLine {
        model: m.name.clone(),
        passed: e.judged.verdict.passed(),
        mean_kl: f.output.as_ref().map(|o| o.mean_kl),
        floor_mean_kl: m.floor.mean_kl,
        same_top1_pct: f.output.as_ref().map(|o| o.same_top1_pct),
        floor_same_top1_pct: m.floor.same_top1_pct,
        greedy_decoded: !f.first_divergent_token.is_empty(),
        first_divergent_token: f.first_divergent_token.iter().flatten().min().copied(),
        floor_first_divergent_token: m.floor.first_divergent_token,
        first_drifting_layer: e.judged.first_drifting_layer,
        last_layer_drift: last(&f.layers.iter().map(|d| d.rel_l2).collect::<Vec<_>>()),
        floor_last_layer_drift: last(&m.floor.drift),
    }
}
