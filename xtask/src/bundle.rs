//! `cargo xtask bundle`: one git-ignored folder that runs fusegate on a GPU machine with no cargo:
//! the release binary, the goldens, the Python scripts and a run.sh.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Build release binaries and assemble bundle/ (run it there with ./bundle/run.sh).
#[derive(clap::Args)]
pub struct Args {
    /// Output folder.
    #[arg(long, default_value = "bundle")]
    out: PathBuf,
    /// Link bundle/golden to ../golden/data instead of copying it (when the tree travels with the
    /// bundle and the copy would double its size).
    #[arg(long)]
    link_goldens: bool,
}

const RUN_SH: &str = r#"#!/usr/bin/env bash
# fusegate on a GPU machine without cargo. Usage: ./run.sh [all|conform|bench|model|select|criterion] [args...]
# all (default): conform --backend cuda, bench, model, select; exits non-zero if any step failed.
# model: the 28-layer HF goldens regenerated here (python3 with torch and transformers), then
# model-check --backend cuda on them (results/<gpu>/model-cuda.json, which select's model gate reads).
# criterion: the bench matrix under criterion twice back to back, the first run saved as baseline
# "a", the second compared with it (Same / Faster / Slower per benchmark; bench's args apply to both).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export FUSEGATE_GOLDEN_DIR="$here/golden" FUSEGATE_SCRIPTS="$here/scripts"
export FUSEGATE_RESULTS_DIR="${FUSEGATE_RESULTS_DIR:-$here/results}"
model() {
  local g28="${TMPDIR:-/tmp}/fusegate-model-l28"
  [ -d "$g28/stable-l28" ] && [ -d "$g28/stress-l28" ] || "$here/capture/model_l28.sh" "$g28" "$here/fusegate" || return 1
  FUSEGATE_MODEL_GOLDEN_DIR="$g28" "$here/fusegate" model-check --backend cuda
}
criterion() {
  "$here/fusegate" bench --criterion-save a "$@" && "$here/fusegate" bench --criterion-baseline a "$@"
}
cmd="${1:-all}"; [ $# -gt 0 ] && shift
if [ "$cmd" = model ]; then model; exit $?; fi
if [ "$cmd" = criterion ]; then criterion "$@"; exit $?; fi
if [ "$cmd" != all ]; then exec "$here/fusegate" "$cmd" "$@"; fi
status=0
"$here/fusegate" conform --backend cuda || status=1
"$here/fusegate" bench "$@" || status=1
model || status=1
"$here/fusegate" select || status=1
exit $status
"#;

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst).with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The file that marks a folder as one this command made (and may therefore clear).
const MARKER: &str = ".fusegate-bundle";

/// Refuses an `--out` that exists and holds anything but an earlier bundle: nothing is deleted
/// that this command did not create.
fn check_out(out: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("--out {}: {e}", out.display()),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        bail!("--out {}: exists and is not a folder; refusing to replace it", out.display());
    }
    let empty = std::fs::read_dir(out).with_context(|| format!("--out {}", out.display()))?.next().is_none();
    if !empty && !out.join(MARKER).is_file() {
        bail!("--out {}: a folder with other contents (not a fusegate bundle); refusing to delete it", out.display());
    }
    Ok(())
}

/// One line of `cargo build --message-format=json`: the artifacts it built, and where.
#[derive(serde::Deserialize)]
struct CargoMessage {
    reason: String,
    target: Option<CargoTarget>,
    executable: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct CargoTarget {
    name: String,
}

/// Builds xtask in release mode and returns its binary where cargo put it (CARGO_TARGET_DIR,
/// a config's target-dir or target/).
fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "--package", "xtask", "--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build --release")?;
    if !out.status.success() {
        bail!("cargo build --release failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<CargoMessage>(l).ok())
        .filter(|m| m.reason == "compiler-artifact" && m.target.as_ref().is_some_and(|t| t.name == "xtask"))
        .find_map(|m| m.executable)
        .context("cargo build reported no xtask executable")
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?.to_path_buf();
    let out = if a.out.is_absolute() { a.out.clone() } else { root.join(&a.out) };
    check_out(&out)?;
    let binary = build_release(&root)?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(MARKER), "made by cargo xtask bundle: cleared and rebuilt by the next one\n")
        .context("marking the bundle")?;
    std::fs::copy(&binary, out.join("fusegate")).with_context(|| format!("copying the binary {}", binary.display()))?;
    copy_dir(&root.join("bench/scripts"), &out.join("scripts"))?;
    copy_dir(&root.join("golden/capture"), &out.join("capture"))?;
    // The prompts, where capture/model_l28.sh looks for them (../model/prompts.json).
    std::fs::create_dir_all(out.join("model")).context("creating the bundle's model folder")?;
    std::fs::copy(root.join("golden/model/prompts.json"), out.join("model/prompts.json"))
        .context("copying golden/model/prompts.json")?;
    if a.link_goldens {
        std::os::unix::fs::symlink("../golden/data", out.join("golden")).context("linking the goldens")?;
    } else {
        copy_dir(&root.join("golden/data"), &out.join("golden"))?;
    }
    let run_sh = out.join("run.sh");
    std::fs::write(&run_sh, RUN_SH).context("writing run.sh")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755))?;
    let size: u64 = walk_size(&out);
    let run_there = if a.out.is_absolute() { run_sh.clone() } else { Path::new(".").join(&a.out).join("run.sh") };
    println!(
        "bundle: {} ({:.1} MiB); on the GPU machine: {}",
        out.display(),
        size as f64 / 1048576.0,
        run_there.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn walk_size(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map_or(0, |m| {
        if m.is_dir() {
            std::fs::read_dir(p).map_or(0, |r| r.filter_map(|e| e.ok()).map(|e| walk_size(&e.path())).sum())
        } else {
            m.len()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// run.sh beside a stand-in `fusegate` that logs its arguments and fails when told to.
    fn run_sh(args: &[&str], fail_on: &str) -> (bool, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let fake = format!(
            "#!/usr/bin/env bash\necho \"$*\" >> '{}'\ncase \"$*\" in *'{fail_on}'*) exit 1;; esac\n",
            log.display()
        );
        use std::os::unix::fs::PermissionsExt;
        for (name, text) in [("fusegate", fake.as_str()), ("run.sh", RUN_SH)] {
            std::fs::write(dir.path().join(name), text).unwrap();
            std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // TMPDIR here: no 28-layer goldens from an earlier run are found, so `model` fails fast.
        // Through bash, not exec: a file just written may still be open in a child another test
        // thread forked meanwhile (exec would fail with "text file busy").
        let status =
            Command::new("bash").arg(dir.path().join("run.sh")).args(args).env("TMPDIR", dir.path()).status().unwrap();
        let calls = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect();
        (status.success(), calls)
    }

    /// One test, so that no other of these forks while a stand-in is being written.
    #[test]
    fn criterion_saves_then_compares_and_all_is_unchanged() {
        let (ok, calls) = run_sh(&["criterion", "--tokens", "1,32"], "never");
        assert!(ok);
        assert_eq!(calls, ["bench --criterion-save a --tokens 1,32", "bench --criterion-baseline a --tokens 1,32"]);
        // A failed first pass leaves nothing to compare with: the second does not run.
        let (ok, calls) = run_sh(&["criterion"], "--criterion-save");
        assert!(!ok);
        assert_eq!(calls, ["bench --criterion-save a"]);

        // model needs python and goldens: its capture step fails here, which all reports at the end.
        let (ok, calls) = run_sh(&["all"], "never");
        assert!(!ok);
        assert_eq!(calls.first().map(String::as_str), Some("conform --backend cuda"));
        assert_eq!(calls.get(1).map(String::as_str), Some("bench"));
        assert_eq!(calls.last().map(String::as_str), Some("select"));
        assert!(!calls.iter().any(|c| c.contains("criterion")), "{calls:?}");
    }
}
