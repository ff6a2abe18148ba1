//! `clusterbench capacity EXPERIMENT.toml`: the highest offered rate that meets the experiment's
//! `[slo]`, loses nothing, and keeps up (completes at least [`KEEP_UP`] of the offered rate). Steps the open-loop rate up (doubling) until a run misses, then
//! bisects between the last pass and the first miss; reports per-node capacity, the nodes a daily
//! volume needs, and a table at 80/100/120% of the capacity in the style of SPECmail. Each probe
//! is a full run in its own directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use loadgen::experiment::{set_value, Experiment};
use serde_json::json;

use crate::cli::CapacityArgs;
use crate::run::results::Outcome;
use crate::run::{load_table, run_one};

/// Probe runs at most (doubling plus bisection).
pub use loadgen::experiment::PROBES_MAX;

pub fn run(args: CapacityArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(search(args))
}

/// One run of a capacity search, at one offered rate.
pub struct Probe {
    pub rate: f64,
    /// Met the SLO and lost nothing.
    pub pass: bool,
    pub smtp_per_s: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    /// Its directory, relative to the search's.
    pub dir: String,
    /// Its results.json.
    pub results: serde_json::Value,
}

/// How to search: the first rate, the factor to step by until a pass and a miss bracket the
/// capacity, the relative width at which bisection stops, and the most probes.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    pub start_per_s: f64,
    pub step: f64,
    pub precision: f64,
    pub probes: u32,
}

/// What a search found: the highest passing rate (none if no probe passed) and every probe in
/// the order run.
pub struct Found {
    pub capacity: Option<f64>,
    pub probes: Vec<Probe>,
}

impl Found {
    /// The probe at the capacity.
    pub fn best(&self) -> Option<&Probe> {
        self.probes
            .iter()
            .filter(|p| p.pass)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }
}

/// Steps the open-loop rate from `start_per_s` (up by `step` while probes pass, down while they
/// miss) until a pass and a miss bracket the capacity, then bisects until the bracket is
/// `precision` wide (relative) or `probes` runs are spent. Each probe runs in `out/rate=R/`.
pub async fn find(
    table: &toml::Table,
    file: &Path,
    out: &Path,
    search: Search,
) -> anyhow::Result<Found> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut low: Option<f64> = None;
    let mut high: Option<f64> = None;
    let mut rate = search.start_per_s;
    while (probes.len() as u32) < search.probes {
        let probe = probe(table, rate, out, file).await?;
        eprintln!(
            "probe {:>7.1}/s: {} ({} {:.1}/s, p99 {:.1} ms, errors {:.2}%)",
            rate,
            if probe.pass {
                "meets the SLO"
            } else {
                "misses"
            },
            if probe.results.get("web").is_some() {
                "http"
            } else {
                "smtp"
            },
            probe.smtp_per_s,
            probe.p99_ms,
            probe.error_rate * 100.0
        );
        if probe.pass {
            low = Some(low.map_or(rate, |l: f64| l.max(rate)));
        } else {
            high = Some(high.map_or(rate, |h: f64| h.min(rate)));
        }
        probes.push(probe);
        rate = match (low, high) {
            (Some(l), None) => l * search.step,
            (None, Some(h)) => h / search.step,
            (Some(l), Some(h)) if (h - l) / h > search.precision => (l + h) / 2.0,
            _ => break,
        };
    }
    Ok(Found {
        capacity: low,
        probes,
    })
}

async fn search(args: CapacityArgs) -> anyhow::Result<()> {
    let mut table = load_table(&args.experiment, &args.set)?;
    if table.remove("sweep").is_some() {
        bail!(
            "{}: capacity runs one configuration; remove [sweep]",
            args.experiment.display()
        );
    }
    let base = Experiment::from_table(table.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.experiment.display()))?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(format!(
            "{}-capacity-{}",
            base.name,
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let web = base.is_web();
    anyhow::ensure!(
        !(web && args.daily_messages.is_some()),
        "--daily-messages sizes a mail cluster; {} is a web experiment",
        args.experiment.display()
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    anyhow::ensure!(args.start_per_s > 0.0, "--start-per-s must be positive");
    anyhow::ensure!(
        args.probes >= 2 && args.probes <= PROBES_MAX,
        "--probes must be 2 to {PROBES_MAX}"
    );

    let found = find(
        &table,
        &args.experiment,
        &out,
        Search {
            start_per_s: args.start_per_s,
            step: 2.0,
            precision: args.precision,
            probes: args.probes,
        },
    )
    .await?;
    let probes = found.probes;
    let Some(capacity) = found.capacity else {
        bail!(
            "no probe met the SLO, down to {:.1}/s: lower --start-per-s",
            probes.last().map_or(0.0, |p| p.rate)
        );
    };
    // The SPECmail-style table: 80, 100 and 120% of the capacity.
    let mut table_rows = Vec::new();
    for share in [0.8, 1.0, 1.2] {
        let p = probe(&table, capacity * share, &out, &args.experiment).await?;
        table_rows.push((share, p));
    }
    let nodes = base.target.as_ref().map_or(base.cluster.nodes, |_| 1);
    let per_node = capacity / f64::from(nodes);
    let needed = args.daily_messages.map(|daily| {
        (daily as f64 / 86_400.0 / (per_node * base.workload.mix.fraction(loadgen::OpKind::Smtp)))
            .ceil()
    });
    println!();
    if web {
        // A web cluster's capacity is its distillers' (and front ends'), not its nodes'.
        let workers = table_rows
            .iter()
            .find(|(share, _)| *share == 1.0)
            .and_then(|(_, p)| p.results["web"]["cluster"]["workers"].as_u64());
        println!(
            "capacity of {}: {capacity:.1} requests/s offered ({} node(s){})",
            base.name,
            nodes,
            workers.map_or(String::new(), |w| format!(
                ", {w} worker(s): {:.1} per worker",
                capacity / w.max(1) as f64
            ))
        );
    } else {
        println!("capacity of {}: {capacity:.1} operations/s offered ({per_node:.1} per node, {nodes} node(s))", base.name);
    }
    if let (Some(daily), Some(n)) = (args.daily_messages, needed) {
        println!("{daily} messages a day need {n} node(s) like these");
    }
    let done = if web { "req/s" } else { "smtp/s" };
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>8} {:>6}",
        "load", "offered/s", done, "p99 ms", "errors", "SLO"
    );
    for (share, p) in &table_rows {
        println!(
            "{:>5.0}% {:>10.1} {:>10.1} {:>10.1} {:>7.2}% {:>6}",
            share * 100.0,
            p.rate,
            p.smtp_per_s,
            p.p99_ms,
            p.error_rate * 100.0,
            if p.pass { "met" } else { "missed" }
        );
    }
    let summary = json!({
        "schema_version": 1,
        "kind": "capacity",
        "name": base.name,
        "capacity_per_s": capacity,
        "nodes": nodes,
        "per_node_per_s": per_node,
        "daily_messages": args.daily_messages,
        "nodes_needed": needed,
        "service": if web { "web" } else { "mail" },
        "probes": probes.iter().map(|p| json!({"rate_per_s": p.rate, "pass": p.pass, done_key(web): p.smtp_per_s, "p99_ms": p.p99_ms, "error_rate": p.error_rate, "dir": p.dir})).collect::<Vec<_>>(),
        "table": table_rows.iter().map(|(s, p)| json!({"share": s, "rate_per_s": p.rate, "pass": p.pass, done_key(web): p.smtp_per_s, "p99_ms": p.p99_ms, "error_rate": p.error_rate, "dir": p.dir})).collect::<Vec<_>>(),
    });
    let path = out.join("capacity.json");
    crate::local_cluster::write_atomically(
        &path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "(capacity.json and every probe's results in {})",
        out.display()
    );
    Ok(())
}

/// What a probe completed a second, in capacity.json: SMTP operations, or (web) requests.
fn done_key(web: bool) -> &'static str {
    if web {
        "requests_per_s"
    } else {
        "smtp_per_s"
    }
}

/// The share of the offered rate a probe must complete (over the run, its drain included) to
/// count as keeping up; the rest of the margin is Poisson noise.
pub const KEEP_UP: f64 = 0.9;
/// The longest a probe's replication backlog may take to drain after the load, as a share of
/// the load's duration, for the probe to count as keeping up.
pub const DRAIN_SHARE_MAX: f64 = 0.1;

/// One run at `rate` offered operations per second (open loop, Poisson). It passes when it met
/// the SLO, lost nothing, and kept up (see [`KEEP_UP`] and [`DRAIN_SHARE_MAX`]).
async fn probe(table: &toml::Table, rate: f64, out: &Path, file: &Path) -> anyhow::Result<Probe> {
    let mut t = table.clone();
    let mut r = toml::Table::new();
    r.insert("per_s".into(), toml::Value::Float(rate));
    set_value(&mut t, "workload.rate", toml::Value::Table(r)).map_err(|e| anyhow::anyhow!(e))?;
    let experiment =
        Experiment::from_table(t).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let dir = format!("rate={rate:.1}");
    let (results, outcome) = run_one(experiment, &out.join(&dir)).await?;
    let smtp = &results["operations"]["ops"]["smtp"];
    let error_rate = results["slo"]["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["what"] == "error rate"))
        .and_then(|c| c["value"].as_f64())
        .unwrap_or(0.0);
    // Keeping up: operations completed over the run (its drain included) against the offered
    // rate. A target that falls behind drains a backlog after the load ends, which stretches
    // the run; in a short probe its p99 may still look fine.
    let ops = &results["operations"];
    let attempted: f64 = ops["ops"].as_object().map_or(0.0, |o| {
        o.values().filter_map(|v| v["attempted"].as_f64()).sum()
    });
    let measured_s = ops["measured_s"].as_f64().unwrap_or(0.0);
    // And replicating: optimistic replication acknowledges before it copies, so a cluster can
    // acknowledge faster than it replicates for a while; what is owed must drain promptly.
    let duration_s = results["experiment"]["workload"]["duration_s"]
        .as_f64()
        .unwrap_or(0.0);
    let replicates = match &results["settle"] {
        serde_json::Value::Null => true,
        settle => {
            settle["backlog_at_load_end"].as_u64() == Some(0)
                || settle["drained_s"]
                    .as_f64()
                    .is_some_and(|d| d <= DRAIN_SHARE_MAX * duration_s)
        }
    };
    let keeps_up = measured_s > 0.0 && attempted / measured_s >= KEEP_UP * rate && replicates;
    Ok(Probe {
        rate,
        pass: outcome == Outcome::Pass && keeps_up,
        // A web run's main figure is all its requests (every content type) and their worst p99.
        smtp_per_s: match results.get("web") {
            Some(_) => web_ops(&results)
                .map(|o| o["throughput_per_s"].as_f64().unwrap_or(0.0))
                .sum(),
            None => smtp["throughput_per_s"].as_f64().unwrap_or(0.0),
        },
        p99_ms: match results.get("web") {
            Some(_) => web_ops(&results)
                .map(|o| o["p99_ms"].as_f64().unwrap_or(0.0))
                .fold(0.0, f64::max),
            None => smtp["p99_ms"].as_f64().unwrap_or(0.0),
        },
        error_rate,
        dir,
        results,
    })
}

/// A web run's operations (HTTP requests by content type).
fn web_ops(results: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    loadgen::OpKind::WEB
        .iter()
        .filter_map(move |k| results["operations"]["ops"].get(k.name()))
}
