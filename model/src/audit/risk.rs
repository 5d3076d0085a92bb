//! What each finding means for a fused RMSNorm + QKV kernel and the engine around it. Advice
//! only: weights are never changed (clipping outliers degrades real models).

use super::Activations;
use super::inventory::Finding;
use super::norms::{NormKind, NormStats, SuperWeight};

pub fn summary(findings: &[Finding], norms: &[NormStats], supers: &[SuperWeight], acts: &Activations) -> Vec<String> {
    let mut out = Vec::new();
    let phantom: Vec<&str> =
        findings.iter().filter(|f| matches!(f, Finding::PhantomBias { .. })).map(Finding::tensor).collect();
    if !phantom.is_empty() {
        out.push(format!(
            "{} attention bias tensor(s) the config says do not exist ({}...): an engine that reads them adds \
             garbage to q/k/v whatever the kernel does; load by the config, never by what the file holds",
            phantom.len(),
            phantom[0]
        ));
    }
    if findings.iter().any(|f| matches!(f, Finding::TiedLmHeadDiffers { .. })) {
        out.push(
            "lm_head.weight differs from embed_tokens although tied: HF's logits use embed_tokens; an engine \
                  reading lm_head.weight is a different model at the output"
                .into(),
        );
    }
    if findings.iter().any(|f| matches!(f, Finding::NonFinite { .. } | Finding::Extreme { .. })) {
        out.push(
            "non-finite or extreme weights: any pass that reads them (fused or not) is poisoned there; the \
                  checkpoint itself is corrupt, not the kernel"
                .into(),
        );
    }
    let mut k: Vec<&NormStats> = norms.iter().filter(|n| n.kind == NormKind::KNorm && !n.outliers.is_empty()).collect();
    k.sort_by(|a, b| b.max.total_cmp(&a.max));
    if !k.is_empty() {
        let list: Vec<String> = k
            .iter()
            .map(|n| format!("layer {} (max {} at ch {})", n.layer.unwrap_or(0), n.max, n.max_channel))
            .collect();
        out.push(format!(
            "k_norm outliers in {}: these channels dominate every attention score of their layer, so a \
             rounding-point difference in k, or another layer's k_norm read by mistake, matters most there: check \
             these layers first (model-check --dumps). RMSNorm is scale-invariant: the weight does not multiply \
             relative error, and clipping it changes the model",
            list.join(", ")
        ));
    }
    let other: Vec<String> = norms
        .iter()
        .filter(|n| n.kind != NormKind::KNorm && !n.outliers.is_empty())
        .map(|n| match n.layer {
            Some(l) => format!("{:?} layer {l} ({} ch)", n.kind, n.outliers.len()),
            None => format!("final ({} ch)", n.outliers.len()),
        })
        .collect();
    if !other.is_empty() {
        out.push(format!(
            "norm outliers elsewhere ({}): the fused kernel's B = round(w * round(x * r)) carries them into the \
             GEMM; a kernel rounding once instead of twice differs most on these channels",
            other.join(", ")
        ));
    }
    let candidates: Vec<&SuperWeight> = supers.iter().filter(|s| s.candidate).collect();
    if !candidates.is_empty() {
        out.push(format!(
            "{} super-weight candidate(s) (largest {} at {:?}, {:.0}x its median): a few weights carry the model; \
             never clip or quantise them away",
            candidates.len(),
            candidates[0].tensor,
            candidates[0].position,
            candidates[0].over_median
        ));
    }
    if let Activations::Scanned { layers, .. } = acts {
        let hit: Vec<String> = layers
            .iter()
            .filter(|l| l.massive_count > 0)
            .map(|l| format!("layer {} ({}, max {:.1})", l.layer, l.massive_count, l.max_abs))
            .collect();
        if !hit.is_empty() {
            out.push(format!(
                "massive activations after {}: the next layer's input RMSNorm reduces over rows dominated by one \
                 channel: its variance must accumulate in fp32 (a bf16 or reordered reduction loses the rest of the row)",
                hit.join(", ")
            ));
        }
    }
    if out.is_empty() {
        out.push("nothing here that makes a fused kernel riskier than on any Qwen3 checkpoint".into());
    }
    out.push("fusegate never changes weights: clipping or zeroing outliers degrades real models".into());
    out
}
