//! The model gate end to end on the committed goldens (CPU backend, the same code as
//! `cargo xtask model-check`): the unfused standard path sits within HF's own floor on every model
//! (the proof that the forward pass is HF's), so do the variants with HF's numerics; the injected
//! error is rejected and located at its layer; the sub-floor noise is accepted; f32 and the
//! round-once mutant are measured; the results file reads back through its schema.

use fusegate_kernels::EntryId;
use fusegate_kernels::cpu::Cpu;
use fusegate_model::check::Regime;
use fusegate_model::controls::{CONTROLS, Expect, INJECTED_LAYER};
use fusegate_model::gate::{self, Options, committed_goldens, default_golden_root};
use fusegate_model::report;
use fusegate_model::results::ModelCheckRun;

#[test]
fn the_gate_on_the_committed_models() {
    let goldens = committed_goldens(&default_golden_root());
    let ids = [EntryId::Standard, EntryId::F32, EntryId::Mixed, EntryId::Exact, EntryId::MutantRoundOnce];
    let opts =
        Options { goldens, checkpoint: None, entries: ids.iter().map(|id| id.entry()).collect(), controls: true };
    let run = gate::run(&Cpu, &opts, &|line| eprintln!("{line}")).unwrap_or_else(|e| panic!("{e}"));
    let regimes: Vec<Regime> = run.models.iter().map(|m| m.regime).collect();
    assert!(regimes.contains(&Regime::Stable) && regimes.contains(&Regime::Chaotic), "{regimes:?}");
    for m in &run.models {
        let entry = |id: EntryId| m.entries.iter().find(|e| e.entry == id).unwrap_or_else(|| panic!("{id} not judged"));
        for id in [EntryId::Standard, EntryId::Mixed, EntryId::Exact] {
            let e = entry(id);
            assert!(e.judged.verdict.passed(), "{}: {id} outside HF's floor: {:?}", m.name, e.judged.verdict);
        }
        // Measured (the data decides the verdict): finite drift at every layer, output figures where stable.
        for id in [EntryId::F32, EntryId::MutantRoundOnce] {
            let f = &entry(id).judged.figures;
            assert!(f.layers.len() == m.layers && f.layers.iter().all(|d| d.rel_l2.is_finite() && d.rel_l2 > 0.0));
            assert_eq!(f.output.is_some(), m.regime == Regime::Stable, "{}: {id}", m.name);
        }
        for (c, spec) in m.controls.iter().zip(&CONTROLS) {
            assert!(c.as_expected, "{}: {} did not do what it must: {:?}", m.name, c.name, c.judged.verdict);
            match spec.expect {
                Expect::Rejected { layer } => assert_eq!(c.judged.first_drifting_layer, Some(layer)),
                Expect::Accepted => assert!(c.judged.verdict.passed()),
            }
        }
        let resolution = m.resolution.expect("the injected error is rejected, so there is a resolution");
        assert!(resolution <= 1.0 / 32.0, "{resolution}");
        assert_eq!(INJECTED_LAYER, 1);
        // The report states the regime and shows every entry; the plot has a line per entry.
        let md = report::model_markdown(m, "x.svg");
        assert!(md.contains(if m.regime == Regime::Stable { "**stable**" } else { "**chaotic**" }));
        assert!(ids.iter().all(|id| md.contains(&format!("\n| {id} "))), "{md}");
        let svg = report::drift_svg(m).unwrap();
        assert!(ids.iter().all(|id| svg.contains(&id.to_string())) && svg.contains("HF floor"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model-cpu.json");
    std::fs::write(&path, serde_json::to_vec(&run).unwrap()).unwrap();
    let back = ModelCheckRun::load(&path).unwrap();
    assert_eq!(back.models.len(), run.models.len());
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&run).unwrap());
}
