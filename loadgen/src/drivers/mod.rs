//! Protocol drivers: one operation of each [`OpKind`](crate::OpKind) against a real server, as a
//! mail client would perform it: SMTP delivery ([`smtp`]), POP3 and IMAP reading sessions
//! ([`pop3`], [`imap`]).
//!
//! A driver performs one operation and reports what happened: an [`OpError`] whose
//! [`kind`](OpError::kind) the metrics count, or what a reading session retrieved (verified with
//! [`message::verify`](crate::message::verify)) and which deletions it committed. Drivers must
//! never retry (the engine decides what a failure means), never run unbounded (every operation is
//! bounded by [`OP_TIMEOUT`], every read by a size limit), and never panic on what a server sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::Verified;

pub mod imap;
pub mod pop3;
pub mod smtp;

/// Every operation (an SMTP delivery, a POP3 or IMAP session) is bounded by this.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages one reading session retrieves at most, so a session's time and memory stay bounded
/// however much mail has piled up; the rest wait for the next session.
pub const SESSION_MESSAGES_MAX: usize = 1_000;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No connection could be made (refused, unreachable, ...).
    #[error("could not connect: {0}")]
    Connect(String),
    /// The operation did not finish within its time bound.
    #[error("timed out")]
    Timeout,
    /// The server refused: an SMTP 4xx/5xx reply, POP3 `-ERR`, IMAP `NO`/`BAD`/`BYE`.
    #[error("refused by the server: {0}")]
    Rejected(String),
    /// The server's reply was malformed or broke a limit.
    #[error("malformed reply: {0}")]
    Protocol(String),
    /// The connection failed after it was made (reset, closed early, ...).
    #[error("i/o error: {0}")]
    Io(String),
}

impl OpError {
    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            OpError::Connect(_) => "connect",
            OpError::Timeout => "timeout",
            OpError::Rejected(_) => "rejected",
            OpError::Protocol(_) => "protocol",
            OpError::Io(_) => "io",
        }
    }
}

/// Counts the connections the load generator opens and how many are open at once, for
/// results.json: realistic load is as much about connections as about messages.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    opened: AtomicU64,
    open: AtomicU64,
    open_peak: AtomicU64,
}

/// A connection counted as open until this is dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionTracker>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a [`ConnectionTracker`] saw, and the most operations in flight at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// Connections opened (SMTP connections, and one per POP3 or IMAP session).
    pub opened: u64,
    /// The most connections open at once (idle pooled ones included).
    pub open_peak: u64,
    /// The most operations in flight at once (open loop), or the sessions (closed loop).
    pub in_flight_peak: u64,
}

impl ConnectionTracker {
    /// Counts a connection just opened; it counts as open until the guard is dropped.
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_peak.fetch_max(now, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }

    /// Connections opened so far and the most open at once.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            opened: self.opened.load(Ordering::Relaxed),
            open_peak: self.open_peak.load(Ordering::Relaxed),
            in_flight_peak: 0,
        }
    }
}

/// What a reading session found.
#[derive(Debug, Clone, Default)]
pub struct SessionResult {
    /// Every message the session retrieved, verified.
    pub retrieved: Vec<Verified>,
    /// Ids of messages this session deleted (committed: POP3 QUIT or IMAP EXPUNGE succeeded).
    /// Messages without an id header are deleted too but cannot be listed here.
    pub deleted: Vec<String>,
}

/// Server text quoted in an error, cut to this many characters so a hostile reply cannot make
/// errors (which end up in logs and reports) arbitrarily large.
const QUOTED_CHARS_MAX: usize = 200;

/// `text` as it may appear in an error message: lossy UTF-8, trimmed, at most
/// [`QUOTED_CHARS_MAX`] characters.
fn quote(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    match text.char_indices().nth(QUOTED_CHARS_MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// An I/O error during an operation, as an [`OpError`]: timeouts stay timeouts.
fn io_error(e: std::io::Error) -> OpError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        OpError::Timeout
    } else {
        OpError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_names() {
        let all = [
            (OpError::Connect("x".into()), "connect"),
            (OpError::Timeout, "timeout"),
            (OpError::Rejected("x".into()), "rejected"),
            (OpError::Protocol("x".into()), "protocol"),
            (OpError::Io("x".into()), "io"),
        ];
        for (e, kind) in all {
            assert_eq!(e.kind(), kind);
        }
    }

    /// The engine runs operations on spawned tasks, so drivers and their futures must be `Send`.
    #[test]
    fn drivers_and_their_operations_can_run_on_spawned_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<F: std::future::Future + Send>(_: F) {}
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
        let driver = smtp::SmtpDriver::new(&[addr], 1);
        send_sync(&driver);
        let message = Arc::new(crate::message::GeneratedMessage {
            id: String::new(),
            bytes: Vec::new(),
        });
        let to = Vec::new();
        send(driver.send(0, "", &to, &message));
        let mut out = SessionResult::default();
        send(pop3::session(addr, "u", "p", true, &mut out));
        send(pop3::retrieve_all(addr, "u", "p"));
        send(imap::session(
            addr,
            "u",
            "p",
            imap::AfterRead::Expunge,
            &mut out,
        ));
    }

    #[test]
    fn quoted_server_text_is_bounded() {
        assert_eq!(quote(b"  -ERR no  \r\n"), "-ERR no");
        let long = vec![b'a'; 10_000];
        assert_eq!(quote(&long).len(), QUOTED_CHARS_MAX + 3);
        assert_eq!(quote(b"\xff\xfe"), "\u{fffd}\u{fffd}");
    }
}
