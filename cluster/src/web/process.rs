//! What every web process has besides its role: who it is, the cluster's configuration, its
//! fault switch, an HTTP client, the latest beacon from the manager (and so where the manager is),
//! its admin API (the core routes plus `/status` and its role's routes), and, for processes that
//! report their load, the report loop.
//!
//! Beacons and reports are soft state over UDP: a lost one is replaced by the next, and an injected
//! `beacon_loss` drops that share of both. Nothing here blocks a client's request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use super::config::WebConfig;
use super::http::Client;
use super::proto::{Beacon, Endpoints, ProcessKey, Report, DATAGRAM_BYTES_MAX};
use crate::core::admin::AdminCore;
use crate::core::faults::FaultSwitch;

/// Who a process is and what it needs at start.
#[derive(Debug, Clone)]
pub struct ProcessArgs {
    pub config: WebConfig,
    pub key: ProcessKey,
    /// The node (host) it runs on.
    pub node: u32,
    /// The manager's report address, if the spawner knew it.
    pub manager_reports: Option<SocketAddr>,
    /// The address to bind (port 0 each).
    pub host: std::net::IpAddr,
}

/// A running process's shared state.
pub struct Process {
    pub key: ProcessKey,
    pub node: u32,
    pub config: WebConfig,
    pub faults: Arc<FaultSwitch>,
    pub client: Client,
    pub started: Instant,
    pub shutdown: watch::Receiver<bool>,
    /// The latest beacon heard (after injected losses), with when it arrived.
    beacon: watch::Sender<Option<(Arc<Beacon>, Instant)>>,
    /// Where reports go: the latest beacon's manager, else what the spawner said.
    manager_reports: Mutex<Option<SocketAddr>>,
    /// Beacons heard and lost to an injected fault.
    counters: Mutex<BeaconCounters>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct BeaconCounters {
    pub heard: u64,
    pub dropped: u64,
    pub reports_sent: u64,
}

impl Process {
    pub fn new(args: &ProcessArgs, shutdown: watch::Receiver<bool>) -> Arc<Process> {
        let (beacon, seen) = watch::channel(None::<(Arc<Beacon>, Instant)>);
        let faults = Arc::new(FaultSwitch::default());
        // A partition (`block_peers`, by node) cuts this process's calls to the processes and
        // node daemons of the nodes on the other side, known from the configuration and the
        // latest beacon.
        let cut: super::http::Cut = {
            let (faults, nodes) = (faults.clone(), args.config.nodes.clone());
            Arc::new(move |authority: &str| {
                if !faults.blocks_any() {
                    return false;
                }
                let Ok(addr) = authority.parse::<SocketAddr>() else {
                    return false;
                };
                let node = nodes
                    .iter()
                    .find(|n| n.addr.parse::<SocketAddr>().ok() == Some(addr))
                    .map(|n| n.id)
                    .or_else(|| seen.borrow().as_ref().and_then(|(b, _)| node_of(b, addr)));
                node.is_some_and(|n| faults.blocks(n))
            })
        };
        Arc::new(Process {
            key: args.key,
            node: args.node,
            config: args.config.clone(),
            faults,
            client: Client::new().with_cut(cut),
            started: Instant::now(),
            shutdown,
            beacon,
            manager_reports: Mutex::new(args.manager_reports),
            counters: Mutex::new(BeaconCounters::default()),
        })
    }

    /// The latest beacon and its age.
    pub fn beacon(&self) -> Option<(Arc<Beacon>, Duration)> {
        self.beacon
            .borrow()
            .as_ref()
            .map(|(b, at)| (b.clone(), at.elapsed()))
    }

    /// Wakes when a beacon arrives.
    pub fn subscribe(&self) -> watch::Receiver<Option<(Arc<Beacon>, Instant)>> {
        self.beacon.subscribe()
    }

    pub fn counters(&self) -> BeaconCounters {
        *self.counters.lock().unwrap()
    }

    pub fn manager_reports(&self) -> Option<SocketAddr> {
        *self.manager_reports.lock().unwrap()
    }

    /// The admin core for this process: the cluster's token and this process's faults, with
    /// `metrics` as its Prometheus text.
    pub fn admin_core(&self, metrics: Arc<dyn Fn() -> String + Send + Sync>) -> AdminCore {
        AdminCore {
            token: self.config.admin_token.clone(),
            faults: self.faults.clone(),
            on_faults: Arc::new(|_| {}),
            metrics,
        }
    }

    /// Serves the admin API: the core routes and `role_routes` (state applied).
    pub fn serve_admin(
        self: &Arc<Self>,
        listener: TcpListener,
        role_routes: Router,
        metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ) {
        let app = crate::core::admin::router(self.admin_core(metrics), role_routes);
        tokio::spawn(crate::core::admin::serve(
            listener,
            app,
            self.shutdown.clone(),
        ));
    }

    /// Listens for beacons on `socket` until shutdown.
    pub fn listen_beacons(self: &Arc<Self>, socket: Arc<UdpSocket>) {
        let process = self.clone();
        tokio::spawn(async move {
            let mut shutdown = process.shutdown.clone();
            let mut buf = vec![0u8; DATAGRAM_BYTES_MAX + 1];
            loop {
                let received = tokio::select! {
                    r = socket.recv_from(&mut buf) => r,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let Ok((n, _from)) = received else { continue };
                if n > DATAGRAM_BYTES_MAX {
                    continue;
                }
                let Ok(beacon) = serde_json::from_slice::<Beacon>(&buf[..n]) else {
                    tracing::debug!("a datagram that is not a beacon, ignored");
                    continue;
                };
                if process.faults.loses_beacon(rand::random::<f64>())
                    || process.faults.blocks(beacon.manager_node)
                {
                    process.counters.lock().unwrap().dropped += 1;
                    continue;
                }
                process.counters.lock().unwrap().heard += 1;
                *process.manager_reports.lock().unwrap() = beacon.manager.beacons;
                process
                    .beacon
                    .send_replace(Some((Arc::new(beacon), Instant::now())));
            }
        });
    }

    /// Sends `report()` to the manager every report interval, from `socket`, until shutdown.
    pub fn report_loop(
        self: &Arc<Self>,
        socket: Arc<UdpSocket>,
        report: impl Fn() -> Report + Send + 'static,
    ) {
        let process = self.clone();
        let every = Duration::from_millis(self.config.manager.report_interval_ms);
        tokio::spawn(async move {
            let mut shutdown = process.shutdown.clone();
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let Some(to) = process.manager_reports() else {
                    continue;
                };
                // Across a partition from the manager's node, reports are lost.
                let manager_node = process.beacon().map(|(b, _)| b.manager_node);
                if manager_node.is_some_and(|n| process.faults.blocks(n)) {
                    continue;
                }
                if let Some(bytes) = super::proto::to_datagram(&report()) {
                    if send_datagram(&process.faults, &socket, bytes, to) {
                        process.counters.lock().unwrap().reports_sent += 1;
                    }
                }
            }
        });
    }

    /// A report skeleton for this process.
    pub fn report(&self, endpoints: Endpoints) -> Report {
        Report {
            key: self.key,
            node: self.node,
            endpoints,
            queue: 0,
            completed: 0,
            refused: 0,
            degraded: 0,
        }
    }
}

/// The node of the process at `addr`, as `beacon` says (the manager, a worker, or another
/// process, by any of its endpoints).
pub fn node_of(beacon: &Beacon, addr: SocketAddr) -> Option<u32> {
    let at = |e: &Endpoints| e.admin == addr || e.http == Some(addr) || e.beacons == Some(addr);
    if at(&beacon.manager) {
        return Some(beacon.manager_node);
    }
    beacon
        .workers
        .iter()
        .find(|w| w.addr == addr)
        .map(|w| w.node)
        .or_else(|| {
            beacon
                .others
                .iter()
                .find(|o| at(&o.endpoints))
                .map(|o| o.node)
        })
}

/// Sends a beacon or report through the fault layer: dropped at the `loss` and `beacon_loss`
/// rates, held `delay_ms` (in the background). Whether it went.
pub fn send_datagram(
    faults: &Arc<FaultSwitch>,
    socket: &Arc<UdpSocket>,
    bytes: Vec<u8>,
    to: SocketAddr,
) -> bool {
    if faults.loses(rand::random::<f64>()) || faults.loses_beacon(rand::random::<f64>()) {
        return false;
    }
    let delay = faults.delay();
    let socket = socket.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let _ = socket.send_to(&bytes, to).await;
    });
    true
}

/// A process's listeners, bound on any free port of its host: the admin API always, a service
/// port and a UDP socket for beacons (or reports) when the role has them.
pub struct Bound {
    pub admin: TcpListener,
    pub http: Option<TcpListener>,
    pub beacons: Option<Arc<UdpSocket>>,
    pub endpoints: Endpoints,
}

impl Bound {
    pub async fn new(
        host: std::net::IpAddr,
        http: Option<&str>,
        udp: Option<&str>,
    ) -> anyhow::Result<Bound> {
        let admin = bind_tcp(host, "admin").await?;
        let http = match http {
            Some(what) => Some(bind_tcp(host, what).await?),
            None => None,
        };
        let beacons = match udp {
            Some(what) => Some(bind_udp(host, what).await?),
            None => None,
        };
        let endpoints = Endpoints {
            admin: admin.local_addr()?,
            http: http.as_ref().map(TcpListener::local_addr).transpose()?,
            beacons: beacons.as_ref().map(|b| b.local_addr()).transpose()?,
        };
        Ok(Bound {
            admin,
            http,
            beacons,
            endpoints,
        })
    }
}

/// Binds a TCP listener on `host`, any port.
pub async fn bind_tcp(host: std::net::IpAddr, what: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind((host, 0))
        .await
        .with_context(|| format!("binding the {what} listener on {host}"))
}

/// Binds a UDP socket on `host`, any port.
pub async fn bind_udp(host: std::net::IpAddr, what: &str) -> anyhow::Result<Arc<UdpSocket>> {
    use anyhow::Context as _;
    Ok(Arc::new(UdpSocket::bind((host, 0)).await.with_context(
        || format!("binding the {what} socket on {host}"),
    )?))
}

/// The `/status` fields every process shares.
#[derive(Debug, serde::Serialize)]
pub struct CommonStatus {
    pub key: ProcessKey,
    pub node: u32,
    pub uptime_s: f64,
    pub faults: crate::core::faults::Faults,
    pub manager_reports: Option<SocketAddr>,
    /// Age of the latest beacon heard.
    pub beacon_age_ms: Option<u64>,
    pub beacon_seq: Option<u64>,
    pub beacons: BeaconCounters,
}

impl Process {
    pub fn common_status(&self) -> CommonStatus {
        let beacon = self.beacon();
        CommonStatus {
            key: self.key,
            node: self.node,
            uptime_s: self.started.elapsed().as_secs_f64(),
            faults: self.faults.get(),
            manager_reports: self.manager_reports(),
            beacon_age_ms: beacon.as_ref().map(|(_, age)| age.as_millis() as u64),
            beacon_seq: beacon.as_ref().map(|(b, _)| b.seq),
            beacons: self.counters(),
        }
    }
}
