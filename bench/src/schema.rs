//! The benchmark results file, `fusegate-bench-v1` (results/<gpu>/bench-<UTC>.json and latest.json).
//!
//! - `schema`, `fingerprint` (what must match for two runs to be comparable), `conditions` (clocks,
//!   temperature, power, throttle reasons at start and end), `ceilings` (measured copy bandwidth and
//!   bf16 GEMM rate), `config` (token counts, cache modes, stop rule), `utc`, `git_commit`;
//! - `measurements`: one per (variant, T, cache, launch): the median and 95% CI in microseconds, samples,
//!   `method` ("graph" replays or per-launch "events"), the floor and % of floor, samples flagged
//!   below the floor or taken while throttled, whether the graph was checked on fresh inputs, and
//!   the variant's peak device memory (NVML process delta, cuBLAS workspace apart); `launch` is
//!   "serial" (each launch after the previous one finished) or "chained" (programmatic dependent
//!   launch: only the fused decode kernels take part; absent in files before it existed = serial);
//! - `baselines`: PyTorch eager and torch.compile measured in the same run, or why they are absent.
//!
//! The same types write and read the file; `variant` is a registry [`EntryId`] (written as its name).

use crate::roofline::Ceilings;
use crate::stats::{Estimate, StopRule};
use fusegate_kernels::EntryId;
pub use fusegate_kernels::cuda::Launch;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA: &str = "fusegate-bench-v1";

/// What two runs must share for their timings to be compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub gpu: String,
    pub sm_count: u32,
    pub l2_bytes: u64,
    pub memory_bytes: u64,
    pub compute_capability: String,
    pub driver: String,
    pub cuda_driver_api: String,
    pub cublas: String,
}

impl Fingerprint {
    /// Directory name under results/ for this GPU, e.g. "nvidia-h200".
    pub fn gpu_slug(&self) -> String {
        slug(&self.gpu)
    }

    /// Fields that differ from `other`, as "field: a != b".
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {a} != {b}"));
            }
        };
        cmp("gpu", self.gpu.clone(), other.gpu.clone());
        cmp("sm_count", self.sm_count.to_string(), other.sm_count.to_string());
        cmp("l2_bytes", self.l2_bytes.to_string(), other.l2_bytes.to_string());
        cmp("memory_bytes", self.memory_bytes.to_string(), other.memory_bytes.to_string());
        cmp("compute_capability", self.compute_capability.clone(), other.compute_capability.clone());
        cmp("driver", self.driver.clone(), other.driver.clone());
        cmp("cuda_driver_api", self.cuda_driver_api.clone(), other.cuda_driver_api.clone());
        cmp("cublas", self.cublas.clone(), other.cublas.clone());
        d
    }
}

/// "NVIDIA H200" -> "nvidia-h200".
pub fn slug(name: &str) -> String {
    let s: String = name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

/// The card's state at one moment (NVML), recorded rather than controlled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// NVML clock-event (throttle) reasons other than idle / application clocks, by name.
    pub throttle_reasons: Vec<String>,
}

impl Conditions {
    pub fn throttled(&self) -> bool {
        !self.throttle_reasons.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cache {
    /// L2 holds nothing of the op's inputs: each launch reads weights not touched since > L2 bytes.
    Cold,
    /// The same buffers every launch: the 8 MiB weight sits in L2.
    Hot,
}

impl std::fmt::Display for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Cache::Cold => "cold",
            Cache::Hot => "hot",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak of this process's device memory during the variant's run, minus the baseline before it.
    pub peak_delta_bytes: Option<u64>,
    /// cuBLAS workspace, shown apart (the standard path only).
    pub cublas_workspace_bytes: u64,
    /// Why the NVML figure is missing, when it is.
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub variant: EntryId,
    pub t: usize,
    pub cache: Cache,
    /// How consecutive launches in the timed graph relate.
    #[serde(default)]
    pub launch: Launch,
    /// "graph": time per launch from replays of a captured graph of `launches_per_sample` launches;
    /// "events": one launch between two events per sample.
    pub method: String,
    pub launches_per_sample: usize,
    /// Microseconds per launch.
    pub time_us: Estimate,
    pub floor_us: f64,
    pub bound_by: String,
    /// floor / median: 100% is the speed of light.
    pub pct_of_floor: f64,
    /// Samples faster than the floor: each is a measurement error, never a result.
    pub below_floor_samples: usize,
    pub throttled_samples: usize,
    /// The graph was replayed on fresh inputs and its output matched a direct launch.
    pub graph_checked: bool,
    pub memory: Memory,
    /// "ok", or why this figure must not be used (e.g. "measurement error: faster than the floor").
    pub status: String,
}

impl Measurement {
    pub fn usable(&self) -> bool {
        self.status == "ok"
    }
}

/// An external baseline: what a user runs instead, timed by bench/scripts/torch_baseline.py
/// (not a registry entry), under its script name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineId {
    /// HF Qwen3RMSNorm, then F.linear, launched from the host without a graph.
    TorchEager,
    /// The same under torch.compile, without a graph.
    TorchCompile,
    /// torch.compile (default inductor) captured in a CUDA graph: fusegate's timing method.
    TorchCompileGraph,
    /// HF's eager modules captured in a CUDA graph.
    HfEagerGraph,
    /// F.linear alone on an already normalised input, in a CUDA graph: the op minus its norm.
    CublasGemmGraph,
}

impl BaselineId {
    pub const ALL: [BaselineId; 5] = [
        BaselineId::TorchCompileGraph,
        BaselineId::HfEagerGraph,
        BaselineId::CublasGemmGraph,
        BaselineId::TorchEager,
        BaselineId::TorchCompile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BaselineId::TorchEager => "torch-eager",
            BaselineId::TorchCompile => "torch-compile",
            BaselineId::TorchCompileGraph => "torch-compile-graph",
            BaselineId::HfEagerGraph => "hf-eager-graph",
            BaselineId::CublasGemmGraph => "cublas-gemm-graph",
        }
    }

    /// Timed by fusegate's method (graph replays between CUDA events): comparable with fusegate's
    /// figures. The others include host launch gaps and are never used in a ratio.
    pub fn in_graph(self) -> bool {
        !matches!(self, BaselineId::TorchEager | BaselineId::TorchCompile)
    }

    /// A whole alternative to the op (norm and projection), graph-timed: what a speedup is claimed
    /// against. cuBLAS alone is the op minus its norm: a reference, not an alternative.
    pub fn is_alternative(self) -> bool {
        matches!(self, BaselineId::TorchCompileGraph | BaselineId::HfEagerGraph)
    }

    /// The report's column title.
    pub fn column(self) -> String {
        if self.in_graph() { self.name().to_string() } else { format!("{} (no graph)", self.name()) }
    }
}

impl std::fmt::Display for BaselineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub name: BaselineId,
    pub t: usize,
    pub cache: Cache,
    pub time_us: Estimate,
    pub floor_us: f64,
    /// Share of q|k|v bit-identical to HF's eager output on the same input (graph-timed ones).
    #[serde(default)]
    pub bit_exact_vs_hf: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    pub tokens: Vec<usize>,
    pub caches: Vec<Cache>,
    #[serde(default = "serial_only")]
    pub launches: Vec<Launch>,
    pub stop: StopRule,
    pub shape: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRun {
    pub schema: String,
    pub utc: String,
    pub git_commit: String,
    pub fingerprint: Fingerprint,
    pub conditions_start: Conditions,
    pub conditions_end: Conditions,
    pub ceilings: Ceilings,
    pub config: BenchConfig,
    pub measurements: Vec<Measurement>,
    pub baselines: Vec<Baseline>,
    /// Why PyTorch baselines are missing, if they are.
    pub baseline_note: Option<String>,
    pub seconds: f64,
}

fn serial_only() -> Vec<Launch> {
    vec![Launch::Serial]
}

impl BenchRun {
    /// Reads a bench file of this schema (files from before `launch` existed read as serial); the
    /// error is one line naming the file.
    pub fn load(path: &Path) -> Result<BenchRun, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a fusegate bench file: {e}", path.display()))
    }

    pub fn find(&self, variant: EntryId, t: usize, cache: Cache, launch: Launch) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.variant == variant && m.t == t && m.cache == cache && m.launch == launch)
    }

    /// A PyTorch baseline's figure at (T, cache), if it was measured.
    pub fn baseline(&self, name: BaselineId, t: usize, cache: Cache) -> Option<&Baseline> {
        self.baselines.iter().find(|b| b.name == name && b.t == t && b.cache == cache)
    }

    /// The fastest whole alternative at (T, cache) timed by fusegate's method, if any was.
    pub fn strongest_alternative(&self, t: usize, cache: Cache) -> Option<&Baseline> {
        self.baselines
            .iter()
            .filter(|b| b.name.is_alternative() && b.t == t && b.cache == cache)
            .min_by(|a, b| a.time_us.median.total_cmp(&b.time_us.median))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_fingerprint_differences() {
        assert_eq!(slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        let a = Fingerprint {
            gpu: "NVIDIA H200".into(),
            sm_count: 132,
            l2_bytes: 62_914_560,
            memory_bytes: 1 << 37,
            compute_capability: "9.0".into(),
            driver: "580.159.04".into(),
            cuda_driver_api: "13000".into(),
            cublas: "130100".into(),
        };
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.driver = "575.1".into();
        assert_eq!(a.differences(&b), vec!["driver: 580.159.04 != 575.1".to_string()]);
    }

    #[test]
    fn baselines_are_written_by_their_script_names() {
        assert_eq!(
            serde_json::to_string(&BaselineId::ALL).unwrap(),
            r#"["torch-compile-graph","hf-eager-graph","cublas-gemm-graph","torch-eager","torch-compile"]"#
        );
        // Host-launched figures are never an alternative a speedup is claimed against.
        assert!(BaselineId::ALL.iter().filter(|b| b.is_alternative()).all(|b| b.in_graph()));
        assert_eq!(BaselineId::TorchEager.column(), "torch-eager (no graph)");
        for b in BaselineId::ALL {
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        assert!(serde_json::from_str::<BaselineId>(r#""torch-jit""#).is_err());
    }

    #[test]
    fn committed_bench_files_load_and_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut paths = vec![root.join("suites/tests/fixtures/bench-nvidia-h200.json")];
        for gpu in ["nvidia-h200", "nvidia-h100-80gb-hbm3"] {
            let dir = root.join("results").join(gpu);
            let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            paths.extend(files.map(|f| f.unwrap().path()).filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("bench-") || n == "latest.json")
            }));
        }
        assert!(paths.len() >= 13, "{paths:?}");
        for p in &paths {
            let run = BenchRun::load(p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!run.measurements.is_empty(), "{}", p.display());
            // Written back and read again, nothing changes (the typed ids write what they read).
            let again: BenchRun = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
            assert_eq!(again, run, "{}", p.display());
            let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let variants = original["measurements"].as_array().unwrap().iter().map(|m| m["variant"].clone());
            let written = run.measurements.iter().map(|m| serde_json::to_value(m.variant).unwrap());
            assert!(variants.eq(written), "{}", p.display());
        }
        let missing = BenchRun::load(&root.join("results/no-such-gpu/latest.json")).unwrap_err();
        assert!(missing.starts_with("reading ") && !missing.contains('\n'), "{missing}");
    }
}
