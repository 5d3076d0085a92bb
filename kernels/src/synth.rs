//! Seeded synthetic inputs for checks that need fresh data rather than goldens (determinism,
//! batch invariance, GPU-vs-CPU agreement, benchmarks). Never zeros: x ~ N(0, 1), the norm weight
//! ~ N(1, 0.1), W ~ N(0, 0.02), as in a trained layer.

use crate::op::{Dims, Shape, Weights};
use half::bf16;

/// splitmix64: tiny, seedable, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
    pub fn bf16s(&mut self, n: usize, mean: f64, std: f64) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f64(mean + std * self.normal())).collect()
    }
}

/// Weights of a layer of `shape` drawn from `seed`.
pub fn weights(shape: &Dims, seed: u64) -> Weights {
    let mut r = Rng::new(seed);
    Weights {
        norm: r.bf16s(shape.h, 1.0, 0.1),
        qkv: r.bf16s(shape.n() * shape.h, 0.0, 0.02),
        q_norm: r.bf16s(shape.d, 1.0, 0.1),
        k_norm: r.bf16s(shape.d, 1.0, 0.1),
    }
}

/// x [T, H] drawn from `seed`.
pub fn activations(shape: &Shape, seed: u64) -> Vec<bf16> {
    Rng::new(seed ^ 0x5eed_0fa1).bf16s(shape.t * shape.h, 0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_nonzero_and_roughly_standard() {
        let s = Shape::qwen3_06b(8);
        assert_eq!(activations(&s, 7), activations(&s, 7));
        assert_ne!(activations(&s, 7), activations(&s, 8));
        let x = activations(&s, 7);
        let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        assert!(x.iter().filter(|v| v.to_f32() == 0.0).count() < x.len() / 1000);
    }
}
