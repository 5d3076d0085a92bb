//! Snapshot tests (insta): what a person reviews, as a diff, when goldens are regenerated (a new
//! PyTorch or transformers), a contract changes or the CPU emulation changes. README.md,
//! "Snapshots", describes the `cargo insta review` workflow.
//!
//! The trial list runs once (the CPU backend over the committed goldens, every entry); every
//! report snapshot is derived from that one run. Metrics are rounded so that a snapshot only moves
//! when the numerics do: bit-exact fractions to 4 decimals, error ratios to 3, ULP histograms and
//! NaN/Inf mismatch counts exact (the CPU emulation is deterministic). Nothing machine-dependent
//! (timings, paths, host names, the environment fingerprint) is rendered; a test checks that.

use fusegate_golden::Manifest;
use fusegate_harness::backends::Choice;
use fusegate_harness::conform::{self, Options};
use fusegate_harness::metrics::ULP_BUCKETS;
use fusegate_harness::results::ConformanceRun;
use fusegate_harness::{Check, Outcome, TrialReport, Verdict};
use fusegate_kernels::registry::{self, Entry, Role};
use fusegate_kernels::{Contract, Truth};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The committed goldens, whatever $FUSEGATE_GOLDEN_DIR says: the .snap files describe these.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/data")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("suites/ lives in the workspace").to_path_buf()
}

fn settings(description: &str) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_description(description);
    s.set_omit_expression(true);
    s
}

/// Fails if `text` holds anything that differs between machines or checkouts.
fn assert_machine_independent(name: &str, text: &str) {
    let root = workspace_root().canonicalize().unwrap_or_else(|_| workspace_root());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    for (what, needle) in [("workspace path", root.to_string_lossy().as_ref()), ("host name", host)] {
        assert!(needle.len() < 3 || !text.contains(needle), "snapshot {name} contains the {what} {needle:?}");
    }
    for word in ["seconds", "/tmp/", "/home/", "/root/", "/work/"] {
        assert!(!text.contains(word), "snapshot {name} contains {word:?}");
    }
}

fn ratio(x: f64) -> String {
    format!("{x:.3}")
}

fn truth_name(t: Truth) -> &'static str {
    match t {
        Truth::IdealMath => "exact-op",
        Truth::GoldenOperands => "golden-operand",
    }
}

fn render_contract(out: &mut String, c: &Contract) {
    let _ = writeln!(out, "contract: deterministic {}, batch-invariant {}", c.deterministic, c.batch_invariant);
    for b in c.stages {
        let mut parts = Vec::new();
        match (b.max_ulp, b.ulp_per_sqrt_len) {
            (Some(u), 0.0) => parts.push(format!("max ulp {u}")),
            (Some(u), per) => parts.push(format!("max ulp {u} + {per} sqrt(reduction length)")),
            (None, _) => {}
        }
        if b.min_bit_exact > 0.0 {
            parts.push(format!("bit-exact >= {}", b.min_bit_exact));
        }
        if let Some(r) = b.max_error_ratio {
            let allowance =
                if b.ratio_allowance > 0.0 { format!(" + {} / sqrt(n)", b.ratio_allowance) } else { String::new() };
            parts.push(format!("error ratio <= {r}{allowance} ({} truth)", truth_name(b.truth)));
        }
        if let Some(r) = b.rounded_from {
            parts.push(format!(
                "the {} truth rounded to bf16 but for {}% + {} Poisson sigmas (rows in fp32's range)",
                truth_name(r.truth),
                100.0 * r.share,
                r.sigmas
            ));
        }
        let _ = writeln!(out, "  {:<9} {}", b.stage.to_string(), parts.join(", "));
    }
}

fn case_of(t: &TrialReport) -> String {
    match &t.check {
        Check::Golden { case } => case.clone(),
        Check::Boundary { shape } => format!("(fresh, H={} T={})", shape.h, shape.t),
        Check::Invariance => "(invariance)".into(),
    }
}

/// The golden directory, however it was spelled, becomes `<golden>` in rendered text.
fn scrub(s: &str) -> String {
    let dir = golden_dir();
    let mut s = s.replace(&dir.display().to_string(), "<golden>");
    if let Ok(c) = dir.canonicalize() {
        s = s.replace(&c.display().to_string(), "<golden>");
    }
    s
}

/// One variant's report over every trial of the run: per case the verdict and, per stage, the
/// metrics its contract is judged on.
fn render_variant(run: &ConformanceRun, e: &Entry) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (variant): {}", e.name, e.summary);
    render_contract(&mut out, &e.contract());
    let buckets: Vec<&str> = ULP_BUCKETS.iter().map(|b| b.1).collect();
    let _ = writeln!(
        out,
        "columns: stage, bit-exact fraction, max ulp (raw), max ulp (row scale), NaN/Inf positions differing, \
         error ratio vs exact-op truth, vs golden-operand truth, ulp histogram [{}]; * = bounded by the contract",
        buckets.join(" ")
    );
    for t in run.trials.iter().filter(|t| t.entry == e.id) {
        let verdict = match &t.outcome {
            Outcome::Passed => "PASS".to_string(),
            Outcome::Failed(why) => format!("FAIL: {}", scrub(why)),
            Outcome::Ignored(why) => format!("ignored: {}", scrub(why)),
        };
        let _ = writeln!(out, "\n{}: {verdict}", case_of(t));
        for s in &t.stages {
            let c = &s.comparison;
            let hist: Vec<String> = c.ulp_histogram.iter().map(usize::to_string).collect();
            let _ = writeln!(
                out,
                "  {}{:<9} {:.4} {:>6} {:>4} {:>4} {:>8} {:>8}  [{}]",
                if s.bound.is_some() { "*" } else { " " },
                s.stage.to_string(),
                c.bit_exact_fraction(),
                c.max_ulp,
                c.max_scaled_ulp,
                c.class_mismatches,
                ratio(s.error_ratio_ideal),
                ratio(s.error_ratio_operands),
                hist.join(" ")
            );
        }
        if let Some(inv) = &t.invariance {
            let _ = writeln!(
                out,
                "  deterministic {}, batch-invariant {}, T in {:?}, rows {:?}",
                inv.deterministic, inv.batch_invariant, inv.token_counts, inv.rows_checked
            );
            for d in &inv.differences {
                let _ = writeln!(out, "  differs: {d}");
            }
        }
    }
    out
}

/// Every mutant x check: rejected by which first reason (or ACCEPTED!, which fails the suite).
fn render_mutants(run: &ConformanceRun) -> String {
    let mut out = String::from("mutant x check: the first reason its target's contract rejects it\n");
    for e in registry::mutants() {
        let Role::Mutant { of } = e.role else { unreachable!("registry::mutants() yields mutants") };
        let _ = writeln!(out, "\n{} (judged as {of}): {}", e.name, e.summary);
        for t in run.trials.iter().filter(|t| t.entry == e.id) {
            let line = match (&t.outcome, &t.verdict) {
                (Outcome::Passed, Some(Verdict::Fail { reasons })) => {
                    format!("rejected ({} reasons), first: {}", reasons.len(), scrub(&reasons[0]))
                }
                (Outcome::Failed(why), _) => format!("ACCEPTED! {}", scrub(why)),
                (Outcome::Ignored(why), _) => format!("ignored: {}", scrub(why)),
                (Outcome::Passed, v) => format!("passed without a failing verdict?! {v:?}"),
            };
            let _ = writeln!(out, "  {:<26} {line}", case_of(t));
        }
    }
    out
}

/// One run of the whole CPU trial list; every report snapshot comes from it.
#[test]
fn cpu_conformance_reports() {
    let opts = Options { backend: Choice::Cpu, golden_dir: Some(golden_dir()), ..Options::default() };
    let plan = conform::plan(&opts).unwrap_or_else(|e| panic!("{e}"));
    let run = conform::run(&plan, |_| {});
    assert!(run.errors.is_empty(), "committed goldens failed to load: {:?}", run.errors);
    // Every registry entry took part: a snapshot of a run that silently skipped one would pin nothing.
    for e in registry::all() {
        assert!(run.trials.iter().any(|t| t.entry == e.id), "{} has no trial", e.name);
    }
    assert!(run.trials.len() > 100, "only {} trials", run.trials.len());

    for e in registry::variants() {
        let text = render_variant(&run, e);
        assert_machine_independent(e.name, &text);
        settings(&format!("CPU conformance of `{}` over the committed goldens", e.name))
            .bind(|| insta::assert_snapshot!(format!("cpu_variant_{}", e.name), text));
    }
    let text = render_mutants(&run);
    assert_machine_independent("mutants", &text);
    settings("CPU verdicts on every mutant: each must be rejected")
        .bind(|| insta::assert_snapshot!("cpu_mutants", text));
    // The snapshots pin what was seen; this pins that it is what the suite requires.
    assert!(run.ok(), "the CPU conformance run failed:\n{}", run.table());
}

/// The committed goldens' index: weight sets and cases with shapes and sizes, and the stack they
/// were captured on (not the capture time or hashes, which change on every recapture).
#[test]
fn golden_manifest_summary() {
    let m = Manifest::load(&golden_dir()).unwrap_or_else(|e| panic!("{e}"));
    let p = &m.provenance;
    let mut text = m.summary();
    let _ = writeln!(
        text,
        "\ncaptured with torch {}, transformers {}, CUDA {}, cuBLAS {}, python {}, on {}; \
         bf16 reduced-precision reduction allowed: {}",
        p.torch, p.transformers, p.cuda, p.cublas, p.python, p.gpu, p.allow_bf16_reduced_precision_reduction
    );
    assert_machine_independent("manifest", &text);
    assert!(!text.contains(&p.captured_at), "the capture time would change on every recapture");
    settings("The committed golden manifest (golden/data/manifest.json)")
        .bind(|| insta::assert_snapshot!("golden_manifest", text));
}
