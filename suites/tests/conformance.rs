//! The conformance suite under `cargo test` / `cargo nextest run`: the same trial list as
//! `cargo xtask conform`, one libtest trial per (backend, entry, case). A variant's trial passes
//! when it meets its contract; a mutant's trial passes only when the contract rejects it. CUDA
//! trials are listed on every machine and ignored, with the reason, where there is no GPU. A
//! variant the backend computes exactly as an earlier one (on the CPU, mixed and exact are
//! standard's emulation) still runs, judged by its own contract, but as kind `shared`: its pass is
//! not one of its own, as in `conform`'s summary.

use fusegate_harness::conform::DEFAULT_SEED;
use fusegate_harness::{Outcome, backends};
use fusegate_kernels::registry;
use libtest_mimic::{Arguments, Failed, Trial};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let manifest = match fusegate_golden::Manifest::load(&fusegate_golden::Manifest::default_dir()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cuda = backends::cuda();
    if let Err(why) = &cuda.backend {
        eprintln!("conformance: CUDA trials ignored: {why}");
    }
    let entries: Vec<_> = registry::all().iter().collect();
    let list = fusegate_harness::trials::list(&[backends::cpu(), cuda], &entries, &manifest.cases);
    let suite = Arc::new(fusegate_harness::Suite::new(manifest, DEFAULT_SEED));
    let trials = list
        .into_iter()
        .map(|trial| {
            let ignored = trial.skip_reason().is_some();
            let kind = match (trial.entry.is_mutant(), trial.same_computation_as) {
                (true, _) => "mutant",
                (false, Some(_)) => "shared",
                (false, None) => "variant",
            };
            let suite = Arc::clone(&suite);
            Trial::test(trial.name(), move || match suite.run(&trial).outcome {
                Outcome::Passed => Ok(()),
                Outcome::Failed(why) => Err(Failed::from(why)),
                Outcome::Ignored(why) => Err(Failed::from(format!("should have been ignored: {why}"))),
            })
            .with_kind(kind)
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
