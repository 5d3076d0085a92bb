//! The bench matrix under criterion: one criterion benchmark per (variant, T, cache, launch),
//! timed by the same replays as the JSON bench ([`Replay`]), so criterion's baselines and change
//! detection work on device time. fusegate's JSON, report and decision do not read any of this.
//!
//! A criterion iteration is one launch (the unit of the JSON's figures, independent of how many
//! launches one graph holds): `iter_custom(iters)` replays the graph until at least `iters`
//! launches ran, and returns `iters` times the mean CUDA-event time per launch of those replays.

use crate::criterion_summary::{self, SummaryError};
use crate::gpu::{Replay, Sampler};
use crate::noise::NoiseThreshold;
use crate::run::{self, Job, Options, Session};
use crate::schema::{Cache, Launch};
use criterion::{BenchmarkId, Criterion};
use fusegate_kernels::cuda::Cuda;
use fusegate_kernels::{BackendError, Dims, Entry, Shape, Weights, synth};
use std::path::PathBuf;
use std::time::Duration;

/// What a pass does with criterion's baselines (saved under `<out>/<benchmark>/<name>/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// Time and save as this baseline (overwriting it).
    Save(String),
    /// Time and compare with this saved baseline, which stays as it is.
    Compare(String),
}

impl Baseline {
    pub fn name(&self) -> &str {
        match self {
            Baseline::Save(n) | Baseline::Compare(n) => n,
        }
    }

    /// A baseline's name becomes a folder beside criterion's own (`new`, `change`, `report`):
    /// letters, digits, '-' and '_', and none of those.
    pub fn check_name(name: &str) -> Result<(), String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("{name:?}: a baseline name is letters, digits, '-' and '_'"));
        }
        if ["new", "change", "report"].contains(&name) {
            return Err(format!("{name:?}: criterion's own folder, not a baseline name"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}")]
    Device(#[from] BackendError),
    #[error("no saved baseline {name:?} for {id} in {out} (save it first with --criterion-save {name})")]
    NoBaseline { name: String, id: String, out: PathBuf },
    #[error("clearing criterion's earlier change folder {0}: {1}")]
    Clear(PathBuf, std::io::Error),
    #[error(transparent)]
    Summary(#[from] SummaryError),
}

/// The result of a pass: where criterion wrote, and (comparing) its verdict per benchmark.
pub struct Pass {
    pub out: PathBuf,
    pub summary: Option<Vec<criterion_summary::Row>>,
}

/// One criterion pass over `opts`' matrix into `<results>/<gpu>/criterion/`: saves `baseline`, or
/// compares with it and reads criterion's verdict back. A comparison needs every benchmark in the
/// baseline (checked before anything is timed); earlier `change/` folders are cleared first, so
/// the summary is this pass's.
pub fn pass(
    cuda: &Cuda,
    opts: &Options,
    baseline: &Baseline,
    noise: &NoiseThreshold,
    progress: &impl Fn(&str),
) -> Result<Pass, PassError> {
    let session = run::session(cuda, opts, progress)?;
    let out = opts.results_dir.join(session.fingerprint.gpu_slug()).join("criterion");
    let benches = benchmarks(&run::plan(cuda, opts), noise);
    if let Baseline::Compare(name) = baseline {
        for (id, _) in &benches {
            if !out.join(id).join(name).join("sample.json").is_file() {
                return Err(PassError::NoBaseline { name: name.clone(), id: id.clone(), out });
            }
            let change = out.join(id).join("change");
            if change.exists() {
                std::fs::remove_dir_all(&change).map_err(|e| PassError::Clear(change, e))?;
            }
        }
    }
    let c = settings(Criterion::default(), noise).output_directory(&out).with_output_color(false);
    let mut c = match baseline {
        Baseline::Save(name) => c.save_baseline(name.clone()),
        Baseline::Compare(name) => c.retain_baseline(name.clone(), true),
    };
    let ran = time_matrix(&mut c, cuda, &session, opts, noise, progress)?;
    c.final_summary();
    let summary = match baseline {
        Baseline::Save(_) => None,
        Baseline::Compare(_) => Some(criterion_summary::read(&out, &benchmarks(&ran, noise))?),
    };
    Ok(Pass { out, summary })
}

/// Criterion's settings for the GPU matrix: 20 samples over 1.5 s after 0.5 s of warm-up
/// (68 benchmarks in about 3 minutes), the noise threshold (cold here; each group sets its own
/// L2 state's), significance 0.05, no plots.
pub fn settings(c: Criterion, noise: &NoiseThreshold) -> Criterion {
    c.without_plots()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .significance_level(0.05)
        .noise_threshold(noise.cold)
}

/// Criterion's id of one measurement: "<cache>-<launch>/<variant>/<T>", also its folder under the
/// output directory (only characters criterion keeps in folder names).
pub fn id(entry: &Entry, t: usize, cache: Cache, launch: Launch) -> String {
    format!("{}/{}/{t}", group(cache, launch), entry.name)
}

fn group(cache: Cache, launch: Launch) -> String {
    format!("{cache}-{launch}")
}

/// The benchmarks `plan` makes and each one's noise threshold (for [`crate::criterion_summary`]).
pub fn benchmarks(plan: &[Job], noise: &NoiseThreshold) -> Vec<(String, f64)> {
    plan.iter().map(|&(t, e, launch, cache)| (id(e, t, cache, launch), noise.for_cache(cache))).collect()
}

/// Runs one criterion benchmark per (variant, T, cache, launch) of `opts` on `c` (configured by
/// the caller: [`pass`], or `cargo bench`'s command line) and returns the jobs it ran.
pub fn time_matrix(
    c: &mut Criterion,
    cuda: &Cuda,
    session: &Session,
    opts: &Options,
    noise: &NoiseThreshold,
    progress: &impl Fn(&str),
) -> Result<Vec<Job>, BackendError> {
    let weights = synth::weights(&Dims::QWEN3_06B, opts.seed);
    run(c, &session.sampler, &run::plan(cuda, opts), &weights, noise, progress)
}

/// Runs one criterion benchmark per job and returns the jobs it ran; a chained job whose launch
/// reads x before its predecessor wrote it is left out (its figure would be wrong, not fast) and
/// named to `progress`.
fn run(
    c: &mut Criterion,
    sampler: &Sampler,
    plan: &[Job],
    weights: &Weights,
    noise: &NoiseThreshold,
    progress: &impl Fn(&str),
) -> Result<Vec<Job>, BackendError> {
    let mut ran = Vec::new();
    for &(t, entry, launch, cache) in plan {
        let shape = Shape::qwen3_06b(t);
        if !sampler.launch_waits(entry, shape, weights, launch)? {
            progress(&format!(
                "{}: left out, a chained launch read x before it was written",
                id(entry, t, cache, launch)
            ));
            continue;
        }
        let mut replay = sampler.replay(entry, shape, weights, cache, launch)?;
        let mut failed: Option<BackendError> = None;
        let mut g = c.benchmark_group(group(cache, launch));
        g.noise_threshold(noise.for_cache(cache));
        g.bench_function(BenchmarkId::new(entry.name, t), |b| {
            b.iter_custom(|iters| {
                // Criterion cannot stop on an error: the first one is kept, the rest of the
                // benchmark spins on 1 ns, and the error is returned after it.
                if failed.is_some() {
                    return Duration::from_nanos(1);
                }
                launches_time(&mut replay, iters).unwrap_or_else(|e| {
                    failed = Some(e);
                    Duration::from_nanos(1)
                })
            })
        });
        g.finish();
        if let Some(e) = failed {
            return Err(e);
        }
        ran.push((t, entry, launch, cache));
    }
    Ok(ran)
}

/// Device time of `iters` launches: whole replays until at least `iters` launches ran, scaled
/// to `iters` by the replays' mean time per launch.
fn launches_time(replay: &mut Replay, iters: u64) -> Result<Duration, BackendError> {
    let replays = iters.div_ceil(replay.launches as u64).max(1);
    let mut per_launch_us = 0.0;
    for _ in 0..replays {
        per_launch_us += replay.sample_us()?;
    }
    Ok(Duration::from_secs_f64(per_launch_us / replays as f64 * iters as f64 * 1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_kernels::registry;

    #[test]
    fn baseline_names_are_plain_folder_names() {
        for ok in ["a", "before-v12", "run_2"] {
            assert!(Baseline::check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../a", "a/b", "new base", "a.b"] {
            let e = Baseline::check_name(bad).unwrap_err();
            assert!(e.contains("letters, digits"), "{e}");
        }
        assert!(Baseline::check_name("change").unwrap_err().contains("criterion's own folder"));
        assert_eq!(Baseline::Compare("a".into()).name(), "a");
    }

    #[test]
    fn ids_are_criterions_folder_names_and_carry_their_caches_noise() {
        let noise = NoiseThreshold::default();
        let exact = registry::find("exact").unwrap();
        let plan: Vec<Job> = vec![(32, exact, Launch::Chained, Cache::Cold), (8, exact, Launch::Serial, Cache::Hot)];
        let b = benchmarks(&plan, &noise);
        assert_eq!(b, [("cold-chained/exact/32".to_string(), 0.02), ("hot-serial/exact/8".to_string(), 0.11)]);
        // Criterion replaces these in folder names; an id holding one would not be found on disk.
        for (id, _) in &b {
            assert!(!id.contains(['?', '"', '\\', '*', '<', '>', ':', '|', '^', ' ']), "{id}");
        }
        // Every id is distinct across the whole default matrix, so no two share a folder.
        let all: Vec<Job> = crate::run::default_variants()
            .into_iter()
            .flat_map(|e| {
                crate::run::DEFAULT_TOKENS.into_iter().flat_map(move |t| {
                    [Launch::Serial, Launch::Chained]
                        .into_iter()
                        .flat_map(move |l| [Cache::Cold, Cache::Hot].into_iter().map(move |c| (t, e, l, c)))
                })
            })
            .collect();
        let ids: std::collections::HashSet<String> = benchmarks(&all, &noise).into_iter().map(|(i, _)| i).collect();
        assert_eq!(ids.len(), all.len());
    }
}
