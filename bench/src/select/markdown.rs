//! decision.md: the dispatch, the gates, each bucket's candidates and why they lost, memory.

use super::{Bucket, Decision, by_name};
use crate::schema::Launch;
use std::fmt::Write as _;

impl Decision {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        self.write_header(&mut s);
        self.write_dispatch(&mut s);
        self.write_gates(&mut s);
        self.write_model(&mut s);
        for b in &self.buckets {
            write_bucket(&mut s, b);
        }
        self.write_memory(&mut s);
        s
    }

    fn write_header(&self, s: &mut String) {
        let _ = writeln!(s, "# Production decision: fused RMSNorm + QKV on {}\n", self.gpu);
        let _ = writeln!(
            s,
            "From `{}`, `{}` and `{}`; timings are cold-L2 medians (us per call).\n",
            self.bench, self.conformance, self.model.source
        );
        let regime = match self.launch {
            Launch::Serial => "Launch regime: **serial** (each call starts after the previous one has finished).",
            Launch::Chained => {
                "Launch regime: **chained** (programmatic dependent launch): a variant counts at its chained \
                 figure where its kernel takes part (the fused decode kernels) and at its serial one elsewhere."
            }
        };
        let _ = writeln!(s, "{regime}\n");
    }

    fn write_dispatch(&self, s: &mut String) {
        let _ = writeln!(s, "## Dispatch\n\n| T | variant |\n|---|---|");
        for r in &self.dispatch {
            let range =
                if r.t_to == usize::MAX { format!("{}..", r.t_from) } else { format!("{}..={}", r.t_from, r.t_to) };
            let why = if r.measured { "" } else { " (not timed: the baseline)" };
            let _ = writeln!(s, "| {range} | **{}**{why} |", r.variant);
        }
        if let Some(x) = self.mix_weighted_vs_standard {
            let [decode, small, prefill] = self.mix.0;
            let _ = writeln!(
                s,
                "\nTraffic mix (decode, small prefill, prefill) = {decode:.2}/{small:.2}/{prefill:.2}: the dispatch takes \
                 {x:.3}x the standard path's time ({:.2}x faster).",
                1.0 / x
            );
        }
    }

    /// Chained decisions add whether each variant's chained launches waited for their
    /// predecessor (those that did not count at their serial figure).
    fn write_gates(&self, s: &mut String) {
        let chained = self.launch == Launch::Chained;
        let _ = writeln!(
            s,
            "\n## Gates (conformance and model check on this GPU)\n\n| variant | contract | deterministic | batch-invariant | model |{} note |\n|---|---|---|---|---|{}---|",
            if chained { " chained launches wait |" } else { "" },
            if chained { "---|" } else { "" }
        );
        let yn = |b: bool| if b { "yes" } else { "**no**" };
        for (v, g) in by_name(&self.gates) {
            let wait = match (chained, g.chains_safely) {
                (false, _) => String::new(),
                (true, None) => " - |".to_string(),
                (true, Some(b)) => format!(" {} |", yn(b)),
            };
            let model = g.model.map_or("**unseen**", yn);
            let _ = writeln!(
                s,
                "| {v} | {} | {} | {} | {model} |{wait} {} |",
                yn(g.contract),
                yn(g.deterministic),
                yn(g.batch_invariant),
                g.reason.as_deref().unwrap_or("")
            );
        }
    }

    /// Each variant's model-level figures beside HF's floor, per model judged.
    fn write_model(&self, s: &mut String) {
        let m = &self.model;
        let _ = writeln!(s, "\n## Model gate (`{}`)\n", m.source);
        let _ =
            writeln!(s, "Judged inside a Qwen3 forward pass against HF transformers on: {}.\n", m.models.join("; "));
        let _ = writeln!(
            s,
            "| variant | model | verdict | mean KL (HF floor) | same top-1 % (floor) | first divergent greedy token (floor) | first drifting layer | last-layer drift (floor) |\n|---|---|---|---|---|---|---|---|"
        );
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
        let tok = |t: Option<usize>| t.map_or("none".to_string(), |t| t.to_string());
        for (v, lines) in by_name(&m.lines) {
            for l in lines {
                let _ = writeln!(
                    s,
                    "| {v} | {} | {} | {} ({:.2e}) | {} ({:.1}) | {} ({}) | {} | {:.2e} ({:.2e}) |",
                    l.model,
                    if l.passed { "within" } else { "**outside**" },
                    opt(l.mean_kl, &|x| format!("{x:.2e}")),
                    l.floor_mean_kl,
                    opt(l.same_top1_pct, &|x| format!("{x:.1}")),
                    l.floor_same_top1_pct,
                    if l.greedy_decoded { tok(l.first_divergent_token) } else { "-".into() },
                    if l.greedy_decoded { tok(l.floor_first_divergent_token) } else { "-".into() },
                    l.first_drifting_layer.map_or("-".to_string(), |x| x.to_string()),
                    l.last_layer_drift,
                    l.floor_last_layer_drift
                );
            }
        }
    }

    fn write_memory(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n## Device memory (largest T measured)\n\n| variant | peak delta over baseline | cuBLAS workspace |\n|---|---|---|"
        );
        let mib = |b: u64| b as f64 / 1048576.0;
        for (v, peak, ws) in &self.memory {
            let peak = peak.map_or("n/a".to_string(), |p| format!("{:.1} MiB", mib(p)));
            let _ = writeln!(s, "| {v} | {peak} | {:.1} MiB |", mib(*ws));
        }
    }
}

/// A bucket's heading (its winner) and its candidates' medians per T.
fn write_bucket(s: &mut String, b: &Bucket) {
    let range = b.t_max.map_or(format!("T >= {}", b.t_min), |hi| format!("T {}..={hi}", b.t_min));
    let winner = b.winner.map_or("no measured variant passes its gates".to_string(), |w| format!("**{w}**"));
    let _ = writeln!(s, "\n## {} ({range}, {:.0}% of traffic): {winner}\n", b.name, 100.0 * b.share);
    if b.tokens.is_empty() {
        let _ = writeln!(s, "No token count of this bucket was measured.");
        return;
    }
    let head: Vec<String> = b.tokens.iter().map(|t| format!("T={t}")).collect();
    let _ = writeln!(s, "| variant | {} | vs winner | why not |", head.join(" | "));
    let _ = writeln!(s, "|---|{}---|---|", "---|".repeat(b.tokens.len()));
    for c in &b.candidates {
        let cells: Vec<String> = b
            .tokens
            .iter()
            .map(|t| c.times_us.iter().find(|x| x.0 == *t).map_or("-".into(), |x| format!("{:.2}", x.1)))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}x | {} |",
            c.variant,
            cells.join(" | "),
            c.ratio_to_winner,
            c.lost_because.as_deref().unwrap_or("chosen")
        );
    }
}
