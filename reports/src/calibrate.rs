//! Calibration of the regression gate from repeated runs of one configuration: how noisy each
//! metric is on this machine, how often the gate would have called an unchanged configuration
//! regressed, and how many runs a side and which thresholds a chosen false-alarm rate and
//! detectable change need.
//!
//! The false-alarm rate is measured, not assumed: the runs are split into two disjoint sides of
//! `repetitions` runs many times over (seeded), each split compared exactly as `compare` would,
//! and the share called regressed is counted. The thresholds it suggests are the changes noise
//! alone reached in those splits (per metric, at the family-wise rate), so that a gate built from
//! them needs both statistical evidence and a change beyond what this machine's noise produces.
//! The runs needed come from the noise seen (the larger of the spread between runs and each run's
//! own sampling error) and Welch's t at the Holm-corrected level, with [`DETECT_POWER`].
//!
//! Pure, like the rest of this crate: no I/O, no clock; the splits are drawn from a fixed seed.

use serde::Serialize;

use crate::compare::{
    compare_observed, metric_kinds, observe_runs, Comparison, MetricKind, Obs, Run, Verdict,
    DETECT_POWER,
};
use crate::gate::{Gate, MetricGate};
use crate::stats;

/// Splits drawn to measure the false-alarm rate, at most.
pub const SPLITS_MAX: usize = 2_000;
/// The most runs a side calibration recommends; beyond it a metric is called too noisy.
pub const REPETITIONS_MAX: u32 = 50;
/// The seed of the splits.
const SPLIT_SEED: u64 = 0x6361_6c69_6272_6174; // "calibrat"

/// What calibration is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// Runs a side the gate will compare.
    pub repetitions: u32,
    /// The family-wise false-alarm rate wanted (1 − the gate's confidence).
    pub false_alarm: f64,
    /// The smallest relative change the gate should catch (with [`DETECT_POWER`]).
    pub detect: f64,
}

/// One metric's noise and what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct MetricNoise {
    pub metric: String,
    pub unit: String,
    /// Runs that had the figure.
    pub runs: usize,
    pub mean: f64,
    /// Standard deviation between runs, relative (on a log scale) — absolute for the error rate.
    pub between: Option<f64>,
    /// The runs' own sampling error (median), in the same terms.
    pub within: Option<f64>,
    /// Why the metric cannot be judged (too few samples for its quantile), if so.
    pub not_enough_data: Option<String>,
    /// Share of the A/A splits in which this metric was called regressed.
    pub false_alarms: f64,
    /// The worse-direction change noise alone reached in the splits at the family-wise rate: a
    /// threshold below it lets noise through.
    pub noise_threshold: Option<f64>,
    /// Runs a side to detect `goal.detect` at `goal.false_alarm`; `None` beyond
    /// [`REPETITIONS_MAX`] or without a verdict.
    pub repetitions_needed: Option<u32>,
    /// The smallest change detectable with `goal.repetitions` runs a side.
    pub detectable: Option<f64>,
}

/// The calibration of one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub runs: usize,
    pub repetitions: u32,
    pub false_alarm_goal: f64,
    pub detect_goal: f64,
    /// A/A splits compared.
    pub splits: usize,
    /// Share of them called regressed on any metric.
    pub false_alarm_rate: f64,
    pub metrics: Vec<MetricNoise>,
    /// Runs a side for the metrics that can meet the goal within [`REPETITIONS_MAX`] (the
    /// largest of their needs).
    pub repetitions_needed: Option<u32>,
    /// Metrics that cannot meet the goal within [`REPETITIONS_MAX`] runs a side.
    pub beyond_reach: Vec<String>,
    /// The gate that follows: confidence, repetitions, per-metric thresholds and exclusions.
    pub gate: Gate,
}

/// Calibrates from `runs` (repetitions of one configuration) against the thresholds of `base`.
pub fn calibrate(runs: &[Run], base: &Gate, goal: &Goal) -> Result<Calibration, String> {
    let k = goal.repetitions as usize;
    if k == 0 {
        return Err("repetitions: give 1 or more".into());
    }
    if runs.len() < 2 * k {
        return Err(format!(
            "{} run(s) cannot be split into two sides of {k}: give at least {} runs",
            runs.len(),
            2 * k
        ));
    }
    if !(goal.false_alarm > 0.0 && goal.false_alarm < 1.0) {
        return Err("false-alarm rate: give a number between 0 and 1, such as 0.05".into());
    }
    if !(goal.detect > 0.0 && goal.detect < 1.0) {
        return Err("detectable change: give a fraction between 0 and 1, such as 0.1".into());
    }
    let mut gate = base.clone();
    gate.confidence = 1.0 - goal.false_alarm;
    gate.validate()?;

    // A/A: disjoint sides of k runs, drawn at random (all of them when there are few).
    let splits = draw_splits(runs.len(), k);
    let kinds = metric_kinds(runs, runs);
    let observed = observe_runs(&kinds, runs, gate.confidence);
    let all: Vec<&[Option<Obs>]> = observed.iter().map(Vec::as_slice).collect();
    // Every run against every run: which metrics can be judged at all.
    let whole = compare_observed(&kinds, &all, &all, &gate);
    let mut flagged_any = 0usize;
    let mut flagged: Vec<usize> = vec![0; kinds.len()];
    let mut moved: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for (a, b) in &splits {
        let side = |idx: &[usize]| idx.iter().map(|&i| all[i]).collect::<Vec<_>>();
        let c = compare_observed(&kinds, &side(a), &side(b), &gate);
        flagged_any += usize::from(c.regressed);
        for m in &c.metrics {
            let Some(i) = kinds.iter().position(|k| k.name() == m.metric) else {
                continue;
            };
            flagged[i] += usize::from(m.verdict == Verdict::Regressed);
            if matches!(m.verdict, Verdict::NotEnoughData | Verdict::Ignored) {
                continue;
            }
            // In the threshold's terms, positive when worse.
            let worse = if m.bigger_is_better { -1.0 } else { 1.0 };
            // In the threshold's terms already: relative, or absolute for the error rate.
            if m.change.is_finite() {
                moved[i].push(worse * m.change);
            }
        }
    }
    let judged_metrics = kinds
        .iter()
        .zip(&moved)
        .filter(|(_, m)| !m.is_empty())
        .count()
        .max(1);
    // The per-metric level of a family-wise rate, as Bonferroni (Holm's first step) splits it.
    let per_metric = goal.false_alarm / judged_metrics as f64;

    let mut metrics = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let noise = noise_of(kind, i, &observed, &whole);
        let mut m = MetricNoise {
            metric: kind.name(),
            unit: kind.unit().into(),
            runs: noise.values.len(),
            mean: stats::mean(&noise.values),
            between: noise.between,
            within: noise.within,
            not_enough_data: noise.not_enough_data.clone(),
            false_alarms: flagged[i] as f64 / splits.len().max(1) as f64,
            noise_threshold: None,
            repetitions_needed: None,
            detectable: None,
        };
        if m.not_enough_data.is_none() {
            let mut changes = moved[i].clone();
            changes.sort_by(f64::total_cmp);
            // No lower than 0: noise that only ever improved a metric sets no threshold.
            m.noise_threshold = quantile(&changes, 1.0 - per_metric).map(|t| t.max(0.0));
            if let Some(sigma) = noise.sigma() {
                let scale = |d: f64| to_change(kind, noise.log_scale, d, m.mean);
                m.detectable =
                    Some(scale(detectable(sigma, k as u32, per_metric))).filter(|d| d.is_finite());
                if m.detectable.is_some() {
                    m.repetitions_needed = (2..=REPETITIONS_MAX)
                        .find(|&n| scale(detectable(sigma, n, per_metric)) <= goal.detect);
                }
            }
        }
        metrics.push(m);
    }

    // The gate: the wanted confidence and repetitions; per metric, a threshold no lower than
    // the noise reached, and metrics that cannot be judged at all left out.
    // Metrics with a relative change to detect (not those at 0 in every run).
    let judged = metrics
        .iter()
        .filter(|m| m.not_enough_data.is_none() && m.detectable.is_some());
    let repetitions_needed = judged.clone().filter_map(|m| m.repetitions_needed).max();
    let beyond_reach = judged
        .filter(|m| m.repetitions_needed.is_none())
        .map(|m| m.metric.clone())
        .collect();
    gate.repetitions = Some(goal.repetitions);
    for (m, kind) in metrics.iter().zip(&kinds) {
        let entry = if m.not_enough_data.is_some() {
            Some(MetricGate {
                threshold: None,
                ignore: true,
            })
        } else {
            m.noise_threshold
                .filter(|&t| t > kind.threshold(base))
                .map(|t| MetricGate {
                    threshold: Some(round_up(t, kind)),
                    ignore: false,
                })
        };
        if let Some(entry) = entry {
            gate.metric.insert(m.metric.clone(), entry);
        }
    }
    gate.validate()?;
    Ok(Calibration {
        runs: runs.len(),
        repetitions: goal.repetitions,
        false_alarm_goal: goal.false_alarm,
        detect_goal: goal.detect,
        splits: splits.len(),
        false_alarm_rate: flagged_any as f64 / splits.len().max(1) as f64,
        metrics,
        repetitions_needed,
        beyond_reach,
        gate,
    })
}

/// A metric's noise over the runs, on the scale the gate compares it.
struct Noise {
    values: Vec<f64>,
    log_scale: bool,
    between: Option<f64>,
    within: Option<f64>,
    not_enough_data: Option<String>,
}

impl Noise {
    /// The noise a run carries: the larger of the spread between runs and its own error.
    fn sigma(&self) -> Option<f64> {
        match (self.between, self.within) {
            (Some(b), Some(w)) => Some(b.max(w)),
            (b, w) => b.or(w),
        }
    }
}

/// Metric number `i`'s noise over the runs' observations; `whole` (every run against every run)
/// says whether it can be judged at all.
fn noise_of(
    kind: &MetricKind,
    i: usize,
    observed: &[Vec<Option<Obs>>],
    whole: &Comparison,
) -> Noise {
    let obs: Vec<Obs> = observed.iter().filter_map(|r| r[i]).collect();
    let values: Vec<f64> = obs.iter().map(|o| o.value).collect();
    let log_scale = !kind.absolute() && values.iter().all(|v| *v > 0.0);
    let scaled: Vec<f64> = values
        .iter()
        .map(|v| if log_scale { v.ln() } else { *v })
        .collect();
    let between = stats::sample_variance(&scaled).map(f64::sqrt);
    let not_enough_data = whole
        .metrics
        .iter()
        .find(|m| m.metric == kind.name())
        .filter(|m| m.verdict == Verdict::NotEnoughData)
        .map(|m| m.note.clone().unwrap_or_else(|| "not enough data".into()));
    // The runs' own sampling error: the median, on the same scale.
    let mut within: Vec<f64> = obs
        .iter()
        .filter_map(|o| {
            let se = o.se?;
            Some(if log_scale { se / o.value } else { se })
        })
        .filter(|w| w.is_finite())
        .collect();
    within.sort_by(f64::total_cmp);
    Noise {
        within: within.get(within.len() / 2).copied(),
        values,
        log_scale,
        between,
        not_enough_data,
    }
}

/// The smallest worse change (on the comparison's scale) a comparison of `n` runs a side with
/// per-run noise `sigma` detects with [`DETECT_POWER`] at one-sided level `alpha`.
fn detectable(sigma: f64, n: u32, alpha: f64) -> f64 {
    let n = f64::from(n.max(1));
    let df = if n >= 2.0 {
        2.0 * (n - 1.0)
    } else {
        f64::INFINITY
    };
    let se = sigma * (2.0 / n).sqrt();
    (stats::t_quantile(1.0 - alpha, df) + stats::t_quantile(DETECT_POWER, df)) * se
}

/// A change on the comparison's scale in the threshold's terms (relative; absolute for the
/// error rate).
fn to_change(kind: &MetricKind, log_scale: bool, d: f64, mean: f64) -> f64 {
    if kind.absolute() {
        d
    } else if !log_scale {
        if mean > 0.0 {
            d / mean
        } else {
            f64::INFINITY
        }
    } else if kind.bigger_is_better() {
        1.0 - (-d).exp()
    } else {
        d.exp() - 1.0
    }
}

/// The `q` quantile (nearest rank) of sorted values; `None` when empty.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A threshold rounded up to a figure a person would write: whole percents, or a tenth of a
/// percentage point for the error rate.
fn round_up(t: f64, kind: &MetricKind) -> f64 {
    let step = if kind.absolute() { 0.001 } else { 0.01 };
    let rounded = (t / step).ceil() * step;
    if kind.bigger_is_better() {
        rounded.min(0.99)
    } else {
        rounded
    }
}

/// Disjoint pairs of sides of `k` runs out of `n`: every one when there are few, else
/// [`SPLITS_MAX`] drawn from a fixed seed.
fn draw_splits(n: usize, k: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut rng = SPLIT_SEED;
    let mut next = move || {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut splits = Vec::with_capacity(SPLITS_MAX);
    let mut seen = std::collections::BTreeSet::new();
    // Attempts are bounded: with few runs there are few distinct splits.
    for _ in 0..SPLITS_MAX * 4 {
        if splits.len() >= SPLITS_MAX {
            break;
        }
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = ((u128::from(next()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
        let mut a = order[..k].to_vec();
        let mut b = order[k..2 * k].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        if seen.insert((a.clone(), b.clone())) {
            splits.push((a, b));
        }
    }
    splits
}

/// The calibration as text for the terminal.
pub fn calibration_table(c: &Calibration) -> String {
    let pct = |v: f64| format!("{:.1} %", v * 100.0);
    let relative = |m: &MetricNoise, v: f64| {
        if m.unit == "ratio" {
            format!("{:.2} pp", v * 100.0)
        } else {
            pct(v)
        }
    };
    let header = [
        "metric",
        "mean",
        "run to run",
        "within run",
        "A/A flagged",
        "noise reached",
        "detectable",
        "runs needed",
    ]
    .map(String::from);
    let mut rows: Vec<[String; 8]> = Vec::new();
    for m in &c.metrics {
        let mean = match m.unit.as_str() {
            "ms" => format!("{:.2} ms", m.mean),
            "ops/s" => format!("{:.1}/s", m.mean),
            "ratio" => pct(m.mean),
            _ => format!("{:.3} s", m.mean),
        };
        if m.not_enough_data.is_some() {
            rows.push([
                m.metric.clone(),
                mean,
                m.between.map_or("–".into(), |b| relative(m, b)),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "not enough data".into(),
            ]);
            continue;
        }
        rows.push([
            m.metric.clone(),
            mean,
            m.between.map_or("–".into(), |b| relative(m, b)),
            m.within.map_or("–".into(), |w| relative(m, w)),
            pct(m.false_alarms),
            m.noise_threshold.map_or("–".into(), |t| relative(m, t)),
            m.detectable.map_or("–".into(), |d| relative(m, d)),
            match (m.detectable, m.repetitions_needed) {
                (None, _) => "–".into(),
                (Some(_), None) => format!("> {REPETITIONS_MAX}"),
                (Some(_), Some(n)) => n.to_string(),
            },
        ]);
    }
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
            if i == 0 {
                line.push_str(&format!("{cell}{pad}  "));
            } else {
                line.push_str(&format!("{pad}{cell}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    for m in c.metrics.iter().filter(|m| m.not_enough_data.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            m.metric,
            m.not_enough_data.as_deref().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "A/A: {} comparisons of {} run(s) a side drawn from {} runs: {:.1} % called something \
         regressed (the goal: at most {:.1} %).\n",
        c.splits,
        c.repetitions,
        c.runs,
        c.false_alarm_rate * 100.0,
        c.false_alarm_goal * 100.0
    ));
    if let Some(n) = c.repetitions_needed {
        out.push_str(&format!(
            "To catch a {:.0} % change (4 times in 5) with at most {:.0} % false alarms: {n} run(s) a side",
            c.detect_goal * 100.0,
            c.false_alarm_goal * 100.0
        ));
        out.push_str(if c.beyond_reach.is_empty() {
            ".\n"
        } else {
            " for the metrics that can;\n"
        });
    }
    if !c.beyond_reach.is_empty() {
        out.push_str(&format!(
            "beyond {REPETITIONS_MAX} runs a side: {} (too noisy here: lengthen the runs or raise \
             the rate so they hold more samples, or widen their thresholds).\n",
            c.beyond_reach.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_replay() {
        let splits = draw_splits(10, 3);
        assert_eq!(splits, draw_splits(10, 3));
        assert!(!splits.is_empty() && splits.len() <= SPLITS_MAX);
        for (a, b) in &splits {
            assert_eq!((a.len(), b.len()), (3, 3));
            assert!(a.iter().all(|i| !b.contains(i)));
        }
        // Six runs in two sides of three: 20 ordered splits at most.
        assert!(draw_splits(6, 3).len() <= 20);
    }

    #[test]
    fn more_noise_needs_more_runs() {
        let quiet = detectable(0.02, 3, 0.005);
        let loud = detectable(0.2, 3, 0.005);
        assert!(loud > 5.0 * quiet, "{quiet} {loud}");
        assert!(detectable(0.1, 10, 0.005) < detectable(0.1, 3, 0.005));
    }

    #[test]
    fn thresholds_round_up_to_whole_percents() {
        let p99 = MetricKind::P99("smtp".into());
        assert!((round_up(0.123, &p99) - 0.13).abs() < 1e-12);
        assert!((round_up(0.0031, &MetricKind::ErrorRate) - 0.004).abs() < 1e-12);
    }
}
