//! Every bad input is one error line naming the file and the key or tensor, never a panic. Each
//! test writes a good checkpoint into a temp dir and breaks one thing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_one_line, edit_config, edit_tensors, read_tensors, small, write_tensors};
use fusegate_model::{Checkpoint, SynthStyle, synthesize};
use serde_json::{Value, json};

/// A good 2-layer checkpoint in a fresh temp dir.
fn good() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    Checkpoint::write(&path, &synthesize(&small(2), 1, SynthStyle::Stable)).unwrap();
    (dir, path)
}

fn open_err(dir: &Path) -> String {
    Checkpoint::open(dir).expect_err("a broken checkpoint must not open").to_string()
}

#[test]
fn the_good_checkpoint_opens() {
    let (_t, dir) = good();
    Checkpoint::open(&dir).unwrap();
}

#[test]
fn a_missing_config_key_is_named_never_defaulted() {
    for key in
        ["head_dim", "num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "attention_bias"]
    {
        let (_t, dir) = good();
        edit_config(&dir, |c| {
            c.remove(key);
        });
        assert_one_line(&open_err(&dir), &dir.join("config.json"), &[&format!("key \"{key}\" is missing")]);
    }
}

#[test]
fn an_ill_typed_config_key_is_named_with_what_it_holds() {
    let cases = [
        ("rope_theta", json!("abc"), "key \"rope_theta\": expected a number, got \"abc\""),
        ("hidden_size", json!(64.5), "key \"hidden_size\": expected a non-negative integer, got 64.5"),
        ("num_attention_heads", json!(-4), "key \"num_attention_heads\": expected a non-negative integer, got -4"),
        ("tie_word_embeddings", json!("yes"), "key \"tie_word_embeddings\": expected true or false, got \"yes\""),
        ("vocab_size", Value::Null, "key \"vocab_size\": expected a non-negative integer, got null"),
    ];
    assert_each_refused(cases);
}

/// Each (key, value) written into a good config.json makes opening fail with one line naming the
/// file and containing `want`.
fn assert_each_refused<const N: usize>(cases: [(&str, Value, &str); N]) {
    for (key, value, want) in cases {
        let (_t, dir) = good();
        edit_config(&dir, |c| {
            c.insert(key.into(), value);
        });
        assert_one_line(&open_err(&dir), &dir.join("config.json"), &[want]);
    }
}

#[test]
fn inconsistent_config_values_are_refused() {
    let cases = [
        ("num_key_value_heads", json!(3), "key \"num_key_value_heads\": 3 does not divide num_attention_heads 4"),
        ("rms_norm_eps", json!(0.0), "key \"rms_norm_eps\": must be a positive finite number"),
        ("intermediate_size", json!(0), "key \"intermediate_size\": must be positive, got 0"),
        ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0}), "key \"rope_scaling\": RoPE type \"yarn\""),
    ];
    assert_each_refused(cases);
}

#[test]
fn transformers_5_rope_parameters_are_read_and_checked() {
    let (_t, dir) = good();
    edit_config(&dir, |c| {
        c.remove("rope_theta");
        c.insert("rope_parameters".into(), json!({"rope_theta": 5e5, "rope_type": "default"}));
    });
    assert_eq!(Checkpoint::open(&dir).unwrap().config.rope_theta, 5e5);
    edit_config(&dir, |c| {
        c.insert("rope_parameters".into(), json!({"rope_type": "default"}));
    });
    assert_one_line(&open_err(&dir), &dir.join("config.json"), &["key \"rope_parameters.rope_theta\" is missing"]);
}

#[test]
fn a_missing_or_malformed_config_is_named() {
    let (_t, dir) = good();
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert_one_line(&open_err(&dir), &dir.join("config.json"), &["not valid JSON"]);
    std::fs::write(dir.join("config.json"), "[1, 2]").unwrap();
    assert_one_line(&open_err(&dir), &dir.join("config.json"), &["expected a JSON object"]);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_one_line(&open_err(&dir), &dir.join("config.json"), &["cannot read"]);
}

#[test]
fn a_missing_or_renamed_tensor_is_named() {
    let (_t, dir) = good();
    let name = "model.layers.1.self_attn.k_norm.weight";
    edit_tensors(&dir, |t| {
        t.remove(name);
    });
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors"), &[&format!("tensor \"{name}\" is missing")]);
    let (_t, dir) = good();
    edit_tensors(&dir, |t| {
        let v = t.remove("model.layers.0.mlp.up_proj.weight").unwrap();
        t.insert("model.layers.0.mlp.upproj.weight".into(), v);
    });
    assert_one_line(
        &open_err(&dir),
        &dir.join("model.safetensors"),
        &["\"model.layers.0.mlp.up_proj.weight\" is missing"],
    );
}

#[test]
fn more_layers_in_the_config_than_in_the_file_is_a_missing_tensor() {
    let (_t, dir) = good();
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), json!(3));
    });
    assert_one_line(
        &open_err(&dir),
        &dir.join("model.safetensors"),
        &["\"model.layers.2.input_layernorm.weight\" is missing"],
    );
}

#[test]
fn an_untied_config_needs_lm_head() {
    let (_t, dir) = good();
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), json!(false));
    });
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors"), &["tensor \"lm_head.weight\" is missing"]);
}

#[test]
fn a_tensor_stored_as_f32_is_named_with_both_dtypes() {
    let (_t, dir) = good();
    let name = "model.layers.0.input_layernorm.weight";
    edit_tensors(&dir, |t| {
        let f32 = t[name].bf16_as_f32().expect("a bf16 tensor");
        t.insert(name.into(), f32);
    });
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors"), &[name, "has dtype F32, expected BF16"]);
}

#[test]
fn a_wrong_shape_says_expected_and_found() {
    let (_t, dir) = good();
    let name = "model.layers.1.self_attn.o_proj.weight";
    edit_tensors(&dir, |t| t.get_mut(name).unwrap().shape.reverse());
    assert_one_line(
        &open_err(&dir),
        &dir.join("model.safetensors"),
        &[name, "has shape [128, 64], expected [64, 128]"],
    );
    // The same file under a config with another hidden size: the embedding is the first tensor checked.
    let (_t, dir) = good();
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), json!(96));
    });
    let want = "tensor \"model.embed_tokens.weight\" has shape [512, 64], expected [512, 96]";
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors"), &[want]);
}

#[test]
fn a_truncated_safetensors_file_is_an_error_not_a_panic() {
    let path_of = |dir: &Path| dir.join("model.safetensors");
    for keep in [0, 5, 100, usize::MAX] {
        let (_t, dir) = good();
        let bytes = std::fs::read(path_of(&dir)).unwrap();
        let keep = if keep == usize::MAX { bytes.len() - 1 } else { keep };
        std::fs::write(path_of(&dir), &bytes[..keep]).unwrap();
        assert_one_line(&open_err(&dir), &path_of(&dir), &["not a valid safetensors file"]);
    }
}

#[test]
fn no_weights_file_at_all_is_named() {
    let (_t, dir) = good();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_one_line(&open_err(&dir), &dir, &["no model.safetensors or model.safetensors.index.json"]);
}

/// The good checkpoint split into shards `a` and `b` by `index`'s weight_map.
fn sharded(edit: impl FnOnce(&mut BTreeMap<String, String>)) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = good();
    let all = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut weight_map = BTreeMap::new();
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    for (i, (name, tensor)) in all.into_iter().enumerate() {
        weight_map.insert(name.clone(), ["a.safetensors", "b.safetensors"][i % 2].to_string());
        shards[i % 2].insert(name, tensor);
    }
    write_tensors(&dir.join("a.safetensors"), &shards[0]);
    write_tensors(&dir.join("b.safetensors"), &shards[1]);
    edit(&mut weight_map);
    std::fs::write(dir.join("model.safetensors.index.json"), json!({ "weight_map": weight_map }).to_string()).unwrap();
    (t, dir)
}

#[test]
fn an_index_naming_a_missing_shard_is_named() {
    let (_t, dir) = sharded(|m| {
        m.insert("model.norm.weight".into(), "model-00003-of-00003.safetensors".into());
    });
    let want = "weight_map names shard \"model-00003-of-00003.safetensors\" (for tensor \"model.norm.weight\"), which does not exist";
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors.index.json"), &[want]);
    let (_t, dir) = sharded(|_| {});
    std::fs::remove_file(dir.join("b.safetensors")).unwrap();
    assert_one_line(&open_err(&dir), &dir.join("model.safetensors.index.json"), &["shard \"b.safetensors\""]);
}

#[test]
fn an_index_missing_a_tensor_or_malformed_is_named() {
    let (_t, dir) = sharded(|m| {
        m.remove("model.layers.1.mlp.gate_proj.weight");
    });
    let index = dir.join("model.safetensors.index.json");
    assert_one_line(&open_err(&dir), &index, &["tensor \"model.layers.1.mlp.gate_proj.weight\" is missing"]);
    // The index says "b" but the tensor is in "a": the shard is named.
    let (_t, dir) = sharded(|m| {
        let shard = if m["model.norm.weight"] == "a.safetensors" { "b" } else { "a" };
        m.insert("model.norm.weight".into(), format!("{shard}.safetensors"));
    });
    let e = open_err(&dir);
    assert!(e.contains("tensor \"model.norm.weight\" is missing") && e.contains(".safetensors: "), "{e}");
    let index = dir.join("model.safetensors.index.json");
    for (bad, want) in [
        (json!({"metadata": {}}), "\"weight_map\" is missing"),
        (json!({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}), "not a file name in this directory"),
        (json!({"weight_map": {"model.norm.weight": 3}}), "is 3, expected a file name"),
    ] {
        std::fs::write(&index, bad.to_string()).unwrap();
        assert_one_line(&open_err(&dir), &index, &["invalid index", want]);
    }
}

#[test]
fn a_missing_tokenizer_is_named_when_asked_for() {
    let (_t, dir) = good();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let c = Checkpoint::open(&dir).expect("the weights do not need a tokenizer");
    let e = c.tokenizer().unwrap_err().to_string();
    assert_one_line(&e, &dir.join("tokenizer.json"), &["tokenizer.json is missing"]);
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 1}").unwrap();
    assert_one_line(&c.tokenizer().unwrap_err().to_string(), &dir.join("tokenizer.json"), &["not a valid tokenizer"]);
}
