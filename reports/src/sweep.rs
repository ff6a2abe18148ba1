//! The sweep page: reads sweep.json and the results of each of its runs, groups the runs into
//! configurations (one per combination of swept values), aggregates each over its repetitions,
//! and renders one page of tables and charts that links to each run's own report.
//!
//! Like [`crate::page`], everything from a file reaches the page through tera's autoescaping; only
//! the charts and the stylesheet, which this crate generates, are inserted raw. Links are relative
//! paths built from each run's `dir`, encoded so that they can never leave for another site.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::format::{fmt_count, fmt_ms, fmt_rate, NONE};
use crate::schema::Results;
use crate::sweep_charts::{self, Line, LineChart, Point};
use crate::ReportError;

/// The only sweep.json schema version this crate reads.
pub const SWEEP_SCHEMA_VERSION: u64 = 1;
/// A sweep lists at most this many runs; a bigger file is refused rather than drawn unreadably.
pub const SWEEP_RUNS_MAX: usize = 10_000;

const TEMPLATE_NAME: &str = "sweep.html";
const TEMPLATE: &str = include_str!("../templates/sweep.html");
const STYLE: &str = include_str!("../templates/style.css");

const KEY_NODES: &str = "cluster.nodes";
const KEY_REPLICATION: &str = "cluster.replication";
const KEY_SKEW: &str = "workload.skew";
const KEY_PLACEMENT: &str = "cluster.placement";
/// The operation whose figures a mail sweep compares: mail in is what a cluster is sized for.
const OP: &str = "smtp";
/// A web sweep compares all requests: these kinds together (throughput summed, the worst
/// percentile).
const WEB_OPS: [&str; 4] = ["html", "gif", "jpeg", "other"];
/// Web keys: workers of one class (the scaling chart's x) and the cache's size.
const KEY_WORKERS_PREFIX: &str = "cluster.web.workers.classes.";
const KEY_CACHE_BYTES: &str = "cluster.web.cache.bytes_max";

/// A run's compared figures: throughput, p50 and p99 (ms).
fn run_figures(result: &Results) -> Option<(f64, f64, f64)> {
    if result.web.is_none() {
        let o = result.operations.ops.get(OP)?;
        return Some((o.throughput_per_s, o.p50_ms, o.p99_ms));
    }
    let ops: Vec<_> = WEB_OPS
        .iter()
        .filter_map(|k| result.operations.ops.get(*k))
        .collect();
    if ops.is_empty() {
        return None;
    }
    Some((
        ops.iter().map(|o| o.throughput_per_s).sum(),
        ops.iter().map(|o| o.p50_ms).fold(0.0, f64::max),
        ops.iter().map(|o| o.p99_ms).fold(0.0, f64::max),
    ))
}

/// sweep.json, as `clusterbench run` writes it for an experiment with a `[sweep]` table.
#[derive(Debug, Deserialize)]
struct SweepFile {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default = "one")]
    repeat: u64,
    runs: Vec<SweepRun>,
    /// Present when every configuration ran at its capacity (`sweep.saturate`).
    #[serde(default)]
    saturate: Option<SaturateFile>,
}

#[derive(Debug, Deserialize)]
struct SaturateFile {
    start_per_s: f64,
    precision: f64,
    probes: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
struct SweepRun {
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    repetition: u64,
    dir: String,
    #[serde(default)]
    pass: Option<bool>,
    #[serde(default)]
    capacity_per_s: Option<f64>,
}

/// Renders the sweep page; see [`crate::render_sweep`].
pub fn render(sweep: &Value, runs: &[Value]) -> Result<String, ReportError> {
    let file = read_sweep(sweep)?;
    if file.runs.len() != runs.len() {
        return Err(ReportError::SweepRunCount {
            listed: file.runs.len(),
            given: runs.len(),
        });
    }
    let results = runs
        .iter()
        .zip(&file.runs)
        .enumerate()
        .map(|(i, (value, run))| {
            Results::from_json(value).map_err(|e| ReportError::InSweepRun {
                run: i + 1,
                runs: runs.len(),
                dir: run.dir.clone(),
                source: Box::new(e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sweep = Sweep::of(file, results);
    let page = sweep.page()?;
    crate::page::render_template(TEMPLATE_NAME, TEMPLATE, &page)
}

/// Checks what the file is before reading the rest: its schema version, then its kind.
fn read_sweep(value: &Value) -> Result<SweepFile, ReportError> {
    let Some(object) = value.as_object() else {
        return Err(ReportError::SweepNotAnObject);
    };
    match object.get("schema_version") {
        None => return Err(ReportError::SweepNoSchemaVersion),
        Some(v) if v.as_u64() == Some(SWEEP_SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(ReportError::SweepUnsupportedSchema {
                found: v.to_string(),
                supported: SWEEP_SCHEMA_VERSION,
            })
        }
    }
    match object.get("kind") {
        Some(Value::String(kind)) if kind == "sweep" => {}
        other => {
            return Err(ReportError::NotASweep {
                found: other.map_or_else(|| "missing".into(), Value::to_string),
            })
        }
    }
    let file: SweepFile =
        serde_path_to_error::deserialize(value).map_err(|e| ReportError::SweepInvalid {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    if file.runs.is_empty() {
        return Err(ReportError::SweepInvalid {
            path: "runs".into(),
            message: "no runs are listed".into(),
        });
    }
    if file.runs.len() > SWEEP_RUNS_MAX {
        return Err(ReportError::SweepInvalid {
            path: "runs".into(),
            message: format!(
                "{} runs are listed; a report shows at most {SWEEP_RUNS_MAX}",
                file.runs.len()
            ),
        });
    }
    Ok(file)
}

/// A sweep with its runs read and grouped.
struct Sweep {
    file: SweepFile,
    results: Vec<Results>,
    /// Each run's value of each swept key, in the order of `file.keys`.
    values: Vec<Vec<Value>>,
    configs: Vec<Config>,
    /// The swept keys with more than one value, as indices into `file.keys`.
    varying: Vec<usize>,
    /// What the page calls each key: without its section when that stays unambiguous.
    short_keys: Vec<String>,
    /// Web runs: requests compared, not SMTP.
    web: bool,
}

/// The runs of one combination of swept values, aggregated over their repetitions.
struct Config {
    values: Vec<Value>,
    /// Indices into the sweep's runs, in order.
    runs: Vec<usize>,
    throughput: Option<Point>,
    p50_ms: Option<f64>,
    p99: Option<Point>,
    /// Web runs: the cache hit rate, in percent.
    hit_rate: Option<Point>,
    errors: u64,
    /// `None`: no run of this configuration ran the correctness check.
    lost: Option<u64>,
    passed: usize,
}

impl Sweep {
    fn of(file: SweepFile, results: Vec<Results>) -> Sweep {
        let values: Vec<Vec<Value>> = file
            .runs
            .iter()
            .zip(&results)
            .map(|(run, result)| {
                file.keys
                    .iter()
                    .map(|key| param(run, result, key))
                    .collect()
            })
            .collect();
        let mut order: Vec<usize> = (0..file.runs.len()).collect();
        order.sort_by(|a, b| {
            compare_all(&values[*a], &values[*b])
                .then(file.runs[*a].repetition.cmp(&file.runs[*b].repetition))
        });
        let mut groups: Vec<(Vec<Value>, Vec<usize>)> = Vec::new();
        for i in order {
            match groups.last_mut() {
                Some((v, runs)) if *v == values[i] => runs.push(i),
                _ => groups.push((values[i].clone(), vec![i])),
            }
        }
        let configs = groups
            .into_iter()
            .map(|(values, runs)| Config::of(values, runs, &file, &results))
            .collect();
        let varying = (0..file.keys.len())
            .filter(|k| {
                let first = &values[0][*k];
                values.iter().any(|v| v[*k] != *first)
            })
            .collect();
        Sweep {
            short_keys: short_keys(&file.keys),
            web: results.iter().any(|r| r.web.is_some()),
            file,
            results,
            values,
            configs,
            varying,
        }
    }

    fn key_index(&self, key: &str) -> Option<usize> {
        self.file.keys.iter().position(|k| k == key)
    }

    fn varies(&self, key: &str) -> Option<usize> {
        self.key_index(key).filter(|k| self.varying.contains(k))
    }

    /// `nodes=2, replication=1` for the given keys of a configuration.
    fn label(&self, values: &[Value], keys: &[usize]) -> String {
        keys.iter()
            .map(|k| format!("{}={}", self.short_keys[*k], fmt_value(&values[*k])))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line per combination of the other varying keys, each a figure against key `x`;
    /// `None` when a configuration's value of `x` is not a number.
    fn lines(&self, x: usize, figure: fn(&Config) -> Option<Point>) -> Option<Vec<Line>> {
        let others: Vec<usize> = self.varying.iter().copied().filter(|k| *k != x).collect();
        let mut lines: Vec<(Vec<Value>, Line)> = Vec::new();
        for config in &self.configs {
            let x_value = config.values[x].as_f64()?;
            let Some(point) = figure(config) else {
                continue;
            };
            let key: Vec<Value> = others.iter().map(|k| config.values[*k].clone()).collect();
            let point = Point {
                x: x_value,
                ..point
            };
            match lines.iter_mut().find(|(k, _)| *k == key) {
                Some((_, line)) => line.points.push(point),
                None => {
                    let label = if others.is_empty() {
                        self.constant_label(x)
                    } else {
                        self.label(&config.values, &others)
                    };
                    lines.push((
                        key,
                        Line {
                            label,
                            points: vec![point],
                        },
                    ));
                }
            }
        }
        let mut lines: Vec<Line> = lines.into_iter().map(|(_, line)| line).collect();
        for line in &mut lines {
            line.points.sort_by(|a, b| a.x.total_cmp(&b.x));
        }
        (!lines.is_empty()).then_some(lines)
    }

    /// The label of the only line of a chart against key `x`: the placement when the skew is
    /// what varies (it is what the skew chart compares), else the operation.
    fn constant_label(&self, x: usize) -> String {
        if self.file.keys[x] == KEY_SKEW {
            if let Some(placement) = self
                .results
                .first()
                .and_then(|r| r.experiment.pointer("/cluster/placement"))
                .and_then(Value::as_str)
            {
                return format!("placement={placement}");
            }
        }
        if self.web {
            "requests".into()
        } else {
            format!("{OP} throughput")
        }
    }

    /// What the throughput is of, in captions and headers.
    fn unit(&self) -> &'static str {
        if self.web {
            "requests"
        } else {
            "SMTP"
        }
    }

    /// The key the scaling chart puts on its x axis, and what to call one of it: the node count,
    /// or (web) the workers of a class.
    fn scaling_key(&self) -> Option<(usize, String)> {
        if let Some(x) = self.varies(KEY_NODES) {
            return Some((x, "node".into()));
        }
        self.varying.iter().copied().find_map(|k| {
            let class = self.file.keys[k].strip_prefix(KEY_WORKERS_PREFIX)?;
            Some((k, format!("{class} worker")))
        })
    }

    fn page(&self) -> Result<SweepPage, ReportError> {
        let file = &self.file;
        let runs = file.runs.len();
        let passed = self.configs.iter().map(|c| c.passed).sum::<usize>();
        let failed: Vec<String> = (0..runs)
            .filter(|i| run_pass(&file.runs[*i], &self.results[*i]) != Some(true))
            .map(|i| file.runs[i].dir.clone())
            .collect();
        let keys = file
            .keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let mut seen: Vec<&Value> = Vec::new();
                for v in &self.values {
                    if !seen.contains(&&v[k]) {
                        seen.push(&v[k]);
                    }
                }
                seen.sort_by(|a, b| compare(a, b));
                KeyView {
                    key: key.clone(),
                    values: seen
                        .iter()
                        .map(|v| fmt_value(v))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })
            .collect();
        let rows = self
            .configs
            .iter()
            .map(|c| ConfigRow {
                params: c.values.iter().map(fmt_value).collect(),
                throughput: c
                    .throughput
                    .map_or_else(|| NONE.into(), |p| fmt_rate(p.mean)),
                spread: match c.throughput {
                    Some(p) if c.runs.len() > 1 => {
                        format!("{}–{}", fmt_rate(p.min), fmt_rate(p.max))
                    }
                    _ => NONE.into(),
                },
                p50: c.p50_ms.map_or_else(|| NONE.into(), fmt_ms),
                p99: c.p99.map_or_else(|| NONE.into(), |p| fmt_ms(p.mean)),
                errors: fmt_count(c.errors),
                errors_bad: c.errors > 0,
                lost: c.lost.map_or_else(|| NONE.into(), fmt_count),
                lost_bad: c.lost.is_some_and(|l| l > 0),
                passes: format!("{}/{}", c.passed, c.runs.len()),
                all_pass: c.passed == c.runs.len(),
                links: c
                    .runs
                    .iter()
                    .map(|i| LinkView {
                        href: report_href(&file.runs[*i].dir),
                        label: format!("r{}", file.runs[*i].repetition),
                        dir: file.runs[*i].dir.clone(),
                    })
                    .collect(),
            })
            .collect();

        let scaling = self.scaling_view()?;
        let replication = self.replication_view()?;
        let skew = self.skew_view()?;
        let cache = self.cache_view()?;
        let generic =
            if scaling.is_none() && replication.is_none() && skew.is_none() && cache.is_none() {
                let bars: Vec<(String, Point)> = self
                    .configs
                    .iter()
                    .filter_map(|c| Some((self.label(&c.values, &self.varying), c.throughput?)))
                    .collect();
                if bars.is_empty() {
                    None
                } else {
                    Some(GenericView {
                        svg: sweep_charts::bars_svg(
                            &format!("{} throughput, per second", self.unit()),
                            &bars,
                        )?,
                        shown: bars.len().min(sweep_charts::BARS_MAX),
                        total: bars.len(),
                    })
                }
            } else {
                None
            };

        Ok(SweepPage {
            title: format!("{} — clusterbench sweep report", file.name),
            style: STYLE,
            name: file.name.clone(),
            keys,
            repeat: file.repeat,
            saturate: file.saturate.as_ref().map(|s| {
                format!(
                    "Saturated: each configuration ran at its capacity, the highest open-loop rate that met the SLO without losing a message, found by stepping the rate up (from {:.1}/s) and bisecting to {:.0}% (at most {} probes per repetition; every probe's run is in the repetition's directory). The throughput shown is measured at that rate. Capacity per repetition: {}.",
                    s.start_per_s,
                    s.precision * 100.0,
                    s.probes,
                    file.runs
                        .iter()
                        .map(|r| format!(
                            "{} {}",
                            r.dir.split('/').take(2).collect::<Vec<_>>().join("/"),
                            r.capacity_per_s.map_or("none met the SLO".into(), |c| format!("{c:.1}/s"))
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
            runs,
            configs: self.configs.len(),
            pass: passed == runs,
            passed,
            failed,
            param_headers: self.short_keys.clone(),
            rows,
            multiple_repetitions: self.configs.iter().any(|c| c.runs.len() > 1),
            scaling,
            replication,
            skew,
            cache,
            generic,
            unit: self.unit(),
            lines_max: sweep_charts::LINES_MAX,
            run_rows: (0..runs)
                .map(|i| {
                    let run = &file.runs[i];
                    let result = &self.results[i];
                    let figures = run_figures(result);
                    RunRow {
                        number: i + 1,
                        href: report_href(&run.dir),
                        dir: run.dir.clone(),
                        repetition: run.repetition,
                        throughput: figures.map_or_else(|| NONE.into(), |f| fmt_rate(f.0)),
                        p99: figures.map_or_else(|| NONE.into(), |f| fmt_ms(f.2)),
                        verdict: match run_pass(run, result) {
                            Some(true) => "PASS",
                            Some(false) => "FAIL",
                            None => NONE,
                        },
                        verdict_class: match run_pass(run, result) {
                            Some(true) => "ok",
                            Some(false) => "bad",
                            None => "",
                        },
                    }
                })
                .collect(),
        })
    }

    fn scaling_view(&self) -> Result<Option<ScalingView>, ReportError> {
        let Some((x, what)) = self.scaling_key() else {
            return Ok(None);
        };
        let Some(lines) = self.lines(x, |c| c.throughput) else {
            return Ok(None);
        };
        let svg = sweep_charts::line_svg(&LineChart {
            name: "scaling",
            x_desc: &format!("{what}s"),
            y_desc: if self.web {
                "requests per second"
            } else {
                "SMTP operations per second"
            },
            lines: &lines,
            ideal: true,
        })?;
        let (columns, rows) = table_by_x(&lines, |line, p| {
            let first = line.points.first()?;
            let per_node = first.mean / first.x;
            (per_node > 0.0 && p.x > 0.0).then(|| fmt_percent_whole(p.mean / (p.x * per_node)))
        });
        Ok(Some(ScalingView {
            svg,
            what,
            columns,
            rows,
            truncated: lines.len() > sweep_charts::LINES_MAX,
        }))
    }

    fn replication_view(&self) -> Result<Option<ReplicationView>, ReportError> {
        let Some(x) = self.varies(KEY_REPLICATION) else {
            return Ok(None);
        };
        let (Some(throughput), Some(p99)) =
            (self.lines(x, |c| c.throughput), self.lines(x, |c| c.p99))
        else {
            return Ok(None);
        };
        let throughput_svg = sweep_charts::line_svg(&LineChart {
            name: "replication throughput",
            x_desc: "replication factor",
            y_desc: "SMTP operations per second",
            lines: &throughput,
            ideal: false,
        })?;
        let p99_svg = sweep_charts::line_svg(&LineChart {
            name: "replication latency",
            x_desc: "replication factor",
            y_desc: "SMTP p99 latency, ms",
            lines: &p99,
            ideal: false,
        })?;
        let (columns, rows) = table_by_x(&throughput, |line, p| {
            let first = line.points.first()?;
            (first.mean > 0.0).then(|| fmt_percent_whole(p.mean / first.mean))
        });
        Ok(Some(ReplicationView {
            throughput_svg,
            p99_svg,
            columns,
            rows,
            truncated: throughput.len() > sweep_charts::LINES_MAX,
        }))
    }

    /// Web: the cache hit rate against the cache's size (TranSend's Figure 9 in shape).
    fn cache_view(&self) -> Result<Option<CacheView>, ReportError> {
        let Some(x) = self.varies(KEY_CACHE_BYTES) else {
            return Ok(None);
        };
        let Some(mut lines) = self.lines(x, |c| c.hit_rate) else {
            return Ok(None);
        };
        for p in lines.iter_mut().flat_map(|l| l.points.iter_mut()) {
            p.x /= 1024.0 * 1024.0;
        }
        if lines.len() == 1 && self.varying.len() == 1 {
            lines[0].label = "hit rate".into();
        }
        let svg = sweep_charts::line_svg(&LineChart {
            name: "cache hit rate",
            x_desc: "cache size, MB (all partitions)",
            y_desc: "cache hit rate, %",
            lines: &lines,
            ideal: false,
        })?;
        Ok(Some(CacheView {
            svg,
            truncated: lines.len() > sweep_charts::LINES_MAX,
        }))
    }

    fn skew_view(&self) -> Result<Option<ChartView>, ReportError> {
        let Some(x) = self.varies(KEY_SKEW) else {
            return Ok(None);
        };
        let Some(lines) = self.lines(x, |c| c.throughput) else {
            return Ok(None);
        };
        let hot_node = self
            .results
            .first()
            .and_then(|r| r.experiment.pointer("/workload/skew_model"))
            .is_some_and(|m| m == "hot-node");
        let svg = sweep_charts::line_svg(&LineChart {
            name: "skew",
            x_desc: if hot_node {
                "skew (share of mail for the users of one home node)"
            } else {
                "skew (Zipf exponent of mailbox popularity)"
            },
            y_desc: "SMTP operations per second",
            lines: &lines,
            ideal: false,
        })?;
        Ok(Some(ChartView {
            svg,
            by_placement: self.varies(KEY_PLACEMENT).is_some(),
            truncated: lines.len() > sweep_charts::LINES_MAX,
        }))
    }
}

impl Config {
    fn of(values: Vec<Value>, runs: Vec<usize>, file: &SweepFile, results: &[Results]) -> Config {
        let figures: Vec<(f64, f64, f64)> = runs
            .iter()
            .filter_map(|i| run_figures(&results[*i]))
            .collect();
        let lost: Vec<u64> = runs
            .iter()
            .filter_map(|i| results[*i].correctness.as_ref().map(|c| c.lost))
            .collect();
        Config {
            throughput: stats(figures.iter().map(|f| f.0)),
            p50_ms: stats(figures.iter().map(|f| f.1)).map(|p| p.mean),
            p99: stats(figures.iter().map(|f| f.2)),
            hit_rate: stats(
                runs.iter()
                    .filter_map(|i| results[*i].web.as_ref()?.hit_rate.map(|h| h * 100.0)),
            ),
            errors: runs
                .iter()
                .flat_map(|i| results[*i].operations.ops.values())
                .map(|o| o.errors)
                .sum(),
            lost: (!lost.is_empty()).then(|| lost.iter().sum()),
            passed: runs
                .iter()
                .filter(|i| run_pass(&file.runs[**i], &results[**i]) == Some(true))
                .count(),
            values,
            runs,
        }
    }
}

/// Mean, min and max of the finite values; `x` is left at 0 for the caller.
fn stats(values: impl Iterator<Item = f64>) -> Option<Point> {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    Some(Point {
        x: 0.0,
        mean: values.iter().sum::<f64>() / values.len() as f64,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// A run's verdict: its results file's, else what sweep.json recorded.
fn run_pass(run: &SweepRun, results: &Results) -> Option<bool> {
    results.verdict.as_ref().map(|v| v.pass).or(run.pass)
}

/// A swept key's value for a run: as sweep.json records it, else as the experiment ran.
fn param(run: &SweepRun, results: &Results, key: &str) -> Value {
    run.params
        .get(key)
        .or_else(|| {
            results
                .experiment
                .pointer(&format!("/{}", key.replace('.', "/")))
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// Numbers by value and before strings; strings by text; anything else by its JSON.
fn compare(a: &Value, b: &Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => match (a.as_str(), b.as_str()) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => a.to_string().cmp(&b.to_string()),
        },
    }
}

fn compare_all(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(a, b)| compare(a, b))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// A swept value as the page shows it: strings without quotes.
fn fmt_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => NONE.into(),
        other => other.to_string(),
    }
}

/// `97 %`.
fn fmt_percent_whole(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.0} %", fraction * 100.0)
    } else {
        NONE.into()
    }
}

/// Keys without their first section (`cluster.nodes` → `nodes`), unless two would then read
/// the same.
fn short_keys(keys: &[String]) -> Vec<String> {
    let short: Vec<String> = keys
        .iter()
        .map(|k| {
            k.split_once('.')
                .map_or(k.as_str(), |(_, rest)| rest)
                .to_string()
        })
        .collect();
    let mut sorted = short.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() == short.len() {
        short
    } else {
        keys.to_vec()
    }
}

/// The relative link to a run's report: `dir` split into path segments, each percent-encoded
/// but for characters that are plainly safe, with empty and `.` segments dropped, so that no
/// `dir` can become an absolute, network or `javascript:` address.
fn report_href(dir: &str) -> String {
    let mut href = String::new();
    for segment in dir
        .split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != ".")
    {
        for byte in segment.bytes() {
            match byte {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'~'
                | b'='
                | b',' => href.push(byte as char),
                _ => href.push_str(&format!("%{byte:02X}")),
            }
        }
        href.push('/');
    }
    href.push_str("report.html");
    href
}

/// A table with one column per x value of the lines and one row per line, each cell `cell`.
fn table_by_x(
    lines: &[Line],
    cell: impl Fn(&Line, &Point) -> Option<String>,
) -> (Vec<String>, Vec<TableRow>) {
    let mut xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let rows = lines
        .iter()
        .map(|line| {
            let by_x: BTreeMap<usize, String> = line
                .points
                .iter()
                .filter_map(|p| {
                    let column = xs.iter().position(|x| *x == p.x)?;
                    Some((column, cell(line, p)?))
                })
                .collect();
            TableRow {
                label: line.label.clone(),
                cells: (0..xs.len())
                    .map(|c| by_x.get(&c).cloned().unwrap_or_else(|| NONE.into()))
                    .collect(),
            }
        })
        .collect();
    (
        xs.iter().map(|x| crate::charts::fmt_tick(*x)).collect(),
        rows,
    )
}

#[derive(Serialize)]
struct SweepPage {
    title: String,
    style: &'static str,
    name: String,
    keys: Vec<KeyView>,
    repeat: u64,
    saturate: Option<String>,
    runs: usize,
    configs: usize,
    pass: bool,
    passed: usize,
    /// Directories of the runs that did not pass (or recorded no verdict).
    failed: Vec<String>,
    param_headers: Vec<String>,
    rows: Vec<ConfigRow>,
    multiple_repetitions: bool,
    scaling: Option<ScalingView>,
    replication: Option<ReplicationView>,
    skew: Option<ChartView>,
    cache: Option<CacheView>,
    generic: Option<GenericView>,
    /// What the throughput counts: `SMTP` or `requests`.
    unit: &'static str,
    lines_max: usize,
    run_rows: Vec<RunRow>,
}

#[derive(Serialize)]
struct KeyView {
    key: String,
    values: String,
}

#[derive(Serialize)]
struct ConfigRow {
    params: Vec<String>,
    throughput: String,
    spread: String,
    p50: String,
    p99: String,
    errors: String,
    errors_bad: bool,
    lost: String,
    lost_bad: bool,
    passes: String,
    all_pass: bool,
    links: Vec<LinkView>,
}

#[derive(Serialize)]
struct LinkView {
    href: String,
    label: String,
    dir: String,
}

#[derive(Serialize)]
struct TableRow {
    label: String,
    cells: Vec<String>,
}

#[derive(Serialize)]
struct CacheView {
    svg: String,
    truncated: bool,
}

#[derive(Serialize)]
struct ScalingView {
    svg: String,
    /// One of what the x axis counts: `node`, `jpeg worker`.
    what: String,
    /// Node counts, the efficiency table's columns.
    columns: Vec<String>,
    rows: Vec<TableRow>,
    truncated: bool,
}

#[derive(Serialize)]
struct ReplicationView {
    throughput_svg: String,
    p99_svg: String,
    /// Replication factors, the relative-throughput table's columns.
    columns: Vec<String>,
    rows: Vec<TableRow>,
    truncated: bool,
}

#[derive(Serialize)]
struct ChartView {
    svg: String,
    by_placement: bool,
    truncated: bool,
}

#[derive(Serialize)]
struct GenericView {
    svg: String,
    shown: usize,
    total: usize,
}

#[derive(Serialize)]
struct RunRow {
    number: usize,
    href: String,
    dir: String,
    repetition: u64,
    throughput: String,
    p99: String,
    verdict: &'static str,
    verdict_class: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_relative() {
        assert_eq!(
            report_href("nodes=1,replication=1/r0"),
            "nodes=1,replication=1/r0/report.html"
        );
        assert_eq!(
            report_href("//evil.example/x"),
            "evil.example/x/report.html"
        );
        assert_eq!(
            report_href("javascript:alert(1)"),
            "javascript%3Aalert%281%29/report.html"
        );
        assert_eq!(report_href("a b/\"c\""), "a%20b/%22c%22/report.html");
    }

    #[test]
    fn keys_lose_their_section_unless_ambiguous() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            short_keys(&keys(&["cluster.nodes", "workload.skew"])),
            keys(&["nodes", "skew"])
        );
        assert_eq!(
            short_keys(&keys(&["cluster.users", "workload.users"])),
            keys(&["cluster.users", "workload.users"])
        );
    }
}
