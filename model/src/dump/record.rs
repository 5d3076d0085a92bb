//! Fusegate's own dump: the forward pass with a recorder at every stage (and, for the controls,
//! an [`EngineFault`] planted before it), written in the dump format like any engine's.

use std::collections::BTreeMap;

use fusegate_kernels::{Backend, Entry, Observed};
use half::bf16;

use super::faults::{EngineFault, FaultTap};
use super::{Dump, PromptDump};
use crate::Qwen3Weights;
use crate::forward::tap::{LayerStage, Tap};
use crate::forward::{Forward, ForwardPass, Logits, ModelTables, PassError};

/// How the engine steps through a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMode {
    /// The whole prompt in one call.
    Prefill,
    /// One token at a time through the KV cache.
    Decode,
}

/// Records every stage it sees (after the fault, if any, changed it), concatenating steps.
struct Recorder<'a> {
    fault: Option<FaultTap<'a>>,
    stages: BTreeMap<(usize, LayerStage), Vec<bf16>>,
}

impl Tap for Recorder<'_> {
    fn qkv(&mut self, layer: usize, observed: &mut Observed) {
        if let Some(f) = &mut self.fault {
            f.qkv(layer, observed);
        }
    }

    fn stage(&mut self, layer: usize, stage: LayerStage, first_pos: usize, values: &mut Vec<bf16>) {
        if let Some(f) = &mut self.fault {
            f.stage(layer, stage, first_pos, values);
        }
        self.stages.entry((layer, stage)).or_default().extend_from_slice(values);
    }

    fn cache_write(&mut self, layer: usize, first_pos: usize, k: &mut Vec<bf16>, v: &mut Vec<bf16>) {
        if let Some(f) = &mut self.fault {
            f.cache_write(layer, first_pos, k, v);
        }
    }
}

/// How to record a dump.
#[derive(Clone, Copy, Debug)]
pub struct Recording<'a> {
    pub mode: StepMode,
    /// Planted before the recorder (none: an honest engine).
    pub fault: Option<&'a EngineFault>,
    /// Record the logits ([T, V] per prompt).
    pub logits: bool,
}

/// The dump of `entry`'s pass over `prompts` (token ids) on `backend`, as `how` says.
pub fn record(
    tables: &ModelTables,
    weights: &Qwen3Weights,
    backend: &dyn Backend,
    entry: &'static Entry,
    prompts: &[Vec<u32>],
    how: Recording,
) -> Result<Dump, PassError> {
    let Recording { mode, fault, logits } = how;
    let mut pass = Forward::new(tables, weights, backend, entry)?;
    let which = if logits { Logits::Every } else { Logits::None };
    let mut out = Vec::with_capacity(prompts.len());
    for ids in prompts {
        let mut rec = Recorder { fault: fault.map(|f| FaultTap::new(f, weights)), stages: BTreeMap::new() };
        pass.reset();
        let mut all_logits = Vec::new();
        match mode {
            StepMode::Prefill => all_logits = pass.step(ids, which, &mut rec)?.logits,
            StepMode::Decode => {
                for &id in ids {
                    all_logits.extend(pass.step(&[id], which, &mut rec)?.logits);
                }
            }
        }
        out.push(PromptDump { ids: ids.clone(), stages: rec.stages, logits: logits.then_some(all_logits) });
    }
    Ok(Dump { prompts: out })
}
