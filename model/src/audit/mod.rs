//! `cargo xtask audit DIR`: what a checkpoint holds that can break an engine around a fused
//! kernel, in one command (the user's history was debugged by hand for days: k_norm outliers found
//! by a one-off script, "bias values 1e29" that were tensors the config says do not exist, std
//! tables typed into a report). Weights are read, never changed: clipping outliers degrades real
//! models.
//!
//! [`inventory`] (config against tensors, read leniently), [`values`] (non-finite and extreme
//! values with positions), [`norms`] (norm statistics, super-weight candidates), [`activations`]
//! (massive activations on the prompt set), [`risk`] (what each finding means for a fused kernel),
//! [`report`] (the table). The result is [`Audit`], `fusegate-audit-v1`, written and read back.

pub mod activations;
pub mod inventory;
pub mod norms;
pub mod report;
pub mod risk;
pub mod values;

use std::path::{Path, PathBuf};

use fusegate_harness::results::{SchemaName, SchemaTag};
use serde::{Deserialize, Serialize};

use crate::{Checkpoint, ModelError, Qwen3Config, tokenizer};
use activations::LayerActivations;
use inventory::{Finding, Inventory};
use norms::{NormStats, SuperWeight};

pub const SCHEMA: &str = "fusegate-audit-v1";

/// The audit format (`fusegate-audit-v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditFormat;

impl SchemaName for AuditFormat {
    const NAME: &'static str = SCHEMA;
}

pub type AuditSchema = SchemaTag<AuditFormat>;

/// Why the massive-activation pass did not run (the rest of the audit stands).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Activations {
    Scanned { prompts: usize, positions: usize, layers: Vec<LayerActivations> },
    Skipped { reason: String },
}

/// A whole audit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    pub schema: AuditSchema,
    pub dir: PathBuf,
    pub config: Qwen3Config,
    pub tensors: usize,
    /// Config against tensors, non-finite and extreme values: each a defect.
    pub defects: Vec<Finding>,
    /// When tied and lm_head.weight is stored anyway: bit-equal to embed_tokens (harmless) or not.
    pub tied_lm_head_bit_equal: Option<bool>,
    /// Every layer's four norms, then the final norm.
    pub norms: Vec<NormStats>,
    pub super_weights: Vec<SuperWeight>,
    pub activations: Activations,
    /// What the findings mean for a fused kernel and the engine around it.
    pub risks: Vec<String>,
}

/// The checkpoint cannot be loaded consistently: the inventory (what was found) and the strict
/// loader's one-line error.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Unreadable(ModelError),
    #[error("{source}")]
    Inconsistent { inventory: Box<Inventory>, source: ModelError },
}

impl Audit {
    pub fn load(path: &Path) -> Result<Audit, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not an audit file: {e}", path.display()))
    }
}

/// The prompt set's texts (golden/model/prompts.json).
pub fn prompt_texts(path: &Path) -> Result<Vec<String>, ModelError> {
    #[derive(Deserialize)]
    struct Prompts {
        prompts: Vec<String>,
    }
    let text = std::fs::read(path).map_err(|source| ModelError::Read { path: path.into(), source })?;
    let p: Prompts = serde_json::from_slice(&text).map_err(|source| ModelError::Json { path: path.into(), source })?;
    Ok(p.prompts)
}

/// Audits the checkpoint in `dir`; `prompts` are the prompt set's texts, tokenized with the
/// checkpoint's own tokenizer.json for the massive-activation pass (skipped, with the reason,
/// where it has none or its ids do not fit the vocabulary).
pub fn run(dir: &Path, prompts: &[String]) -> Result<Audit, AuditError> {
    let inventory = inventory::scan(dir).map_err(AuditError::Unreadable)?;
    let checkpoint = match Checkpoint::open(dir) {
        Ok(c) => c,
        Err(source) => return Err(AuditError::Inconsistent { inventory: Box::new(inventory), source }),
    };
    let ids: Result<Vec<Vec<u32>>, String> = checkpoint
        .tokenizer()
        .map_err(|e| e.to_string())
        .and_then(|t| prompts.iter().map(|p| tokenizer::encode(&t, p).map_err(|e| e.to_string())).collect());
    let activations = match ids {
        Err(reason) => Activations::Skipped { reason },
        Ok(ids) => scan_activations(&checkpoint.weights, &ids),
    };
    Ok(assemble(dir, inventory, &checkpoint.weights, activations))
}

/// The massive-activation pass on token ids.
pub fn scan_activations(weights: &crate::Qwen3Weights, ids: &[Vec<u32>]) -> Activations {
    if ids.is_empty() {
        return Activations::Skipped { reason: "no prompts".into() };
    }
    match activations::scan(weights, ids) {
        Ok(layers) => Activations::Scanned { prompts: ids.len(), positions: ids.iter().map(Vec::len).sum(), layers },
        Err(e) => Activations::Skipped { reason: e.to_string() },
    }
}

/// An audit from its parts (the inventory, the strictly loaded weights, the activation pass).
pub fn assemble(dir: &Path, inv: Inventory, weights: &crate::Qwen3Weights, activations: Activations) -> Audit {
    let norms = norms::norms(weights);
    let super_weights = norms::super_weights(&inv);
    let risks = risk::summary(&inv.findings, &norms, &super_weights, &activations);
    Audit {
        schema: AuditSchema::default(),
        dir: dir.into(),
        config: inv.config.clone(),
        tensors: inv.tensors.len(),
        defects: inv.findings,
        tied_lm_head_bit_equal: inv.tied_lm_head_bit_equal,
        norms,
        super_weights,
        activations,
        risks,
    }
}
