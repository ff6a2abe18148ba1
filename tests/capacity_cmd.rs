//! `clusterbench capacity` through its door: the highest rate meeting the SLO, bracketed by a
//! probe that meets it and one that misses, on a cluster whose modelled disks cap it.

mod common;

use std::process::Command;

use common::BIN;

#[test]
fn capacity_is_bracketed_by_a_passing_and_a_failing_probe() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = dir.path().join("cap.toml");
    // One node whose disk takes 40 messages a second: the capacity must come out below that.
    std::fs::write(
        &experiment,
        r#"
name = "cap"
[cluster]
nodes = 1
replication = 1
disk = { model = "modelled", syncs_per_s = 40, latency_ms = 2 }
[workload]
users = 20
duration_s = 3
warmup_s = 1
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
recipients = { mean = 1.0, max = 1 }
[slo]
p99_ms = { smtp = 300 }
[check]
settle_s = 5
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(BIN)
        .arg("capacity")
        .arg(&experiment)
        .arg("--out")
        .arg(&out)
        .args(["--start-per-s", "20", "--probes", "4", "--precision", "0.5"])
        .args(["--daily-messages", "1000000"])
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{text}");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("capacity.json")).unwrap()).unwrap();
    let capacity = c["capacity_per_s"].as_f64().unwrap();
    assert!(
        (10.0..=40.0).contains(&capacity),
        "capacity {capacity}: {text}"
    );
    let probes = c["probes"].as_array().unwrap();
    assert!(probes.iter().any(|p| p["pass"] == true));
    assert!(
        probes.iter().any(|p| p["pass"] == false),
        "no probe missed: {text}"
    );
    assert_eq!(c["table"].as_array().unwrap().len(), 3);
    assert!(c["nodes_needed"].as_f64().unwrap() >= 1.0);
    assert!(text.contains("capacity of cap"), "{text}");
}
