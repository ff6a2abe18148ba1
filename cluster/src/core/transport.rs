//! Node-to-node transport: two outgoing TCP connections per peer, carrying one-way messages —
//! an urgent lane for what must keep its timing (membership heartbeats and views) and a bulk
//! lane for the rest (replication, which may carry multi-megabyte messages), so a heartbeat
//! never waits behind a large frame, in a queue or on the wire. The receiving side hands urgent
//! messages over first.
//!
//! A message for a peer goes into that peer's bounded queue and is sent by the peer's link task,
//! which connects (and reconnects, with backoff) on its own; a reply, if the protocol has one,
//! travels back as another one-way message over the reverse link. When a queue is full the message
//! is dropped and counted: protocols above (membership, replication) already tolerate loss, and a
//! node never buffers without bound for a peer that is down.
//!
//! Frames are `len: u32 BE | postcard(Wire)`, at most `frame_bytes_max`. A connection starts with
//! `Hello { from, secret }`; a wrong secret or unknown id closes it. The fault layer is applied
//! here: blocked peers are cut in both directions, outgoing messages can be delayed or lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::core::faults::FaultSwitch;

/// Messages waiting for one peer at most (bulk lane).
pub const PEER_QUEUE_MAX: usize = 1024;
/// Urgent messages waiting for one peer at most.
pub const PEER_URGENT_QUEUE_MAX: usize = 256;
/// Received messages waiting for the node at most (bulk lane).
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// Received urgent messages waiting for the node at most.
pub const INBOUND_URGENT_QUEUE_MAX: usize = 1024;

/// Which lane a message takes.
pub trait Urgency {
    /// Whether the message must keep its timing under load (membership).
    fn urgent(&self) -> bool {
        false
    }
}

impl Urgency for String {}

/// The lanes, as a connection's Hello names them.
const LANE_BULK: u8 = 0;
const LANE_URGENT: u8 = 1;
/// Time allowed to connect to a peer, and to receive a connection's Hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect backoff bounds.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Version of the wire format; peers of another version are refused.
pub const WIRE_VERSION: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
enum Wire<M> {
    Hello {
        from: u32,
        secret: String,
        version: u32,
        /// [`LANE_BULK`] or [`LANE_URGENT`].
        lane: u8,
    },
    Message(M),
}

/// What peers sent, urgent messages first.
pub struct Inbound<M> {
    urgent: mpsc::Receiver<(u32, M)>,
    bulk: mpsc::Receiver<(u32, M)>,
}

impl<M> Inbound<M> {
    /// The next message, `(from, message)`: an urgent one whenever one waits.
    pub async fn recv(&mut self) -> Option<(u32, M)> {
        tokio::select! {
            biased;
            Some(m) = self.urgent.recv() => Some(m),
            Some(m) = self.bulk.recv() => Some(m),
            else => None,
        }
    }
}

/// Counters the transport keeps (registered by the node's metrics).
#[derive(Clone, Default)]
pub struct TransportMetrics {
    pub sent: Counter,
    pub received: Counter,
    pub dropped: Counter,
}

/// Handle for sending to peers; cheap to clone.
pub struct Transport<M> {
    links: BTreeMap<u32, Link<M>>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            links: self.links.clone(),
            faults: self.faults.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The sending side of one peer's link.
struct Link<M> {
    queue: mpsc::Sender<(Instant, M)>,
    urgent: mpsc::Sender<(Instant, M)>,
    /// Whether the link has a live connection now (a request to a peer that is down can then
    /// fail at once instead of waiting out its timeout).
    connected: Arc<AtomicBool>,
}

impl<M> Clone for Link<M> {
    fn clone(&self) -> Self {
        Link {
            queue: self.queue.clone(),
            urgent: self.urgent.clone(),
            connected: self.connected.clone(),
        }
    }
}

/// Which peer a link task serves.
struct Peer {
    id: u32,
    /// `host:port`, resolved at every connection attempt.
    addr: String,
    connected: Arc<AtomicBool>,
}

/// Everything the transport needs to start.
pub struct TransportConfig {
    pub id: u32,
    /// Every other node's peer address (this node's own entry, if present, is ignored).
    pub peers: BTreeMap<u32, String>,
    /// Shared by the cluster's nodes; a connection that does not present it is closed.
    pub secret: String,
    pub frame_bytes_max: usize,
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Urgency + Send + Sync + 'static,
{
    /// Starts the link tasks and the accept loop. Received messages arrive on the returned
    /// channel as `(from, message)`.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        faults: Arc<FaultSwitch>,
        metrics: TransportMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> (Transport<M>, Inbound<M>) {
        let config = Arc::new(config);
        let mut links = BTreeMap::new();
        for (&peer, addr) in &config.peers {
            if peer == config.id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let (urgent_tx, urgent_rx) = mpsc::channel(PEER_URGENT_QUEUE_MAX);
            let connected = Arc::new(AtomicBool::new(false));
            links.insert(
                peer,
                Link {
                    queue: tx,
                    urgent: urgent_tx,
                    connected: connected.clone(),
                },
            );
            for (lane, rx, connected) in [
                (LANE_BULK, rx, connected),
                (LANE_URGENT, urgent_rx, Arc::new(AtomicBool::new(false))),
            ] {
                tokio::spawn(link(
                    config.clone(),
                    Peer {
                        id: peer,
                        addr: addr.clone(),
                        connected,
                    },
                    lane,
                    rx,
                    faults.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ));
            }
        }
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
        let (urgent_tx, urgent_rx) = mpsc::channel(INBOUND_URGENT_QUEUE_MAX);
        tokio::spawn(accept(
            config,
            listener,
            Lanes {
                bulk: inbound_tx,
                urgent: urgent_tx,
            },
            faults.clone(),
            metrics.clone(),
            shutdown,
        ));
        (
            Transport {
                links,
                faults,
                metrics,
            },
            Inbound {
                urgent: urgent_rx,
                bulk: inbound_rx,
            },
        )
    }

    /// Queues `msg` for `to`. Returns false if it was dropped (unknown or blocked peer, full queue).
    pub fn send(&self, to: u32, msg: M) -> bool {
        let Some(link) = self.links.get(&to) else {
            return false;
        };
        let queue = if msg.urgent() {
            &link.urgent
        } else {
            &link.queue
        };
        if self.faults.blocks(to) || queue.try_send((Instant::now(), msg)).is_err() {
            self.metrics.dropped.inc();
            return false;
        }
        true
    }

    /// Whether the link to `to` is connected now (and not cut by a fault).
    pub fn is_connected(&self, to: u32) -> bool {
        !self.faults.blocks(to)
            && self
                .links
                .get(&to)
                .is_some_and(|l| l.connected.load(Ordering::Relaxed))
    }

    /// The peers this node can send to.
    pub fn peers(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }
}

/// Keeps a connection to one peer and sends its queue over it.
async fn link<M: Serialize>(
    config: Arc<TransportConfig>,
    target: Peer,
    lane: u8,
    mut queue: mpsc::Receiver<(Instant, M)>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let Peer {
        id: peer,
        addr,
        connected,
    } = target;
    let mut backoff = BACKOFF_MIN;
    let mut buf = Vec::new();
    'connect: loop {
        connected.store(false, Ordering::Relaxed);
        if *shutdown.borrow() {
            return;
        }
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(s)) => s,
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
        backoff = BACKOFF_MIN;
        let _ = stream.set_nodelay(true);
        // The peer never writes on this connection: a read that ends means it is gone, which
        // is noticed at once rather than at the next failed write.
        let (mut closed, write_half) = stream.into_split();
        let mut out = BufWriter::new(write_half);
        let mut probe = [0u8; 1];
        let hello: Wire<M> = Wire::Hello {
            from: config.id,
            secret: config.secret.clone(),
            version: WIRE_VERSION,
            lane,
        };
        if write_frame(&mut out, &hello, &mut buf).await.is_err() {
            continue;
        }
        connected.store(true, Ordering::Relaxed);
        loop {
            let next = tokio::select! {
                m = queue.recv() => m,
                _ = closed.read(&mut probe) => continue 'connect,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some((queued_at, msg)) = next else { return };
            if faults.blocks(peer) || faults.loses(rand::random::<f64>()) {
                metrics.dropped.inc();
                continue;
            }
            // A constant delay per link keeps messages in order and the link's throughput intact:
            // each waits only until its own due time.
            let delay = faults.delay();
            if !delay.is_zero() {
                tokio::time::sleep_until(queued_at + delay).await;
            }
            let frame = Wire::Message(msg);
            if write_frame(&mut out, &frame, &mut buf).await.is_err() {
                metrics.dropped.inc();
                continue 'connect;
            }
            metrics.sent.inc();
            if queue.is_empty() && out.flush().await.is_err() {
                continue 'connect;
            }
        }
    }
}

async fn write_frame<M: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    out: &mut BufWriter<W>,
    frame: &Wire<M>,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    let bytes = postcard::to_extend(frame, std::mem::take(buf))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    *buf = bytes;
    out.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    out.write_all(buf).await?;
    if matches!(frame, Wire::Hello { .. }) {
        out.flush().await?;
    }
    Ok(())
}

/// Where received messages go, by lane.
struct Lanes<M> {
    bulk: mpsc::Sender<(u32, M)>,
    urgent: mpsc::Sender<(u32, M)>,
}

impl<M> Clone for Lanes<M> {
    fn clone(&self) -> Self {
        Lanes {
            bulk: self.bulk.clone(),
            urgent: self.urgent.clone(),
        }
    }
}

async fn accept<M: DeserializeOwned + Send + 'static>(
    config: Arc<TransportConfig>,
    listener: TcpListener,
    inbound: Lanes<M>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let config = config.clone();
        let inbound = inbound.clone();
        let faults = faults.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(why) = receive(config, stream, inbound, faults, metrics, shutdown).await {
                tracing::debug!(%remote, "peer connection closed: {why}");
            }
        });
    }
}

/// Reads one peer connection: the Hello, then messages until it closes.
async fn receive<M: DeserializeOwned>(
    config: Arc<TransportConfig>,
    stream: TcpStream,
    lanes: Lanes<M>,
    faults: Arc<FaultSwitch>,
    metrics: TransportMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_frame::<M>(&mut reader, &mut buf, config.frame_bytes_max),
    )
    .await
    .map_err(|_| "no Hello in time".to_string())??;
    let (from, inbound) = match hello {
        Some(Wire::Hello {
            from,
            secret,
            version,
            lane,
        }) => {
            if version != WIRE_VERSION {
                return Err(format!(
                    "peer {from} speaks wire version {version}, this node {WIRE_VERSION}"
                ));
            }
            if secret != config.secret {
                return Err(format!("peer claiming id {from} presented a wrong secret"));
            }
            if !config.peers.contains_key(&from) || from == config.id {
                return Err(format!("id {from} is not a peer of this node"));
            }
            let inbound = match lane {
                LANE_BULK => lanes.bulk,
                LANE_URGENT => lanes.urgent,
                other => return Err(format!("peer {from} asked for lane {other}")),
            };
            (from, inbound)
        }
        _ => return Err("first frame was not a Hello".into()),
    };
    loop {
        let frame = tokio::select! {
            f = read_frame::<M>(&mut reader, &mut buf, config.frame_bytes_max) => f?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        match frame {
            None => return Ok(()),
            Some(Wire::Message(msg)) => {
                if faults.blocks(from) {
                    metrics.dropped.inc();
                    continue;
                }
                metrics.received.inc();
                if inbound.try_send((from, msg)).is_err() {
                    metrics.dropped.inc();
                }
            }
            Some(Wire::Hello { .. }) => return Err(format!("peer {from} sent a second Hello")),
        }
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
async fn read_frame<M: DeserializeOwned>(
    reader: &mut BufReader<TcpStream>,
    buf: &mut Vec<u8>,
    frame_bytes_max: usize,
) -> Result<Option<Wire<M>>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > frame_bytes_max {
        return Err(format!(
            "frame of {len} bytes is over the limit of {frame_bytes_max}"
        ));
    }
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(|e| e.to_string())?;
    postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| format!("undecodable frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        Transport<String>,
        Inbound<String>,
        Transport<String>,
        Inbound<String>,
        Arc<FaultSwitch>,
        watch::Sender<bool>,
    ) {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers: BTreeMap<u32, String> = [
            (1, l1.local_addr().unwrap().to_string()),
            // By name: resolved when connecting.
            (2, format!("localhost:{}", l2.local_addr().unwrap().port())),
        ]
        .into();
        let (stop, shutdown) = watch::channel(false);
        let f1 = Arc::new(FaultSwitch::default());
        let cfg = |id| TransportConfig {
            id,
            peers: peers.clone(),
            secret: "s".into(),
            frame_bytes_max: 1 << 20,
        };
        let (t1, r1) = Transport::start(
            cfg(1),
            l1,
            f1.clone(),
            TransportMetrics::default(),
            shutdown.clone(),
        );
        let (t2, r2) = Transport::start(
            cfg(2),
            l2,
            Default::default(),
            TransportMetrics::default(),
            shutdown,
        );
        (t1, r1, t2, r2, f1, stop)
    }

    async fn recv(r: &mut Inbound<String>) -> Option<(u32, String)> {
        tokio::time::timeout(Duration::from_secs(5), r.recv())
            .await
            .ok()
            .flatten()
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Lanes2 {
        Bulk(Vec<u8>),
        Urgent(u32),
    }

    impl Urgency for Lanes2 {
        fn urgent(&self) -> bool {
            matches!(self, Lanes2::Urgent(_))
        }
    }

    #[tokio::test]
    async fn urgent_messages_overtake_a_backlog_of_large_ones() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers: BTreeMap<u32, String> = [
            (1, l1.local_addr().unwrap().to_string()),
            (2, l2.local_addr().unwrap().to_string()),
        ]
        .into();
        let (_stop, shutdown) = watch::channel(false);
        let cfg = |id| TransportConfig {
            id,
            peers: peers.clone(),
            secret: "s".into(),
            frame_bytes_max: 16 << 20,
        };
        let (t1, _r1) = Transport::<Lanes2>::start(
            cfg(1),
            l1,
            Default::default(),
            TransportMetrics::default(),
            shutdown.clone(),
        );
        let (_t2, mut r2) = Transport::<Lanes2>::start(
            cfg(2),
            l2,
            Default::default(),
            TransportMetrics::default(),
            shutdown,
        );
        // Both lanes up first.
        assert!(t1.send(2, Lanes2::Urgent(0)));
        assert!(t1.send(2, Lanes2::Bulk(Vec::new())));
        let mut seen = 0;
        while seen < 2 {
            tokio::time::timeout(Duration::from_secs(5), r2.recv())
                .await
                .unwrap()
                .unwrap();
            seen += 1;
        }
        // 40 × 8 MB queued, then a heartbeat: it arrives before most of them.
        for _ in 0..40 {
            assert!(t1.send(2, Lanes2::Bulk(vec![7; 8 << 20])));
        }
        assert!(t1.send(2, Lanes2::Urgent(1)));
        let mut bulk_before = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), r2.recv())
                .await
                .unwrap()
                .unwrap()
            {
                (1, Lanes2::Urgent(1)) => break,
                (1, Lanes2::Bulk(_)) => bulk_before += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            bulk_before < 40,
            "the heartbeat waited behind all {bulk_before} large messages"
        );
    }

    #[tokio::test]
    async fn messages_flow_both_ways_in_order() {
        let (t1, _r1, t2, mut r2, _f, _stop) = pair().await;
        for i in 0..100 {
            assert!(t1.send(2, format!("m{i}")));
        }
        for i in 0..100 {
            assert_eq!(recv(&mut r2).await, Some((1, format!("m{i}"))));
        }
        assert!(!t2.send(3, "nobody".into()), "unknown peer");
    }

    #[tokio::test]
    async fn blocking_a_peer_cuts_both_directions_and_clearing_restores() {
        let (t1, mut r1, t2, mut r2, f1, _stop) = pair().await;
        assert!(t1.send(2, "before".into()));
        assert_eq!(recv(&mut r2).await, Some((1, "before".into())));
        f1.set(crate::core::faults::Faults {
            block_peers: [2].into(),
            ..Default::default()
        });
        assert!(!t1.send(2, "blocked out".into()));
        t2.send(1, "blocked in".into());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), r1.recv())
                .await
                .is_err(),
            "a blocked peer's message arrived"
        );
        f1.set(Default::default());
        t2.send(1, "after".into());
        assert_eq!(recv(&mut r1).await, Some((2, "after".into())));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let peers: BTreeMap<u32, String> = [(1, addr.to_string()), (2, addr.to_string())].into();
        let (_t, mut r) = Transport::<String>::start(
            TransportConfig {
                id: 1,
                peers,
                secret: "right".into(),
                frame_bytes_max: 1 << 20,
            },
            l,
            Default::default(),
            TransportMetrics::default(),
            shutdown,
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hello: Wire<String> = Wire::Hello {
            from: 2,
            secret: "wrong".into(),
            version: WIRE_VERSION,
            lane: LANE_BULK,
        };
        let bytes = postcard::to_stdvec(&hello).unwrap();
        s.write_all(&(bytes.len() as u32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let msg = postcard::to_stdvec(&Wire::Message("sneaky".to_string())).unwrap();
        let _ = s.write_all(&(msg.len() as u32).to_be_bytes()).await;
        let _ = s.write_all(&msg).await;
        assert!(tokio::time::timeout(Duration::from_millis(300), r.recv())
            .await
            .is_err());
    }
}
