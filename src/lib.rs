//! `clusterbench`: the command-line front of the workspace. Each subcommand lives in its own
//! module; `main.rs` only parses arguments and calls [`run`].

pub mod agent;
pub mod calibrate_cmd;
pub mod capacity_cmd;
pub mod cli;
pub mod cluster_up;
pub mod compare_cmd;
pub mod history_cmd;
pub mod local_cluster;
pub mod local_web;
pub mod node_cmd;
pub mod origin_cmd;
pub mod report_cmd;
pub mod run;
pub mod sim_cmd;
pub mod trace_cmd;
pub mod web_cmd;

use cli::{Cli, ClusterCommand, Command, SimCommand, TraceCommand};

/// Runs one parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging();
    match cli.command {
        Command::Node(args) => node_cmd::run(args),
        Command::Origin(args) => origin_cmd::run(args),
        Command::Cluster {
            command: ClusterCommand::Up(args),
        } => cluster_up::run(args),
        Command::Run(args) => run::run(args),
        Command::Report(args) => report_cmd::run(args),
        Command::Capacity(args) => capacity_cmd::run(args),
        Command::Calibrate(args) => calibrate_cmd::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Compare(args) => std::process::exit(compare_cmd::run(args)),
        Command::History(args) => std::process::exit(history_cmd::run(args)),
        Command::Web(args) => web_cmd::run(args),
        Command::Sim {
            command: SimCommand::Membership(args),
        } => sim_cmd::membership(args),
        Command::Sim {
            command: SimCommand::Mail(args),
        } => sim_cmd::mail(args),
        Command::Trace {
            command: TraceCommand::Synth(args),
        } => trace_cmd::synth(args),
        Command::Trace {
            command: TraceCommand::Fit(args),
        } => trace_cmd::fit(args),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
