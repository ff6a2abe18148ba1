//! Compares a baseline configuration with a candidate: repetitions of each (parsed results.json
//! files), figure by figure, with a confidence interval of the relative change and a verdict
//! against noise thresholds (`ci/gate.toml`), for a CI gate and for people.
//!
//! It works from each run's summary figures (throughput, percentiles, error counts, recovery
//! times), never from the serialized histograms. Like the rest of this crate it does no I/O and
//! reads no clock; its resampling is seeded, so the same inputs always give the same verdicts.

use serde::{Deserialize, Serialize};

use crate::format::{fmt_ms, fmt_percent, fmt_rate, NONE};
use crate::schema::Results;
use crate::ReportError;

/// Bootstrap resamples per metric.
pub const BOOTSTRAP_RESAMPLES: usize = 2_000;
/// Each metric's bootstrap starts from this seed, so a metric's interval does not depend on
/// which other metrics were compared.
const BOOTSTRAP_SEED: u64 = 0x636c_7573_7465_7262; // "clusterb"
/// Below this many repetitions on either side the normal approximation of Mann-Whitney's U is
/// too rough to quote, and no p-value is given.
pub const MANN_WHITNEY_N_MIN: usize = 8;
/// At most this many runs per side: the rank test sorts and the bootstrap resamples them.
pub const COMPARE_RUNS_MAX: usize = 10_000;

const TEMPLATE_NAME: &str = "compare.html";
const TEMPLATE: &str = include_str!("../templates/compare.html");
const STYLE: &str = include_str!("../templates/style.css");

/// Noise thresholds and test settings (from ci/gate.toml, all optional with defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gate {
    /// A throughput drop up to this fraction is noise.
    pub throughput_drop_max: f64,
    /// A latency (p50, p99) rise up to this fraction is noise.
    pub latency_rise_max: f64,
    /// A recovery time (convergence, throughput back) rise up to this fraction is noise.
    pub recovery_rise_max: f64,
    /// An error-rate rise up to this much, absolute (0.005 = half a percentage point), is noise.
    pub error_rate_rise_max: f64,
    /// Confidence level of the intervals, in (0, 1).
    pub confidence: f64,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            throughput_drop_max: 0.05,
            latency_rise_max: 0.10,
            recovery_rise_max: 0.25,
            error_rate_rise_max: 0.005,
            confidence: 0.95,
        }
    }
}

impl Gate {
    /// Reads a gate file; keys left out keep their defaults, an unknown key is an error naming it.
    pub fn from_toml(text: &str) -> Result<Gate, String> {
        let gate: Gate = toml::from_str(text).map_err(|e| e.message().to_string())?;
        gate.validate()?;
        Ok(gate)
    }

    fn validate(&self) -> Result<(), String> {
        let thresholds = [
            ("throughput_drop_max", self.throughput_drop_max),
            ("latency_rise_max", self.latency_rise_max),
            ("recovery_rise_max", self.recovery_rise_max),
            ("error_rate_rise_max", self.error_rate_rise_max),
        ];
        for (key, value) in thresholds {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{key} is {value}: give a number of 0 or more"));
            }
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(format!(
                "confidence is {}: give a number between 0 and 1, such as 0.95",
                self.confidence
            ));
        }
        Ok(())
    }
}

/// How a metric moved, beyond noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Improved,
    Unchanged,
    Regressed,
}

/// One figure of the baseline against the same figure of the candidate.
#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    /// `smtp throughput_per_s`, `smtp p99_ms`, `error_rate`, `recovery 0 convergence_s`.
    pub metric: String,
    /// `ops/s`, `ms`, `s` or `ratio`.
    pub unit: String,
    pub bigger_is_better: bool,
    /// Mean over the baseline's runs.
    pub baseline: f64,
    /// Mean over the candidate's runs.
    pub candidate: f64,
    /// Relative: candidate / baseline - 1 (infinite when the baseline is 0 and the candidate
    /// is not; `null` in JSON).
    pub change: f64,
    /// The confidence interval of the relative change; the point change when a side has one run.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided Mann-Whitney U, when both sides have [`MANN_WHITNEY_N_MIN`] runs or more.
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

/// Every figure the two sides share, and whether any regressed.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub metrics: Vec<MetricComparison>,
    pub regressed: bool,
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

    let mut metrics = Vec::new();
    for kind in metric_kinds(&baseline, &candidate) {
        let b: Vec<f64> = baseline.iter().filter_map(|r| kind.value(r)).collect();
        let c: Vec<f64> = candidate.iter().filter_map(|r| kind.value(r)).collect();
        if b.is_empty() || c.is_empty() {
            continue;
        }
        metrics.push(compare_metric(&kind, &b, &c, gate));
    }
    let regressed = metrics.iter().any(|m| m.verdict == Verdict::Regressed);
    Ok(Comparison { metrics, regressed })
}

/// A plain-text table for the terminal, one metric a line, then the overall outcome.
pub fn comparison_table(c: &Comparison) -> String {
    let header = [
        "metric",
        "baseline",
        "candidate",
        "change",
        "interval",
        "p",
        "verdict",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = c
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
                0 | 6 => line.push_str(&format!("{cell}{pad}")),
                _ => line.push_str(&format!("{pad}{cell}")),
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("\n{}\n", outcome(c)));
    out
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
        rows: c.metrics.iter().map(MetricRow::of).collect(),
    };
    crate::page::render_template(TEMPLATE_NAME, TEMPLATE, &page)
}

fn parse_side(side: &'static str, runs: &[serde_json::Value]) -> Result<Vec<Results>, ReportError> {
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
            Results::from_json(value).map_err(|e| ReportError::InCompareRun {
                side,
                run: i + 1,
                runs: runs.len(),
                source: Box::new(e),
            })
        })
        .collect()
}

/// One figure to compare, and how to read it from a run.
enum MetricKind {
    Throughput(String),
    P50(String),
    P99(String),
    ErrorRate,
    Convergence(u64),
    ThroughputRecovered(u64),
}

impl MetricKind {
    fn name(&self) -> String {
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

    fn unit(&self) -> &'static str {
        match self {
            MetricKind::Throughput(_) => "ops/s",
            MetricKind::P50(_) | MetricKind::P99(_) => "ms",
            MetricKind::ErrorRate => "ratio",
            MetricKind::Convergence(_) | MetricKind::ThroughputRecovered(_) => "s",
        }
    }

    fn bigger_is_better(&self) -> bool {
        matches!(self, MetricKind::Throughput(_))
    }

    /// The noise threshold, and whether it applies to the absolute (not relative) change.
    fn threshold(&self, gate: &Gate) -> (f64, bool) {
        match self {
            MetricKind::Throughput(_) => (gate.throughput_drop_max, false),
            MetricKind::P50(_) | MetricKind::P99(_) => (gate.latency_rise_max, false),
            MetricKind::ErrorRate => (gate.error_rate_rise_max, true),
            MetricKind::Convergence(_) | MetricKind::ThroughputRecovered(_) => {
                (gate.recovery_rise_max, false)
            }
        }
    }

    /// The figure in one run; `None` when the run lacks it.
    fn value(&self, run: &Results) -> Option<f64> {
        let value = match self {
            MetricKind::Throughput(op) => run.operations.ops.get(op).map(|o| o.throughput_per_s),
            MetricKind::P50(op) => run.operations.ops.get(op).map(|o| o.p50_ms),
            MetricKind::P99(op) => run.operations.ops.get(op).map(|o| o.p99_ms),
            MetricKind::ErrorRate => {
                let ops = run.operations.ops.values();
                let (errors, total) = ops.fold((0u64, 0u64), |(e, t), o| {
                    (e + o.errors, t + o.count + o.errors)
                });
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
fn metric_kinds(baseline: &[Results], candidate: &[Results]) -> Vec<MetricKind> {
    let has_op =
        |runs: &[Results], op: &str| runs.iter().any(|r| r.operations.ops.contains_key(op));
    let mut ops: Vec<String> = Vec::new();
    for run in baseline {
        for op in run.op_names() {
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

    let faults = |runs: &[Results]| -> Vec<u64> {
        let mut faults: Vec<u64> = runs
            .iter()
            .flat_map(|r| {
                r.recovery
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

fn compare_metric(kind: &MetricKind, b: &[f64], c: &[f64], gate: &Gate) -> MetricComparison {
    let base = mean(b);
    let cand = mean(c);
    let diff = cand - base;
    // The interval of the difference of means; a single run on a side has no spread to resample.
    let (diff_low, diff_high) = if b.len() >= 2 && c.len() >= 2 {
        bootstrap_diff(b, c, gate.confidence)
    } else {
        (diff, diff)
    };
    let p_value = if b.len() >= MANN_WHITNEY_N_MIN && c.len() >= MANN_WHITNEY_N_MIN {
        Some(mann_whitney_p(b, c))
    } else {
        None
    };

    // `worse` turns "higher" into "worse": +1 when smaller is better, -1 when bigger is.
    let worse = if kind.bigger_is_better() { -1.0 } else { 1.0 };
    let (threshold, absolute) = kind.threshold(gate);
    let moved = worse * if absolute { diff } else { relative(diff, base) };
    let all_worse = worse * diff_low > 0.0 && worse * diff_high > 0.0;
    let all_better = worse * diff_low < 0.0 && worse * diff_high < 0.0;
    let verdict = if moved > threshold && all_worse {
        Verdict::Regressed
    } else if moved < -threshold && all_better {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    };

    MetricComparison {
        metric: kind.name(),
        unit: kind.unit().into(),
        bigger_is_better: kind.bigger_is_better(),
        baseline: base,
        candidate: cand,
        change: relative(diff, base),
        ci_low: relative(diff_low, base),
        ci_high: relative(diff_high, base),
        p_value,
        verdict,
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
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

/// The `confidence` percentile interval of mean(candidate) - mean(baseline), each side resampled
/// with replacement [`BOOTSTRAP_RESAMPLES`] times from a fixed seed.
fn bootstrap_diff(b: &[f64], c: &[f64], confidence: f64) -> (f64, f64) {
    let mut rng = SplitMix64(BOOTSTRAP_SEED);
    let mut resample = |values: &[f64]| -> f64 {
        let sum: f64 = (0..values.len())
            .map(|_| values[rng.below(values.len())])
            .sum();
        sum / values.len() as f64
    };
    let mut diffs: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| resample(c) - resample(b))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    (percentile(&diffs, tail), percentile(&diffs, 1.0 - tail))
}

/// The nearest-rank percentile of sorted values, `q` in [0, 1].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough to pick resample indices.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (multiply-shift; the bias is below 2^-50 for any n this module sees).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Two-sided p-value of the Mann-Whitney U test by the normal approximation, with the tie
/// correction and a continuity correction.
fn mann_whitney_p(b: &[f64], c: &[f64]) -> f64 {
    let (n1, n2) = (b.len() as f64, c.len() as f64);
    let mut all: Vec<(f64, bool)> = b
        .iter()
        .map(|&v| (v, true))
        .chain(c.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let mut rank_sum_b = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Tied values share the mean of their ranks (ranks count from 1).
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_b += rank * all[i..=j].iter().filter(|(_, is_b)| *is_b).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_b - n1 * (n1 + 1.0) / 2.0;
    let mu = n1 * n2 / 2.0;
    let total = n as f64;
    let variance = n1 * n2 / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = ((u - mu).abs() - 0.5).max(0.0) / variance.sqrt();
    erfc(z / std::f64::consts::SQRT_2).min(1.0)
}

/// The complementary error function (Numerical Recipes' `erfcc`, fractional error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

fn outcome(c: &Comparison) -> String {
    let count = |v: Verdict| c.metrics.iter().filter(|m| m.verdict == v).count();
    let (regressed, improved) = (count(Verdict::Regressed), count(Verdict::Improved));
    let head = if c.regressed {
        "REGRESSED"
    } else {
        "NO REGRESSION"
    };
    format!(
        "{head}: {regressed} regressed, {improved} improved, {} unchanged of {} metrics",
        c.metrics.len() - regressed - improved,
        c.metrics.len()
    )
}

#[derive(Serialize)]
struct ComparePage {
    title: String,
    style: &'static str,
    regressed: bool,
    outcome: String,
    rows: Vec<MetricRow>,
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
    verdict: &'static str,
    better: &'static str,
}

impl MetricRow {
    fn of(m: &MetricComparison) -> MetricRow {
        let figure = |v: f64| -> String {
            match m.unit.as_str() {
                "ms" => fmt_ms(v),
                "ops/s" => fmt_rate(v),
                "ratio" => fmt_percent(v),
                _ if v.is_finite() => format!("{v:.3}"),
                _ => NONE.into(),
            }
        };
        let unit = if m.unit == "ratio" {
            ""
        } else {
            m.unit.as_str()
        };
        MetricRow {
            metric: m.metric.clone(),
            baseline: format!("{} {unit}", figure(m.baseline)).trim_end().into(),
            candidate: format!("{} {unit}", figure(m.candidate)).trim_end().into(),
            change: fmt_change(m.change),
            interval: format!("{} … {}", fmt_change(m.ci_low), fmt_change(m.ci_high)),
            p_value: m.p_value.map_or(NONE.into(), |p| format!("{p:.3}")),
            verdict: match m.verdict {
                Verdict::Improved => "improved",
                Verdict::Unchanged => "unchanged",
                Verdict::Regressed => "regressed",
            },
            better: if m.bigger_is_better {
                "bigger is better"
            } else {
                "smaller is better"
            },
        }
    }

    fn cells(self) -> [String; 7] {
        [
            self.metric,
            self.baseline,
            self.candidate,
            self.change,
            self.interval,
            self.p_value,
            self.verdict.into(),
        ]
    }
}

/// A relative change as a signed percentage: `+3.2 %`, `-50.0 %`, `+∞`.
fn fmt_change(change: f64) -> String {
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
    fn the_bootstrap_replays_from_its_seed() {
        let b = [100.0, 101.0, 99.0, 100.5];
        let c = [90.0, 91.0, 89.5, 90.5];
        let first = bootstrap_diff(&b, &c, 0.95);
        assert_eq!(first, bootstrap_diff(&b, &c, 0.95));
        assert!(first.0 <= first.1 && first.1 < 0.0, "{first:?}");
    }

    #[test]
    fn mann_whitney_separates_disjoint_samples_and_not_equal_ones() {
        let low: Vec<f64> = (0..10).map(f64::from).collect();
        let high: Vec<f64> = (100..110).map(f64::from).collect();
        let p = mann_whitney_p(&low, &high);
        assert!(p < 0.001, "{p}");
        assert_eq!(mann_whitney_p(&[5.0; 10], &[5.0; 10]), 1.0);
        let p = mann_whitney_p(&low, &low);
        assert!(p > 0.9, "{p}");
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        assert!((erfc(1.0) - 0.157_299_2).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_8).abs() < 1e-6);
    }

    #[test]
    fn a_zero_baseline_changes_infinitely_or_not_at_all() {
        assert_eq!(relative(0.0, 0.0), 0.0);
        assert_eq!(relative(0.5, 0.0), f64::INFINITY);
        assert_eq!(relative(-5.0, 10.0), -0.5);
    }
}
