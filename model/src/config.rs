//! A Qwen3 model's config, parsed from HF's config.json and never defaulted: transformers'
//! Qwen3Config class defaults are 8B-ish values, so a key the file does not state is an error.

use std::path::Path;

use fusegate_kernels::Dims;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ModelError;

/// The config.json keys fusegate needs (HF key names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
}

impl Qwen3Config {
    /// Qwen3-0.6B's config (NUMERICS.md) with `layers` decoder layers (28 in the real model).
    pub fn qwen3_06b(layers: usize) -> Qwen3Config {
        Qwen3Config {
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: layers,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            vocab_size: 151936,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    /// The fused op's dims for one layer of this model.
    pub fn op_dims(&self) -> Dims {
        Dims { h: self.hidden_size, nq: self.num_attention_heads, nkv: self.num_key_value_heads, d: self.head_dim }
    }

    /// Reads and checks `path` (a config.json): every key present, of the right JSON type, and
    /// consistent. Extra keys are ignored.
    pub fn load(path: &Path) -> Result<Qwen3Config, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read { path: path.into(), source })?;
        Qwen3Config::parse(path, &bytes)
    }

    /// [`Qwen3Config::load`] on bytes already read from `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Qwen3Config, ModelError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.into(), source })?;
        let map = value.as_object().ok_or_else(|| ModelError::NotObject { path: path.into() })?;
        let keys = Keys { path, map };
        let config = Qwen3Config {
            hidden_size: keys.size("hidden_size")?,
            intermediate_size: keys.size("intermediate_size")?,
            num_hidden_layers: keys.size("num_hidden_layers")?,
            num_attention_heads: keys.size("num_attention_heads")?,
            num_key_value_heads: keys.size("num_key_value_heads")?,
            head_dim: keys.size("head_dim")?,
            rms_norm_eps: keys.number("rms_norm_eps")?,
            rope_theta: keys.rope_theta()?,
            vocab_size: keys.size("vocab_size")?,
            tie_word_embeddings: keys.boolean("tie_word_embeddings")?,
            attention_bias: keys.boolean("attention_bias")?,
        };
        keys.plain_rope()?;
        config.check(path)?;
        Ok(config)
    }

    /// Fails (naming `path` and the key) on zero sizes, heads that do not divide, an odd head_dim
    /// (rotate-half RoPE), a non-positive eps or rope_theta, or tensor sizes that overflow.
    pub fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |key: &'static str, reason: String| Err(ModelError::KeyInvalid { path: path.into(), key, reason });
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(key, "must be positive, got 0".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            let (nq, nkv) = (self.num_attention_heads, self.num_key_value_heads);
            return bad("num_key_value_heads", format!("{nkv} does not divide num_attention_heads {nq}"));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("must be even for rotate-half RoPE, got {}", self.head_dim));
        }
        for (key, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, format!("must be a positive finite number, got {v}"));
            }
        }
        let widest = self
            .num_attention_heads
            .checked_add(2 * self.num_key_value_heads)
            .and_then(|n| n.checked_mul(self.head_dim));
        let fits = [widest, Some(self.vocab_size), Some(self.intermediate_size)].into_iter().all(|rows| {
            rows.and_then(|r| r.checked_mul(self.hidden_size)).is_some_and(|n| n <= isize::MAX as usize / 2)
        });
        if !fits {
            return bad("hidden_size", "tensor sizes overflow this machine's address space".into());
        }
        Ok(())
    }

    /// The config.json `Checkpoint::write` emits: these keys plus the ones transformers needs to
    /// build a Qwen3ForCausalLM (model_type, architectures, silu, no RoPE scaling, no sliding window).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("a struct of numbers and bools serializes");
        let extra = json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "max_position_embeddings": 40960,
            "max_window_layers": self.num_hidden_layers,
            "rope_scaling": null,
            "sliding_window": null,
            "use_sliding_window": false,
            "use_cache": true,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "torch_dtype": "bfloat16",
        });
        if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), extra) {
            map.extend(extra);
        }
        v
    }
}

/// Typed access to config.json's keys, each error naming the file and the key.
struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn get(&self, key: &'static str) -> Result<&Value, ModelError> {
        self.map.get(key).ok_or_else(|| ModelError::KeyMissing { path: self.path.into(), key })
    }

    fn wrong(&self, key: &'static str, expected: &'static str, found: &Value) -> ModelError {
        ModelError::KeyType { path: self.path.into(), key, expected, found: found.to_string() }
    }

    fn size(&self, key: &'static str) -> Result<usize, ModelError> {
        let v = self.get(key)?;
        v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    fn number(&self, key: &'static str) -> Result<f64, ModelError> {
        let v = self.get(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    fn boolean(&self, key: &'static str) -> Result<bool, ModelError> {
        let v = self.get(key)?;
        v.as_bool().ok_or_else(|| self.wrong(key, "true or false", v))
    }

    /// `rope_theta`, or transformers 5's `rope_parameters.rope_theta` when the top-level key is absent.
    fn rope_theta(&self) -> Result<f64, ModelError> {
        const KEY: &str = "rope_parameters.rope_theta";
        match self.map.get("rope_parameters").filter(|_| !self.map.contains_key("rope_theta")) {
            Some(Value::Object(params)) => match params.get("rope_theta") {
                Some(v) => v.as_f64().ok_or_else(|| self.wrong(KEY, "a number", v)),
                None => Err(ModelError::KeyMissing { path: self.path.into(), key: KEY }),
            },
            Some(v) => Err(self.wrong("rope_parameters", "an object", v)),
            None => self.number("rope_theta"),
        }
    }

    /// Plain RoPE only: a `rope_scaling` or `rope_parameters` whose type is not "default" would
    /// change the positions the forward pass computes, so it is refused rather than ignored.
    fn plain_rope(&self) -> Result<(), ModelError> {
        for key in ["rope_scaling", "rope_parameters"] {
            let Some(v) = self.map.get(key).filter(|v| !v.is_null()) else { continue };
            let Some(params) = v.as_object() else { return Err(self.wrong(key, "an object or null", v)) };
            let kind = params.get("rope_type").or_else(|| params.get("type"));
            if let Some(kind) = kind.filter(|k| k.as_str() != Some("default")) {
                let reason = format!("RoPE type {kind} is not supported (plain RoPE only)");
                return Err(ModelError::KeyInvalid { path: self.path.into(), key, reason });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(c: &Qwen3Config) -> String {
        c.check(Path::new("d/config.json")).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn qwen3_06b_is_consistent_and_matches_the_op_dims() {
        let c = Qwen3Config::qwen3_06b(28);
        assert_eq!(check(&c), "");
        assert_eq!(c.op_dims(), Dims::QWEN3_06B);
    }

    #[test]
    fn inconsistent_values_are_refused_naming_the_key() {
        let base = Qwen3Config::qwen3_06b(2);
        type Edit = fn(&mut Qwen3Config);
        let cases: [(Edit, &str); 5] = [
            (|c| c.num_key_value_heads = 3, "key \"num_key_value_heads\": 3 does not divide"),
            (|c| c.head_dim = 0, "key \"head_dim\": must be positive"),
            (|c| c.head_dim = 127, "key \"head_dim\": must be even"),
            (|c| c.rms_norm_eps = 0.0, "key \"rms_norm_eps\": must be a positive"),
            (|c| c.vocab_size = usize::MAX / 4, "key \"hidden_size\": tensor sizes overflow"),
        ];
        for (edit, want) in cases {
            let mut c = base.clone();
            edit(&mut c);
            let got = check(&c);
            assert!(got.starts_with("d/config.json: ") && got.contains(want), "{got}");
        }
    }

    /// tests/fixtures/transformers5_qwen3_06b_config.json: what transformers 5.24's
    /// `Qwen3Config(<Qwen3-0.6B's values>).save_pretrained()` writes (rope_parameters, no top-level
    /// rope_theta). The hub's own config.json states rope_theta at the top level, as an integer.
    #[test]
    fn configs_as_transformers_and_the_hub_write_them_load() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transformers5_qwen3_06b_config.json");
        assert_eq!(Qwen3Config::load(Path::new(fixture)).unwrap(), Qwen3Config::qwen3_06b(28));
        let mut hub = Qwen3Config::qwen3_06b(28).to_hf_json();
        hub["rope_theta"] = json!(1000000);
        hub["transformers_version"] = json!("4.51.0");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, hub.to_string()).unwrap();
        assert_eq!(Qwen3Config::load(&path).unwrap(), Qwen3Config::qwen3_06b(28));
    }

    #[test]
    fn hf_json_keeps_every_key_and_adds_the_model_type() {
        let c = Qwen3Config::qwen3_06b(3);
        let v = c.to_hf_json();
        assert_eq!(v["model_type"], "qwen3");
        assert_eq!(v["head_dim"], 128);
        assert_eq!(serde_json::from_value::<Qwen3Config>(v).unwrap(), c);
    }
}
