//! What `cargo xtask model-check` prints and writes: a table per model (every entry and control
//! beside HF's floor) and an SVG of per-layer drift per entry against the floor.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::check::{Judged, Regime};
use crate::metrics::Figures;
use crate::results::{ModelCheckRun, ModelReport};

fn verdict_word(j: &Judged, decides: bool) -> &'static str {
    match (j.verdict.passed(), decides) {
        (true, true) => "PASS",
        (false, true) => "FAIL",
        (true, false) => "within floor",
        (false, false) => "outside floor",
    }
}

fn greedy(f: &Figures, n: usize) -> String {
    if f.first_divergent_token.is_empty() {
        return "-".into();
    }
    let diverged: Vec<usize> = f.first_divergent_token.iter().flatten().copied().collect();
    let margins: Vec<f64> = f.divergence_margin.iter().flatten().copied().collect();
    let margin = match margins.iter().copied().reduce(f64::max) {
        Some(m) => format!("; HF led by <= {m:.2} logits there"),
        None => String::new(),
    };
    match diverged.iter().min() {
        None => format!("none in {n}"),
        Some(first) => format!("{first} ({}/{} prompts{margin})", diverged.len(), f.first_divergent_token.len()),
    }
}

fn row(s: &mut String, name: &str, word: &str, f: &Figures, first_layer: Option<usize>, n: usize) {
    let layer = first_layer.map_or("-".into(), |l| l.to_string());
    let last = f.layers.last().map_or(0.0, |d| d.rel_l2);
    let output = match &f.output {
        Some(o) => format!(
            "{:.2e} | {:.2e} | {:.2e} | {:.1} | {:.2e}",
            o.mean_kl, o.p99_kl, o.max_kl, o.same_top1_pct, o.rms_delta_p_pct
        ),
        None => "- | - | - | - | -".into(),
    };
    let _ = writeln!(s, "| {name} | {word} | {output} | {} | {layer} | {last:.2e} |", greedy(f, n));
}

/// One model's section of the report.
pub fn model_markdown(m: &ModelReport, svg_name: &str) -> String {
    let mut s = String::new();
    let style = m.style.map_or("checkpoint".to_string(), |st| format!("{st:?}").to_lowercase());
    let regime = match m.regime {
        Regime::Stable => format!(
            "**stable**: HF's own floors agree on top-1 at {:.1}% of positions (mean KL {:.2e} nats): judged at the output and per layer",
            m.floor.same_top1_pct, m.floor.mean_kl
        ),
        Regime::Chaotic => format!(
            "**chaotic**: HF's own floors agree on top-1 at only {:.1}% of positions (mean KL {:.2e} nats), so output figures \
             cannot separate anything: judged by per-layer drift",
            m.floor.same_top1_pct, m.floor.mean_kl
        ),
    };
    let _ = writeln!(s, "## {} ({style}, {} layers)\n", m.name, m.layers);
    let _ = writeln!(
        s,
        "{} prompts, {} positions, teacher-forced; HF transformers {} on {} (torch {}). Regime: {regime}.\n",
        m.prompts, m.positions, m.provenance.transformers, m.provenance.gpu, m.provenance.torch
    );
    let n = m.entries.first().map_or(0, |e| e.judged.figures.first_divergent_token.len());
    let _ = writeln!(
        s,
        "| entry | verdict | mean KL | p99 KL | max KL | same top-1 % | RMS Δp % | first divergent greedy token | first drifting layer | last-layer drift |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for (run, f) in &m.floors {
        row(
            &mut s,
            &format!(
                "HF floor: {}",
                serde_json::to_value(run).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ),
            "(floor)",
            f,
            None,
            n,
        );
    }
    for e in &m.entries {
        let name = e.same_as.map_or(e.entry.to_string(), |s| format!("{} (= {s} here)", e.entry));
        row(
            &mut s,
            &name,
            verdict_word(&e.judged, e.mutant_of.is_none()),
            &e.judged.figures,
            e.judged.first_drifting_layer,
            n,
        );
    }
    for c in &m.controls {
        let word = if c.as_expected { "as it must" } else { "WRONG" };
        row(&mut s, &c.name, word, &c.judged.figures, c.judged.first_drifting_layer, n);
    }
    let _ = writeln!(s, "\nPer-layer drift against the floor: ![drift]({svg_name})\n");
    if let Some(r) = m.resolution {
        let _ = writeln!(
            s,
            "Resolution: an error of relative size {r:.1e} on one layer's q, k, v is rejected and located.\n"
        );
    }
    for e in &m.entries {
        if let fusegate_harness::Verdict::Fail { reasons } = &e.judged.verdict {
            let _ = writeln!(s, "- {}: {}", e.entry, reasons.join("; "));
        }
    }
    host_agreement(&mut s, m);
    boundary_prefills(&mut s, m);
    s
}

/// Each entry's prefills at the backend's switch points, against the baseline's pass.
fn boundary_prefills(s: &mut String, m: &ModelReport) {
    let rows: Vec<_> = m.entries.iter().filter(|e| !e.judged.boundaries.is_empty()).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nBoundary prefills (the prompts' tokens cut to both sides of every T where the backend switches the \
         entry's kernel or tile; worst layer drift from the baseline's pass over HF's floor there):\n"
    );
    for e in rows {
        let cells: Vec<String> = e
            .judged
            .boundaries
            .iter()
            .map(|b| {
                let mark = if b.passed { "" } else { " **over**" };
                format!("T={} {:.2}x{mark}", b.t, b.worst_over_floor)
            })
            .collect();
        let _ = writeln!(s, "- {}: {}", e.entry, cells.join(", "));
    }
}

/// The device pass against the host pass of the same variant, beside HF's own floor.
fn host_agreement(s: &mut String, m: &ModelReport) {
    let rows: Vec<_> = m.entries.iter().filter_map(|e| e.host_agreement.as_ref().map(|f| (e.entry, f))).collect();
    if rows.is_empty() {
        return;
    }
    let worst = |d: &[f64]| d.iter().copied().fold(0.0, f64::max);
    let floor_worst = worst(&m.floor.drift);
    let _ = writeln!(
        s,
        "\nDevice pass vs host pass (the same variant through the CPU emulation and the host's reference ops; \
         the host pass stands in for HF): HF's own floor has a worst layer drift of {floor_worst:.2e}.\n"
    );
    let _ = writeln!(s, "| entry | worst layer drift | last-layer drift | mean KL | same top-1 % |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (entry, f) in rows {
        let drift: Vec<f64> = f.layers.iter().map(|d| d.rel_l2).collect();
        let (kl, top1) = f
            .output
            .as_ref()
            .map_or(("-".into(), "-".into()), |o| (format!("{:.2e}", o.mean_kl), format!("{:.1}", o.same_top1_pct)));
        let last = drift.last().copied().unwrap_or(f64::NAN);
        let _ = writeln!(s, "| {entry} | {:.2e} | {last:.2e} | {kl} | {top1} |", worst(&drift));
    }
}

/// The whole report.
pub fn markdown(run: &ModelCheckRun, svg_name: &dyn Fn(&str) -> String) -> String {
    let mut s = String::from("# Model gate: registry entries inside a Qwen3 forward pass, against HF transformers\n\n");
    let _ = writeln!(
        s,
        "Backend {}, commit {}. KL(HF || entry) over HF's top-K tokens plus the rest as one bucket; drift = relative L2 \
         of the residual stream; the floor is, per figure, the worst of HF's own runs (another batch size, sdpa, decode \
         vs prefill).\n",
        run.backend, run.environment.git_commit
    );
    for m in &run.models {
        s.push_str(&model_markdown(m, &svg_name(&m.name)));
    }
    s
}

/// Per-layer drift (log) per entry and control, with the floor, as an SVG.
pub fn drift_svg(m: &ModelReport) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let bound = fusegate_kernels::registry::baseline().contract().model.max_drift_over_floor;
        let mut lines: Vec<(String, Vec<f64>, bool)> = vec![
            ("HF floor".into(), m.floor.drift.clone(), true),
            (format!("{bound}x HF floor (the contract)"), m.floor.drift.iter().map(|d| d * bound).collect(), true),
        ];
        lines.extend(
            m.entries
                .iter()
                .map(|e| (e.entry.to_string(), e.judged.figures.layers.iter().map(|d| d.rel_l2).collect(), false)),
        );
        lines.extend(
            m.controls
                .iter()
                .map(|c| (c.name.clone(), c.judged.figures.layers.iter().map(|d| d.rel_l2).collect(), false)),
        );
        let ys: Vec<f64> =
            lines.iter().flat_map(|l| l.1.iter().copied()).filter(|y| *y > 0.0 && y.is_finite()).collect();
        let lo = ys.iter().copied().fold(f64::MAX, f64::min) * 0.5;
        let hi = ys.iter().copied().fold(0.0, f64::max).max(1e-3) * 2.0;
        let n = m.layers.max(1) as f64;
        let last = n - 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{}: per-layer drift from HF", m.name), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // Room on the right, past the last layer, for the legend.
            .build_cartesian_2d(-0.2..last + 1.9, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        let whole_layers =
            |x: &f64| if x.fract() == 0.0 && *x >= 0.0 && *x <= last { format!("{x:.0}") } else { String::new() };
        chart
            .configure_mesh()
            .x_labels(m.layers + 3)
            .x_label_formatter(&whole_layers)
            .x_desc("layer")
            .y_desc("relative L2 drift")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, ys, floor)) in lines.into_iter().enumerate() {
            let color = match (floor, i) {
                (true, 0) => BLACK.to_rgba(),
                (true, _) => RGBColor(150, 150, 150).to_rgba(),
                _ => Palette99::pick(i).to_rgba(),
            };
            let style = ShapeStyle { color, filled: true, stroke_width: if floor { 3 } else { 2 } };
            let pts: Vec<(f64, f64)> = ys
                .iter()
                .enumerate()
                .filter(|(_, y)| **y > 0.0 && y.is_finite())
                .map(|(l, &y)| (l as f64, y))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
