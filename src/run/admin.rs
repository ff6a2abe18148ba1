//! A minimal client for a node's admin API (HTTP/1.1, bearer token, JSON), for the runner's
//! status polling and fault injection. One request per connection; every call is bounded in time
//! and response size.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time one admin request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response read.
pub const RESPONSE_BYTES_MAX: u64 = 1 << 20;

/// One request; returns (status code, parsed JSON body or Null).
pub async fn request(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Value)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(RESPONSE_BYTES_MAX).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let code = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Some((code, serde_json::from_str(body).unwrap_or(Value::Null)))
    })
    .await
    .ok()
    .flatten()
}

/// `GET /status`, if the node answers.
pub async fn status(addr: SocketAddr, token: &str) -> Option<Value> {
    match request(addr, token, "GET", "/status", "").await {
        Some((200, v)) => Some(v),
        _ => None,
    }
}
