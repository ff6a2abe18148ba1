//! Real mail clients against a node started by `clusterbench cluster up`: Python's smtplib,
//! poplib and imaplib, swaks, and curl's smtp://, pop3:// and imap:// support.

mod common;

use std::process::Command;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use common::{converge, kill9, require_tool, status, view_of, Cluster, WAIT};

/// Runs `tests/clients/SCRIPT` with python3 against a fresh cluster; it must pass every check.
fn python_against_a_cluster(script: &str) {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    python_script(dir.path(), script, &[]);
    assert!(cluster.stop().success());
}

/// Runs `tests/clients/SCRIPT DIR/cluster.json ARGS..` with python3; it must pass every check.
fn python_script(dir: &Path, script: &str, args: &[&str]) {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(path)
        .arg(dir.join("cluster.json"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// Folders (CREATE, RENAME with children, RENAME INBOX, DELETE, SUBSCRIBE, MOVE and COPY with
/// UIDPLUS, a modified UTF-7 name) and keywords (STORE, SEARCH KEYWORD, kept by COPY), made
/// with imaplib through node 1; node 1 is then killed with SIGKILL, and imaplib through node 2
/// sees all of it.
#[test]
fn imaplib_folders_and_keywords_survive_kill_9_and_show_on_another_node() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "3", "--replication", "2"]);
    let token = cluster.token();
    let admins: Vec<(u32, SocketAddr)> = (0..3)
        .map(|i| {
            let node = cluster.node(i);
            (
                node["id"].as_u64().unwrap() as u32,
                node["admin"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    converge(&token, &admins, &[1, 2, 3], 1);
    let run = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    python_script(dir.path(), "imap_folders.py", &["write", "0", &run]);

    // Replication is asynchronous: the second copies exist once every backlog is 0.
    let start = Instant::now();
    while !admins.iter().all(|(_, admin)| {
        status(*admin, &token).is_some_and(|s| s["replication"]["backlog"].as_u64() == Some(0))
    }) {
        assert!(start.elapsed() < WAIT, "replication backlog not drained");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    kill9(cluster.node_pid(0));
    // Node 2 has installed a view without node 1.
    let start = Instant::now();
    while status(admins[1].1, &token).is_none_or(|s| view_of(&s).2.contains(&1)) {
        assert!(start.elapsed() < WAIT, "node 2 never saw node 1 go");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    python_script(dir.path(), "imap_folders.py", &["verify", "1", &run]);
}

#[test]
fn python_smtplib_poplib_imaplib() {
    python_against_a_cluster("mail_clients.py");
}

#[test]
fn imaplib_sees_recent_envelopes_encapsulated_parts_id_and_long_lines() {
    python_against_a_cluster("imap_conformance.py");
}

#[test]
fn swaks_sends_and_curl_reads_over_pop3_and_imap() {
    if !require_tool("swaks") || !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--password", "s3cret"]);
    let smtp = cluster.addr("smtp");
    let out = Command::new("swaks")
        .args([
            "--server",
            &smtp.ip().to_string(),
            "--port",
            &smtp.port().to_string(),
        ])
        .args(["--to", "user5@example.test", "--from", "swaks@client.test"])
        .args([
            "--header",
            "Subject: from swaks",
            "--body",
            "swaks body line",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{text}");
    assert!(text.contains("<-  250 2.0.0 Ok: queued as"), "{text}");

    // An open-relay attempt through swaks is refused with 550 5.7.1.
    let out = Command::new("swaks")
        .args([
            "--server",
            &smtp.ip().to_string(),
            "--port",
            &smtp.port().to_string(),
        ])
        .args([
            "--to",
            "victim@elsewhere.test",
            "--from",
            "spammer@client.test",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("550 5.7.1"), "{text}");

    // curl sends a second message over smtp://.
    let mail = dir.path().join("mail.txt");
    std::fs::write(&mail, "Subject: from curl\r\n\r\ncurl body line\r\n").unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", &format!("smtp://{smtp}")])
        .args([
            "--mail-from",
            "curl@client.test",
            "--mail-rcpt",
            "user5@example.test",
        ])
        .arg("-T")
        .arg(&mail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl smtp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let curl = |url: String, extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-u", "user5:s3cret"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pop3 = cluster.addr("pop3");
    let listing = curl(format!("pop3://{pop3}/"), &[]);
    assert_eq!(listing.lines().count(), 2, "POP3 LIST via curl: {listing}");
    let first = curl(format!("pop3://{pop3}/1"), &[]);
    assert!(first.contains("swaks body line"), "{first}");
    assert!(first.starts_with("Received: "), "{first}");

    let imap = cluster.addr("imap");
    let second = curl(format!("imap://{imap}/INBOX;MAILINDEX=2"), &[]);
    assert!(second.contains("curl body line"), "{second}");
    let exists = curl(format!("imap://{imap}/INBOX"), &["-X", "SEARCH ALL"]);
    assert!(exists.contains("SEARCH 1 2"), "{exists}");
    // Flag and expunge the first message through curl's custom requests.
    curl(
        format!("imap://{imap}/INBOX"),
        &["-X", "STORE 1 +FLAGS (\\Deleted)"],
    );
    curl(format!("imap://{imap}/INBOX"), &["-X", "EXPUNGE"]);
    let after = curl(format!("imap://{imap}/INBOX"), &["-X", "SEARCH ALL"]);
    assert!(
        after.contains("SEARCH 1") && !after.contains("SEARCH 1 2"),
        "{after}"
    );

    // DELE over curl's POP3 custom request commits at QUIT.
    curl(format!("pop3://{pop3}/1"), &["-X", "DELE", "-I"]);
    let listing = curl(format!("pop3://{pop3}/"), &[]);
    assert_eq!(
        listing.trim(),
        "",
        "mailbox not empty after DELE: {listing}"
    );
    assert!(cluster.stop().success());
}
