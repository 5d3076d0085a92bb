//! `cargo xtask model-check`: every registry entry inside a Qwen3 forward pass, judged per layer
//! and per token against HF transformers and HF's own noise floor.

use anyhow::Context;
use fusegate_harness::backends::Choice;
use fusegate_harness::conform::resolve_backend;
use fusegate_harness::results::{prepare_output, write_atomically};
use fusegate_kernels::EntryId;
use fusegate_model::gate::{self, Options};
use fusegate_model::report;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::interrupt::{self, EXIT_INTERRUPTED};
use crate::outputs::results_dir;
use crate::progress::Progress;
use fusegate_bench::schema::slug;
use fusegate_harness::cancel::Ran;

/// Judge registry entries inside a Qwen3 forward pass against HF's goldens and noise floor.
#[derive(clap::Args)]
pub struct Args {
    /// Model golden directory (holds manifest.json; repeatable). Default: every one under golden/model.
    #[arg(long, value_name = "DIR")]
    golden: Vec<PathBuf>,
    /// Only the committed goldens of synthetic models with this many layers.
    #[arg(long, value_name = "LAYERS", conflicts_with = "golden")]
    synthetic: Option<usize>,
    /// A checkpoint directory to judge (HF layout) instead of regenerating the goldens' synthetic one.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Entry to judge (repeatable). Default: every entry the backend runs.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<EntryId>,
    #[arg(long, default_value = "cpu", value_parser = parse_choice)]
    backend: Choice,
    /// Skip the controls and the resolution sweep.
    #[arg(long)]
    no_controls: bool,
    /// Results file. Default: results/model-<backend>.json, on a GPU results/<gpu>/model-cuda.json
    /// (a run narrowed by any option above: model-<backend>-partial.json), with the same name's .md
    /// and one SVG per model beside it.
    /// With --dumps: the dump check (fusegate-dump-check-v1), written only when given.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Instead of judging entries: compare another engine's per-stage dump (p{i}.safetensors, one
    /// per golden prompt; format in model/src/dump/mod.rs) with HF's, and name the first layer and
    /// stage that leaves HF's floor. Needs one model golden (--golden DIR).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["variants", "no_controls"])]
    dumps: Option<PathBuf>,
}

fn parse_choice(s: &str) -> Result<Choice, String> {
    s.parse()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(json) = &a.json {
        prepare_output(json).with_context(|| format!("writing {}", json.display()))?;
    }
    if let Some(dir) = &a.dumps {
        return run_dumps(&a, dir);
    }
    let partial: Vec<&str> = [
        (!a.golden.is_empty(), "--golden"),
        (a.synthetic.is_some(), "--synthetic"),
        (a.model.is_some(), "--model"),
        (!a.variants.is_empty(), "--variant"),
        (a.no_controls, "--no-controls"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect();
    let mut goldens = a.golden.clone();
    if goldens.is_empty() {
        let root = gate::default_golden_root();
        goldens = gate::committed_goldens(&root);
        if let Some(layers) = a.synthetic {
            goldens.retain(|d| fusegate_model::golden::ModelGolden::layers_of(d) == Some(layers));
        }
        anyhow::ensure!(
            !goldens.is_empty(),
            "no model goldens under {} (for --synthetic {:?})",
            root.display(),
            a.synthetic
        );
    }
    let (slot, notes) = resolve_backend(a.backend)?;
    notes.iter().for_each(|n| println!("{n}"));
    let backend = slot.backend.map_err(|why| anyhow::anyhow!("--backend: {why}"))?;
    let entries: Vec<_> = a.variants.iter().map(|id| id.entry()).collect();
    let opts = Options { goldens, checkpoint: a.model, entries, controls: !a.no_controls };
    let cancel = interrupt::install();
    let progress = Progress::new("model-check", gate::planned_steps(backend.as_ref(), &opts) as u64);
    let hear = |line: &str| {
        // A model loaded is news, not a step.
        if line.contains(": loaded") {
            progress.message(line)
        } else {
            progress.step(line)
        }
        progress.log(&format!("model-check: {line}"));
    };
    let ran = gate::run_until(backend.as_ref(), &opts, &hear, cancel);
    progress.finish();
    let run = match ran? {
        Ran::Complete(run) => run,
        stopped => {
            print!("{}", report::markdown(stopped.result(), &|_| String::new()));
            println!("{}", stopped.interrupted_line("steps").unwrap_or_default());
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    // Only a whole check (every committed model, every entry, the controls) may replace the
    // results file a decision reads; a partial one goes beside it.
    let whole = partial.is_empty();
    let default = if whole { format!("model-{}", run.backend) } else { format!("model-{}-partial", run.backend) };
    // A GPU's results go under its own folder, beside its bench and conformance (select reads them there).
    let base = backend.device().map_or_else(results_dir, |d| results_dir().join(slug(&d)));
    let json = a.json.clone().unwrap_or_else(|| base.join(format!("{default}.json")));
    // The report and plots are named after the results file, wherever it goes.
    let stem = json.file_stem().map_or(default, |s| s.to_string_lossy().into_owned());
    let dir = json.parent().map(PathBuf::from).unwrap_or_default();
    let svg_name = |model: &str| format!("{stem}-{model}.svg");
    let md = report::markdown(&run, &svg_name);
    // The report, plots and results are written together: Ctrl-C waits until they are.
    interrupt::uninterrupted(|| -> anyhow::Result<()> {
        for m in &run.models {
            let svg = report::drift_svg(m).map_err(|e| anyhow::anyhow!("plotting {}: {e}", m.name))?;
            let path = dir.join(svg_name(&m.name));
            write_atomically(&path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        }
        let md_path = json.with_extension("md");
        write_atomically(&md_path, md.as_bytes()).with_context(|| format!("writing {}", md_path.display()))?;
        let bytes = serde_json::to_vec_pretty(&run).context("serialising results")?;
        write_atomically(&json, &bytes).with_context(|| format!("writing {}", json.display()))
    })?;
    print!("{md}");
    if !whole {
        println!("a partial run ({}): written beside, never over, the whole check's file", partial.join(", "));
    }
    println!("results: {} ({:.1} s)", json.display(), run.seconds);
    Ok(if run.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--dumps DIR`: the dump against one model golden; exit 1 where it leaves HF's floor.
fn run_dumps(a: &Args, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(dir.is_dir(), "{}: cannot read: no such dump directory", dir.display());
    let mut goldens = a.golden.clone();
    if goldens.is_empty() {
        goldens = gate::committed_goldens(&gate::default_golden_root());
        if let Some(layers) = a.synthetic {
            goldens.retain(|d| fusegate_model::golden::ModelGolden::layers_of(d) == Some(layers));
        }
    }
    let [golden] = goldens.as_slice() else {
        anyhow::bail!("--dumps compares with one model golden, {} selected: pass --golden DIR", goldens.len());
    };
    anyhow::ensure!(
        golden.join(fusegate_model::golden::MANIFEST).is_file(),
        "{}: no model golden (manifest.json) here",
        golden.display()
    );
    let model = fusegate_model::check::Model::load(golden, a.model.as_deref())?;
    let prompts: Vec<Vec<u32>> = model.golden.manifest.prompts.iter().map(|p| p.ids.clone()).collect();
    let dump = fusegate_model::dump::Dump::load(dir, &model.weights.config, &prompts)?;
    let check = fusegate_model::dump::DumpReference::new(&model).check(&dump);
    print!("{}", fusegate_model::dump::check::table(&check));
    if let Some(json) = &a.json {
        let bytes = serde_json::to_vec_pretty(&check).context("serialising the dump check")?;
        write_atomically(json, &bytes).with_context(|| format!("writing {}", json.display()))?;
        println!("results: {}", json.display());
    }
    Ok(if check.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
