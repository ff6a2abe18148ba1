//! Experiment files: what a run launches, drives, breaks and checks, as TOML.
//!
//! Every key has a default and every table rejects unknown keys, so a typo is an error that names
//! the key, never a silent default. `--set KEY=VALUE` overrides any key before parsing. This
//! module only describes and validates; the runner carries the experiment out.

use serde::{Deserialize, Serialize};

use crate::drivers::smtp::SmtpClient;
use crate::engine::{ClientConfig, IN_FLIGHT_LIMIT};
use crate::workload::Workload;
use crate::OpKind;

/// Most faults one experiment may schedule.
pub const FAULTS_MAX: usize = 1_000;

/// A whole experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub name: String,
    pub seed: u64,
    /// The bundled cluster, launched locally (the default target).
    pub cluster: ClusterSection,
    /// Instead of `[cluster]`: an existing server or cluster.
    pub target: Option<TargetSection>,
    pub workload: Workload,
    pub faults: Vec<FaultSpec>,
    pub slo: Slo,
    pub check: Check,
    /// `[loadgen]`: where the load comes from (this process, or agents).
    pub loadgen: LoadgenSection,
    /// `[sweep]`: keys (dotted paths) with lists of values, and `repeat`; the runner runs every
    /// combination that many times. Removed before each run's experiment is parsed.
    pub sweep: Option<toml::Table>,
}

/// Runs one sweep may make at most (combinations × repeat).
pub const SWEEP_RUNS_MAX: usize = 1_000;
/// Repetitions of one configuration at most.
pub const SWEEP_REPEAT_MAX: u32 = 100;

/// One run of a sweep: the values it sets and which repetition it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    pub params: Vec<(String, toml::Value)>,
    pub repetition: u32,
}

/// `sweep.saturate`: instead of running each configuration at the experiment's offered rate,
/// search its capacity (the highest open-loop rate meeting `[slo]` without loss: step up, then
/// bisect) and keep the run at that rate. Scaling is then measured at capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Saturate {
    /// First rate tried for a configuration's first repetition (operations per second); later
    /// repetitions start from the capacity the first one found.
    pub start_per_s: f64,
    /// Stop bisecting when the bracket is this narrow (relative).
    pub precision: f64,
    /// Probe runs per configuration and repetition at most.
    pub probes: u32,
}

impl Default for Saturate {
    fn default() -> Self {
        Saturate {
            start_per_s: 50.0,
            precision: 0.1,
            probes: 12,
        }
    }
}

/// Probe runs of one capacity search at most.
pub const PROBES_MAX: u32 = 40;

impl Saturate {
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if !(self.start_per_s > 0.0 && self.start_per_s <= crate::workload::RATE_PER_S_MAX) {
            return Err(format!(
                "{key}.start_per_s: must be > 0 and <= {}",
                crate::workload::RATE_PER_S_MAX
            ));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(format!("{key}.precision: must be between 0 and 1"));
        }
        if !(2..=PROBES_MAX).contains(&self.probes) {
            return Err(format!("{key}.probes: must be 2 to {PROBES_MAX}"));
        }
        Ok(())
    }
}

/// What a `[sweep]` table asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// The swept keys, in the order the table gives them.
    pub keys: Vec<String>,
    pub repeat: u32,
    /// In order, the first key varying slowest, repetitions of one configuration together.
    pub runs: Vec<SweepRun>,
    pub saturate: Option<Saturate>,
}

/// The runs a `[sweep]` table asks for, with the swept keys, the repeat count and whether each
/// configuration is saturated.
pub fn plan_sweep(sweep: &toml::Table) -> Result<SweepPlan, String> {
    let repeat = match sweep.get("repeat") {
        None => 1,
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= i64::from(SWEEP_REPEAT_MAX) => *n as u32,
        Some(other) => {
            return Err(format!(
                "sweep.repeat: must be a whole number from 1 to {SWEEP_REPEAT_MAX}, got {other}"
            ))
        }
    };
    let saturate = match sweep.get("saturate") {
        None | Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::Boolean(true)) => Some(Saturate::default()),
        Some(value @ toml::Value::Table(_)) => {
            let s: Saturate = value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| format!("sweep.saturate: {}", e.message()))?;
            s.validate("sweep.saturate")?;
            Some(s)
        }
        Some(other) => {
            return Err(format!(
                "sweep.saturate: true, or a table {{ start_per_s, precision, probes }}, got {other}"
            ))
        }
    };
    let mut keys = Vec::new();
    let mut lists = Vec::new();
    for (key, value) in sweep
        .iter()
        .filter(|(k, _)| k.as_str() != "repeat" && k.as_str() != "saturate")
    {
        if key.starts_with("sweep") || key.split('.').any(str::is_empty) {
            return Err(format!(
                "sweep: {key:?} is not a key of the experiment to vary"
            ));
        }
        match value {
            toml::Value::Array(values) if !values.is_empty() => {
                keys.push(key.clone());
                lists.push(values.clone());
            }
            _ => return Err(format!("sweep.\"{key}\": give a non-empty list of values")),
        }
    }
    if keys.is_empty() && !sweep.contains_key("repeat") && saturate.is_none() {
        return Err("sweep: give at least one key with a list of values, e.g. \"cluster.nodes\" = [1, 2, 4]".into());
    }
    let combinations: usize = lists.iter().map(Vec::len).product();
    if combinations.saturating_mul(repeat as usize) > SWEEP_RUNS_MAX {
        return Err(format!(
            "sweep: {combinations} combinations x repeat {repeat} is more than {SWEEP_RUNS_MAX} runs"
        ));
    }
    let mut runs = Vec::with_capacity(combinations * repeat as usize);
    for index in 0..combinations {
        // Mixed-radix digits of `index`, the last key varying fastest.
        let mut rest = index;
        let mut params = vec![(String::new(), toml::Value::Integer(0)); keys.len()];
        for k in (0..keys.len()).rev() {
            params[k] = (keys[k].clone(), lists[k][rest % lists[k].len()].clone());
            rest /= lists[k].len();
        }
        for repetition in 0..repeat {
            runs.push(SweepRun {
                params: params.clone(),
                repetition,
            });
        }
    }
    Ok(SweepPlan {
        keys,
        repeat,
        runs,
        saturate,
    })
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            name: "experiment".into(),
            seed: 1,
            cluster: ClusterSection::default(),
            target: None,
            workload: Workload::default(),
            faults: Vec::new(),
            slo: Slo::default(),
            check: Check::default(),
            loadgen: LoadgenSection::default(),
            sweep: None,
        }
    }
}

/// `host:port` with a host and a port number (the host is resolved later).
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Most agents one run may use.
pub const AGENTS_MAX: usize = 256;

/// Where the load comes from: this process (the default), `local_agents` agent processes this
/// run starts on this machine, or agents already running elsewhere (`clusterbench agent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadgenSection {
    /// `host:port` of running agents.
    pub agents: Vec<String>,
    /// Start this many agent processes on this machine (`--agents N`).
    pub local_agents: u32,
    /// The agents' token; default: the environment's `CLUSTERBENCH_AGENT_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// How long to keep trying to reach an agent that is not up yet (refused, or its name does
    /// not resolve yet), as when agents and coordinator start together.
    pub connect_timeout_s: f64,
    /// Open loop: operations in flight at most (all agents together); beyond it an operation
    /// waits for a slot, and the wait counts as its latency.
    pub in_flight_max: u32,
    /// `[loadgen.smtp]`: how SMTP connections are made and reused.
    pub smtp: SmtpClient,
    /// `[loadgen.http]`: how HTTP connections are made, and what is checked.
    pub http: crate::web::client::HttpClient,
    /// `[loadgen.imap]`: what IMAP sessions do with what they read.
    pub imap: ImapClient,
}

/// `[loadgen.imap]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapClient {
    /// MOVE the messages a session read to this folder (created on first use) instead of
    /// flagging them `\Deleted` and expunging them. Either way they leave INBOX, and the final
    /// check (which reads INBOX over POP3) counts them as read away.
    pub archive: Option<String>,
}

impl LoadgenSection {
    /// The client behaviour the engine gets.
    pub fn client(&self) -> ClientConfig {
        ClientConfig {
            in_flight_max: self.in_flight_max,
            smtp: self.smtp.clone(),
            imap_archive: self.imap.archive.clone(),
        }
    }
}

impl Default for LoadgenSection {
    fn default() -> Self {
        LoadgenSection {
            agents: Vec::new(),
            local_agents: 0,
            token: None,
            connect_timeout_s: 30.0,
            in_flight_max: ClientConfig::default().in_flight_max,
            smtp: SmtpClient::default(),
            http: crate::web::client::HttpClient::default(),
            imap: ImapClient::default(),
        }
    }
}

/// The bundled cluster's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub nodes: u32,
    pub replication: u32,
    pub spread: u32,
    /// `dynamic`, `random` or `static`.
    pub placement: String,
    /// The disk model, as the node configuration's `[disk]` table: `{ model = "real" }` or
    /// `{ model = "modelled", syncs_per_s = 200, latency_ms = 5 }`.
    pub disk: toml::Table,
    /// The mail log, as the node configuration's `[store]` table (`segment_bytes`,
    /// `free_bytes_min`); empty: the node's defaults.
    pub store: toml::Table,
    /// Users provisioned; default: the workload's user count.
    pub users: Option<u64>,
    /// `mail` (the Porcupine-style cluster, the default) or `web` (the SNS/TACC web cluster).
    pub service: Service,
    /// Web: overflow nodes, recruited only while the dedicated ones are saturated.
    pub overflow_nodes: u32,
    /// Web: the cluster's settings, as the tables of its `web.toml` (`front_end`, `workers`,
    /// `manager`, `cache`, `wolfpack`); every key has a default.
    pub web: toml::Table,
    /// Web: the bundled origin (when `web.origins` names none).
    pub origin: OriginSection,
}

/// Which reference cluster `[cluster]` launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    #[default]
    Mail,
    Web,
}

/// The bundled origin's corpus (`[cluster.origin]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    pub seed: u64,
    /// Objects of the seeded corpus (a trace's own URLs are served as the trace says).
    pub objects: u32,
    /// The miss penalty: every response waits this long first.
    pub delay_ms: u64,
}

impl Default for OriginSection {
    fn default() -> Self {
        OriginSection {
            seed: 1,
            objects: 2_000,
            delay_ms: 0,
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        let mut disk = toml::Table::new();
        disk.insert("model".into(), "real".into());
        ClusterSection {
            nodes: 3,
            replication: 2,
            spread: 2,
            placement: "dynamic".into(),
            disk,
            store: toml::Table::new(),
            users: None,
            service: Service::Mail,
            overflow_nodes: 0,
            web: toml::Table::new(),
            origin: OriginSection::default(),
        }
    }
}

/// An existing target: front ends per protocol (any may be empty, then that part of the mix is
/// an error) and its users.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    pub smtp: Vec<String>,
    pub pop3: Vec<String>,
    pub imap: Vec<String>,
    pub domain: String,
    pub user_pattern: String,
    pub user_first: u64,
    pub password: String,
    /// Web: proxies (`host:port`) every request goes to, in absolute form (squid, varnish, a
    /// TACC front end).
    pub proxy: Vec<String>,
    /// Web: servers (`host:port`) requests go to directly, in origin form (nginx, ...).
    pub http: Vec<String>,
    /// Web: the origin a trace's paths are made absolute against when they go to a proxy
    /// (`http://HOST:PORT`); with `http` the server itself.
    pub origin: Option<String>,
}

impl Default for TargetSection {
    fn default() -> Self {
        TargetSection {
            smtp: Vec::new(),
            pop3: Vec::new(),
            imap: Vec::new(),
            domain: "example.test".into(),
            user_pattern: "user{n}".into(),
            user_first: 0,
            password: "password".into(),
            proxy: Vec::new(),
            http: Vec::new(),
            origin: None,
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// SIGKILL the node; with `duration_s`, start it again after that long.
    Kill,
    /// SIGSTOP the node; SIGCONT after `duration_s` (default: the rest of the run).
    Pause,
    /// SIGKILL and start again at once.
    Restart,
    /// Cut the cluster into `groups`; heal after `duration_s`.
    Partition,
    /// Clear every node's faults (heal partitions, delays, losses).
    Heal,
    /// Delay every peer message of `node` (or all nodes) by `delay_ms`.
    Delay,
    /// Lose `loss` of the peer messages of `node` (or all nodes).
    Loss,
    /// Stretch `node`'s disk syncs by `factor`.
    SlowDisk,
    /// Shift `node`'s update clock by `skew_ms`.
    ClockSkew,
    /// Web: lose `loss` of the manager's beacons (at every process).
    BeaconLoss,
    /// Web: slow a worker's (modelled) CPU by `factor` (`process = "worker jpeg 1"`).
    SlowWorker,
    /// Web: delay every origin fetch of the front ends by `delay_ms`.
    OriginDelay,
}

/// One scheduled fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub at_s: f64,
    pub action: FaultAction,
    #[serde(default)]
    pub node: Option<u32>,
    /// Undo after this long (restart, resume, heal, clear); absent: for good.
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub groups: Option<Vec<Vec<u32>>>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub skew_ms: Option<i64>,
    /// Web: the process, by role and index: `manager`, `profiles`, `front_end 2`,
    /// `worker jpeg 1`, `cache 0`.
    #[serde(default)]
    pub process: Option<String>,
}

/// The fault actions a web experiment may schedule.
pub const WEB_FAULT_ACTIONS: [FaultAction; 8] = [
    FaultAction::Kill,
    FaultAction::Pause,
    FaultAction::Restart,
    FaultAction::Partition,
    FaultAction::Heal,
    FaultAction::BeaconLoss,
    FaultAction::SlowWorker,
    FaultAction::OriginDelay,
];

/// Service-level objectives the run is judged against. A limit the file leaves out gets its
/// default ([`Slo::DEFAULT_P99_MS`], [`Slo::DEFAULT_ERROR_RATE_MAX`]), and results say which
/// limits were defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    pub p99_ms: SloLatency,
    pub error_rate_max: Option<f64>,
}

/// p99 latency limits per operation, in milliseconds; `None`: not set (the default applies).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloLatency {
    pub smtp: Option<f64>,
    pub pop3: Option<f64>,
    pub imap: Option<f64>,
    pub html: Option<f64>,
    pub gif: Option<f64>,
    pub jpeg: Option<f64>,
    pub other: Option<f64>,
}

/// A limit and whether the experiment file set it (else it is the default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub default: bool,
}

impl Slo {
    /// p99 limits when the file sets none: SMTP 250 ms, POP3 and IMAP sessions 500 ms, HTTP
    /// requests 2 s (TranSend's misses took 100 ms to 100 s; its hits were under 100 ms).
    pub const DEFAULT_P99_MS: [(OpKind, f64); 7] = [
        (OpKind::Smtp, 250.0),
        (OpKind::Pop3, 500.0),
        (OpKind::Imap, 500.0),
        (OpKind::Html, 2000.0),
        (OpKind::Gif, 2000.0),
        (OpKind::Jpeg, 2000.0),
        (OpKind::Other, 2000.0),
    ];
    /// The error-rate limit when the file sets none.
    pub const DEFAULT_ERROR_RATE_MAX: f64 = 0.01;

    /// The p99 limit of `kind`, set or default.
    pub fn p99_limit(&self, kind: OpKind) -> Limit {
        match self.p99_ms.get(kind) {
            Some(value) => Limit {
                value,
                default: false,
            },
            None => Limit {
                value: Slo::DEFAULT_P99_MS
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(f64::INFINITY, |(_, v)| *v),
                default: true,
            },
        }
    }

    /// The error-rate limit, set or default.
    pub fn error_rate_limit(&self) -> Limit {
        match self.error_rate_max {
            Some(value) => Limit {
                value,
                default: false,
            },
            None => Limit {
                value: Slo::DEFAULT_ERROR_RATE_MAX,
                default: true,
            },
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(e) = self.error_rate_max {
            if !(0.0..=1.0).contains(&e) {
                return Err("slo.error_rate_max: must be between 0 and 1".into());
            }
        }
        for kind in OpKind::ALL {
            if let Some(v) = self.p99_ms.get(kind) {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!(
                        "slo.p99_ms.{}: must be a positive number of milliseconds",
                        kind.name()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl SloLatency {
    pub fn get(&self, kind: OpKind) -> Option<f64> {
        match kind {
            OpKind::Smtp => self.smtp,
            OpKind::Pop3 => self.pop3,
            OpKind::Imap => self.imap,
            OpKind::Html => self.html,
            OpKind::Gif => self.gif,
            OpKind::Jpeg => self.jpeg,
            OpKind::Other => self.other,
        }
    }
}

/// The end-of-run correctness check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Check {
    /// Whether to retrieve every mailbox at the end and count lost, duplicated, corrupted.
    pub enabled: bool,
    /// Loss of acknowledged messages is expected (e.g. replication 1 and a node killed for good):
    /// it is reported but does not fail the run.
    pub loss_expected: bool,
    /// How long to wait after the load for replication to settle before checking.
    pub settle_s: f64,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            enabled: true,
            loss_expected: false,
            settle_s: 30.0,
        }
    }
}

impl Experiment {
    /// Parses an experiment, naming any unknown or mistyped key, then validates values.
    pub fn from_toml(text: &str) -> Result<Experiment, String> {
        let value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        Experiment::from_table(value)
    }

    /// Parses an already-read TOML table (after `--set` overrides).
    pub fn from_table(table: toml::Table) -> Result<Experiment, String> {
        let mut experiment: Experiment = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        let w = &mut experiment.workload;
        if w.skew_model == crate::workload::SkewModel::HotNode && w.hot_nodes.is_none() {
            if experiment.target.is_some() {
                return Err(
                    "workload.hot_nodes: skew_model = \"hot-node\" against an external \
                            target needs the number of home nodes to hash users over"
                        .into(),
                );
            }
            w.hot_nodes = Some(experiment.cluster.nodes);
        }
        experiment.validate()?;
        Ok(experiment)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name: {:?} must be letters, digits, - _ .",
                self.name
            ));
        }
        self.workload.validate()?;
        let l = &self.loadgen;
        if !l.agents.is_empty() && l.local_agents > 0 {
            return Err("loadgen: give agents or local_agents, not both".into());
        }
        if l.agents.len() > AGENTS_MAX || l.local_agents as usize > AGENTS_MAX {
            return Err(format!("loadgen: at most {AGENTS_MAX} agents"));
        }
        if !(l.connect_timeout_s > 0.0 && l.connect_timeout_s <= 3600.0) {
            return Err("loadgen.connect_timeout_s: must be > 0 and <= 3600".into());
        }
        if let Some(bad) = l.agents.iter().find(|a| !is_host_port(a)) {
            return Err(format!("loadgen.agents: {bad:?} is not host:port"));
        }
        if !(1..=IN_FLIGHT_LIMIT).contains(&l.in_flight_max) {
            return Err(format!(
                "loadgen.in_flight_max: must be 1 to {IN_FLIGHT_LIMIT}"
            ));
        }
        l.smtp.validate("loadgen.smtp")?;
        l.http.validate("loadgen.http")?;
        if self.is_web() {
            return self.validate_web();
        }
        if self.workload.trace.is_some() {
            return Err("workload.trace: traces drive web experiments ([cluster] service = \"web\", or a [target] proxy or http)".into());
        }
        let c = &self.cluster;
        if c.nodes == 0 || c.nodes > 63 {
            return Err(format!("cluster.nodes: must be 1 to 63, got {}", c.nodes));
        }
        if c.replication == 0 || c.replication > c.nodes {
            return Err(format!(
                "cluster.replication: must be 1 to cluster.nodes ({}), got {}",
                c.nodes, c.replication
            ));
        }
        if c.spread == 0 {
            return Err("cluster.spread: must be at least 1".into());
        }
        if !["dynamic", "random", "static"].contains(&c.placement.as_str()) {
            return Err(format!(
                "cluster.placement: {:?} is not one of dynamic, random, static",
                c.placement
            ));
        }
        if let Some(t) = &self.target {
            for (key, addrs) in [("smtp", &t.smtp), ("pop3", &t.pop3), ("imap", &t.imap)] {
                for a in addrs {
                    if !is_host_port(a) {
                        return Err(format!(
                            "target.{key}: {a:?} is not an address like 127.0.0.1:25 or mail.example.com:25"
                        ));
                    }
                }
            }
            if !t.proxy.is_empty() || !t.http.is_empty() {
                return Err(
                    "target: proxy and http are web targets; give no smtp, pop3 or imap with them"
                        .into(),
                );
            }
            if t.smtp.is_empty() && t.pop3.is_empty() && t.imap.is_empty() {
                return Err("target: give at least one of smtp, pop3, imap".into());
            }
            if !self.faults.is_empty() {
                return Err(
                    "faults: fault injection needs the bundled [cluster], not a [target]".into(),
                );
            }
        }
        if self.faults.len() > FAULTS_MAX {
            return Err(format!("faults: at most {FAULTS_MAX}"));
        }
        let duration = self.workload.duration_s;
        for (i, f) in self.faults.iter().enumerate() {
            let at = |what: &str| format!("faults[{i}].{what}");
            if !(0.0..=duration).contains(&f.at_s) {
                return Err(format!(
                    "{}: must be within the run (0 to {duration} s)",
                    at("at_s")
                ));
            }
            if let Some(d) = f.duration_s {
                if d.is_nan() || d <= 0.0 {
                    return Err(format!("{}: must be positive", at("duration_s")));
                }
            }
            if matches!(
                f.action,
                FaultAction::BeaconLoss | FaultAction::SlowWorker | FaultAction::OriginDelay
            ) || f.process.is_some()
            {
                return Err(format!(
                    "{}: {:?} and process are for the web cluster ([cluster] service = \"web\")",
                    at("action"),
                    f.action
                ));
            }
            let node_needed = matches!(
                f.action,
                FaultAction::Kill
                    | FaultAction::Pause
                    | FaultAction::Restart
                    | FaultAction::SlowDisk
                    | FaultAction::ClockSkew
            );
            match f.node {
                Some(n) if n == 0 || n > c.nodes => {
                    return Err(format!(
                        "{}: node {n} is not in the cluster (1 to {})",
                        at("node"),
                        c.nodes
                    ))
                }
                None if node_needed => {
                    return Err(format!("{}: {:?} needs a node", at("node"), f.action))
                }
                _ => {}
            }
            match f.action {
                FaultAction::Partition => {
                    let groups = f.groups.as_ref().ok_or_else(|| {
                        format!("{}: partition needs groups, e.g. [[1,2],[3]]", at("groups"))
                    })?;
                    let mut seen = std::collections::BTreeSet::new();
                    for g in groups {
                        for &n in g {
                            if n == 0 || n > c.nodes || !seen.insert(n) {
                                return Err(format!(
                                    "{}: node {n} is unknown or in two groups",
                                    at("groups")
                                ));
                            }
                        }
                    }
                    if groups.len() < 2 {
                        return Err(format!(
                            "{}: a partition needs at least two groups",
                            at("groups")
                        ));
                    }
                }
                FaultAction::Delay if f.delay_ms.is_none() => {
                    return Err(format!("{}: delay needs delay_ms", at("delay_ms")))
                }
                FaultAction::Loss if !f.loss.is_some_and(|l| (0.0..=1.0).contains(&l)) => {
                    return Err(format!("{}: loss needs loss between 0 and 1", at("loss")))
                }
                FaultAction::SlowDisk if !f.factor.is_some_and(|x| x >= 1.0) => {
                    return Err(format!("{}: slow_disk needs factor >= 1", at("factor")))
                }
                FaultAction::ClockSkew if f.skew_ms.is_none() => {
                    return Err(format!("{}: clock_skew needs skew_ms", at("skew_ms")))
                }
                _ => {}
            }
        }
        self.slo.validate()?;
        if !(0.0..=3600.0).contains(&self.check.settle_s) {
            return Err("check.settle_s: must be 0 to 3600".into());
        }
        Ok(())
    }
}

impl Experiment {
    /// Whether this is a web experiment: the bundled web cluster, or a proxy or web servers.
    pub fn is_web(&self) -> bool {
        match &self.target {
            Some(t) => !t.proxy.is_empty() || !t.http.is_empty(),
            None => self.cluster.service == Service::Web,
        }
    }

    fn validate_web(&self) -> Result<(), String> {
        let w = &self.workload;
        let trace = w.trace.clone().unwrap_or_default();
        trace.validate()?;
        if trace.timing == TraceTiming::Trace
            && w.rate
                .sessions_for(crate::workload::Share { index: 0, count: 1 })
                .is_some()
        {
            return Err("workload.rate: a closed loop ({ closed = N }) ignores the log's times; give timing = \"rate\"".into());
        }
        let c = &self.cluster;
        if let Some(t) = &self.target {
            if !t.smtp.is_empty() || !t.pop3.is_empty() || !t.imap.is_empty() {
                return Err(
                    "target: proxy and http are web targets; give no smtp, pop3 or imap with them"
                        .into(),
                );
            }
            if !t.proxy.is_empty() && !t.http.is_empty() {
                return Err("target: give proxy or http, not both".into());
            }
            for (key, addrs) in [("proxy", &t.proxy), ("http", &t.http)] {
                if let Some(a) = addrs.iter().find(|a| !is_host_port(a)) {
                    return Err(format!(
                        "target.{key}: {a:?} is not an address like 127.0.0.1:3128"
                    ));
                }
            }
            if !t.proxy.is_empty() && t.origin.is_none() {
                return Err("target.origin: a proxy needs the origin the trace's paths are on (http://HOST:PORT)".into());
            }
            if let Some(o) = &t.origin {
                if !o.starts_with("http://") {
                    return Err(format!("target.origin: {o:?} is not http://HOST:PORT"));
                }
            }
            if !self.faults.is_empty() {
                return Err(
                    "faults: fault injection needs the bundled [cluster], not a [target]".into(),
                );
            }
        } else if c.nodes == 0 || c.nodes > 63 {
            return Err(format!("cluster.nodes: must be 1 to 63, got {}", c.nodes));
        } else if c.overflow_nodes > 63 {
            return Err(format!(
                "cluster.overflow_nodes: must be 0 to 63, got {}",
                c.overflow_nodes
            ));
        }
        if self.faults.len() > FAULTS_MAX {
            return Err(format!("faults: at most {FAULTS_MAX}"));
        }
        for (i, f) in self.faults.iter().enumerate() {
            let at = |what: &str| format!("faults[{i}].{what}");
            if !(0.0..=w.duration_s).contains(&f.at_s) {
                return Err(format!(
                    "{}: must be within the run (0 to {} s)",
                    at("at_s"),
                    w.duration_s
                ));
            }
            if let Some(d) = f.duration_s {
                if d.is_nan() || d <= 0.0 {
                    return Err(format!("{}: must be positive", at("duration_s")));
                }
            }
            if !WEB_FAULT_ACTIONS.contains(&f.action) {
                return Err(format!("{}: {:?} is not a web fault (kill, pause, restart, partition, heal, beacon_loss, slow_worker, origin_delay)", at("action"), f.action));
            }
            if f.node.is_some() {
                return Err(format!(
                    "{}: web faults name a process (process = \"worker jpeg 1\"), not a node",
                    at("node")
                ));
            }
            if f.action == FaultAction::Partition {
                let all = c.nodes + c.overflow_nodes;
                let groups = f.groups.as_ref().ok_or_else(|| {
                    format!(
                        "{}: partition needs groups of nodes, e.g. [[1],[2]]",
                        at("groups")
                    )
                })?;
                let mut seen = std::collections::BTreeSet::new();
                for &n in groups.iter().flatten() {
                    if n == 0 || n > all || !seen.insert(n) {
                        return Err(format!(
                            "{}: node {n} is unknown (1 to {all}, overflow nodes after the others) or in two groups",
                            at("groups")
                        ));
                    }
                }
                if groups.iter().filter(|g| !g.is_empty()).count() < 2 {
                    return Err(format!(
                        "{}: a partition needs at least two groups",
                        at("groups")
                    ));
                }
                if f.process.is_some() {
                    return Err(format!(
                        "{}: a partition cuts nodes apart (groups), not a process",
                        at("process")
                    ));
                }
            } else if f.groups.is_some() {
                return Err(format!("{}: only a partition has groups", at("groups")));
            }
            let needs_process = matches!(
                f.action,
                FaultAction::Kill
                    | FaultAction::Pause
                    | FaultAction::Restart
                    | FaultAction::SlowWorker
            );
            match &f.process {
                None if needs_process => {
                    return Err(format!(
                        "{}: {:?} needs a process, e.g. \"worker jpeg 1\"",
                        at("process"),
                        f.action
                    ))
                }
                Some(p) if p.trim().is_empty() || p.len() > 64 => {
                    return Err(format!("{}: {p:?} is not a process", at("process")))
                }
                _ => {}
            }
            match f.action {
                FaultAction::BeaconLoss if !f.loss.is_some_and(|l| (0.0..=1.0).contains(&l)) => {
                    return Err(format!(
                        "{}: beacon_loss needs loss between 0 and 1",
                        at("loss")
                    ))
                }
                FaultAction::SlowWorker
                    if !f.factor.is_some_and(|x| (1.0..=1000.0).contains(&x)) =>
                {
                    return Err(format!(
                        "{}: slow_worker needs factor from 1 to 1000",
                        at("factor")
                    ))
                }
                FaultAction::OriginDelay if f.delay_ms.is_none() => {
                    return Err(format!("{}: origin_delay needs delay_ms", at("delay_ms")))
                }
                _ => {}
            }
        }
        self.slo.validate()?;
        Ok(())
    }
}

/// `[workload.trace]`: the requests of a web experiment, replayed from a Common or Combined Log
/// Format file, or from one synthesized into the run's directory first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceWorkload {
    /// The log (plain or gzip); relative paths are from the working directory.
    pub file: Option<String>,
    /// Without `file`: the synthesizer's settings (`clusterbench trace synth`'s file format).
    pub synth: Option<toml::Table>,
    /// `trace`: by the log's timestamps, `speedup` times faster; `rate`: in log order at
    /// `workload.rate`.
    pub timing: TraceTiming,
    pub speedup: f64,
    /// Passes over the log: a short log replayed again and again (each pass after the last,
    /// on the same clock), up to the run's duration.
    pub repeat: u32,
}

/// Most passes over one log.
pub const TRACE_REPEAT_MAX: u32 = 1_000_000;

/// See [`TraceWorkload::timing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceTiming {
    #[default]
    Trace,
    Rate,
}

impl Default for TraceWorkload {
    fn default() -> Self {
        TraceWorkload {
            file: None,
            synth: None,
            timing: TraceTiming::Trace,
            speedup: 1.0,
            repeat: 1,
        }
    }
}

impl TraceWorkload {
    pub fn validate(&self) -> Result<(), String> {
        if self.file.is_some() && self.synth.is_some() {
            return Err("workload.trace: give file or synth, not both".into());
        }
        if !(1..=TRACE_REPEAT_MAX).contains(&self.repeat) {
            return Err(format!(
                "workload.trace.repeat: must be 1 to {TRACE_REPEAT_MAX}"
            ));
        }
        if !(self.speedup >= 0.001 && self.speedup <= 1_000_000.0) {
            return Err("workload.trace.speedup: must be 0.001 to 1000000".into());
        }
        Ok(())
    }
}

/// Applies `KEY=VALUE` to a TOML table: `KEY` is a dotted path (`cluster.nodes`,
/// `workload.rate.per_s`); `VALUE` is TOML (`3`, `0.5`, `"static"`, `[1,2]`), or a bare string.
pub fn set_key(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| format!("--set {assignment:?}: expected KEY=VALUE"))?;
    let key = key.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("parsed the v key"),
        Err(_) => toml::Value::String(value.trim().to_string()),
    };
    set_value(table, key, value).map_err(|e| format!("--set {assignment:?}: {e}"))
}

/// Sets the dotted key path `key` of `table` to `value`, creating tables on the way.
pub fn set_value(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{key:?} is not a key path"));
    }
    let mut node = table;
    for p in &parts[..parts.len() - 1] {
        let entry = node
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Experiment::from_toml("[cluster]\nnodse = 3\n").unwrap_err();
        assert!(err.contains("nodse"), "{err}");
        let err = Experiment::from_toml("[workload]\nuserz = 3\n").unwrap_err();
        assert!(err.contains("userz"), "{err}");
    }

    #[test]
    fn faults_are_validated() {
        let err = Experiment::from_toml("[[faults]]\nat_s = 5\naction = \"kill\"\n").unwrap_err();
        assert!(err.contains("faults[0].node"), "{err}");
        let err =
            Experiment::from_toml("[[faults]]\nat_s = 5\naction = \"partition\"\ngroups = [[1]]\n")
                .unwrap_err();
        assert!(err.contains("groups"), "{err}");
        let ok = Experiment::from_toml(
            "[[faults]]\nat_s = 5\naction = \"kill\"\nnode = 2\nduration_s = 3\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn sweeps_plan_every_combination_repeated() {
        let sweep: toml::Table =
            toml::from_str("repeat = 2\n\"cluster.nodes\" = [1, 2]\n\"cluster.placement\" = [\"dynamic\", \"static\"]\n")
                .unwrap();
        let SweepPlan {
            keys, repeat, runs, ..
        } = plan_sweep(&sweep).unwrap();
        assert_eq!(keys, vec!["cluster.nodes", "cluster.placement"]);
        assert_eq!(repeat, 2);
        assert_eq!(runs.len(), 8);
        assert_eq!(runs[0].params[0].1, toml::Value::Integer(1));
        assert_eq!(runs[2].params[1].1, toml::Value::String("static".into()));
        assert_eq!(runs[7].repetition, 1);
        let bad: toml::Table = toml::from_str("\"cluster.nodes\" = 3\n").unwrap();
        assert!(plan_sweep(&bad).unwrap_err().contains("cluster.nodes"));
        let bad: toml::Table = toml::from_str("repeat = 0\n\"cluster.nodes\" = [1]\n").unwrap();
        assert!(plan_sweep(&bad).unwrap_err().contains("repeat"));
        let sat: toml::Table = toml::from_str(
            "saturate = { start_per_s = 20, probes = 6 }\n\"cluster.nodes\" = [1]\n",
        )
        .unwrap();
        let plan = plan_sweep(&sat).unwrap();
        assert_eq!(plan.keys, vec!["cluster.nodes"]);
        let s = plan.saturate.unwrap();
        assert_eq!((s.start_per_s, s.probes, s.precision), (20.0, 6, 0.1));
        let bad: toml::Table = toml::from_str("saturate = { start = 20 }\n").unwrap();
        assert!(plan_sweep(&bad).unwrap_err().contains("start"));
        let bad: toml::Table = toml::from_str("saturate = { probes = 1 }\n").unwrap();
        assert!(plan_sweep(&bad)
            .unwrap_err()
            .contains("sweep.saturate.probes"));
    }

    #[test]
    fn the_connection_model_is_read_and_checked() {
        let e = Experiment::from_toml(
            "[loadgen]\nin_flight_max = 20000\n[loadgen.smtp]\nconnection = \"per-message\"\nconnections_per_front_end = 12000\n",
        )
        .unwrap();
        assert_eq!(e.loadgen.in_flight_max, 20_000);
        assert_eq!(
            e.loadgen.smtp.connection,
            crate::drivers::smtp::ConnectionModel::PerMessage
        );
        let client = e.loadgen.client().share(3);
        assert_eq!(client.in_flight_max, 6_667);
        assert_eq!(client.smtp.connections_per_front_end, 4_000);
        for (text, key) in [
            ("[loadgen.smtp]\nconnection = \"sometimes\"\n", "sometimes"),
            ("[loadgen.smtp]\nconnections = 3\n", "connections"),
            ("[loadgen]\nin_flight_max = 0\n", "loadgen.in_flight_max"),
            (
                "[loadgen.smtp]\nconnections_per_front_end = 0\n",
                "loadgen.smtp.connections_per_front_end",
            ),
            (
                "[loadgen.smtp]\nconnection = \"per-message\"\nmessages_per_connection = 5\n",
                "loadgen.smtp.messages_per_connection",
            ),
        ] {
            let err = Experiment::from_toml(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn set_overrides_any_key() {
        let mut t: toml::Table = toml::from_str("[cluster]\nnodes = 3\n").unwrap();
        set_key(&mut t, "cluster.nodes=5").unwrap();
        set_key(&mut t, "cluster.placement=static").unwrap();
        set_key(&mut t, "workload.skew=0.5").unwrap();
        let e = Experiment::from_table(t).unwrap();
        assert_eq!(e.cluster.nodes, 5);
        assert_eq!(e.cluster.placement, "static");
        assert_eq!(e.workload.skew, 0.5);
        let mut t = toml::Table::new();
        set_key(&mut t, "cluster.nodez=5").unwrap();
        assert!(Experiment::from_table(t).unwrap_err().contains("nodez"));
    }

    #[test]
    fn web_experiments_name_what_is_wrong() {
        let web = "[cluster]\nservice = \"web\"\n";
        let ok = Experiment::from_toml(web).unwrap();
        assert!(ok.is_web());
        let err = Experiment::from_toml(&format!("{web}[[faults]]\nat_s = 1\naction = \"kill\"\n"))
            .unwrap_err();
        assert!(err.contains("faults[0].process"), "{err}");
        let err = Experiment::from_toml(&format!(
            "{web}[[faults]]\nat_s = 1\naction = \"kill\"\nnode = 1\n"
        ))
        .unwrap_err();
        assert!(err.contains("not a node"), "{err}");
        let err = Experiment::from_toml(&format!(
            "{web}[[faults]]\nat_s = 1\naction = \"slow_worker\"\nprocess = \"worker gif 1\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("factor"), "{err}");
        let err =
            Experiment::from_toml(&format!("{web}[workload.trace]\nspeedup = 0\n")).unwrap_err();
        assert!(err.contains("workload.trace.speedup"), "{err}");
        let err =
            Experiment::from_toml(&format!("{web}[workload.trace]\nfyle = \"x\"\n")).unwrap_err();
        assert!(err.contains("fyle"), "{err}");
        // A trace in a mail experiment, a proxy without its origin, a web fault on mail.
        let err = Experiment::from_toml("[workload.trace]\nfile = \"x\"\n").unwrap_err();
        assert!(err.contains("workload.trace"), "{err}");
        let err = Experiment::from_toml("[target]\nproxy = [\"127.0.0.1:3128\"]\n").unwrap_err();
        assert!(err.contains("target.origin"), "{err}");
        let err =
            Experiment::from_toml("[[faults]]\nat_s = 1\naction = \"beacon_loss\"\nloss = 0.5\n")
                .unwrap_err();
        assert!(err.contains("web cluster"), "{err}");
        let err = Experiment::from_toml(&format!(
            "{web}[loadgen.http]\nconnections_per_target = 0\n"
        ))
        .unwrap_err();
        assert!(err.contains("loadgen.http.connections_per_target"), "{err}");
        // Partitions cut nodes apart: groups of known nodes, at least two, no process.
        let two = "[cluster]\nservice = \"web\"\nnodes = 2\n";
        let part = |rest: &str| {
            Experiment::from_toml(&format!(
                "{two}[[faults]]\nat_s = 1\naction = \"partition\"\n{rest}"
            ))
        };
        assert!(part("groups = [[1], [2]]\n").is_ok());
        assert!(part("").unwrap_err().contains("faults[0].groups"));
        assert!(part("groups = [[1], [3]]\n")
            .unwrap_err()
            .contains("node 3"));
        assert!(part("groups = [[1, 2]]\n")
            .unwrap_err()
            .contains("two groups"));
        assert!(part("groups = [[1], [2]]\nprocess = \"manager\"\n")
            .unwrap_err()
            .contains("not a process"));
        let err = Experiment::from_toml(&format!(
            "{two}[[faults]]\nat_s = 1\naction = \"kill\"\nprocess = \"manager\"\ngroups = [[1], [2]]\n"
        ))
        .unwrap_err();
        assert!(err.contains("only a partition"), "{err}");
    }
}
