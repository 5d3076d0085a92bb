//! The parts of the GPU model gate that do not need a GPU, on the committed stable 4-layer model:
//! boundary prefills (driven here by a backend that reports switch points, as the CUDA backend
//! does) pass an honest variant and reject a mutant at the right lengths; a pass recorded as a
//! reference measures another pass as the gate measures against HF (zero against itself, the
//! sub-floor and injected controls in order).

use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::op::Dims;
use fusegate_kernels::{Backend, BackendError, BackendId, Entry, EntryId, Layer, PreparedOp, registry};
use fusegate_model::boundaries;
use fusegate_model::check::Model;
use fusegate_model::controls::{CONTROLS, Perturb};
use fusegate_model::forward::Logits;
use fusegate_model::forward::tap::Untouched;
use fusegate_model::gate::default_golden_root;
use fusegate_model::metrics::{self, Candidate};

/// The CPU backend, claiming to switch paths at T = 6 | 7 and 9 | 10 for every entry.
struct Switching;

const SWITCHES: [usize; 4] = [6, 7, 9, 10];

impl Backend for Switching {
    fn id(&self) -> BackendId {
        Cpu.id()
    }
    fn supports(&self, entry: &Entry) -> Result<(), String> {
        Cpu.supports(entry)
    }
    fn prepare(&self, entry: &'static Entry, layer: Layer<'_>) -> Result<Box<dyn PreparedOp + '_>, BackendError> {
        Cpu.prepare(entry, layer)
    }
    fn path_boundaries(&self, _entry: &Entry, _dims: &Dims) -> Vec<usize> {
        SWITCHES.to_vec()
    }
}

fn stable_model() -> Model {
    Model::load(&default_golden_root().join("stable-l4"), None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn boundary_prefills_pass_an_honest_variant_and_reject_a_mutant_at_every_length() {
    let model = stable_model();
    assert!(boundaries::lengths(&Switching, registry::baseline(), &model).is_empty(), "the baseline is the reference");
    assert!(boundaries::lengths(&Cpu, EntryId::Mixed.entry(), &model).is_empty(), "the CPU never switches");
    assert_eq!(boundaries::longest(&Switching, &model), 10);

    let honest = boundaries::check(&model, &Switching, EntryId::Exact.entry()).unwrap();
    assert_eq!(honest.iter().map(|b| b.t).collect::<Vec<_>>(), SWITCHES);
    // On the CPU, exact computes standard's bits: no drift at all.
    assert!(honest.iter().all(|b| b.passed && b.worst_over_floor == 0.0), "{honest:?}");

    let skip = boundaries::check(&model, &Switching, EntryId::MutantSkipWeight.entry()).unwrap();
    assert!(skip.iter().all(|b| !b.passed && b.worst_over_floor > 10.0), "{skip:?}");
    let unwritten = boundaries::check(&model, &Switching, EntryId::MutantUnwritten.entry()).unwrap();
    assert!(unwritten.iter().all(|b| !b.passed && b.worst_over_floor.is_nan()), "NaN fails: {unwritten:?}");

    // Through judge_entry, a failed length fails the verdict and names the length.
    let judged = model.judge_entry(&Switching, EntryId::MutantSkipWeight.entry()).unwrap();
    let reasons = format!("{:?}", judged.verdict);
    assert!(reasons.contains("boundary prefills") && reasons.contains("T = 6"), "{reasons}");
    let judged = model.judge_entry(&Switching, EntryId::Exact.entry()).unwrap();
    assert!(judged.verdict.passed() && judged.boundaries.len() == SWITCHES.len());
}

#[test]
fn a_recorded_pass_measures_others_as_the_gate_measures_against_hf() {
    let model = stable_model();
    let ids: Vec<Vec<u32>> = model.golden.manifest.prompts.iter().map(|p| p.ids.clone()).collect();
    let k = model.golden.manifest.topk;
    let h = model.weights.config.hidden_size;
    let records = model.host_records(&Cpu, registry::baseline()).unwrap();
    assert_eq!(records.len(), ids.len());
    for (r, p) in records.iter().zip(&ids) {
        assert_eq!((r.argmax.len(), r.topk_ids.len(), r.next_logit.len()), (p.len(), p.len() * k, p.len() - 1));
        // Top-K ids are distinct, led by the argmax, logits in descending order.
        for (t, top) in r.topk_ids.chunks_exact(k).enumerate() {
            assert_eq!(top[0], r.argmax[t]);
            let logits = &r.topk_logits[t * k..(t + 1) * k];
            assert!(logits.windows(2).all(|w| w[0] >= w[1]));
        }
    }
    // Against itself: nothing.
    let same = model.agreement(&Cpu, registry::baseline(), &records).unwrap();
    assert!(same.layers.iter().all(|d| d.rel_l2 == 0.0));
    let out = same.output.as_ref().expect("a stable model's logits are compared");
    // Not exactly 0: the record keeps logsumexp in fp32, as HF's goldens do.
    assert!(out.same_top1_pct == 100.0 && out.mean_kl.abs() < 1e-6, "{out:?}");

    // The controls, measured against the recorded pass: the injected error (layer 1) drifts more
    // than the sub-floor flips, and only from layer 1 on.
    let measure = |i: usize| {
        let mut pass = model.pass(&Cpu, registry::baseline()).unwrap();
        let mut tap = Perturb::new(CONTROLS[i].perturbation);
        let outs: Vec<_> = ids.iter().map(|p| pass.teacher_forced(p, Logits::Every, &mut tap).unwrap()).collect();
        let c: Vec<Candidate> = outs.iter().map(|o| Candidate::Pass { layers: &o.layers, logits: &o.logits }).collect();
        metrics::figures(&records, &c, &ids, None, h)
    };
    let (injected, sub_floor) = (measure(0), measure(1));
    assert_eq!(injected.layers[0].rel_l2, 0.0, "layer 0 is before the injection");
    assert!(injected.layers[1].rel_l2 > 2.0 * sub_floor.layers[1].rel_l2, "{injected:?} vs {sub_floor:?}");
    assert!(sub_floor.layers.iter().all(|d| d.rel_l2 > 0.0));
    let untouched = {
        let mut pass = model.pass(&Cpu, registry::baseline()).unwrap();
        pass.teacher_forced(&ids[0], Logits::None, &mut Untouched).unwrap()
    };
    assert_eq!(metrics::layer_drift(&untouched.layers, &records[0].layers, h), vec![0.0; untouched.layers.len()]);
}
