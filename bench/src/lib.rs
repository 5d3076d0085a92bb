//! Benchmarks and the production decision: device-time sampling (CUDA events, graph replay, cold
//! and hot L2), the roofline floor, NVML memory and environment fingerprints, run comparison,
//! `select` (conformance gates + timings -> dispatch table) and the report.
//!
//! Its own crate so that judging (fusegate-harness) depends on neither NVML nor plotting.

pub mod compare;
pub mod criterion_gpu;
pub mod criterion_summary;
pub mod e2e;
pub mod gpu;
pub mod noise;
pub mod nvml;
pub mod report;
pub mod roofline;
pub mod run;
pub mod schema;
pub mod select;
pub mod stats;

/// The committed H200 bench fixture (suites/tests/fixtures), for unit tests.
#[cfg(test)]
pub(crate) mod testdata {
    use crate::schema::BenchRun;
    use std::path::Path;

    pub fn fixture_bench() -> BenchRun {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites/tests/fixtures/bench-nvidia-h200.json");
        BenchRun::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The committed H200 model check (28-layer models) as the decision's model evidence.
    pub fn fixture_model() -> crate::select::ModelEvidence {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites/tests/fixtures/model-cuda-nvidia-h200.json");
        let run = fusegate_model::results::ModelCheckRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        crate::select::ModelEvidence::from_run(&run, "model-cuda-nvidia-h200.json".into())
    }
}
