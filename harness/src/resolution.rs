//! Resolution: the smallest defect each variant's contract rejects, measured on every golden case.
//!
//! A defect of adjustable size is spliced into an honest run: one output in `every` of each of
//! q, k and v (from the first, so at least one per tensor) takes the defective value, every
//! other output (and every intermediate stage the backend observed) stays the variant's own. The
//! variant's contract judges the result. Sizes come from a ladder `every` = 1, 2, 4, ... up to one
//! output per tensor; the outputs of `2 * every` are a subset of those of `every`, so a contract
//! that rejects a size rejects every larger one and the finest size rejected is found by
//! bisection. On a GPU the honest outputs are the GPU's; the defective values come from the CPU
//! emulation of the defect's arithmetic on the same inputs (a bias and an unwritten output need
//! none), so the table reads the gate's resolution against that backend's own noise.

use crate::suite::{Reference, Suite, add_head_norms};
use crate::verdict::{self, Verdict};
use fusegate_kernels::registry::{EntryId, NormRounding};
use fusegate_kernels::{Backend, BackendId, Contract, Observed, Stage, StageData, cpu, run_once};
use half::bf16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A kind of defect, of adjustable size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Defect {
    /// +1 ulp (toward +inf): a bias no tolerance check sees.
    Bias,
    /// The output is never written (it keeps the NaN poison).
    Unwritten,
    /// The norm rounds once, after the weight multiply (FlashInfer / TensorRT-LLM style).
    RoundOnce,
    /// The norm forgets its weight.
    SkipWeight,
    /// The GEMM accumulates in bf16.
    Bf16Accumulate,
    /// HF's two bf16 roundings: a defect only for a variant that promises fp32 throughout.
    HfNumerics,
}

impl Defect {
    pub const ALL: [Defect; 6] = [
        Defect::Bias,
        Defect::Unwritten,
        Defect::RoundOnce,
        Defect::SkipWeight,
        Defect::Bf16Accumulate,
        Defect::HfNumerics,
    ];

    /// The registry entry whose arithmetic (on the CPU emulation) gives the defective values.
    fn source(self) -> Option<EntryId> {
        match self {
            Defect::Bias | Defect::Unwritten => None,
            Defect::RoundOnce => Some(EntryId::MutantRoundOnce),
            Defect::SkipWeight => Some(EntryId::MutantSkipWeight),
            Defect::Bf16Accumulate => Some(EntryId::MutantBf16Accumulate),
            Defect::HfNumerics => Some(EntryId::Standard),
        }
    }

    /// Whether the defect's arithmetic differs from `variant`'s own (HF's numerics are the
    /// HF-faithful variants' contract, not a defect of theirs).
    pub fn applies_to(self, variant: EntryId) -> bool {
        self != Defect::HfNumerics || variant.entry().numerics.norm != NormRounding::HfTwoRoundings
    }

    pub fn name(self) -> &'static str {
        match self {
            Defect::Bias => "bias +1 ulp",
            Defect::Unwritten => "unwritten",
            Defect::RoundOnce => "round-once",
            Defect::SkipWeight => "skip-weight",
            Defect::Bf16Accumulate => "bf16-accumulate",
            Defect::HfNumerics => "hf-numerics",
        }
    }

    /// The defective value of output `i` of a tensor whose honest value is `honest`.
    fn value(self, honest: bf16, source: Option<bf16>) -> bf16 {
        match self {
            Defect::Bias => cpu::next_up(honest),
            Defect::Unwritten => bf16::NAN,
            _ => source.unwrap_or(bf16::NAN),
        }
    }
}

/// The finest size of one defect a contract rejects on one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResolution {
    pub case: String,
    /// q, k and v outputs of the case.
    pub outputs: usize,
    /// The largest `every` rejected (the defect in one output in `every` of each tensor), with
    /// every smaller one; `None` when even every output carrying it is accepted.
    pub finest_every: Option<usize>,
    /// Outputs carrying the defect at that size.
    pub defective_outputs: usize,
    /// Of those, the ones whose value differs from the honest run's (a defect's arithmetic often
    /// gives the honest bits: round-once on a tiny row).
    pub differing_outputs: usize,
    /// Outputs that differ at the next smaller size (`2 * finest_every`), the first one
    /// accepted: 0 means that defect changes no bit there, so no gate could see it.
    pub differing_when_accepted: Option<usize>,
    /// Whether the finest size is one output per tensor: nothing smaller exists.
    pub down_to_one_per_tensor: bool,
}

/// One (variant's contract, defect) row: per case, and on every case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub variant: EntryId,
    pub defect: Defect,
    pub cases: Vec<CaseResolution>,
}

impl Row {
    /// The smallest fraction rejected on every case, as `every` (one output in `every`):
    /// the coarsest of the cases' finest sizes; `None` where some case accepts the whole defect.
    pub fn every_case(&self) -> Option<usize> {
        self.cases.iter().map(|c| c.finest_every).collect::<Option<Vec<_>>>()?.into_iter().min()
    }
    /// The case that sets [`Row::every_case`].
    pub fn weakest_case(&self) -> Option<&CaseResolution> {
        self.cases.iter().min_by_key(|c| c.finest_every.unwrap_or(0))
    }
}

/// `tensor` with one output in `every` (from the first) made defective.
fn splice_tensor(honest: &[bf16], source: Option<&[bf16]>, defect: Defect, every: usize) -> Vec<bf16> {
    let mut out = honest.to_vec();
    for i in (0..out.len()).step_by(every.max(1)) {
        out[i] = defect.value(honest[i], source.map(|s| s[i]));
    }
    out
}

/// The honest run with the defect in one output in `every` of q, k and v (head norms recomputed).
fn splice(honest: &Observed, source: Option<&Observed>, defect: Defect, every: usize, r: &Reference) -> Observed {
    let mut out: Observed = honest
        .iter()
        .filter(|(s, _)| !matches!(s, Stage::QNormed | Stage::KNormed))
        .map(|(s, d)| (*s, d.clone()))
        .collect();
    for stage in Stage::C {
        let (Some(StageData::Bf16(h)), src) = (honest.get(&stage), source.and_then(|s| s.get(&stage))) else {
            continue;
        };
        let src = src.and_then(StageData::as_bf16);
        out.insert(stage, StageData::Bf16(splice_tensor(h, src, defect, every)));
    }
    add_head_norms(&mut out, &r.shape, r.eps, &r.weights);
    out
}

/// The earlier variant of `variants` that `backend` computes exactly as `v` (measured under its name).
pub fn same_as(backend: &dyn Backend, variants: &[EntryId], v: EntryId) -> Option<EntryId> {
    let at = variants.iter().position(|u| *u == v)?;
    variants[..at].iter().copied().find(|u| backend.same_results(u.entry(), v.entry()))
}

/// The largest `every` worth trying: one output per tensor of the largest tensor.
fn coarsest(outputs_per_tensor: usize) -> usize {
    outputs_per_tensor.max(1).next_power_of_two()
}

/// The defective values of each defect with arithmetic of its own ([`Defect::source`]) on one
/// case: the CPU emulation of the defect's entry, computed once per case for every variant.
type Sources = HashMap<Defect, Observed>;

/// An honest run of a variant on a case, the reference it is judged against and the case's
/// defective values.
struct Honest {
    variant: EntryId,
    case: String,
    observed: Observed,
    reference: Arc<Reference>,
    sources: Arc<Sources>,
}

/// One defect on one honest run, at any size.
struct Probe<'a> {
    honest: &'a Honest,
    defect: Defect,
    contract: Contract,
}

impl<'a> Probe<'a> {
    fn new(honest: &'a Honest, defect: Defect) -> Probe<'a> {
        Probe { honest, defect, contract: honest.variant.entry().contract() }
    }

    /// The honest run with the defect in one output in `every`.
    fn spliced(&self, every: usize) -> Observed {
        let h = self.honest;
        splice(&h.observed, h.sources.get(&self.defect), self.defect, every, &h.reference)
    }

    /// Whether the variant's contract rejects the defect at this size.
    fn rejects(&self, every: usize) -> bool {
        let r = self.honest.reference.as_ref();
        let verdict = verdict::evaluate(&self.contract, &self.spliced(every), &r.reference, &r.truths, &r.inputs()).0;
        matches!(verdict, Verdict::Fail { .. })
    }

    /// q, k and v outputs whose bits the defect changed at this size.
    fn differing(&self, every: usize) -> usize {
        let (spliced, honest) = (self.spliced(every), &self.honest.observed);
        Stage::C
            .iter()
            .filter_map(|s| Some((spliced.get(s)?.as_bf16()?, honest.get(s)?.as_bf16()?)))
            .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count())
            .sum()
    }
}

/// Measures one defect on one honest run: bisection over the ladder of sizes.
fn on_case(h: &Honest, defect: Defect) -> CaseResolution {
    let probe = Probe::new(h, defect);
    let lens: Vec<usize> = Stage::C.iter().map(|s| s.len(&h.reference.shape)).collect();
    let outputs: usize = lens.iter().sum();
    let defective = |every: usize| lens.iter().map(|n| n.div_ceil(every)).sum();
    let top = coarsest(lens.iter().copied().max().unwrap_or(1));
    let finest = if !probe.rejects(1) {
        None
    } else if probe.rejects(top) {
        Some(top)
    } else {
        // Exponents: rejects(2^lo), not rejects(2^hi).
        let (mut lo, mut hi) = (0u32, top.trailing_zeros());
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if probe.rejects(1 << mid) { lo = mid } else { hi = mid }
        }
        Some(1 << lo)
    };
    CaseResolution {
        case: h.case.clone(),
        outputs,
        finest_every: finest,
        defective_outputs: finest.map_or(outputs, defective),
        differing_outputs: probe.differing(finest.unwrap_or(1)),
        differing_when_accepted: finest.filter(|&f| f < top).map(|f| probe.differing(2 * f)),
        down_to_one_per_tensor: finest == Some(top),
    }
}

/// Each defect's own values on a case (see [`Sources`]).
fn sources(reference: &Reference) -> Sources {
    let inputs = reference.inputs();
    Defect::ALL.into_iter().filter_map(|d| Some((d, cpu::run_entry(d.source()?.entry(), &inputs)))).collect()
}

/// Every (variant, defect) row over the cases named, on one backend. Variants the backend computes
/// exactly as an earlier one (the CPU's mixed and exact are standard's emulation) are measured once,
/// under the first's name.
pub fn measure(
    backend: &dyn Backend,
    suite: &Suite,
    variants: &[EntryId],
    cases: &[String],
) -> Result<Vec<Row>, String> {
    let distinct: Vec<EntryId> =
        variants.iter().copied().filter(|v| same_as(backend, variants, *v).is_none()).collect();
    // Each case's defective values, once for every variant.
    let references = cases.iter().map(|c| suite.prepared(c)).collect::<Result<Vec<_>, _>>()?;
    let per_case: Vec<Arc<Sources>> = references.par_iter().map(|r| Arc::new(sources(r))).collect();
    // The honest runs, one per (variant, case): on a GPU one launch at a time.
    let mut honest = Vec::new();
    for &variant in &distinct {
        for ((case, reference), sources) in cases.iter().zip(&references).zip(&per_case) {
            let observed = run_once(backend, variant.entry(), &reference.inputs())
                .map_err(|e| format!("{case}: {variant}: {e}"))?;
            let (reference, sources) = (reference.clone(), sources.clone());
            honest.push(Honest { variant, case: case.clone(), observed, reference, sources });
        }
    }
    // The judging is host work, in parallel.
    let jobs: Vec<(usize, Defect)> = (0..honest.len())
        .flat_map(|i| Defect::ALL.into_iter().map(move |d| (i, d)))
        .filter(|(i, d)| d.applies_to(honest[*i].variant))
        .collect();
    let measured: Vec<CaseResolution> = jobs.par_iter().map(|&(i, d)| on_case(&honest[i], d)).collect();
    let mut rows: Vec<Row> = Vec::new();
    for ((i, defect), m) in jobs.into_iter().zip(measured) {
        let variant = honest[i].variant;
        match rows.iter_mut().find(|r| r.variant == variant && r.defect == defect) {
            Some(row) => row.cases.push(m),
            None => rows.push(Row { variant, defect, cases: vec![m] }),
        }
    }
    Ok(rows)
}

/// A row's resolution over every case.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    /// Rejected at every size on every case, down to one output per tensor.
    EverySize,
    /// Rejected on every case from one output in `every` up (the case that sets it).
    OneIn { every: usize, case: CaseResolution },
    /// Accepted on this case even with every output defective.
    Never { case: String },
}

impl Row {
    /// The smallest fraction rejected on every case: the coarsest of the cases' finest sizes,
    /// where a case rejected down to one output per tensor sets no limit.
    pub fn resolved(&self) -> Resolved {
        if let Some(c) = self.cases.iter().find(|c| c.finest_every.is_none()) {
            return Resolved::Never { case: c.case.clone() };
        }
        self.cases
            .iter()
            .filter(|c| !c.down_to_one_per_tensor)
            .filter_map(|c| Some((c.finest_every?, c)))
            .min_by_key(|(every, _)| *every)
            .map_or(Resolved::EverySize, |(every, c)| Resolved::OneIn { every, case: c.clone() })
    }
}

impl std::fmt::Display for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolved::EverySize => f.write_str("every size (1 output per tensor)"),
            Resolved::OneIn { every, case: c } => {
                write!(f, "1 in {every} ({}: {} of {} outputs differ", c.case, c.differing_outputs, c.outputs)?;
                match c.differing_when_accepted {
                    Some(0) => write!(f, "; at 1 in {} none differ)", 2 * every),
                    Some(n) => write!(f, "; 1 in {} accepted, {n} differ)", 2 * every),
                    None => f.write_str(")"),
                }
            }
            Resolved::Never { case } => write!(f, "not rejected ({case})"),
        }
    }
}

/// The resolution results format (`fusegate-resolution-v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolutionFormat;

impl crate::results::SchemaName for ResolutionFormat {
    const NAME: &'static str = "fusegate-resolution-v1";
}

/// One backend's measured resolution: written by `cargo xtask resolution`, read back the same way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolutionRun {
    pub schema: crate::results::SchemaTag<ResolutionFormat>,
    pub backend: BackendId,
    pub environment: crate::results::Environment,
    pub golden: fusegate_golden::Provenance,
    /// Variants measured under another's name: (variant, the one it computes exactly as).
    pub same_as: Vec<(EntryId, EntryId)>,
    pub rows: Vec<Row>,
}

impl ResolutionRun {
    /// A markdown table: a row per defect, a column per variant's contract.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut variants: Vec<EntryId> = Vec::new();
        for r in &self.rows {
            if !variants.contains(&r.variant) {
                variants.push(r.variant);
            }
        }
        let mut out = String::new();
        let header: Vec<String> = variants
            .iter()
            .map(|v| {
                let same: Vec<&str> = self.same_as.iter().filter(|(_, of)| of == v).map(|(s, _)| s.name()).collect();
                std::iter::once(v.name()).chain(same).collect::<Vec<_>>().join(" = ")
            })
            .collect();
        let _ = writeln!(out, "| defect ({}) | {} |", self.backend, header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(variants.len()));
        for defect in Defect::ALL {
            let cells: Vec<String> = variants
                .iter()
                .map(|v| {
                    self.rows
                        .iter()
                        .find(|r| r.variant == *v && r.defect == defect)
                        .map_or("n/a".into(), |r| r.resolved().to_string())
                })
                .collect();
            if cells.iter().any(|c| c != "n/a") {
                let _ = writeln!(out, "| {} | {} |", defect.name(), cells.join(" | "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusegate_golden::Manifest;
    use fusegate_kernels::cpu::Cpu;

    fn honest(suite: &Suite, variant: EntryId, case: &str) -> Honest {
        let reference = suite.prepared(case).expect("committed golden");
        let observed = run_once(&Cpu, variant.entry(), &reference.inputs()).unwrap();
        let sources = Arc::new(sources(&reference));
        Honest { variant, case: case.into(), observed, reference, sources }
    }

    #[test]
    fn a_defect_lands_on_one_output_in_every_from_the_first_and_nowhere_else() {
        let honest: Vec<bf16> = (1..=10).map(|i| bf16::from_f32(i as f32)).collect();
        let out = splice_tensor(&honest, None, Defect::Bias, 4);
        let changed: Vec<usize> = (0..10).filter(|&i| out[i] != honest[i]).collect();
        assert_eq!(changed, [0, 4, 8]);
        assert!(out[4] > honest[4] && out[4] == cpu::next_up(honest[4]));
        assert!(splice_tensor(&honest, None, Defect::Unwritten, 16)[0].is_nan());
        assert_eq!(coarsest(1000), 1024);
    }

    /// The bisection finds what trying every size finds (the sizes nest, so rejection is monotone).
    #[test]
    fn bisection_agrees_with_trying_every_size() {
        let suite = Suite::new(Manifest::load_default().expect("committed goldens"), 1);
        for variant in [EntryId::Mixed, EntryId::F32] {
            let h = honest(&suite, variant, "tiny-h8-t7");
            for defect in Defect::ALL.into_iter().filter(|d| d.applies_to(variant)) {
                let found = on_case(&h, defect);
                let probe = Probe::new(&h, defect);
                let rejects = |every: usize| probe.rejects(every);
                let ladder: Vec<usize> = (0..=coarsest(56).trailing_zeros()).map(|k| 1 << k).collect();
                let brute = ladder.iter().copied().take_while(|&e| rejects(e)).last();
                assert_eq!(found.finest_every, brute, "{variant} {defect:?}");
                assert!(
                    ladder.iter().skip_while(|&&e| rejects(e)).all(|&e| !rejects(e)),
                    "{variant} {defect:?}: not monotone"
                );
            }
        }
    }

    /// The bar: a +1 ulp bias on one output in 1024 is rejected by the HF-faithful
    /// contract on every case, and every defect is rejected at some size by every contract.
    #[test]
    fn the_hf_contract_rejects_a_bias_on_one_output_in_1024_and_every_contract_rejects_every_defect() {
        let suite = Suite::new(Manifest::load_default().expect("committed goldens"), 1);
        let cases: Vec<String> =
            ["qwen3-typical-t5", "qwen3-extreme-t1", "tiny-h8-t7", "small-h64-t3", "range-h256-t8", "long-h8192-t4"]
                .map(String::from)
                .to_vec();
        let rows = measure(&Cpu, &suite, &[EntryId::Standard, EntryId::Mixed, EntryId::F32], &cases).unwrap();
        // Mixed is standard's computation on the CPU: measured once.
        assert!(rows.iter().all(|r| r.variant != EntryId::Mixed));
        let row = |v, d| rows.iter().find(|r| r.variant == v && r.defect == d).expect("row");
        match row(EntryId::Standard, Defect::Bias).resolved() {
            Resolved::EverySize => {}
            Resolved::OneIn { every, case } => {
                assert!(every >= 1024, "bias rejected only from 1 in {every} ({})", case.case)
            }
            other => panic!("bias: {other}"),
        }
        for r in &rows {
            assert!(!matches!(r.resolved(), Resolved::Never { .. }), "{} {:?}: {}", r.variant, r.defect, r.resolved());
        }
        assert_eq!(row(EntryId::F32, Defect::Unwritten).resolved(), Resolved::EverySize);
        assert_eq!(row(EntryId::Standard, Defect::Unwritten).resolved(), Resolved::EverySize);
    }
}
