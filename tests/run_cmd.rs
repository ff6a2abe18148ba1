//! `clusterbench run` through its door: short experiments against the bundled cluster (a killed
//! node, a paused node, a node lost for good with replication 1) and against Postfix's
//! smtp-sink as an external target; results.json checked for what a user relies on.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::require_tool;
use serde_json::Value;

fn run(dir: &Path, experiment: &str, extra: &[&str]) -> (Output, Option<Value>) {
    common::run_experiment(dir, experiment, extra)
}

fn text(output: &Output) -> String {
    common::output_text(output)
}

#[test]
fn a_killed_node_loses_nothing_and_its_recovery_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (output, results) = run(
        dir.path(),
        r#"
name = "kill"
seed = 9
[cluster]
nodes = 3
replication = 2
[workload]
users = 50
duration_s = 10
warmup_s = 1
rate = { per_s = 60 }
[[faults]]
at_s = 4
action = "kill"
node = 2
duration_s = 3
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = { smtp = 60000, pop3 = 60000, imap = 60000 }
error_rate_max = 1.0
"#,
        &[],
    );
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    let r = results.expect("results.json written");
    assert_eq!(r["schema_version"], 1);
    let c = &r["correctness"];
    assert!(c["acknowledged"].as_u64().unwrap() > 300, "{c}");
    assert_eq!(c["lost"], 0, "{c}");
    assert_eq!(c["duplicated"], 0, "{c}");
    assert_eq!(c["corrupted"], 0, "{c}");
    assert_eq!(c["acknowledged"], c["retrieved"]);
    let smtp = &r["operations"]["ops"]["smtp"];
    assert!(smtp["count"].as_u64().unwrap() > 300, "{smtp}");
    assert!(!smtp["histogram"].as_str().unwrap().is_empty());
    let recovery = &r["recovery"][0];
    assert_eq!(recovery["action"], "kill");
    assert!(recovery["detection_s"].as_f64().is_some(), "{recovery}");
    assert!(
        recovery["convergence_s"].as_f64().unwrap() < 5.0,
        "{recovery}"
    );
    assert!(recovery["reintegration_s"].as_f64().is_some(), "{recovery}");
    assert!(!r["view_changes"].as_array().unwrap().is_empty());
    assert_eq!(r["faults"][0]["node"], 2);
    assert!(r["faults"][0]["end_s"].as_f64().is_some());
    // The page a person opens.
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("kill node 2"),
        "report.html lacks its charts"
    );
    // The summary a person reads.
    assert!(
        text.contains("correctness:") && text.contains("0 lost"),
        "{text}"
    );
    assert!(text.contains("verdict: PASS"), "{text}");
    println!("{text}");
}

#[test]
fn a_paused_node_shows_as_tail_latency_not_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (output, results) = run(
        dir.path(),
        r#"
name = "pause"
seed = 4
[cluster]
nodes = 3
replication = 2
[workload]
users = 50
duration_s = 10
warmup_s = 0
rate = { per_s = 50, arrivals = "constant" }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
[[faults]]
at_s = 3
action = "pause"
node = 1
duration_s = 3
[check]
enabled = false
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = { smtp = 60000, pop3 = 60000, imap = 60000 }
error_rate_max = 1.0
"#,
        &[],
    );
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    let r = results.unwrap();
    let smtp = &r["operations"]["ops"]["smtp"];
    // Operations sent to the paused front end wait out the pause: seconds of latency.
    assert!(smtp["max_ms"].as_f64().unwrap() > 2000.0, "{smtp}");
    // Every second of intended start has its operations: the stall is latency, not missing data.
    let series = r["operations"]["series"].as_array().unwrap();
    for point in &series[..9] {
        let count = point["per_op"]["smtp"]["count"].as_u64().unwrap_or(0)
            + point["per_op"]["smtp"]["errors"].as_u64().unwrap_or(0);
        assert!(
            count >= 40,
            "second {} has only {count} operations: {point}",
            point["t_s"]
        );
    }
    println!(
        "pause: smtp max {} ms, p99 {} ms",
        smtp["max_ms"], smtp["p99_ms"]
    );
}

#[test]
fn loss_fails_the_run_unless_the_experiment_expects_it() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = r#"
name = "r1"
seed = 2
[cluster]
nodes = 3
replication = 1
[workload]
users = 30
duration_s = 6
warmup_s = 0
rate = { per_s = 60 }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
[[faults]]
at_s = 4
action = "kill"
node = 3
[check]
settle_s = 5
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = { smtp = 60000, pop3 = 60000, imap = 60000 }
error_rate_max = 1.0
"#;
    let (output, results) = run(dir.path(), experiment, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let r = results.unwrap();
    assert!(r["correctness"]["lost"].as_u64().unwrap() > 0);
    assert_eq!(r["verdict"]["pass"], false);
    assert!(text(&output).contains("verdict: FAIL"));
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = run(
        dir.path(),
        experiment,
        &["--set", "check.loss_expected=true"],
    );
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn a_wrong_experiment_key_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = run(dir.path(), "[workload]\nduration = 5\n", &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("duration"), "{}", text(&output));
    let (output, _) = run(dir.path(), "", &["--set", "cluster.nodez=3"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("nodez"), "{}", text(&output));
}

#[test]
fn an_external_smtp_sink_is_driven_by_the_same_engine() {
    if !require_tool("smtp-sink") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = Command::new("smtp-sink");
    // smtp-sink refuses to run as root without a user to switch to.
    if unsafe { libc::geteuid() } == 0 {
        sink.args(["-u", "nobody"]);
    }
    let mut sink = sink
        .args(["-c", &format!("127.0.0.1:{port}"), "200"])
        .spawn()
        .unwrap();
    // smtp-sink binds at once; give it a moment to listen.
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "smtp-sink did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, results) = run(
        dir.path(),
        &format!(
            r#"
name = "sink"
[target]
smtp = ["127.0.0.1:{port}"]
[workload]
users = 20
duration_s = 4
warmup_s = 0
rate = {{ per_s = 200 }}
mix = {{ smtp = 1.0, pop3 = 0.0, imap = 0.0 }}
[loadgen.smtp]
connection = "per-message"      # connect, EHLO, one message, QUIT: as smtp-source without -d
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = {{ smtp = 60000 }}
"#
        ),
        &[],
    );
    let _ = sink.kill();
    let _ = sink.wait();
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    let r = results.unwrap();
    assert_eq!(r["target"]["kind"], "external");
    let smtp = &r["operations"]["ops"]["smtp"];
    assert!(smtp["count"].as_u64().unwrap() > 600, "{smtp}");
    assert_eq!(smtp["errors"], 0, "{smtp}");
    // A connection per message: as many connections as messages (and failures).
    let l = &r["loadgen"];
    assert_eq!(l["smtp_connection"], "per-message", "{l}");
    let attempted = smtp["attempted"].as_u64().unwrap();
    assert!(
        l["connections_opened"].as_u64().unwrap() >= smtp["count"].as_u64().unwrap(),
        "{l} {smtp}"
    );
    assert!(
        l["connections_opened"].as_u64().unwrap() <= attempted + 300,
        "{l} {smtp}"
    );
    // A sink keeps nothing to read back: its messages are unverified, and say why, not lost.
    let c = &r["correctness"];
    assert_eq!(c["lost"], 0, "{c}");
    assert!(c["acknowledged"].as_u64().unwrap() > 600, "{c}");
    assert_eq!(c["unverified"], c["acknowledged"], "{c}");
    assert!(
        c["unverified_reason"].as_str().unwrap().contains("POP3"),
        "{c}"
    );
    assert!(text.contains("unverified:"), "{text}");
    // Only SMTP ran (the mix left POP3 and IMAP out), and the error-rate limit nobody set is
    // marked as a default.
    assert_eq!(
        r["operations"]["ops"].as_object().unwrap().len(),
        1,
        "{}",
        r["operations"]["ops"]
    );
    let checks = r["slo"]["checks"].as_array().unwrap();
    let p99 = checks.iter().find(|c| c["what"] == "smtp p99 ms").unwrap();
    assert_eq!(p99["default"], false, "{p99}");
    let errors = checks.iter().find(|c| c["what"] == "error rate").unwrap();
    assert_eq!(errors["default"], true, "{errors}");
}

/// A run that loses nothing but misses its SLO fails, with an exit code of its own (3), as k6's
/// thresholds fail a build; the verdict names the limit.
#[test]
fn a_missed_slo_fails_the_run_with_its_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (output, results) = run(
        dir.path(),
        r#"
name = "slo"
[cluster]
nodes = 1
replication = 1
[workload]
users = 10
duration_s = 2
warmup_s = 0
rate = { per_s = 20 }
mix = { smtp = 1.0 }
[loadgen.smtp]
messages_per_connection = 5     # an MTA that batches: QUIT after five messages
[slo]
p99_ms = { smtp = 0.001 }
"#,
        &[],
    );
    let log = text(&output);
    assert_eq!(output.status.code(), Some(3), "{log}");
    let r = results.unwrap();
    assert_eq!(r["correctness"]["lost"], 0, "{log}");
    assert_eq!(r["verdict"]["pass"], false);
    assert_eq!(r["verdict"]["exit_code"], 3);
    assert!(log.contains("verdict: FAIL"), "{log}");
    assert!(log.contains("SLO missed: smtp p99 ms"), "{log}");
    // `mix = { smtp = 1.0 }` is SMTP only.
    assert_eq!(r["operations"]["ops"].as_object().unwrap().len(), 1);
    // Batches of five: at least a fifth as many connections as messages, and a few more.
    let acked = r["correctness"]["acknowledged"].as_u64().unwrap();
    let opened = r["loadgen"]["connections_opened"].as_u64().unwrap();
    assert!(acked >= 20, "{acked}");
    assert!(
        opened >= acked / 5 && opened < acked,
        "{opened} for {acked}"
    );
}

#[test]
fn a_sweep_runs_every_combination_and_skips_the_impossible_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = run(
        dir.path(),
        r#"
name = "sweep"
[cluster]
replication = 1
[workload]
users = 20
duration_s = 3
warmup_s = 0
rate = { per_s = 30 }
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
[sweep]
"cluster.nodes" = [1, 2]
"cluster.replication" = [1, 2]
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = { smtp = 60000, pop3 = 60000, imap = 60000 }
error_rate_max = 1.0
"#,
        &[],
    );
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    let sweep: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/sweep.json")).unwrap())
            .unwrap();
    assert_eq!(sweep["kind"], "sweep");
    // nodes=1 with replication=2 cannot run: three runs, one skipped with its reason.
    let runs = sweep["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{sweep}");
    assert_eq!(sweep["skipped"].as_array().unwrap().len(), 1, "{sweep}");
    assert!(sweep["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("replication"));
    for r in runs {
        let run_dir = dir.path().join("out").join(r["dir"].as_str().unwrap());
        assert!(run_dir.join("results.json").exists(), "{run_dir:?}");
        assert!(run_dir.join("report.html").exists(), "{run_dir:?}");
    }
    assert!(dir.path().join("out/report.html").exists());
    assert!(text.contains("sweep verdict: PASS"), "{text}");
}
