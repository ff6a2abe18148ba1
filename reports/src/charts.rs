//! Inline SVG charts of one run over time: throughput, and latency per operation, each with the
//! warmup, the fault windows and the view changes drawn in.
//!
//! Charts are drawn with plotters' SVG backend into a `String`. Text becomes `<text>` elements in
//! a generic `sans-serif` family that the browser resolves, so nothing here loads a font, and the
//! SVG needs no script or stylesheet. Every string drawn comes from this crate's own formatting or
//! from the results file; plotters escapes text it writes, so the SVG is safe to embed as is.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{DashedPathElement, PathElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::schema::{PointFigures, Results, SecondPoint};
use crate::ReportError;

/// Charts are drawn at this size and scale down with the page (the SVG has a viewBox).
pub const CHART_WIDTH_PX: u32 = 900;
pub const THROUGHPUT_HEIGHT_PX: u32 = 300;
pub const LATENCY_HEIGHT_PX: u32 = 230;
/// The right-hand column of each chart that holds its legend.
const LEGEND_WIDTH_PX: u32 = 150;
/// More view-change marks than this would be a solid block; the rest are left out.
pub const VIEW_CHANGE_MARKS_MAX: usize = 200;
/// View changes closer than this (one per node, seen in the same poll) make one mark.
const VIEW_CHANGE_MERGE_S: f64 = 0.25;
/// Fault labels are stacked in this many rows so that neighbouring faults stay readable.
const FAULT_LABEL_ROWS: usize = 3;

pub(crate) const FONT: &str = "sans-serif";
/// Text sizes in CSS pixels as the SVG shows them.
pub(crate) const TICK_PX: f64 = 12.5;
pub(crate) const AXIS_DESC_PX: f64 = 13.5;
pub(crate) const LEGEND_PX: f64 = 13.5;
pub(crate) const MARK_LABEL_PX: f64 = 12.0;
const OP_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
pub(crate) const FAULT_COLOR: RGBColor = RGBColor(214, 39, 40);
const FAULT_LABEL_COLOR: RGBColor = RGBColor(150, 20, 20);
const VIEW_COLOR: RGBColor = RGBColor(118, 66, 170);
const ERROR_COLOR: RGBColor = RGBColor(60, 60, 60);
pub(crate) const GRID_COLOR: RGBColor = RGBColor(232, 232, 232);

/// The colour of the `index`-th operation kind, the same in every chart and table.
pub fn op_color_css(index: usize) -> String {
    let RGBColor(r, g, b) = OP_COLORS[index % OP_COLORS.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// A font that renders at `px`: plotters writes sizes into SVG as 1/1.24 of the size asked for.
pub(crate) fn font(px: f64) -> FontDesc<'static> {
    (FONT, px * 1.24).into_font()
}

pub(crate) fn op_color(index: usize) -> RGBColor {
    OP_COLORS[index % OP_COLORS.len()]
}

/// One latency chart: the operation it is about and its SVG.
pub struct LatencyChart {
    pub op: String,
    pub svg: String,
}

/// What every time chart of a run shares: the x range and what happened along it.
struct Timeline {
    x_max_s: f64,
    warmup_s: f64,
    /// (start, end, label) of each fault, clipped to the run.
    faults: Vec<(f64, f64, String)>,
    /// Times of view changes, merged and capped.
    view_changes_s: Vec<f64>,
}

impl Timeline {
    fn of(results: &Results) -> Timeline {
        let series_end_s = results
            .operations
            .series
            .iter()
            .map(|p| p.t_s as f64 + 1.0)
            .fold(0.0, f64::max);
        let fault_end_s = results
            .faults
            .iter()
            .map(|f| f.end_s.unwrap_or(f.start_s).max(f.start_s))
            .fold(0.0, f64::max);
        let x_max_s = series_end_s
            .max(results.duration_s().unwrap_or(0.0))
            .max(fault_end_s)
            .max(1.0);
        let faults = results
            .faults
            .iter()
            .filter(|f| f.start_s.is_finite() && f.start_s < x_max_s)
            .map(|f| {
                let start = f.start_s.max(0.0);
                let end = f.end_s.unwrap_or(x_max_s).clamp(start, x_max_s);
                (start, end, f.label())
            })
            .collect();
        // Each node's first record is the view the poller found it in, not a change.
        let mut seen = std::collections::BTreeSet::new();
        let mut times: Vec<f64> = results
            .view_changes
            .iter()
            .filter(|v| !seen.insert(v.node))
            .map(|v| v.t_s)
            .filter(|t| t.is_finite() && *t > 0.0 && *t <= x_max_s)
            .collect();
        times.sort_by(f64::total_cmp);
        let mut view_changes_s: Vec<f64> = Vec::new();
        for t in times {
            if view_changes_s.len() == VIEW_CHANGE_MARKS_MAX {
                break;
            }
            if view_changes_s
                .last()
                .is_none_or(|last| t - last > VIEW_CHANGE_MERGE_S)
            {
                view_changes_s.push(t);
            }
        }
        Timeline {
            x_max_s,
            warmup_s: results.operations.warmup_s.clamp(0.0, x_max_s),
            faults,
            view_changes_s,
        }
    }
}

impl Timeline {
    /// At most one x label per second, and not more than fit across the chart.
    fn x_labels(&self) -> usize {
        const X_LABELS_MAX: usize = 12;
        (self.x_max_s.ceil() as usize + 1).min(X_LABELS_MAX)
    }
}

/// A linear-axis tick: whole numbers as such, others with one decimal.
pub(crate) fn fmt_tick(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Throughput per operation (successes per second of intended start) and errors per second;
/// `None` when the run has no series.
pub fn throughput_svg(results: &Results) -> Result<Option<String>, ReportError> {
    if results.operations.series.is_empty() {
        return Ok(None);
    }
    let timeline = Timeline::of(results);
    let ops = results.op_names();
    let series = &results.operations.series;
    let per_op: Vec<Vec<(f64, f64)>> = ops
        .iter()
        .map(|op| {
            series
                .iter()
                .map(|p| {
                    let count = p.per_op.get(op).map_or(0, |f| f.count);
                    (p.t_s as f64 + 0.5, count as f64)
                })
                .collect()
        })
        .collect();
    let errors: Vec<(f64, f64)> = series
        .iter()
        .map(|p| {
            let errors: u64 = p.per_op.values().map(|f| f.errors).sum();
            (p.t_s as f64 + 0.5, errors as f64)
        })
        .collect();
    let any_errors = errors.iter().any(|(_, e)| *e > 0.0);
    let y_max = per_op
        .iter()
        .flatten()
        .chain(errors.iter())
        .map(|(_, y)| *y)
        .fold(0.0, f64::max);
    let y_max = (y_max * 1.15).max(1.0);

    let mut svg = String::new();
    draw(&mut svg, THROUGHPUT_HEIGHT_PX, |root| {
        let (plot, legend_area) = root.split_horizontally(CHART_WIDTH_PX - LEGEND_WIDTH_PX);
        let mut chart = linear_time_chart(
            &plot,
            &timeline,
            timeline.x_max_s,
            y_max,
            "operations per second",
        )?;
        let mut legend = Vec::new();
        for (i, (op, points)) in ops.iter().zip(&per_op).enumerate() {
            let style = op_color(i).stroke_width(2);
            chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
            legend.push(LegendEntry::Line(op.clone(), style, false));
        }
        if any_errors {
            let style = ERROR_COLOR.stroke_width(1);
            chart.draw_series(DashedLineSeries::new(errors.iter().copied(), 4, 3, style))?;
            legend.push(LegendEntry::Line("errors (all)".into(), style, true));
        }
        draw_legend(&legend_area, legend, &timeline)
    })
    .map_err(|message| ReportError::Chart {
        chart: "throughput",
        message,
    })?;
    Ok(Some(svg))
}

/// One chart per operation of its p50 and p99 latency per second, all on the same logarithmic
/// axis so that they compare at a glance and a fault's spike does not flatten the rest.
/// Seconds without a success of that kind leave a gap.
pub fn latency_svgs(results: &Results) -> Result<Vec<LatencyChart>, ReportError> {
    let timeline = Timeline::of(results);
    let series = &results.operations.series;
    let ops = results.op_names();
    let lines: Vec<(Segments, Segments)> = ops
        .iter()
        .map(|op| {
            (
                latency_segments(series, op, |f| f.p50_ms),
                latency_segments(series, op, |f| f.p99_ms),
            )
        })
        .collect();
    let all = lines
        .iter()
        .flat_map(|(p50, p99)| p50.iter().chain(p99))
        .flatten()
        .map(|(_, y)| *y)
        .filter(|y| y.is_finite() && *y > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if hi <= 0.0 {
        return Ok(Vec::new());
    }
    // Whole decades, at least one, so that the axis labels are round numbers.
    let y_min = 10f64.powf(lo.log10().floor());
    let y_max = 10f64.powf(hi.log10().ceil()).max(y_min * 10.0);
    let decades = (y_max / y_min).log10().round() as usize;

    let mut charts = Vec::new();
    for (i, (op, (p50, p99))) in ops.iter().zip(&lines).enumerate() {
        if p50.is_empty() && p99.is_empty() {
            continue;
        }
        let mut svg = String::new();
        draw(&mut svg, LATENCY_HEIGHT_PX, |root| {
            let (plot, legend_area) = root.split_horizontally(CHART_WIDTH_PX - LEGEND_WIDTH_PX);
            let mut chart = ChartBuilder::on(&plot)
                .margin(10)
                .x_label_area_size(42)
                .y_label_area_size(62)
                .build_cartesian_2d(0.0..timeline.x_max_s, (y_min..y_max).log_scale())?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(GRID_COLOR)
                .x_desc("seconds since the load started")
                .y_desc(format!("{op} latency, ms (log)"))
                .x_labels(timeline.x_labels())
                .x_label_formatter(&|x| fmt_tick(*x))
                // Few enough labels that plotters marks only the decades.
                .y_labels(decades + 2)
                .y_label_formatter(&|y| fmt_axis_ms(*y))
                .label_style(font(TICK_PX))
                .axis_desc_style(font(AXIS_DESC_PX))
                .draw()?;
            draw_timeline(&mut chart, &timeline, y_min, y_max)?;
            let color = op_color(i);
            let p50_style = color.mix(0.55).stroke_width(1);
            let p99_style = color.stroke_width(2);
            for segment in p50 {
                chart.draw_series(LineSeries::new(segment.iter().copied(), p50_style))?;
            }
            for segment in p99 {
                chart.draw_series(LineSeries::new(segment.iter().copied(), p99_style))?;
            }
            let legend = vec![
                LegendEntry::Line(format!("{op} p99"), p99_style, false),
                LegendEntry::Line(format!("{op} p50"), p50_style, false),
            ];
            draw_legend(&legend_area, legend, &timeline)
        })
        .map_err(|message| ReportError::Chart {
            chart: "latency",
            message,
        })?;
        charts.push(LatencyChart {
            op: op.clone(),
            svg,
        });
    }
    Ok(charts)
}

/// A tick on the logarithmic latency axis: `0.1`, `1`, `10`, `1000`.
fn fmt_axis_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let text = format!("{ms:.3}");
        text.trim_end_matches('0').to_string()
    }
}

/// Runs of consecutive points of one line; a gap between runs is drawn as a gap.
type Segments = Vec<Vec<(f64, f64)>>;

/// One latency figure of `op` per second, split where a second has no success of that kind.
fn latency_segments(series: &[SecondPoint], op: &str, pick: fn(&PointFigures) -> f64) -> Segments {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for p in series {
        match p.per_op.get(op).filter(|f| f.count > 0 && pick(f) > 0.0) {
            Some(f) => current.push((p.t_s as f64 + 0.5, pick(f))),
            None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;
pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws one chart of `height` into `svg`, turning plotters' errors into a message.
pub(crate) fn draw(
    svg: &mut String,
    height: u32,
    body: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (CHART_WIDTH_PX, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    body(&root).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// The warmup, fault windows (shaded, labelled at the top) and view changes (dashed lines), drawn
/// under the data.
/// A chart over the run's seconds with a linear y axis from 0, its mesh drawn and the
/// timeline (warmup, faults, view changes) drawn in.
fn linear_time_chart<'a>(
    plot: &Area<'a>,
    timeline: &Timeline,
    x_max: f64,
    y_max: f64,
    y_desc: &str,
) -> Result<
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    Box<dyn std::error::Error>,
> {
    let mut chart = ChartBuilder::on(plot)
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID_COLOR)
        .x_desc("seconds since the load started")
        .y_desc(y_desc)
        .x_labels(timeline.x_labels())
        .x_label_formatter(&|x| fmt_tick(*x))
        .y_label_formatter(&|y| fmt_tick(*y))
        .label_style(font(TICK_PX))
        .axis_desc_style(font(AXIS_DESC_PX))
        .draw()?;
    draw_timeline(&mut chart, timeline, 0.0, y_max)?;
    Ok(chart)
}

fn draw_timeline<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    timeline: &Timeline,
    y_min: f64,
    y_max: f64,
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    if timeline.warmup_s > 0.0 {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y_min), (timeline.warmup_s, y_max)],
            BLACK.mix(0.06).filled(),
        )))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((0.0, y_max))
                + Text::new(
                    "warmup",
                    (4, 4),
                    font(MARK_LABEL_PX)
                        .color(&BLACK.mix(0.55))
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                ),
        ))?;
    }
    for (i, (start, end, label)) in timeline.faults.iter().enumerate() {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(*start, y_min), (*end, y_max)],
            FAULT_COLOR.mix(0.13).filled(),
        )))?;
        let row = (i % FAULT_LABEL_ROWS) as i32;
        chart.draw_series(std::iter::once(
            EmptyElement::at((*start, y_max))
                + Text::new(
                    label.clone(),
                    (4, 4 + 15 * row),
                    font(MARK_LABEL_PX)
                        .color(&FAULT_LABEL_COLOR)
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                ),
        ))?;
    }
    for t in &timeline.view_changes_s {
        chart.draw_series(DashedLineSeries::new(
            [(*t, y_min), (*t, y_max)],
            5,
            3,
            VIEW_COLOR.mix(0.8).stroke_width(1),
        ))?;
    }
    Ok(())
}

enum LegendEntry {
    /// Label, style, dashed.
    Line(String, ShapeStyle, bool),
}

/// The legend, in the chart's right-hand column: the data lines, then the shading and marks
/// that this run has.
fn draw_legend(area: &Area<'_>, entries: Vec<LegendEntry>, timeline: &Timeline) -> DrawResult {
    const ROW_PX: i32 = 22;
    const SWATCH_PX: i32 = 26;
    let text = font(LEGEND_PX)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let x = 8;
    let mut y = 24;
    for LegendEntry::Line(label, style, dashed) in entries {
        if dashed {
            area.draw(&DashedPathElement::new(
                [(x, y), (x + SWATCH_PX, y)],
                4,
                3,
                style,
            ))?;
        } else {
            area.draw(&PathElement::new([(x, y), (x + SWATCH_PX, y)], style))?;
        }
        area.draw(&Text::new(label, (x + SWATCH_PX + 6, y), text.clone()))?;
        y += ROW_PX;
    }
    if !timeline.faults.is_empty() {
        area.draw(&Rectangle::new(
            [(x, y - 7), (x + SWATCH_PX, y + 7)],
            FAULT_COLOR.mix(0.13).filled(),
        ))?;
        area.draw(&Text::new("fault", (x + SWATCH_PX + 6, y), text.clone()))?;
        y += ROW_PX;
    }
    if !timeline.view_changes_s.is_empty() {
        area.draw(&DashedPathElement::new(
            [(x + SWATCH_PX / 2, y - 8), (x + SWATCH_PX / 2, y + 8)],
            4,
            2,
            VIEW_COLOR.mix(0.8).stroke_width(1),
        ))?;
        area.draw(&Text::new(
            "view change",
            (x + SWATCH_PX + 6, y),
            text.clone(),
        ))?;
        y += ROW_PX;
    }
    if timeline.warmup_s > 0.0 {
        area.draw(&Rectangle::new(
            [(x, y - 7), (x + SWATCH_PX, y + 7)],
            BLACK.mix(0.06).filled(),
        ))?;
        area.draw(&Text::new("warmup", (x + SWATCH_PX + 6, y), text))?;
    }
    Ok(())
}

/// Workers drawn in the queue chart at most (the busiest); the rest are left out, and said so.
pub const QUEUE_WORKERS_MAX: usize = 12;
const SPAWN_COLOR: RGBColor = RGBColor(44, 160, 44);
const EXIT_COLOR: RGBColor = RGBColor(214, 39, 40);
const OVERFLOW_COLOR: RGBColor = RGBColor(255, 127, 14);

/// The web cluster's Figure 8: each worker's queue length (the manager's smoothed hint) over
/// time, with the manager's spawns and restarts, exits, and overflow recruitments and releases
/// marked; `None` when the run polled no workers.
pub fn web_queue_svg(results: &Results) -> Result<Option<String>, ReportError> {
    let Some(web) = &results.web else {
        return Ok(None);
    };
    if web.samples.iter().all(|s| s.workers.is_empty()) {
        return Ok(None);
    }
    let timeline = Timeline::of(results);
    // Workers by their largest queue, busiest first.
    let mut peaks: Vec<(String, f64)> = Vec::new();
    for s in &web.samples {
        for w in &s.workers {
            match peaks.iter_mut().find(|(k, _)| *k == w.key) {
                Some((_, peak)) => *peak = peak.max(w.queue),
                None => peaks.push((w.key.clone(), w.queue)),
            }
        }
    }
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    peaks.truncate(QUEUE_WORKERS_MAX);
    peaks.sort_by(|a, b| a.0.cmp(&b.0));
    let lines: Vec<(String, Vec<(f64, f64)>)> = peaks
        .iter()
        .map(|(key, _)| {
            let points = web
                .samples
                .iter()
                .filter_map(|s| {
                    s.workers
                        .iter()
                        .find(|w| w.key == *key)
                        .map(|w| (s.t_s, w.queue))
                })
                .collect();
            (key.clone(), points)
        })
        .collect();
    let y_max = (peaks.iter().map(|(_, p)| *p).fold(0.0, f64::max) * 1.15).max(1.0);
    let x_max = web
        .samples
        .iter()
        .map(|s| s.t_s)
        .fold(timeline.x_max_s, f64::max);
    let marks: Vec<(f64, RGBColor)> = web
        .events
        .iter()
        .filter(|e| e.t_s.is_finite() && e.t_s >= 0.0 && e.t_s <= x_max)
        .filter_map(|e| {
            let color = match e.kind.as_str() {
                "spawn" | "restart" | "failover" | "adopt" => SPAWN_COLOR,
                "exit" => EXIT_COLOR,
                "overflow" | "release" => OVERFLOW_COLOR,
                _ => return None,
            };
            Some((e.t_s, color))
        })
        .take(VIEW_CHANGE_MARKS_MAX)
        .collect();
    let mut svg = String::new();
    draw(&mut svg, THROUGHPUT_HEIGHT_PX, |root| {
        let (plot, legend_area) = root.split_horizontally(CHART_WIDTH_PX - LEGEND_WIDTH_PX);
        let mut chart = linear_time_chart(
            &plot,
            &timeline,
            x_max,
            y_max,
            "queue length (manager's hint)",
        )?;
        for (t, color) in &marks {
            chart.draw_series(DashedLineSeries::new(
                [(*t, 0.0), (*t, y_max)],
                5,
                3,
                color.mix(0.9).stroke_width(1),
            ))?;
        }
        let mut legend = Vec::new();
        for (i, (key, points)) in lines.iter().enumerate() {
            let style = op_color(i).stroke_width(2);
            chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
            legend.push(LegendEntry::Line(key.clone(), style, false));
        }
        for (label, color) in [
            ("spawn / restart", SPAWN_COLOR),
            ("exit", EXIT_COLOR),
            ("overflow", OVERFLOW_COLOR),
        ] {
            if marks.iter().any(|(_, c)| *c == color) {
                legend.push(LegendEntry::Line(label.into(), color.stroke_width(1), true));
            }
        }
        draw_legend(&legend_area, legend, &timeline)
    })
    .map_err(|message| ReportError::Chart {
        chart: "queue lengths",
        message,
    })?;
    Ok(Some(svg))
}
