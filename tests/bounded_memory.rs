//! Bounded memory node-wide: 1,000 concurrent SMTP clients each send a 10 MB message to one
//! node whose buffers are capped at 256 MB. The node's RSS stays under the cap + 200 MB, the
//! clients it has no room for get a 4xx (at MAIL FROM when they announce SIZE, after their data
//! when they do not), and every message answered 250 is there, byte for byte.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Cluster;

const CLIENTS: usize = 1_000;
const MESSAGE_BYTES: usize = 10_000_000;
const CAP_BYTES: u64 = 256 * 1024 * 1024;
const RSS_SLACK_BYTES: u64 = 200 * 1024 * 1024;

/// A 10 MB message of 1,000-byte lines, its first line naming the client.
fn message(client: usize) -> Vec<u8> {
    let mut m = format!("Subject: big {client}\r\n\r\n").into_bytes();
    let line = format!("{}\r\n", "x".repeat(998));
    while m.len() + line.len() <= MESSAGE_BYTES {
        m.extend_from_slice(line.as_bytes());
    }
    m
}

/// One reply (multi-line replies read whole); its code.
fn reply(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Accepted,
    /// A 4xx, and where: at MAIL FROM (`true`) or after the data.
    Deferred(bool),
}

/// One client's session; it waits at `together` once greeted, so all sessions are open at once
/// before any sends.
fn send(
    addr: SocketAddr,
    client: usize,
    body: &[u8],
    announce: bool,
    together: &std::sync::Barrier,
) -> Result<Outcome, String> {
    // Connections open a millisecond apart (a thousand SYNs at one instant overflow a listen
    // queue, which is not what this test is about), then wait for each other.
    std::thread::sleep(Duration::from_millis(client as u64));
    let stream = TcpStream::connect(addr);
    let greeted = stream
        .map_err(|e| format!("client {client}: connect: {e}"))
        .map(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let r = BufReader::new(stream.try_clone().unwrap());
            (stream, r)
        });
    together.wait();
    let (stream, mut r) = greeted?;
    let mut w = stream;
    let expect = |code: u16, want: u16, what: &str| {
        if code == want {
            Ok(())
        } else {
            Err(format!("client {client}: {what} answered {code}"))
        }
    };
    expect(reply(&mut r), 220, "the greeting")?;
    w.write_all(b"EHLO client.test\r\n")
        .map_err(|e| format!("client {client}: EHLO: {e}"))?;
    expect(reply(&mut r), 250, "EHLO")?;
    let size = if announce {
        format!(" SIZE={}", body.len())
    } else {
        String::new()
    };
    w.write_all(format!("MAIL FROM:<c{client}@client.test>{size}\r\n").as_bytes())
        .map_err(|e| format!("client {client}: MAIL: {e}"))?;
    match reply(&mut r) {
        250 => {}
        code @ 400..=499 => {
            let _ = w.write_all(b"QUIT\r\n");
            return if code == 452 {
                Ok(Outcome::Deferred(true))
            } else {
                Err(format!("client {client}: MAIL answered {code}"))
            };
        }
        code => return Err(format!("client {client}: MAIL answered {code}")),
    }
    w.write_all(format!("RCPT TO:<user{client}@example.test>\r\n").as_bytes())
        .map_err(|e| format!("client {client}: RCPT: {e}"))?;
    expect(reply(&mut r), 250, "RCPT")?;
    w.write_all(b"DATA\r\n")
        .map_err(|e| format!("client {client}: DATA: {e}"))?;
    expect(reply(&mut r), 354, "DATA")?;
    w.write_all(body)
        .map_err(|e| format!("client {client}: sending: {e}"))?;
    w.write_all(b".\r\n")
        .map_err(|e| format!("client {client}: the end of data: {e}"))?;
    let code = reply(&mut r);
    let _ = w.write_all(b"QUIT\r\n");
    match code {
        250 => Ok(Outcome::Accepted),
        452 => Ok(Outcome::Deferred(false)),
        code => Err(format!("client {client}: the data answered {code}")),
    }
}

/// The resident set of process `pid`, in bytes.
fn rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The body of message `n` in `user`'s mailbox, over POP3 (the Received header kept).
fn retrieve(addr: SocketAddr, user: &str) -> Vec<u8> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut ok = |r: &mut BufReader<TcpStream>, what: &str| {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{what}: {line}");
    };
    ok(&mut r, "greeting");
    w.write_all(format!("USER {user}\r\nPASS password\r\n").as_bytes())
        .unwrap();
    ok(&mut r, "USER");
    ok(&mut r, "PASS");
    w.write_all(b"RETR 1\r\n").unwrap();
    ok(&mut r, "RETR");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        r.read_until(b'\n', &mut buf).unwrap();
        if buf == b".\r\n" || buf.is_empty() {
            break;
        }
        out.extend_from_slice(buf.strip_prefix(b".").unwrap_or(&buf));
    }
    let _ = w.write_all(b"QUIT\r\n");
    let _ = r.read_to_end(&mut Vec::new());
    out
}

#[test]
fn a_thousand_ten_megabyte_messages_stay_within_the_node_buffer_cap() {
    clusterbench::run::raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[users]\ncount = {CLIENTS}\n[limits]\nbuffered_bytes_max = {CAP_BYTES}\nconnections_max = 1100\nidle_timeout_s = 600\n"
        ),
    )
    .unwrap();
    let cluster = Cluster::up(
        dir.path(),
        &["--nodes", "1", "--node-config", config.to_str().unwrap()],
    );
    let smtp = cluster.addr("smtp");
    let pid = cluster.node_pid(0);
    let before = rss(pid).unwrap();

    // The node's RSS, sampled while the clients run.
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = rss(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // All at once: one body shared by every client (each names itself in its subject line
    // through a prefix of its own).
    let body = Arc::new(message(0));
    let outcomes = Arc::new(Mutex::new(vec![None; CLIENTS]));
    let start = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (body, outcomes, start) = (body.clone(), outcomes.clone(), start.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    // Every 20th client does not announce its size: the node finds out as the
                    // data comes.
                    let result = send(smtp, client, &body, client % 20 != 0, &start);
                    outcomes.lock().unwrap()[client] = Some(result);
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let outcomes: Vec<Outcome> = outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.clone().unwrap().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let accepted: Vec<usize> = (0..CLIENTS)
        .filter(|c| outcomes[*c] == Outcome::Accepted)
        .collect();
    let at_mail = outcomes
        .iter()
        .filter(|o| **o == Outcome::Deferred(true))
        .count();
    let after_data = outcomes
        .iter()
        .filter(|o| **o == Outcome::Deferred(false))
        .count();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{} accepted, {at_mail} deferred at MAIL FROM, {after_data} after their data; node RSS {} MB before, {} MB at most (cap {} MB)",
        accepted.len(),
        before >> 20,
        peak >> 20,
        CAP_BYTES >> 20
    );
    assert!(!accepted.is_empty(), "nothing was accepted");
    assert!(
        at_mail + after_data > 0,
        "1,000 x 10 MB cannot fit a 256 MB cap at once: someone must have been told to wait"
    );
    assert!(
        peak < CAP_BYTES + RSS_SLACK_BYTES,
        "node RSS reached {} MB (cap {} MB + {} MB)",
        peak >> 20,
        CAP_BYTES >> 20,
        RSS_SLACK_BYTES >> 20
    );
    // Everything given back; the refusals counted.
    let status = common::status(cluster.addr("admin"), &cluster.token()).unwrap();
    assert_eq!(status["load"]["buffered_bytes"], 0, "{status}");
    assert_eq!(status["load"]["buffered_bytes_max"], CAP_BYTES);
    assert!(
        status["load"]["buffer_refusals"].as_u64().unwrap() >= (at_mail + after_data) as u64,
        "{status}"
    );
    // Every 250 is there, whole.
    let pop3 = cluster.addr("pop3");
    for c in accepted {
        let got = retrieve(pop3, &format!("user{c}"));
        let at = got
            .windows(4)
            .position(|w| w == b"Subj")
            .expect("the message's own header");
        assert!(got[at..] == body[..], "user{c}'s message differs");
    }
    assert!(cluster.stop().success());
}
