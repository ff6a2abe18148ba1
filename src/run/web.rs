//! Web experiments: a trace replayed against the bundled SNS/TACC web cluster, a proxy or web
//! servers, with faults by process and the cluster's own figures polled.
//!
//! The trace is the experiment's `workload.trace.file`, or one synthesized into `DIR/trace.log`
//! first (long enough for the run). The bundled cluster's origin serves the trace's URLs with
//! the sizes the trace logged, and its manifest lets every original be checked byte for byte.
//! While the load runs, the manager's `/status` and every node daemon's process list are polled
//! twice a second: per-worker queue lengths, spawns, restarts, overflow nodes in use,
//! degradations, and the manager's timeline of events. Faults are carried out on processes by
//! role and index (`worker jpeg 1`): kill, pause and restart by real signals, and beacon loss,
//! a slow worker and a slow origin through the processes' fault API. Each fault gets recovery
//! figures: detection (the manager's `exit` event), respawn (a new process of that key
//! running), load hints back (the manager has the new worker's report), throughput back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use cluster::web::config::WebConfig;
use cluster::web::proto::{ProcessKey, Role, RunningProcess};
use loadgen::experiment::{Experiment, FaultAction, FaultSpec, TraceTiming};
use loadgen::trace::{clf, replay, synth};
use loadgen::web::check::{Manifest, Outcomes};
use loadgen::web::client::{Client, HttpClient, Route};
use loadgen::web::engine::{self, WebEngineConfig};
use loadgen::web::WebRequest;
use loadgen::workload::{Rate, RateShape, Share};
use loadgen::OpKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::results::{self, Outcome};
use crate::local_web::{LocalWebCluster, OriginSpec, WebClusterSpec};

/// How often the cluster is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Poll samples kept at most (about 2.8 hours at two a second); later ones are counted only.
pub const SAMPLES_MAX: usize = 20_000;
/// Manager timeline events kept at most.
pub const EVENTS_MAX: usize = 10_000;
/// Longest user name sent to the proxy.
const USER_CHARS_MAX: usize = 64;

/// What a web run adds to results.json (`web`).
#[derive(Debug, Clone, Serialize)]
pub struct WebResults {
    /// `bundled`, `proxy` or `http`.
    pub target: String,
    pub trace: TraceInfo,
    /// What the service did with the responses, and what was verified.
    pub outcomes: Outcomes,
    /// Cache hits over responses (from `X-Cache`), when the target says.
    pub hit_rate: Option<f64>,
    /// Responses that failed a check (wrong bytes, an undecodable image, a page unmunged).
    pub check_failures: u64,
    /// The bundled cluster's shape and figures at the end.
    pub cluster: Option<ClusterFigures>,
    /// How unevenly the load balancer spread the work: the standard deviation of the queue
    /// lengths of the workers of one class (classes with two or more workers, averaged), over the
    /// samples after the warmup. Lower is steadier (TranSend's corrected lottery against its
    /// naive one).
    pub queue_spread: Option<f64>,
    /// The cluster polled twice a second: per-worker queues, overflow in use, spawns.
    pub samples: Vec<Sample>,
    pub samples_dropped: u64,
    /// The manager's events during the run (spawn, exit, restart, failover, retire, overflow,
    /// release), seconds from the run's start.
    pub events: Vec<Event>,
    pub faults: Vec<WebFault>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub file: String,
    pub synthesized: bool,
    /// `trace` (the log's timing) or `rate` (log order at a constant rate).
    pub timing: String,
    pub speedup: Option<f64>,
    pub per_s: Option<f64>,
    /// Requests sent.
    pub sent: u64,
    /// Whether the trace had more requests when the run's duration ended.
    pub cut_at_duration: bool,
    /// Requests due within the run but not started by its end (the target or
    /// `loadgen.in_flight_max` held them back), at least.
    pub unsent: u64,
    /// Origin objects the manifest listed (0: no manifest, originals not compared).
    pub manifest_objects: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterFigures {
    pub nodes: u32,
    pub overflow_nodes: u32,
    pub front_ends: usize,
    pub workers: usize,
    pub cache_partitions: usize,
    pub lottery: String,
    pub cpu_model: String,
    pub spawns: u64,
    pub restarts: u64,
    pub failovers: u64,
    pub retirements: u64,
    pub degraded: u64,
    pub overflow_in_use_max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub workers: Vec<WorkerSample>,
    pub overflow_in_use: u64,
    pub spawns: u64,
    pub degraded: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerSample {
    pub key: String,
    pub queue: f64,
    pub overflow: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub t_s: f64,
    pub kind: String,
    pub process: String,
    pub node: Option<u32>,
    pub detail: String,
}

/// A fault carried out, and how the service recovered.
#[derive(Debug, Clone, Serialize)]
pub struct WebFault {
    pub index: usize,
    pub action: FaultAction,
    pub process: Option<String>,
    pub start_s: f64,
    pub end_s: Option<f64>,
    /// What was done (or why it could not be).
    pub detail: String,
    /// The manager saw the process exit.
    pub detection_s: Option<f64>,
    /// A new process of that key was running.
    pub respawn_s: Option<f64>,
    /// The manager had the new worker's load report (workers), or beaconed again (manager).
    pub hints_back_s: Option<f64>,
    /// Completed requests a second back within 10 % of the 10 s before the fault.
    pub throughput_recovered_s: Option<f64>,
    /// Originals the front ends served because no worker could distill them (degradations),
    /// from the fault's start to 10 s after its end (or its start, for an instant fault).
    pub degraded: Option<u64>,
}

/// Runs one web experiment into `out` (already created and canonical).
pub async fn run_one(
    experiment: Experiment,
    out: &Path,
) -> anyhow::Result<(serde_json::Value, Outcome)> {
    let started_at = chrono::Utc::now();
    let trace = experiment.workload.trace.clone().unwrap_or_default();
    let duration = Duration::from_secs_f64(experiment.workload.duration_s);
    let Pacing { per_s, .. } = pacing(&experiment);
    let (trace_path, synthesized) = match &trace.file {
        Some(f) => {
            let p = PathBuf::from(f);
            if !p.is_file() {
                bail!("workload.trace.file: {} is not a file", p.display());
            }
            (p, false)
        }
        None => {
            let path = out.join("trace.log");
            synthesize(
                &experiment,
                trace.synth.clone(),
                per_s,
                trace.speedup,
                &path,
            )?;
            (path, true)
        }
    };

    // The target.
    let mut cluster = None;
    let (route, bases, target_kind) = match &experiment.target {
        Some(t) if !t.proxy.is_empty() => {
            let proxies = super::resolve("target.proxy", &t.proxy).await?;
            let origin = t.origin.clone().context("target.origin")?;
            (Route::Proxy(proxies), vec![origin], "proxy")
        }
        Some(t) => {
            let bases = t.http.iter().map(|h| format!("http://{h}")).collect();
            (Route::Direct, bases, "http")
        }
        None => {
            let c = start_web_cluster(&experiment, &out.join("cluster"), &trace_path).await?;
            let proxies: Vec<_> = c
                .endpoints_of(Role::FrontEnd)
                .into_iter()
                .filter_map(|(_, e)| e.http)
                .collect();
            if proxies.is_empty() {
                c.stop().await;
                bail!("the web cluster has no front end");
            }
            let origin = format!("http://{}", c.config.origins[0]);
            cluster = Some(Arc::new(tokio::sync::Mutex::new(c)));
            (Route::Proxy(proxies), vec![origin], "bundled")
        }
    };
    let manifest = fetch_manifest(&bases[0]).await;
    eprintln!(
        "running {}: trace {}{}, {} s (warm-up {} s), {}{}",
        experiment.name,
        trace_path.display(),
        if synthesized { " (synthesized)" } else { "" },
        experiment.workload.duration_s,
        experiment.workload.warmup_s,
        match per_s {
            Some(r) => format!("in log order at {r} req/s"),
            None => format!("at the log's timing x{}", trace.speedup),
        },
        match &manifest {
            Some(m) => format!(", originals checked against {} manifest entries", m.len()),
            None => ", no origin manifest (originals not compared)".into(),
        }
    );

    // Fail early on a log that cannot be read or a bad base; each pass reopens it.
    clf::open(&trace_path)
        .with_context(|| format!("reading the trace {}", trace_path.display()))?;
    replay::Replay::new(
        Vec::<Result<clf::Entry, std::io::Error>>::new(),
        timing(per_s, trace.speedup),
        &bases[0],
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let l = &experiment.loadgen;
    let use_agents = !l.agents.is_empty() || l.local_agents > 0;
    let job = WebJob {
        trace: TraceFile::of(&trace_path, synthesized, use_agents)?,
        experiment: experiment.clone(),
        route,
        bases,
        manifest: manifest.clone(),
    };
    // Watch the cluster and carry out the faults while the load runs, timed from the load's
    // start (with agents, the instant agreed with them).
    let (started_tx, started_rx) = watch::channel(None::<(Instant, i64)>);
    let at_start = move || {
        let _ = started_tx.send(Some((
            Instant::now(),
            chrono::Utc::now().timestamp_millis(),
        )));
    };
    let watch = Arc::new(Mutex::new(Watch::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let fault_log = Arc::new(Mutex::new(Vec::<WebFault>::new()));
    if let Some(c) = &cluster {
        let (c, watch, mut started, stop_rx) = (
            c.clone(),
            watch.clone(),
            started_rx.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some((start, wall_start_ms)) = load_start(&mut started).await else {
                return;
            };
            poll(c, watch, start, wall_start_ms, stop_rx).await
        }));
    }
    if let Some(c) = &cluster {
        let (c, faults, fault_log, mut started) = (
            c.clone(),
            experiment.faults.clone(),
            fault_log.clone(),
            started_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some((start, _)) = load_start(&mut started).await else {
                return;
            };
            run_faults(c, faults, start, duration, fault_log, stop_rx).await
        }));
    }
    let progress = Arc::new(super::Progress::new(duration));
    let mut agent_reports = Vec::new();
    let output = if use_agents {
        let (output, reports) = drive_agents(&job, &progress, at_start).await?;
        agent_reports = reports;
        output
    } else {
        let (config, requests) = job.plan(&trace_path, Share { index: 0, count: 1 })?;
        let source = engine::spawn_source(requests);
        at_start();
        // The load runs on a thread and a single-threaded runtime of its own: every request's
        // tasks on one core, with no wake-ups across threads, and nothing else (polls, faults)
        // competing with it for that runtime.
        let shown = progress.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("web-load".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the load's runtime");
                let output = runtime.block_on(engine::run(config, source, move |live, elapsed| {
                    shown.update(live, elapsed)
                }));
                let _ = done_tx.send(output);
            })
            .context("starting the load's thread")?;
        done_rx.await.context("the load's thread ended early")?
    };
    progress.finish();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Undo what is still in force (a paused process, a fault API setting).
    if let Some(c) = &cluster {
        undo_all(c, &experiment.faults).await;
    }

    let summary = output.recorder.summary(output.elapsed);
    let watch = std::mem::take(&mut *watch.lock().unwrap());
    let completed: Vec<u64> = summary
        .series
        .iter()
        .map(|p| {
            OpKind::WEB
                .iter()
                .filter_map(|k| p.per_op.get(k))
                .map(|f| f.count)
                .sum()
        })
        .collect();
    let mut faults = fault_log.lock().unwrap().clone();
    for f in &mut faults {
        recovery(f, &experiment.faults, &watch, &completed);
    }
    let check_failures: u64 = summary
        .ops
        .values()
        .flat_map(|op| op.errors_by_kind.iter())
        .filter(|(k, _)| k.starts_with("check:"))
        .map(|(_, n)| *n)
        .sum();
    let cluster_figures = match &cluster {
        Some(c) => Some(figures(&*c.lock().await, &experiment, &watch)),
        None => None,
    };
    let web = WebResults {
        target: target_kind.into(),
        trace: TraceInfo {
            file: trace_path.display().to_string(),
            synthesized,
            timing: match per_s {
                Some(_) => "rate".into(),
                None => "trace".into(),
            },
            speedup: per_s.is_none().then_some(trace.speedup),
            per_s,
            sent: output.sent,
            cut_at_duration: output.source_left,
            unsent: output.unsent,
            manifest_objects: manifest.as_ref().map_or(0, Manifest::len),
        },
        outcomes: output.outcomes,
        hit_rate: output.outcomes.hit_rate(),
        check_failures,
        cluster: cluster_figures,
        queue_spread: queue_spread(&watch.samples, experiment.workload.warmup_s),
        samples: watch.samples,
        samples_dropped: watch.samples_dropped,
        events: watch.events,
        faults,
    };
    let windows = web
        .faults
        .iter()
        .map(|f| super::faults::FaultWindow {
            index: f.index,
            action: f.action,
            node: None,
            groups: None,
            process: f.process.clone(),
            start_s: f.start_s,
            end_s: f.end_s,
            error: f.detail.starts_with("not done").then(|| f.detail.clone()),
        })
        .collect();
    let mut results = results::Results::new(
        &experiment,
        started_at,
        output.elapsed,
        None,
        summary,
        windows,
        Vec::new(),
        Vec::new(),
        None,
        None,
        agent_reports,
        results::LoadgenInfo::new(&experiment, output.connections, super::file_limit()),
    );
    results.attach_web(web);
    let json = super::write_results(&results, out)?;
    if let Some(c) = cluster {
        let c = Arc::try_unwrap(c)
            .map_err(|_| anyhow::anyhow!("the web cluster is still in use"))?
            .into_inner();
        c.stop().await;
    }
    let outcome = Outcome::of(&json);
    Ok((json, outcome))
}

/// The load's start (instant, Unix ms) once it is known; None if the load never started.
async fn load_start(rx: &mut watch::Receiver<Option<(Instant, i64)>>) -> Option<(Instant, i64)> {
    let start = *rx.wait_for(Option::is_some).await.ok()?;
    start
}

/// How the log is spaced: in its order at `per_s` (None: by its own timestamps), and by a
/// changing rate when the experiment gives steps or a ramp.
struct Pacing {
    per_s: Option<f64>,
    shape: Option<RateShape>,
}

fn pacing(experiment: &Experiment) -> Pacing {
    let trace = experiment.workload.trace.clone().unwrap_or_default();
    let per_s = match (&trace.timing, &experiment.workload.rate) {
        (TraceTiming::Trace, _) => None,
        // A closed loop sends as fast as it is answered; the replay's own spacing is moot.
        (TraceTiming::Rate, Rate::Closed { .. }) => Some(1_000_000.0),
        (
            TraceTiming::Rate,
            Rate::Open {
                shape: RateShape::Constant(r),
                ..
            },
        ) => Some(*r),
        // A ramp or steps: the log in its order, spaced by the rate at each moment; the mean
        // offered rate stands for it where one figure is wanted.
        (TraceTiming::Rate, Rate::Open { shape, .. }) => Some(
            shape.expected_ops(experiment.workload.duration_s) / experiment.workload.duration_s,
        ),
    };
    // Spacing by a changing rate (None: the replay's own spacing).
    let shape = match (&trace.timing, &experiment.workload.rate) {
        (TraceTiming::Rate, Rate::Open { shape, .. })
            if !matches!(shape, RateShape::Constant(_)) =>
        {
            Some(shape.clone())
        }
        _ => None,
    };
    Pacing { per_s, shape }
}

fn timing(per_s: Option<f64>, speedup: f64) -> replay::Timing {
    match per_s {
        Some(per_s) => replay::Timing::Rate { per_s },
        None => replay::Timing::Trace { speedup },
    }
}

/// What a load agent needs to run its share of a web experiment (and what this process runs
/// when it drives the load itself): the experiment, the trace, where requests go, and the
/// origin's manifest to check originals against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebJob {
    pub experiment: Experiment,
    pub trace: TraceFile,
    pub route: Route,
    /// Origin base URLs (`http://host:port`); requests go to them in turn.
    pub bases: Vec<String>,
    pub manifest: Option<Manifest>,
}

/// The trace a web run replays. Agents replay the same file: from the same path on their own
/// host, checked by its length and CRC-32; one the run synthesized they synthesize again (the
/// same seed gives the same bytes) when it is not there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
    pub synthesized: bool,
}

impl TraceFile {
    /// The file's identity; its checksum only when agents will need it (reading a long log
    /// costs time).
    fn of(path: &Path, synthesized: bool, checksum: bool) -> anyhow::Result<TraceFile> {
        let (bytes, crc32) = if checksum {
            file_crc(path)?
        } else {
            (std::fs::metadata(path)?.len(), 0)
        };
        Ok(TraceFile {
            path: path.display().to_string(),
            bytes,
            crc32,
            synthesized,
        })
    }
}

/// A file's length and CRC-32.
fn file_crc(path: &Path) -> anyhow::Result<(u64, u32)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((bytes, hasher.finalize()))
}

impl WebJob {
    /// The engine's settings and the requests of one share: those whose position in the replay
    /// is `share.index` modulo `share.count`, at the times the whole replay gives them (so the
    /// shares together send exactly what one process would). Limits on connections and
    /// requests in flight are split over the shares.
    pub fn plan(
        &self,
        trace_path: &Path,
        share: Share,
    ) -> anyhow::Result<(
        WebEngineConfig,
        impl Iterator<Item = WebRequest> + Send + 'static,
    )> {
        let experiment = &self.experiment;
        let trace = experiment.workload.trace.clone().unwrap_or_default();
        let Pacing { per_s, shape } = pacing(experiment);
        let bases = self.bases.clone();
        anyhow::ensure!(!bases.is_empty(), "a web job without an origin");
        let count = u64::from(share.count.max(1));
        let index = u64::from(share.index);
        let replayed = Passes::new(
            trace_path.to_path_buf(),
            timing(per_s, trace.speedup),
            bases[0].clone(),
            trace.repeat,
        );
        let first_base = bases[0].clone();
        let mut arrivals = shape.map(|s| s.even_arrivals(experiment.workload.duration_s));
        let requests = replayed
            .filter(move |r| r.index % count == index)
            .map(move |mut r| {
                if let Some(arrivals) = &mut arrivals {
                    r.at =
                        Duration::try_from_secs_f64(arrivals.at(r.index)).unwrap_or(Duration::MAX);
                }
                let url = if bases.len() > 1 && r.url.starts_with(&first_base) {
                    let base = &bases[(r.index % bases.len() as u64) as usize];
                    format!("{base}{}", &r.url[first_base.len()..])
                } else {
                    r.url
                };
                WebRequest {
                    at: r.at,
                    index: r.index,
                    url,
                    user: user_name(&r.user),
                }
            });
        let config = WebEngineConfig {
            route: self.route.clone(),
            client: experiment.loadgen.http.share(share.count),
            in_flight_max: experiment
                .loadgen
                .in_flight_max
                .div_ceil(share.count.max(1))
                .max(1),
            warmup: Duration::from_secs_f64(experiment.workload.warmup_s),
            duration: Duration::from_secs_f64(experiment.workload.duration_s),
            manifest: self.manifest.clone().map(Arc::new),
            closed: experiment.workload.rate.sessions_for(share),
        };
        Ok((config, requests))
    }

    /// The trace on this host: at its path when the file there is the same one; otherwise a
    /// synthesized trace made again in `scratch`. Fails, saying what to do, when neither.
    pub fn local_trace(&self, scratch: &Path) -> anyhow::Result<PathBuf> {
        let path = PathBuf::from(&self.trace.path);
        let want = (self.trace.bytes, self.trace.crc32);
        let here = path.is_file().then(|| file_crc(&path)).transpose()?;
        if here == Some(want) {
            return Ok(path);
        }
        if !self.trace.synthesized {
            match here {
                None => bail!(
                    "the trace {} is not on this agent's host: copy it to the same path on every agent",
                    path.display()
                ),
                Some((bytes, crc)) => bail!(
                    "the trace {} on this agent's host differs from the coordinator's ({bytes} bytes, CRC-32 {crc:08x}; wanted {} bytes, {:08x}): copy the same file to every agent",
                    path.display(),
                    want.0,
                    want.1
                ),
            }
        }
        let trace = self.experiment.workload.trace.clone().unwrap_or_default();
        let again = scratch.join("trace.log");
        synthesize(
            &self.experiment,
            trace.synth.clone(),
            pacing(&self.experiment).per_s,
            trace.speedup,
            &again,
        )?;
        let made = file_crc(&again)?;
        anyhow::ensure!(
            made == want,
            "the trace synthesized again differs from the coordinator's ({} bytes, CRC-32 {:08x}; wanted {} bytes, {:08x}): are agent and coordinator the same build?",
            made.0,
            made.1,
            want.0,
            want.1
        );
        Ok(again)
    }
}

/// Runs the job's load on the agents `[loadgen]` names (or starts), each its share; the merged
/// output and what became of each agent.
async fn drive_agents(
    job: &WebJob,
    progress: &Arc<super::Progress>,
    at_start: impl FnOnce(),
) -> anyhow::Result<(engine::WebRunOutput, Vec<super::agents::AgentReport>)> {
    let l = &job.experiment.loadgen;
    let (local, addrs, token) = super::agents::endpoints(l).await?;
    let patience = Duration::from_secs_f64(l.connect_timeout_s);
    let shown = progress.clone();
    let driven = super::agents::drive(
        &addrs,
        &token,
        patience,
        super::agents::Job::Web(Box::new(job.clone())),
        at_start,
        |live, elapsed| shown.update(live, elapsed),
    )
    .await;
    drop(local);
    let (output, reports, web) = driven?;
    Ok((
        engine::WebRunOutput {
            recorder: output.recorder,
            outcomes: web.outcomes,
            connections: output.connections,
            sent: web.sent,
            source_left: web.source_left,
            unsent: web.unsent,
            started_at: output.started_at,
            elapsed: output.elapsed,
        },
        reports,
    ))
}

/// Writes a synthesized trace to `path`: the experiment's `[workload.trace.synth]` settings,
/// seeded by the experiment unless they say otherwise, and long enough for the run unless they
/// give a length.
fn synthesize(
    experiment: &Experiment,
    table: Option<toml::Table>,
    per_s: Option<f64>,
    speedup: f64,
    path: &Path,
) -> anyhow::Result<()> {
    let mut table = table.unwrap_or_default();
    table
        .entry("seed")
        .or_insert_with(|| toml::Value::Integer(experiment.seed as i64));
    let mean_per_s = table
        .get("mean_per_s")
        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        .unwrap_or(synth::SynthConfig::default().mean_per_s);
    let run_s = experiment.workload.duration_s;
    // At a constant rate the run needs this many requests; the log's timing needs its length.
    let mut needed = None;
    if !table.contains_key("duration_s") {
        let trace_s = match per_s {
            // The daily cycle makes some hours quieter than the mean: generate ample time and
            // stop at the requests the run needs.
            Some(r) => {
                needed = Some((r * run_s).ceil() as u64 + 1);
                r * run_s / mean_per_s.max(1e-9) * 4.0 + 60.0
            }
            None => run_s * speedup,
        };
        table.insert(
            "duration_s".into(),
            toml::Value::Integer(trace_s.ceil().max(1.0) as i64 + 1),
        );
    }
    let config: synth::SynthConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("workload.trace.synth: {}", e.message()))?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("workload.trace.synth: {e}"))?;
    let generator =
        synth::Synth::new(config).map_err(|e| anyhow::anyhow!("workload.trace.synth: {e}"))?;
    let file =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut lines = 0u64;
    for line in generator.lines() {
        if needed.is_some_and(|n| lines >= n) {
            break;
        }
        out.write_all(line.as_bytes())?;
        lines += 1;
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    eprintln!(
        "synthesized a trace of {lines} requests into {}",
        path.display()
    );
    Ok(())
}

/// Requests of one pass kept in memory for the next passes, at most (about 10 MB of URLs and
/// names for a typical log); a longer log is read again for each pass.
const PASS_CACHE_MAX: usize = 100_000;

/// The replay of a log, `repeat` times over: each pass starts where the last one ended (at the
/// constant rate, the next slot; at the log's timing, a second of the log after its last
/// request), with request numbers continuing. A short log is parsed once and its later passes
/// come from memory; a pass that cannot reopen the log ends the replay.
struct Passes {
    path: PathBuf,
    timing: replay::Timing,
    base: String,
    passes_left: u32,
    current: Option<Pass>,
    /// The first pass's requests as parsed, while it stays within [`PASS_CACHE_MAX`].
    cache: Option<Vec<replay::Replayed>>,
    /// `cache` holds a whole pass.
    cached: bool,
    offset: Duration,
    index_offset: u64,
    last: Option<(Duration, u64)>,
}

enum Pass {
    File(Box<dyn Iterator<Item = replay::Replayed> + Send>),
    /// The position in the cache.
    Cache(usize),
}

impl Passes {
    fn new(path: PathBuf, timing: replay::Timing, base: String, repeat: u32) -> Passes {
        Passes {
            path,
            timing,
            base,
            passes_left: repeat,
            current: None,
            cache: (repeat > 1).then(Vec::new),
            cached: false,
            offset: Duration::ZERO,
            index_offset: 0,
            last: None,
        }
    }

    /// The current pass's next request, as the log gives it.
    fn next_raw(&mut self) -> Option<replay::Replayed> {
        match self.current.as_mut()? {
            Pass::File(pass) => {
                let r = pass.next()?;
                if let Some(cache) = &mut self.cache {
                    if cache.len() < PASS_CACHE_MAX {
                        cache.push(r.clone());
                    } else {
                        self.cache = None;
                    }
                }
                Some(r)
            }
            Pass::Cache(at) => {
                let r = self.cache.as_ref()?.get(*at)?.clone();
                *at += 1;
                Some(r)
            }
        }
    }
}

impl Iterator for Passes {
    type Item = replay::Replayed;

    fn next(&mut self) -> Option<replay::Replayed> {
        loop {
            if self.current.is_some() {
                if let Some(mut r) = self.next_raw() {
                    r.at += self.offset;
                    r.index += self.index_offset;
                    self.last = Some((r.at, r.index));
                    return Some(r);
                }
                if matches!(self.current, Some(Pass::File(_))) && self.cache.is_some() {
                    self.cached = true;
                }
                self.current = None;
                let (at, index) = self.last?;
                self.index_offset = index + 1;
                self.offset = at
                    + match self.timing {
                        replay::Timing::Rate { per_s } => Duration::from_secs_f64(1.0 / per_s),
                        replay::Timing::Trace { speedup } => Duration::from_secs_f64(1.0 / speedup),
                    };
            }
            if self.passes_left == 0 {
                return None;
            }
            self.passes_left -= 1;
            if self.cached {
                self.current = Some(Pass::Cache(0));
                continue;
            }
            let reader = clf::open(&self.path).ok()?;
            let replay = replay::Replay::new(reader, self.timing, &self.base).ok()?;
            self.current = Some(Pass::File(Box::new(replay.map_while(Result::ok))));
        }
    }
}

/// The bundled web cluster the experiment describes, its origin serving the trace's URLs.
async fn start_web_cluster(
    experiment: &Experiment,
    dir: &Path,
    trace: &Path,
) -> anyhow::Result<LocalWebCluster> {
    let c = &experiment.cluster;
    let template: WebConfig = toml::Value::Table(c.web.clone())
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("cluster.web: {}", e.message()))?;
    eprintln!(
        "starting the bundled web cluster: {} node(s) + {} overflow, in {}",
        c.nodes,
        c.overflow_nodes,
        dir.display()
    );
    LocalWebCluster::start(WebClusterSpec {
        dir: dir.to_path_buf(),
        nodes: c.nodes,
        overflow_nodes: c.overflow_nodes,
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        template,
        origin: OriginSpec {
            seed: c.origin.seed,
            objects: c.origin.objects,
            delay_ms: c.origin.delay_ms,
        },
        origin_trace: Some(trace.to_path_buf()),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// The origin's manifest, if it serves one (the bundled origin does).
async fn fetch_manifest(base: &str) -> Option<Manifest> {
    let client = Client::new(
        HttpClient {
            body_bytes_max: 256 * 1024 * 1024,
            timeout_ms: 30_000,
            ..HttpClient::default()
        },
        Route::Direct,
        Default::default(),
    );
    let response = client
        .get(&format!("{base}/manifest.json"), "", 0)
        .await
        .ok()?;
    if response.status != 200 {
        return None;
    }
    Manifest::from_json(&response.body).ok()
}

/// A trace's client as a user name the proxy accepts: lower case, letters, digits and `._-@`.
fn user_name(user: &str) -> String {
    user.chars()
        .take(USER_CHARS_MAX)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct Watch {
    samples: Vec<Sample>,
    samples_dropped: u64,
    events: Vec<Event>,
    /// When each worker's load report was first seen after a given time: (t_s, key).
    reports_seen: Vec<(f64, String)>,
    /// Times the manager answered with at least one worker's load (t_s).
    manager_hints: Vec<f64>,
    overflow_in_use_max: u64,
    last: Option<serde_json::Value>,
}

async fn poll(
    cluster: Arc<tokio::sync::Mutex<LocalWebCluster>>,
    watch: Arc<Mutex<Watch>>,
    start: Instant,
    wall_start_ms: i64,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let status = cluster.lock().await.manager_status().await;
        let t_s = start.elapsed().as_secs_f64();
        let mut w = watch.lock().unwrap();
        let Some(status) = status else { continue };
        if let Some(events) = status["timeline"].as_array() {
            for e in events {
                let at_ms = e["at_ms"].as_i64().unwrap_or(0);
                if at_ms < wall_start_ms {
                    continue;
                }
                let event = Event {
                    t_s: (at_ms - wall_start_ms) as f64 / 1000.0,
                    kind: e["kind"].as_str().unwrap_or("").into(),
                    process: key_text(&e["process"]),
                    node: e["node"].as_u64().map(|n| n as u32),
                    detail: e["detail"].as_str().unwrap_or("").into(),
                };
                if !w.events.contains(&event) && w.events.len() < EVENTS_MAX {
                    w.events.push(event);
                }
            }
        }
        let mut workers = Vec::new();
        for worker in status["workers"].as_array().into_iter().flatten() {
            let key = key_text(&worker["key"]);
            if worker["reported_queue"].is_number() {
                w.reports_seen.push((t_s, key.clone()));
            }
            workers.push(WorkerSample {
                key,
                queue: worker["queue"].as_f64().unwrap_or(0.0),
                overflow: worker["overflow"].as_bool().unwrap_or(false),
            });
        }
        if !workers.is_empty() {
            w.manager_hints.push(t_s);
        }
        // Bounded: the per-report bookkeeping keeps the latest few thousand only.
        if w.reports_seen.len() > 50_000 {
            w.reports_seen.drain(..25_000);
        }
        if w.manager_hints.len() > 50_000 {
            w.manager_hints.drain(..25_000);
        }
        let overflow_in_use = status["overflow_in_use"].as_u64().unwrap_or(0);
        w.overflow_in_use_max = w.overflow_in_use_max.max(overflow_in_use);
        let sample = Sample {
            t_s,
            workers,
            overflow_in_use,
            spawns: status["spawns"].as_u64().unwrap_or(0),
            degraded: status["degraded"].as_u64().unwrap_or(0),
        };
        if w.samples.len() < SAMPLES_MAX {
            w.samples.push(sample);
        } else {
            w.samples_dropped += 1;
        }
        w.last = Some(status);
    }
}

/// A process key as JSON (`{"role": ..., "id": ...}` or a string) in its text form.
fn key_text(v: &serde_json::Value) -> String {
    match serde_json::from_value::<ProcessKey>(v.clone()) {
        Ok(k) => k.to_string(),
        Err(_) => v.as_str().map_or_else(|| v.to_string(), str::to_string),
    }
}

async fn run_faults(
    cluster: Arc<tokio::sync::Mutex<LocalWebCluster>>,
    faults: Vec<FaultSpec>,
    start: Instant,
    duration: Duration,
    log: Arc<Mutex<Vec<WebFault>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Start and end times of every fault, in order.
    let mut steps: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        steps.push((f.at_s, i, true));
        if let Some(d) = f.duration_s {
            if f.at_s + d < duration.as_secs_f64() {
                steps.push((f.at_s + d, i, false));
            }
        }
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The pid a pause stopped, to continue it.
    let mut paused: std::collections::HashMap<usize, u32> = Default::default();
    // Partitions in force, and the processes already cut (by pid): one started meanwhile (a
    // respawn) is cut too, within a poll interval.
    let mut partitions: Vec<usize> = Vec::new();
    let mut cut: std::collections::HashSet<u32> = Default::default();
    for (at_s, i, begin) in steps {
        let due = start + Duration::from_secs_f64(at_s);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = tokio::time::sleep(POLL_INTERVAL), if !partitions.is_empty() => {
                    let c = cluster.lock().await;
                    cut_processes(&c, &faults, &partitions, &mut cut).await;
                }
                _ = cluster::web::http::stopped(&mut stop) => return,
            }
        }
        let f = &faults[i];
        let c = cluster.lock().await;
        if f.action == FaultAction::Partition {
            if begin {
                partitions.push(i);
            } else {
                partitions.retain(|p| *p != i);
            }
            cut.clear();
        }
        if f.action == FaultAction::Heal {
            partitions.clear();
            cut.clear();
        }
        if begin {
            let detail = if f.action == FaultAction::Partition {
                let n = cut_processes(&c, &faults, &partitions, &mut cut).await;
                format!(
                    "nodes {} cut apart at {n} process(es)",
                    f.groups
                        .iter()
                        .flatten()
                        .map(|g| format!("{g:?}"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            } else {
                apply(&c, f, &mut paused, i).await
            };
            eprintln!(
                "  {:>4.0} s  fault {i}: {:?}{}: {detail}",
                start.elapsed().as_secs_f64(),
                f.action,
                f.process
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            );
            log.lock().unwrap().push(WebFault {
                index: i,
                action: f.action,
                process: f.process.clone(),
                start_s: start.elapsed().as_secs_f64(),
                end_s: None,
                detail,
                detection_s: None,
                respawn_s: None,
                hints_back_s: None,
                throughput_recovered_s: None,
                degraded: None,
            });
        } else if f.action == FaultAction::Partition {
            // What the partitions still in force cut, and nothing else.
            for p in c.processes().await {
                post_faults(&c, &p, serde_json::json!({"block_peers": []})).await;
            }
            cut_processes(&c, &faults, &partitions, &mut cut).await;
            if let Some(w) = log.lock().unwrap().iter_mut().find(|w| w.index == i) {
                w.end_s = Some(start.elapsed().as_secs_f64());
            }
        } else {
            undo(&c, f, &mut paused, i).await;
            if let Some(w) = log.lock().unwrap().iter_mut().find(|w| w.index == i) {
                w.end_s = Some(start.elapsed().as_secs_f64());
            }
        }
    }
}

fn signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) on a process of our cluster; a wrong pid is an error, nothing else.
    pid > 0 && unsafe { libc::kill(pid as i32, signal) } == 0
}

async fn apply(
    c: &LocalWebCluster,
    f: &FaultSpec,
    paused: &mut std::collections::HashMap<usize, u32>,
    index: usize,
) -> String {
    let key = match f.process.as_deref().map(str::parse::<ProcessKey>) {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => return format!("not done: {e}"),
        None => None,
    };
    let found = match key {
        Some(k) => c.find(k).await,
        None => None,
    };
    match f.action {
        FaultAction::Kill | FaultAction::Restart => match found {
            Some(p) if signal(p.pid, libc::SIGKILL) => format!("SIGKILL pid {}", p.pid),
            Some(p) => format!("not done: pid {} could not be signalled", p.pid),
            None => "not done: no such process running".into(),
        },
        FaultAction::Pause => match found {
            Some(p) if signal(p.pid, libc::SIGSTOP) => {
                paused.insert(index, p.pid);
                format!("SIGSTOP pid {}", p.pid)
            }
            _ => "not done: no such process running".into(),
        },
        FaultAction::SlowWorker => match found {
            Some(p) => {
                let body = serde_json::json!({"cpu_slowdown": f.factor.unwrap_or(1.0)});
                post_faults(c, &p, body).await
            }
            None => "not done: no such process running".into(),
        },
        FaultAction::BeaconLoss => {
            let body = serde_json::json!({"beacon_loss": f.loss.unwrap_or(0.0)});
            let mut n = 0;
            for p in c.processes().await {
                if post_faults(c, &p, body.clone()).await.starts_with("set") {
                    n += 1;
                }
            }
            format!("beacon loss {} at {n} process(es)", f.loss.unwrap_or(0.0))
        }
        FaultAction::OriginDelay => {
            let body = serde_json::json!({"upstream_delay_ms": f.delay_ms.unwrap_or(0)});
            let mut n = 0;
            for p in c
                .processes()
                .await
                .iter()
                .filter(|p| p.key.role == Role::FrontEnd)
            {
                if post_faults(c, p, body.clone()).await.starts_with("set") {
                    n += 1;
                }
            }
            format!(
                "origin fetches delayed {} ms at {n} front end(s)",
                f.delay_ms.unwrap_or(0)
            )
        }
        FaultAction::Heal => {
            for p in c.processes().await {
                clear_faults(c, &p).await;
            }
            "every process's faults cleared".into()
        }
        other => format!("not done: {other:?} is not a web fault"),
    }
}

async fn undo(
    c: &LocalWebCluster,
    f: &FaultSpec,
    paused: &mut std::collections::HashMap<usize, u32>,
    index: usize,
) {
    match f.action {
        FaultAction::Pause => {
            if let Some(pid) = paused.remove(&index) {
                signal(pid, libc::SIGCONT);
            }
        }
        FaultAction::SlowWorker | FaultAction::BeaconLoss | FaultAction::OriginDelay => {
            for p in c.processes().await {
                clear_faults(c, &p).await;
            }
        }
        _ => {}
    }
}

/// The nodes a process on `node` may not reach while `partitions` (indices into `faults`) are
/// in force: those in another group of any of them.
fn blocked_nodes(faults: &[FaultSpec], partitions: &[usize], node: u32) -> Vec<u32> {
    let mut blocked = std::collections::BTreeSet::new();
    for &i in partitions {
        let Some(groups) = &faults[i].groups else {
            continue;
        };
        if let Some(mine) = groups.iter().find(|g| g.contains(&node)) {
            for g in groups.iter().filter(|g| *g != mine) {
                blocked.extend(g.iter().copied());
            }
        }
    }
    blocked.into_iter().collect()
}

/// Cuts every running process not cut yet off from the nodes across the partitions in force;
/// how many it cut.
async fn cut_processes(
    c: &LocalWebCluster,
    faults: &[FaultSpec],
    partitions: &[usize],
    cut: &mut std::collections::HashSet<u32>,
) -> usize {
    let mut n = 0;
    for p in c.processes().await {
        if cut.contains(&p.pid) {
            continue;
        }
        let blocked = blocked_nodes(faults, partitions, p.node);
        if blocked.is_empty() {
            continue;
        }
        let body = serde_json::json!({ "block_peers": blocked });
        if post_faults(c, &p, body).await.starts_with("set") {
            cut.insert(p.pid);
            n += 1;
        }
    }
    n
}

/// After the load: nothing paused stays paused, no fault setting stays in force.
async fn undo_all(cluster: &Arc<tokio::sync::Mutex<LocalWebCluster>>, faults: &[FaultSpec]) {
    let c = cluster.lock().await;
    if faults.is_empty() {
        return;
    }
    for p in c.processes().await {
        signal(p.pid, libc::SIGCONT);
        clear_faults(&c, &p).await;
    }
}

async fn post_faults(c: &LocalWebCluster, p: &RunningProcess, body: serde_json::Value) -> String {
    let url = format!("http://{}/faults", p.endpoints.admin);
    match cluster::web::http::Client::new()
        .send_json::<serde_json::Value>(
            cluster::web::http::Method::POST,
            &url,
            &c.config.admin_token,
            &body,
            Duration::from_secs(5),
        )
        .await
    {
        Ok(_) => format!("set {body} at {}", p.key),
        Err(e) => format!("not done: {url}: {e}"),
    }
}

async fn clear_faults(c: &LocalWebCluster, p: &RunningProcess) {
    let url = format!("http://{}/faults", p.endpoints.admin);
    let _ = cluster::web::http::Client::new()
        .send_json::<serde_json::Value>(
            cluster::web::http::Method::DELETE,
            &url,
            &c.config.admin_token,
            &serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await;
}

/// See [`WebResults::queue_spread`].
fn queue_spread(samples: &[Sample], warmup_s: f64) -> Option<f64> {
    let mut per_sample = Vec::new();
    for s in samples.iter().filter(|s| s.t_s >= warmup_s) {
        let mut classes: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for w in &s.workers {
            // `worker jpeg 2` → `worker jpeg`.
            let class = w.key.rsplit_once(' ').map_or(w.key.as_str(), |(c, _)| c);
            classes.entry(class).or_default().push(w.queue);
        }
        let deviations: Vec<f64> = classes
            .values()
            .filter(|q| q.len() >= 2)
            .map(|q| {
                let mean = q.iter().sum::<f64>() / q.len() as f64;
                (q.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / q.len() as f64).sqrt()
            })
            .collect();
        if !deviations.is_empty() {
            per_sample.push(deviations.iter().sum::<f64>() / deviations.len() as f64);
        }
    }
    (!per_sample.is_empty()).then(|| per_sample.iter().sum::<f64>() / per_sample.len() as f64)
}

/// Fills in a fault's recovery figures from what was watched.
fn recovery(f: &mut WebFault, specs: &[FaultSpec], watch: &Watch, completed: &[u64]) {
    let spec = &specs[f.index];
    let t0 = f.start_s;
    if let Some(key) = spec
        .process
        .as_deref()
        .and_then(|p| p.parse::<ProcessKey>().ok())
    {
        let name = key.to_string();
        if matches!(
            f.action,
            FaultAction::Kill | FaultAction::Restart | FaultAction::Pause
        ) {
            f.detection_s = watch
                .events
                .iter()
                .find(|e| e.process == name && e.kind == "exit" && e.t_s >= t0 - 0.5)
                .map(|e| (e.t_s - t0).max(0.0));
            // The manager's event for a new process of this key.
            f.respawn_s = watch
                .events
                .iter()
                .find(|e| {
                    e.process == name
                        && e.t_s >= t0 - 0.5
                        && matches!(e.kind.as_str(), "spawn" | "restart" | "failover" | "adopt")
                })
                .map(|e| (e.t_s - t0).max(0.0));
            if let Some(respawn) = f.respawn_s {
                f.hints_back_s = match key.role {
                    Role::Worker(_) => watch
                        .reports_seen
                        .iter()
                        .find(|(t, k)| *k == name && *t >= t0 + respawn)
                        .map(|(t, _)| t - t0),
                    Role::Manager => watch
                        .manager_hints
                        .iter()
                        .find(|t| **t >= t0 + respawn)
                        .map(|t| t - t0),
                    _ => None,
                };
            } else if key.role == Role::Manager {
                // A manager restarted by a front end starts a fresh timeline: its hints coming
                // back is the sign.
                f.hints_back_s = watch
                    .manager_hints
                    .iter()
                    .find(|t| **t >= t0 + 0.5)
                    .map(|t| t - t0);
            }
        }
    }
    // Degradations: the front ends' counter over the fault and the 10 s after.
    let until = f.end_s.unwrap_or(t0) + 10.0;
    let at = |t: f64| {
        watch
            .samples
            .iter()
            .take_while(|s| s.t_s <= t)
            .last()
            .map(|s| s.degraded)
    };
    if let (Some(from), Some(to)) = (at(t0).or(Some(0)), at(until)) {
        f.degraded = Some(to.saturating_sub(from));
    }
    // Throughput: the first second from the fault on whose completions are within 10 % of the
    // mean of the 10 seconds before it.
    let s0 = t0.floor() as usize;
    let before: Vec<u64> = completed[s0.saturating_sub(10)..s0.min(completed.len())].to_vec();
    if !before.is_empty() {
        let mean = before.iter().sum::<u64>() as f64 / before.len() as f64;
        f.throughput_recovered_s = completed
            .iter()
            .enumerate()
            .skip(s0)
            .find(|(_, c)| **c as f64 >= 0.9 * mean)
            .map(|(s, _)| (s as f64 - t0).max(0.0));
    }
}

fn figures(c: &LocalWebCluster, experiment: &Experiment, watch: &Watch) -> ClusterFigures {
    let last = watch.last.clone().unwrap_or_default();
    let running: Vec<RunningProcess> =
        serde_json::from_value(last["running"].clone()).unwrap_or_default();
    let count = |f: &dyn Fn(&Role) -> bool| running.iter().filter(|p| f(&p.key.role)).count();
    ClusterFigures {
        nodes: experiment.cluster.nodes,
        overflow_nodes: experiment.cluster.overflow_nodes,
        front_ends: count(&|r| *r == Role::FrontEnd),
        workers: count(&|r| matches!(r, Role::Worker(_))),
        cache_partitions: count(&|r| *r == Role::Cache),
        lottery: serde_json::to_value(c.config.front_end.lottery)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        cpu_model: c.config.workers.cpu.name().to_string(),
        spawns: last["spawns"].as_u64().unwrap_or(0),
        restarts: last["restarts"].as_u64().unwrap_or(0),
        failovers: last["failovers"].as_u64().unwrap_or(0),
        retirements: last["retirements"].as_u64().unwrap_or(0),
        degraded: last["degraded"].as_u64().unwrap_or(0),
        overflow_in_use_max: watch.overflow_in_use_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, synthesized: bool) -> WebJob {
        let experiment: Experiment = toml::from_str(
            "name = \"t\"\nseed = 7\n[cluster]\nservice = \"web\"\n[workload]\nduration_s = 5\nrate = { per_s = 20 }\n[workload.trace]\ntiming = \"rate\"\nsynth = { objects = 50 }\n",
        )
        .unwrap();
        let path = dir.join("trace.log");
        let trace = experiment.workload.trace.clone().unwrap();
        synthesize(&experiment, trace.synth, Some(20.0), 1.0, &path).unwrap();
        WebJob {
            trace: TraceFile::of(&path, synthesized, true).unwrap(),
            experiment,
            route: Route::Direct,
            bases: vec!["http://127.0.0.1:9".into()],
            manifest: None,
        }
    }

    #[test]
    fn an_agent_uses_the_same_trace_or_makes_it_again_or_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        // The same file at the same path: used as it is.
        let same = job(dir.path(), true);
        assert_eq!(
            same.local_trace(scratch.path()).unwrap(),
            dir.path().join("trace.log")
        );
        // A synthesized trace not on this host: made again, byte for byte.
        let mut elsewhere = same.clone();
        elsewhere.trace.path = "/nonexistent/trace.log".into();
        let again = elsewhere.local_trace(scratch.path()).unwrap();
        assert_eq!(again, scratch.path().join("trace.log"));
        assert_eq!(
            file_crc(&again).unwrap(),
            (same.trace.bytes, same.trace.crc32)
        );
        // A user's log not on this host, or a different file there: a clear error.
        let mut missing = job(dir.path(), false);
        missing.trace.path = "/nonexistent/access.log".into();
        let e = missing.local_trace(scratch.path()).unwrap_err().to_string();
        assert!(e.contains("not on this agent's host"), "{e}");
        let mut differs = job(dir.path(), false);
        differs.trace.crc32 ^= 1;
        let e = differs.local_trace(scratch.path()).unwrap_err().to_string();
        assert!(e.contains("differs from the coordinator's"), "{e}");
    }

    #[test]
    fn later_passes_from_memory_equal_passes_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), true);
        let path = dir.path().join("trace.log");
        let timing = replay::Timing::Rate { per_s: 20.0 };
        let base = "http://127.0.0.1:9".to_string();
        let cached: Vec<_> = Passes::new(path.clone(), timing, base.clone(), 3).collect();
        let mut reread = Passes::new(path, timing, base, 3);
        reread.cache = None;
        let reread: Vec<_> = reread.collect();
        assert_eq!(cached, reread);
        let pass = cached.len() / 3;
        assert!(pass > 50 && cached.len() == 3 * pass, "{}", j.trace.bytes);
        assert_eq!(cached[2 * pass].url, cached[0].url);
        assert_eq!(cached[2 * pass].index, 2 * pass as u64);
        assert!(cached[2 * pass].at > cached[2 * pass - 1].at);
    }

    #[test]
    fn shares_split_the_replay_by_position_and_keep_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), true);
        let path = dir.path().join("trace.log");
        let all: Vec<WebRequest> = j
            .plan(&path, Share { index: 0, count: 1 })
            .unwrap()
            .1
            .collect();
        let (c0, r0) = j.plan(&path, Share { index: 0, count: 2 }).unwrap();
        let (_, r1) = j.plan(&path, Share { index: 1, count: 2 }).unwrap();
        let mut merged: Vec<WebRequest> = r0.chain(r1).collect();
        merged.sort_by_key(|r| r.index);
        assert_eq!(merged, all);
        assert!(all.len() >= 100);
        // Limits are split over the shares.
        assert_eq!(
            c0.in_flight_max,
            j.experiment.loadgen.in_flight_max.div_ceil(2)
        );
    }

    #[test]
    fn queue_spread_is_the_mean_deviation_within_a_class() {
        let sample = |t_s: f64, queues: &[(&str, f64)]| Sample {
            t_s,
            workers: queues
                .iter()
                .map(|(k, q)| WorkerSample {
                    key: k.to_string(),
                    queue: *q,
                    overflow: false,
                })
                .collect(),
            overflow_in_use: 0,
            spawns: 0,
            degraded: 0,
        };
        let samples = [
            sample(1.0, &[("worker jpeg 1", 100.0), ("worker jpeg 2", 0.0)]),
            sample(
                5.0,
                &[
                    ("worker jpeg 1", 4.0),
                    ("worker jpeg 2", 0.0),
                    ("worker gif 1", 9.0),
                ],
            ),
            sample(6.0, &[("worker jpeg 1", 1.0), ("worker jpeg 2", 1.0)]),
        ];
        // The first is in the warmup; a lone gif worker has no spread.
        assert_eq!(queue_spread(&samples, 2.0), Some(1.0));
        assert_eq!(queue_spread(&samples[..1], 2.0), None);
    }

    #[test]
    fn a_changing_rate_spaces_the_log_by_the_rate_of_the_moment() {
        let steps = RateShape::Steps(vec![(0.0, 10.0), (1.0, 0.0), (2.0, 100.0)]);
        let mut arrivals = steps.even_arrivals(3.0);
        let starts: Vec<f64> = (0..)
            .map(|k| arrivals.at(k))
            .take_while(|t| *t < 3.0)
            .collect();
        let in_range = |a: f64, b: f64| starts.iter().filter(|s| **s >= a && **s < b).count();
        assert!(
            (10..=11).contains(&in_range(0.0, 1.0)),
            "{}",
            in_range(0.0, 1.0)
        );
        assert_eq!(in_range(1.05, 1.99), 0);
        assert!(
            (99..=101).contains(&in_range(2.0, 3.0)),
            "{}",
            in_range(2.0, 3.0)
        );
        assert!((steps.expected_ops(3.0) - 110.0).abs() < 0.5);
    }

    #[test]
    fn trace_clients_become_user_names_the_proxy_accepts() {
        assert_eq!(user_name("10.0.1.2"), "10.0.1.2");
        assert_eq!(user_name("Alice Smith"), "alice-smith");
        assert_eq!(user_name(&"x".repeat(100)).len(), USER_CHARS_MAX);
    }
}
