//! manifest.json: the index of the goldens, pinning every file by size and sha256 so that a
//! verdict is only ever computed against the exact bytes that were captured.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use fusegate_kernels::{Shape, Weights};
use serde::{Deserialize, Serialize};

use crate::file::is_sha256_hex;
use crate::{Case, GoldenError, Provenance, WeightsCache, dims};

/// The `format` value this crate reads.
pub const MANIFEST_FORMAT: &str = "fusegate-manifest-v1";
/// The manifest's file name inside its directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Environment variable that points [`Manifest::default_dir`] elsewhere, so that a bundled
/// binary can find goldens that are not next to its source tree.
pub const GOLDEN_DIR_ENV: &str = "FUSEGATE_GOLDEN_DIR";

/// One weight set: the op's weights for one model layer, shared by many cases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsEntry {
    pub name: String,
    /// Relative to the manifest's directory.
    pub file: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// One captured case: an input x at one shape, and HF's value at every stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEntry {
    pub name: String,
    /// Relative to the manifest's directory.
    pub file: PathBuf,
    pub sha256: String,
    /// Name of the [`WeightsEntry`] the case was captured with.
    pub weights: String,
    #[serde(flatten)]
    pub shape: Shape,
    pub bytes: u64,
}

/// The parsed, validated manifest. `dir` anchors every entry's relative `file`.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub dir: PathBuf,
    pub provenance: Provenance,
    /// RMSNorm epsilon of every case (HF's Qwen3 uses 1e-6).
    pub eps: f32,
    pub weights: Vec<WeightsEntry>,
    pub cases: Vec<CaseEntry>,
}

/// manifest.json as written by capture.py.
#[derive(Deserialize)]
struct RawManifest {
    format: String,
    provenance: Provenance,
    eps: f32,
    weights: Vec<WeightsEntry>,
    cases: Vec<CaseEntry>,
}

impl Manifest {
    /// Reads and validates `dir/manifest.json`. Only the manifest is read: case and weight files
    /// are read (and their sha256 checked) when a case is loaded.
    pub fn load(dir: &Path) -> Result<Manifest, GoldenError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| GoldenError::Read { path: path.clone(), source })?;
        let raw: RawManifest =
            serde_json::from_str(&text).map_err(|source| GoldenError::ManifestJson { path: path.clone(), source })?;
        if raw.format != MANIFEST_FORMAT {
            return Err(GoldenError::Format { path, expected: MANIFEST_FORMAT, found: raw.format });
        }
        let manifest = Manifest {
            dir: dir.to_path_buf(),
            provenance: raw.provenance,
            eps: raw.eps,
            weights: raw.weights,
            cases: raw.cases,
        };
        manifest.validate().map_err(|reason| GoldenError::ManifestInvalid { path, reason })?;
        Ok(manifest)
    }

    /// The workspace's golden/data, or `$FUSEGATE_GOLDEN_DIR` when set and non-empty.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os(GOLDEN_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("data"),
        }
    }

    /// [`Manifest::load`] of [`Manifest::default_dir`].
    pub fn load_default() -> Result<Manifest, GoldenError> {
        Manifest::load(&Manifest::default_dir())
    }

    /// Path of manifest.json itself (what manifest-level errors name).
    pub fn path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// Absolute (or cwd-relative) path of a file the manifest lists.
    pub fn resolve(&self, file: &Path) -> PathBuf {
        self.dir.join(file)
    }

    /// The case named `name`.
    pub fn case(&self, name: &str) -> Option<&CaseEntry> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// The weight set named `name`.
    pub fn weights_entry(&self, name: &str) -> Option<&WeightsEntry> {
        self.weights.iter().find(|w| w.name == name)
    }

    /// Loads one case (and, through `cache`, its weights) with every check of the format.
    pub fn load_case(&self, entry: &CaseEntry, cache: &WeightsCache) -> Result<Case, GoldenError> {
        crate::case::load(self, entry, cache)
    }

    /// Loads every case in manifest order, stopping at the first bad one.
    pub fn load_all(&self, cache: &WeightsCache) -> Result<Vec<Case>, GoldenError> {
        self.cases.iter().map(|entry| self.load_case(entry, cache)).collect()
    }

    /// Loads one weight set through `cache`, for runs that bring their own x.
    pub fn load_weights(&self, entry: &WeightsEntry, cache: &WeightsCache) -> Result<Arc<Weights>, GoldenError> {
        Ok(cache.get(&self.resolve(&entry.file), entry)?.weights.clone())
    }

    /// The entry named by a case, or the manifest-level error of a dangling reference.
    pub(crate) fn weights_of(&self, case: &CaseEntry) -> Result<&WeightsEntry, GoldenError> {
        self.weights_entry(&case.weights).ok_or_else(|| GoldenError::ManifestInvalid {
            path: self.path(),
            reason: format!("case `{}` names unknown weights `{}`", case.name, case.weights),
        })
    }

    /// Cross-entry rules serde cannot express. Err is the reason, for [`GoldenError::ManifestInvalid`].
    fn validate(&self) -> Result<(), String> {
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(format!("eps {} is not a finite non-negative number", self.eps));
        }
        let mut names = HashSet::new();
        for w in &self.weights {
            check_file(&w.name, &w.file, &w.sha256)?;
            if !names.insert(w.name.as_str()) {
                return Err(format!("weights `{}` listed twice", w.name));
            }
        }
        let mut case_names = HashSet::new();
        for c in &self.cases {
            check_file(&c.name, &c.file, &c.sha256)?;
            if !case_names.insert(c.name.as_str()) {
                return Err(format!("case `{}` listed twice", c.name));
            }
            if !names.contains(c.weights.as_str()) {
                return Err(format!("case `{}` names unknown weights `{}`", c.name, c.weights));
            }
            dims::check_case_shape(&c.shape).map_err(|e| format!("case `{}`: {e}", c.name))?;
        }
        Ok(())
    }
}

/// An entry's file must stay inside the manifest's directory and its sha256 must be a sha256.
fn check_file(name: &str, file: &Path, sha256: &str) -> Result<(), String> {
    let inside = file.components().next().is_some()
        && file.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(format!("`{name}`: file {:?} is not a path inside the manifest's directory", file));
    }
    if !is_sha256_hex(sha256) {
        return Err(format!("`{name}`: sha256 {sha256:?} is not 64 hex digits"));
    }
    Ok(())
}
