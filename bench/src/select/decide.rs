//! The rules: per bucket the fastest open variant (a tie within noise goes to the more exact one),
//! the dispatch per measured T, the traffic-weighted figure against the standard path, memory.

use super::{BUCKETS, Bucket, Candidate, Decision, DispatchRule, Gates, Mix, ModelEvidence, exactness};
use crate::schema::{BenchRun, Cache, Launch, Measurement};
use fusegate_kernels::{EntryId, registry};
use std::collections::BTreeMap;

/// Makes the decision from one bench run, the conformance gates and the model check (whose
/// verdicts close the gates of variants outside their model contract, or not judged).
pub fn decide(
    bench: &BenchRun,
    mut gates: BTreeMap<EntryId, Gates>,
    model: &ModelEvidence,
    mix: Mix,
    sources: (String, String),
    launch: Launch,
) -> Decision {
    model.apply(&mut gates);
    let cache = Cache::Cold;
    let figures = Figures::new(bench, cache, &gates, launch);
    let buckets: Vec<Bucket> = BUCKETS.iter().zip(mix.0).map(|(&range, share)| figures.bucket(range, share)).collect();
    let dispatch = figures.dispatch();
    let chosen = mix_weighted(&buckets, |b| b.winner);
    let standard = mix_weighted(&buckets, |_| Some(registry::baseline().id));
    let memory = memory(bench, &figures.variants);
    Decision {
        schema: "fusegate-decision-v1",
        gpu: bench.fingerprint.gpu.clone(),
        bench: sources.0,
        conformance: sources.1,
        model: model.clone(),
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

/// One cache mode's usable figures as one launch regime counts them, with the gates.
struct Figures<'a> {
    usable: Vec<&'a Measurement>,
    /// Every variant with a usable figure, by name.
    variants: Vec<EntryId>,
    gates: &'a BTreeMap<EntryId, Gates>,
    launch: Launch,
}

impl<'a> Figures<'a> {
    fn new(bench: &'a BenchRun, cache: Cache, gates: &'a BTreeMap<EntryId, Gates>, launch: Launch) -> Self {
        let usable: Vec<&Measurement> = bench.measurements.iter().filter(|m| m.cache == cache && m.usable()).collect();
        let mut variants: Vec<EntryId> = usable.iter().map(|m| m.variant).collect();
        variants.sort_by_key(|v| v.name());
        variants.dedup();
        Figures { usable, variants, gates, launch }
    }

    fn open(&self, v: EntryId) -> bool {
        self.gates.get(&v).is_some_and(Gates::open)
    }

    fn chains_safely(&self, v: EntryId) -> bool {
        self.gates.get(&v).is_some_and(|g| g.chains_safely != Some(false))
    }

    /// `v`'s figure at `t`: chained where the regime is and `v` chains safely and was measured
    /// so, serial otherwise.
    fn time(&self, v: EntryId, t: usize) -> Option<&'a Measurement> {
        let at = |l: Launch| self.usable.iter().find(|m| m.variant == v && m.t == t && m.launch == l).copied();
        match self.launch {
            Launch::Serial => at(Launch::Serial),
            Launch::Chained => {
                self.chains_safely(v).then(|| at(Launch::Chained)).flatten().or_else(|| at(Launch::Serial))
            }
        }
    }

    /// The measured token counts in `lo..=hi`, ascending.
    fn tokens(&self, lo: usize, hi: usize) -> Vec<usize> {
        let mut tokens: Vec<usize> = self.usable.iter().map(|m| m.t).filter(|&t| t >= lo && t <= hi).collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// Sum of `v`'s medians over `tokens`, if it has a figure at each.
    fn total(&self, v: EntryId, tokens: &[usize]) -> Option<f64> {
        tokens.iter().map(|&t| self.time(v, t).map(|m| m.time_us.median)).sum()
    }

    /// `v` and `w` are within noise of each other: their CIs overlap at every T.
    fn tie(&self, v: EntryId, w: EntryId, tokens: &[usize]) -> bool {
        tokens.iter().all(|&t| match (self.time(v, t), self.time(w, t)) {
            (Some(a), Some(b)) => a.time_us.overlaps(&b.time_us),
            _ => false,
        })
    }

    /// The fastest open variant over `tokens`; a tie goes to the more exact one.
    fn winner(&self, tokens: &[usize]) -> Option<EntryId> {
        let mut winner: Option<EntryId> = None;
        for &v in self.variants.iter().filter(|&&v| self.open(v) && self.total(v, tokens).is_some()) {
            winner = Some(match winner {
                None => v,
                Some(w) => {
                    let better = if self.tie(v, w, tokens) {
                        exactness(v) > exactness(w)
                    } else {
                        self.total(v, tokens) < self.total(w, tokens)
                    };
                    if better { v } else { w }
                }
            });
        }
        winner
    }

    fn bucket(&self, (name, lo, hi): (&'static str, usize, usize), share: f64) -> Bucket {
        let tokens = self.tokens(lo, hi);
        let winner = self.winner(&tokens);
        let winner_total = winner.and_then(|w| self.total(w, &tokens));
        let candidates =
            self.variants.iter().filter_map(|&v| self.candidate(v, &tokens, winner, winner_total)).collect();
        Bucket { name, t_min: lo, t_max: (hi != usize::MAX).then_some(hi), share, tokens, winner, candidates }
    }

    /// `v` in a bucket, if it has a figure at every T there.
    fn candidate(
        &self,
        v: EntryId,
        tokens: &[usize],
        winner: Option<EntryId>,
        winner_total: Option<f64>,
    ) -> Option<Candidate> {
        let total = self.total(v, tokens)?;
        let ratio = winner_total.map_or(f64::NAN, |w| total / w);
        Some(Candidate {
            variant: v,
            gates_open: self.open(v),
            times_us: tokens.iter().filter_map(|&t| self.time(v, t).map(|m| (t, m.time_us.median))).collect(),
            ratio_to_winner: ratio,
            lost_because: self.lost_because(v, tokens, winner, ratio),
        })
    }

    /// Why `v` is not the bucket's winner (`None` if it is).
    fn lost_because(&self, v: EntryId, tokens: &[usize], winner: Option<EntryId>, ratio: f64) -> Option<String> {
        let winner_name = winner.map_or("?", EntryId::name);
        match (Some(v) == winner, self.gates.get(&v)) {
            (true, _) => None,
            (false, Some(g)) if !g.open() => {
                Some(format!("gate closed: {}", g.reason.clone().unwrap_or_else(|| "not deterministic".into())))
            }
            (false, None) => Some("no conformance result on this GPU".into()),
            (false, Some(_)) if winner.is_some_and(|w| self.tie(v, w, tokens)) => {
                Some(format!("tied within noise (95% CIs overlap at every T); {winner_name} is more exact"))
            }
            (false, Some(_)) => Some(format!("{ratio:.2}x slower than {winner_name}")),
        }
    }

    /// Per measured T, the bucket rule applied at that T alone. A T between two measured ones
    /// takes their variant where both chose the same one (the same routes were timed on both
    /// sides); any other T the bench did not time, between or beyond, goes to the baseline. So the
    /// rules cover every T >= 1, and neighbouring Ts with the same variant share a rule.
    fn dispatch(&self) -> Vec<DispatchRule> {
        let baseline = registry::baseline().id;
        let chosen: Vec<(usize, EntryId)> =
            self.tokens(1, usize::MAX).into_iter().filter_map(|t| self.fastest_at(t).map(|v| (t, v))).collect();
        let mut rules: Vec<DispatchRule> = Vec::new();
        let mut push = |t_from: usize, t_to: usize, variant: EntryId, measured: bool| match rules.last_mut() {
            Some(last) if last.variant == variant && last.measured == measured => last.t_to = t_to,
            _ => rules.push(DispatchRule { t_from, t_to, variant, measured }),
        };
        let mut next = 1;
        for (i, &(t, v)) in chosen.iter().enumerate() {
            if t > next {
                let agreed = i > 0 && chosen[i - 1].1 == v;
                push(next, t - 1, if agreed { v } else { baseline }, agreed);
            }
            push(t, t, v, true);
            next = t + 1;
        }
        push(next, usize::MAX, baseline, false);
        rules
    }

    /// The fastest open variant at `t`; a tie goes to the more exact one.
    fn fastest_at(&self, t: usize) -> Option<EntryId> {
        let figures = self.variants.iter().filter(|&&v| self.open(v)).filter_map(|&v| self.time(v, t).map(|m| (v, m)));
        let best = figures.reduce(|a, b| {
            let b_better = if a.1.time_us.overlaps(&b.1.time_us) {
                exactness(b.0) > exactness(a.0)
            } else {
                b.1.time_us.median < a.1.time_us.median
            };
            if b_better { b } else { a }
        });
        best.map(|(v, _)| v)
    }
}

/// Traffic-weighted mean latency of the variant `pick` names per bucket (measured buckets only).
fn mix_weighted(buckets: &[Bucket], pick: impl Fn(&Bucket) -> Option<EntryId>) -> Option<f64> {
    buckets
        .iter()
        .filter(|b| !b.tokens.is_empty())
        .map(|b| {
            let v = pick(b)?;
            let c = b.candidates.iter().find(|c| c.variant == v)?;
            Some(c.times_us.iter().map(|x| x.1).sum::<f64>() * b.share / b.tokens.len() as f64)
        })
        .sum()
}

/// Memory per variant at its largest T, from the hot runs: a cold run holds extra input copies
/// for L2 rotation.
fn memory(bench: &BenchRun, variants: &[EntryId]) -> Vec<(EntryId, Option<u64>, u64)> {
    variants
        .iter()
        .filter_map(|&v| {
            let hot = bench.measurements.iter().filter(|m| m.variant == v && m.cache == Cache::Hot);
            let m = hot.max_by_key(|m| m.t)?;
            Some((v, m.memory.peak_delta_bytes, m.memory.cublas_workspace_bytes))
        })
        .collect()
}
