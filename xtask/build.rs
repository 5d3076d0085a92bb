//! Records the commit this binary is built from (`FUSEGATE_BUILD_COMMIT`), so results name the
//! code that produced them wherever the binary later runs (a bundle on a GPU machine, another
//! checkout). "-dirty" marks a build with uncommitted changes to the sources.

use std::path::Path;
use std::process::Command;

/// What the binary is made of: a change here is a change of the build.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "kernels",
    "golden/src",
    "harness",
    "bench/src",
    "bench/Cargo.toml",
    "model/src",
    "model/Cargo.toml",
    "xtask",
];

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").current_dir(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for s in SOURCES {
        println!("cargo:rerun-if-changed=../{s}");
    }
    // A commit, checkout or staging moves HEAD, a ref or the index.
    if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        let common = git(&root, &["rev-parse", "--path-format=absolute", "--git-common-dir"]).unwrap_or(dir.clone());
        for p in [
            format!("{dir}/HEAD"),
            format!("{dir}/index"),
            format!("{common}/refs/heads"),
            format!("{common}/packed-refs"),
        ] {
            if Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let commit = match git(&root, &["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            let dirty = git(&root, &status).is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=FUSEGATE_BUILD_COMMIT={commit}");
}
