//! `cargo xtask golden`: regenerate the PyTorch goldens (needs python3 with torch, transformers
//! and a CUDA GPU; see README).

use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, ExitCode};

/// Re-capture golden/data from HF transformers' Qwen3 modules (python3 + torch + transformers + GPU).
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments passed to golden/capture/capture.py (e.g. --device cpu for a dry run).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
    let script = root.join("golden/capture/capture.py");
    let probe = Command::new("python3").args(["-c", "import torch, transformers"]).output();
    match probe {
        Err(_) => bail!("python3 not found: goldens need python3 with torch + transformers and a CUDA GPU"),
        Ok(o) if !o.status.success() => bail!(
            "python3 cannot import torch and transformers: install them (pip install torch transformers) on a GPU machine, or run {} there",
            script.display()
        ),
        Ok(_) => {}
    }
    let status = Command::new("python3").arg(&script).args(&a.extra).status().context("running capture.py")?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    println!("goldens written; review the changes with `cargo insta test --review` (README: Regenerating goldens)");
    Ok(ExitCode::SUCCESS)
}
