//! Criterion's verdict on a comparison pass, read back from criterion's own files
//! (`<out>/<benchmark>/change/estimates.json`): per benchmark Same / Faster / Slower by
//! criterion's rule, the 95% CI of the mean's relative change entirely below -noise (Faster) or
//! above +noise (Slower). (Criterion also asks its t-test for p < significance before it says
//! "improved" or "regressed"; the p-value is not written to disk, so this is the CI half of the
//! rule, which the t-test can only turn into Same.)

use crate::compare::Change;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `change/estimates.json`: criterion's relative change of the mean and the median (fractions).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChangeEstimates {
    pub mean: ChangeEstimate,
    pub median: ChangeEstimate,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChangeEstimate {
    pub confidence_interval: ConfidenceInterval,
    pub point_estimate: f64,
    pub standard_error: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ConfidenceInterval {
    pub confidence_level: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("reading criterion's {0}: {1} (did the comparison pass run?)")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: not criterion's change estimates: {1}")]
    Parse(PathBuf, serde_json::Error),
}

/// Criterion's rule on the mean's change: changed when its CI lies entirely outside +-`noise`.
pub fn classify(change: &ChangeEstimate, noise: f64) -> Change {
    let ci = &change.confidence_interval;
    if ci.upper_bound < -noise {
        Change::Faster
    } else if ci.lower_bound > noise {
        Change::Slower
    } else {
        Change::Same
    }
}

/// One benchmark of a comparison pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Criterion's id, e.g. "cold-serial/exact/32" (also its folder under the output directory).
    pub id: String,
    pub noise: f64,
    pub mean: ChangeEstimate,
    pub change: Change,
}

/// Reads `<out>/<id>/change/estimates.json` for each (id, noise threshold) and classifies it.
pub fn read(out: &Path, benchmarks: &[(String, f64)]) -> Result<Vec<Row>, SummaryError> {
    benchmarks
        .iter()
        .map(|(id, noise)| {
            let path = out.join(id).join("change/estimates.json");
            let text = std::fs::read_to_string(&path).map_err(|e| SummaryError::Read(path.clone(), e))?;
            let est: ChangeEstimates = serde_json::from_str(&text).map_err(|e| SummaryError::Parse(path, e))?;
            let change = classify(&est.mean, *noise);
            Ok(Row { id: id.clone(), noise: *noise, mean: est.mean, change })
        })
        .collect()
}

pub fn table(rows: &[Row]) -> String {
    let mut s = format!("{:<28} {:>9} {:>21} {:>7}  change\n", "benchmark", "mean", "95% CI", "noise");
    for r in rows {
        let ci = &r.mean.confidence_interval;
        s += &format!(
            "{:<28} {:>+8.2}% [{:>+8.2}%, {:>+8.2}%] {:>6.1}%  {:?}\n",
            r.id,
            100.0 * r.mean.point_estimate,
            100.0 * ci.lower_bound,
            100.0 * ci.upper_bound,
            100.0 * r.noise,
            r.change
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Criterion 0.8's `change/estimates.json` as it writes it (`ChangeEstimates` in its
    /// estimate.rs: mean and median, each a CI, a point estimate and a standard error).
    fn estimates(lo: f64, point: f64, hi: f64) -> String {
        format!(
            r#"{{"mean":{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{lo},"upper_bound":{hi}}},
            "point_estimate":{point},"standard_error":0.004}},
            "median":{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":-0.5,"upper_bound":0.5}},
            "point_estimate":0.0,"standard_error":0.1}}}}"#
        )
    }

    fn write(out: &Path, id: &str, json: &str) {
        let dir = out.join(id).join("change");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("estimates.json"), json).unwrap();
    }

    #[test]
    fn the_mean_change_ci_outside_the_noise_is_a_change() {
        let out = tempfile::tempdir().unwrap();
        // Inside +-2%, straddling it, wholly above, wholly below; and the same +3% under 11%.
        write(out.path(), "cold-serial/exact/1", &estimates(-0.01, 0.002, 0.015));
        write(out.path(), "cold-serial/exact/8", &estimates(0.01, 0.025, 0.04));
        write(out.path(), "cold-serial/mixed/1", &estimates(0.021, 0.03, 0.04));
        write(out.path(), "cold-chained/exact/32", &estimates(-0.04, -0.03, -0.021));
        write(out.path(), "hot-serial/mixed/1", &estimates(0.021, 0.03, 0.04));
        let ids = [
            ("cold-serial/exact/1", 0.02),
            ("cold-serial/exact/8", 0.02),
            ("cold-serial/mixed/1", 0.02),
            ("cold-chained/exact/32", 0.02),
            ("hot-serial/mixed/1", 0.11),
        ];
        let ids: Vec<(String, f64)> = ids.iter().map(|(i, n)| (i.to_string(), *n)).collect();
        let rows = read(out.path(), &ids).unwrap();
        let changes: Vec<Change> = rows.iter().map(|r| r.change).collect();
        // The median's wide CI is ignored: criterion judges the mean.
        assert_eq!(changes, [Change::Same, Change::Same, Change::Slower, Change::Faster, Change::Same]);
        assert_eq!(rows[2].mean.point_estimate, 0.03);
        let table = table(&rows);
        let slower = table.lines().find(|l| l.starts_with("cold-serial/mixed/1 ")).unwrap();
        assert!(slower.contains("+3.00%") && slower.contains("2.0%") && slower.ends_with("Slower"), "{slower}");
    }

    #[test]
    fn a_missing_or_foreign_file_is_an_error_naming_it() {
        let out = tempfile::tempdir().unwrap();
        let err = read(out.path(), &[("hot-serial/f32/8".into(), 0.11)]).unwrap_err().to_string();
        assert!(
            err.starts_with("reading criterion's ") && err.contains("hot-serial/f32/8/change/estimates.json"),
            "{err}"
        );
        write(out.path(), "hot-serial/f32/8", r#"{"mean": {"point_estimate": 0.1}}"#);
        let err = read(out.path(), &[("hot-serial/f32/8".into(), 0.11)]).unwrap_err().to_string();
        assert!(err.contains("not criterion's change estimates"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
