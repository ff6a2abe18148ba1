//! Distributed load through the binary: `clusterbench agent` processes on real sockets, a
//! coordinator (`clusterbench run`) that splits the workload over them and merges what they
//! stream back exactly, and what happens when an agent is killed, refuses, or is unreachable.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::BIN;
use serde_json::Value;

const EXPERIMENT: &str = r#"
name = "agents"
[cluster]
nodes = 2
replication = 1
[workload]
users = 50
skew = 0.0
duration_s = 5
warmup_s = 1
rate = { per_s = 120 }
mix = { smtp = 0.8, pop3 = 0.1, imap = 0.1 }
[check]
settle_s = 10
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = { smtp = 60000, pop3 = 60000, imap = 60000 }
error_rate_max = 1.0
"#;

fn run(dir: &Path, experiment: &str, extra: &[&str]) -> (Output, Option<Value>) {
    common::run_experiment(dir, experiment, extra)
}

fn text(output: &Output) -> String {
    common::output_text(output)
}

/// A `clusterbench agent` on a free loopback port; killed when dropped.
struct Agent {
    child: Child,
    addr: String,
}

impl Agent {
    fn start(token: &str) -> Agent {
        let mut child = Command::new(BIN)
            .args(["agent", "--listen", "127.0.0.1:0", "--token", token])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("READY agent ")
            .unwrap_or_else(|| panic!("no READY line: {line:?}"))
            .trim()
            .to_string();
        Agent { child, addr }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp(results: &Value) -> &Value {
    &results["operations"]["ops"]["smtp"]
}

#[test]
fn two_local_agents_merge_into_the_sum_of_their_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (output, results) = run(dir.path(), EXPERIMENT, &["--agents", "2"]);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    let r = results.unwrap();
    let agents = r["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{log}");
    let mut parts = 0;
    for a in agents {
        assert_eq!(a["status"], "finished", "{a}");
        assert!(a["operations"].as_u64().unwrap() > 50, "{a}");
        assert!(a["rtt_ms"].as_f64().unwrap() >= 0.0);
        parts += a["operations"].as_u64().unwrap();
    }
    // The merged totals are the sum of the agents' parts, and the merged histogram holds every
    // successful operation.
    let ops = r["operations"]["ops"].as_object().unwrap();
    let attempted: u64 = ops.values().map(|o| o["attempted"].as_u64().unwrap()).sum();
    assert_eq!(attempted, parts, "{log}");
    for o in ops.values() {
        let h = loadgen::metrics::decode_histogram(o["histogram"].as_str().unwrap()).unwrap();
        assert_eq!(h.len(), o["count"].as_u64().unwrap());
    }
    assert_eq!(r["correctness"]["lost"], 0, "{log}");
    assert!(r["correctness"]["acknowledged"].as_u64().unwrap() > 200);
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(html.contains("Load agents") && html.contains("local-2"));
}

#[test]
fn splitting_the_rate_over_agents_keeps_the_latency_distribution() {
    // Measured and printed: one process vs. the same total rate over two agents.
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let (o1, r1) = run(one.path(), EXPERIMENT, &[]);
    assert!(o1.status.success(), "{}", text(&o1));
    let (o2, r2) = run(two.path(), EXPERIMENT, &["--agents", "2"]);
    assert!(o2.status.success(), "{}", text(&o2));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    let fig = |r: &Value, k: &str| smtp(r)[k].as_f64().unwrap();
    eprintln!(
        "smtp, 1 process: {:.1}/s p50 {:.2} ms p99 {:.2} ms; 2 agents: {:.1}/s p50 {:.2} ms p99 {:.2} ms",
        fig(&r1, "throughput_per_s"),
        fig(&r1, "p50_ms"),
        fig(&r1, "p99_ms"),
        fig(&r2, "throughput_per_s"),
        fig(&r2, "p50_ms"),
        fig(&r2, "p99_ms"),
    );
    // The same offered rate arrives either way (Poisson noise aside).
    let (t1, t2) = (fig(&r1, "throughput_per_s"), fig(&r2, "throughput_per_s"));
    assert!((t2 - t1).abs() < 0.25 * t1, "{t1} vs {t2}");
}

#[test]
fn a_killed_agent_is_named_in_a_finished_report() {
    let token = "secret-token";
    let a1 = Agent::start(token);
    let mut a2 = Agent::start(token);
    let dir = tempfile::tempdir().unwrap();
    let experiment = format!(
        "{}\n[loadgen]\nagents = [\"{}\", \"{}\"]\ntoken = \"{token}\"\n",
        // SMTP only: a killed agent's POP3 deletions after its last report would be unknown
        // to the checker (results.json says so when it happens).
        EXPERIMENT
            .replace("duration_s = 5", "duration_s = 8")
            .replace(
                "mix = { smtp = 0.8, pop3 = 0.1, imap = 0.1 }",
                "mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }"
            ),
        a1.addr,
        a2.addr
    );
    let victim = a2.addr.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        a2.child.kill().unwrap();
        a2
    });
    let (output, results) = run(dir.path(), &experiment, &[]);
    let _a2 = killer.join().unwrap();
    let log = text(&output);
    // The run finished, with a verdict that says an agent was lost.
    assert_eq!(output.status.code(), Some(1), "{log}");
    let r = results.unwrap_or_else(|| panic!("no results.json: {log}"));
    let agents = r["agents"].as_array().unwrap();
    let lost = agents
        .iter()
        .find(|a| a["addr"] == victim.as_str())
        .unwrap();
    assert_eq!(lost["status"], "lost", "{lost}");
    assert!(lost["lost_at_s"].as_f64().unwrap() < 8.0, "{lost}");
    // Its data up to then is kept.
    assert!(lost["operations"].as_u64().unwrap() > 0, "{lost}");
    let reasons = r["verdict"]["reasons"].to_string();
    assert!(reasons.contains(&victim), "{reasons}");
    assert_eq!(r["correctness"]["lost"], 0, "{log}");
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(
        html.contains("lost at"),
        "the report does not name the lost agent"
    );
    assert!(html.contains(&victim));
}

#[test]
fn wrong_tokens_versions_and_unreachable_agents_are_clear_errors() {
    let agent = Agent::start("right");
    let dir = tempfile::tempdir().unwrap();
    let experiment = format!(
        "{EXPERIMENT}\n[loadgen]\nagents = [\"{}\"]\ntoken = \"wrong\"\n",
        agent.addr
    );
    let (output, _) = run(dir.path(), &experiment, &[]);
    let log = text(&output);
    assert!(!output.status.success());
    assert!(log.contains("refused: wrong token"), "{log}");

    // Another version is refused before anything runs, on the agent's own socket.
    let mut s = TcpStream::connect(&agent.addr).unwrap();
    s.write_all(b"{\"hello\":{\"version\":\"0.0.0\",\"token\":\"right\"}}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(
        line.contains("refused") && line.contains("version mismatch"),
        "{line}"
    );
    // Garbage gets no run either, and the agent lives on for the next coordinator.
    let mut s = TcpStream::connect(&agent.addr).unwrap();
    s.write_all(b"not json\n").unwrap();
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    assert!(!line.contains("welcome"), "{line}");
    let mut s = TcpStream::connect(&agent.addr).unwrap();
    s.write_all(b"{\"hello\":{\"version\":\"0.0.0\",\"token\":\"right\"}}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("refused"), "{line}");

    // One coordinator at a time: while one holds the agent, another is told it is busy; when
    // the first goes, the agent is free again.
    let hello = b"{\"hello\":{\"version\":\"VERSION\",\"token\":\"right\"}}\n";
    let hello = String::from_utf8_lossy(hello).replace("VERSION", clusterbench::agent::VERSION);
    let greet = |expect: &str| {
        let mut s = TcpStream::connect(&agent.addr).unwrap();
        s.write_all(hello.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains(expect), "{line}");
        s
    };
    let holder = greet("welcome");
    greet("busy");
    drop(holder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(&agent.addr).unwrap();
        s.write_all(hello.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        if line.contains("welcome") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {line}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // An address where no agent listens: the run says which.
    // Bound, never listened on, and kept for the whole test, so no parallel test can take it.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    let experiment = format!(
        "{EXPERIMENT}\n[loadgen]\nagents = [\"{addr}\"]\ntoken = \"t\"\nconnect_timeout_s = 1\n"
    );
    let (output, _) = run(dir.path(), &experiment, &[]);
    let log = text(&output);
    assert!(!output.status.success());
    assert!(log.contains(&addr) && log.contains("unreachable"), "{log}");
}

const WEB_EXPERIMENT: &str = r#"
name = "web-agents"
seed = 3
[cluster]
service = "web"
nodes = 1
[cluster.web.workers]
classes = { jpeg = 1, gif = 1, html = 1 }
cpu = { model = "modelled", ms_per_kb = 0.5 }
[workload]
duration_s = 8
warmup_s = 2
rate = { per_s = 50 }
[workload.trace]
timing = "rate"
synth = { objects = 500 }
[slo]   # this test judges what was sent and merged, not how fast
p99_ms = { html = 60000, gif = 60000, jpeg = 60000, other = 60000 }
error_rate_max = 1.0
"#;

#[test]
fn two_agents_drive_a_web_experiment_and_the_merge_is_the_sum_of_their_parts() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let (o1, r1) = run(one.path(), WEB_EXPERIMENT, &[]);
    let (o2, r2) = run(two.path(), WEB_EXPERIMENT, &["--agents", "2"]);
    let (log1, log2) = (text(&o1), text(&o2));
    assert!(o1.status.success(), "{log1}");
    assert!(o2.status.success(), "{log2}");
    let (r1, r2) = (r1.unwrap(), r2.unwrap());

    // Each agent sent its half of the trace (positions modulo 2); together, what one process
    // sends: the trace's first 8 s at 50 a second.
    let agents = r2["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{log2}");
    let sent = r2["web"]["trace"]["sent"].as_u64().unwrap();
    assert_eq!(sent, 400, "{log2}");
    assert_eq!(r1["web"]["trace"]["sent"].as_u64(), Some(sent), "{log1}");
    let mut parts_sent = 0;
    let mut parts_ops = 0;
    for a in agents {
        assert_eq!(a["status"], "finished", "{a}");
        assert_eq!(a["requests_sent"].as_u64(), Some(sent / 2), "{a}");
        parts_sent += a["requests_sent"].as_u64().unwrap();
        parts_ops += a["operations"].as_u64().unwrap();
    }
    assert_eq!(parts_sent, sent);

    // The merged operations are the sum of the parts, per content type the same as one
    // process's (the same requests), and the merged histograms hold every answer.
    let ops1 = r1["operations"]["ops"].as_object().unwrap();
    let ops2 = r2["operations"]["ops"].as_object().unwrap();
    let attempted: u64 = ops2
        .values()
        .map(|o| o["attempted"].as_u64().unwrap())
        .sum();
    assert_eq!(attempted, parts_ops, "{log2}");
    assert_eq!(
        ops1.keys().collect::<Vec<_>>(),
        ops2.keys().collect::<Vec<_>>()
    );
    for (kind, o) in ops2 {
        assert_eq!(o["attempted"], ops1[kind]["attempted"], "{kind}: {log2}");
        let h = loadgen::metrics::decode_histogram(o["histogram"].as_str().unwrap()).unwrap();
        assert_eq!(h.len(), o["count"].as_u64().unwrap());
    }
    // What the service did with them, merged from both agents' checks (how many were
    // distilled can differ: a busy distiller may be bypassed).
    let w2 = &r2["web"]["outcomes"];
    assert_eq!(w2["ok"].as_u64(), Some(sent), "{w2}");
    let kinds: u64 = [
        "distilled",
        "pass_through",
        "degraded",
        "original",
        "untagged",
    ]
    .iter()
    .map(|k| w2[k].as_u64().unwrap())
    .sum();
    assert_eq!(kinds, sent, "{w2}");
    assert!(w2["verified"].as_u64().unwrap() > 0, "{w2}");
    assert_eq!(r2["web"]["check_failures"], 0);
    let html = std::fs::read_to_string(two.path().join("out/report.html")).unwrap();
    assert!(html.contains("Load agents") && html.contains("Web service"));
}
