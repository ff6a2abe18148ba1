//! The protocol drivers against real sockets: a one-node cluster started with the workspace's
//! `clusterbench cluster up` (loadgen must not depend on the `cluster` crate, so the test runs the
//! binary as a user would), and a closed port.
//!
//! The binary is looked for next to this test's own target directory; if it is missing it is
//! built with `cargo build -p clusterbench --bin clusterbench`, and if that fails the cluster test
//! is skipped with a message saying so.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::drivers::smtp::SmtpDriver;
use loadgen::drivers::{imap, pop3, OpError};
use loadgen::message::{generate, GeneratedMessage};
use loadgen::Target;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Upper bound for the cluster to start or stop.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// A running `clusterbench cluster up` and what `cluster.json` says about it.
struct Cluster {
    // Declared first so it is dropped first: the cluster stops before its directory goes.
    _process: StopOnDrop,
    target: Target,
    _dir: tempfile::TempDir,
}

/// Stops the `cluster up` process with SIGTERM (as Ctrl-C would) when dropped, so a failing test
/// leaves no nodes behind.
struct StopOnDrop(Child);

impl Cluster {
    fn up(binary: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut process = StopOnDrop(
            Command::new(binary)
                .args(["cluster", "up", "--nodes", "1", "--dir"])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning clusterbench cluster up"),
        );
        let stdout = process.0.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Keeps draining stdout after the ready line, so the cluster never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Press Ctrl-C to stop") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(CLUSTER_WAIT).is_err() {
            panic!("clusterbench cluster up did not come up within {CLUSTER_WAIT:?}");
        }
        let text = std::fs::read_to_string(dir.path().join("cluster.json")).unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        let addr = |proto: &str| -> Vec<SocketAddr> {
            vec![info["nodes"][0][proto].as_str().unwrap().parse().unwrap()]
        };
        let users = &info["users"];
        assert!(users["count"].as_u64().unwrap() >= 4, "{users}");
        let target = Target {
            smtp: addr("smtp"),
            pop3: addr("pop3"),
            imap: addr("imap"),
            domain: info["domain"].as_str().unwrap().to_string(),
            user_pattern: users["pattern"].as_str().unwrap().to_string(),
            user_first: users["first"].as_u64().unwrap(),
            password: users["password"].as_str().unwrap().to_string(),
        };
        Cluster {
            _process: process,
            target,
            _dir: dir,
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let child = &mut self.0;
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + CLUSTER_WAIT;
        while signalled && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The workspace's `clusterbench` binary, built if it is missing; `None` if it cannot be had.
/// A POP3 session with its findings returned (the driver reports them through `out`).
async fn pop3_session(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    delete: bool,
) -> Result<loadgen::drivers::SessionResult, OpError> {
    let mut out = loadgen::drivers::SessionResult::default();
    pop3::session(addr, user, password, delete, &mut out)
        .await
        .map(|()| out)
}

/// An IMAP session with its findings returned.
async fn imap_session(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    after: imap::AfterRead<'_>,
) -> Result<loadgen::drivers::SessionResult, OpError> {
    let mut out = loadgen::drivers::SessionResult::default();
    imap::session(addr, user, password, after, &mut out)
        .await
        .map(|()| out)
}

/// Sends `script` (pipelined commands ending in LOGOUT) and returns everything the server says.
async fn imap_raw(addr: std::net::SocketAddr, script: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(script.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_string(&mut out),
    )
    .await
    .unwrap()
    .unwrap();
    out
}

fn clusterbench_binary() -> Option<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // This test runs from <target>/debug/deps/, which also honours CARGO_TARGET_DIR.
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("clusterbench")));
    let candidates: Vec<PathBuf> = from_exe
        .into_iter()
        .chain([manifest_dir.join("../target/debug/clusterbench")])
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    eprintln!("clusterbench binary not found; building it with cargo build -p clusterbench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "clusterbench", "--bin", "clusterbench"])
        .current_dir(manifest_dir.join(".."))
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        return None;
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn message(id: &str, to: &str, size: usize, seed: u64) -> std::sync::Arc<GeneratedMessage> {
    let mut rng = StdRng::seed_from_u64(seed);
    std::sync::Arc::new(generate(
        id,
        "loadgen@client.test",
        &[to.to_string()],
        size,
        &mut rng,
    ))
}

fn sorted_ids(found: &[loadgen::message::Verified]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().filter_map(|v| v.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_against_a_real_cluster() {
    let Some(binary) = clusterbench_binary() else {
        eprintln!(
            "SKIPPED drivers_against_a_real_cluster: the clusterbench binary is missing and \
             `cargo build -p clusterbench --bin clusterbench` failed"
        );
        return;
    };
    let cluster = Cluster::up(&binary);
    let t = &cluster.target;
    let smtp = SmtpDriver::new(&t.smtp, 2);
    assert_eq!(smtp.front_ends(), 1);
    let (pop3_addr, imap_addr) = (t.pop3[0], t.imap[0]);
    let (user1, password) = (t.user(1), t.password.as_str());

    // Five messages to user1, over reused connections.
    let mut sent: Vec<String> = Vec::new();
    for i in 0..5u64 {
        let m = message(
            &format!("drv-{i}"),
            &t.address(1),
            1500 + 700 * i as usize,
            i,
        );
        smtp.send(i as usize, "loadgen@client.test", &[t.address(1)], &m)
            .await
            .unwrap_or_else(|e| panic!("sending {}: {e}", m.id));
        sent.push(m.id.clone());
    }
    sent.sort();

    // POP3 sees them all, intact, and leaves them there.
    let found = pop3::retrieve_all(pop3_addr, &user1, password)
        .await
        .unwrap();
    assert_eq!(found.len(), 5, "{found:?}");
    assert!(found.iter().all(|v| v.intact), "{found:?}");
    assert_eq!(sorted_ids(&found), sent);

    // IMAP fetches the five unseen messages and expunges them.
    let session = imap_session(imap_addr, &user1, password, imap::AfterRead::Expunge)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&session.retrieved), sent);
    assert!(session.retrieved.iter().all(|v| v.intact));
    let mut deleted = session.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, sent);
    let found = pop3::retrieve_all(pop3_addr, &user1, password)
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");

    // An IMAP session that archives: the folder is made on first use, the messages move there
    // (out of INBOX), and a second session archives into the folder that now exists.
    for round in 0..2u64 {
        let m = message(&format!("drv-move-{round}"), &t.address(1), 2000, round);
        smtp.send(0, "", &[t.address(1)], &m).await.unwrap();
        let session = imap_session(
            imap_addr,
            &user1,
            password,
            imap::AfterRead::MoveTo("Read mail"),
        )
        .await
        .unwrap();
        assert_eq!(session.deleted, std::slice::from_ref(&m.id));
        assert!(pop3::retrieve_all(pop3_addr, &user1, password)
            .await
            .unwrap()
            .is_empty());
    }
    let status = imap_raw(
        imap_addr,
        &format!("a LOGIN {user1} {password}\r\nb STATUS \"Read mail\" (MESSAGES)\r\nc LOGOUT\r\n"),
    )
    .await;
    assert!(status.contains("(MESSAGES 2)"), "{status}");

    // A POP3 session that deletes: committed at QUIT, gone afterwards.
    let user2 = t.user(2);
    let m = message("drv-pop3", &t.address(2), 3000, 42);
    smtp.send(0, "", &[t.address(2)], &m).await.unwrap();
    let session = pop3_session(pop3_addr, &user2, password, true)
        .await
        .unwrap();
    assert_eq!(session.retrieved.len(), 1);
    assert!(session.retrieved[0].intact);
    assert_eq!(session.deleted, ["drv-pop3"]);
    assert!(pop3::retrieve_all(pop3_addr, &user2, password)
        .await
        .unwrap()
        .is_empty());

    // A 1 MB message survives both readers byte for byte; IMAP without expunge deletes nothing,
    // and a second IMAP session finds nothing unseen.
    let user3 = t.user(3);
    let big = message("drv-big", &t.address(3), 1024 * 1024, 7);
    smtp.send(0, "loadgen@client.test", &[t.address(3)], &big)
        .await
        .unwrap();
    let session = imap_session(imap_addr, &user3, password, imap::AfterRead::Keep)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&session.retrieved), ["drv-big"]);
    assert!(session.retrieved[0].intact);
    assert!(session.deleted.is_empty());
    let again = imap_session(imap_addr, &user3, password, imap::AfterRead::Expunge)
        .await
        .unwrap();
    assert!(again.retrieved.is_empty(), "{again:?}");
    let found = pop3::retrieve_all(pop3_addr, &user3, password)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&found), ["drv-big"]);
    assert!(found[0].intact);

    // Refusals.
    let wrong = format!("{password}-wrong");
    let e = pop3_session(pop3_addr, &user1, &wrong, true)
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Rejected(_)), "{e:?}");
    let e = imap_session(imap_addr, &user1, &wrong, imap::AfterRead::Expunge)
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Rejected(_)), "{e:?}");
    let relay = message("drv-relay", "victim@elsewhere.test", 1000, 9);
    let e = smtp
        .send(
            0,
            "loadgen@client.test",
            &["victim@elsewhere.test".into()],
            &relay,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Rejected(text) if text.contains("550")),
        "{e:?}"
    );

    smtp.shutdown().await;
    drop(cluster);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    // A port bound but never listened on, and kept bound for the whole test: nothing listens
    // there, and no other test can take it in the meantime (a port merely "just free" was once
    // taken by a parallel test's server, which then reset the connection).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = reserved.local_addr().unwrap();
    let e = pop3_session(addr, "u", "p", true).await.unwrap_err();
    assert!(matches!(e, OpError::Connect(_)), "{e:?}");
    let e = pop3::retrieve_all(addr, "u", "p").await.unwrap_err();
    assert!(matches!(e, OpError::Connect(_)), "{e:?}");
    let e = imap_session(addr, "u", "p", imap::AfterRead::Expunge)
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Connect(_)), "{e:?}");
    let smtp = SmtpDriver::new(&[addr], 1);
    let m = message("closed", "user1@example.test", 1000, 1);
    let e = smtp
        .send(0, "a@client.test", &["user1@example.test".into()], &m)
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Connect(_)), "{e:?}");
}
