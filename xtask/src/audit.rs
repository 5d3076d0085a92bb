//! `cargo xtask audit DIR`: a checkpoint's config against its tensors, its values, norm and
//! projection statistics, massive activations on the prompt set, and what they mean for a fused
//! kernel. Exit 0 with findings; non-zero only for a checkpoint that cannot be loaded consistently.

use anyhow::Context;
use fusegate_harness::results::write_atomically;
use fusegate_model::audit::{self, AuditError, inventory::Finding};
use fusegate_model::gate::default_golden_root;
use std::path::PathBuf;
use std::process::ExitCode;

/// Audit a Qwen3 checkpoint (HF layout, or a synthetic one): phantom and missing tensors, NaN and
/// extreme values, norm outliers, super-weight candidates, massive activations, a risk summary.
/// Weights are never changed.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json, model.safetensors or a sharded index, tokenizer.json).
    dir: PathBuf,
    /// Also write the audit as JSON (fusegate-audit-v1).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Prompt set for the massive-activation pass. Default: golden/model/prompts.json.
    #[arg(long, value_name = "PATH")]
    prompts: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let prompts_path = a.prompts.unwrap_or_else(|| default_golden_root().join("prompts.json"));
    let prompts = audit::prompt_texts(&prompts_path)?;
    let result = match audit::run(&a.dir, &prompts) {
        Ok(r) => r,
        Err(AuditError::Inconsistent { inventory, source }) => {
            // What was found before the strict load failed, then the one-line reason.
            inventory.findings.iter().for_each(|f: &Finding| println!("DEFECT {}", f.describe()));
            return Err(source.into());
        }
        Err(e) => return Err(e.into()),
    };
    print!("{}", audit::report::table(&result));
    if let Some(json) = &a.json {
        let bytes = serde_json::to_vec_pretty(&result).context("serialising the audit")?;
        write_atomically(json, &bytes).with_context(|| format!("writing {}", json.display()))?;
        println!("audit: {}", json.display());
    }
    Ok(ExitCode::SUCCESS)
}
