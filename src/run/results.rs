//! `results.json`: everything a run measured, in a versioned schema (documented in the README),
//! and the short summary printed at the end.

use std::path::Path;
use std::time::Duration;

use loadgen::drivers::smtp::ConnectionModel;
use loadgen::drivers::ConnectionStats;
use loadgen::experiment::Experiment;
use loadgen::ledger::Correctness;
use loadgen::metrics::Summary;
use loadgen::OpKind;
use serde::Serialize;

use super::faults::FaultWindow;
use super::poll::{Recovery, ViewChange};
use crate::local_cluster::ClusterFile;

/// Bumped on any change a reader of results.json would notice.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Results {
    pub schema_version: u32,
    pub name: String,
    pub experiment: Experiment,
    pub environment: Environment,
    pub target: TargetInfo,
    pub operations: Summary,
    pub faults: Vec<FaultWindow>,
    pub view_changes: Vec<ViewChange>,
    pub recovery: Vec<Recovery>,
    pub correctness: Option<Correctness>,
    /// The bundled cluster's replication backlog after the load, and its drain.
    pub settle: Option<Settle>,
    /// The agents the load came from, when it came from agents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<super::agents::AgentReport>,
    /// How the load generator connected and how much it ran at once.
    pub loadgen: LoadgenInfo,
    /// A web experiment's trace, responses, cluster figures and faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<super::web::WebResults>,
    pub slo: SloVerdicts,
    pub verdict: Verdict,
}

/// The load generator as a client: its connection model and limits, and what it reached.
#[derive(Debug, Serialize)]
pub struct LoadgenInfo {
    /// `reuse` or `per-message`.
    pub smtp_connection: ConnectionModel,
    pub smtp_connections_per_front_end: u32,
    pub smtp_messages_per_connection: u32,
    pub in_flight_max: u32,
    /// Connections opened: SMTP connections, and one per POP3 or IMAP session.
    pub connections_opened: u64,
    /// The most connections open at once (idle pooled ones included).
    pub connections_open_peak: u64,
    /// The most operations in flight at once (open loop), or the closed loop's sessions.
    pub in_flight_peak: u64,
    /// The open-file limit of the process that ran the load.
    pub file_limit: Option<u64>,
}

impl LoadgenInfo {
    pub fn new(experiment: &Experiment, c: ConnectionStats, file_limit: Option<u64>) -> Self {
        let l = &experiment.loadgen;
        LoadgenInfo {
            smtp_connection: l.smtp.connection,
            smtp_connections_per_front_end: l.smtp.connections_per_front_end,
            smtp_messages_per_connection: l.smtp.messages_per_connection,
            in_flight_max: l.in_flight_max,
            connections_opened: c.opened,
            connections_open_peak: c.open_peak,
            in_flight_peak: c.in_flight_peak,
            file_limit,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Environment {
    pub clusterbench_version: String,
    pub commit: String,
    pub cores: usize,
    pub os: String,
    pub started_at: String,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct TargetInfo {
    /// `bundled` or `external`.
    pub kind: String,
    pub nodes: Option<usize>,
    pub replication: Option<u32>,
    pub placement: Option<String>,
    pub disk: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SloVerdicts {
    pub pass: bool,
    pub checks: Vec<SloCheck>,
}

#[derive(Debug, Serialize)]
pub struct SloCheck {
    pub what: String,
    pub limit: f64,
    pub value: f64,
    pub pass: bool,
    /// The experiment file did not set this limit: it is the default.
    pub default: bool,
}

/// Replica copies and owed changes not yet acknowledged when the load ended, and how long they
/// took to drain (`None`: not within `check.settle_s`).
#[derive(Debug, Clone, Serialize)]
pub struct Settle {
    pub backlog_at_load_end: u64,
    pub drained_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// False when an acknowledged message was lost or corrupted (and loss was not expected), an
    /// agent was lost, mailboxes of the bundled cluster could not be read back, or an SLO was
    /// missed.
    pub pass: bool,
    pub reasons: Vec<String>,
    /// The exit code of `clusterbench run` for this run: see [`Outcome`].
    pub exit_code: i32,
}

/// How a run ended, as its exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Exit 0: nothing lost, every SLO met.
    Pass,
    /// Exit 3: nothing lost, but an SLO was missed.
    SloMissed,
    /// Exit 1: acknowledged mail lost or corrupted, an agent lost, or mailboxes unreadable.
    Failed,
}

/// `clusterbench run`'s exit code when the experiment could not be run at all (a bad file, a
/// cluster that would not start): what `main` returns for any error.
pub const EXIT_ERROR: i32 = 2;

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::Failed => 1,
            Outcome::SloMissed => 3,
        }
    }

    /// The outcome a results.json records.
    pub fn of(results: &serde_json::Value) -> Outcome {
        match results["verdict"]["exit_code"].as_i64() {
            Some(0) => Outcome::Pass,
            Some(3) => Outcome::SloMissed,
            _ => Outcome::Failed,
        }
    }
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        experiment: &Experiment,
        started_at: chrono::DateTime<chrono::Utc>,
        elapsed: Duration,
        cluster: Option<&ClusterFile>,
        operations: Summary,
        faults: Vec<FaultWindow>,
        view_changes: Vec<ViewChange>,
        recovery: Vec<Recovery>,
        correctness: Option<Correctness>,
        settle: Option<Settle>,
        agents: Vec<super::agents::AgentReport>,
        loadgen: LoadgenInfo,
    ) -> Results {
        let slo = slo_verdicts(experiment, &operations);
        let mut reasons = Vec::new();
        if let Some(c) = &correctness {
            if c.lost > 0 && !experiment.check.loss_expected {
                reasons.push(format!("{} acknowledged message(s) lost", c.lost));
            }
            if c.corrupted > 0 {
                reasons.push(format!("{} corrupted message(s)", c.corrupted));
            }
            // The bundled cluster must serve every mailbox back; an external target may simply
            // keep none (an SMTP sink), which leaves its messages unverified, not lost.
            if cluster.is_some() && c.unreadable_mailboxes > 0 {
                reasons.push(format!(
                    "{} mailbox(es) could not be read back ({} acknowledged message(s) unverified): {}",
                    c.unreadable_mailboxes,
                    c.unverified,
                    c.unverified_reason.as_deref().unwrap_or("unknown")
                ));
            }
        }
        if agents.iter().any(|a| a.status != "finished")
            && correctness.as_ref().is_some_and(|c| c.lost > 0)
        {
            reasons.push(
                "an agent was lost: messages it deleted (POP3/IMAP) after its last report are \
                 unknown to the checker, so some of the lost may have been deleted by it"
                    .into(),
            );
        }
        for a in agents.iter().filter(|a| a.status != "finished") {
            reasons.push(format!(
                "agent {} ({}) lost at {:.1} s: {} (its data up to then is kept)",
                a.name,
                a.addr,
                a.lost_at_s.unwrap_or(0.0),
                a.reason.as_deref().unwrap_or("unknown")
            ));
        }
        let failed = !reasons.is_empty();
        for check in slo.checks.iter().filter(|c| !c.pass) {
            reasons.push(format!(
                "SLO missed: {} {} > {}{}",
                check.what,
                fmt_figure(check.value),
                fmt_figure(check.limit),
                if check.default {
                    " (a default limit: set [slo] to choose your own)"
                } else {
                    ""
                }
            ));
        }
        let outcome = if failed {
            Outcome::Failed
        } else if !slo.pass {
            Outcome::SloMissed
        } else {
            Outcome::Pass
        };
        Results {
            schema_version: SCHEMA_VERSION,
            name: experiment.name.clone(),
            experiment: experiment.clone(),
            environment: Environment {
                clusterbench_version: env!("CARGO_PKG_VERSION").into(),
                commit: commit(),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                os: std::env::consts::OS.into(),
                started_at: started_at.to_rfc3339(),
                elapsed_s: elapsed.as_secs_f64(),
            },
            target: match cluster {
                Some(c) => TargetInfo {
                    kind: "bundled".into(),
                    nodes: Some(c.nodes.len()),
                    replication: Some(c.replication),
                    placement: Some(c.placement.name().into()),
                    disk: experiment
                        .cluster
                        .disk
                        .get("model")
                        .map(|m| m.to_string().trim_matches('"').to_string()),
                },
                None => TargetInfo {
                    kind: "external".into(),
                    nodes: None,
                    replication: None,
                    placement: None,
                    disk: None,
                },
            },
            operations,
            faults,
            view_changes,
            recovery,
            correctness,
            settle,
            agents,
            loadgen,
            web: None,
            verdict: Verdict {
                pass: outcome == Outcome::Pass,
                reasons,
                exit_code: outcome.exit_code(),
            },
            slo,
        }
    }

    /// Adds a web run's figures: responses that failed their checks fail the run, as corrupted
    /// mail would.
    pub fn attach_web(&mut self, web: super::web::WebResults) {
        if web.check_failures > 0 {
            self.verdict.reasons.insert(
                0,
                format!(
                    "{} response(s) failed their checks (see errors by kind)",
                    web.check_failures
                ),
            );
            self.verdict.pass = false;
            self.verdict.exit_code = Outcome::Failed.exit_code();
        }
        if let Some(c) = &web.cluster {
            self.target = TargetInfo {
                kind: "bundled".into(),
                nodes: Some(c.nodes as usize),
                replication: None,
                placement: None,
                disk: None,
            };
        }
        self.web = Some(web);
    }

    /// The summary a person reads at the end of a run.
    pub fn print(&self, path: &Path) {
        println!();
        println!("{}  ({} s)", self.name, self.environment.elapsed_s.round());
        println!(
            "{:<6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "errors", "rate/s", "p50 ms", "p99 ms", "max ms"
        );
        for kind in OpKind::ALL {
            if let Some(op) = self.operations.ops.get(&kind) {
                if op.count + op.errors == 0 {
                    continue;
                }
                println!(
                    "{:<6} {:>9} {:>8} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
                    kind.name(),
                    op.count,
                    op.errors,
                    op.throughput_per_s,
                    op.p50_ms,
                    op.p99_ms,
                    op.max_ms
                );
            }
        }
        for r in &self.recovery {
            let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"));
            println!(
                "fault {} ({:?}{}) at {:.1} s: detected {}, converged {}, throughput back {}, reintegrated {}",
                r.fault,
                r.action,
                r.node.map(|n| format!(" node {n}")).unwrap_or_default(),
                r.start_s,
                f(r.detection_s),
                f(r.convergence_s),
                f(r.throughput_recovered_s),
                f(r.reintegration_s)
            );
        }
        if let Some(w) = &self.web {
            print_web(w);
        }
        let l = &self.loadgen;
        println!(
            "load generator: {} connection(s) opened ({}), at most {} open and {} operation(s) in flight at once",
            l.connections_opened,
            match (self.web.is_some(), l.smtp_connection) {
                (true, _) => match self.experiment.loadgen.http.connection {
                    loadgen::web::client::HttpConnection::Reuse => format!(
                        "HTTP keep-alive, at most {} busy per server",
                        self.experiment.loadgen.http.connections_per_target
                    ),
                    loadgen::web::client::HttpConnection::PerRequest => {
                        "HTTP, a connection per request".to_string()
                    }
                },
                (false, ConnectionModel::Reuse) => "SMTP connections reused".to_string(),
                (false, ConnectionModel::PerMessage) => "SMTP, a connection per message".to_string(),
            },
            l.connections_open_peak,
            l.in_flight_peak
        );
        let open_loop = self
            .experiment
            .workload
            .rate
            .sessions_for(loadgen::workload::Share::ALL)
            .is_none();
        if open_loop && l.in_flight_peak >= u64::from(l.in_flight_max) {
            println!(
                "  the in-flight limit ({}) was reached: operations waited for a slot, which counts \
                 as their latency; raise loadgen.in_flight_max if the target was not the bottleneck",
                l.in_flight_max
            );
        }
        if let Some(s) = self.settle.as_ref().filter(|s| s.backlog_at_load_end > 0) {
            println!(
                "replication: {} owed at the end of the load, {}",
                s.backlog_at_load_end,
                s.drained_s
                    .map_or("not drained in time".to_string(), |d| format!(
                        "drained in {d:.1} s"
                    ))
            );
        }
        if let Some(c) = &self.correctness {
            println!(
                "correctness: {} acknowledged, {} retrieved, {} lost, {} duplicated, {} corrupted",
                c.acknowledged, c.retrieved, c.lost, c.duplicated, c.corrupted
            );
            if c.unverified > 0 {
                println!(
                    "unverified: {} acknowledged message(s) could not be checked: {}",
                    c.unverified,
                    c.unverified_reason.as_deref().unwrap_or("unknown")
                );
            }
        }
        for s in &self.slo.checks {
            println!(
                "SLO {}: {} = {} (limit {}{})",
                if s.pass { "met" } else { "MISSED" },
                s.what,
                fmt_figure(s.value),
                fmt_figure(s.limit),
                if s.default { ", default" } else { "" }
            );
        }
        println!(
            "verdict: {}{}  (results in {})",
            if self.verdict.pass { "PASS" } else { "FAIL" },
            if self.verdict.reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", self.verdict.reasons.join("; "))
            },
            path.display()
        );
    }
}

fn slo_verdicts(experiment: &Experiment, ops: &Summary) -> SloVerdicts {
    let mut checks = Vec::new();
    let (mut attempted, mut failed) = (0u64, 0u64);
    for kind in OpKind::ALL {
        let Some(op) = ops.ops.get(&kind) else {
            continue;
        };
        attempted += op.count + op.errors;
        failed += op.errors;
        let limit = experiment.slo.p99_limit(kind);
        if op.count > 0 {
            checks.push(SloCheck {
                what: format!("{} p99 ms", kind.name()),
                limit: limit.value,
                value: op.p99_ms,
                pass: op.p99_ms <= limit.value,
                default: limit.default,
            });
        }
    }
    if attempted > 0 {
        let rate = failed as f64 / attempted as f64;
        let limit = experiment.slo.error_rate_limit();
        checks.push(SloCheck {
            what: "error rate".into(),
            limit: limit.value,
            value: rate,
            pass: rate <= limit.value,
            default: limit.default,
        });
    }
    SloVerdicts {
        pass: checks.iter().all(|c| c.pass),
        checks,
    }
}

/// A figure for a line of text: three significant digits or so.
fn fmt_figure(v: f64) -> String {
    if v == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// The commit this binary's source is at, if `git` can tell.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn print_web(w: &super::web::WebResults) {
    let o = &w.outcomes;
    println!(
        "http: {} sent from the trace ({}), {} answered 200: {} distilled, {} passed through, {} \
         degraded, {} original, {} from a plain server; cache hits {}",
        w.trace.sent,
        match (w.trace.per_s, w.trace.speedup) {
            (Some(r), _) => format!("log order at {r} req/s"),
            (None, Some(x)) => format!("the log's timing x{x}"),
            _ => "?".into(),
        },
        o.ok,
        o.distilled,
        o.pass_through,
        o.degraded,
        o.original,
        o.untagged,
        w.hit_rate
            .map_or_else(|| "-".to_string(), |h| format!("{:.1} %", h * 100.0))
    );
    println!(
        "checks: {} original(s) byte-identical to the origin's, {} not in its manifest, {} distilled image(s) of the profile's size, {} failed",
        o.verified, o.unverified, o.sized, w.check_failures
    );
    if let Some(spread) = w.queue_spread {
        println!(
            "load balance: workers' queues of one class differed by {spread:.2} (standard deviation, mean over the run)"
        );
    }
    if let Some(c) = &w.cluster {
        println!(
            "web cluster: {} node(s) + {} overflow (at most {} overflow process(es) in use), {} front end(s), {} worker(s) at the end, lottery {}, CPU {}; {} spawn(s), {} restart(s), {} failover(s), {} retirement(s), {} degradation(s)",
            c.nodes,
            c.overflow_nodes,
            c.overflow_in_use_max,
            c.front_ends,
            c.workers,
            c.lottery,
            c.cpu_model,
            c.spawns,
            c.restarts,
            c.failovers,
            c.retirements,
            c.degraded
        );
    }
    for f in &w.faults {
        let t = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"));
        println!(
            "fault {} ({:?}{}) at {:.1} s: detected {}, respawned {}, load hints back {}, throughput back {}, {} degraded ({})",
            f.index,
            f.action,
            f.process.as_deref().map(|p| format!(" {p}")).unwrap_or_default(),
            f.start_s,
            t(f.detection_s),
            t(f.respawn_s),
            t(f.hints_back_s),
            t(f.throughput_recovered_s),
            f.degraded.map_or_else(|| "-".to_string(), |d| d.to_string()),
            f.detail
        );
    }
}
