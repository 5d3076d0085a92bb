//! `select`: the production decision. Per token bucket, the fastest variant that passes its gates
//! (its contract on every golden case, and determinism); ties within noise go to the more exact
//! variant; the result is a dispatch table and a record of why every other variant lost.
//! Made for one launch regime: serial (plain launches, the default), or chained, where each
//! variant counts at its chained (PDL) figure when its kernel takes part and its serial one
//! otherwise: the stack a PDL-enabled server would run.
//!
//! Variants are registry [`EntryId`]s; gates, candidates and memory are listed by variant name.

mod decide;
mod evidence;
mod markdown;
mod model_gate;

pub use decide::decide;
pub use evidence::{check_complete, check_same_build};
pub use model_gate::{ModelEvidence, ModelLine};

use crate::schema::{Cache, Launch};
use fusegate_harness::invariance::InvarianceReport;
use fusegate_harness::results::ConformanceRun;
use fusegate_harness::{Check, Outcome};
use fusegate_kernels::registry::Numerics;
use fusegate_kernels::{BackendId, EntryId};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

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
    /// Within its model contract on every model of the model check (`None`: no model evidence
    /// was applied; closed like a failure).
    pub model: Option<bool>,
    /// Every mutant of it that the backend implements was rejected (a gate that let one through
    /// is blind to that defect).
    pub sighted: bool,
    /// Why a gate is closed (first failing trial), if one is.
    pub reason: Option<String>,
}

impl Gates {
    pub fn open(&self) -> bool {
        self.contract && self.deterministic && self.sighted && self.model == Some(true)
    }

    /// Before any trial: the contract holds until a golden trial fails; determinism is not
    /// known until an invariance trial shows it.
    fn unseen() -> Gates {
        Gates {
            contract: true,
            deterministic: false,
            batch_invariant: false,
            chains_safely: None,
            model: None,
            sighted: true,
            reason: None,
        }
    }

    /// A contract trial (golden case, or boundary shape) that did not pass, failed or not run,
    /// closes the contract gate.
    fn record_contract(&mut self, case: &str, outcome: &Outcome) {
        let why = match outcome {
            Outcome::Passed => return,
            Outcome::Failed(why) | Outcome::Ignored(why) => why,
        };
        self.contract = false;
        if self.reason.is_none() {
            self.reason = Some(format!("contract failed on {case}: {why}"));
        }
    }

    /// The invariance trial's findings; a trial without a report found nothing deterministic.
    fn record_invariance(&mut self, report: Option<&InvarianceReport>) {
        self.deterministic = report.is_some_and(|r| r.deterministic);
        self.batch_invariant = report.is_some_and(|r| r.batch_invariant);
        // No chained run (CPU, no decode kernel, or a file from before the check): none was made.
        self.chains_safely = report.filter(|r| !r.chained.is_empty()).map(InvarianceReport::chains_safely);
        if !self.deterministic && self.reason.is_none() {
            self.reason = Some("not deterministic".into());
        }
    }
}

/// Gates per variant from `backend`'s trials in a conformance run: its own trials open or close
/// them, and a mutant of it that slipped through closes them (the gate is blind).
pub fn gates_from_conformance(run: &ConformanceRun, backend: BackendId) -> BTreeMap<EntryId, Gates> {
    let mut gates: BTreeMap<EntryId, Gates> = BTreeMap::new();
    for t in run.trials.iter().filter(|t| t.backend == backend && t.mutant_of.is_none()) {
        let g = gates.entry(t.entry).or_insert_with(Gates::unseen);
        match &t.check {
            Check::Golden { case } => g.record_contract(case, &t.outcome),
            Check::Boundary { shape } => g.record_contract(&format!("boundary-h{}-t{}", shape.h, shape.t), &t.outcome),
            Check::Invariance => g.record_invariance(t.invariance.as_ref()),
        }
    }
    evidence::close_blind(&mut gates, run, backend);
    gates
}

/// Higher is more exact: batch-invariant HF numerics, then HF numerics, then the rest.
fn exactness(variant: EntryId) -> u8 {
    let e = variant.entry();
    let hf = e.numerics == Numerics::HF;
    u8::from(hf) + u8::from(hf && e.contract().batch_invariant)
}

/// A map keyed by entry, in the order of the entries' names.
fn by_name<V>(map: &BTreeMap<EntryId, V>) -> Vec<(EntryId, &V)> {
    let mut v: Vec<(EntryId, &V)> = map.iter().map(|(&id, x)| (id, x)).collect();
    v.sort_by_key(|(id, _)| id.name());
    v
}

fn serialize_by_name<S: Serializer, V: Serialize>(map: &BTreeMap<EntryId, V>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(by_name(map))
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub variant: EntryId,
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
    pub winner: Option<EntryId>,
    pub candidates: Vec<Candidate>,
}

/// Which variant serves `t_from..=t_to` (`t_to` = `usize::MAX`: and above). The rules cover every
/// T >= 1 without gaps: a T the bench did not time goes to the baseline, never to a fused
/// variant whose kernel at that T was not timed (`measured` = false).
#[derive(Clone, Debug, Serialize)]
pub struct DispatchRule {
    pub t_from: usize,
    pub t_to: usize,
    pub variant: EntryId,
    pub measured: bool,
}

impl DispatchRule {
    pub fn covers(&self, t: usize) -> bool {
        self.t_from <= t && t <= self.t_to
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub schema: &'static str,
    pub gpu: String,
    pub bench: String,
    pub conformance: String,
    /// The model gate's evidence: the model check it read, the models, each variant's lines.
    pub model: ModelEvidence,
    pub cache: Cache,
    pub launch: Launch,
    pub mix: Mix,
    #[serde(serialize_with = "serialize_by_name")]
    pub gates: BTreeMap<EntryId, Gates>,
    pub buckets: Vec<Bucket>,
    pub dispatch: Vec<DispatchRule>,
    /// Traffic-weighted latency of the dispatch table over the standard path's (lower is better).
    pub mix_weighted_vs_standard: Option<f64>,
    /// Per variant: peak device memory over the baseline before it (NVML), and cuBLAS workspace.
    pub memory: Vec<(EntryId, Option<u64>, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_harness::invariance::ChainedRun;

    #[test]
    fn exactness_ranks_batch_invariant_hf_numerics_first() {
        assert_eq!(exactness(EntryId::Exact), 2);
        assert_eq!((exactness(EntryId::Mixed), exactness(EntryId::Standard)), (1, 1));
        assert_eq!(exactness(EntryId::F32), 0);
    }

    #[test]
    fn gates_record_the_first_failure_and_the_invariance_findings() {
        let mut g = Gates::unseen();
        assert!(g.contract && !g.open(), "no invariance trial yet: determinism unknown");
        g.record_contract("t1", &Outcome::Passed);
        g.record_contract("t5", &Outcome::Failed("q: 7 ulps".into()));
        g.record_contract("t9", &Outcome::Ignored("no GPU".into()));
        assert!(!g.contract);
        assert_eq!(g.reason.as_deref(), Some("contract failed on t5: q: 7 ulps"));

        let report = |chained: Vec<ChainedRun>| InvarianceReport {
            seed: 1,
            token_counts: vec![1, 7],
            rows_checked: vec![0],
            deterministic: true,
            batch_invariant: false,
            chained,
            differences: Vec::new(),
        };
        let mut g = Gates::unseen();
        g.record_invariance(Some(&report(Vec::new())));
        assert!(!g.open(), "no model evidence yet: unseen is not passed");
        g.model = Some(true);
        assert!(g.open() && !g.batch_invariant && g.chains_safely.is_none() && g.reason.is_none());
        let raced = vec![ChainedRun { t: 1, saw_late_x: true }, ChainedRun { t: 5, saw_late_x: false }];
        g.record_invariance(Some(&report(raced)));
        assert_eq!(g.chains_safely, Some(false));
        g.record_invariance(None);
        assert!(!g.open() && g.reason.as_deref() == Some("not deterministic"));
    }
}
