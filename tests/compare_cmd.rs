//! `clusterbench compare` as a CI gate: a run against itself is unchanged (exit 0); against a
//! copy with half the throughput and twice the latency it regressed (exit 1); bad input exits 2.

mod common;

use std::process::Command;

use common::BIN;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/reports/tests/fixtures/quickstart.json"
);

fn compare(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("compare")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_gate_passes_the_same_run_and_fails_a_slower_one() {
    let gate = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/gate.toml");
    let out = compare(&[FIXTURE, FIXTURE, "--gate", gate]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("no regression"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let mut slower: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let smtp = &mut slower["operations"]["ops"]["smtp"];
    let t = smtp["throughput_per_s"].as_f64().unwrap();
    smtp["throughput_per_s"] = (t / 2.0).into();
    let p = smtp["p99_ms"].as_f64().unwrap();
    smtp["p99_ms"] = (p * 2.0).into();
    let candidate = dir.path().join("results.json");
    std::fs::write(&candidate, serde_json::to_string(&slower).unwrap()).unwrap();
    let json = dir.path().join("comparison.json");
    let html = dir.path().join("comparison.html");
    let bench = dir.path().join("bench.json");
    let out = compare(&[
        FIXTURE,
        // A directory side: every results.json under it.
        dir.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--benchmark-json",
        bench.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("REGRESSED"), "{text}");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(c["regressed"], true);
    let regressed: Vec<&str> = c["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] == "regressed")
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert!(
        regressed.iter().any(|m| m.contains("throughput")),
        "{regressed:?}"
    );
    assert!(regressed.iter().any(|m| m.contains("p99")), "{regressed:?}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<table"));
    assert!(std::fs::read_to_string(&bench)
        .unwrap()
        .contains("\"unit\""));
}

#[test]
fn bad_input_exits_2() {
    let out = compare(&["/nonexistent/results.json", FIXTURE]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/results.json"));
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate.toml");
    std::fs::write(&gate, "throughput_drop = 0.1\n").unwrap();
    let out = compare(&[FIXTURE, FIXTURE, "--gate", gate.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("throughput_drop"));
}

#[test]
fn repetitions_from_a_sweep_compare_as_one_side() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = dir.path().join("e.toml");
    std::fs::write(
        &experiment,
        r#"
name = "reps"
[cluster]
nodes = 1
replication = 1
[workload]
users = 10
duration_s = 3
warmup_s = 0
rate = { per_s = 30 }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(BIN)
        .arg("run")
        .arg(&experiment)
        .arg("--out")
        .arg(&out)
        .args(["--set", "sweep.repeat=2"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("run/r0/results.json").exists());
    assert!(out.join("run/r1/results.json").exists());
    assert!(out.join("report.html").exists());
    let c = compare(&[out.to_str().unwrap(), out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&c.stdout);
    assert_eq!(c.status.code(), Some(0), "{text}");
    assert!(
        text.contains("2 baseline run(s), 2 candidate run(s)"),
        "{text}"
    );
}
