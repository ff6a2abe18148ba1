//! Compares a baseline configuration with a candidate: repetitions of each (parsed results.json
//! files), figure by figure, with a confidence interval of the change, a p-value corrected for
//! the number of metrics, the smallest change the comparison could have detected, and a verdict
//! against noise thresholds ([`Gate`]), for a CI gate and for people.
//!
//! How a verdict is reached (the reasons are in [`crate::stats`]): each figure is compared on a
//! log scale (a relative change; the error rate on its own scale) by Welch's t over the
//! repetitions, where each side's variance is the larger of the spread between its runs and the
//! runs' own sampling error (order-statistic bounds of a quantile from the run's HdrHistogram,
//! batch means of the per-second throughput, the binomial error of the error rate). A metric
//! regresses when the change is beyond the gate's threshold *and* its one-sided p-value,
//! adjusted by Holm over all metrics of the comparison, is at most 1 − confidence: so two
//! unchanged configurations are called regressed on any metric at most that often. A quantile
//! with fewer samples in a run than a distribution-free interval needs (299 for a p99 at 95 %),
//! or a figure with no spread to go by, says "not enough data" instead of a verdict.
//!
//! Like the rest of this crate it does no I/O and reads no clock; the same inputs always give
//! the same verdicts.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::format::{fmt_ms, fmt_percent, fmt_rate, NONE};
pub use crate::gate::{Gate, MetricGate};
use crate::schema::Results;
use crate::stats;
use crate::ReportError;

/// At most this many runs per side.
pub const COMPARE_RUNS_MAX: usize = 10_000;
/// The power at which [`MetricComparison::detectable`] is quoted: a change that large is flagged
/// in this share of comparisons at the noise seen.
pub const DETECT_POWER: f64 = 0.8;

const TEMPLATE_NAME: &str = "compare.html";
const TEMPLATE: &str = include_str!("../templates/compare.html");
const STYLE: &str = include_str!("../templates/style.css");

/// How a metric moved, beyond noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    Unchanged,
    Regressed,
    /// Too few samples or runs to judge this metric (see [`MetricComparison::note`]).
    NotEnoughData,
    /// The gate leaves this metric out.
    Ignored,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::Regressed => "regressed",
            Verdict::NotEnoughData => "not enough data",
            Verdict::Ignored => "ignored",
        }
    }
}

/// One figure of the baseline against the same figure of the candidate.
#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    /// `smtp throughput_per_s`, `smtp p99_ms`, `error_rate`, `recovery 0 convergence_s`.
    pub metric: String,
    /// `ops/s`, `ms`, `s` or `ratio`.
    pub unit: String,
    pub bigger_is_better: bool,
    /// Runs of each side that have the figure.
    pub baseline_runs: usize,
    pub candidate_runs: usize,
    /// Mean over the baseline's runs.
    pub baseline: f64,
    /// Mean over the candidate's runs.
    pub candidate: f64,
    /// The change, in the threshold's terms: relative (the ratio of geometric means − 1 for
    /// figures compared on a log scale; infinite when the baseline is 0 and the candidate is
    /// not, `null` in JSON), or for the error rate the absolute difference.
    pub change: f64,
    /// The `confidence` interval of the change; `None` without a verdict.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// One-sided p-value in the direction of the change, Holm-adjusted over the metrics judged.
    pub p_value: Option<f64>,
    /// The gate's threshold for this metric (relative; absolute for the error rate).
    pub threshold: f64,
    /// The smallest change in the worse direction this comparison would flag with probability
    /// [`DETECT_POWER`] at the noise it saw (at least the threshold), in the threshold's terms.
    pub detectable: Option<f64>,
    pub verdict: Verdict,
    /// Why there is no verdict, or what to bear in mind about it.
    pub note: Option<String>,
}

/// Every figure the two sides share, and whether any regressed.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub metrics: Vec<MetricComparison>,
    pub regressed: bool,
    /// The gate's confidence: 1 − the family-wise false-alarm rate.
    pub confidence: f64,
    /// Runs on each side.
    pub baseline_runs: usize,
    pub candidate_runs: usize,
    /// What limits this comparison (one run a side, fewer runs than the gate asks for).
    pub warnings: Vec<String>,
}

/// Compares repetitions of a baseline configuration with repetitions of a candidate (each a
/// parsed results.json; 1 or more each).
///
/// Metrics: per operation present on both sides `throughput_per_s` (bigger is better), `p50_ms`
/// and `p99_ms`; the overall error rate, errors / (count + errors); per fault index present on
/// both sides `convergence_s` and `throughput_recovered_s` (runs where it is null are left out).
pub fn compare(
    baseline: &[serde_json::Value],
    candidate: &[serde_json::Value],
    gate: &Gate,
) -> Result<Comparison, ReportError> {
    gate.validate().map_err(ReportError::Gate)?;
    let baseline = parse_side("baseline", baseline)?;
    let candidate = parse_side("candidate", candidate)?;
    Ok(compare_runs(&baseline, &candidate, gate))
}

/// One run ready for comparison: its results and its decoded latency histograms.
#[derive(Clone)]
pub struct Run {
    pub results: Results,
    histograms: std::collections::BTreeMap<String, Histogram<u64>>,
}

impl Run {
    /// Reads a run's results.json; histograms that do not decode are left out (their quantiles
    /// are then judged on the spread between runs alone).
    pub fn from_json(value: &serde_json::Value) -> Result<Run, ReportError> {
        let results = Results::from_json(value)?;
        let histograms = results
            .operations
            .ops
            .iter()
            .filter_map(|(op, s)| {
                let encoded = s.histogram.as_deref()?;
                decode_histogram(encoded).map(|h| (op.clone(), h))
            })
            .collect();
        Ok(Run {
            results,
            histograms,
        })
    }
}

/// [`compare`] of runs already read, for calibration, which compares many splits of one set.
pub fn compare_runs(baseline: &[Run], candidate: &[Run], gate: &Gate) -> Comparison {
    let kinds = metric_kinds(baseline, candidate);
    let b = observe_runs(&kinds, baseline, gate.confidence);
    let c = observe_runs(&kinds, candidate, gate.confidence);
    let b: Vec<&[Option<Obs>]> = b.iter().map(Vec::as_slice).collect();
    let c: Vec<&[Option<Obs>]> = c.iter().map(Vec::as_slice).collect();
    compare_observed(&kinds, &b, &c, gate)
}

/// Each run's observation of each metric (`[run][kind]`): all a comparison needs of a run, so
/// that calibration, which compares many splits of the same runs, reads each run once.
pub(crate) fn observe_runs(
    kinds: &[MetricKind],
    runs: &[Run],
    confidence: f64,
) -> Vec<Vec<Option<Obs>>> {
    runs.iter()
        .map(|r| kinds.iter().map(|k| k.observe(r, confidence)).collect())
        .collect()
}

/// [`compare_runs`] from observations (see [`observe_runs`]), one slice per run.
pub(crate) fn compare_observed(
    kinds: &[MetricKind],
    baseline: &[&[Option<Obs>]],
    candidate: &[&[Option<Obs>]],
    gate: &Gate,
) -> Comparison {
    let alpha = 1.0 - gate.confidence;
    let mut judged: Vec<Judged> = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let b: Vec<Obs> = baseline.iter().filter_map(|r| r[i]).collect();
        let c: Vec<Obs> = candidate.iter().filter_map(|r| r[i]).collect();
        if b.is_empty() || c.is_empty() {
            continue;
        }
        judged.push(judge(kind, &b, &c, gate));
    }

    // Holm over the metrics that get a verdict, separately for "worse" and "better".
    let tested: Vec<usize> = (0..judged.len())
        .filter(|&i| judged[i].test.is_some())
        .collect();
    let m = tested.len().max(1);
    let worse: Vec<f64> = tested
        .iter()
        .map(|&i| judged[i].test.as_ref().map_or(1.0, |t| t.p_worse))
        .collect();
    let better: Vec<f64> = tested
        .iter()
        .map(|&i| judged[i].test.as_ref().map_or(1.0, |t| t.p_better))
        .collect();
    let (worse, better) = (stats::holm(&worse), stats::holm(&better));
    for (k, &i) in tested.iter().enumerate() {
        let j = &mut judged[i];
        let t = j.test.as_ref().expect("tested metrics have a test");
        let moved = t.moved;
        let threshold = j.out.threshold;
        j.out.verdict = if worse[k] <= alpha && moved > threshold {
            Verdict::Regressed
        } else if better[k] <= alpha && moved < -threshold {
            Verdict::Improved
        } else {
            Verdict::Unchanged
        };
        j.out.p_value = Some(if moved >= 0.0 { worse[k] } else { better[k] });
        j.out.detectable = Some(t.detectable(alpha / m as f64).max(threshold));
    }

    let metrics: Vec<MetricComparison> = judged.into_iter().map(|j| j.out).collect();
    let regressed = metrics.iter().any(|m| m.verdict == Verdict::Regressed);
    let mut warnings = Vec::new();
    if baseline.len() == 1 || candidate.len() == 1 {
        warnings.push(
            "one run on a side: only each run's own sampling error is counted, not the noise \
             between runs, so a verdict is only as good as the machine was quiet; repeat each \
             side 3 or more times for a gate"
                .to_string(),
        );
    }
    if let Some(r) = gate.repetitions {
        for (side, n) in [("baseline", baseline.len()), ("candidate", candidate.len())] {
            if n < r as usize {
                warnings.push(format!(
                    "the gate asks for {r} runs a side; the {side} has {n}"
                ));
            }
        }
    }
    Comparison {
        metrics,
        regressed,
        confidence: gate.confidence,
        baseline_runs: baseline.len(),
        candidate_runs: candidate.len(),
        warnings,
    }
}

/// A plain-text table for the terminal, one metric a line, then notes and the overall outcome.
pub fn comparison_table(c: &Comparison) -> String {
    let header = [
        "metric".to_string(),
        "baseline".into(),
        "candidate".into(),
        "change".into(),
        format!("{:.0}% interval", c.confidence * 100.0),
        "p (Holm)".into(),
        "detectable".into(),
        "verdict".into(),
    ];
    let rows: Vec<[String; 8]> = c
        .metrics
        .iter()
        .map(MetricRow::of)
        .map(|r| r.cells())
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            // The metric name reads left-aligned, figures right-aligned, the verdict last.
            match i {
                0 | 7 => line.push_str(&format!("{cell}{pad}")),
                _ => line.push_str(&format!("{pad}{cell}")),
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let notes = notes(c);
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            out.push_str(&format!("note: {note}\n"));
        }
    }
    out.push_str(&format!("\n{}\n", outcome(c)));
    out
}

/// The notes under the table: each metric without a verdict and why, then the warnings.
fn notes(c: &Comparison) -> Vec<String> {
    c.metrics
        .iter()
        .filter_map(|m| m.note.as_ref().map(|n| format!("{}: {n}", m.metric)))
        .chain(c.warnings.iter().cloned())
        .collect()
}

/// The comparison for tools: `{"regressed": bool, "metrics": [{...}]}` with every field of
/// [`MetricComparison`]; an infinite change (from a zero baseline) is `null`.
pub fn comparison_json(c: &Comparison) -> serde_json::Value {
    serde_json::to_value(c).unwrap_or(serde_json::Value::Null)
}

/// The candidate's means as github-action-benchmark custom entries: `[{"name","unit","value"}]`.
/// Throughput is bigger-is-better and every other metric smaller-is-better, so a consumer that
/// takes one direction per file should split on the unit (`ops/s`).
pub fn benchmark_json(c: &Comparison) -> serde_json::Value {
    c.metrics
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.metric,
                "unit": m.unit,
                "value": m.candidate,
            })
        })
        .collect()
}

/// A small self-contained HTML page (no scripts, the report's stylesheet) with the comparison.
pub fn render_comparison(c: &Comparison) -> Result<String, ReportError> {
    let page = ComparePage {
        title: format!("{} — clusterbench comparison", outcome(c)),
        style: STYLE,
        regressed: c.regressed,
        outcome: outcome(c),
        confidence: format!("{:.0}%", c.confidence * 100.0),
        false_alarm: format!("{:.0}%", (1.0 - c.confidence) * 100.0),
        rows: c.metrics.iter().map(MetricRow::of).collect(),
        notes: notes(c),
    };
    crate::page::render_template(TEMPLATE_NAME, TEMPLATE, &page)
}

/// Decodes a results.json histogram (base64 of HdrHistogram V2, with or without DEFLATE).
pub fn decode_histogram(encoded: &str) -> Option<Histogram<u64>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .ok()
}

fn parse_side(side: &'static str, runs: &[serde_json::Value]) -> Result<Vec<Run>, ReportError> {
    if runs.is_empty() {
        return Err(ReportError::CompareNoRuns { side });
    }
    if runs.len() > COMPARE_RUNS_MAX {
        return Err(ReportError::CompareTooManyRuns {
            side,
            given: runs.len(),
            max: COMPARE_RUNS_MAX,
        });
    }
    runs.iter()
        .enumerate()
        .map(|(i, value)| {
            Run::from_json(value).map_err(|e| ReportError::InCompareRun {
                side,
                run: i + 1,
                runs: runs.len(),
                source: Box::new(e),
            })
        })
        .collect()
}

/// One figure to compare, and how to read it from a run.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    Throughput(String),
    P50(String),
    P99(String),
    ErrorRate,
    Convergence(u64),
    ThroughputRecovered(u64),
}

/// One run's figure and, where the run itself tells, its sampling error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Obs {
    pub(crate) value: f64,
    /// Standard error of `value` from the run's own data (same units).
    pub(crate) se: Option<f64>,
    /// Samples behind a quantile.
    samples: Option<u64>,
}

impl MetricKind {
    pub fn name(&self) -> String {
        match self {
            MetricKind::Throughput(op) => format!("{op} throughput_per_s"),
            MetricKind::P50(op) => format!("{op} p50_ms"),
            MetricKind::P99(op) => format!("{op} p99_ms"),
            MetricKind::ErrorRate => "error_rate".into(),
            MetricKind::Convergence(fault) => format!("recovery {fault} convergence_s"),
            MetricKind::ThroughputRecovered(fault) => {
                format!("recovery {fault} throughput_recovered_s")
            }
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            MetricKind::Throughput(_) => "ops/s",
            MetricKind::P50(_) | MetricKind::P99(_) => "ms",
            MetricKind::ErrorRate => "ratio",
            MetricKind::Convergence(_) | MetricKind::ThroughputRecovered(_) => "s",
        }
    }

    pub fn bigger_is_better(&self) -> bool {
        matches!(self, MetricKind::Throughput(_))
    }

    /// Whether the threshold applies to the absolute change (the error rate) rather than the
    /// relative one.
    pub fn absolute(&self) -> bool {
        matches!(self, MetricKind::ErrorRate)
    }

    /// The quantile a latency metric is.
    fn quantile(&self) -> Option<f64> {
        match self {
            MetricKind::P50(_) => Some(0.5),
            MetricKind::P99(_) => Some(0.99),
            _ => None,
        }
    }

    /// The gate's threshold for this metric: its own override, else its kind's.
    pub fn threshold(&self, gate: &Gate) -> f64 {
        if let Some(t) = gate.metric.get(&self.name()).and_then(|m| m.threshold) {
            return t;
        }
        match self {
            MetricKind::Throughput(_) => gate.throughput_drop_max,
            MetricKind::P50(_) | MetricKind::P99(_) => gate.latency_rise_max,
            MetricKind::ErrorRate => gate.error_rate_rise_max,
            MetricKind::Convergence(_) | MetricKind::ThroughputRecovered(_) => {
                gate.recovery_rise_max
            }
        }
    }

    /// The figure in one run; `None` when the run lacks it.
    pub fn value(&self, run: &Results) -> Option<f64> {
        let value = match self {
            MetricKind::Throughput(op) => run.operations.ops.get(op).map(|o| o.throughput_per_s),
            MetricKind::P50(op) => run.operations.ops.get(op).map(|o| o.p50_ms),
            MetricKind::P99(op) => run.operations.ops.get(op).map(|o| o.p99_ms),
            MetricKind::ErrorRate => {
                let (errors, total) = error_counts(run);
                Some(if total == 0 {
                    0.0
                } else {
                    errors as f64 / total as f64
                })
            }
            MetricKind::Convergence(fault) => recovery(run, *fault).and_then(|r| r.convergence_s),
            MetricKind::ThroughputRecovered(fault) => {
                recovery(run, *fault).and_then(|r| r.throughput_recovered_s)
            }
        };
        value.filter(|v| v.is_finite())
    }

    /// The figure with its sampling error in this run.
    pub(crate) fn observe(&self, run: &Run, confidence: f64) -> Option<Obs> {
        let value = self.value(&run.results)?;
        let results = &run.results;
        let (se, samples) = match self {
            MetricKind::Throughput(op) => {
                let counts = measured_seconds(results, op);
                let se = stats::batch_means_relative_se(&counts).map(|r| r * value);
                (se, None)
            }
            MetricKind::P50(op) | MetricKind::P99(op) => {
                let q = self.quantile().expect("a latency metric is a quantile");
                let samples = results.operations.ops.get(op).map(|o| o.count);
                let se = run
                    .histograms
                    .get(op)
                    .and_then(|h| quantile_se_log(h, q, confidence))
                    .map(|se_log| se_log * value);
                (se, samples)
            }
            MetricKind::ErrorRate => {
                let (_, total) = error_counts(results);
                let se = (total > 0).then(|| {
                    let n = total as f64;
                    // At least half an error's worth, so that no errors on both sides still
                    // has a sampling error.
                    let p = value.max(0.5 / n).min(1.0);
                    (p * (1.0 - p) / n).sqrt()
                });
                (se, None)
            }
            MetricKind::Convergence(_) | MetricKind::ThroughputRecovered(_) => (None, None),
        };
        Some(Obs { value, se, samples })
    }
}

/// Errors and attempts over every operation of a run.
fn error_counts(run: &Results) -> (u64, u64) {
    run.operations
        .ops
        .values()
        .fold((0, 0), |(e, t), o| (e + o.errors, t + o.count + o.errors))
}

/// Successful operations of `op` in each second of the measured part of a run (after the
/// warmup, before the load's end), zeros included.
fn measured_seconds(run: &Results, op: &str) -> Vec<f64> {
    let ops = &run.operations;
    let duration = run
        .experiment
        .get("workload")
        .and_then(|w| w.get("duration_s"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(ops.warmup_s + ops.measured_s);
    let first = ops.warmup_s.ceil().max(0.0) as u64;
    let end = duration.floor().max(0.0) as u64;
    if end <= first {
        return Vec::new();
    }
    let mut counts = vec![0.0; (end - first) as usize];
    for point in &ops.series {
        if (first..end).contains(&point.t_s) {
            if let Some(f) = point.per_op.get(op) {
                counts[(point.t_s - first) as usize] = f.count as f64;
            }
        }
    }
    counts
}

/// The standard error of a quantile on a log scale, from the distribution-free interval of the
/// order statistics around it; `None` when the histogram is too small for one.
fn quantile_se_log(h: &Histogram<u64>, q: f64, confidence: f64) -> Option<f64> {
    let n = h.len();
    let (l, u) = stats::quantile_ranks(n, q, confidence)?;
    let low = value_at_rank(h, l)?.max(1) as f64;
    let high = value_at_rank(h, u)?.max(1) as f64;
    let z = stats::z_quantile(0.5 + confidence / 2.0);
    Some((high.ln() - low.ln()) / (2.0 * z))
}

/// The `rank`-th smallest recorded value (1-based).
fn value_at_rank(h: &Histogram<u64>, rank: u64) -> Option<u64> {
    let mut seen = 0;
    for v in h.iter_recorded() {
        seen += v.count_at_value();
        if seen >= rank {
            return Some(h.highest_equivalent(v.value_iterated_to()));
        }
    }
    None
}

/// A run's recovery figures of one fault: by the fault index it records, else by position.
fn recovery(run: &Results, fault: u64) -> Option<&crate::schema::Recovery> {
    run.recovery
        .iter()
        .enumerate()
        .find(|(i, r)| r.fault.unwrap_or(*i as u64) == fault)
        .map(|(_, r)| r)
}

/// The metrics in display order: per operation (in the report's order), the error rate, then
/// per fault. Operations and faults the two sides do not share are left out.
pub fn metric_kinds(baseline: &[Run], candidate: &[Run]) -> Vec<MetricKind> {
    let has_op = |runs: &[Run], op: &str| {
        runs.iter()
            .any(|r| r.results.operations.ops.contains_key(op))
    };
    let mut ops: Vec<String> = Vec::new();
    for run in baseline {
        for op in run.results.op_names() {
            if !ops.contains(&op) && has_op(candidate, &op) {
                ops.push(op);
            }
        }
    }
    let mut kinds = Vec::new();
    for op in ops {
        kinds.push(MetricKind::Throughput(op.clone()));
        kinds.push(MetricKind::P50(op.clone()));
        kinds.push(MetricKind::P99(op));
    }
    kinds.push(MetricKind::ErrorRate);

    let faults = |runs: &[Run]| -> Vec<u64> {
        let mut faults: Vec<u64> = runs
            .iter()
            .flat_map(|r| {
                r.results
                    .recovery
                    .iter()
                    .enumerate()
                    .map(|(i, rec)| rec.fault.unwrap_or(i as u64))
            })
            .collect();
        faults.sort_unstable();
        faults.dedup();
        faults
    };
    let candidate_faults = faults(candidate);
    for fault in faults(baseline) {
        if candidate_faults.contains(&fault) {
            kinds.push(MetricKind::Convergence(fault));
            kinds.push(MetricKind::ThroughputRecovered(fault));
        }
    }
    kinds
}

/// A metric's comparison before the family-wise correction.
struct Judged {
    out: MetricComparison,
    test: Option<Test>,
}

/// What the correction needs of one metric's test.
struct Test {
    diff: stats::Difference,
    /// One-sided p-values, uncorrected.
    p_worse: f64,
    p_better: f64,
    /// The change in the worse direction, in the threshold's terms (positive: worse).
    moved: f64,
    log_scale: bool,
    bigger_is_better: bool,
    absolute: bool,
    base: f64,
}

impl Test {
    /// The smallest worse change detected with [`DETECT_POWER`] at one-sided level `alpha`, in
    /// the threshold's terms.
    fn detectable(&self, alpha: f64) -> f64 {
        let d = self.diff.detectable(alpha, DETECT_POWER);
        if self.log_scale {
            if self.bigger_is_better {
                1.0 - (-d).exp()
            } else {
                d.exp() - 1.0
            }
        } else if self.absolute {
            d
        } else if self.base != 0.0 {
            d / self.base.abs()
        } else {
            f64::INFINITY
        }
    }
}

/// Everything about one metric but the family-wise correction.
fn judge(kind: &MetricKind, b: &[Obs], c: &[Obs], gate: &Gate) -> Judged {
    let values = |side: &[Obs]| side.iter().map(|o| o.value).collect::<Vec<f64>>();
    let (bv, cv) = (values(b), values(c));
    let (base, cand) = (stats::mean(&bv), stats::mean(&cv));
    let threshold = kind.threshold(gate);
    let mut out = MetricComparison {
        metric: kind.name(),
        unit: kind.unit().into(),
        bigger_is_better: kind.bigger_is_better(),
        baseline_runs: b.len(),
        candidate_runs: c.len(),
        baseline: base,
        candidate: cand,
        change: if kind.absolute() {
            cand - base
        } else {
            relative(cand - base, base)
        },
        ci_low: None,
        ci_high: None,
        p_value: None,
        threshold,
        detectable: None,
        verdict: Verdict::NotEnoughData,
        note: None,
    };
    if gate.metric.get(&out.metric).is_some_and(|m| m.ignore) {
        out.verdict = Verdict::Ignored;
        out.note = Some("left out by the gate".into());
        return Judged { out, test: None };
    }
    if let Some(q) = kind.quantile() {
        let needed = stats::quantile_samples_min(q, gate.confidence);
        let fewest = b.iter().chain(c).filter_map(|o| o.samples).min();
        if let Some(fewest) = fewest.filter(|&f| f < needed) {
            out.note = Some(format!(
                "not enough data: a p{} needs at least {needed} samples in every run to be known \
                 within {:.0}% confidence; the fewest here: {fewest}",
                (q * 100.0).round(),
                gate.confidence * 100.0
            ));
            return Judged { out, test: None };
        }
    }

    // A relative change is judged on a log scale; the error rate (and anything at 0) as is.
    let log_scale = !kind.absolute() && bv.iter().chain(&cv).all(|v| *v > 0.0);
    let scaled = |side: &[Obs]| -> (Vec<f64>, Option<Vec<f64>>) {
        let values = side
            .iter()
            .map(|o| if log_scale { o.value.ln() } else { o.value })
            .collect();
        let within = side
            .iter()
            .map(|o| o.se.map(|se| if log_scale { se / o.value } else { se }))
            .collect::<Option<Vec<f64>>>();
        (values, within)
    };
    let (b_scaled, b_within) = scaled(b);
    let (c_scaled, c_within) = scaled(c);
    let (Some(be), Some(ce)) = (
        stats::estimate(&b_scaled, b_within.as_deref()),
        stats::estimate(&c_scaled, c_within.as_deref()),
    ) else {
        out.note = Some(
            "not enough data: one run on a side and no sampling error to go by; repeat each \
             side (3 or more runs)"
                .into(),
        );
        return Judged { out, test: None };
    };
    let diff = stats::welch(&be, &ce);
    let worse = if kind.bigger_is_better() { -1.0 } else { 1.0 };
    let to_change = |d: f64| {
        if kind.absolute() {
            d
        } else if log_scale {
            d.exp_m1()
        } else {
            relative(d, base)
        }
    };
    out.change = to_change(diff.diff);
    let (low, high) = diff.interval(gate.confidence);
    out.ci_low = Some(to_change(low));
    out.ci_high = Some(to_change(high));
    let moved = worse * out.change;
    let test = Test {
        diff,
        p_worse: diff.p_one_sided(worse),
        p_better: diff.p_one_sided(-worse),
        moved,
        log_scale,
        bigger_is_better: kind.bigger_is_better(),
        absolute: kind.absolute(),
        base,
    };
    out.verdict = Verdict::Unchanged;
    Judged {
        out,
        test: Some(test),
    }
}

/// A difference as a fraction of the baseline; from a zero baseline any change is infinite.
fn relative(diff: f64, base: f64) -> f64 {
    if diff == 0.0 {
        0.0
    } else if base == 0.0 {
        diff.signum() * f64::INFINITY
    } else {
        diff / base.abs()
    }
}

fn outcome(c: &Comparison) -> String {
    let count = |v: Verdict| c.metrics.iter().filter(|m| m.verdict == v).count();
    let head = if c.regressed {
        "REGRESSED"
    } else {
        "NO REGRESSION"
    };
    let mut parts = vec![
        format!("{} regressed", count(Verdict::Regressed)),
        format!("{} improved", count(Verdict::Improved)),
        format!("{} unchanged", count(Verdict::Unchanged)),
    ];
    for v in [Verdict::NotEnoughData, Verdict::Ignored] {
        if count(v) > 0 {
            parts.push(format!("{} {}", count(v), v.label()));
        }
    }
    format!(
        "{head}: {} of {} metrics (chance of a false alarm on any metric at most {:.0}%)",
        parts.join(", "),
        c.metrics.len(),
        (1.0 - c.confidence) * 100.0
    )
}

#[derive(Serialize)]
struct ComparePage {
    title: String,
    style: &'static str,
    regressed: bool,
    outcome: String,
    confidence: String,
    false_alarm: String,
    rows: Vec<MetricRow>,
    notes: Vec<String>,
}

/// One metric as display-ready strings, shared by the terminal table and the page.
#[derive(Serialize)]
struct MetricRow {
    metric: String,
    baseline: String,
    candidate: String,
    change: String,
    interval: String,
    p_value: String,
    detectable: String,
    verdict: &'static str,
    better: &'static str,
}

impl MetricRow {
    fn of(m: &MetricComparison) -> MetricRow {
        // The error rate moves in percentage points, the rest relatively.
        let change = |c: f64| {
            if m.unit == "ratio" {
                format!("{:+.2} pp", c * 100.0)
            } else {
                fmt_change(c)
            }
        };
        let interval = match (m.ci_low, m.ci_high) {
            (Some(low), Some(high)) => format!("{} … {}", change(low), change(high)),
            _ => NONE.into(),
        };
        // In the worse direction: a drop for throughput, a rise for the rest.
        let detectable = m.detectable.map_or(NONE.into(), |d| {
            if m.unit == "ratio" {
                format!("+{:.2} pp", d * 100.0)
            } else if !d.is_finite() {
                NONE.into()
            } else if m.bigger_is_better {
                format!("-{:.1} %", d * 100.0)
            } else {
                format!("+{:.1} %", d * 100.0)
            }
        });
        MetricRow {
            metric: m.metric.clone(),
            baseline: fmt_figure(m.baseline, &m.unit),
            candidate: fmt_figure(m.candidate, &m.unit),
            change: change(m.change),
            interval,
            p_value: m.p_value.map_or(NONE.into(), fmt_p_value),
            detectable,
            verdict: m.verdict.label(),
            better: if m.bigger_is_better {
                "bigger is better"
            } else {
                "smaller is better"
            },
        }
    }

    fn cells(self) -> [String; 8] {
        [
            self.metric,
            self.baseline,
            self.candidate,
            self.change,
            self.interval,
            self.p_value,
            self.detectable,
            self.verdict.into(),
        ]
    }
}

/// A metric's figure with its unit, as the tables show it: `88.4 ops/s`, `148 ms`, `0.14 %`.
pub(crate) fn fmt_figure(v: f64, unit: &str) -> String {
    let figure = match unit {
        "ms" => fmt_ms(v),
        "ops/s" => fmt_rate(v),
        "ratio" => fmt_percent(v),
        _ if v.is_finite() => format!("{v:.3}"),
        _ => NONE.into(),
    };
    let unit = if unit == "ratio" { "" } else { unit };
    format!("{figure} {unit}").trim_end().into()
}

/// A p-value to three decimals, or `<0.001`.
pub(crate) fn fmt_p_value(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// A relative change as a signed percentage: `+3.2 %`, `-50.0 %`, `+∞`.
pub(crate) fn fmt_change(change: f64) -> String {
    if change.is_nan() {
        NONE.into()
    } else if change.is_infinite() {
        if change > 0.0 { "+∞" } else { "-∞" }.into()
    } else {
        format!("{:+.1} %", change * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_baseline_changes_infinitely_or_not_at_all() {
        assert_eq!(relative(0.0, 0.0), 0.0);
        assert_eq!(relative(0.5, 0.0), f64::INFINITY);
        assert_eq!(relative(-5.0, 10.0), -0.5);
    }

    #[test]
    fn ranks_read_back_from_a_histogram() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        assert_eq!(value_at_rank(&h, 1), Some(10));
        assert_eq!(value_at_rank(&h, 1000).map(|v| v / 10), Some(1000));
        assert_eq!(value_at_rank(&h, 1001), None);
        // Ranks 980..=999 or so around the p99 of 1000 values: a few percent on a log scale.
        let se = quantile_se_log(&h, 0.99, 0.95).unwrap();
        assert!(se > 0.001 && se < 0.02, "{se}");
    }
}
