//! results/<gpu>/report.md and its SVG plot: latency against T per variant, the PyTorch baselines
//! and the floor, with the performance targets checked against the numbers.

mod plot;

pub use plot::plot_svg;

use crate::noise::NoiseThreshold;
use crate::roofline;
use crate::schema::{BaselineId, BenchRun, Cache, Launch, Measurement};
use crate::select::Decision;
use fusegate_kernels::registry::{self, CudaImpl};
use fusegate_kernels::{EntryId, Shape};
use std::fmt::Write as _;

/// A measurement's column and legend name: the variant, marked when chained.
fn label(m: &Measurement) -> String {
    column_name(m.variant, m.launch)
}

fn column_name(variant: EntryId, launch: Launch) -> String {
    match launch {
        Launch::Serial => variant.to_string(),
        Launch::Chained => format!("{variant} (chained)"),
    }
}

/// The fused variants (one kernel each), in registry order.
fn fused() -> impl Iterator<Item = EntryId> {
    registry::variants().filter(|e| matches!(e.cuda, CudaImpl::Fused { .. })).map(|e| e.id)
}

/// The fastest usable fused figure at (T, cold, launch): (variant, median, floor).
fn best_fused(run: &BenchRun, t: usize, launch: Launch) -> Option<(EntryId, f64, f64)> {
    fused()
        .filter_map(|v| run.find(v, t, Cache::Cold, launch).filter(|m| m.usable()))
        .map(|m| (m.variant, m.time_us.median, m.floor_us))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// report.md: the tables, the targets, the decision's dispatch.
pub fn markdown(run: &BenchRun, decision: Option<&Decision>, svg_name: &str) -> String {
    let mut s = String::new();
    write_header(&mut s, run, svg_name);
    for cache in [Cache::Cold, Cache::Hot] {
        write_table(&mut s, run, cache);
    }
    if let Some(note) = &run.baseline_note {
        let _ = writeln!(s, "PyTorch baselines: {note}\n");
    }
    let _ = writeln!(
        s,
        "Columns named `-graph` are timed by fusegate's method (CUDA graph replays between events, cold L2 by \
         rotating copies), with the share of q|k|v bit-identical to HF's eager output in brackets; `(no graph)` \
         columns are launched from the host and include launch gaps: shown, never used in a ratio.\n"
    );
    let _ = writeln!(
        s,
        "## Targets\n\nThe standard path and PyTorch are launched serially (cuBLAS and PyTorch's kernels do not take \
         part in PDL); the fused decode kernels are checked in both regimes.\n"
    );
    write_decode_targets(&mut s, run);
    if let Some(d) = decision {
        write_prefill_targets(&mut s, run, d);
        write_alternative_targets(&mut s, run, d);
    }
    write_mma_sync_bound(&mut s, run);
    let _ =
        writeln!(s, "- Whole default matrix: {:.0} s (target < 300 s: {})", run.seconds, verdict(run.seconds < 300.0));
    s
}

/// The GPU, its fingerprint and ceilings, the card's state at the start, the plot.
fn write_header(s: &mut String, run: &BenchRun, svg_name: &str) {
    let fp = &run.fingerprint;
    let _ = writeln!(s, "# fusegate benchmark: {}\n", fp.gpu);
    let _ = writeln!(
        s,
        "{} SMs, L2 {} MiB, driver {}, CUDA driver API {}, cuBLAS {}; measured copy bandwidth {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s. Run {} (commit {}), {:.0} s.\n",
        fp.sm_count,
        fp.l2_bytes >> 20,
        fp.driver,
        fp.cuda_driver_api,
        fp.cublas,
        run.ceilings.bandwidth / 1e12,
        run.ceilings.bf16_flops / 1e12,
        run.utc,
        run.git_commit,
        run.seconds
    );
    let c = &run.conditions_start;
    let known = |v: Option<u32>| v.map_or("?".into(), |v| v.to_string());
    let _ = writeln!(
        s,
        "Card at start: SM {} MHz, memory {} MHz, {} C, {:.0} W, throttle reasons: {}.\n",
        known(c.sm_clock_mhz),
        known(c.mem_clock_mhz),
        known(c.temperature_c),
        c.power_w.unwrap_or(f64::NAN),
        if c.throttle_reasons.is_empty() { "none".to_string() } else { c.throttle_reasons.join(", ") }
    );
    let _ = writeln!(s, "![latency vs T]({svg_name})\n");
}

/// One cache mode: per T, the floor, each (variant, launch) column and the PyTorch baselines.
fn write_table(s: &mut String, run: &BenchRun, cache: Cache) {
    let _ = writeln!(s, "## {cache} L2: median us per call [95% CI], % of floor\n");
    let columns = columns(run);
    let names: Vec<String> = columns.iter().map(|&(v, l)| column_name(v, l)).collect();
    let measured: Vec<BaselineId> =
        BaselineId::ALL.into_iter().filter(|b| run.baselines.iter().any(|m| m.name == *b)).collect();
    let baselines: Vec<String> = measured.iter().map(|b| b.column()).collect();
    let header: Vec<String> = names.into_iter().chain(baselines).collect();
    let _ = writeln!(s, "| T | floor | {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---|{}{}", "---|".repeat(columns.len()), "---|".repeat(measured.len()));
    for &t in &run.config.tokens {
        let floor = run.measurements.iter().find(|m| m.t == t).map_or(f64::NAN, |m| m.floor_us);
        let mut row = format!("| {t} | {floor:.2} |");
        for &(v, launch) in &columns {
            row += &match run.find(v, t, cache, launch) {
                Some(m) if m.usable() => format!(
                    " {:.2} [{:.2}, {:.2}] {:.0}% |",
                    m.time_us.median, m.time_us.ci_lo, m.time_us.ci_hi, m.pct_of_floor
                ),
                Some(m) => format!(" {} |", m.status),
                None => " - |".into(),
            };
        }
        for &b in &measured {
            row += &run.baseline(b, t, cache).map_or(" - |".into(), |b| match b.bit_exact_vs_hf {
                Some(f) => format!(" {:.2} ({:.0}% HF) |", b.time_us.median, 100.0 * f),
                None => format!(" {:.2} |", b.time_us.median),
            });
        }
        let _ = writeln!(s, "{row}");
    }
    let _ = writeln!(s);
}

/// Decode (T <= 32), both launch regimes: the best fused figure against the floor, the standard
/// path and the strongest graph-timed alternative.
fn write_decode_targets(s: &mut String, run: &BenchRun) {
    let decode = run.config.tokens.iter().filter(|&&t| t <= 32);
    for (t, launch) in decode.flat_map(|&t| [(t, Launch::Serial), (t, Launch::Chained)]) {
        let Some((v, med, floor)) = best_fused(run, t, launch) else { continue };
        let std = run.find(registry::baseline().id, t, Cache::Cold, Launch::Serial).map(|m| m.time_us.median);
        let _ = writeln!(
            s,
            "- T={t}, cold, {launch}: best fused `{v}` {med:.2} us = {:.2}x the floor (target <= 1.5: {}); {} vs standard; {}",
            med / floor,
            verdict(med / floor <= 1.5),
            std.map_or("n/a".into(), |x| speed_ratio(x / med)),
            against_strongest(run, t, med),
        );
    }
}

/// `other / ours` as "N.NNx faster", or "N.NNx slower" where ours takes longer (never "0.93x faster").
fn speed_ratio(other_over_ours: f64) -> String {
    if other_over_ours >= 1.0 {
        format!("{other_over_ours:.2}x faster")
    } else {
        format!("{:.2}x slower", 1.0 / other_over_ours)
    }
}

/// "N.NNx faster than the strongest alternative `name` (X us)", or why there is none.
fn against_strongest(run: &BenchRun, t: usize, med: f64) -> String {
    match run.strongest_alternative(t, Cache::Cold) {
        Some(b) => {
            let how = speed_ratio(b.time_us.median / med);
            format!("{how} than the strongest alternative `{}` ({:.2} us)", b.name, b.time_us.median)
        }
        None => "no graph-timed alternative measured".into(),
    }
}

/// Every T: the dispatch (HF-faithful) against the strongest graph-timed alternative (target: no
/// slower), the chained decode at T <= 8 (target: 1.5x faster), and the standard path against
/// torch.compile in a graph (target: within 1.05x).
fn write_alternative_targets(s: &mut String, run: &BenchRun, d: &Decision) {
    let standard = registry::baseline().id;
    for &t in &run.config.tokens {
        let Some(best) = run.strongest_alternative(t, Cache::Cold) else { continue };
        let alt = best.time_us.median;
        if let Some(m) =
            d.dispatch.iter().find(|r| r.covers(t)).and_then(|r| run.find(r.variant, t, Cache::Cold, Launch::Serial))
        {
            let r = m.time_us.median / alt;
            let _ = writeln!(
                s,
                "- T={t}, cold, serial: the dispatch's `{}` {:.2} us = {r:.3}x the strongest alternative `{}` {alt:.2} us (target <= 1.0: {}){}",
                m.variant,
                m.time_us.median,
                best.name,
                verdict(r <= 1.0),
                level_note(r)
            );
        }
        if t <= 8
            && let Some((v, med, _)) = best_fused(run, t, Launch::Chained)
        {
            let _ = writeln!(
                s,
                "- T={t}, cold, chained: `{v}` {med:.2} us, {:.2}x faster than `{}` (target >= 1.5x: {})",
                alt / med,
                best.name,
                verdict(alt / med >= 1.5)
            );
        }
        let compiled = run.baseline(BaselineId::TorchCompileGraph, t, Cache::Cold);
        if let (Some(std), Some(c)) = (run.find(standard, t, Cache::Cold, Launch::Serial), compiled) {
            let r = std.time_us.median / c.time_us.median;
            let _ = writeln!(
                s,
                "- T={t}, cold: the standard path {:.2} us = {r:.3}x torch.compile in a graph {:.2} us (target <= 1.05: {}){}",
                std.time_us.median,
                c.time_us.median,
                verdict(r <= 1.05),
                level_note(r)
            );
        }
    }
}

/// ", level with it: within the run-to-run noise of both (N%)" where a cold ratio of one of ours to
/// an alternative's is that close to 1 (`noise::NoiseThreshold::tie_band`), else nothing: a
/// verdict either side of 1 by less than that is not a difference.
fn level_note(ratio: f64) -> String {
    let band = NoiseThreshold::tie_band(
        &NoiseThreshold::default(),
        &NoiseThreshold::alternatives_h200_measured(),
        Cache::Cold,
    );
    if (ratio - 1.0).abs() <= band {
        format!("; level with it: within the run-to-run noise of both ({:.0}%)", 100.0 * band)
    } else {
        String::new()
    }
}

/// Prefill (T >= 128): the least time any mma.sync kernel can take (a fused prefill built like
/// fusegate's tile kernels) against the fastest figure measured there, fusegate's standard path
/// or a graph-timed alternative: where the bound is the larger, no such kernel can win.
fn write_mma_sync_bound(s: &mut String, run: &BenchRun) {
    let Some(rate) = run.ceilings.mma_sync_flops else { return };
    let standard = registry::baseline().id;
    for &t in run.config.tokens.iter().filter(|&&t| t >= 128) {
        let Some(bound) = roofline::mma_sync_floor_s(&Shape::qwen3_06b(t), &run.ceilings).map(|b| b * 1e6) else {
            continue;
        };
        let ours = run.find(standard, t, Cache::Cold, Launch::Serial).filter(|m| m.usable());
        let alt = run.strongest_alternative(t, Cache::Cold);
        let best = match (ours, alt) {
            (Some(m), Some(b)) if b.time_us.median < m.time_us.median => (b.name.to_string(), b.time_us.median),
            (Some(m), _) => (standard.to_string(), m.time_us.median),
            (None, Some(b)) => (b.name.to_string(), b.time_us.median),
            (None, None) => continue,
        };
        let compute_us = roofline::flops(&Shape::qwen3_06b(t)) / rate * 1e6;
        let how = if bound < best.1 {
            format!(
                "a fused mma.sync prefill could be at most {:.2}x faster, and only above {:.0}% of that rate",
                best.1 / bound,
                100.0 * compute_us / best.1
            )
        } else {
            format!("no mma.sync kernel can win (the bound is {:.2}x that)", bound / best.1)
        };
        let _ = writeln!(
            s,
            "- T={t}, cold: any mma.sync kernel >= {bound:.2} us (flops at the measured {:.0} TFLOP/s); the fastest measured is `{}` {:.2} us: {how}",
            rate / 1e12,
            best.0,
            best.1
        );
    }
}

/// Prefill (T >= 2048): what the dispatch picks there, against the standard path.
fn write_prefill_targets(s: &mut String, run: &BenchRun, d: &Decision) {
    let standard = registry::baseline().id;
    for &t in run.config.tokens.iter().filter(|&&t| t >= 2048) {
        let chosen = d.dispatch.iter().find(|r| r.covers(t)).map(|r| r.variant);
        let (Some(v), Some(std)) = (chosen, run.find(standard, t, Cache::Cold, Launch::Serial)) else { continue };
        if let Some(m) = run.find(v, t, Cache::Cold, Launch::Serial) {
            let r = m.time_us.median / std.time_us.median;
            let _ = writeln!(
                s,
                "- T={t}, cold: the dispatch picks `{v}`, {r:.3}x the standard path (target <= 1.05: {})",
                verdict(r <= 1.05)
            );
        }
    }
}

/// The table's columns: (variant, launch) in the order first measured.
fn columns(run: &BenchRun) -> Vec<(EntryId, Launch)> {
    let mut v: Vec<(EntryId, Launch)> = Vec::new();
    for m in &run.measurements {
        if !v.contains(&(m.variant, m.launch)) {
            v.push((m.variant, m.launch));
        }
    }
    v
}

fn verdict(ok: bool) -> &'static str {
    if ok { "holds" } else { "**missed**" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{Gates, Mix, decide};
    use crate::testdata::{fixture_bench, fixture_model};
    use std::collections::BTreeMap;

    /// The fixture's gates as its conformance run found them: mixed's contract failed.
    fn gates() -> BTreeMap<EntryId, Gates> {
        let open = |contract: bool, batch_invariant: bool| Gates {
            contract,
            deterministic: true,
            batch_invariant,
            chains_safely: None,
            model: Some(true),
            sighted: true,
            reason: (!contract).then(|| "contract failed on qwen3-typical-t128: occupancy".into()),
        };
        BTreeMap::from([
            (EntryId::Standard, open(true, true)),
            (EntryId::F32, open(true, false)),
            (EntryId::Mixed, open(false, false)),
            (EntryId::Exact, open(true, true)),
        ])
    }

    #[test]
    fn a_slower_kernel_is_called_slower_not_a_fraction_faster() {
        assert_eq!(speed_ratio(8.49 / 7.78), "1.09x faster");
        assert_eq!(speed_ratio(7.18 / 7.76), "1.08x slower");
    }

    #[test]
    fn markdown_names_the_gpu_tables_targets_and_the_dispatch() {
        let run = fixture_bench();
        let d = decide(&run, gates(), &fixture_model(), Mix::default(), ("b".into(), "c".into()), Launch::Serial);
        let md = markdown(&run, Some(&d), "latency.svg");
        assert!(md.starts_with("# fusegate benchmark: NVIDIA H200\n\n132 SMs, L2 60 MiB, driver 580.159.04,"), "{md}");
        assert!(md.contains("![latency vs T](latency.svg)"));
        // This fixture predates the graph-timed baselines: its host-launched ones are labelled.
        let header = "| T | floor | standard | f32 | mixed | mixed (chained) | exact | exact (chained) | torch-eager (no graph) | torch-compile (no graph) |";
        assert_eq!(md.matches(header).count(), 2, "a cold and a hot table: {md}");
        assert!(md.contains("| 128 | 2.34 | 9.59 [9.56, 9.61] 24% |"), "{md}");
        // T=1 cold serial: exact 5.691 us beats mixed 5.728 and f32 28.88; floor 2.024, standard
        // 8.106. Host-launched PyTorch (173.8 us) is never in a ratio.
        assert!(md.contains(
            "- T=1, cold, serial: best fused `exact` 5.69 us = 2.81x the floor (target <= 1.5: **missed**); \
             1.42x faster vs standard; no graph-timed alternative measured"
        ));
        assert!(!md.contains("vs PyTorch eager"), "{md}");
        assert_eq!(md.matches(", cold, chained: best fused `").count(), 3, "T = 1, 8, 32 chained: {md}");
        for t in [2048, 8192] {
            let line = format!(
                "- T={t}, cold: the dispatch picks `standard`, 1.000x the standard path (target <= 1.05: holds)"
            );
            assert!(md.contains(&line), "{md}");
        }
        assert!(md.ends_with("- Whole default matrix: 49 s (target < 300 s: holds)\n"), "{md}");

        let without = markdown(&run, None, "x.svg");
        assert!(!without.contains("the dispatch picks") && without.contains("![latency vs T](x.svg)"));
    }

    /// The value of attribute `name` in one SVG element.
    fn attr<'a>(element: &'a str, name: &str) -> &'a str {
        element.split(&format!(" {name}=\"")).nth(1).and_then(|v| v.split('"').next()).unwrap_or("")
    }

    #[test]
    fn the_plot_is_an_svg_with_a_line_per_variant_and_regime() {
        let svg = plot_svg(&fixture_bench()).unwrap();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains("fused RMSNorm + QKV on NVIDIA H200 (cold L2, median)"));
        let legend =
            ["exact", "exact (chained)", "f32", "mixed", "mixed (chained)", "standard", "floor (speed of light)"];
        for name in legend {
            assert!(svg.contains(&format!("\n{name}\n</text>")), "no legend entry {name:?}");
        }
        // Measured lines are 2 px wide, one colour each, drawn once as a line and once in the legend.
        let wide: Vec<&str> =
            svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\"")).collect();
        let mut colours: Vec<&str> = wide.iter().map(|l| attr(l, "stroke")).collect();
        colours.sort();
        colours.dedup();
        assert_eq!((wide.len(), colours.len()), (12, 6), "six measured lines: {wide:?}");
        // In legend order: exact, exact (chained), f32, mixed, mixed (chained), standard; chained
        // figures exist at T = 1, 8, 32 only.
        let points: Vec<usize> = wide[..6].iter().map(|l| attr(l, "points").split_whitespace().count()).collect();
        assert_eq!(points, [7, 3, 7, 7, 3, 7]);
        // A point per figure: 34 cold measurements and 7 floor points; host-launched PyTorch
        // figures are not drawn (not comparable).
        assert_eq!(svg.matches("<circle").count(), 34 + 7);
        assert!(!svg.contains("torch-eager"));
        assert!(!svg.contains("mma.sync"), "no bound without the measured rate");
    }

    /// With the mma.sync rate measured, its bound is one more reference line with a point per T.
    #[test]
    fn the_plot_draws_the_mma_sync_bound_where_the_rate_was_measured() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/nvidia-h200/bench-20261130T234607Z.json");
        let run = BenchRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(run.ceilings.mma_sync_flops.is_some());
        let with = plot_svg(&run).unwrap();
        assert!(with.contains("\nany mma.sync kernel (bound)\n</text>"), "no legend entry");
        let mut without = run.clone();
        without.ceilings.mma_sync_flops = None;
        let without = plot_svg(&without).unwrap();
        assert_eq!(with.matches("<circle").count(), without.matches("<circle").count() + run.config.tokens.len());
    }

    /// The committed H200 run with graph-timed baselines (60e52cc): the strongest alternative is
    /// named at each T, and every ratio uses graph-timed figures only.
    #[test]
    fn targets_name_the_strongest_graph_timed_alternative() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/nvidia-h200/bench-20261130T161530Z.json");
        let run = BenchRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let d = decide(&run, gates(), &fixture_model(), Mix::default(), ("b".into(), "c".into()), Launch::Serial);
        let md = markdown(&run, Some(&d), "latency.svg");
        for t in &run.config.tokens {
            let best = run.strongest_alternative(*t, Cache::Cold).expect("graph-timed alternatives at every T");
            assert!(best.name.is_alternative() && best.name.in_graph());
            let hf = run.baseline(BaselineId::HfEagerGraph, *t, Cache::Cold).unwrap();
            assert!(best.time_us.median <= hf.time_us.median);
        }
        assert!(md.contains("| torch-compile-graph | hf-eager-graph | cublas-gemm-graph | torch-eager (no graph) |"));
        // T = 1: exact chained 3.70 us against torch.compile in a graph 7.05 us.
        assert!(
            md.contains(
                "- T=1, cold, chained: `exact` 3.70 us, 1.91x faster than `torch-compile-graph` (target >= 1.5x: holds)"
            ),
            "{md}"
        );
        assert!(md.contains("1.05x slower than the strongest alternative `torch-compile-graph` (7.40 us)"), "{md}");
        assert!(!md.contains("(no graph) (") && !md.contains("vs PyTorch eager"));
    }

    /// The mma.sync bound at a rate half cuBLAS's: T = 8192 is compute-bound and no mma.sync kernel
    /// can reach the standard path's 106.63 us; T = 128 is memory-bound and leaves room; without a
    /// measured rate there is no claim either way.
    #[test]
    fn the_mma_sync_bound_says_where_a_fused_prefill_cannot_win() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/nvidia-h200/bench-20261130T212257Z.json");
        let mut run = BenchRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.ceilings.mma_sync_flops, None, "a file from before the mma.sync ceiling");
        assert!(!markdown(&run, None, "latency.svg").contains("any mma.sync kernel"));
        run.ceilings.mma_sync_flops = Some(run.ceilings.bf16_flops / 2.0);
        let md = markdown(&run, None, "latency.svg");
        let line = |t: usize| {
            md.lines()
                .find(|l| l.starts_with(&format!("- T={t}, cold: any mma.sync kernel")))
                .unwrap_or_else(|| panic!("{md}"))
        };
        assert!(
            line(8192).contains("the fastest measured is `standard` 106.63 us: no mma.sync kernel can win"),
            "{md}"
        );
        assert!(line(128).contains("`standard` 7.64 us: a fused mma.sync prefill could be at most"), "{md}");
        assert!(!md.contains("- T=32, cold: any mma.sync kernel"), "decode is not prefill: {md}");
    }

    /// The tie band is 2% (ours, cold) + 7% (the alternatives', cold) = 9% either side of 1.
    #[test]
    fn a_ratio_within_both_runs_noise_reads_as_level() {
        for level in [0.994, 0.92, 1.08] {
            assert_eq!(level_note(level), "; level with it: within the run-to-run noise of both (9%)", "{level}");
        }
        for apart in [0.815, 0.90, 1.10] {
            assert_eq!(level_note(apart), "", "{apart}");
        }
    }
}
