//! End-to-end time of a Qwen3-0.6B-shaped model (synthetic weights, 28 layers by default) per
//! variant: one greedy decode step (T = 1) at several KV-cache lengths and one prefill, each the
//! whole forward pass (the model gate's device pass: the variant's own launches in every layer)
//! captured in one CUDA graph and timed by CUDA events around single replays, serial and chained
//! where the variant chains. The figure a user deciding to ship needs: the share of a decode step
//! that the fused op saves against the standard path, timed the same way in the same run.
//!
//! A step reads every weight once (1.1 GB at 28 layers): L2 holds none of it across replays, so
//! every sample is cold; a sample below the weights' read time at the measured copy bandwidth is
//! a measurement error and fails the run.

use fusegate_harness::results::{Environment, SchemaName, SchemaTag};
use fusegate_kernels::cuda::{Cuda, Launch};
use fusegate_kernels::registry::{self, CudaImpl, Role};
use fusegate_kernels::synth::Rng;
use fusegate_kernels::{BackendError, Entry, EntryId};
use fusegate_model::forward::device::{DeviceForward, DeviceTables};
use fusegate_model::forward::tap::Untouched;
use fusegate_model::forward::{ForwardPass, Logits};
use fusegate_model::{Qwen3Config, SynthStyle, synthesize};
use serde::{Deserialize, Serialize};

use crate::gpu::{Timer, capture_with};
use crate::roofline::Ceilings;
use crate::stats::Estimate;

type Result<T> = std::result::Result<T, BackendError>;

pub const SCHEMA: &str = "fusegate-e2e-v1";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E2eFormat;

impl SchemaName for E2eFormat {
    const NAME: &'static str = SCHEMA;
}

/// What one measurement ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// One token through every layer and lm_head, with `cache` positions already in the KV cache.
    Decode { cache: usize },
    /// `tokens` positions from an empty cache, logits of the last one.
    Prefill { tokens: usize },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Decode { cache } => write!(f, "decode, KV cache {cache}"),
            Phase::Prefill { tokens } => write!(f, "prefill T = {tokens}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2eRow {
    pub entry: EntryId,
    pub launch: Launch,
    #[serde(flatten)]
    pub phase: Phase,
    /// Device time of one whole step, microseconds.
    pub time_us: Estimate,
    /// (standard's median - this median) / standard's median, in percent, at the same phase and
    /// launch (standard serial where this launch is chained).
    pub saved_vs_standard_pct: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2eRun {
    pub schema: SchemaTag<E2eFormat>,
    pub environment: Environment,
    pub layers: usize,
    pub seed: u64,
    /// Bytes of weights one step reads at least once.
    pub weight_bytes: f64,
    /// Their read time at the measured copy bandwidth: no step can be faster.
    pub floor_us: f64,
    pub rows: Vec<E2eRow>,
    pub seconds: f64,
}

impl E2eRun {
    pub fn load(path: &std::path::Path) -> std::result::Result<E2eRun, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not an end-to-end results file: {e}", path.display()))
    }
}

pub struct Options {
    pub layers: usize,
    pub seed: u64,
    pub caches: Vec<usize>,
    pub prefill: usize,
    /// Samples (single replays) per decode measurement; prefill takes a quarter.
    pub samples: usize,
    pub entries: Vec<&'static Entry>,
}

/// The variants timed by default: every one with a CUDA implementation.
pub fn default_entries() -> Vec<&'static Entry> {
    registry::all().iter().filter(|e| matches!(e.role, Role::Variant) && e.cuda != CudaImpl::None).collect()
}

/// Bytes of weights a step reads: every projection, every norm, the embedding rows aside.
pub fn weight_bytes(c: &Qwen3Config) -> f64 {
    let (h, i, q, kv) =
        (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let layer = (q + 2 * kv) * h + h * q + 3 * i * h + 2 * h + 2 * c.head_dim;
    2.0 * (c.num_hidden_layers * layer + c.vocab_size * h + h) as f64
}

/// Runs every (entry, launch, phase) measurement.
pub fn run(cuda: &Cuda, ceilings: &Ceilings, o: &Options, progress: &dyn Fn(&str)) -> Result<E2eRun> {
    let start = std::time::Instant::now();
    let config = Qwen3Config::qwen3_06b(o.layers);
    let weights = synthesize(&config, o.seed, SynthStyle::Stable);
    let longest = o.caches.iter().max().copied().unwrap_or(0).max(o.prefill) + 1;
    let tables = DeviceTables::upload(cuda, &weights, longest)?;
    let bytes = weight_bytes(&config);
    let floor_us = bytes / ceilings.bandwidth * 1e6;
    progress(&format!(
        "{} layers uploaded; a step reads {:.2} GB of weights: floor {floor_us:.1} us",
        o.layers,
        bytes / 1e9
    ));
    let mut rng = Rng::new(o.seed ^ 0xe2e);
    let tokens: Vec<u32> = (0..longest).map(|_| (rng.next_u64() % config.vocab_size as u64) as u32).collect();
    let mut rows = Vec::new();
    for &entry in &o.entries {
        for launch in [Launch::Serial, Launch::Chained] {
            if launch == Launch::Chained && !cuda.chains(entry, &config.op_dims().with_t(1)) {
                continue;
            }
            let mut pass = DeviceForward::new(cuda, &tables, &weights, entry, launch)?;
            let mut phases: Vec<Phase> = o.caches.iter().map(|&cache| Phase::Decode { cache }).collect();
            phases.push(Phase::Prefill { tokens: o.prefill });
            for phase in phases {
                let samples = match phase {
                    Phase::Decode { .. } => o.samples,
                    Phase::Prefill { .. } => (o.samples / 4).max(5),
                };
                let est = time_phase(cuda, &mut pass, &tokens, phase, samples, floor_us)
                    .map_err(|e| BackendError::Device(format!("{} {launch} {phase}: {e}", entry.name)))?;
                progress(&format!("{} {launch} {phase}: {:.1} us", entry.name, est.median));
                rows.push(E2eRow { entry: entry.id, launch, phase, time_us: est, saved_vs_standard_pct: None });
            }
        }
    }
    fill_savings(&mut rows);
    Ok(E2eRun {
        schema: SchemaTag::default(),
        environment: Environment::capture(Some(cuda.device_name().to_string())),
        layers: o.layers,
        seed: o.seed,
        weight_bytes: bytes,
        floor_us,
        rows,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Each row's saving against standard's serial figure at the same phase.
fn fill_savings(rows: &mut [E2eRow]) {
    let baseline = registry::baseline().id;
    let base: Vec<(Phase, f64)> = rows
        .iter()
        .filter(|r| r.entry == baseline && r.launch == Launch::Serial)
        .map(|r| (r.phase, r.time_us.median))
        .collect();
    for r in rows.iter_mut() {
        if let Some((_, b)) = base.iter().find(|(p, _)| *p == r.phase) {
            r.saved_vs_standard_pct = Some(100.0 * (b - r.time_us.median) / b);
        }
    }
}

/// Fills the cache to the phase's start, captures the step in a graph, checks one replay against
/// a direct run (the same logits, bit for bit), then times single replays.
fn time_phase(
    cuda: &Cuda,
    pass: &mut DeviceForward,
    tokens: &[u32],
    phase: Phase,
    samples: usize,
    floor_us: f64,
) -> Result<Estimate> {
    let pass_err = |e: fusegate_model::forward::PassError| BackendError::Device(e.to_string());
    let (start, t) = match phase {
        Phase::Decode { cache } => (cache, 1),
        Phase::Prefill { tokens } => (0, tokens),
    };
    pass.reset();
    if start > 0 {
        pass.step(&tokens[..start], Logits::None, &mut Untouched).map_err(pass_err)?;
    }
    let step = &tokens[start..start + t];
    pass.ready(step).map_err(pass_err)?;
    pass.enqueue(t, 1, None)?;
    let direct = pass.last_logits(t)?;
    let graph = capture_with(cuda, || pass.enqueue(t, 1, None))?;
    graph.launch().map_err(|e| BackendError::Device(format!("replaying the graph: {e:?}")))?;
    if pass.last_logits(t)? != direct {
        return Err(BackendError::Device("a graph replay's logits differ from a direct run's (stale capture?)".into()));
    }
    let timer = Timer::new(cuda)?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        times.push(timer.time(cuda.stream(), || {
            graph.launch().map_err(|e| BackendError::Device(format!("replaying the graph: {e:?}")))
        })?);
    }
    let below = times.iter().filter(|&&us| us < floor_us).count();
    if below > 0 {
        return Err(BackendError::Device(format!(
            "{below} of {samples} samples below the weights' read time {floor_us:.1} us: a timing error"
        )));
    }
    Estimate::from_samples(&times).ok_or_else(|| BackendError::Device("fewer than 5 samples".into()))
}

/// The run for people: per phase, each variant's step time and the share it saves.
pub fn markdown(run: &E2eRun) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("# End-to-end: a whole Qwen3 forward step per variant\n\n");
    let _ = writeln!(
        s,
        "{} layers at Qwen3-0.6B's dims (synthetic weights, seed {}), on {}, commit {}. Each step is the model gate's \
         device pass (the variant's own launches in every layer, cuBLAS and the decoder kernels around them) captured \
         in one CUDA graph; device time from CUDA events around single replays (median and its 95% CI). A step reads \
         {:.2} GB of weights: {:.1} us at the measured copy bandwidth is its floor.\n",
        run.layers,
        run.seed,
        run.environment.device.as_deref().unwrap_or("?"),
        run.environment.git_commit,
        run.weight_bytes / 1e9,
        run.floor_us
    );
    let _ = writeln!(s, "| phase | entry | launch | median us | 95% CI | x floor | saved vs standard serial |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut rows: Vec<&E2eRow> = run.rows.iter().collect();
    rows.sort_by_key(|r| (phase_key(r.phase), r.entry, r.launch == Launch::Chained));
    for r in rows {
        let saved = r.saved_vs_standard_pct.map_or("-".into(), |p| format!("{p:+.1}%"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1}-{:.1} | {:.2} | {saved} |",
            r.phase,
            r.entry,
            r.launch,
            r.time_us.median,
            r.time_us.ci_lo,
            r.time_us.ci_hi,
            r.time_us.median / run.floor_us
        );
    }
    s
}

/// report.md's section: per phase, the standard path's step and the variant that saves the most.
pub fn summary(run: &E2eRun, source: &str) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "## End to end: a whole {}-layer step (`{source}`)\n\nEach step is one CUDA graph of the model gate's device pass; \
         the share saved is against the standard path timed the same way, in the same run.\n\n",
        run.layers
    );
    let _ = writeln!(s, "| phase | standard us | best variant | its us | saved per step |\n|---|---|---|---|---|");
    let mut phases: Vec<Phase> = run.rows.iter().map(|r| r.phase).collect();
    phases.sort_by_key(|&p| phase_key(p));
    phases.dedup();
    let baseline = registry::baseline().id;
    for p in phases {
        let rows = run.rows.iter().filter(|r| r.phase == p);
        let base = rows.clone().find(|r| r.entry == baseline && r.launch == Launch::Serial);
        let best = rows.filter(|r| r.entry != baseline).min_by(|a, b| a.time_us.median.total_cmp(&b.time_us.median));
        if let (Some(b), Some(v)) = (base, best) {
            let saved = b.time_us.median - v.time_us.median;
            let _ = writeln!(
                s,
                "| {p} | {:.1} | {} ({}) | {:.1} | {saved:.1} us ({:+.1}%) |",
                b.time_us.median,
                v.entry,
                v.launch,
                v.time_us.median,
                100.0 * saved / b.time_us.median
            );
        }
    }
    s
}

fn phase_key(p: Phase) -> (u8, usize) {
    match p {
        Phase::Decode { cache } => (0, cache),
        Phase::Prefill { tokens } => (1, tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(entry: EntryId, launch: Launch, phase: Phase, us: f64) -> E2eRow {
        let time_us = Estimate { median: us, ci_lo: us - 1.0, ci_hi: us + 1.0, samples: 200 };
        E2eRow { entry, launch, phase, time_us, saved_vs_standard_pct: None }
    }

    fn run(rows: Vec<E2eRow>) -> E2eRun {
        E2eRun {
            schema: SchemaTag::default(),
            environment: Environment::capture(Some("test GPU".into())),
            layers: 28,
            seed: 7,
            weight_bytes: 1.19e9,
            floor_us: 250.0,
            rows,
            seconds: 1.0,
        }
    }

    #[test]
    fn savings_are_against_standard_serial_at_the_same_phase_and_the_summary_names_the_best() {
        let (d64, d512, pre) =
            (Phase::Decode { cache: 64 }, Phase::Decode { cache: 512 }, Phase::Prefill { tokens: 512 });
        let mut rows = vec![
            row(EntryId::Standard, Launch::Serial, d64, 1600.0),
            row(EntryId::Exact, Launch::Serial, d64, 1520.0),
            row(EntryId::Exact, Launch::Chained, d64, 1500.0),
            row(EntryId::Standard, Launch::Serial, d512, 2000.0),
            row(EntryId::Exact, Launch::Serial, d512, 1950.0),
            row(EntryId::Standard, Launch::Serial, pre, 10000.0),
            row(EntryId::Mixed, Launch::Serial, pre, 11000.0),
        ];
        fill_savings(&mut rows);
        let pct: Vec<f64> = rows.iter().map(|r| r.saved_vs_standard_pct.unwrap()).collect();
        assert_eq!(pct, [0.0, 5.0, 6.25, 0.0, 2.5, 0.0, -10.0]);
        let run = run(rows);
        let s = summary(&run, "e2e.json");
        assert!(s.contains("| decode, KV cache 64 | 1600.0 | exact (chained) | 1500.0 | 100.0 us (+6.2%) |"), "{s}");
        assert!(s.contains("| prefill T = 512 | 10000.0 | mixed (serial) | 11000.0 | -1000.0 us (-10.0%) |"), "{s}");
        let md = markdown(&run);
        let decode_first = md.find("decode, KV cache 512").unwrap() < md.find("prefill T = 512").unwrap();
        assert!(decode_first && md.contains("| 6.40 |"), "x floor = 1600 / 250: {md}");
        // The schema reads back what it wrote.
        let back: E2eRun = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back.rows.len(), 7);
        assert_eq!(back.rows[2].phase, d64);
    }

    #[test]
    fn a_step_reads_every_weight_once() {
        // Qwen3-0.6B, 28 layers: 440M parameters in the layers plus the 156M embedding as lm_head.
        let bytes = weight_bytes(&Qwen3Config::qwen3_06b(28));
        let per_layer = (16 * 128 + 2 * 8 * 128) * 1024 + 1024 * 16 * 128 + 3 * 3072 * 1024 + 2 * 1024 + 2 * 128;
        assert_eq!(bytes, 2.0 * (28 * per_layer + 151936 * 1024 + 1024) as f64);
        assert!((1.15e9..1.25e9).contains(&bytes), "{bytes}");
    }
}
