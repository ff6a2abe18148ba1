//! What the web cluster's processes say to each other: who a process is ([`ProcessKey`]), where
//! it listens ([`Endpoints`]), the load reports workers and front ends send the manager, the
//! beacons the manager sends back (load hints, and where everything is), and the node daemons'
//! API bodies. Reports and beacons are soft state over UDP: lost ones are simply replaced by the
//! next. Everything is JSON, bounded by [`DATAGRAM_BYTES_MAX`] or the HTTP body limits.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest report or beacon datagram.
pub const DATAGRAM_BYTES_MAX: usize = 60 * 1024;
/// Most workers one beacon lists (it must fit a datagram).
pub const BEACON_WORKERS_MAX: usize = 200;

/// What a worker distills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerClass {
    Jpeg,
    Gif,
    Html,
    /// Fetches several back-end objects and composes one page.
    Aggregate,
}

impl WorkerClass {
    pub const ALL: [WorkerClass; 4] = [
        WorkerClass::Jpeg,
        WorkerClass::Gif,
        WorkerClass::Html,
        WorkerClass::Aggregate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Jpeg => "jpeg",
            WorkerClass::Gif => "gif",
            WorkerClass::Html => "html",
            WorkerClass::Aggregate => "aggregate",
        }
    }
}

impl FromStr for WorkerClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WorkerClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("{s:?} is not a worker class (jpeg, gif, html, aggregate)"))
    }
}

/// A process's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role", content = "class")]
pub enum Role {
    Manager,
    FrontEnd,
    Worker(WorkerClass),
    Cache,
    Profiles,
}

impl Role {
    /// The role's name on the command line (`clusterbench web ROLE`).
    pub fn command(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::FrontEnd => "front-end",
            Role::Worker(_) => "worker",
            Role::Cache => "cache",
            Role::Profiles => "profiles",
        }
    }
}

/// Who a process is: its role and its number within the role (a resource group, in Wolfpack's
/// terms: restarted in place, or failed over as a whole). Written `manager`, `profiles`,
/// `front_end 2`, `cache 0`, `worker jpeg 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessKey {
    pub role: Role,
    pub id: u32,
}

impl ProcessKey {
    pub const MANAGER: ProcessKey = ProcessKey {
        role: Role::Manager,
        id: 0,
    };
    pub const PROFILES: ProcessKey = ProcessKey {
        role: Role::Profiles,
        id: 0,
    };

    pub fn front_end(id: u32) -> ProcessKey {
        ProcessKey {
            role: Role::FrontEnd,
            id,
        }
    }

    pub fn cache(id: u32) -> ProcessKey {
        ProcessKey {
            role: Role::Cache,
            id,
        }
    }

    pub fn worker(class: WorkerClass, id: u32) -> ProcessKey {
        ProcessKey {
            role: Role::Worker(class),
            id,
        }
    }

    /// A form fit for file names and URL paths: `front_end-2`, `worker-jpeg-1`.
    pub fn slug(&self) -> String {
        self.to_string().replace(' ', "-")
    }
}

impl fmt::Display for ProcessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Manager => write!(f, "manager"),
            Role::Profiles => write!(f, "profiles"),
            Role::FrontEnd => write!(f, "front_end {}", self.id),
            Role::Cache => write!(f, "cache {}", self.id),
            Role::Worker(c) => write!(f, "worker {} {}", c.name(), self.id),
        }
    }
}

impl FromStr for ProcessKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([' ', '-']).filter(|p| !p.is_empty()).collect();
        let id = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("{s:?}: {p:?} is not a process number"))
        };
        match parts.as_slice() {
            ["manager"] => Ok(ProcessKey::MANAGER),
            ["profiles"] => Ok(ProcessKey::PROFILES),
            ["front_end", n] => Ok(ProcessKey::front_end(id(n)?)),
            ["cache", n] => Ok(ProcessKey::cache(id(n)?)),
            ["worker", class, n] => Ok(ProcessKey::worker(class.parse()?, id(n)?)),
            _ => Err(format!(
                "{s:?} is not a process: manager, profiles, front_end N, cache N, worker CLASS N"
            )),
        }
    }
}

impl Serialize for ProcessKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProcessKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a process listens: `admin` (HTTP: status, metrics, faults and its role's routes),
/// `http` (the role's service: the proxy, a worker's jobs, a cache partition), and `beacons`
/// (UDP: the manager's beacons; on the manager, the load reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub admin: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beacons: Option<SocketAddr>,
}

/// What a worker tells the manager every report interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub key: ProcessKey,
    pub node: u32,
    pub endpoints: Endpoints,
    /// Jobs waiting and in service.
    pub queue: u32,
    /// Jobs finished since the process started.
    pub completed: u64,
    /// Requests turned away because the queue was full, since the start.
    pub refused: u64,
    /// Front ends: originals served because no worker could distill (degradations).
    #[serde(default)]
    pub degraded: u64,
}

/// One worker as a beacon announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHint {
    pub key: ProcessKey,
    pub class: WorkerClass,
    /// Where it takes jobs.
    pub addr: SocketAddr,
    /// The node it runs on.
    #[serde(default)]
    pub node: u32,
    /// Its smoothed queue length.
    pub queue: f64,
    /// Jobs it finishes a second (smoothed).
    pub rate_per_s: f64,
    /// How old its last report was when the beacon left.
    pub report_age_ms: u64,
}

/// Where a process other than a worker can be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessHint {
    pub key: ProcessKey,
    pub node: u32,
    pub endpoints: Endpoints,
}

/// The manager's beacon: load hints and where everything is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beacon {
    /// Increases with every beacon of one manager.
    pub seq: u64,
    /// Where reports go (the manager's UDP address) and its admin API.
    pub manager: Endpoints,
    pub manager_node: u32,
    pub workers: Vec<WorkerHint>,
    /// Cache partitions, front ends and the profile database.
    pub others: Vec<ProcessHint>,
}

/// A node daemon's process, as `GET /processes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningProcess {
    pub key: ProcessKey,
    pub node: u32,
    pub pid: u32,
    pub endpoints: Endpoints,
    /// Unix milliseconds when it became ready.
    pub started_at_ms: i64,
}

/// `POST /spawn` on a node daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub key: ProcessKey,
    /// The manager's report address, when known, so the process reports at once.
    #[serde(default)]
    pub manager_reports: Option<SocketAddr>,
}

/// What a node daemon tells the manager (`POST /events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessExited {
    pub key: ProcessKey,
    pub node: u32,
    pub pid: u32,
    /// The exit status as the node daemon saw it (`signal 9`, `code 1`).
    pub status: String,
}

/// Serializes a datagram, or says it is too big.
pub fn to_datagram(value: &impl Serialize) -> Option<Vec<u8>> {
    serde_json::to_vec(value)
        .ok()
        .filter(|b| b.len() <= DATAGRAM_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_written() {
        for key in [
            ProcessKey::MANAGER,
            ProcessKey::PROFILES,
            ProcessKey::front_end(2),
            ProcessKey::cache(0),
            ProcessKey::worker(WorkerClass::Jpeg, 1),
        ] {
            assert_eq!(key.to_string().parse::<ProcessKey>(), Ok(key));
            assert_eq!(key.slug().parse::<ProcessKey>(), Ok(key));
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(serde_json::from_str::<ProcessKey>(&json).unwrap(), key);
        }
        assert!("worker png 1".parse::<ProcessKey>().is_err());
        assert!("front_end x".parse::<ProcessKey>().is_err());
        assert!("nonsense".parse::<ProcessKey>().is_err());
    }

    #[test]
    fn a_full_beacon_fits_a_datagram() {
        let worker = WorkerHint {
            key: ProcessKey::worker(WorkerClass::Aggregate, 999),
            class: WorkerClass::Aggregate,
            addr: "255.255.255.255:65535".parse().unwrap(),
            node: 63,
            queue: 12345.678,
            rate_per_s: 1234.5678,
            report_age_ms: 1_000_000,
        };
        let endpoints = Endpoints {
            admin: "255.255.255.255:65535".parse().unwrap(),
            http: Some("255.255.255.255:65535".parse().unwrap()),
            beacons: Some("255.255.255.255:65535".parse().unwrap()),
        };
        let beacon = Beacon {
            seq: u64::MAX,
            manager: endpoints,
            manager_node: 256,
            workers: vec![worker; BEACON_WORKERS_MAX],
            others: vec![
                ProcessHint {
                    key: ProcessKey::cache(999),
                    node: 256,
                    endpoints,
                };
                100
            ],
        };
        assert!(to_datagram(&beacon).is_some());
    }
}
