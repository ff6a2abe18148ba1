//! `clusterbench run workloads/transend-quickstart.toml`, as the README gives it (shortened): a
//! web cluster started, a synthetic trace replayed through it, a JPEG distiller killed with
//! SIGKILL mid-run and restarted by the manager, every response checked, the report written
//! with the web charts, verdict PASS.

mod common;

use std::process::Command;

use common::BIN;
use serde_json::Value;

#[test]
fn the_web_quickstart_replays_a_trace_survives_a_killed_worker_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let experiment = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workloads/transend-quickstart.toml"
    );
    let status = Command::new(BIN)
        .args([
            "run",
            experiment,
            "--set",
            "workload.duration_s=28",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{}", results["verdict"]);
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
}
