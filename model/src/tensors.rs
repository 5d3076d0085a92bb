//! Safetensors files, read through a memory map and written deterministically (streamed, so that
//! hashing the bytes a model would write needs no file): every read failure names the file and,
//! where one is at fault, the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::bf16;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use sha2::{Digest, Sha256};

use crate::ModelError;

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's bytes, memory-mapped (an empty file is an empty slice: mapping it would fail).
pub(crate) struct Mapped {
    pub path: PathBuf,
    map: Option<Mmap>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped, ModelError> {
        let read = |source| ModelError::Read { path: path.into(), source };
        let file = File::open(path).map_err(read)?;
        let empty = file.metadata().map_err(read)?.len() == 0;
        // SAFETY: the map is only read, and only while this process holds it. A checkpoint
        // rewritten by another process while it is being opened may read inconsistent bytes
        // (every read is still bounds-checked against the header), as any reader would.
        let map = if empty { None } else { Some(unsafe { Mmap::map(&file) }.map_err(read)?) };
        Ok(Mapped { path: path.into(), map })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The parsed header; safetensors checks that offsets, dtypes and shapes cover the bytes
    /// exactly, so a truncated file fails here and no tensor read can run past the end.
    pub fn parse(&self) -> Result<SafeTensors<'_>, ModelError> {
        SafeTensors::deserialize(self.bytes())
            .map_err(|source| ModelError::SafeTensors { path: self.path.clone(), source })
    }
}

/// The BF16 tensor `name` of `st` (read from `path`), required to have exactly `shape`.
pub(crate) fn read_bf16(path: &Path, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<bf16>, ModelError> {
    let view = st.tensor(name).map_err(|e| match e {
        SafeTensorError::TensorNotFound(_) => ModelError::TensorMissing { path: path.into(), tensor: name.into() },
        source => ModelError::SafeTensors { path: path.into(), source },
    })?;
    if view.dtype() != Dtype::BF16 {
        let (expected, found) = (Dtype::BF16, view.dtype());
        return Err(ModelError::Dtype { path: path.into(), tensor: name.into(), expected, found });
    }
    if view.shape() != shape {
        let (expected, found) = (shape.to_vec(), view.shape().to_vec());
        return Err(ModelError::Shape { path: path.into(), tensor: name.into(), expected, found });
    }
    Ok(view.data().chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect())
}

/// Streams `tensors` (HF name, shape, values) into `out` as a safetensors file: byte for byte
/// what `safetensors::serialize` writes for them with metadata `format: pt` (as HF does), i.e.
/// ordered by name (all BF16), header padded with spaces to 8 bytes. The bytes depend only on the
/// tensors, and no second copy of the model is ever held.
pub(crate) fn stream(tensors: &[(String, Vec<usize>, &[bf16])], out: &mut impl Write) -> std::io::Result<()> {
    let mut order: Vec<_> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut offset = 0;
    let infos = order
        .iter()
        .map(|(name, shape, values)| {
            let data_offsets = (offset, offset + 2 * values.len());
            offset = data_offsets.1;
            (name.clone(), TensorInfo { dtype: Dtype::BF16, shape: shape.clone(), data_offsets })
        })
        .collect();
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos).map_err(std::io::Error::other)?;
    let mut header = serde_json::to_vec(&metadata)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (_, _, values) in order {
        for chunk in values.chunks(1 << 15) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_bits().to_le_bytes()));
            out.write_all(&buf)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_fips_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn streamed_bytes_are_what_safetensors_serialize_writes() {
        let (a, b): (Vec<bf16>, Vec<bf16>) =
            ((1..=6).map(|i| bf16::from_f32(i as f32 * -0.75)).collect(), vec![bf16::from_f32(3.5); 40_000]);
        let tensors =
            vec![("z.weight".to_string(), vec![2, 3], &a[..]), ("a.weight".to_string(), vec![40_000], &b[..])];
        let mut ours = Vec::new();
        stream(&tensors, &mut ours).unwrap();
        let bytes: Vec<Vec<u8>> =
            tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()).collect();
        let theirs: Vec<(&str, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, shape, _), b)| {
                (n.as_str(), safetensors::tensor::TensorView::new(Dtype::BF16, shape.clone(), b).unwrap())
            })
            .collect();
        let format = HashMap::from([("format".to_string(), "pt".to_string())]);
        assert_eq!(ours, safetensors::serialize(theirs, Some(format)).unwrap());
        let st = SafeTensors::deserialize(&ours).unwrap();
        assert_eq!(read_bf16(Path::new("t"), &st, "z.weight", &[2, 3]).unwrap(), a);
    }

    #[test]
    fn an_empty_or_short_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("empty.safetensors", &b""[..]), ("short.safetensors", &b"\x10\0\0"[..])] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let m = Mapped::open(&path).unwrap();
            let e = m.parse().expect_err("must not parse").to_string();
            assert!(e.contains(name) && e.contains("not a valid safetensors file"), "{e}");
        }
    }
}
