//! SMTP delivery through lettre, with a pool of reused connections per front end, as a real MTA
//! keeps to a busy destination.
//!
//! Each front end gets its own lettre transport (pooled connections) and a cap of
//! `connections_per_front_end` deliveries in flight, which is also the number of idle connections
//! kept for reuse. The driver must never report a message as delivered unless the server
//! acknowledged its DATA with 2xx, and never leave a half-finished transaction on a pooled
//! connection (see [`SmtpDriver::send`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::{Error as SmtpError, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Semaphore;

use super::{quote, OpError, OP_TIMEOUT};
use crate::message::GeneratedMessage;

/// Delivers generated messages to a set of SMTP front ends.
pub struct SmtpDriver {
    front_ends: Vec<FrontEnd>,
}

struct FrontEnd {
    addr: SocketAddr,
    /// Built on first use rather than in [`SmtpDriver::new`]: lettre's pool spawns a Tokio task
    /// when it is created, which would panic outside a runtime.
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    /// Deliveries in flight to this front end. lettre's pool only caps the idle connections it
    /// keeps, not the connections it opens, so the cap on concurrency is kept here.
    in_flight: Arc<Semaphore>,
    connections_max: u32,
}

impl SmtpDriver {
    /// A driver for `addrs`, keeping at most `connections_per_front_end` (at least 1) deliveries
    /// in flight, and as many connections open for reuse, per front end.
    pub fn new(addrs: &[SocketAddr], connections_per_front_end: u32) -> SmtpDriver {
        let connections_max = connections_per_front_end.max(1);
        SmtpDriver {
            front_ends: addrs
                .iter()
                .map(|&addr| FrontEnd {
                    addr,
                    transport: OnceLock::new(),
                    in_flight: Arc::new(Semaphore::new(connections_max as usize)),
                    connections_max,
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
        let front_end = &self.front_ends[front_end % self.front_ends.len()];
        let envelope = envelope(from, to)?;
        // lettre always ends DATA with CRLF "." CRLF, whose first CRLF ends the message's last
        // line (RFC 5321 4.1.1.4). Sending our final CRLF too would add an empty line to the
        // stored body and break its checksum.
        let bytes = message.bytes.as_slice();
        let bytes = bytes.strip_suffix(b"\r\n").unwrap_or(bytes).to_vec();
        let transport = front_end.transport().clone();
        let in_flight = Arc::clone(&front_end.in_flight);
        let delivery = async move {
            let permit = in_flight
                .acquire_owned()
                .await
                .map_err(|_| OpError::Io("the SMTP driver was shut down".into()))?;
            // A task of its own, so that a timeout below abandons the wait, not the transaction.
            let task = tokio::spawn(async move {
                let result = transport.send_raw(&envelope, &bytes).await;
                drop(permit);
                result
            });
            match task.await {
                Ok(result) => result.map(|_| ()).map_err(smtp_error),
                Err(e) => Err(OpError::Io(format!("the delivery task failed: {e}"))),
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, delivery).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout),
        }
    }

    /// Closes the pooled connections politely (QUIT). Deliveries still running finish first only
    /// if they are awaited before this is called.
    pub async fn shutdown(&self) {
        for front_end in &self.front_ends {
            if let Some(transport) = front_end.transport.get() {
                transport.shutdown().await;
            }
        }
    }
}

impl FrontEnd {
    fn transport(&self) -> &AsyncSmtpTransport<Tokio1Executor> {
        self.transport.get_or_init(|| {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.addr.ip().to_string())
                .port(self.addr.port())
                .timeout(Some(OP_TIMEOUT))
                .pool_config(PoolConfig::new().max_size(self.connections_max))
                .build()
        })
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        // Dropping lettre's pool spawns a task to close its connections, which panics outside a
        // Tokio runtime. Past the runtime's end there is nothing to close politely anyway, and
        // the process is about to let go of the sockets, so the pool is leaked instead.
        if tokio::runtime::Handle::try_current().is_err() {
            if let Some(transport) = self.transport.take() {
                std::mem::forget(transport);
            }
        }
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
