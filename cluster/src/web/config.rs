//! The web cluster's configuration (`web.toml`): one file every process of the cluster reads —
//! the nodes and their node daemons, the origins the cluster may fetch from, and the settings of
//! the front ends, workers, manager, cache partitions and restart policy. Every key has a
//! default; an unknown or mistyped key is an error that names it; every limit carries its unit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::proto::WorkerClass;

/// Most nodes one web cluster may have.
pub const NODES_MAX: usize = 256;
/// Most processes of one role (front ends, cache partitions, workers of one class).
pub const PROCESSES_PER_ROLE_MAX: u32 = 1_000;

/// The whole web cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Bearer token of every admin API of the cluster (processes call each other's with it).
    pub admin_token: String,
    /// Where processes keep files: `DIR/profiles.redb`, per-process logs.
    pub data_dir: PathBuf,
    /// The hosts of the cluster, each running a node daemon that starts and stops its processes.
    pub nodes: Vec<NodeEntry>,
    /// `host:port` of the origins the front ends may fetch from; any other is refused (no open
    /// proxy).
    pub origins: Vec<String>,
    pub front_end: FrontEndConfig,
    pub workers: WorkersConfig,
    pub manager: ManagerConfig,
    pub cache: CacheConfig,
    pub wolfpack: WolfpackConfig,
}

/// One host of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: u32,
    /// `host:port` of the node daemon's API.
    pub addr: String,
    /// An overflow node: not dedicated to the service, recruited only while the dedicated nodes
    /// are saturated, and released after.
    #[serde(default)]
    pub overflow: bool,
}

/// How a front end picks a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lottery {
    /// Tickets from the beaconed queue lengths as they are (stale between beacons: queues
    /// oscillate, as TranSend saw).
    Naive,
    /// Tickets from the beaconed queue lengths corrected by a running estimate of each queue's
    /// change since its report (what this front end sent since, less what the worker drains).
    Corrected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontEndConfig {
    /// Front ends the manager keeps running.
    pub count: u32,
    /// Longest request head (request line and headers) a front end reads.
    pub header_bytes_max: usize,
    /// Largest object a front end fetches from an origin or hands back.
    pub body_bytes_max: usize,
    /// Client connections one front end serves at once; over it, 503.
    pub connections_max: usize,
    /// A whole request, from the first byte read to the last written.
    pub request_timeout_ms: u64,
    /// Waiting for an origin's answer.
    pub origin_timeout_ms: u64,
    /// Waiting for a worker's answer; then another worker is tried.
    pub worker_timeout_ms: u64,
    /// Workers tried for one request before the original is served instead (a degradation).
    pub worker_attempts: u32,
    /// A cached profile is used this long before it is fetched again.
    pub profile_ttl_ms: u64,
    pub lottery: Lottery,
    /// The request header that names the user when there is no proxy authentication.
    pub user_header: String,
}

impl Default for FrontEndConfig {
    fn default() -> Self {
        FrontEndConfig {
            count: 1,
            header_bytes_max: 16 * 1024,
            body_bytes_max: 16 * 1024 * 1024,
            connections_max: 1_024,
            request_timeout_ms: 30_000,
            origin_timeout_ms: 10_000,
            worker_timeout_ms: 5_000,
            worker_attempts: 2,
            profile_ttl_ms: 1_000,
            lottery: Lottery::Corrected,
            user_header: "x-clusterbench-user".into(),
        }
    }
}

/// How a worker's CPU is accounted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "lowercase", deny_unknown_fields)]
pub enum CpuModel {
    /// The transform takes what it takes on this machine.
    Real,
    /// The real transform is done, then the job is held until `ms_per_kb` of input (plus
    /// `latency_ms`) have passed since it started: each worker behaves like its own CPU, one job
    /// at a time, queueing included, so scaling is measurable on two cores.
    Modelled {
        ms_per_kb: f64,
        #[serde(default)]
        latency_ms: f64,
    },
}

impl CpuModel {
    pub fn name(&self) -> &'static str {
        match self {
            CpuModel::Real => "real",
            CpuModel::Modelled { .. } => "modelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Workers of each class the manager starts with (and never goes below).
    pub classes: BTreeMap<WorkerClass, u32>,
    /// Most workers of one class, spawned ones included.
    pub per_class_max: u32,
    /// Most workers on one dedicated node; beyond it the manager recruits overflow nodes.
    pub per_node_max: u32,
    /// Jobs a worker holds (queued and in service); over it, the worker answers 503.
    pub queue_max: u32,
    pub cpu: CpuModel,
    /// Largest input a worker transforms.
    pub input_bytes_max: usize,
    /// Largest image (pixels) a worker decodes: a guard against decompression bombs.
    pub pixels_max: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        let mut classes = BTreeMap::new();
        classes.insert(WorkerClass::Jpeg, 1);
        classes.insert(WorkerClass::Gif, 1);
        classes.insert(WorkerClass::Html, 1);
        classes.insert(WorkerClass::Aggregate, 1);
        WorkersConfig {
            classes,
            per_class_max: 16,
            per_node_max: 8,
            queue_max: 64,
            cpu: CpuModel::Real,
            input_bytes_max: 16 * 1024 * 1024,
            pixels_max: 40_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// How often workers and front ends report their load.
    pub report_interval_ms: u64,
    /// How often the manager beacons its load hints.
    pub beacon_interval_ms: u64,
    /// Weight of a new report in the smoothed queue length (exponential moving average).
    pub smoothing: f64,
    /// H: spawn a worker of a class when its workers' average smoothed queue passes this.
    pub spawn_queue_threshold: f64,
    /// D: after a spawn, hold off this long before spawning another of the class.
    pub spawn_holdoff_s: f64,
    /// Retire an extra worker of a class after its queues stayed this long below a quarter of H.
    pub retire_idle_s: f64,
    /// A worker or front end silent this long is taken for dead (its node daemon usually says
    /// so sooner).
    pub report_timeout_ms: u64,
    /// Front ends take the manager for dead after this many beacon periods without a beacon.
    pub beacons_missed_max: u32,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            report_interval_ms: 500,
            beacon_interval_ms: 500,
            smoothing: 0.5,
            spawn_queue_threshold: 4.0,
            spawn_holdoff_s: 5.0,
            retire_idle_s: 20.0,
            report_timeout_ms: 2_000,
            beacons_missed_max: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache partitions; keys are hashed over the live ones.
    pub partitions: u32,
    /// Bytes one partition holds before it evicts the least recently used.
    pub bytes_max: u64,
    /// Largest object a partition stores.
    pub object_bytes_max: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            partitions: 2,
            bytes_max: 64 * 1024 * 1024,
            object_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// Wolfpack's policy: a failed process is restarted where it ran; past `restarts_max` restarts
/// within `window_s`, its group fails over to another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WolfpackConfig {
    pub restarts_max: u32,
    pub window_s: f64,
}

impl Default for WolfpackConfig {
    fn default() -> Self {
        WolfpackConfig {
            restarts_max: 3,
            window_s: 60.0,
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            admin_token: String::new(),
            data_dir: PathBuf::from("clusterbench-data/web"),
            nodes: Vec::new(),
            origins: Vec::new(),
            front_end: FrontEndConfig::default(),
            workers: WorkersConfig::default(),
            manager: ManagerConfig::default(),
            cache: CacheConfig::default(),
            wolfpack: WolfpackConfig::default(),
        }
    }
}

impl WebConfig {
    /// Parses a file's text, naming an unknown or mistyped key, then checks the values.
    pub fn from_toml(text: &str) -> Result<WebConfig, String> {
        let config: WebConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a template (settings every process of a cluster starts from) without requiring
    /// what the cluster's supervisor fills in (nodes, origins); unknown keys are still errors.
    pub fn template_from_toml(text: &str) -> Result<WebConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a web config serializes")
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() || self.nodes.len() > NODES_MAX {
            return Err(format!("nodes: give 1 to {NODES_MAX} nodes"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) {
                return Err(format!("nodes: id {} is 0 or given twice", n.id));
            }
            if !is_host_port(&n.addr) {
                return Err(format!("nodes: {:?} is not host:port", n.addr));
            }
        }
        if !self.nodes.iter().any(|n| !n.overflow) {
            return Err("nodes: at least one node must be dedicated (overflow = false)".into());
        }
        for o in &self.origins {
            if !is_host_port(o) {
                return Err(format!("origins: {o:?} is not host:port"));
            }
        }
        let f = &self.front_end;
        if !(1..=PROCESSES_PER_ROLE_MAX).contains(&f.count) {
            return Err(format!(
                "front_end.count: must be 1 to {PROCESSES_PER_ROLE_MAX}"
            ));
        }
        if !(1024..=1024 * 1024).contains(&f.header_bytes_max) {
            return Err("front_end.header_bytes_max: must be 1 KiB to 1 MiB".into());
        }
        if !(1..=1 << 30).contains(&f.body_bytes_max) {
            return Err("front_end.body_bytes_max: must be 1 byte to 1 GiB".into());
        }
        if f.connections_max == 0 || f.connections_max > 1_000_000 {
            return Err("front_end.connections_max: must be 1 to 1,000,000".into());
        }
        for (key, ms) in [
            ("front_end.request_timeout_ms", f.request_timeout_ms),
            ("front_end.origin_timeout_ms", f.origin_timeout_ms),
            ("front_end.worker_timeout_ms", f.worker_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(format!("{key}: must be 1 ms to an hour"));
            }
        }
        if !(1..=16).contains(&f.worker_attempts) {
            return Err("front_end.worker_attempts: must be 1 to 16".into());
        }
        if f.user_header.is_empty()
            || !f
                .user_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("front_end.user_header: must be a header name (letters, digits, -)".into());
        }
        let w = &self.workers;
        for (class, n) in &w.classes {
            if *n > w.per_class_max {
                return Err(format!(
                    "workers.classes.{}: {n} is more than workers.per_class_max",
                    class.name()
                ));
            }
        }
        if !(1..=PROCESSES_PER_ROLE_MAX).contains(&w.per_class_max) {
            return Err(format!(
                "workers.per_class_max: must be 1 to {PROCESSES_PER_ROLE_MAX}"
            ));
        }
        if !(1..=PROCESSES_PER_ROLE_MAX).contains(&w.per_node_max) {
            return Err(format!(
                "workers.per_node_max: must be 1 to {PROCESSES_PER_ROLE_MAX}"
            ));
        }
        if !(1..=100_000).contains(&w.queue_max) {
            return Err("workers.queue_max: must be 1 to 100,000".into());
        }
        if let CpuModel::Modelled {
            ms_per_kb,
            latency_ms,
        } = w.cpu
        {
            if !(ms_per_kb > 0.0 && ms_per_kb <= 10_000.0) {
                return Err("workers.cpu.ms_per_kb: must be > 0 and <= 10,000".into());
            }
            if !(0.0..=60_000.0).contains(&latency_ms) {
                return Err("workers.cpu.latency_ms: must be 0 to 60,000".into());
            }
        }
        let m = &self.manager;
        for (key, ms) in [
            ("manager.report_interval_ms", m.report_interval_ms),
            ("manager.beacon_interval_ms", m.beacon_interval_ms),
            ("manager.report_timeout_ms", m.report_timeout_ms),
        ] {
            if !(10..=600_000).contains(&ms) {
                return Err(format!("{key}: must be 10 ms to 10 minutes"));
            }
        }
        if !(m.smoothing > 0.0 && m.smoothing <= 1.0) {
            return Err("manager.smoothing: must be > 0 and <= 1".into());
        }
        if !(m.spawn_queue_threshold > 0.0 && m.spawn_queue_threshold.is_finite()) {
            return Err("manager.spawn_queue_threshold: must be > 0".into());
        }
        for (key, s) in [
            ("manager.spawn_holdoff_s", m.spawn_holdoff_s),
            ("manager.retire_idle_s", m.retire_idle_s),
        ] {
            if !(0.0..=86_400.0).contains(&s) {
                return Err(format!("{key}: must be 0 to a day"));
            }
        }
        if !(1..=1_000).contains(&m.beacons_missed_max) {
            return Err("manager.beacons_missed_max: must be 1 to 1,000".into());
        }
        let c = &self.cache;
        if !(1..=PROCESSES_PER_ROLE_MAX).contains(&c.partitions) {
            return Err(format!(
                "cache.partitions: must be 1 to {PROCESSES_PER_ROLE_MAX}"
            ));
        }
        if c.bytes_max == 0 || c.object_bytes_max == 0 {
            return Err("cache.bytes_max and cache.object_bytes_max: must be > 0".into());
        }
        if !(0.0..=86_400.0).contains(&self.wolfpack.window_s) {
            return Err("wolfpack.window_s: must be 0 to a day".into());
        }
        Ok(())
    }

    /// Whether `authority` (`host:port`) is an origin this cluster may fetch from.
    pub fn origin_allowed(&self, authority: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(authority))
    }
}

fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> String {
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7100\"\n".into()
    }

    #[test]
    fn a_minimal_file_takes_every_default() {
        let c = WebConfig::from_toml(&minimal()).unwrap();
        assert_eq!(c.front_end, FrontEndConfig::default());
        assert_eq!(c.workers.classes[&WorkerClass::Jpeg], 1);
        let again = WebConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn wrong_keys_and_values_are_named() {
        for (extra, key) in [
            ("[front_end]\nlotery = \"naive\"\n", "lotery"),
            ("[front_end]\nlottery = \"fair\"\n", "fair"),
            ("[workers]\ncpu = { model = \"modelled\" }\n", "ms_per_kb"),
            (
                "[workers]\ncpu = { model = \"modelled\", ms_per_kb = -1 }\n",
                "workers.cpu.ms_per_kb",
            ),
            ("[manager]\nsmoothing = 0\n", "manager.smoothing"),
            ("[cache]\npartitions = 0\n", "cache.partitions"),
            ("origins = [\"nohost\"]\n", "origins"),
        ] {
            let text = format!("{extra}{}", minimal());
            let text = if extra.starts_with('[') {
                format!("{}{extra}", minimal())
            } else {
                text
            };
            let err = WebConfig::from_toml(&text).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let only_overflow = "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7100\"\noverflow = true\n";
        assert!(WebConfig::from_toml(only_overflow)
            .unwrap_err()
            .contains("dedicated"));
    }
}
