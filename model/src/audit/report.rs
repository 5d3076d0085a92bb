//! The audit as a table for people (the JSON is the [`super::Audit`] itself).

use std::fmt::Write as _;

use super::norms::NormKind;
use super::{Activations, Audit};

pub fn table(a: &Audit) -> String {
    let mut s = String::new();
    let c = &a.config;
    let _ = writeln!(
        s,
        "audit of {}: {} layers, hidden {}, heads {}/{} x {}, vocab {}, tied {}, attention_bias {}; {} tensors",
        a.dir.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.tie_word_embeddings,
        c.attention_bias,
        a.tensors
    );
    let _ = writeln!(s, "\nconfig vs tensors, values: {} defect(s)", a.defects.len());
    for f in &a.defects {
        let _ = writeln!(s, "  DEFECT {}", f.describe());
    }
    if a.tied_lm_head_bit_equal == Some(true) {
        let _ = writeln!(s, "  note: lm_head.weight stored although tied; bit-equal to embed_tokens (harmless)");
    }
    let _ =
        writeln!(s, "\nnorm weights (outlier: |w| >= {}x the weight's median |w|)", super::norms::OUTLIER_OVER_MEDIAN);
    let _ = writeln!(s, "  {:<6} {:<15} {:>9} {:>5} {:>8}  outlier channels", "layer", "norm", "max", "ch", "std");
    for n in &a.norms {
        let layer = n.layer.map_or("final".into(), |l| l.to_string());
        let kind = match n.kind {
            NormKind::Input => "input",
            NormKind::PostAttention => "post_attention",
            NormKind::QNorm => "q_norm",
            NormKind::KNorm => "k_norm",
            NormKind::Final => "final",
        };
        let outliers: Vec<String> = n.outliers.iter().take(4).map(|(c, w)| format!("{c}:{w}")).collect();
        let more = if n.outliers.len() > 4 { format!(" (+{})", n.outliers.len() - 4) } else { String::new() };
        let _ = writeln!(
            s,
            "  {layer:<6} {kind:<15} {:>9.4} {:>5} {:>8.4}  {}{more}",
            n.max,
            n.max_channel,
            n.std,
            if outliers.is_empty() { "-".into() } else { outliers.join(" ") }
        );
    }
    let _ = writeln!(
        s,
        "\nlargest projection weights against their tensor's median |w| (candidate: >= {}x)",
        super::norms::SUPER_WEIGHT_OVER_MEDIAN
    );
    for w in &a.super_weights {
        let mark = if w.candidate { "  candidate" } else { "" };
        let _ = writeln!(s, "  {} {:?}: |w| {:.4} = {:.1}x{mark}", w.tensor, w.position, w.max_abs, w.over_median);
    }
    match &a.activations {
        Activations::Skipped { reason } => {
            let _ = writeln!(s, "\nmassive activations: skipped ({reason})");
        }
        Activations::Scanned { prompts, positions, layers } => {
            let _ = writeln!(
                s,
                "\nmassive activations (|x| > {} and > {}x the layer's median |x|; {prompts} prompts, {positions} positions, standard entry on the CPU)",
                super::activations::MASSIVE_ABS,
                super::activations::MASSIVE_OVER_MEDIAN
            );
            for l in layers {
                let _ = write!(
                    s,
                    "  layer {}: median |x| {:.3e}, max |x| {:.3e}, {} massive",
                    l.layer, l.median_abs, l.max_abs, l.massive_count
                );
                let shown: Vec<String> = l
                    .massive
                    .iter()
                    .take(3)
                    .map(|m| {
                        format!("p{} pos {} (token {}) ch {}: {:.1}", m.prompt, m.position, m.token, m.channel, m.value)
                    })
                    .collect();
                let _ = writeln!(s, "{}{}", if shown.is_empty() { "" } else { ": " }, shown.join("; "));
            }
        }
    }
    let _ = writeln!(s, "\nrisk summary");
    for r in &a.risks {
        let _ = writeln!(s, "  - {r}");
    }
    s
}
