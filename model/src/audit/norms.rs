//! Norm weights per layer (input, post-attention, q_norm, k_norm) and the final norm: max, std and
//! outlier channels; and the projections' largest weights relative to their tensor's median
//! (super-weight candidates, Yu et al. 2024). Statistics, never defects: trained models have them.

use half::bf16;
use serde::{Deserialize, Serialize};

use super::inventory::Inventory;
use crate::weights::{FINAL_NORM, LayerTensor};

/// A norm channel is an outlier at this multiple of the weight's median |w| (the seeds counted
/// "weights > 10x" per layer).
pub const OUTLIER_OVER_MEDIAN: f64 = 10.0;
/// A projection weight is a super-weight candidate at this multiple of its tensor's median |w|.
pub const SUPER_WEIGHT_OVER_MEDIAN: f64 = 100.0;
/// Projection weights listed, largest ratio first.
pub const SUPER_WEIGHTS_LISTED: usize = 8;

/// Which norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    Input,
    PostAttention,
    QNorm,
    KNorm,
    Final,
}

/// One norm weight's statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    pub kind: NormKind,
    /// None for the final norm.
    pub layer: Option<usize>,
    pub max: f64,
    pub max_channel: usize,
    pub std: f64,
    pub median_abs: f64,
    /// (channel, weight) with |w| >= OUTLIER_OVER_MEDIAN x median |w|, largest first.
    pub outliers: Vec<(usize, f64)>,
}

impl NormStats {
    pub fn of(kind: NormKind, layer: Option<usize>, w: &[bf16]) -> NormStats {
        let v: Vec<f64> = w.iter().map(|x| x.to_f64()).collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (max_channel, max) =
            v.iter().copied().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, x)| if x > b.1 { (i, x) } else { b });
        let mut abs: Vec<f64> = v.iter().map(|x| x.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let median_abs = abs.get(abs.len() / 2).copied().unwrap_or(0.0);
        let mut outliers: Vec<(usize, f64)> =
            v.iter().copied().enumerate().filter(|(_, x)| x.abs() >= OUTLIER_OVER_MEDIAN * median_abs).collect();
        outliers.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        NormStats { kind, layer, max, max_channel, std, median_abs, outliers }
    }
}

/// A projection's largest weight against its tensor's median.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuperWeight {
    pub tensor: String,
    pub position: Vec<usize>,
    pub max_abs: f64,
    pub over_median: f64,
    /// At or above SUPER_WEIGHT_OVER_MEDIAN.
    pub candidate: bool,
}

/// Every layer's four norms, in layer order, then the final norm.
pub fn norms(weights: &crate::Qwen3Weights) -> Vec<NormStats> {
    let mut out = Vec::new();
    for (i, l) in weights.layers.iter().enumerate() {
        out.push(NormStats::of(NormKind::Input, Some(i), &l.input_norm));
        out.push(NormStats::of(NormKind::PostAttention, Some(i), &l.post_norm));
        out.push(NormStats::of(NormKind::QNorm, Some(i), &l.q_norm));
        out.push(NormStats::of(NormKind::KNorm, Some(i), &l.k_norm));
    }
    out.push(NormStats::of(NormKind::Final, None, &weights.norm));
    out
}

/// The projections' (q/k/v/o/gate/up/down) largest weights relative to their median, from the
/// inventory's scans, largest ratio first.
pub fn super_weights(inv: &Inventory) -> Vec<SuperWeight> {
    const PROJECTIONS: [LayerTensor; 7] = [
        LayerTensor::QProj,
        LayerTensor::KProj,
        LayerTensor::VProj,
        LayerTensor::OProj,
        LayerTensor::GateProj,
        LayerTensor::UpProj,
        LayerTensor::DownProj,
    ];
    let mut out: Vec<SuperWeight> = inv
        .tensors
        .iter()
        .filter(|(name, _)| PROJECTIONS.iter().any(|t| name.ends_with(t.suffix())) && name.as_str() != FINAL_NORM)
        .map(|(name, s)| {
            let over_median = s.max_abs / s.median_abs.max(f64::MIN_POSITIVE);
            SuperWeight {
                tensor: name.clone(),
                position: s.max_at.clone(),
                max_abs: s.max_abs,
                over_median,
                candidate: over_median >= SUPER_WEIGHT_OVER_MEDIAN,
            }
        })
        .collect();
    out.sort_by(|a, b| b.over_median.total_cmp(&a.over_median));
    out.truncate(SUPER_WEIGHTS_LISTED);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_outlier_channels() {
        let w: Vec<bf16> =
            (0..128).map(|i| bf16::from_f64(if i == 17 { 96.5 } else { 1.0 + (i % 3) as f64 * 0.25 })).collect();
        let s = NormStats::of(NormKind::KNorm, Some(0), &w);
        assert_eq!((s.max, s.max_channel, s.outliers.clone()), (96.5, 17, vec![(17, 96.5)]));
        assert!(s.std > 8.0 && s.std < 9.0, "{}", s.std);
        assert_eq!(s.median_abs, 1.25);
    }
}
