//! Several hosts on one machine: network namespaces joined by veth links to a bridge in a
//! namespace of their own (all made by this test, removed at its end). Three cluster nodes, two
//! load agents and the coordinator each run in their own namespace, as separate hosts would, and
//! an experiment runs across them while one node's link is taken down (a partition) and brought
//! back. Needs root and iproute2's `ip`; skipped with a message where namespaces cannot be made,
//! and failing instead when CLUSTERBENCH_REQUIRE_NETNS=1 (as `.ci/run` sets it).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;
use serde_json::Value;

const TOKEN: &str = "multi-host-token";
const AGENT_TOKEN: &str = "multi-host-agents";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one test: a switch and the hosts, deleted (with what runs in them) on drop.
struct Net {
    prefix: String,
    hosts: Vec<String>,
    children: Vec<Child>,
}

impl Net {
    /// `hosts` as (name, last octet of its 10.77.0.0/24 address).
    fn build(hosts: &[(&str, u8)]) -> Result<Net, String> {
        let prefix = format!("cb{}", std::process::id());
        let mut net = Net {
            prefix: prefix.clone(),
            hosts: Vec::new(),
            children: Vec::new(),
        };
        let sw = net.ns("sw");
        ip(&["netns", "add", &sw])?;
        net.hosts.push("sw".into());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (host, octet) in hosts {
            let ns = net.ns(host);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(host.to_string());
            let port = format!("p-{host}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{octet}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A command that runs in `host`'s namespace.
    fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Starts `program args` in `host` and waits for a stdout line starting with `ready`.
    fn spawn_ready(&mut self, host: &str, args: &[&str], ready: &str) -> String {
        let mut child = self
            .command(host, BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with(ready) => break l,
                Some(Ok(_)) => continue,
                other => panic!("{host}: no {ready:?} line ({other:?})"),
            }
        };
        self.children.push(child);
        line
    }

    fn link(&self, host: &str, up: bool) {
        ip(&[
            "-n",
            &self.ns(host),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
    }
}

fn node_config(dir: &Path, id: u32) -> std::path::PathBuf {
    let peers: String = (1..=3)
        .map(|p| format!("[[cluster.peers]]\nid = {p}\naddr = \"10.77.0.{p}:7000\"\n"))
        .collect();
    let text = format!(
        r#"id = {id}
data_dir = "{data}"
domain = "example.test"
hostname = "node{id}"
admin_token = "{TOKEN}"

[listen]
smtp = "10.77.0.{id}:2525"
pop3 = "10.77.0.{id}:1100"
imap = "10.77.0.{id}:1430"
admin = "10.77.0.{id}:8080"
peer = "10.77.0.{id}:7000"

[users]
pattern = "user{{n}}"
first = 0
count = 60
password = "password"

[cluster]
replication = 2
uid_validity = 77
{peers}"#,
        data = dir.join(format!("node{id}")).display(),
    );
    let path = dir.join(format!("node{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Node 1's view members, asked from the coordinator's host.
fn members_seen_by_node1(net: &Net) -> Option<Vec<u64>> {
    let out = net
        .command("co", "curl")
        .args(["-s", "-m", "2", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg("http://10.77.0.1:8080/status")
        .output()
        .ok()?;
    let status: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut members: Vec<u64> = status["view"]["members"]
        .as_array()?
        .iter()
        .filter_map(|m| m.as_u64())
        .collect();
    members.sort_unstable();
    Some(members)
}

fn wait_for_members(net: &Net, want: &[u64], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if members_seen_by_node1(net).as_deref() == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn an_experiment_across_namespaced_hosts_survives_a_link_going_down() {
    let required = std::env::var("CLUSTERBENCH_REQUIRE_NETNS").as_deref() == Ok("1");
    if !common::require_tool("curl") {
        return;
    }
    let hosts = [
        ("n1", 1),
        ("n2", 2),
        ("n3", 3),
        ("a1", 11),
        ("a2", 12),
        ("co", 20),
    ];
    let mut net = match Net::build(&hosts) {
        Ok(net) => net,
        Err(e) if !required => {
            eprintln!(
                "SKIPPED: cannot create network namespaces (needs root and iproute2's ip): {e}"
            );
            return;
        }
        Err(e) => panic!("CLUSTERBENCH_REQUIRE_NETNS=1 but network namespaces cannot be made: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    for id in 1..=3u32 {
        let config = node_config(dir.path(), id);
        net.spawn_ready(
            &format!("n{id}"),
            &["node", "--config", config.to_str().unwrap()],
            "READY ",
        );
    }
    assert!(
        wait_for_members(&net, &[1, 2, 3], Duration::from_secs(20)),
        "the three hosts never formed one view: {:?}",
        members_seen_by_node1(&net)
    );
    for (host, octet) in [("a1", 11), ("a2", 12)] {
        let listen = format!("10.77.0.{octet}:7700");
        net.spawn_ready(
            host,
            &["agent", "--listen", &listen, "--token", AGENT_TOKEN],
            "READY agent",
        );
    }
    let experiment = dir.path().join("e.toml");
    std::fs::write(
        &experiment,
        format!(
            r#"
name = "multi-host"
[target]
smtp = ["10.77.0.1:2525", "10.77.0.2:2525", "10.77.0.3:2525"]
pop3 = ["10.77.0.1:1100", "10.77.0.2:1100"]
imap = ["10.77.0.1:1430", "10.77.0.2:1430"]
domain = "example.test"
user_pattern = "user{{n}}"
password = "password"
[workload]
users = 60
skew = 0.0
duration_s = 12
warmup_s = 1
rate = {{ per_s = 60 }}
mix = {{ smtp = 0.9, pop3 = 0.0, imap = 0.1 }}
[check]
settle_s = 5
[loadgen]
agents = ["10.77.0.11:7700", "10.77.0.12:7700"]
token = "{AGENT_TOKEN}"
[slo]   # this test judges what was lost, not how fast: limits any busy runner meets
p99_ms = {{ smtp = 60000, pop3 = 60000, imap = 60000 }}
error_rate_max = 1.0
"#
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let coordinator = net
        .command("co", BIN)
        .arg("run")
        .arg(&experiment)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Partition: node 3's link goes down for four seconds in the middle of the load.
    std::thread::sleep(Duration::from_secs(4));
    net.link("n3", false);
    let split = wait_for_members(&net, &[1, 2], Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    net.link("n3", true);
    let healed = wait_for_members(&net, &[1, 2, 3], Duration::from_secs(15));
    let output = coordinator.wait_with_output().unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(split, "node 1 never saw node 3 leave: {log}");
    assert!(healed, "node 3 never rejoined");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json"))
            .unwrap_or_else(|e| panic!("no results.json ({e}): {log}")),
    )
    .unwrap();
    let agents = results["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    for a in agents {
        assert_eq!(a["status"], "finished", "{a}");
        assert!(a["operations"].as_u64().unwrap() > 100, "{a}");
    }
    let smtp = &results["operations"]["ops"]["smtp"];
    assert!(smtp["count"].as_u64().unwrap() > 400, "{smtp}");
    // Nothing acknowledged was lost across the partition.
    assert_eq!(results["correctness"]["lost"], 0, "{log}");
    assert!(output.status.success(), "{log}");
    eprintln!("{log}");
}
