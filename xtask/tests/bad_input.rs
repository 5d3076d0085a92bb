//! Bad input and faults, end to end: `xtask conform` on a golden directory with one thing broken.
//! Every case gets one line on stderr that names what is wrong, a non-zero exit (1: a case could
//! not be judged, the other cases still ran; 2: nothing could run, or the results could not be
//! written), no panic, and nothing already written is lost.
//!
//! The fixture copies the small committed goldens (small-h64-t3, small-h64-t97 and
//! nonfinite-h256-t9 with their weights) into a temp dir under a manifest listing only them, and
//! breaks exactly one thing, re-pinning rewritten files (size and sha256) so that each test sees
//! only the failure it made (the approach of golden/tests/common, which tests the same faults at
//! the loader's level). `--variant mixed` keeps runs short: mixed and its five golden mutants on
//! three cases, and one invariance trial.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fusegate_golden::edit::{Contents, pin};
use fusegate_golden::{GoldenError, Manifest, WeightsCache};
use fusegate_harness::Outcome;
use fusegate_harness::results::ConformanceRun;
use fusegate_kernels::registry::{self, Role};
use fusegate_kernels::{BackendId, EntryId};
use serde_json::Value;

const CASES: [&str; 3] = ["small-h64-t3", "small-h64-t97", "nonfinite-h256-t9"];
const WEIGHTS: [&str; 2] = ["small-h64", "nonfinite-h256"];

// ---- Fixture: an editable copy of the small goldens ----

struct Goldens {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Goldens {
    fn new() -> Goldens {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("golden");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/data");
        let mut m: Value = serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
        m["weights"].as_array_mut().unwrap().retain(|w| WEIGHTS.contains(&w["name"].as_str().unwrap()));
        m["cases"].as_array_mut().unwrap().retain(|c| CASES.contains(&c["name"].as_str().unwrap()));
        assert_eq!((m["weights"].as_array().unwrap().len(), m["cases"].as_array().unwrap().len()), (2, 3));
        for list in ["weights", "cases"] {
            for e in m[list].as_array().unwrap() {
                let file = e["file"].as_str().unwrap();
                std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
                std::fs::copy(src.join(file), dir.join(file)).unwrap();
            }
        }
        let g = Goldens { tmp, dir };
        g.write_manifest(&m);
        g
    }

    /// A path in the temp dir, outside the golden directory.
    fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    fn manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.manifest_path()).unwrap()).unwrap()
    }
    fn write_manifest(&self, m: &Value) {
        std::fs::write(self.manifest_path(), serde_json::to_string_pretty(m).unwrap()).unwrap();
    }
    fn edit_manifest(&self, edit: impl FnOnce(&mut Value)) {
        let mut m = self.manifest();
        edit(&mut m);
        self.write_manifest(&m);
    }
    fn case_path(&self, case: &str) -> PathBuf {
        self.dir.join(format!("cases/{case}.safetensors"))
    }
    fn weights_path(&self, weights: &str) -> PathBuf {
        self.dir.join(format!("weights/{weights}.safetensors"))
    }

    /// Replaces a case file's bytes and re-pins them in the manifest.
    fn write_case_bytes(&self, case: &str, bytes: &[u8]) {
        std::fs::write(self.case_path(case), bytes).unwrap();
        self.edit_manifest(|m| {
            pin(m["cases"].as_array_mut().unwrap().iter_mut().find(|c| c["name"] == case).unwrap(), bytes)
        });
    }

    fn rewrite_case(&self, case: &str, edit: impl FnOnce(&mut Contents)) {
        let mut c = Contents::parse(&std::fs::read(self.case_path(case)).unwrap()).unwrap();
        edit(&mut c);
        self.write_case_bytes(case, &c.serialize().unwrap());
    }
}

// ---- Running the binary ----

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The non-empty stderr lines; asserts that nothing panicked.
    fn error_lines(&self) -> Vec<&str> {
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    /// Asserts exactly one stderr line, starting `error: ` and containing every needle.
    fn one_error_line(&self, needles: &[&str]) -> &str {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "expected one error line, got:\n{}\nstdout:\n{}", self.stderr, self.stdout);
        let line = lines[0];
        assert!(line.starts_with("error: "), "{line}");
        for n in needles {
            assert!(line.contains(n), "{line:?} does not contain {n:?}");
        }
        line
    }

    /// The table's line for (entry, case).
    fn row(&self, entry: EntryId, case: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[0] == BackendId::Cpu.name() && f[1] == entry.name() && f[2] == case
            })
            .unwrap_or_else(|| panic!("no table line for {entry} {case}:\n{}", self.stdout))
    }
}

fn output(mut cmd: Command) -> Run {
    cmd.env_remove("FUSEGATE_GOLDEN_DIR").env_remove("FUSEGATE_RESULTS_DIR").env("NO_COLOR", "1");
    let Output { status, stdout, stderr } = cmd.output().expect("run xtask");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    }
}

fn conform_cmd(golden: &Path, json: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("conform").args(["--backend", BackendId::Cpu.name(), "--golden"]).arg(golden).arg("--json").arg(json);
    cmd.args(extra);
    // Never near the repository's results/, whatever a default might do.
    cmd.current_dir(json.parent().filter(|p| p.is_dir()).unwrap_or(Path::new("/")));
    cmd
}

/// `xtask conform --backend cpu --golden <g> --json <json> --variant mixed <extra>`.
fn conform(g: &Goldens, json: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["--variant", EntryId::Mixed.name()];
    args.extend_from_slice(extra);
    output(conform_cmd(&g.dir, json, &args))
}

/// What `--variant mixed` brings with it: the mutants that impersonate mixed (all golden-visible).
fn mutants_of_mixed() -> Vec<EntryId> {
    let mutants: Vec<EntryId> =
        registry::mutants().filter(|e| e.role == Role::Mutant { of: EntryId::Mixed }).map(|e| e.id).collect();
    assert_eq!(mutants.len(), 5, "{mutants:?}");
    mutants
}

/// The results file, read through the schema that wrote it.
fn results(json: &Path) -> ConformanceRun {
    ConformanceRun::load(json).unwrap_or_else(|e| panic!("{e}"))
}

/// One case could not be loaded: one line naming its file, exit 1, and every other case still
/// judged (PASS for mixed, REJECTED for its mutants) and written to the results file.
fn assert_only_case_failed(g: &Goldens, json: &Path, bad: &str, needles: &[&str]) {
    let run = conform(g, json, &[]);
    let path = g.case_path(bad).display().to_string();
    let mut all = vec![path.as_str()];
    all.extend_from_slice(needles);
    let line = run.one_error_line(&all).to_string();
    assert!(line.starts_with(&format!("error: {path}: ")), "{line}");
    assert_eq!(run.code, Some(1), "stdout:\n{}", run.stdout);
    for case in CASES {
        let want = if case == bad { ("FAIL", "ACCEPTED!") } else { ("PASS", "REJECTED") };
        let mixed = EntryId::Mixed;
        assert!(run.row(mixed, case).contains(&format!(" {} ", want.0)), "{}", run.row(mixed, case));
        for m in mutants_of_mixed() {
            assert!(run.row(m, case).contains(&format!(" {} ", want.1)), "{}", run.row(m, case));
        }
    }
    assert!(run.row(EntryId::Mixed, "(invariance)").contains(" PASS "));
    // The results file holds the whole run, the error included.
    let results = results(json);
    assert_eq!(results.errors, [line.trim_start_matches("error: ")]);
    let failed: Vec<&str> =
        results.trials.iter().filter(|t| matches!(t.outcome, Outcome::Failed(_))).map(|t| t.name.as_str()).collect();
    assert_eq!(failed.len(), 1 + mutants_of_mixed().len(), "{failed:?}");
    assert!(failed.iter().all(|n| n.ends_with(&format!("/{bad}"))), "{failed:?}");
    assert_eq!(results.trials.len(), 3 * 6 + 1);
}

// ---- Corrupted goldens ----

#[test]
fn pristine_fixture_passes_and_exits_0() {
    // The control: every failure below comes from the corruption its test made.
    let g = Goldens::new();
    let json = g.scratch("results.json");
    let run = conform(&g, &json, &[]);
    assert_eq!(run.error_lines(), Vec::<&str>::new());
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    for case in CASES {
        assert!(run.row(EntryId::Mixed, case).contains(" PASS "));
    }
    assert_eq!(results(&json).summary.passed, 19);
}

#[test]
fn truncated_case_file() {
    let g = Goldens::new();
    let bytes = std::fs::read(g.case_path("small-h64-t97")).unwrap();
    g.write_case_bytes("small-h64-t97", &bytes[..bytes.len() - 100]);
    assert_only_case_failed(&g, &g.scratch("r.json"), "small-h64-t97", &["not a valid safetensors file"]);
}

#[test]
fn garbled_case_file() {
    let g = Goldens::new();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    g.write_case_bytes("small-h64-t3", &garbage);
    assert_only_case_failed(&g, &g.scratch("r.json"), "small-h64-t3", &["not a valid safetensors file"]);
}

#[test]
fn tensor_of_the_wrong_dtype() {
    let g = Goldens::new();
    g.rewrite_case("small-h64-t97", |c| {
        let x = c.tensor("x").unwrap().bf16_as_f32().unwrap();
        c.tensors.insert("x".into(), x);
    });
    assert_only_case_failed(&g, &g.scratch("r.json"), "small-h64-t97", &["tensor `x` has dtype F32, expected BF16"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let g = Goldens::new();
    // Same bytes, heads and head dim swapped: [97, 4, 16] -> [97, 16, 4].
    g.rewrite_case("small-h64-t97", |c| c.tensor("q").unwrap().shape = vec![97, 16, 4]);
    assert_only_case_failed(
        &g,
        &g.scratch("r.json"),
        "small-h64-t97",
        &["tensor `q` has shape [97, 16, 4], expected [97, 4, 16]"],
    );
}

#[test]
fn missing_tensor() {
    let g = Goldens::new();
    g.rewrite_case("small-h64-t3", |c| {
        c.tensors.remove("k_normed");
    });
    assert_only_case_failed(&g, &g.scratch("r.json"), "small-h64-t3", &["tensor `k_normed` missing"]);
}

#[test]
fn nan_in_a_golden_row_whose_input_is_finite() {
    // nonfinite-h256-t9 legitimately holds NaN in rows 2, 5 and 7; row 0 of x is finite, so a
    // NaN in row 0 of q is corruption. q is [9, 4, 32]: flat 32 + 5 is head 1, lane 5.
    let g = Goldens::new();
    g.rewrite_case("nonfinite-h256-t9", |c| assert!(c.tensor("q").unwrap().set_bf16(32 + 5, f32::NAN)));
    assert_only_case_failed(
        &g,
        &g.scratch("r.json"),
        "nonfinite-h256-t9",
        &["tensor `q` is NaN at [0, 1, 5] although row 0 of x is finite"],
    );
}

#[test]
fn case_file_that_is_not_the_one_the_manifest_pinned() {
    let g = Goldens::new();
    let path = g.case_path("small-h64-t97");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap(); // deliberately not re-pinned
    assert_only_case_failed(&g, &g.scratch("r.json"), "small-h64-t97", &["sha256 mismatch: manifest says"]);
}

#[test]
fn weights_file_that_is_not_the_one_the_manifest_pinned() {
    // Both small cases share these weights: each reports the weights file, and the case with
    // other weights still passes.
    let g = Goldens::new();
    let path = g.weights_path("small-h64");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let run = conform(&g, &g.scratch("r.json"), &[]);
    let lines = run.error_lines();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    for l in lines {
        assert!(l.starts_with(&format!("error: {}: sha256 mismatch", path.display())), "{l}");
    }
    assert_eq!(run.code, Some(1));
    assert!(run.row(EntryId::Mixed, "nonfinite-h256-t9").contains(" PASS "));
    assert!(run.row(EntryId::Mixed, "small-h64-t3").contains(" FAIL "));
}

// ---- Nothing can run: exit 2, one line ----

#[test]
fn broken_manifest_exits_2_with_one_line_and_leaves_results_alone() {
    let g = Goldens::new();
    let text = std::fs::read_to_string(g.manifest_path()).unwrap();
    std::fs::write(g.manifest_path(), &text[..text.len() / 2]).unwrap();
    let json = g.scratch("r.json");
    std::fs::write(&json, b"{\"earlier\": \"results\"}").unwrap();
    let run = conform(&g, &json, &[]);
    run.one_error_line(&[&g.manifest_path().display().to_string(), "malformed manifest"]);
    assert_eq!(run.code, Some(2));
    assert!(!run.stdout.contains(" PASS "), "nothing should have run:\n{}", run.stdout);
    assert_eq!(std::fs::read(&json).unwrap(), b"{\"earlier\": \"results\"}");
}

#[test]
fn manifest_case_with_t_zero_is_refused_by_the_loader() {
    let g = Goldens::new();
    g.edit_manifest(|m| m["cases"][1]["t"] = 0.into());
    // The loader itself...
    let err = Manifest::load(&g.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    let line = err.to_string();
    assert!(!line.contains('\n') && line.contains("small-h64-t97") && line.contains("t=0"), "{line}");
    // ... and so the command line.
    let run = conform(&g, &g.scratch("r.json"), &[]);
    run.one_error_line(&[&g.manifest_path().display().to_string(), "`small-h64-t97`", "t=0", "zero dimension"]);
    assert_eq!(run.code, Some(2));
}

#[test]
fn a_hand_built_case_entry_with_t_zero_is_refused_too() {
    // CaseEntry is public: load_case re-checks what Manifest::load checked.
    let g = Goldens::new();
    let m = Manifest::load(&g.dir).unwrap();
    let mut entry = m.case("small-h64-t3").unwrap().clone();
    entry.shape.t = 0;
    let err = m.load_case(&entry, &WeightsCache::new()).unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    assert!(!line.contains('\n') && line.contains("zero dimension") && line.contains("t=0"), "{line}");
}

#[test]
fn unknown_variant_exits_2_with_one_line() {
    let g = Goldens::new();
    let run = output(conform_cmd(&g.dir, &g.scratch("r.json"), &["--variant", "nope"]));
    run.one_error_line(&["--variant \"nope\"", "no such variant", EntryId::Mixed.name()]);
    assert_eq!(run.code, Some(2));
    assert!(!g.scratch("r.json").exists());
}

#[test]
fn case_pattern_matching_nothing_exits_2_with_one_line() {
    let g = Goldens::new();
    let run = conform(&g, &g.scratch("r.json"), &["--case", "nomatch"]);
    run.one_error_line(&["--case \"nomatch\"", "matches no golden case", &g.dir.display().to_string()]);
    assert_eq!(run.code, Some(2));
    assert!(!g.scratch("r.json").exists());
}

// ---- Results that cannot be written ----

/// A quick run: one mutant (no invariance trial) on one tiny case.
fn quick(g: &Goldens, json: &Path) -> Command {
    conform_cmd(&g.dir, json, &["--variant", EntryId::MutantUlpBias.name(), "--case", "small-h64-t3"])
}

#[test]
fn results_path_under_a_regular_file_exits_2_naming_it() {
    let g = Goldens::new();
    let file = g.scratch("plain-file");
    std::fs::write(&file, b"keep me").unwrap();
    let json = file.join("results.json");
    let run = output(quick(&g, &json));
    run.one_error_line(&[&format!("writing {}", json.display()), "is not a directory"]);
    assert_eq!(run.code, Some(2));
    assert!(!run.stdout.contains("REJECTED"), "refused before the run:\n{}", run.stdout);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

/// `--json` through a symbolic link: refused before the run; the link and its target stay as they were.
#[test]
fn a_results_path_that_is_a_symlink_is_refused_before_the_run() {
    let g = Goldens::new();
    let target = g.scratch("target.json");
    std::fs::write(&target, b"keep me").unwrap();
    let link = g.scratch("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = output(quick(&g, &link));
    run.one_error_line(&[&format!("writing {}", link.display()), "symbolic link"]);
    assert_eq!(run.code, Some(2));
    assert!(!run.stdout.contains("REJECTED"), "refused before the run:\n{}", run.stdout);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[cfg(target_os = "linux")]
#[test]
fn results_path_under_proc_exits_2_naming_it() {
    // Root can write into a 0555 directory; nobody can create files in /proc.
    let g = Goldens::new();
    let json = Path::new("/proc/fusegate-results/conformance.json");
    let run = output(quick(&g, json));
    run.one_error_line(&[&format!("writing {}", json.display()), "/proc/fusegate-results"]);
    assert_eq!(run.code, Some(2));
}

#[cfg(target_os = "linux")]
#[test]
fn a_write_that_fails_midway_leaves_the_existing_results_intact() {
    // RLIMIT_FSIZE makes the write itself fail (EFBIG; SIGXFSZ ignored) after the temp file was
    // created and partly written: the file already at the path must survive byte for byte, and
    // the temp file must be gone. A writer that truncated the target in place would lose it.
    let g = Goldens::new();
    let dir = g.scratch("results");
    std::fs::create_dir(&dir).unwrap();
    let json = dir.join("conformance-cpu.json");
    let earlier = serde_json::to_vec_pretty(&serde_json::json!({"schema": "earlier run", "n": 1})).unwrap();
    std::fs::write(&json, &earlier).unwrap();
    let inner = quick(&g, &json);
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "trap '' XFSZ; ulimit -f 2 && exec \"$0\" \"$@\""])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(&dir);
    let run = output(cmd);
    run.one_error_line(&[&format!("writing {}", json.display()), "too large"]);
    assert_eq!(run.code, Some(2));
    assert_eq!(std::fs::read(&json).unwrap(), earlier, "the earlier results were damaged");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["conformance-cpu.json"], "temp files left behind");
    // Without the limit the same run replaces the file whole.
    let run = output(quick(&g, &json));
    assert_eq!((run.code, run.error_lines().len()), (Some(0), 0), "{}", run.stderr);
    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results["schema"], "fusegate-conformance-v1");
}

#[test]
fn two_runs_writing_the_same_results_file_at_once() {
    let g = Goldens::new();
    let dir = g.scratch("shared");
    std::fs::create_dir(&dir).unwrap();
    let json = dir.join("conformance-cpu.json");
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = quick(&g, &json);
            cmd.env_remove("FUSEGATE_GOLDEN_DIR").stdout(std::process::Stdio::null());
            cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("one complete file");
    assert_eq!(results["summary"]["passed"], 1);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["conformance-cpu.json"], "temp files left behind");
}
