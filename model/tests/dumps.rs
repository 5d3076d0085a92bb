//! Engine dumps (`model-check --dumps`) on the committed stable model: fusegate's own dump is
//! clean (prefill or decode, through files, and with honest 1-ulp noise), and each planted
//! integration fault is located at its layer and stage; a stage not dumped is skipped, never guessed.

use fusegate_kernels::cpu::{Cpu, next_up};
use fusegate_kernels::registry;
use fusegate_kernels::synth::Rng;
use fusegate_model::check::Model;
use fusegate_model::dump::check::{Against, table};
use fusegate_model::dump::{Dump, DumpCheck, DumpReference, EngineFault, Recording, Site, StepMode, record};
use fusegate_model::forward::tap::LayerStage;
use fusegate_model::gate::default_golden_root;

fn prompts(model: &Model) -> Vec<Vec<u32>> {
    model.golden.manifest.prompts.iter().map(|p| p.ids.clone()).collect()
}

#[test]
fn an_honest_dump_is_clean_and_every_planted_fault_is_located() {
    let model = Model::load(&default_golden_root().join("stable-l4"), None).unwrap_or_else(|e| panic!("{e}"));
    let reference = DumpReference::new(&model);
    let n = model.weights.config.num_hidden_layers;
    // HF's own stage floor is measured, not assumed: positive and finite everywhere.
    assert_eq!(reference.floor.layers.len(), n);
    assert!(reference.floor.layers.iter().chain([&reference.floor.logits]).all(|f| f.is_finite() && *f > 0.0));
    let ids = prompts(&model);
    let rec = |mode, fault: Option<&EngineFault>, logits| {
        record(model.tables(), &model.weights, &Cpu, registry::baseline(), &ids, Recording { mode, fault, logits })
            .unwrap()
    };

    // fusegate's own pass, every stage and the logits, through the files: clean.
    let honest = rec(StepMode::Prefill, None, true);
    let dir = tempfile::tempdir().unwrap();
    honest.write(dir.path()).unwrap();
    let back = Dump::load(dir.path(), &model.weights.config, &ids).unwrap();
    assert!(back == honest, "the dump reads back as written");
    let check = reference.check(&back);
    assert!(check.clean(), "{}", table(&check));
    assert_eq!(check.stages.len(), n * LayerStage::ALL.len() + 1, "every stage and the logits compared");
    assert!(check.skipped.is_empty() && !check.logits_skipped);
    let hf = check.against_hf.as_ref().expect("every layer output dumped");
    assert!(hf.verdict.passed() && hf.figures.output.is_some(), "{:?}", hf.verdict);
    // The JSON reads back through its schema.
    let json = dir.path().join("check.json");
    std::fs::write(&json, serde_json::to_vec(&check).unwrap()).unwrap();
    assert_eq!(DumpCheck::load(&json).unwrap().stages.len(), check.stages.len());

    // Decoding one token at a time gives the same stages; honest 1-ulp noise on 0.1% of every
    // dumped value stays within HF's floor.
    let mut decoded = rec(StepMode::Decode, None, false);
    assert!(decoded.prompts.iter().zip(&honest.prompts).all(|(a, b)| a.stages == b.stages));
    let mut rng = Rng::new(7);
    let mut flipped = 0;
    for p in &mut decoded.prompts {
        for v in p.stages.values_mut() {
            for x in v.iter_mut() {
                if rng.next_u64().is_multiple_of(1000) {
                    *x = next_up(*x);
                    flipped += 1;
                }
            }
        }
    }
    assert!(flipped > 1000, "{flipped}");
    let noisy = reference.check(&decoded);
    assert!(noisy.clean(), "{}", table(&noisy));
    assert!(noisy.logits_skipped && noisy.stages.iter().any(|f| f.rel_l2 > 0.0));

    // Planted faults: each located at its layer and stage, against the CPU op.
    let q_width = model.weights.config.num_attention_heads * model.weights.config.head_dim;
    let mut bias: Vec<f32> = (0..q_width).map(|_| 0.5 * rng.normal() as f32).collect();
    bias[3] = 1e29;
    let faults = [
        EngineFault::UnrotatedK { layer: 2 },
        EngineFault::ForeignKNorm { layer: 3, from: 0 },
        EngineFault::PhantomQBias { layer: 1, bias },
        EngineFault::KvCacheOneLate,
    ];
    for fault in &faults {
        let mode = if *fault == EngineFault::KvCacheOneLate { StepMode::Decode } else { StepMode::Prefill };
        let check = reference.check(&rec(mode, Some(fault), false));
        let (layer, stage) = fault.site();
        let first = check.first_divergence.as_ref().unwrap_or_else(|| panic!("{fault:?} not found\n{}", table(&check)));
        assert_eq!(
            (first.site, first.against),
            (Site::Layer { layer, stage }, Against::CpuOp),
            "{fault:?}\n{}",
            table(&check)
        );
        assert!(first.rel_l2.is_nan() || first.rel_l2 > check.max_over_floor * first.floor, "{fault:?}: {first:?}");
        // Every stage before it is within the floor.
        assert!(check.stages.iter().take_while(|f| f.site != first.site).all(|f| f.within), "{fault:?}");
    }

    // The same unrotated k with no RoPE stages dumped: skipped by name, and the fault shows at the
    // next dumped stage (attention reads the wrong keys), never at a guessed q_rope / k_rope.
    let mut partial = rec(StepMode::Prefill, Some(&faults[0]), false);
    for p in &mut partial.prompts {
        p.stages.retain(|(_, s), _| !matches!(s, LayerStage::QRope | LayerStage::KRope));
    }
    let check = reference.check(&partial);
    assert_eq!(check.skipped.get(&LayerStage::KRope), Some(&(0..n).collect::<Vec<_>>()));
    assert_eq!(check.skipped.get(&LayerStage::QRope), Some(&(0..n).collect::<Vec<_>>()));
    let first = check.first_divergence.clone().expect("still found");
    assert_eq!(first.site, Site::Layer { layer: 2, stage: LayerStage::Attention }, "{}", table(&check));
    assert!(table(&check).contains("skipped (not dumped): q_rope at layers [0, 1, 2, 3]"));
}

#[test]
fn a_bad_dump_is_one_error_line_naming_the_file_and_tensor() {
    let config = fusegate_model::Qwen3Config::qwen3_06b(1);
    let ids = vec![vec![1u32, 2, 3]];
    let dir = tempfile::tempdir().unwrap();
    let missing = Dump::load(&dir.path().join("nope"), &config, &ids).unwrap_err().to_string();
    assert!(missing.contains("nope") && !missing.contains('\n'), "{missing}");
    let err = Dump::load(dir.path(), &config, &ids).unwrap_err().to_string();
    assert!(err.contains("p0.safetensors") && !err.contains('\n'), "{err}");
    // Other token ids and a wrong shape are refused.
    let mut p = fusegate_model::dump::PromptDump { ids: ids[0].clone(), ..Default::default() };
    p.stages.insert((0, LayerStage::Q), vec![half::bf16::ONE; 3 * 2048]);
    Dump { prompts: vec![p.clone()] }.write(dir.path()).unwrap();
    assert!(Dump::load(dir.path(), &config, &ids).is_ok());
    let err = Dump::load(dir.path(), &config, &[vec![1, 2, 4]]).unwrap_err().to_string();
    assert!(err.contains("input_ids") && err.contains("p0.safetensors"), "{err}");
    let mut q_wrong = p;
    q_wrong.stages.insert((0, LayerStage::K), vec![half::bf16::ONE; 3 * 2048]);
    Dump { prompts: vec![q_wrong] }.write(dir.path()).unwrap();
    let err = Dump::load(dir.path(), &config, &ids).unwrap_err().to_string();
    assert!(err.contains("layers.0.k") && err.contains("shape"), "{err}");
}

/// Writes fusegate's own dump of the stable model (`honest/`) and one with k left unrotated in
/// layer 2 (`unrotated-k/`) under `$FUSEGATE_DUMP_OUT`, for trying `model-check --dumps` (the
/// README's example): `cargo test -p fusegate-model --test dumps -- --ignored`.
#[test]
#[ignore = "writes example dumps where FUSEGATE_DUMP_OUT says"]
fn write_example_dumps() {
    let out = std::path::PathBuf::from(std::env::var_os("FUSEGATE_DUMP_OUT").expect("FUSEGATE_DUMP_OUT"));
    let model = Model::load(&default_golden_root().join("stable-l4"), None).unwrap();
    let ids = prompts(&model);
    let fault = EngineFault::UnrotatedK { layer: 2 };
    for (name, fault, logits) in [("honest", None, true), ("unrotated-k", Some(&fault), false)] {
        let dump = record(
            model.tables(),
            &model.weights,
            &Cpu,
            registry::baseline(),
            &ids,
            Recording { mode: StepMode::Prefill, fault, logits },
        );
        dump.unwrap().write(&out.join(name)).unwrap();
    }
}
