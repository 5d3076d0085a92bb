//! `cargo xtask`: thin commands over fusegate's libraries (the matklad cargo-xtask pattern).

mod conform;
mod golden;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fusegate: may this fused RMSNorm + QKV kernel ship? Evidence from PyTorch goldens, contracts,
/// invariance checks and negative controls.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Conform(conform::Args),
    Golden(golden::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conform(a) => conform::run(a),
        Command::Golden(a) => golden::run(a),
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
