//! The inline SVG chart of one metric over a history: each run's figure as a faint dot, each
//! commit's mean as a line, the levels between change points as dashed steps, and each change
//! point as a vertical line (red where the metric got worse, green where it got better).
//!
//! Like [`crate::charts`] and [`crate::sweep_charts`], it draws with plotters' SVG backend into a
//! `String` with their fonts, colours and legend, and loads nothing. It takes figures already
//! worked out by [`crate::history`]; it never reads a results file or decides a change point.

use plotters::element::PathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::{
    draw, font, op_color, AXIS_DESC_PX, CHART_WIDTH_PX, FAULT_COLOR, GRID_COLOR, TICK_PX,
};
use crate::format::fmt_percent;
use crate::sweep_charts::{draw_legend, legend_width_px, LegendRow};
use crate::ReportError;

pub const HISTORY_CHART_HEIGHT_PX: u32 = 280;
/// At most this many commits are labelled on the x axis (every k-th, k a round number).
pub const X_LABELS_MAX: usize = 20;
/// Beyond this many runs in one chart, the runs' dots are left out (the means stay).
pub const RUN_DOTS_MAX: usize = 20_000;
/// Beyond this many commits, the means are a line without a dot each.
pub const MEAN_DOTS_MAX: usize = 200;
/// The y axis spans at least this fraction of the figures' level.
pub const Y_SPAN_MIN_RELATIVE: f64 = 0.2;
/// Where a metric got better: the third of the operation colours (green).
const IMPROVED_INDEX: usize = 2;

/// A change point's mark: between the last commit of the old level and the first of the new.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub x: f64,
    pub regressed: bool,
}

/// What one chart shows; x is the commit's position in the history.
#[derive(Debug, Clone)]
pub struct SeriesChart {
    pub y_desc: String,
    /// Figures are fractions, labelled as percentages (the error rate).
    pub percent: bool,
    /// Commits in the history (the x axis runs over all of them).
    pub commits: usize,
    /// (commit, figure) of each run.
    pub runs: Vec<(f64, f64)>,
    /// (commit, mean) of each commit that has the metric, in order.
    pub means: Vec<(f64, f64)>,
    /// (from x, to x, level) of each segment.
    pub levels: Vec<(f64, f64, f64)>,
    pub marks: Vec<Mark>,
}

/// The chart as SVG.
pub fn series_svg(spec: &SeriesChart) -> Result<String, ReportError> {
    let figures = || {
        spec.runs
            .iter()
            .chain(&spec.means)
            .map(|(_, y)| *y)
            .chain(spec.levels.iter().map(|(_, _, y)| *y))
            .filter(|y| y.is_finite())
    };
    let (lo, hi) = figures().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(ReportError::Chart {
            chart: "history",
            message: "no figures to draw".into(),
        });
    }
    // Noise of a percent or two should look like it, not fill the chart.
    let mid = (lo + hi) / 2.0;
    let span_min = Y_SPAN_MIN_RELATIVE * mid.abs();
    let (lo, hi) = if hi - lo < span_min {
        let lo_expanded = mid - span_min / 2.0;
        let lo_expanded = if lo >= 0.0 {
            lo_expanded.max(0.0)
        } else {
            lo_expanded
        };
        (lo_expanded, lo_expanded + span_min)
    } else {
        (lo, hi)
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.12
    } else if hi != 0.0 {
        hi.abs() * 0.1
    } else {
        1.0
    };
    let y_lo = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    let y_hi = hi + pad;
    let y_span = y_hi - y_lo;
    let x_lo = -0.5;
    let x_hi = spec.commits.max(1) as f64 - 0.5;

    let mean_color = op_color(0);
    let level_color = op_color(1);
    let improved_color = op_color(IMPROVED_INDEX);
    let mut legend: Vec<LegendRow> = vec![
        ("mean per commit".into(), mean_color.stroke_width(2), false),
        ("level".into(), level_color.stroke_width(2), true),
    ];
    if spec.marks.iter().any(|m| m.regressed) {
        legend.push(("got worse".into(), FAULT_COLOR.stroke_width(2), false));
    }
    if spec.marks.iter().any(|m| !m.regressed) {
        legend.push(("got better".into(), improved_color.stroke_width(2), false));
    }
    let labels: Vec<&str> = legend.iter().map(|(l, _, _)| l.as_str()).collect();
    let legend_width = legend_width_px(&labels);
    let step = label_step(spec.commits);

    let mut svg = String::new();
    draw(&mut svg, HISTORY_CHART_HEIGHT_PX, |root| {
        let (plot, legend_area) = root.split_horizontally(CHART_WIDTH_PX - legend_width);
        let mut chart = ChartBuilder::on(&plot)
            .margin(10)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(WHITE)
            .bold_line_style(GRID_COLOR)
            .x_desc("commit (position in the history; names in the table below)")
            .y_desc(spec.y_desc.as_str())
            .y_label_formatter(&|y| {
                if spec.percent {
                    fmt_percent(*y)
                } else {
                    fmt_axis(*y, y_span)
                }
            })
            .label_style(font(TICK_PX))
            .axis_desc_style(font(AXIS_DESC_PX))
            .draw()?;
        // A grid line and a label at every `step`-th commit.
        for i in (0..spec.commits).step_by(step) {
            let x = i as f64;
            chart.draw_series(std::iter::once(PathElement::new(
                [(x, y_lo), (x, y_hi)],
                GRID_COLOR.stroke_width(1),
            )))?;
            let (px, py) = chart.backend_coord(&(x, y_lo));
            root.draw(&Text::new(
                i.to_string(),
                (px, py + 6),
                font(TICK_PX)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        for mark in &spec.marks {
            let color = if mark.regressed {
                FAULT_COLOR
            } else {
                improved_color
            };
            chart.draw_series(std::iter::once(PathElement::new(
                [(mark.x, y_lo), (mark.x, y_hi)],
                color.mix(0.85).stroke_width(2),
            )))?;
        }
        if spec.runs.len() <= RUN_DOTS_MAX {
            chart.draw_series(
                spec.runs
                    .iter()
                    .filter(|(_, y)| y.is_finite())
                    .map(|(x, y)| Circle::new((*x, *y), 2, mean_color.mix(0.3).filled())),
            )?;
        }
        for (from, to, y) in &spec.levels {
            chart.draw_series(DashedLineSeries::new(
                [(*from, *y), (*to, *y)],
                6,
                4,
                level_color.stroke_width(2),
            ))?;
        }
        chart.draw_series(LineSeries::new(
            spec.means.iter().copied(),
            mean_color.stroke_width(2),
        ))?;
        if spec.means.len() <= MEAN_DOTS_MAX {
            chart.draw_series(
                spec.means
                    .iter()
                    .map(|(x, y)| Circle::new((*x, *y), 3, mean_color.filled())),
            )?;
        }
        draw_legend(&legend_area, &legend)
    })
    .map_err(|message| ReportError::Chart {
        chart: "history",
        message,
    })?;
    Ok(svg)
}

/// Every how many commits the x axis is labelled: 1, 2, 5, 10, 20, 50, … so that at most
/// [`X_LABELS_MAX`] labels show.
fn label_step(commits: usize) -> usize {
    let mut decade = 1usize;
    loop {
        for step in [decade, 2 * decade, 5 * decade] {
            if commits.div_ceil(step) <= X_LABELS_MAX {
                return step;
            }
        }
        decade = decade.saturating_mul(10);
    }
}

/// A tick on a linear axis with as many decimals as the axis's span needs, and no trailing
/// zeros: `88`, `4.5`, `0.25`.
fn fmt_axis(v: f64, span: f64) -> String {
    let decimals = if span > 0.0 {
        (2.0 - span.log10()).ceil().clamp(0.0, 6.0) as usize
    } else {
        2
    };
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_step_in_round_numbers() {
        assert_eq!(label_step(0), 1);
        assert_eq!(label_step(20), 1);
        assert_eq!(label_step(21), 2);
        assert_eq!(label_step(100), 5);
        assert_eq!(label_step(10_000), 500);
        assert_eq!(fmt_axis(88.0, 20.0), "88");
        assert_eq!(fmt_axis(0.25, 0.5), "0.25");
        assert_eq!(fmt_axis(34.0, 6.0), "34");
        assert_eq!(fmt_axis(4.5, 1.2), "4.5");
    }
}
