//! Inline SVG charts across the configurations of a sweep: a figure (mean with the min–max of the
//! repetitions) against a swept key, one line per value of the other swept keys; or, when no key
//! has a chart of its own, one bar per configuration.
//!
//! Like [`crate::charts`], these draw with plotters' SVG backend into a `String` and load nothing.
//! They take figures already aggregated by [`crate::sweep`]; they never read a results file.

use plotters::element::{DashedPathElement, PathElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::{
    draw, fmt_tick, font, op_color, Area, DrawResult, AXIS_DESC_PX, CHART_WIDTH_PX, GRID_COLOR,
    LEGEND_PX, TICK_PX,
};
use crate::ReportError;

pub const LINE_CHART_HEIGHT_PX: u32 = 320;
/// A chart draws at most this many lines; the tables carry every configuration.
pub const LINES_MAX: usize = 8;
/// The bar chart shows at most this many configurations.
pub const BARS_MAX: usize = 40;
const BAR_ROW_PX: u32 = 26;
const LEGEND_WIDTH_MIN_PX: u32 = 150;
const LEGEND_WIDTH_MAX_PX: u32 = 330;
/// Roughly how wide one legend or label character is at the sizes used here.
const CHAR_PX: f64 = 7.4;
const IDEAL_COLOR: RGBColor = RGBColor(110, 110, 110);
/// The label of the ideal line in the scaling chart's legend.
pub const IDEAL_LABEL: &str = "ideal linear";

/// One aggregated figure at one value of the swept key.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// The configurations that share every swept value but the one on the x axis.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    /// Ordered by `x`.
    pub points: Vec<Point>,
}

/// What one line chart shows.
pub struct LineChart<'a> {
    /// Names the chart in errors.
    pub name: &'static str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub lines: &'a [Line],
    /// Draw each line's ideal: its first point's `mean / x`, times `x`.
    pub ideal: bool,
}

/// A line chart with error bars and a tick at every x value that occurs.
pub fn line_svg(spec: &LineChart<'_>) -> Result<String, ReportError> {
    let lines = &spec.lines[..spec.lines.len().min(LINES_MAX)];
    let xs = distinct_xs(lines);
    let (Some(&x_first), Some(&x_last)) = (xs.first(), xs.last()) else {
        return Err(ReportError::Chart {
            chart: spec.name,
            message: "no points to draw".into(),
        });
    };
    let pad = if x_last > x_first {
        (x_last - x_first) * 0.06
    } else {
        0.5
    };
    let x_lo = if spec.ideal { 0.0 } else { x_first - pad };
    let x_hi = x_last + pad;
    let ideals: Vec<Vec<(f64, f64)>> = if spec.ideal {
        lines.iter().map(ideal_points).collect()
    } else {
        Vec::new()
    };
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.max.max(p.mean)))
        .chain(ideals.iter().flatten().map(|(_, y)| *y))
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max);
    let y_max = (y_max * 1.12).max(1.0);

    let mut labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
    if spec.ideal {
        labels.push(IDEAL_LABEL);
    }
    let legend_width = legend_width_px(&labels);

    let mut svg = String::new();
    draw(&mut svg, LINE_CHART_HEIGHT_PX, |root| {
        let (plot, legend_area) = root.split_horizontally(CHART_WIDTH_PX - legend_width);
        let mut chart = ChartBuilder::on(&plot)
            .margin(10)
            .x_label_area_size(46)
            .y_label_area_size(62)
            .build_cartesian_2d(x_lo..x_hi, 0.0..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(WHITE)
            .bold_line_style(GRID_COLOR)
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .y_label_formatter(&|y| fmt_tick(*y))
            .label_style(font(TICK_PX))
            .axis_desc_style(font(AXIS_DESC_PX))
            .draw()?;
        // A grid line and a label at each value the sweep ran, rather than at round numbers.
        for x in &xs {
            chart.draw_series(std::iter::once(PathElement::new(
                [(*x, 0.0), (*x, y_max)],
                GRID_COLOR.stroke_width(1),
            )))?;
            let (px, py) = chart.backend_coord(&(*x, 0.0));
            root.draw(&Text::new(
                fmt_tick(*x),
                (px, py + 6),
                font(TICK_PX)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        let mut legend = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let color = op_color(i);
            if let Some(ideal) = ideals.get(i) {
                chart.draw_series(DashedLineSeries::new(
                    ideal.iter().copied(),
                    6,
                    4,
                    color.mix(0.55).stroke_width(1),
                ))?;
            }
            let style = color.stroke_width(2);
            chart.draw_series(LineSeries::new(
                line.points.iter().map(|p| (p.x, p.mean)),
                style,
            ))?;
            for p in &line.points {
                if p.max > p.min {
                    draw_error_bar(&mut chart, p, color)?;
                }
            }
            chart.draw_series(
                line.points
                    .iter()
                    .map(|p| Circle::new((p.x, p.mean), 3, color.filled())),
            )?;
            legend.push((line.label.clone(), style, false));
        }
        if spec.ideal {
            legend.push((IDEAL_LABEL.into(), IDEAL_COLOR.stroke_width(1), true));
        }
        draw_legend(&legend_area, &legend)
    })
    .map_err(|message| ReportError::Chart {
        chart: spec.name,
        message,
    })?;
    Ok(svg)
}

/// One horizontal bar per configuration (mean, with the min–max of its repetitions), labelled
/// with its parameters, for sweeps whose keys have no chart of their own.
pub fn bars_svg(x_desc: &str, bars: &[(String, Point)]) -> Result<String, ReportError> {
    let bars = &bars[..bars.len().min(BARS_MAX)];
    if bars.is_empty() {
        return Err(ReportError::Chart {
            chart: "per-configuration",
            message: "no configurations to draw".into(),
        });
    }
    let n = bars.len();
    let x_max = bars
        .iter()
        .map(|(_, p)| p.max.max(p.mean))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let x_max = (x_max * 1.15).max(1.0);
    let label_chars = bars
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let label_px = ((label_chars as f64 * CHAR_PX) as u32 + 24).clamp(60, 420);
    let height = 70 + BAR_ROW_PX * n as u32;
    let mut svg = String::new();
    draw(&mut svg, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(42)
            .y_label_area_size(label_px)
            .build_cartesian_2d(0.0..x_max, -0.5..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .light_line_style(WHITE)
            .bold_line_style(GRID_COLOR)
            .x_desc(x_desc)
            .x_label_formatter(&|x| fmt_tick(*x))
            .label_style(font(TICK_PX))
            .axis_desc_style(font(AXIS_DESC_PX))
            .draw()?;
        let color = op_color(0);
        for (i, (label, p)) in bars.iter().enumerate() {
            // The first configuration at the top, as in the table.
            let y = (n - 1 - i) as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.32), (p.mean, y + 0.32)],
                color.mix(0.75).filled(),
            )))?;
            if p.max > p.min {
                let style = BLACK.stroke_width(1);
                chart.draw_series(std::iter::once(PathElement::new(
                    [(p.min, y), (p.max, y)],
                    style,
                )))?;
                for end in [p.min, p.max] {
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((end, y)) + PathElement::new([(0, -5), (0, 5)], style),
                    ))?;
                }
            }
            let (px, py) = chart.backend_coord(&(0.0, y));
            root.draw(&Text::new(
                label.clone(),
                (px - 8, py),
                font(TICK_PX)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
            let (vx, vy) = chart.backend_coord(&(p.max.max(p.mean), y));
            root.draw(&Text::new(
                crate::format::fmt_rate(p.mean),
                (vx + 6, vy),
                font(TICK_PX)
                    .color(&BLACK.mix(0.7))
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        Ok(())
    })
    .map_err(|message| ReportError::Chart {
        chart: "per-configuration",
        message,
    })?;
    Ok(svg)
}

/// Every x value of the lines, ascending, without repeats.
fn distinct_xs(lines: &[Line]) -> Vec<f64> {
    let mut xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.x))
        .filter(|x| x.is_finite())
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs
}

/// The line's ideal: proportional to x, through its first point (x > 0 there).
fn ideal_points(line: &Line) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (line.points.first(), line.points.last()) else {
        return Vec::new();
    };
    if first.x <= 0.0 || !first.mean.is_finite() {
        return Vec::new();
    }
    let per_x = first.mean / first.x;
    vec![(first.x, first.mean), (last.x, per_x * last.x)]
}

/// A vertical bar from the lowest to the highest repetition, with caps.
fn draw_error_bar<'a>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    p: &Point,
    color: RGBColor,
) -> DrawResult {
    let style = color.stroke_width(1);
    chart.draw_series(std::iter::once(PathElement::new(
        [(p.x, p.min), (p.x, p.max)],
        style,
    )))?;
    for end in [p.min, p.max] {
        chart.draw_series(std::iter::once(
            EmptyElement::at((p.x, end)) + PathElement::new([(-5, 0), (5, 0)], style),
        ))?;
    }
    Ok(())
}

/// Wide enough for the longest label, within bounds.
pub(crate) fn legend_width_px(labels: &[&str]) -> u32 {
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    ((chars as f64 * CHAR_PX) as u32 + 50).clamp(LEGEND_WIDTH_MIN_PX, LEGEND_WIDTH_MAX_PX)
}

/// Label, style, dashed.
pub(crate) type LegendRow = (String, ShapeStyle, bool);

pub(crate) fn draw_legend(area: &Area<'_>, entries: &[LegendRow]) -> DrawResult {
    const ROW_PX: i32 = 22;
    const SWATCH_PX: i32 = 26;
    let text = font(LEGEND_PX)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let x = 8;
    let mut y = 24;
    for (label, style, dashed) in entries {
        if *dashed {
            area.draw(&DashedPathElement::new(
                [(x, y), (x + SWATCH_PX, y)],
                6,
                4,
                *style,
            ))?;
        } else {
            area.draw(&PathElement::new([(x, y), (x + SWATCH_PX, y)], *style))?;
            area.draw(&Circle::new(
                (x + SWATCH_PX / 2, y),
                3,
                style.color.filled(),
            ))?;
        }
        area.draw(&Text::new(
            label.clone(),
            (x + SWATCH_PX + 6, y),
            text.clone(),
        ))?;
        y += ROW_PX;
    }
    Ok(())
}
