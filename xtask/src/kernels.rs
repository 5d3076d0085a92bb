//! `cargo xtask kernels`: kernel development over the same library code as conform and bench
//! (NVRTC compiles, the routing rule, plain launches for profilers and compute-sanitizer). Checks
//! and timings are not here: `conform --backend cuda` judges the kernels (goldens, every path
//! boundary on fresh inputs, invariance, chained launches) and `bench` times them.

use anyhow::{Context, bail};
use clap::Subcommand;
use fusegate_kernels::cuda::{self, Cuda, Launch, Source};
use fusegate_kernels::registry::{self, CudaImpl, Entry, EntryId};
use fusegate_kernels::{Backend, Dims, OpInputs, synth};
use std::process::ExitCode;

/// Kernel development: compile, show what runs where, launch for a profiler.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NVRTC only, no device needed: every source with ptxas's resource report, then each fused
    /// entry's kernels alone (the compile time a process pays per entry).
    Compile {
        /// Target architecture.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
    /// On a GPU: the kernel, grid, block, shared memory and occupancy each entry runs at each T (the
    /// one routing rule), then every loaded kernel's registers, local and static shared memory.
    Routes(Selection),
    /// On a GPU: launch each entry at each T three times and nothing else (for ncu, nsys or
    /// compute-sanitizer, which serialises launches: run chained-launch checks without it).
    Profile(Selection),
}

#[derive(clap::Args)]
struct Selection {
    /// Entry to show or launch (repeatable). Default: every entry with a CUDA implementation.
    #[arg(long = "variant", value_name = "V")]
    variants: Vec<EntryId>,
    /// Token counts. Default: 1, both sides of every T where the entry's kernel or tile changes,
    /// and 2048.
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    tokens: Vec<usize>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Compile { arch } => compile(&arch),
        Command::Routes(sel) => launches(&sel, false),
        Command::Profile(sel) => launches(&sel, true),
    }
}

fn compile(arch: &str) -> anyhow::Result<ExitCode> {
    let verbose = ["--ptxas-options=-v".to_string()];
    for src in Source::ALL {
        let c = cuda::compile(src, None, arch, &verbose).with_context(|| format!("compiling {}", src.file_name()))?;
        println!("== {} for {arch}: {:.0} ms, cubin {} bytes", src.file_name(), c.millis, c.cubin.len());
        for line in c.log.lines().filter(|l| !l.trim().is_empty()) {
            println!("   {line}");
        }
    }
    for e in registry::all() {
        if let CudaImpl::Fused { kernel } = e.cuda {
            let c = cuda::compile(Source::Fused, Some(kernel), arch, &[])
                .with_context(|| format!("compiling {kernel} alone"))?;
            println!("== {}:{kernel} alone: {:.0} ms", Source::Fused.file_name(), c.millis);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prepares every selected (entry, T) on fresh inputs; with `profile`, launches each three times.
fn launches(sel: &Selection, profile: bool) -> anyhow::Result<ExitCode> {
    let gpu = match Cuda::probe() {
        Ok(g) => g,
        Err(why) => bail!("no GPU here: {why}"),
    };
    let entries: Vec<&'static Entry> = if sel.variants.is_empty() {
        registry::all().iter().filter(|e| gpu.supports(e).is_ok()).collect()
    } else {
        sel.variants.iter().map(|id| id.entry()).collect()
    };
    let dims = Dims::QWEN3_06B;
    let weights = synth::weights(&dims, 9);
    println!(
        "{} (sm_{}{}, {} SMs)",
        gpu.device_name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        gpu.sm_count()
    );
    for &entry in &entries {
        let mut ts = sel.tokens.clone();
        if ts.is_empty() {
            ts = [1, 2048].into_iter().chain(gpu.path_boundaries(entry, &dims)).collect();
            ts.sort_unstable();
            ts.dedup();
        }
        for t in ts {
            let shape = dims.with_t(t);
            let x = synth::activations(&shape, 9);
            let inputs = OpInputs { shape, x: &x, weights: &weights, eps: 1e-6 };
            let p = gpu.prepare_inputs(entry, &inputs, false, Launch::Serial)?;
            if profile {
                for _ in 0..3 {
                    gpu.launch(&p)?;
                }
                gpu.synchronize()?;
            }
            let chains = if gpu.chains(entry, &shape) { " (chains)" } else { "" };
            println!("{:<24} T={t:<5} {}{chains}", entry.name, p.describe());
        }
    }
    println!("\nkernels loaded (registers / local bytes per thread / static shared memory):");
    for k in gpu.kernel_infos() {
        println!("  {:<28} regs {:>3}  local {:>4}  smem {:>5}", k.name, k.registers, k.local_bytes, k.static_smem);
    }
    for (what, ms) in gpu.compile_times() {
        println!("NVRTC compiled {what} in {ms:.0} ms");
    }
    Ok(ExitCode::SUCCESS)
}
