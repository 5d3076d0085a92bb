//! A checkpoint directory in HF's layout: config.json, then model.safetensors or a sharded
//! model.safetensors.index.json, and tokenizer.json (read only when asked for).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::tensors::{self, Mapped, sha256_hex};
use crate::weights::{EMBED, FINAL_NORM, LM_HEAD, LayerTensor, LayerWeights, hf_shapes};
use crate::{ModelError, Qwen3Config, Qwen3Weights, tokenizer};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checked checkpoint: every tensor the config implies, BF16, with the implied shape.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Qwen3Config,
    pub weights: Qwen3Weights,
    /// Every file read (config, index, weights files) and its sha256 (lowercase hex).
    pub files: Vec<(PathBuf, String)>,
    /// Tensors present that the config says do not exist (attention biases when attention_bias
    /// is false, lm_head.weight when tied, layers past num_hidden_layers, ...): never used. Sorted.
    pub unexpected: Vec<String>,
    /// When tied and lm_head.weight is stored anyway: whether it is bit-equal (BF16, same shape,
    /// same bits) to the embedding. `None` otherwise.
    pub tied_lm_head_matches: Option<bool>,
}

/// The opened weights files and where each tensor lives.
pub(crate) struct Sources {
    pub files: Vec<Mapped>,
    /// Tensor name -> index into `files`: the file's own names, or the index's weight_map.
    pub location: HashMap<String, usize>,
    /// Every tensor name found in a weights file or in the weight_map.
    pub present: BTreeSet<String>,
    /// The index file, when sharded (named in missing-tensor errors).
    index: Option<PathBuf>,
}

impl Checkpoint {
    /// Opens `dir`: config.json, then the weights, each checked against the config.
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let config_path = dir.join(CONFIG_FILE);
        let config_bytes =
            std::fs::read(&config_path).map_err(|source| ModelError::Read { path: config_path.clone(), source })?;
        let config = Qwen3Config::parse(&config_path, &config_bytes)?;
        let mut files = vec![(config_path, sha256_hex(&config_bytes))];
        let sources = open_sources(dir, &mut files)?;
        let parsed: Vec<SafeTensors> = sources.files.iter().map(Mapped::parse).collect::<Result<_, _>>()?;
        let mut read = |name: &str, shape: &[usize]| -> Result<Vec<bf16>, ModelError> {
            match sources.location.get(name) {
                Some(&i) => tensors::read_bf16(&sources.files[i].path, &parsed[i], name, shape),
                None => {
                    let path = sources.index.clone().unwrap_or_else(|| sources.files[0].path.clone());
                    Err(ModelError::TensorMissing { path, tensor: name.into() })
                }
            }
        };
        let weights = read_weights(&config, &mut read)?;
        let required: BTreeSet<String> = hf_shapes(&config).into_iter().map(|(name, _)| name).collect();
        let unexpected: Vec<String> = sources.present.difference(&required).cloned().collect();
        let tied_lm_head_matches = match (config.tie_word_embeddings, sources.location.get(LM_HEAD)) {
            (true, Some(&i)) => {
                let shape = [config.vocab_size, config.hidden_size];
                let stored = tensors::read_bf16(&sources.files[i].path, &parsed[i], LM_HEAD, &shape);
                Some(stored.is_ok_and(|v| v.iter().zip(&weights.embed).all(|(a, b)| a.to_bits() == b.to_bits())))
            }
            _ => None,
        };
        Ok(Checkpoint { dir: dir.into(), config, weights, files, unexpected, tied_lm_head_matches })
    }

    /// The checkpoint's own tokenizer.json.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, ModelError> {
        tokenizer::load(&self.dir.join(TOKENIZER_FILE))
    }

    /// Writes config.json, model.safetensors (the same bytes for the same weights) and the
    /// committed Qwen3 tokenizer.json into `dir`, creating it if missing. Refuses a directory
    /// that already holds anything: a user's files are never overwritten. Returns the paths written.
    pub fn write(dir: &Path, weights: &Qwen3Weights) -> Result<Vec<PathBuf>, ModelError> {
        let (config_path, weights_path, tokenizer_path) =
            (dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE), dir.join(TOKENIZER_FILE));
        weights.config.check(&config_path)?;
        check_lengths(&weights_path, weights)?;
        let tokenizer_json = tokenizer::qwen3_json()?;
        prepare_empty_dir(dir)?;
        write_new(&tokenizer_path, &tokenizer_json)?;
        let write_err = |source| ModelError::Write { path: weights_path.clone(), source };
        let file = OpenOptions::new().write(true).create_new(true).open(&weights_path).map_err(write_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        tensors::stream(&weights.hf_tensors(), &mut out).and_then(|()| out.flush()).map_err(write_err)?;
        // config.json last: an interrupted write leaves a directory that does not open as a checkpoint.
        let mut config_json = serde_json::to_string_pretty(&weights.config.to_hf_json())
            .map_err(|source| ModelError::Json { path: config_path.clone(), source })?;
        config_json.push('\n');
        write_new(&config_path, config_json.as_bytes())?;
        Ok(vec![config_path, weights_path, tokenizer_path])
    }
}

/// The sha256 of the model.safetensors that [`Checkpoint::write`] writes for `weights`, computed
/// without writing it (lowercase hex).
pub fn weights_sha256(weights: &Qwen3Weights) -> String {
    let mut hasher = Sha256::new();
    tensors::stream(&weights.hf_tensors(), &mut hasher).expect("hashing in memory cannot fail");
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// model.safetensors, or else the shards a model.safetensors.index.json names; records each
/// file's sha256 in `files`.
pub(crate) fn open_sources(dir: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<Sources, ModelError> {
    let (single, index_path) = (dir.join(WEIGHTS_FILE), dir.join(INDEX_FILE));
    if single.exists() {
        let mapped = Mapped::open(&single)?;
        let present: BTreeSet<String> = mapped.parse()?.names().into_iter().map(String::from).collect();
        let location = present.iter().map(|n| (n.clone(), 0)).collect();
        files.push((single, sha256_hex(mapped.bytes())));
        return Ok(Sources { files: vec![mapped], location, present, index: None });
    }
    if !index_path.exists() {
        return Err(ModelError::NoWeights { path: dir.into() });
    }
    let bytes = std::fs::read(&index_path).map_err(|source| ModelError::Read { path: index_path.clone(), source })?;
    files.push((index_path.clone(), sha256_hex(&bytes)));
    let weight_map = parse_index(&index_path, &bytes)?;
    // Shards in name order; every shard the index names must exist, even one of unused tensors.
    let mut shards: BTreeMap<&str, &str> = BTreeMap::new();
    for (tensor, shard) in &weight_map {
        shards.entry(shard.as_str()).or_insert(tensor.as_str());
    }
    let (location, present) = (HashMap::new(), weight_map.keys().cloned().collect());
    let mut sources = Sources { files: Vec::new(), location, present, index: Some(index_path.clone()) };
    for (&shard, &first_tensor) in &shards {
        let path = dir.join(shard);
        if !path.is_file() {
            let (shard, tensor) = (shard.to_string(), first_tensor.to_string());
            return Err(ModelError::ShardMissing { path: index_path, shard, tensor });
        }
        let mapped = Mapped::open(&path)?;
        sources.present.extend(mapped.parse()?.names().into_iter().map(String::from));
        files.push((path, sha256_hex(mapped.bytes())));
        sources.files.push(mapped);
    }
    // A tensor is read from the shard the index names, only: an index that does not list a
    // tensor, or names the wrong shard, is corrupt even if some shard holds the tensor.
    for (tensor, shard) in &weight_map {
        let i = shards.keys().position(|s| s == shard).expect("every shard was collected above");
        sources.location.insert(tensor.clone(), i);
    }
    Ok(sources)
}

/// The index's weight_map (tensor -> shard file name); shard names must be plain file names.
fn parse_index(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>, ModelError> {
    let invalid = |reason: String| ModelError::IndexInvalid { path: path.into(), reason };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.into(), source })?;
    let map = value.as_object().ok_or_else(|| ModelError::NotObject { path: path.into() })?;
    let Some(Value::Object(weight_map)) = map.get("weight_map") else {
        return Err(invalid("\"weight_map\" is missing or not an object".into()));
    };
    let mut out = BTreeMap::new();
    for (tensor, shard) in weight_map {
        let Some(shard) = shard.as_str() else {
            return Err(invalid(format!("weight_map[\"{tensor}\"] is {shard}, expected a file name")));
        };
        let plain = Path::new(shard).file_name().is_some_and(|f| f == shard) && shard != "..";
        if !plain {
            return Err(invalid(format!("weight_map[\"{tensor}\"] is \"{shard}\", not a file name in this directory")));
        }
        out.insert(tensor.clone(), shard.to_string());
    }
    Ok(out)
}

/// Every tensor the config implies, read through `read(name, shape)`.
fn read_weights(
    config: &Qwen3Config,
    read: &mut impl FnMut(&str, &[usize]) -> Result<Vec<bf16>, ModelError>,
) -> Result<Qwen3Weights, ModelError> {
    let vh = [config.vocab_size, config.hidden_size];
    let embed = read(EMBED, &vh)?;
    let layers = (0..config.num_hidden_layers)
        .map(|i| LayerWeights::try_from_fn(|t| read(&t.hf_name(i), &t.shape(config))))
        .collect::<Result<Vec<_>, _>>()?;
    let norm = read(FINAL_NORM, &[config.hidden_size])?;
    let lm_head = if config.tie_word_embeddings { None } else { Some(read(LM_HEAD, &vh)?) };
    Ok(Qwen3Weights { config: config.clone(), embed, layers, norm, lm_head })
}

/// Fails unless every tensor of `w` has the length its config implies (reported against `path`,
/// the file that would have held it).
fn check_lengths(path: &Path, w: &Qwen3Weights) -> Result<(), ModelError> {
    let c = &w.config;
    let bad = |what: String, reason: String| Err(ModelError::Inconsistent { path: path.into(), what, reason });
    if w.layers.len() != c.num_hidden_layers {
        let reason = format!("{} layers, the config says num_hidden_layers {}", w.layers.len(), c.num_hidden_layers);
        return bad("layers".into(), reason);
    }
    match (&w.lm_head, c.tie_word_embeddings) {
        (Some(_), true) => return bad(LM_HEAD.into(), "present although the config ties it to the embedding".into()),
        (None, false) => return bad(LM_HEAD.into(), "absent although the config does not tie it".into()),
        _ => {}
    }
    let mut lens = vec![(EMBED.to_string(), w.embed.len(), c.vocab_size * c.hidden_size)];
    for (i, layer) in w.layers.iter().enumerate() {
        lens.extend(LayerTensor::ALL.map(|t| (t.hf_name(i), layer.get(t).len(), t.shape(c).iter().product())));
    }
    lens.push((FINAL_NORM.into(), w.norm.len(), c.hidden_size));
    if let Some(head) = &w.lm_head {
        lens.push((LM_HEAD.into(), head.len(), c.vocab_size * c.hidden_size));
    }
    match lens.into_iter().find(|(_, found, expected)| found != expected) {
        Some((name, found, expected)) => {
            bad(format!("tensor \"{name}\""), format!("{found} values, the config implies {expected}"))
        }
        None => Ok(()),
    }
}

/// Creates `dir` if missing; refuses one that holds anything (or is not a directory).
fn prepare_empty_dir(dir: &Path) -> Result<(), ModelError> {
    let write_err = |source| ModelError::Write { path: dir.into(), source };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(ModelError::NotEmpty { path: dir.into() }),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(write_err),
        Err(e) => Err(write_err(e)),
    }
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let write_err = |source| ModelError::Write { path: path.into(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)
}
