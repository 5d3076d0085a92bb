//! The model-check results file, `fusegate-model-v1` (results/model-<backend>.json), written and
//! read through [`ModelCheckRun`]:
//! - `schema`, `backend`, `environment` (the machine and the commit);
//! - `models`: per model golden, its name, synthetic style, layer count and the stack HF ran on;
//!   `regime` (stable: judged at the output and per layer; chaotic: per layer only); HF's floor
//!   runs' figures (`floors`) and their envelope (`floor`: per figure the worst floor run);
//!   `entries`: per registry entry its figures (per-layer drift; mean / p99 / max KL, same top-1,
//!   RMS delta-p; first divergent greedy token per prompt), the model contract's verdict, the
//!   first layer that leaves the floor, and `same_as` where the backend computes it bit for bit as
//!   an entry judged before it (the CPU emulates arithmetic: mixed and exact are standard there); `controls`: each control's figures and whether the gate
//!   did what it must (reject and locate the injected error, accept the sub-floor noise);
//!   `resolution`: the smallest injected error (relative size) the gate rejects.

use std::collections::BTreeMap;

use fusegate_harness::results::{Environment, SchemaName, SchemaTag};
use fusegate_kernels::{BackendId, EntryId};
use serde::{Deserialize, Serialize};

use crate::SynthStyle;
use crate::check::{Floor, Judged, Regime};
use crate::controls::Perturbation;
use crate::golden::{ModelProvenance, RunId};
use crate::metrics::Figures;

pub const SCHEMA: &str = "fusegate-model-v1";

/// The model-check format (`fusegate-model-v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelFormat;

impl SchemaName for ModelFormat {
    const NAME: &'static str = SCHEMA;
}

pub type ModelSchema = SchemaTag<ModelFormat>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryReport {
    pub entry: EntryId,
    /// A variant's verdict decides; a mutant's figures inform (op-level defects at model level).
    pub mutant_of: Option<EntryId>,
    /// The entry this backend computes bit for bit the same (judged once, reported for both).
    pub same_as: Option<EntryId>,
    #[serde(flatten)]
    pub judged: Judged,
    /// On a GPU, for variants: the device pass measured against the host pass of the same entry
    /// (the CPU emulation inside the host's reference ops) as the gate measures against HF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agreement: Option<Figures>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlReport {
    pub name: String,
    pub summary: String,
    pub perturbation: Perturbation,
    #[serde(flatten)]
    pub judged: Judged,
    /// The gate did what the control demands.
    pub as_expected: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub style: Option<SynthStyle>,
    pub layers: usize,
    pub prompts: usize,
    pub positions: usize,
    pub provenance: ModelProvenance,
    pub regime: Regime,
    pub floors: BTreeMap<RunId, Figures>,
    pub floor: Floor,
    pub entries: Vec<EntryReport>,
    pub controls: Vec<ControlReport>,
    pub resolution: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelCheckRun {
    pub schema: ModelSchema,
    pub backend: BackendId,
    pub environment: Environment,
    pub models: Vec<ModelReport>,
    pub seconds: f64,
}

impl ModelCheckRun {
    /// Every variant within its model contract and every control as it must be.
    pub fn ok(&self) -> bool {
        self.models.iter().all(|m| {
            m.entries.iter().filter(|e| e.mutant_of.is_none()).all(|e| e.judged.verdict.passed())
                && m.controls.iter().all(|c| c.as_expected)
        })
    }

    pub fn load(path: &std::path::Path) -> Result<ModelCheckRun, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a model-check results file: {e}", path.display()))
    }
}
