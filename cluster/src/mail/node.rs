//! One node: opens the store, binds the SMTP, POP3, IMAP and admin listeners, serves until told
//! to stop, then lets sessions finish their current command and exits.
//!
//! Connections are capped per node by one semaphore shared by all protocols; a connection over
//! the cap gets the protocol's "busy" reply and is closed, so the node never holds more sessions
//! than configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::core::faults::FaultSwitch;
use crate::core::peering::{self, PeeringConfig};
use crate::mail::config::NodeConfig;
use crate::mail::directory::Directory;
use crate::mail::metrics::Metrics;
use crate::mail::store::Store;
use crate::mail::usermap::UserMap;
use crate::mail::MailView;
use crate::mail::{admin, imap, pop3, smtp};
use crate::mail::{MailConfig, MailService};

/// Messages for the mail service waiting to be handled, at most.
pub const MAIL_INBOUND_MAX: usize = 4096;

/// How long sessions get to finish their current command after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every session and the admin API share.
pub struct Context {
    pub config: NodeConfig,
    pub directory: Directory,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    pub faults: Arc<FaultSwitch>,
    /// The membership view this node is in, kept current by the peering driver.
    pub view: watch::Receiver<MailView>,
    /// The cluster-wide mailboxes the front ends serve (this node's store is one fragment).
    pub mail: Arc<MailService>,
    /// Which messages IMAP sessions of this node have been told of (`\Recent`).
    pub recent: crate::mail::imap::RecentClaims,
    /// IMAP folder-list entries this node has read (they never change).
    pub folder_entries: crate::mail::imap::EntryCache,
    /// What clients may make this node buffer, all together (`limits.buffered_bytes_max`).
    pub buffers: Arc<crate::core::budget::Budget>,
}

/// A client connection as every front end reads and writes it.
pub type ClientConn =
    crate::core::conn::Conn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

/// Wraps an accepted client connection with the node's line limit, idle timeout and shutdown.
pub fn client_conn(stream: TcpStream, ctx: &Context) -> ClientConn {
    client_conn_with(stream, ctx, ctx.config.limits.line_bytes_max)
}

/// [`client_conn`] with lines up to `line_bytes_max`.
pub fn client_conn_with(stream: TcpStream, ctx: &Context, line_bytes_max: usize) -> ClientConn {
    let limits = &ctx.config.limits;
    let (r, w) = stream.into_split();
    crate::core::conn::Conn::new(
        r,
        w,
        line_bytes_max,
        Duration::from_secs(limits.idle_timeout_s),
        ctx.shutdown.clone(),
    )
}

/// The addresses a running node listens on.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub imap: SocketAddr,
    pub admin: SocketAddr,
    /// Node-to-node address; absent for a node with no peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
    Imap,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
        }
    }

    /// What a client over the connection limit is told before the connection closes.
    fn busy_reply(self) -> &'static [u8] {
        match self {
            Protocol::Smtp => b"421 4.3.2 Too many connections, try again later\r\n",
            Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        }
    }
}

/// A node that is serving.
pub struct RunningNode {
    pub endpoints: Endpoints,
    pub context: Arc<Context>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Opens the store and binds every listener; serving starts at once.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid node configuration: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    let data_dir = config.data_dir.clone();
    let store_metrics = metrics.clone();
    let disk = config.disk.clone();
    let node_id = config.id;
    let options = config.store;
    let store = tokio::task::spawn_blocking(move || {
        Store::open(&data_dir, node_id, disk, options, store_metrics)
    })
    .await?
    .with_context(|| format!("opening the mail store in {}", config.data_dir.display()))?;
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} listener to {addr}"))
    };
    let smtp_l = bind(config.listen.smtp, "SMTP").await?;
    let pop3_l = bind(config.listen.pop3, "POP3").await?;
    let imap_l = bind(config.listen.imap, "IMAP").await?;
    let admin_l = bind(config.listen.admin, "admin").await?;
    let peer_l = if config.cluster.peers.is_empty() {
        None
    } else {
        Some(bind(config.listen.peer, "peer").await?)
    };
    let endpoints = Endpoints {
        smtp: smtp_l.local_addr()?,
        pop3: pop3_l.local_addr()?,
        imap: imap_l.local_addr()?,
        admin: admin_l.local_addr()?,
        peer: peer_l.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    let (stop, shutdown) = watch::channel(false);
    let faults = Arc::new(FaultSwitch::default());
    let (mail_tx, mail_rx) = tokio::sync::mpsc::channel(MAIL_INBOUND_MAX);
    let buckets = config.cluster.buckets;
    let peering = peering::start(
        PeeringConfig {
            id: config.id,
            ids: config.cluster.ids(config.id),
            peers: config
                .cluster
                .peers
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect(),
            membership: config.cluster.membership.clone(),
            secret: config.admin_token.clone(),
            frame_bytes_max: config.limits.message_bytes_max + 64 * 1024,
        },
        peer_l,
        faults.clone(),
        metrics.transport(),
        mail_tx,
        move |view| UserMap::compute(&view.members, buckets),
        shutdown.clone(),
    );
    let mail = MailService::start(
        store.clone(),
        peering.view.clone(),
        peering.transport.clone(),
        MailConfig {
            id: config.id,
            replication: config.cluster.replication as usize,
            spread: config.cluster.spread as usize,
            placement: config.cluster.placement,
            all: config.cluster.ids(config.id),
            uid_validity: match config.cluster.uid_validity {
                0 => store.uid_validity(),
                v => v,
            },
            tombstone_grace: std::time::Duration::from_millis(config.cluster.tombstone_grace_ms),
        },
        faults.clone(),
        mail_rx,
        shutdown.clone(),
    );
    let limits_buffered = config.limits.buffered_bytes_max;
    let context = Arc::new(Context {
        faults,
        mail,
        view: peering.view,
        directory: Directory::new(&config.domain, config.users.clone())
            .with_profiles(store.clone()),
        config,
        store,
        metrics,
        shutdown,
        started: Instant::now(),
        recent: Default::default(),
        folder_entries: Default::default(),
        buffers: crate::core::budget::Budget::new(limits_buffered),
    });
    let limit = Arc::new(Semaphore::new(context.config.limits.connections_max));
    let mut tasks = JoinSet::new();
    for (listener, protocol) in [
        (smtp_l, Protocol::Smtp),
        (pop3_l, Protocol::Pop3),
        (imap_l, Protocol::Imap),
    ] {
        tasks.spawn(accept_loop(
            listener,
            protocol,
            context.clone(),
            limit.clone(),
        ));
    }
    tasks.spawn(admin::serve(admin_l, context.clone(), endpoints));
    tracing::info!(id = context.config.id, ?endpoints, "node is serving");
    Ok(RunningNode {
        endpoints,
        context,
        stop,
        tasks,
    })
}

impl RunningNode {
    /// Signals every session to finish and waits (at most [`SHUTDOWN_GRACE`]) for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => {
                    tracing::warn!("sessions still open after the shutdown grace period; closing them");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    protocol: Protocol,
    ctx: Arc<Context>,
    limit: Arc<Semaphore>,
) {
    let label = Metrics::protocol(protocol.name());
    let mut sessions = JoinSet::new();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            // Reap finished sessions so the set does not grow without bound.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(protocol = protocol.name(), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        ctx.metrics.connections_total.get_or_create(&label).inc();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics
                .connections_refused_total
                .get_or_create(&label)
                .inc();
            sessions.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(protocol.busy_reply()),
                )
                .await;
            });
            continue;
        };
        let ctx = ctx.clone();
        sessions.spawn(async move {
            let open = ctx.metrics.connections_open.get_or_create(&label).clone();
            open.inc();
            let result = serve(protocol, stream, peer, ctx.clone()).await;
            open.dec();
            drop(permit);
            if let Err(e) = result {
                tracing::debug!(protocol = protocol.name(), %peer, "session ended with an error: {e}");
            }
        });
    }
    // Shutdown: sessions see the same signal and end after their current command.
    while sessions.join_next().await.is_some() {}
}

async fn serve(
    protocol: Protocol,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
) -> std::io::Result<()> {
    match protocol {
        Protocol::Smtp => smtp::serve(stream, peer, ctx).await,
        Protocol::Pop3 => pop3::serve(stream, peer, ctx).await,
        Protocol::Imap => imap::serve(stream, peer, ctx).await,
    }
}
