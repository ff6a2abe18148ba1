//! Durability as a user relies on it: `kill -9` of a node right after it answered 250, then
//! `cluster up` again on the same DIR; every acknowledged message is there, exactly once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{pop3_fetch_all, wait_gone, Cluster};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Messages sent by `clients` concurrent lettre clients, `per_client` each, to user0..user19.
/// Returns the id → mailbox of every message that got a 250. With `kill = Some((n, pid))`,
/// `pid` gets SIGKILL the moment the n-th 250 arrives, while the other clients are mid-send.
fn send_load(
    smtp: std::net::SocketAddr,
    clients: usize,
    per_client: usize,
    kill: Option<(usize, i32)>,
) -> HashMap<String, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let acks = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async move {
        let transport = Arc::new(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
                .port(smtp.port())
                .build(),
        );
        let mut tasks = Vec::new();
        for client in 0..clients {
            let transport = transport.clone();
            let acks = acks.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..per_client {
                    let id = format!("c{client}-m{i}");
                    let user = format!("user{}", (client * 7 + i) % 20);
                    let msg = Message::builder()
                        .from("loader@client.test".parse::<Mailbox>().unwrap())
                        .to(format!("{user}@example.test").parse::<Mailbox>().unwrap())
                        .subject(format!("durability {id}"))
                        .body(format!("body of {id}\r\n"))
                        .unwrap();
                    if transport.send(msg).await.is_err() {
                        // The node is gone: everything after this would fail too.
                        break;
                    }
                    acked.push((id, user));
                    let n = acks.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some((at, pid)) = kill {
                        if n == at {
                            unsafe {
                                libc::kill(pid, libc::SIGKILL);
                            }
                        }
                    }
                }
                acked
            }));
        }
        let mut all = HashMap::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// Restarts the cluster on `dir` and checks every acknowledged message is in its mailbox exactly
/// once; messages that were sent but not acknowledged may be there, but at most once.
fn verify_after_restart(dir: &std::path::Path, acked: &HashMap<String, String>) -> Cluster {
    let cluster = Cluster::up(dir, &[]);
    let pop3 = cluster.addr("pop3");
    let password = cluster.password();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for u in 0..20 {
        let user = format!("user{u}");
        for body in pop3_fetch_all(pop3, &user, &password) {
            let text = String::from_utf8_lossy(&body);
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: durability "))
                .expect("every stored message has its subject")
                .to_string();
            if let Some(owner) = acked.get(&id) {
                assert_eq!(owner, &user, "message {id} is in the wrong mailbox");
            }
            *seen.entry(id).or_default() += 1;
        }
    }
    let lost: Vec<_> = acked.keys().filter(|id| !seen.contains_key(*id)).collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    assert!(duplicated.is_empty(), "messages duplicated: {duplicated:?}");
    cluster
}

#[test]
fn kill_9_after_250_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--users", "20"]);
    let node_pid = cluster.node_pid(0);
    let acked = send_load(cluster.addr("smtp"), 8, 25, None);
    assert_eq!(
        acked.len(),
        200,
        "every message is acknowledged before the crash"
    );
    let imap_before = imap_uids(cluster.addr("imap"), "user3");
    assert!(!imap_before.1.is_empty());

    // Crash the node the moment the last 250 arrived.
    unsafe {
        libc::kill(node_pid, libc::SIGKILL);
    }
    wait_gone(node_pid);
    assert!(cluster.stop().success());

    let cluster = verify_after_restart(dir.path(), &acked);
    // IMAP clients keep their caches: UIDVALIDITY and every UID are the same after the crash.
    assert_eq!(imap_uids(cluster.addr("imap"), "user3"), imap_before);
}

#[test]
fn kill_9_in_the_middle_of_a_burst_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--users", "20"]);
    let node_pid = cluster.node_pid(0);
    // 16 clients keep sending; the node is killed at the 150th 250, with deliveries in flight.
    let acked = send_load(cluster.addr("smtp"), 16, 1000, Some((150, node_pid)));
    wait_gone(node_pid);
    assert!(acked.len() >= 150, "only {} acknowledged", acked.len());
    assert!(
        acked.len() < 16 * 1000,
        "the kill came too late to test anything"
    );
    assert!(cluster.stop().success());
    verify_after_restart(dir.path(), &acked);
}

/// (UIDVALIDITY, UIDs) of `user`'s INBOX as an IMAP client sees them.
fn imap_uids(addr: std::net::SocketAddr, user: &str) -> (String, Vec<u32>) {
    let mut c = common::Client::connect(addr);
    assert!(c.line().starts_with("* OK"));
    assert!(c
        .cmd(&format!("a LOGIN {user} password"))
        .starts_with("a OK"));
    c.send(b"b SELECT INBOX\r\n");
    let lines = c.until("b ");
    let validity = lines
        .iter()
        .find_map(|l| l.split("[UIDVALIDITY ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .expect("SELECT reports UIDVALIDITY")
        .to_string();
    c.send(b"c UID SEARCH ALL\r\n");
    let lines = c.until("c ");
    let uids = lines
        .iter()
        .find_map(|l| l.strip_prefix("* SEARCH"))
        .map(|rest| {
            rest.split_whitespace()
                .map(|u| u.parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    c.cmd("d LOGOUT");
    (validity, uids)
}

#[test]
fn restart_on_the_same_dir_keeps_users_password_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let first = Cluster::up(dir.path(), &["--users", "5", "--password", "pw1"]);
    let token = first.token();
    assert!(first.stdout.contains("user0..user4"), "{}", first.stdout);
    assert!(first.stop().success());
    let second = Cluster::up(dir.path(), &[]);
    assert_eq!(second.token(), token);
    assert_eq!(second.password(), "pw1");
    assert_eq!(second.info["users"]["count"], 5);
}
