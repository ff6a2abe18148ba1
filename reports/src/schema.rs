//! The reader's model of `results.json`, schema version 1 (documented in the README).
//!
//! `clusterbench` writes the file from its own types; this crate reads it back without depending
//! on them, so a report can be rendered from any file of this schema (another machine's, an older
//! build's). Everything a run may legitimately lack — faults, view changes, recovery figures, the
//! correctness check, the series, SLO checks — defaults to empty; only what every run has is
//! required. Unknown keys are ignored so that additions within version 1 stay readable.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ReportError;

/// The only schema version this crate reads.
pub const SCHEMA_VERSION: u64 = 1;

/// One run, as read from its results.json.
#[derive(Debug, Clone, Deserialize)]
pub struct Results {
    pub schema_version: u64,
    pub name: String,
    /// The experiment as run; shown verbatim at the end of the report.
    #[serde(default)]
    pub experiment: serde_json::Value,
    #[serde(default)]
    pub environment: Environment,
    pub target: Target,
    pub operations: Operations,
    #[serde(default)]
    pub faults: Vec<FaultWindow>,
    #[serde(default)]
    pub view_changes: Vec<ViewChange>,
    #[serde(default)]
    pub recovery: Vec<Recovery>,
    #[serde(default)]
    pub correctness: Option<Correctness>,
    /// The load agents, when the load came from agents.
    #[serde(default)]
    pub agents: Vec<Agent>,
    /// The replication backlog at the end of the load and its drain (bundled cluster).
    #[serde(default)]
    pub settle: Option<Settle>,
    #[serde(default)]
    pub slo: Option<Slo>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// A web experiment's trace, responses, cluster figures, samples and faults.
    #[serde(default)]
    pub web: Option<Web>,
}

/// `web`: what a web run adds.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Web {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub trace: serde_json::Value,
    #[serde(default)]
    pub outcomes: BTreeMap<String, u64>,
    #[serde(default)]
    pub hit_rate: Option<f64>,
    #[serde(default)]
    pub check_failures: u64,
    #[serde(default)]
    pub queue_spread: Option<f64>,
    #[serde(default)]
    pub cluster: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub samples: Vec<WebSample>,
    #[serde(default)]
    pub events: Vec<WebEvent>,
    #[serde(default)]
    pub faults: Vec<WebFault>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebSample {
    pub t_s: f64,
    #[serde(default)]
    pub workers: Vec<WorkerSample>,
    #[serde(default)]
    pub overflow_in_use: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSample {
    pub key: String,
    pub queue: f64,
    #[serde(default)]
    pub overflow: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebEvent {
    pub t_s: f64,
    pub kind: String,
    pub process: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebFault {
    pub index: u64,
    pub action: String,
    #[serde(default)]
    pub process: Option<String>,
    pub start_s: f64,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub detection_s: Option<f64>,
    #[serde(default)]
    pub respawn_s: Option<f64>,
    #[serde(default)]
    pub hints_back_s: Option<f64>,
    #[serde(default)]
    pub throughput_recovered_s: Option<f64>,
    #[serde(default)]
    pub degraded: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Environment {
    pub clusterbench_version: Option<String>,
    pub commit: Option<String>,
    pub cores: Option<u64>,
    pub os: Option<String>,
    pub started_at: Option<String>,
    pub elapsed_s: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    /// `bundled` or `external`.
    pub kind: String,
    #[serde(default)]
    pub nodes: Option<u64>,
    #[serde(default)]
    pub replication: Option<u64>,
    #[serde(default)]
    pub placement: Option<String>,
    #[serde(default)]
    pub disk: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Operations {
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default)]
    pub measured_s: f64,
    /// Totals per operation kind (`smtp`, `pop3`, `imap`, ...).
    pub ops: BTreeMap<String, OpSummary>,
    #[serde(default)]
    pub series: Vec<SecondPoint>,
    #[serde(default)]
    pub series_dropped: u64,
}

/// Totals of one operation kind. The report shows the percentiles the run computed; the
/// serialized histogram is read by the comparison, for the sampling error of a quantile.
#[derive(Debug, Clone, Deserialize)]
pub struct OpSummary {
    pub count: u64,
    pub errors: u64,
    #[serde(default)]
    pub errors_by_kind: BTreeMap<String, u64>,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The latency histogram (µs): HdrHistogram V2 (+ DEFLATE), base64.
    #[serde(default)]
    pub histogram: Option<String>,
}

/// One second of intended start.
#[derive(Debug, Clone, Deserialize)]
pub struct SecondPoint {
    pub t_s: u64,
    #[serde(default)]
    pub per_op: BTreeMap<String, PointFigures>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointFigures {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FaultWindow {
    #[serde(default)]
    pub index: Option<u64>,
    /// The fault action as the experiment file names it (`kill`, `partition`, `slow_disk`, ...).
    pub action: String,
    #[serde(default)]
    pub node: Option<u64>,
    #[serde(default)]
    pub groups: Option<Vec<Vec<u64>>>,
    /// Web: the process, by role and index.
    #[serde(default)]
    pub process: Option<String>,
    pub start_s: f64,
    /// `None`: never undone, so it lasts to the end of the run.
    #[serde(default)]
    pub end_s: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ViewChange {
    pub t_s: f64,
    pub node: u64,
    /// `None`: the node stopped answering.
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub leader: Option<u64>,
    #[serde(default)]
    pub members: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recovery {
    #[serde(default)]
    pub fault: Option<u64>,
    pub action: String,
    #[serde(default)]
    pub node: Option<u64>,
    pub start_s: f64,
    #[serde(default)]
    pub detection_s: Option<f64>,
    #[serde(default)]
    pub convergence_s: Option<f64>,
    #[serde(default)]
    pub throughput_recovered_s: Option<f64>,
    #[serde(default)]
    pub reintegration_s: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Correctness {
    pub acknowledged: u64,
    pub retrieved: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    #[serde(default)]
    pub unacknowledged_found: u64,
    #[serde(default)]
    pub unreadable_mailboxes: u64,
    /// Acknowledged messages whose mailboxes could not be read back: neither lost nor retrieved.
    #[serde(default)]
    pub unverified: u64,
    #[serde(default)]
    pub unverified_reason: Option<String>,
    #[serde(default)]
    pub lost_examples: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Slo {
    pub pass: bool,
    #[serde(default)]
    pub checks: Vec<SloCheck>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SloCheck {
    pub what: String,
    pub limit: f64,
    pub value: f64,
    pub pass: bool,
    /// The limit is the default: the experiment file did not set it.
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl Results {
    /// Reads one parsed results.json: the schema version first (a file of another version may
    /// differ anywhere), then the rest, naming the path of the first key that is missing or wrong.
    pub fn from_json(value: &serde_json::Value) -> Result<Results, ReportError> {
        let Some(object) = value.as_object() else {
            return Err(ReportError::NotAnObject);
        };
        match object.get("schema_version") {
            None => return Err(ReportError::NoSchemaVersion),
            Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(ReportError::UnsupportedSchema {
                    found: v.to_string(),
                    supported: SCHEMA_VERSION,
                })
            }
        }
        serde_path_to_error::deserialize(value).map_err(|e| ReportError::Invalid {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    }

    /// The run's length in seconds: the experiment's duration if it says, else the elapsed time.
    pub fn duration_s(&self) -> Option<f64> {
        self.experiment
            .pointer("/workload/duration_s")
            .and_then(serde_json::Value::as_f64)
            .or(self.environment.elapsed_s)
    }

    /// Operation kinds in display order: the mail protocols in the order a session uses them,
    /// then any others by name.
    pub fn op_names(&self) -> Vec<String> {
        const KNOWN: [&str; 3] = ["smtp", "pop3", "imap"];
        let mut names: Vec<String> = KNOWN
            .iter()
            .filter(|k| self.operations.ops.contains_key(**k))
            .map(|k| k.to_string())
            .collect();
        names.extend(
            self.operations
                .ops
                .keys()
                .filter(|k| !KNOWN.contains(&k.as_str()))
                .cloned(),
        );
        names
    }
}

impl FaultWindow {
    /// What the fault did, for labels: `kill node 2`, `partition 1,2 | 3`.
    pub fn label(&self) -> String {
        match &self.process {
            Some(p) => format!("{} {p}", self.action.replace('_', " ")),
            None => describe_fault(&self.action, self.node, self.groups.as_deref()),
        }
    }
}

impl Recovery {
    pub fn label(&self) -> String {
        describe_fault(&self.action, self.node, None)
    }
}

fn describe_fault(action: &str, node: Option<u64>, groups: Option<&[Vec<u64>]>) -> String {
    let mut label = action.replace('_', " ");
    if let Some(node) = node {
        label.push_str(&format!(" node {node}"));
    }
    if let Some(groups) = groups {
        let groups: Vec<String> = groups
            .iter()
            .map(|g| g.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
            .collect();
        label.push(' ');
        label.push_str(&groups.join(" | "));
    }
    label
}

#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    pub index: u32,
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub clock_offset_ms: f64,
    #[serde(default)]
    pub rtt_ms: f64,
    pub status: String,
    #[serde(default)]
    pub lost_at_s: Option<f64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub operations: u64,
    #[serde(default)]
    pub ops_per_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settle {
    pub backlog_at_load_end: u64,
    #[serde(default)]
    pub drained_s: Option<f64>,
}
