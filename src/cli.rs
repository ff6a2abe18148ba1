//! The command line: every subcommand and flag, with its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "clusterbench",
    version,
    about = "Load-testing and benchmark harness for Internet server clusters, with a bundled Porcupine-style mail cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one mail node (what `cluster up` starts for each node).
    Node(NodeArgs),
    /// Run the web service's origin server: a seeded corpus of HTML pages, GIFs, JPEGs and other
    /// objects over HTTP/1.1 (/obj/N.ext, /manifest.json, /health), standing in for the Internet.
    Origin(OriginArgs),
    /// Manage a local cluster of nodes.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run an experiment end to end: launch the target, drive the workload, inject the faults,
    /// check correctness, write DIR/results.json and print a summary.
    Run(RunArgs),
    /// Render saved results (one or more results.json) as one self-contained HTML page.
    Report(ReportArgs),
    /// Find the highest offered rate that meets the experiment's SLO (step up, then bisect).
    Capacity(CapacityArgs),
    /// Measure the regression gate on this machine: run an experiment N times, print each
    /// metric's noise, how often `compare` would call an unchanged run regressed, and the runs
    /// and thresholds a false-alarm rate and a detectable change need; optionally write the gate.
    Calibrate(CalibrateArgs),
    /// Run a load agent: a coordinator (`clusterbench run` with `[loadgen] agents` or
    /// `--agents N`) hands it a share of the workload and merges what it streams back.
    Agent(AgentArgs),
    /// Compare a candidate's results with a baseline's: per metric a change, a confidence interval
    /// and a verdict. Exit 0: nothing regressed beyond the gate; 1: something did; 2: bad input.
    Compare(CompareArgs),
    /// Find where each metric's level moved for good over a series of results, one per commit in
    /// the order given (E-divisive means, Welch's t, Bonferroni over cuts and metrics): one line
    /// per change point, improvements included. Exit 0 whenever the input was read (a history
    /// informs; `compare` is the gate); 2: bad input.
    History(HistoryArgs),
    /// Run one process of the web cluster (a node daemon, or a process a node daemon starts).
    Web(WebArgs),
    /// Run the deterministic simulations of the cluster's protocols.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Web access traces (Common Log Format): synthesize a TranSend-like one, or measure any
    /// one against TranSend's mix, sizes, popularity and burstiness.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write a seeded synthetic trace (CLF, one request per line) and print its fit.
    Synth(TraceSynthArgs),
    /// Read a CLF or Combined log (plain or gzip) and print its fit and the lines skipped.
    Fit(TraceFitArgs),
}

#[derive(Debug, Args)]
pub struct TraceSynthArgs {
    /// Where to write the trace.
    #[arg(long)]
    pub out: PathBuf,
    /// The synthesizer's settings (TOML; any key of `loadgen::trace::synth::SynthConfig`).
    /// The flags below override the file's values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Length of the trace, in seconds (default 86400).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Mean request rate (default 5.8, TranSend's).
    #[arg(long)]
    pub mean_per_s: Option<f64>,
    /// Distinct objects (default 10000).
    #[arg(long)]
    pub objects: Option<u32>,
    /// Zipf exponent of popularity (default 0.75).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Compress the trace with gzip.
    #[arg(long)]
    pub gzip: bool,
}

#[derive(Debug, Args)]
pub struct TraceFitArgs {
    /// The log: CLF or Combined, plain or gzip (told by its magic bytes).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment file (TOML).
    pub experiment: PathBuf,
    /// Where results.json (and the bundled cluster's data) go. Default: results/NAME-TIMESTAMP.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override any key of the experiment, e.g. --set cluster.nodes=4 --set workload.rate.per_s=500.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Split the load over N agent processes started on this machine (loadgen.local_agents=N).
    #[arg(long, value_name = "N")]
    pub agents: Option<u32>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to listen on for a coordinator (port 0: any free port; the chosen address is
    /// printed as `READY agent ADDR`).
    #[arg(long, default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,
    /// The token a coordinator must present.
    #[arg(long, env = "CLUSTERBENCH_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This agent's name in reports (default: the host name and listen address).
    #[arg(long)]
    pub name: Option<String>,
    /// Exit after serving one run (for a Kubernetes Job or a Compose service that should end).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// The experiment file (TOML); its rate is replaced by each probe's.
    pub experiment: PathBuf,
    /// Where the probes' results go. Default: results/NAME-capacity-TIMESTAMP.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override any key of the experiment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// First offered rate tried (operations per second).
    #[arg(long, default_value_t = 50.0)]
    pub start_per_s: f64,
    /// Stop bisecting when the bracket is this narrow (relative).
    #[arg(long, default_value_t = 0.1)]
    pub precision: f64,
    /// Probe runs at most (before the 80/100/120% table).
    #[arg(long, default_value_t = 12)]
    pub probes: u32,
    /// A daily mail volume: how many nodes like these it needs.
    #[arg(long)]
    pub daily_messages: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WebArgs {
    /// What to run.
    #[arg(value_enum)]
    pub role: WebRole,
    /// The web cluster's configuration (web.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// The process's number within its role (the node's id for a node daemon).
    #[arg(long, default_value_t = 0)]
    pub id: u32,
    /// The node (host) this process runs on.
    #[arg(long, default_value_t = 1)]
    pub node: u32,
    /// A worker's class: jpeg, gif, html or aggregate.
    #[arg(long)]
    pub class: Option<String>,
    /// Where the manager takes reports (UDP), when the spawner knows; else the first beacon says.
    #[arg(long)]
    pub manager_reports: Option<std::net::SocketAddr>,
    /// Address to listen on (a node daemon: the address its processes listen on).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Node daemon: where to listen instead of its address in the configuration.
    #[arg(long)]
    pub listen: Option<String>,
    /// Node daemon: start the manager here unless one runs somewhere (to boot a cluster with no
    /// supervisor).
    #[arg(long)]
    pub start_manager: bool,
}

/// The web cluster's process roles.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WebRole {
    /// The node daemon of one host: starts and stops the host's processes.
    Node,
    Manager,
    FrontEnd,
    Worker,
    Cache,
    Profiles,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The experiment file (TOML): one configuration, run --runs times.
    #[arg(required_unless_present = "from")]
    pub experiment: Option<PathBuf>,
    /// Runs of the experiment (each with its own seed).
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Instead of running: results of runs made before (results.json files or directories).
    #[arg(long, value_name = "DIR", conflicts_with = "experiment")]
    pub from: Vec<PathBuf>,
    /// Runs a side the gate will compare. Default: the gate's `repetitions`, else 3.
    #[arg(long)]
    pub repetitions: Option<u32>,
    /// The chance of a false alarm (any metric of an unchanged run called regressed) to aim for.
    #[arg(long, default_value_t = 0.05)]
    pub false_alarm: f64,
    /// The smallest relative change the gate should catch (4 times in 5).
    #[arg(long, default_value_t = 0.10)]
    pub detect: f64,
    /// The gate whose thresholds to start from (default: the built-in ones).
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// Write the calibrated gate (TOML) here, for `compare --gate`.
    #[arg(long)]
    pub write_gate: Option<PathBuf>,
    /// Also write the calibration as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the runs go. Default: results/NAME-calibrate-TIMESTAMP.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override any key of the experiment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A results.json, or a directory of them (repetitions).
    pub baseline: PathBuf,
    /// A results.json, or a directory of them (repetitions).
    pub candidate: PathBuf,
    /// Thresholds (TOML, e.g. ci/gate.toml). Default: 5% throughput, 10% latency, 25% recovery.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// Also write the comparison as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the candidate's figures for github-action-benchmark / Bencher.
    #[arg(long)]
    pub benchmark_json: Option<PathBuf>,
    /// Also write the comparison as an HTML page.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// One per commit, oldest first: a results.json, or a directory of them (repetitions of that
    /// commit). Name them so that they sort in order, e.g. perf-history/00000042-1a2b3c4/.
    #[arg(required = true, value_name = "RESULTS")]
    pub commits: Vec<PathBuf>,
    /// Thresholds (TOML, e.g. ci/gate.toml), as for `compare`: a change smaller than a metric's
    /// threshold is not a change point; `confidence` sets the p-value needed.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// Also write every metric's series and change points as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the history as an HTML page (a chart per metric).
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// results.json files written by `clusterbench run`.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Where to write the page. Default: report.html beside a single results file, or in the
    /// current directory for several.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Soak the Wombat membership protocol: many seeded runs of drops, delays, partitions and
    /// crashes; every failure prints the seed that replays it. Exits non-zero on any failure.
    Membership(SimMembershipArgs),
    /// Simulate the whole mail cluster (membership, replication, placement, the mail map, the
    /// store on a simulated disk) under seeded crashes, partitions, loss, duplication, delay
    /// and clock skew, with clients delivering, reading, flagging and expunging; check that no
    /// acknowledged message is lost or duplicated and that replicas converge. Every failure
    /// prints its seed and the events that led to it. Exits non-zero on any failure.
    Mail(SimMailArgs),
}

#[derive(Debug, Args)]
pub struct SimMailArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1_000)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Run this one seed and print its events (replays a failure exactly).
    #[arg(long, conflicts_with_all = ["seeds", "start"])]
    pub seed: Option<u64>,
    /// Nodes in each simulated cluster.
    #[arg(long, default_value_t = 4)]
    pub nodes: u32,
    /// Copies of each message.
    #[arg(long, default_value_t = 2)]
    pub replication: usize,
    /// Mailboxes the clients use.
    #[arg(long, default_value_t = 3)]
    pub users: u32,
    /// Simulated milliseconds of faults and client load per seed.
    #[arg(long, default_value_t = 6_000)]
    pub chaos_ms: u64,
    /// Probability that a message is lost during the chaos.
    #[arg(long)]
    pub drop_probability: Option<f64>,
    /// Probability that a message is delivered twice during the chaos.
    #[arg(long)]
    pub duplicate_probability: Option<f64>,
    /// Log segment size in bytes (small, so that compaction comes often).
    #[arg(long, default_value_t = 4096)]
    pub segment_bytes: u64,
    /// Threads running seeds (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SimMembershipArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 10_000)]
    pub seeds: u64,
    /// First seed (replay one failure with --start SEED --seeds 1).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Nodes in each simulated cluster.
    #[arg(long, default_value_t = 5)]
    pub nodes: u32,
    /// Probability that a message sent during the chaos phase is lost.
    #[arg(long)]
    pub drop_probability: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a local cluster in the foreground; Ctrl-C stops it.
    Up(ClusterUpArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node configuration file (TOML). Flags below override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Permanent node id (1, 2, ...).
    #[arg(long)]
    pub id: Option<u32>,
    /// Directory for the node's mail log.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Mail domain the node accepts mail for.
    #[arg(long)]
    pub domain: Option<String>,
    /// Bearer token for the admin API.
    #[arg(long, env = "CLUSTERBENCH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// SMTP listen address (port 0: any free port).
    #[arg(long)]
    pub smtp: Option<SocketAddr>,
    /// POP3 listen address.
    #[arg(long)]
    pub pop3: Option<SocketAddr>,
    /// IMAP listen address.
    #[arg(long)]
    pub imap: Option<SocketAddr>,
    /// Admin API listen address.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct OriginArgs {
    /// Address to listen on (port 0: any free port; the chosen address is printed as
    /// `READY {"http": ADDR, ...}`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The corpus's seed: the same seed and object count serve the same bytes everywhere.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Objects in the corpus (1 to 10,000,000).
    #[arg(long, default_value_t = 10_000)]
    pub objects: u32,
    /// Miss penalty: milliseconds added to every object response, as a distant server's would.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Serve a trace's URLs instead of the corpus: every distinct path of this CLF log (plain or
    /// gzip) as a real body of its type (by extension) and the largest size it was logged with.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClusterUpArgs {
    /// Which reference cluster: the mail service (Porcupine) or the web service (SNS/TACC).
    #[arg(long, value_enum, default_value_t = ServiceArg::Mail)]
    pub service: ServiceArg,
    /// Number of nodes (web: dedicated nodes).
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Web: overflow nodes, recruited only while the dedicated ones are saturated.
    #[arg(long, default_value_t = 0)]
    pub overflow_nodes: u32,
    /// Web: an origin the front ends may fetch from (HOST:PORT; repeatable). Default: a bundled
    /// origin (`clusterbench origin`) started with the cluster.
    #[arg(long = "origin", value_name = "HOST:PORT")]
    pub origins: Vec<String>,
    /// Web: the bundled origin's objects.
    #[arg(long, default_value_t = 10_000)]
    pub objects: u32,
    /// Web: the web configuration (web.toml) whose settings the processes start from.
    #[arg(long)]
    pub web_config: Option<PathBuf>,
    /// Web: front ends.
    #[arg(long)]
    pub front_ends: Option<u32>,
    /// Web: workers per class, e.g. jpeg=2,gif=1,html=1.
    #[arg(long, value_name = "CLASS=N,...")]
    pub workers: Option<String>,
    /// Web: cache partitions.
    #[arg(long)]
    pub caches: Option<u32>,
    /// Web: a modelled CPU per worker costing this many milliseconds per KB of input.
    #[arg(long)]
    pub cpu_ms_per_kb: Option<f64>,
    /// Web: how front ends pick workers: naive or corrected.
    #[arg(long)]
    pub lottery: Option<String>,
    /// Directory for the cluster: node data, logs, and cluster.json. Reused if it exists.
    #[arg(long, default_value = "clusterbench-cluster")]
    pub dir: PathBuf,
    /// Number of provisioned users (user0, user1, ...). Default: as stored in DIR, else 100.
    #[arg(long)]
    pub users: Option<u64>,
    /// Password of every user. Default: as stored in DIR, else "password".
    #[arg(long)]
    pub password: Option<String>,
    /// Mail domain. Default: as stored in DIR, else example.test.
    #[arg(long)]
    pub domain: Option<String>,
    /// Fixed ports: node i listens on BASE+5(i-1) (SMTP), +1 (POP3), +2 (IMAP), +3 (admin),
    /// +4 (peer). Default: free ports chosen at start.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Address nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// A node configuration file (TOML) whose limits and settings every node starts from.
    #[arg(long)]
    pub node_config: Option<PathBuf>,
    /// Copies of every message, on distinct nodes (1..=nodes). Default: as in --node-config, else 1.
    #[arg(long)]
    pub replication: Option<u32>,
    /// Soft limit on the nodes one mailbox spreads over (dynamic placement). Default 2.
    #[arg(long)]
    pub spread: Option<u32>,
    /// Where new messages go: dynamic, random or static. Default dynamic.
    #[arg(long, value_enum)]
    pub placement: Option<PlacementArg>,
}

/// The reference clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceArg {
    Mail,
    Web,
}

/// The placement policies, as the command line names them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PlacementArg {
    Dynamic,
    Random,
    Static,
}

impl From<PlacementArg> for cluster::mail::Placement {
    fn from(p: PlacementArg) -> Self {
        match p {
            PlacementArg::Dynamic => cluster::mail::Placement::Dynamic,
            PlacementArg::Random => cluster::mail::Placement::Random,
            PlacementArg::Static => cluster::mail::Placement::Static,
        }
    }
}
