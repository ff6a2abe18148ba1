//! The node daemon: one per host of the web cluster, the hands of the manager (and of front ends
//! restarting a dead manager). It starts a process of any role on request, waits for its READY
//! line, lists what runs on its host, stops processes, and the moment a child exits it tells the
//! manager, so a restart does not wait for a missed report. Its children die with it (as a
//! host's processes die with the host).
//!
//! API (admin, bearer token): `GET /processes[?manager=ADDR]` (the children; `manager` says where
//! to send exit events), `POST /spawn` ([`SpawnRequest`]: answered with the [`RunningProcess`]
//! once it is ready; 409 if that process already runs here), `DELETE /processes/SLUG` (SIGTERM,
//! then SIGKILL after a grace period), `GET /status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::config::WebConfig;
use super::http::Client;
use super::proto::{Endpoints, ProcessExited, ProcessKey, Role, RunningProcess, SpawnRequest};
use crate::core::admin::{bad_request, AdminCore};
use crate::core::faults::FaultSwitch;

/// How long a spawned process may take to print its READY line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Most processes one node daemon runs.
pub const CHILDREN_MAX: usize = 512;
/// Longest READY line read.
const READY_LINE_BYTES_MAX: usize = 4096;

/// How to start children: this executable, with the cluster's configuration file.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub executable: PathBuf,
    pub config_path: PathBuf,
    /// Where each child's log goes (`DIR/SLUG.log`).
    pub log_dir: PathBuf,
    /// The address children bind and announce (this host's, reachable by the other nodes).
    pub host: std::net::IpAddr,
}

struct Child {
    running: RunningProcess,
}

struct NodeState {
    id: u32,
    config: WebConfig,
    launcher: Launcher,
    children: Mutex<BTreeMap<ProcessKey, Child>>,
    /// Keys being started (a second spawn of one is refused while the first is under way).
    starting: Mutex<std::collections::BTreeSet<ProcessKey>>,
    /// The manager's admin address, for exit events.
    manager: Mutex<Option<SocketAddr>>,
    client: Client,
}

/// Serves the node daemon on `listener` until `shutdown`; its children are stopped with it.
/// With `start_manager`, it starts a manager on itself at once unless one already runs
/// somewhere (how a cluster boots without a supervisor, as on Kubernetes).
pub async fn serve(
    id: u32,
    config: WebConfig,
    launcher: Launcher,
    listener: tokio::net::TcpListener,
    start_manager: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let state = Arc::new(NodeState {
        id,
        config: config.clone(),
        launcher,
        children: Mutex::new(BTreeMap::new()),
        starting: Mutex::new(Default::default()),
        manager: Mutex::new(None),
        client: Client::new(),
    });
    let core = AdminCore {
        token: config.admin_token.clone(),
        faults: Arc::new(FaultSwitch::default()),
        on_faults: Arc::new(|_| {}),
        metrics: Arc::new(|| "# EOF\n".into()),
    };
    if start_manager {
        let state = state.clone();
        tokio::spawn(async move { boot_manager(&state).await });
    }
    let routes = Router::new()
        .route("/processes", get(list))
        .route("/processes/{slug}", delete(stop))
        .route("/spawn", post(spawn))
        .route("/status", get(status))
        .with_state(state.clone());
    crate::core::admin::serve(listener, crate::core::admin::router(core, routes), shutdown).await;
    // Children go down with their node.
    let pids: Vec<u32> = state
        .children
        .lock()
        .unwrap()
        .values()
        .map(|c| c.running.pid)
        .collect();
    for pid in pids {
        signal(pid, libc::SIGTERM);
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    manager: Option<SocketAddr>,
}

async fn list(
    State(state): State<Arc<NodeState>>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<RunningProcess>> {
    if let Some(m) = q.manager {
        *state.manager.lock().unwrap() = Some(m);
    }
    Json(
        state
            .children
            .lock()
            .unwrap()
            .values()
            .map(|c| c.running.clone())
            .collect(),
    )
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<serde_json::Value> {
    let children: Vec<RunningProcess> = state
        .children
        .lock()
        .unwrap()
        .values()
        .map(|c| c.running.clone())
        .collect();
    Json(serde_json::json!({
        "node": state.id,
        "overflow": state.config.nodes.iter().any(|n| n.id == state.id && n.overflow),
        "manager": *state.manager.lock().unwrap(),
        "processes": children,
    }))
}

async fn spawn(State(state): State<Arc<NodeState>>, body: axum::body::Bytes) -> Response {
    let request: SpawnRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid spawn request: {e}")),
    };
    let key = request.key;
    {
        let children = state.children.lock().unwrap();
        if children.contains_key(&key) {
            return (
                StatusCode::CONFLICT,
                Json(serde_json::json!({"error": format!("{key} already runs on node {}", state.id)})),
            )
                .into_response();
        }
        if children.len() >= CHILDREN_MAX {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": format!("node {} runs {CHILDREN_MAX} processes already", state.id)})),
            )
                .into_response();
        }
    }
    if !state.starting.lock().unwrap().insert(key) {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": format!("{key} is being started on node {}", state.id)})),
        )
            .into_response();
    }
    let result = start_child(&state, &request).await;
    state.starting.lock().unwrap().remove(&key);
    match result {
        Ok(running) => Json(running).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": format!("starting {key}: {e:#}")})),
        )
            .into_response(),
    }
}

/// Starts a child, waits for its READY line, and watches it until it exits.
async fn start_child(
    state: &Arc<NodeState>,
    request: &SpawnRequest,
) -> anyhow::Result<RunningProcess> {
    use anyhow::Context as _;
    let key = request.key;
    let l = &state.launcher;
    std::fs::create_dir_all(&l.log_dir)
        .with_context(|| format!("creating {}", l.log_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log_dir.join(format!("{}.log", key.slug())))
        .context("opening the process log")?;
    let mut command = tokio::process::Command::new(&l.executable);
    command
        .arg("web")
        .arg(key.role.command())
        .arg("--config")
        .arg(&l.config_path)
        .arg("--id")
        .arg(key.id.to_string())
        .arg("--node")
        .arg(state.id.to_string())
        .arg("--host")
        .arg(l.host.to_string());
    if let Role::Worker(class) = key.role {
        command.arg("--class").arg(class.name());
    }
    if let Some(m) = request.manager_reports {
        command.arg("--manager-reports").arg(m.to_string());
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(false);
    die_with_parent(&mut command);
    let mut child = command.spawn().context("spawning the process")?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            line.clear();
            let n = (&mut lines)
                .take(READY_LINE_BYTES_MAX as u64)
                .read_line(&mut line)
                .await?;
            if n == 0 {
                anyhow::bail!("it exited before it was ready (see its log)");
            }
            if let Some(json) = line.trim().strip_prefix("READY ") {
                return Ok(serde_json::from_str::<Endpoints>(json)?);
            }
        }
    })
    .await;
    let endpoints = match ready {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            let _ = child.start_kill();
            return Err(e);
        }
        Err(_) => {
            let _ = child.start_kill();
            anyhow::bail!("not ready within {READY_TIMEOUT:?}");
        }
    };
    let running = RunningProcess {
        key,
        node: state.id,
        pid,
        endpoints,
        started_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    state.children.lock().unwrap().insert(
        key,
        Child {
            running: running.clone(),
        },
    );
    tracing::info!(%key, pid, "started");
    // Watch it: on exit, forget it and tell the manager at once.
    let watcher = state.clone();
    tokio::spawn(async move {
        // Keep reading stdout so the child never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut lines, &mut sink).await;
        });
        let status = child.wait().await;
        drain.abort();
        let status = match status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("unknown ({e})"),
        };
        let removed = {
            let mut children = watcher.children.lock().unwrap();
            match children.get(&key) {
                Some(c) if c.running.pid == pid => children.remove(&key).is_some(),
                _ => false,
            }
        };
        tracing::warn!(%key, pid, %status, "exited");
        if removed {
            notify_exit(&watcher, key, pid, status).await;
        }
    });
    Ok(running)
}

/// Starts the manager here unless a node daemon already runs one; retried until one runs (the
/// other nodes may not be up yet).
async fn boot_manager(state: &Arc<NodeState>) {
    // One node boots it: the lowest id (every node may be told to, as a StatefulSet's pods are).
    if state.config.nodes.iter().map(|n| n.id).min() != Some(state.id) {
        return;
    }
    for _ in 0..BOOT_ATTEMPTS_MAX {
        let mut running = false;
        for n in state.config.nodes.iter().filter(|n| n.id != state.id) {
            let url = format!("http://{}/processes", n.addr);
            if let Ok(list) = state
                .client
                .get_json::<Vec<RunningProcess>>(
                    &url,
                    &state.config.admin_token,
                    Duration::from_secs(1),
                )
                .await
            {
                running |= list.iter().any(|p| p.key == ProcessKey::MANAGER);
            }
        }
        running |= state
            .children
            .lock()
            .unwrap()
            .contains_key(&ProcessKey::MANAGER);
        if running {
            return;
        }
        let request = SpawnRequest {
            key: ProcessKey::MANAGER,
            manager_reports: None,
        };
        if state.starting.lock().unwrap().insert(ProcessKey::MANAGER) {
            let started = start_child(state, &request).await;
            state.starting.lock().unwrap().remove(&ProcessKey::MANAGER);
            match started {
                Ok(_) => return,
                Err(e) => tracing::warn!("starting the manager: {e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Attempts to boot a manager before giving up (front ends restart one anyway).
const BOOT_ATTEMPTS_MAX: u32 = 60;

async fn notify_exit(state: &NodeState, key: ProcessKey, pid: u32, status: String) {
    let Some(manager) = *state.manager.lock().unwrap() else {
        return;
    };
    if key == ProcessKey::MANAGER {
        return;
    }
    let event = ProcessExited {
        key,
        node: state.id,
        pid,
        status,
    };
    let url = format!("http://{manager}/events");
    let _: Result<serde_json::Value, _> = state
        .client
        .send_json(
            hyper::Method::POST,
            &url,
            &state.config.admin_token,
            &event,
            Duration::from_secs(2),
        )
        .await;
}

async fn stop(State(state): State<Arc<NodeState>>, Path(slug): Path<String>) -> Response {
    let key: ProcessKey = match slug.parse() {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    let child = state.children.lock().unwrap().remove(&key);
    match child {
        Some(c) => {
            let pid = c.running.pid;
            signal(pid, libc::SIGTERM);
            tokio::spawn(async move {
                tokio::time::sleep(STOP_GRACE).await;
                signal(pid, libc::SIGKILL);
            });
            Json(serde_json::json!({"stopped": key, "pid": pid})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("{key} does not run on node {}", state.id)})),
        )
            .into_response(),
    }
}

fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid this daemon started; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// Asks the kernel to SIGKILL the child when this daemon dies, so no process outlives its node.
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe; the closure runs between fork and exec and touches
    // nothing else.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
