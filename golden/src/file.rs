//! Reading a golden file whole and proving it is the exact file the manifest pinned, before any
//! of its bytes are interpreted.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::GoldenError;

/// How many hex digits of a sha256 error messages show: enough to tell files apart at a glance.
const SHORT_HEX: usize = 12;

/// The file's bytes, after checking its length and sha256 against the manifest's record. The
/// kind and size are checked before anything is read, and at most one byte more than the
/// manifest's size is ever read: a FIFO cannot hang the loader, a 1 GiB file or a link to
/// /dev/zero cannot exhaust memory.
pub(crate) fn read_pinned(path: &Path, sha256: &str, bytes: u64) -> Result<Vec<u8>, GoldenError> {
    let read_err = |source| GoldenError::Read { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(GoldenError::NotAFile { path: path.into() });
    }
    if meta.len() != bytes {
        return Err(GoldenError::Size { path: path.into(), expected: bytes, found: meta.len() });
    }
    let mut data = Vec::with_capacity(bytes as usize);
    std::fs::File::open(path).and_then(|f| f.take(bytes + 1).read_to_end(&mut data)).map_err(read_err)?;
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
    fn only_a_regular_file_of_the_pinned_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.bin");
        std::fs::write(&good, b"golden bytes").unwrap();
        let sha = sha256_hex(b"golden bytes");
        assert_eq!(read_pinned(&good, &sha, 12).unwrap(), b"golden bytes");
        // Wrong size: refused before reading, naming both sizes.
        let e = read_pinned(&good, &sha, 1 << 30).unwrap_err();
        assert!(matches!(e, GoldenError::Size { expected, found: 12, .. } if expected == 1 << 30), "{e}");
        // A link to an endless device, a folder and a FIFO: refused without opening them.
        let zero = dir.path().join("zero.bin");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo.bin");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        let mut odd = vec![zero, dir.path().to_path_buf()];
        if made {
            odd.push(fifo);
        }
        for p in odd {
            let e = read_pinned(&p, &sha, 12).unwrap_err();
            assert!(matches!(e, GoldenError::NotAFile { .. }), "{}: {e}", p.display());
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(short_hex(&sha256_hex(b"abc")), "ba7816bf8f01");
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex("ba7816bf8f01"));
    }
}
