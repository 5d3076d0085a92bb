//! Rotary position embedding as HF's Qwen3 applies it (NeoX rotate-half): inv_freq and the angles
//! in fp32, cos and sin computed in fp32 then rounded to bf16, and
//! `bf16(bf16(x * cos) + bf16(rotate_half(x) * sin))`.

use half::bf16;

pub struct Rope {
    /// 1 / theta^(2i / d), i < d / 2, in fp32 as torch computes it.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
        Rope { inv_freq }
    }

    /// (cos, sin) at `pos`, each [d] (the angles repeated for both halves), rounded to bf16.
    fn cos_sin(&self, pos: usize) -> (Vec<bf16>, Vec<bf16>) {
        let angles: Vec<f32> = self.inv_freq.iter().map(|f| f * pos as f32).collect();
        let half =
            |g: fn(f32) -> f32| -> Vec<bf16> { angles.iter().chain(&angles).map(|&a| bf16::from_f32(g(a))).collect() };
        (half(f32::cos), half(f32::sin))
    }

    /// cos and sin at positions 0..positions, each [positions, d] bf16: the device pass's tables,
    /// the same values [`Rope::apply`] uses.
    pub fn tables(&self, positions: usize) -> (Vec<bf16>, Vec<bf16>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for pos in 0..positions {
            let (c, s) = self.cos_sin(pos);
            cos.extend(c);
            sin.extend(s);
        }
        (cos, sin)
    }

    /// Rotates every head of `x` ([heads, d], one position) in place.
    pub fn apply(&self, x: &mut [bf16], pos: usize) {
        let d = 2 * self.inv_freq.len();
        let (cos, sin) = self.cos_sin(pos);
        for head in x.chunks_exact_mut(d) {
            let orig = head.to_vec();
            for i in 0..d {
                let rotated = if i < d / 2 { -orig[i + d / 2] } else { orig[i - d / 2] };
                let a = bf16::from_f32(orig[i].to_f32() * cos[i].to_f32());
                let b = bf16::from_f32(rotated.to_f32() * sin[i].to_f32());
                head[i] = bf16::from_f32(a.to_f32() + b.to_f32());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity_and_rotation_keeps_the_norm() {
        let rope = Rope::new(8, 1e6);
        let x: Vec<bf16> =
            [0.5f32, -1.25, 2.0, 0.75, -0.5, 1.5, -2.5, 0.25].iter().map(|&v| bf16::from_f32(v)).collect();
        let mut y = x.clone();
        rope.apply(&mut y, 0);
        assert_eq!(x, y, "cos 0 = 1, sin 0 = 0");
        let mut z = x.clone();
        rope.apply(&mut z, 7);
        assert_ne!(x, z);
        let norm = |v: &[bf16]| v.iter().map(|a| a.to_f64().powi(2)).sum::<f64>();
        assert!((norm(&x) - norm(&z)).abs() / norm(&x) < 0.02, "a rotation up to bf16 rounding");
        // The first pair rotates by pos * inv_freq[0] = 7 radians.
        let (c, s) = (7f64.cos(), 7f64.sin());
        let want = x[0].to_f64() * c - x[4].to_f64() * s;
        assert!((z[0].to_f64() - want).abs() < 0.02, "{} vs {want}", z[0]);
    }
}
