//! SMTP delivery through lettre, with a pool of reused connections per front end, as a real MTA
//! keeps to a busy destination.
//!
//! lettre speaks SMTP (`AsyncSmtpConnection`); this driver owns the TCP connections and the pool.
//! It opens each connection itself so that it can set `TCP_NODELAY`: lettre writes the end of
//! DATA (`CRLF . CRLF`) as a separate small write, which Nagle's algorithm would hold back until
//! the server's delayed ACK, about 40 ms per message. Each front end gets a cap of
//! `connections_per_front_end` deliveries in flight, which is also the number of idle connections
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
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{quote, OpError, OP_TIMEOUT};
use crate::message::GeneratedMessage;

/// A pooled connection idle longer than this is checked (NOOP) before it carries a message: the
/// server may have closed it (idle timeout, restart) since.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);
/// The name the driver gives in EHLO.
const HELO_NAME: &str = "loadgen.clusterbench.test";

/// Delivers generated messages to a set of SMTP front ends.
pub struct SmtpDriver {
    front_ends: Vec<Arc<FrontEnd>>,
}

struct FrontEnd {
    addr: SocketAddr,
    /// Connections between transactions, with when they were last used.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Deliveries in flight to this front end.
    in_flight: Arc<Semaphore>,
    connections_max: usize,
}

impl SmtpDriver {
    /// A driver for `addrs`, keeping at most `connections_per_front_end` (at least 1) deliveries
    /// in flight, and as many connections open for reuse, per front end.
    pub fn new(addrs: &[SocketAddr], connections_per_front_end: u32) -> SmtpDriver {
        let connections_max = connections_per_front_end.max(1) as usize;
        SmtpDriver {
            front_ends: addrs
                .iter()
                .map(|&addr| {
                    Arc::new(FrontEnd {
                        addr,
                        idle: Mutex::new(Vec::new()),
                        in_flight: Arc::new(Semaphore::new(connections_max)),
                        connections_max,
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
    /// counter can be passed as is). `Ok` means the server accepted the message with 2xx.
    ///
    /// Bounded by [`OP_TIMEOUT`], waiting for a free connection slot included. On
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
        message: &GeneratedMessage,
    ) -> Result<(), OpError> {
        if self.front_ends.is_empty() {
            return Err(OpError::Connect("no SMTP front ends configured".into()));
        }
        let front_end = Arc::clone(&self.front_ends[front_end % self.front_ends.len()]);
        let envelope = envelope(from, to)?;
        // lettre always ends DATA with CRLF "." CRLF, whose first CRLF ends the message's last
        // line (RFC 5321 4.1.1.4). Sending our final CRLF too would add an empty line to the
        // stored body and break its checksum.
        let bytes = message.bytes.as_slice();
        let bytes = bytes.strip_suffix(b"\r\n").unwrap_or(bytes).to_vec();
        let in_flight = Arc::clone(&front_end.in_flight);
        let delivery = async move {
            let permit = in_flight
                .acquire_owned()
                .await
                .map_err(|_| OpError::Io("the SMTP driver was shut down".into()))?;
            // A task of its own, so that a timeout below abandons the wait, not the transaction.
            let task = tokio::spawn(async move {
                let result = front_end.deliver(&envelope, &bytes).await;
                drop(permit);
                result
            });
            match task.await {
                Ok(result) => result,
                Err(e) => Err(OpError::Io(format!("the delivery task failed: {e}"))),
            }
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
            for (mut connection, _) in idle {
                let _ = connection.quit().await;
            }
        }
    }
}

impl FrontEnd {
    /// One transaction on a pooled or new connection; the connection goes back to the pool only
    /// after a complete transaction.
    async fn deliver(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), OpError> {
        let mut connection = self.connection().await?;
        match connection.send(envelope, bytes).await {
            Ok(_) => {
                let mut idle = self.idle.lock().unwrap();
                if idle.len() < self.connections_max {
                    idle.push((connection, Instant::now()));
                }
                Ok(())
            }
            Err(e) => {
                connection.abort().await;
                Err(smtp_error(e))
            }
        }
    }

    /// A pooled connection that still works, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, OpError> {
        loop {
            let pooled = self.idle.lock().unwrap().pop();
            let Some((mut connection, since)) = pooled else {
                break;
            };
            if since.elapsed() < IDLE_CHECK_AFTER || connection.test_connected().await {
                return Ok(connection);
            }
            connection.abort().await;
        }
        let stream = match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(OpError::Connect(format!("{}: {e}", self.addr))),
            Err(_) => return Err(OpError::Timeout),
        };
        stream
            .set_nodelay(true)
            .map_err(|e| OpError::Io(format!("setting TCP_NODELAY: {e}")))?;
        AsyncSmtpConnection::connect_with_transport(
            Box::new(stream),
            &ClientId::Domain(HELO_NAME.to_string()),
        )
        .await
        .map_err(smtp_error)
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
        let message = GeneratedMessage {
            id: "x".into(),
            bytes: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        };
        let err = driver
            .send(0, "a@b.test", &["c@d.test".into()], &message)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "connect");
    }
}
