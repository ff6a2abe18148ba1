//! A node's cluster side: the peer transport, the Wombat membership state machine driven by it
//! and by the clock, and the current view published to the rest of the node, with whatever the
//! service derives from a view (the mail service's user map).
//!
//! The state machine is pure; this module is the only place that feeds it time and messages and
//! carries out what it asks (sends, timers). Everyone else reads the view through a `watch`. The
//! service's own messages ride the same transport (`PeerMessage::Service`) and are handed over
//! without ever waiting: membership must keep its timing under load.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::core::faults::FaultSwitch;
use crate::core::membership::{self, Config as MembershipConfig, Membership, View};
use crate::core::transport::{Inbound, Transport, TransportConfig, TransportMetrics, Urgency};

/// Everything nodes say to each other: membership, and the service's own messages `S`.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage<S> {
    Membership(membership::Message),
    /// Everything else belongs to the service (requests, responses, reports, load).
    Service(S),
}

/// Membership takes the urgent lane: heartbeats never wait behind the service's messages.
impl<S> Urgency for PeerMessage<S> {
    fn urgent(&self) -> bool {
        matches!(self, PeerMessage::Membership(_))
    }
}

/// The view this node is in, with what the service derives from it (`D`).
#[derive(Debug, Clone)]
pub struct ViewInfo<D> {
    pub view: View,
    pub derived: Arc<D>,
    /// Views this node has installed since it started (the first included).
    pub changes: u64,
    /// Unix milliseconds when this view was installed.
    pub installed_at_ms: i64,
}

/// Handle to the running cluster side of a node.
pub struct Peering<S, D> {
    pub view: watch::Receiver<ViewInfo<D>>,
    pub transport: Option<Transport<PeerMessage<S>>>,
}

/// Who this node is and who its peers are.
#[derive(Debug, Clone)]
pub struct PeeringConfig {
    pub id: u32,
    /// Every node's id, this one's included.
    pub ids: BTreeSet<u32>,
    /// Peer id → `host:port` (resolved at every connection attempt).
    pub peers: std::collections::BTreeMap<u32, String>,
    pub membership: MembershipConfig,
    /// The secret peers prove they share when they connect.
    pub secret: String,
    /// The largest frame a peer may send.
    pub frame_bytes_max: usize,
}

/// Starts the transport (if the node has peers) and the membership driver. `derive` computes
/// what the service needs of each view (called once per view, off the service's paths);
/// `service_inbound` receives the service's messages, dropped when it is full.
pub fn start<S, D>(
    config: PeeringConfig,
    listener: Option<TcpListener>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
    service_inbound: mpsc::Sender<(u32, S)>,
    derive: impl Fn(&View) -> D + Send + 'static,
    shutdown: watch::Receiver<bool>,
) -> Peering<S, D>
where
    S: Serialize + serde::de::DeserializeOwned + Send + Sync + std::fmt::Debug + 'static,
    D: Send + Sync + 'static,
{
    let id = config.id;
    let ids = config.ids.clone();
    let origin = Instant::now();
    let machine = Membership::new(id, ids.clone(), config.membership.clone(), 0);
    let first = ViewInfo {
        view: machine.view().clone(),
        derived: Arc::new(derive(machine.view())),
        changes: 1,
        installed_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let (view_tx, view_rx) = watch::channel(first);
    let (transport, inbound) = match listener {
        Some(listener) if ids.len() > 1 => {
            let (t, rx) = Transport::start(
                TransportConfig {
                    id,
                    peers: config.peers.clone(),
                    secret: config.secret.clone(),
                    frame_bytes_max: config.frame_bytes_max,
                },
                listener,
                faults,
                metrics,
                shutdown.clone(),
            );
            (Some(t), Some(rx))
        }
        _ => (None, None),
    };
    tokio::spawn(drive(
        Driver { machine, origin },
        transport.clone(),
        inbound,
        service_inbound,
        derive,
        view_tx,
        shutdown,
    ));
    Peering {
        view: view_rx,
        transport,
    }
}

/// The state machine with the clock origin its times count from.
struct Driver {
    machine: Membership,
    origin: Instant,
}

/// Runs the state machine until shutdown: messages and timer ticks in, sends and views out.
async fn drive<S, D>(
    driver: Driver,
    transport: Option<Transport<PeerMessage<S>>>,
    mut inbound: Option<Inbound<PeerMessage<S>>>,
    service_inbound: mpsc::Sender<(u32, S)>,
    derive: impl Fn(&View) -> D,
    view_tx: watch::Sender<ViewInfo<D>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Serialize + serde::de::DeserializeOwned + Send + Sync + std::fmt::Debug + 'static,
{
    let Driver {
        mut machine,
        origin,
    } = driver;
    let now_ms = move || origin.elapsed().as_millis() as u64;
    loop {
        for (to, msg) in machine.poll_outgoing() {
            if let Some(t) = &transport {
                t.send(to, PeerMessage::Membership(msg));
            }
        }
        if let Some(view) = machine.take_view_change() {
            tracing::info!(
                epoch = view.epoch,
                leader = view.leader,
                members = ?view.members,
                "installed a new membership view"
            );
            let derived = Arc::new(derive(&view));
            view_tx.send_modify(|info| {
                info.view = view;
                info.derived = derived;
                info.changes += 1;
                info.installed_at_ms = chrono::Utc::now().timestamp_millis();
            });
        }
        let deadline = origin + Duration::from_millis(machine.next_deadline());
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => machine.tick(now_ms()),
            Some((from, msg)) = recv(&mut inbound) => match msg {
                PeerMessage::Membership(m) => machine.step(from, m, now_ms()),
                // Never wait on the service: membership must keep its timing under load.
                PeerMessage::Service(m) => {
                    if service_inbound.try_send((from, m)).is_err() {
                        tracing::debug!(from, "service inbound queue full; message dropped");
                    }
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn recv<S>(inbound: &mut Option<Inbound<PeerMessage<S>>>) -> Option<(u32, PeerMessage<S>)> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Members as a sorted list, for JSON.
pub fn member_list(members: &BTreeSet<u32>) -> Vec<u32> {
    members.iter().copied().collect()
}
