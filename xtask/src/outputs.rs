//! Where a run's results go. Evidence that is committed (`results/` at the workspace root, what a
//! decision quotes) is written only when asked for with `--record`; any other run writes to
//! `target/fusegate/results/` (git-ignored), so trying a command never rewrites a tracked file.
//! Each command reads back (select, the report) from the same root it writes to.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static RECORD: OnceLock<bool> = OnceLock::new();

/// Chosen once, by `main`, from `--record`.
pub fn set_record(record: bool) {
    let _ = RECORD.set(record);
}

/// The workspace this binary was built in, where it still exists (a bundled binary on another
/// machine has none).
fn workspace() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("Cargo.toml").is_file().then_some(root)
}

/// `$FUSEGATE_RESULTS_DIR` where set (the bundle's run.sh sets it); else, in the workspace,
/// `results/` with `--record` and `target/fusegate/results/` without; else (a bundled binary run
/// by hand) `results/` in the working directory.
pub fn results_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FUSEGATE_RESULTS_DIR") {
        return PathBuf::from(dir);
    }
    match workspace() {
        Some(root) if *RECORD.get().unwrap_or(&false) => root.join("results"),
        Some(root) => root.join("target/fusegate/results"),
        None => PathBuf::from("results"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ad_hoc_runs_write_under_target_and_never_into_the_committed_results() {
        if std::env::var_os("FUSEGATE_RESULTS_DIR").is_some() {
            return; // the environment chose another folder
        }
        // The test binary never calls set_record: the default, an ad-hoc run.
        let dir = super::results_dir();
        assert!(dir.is_absolute() && dir.ends_with("target/fusegate/results"), "{}", dir.display());
        let root = dir.ancestors().nth(3).expect("three folders up");
        assert!(root.join("Cargo.toml").is_file() && root.join("xtask").is_dir(), "{}", dir.display());
        // target/ is ignored by git: nothing written there dirties the checkout.
        let ignored = std::process::Command::new("git")
            .current_dir(root)
            .args(["check-ignore", "-q", "target/fusegate/results/conformance-cpu.json"])
            .status()
            .map(|s| s.success());
        assert!(matches!(ignored, Ok(true) | Err(_)), "target/fusegate/results is not git-ignored");
    }
}
