//! `clusterbench web ROLE`: runs one process of the web cluster in the foreground until SIGINT or
//! SIGTERM — a node daemon (`node`), or what node daemons start: `manager`, `front-end`,
//! `worker --class C`, `cache`, `profiles`. Every process reads the cluster's `web.toml`.
//!
//! When serving it prints one line to stdout, `READY {"admin": ..., "http": ..., "beacons": ...}`,
//! which is how its node daemon learns where it listens. Logs go to stderr.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use cluster::web::config::WebConfig;
use cluster::web::process::ProcessArgs;
use cluster::web::proto::{Endpoints, ProcessKey, Role, WorkerClass};

use crate::cli::{WebArgs, WebRole};
use crate::node_cmd::{StopSignals, READY_PREFIX};

pub fn run(args: WebArgs) -> anyhow::Result<()> {
    let mut config = read_config(&args.config)?;
    // A secret in the environment rather than in a file (inherited by a node daemon's processes).
    if let Ok(token) = std::env::var("CLUSTERBENCH_ADMIN_TOKEN") {
        if !token.is_empty() {
            config.admin_token = token;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("web")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        if let WebRole::Node = args.role {
            let entry = config
                .nodes
                .iter()
                .find(|n| n.id == args.id)
                .with_context(|| format!("node {} is not in {}", args.id, args.config.display()))?
                .clone();
            // Its own address from the configuration (the other nodes know it by that); with
            // --listen, another (0.0.0.0:PORT in a container).
            let bind = args.listen.clone().unwrap_or(entry.addr.clone());
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("binding the node daemon on {bind}"))?;
            let addr = listener.local_addr()?;
            let launcher = cluster::web::node::Launcher {
                executable: crate::local_cluster::own_executable()?,
                config_path: std::fs::canonicalize(&args.config)?,
                log_dir: config.data_dir.join(format!("node{}", args.id)),
                host: args.host,
            };
            let daemon = tokio::spawn(cluster::web::node::serve(
                args.id,
                config,
                launcher,
                listener,
                args.start_manager,
                shutdown,
            ));
            ready(&Endpoints {
                admin: addr,
                http: None,
                beacons: None,
            })?;
            signals.recv().await;
            let _ = stop.send(true);
            let _ = daemon.await;
            return Ok(());
        }
        let key = key_of(&args)?;
        let process = ProcessArgs {
            config,
            key,
            node: args.node,
            manager_reports: args.manager_reports,
            host: args.host,
        };
        let endpoints = match args.role {
            WebRole::Manager => cluster::web::manager::start(process, shutdown).await?,
            WebRole::FrontEnd => cluster::web::front_end::start(process, shutdown).await?,
            WebRole::Worker => {
                let Role::Worker(class) = key.role else {
                    unreachable!("a worker's key")
                };
                cluster::web::worker::start(process, class, shutdown).await?
            }
            WebRole::Cache => cluster::web::cache::start(process, shutdown).await?,
            WebRole::Profiles => cluster::web::profiles::start(process, shutdown).await?,
            WebRole::Node => unreachable!("handled above"),
        };
        ready(&endpoints)?;
        signals.recv().await;
        tracing::info!(%key, "stopping");
        let _ = stop.send(true);
        // Give connections their grace; then the runtime drops the rest.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok(())
    })
}

fn ready(endpoints: &Endpoints) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "{READY_PREFIX}{}",
        serde_json::to_string(endpoints)?
    )?;
    stdout.flush()?;
    Ok(())
}

/// Reads and checks the web cluster's configuration.
pub fn read_config(path: &Path) -> anyhow::Result<WebConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the web configuration {}", path.display()))?;
    WebConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn key_of(args: &WebArgs) -> anyhow::Result<ProcessKey> {
    Ok(match args.role {
        WebRole::Manager => ProcessKey::MANAGER,
        WebRole::Profiles => ProcessKey::PROFILES,
        WebRole::FrontEnd => ProcessKey::front_end(args.id),
        WebRole::Cache => ProcessKey::cache(args.id),
        WebRole::Worker => {
            let class: WorkerClass = args
                .class
                .as_deref()
                .context("a worker needs --class (jpeg, gif, html, aggregate)")?
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            ProcessKey::worker(class, args.id)
        }
        WebRole::Node => anyhow::bail!("a node daemon is not a process of the service"),
    })
}
