//! A node whose disk fills up: its mail log on a small tmpfs of its own (a mount namespace made
//! by the test, so nothing outside is touched), filled by the test through `/proc/PID/root`.
//! Clients get temporary failures (SMTP `452 4.3.1`, IMAP `NO`), the node stays up, nothing
//! acknowledged is lost, and once space returns mail is taken again. Needs root (as CI runs);
//! skipped with a message where a mount namespace cannot be made, failing instead when
//! CLUSTERBENCH_REQUIRE_NETNS=1 (as `.ci/run` sets it: it requires the namespace tests to run).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use common::{pop3_fetch_all, Client, Cluster, BIN};

fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn smtp_send(addr: SocketAddr, to: &str, subject: &str) -> String {
    let mut c = Client::connect(addr);
    assert!(c.smtp_reply().starts_with("220"));
    c.send(b"EHLO test\r\n");
    assert!(c.smtp_reply().starts_with("250"));
    assert!(c.cmd("MAIL FROM:<t@client.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "Subject: {subject}\r\n\r\n{}.\r\n",
            "body of the message\r\n".repeat(500)
        )
        .as_bytes(),
    );
    let reply = c.smtp_reply();
    c.cmd("QUIT");
    reply
}

fn imap_append(addr: SocketAddr, password: &str) -> String {
    let mut c = Client::connect(addr);
    assert!(c.line().starts_with("* OK"));
    assert!(c
        .cmd(&format!("a LOGIN user3 {password}"))
        .starts_with("a OK"));
    let message = "Subject: appended\r\n\r\nhello\r\n";
    c.send(format!("b APPEND INBOX {{{}}}\r\n", message.len()).as_bytes());
    let go = c.line();
    if !go.starts_with('+') {
        return go;
    }
    c.send(format!("{message}\r\n").as_bytes());
    c.until("b ").pop().unwrap()
}

#[test]
fn a_full_disk_gets_temporary_failures_loses_nothing_and_recovers() {
    let required = std::env::var("CLUSTERBENCH_REQUIRE_NETNS").as_deref() == Ok("1");
    if !namespaces_work() {
        assert!(
            !required,
            "CLUSTERBENCH_REQUIRE_NETNS=1 but `unshare -m` cannot make a mount namespace"
        );
        eprintln!("SKIPPED: needs unshare and root to give the node a small file system");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[store]\nsegment_bytes = 1048576\nfree_bytes_min = 2097152\n",
    )
    .unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["-m", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=24m tmpfs "$1" && exec "$2" cluster up --dir "$3" --node-config "$4""#)
        .arg("sh")
        .arg(&data)
        .arg(BIN)
        .arg(dir.path())
        .arg(&config);
    let cluster = Cluster::start(command, dir.path());
    let (smtp, pop3, imap) = (
        cluster.addr("smtp"),
        cluster.addr("pop3"),
        cluster.addr("imap"),
    );
    let password = cluster.password();
    let to = "user3@example.test";

    let reply = smtp_send(smtp, to, "before");
    assert!(reply.starts_with("250"), "{reply}");

    // Fill the node's file system (as the node sees it) to the brim, then give back 1 MB:
    // less free than the 2 MB the log must leave.
    let filler = format!("/proc/{}/root{}/filler", cluster.child.id(), data.display());
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(1 << 20)).unwrap();
    }
    for i in 0..3 {
        let reply = smtp_send(smtp, to, &format!("refused {i}"));
        assert!(reply.starts_with("452 4.3.1"), "{reply}");
    }
    let reply = imap_append(imap, &password);
    assert!(
        reply.contains("NO [UNAVAILABLE]") && reply.contains("disk is full"),
        "{reply}"
    );
    let held = pop3_fetch_all(pop3, "user3", &password);
    assert_eq!(held.len(), 1, "what was acknowledged is still there");

    // Space returns: mail is taken again, and nothing refused shows up.
    std::fs::remove_file(&filler).unwrap();
    let reply = smtp_send(smtp, to, "after");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(imap_append(imap, &password).starts_with("b OK"));
    let subjects: Vec<String> = pop3_fetch_all(pop3, "user3", &password)
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        subjects.iter().all(|s| !s.contains("refused")),
        "{subjects:?}"
    );
    assert!(cluster.stop().success());
}
