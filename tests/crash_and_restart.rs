//! Durability as a user relies on it: `kill -9` of a node right after it answered 250, then
//! `cluster up` again on the same DIR; every acknowledged message is there, exactly once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{pop3_fetch_all, wait_gone, Cluster};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[test]
fn kill_9_after_250_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--users", "20"]);
    let smtp = cluster.addr("smtp");
    let node_pid = cluster.node_pid(0);

    // Many concurrent SMTP clients (lettre), each recording the messages that got a 250.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let acked: HashMap<String, String> = runtime.block_on(async move {
        let transport = Arc::new(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
                .port(smtp.port())
                .build(),
        );
        let mut tasks = Vec::new();
        for client in 0..8 {
            let transport = transport.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..25 {
                    let id = format!("c{client}-m{i}");
                    let user = format!("user{}", (client * 7 + i) % 20);
                    let msg = Message::builder()
                        .from("loader@client.test".parse::<Mailbox>().unwrap())
                        .to(format!("{user}@example.test").parse::<Mailbox>().unwrap())
                        .subject(format!("durability {id}"))
                        .body(format!("body of {id}\r\n"))
                        .unwrap();
                    if transport.send(msg).await.is_ok() {
                        acked.push((id, user));
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
    });
    assert_eq!(
        acked.len(),
        200,
        "every message should be acknowledged before the crash"
    );

    // Crash the node the moment the last 250 arrived.
    unsafe {
        libc::kill(node_pid, libc::SIGKILL);
    }
    wait_gone(node_pid);
    assert!(cluster.stop().success());

    let cluster = Cluster::up(dir.path(), &[]);
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
            assert_eq!(
                acked.get(&id),
                Some(&user),
                "message {id} is in the wrong mailbox"
            );
            *seen.entry(id).or_default() += 1;
        }
    }
    let lost: Vec<_> = acked.keys().filter(|id| !seen.contains_key(*id)).collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    assert!(duplicated.is_empty(), "messages duplicated: {duplicated:?}");
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
