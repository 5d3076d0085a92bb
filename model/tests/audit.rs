//! `audit` on small synthetic checkpoints: a clean one reports the planted statistics (the seeds'
//! k_norm outliers, 96.5 at layer 0) and no defect; one with planted defects reports each, where it
//! is; massive activations are found at the token and channel they were planted at, and not in a
//! clean model; a checkpoint that cannot be loaded is an error naming the file.

mod common;

use std::path::Path;

use fusegate_model::audit::inventory::Finding;
use fusegate_model::audit::norms::NormKind;
use fusegate_model::audit::{self, Activations, Audit, AuditError, report};
use fusegate_model::synth::{OUTLIER_CHANNEL, STABLE_K_NORM_OUTLIERS};
use fusegate_model::{Checkpoint, SynthStyle, synthesize};
use half::bf16;
use safetensors::Dtype;

use common::{Tensor, edit_tensors};

fn prompts() -> Vec<String> {
    let path = fusegate_model::gate::default_golden_root().join("prompts.json");
    audit::prompt_texts(&path).unwrap()
}

fn k_norm_max(a: &Audit, layer: usize) -> (f64, usize, Vec<(usize, f64)>) {
    let n = a.norms.iter().find(|n| n.kind == NormKind::KNorm && n.layer == Some(layer)).unwrap();
    (n.max, n.max_channel, n.outliers.clone())
}

fn bf16_tensor(shape: Vec<usize>, values: impl Iterator<Item = f32>) -> Tensor {
    let data = values.flat_map(|v| bf16::from_f32(v).to_bits().to_le_bytes()).collect();
    Tensor { dtype: Dtype::BF16, shape, data }
}

#[test]
fn a_clean_checkpoint_reports_the_planted_statistics_and_no_defect() {
    let w = synthesize(&common::small(4), 1, SynthStyle::Stable);
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::write(dir.path(), &w).unwrap();
    let a = audit::run(dir.path(), &prompts()).unwrap_or_else(|e| panic!("{e}"));
    assert!(a.defects.is_empty(), "{:?}", a.defects);
    assert_eq!(a.tied_lm_head_bit_equal, None);
    for (layer, &want) in STABLE_K_NORM_OUTLIERS.iter().enumerate() {
        let (max, ch, outliers) = k_norm_max(&a, layer);
        assert_eq!((max, ch), (want, OUTLIER_CHANNEL), "layer {layer}");
        assert_eq!(outliers, vec![(OUTLIER_CHANNEL, want)], "layer {layer}");
    }
    assert!(k_norm_max(&a, 3).2.is_empty(), "no outlier planted in layer 3");
    // Qwen3's tokenizer ids do not fit this small vocabulary: skipped, and said so.
    assert!(
        matches!(&a.activations, Activations::Skipped { reason } if reason.contains("vocabulary")),
        "{:?}",
        a.activations
    );
    let table = report::table(&a);
    assert!(
        table.contains("0 defect(s)") && table.contains("k_norm outliers in layer 0 (max 96.5 at ch 17)"),
        "{table}"
    );
    // The JSON reads back through its schema.
    let json = dir.path().join("audit.json");
    std::fs::write(&json, serde_json::to_vec(&a).unwrap()).unwrap();
    assert_eq!(Audit::load(&json).unwrap().norms, a.norms);
}

#[test]
fn every_planted_defect_is_reported_where_it_is() {
    let w = synthesize(&common::small(4), 1, SynthStyle::Stress);
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::write(dir.path(), &w).unwrap();
    let c = &w.config;
    let q_width = c.num_attention_heads * c.head_dim;
    edit_tensors(dir.path(), |t| {
        // Phantom biases (attention_bias is false), one holding the seeds' 1e29.
        let bias = |big: bool| {
            bf16_tensor(vec![q_width], (0..q_width).map(move |i| if big && i == 5 { 1e29 } else { 0.01 * i as f32 }))
        };
        t.insert("model.layers.1.self_attn.q_proj.bias".into(), bias(true));
        t.insert("model.layers.1.self_attn.k_proj.bias".into(), bias(false));
        // An lm_head although tied, one value away from the embedding.
        let mut head = t["model.embed_tokens.weight"].clone();
        assert!(head.set_bf16(100, 0.75));
        t.insert("lm_head.weight".into(), head);
        // A NaN and a 1e29 inside real weights.
        let down = t.get_mut("model.layers.2.mlp.down_proj.weight").unwrap();
        assert!(down.set_bf16(5 * c.intermediate_size + 7, f32::NAN));
        let o = t.get_mut("model.layers.0.self_attn.o_proj.weight").unwrap();
        assert!(o.set_bf16(3 * q_width + 4, 1e29));
    });
    let a = audit::run(dir.path(), &prompts()).unwrap_or_else(|e| panic!("{e}"));
    let find = |pred: &dyn Fn(&Finding) -> bool| a.defects.iter().filter(|f| pred(f)).count();
    assert_eq!(
        find(
            &|f| matches!(f, Finding::PhantomBias { tensor, max_abs } if tensor == "model.layers.1.self_attn.q_proj.bias" && *max_abs > 9e28)
        ),
        1,
        "{:?}",
        a.defects
    );
    assert_eq!(
        find(&|f| matches!(f, Finding::PhantomBias { tensor, .. } if tensor == "model.layers.1.self_attn.k_proj.bias")),
        1
    );
    assert_eq!(a.tied_lm_head_bit_equal, Some(false));
    assert_eq!(find(&|f| matches!(f, Finding::TiedLmHeadDiffers { .. })), 1);
    assert_eq!(
        find(
            &|f| matches!(f, Finding::NonFinite { tensor, count: 1, positions } if tensor == "model.layers.2.mlp.down_proj.weight" && positions == &vec![vec![5, 7]])
        ),
        1,
        "{:?}",
        a.defects
    );
    assert_eq!(
        find(
            &|f| matches!(f, Finding::Extreme { tensor, count: 1, positions, .. } if tensor == "model.layers.0.self_attn.o_proj.weight" && positions == &vec![vec![3, 4]])
        ),
        1
    );
    // The phantom q bias's 1e29 is beyond its own tensor's scale too.
    assert_eq!(
        find(
            &|f| matches!(f, Finding::Extreme { tensor, positions, .. } if tensor == "model.layers.1.self_attn.q_proj.bias" && positions == &vec![vec![5]])
        ),
        1
    );
    assert_eq!(a.defects.len(), 6, "{:?}", a.defects);
    // k_norm outliers: the stress model's 96.5 at layer 0, listed first in the risks.
    let (max, _, outliers) = k_norm_max(&a, 0);
    assert_eq!(max, 96.5);
    assert!(outliers.len() >= 2 && outliers[0].1 == 96.5, "{outliers:?}");
    assert!(
        a.risks[0].contains("attention bias")
            && a.risks.iter().any(|r| r.contains("k_norm outliers in layer 0 (max 96.5")),
        "{:?}",
        a.risks
    );
    let table = report::table(&a);
    assert!(
        table.contains("6 defect(s)")
            && table.contains("DEFECT model.layers.2.mlp.down_proj.weight: 1 non-finite value(s) at [5, 7]"),
        "{table}"
    );
}

#[test]
fn massive_activations_are_found_at_their_token_and_channel() {
    let mut w = synthesize(&common::small(2), 4, SynthStyle::Stable);
    let ids = vec![vec![3u32, 7, 9, 11, 7]];
    let clean = audit::activations::scan(&w, &ids).unwrap();
    assert!(clean.iter().all(|l| l.massive_count == 0 && l.max_abs < 100.0), "{clean:?}");
    let h = w.config.hidden_size;
    w.embed[7 * h + 5] = bf16::from_f32(2000.0);
    let layers = audit::activations::scan(&w, &ids).unwrap();
    for l in &layers {
        assert_eq!(l.massive_count, 2, "layer {}: token 7 at positions 1 and 4", l.layer);
        assert!(l.massive.iter().all(|m| m.token == 7 && m.channel == 5 && m.value > 1000.0), "{:?}", l.massive);
        assert_eq!(l.massive.iter().map(|m| m.position).collect::<std::collections::BTreeSet<_>>(), [1, 4].into());
    }
}

#[test]
fn a_checkpoint_that_cannot_be_loaded_is_an_error_naming_the_file() {
    let missing = audit::run(Path::new("/nonexistent/ckpt"), &[]).unwrap_err().to_string();
    common::assert_one_line(&missing, Path::new("/nonexistent/ckpt/config.json"), &["cannot read"]);
    let w = synthesize(&common::small(1), 1, SynthStyle::Stable);
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::write(dir.path(), &w).unwrap();
    edit_tensors(dir.path(), |t| {
        t.remove("model.layers.0.mlp.up_proj.weight");
    });
    let err = audit::run(dir.path(), &[]).unwrap_err();
    let AuditError::Inconsistent { inventory, .. } = &err else { panic!("{err}") };
    assert!(
        inventory
            .findings
            .iter()
            .any(|f| matches!(f, Finding::MissingTensor { tensor } if tensor == "model.layers.0.mlp.up_proj.weight"))
    );
    common::assert_one_line(&err.to_string(), &dir.path().join("model.safetensors"), &["up_proj", "missing"]);
}
