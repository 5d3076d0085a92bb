//! Device-time sampling on the CUDA backend.
//!
//! - Hot L2: a CUDA graph of K launches on one set of buffers; a sample is one replay between two
//!   events, divided by K (graph replay removes launch gaps, as a serving loop's graphs do).
//! - Cold L2: a graph of K launches over K *different* copies of the inputs and weights, K chosen so
//!   that more than 3x the device's L2 is read between two uses of one copy: nothing of a launch's
//!   inputs can still be in L2. Where the op is too small for that (K > 64), each sample writes a
//!   flush buffer of 2x L2 instead and times one launch between events.
//! - Every graph is checked before it is timed: fresh inputs are written into the captured buffers,
//!   the graph is replayed, and its output must equal a direct launch's, bit for bit (a kernel left
//!   out of the capture would replay nothing and leave stale outputs).
//! - Samples faster than the roofline floor are flagged as measurement errors.
//! - Chained ([`Launch::Chained`]): the same graphs with every launch chained to the one before
//!   (programmatic dependent launch), so a launch overlaps its predecessor's tail as it would
//!   beside other PDL kernels in a serving stack; the check compares with a serial direct launch,
//!   and a chained launch after a late writer of x must see the written x (it waits).

use crate::nvml::{Gpu, PeakSampler};
use crate::roofline::{self, Ceilings};
use crate::schema::{Cache, Conditions, Launch, Measurement, Memory};
use crate::stats::{Estimate, StopRule};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, sys};
use fusegate_kernels::cuda::{Cuda, Prepared};
use fusegate_kernels::registry::CudaImpl;
use fusegate_kernels::{BackendError, Entry, EntryId, OpInputs, Shape, Stage, StageData, Weights, synth};
use half::bf16;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, BackendError>;

fn dev(what: &str) -> impl Fn(cudarc::driver::DriverError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("{what}: {e:?}"))
}

/// Events with timing enabled (cudarc's default disables timing: GPU.md).
pub(crate) struct Timer {
    start: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
}

impl Timer {
    pub(crate) fn new(cuda: &Cuda) -> Result<Timer> {
        let ev =
            || cuda.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("creating events"));
        Ok(Timer { start: ev()?, end: ev()? })
    }
    /// Microseconds spent by the device on what `work` enqueues.
    pub(crate) fn time(&self, stream: &CudaStream, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.start.record(stream).map_err(dev("recording an event"))?;
        work()?;
        self.end.record(stream).map_err(dev("recording an event"))?;
        Ok(self.start.elapsed_ms(&self.end).map_err(dev("reading an event"))? as f64 * 1000.0)
    }
}

/// Captures `launches` on the backend's stream into a graph.
fn capture(cuda: &Cuda, preps: &[&Prepared]) -> Result<CudaGraph> {
    capture_with(cuda, || preps.iter().try_for_each(|p| cuda.launch(p)))
}

/// Captures what `enqueue` puts on the backend's stream into a graph, uploaded and ready to replay.
pub(crate) fn capture_with(cuda: &Cuda, enqueue: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
    let stream = cuda.stream();
    cuda.synchronize()?;
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(dev("beginning graph capture"))?;
    let launched: Result<()> = enqueue();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(dev("ending graph capture"));
    launched?;
    let graph = graph?.ok_or_else(|| BackendError::Device("graph capture recorded nothing".into()))?;
    graph.upload().map_err(dev("uploading the graph"))?;
    Ok(graph)
}

/// q, k, v of a prepared entry, for bitwise comparison.
fn outputs(cuda: &Cuda, p: &Prepared) -> Result<Vec<Vec<u16>>> {
    let o = cuda.download(p)?;
    Ok(Stage::C
        .iter()
        .map(|s| match o.get(s) {
            Some(StageData::Bf16(v)) => v.iter().map(|x| x.to_bits()).collect(),
            _ => Vec::new(),
        })
        .collect())
}

/// Writes fresh inputs into the graph's last prepared buffers, replays, and compares with a direct
/// launch on the same inputs. Returns an error describing the mismatch.
fn check_graph(
    cuda: &Cuda,
    graph: &CudaGraph,
    last: &mut Prepared,
    entry: &'static Entry,
    weights: &Weights,
    seed: u64,
) -> Result<()> {
    let shape = last.shape();
    let x = synth::activations(&shape, seed ^ 0xc0ffee);
    cuda.write_x(last, &x)?;
    cuda.poison(last)?;
    graph.launch().map_err(dev("replaying the graph"))?;
    cuda.synchronize()?;
    let replayed = outputs(cuda, last)?;
    let mut direct =
        cuda.prepare_inputs(entry, &OpInputs { shape, x: &x, weights, eps: 1e-6 }, false, Launch::Serial)?;
    cuda.poison(&mut direct)?;
    cuda.launch(&direct)?;
    cuda.synchronize()?;
    if replayed != outputs(cuda, &direct)? {
        return Err(BackendError::Device(format!(
            "{} T={}: the graph's replay on fresh inputs differs from a direct launch (stale capture?)",
            entry.name, shape.t
        )));
    }
    Ok(())
}

pub struct Sampler<'a> {
    pub cuda: &'a Cuda,
    pub gpu: Option<Arc<Gpu>>,
    pub ceilings: Ceilings,
    pub l2_bytes: u64,
    pub stop: StopRule,
    pub seed: u64,
    /// The late-writer probe's verdict per (variant, T): it does not depend on the cache mode, so
    /// it runs once.
    pub chained_waits: RefCell<HashMap<(EntryId, usize), bool>>,
}

impl Sampler<'_> {
    /// The entry's own device memory at this shape: this process's NVML figure while one set of
    /// buffers is prepared and launched, over the figure before (cuBLAS's workspace, allocated at
    /// probe, is reported apart). Measured apart from timing, whose graphs and checks hold extra
    /// copies; for cold runs, which rotate copies, it is not repeated.
    fn footprint(
        &self,
        entry: &'static Entry,
        shape: Shape,
        weights: &Weights,
        cache: Cache,
        launch: Launch,
    ) -> Result<Memory> {
        let cublas_workspace_bytes =
            if entry.cuda == CudaImpl::NormThenCublas { self.cuda.cublas_workspace_bytes() as u64 } else { 0 };
        let none = |note: &str| Memory { peak_delta_bytes: None, cublas_workspace_bytes, note: Some(note.into()) };
        let Some(gpu) = self.gpu.clone() else { return Ok(none("NVML unavailable")) };
        if cache == Cache::Cold {
            return Ok(none("measured on the hot run (cold runs hold rotation copies)"));
        }
        if launch == Launch::Chained {
            return Ok(none("measured on the serial run (the same kernel and buffers)"));
        }
        self.cuda.synchronize()?;
        let Some(baseline) = gpu.process_memory() else {
            return Ok(none("NVML does not list this process's memory on this driver"));
        };
        let sampler = PeakSampler::start(gpu, Duration::from_millis(1));
        {
            let x = synth::activations(&shape, self.seed);
            let inputs = OpInputs { shape, x: &x, weights, eps: 1e-6 };
            let p = self.cuda.prepare_inputs(entry, &inputs, false, Launch::Serial)?;
            for _ in 0..3 {
                self.cuda.launch(&p)?;
            }
            self.cuda.synchronize()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let peak = sampler.finish();
        Ok(Memory {
            peak_delta_bytes: peak.map(|p| p.saturating_sub(baseline)),
            cublas_workspace_bytes,
            note: Some("NVML process figure: the allocator reserves in 32 MiB steps".into()),
        })
    }

    /// Whether a chained launch of `entry` waits for its predecessor before reading x (see
    /// [`Cuda::chained_waits_for_x`]), probed once per (entry, T).
    fn chained_waits(&self, entry: &'static Entry, shape: Shape, weights: &Weights) -> Result<bool> {
        if let Some(&w) = self.chained_waits.borrow().get(&(entry.id, shape.t)) {
            return Ok(w);
        }
        let (x, late) = (synth::activations(&shape, self.seed), synth::activations(&shape, self.seed ^ 0x1a7e));
        let w = self.cuda.chained_waits_for_x(entry, &OpInputs { shape, x: &x, weights, eps: 1e-6 }, &late)?;
        self.chained_waits.borrow_mut().insert((entry.id, shape.t), w);
        Ok(w)
    }

    /// Copies of the inputs one cold sample rotates through: enough that more than 3x L2 is read
    /// between two uses of one copy (1 when hot).
    fn copies(&self, shape: &Shape, cache: Cache) -> usize {
        match cache {
            Cache::Hot => 1,
            Cache::Cold => (3 * self.l2_bytes).div_ceil((roofline::min_bytes(shape) as u64).max(1)) as usize + 1,
        }
    }

    /// Times one (entry, T, cache, launch) and measures its memory.
    pub fn measure(
        &self,
        entry: &'static Entry,
        shape: Shape,
        weights: &Weights,
        cache: Cache,
        launch: Launch,
    ) -> Result<Measurement> {
        let memory = self.footprint(entry, shape, weights, cache, launch)?;
        let waits = self.launch_waits(entry, shape, weights, launch)?;
        let floor_us = roofline::floor_s(&shape, &self.ceilings) * 1e6;
        let mut replay = self.replay(entry, shape, weights, cache, launch)?;
        let (samples, throttled) = self.samples(&mut replay)?;
        let est = Estimate::from_samples(&samples)
            .ok_or_else(|| BackendError::Device(format!("{} T={}: fewer than 5 samples", entry.name, shape.t)))?;
        let below = samples.iter().filter(|&&s| s < floor_us).count();
        Ok(Measurement {
            variant: entry.id,
            t: shape.t,
            cache,
            launch,
            method: if replay.graph.is_some() { "graph".into() } else { "events+flush".into() },
            launches_per_sample: replay.launches,
            time_us: est,
            floor_us,
            bound_by: roofline::bound_by(&shape, &self.ceilings).to_string(),
            pct_of_floor: 100.0 * floor_us / est.median,
            below_floor_samples: below,
            throttled_samples: throttled,
            graph_checked: replay.graph.is_some(),
            memory,
            status: status(waits, below, floor_us),
        })
    }

    /// Whether a chained launch of `entry` reads the x its predecessor wrote (serial: always);
    /// a chained figure that does not is wrong, not fast.
    pub fn launch_waits(&self, entry: &'static Entry, shape: Shape, weights: &Weights, launch: Launch) -> Result<bool> {
        Ok(launch == Launch::Serial || self.chained_waits(entry, shape, weights)?)
    }

    /// Prepares one (entry, T, cache, launch) for timing: its buffers (cold: one copy per rotation
    /// step), its graph checked on fresh inputs (or, where a graph would need more than 64 copies,
    /// an L2 flush buffer), and the events. The JSON bench and the criterion pass both time this.
    pub fn replay(
        &self,
        entry: &'static Entry,
        shape: Shape,
        weights: &Weights,
        cache: Cache,
        launch: Launch,
    ) -> Result<Replay<'_>> {
        let cuda = self.cuda;
        let copies = self.copies(&shape, cache);
        let use_graph = copies <= 64;
        let x = synth::activations(&shape, self.seed);
        // Each cold copy gets its own device buffers (same values: the work is identical).
        let inputs = OpInputs { shape, x: &x, weights, eps: 1e-6 };
        let mut preps = (0..if use_graph { copies } else { 1 })
            .map(|_| cuda.prepare_inputs(entry, &inputs, false, launch))
            .collect::<Result<Vec<Prepared>>>()?;
        let timer = Timer::new(cuda)?;
        // A rough single-launch time decides how many launches one hot graph holds (~100 us).
        for p in &preps {
            cuda.launch(p)?;
        }
        let one = timer.time(cuda.stream(), || cuda.launch(&preps[0]))?.max(1.0);
        let (launches, graph, flush) = if use_graph {
            let reps = if cache == Cache::Hot { ((100.0 / one).ceil() as usize).clamp(1, 64) } else { 1 };
            (reps * preps.len(), Some(self.checked_graph(&mut preps, reps, entry, weights, &x)?), None)
        } else {
            let pattern = vec![0xa5u8; (2 * self.l2_bytes) as usize];
            let flush = cuda.stream().clone_htod(&pattern).map_err(dev("allocating the L2 flush buffer"))?;
            (1, None, Some(flush))
        };
        Ok(Replay { cuda, timer, preps, graph, flush, launches })
    }

    /// A graph of `reps` rounds over every copy, checked on fresh inputs before it is timed.
    fn checked_graph(
        &self,
        preps: &mut [Prepared],
        reps: usize,
        entry: &'static Entry,
        weights: &Weights,
        x: &[bf16],
    ) -> Result<CudaGraph> {
        let graph = {
            let order: Vec<&Prepared> = (0..reps).flat_map(|_| preps.iter()).collect();
            capture(self.cuda, &order)?
        };
        let last = preps.len() - 1;
        check_graph(self.cuda, &graph, &mut preps[last], entry, weights, self.seed)?;
        // The check wrote fresh inputs into the last copy: restore the timed inputs.
        self.cuda.write_x(&mut preps[last], x)?;
        Ok(graph)
    }

    /// Microseconds per launch: warm-up, then samples until the median is known to the target or
    /// the budget ends; also how many samples were taken while the card throttled.
    fn samples(&self, replay: &mut Replay) -> Result<(Vec<f64>, usize)> {
        for _ in 0..3 {
            replay.sample_us()?;
        }
        let (mut samples, mut throttled) = (Vec::new(), 0usize);
        let start = Instant::now();
        while !self.stop.done(&samples, start.elapsed().as_secs_f64()) {
            samples.push(replay.sample_us()?);
            if samples.len() % 25 == 0 && self.gpu.as_ref().is_some_and(|g| g.conditions().throttled()) {
                throttled += 25;
            }
        }
        self.cuda.synchronize()?;
        Ok((samples, throttled))
    }
}

/// One (entry, T, cache, launch) ready to time ([`Sampler::replay`]).
pub struct Replay<'a> {
    cuda: &'a Cuda,
    timer: Timer,
    preps: Vec<Prepared>,
    graph: Option<CudaGraph>,
    /// Without a graph: written before each sample, twice L2's size, so nothing of the op stays there.
    flush: Option<CudaSlice<u8>>,
    /// Launches one sample times.
    pub launches: usize,
}

impl Replay<'_> {
    /// One sample, in microseconds per launch of device time (CUDA events): one replay of the
    /// graph, or (without a graph) one launch of the first copy after L2 is flushed.
    pub fn sample_us(&mut self) -> Result<f64> {
        let (cuda, stream) = (self.cuda, self.cuda.stream());
        if let Some(f) = self.flush.as_mut() {
            stream.memset_zeros(f).map_err(dev("flushing L2"))?;
        }
        let us = match &self.graph {
            Some(g) => self.timer.time(stream, || g.launch().map_err(dev("replaying the graph")))?,
            None => self.timer.time(stream, || cuda.launch(&self.preps[0]))?,
        };
        Ok(us / self.launches as f64)
    }
}

/// "ok", or why a figure must not be used.
fn status(waits: bool, below_floor: usize, floor_us: f64) -> String {
    if !waits {
        "wrong: a chained launch read x before its predecessor had written it".to_string()
    } else if below_floor > 0 {
        format!("measurement error: {below_floor} samples faster than the {floor_us:.2} us floor")
    } else {
        "ok".to_string()
    }
}

/// Device conditions now, or defaults without NVML.
pub fn conditions(gpu: Option<&Gpu>) -> Conditions {
    gpu.map(Gpu::conditions).unwrap_or_default()
}

/// Measures the device's copy bandwidth, bf16 GEMM rate and mma.sync rate on random data (once
/// per machine).
pub fn measure_ceilings(cuda: &Cuda) -> Result<Ceilings> {
    let timer = Timer::new(cuda)?;
    let mut rng = synth::Rng::new(11);
    let bandwidth = copy_bandwidth(cuda, &timer, &mut rng)?;
    let bf16_flops = gemm_rate(cuda, &timer, &mut rng)?;
    let mma_sync_flops = Some(mma_sync_rate(cuda, &timer, &mut rng)?);
    Ok(Ceilings { bandwidth, bf16_flops, mma_sync_flops })
}

/// A value in [-1, 1] in steps of 0.001, as bf16: the rate probes' operands.
fn random_bf16(rng: &mut synth::Rng) -> bf16 {
    bf16::from_f32((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Device-to-device copy of 512 MiB (far beyond L2), bytes read plus bytes written, per second.
fn copy_bandwidth(cuda: &Cuda, timer: &Timer, rng: &mut synth::Rng) -> Result<f64> {
    let stream = cuda.stream();
    let n = 128 << 20;
    let host: Vec<f32> = (0..n).map(|_| rng.next_u64() as f32).collect();
    let src = stream.clone_htod(&host).map_err(dev("allocating the copy source"))?;
    let mut dst = stream.alloc_zeros::<f32>(n).map_err(dev("allocating the copy destination"))?;
    let mut copy = Vec::new();
    for _ in 0..12 {
        copy.push(timer.time(stream, || stream.memcpy_dtod(&src, &mut dst).map_err(dev("copying")))?);
    }
    Ok(2.0 * (n * 4) as f64 / (median(copy) * 1e-6))
}

/// mma.sync's bf16 rate: the best median over one block per SM of 4 to 32 warps (one to eight
/// per scheduler), each launch doing the same flops (~0.3 ms at 600 TFLOP/s).
fn mma_sync_rate(cuda: &Cuda, timer: &Timer, rng: &mut synth::Rng) -> Result<f64> {
    let frags: Vec<bf16> = (0..512).map(|_| random_bf16(rng)).collect();
    let mut best = 0.0f64;
    for warps in [4u32, 8, 16, 32] {
        let probe = cuda.mma_rate_probe(&frags, warps)?;
        let rounds = 65536 / warps;
        let mut rates = Vec::new();
        for i in 0..8 {
            let mut flops = 0.0;
            let us = timer.time(cuda.stream(), || {
                flops = cuda.enqueue_mma_rate(&probe, rounds)?;
                Ok(())
            })?;
            if i >= 2 {
                rates.push(flops / (us * 1e-6));
            }
        }
        if !cuda.mma_rate_checked(&probe)? {
            return Err(BackendError::Device(format!(
                "mma rate probe with {warps} warps per block: the warps' sums differ or are not finite"
            )));
        }
        best = best.max(median(rates));
    }
    Ok(best)
}

/// An 8192^3 bf16 GEMM with fp32 accumulation on random operands, in flop/s.
fn gemm_rate(cuda: &Cuda, timer: &Timer, rng: &mut synth::Rng) -> Result<f64> {
    let stream = cuda.stream();
    let m = 8192usize;
    let vals: Vec<bf16> = (0..m * m).map(|_| random_bf16(rng)).collect();
    let a = stream.clone_htod(&vals).map_err(dev("allocating GEMM operands"))?;
    let b = stream.clone_htod(&vals).map_err(dev("allocating GEMM operands"))?;
    let mut c = stream.alloc_zeros::<bf16>(m * m).map_err(dev("allocating GEMM output"))?;
    let blas = CudaBlas::new(stream.clone()).map_err(|e| BackendError::Device(format!("cuBLAS: {e:?}")))?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: m as i32,
        n: m as i32,
        k: m as i32,
        alpha: bf16::ONE,
        lda: m as i32,
        ldb: m as i32,
        beta: bf16::ZERO,
        ldc: m as i32,
    };
    let mut gemm = Vec::new();
    for i in 0..8 {
        let us = timer.time(stream, || {
            // SAFETY: a, b, c hold m*m elements each, matching cfg.
            unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|e| BackendError::Device(format!("cuBLAS GEMM: {e:?}")))
        })?;
        if i >= 2 {
            gemm.push(us);
        }
    }
    Ok(2.0 * (m * m * m) as f64 / (median(gemm) * 1e-6))
}
