//! Helpers shared by the integration tests: a small config, and raw safetensors editing (how
//! the tests build broken checkpoints from a good one).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use fusegate_model::{Qwen3Config, Qwen3Weights};

/// A config small enough for tests (the tokenizer's ids exceed its vocab: fine for loaders).
pub fn small(layers: usize) -> Qwen3Config {
    Qwen3Config {
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        vocab_size: 512,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

/// Every tensor's raw bits, by HF name (bf16 `==` would call 0 and -0 equal).
pub fn bits(w: &Qwen3Weights) -> Vec<(String, Vec<usize>, Vec<u16>)> {
    w.hf_tensors().into_iter().map(|(name, shape, v)| (name, shape, v.iter().map(|x| x.to_bits()).collect())).collect()
}

/// Asserts `err` is one line, starts with `file`'s path and contains every needle.
pub fn assert_one_line(err: &str, file: &Path, needles: &[&str]) {
    assert!(!err.contains('\n') && !err.contains('\r'), "not one line: {err:?}");
    assert!(err.starts_with(&format!("{}: ", file.display())), "does not start with {}: {err}", file.display());
    for n in needles {
        assert!(err.contains(n), "{err:?} does not contain {n:?}");
    }
}

pub use fusegate_golden::edit::{Contents, Tensor};

/// A safetensors file's tensors, by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Contents::parse(&std::fs::read(path).unwrap()).unwrap().tensors
}

/// Writes `tensors` to `path` (replacing it).
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let contents = Contents { tensors: tensors.clone(), metadata: Default::default() };
    std::fs::write(path, contents.serialize().unwrap()).unwrap();
}

/// Edits config.json's JSON object in place.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Edits model.safetensors' tensors in place.
pub fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = read_tensors(&path);
    edit(&mut tensors);
    write_tensors(&path, &tensors);
}
