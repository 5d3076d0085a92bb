//! Engine dumps: another engine's activations at every stage of every layer, for HF's prompts,
//! so that `model-check --dumps` can name the first layer and stage where it leaves HF.
//!
//! # Format
//!
//! A directory with one safetensors file per prompt of the model golden it is compared with,
//! `p{i}.safetensors` (`i`: the prompt's index in the golden's manifest, from 0). Each holds:
//!
//! | tensor | dtype | shape | what |
//! |---|---|---|---|
//! | `input_ids` | I32 (or I64) | [T] | the prompt's token ids: must be HF's, from the manifest |
//! | `layers.{l}.input_norm` | BF16 or F32 | [T, H] | input_layernorm's output |
//! | `layers.{l}.q` | BF16 or F32 | [T, nq*d] | q after q_norm, before RoPE |
//! | `layers.{l}.k` | BF16 or F32 | [T, nkv*d] | k after k_norm, before RoPE |
//! | `layers.{l}.v` | BF16 or F32 | [T, nkv*d] | v (Qwen3 has no v norm) |
//! | `layers.{l}.q_rope` | BF16 or F32 | [T, nq*d] | q after RoPE |
//! | `layers.{l}.k_rope` | BF16 or F32 | [T, nkv*d] | k after RoPE (what the KV cache should hold) |
//! | `layers.{l}.attention` | BF16 or F32 | [T, nq*d] | attention output before o_proj, heads concatenated |
//! | `layers.{l}.output` | BF16 or F32 | [T, H] | the decoder layer's output |
//! | `logits` | BF16 or F32 | [T, V] | lm_head's output |
//!
//! Rows are positions in order, however the engine stepped (one prefill, or one token at a time
//! through its KV cache: then each step's rows are concatenated). Every tensor but `input_ids` may
//! be left out: a stage not dumped is reported as skipped, never guessed. F32 values are rounded to
//! bf16 on load (HF's activations are bf16). Any other tensor name is an error (a misspelt stage
//! must not pass as skipped). `golden/capture/dump_torch.py` writes this from any torch HF-style
//! Qwen3 model through forward hooks; [`record`] writes it from fusegate's own forward pass.

pub mod check;
pub mod faults;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::forward::tap::LayerStage;
use crate::tensors::Mapped;
use crate::{ModelError, Qwen3Config};

pub use check::{DumpCheck, DumpReference, Site};
pub use faults::EngineFault;
pub use record::{Recording, StepMode, record};

/// The token ids' tensor name.
pub const INPUT_IDS: &str = "input_ids";
/// The logits' tensor name.
pub const LOGITS: &str = "logits";

/// The file of prompt `i` in a dump directory.
pub fn prompt_file(i: usize) -> String {
    format!("p{i}.safetensors")
}

/// The tensor name of `stage` in layer `layer`.
pub fn stage_name(layer: usize, stage: LayerStage) -> String {
    format!("layers.{layer}.{}", stage.name())
}

/// One prompt's dump.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptDump {
    pub ids: Vec<u32>,
    /// (layer, stage) -> [T, width].
    pub stages: BTreeMap<(usize, LayerStage), Vec<bf16>>,
    /// [T, V], where dumped.
    pub logits: Option<Vec<bf16>>,
}

/// A whole dump: one [`PromptDump`] per prompt, in the golden's order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dump {
    pub prompts: Vec<PromptDump>,
}

impl Dump {
    /// Writes `dir/p{i}.safetensors` for every prompt (BF16; `dir` is created if missing).
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write { path: dir.into(), source })?;
        let mut written = Vec::new();
        for (i, p) in self.prompts.iter().enumerate() {
            let path = dir.join(prompt_file(i));
            let bytes_of = |v: &[bf16]| v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect::<Vec<u8>>();
            let t = p.ids.len();
            let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![(
                INPUT_IDS.into(),
                Dtype::I32,
                vec![t],
                p.ids.iter().flat_map(|&id| (id as i32).to_le_bytes()).collect(),
            )];
            for (&(l, s), v) in &p.stages {
                data.push((stage_name(l, s), Dtype::BF16, vec![t, v.len() / t.max(1)], bytes_of(v)));
            }
            if let Some(logits) = &p.logits {
                data.push((LOGITS.into(), Dtype::BF16, vec![t, logits.len() / t.max(1)], bytes_of(logits)));
            }
            let views = data
                .iter()
                .map(|(name, dtype, shape, bytes)| {
                    TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.as_str(), v)).map_err(|e| {
                        ModelError::Inconsistent {
                            path: path.clone(),
                            what: format!("tensor \"{name}\""),
                            reason: e.to_string(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let meta = HashMap::from([("format".to_string(), "fusegate-dump".to_string())]);
            let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Inconsistent {
                path: path.clone(),
                what: "dump".into(),
                reason: e.to_string(),
            })?;
            std::fs::write(&path, bytes).map_err(|source| ModelError::Write { path: path.clone(), source })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Reads `dir/p{i}.safetensors` for each of `prompts` (HF's ids), checking every tensor's
    /// name, dtype and shape against `config` and the prompt: one error line naming the file and
    /// tensor otherwise.
    pub fn load(dir: &Path, config: &Qwen3Config, prompts: &[Vec<u32>]) -> Result<Dump, ModelError> {
        if !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such dump directory");
            return Err(ModelError::Read { path: dir.into(), source });
        }
        let mut stage_of: HashMap<String, (usize, LayerStage)> = HashMap::new();
        for l in 0..config.num_hidden_layers {
            for s in LayerStage::ALL {
                stage_of.insert(stage_name(l, s), (l, s));
            }
        }
        let prompts = prompts
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                let path = dir.join(prompt_file(i));
                let mapped = Mapped::open(&path)?;
                let st = mapped.parse()?;
                let bad = |tensor: &str, reason: String| ModelError::Inconsistent {
                    path: path.clone(),
                    what: format!("tensor \"{tensor}\""),
                    reason,
                };
                let t = ids.len();
                let found_ids = read_ids(&path, &st)?;
                if &found_ids != ids {
                    return Err(bad(
                        INPUT_IDS,
                        format!("token ids differ from the golden's prompt {i} ({} vs {t} tokens)", found_ids.len()),
                    ));
                }
                let mut p = PromptDump { ids: found_ids, ..PromptDump::default() };
                for name in st.names() {
                    let width = if name == INPUT_IDS {
                        continue;
                    } else if name == LOGITS {
                        config.vocab_size
                    } else if let Some(&(_, s)) = stage_of.get(name) {
                        s.width(config)
                    } else {
                        return Err(bad(name, "not a dump tensor (input_ids, layers.{l}.{stage}, logits)".into()));
                    };
                    let values = read_float(&path, &st, name, &[t, width])?;
                    match stage_of.get(name) {
                        Some(&key) => {
                            p.stages.insert(key, values);
                        }
                        None => p.logits = Some(values),
                    }
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Dump { prompts })
    }
}

/// `input_ids`, I32 or I64, non-negative.
fn read_ids(path: &Path, st: &SafeTensors) -> Result<Vec<u32>, ModelError> {
    let view =
        st.tensor(INPUT_IDS).map_err(|_| ModelError::TensorMissing { path: path.into(), tensor: INPUT_IDS.into() })?;
    let ids: Vec<i64> = match view.dtype() {
        Dtype::I32 => {
            view.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
        }
        Dtype::I64 => view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        found => {
            return Err(ModelError::Dtype { path: path.into(), tensor: INPUT_IDS.into(), expected: Dtype::I32, found });
        }
    };
    if view.shape().len() != 1 {
        let (expected, found) = (vec![ids.len()], view.shape().to_vec());
        return Err(ModelError::Shape { path: path.into(), tensor: INPUT_IDS.into(), expected, found });
    }
    ids.into_iter()
        .map(|v| {
            u32::try_from(v).map_err(|_| ModelError::Inconsistent {
                path: path.into(),
                what: format!("tensor \"{INPUT_IDS}\""),
                reason: format!("token id {v} is not a token id"),
            })
        })
        .collect()
}

/// A BF16 or F32 tensor of exactly `shape`, as bf16 (F32 rounded to nearest even).
fn read_float(path: &Path, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<bf16>, ModelError> {
    let view = st.tensor(name).map_err(|source| ModelError::SafeTensors { path: path.into(), source })?;
    if view.shape() != shape {
        let (expected, found) = (shape.to_vec(), view.shape().to_vec());
        return Err(ModelError::Shape { path: path.into(), tensor: name.into(), expected, found });
    }
    match view.dtype() {
        Dtype::BF16 => {
            Ok(view.data().chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect())
        }
        Dtype::F32 => Ok(view
            .data()
            .chunks_exact(4)
            .map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        found => Err(ModelError::Dtype { path: path.into(), tensor: name.into(), expected: Dtype::BF16, found }),
    }
}
