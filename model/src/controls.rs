//! The model gate's controls: perturbations of known size, applied to the q, k and v an honest
//! entry produced, that show what the gate can and cannot see. A gate that accepts the injected
//! error, or misplaces it, is blind; one that rejects the sub-floor perturbation fails honest
//! kernels.

use fusegate_kernels::cpu::next_up;
use fusegate_kernels::synth::Rng;
use fusegate_kernels::{Observed, Stage, StageData};
use half::bf16;
use serde::{Deserialize, Serialize};

use crate::forward::tap::Tap;

/// A perturbation of q, k and v.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Perturbation {
    /// Every element of one layer's q, k, v times (1 + size * N(0, 1)): a wrong kernel at one layer.
    RelativeNoise { layer: usize, size: f64, seed: u64 },
    /// In every layer, a `fraction` of q, k, v elements moved by one bf16 ulp up or down: the
    /// rounding noise of an honest kernel with another reduction order.
    UlpFlips { fraction: f64, seed: u64 },
}

/// What a control must do to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "expect")]
pub enum Expect {
    /// Rejected, with the first drifting layer at `layer`.
    Rejected {
        layer: usize,
    },
    Accepted,
}

/// One control, applied on top of an honest entry (`standard`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Control {
    pub name: &'static str,
    pub summary: &'static str,
    pub perturbation: Perturbation,
    pub expect: Expect,
}

/// The layer the injected error goes to: the second, so that the bisect has a clean layer before it.
pub const INJECTED_LAYER: usize = 1;

/// The controls every model check runs.
pub const CONTROLS: [Control; 2] = [
    Control {
        name: "control-injected-error",
        summary: "q, k, v of layer 1 times (1 + 2^-5 N(0,1)): 4-8 bf16 ulps of error at one layer",
        perturbation: Perturbation::RelativeNoise { layer: INJECTED_LAYER, size: 1.0 / 32.0, seed: 0x1e5 },
        expect: Expect::Rejected { layer: INJECTED_LAYER },
    },
    Control {
        name: "control-sub-floor",
        summary: "1-ulp flips on 0.1% of q, k, v in every layer: an honest kernel's rounding noise",
        perturbation: Perturbation::UlpFlips { fraction: 0.001, seed: 0x5f },
        expect: Expect::Accepted,
    },
];

/// The sizes below the injected-error control's (2^-5) that the resolution sweep tries, largest
/// first, once the control is rejected: the smallest size rejected is the gate's resolution.
pub const RESOLUTION_SIZES: [f64; 3] = [1.0 / 64.0, 1.0 / 128.0, 1.0 / 256.0];

/// Applies a perturbation as a [`Tap`]; its random draws depend on the seed, the layer and the
/// call, so a pass is reproducible.
pub struct Perturb {
    pub perturbation: Perturbation,
    calls: u64,
}

impl Perturb {
    pub fn new(perturbation: Perturbation) -> Perturb {
        Perturb { perturbation, calls: 0 }
    }
}

fn prev_down(x: bf16) -> bf16 {
    -next_up(-x)
}

impl Tap for Perturb {
    fn touches(&self, layer: usize) -> bool {
        match self.perturbation {
            Perturbation::RelativeNoise { layer: at, .. } => at == layer,
            Perturbation::UlpFlips { .. } => true,
        }
    }

    fn qkv(&mut self, layer: usize, observed: &mut Observed) {
        self.calls += 1;
        for (i, stage) in Stage::C.into_iter().enumerate() {
            let Some(StageData::Bf16(v)) = observed.get_mut(&stage) else { continue };
            match self.perturbation {
                Perturbation::RelativeNoise { layer: at, size, seed } if at == layer => {
                    let mut rng = Rng::new(seed ^ (self.calls << 8) ^ i as u64);
                    v.iter_mut().for_each(|x| *x = bf16::from_f64(x.to_f64() * (1.0 + size * rng.normal())));
                }
                Perturbation::UlpFlips { fraction, seed } => {
                    let mut rng = Rng::new(seed ^ (self.calls << 8) ^ ((layer as u64) << 4) ^ i as u64);
                    let threshold = (fraction * u64::MAX as f64) as u64;
                    for x in v.iter_mut() {
                        let r = rng.next_u64();
                        if r < threshold {
                            *x = if r & 1 == 0 { next_up(*x) } else { prev_down(*x) };
                        }
                    }
                }
                Perturbation::RelativeNoise { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(n: usize) -> Observed {
        let v: Vec<bf16> = (0..n).map(|i| bf16::from_f32(0.5 + i as f32 * 0.01)).collect();
        Stage::C.into_iter().map(|s| (s, StageData::Bf16(v.clone()))).collect()
    }

    #[test]
    fn noise_hits_only_its_layer_and_flips_move_one_ulp() {
        let base = observed(4000);
        let mut p = Perturb::new(Perturbation::RelativeNoise { layer: 1, size: 1.0 / 32.0, seed: 3 });
        let mut o = base.clone();
        p.qkv(0, &mut o);
        assert_eq!(o, base, "layer 0 untouched");
        p.qkv(1, &mut o);
        let (a, b) = (base[&Stage::Q].as_bf16().unwrap(), o[&Stage::Q].as_bf16().unwrap());
        let rel: f64 =
            a.iter().zip(b).map(|(x, y)| ((y.to_f64() - x.to_f64()) / x.to_f64()).powi(2)).sum::<f64>() / 4000.0;
        assert!((rel.sqrt() - 1.0 / 32.0).abs() < 0.005, "rms relative change {}", rel.sqrt());

        let mut f = Perturb::new(Perturbation::UlpFlips { fraction: 0.01, seed: 5 });
        let mut o = base.clone();
        f.qkv(2, &mut o);
        let (a, b) = (base[&Stage::K].as_bf16().unwrap(), o[&Stage::K].as_bf16().unwrap());
        let moved: Vec<i32> =
            a.iter().zip(b).filter(|(x, y)| x != y).map(|(x, y)| y.to_bits() as i32 - x.to_bits() as i32).collect();
        assert!((20..=60).contains(&moved.len()), "{} of 4000 moved", moved.len());
        assert!(moved.iter().all(|d| d.abs() == 1), "{moved:?}");
        assert!(moved.contains(&1) && moved.contains(&-1), "both directions");
    }
}
