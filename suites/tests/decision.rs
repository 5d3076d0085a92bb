//! The production decision from a committed, real bench + conformance fixture (H200): a change in
//! select's rules, the buckets or the report shows up as a snapshot diff, and the rules are checked.

use fusegate_harness::bench::schema::{BenchRun, Launch};
use fusegate_harness::bench::select::{self, Mix};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decide(mix: Mix) -> select::Decision {
    let bench: BenchRun = serde_json::from_str(&fixture("bench-nvidia-h200.json")).expect("bench fixture parses");
    let conf: serde_json::Value = serde_json::from_str(&fixture("conformance-cuda-nvidia-h200.json")).expect("JSON");
    let gates = select::gates_from_conformance(&conf, "cuda");
    let sources = ("bench-nvidia-h200.json".into(), "conformance-cuda-nvidia-h200.json".into());
    select::decide(&bench, gates, mix, sources, Launch::Serial)
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
    let mixed = &d.gates["mixed"];
    assert!(!mixed.contract && !mixed.open());
    assert!(mixed.reason.as_deref().is_some_and(|r| r.contains("qwen3-typical-t128")));
    assert!(d.gates["exact"].open() && d.gates["exact"].batch_invariant);
    for b in &d.buckets {
        let w = b.winner.as_deref().expect("every bucket has a measured, gated variant");
        assert!(d.gates[w].open(), "{} chose {w} with a closed gate", b.name);
        let wt: f64 = b.candidates.iter().find(|c| c.variant == w).unwrap().times_us.iter().map(|x| x.1).sum();
        for c in b.candidates.iter().filter(|c| c.gates_open && c.variant != w) {
            let ct: f64 = c.times_us.iter().map(|x| x.1).sum();
            let tie = c.lost_because.as_deref().is_some_and(|r| r.starts_with("tied within noise"));
            assert!(ct >= wt || tie, "{}: {} is faster than the winner {w} and did not tie", b.name, c.variant);
        }
    }
    // The dispatch covers every measured T, in order, without gaps.
    let ts: Vec<usize> = d.dispatch.iter().flat_map(|r| [r.t_from, r.t_to]).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
}

#[test]
fn the_mix_weights_the_buckets() {
    let a = decide("1,0,0".parse().unwrap());
    let b = decide("0,0,1".parse().unwrap());
    assert_eq!(a.mix.0, [1.0, 0.0, 0.0]);
    assert!(a.buckets[0].share == 1.0 && b.buckets[2].share == 1.0);
    assert!("0.5,0.5".parse::<Mix>().is_err() && "1,-1,1".parse::<Mix>().is_err());
}
