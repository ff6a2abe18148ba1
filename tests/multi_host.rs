//! Several hosts on one machine: network namespaces joined by veth links to a bridge in a
//! namespace of their own (all made by this test, removed at its end). Three cluster nodes, two
//! load agents and the coordinator each run in their own namespace, as separate hosts would, and
//! an experiment runs across them while one node's link is taken down (a partition) and brought
//! back. The same with the web cluster: three hosts, each a node daemon, an origin and a client
//! on hosts of their own, one host's link taken down while the client fetches through a front
//! end. Needs root and iproute2's `ip`; skipped with a message where namespaces cannot be made,
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
    /// `hosts` as (name, last octet of its 10.77.0.0/24 address); `tag` keeps the namespaces of
    /// tests running side by side apart.
    fn build(tag: &str, hosts: &[(&str, u8)]) -> Result<Net, String> {
        let prefix = format!("cb{tag}{}", std::process::id());
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
    let mut net = match Net::build("m", &hosts) {
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

/// `curl` from the client host; (status, headers, body).
fn fetch(net: &Net, url: &str, proxy: Option<&str>) -> (u16, String) {
    let mut c = net.command("cl", "curl");
    c.args(["-s", "-m", "10", "-D", "-", "-o", "/dev/null"]);
    if let Some(p) = proxy {
        c.arg("-x").arg(format!("http://{p}"));
    }
    let out = c.arg(url).output().unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_ascii_lowercase())
}

/// The processes the node daemons list, asked from the client host.
fn web_processes(net: &Net) -> Vec<Value> {
    let mut all = Vec::new();
    for id in 1..=3 {
        let out = net
            .command("cl", "curl")
            .args(["-s", "-m", "2", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg(format!("http://10.77.0.{id}:7100/processes"))
            .output()
            .unwrap();
        match serde_json::from_slice(&out.stdout) {
            Ok(Value::Array(list)) => all.extend(list),
            _ => eprintln!(
                "node {id}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    all
}

#[test]
fn a_web_cluster_across_namespaced_hosts_serves_through_a_link_going_down() {
    let required = std::env::var("CLUSTERBENCH_REQUIRE_NETNS").as_deref() == Ok("1");
    if !common::require_tool("curl") {
        return;
    }
    let hosts = [("w1", 1), ("w2", 2), ("w3", 3), ("or", 30), ("cl", 40)];
    let mut net = match Net::build("w", &hosts) {
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
    let config = dir.path().join("web.toml");
    let nodes: String = (1..=3)
        .map(|i| format!("[[nodes]]\nid = {i}\naddr = \"10.77.0.{i}:7100\"\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "admin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\norigins = [\"10.77.0.30:8080\"]\n{nodes}\
             [front_end]\ncount = 2\n[cache]\npartitions = 2\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    net.spawn_ready(
        "or",
        &["origin", "--listen", "10.77.0.30:8080", "--objects", "200"],
        "READY ",
    );
    for i in 1..=3u32 {
        let host = format!("10.77.0.{i}");
        let id = i.to_string();
        let mut args = vec![
            "web",
            "node",
            "--config",
            config.to_str().unwrap(),
            "--id",
            &id,
            "--host",
            &host,
        ];
        if i == 1 {
            args.push("--start-manager");
        }
        net.spawn_ready(&format!("w{i}"), &args, "READY ");
    }
    // The cluster boots itself: node 1 starts the manager, the manager the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (proxy, proxy_node) = loop {
        let ps = web_processes(&net);
        let front_ends: Vec<&Value> = ps
            .iter()
            .filter(|p| p["key"].as_str().unwrap_or("").starts_with("front_end"))
            .collect();
        let workers = ps
            .iter()
            .filter(|p| p["key"].as_str().unwrap_or("").starts_with("worker"))
            .count();
        // Every host runs something; a front end away from node 3, whose link goes down.
        let on_3 = ps.iter().any(|p| p["node"] == 3);
        if front_ends.len() == 2 && workers >= 3 && on_3 {
            if let Some(fe) = front_ends.iter().find(|p| p["node"] != 3) {
                break (
                    fe["endpoints"]["http"].as_str().unwrap().to_string(),
                    fe["node"].clone(),
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "the web cluster did not come up across the hosts: {ps:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let gif = "http://10.77.0.30:8080/obj/2.gif";
    let manifest_ok = fetch(&net, "http://10.77.0.30:8080/health", None).0 == 200;
    assert!(
        manifest_ok,
        "the origin is not reachable from the client host"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, head) = fetch(&net, gif, Some(&proxy));
        if code == 200 && head.contains("x-cb: distilled") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never distilled through {proxy}: {code} {head}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node 3's link down for four seconds: fetches through a front end elsewhere keep being
    // answered (distilled, or the original when no worker can be reached).
    net.link("w3", false);
    let outage = Instant::now();
    let mut answered = 0;
    while outage.elapsed() < Duration::from_secs(4) {
        let (code, head) = fetch(&net, &format!("{gif}?t={answered}"), Some(&proxy));
        assert_eq!(code, 200, "during the outage: {head}");
        answered += 1;
    }
    net.link("w3", true);
    eprintln!(
        "{answered} fetches through the front end on node {proxy_node} while node 3 was cut off"
    );
    // And after: node 3's daemon answers again, what ran there meanwhile elsewhere runs once
    // (the partitioned copies are stopped), and fetches are distilled.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, head) = fetch(&net, gif, Some(&proxy));
        let ps = web_processes(&net);
        let mut keys: Vec<&str> = ps.iter().filter_map(|p| p["key"].as_str()).collect();
        let listed = keys.len();
        keys.sort_unstable();
        keys.dedup();
        let node3_answers = net
            .command("cl", "curl")
            .args([
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg("http://10.77.0.3:7100/processes")
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false);
        if code == 200 && head.contains("x-cb: distilled") && node3_answers && keys.len() == listed
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not recover: {code} {head} {}",
            serde_json::to_string(&ps).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
