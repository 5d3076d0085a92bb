//! One golden case, typed: the op's inputs and HF's value at every stage, after every check the
//! format allows, so that a comparison never starts from a golden that is itself wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusegate_kernels::{Dims, Observed, OpInputs, Shape, Stage, StageData, Weights};
use half::bf16;
use serde::Deserialize;

use crate::file::{read_pinned, short_hex};
use crate::finite::{finite_rows, first_nonfinite_in_finite_row, unravel};
use crate::tensors::GoldenFile;
use crate::{CaseEntry, GoldenError, Manifest, Provenance, dims};

/// The `format` metadata of a case file.
pub const CASE_FORMAT: &str = "fusegate-case-v1";

/// A loaded, verified case.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub shape: Shape,
    pub eps: f32,
    /// [T, H], row-major.
    pub x: Vec<bf16>,
    /// Name of the weight set (a [`crate::WeightsEntry`]).
    pub weights_name: String,
    pub weights: Arc<Weights>,
    /// HF's value at all 8 stages: inv_rms as F32, every other stage as Bf16.
    pub reference: Observed,
    /// The stack this case file says it was captured on.
    pub provenance: Provenance,
    /// Where the case was read from.
    pub file: PathBuf,
}

impl Case {
    /// What a backend needs to run the op on this case.
    pub fn inputs(&self) -> OpInputs<'_> {
        OpInputs { shape: self.shape, x: &self.x, weights: &self.weights, eps: self.eps }
    }
}

/// The part of the `case` metadata the loader cross-checks; seed and x spec are informative.
#[derive(Deserialize)]
struct CaseMeta {
    name: String,
    weights: String,
    t: usize,
    h: usize,
    nq: usize,
    nkv: usize,
    d: usize,
    eps: f64,
}

/// See [`Manifest::load_case`].
pub(crate) fn load(manifest: &Manifest, entry: &CaseEntry, cache: &crate::WeightsCache) -> Result<Case, GoldenError> {
    let shape = entry.shape;
    // Entries are public and may have been built by hand: re-prove the shape is safe to use.
    dims::check_case_shape(&shape).map_err(|reason| GoldenError::ManifestInvalid {
        path: manifest.path(),
        reason: format!("case `{}`: {reason}", entry.name),
    })?;
    let weights_entry = manifest.weights_of(entry)?;
    let path = manifest.resolve(&entry.file);
    let data = read_pinned(&path, &entry.sha256, entry.bytes)?;
    let file = GoldenFile::parse(&path, &data)?;
    file.require_format(CASE_FORMAT)?;

    let meta: CaseMeta = file.meta_json("case")?;
    check_meta(&path, &meta, entry, manifest.eps)?;
    let recorded = file.meta("weights_sha256")?;
    if !recorded.eq_ignore_ascii_case(&weights_entry.sha256) {
        return Err(GoldenError::WeightsSha256 {
            path: path.clone(),
            weights: weights_entry.name.clone(),
            expected: short_hex(&weights_entry.sha256),
            found: short_hex(recorded),
        });
    }
    let provenance: Provenance = file.meta_json("provenance")?;

    let x = file.bf16("x", &[shape.t, shape.h])?;
    let x_rows = finite_rows(&x, shape.t, shape.h);
    let mut reference = Observed::new();
    for stage in Stage::ALL {
        let data = read_stage(&file, stage, &shape)?;
        check_finite_rows(&path, stage, &shape, &data, &x_rows)?;
        reference.insert(stage, data);
    }

    let loaded = cache.get(&manifest.resolve(&weights_entry.file), weights_entry)?;
    let want = shape.dims;
    if loaded.dims != want {
        return Err(GoldenError::MetadataMismatch {
            path: loaded.path.clone(),
            field: "weights dims",
            file: dims::describe_weights(&loaded.dims),
            manifest: format!("{} (case `{}`)", dims::describe_weights(&want), entry.name),
        });
    }

    Ok(Case {
        name: entry.name.clone(),
        shape,
        eps: manifest.eps,
        x,
        weights_name: weights_entry.name.clone(),
        weights: loaded.weights.clone(),
        reference,
        provenance,
        file: path,
    })
}

/// The case file's own description must agree with the manifest's entry for it.
fn check_meta(path: &Path, meta: &CaseMeta, entry: &CaseEntry, eps: f32) -> Result<(), GoldenError> {
    let mismatch = |field, file: String, manifest: String| {
        Err(GoldenError::MetadataMismatch { path: path.into(), field, file, manifest })
    };
    if meta.name != entry.name {
        return mismatch("case name", meta.name.clone(), entry.name.clone());
    }
    if meta.weights != entry.weights {
        return mismatch("weights", meta.weights.clone(), entry.weights.clone());
    }
    let file_shape = Dims { h: meta.h, nq: meta.nq, nkv: meta.nkv, d: meta.d }.with_t(meta.t);
    if file_shape != entry.shape {
        return mismatch("shape", dims::describe(&file_shape), dims::describe(&entry.shape));
    }
    // capture.py writes the manifest's eps into every case; compare at the precision used.
    if meta.eps as f32 != eps {
        return mismatch("eps", format!("{:e}", meta.eps), format!("{eps:e}"));
    }
    Ok(())
}

fn read_stage(file: &GoldenFile<'_>, stage: Stage, shape: &Shape) -> Result<StageData, GoldenError> {
    let dims = stage.dims(shape);
    Ok(match stage {
        Stage::InvRms => StageData::F32(file.f32(stage.tensor_name(), &dims)?),
        _ => StageData::Bf16(file.bf16(stage.tensor_name(), &dims)?),
    })
}

/// A stage may be non-finite only in rows where x is: anything else is a corrupted golden.
fn check_finite_rows(
    path: &Path,
    stage: Stage,
    shape: &Shape,
    data: &StageData,
    x_rows: &[bool],
) -> Result<(), GoldenError> {
    let bad = match data {
        StageData::F32(v) => first_nonfinite_in_finite_row(v.iter().copied(), shape.t, x_rows),
        StageData::Bf16(v) => first_nonfinite_in_finite_row(v.iter().map(|b| b.to_f32()), shape.t, x_rows),
    };
    match bad {
        None => Ok(()),
        Some((flat, value)) => {
            let index = unravel(flat, &stage.dims(shape));
            Err(GoldenError::NonFinite {
                path: path.into(),
                tensor: stage.tensor_name(),
                row: index.first().copied().unwrap_or(0),
                index,
                value,
            })
        }
    }
}
