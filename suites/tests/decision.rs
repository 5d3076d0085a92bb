//! The production decision from a committed, real bench + conformance fixture (H200): a change in
//! select's rules, the buckets or the report shows up as a snapshot diff, and the rules are checked.

use fusegate_bench::schema::{BenchRun, Cache, Launch};
use fusegate_bench::select::{self, Mix, ModelEvidence};
use fusegate_harness::Check;
use fusegate_harness::invariance::ChainedRun;
use fusegate_harness::results::ConformanceRun;
use fusegate_kernels::{BackendId, EntryId};
use fusegate_model::results::ModelCheckRun;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn bench() -> BenchRun {
    BenchRun::load(&fixture_path("bench-nvidia-h200.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// The conformance fixture: a real H200 run trimmed to what select reads (trial identity, check,
/// outcome, invariance findings), with empty placeholders for the rest.
fn conformance() -> ConformanceRun {
    ConformanceRun::load(&fixture_path("conformance-cuda-nvidia-h200.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// The model-check fixture: a real H200 model check (28-layer models, every entry).
fn model() -> ModelEvidence {
    let run = ModelCheckRun::load(&fixture_path("model-cuda-nvidia-h200.json")).unwrap_or_else(|e| panic!("{e}"));
    ModelEvidence::from_run(&run, "model-cuda-nvidia-h200.json".into())
}

fn decide(mix: Mix) -> select::Decision {
    decide_for(mix, Launch::Serial)
}

fn decide_for(mix: Mix, launch: Launch) -> select::Decision {
    let gates = select::gates_from_conformance(&conformance(), BackendId::Cuda);
    let sources = ("bench-nvidia-h200.json".into(), "conformance-cuda-nvidia-h200.json".into());
    select::decide(&bench(), gates, &model(), mix, sources, launch)
}

#[test]
fn decision_from_the_h200_fixture() {
    let d = decide(Mix::default());
    insta::with_settings!({ description => "select on tests/fixtures (H200)", omit_expression => true }, {
        insta::assert_snapshot!("decision_h200", d.markdown());
    });
}

#[test]
fn gates_close_on_a_failed_contract_and_the_winner_is_never_gated_out() {
    let d = decide(Mix::default());
    // In the fixture, mixed failed two golden trials on the GPU: its gate is closed, with the reason.
    let mixed = &d.gates[&EntryId::Mixed];
    assert!(!mixed.contract && !mixed.open());
    assert!(mixed.reason.as_deref().is_some_and(|r| r.contains("qwen3-typical-t128")));
    assert!(d.gates[&EntryId::Exact].open() && d.gates[&EntryId::Exact].batch_invariant);
    for b in &d.buckets {
        let w = b.winner.expect("every bucket has a measured, gated variant");
        assert!(d.gates[&w].open(), "{} chose {w} with a closed gate", b.name);
        let wt: f64 = b.candidates.iter().find(|c| c.variant == w).unwrap().times_us.iter().map(|x| x.1).sum();
        for c in b.candidates.iter().filter(|c| c.gates_open && c.variant != w) {
            let ct: f64 = c.times_us.iter().map(|x| x.1).sum();
            let tie = c.lost_because.as_deref().is_some_and(|r| r.starts_with("tied within noise"));
            assert!(ct >= wt || tie, "{}: {} is faster than the winner {w} and did not tie", b.name, c.variant);
        }
    }
    // The dispatch covers every T >= 1, in order, without gaps or overlaps; what the bench did not
    // time goes to the baseline.
    assert_eq!(d.dispatch.first().map(|r| r.t_from), Some(1));
    assert_eq!(d.dispatch.last().map(|r| r.t_to), Some(usize::MAX));
    assert!(d.dispatch.windows(2).all(|w| w[0].t_to + 1 == w[1].t_from), "{:?}", d.dispatch);
    let measured: Vec<usize> = bench().measurements.iter().map(|m| m.t).collect();
    for r in d.dispatch.iter().filter(|r| !r.measured) {
        assert_eq!(r.variant, EntryId::Standard, "{r:?}");
        assert!(measured.iter().all(|&t| !r.covers(t)), "a timed T in an untimed rule: {r:?}");
    }
    assert!(d.dispatch.iter().any(|r| r.covers(8193) && r.variant == EntryId::Standard && !r.measured));
}

#[test]
fn the_model_gate_closes_variants_outside_their_model_contract_or_never_judged() {
    let conf_gates = select::gates_from_conformance(&conformance(), BackendId::Cuda);
    // f32 passes its op-level contract on the GPU fixture; only the model check can close it.
    assert!(conf_gates[&EntryId::F32].contract && conf_gates[&EntryId::F32].deterministic);
    let d = decide(Mix::default());
    let f32 = &d.gates[&EntryId::F32];
    assert_eq!(f32.model, Some(false));
    assert!(!f32.open() && f32.reason.as_deref().is_some_and(|r| r.contains("outside its model contract")), "{f32:?}");
    assert!(d.buckets.iter().all(|b| b.winner != Some(EntryId::F32)));
    assert!(d.gates[&EntryId::Exact].model == Some(true) && d.gates[&EntryId::Standard].open());
    let md = d.markdown();
    assert!(md.contains("## Model gate") && md.contains("stable-l28 (28 layers"), "{md}");

    // A variant the model check never judged is not production either, however fast it is.
    let mut blind = model();
    blind.lines.remove(&EntryId::Exact);
    let gates = select::gates_from_conformance(&conformance(), BackendId::Cuda);
    let sources = ("bench".to_string(), "conformance".to_string());
    let d = select::decide(&bench(), gates, &blind, Mix::default(), sources, Launch::Serial);
    let exact = &d.gates[&EntryId::Exact];
    assert!(!exact.open() && exact.reason.as_deref().is_some_and(|r| r.contains("not judged")), "{exact:?}");
    assert!(d.buckets.iter().all(|b| b.winner != Some(EntryId::Exact)));
    assert!(d.dispatch.iter().all(|r| r.variant != EntryId::Exact));
}

#[test]
fn the_mix_weights_the_buckets() {
    let a = decide("1,0,0".parse().unwrap());
    let b = decide("0,0,1".parse().unwrap());
    assert_eq!(a.mix.0, [1.0, 0.0, 0.0]);
    assert!(a.buckets[0].share == 1.0 && b.buckets[2].share == 1.0);
    assert!("0.5,0.5".parse::<Mix>().is_err() && "1,-1,1".parse::<Mix>().is_err());
}

#[test]
fn the_chained_decision_counts_chained_figures_where_they_exist_and_serial_ones_elsewhere() {
    let bench = bench();
    let (serial, chained) = (decide(Mix::default()), decide_for(Mix::default(), Launch::Chained));
    assert_eq!((serial.launch, chained.launch), (Launch::Serial, Launch::Chained));
    let median = |v: EntryId, t: usize, l: Launch| bench.find(v, t, Cache::Cold, l).map(|m| m.time_us.median);
    let mut chained_cells = 0;
    for (bs, bc) in serial.buckets.iter().zip(&chained.buckets) {
        for (cs, cc) in bs.candidates.iter().zip(&bc.candidates) {
            assert_eq!(cs.variant, cc.variant);
            for (&(t, s_us), &(t2, c_us)) in cs.times_us.iter().zip(&cc.times_us) {
                assert_eq!(t, t2);
                assert_eq!(Some(s_us), median(cs.variant, t, Launch::Serial));
                match median(cc.variant, t, Launch::Chained) {
                    Some(m) => {
                        assert_eq!(c_us, m, "{} T={t}", cc.variant);
                        chained_cells += 1;
                    }
                    None => assert_eq!(c_us, s_us, "{} T={t}: no chained figure, so the serial one", cc.variant),
                }
            }
        }
    }
    // The fixture holds chained figures for the fused decode kernels (mixed, exact at T <= 32).
    assert!(chained_cells >= 6, "{chained_cells}");
    assert!(chained.markdown().contains("Launch regime: **chained**"));
}

#[test]
fn bench_files_from_before_launch_regimes_read_as_serial() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/nvidia-h200/bench-20261121T233222Z.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!text.contains("\"launch\""), "the point of this file: written before the field existed");
    let old: BenchRun = serde_json::from_str(&text).expect("an old bench file still parses");
    assert_eq!(old.config.launches, vec![Launch::Serial]);
    assert!(!old.measurements.is_empty() && old.measurements.iter().all(|m| m.launch == Launch::Serial));
}

#[test]
fn a_variant_whose_chained_launch_raced_counts_at_its_serial_figure_when_chained() {
    let mut conf = conformance();
    // The fixture predates the chained check: no trial records a chained launch.
    assert!(select::gates_from_conformance(&conf, BackendId::Cuda).values().all(|g| g.chains_safely.is_none()));
    let exact_invariance = conf
        .trials
        .iter_mut()
        .find(|t| t.entry == EntryId::Exact && t.check == Check::Invariance)
        .and_then(|t| t.invariance.as_mut())
        .expect("the fixture has exact's invariance trial");
    exact_invariance.chained = vec![ChainedRun { t: 1, saw_late_x: true }, ChainedRun { t: 5, saw_late_x: false }];
    let gates = select::gates_from_conformance(&conf, BackendId::Cuda);
    let exact = &gates[&EntryId::Exact];
    assert!(
        exact.chains_safely == Some(false) && exact.contract && exact.deterministic,
        "serially, exact is still fine"
    );
    assert_eq!(gates[&EntryId::Mixed].chains_safely, None);

    let bench = bench();
    let sources = ("bench".to_string(), "conformance".to_string());
    let d = select::decide(&bench, gates, &model(), Mix::default(), sources, Launch::Chained);
    let mut checked = 0;
    for c in d.buckets.iter().flat_map(|b| &b.candidates).filter(|c| c.variant == EntryId::Exact) {
        for &(t, us) in &c.times_us {
            let serial = bench.find(EntryId::Exact, t, Cache::Cold, Launch::Serial);
            assert_eq!(Some(us), serial.map(|m| m.time_us.median));
            checked += usize::from(bench.find(EntryId::Exact, t, Cache::Cold, Launch::Chained).is_some());
        }
    }
    assert!(checked >= 3, "exact had chained figures at {checked} token counts: the test would show nothing");
    let md = d.markdown();
    assert!(md.contains("chained launches wait") && md.contains("| exact | yes | yes | yes | yes | **no** |"), "{md}");
    assert!(md.contains("| mixed | **no** | yes | **no** | yes | - |"), "{md}");
}

#[test]
fn only_the_backends_variant_trials_make_gates() {
    let mut conf = conformance();
    let all = select::gates_from_conformance(&conf, BackendId::Cuda);
    let ids: Vec<EntryId> = all.keys().copied().collect();
    assert_eq!(ids, [EntryId::Standard, EntryId::F32, EntryId::Mixed, EntryId::Exact], "mutants have no gates");
    assert!(select::gates_from_conformance(&conf, BackendId::Cpu).is_empty());
    // A failed mutant trial (the mutant slipped through) leaves its variant's contract as it was,
    // but shows the gate blind to that defect: the gate closes, saying which mutant.
    for t in conf.trials.iter_mut().filter(|t| t.mutant_of.is_some()) {
        t.outcome = fusegate_harness::Outcome::Failed("slipped through".into());
    }
    let after = select::gates_from_conformance(&conf, BackendId::Cuda);
    assert!(after.iter().all(|(id, g)| g.contract == all[id].contract));
    assert!(all.values().all(|g| g.sighted));
    let blind: Vec<EntryId> = after.iter().filter(|(_, g)| !g.sighted).map(|(&id, _)| id).collect();
    assert_eq!(blind, [EntryId::Mixed, EntryId::Exact], "the variants the GPU mutants impersonate");
    assert!(after[&EntryId::Standard].sighted, "no GPU mutant impersonates standard");
    let exact = &after[&EntryId::Exact];
    assert!(!exact.open() && exact.reason.as_deref().is_some_and(|r| r.starts_with("blind: mutant-")), "{exact:?}");
}

#[test]
fn select_refuses_a_partial_conformance_run_naming_what_is_missing() {
    // The fixture is a whole run over the 17 goldens committed when it was recorded (the set has
    // grown since): those are its complete case list.
    let whole = conformance();
    let mut cases: Vec<String> = whole
        .trials
        .iter()
        .filter_map(|t| match &t.check {
            Check::Golden { case } => Some(case.clone()),
            _ => None,
        })
        .collect();
    cases.sort();
    cases.dedup();
    assert_eq!(cases.len(), 17);
    let gates = select::gates_from_conformance(&whole, BackendId::Cuda);
    assert_eq!(select::check_complete(&whole, BackendId::Cuda, &gates, &cases), Ok(()));
    // `conform --case qwen3-typical-t1`: every variant judged on one case.
    let mut one_case = conformance();
    one_case.trials.retain(|t| !matches!(&t.check, Check::Golden { case } if case != "qwen3-typical-t1"));
    let err = select::check_complete(&one_case, BackendId::Cuda, &gates, &cases).unwrap_err();
    assert!(
        err.contains(&format!("1 of the {} committed golden cases", cases.len())) && err.contains("partial"),
        "{err}"
    );
    // `conform --variant mixed`: the others were never judged.
    let mut one_variant = conformance();
    one_variant.trials.retain(|t| t.entry == EntryId::Mixed);
    let err = select::check_complete(&one_variant, BackendId::Cuda, &gates, &cases).unwrap_err();
    assert!(err.contains("was judged on 0 of") && !err.starts_with("mixed"), "{err}");
}

#[test]
fn decision_json_lists_gates_and_variants_by_name() {
    let v = serde_json::to_value(decide(Mix::default())).expect("the decision serialises");
    let gates: Vec<&String> = v["gates"].as_object().expect("gates").keys().collect();
    assert_eq!(gates, ["exact", "f32", "mixed", "standard"]);
    assert_eq!(v["gates"]["mixed"]["contract"], false);
    assert_eq!(v["dispatch"][0], json!({ "t_from": 1, "t_to": 32, "variant": "exact", "measured": true }));
    assert_eq!(v["buckets"][2]["winner"], "standard");
    let memory: Vec<&Value> = v["memory"].as_array().expect("memory").iter().map(|m| &m[0]).collect();
    assert_eq!(memory, ["exact", "f32", "mixed", "standard"]);
}

#[test]
fn committed_conformance_results_load_for_select() {
    for gpu in ["nvidia-h200", "nvidia-h100-80gb-hbm3"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results").join(gpu).join("conformance-cuda.json");
        let run = ConformanceRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let gates = select::gates_from_conformance(&run, BackendId::Cuda);
        assert!(gates.contains_key(&EntryId::Exact) && gates.contains_key(&EntryId::Standard), "{gpu}");
    }
}

#[test]
fn select_refuses_conformance_of_another_build_or_another_gpu() {
    let bench = bench();
    let mut conf = conformance();
    // The fixture's conformance was trimmed of its environment: it names no commit.
    let err = select::check_same_build(&bench, &conf).unwrap_err();
    assert!(err.contains("conformance judged commit , the bench timed commit 5233c842555e"), "{err}");
    conf.environment.git_commit = bench.git_commit.clone();
    assert_eq!(select::check_same_build(&bench, &conf), Ok(()));
    // The committed H200 results of main before this rule: bench 93f7378, conformance ed6b68e.
    conf.environment.git_commit = "ed6b68e11fc1".into();
    let err = select::check_same_build(&bench, &conf).unwrap_err();
    assert!(err.starts_with("conformance judged commit ed6b68e11fc1, the bench timed commit 5233c842555e"), "{err}");
    // A modified tree names no code, on either side.
    for (b, c) in [("5233c842555e-dirty", "5233c842555e-dirty"), ("5233c842555e", "unknown")] {
        let mut bench = bench.clone();
        bench.git_commit = b.into();
        conf.environment.git_commit = c.into();
        let err = select::check_same_build(&bench, &conf).unwrap_err();
        assert!(err.contains("uncommitted changes") && !err.contains('\n'), "{err}");
    }
    // Another GPU model's conformance.
    conf.environment.git_commit = bench.git_commit.clone();
    conf.environment.device = Some("NVIDIA H100 80GB HBM3".into());
    let err = select::check_same_build(&bench, &conf).unwrap_err();
    assert!(err.starts_with("conformance ran on NVIDIA H100 80GB HBM3, the bench on NVIDIA H200"), "{err}");
    conf.environment.device = None;
    assert!(select::check_same_build(&bench, &conf).unwrap_err().starts_with("conformance ran on no GPU"));
}
