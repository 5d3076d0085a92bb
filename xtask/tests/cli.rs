//! Snapshots of the command line's help (the binary itself, as a user runs it). A new subcommand
//! or option shows up here as a diff to accept with `cargo insta review` (README: Snapshots).

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("run xtask");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask {args:?}: {:?}\n{stderr}", out.status);
    assert!(stderr.is_empty(), "xtask {args:?} wrote to stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("help is UTF-8");
    assert!(stdout.contains("Usage: cargo xtask"), "{stdout}");
    stdout
}

#[test]
fn xtask_help() {
    insta::with_settings!({ description => "cargo xtask --help", omit_expression => true }, {
        insta::assert_snapshot!("xtask_help", help(&["--help"]));
    });
}

#[test]
fn conform_help() {
    insta::with_settings!({ description => "cargo xtask conform --help", omit_expression => true }, {
        insta::assert_snapshot!("xtask_conform_help", help(&["conform", "--help"]));
    });
}

/// A malformed argument is one line naming it, exit 2: not clap's multi-line usage block.
#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["conform", "--backend", "bogus"][..],
        &["bench", "--tokens", "1,x"],
        &["select", "--mix", "0.5,0.5"],
        &["frobnicate"],
    ] {
        one_line_error(args);
    }
}

/// Runs xtask, which must exit 2 with one line on stderr starting "error:"; returns the line.
fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).env("NO_COLOR", "1").output().expect("run xtask");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "xtask {args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "xtask {args:?} should say one line: {stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    stderr
}

/// The bench's noise and criterion options are checked before any GPU is looked for: one line
/// naming the option, exit 2.
#[test]
fn bad_noise_and_baseline_names_are_one_line_errors_naming_the_option() {
    for (args, names) in [
        (&["bench", "--noise", "-1"][..], "--noise"),
        (&["bench", "--noise", "100"], "--noise"),
        (&["bench", "--criterion-save", "../a"], "--criterion-save"),
        (&["bench", "--criterion-baseline", "change"], "--criterion-baseline"),
        (&["bench", "--criterion-save", "a", "--criterion-baseline", "a"], "--criterion-baseline"),
    ] {
        let line = one_line_error(args);
        assert!(line.contains(names), "xtask {args:?}: {line}");
    }
}

/// `bench --compare A --with B` on the committed H200 pair that CIs alone marked 34 of 68 rows
/// Slower: the measured noise leaves the one row whose kernel changed; `--noise 0` brings the
/// CI-only verdict back.
#[test]
fn compare_of_committed_runs_counts_rows_by_the_measured_noise() {
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/nvidia-h200");
    let (before, after) = (results.join("bench-20261122T014010Z.json"), results.join("bench-20261122T015224Z.json"));
    let compare = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench", "--compare"])
            .arg(&before)
            .arg("--with")
            .arg(&after)
            .args(extra)
            .output()
            .expect("run xtask");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let measured = compare(&[]);
    assert!(measured.contains("\n67 Same, 1 Faster, 0 Slower (noise 2.0% cold, 11.0% hot L2: "), "{measured}");
    let by_ci = compare(&["--noise", "0"]);
    assert!(by_ci.contains("\n27 Same, 7 Faster, 34 Slower (noise 0.0% cold, 0.0% hot L2: --noise 0)"), "{by_ci}");
}

/// When the GPU cannot be had, the GPU commands say so in one line and exit 2: without a GPU (this
/// machine, CI) for want of a driver; on a GPU machine by asking for a device that is not there.
#[test]
fn gpu_commands_without_a_usable_gpu_exit_2_with_one_line() {
    let gpu = fusegate_kernels::cuda::Cuda::probe().is_ok();
    let cuda = fusegate_kernels::BackendId::Cuda.name();
    for args in [&["bench", "--tokens", "1", "--no-torch"][..], &["conform", "--backend", cuda], &["kernels", "routes"]]
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        if gpu {
            cmd.env("FUSEGATE_CUDA_DEVICE", "99");
        }
        let out = cmd.args(args).output().expect("run xtask");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "xtask {args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        let expected = if gpu { "CUDA device 99 requested" } else { "CUDA" };
        assert!(stderr.contains(expected) || (!gpu && stderr.contains("GPU")), "{stderr}");
    }
}

/// A narrowed model check never replaces the whole check's results file: it writes beside it.
#[test]
fn a_partial_model_check_writes_beside_the_whole_checks_results() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("model-cpu.json");
    std::fs::write(&whole, b"keep me").unwrap();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../golden/model/stress-l4");
    let args = ["model-check", "--golden", golden, "--variant", "standard", "--no-controls"];
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("FUSEGATE_RESULTS_DIR", dir.path())
        .output()
        .expect("run xtask");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&whole).unwrap(), b"keep me");
    let partial = fusegate_model::results::ModelCheckRun::load(&dir.path().join("model-cpu-partial.json")).unwrap();
    assert_eq!(partial.models.len(), 1);
    assert!(partial.models[0].entries[0].judged.verdict.passed(), "standard is within HF's floor");
    assert!(String::from_utf8_lossy(&out.stdout).contains("a partial run (--golden, --variant, --no-controls)"));
}

/// `audit` and `model-check --dumps` on a directory that does not exist: one line naming it, exit 2.
#[test]
fn audit_and_dumps_of_a_missing_directory_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-checkpoint");
    let m = missing.to_str().unwrap();
    for args in [&["audit", m][..], &["model-check", "--dumps", m, "--golden", m]] {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("run xtask");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "xtask {args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "xtask {args:?} should say one line: {stderr}");
        assert!(stderr.starts_with("error:") && stderr.contains(m), "{stderr}");
    }
}

/// `audit` of a small synthetic checkpoint: exit 0, the table, and JSON that reads back.
#[test]
fn audit_of_a_synthetic_checkpoint_prints_the_table_and_writes_json() {
    use fusegate_model::{Checkpoint, Qwen3Config, SynthStyle, synthesize};
    let config = Qwen3Config {
        hidden_size: 64,
        intermediate_size: 96,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        vocab_size: 512,
        ..Qwen3Config::qwen3_06b(2)
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    Checkpoint::write(&ckpt, &synthesize(&config, 1, SynthStyle::Stable)).unwrap();
    let json = dir.path().join("audit.json");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["audit", ckpt.to_str().unwrap(), "--json", json.to_str().unwrap()])
        .output()
        .expect("run xtask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("0 defect(s)") && stdout.contains("k_norm outliers in layer 0 (max 96.5 at ch 17)"),
        "{stdout}"
    );
    let back = fusegate_model::audit::Audit::load(&json).unwrap();
    assert!(back.defects.is_empty() && back.norms.len() == 2 * 4 + 1);
}

/// `bundle --out` never deletes a folder it did not make: a non-empty foreign folder (or a file) is
/// refused before anything is built, and its contents stay.
#[test]
fn bundle_refuses_to_clear_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let keep = dir.path().join("notes.txt");
    std::fs::write(&keep, "a user's file").unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    for out in [dir.path(), file.as_path()] {
        let o =
            Command::new(env!("CARGO_BIN_EXE_xtask")).args(["bundle", "--out"]).arg(out).output().expect("run xtask");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("refusing") && stderr.contains(&out.display().to_string()), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "a user's file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
}

/// A narrowed conform run writes beside the whole run's results (select reads those), and a run
/// whose options match no trial checks nothing: an error, not a pass.
#[test]
fn a_partial_conform_run_writes_beside_and_an_empty_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("conformance-cpu.json");
    std::fs::write(&whole, b"keep me").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env("FUSEGATE_RESULTS_DIR", dir.path())
            .output()
            .expect("run xtask")
    };
    let out = run(&["conform", "--backend", "cpu", "--case", "qwen3-typical-t1", "--variant", "exact"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&whole).unwrap(), b"keep me");
    let partial =
        fusegate_harness::results::ConformanceRun::load(&dir.path().join("conformance-cpu-partial.json")).unwrap();
    let golden_cases: Vec<&str> = partial
        .trials
        .iter()
        .filter_map(|t| match &t.check {
            fusegate_harness::Check::Golden { case } => Some(case.as_str()),
            _ => None,
        })
        .collect();
    assert!(partial.summary.passed > 0 && !golden_cases.is_empty(), "{:?}", partial.summary);
    assert!(golden_cases.iter().all(|c| c.contains("qwen3-typical-t1")), "a substring match: {golden_cases:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("a partial run (--variant, --case)"));

    let out = run(&["conform", "--backend", "cpu", "--case", "no-such-case"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no-such-case") && stderr.contains("matches no"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the empty run wrote nothing");
}

/// An ad-hoc run (no --json, no --record) writes under target/fusegate/results/, never into the
/// committed results/ (which every default run once rewrote, dirtying the checkout).
#[test]
fn an_ad_hoc_conform_run_leaves_the_committed_results_alone() {
    if std::env::var_os("FUSEGATE_RESULTS_DIR").is_some() {
        return; // the environment chose another folder
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = root.join("results/conformance-cpu.json");
    let before = std::fs::read(&committed).expect("the committed CPU results");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["conform", "--backend", "cpu", "--variant", "standard", "--case", "qwen3-typical-t1"])
        .output()
        .expect("run xtask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let written = stdout.lines().find_map(|l| l.strip_prefix("results: ")).expect("the results line");
    assert!(written.ends_with("target/fusegate/results/conformance-cpu-partial.json"), "{written}");
    assert!(std::path::Path::new(written).is_file(), "{written}");
    assert_eq!(std::fs::read(&committed).unwrap(), before, "the committed results were rewritten");
    assert!(!root.join("results/conformance-cpu-partial.json").exists());
}

/// A resolution run narrowed to one case writes beside the whole table, never over it.
#[test]
fn a_partial_resolution_run_writes_beside_the_whole_table() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("resolution-cpu.json");
    std::fs::write(&whole, b"the whole run's table").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["resolution", "--backend", "cpu", "--variant", "mixed", "--case", "tiny-h8-t1"])
        .env("FUSEGATE_RESULTS_DIR", dir.path())
        .env_remove("FUSEGATE_GOLDEN_DIR")
        .output()
        .expect("run xtask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        dir.path().join("resolution-cpu-partial.json").is_file()
            && dir.path().join("resolution-cpu-partial.md").is_file()
    );
    assert_eq!(std::fs::read(&whole).unwrap(), b"the whole run's table");
    assert!(stdout.contains("| bias +1 ulp |"), "{stdout}");
    // A mutant has no contract of its own to measure: one line, exit 2.
    let err = one_line_error(&["resolution", "--backend", "cpu", "--variant", "mutant-round-once"]);
    assert!(err.contains("--variant mutant-round-once: a mutant has no contract"), "{err}");
}

/// The commit in a results file is the one the binary was built from, recorded at build time: run
/// from inside another git repository, it still names this one's (it once named the other's).
#[test]
fn results_name_the_commit_the_binary_was_built_from_wherever_it_runs() {
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = Command::new("git").current_dir(dir).args(args).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if Command::new("git").current_dir(&root).args(["rev-parse", "HEAD"]).output().is_ok_and(|o| !o.status.success()) {
        return; // not built from a git checkout: the build recorded "unknown"
    }
    let ours = git(&root, &["rev-parse", "--short=12", "HEAD"]);
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["init", "-q"]);
    git(other.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "other"]);
    let theirs = git(other.path(), &["rev-parse", "--short=12", "HEAD"]);
    let json = other.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(other.path())
        .args(["conform", "--backend", "cpu", "--variant", "standard", "--case", "qwen3-typical-t1", "--json"])
        .arg(&json)
        .output()
        .expect("run xtask");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = fusegate_harness::results::ConformanceRun::load(&json).unwrap_or_else(|e| panic!("{e}"));
    let recorded = run.environment.git_commit;
    // The build may have been of a modified tree ("-dirty"); the commit is ours either way.
    assert!(recorded == ours || recorded == format!("{ours}-dirty"), "recorded {recorded}, built from {ours}");
    assert_ne!(recorded, theirs);
}

/// Every `cargo xtask <command>` README.md shows is a command the front door has.
#[test]
fn every_command_the_readme_shows_exists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let listed = help(&["--help"]);
    let shown: Vec<&str> = readme
        .split("cargo xtask ")
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !(c.is_ascii_lowercase() || c == '-')).next())
        .filter(|c| !c.is_empty() && !c.starts_with('-'))
        .collect();
    assert!(shown.contains(&"conform") && shown.contains(&"model-check"), "{shown:?}");
    for c in shown {
        assert!(
            listed.lines().any(|l| l.split_whitespace().next() == Some(c)),
            "README.md shows `cargo xtask {c}`, which --help does not list"
        );
    }
}
