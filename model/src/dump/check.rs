//! `model-check --dumps`: where does an engine's dump first leave HF?
//!
//! Two comparisons, because HF's committed goldens hold only each layer's output and the logits:
//!
//! - **Against HF's goldens directly**: the dumped layer outputs and logits, by the model gate's
//!   own metrics and the baseline entry's model contract beside HF's floor (exactly as
//!   `model-check` judges an entry). Needs every layer's output dumped.
//! - **Stage by stage against the HF-faithful CPU pass**: each dumped stage against fusegate's
//!   reference op (the `standard` path, which `model-check` shows within HF's floor) applied to
//!   the engine's *own* dumped inputs of that stage (a stage not dumped is recomputed from the
//!   nearest dumped ones, and never compared). Every stage is judged for its own op only: an
//!   upstream difference does not move a downstream figure, so the first stage out of the floor
//!   is where the engine does something HF does not.
//!
//! The stage floor is measured from HF's own runs, the only place HF's in- and outputs of a
//! stage are both recorded: per layer, the worst relative L2 between a run's output of that layer
//! and the CPU layer applied to the run's own input of it (reference and every floor run). It is
//! HF's own GPU-vs-HF-faithful-CPU noise for a whole layer, used for each stage of that layer;
//! logits likewise, at HF's top-K tokens. A stage is out of the floor beyond the baseline's
//! `max_drift_over_floor` times it.

use std::collections::BTreeMap;

use fusegate_harness::results::{Environment, SchemaName, SchemaTag};
use fusegate_kernels::registry;
use half::bf16;
use serde::{Deserialize, Serialize};

use super::Dump;
use crate::check::{Judged, Model, Regime, at_most, prompt_ids};
use crate::forward::attention::{self, Heads, KvCache};
use crate::forward::ops::{Linear, rmsnorm};
use crate::forward::tap::LayerStage;
use crate::golden::PromptRecord;
use crate::metrics::{self, Candidate, maybe_nan};

pub const SCHEMA: &str = "fusegate-dump-check-v1";

/// The dump-check format (`fusegate-dump-check-v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpCheckFormat;

impl SchemaName for DumpCheckFormat {
    const NAME: &'static str = SCHEMA;
}

pub type DumpCheckSchema = SchemaTag<DumpCheckFormat>;

/// A place in the pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "at")]
pub enum Site {
    Layer { layer: usize, stage: LayerStage },
    Logits,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::Layer { layer, stage } => write!(f, "layer {layer} {stage}"),
            Site::Logits => f.write_str("logits"),
        }
    }
}

/// What a figure was compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Against {
    /// The HF-faithful CPU op on the engine's own inputs of the stage.
    CpuOp,
    /// HF's golden (layer outputs), beside HF's floor runs.
    HfGolden,
}

/// One dumped stage's figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageFigure {
    pub site: Site,
    /// ||dump - reference|| / ||reference|| over every prompt and position (NaN: a non-finite value).
    #[serde(with = "maybe_nan")]
    pub rel_l2: f64,
    /// HF's own figure there; out of the floor beyond `DumpCheck::max_over_floor` times it.
    pub floor: f64,
    pub within: bool,
}

/// The first place the dump leaves HF.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Divergence {
    pub site: Site,
    pub against: Against,
    #[serde(with = "maybe_nan")]
    pub rel_l2: f64,
    pub floor: f64,
}

/// HF's per-stage floor (see the module doc).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalFloor {
    /// Per layer, the worst of HF's runs against the CPU layer on the run's own input.
    pub layers: Vec<f64>,
    /// The same for the logits at HF's top-K tokens.
    pub logits: f64,
}

/// The result of checking one dump, written as `fusegate-dump-check-v1` and read back as such.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DumpCheck {
    pub schema: DumpCheckSchema,
    /// Where and from which commit the check ran (the dump itself records nothing of its engine).
    pub environment: Environment,
    /// The model golden's name.
    pub model: String,
    pub regime: Regime,
    pub prompts: usize,
    pub positions: usize,
    /// The baseline's `max_drift_over_floor`: a figure beyond this multiple of its floor is out.
    pub max_over_floor: f64,
    pub floor: LocalFloor,
    /// Every dumped stage, in forward order, then the logits.
    pub stages: Vec<StageFigure>,
    /// Stages not dumped (in some or every prompt): per stage, the layers; never compared.
    pub skipped: BTreeMap<LayerStage, Vec<usize>>,
    pub logits_skipped: bool,
    /// Layer outputs and logits against HF's goldens (None: some layer's output not dumped).
    pub against_hf: Option<Judged>,
    pub first_divergence: Option<Divergence>,
}

impl DumpCheck {
    /// Nothing out of HF's floor.
    pub fn clean(&self) -> bool {
        self.first_divergence.is_none()
    }

    pub fn load(path: &std::path::Path) -> Result<DumpCheck, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a dump-check file: {e}", path.display()))
    }
}

/// A model's stage references: the q/k/v projections widened once, and HF's stage floor.
pub struct DumpReference<'m> {
    model: &'m Model,
    qkv: Vec<[Linear; 3]>,
    pub floor: LocalFloor,
}

/// (|a - b|^2, |b|^2) in f64: a NaN or infinity in `a` makes the first NaN or infinite.
fn sums(a: &[bf16], b: &[bf16]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(n, d), (x, y)| {
        let (x, y) = (x.to_f64(), y.to_f64());
        (n + (x - y) * (x - y), d + y * y)
    })
}

fn ratio((n, d): (f64, f64)) -> f64 {
    if n.is_nan() { f64::NAN } else { (n / d.max(f64::MIN_POSITIVE)).sqrt() }
}

impl<'m> DumpReference<'m> {
    /// Widens the projections and measures HF's stage floor on `model`'s golden runs.
    pub fn new(model: &'m Model) -> DumpReference<'m> {
        let c = &model.weights.config;
        let (h, q, kv) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let qkv = model
            .weights
            .layers
            .iter()
            .map(|w| [Linear::new(&w.q_proj, q, h), Linear::new(&w.k_proj, kv, h), Linear::new(&w.v_proj, kv, h)])
            .collect();
        let mut r = DumpReference { model, qkv, floor: LocalFloor { layers: Vec::new(), logits: 0.0 } };
        r.floor = r.measure_floor();
        r
    }

    fn embed(&self, ids: &[u32]) -> Vec<bf16> {
        let h = self.model.weights.config.hidden_size;
        ids.iter().flat_map(|&t| self.model.tables().embed[t as usize * h..][..h].iter().copied()).collect()
    }

    /// Layer `l` on input `h` (a whole prompt, positions from 0), each stage computed from the
    /// `dumped` value of its inputs where there is one: every stage's reference, and the output
    /// the next layer reads (the dumped one where dumped).
    fn layer(
        &self,
        l: usize,
        h: &[bf16],
        dumped: &dyn Fn(LayerStage) -> Option<Vec<bf16>>,
    ) -> (BTreeMap<LayerStage, Vec<bf16>>, Vec<bf16>) {
        let (c, w, t) = (&self.model.weights.config, &self.model.weights.layers[l], &self.model.tables().layers[l]);
        let eps = c.rms_norm_eps as f32;
        let heads = Heads { nq: c.num_attention_heads, nkv: c.num_key_value_heads, d: c.head_dim };
        let mut refs = BTreeMap::new();
        let mut resolve = |s: LayerStage, reference: Vec<bf16>| -> Vec<bf16> {
            let used = dumped(s).unwrap_or_else(|| reference.clone());
            refs.insert(s, reference);
            used
        };
        let norm = resolve(LayerStage::InputNorm, rmsnorm(h, &w.input_norm, eps));
        let [qp, kp, vp] = &self.qkv[l];
        let q = resolve(LayerStage::Q, rmsnorm(&qp.forward(&norm), &t.q_norm, eps));
        let k = resolve(LayerStage::K, rmsnorm(&kp.forward(&norm), &t.k_norm, eps));
        let v = resolve(LayerStage::V, vp.forward(&norm));
        let rotate = |x: &[bf16], heads_n: usize| {
            let mut x = x.to_vec();
            for (pos, row) in x.chunks_exact_mut(heads_n * c.head_dim).enumerate() {
                self.model.tables().rope.apply(row, pos);
            }
            x
        };
        let q_rope = resolve(LayerStage::QRope, rotate(&q, heads.nq));
        let k_rope = resolve(LayerStage::KRope, rotate(&k, heads.nkv));
        let mut cache = KvCache::default();
        cache.append(&k_rope, &v);
        let attn = resolve(LayerStage::Attention, attention::attend(&q_rope, 0, &cache, heads));
        let out = resolve(LayerStage::Output, t.finish(h, &attn, eps));
        (refs, out)
    }

    /// The final norm and lm_head of `last` ([T, H]) at HF's top-K ids of each position.
    fn topk_logits(&self, last: &[bf16], r: &PromptRecord) -> Vec<bf16> {
        let tables = self.model.tables();
        let h = self.model.weights.config.hidden_size;
        let normed = rmsnorm(last, &tables.norm, self.model.weights.config.rms_norm_eps as f32);
        let k = r.topk_ids.len() / (last.len() / h);
        normed
            .chunks_exact(h)
            .zip(r.topk_ids.chunks_exact(k))
            .flat_map(|(row, ids)| tables.lm_head.rows(row, ids))
            .collect()
    }

    /// Per layer and for the logits: the worst of HF's runs against the CPU on the run's own input.
    fn measure_floor(&self) -> LocalFloor {
        let golden = &self.model.golden;
        let n = self.model.weights.config.num_hidden_layers;
        let reference = golden.reference();
        let (mut layers, mut logits) = (vec![0.0f64; n], 0.0f64);
        for records in golden.runs.values() {
            let mut per_layer = vec![(0.0, 0.0); n];
            let mut per_logits = (0.0, 0.0);
            for ((rec, hf), prompt) in records.iter().zip(reference).zip(&golden.manifest.prompts) {
                for (l, s) in per_layer.iter_mut().enumerate() {
                    let input = if l == 0 { self.embed(&prompt.ids) } else { rec.layers[l - 1].clone() };
                    let (_, out) = self.layer(l, &input, &|_| None);
                    let (a, b) = sums(&rec.layers[l], &out);
                    (s.0, s.1) = (s.0 + a, s.1 + b);
                }
                let ours = self.topk_logits(&rec.layers[n - 1], hf);
                let (a, b) = sums(&rec.topk_logits, &ours);
                per_logits = (per_logits.0 + a, per_logits.1 + b);
            }
            layers.iter_mut().zip(&per_layer).for_each(|(f, &s)| *f = f.max(ratio(s)));
            logits = logits.max(ratio(per_logits));
        }
        LocalFloor { layers, logits }
    }

    /// Checks `dump` (one entry per golden prompt, checked by [`Dump::load`]).
    pub fn check(&self, dump: &Dump) -> DumpCheck {
        let m = self.model;
        let c = &m.weights.config;
        let n = c.num_hidden_layers;
        let factor = registry::baseline().contract().model.max_drift_over_floor;
        let dumped_everywhere = |l: usize, s: LayerStage| dump.prompts.iter().all(|p| p.stages.contains_key(&(l, s)));
        let mut skipped: BTreeMap<LayerStage, Vec<usize>> = BTreeMap::new();
        for s in LayerStage::ALL {
            let missing: Vec<usize> = (0..n).filter(|&l| !dumped_everywhere(l, s)).collect();
            if !missing.is_empty() {
                skipped.insert(s, missing);
            }
        }
        let logits_dumped = dump.prompts.iter().all(|p| p.logits.is_some());
        let mut stage_sums: BTreeMap<(usize, LayerStage), (f64, f64)> = BTreeMap::new();
        let mut logit_sums = (0.0, 0.0);
        for (p, hf) in dump.prompts.iter().zip(m.golden.reference()) {
            let mut h = self.embed(&p.ids);
            for l in 0..n {
                let dumped = |s: LayerStage| dumped_everywhere(l, s).then(|| p.stages[&(l, s)].clone());
                let (refs, out) = self.layer(l, &h, &dumped);
                for (s, reference) in refs {
                    if let Some(ours) = dumped(s) {
                        let (a, b) = sums(&ours, &reference);
                        let e = stage_sums.entry((l, s)).or_default();
                        (e.0, e.1) = (e.0 + a, e.1 + b);
                    }
                }
                h = out;
            }
            if let (true, Some(logits)) = (logits_dumped, &p.logits) {
                let v = c.vocab_size;
                let k = hf.topk_ids.len() / p.ids.len();
                let ours: Vec<bf16> = logits
                    .chunks_exact(v)
                    .zip(hf.topk_ids.chunks_exact(k))
                    .flat_map(|(row, ids)| ids.iter().map(|&i| row[i as usize]))
                    .collect();
                let (a, b) = sums(&ours, &self.topk_logits(&h, hf));
                logit_sums = (logit_sums.0 + a, logit_sums.1 + b);
            }
        }
        let figure = |site: Site, rel_l2: f64, floor: f64| StageFigure {
            site,
            rel_l2,
            floor,
            within: at_most(rel_l2, factor * floor),
        };
        let mut stages: Vec<StageFigure> = stage_sums
            .iter()
            .map(|(&(layer, stage), &s)| figure(Site::Layer { layer, stage }, ratio(s), self.floor.layers[layer]))
            .collect();
        if logits_dumped {
            stages.push(figure(Site::Logits, ratio(logit_sums), self.floor.logits));
        }
        let against_hf = (!skipped.contains_key(&LayerStage::Output)).then(|| self.against_hf(dump, logits_dumped));
        let local = stages.iter().find(|f| !f.within).map(|f| Divergence {
            site: f.site,
            against: Against::CpuOp,
            rel_l2: f.rel_l2,
            floor: f.floor,
        });
        let global = against_hf.as_ref().and_then(|j| {
            let layer = j.first_drifting_layer?;
            Some(Divergence {
                site: Site::Layer { layer, stage: LayerStage::Output },
                against: Against::HfGolden,
                rel_l2: j.figures.layers[layer].rel_l2,
                floor: m.floor.drift[layer],
            })
        });
        let hf_failed = against_hf.as_ref().is_some_and(|j| !j.verdict.passed());
        let first_divergence = local.or(global).or_else(|| {
            // Out at the output only (KL or top-1), every layer within: the logits are the site.
            hf_failed.then_some(Divergence {
                site: Site::Logits,
                against: Against::HfGolden,
                rel_l2: f64::NAN,
                floor: 0.0,
            })
        });
        let prompts = &m.golden.manifest.prompts;
        DumpCheck {
            schema: DumpCheckSchema::default(),
            environment: Environment::capture(None),
            model: m.name.clone(),
            regime: m.regime,
            prompts: prompts.len(),
            positions: prompts.iter().map(|p| p.ids.len()).sum(),
            max_over_floor: factor,
            floor: self.floor.clone(),
            stages,
            skipped,
            logits_skipped: !logits_dumped,
            against_hf,
            first_divergence,
        }
    }

    /// The dumped layer outputs (and logits) judged as `model-check` judges an entry.
    fn against_hf(&self, dump: &Dump, logits: bool) -> Judged {
        let m = self.model;
        let n = m.weights.config.num_hidden_layers;
        let layers: Vec<Vec<Vec<bf16>>> =
            dump.prompts.iter().map(|p| (0..n).map(|l| p.stages[&(l, LayerStage::Output)].clone()).collect()).collect();
        let candidates: Vec<Candidate> = dump
            .prompts
            .iter()
            .zip(&layers)
            .map(|(p, layers)| Candidate::Pass {
                layers,
                logits: if logits { p.logits.as_deref().unwrap_or_default() } else { &[] },
            })
            .collect();
        let prompts = prompt_ids(&m.golden);
        let figures = metrics::figures(m.golden.reference(), &candidates, &prompts, None, m.weights.config.hidden_size);
        let (verdict, first_drifting_layer) = m.verdict(&figures, &registry::baseline().contract().model);
        Judged { figures, verdict, first_drifting_layer, boundaries: Vec::new() }
    }
}

/// The table `model-check --dumps` prints.
pub fn table(d: &DumpCheck) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dump against {} ({} prompts, {} positions; stage bound: {}x HF's own floor of that layer)",
        d.model, d.prompts, d.positions, d.max_over_floor
    );
    let _ = writeln!(s, "{:<42} {:>11} {:>11}", "stage (vs CPU op on the dump's own inputs)", "rel L2", "HF floor");
    for f in &d.stages {
        let mark = if f.within { "within" } else { "OUT" };
        let _ = writeln!(s, "{:<42} {:>11.3e} {:>11.3e}  {mark}", f.site.to_string(), f.rel_l2, f.floor);
    }
    for (stage, layers) in &d.skipped {
        let _ = writeln!(s, "skipped (not dumped): {stage} at layers {layers:?}");
    }
    if d.logits_skipped {
        let _ = writeln!(s, "skipped (not dumped): logits");
    }
    match &d.against_hf {
        Some(j) => {
            let drift: Vec<String> = j.figures.layers.iter().map(|l| format!("{:.2e}", l.rel_l2)).collect();
            let word = if j.verdict.passed() { "within HF's floor" } else { "OUTSIDE HF's floor" };
            let _ = writeln!(s, "layer outputs against HF's golden: drift [{}]: {word}", drift.join(", "));
            if let Some(o) = &j.figures.output {
                let _ = writeln!(
                    s,
                    "logits against HF's golden: mean KL {:.2e}, same top-1 {:.1}%",
                    o.mean_kl, o.same_top1_pct
                );
            }
            if let fusegate_harness::Verdict::Fail { reasons } = &j.verdict {
                for r in reasons {
                    let _ = writeln!(s, "  {r}");
                }
            }
        }
        None => {
            let _ = writeln!(s, "against HF's golden: skipped (not every layer's output is dumped)");
        }
    }
    match &d.first_divergence {
        None => {
            let _ = writeln!(s, "first divergence: none (every dumped stage within HF's floor)");
        }
        Some(v) => {
            let against = match v.against {
                Against::CpuOp => "the HF-faithful CPU op on the dump's own inputs",
                Against::HfGolden => "HF's golden",
            };
            let _ = writeln!(
                s,
                "first divergence: {} (rel L2 {:.3e}, HF floor {:.3e}, against {against})",
                v.site, v.rel_l2, v.floor
            );
        }
    }
    s
}
