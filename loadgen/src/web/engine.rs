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
use crate::metrics::{LiveFigures, Recorder, RecorderState};
use crate::OpKind;

/// Requests handed from the source's thread to the engine at once: one wake-up per batch, not
/// per request.
pub const BATCH: usize = 256;
/// Batches read ahead of the open loop, at most.
pub const BATCHES_AHEAD: usize = 16;

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
    /// Closed loop: this many clients, each sending the trace's next request as soon as its
    /// last one is answered (the trace's times ignored; latency from each request's start).
    pub closed: Option<u32>,
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
    /// Requests intended within the duration but not started by its end, because the target or
    /// the in-flight limit held them back (counted from the batch at hand; later batches are not
    /// read).
    pub unsent: u64,
    pub started_at: SystemTime,
    pub elapsed: Duration,
}

/// Runs `requests` on a thread of its own, handing them over in batches through a bounded
/// channel.
pub fn spawn_source<I>(requests: I) -> mpsc::Receiver<Vec<WebRequest>>
where
    I: Iterator<Item = WebRequest> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BATCHES_AHEAD);
    std::thread::Builder::new()
        .name("web-source".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for r in requests {
                batch.push(r);
                // A batch never waits long for its last requests: a slow trace (the log's own
                // timing) sends what it has once the first of it is due soon.
                if batch.len() == BATCH {
                    // The engine is done (its duration is over, or it was dropped).
                    if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
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
    tracker: Arc<ConnectionTracker>,
    /// Requests sent, and how many of them earlier deltas carried.
    sent: AtomicU64,
    sent_handed: AtomicU64,
    start: Instant,
}

/// What a web engine recorded since its previous delta: an agent streams these to its
/// coordinator, which merges them exactly (the recorder as in [`crate::engine::Delta`];
/// outcomes and counts add up).
#[derive(Debug)]
pub struct WebDelta {
    pub recorder: RecorderState,
    pub outcomes: Outcomes,
    /// Requests sent since the previous delta.
    pub sent: u64,
    /// So far in this engine (peaks do not add up over time).
    pub connections: ConnectionStats,
}

/// What is called once a second: the live figures for a progress line, and, when streaming,
/// everything recorded since the last call.
struct Ticks<P, D> {
    progress: P,
    on_delta: Option<D>,
}

impl<P: FnMut(&LiveFigures, Duration), D: FnMut(WebDelta)> Ticks<P, D> {
    fn tick(&mut self, shared: &Shared) {
        let elapsed = shared.start.elapsed();
        let live = shared.recorder.lock().unwrap().live_at(elapsed);
        (self.progress)(&live, elapsed);
        if let Some(on_delta) = &mut self.on_delta {
            let recorder = shared.recorder.lock().unwrap().take_delta_state();
            let outcomes = std::mem::take(&mut *shared.outcomes.lock().unwrap());
            let sent = shared.sent.load(Ordering::Relaxed);
            let handed = shared.sent_handed.swap(sent, Ordering::Relaxed);
            on_delta(WebDelta {
                recorder,
                outcomes,
                sent: sent - handed,
                connections: shared.connections(),
            });
        }
    }
}

/// Runs the requests to the duration's end (or the source's). `progress` is called about once a
/// second with the live figures and the time elapsed.
pub async fn run(
    config: WebEngineConfig,
    requests: mpsc::Receiver<Vec<WebRequest>>,
    progress: impl FnMut(&LiveFigures, Duration),
) -> WebRunOutput {
    run_streaming(config, requests, progress, None::<fn(WebDelta)>).await
}

/// [`run`], and with `on_delta` about once a second everything recorded since the previous call
/// is handed over instead of kept: the returned output then holds only the rest (its recorder,
/// outcomes and `sent`; `unsent`, `source_left` and the times are the run's).
pub async fn run_streaming(
    config: WebEngineConfig,
    mut requests: mpsc::Receiver<Vec<WebRequest>>,
    progress: impl FnMut(&LiveFigures, Duration),
    on_delta: Option<impl FnMut(WebDelta)>,
) -> WebRunOutput {
    let tracker = Arc::new(ConnectionTracker::default());
    let started_at = SystemTime::now();
    let shared = Arc::new(Shared {
        client: Client::new(config.client.clone(), config.route.clone(), tracker.clone()),
        recorder: Mutex::new(Recorder::new(config.warmup)),
        outcomes: Mutex::new(Outcomes::default()),
        in_flight_peak: AtomicU64::new(0),
        tracker,
        sent: AtomicU64::new(0),
        sent_handed: AtomicU64::new(0),
        start: Instant::now(),
        config,
    });
    let mut ticks = Ticks { progress, on_delta };
    if let Some(clients) = shared.config.closed {
        return closed_loop(shared, requests, clients, ticks, started_at).await;
    }
    let in_flight_max = shared.config.in_flight_max.max(1) as usize;
    let slots = Arc::new(Semaphore::new(in_flight_max));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut unsent = 0u64;
    let mut source_left = false;
    let mut pending = std::collections::VecDeque::new();
    loop {
        if pending.is_empty() {
            let next = tokio::select! {
                r = requests.recv() => r,
                _ = ticker.tick() => {
                    ticks.tick(&shared);
                    continue;
                }
            };
            let Some(batch) = next else { break };
            pending.extend(batch);
            continue;
        }
        let Some(request) = pending.pop_front() else {
            continue;
        };
        if request.at >= shared.config.duration {
            source_left = true;
            break;
        }
        // The run ends at its duration even when the target (or the in-flight limit) held the
        // requests back: those not started by then are counted, not sent late forever.
        if shared.start.elapsed() >= shared.config.duration {
            unsent = 1 + pending.len() as u64;
            source_left = true;
            break;
        }
        let due = shared.start + request.at;
        if Instant::now() < due {
            loop {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(due) => break,
                    _ = ticker.tick() => ticks.tick(&shared),
                }
            }
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => loop {
                tokio::select! {
                    biased;
                    p = slots.clone().acquire_owned() => break p,
                    _ = ticker.tick() => ticks.tick(&shared),
                }
            },
        };
        let Ok(permit) = permit else { break };
        let in_flight = (in_flight_max - slots.available_permits()) as u64;
        shared
            .in_flight_peak
            .fetch_max(in_flight, Ordering::Relaxed);
        shared.sent.fetch_add(1, Ordering::Relaxed);
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
            _ = ticker.tick() => ticks.tick(&shared),
        }
    }
    shared.output(source_left, unsent, started_at)
}

/// `clients` clients back to back over the trace's requests, in its order, to the duration's end.
async fn closed_loop(
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Vec<WebRequest>>,
    clients: u32,
    mut ticks: Ticks<impl FnMut(&LiveFigures, Duration), impl FnMut(WebDelta)>,
    started_at: SystemTime,
) -> WebRunOutput {
    let queue = Arc::new(tokio::sync::Mutex::new((
        requests,
        std::collections::VecDeque::<WebRequest>::new(),
        false,
    )));
    shared
        .in_flight_peak
        .fetch_max(u64::from(clients), Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (shared, queue) = (shared.clone(), queue.clone());
        tasks.spawn(async move {
            while shared.start.elapsed() < shared.config.duration {
                let next = {
                    let mut q = queue.lock().await;
                    if q.1.is_empty() && !q.2 {
                        match q.0.recv().await {
                            Some(batch) => q.1.extend(batch),
                            None => q.2 = true,
                        }
                    }
                    q.1.pop_front()
                };
                let Some(mut request) = next else { break };
                // In a closed loop a request is intended to start now.
                request.at = shared.start.elapsed();
                shared.sent.fetch_add(1, Ordering::Relaxed);
                execute(&shared, request).await;
            }
        });
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = ticker.tick() => ticks.tick(&shared),
        }
    }
    let source_left = {
        let q = queue.lock().await;
        !q.2 || !q.1.is_empty()
    };
    shared.output(source_left, 0, started_at)
}

impl Shared {
    fn connections(&self) -> ConnectionStats {
        ConnectionStats {
            in_flight_peak: self.in_flight_peak.load(Ordering::Relaxed),
            ..self.tracker.stats()
        }
    }

    /// What the run produced (what no delta carried), taken out of the shared state at its end.
    fn output(&self, source_left: bool, unsent: u64, started_at: SystemTime) -> WebRunOutput {
        let elapsed = self.start.elapsed();
        let recorder = std::mem::replace(
            &mut *self.recorder.lock().unwrap(),
            Recorder::new(self.config.warmup),
        );
        WebRunOutput {
            recorder,
            outcomes: std::mem::take(&mut *self.outcomes.lock().unwrap()),
            connections: self.connections(),
            sent: self.sent.load(Ordering::Relaxed)
                - self
                    .sent_handed
                    .swap(self.sent.load(Ordering::Relaxed), Ordering::Relaxed),
            source_left,
            unsent,
            started_at,
            elapsed,
        }
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
