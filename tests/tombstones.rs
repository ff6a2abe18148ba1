//! Expunge tombstones are retired once every replica has the expunge: three nodes, every
//! message on two; mail delivered and then deleted over POP3; after the grace every node's
//! `/status` shows no tombstone left, and no deleted message comes back on any node.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{pop3_fetch_all, status, Client, Cluster, WAIT};

fn admin(cluster: &Cluster, i: usize) -> SocketAddr {
    cluster.node(i)["admin"].as_str().unwrap().parse().unwrap()
}

fn addr(cluster: &Cluster, i: usize, proto: &str) -> SocketAddr {
    cluster.node(i)[proto].as_str().unwrap().parse().unwrap()
}

/// Waits until `f` holds of every node's `/status`.
fn every_node(cluster: &Cluster, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let token = cluster.token();
    let start = Instant::now();
    loop {
        let all: Vec<Option<serde_json::Value>> =
            (0..3).map(|i| status(admin(cluster, i), &token)).collect();
        if all.iter().all(|s| s.as_ref().is_some_and(&f)) {
            return;
        }
        assert!(start.elapsed() < WAIT, "{what}; last: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tombstones_are_retired_once_every_replica_has_the_expunge() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[cluster]\ntombstone_grace_ms = 1500\n").unwrap();
    let cluster = Cluster::up(
        dir.path(),
        &[
            "--nodes",
            "3",
            "--replication",
            "2",
            "--node-config",
            config.to_str().unwrap(),
        ],
    );
    let password = cluster.password();
    every_node(&cluster, "three nodes in one view", |s| {
        s["view"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3)
    });
    let mut c = Client::connect(addr(&cluster, 0, "smtp"));
    assert!(c.smtp_reply().starts_with("220"));
    c.send(b"EHLO test\r\n");
    c.smtp_reply();
    for i in 0..20 {
        assert!(c.cmd("MAIL FROM:<t@client.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<user7@example.test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let reply = c.cmd(&format!("Subject: {i}\r\n\r\nbody {i}\r\n."));
        assert!(reply.starts_with("250"), "{reply}");
    }
    c.cmd("QUIT");
    every_node(&cluster, "replication drained", |s| {
        s["replication"]["backlog"].as_u64() == Some(0)
    });

    // Read and delete everything through node 2.
    let pop3 = addr(&cluster, 1, "pop3");
    assert_eq!(pop3_fetch_all(pop3, "user7", &password).len(), 20);
    let mut c = Client::connect(pop3);
    c.line();
    c.cmd("USER user7");
    assert!(c.cmd(&format!("PASS {password}")).starts_with("+OK"));
    for n in 1..=20 {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let start = Instant::now();
    // Each holder keeps a tombstone per deleted message, for the grace at least.
    let token = cluster.token();
    let kept: u64 = (0..3)
        .filter_map(|i| status(admin(&cluster, i), &token))
        .map(|s| s["load"]["tombstones"].as_u64().unwrap())
        .sum();
    assert!(kept >= 20, "{kept} tombstones right after the deletes");
    every_node(&cluster, "every tombstone retired", |s| {
        s["load"]["tombstones"].as_u64() == Some(0)
            && s["replication"]["backlog"].as_u64() == Some(0)
    });
    println!(
        "tombstones retired on every node {} ms after the deletes",
        start.elapsed().as_millis()
    );
    for i in 0..3 {
        assert!(pop3_fetch_all(addr(&cluster, i, "pop3"), "user7", &password).is_empty());
    }
    assert!(cluster.stop().success());
}
