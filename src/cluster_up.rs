//! `clusterbench cluster up`: starts N local nodes as child processes, provisions users, writes
//! `DIR/cluster.json`, and supervises the nodes until SIGINT or SIGTERM, then stops them cleanly.
//!
//! Each node gets `DIR/nodeI/` (its `node.toml`, mail log, and `node.log`). Running `cluster up`
//! again on the same DIR reuses the stored mail, users, password and admin token. A node that dies
//! is reported, not restarted: the cluster keeps running without it, as a real one would.

use anyhow::Context as _;
use cluster::mail::config::NodeConfig;

use crate::cli::ClusterUpArgs;
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
