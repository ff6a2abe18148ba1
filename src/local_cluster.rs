//! A cluster of local node processes, as `cluster up` and `run` start it: N children running
//! `clusterbench node`, each in `DIR/nodeI/` (its `node.toml`, mail log and `node.log`), described
//! in `DIR/cluster.json`. Nodes can be killed, paused, resumed and restarted with real signals
//! (what failure injection needs), and are stopped cleanly (SIGTERM, then SIGKILL).
//!
//! Starting again on the same DIR reuses the stored mail, users, password, admin token and
//! UIDVALIDITY.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cluster::mail::config::{NodeConfig, Users};
use cluster::mail::node::Endpoints;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::node_cmd::READY_PREFIX;

/// Nodes one `cluster up` will start at most (each is a process with five listeners); node ids
/// must fit the cluster's id range.
pub const NODES_MAX: u32 = cluster::mail::config::NODE_ID_MAX;
/// How long a node may take to open its store and bind its listeners.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long nodes get to stop after SIGTERM before they are killed.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The contents of `DIR/cluster.json`: everything a client needs to reach the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    pub domain: String,
    pub admin_token: String,
    pub users: UsersInfo,
    /// UIDVALIDITY of every mailbox on every node; kept across restarts of the cluster.
    #[serde(default)]
    pub uid_validity: u32,
    pub replication: u32,
    pub spread: u32,
    pub placement: cluster::mail::Placement,
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsersInfo {
    pub count: u64,
    pub pattern: String,
    pub first: u64,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u32,
    pub pid: u32,
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub imap: SocketAddr,
    pub admin: SocketAddr,
    /// Node-to-node address (absent for a one-node cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Tries at starting a cluster whose free ports were taken in the meantime.
pub const PORT_RACE_ATTEMPTS: u32 = 3;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: u32,
    pub dir: PathBuf,
    /// Overrides of what `DIR/cluster.json` holds from an earlier start (or the defaults).
    pub users: Option<u64>,
    pub password: Option<String>,
    pub domain: Option<String>,
    pub base_port: Option<u16>,
    pub host: IpAddr,
    /// Every node starts from this configuration (limits, disk, membership timings, ...).
    pub template: NodeConfig,
    pub replication: Option<u32>,
    pub spread: Option<u32>,
    pub placement: Option<cluster::mail::Placement>,
}

/// A running local cluster.
pub struct LocalCluster {
    pub file: ClusterFile,
    pub dir: PathBuf,
    configs: std::collections::BTreeMap<u32, NodeConfig>,
    running: std::collections::BTreeSet<u32>,
    exits_tx: mpsc::Sender<(u32, String)>,
    exits: mpsc::Receiver<(u32, String)>,
}

impl LocalCluster {
    /// The node's current entry in `cluster.json`.
    pub fn node(&self, id: u32) -> Option<&NodeInfo> {
        self.file.nodes.iter().find(|n| n.id == id)
    }

    /// Sends a signal to a node that is running (SIGKILL, SIGSTOP, SIGCONT, ...).
    pub fn signal(&mut self, id: u32, sig: libc::c_int) -> anyhow::Result<()> {
        self.reap();
        if !self.running.contains(&id) {
            bail!("node {id} is not running");
        }
        let pid = self.node(id).map(|n| n.pid).context("no such node")?;
        signal(pid, sig);
        Ok(())
    }

    /// Starts a node that is not running, from its configuration (same data, same peer port).
    pub async fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.reap();
        if self.running.contains(&id) {
            bail!("node {id} is still running");
        }
        let config = self.configs.get(&id).context("no such node")?.clone();
        let info = start_node(&config, self.exits_tx.clone()).await?;
        self.running.insert(id);
        for n in &mut self.file.nodes {
            if n.id == id {
                *n = info.clone();
            }
        }
        self.write_file()
    }

    /// Node ids running now.
    pub fn running(&mut self) -> std::collections::BTreeSet<u32> {
        self.reap();
        self.running.clone()
    }

    /// Notes nodes that have exited; returns (id, how) for each.
    pub fn reap(&mut self) -> Vec<(u32, String)> {
        let mut gone = Vec::new();
        while let Ok((id, how)) = self.exits.try_recv() {
            self.running.remove(&id);
            gone.push((id, how));
        }
        gone
    }

    /// Waits for the next node to exit.
    pub async fn next_exit(&mut self) -> Option<(u32, String)> {
        let (id, how) = self.exits.recv().await?;
        self.running.remove(&id);
        Some((id, how))
    }

    /// Stops every running node (SIGCONT first, in case one is paused).
    pub async fn stop(mut self) {
        self.reap();
        let nodes: Vec<NodeInfo> = self
            .file
            .nodes
            .iter()
            .filter(|n| self.running.contains(&n.id))
            .cloned()
            .collect();
        for n in &nodes {
            signal(n.pid, libc::SIGCONT);
        }
        stop_nodes(&nodes, &mut self.exits).await;
    }

    fn write_file(&self) -> anyhow::Result<()> {
        write_atomically(
            &self.dir.join("cluster.json"),
            serde_json::to_string_pretty(&self.file)?.as_bytes(),
        )
    }

    /// Starts the cluster and writes `DIR/cluster.json`.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        // Free ports are picked before the nodes bind them; another process (a node's own
        // outgoing connection, say) can take one in between. With ports picked for us, that
        // is worth another try with new ones.
        let mut attempt = 1;
        loop {
            match LocalCluster::start_once(spec.clone()).await {
                Err(e)
                    if spec.base_port.is_none()
                        && attempt < PORT_RACE_ATTEMPTS
                        && format!("{e:#}").contains("in use") =>
                {
                    eprintln!("a port was taken while the cluster started ({e:#}); trying again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        let args = &spec;
        let template = spec.template.clone();
        if args.nodes == 0 || args.nodes > NODES_MAX {
            bail!(
                "--nodes must be between 1 and {NODES_MAX}, got {}",
                args.nodes
            );
        }
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let dir = args
            .dir
            .canonicalize()
            .with_context(|| format!("resolving {}", args.dir.display()))?;
        let cluster_json = dir.join("cluster.json");
        let previous = read_previous(&cluster_json)?;
        let domain = args
            .domain
            .clone()
            .or_else(|| previous.as_ref().map(|p| p.domain.clone()))
            .unwrap_or_else(|| template.domain.clone());
        let admin_token = previous
            .as_ref()
            .map(|p| p.admin_token.clone())
            .unwrap_or_else(random_token);
        let users = Users {
            pattern: previous
                .as_ref()
                .map(|p| p.users.pattern.clone())
                .unwrap_or_else(|| template.users.pattern.clone()),
            first: previous
                .as_ref()
                .map(|p| p.users.first)
                .unwrap_or(template.users.first),
            count: args
                .users
                .or_else(|| previous.as_ref().map(|p| p.users.count))
                .unwrap_or(template.users.count),
            password: args
                .password
                .clone()
                .or_else(|| previous.as_ref().map(|p| p.users.password.clone()))
                .unwrap_or_else(|| template.users.password.clone()),
        };

        let peers = peer_addresses(args.host, args.base_port, args.nodes)?;
        let uid_validity = previous
            .as_ref()
            .map(|p| p.uid_validity)
            .filter(|&v| v != 0)
            .unwrap_or_else(|| (chrono_now_s() as u32).max(1));
        let mut cluster_settings = template.cluster.clone();
        if let Some(r) = args.replication {
            cluster_settings.replication = r;
        }
        if let Some(s) = args.spread {
            cluster_settings.spread = s;
        }
        if let Some(p) = args.placement {
            cluster_settings.placement = p;
        }
        cluster_settings.uid_validity = uid_validity;
        if cluster_settings.replication == 0 || cluster_settings.replication > args.nodes {
            bail!(
                "--replication must be between 1 and the number of nodes ({}), got {}",
                args.nodes,
                cluster_settings.replication
            );
        }
        let (exits_tx, mut exits) = mpsc::channel::<(u32, String)>(NODES_MAX as usize);
        let mut nodes = Vec::new();
        let mut configs = std::collections::BTreeMap::new();
        for id in 1..=args.nodes {
            let mut config = template.clone();
            config.id = id;
            config.data_dir = dir.join(format!("node{id}"));
            config.domain = domain.clone();
            config.admin_token = admin_token.clone();
            config.users = users.clone();
            config.cluster = cluster_settings.clone();
            config.listen = listen_for(args.host, args.base_port, id)?;
            if let Some(peer) = peers.iter().find(|p| p.id == id) {
                config.listen.peer = peer
                    .addr
                    .parse()
                    .with_context(|| format!("node {id}'s peer address {}", peer.addr))?;
            }
            config.cluster.peers = peers.clone();
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("node {id}: invalid configuration: {e}"))?;
            let started = start_node(&config, exits_tx.clone()).await;
            configs.insert(id, config);
            match started {
                Ok(info) => nodes.push(info),
                Err(e) => {
                    stop_nodes(&nodes, &mut exits).await;
                    return Err(e);
                }
            }
        }
        let file = ClusterFile {
            domain: domain.clone(),
            admin_token,
            users: UsersInfo {
                count: users.count,
                pattern: users.pattern.clone(),
                first: users.first,
                password: users.password.clone(),
            },
            uid_validity,
            replication: cluster_settings.replication,
            spread: cluster_settings.spread,
            placement: cluster_settings.placement,
            nodes: nodes.clone(),
        };
        let running = nodes.iter().map(|n| n.id).collect();
        let cluster = LocalCluster {
            file,
            dir,
            configs,
            running,
            exits_tx,
            exits,
        };
        cluster.write_file()?;
        Ok(cluster)
    }
}

fn read_previous(path: &Path) -> anyhow::Result<Option<ClusterFile>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!(
                "{} exists but is not a cluster file; remove it or use another --dir",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn chrono_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
}

pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Ports per node with `--base-port`: SMTP, POP3, IMAP, admin, peer.
const PORTS_PER_NODE: u32 = 5;

/// The peer address of every node. Nodes must know each other's before any starts, so with free
/// ports they are picked here (bound, noted, released) rather than by the nodes.
fn peer_addresses(
    host: IpAddr,
    base_port: Option<u16>,
    nodes: u32,
) -> anyhow::Result<Vec<cluster::mail::config::Peer>> {
    if nodes < 2 {
        return Ok(Vec::new());
    }
    if let Some(base) = base_port {
        return (1..=nodes)
            .map(|id| {
                let p =
                    u16::try_from(base as u32 + PORTS_PER_NODE * (id - 1) + 4).map_err(|_| {
                        anyhow::anyhow!("--base-port {base} leaves no room for node {id}'s ports")
                    })?;
                Ok(cluster::mail::config::Peer {
                    id,
                    addr: SocketAddr::new(host, p).to_string(),
                })
            })
            .collect();
    }
    // Hold every listener until all are chosen, so no two nodes get the same port.
    let listeners = (0..nodes)
        .map(|_| std::net::TcpListener::bind(SocketAddr::new(host, 0)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("finding free peer ports on {host}"))?;
    listeners
        .iter()
        .zip(1..)
        .map(|(l, id)| {
            Ok(cluster::mail::config::Peer {
                id,
                addr: l.local_addr()?.to_string(),
            })
        })
        .collect()
}

fn listen_for(
    host: IpAddr,
    base_port: Option<u16>,
    id: u32,
) -> anyhow::Result<cluster::mail::config::Listen> {
    let port = |k: u32| -> anyhow::Result<u16> {
        match base_port {
            None => Ok(0),
            Some(base) => {
                let p = base as u32 + PORTS_PER_NODE * (id - 1) + k;
                u16::try_from(p).map_err(|_| {
                    anyhow::anyhow!("--base-port {base} leaves no room for node {id}'s ports")
                })
            }
        }
    };
    Ok(cluster::mail::config::Listen {
        smtp: SocketAddr::new(host, port(0)?),
        pop3: SocketAddr::new(host, port(1)?),
        imap: SocketAddr::new(host, port(2)?),
        admin: SocketAddr::new(host, port(3)?),
        peer: SocketAddr::new(host, port(4)?),
    })
}

/// Writes the node's configuration, spawns `clusterbench node`, and waits for its READY line.
async fn start_node(
    config: &NodeConfig,
    exits: mpsc::Sender<(u32, String)>,
) -> anyhow::Result<NodeInfo> {
    let id = config.id;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let config_path = config.data_dir.join("node.toml");
    write_atomically(&config_path, toml::to_string(config)?.as_bytes())?;
    restrict_permissions(&config_path)?;
    let log_path = config.data_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = tokio::process::Command::new(own_executable()?);
    command
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // Nodes never outlive a killed `cluster up`.
    die_with_parent(&mut command);
    let mut child = command.spawn().context("spawning a node process")?;
    let pid = child.id().context("node process has no pid")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(NODE_START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix(READY_PREFIX) {
                return Ok::<_, anyhow::Error>(Some(serde_json::from_str::<Endpoints>(json)?));
            }
        }
        Ok(None)
    })
    .await;
    let endpoints = match ready {
        Ok(Ok(Some(e))) => e,
        other => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let why = match other {
                Err(_) => format!("did not start within {:?}", NODE_START_TIMEOUT),
                Ok(Err(e)) => format!("failed: {e}"),
                _ => "exited before it was ready".to_string(),
            };
            bail!(
                "node {id} {why}. Last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 15)
            );
        }
    };
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => describe_exit(s),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let _ = exits.send((id, status)).await;
    });
    Ok(NodeInfo {
        id,
        pid,
        smtp: endpoints.smtp,
        pop3: endpoints.pop3,
        imap: endpoints.imap,
        admin: endpoints.admin,
        peer: endpoints.peer,
        data_dir: config.data_dir.clone(),
        log: log_path,
    })
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// SIGTERM to every node of `nodes` (all still running), then SIGKILL to any still running after
/// [`NODE_STOP_TIMEOUT`].
async fn stop_nodes(nodes: &[NodeInfo], exits: &mut mpsc::Receiver<(u32, String)>) {
    let mut running: Vec<u32> = nodes.iter().map(|n| n.id).collect();
    for n in nodes {
        signal(n.pid, libc::SIGTERM);
    }
    let deadline = tokio::time::sleep(NODE_STOP_TIMEOUT);
    tokio::pin!(deadline);
    while !running.is_empty() {
        tokio::select! {
            Some((id, _)) = exits.recv() => running.retain(|&r| r != id),
            _ = &mut deadline => break,
            else => break,
        }
    }
    for n in nodes.iter().filter(|n| running.contains(&n.id)) {
        eprintln!("node {} did not stop in time; killing it", n.id);
        signal(n.pid, libc::SIGKILL);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned; at worst the process is already gone (ESRCH).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

pub fn print_summary(file: &ClusterFile, path: &Path) {
    let u = &file.users;
    println!(
        "clusterbench cluster: {} node(s), replication {}, {} placement (spread {}), domain {}, users {}..{} (password {:?})",
        file.nodes.len(),
        file.replication,
        file.placement.name(),
        file.spread,
        file.domain,
        u.pattern.replace("{n}", &u.first.to_string()),
        u.pattern
            .replace("{n}", &(u.first + u.count.saturating_sub(1)).to_string()),
        u.password,
    );
    for n in &file.nodes {
        println!(
            "  node {}  pid {}  smtp {}  pop3 {}  imap {}  admin http://{}",
            n.id, n.pid, n.smtp, n.pop3, n.imap, n.admin
        );
    }
    println!(
        "Wrote {} (admin token inside). Press Ctrl-C to stop.",
        path.display()
    );
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn restrict_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting permissions of {}", path.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asks the kernel to SIGTERM the child `command` starts when this process dies, so nodes and
/// agents never outlive a killed supervisor or run.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// This very executable, to start nodes and agents with: `/proc/self/exe` where there is one
/// (it still runs if the file was replaced, say by a rebuild, during a long sweep), else the
/// path it was started from.
pub fn own_executable() -> anyhow::Result<std::path::PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe().context("finding the clusterbench executable")
}
