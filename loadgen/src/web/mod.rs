//! The HTTP side of the load generator: requests replayed from a trace against a proxy (the web
//! cluster's front ends, squid, varnish, ...) or straight at web servers, with every response
//! checked.
//!
//! - [`client`]: the HTTP/1.1 client (httparse): a keep-alive pool per server, or a new connection
//!   per request; absolute-form requests to a proxy, as a browser configured with one sends
//!   them, or origin-form with `Host`.
//! - [`check`]: what a response must be: its status, the original's exact bytes when it passed
//!   through (against the bundled origin's manifest), a decodable and smaller JPEG when it was
//!   distilled, the munger's marks in a distilled page.
//! - [`engine`]: the open loop: each request starts at its intended time (from the trace) and
//!   its latency counts from then, so a stalled proxy shows as latency, not as fewer requests.
//!
//! Requests are recorded per content type ([`OpKind::WEB`](crate::OpKind::WEB), told by the
//! URL), so a report has latency by type and the HTTP total is their sum.

pub mod check;
pub mod client;
pub mod engine;

use std::time::Duration;

/// One request to send: from a replayed trace, or built by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRequest {
    /// Intended start, from the run's start.
    pub at: Duration,
    /// Position in the replay, from 0 (unique within a run).
    pub index: u64,
    /// An absolute `http://` URL.
    pub url: String,
    /// Who asks: the trace's authuser or client host (sent in the user header, so a proxy with
    /// per-user profiles knows whose).
    pub user: String,
}
