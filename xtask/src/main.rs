//! `cargo xtask`: thin commands over fusegate's libraries (the matklad cargo-xtask pattern).

mod audit;
mod bench;
mod bench_model;
mod bundle;
mod cases;
mod conform;
mod golden;
mod interrupt;
mod kernels;
mod model_check;
mod outputs;
mod progress;
mod resolution;
mod select;
mod synth_model;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fusegate: may this fused RMSNorm + QKV kernel ship? Evidence from PyTorch goldens, contracts,
/// invariance checks and negative controls.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    /// Write results into results/ (the committed evidence a decision quotes) and read them from
    /// there; without it, runs write to target/fusegate/results/ and never touch a tracked file.
    #[arg(long, global = true)]
    record: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Conform(conform::Args),
    Bench(bench::Args),
    BenchModel(bench_model::Args),
    Select(select::Args),
    Bundle(bundle::Args),
    Golden(golden::Args),
    Resolution(resolution::Args),
    Kernels(kernels::Args),
    ModelCheck(model_check::Args),
    SynthModel(synth_model::Args),
    Audit(audit::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line (clap's usage block would follow it): the error and where to look.
            let first = e.to_string().lines().next().unwrap_or("invalid arguments").to_string();
            eprintln!("{first} (see cargo xtask --help)");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    fusegate_harness::results::set_build_commit(env!("FUSEGATE_BUILD_COMMIT"));
    outputs::set_record(cli.record);
    let result = match cli.command {
        Command::Conform(a) => conform::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchModel(a) => bench_model::run(a),
        Command::Select(a) => select::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::Golden(a) => golden::run(a),
        Command::Resolution(a) => resolution::run(a),
        Command::Kernels(a) => kernels::run(a),
        Command::ModelCheck(a) => model_check::run(a),
        Command::SynthModel(a) => synth_model::run(a),
        Command::Audit(a) => audit::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
