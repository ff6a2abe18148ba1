//! The web engine: requests from a source (a replayed trace) sent open loop.
//!
//! Each request starts at its intended time (or as soon as an in-flight slot frees up) and its
//! latency counts from the intended time, so a stalled proxy shows as latency, never as fewer
//! samples. The source runs on its own thread behind a bounded channel, so a trace being read
//! from disk never blocks the runtime and an hours-long replay holds a few thousand requests at
//! most. Requests intended after the run's duration are not sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::check::{self, Manifest, Outcomes};
use super::client::{Checks, Client, HttpClient, Route};
use super::WebRequest;
use crate::drivers::{ConnectionStats, ConnectionTracker};
use crate::metrics::{LiveFigures, Recorder};
use crate::OpKind;

/// Requests read ahead of the open loop, at most.
pub const READ_AHEAD: usize = 4_096;

/// What to run.
#[derive(Debug, Clone)]
pub struct WebEngineConfig {
    pub route: Route,
    pub client: HttpClient,
    /// Requests in flight at most; beyond it a request waits for a slot (the wait counts).
    pub in_flight_max: u32,
    pub warmup: Duration,
    /// Requests intended at or after this are not sent.
    pub duration: Duration,
    /// The origin's objects, to check originals against.
    pub manifest: Option<Arc<Manifest>>,
}

/// What a run produced.
pub struct WebRunOutput {
    pub recorder: Recorder,
    pub outcomes: Outcomes,
    pub connections: ConnectionStats,
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Whether the source still had requests when the duration ended.
    pub source_left: bool,
    pub started_at: SystemTime,
    pub elapsed: Duration,
}

/// Runs `requests` on a thread of its own, handing them over through a bounded channel.
pub fn spawn_source<I>(requests: I) -> mpsc::Receiver<WebRequest>
where
    I: Iterator<Item = WebRequest> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    std::thread::Builder::new()
        .name("web-source".into())
        .spawn(move || {
            for r in requests {
                // The engine is done (its duration is over, or it was dropped).
                if tx.blocking_send(r).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the request source's thread");
    rx
}

struct Shared {
    client: Client,
    config: WebEngineConfig,
    recorder: Mutex<Recorder>,
    outcomes: Mutex<Outcomes>,
    in_flight_peak: AtomicU64,
    start: Instant,
}

/// Runs the requests to the duration's end (or the source's). `progress` is called about once a
/// second with the live figures and the time elapsed.
pub async fn run(
    config: WebEngineConfig,
    mut requests: mpsc::Receiver<WebRequest>,
    mut progress: impl FnMut(&LiveFigures, Duration),
) -> WebRunOutput {
    let tracker = Arc::new(ConnectionTracker::default());
    let started_at = SystemTime::now();
    let shared = Arc::new(Shared {
        client: Client::new(config.client.clone(), config.route.clone(), tracker.clone()),
        recorder: Mutex::new(Recorder::new(config.warmup)),
        outcomes: Mutex::new(Outcomes::default()),
        in_flight_peak: AtomicU64::new(0),
        start: Instant::now(),
        config,
    });
    let in_flight_max = shared.config.in_flight_max.max(1) as usize;
    let slots = Arc::new(Semaphore::new(in_flight_max));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut sent = 0u64;
    let mut source_left = false;
    let report = |shared: &Shared, progress: &mut dyn FnMut(&LiveFigures, Duration)| {
        let elapsed = shared.start.elapsed();
        let live = shared.recorder.lock().unwrap().live_at(elapsed);
        progress(&live, elapsed);
    };
    loop {
        let next = tokio::select! {
            r = requests.recv() => r,
            _ = ticker.tick() => {
                report(&shared, &mut progress);
                continue;
            }
        };
        let Some(request) = next else { break };
        if request.at >= shared.config.duration {
            source_left = true;
            break;
        }
        let due = shared.start + request.at;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = ticker.tick() => report(&shared, &mut progress),
            }
        }
        let permit = loop {
            tokio::select! {
                p = slots.clone().acquire_owned() => break p,
                _ = ticker.tick() => report(&shared, &mut progress),
            }
        };
        let Ok(permit) = permit else { break };
        let in_flight = (in_flight_max - slots.available_permits()) as u64;
        shared.in_flight_peak.fetch_max(in_flight, Ordering::Relaxed);
        sent += 1;
        let s = shared.clone();
        tasks.spawn(async move {
            execute(&s, request).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(requests);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = ticker.tick() => report(&shared, &mut progress),
        }
    }
    let elapsed = shared.start.elapsed();
    let recorder = std::mem::replace(
        &mut *shared.recorder.lock().unwrap(),
        Recorder::new(shared.config.warmup),
    );
    let outcomes = *shared.outcomes.lock().unwrap();
    WebRunOutput {
        recorder,
        outcomes,
        connections: ConnectionStats {
            in_flight_peak: shared.in_flight_peak.load(Ordering::Relaxed),
            ..tracker.stats()
        },
        sent,
        source_left,
        started_at,
        elapsed,
    }
}

async fn execute(shared: &Shared, request: WebRequest) {
    let kind = OpKind::of_url(&request.url);
    let intended = shared.start + request.at;
    let full = shared.config.client.checks == Checks::Full;
    let result = match shared
        .client
        .get(&request.url, &request.user, request.index)
        .await
    {
        Ok(response) => {
            let mut outcomes = Outcomes::default();
            let r = check::check(
                &request.url,
                kind,
                &response,
                shared.config.manifest.as_deref(),
                full,
                &mut outcomes,
            );
            shared.outcomes.lock().unwrap().merge(&outcomes);
            r
        }
        Err(e) => Err(e),
    };
    let latency = intended.elapsed();
    let error = result.as_ref().err().map(|e| e.kind());
    if let Err(e) = &result {
        tracing::debug!(url = %request.url, error = %e, "request failed");
    }
    shared
        .recorder
        .lock()
        .unwrap()
        .record(kind, request.at, latency, error.as_deref());
}
