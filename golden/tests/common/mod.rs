//! Corrupted-golden fixtures: a tempdir holding a copy of one small real case (small-h64-t3), its
//! weights (small-h64) and a manifest listing just those, plus edits that break exactly one thing.
//!
//! Every rewrite re-pins the file in the manifest (size and sha256), and a weights rewrite also
//! re-records the weights' sha256 in the case, so that each test sees only the failure it made.

use std::path::{Path, PathBuf};

pub use fusegate_golden::edit::Contents;
use fusegate_golden::edit::pin;
use fusegate_golden::{Case, GoldenError, Manifest, WeightsCache, sha256_hex};
use serde_json::Value;

pub const CASE: &str = "small-h64-t3";
pub const WEIGHTS: &str = "small-h64";

/// The tempdir fixture. Dropping it deletes the files.
pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Fixture {
    /// Copies the real small case, its weights and a manifest trimmed to them.
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let mut manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("manifest.json")).unwrap()).unwrap();
        manifest["weights"].as_array_mut().unwrap().retain(|w| w["name"] == WEIGHTS);
        manifest["cases"].as_array_mut().unwrap().retain(|c| c["name"] == CASE);
        for list in ["weights", "cases"] {
            let entry = &manifest[list][0];
            let file = entry["file"].as_str().unwrap();
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::copy(src.join(file), dir.join(file)).unwrap();
        }
        let fixture = Fixture { _tmp: tmp, dir };
        fixture.write_manifest(&manifest);
        fixture
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    pub fn case_path(&self) -> PathBuf {
        self.dir.join(format!("cases/{CASE}.safetensors"))
    }
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(format!("weights/{WEIGHTS}.safetensors"))
    }

    /// Loads the manifest, then the case, with a fresh cache.
    pub fn load(&self) -> Result<Case, GoldenError> {
        let manifest = Manifest::load(&self.dir)?;
        let entry = manifest.case(CASE).expect("fixture manifest lists the case").clone();
        manifest.load_case(&entry, &WeightsCache::new())
    }

    /// Loads, expecting failure.
    pub fn load_err(&self) -> GoldenError {
        match self.load() {
            Ok(case) => panic!("corrupted fixture loaded: {}", case.name),
            Err(e) => e,
        }
    }

    pub fn manifest_json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.manifest_path()).unwrap()).unwrap()
    }
    pub fn write_manifest(&self, manifest: &Value) {
        std::fs::write(self.manifest_path(), serde_json::to_string_pretty(manifest).unwrap()).unwrap();
    }
    pub fn edit_manifest(&self, edit: impl FnOnce(&mut Value)) {
        let mut m = self.manifest_json();
        edit(&mut m);
        self.write_manifest(&m);
    }

    /// Replaces the case file's bytes and re-pins them in the manifest.
    pub fn write_case_bytes(&self, bytes: &[u8]) {
        std::fs::write(self.case_path(), bytes).unwrap();
        self.edit_manifest(|m| pin(&mut m["cases"][0], bytes));
    }

    /// Replaces the weights file's bytes, re-pins them in the manifest and re-records their
    /// sha256 in the case's metadata (re-pinning the case too).
    pub fn write_weights_bytes(&self, bytes: &[u8]) {
        std::fs::write(self.weights_path(), bytes).unwrap();
        self.edit_manifest(|m| pin(&mut m["weights"][0], bytes));
        self.rewrite_case(|c| {
            c.metadata.insert("weights_sha256".into(), sha256_hex(bytes));
        });
    }

    pub fn case_contents(&self) -> Contents {
        Contents::parse(&std::fs::read(self.case_path()).unwrap()).unwrap()
    }

    /// Edits the case's tensors/metadata, rewrites it and re-pins it.
    pub fn rewrite_case(&self, edit: impl FnOnce(&mut Contents)) {
        let mut c = self.case_contents();
        edit(&mut c);
        self.write_case_bytes(&c.serialize().unwrap());
    }

    /// Edits the weights' tensors/metadata, rewrites them and re-pins them everywhere.
    pub fn rewrite_weights(&self, edit: impl FnOnce(&mut Contents)) {
        let mut c = Contents::parse(&std::fs::read(self.weights_path()).unwrap()).unwrap();
        edit(&mut c);
        self.write_weights_bytes(&c.serialize().unwrap());
    }
}

/// Asserts the error renders as one line that names `path` and, if given, the tensor; returns
/// the line for further checks.
pub fn assert_one_line(err: &GoldenError, path: &Path, tensor: Option<&str>) -> String {
    let line = err.to_string();
    assert!(!line.contains('\n') && !line.contains('\r'), "not one line: {line:?}");
    let shown = path.display().to_string();
    assert!(line.contains(&shown), "does not name {shown}: {line}");
    assert_eq!(err.path(), path, "{line}");
    if let Some(t) = tensor {
        assert!(line.contains(&format!("`{t}`")), "does not name tensor {t}: {line}");
    }
    line
}
