//! Corrupted goldens must be refused with one line that says which file (and tensor) is wrong.
//! Each test breaks exactly one thing in a copy of the small real case; see `common`.

mod common;

use common::{Fixture, assert_one_line};
use fusegate_golden::{GoldenError, Manifest};
use safetensors::Dtype;

#[test]
fn pristine_fixture_loads() {
    // The control: every other test's failure comes from its own corruption, not the fixture.
    let f = Fixture::new();
    let case = f.load().unwrap();
    assert_eq!(case.name, common::CASE);
    assert_eq!(case.file, f.case_path());
    // A rewrite that changes nothing but the bytes' layout must also load (the helper re-pins).
    f.rewrite_case(|_| {});
    f.rewrite_weights(|_| {});
    let again = f.load().unwrap();
    assert_eq!(again.x, case.x);
    assert_eq!(again.reference, case.reference);
}

#[test]
fn truncated_case_file_is_not_safetensors() {
    let f = Fixture::new();
    let bytes = std::fs::read(f.case_path()).unwrap();
    f.write_case_bytes(&bytes[..bytes.len() - 100]);
    let err = f.load_err();
    assert!(matches!(err, GoldenError::SafeTensors { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    assert!(line.contains("not a valid safetensors file"), "{line}");
}

#[test]
fn truncated_header_is_not_safetensors() {
    let f = Fixture::new();
    f.write_case_bytes(&std::fs::read(f.case_path()).unwrap()[..5]);
    let err = f.load_err();
    assert!(matches!(err, GoldenError::SafeTensors { .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn garbage_case_file_is_not_safetensors() {
    let f = Fixture::new();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    f.write_case_bytes(&garbage);
    let err = f.load_err();
    assert!(matches!(err, GoldenError::SafeTensors { .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn truncated_weights_file_names_the_weights_file() {
    let f = Fixture::new();
    let bytes = std::fs::read(f.weights_path()).unwrap();
    f.write_weights_bytes(&bytes[..bytes.len() / 2]);
    let err = f.load_err();
    assert!(matches!(err, GoldenError::SafeTensors { .. }), "{err:?}");
    assert_one_line(&err, &f.weights_path(), None);
}

#[test]
fn x_stored_as_f32_is_a_dtype_error() {
    let f = Fixture::new();
    f.rewrite_case(|c| {
        let x = c.tensor("x").unwrap().bf16_as_f32().unwrap();
        c.tensors.insert("x".into(), x);
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Dtype { expected: Dtype::BF16, found: Dtype::F32, .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), Some("x"));
    assert!(line.contains("F32") && line.contains("expected BF16"), "{line}");
}

#[test]
fn q_with_wrong_shape_is_a_shape_error() {
    let f = Fixture::new();
    // Same bytes, heads and head dim swapped: [3, 4, 16] -> [3, 16, 4].
    f.rewrite_case(|c| c.tensor("q").unwrap().shape = vec![3, 16, 4]);
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Shape { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), Some("q"));
    assert!(line.contains("[3, 16, 4]") && line.contains("expected [3, 4, 16]"), "{line}");
}

#[test]
fn missing_stage_tensor_is_named() {
    let f = Fixture::new();
    f.rewrite_case(|c| {
        c.tensors.remove("k_normed");
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::TensorMissing { tensor: "k_normed", .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), Some("k_normed"));
}

#[test]
fn missing_weights_tensor_is_named_in_the_weights_file() {
    let f = Fixture::new();
    f.rewrite_weights(|w| {
        w.tensors.remove("qkv_weight");
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::TensorMissing { tensor: "qkv_weight", .. }), "{err:?}");
    assert_one_line(&err, &f.weights_path(), Some("qkv_weight"));
}

#[test]
fn flipped_byte_is_a_sha256_mismatch() {
    let f = Fixture::new();
    let pinned = f.manifest_json()["cases"][0]["sha256"].as_str().unwrap().to_owned();
    let mut bytes = std::fs::read(f.case_path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(f.case_path(), &bytes).unwrap(); // deliberately not re-pinned
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Sha256 { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    let actual = fusegate_golden::sha256_hex(&bytes);
    assert!(line.contains(&pinned[..12]) && !line.contains(&pinned[..13]), "{line}");
    assert!(line.contains(&actual[..12]), "{line}");
}

#[test]
fn appended_bytes_are_a_size_mismatch() {
    let f = Fixture::new();
    let mut bytes = std::fs::read(f.case_path()).unwrap();
    let pinned = bytes.len();
    bytes.extend_from_slice(b"trailing");
    std::fs::write(f.case_path(), &bytes).unwrap(); // deliberately not re-pinned
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Size { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    assert!(line.contains(&format!("{pinned} bytes, file has {}", pinned + 8)), "{line}");
}

#[test]
fn nan_in_q_of_a_finite_row_is_corruption() {
    let f = Fixture::new();
    // q is [3, 4, 16]: flat 1*64 + 2*16 + 5 is row 1, head 2, lane 5.
    f.rewrite_case(|c| assert!(c.tensor("q").unwrap().set_bf16(64 + 32 + 5, f32::NAN)));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::NonFinite { tensor: "q", row: 1, .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), Some("q"));
    assert!(line.contains("[1, 2, 5]") && line.contains("NaN"), "{line}");
}

#[test]
fn inf_in_inv_rms_of_a_finite_row_is_corruption() {
    let f = Fixture::new();
    f.rewrite_case(|c| assert!(c.tensor("inv_rms").unwrap().set_f32(2, f32::INFINITY)));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::NonFinite { tensor: "inv_rms", row: 2, .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), Some("inv_rms"));
}

#[test]
fn nan_is_allowed_only_in_rows_whose_x_is_nonfinite() {
    let f = Fixture::new();
    // x row 1 gets a NaN: NaN in q row 1 is then legitimate (HF propagates it) ...
    f.rewrite_case(|c| {
        c.tensor("x").unwrap().set_bf16(64 + 7, f32::NAN);
        c.tensor("q").unwrap().set_bf16(64, f32::NAN);
        c.tensor("k_normed").unwrap().set_bf16(32 + 3, f32::NEG_INFINITY);
    });
    let case = f.load().unwrap();
    assert!(case.x[64 + 7].is_nan());
    // ... but not in row 2, whose x is still finite.
    f.rewrite_case(|c| assert!(c.tensor("q").unwrap().set_bf16(2 * 64, f32::NAN)));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::NonFinite { tensor: "q", row: 2, .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), Some("q"));
}

#[test]
fn nan_in_weights_is_refused() {
    let f = Fixture::new();
    f.rewrite_weights(|w| assert!(w.tensor("norm_weight").unwrap().set_bf16(17, f32::NAN)));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::WeightsNonFinite { tensor: "norm_weight", .. }), "{err:?}");
    let line = assert_one_line(&err, &f.weights_path(), Some("norm_weight"));
    assert!(line.contains("[17]"), "{line}");
}

#[test]
fn missing_format_metadata_is_refused() {
    let f = Fixture::new();
    f.rewrite_case(|c| {
        c.metadata.remove("format");
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMissing { key: "format", .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn wrong_format_version_is_refused() {
    let f = Fixture::new();
    f.rewrite_weights(|w| {
        w.metadata.insert("format".into(), "fusegate-weights-v0".into());
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Format { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.weights_path(), None);
    assert!(line.contains("fusegate-weights-v0") && line.contains("fusegate-weights-v1"), "{line}");
}

#[test]
fn case_metadata_naming_other_weights_is_refused() {
    let f = Fixture::new();
    f.rewrite_case(|c| assert!(c.edit_meta_json("case", |m| m["weights"] = "qwen3-typical".into())));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "weights", .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    assert!(line.contains("qwen3-typical") && line.contains("small-h64"), "{line}");
}

#[test]
fn case_metadata_with_another_shape_is_refused() {
    let f = Fixture::new();
    f.rewrite_case(|c| assert!(c.edit_meta_json("case", |m| m["nkv"] = 4.into())));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "shape", .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    assert!(line.contains("nkv=4") && line.contains("nkv=2"), "{line}");
}

#[test]
fn manifest_shape_disagreeing_with_the_case_is_refused() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["cases"][0]["t"] = 4.into());
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "shape", .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn weights_spec_with_other_dims_than_the_case_is_refused() {
    let f = Fixture::new();
    // (nq + 2 nkv) d is 128 either way, so every tensor keeps its shape: only the spec disagrees.
    f.rewrite_weights(|w| {
        assert!(w.edit_meta_json("spec", |s| {
            s["nq"] = 2.into();
            s["nkv"] = 3.into();
        }))
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "weights dims", .. }), "{err:?}");
    let line = assert_one_line(&err, &f.weights_path(), None);
    assert!(line.contains("h=64 nq=2 nkv=3 d=16") && line.contains("h=64 nq=4 nkv=2 d=16"), "{line}");
}

#[test]
fn weights_spec_naming_other_weights_is_refused() {
    let f = Fixture::new();
    f.rewrite_weights(|w| assert!(w.edit_meta_json("spec", |s| s["name"] = "qwen3-typical".into())));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "weights name", .. }), "{err:?}");
    assert_one_line(&err, &f.weights_path(), None);
}

#[test]
fn case_metadata_with_another_eps_is_refused() {
    let f = Fixture::new();
    f.rewrite_case(|c| assert!(c.edit_meta_json("case", |m| m["eps"] = 1e-5.into())));
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataMismatch { field: "eps", .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn case_captured_against_other_weights_bytes_is_refused() {
    let f = Fixture::new();
    let other = "f".repeat(64);
    f.rewrite_case(|c| {
        c.metadata.insert("weights_sha256".into(), other.clone());
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::WeightsSha256 { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.case_path(), None);
    assert!(line.contains("ffffffffffff..") && line.contains("0ea39ca62f59.."), "{line}");
}

#[test]
fn malformed_case_metadata_json_is_refused() {
    let f = Fixture::new();
    f.rewrite_case(|c| {
        c.metadata.insert("case".into(), "{\"name\": ".into());
    });
    let err = f.load_err();
    assert!(matches!(err, GoldenError::MetadataJson { key: "case", .. }), "{err:?}");
    assert_one_line(&err, &f.case_path(), None);
}

#[test]
fn manifest_naming_a_missing_case_file_is_a_read_error() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["cases"][0]["file"] = "cases/gone.safetensors".into());
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Read { .. }), "{err:?}");
    assert_one_line(&err, &f.dir.join("cases/gone.safetensors"), None);
}

#[test]
fn manifest_naming_a_missing_weights_file_is_a_read_error() {
    let f = Fixture::new();
    std::fs::remove_file(f.weights_path()).unwrap();
    let err = f.load_err();
    assert!(matches!(err, GoldenError::Read { .. }), "{err:?}");
    assert_one_line(&err, &f.weights_path(), None);
}

#[test]
fn missing_manifest_is_a_read_error() {
    let f = Fixture::new();
    std::fs::remove_file(f.manifest_path()).unwrap();
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::Read { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}

#[test]
fn malformed_manifest_json_is_refused() {
    let f = Fixture::new();
    let text = std::fs::read_to_string(f.manifest_path()).unwrap();
    std::fs::write(f.manifest_path(), &text[..text.len() / 2]).unwrap();
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestJson { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}

#[test]
fn manifest_entry_missing_a_field_is_refused() {
    let f = Fixture::new();
    f.edit_manifest(|m| {
        m["cases"][0].as_object_mut().unwrap().remove("nkv");
    });
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestJson { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.manifest_path(), None);
    assert!(line.contains("nkv"), "{line}");
}

#[test]
fn manifest_of_another_format_is_refused() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["format"] = "fusegate-manifest-v2".into());
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::Format { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}

#[test]
fn manifest_case_naming_unknown_weights_is_refused() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["cases"][0]["weights"] = "nope".into());
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    let line = assert_one_line(&err, &f.manifest_path(), None);
    assert!(line.contains("`nope`"), "{line}");
}

#[test]
fn manifest_with_overflowing_shape_is_refused_without_panicking() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["cases"][0]["t"] = (u64::MAX / 2).into());
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}

#[test]
fn manifest_paths_must_stay_inside_its_directory() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["weights"][0]["file"] = "../weights/small-h64.safetensors".into());
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}

#[test]
fn manifest_sha256_must_be_a_sha256() {
    let f = Fixture::new();
    f.edit_manifest(|m| m["cases"][0]["sha256"] = "e2a4b90e41c4".into());
    let err = Manifest::load(&f.dir).unwrap_err();
    assert!(matches!(err, GoldenError::ManifestInvalid { .. }), "{err:?}");
    assert_one_line(&err, &f.manifest_path(), None);
}
