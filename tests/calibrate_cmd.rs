//! `clusterbench calibrate`: from runs made before (`--from`) and by running an experiment
//! itself, it prints each metric's noise, the A/A false-alarm rate and the runs needed, and
//! writes a gate that `compare --gate` takes.

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/reports/tests/fixtures/quickstart.json"
);

/// A deterministic factor around 1 (SplitMix64 → uniform in [1 - spread, 1 + spread]).
fn factor(seed: u64, spread: f64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
    1.0 + spread * (2.0 * u - 1.0)
}

/// `n` copies of the quickstart run in `dir/{a,b}/rI/results.json` (half in each), smtp's
/// throughput and p99 shaken by a few percent.
fn noisy_runs(dir: &Path, n: u64) {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    for i in 0..n {
        let mut run = fixture.clone();
        let smtp = &mut run["operations"]["ops"]["smtp"];
        for (k, key) in ["throughput_per_s", "p99_ms"].iter().enumerate() {
            let v = smtp[*key].as_f64().unwrap() * factor(i * 10 + k as u64, 0.04);
            smtp[*key] = v.into();
        }
        let half = if i < n / 2 { "a" } else { "b" };
        let run_dir = dir.join(half).join(format!("r{i}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(
            run_dir.join("results.json"),
            serde_json::to_string(&run).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn runs_made_before_calibrate_a_gate_that_compare_takes() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    noisy_runs(&runs, 12);
    let gate = dir.path().join("gate.toml");
    let json = dir.path().join("calibration.json");
    let out = Command::new(BIN)
        .args(["calibrate", "--from"])
        .arg(&runs)
        .args(["--repetitions", "3", "--detect", "0.1", "--write-gate"])
        .arg(&gate)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    for expected in [
        "smtp throughput_per_s",
        "run to run",
        "A/A:",
        "run(s) a side",
        "not enough data",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let calibration: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(calibration["runs"], 12);
    let rate = calibration["false_alarm_rate"].as_f64().unwrap();
    assert!(rate <= 0.1, "{rate}");
    let smtp = calibration["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "smtp throughput_per_s")
        .unwrap();
    // About 2.3 % from run to run (uniform ±4 %), on a log scale.
    let between = smtp["between"].as_f64().unwrap();
    assert!((0.01..0.04).contains(&between), "{smtp}");
    assert!(smtp["repetitions_needed"].as_u64().unwrap() >= 2, "{smtp}");

    // The written gate leaves out what cannot be judged and is what compare reads.
    let written = std::fs::read_to_string(&gate).unwrap();
    assert!(written.contains("[metric.\"imap p99_ms\"]"), "{written}");
    assert!(written.contains("ignore = true"), "{written}");
    assert!(written.contains("repetitions = 3"), "{written}");
    let compared = Command::new(BIN)
        .arg("compare")
        .arg(runs.join("a"))
        .arg(runs.join("b"))
        .arg("--gate")
        .arg(&gate)
        .output()
        .unwrap();
    let text = common::output_text(&compared);
    assert_eq!(compared.status.code(), Some(0), "{text}");
    assert!(text.contains("ignored"), "{text}");

    // Too few runs for two sides is an error that says how many are needed.
    let out = Command::new(BIN)
        .args(["calibrate", "--repetitions", "7", "--from"])
        .arg(&runs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::output_text(&out).contains("at least 14 runs"));
}

#[test]
fn calibrate_runs_the_experiment_itself() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = dir.path().join("e.toml");
    std::fs::write(
        &experiment,
        r#"
name = "calib"
[cluster]
nodes = 1
replication = 1
disk = { model = "modelled", syncs_per_s = 200, latency_ms = 2 }
[workload]
users = 20
duration_s = 2
warmup_s = 0
rate = { closed = 4 }
mix = { smtp = 1.0 }
[slo]   # this test measures noise, not speed
p99_ms = { smtp = 60000 }
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(BIN)
        .arg("calibrate")
        .arg(&experiment)
        .args(["--runs", "4", "--repetitions", "2", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("A/A:") && text.contains("from 4 runs"),
        "{text}"
    );
    let results = std::fs::read_dir(out_dir.join("run")).unwrap().count();
    assert_eq!(results, 4, "{text}");
}
