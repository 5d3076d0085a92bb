//! fusegate's PyTorch goldens, typed and verified.
//!
//! `golden/capture/capture.py` runs transformers' own Qwen3RMSNorm and F.linear on a GPU and
//! writes, per case, x and HF's value at every rounding point ([`fusegate_kernels::Stage`]), plus
//! one file per weight set and a manifest pinning every file by size and sha256. This crate reads
//! them back and refuses anything that could make a verdict meaningless: a file that is not the
//! one pinned, a tensor of the wrong dtype or shape, metadata that contradicts the manifest, or a
//! NaN where the input was finite.
//!
//! ```no_run
//! use fusegate_golden::{Manifest, WeightsCache};
//! let manifest = Manifest::load_default()?;
//! let cache = WeightsCache::new();
//! for entry in &manifest.cases {
//!     let case = manifest.load_case(entry, &cache)?;
//!     let _inputs = case.inputs();
//! }
//! # Ok::<(), fusegate_golden::GoldenError>(())
//! ```

mod cache;
mod case;
mod dims;
mod error;
mod file;
mod finite;
mod manifest;
mod provenance;
mod summary;
mod tensors;
mod weights;

pub mod edit;

pub use cache::WeightsCache;
pub use case::{CASE_FORMAT, Case};
pub use error::GoldenError;
pub use file::sha256_hex;
pub use manifest::{CaseEntry, GOLDEN_DIR_ENV, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, WeightsEntry};
pub use provenance::Provenance;
pub use weights::WEIGHTS_FORMAT;
