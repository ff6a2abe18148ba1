//! The HTTP/1.1 client of the web driver (hyper's connection-level client, so the load
//! generator decides exactly how connections are made and reused).
//!
//! [`HttpClient`] is `[loadgen.http]`: `connection = "reuse"` keeps a pool of keep-alive
//! connections per server (at most `connections_per_target` busy at once, as `wrk -c` or a
//! browser's per-proxy limit), `"per-request"` opens a new connection for every request and asks
//! the server to close it. Every request is bounded in time (`timeout_ms`, connecting included)
//! and its body in size (`body_bytes_max`); nothing a server sends can make the client hold more
//! or wait longer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use std::pin::Pin;

use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::drivers::{ConnectionTracker, OpenConnection};

/// Most connections per server `connections_per_target` may ask for.
pub const CONNECTIONS_PER_TARGET_MAX: u32 = 100_000;
/// Largest `body_bytes_max`.
pub const BODY_BYTES_MAX: usize = 1 << 30;
/// Longest `timeout_ms` (10 minutes).
pub const TIMEOUT_MS_MAX: u64 = 600_000;
/// Servers (addresses) one client keeps pools for; beyond it, connections to new servers are
/// not pooled.
pub const SERVERS_MAX: usize = 4_096;
/// Longest user header name.
const HEADER_NAME_BYTES_MAX: usize = 256;

/// How the load generator talks HTTP (`[loadgen.http]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpClient {
    /// `reuse` (keep-alive pools) or `per-request` (a new connection for every request).
    pub connection: HttpConnection,
    /// Requests in progress at once per server (proxy or web server), at most: with `reuse`,
    /// also the connections kept open. A request beyond it waits (the wait counts as latency).
    pub connections_per_target: u32,
    /// A request's time bound, from asking for a connection to the last byte of the body.
    pub timeout_ms: u64,
    /// Largest response body read; a longer one is an error (`too large`).
    pub body_bytes_max: usize,
    /// The header that names the user to the proxy (the web cluster's default); empty: none.
    pub user_header: String,
    /// `full`: check every response (status; the original's bytes; distilled images decode and
    /// are smaller; pages carry the munger's marks). `status`: the status only, for raw speed.
    pub checks: Checks,
}

/// See [`HttpClient::connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpConnection {
    Reuse,
    PerRequest,
}

/// See [`HttpClient::checks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checks {
    Full,
    Status,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            connection: HttpConnection::Reuse,
            connections_per_target: 64,
            timeout_ms: 30_000,
            body_bytes_max: 16 * 1024 * 1024,
            user_header: "x-clusterbench-user".into(),
            checks: Checks::Full,
        }
    }
}

impl HttpClient {
    /// Checks the values; the error names the key under `prefix` (`loadgen.http`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if !(1..=CONNECTIONS_PER_TARGET_MAX).contains(&self.connections_per_target) {
            return Err(format!(
                "{prefix}.connections_per_target: must be 1 to {CONNECTIONS_PER_TARGET_MAX}"
            ));
        }
        if !(1..=TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(format!(
                "{prefix}.timeout_ms: must be 1 to {TIMEOUT_MS_MAX}"
            ));
        }
        if !(1..=BODY_BYTES_MAX).contains(&self.body_bytes_max) {
            return Err(format!(
                "{prefix}.body_bytes_max: must be 1 to {BODY_BYTES_MAX}"
            ));
        }
        if !self.user_header.is_empty()
            && (self.user_header.len() > HEADER_NAME_BYTES_MAX
                || hyper::header::HeaderName::from_bytes(self.user_header.as_bytes()).is_err())
        {
            return Err(format!(
                "{prefix}.user_header: {:?} is not a header name",
                self.user_header
            ));
        }
        Ok(())
    }

    /// This agent's part when the load is split `count` ways.
    pub fn share(&self, count: u32) -> HttpClient {
        HttpClient {
            connections_per_target: self.connections_per_target.div_ceil(count.max(1)),
            ..self.clone()
        }
    }
}

/// Why a request failed (the metrics count [`HttpError::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    /// The server answered with this status (not 200).
    #[error("status {0}")]
    Status(u16),
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The exchange broke after connecting (reset, malformed response, ...).
    #[error("i/o error: {0}")]
    Io(String),
    /// The URL cannot be requested (not `http://`, no host).
    #[error("bad URL: {0}")]
    Url(String),
    /// The response came but is not what it must be.
    #[error("check failed: {0}")]
    Check(&'static str),
}

impl HttpError {
    /// A short stable name for metrics labels: `connect`, `timeout`, `http 502`, ...
    pub fn kind(&self) -> String {
        match self {
            HttpError::Connect(_) => "connect".into(),
            HttpError::Timeout => "timeout".into(),
            HttpError::Status(s) => format!("http {s}"),
            HttpError::TooLarge(_) => "too large".into(),
            HttpError::Io(_) => "io".into(),
            HttpError::Url(_) => "bad url".into(),
            HttpError::Check(what) => format!("check: {what}"),
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Every request to one of these proxies (picked by the request's index, round robin), in
    /// absolute form.
    Proxy(Vec<SocketAddr>),
    /// Every request to the server its URL names, in origin form with `Host`.
    Direct,
}

/// One URL taken apart: the authority (`host[:port]`, for `Host` and for connecting) and the
/// path with its query.
fn split_url(url: &str) -> Result<(&str, &str), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(format!("{url:?}: only http:// URLs")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Url(format!("{url:?}: no host")));
    }
    Ok((authority, path))
}

/// The connection half of one hyper HTTP/1.1 client connection.
type Driver = Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// A connection: its sender, and the connection itself, which the task using it drives (no
/// task of its own, so a request costs no wake-ups across tasks).
struct Idle {
    sender: SendRequest<Empty<Bytes>>,
    /// `None` once the connection's future has ended (the server closed it, or it failed): it
    /// is dropped then, which cancels a request still waiting on it.
    connection: Option<Pin<Box<Driver>>>,
    _open: OpenConnection,
}

struct Pool {
    busy: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
}

/// The client: pools per server, a connection tracker, the settings.
pub struct Client {
    config: HttpClient,
    route: Route,
    tracker: Arc<ConnectionTracker>,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    resolved: Mutex<HashMap<String, SocketAddr>>,
    user_header: Option<hyper::header::HeaderName>,
}

impl Client {
    pub fn new(config: HttpClient, route: Route, tracker: Arc<ConnectionTracker>) -> Client {
        let user_header = (!config.user_header.is_empty())
            .then(|| hyper::header::HeaderName::from_bytes(config.user_header.as_bytes()).ok())
            .flatten();
        Client {
            config,
            route,
            tracker,
            pools: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            user_header,
        }
    }

    pub fn config(&self) -> &HttpClient {
        &self.config
    }

    /// `GET url` as `user` (request number `index` picks the proxy), read whole, within the
    /// client's time bound.
    pub async fn get(&self, url: &str, user: &str, index: u64) -> Result<Response, HttpError> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(timeout, self.get_unbounded(url, user, index)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn get_unbounded(
        &self,
        url: &str,
        user: &str,
        index: u64,
    ) -> Result<Response, HttpError> {
        let (authority, path) = split_url(url)?;
        let (server, uri) = match &self.route {
            Route::Proxy(proxies) if !proxies.is_empty() => (
                proxies[(index % proxies.len() as u64) as usize],
                url.to_string(),
            ),
            Route::Proxy(_) => return Err(HttpError::Connect("no proxy".into())),
            Route::Direct => (self.resolve(authority).await?, path.to_string()),
        };
        let mut request = Request::get(uri.as_str())
            .header(HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpError::Url(format!("{url:?}: {e}")))?;
        if let (Some(name), Ok(value)) = (&self.user_header, HeaderValue::from_str(user)) {
            if !user.is_empty() {
                request.headers_mut().insert(name.clone(), value);
            }
        }
        let reuse = self.config.connection == HttpConnection::Reuse;
        if !reuse {
            request
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let pool = self.pool(server);
        let _busy: OwnedSemaphorePermit = pool
            .busy
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HttpError::Connect("the client is closing".into()))?;
        let pooled = reuse.then(|| take_idle(&pool)).flatten();
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(idle) => idle,
            None => self.connect(server).await?,
        };
        let retry = reused.then(|| clone_request(&request));
        let mut result = self.exchange(&mut connection, request).await;
        if let (Err(HttpError::Io(_)), Some(request)) = (&result, retry) {
            // A kept-alive connection the server had closed meanwhile: like a browser, send an
            // idempotent request again once, on a new connection.
            connection = self.connect(server).await?;
            result = self.exchange(&mut connection, request).await;
        }
        let (status, headers, body) = result?;
        let closing = headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if reuse && !closing && connection.connection.is_some() && !connection.sender.is_closed() {
            let mut idle = pool.idle.lock().unwrap();
            if idle.len() < self.config.connections_per_target as usize {
                idle.push(connection);
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// One request and its whole response on `c`, driving the connection meanwhile.
    async fn exchange(
        &self,
        c: &mut Idle,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), HttpError> {
        let limit = self.config.body_bytes_max;
        let Idle {
            sender, connection, ..
        } = c;
        let work = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| HttpError::Io(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge(limit)
                    } else {
                        HttpError::Io(e.to_string())
                    }
                })?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::pin!(work);
        loop {
            let driving = async {
                match connection.as_mut() {
                    Some(c) => {
                        let _ = c.as_mut().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                r = &mut work => return r,
                // The connection is over: dropping it fails whatever still waits on it.
                _ = driving => *connection = None,
            }
        }
    }

    fn pool(&self, server: SocketAddr) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap();
        if let Some(p) = pools.get(&server) {
            return p.clone();
        }
        let pool = Arc::new(Pool {
            busy: Arc::new(Semaphore::new(self.config.connections_per_target as usize)),
            idle: Mutex::new(Vec::new()),
        });
        if pools.len() < SERVERS_MAX {
            pools.insert(server, pool.clone());
        }
        pool
    }

    async fn resolve(&self, authority: &str) -> Result<SocketAddr, HttpError> {
        if let Some(a) = self.resolved.lock().unwrap().get(authority) {
            return Ok(*a);
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| HttpError::Connect(format!("{authority}: {e}")))?
            .next()
            .ok_or_else(|| HttpError::Connect(format!("{authority}: no address")))?;
        let mut resolved = self.resolved.lock().unwrap();
        if resolved.len() < SERVERS_MAX {
            resolved.insert(authority.to_string(), addr);
        }
        Ok(addr)
    }

    async fn connect(&self, server: SocketAddr) -> Result<Idle, HttpError> {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| HttpError::Connect(format!("{server}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let open = self.tracker.opened();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(format!("{server}: {e}")))?;
        Ok(Idle {
            sender,
            connection: Some(Box::pin(connection)),
            _open: open,
        })
    }
}

/// A GET again (a request has no body here, so its head is all there is).
fn clone_request(r: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut again = Request::new(Empty::new());
    *again.method_mut() = r.method().clone();
    *again.uri_mut() = r.uri().clone();
    *again.headers_mut() = r.headers().clone();
    again
}

/// An idle connection that can take a request now, if the pool has one (closed ones dropped).
fn take_idle(pool: &Pool) -> Option<Idle> {
    let mut idle = pool.idle.lock().unwrap();
    while let Some(c) = idle.pop() {
        if c.sender.is_ready() {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://h:8/a/b?c=1").unwrap(),
            ("h:8", "/a/b?c=1")
        );
        assert_eq!(split_url("http://h").unwrap(), ("h", "/"));
        assert!(split_url("https://h/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = HttpClient {
            connections_per_target: 0,
            ..HttpClient::default()
        };
        assert!(bad
            .validate("loadgen.http")
            .unwrap_err()
            .contains("loadgen.http.connections_per_target"));
        let bad = HttpClient {
            user_header: "a b".into(),
            ..HttpClient::default()
        };
        assert!(bad
            .validate("loadgen.http")
            .unwrap_err()
            .contains("user_header"));
        assert!(HttpClient::default().validate("loadgen.http").is_ok());
    }

    #[test]
    fn error_kinds_are_short_and_stable() {
        assert_eq!(HttpError::Status(502).kind(), "http 502");
        assert_eq!(HttpError::Check("checksum").kind(), "check: checksum");
        assert_eq!(HttpError::Timeout.kind(), "timeout");
    }
}
