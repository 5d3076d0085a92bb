//! Config against tensors, read leniently: every tensor the files hold is listed with its dtype
//! and shape, so that tensors the config says do not exist (the user's "bias values 1e29") are
//! reported rather than refused or silently skipped. The strict loader stays as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::values::{self, TensorScan};
use crate::checkpoint::{CONFIG_FILE, open_sources};
use crate::weights::{LM_HEAD, hf_shapes};
use crate::{ModelError, Qwen3Config};

/// A finding about the checkpoint's tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Finding {
    /// An attention bias although config.json says attention_bias is false: an engine that reads
    /// it adds values HF never adds.
    PhantomBias {
        tensor: String,
        max_abs: f64,
    },
    /// lm_head.weight stored although the embeddings are tied, and not bit-equal to
    /// embed_tokens: HF uses embed_tokens; an engine that reads lm_head.weight computes other logits.
    TiedLmHeadDiffers {
        tensor: String,
    },
    /// Any other tensor the config implies no use for.
    UnexpectedTensor {
        tensor: String,
    },
    /// A tensor the config implies is absent.
    MissingTensor {
        tensor: String,
    },
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    DtypeMismatch {
        tensor: String,
        found: String,
    },
    /// NaN or infinity: count and the first positions.
    NonFinite {
        tensor: String,
        count: usize,
        positions: Vec<Vec<usize>>,
    },
    /// Values far beyond the tensor's scale (see [`values::EXTREME_OVER_MEDIAN`]).
    Extreme {
        tensor: String,
        count: usize,
        max_abs: f64,
        median_abs: f64,
        positions: Vec<Vec<usize>>,
    },
}

impl Finding {
    pub fn tensor(&self) -> &str {
        match self {
            Finding::PhantomBias { tensor, .. }
            | Finding::TiedLmHeadDiffers { tensor }
            | Finding::UnexpectedTensor { tensor }
            | Finding::MissingTensor { tensor }
            | Finding::ShapeMismatch { tensor, .. }
            | Finding::DtypeMismatch { tensor, .. }
            | Finding::NonFinite { tensor, .. }
            | Finding::Extreme { tensor, .. } => tensor,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let pos = |p: &[Vec<usize>]| p.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(" ");
        match self {
            Finding::PhantomBias { tensor, max_abs } => {
                format!(
                    "{tensor}: attention bias although attention_bias is false (max |x| {max_abs:.3e}): never read it"
                )
            }
            Finding::TiedLmHeadDiffers { tensor } => {
                format!(
                    "{tensor}: stored although tie_word_embeddings, and NOT bit-equal to embed_tokens: HF uses embed_tokens"
                )
            }
            Finding::UnexpectedTensor { tensor } => format!("{tensor}: not implied by the config (unused)"),
            Finding::MissingTensor { tensor } => format!("{tensor}: missing"),
            Finding::ShapeMismatch { tensor, expected, found } => {
                format!("{tensor}: shape {found:?}, the config implies {expected:?}")
            }
            Finding::DtypeMismatch { tensor, found } => format!("{tensor}: dtype {found}, expected BF16"),
            Finding::NonFinite { tensor, count, positions } => {
                format!("{tensor}: {count} non-finite value(s) at {}", pos(positions))
            }
            Finding::Extreme { tensor, count, max_abs, median_abs, positions } => format!(
                "{tensor}: {count} value(s) far beyond its scale (max |x| {max_abs:.3e}, median |x| {median_abs:.3e}) at {}",
                pos(positions)
            ),
        }
    }
}

/// Every tensor the checkpoint's files hold, scanned, and what disagrees with the config.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inventory {
    pub config: Qwen3Config,
    /// Tensor name -> its scan (dtype, shape, value statistics), for every float tensor present.
    pub tensors: BTreeMap<String, TensorScan>,
    pub findings: Vec<Finding>,
    /// When tied and lm_head.weight is stored: whether it is bit-equal to embed_tokens.
    pub tied_lm_head_bit_equal: Option<bool>,
    pub files: Vec<PathBuf>,
}

fn is_attention_bias(name: &str) -> bool {
    name.starts_with("model.layers.")
        && ["q_proj", "k_proj", "v_proj", "o_proj"].iter().any(|p| name.ends_with(&format!("self_attn.{p}.bias")))
}

/// Scans `dir`: fails only where the config cannot be parsed or a file cannot be read as safetensors.
pub fn scan(dir: &Path) -> Result<Inventory, ModelError> {
    let config = Qwen3Config::load(&dir.join(CONFIG_FILE))?;
    let mut hashed = Vec::new();
    let sources = open_sources(dir, &mut hashed)?;
    let parsed = sources.files.iter().map(|m| m.parse()).collect::<Result<Vec<_>, _>>()?;
    let expected: BTreeMap<String, Vec<usize>> = hf_shapes(&config).into_iter().collect();
    let mut findings = Vec::new();
    let mut tensors = BTreeMap::new();
    for name in &sources.present {
        let Some(&i) = sources.location.get(name) else { continue };
        let view = parsed[i]
            .tensor(name)
            .map_err(|source| ModelError::SafeTensors { path: sources.files[i].path.clone(), source })?;
        if let Some(scan) = values::scan(view.dtype(), view.shape(), view.data()) {
            tensors.insert(name.clone(), scan);
        }
        match expected.get(name) {
            Some(shape) if shape.as_slice() != view.shape() => findings.push(Finding::ShapeMismatch {
                tensor: name.clone(),
                expected: shape.clone(),
                found: view.shape().to_vec(),
            }),
            Some(_) if view.dtype() != Dtype::BF16 => {
                findings.push(Finding::DtypeMismatch { tensor: name.clone(), found: format!("{:?}", view.dtype()) })
            }
            Some(_) => {}
            None if is_attention_bias(name) && !config.attention_bias => {
                let max_abs = tensors.get(name).map_or(f64::NAN, |s: &TensorScan| s.max_abs);
                findings.push(Finding::PhantomBias { tensor: name.clone(), max_abs });
            }
            None if name == LM_HEAD && config.tie_word_embeddings => {}
            None => findings.push(Finding::UnexpectedTensor { tensor: name.clone() }),
        }
    }
    for name in expected.keys().filter(|n| !sources.present.contains(*n)) {
        findings.push(Finding::MissingTensor { tensor: name.clone() });
    }
    let tied_lm_head_bit_equal = (config.tie_word_embeddings && sources.location.contains_key(LM_HEAD)).then(|| {
        let raw = |name: &str| {
            let i = sources.location[name];
            parsed[i].tensor(name).ok().map(|v| (v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        };
        raw(LM_HEAD).is_some_and(|a| raw(crate::weights::EMBED).is_some_and(|b| a == b))
    });
    if tied_lm_head_bit_equal == Some(false) {
        findings.push(Finding::TiedLmHeadDiffers { tensor: LM_HEAD.into() });
    }
    for (name, s) in &tensors {
        if s.non_finite > 0 {
            findings.push(Finding::NonFinite {
                tensor: name.clone(),
                count: s.non_finite,
                positions: s.non_finite_at.clone(),
            });
        }
        if s.extreme > 0 {
            findings.push(Finding::Extreme {
                tensor: name.clone(),
                count: s.extreme,
                max_abs: s.max_abs,
                median_abs: s.median_abs,
                positions: s.extreme_at.clone(),
            });
        }
    }
    let files = hashed.into_iter().map(|(p, _)| p).collect();
    Ok(Inventory { config, tensors, findings, tied_lm_head_bit_equal, files })
}
