//! The bundled origin server: the Internet of the web service's experiments, serving a
//! [`Corpus`] over HTTP/1.1 (hyper, keep-alive) with an optional miss penalty.
//!
//! `GET /obj/N.ext` (or `HEAD`) answers the object with `Content-Type`, `Content-Length`, an
//! `ETag` (its CRC-32) and `Cache-Control: max-age=3600`; `GET /manifest.json` lists the corpus
//! with every object's size and checksum (at most [`MANIFEST_ENTRIES_MAX`] of them, said in the
//! JSON); `GET /health` answers `ok`. Absolute-form targets (`GET http://host/obj/1.gif`), as a
//! proxy forwards them, are served too. Objects are generated per request and never cached:
//! the origin stands for servers far away, not for a cache.
//!
//! Client input must never crash the origin or make it hold more than its limits: connections
//! are capped (over the cap a client gets `503` and the connection is closed), request heads are
//! bounded in size (`431`) and in time (the connection is closed), and anything unexpected gets
//! a 4xx. A connection idle between requests for longer than the header-read timeout is closed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OnceCell, Semaphore};
use tokio::task::JoinSet;

use super::corpus::{ContentType, Corpus, CorpusError, ManifestEntry, ObjectTable};

/// Most entries `/manifest.json` lists: building it generates every listed body once (for its
/// checksum), so a corpus of millions would take minutes. Clients of bigger corpora see
/// `"truncated": true` and use [`Corpus`] itself (same seed, same objects) for the rest.
pub const MANIFEST_ENTRIES_MAX: u32 = 100_000;
/// Bodies up to this size are generated on the connection's task; bigger ones on a blocking
/// thread, so one big image does not stall the other connections of a worker thread.
pub const INLINE_BODY_BYTES_MAX: usize = 16 * 1024;
/// The smallest header limit hyper accepts (its read buffer cannot be smaller).
pub const HEADER_BYTES_MIN: usize = 8 * 1024;
/// Most connections allowed at once.
pub const CONNECTIONS_MAX: usize = 1_000_000;
/// Connections being turned away (503) at once; past this they are just closed.
const REJECTIONS_IN_FLIGHT_MAX: usize = 64;
/// How long a turned-away client gets to read its 503.
const REJECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read (and dropped) from a turned-away client so that closing does not reset the
/// connection before it has read the 503.
const REJECTION_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// How long open connections get to finish their current response after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const REJECTION: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 25\r\nRetry-After: 1\r\nConnection: close\r\n\r\nover the connection limit";

/// What the origin serves and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// The corpus's seed.
    pub seed: u64,
    /// Objects in the corpus (1..=[`super::corpus::OBJECTS_MAX`]).
    pub objects: u32,
    /// The miss penalty: added to every object response (not to `/health` or the manifest).
    pub delay_ms: u64,
    /// Connections served at once; more are answered `503` and closed.
    pub connections_max: usize,
    /// Largest request head (request line and headers) read; a bigger one gets `431`. At least
    /// [`HEADER_BYTES_MIN`].
    pub header_bytes_max: usize,
    /// How long a client may take to send a request head, counted from when the connection
    /// starts waiting for it (so it is also the keep-alive idle timeout).
    pub header_read_timeout_ms: u64,
    /// Serve these objects (a trace's paths, types and sizes) instead of the corpus: `None`
    /// serves the corpus of `seed` and `objects`. The table's own seed seeds its bodies, and
    /// `/manifest.json` lists the table.
    pub table: Option<Arc<ObjectTable>>,
}

impl Default for OriginConfig {
    fn default() -> OriginConfig {
        OriginConfig {
            seed: 1,
            objects: 10_000,
            delay_ms: 0,
            connections_max: 1024,
            header_bytes_max: 16 * 1024,
            header_read_timeout_ms: 10_000,
            table: None,
        }
    }
}

impl OriginConfig {
    /// Whether every value is in range; the error names the field.
    pub fn validate(&self) -> Result<(), OriginError> {
        Corpus::new(self.seed, self.objects)?;
        let bad = |message: String| Err(OriginError::Config(message));
        if !(1..=CONNECTIONS_MAX).contains(&self.connections_max) {
            return bad(format!(
                "connections_max must be 1 to {CONNECTIONS_MAX}, not {}",
                self.connections_max
            ));
        }
        if self.header_bytes_max < HEADER_BYTES_MIN {
            return bad(format!(
                "header_bytes_max must be at least {HEADER_BYTES_MIN}, not {}",
                self.header_bytes_max
            ));
        }
        if self.header_read_timeout_ms == 0 {
            return bad("header_read_timeout_ms must be above 0".into());
        }
        // A day: longer is surely a unit mistake, and it keeps the sleep far from overflowing.
        if self.delay_ms > 86_400_000 {
            return bad(format!(
                "delay_ms must be at most 86400000 (a day), not {}",
                self.delay_ms
            ));
        }
        Ok(())
    }
}

/// Why the origin could not serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("invalid origin configuration: {0}")]
    Config(String),
}

/// `/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub seed: u64,
    /// Objects in the corpus (all of them, listed or not).
    pub objects: u32,
    /// Most entries listed ([`MANIFEST_ENTRIES_MAX`]).
    pub entries_max: u32,
    /// Whether the corpus has more objects than are listed (objects 0 to `entries_max - 1` are).
    pub truncated: bool,
    pub entries: Vec<ManifestEntry>,
}

struct State {
    corpus: Corpus,
    table: Option<Arc<ObjectTable>>,
    delay: Duration,
    /// The manifest's JSON, built on first request.
    manifest: OnceCell<Bytes>,
}

/// Serves `listener` until `shutdown` turns true (or its sender is dropped), then gives open
/// connections [`SHUTDOWN_GRACE`] to finish their responses and returns.
pub async fn serve(
    listener: TcpListener,
    config: OriginConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), OriginError> {
    config.validate()?;
    let state = Arc::new(State {
        corpus: Corpus::new(config.seed, config.objects)?,
        table: config.table.clone(),
        delay: Duration::from_millis(config.delay_ms),
        manifest: OnceCell::new(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(config.header_bytes_max)
        .keep_alive(true);
    let limit = Arc::new(Semaphore::new(config.connections_max));
    let rejections = Arc::new(Semaphore::new(REJECTIONS_IN_FLIGHT_MAX));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("origin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "origin: over the connection limit");
            if let Ok(turning_away) = rejections.clone().try_acquire_owned() {
                connections.spawn(async move {
                    let _turning_away = turning_away;
                    reject(stream).await;
                });
            }
            continue;
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(respond(&state, request).await) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                r = connection.as_mut() => r,
                _ = stopped(&mut stop) => {
                    // Finish the response under way, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "origin: connection ended: {e}");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("origin: connections still open after the shutdown grace; closing them");
        connections.abort_all();
    }
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Tells a client over the connection limit so, and closes.
async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REJECTION_TIMEOUT, async {
        stream.write_all(REJECTION).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection under its 503.
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < REJECTION_DRAIN_BYTES_MAX {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn respond(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let head = method == Method::HEAD;
    // An absolute-form target's path is its path too; the query (a proxy's own) is ignored.
    let path = request.uri().path();
    let response = match path {
        "/health" => text(StatusCode::OK, "ok"),
        "/manifest.json" => match manifest(state).await {
            Some(json) => {
                let mut response = Response::new(Full::new(json));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the manifest could not be built\n",
            ),
        },
        _ => match &state.table {
            Some(table) => match table.lookup(path) {
                Some(index) => object(state, Source::Table(table.clone(), index), &request).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            None => match state.corpus.lookup(path) {
                Some(index) => object(state, Source::Corpus(state.corpus, index), &request).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        },
    };
    if head {
        without_body(response)
    } else {
        response
    }
}

/// Where an object's bytes come from.
enum Source {
    Corpus(Corpus, u32),
    Table(Arc<ObjectTable>, u32),
}

impl Source {
    fn info(&self) -> Option<(ContentType, usize)> {
        match self {
            Source::Corpus(corpus, index) => corpus.info(*index).map(|i| (i.content_type, i.bytes)),
            Source::Table(table, index) => table.info(*index).map(|o| (o.content_type, o.bytes)),
        }
    }

    fn body(&self) -> Option<Vec<u8>> {
        match self {
            Source::Corpus(corpus, index) => corpus.body(*index),
            Source::Table(table, index) => table.body(*index),
        }
    }
}

/// One object: generated, checksummed, sent after the miss penalty.
async fn object(
    state: &State,
    source: Source,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some((content_type, bytes)) = source.info() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let generated = if bytes <= INLINE_BODY_BYTES_MAX {
        source.body()
    } else {
        tokio::task::spawn_blocking(move || source.body())
            .await
            .ok()
            .flatten()
    };
    let Some(body) = generated else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the object could not be generated\n",
        );
    };
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let etag = format!("\"{:08x}\"", crc32fast::hash(&body));
    let not_modified = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if not_modified {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let length = body.len();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type.mime()),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    response
}

/// The manifest's JSON, built once (on a blocking thread: it generates every listed body).
async fn manifest(state: &State) -> Option<Bytes> {
    let corpus = state.corpus;
    let table = state.table.clone();
    state
        .manifest
        .get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || {
                let manifest = match table {
                    Some(table) => {
                        let objects = table.len() as u32;
                        let listed = objects.min(MANIFEST_ENTRIES_MAX);
                        Manifest {
                            seed: table.seed(),
                            objects,
                            entries_max: MANIFEST_ENTRIES_MAX,
                            truncated: listed < objects,
                            entries: table.manifest().take(listed as usize).collect(),
                        }
                    }
                    None => {
                        let listed = corpus.objects().min(MANIFEST_ENTRIES_MAX);
                        Manifest {
                            seed: corpus.seed(),
                            objects: corpus.objects(),
                            entries_max: MANIFEST_ENTRIES_MAX,
                            truncated: listed < corpus.objects(),
                            entries: corpus.manifest().take(listed as usize).collect(),
                        }
                    }
                };
                serde_json::to_vec(&manifest).map(Bytes::from)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        })
        .await
        .inspect_err(|e| tracing::error!("origin: building the manifest failed: {e}"))
        .ok()
        .cloned()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A HEAD response: the GET's headers, its length included, and no body.
fn without_body(response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    use hyper::body::Body as _;
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact() {
        if parts.status != StatusCode::NOT_MODIFIED {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests;
