//! latency.svg: cold-L2 median latency (us, log) against T (log) per variant and launch regime,
//! with the graph-timed baselines, the floor and the mma.sync bound as thin reference lines.

use super::label;
use crate::roofline;
use crate::schema::{BaselineId, BenchRun, Cache, Measurement};
use fusegate_kernels::Shape;
use plotters::coord::Shift;
use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

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
        let cold: Vec<&Measurement> =
            run.measurements.iter().filter(|m| m.cache == Cache::Cold && m.usable()).collect();
        draw(&root, run, &cold)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The chart, its series and the legend on `root`.
fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, run: &BenchRun, cold: &[&Measurement]) -> Result<(), String> {
    let ((tmin, tmax), (ymin, ymax)) = ranges(run, cold);
    let mut chart = ChartBuilder::on(root)
        .caption(format!("fused RMSNorm + QKV on {} (cold L2, median)", run.fingerprint.gpu), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((tmin * 0.8..tmax * 1.25).log_scale(), (ymin..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("tokens T").y_desc("latency (us)").draw().map_err(|e| e.to_string())?;
    for Series { name, points: mut pts, color, reference } in series(run, cold) {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: if reference { 1 } else { 2 } };
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
        .map_err(|e| e.to_string())
}

/// The axes' spans: T over the configured token counts; latency over every figure and floor.
fn ranges(run: &BenchRun, cold: &[&Measurement]) -> ((f64, f64), (f64, f64)) {
    let ts: Vec<f64> = run.config.tokens.iter().map(|&t| t as f64).collect();
    let (tmin, tmax) = (ts.iter().cloned().fold(f64::MAX, f64::min), ts.iter().cloned().fold(1.0, f64::max));
    let graphed = run.baselines.iter().filter(|b| b.name.in_graph());
    let ys = cold.iter().map(|m| m.time_us.median).chain(graphed.map(|b| b.time_us.median));
    let ys: Vec<f64> = ys.chain(cold.iter().map(|m| m.floor_us)).collect();
    let (ymin, ymax) =
        (ys.iter().cloned().fold(f64::MAX, f64::min) * 0.7, ys.iter().cloned().fold(1.0, f64::max) * 1.5);
    ((tmin, tmax), (ymin, ymax))
}

/// A line per measured label (variant, chained apart) in label order, the graph-timed baselines
/// (timed as fusegate's kernels are; host-launched figures are not comparable and not drawn), the
/// floor, and the mma.sync bound where the run has that ceiling.
fn series(run: &BenchRun, cold: &[&Measurement]) -> Vec<Series> {
    let mut labels: Vec<String> = cold.iter().map(|m| label(m)).collect();
    labels.sort();
    labels.dedup();
    let mut series: Vec<Series> = labels
        .iter()
        .zip(PALETTE.iter().cycle())
        .map(|(l, &color)| {
            let points = cold.iter().filter(|m| label(m) == *l).map(|m| (m.t as f64, m.time_us.median)).collect();
            Series { name: l.clone(), points, color, reference: false }
        })
        .collect();
    for (name, color) in [
        (BaselineId::TorchCompileGraph, RGBColor(148, 103, 189)),
        (BaselineId::HfEagerGraph, RGBColor(120, 120, 120)),
        (BaselineId::CublasGemmGraph, RGBColor(140, 86, 75)),
    ] {
        let points: Vec<_> = run
            .baselines
            .iter()
            .filter(|b| b.name == name && b.cache == Cache::Cold)
            .map(|b| (b.t as f64, b.time_us.median))
            .collect();
        if !points.is_empty() {
            series.push(Series { name: name.to_string(), points, color, reference: true });
        }
    }
    let mut floor: Vec<(f64, f64)> = cold.iter().map(|m| (m.t as f64, m.floor_us)).collect();
    floor.sort_by(|a, b| a.0.total_cmp(&b.0));
    floor.dedup_by(|a, b| a.0 == b.0);
    series.push(Series { name: "floor (speed of light)".into(), points: floor, color: BLACK, reference: true });
    let run_ts = run.config.tokens.iter();
    let bound: Vec<(f64, f64)> = run_ts
        .filter_map(|&t| roofline::mma_sync_floor_s(&Shape::qwen3_06b(t), &run.ceilings).map(|s| (t as f64, s * 1e6)))
        .collect();
    if !bound.is_empty() {
        let name = "any mma.sync kernel (bound)".into();
        series.push(Series { name, points: bound, color: RGBColor(227, 119, 194), reference: true });
    }
    series
}
