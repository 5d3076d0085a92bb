//! Why a checkpoint, config or tokenizer could not be used.
//!
//! Every message is one line that starts with the offending file's path and, where a key or a
//! tensor is at fault, names it: a reader goes straight to the file without a backtrace.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError};

/// A checkpoint, config or tokenizer file that is missing, corrupt or inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file could not be read (missing, permissions, ...).
    #[error("{}: cannot read: {}", line(.path.display()), line(.source))]
    Read { path: PathBuf, source: std::io::Error },

    /// The file could not be written (or its directory created).
    #[error("{}: cannot write: {}", line(.path.display()), line(.source))]
    Write { path: PathBuf, source: std::io::Error },

    /// A JSON file (config.json, an index) is not JSON.
    #[error("{}: not valid JSON: {}", line(.path.display()), line(.source))]
    Json { path: PathBuf, source: serde_json::Error },

    /// A JSON file whose top level is not an object.
    #[error("{}: expected a JSON object at the top level", line(.path.display()))]
    NotObject { path: PathBuf },

    /// A key the config must state is absent (never defaulted).
    #[error("{}: key \"{key}\" is missing", line(.path.display()))]
    KeyMissing { path: PathBuf, key: &'static str },

    /// A key has the wrong JSON type; `found` is the value as JSON.
    #[error("{}: key \"{key}\": expected {expected}, got {}", line(.path.display()), line(.found))]
    KeyType { path: PathBuf, key: &'static str, expected: &'static str, found: String },

    /// The keys parse but describe no valid model (zero sizes, heads not dividing, eps <= 0, ...).
    #[error("{}: key \"{key}\": {}", line(.path.display()), line(.reason))]
    KeyInvalid { path: PathBuf, key: &'static str, reason: String },

    /// The directory holds neither model.safetensors nor model.safetensors.index.json.
    #[error("{}: no model.safetensors or model.safetensors.index.json", line(.path.display()))]
    NoWeights { path: PathBuf },

    /// The bytes are not a safetensors file (truncated, bad header, bad offsets, ...).
    #[error("{}: not a valid safetensors file (truncated or corrupt): {}", line(.path.display()), line(.source))]
    SafeTensors { path: PathBuf, source: SafeTensorError },

    /// A tensor the config implies is absent (from the file, or from the index's weight_map).
    #[error("{}: tensor \"{}\" is missing", line(.path.display()), line(.tensor))]
    TensorMissing { path: PathBuf, tensor: String },

    /// A tensor is stored with another dtype than BF16.
    #[error("{}: tensor \"{}\" has dtype {found}, expected {expected}", line(.path.display()), line(.tensor))]
    Dtype { path: PathBuf, tensor: String, expected: Dtype, found: Dtype },

    /// A tensor's shape disagrees with the config.
    #[error(
        "{}: tensor \"{}\" has shape {found:?}, expected {expected:?} for the config",
        line(.path.display()),
        line(.tensor)
    )]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },

    /// A sharded index is malformed (no weight_map, a shard name that is not a plain file name).
    #[error("{}: invalid index: {}", line(.path.display()), line(.reason))]
    IndexInvalid { path: PathBuf, reason: String },

    /// The index's weight_map names a shard file that does not exist.
    #[error(
        "{}: weight_map names shard \"{}\" (for tensor \"{}\"), which does not exist",
        line(.path.display()),
        line(.shard),
        line(.tensor)
    )]
    ShardMissing { path: PathBuf, shard: String, tensor: String },

    /// A tokenizer.json was asked for and is absent.
    #[error("{}: tokenizer.json is missing", line(.path.display()))]
    TokenizerMissing { path: PathBuf },

    /// A tokenizer file that does not parse as a tokenizer.
    #[error("{}: not a valid tokenizer: {}", line(.path.display()), line(.reason))]
    Tokenizer { path: PathBuf, reason: String },

    /// The tokenizer is not the pinned one (hashes shortened to 12 hex digits).
    #[error("{}: sha256 of the decompressed tokenizer is {actual}.., expected {expected}..", line(.path.display()))]
    TokenizerSha256 { path: PathBuf, expected: String, actual: String },

    /// Encoding text failed.
    #[error("cannot encode {text:?}: {}", line(.reason))]
    Encode { text: String, reason: String },

    /// `Checkpoint::write` refuses a directory that already holds files.
    #[error("{}: directory exists and is not empty: refusing to write a checkpoint into it", line(.path.display()))]
    NotEmpty { path: PathBuf },

    /// Weights handed to `Checkpoint::write` contradict their own config.
    #[error("{}: {}: {}", line(.path.display()), line(.what), line(.reason))]
    Inconsistent { path: PathBuf, what: String, reason: String },
}

impl ModelError {
    /// The file (or directory) the error is about; `None` for an encode failure.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelError::Read { path, .. }
            | ModelError::Write { path, .. }
            | ModelError::Json { path, .. }
            | ModelError::NotObject { path }
            | ModelError::KeyMissing { path, .. }
            | ModelError::KeyType { path, .. }
            | ModelError::KeyInvalid { path, .. }
            | ModelError::NoWeights { path }
            | ModelError::SafeTensors { path, .. }
            | ModelError::TensorMissing { path, .. }
            | ModelError::Dtype { path, .. }
            | ModelError::Shape { path, .. }
            | ModelError::IndexInvalid { path, .. }
            | ModelError::ShardMissing { path, .. }
            | ModelError::TokenizerMissing { path }
            | ModelError::Tokenizer { path, .. }
            | ModelError::TokenizerSha256 { path, .. }
            | ModelError::NotEmpty { path }
            | ModelError::Inconsistent { path, .. } => Some(path),
            ModelError::Encode { .. } => None,
        }
    }
}

/// Renders `x` on one line: wrapped errors (io, serde_json, safetensors, tokenizers) and paths
/// are not ours, so a newline in any of them must not split the message.
pub(crate) fn line(x: impl Display) -> String {
    x.to_string().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_multiline_text_stays_on_one_line() {
        let e = ModelError::IndexInvalid { path: PathBuf::from("d/x.json"), reason: "a\nb\r\nc".into() };
        let shown = e.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown:?}");
        assert!(shown.starts_with("d/x.json: invalid index: a b  c"), "{shown}");
        assert_eq!(e.path(), Some(Path::new("d/x.json")));
    }
}
