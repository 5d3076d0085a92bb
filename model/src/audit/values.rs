//! One pass over a tensor's values, straight from the file's bytes (no copy of a 150k-row
//! embedding): moments, the largest magnitude and where, an exact median of |x| from a histogram of
//! bf16 bit patterns, non-finite values and values far beyond the tensor's scale, with positions.

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

/// A value is far beyond its tensor's scale when |x| exceeds this multiple of the tensor's median
/// |x|: trained weights' super weights and norm outliers stay within ~1e3x (the seeds' k_norm 96.5
/// is ~100x its median); 1e4x is beyond anything training produces.
pub const EXTREME_OVER_MEDIAN: f64 = 1e4;
/// Positions kept per finding.
pub const POSITIONS_KEPT: usize = 8;

/// What one pass saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorScan {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Mean and std of the finite values.
    pub mean: f64,
    pub std: f64,
    /// Largest finite |x|, and where (row-major position in `shape`).
    pub max_abs: f64,
    pub max_at: Vec<usize>,
    /// Median |x| of the finite values (each rounded to bf16 for the histogram).
    pub median_abs: f64,
    pub non_finite: usize,
    pub non_finite_at: Vec<Vec<usize>>,
    pub extreme: usize,
    pub extreme_at: Vec<Vec<usize>>,
}

/// The multi-dimensional position of flat index `i` in `shape`.
pub fn position(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    for (o, &d) in out.iter_mut().zip(shape).rev() {
        *o = i % d.max(1);
        i /= d.max(1);
    }
    out
}

fn values(dtype: Dtype, data: &[u8]) -> Option<Box<dyn Iterator<Item = f64> + '_>> {
    Some(match dtype {
        Dtype::BF16 => Box::new(data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())),
        Dtype::F16 => Box::new(data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())),
        Dtype::F32 => Box::new(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)),
        Dtype::F64 => Box::new(data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))),
        _ => return None,
    })
}

/// Scans a float tensor (BF16, F16, F32, F64); `None` for other dtypes.
pub fn scan(dtype: Dtype, shape: &[usize], data: &[u8]) -> Option<TensorScan> {
    let mut hist = vec![0u64; 1 << 15];
    let (mut n, mut sum, mut sumsq, mut max_abs, mut max_i) = (0u64, 0.0, 0.0, 0.0f64, 0usize);
    let (mut non_finite, mut non_finite_at) = (0, Vec::new());
    for (i, x) in values(dtype, data)?.enumerate() {
        if !x.is_finite() {
            non_finite += 1;
            if non_finite_at.len() < POSITIONS_KEPT {
                non_finite_at.push(position(i, shape));
            }
            continue;
        }
        n += 1;
        sum += x;
        sumsq += x * x;
        if x.abs() > max_abs {
            (max_abs, max_i) = (x.abs(), i);
        }
        hist[(half::bf16::from_f64(x.abs()).to_bits() & 0x7fff) as usize] += 1;
    }
    let median_abs = {
        let (mut seen, half) = (0u64, n.div_ceil(2));
        let bin = hist.iter().position(|&c| {
            seen += c;
            seen >= half && half > 0
        });
        bin.map_or(0.0, |b| half::bf16::from_bits(b as u16).to_f64())
    };
    let mean = sum / n.max(1) as f64;
    let std = (sumsq / n.max(1) as f64 - mean * mean).max(0.0).sqrt();
    let bound = EXTREME_OVER_MEDIAN * median_abs;
    let (mut extreme, mut extreme_at) = (0, Vec::new());
    if median_abs > 0.0 && max_abs > bound {
        for (i, x) in values(dtype, data)?.enumerate() {
            if x.is_finite() && x.abs() > bound {
                extreme += 1;
                if extreme_at.len() < POSITIONS_KEPT {
                    extreme_at.push(position(i, shape));
                }
            }
        }
    }
    Some(TensorScan {
        dtype: format!("{dtype:?}"),
        shape: shape.to_vec(),
        mean,
        std,
        max_abs,
        max_at: position(max_i, shape),
        median_abs,
        non_finite,
        non_finite_at,
        extreme,
        extreme_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn positions_medians_and_what_is_flagged() {
        assert_eq!(position(4, &[2, 3]), [1, 1]);
        assert_eq!(position(5, &[2, 3]), [1, 2]);
        let mut v: Vec<f32> = (0..100).map(|i| (i as f32 - 49.5) / 100.0).collect();
        v[13] = f32::NAN;
        v[42] = 1e29;
        let s = scan(Dtype::F32, &[10, 10], &bytes(&v)).unwrap();
        assert_eq!((s.non_finite, s.non_finite_at.clone()), (1, vec![vec![1, 3]]));
        assert_eq!((s.extreme, s.extreme_at.clone()), (1, vec![vec![4, 2]]));
        assert_eq!(s.max_at, [4, 2]);
        // |x| of 0.005..0.495 (one replaced by 1e29, one NaN): the median is ~0.25.
        assert!((s.median_abs - 0.25).abs() < 0.01, "{}", s.median_abs);
        // 96.5 among values of median ~1 is an outlier for people, not beyond the tensor's scale.
        let w: Vec<f32> = (0..128).map(|i| if i == 17 { 96.5 } else { 1.0 + (i % 5) as f32 * 0.1 }).collect();
        let s = scan(Dtype::F32, &[128], &bytes(&w)).unwrap();
        assert_eq!((s.extreme, s.non_finite, s.max_abs), (0, 0, 96.5));
        assert!(scan(Dtype::I32, &[1], &[0, 0, 0, 0]).is_none());
    }
}
