//! The manager: the web cluster's one centralized process (SNS's), and all of it soft state.
//!
//! - It receives every worker's and front end's load report (UDP, every report interval),
//!   smooths the workers' queue lengths, and beacons the hints — with where every worker, cache
//!   partition, front end and the profile database are — to the front ends and workers.
//! - It keeps the cluster at its desired shape: the configured front ends, cache partitions,
//!   profile database and workers per class, starting what is missing through the node daemons;
//!   when a class's average queue passes H it spawns one more worker of the class and holds off D
//!   seconds; when a class has been calm for a while it retires its extra workers (overflow nodes
//!   first). Dedicated nodes take workers up to `workers.per_node_max`; beyond them, overflow nodes.
//! - Process peers: a node daemon tells it the moment a process exits; it restarts the process in
//!   place, or, past the Wolfpack budget, on another node.
//! - Restarted itself (by a front end), it learns everything back from the node daemons' process
//!   lists and the next reports: nothing is lost with it.
//!
//! The decisions are in `policy.rs` (pure); this module does the I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::UdpSocket;

use super::config::WebConfig;
use super::policy::{self, LiveWorker, Loads, NodeSlot, Restart, Scaler, Scaling, Wolfpack};
use super::process::{Bound, Process, ProcessArgs};
use super::proto::{
    Beacon, Endpoints, ProcessExited, ProcessHint, ProcessKey, Report, Role, RunningProcess,
    SpawnRequest, WorkerClass, WorkerHint, BEACON_WORKERS_MAX, DATAGRAM_BYTES_MAX,
};
use crate::core::admin::bad_request;

/// How often the manager reconciles the cluster with its desired shape.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// A node daemon call's timeout.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A spawn's timeout (the process must print READY meanwhile).
const SPAWN_TIMEOUT: Duration = Duration::from_secs(35);
/// Events kept for `/status`'s timeline.
pub const TIMELINE_MAX: usize = 1_000;
/// A new manager waits this long for every dedicated node to answer before placing processes,
/// so that a cluster booting node by node spreads over all of them.
pub const BOOT_GRACE: Duration = Duration::from_secs(5);

/// What the manager wants running.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Desired {
    /// Spawned beyond the configured count (may be retired).
    extra: bool,
    /// The node to start it on next (set by a failure decision); else placement decides.
    node: Option<u32>,
}

/// One event of the manager's timeline, for `/status` and the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `spawn`, `exit`, `restart`, `failover`, `retire`, `overflow`, `release`, `adopt`.
    pub kind: &'static str,
    pub process: ProcessKey,
    pub node: Option<u32>,
    pub detail: String,
}

struct Manager {
    process: Arc<Process>,
    config: WebConfig,
    endpoints: Endpoints,
    desired: BTreeMap<ProcessKey, Desired>,
    running: BTreeMap<ProcessKey, RunningProcess>,
    /// Spawns under way: when they began and on which node.
    pending: HashMap<ProcessKey, (Instant, u32)>,
    /// Where each process last ran (for restarts in place).
    last_node: HashMap<ProcessKey, u32>,
    alive_nodes: BTreeSet<u32>,
    loads: Loads,
    reports: HashMap<ProcessKey, (Report, Instant)>,
    scaler: Scaler,
    wolfpack: Wolfpack,
    timeline: VecDeque<Event>,
    beacons_sent: u64,
    spawns: u64,
    restarts: u64,
    failovers: u64,
    retirements: u64,
    origin: Instant,
}

impl Manager {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn log(&mut self, kind: &'static str, process: ProcessKey, node: Option<u32>, detail: String) {
        tracing::info!(kind, %process, ?node, "{detail}");
        if self.timeline.len() >= TIMELINE_MAX {
            self.timeline.pop_front();
        }
        self.timeline.push_back(Event {
            at_ms: chrono::Utc::now().timestamp_millis(),
            kind,
            process,
            node,
            detail,
        });
    }

    fn is_overflow(&self, node: u32) -> bool {
        self.config.nodes.iter().any(|n| n.id == node && n.overflow)
    }

    /// The cluster's configured shape.
    fn configured(config: &WebConfig) -> BTreeMap<ProcessKey, Desired> {
        let base = Desired {
            extra: false,
            node: None,
        };
        let mut d = BTreeMap::new();
        d.insert(ProcessKey::PROFILES, base);
        for i in 0..config.cache.partitions {
            d.insert(ProcessKey::cache(i), base);
        }
        for i in 1..=config.front_end.count {
            d.insert(ProcessKey::front_end(i), base);
        }
        for (class, n) in &config.workers.classes {
            for i in 1..=*n {
                d.insert(ProcessKey::worker(*class, i), base);
            }
        }
        d
    }

    /// Where a new process of `key`'s kind goes.
    fn place(&self, key: ProcessKey, extra: bool) -> Option<u32> {
        let is_worker = matches!(key.role, Role::Worker(_));
        let slots: Vec<NodeSlot> = self
            .config
            .nodes
            .iter()
            .map(|n| NodeSlot {
                id: n.id,
                overflow: n.overflow,
                alive: self.alive_nodes.contains(&n.id),
                // What runs there, and what is being started there.
                count: (self
                    .running
                    .values()
                    .filter(|r| r.node == n.id)
                    .filter(|r| matches!(r.key.role, Role::Worker(_)) == is_worker)
                    .count()
                    + self
                        .pending
                        .iter()
                        .filter(|(k, (_, node))| {
                            *node == n.id && matches!(k.role, Role::Worker(_)) == is_worker
                        })
                        .count()) as u32,
            })
            .collect();
        let per_node_max = if is_worker {
            self.config.workers.per_node_max
        } else {
            u32::MAX
        };
        // Only extra workers may be placed on overflow nodes.
        policy::place(&slots, per_node_max, is_worker && extra)
    }

    /// Live nodes a failed process may go to, its own first, dedicated before overflow.
    fn candidates(&self, node: u32) -> Vec<u32> {
        let mut c: Vec<u32> = self
            .config
            .nodes
            .iter()
            .filter(|n| self.alive_nodes.contains(&n.id))
            .map(|n| n.id)
            .collect();
        c.sort_by_key(|&n| (n != node, self.is_overflow(n), n));
        c
    }

    fn beacon(&mut self) -> Beacon {
        self.beacons_sent += 1;
        let now = Instant::now();
        let mut workers = Vec::new();
        for r in self.running.values() {
            let Role::Worker(class) = r.key.role else {
                continue;
            };
            let Some(addr) = r.endpoints.http else {
                continue;
            };
            let (queue, rate, age) = match (self.loads.get(&r.key), self.reports.get(&r.key)) {
                (Some(l), Some((_, at))) => (
                    l.queue,
                    l.rate_per_s,
                    now.duration_since(*at).as_millis() as u64,
                ),
                // Not reported yet: known to be there, with an empty queue.
                _ => (0.0, 0.0, 0),
            };
            if workers.len() < BEACON_WORKERS_MAX {
                workers.push(WorkerHint {
                    key: r.key,
                    class,
                    addr,
                    node: r.node,
                    queue,
                    rate_per_s: rate,
                    report_age_ms: age,
                });
            }
        }
        let others = self
            .running
            .values()
            .filter(|r| !matches!(r.key.role, Role::Worker(_) | Role::Manager))
            .map(|r| ProcessHint {
                key: r.key,
                node: r.node,
                endpoints: r.endpoints,
            })
            .collect();
        Beacon {
            seq: self.beacons_sent,
            manager: self.endpoints,
            manager_node: self.process.node,
            workers,
            others,
        }
    }
}

type Shared = Arc<Mutex<Manager>>;

/// Starts the manager; returns where it listens.
pub async fn start(
    args: ProcessArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Endpoints> {
    let process = Process::new(&args, shutdown.clone());
    let bound = Bound::new(args.host, None, Some("reports")).await?;
    let (admin, endpoints) = (bound.admin, bound.endpoints);
    let reports = bound.beacons.expect("bound");
    let m = &args.config.manager;
    let manager = Arc::new(Mutex::new(Manager {
        process: process.clone(),
        config: args.config.clone(),
        endpoints,
        desired: Manager::configured(&args.config),
        running: BTreeMap::new(),
        pending: HashMap::new(),
        last_node: HashMap::new(),
        alive_nodes: BTreeSet::new(),
        loads: Loads::new(m.smoothing),
        reports: HashMap::new(),
        scaler: Scaler::new(m.spawn_queue_threshold, m.spawn_holdoff_s, m.retire_idle_s),
        wolfpack: Wolfpack::new(
            args.config.wolfpack.restarts_max,
            args.config.wolfpack.window_s,
        ),
        timeline: VecDeque::new(),
        beacons_sent: 0,
        spawns: 0,
        restarts: 0,
        failovers: 0,
        retirements: 0,
        origin: Instant::now(),
    }));
    tokio::spawn(receive_reports(
        manager.clone(),
        reports.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(send_beacons(manager.clone(), reports, shutdown.clone()));
    tokio::spawn(reconcile_loop(manager.clone(), shutdown.clone()));
    let routes = Router::new()
        .route("/status", get(status))
        .route("/events", post(event))
        .with_state(manager.clone());
    process.serve_admin(admin, routes, Arc::new(|| "# EOF\n".into()));
    Ok(endpoints)
}

async fn receive_reports(
    manager: Shared,
    socket: Arc<UdpSocket>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX + 1];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((n, _)) = received else { continue };
        if n > DATAGRAM_BYTES_MAX {
            continue;
        }
        let Ok(report) = serde_json::from_slice::<Report>(&buf[..n]) else {
            continue;
        };
        let mut m = manager.lock().unwrap();
        if m.process.faults.loses_beacon(rand::random::<f64>())
            || m.process.faults.blocks(report.node)
        {
            continue;
        }
        let now_ms = m.now_ms();
        if matches!(report.key.role, Role::Worker(_)) {
            m.loads
                .on_report(report.key, report.queue, report.completed, now_ms);
        }
        // A process the node daemons have not listed yet is known from its report.
        if !m.running.contains_key(&report.key) && m.desired.contains_key(&report.key) {
            let adopted = RunningProcess {
                key: report.key,
                node: report.node,
                pid: 0,
                endpoints: report.endpoints,
                started_at_ms: chrono::Utc::now().timestamp_millis(),
            };
            m.running.insert(report.key, adopted);
            m.last_node.insert(report.key, report.node);
        }
        m.reports.insert(report.key, (report, Instant::now()));
    }
}

async fn send_beacons(
    manager: Shared,
    socket: Arc<UdpSocket>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_millis(manager.lock().unwrap().config.manager.beacon_interval_ms);
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (bytes, targets, faults) = {
            let mut m = manager.lock().unwrap();
            let beacon = m.beacon();
            // Across a partition, beacons are lost.
            let targets: Vec<SocketAddr> = m
                .running
                .values()
                .filter(|r| !m.process.faults.blocks(r.node))
                .filter_map(|r| r.endpoints.beacons)
                .filter(|a| Some(*a) != m.endpoints.beacons)
                .collect();
            (
                super::proto::to_datagram(&beacon),
                targets,
                m.process.faults.clone(),
            )
        };
        let Some(bytes) = bytes else { continue };
        for to in targets {
            super::process::send_datagram(&faults, &socket, bytes.clone(), to);
        }
    }
}

async fn reconcile_loop(manager: Shared, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        reconcile(&manager).await;
    }
}

/// One round: learn what runs from the node daemons, scale, start what is missing, stop what is
/// retired.
async fn reconcile(manager: &Shared) {
    let (nodes, token, client, admin) = {
        let m = manager.lock().unwrap();
        (
            m.config.nodes.clone(),
            m.config.admin_token.clone(),
            m.process.client.clone(),
            m.endpoints.admin,
        )
    };
    let polls = nodes.into_iter().map(|n| {
        let url = format!("http://{}/processes?manager={admin}", n.addr);
        let client = client.clone();
        let token = token.clone();
        async move {
            (
                n.id,
                client
                    .get_json::<Vec<RunningProcess>>(&url, &token, NODE_CALL_TIMEOUT)
                    .await,
            )
        }
    });
    let answers = futures_join_all(polls).await;
    let mut spawns: Vec<(ProcessKey, u32, bool)> = Vec::new();
    let mut stops: Vec<(ProcessKey, u32)> = Vec::new();
    {
        let mut m = manager.lock().unwrap();
        let mut running: BTreeMap<ProcessKey, RunningProcess> = BTreeMap::new();
        let mut alive = BTreeSet::new();
        for (node, answer) in answers {
            match answer {
                Ok(list) => {
                    alive.insert(node);
                    for r in list {
                        if let Some(other) = running.get(&r.key) {
                            // Twice: a partitioned node kept running what was restarted
                            // elsewhere meanwhile. The copy where the manager put it stays.
                            let keep_other = m.last_node.get(&r.key) == Some(&other.node);
                            let (stay, go) = if keep_other {
                                (other.clone(), r)
                            } else {
                                (r, other.clone())
                            };
                            m.log(
                                "duplicate",
                                go.key,
                                Some(go.node),
                                format!("also running on node {}: stopped here", stay.node),
                            );
                            stops.push((go.key, go.node));
                            running.insert(stay.key, stay);
                            continue;
                        }
                        if !m.running.contains_key(&r.key) && !m.pending.contains_key(&r.key) {
                            m.log("adopt", r.key, Some(node), "found running".into());
                        }
                        running.insert(r.key, r);
                    }
                }
                Err(e) => {
                    if m.alive_nodes.contains(&node) {
                        m.log(
                            "node-lost",
                            ProcessKey::MANAGER,
                            Some(node),
                            format!("node daemon unreachable: {e}"),
                        );
                    }
                }
            }
        }
        // A process on a node that vanished is gone with it.
        let lost: Vec<(ProcessKey, u32)> = m
            .running
            .values()
            .filter(|r| !alive.contains(&r.node) && !running.contains_key(&r.key))
            .map(|r| (r.key, r.node))
            .collect();
        m.alive_nodes = alive;
        for (key, node) in lost {
            failed(&mut m, key, node, "its node is unreachable".into());
        }
        for r in running.values() {
            m.last_node.insert(r.key, r.node);
        }
        m.running = running;
        // Forget the loads of workers that are gone.
        let gone: Vec<ProcessKey> = m
            .reports
            .keys()
            .filter(|k| !m.running.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            m.reports.remove(&k);
            m.loads.forget(&k);
        }
        // Pending spawns time out.
        m.pending.retain(|_, (at, _)| at.elapsed() < SPAWN_TIMEOUT);

        scale(&mut m);

        let booting = m.origin.elapsed() < BOOT_GRACE
            && m.config
                .nodes
                .iter()
                .any(|n| !n.overflow && !m.alive_nodes.contains(&n.id));
        let wanted: Vec<(ProcessKey, Desired)> = if booting {
            Vec::new()
        } else {
            m.desired.iter().map(|(k, d)| (*k, *d)).collect()
        };
        for (key, d) in wanted {
            if m.running.contains_key(&key) || m.pending.contains_key(&key) {
                continue;
            }
            let node = d
                .node
                .filter(|n| m.alive_nodes.contains(n))
                .or_else(|| m.place(key, d.extra));
            let Some(node) = node else { continue };
            m.pending.insert(key, (Instant::now(), node));
            if let Some(entry) = m.desired.get_mut(&key) {
                entry.node = None;
            }
            spawns.push((key, node, d.extra));
        }
        for (key, r) in &m.running {
            if !m.desired.contains_key(key) && key.role != Role::Manager {
                stops.push((*key, r.node));
            }
        }
    }
    for (key, node) in stops {
        let url = node_url(manager, node, &format!("/processes/{}", key.slug()));
        if let Some(url) = url {
            let request = hyper::Request::delete(url)
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(super::http::Body::default());
            if let Ok(request) = request {
                let _ = client.call(request, NODE_CALL_TIMEOUT, 64 * 1024).await;
            }
        }
    }
    for (key, node, extra) in spawns {
        let manager = manager.clone();
        tokio::spawn(async move { spawn_on(&manager, key, node, extra).await });
    }
}

/// `futures::future::join_all` without the crate: polls every future to completion.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn node_url(manager: &Shared, node: u32, path: &str) -> Option<String> {
    let m = manager.lock().unwrap();
    m.config
        .nodes
        .iter()
        .find(|n| n.id == node)
        .map(|n| format!("http://{}{path}", n.addr))
}

async fn spawn_on(manager: &Shared, key: ProcessKey, node: u32, extra: bool) {
    let (client, token, reports) = {
        let m = manager.lock().unwrap();
        (
            m.process.client.clone(),
            m.config.admin_token.clone(),
            m.endpoints.beacons,
        )
    };
    let Some(url) = node_url(manager, node, "/spawn") else {
        return;
    };
    let request = SpawnRequest {
        key,
        manager_reports: reports,
    };
    let answer: Result<RunningProcess, _> = client
        .send_json(hyper::Method::POST, &url, &token, &request, SPAWN_TIMEOUT)
        .await;
    let mut m = manager.lock().unwrap();
    m.pending.remove(&key);
    match answer {
        Ok(r) => {
            m.spawns += 1;
            let overflow = m.is_overflow(node);
            m.last_node.insert(key, node);
            m.running.insert(key, r.clone());
            let kind = if overflow { "overflow" } else { "spawn" };
            m.log(
                kind,
                key,
                Some(node),
                format!(
                    "started (pid {}){}",
                    r.pid,
                    if extra { ", extra" } else { "" }
                ),
            );
        }
        Err(e) => {
            m.log("spawn-failed", key, Some(node), e.to_string());
        }
    }
}

/// A process failed: Wolfpack decides where it starts again (the next reconcile starts it).
fn failed(m: &mut Manager, key: ProcessKey, node: u32, why: String) {
    m.running.remove(&key);
    m.reports.remove(&key);
    m.loads.forget(&key);
    if !m.desired.contains_key(&key) {
        m.log("exit", key, Some(node), format!("{why} (retired)"));
        return;
    }
    let now_ms = m.now_ms();
    let candidates = m.candidates(node);
    let decision = m.wolfpack.on_failure(key, node, now_ms, &candidates);
    let (kind, target) = match decision {
        Restart::InPlace(n) => {
            m.restarts += 1;
            ("restart", Some(n))
        }
        Restart::FailOver(n) => {
            m.failovers += 1;
            ("failover", Some(n))
        }
        Restart::Nowhere => ("stranded", None),
    };
    if let Some(d) = m.desired.get_mut(&key) {
        d.node = target;
    }
    m.log(
        kind,
        key,
        target,
        format!(
            "{why} on node {node}; restarts in the window: {}",
            m.wolfpack.restarts(&key)
        ),
    );
}

/// Spawns or retires workers per class, from the smoothed loads.
fn scale(m: &mut Manager) {
    let now_ms = m.now_ms();
    let per_class_max = m.config.workers.per_class_max as usize;
    for class in WorkerClass::ALL {
        let workers: Vec<LiveWorker> = m
            .running
            .values()
            .filter(|r| r.key.role == Role::Worker(class))
            .map(|r| LiveWorker {
                key: r.key,
                queue: m.loads.get(&r.key).map_or(0.0, |l| l.queue),
                extra: m.desired.get(&r.key).is_some_and(|d| d.extra),
                overflow: m.is_overflow(r.node),
            })
            .collect();
        let count = m
            .desired
            .keys()
            .filter(|k| k.role == Role::Worker(class))
            .count();
        let next_id = m
            .desired
            .keys()
            .filter(|k| k.role == Role::Worker(class))
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            + 1;
        let room =
            count < per_class_max && m.place(ProcessKey::worker(class, next_id), true).is_some();
        match m.scaler.decide(class, &workers, room, now_ms) {
            Some(Scaling::Spawn(class)) => {
                let key = ProcessKey::worker(class, next_id);
                m.desired.insert(
                    key,
                    Desired {
                        extra: true,
                        node: None,
                    },
                );
                let average =
                    workers.iter().map(|w| w.queue).sum::<f64>() / workers.len().max(1) as f64;
                m.log(
                    "scale-up",
                    key,
                    None,
                    format!("average queue {average:.1} passed H"),
                );
            }
            Some(Scaling::Retire(key)) => {
                m.desired.remove(&key);
                m.retirements += 1;
                let node = m.running.get(&key).map(|r| r.node);
                let kind = if node.is_some_and(|n| m.is_overflow(n)) {
                    "release"
                } else {
                    "retire"
                };
                m.log(kind, key, node, "calm: an extra worker retired".into());
            }
            None => {}
        }
    }
}

async fn event(State(manager): State<Shared>, body: axum::body::Bytes) -> Response {
    let exited: ProcessExited = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return bad_request(format!("invalid event: {e}")),
    };
    let manager2 = manager.clone();
    {
        let mut m = manager.lock().unwrap();
        // Only the incarnation the manager knows of: a late event of an old one is ignored.
        let known = m
            .running
            .get(&exited.key)
            .is_some_and(|r| r.pid == exited.pid || r.pid == 0);
        if known {
            m.log(
                "exit",
                exited.key,
                Some(exited.node),
                format!("exited ({})", exited.status),
            );
            failed(
                &mut m,
                exited.key,
                exited.node,
                format!("exited ({})", exited.status),
            );
        }
    }
    // Restart at once rather than at the next round.
    tokio::spawn(async move { reconcile(&manager2).await });
    Json(serde_json::json!({"ok": true})).into_response()
}

#[derive(serde::Serialize)]
struct WorkerStatus {
    key: ProcessKey,
    node: u32,
    overflow: bool,
    queue: f64,
    rate_per_s: f64,
    reported_queue: Option<u32>,
    completed: Option<u64>,
    refused: Option<u64>,
}

async fn status(State(manager): State<Shared>) -> Json<serde_json::Value> {
    let m = manager.lock().unwrap();
    let workers: Vec<WorkerStatus> = m
        .running
        .values()
        .filter(|r| matches!(r.key.role, Role::Worker(_)))
        .map(|r| {
            let load = m.loads.get(&r.key);
            let report = m.reports.get(&r.key).map(|(rep, _)| rep);
            WorkerStatus {
                key: r.key,
                node: r.node,
                overflow: m.is_overflow(r.node),
                queue: load.map_or(0.0, |l| l.queue),
                rate_per_s: load.map_or(0.0, |l| l.rate_per_s),
                reported_queue: report.map(|r| r.queue),
                completed: report.map(|r| r.completed),
                refused: report.map(|r| r.refused),
            }
        })
        .collect();
    let degraded: u64 = m
        .reports
        .values()
        .filter(|(r, _)| r.key.role == Role::FrontEnd)
        .map(|(r, _)| r.degraded)
        .sum();
    let overflow_in_use = m.running.values().filter(|r| m.is_overflow(r.node)).count();
    Json(serde_json::json!({
        "common": m.process.common_status(),
        "endpoints": m.endpoints,
        "desired": m.desired.keys().collect::<Vec<_>>(),
        "running": m.running.values().collect::<Vec<_>>(),
        "pending": m.pending.keys().collect::<Vec<_>>(),
        "nodes_alive": m.alive_nodes,
        "workers": workers,
        "overflow_in_use": overflow_in_use,
        "degraded": degraded,
        "beacons_sent": m.beacons_sent,
        "spawns": m.spawns,
        "restarts": m.restarts,
        "failovers": m.failovers,
        "retirements": m.retirements,
        "timeline": m.timeline,
    }))
}
