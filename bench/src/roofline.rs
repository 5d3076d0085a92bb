//! Speed of light per shape: the fewest bytes the op must move and the flops it must do, over the
//! device's measured copy bandwidth and bf16 GEMM rate. No honest sample is faster than this.

use fusegate_kernels::Shape;
use serde::{Deserialize, Serialize};

/// The device's two ceilings, measured once per machine (see [`crate::gpu::measure_ceilings`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Device-to-device copy, counting bytes read plus bytes written, in bytes/s.
    pub bandwidth: f64,
    /// Dense bf16 GEMM with fp32 accumulation on random data, in flop/s.
    pub bf16_flops: f64,
    /// bf16 MMAs through mma.sync (fusegate's tensor-core instruction) at the best of several
    /// occupancies, in flop/s; absent from files measured before it existed.
    #[serde(default)]
    pub mma_sync_flops: Option<f64>,
}

/// Each input read once, each output written once: x, both weights, q/k/v.
pub fn min_bytes(s: &Shape) -> f64 {
    let bf16 = 2.0;
    bf16 * (s.t * s.h + s.h + s.n() * s.h + s.t * s.n()) as f64
}

/// The GEMM's multiply-adds count twice; the norm is negligible beside it.
pub fn flops(s: &Shape) -> f64 {
    2.0 * (s.t * s.h * s.n()) as f64
}

/// The floor in seconds: the larger of the memory time and the compute time.
pub fn floor_s(s: &Shape, c: &Ceilings) -> f64 {
    (min_bytes(s) / c.bandwidth).max(flops(s) / c.bf16_flops)
}

/// The least time any kernel built on mma.sync (all of fusegate's tensor-core kernels, or a fused
/// prefill built the same way) can take: the memory time, or the flops at the mma.sync rate.
pub fn mma_sync_floor_s(s: &Shape, c: &Ceilings) -> Option<f64> {
    c.mma_sync_flops.map(|rate| (min_bytes(s) / c.bandwidth).max(flops(s) / rate))
}

/// Which ceiling sets the floor.
pub fn bound_by(s: &Shape, c: &Ceilings) -> &'static str {
    if min_bytes(s) / c.bandwidth >= flops(s) / c.bf16_flops { "memory" } else { "compute" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_floor_matches_the_reference_figures() {
        // GPU.md's H200 figures: 4.24 TB/s, 790 TFLOP/s -> 1.98 us at T=1, 87 us at T=8192.
        let c = Ceilings { bandwidth: 4.24e12, bf16_flops: 790e12, mma_sync_flops: None };
        let t1 = floor_s(&Shape::qwen3_06b(1), &c);
        assert!((t1 * 1e6 - 1.98).abs() < 0.02, "{t1}");
        assert_eq!(bound_by(&Shape::qwen3_06b(1), &c), "memory");
        let t8k = floor_s(&Shape::qwen3_06b(8192), &c);
        assert!((t8k * 1e6 - 87.0).abs() < 0.5, "{t8k}");
        assert_eq!(bound_by(&Shape::qwen3_06b(8192), &c), "compute");
    }

    #[test]
    fn the_mma_sync_floor_is_the_flops_at_its_own_rate_or_the_memory_time() {
        // At half cuBLAS's rate, T = 8192's compute time doubles (87 -> 174 us); T = 1 stays
        // memory-bound; without a measured rate there is no bound.
        let c = Ceilings { bandwidth: 4.24e12, bf16_flops: 790e12, mma_sync_flops: Some(395e12) };
        let t8k = mma_sync_floor_s(&Shape::qwen3_06b(8192), &c).unwrap();
        assert!((t8k * 1e6 - 174.0).abs() < 1.0, "{t8k}");
        let t1 = mma_sync_floor_s(&Shape::qwen3_06b(1), &c).unwrap();
        assert!((t1 * 1e6 - 1.98).abs() < 0.02, "{t1}");
        assert_eq!(mma_sync_floor_s(&Shape::qwen3_06b(1), &Ceilings { mma_sync_flops: None, ..c }), None);
    }
}
