//! Why a golden could not be trusted.
//!
//! Every message is one line that starts with the offending file's path and, where a tensor is
//! at fault, names it: the harness prints these verbatim in a verdict, and a reader must be able
//! to go straight to the file without a backtrace.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError};

/// A golden file (or the manifest that pins them) that is missing, corrupt or inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// The file could not be read at all (missing, permissions, ...).
    #[error("{}: cannot read: {}", line(.path.display()), line(.source))]
    Read { path: PathBuf, source: std::io::Error },

    /// manifest.json is not JSON, or not shaped like a manifest.
    #[error("{}: malformed manifest: {}", line(.path.display()), line(.source))]
    ManifestJson { path: PathBuf, source: serde_json::Error },

    /// manifest.json parsed but says something impossible (unknown weights, duplicate names, ...).
    #[error("{}: invalid manifest: {}", line(.path.display()), line(.reason))]
    ManifestInvalid { path: PathBuf, reason: String },

    /// The file's length differs from the one the manifest recorded.
    #[error(
        "{}: size mismatch: manifest says {expected} bytes, file has {found}",
        line(.path.display())
    )]
    Size { path: PathBuf, expected: u64, found: u64 },

    /// The path is a FIFO, a device or a folder (a symlink is followed): reading it could hang or
    /// never end, so it is refused before it is opened.
    #[error("{}: not a regular file (a FIFO, device or folder); a golden must be a plain file", line(.path.display()))]
    NotAFile { path: PathBuf },

    /// The file is not the one the manifest pinned. Hashes are shortened to 12 hex digits.
    #[error(
        "{}: sha256 mismatch: manifest says {expected}.., file is {actual}..",
        line(.path.display())
    )]
    Sha256 { path: PathBuf, expected: String, actual: String },

    /// The bytes are not a safetensors file (garbage, truncated header, bad offsets, ...).
    #[error("{}: not a valid safetensors file: {}", line(.path.display()), line(.source))]
    SafeTensors { path: PathBuf, source: SafeTensorError },

    /// A metadata key fusegate's capture always writes is absent.
    #[error("{}: metadata key `{key}` missing", line(.path.display()))]
    MetadataMissing { path: PathBuf, key: &'static str },

    /// The `format` metadata (or the manifest's `format`) names another format or version.
    #[error("{}: format is {:?}, expected {expected:?}", line(.path.display()), line(.found))]
    Format { path: PathBuf, expected: &'static str, found: String },

    /// A JSON-valued metadata key does not parse into what the format says it holds.
    #[error("{}: metadata `{key}` is malformed: {}", line(.path.display()), line(.source))]
    MetadataJson { path: PathBuf, key: &'static str, source: serde_json::Error },

    /// A tensor the format requires is absent.
    #[error("{}: tensor `{tensor}` missing", line(.path.display()))]
    TensorMissing { path: PathBuf, tensor: &'static str },

    /// A tensor is stored with another dtype (e.g. x saved as F32).
    #[error(
        "{}: tensor `{tensor}` has dtype {found}, expected {expected}",
        line(.path.display())
    )]
    Dtype { path: PathBuf, tensor: &'static str, expected: Dtype, found: Dtype },

    /// A tensor's dims disagree with the shape the manifest declares.
    #[error(
        "{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}",
        line(.path.display())
    )]
    Shape { path: PathBuf, tensor: &'static str, expected: Vec<usize>, found: Vec<usize> },

    /// A file's own metadata contradicts the manifest (case name, weights name, shape, eps).
    #[error(
        "{}: metadata says {field} = {}, manifest says {}",
        line(.path.display()),
        line(.file),
        line(.manifest)
    )]
    MetadataMismatch { path: PathBuf, field: &'static str, file: String, manifest: String },

    /// The case was captured against other weights than the ones the manifest pairs it with.
    #[error(
        "{}: metadata weights_sha256 is {found}.., manifest's weights `{}` are {expected}..",
        line(.path.display()),
        line(.weights)
    )]
    WeightsSha256 { path: PathBuf, weights: String, expected: String, found: String },

    /// A golden stage is NaN/Inf in a row whose input is finite: the golden is corrupt.
    #[error(
        "{}: tensor `{tensor}` is {value} at {index:?} although row {row} of x is finite",
        line(.path.display())
    )]
    NonFinite { path: PathBuf, tensor: &'static str, index: Vec<usize>, row: usize, value: f32 },

    /// A weight is NaN/Inf: no kernel comparison against such weights means anything.
    #[error("{}: tensor `{tensor}` is {value} at {index:?}: weights must be finite", line(.path.display()))]
    WeightsNonFinite { path: PathBuf, tensor: &'static str, index: Vec<usize>, value: f32 },
}

impl GoldenError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            GoldenError::Read { path, .. }
            | GoldenError::ManifestJson { path, .. }
            | GoldenError::ManifestInvalid { path, .. }
            | GoldenError::Size { path, .. }
            | GoldenError::NotAFile { path }
            | GoldenError::Sha256 { path, .. }
            | GoldenError::SafeTensors { path, .. }
            | GoldenError::MetadataMissing { path, .. }
            | GoldenError::Format { path, .. }
            | GoldenError::MetadataJson { path, .. }
            | GoldenError::TensorMissing { path, .. }
            | GoldenError::Dtype { path, .. }
            | GoldenError::Shape { path, .. }
            | GoldenError::MetadataMismatch { path, .. }
            | GoldenError::WeightsSha256 { path, .. }
            | GoldenError::NonFinite { path, .. }
            | GoldenError::WeightsNonFinite { path, .. } => path,
        }
    }
}

/// Renders `x` on one line: the error sources we wrap (io, serde_json, safetensors) and the paths
/// we print are not ours, so a newline in any of them must not split a verdict line.
fn line(x: impl Display) -> String {
    x.to_string().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_multiline_text_stays_on_one_line() {
        let e = GoldenError::ManifestInvalid {
            path: PathBuf::from("dir/manifest.json"),
            reason: "first\nsecond\r\nthird".into(),
        };
        let shown = e.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown:?}");
        assert!(shown.starts_with("dir/manifest.json: "), "{shown}");
        assert_eq!(e.path(), Path::new("dir/manifest.json"));
    }
}
