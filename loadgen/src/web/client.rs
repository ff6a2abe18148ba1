//! The HTTP/1.1 client of the web driver: requests written whole in one write, responses parsed
//! with `httparse` (hyper's parser) straight out of the connection's buffer, bodies framed by
//! `Content-Length`, chunked transfer coding or the connection's end (RFC 9112 section 6.3). The
//! load generator decides exactly how connections are made and reused, and one request costs
//! one write and usually one read: no channel, task or header map per request, as in `wrk`.
//!
//! [`HttpClient`] is `[loadgen.http]`: `connection = "reuse"` keeps a pool of keep-alive
//! connections per server (at most `connections_per_target` busy at once, as `wrk -c` or a
//! browser's per-proxy limit), `"per-request"` opens a new connection for every request and asks
//! the server to close it. Every request is bounded in time (`timeout_ms`, connecting included)
//! and its body in size (`body_bytes_max`); nothing a server sends can make the client hold more
//! or wait longer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// Longest response head (status line and header fields) read.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most header fields in a response head.
pub const HEADERS_MAX: usize = 128;
/// Longest chunk-size line or trailer section of a chunked body.
const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;
/// What one read asks the kernel for at least.
const READ_BYTES: usize = 16 * 1024;

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
                || !self.user_header.bytes().all(is_token_byte))
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

/// A response read whole: its head as received (fields looked up in place) and its body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    head: Bytes,
    /// Each field's name and value, as ranges of `head`.
    fields: Vec<(Range<u32>, Range<u32>)>,
    pub body: Bytes,
}

impl Response {
    /// A response built by hand (tests, and servers answering without a connection).
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut head = Vec::new();
        let mut fields = Vec::new();
        for (name, value) in headers {
            let n = head.len() as u32..(head.len() + name.len()) as u32;
            head.extend_from_slice(name.as_bytes());
            let v = head.len() as u32..(head.len() + value.len()) as u32;
            head.extend_from_slice(value.as_bytes());
            fields.push((n, v));
        }
        Response {
            status,
            head: head.into(),
            fields,
            body: Bytes::copy_from_slice(body),
        }
    }

    /// The first field named `name` (any case), as text; None if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| {
                self.head[n.start as usize..n.end as usize].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, v)| &self.head[v.start as usize..v.end as usize])
    }

    /// Every field named `name` (any case; the framing fields the client reads).
    fn all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> + '_ {
        self.fields
            .iter()
            .filter(move |(n, _)| {
                self.head[n.start as usize..n.end as usize].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, v)| &self.head[v.start as usize..v.end as usize])
    }
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

/// A `tchar` of RFC 9110 section 5.6.2 (header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One URL taken apart: the authority (`host[:port]`, for `Host` and for connecting) and the
/// path with its query. Spaces and control characters are refused (they would break the
/// request line).
fn split_url(url: &str) -> Result<(&str, &str), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(format!("{url:?}: only http:// URLs")))?;
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::Url(format!(
            "{url:?}: spaces or control characters"
        )));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Url(format!("{url:?}: no host")));
    }
    Ok((authority, path))
}

/// One HTTP/1.1 connection: the socket, and what was read past the last response (nothing, as
/// requests are not pipelined; anything there makes the connection unusable).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    _open: OpenConnection,
}

/// How a response's body ends (RFC 9112 section 6.3).
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

impl Conn {
    /// Reads more into the buffer; an error at the connection's end.
    async fn fill(&mut self) -> Result<usize, HttpError> {
        if self.buf.capacity() - self.buf.len() < READ_BYTES {
            self.buf.reserve(READ_BYTES);
        }
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        Ok(n)
    }

    /// Writes `request` and reads the whole response; whether the connection may be used again.
    async fn exchange(
        &mut self,
        request: &[u8],
        body_max: usize,
    ) -> Result<(Response, bool), HttpError> {
        if !self.buf.is_empty() {
            return Err(HttpError::Io(
                "the server sent data nobody asked for".into(),
            ));
        }
        self.stream
            .write_all(request)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        // Interim responses (1xx) are read and skipped.
        let (status, version, head, fields) = loop {
            let parsed = self.read_head().await?;
            if !(100..200).contains(&parsed.0) || parsed.0 == 101 {
                break parsed;
            }
        };
        let mut response = Response {
            status,
            head,
            fields,
            body: Bytes::new(),
        };
        let connection_tokens = |token: &str| {
            response.all("connection").any(|v| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
        };
        let mut reusable = if version == 1 {
            !connection_tokens("close")
        } else {
            connection_tokens("keep-alive")
        };
        let framing = if status == 204 || status == 304 {
            Framing::None
        } else if let Some(te) = response.all("transfer-encoding").last() {
            // Chunked must be the last coding; anything else is read to the close.
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            let mut length = None;
            for v in response.all("content-length") {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .ok_or_else(|| HttpError::Io("a malformed Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Io("conflicting Content-Lengths".into()));
                }
                length = Some(n);
            }
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        response.body = match framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) => {
                if n > body_max as u64 {
                    return Err(HttpError::TooLarge(body_max));
                }
                let n = n as usize;
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if self.fill().await? == 0 {
                        return Err(HttpError::Io("the body ended early".into()));
                    }
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => self.read_chunked(body_max).await?,
            Framing::Close => {
                reusable = false;
                while self.fill().await? > 0 {
                    if self.buf.len() > body_max {
                        return Err(HttpError::TooLarge(body_max));
                    }
                }
                self.buf.split().freeze()
            }
        };
        Ok((response, reusable && self.buf.is_empty()))
    }

    /// The next response head: status, minor version, the head's bytes and its fields.
    #[allow(clippy::type_complexity)]
    async fn read_head(
        &mut self,
    ) -> Result<(u16, u8, Bytes, Vec<(Range<u32>, Range<u32>)>), HttpError> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let base = self.buf.as_ptr() as usize;
                        let at = |s: &[u8]| {
                            let from = (s.as_ptr() as usize - base) as u32;
                            from..from + s.len() as u32
                        };
                        let fields = r
                            .headers
                            .iter()
                            .map(|h| (at(h.name.as_bytes()), at(h.value)))
                            .collect();
                        let (status, version) = (r.code.unwrap_or(0), r.version.unwrap_or(1));
                        let head = self.buf.split_to(n).freeze();
                        return Ok((status, version, head, fields));
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > HEAD_BYTES_MAX {
                            return Err(HttpError::Io(format!(
                                "a response head over {HEAD_BYTES_MAX} bytes"
                            )));
                        }
                    }
                    Err(e) => return Err(HttpError::Io(format!("a malformed response: {e}"))),
                }
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Io(if self.buf.is_empty() {
                    "the connection closed".into()
                } else {
                    "the connection closed within a response head".into()
                }));
            }
        }
    }

    /// A chunked body, trailers skipped.
    async fn read_chunked(&mut self, body_max: usize) -> Result<Bytes, HttpError> {
        let mut body = BytesMut::new();
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() <= CHUNK_LINE_BYTES_MAX => {
                        if self.fill().await? == 0 {
                            return Err(HttpError::Io("the body ended early".into()));
                        }
                    }
                    _ => return Err(HttpError::Io("a malformed chunk size".into())),
                }
            };
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > body_max as u64 {
                return Err(HttpError::TooLarge(body_max));
            }
            let want = size as usize + 2;
            while self.buf.len() < want {
                self.buf.reserve(want - self.buf.len());
                if self.fill().await? == 0 {
                    return Err(HttpError::Io("the body ended early".into()));
                }
            }
            body.extend_from_slice(&self.buf[..size as usize]);
            if &self.buf[size as usize..want] != b"\r\n" {
                return Err(HttpError::Io("a chunk without its CRLF".into()));
            }
            self.buf.advance(want);
        }
        // Trailer fields, up to the empty line.
        loop {
            match self.buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(body.freeze());
                }
                Some(i) => self.buf.advance(i + 2),
                None if self.buf.len() <= CHUNK_LINE_BYTES_MAX => {
                    if self.fill().await? == 0 {
                        return Err(HttpError::Io("the trailers ended early".into()));
                    }
                }
                None => return Err(HttpError::Io("a trailer line too long".into())),
            }
        }
    }
}

struct Pool {
    busy: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
}

/// The client: pools per server, a connection tracker, the settings.
pub struct Client {
    config: HttpClient,
    route: Route,
    tracker: Arc<ConnectionTracker>,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    resolved: Mutex<HashMap<String, SocketAddr>>,
}

impl Client {
    pub fn new(config: HttpClient, route: Route, tracker: Arc<ConnectionTracker>) -> Client {
        Client {
            config,
            route,
            tracker,
            pools: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
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

    /// The request's bytes: its line in absolute form to a proxy or origin form to a server,
    /// `Host`, the user (when it is a valid field value), and `Connection: close` when
    /// connections are not reused.
    fn request(&self, target: &str, authority: &str, user: &str) -> Vec<u8> {
        let mut r = Vec::with_capacity(target.len() + authority.len() + user.len() + 96);
        r.extend_from_slice(b"GET ");
        r.extend_from_slice(target.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        r.extend_from_slice(authority.as_bytes());
        r.extend_from_slice(b"\r\n");
        let name = &self.config.user_header;
        if !name.is_empty()
            && !user.is_empty()
            && user
                .bytes()
                .all(|b| b == b'\t' || (b' '..0x7f).contains(&b))
        {
            r.extend_from_slice(name.as_bytes());
            r.extend_from_slice(b": ");
            r.extend_from_slice(user.trim().as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        if self.config.connection == HttpConnection::PerRequest {
            r.extend_from_slice(b"Connection: close\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    async fn get_unbounded(
        &self,
        url: &str,
        user: &str,
        index: u64,
    ) -> Result<Response, HttpError> {
        let (authority, path) = split_url(url)?;
        let (server, target) = match &self.route {
            Route::Proxy(proxies) if !proxies.is_empty() => {
                (proxies[(index % proxies.len() as u64) as usize], url)
            }
            Route::Proxy(_) => return Err(HttpError::Connect("no proxy".into())),
            Route::Direct => (self.resolve(authority).await?, path),
        };
        let request = self.request(target, authority, user);
        let reuse = self.config.connection == HttpConnection::Reuse;
        let pool = self.pool(server);
        let _busy: OwnedSemaphorePermit = pool
            .busy
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HttpError::Connect("the client is closing".into()))?;
        let pooled = if reuse {
            pool.idle.lock().unwrap().pop()
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(c) => c,
            None => self.connect(server).await?,
        };
        let limit = self.config.body_bytes_max;
        let mut result = connection.exchange(&request, limit).await;
        if reused && matches!(result, Err(HttpError::Io(_))) {
            // A kept-alive connection the server had closed meanwhile: like a browser, send an
            // idempotent request again once, on a new connection.
            connection = self.connect(server).await?;
            result = connection.exchange(&request, limit).await;
        }
        let (response, reusable) = result?;
        if reuse && reusable {
            let mut idle = pool.idle.lock().unwrap();
            if idle.len() < self.config.connections_per_target as usize {
                idle.push(connection);
            }
        }
        Ok(response)
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

    async fn connect(&self, server: SocketAddr) -> Result<Conn, HttpError> {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| HttpError::Connect(format!("{server}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            _open: self.tracker.opened(),
        })
    }
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
