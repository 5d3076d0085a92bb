//! Seeded synthetic Qwen3 weights in HF's layout: no Qwen3 weights ship in any package registry,
//! so the model gate runs on these (and on a real checkpoint when a user has one).
//!
//! Every tensor draws from its own [`Rng`] (splitmix64 + Box-Muller, the same bits on every
//! platform), seeded by [`tensor_seed`] from the model seed and the tensor's HF name: a model with
//! more layers shares the first layers' weights, and changing one tensor's recipe changes no other.
//!
//! Both styles: projections (q/k/v/o/gate/up/down) and the embedding ~ N(0, [`PROJ_STD`]).
//!
//! - [`SynthStyle::Stable`]: every norm weight (input, post-attention, q_norm, k_norm) ~
//!   N([`NORM_MEAN`], [`STABLE_NORM_STD`]); in layers 0, 1, 2 the k_norm weight at
//!   [`OUTLIER_CHANNEL`] is [`STABLE_K_NORM_OUTLIERS`] (the seeds' maxima) and the q_norm weight
//!   there is [`STABLE_Q_NORM_AT_OUTLIER`]; the final norm ~ N([`STABLE_FINAL_NORM_MEAN`],
//!   [`STABLE_FINAL_NORM_STD`]), so logits have std ~ 12.5 * 0.02 * sqrt(1024) = 8 (confident).
//! - [`SynthStyle::Stress`] (the seed documents' statistics, chaotic by design): k_norm ~ N(1, 1)
//!   with [`STRESS_K_NORM_OUTLIERS`] at random channels in layers 0-2 (layer 0: max 96.5, std ~9)
//!   and [`STRESS_LATER_K_NORM`] outliers after; q_norm ~ N(1, 0.25) with [`STRESS_Q_NORM`]
//!   outliers; input and post-attention norms ~ N(1, 0.25) with [`STRESS_LAYER_NORM`] outliers;
//!   the final norm ~ N(3.84, 2) clamped to [[`STRESS_FINAL_NORM_MIN`], [`STRESS_FINAL_NORM_MAX`]]
//!   with one channel at the maximum.

use fusegate_kernels::synth::Rng;
use half::bf16;

use crate::weights::{EMBED, FINAL_NORM, LM_HEAD, LayerTensor, LayerWeights};
use crate::{Qwen3Config, Qwen3Weights};

/// Std of every projection and of the embedding.
pub const PROJ_STD: f64 = 0.02;
/// Mean of every per-layer norm weight.
pub const NORM_MEAN: f64 = 1.0;
/// Std of every per-layer norm weight in Stable (and of Stress's q_norm and layer norms).
pub const STABLE_NORM_STD: f64 = 0.25;
/// The channel (mod head_dim) of Stable's k_norm outliers.
pub const OUTLIER_CHANNEL: usize = 17;
/// Stable's k_norm weight at [`OUTLIER_CHANNEL`] in layers 0, 1, 2.
pub const STABLE_K_NORM_OUTLIERS: [f64; 3] = [96.5, 44.5, 44.0];
/// Stable's q_norm weight at [`OUTLIER_CHANNEL`] in those layers.
pub const STABLE_Q_NORM_AT_OUTLIER: f64 = 0.05;
/// Stable's final norm ~ N(mean, std): the logit scale (the forward pass may tune it).
pub const STABLE_FINAL_NORM_MEAN: f64 = 12.5;
pub const STABLE_FINAL_NORM_STD: f64 = 1.0;
/// Stress's k_norm std (around [`NORM_MEAN`]).
pub const STRESS_K_NORM_STD: f64 = 1.0;
/// Stress's k_norm outlier values in layers 0, 1, 2, each at its own random channel.
pub const STRESS_K_NORM_OUTLIERS: [&[f64]; 3] = [&[96.5, 30.0, 24.0, 20.0], &[44.5, 20.0, 15.0], &[44.0, 18.0, 12.0]];
/// Stress outliers after layer 2's k_norm, and in every q_norm, input and post-attention norm:
/// (how many channels, uniform low, uniform high).
pub const STRESS_LATER_K_NORM: (usize, f64, f64) = (2, 5.0, 20.0);
pub const STRESS_Q_NORM: (usize, f64, f64) = (3, 10.0, 30.0);
pub const STRESS_LAYER_NORM: (usize, f64, f64) = (4, 10.0, 40.0);
/// Stress's final norm ~ N(mean, std), clamped.
pub const STRESS_FINAL_NORM_MEAN: f64 = 3.84;
pub const STRESS_FINAL_NORM_STD: f64 = 2.0;
pub const STRESS_FINAL_NORM_MIN: f64 = 0.1;
/// The seeds' 15.3, as the largest bf16 not above it (15.3 itself rounds up to 15.3125).
pub const STRESS_FINAL_NORM_MAX: f64 = 15.25;

/// Which norm-weight statistics to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthStyle {
    /// Trained-looking norms with the seeds' three k_norm outliers: a well-conditioned model.
    Stable,
    /// The seed documents' outlier statistics everywhere: chaotic by design.
    Stress,
}

/// One line saying what `style` draws (for reports).
pub fn describe(style: SynthStyle) -> &'static str {
    match style {
        SynthStyle::Stable => {
            "stable: projections N(0,0.02); norms N(1,0.25); k_norm ch 17 = 96.5/44.5/44.0 (q_norm 0.05) in layers 0-2; final norm N(12.5,1)"
        }
        SynthStyle::Stress => {
            "stress: projections N(0,0.02); k_norm N(1,1) + outliers to 96.5 (layer 0), 44.5, 44.0; q_norm outliers 10-30; layer norm outliers 10-40; final norm N(3.84,2) in [0.1,15.25]"
        }
    }
}

/// The seed of the tensor named `name` in the model seeded `seed`: FNV-1a 64 of the name, xor
/// the seed times the golden ratio (so nearby seeds and names give unrelated streams).
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    fnv ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A model of `config`'s dims drawn from `seed` in `style`. Layers are drawn in parallel; the
/// result does not depend on the thread count.
pub fn synthesize(config: &Qwen3Config, seed: u64, style: SynthStyle) -> Qwen3Weights {
    let c = config;
    let norm = final_norm(c.hidden_size, Rng::new(tensor_seed(seed, FINAL_NORM)), style);
    let vocab_matrix =
        |name: &str| Rng::new(tensor_seed(seed, name)).bf16s(c.vocab_size * c.hidden_size, 0.0, PROJ_STD);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(c.num_hidden_layers.max(1));
    let chunk = c.num_hidden_layers.div_ceil(threads).max(1);
    // The embedding (the largest tensor by far) is drawn on a thread of its own, beside the layers.
    let (embed, lm_head, layers) = std::thread::scope(|s| {
        let embed = s.spawn(|| vocab_matrix(EMBED));
        let lm_head = s.spawn(|| (!c.tie_word_embeddings).then(|| vocab_matrix(LM_HEAD)));
        let handles: Vec<_> = (0..c.num_hidden_layers)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(c.num_hidden_layers);
                s.spawn(move || (start..end).map(|i| layer(c, seed, style, i)).collect::<Vec<_>>())
            })
            .collect();
        let join = "a synthesis thread panicked";
        let layers: Vec<LayerWeights> = handles.into_iter().flat_map(|h| h.join().expect(join)).collect();
        (embed.join().expect(join), lm_head.join().expect(join), layers)
    });
    Qwen3Weights { config: config.clone(), embed, layers, norm, lm_head }
}

/// Layer `i`.
fn layer(c: &Qwen3Config, seed: u64, style: SynthStyle, i: usize) -> LayerWeights {
    let result: Result<_, std::convert::Infallible> = LayerWeights::try_from_fn(|t| {
        let n: usize = t.shape(c).iter().product();
        let mut rng = Rng::new(tensor_seed(seed, &t.hf_name(i)));
        Ok(match t {
            LayerTensor::InputNorm | LayerTensor::PostNorm => match style {
                SynthStyle::Stable => rng.bf16s(n, NORM_MEAN, STABLE_NORM_STD),
                SynthStyle::Stress => {
                    with_outliers(rng.bf16s(n, NORM_MEAN, STABLE_NORM_STD), &mut rng, STRESS_LAYER_NORM)
                }
            },
            LayerTensor::QNorm | LayerTensor::KNorm => head_norm(n, rng, style, t == LayerTensor::KNorm, i),
            _ => rng.bf16s(n, 0.0, PROJ_STD),
        })
    });
    let Ok(layer) = result;
    layer
}

/// A q_norm (`is_k` false) or k_norm weight of `d` channels for layer `i`.
fn head_norm(d: usize, mut rng: Rng, style: SynthStyle, is_k: bool, i: usize) -> Vec<bf16> {
    match style {
        SynthStyle::Stable => {
            let mut w = rng.bf16s(d, NORM_MEAN, STABLE_NORM_STD);
            if let Some(&k) = STABLE_K_NORM_OUTLIERS.get(i) {
                w[OUTLIER_CHANNEL % d] = bf16::from_f64(if is_k { k } else { STABLE_Q_NORM_AT_OUTLIER });
            }
            w
        }
        SynthStyle::Stress if is_k => {
            let w = rng.bf16s(d, NORM_MEAN, STRESS_K_NORM_STD);
            match STRESS_K_NORM_OUTLIERS.get(i) {
                Some(values) => place(w, &mut rng, values),
                None => with_outliers(w, &mut rng, STRESS_LATER_K_NORM),
            }
        }
        SynthStyle::Stress => with_outliers(rng.bf16s(d, NORM_MEAN, STABLE_NORM_STD), &mut rng, STRESS_Q_NORM),
    }
}

fn final_norm(h: usize, mut rng: Rng, style: SynthStyle) -> Vec<bf16> {
    match style {
        SynthStyle::Stable => rng.bf16s(h, STABLE_FINAL_NORM_MEAN, STABLE_FINAL_NORM_STD),
        SynthStyle::Stress => {
            let (lo, hi) = (STRESS_FINAL_NORM_MIN, STRESS_FINAL_NORM_MAX);
            let w: Vec<bf16> = (0..h)
                .map(|_| bf16::from_f64((STRESS_FINAL_NORM_MEAN + STRESS_FINAL_NORM_STD * rng.normal()).clamp(lo, hi)))
                .collect();
            place(w, &mut rng, &[hi])
        }
    }
}

/// `w` with `count` random channels set to values uniform in [low, high).
fn with_outliers(w: Vec<bf16>, rng: &mut Rng, (count, low, high): (usize, f64, f64)) -> Vec<bf16> {
    let values: Vec<f64> = (0..count).map(|_| low + (high - low) * uniform(rng)).collect();
    place(w, rng, &values)
}

/// `w` with `values` at distinct random channels (as many as fit).
fn place(mut w: Vec<bf16>, rng: &mut Rng, values: &[f64]) -> Vec<bf16> {
    let mut channels: Vec<usize> = (0..w.len()).collect();
    for (k, &v) in values.iter().enumerate().take(w.len()) {
        let j = k + (rng.next_u64() % (w.len() - k) as u64) as usize;
        channels.swap(k, j);
        w[channels[k]] = bf16::from_f64(v);
    }
    w
}

/// Uniform in [0, 1).
fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_puts_every_value_at_a_distinct_channel() {
        let w = vec![bf16::from_f32(1.0); 8];
        let out = place(w, &mut Rng::new(3), &[10.0, 20.0, 30.0]);
        let mut big: Vec<f32> = out.iter().map(|v| v.to_f32()).filter(|&v| v > 1.0).collect();
        big.sort_by(f32::total_cmp);
        assert_eq!(big, [10.0, 20.0, 30.0]);
        // More values than channels: every channel is overwritten once, no panic.
        assert_eq!(place(vec![bf16::ONE; 2], &mut Rng::new(3), &[5.0, 6.0, 7.0]).len(), 2);
    }

    #[test]
    fn tensor_seeds_differ_by_name_and_seed() {
        let a = tensor_seed(0, "model.layers.0.self_attn.q_proj.weight");
        assert_ne!(a, tensor_seed(0, "model.layers.1.self_attn.q_proj.weight"));
        assert_ne!(a, tensor_seed(1, "model.layers.0.self_attn.q_proj.weight"));
        assert_eq!(a, tensor_seed(0, "model.layers.0.self_attn.q_proj.weight"));
    }
}
