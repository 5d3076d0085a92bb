//! `bench --compare`: SAME / FASTER / SLOWER per (variant, T, cache, launch) from CI overlap, refused when
//! the two runs' fingerprints differ (unless forced): timings from different machines, drivers or
//! libraries are not a regression signal.

use crate::schema::{BenchRun, Cache, Launch};
use fusegate_kernels::EntryId;
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
    pub variant: EntryId,
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
            let b = before.find(a.variant, a.t, a.cache, a.launch).filter(|b| b.usable())?;
            let change = if a.time_us.overlaps(&b.time_us) {
                Change::Same
            } else if a.time_us.median < b.time_us.median {
                Change::Faster
            } else {
                Change::Slower
            };
            Some(Row {
                variant: a.variant,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Estimate;
    use crate::testdata::fixture_bench;

    fn set(run: &mut BenchRun, v: EntryId, t: usize, median: f64, half_ci: f64) {
        let cold_serial = |m: &&mut crate::schema::Measurement| m.cache == Cache::Cold && m.launch == Launch::Serial;
        let m = run.measurements.iter_mut().filter(cold_serial).find(|m| m.variant == v && m.t == t).unwrap();
        m.time_us = Estimate { median, ci_lo: median - half_ci, ci_hi: median + half_ci, samples: 50 };
    }

    #[test]
    fn identical_runs_are_the_same_and_moved_rows_are_faster_or_slower() {
        let before = fixture_bench();
        let usable = before.measurements.iter().filter(|m| m.usable()).count();
        let rows = compare(&before, &before.clone(), false).unwrap();
        assert_eq!(rows.len(), usable);
        assert!(rows.iter().all(|r| r.change == Change::Same && r.before_us == r.after_us));

        let (mut before, mut after) = (before.clone(), before);
        set(&mut before, EntryId::Mixed, 8, 10.0, 0.5);
        set(&mut after, EntryId::Mixed, 8, 20.0, 1.0);
        set(&mut before, EntryId::Standard, 128, 10.0, 0.5);
        set(&mut after, EntryId::Standard, 128, 5.0, 0.25);
        // Overlapping CIs are noise, whatever the medians say.
        set(&mut before, EntryId::Exact, 1, 10.0, 0.5);
        set(&mut after, EntryId::Exact, 1, 10.8, 0.4);
        let rows = compare(&before, &after, false).unwrap();
        let changed: Vec<(EntryId, usize, f64, f64, Change)> = rows
            .iter()
            .filter(|r| r.change != Change::Same)
            .map(|r| (r.variant, r.t, r.before_us, r.after_us, r.change))
            .collect();
        assert_eq!(
            changed,
            [(EntryId::Mixed, 8, 10.0, 20.0, Change::Slower), (EntryId::Standard, 128, 10.0, 5.0, Change::Faster)]
        );
        let exact = rows.iter().find(|r| r.variant == EntryId::Exact && r.t == 1 && r.cache == Cache::Cold).unwrap();
        assert_eq!((exact.launch, exact.change), (Launch::Serial, Change::Same));

        let table = table(&rows);
        assert!(table.starts_with("variant         T cache launch "), "{table}");
        let slower = table.lines().find(|l| l.starts_with("mixed") && l.contains("  8 cold")).unwrap();
        assert!(slower.contains("10.00") && slower.contains("20.00") && slower.contains("2.000  Slower"), "{slower}");
    }

    #[test]
    fn unusable_figures_are_left_out() {
        let before = fixture_bench();
        let mut after = before.clone();
        let m = after.measurements.iter_mut().find(|m| m.variant == EntryId::F32 && m.t == 32).unwrap();
        m.status = "measurement error: 3 samples faster than the 1.00 us floor".into();
        let (t, cache, launch) = (m.t, m.cache, m.launch);
        let rows = compare(&before, &after, false).unwrap();
        assert_eq!(rows.len(), before.measurements.iter().filter(|m| m.usable()).count() - 1);
        assert!(!rows.iter().any(|r| r.variant == EntryId::F32 && r.t == t && r.cache == cache && r.launch == launch));
    }

    #[test]
    fn runs_from_different_machines_are_refused_unless_forced() {
        let before = fixture_bench();
        let mut after = before.clone();
        after.fingerprint.driver = "575.1".into();
        after.fingerprint.gpu = "NVIDIA H100 80GB HBM3".into();
        let err = compare(&before, &after, false).unwrap_err();
        assert!(err.starts_with("fingerprints differ (gpu: NVIDIA H200 != NVIDIA H100 80GB HBM3; driver: "), "{err}");
        assert!(err.ends_with("pass --force to compare anyway"), "{err}");
        assert!(!compare(&before, &after, true).unwrap().is_empty());
    }
}
