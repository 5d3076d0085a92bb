//! `cargo xtask resolution`: the smallest defect each variant's contract rejects, on every golden
//! case (harness/src/resolution.rs says how it is measured).

use crate::cases::CaseArgs;
use crate::outputs::results_dir;
use anyhow::Context;
use fusegate_bench::schema::slug;
use fusegate_golden::Manifest;
use fusegate_harness::conform::{self, DEFAULT_SEED};
use fusegate_harness::resolution::{self, ResolutionRun};
use fusegate_harness::results::{Environment, SchemaTag, prepare_output, write_atomically};
use fusegate_harness::suite::Suite;
use fusegate_kernels::registry::{self, EntryId};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measure the smallest defect of each kind that each variant's contract rejects on every case.
#[derive(clap::Args)]
pub struct Args {
    /// Variant whose contract is measured (repeatable). Default: every variant.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<String>,
    #[command(flatten)]
    cases: CaseArgs,
    /// Results file (a .md table is written beside it). Default: resolution-<backend>.json in the
    /// results folder (on a GPU under <gpu>/); a run narrowed by --variant, --case or --golden:
    /// resolution-<backend>-partial.json, beside and never over the whole run's table.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let partial = !a.variants.is_empty() || !a.cases.narrowing().is_empty();
    let variants: Vec<EntryId> = if a.variants.is_empty() {
        registry::variants().map(|e| e.id).collect()
    } else {
        // Each name as written (conform's selection would bring the variant's mutants along).
        let mut picked = Vec::new();
        for name in &a.variants {
            let id: EntryId = name.parse().map_err(|e: String| anyhow::anyhow!("--variant: {e}"))?;
            anyhow::ensure!(
                !id.entry().is_mutant(),
                "--variant {name}: a mutant has no contract of its own to measure (name a variant)"
            );
            if !picked.contains(&id) {
                picked.push(id);
            }
        }
        picked
    };
    if let Some(json) = &a.json {
        prepare_output(json).with_context(|| format!("writing {}", json.display()))?;
    }
    let (slot, notes) = conform::resolve_backend(a.cases.backend)?;
    let backend = slot.backend.map_err(anyhow::Error::msg)?;
    let dir = a.cases.golden.clone().unwrap_or_else(Manifest::default_dir);
    let manifest = Manifest::load(&dir)?;
    let cases: Vec<String> = manifest
        .cases
        .iter()
        .filter(|c| a.cases.case.as_deref().is_none_or(|p| conform::matches(p, &c.name)))
        .map(|c| c.name.clone())
        .collect();
    anyhow::ensure!(
        !cases.is_empty(),
        "--case {:?}: no golden case in {} matches",
        a.cases.case.unwrap_or_default(),
        dir.display()
    );
    for n in notes {
        println!("{n}");
    }
    println!("measuring {} variant(s) on {} case(s) on {}", variants.len(), cases.len(), slot.id);
    let golden = manifest.provenance.clone();
    let suite = Suite::new(manifest, DEFAULT_SEED);
    let rows = resolution::measure(backend.as_ref(), &suite, &variants, &cases).map_err(anyhow::Error::msg)?;
    let same_as =
        variants.iter().filter_map(|&v| Some((v, resolution::same_as(backend.as_ref(), &variants, v)?))).collect();
    let run = ResolutionRun {
        schema: SchemaTag::default(),
        backend: slot.id,
        environment: Environment::capture(backend.device()),
        golden,
        same_as,
        rows,
    };
    print!("{}", run.table());
    let path = a.json.unwrap_or_else(|| {
        let name = format!("resolution-{}{}.json", run.backend, if partial { "-partial" } else { "" });
        match &run.environment.device {
            Some(device) => results_dir().join(slug(device)).join(name),
            None => results_dir().join(name),
        }
    });
    let json = fusegate_harness::results::to_json_lines(&run).context("serialising the resolution")?;
    write_atomically(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    let md = path.with_extension("md");
    write_atomically(&md, run.table().as_bytes()).with_context(|| format!("writing {}", md.display()))?;
    println!("results: {} and {}", path.display(), md.display());
    Ok(ExitCode::SUCCESS)
}
