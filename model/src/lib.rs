//! The model gate: a fused kernel that passes the layer-level contracts must also leave a whole
//! Qwen3 forward pass (judged against HF transformers, beside HF's own noise floor) as it was.
//! [`forward`] is that pass at HF's rounding points with a registry entry in every layer;
//! [`golden`], [`metrics`], [`check`], [`boundaries`], [`controls`] and [`gate`] judge it;
//! [`results`] and [`report`] record it; [`audit`] reads a checkpoint for what can break an
//! engine, and [`dump`] finds the first layer and stage where another engine's activations leave
//! HF's. Beneath them, what the pass runs on: the config (parsed from config.json, never defaulted),
//! the weights in HF's layout and names, read from or written to a checkpoint directory with every
//! tensor checked against the config, seeded synthetic weights (no Qwen3 weights ship in any
//! package registry), and the exact Qwen3 tokenizer, committed and pinned by sha256. Every bad
//! input is one error line naming the file and the key or tensor.
//!
//! ```no_run
//! use fusegate_model::{Checkpoint, Qwen3Config, SynthStyle, synthesize};
//! let weights = synthesize(&Qwen3Config::qwen3_06b(4), 0, SynthStyle::Stable);
//! Checkpoint::write("/tmp/qwen3-synth".as_ref(), &weights)?;
//! let checkpoint = Checkpoint::open("/tmp/qwen3-synth".as_ref())?;
//! let ids = fusegate_model::tokenizer::encode(&checkpoint.tokenizer()?, "Hello, world!")?;
//! # Ok::<(), fusegate_model::ModelError>(())
//! ```

pub mod audit;
pub mod boundaries;
pub mod check;
mod checkpoint;
mod config;
pub mod controls;
pub mod dump;
mod error;
pub mod forward;
pub mod gate;
pub mod golden;
pub mod metrics;
pub mod report;
pub mod results;
pub mod synth;
mod tensors;
pub mod tokenizer;
pub mod weights;

pub use checkpoint::{CONFIG_FILE, Checkpoint, INDEX_FILE, TOKENIZER_FILE, WEIGHTS_FILE, weights_sha256};
pub use config::Qwen3Config;
pub use error::ModelError;
pub use synth::{SynthStyle, synthesize};
pub use tensors::sha256_hex;
pub use weights::{LayerTensor, LayerWeights, Qwen3Weights};
