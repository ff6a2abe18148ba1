//! `clusterbench node`: runs one node in the foreground until SIGINT or SIGTERM.
//!
//! When the node is serving it prints one line to stdout, `READY {"smtp": ..., "pop3": ...,
//! "imap": ..., "admin": ...}`, which is how `cluster up` (or any supervisor) learns the ports it
//! chose. Logs go to stderr.

use std::io::Write;

use anyhow::Context as _;
use cluster::mail::config::NodeConfig;

use crate::cli::NodeArgs;

/// The line prefix that announces a serving node on stdout.
pub const READY_PREFIX: &str = "READY ";

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    // `limits.connections_max` (1,024 by default) clients need more descriptors than the usual
    // soft limit of 1,024.
    crate::run::raise_file_limit();
    let config = config_from(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("node")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        if config.admin_token.is_empty() {
            tracing::warn!("no admin token set: the admin API will refuse every request");
        }
        let mut signals = StopSignals::install()?;
        let node = cluster::mail::node::start(config).await?;
        let mut stdout = std::io::stdout();
        writeln!(
            stdout,
            "{READY_PREFIX}{}",
            serde_json::to_string(&node.endpoints)?
        )?;
        stdout.flush()?;
        signals.recv().await;
        tracing::info!("stopping: letting sessions finish their current command");
        node.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn config_from(args: NodeArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading node configuration {}", path.display()))?;
            NodeConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
        if args.config.is_none() && args.data_dir.is_none() {
            config.data_dir = format!("clusterbench-data/node{id}").into();
        }
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(domain) = args.domain {
        config.domain = domain;
    }
    if let Some(token) = args.admin_token {
        config.admin_token = token;
    }
    if let Some(a) = args.smtp {
        config.listen.smtp = a;
    }
    if let Some(a) = args.pop3 {
        config.listen.pop3 = a;
    }
    if let Some(a) = args.imap {
        config.listen.imap = a;
    }
    if let Some(a) = args.admin {
        config.listen.admin = a;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid node configuration: {e}"))?;
    Ok(config)
}

/// SIGINT and SIGTERM handlers, installed once so that no signal is missed between waits.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
