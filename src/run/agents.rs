//! The coordinator side of distributed load: connects to the agents (or starts local ones),
//! measures each one's clock offset, hands each its share and seed, starts them together at an
//! agreed instant, merges the deltas they stream back (exactly: HdrHistograms, not averages), and
//! notices an agent that dies or falls silent instead of waiting for it forever.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use loadgen::drivers::ConnectionStats;
use loadgen::engine::{EngineConfig, RunOutput};
use loadgen::ledger::Ledger;
use loadgen::metrics::{LiveFigures, Recorder};
use loadgen::workload::Share;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::agent::{read_frame, unix_ns, write_frame, ToAgent, ToCoordinator, WebEnd, VERSION};
use loadgen::web::check::Outcomes;

/// How long connecting to an agent and its handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock round trips per agent; the shortest one gives the offset.
pub const CLOCK_SAMPLES: usize = 8;
/// An agent that sends nothing for this long during a run is lost (it sends a delta a second).
pub const SILENCE_MAX: Duration = Duration::from_secs(10);
/// How long after the workload's end agents may take to drain their last operations.
pub const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How long a local agent process may take to print its READY line.
pub const LOCAL_START_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of one agent, for results.json.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub index: u32,
    pub name: String,
    pub addr: String,
    /// The agent's clock minus the coordinator's, from the shortest round trip.
    pub clock_offset_ms: f64,
    pub rtt_ms: f64,
    /// `finished` or `lost`.
    pub status: String,
    /// Seconds from the start when it was lost, and why.
    pub lost_at_s: Option<f64>,
    pub reason: Option<String>,
    /// Operations it completed after the warmup (successes and errors), and their rate over
    /// the measured time.
    pub operations: u64,
    pub ops_per_s: f64,
    /// Web runs: requests it sent (from the run's start, the warmup included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_sent: Option<u64>,
}

/// The agents `[loadgen]` names, or local ones started now: (the local processes to keep
/// alive for the run, addresses, token).
pub async fn endpoints(
    l: &loadgen::experiment::LoadgenSection,
) -> anyhow::Result<(Option<LocalAgents>, Vec<String>, String)> {
    let local = if l.local_agents > 0 {
        Some(LocalAgents::start(l.local_agents).await?)
    } else {
        None
    };
    let (addrs, token) = match &local {
        Some(local) => (local.addrs.clone(), local.token.clone()),
        None => (
            l.agents.clone(),
            l.token
                .clone()
                .or_else(|| std::env::var("CLUSTERBENCH_AGENT_TOKEN").ok())
                .context(
                    "loadgen.agents needs a token: loadgen.token or CLUSTERBENCH_AGENT_TOKEN",
                )?,
        ),
    };
    eprintln!("load from {} agent(s): {}", addrs.len(), addrs.join(", "));
    Ok((local, addrs, token))
}

/// Agent processes this run started on this machine; killed when dropped.
pub struct LocalAgents {
    children: Vec<tokio::process::Child>,
    pub addrs: Vec<String>,
    pub token: String,
}

impl LocalAgents {
    pub async fn start(n: u32) -> anyhow::Result<LocalAgents> {
        let token = format!("{:032x}", rand::random::<u128>());
        let exe = crate::local_cluster::own_executable()?;
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let mut command = tokio::process::Command::new(&exe);
            command
                .args(["agent", "--listen", "127.0.0.1:0", "--name"])
                .arg(format!("local-{}", i + 1))
                .env("CLUSTERBENCH_AGENT_TOKEN", &token)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            crate::local_cluster::die_with_parent(&mut command);
            let mut child = command.spawn().context("spawning an agent process")?;
            let stdout = child.stdout.take().context("agent stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let addr = tokio::time::timeout(LOCAL_START_TIMEOUT, async {
                while let Some(line) = lines.next_line().await? {
                    if let Some(addr) = line.strip_prefix("READY agent ") {
                        return Ok::<_, anyhow::Error>(Some(addr.trim().to_string()));
                    }
                }
                Ok(None)
            })
            .await
            .context("a local agent did not start in time")??
            .context("a local agent exited before it was ready")?;
            addrs.push(addr);
            children.push(child);
        }
        Ok(LocalAgents {
            children,
            addrs,
            token,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }
}

struct Connected {
    name: String,
    addr: String,
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    offset_ns: i64,
    rtt_ns: u64,
}

/// Connects, retrying a refused connection or an unresolved name until `patience` has passed.
async fn reach(addr: &str, patience: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if Instant::now() + Duration::from_millis(500) < deadline => {
                tracing::debug!("agent {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "agent {addr} is unreachable (tried for {:.0} s)",
                        patience.as_secs_f64()
                    )
                })
            }
            Err(_) => bail!(
                "agent {addr} is unreachable: no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        }
    }
}

async fn connect(addr: &str, token: &str, patience: Duration) -> anyhow::Result<Connected> {
    let stream = reach(addr, patience).await?;
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let _ = stream.set_nodelay(true);
        let (r, mut writer) = stream.into_split();
        let mut reader = BufReader::new(r);
        write_frame(
            &mut writer,
            &ToAgent::Hello {
                version: VERSION.into(),
                token: token.into(),
            },
        )
        .await?;
        let name = match read_frame::<ToCoordinator>(&mut reader).await? {
            Some(ToCoordinator::Welcome { version, name }) => {
                if version != VERSION {
                    bail!("agent {addr} is clusterbench {version}, this is {VERSION}");
                }
                name
            }
            Some(ToCoordinator::Refused { reason }) => bail!("agent {addr} refused: {reason}"),
            Some(_) => bail!("agent {addr} answered hello with something else"),
            None => bail!("agent {addr} closed the connection"),
        };
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..CLOCK_SAMPLES {
            let t0 = unix_ns();
            write_frame(&mut writer, &ToAgent::Clock { t0_ns: t0 }).await?;
            let Some(ToCoordinator::Clock { t0_ns, agent_ns }) = read_frame(&mut reader).await?
            else {
                bail!("agent {addr} answered a clock probe with something else");
            };
            let t3 = unix_ns();
            anyhow::ensure!(t0_ns == t0, "agent {addr} echoed a wrong clock probe");
            let rtt = t3.saturating_sub(t0);
            let offset = agent_ns as i64 - ((t0 as i128 + t3 as i128) / 2) as i64;
            if best.is_none_or(|(r, _)| rtt < r) {
                best = Some((rtt, offset));
            }
        }
        let (rtt_ns, offset_ns) = best.unwrap_or((0, 0));
        Ok(Connected {
            name,
            addr: addr.to_string(),
            reader,
            writer,
            offset_ns,
            rtt_ns,
        })
    })
    .await
    .with_context(|| {
        format!(
            "agent {addr}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )
    })?
}

enum Event {
    Delta(Box<crate::agent::WireDelta>),
    Done(f64, Option<WebEnd>),
    Lost(String),
}

/// What the agents run: a mail engine's share, or a web experiment's.
pub enum Job {
    Mail(Box<EngineConfig>),
    Web(Box<super::web::WebJob>),
}

impl Job {
    fn warmup_s(&self) -> f64 {
        match self {
            Job::Mail(c) => c.workload.warmup_s,
            Job::Web(j) => j.experiment.workload.warmup_s,
        }
    }

    fn duration_s(&self) -> f64 {
        match self {
            Job::Mail(c) => c.workload.duration_s,
            Job::Web(j) => j.experiment.workload.duration_s,
        }
    }

    /// The start message for agent `index` of `count`.
    fn start(&self, index: u32, count: u32, start_at_unix_ns: u64) -> anyhow::Result<ToAgent> {
        let share = Share::new(index, count).map_err(|e| anyhow::anyhow!(e))?;
        Ok(match self {
            Job::Mail(base) => {
                let mut config = (**base).clone();
                config.share = share;
                config.client = base.client.share(count);
                ToAgent::Start {
                    config: Box::new(config),
                    start_at_unix_ns,
                }
            }
            Job::Web(job) => ToAgent::StartWeb {
                job: job.clone(),
                share,
                start_at_unix_ns,
            },
        })
    }
}

/// A web run's figures summed over its agents.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebTotals {
    pub outcomes: Outcomes,
    pub sent: u64,
    pub unsent: u64,
    /// Some agent's share of the trace had more requests at the duration's end.
    pub source_left: bool,
}

/// Runs `job` split over the agents at `addrs`; returns the merged output, what became of each
/// agent, and for a web job the sums of its figures. `at_start` is called at the agreed start.
/// Fails before anything starts if an agent cannot be reached or refuses.
pub async fn drive(
    addrs: &[String],
    token: &str,
    patience: Duration,
    job: Job,
    at_start: impl FnOnce(),
    mut progress: impl FnMut(&LiveFigures, Duration),
) -> anyhow::Result<(RunOutput, Vec<AgentReport>, WebTotals)> {
    let count = addrs.len() as u32;
    // All at once: an agent that is slow to come up does not keep the others waiting (an agent
    // drops a coordinator that stays silent too long before its start).
    let mut connecting = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (addr, token) = (addr.clone(), token.to_string());
        connecting.spawn(async move { (i, connect(&addr, &token, patience).await) });
    }
    let mut slots: Vec<Option<Connected>> = (0..addrs.len()).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (i, c) = joined.context("connecting to an agent")?;
        slots[i] = Some(c?);
    }
    let connected: Vec<Connected> = slots.into_iter().flatten().collect();
    for c in &connected {
        eprintln!(
            "agent {} ({}): clock offset {:+.2} ms, round trip {:.2} ms",
            c.name,
            c.addr,
            c.offset_ns as f64 / 1e6,
            c.rtt_ns as f64 / 1e6
        );
    }
    let max_rtt = connected.iter().map(|c| c.rtt_ns).max().unwrap_or(0);
    let start_ns = unix_ns() + 500_000_000 + 4 * max_rtt;
    let warmup = Duration::from_secs_f64(job.warmup_s());
    let duration = Duration::from_secs_f64(job.duration_s());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Event)>(1024);
    let mut reports = Vec::with_capacity(connected.len());
    for (i, mut c) in connected.into_iter().enumerate() {
        let start_at = (start_ns as i128 + c.offset_ns as i128).max(0) as u64;
        write_frame(&mut c.writer, &job.start(i as u32, count, start_at)?)
            .await
            .with_context(|| format!("starting agent {}", c.addr))?;
        reports.push(AgentReport {
            index: i as u32,
            name: c.name.clone(),
            addr: c.addr.clone(),
            clock_offset_ms: c.offset_ns as f64 / 1e6,
            rtt_ms: c.rtt_ns as f64 / 1e6,
            status: "running".into(),
            lost_at_s: None,
            reason: None,
            operations: 0,
            ops_per_s: 0.0,
            requests_sent: None,
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            // The writer stays open for the run: closing it tells the agent to stop.
            let _writer = c.writer;
            loop {
                let event = match tokio::time::timeout(
                    SILENCE_MAX + Duration::from_nanos(start_ns.saturating_sub(unix_ns())),
                    read_frame::<ToCoordinator>(&mut c.reader),
                )
                .await
                {
                    Err(_) => Event::Lost(format!("silent for {} s", SILENCE_MAX.as_secs())),
                    Ok(Err(e)) => Event::Lost(format!("{e:#}")),
                    Ok(Ok(None)) => Event::Lost("the connection closed".into()),
                    Ok(Ok(Some(ToCoordinator::Delta(d)))) => Event::Delta(d),
                    Ok(Ok(Some(ToCoordinator::Done { elapsed_s, web }))) => {
                        Event::Done(elapsed_s, web)
                    }
                    Ok(Ok(Some(ToCoordinator::Refused { reason }))) => Event::Lost(reason),
                    Ok(Ok(Some(_))) => Event::Lost("an unexpected message".into()),
                };
                let last = !matches!(event, Event::Delta(_));
                if tx.send((i, event)).await.is_err() || last {
                    return;
                }
            }
        });
    }
    drop(tx);

    // Wait for the start, then merge until every agent is done or lost.
    let started_at = SystemTime::now() + Duration::from_nanos(start_ns.saturating_sub(unix_ns()));
    tokio::time::sleep(Duration::from_nanos(start_ns.saturating_sub(unix_ns()))).await;
    let start = Instant::now();
    at_start();
    let mut web = WebTotals::default();
    let deadline = start + duration + DRAIN_MAX;
    let mut recorder = Recorder::new(warmup);
    let mut ledger = Ledger::default();
    // Each agent's figures so far; the run's are their sum (agents run side by side, so the sum
    // of their peaks bounds the peak of the whole).
    let mut connections = vec![ConnectionStats::default(); reports.len()];
    let mut live: Vec<Option<LiveFigures>> = vec![None; reports.len()];
    let mut elapsed = Duration::ZERO;
    let mut open = reports.len();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while open > 0 {
        tokio::select! {
            event = rx.recv() => {
                let Some((i, event)) = event else { break };
                match event {
                    Event::Delta(d) => {
                        // All of a delta or none of it, so the counts and the checker's lists agree.
                        match recorder.merge_states(&d.recorders) {
                            Ok(()) => {
                                reports[i].operations += d
                                    .recorders
                                    .iter()
                                    .flat_map(|r| &r.totals)
                                    .map(|t| t.attempted)
                                    .sum::<u64>();
                                ledger.merge(d.ledger);
                                if let Some(part) = d.web {
                                    web.outcomes.merge(&part.outcomes);
                                    web.sent += part.sent;
                                    *reports[i].requests_sent.get_or_insert(0) += part.sent;
                                }
                                connections[i] = d.connections;
                                live[i] = Some(d.live);
                            }
                            // All of it, so the counts and the checker's lists agree.
                            Err(e) => eprintln!("agent {}: a malformed delta ({e}), left out", reports[i].name),
                        }
                    }
                    Event::Done(agent_elapsed, end) => {
                        if let Some(end) = end {
                            web.unsent += end.unsent;
                            web.source_left |= end.source_left;
                        }
                        reports[i].status = "finished".into();
                        elapsed = elapsed.max(Duration::from_secs_f64(agent_elapsed.max(0.0)));
                        open -= 1;
                    }
                    Event::Lost(reason) => {
                        let at = start.elapsed().as_secs_f64();
                        eprintln!("agent {} ({}) lost at {at:.1} s: {reason}", reports[i].name, reports[i].addr);
                        reports[i].status = "lost".into();
                        reports[i].lost_at_s = Some(at);
                        reports[i].reason = Some(reason);
                        elapsed = elapsed.max(start.elapsed().min(duration));
                        live[i] = None;
                        open -= 1;
                    }
                }
            }
            _ = ticker.tick() => {
                progress(&combine(&live), start.elapsed());
            }
            _ = tokio::time::sleep_until(deadline) => {
                for r in reports.iter_mut().filter(|r| r.status == "running") {
                    r.status = "lost".into();
                    r.lost_at_s = Some(start.elapsed().as_secs_f64());
                    r.reason = Some(format!("did not finish within {} s of the workload's end", DRAIN_MAX.as_secs()));
                }
                elapsed = elapsed.max(duration);
                break;
            }
        }
    }
    let measured = elapsed.saturating_sub(warmup).max(Duration::from_millis(1));
    for r in &mut reports {
        r.ops_per_s = r.operations as f64 / measured.as_secs_f64();
    }
    Ok((
        RunOutput {
            recorder,
            ledger,
            connections: connections
                .iter()
                .fold(ConnectionStats::default(), |sum, c| ConnectionStats {
                    opened: sum.opened + c.opened,
                    open_peak: sum.open_peak + c.open_peak,
                    in_flight_peak: sum.in_flight_peak + c.in_flight_peak,
                }),
            started_at,
            elapsed,
        },
        reports,
        web,
    ))
}

/// The agents' live figures as one: rates add up, the worst p99 shows.
fn combine(live: &[Option<LiveFigures>]) -> LiveFigures {
    let mut all = LiveFigures::default();
    for l in live.iter().flatten() {
        all.ops_per_s += l.ops_per_s;
        all.errors_per_s += l.errors_per_s;
        all.errors_total += l.errors_total;
        all.p99_ms = match (all.p99_ms, l.p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    all
}
