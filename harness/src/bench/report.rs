//! results/<gpu>/report.md and its SVG plot: latency against T per variant, the PyTorch baselines
//! and the floor, with the performance targets checked against the numbers.

use crate::bench::schema::{BenchRun, Cache, Launch, Measurement};
use crate::bench::select::Decision;
use plotters::prelude::*;
use std::fmt::Write as _;

const FUSED: [&str; 3] = ["f32", "mixed", "exact"];

/// One line of the plot: its label, its (T, us) points, its colour, and whether it is a reference line.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    reference: bool,
}

/// The SVG: cold-L2 median latency (us, log) against T (log).
pub fn plot_svg(run: &BenchRun) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let cold: Vec<_> = run.measurements.iter().filter(|m| m.cache == Cache::Cold && m.usable()).collect();
        let ts: Vec<f64> = run.config.tokens.iter().map(|&t| t as f64).collect();
        let (tmin, tmax) = (ts.iter().cloned().fold(f64::MAX, f64::min), ts.iter().cloned().fold(1.0, f64::max));
        let ys = cold.iter().map(|m| m.time_us.median).chain(run.baselines.iter().map(|b| b.time_us.median));
        let ys: Vec<f64> = ys.chain(cold.iter().map(|m| m.floor_us)).collect();
        let (ymin, ymax) =
            (ys.iter().cloned().fold(f64::MAX, f64::min) * 0.7, ys.iter().cloned().fold(1.0, f64::max) * 1.5);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("fused RMSNorm + QKV on {} (cold L2, median)", run.fingerprint.gpu), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((tmin * 0.8..tmax * 1.25).log_scale(), (ymin..ymax).log_scale())
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("tokens T").y_desc("latency (us)").draw().map_err(|e| e.to_string())?;
        let mut series: Vec<Series> = Vec::new();
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(23, 190, 207),
            RGBColor(188, 189, 34),
        ];
        let mut labels: Vec<String> = cold.iter().map(|m| label(m)).collect();
        labels.sort();
        labels.dedup();
        for (i, l) in labels.iter().enumerate() {
            let pts = cold.iter().filter(|m| label(m) == *l).map(|m| (m.t as f64, m.time_us.median)).collect();
            series.push(Series { name: l.clone(), points: pts, color: palette[i % palette.len()], reference: false });
        }
        for (name, color) in [("torch-eager", RGBColor(120, 120, 120)), ("torch-compile", RGBColor(148, 103, 189))] {
            let pts: Vec<_> = run
                .baselines
                .iter()
                .filter(|b| b.name == name && b.cache == Cache::Cold)
                .map(|b| (b.t as f64, b.time_us.median))
                .collect();
            if !pts.is_empty() {
                series.push(Series { name: name.to_string(), points: pts, color, reference: true });
            }
        }
        let mut floor: Vec<(f64, f64)> = cold.iter().map(|m| (m.t as f64, m.floor_us)).collect();
        floor.sort_by(|a, b| a.0.total_cmp(&b.0));
        floor.dedup_by(|a, b| a.0 == b.0);
        series.push(Series { name: "floor (speed of light)".into(), points: floor, color: BLACK, reference: true });
        for Series { name, points: mut pts, color, reference } in series {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style =
                ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: if reference { 1 } else { 2 } };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A measurement's column and legend name: the variant, marked when chained.
fn label(m: &Measurement) -> String {
    match m.launch {
        Launch::Serial => m.variant.clone(),
        Launch::Chained => format!("{} (chained)", m.variant),
    }
}

fn best_fused(run: &BenchRun, t: usize, launch: Launch) -> Option<(&str, f64, f64)> {
    FUSED
        .iter()
        .filter_map(|v| run.find(v, t, Cache::Cold, launch).filter(|m| m.usable()))
        .map(|m| (m.variant.as_str(), m.time_us.median, m.floor_us))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// report.md: the tables, the targets, the decision's dispatch.
pub fn markdown(run: &BenchRun, decision: Option<&Decision>, svg_name: &str) -> String {
    let mut s = String::new();
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
    let _ = writeln!(
        s,
        "Card at start: SM {} MHz, memory {} MHz, {} C, {:.0} W, throttle reasons: {}.\n",
        c.sm_clock_mhz.map_or("?".into(), |v| v.to_string()),
        c.mem_clock_mhz.map_or("?".into(), |v| v.to_string()),
        c.temperature_c.map_or("?".into(), |v| v.to_string()),
        c.power_w.unwrap_or(f64::NAN),
        if c.throttle_reasons.is_empty() { "none".to_string() } else { c.throttle_reasons.join(", ") }
    );
    let _ = writeln!(s, "![latency vs T]({svg_name})\n");
    for cache in [Cache::Cold, Cache::Hot] {
        let _ = writeln!(s, "## {cache} L2: median us per call [95% CI], % of floor\n");
        let columns = columns(run);
        let names: Vec<String> = columns
            .iter()
            .map(|(v, l)| if *l == Launch::Serial { v.clone() } else { format!("{v} (chained)") })
            .collect();
        let _ = writeln!(s, "| T | floor | {} | torch-eager | torch-compile |", names.join(" | "));
        let _ = writeln!(s, "|---|---|{}---|---|", "---|".repeat(columns.len()));
        for &t in &run.config.tokens {
            let mut row =
                format!("| {t} | {:.2} |", run.measurements.iter().find(|m| m.t == t).map_or(f64::NAN, |m| m.floor_us));
            for (v, launch) in &columns {
                row += &match run.find(v, t, cache, *launch) {
                    Some(m) if m.usable() => format!(
                        " {:.2} [{:.2}, {:.2}] {:.0}% |",
                        m.time_us.median, m.time_us.ci_lo, m.time_us.ci_hi, m.pct_of_floor
                    ),
                    Some(m) => format!(" {} |", m.status),
                    None => " - |".into(),
                };
            }
            for name in ["torch-eager", "torch-compile"] {
                row += &run
                    .baselines
                    .iter()
                    .find(|b| b.name == name && b.t == t && b.cache == cache)
                    .map_or(" - |".into(), |b| format!(" {:.2} |", b.time_us.median));
            }
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(s);
    }
    if let Some(note) = &run.baseline_note {
        let _ = writeln!(s, "PyTorch baselines: {note}\n");
    }
    let _ = writeln!(
        s,
        "## Targets\n\nThe standard path and PyTorch are launched serially (cuBLAS and PyTorch's kernels do not take \
         part in PDL); the fused decode kernels are checked in both regimes.\n"
    );
    for (&t, launch) in
        run.config.tokens.iter().filter(|&&t| t <= 32).flat_map(|t| [(t, Launch::Serial), (t, Launch::Chained)])
    {
        if let Some((v, med, floor)) = best_fused(run, t, launch) {
            let std = run.find("standard", t, Cache::Cold, Launch::Serial).map(|m| m.time_us.median);
            let eager = run.baselines.iter().find(|b| b.name == "torch-eager" && b.t == t && b.cache == Cache::Cold);
            let _ = writeln!(
                s,
                "- T={t}, cold, {launch}: best fused `{v}` {med:.2} us = {:.2}x the floor (target <= 1.5: {}); {} vs standard (target >= 3x: {}); {} vs PyTorch eager (target >= 10x: {})",
                med / floor,
                verdict(med / floor <= 1.5),
                std.map_or("n/a".into(), |x| format!("{:.2}x faster", x / med)),
                std.map_or("n/a", |x| verdict(x / med >= 3.0)),
                eager.map_or("n/a".into(), |e| format!("{:.2}x faster", e.time_us.median / med)),
                eager.map_or("n/a", |e| verdict(e.time_us.median / med >= 10.0)),
            );
        }
    }
    if let Some(d) = decision {
        for &t in run.config.tokens.iter().filter(|&&t| t >= 2048) {
            let chosen = d.dispatch.iter().find(|r| r.t_from <= t && t <= r.t_to).map(|r| r.variant.as_str());
            let (Some(v), Some(std)) = (chosen, run.find("standard", t, Cache::Cold, Launch::Serial)) else { continue };
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
    let _ =
        writeln!(s, "- Whole default matrix: {:.0} s (target < 300 s: {})", run.seconds, verdict(run.seconds < 300.0));
    s
}

/// The table's columns: (variant, launch) in the order first measured.
fn columns(run: &BenchRun) -> Vec<(String, Launch)> {
    let mut v: Vec<(String, Launch)> = Vec::new();
    for m in &run.measurements {
        if !v.iter().any(|(n, l)| *n == m.variant && *l == m.launch) {
            v.push((m.variant.clone(), m.launch));
        }
    }
    v
}

fn verdict(ok: bool) -> &'static str {
    if ok { "holds" } else { "**missed**" }
}
