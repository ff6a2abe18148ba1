//! Replication and placement as a mail user sees them, across real node processes started by
//! `cluster up --nodes 4`: any node accepts mail for any user and any node serves the whole mailbox
//! over POP3 and IMAP, each message exactly once although it is stored R times; dynamic placement
//! keeps a busy mailbox within its spread and static placement on one node; `kill -9` of a
//! follower and of the leader loses no acknowledged message, and a restarted node catches up; a
//! partition made through the fault API accepts mail on both sides and loses nothing once healed.
//!
//! The tests take a lock so that only one 4-node cluster runs at a time: on a 2-core machine four
//! of them at once (plus the fsyncs) would make the membership timers, not the mail, the subject.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{converge, http, kill9, status, Client, Cluster, BIN, WAIT};
use serde_json::Value;

/// Every message these tests send has this subject prefix followed by a unique id.
const SUBJECT: &str = "Subject: cluster-mail ";

static SERIAL: Mutex<()> = Mutex::new(());

/// One 4-node cluster at a time (a failed test must not fail the others: ignore poisoning).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Nodes, views and status
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Node {
    id: u32,
    smtp: SocketAddr,
    pop3: SocketAddr,
    imap: SocketAddr,
    admin: SocketAddr,
}

fn node_from(id: u32, endpoints: &Value) -> Node {
    let addr = |k: &str| -> SocketAddr {
        endpoints[k]
            .as_str()
            .unwrap_or_else(|| panic!("node {id}: no {k} endpoint in {endpoints}"))
            .parse()
            .unwrap()
    };
    Node {
        id,
        smtp: addr("smtp"),
        pop3: addr("pop3"),
        imap: addr("imap"),
        admin: addr("admin"),
    }
}

fn nodes(cluster: &Cluster) -> Vec<Node> {
    cluster.info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| node_from(n["id"].as_u64().unwrap() as u32, n))
        .collect()
}

fn admins(nodes: &[Node]) -> Vec<(u32, SocketAddr)> {
    nodes.iter().map(|n| (n.id, n.admin)).collect()
}

fn domain(cluster: &Cluster) -> String {
    cluster.info["domain"]
        .as_str()
        .unwrap_or("example.test")
        .to_string()
}

/// A node started again from its configuration; killed when dropped (also when a test fails).
struct Restarted {
    child: Child,
    node: Node,
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clusterbench node --config DIR/nodeI/node.toml`, as an operator would; waits for READY.
fn restart_node(cluster: &Cluster, id: u32) -> Restarted {
    let node_dir = cluster.dir.join(format!("node{id}"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("node.log"))
        .unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["node", "--config"])
        .arg(node_dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: prctl is async-signal-safe. The node dies with the test thread that started it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawning clusterbench node");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Some(json) = line.strip_prefix("READY ") else {
        let _ = child.kill();
        panic!("restarted node {id} did not print READY; first stdout line: {line:?}");
    };
    let endpoints: Value = serde_json::from_str(json.trim()).unwrap();
    // Keep draining stdout so the node never writes into a closed pipe.
    std::thread::spawn(move || for _ in stdout.lines() {});
    Restarted {
        node: node_from(id, &endpoints),
        child,
    }
}

/// `GET /mailboxes/{user}` on one node: its local fragment of the user's mailbox.
fn fragment(node: &Node, token: &str, user: &str) -> Result<Value, String> {
    let path = format!("/mailboxes/{user}");
    let (code, body) = http("GET", node.admin, &path, Some(token), "");
    if code != 200 {
        return Err(format!(
            "node {}: GET {path} answered {code}: {body}",
            node.id
        ));
    }
    serde_json::from_str(&body)
        .map_err(|e| format!("node {}: GET {path} gave bad JSON ({e}): {body}", node.id))
}

/// Local message count of one fragment (`messages`, checked against `uids`).
fn fragment_count(node: &Node, token: &str, user: &str) -> Result<u64, String> {
    let f = fragment(node, token, user)?;
    let n = f["messages"].as_u64().ok_or_else(|| {
        format!(
            "node {}: /mailboxes/{user} has no messages count: {f}",
            node.id
        )
    })?;
    Ok(n)
}

/// Polls until every node in `group` has replication backlog 0 and, for every user in
/// `expected`, the nodes' local fragments together hold `copies` × (that user's messages).
/// Returns how long it took; panics with what was last seen after WAIT.
fn settle(
    token: &str,
    group: &[Node],
    expected: &BTreeMap<String, BTreeSet<String>>,
    copies: u64,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut report = Vec::new();
        let mut done = true;
        for node in group {
            let backlog = status(node.admin, token).map(|s| s["replication"]["backlog"].clone());
            if backlog.as_ref().and_then(|b| b.as_u64()) != Some(0) {
                done = false;
            }
            report.push(format!("node {} backlog {backlog:?}", node.id));
        }
        for (user, ids) in expected {
            let counts: Vec<(u32, Result<u64, String>)> = group
                .iter()
                .map(|n| (n.id, fragment_count(n, token, user)))
                .collect();
            let total: u64 = counts.iter().filter_map(|(_, c)| c.as_ref().ok()).sum();
            let want = copies * ids.len() as u64;
            if total != want || counts.iter().any(|(_, c)| c.is_err()) {
                done = false;
            }
            report.push(format!(
                "{user}: {total} copies (want {want}) per node {counts:?}"
            ));
        }
        if done {
            // Each fragment lists one uid per message it holds.
            for node in group {
                for user in expected.keys() {
                    let f = fragment(node, token, user).unwrap();
                    let uids = f["uids"].as_array().map(|u| u.len());
                    assert_eq!(
                        uids,
                        f["messages"].as_u64().map(|n| n as usize),
                        "node {}: /mailboxes/{user} lists a different number of uids than messages: {f}",
                        node.id
                    );
                    assert_eq!(f["user"], user.as_str(), "node {}: {f}", node.id);
                }
            }
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "replication did not settle to backlog 0 and {copies} copies per message within {WAIT:?}; last seen:\n{}",
            report.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

fn expect_reply(node: &Node, what: &str, reply: &str, code: &str) -> Result<(), String> {
    if reply.starts_with(code) {
        Ok(())
    } else {
        Err(format!(
            "node {} answered {what} with {reply:?} (want {code})",
            node.id
        ))
    }
}

/// One message to `user` through `node` over raw SMTP; Ok only on the final 250.
fn smtp_send(node: &Node, domain: &str, user: &str, id: &str) -> Result<(), String> {
    let mut c = Client::connect(node.smtp);
    expect_reply(node, "the connection", &c.smtp_reply(), "220")?;
    c.send(b"EHLO tester.client.test\r\n");
    expect_reply(node, "EHLO", &c.smtp_reply(), "250")?;
    c.send(b"MAIL FROM:<sender@client.test>\r\n");
    expect_reply(node, "MAIL FROM", &c.smtp_reply(), "250")?;
    c.send(format!("RCPT TO:<{user}@{domain}>\r\n").as_bytes());
    expect_reply(node, "RCPT TO", &c.smtp_reply(), "250")?;
    c.send(b"DATA\r\n");
    expect_reply(node, "DATA", &c.smtp_reply(), "354")?;
    c.send(
        format!(
            "From: sender@client.test\r\nTo: {user}@{domain}\r\n{SUBJECT}{id}\r\n\
             Message-ID: <{id}@client.test>\r\n\r\nbody of {id}\r\nsent through node {}\r\n.\r\n",
            node.id
        )
        .as_bytes(),
    );
    expect_reply(node, "the end of DATA", &c.smtp_reply(), "250")?;
    c.send(b"QUIT\r\n");
    let _ = c.smtp_reply();
    Ok(())
}

/// Sends messages `range` with ids `{prefix}-{i}`, spreading them over `via` and `users` so that
/// every user gets mail through every node; every one must be acknowledged with 250. Records each
/// in `expected` (user → ids).
fn send_spread(
    via: &[Node],
    domain: &str,
    users: &[&str],
    prefix: &str,
    range: std::ops::Range<usize>,
    expected: &mut BTreeMap<String, BTreeSet<String>>,
) {
    let start = Instant::now();
    let n = range.len();
    for i in range {
        let user = users[i % users.len()];
        let node = &via[(i + i / users.len()) % via.len()];
        let id = format!("{prefix}-{i}");
        if let Err(e) = smtp_send(node, domain, user, &id) {
            panic!(
                "message {id} to {user} through node {} was not acknowledged: {e}",
                node.id
            );
        }
        expected.entry(user.to_string()).or_default().insert(id);
    }
    println!(
        "sent {n} messages ({prefix}) through nodes {:?} in {} ms",
        via.iter().map(|n| n.id).collect::<Vec<_>>(),
        start.elapsed().as_millis()
    );
}

// ---------------------------------------------------------------------------------------------
// POP3 and IMAP
// ---------------------------------------------------------------------------------------------

fn id_of(message: &[u8]) -> Option<String> {
    String::from_utf8_lossy(message)
        .lines()
        .find_map(|l| l.strip_prefix(SUBJECT))
        .map(|s| s.trim().to_string())
}

fn pop3_login(addr: SocketAddr, user: &str, password: &str) -> Result<Client, String> {
    let mut c = Client::connect(addr);
    let greeting = c.line();
    if !greeting.starts_with("+OK") {
        return Err(format!("POP3 greeting {greeting:?}"));
    }
    let r = c.cmd(&format!("USER {user}"));
    if !r.starts_with("+OK") {
        return Err(format!("USER {user}: {r:?}"));
    }
    let r = c.cmd(&format!("PASS {password}"));
    if !r.starts_with("+OK") {
        return Err(format!("PASS for {user}: {r:?}"));
    }
    Ok(c)
}

/// Reads one multi-line POP3 response body (after its +OK line), undoing dot-stuffing.
fn pop3_multiline(c: &mut Client) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = c.line();
        if line.is_empty() {
            return Err("connection closed in the middle of a message".into());
        }
        if line == ".\r\n" {
            return Ok(body);
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        body.extend_from_slice(line.as_bytes());
    }
}

/// Every message of `user` over POP3 (nothing deleted), in order; Err instead of panicking on a
/// refusal, so callers can poll while the cluster settles.
fn pop3_read(addr: SocketAddr, user: &str, password: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut c = pop3_login(addr, user, password)?;
    let stat = c.cmd("STAT");
    let n: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .filter(|_| stat.starts_with("+OK"))
        .ok_or_else(|| format!("STAT: {stat:?}"))?;
    let mut out = Vec::new();
    for i in 1..=n {
        let r = c.cmd(&format!("RETR {i}"));
        if !r.starts_with("+OK") {
            return Err(format!("RETR {i} of {n}: {r:?}"));
        }
        out.push(pop3_multiline(&mut c)?);
    }
    c.cmd("QUIT");
    Ok(out)
}

/// Deletes the message with `id` from `user`'s mailbox over POP3 (DELE, then QUIT commits).
fn pop3_delete(addr: SocketAddr, user: &str, password: &str, id: &str) -> Result<(), String> {
    let mut c = pop3_login(addr, user, password)?;
    let stat = c.cmd("STAT");
    let n: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("STAT: {stat:?}"))?;
    let mut seen = Vec::new();
    for i in 1..=n {
        let r = c.cmd(&format!("RETR {i}"));
        if !r.starts_with("+OK") {
            return Err(format!("RETR {i}: {r:?}"));
        }
        let this = id_of(&pop3_multiline(&mut c)?);
        if this.as_deref() == Some(id) {
            let r = c.cmd(&format!("DELE {i}"));
            if !r.starts_with("+OK") {
                return Err(format!("DELE {i}: {r:?}"));
            }
            let r = c.cmd("QUIT");
            return if r.starts_with("+OK") {
                Ok(())
            } else {
                Err(format!("QUIT after DELE: {r:?}"))
            };
        }
        seen.push(this);
    }
    c.cmd("QUIT");
    Err(format!("{id} is not in {user}'s mailbox; saw {seen:?}"))
}

/// What an IMAP client sees of a user's INBOX.
#[derive(Debug)]
struct ImapView {
    validity: String,
    uids: Vec<u32>,
    /// Message id → (UID, BODY[]); only when bodies were fetched.
    by_id: BTreeMap<String, (u32, Vec<u8>)>,
    /// Ids as fetched, in order (duplicates kept; `None` for a message without our subject).
    ids: Vec<Option<String>>,
}

fn imap_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn imap_tagged(c: &mut Client, tag: &str, command: &str) -> Result<Vec<String>, String> {
    c.send(format!("{tag} {command}\r\n").as_bytes());
    let lines = c.until(&format!("{tag} "));
    if lines.last().unwrap().starts_with(&format!("{tag} OK")) {
        Ok(lines)
    } else {
        Err(format!("{command}: {lines:?}"))
    }
}

fn imap_login(addr: SocketAddr, user: &str, password: &str) -> Result<(Client, String), String> {
    let mut c = Client::connect(addr);
    let greeting = c.line();
    if !greeting.starts_with("* OK") {
        return Err(format!("IMAP greeting {greeting:?}"));
    }
    imap_tagged(
        &mut c,
        "a",
        &format!("LOGIN {user} {}", imap_quote(password)),
    )?;
    let lines = imap_tagged(&mut c, "b", "SELECT INBOX")?;
    let validity = lines
        .iter()
        .find_map(|l| l.split("[UIDVALIDITY ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .ok_or_else(|| format!("SELECT reports no UIDVALIDITY: {lines:?}"))?
        .to_string();
    Ok((c, validity))
}

/// `{n}\r\n` at the end of a response line: (where the literal marker starts, n).
fn literal_at_end(line: &str) -> Option<(usize, usize)> {
    let trimmed = line.strip_suffix("\r\n")?.strip_suffix('}')?;
    let open = trimmed.rfind('{')?;
    let n = trimmed[open + 1..].trim_end_matches('+').parse().ok()?;
    Some((open, n))
}

/// Reads a literal of `n` bytes; returns it and whatever followed it on its last line.
fn read_literal(c: &mut Client, n: usize) -> Result<(Vec<u8>, String), String> {
    let mut bytes = Vec::new();
    while bytes.len() < n {
        let line = c.line();
        if line.is_empty() {
            return Err(format!("connection closed inside a literal of {n} bytes"));
        }
        bytes.extend_from_slice(line.as_bytes());
    }
    let rest = bytes.split_off(n);
    Ok((bytes, String::from_utf8(rest).map_err(|e| e.to_string())?))
}

fn uid_in(text: &str) -> Option<u32> {
    let at = text.find("UID ")?;
    text[at + 4..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// UIDVALIDITY, `UID SEARCH ALL`, and with `bodies` every message's `BODY.PEEK[]` (the same bytes
/// as `BODY[]`, without setting \Seen).
fn imap_read(
    addr: SocketAddr,
    user: &str,
    password: &str,
    bodies: bool,
) -> Result<ImapView, String> {
    let (mut c, validity) = imap_login(addr, user, password)?;
    let lines = imap_tagged(&mut c, "c", "UID SEARCH ALL")?;
    let uids: Vec<u32> = lines
        .iter()
        .find_map(|l| l.strip_prefix("* SEARCH"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut by_id = BTreeMap::new();
    let mut ids = Vec::new();
    if bodies && !uids.is_empty() {
        c.send(b"d UID FETCH 1:* (UID BODY.PEEK[])\r\n");
        loop {
            let line = c.line();
            if line.is_empty() {
                return Err("connection closed during UID FETCH".into());
            }
            if line.starts_with("d ") {
                if !line.starts_with("d OK") {
                    return Err(format!("UID FETCH: {line:?}"));
                }
                break;
            }
            if !(line.starts_with("* ") && line.contains(" FETCH ")) {
                continue;
            }
            // One FETCH response: text with literals in between.
            let mut text = String::new();
            let mut literals = Vec::new();
            let mut current = line;
            loop {
                match literal_at_end(&current) {
                    Some((open, n)) => {
                        text.push_str(&current[..open]);
                        let (literal, rest) = read_literal(&mut c, n)?;
                        literals.push(literal);
                        current = if rest.is_empty() { c.line() } else { rest };
                    }
                    None => {
                        text.push_str(&current);
                        break;
                    }
                }
            }
            let uid =
                uid_in(&text).ok_or_else(|| format!("FETCH response without UID: {text:?}"))?;
            let body = literals
                .into_iter()
                .next()
                .ok_or_else(|| format!("FETCH response without a BODY[] literal: {text:?}"))?;
            let id = id_of(&body);
            ids.push(id.clone());
            if let Some(id) = id {
                by_id.insert(id, (uid, body));
            }
        }
    }
    let _ = c.cmd("z LOGOUT");
    Ok(ImapView {
        validity,
        uids,
        by_id,
        ids,
    })
}

/// Marks the message with `uid` \Deleted and expunges it, over IMAP.
fn imap_delete(addr: SocketAddr, user: &str, password: &str, uid: u32) -> Result<(), String> {
    let (mut c, _) = imap_login(addr, user, password)?;
    imap_tagged(&mut c, "s", &format!("UID STORE {uid} +FLAGS (\\Deleted)"))?;
    imap_tagged(&mut c, "e", "EXPUNGE")?;
    let _ = c.cmd("z LOGOUT");
    Ok(())
}

/// How a list of message ids compares with the ids expected.
#[derive(Debug, Default)]
struct Tally {
    missing: Vec<String>,
    duplicated: Vec<(String, usize)>,
    unexpected: Vec<Option<String>>,
}

impl Tally {
    fn of(ids: &[Option<String>], expected: &BTreeSet<String>) -> Tally {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut tally = Tally::default();
        for id in ids {
            match id {
                Some(id) if expected.contains(id) => *counts.entry(id).or_default() += 1,
                other => tally.unexpected.push(other.clone()),
            }
        }
        tally.missing = expected
            .iter()
            .filter(|id| !counts.contains_key(id.as_str()))
            .cloned()
            .collect();
        tally.duplicated = counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, n)| (id.to_string(), n))
            .collect();
        tally
    }

    fn exact(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.unexpected.is_empty()
    }
}

/// Polls POP3 on `node` until `user`'s mailbox holds exactly the `expected` ids, once each;
/// returns id → RETR bytes. A message shown twice fails at once; a missing message, or one that
/// should be gone, is waited for up to WAIT.
fn wait_pop3(
    node: &Node,
    user: &str,
    password: &str,
    expected: &BTreeSet<String>,
) -> BTreeMap<String, Vec<u8>> {
    let start = Instant::now();
    loop {
        let last = match pop3_read(node.pop3, user, password) {
            Ok(messages) => {
                let ids: Vec<Option<String>> = messages.iter().map(|m| id_of(m)).collect();
                let tally = Tally::of(&ids, expected);
                assert!(
                    tally.duplicated.is_empty(),
                    "POP3 on node {} shows messages of {user} more than once: {:?}; all ids: {ids:?}",
                    node.id,
                    tally.duplicated
                );
                if tally.exact() {
                    return ids.into_iter().map(Option::unwrap).zip(messages).collect();
                }
                format!("{tally:?} (saw {} messages)", ids.len())
            }
            Err(e) => e,
        };
        assert!(
            start.elapsed() < WAIT,
            "POP3 on node {}: {user}'s mailbox never showed exactly the {} expected messages within {WAIT:?}; last: {last}",
            node.id,
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_pop3`], over IMAP (UID SEARCH ALL and every BODY[]).
fn wait_imap(node: &Node, user: &str, password: &str, expected: &BTreeSet<String>) -> ImapView {
    let start = Instant::now();
    loop {
        let last = match imap_read(node.imap, user, password, true) {
            Ok(view) => {
                let tally = Tally::of(&view.ids, expected);
                assert!(
                    tally.duplicated.is_empty(),
                    "IMAP on node {} shows messages of {user} more than once: {:?}; uids {:?}, ids {:?}",
                    node.id,
                    tally.duplicated,
                    view.uids,
                    view.ids
                );
                if tally.exact() && view.uids.len() == expected.len() {
                    return view;
                }
                format!(
                    "{tally:?}; UID SEARCH ALL gave {} uids: {:?}",
                    view.uids.len(),
                    view.uids
                )
            }
            Err(e) => e,
        };
        assert!(
            start.elapsed() < WAIT,
            "IMAP on node {}: {user}'s INBOX never showed exactly the {} expected messages within {WAIT:?}; last: {last}",
            node.id,
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one node showed of a mailbox over IMAP: (UIDVALIDITY, UIDs), or why it could not.
type UidListing = Result<(String, Vec<u32>), String>;

/// Polls until every node of `group` gives the same UIDVALIDITY and the same `UID SEARCH ALL` of
/// `count` uids for `user`; returns them.
fn wait_same_uids(group: &[Node], user: &str, password: &str, count: usize) -> (String, Vec<u32>) {
    let start = Instant::now();
    loop {
        let seen: Vec<(u32, UidListing)> = group
            .iter()
            .map(|n| {
                (
                    n.id,
                    imap_read(n.imap, user, password, false).map(|v| (v.validity, v.uids)),
                )
            })
            .collect();
        let distinct: BTreeSet<_> = seen.iter().map(|(_, v)| v.clone()).collect();
        if distinct.len() == 1 {
            if let Some(Ok((validity, uids))) = distinct.into_iter().next() {
                if uids.len() == count {
                    return (validity, uids);
                }
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "IMAP: the nodes never agreed on {user}'s UIDVALIDITY and {count} UIDs within {WAIT:?}; last (node, (UIDVALIDITY, UIDs)): {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every user's mailbox holds exactly the expected messages, over POP3, on each node of `group`.
fn all_readable_pop3(
    group: &[Node],
    password: &str,
    expected: &BTreeMap<String, BTreeSet<String>>,
) {
    for node in group {
        for (user, ids) in expected {
            wait_pop3(node, user, password, ids);
        }
    }
}

/// The same over IMAP, with the UIDs agreeing across `group`.
fn all_readable_imap(
    group: &[Node],
    password: &str,
    expected: &BTreeMap<String, BTreeSet<String>>,
) {
    for (user, ids) in expected {
        for node in group {
            wait_imap(node, user, password, ids);
        }
        wait_same_uids(group, user, password, ids.len());
    }
}

fn block(token: &str, node: &Node, peers: &str) {
    let (code, body) = http(
        "POST",
        node.admin,
        "/faults",
        Some(token),
        &format!(r#"{{"block_peers": {peers}}}"#),
    );
    assert_eq!(code, 200, "node {}: POST /faults: {body}", node.id);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn any_node_accepts_and_any_node_serves_exactly_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "4", "--replication", "2"]);
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3, 4], 1);
    for node in &all {
        let s = status(node.admin, &token).expect("status answers");
        assert_eq!(
            s["replication"]["factor"], 2,
            "node {}: /status should report replication factor 2: {s}",
            node.id
        );
    }

    let users = ["user0", "user1", "user2", "user3"];
    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &users, "any", 0..40, &mut expected);

    // Every node presents every user's whole mailbox, each message once, with the same bytes over
    // POP3 and IMAP, and the same bytes whichever node serves it.
    let mut reference: BTreeMap<(String, String), (u32, Vec<u8>)> = BTreeMap::new();
    for node in &all {
        for (user, ids) in &expected {
            let pop3 = wait_pop3(node, user, &password, ids);
            let imap = wait_imap(node, user, &password, ids);
            for (id, bytes) in &pop3 {
                let (uid, imap_bytes) = &imap.by_id[id];
                assert!(
                    imap_bytes == bytes,
                    "node {}: IMAP BODY[] of {id} (uid {uid}) differs from POP3 RETR:\nIMAP: {:?}\nPOP3: {:?}",
                    node.id,
                    String::from_utf8_lossy(imap_bytes),
                    String::from_utf8_lossy(bytes)
                );
                let key = (user.clone(), id.clone());
                match reference.get(&key) {
                    None => {
                        reference.insert(key, (node.id, bytes.clone()));
                    }
                    Some((first, seen)) => assert!(
                        seen == bytes,
                        "{user}'s message {id} differs between node {first} and node {}:\n{:?}\n{:?}",
                        node.id,
                        String::from_utf8_lossy(seen),
                        String::from_utf8_lossy(bytes)
                    ),
                }
            }
        }
    }
    for (user, ids) in &expected {
        let (validity, uids) = wait_same_uids(&all, user, &password, ids.len());
        println!("{user}: UIDVALIDITY {validity}, UIDs {uids:?} on every node");
    }

    // Two copies of every message, on the nodes' local fragments.
    let took = settle(&token, &all, &expected, 2);
    println!(
        "replication settled (backlog 0, 2 copies each) {} ms after the last check",
        took.as_millis()
    );

    // A POP3 deletion through node 1 is seen through node 3, over POP3 and IMAP.
    let victim = expected["user1"].iter().next().unwrap().clone();
    pop3_delete(all[0].pop3, "user1", &password, &victim)
        .unwrap_or_else(|e| panic!("deleting {victim} over POP3 on node 1: {e}"));
    expected.get_mut("user1").unwrap().remove(&victim);
    let start = Instant::now();
    wait_pop3(&all[2], "user1", &password, &expected["user1"]);
    wait_imap(&all[2], "user1", &password, &expected["user1"]);
    println!(
        "POP3 deletion on node 1 visible on node 3 after {} ms",
        start.elapsed().as_millis()
    );

    // An IMAP STORE \Deleted + EXPUNGE through node 2 is seen through node 4, over POP3 and IMAP.
    let view = wait_imap(&all[1], "user2", &password, &expected["user2"]);
    let victim = expected["user2"].iter().next().unwrap().clone();
    let uid = view.by_id[&victim].0;
    imap_delete(all[1].imap, "user2", &password, uid)
        .unwrap_or_else(|e| panic!("deleting {victim} (uid {uid}) over IMAP on node 2: {e}"));
    expected.get_mut("user2").unwrap().remove(&victim);
    let start = Instant::now();
    wait_pop3(&all[3], "user2", &password, &expected["user2"]);
    let after = wait_imap(&all[3], "user2", &password, &expected["user2"]);
    assert!(
        !after.uids.contains(&uid),
        "node 4 still lists expunged uid {uid}: {:?}",
        after.uids
    );
    println!(
        "IMAP expunge on node 2 visible on node 4 after {} ms",
        start.elapsed().as_millis()
    );

    // And every node agrees again on the remaining UIDs.
    for user in ["user1", "user2"] {
        wait_same_uids(&all, user, &password, expected[user].len());
    }
}

#[test]
fn dynamic_placement_keeps_a_busy_mailbox_within_its_spread() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(
        dir.path(),
        &[
            "--nodes",
            "4",
            "--replication",
            "1",
            "--spread",
            "2",
            "--placement",
            "dynamic",
        ],
    );
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3, 4], 1);
    for node in &all {
        let s = status(node.admin, &token).expect("status answers");
        assert_eq!(s["placement"], "dynamic", "node {}: {s}", node.id);
        assert_eq!(s["spread"], 2, "node {}: {s}", node.id);
        assert_eq!(s["replication"]["factor"], 1, "node {}: {s}", node.id);
    }

    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &["user7"], "busy", 0..40, &mut expected);
    settle(&token, &all, &expected, 1);
    let counts: Vec<(u32, u64)> = all
        .iter()
        .map(|n| (n.id, fragment_count(n, &token, "user7").unwrap()))
        .collect();
    println!("dynamic placement, spread 2: user7's fragments (node, messages): {counts:?}");
    let holders = counts.iter().filter(|(_, n)| *n > 0).count();
    assert!(
        (1..=2).contains(&holders),
        "40 messages to user7 through all 4 nodes should land on at most 2 nodes (spread 2); fragments (node, messages): {counts:?}"
    );
    // The mailbox is whole wherever it is read.
    wait_pop3(&all[0], "user7", &password, &expected["user7"]);
    wait_imap(&all[3], "user7", &password, &expected["user7"]);
}

#[test]
fn static_placement_keeps_a_mailbox_on_one_node() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(
        dir.path(),
        &[
            "--nodes",
            "4",
            "--replication",
            "1",
            "--placement",
            "static",
        ],
    );
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3, 4], 1);
    for node in &all {
        let s = status(node.admin, &token).expect("status answers");
        assert_eq!(s["placement"], "static", "node {}: {s}", node.id);
    }

    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &["user7"], "home", 0..40, &mut expected);
    settle(&token, &all, &expected, 1);
    let counts: Vec<(u32, u64)> = all
        .iter()
        .map(|n| (n.id, fragment_count(n, &token, "user7").unwrap()))
        .collect();
    println!("static placement: user7's fragments (node, messages): {counts:?}");
    let holders: Vec<_> = counts.iter().filter(|(_, n)| *n > 0).collect();
    assert!(
        holders.len() == 1 && holders[0].1 == 40,
        "with static placement one node should hold all 40 of user7's messages; fragments (node, messages): {counts:?}"
    );
    wait_pop3(&all[2], "user7", &password, &expected["user7"]);
}

#[test]
fn replication_survives_kill_9_of_a_follower_and_of_the_leader() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "4", "--replication", "2"]);
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3, 4], 1);

    let users = ["user10", "user11", "user12", "user13", "user14"];
    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &users, "before", 0..30, &mut expected);
    // Replication is asynchronous: the second copies exist once the backlog is 0.
    let took = settle(&token, &all, &expected, 2);
    println!(
        "30 messages replicated (backlog 0) {} ms after the last 250",
        took.as_millis()
    );

    // A follower dies.
    kill9(cluster.node_pid(2));
    let survivors: Vec<Node> = all.iter().copied().filter(|n| n.id != 3).collect();
    let (_, took) = converge(&token, &admins(&survivors), &[1, 2, 4], 1);
    println!(
        "follower (node 3) killed: survivors converged in {} ms",
        took.as_millis()
    );
    all_readable_pop3(&survivors, &password, &expected);

    // Mail keeps flowing without it.
    send_spread(&survivors, &domain, &users, "during", 30..40, &mut expected);
    all_readable_pop3(&survivors, &password, &expected);

    // It comes back, rejoins and catches up.
    let node3 = restart_node(&cluster, 3);
    let mut rejoined = survivors.clone();
    rejoined.push(node3.node);
    rejoined.sort_by_key(|n| n.id);
    let (_, took) = converge(&token, &admins(&rejoined), &[1, 2, 3, 4], 1);
    println!("restarted node 3 rejoined in {} ms", took.as_millis());
    let took = settle(&token, &rejoined, &expected, 2);
    println!(
        "after the rejoin: backlog 0 and 2 copies of all 40 messages {} ms later",
        took.as_millis()
    );
    let held: Vec<(String, u64)> = users
        .iter()
        .map(|u| {
            (
                u.to_string(),
                fragment_count(&node3.node, &token, u).unwrap(),
            )
        })
        .collect();
    println!("restarted node 3 holds (user, messages): {held:?}");
    all_readable_pop3(&[node3.node], &password, &expected);

    // The leader dies: node 2 takes over.
    kill9(cluster.node_pid(0));
    let survivors: Vec<Node> = rejoined.iter().copied().filter(|n| n.id != 1).collect();
    let (_, took) = converge(&token, &admins(&survivors), &[2, 3, 4], 2);
    println!(
        "leader (node 1) killed: survivors converged in {} ms",
        took.as_millis()
    );
    let readers: Vec<Node> = survivors
        .iter()
        .copied()
        .filter(|n| n.id == 2 || n.id == 4)
        .collect();
    all_readable_pop3(&readers, &password, &expected);
    all_readable_imap(&readers, &password, &expected);
    drop(node3);
}

#[test]
fn a_partition_accepts_mail_on_both_sides_and_loses_nothing_after_healing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "4", "--replication", "2"]);
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3, 4], 1);

    let users = ["user20", "user21", "user22", "user23"];
    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &users, "whole", 0..8, &mut expected);
    settle(&token, &all, &expected, 2);

    // Split {1,2} from {3,4}.
    let side_a = [all[0], all[1]];
    let side_b = [all[2], all[3]];
    for node in &side_a {
        block(&token, node, "[3, 4]");
    }
    for node in &side_b {
        block(&token, node, "[1, 2]");
    }
    let (_, took_a) = converge(&token, &admins(&side_a), &[1, 2], 1);
    let (_, took_b) = converge(&token, &admins(&side_b), &[3, 4], 3);
    println!(
        "partition: side {{1,2}} converged in {} ms, side {{3,4}} in {} ms",
        took_a.as_millis(),
        took_b.as_millis()
    );

    // Both sides keep accepting mail for the same users.
    send_spread(&side_a, &domain, &users, "side-a", 0..12, &mut expected);
    send_spread(&side_b, &domain, &users, "side-b", 0..12, &mut expected);

    // Heal.
    for node in &all {
        let (code, body) = http("DELETE", node.admin, "/faults", Some(&token), "");
        assert_eq!(code, 200, "node {}: DELETE /faults: {body}", node.id);
    }
    let (_, took) = converge(&token, &admins(&all), &[1, 2, 3, 4], 1);
    println!("heal: one view again in {} ms", took.as_millis());

    // Every acknowledged message, from either side, exactly once through every node.
    let start = Instant::now();
    all_readable_pop3(&all, &password, &expected);
    println!(
        "every message readable over POP3 on every node {} ms after the heal converged",
        start.elapsed().as_millis()
    );
    all_readable_imap(&all, &password, &expected);
    let took = settle(&token, &all, &expected, 2);
    println!(
        "after the heal: backlog 0 and 2 copies each, {} ms after the reads",
        took.as_millis()
    );
}

#[test]
fn flags_and_expunges_made_while_a_holder_is_down_reach_it_when_it_returns() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Three copies on three nodes: every node holds every message.
    let cluster = Cluster::up(dir.path(), &["--nodes", "3", "--replication", "3"]);
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3], 1);
    let user = "user21";
    let mut expected = BTreeMap::new();
    send_spread(&all, &domain, &[user], "held", 0..3, &mut expected);
    settle(&token, &all, &expected, 3);
    let uids: Vec<u64> = fragment(&all[2], &token, user).unwrap()["uids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_u64().unwrap())
        .collect();
    assert_eq!(uids.len(), 3);

    // Node 3 goes down; through node 1 a message is flagged and another expunged.
    kill9(cluster.node_pid(2));
    let survivors = [all[0], all[1]];
    converge(&token, &admins(&survivors), &[1, 2], 1);
    let (mut c, _) = imap_login(all[0].imap, user, &password).unwrap();
    imap_tagged(
        &mut c,
        "f",
        &format!("UID STORE {} +FLAGS (\\Flagged)", uids[0]),
    )
    .unwrap();
    let _ = c.cmd("z LOGOUT");
    imap_delete(all[0].imap, user, &password, uids[1] as u32).unwrap();

    // It comes back: the survivors owe it both changes and retry until it has them.
    let node3 = restart_node(&cluster, 3);
    let rejoined = [all[0], all[1], node3.node];
    converge(&token, &admins(&rejoined), &[1, 2, 3], 1);
    let start = Instant::now();
    loop {
        let f = fragment(&node3.node, &token, user).unwrap();
        let local: Vec<u64> = f["uids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_u64().unwrap())
            .collect();
        let flagged = f["flags"][uids[0].to_string()]
            .as_array()
            .is_some_and(|fl| fl.iter().any(|x| x == "\\Flagged"));
        let backlog_zero = rejoined.iter().all(|n| {
            status(n.admin, &token).and_then(|s| s["replication"]["backlog"].as_u64()) == Some(0)
        });
        if !local.contains(&uids[1]) && flagged && backlog_zero {
            println!(
                "node 3 caught up on a flag and an expunge {} ms after rejoining",
                start.elapsed().as_millis()
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "node 3 never caught up: its fragment is {f}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(node3);
}

#[test]
fn user_profiles_reach_every_node_including_one_that_was_down() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--nodes", "3"]);
    let (token, password, domain) = (cluster.token(), cluster.password(), domain(&cluster));
    let all = nodes(&cluster);
    converge(&token, &admins(&all), &[1, 2, 3], 1);

    // Bad profiles are refused, naming what is wrong.
    let (code, body) = http(
        "PUT",
        all[0].admin,
        "/users/bad%20name",
        Some(&token),
        r#"{"password": "x"}"#,
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        "PUT",
        all[0].admin,
        "/users/alice",
        Some(&token),
        r#"{"pass": "x"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pass"), "{body}");

    kill9(cluster.node_pid(2));
    let survivors = [all[0], all[1]];
    converge(&token, &admins(&survivors), &[1, 2], 1);
    // A new user and a changed password, made on node 1 while node 3 is down.
    let (code, body) = http(
        "PUT",
        all[0].admin,
        "/users/alice",
        Some(&token),
        r#"{"password": "pw-a"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        "PUT",
        all[0].admin,
        "/users/user5",
        Some(&token),
        r#"{"password": "changed"}"#,
    );
    assert_eq!(code, 200, "{body}");

    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < WAIT, "{what} never happened");
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("{what} after {} ms", start.elapsed().as_millis());
    };
    let has_profile = |node: &Node, user: &str| {
        let (_, body) = http(
            "GET",
            node.admin,
            &format!("/users/{user}"),
            Some(&token),
            "",
        );
        body.contains("\"profile\"")
    };
    // Each profile is pushed on its own: alice's may reach node 2 before user5's.
    wait_for("node 2 knows alice", &|| has_profile(&all[1], "alice"));
    wait_for("node 2 knows user5's new password", &|| {
        pop3_login(all[1].pop3, "user5", "changed").is_ok()
    });
    // Mail for the new user is accepted through node 2 and read with her password on node 1.
    smtp_send(&all[1], &domain, "alice", "for-alice").unwrap();
    let mail = pop3_read(all[0].pop3, "alice", "pw-a").unwrap();
    assert_eq!(mail.len(), 1);
    assert!(
        pop3_login(all[1].pop3, "user5", &password).is_err(),
        "the old password still works"
    );
    assert!(pop3_login(all[1].pop3, "user5", "changed").is_ok());

    // Node 3 comes back and is told both.
    let node3 = restart_node(&cluster, 3);
    converge(
        &token,
        &admins(&[all[0], all[1], node3.node]),
        &[1, 2, 3],
        1,
    );
    wait_for("node 3 learned alice's profile", &|| {
        has_profile(&node3.node, "alice")
    });
    wait_for("node 3 learned user5's new password", &|| {
        pop3_login(node3.node.pop3, "user5", "changed").is_ok()
    });
    assert_eq!(
        pop3_read(node3.node.pop3, "alice", "pw-a").unwrap().len(),
        1
    );
    drop(node3);
}
