//! `clusterbench cluster up`: starts N local nodes as child processes, provisions users, writes
//! `DIR/cluster.json`, and supervises the nodes until SIGINT or SIGTERM, then stops them cleanly.
//!
//! Each node gets `DIR/nodeI/` (its `node.toml`, mail log, and `node.log`). Running `cluster up`
//! again on the same DIR reuses the stored mail, users, password and admin token. A node that dies
//! is reported, not restarted: the cluster keeps running without it, as a real one would.

use anyhow::Context as _;
use cluster::mail::config::NodeConfig;

use crate::cli::{ClusterUpArgs, ServiceArg};
use crate::local_cluster::{print_summary, ClusterSpec, LocalCluster};
use crate::node_cmd::StopSignals;

pub fn run(args: ClusterUpArgs) -> anyhow::Result<()> {
    // A current-thread runtime: children are spawned from the main thread, which lives as long as
    // the process, so their parent-death signal fires only when this process really ends.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(up(args))
}

async fn up(args: ClusterUpArgs) -> anyhow::Result<()> {
    if args.service == ServiceArg::Web {
        return up_web(args).await;
    }
    let template = match &args.node_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading node configuration {}", path.display()))?;
            NodeConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    let mut signals = StopSignals::install()?;
    let mut cluster = LocalCluster::start(ClusterSpec {
        nodes: args.nodes,
        dir: args.dir.clone(),
        users: args.users,
        password: args.password.clone(),
        domain: args.domain.clone(),
        base_port: args.base_port,
        host: args.host,
        template,
        replication: args.replication,
        spread: args.spread,
        placement: args.placement.map(Into::into),
    })
    .await?;
    print_summary(&cluster.file, &cluster.dir.join("cluster.json"));
    let total = cluster.file.nodes.len();
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            Some((id, status)) = cluster.next_exit() => {
                let running = cluster.running().len();
                eprintln!("node {id} exited ({status}); {running} of {total} nodes still running");
            }
        }
    }
    eprintln!("stopping {} node(s)...", cluster.running().len());
    cluster.stop().await;
    eprintln!("cluster stopped");
    Ok(())
}

/// `cluster up --service web`: the web cluster in the foreground, `cluster.json` kept current
/// as the manager spawns, restarts and retires processes.
async fn up_web(args: ClusterUpArgs) -> anyhow::Result<()> {
    use cluster::web::config::{CpuModel, Lottery, WebConfig};
    let mut template = match &args.web_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            WebConfig::template_from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => WebConfig::default(),
    };
    template.origins.extend(args.origins.iter().cloned());
    if let Some(n) = args.front_ends {
        template.front_end.count = n;
    }
    if let Some(n) = args.caches {
        template.cache.partitions = n;
    }
    if let Some(ms) = args.cpu_ms_per_kb {
        template.workers.cpu = CpuModel::Modelled {
            ms_per_kb: ms,
            latency_ms: 0.0,
        };
    }
    if let Some(l) = &args.lottery {
        template.front_end.lottery = match l.as_str() {
            "naive" => Lottery::Naive,
            "corrected" => Lottery::Corrected,
            other => anyhow::bail!("--lottery: {other:?} is not naive or corrected"),
        };
    }
    if let Some(spec) = &args.workers {
        template.workers.classes.clear();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (class, n) = part
                .split_once('=')
                .with_context(|| format!("--workers: {part:?} is not CLASS=N"))?;
            let class: cluster::web::proto::WorkerClass = class
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--workers: {e}"))?;
            let n: u32 = n
                .parse()
                .with_context(|| format!("--workers: {n:?} is not a number"))?;
            template.workers.classes.insert(class, n);
        }
    }
    let mut signals = StopSignals::install()?;
    eprintln!(
        "starting the web cluster: {} node(s) + {} overflow, in {}",
        args.nodes,
        args.overflow_nodes,
        args.dir.display()
    );
    let mut cluster = crate::local_web::LocalWebCluster::start(crate::local_web::WebClusterSpec {
        dir: args.dir.clone(),
        nodes: args.nodes,
        overflow_nodes: args.overflow_nodes,
        host: args.host,
        template,
        origin: crate::local_web::OriginSpec {
            seed: 1,
            objects: args.objects,
            delay_ms: 0,
        },
        origin_trace: None,
    })
    .await?;
    for p in &cluster.file.processes {
        println!(
            "{:<16} node {:<3} admin {}{}",
            p.key.to_string(),
            p.node,
            p.endpoints.admin,
            p.endpoints
                .http
                .map(|h| format!("  http {h}"))
                .unwrap_or_default()
        );
    }
    for o in &cluster.file.origins {
        println!("origin           {o}");
    }
    println!(
        "Wrote {} (admin token inside). Press Ctrl-C to stop.",
        cluster.dir.join("cluster.json").display()
    );
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                let processes = cluster.processes().await;
                let _ = cluster.refresh(processes);
            }
        }
    }
    eprintln!("stopping the web cluster...");
    cluster.stop().await;
    eprintln!("cluster stopped");
    Ok(())
}
