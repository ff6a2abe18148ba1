//! `clusterbench run EXPERIMENT.toml`: an experiment end to end.
//!
//! Launches the target (the bundled cluster as local node processes, unless the experiment
//! names an existing `[target]`), drives the workload open loop while the fault schedule is
//! carried out and every node's view is watched, waits for replication to settle, retrieves every
//! mailbox to count lost, duplicated and corrupted messages, computes recovery figures and SLO
//! verdicts, writes `DIR/results.json`, and prints a summary. The exit code says how it went
//! ([`results::Outcome`]): 0 passed, 1 acknowledged mail lost or corrupted (unless the experiment
//! expects loss), 3 an SLO missed, 2 the experiment could not be run.

pub mod admin;
pub mod agents;
pub mod faults;
pub mod poll;
pub mod results;
pub mod sweep;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cluster::mail::config::{DiskConfig, NodeConfig};
use loadgen::engine::{self, EngineConfig};
use loadgen::experiment::{set_key, Experiment};
use loadgen::ledger::{Check, Correctness, Ledger};
use loadgen::workload::Share;
use loadgen::{OpKind, Target};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::cli::RunArgs;
use crate::local_cluster::{ClusterSpec, LocalCluster};
use results::{Outcome, Results};

/// How long the bundled cluster may take to agree on one view before the load starts.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Mailboxes read at once by the correctness check.
pub const CHECK_CONCURRENCY: usize = 16;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("run")
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(run_experiment(args))?;
    if outcome != Outcome::Pass {
        std::process::exit(outcome.exit_code());
    }
    Ok(())
}

/// Raises this process's limit on open files to the most it may have (the hard limit): a load
/// generator holding 10,000 sessions needs 10,000 descriptors, beyond the usual 1,024. Failing
/// that, the limit stays as it was ([`file_limit`] reports it).
pub fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// This process's limit on open files, if it can tell.
pub fn file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed to it.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// Reads an experiment file as a table and applies `--set` overrides.
pub fn load_table(path: &Path, sets: &[String]) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for s in sets {
        set_key(&mut table, s).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(table)
}

async fn run_experiment(args: RunArgs) -> anyhow::Result<Outcome> {
    let mut table = load_table(&args.experiment, &args.set)?;
    if let Some(n) = args.agents {
        set_key(&mut table, &format!("loadgen.local_agents={n}"))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let sweep = table.remove("sweep");
    let name = table
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("experiment")
        .to_string();
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => PathBuf::from("results").join(format!(
            "{name}-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    match sweep {
        None => {
            let experiment = Experiment::from_table(table)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.experiment.display()))?;
            Ok(run_one(experiment, &out).await?.1)
        }
        Some(toml::Value::Table(sweep)) => sweep::run(table, &sweep, &args.experiment, &out).await,
        Some(_) => bail!("{}: sweep: must be a table", args.experiment.display()),
    }
}

/// Runs one experiment into `out`; returns its results (as written) and how it ended.
pub async fn run_one(
    experiment: Experiment,
    out: &Path,
) -> anyhow::Result<(serde_json::Value, Outcome)> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    if experiment.is_web() {
        return web::run_one(experiment, &out).await;
    }
    let started_at = chrono::Utc::now();

    // The target.
    let (cluster, target, token) = match &experiment.target {
        Some(t) => {
            let target = Target {
                smtp: resolve("target.smtp", &t.smtp).await?,
                pop3: resolve("target.pop3", &t.pop3).await?,
                imap: resolve("target.imap", &t.imap).await?,
                domain: t.domain.clone(),
                user_pattern: t.user_pattern.clone(),
                user_first: t.user_first,
                password: t.password.clone(),
            };
            eprintln!(
                "target: {} SMTP, {} POP3, {} IMAP front end(s)",
                target.smtp.len(),
                target.pop3.len(),
                target.imap.len()
            );
            (None, target, String::new())
        }
        None => {
            let cluster = start_cluster(&experiment, &out.join("cluster")).await?;
            let file = &cluster.file;
            let target = Target {
                smtp: file.nodes.iter().map(|n| n.smtp).collect(),
                pop3: file.nodes.iter().map(|n| n.pop3).collect(),
                imap: file.nodes.iter().map(|n| n.imap).collect(),
                domain: file.domain.clone(),
                user_pattern: file.users.pattern.clone(),
                user_first: file.users.first,
                password: file.users.password.clone(),
            };
            let token = file.admin_token.clone();
            (Some(Arc::new(Mutex::new(cluster))), target, token)
        }
    };

    // Watch the cluster, carry out the faults, drive the load.
    let start = Instant::now();
    let log = Arc::new(std::sync::Mutex::new(poll::PollLog::default()));
    let (stop_poll, stop_rx) = watch::channel(false);
    let windows = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut poller = None;
    let mut fault_task = None;
    let duration = Duration::from_secs_f64(experiment.workload.duration_s);
    if let Some(cluster) = &cluster {
        let addrs = Arc::new(std::sync::Mutex::new(admin_addrs(&*cluster.lock().await)));
        let refresh = addrs.clone();
        poller = Some(tokio::spawn(poll::poll(
            move || refresh.lock().unwrap().clone(),
            token.clone(),
            start,
            log.clone(),
            stop_rx,
        )));
        // Keep the poller's address list current as nodes restart.
        let c = cluster.clone();
        let mut stop = stop_poll.subscribe();
        tokio::spawn(async move {
            loop {
                *addrs.lock().unwrap() = admin_addrs(&*c.lock().await);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {},
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        fault_task = Some(tokio::spawn(faults::run_schedule(
            cluster.clone(),
            token.clone(),
            experiment.faults.clone(),
            start,
            duration,
            windows.clone(),
        )));
    }
    describe(&experiment, cluster.is_some());
    warn_file_limit(&experiment, &target);
    let progress = Progress::new(duration);
    let run_id = format!("{}-{}", experiment.name, started_at.format("%Y%m%d%H%M%S"));
    let engine_config = EngineConfig {
        target: target.clone(),
        workload: experiment.workload.clone(),
        seed: experiment.seed,
        share: Share { index: 0, count: 1 },
        run_id: run_id.clone(),
        client: experiment.loadgen.client(),
        keep_ledger: experiment.check.enabled && !target.pop3.is_empty(),
    };
    let l = &experiment.loadgen;
    let (output, agent_reports) = if l.agents.is_empty() && l.local_agents == 0 {
        let output = engine::run(engine_config, |live, elapsed| {
            progress.update(live, elapsed)
        })
        .await;
        (output, Vec::new())
    } else {
        let (local, addrs, token) = agents::endpoints(l).await?;
        let patience = Duration::from_secs_f64(l.connect_timeout_s);
        let driven = agents::drive(
            &addrs,
            &token,
            patience,
            agents::Job::Mail(Box::new(engine_config)),
            || {},
            |live, elapsed| progress.update(live, elapsed),
        )
        .await;
        drop(local);
        let (output, reports, _) = driven?;
        (output, reports)
    };
    progress.finish();

    // Undo what is still in force, then let replication settle.
    let mut settled = None;
    if let (Some(cluster), Some(task)) = (&cluster, fault_task) {
        let pending = task.await.unwrap_or_default();
        faults::undo_rest(
            cluster,
            &token,
            &experiment.faults,
            &pending,
            start,
            &windows,
        )
        .await;
        settled = Some(settle(cluster, Duration::from_secs_f64(experiment.check.settle_s)).await);
    }

    // The correctness check.
    let correctness = if experiment.check.enabled {
        eprintln!("checking: reading every mailbox that was sent mail...");
        Some(check(&target, &output.ledger, &run_id).await)
    } else {
        None
    };
    let _ = stop_poll.send(true);
    if let Some(p) = poller {
        let _ = p.await;
    }
    let summary = output.recorder.summary(output.elapsed);
    let windows = windows.lock().unwrap().clone();
    let changes = log.lock().unwrap().changes.clone();
    let smtp_per_s: Vec<u64> = summary
        .series
        .iter()
        .map(|p| p.per_op.get(&OpKind::Smtp).map_or(0, |f| f.count))
        .collect();
    let all_nodes: Vec<u32> = (1..=experiment.cluster.nodes).collect();
    let recovery = poll::recovery(&windows, &changes, &smtp_per_s, &all_nodes);
    let cluster_info = match &cluster {
        Some(c) => Some(c.lock().await.file.clone()),
        None => None,
    };
    let results = Results::new(
        &experiment,
        started_at,
        output.elapsed,
        cluster_info.as_ref(),
        summary,
        windows,
        changes,
        recovery,
        correctness,
        settled,
        agent_reports,
        results::LoadgenInfo::new(&experiment, output.connections, file_limit()),
    );
    let json = write_results(&results, &out)?;
    if let Some(cluster) = cluster {
        let cluster = Arc::try_unwrap(cluster)
            .map_err(|_| anyhow::anyhow!("the cluster is still in use"))?
            .into_inner();
        cluster.stop().await;
    }
    let outcome = Outcome::of(&json);
    Ok((json, outcome))
}

/// Writes `results.json` and `report.html` into `out` and prints the summary; the results as
/// written.
pub(crate) fn write_results(
    results: &results::Results,
    out: &Path,
) -> anyhow::Result<serde_json::Value> {
    let path = out.join("results.json");
    let json = serde_json::to_value(results)?;
    crate::local_cluster::write_atomically(&path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    // The report is rendered from exactly what results.json holds, as `clusterbench report`
    // would render it later.
    let report = out.join("report.html");
    match reports::render_run(&json) {
        Ok(html) => crate::local_cluster::write_atomically(&report, html.as_bytes())?,
        Err(e) => eprintln!("the HTML report could not be rendered: {e}"),
    }
    results.print(&path);
    println!("report: {}", report.display());
    Ok(json)
}

/// `ip:port` or `host:port` front ends, resolved once (the first address of each name); an
/// address that does not resolve is an error that names it.
pub(crate) async fn resolve(key: &str, addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let first =
            tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(a.as_str()))
                .await
                .map_err(|_| anyhow::anyhow!("{key}: {a:?} did not resolve within 10 s"))?
                .with_context(|| format!("{key}: {a:?} is not host:port that resolves"))?
                .next()
                .with_context(|| format!("{key}: {a:?} resolves to no address"))?;
        out.push(first);
    }
    Ok(out)
}

fn admin_addrs(cluster: &LocalCluster) -> Vec<(u32, SocketAddr)> {
    cluster.file.nodes.iter().map(|n| (n.id, n.admin)).collect()
}

/// Starts the bundled cluster the experiment describes and waits until it agrees on one view.
async fn start_cluster(experiment: &Experiment, dir: &Path) -> anyhow::Result<LocalCluster> {
    let c = &experiment.cluster;
    let template = NodeConfig {
        disk: toml::Value::Table(c.disk.clone())
            .try_into::<DiskConfig>()
            .map_err(|e| anyhow::anyhow!("cluster.disk: {}", e.message()))?,
        store: toml::Value::Table(c.store.clone())
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("cluster.store: {}", e.message()))?,
        ..NodeConfig::default()
    };
    let placement: cluster::mail::Placement =
        toml::Value::String(c.placement.clone())
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("cluster.placement: {}", e.message()))?;
    eprintln!(
        "starting the bundled cluster: {} node(s), replication {}, {} placement, {} disk, in {}",
        c.nodes,
        c.replication,
        c.placement,
        template.disk.name(),
        dir.display()
    );
    let cluster = LocalCluster::start(ClusterSpec {
        nodes: c.nodes,
        dir: dir.to_path_buf(),
        users: Some(c.users.unwrap_or(experiment.workload.users)),
        password: None,
        domain: None,
        base_port: None,
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        template,
        replication: Some(c.replication),
        spread: Some(c.spread),
        placement: Some(placement),
    })
    .await?;
    let token = cluster.file.admin_token.clone();
    let admins = admin_addrs(&cluster);
    let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
    loop {
        let mut views = Vec::new();
        for (_, addr) in &admins {
            views.push(
                admin::status(*addr, &token)
                    .await
                    .map(|s| s["view"]["members"].clone()),
            );
        }
        let all: serde_json::Value = (1..=c.nodes).collect::<Vec<u32>>().into();
        if views.iter().all(|v| v.as_ref() == Some(&all)) {
            break;
        }
        if Instant::now() > deadline {
            cluster.stop().await;
            bail!(
                "the cluster did not agree on one view of all {} nodes within {:?}",
                c.nodes,
                CLUSTER_READY_TIMEOUT
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(cluster)
}

/// Waits (at most `limit`) until every answering node has no replication backlog.
/// Waits (at most `limit`) until no node owes a replica anything; returns the backlog at the
/// end of the load and how long it took to drain (`None`: not within `limit`). Optimistic
/// replication acknowledges before it copies, so a saturated cluster can acknowledge faster than
/// it replicates: the drain time says by how much.
async fn settle(cluster: &Arc<Mutex<LocalCluster>>, limit: Duration) -> results::Settle {
    let started = Instant::now();
    let deadline = started + limit;
    let token = cluster.lock().await.file.admin_token.clone();
    let mut first = None;
    loop {
        let addrs = admin_addrs(&*cluster.lock().await);
        let mut backlog = 0;
        for (_, addr) in addrs {
            if let Some(s) = admin::status(addr, &token).await {
                backlog += s["replication"]["backlog"].as_u64().unwrap_or(0);
            }
        }
        let at_load_end = *first.get_or_insert(backlog);
        if backlog == 0 {
            return results::Settle {
                backlog_at_load_end: at_load_end,
                drained_s: Some(started.elapsed().as_secs_f64()),
            };
        }
        if Instant::now() > deadline {
            eprintln!("replication backlog still {backlog} after {limit:?}; checking anyway");
            return results::Settle {
                backlog_at_load_end: at_load_end,
                drained_s: None,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every mailbox that was sent mail and judges the run. A mailbox that cannot be read
/// (no POP3 front end, a login refused, every front end failing) leaves the messages only it
/// should hold unverified, not lost.
async fn check(target: &Target, ledger: &Ledger, run_id: &str) -> Correctness {
    if target.pop3.is_empty() || ledger.is_counting() {
        return Correctness::unverifiable(
            ledger,
            "the target has no POP3 front end to read mailboxes back with",
        );
    }
    let mut check = Check::new(ledger, run_id);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in ledger.users().into_iter().enumerate() {
        // At most CHECK_CONCURRENCY mailboxes at once, and as many listings in memory.
        while tasks.len() >= CHECK_CONCURRENCY {
            if let Some(Ok((user, listing))) = tasks.join_next().await {
                check.listing(user, listing);
            }
        }
        let target = target.clone();
        tasks.spawn(async move {
            let name = target.user(user);
            // Any front end will do; try others if one fails (a node may be down for good).
            let mut listing = Err(String::new());
            for k in 0..target.pop3.len() {
                let addr = target.pop3[(i + k) % target.pop3.len()];
                match loadgen::drivers::pop3::retrieve_all(addr, &name, &target.password).await {
                    Ok(found) => {
                        listing = Ok(found);
                        break;
                    }
                    Err(e) => {
                        listing = Err(format!(
                            "{name}'s mailbox could not be read over POP3 at {addr}: {e}"
                        ))
                    }
                }
            }
            (user, listing)
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((user, listing)) = r {
            check.listing(user, listing);
        }
    }
    check.finish()
}

/// Says so when the sessions the experiment allows could outrun the open-file limit.
fn warn_file_limit(experiment: &Experiment, target: &Target) {
    let l = &experiment.loadgen;
    let smtp = u64::from(l.smtp.connections_per_front_end) * target.smtp.len() as u64;
    let wanted = smtp.min(u64::from(l.in_flight_max)) + 64;
    if let Some(limit) = file_limit().filter(|&limit| limit < wanted) {
        eprintln!(
            "warning: up to {wanted} connections may be open at once, but this process may open \
             only {limit} files (ulimit -n); raise the hard limit or lower \
             loadgen.smtp.connections_per_front_end"
        );
    }
}

fn describe(experiment: &Experiment, bundled: bool) {
    let w = &experiment.workload;
    eprintln!(
        "running {}: {} users (skew {}), {} s (warm-up {} s){}",
        experiment.name,
        w.users,
        w.skew,
        w.duration_s,
        w.warmup_s,
        if bundled && !experiment.faults.is_empty() {
            format!(", {} fault(s) scheduled", experiment.faults.len())
        } else {
            String::new()
        }
    );
}

/// The live progress line: a bar on a terminal, a line every 10 s otherwise.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    tty: bool,
    last_line: std::sync::Mutex<Duration>,
}

impl Progress {
    pub(crate) fn new(duration: Duration) -> Progress {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if tty {
            let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            tty,
            last_line: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    pub(crate) fn update(&self, live: &loadgen::metrics::LiveFigures, elapsed: Duration) {
        let p99 = live
            .p99_ms
            .map_or_else(|| "-".to_string(), |p| format!("{p:.1} ms"));
        let msg = format!(
            "{:.0} ops/s  {} errors  p99 {p99}",
            live.ops_per_s, live.errors_total
        );
        if self.tty {
            self.bar.set_position(elapsed.as_secs());
            self.bar.set_message(msg);
        } else {
            let mut last = self.last_line.lock().unwrap();
            if elapsed >= *last + Duration::from_secs(10) {
                *last = elapsed;
                eprintln!("  {:>4} s  {msg}", elapsed.as_secs());
            }
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
