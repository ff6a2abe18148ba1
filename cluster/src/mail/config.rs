//! Node configuration: identity, listen addresses, users, and every limit a node enforces.
//!
//! A node is configured from a TOML file (what `clusterbench cluster up` writes for each node) or
//! from defaults. Unknown keys are rejected with an error that names them, so a typo never turns
//! into a silent default. Every buffer, line, message and connection count a node keeps has its
//! limit here, in units named by the field's suffix.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything one node needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Permanent node id (rank); unique within a cluster, never reused for another machine.
    pub id: u32,
    /// Where the node keeps its mail log and metadata.
    pub data_dir: PathBuf,
    /// The mail domain this node accepts mail for. Mail for any other domain is refused (no relay).
    pub domain: String,
    /// Host name used in greetings and `Received:` headers.
    pub hostname: String,
    /// Bearer token for the admin API. Empty means: refuse every admin request.
    pub admin_token: String,
    pub listen: Listen,
    pub users: Users,
    pub limits: Limits,
    /// How the mail log reaches stable storage.
    pub disk: DiskConfig,
    /// How the mail log is laid out and kept in bounds.
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
}

/// The mail log's segments, compaction and the free space it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A segment is closed and a new one started once it grows past this many bytes. Closed
    /// segments are compacted (their live records copied forward, the file deleted) once the
    /// log is more than twice the size of what is live in it.
    pub segment_bytes: u64,
    /// Free space the log leaves on its file system: a change that would cut into it is refused
    /// with a temporary failure (SMTP `452 4.3.1`, IMAP `NO`), and taken once space returns.
    pub free_bytes_min: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: 64 * 1024 * 1024,
            free_bytes_min: 64 * 1024 * 1024,
        }
    }
}

/// The disk a node's mail log is acknowledged against.
///
/// `real` writes and fsyncs every batch. `modelled` writes without fsync and then holds the batch
/// for the time a device with the given sync rate and latency would take (`messages /
/// syncs_per_s` plus `latency_ms`), one batch at a time, so each message copy written costs one
/// sync of device time (bookkeeping records ride along) and the queue in front of the writer is
/// the device queue. That makes N nodes on one machine behave like N
/// disk-bound machines (Porcupine's nodes were), so scaling and replication overhead can be
/// measured on a laptop. Data written under the model survives `kill -9` (it is in the page cache)
/// but not a power cut.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DiskSpec", into = "DiskSpec")]
pub enum DiskConfig {
    #[default]
    Real,
    Modelled {
        syncs_per_s: f64,
        latency_ms: f64,
        /// Where the log's bookkeeping goes.
        log: LogDevice,
    },
}

/// Where a modelled node keeps its replication log's bookkeeping (acknowledgements, owed changes,
/// flags, expunges, profiles). Message copies always cost a sync of the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogDevice {
    /// An NVRAM-like fast log: bookkeeping rides along with the batch for free (the default).
    #[default]
    Nvram,
    /// On the disk: every bookkeeping record costs a sync too, as on Porcupine's machines
    /// without NVRAM.
    Disk,
}

/// The TOML shape of [`DiskConfig`]: one flat table, so that a parameter given to the wrong model
/// (`syncs_per_s` with `model = "real"`) is an error that names it, not silently dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskSpec {
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    syncs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogDevice>,
}

impl TryFrom<DiskSpec> for DiskConfig {
    type Error = String;

    fn try_from(spec: DiskSpec) -> Result<Self, String> {
        match spec.model.as_str() {
            "real" => match (spec.syncs_per_s, spec.latency_ms, spec.log) {
                (None, None, None) => Ok(DiskConfig::Real),
                _ => Err(
                    "disk: syncs_per_s, latency_ms and log apply only to model = \"modelled\""
                        .into(),
                ),
            },
            "modelled" => Ok(DiskConfig::Modelled {
                syncs_per_s: spec
                    .syncs_per_s
                    .ok_or("disk: model = \"modelled\" needs syncs_per_s")?,
                latency_ms: spec.latency_ms.unwrap_or(0.0),
                log: spec.log.unwrap_or_default(),
            }),
            other => Err(format!(
                "disk.model: unknown model {other:?}; expected \"real\" or \"modelled\""
            )),
        }
    }
}

impl From<DiskConfig> for DiskSpec {
    fn from(disk: DiskConfig) -> DiskSpec {
        match disk {
            DiskConfig::Real => DiskSpec {
                model: "real".into(),
                syncs_per_s: None,
                latency_ms: None,
                log: None,
            },
            DiskConfig::Modelled {
                syncs_per_s,
                latency_ms,
                log,
            } => DiskSpec {
                model: "modelled".into(),
                syncs_per_s: Some(syncs_per_s),
                latency_ms: Some(latency_ms),
                log: Some(log),
            },
        }
    }
}

impl DiskConfig {
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            DiskConfig::Real => Ok(()),
            DiskConfig::Modelled {
                syncs_per_s,
                latency_ms,
                ..
            } => {
                if !(syncs_per_s.is_finite() && syncs_per_s > 0.0) {
                    return Err(format!(
                        "disk.syncs_per_s: must be a positive number, got {syncs_per_s}"
                    ));
                }
                if !(latency_ms.is_finite() && latency_ms >= 0.0) {
                    return Err(format!(
                        "disk.latency_ms: must be zero or more, got {latency_ms}"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The model's name as reports and `/status` show it.
    pub fn name(&self) -> &'static str {
        match self {
            DiskConfig::Real => "real",
            DiskConfig::Modelled { .. } => "modelled",
        }
    }
}

/// Listen addresses. Port 0 picks a free port; the chosen ports are reported on start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub imap: SocketAddr,
    /// The admin API. Loopback unless told otherwise: it controls faults and shows internals.
    pub admin: SocketAddr,
    /// Node-to-node traffic (membership, and later replication).
    pub peer: SocketAddr,
}

/// How this node finds and forms a cluster with the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Every node of the cluster, this one included, with its peer address. Empty: a cluster of
    /// this node alone.
    pub peers: Vec<Peer>,
    /// Buckets of the user map.
    pub buckets: u32,
    /// Copies of every message, on distinct nodes.
    pub replication: u32,
    /// Soft limit on the nodes one mailbox spreads over (dynamic placement).
    pub spread: u32,
    /// Where new messages go: dynamic (spread and load), random, or static (home node).
    pub placement: crate::mail::Placement,
    /// UIDVALIDITY every node reports, so a mailbox looks the same through any node. 0: this
    /// node's own (from its data directory), which suits a node alone.
    pub uid_validity: u32,
    /// Timers of the membership protocol.
    pub membership: crate::core::membership::Config,
    /// How long after every replica has an expunge its tombstones are retired (longer than a
    /// replica push can still be on its way).
    pub tombstone_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u32,
    /// `ip:port` or `hostname:port` (resolved again at every connection attempt, so a peer
    /// that comes back at another address, as a Kubernetes pod does, is found).
    pub addr: String,
}

/// Longest peer address.
pub const PEER_ADDR_BYTES_MAX: usize = 255;

/// Node ids are limited so that a node id fits in the low bits of a cluster-wide UID.
pub const NODE_ID_MAX: u32 = 63;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            peers: Vec::new(),
            buckets: crate::mail::usermap::BUCKETS_DEFAULT,
            replication: 1,
            spread: 2,
            placement: Default::default(),
            uid_validity: 0,
            membership: Default::default(),
            tombstone_grace_ms: 60_000,
        }
    }
}

impl ClusterConfig {
    /// Every node id of the cluster (just `own` when no peers are configured).
    pub fn ids(&self, own: u32) -> std::collections::BTreeSet<u32> {
        let mut ids: std::collections::BTreeSet<u32> = self.peers.iter().map(|p| p.id).collect();
        ids.insert(own);
        ids
    }

    fn validate(&self, own: u32) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 || p.id > NODE_ID_MAX {
                return Err(format!(
                    "cluster.peers: node id {} is outside 1..={NODE_ID_MAX}",
                    p.id
                ));
            }
            if !seen.insert(p.id) {
                return Err(format!("cluster.peers: node id {} is listed twice", p.id));
            }
            let port_ok = p
                .addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok || p.addr.len() > PEER_ADDR_BYTES_MAX {
                return Err(format!(
                    "cluster.peers: node {}'s addr {:?} is not host:port",
                    p.id, p.addr
                ));
            }
        }
        if !self.peers.is_empty() && !seen.contains(&own) {
            return Err(format!("cluster.peers: does not list this node (id {own})"));
        }
        if self.buckets == 0 || self.buckets > crate::mail::usermap::BUCKETS_MAX {
            return Err(format!(
                "cluster.buckets: must be between 1 and {}, got {}",
                crate::mail::usermap::BUCKETS_MAX,
                self.buckets
            ));
        }
        let nodes = self.peers.len().max(1) as u32;
        if self.replication == 0 || self.replication > nodes {
            return Err(format!(
                "cluster.replication: must be between 1 and the number of nodes ({nodes}), got {}",
                self.replication
            ));
        }
        if self.spread == 0 {
            return Err("cluster.spread: must be at least 1".into());
        }
        self.membership.validate().map_err(|e| e.to_string())
    }
}

/// The provisioned user population: `pattern` with `{n}` replaced by `first..first+count`, all
/// sharing one password. A range rather than a list, so a million users cost nothing until they
/// receive mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Users {
    pub pattern: String,
    pub first: u64,
    pub count: u64,
    pub password: String,
}

/// Limits on everything a client can make a node hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest protocol line (command or message text line) including CRLF, SMTP and POP3.
    pub line_bytes_max: usize,
    /// Longest IMAP command line including CRLF (literals apart): long UID sets need room.
    pub imap_line_bytes_max: usize,
    /// Largest message accepted by SMTP DATA or IMAP APPEND (advertised as SIZE).
    pub message_bytes_max: usize,
    /// Largest IMAP literal a client may send.
    pub literal_bytes_max: usize,
    /// What all clients together may make the node buffer at once (SMTP DATA, IMAP literals);
    /// over it, clients get a temporary failure (SMTP 452, IMAP NO [INUSE]).
    pub buffered_bytes_max: usize,
    /// Recipients per SMTP transaction.
    pub recipients_max: usize,
    /// Open client connections, all protocols together.
    pub connections_max: usize,
    /// A session that sends nothing for this long is closed with the protocol's goodbye.
    pub idle_timeout_s: u64,
    /// Bad commands tolerated in one session before it is closed.
    pub errors_per_session_max: u32,
    /// Mailbox size a session will list (messages); larger mailboxes show their oldest this many.
    pub mailbox_messages_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            data_dir: PathBuf::from("clusterbench-data/node1"),
            domain: "example.test".to_string(),
            hostname: "localhost".to_string(),
            admin_token: String::new(),
            listen: Listen::default(),
            users: Users::default(),
            limits: Limits::default(),
            disk: DiskConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Listen {
            smtp: any,
            pop3: any,
            imap: any,
            admin: any,
            peer: any,
        }
    }
}

impl Default for Users {
    fn default() -> Self {
        Users {
            pattern: "user{n}".to_string(),
            first: 0,
            count: 100,
            password: "password".to_string(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            line_bytes_max: 8 * 1024,
            imap_line_bytes_max: 64 * 1024,
            message_bytes_max: 10 * 1024 * 1024,
            literal_bytes_max: 10 * 1024 * 1024,
            buffered_bytes_max: 512 * 1024 * 1024,
            recipients_max: 100,
            connections_max: 1024,
            idle_timeout_s: 300,
            errors_per_session_max: 20,
            mailbox_messages_max: 100_000,
        }
    }
}

impl NodeConfig {
    /// Parses a TOML node configuration, naming any unknown or mistyped key.
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, patterns, and relations between limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 || self.id > NODE_ID_MAX {
            return Err(format!(
                "id: node ids run from 1 to {NODE_ID_MAX}, got {}",
                self.id
            ));
        }
        self.cluster.validate(self.id)?;
        if self.domain.is_empty() || self.domain.contains(['@', ' ']) {
            return Err(format!("domain: {:?} is not a mail domain", self.domain));
        }
        if !self.users.pattern.contains("{n}") {
            return Err(format!(
                "users.pattern: {:?} must contain {{n}}, e.g. \"user{{n}}\"",
                self.users.pattern
            ));
        }
        self.disk.validate()?;
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.store.segment_bytes) {
            return Err(format!(
                "store.segment_bytes: must be 65536 to 1073741824, got {}",
                self.store.segment_bytes
            ));
        }
        let l = &self.limits;
        if l.imap_line_bytes_max < 1002 || l.imap_line_bytes_max > 16 * 1024 * 1024 {
            return Err("limits.imap_line_bytes_max: must be 1002 to 16777216".into());
        }
        if l.line_bytes_max < 1002 {
            return Err(
                "limits.line_bytes_max: must be at least 1002 (RFC 5321 text line plus CRLF)"
                    .into(),
            );
        }
        if l.buffered_bytes_max < 2 * l.message_bytes_max.max(l.literal_bytes_max) {
            return Err(format!(
                "limits.buffered_bytes_max: must hold two of the largest message or literal (at least {})",
                2 * l.message_bytes_max.max(l.literal_bytes_max)
            ));
        }
        if l.message_bytes_max == 0 || l.literal_bytes_max == 0 {
            return Err("limits: message_bytes_max and literal_bytes_max must be positive".into());
        }
        if l.recipients_max == 0 || l.connections_max == 0 || l.idle_timeout_s == 0 {
            return Err(
                "limits: recipients_max, connections_max and idle_timeout_s must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Users {
    /// The user name for index `n` of the range.
    pub fn name(&self, n: u64) -> String {
        self.pattern.replace("{n}", &n.to_string())
    }

    /// Whether `name` (a local part, without domain) is one of the provisioned users.
    pub fn contains(&self, name: &str) -> bool {
        let Some((prefix, suffix)) = self.pattern.split_once("{n}") else {
            return false;
        };
        let Some(digits) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        else {
            return false;
        };
        // Reject "user007": only the canonical spelling of a number names a user.
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return false;
        }
        match digits.parse::<u64>() {
            Ok(n) => n >= self.first && n - self.first < self.count,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::from_toml("id = 1\n[limits]\nline_max = 5\n").unwrap_err();
        assert!(err.contains("line_max"), "{err}");
    }

    #[test]
    fn disk_models_parse_and_validate() {
        let c = NodeConfig::from_toml(
            "[disk]\nmodel = \"modelled\"\nsyncs_per_s = 200\nlatency_ms = 5\n",
        )
        .unwrap();
        assert_eq!(
            c.disk,
            DiskConfig::Modelled {
                syncs_per_s: 200.0,
                latency_ms: 5.0,
                log: LogDevice::Nvram,
            }
        );
        let c = NodeConfig::from_toml(
            "[disk]\nmodel = \"modelled\"\nsyncs_per_s = 200\nlog = \"disk\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.disk,
            DiskConfig::Modelled {
                log: LogDevice::Disk,
                ..
            }
        ));
        let err = NodeConfig::from_toml("[disk]\nmodel = \"real\"\nlog = \"disk\"\n").unwrap_err();
        assert!(err.contains("log"), "{err}");
        assert_eq!(NodeConfig::from_toml("").unwrap().disk, DiskConfig::Real);
        let err = NodeConfig::from_toml(
            "[disk]\nmodel = \"modelled\"\nsyncs_per_s = 0\nlatency_ms = 5\n",
        )
        .unwrap_err();
        assert!(err.contains("syncs_per_s"), "{err}");
        let err = NodeConfig::from_toml("[disk]\nmodel = \"floppy\"\n").unwrap_err();
        assert!(err.contains("floppy"), "{err}");
        let err = NodeConfig::from_toml("[disk]\nmodel = \"real\"\nsyncs_per_s = 3\n").unwrap_err();
        assert!(err.contains("syncs_per_s"), "{err}");
    }

    #[test]
    fn user_range_membership() {
        let users = Users {
            pattern: "user{n}".into(),
            first: 10,
            count: 5,
            password: "p".into(),
        };
        assert!(users.contains("user10"));
        assert!(users.contains("user14"));
        assert!(!users.contains("user15"));
        assert!(!users.contains("user9"));
        assert!(!users.contains("user012"));
        assert!(!users.contains("userx"));
        assert!(!users.contains("bob"));
        assert_eq!(users.name(12), "user12");
    }
}
