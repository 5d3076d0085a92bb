//! Editable safetensors contents: how tests (and anyone making a corrupted golden on purpose)
//! change one tensor or metadata entry of a golden file and write it back.

use half::bf16;
use safetensors::{Dtype, SafeTensors, View};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// An owned tensor that safetensors can serialize.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl Tensor {
    /// Overwrites element `i` of a bf16 tensor (`false` if it is not bf16 or `i` is out of range).
    pub fn set_bf16(&mut self, i: usize, v: f32) -> bool {
        let ok = self.dtype == Dtype::BF16 && 2 * i + 2 <= self.data.len();
        if ok {
            self.data[2 * i..2 * i + 2].copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
        }
        ok
    }

    /// Overwrites element `i` of an f32 tensor (`false` if it is not f32 or `i` is out of range).
    pub fn set_f32(&mut self, i: usize, v: f32) -> bool {
        let ok = self.dtype == Dtype::F32 && 4 * i + 4 <= self.data.len();
        if ok {
            self.data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        ok
    }

    /// The same values stored as F32 (a plausible export mistake); `None` unless this is bf16.
    pub fn bf16_as_f32(&self) -> Option<Tensor> {
        (self.dtype == Dtype::BF16).then(|| Tensor {
            dtype: Dtype::F32,
            shape: self.shape.clone(),
            data: self
                .data
                .chunks_exact(2)
                .flat_map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32().to_le_bytes())
                .collect(),
        })
    }
}

/// A safetensors file's whole contents, editable.
#[derive(Clone, Debug)]
pub struct Contents {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Contents {
    pub fn parse(bytes: &[u8]) -> Result<Contents, safetensors::SafeTensorError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, Tensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
            .collect();
        Ok(Contents { tensors, metadata: header.metadata().clone().unwrap_or_default() })
    }

    pub fn serialize(&self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        safetensors::serialize(self.tensors.iter(), Some(self.metadata.clone()))
    }

    pub fn tensor(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    /// Edits a JSON-valued metadata entry (capture.py's `case`, `spec`, `provenance`); `false`
    /// when the entry is missing or not JSON.
    pub fn edit_meta_json(&mut self, key: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let Some(mut v) = self.metadata.get(key).and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return false;
        };
        edit(&mut v);
        self.metadata.insert(key.into(), v.to_string());
        true
    }
}

/// Records a file's size and sha256 in its manifest entry (after the file was rewritten).
pub fn pin(entry: &mut Value, bytes: &[u8]) {
    entry["sha256"] = crate::sha256_hex(bytes).into();
    entry["bytes"] = bytes.len().into();
}
