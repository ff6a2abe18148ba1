//! A front end: an HTTP/1.1 proxy (a browser or `curl -x` configured with it sends absolute-form
//! requests; origin-form requests with a `Host` work too). For each request it identifies the
//! user (proxy authentication or the user header), reads the user's profile (cached for
//! `profile_ttl_ms`), looks for the distilled object in the cache partitions, else the original,
//! else fetches it from the origin — only configured origins: this is not an open proxy — then
//! has a worker of the object's class distill it, picked by lottery over the manager's beacons
//! (see `lottery.rs`), tries another worker if one times out or refuses, and when none can, serves
//! the original and counts the degradation. Objects under 1 KB and types no worker handles pass
//! through. `?cb=original` asks for the original.
//!
//! Process peers: a front end that hears no beacon for `manager.beacons_missed_max` periods (plus
//! one more per front end ahead of it, so they do not all act at once) asks the node daemons
//! whether a manager runs, and if none does, starts one.
//!
//! Limits: request head (`header_bytes_max`), object size (`body_bytes_max`), connections, and
//! time (`request_timeout_ms`, `origin_timeout_ms`, `worker_timeout_ms`), each answered with the
//! proper status (431, 502, 503, 504).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, PROXY_AUTHORIZATION};
use hyper::{Method, Request, Response, StatusCode};
use rand::{Rng, SeedableRng};

use super::config::WebConfig;
use super::corpus::ContentType;
use super::http::{self, Body, ServerLimits};
use super::lottery::Lotto;
use super::process::{Bound, Process, ProcessArgs};
use super::profiles::valid_user;
use super::proto::{Endpoints, ProcessKey, Role, RunningProcess, SpawnRequest, WorkerClass};
use super::transform::{Profile, PASS_THROUGH_BYTES_MAX};
use crate::core::hashing::{fnv1a, rendezvous};

/// The path on an origin that asks for an aggregated page: `/cb-aggregate?u=URL&u=URL...` (each
/// URL percent-encoded, each on an allowed origin); an aggregation worker fetches them and
/// composes one page.
pub const AGGREGATE_PATH: &str = "/cb-aggregate";

/// Profiles a front end keeps, at most.
pub const PROFILES_CACHED_MAX: usize = 100_000;
/// The user of a request that names none.
pub const ANONYMOUS: &str = "anonymous";
/// A cache partition call's timeout (a cache that is slow is a miss).
const CACHE_TIMEOUT: Duration = Duration::from_millis(500);
/// A profile database call's timeout.
const PROFILE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after trying to restart the manager a front end waits before trying again.
const MANAGER_RESTART_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    hits_distilled: AtomicU64,
    hits_original: AtomicU64,
    origin_fetches: AtomicU64,
    distilled: AtomicU64,
    passed_through: AtomicU64,
    degraded: AtomicU64,
    undistillable: AtomicU64,
    worker_retries: AtomicU64,
    refused_origins: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    in_flight: AtomicU64,
    manager_restarts: AtomicU64,
}

struct FrontEnd {
    process: Arc<Process>,
    endpoints: Endpoints,
    lotto: Mutex<Lotto>,
    profiles: Mutex<HashMap<String, (Profile, Instant)>>,
    rng: Mutex<rand::rngs::StdRng>,
    counters: Counters,
    origin: Instant,
}

/// Starts a front end; returns where it listens.
pub async fn start(
    args: ProcessArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Endpoints> {
    let process = Process::new(&args, shutdown.clone());
    let bound = Bound::new(args.host, Some("proxy"), Some("beacons")).await?;
    let (admin, endpoints) = (bound.admin, bound.endpoints);
    let proxy = bound.http.expect("bound");
    let beacons = bound.beacons.expect("bound");
    let config = &args.config;
    let fe = Arc::new(FrontEnd {
        process: process.clone(),
        endpoints,
        lotto: Mutex::new(Lotto::new(
            config.front_end.lottery,
            config.manager.beacon_interval_ms,
        )),
        profiles: Mutex::new(HashMap::new()),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(
            0x6665_0000 ^ u64::from(args.key.id),
        )),
        counters: Counters::default(),
        origin: Instant::now(),
    });
    process.listen_beacons(beacons.clone());
    tokio::spawn(follow_beacons(fe.clone()));
    tokio::spawn(watch_manager(fe.clone()));
    let reporter = fe.clone();
    process.report_loop(beacons, move || {
        let mut r = reporter.process.report(reporter.endpoints);
        r.queue = reporter.counters.in_flight.load(Ordering::Relaxed) as u32;
        r.completed = reporter.counters.requests.load(Ordering::Relaxed);
        r.degraded = reporter.counters.degraded.load(Ordering::Relaxed);
        r
    });
    let handler_fe = fe.clone();
    tokio::spawn(http::serve(
        proxy,
        ServerLimits {
            connections_max: config.front_end.connections_max,
            header_bytes_max: config.front_end.header_bytes_max,
        },
        move |request, peer| {
            let fe = handler_fe.clone();
            async move { handle(fe, request, peer).await }
        },
        shutdown,
    ));
    let metrics_fe = fe.clone();
    let routes = Router::new()
        .route("/status", get(status))
        .with_state(fe.clone());
    process.serve_admin(admin, routes, Arc::new(move || metrics_text(&metrics_fe)));
    Ok(endpoints)
}

impl FrontEnd {
    fn config(&self) -> &WebConfig {
        &self.process.config
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Live processes of `role` from the latest beacon.
    fn others(&self, role: Role) -> Vec<(ProcessKey, Endpoints)> {
        self.process
            .beacon()
            .map(|(b, _)| {
                b.others
                    .iter()
                    .filter(|h| h.key.role == role)
                    .map(|h| (h.key, h.endpoints))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cache partition holding `key`, by rendezvous over the live partitions.
    fn partition(&self, key: &str) -> Option<SocketAddr> {
        let caches = self.others(Role::Cache);
        let ids: BTreeSet<u32> = caches.iter().map(|(k, _)| k.id).collect();
        let owner = rendezvous(fnv1a(key.as_bytes()), &ids)?;
        caches
            .iter()
            .find(|(k, _)| k.id == owner)
            .and_then(|(_, e)| e.http)
    }
}

/// Keeps the lottery's view current with every beacon heard.
async fn follow_beacons(fe: Arc<FrontEnd>) {
    let mut beacons = fe.process.subscribe();
    let mut shutdown = fe.process.shutdown.clone();
    loop {
        tokio::select! {
            changed = beacons.changed() => if changed.is_err() { return },
            () = http::stopped(&mut shutdown) => return,
        }
        let beacon = beacons.borrow_and_update().as_ref().map(|(b, _)| b.clone());
        if let Some(b) = beacon {
            let now = fe.now_ms();
            fe.lotto.lock().unwrap().on_beacon(&b.workers, now);
        }
    }
}

/// Process peers: restarts the manager when its beacons stop.
async fn watch_manager(fe: Arc<FrontEnd>) {
    let config = fe.config().clone();
    let period = Duration::from_millis(config.manager.beacon_interval_ms);
    // Front end N waits N - 1 periods more than the first, so one of them acts.
    let patience =
        period * (config.manager.beacons_missed_max + fe.process.key.id.saturating_sub(1));
    let mut shutdown = fe.process.shutdown.clone();
    let mut last_try: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            () = http::stopped(&mut shutdown) => return,
        }
        let Some((beacon, age)) = fe.process.beacon() else {
            // Never heard one: the cluster is starting; the manager is not ours to start.
            continue;
        };
        if age < patience || last_try.is_some_and(|t| t.elapsed() < MANAGER_RESTART_BACKOFF) {
            continue;
        }
        last_try = Some(Instant::now());
        restart_manager(&fe, beacon.manager_node).await;
    }
}

/// Starts a manager unless a node daemon already runs one: on the manager's last node if it
/// answers, else on the first dedicated node that does.
async fn restart_manager(fe: &FrontEnd, last_node: u32) {
    let config = fe.config();
    let token = &config.admin_token;
    let client = &fe.process.client;
    let mut alive = Vec::new();
    for n in &config.nodes {
        let url = format!("http://{}/processes", n.addr);
        match client
            .get_json::<Vec<RunningProcess>>(&url, token, Duration::from_secs(1))
            .await
        {
            Ok(list) if list.iter().any(|p| p.key == ProcessKey::MANAGER) => return,
            Ok(_) => alive.push((n.id, n.addr.clone(), n.overflow)),
            Err(_) => {}
        }
    }
    alive.sort_by_key(|(id, _, overflow)| (*id != last_node, *overflow, *id));
    let Some((node, addr, _)) = alive.first() else {
        tracing::warn!("no manager, and no node daemon answers to start one");
        return;
    };
    tracing::warn!(
        node,
        "no beacon for too long and no manager running: starting one"
    );
    let request = SpawnRequest {
        key: ProcessKey::MANAGER,
        manager_reports: None,
    };
    let url = format!("http://{addr}/spawn");
    match client
        .send_json::<RunningProcess>(Method::POST, &url, token, &request, Duration::from_secs(35))
        .await
    {
        Ok(_) => {
            fe.counters.manager_restarts.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("starting a manager on node {node} failed: {e}"),
    }
}

/// What a request asks for.
struct Target {
    authority: String,
    /// Path and query as the origin sees them (without `cb=original`).
    path: String,
    original: bool,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

async fn handle(
    fe: Arc<FrontEnd>,
    request: Request<hyper::body::Incoming>,
    _peer: SocketAddr,
) -> Response<Body> {
    fe.counters.requests.fetch_add(1, Ordering::Relaxed);
    fe.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let timeout = Duration::from_millis(fe.config().front_end.request_timeout_ms);
    let head = request.method() == Method::HEAD;
    let mut response = match tokio::time::timeout(timeout, serve(&fe, request)).await {
        Ok(r) => r,
        Err(_) => http::error(StatusCode::GATEWAY_TIMEOUT, "the request took too long"),
    };
    fe.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    if response.status().is_client_error() {
        fe.counters.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if response.status().is_server_error() {
        fe.counters.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    response.headers_mut().insert(
        hyper::header::VIA,
        HeaderValue::from_static("1.1 clusterbench"),
    );
    if head {
        let (parts, _) = response.into_parts();
        let mut r = Response::from_parts(parts, Body::default());
        r.headers_mut().remove(hyper::header::CONTENT_LENGTH);
        return r;
    }
    response
}

async fn serve(fe: &FrontEnd, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let config = fe.config();
    match *request.method() {
        Method::GET | Method::HEAD => {}
        Method::CONNECT => {
            return http::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not served: this proxy transforms plain HTTP",
            )
        }
        _ => {
            let mut r = http::error(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD");
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    }
    let target = match target_of(&request) {
        Ok(t) => t,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e),
    };
    if !config.origin_allowed(&target.authority) {
        fe.counters.refused_origins.fetch_add(1, Ordering::Relaxed);
        return http::error(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not an origin this cluster serves (not an open proxy)",
                target.authority
            ),
        );
    }
    if target.path == AGGREGATE_PATH || target.path.starts_with(&format!("{AGGREGATE_PATH}?")) {
        return aggregate(fe, &target).await;
    }
    let user = match user_of(&request, &config.front_end.user_header) {
        Ok(u) => u,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e),
    };
    let profile = profile_of(fe, &user).await;
    let url = target.url();
    let signature = signature(&profile);
    let distilled_key = format!("d|{signature}|{url}");
    if !target.original {
        if let Some((content_type, body)) = cache_get(fe, &distilled_key).await {
            fe.counters.hits_distilled.fetch_add(1, Ordering::Relaxed);
            return with_profile(
                tagged(
                    http::response(StatusCode::OK, &content_type, body),
                    "HIT",
                    "distilled",
                    None,
                ),
                &profile,
            );
        }
    }
    let original_key = format!("o|{url}");
    let (status, content_type, body, hit) = match cache_get(fe, &original_key).await {
        Some((content_type, body)) => {
            fe.counters.hits_original.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, content_type, body, true)
        }
        None => match fetch_origin(fe, &target).await {
            Ok(f) => f,
            Err(response) => return response,
        },
    };
    if status == StatusCode::OK && !hit {
        cache_put(fe, original_key, content_type.clone(), body.clone());
    }
    let x_cache = if hit { "HIT" } else { "MISS" };
    let original = |what: &str| {
        tagged(
            http::response(status, &content_type, body.clone()),
            x_cache,
            what,
            None,
        )
    };
    if status != StatusCode::OK || target.original {
        return original("original");
    }
    let Some(class) = class_of(&content_type, &profile) else {
        fe.counters.passed_through.fetch_add(1, Ordering::Relaxed);
        return original("pass-through");
    };
    if body.len() < PASS_THROUGH_BYTES_MAX {
        fe.counters.passed_through.fetch_add(1, Ordering::Relaxed);
        return original("pass-through");
    }
    match distill(fe, class, &content_type, &profile, &body).await {
        Distillation::Done {
            content_type: distilled_type,
            body: distilled,
            worker,
        } => {
            fe.counters.distilled.fetch_add(1, Ordering::Relaxed);
            cache_put(fe, distilled_key, distilled_type.clone(), distilled.clone());
            with_profile(
                tagged(
                    http::response(StatusCode::OK, &distilled_type, distilled),
                    x_cache,
                    "distilled",
                    Some(worker),
                ),
                &profile,
            )
        }
        Distillation::PassThrough => {
            fe.counters.passed_through.fetch_add(1, Ordering::Relaxed);
            original("pass-through")
        }
        Distillation::Undistillable => {
            fe.counters.undistillable.fetch_add(1, Ordering::Relaxed);
            original("undistillable")
        }
        Distillation::Degraded => {
            fe.counters.degraded.fetch_add(1, Ordering::Relaxed);
            original("degraded")
        }
    }
}

/// Marks a response with where it came from: `X-Cache` (`HIT`/`MISS`), `X-Cb` (`distilled`,
/// `pass-through`, `degraded`, `undistillable`, `original`) and the worker that distilled it.
fn tagged(
    mut r: Response<Body>,
    cache: &'static str,
    what: &str,
    worker: Option<ProcessKey>,
) -> Response<Body> {
    let h = r.headers_mut();
    h.insert("x-cache", HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(what) {
        h.insert("x-cb", v);
    }
    if let Some(w) = worker.and_then(|w| HeaderValue::from_str(&w.to_string()).ok()) {
        h.insert("x-cb-worker", w);
    }
    r
}

/// Marks a distilled response with the profile it was made for (`X-Cb-Profile: q25-s0.5`), so
/// a client can check an image's size against it.
fn with_profile(mut r: Response<Body>, profile: &Profile) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&profile.mark()) {
        r.headers_mut().insert("x-cb-profile", v);
    }
    r
}

/// The origin and path a request names: absolute-form (`GET http://host:port/path`) or
/// origin-form with `Host`.
fn target_of(request: &Request<hyper::body::Incoming>) -> Result<Target, String> {
    let uri = request.uri();
    let authority = match uri.authority() {
        Some(a) => {
            if uri.scheme_str().is_some_and(|s| s != "http") {
                return Err(format!(
                    "{}: only http:// URLs are proxied",
                    uri.scheme_str().unwrap_or_default()
                ));
            }
            a.as_str().to_string()
        }
        None => request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .ok_or("no absolute URL and no Host header: which origin?")?
            .to_string(),
    };
    let authority = if authority.contains(':') {
        authority.to_ascii_lowercase()
    } else {
        format!("{}:80", authority.to_ascii_lowercase())
    };
    let path = uri.path().to_string();
    let mut original = false;
    let query: Vec<&str> = uri
        .query()
        .map(|q| q.split('&').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let kept: Vec<&str> = query
        .into_iter()
        .filter(|p| {
            let asks = *p == "cb=original";
            original |= asks;
            !asks
        })
        .collect();
    let path = if kept.is_empty() {
        path
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    Ok(Target {
        authority,
        path,
        original,
    })
}

/// The user: from `Proxy-Authorization: Basic` (the user part), else the user header, else
/// anonymous.
fn user_of(request: &Request<hyper::body::Incoming>, user_header: &str) -> Result<String, String> {
    if let Some(auth) = request
        .headers()
        .get(PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let encoded = auth
            .strip_prefix("Basic ")
            .ok_or("Proxy-Authorization: only Basic is understood")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "Proxy-Authorization: not base64")?;
        let text = String::from_utf8(decoded).map_err(|_| "Proxy-Authorization: not UTF-8")?;
        let user = text
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        return if valid_user(&user) {
            Ok(user)
        } else {
            Err(format!("{user:?} is not a user name"))
        };
    }
    match request
        .headers()
        .get(user_header)
        .and_then(|v| v.to_str().ok())
    {
        Some(u) => {
            let u = u.trim().to_ascii_lowercase();
            if valid_user(&u) {
                Ok(u)
            } else {
                Err(format!("{u:?} is not a user name"))
            }
        }
        None => Ok(ANONYMOUS.into()),
    }
}

/// A profile's identity in cache keys: distilled versions differ per profile.
fn signature(p: &Profile) -> String {
    format!(
        "q{}-s{}-{}{}{}{}",
        p.quality,
        p.scale,
        u8::from(p.jpeg),
        u8::from(p.gif),
        u8::from(p.html),
        u8::from(p.toolbar)
    )
}

/// The worker class of a content type, when the profile wants it distilled.
fn class_of(content_type: &str, profile: &Profile) -> Option<WorkerClass> {
    match ContentType::from_mime(content_type) {
        ContentType::Jpeg if profile.jpeg => Some(WorkerClass::Jpeg),
        ContentType::Gif if profile.gif => Some(WorkerClass::Gif),
        ContentType::Html if profile.html => Some(WorkerClass::Html),
        _ => None,
    }
}

/// The user's profile: cached, else from the profile database, else the default.
async fn profile_of(fe: &FrontEnd, user: &str) -> Profile {
    let ttl = Duration::from_millis(fe.config().front_end.profile_ttl_ms);
    if let Some((p, at)) = fe.profiles.lock().unwrap().get(user) {
        if at.elapsed() < ttl {
            return p.clone();
        }
    }
    let Some(db) = fe.others(Role::Profiles).first().map(|(_, e)| e.admin) else {
        return Profile::default();
    };
    #[derive(serde::Deserialize)]
    struct Answer {
        profile: Profile,
    }
    let url = format!("http://{db}/profiles/{user}");
    let fetched = fe
        .process
        .client
        .get_json::<Answer>(&url, &fe.config().admin_token, PROFILE_TIMEOUT)
        .await;
    match fetched {
        Ok(a) => {
            let mut cache = fe.profiles.lock().unwrap();
            if cache.len() >= PROFILES_CACHED_MAX {
                cache.clear();
            }
            cache.insert(user.to_string(), (a.profile.clone(), Instant::now()));
            a.profile
        }
        // The database unreachable: the last profile known, else the default.
        Err(_) => fe
            .profiles
            .lock()
            .unwrap()
            .get(user)
            .map(|(p, _)| p.clone())
            .unwrap_or_default(),
    }
}

async fn cache_get(fe: &FrontEnd, key: &str) -> Option<(String, Bytes)> {
    let partition = fe.partition(key)?;
    let url = format!("http://{partition}{}", super::cache::object_path(key));
    let request = Request::get(url).body(Body::default()).ok()?;
    let fetched = fe
        .process
        .client
        .call(request, CACHE_TIMEOUT, fe.config().front_end.body_bytes_max)
        .await
        .ok()?;
    if fetched.status != StatusCode::OK {
        return None;
    }
    let content_type = fetched
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    Some((content_type, fetched.body))
}

/// Stores an object in its partition, in the background (a failed store is a later miss).
fn cache_put(fe: &FrontEnd, key: String, content_type: String, body: Bytes) {
    let Some(partition) = fe.partition(&key) else {
        return;
    };
    let client = fe.process.client.clone();
    tokio::spawn(async move {
        let url = format!("http://{partition}{}", super::cache::object_path(&key));
        let Ok(request) = Request::put(url)
            .header(CONTENT_TYPE, content_type)
            .body(Body::new(body))
        else {
            return;
        };
        let _ = client.call(request, CACHE_TIMEOUT, 1024).await;
    });
}

/// Fetches the original from its origin: (status, content type, body, false).
async fn fetch_origin(
    fe: &FrontEnd,
    target: &Target,
) -> Result<(StatusCode, String, Bytes, bool), Response<Body>> {
    let config = fe.config();
    let delay = fe.process.faults.upstream_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    fe.counters.origin_fetches.fetch_add(1, Ordering::Relaxed);
    let request = Request::get(target.url())
        .body(Body::default())
        .map_err(|e| http::error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let fetched = fe
        .process
        .client
        .call(
            request,
            Duration::from_millis(config.front_end.origin_timeout_ms),
            config.front_end.body_bytes_max,
        )
        .await;
    match fetched {
        Ok(f) => {
            let content_type = f
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            Ok((f.status, content_type, f.body, false))
        }
        Err(super::http::ClientError::Timeout) => Err(http::error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{} did not answer in time", target.authority),
        )),
        Err(super::http::ClientError::TooBig(n)) => Err(http::error(
            StatusCode::BAD_GATEWAY,
            format!("the object is larger than {n} bytes"),
        )),
        Err(e) => Err(http::error(
            StatusCode::BAD_GATEWAY,
            format!("{}: {e}", target.authority),
        )),
    }
}

/// An aggregated page from an aggregation worker (lottery and retries as for distillation; with
/// no worker there is no original to fall back on: 503).
async fn aggregate(fe: &FrontEnd, target: &Target) -> Response<Body> {
    let config = fe.config();
    let query = target.path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let urls: Vec<String> = query
        .split('&')
        .filter_map(|p| p.strip_prefix("u="))
        .map(percent_decode)
        .collect();
    if urls.is_empty() || urls.len() > super::worker::AGGREGATE_URLS_MAX {
        return http::error(
            StatusCode::BAD_REQUEST,
            format!(
                "give 1 to {} objects as u=URL",
                super::worker::AGGREGATE_URLS_MAX
            ),
        );
    }
    let body =
        Bytes::from(serde_json::to_vec(&serde_json::json!({ "urls": urls })).unwrap_or_default());
    let job = Job {
        path: "/aggregate",
        content_type: "application/json",
        header: None,
        body: &body,
        timeout: Duration::from_millis(config.front_end.request_timeout_ms),
    };
    let answer = ask_workers(fe, WorkerClass::Aggregate, job, |worker, a| {
        if a.status == StatusCode::OK {
            return Some(tagged(
                http::response(StatusCode::OK, "text/html; charset=utf-8", a.body),
                "MISS",
                "aggregated",
                Some(worker),
            ));
        }
        // The worker's own answer about the URLs (a refused origin, a bad gateway) stands.
        if a.status.is_client_error() || a.status == StatusCode::BAD_GATEWAY {
            let content_type = a
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            return Some(http::response(a.status, &content_type, a.body));
        }
        None
    })
    .await;
    if let Some(response) = answer {
        if response.status() == StatusCode::OK {
            fe.counters.distilled.fetch_add(1, Ordering::Relaxed);
        }
        return response;
    }
    fe.counters.degraded.fetch_add(1, Ordering::Relaxed);
    http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no aggregation worker could compose the page",
    )
}

/// `%XX` escapes and `+` decoded (invalid escapes kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Distillation {
    Done {
        content_type: String,
        body: Bytes,
        worker: ProcessKey,
    },
    PassThrough,
    Undistillable,
    Degraded,
}

/// A job for a worker: where (its path), what (type and body), and any header.
struct Job<'a> {
    path: &'static str,
    content_type: &'a str,
    header: Option<(&'static str, &'a str)>,
    body: &'a Bytes,
    timeout: Duration,
}

/// Asks workers of `class`, drawn by lottery, one after another (at most `worker_attempts`),
/// until `judge` takes an answer (`None`: a timeout or refusal, try another); `None` when no
/// worker's answer was taken.
async fn ask_workers<T>(
    fe: &FrontEnd,
    class: WorkerClass,
    job: Job<'_>,
    mut judge: impl FnMut(ProcessKey, super::http::Fetched) -> Option<T>,
) -> Option<T> {
    let config = fe.config();
    let mut tried: Vec<ProcessKey> = Vec::new();
    for attempt in 0..config.front_end.worker_attempts {
        let draw: f64 = fe.rng.lock().unwrap().random();
        let now = fe.now_ms();
        let Some((worker, addr)) = fe.lotto.lock().unwrap().pick(class, &tried, draw, now) else {
            break;
        };
        if attempt > 0 {
            fe.counters.worker_retries.fetch_add(1, Ordering::Relaxed);
        }
        tried.push(worker);
        let mut request = Request::post(format!("http://{addr}{}", job.path))
            .header(CONTENT_TYPE, job.content_type);
        if let Some((name, value)) = job.header {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Body::new(job.body.clone())) else {
            break;
        };
        let answer = fe
            .process
            .client
            .call(request, job.timeout, config.front_end.body_bytes_max)
            .await;
        match answer {
            Ok(a) => {
                let status = a.status;
                if let Some(taken) = judge(worker, a) {
                    return Some(taken);
                }
                tracing::debug!(%worker, %status, "worker refused; trying another");
            }
            Err(e) => tracing::debug!(%worker, "worker failed ({e}); trying another"),
        }
    }
    None
}

/// Has a worker of `class` distill `body`: lottery over the hints, another worker on a timeout,
/// refusal or failure, the original when none can.
async fn distill(
    fe: &FrontEnd,
    class: WorkerClass,
    content_type: &str,
    profile: &Profile,
    body: &Bytes,
) -> Distillation {
    let profile_json = serde_json::to_string(profile).unwrap_or_default();
    let job = Job {
        path: "/distill",
        content_type,
        header: Some((super::worker::PROFILE_HEADER, profile_json.as_str())),
        body,
        timeout: Duration::from_millis(fe.config().front_end.worker_timeout_ms),
    };
    ask_workers(fe, class, job, |worker, a| match a.status {
        StatusCode::OK => Some(Distillation::Done {
            content_type: a
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(content_type)
                .to_string(),
            body: a.body,
            worker,
        }),
        StatusCode::NO_CONTENT => Some(Distillation::PassThrough),
        // The object itself cannot be distilled (a corrupt image): no other worker can.
        StatusCode::UNPROCESSABLE_ENTITY => Some(Distillation::Undistillable),
        _ => None,
    })
    .await
    .unwrap_or(Distillation::Degraded)
}

fn metrics_text(fe: &FrontEnd) -> String {
    let c = &fe.counters;
    let mut out = String::new();
    for (name, v) in [
        ("requests", &c.requests),
        ("cache_hits_distilled", &c.hits_distilled),
        ("cache_hits_original", &c.hits_original),
        ("origin_fetches", &c.origin_fetches),
        ("distilled", &c.distilled),
        ("passed_through", &c.passed_through),
        ("degraded", &c.degraded),
        ("worker_retries", &c.worker_retries),
    ] {
        out.push_str(&format!(
            "# TYPE clusterbench_front_end_{name} counter\nclusterbench_front_end_{name}_total {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    out.push_str("# EOF\n");
    out
}

async fn status(State(fe): State<Arc<FrontEnd>>) -> Json<serde_json::Value> {
    let c = &fe.counters;
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let now = fe.now_ms();
    let estimates: Vec<serde_json::Value> = fe
        .process
        .beacon()
        .map(|(b, _)| {
            let lotto = fe.lotto.lock().unwrap();
            b.workers
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "worker": w.key,
                        "hinted_queue": w.queue,
                        "estimated_queue": lotto.estimated_queue(&w.key, now),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Json(serde_json::json!({
        "common": fe.process.common_status(),
        "endpoints": fe.endpoints,
        "lottery": fe.config().front_end.lottery,
        "requests": load(&c.requests),
        "in_flight": load(&c.in_flight),
        "cache_hits_distilled": load(&c.hits_distilled),
        "cache_hits_original": load(&c.hits_original),
        "origin_fetches": load(&c.origin_fetches),
        "distilled": load(&c.distilled),
        "passed_through": load(&c.passed_through),
        "degraded": load(&c.degraded),
        "undistillable": load(&c.undistillable),
        "worker_retries": load(&c.worker_retries),
        "refused_origins": load(&c.refused_origins),
        "client_errors": load(&c.client_errors),
        "server_errors": load(&c.server_errors),
        "manager_restarts": load(&c.manager_restarts),
        "workers": estimates,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(
            percent_decode("http%3A%2F%2F127.0.0.1%3A80%2Fobj%2F1.gif"),
            "http://127.0.0.1:80/obj/1.gif"
        );
        assert_eq!(percent_decode("a+b%zz%4"), "a b%zz%4");
    }

    #[test]
    fn profiles_sign_their_cache_keys() {
        let a = Profile::default();
        let b = Profile {
            scale: 0.25,
            ..Profile::default()
        };
        assert_ne!(signature(&a), signature(&b));
        assert_eq!(class_of("image/gif", &a), Some(WorkerClass::Gif));
        let off = Profile {
            gif: false,
            ..Profile::default()
        };
        assert_eq!(class_of("image/gif", &off), None);
        assert_eq!(class_of("application/octet-stream", &a), None);
    }
}
