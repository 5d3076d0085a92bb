//! A progress bar over a run's steps, on stderr where stderr is a terminal; elsewhere (a log, CI)
//! nothing is drawn and the lines a step reports are printed as they come.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar of `steps` named `label`, or none where stderr is not a terminal.
    pub fn new(label: &str, steps: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = format!("{label} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}");
            let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(steps).with_style(style)
        });
        Progress(bar)
    }

    /// One step done; `msg` is what the bar shows beside it.
    pub fn step(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.to_string());
            bar.inc(1);
        }
    }

    /// What the bar shows, without a step (e.g. a model loaded).
    pub fn message(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.to_string());
        }
    }

    /// A line on stdout, above the bar when there is one.
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// A line on stderr only where no bar is drawn (the bar shows it otherwise).
    pub fn log(&self, line: &str) {
        if self.0.is_none() {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
