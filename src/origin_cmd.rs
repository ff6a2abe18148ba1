//! `clusterbench origin`: runs the web service's bundled origin server in the foreground until
//! SIGINT or SIGTERM.
//!
//! When it is serving it prints one line to stdout, `READY {"http": "127.0.0.1:PORT", "objects":
//! N, "seed": S}`, which is how a supervisor (or a test) learns the port it chose. Logs go to
//! stderr.

use std::io::Write;

use anyhow::Context as _;
use cluster::web::origin::{self, OriginConfig};

use crate::cli::OriginArgs;
use crate::node_cmd::{StopSignals, READY_PREFIX};

pub fn run(args: OriginArgs) -> anyhow::Result<()> {
    let config = OriginConfig {
        seed: args.seed,
        objects: args.objects,
        delay_ms: args.delay_ms,
        ..OriginConfig::default()
    };
    config.validate().context("invalid origin settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("origin")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let http = listener
            .local_addr()
            .context("reading the listen address")?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut server = tokio::spawn(origin::serve(listener, config.clone(), shutdown));
        let ready = serde_json::json!({
            "http": http.to_string(),
            "objects": config.objects,
            "seed": config.seed,
        });
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{READY_PREFIX}{ready}")?;
        stdout.flush()?;
        tracing::info!(%http, objects = config.objects, seed = config.seed, "origin serving");
        let result = tokio::select! {
            _ = signals.recv() => {
                tracing::info!("stopping: letting responses under way finish");
                let _ = stop.send(true);
                server.await
            }
            // The server returns early only on an error.
            result = &mut server => result,
        };
        result
            .context("the origin server's task")?
            .context("the origin server")?;
        tracing::info!("stopped");
        Ok(())
    })
}
