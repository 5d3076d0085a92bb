//! The figures README.md quotes that the code can check: a README that drifts from the code
//! teaches users to distrust both.

use fusegate_harness::backends::Choice;
use fusegate_harness::conform::{self, Options};
use std::path::Path;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The number just before `suffix` in `text` (the first occurrence).
fn number_before(text: &str, suffix: &str) -> usize {
    let at = text.find(suffix).unwrap_or_else(|| panic!("README.md no longer says \"N{suffix}\""));
    let digits: String =
        text[..at].chars().rev().take_while(char::is_ascii_digit).collect::<Vec<_>>().into_iter().rev().collect();
    digits.parse().unwrap_or_else(|_| panic!("no number before \"{suffix}\" in README.md"))
}

#[test]
fn the_readme_quotes_the_cpu_runs_trial_and_case_counts() {
    let text = readme();
    let plan = conform::plan(&Options { backend: Choice::Cpu, ..Options::default() }).expect("the CPU plan");
    assert_eq!(number_before(&text, " trials over "), plan.trials.len(), "README.md: trials of the CPU run");
    assert_eq!(number_before(&text, " golden cases"), plan.suite.manifest.cases.len(), "README.md: golden cases");
    let shared = plan.trials.iter().filter(|t| t.same_computation_as.is_some()).count();
    assert_eq!(number_before(&text, " shared`)"), shared, "README.md: rows the CPU computes once");
}
