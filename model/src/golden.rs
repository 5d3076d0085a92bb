//! HF model goldens (golden/capture/capture_model.py, on a GPU): the prompts with HF's token ids,
//! and per run (HF's reference and its own noise-floor runs) every decoder layer's output and the
//! logits that the metrics need, each file pinned by sha256 in the manifest and every tensor
//! checked against the config and the prompts before use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::tensors::{Mapped, read_bf16, sha256_hex};
use crate::{ModelError, Qwen3Config, SynthStyle};

/// The manifest's `format`.
pub const FORMAT: &str = "fusegate-model-golden-v2";
/// Tokens per greedy step whose logits the reference keeps.
pub const GREEDY_TOPK: usize = 8;
/// The manifest's file name in a model golden directory.
pub const MANIFEST: &str = "manifest.json";

/// One capture of HF's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunId {
    /// Eager attention, batch 1, one prefill per prompt: what every entry is compared with.
    Reference,
    /// Every prompt in one right-padded batch (other GEMM shapes).
    FloorBatch,
    /// sdpa attention instead of eager.
    FloorSdpa,
    /// The prompt one token at a time through the KV cache (decode vs prefill).
    FloorDecode,
}

impl RunId {
    pub const FLOORS: [RunId; 3] = [RunId::FloorBatch, RunId::FloorSdpa, RunId::FloorDecode];
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthSpec {
    pub style: SynthStyle,
    pub layers: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PinnedFile {
    pub file: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointSpec {
    /// How to regenerate the checkpoint (`fusegate synth-model`), when it is synthetic.
    pub synth: Option<SynthSpec>,
    pub files: Vec<PinnedFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prompt {
    pub text: String,
    /// HF's token ids (the checkpoint's tokenizer.json, no special tokens added).
    pub ids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFile {
    pub run: RunId,
    pub file: String,
    pub sha256: String,
    pub description: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelProvenance {
    pub torch: String,
    pub transformers: String,
    pub cuda: Option<String>,
    pub gpu: String,
    pub python: String,
    pub captured_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GoldenManifest {
    pub format: String,
    pub config: Qwen3Config,
    pub checkpoint: CheckpointSpec,
    pub prompts: Vec<Prompt>,
    pub topk: usize,
    pub greedy: usize,
    pub runs: Vec<RunFile>,
    pub provenance: ModelProvenance,
}

/// One run's record of one prompt.
#[derive(Clone, Debug)]
pub struct PromptRecord {
    /// Every decoder layer's output, [T, H] each.
    pub layers: Vec<Vec<bf16>>,
    /// The reference run's top-K token ids per position, [T, K].
    pub topk_ids: Vec<u32>,
    /// This run's logits at those ids, [T, K].
    pub topk_logits: Vec<bf16>,
    /// logsumexp of this run's whole logit row (fp32), [T].
    pub lse: Vec<f32>,
    /// The logit of the prompt's next token at each position, [T - 1].
    pub next_logit: Vec<bf16>,
    /// This run's top-1 token per position, [T].
    pub argmax: Vec<u32>,
    /// A greedy continuation, where the run generated one.
    pub greedy: Option<Vec<u32>>,
    /// The reference's top tokens and logits at each greedy step, [N, GREEDY_TOPK] each.
    pub greedy_top: Option<(Vec<u32>, Vec<bf16>)>,
}

/// A loaded, verified model golden.
pub struct ModelGolden {
    pub dir: PathBuf,
    pub manifest: GoldenManifest,
    pub runs: BTreeMap<RunId, Vec<PromptRecord>>,
}

impl ModelGolden {
    pub fn load(dir: &Path) -> Result<ModelGolden, ModelError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Read { path: path.clone(), source })?;
        let manifest: GoldenManifest =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
        if manifest.format != FORMAT {
            let reason = format!("format {:?}, expected {FORMAT:?}", manifest.format);
            return Err(ModelError::IndexInvalid { path, reason });
        }
        manifest.config.check(&path)?;
        let mut runs = BTreeMap::new();
        for rf in &manifest.runs {
            runs.insert(rf.run, load_run(dir, rf, &manifest)?);
        }
        if !runs.contains_key(&RunId::Reference) {
            return Err(ModelError::IndexInvalid { path, reason: "no reference run".into() });
        }
        Ok(ModelGolden { dir: dir.into(), manifest, runs })
    }

    /// The layer count of the model a golden directory was captured on (`None`: no readable manifest).
    pub fn layers_of(dir: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
        let m: GoldenManifest = serde_json::from_str(&text).ok()?;
        Some(m.config.num_hidden_layers)
    }

    pub fn reference(&self) -> &[PromptRecord] {
        &self.runs[&RunId::Reference]
    }
}

fn load_run(dir: &Path, rf: &RunFile, m: &GoldenManifest) -> Result<Vec<PromptRecord>, ModelError> {
    let path = dir.join(&rf.file);
    let mapped = Mapped::open(&path)?;
    let found = sha256_hex(mapped.bytes());
    if found != rf.sha256 {
        let reason = format!("sha256 {found}, the manifest pins {}", rf.sha256);
        return Err(ModelError::Inconsistent { path, what: "file".into(), reason });
    }
    let st = mapped.parse()?;
    let (h, k) = (m.config.hidden_size, m.topk);
    m.prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let t = p.ids.len();
            let layers = (0..m.config.num_hidden_layers)
                .map(|l| read_bf16(&path, &st, &format!("p{i}.layer{l}"), &[t, h]))
                .collect::<Result<Vec<_>, _>>()?;
            let top_ids = format!("p{i}.greedy_topk_ids");
            let greedy_top = match st.tensor(&top_ids) {
                Ok(_) => Some((
                    read_u32(&path, &st, &top_ids, &[m.greedy, GREEDY_TOPK])?,
                    read_bf16(&path, &st, &format!("p{i}.greedy_topk_logits"), &[m.greedy, GREEDY_TOPK])?,
                )),
                Err(_) => None,
            };
            let greedy_name = format!("p{i}.greedy");
            let greedy = match st.tensor(&greedy_name) {
                Ok(_) => Some(read_u32(&path, &st, &greedy_name, &[m.greedy])?),
                Err(_) => None,
            };
            Ok(PromptRecord {
                layers,
                greedy_top,
                topk_ids: read_u32(&path, &st, &format!("p{i}.topk_ids"), &[t, k])?,
                topk_logits: read_bf16(&path, &st, &format!("p{i}.topk_logits"), &[t, k])?,
                lse: read_f32(&path, &st, &format!("p{i}.lse"), &[t])?,
                next_logit: read_bf16(&path, &st, &format!("p{i}.next_logit"), &[t - 1])?,
                argmax: read_u32(&path, &st, &format!("p{i}.argmax"), &[t])?,
                greedy,
            })
        })
        .collect()
}

/// The raw bytes of tensor `name`, required to have `dtype` and exactly `shape`.
fn raw<'a>(
    path: &Path,
    st: &'a SafeTensors,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<&'a [u8], ModelError> {
    let view = st.tensor(name).map_err(|e| match e {
        SafeTensorError::TensorNotFound(_) => ModelError::TensorMissing { path: path.into(), tensor: name.into() },
        source => ModelError::SafeTensors { path: path.into(), source },
    })?;
    if view.dtype() != dtype {
        return Err(ModelError::Dtype { path: path.into(), tensor: name.into(), expected: dtype, found: view.dtype() });
    }
    if view.shape() != shape {
        let (expected, found) = (shape.to_vec(), view.shape().to_vec());
        return Err(ModelError::Shape { path: path.into(), tensor: name.into(), expected, found });
    }
    Ok(view.data())
}

fn read_f32(path: &Path, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let bytes = raw(path, st, name, Dtype::F32, shape)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Token ids stored as int32 (torch has no uint32 tensors); a negative id is an error.
fn read_u32(path: &Path, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<u32>, ModelError> {
    let bytes = raw(path, st, name, Dtype::I32, shape)?;
    bytes
        .chunks_exact(4)
        .map(|c| {
            let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            u32::try_from(v).map_err(|_| ModelError::Inconsistent {
                path: path.into(),
                what: format!("tensor \"{name}\""),
                reason: format!("negative token id {v}"),
            })
        })
        .collect()
}
