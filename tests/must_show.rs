//! What the sweep, report and compare commands must show, through the binary with real runs of
//! the bundled cluster (modelled disks, so the figures do not depend on this machine's disk):
//!
//! - a sweep over nodes 1, 2, 4 and replication 1, 2 with two repetitions finishes in minutes and
//!   its report opens in a real browser with its charts;
//! - `compare` of a run against a rerun of the same configuration says unchanged (exit 0), and
//!   against the same experiment with the disks' sync rate halved says regressed (exit 1);
//! - a saturated sweep finds each configuration's capacity (a probe meets the SLO, a faster one
//!   misses) and shows the run at that rate;
//! - `history` over ten real runs, the last four with the disk at 80 % of its sync rate, finds
//!   the step where it starts, and over ten unchanged runs finds nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{open_in_chromium, require_tool, BIN};
use serde_json::Value;

fn text(output: &Output) -> String {
    common::output_text(output)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_sweep_of_nodes_and_replication_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (output, _) = common::run_experiment(
        dir.path(),
        r#"
name = "nodes-by-replication"
[cluster]
disk = { model = "modelled", syncs_per_s = 200, latency_ms = 2 }
[workload]
users = 200
skew = 0.0
duration_s = 3
warmup_s = 1
rate = { closed = 8 }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
recipients = { mean = 1.0, max = 1 }
[slo]
p99_ms = { smtp = 5000 }
[check]
settle_s = 20
[sweep]
repeat = 2
"cluster.nodes" = [1, 2, 4]
"cluster.replication" = [1, 2]
"#,
        &[],
    );
    let out = dir.path().join("out");
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    eprintln!("the sweep took {:.0} s", started.elapsed().as_secs_f64());
    let sweep = read_json(&out.join("sweep.json"));
    // nodes=1 cannot hold two replicas: five configurations, two repetitions each.
    assert_eq!(sweep["runs"].as_array().unwrap().len(), 10, "{sweep}");
    for r in sweep["runs"].as_array().unwrap() {
        let results = read_json(&out.join(r["dir"].as_str().unwrap()).join("results.json"));
        assert_eq!(results["correctness"]["lost"], 0, "{}", r["dir"]);
        assert!(
            results["operations"]["ops"]["smtp"]["count"]
                .as_u64()
                .unwrap()
                > 0,
            "{}",
            r["dir"]
        );
    }
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for section in ["Scaling with node count", "Replication overhead"] {
        assert!(html.contains(section), "no {section} section in the report");
    }
    if !require_tool("chromium") {
        return;
    }
    let dom = open_in_chromium(&page);
    // Throughput vs. nodes, efficiency, and replication's throughput and latency at least.
    assert!(
        dom.matches("<svg").count() >= 3,
        "charts missing from the rendered DOM"
    );
    assert!(dom.contains("Efficiency") || dom.contains("efficiency"));
}

/// A disk-bound configuration: one node whose modelled disk takes `syncs_per_s` writes a second,
/// kept saturated by a closed loop, so its throughput and latency are the disk's. The disk is
/// slow (40 syncs a second) so that it, and not the CPU, stays the bottleneck however busy the
/// machine is: at 100 a second a debug build starved of CPU by the rest of the suite could not
/// keep the disk busy, and the halved disk's runs were as fast as the CPU let the others be.
const DISK_BOUND: &str = r#"
name = "gate"
seed = 5
[cluster]
nodes = 1
replication = 1
disk = { model = "modelled", syncs_per_s = 40, latency_ms = 2 }
[workload]
users = 100
skew = 0.0
duration_s = 5
warmup_s = 1
rate = { closed = 4 }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
recipients = { mean = 1.0, max = 1 }
[slo]
p99_ms = { smtp = 5000 }
[check]
settle_s = 20
"#;

/// Repetitions a side.
const REPEAT: u32 = 3;

/// The compare gate on a machine as busy as CI's (this test shares two cores with the rest of
/// the suite, a sweep and Chromium): a rerun must not be called regressed, a halved disk must.
/// The sides' runs are interleaved (baseline, rerun, halved, baseline, ...), as a careful CI job
/// would run them, so that whatever else the machine does falls on every side alike; the gate's
/// statistics (Welch over three runs a side, each run's own sampling error, Holm over the
/// metrics) then keep a rerun's false alarm below 5 % however noisy the machine is.
#[test]
fn compare_finds_a_rerun_unchanged_and_a_halved_disk_regressed() {
    let dir = tempfile::tempdir().unwrap();
    for repetition in 0..REPEAT {
        for (side, extra) in [
            ("baseline", None),
            ("rerun", None),
            ("halved", Some("cluster.disk.syncs_per_s=20")),
        ] {
            let run_dir = dir.path().join(side).join(format!("r{repetition}"));
            std::fs::create_dir_all(&run_dir).unwrap();
            let seed = format!("seed={}", 5 + repetition);
            let mut set = vec!["--set", seed.as_str()];
            if let Some(extra) = extra {
                set.extend(["--set", extra]);
            }
            let (output, _) = common::run_experiment(&run_dir, DISK_BOUND, &set);
            assert!(output.status.success(), "{}", text(&output));
        }
    }
    let baseline = dir.path().join("baseline");
    let rerun = dir.path().join("rerun");
    let halved = dir.path().join("halved");
    let gate = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/gate.toml");
    let compare = |candidate: &Path| {
        Command::new(BIN)
            .arg("compare")
            .arg(&baseline)
            .arg(candidate)
            .args(["--gate", gate])
            .output()
            .unwrap()
    };
    let same = compare(&rerun);
    let log = text(&same);
    assert_eq!(same.status.code(), Some(0), "{log}");
    assert!(log.contains("no regression"), "{log}");
    eprintln!("against a rerun:\n{log}");

    let slower = compare(&halved);
    let log = text(&slower);
    assert_eq!(slower.status.code(), Some(1), "{log}");
    assert!(log.contains("REGRESSED"), "{log}");
    let throughput_line = log
        .lines()
        .find(|l| l.contains("smtp throughput"))
        .unwrap_or_else(|| panic!("no smtp throughput line: {log}"));
    assert!(throughput_line.contains("regressed"), "{log}");
    eprintln!("against the halved disk:\n{log}");
}

#[test]
fn a_saturated_sweep_runs_each_configuration_at_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = common::run_experiment(
        dir.path(),
        r#"
name = "saturated"
[cluster]
replication = 1
disk = { model = "modelled", syncs_per_s = 40, latency_ms = 2 }
[workload]
users = 50
skew = 0.0
duration_s = 3
warmup_s = 1
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
recipients = { mean = 1.0, max = 1 }
[slo]
p99_ms = { smtp = 400 }
[check]
settle_s = 10
[sweep]
"cluster.nodes" = [1, 2]
saturate = { start_per_s = 20, precision = 0.5, probes = 5 }
"#,
        &[],
    );
    let out = dir.path().join("out");
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("capacity/s"), "{log}");
    let sweep = read_json(&out.join("sweep.json"));
    assert!(sweep["saturate"].is_object(), "{sweep}");
    for r in sweep["runs"].as_array().unwrap() {
        let capacity = r["capacity_per_s"].as_f64().unwrap();
        let probes = r["probes"].as_array().unwrap();
        // Bracketed: the capacity met the SLO, and a faster probe missed it.
        assert!(
            probes
                .iter()
                .any(|p| p["pass"] == true && p["rate_per_s"].as_f64() == Some(capacity)),
            "{r}"
        );
        assert!(
            probes
                .iter()
                .any(|p| p["pass"] == false && p["rate_per_s"].as_f64().unwrap() > capacity),
            "{r}"
        );
        // The configuration's run is the probe at the capacity.
        let results = read_json(&out.join(r["dir"].as_str().unwrap()).join("results.json"));
        assert_eq!(results["slo"]["pass"], true, "{r}");
        assert_eq!(results["correctness"]["lost"], 0, "{r}");
        assert!(r["dir"].as_str().unwrap().contains("rate="), "{r}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Saturated"), "the report does not say so");
}

/// One commit's run of [`DISK_BOUND`] (shortened) in `dir/NAME`, with `set` on top.
fn commit_run(dir: &Path, name: &str, seed: u64, set: &[&str]) {
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let seed = format!("seed={seed}");
    let mut args = vec!["--set", seed.as_str(), "--set", "workload.duration_s=5"];
    args.extend_from_slice(set);
    let (output, _) = common::run_experiment(&run_dir, DISK_BOUND, &args);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn history_finds_a_planted_step_and_nothing_in_a_flat_series() {
    let dir = tempfile::tempdir().unwrap();
    // Ten commits of the same code; the planted series is the first six of them and four with
    // the disk at 80 % of its sync rate.
    let mut flat = Vec::new();
    for i in 0..10u64 {
        let name = format!("c{i:02}");
        commit_run(dir.path(), &name, 100 + i, &[]);
        flat.push(name);
    }
    let mut planted: Vec<String> = flat[..6].to_vec();
    for i in 6..10u64 {
        let name = format!("s{i:02}");
        commit_run(
            dir.path(),
            &name,
            100 + i,
            &["--set", "cluster.disk.syncs_per_s=32"],
        );
        planted.push(name);
    }
    let history = |commits: &[String], json: &str| {
        let output = Command::new(BIN)
            .current_dir(dir.path())
            .arg("history")
            .args(commits)
            .args(["--json", json])
            .output()
            .unwrap();
        let log = text(&output);
        assert_eq!(output.status.code(), Some(0), "{log}");
        eprintln!("{log}");
        read_json(&dir.path().join(json))
    };
    let changes = |h: &Value| -> Vec<(String, u64)> {
        h["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| {
                m["change_points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        (
                            m["metric"].as_str().unwrap().to_string(),
                            c["index"].as_u64().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let found = changes(&history(&flat, "flat.json"));
    assert!(
        found.is_empty(),
        "change points in a flat series: {found:?}"
    );
    let found = changes(&history(&planted, "planted.json"));
    assert!(
        found.contains(&("smtp throughput_per_s".to_string(), 6)),
        "the step at commit 6 was not found: {found:?}"
    );
    // The latencies move with the disk too; a noisy p99 may place its step a commit off.
    assert!(
        found.iter().all(|(_, index)| (5..=7).contains(index)),
        "change points away from the step: {found:?}"
    );
}
