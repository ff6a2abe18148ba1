//! `LocalWebCluster`: the web cluster on this machine — a bundled origin (unless the cluster is
//! given origins), one node daemon per node (`clusterbench web node`; overflow nodes marked), and
//! the manager, which the first node daemon starts and which then starts everything else. The
//! nodes share this machine; each is a host in name, its processes its own.
//!
//! Writes `DIR/web.toml` (the cluster's configuration, read by every process) and `DIR/cluster.json`
//! (every process with its role, node and endpoints). Every child gets a parent-death signal, so
//! nothing outlives this supervisor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cluster::web::config::{NodeEntry, WebConfig};
use cluster::web::http::Client;
use cluster::web::proto::{Endpoints, ProcessKey, RunningProcess, SpawnRequest};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::local_cluster::{die_with_parent, own_executable, write_atomically};

/// How long the whole cluster may take to reach its configured shape.
pub const WEB_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one process may take to print READY.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct WebClusterSpec {
    pub dir: PathBuf,
    /// Dedicated nodes.
    pub nodes: u32,
    /// Overflow nodes (recruited only while the dedicated ones are saturated).
    pub overflow_nodes: u32,
    pub host: std::net::IpAddr,
    /// The settings every process starts from (nodes, origins and token are filled in).
    pub template: WebConfig,
    /// The bundled origin, when the template names no origins.
    pub origin: OriginSpec,
    /// A trace whose URLs the bundled origin serves, with the sizes it logged (besides its
    /// corpus).
    pub origin_trace: Option<PathBuf>,
}

/// The bundled origin's corpus.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OriginSpec {
    pub seed: u64,
    pub objects: u32,
    pub delay_ms: u64,
}

/// `DIR/cluster.json` of a web cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebClusterFile {
    pub service: String,
    pub admin_token: String,
    pub config: PathBuf,
    /// The origins the front ends fetch from (`host:port`).
    pub origins: Vec<String>,
    /// The bundled origin, if one was started.
    pub bundled_origin: Option<BundledOrigin>,
    pub nodes: Vec<NodeInfo>,
    pub processes: Vec<RunningProcess>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundledOrigin {
    pub http: SocketAddr,
    pub pid: u32,
    #[serde(flatten)]
    pub corpus: OriginSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u32,
    pub addr: SocketAddr,
    pub overflow: bool,
    pub pid: u32,
}

pub struct LocalWebCluster {
    pub dir: PathBuf,
    pub config: WebConfig,
    pub file: WebClusterFile,
    origin: Option<Child>,
    nodes: Vec<(u32, Child)>,
    client: Client,
}

impl LocalWebCluster {
    pub async fn start(spec: WebClusterSpec) -> anyhow::Result<LocalWebCluster> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let dir = spec.dir.canonicalize()?;
        let exe = own_executable()?;
        let mut config = spec.template.clone();
        config.admin_token = crate::local_cluster::random_token();
        config.data_dir = dir.join("data");
        // The bundled origin, unless the cluster was given origins.
        let mut origin_child = None;
        let mut bundled = None;
        if config.origins.is_empty() {
            let mut command = Command::new(&exe);
            command
                .arg("origin")
                .arg("--listen")
                .arg(format!("{}:0", spec.host))
                .arg("--seed")
                .arg(spec.origin.seed.to_string())
                .arg("--objects")
                .arg(spec.origin.objects.to_string())
                .arg("--delay-ms")
                .arg(spec.origin.delay_ms.to_string());
            if let Some(trace) = &spec.origin_trace {
                command.arg("--trace").arg(trace);
            }
            let (child, ready) = spawn_ready(command, &dir.join("origin.log")).await?;
            let http: SocketAddr = serde_json::from_value(ready["http"].clone())
                .context("the origin's READY line has no http address")?;
            config.origins.push(http.to_string());
            bundled = Some(BundledOrigin {
                http,
                pid: child.id().unwrap_or(0),
                corpus: spec.origin,
            });
            origin_child = Some(child);
        }
        // Node daemons on ports chosen now (they must be in web.toml before any starts).
        let total = spec.nodes + spec.overflow_nodes;
        anyhow::ensure!(
            spec.nodes >= 1,
            "a web cluster needs at least one dedicated node"
        );
        let mut entries = Vec::new();
        for id in 1..=total {
            let port = free_port(spec.host)?;
            entries.push(NodeEntry {
                id,
                addr: format!("{}:{port}", spec.host),
                overflow: id > spec.nodes,
            });
        }
        config.nodes = entries;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("the web configuration: {e}"))?;
        let config_path = dir.join("web.toml");
        write_atomically(&config_path, config.to_toml().as_bytes())?;
        let mut nodes = Vec::new();
        let mut infos = Vec::new();
        for n in &config.nodes {
            let mut command = Command::new(&exe);
            command
                .arg("web")
                .arg("node")
                .arg("--config")
                .arg(&config_path)
                .arg("--id")
                .arg(n.id.to_string())
                .arg("--host")
                .arg(spec.host.to_string());
            let (child, ready) =
                spawn_ready(command, &dir.join(format!("node{}.log", n.id))).await?;
            let addr: SocketAddr = serde_json::from_value(ready["admin"].clone())
                .context("a node daemon's READY line has no address")?;
            infos.push(NodeInfo {
                id: n.id,
                addr,
                overflow: n.overflow,
                pid: child.id().unwrap_or(0),
            });
            nodes.push((n.id, child));
        }
        let client = Client::new();
        // The first node starts the manager; the manager starts the rest.
        let first = &infos[0];
        let _: RunningProcess = client
            .send_json(
                cluster::web::http::Method::POST,
                &format!("http://{}/spawn", first.addr),
                &config.admin_token,
                &SpawnRequest {
                    key: ProcessKey::MANAGER,
                    manager_reports: None,
                },
                Duration::from_secs(35),
            )
            .await
            .map_err(|e| anyhow::anyhow!("starting the manager: {e}"))?;
        let mut cluster = LocalWebCluster {
            dir: dir.clone(),
            file: WebClusterFile {
                service: "web".into(),
                admin_token: config.admin_token.clone(),
                config: config_path,
                origins: config.origins.clone(),
                bundled_origin: bundled,
                nodes: infos,
                processes: Vec::new(),
            },
            config,
            origin: origin_child,
            nodes,
            client,
        };
        cluster.wait_ready(WEB_READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until every configured process runs and the front ends hear beacons.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.manager_status().await;
            if let Some(s) = &status {
                let desired = s["desired"].as_array().map_or(0, Vec::len);
                let running: Vec<RunningProcess> =
                    serde_json::from_value(s["running"].clone()).unwrap_or_default();
                let every = s["desired"].as_array().is_some_and(|d| {
                    d.iter().all(|k| {
                        running
                            .iter()
                            .any(|r| serde_json::to_value(r.key).ok().as_ref() == Some(k))
                    })
                });
                if desired > 0 && every && self.front_ends_hear_beacons(&running).await {
                    self.refresh(running)?;
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the web cluster did not reach its configured shape within {limit:?} (see the logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn front_ends_hear_beacons(&self, running: &[RunningProcess]) -> bool {
        for r in running
            .iter()
            .filter(|r| r.key.role == cluster::web::proto::Role::FrontEnd)
        {
            let url = format!("http://{}/status", r.endpoints.admin);
            let heard: Option<serde_json::Value> = self
                .client
                .get_json(&url, &self.config.admin_token, Duration::from_secs(2))
                .await
                .ok();
            let workers = heard
                .as_ref()
                .and_then(|s| s["workers"].as_array().map(Vec::len))
                .unwrap_or(0);
            if workers == 0 {
                return false;
            }
        }
        true
    }

    /// The manager's `/status`, found through the node daemons.
    pub async fn manager_status(&self) -> Option<serde_json::Value> {
        let manager = self.find(ProcessKey::MANAGER).await?;
        let url = format!("http://{}/status", manager.endpoints.admin);
        self.client
            .get_json(&url, &self.config.admin_token, Duration::from_secs(2))
            .await
            .ok()
    }

    /// Where `key` runs now, asking every node daemon.
    pub async fn find(&self, key: ProcessKey) -> Option<RunningProcess> {
        self.processes().await.into_iter().find(|p| p.key == key)
    }

    /// Every process the node daemons run.
    pub async fn processes(&self) -> Vec<RunningProcess> {
        let mut all = Vec::new();
        for n in &self.file.nodes {
            let url = format!("http://{}/processes", n.addr);
            if let Ok(list) = self
                .client
                .get_json::<Vec<RunningProcess>>(
                    &url,
                    &self.config.admin_token,
                    Duration::from_secs(2),
                )
                .await
            {
                all.extend(list);
            }
        }
        all
    }

    /// Rewrites `cluster.json` with `processes` (and the manager).
    pub fn refresh(&mut self, mut processes: Vec<RunningProcess>) -> anyhow::Result<()> {
        processes.sort_by_key(|p| p.key);
        self.file.processes = processes;
        write_atomically(
            &self.dir.join("cluster.json"),
            serde_json::to_string_pretty(&self.file)?.as_bytes(),
        )
    }

    /// Signals one node daemon's process (and so, by parent death, everything on the node).
    pub fn node_pid(&self, id: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|(n, _)| *n == id)
            .and_then(|(_, c)| c.id())
    }

    /// Stops everything: node daemons (their processes die with them), then the origin.
    pub async fn stop(mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for (_, child) in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
        if let Some(mut origin) = self.origin.take() {
            let _ = origin.start_kill();
            let _ = origin.wait().await;
        }
    }
}

/// Spawns `command`, its stderr to `log`, and reads its READY line.
async fn spawn_ready(
    mut command: Command,
    log: &Path,
) -> anyhow::Result<(Child, serde_json::Value)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    die_with_parent(&mut command);
    let mut child = command.spawn().context("spawning a web cluster process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix("READY ") {
                return Ok(serde_json::from_str::<serde_json::Value>(json)?);
            }
        }
        anyhow::bail!("it exited before it was ready (see {})", log.display())
    })
    .await
    .map_err(|_| anyhow::anyhow!("not ready within {READY_TIMEOUT:?} (see {})", log.display()))??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, ready))
}

/// A port free now on `host` (the daemon binds it a moment later).
fn free_port(host: std::net::IpAddr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl LocalWebCluster {
    /// The endpoints of every running process of `role`, in key order.
    pub fn endpoints_of(&self, role: cluster::web::proto::Role) -> Vec<(ProcessKey, Endpoints)> {
        self.file
            .processes
            .iter()
            .filter(|p| p.key.role == role)
            .map(|p| (p.key, p.endpoints))
            .collect()
    }
}
