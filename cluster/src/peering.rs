//! The node's cluster side: the peer transport, the Wombat membership state machine driven by it
//! and by the clock, and the current view (with its user map) published to the rest of the node.
//!
//! The state machine is pure; this module is the only place that feeds it time and messages and
//! carries out what it asks (sends, timers). Everyone else reads the view through a `watch`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::faults::FaultSwitch;
use crate::membership::{self, Membership, View};
use crate::transport::{Transport, TransportConfig, TransportMetrics};
use crate::usermap::UserMap;

/// Everything nodes say to each other.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    Membership(membership::Message),
    /// Everything else belongs to the mail service (requests, responses, reports, load).
    Mail(crate::mail::wire::MailMessage),
}

/// Messages for the mail service waiting to be handled, at most.
pub const MAIL_INBOUND_MAX: usize = 4096;

/// The view this node is in, with what follows from it.
#[derive(Debug, Clone)]
pub struct ViewInfo {
    pub view: View,
    pub usermap: Arc<UserMap>,
    /// Views this node has installed since it started (the first included).
    pub changes: u64,
    /// Unix milliseconds when this view was installed.
    pub installed_at_ms: i64,
}

/// Handle to the running cluster side of a node.
pub struct Peering {
    pub view: watch::Receiver<ViewInfo>,
    pub transport: Option<Transport<PeerMessage>>,
}

/// Starts the transport (if the node has peers) and the membership driver.
pub fn start(
    config: &NodeConfig,
    listener: Option<TcpListener>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
    mail_inbound: mpsc::Sender<(u32, crate::mail::wire::MailMessage)>,
    shutdown: watch::Receiver<bool>,
) -> Peering {
    let id = config.id;
    let ids = config.cluster.ids(id);
    let buckets = config.cluster.buckets;
    let origin = Instant::now();
    let machine = Membership::new(id, ids.clone(), config.cluster.membership.clone(), 0);
    let first = ViewInfo {
        view: machine.view().clone(),
        usermap: Arc::new(UserMap::compute(&machine.view().members, buckets)),
        changes: 1,
        installed_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let (view_tx, view_rx) = watch::channel(first);
    let (transport, inbound) = match listener {
        Some(listener) if ids.len() > 1 => {
            let peers = config
                .cluster
                .peers
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect::<std::collections::BTreeMap<u32, String>>();
            let (t, rx) = Transport::start(
                TransportConfig {
                    id,
                    peers,
                    secret: config.admin_token.clone(),
                    frame_bytes_max: config.limits.message_bytes_max + 64 * 1024,
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
        Driver {
            machine,
            origin,
            buckets,
        },
        transport.clone(),
        inbound,
        mail_inbound,
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
    buckets: u32,
}

/// Runs the state machine until shutdown: messages and timer ticks in, sends and views out.
async fn drive(
    driver: Driver,
    transport: Option<Transport<PeerMessage>>,
    mut inbound: Option<mpsc::Receiver<(u32, PeerMessage)>>,
    mail_inbound: mpsc::Sender<(u32, crate::mail::wire::MailMessage)>,
    view_tx: watch::Sender<ViewInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Driver {
        mut machine,
        origin,
        buckets,
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
            let usermap = Arc::new(UserMap::compute(&view.members, buckets));
            view_tx.send_modify(|info| {
                info.view = view;
                info.usermap = usermap;
                info.changes += 1;
                info.installed_at_ms = chrono::Utc::now().timestamp_millis();
            });
        }
        let deadline = origin + Duration::from_millis(machine.next_deadline());
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => machine.tick(now_ms()),
            Some((from, msg)) = recv(&mut inbound) => match msg {
                PeerMessage::Membership(m) => machine.step(from, m, now_ms()),
                // Never wait on the mail service: membership must keep its timing under load.
                PeerMessage::Mail(m) => {
                    if mail_inbound.try_send((from, m)).is_err() {
                        tracing::debug!(from, "mail service inbound queue full; message dropped");
                    }
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn recv(
    inbound: &mut Option<mpsc::Receiver<(u32, PeerMessage)>>,
) -> Option<(u32, PeerMessage)> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Members as a sorted list, for JSON.
pub fn member_list(members: &BTreeSet<u32>) -> Vec<u32> {
    members.iter().copied().collect()
}
