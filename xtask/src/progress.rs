//! Progress bars for long commands: drawn on stderr when it is a terminal, absent elsewhere (so
//! that logs get plain lines, which the commands print themselves).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps named `name`, with the bar's `extra` fields after its count; `None` when
/// stderr is not a terminal.
pub fn terminal_bar(name: &str, len: u64, extra: &str) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let style =
            ProgressStyle::with_template(&format!("{name} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {extra}"))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(len).with_style(style)
    })
}
