//! Typed, checked reads from one golden safetensors file. Every failure names the file and, where
//! one is at fault, the tensor, so that a corrupt golden is found without opening a debugger.

use std::collections::HashMap;
use std::path::Path;

use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::de::DeserializeOwned;

use crate::GoldenError;

/// A parsed golden file borrowing its bytes.
pub(crate) struct GoldenFile<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl<'a> GoldenFile<'a> {
    /// Parses the header; the safetensors crate checks that offsets, dtypes and shapes cover the
    /// buffer exactly, so later tensor reads cannot run past it.
    pub fn parse(path: &'a Path, data: &'a [u8]) -> Result<Self, GoldenError> {
        let wrap = |source| GoldenError::SafeTensors { path: path.into(), source };
        let (_, header) = SafeTensors::read_metadata(data).map_err(wrap)?;
        let tensors = SafeTensors::deserialize(data).map_err(wrap)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(GoldenFile { path, tensors, metadata })
    }

    /// Fails unless the `format` metadata is exactly `expected` (format and version).
    pub fn require_format(&self, expected: &'static str) -> Result<(), GoldenError> {
        let found = self.meta("format")?;
        if found != expected {
            return Err(GoldenError::Format { path: self.path.into(), expected, found: found.into() });
        }
        Ok(())
    }

    /// A string metadata value the format requires.
    pub fn meta(&self, key: &'static str) -> Result<&str, GoldenError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| GoldenError::MetadataMissing { path: self.path.into(), key })
    }

    /// A JSON-valued metadata entry (capture.py stores dicts as JSON strings).
    pub fn meta_json<T: DeserializeOwned>(&self, key: &'static str) -> Result<T, GoldenError> {
        serde_json::from_str(self.meta(key)?).map_err(|source| GoldenError::MetadataJson {
            path: self.path.into(),
            key,
            source,
        })
    }

    /// A bf16 tensor with exactly `dims`, little-endian as safetensors stores it.
    pub fn bf16(&self, name: &'static str, dims: &[usize]) -> Result<Vec<bf16>, GoldenError> {
        let view = self.view(name, Dtype::BF16, dims)?;
        Ok(view.data().chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect())
    }

    /// An f32 tensor with exactly `dims`.
    pub fn f32(&self, name: &'static str, dims: &[usize]) -> Result<Vec<f32>, GoldenError> {
        let view = self.view(name, Dtype::F32, dims)?;
        Ok(view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn view(&self, name: &'static str, dtype: Dtype, dims: &[usize]) -> Result<TensorView<'a>, GoldenError> {
        let path = || self.path.to_path_buf();
        let view = self.tensors.tensor(name).map_err(|e| match e {
            SafeTensorError::TensorNotFound(_) => GoldenError::TensorMissing { path: path(), tensor: name },
            source => GoldenError::SafeTensors { path: path(), source },
        })?;
        if view.dtype() != dtype {
            return Err(GoldenError::Dtype { path: path(), tensor: name, expected: dtype, found: view.dtype() });
        }
        if view.shape() != dims {
            return Err(GoldenError::Shape {
                path: path(),
                tensor: name,
                expected: dims.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        Ok(view)
    }
}
