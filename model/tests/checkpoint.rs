//! Checkpoints that should open: round trips, determinism, shards, tied and untied lm_head,
//! tensors the config says do not exist; and where `Checkpoint::write` may write.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Tensor, assert_one_line, bits, edit_tensors, read_tensors, small, write_tensors};
use fusegate_model::{Checkpoint, SynthStyle, sha256_hex, synthesize, weights_sha256};
use safetensors::Dtype;
use serde_json::json;

fn file_sha(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn written_weights_and_config_open_bit_equal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let w = synthesize(&small(2), 11, SynthStyle::Stress);
    let written = Checkpoint::write(&out, &w).unwrap();
    assert_eq!(written.len(), 3);
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(c.config, small(2));
    assert_eq!(c.weights.config, small(2));
    assert_eq!(bits(&c.weights), bits(&w));
    assert!(c.weights.lm_head.is_none() && c.unexpected.is_empty() && c.tied_lm_head_matches.is_none());
    // Files read: config.json and model.safetensors, with their real hashes.
    let names: Vec<_> = c.files.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    for (path, sha) in &c.files {
        assert_eq!(sha, &file_sha(path));
    }
    // HF's tensor names and dtype, as transformers would look them up.
    let raw = read_tensors(&out.join("model.safetensors"));
    assert_eq!(raw["model.layers.1.self_attn.k_proj.weight"].shape, [64, 64]);
    assert_eq!(raw["model.layers.0.mlp.down_proj.weight"].shape, [64, 96]);
    assert!(raw.values().all(|t| t.dtype == Dtype::BF16));
    assert_eq!(raw.len(), 1 + 2 * 11 + 1);
}

#[test]
fn the_same_seed_writes_the_same_bytes_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let sha = |name: &str, seed: u64| {
        let out = dir.path().join(name);
        Checkpoint::write(&out, &synthesize(&small(2), seed, SynthStyle::Stable)).unwrap();
        ["config.json", "model.safetensors", "tokenizer.json"].map(|f| file_sha(&out.join(f)))
    };
    let (a, b, other) = (sha("a", 5), sha("b", 5), sha("c", 6));
    assert_eq!(a, b);
    // The hash of what write would write, without writing it.
    assert_eq!(a[1], weights_sha256(&synthesize(&small(2), 5, SynthStyle::Stable)));
    assert_ne!(a[1], other[1], "model.safetensors must depend on the seed");
    assert_eq!(a[0], other[0], "config.json depends on the config only");
    assert_eq!(a[2], fusegate_model::tokenizer::QWEN3_JSON_SHA256);
}

#[test]
fn more_layers_share_the_first_layers_weights() {
    let two = synthesize(&small(2), 3, SynthStyle::Stable);
    let three = synthesize(&small(3), 3, SynthStyle::Stable);
    assert_eq!(three.layers.len(), 3);
    let layer_bits = |w: &fusegate_model::Qwen3Weights| {
        bits(w).into_iter().filter(|(n, ..)| !n.starts_with("model.layers.2.")).collect::<Vec<_>>()
    };
    assert_eq!(layer_bits(&two), layer_bits(&three));
    assert_ne!(three.layers[1].q_proj, three.layers[0].q_proj, "layers differ from each other");
    assert_ne!(three.layers[2].k_norm, three.layers[1].k_norm);
}

#[test]
fn a_sharded_checkpoint_opens_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthesize(&small(2), 9, SynthStyle::Stable);
    Checkpoint::write(dir.path(), &w).unwrap();
    let single = dir.path().join("model.safetensors");
    let all = read_tensors(&single);
    std::fs::remove_file(&single).unwrap();
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let (mut shards, mut weight_map) = ([BTreeMap::new(), BTreeMap::new()], BTreeMap::new());
    for (i, (name, t)) in all.into_iter().enumerate() {
        weight_map.insert(name.clone(), names[i % 2]);
        shards[i % 2].insert(name, t);
    }
    for (shard, name) in shards.iter().zip(names) {
        write_tensors(&dir.path().join(name), shard);
    }
    let index = json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(bits(&c.weights), bits(&w));
    let read: Vec<_> = c.files.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(read, ["config.json", "model.safetensors.index.json", names[0], names[1]]);
}

#[test]
fn an_untied_lm_head_is_stored_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small(1);
    config.tie_word_embeddings = false;
    let w = synthesize(&config, 2, SynthStyle::Stable);
    let head = w.lm_head.clone().expect("untied: a separate lm_head");
    assert_ne!(head, w.embed);
    Checkpoint::write(dir.path(), &w).unwrap();
    assert!(read_tensors(&dir.path().join("model.safetensors")).contains_key("lm_head.weight"));
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(bits(&c.weights), bits(&w));
    assert_eq!(c.weights.lm_head(), &head[..]);
    assert!(c.unexpected.is_empty());
}

#[test]
fn a_tied_model_uses_the_embedding_and_reports_a_stored_copy() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthesize(&small(1), 2, SynthStyle::Stable);
    Checkpoint::write(dir.path(), &w).unwrap();
    assert!(!read_tensors(&dir.path().join("model.safetensors")).contains_key("lm_head.weight"));
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.weights.lm_head(), &w.embed[..]);
    // Like the real Qwen3-0.6B: lm_head.weight stored although tied, first as an exact copy.
    edit_tensors(dir.path(), |t| {
        let copy = t["model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), copy);
    });
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!((c.unexpected.clone(), c.tied_lm_head_matches), (vec!["lm_head.weight".to_string()], Some(true)));
    edit_tensors(dir.path(), |t| {
        let head = t.get_mut("lm_head.weight").unwrap();
        head.data[7] ^= 0x40;
    });
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.tied_lm_head_matches, Some(false));
    assert_eq!(bits(&c.weights), bits(&w), "a stored copy is never used");
}

#[test]
fn an_attention_bias_the_config_rules_out_is_reported_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthesize(&small(2), 4, SynthStyle::Stable);
    Checkpoint::write(dir.path(), &w).unwrap();
    // The seeds' "corrupted bias values (1e29)": present, but attention_bias is false.
    let bias = Tensor { dtype: Dtype::F32, shape: vec![128], data: 1e29f32.to_le_bytes().repeat(128) };
    edit_tensors(dir.path(), |t| {
        t.insert("model.layers.1.self_attn.q_proj.bias".into(), bias.clone());
        t.insert("model.layers.0.self_attn.k_proj.bias".into(), bias);
    });
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.unexpected, ["model.layers.0.self_attn.k_proj.bias", "model.layers.1.self_attn.q_proj.bias"]);
    assert_eq!(bits(&c.weights), bits(&w));
}

#[test]
fn write_creates_a_missing_dir_and_fills_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthesize(&small(1), 0, SynthStyle::Stable);
    let nested = dir.path().join("a/b/c");
    Checkpoint::write(&nested, &w).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Checkpoint::write(&empty, &w).unwrap();
    for d in [nested, empty] {
        assert_eq!(bits(&Checkpoint::open(&d).unwrap().weights), bits(&w));
    }
}

#[test]
fn write_refuses_a_non_empty_dir_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let w = synthesize(&small(1), 0, SynthStyle::Stable);
    let mine = dir.path().join("notes.txt");
    std::fs::write(&mine, "a user's file").unwrap();
    let e = Checkpoint::write(dir.path(), &w).unwrap_err().to_string();
    assert_one_line(&e, dir.path(), &["not empty", "refusing"]);
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "a user's file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A checkpoint written before is not overwritten either.
    let out = dir.path().join("ckpt");
    Checkpoint::write(&out, &w).unwrap();
    let before = file_sha(&out.join("model.safetensors"));
    let other = synthesize(&small(1), 1, SynthStyle::Stable);
    assert_one_line(&Checkpoint::write(&out, &other).unwrap_err().to_string(), &out, &["not empty"]);
    assert_eq!(file_sha(&out.join("model.safetensors")), before);
}

#[test]
fn write_refuses_weights_that_contradict_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let mut w = synthesize(&small(2), 0, SynthStyle::Stable);
    w.layers[1].k_norm.pop();
    let e = Checkpoint::write(&out, &w).unwrap_err().to_string();
    assert_one_line(&e, &out.join("model.safetensors"), &["model.layers.1.self_attn.k_norm.weight", "31 values", "32"]);
    w.layers.pop();
    let e = Checkpoint::write(&out, &w).unwrap_err().to_string();
    assert_one_line(&e, &out.join("model.safetensors"), &["1 layers", "num_hidden_layers 2"]);
    let mut tied_with_head = synthesize(&small(1), 0, SynthStyle::Stable);
    tied_with_head.lm_head = Some(tied_with_head.embed.clone());
    let e = Checkpoint::write(&out, &tied_with_head).unwrap_err().to_string();
    assert_one_line(&e, &out.join("model.safetensors"), &["lm_head.weight", "ties it"]);
    assert!(!out.exists(), "nothing is created for weights that cannot be written");
}
