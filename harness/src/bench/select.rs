//! `select`: the production decision. Per token bucket, the fastest variant that passes its gates
//! (its contract on every golden case, and determinism); ties within noise go to the more exact
//! variant; the result is a dispatch table and a record of why every other variant lost.
//! Made for one launch regime: serial (plain launches, the default), or chained, where each
//! variant counts at its chained (PDL) figure when its kernel takes part and its serial one
//! otherwise: the stack a PDL-enabled server would run.

use crate::bench::schema::{BenchRun, Cache, Launch, Measurement};
use fusegate_kernels::registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Token buckets: decode, small prefill, prefill.
pub const BUCKETS: [(&str, usize, usize); 3] =
    [("decode", 1, 32), ("small-prefill", 33, 512), ("prefill", 513, usize::MAX)];

/// Share of traffic per bucket; decode-heavy by default (a chat server spends most calls decoding).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Mix(pub [f64; 3]);

impl Default for Mix {
    fn default() -> Self {
        Mix([0.7, 0.2, 0.1])
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>().map_err(|e| format!("--mix {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        if v.len() != 3 || v.iter().any(|x| !x.is_finite() || *x < 0.0) || v.iter().sum::<f64>() <= 0.0 {
            return Err(format!("--mix {s:?}: expected three non-negative shares, e.g. 0.7,0.2,0.1"));
        }
        let sum: f64 = v.iter().sum();
        Ok(Mix([v[0] / sum, v[1] / sum, v[2] / sum]))
    }
}

/// A variant's gates, read from a conformance run on the same GPU.
#[derive(Clone, Debug, Serialize)]
pub struct Gates {
    pub contract: bool,
    pub deterministic: bool,
    pub batch_invariant: bool,
    /// Its chained launches waited for the kernel before them (`None`: it made none, or the
    /// conformance file predates the check). When not, the chained decision counts it at its
    /// serial figure.
    pub chains_safely: Option<bool>,
    /// Why a gate is closed (first failing trial), if one is.
    pub reason: Option<String>,
}

impl Gates {
    pub fn open(&self) -> bool {
        self.contract && self.deterministic
    }
}

/// Gates per variant from a conformance results file (JSON, schema fusegate-conformance-v1).
pub fn gates_from_conformance(json: &serde_json::Value, backend: &str) -> BTreeMap<String, Gates> {
    let mut gates: BTreeMap<String, Gates> = BTreeMap::new();
    for t in json["trials"].as_array().into_iter().flatten() {
        if t["backend"] != backend || !t["mutant_of"].is_null() {
            continue;
        }
        let Some(entry) = t["entry"].as_str() else { continue };
        let g = gates.entry(entry.to_string()).or_insert(Gates {
            contract: true,
            deterministic: false,
            batch_invariant: false,
            chains_safely: None,
            reason: None,
        });
        if t["outcome"] != "passed" && t["check"] == "golden" {
            g.contract = false;
            if g.reason.is_none() {
                let case = t["case"].as_str().unwrap_or("?");
                g.reason = Some(format!("contract failed on {case}: {}", t["reason"].as_str().unwrap_or("")));
            }
        }
        if t["check"] == "invariance" {
            g.deterministic = t["invariance"]["deterministic"] == true;
            g.batch_invariant = t["invariance"]["batch_invariant"] == true;
            // Absent (CPU, no decode kernel, or a file from before the check): none was made.
            let runs = t["invariance"]["chained"].as_array().filter(|r| !r.is_empty());
            g.chains_safely = runs.map(|r| r.iter().all(|r| r["saw_late_x"] == true));
            if !g.deterministic && g.reason.is_none() {
                g.reason = Some("not deterministic".into());
            }
        }
    }
    gates
}

/// Higher is more exact: batch-invariant HF numerics, then HF numerics, then the rest.
fn exactness(variant: &str) -> u8 {
    let Some(e) = registry::find(variant) else { return 0 };
    let c = e.contract();
    let hf = c.bound(fusegate_kernels::Stage::B).is_some_and(|b| b.min_bit_exact > 0.0);
    u8::from(hf) + u8::from(hf && c.batch_invariant)
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub variant: String,
    pub gates_open: bool,
    /// Median us per T in the bucket (cold cache).
    pub times_us: Vec<(usize, f64)>,
    /// Sum of medians over the bucket's token counts, over the winner's.
    pub ratio_to_winner: f64,
    pub lost_because: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub name: &'static str,
    pub t_min: usize,
    pub t_max: Option<usize>,
    pub share: f64,
    pub tokens: Vec<usize>,
    pub winner: Option<String>,
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DispatchRule {
    pub t_from: usize,
    pub t_to: usize,
    pub variant: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub schema: &'static str,
    pub gpu: String,
    pub bench: String,
    pub conformance: String,
    pub cache: Cache,
    pub launch: Launch,
    pub mix: Mix,
    pub gates: BTreeMap<String, Gates>,
    pub buckets: Vec<Bucket>,
    pub dispatch: Vec<DispatchRule>,
    /// Traffic-weighted latency of the dispatch table over the standard path's (lower is better).
    pub mix_weighted_vs_standard: Option<f64>,
    pub memory: Vec<(String, Option<u64>, u64)>,
}

/// Makes the decision from one bench run and the gates.
pub fn decide(
    bench: &BenchRun,
    gates: BTreeMap<String, Gates>,
    mix: Mix,
    sources: (String, String),
    launch: Launch,
) -> Decision {
    let cache = Cache::Cold;
    let usable: Vec<&Measurement> = bench.measurements.iter().filter(|m| m.cache == cache && m.usable()).collect();
    let mut variants: Vec<String> = usable.iter().map(|m| m.variant.clone()).collect();
    variants.sort();
    variants.dedup();
    let chains_safely = |v: &str| gates.get(v).is_some_and(|g| g.chains_safely != Some(false));
    let time = |v: &str, t: usize| {
        let at = |l: Launch| usable.iter().find(|m| m.variant == v && m.t == t && m.launch == l).copied();
        match launch {
            Launch::Serial => at(Launch::Serial),
            Launch::Chained => chains_safely(v).then(|| at(Launch::Chained)).flatten().or_else(|| at(Launch::Serial)),
        }
    };
    let open = |v: &str| gates.get(v).is_some_and(Gates::open);

    let mut buckets = Vec::new();
    for (i, &(name, lo, hi)) in BUCKETS.iter().enumerate() {
        let mut tokens: Vec<usize> = usable.iter().map(|m| m.t).filter(|&t| t >= lo && t <= hi).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let total = |v: &str| -> Option<f64> { tokens.iter().map(|&t| time(v, t).map(|m| m.time_us.median)).sum() };
        // Fastest open variant; a tie (CIs overlapping at every T) goes to the more exact one.
        let mut winner: Option<&str> = None;
        for v in variants.iter().filter(|v| open(v) && total(v).is_some()) {
            winner = Some(match winner {
                None => v,
                Some(w) => {
                    let tie = tokens.iter().all(|&t| match (time(v, t), time(w, t)) {
                        (Some(a), Some(b)) => a.time_us.overlaps(&b.time_us),
                        _ => false,
                    });
                    let better = if tie { exactness(v) > exactness(w) } else { total(v) < total(w) };
                    if better { v } else { w }
                }
            });
        }
        let wt = winner.and_then(total);
        let ties_winner = |v: &str| {
            winner.is_some_and(|w| {
                tokens.iter().all(|&t| match (time(v, t), time(w, t)) {
                    (Some(a), Some(b)) => a.time_us.overlaps(&b.time_us),
                    _ => false,
                })
            })
        };
        let candidates = variants
            .iter()
            .filter_map(|v| {
                let t = total(v)?;
                let ratio = wt.map_or(f64::NAN, |w| t / w);
                let lost_because = match (Some(v.as_str()) == winner, gates.get(v)) {
                    (true, _) => None,
                    (false, Some(g)) if !g.open() => {
                        Some(format!("gate closed: {}", g.reason.clone().unwrap_or_else(|| "not deterministic".into())))
                    }
                    (false, None) => Some("no conformance result on this GPU".into()),
                    (false, Some(_)) if ties_winner(v) => Some(format!(
                        "tied within noise (95% CIs overlap at every T); {} is more exact",
                        winner.unwrap_or("?")
                    )),
                    (false, Some(_)) => Some(format!("{ratio:.2}x slower than {}", winner.unwrap_or("?"))),
                };
                Some(Candidate {
                    variant: v.clone(),
                    gates_open: open(v),
                    times_us: tokens.iter().filter_map(|&t| time(v, t).map(|m| (t, m.time_us.median))).collect(),
                    ratio_to_winner: ratio,
                    lost_because,
                })
            })
            .collect();
        buckets.push(Bucket {
            name,
            t_min: lo,
            t_max: (hi != usize::MAX).then_some(hi),
            share: mix.0[i],
            tokens,
            winner: winner.map(str::to_string),
            candidates,
        });
    }

    // Dispatch: per measured T, the winner of its bucket's rule applied at that T alone.
    let mut all_t: Vec<usize> = usable.iter().map(|m| m.t).collect();
    all_t.sort_unstable();
    all_t.dedup();
    let mut dispatch: Vec<DispatchRule> = Vec::new();
    for &t in &all_t {
        let best = variants.iter().filter(|v| open(v)).filter_map(|v| time(v, t).map(|m| (v, m))).reduce(|a, b| {
            let tie = a.1.time_us.overlaps(&b.1.time_us);
            let b_better = if tie { exactness(b.0) > exactness(a.0) } else { b.1.time_us.median < a.1.time_us.median };
            if b_better { b } else { a }
        });
        if let Some((v, _)) = best {
            match dispatch.last_mut() {
                Some(last) if &last.variant == v => last.t_to = t,
                _ => dispatch.push(DispatchRule { t_from: t, t_to: t, variant: v.clone() }),
            }
        }
    }

    let weighted = |f: &dyn Fn(&Bucket) -> Option<f64>| -> Option<f64> {
        buckets.iter().filter(|b| !b.tokens.is_empty()).map(|b| f(b).map(|x| x * b.share / b.tokens.len() as f64)).sum()
    };
    let chosen = weighted(&|b| {
        let w = b.winner.as_deref()?;
        b.candidates.iter().find(|c| c.variant == w).map(|c| c.times_us.iter().map(|x| x.1).sum())
    });
    let standard = weighted(&|b| {
        b.candidates.iter().find(|c| c.variant == "standard").map(|c| c.times_us.iter().map(|x| x.1).sum())
    });
    // Memory comes from the hot runs: a cold run holds extra input copies for L2 rotation.
    let memory = variants
        .iter()
        .filter_map(|v| {
            let m =
                bench.measurements.iter().filter(|m| &m.variant == v && m.cache == Cache::Hot).max_by_key(|m| m.t)?;
            Some((v.clone(), m.memory.peak_delta_bytes, m.memory.cublas_workspace_bytes))
        })
        .collect();
    Decision {
        schema: "fusegate-decision-v1",
        gpu: bench.fingerprint.gpu.clone(),
        bench: sources.0,
        conformance: sources.1,
        cache,
        launch,
        mix,
        gates,
        buckets,
        dispatch,
        mix_weighted_vs_standard: chosen.zip(standard).map(|(c, s)| c / s),
        memory,
    }
}

impl Decision {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Production decision: fused RMSNorm + QKV on {}\n", self.gpu);
        let _ = writeln!(
            s,
            "From `{}` and `{}`; timings are cold-L2 medians (us per call).\n",
            self.bench, self.conformance
        );
        let _ = writeln!(
            s,
            "{}\n",
            match self.launch {
                Launch::Serial => "Launch regime: **serial** (each call starts after the previous one has finished).",
                Launch::Chained =>
                    "Launch regime: **chained** (programmatic dependent launch): a variant counts at its chained \
                     figure where its kernel takes part (the fused decode kernels) and at its serial one elsewhere.",
            }
        );
        let _ = writeln!(s, "## Dispatch\n\n| T | variant |\n|---|---|");
        for r in &self.dispatch {
            let _ = writeln!(s, "| {}..={} | **{}** |", r.t_from, r.t_to, r.variant);
        }
        if let Some(x) = self.mix_weighted_vs_standard {
            let _ = writeln!(
                s,
                "\nTraffic mix (decode, small prefill, prefill) = {:.2}/{:.2}/{:.2}: the dispatch takes {:.3}x the standard path's time ({:.2}x faster).",
                self.mix.0[0],
                self.mix.0[1],
                self.mix.0[2],
                x,
                1.0 / x
            );
        }
        // Chained: whether each variant's chained launches waited for their predecessor (those
        // that did not count at their serial figure).
        let chained = self.launch == Launch::Chained;
        let _ = writeln!(
            s,
            "\n## Gates (conformance on this GPU)\n\n| variant | contract | deterministic | batch-invariant |{} note |\n|---|---|---|---|{}---|",
            if chained { " chained launches wait |" } else { "" },
            if chained { "---|" } else { "" }
        );
        for (v, g) in &self.gates {
            let yn = |b: bool| if b { "yes" } else { "**no**" };
            let wait = match (chained, g.chains_safely) {
                (false, _) => String::new(),
                (true, None) => " - |".to_string(),
                (true, Some(b)) => format!(" {} |", yn(b)),
            };
            let _ = writeln!(
                s,
                "| {v} | {} | {} | {} |{wait} {} |",
                yn(g.contract),
                yn(g.deterministic),
                yn(g.batch_invariant),
                g.reason.as_deref().unwrap_or("")
            );
        }
        for b in &self.buckets {
            let range = b.t_max.map_or(format!("T >= {}", b.t_min), |hi| format!("T {}..={hi}", b.t_min));
            let _ = writeln!(
                s,
                "\n## {} ({range}, {:.0}% of traffic): {}\n",
                b.name,
                100.0 * b.share,
                b.winner.as_deref().map_or("no measured variant passes its gates".to_string(), |w| format!("**{w}**"))
            );
            if b.tokens.is_empty() {
                let _ = writeln!(s, "No token count of this bucket was measured.");
                continue;
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
        let _ = writeln!(
            s,
            "\n## Device memory (largest T measured)\n\n| variant | peak delta over baseline | cuBLAS workspace |\n|---|---|---|"
        );
        for (v, peak, ws) in &self.memory {
            let peak = peak.map_or("n/a".to_string(), |p| format!("{:.1} MiB", p as f64 / 1048576.0));
            let _ = writeln!(s, "| {v} | {peak} | {:.1} MiB |", *ws as f64 / 1048576.0);
        }
        s
    }
}
