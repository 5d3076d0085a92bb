//! A manifest's contents as short, stable text: what a snapshot test pins, so that adding,
//! dropping or reshaping a golden shows up as a reviewed diff.

use std::fmt::Write;

use crate::{Manifest, dims};

impl Manifest {
    /// One header line, then one line per weight set and per case, in manifest order, with
    /// aligned columns. Leaves out hashes and capture time, which change on every recapture.
    pub fn summary(&self) -> String {
        let width =
            self.weights.iter().map(|w| w.name.len()).chain(self.cases.iter().map(|c| c.name.len())).max().unwrap_or(0);
        let shape_width = self.cases.iter().map(|c| dims::describe(&c.shape).len()).max().unwrap_or(0);
        let mut out = format!("{} weight sets, {} cases, eps {:e}\n", self.weights.len(), self.cases.len(), self.eps);
        // Writing to a String cannot fail.
        for w in &self.weights {
            let _ = writeln!(out, "weights {:width$}  {:>9} bytes", w.name, w.bytes);
        }
        for c in &self.cases {
            let _ = writeln!(
                out,
                "case    {:width$}  {:>9} bytes  {:shape_width$}  weights {}",
                c.name,
                c.bytes,
                dims::describe(&c.shape),
                c.weights
            );
        }
        out
    }
}
