//! The trial list: one trial per (backend, entry, golden case), on a GPU one per (entry, T) at
//! every T where the backend changes kernel or tile, plus one invariance trial per (backend,
//! entry). The same list runs under `cargo test` (suites/) and `cargo xtask conform`; [`Suite`]
//! runs it.
//!
//! [`Suite`]: crate::suite::Suite

use crate::invariance::InvarianceReport;
use crate::verdict::{StageReport, Verdict};
use fusegate_golden::CaseEntry;
use fusegate_kernels::registry::{Fault, Role};
use fusegate_kernels::{Backend, BackendId, Dims, Entry, EntryId, Shape, Stage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a trial checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum Check {
    /// The entry against one PyTorch golden case and its contract.
    Golden { case: String },
    /// On a GPU, the entry on fresh synthetic inputs of [`BOUNDARY_DIMS`] at a T where the backend
    /// changes kernel or tile, judged by its contract against the CPU emulation of HF's numerics
    /// (which the CPU suite checks against PyTorch's goldens): a path chosen by shape cannot hide
    /// a bug.
    Boundary { shape: Shape },
    /// Determinism and batch invariance on fresh synthetic inputs.
    Invariance,
}

/// Which checks can catch an entry: a variant faces all of them; a mutant only those that can see
/// its defect (a run-to-run reduction-order change is invisible to a single golden comparison).
pub fn checks_for(entry: &Entry) -> (bool, bool) {
    match (entry.role, entry.fault) {
        (Role::Variant, _) => (true, true),
        (_, Some(Fault::BatchVariantOrder { .. } | Fault::RunVariantOrder | Fault::ReadsXEarly)) => (false, true),
        _ => (true, false),
    }
}

/// A backend, or why it cannot run here.
#[derive(Clone)]
pub struct BackendSlot {
    pub id: BackendId,
    pub backend: Result<Arc<dyn Backend>, String>,
}

#[derive(Clone)]
pub struct Trial {
    pub backend: BackendSlot,
    pub entry: &'static Entry,
    pub check: Check,
    /// An earlier variant of the list that this backend computes with the same arithmetic (the
    /// CPU emulates numerics, not kernels): this trial repeats its computation, bit for bit, so it
    /// is judged (by its own contract) but not counted as a pass of its own.
    pub same_computation_as: Option<EntryId>,
}

impl Trial {
    /// `backend/entry/case`, the name libtest-mimic and the results file use.
    pub fn name(&self) -> String {
        let what = match &self.check {
            Check::Golden { case } => case.clone(),
            Check::Boundary { shape } => format!("boundary-h{}-t{}", shape.h, shape.t),
            Check::Invariance => "invariance".into(),
        };
        format!("{}/{}/{}", self.backend.id, self.entry.name, what)
    }

    /// Why this trial cannot run here, known before running it (no GPU, no implementation).
    pub fn skip_reason(&self) -> Option<String> {
        match &self.backend.backend {
            Err(why) => Some(why.clone()),
            Ok(b) => b.supports(self.entry).err(),
        }
    }
}

/// Every trial for these backends, entries and cases, in a stable order.
pub fn list(backends: &[BackendSlot], entries: &[&'static Entry], cases: &[CaseEntry]) -> Vec<Trial> {
    let mut out = Vec::new();
    for b in backends {
        for (i, &entry) in entries.iter().enumerate() {
            let same_computation_as = same_computation(b, &entries[..i], entry);
            let trial = |check| Trial { backend: b.clone(), entry, check, same_computation_as };
            let (golden, invariance) = checks_for(entry);
            if golden {
                for c in cases {
                    out.push(trial(Check::Golden { case: c.name.clone() }));
                }
                for shape in boundary_shapes(b, entry) {
                    out.push(trial(Check::Boundary { shape }));
                }
            }
            if invariance {
                out.push(trial(Check::Invariance));
            }
        }
    }
    out
}

/// The first of the `earlier` variants the backend computes exactly as the variant `entry`
/// (variants face the same checks, so each of `entry`'s trials repeats one of its). Mutants are
/// never folded: each is judged and counted on its own.
fn same_computation(slot: &BackendSlot, earlier: &[&'static Entry], entry: &Entry) -> Option<EntryId> {
    let b = slot.backend.as_ref().ok()?;
    if entry.is_mutant() || b.supports(entry).is_err() {
        return None;
    }
    earlier.iter().find(|e| !e.is_mutant() && b.supports(e).is_ok() && b.same_results(e, entry)).map(|e| e.id)
}

/// The layers boundary trials run on: Qwen3-0.6B's, and one with twice its row length, whose
/// 32-token decode kernel keeps W in registers on a GPU (`__dec32r`). Longer rows would reach the
/// 16-token register kernel (`__dec16r`, H >= 2304 on an H200), but the contracts' inv_rms and B
/// bounds are calibrated for H <= 2048: at H = 4096 an honest fp32 sum of squares in another order
/// is 9-11 ulp from the CPU's (measured, H200), over the fixed bound of 8. Bounds that scale with
/// the reduction length come first (issue "Verdicts that generalise").
pub const BOUNDARY_DIMS: [Dims; 2] = [Dims::QWEN3_06B, Dims { h: 2048, nq: 8, nkv: 4, d: 64 }];

/// The shapes of a backend's boundary trials for `entry`: both sides of every T where it changes
/// kernel or tile, on each of [`BOUNDARY_DIMS`]. None on the CPU (it is the reference they are
/// judged against), none where the backend is unavailable.
fn boundary_shapes(slot: &BackendSlot, entry: &Entry) -> Vec<Shape> {
    let Ok(b) = &slot.backend else { return Vec::new() };
    if b.id() == BackendId::Cpu || b.supports(entry).is_err() {
        return Vec::new();
    }
    BOUNDARY_DIMS.iter().flat_map(|d| b.path_boundaries(entry, d).into_iter().map(|t| d.with_t(t))).collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// A variant met its contract, or a mutant was rejected.
    Passed,
    /// A variant broke its contract, a mutant slipped through, or the trial could not run.
    Failed(String),
    /// Not runnable here (no GPU, no implementation on this backend).
    Ignored(String),
}

/// Agreement of a GPU result with the CPU emulation of the same entry, per stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agreement {
    pub stage: Stage,
    pub bit_exact_fraction: f64,
    pub max_ulp: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialReport {
    pub name: String,
    pub backend: BackendId,
    pub entry: EntryId,
    pub mutant_of: Option<EntryId>,
    #[serde(flatten)]
    pub check: Check,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The contract's verdict on the entry (for a mutant, Fail is the wanted result).
    pub verdict: Option<Verdict>,
    pub stages: Vec<StageReport>,
    pub invariance: Option<InvarianceReport>,
    pub agreement_with_cpu: Vec<Agreement>,
    pub seconds: f64,
    /// The earlier variant whose computation this trial repeats on this backend (see
    /// [`Trial::same_computation_as`]); absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_computation_as: Option<EntryId>,
    /// How far past its contract's bounds the worst stage figure lands (`verdict::margin`): a
    /// mutant's rejection strength, a variant's headroom. Absent in files from before it was
    /// recorded, and for trials judged without stages (invariance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
}

impl TrialReport {
    /// q, k and v taken together: (bit-exact fraction, max scaled ulp, worst error ratio under the contract's truth).
    pub fn stage_c(&self) -> Option<(f64, u64, f64)> {
        let c: Vec<&StageReport> = self.stages.iter().filter(|s| Stage::C.contains(&s.stage)).collect();
        if c.is_empty() {
            return None;
        }
        let (exact, total) = c.iter().fold((0, 0), |(e, t), s| (e + s.comparison.bit_exact, t + s.comparison.elements));
        let max_ulp = c.iter().map(|s| s.comparison.max_scaled_ulp).max().unwrap_or(0);
        let ratio = c
            .iter()
            .map(|s| s.error_ratio(s.bound.map_or(fusegate_kernels::Truth::GoldenOperands, |b| b.truth)))
            .fold(0.0, f64::max);
        Some((exact as f64 / total.max(1) as f64, max_ulp, ratio))
    }
}
