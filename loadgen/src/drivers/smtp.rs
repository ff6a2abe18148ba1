//! SMTP delivery through lettre, the way a real MTA connects: a pool of reused connections per
//! front end (as to a busy destination), optionally retired after some messages, or a new
//! connection for every message (connect, EHLO, one transaction, QUIT), as Porcupine's clients
//! and Postfix's `smtp-source` do; see [`SmtpClient`].
//!
//! lettre speaks SMTP (`AsyncSmtpConnection`); this driver owns the TCP connections and the pool.
//! It opens each connection itself so that it can set `TCP_NODELAY`: lettre writes the end of
//! DATA (`CRLF . CRLF`) as a separate small write, which Nagle's algorithm would hold back until
//! the server's delayed ACK, about 40 ms per message. Each front end gets a cap of
//! `connections_per_front_end` sessions at once, which is also the number of idle connections
//! kept for reuse. The driver must never report a message as delivered unless the server
//! acknowledged its DATA with 2xx, and never put a connection back in the pool in the middle of a
//! transaction (see [`SmtpDriver::send`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

use super::{quote, ConnectionTracker, OpError, OpenConnection, OP_TIMEOUT};
use crate::message::GeneratedMessage;

/// A pooled connection idle longer than this is checked (NOOP) before it carries a message: the
/// server may have closed it (idle timeout, restart) since.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);
/// The name the driver gives in EHLO.
const HELO_NAME: &str = "loadgen.clusterbench.test";
/// Most SMTP sessions per front end a driver may be configured for.
pub const CONNECTIONS_PER_FRONT_END_MAX: u32 = 1_000_000;

/// How the load generator connects to SMTP front ends (`[loadgen.smtp]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpClient {
    /// `reuse`: a pool of connections per front end, each carrying message after message;
    /// `per-message`: a new connection (connect, EHLO, one transaction, QUIT) for every message.
    pub connection: ConnectionModel,
    /// Sessions (connections) at once per front end, at most; with `reuse`, also the idle
    /// connections kept open. A delivery beyond it waits for a session to free (the wait counts
    /// as latency).
    pub connections_per_front_end: u32,
    /// `reuse`: close a connection (QUIT) after this many messages, as an MTA that batches;
    /// 0 = never.
    pub messages_per_connection: u32,
}

/// See [`SmtpClient::connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionModel {
    Reuse,
    PerMessage,
}

impl Default for SmtpClient {
    fn default() -> Self {
        SmtpClient {
            connection: ConnectionModel::Reuse,
            connections_per_front_end: 32,
            messages_per_connection: 0,
        }
    }
}

impl SmtpClient {
    /// Checks the values; the error names the key under `prefix` (`loadgen.smtp`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if !(1..=CONNECTIONS_PER_FRONT_END_MAX).contains(&self.connections_per_front_end) {
            return Err(format!(
                "{prefix}.connections_per_front_end: must be 1 to {CONNECTIONS_PER_FRONT_END_MAX}"
            ));
        }
        if self.connection == ConnectionModel::PerMessage && self.messages_per_connection > 1 {
            return Err(format!(
                "{prefix}.messages_per_connection: a per-message connection carries one; use \
                 connection = \"reuse\" to batch"
            ));
        }
        Ok(())
    }

    /// This agent's part when the load is split `count` ways: sessions divided, at least one.
    pub fn share(&self, count: u32) -> SmtpClient {
        SmtpClient {
            connections_per_front_end: self.connections_per_front_end.div_ceil(count.max(1)),
            ..self.clone()
        }
    }
}

/// Delivers generated messages to a set of SMTP front ends.
pub struct SmtpDriver {
    front_ends: Vec<Arc<FrontEnd>>,
}

/// A connection with what the pool knows of it.
struct Pooled {
    connection: AsyncSmtpConnection,
    /// When it last finished a transaction.
    since: Instant,
    /// Messages it carried.
    sent: u32,
    _open: OpenConnection,
}

struct FrontEnd {
    addr: SocketAddr,
    config: SmtpClient,
    tracker: Arc<ConnectionTracker>,
    /// Connections between transactions.
    idle: Mutex<Vec<Pooled>>,
    /// Sessions open to this front end.
    in_flight: Arc<Semaphore>,
}

impl SmtpDriver {
    /// A driver for `addrs` reusing connections: at most `connections_per_front_end` (at least 1)
    /// deliveries in flight, and as many connections kept open, per front end.
    pub fn new(addrs: &[SocketAddr], connections_per_front_end: u32) -> SmtpDriver {
        let config = SmtpClient {
            connections_per_front_end: connections_per_front_end.max(1),
            ..SmtpClient::default()
        };
        SmtpDriver::with(addrs, &config, Arc::default())
    }

    /// A driver for `addrs` connecting as `config` says, counting its connections in `tracker`.
    pub fn with(
        addrs: &[SocketAddr],
        config: &SmtpClient,
        tracker: Arc<ConnectionTracker>,
    ) -> SmtpDriver {
        let sessions = config.connections_per_front_end.max(1) as usize;
        SmtpDriver {
            front_ends: addrs
                .iter()
                .map(|&addr| {
                    Arc::new(FrontEnd {
                        addr,
                        config: config.clone(),
                        tracker: Arc::clone(&tracker),
                        idle: Mutex::new(Vec::new()),
                        in_flight: Arc::new(Semaphore::new(sessions)),
                    })
                })
                .collect(),
        }
    }

    /// The number of front ends this driver delivers to.
    pub fn front_ends(&self) -> usize {
        self.front_ends.len()
    }

    /// Delivers `message` from `from` (empty: the null reverse-path) to `to` through front end
    /// number `front_end` (taken modulo [`front_ends`](Self::front_ends), so a round-robin
    /// counter can be passed as is). `Ok` means the server accepted the message with 2xx; a
    /// per-message connection's QUIT follows after that, outside the operation's time.
    ///
    /// Bounded by [`OP_TIMEOUT`], waiting for a free session included. On
    /// [`OpError::Timeout`] the delivery may still complete in the background and be accepted:
    /// SMTP cannot take back a message whose acknowledgement was merely late, so a checker must
    /// treat timed-out messages as possibly delivered. The delivery runs to its end (bounded by
    /// lettre's own per-command timeout) so that its connection never returns to the pool in the
    /// middle of a transaction.
    pub async fn send(
        &self,
        front_end: usize,
        from: &str,
        to: &[String],
        message: &Arc<GeneratedMessage>,
    ) -> Result<(), OpError> {
        if self.front_ends.is_empty() {
            return Err(OpError::Connect("no SMTP front ends configured".into()));
        }
        let front_end = Arc::clone(&self.front_ends[front_end % self.front_ends.len()]);
        let envelope = envelope(from, to)?;
        let message = Arc::clone(message);
        let in_flight = Arc::clone(&front_end.in_flight);
        let delivery = async move {
            let permit = in_flight
                .acquire_owned()
                .await
                .map_err(|_| OpError::Io("the SMTP driver was shut down".into()))?;
            // A task of its own, so that a timeout below abandons the wait, not the transaction;
            // it answers as soon as DATA is acknowledged, then closes the session if it should.
            let (answer, answered) = oneshot::channel();
            tokio::spawn(async move {
                // lettre always ends DATA with CRLF "." CRLF, whose first CRLF ends the message's
                // last line (RFC 5321 4.1.1.4). Sending our final CRLF too would add an empty
                // line to the stored body and break its checksum.
                let bytes = message.bytes.as_slice();
                let bytes = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
                front_end.deliver(&envelope, bytes, answer).await;
                drop(permit);
            });
            answered
                .await
                .unwrap_or_else(|_| Err(OpError::Io("the delivery task failed".into())))
        };
        match tokio::time::timeout(OP_TIMEOUT, delivery).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout),
        }
    }

    /// Closes the pooled connections politely (QUIT).
    pub async fn shutdown(&self) {
        for front_end in &self.front_ends {
            let idle = std::mem::take(&mut *front_end.idle.lock().unwrap());
            for mut pooled in idle {
                let _ = pooled.connection.quit().await;
            }
        }
    }
}

impl FrontEnd {
    /// One transaction on a pooled or new connection, answered on `answer` as soon as it is
    /// done; then the connection goes back to the pool (only after a complete transaction), or
    /// says QUIT when the model retires it.
    async fn deliver(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        answer: oneshot::Sender<Result<(), OpError>>,
    ) {
        let mut pooled = match self.connection().await {
            Ok(pooled) => pooled,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        if let Err(e) = pooled.connection.send(envelope, bytes).await {
            pooled.connection.abort().await;
            let _ = answer.send(Err(smtp_error(e)));
            return;
        }
        let _ = answer.send(Ok(()));
        pooled.sent = pooled.sent.saturating_add(1);
        pooled.since = Instant::now();
        let retire = match self.config.connection {
            ConnectionModel::PerMessage => true,
            ConnectionModel::Reuse => {
                let limit = self.config.messages_per_connection;
                limit > 0 && pooled.sent >= limit
            }
        };
        if retire {
            let _ = pooled.connection.quit().await;
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.config.connections_per_front_end as usize {
            idle.push(pooled);
        }
    }

    /// A pooled connection that still works, or a new one.
    async fn connection(&self) -> Result<Pooled, OpError> {
        loop {
            let pooled = self.idle.lock().unwrap().pop();
            let Some(mut pooled) = pooled else {
                break;
            };
            if pooled.since.elapsed() < IDLE_CHECK_AFTER || pooled.connection.test_connected().await
            {
                return Ok(pooled);
            }
            pooled.connection.abort().await;
        }
        let stream = match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(OpError::Connect(format!("{}: {e}", self.addr))),
            Err(_) => return Err(OpError::Timeout),
        };
        let open = self.tracker.opened();
        stream
            .set_nodelay(true)
            .map_err(|e| OpError::Io(format!("setting TCP_NODELAY: {e}")))?;
        let connection = AsyncSmtpConnection::connect_with_transport(
            Box::new(stream),
            &ClientId::Domain(HELO_NAME.to_string()),
        )
        .await
        .map_err(smtp_error)?;
        Ok(Pooled {
            connection,
            since: Instant::now(),
            sent: 0,
            _open: open,
        })
    }
}

/// The SMTP envelope: reverse-path `from` (null if empty) and forward-paths `to`.
fn envelope(from: &str, to: &[String]) -> Result<Envelope, OpError> {
    let parse = |address: &str| {
        address
            .parse::<Address>()
            .map_err(|e| OpError::Protocol(format!("cannot send to or from {address:?}: {e}")))
    };
    let from = match from {
        "" => None,
        from => Some(parse(from)?),
    };
    let to = to.iter().map(|a| parse(a)).collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| OpError::Protocol(format!("invalid envelope: {e}")))
}

/// lettre's error as an [`OpError`]: the server's refusals keep its text; failures to connect and
/// failures after connecting are told apart.
fn smtp_error(e: SmtpError) -> OpError {
    if e.is_timeout() {
        return OpError::Timeout;
    }
    if e.is_permanent() || e.is_transient() {
        return OpError::Rejected(quote(e.to_string().as_bytes()));
    }
    if e.is_response() || e.is_client() {
        return OpError::Protocol(quote(e.to_string().as_bytes()));
    }
    // lettre has no `is_connection()`; its connection errors (refused, unreachable, failed
    // lookup) are the ones whose message says so.
    let text = quote(e.to_string().as_bytes());
    if text.starts_with("Connection error") {
        OpError::Connect(text)
    } else {
        OpError::Io(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_reject_bad_addresses_locally() {
        assert!(envelope("a@b.test", &["c@d.test".into()]).is_ok());
        assert!(envelope("", &["c@d.test".into()]).is_ok());
        assert!(matches!(
            envelope("a@b.test", &["not an address".into()]),
            Err(OpError::Protocol(_))
        ));
        assert!(matches!(
            envelope("a@b.test", &[]),
            Err(OpError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn no_front_ends_is_a_connect_error() {
        let driver = SmtpDriver::new(&[], 4);
        assert_eq!(driver.front_ends(), 0);
        let message = Arc::new(GeneratedMessage {
            id: "x".into(),
            bytes: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        });
        let err = driver
            .send(0, "a@b.test", &["c@d.test".into()], &message)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "connect");
    }
}
