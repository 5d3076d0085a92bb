//! `cargo bench --bench cpu_emulation`: the CPU emulation's own speed (what `cargo test` and
//! `conform` spend their time on), per variant on Qwen3-0.6B's layer (H = 1024, 16 q heads,
//! 8 kv heads, D = 128) with seeded synthetic inputs: preparing (W widened once) and one run at
//! T = 1 and T = 32. Wall time; nothing here is a GPU figure.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::registry::{self, CudaImpl};
use fusegate_kernels::{Backend, Dims, Layer, Shape, synth};
use std::hint::black_box;
use std::time::Duration;

const SEED: u64 = fusegate_bench::run::DEFAULT_SEED;

fn cpu_emulation(c: &mut Criterion) {
    let dims = Dims::QWEN3_06B;
    let weights = synth::weights(&dims, SEED);
    let layer = || Layer { dims, weights: &weights, eps: 1e-6 };
    // The variants the GPU bench times, so the two matrices line up.
    let variants = registry::variants().filter(|e| e.cuda != CudaImpl::None);
    for entry in variants {
        let mut g = c.benchmark_group(format!("cpu/{}", entry.name));
        g.bench_function("prepare", |b| b.iter(|| black_box(Cpu.prepare(entry, layer()).expect("prepare"))));
        let mut op = Cpu.prepare(entry, layer()).expect("prepare");
        for t in [1, 32] {
            let x = synth::activations(&Shape::qwen3_06b(t), SEED);
            g.bench_with_input(BenchmarkId::new("run", t), &x, |b, x| b.iter(|| black_box(op.run(x).expect("run"))));
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .without_plots()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = cpu_emulation
}
criterion_main!(benches);
