//! `cargo bench --bench gpu_replay`: the bench matrix under criterion on this machine's GPU
//! ([`fusegate_bench::criterion_gpu`]: CUDA-event time of the same checked graph replays as
//! `cargo xtask bench`), with criterion's command line (`--save-baseline`, `--baseline`, a filter)
//! and its output in target/criterion. Without a GPU it says so in one line and exits 0.

use criterion::Criterion;
use fusegate_bench::criterion_gpu;
use fusegate_bench::noise::NoiseThreshold;
use fusegate_bench::run::{self, Options};
use fusegate_kernels::cuda::Cuda;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cuda = match Cuda::probe() {
        Ok(cuda) => cuda,
        Err(why) => {
            println!("gpu_replay: no GPU here ({why}); nothing to time");
            return ExitCode::SUCCESS;
        }
    };
    // results/ only for the cached ceilings of this machine (the session reads or measures them).
    let results = std::env::var_os("FUSEGATE_RESULTS_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../results"), PathBuf::from);
    let opts = Options::full_matrix(results);
    let noise = NoiseThreshold::default();
    let mut c = criterion_gpu::settings(Criterion::default(), &noise).configure_from_args();
    let progress = |line: &str| println!("{line}");
    let timed = run::session(&cuda, &opts, &progress)
        .and_then(|session| criterion_gpu::time_matrix(&mut c, &cuda, &session, &opts, &noise, &progress));
    if let Err(e) = timed {
        eprintln!("error: gpu_replay: {e}");
        return ExitCode::from(2);
    }
    c.final_summary();
    ExitCode::SUCCESS
}
