//! `clusterbench agent`: a load agent. It waits for a coordinator (`clusterbench run` with
//! `[loadgen] agents` or `--agents N`), runs the share of the workload it is handed from the
//! agreed instant, and streams what it records back once a second, so the coordinator can merge
//! every agent's histograms exactly and keeps an agent's data up to the moment it is lost.
//!
//! The protocol is one JSON object per line over TCP ([`ToAgent`], [`ToCoordinator`]), each line
//! at most [`FRAME_BYTES_MAX`]:
//!
//! 1. coordinator `hello {version, token}`; agent `welcome {version, name}`, or `refused {reason}`
//!    and closes (a wrong token, or another clusterbench version);
//! 2. any number of `clock {t0_ns}` / `clock {t0_ns, agent_ns}` round trips: the coordinator
//!    estimates the agent's clock offset from the one with the shortest round trip;
//! 3. coordinator `start {config, start_at_unix_ns}` (the instant in the agent's own clock), or
//!    `start_web {job, share, start_at_unix_ns}` for a share of a web experiment; the agent sends
//!    `delta {...}` about once a second and `done {elapsed_s, web}` at the end (or `refused
//!    {reason}` when it cannot run its share, e.g. the trace is not on its host). If the
//!    coordinator goes away, the agent stops the run and waits for the next coordinator.
//!
//! One coordinator at a time: while one holds the agent, another is refused as busy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use loadgen::drivers::ConnectionStats;
use loadgen::engine::{self, AbortOnDrop, Delta, EngineConfig};
use loadgen::ledger::Ledger;
use loadgen::metrics::{LiveFigures, RecorderState};
use loadgen::web::check::Outcomes;
use loadgen::web::engine::WebDelta;
use loadgen::workload::Share;
use serde::{Deserialize, Serialize};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::AgentArgs;

/// Longest protocol line (a second's delta at a very high rate stays far below this).
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a coordinator may stay silent between its hello and its start (longer than the
/// longest `loadgen.connect_timeout_s`, for which it may be waiting on other agents).
pub const IDLE_MAX: Duration = Duration::from_secs(3_700);
/// How long one message to the coordinator may take to write during a run before the
/// coordinator counts as gone (its host died, or the network between is cut).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections an agent serves at once (one coordinator, the rest are told it is busy).
pub const SESSIONS_MAX: usize = 64;
/// How far in the future a start may be.
pub const START_DELAY_MAX: Duration = Duration::from_secs(60);
/// The protocol's version: agents and coordinators of other versions refuse each other. The
/// package version, and the wire format's revision (2: deltas carry a compact ledger of
/// acknowledged messages; 3: seven operation kinds; 4: web shares), since builds of one package version can differ on the wire.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+wire4");

/// What a coordinator says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAgent {
    Hello {
        version: String,
        token: String,
    },
    Clock {
        t0_ns: u64,
    },
    Start {
        config: Box<EngineConfig>,
        start_at_unix_ns: u64,
    },
    /// A share of a web experiment: the agent replays the same trace and sends the requests
    /// whose position is its index modulo the count.
    StartWeb {
        job: Box<crate::run::web::WebJob>,
        share: Share,
        start_at_unix_ns: u64,
    },
}

/// What an agent says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToCoordinator {
    Welcome {
        version: String,
        name: String,
    },
    Refused {
        reason: String,
    },
    Clock {
        t0_ns: u64,
        agent_ns: u64,
    },
    Delta(Box<WireDelta>),
    Done {
        elapsed_s: f64,
        /// A web share's end: requests due but never started, and whether its trace had more.
        #[serde(default)]
        web: Option<WebEnd>,
    },
}

/// What a web share adds to a delta: additive, like the recorder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WebPart {
    pub outcomes: Outcomes,
    /// Requests sent since the previous delta.
    pub sent: u64,
}

/// How a web share ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WebEnd {
    pub unsent: u64,
    pub source_left: bool,
}

/// A [`Delta`] on the wire, with the agent's live figures for the coordinator's progress line.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireDelta {
    pub elapsed_s: f64,
    pub live: LiveFigures,
    /// What was recorded since the previous delta (more than one when writes were slow);
    /// merged in order, exactly.
    pub recorders: Vec<RecorderState>,
    /// Messages acknowledged and read back since the previous delta.
    pub ledger: Ledger,
    /// Connections opened and peaks, so far in this agent's run.
    #[serde(default)]
    pub connections: ConnectionStats,
    /// A web share's outcomes and requests sent since the previous delta.
    #[serde(default)]
    pub web: Option<WebPart>,
}

impl WireDelta {
    fn empty() -> WireDelta {
        WireDelta {
            elapsed_s: 0.0,
            live: LiveFigures::default(),
            recorders: Vec::new(),
            ledger: Ledger::default(),
            connections: ConnectionStats::default(),
            web: None,
        }
    }
}

/// Nanoseconds since the Unix epoch on this host's clock.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Reads one line and parses it; `Ok(None)` at end of stream.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncBufRead + Unpin),
) -> anyhow::Result<Option<T>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(FRAME_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        line.len() <= FRAME_BYTES_MAX,
        "a protocol line is longer than {FRAME_BYTES_MAX} bytes"
    );
    Ok(Some(
        serde_json::from_slice(&line).context("a malformed protocol line")?,
    ))
}

/// Writes one message as a line.
pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    m: &impl Serialize,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(m)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    crate::run::raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.token.is_empty(), "--token must not be empty");
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "agent".into());
        if addr.ip().is_unspecified() {
            format!("{host}:{}", addr.port())
        } else {
            format!("{host}@{addr}")
        }
    });
    // The line a supervisor (or `clusterbench run --agents N`) waits for.
    println!("READY agent {addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let busy = Arc::new(AtomicBool::new(false));
    let (ran_tx, mut ran_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = ran_rx.recv(), if args.once => return Ok(()),
        };
        // Sessions end on their own (timeouts everywhere); reap the finished ones.
        while sessions.try_join_next().is_some() {}
        if sessions.len() >= SESSIONS_MAX {
            eprintln!("agent {name}: {peer} refused: {SESSIONS_MAX} connections already");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (token, name, busy, ran_tx) = (
            args.token.clone(),
            name.clone(),
            busy.clone(),
            ran_tx.clone(),
        );
        sessions.spawn(async move {
            eprintln!("agent {name}: coordinator {peer} connected");
            match session(stream, &token, &name, &busy).await {
                Ok(ran) => {
                    eprintln!("agent {name}: coordinator {peer} finished");
                    if ran {
                        let _ = ran_tx.try_send(());
                    }
                }
                Err(e) => eprintln!("agent {name}: coordinator {peer}: {e:#}"),
            }
        });
    }
}

/// Releases the agent for the next coordinator when a session that held it ends.
struct Held<'a>(&'a AtomicBool);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Serves one coordinator; `Ok(true)` when it ran a workload to its end. While one coordinator
/// holds the agent, others are refused as busy.
async fn session(
    stream: TcpStream,
    token: &str,
    name: &str,
    busy: &AtomicBool,
) -> anyhow::Result<bool> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame::<ToAgent>(&mut r))
        .await
        .context("no hello within 10 s")??;
    match hello {
        Some(ToAgent::Hello { version, token: t }) => {
            let refusal = if version != VERSION {
                Some(format!(
                    "version mismatch: this agent is clusterbench {VERSION}, the coordinator {version}"
                ))
            } else if t != token {
                Some("wrong token".to_string())
            } else if busy.swap(true, Ordering::SeqCst) {
                Some("busy: serving another coordinator".to_string())
            } else {
                None
            };
            if let Some(reason) = refusal {
                write_frame(
                    &mut w,
                    &ToCoordinator::Refused {
                        reason: reason.clone(),
                    },
                )
                .await?;
                anyhow::bail!("refused: {reason}");
            }
        }
        Some(_) => {
            write_frame(
                &mut w,
                &ToCoordinator::Refused {
                    reason: "expected hello first".into(),
                },
            )
            .await?;
            anyhow::bail!("a coordinator spoke before saying hello");
        }
        None => return Ok(false),
    }
    let _held = Held(busy);
    write_frame(
        &mut w,
        &ToCoordinator::Welcome {
            version: VERSION.into(),
            name: name.into(),
        },
    )
    .await?;
    loop {
        let frame = tokio::time::timeout(IDLE_MAX, read_frame::<ToAgent>(&mut r))
            .await
            .with_context(|| {
                format!(
                    "the coordinator said nothing for {} s before starting",
                    IDLE_MAX.as_secs()
                )
            })??;
        match frame {
            None => return Ok(false),
            Some(ToAgent::Clock { t0_ns }) => {
                write_frame(
                    &mut w,
                    &ToCoordinator::Clock {
                        t0_ns,
                        agent_ns: unix_ns(),
                    },
                )
                .await?
            }
            Some(ToAgent::Start {
                config,
                start_at_unix_ns,
            }) => {
                return drive(Load::Mail(config), start_at_unix_ns, name, r, w)
                    .await
                    .map(|()| true)
            }
            Some(ToAgent::StartWeb {
                job,
                share,
                start_at_unix_ns,
            }) => {
                return drive(Load::Web(job, share), start_at_unix_ns, name, r, w)
                    .await
                    .map(|()| true)
            }
            Some(ToAgent::Hello { .. }) => anyhow::bail!("hello twice"),
        }
    }
}

/// What the engine handed over and the coordinator has not been sent yet: deltas that pile up
/// while a write is slow are merged into one (exactly), so nothing is dropped and memory stays
/// bounded by one delta.
#[derive(Default)]
struct Pending {
    delta: Option<WireDelta>,
    live: Option<LiveFigures>,
}

impl Pending {
    /// Adds a delta to what waits; states are additive, so they simply queue up (one a second,
    /// for at most [`WRITE_TIMEOUT`] before the session gives up).
    fn add(&mut self, d: Delta) {
        let p = self.delta.get_or_insert_with(WireDelta::empty);
        p.recorders.push(d.recorder);
        p.ledger.merge(d.ledger);
        p.connections = d.connections;
    }

    fn add_web(&mut self, d: WebDelta) {
        let p = self.delta.get_or_insert_with(WireDelta::empty);
        p.recorders.push(d.recorder);
        p.connections = d.connections;
        let web = p.web.get_or_insert_with(WebPart::default);
        web.outcomes.merge(&d.outcomes);
        web.sent += d.sent;
    }

    /// What waits, stamped for sending.
    fn take(&mut self, elapsed: Duration) -> Option<WireDelta> {
        let mut d = self.delta.take()?;
        d.elapsed_s = elapsed.as_secs_f64();
        d.live = self.live.clone().unwrap_or_default();
        Some(d)
    }
}

/// What a coordinator handed over to run.
enum Load {
    Mail(Box<EngineConfig>),
    Web(Box<crate::run::web::WebJob>, Share),
}

/// How the load ended: its elapsed time and, for a web share, how it ended.
struct Finished {
    elapsed: Duration,
    web: Option<WebEnd>,
}

/// Runs the share from the agreed instant, streaming deltas, until the end or until the
/// coordinator goes away (end of stream, or a write that does not complete within
/// [`WRITE_TIMEOUT`]); in every case the load stops with the session.
async fn drive(
    load: Load,
    start_at_unix_ns: u64,
    name: &str,
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
) -> anyhow::Result<()> {
    let delay = Duration::from_nanos(start_at_unix_ns.saturating_sub(unix_ns()));
    anyhow::ensure!(
        delay <= START_DELAY_MAX,
        "the start is {:.1} s away, more than {} s",
        delay.as_secs_f64(),
        START_DELAY_MAX.as_secs()
    );
    let started = tokio::time::Instant::now() + delay;
    let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
    let ready = Arc::new(tokio::sync::Notify::new());
    let mut engine = match load {
        Load::Mail(config) => mail_load(*config, started, pending.clone(), ready.clone()),
        Load::Web(job, share) => {
            match web_load(*job, share, started, pending.clone(), ready.clone()) {
                Ok(engine) => engine,
                Err(e) => {
                    // Said to the coordinator, which names this agent and stops the run.
                    let reason = format!("{e:#}");
                    eprintln!("agent {name}: {reason}");
                    let _ = send(&mut w, ToCoordinator::Refused { reason }).await;
                    return Err(e);
                }
            }
        }
    };
    let late_ms = unix_ns().saturating_sub(start_at_unix_ns) as f64 / 1e6;
    if late_ms > 1.0 {
        eprintln!("agent {name}: the start came {late_ms:.1} ms late; starting now");
    }
    let mut closed = Vec::new();
    let mut from_coordinator = r.take(1024);
    loop {
        tokio::select! {
            finished = &mut engine => {
                let finished = finished?;
                let last = pending.lock().unwrap().take(finished.elapsed);
                if let Some(last) = last {
                    send(&mut w, ToCoordinator::Delta(Box::new(last))).await?;
                }
                send(&mut w, ToCoordinator::Done {
                    elapsed_s: finished.elapsed.as_secs_f64(),
                    web: finished.web,
                }).await?;
                return Ok(());
            }
            _ = ready.notified() => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(started);
                let delta = pending.lock().unwrap().take(elapsed);
                if let Some(d) = delta {
                    send(&mut w, ToCoordinator::Delta(Box::new(d))).await?;
                }
            }
            n = from_coordinator.read_until(b'\n', &mut closed) => {
                // The coordinator says nothing during a run: end of stream (or anything else)
                // means it is gone, and the run stops.
                anyhow::bail!("the coordinator went away during the run ({n:?})");
            }
        }
    }
}

/// A directory of this agent's own, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "clusterbench-agent-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the scratch directory {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Engine = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Finished>> + Send>>;

/// The mail engine on this runtime; aborted when the returned future is dropped.
fn mail_load(
    config: EngineConfig,
    started: tokio::time::Instant,
    pending: Arc<std::sync::Mutex<Pending>>,
    ready: Arc<tokio::sync::Notify>,
) -> Engine {
    let engine = tokio::spawn(async move {
        tokio::time::sleep_until(started).await;
        let live = pending.clone();
        let output = engine::run_streaming(
            config,
            move |figures, _| live.lock().unwrap().live = Some(figures.clone()),
            Some({
                let (pending, ready) = (pending.clone(), ready.clone());
                move |d: Delta| {
                    pending.lock().unwrap().add(d);
                    ready.notify_one();
                }
            }),
        )
        .await;
        pending.lock().unwrap().add(Delta {
            recorder: output.recorder.to_state(),
            ledger: output.ledger,
            connections: output.connections,
        });
        output.elapsed
    });
    // However the session ends, the load ends with it.
    let mut engine = AbortOnDrop(engine);
    Box::pin(async move {
        let elapsed = (&mut engine.0).await.context("the engine failed")?;
        Ok(Finished { elapsed, web: None })
    })
}

/// A web share on a thread and a single-threaded runtime of its own (as `clusterbench run`
/// drives it), stopped when the returned future is dropped. Fails at once when the trace is
/// not here and cannot be made again.
fn web_load(
    job: crate::run::web::WebJob,
    share: Share,
    started: tokio::time::Instant,
    pending: Arc<std::sync::Mutex<Pending>>,
    ready: Arc<tokio::sync::Notify>,
) -> anyhow::Result<Engine> {
    let scratch = Scratch::new()?;
    let trace = job.local_trace(&scratch.0)?;
    let (config, requests) = job.plan(&trace, share)?;
    let source = loadgen::web::engine::spawn_source(requests);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // Dropping the sender stops the load's runtime (and the scratch directory goes with it).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("web-load".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = done_tx.send(Err(anyhow::anyhow!("building the load's runtime: {e}")));
                    return;
                }
            };
            let live = pending.clone();
            let load = async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(started.into_std())).await;
                let output = loadgen::web::engine::run_streaming(
                    config,
                    source,
                    move |figures, _| live.lock().unwrap().live = Some(figures.clone()),
                    Some({
                        let (pending, ready) = (pending.clone(), ready.clone());
                        move |d: WebDelta| {
                            pending.lock().unwrap().add_web(d);
                            ready.notify_one();
                        }
                    }),
                )
                .await;
                pending.lock().unwrap().add_web(WebDelta {
                    recorder: output.recorder.to_state(),
                    outcomes: output.outcomes,
                    sent: output.sent,
                    connections: output.connections,
                });
                Finished {
                    elapsed: output.elapsed,
                    web: Some(WebEnd {
                        unsent: output.unsent,
                        source_left: output.source_left,
                    }),
                }
            };
            let finished = runtime.block_on(async move {
                tokio::select! {
                    f = load => Some(f),
                    _ = stop_rx => None,
                }
            });
            drop(scratch);
            if let Some(f) = finished {
                let _ = done_tx.send(Ok(f));
            }
        })
        .context("starting the load's thread")?;
    Ok(Box::pin(async move {
        let _stop = stop_tx;
        done_rx.await.context("the load's thread ended early")?
    }))
}

/// Writes one message to the coordinator within [`WRITE_TIMEOUT`].
async fn send(w: &mut tokio::net::tcp::OwnedWriteHalf, m: ToCoordinator) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(w, &m))
        .await
        .context("the coordinator stopped reading")?
}
