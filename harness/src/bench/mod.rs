//! Benchmarks: device-time sampling (CUDA events, graph replay, cold and hot L2), the roofline
//! floor, NVML memory and environment fingerprints, run comparison, and the production decision.

pub mod compare;
pub mod gpu;
pub mod nvml;
pub mod report;
pub mod run;
pub mod schema;
pub mod select;
pub mod stats;
