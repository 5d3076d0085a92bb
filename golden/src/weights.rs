//! Loading one weights file: the norm weight, the fused QKV weight and Qwen3's q/k norms, checked
//! against the dims the file's own spec declares and required to be finite.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusegate_kernels::{Dims, Weights};
use half::bf16;
use serde::Deserialize;

use crate::file::read_pinned;
use crate::finite::{first_nonfinite, unravel};
use crate::tensors::GoldenFile;
use crate::{GoldenError, WeightsEntry, dims};

/// The `format` metadata of a weights file.
pub const WEIGHTS_FORMAT: &str = "fusegate-weights-v1";

/// The part of capture.py's weight spec (metadata `spec`) that fixes tensor dims.
#[derive(Deserialize)]
struct WeightsSpec {
    name: String,
    h: usize,
    nq: usize,
    nkv: usize,
    d: usize,
}

/// A verified weight set and the dims it was captured for.
#[derive(Debug)]
pub(crate) struct LoadedWeights {
    pub path: PathBuf,
    pub dims: Dims,
    pub weights: Arc<Weights>,
}

/// Reads `path`, checks it against `entry` (size, sha256, spec name) and the format.
pub(crate) fn load(path: &Path, entry: &WeightsEntry) -> Result<LoadedWeights, GoldenError> {
    let data = read_pinned(path, &entry.sha256, entry.bytes)?;
    let file = GoldenFile::parse(path, &data)?;
    file.require_format(WEIGHTS_FORMAT)?;
    let spec: WeightsSpec = file.meta_json("spec")?;
    if spec.name != entry.name {
        return Err(GoldenError::MetadataMismatch {
            path: path.into(),
            field: "weights name",
            file: spec.name,
            manifest: entry.name.clone(),
        });
    }
    let s = Dims { h: spec.h, nq: spec.nq, nkv: spec.nkv, d: spec.d };
    dims::check_dims(&s).map_err(|reason| GoldenError::ManifestInvalid {
        path: path.into(),
        reason: format!("metadata spec: {reason}"),
    })?;
    let read = |name: &'static str, dims: &[usize]| -> Result<Vec<bf16>, GoldenError> {
        let values = file.bf16(name, dims)?;
        match first_nonfinite(values.iter().map(|v| v.to_f32())) {
            None => Ok(values),
            Some((i, value)) => {
                Err(GoldenError::WeightsNonFinite { path: path.into(), tensor: name, index: unravel(i, dims), value })
            }
        }
    };
    let weights = Weights {
        norm: read("norm_weight", &[s.h])?,
        qkv: read("qkv_weight", &[s.n(), s.h])?,
        q_norm: read("q_norm_weight", &[s.d])?,
        k_norm: read("k_norm_weight", &[s.d])?,
    };
    Ok(LoadedWeights { path: path.into(), dims: s, weights: Arc::new(weights) })
}
