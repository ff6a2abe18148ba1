//! The engine: turns a workload's schedule into operations against a target.
//!
//! Open loop (the default): every operation has an intended start time from the arrival process;
//! the engine starts it then (or as soon as an in-flight slot frees up) and measures latency from
//! the intended start, so a stalled server shows as latency, never as missing samples
//! (no coordinated omission). Closed loop: N sessions run operations back to back, for
//! comparison. Front ends are picked round robin, as DNS would. The engine never buffers the whole
//! schedule: it is generated lazily, and in-flight operations are bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::drivers::smtp::{SmtpClient, SmtpDriver};
use crate::drivers::{imap, pop3, ConnectionStats, ConnectionTracker, OpError, SessionResult};
use crate::ledger::{self, Ledger};
use crate::message;
use crate::metrics::{LiveFigures, Recorder};
use crate::workload::{Planned, PlannedOp, Schedule, Share, Workload};
use crate::{OpKind, Target};

/// The largest `loadgen.in_flight_max`.
pub const IN_FLIGHT_LIMIT: u32 = 1_000_000;

/// How the load generator behaves as a client: how much it runs at once and how it connects
/// (the experiment's `[loadgen]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    /// Open loop: operations in flight at most. Beyond it, operations wait for a slot; their
    /// latency still counts from the intended start.
    pub in_flight_max: u32,
    pub smtp: SmtpClient,
    /// IMAP sessions MOVE what they read to this folder instead of expunging it.
    #[serde(default)]
    pub imap_archive: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            in_flight_max: 2_048,
            smtp: SmtpClient::default(),
            imap_archive: None,
        }
    }
}

impl ClientConfig {
    /// This agent's part when the load is split `count` ways.
    pub fn share(&self, count: u32) -> ClientConfig {
        ClientConfig {
            in_flight_max: self.in_flight_max.div_ceil(count.max(1)),
            smtp: self.smtp.share(count),
            imap_archive: self.imap_archive.clone(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineConfig {
    pub target: Target,
    pub workload: Workload,
    pub seed: u64,
    pub share: Share,
    /// Prefix of every generated message id, unique per run.
    pub run_id: String,
    pub client: ClientConfig,
    /// Keep a record of every acknowledged message for the correctness check; without one (the
    /// check off, or nothing to read mail back with) only their number is kept.
    #[serde(default = "yes")]
    pub keep_ledger: bool,
}

fn yes() -> bool {
    true
}

/// What a run produced.
pub struct RunOutput {
    pub recorder: Recorder,
    /// Acknowledged messages and what sessions read back, for the correctness check.
    pub ledger: Ledger,
    /// Connections opened and the most open and in flight at once.
    pub connections: ConnectionStats,
    pub started_at: SystemTime,
    pub elapsed: Duration,
}

struct Shared {
    config: EngineConfig,
    smtp: Option<SmtpDriver>,
    recorder: Mutex<Recorder>,
    ledger: Mutex<Ledger>,
    tracker: Arc<ConnectionTracker>,
    in_flight_peak: AtomicU64,
    start: Instant,
}

/// Runs the workload to its end. `progress` is called about once a second with the live figures
/// and the time elapsed.
pub async fn run(config: EngineConfig, progress: impl FnMut(&LiveFigures, Duration)) -> RunOutput {
    run_streaming(config, progress, None::<fn(Delta)>).await
}

/// A task that is aborted when its handle is dropped.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What an engine recorded since its previous delta: an agent streams these to its coordinator,
/// which merges them (exactly, see [`Recorder::take_delta_state`]).
pub struct Delta {
    pub recorder: crate::metrics::RecorderState,
    pub ledger: Ledger,
    /// So far in this engine (not since the last delta): peaks do not add up over time.
    pub connections: ConnectionStats,
}

/// [`run`], and with `on_delta` about once a second everything recorded since the previous call
/// is handed over instead of kept: the returned output then holds only the last part.
pub async fn run_streaming(
    config: EngineConfig,
    mut progress: impl FnMut(&LiveFigures, Duration),
    mut on_delta: Option<impl FnMut(Delta)>,
) -> RunOutput {
    let tracker = Arc::new(ConnectionTracker::default());
    let smtp = (!config.target.smtp.is_empty())
        .then(|| SmtpDriver::with(&config.target.smtp, &config.client.smtp, tracker.clone()));
    let duration = Duration::from_secs_f64(config.workload.duration_s);
    let warmup = Duration::from_secs_f64(config.workload.warmup_s);
    let started_at = SystemTime::now();
    let shared = Arc::new(Shared {
        smtp,
        recorder: Mutex::new(Recorder::new(warmup)),
        ledger: Mutex::new(if config.keep_ledger {
            Ledger::default()
        } else {
            Ledger::counting()
        }),
        tracker,
        in_flight_peak: AtomicU64::new(0),
        start: Instant::now(),
        config,
    });
    let schedule = Schedule::new(
        &shared.config.workload,
        shared.config.seed,
        shared.config.share,
    )
    .with_hot_users(hot_users(&shared.config.workload, &shared.config.target));
    let driver = {
        let shared = shared.clone();
        match shared
            .config
            .workload
            .rate
            .sessions_for(shared.config.share)
        {
            Some(sessions) => {
                tokio::spawn(closed_loop(shared, schedule, sessions as usize, duration))
            }
            None => tokio::spawn(open_loop(shared, schedule)),
        }
    };
    // Dropping this future (an agent whose coordinator went away) must stop the load too, not
    // only the reporting: the driver task is aborted with it, and its operations with the task.
    let mut driver = AbortOnDrop(driver);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut driver.0 => break,
            _ = ticker.tick() => {
                let elapsed = shared.start.elapsed();
                let live = shared.recorder.lock().unwrap().live_at(elapsed);
                progress(&live, elapsed);
                if let Some(on_delta) = &mut on_delta {
                    let recorder = shared.recorder.lock().unwrap().take_delta_state();
                    let ledger = shared.ledger.lock().unwrap().take();
                    let connections = shared.connections();
                    on_delta(Delta { recorder, ledger, connections });
                }
            }
        }
    }
    let elapsed = shared.start.elapsed();
    let recorder = std::mem::replace(&mut *shared.recorder.lock().unwrap(), Recorder::new(warmup));
    let ledger = shared.ledger.lock().unwrap().take();
    RunOutput {
        recorder,
        ledger,
        connections: shared.connections(),
        started_at,
        elapsed,
    }
}

impl Shared {
    fn connections(&self) -> ConnectionStats {
        ConnectionStats {
            in_flight_peak: self.in_flight_peak.load(Ordering::Relaxed),
            ..self.tracker.stats()
        }
    }
}

async fn open_loop(shared: Arc<Shared>, schedule: Schedule) {
    let in_flight_max = shared.config.client.in_flight_max.max(1) as usize;
    let slots = Arc::new(Semaphore::new(in_flight_max));
    let mut tasks = tokio::task::JoinSet::new();
    for planned in schedule {
        tokio::time::sleep_until(shared.start + planned.at).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let in_flight = (in_flight_max - slots.available_permits()) as u64;
        shared
            .in_flight_peak
            .fetch_max(in_flight, Ordering::Relaxed);
        let shared = shared.clone();
        tasks.spawn(async move {
            let intended = shared.start + planned.at;
            execute(&shared, planned, intended).await;
            drop(permit);
        });
        // Reap finished tasks so the set stays small on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(shared: Arc<Shared>, schedule: Schedule, sessions: usize, duration: Duration) {
    shared
        .in_flight_peak
        .fetch_max(sessions as u64, Ordering::Relaxed);
    let schedule = Arc::new(Mutex::new(schedule));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let shared = shared.clone();
        let schedule = schedule.clone();
        tasks.spawn(async move {
            while shared.start.elapsed() < duration {
                let Some(mut planned) = schedule.lock().unwrap().next() else {
                    break;
                };
                // In a closed loop the operation is intended to start now.
                planned.at = shared.start.elapsed();
                let intended = Instant::now();
                execute(&shared, planned, intended).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs one operation and records it, with latency from `intended`.
async fn execute(shared: &Shared, planned: Planned, intended: Instant) {
    let kind = planned.op.kind();
    let target = &shared.config.target;
    let result: Result<(), OpError> = match &planned.op {
        PlannedOp::Smtp {
            from,
            to,
            size_bytes,
        } => {
            let id = ledger::message_id(&shared.config.run_id, planned.seq);
            let addresses: Vec<String> = to.iter().map(|&u| target.address(u)).collect();
            let sender = target.address(*from);
            let msg = {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                    shared.config.seed ^ planned.seq,
                );
                Arc::new(message::generate(
                    &id,
                    &sender,
                    &addresses,
                    *size_bytes,
                    &mut rng,
                ))
            };
            match &shared.smtp {
                Some(driver) => {
                    // Like an MTA with several addresses for a host: a front end that refuses
                    // the connection is skipped for the next (the time spent counts).
                    let n = driver.front_ends();
                    let mut r = Err(OpError::Connect("no front end".into()));
                    for k in 0..n {
                        let front = (planned.seq as usize + k) % n;
                        r = driver.send(front, &sender, &addresses, &msg).await;
                        if !matches!(r, Err(OpError::Connect(_))) {
                            break;
                        }
                    }
                    if r.is_ok() {
                        shared.ledger.lock().unwrap().ack(planned.seq, to);
                    }
                    r
                }
                None => Err(OpError::Connect("the target has no SMTP front end".into())),
            }
        }
        PlannedOp::Pop3 { user } => session(shared, kind, *user, planned.seq).await,
        PlannedOp::Imap { user } => session(shared, kind, *user, planned.seq).await,
    };
    let latency = intended.elapsed();
    if let Err(e) = &result {
        // Counted by kind in the results; the words are here (RUST_LOG=loadgen=debug).
        tracing::debug!(op = kind.name(), seq = planned.seq, error = %e, "operation failed");
    }
    let error = result.as_ref().err().map(|e| e.kind());
    shared
        .recorder
        .lock()
        .unwrap()
        .record(kind, planned.at, latency, error);
}

async fn session(shared: &Shared, kind: OpKind, user_index: u64, seq: u64) -> Result<(), OpError> {
    let target = &shared.config.target;
    let user = target.user(user_index);
    let fronts = match kind {
        OpKind::Pop3 => &target.pop3,
        _ => &target.imap,
    };
    if fronts.is_empty() {
        return Err(OpError::Connect(format!(
            "the target has no {} front end",
            kind.name()
        )));
    }
    // A front end that refuses the connection is skipped for the next, as a client with
    // several addresses for the server would.
    let mut attempt = Err(OpError::Connect("no front end".into()));
    let mut result = SessionResult::default();
    for k in 0..fronts.len() {
        let addr = fronts[(seq as usize + k) % fronts.len()];
        // A session is one connection, open for the session's length.
        let _open = shared.tracker.opened();
        attempt = match kind {
            OpKind::Pop3 => pop3::session(addr, &user, &target.password, true, &mut result).await,
            _ => {
                let after = match &shared.config.client.imap_archive {
                    Some(folder) => imap::AfterRead::MoveTo(folder),
                    None => imap::AfterRead::Expunge,
                };
                imap::session(addr, &user, &target.password, after, &mut result).await
            }
        };
        if !matches!(attempt, Err(OpError::Connect(_))) {
            break;
        }
    }
    // What was retrieved counts even when the session failed afterwards. (Deleted messages
    // were all retrieved first.)
    let mut ledger = shared.ledger.lock().unwrap();
    for v in &result.retrieved {
        ledger.read(&shared.config.run_id, user_index, v);
    }
    attempt
}

/// `skew_model = "hot-node"`: the users whose login name is homed on the first of `hot_nodes`
/// (empty for other models).
fn hot_users(workload: &Workload, target: &Target) -> Vec<u64> {
    if workload.skew_model != crate::workload::SkewModel::HotNode {
        return Vec::new();
    }
    let slots = workload.hot_nodes.unwrap_or(1);
    (0..workload.users)
        .filter(|&u| crate::workload::home_slot(&target.user(u), slots) == 0)
        .collect()
}
