//! A cache partition: a process holding objects (originals and distilled versions) in memory, up
//! to a byte budget, evicting the least recently used. The front ends hash each key over the live
//! partitions (rendezvous hashing: a partition that leaves takes only its own keys with it), so
//! the partitions together behave as one virtual cache, as TranSend's did.
//!
//! `GET /o/HEXKEY` answers the object (its content type in `Content-Type`) or 404; `PUT /o/HEXKEY`
//! stores one. Keys are hex-encoded in the path so that any key (a URL and a profile) fits.
//! Everything is soft state: a restarted partition starts empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{self, Body, ServerLimits};
use super::process::{Bound, Process, ProcessArgs};
use super::proto::Endpoints;

/// Longest key (before hex encoding).
pub const KEY_BYTES_MAX: usize = 4096;
/// Longest content type kept with an object.
pub const CONTENT_TYPE_BYTES_MAX: usize = 256;

/// Objects by key, least recently used evicted first, bounded by bytes.
#[derive(Debug)]
pub struct Lru {
    bytes_max: u64,
    bytes: u64,
    clock: u64,
    entries: HashMap<Vec<u8>, Entry>,
    /// Last use → key.
    order: BTreeMap<u64, Vec<u8>>,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

#[derive(Debug)]
struct Entry {
    content_type: String,
    body: Bytes,
    used: u64,
}

impl Lru {
    pub fn new(bytes_max: u64) -> Lru {
        Lru {
            bytes_max,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// The object and its content type, marked as just used.
    pub fn get(&mut self, key: &[u8]) -> Option<(String, Bytes)> {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(key) {
            Some(e) => {
                self.order.remove(&e.used);
                e.used = clock;
                self.order.insert(clock, key.to_vec());
                self.hits += 1;
                Some((e.content_type.clone(), e.body.clone()))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores an object (replacing one of the same key), evicting the least recently used until
    /// it fits. An object larger than the whole budget is not kept.
    pub fn put(&mut self, key: Vec<u8>, content_type: String, body: Bytes) {
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.used);
            self.bytes -= Self::cost(&key, &old.body);
        }
        let cost = Self::cost(&key, &body);
        if cost > self.bytes_max {
            return;
        }
        while self.bytes + cost > self.bytes_max {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.bytes -= Self::cost(&victim, &e.body);
                self.evictions += 1;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.bytes += cost;
        self.entries.insert(
            key,
            Entry {
                content_type,
                body,
                used: self.clock,
            },
        );
    }

    /// What an object costs the budget: its body and key.
    fn cost(key: &[u8], body: &Bytes) -> u64 {
        (key.len() + body.len()) as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The path of a key at a partition.
pub fn object_path(key: &str) -> String {
    let mut path = String::with_capacity(3 + key.len() * 2);
    path.push_str("/o/");
    for b in key.as_bytes() {
        path.push_str(&format!("{b:02x}"));
    }
    path
}

fn decode_key(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > KEY_BYTES_MAX * 2 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Starts a cache partition; returns where it listens.
pub async fn start(
    args: ProcessArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Endpoints> {
    let process = Process::new(&args, shutdown.clone());
    let bound = Bound::new(args.host, Some("cache"), None).await?;
    let (admin, endpoints) = (bound.admin, bound.endpoints);
    let http_l = bound.http.expect("bound");
    let lru = Arc::new(Mutex::new(Lru::new(args.config.cache.bytes_max)));
    let object_bytes_max = args.config.cache.object_bytes_max;
    let limits = ServerLimits {
        connections_max: 4096,
        header_bytes_max: 16 * 1024,
    };
    let store = lru.clone();
    tokio::spawn(http::serve(
        http_l,
        limits,
        move |request, _peer| {
            let store = store.clone();
            async move { handle(request, store, object_bytes_max).await }
        },
        shutdown.clone(),
    ));
    let status_lru = lru.clone();
    let metrics_lru = lru.clone();
    let routes = Router::new()
        .route("/status", get(status))
        .with_state((process.clone(), status_lru));
    process.serve_admin(
        admin,
        routes,
        Arc::new(move || {
            let l = metrics_lru.lock().unwrap();
            format!(
                "# TYPE clusterbench_cache_hits counter\nclusterbench_cache_hits_total {}\n\
                 # TYPE clusterbench_cache_misses counter\nclusterbench_cache_misses_total {}\n\
                 # TYPE clusterbench_cache_bytes gauge\nclusterbench_cache_bytes {}\n# EOF\n",
                l.hits,
                l.misses,
                l.bytes()
            )
        }),
    );
    Ok(endpoints)
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    lru: Arc<Mutex<Lru>>,
    object_bytes_max: usize,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let Some(key) = path.strip_prefix("/o/").and_then(decode_key) else {
        return http::error(StatusCode::NOT_FOUND, "no such object path");
    };
    match *request.method() {
        Method::GET => match lru.lock().unwrap().get(&key) {
            Some((content_type, body)) => http::response(StatusCode::OK, &content_type, body),
            None => http::error(StatusCode::NOT_FOUND, "not cached"),
        },
        Method::PUT => {
            let content_type = request
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= CONTENT_TYPE_BYTES_MAX)
                .unwrap_or("application/octet-stream")
                .to_string();
            match http::read_body(request.into_body(), object_bytes_max).await {
                Ok(body) => {
                    lru.lock().unwrap().put(key, content_type, body);
                    http::response(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
                }
                Err(e) => http::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            }
        }
        _ => {
            let mut r = http::error(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT");
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, PUT"),
            );
            r
        }
    }
}

#[derive(serde::Serialize)]
struct CacheStatus {
    #[serde(flatten)]
    common: super::process::CommonStatus,
    objects: usize,
    bytes: u64,
    bytes_max: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

async fn status(
    State((process, lru)): State<(Arc<Process>, Arc<Mutex<Lru>>)>,
) -> Json<CacheStatus> {
    let l = lru.lock().unwrap();
    Json(CacheStatus {
        common: process.common_status(),
        objects: l.len(),
        bytes: l.bytes(),
        bytes_max: l.bytes_max,
        hits: l.hits,
        misses: l.misses,
        evictions: l.evictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let mut lru = Lru::new(100);
        lru.put(b"a".to_vec(), "t".into(), Bytes::from(vec![0; 39]));
        lru.put(b"b".to_vec(), "t".into(), Bytes::from(vec![0; 39]));
        assert!(lru.get(b"a").is_some());
        // c needs room: b, the least recently used, goes.
        lru.put(b"c".to_vec(), "t".into(), Bytes::from(vec![0; 39]));
        assert!(lru.get(b"b").is_none());
        assert!(lru.get(b"a").is_some() && lru.get(b"c").is_some());
        assert!(lru.bytes() <= 100);
        assert_eq!(lru.evictions, 1);
        // Too big for the whole budget: not kept, nothing evicted for it.
        lru.put(b"d".to_vec(), "t".into(), Bytes::from(vec![0; 200]));
        assert!(lru.get(b"d").is_none());
        assert_eq!(lru.len(), 2);
        // Replacing an object frees its old bytes.
        lru.put(b"a".to_vec(), "t".into(), Bytes::from(vec![0; 10]));
        assert_eq!(lru.bytes(), 11 + 40);
    }

    #[test]
    fn keys_round_trip_through_paths() {
        let key = "d|q25-s0.5|http://127.0.0.1:8080/obj/1.gif";
        let path = object_path(key);
        let back = decode_key(path.strip_prefix("/o/").unwrap()).unwrap();
        assert_eq!(back, key.as_bytes());
        assert_eq!(decode_key("zz"), None);
        assert_eq!(decode_key("abc"), None);
    }
}
