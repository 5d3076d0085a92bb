//! The flags that pick the golden cases and the backend, shared by the commands that run over the
//! golden cases (conform, resolution), so that they read and mean the same in both.

use fusegate_harness::backends::Choice;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CaseArgs {
    /// Only golden cases whose name matches (substring, or a glob with *).
    #[arg(long, value_name = "PATTERN")]
    pub case: Option<String>,
    /// auto: CUDA where a GPU is present, else the CPU emulation.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<Choice>())]
    pub backend: Choice,
    /// Golden directory (holds manifest.json). Default: golden/data, or $FUSEGATE_GOLDEN_DIR.
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
}

impl CaseArgs {
    /// The flags given that narrow a run to fewer cases than the committed set.
    pub fn narrowing(&self) -> Vec<&'static str> {
        [(self.case.is_some(), "--case"), (self.golden.is_some(), "--golden")]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cases: CaseArgs,
    }

    #[test]
    fn only_case_and_golden_narrow_a_run() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap().cases;
        assert!(parse(&[]).narrowing().is_empty());
        assert!(parse(&["--backend", "cpu"]).narrowing().is_empty(), "a backend is not a narrowing");
        assert_eq!(parse(&["--case", "t1", "--golden", "/g"]).narrowing(), ["--case", "--golden"]);
        assert!(Cli::try_parse_from(["x", "--backend", "tpu"]).is_err(), "an unknown backend is refused");
    }
}
