//! The committed model goldens: they load, their prompts tokenize in Rust to HF's own ids, and a
//! golden that is tampered with is refused in one line naming the file.

use std::path::{Path, PathBuf};

use fusegate_model::gate::{committed_goldens, default_golden_root};
use fusegate_model::golden::{ModelGolden, RunId};
use fusegate_model::tokenizer;

fn goldens() -> Vec<PathBuf> {
    let g = committed_goldens(&default_golden_root());
    assert!(g.len() >= 2, "the stable and stress model goldens are committed: {g:?}");
    g
}

#[test]
fn committed_goldens_load_with_every_run_and_a_floor() {
    for dir in goldens() {
        let g = ModelGolden::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(g.runs.contains_key(&RunId::Reference));
        for floor in RunId::FLOORS {
            assert!(g.runs.contains_key(&floor), "{}: no {floor:?}", dir.display());
        }
        let positions: usize = g.manifest.prompts.iter().map(|p| p.ids.len()).sum();
        assert!(g.manifest.prompts.iter().all(|p| (16..=64).contains(&p.ids.len())), "16-64 tokens per prompt");
        assert!(positions >= 100, "{positions}");
        assert!(g.reference().iter().all(|r| r.greedy.as_ref().is_some_and(|t| t.len() == g.manifest.greedy)));
    }
}

#[test]
fn the_rust_tokenizer_gives_hf_s_ids_for_the_committed_prompts() {
    let tok = tokenizer::qwen3().unwrap();
    for dir in goldens() {
        let g = ModelGolden::load(&dir).unwrap();
        for p in &g.manifest.prompts {
            assert_eq!(tokenizer::encode(&tok, &p.text).unwrap(), p.ids, "{:?}", p.text);
        }
    }
}

fn copy(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

#[test]
fn a_tampered_or_incomplete_golden_is_one_line_naming_the_file() {
    let dir = goldens().remove(0);
    let tmp = copy(&dir);
    let run = tmp.path().join("floor-sdpa.safetensors");
    let mut bytes = std::fs::read(&run).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&run, &bytes).unwrap();
    let err = ModelGolden::load(tmp.path()).err().expect("a flipped bit is refused").to_string();
    assert!(err.starts_with(&run.display().to_string()) && err.contains("sha256") && !err.contains('\n'), "{err}");

    let tmp = copy(&dir);
    std::fs::remove_file(tmp.path().join("reference.safetensors")).unwrap();
    let err = ModelGolden::load(tmp.path()).err().expect("a missing run is refused").to_string();
    assert!(err.contains("reference.safetensors") && !err.contains('\n'), "{err}");

    let tmp = copy(&dir);
    let manifest = tmp.path().join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"hidden_size\"", "\"hidden_sizes\"");
    std::fs::write(&manifest, text).unwrap();
    let err = ModelGolden::load(tmp.path()).err().expect("a config without hidden_size is refused").to_string();
    assert!(err.contains("manifest.json") && err.contains("hidden_size") && !err.contains('\n'), "{err}");
}
