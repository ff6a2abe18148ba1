//! Wombat membership across real node processes: `cluster up --nodes 4` forms one view; `kill -9`
//! of a follower and of the leader make the survivors converge on a new view (the time is
//! measured and printed); a restarted node rejoins; a partition made through the fault API forms
//! two views and heals into one.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{converge, http, kill9, status, Cluster, BIN};
use serde_json::Value;

fn admins(cluster: &Cluster) -> Vec<(u32, SocketAddr)> {
    cluster.info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap() as u32,
                n["admin"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Starts one node again from its configuration, as an operator (or `run`) would.
fn restart_node(cluster: &Cluster, id: u32) -> (std::process::Child, SocketAddr) {
    let config = cluster.dir.join(format!("node{id}/node.toml"));
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let endpoints: Value = serde_json::from_str(line.strip_prefix("READY ").unwrap()).unwrap();
    (child, endpoints["admin"].as_str().unwrap().parse().unwrap())
}

#[test]
fn four_nodes_agree_and_survive_a_follower_and_a_leader_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "4"]);
    let token = cluster.token();
    let all = admins(&cluster);
    let (epoch, _) = converge(&token, &all, &[1, 2, 3, 4], 1);
    let s = status(all[0].1, &token).unwrap();
    assert_eq!(s["buckets"], 256);
    let managed: u64 = all
        .iter()
        .map(|(_, a)| {
            status(*a, &token).unwrap()["buckets_managed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(managed, 256, "every bucket has exactly one manager");

    // A follower dies.
    kill9(cluster.node_pid(2));
    let survivors: Vec<_> = all.iter().copied().filter(|(id, _)| *id != 3).collect();
    let (after_follower, took) = converge(&token, &survivors, &[1, 2, 4], 1);
    println!(
        "follower failure: survivors converged in {} ms",
        took.as_millis()
    );
    assert!(after_follower > epoch);

    // It comes back and rejoins.
    let (mut node3, admin3) = restart_node(&cluster, 3);
    let mut rejoined = survivors.clone();
    rejoined.push((3, admin3));
    let (after_rejoin, took) = converge(&token, &rejoined, &[1, 2, 3, 4], 1);
    println!("restarted follower: rejoined in {} ms", took.as_millis());
    assert!(after_rejoin > after_follower);

    // The leader dies: node 2, the best-ranked survivor, takes over.
    kill9(cluster.node_pid(0));
    let survivors: Vec<_> = rejoined
        .iter()
        .copied()
        .filter(|(id, _)| *id != 1)
        .collect();
    let (after_leader, took) = converge(&token, &survivors, &[2, 3, 4], 2);
    println!(
        "leader failure: survivors converged in {} ms",
        took.as_millis()
    );
    assert!(after_leader > after_rejoin);

    let _ = node3.kill();
    let _ = node3.wait();
}

#[test]
fn a_partition_through_the_fault_api_forms_two_views_and_heals_into_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "4"]);
    let token = cluster.token();
    let all = admins(&cluster);
    converge(&token, &all, &[1, 2, 3, 4], 1);

    // A bad fault request is refused with an error naming the field, and changes nothing.
    let (code, body) = http(
        "POST",
        all[0].1,
        "/faults",
        Some(&token),
        r#"{"loss": 2.0}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("loss"), "{body}");
    let (code, body) = http(
        "POST",
        all[0].1,
        "/faults",
        Some(&token),
        r#"{"block": [3]}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("block"), "{body}");

    let side_a = [all[0], all[1]];
    let side_b = [all[2], all[3]];
    for (_, admin) in side_a {
        let (code, body) = http(
            "POST",
            admin,
            "/faults",
            Some(&token),
            r#"{"block_peers": [3, 4]}"#,
        );
        assert_eq!(code, 200, "{body}");
    }
    for (_, admin) in side_b {
        http(
            "POST",
            admin,
            "/faults",
            Some(&token),
            r#"{"block_peers": [1, 2]}"#,
        );
    }
    let (epoch_a, took_a) = converge(&token, &side_a, &[1, 2], 1);
    let (epoch_b, took_b) = converge(&token, &side_b, &[3, 4], 3);
    println!(
        "partition: side {{1,2}} converged in {} ms, side {{3,4}} in {} ms",
        took_a.as_millis(),
        took_b.as_millis()
    );
    let s = status(all[2].1, &token).unwrap();
    assert_eq!(s["faults"]["block_peers"], serde_json::json!([1, 2]));

    for (_, admin) in &all {
        let (code, _) = http("DELETE", *admin, "/faults", Some(&token), "");
        assert_eq!(code, 200);
    }
    let (healed, took) = converge(&token, &all, &[1, 2, 3, 4], 1);
    println!("heal: one view again in {} ms", took.as_millis());
    assert!(healed > epoch_a && healed > epoch_b);
    assert_eq!(
        status(all[2].1, &token).unwrap()["faults"]["block_peers"],
        serde_json::json!([])
    );
}

#[test]
fn heartbeats_keep_their_timing_while_large_messages_replicate_over_delayed_links() {
    // Three nodes, every message on all three, every link delayed 100 ms each way; eight
    // sessions deliver 24 messages of 10 MB to node 1, which replicates 480 MB to the others.
    // Heartbeats take their own lane: no node is suspected, the view never changes.
    // Timers with room for a busy test machine (a debug build on two shared cores): a node is
    // suspected after 2 s without an answer to its pings. A heartbeat queued behind the link's
    // share of 480 MB would wait far longer.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[cluster.membership]\nping_interval_ms = 200\nfailure_timeout_ms = 2000\nbeacon_interval_ms = 500\nbeacon_fast_interval_ms = 100\nbeacon_fast_duration_ms = 1000\nleader_lease_ms = 1100\ntakeover_base_ms = 2500\ntakeover_step_ms = 300\n",
    )
    .unwrap();
    let cluster = Cluster::up(
        dir.path(),
        &[
            "--nodes",
            "3",
            "--replication",
            "3",
            "--node-config",
            config.to_str().unwrap(),
        ],
    );
    let token = cluster.token();
    let all = admins(&cluster);
    let (epoch, _) = converge(&token, &all, &[1, 2, 3], 1);
    for (_, admin) in &all {
        let (code, body) = http(
            "POST",
            *admin,
            "/faults",
            Some(&token),
            r#"{"delay_ms": 100}"#,
        );
        assert_eq!(code, 200, "{body}");
    }
    let changes = |admin| {
        status(admin, &token).unwrap()["view"]["changes"]
            .as_u64()
            .unwrap()
    };
    let before: Vec<u64> = all.iter().map(|(_, a)| changes(*a)).collect();

    let smtp = cluster.addr("smtp");
    let body: std::sync::Arc<Vec<u8>> = std::sync::Arc::new({
        let mut m = b"Subject: large\r\n\r\n".to_vec();
        let line = format!("{}\r\n", "y".repeat(998));
        while m.len() < 10_000_000 {
            m.extend_from_slice(line.as_bytes());
        }
        m
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (all, token, done) = (all.clone(), token.clone(), done.clone());
        std::thread::spawn(move || {
            // Every node's view, sampled while the load runs.
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (_, admin) in &all {
                    if let Some(s) = status(*admin, &token) {
                        seen.insert(common::view_of(&s));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            seen
        })
    };
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut c = common::Client::connect(smtp);
                c.smtp_reply();
                c.send(b"EHLO client.test\r\n");
                c.smtp_reply();
                for n in 0..3 {
                    c.send(format!("MAIL FROM:<s{i}@client.test>\r\nRCPT TO:<user{}@example.test>\r\nDATA\r\n", i * 3 + n).as_bytes());
                    for _ in 0..3 {
                        let r = c.smtp_reply();
                        assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
                    }
                    c.send(&body);
                    c.send(b".\r\n");
                    let r = c.smtp_reply();
                    assert!(r.starts_with("250"), "{r}");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // The replicas drain; then a few more seconds of heartbeats.
    std::thread::sleep(std::time::Duration::from_secs(3));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let after: Vec<u64> = all.iter().map(|(_, a)| changes(*a)).collect();
    assert_eq!(before, after, "a view changed: {seen:?}");
    assert_eq!(seen.len(), 1, "views seen: {seen:?}");
    let (e, leader, members) = seen.into_iter().next().unwrap();
    assert_eq!((e, leader), (epoch, 1));
    assert_eq!(members, [1, 2, 3].into_iter().collect());
    assert!(cluster.stop().success());
}
