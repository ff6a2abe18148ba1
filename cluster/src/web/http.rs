//! HTTP/1.1 plumbing every web process shares: a server loop over hyper with a connection cap, a
//! limit on the request head and a header-read timeout, and a pooled client whose every call has
//! a timeout and a limit on the body it will read. Nothing here knows what is served.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Every response body: whole, in memory (bounded by the limits of whoever built it).
pub type Body = Full<Bytes>;

pub use hyper::Method;

/// hyper's smallest read buffer; a head limit below it is raised to it.
const READ_BUFFER_BYTES_MIN: usize = 8192;
/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections get to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A server's limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub connections_max: usize,
    pub header_bytes_max: usize,
}

/// Serves `handler` on `listener` until `shutdown` turns true. Over `connections_max` a client
/// gets a 503 and the connection is closed; a request head over `header_bytes_max` gets hyper's
/// 431, and the connection closes.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ServerLimits,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            connections.spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
                          Content-Type: text/plain\r\nContent-Length: 22\r\n\r\ntoo many connections\r\n",
                    )
                    .await;
            });
            continue;
        };
        let handler = handler.clone();
        let mut stop = shutdown.clone();
        let head = limits.header_bytes_max.max(READ_BUFFER_BYTES_MIN);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request, peer).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .max_buf_size(head)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A response with a body and its content type.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    response(status, "application/json", body)
}

/// A short plain-text error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut text = message.into();
    text.push_str("\r\n");
    response(status, "text/plain; charset=utf-8", text)
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooBig(usize),
    #[error("reading the body failed: {0}")]
    Io(String),
}

/// Reads a whole body, at most `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BodyError::TooBig(limit))
            } else {
                Err(BodyError::Io(e.to_string()))
            }
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the response is larger than {0} bytes")]
    TooBig(usize),
    #[error("{0}")]
    Http(String),
}

/// Says whether calls to an authority (`host:port`) are cut by an injected partition.
pub type Cut = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A pooled HTTP/1.1 client for calls between processes and to origins.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Body>,
    /// Calls to authorities this says are cut fail as a connection that could not be made.
    cut: Option<Cut>,
}

/// A response as the client returns it: head and whole body.
pub struct Fetched {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Client {
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Client { inner, cut: None }
    }

    /// This client, with calls to the authorities `cut` names failing (a partition).
    pub fn with_cut(mut self, cut: Cut) -> Client {
        self.cut = Some(cut);
        self
    }

    /// Sends `request` and reads the response, within `timeout` in all and at most `body_limit`
    /// bytes of body.
    pub async fn call(
        &self,
        request: Request<Body>,
        timeout: Duration,
        body_limit: usize,
    ) -> Result<Fetched, ClientError> {
        if let (Some(cut), Some(authority)) = (&self.cut, request.uri().authority()) {
            if cut(authority.as_str()) {
                return Err(ClientError::Connect(format!(
                    "{authority}: cut off by a partition"
                )));
            }
        }
        let work = async {
            let response = self.inner.request(request).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect(source_text(&e))
                } else {
                    ClientError::Http(source_text(&e))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = read_body(body, body_limit).await.map_err(|e| match e {
                BodyError::TooBig(n) => ClientError::TooBig(n),
                BodyError::Io(t) => ClientError::Http(t),
            })?;
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// A GET with a bearer token, JSON decoded, for the cluster's control plane.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let request = Request::get(url)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::default())
            .map_err(|e| ClientError::Http(e.to_string()))?;
        decode_json(
            url,
            self.call(request, timeout, CONTROL_BODY_BYTES_MAX).await?,
        )
    }

    /// A request with a JSON body and a bearer token; the answer's JSON decoded.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        url: &str,
        token: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Http(e.to_string()))?;
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        decode_json(
            url,
            self.call(request, timeout, CONTROL_BODY_BYTES_MAX).await?,
        )
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// A control-plane answer's JSON, or why not.
fn decode_json<T: serde::de::DeserializeOwned>(
    url: &str,
    fetched: Fetched,
) -> Result<T, ClientError> {
    if !fetched.status.is_success() {
        return Err(ClientError::Http(format!(
            "{url}: {} {}",
            fetched.status,
            String::from_utf8_lossy(&fetched.body).trim()
        )));
    }
    serde_json::from_slice(&fetched.body).map_err(|e| ClientError::Http(format!("{url}: {e}")))
}

/// Largest control-plane answer (process lists, status).
pub const CONTROL_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An error with its sources, one line.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
