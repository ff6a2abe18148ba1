//! Bad input gets the protocol's error and loses nothing: an open-relay attempt, an unknown user,
//! a 2 MB line with no CRLF, a message over SIZE, an IMAP literal over the limit, too many
//! connections, an idle client, and a configuration with a wrong key.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, Cluster, BIN};

const SMALL_LIMITS: &str = r#"
[limits]
message_bytes_max = 100000
literal_bytes_max = 50000
connections_max = 6
idle_timeout_s = 2
errors_per_session_max = 50
"#;

fn small_cluster(dir: &Path) -> Cluster {
    let config = dir.join("limits.toml");
    std::fs::write(&config, SMALL_LIMITS).unwrap();
    Cluster::up(
        &dir.join("cluster"),
        &["--node-config", config.to_str().unwrap()],
    )
}

fn smtp_session(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    assert!(c.line().starts_with("220 "));
    c.send(b"EHLO tester\r\n");
    let ehlo = c.smtp_reply();
    assert!(ehlo.contains("SIZE 100000"), "{ehlo}");
    c
}

/// A fresh client can still deliver and read mail: the node is alive and well.
fn node_still_serves(cluster: &Cluster) {
    let mut c = smtp_session(cluster.addr("smtp"));
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<user1@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c
        .cmd("Subject: alive\r\n\r\nstill here\r\n.")
        .starts_with("250 2.0.0"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let mut p = Client::connect(cluster.addr("pop3"));
    assert!(p.line().starts_with("+OK"));
    assert!(p.cmd("USER user1").starts_with("+OK"));
    assert!(p.cmd("PASS password").starts_with("+OK"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
}

#[test]
fn smtp_refuses_relay_unknown_users_long_lines_and_oversized_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = small_cluster(dir.path());
    let mut c = smtp_session(cluster.addr("smtp"));

    assert!(c
        .cmd("RCPT TO:<user1@example.test>")
        .starts_with("503 5.5.1"));
    assert!(c.cmd("MAIL FROM:<spammer@client.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<victim@elsewhere.test>");
    assert!(r.starts_with("550 5.7.1"), "open relay attempt: {r}");
    let r = c.cmd("RCPT TO:<nobody@example.test>");
    assert!(r.starts_with("550 5.1.1"), "unknown user: {r}");
    assert!(
        c.cmd("DATA").starts_with("554"),
        "DATA without a valid recipient"
    );
    assert!(c.cmd("RSET").starts_with("250"));

    // A 2 MB line with no CRLF: the error comes without waiting for the line to end.
    c.send(&vec![b'A'; 2 * 1024 * 1024]);
    let r = c.line();
    assert!(r.starts_with("500 5.5.2"), "2 MB line: {r}");
    // The rest of the line is skipped; the session goes on.
    c.send(b"\r\n");
    assert!(c.cmd("NOOP").starts_with("250"));
    node_still_serves(&cluster);

    // Declared SIZE over the limit.
    let r = c.cmd("MAIL FROM:<a@client.test> SIZE=100001");
    assert!(r.starts_with("552 5.3.4"), "declared size: {r}");
    // Actual size over the limit: refused after the data, and the session continues.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<user2@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let line = "x".repeat(998) + "\r\n";
    for _ in 0..120 {
        c.send(line.as_bytes());
    }
    let r = c.cmd(".");
    assert!(r.starts_with("552 5.3.4"), "oversized message: {r}");
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("BOGUS").starts_with("500 5.5.2"));
    assert!(c.cmd("MAIL FROM:<bad address>").starts_with("501"));
    assert!(c.cmd("QUIT").starts_with("221"));

    // Nothing oversized or refused was stored for user2.
    let mut p = Client::connect(cluster.addr("pop3"));
    p.line();
    p.cmd("USER user2");
    p.cmd("PASS password");
    assert_eq!(p.cmd("STAT").trim(), "+OK 0 0");
}

#[test]
fn pop3_and_imap_survive_long_lines_and_big_literals() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = small_cluster(dir.path());

    let mut p = Client::connect(cluster.addr("pop3"));
    assert!(p.line().starts_with("+OK"));
    p.send(&vec![b'B'; 2 * 1024 * 1024]);
    assert!(p.line().starts_with("-ERR"), "POP3 long line");
    p.send(b"\r\n");
    assert!(p.cmd("USER user3").starts_with("+OK"));
    assert!(p.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    assert!(p.cmd("STAT").starts_with("-ERR"));
    assert!(p.cmd("FOO").starts_with("-ERR"));

    let mut i = Client::connect(cluster.addr("imap"));
    assert!(i.line().starts_with("* OK"));
    i.send(&vec![b'C'; 2 * 1024 * 1024]);
    let r = i.line();
    assert!(r.starts_with("* BAD"), "IMAP long line: {r}");
    i.send(b"\r\n");
    let r = i.cmd("a1 NOOP");
    assert!(r.starts_with("a1 OK"), "{r:?}");
    // A tagged over-long command gets a tagged BAD, so the client is not left waiting.
    let mut long = b"a9 LOGIN ".to_vec();
    long.extend(vec![b'D'; 2 * 1024 * 1024]);
    i.send(&long);
    let r = i.line();
    assert!(r.starts_with("a9 BAD"), "tagged long line: {r}");
    i.send(b"\r\n");

    // A literal over the limit is refused without a continuation request.
    i.send(b"a2 LOGIN user3 {60000}\r\n");
    let r = i.line();
    assert!(
        r.starts_with("a2 NO") || r.starts_with("a2 BAD"),
        "oversized literal answered with {r:?}"
    );
    // The connection goes on.
    i.send(b"a3 LOGIN user3 password\r\n");
    let r = i.until("a3 ");
    assert!(r.last().unwrap().starts_with("a3 OK"), "{r:?}");
    node_still_serves(&cluster);
}

#[test]
fn connection_limit_and_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = small_cluster(dir.path());
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(cluster.addr("smtp"));
        assert!(c.line().starts_with("220"));
        held.push(c);
    }
    let mut over = Client::connect(cluster.addr("imap"));
    let r = over.line();
    assert!(r.starts_with("* BYE"), "connection over the limit: {r}");
    drop(held);

    // Once the node has seen those connections close, new clients are served again; an idle one
    // is told goodbye after idle_timeout_s.
    let deadline = Instant::now() + common::WAIT;
    let (mut idle, start) = loop {
        let start = Instant::now();
        let mut c = Client::connect(cluster.addr("smtp"));
        if c.line().starts_with("220") {
            break (c, start);
        }
        assert!(
            Instant::now() < deadline,
            "connection slots were never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = idle.line();
    assert!(r.starts_with("421 4.4.2"), "idle client got {r:?}");
    assert!(start.elapsed() >= Duration::from_secs(2));
    node_still_serves(&cluster);
}

#[test]
fn a_wrong_configuration_key_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmessage_bytes_maximum = 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["cluster", "up", "--dir"])
        .arg(dir.path().join("c"))
        .arg("--node-config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("message_bytes_maximum"), "{stderr}");

    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("message_bytes_maximum"), "{stderr}");

    let out = Command::new(BIN)
        .args(["cluster", "up", "--nodes", "0", "--dir"])
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}
