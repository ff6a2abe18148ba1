//! `clusterbench run workloads/transend-quickstart.toml`, as the README gives it (shortened): a
//! web cluster started, a synthetic trace replayed through it, a JPEG distiller killed with
//! SIGKILL mid-run and restarted by the manager, every response checked, the report written
//! with the web charts, verdict PASS; and `compare` gating its results.

mod common;

use std::process::Command;

use common::BIN;
use serde_json::Value;

/// `clusterbench run workloads/WORKLOAD --set ...` into `out`; it must pass. Its results.
fn run_workload(workload: &str, sets: &[&str], out: &std::path::Path) -> Value {
    let experiment = format!("{}/workloads/{workload}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(BIN);
    command.arg("run").arg(experiment);
    for set in sets {
        command.args(["--set", set]);
    }
    let status = command.arg("--out").arg(out).status().unwrap();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{}", results["verdict"]);
    results
}

#[test]
fn the_web_quickstart_replays_a_trace_survives_a_killed_worker_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let results = run_workload(
        "transend-quickstart.toml",
        &["workload.duration_s=28"],
        &out,
    );
    let web = &results["web"];
    assert_eq!(web["target"], "bundled");
    assert_eq!(web["trace"]["synthesized"], true);
    let sent = web["trace"]["sent"].as_u64().unwrap();
    assert!(sent > 500, "{sent} requests sent");
    // Every request answered and checked: distilled images decoded, originals byte-identical.
    assert_eq!(web["outcomes"]["ok"].as_u64(), Some(sent), "{web}");
    assert_eq!(web["check_failures"], 0);
    assert!(web["outcomes"]["distilled"].as_u64().unwrap() > 0);
    assert!(web["outcomes"]["verified"].as_u64().unwrap() > 0);
    // Distilled images of the size their profile asks for (the origin's manifest gives the
    // originals' sizes, the response names the profile).
    assert!(web["outcomes"]["sized"].as_u64().unwrap() > 0, "{web}");
    assert!(
        web["hit_rate"].as_f64().unwrap() > 0.0,
        "a Zipf trace hits the cache"
    );
    // The killed worker: the manager saw it exit and started it again.
    let fault = &web["faults"][0];
    assert_eq!(fault["process"], "worker jpeg 1");
    assert!(
        fault["detail"].as_str().unwrap().starts_with("SIGKILL"),
        "{fault}"
    );
    let respawn = fault["respawn_s"]
        .as_f64()
        .expect("the worker was restarted");
    assert!(fault["detection_s"].as_f64().is_some(), "{fault}");
    eprintln!(
        "worker jpeg 1 killed: detected {} s, respawned {respawn} s, hints back {} s",
        fault["detection_s"], fault["hints_back_s"]
    );
    let events = web["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["process"] == "worker jpeg 1" && e["kind"] == "exit"),
        "{events:?}"
    );
    // Per content type figures, and the per-worker queues polled over the run.
    for op in ["html", "gif", "jpeg"] {
        assert!(
            results["operations"]["ops"][op]["count"].as_u64().unwrap() > 0,
            "{op}"
        );
    }
    assert!(web["samples"].as_array().unwrap().len() > 20);
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains("Queue length of every worker"),
        "the queue chart"
    );
    assert!(
        report.contains("kill worker jpeg 1"),
        "the fault in the report"
    );

    // `compare` gates web runs as it gates mail: the run against itself is unchanged; against a
    // copy whose JPEGs came at half the rate and twice the p99, it regressed, naming jpeg.
    let path = out.join("results.json");
    let same = Command::new(BIN)
        .arg("compare")
        .args([&path, &path])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&same.stdout);
    assert_eq!(same.status.code(), Some(0), "{text}");
    assert!(text.contains("no regression"), "{text}");
    assert!(
        text.contains("jpeg"),
        "jpeg among the compared metrics: {text}"
    );
    let mut slower = results.clone();
    let jpeg = &mut slower["operations"]["ops"]["jpeg"];
    jpeg["throughput_per_s"] = (jpeg["throughput_per_s"].as_f64().unwrap() / 2.0).into();
    jpeg["p99_ms"] = (jpeg["p99_ms"].as_f64().unwrap() * 2.0).into();
    let candidate = dir.path().join("slower.json");
    std::fs::write(&candidate, serde_json::to_string(&slower).unwrap()).unwrap();
    let worse = Command::new(BIN)
        .arg("compare")
        .arg(&path)
        .arg(&candidate)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&worse.stdout);
    assert_eq!(worse.status.code(), Some(1), "{text}");
    assert!(text.contains("REGRESSED"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("jpeg throughput_per_s") && l.ends_with("regressed")),
        "{text}"
    );
}

#[test]
fn a_burst_recruits_the_overflow_node_and_releases_it_afterwards() {
    // workloads/transend-overflow.toml, with its burst earlier and room for one extra worker on
    // the dedicated node instead of two: two modelled distillers serve 25 jpeg/s, so a burst
    // asking 40/s outruns them even from a load generator starved on a busy machine, and the
    // overflow worker is needed. The dedicated node's extra worker comes first, after the
    // manager's hold-off, then the overflow one. After the burst, 3 requests a second let even a
    // starved cluster drain its backlog and go calm, so the overflow worker is released well
    // before the end (at 43-61 s of 66 with two CPU hogs beside the test; the run lasts 80 s).
    let dir = tempfile::tempdir().unwrap();
    let results = run_workload(
        "transend-overflow.toml",
        &[
            "workload.duration_s=80",
            "workload.warmup_s=2",
            "workload.rate={ steps = [[0, 10], [5, 40], [30, 3]] }",
            "cluster.web.workers.per_node_max=2",
        ],
        &dir.path().join("out"),
    );
    let web = &results["web"];
    assert_eq!(web["check_failures"], 0);
    let events = web["events"].as_array().unwrap();
    let at = |kind: &str| -> Vec<f64> {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["t_s"].as_f64().unwrap())
            .collect()
    };
    let (overflow, release) = (at("overflow"), at("release"));
    eprintln!("overflow spawns at {overflow:?}, releases at {release:?}");
    // A worker started on the overflow node during the burst, and one was let go later, once
    // idle. (On a busy machine the manager's reactions shift: a worker may idle out and come
    // back, so only that much is asserted.)
    assert!(!overflow.is_empty(), "no overflow spawn: {events:?}");
    assert!(
        overflow.iter().any(|t| (5.0..=34.0).contains(t)),
        "no overflow spawn during the burst: {overflow:?}"
    );
    assert!(
        release.iter().any(|r| *r > overflow[0]),
        "no release after the overflow spawn: {events:?}"
    );
    assert!(
        web["cluster"]["overflow_in_use_max"].as_u64().unwrap() >= 1,
        "{}",
        web["cluster"]
    );
    let samples = web["samples"].as_array().unwrap();
    assert!(samples
        .iter()
        .any(|s| s["overflow_in_use"].as_u64().unwrap() >= 1));
}

#[test]
fn a_partition_splits_the_web_cluster_and_healing_leaves_one_of_each_process() {
    // Two nodes cut apart for 8 s: each side's manager (the one there, and one a front end
    // restarts) declares the other node lost and starts its processes again; after the heal the
    // duplicates are stopped. The clients see no error meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let experiment = r#"
name = "web-partition"
seed = 1
[cluster]
service = "web"
nodes = 2
[cluster.web.workers]
classes = { jpeg = 2, gif = 2, html = 1 }
cpu = { model = "modelled", ms_per_kb = 2.0 }
[cluster.web.cache]
partitions = 2
[workload]
duration_s = 32
warmup_s = 3
rate = { per_s = 30 }
[workload.trace]
timing = "rate"
synth = { objects = 1000 }
[[faults]]
at_s = 10
action = "partition"
groups = [[1], [2]]
duration_s = 8
[slo]   # judged: every request answered and checked, not how fast on a busy runner
p99_ms = { html = 30000, gif = 30000, jpeg = 30000, other = 30000 }
error_rate_max = 0.01
"#;
    let (output, results) = common::run_experiment(dir.path(), experiment, &[]);
    let log = common::output_text(&output);
    let results = results.unwrap_or_else(|| panic!("{log}"));
    assert_eq!(output.status.code(), Some(0), "{log}");
    let web = &results["web"];
    assert_eq!(web["check_failures"], 0);
    let fault = &web["faults"][0];
    assert_eq!(fault["action"], "partition");
    assert!(
        fault["detail"].as_str().unwrap().contains("cut apart"),
        "{fault}"
    );
    let end = fault["end_s"].as_f64().expect("the partition ended");
    assert!(fault["degraded"].as_u64().is_some(), "{fault}");
    let events = web["events"].as_array().unwrap();
    let times = |kind: &str| -> Vec<f64> {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["t_s"].as_f64().unwrap())
            .collect()
    };
    let lost = times("node-lost");
    assert!(
        lost.iter().any(|t| (10.0..end).contains(t)),
        "a node lost during the partition: {events:?}"
    );
    assert!(!times("failover").is_empty(), "{events:?}");
    assert!(
        times("duplicate").iter().any(|t| *t >= end - 0.5),
        "duplicates stopped after the heal: {events:?}"
    );
    // At the end, each worker once.
    let last = web["samples"].as_array().unwrap().last().unwrap();
    let mut keys: Vec<&str> = last["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "worker gif 1",
            "worker gif 2",
            "worker html 1",
            "worker jpeg 1",
            "worker jpeg 2"
        ],
        "{last}"
    );
}
