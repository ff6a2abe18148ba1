//! The page: turns runs into a template context of display-ready strings and renders the
//! embedded template. Every value from a results file reaches the page through tera's HTML
//! autoescaping; only the charts and the stylesheet, which this crate generates, are inserted raw.

use serde::Serialize;

use crate::charts;
use crate::format::{fmt_count, fmt_ms, fmt_percent, fmt_rate, fmt_s, fmt_time, NONE};
use crate::schema::Results;
use crate::ReportError;

const TEMPLATE_NAME: &str = "report.html";
const TEMPLATE: &str = include_str!("../templates/report.html");
const STYLE: &str = include_str!("../templates/style.css");
/// A run lists at most this many lost message ids; the count says how many there were.
pub const LOST_EXAMPLES_MAX: usize = 20;
/// What replaces a secret from the experiment file in the configuration block.
const HIDDEN: &str = "(hidden)";

pub fn render(runs: &[Results]) -> Result<String, ReportError> {
    let views = runs
        .iter()
        .enumerate()
        .map(|(i, run)| RunView::of(i, run))
        .collect::<Result<Vec<_>, _>>()?;
    let title = match runs {
        [one] => format!("{} — clusterbench report", one.name),
        many => format!(
            "{} runs: {} — clusterbench report",
            many.len(),
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let page = Page {
        title,
        style: STYLE,
        overview: runs.len() > 1,
        runs: views,
    };
    render_template(TEMPLATE_NAME, TEMPLATE, &page)
}

/// Renders one of this crate's embedded templates with `context`. A failure is a bug in the
/// template or the context, never in a results file.
pub(crate) fn render_template(
    name: &str,
    template: &str,
    context: &impl Serialize,
) -> Result<String, ReportError> {
    let mut tera = tera::Tera::new();
    tera.add_raw_template(name, template)
        .map_err(|e| ReportError::Template(e.to_string()))?;
    let context =
        tera::Context::from_serialize(context).map_err(|e| ReportError::Template(e.to_string()))?;
    tera.render(name, &context)
        .map_err(|e| ReportError::Template(format!("{e:?}")))
}

#[derive(Serialize)]
struct Page {
    title: String,
    style: &'static str,
    overview: bool,
    runs: Vec<RunView>,
}

#[derive(Serialize)]
struct RunView {
    anchor: String,
    name: String,
    description: String,
    target: String,
    length: String,
    offered: String,
    /// The start time as lines (day, then time of day), for the narrow overview column.
    started_lines: Vec<String>,
    /// `None`: the file records no verdict.
    verdict: Option<VerdictView>,
    slo: Option<SloView>,
    ops: Vec<OpRow>,
    total_throughput: String,
    /// `smtp 148` per operation, for the overview.
    p99_by_op: Vec<String>,
    errors_total: String,
    throughput_svg: Option<String>,
    latency_charts: Vec<ChartView>,
    series_note: Option<String>,
    faults: Vec<FaultRow>,
    view_changes: usize,
    correctness: Option<CorrectnessView>,
    agents: Vec<AgentRow>,
    /// The replication backlog at the end of the load, in words.
    settle: Option<String>,
    experiment: String,
    environment: Vec<KeyValue>,
    web: Option<WebView>,
}

#[derive(Serialize)]
struct WebView {
    /// (what, value) lines: the trace, the responses, the cluster.
    facts: Vec<KeyValue>,
    queue_svg: Option<String>,
    faults: Vec<WebFaultRow>,
    checks_bad: bool,
}

#[derive(Serialize)]
struct WebFaultRow {
    number: String,
    what: String,
    start: String,
    detail: String,
    detection: String,
    respawn: String,
    hints_back: String,
    throughput_back: String,
    degraded: String,
}

#[derive(Serialize)]
struct AgentRow {
    number: u32,
    name: String,
    addr: String,
    operations: String,
    ops_per_s: String,
    clock_offset_ms: String,
    rtt_ms: String,
    lost: bool,
    status: String,
}

#[derive(Serialize)]
struct VerdictView {
    pass: bool,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct SloView {
    pass: bool,
    checks: Vec<SloRow>,
}

#[derive(Serialize)]
struct SloRow {
    what: String,
    limit: String,
    value: String,
    pass: bool,
    default: bool,
}

#[derive(Serialize)]
struct OpRow {
    name: String,
    color: String,
    count: String,
    errors: String,
    has_errors: bool,
    errors_by_kind: String,
    throughput: String,
    p50: String,
    p90: String,
    p99: String,
    p999: String,
    max: String,
    mean: String,
}

#[derive(Serialize)]
struct ChartView {
    op: String,
    svg: String,
}

#[derive(Serialize)]
struct FaultRow {
    number: String,
    what: String,
    start: String,
    end: String,
    detection: String,
    convergence: String,
    throughput_back: String,
    reintegration: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct CorrectnessView {
    ok: bool,
    acknowledged: String,
    retrieved: String,
    lost: String,
    lost_bad: bool,
    duplicated: String,
    duplicated_bad: bool,
    corrupted: String,
    corrupted_bad: bool,
    unacknowledged_found: String,
    unreadable_mailboxes: String,
    unreadable_bad: bool,
    unverified: String,
    unverified_reason: Option<String>,
    lost_examples: Vec<String>,
    lost_examples_more: usize,
}

#[derive(Serialize)]
struct KeyValue {
    key: &'static str,
    value: String,
}

impl RunView {
    fn of(index: usize, run: &Results) -> Result<RunView, ReportError> {
        let ops: Vec<OpRow> = run
            .op_names()
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let op = &run.operations.ops[name];
                OpRow {
                    name: name.clone(),
                    color: charts::op_color_css(i),
                    count: fmt_count(op.count),
                    errors: fmt_count(op.errors),
                    has_errors: op.errors > 0,
                    errors_by_kind: op
                        .errors_by_kind
                        .iter()
                        .map(|(kind, n)| format!("{kind} {}", fmt_count(*n)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    throughput: fmt_rate(op.throughput_per_s),
                    p50: fmt_ms(op.p50_ms),
                    p90: fmt_ms(op.p90_ms),
                    p99: fmt_ms(op.p99_ms),
                    p999: fmt_ms(op.p999_ms),
                    max: fmt_ms(op.max_ms),
                    mean: fmt_ms(op.mean_ms),
                }
            })
            .collect();
        let totals = run.operations.ops.values();
        let total_throughput = fmt_rate(totals.clone().map(|o| o.throughput_per_s).sum());
        let errors_total = fmt_count(totals.map(|o| o.errors).sum());
        let p99_by_op = run
            .op_names()
            .iter()
            .map(|name| format!("{name} {}", fmt_ms(run.operations.ops[name].p99_ms)))
            .collect();

        let series_note = (run.operations.series_dropped > 0).then(|| {
            format!(
                "The series stops early: {} operations started after its last second are in the \
                 totals only.",
                fmt_count(run.operations.series_dropped)
            )
        });

        Ok(RunView {
            anchor: format!("run-{}", index + 1),
            name: run.name.clone(),
            description: describe(run),
            target: describe_target(run),
            length: describe_length(run),
            offered: offered_rate(run).map_or_else(|| NONE.into(), fmt_rate_short),
            started_lines: match run.environment.started_at.as_deref().map(fmt_time) {
                Some(t) => match t.split_once(' ') {
                    Some((day, time)) => vec![day.into(), time.into()],
                    None => vec![t],
                },
                None => vec![NONE.into()],
            },
            verdict: run.verdict.as_ref().map(|v| VerdictView {
                pass: v.pass,
                reasons: v.reasons.clone(),
            }),
            slo: run.slo.as_ref().map(|s| SloView {
                pass: s.pass,
                checks: s
                    .checks
                    .iter()
                    .map(|c| {
                        // Rates are fractions in the file; read as percentages.
                        let as_rate = c.what.contains("rate");
                        let fmt = |v: f64| if as_rate { fmt_percent(v) } else { fmt_ms(v) };
                        SloRow {
                            what: c.what.clone(),
                            limit: fmt(c.limit),
                            value: fmt(c.value),
                            pass: c.pass,
                            default: c.default,
                        }
                    })
                    .collect(),
            }),
            ops,
            total_throughput,
            p99_by_op,
            errors_total,
            throughput_svg: charts::throughput_svg(run)?,
            web: web_view(run)?,
            latency_charts: charts::latency_svgs(run)?
                .into_iter()
                .map(|c| ChartView {
                    op: c.op,
                    svg: c.svg,
                })
                .collect(),
            series_note,
            faults: fault_rows(run),
            view_changes: run.view_changes.len(),
            settle: run.settle.as_ref().map(|s| match (s.backlog_at_load_end, s.drained_s) {
                (0, _) => "Nothing was owed to a replica when the load ended.".to_string(),
                (n, Some(d)) => format!(
                    "{n} replica copies or changes were still owed when the load ended (optimistic replication acknowledges first); they drained in {d:.1} s."
                ),
                (n, None) => format!(
                    "{n} replica copies or changes were still owed when the load ended, and had not drained when the check began."
                ),
            }),
            agents: run
                .agents
                .iter()
                .map(|a| AgentRow {
                    number: a.index + 1,
                    name: a.name.clone(),
                    addr: a.addr.clone(),
                    operations: fmt_count(a.operations),
                    ops_per_s: format!("{:.1}", a.ops_per_s),
                    clock_offset_ms: format!("{:+.2}", a.clock_offset_ms),
                    rtt_ms: format!("{:.2}", a.rtt_ms),
                    lost: a.status != "finished",
                    status: match (a.status.as_str(), a.lost_at_s) {
                        ("finished", _) => "finished".into(),
                        (_, Some(at)) => format!(
                            "lost at {at:.1} s: {}",
                            a.reason.as_deref().unwrap_or("unknown")
                        ),
                        (s, None) => s.to_string(),
                    },
                })
                .collect(),
            correctness: run.correctness.as_ref().map(|c| CorrectnessView {
                ok: c.lost == 0
                    && c.duplicated == 0
                    && c.corrupted == 0
                    && (c.unreadable_mailboxes == 0 || run.target.kind != "bundled"),
                acknowledged: fmt_count(c.acknowledged),
                retrieved: fmt_count(c.retrieved),
                lost: fmt_count(c.lost),
                lost_bad: c.lost > 0,
                duplicated: fmt_count(c.duplicated),
                duplicated_bad: c.duplicated > 0,
                corrupted: fmt_count(c.corrupted),
                corrupted_bad: c.corrupted > 0,
                unacknowledged_found: fmt_count(c.unacknowledged_found),
                unreadable_mailboxes: fmt_count(c.unreadable_mailboxes),
                unreadable_bad: c.unreadable_mailboxes > 0 && run.target.kind == "bundled",
                unverified: fmt_count(c.unverified),
                unverified_reason: c.unverified_reason.clone(),
                lost_examples: c
                    .lost_examples
                    .iter()
                    .take(LOST_EXAMPLES_MAX)
                    .cloned()
                    .collect(),
                lost_examples_more: c.lost_examples.len().saturating_sub(LOST_EXAMPLES_MAX),
            }),
            experiment: experiment_block(&run.experiment),
            environment: environment_rows(run),
        })
    }
}

/// What was run against: `bundled cluster, 3 nodes, ...` or `external target (SMTP a:25)`.
fn describe_target(run: &Results) -> String {
    let t = &run.target;
    if t.kind == "bundled" {
        let mut cluster = String::from("bundled cluster");
        if let Some(n) = t.nodes {
            cluster.push_str(&format!(", {n} node{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(r) = t.replication {
            cluster.push_str(&format!(", replication {r}"));
        }
        if let Some(p) = &t.placement {
            cluster.push_str(&format!(", {p} placement"));
        }
        if let Some(d) = &t.disk {
            cluster.push_str(&format!(", {d} disk"));
        }
        return cluster;
    }
    let endpoints: Vec<String> = ["smtp", "pop3", "imap"]
        .iter()
        .filter_map(|proto| {
            let list = run
                .experiment
                .pointer(&format!("/target/{proto}"))?
                .as_array()?;
            let list: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
            (!list.is_empty()).then(|| format!("{} {}", proto.to_uppercase(), list.join(" ")))
        })
        .collect();
    if endpoints.is_empty() {
        format!("{} target", t.kind)
    } else {
        format!("{} target ({})", t.kind, endpoints.join(", "))
    }
}

/// How long the load ran: `60 s (5 s warmup)`.
fn describe_length(run: &Results) -> String {
    let Some(d) = run.duration_s() else {
        return NONE.into();
    };
    let mut length = format!("{d:.0} s");
    if run.operations.warmup_s > 0.0 {
        length.push_str(&format!(" ({:.0} s warmup)", run.operations.warmup_s));
    }
    length
}

/// The offered rate, when the experiment sets a constant one.
fn offered_rate(run: &Results) -> Option<f64> {
    run.experiment
        .pointer("/workload/rate/per_s")
        .and_then(serde_json::Value::as_f64)
}

/// The one line under the title: what was run against what, for how long, when.
fn describe(run: &Results) -> String {
    let mut parts = vec![describe_target(run), describe_length(run)];
    if let Some(rate) = offered_rate(run) {
        parts.push(format!("offered {} ops/s", fmt_rate_short(rate)));
    }
    if let Some(started) = &run.environment.started_at {
        parts.push(format!("started {}", fmt_time(started)));
    }
    parts.join(" · ")
}

/// A rate without a needless `.0`: `100`, `12.5`.
fn fmt_rate_short(per_s: f64) -> String {
    if per_s.fract() == 0.0 {
        format!("{per_s:.0}")
    } else {
        fmt_rate(per_s)
    }
}

/// One row per fault as carried out, with its recovery figures; recovery figures of a fault the
/// file does not list (should not happen) get a row of their own.
fn fault_rows(run: &Results) -> Vec<FaultRow> {
    let mut rows = Vec::new();
    let mut used = vec![false; run.recovery.len()];
    for (i, fault) in run.faults.iter().enumerate() {
        let index = fault.index.unwrap_or(i as u64);
        let recovery = run
            .recovery
            .iter()
            .position(|r| r.fault == Some(index))
            .inspect(|p| used[*p] = true)
            .map(|p| &run.recovery[p]);
        rows.push(FaultRow {
            number: (index + 1).to_string(),
            what: fault.label(),
            start: fmt_s(Some(fault.start_s), 1),
            end: match fault.end_s {
                Some(end) => fmt_s(Some(end), 1),
                None => "end of run".into(),
            },
            detection: fmt_s(recovery.and_then(|r| r.detection_s), 2),
            convergence: fmt_s(recovery.and_then(|r| r.convergence_s), 2),
            throughput_back: fmt_s(recovery.and_then(|r| r.throughput_recovered_s), 2),
            reintegration: fmt_s(recovery.and_then(|r| r.reintegration_s), 2),
            error: fault.error.clone(),
        });
    }
    for (r, _) in run.recovery.iter().zip(used).filter(|(_, used)| !used) {
        rows.push(FaultRow {
            number: r.fault.map_or_else(|| NONE.into(), |f| (f + 1).to_string()),
            what: r.label(),
            start: fmt_s(Some(r.start_s), 1),
            end: NONE.into(),
            detection: fmt_s(r.detection_s, 2),
            convergence: fmt_s(r.convergence_s, 2),
            throughput_back: fmt_s(r.throughput_recovered_s, 2),
            reintegration: fmt_s(r.reintegration_s, 2),
            error: None,
        });
    }
    rows
}

/// The experiment as run, pretty-printed, with the target's password hidden: reports get
/// attached to tickets and CI artifacts.
fn experiment_block(experiment: &serde_json::Value) -> String {
    let mut experiment = experiment.clone();
    if let Some(password) = experiment.pointer_mut("/target/password") {
        if password.as_str().is_some_and(|p| !p.is_empty()) {
            *password = serde_json::Value::String(HIDDEN.into());
        }
    }
    if experiment.is_null() {
        return "(not recorded)".into();
    }
    serde_json::to_string_pretty(&experiment).unwrap_or_else(|_| experiment.to_string())
}

fn environment_rows(run: &Results) -> Vec<KeyValue> {
    let e = &run.environment;
    let or_none = |v: Option<String>| v.unwrap_or_else(|| NONE.into());
    vec![
        KeyValue {
            key: "clusterbench version",
            value: or_none(e.clusterbench_version.clone()),
        },
        KeyValue {
            key: "commit",
            value: or_none(e.commit.clone()),
        },
        KeyValue {
            key: "cores",
            value: or_none(e.cores.map(|c| c.to_string())),
        },
        KeyValue {
            key: "os",
            value: or_none(e.os.clone()),
        },
        KeyValue {
            key: "started at",
            value: or_none(e.started_at.clone()),
        },
        KeyValue {
            key: "elapsed",
            value: fmt_s(e.elapsed_s, 1),
        },
        KeyValue {
            key: "warmup (left out of totals)",
            value: fmt_s(Some(run.operations.warmup_s), 1),
        },
        KeyValue {
            key: "measured",
            value: fmt_s(Some(run.operations.measured_s), 1),
        },
        KeyValue {
            key: "view records (each node's first view included)",
            value: run.view_changes.len().to_string(),
        },
    ]
}

fn web_view(run: &Results) -> Result<Option<WebView>, ReportError> {
    let Some(web) = &run.web else {
        return Ok(None);
    };
    let o = |k: &str| web.outcomes.get(k).copied().unwrap_or(0);
    let t = &web.trace;
    let mut facts = vec![
        KeyValue {
            key: "trace",
            value: format!(
                "{}{}: {} requests sent, {}{}",
                t["file"].as_str().unwrap_or("?"),
                if t["synthesized"].as_bool() == Some(true) {
                    " (synthesized)"
                } else {
                    ""
                },
                fmt_count(t["sent"].as_u64().unwrap_or(0)),
                match (t["per_s"].as_f64(), t["speedup"].as_f64()) {
                    (Some(r), _) => format!("in log order at {r} req/s"),
                    (None, Some(x)) => format!("at the log's timing x{x}"),
                    _ => String::new(),
                },
                if t["cut_at_duration"].as_bool() == Some(true) {
                    " (cut at the run's duration)"
                } else {
                    ""
                }
            ),
        },
        KeyValue {
            key: "responses",
            value: format!(
                "{} answered 200: {} distilled, {} passed through, {} degraded, {} original, {} from a plain server",
                fmt_count(o("ok")),
                fmt_count(o("distilled")),
                fmt_count(o("pass_through")),
                fmt_count(o("degraded")),
                fmt_count(o("original")),
                fmt_count(o("untagged"))
            ),
        },
        KeyValue {
            key: "cache hit rate",
            value: web.hit_rate.map_or_else(|| NONE.to_string(), fmt_percent),
        },
        KeyValue {
            key: "checks",
            value: format!(
                "{} originals byte-identical to the origin's, {} not in its manifest, {} distilled images of the profile's size, {} failed",
                fmt_count(o("verified")),
                fmt_count(o("unverified")),
                fmt_count(o("sized")),
                fmt_count(web.check_failures)
            ),
        },
    ];
    if let Some(spread) = web.queue_spread {
        facts.push(KeyValue {
            key: "load balance",
            value: format!(
                "the queues of one class's workers differed by {spread:.2} (standard deviation, mean over the run after the warmup)"
            ),
        });
    }
    if let Some(c) = &web.cluster {
        let n = |k: &str| {
            c.get(k).map_or_else(
                || NONE.to_string(),
                |v| v.to_string().trim_matches('"').to_string(),
            )
        };
        facts.push(KeyValue {
            key: "web cluster",
            value: format!(
                "{} node(s) + {} overflow ({} overflow process(es) at most), {} front end(s), {} worker(s) at the end, lottery {}, CPU {}",
                n("nodes"), n("overflow_nodes"), n("overflow_in_use_max"), n("front_ends"), n("workers"), n("lottery"), n("cpu_model")
            ),
        });
        facts.push(KeyValue {
            key: "manager",
            value: format!(
                "{} spawn(s), {} restart(s), {} failover(s), {} retirement(s); {} degradation(s) at the front ends",
                n("spawns"), n("restarts"), n("failovers"), n("retirements"), n("degraded")
            ),
        });
    }
    let s = |v: Option<f64>| fmt_s(v, 2);
    Ok(Some(WebView {
        facts,
        queue_svg: charts::web_queue_svg(run)?,
        faults: web
            .faults
            .iter()
            .map(|f| WebFaultRow {
                number: (f.index + 1).to_string(),
                what: match &f.process {
                    Some(p) => format!("{} {p}", f.action.replace('_', " ")),
                    None => f.action.replace('_', " "),
                },
                start: fmt_s(Some(f.start_s), 1),
                detail: f.detail.clone(),
                detection: s(f.detection_s),
                respawn: s(f.respawn_s),
                hints_back: s(f.hints_back_s),
                throughput_back: s(f.throughput_recovered_s),
                degraded: f.degraded.map_or_else(|| NONE.to_string(), fmt_count),
            })
            .collect(),
        checks_bad: web.check_failures > 0,
    }))
}
