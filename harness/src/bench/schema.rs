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

use crate::bench::stats::{Estimate, StopRule};
use crate::roofline::Ceilings;
pub use fusegate_kernels::cuda::Launch;
use serde::{Deserialize, Serialize};

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
        f.write_str(match self {
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
    pub variant: String,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// "torch-eager" (HF Qwen3RMSNorm then F.linear) or "torch-compile".
    pub name: String,
    pub t: usize,
    pub cache: Cache,
    pub time_us: Estimate,
    pub floor_us: f64,
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
    pub fn find(&self, variant: &str, t: usize, cache: Cache, launch: Launch) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.variant == variant && m.t == t && m.cache == cache && m.launch == launch)
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
}
