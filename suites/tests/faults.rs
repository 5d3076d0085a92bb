//! Faults and bad input below the command line: NaN/Inf positions against PyTorch's, the backend's
//! input checks, and results files written by several writers at once. (The command-line side,
//! corrupted goldens and unwritable results included, is tested in xtask/tests/bad_input.rs.)

use fusegate_golden::{Case, Manifest, WeightsCache};
use fusegate_harness::results::write_atomically;
use fusegate_harness::truth;
use fusegate_harness::verdict::{self, Verdict};
use fusegate_kernels::backend::check_inputs;
use fusegate_kernels::cpu::{Cpu, hf_rmsnorm_rows};
use fusegate_kernels::{BackendError, Dims, EntryId, Observed, OpInputs, Stage, StageData, registry, run_once, synth};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Barrier};

const NONFINITE: &str = "nonfinite-h256-t9";

fn committed_case(name: &str) -> Case {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/data");
    let m = Manifest::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let entry = m.case(name).unwrap_or_else(|| panic!("no committed case {name}"));
    m.load_case(entry, &WeightsCache::new()).unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Finite,
    Nan,
    PosInf,
    NegInf,
}

fn class(v: f64) -> Class {
    match v {
        _ if v.is_nan() => Class::Nan,
        f64::INFINITY => Class::PosInf,
        f64::NEG_INFINITY => Class::NegInf,
        _ => Class::Finite,
    }
}

fn classes(d: &StageData) -> Vec<Class> {
    d.to_f64().into_iter().map(class).collect()
}

/// Flat indices where the candidate's class differs from the golden's.
fn class_mismatches(candidate: &StageData, golden: &StageData) -> Vec<usize> {
    let (c, g) = (classes(candidate), classes(golden));
    assert_eq!(c.len(), g.len());
    (0..c.len()).filter(|&i| c[i] != g[i]).collect()
}

/// The entry on the CPU backend, with Qwen3's head norms applied downstream as the harness does.
fn run_cpu(id: EntryId, case: &Case) -> Observed {
    let mut obs = run_once(&Cpu, id.entry(), &case.inputs()).unwrap_or_else(|e| panic!("{id}: {e}"));
    let (d, eps, w) = (case.shape.d, case.eps, &case.weights);
    for (from, to, weight) in [(Stage::Q, Stage::QNormed, &w.q_norm), (Stage::K, Stage::KNormed, &w.k_norm)] {
        let v = obs[&from].as_bf16().expect("q and k are bf16").to_vec();
        obs.insert(to, StageData::Bf16(hf_rmsnorm_rows(&v, weight, eps, d)));
    }
    obs
}

/// Rows of `stage` holding at least one element of `class`.
fn rows_with(case: &Case, stage: Stage, c: Class) -> BTreeSet<usize> {
    let width = stage.len(&case.shape) / case.shape.t;
    let cls = classes(&case.reference[&stage]);
    (0..cls.len()).filter(|&i| cls[i] == c).map(|i| i / width).collect()
}

#[test]
fn the_nonfinite_golden_holds_nan_and_inf_where_the_capture_put_them() {
    // What the next tests rely on: without NaN/Inf in the golden they would prove nothing.
    let case = committed_case(NONFINITE);
    let h = case.shape.h;
    let x: Vec<(usize, usize, Class)> = case
        .x
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_finite())
        .map(|(i, v)| (i / h, i % h, class(v.to_f64())))
        .collect();
    assert_eq!(
        x,
        [(2, 17, Class::Nan), (5, 100, Class::PosInf), (7, 3, Class::NegInf), (7, 200, Class::Nan)],
        "cases.json: {NONFINITE}"
    );
    // Row 5 holds a lone +inf: mean(x^2) is inf, so inv_rms is 0 (finite), and A = x * 0 is NaN
    // only where x is inf. Rows 2 and 7 hold a NaN: everything downstream of them is NaN.
    let inv = case.reference[&Stage::InvRms].to_f64();
    assert_eq!(inv[5], 0.0);
    assert!(inv[2].is_nan() && inv[7].is_nan());
    for stage in [Stage::A, Stage::B] {
        let nans = rows_with(&case, stage, Class::Nan);
        assert_eq!(nans, BTreeSet::from([2, 5, 7]), "{stage}");
        let row5 = &classes(&case.reference[&stage])[5 * h..6 * h];
        let lone: Vec<usize> = (0..h).filter(|&i| row5[i] == Class::Nan).collect();
        assert_eq!(lone, [100], "{stage}: row 5 has exactly one NaN, where x is +inf");
    }
    for stage in [Stage::Q, Stage::K, Stage::V, Stage::QNormed, Stage::KNormed] {
        let width = stage.len(&case.shape) / case.shape.t;
        let cls = classes(&case.reference[&stage]);
        for row in 0..case.shape.t {
            let nan = cls[row * width..(row + 1) * width].iter().filter(|&&c| c == Class::Nan).count();
            let want = if [2, 5, 7].contains(&row) { width } else { 0 };
            assert_eq!(nan, want, "{stage} row {row}");
        }
    }
}

#[test]
fn every_variant_reproduces_pytorchs_nan_and_inf_positions_stage_by_stage() {
    let case = committed_case(NONFINITE);
    let truths = truth::compute(&case.shape, case.eps, &case.x, &case.weights, &case.reference);
    for entry in registry::variants() {
        let obs = run_cpu(entry.id, &case);
        for s in Stage::C.into_iter().chain([Stage::QNormed, Stage::KNormed]) {
            assert!(obs.contains_key(&s), "{}: {s} not produced", entry.name);
        }
        // Every stage the variant exposes (f32 has no A or B): each holds NaN in the golden.
        for (stage, data) in &obs {
            assert!(classes(&case.reference[stage]).contains(&Class::Nan), "{stage}: no NaN to match");
            let wrong = class_mismatches(data, &case.reference[stage]);
            assert!(wrong.is_empty(), "{} {stage}: class differs from PyTorch at {wrong:?}", entry.name);
        }
        // The harness's own metric agrees: no stage reports a NaN/Inf mismatch.
        let (_, reports) = verdict::evaluate(&entry.contract(), &obs, &case.reference, &truths, &case.inputs());
        assert_eq!(reports.len(), obs.len(), "{}", entry.name);
        // Within every bound: the worst figure is at most its bound.
        let margin = verdict::margin(&reports, &case.shape).expect("bounded stages");
        assert!(margin <= 1.0, "{}: margin {margin}", entry.name);
        for r in &reports {
            assert_eq!(r.comparison.class_mismatches, 0, "{} {}", entry.name, r.stage);
        }
    }
}

#[test]
fn the_unwritten_mutant_is_caught_by_the_nan_position_rule_and_only_there() {
    let case = committed_case(NONFINITE);
    let truths = truth::compute(&case.shape, case.eps, &case.x, &case.weights, &case.reference);
    let mutant = run_cpu(EntryId::MutantUnwritten, &case);
    let honest = run_cpu(EntryId::Mixed, &case);
    let q_len = Stage::Q.len(&case.shape);
    let skipped = q_len / 2;
    let d = case.shape.d;
    // The skipped element sits in a finite row (4), so PyTorch has a number there.
    assert_eq!(skipped / case.shape.q_width(), 4);

    // Apart from that element (and its head after q_norm), the mutant is the honest variant.
    for (stage, data) in &mutant {
        let (m, h) = (classes(data), classes(&honest[stage]));
        let differ: Vec<usize> = (0..m.len()).filter(|&i| m[i] != h[i]).collect();
        let expected: Vec<usize> = match stage {
            Stage::Q => vec![skipped],
            Stage::QNormed => (skipped / d * d..skipped / d * d + d).collect(),
            _ => vec![],
        };
        assert_eq!(differ, expected, "{stage}: mutant vs mixed");
        // Exactly there its NaN/Inf positions differ from PyTorch's.
        assert_eq!(class_mismatches(data, &case.reference[stage]), expected, "{stage}: mutant vs PyTorch");
    }

    let contract = EntryId::MutantUnwritten.entry().contract();
    let (verdict, reports) = verdict::evaluate(&contract, &mutant, &case.reference, &truths, &case.inputs());
    let Verdict::Fail { reasons } = verdict else { panic!("{} accepted on {NONFINITE}", EntryId::MutantUnwritten) };
    // Its margin says by how much: one NaN/Inf mismatch where none is allowed reads 2x.
    let margin = verdict::margin(&reports, &case.shape).expect("bounded stages");
    assert!(margin >= 2.0, "margin {margin}");
    let on_q: Vec<&String> = reasons.iter().filter(|r| r.starts_with("q:")).collect();
    assert_eq!(on_q.len(), 1, "{reasons:?}");
    assert!(on_q[0].contains("1 NaN/Inf positions differ") && on_q[0].contains("q[4, 2, 0]"), "{}", on_q[0]);
    // On q the NaN/Inf rule is the only one that fires: one element in 1152 is within the bit-exact,
    // ULP and error-ratio bounds, so without poisoned outputs this defect would ship.
    let q = reports.iter().find(|r| r.stage == Stage::Q).unwrap();
    let bound = contract.bound(Stage::Q).unwrap();
    assert!(q.comparison.bit_exact_fraction() >= bound.min_bit_exact, "{:?}", q.comparison);
    assert!(q.comparison.max_scaled_ulp <= bound.max_ulp_on(&case.shape).unwrap());
    assert!(q.error_ratio(bound.truth) <= bound.max_ratio_over(Stage::Q.len(&case.shape)).unwrap());
    // Every reason is about q or the q_norm head it poisons, never another stage.
    assert!(reasons.iter().all(|r| r.starts_with("q:") || r.starts_with("q_normed:")), "{reasons:?}");
}

fn bad_input(inp: &OpInputs) -> String {
    match check_inputs(inp) {
        Err(e @ BackendError::BadInput(_)) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line:?}");
            // The backend refuses the same input instead of panicking.
            assert!(matches!(run_once(&Cpu, registry::baseline(), inp), Err(BackendError::BadInput(_))));
            line
        }
        other => panic!("{:?} eps {}: expected BadInput, got {other:?}", inp.shape, inp.eps),
    }
}

#[test]
fn the_backend_refuses_t_zero_and_inconsistent_inputs_with_one_line() {
    let shape = Dims { h: 64, nq: 4, nkv: 2, d: 16 }.with_t(3);
    let w = synth::weights(&shape.dims, 5);
    let x = synth::activations(&shape, 5);
    let inputs = |shape, x, weights, eps| OpInputs { shape, x, weights, eps };
    assert!(check_inputs(&inputs(shape, &x, &w, 1e-6)).is_ok(), "the control must pass");

    let line = bad_input(&inputs(shape.with_t(0), &[], &w, 1e-6));
    assert!(line.contains("must be positive") && line.contains("t: 0"), "{line}");
    let line = bad_input(&inputs(Dims { d: 0, ..shape.dims }.with_t(3), &x, &w, 1e-6));
    assert!(line.contains("d: 0"), "{line}");
    let line = bad_input(&inputs(shape, &x[..x.len() - 1], &w, 1e-6));
    assert!(line.contains("x has 191 elements, the shape needs 192"), "{line}");
    let short = fusegate_kernels::Weights { qkv: w.qkv[..w.qkv.len() - 64].to_vec(), ..w.clone() };
    let line = bad_input(&inputs(shape, &x, &short, 1e-6));
    assert!(line.contains("qkv weight"), "{line}");
    for eps in [0.0, -1e-6, f32::NAN, f32::INFINITY] {
        let line = bad_input(&inputs(shape, &x, &w, eps));
        assert!(line.contains("eps"), "{line}");
    }
}

/// A complete results-like JSON document that names its writer, large enough (~0.5 MB) that
/// interleaved or truncated writes cannot pass for a whole one.
fn document(writer: usize, round: usize) -> Vec<u8> {
    let values: Vec<usize> = (0..60_000).map(|i| i * (writer + 1) + round).collect();
    serde_json::to_vec(&serde_json::json!({"writer": writer, "round": round, "values": values})).unwrap()
}

#[test]
fn concurrent_writers_leave_one_complete_file_and_no_temp_files() {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("conformance-cpu.json"));
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (barrier, path) = (Arc::clone(&barrier), Arc::clone(&path));
                std::thread::spawn(move || {
                    let doc = document(w, round);
                    barrier.wait();
                    write_atomically(&path, &doc)
                })
            })
            .collect();
        for (w, h) in handles.into_iter().enumerate() {
            h.join().expect("writer panicked").unwrap_or_else(|e| panic!("round {round} writer {w}: {e}"));
        }
        let bytes = std::fs::read(&*path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("the file is one complete JSON document");
        let writer = v["writer"].as_u64().unwrap() as usize;
        assert_eq!(bytes, document(writer, round), "round {round}: not exactly what writer {writer} wrote");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, ["conformance-cpu.json"], "round {round}: temp files left behind");
    }
}

#[test]
fn a_failed_write_leaves_no_temp_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: the temp file is written, the rename fails.
    let target = dir.path().join("results.json");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"kept").unwrap();
    let err = write_atomically(&target, b"{}").unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");
    let names: BTreeSet<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, BTreeSet::from(["results.json".to_string()]), "a temp file was left behind");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"kept");

    // The parent is a regular file: refused before anything is written, naming the parent.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = write_atomically(&file.join("results.json"), b"{}").unwrap_err();
    let line = err.to_string();
    assert!(line.contains(&file.display().to_string()) && line.contains("not a directory"), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");

    // A path with no file name.
    assert!(write_atomically(Path::new("/"), b"{}").is_err());
}
