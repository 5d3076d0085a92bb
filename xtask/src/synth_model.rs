//! `cargo xtask synth-model`: write a seeded synthetic Qwen3 checkpoint (HF layout, Qwen3-0.6B's
//! dims) that both fusegate and HF transformers can load.

use anyhow::Context;
use fusegate_model::synth::{SynthStyle, describe, synthesize};
use fusegate_model::{Checkpoint, Qwen3Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// Write a synthetic Qwen3-0.6B-shaped checkpoint (config.json, model.safetensors, tokenizer.json)
/// into a new or empty directory. 28 layers is ~1.2 GB (tied: no lm_head stored); the embedding
/// alone is 311 MB.
#[derive(clap::Args)]
pub struct Args {
    /// Decoder layers.
    #[arg(long, default_value_t = 28)]
    layers: usize,
    /// Seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Norm-weight statistics: stable (trained-looking, the seeds' three k_norm outliers) or
    /// stress (the seed documents' outliers everywhere: chaotic by design).
    #[arg(long, value_enum, default_value_t = Style::Stable)]
    style: Style,
    /// Output directory (created if missing; refused if not empty).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Style {
    Stable,
    Stress,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let style = match a.style {
        Style::Stable => SynthStyle::Stable,
        Style::Stress => SynthStyle::Stress,
    };
    anyhow::ensure!(a.layers > 0, "--layers must be at least 1");
    let weights = synthesize(&Qwen3Config::qwen3_06b(a.layers), a.seed, style);
    let files = Checkpoint::write(&a.out, &weights).context("writing the checkpoint")?;
    println!("{} layers, seed {}, {}", a.layers, a.seed, describe(style));
    for f in files {
        let bytes = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({bytes} bytes)", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
