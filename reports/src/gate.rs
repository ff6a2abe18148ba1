//! The regression gate's settings (`ci/gate.toml`): noise thresholds per kind of metric, the
//! confidence (1 − the family-wise false-alarm rate of one comparison), the repetitions the
//! pipeline should run, and per-metric overrides (a wider threshold for a noisy metric, or leave
//! it out), as `clusterbench calibrate` writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Confidence of the intervals; 1 − confidence is the chance that a comparison of two
    /// unchanged configurations calls *any* metric regressed.
    pub confidence: f64,
    /// Runs each side should have (what `ci/perf-gate.sh` runs); `compare` warns below it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetitions: Option<u32>,
    /// Per-metric overrides, by the metric's name as `compare` prints it
    /// (`[metric."imap p99_ms"] threshold = 0.3`, or `ignore = true`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metric: BTreeMap<String, MetricGate>,
}

/// One metric's override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricGate {
    /// The metric's own noise threshold, in its kind's terms (relative; absolute for the error
    /// rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Shown but never judged (and not counted in the family of tests).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore: bool,
}

/// Most repetitions a gate may ask for.
pub const GATE_REPETITIONS_MAX: u32 = 100;

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            throughput_drop_max: 0.05,
            latency_rise_max: 0.10,
            recovery_rise_max: 0.25,
            error_rate_rise_max: 0.005,
            confidence: 0.95,
            repetitions: None,
            metric: BTreeMap::new(),
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

    /// The gate as a TOML file, with a comment per key.
    pub fn to_toml(&self) -> String {
        let line = |kv: String, comment: &str| format!("{kv:<31}# {comment}\n");
        let mut out = String::new();
        out.push_str(&line(
            format!("throughput_drop_max = {}", round(self.throughput_drop_max)),
            "a smaller drop is noise",
        ));
        out.push_str(&line(
            format!("latency_rise_max = {}", round(self.latency_rise_max)),
            "p50/p99",
        ));
        out.push_str(&line(
            format!("recovery_rise_max = {}", round(self.recovery_rise_max)),
            "convergence and throughput-recovery times",
        ));
        out.push_str(&line(
            format!("error_rate_rise_max = {}", round(self.error_rate_rise_max)),
            "absolute",
        ));
        out.push_str(&line(
            format!("confidence = {}", round(self.confidence)),
            "1 - the chance of any false alarm in one comparison",
        ));
        if let Some(r) = self.repetitions {
            out.push_str(&line(format!("repetitions = {r}"), "runs a side"));
        }
        for (name, m) in &self.metric {
            out.push_str(&format!("\n[metric.{}]\n", toml_key(name)));
            if let Some(t) = m.threshold {
                out.push_str(&format!("threshold = {}\n", round(t)));
            }
            if m.ignore {
                out.push_str("ignore = true\n");
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), String> {
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
        if self.throughput_drop_max >= 1.0 {
            return Err("throughput_drop_max must be below 1 (a drop of 100 %)".into());
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(format!(
                "confidence is {}: give a number between 0 and 1, such as 0.95",
                self.confidence
            ));
        }
        if let Some(r) = self.repetitions {
            if !(1..=GATE_REPETITIONS_MAX).contains(&r) {
                return Err(format!(
                    "repetitions is {r}: give 1 to {GATE_REPETITIONS_MAX}"
                ));
            }
        }
        for (name, m) in &self.metric {
            if !is_metric_name(name) {
                return Err(format!(
                    "metric.\"{name}\": not a metric name; names look like \"smtp p99_ms\", \
                     \"imap throughput_per_s\", \"error_rate\", \"recovery 0 convergence_s\""
                ));
            }
            if let Some(t) = m.threshold {
                if !(t.is_finite() && t >= 0.0) {
                    return Err(format!(
                        "metric.\"{name}\".threshold is {t}: give a number of 0 or more"
                    ));
                }
                if name.ends_with("throughput_per_s") && t >= 1.0 {
                    return Err(format!(
                        "metric.\"{name}\".threshold must be below 1 (a drop of 100 %)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is a metric `compare` can report: `<op> throughput_per_s|p50_ms|p99_ms`,
/// `error_rate`, or `recovery <n> convergence_s|throughput_recovered_s`.
pub fn is_metric_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split(' ').collect();
    let op = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match parts.as_slice() {
        ["error_rate"] => true,
        [o, figure] => op(o) && ["throughput_per_s", "p50_ms", "p99_ms"].contains(figure),
        ["recovery", n, figure] => {
            n.parse::<u64>().is_ok() && ["convergence_s", "throughput_recovered_s"].contains(figure)
        }
        _ => false,
    }
}

/// A figure rounded to four significant decimals for a hand-edited file.
fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// A TOML key, quoted when it is not bare.
fn toml_key(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_gate_reads_back() {
        let mut gate = Gate {
            repetitions: Some(5),
            latency_rise_max: 0.18,
            ..Gate::default()
        };
        gate.metric.insert(
            "imap p99_ms".into(),
            MetricGate {
                threshold: Some(0.4),
                ignore: false,
            },
        );
        gate.metric.insert(
            "pop3 p50_ms".into(),
            MetricGate {
                threshold: None,
                ignore: true,
            },
        );
        let text = gate.to_toml();
        assert_eq!(Gate::from_toml(&text).unwrap(), gate, "{text}");
    }

    #[test]
    fn metric_overrides_are_checked() {
        let err = Gate::from_toml("[metric.\"smtp p98_ms\"]\nthreshold = 0.2\n").unwrap_err();
        assert!(err.contains("smtp p98_ms"), "{err}");
        let err = Gate::from_toml("[metric.\"smtp p99_ms\"]\nthreshhold = 0.2\n").unwrap_err();
        assert!(err.contains("threshhold"), "{err}");
        let err = Gate::from_toml("repetitions = 0\n").unwrap_err();
        assert!(err.contains("repetitions"), "{err}");
        assert!(is_metric_name("recovery 2 throughput_recovered_s"));
        assert!(!is_metric_name("recovery x convergence_s"));
    }
}
