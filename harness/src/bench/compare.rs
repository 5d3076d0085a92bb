//! `bench --compare`: SAME / FASTER / SLOWER per (variant, T, cache, launch) from CI overlap, refused when
//! the two runs' fingerprints differ (unless forced): timings from different machines, drivers or
//! libraries are not a regression signal.

use crate::bench::schema::{BenchRun, Cache, Launch};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Change {
    /// The 95% CIs of the medians overlap.
    Same,
    Faster,
    Slower,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub variant: String,
    pub t: usize,
    pub cache: Cache,
    pub launch: Launch,
    pub before_us: f64,
    pub after_us: f64,
    pub change: Change,
}

/// Compares `after` with `before`; `Err` lists the fingerprint differences unless `force`.
pub fn compare(before: &BenchRun, after: &BenchRun, force: bool) -> Result<Vec<Row>, String> {
    let diffs = before.fingerprint.differences(&after.fingerprint);
    if !diffs.is_empty() && !force {
        return Err(format!("fingerprints differ ({}); pass --force to compare anyway", diffs.join("; ")));
    }
    Ok(after
        .measurements
        .iter()
        .filter(|m| m.usable())
        .filter_map(|a| {
            let b = before.find(&a.variant, a.t, a.cache, a.launch).filter(|b| b.usable())?;
            let change = if a.time_us.overlaps(&b.time_us) {
                Change::Same
            } else if a.time_us.median < b.time_us.median {
                Change::Faster
            } else {
                Change::Slower
            };
            Some(Row {
                variant: a.variant.clone(),
                t: a.t,
                cache: a.cache,
                launch: a.launch,
                before_us: b.time_us.median,
                after_us: a.time_us.median,
                change,
            })
        })
        .collect())
}

pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<10} {:>6} {:<5} {:<7} {:>11} {:>11} {:>7}  change\n",
        "variant", "T", "cache", "launch", "before us", "after us", "ratio"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:>6} {:<5} {:<7} {:>11.2} {:>11.2} {:>7.3}  {:?}\n",
            r.variant,
            r.t,
            r.cache,
            r.launch.to_string(),
            r.before_us,
            r.after_us,
            r.after_us / r.before_us,
            r.change
        );
    }
    s
}
