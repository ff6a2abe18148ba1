//! Change points in a history of results: one point per commit, in order (each the mean over
//! that commit's runs), for every metric the comparison knows; where the level of a metric moved
//! for good, beyond noise, for a CI job that keeps the main branch's results and for people.
//!
//! How change points are found (as Hunter and Apache Otava do): E-divisive means
//! ([`stats::e_divisive_split`]) proposes the best cut of a series, and binary segmentation
//! looks again in both parts for as long as a cut is a candidate: Welch's t between the two
//! parts (each commit's mean one value, so the noise between commits is what counts; the standard
//! error at least the pooled one, see `two_sided_p`) gives a two-sided p at most 1 − confidence
//! and the levels differ by more than the gate's threshold for the metric, either way:
//! improvements are change points too. Then each candidate is tested against the segments next
//! to it, its p multiplied (Bonferroni) by the number of cuts possible there and by the number of
//! metrics in the history; the weakest that fails goes, until every one holds. As in
//! [`mod@crate::compare`], figures are compared on a log scale (a relative change, geometric
//! means) when all are above zero, and the error rate on its own scale with its absolute
//! threshold.
//!
//! So a flat history of ten commits with about ten metrics shows a false change point in far
//! fewer than 1 − confidence of the histories (in simulations, a flat series of 10 to 100
//! commits with 5–10 % noise shows one in under 0.5 % of series per metric): a history is
//! information, not a gate.
//!
//! Like the rest of this crate it does no I/O and reads no clock: the caller reads the results
//! files and writes what this returns; the same inputs always give the same change points.

use serde::Serialize;

use crate::compare::{
    fmt_change, fmt_figure, fmt_p_value, metric_kinds, Gate, MetricKind, Run, Verdict,
    COMPARE_RUNS_MAX,
};
use crate::format::fmt_percent;
use crate::history_charts::{self, Mark, SeriesChart};
use crate::stats;
use crate::ReportError;

/// A history has at most this many commits (points in each series).
pub const HISTORY_COMMITS_MAX: usize = 10_000;
/// At most this many runs in all the commits of a history.
pub const HISTORY_RUNS_MAX: usize = 100_000;
/// Each segment between change points holds at least this many commits: a change point needs
/// this many on either side, so the last this-many-minus-one commits can never start one.
pub const SEGMENT_COMMITS_MIN: usize = 3;
/// Binary segmentation stops this deep.
pub const SPLIT_DEPTH_MAX: usize = 32;
/// At most this many change points per metric.
pub const CHANGE_POINTS_MAX: usize = 100;

const TEMPLATE_NAME: &str = "history.html";
const TEMPLATE: &str = include_str!("../templates/history.html");
const STYLE: &str = include_str!("../templates/style.css");

/// One commit of a history as the caller read it: a label (the argument it came from) and its
/// runs (parsed results.json files; repetitions of that commit).
#[derive(Debug, Clone)]
pub struct Commit {
    pub label: String,
    pub runs: Vec<serde_json::Value>,
}

/// Every metric's series and change points.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub commits: Vec<CommitSummary>,
    pub metrics: Vec<MetricHistory>,
    /// The gate's confidence: a change point's corrected p-value is at most 1 − confidence.
    pub confidence: f64,
    /// Metrics tested for change points (not left out by the gate, long enough): the number the
    /// p-values are corrected for.
    pub metrics_tested: usize,
    pub segment_commits_min: usize,
    pub change_points: usize,
    pub regressed: usize,
    pub improved: usize,
}

/// A commit of the history: where it is in the series, its label and how many runs it has.
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    pub index: usize,
    pub label: String,
    pub runs: usize,
}

/// One metric over the history.
#[derive(Debug, Clone, Serialize)]
pub struct MetricHistory {
    /// `smtp throughput_per_s`, `smtp p99_ms`, `error_rate`, `recovery 0 convergence_s`.
    pub metric: String,
    /// `ops/s`, `ms`, `s` or `ratio`.
    pub unit: String,
    pub bigger_is_better: bool,
    /// The gate's threshold (relative; absolute for the error rate).
    pub threshold: f64,
    pub absolute: bool,
    /// Whether the series was compared on a log scale (every commit's mean above 0).
    pub log_scale: bool,
    /// Left out by the gate: shown, never tested.
    pub ignored: bool,
    /// The commits that have this metric, in order.
    pub series: Vec<SeriesPoint>,
    /// The levels between change points (geometric means on a log scale).
    pub segments: Vec<Segment>,
    pub change_points: Vec<ChangePoint>,
    /// Why this metric was not tested.
    pub note: Option<String>,
}

/// One commit's figure.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// The commit's position in the history (0-based).
    pub index: usize,
    /// Mean over the commit's runs.
    pub mean: f64,
    /// Each run's figure.
    pub runs: Vec<f64>,
}

/// A stretch of commits at one level: `start..=end` are commit indexes.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub mean: f64,
}

/// Where a metric's level moved.
#[derive(Debug, Clone, Serialize)]
pub struct ChangePoint {
    /// The first commit at the new level (0-based position in the history).
    pub index: usize,
    /// That commit's label.
    pub label: String,
    /// The level of the segment before and after (geometric means on a log scale).
    pub before: f64,
    pub after: f64,
    /// Relative change of the level (infinite from a zero level: `null` in JSON).
    pub change: f64,
    /// `after − before`: what the error rate's threshold applies to.
    pub difference: f64,
    /// Two-sided p-value of Welch's t between the two segments, times the cuts possible there
    /// and the metrics tested (at most 1).
    pub p_value: f64,
    /// `improved` or `regressed`.
    pub verdict: Verdict,
}

/// How one series is tested: the metric's threshold and the family it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Detector {
    /// The change a level must exceed, relative (or absolute, with `absolute`).
    pub threshold: f64,
    pub absolute: bool,
    /// A change point's corrected p-value is at most 1 − confidence.
    pub confidence: f64,
    /// Metrics tested in the history (the Bonferroni factor beyond the cuts).
    pub metrics: usize,
}

/// One series cut into levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub log_scale: bool,
    /// Ordered by position.
    pub splits: Vec<Split>,
    /// The level of each segment (one more than the splits; none for an empty series).
    pub levels: Vec<f64>,
}

/// A change point in positions of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// Where the new level starts.
    pub at: usize,
    pub before: f64,
    pub after: f64,
    pub change: f64,
    pub difference: f64,
    pub p_value: f64,
    /// Welch's two-sided p alone, uncorrected: what a candidate needs.
    pub p_candidate: f64,
}

impl Detector {
    /// The change points of `values` (finite figures, one per commit, in order).
    pub fn segment(&self, values: &[f64]) -> Segmentation {
        let log_scale = !self.absolute && !values.is_empty() && values.iter().all(|v| *v > 0.0);
        let scaled: Vec<f64> = values
            .iter()
            .map(|v| if log_scale { v.ln() } else { *v })
            .collect();
        let mut cuts = Vec::new();
        self.bisect(&scaled, log_scale, (0, scaled.len()), 0, &mut cuts);
        cuts.sort_unstable();
        // Each change point against its neighbouring segments; the weakest that fails goes,
        // until every one holds.
        let splits = loop {
            let splits: Vec<Split> = (0..cuts.len())
                .map(|k| {
                    let start = if k == 0 { 0 } else { cuts[k - 1] };
                    let end = cuts.get(k + 1).copied().unwrap_or(scaled.len());
                    self.test(&scaled, start, cuts[k], end, log_scale)
                })
                .collect();
            let weakest = splits
                .iter()
                .enumerate()
                .filter(|(_, s)| !self.accepts(s, true))
                .max_by(|(_, a), (_, b)| a.p_value.total_cmp(&b.p_value))
                .map(|(k, _)| k);
            match weakest {
                Some(k) => {
                    cuts.remove(k);
                }
                None => break splits,
            }
        };
        let mut levels: Vec<f64> = splits.iter().map(|s| s.before).collect();
        match splits.last() {
            Some(last) => levels.push(last.after),
            None if !scaled.is_empty() => levels.push(level(&scaled, log_scale)),
            None => {}
        }
        Segmentation {
            log_scale,
            splits,
            levels,
        }
    }

    /// Binary segmentation of `scaled[start..end]`: the E-divisive cut, if it is a candidate,
    /// then both parts again. Candidates need p ≤ 1 − confidence only before the correction, as
    /// Otava splits at a looser p than it keeps: a step down and back up again hides from a test
    /// of the first part against the rest, and shows once both cuts are proposed.
    fn bisect(
        &self,
        scaled: &[f64],
        log_scale: bool,
        (start, end): (usize, usize),
        depth: usize,
        cuts: &mut Vec<usize>,
    ) {
        if depth >= SPLIT_DEPTH_MAX || cuts.len() >= CHANGE_POINTS_MAX {
            return;
        }
        let Some((tau, _)) = stats::e_divisive_split(&scaled[start..end], SEGMENT_COMMITS_MIN)
        else {
            return;
        };
        let cut = start + tau;
        // A candidate: the final pass holds it to the corrected p-value.
        if !self.accepts(&self.test(scaled, start, cut, end, log_scale), false) {
            return;
        }
        cuts.push(cut);
        self.bisect(scaled, log_scale, (start, cut), depth + 1, cuts);
        self.bisect(scaled, log_scale, (cut, end), depth + 1, cuts);
    }

    /// `scaled[start..cut]` against `scaled[cut..end]`.
    fn test(&self, scaled: &[f64], start: usize, cut: usize, end: usize, log_scale: bool) -> Split {
        let (left, right) = (&scaled[start..cut], &scaled[cut..end]);
        let (p, p_candidate) = two_sided_p(left, right);
        let cuts_possible = (end - start + 1)
            .saturating_sub(2 * SEGMENT_COMMITS_MIN)
            .max(1);
        let p_value = (p * cuts_possible as f64 * self.metrics.max(1) as f64).min(1.0);
        let (before, after) = (level(left, log_scale), level(right, log_scale));
        let change = if log_scale {
            (stats::mean(right) - stats::mean(left)).exp_m1()
        } else {
            relative(after - before, before)
        };
        Split {
            at: cut,
            before,
            after,
            change,
            difference: after - before,
            p_value,
            p_candidate,
        }
    }

    /// A change point: p at most 1 − confidence (corrected, or before the correction for a
    /// candidate) and a change beyond the threshold.
    fn accepts(&self, split: &Split, corrected: bool) -> bool {
        let moved = if self.absolute {
            split.difference.abs()
        } else {
            split.change.abs()
        };
        let p = if corrected {
            split.p_value
        } else {
            split.p_candidate
        };
        p <= 1.0 - self.confidence && moved > self.threshold
    }
}

/// Two-sided p-values of Welch's t between two segments (each value one commit): `(p, welch)`
/// where `p` has the standard error at least the pooled one (and then its degrees of freedom,
/// n1 + n2 − 2) and `welch` is Welch–Satterthwaite alone. With a segment of three commits, the
/// latter is far too quick to call a difference (in flat series, p ≤ 0.002 came up nine times as
/// often as it should), because three values that happen to lie close together also raise its
/// degrees of freedom; the floor is exact in a flat series and keeps Welch's protection where the
/// short segment is the noisier one. Welch alone only proposes candidates.
fn two_sided_p(left: &[f64], right: &[f64]) -> (f64, f64) {
    let (Some(a), Some(b)) = (stats::estimate(left, None), stats::estimate(right, None)) else {
        return (1.0, 1.0);
    };
    let two_sided =
        |d: &stats::Difference| (2.0 * d.p_one_sided(1.0).min(d.p_one_sided(-1.0))).min(1.0);
    let mut d = stats::welch(&a, &b);
    let welch = two_sided(&d);
    let (n1, n2) = (left.len() as f64, right.len() as f64);
    let pooled =
        ((n1 - 1.0) * a.var_of_mean * n1 + (n2 - 1.0) * b.var_of_mean * n2) / (n1 + n2 - 2.0);
    let se_pooled = (pooled * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se_pooled >= d.se {
        d.se = se_pooled;
        d.df = n1 + n2 - 2.0;
    }
    (two_sided(&d), welch)
}

/// A segment's level in the figure's units: the geometric mean on a log scale.
fn level(scaled: &[f64], log_scale: bool) -> f64 {
    let m = stats::mean(scaled);
    if log_scale {
        m.exp()
    } else {
        m
    }
}

/// A difference as a fraction of the level before; from a zero level any change is infinite.
fn relative(diff: f64, base: f64) -> f64 {
    if diff == 0.0 {
        0.0
    } else if base == 0.0 {
        diff.signum() * f64::INFINITY
    } else {
        diff / base.abs()
    }
}

/// Finds the change points of every metric in a history: `commits` in order, each with 1 or
/// more runs (parsed results.json files).
pub fn history(commits: &[Commit], gate: &Gate) -> Result<History, ReportError> {
    gate.validate().map_err(ReportError::Gate)?;
    if commits.is_empty() {
        return Err(ReportError::HistoryEmpty);
    }
    if commits.len() > HISTORY_COMMITS_MAX {
        return Err(ReportError::HistoryTooManyCommits {
            given: commits.len(),
            max: HISTORY_COMMITS_MAX,
        });
    }
    let total: usize = commits.iter().map(|c| c.runs.len()).sum();
    if total > HISTORY_RUNS_MAX {
        return Err(ReportError::HistoryTooManyRuns {
            given: total,
            max: HISTORY_RUNS_MAX,
        });
    }
    let n = commits.len();
    let mut runs = Vec::with_capacity(n);
    for (i, commit) in commits.iter().enumerate() {
        if commit.runs.is_empty() {
            return Err(ReportError::HistoryCommitEmpty {
                label: commit.label.clone(),
                commit: i + 1,
                commits: n,
            });
        }
        if commit.runs.len() > COMPARE_RUNS_MAX {
            return Err(ReportError::HistoryTooManyRuns {
                given: commit.runs.len(),
                max: COMPARE_RUNS_MAX,
            });
        }
        let parsed = commit
            .runs
            .iter()
            .enumerate()
            .map(|(r, value)| {
                Run::from_json(value).map_err(|e| ReportError::InHistoryRun {
                    label: commit.label.clone(),
                    commit: i + 1,
                    commits: n,
                    run: r + 1,
                    runs: commit.runs.len(),
                    source: Box::new(e),
                })
            })
            .collect::<Result<Vec<Run>, ReportError>>()?;
        runs.push(parsed);
    }
    let labels: Vec<String> = commits.iter().map(|c| c.label.clone()).collect();
    Ok(history_runs(&labels, &runs, gate))
}

/// [`history`] of runs already read: `labels[i]` names commit `i`, whose runs are `runs[i]`.
pub fn history_runs(labels: &[String], runs: &[Vec<Run>], gate: &Gate) -> History {
    let commits: Vec<CommitSummary> = runs
        .iter()
        .enumerate()
        .map(|(index, r)| CommitSummary {
            index,
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            runs: r.len(),
        })
        .collect();

    let mut metrics: Vec<MetricHistory> = kinds(runs)
        .iter()
        .map(|kind| {
            let series = runs
                .iter()
                .enumerate()
                .filter_map(|(index, commit)| {
                    let values: Vec<f64> = commit
                        .iter()
                        .filter_map(|r| kind.value(&r.results))
                        .collect();
                    (!values.is_empty()).then(|| SeriesPoint {
                        index,
                        mean: stats::mean(&values),
                        runs: values,
                    })
                })
                .collect();
            let name = kind.name();
            MetricHistory {
                ignored: gate.metric.get(&name).is_some_and(|m| m.ignore),
                metric: name,
                unit: kind.unit().into(),
                bigger_is_better: kind.bigger_is_better(),
                threshold: kind.threshold(gate),
                absolute: kind.absolute(),
                log_scale: false,
                series,
                segments: Vec::new(),
                change_points: Vec::new(),
                note: None,
            }
        })
        .filter(|m| !m.series.is_empty())
        .collect();

    let long_enough = |m: &MetricHistory| m.series.len() >= 2 * SEGMENT_COMMITS_MIN;
    let metrics_tested = metrics
        .iter()
        .filter(|m| !m.ignored && long_enough(m))
        .count();
    for m in &mut metrics {
        let detector = Detector {
            threshold: m.threshold,
            absolute: m.absolute,
            confidence: gate.confidence,
            metrics: metrics_tested,
        };
        let values: Vec<f64> = m.series.iter().map(|p| p.mean).collect();
        let mut seg = detector.segment(&values);
        if m.ignored {
            m.note = Some("left out by the gate".into());
            seg = Segmentation {
                log_scale: seg.log_scale,
                splits: Vec::new(),
                levels: vec![level_of(&values, seg.log_scale)],
            };
        } else if !long_enough(m) {
            m.note = Some(format!(
                "only {} of the commits {} it: a change point needs at least \
                 {SEGMENT_COMMITS_MIN} on either side",
                m.series.len(),
                if m.series.len() == 1 { "has" } else { "have" },
            ));
        }
        m.log_scale = seg.log_scale;
        let mut start = 0;
        for (k, level) in seg.levels.iter().enumerate() {
            let end = seg.splits.get(k).map_or(m.series.len(), |s| s.at);
            let last = end.checked_sub(1).and_then(|e| m.series.get(e));
            if let (Some(first), Some(last)) = (m.series.get(start), last) {
                m.segments.push(Segment {
                    start: first.index,
                    end: last.index,
                    mean: *level,
                });
            }
            start = end;
        }
        m.change_points = seg
            .splits
            .iter()
            .map(|s| {
                let index = m.series[s.at].index;
                ChangePoint {
                    index,
                    label: commits[index].label.clone(),
                    before: s.before,
                    after: s.after,
                    change: s.change,
                    difference: s.difference,
                    p_value: s.p_value,
                    verdict: if (s.difference > 0.0) == m.bigger_is_better {
                        Verdict::Improved
                    } else {
                        Verdict::Regressed
                    },
                }
            })
            .collect();
    }

    let all = || metrics.iter().flat_map(|m| &m.change_points);
    let regressed = all().filter(|c| c.verdict == Verdict::Regressed).count();
    let improved = all().filter(|c| c.verdict == Verdict::Improved).count();
    History {
        commits,
        confidence: gate.confidence,
        metrics_tested,
        segment_commits_min: SEGMENT_COMMITS_MIN,
        change_points: regressed + improved,
        regressed,
        improved,
        metrics,
    }
}

/// The level of a whole series.
fn level_of(values: &[f64], log_scale: bool) -> f64 {
    let scaled: Vec<f64> = values
        .iter()
        .map(|v| if log_scale { v.ln() } else { *v })
        .collect();
    level(&scaled, log_scale)
}

/// Every metric any commit has, in the comparison's display order: per operation (in order of
/// first appearance), the error rate, then per fault.
fn kinds(runs: &[Vec<Run>]) -> Vec<MetricKind> {
    let mut kinds: Vec<MetricKind> = Vec::new();
    for commit in runs {
        for kind in metric_kinds(commit, commit) {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    kinds.sort_by_key(|k| match k {
        MetricKind::Throughput(_) | MetricKind::P50(_) | MetricKind::P99(_) => (0, 0),
        MetricKind::ErrorRate => (1, 0),
        MetricKind::Convergence(f) | MetricKind::ThroughputRecovered(f) => (2, *f),
    });
    kinds
}

/// A plain-text table for the terminal: one line per change point, then notes and a summary.
pub fn history_table(h: &History) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 7]> = rows(h).into_iter().map(ChangeRow::cells).collect();
    if !rows.is_empty() {
        let header = [
            "metric",
            "at",
            "commit",
            "before → after",
            "change",
            "p",
            "verdict",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                // Names and the verdict read left-aligned, figures right-aligned.
                match i {
                    0 | 2 | 6 => line.push_str(&format!("{cell}{pad}")),
                    _ => line.push_str(&format!("{pad}{cell}")),
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    for note in notes(h) {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!("history: {}\n", summary(h)));
    out
}

/// The history for tools: every field of [`History`] (each metric's series, levels and change
/// points); an infinite change is `null`.
pub fn history_json(h: &History) -> serde_json::Value {
    serde_json::to_value(h).unwrap_or(serde_json::Value::Null)
}

/// A self-contained HTML page (no scripts, the report's stylesheet): the change points, then
/// one chart per metric, then the commits.
pub fn render_history(h: &History) -> Result<String, ReportError> {
    let charts = h
        .metrics
        .iter()
        .filter(|m| !m.series.is_empty())
        .map(|m| {
            Ok(MetricView {
                metric: m.metric.clone(),
                better: better(m.bigger_is_better),
                svg: history_charts::series_svg(&chart_of(m, h.commits.len()))?,
                note: m.note.clone(),
                change_points: m.change_points.len(),
            })
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    let page = HistoryPage {
        title: format!("{} — clusterbench history", summary(h)),
        style: STYLE,
        regressed: h.regressed > 0,
        headline: match h.change_points {
            0 => "NO CHANGE".into(),
            1 => "1 CHANGE POINT".into(),
            n => format!("{n} CHANGE POINTS"),
        },
        summary: summary(h),
        false_alarm: format!("{:.0}%", (1.0 - h.confidence) * 100.0),
        segment_commits_min: SEGMENT_COMMITS_MIN,
        rows: rows(h),
        charts,
        commits: h.commits.clone(),
        notes: notes(h),
    };
    crate::page::render_template(TEMPLATE_NAME, TEMPLATE, &page)
}

/// What the chart of one metric shows.
fn chart_of(m: &MetricHistory, commits: usize) -> SeriesChart {
    SeriesChart {
        y_desc: if m.unit == "ratio" {
            m.metric.clone()
        } else {
            format!("{}, {}", m.metric, m.unit)
        },
        percent: m.unit == "ratio",
        commits,
        runs: m
            .series
            .iter()
            .flat_map(|p| p.runs.iter().map(move |v| (p.index as f64, *v)))
            .collect(),
        means: m.series.iter().map(|p| (p.index as f64, p.mean)).collect(),
        levels: m
            .segments
            .iter()
            .map(|s| (s.start as f64 - 0.5, s.end as f64 + 0.5, s.mean))
            .collect(),
        marks: m
            .change_points
            .iter()
            .map(|c| Mark {
                x: c.index as f64 - 0.5,
                regressed: c.verdict == Verdict::Regressed,
            })
            .collect(),
    }
}

/// `2 change points (1 regressed, 1 improved) in 2 of 12 metrics over 10 commits`.
fn summary(h: &History) -> String {
    let commits = match h.commits.len() {
        1 => "1 commit".to_string(),
        n => format!("{n} commits"),
    };
    let metrics = h.metrics.len();
    if h.change_points == 0 {
        return format!("no change point in {metrics} metrics over {commits}");
    }
    let with = h
        .metrics
        .iter()
        .filter(|m| !m.change_points.is_empty())
        .count();
    format!(
        "{} change point{} ({} regressed, {} improved) in {with} of {metrics} metrics over \
         {commits}",
        h.change_points,
        if h.change_points == 1 { "" } else { "s" },
        h.regressed,
        h.improved,
    )
}

/// What to bear in mind: series too short to test, metrics left out, how p was reached.
fn notes(h: &History) -> Vec<String> {
    let mut notes = Vec::new();
    let n = h.commits.len();
    if n < 2 * SEGMENT_COMMITS_MIN {
        notes.push(format!(
            "{n} commit{}: a change point needs at least {SEGMENT_COMMITS_MIN} commits on either \
             side, {} in all",
            if n == 1 { "" } else { "s" },
            2 * SEGMENT_COMMITS_MIN
        ));
    } else {
        for m in &h.metrics {
            if let Some(note) = &m.note {
                notes.push(format!("{}: {note}", m.metric));
            }
        }
    }
    if h.metrics_tested > 0 {
        notes.push(format!(
            "p: Welch's t between the segments either side, two-sided, times the cuts possible \
             and the {} metrics tested; a change point has p ≤ {} and a change beyond the \
             gate's threshold; the last {} commits cannot start one yet",
            h.metrics_tested,
            round_alpha(1.0 - h.confidence),
            SEGMENT_COMMITS_MIN - 1
        ));
    }
    notes
}

/// 1 − confidence as written in a gate file: `0.05`, `0.01`.
fn round_alpha(alpha: f64) -> String {
    let text = format!("{alpha:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn better(bigger_is_better: bool) -> &'static str {
    if bigger_is_better {
        "bigger is better"
    } else {
        "smaller is better"
    }
}

/// Every change point, metric by metric, as display-ready strings.
fn rows(h: &History) -> Vec<ChangeRow> {
    h.metrics
        .iter()
        .flat_map(|m| {
            m.change_points.iter().map(move |c| ChangeRow {
                metric: m.metric.clone(),
                index: c.index,
                label: c.label.clone(),
                step: format!(
                    "{} → {}",
                    fmt_figure(c.before, &m.unit),
                    fmt_figure(c.after, &m.unit)
                ),
                change: if m.absolute {
                    let sign = if c.difference > 0.0 { "+" } else { "" };
                    let points = fmt_percent(c.difference);
                    format!("{sign}{} pp", points.trim_end_matches(" %"))
                } else {
                    fmt_change(c.change)
                },
                p_value: fmt_p_value(c.p_value),
                verdict: c.verdict.label(),
                better: better(m.bigger_is_better),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct HistoryPage {
    title: String,
    style: &'static str,
    regressed: bool,
    headline: String,
    summary: String,
    false_alarm: String,
    segment_commits_min: usize,
    rows: Vec<ChangeRow>,
    charts: Vec<MetricView>,
    commits: Vec<CommitSummary>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct MetricView {
    metric: String,
    better: &'static str,
    svg: String,
    note: Option<String>,
    change_points: usize,
}

/// One change point as display-ready strings, shared by the terminal table and the page.
#[derive(Serialize)]
struct ChangeRow {
    metric: String,
    index: usize,
    label: String,
    step: String,
    change: String,
    p_value: String,
    verdict: &'static str,
    better: &'static str,
}

impl ChangeRow {
    fn cells(self) -> [String; 7] {
        [
            self.metric,
            self.index.to_string(),
            self.label,
            self.step,
            self.change,
            self.p_value,
            self.verdict.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a seeded, dependency-free source of test noise.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1].
        fn uniform(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        }

        /// Standard normal (Box–Muller).
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// `levels[i].1` commits at level `levels[i].0`, each times (1 + noise · N(0, 1)).
    fn series(seed: u64, levels: &[(f64, usize)], noise: f64) -> Vec<f64> {
        let mut rng = SplitMix64(seed);
        levels
            .iter()
            .flat_map(|&(level, n)| std::iter::repeat_n(level, n))
            .map(|level| level * (1.0 + noise * rng.normal()))
            .collect()
    }

    /// A throughput-like metric in a history of about ten metrics.
    const DETECTOR: Detector = Detector {
        threshold: 0.05,
        absolute: false,
        confidence: 0.95,
        metrics: 10,
    };

    fn cuts(s: &Segmentation) -> Vec<usize> {
        s.splits.iter().map(|s| s.at).collect()
    }

    #[test]
    fn a_planted_step_is_found_where_it_starts_and_only_there() {
        for seed in 0..50 {
            let values = series(seed, &[(100.0, 6), (80.0, 4)], 0.02);
            let s = DETECTOR.segment(&values);
            assert!(s.log_scale);
            assert_eq!(cuts(&s), vec![6], "seed {seed}: {values:?}");
            let split = s.splits[0];
            assert!((split.change + 0.2).abs() < 0.04, "seed {seed}: {split:?}");
            assert!(split.p_value <= 0.05, "seed {seed}: {split:?}");
            assert_eq!(s.levels, vec![split.before, split.after]);
        }
    }

    #[test]
    fn flat_noisy_series_rarely_show_a_change_point() {
        let false_points: usize = (0..200)
            .map(|seed| {
                let values = series(1_000 + seed, &[(100.0, 10)], 0.10);
                DETECTOR.segment(&values).splits.len()
            })
            .sum();
        // 2 % of 200 series.
        assert!(false_points <= 4, "{false_points} false change points");
    }

    #[test]
    fn two_steps_are_both_found() {
        for seed in 0..20 {
            let down = series(seed, &[(100.0, 5), (80.0, 5), (64.0, 5)], 0.02);
            assert_eq!(cuts(&DETECTOR.segment(&down)), vec![5, 10], "{down:?}");
            let back = series(100 + seed, &[(100.0, 5), (75.0, 5), (100.0, 5)], 0.02);
            let s = DETECTOR.segment(&back);
            assert_eq!(cuts(&s), vec![5, 10], "{back:?}");
            assert!(s.splits[0].change < 0.0 && s.splits[1].change > 0.0);
            assert_eq!(s.levels.len(), 3);
        }
    }

    #[test]
    fn the_error_rate_moves_by_its_absolute_threshold() {
        let errors = Detector {
            threshold: 0.005,
            absolute: true,
            ..DETECTOR
        };
        let big = series(7, &[(0.001, 5), (0.02, 5)], 0.05);
        let s = errors.segment(&big);
        assert!(!s.log_scale);
        assert_eq!(cuts(&s), vec![5]);
        assert!((s.splits[0].difference - 0.019).abs() < 0.002);
        // Three times the errors, but a fifth of a percentage point: within the threshold.
        let small = series(7, &[(0.001, 5), (0.003, 5)], 0.05);
        assert!(errors.segment(&small).splits.is_empty());
    }

    #[test]
    fn short_and_constant_series_have_no_change_point() {
        for n in 0..6 {
            let s = DETECTOR.segment(&vec![100.0; n]);
            assert!(s.splits.is_empty());
            assert_eq!(s.levels.len(), usize::from(n > 0));
        }
        let s = DETECTOR.segment(&[100.0; 12]);
        assert!(s.splits.is_empty());
        assert_eq!(s.levels.len(), 1);
        assert!((s.levels[0] - 100.0).abs() < 1e-9, "{:?}", s.levels);
        // Two exact levels: no noise at all, so any change beyond the threshold is certain.
        let mut steps = vec![100.0; 6];
        steps.extend([120.0; 6]);
        assert_eq!(cuts(&DETECTOR.segment(&steps)), vec![6]);
    }

    fn quickstart() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/fixtures/quickstart.json")).unwrap()
    }

    /// Ten commits of the quickstart run, smtp's throughput scaled by `factor` from commit 6.
    fn commits(factor: f64) -> Vec<Commit> {
        let mut rng = SplitMix64(42);
        (0..10)
            .map(|i| {
                let mut run = quickstart();
                let smtp = &mut run["operations"]["ops"]["smtp"];
                let t = smtp["throughput_per_s"].as_f64().unwrap();
                let scale = if i >= 6 { factor } else { 1.0 };
                smtp["throughput_per_s"] = (t * scale * (1.0 + 0.01 * rng.normal())).into();
                Commit {
                    label: format!("c{i:02}"),
                    runs: vec![run],
                }
            })
            .collect()
    }

    #[test]
    fn a_faster_commit_is_an_improvement() {
        let h = history(&commits(1.25), &Gate::default()).unwrap();
        assert_eq!((h.change_points, h.improved, h.regressed), (1, 1, 0));
        let m = h
            .metrics
            .iter()
            .find(|m| m.metric == "smtp throughput_per_s")
            .unwrap();
        let c = &m.change_points[0];
        assert_eq!((c.index, c.label.as_str()), (6, "c06"));
        assert_eq!(c.verdict, Verdict::Improved);
        assert_eq!(m.segments.len(), 2);
        assert_eq!((m.segments[0].start, m.segments[0].end), (0, 5));
        assert_eq!((m.segments[1].start, m.segments[1].end), (6, 9));
        assert!(h.metrics_tested >= 10, "{}", h.metrics_tested);
        let text = history_table(&h);
        assert!(text.contains("smtp throughput_per_s"), "{text}");
        assert!(text.contains("improved"), "{text}");
        let html = render_history(&h).unwrap();
        assert!(html.contains("<svg") && !html.contains("<script"));
        assert_eq!(history_json(&h)["change_points"], 1);
    }

    #[test]
    fn a_gate_can_leave_a_metric_out() {
        let gate = Gate::from_toml("[metric.\"smtp throughput_per_s\"]\nignore = true\n").unwrap();
        let h = history(&commits(0.5), &gate).unwrap();
        assert_eq!(h.change_points, 0);
        let m = h
            .metrics
            .iter()
            .find(|m| m.metric == "smtp throughput_per_s")
            .unwrap();
        assert!(m.ignored && m.change_points.is_empty());
        assert_eq!(m.segments.len(), 1);
    }

    #[test]
    fn bad_histories_are_refused_naming_what_is_wrong() {
        assert!(matches!(
            history(&[], &Gate::default()),
            Err(ReportError::HistoryEmpty)
        ));
        let empty = Commit {
            label: "c00".into(),
            runs: Vec::new(),
        };
        let too_many = vec![empty.clone(); HISTORY_COMMITS_MAX + 1];
        let err = history(&too_many, &Gate::default()).unwrap_err();
        assert!(err.to_string().contains("10001 commits"), "{err}");
        let err = history(&[empty], &Gate::default()).unwrap_err();
        assert!(err.to_string().contains("c00"), "{err}");
        let bad = Commit {
            label: "c01".into(),
            runs: vec![serde_json::json!({"schema_version": 1})],
        };
        let err = history(&[bad], &Gate::default()).unwrap_err().to_string();
        assert!(err.starts_with("c01 (commit 1 of 1), run 1 of 1:"), "{err}");
    }
}
