//! Model-level metrics of a candidate against HF's reference run, the same for an entry's pass and
//! for HF's own floor runs: per layer, the relative L2 drift of the residual stream; per position
//! (teacher-forced), KL(HF || candidate) in nats, same top-1, and the change of the next token's
//! probability (llama.cpp's `--kl-divergence` figures); for free-running greedy decoding, the first
//! token that differs.
//!
//! KL is taken over HF's top-K tokens plus one bucket for the rest of the vocabulary (the golden
//! keeps K logits per position, not 151,936): the KL of the coarse-grained distributions, a lower
//! bound of the full KL and equal to it when the rest holds no mass.

use half::bf16;
use serde::{Deserialize, Serialize};

use crate::golden::PromptRecord;

/// What the metrics read of a candidate for one prompt: its layer outputs, and its logits either
/// whole ([T, V], an entry's pass) or as a golden run keeps them.
pub enum Candidate<'a> {
    /// An entry's pass; `logits` empty where none were computed (a chaotic model's output is not judged).
    Pass {
        layers: &'a [Vec<bf16>],
        logits: &'a [bf16],
    },
    Golden(&'a PromptRecord),
}

impl Candidate<'_> {
    fn has_logits(&self) -> bool {
        !matches!(self, Candidate::Pass { logits, .. } if logits.is_empty())
    }

    fn layers(&self) -> &[Vec<bf16>] {
        match self {
            Candidate::Pass { layers, .. } => layers,
            Candidate::Golden(r) => &r.layers,
        }
    }

    /// (log-probabilities at `ids`, log-probability of `next` (if any), argmax) at position `t`.
    fn position(
        &self,
        t: usize,
        ids: &[u32],
        next: Option<u32>,
        reference: &PromptRecord,
    ) -> (Vec<f64>, Option<f64>, u32) {
        match self {
            Candidate::Pass { logits, .. } => {
                let v = logits.len() / reference.argmax.len();
                let row = &logits[t * v..(t + 1) * v];
                let lse = logsumexp(row);
                let lp = |i: u32| row[i as usize].to_f64() - lse;
                (ids.iter().map(|&i| lp(i)).collect(), next.map(lp), crate::forward::argmax(row))
            }
            Candidate::Golden(r) => {
                let k = ids.len();
                let lse = f64::from(r.lse[t]);
                let lps = r.topk_logits[t * k..(t + 1) * k].iter().map(|l| l.to_f64() - lse).collect();
                (lps, next.map(|_| r.next_logit[t].to_f64() - lse), r.argmax[t])
            }
        }
    }
}

fn logsumexp(row: &[bf16]) -> f64 {
    let max = row.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, f64::max);
    max + row.iter().map(|v| (v.to_f64() - max).exp()).sum::<f64>().ln()
}

/// A figure that may be NaN (an unwritten element poisons everything after it): JSON has no NaN,
/// so it is written as null and read back as NaN.
pub(crate) mod maybe_nan {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Drift of one layer over every prompt and position.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerDrift {
    /// ||candidate - HF|| / ||HF|| over all positions of all prompts.
    #[serde(with = "maybe_nan")]
    pub rel_l2: f64,
    /// The largest of the same ratio per position (one token's residual vector).
    #[serde(with = "maybe_nan")]
    pub max_token_rel_l2: f64,
}

/// Per-position figures over every prompt, pooled.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OutputStats {
    pub positions: usize,
    #[serde(with = "maybe_nan")]
    pub mean_kl: f64,
    #[serde(with = "maybe_nan")]
    pub p99_kl: f64,
    #[serde(with = "maybe_nan")]
    pub max_kl: f64,
    /// Share of positions whose top-1 token is HF's, in percent.
    pub same_top1_pct: f64,
    /// RMS of p(next token) - p_HF(next token), in percent.
    #[serde(with = "maybe_nan")]
    pub rms_delta_p_pct: f64,
}

/// Everything measured of one candidate against the reference.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub layers: Vec<LayerDrift>,
    /// `None` where the candidate's logits were not computed.
    pub output: Option<OutputStats>,
    /// Per prompt, the index of the first greedy token that differs from HF's (None: all equal).
    pub first_divergent_token: Vec<Option<usize>>,
    /// Per prompt, at that step, how far HF's own choice led the candidate's in HF's logits
    /// (None: no divergence, or the candidate's token is not among HF's top 8 there).
    #[serde(default)]
    pub divergence_margin: Vec<Option<f64>>,
}

/// Sums of squares of one layer: (|candidate - HF|^2, |HF|^2) and the worst token's ratio.
fn drift_sums(c: &[bf16], r: &[bf16], h: usize, worst: &mut f64) -> (f64, f64) {
    let (mut num, mut den) = (0.0, 0.0);
    for (cr, rr) in c.chunks_exact(h).zip(r.chunks_exact(h)) {
        let n: f64 = cr.iter().zip(rr).map(|(a, b)| (a.to_f64() - b.to_f64()).powi(2)).sum();
        let d: f64 = rr.iter().map(|b| b.to_f64().powi(2)).sum();
        *worst = worst.max((n / d.max(f64::MIN_POSITIVE)).sqrt());
        num += n;
        den += d;
    }
    (num, den)
}

/// KL(p || q) over the top-K ids plus the rest of the vocabulary as one bucket.
fn kl_topk(lp: &[f64], lq: &[f64]) -> f64 {
    let mut kl = 0.0;
    let (mut p_in, mut q_in) = (0.0, 0.0);
    for (&a, &b) in lp.iter().zip(lq) {
        let p = a.exp();
        kl += p * (a - b);
        p_in += p;
        q_in += b.exp();
    }
    let (p_rest, q_rest) = ((1.0 - p_in).max(0.0), (1.0 - q_in).max(1e-300));
    if p_rest > 0.0 { kl + p_rest * (p_rest.ln() - q_rest.ln()) } else { kl }
}

/// The figures of `candidates` (one per prompt) against `reference`; `prompts` are HF's ids;
/// `greedy` the candidate's greedy continuations, where it made some.
pub fn figures(
    reference: &[PromptRecord],
    candidates: &[Candidate],
    prompts: &[Vec<u32>],
    greedy: Option<&[Vec<u32>]>,
    hidden: usize,
) -> Figures {
    let n_layers = reference.first().map_or(0, |r| r.layers.len());
    let mut sums = vec![(0.0, 0.0, 0.0); n_layers];
    let (mut kls, mut same, mut dps) = (Vec::new(), 0usize, Vec::new());
    for ((r, c), ids) in reference.iter().zip(candidates).zip(prompts) {
        for (l, s) in sums.iter_mut().enumerate() {
            let (num, den) = drift_sums(&c.layers()[l], &r.layers[l], hidden, &mut s.2);
            (s.0, s.1) = (s.0 + num, s.1 + den);
        }
        let k = r.topk_ids.len() / ids.len();
        for t in (0..ids.len()).filter(|_| c.has_logits()) {
            let top = &r.topk_ids[t * k..(t + 1) * k];
            let lse_r = f64::from(r.lse[t]);
            let lp: Vec<f64> = r.topk_logits[t * k..(t + 1) * k].iter().map(|l| l.to_f64() - lse_r).collect();
            let next = ids.get(t + 1).copied();
            let (lq, next_q, top1) = c.position(t, top, next, r);
            kls.push(kl_topk(&lp, &lq));
            same += usize::from(top1 == r.argmax[t]);
            if let Some(q) = next_q {
                dps.push(q.exp() - (r.next_logit[t].to_f64() - lse_r).exp());
            }
        }
    }
    let ratio = |n: f64, d: f64| (n / d.max(f64::MIN_POSITIVE)).sqrt();
    let layers = sums.iter().map(|&(n, d, w)| LayerDrift { rel_l2: ratio(n, d), max_token_rel_l2: w }).collect();
    let (first_divergent_token, divergence_margin) = match greedy {
        Some(g) => reference.iter().zip(g).map(|(r, ours)| divergence(r, ours)).unzip(),
        None => (Vec::new(), Vec::new()),
    };
    let output = candidates.iter().all(Candidate::has_logits).then(|| output_stats(kls, same, &dps));
    Figures { layers, output, first_divergent_token, divergence_margin }
}

/// The first greedy step where `ours` leaves HF's tokens, and HF's logit lead of its own token over
/// ours there (where ours is among HF's top tokens at that step).
fn divergence(r: &PromptRecord, ours: &[u32]) -> (Option<usize>, Option<f64>) {
    let Some(hf) = &r.greedy else { return (None, None) };
    let Some(step) = hf.iter().zip(ours).position(|(a, b)| a != b) else { return (None, None) };
    let margin = r.greedy_top.as_ref().and_then(|(ids, logits)| {
        let k = ids.len() / hf.len();
        let (ids, logits) = (&ids[step * k..(step + 1) * k], &logits[step * k..(step + 1) * k]);
        ids.iter().position(|&i| i == ours[step]).map(|j| logits[0].to_f64() - logits[j].to_f64())
    });
    (Some(step), margin)
}

fn output_stats(mut kls: Vec<f64>, same: usize, dps: &[f64]) -> OutputStats {
    let n = kls.len();
    kls.sort_by(f64::total_cmp);
    let pick = |q: f64| kls.get(((n as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    OutputStats {
        positions: n,
        mean_kl: kls.iter().sum::<f64>() / n.max(1) as f64,
        p99_kl: pick(0.99),
        max_kl: kls.last().copied().unwrap_or(0.0),
        same_top1_pct: 100.0 * same as f64 / n.max(1) as f64,
        rms_delta_p_pct: 100.0 * (dps.iter().map(|d| d * d).sum::<f64>() / dps.len().max(1) as f64).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_distributions_and_positive_otherwise() {
        let p = [0.5f64.ln(), 0.3f64.ln(), 0.1f64.ln()];
        assert!(kl_topk(&p, &p).abs() < 1e-15);
        let q = [0.4f64.ln(), 0.4f64.ln(), 0.1f64.ln()];
        // Rest bucket 0.1 both: KL = 0.5 ln(0.5/0.4) + 0.3 ln(0.3/0.4).
        let want = 0.5 * (0.5f64 / 0.4).ln() + 0.3 * (0.3f64 / 0.4).ln();
        assert!((kl_topk(&p, &q) - want).abs() < 1e-12);
        // Mass moved into the rest of the vocabulary counts too.
        let r = [0.3f64.ln(), 0.2f64.ln(), 0.1f64.ln()];
        let want = 0.5 * (0.5f64 / 0.3).ln() + 0.3 * (0.3f64 / 0.2).ln() + 0.1 * (0.1f64 / 0.4).ln();
        assert!((kl_topk(&p, &r) - want).abs() < 1e-12);
    }

    #[test]
    fn drift_is_relative_and_the_worst_token_is_kept() {
        let bf = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        let r = bf(&[3.0, 4.0, 1.0, 0.0]);
        let c = bf(&[3.0, 4.0, 1.0, 1.0]);
        let mut worst = 0.0;
        let (n, d) = drift_sums(&c, &r, 2, &mut worst);
        assert_eq!((n, d), (1.0, 26.0));
        assert_eq!(worst, 1.0, "the second token moved by its own norm");
    }

    #[test]
    fn nan_figures_survive_json() {
        let d = LayerDrift { rel_l2: f64::NAN, max_token_rel_l2: 0.25 };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#"{"rel_l2":null,"max_token_rel_l2":0.25}"#);
        let back: LayerDrift = serde_json::from_str(&text).unwrap();
        assert!(back.rel_l2.is_nan() && back.max_token_rel_l2 == 0.25);
    }

    #[test]
    fn percentiles_and_rates_over_positions() {
        let kls: Vec<f64> = (0..101).map(|i| i as f64).collect();
        let s = output_stats(kls, 50, &[0.1, -0.1]);
        assert_eq!((s.positions, s.mean_kl, s.p99_kl, s.max_kl), (101, 50.0, 99.0, 100.0));
        assert!((s.same_top1_pct - 100.0 * 50.0 / 101.0).abs() < 1e-12);
        assert!((s.rms_delta_p_pct - 10.0).abs() < 1e-12);
    }
}
