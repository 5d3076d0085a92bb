//! `bench --compare`: Same / Faster / Slower per (variant, T, cache, launch), refused when the two
//! runs' fingerprints differ (unless forced): timings from different machines, drivers or libraries
//! are not a regression signal. A row changed only when its 95% CIs do not overlap *and* its median
//! moved by more than the run-to-run noise ([`NoiseThreshold`]): within-run intervals are not
//! run-to-run noise (two H200 runs 12 minutes apart marked 34 of 68 rows Slower by CIs alone).

use crate::noise::{self, NoiseThreshold};
use crate::schema::{BenchRun, Cache, Launch};
use fusegate_kernels::EntryId;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Change {
    /// The 95% CIs of the medians overlap, or the medians differ by no more than the noise.
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
pub fn compare(before: &BenchRun, after: &BenchRun, force: bool, noise: &NoiseThreshold) -> Result<Vec<Row>, String> {
    let diffs = before.fingerprint.differences(&after.fingerprint);
    if !diffs.is_empty() && !force {
        return Err(format!("fingerprints differ ({}); pass --force to compare anyway", diffs.join("; ")));
    }
    Ok(noise::paired(before, after)
        .map(|(b, a, rel)| {
            let change = if a.time_us.overlaps(&b.time_us) || rel.abs() <= noise.for_cache(a.cache) {
                Change::Same
            } else if rel < 0.0 {
                Change::Faster
            } else {
                Change::Slower
            };
            Row {
                variant: a.variant,
                t: a.t,
                cache: a.cache,
                launch: a.launch,
                before_us: b.time_us.median,
                after_us: a.time_us.median,
                change,
            }
        })
        .collect())
}

/// How many are Same, Faster, Slower.
pub fn counts(changes: impl IntoIterator<Item = Change>) -> [usize; 3] {
    let mut n = [0; 3];
    for c in changes {
        n[c as usize] += 1;
    }
    n
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
        let none = NoiseThreshold::from_percent(0.0).unwrap();
        let before = fixture_bench();
        let usable = before.measurements.iter().filter(|m| m.usable()).count();
        let rows = compare(&before, &before.clone(), false, &none).unwrap();
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
        let rows = compare(&before, &after, false, &none).unwrap();
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
        let rows = compare(&before, &after, false, &NoiseThreshold::default()).unwrap();
        assert_eq!(rows.len(), before.measurements.iter().filter(|m| m.usable()).count() - 1);
        assert!(!rows.iter().any(|r| r.variant == EntryId::F32 && r.t == t && r.cache == cache && r.launch == launch));
    }

    #[test]
    fn runs_from_different_machines_are_refused_unless_forced() {
        let before = fixture_bench();
        let mut after = before.clone();
        after.fingerprint.driver = "575.1".into();
        after.fingerprint.gpu = "NVIDIA H100 80GB HBM3".into();
        let err = compare(&before, &after, false, &NoiseThreshold::default()).unwrap_err();
        assert!(err.starts_with("fingerprints differ (gpu: NVIDIA H200 != NVIDIA H100 80GB HBM3; driver: "), "{err}");
        assert!(err.ends_with("pass --force to compare anyway"), "{err}");
        assert!(!compare(&before, &after, true, &NoiseThreshold::default()).unwrap().is_empty());
    }

    #[test]
    fn a_move_within_the_noise_is_the_same_even_when_the_cis_part() {
        let noise = NoiseThreshold::default();
        let (mut before, mut after) = (fixture_bench(), fixture_bench());
        // Cold: 1.5% (< 2%) with disjoint CIs is Same; 2.5% is Slower; -3% is Faster.
        set(&mut before, EntryId::Mixed, 1, 10.0, 0.01);
        set(&mut after, EntryId::Mixed, 1, 10.15, 0.01);
        set(&mut before, EntryId::Mixed, 8, 10.0, 0.01);
        set(&mut after, EntryId::Mixed, 8, 10.25, 0.01);
        set(&mut before, EntryId::Exact, 8, 10.0, 0.01);
        set(&mut after, EntryId::Exact, 8, 9.7, 0.01);
        let rows = compare(&before, &after, false, &noise).unwrap();
        let cold = |v: EntryId, t: usize| {
            let r = rows.iter().find(|r| (r.variant, r.t, r.cache, r.launch) == (v, t, Cache::Cold, Launch::Serial));
            r.unwrap().change
        };
        assert_eq!(cold(EntryId::Mixed, 1), Change::Same);
        assert_eq!(cold(EntryId::Mixed, 8), Change::Slower);
        assert_eq!(cold(EntryId::Exact, 8), Change::Faster);
        // The same 2.5% under --noise 3 is Same.
        let rows = compare(&before, &after, false, &NoiseThreshold::from_percent(3.0).unwrap()).unwrap();
        assert!(rows.iter().all(|r| r.change == Change::Same || r.variant == EntryId::Exact));
    }

    /// The defect: two committed H200 runs 12 minutes apart (6b251cb -> 4c26627) marked 34 of 68
    /// rows Slower by CIs alone, cuBLAS's unchanged path included. With the measured noise only
    /// exact T = 32 cold chained moves, and it is real: 4c26627 changed `__dec32` (v12: prefetch
    /// and early release, NOTES.md predicted chained T = 32 7.06 -> 6.85 us; measured 7.06 -> 6.89).
    #[test]
    fn the_committed_same_machine_pair_compares_same_but_for_the_kernel_that_changed() {
        let load = |stamp: &str| {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../results/nvidia-h200/bench-{stamp}.json"));
            BenchRun::load(&p).unwrap_or_else(|e| panic!("{e}"))
        };
        let (before, after) = (load("20261122T014010Z"), load("20261122T015224Z"));
        assert_eq!((&before.git_commit[..7], &after.git_commit[..7]), ("6b251cb", "4c26627"));
        let by_ci = compare(&before, &after, false, &NoiseThreshold::from_percent(0.0).unwrap()).unwrap();
        assert_eq!(counts(by_ci.iter().map(|r| r.change)), [27, 7, 34]);
        let rows = compare(&before, &after, false, &NoiseThreshold::default()).unwrap();
        assert_eq!(counts(rows.iter().map(|r| r.change)), [67, 1, 0]);
        let moved: Vec<_> =
            rows.iter().filter(|r| r.change != Change::Same).map(|r| (r.variant, r.t, r.cache, r.launch)).collect();
        assert_eq!(moved, [(EntryId::Exact, 32, Cache::Cold, Launch::Chained)]);
    }
}
