//! Reading a golden file whole and proving it is the exact file the manifest pinned, before any
//! of its bytes are interpreted.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::GoldenError;

/// How many hex digits of a sha256 error messages show: enough to tell files apart at a glance.
const SHORT_HEX: usize = 12;

/// The file's bytes, after checking its length and sha256 against the manifest's record.
pub(crate) fn read_pinned(path: &Path, sha256: &str, bytes: u64) -> Result<Vec<u8>, GoldenError> {
    let data = std::fs::read(path).map_err(|source| GoldenError::Read { path: path.into(), source })?;
    let found = data.len() as u64;
    if found != bytes {
        return Err(GoldenError::Size { path: path.into(), expected: bytes, found });
    }
    let actual = sha256_hex(&data);
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(GoldenError::Sha256 { path: path.into(), expected: short_hex(sha256), actual: short_hex(&actual) });
    }
    Ok(data)
}

/// Lower-case hex sha256 of `data`, as `capture.py` records it.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 hex digits (fewer if the input is shorter), for messages.
pub(crate) fn short_hex(hex: &str) -> String {
    hex.chars().take(SHORT_HEX).collect()
}

/// True for a well-formed sha256 in hex.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(short_hex(&sha256_hex(b"abc")), "ba7816bf8f01");
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex("ba7816bf8f01"));
    }
}
