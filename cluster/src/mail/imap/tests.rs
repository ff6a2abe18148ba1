//! End-to-end: a real node, real sockets, IMAP spoken by hand. Covers the session flow a mail
//! client uses, the literal and line limits, and two sessions of one user seeing each other's
//! changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::mail::config::NodeConfig;
use crate::mail::node::{start, RunningNode};
use crate::mail::store::Flags;

const STEP: Duration = Duration::from_secs(10);

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = c.line().await;
        assert!(
            greeting.starts_with(b"* OK [CAPABILITY IMAP4rev1"),
            "{}",
            show(&greeting)
        );
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// One response line with its CRLF; a literal it announces is read and appended, with the
    /// rest of the response after it.
    async fn line(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = tokio::time::timeout(STEP, self.reader.read_until(b'\n', &mut out))
                .await
                .expect("server did not answer in time")
                .unwrap();
            assert!(n > 0, "connection closed; got {}", show(&out));
            let line = &out[start..];
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
            match literal {
                Some(len) => {
                    let mut data = vec![0; len];
                    self.reader.read_exact(&mut data).await.unwrap();
                    out.extend_from_slice(&data);
                }
                None => return out,
            }
        }
    }

    /// Sends `tag command` and reads up to the tagged reply: (untagged lines, tagged line).
    async fn cmd(&mut self, tag: &str, command: &str) -> (Vec<Vec<u8>>, String) {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(tag).await
    }

    async fn until(&mut self, tag: &str) -> (Vec<Vec<u8>>, String) {
        let mut untagged = Vec::new();
        loop {
            let line = self.line().await;
            if line.starts_with(format!("{tag} ").as_bytes()) {
                return (untagged, show(&line));
            }
            untagged.push(line);
        }
    }

    /// Like `cmd`, but asserts the tagged reply is OK and returns the untagged lines as text.
    async fn ok(&mut self, tag: &str, command: &str) -> String {
        let (untagged, tagged) = self.cmd(tag, command).await;
        assert!(
            tagged.starts_with(&format!("{tag} OK")),
            "{command} -> {tagged}"
        );
        untagged.iter().map(|l| show(l)).collect()
    }

    async fn login(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.ok("l", &format!("LOGIN {user} password")).await;
        c
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn node(dir: &tempfile::TempDir, tweak: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    let mut config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        admin_token: "t".into(),
        ..Default::default()
    };
    tweak(&mut config);
    start(config).await.unwrap()
}

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.test>\r\nTo: user1@example.test\r\nSubject: message {n}\r\nMessage-ID: <{n}@example.test>\r\n\r\nBody of message {n}.\r\n"
    )
    .into_bytes()
}

async fn deliver(running: &RunningNode, user: &str, bytes: Vec<u8>) -> u32 {
    running
        .context
        .store
        .deliver(vec![user.into()], Arc::from(bytes), Flags::empty(), None)
        .await
        .unwrap()[0]
}

#[tokio::test]
async fn a_client_session_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let running = node(&dir, |c| {
        c.limits.literal_bytes_max = 4096;
        c.limits.message_bytes_max = 64 * 1024;
    })
    .await;
    for n in 1..=3 {
        deliver(&running, "user1", message(n)).await;
    }
    let addr = running.endpoints.imap;
    let mut c = Client::connect(addr).await;

    // Before login: wrong password, commands needing a login.
    let (_, tagged) = c.cmd("a0", "LOGIN user1 wrong").await;
    assert!(
        tagged.starts_with("a0 NO [AUTHENTICATIONFAILED]"),
        "{tagged}"
    );
    let (_, tagged) = c.cmd("a1", "SELECT INBOX").await;
    assert!(tagged.starts_with("a1 BAD"), "{tagged}");
    let caps = c.ok("a2", "CAPABILITY").await;
    assert!(
        caps.contains("IMAP4rev1") && !caps.contains("LITERAL+"),
        "{caps}"
    );
    // LOGIN with a synchronizing literal for the password.
    c.send(b"a3 LOGIN \"user1\" {8}\r\n").await;
    let cont = c.line().await;
    assert!(cont.starts_with(b"+ "), "{}", show(&cont));
    c.send(b"password\r\n").await;
    let (_, tagged) = c.until("a3").await;
    assert!(tagged.starts_with("a3 OK"), "{tagged}");

    // The first session told of the three messages: they are \Recent in it.
    let out = c.ok("a4", "SELECT INBOX").await;
    for want in [
        "* 3 EXISTS",
        "* 3 RECENT",
        "[UNSEEN 1]",
        "[UIDVALIDITY ",
        "[UIDNEXT 256]",
        "[PERMANENTFLAGS (",
    ] {
        assert!(out.contains(want), "SELECT lacks {want}: {out}");
    }
    let list = c.ok("a5", "LIST \"\" \"*\"").await;
    assert_eq!(list, "* LIST (\\HasNoChildren) \"/\" INBOX\r\n");
    let list = c.ok("a6", "LIST \"\" \"\"").await;
    assert_eq!(list, "* LIST (\\Noselect) \"/\" \"\"\r\n");
    let status = c.ok("a7", "STATUS inbox (MESSAGES UNSEEN UIDNEXT)").await;
    assert_eq!(
        status,
        "* STATUS INBOX (MESSAGES 3 UNSEEN 3 UIDNEXT 256)\r\n"
    );
    let (_, tagged) = c.cmd("a8", "SELECT Sent").await;
    assert!(tagged.starts_with("a8 NO [NONEXISTENT]"), "{tagged}");
    // Claimed by the first SELECT: no longer recent for the next.
    assert!(c.ok("a9", "SELECT INBOX").await.contains("* 0 RECENT"));
    assert_eq!(
        c.ok("a10", "STATUS INBOX (RECENT)").await,
        "* STATUS INBOX (RECENT 0)\r\n"
    );

    let out = c
        .ok("b1", "FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)")
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let size = message(2).len();
    assert!(
        lines[1].starts_with("* 2 FETCH (FLAGS () UID 129 RFC822.SIZE "),
        "{out}"
    );
    assert!(lines[1].contains(&format!("RFC822.SIZE {size} ")), "{out}");
    assert!(
        lines[1]
            .contains(r#"ENVELOPE (NIL "message 2" (("Sender 2" NIL "sender2" "example.test"))"#),
        "{out}"
    );

    // UID FETCH of a body: the literal is the stored bytes, and \Seen gets set.
    let (untagged, tagged) = c.cmd("b2", "UID FETCH 129 BODY[]").await;
    assert!(tagged.starts_with("b2 OK"), "{tagged}");
    assert_eq!(untagged.len(), 1);
    let mut want = format!("* 2 FETCH (UID 129 BODY[] {{{size}}}\r\n").into_bytes();
    want.extend_from_slice(&message(2));
    want.extend_from_slice(b" FLAGS (\\Seen))\r\n");
    assert_eq!(show(&untagged[0]), show(&want));
    let out = c
        .ok(
            "b3",
            "FETCH 3 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<0.4>)",
        )
        .await;
    assert_eq!(
        out,
        "* 3 FETCH (BODY[HEADER.FIELDS (Subject)] {22}\r\nSubject: message 3\r\n\r\n BODY[TEXT]<0> {4}\r\nBody)\r\n"
    );
    let (_, tagged) = c.cmd("b4", "FETCH 9 FLAGS").await;
    assert!(tagged.starts_with("b4 BAD"), "{tagged}");
    assert_eq!(c.ok("b5", "UID FETCH 9:10 FLAGS").await, "");

    assert_eq!(c.ok("c1", "SEARCH UNSEEN").await, "* SEARCH 1 3\r\n");
    assert_eq!(
        c.ok("c2", "UID SEARCH SUBJECT \"message 3\"").await,
        "* SEARCH 193\r\n"
    );
    assert_eq!(
        c.ok("c3", "SEARCH OR 1 SEEN NOT DELETED").await,
        "* SEARCH 1 2\r\n"
    );

    let out = c.ok("d1", "STORE 1 +FLAGS (\\Deleted)").await;
    assert_eq!(out, "* 1 FETCH (FLAGS (\\Deleted))\r\n");
    assert_eq!(
        c.ok("d2", "UID STORE 193 +FLAGS.SILENT (\\Flagged)").await,
        ""
    );
    assert_eq!(c.ok("d3", "SEARCH FLAGGED").await, "* SEARCH 3\r\n");

    // A second session of the same user sees the first one's expunge at its next NOOP.
    let mut other = Client::login(addr, "user1").await;
    assert!(other.ok("e1", "SELECT INBOX").await.contains("* 3 EXISTS"));
    assert_eq!(c.ok("e2", "EXPUNGE").await, "* 1 EXPUNGE\r\n");
    // FETCH must not report the expunge; the message it names is simply gone.
    assert_eq!(other.ok("e3", "FETCH 1 UID").await, "");
    assert_eq!(other.ok("e4", "NOOP").await, "* 1 EXPUNGE\r\n");
    assert_eq!(
        other.ok("e5", "FETCH 1 UID").await,
        "* 1 FETCH (UID 129)\r\n"
    );

    // APPEND with a literal; the other session learns of it as EXISTS.
    let appended = b"Subject: appended\r\n\r\nappended body\r\n";
    c.send(format!("f1 APPEND INBOX (\\Seen) {{{}}}\r\n", appended.len()).as_bytes())
        .await;
    let cont = c.line().await;
    assert!(cont.starts_with(b"+ "), "{}", show(&cont));
    c.send(appended).await;
    c.send(b"\r\n").await;
    let (untagged, tagged) = c.until("f1").await;
    assert!(tagged.starts_with("f1 OK [APPENDUID "), "{tagged}");
    assert!(
        untagged.iter().any(|l| l == b"* 3 EXISTS\r\n"),
        "{untagged:?}"
    );
    assert!(other.ok("f2", "NOOP").await.contains("* 3 EXISTS"));
    let (untagged, _) = other.cmd("f3", "FETCH 3 BODY.PEEK[]").await;
    assert!(
        untagged[0].ends_with(b"appended body\r\n)\r\n"),
        "{}",
        show(&untagged[0])
    );

    // An oversized literal is refused without a continuation, and nothing is read for it.
    c.send(b"g1 APPEND INBOX {100000}\r\n").await;
    let reply = c.line().await;
    assert!(reply.starts_with(b"g1 NO [TOOBIG]"), "{}", show(&reply));
    c.send(b"g2 LOGIN {5000}\r\n").await;
    let reply = c.line().await;
    assert!(reply.starts_with(b"g2 NO [TOOBIG]"), "{}", show(&reply));
    c.ok("g3", "NOOP").await;

    // A 2 MB line without CRLF gets an untagged BAD; the session goes on.
    c.send(&vec![b'x'; 2 * 1024 * 1024]).await;
    let reply = c.line().await;
    assert!(reply.starts_with(b"* BAD"), "{}", show(&reply));
    c.send(b"\r\n").await;
    c.ok("h1", "NOOP").await;

    // Garbage and unknown commands.
    c.send(b"\r\n").await;
    assert!(c.line().await.starts_with(b"* BAD"));
    let (_, tagged) = c.cmd("h2", "FROBNICATE").await;
    assert!(tagged.starts_with("h2 BAD"), "{tagged}");

    // EXAMINE is read-only: STORE is refused.
    assert!(c
        .ok("i1", "EXAMINE INBOX")
        .await
        .contains("[PERMANENTFLAGS ()]"));
    let (_, tagged) = c.cmd("i2", "STORE 1 +FLAGS (\\Seen)").await;
    assert!(tagged.starts_with("i2 NO"), "{tagged}");

    let (untagged, tagged) = c.cmd("z1", "LOGOUT").await;
    assert!(untagged[0].starts_with(b"* BYE"));
    assert!(tagged.starts_with("z1 OK"), "{tagged}");
    running.shutdown().await;
}

#[tokio::test]
async fn authenticate_plain_and_error_limit() {
    let dir = tempfile::tempdir().unwrap();
    let running = node(&dir, |c| c.limits.errors_per_session_max = 3).await;
    let addr = running.endpoints.imap;

    // SASL-IR: "\0user2\0password".
    let mut c = Client::connect(addr).await;
    c.ok("a", "AUTHENTICATE PLAIN AHVzZXIyAHBhc3N3b3Jk").await;
    c.ok("b", "SELECT INBOX").await;
    // With a continuation.
    let mut c = Client::connect(addr).await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert!(c.line().await.starts_with(b"+"));
    c.send(b"AHVzZXIyAHdyb25n\r\n").await;
    let (_, tagged) = c.until("a").await;
    assert!(
        tagged.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{tagged}"
    );

    // Errors add up to a BYE.
    let mut c = Client::connect(addr).await;
    c.cmd("1", "BOGUS").await;
    c.cmd("2", "BOGUS").await;
    c.send(b"3 BOGUS\r\n").await;
    assert!(c.line().await.starts_with(b"3 BAD"));
    assert!(c.line().await.starts_with(b"* BYE"));
    running.shutdown().await;
}

#[tokio::test]
async fn oversized_non_synchronizing_literal_and_idle_timeout_close_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let running = node(&dir, |c| {
        c.limits.literal_bytes_max = 1024;
        c.limits.idle_timeout_s = 1;
    })
    .await;
    let addr = running.endpoints.imap;

    // The bytes of a {n+} literal follow unasked, so an oversized one cannot be skipped: BYE.
    let mut c = Client::connect(addr).await;
    c.send(b"a LOGIN user1 {5000+}\r\n").await;
    assert!(c.line().await.starts_with(b"* BYE"));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(STEP, c.reader.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "connection not closed: {}", show(&rest));

    // A small {n+} literal is accepted without a continuation.
    let mut c = Client::connect(addr).await;
    c.send(b"a LOGIN user1 {8+}\r\npassword\r\n").await;
    let (_, tagged) = c.until("a").await;
    assert!(tagged.starts_with("a OK"), "{tagged}");

    // Saying nothing for longer than the idle timeout ends the session politely.
    let line = c.line().await;
    assert!(line.starts_with(b"* BYE Autologout"), "{}", show(&line));
    running.shutdown().await;
}

#[tokio::test]
async fn literals_the_node_has_no_room_for_are_refused_for_now() {
    let dir = tempfile::tempdir().unwrap();
    let running = node(&dir, |c| {
        c.limits.literal_bytes_max = 4096;
        c.limits.message_bytes_max = 64 * 1024;
        // Room for one 60 KB APPEND at a time (held twice: the command and the message).
        c.limits.buffered_bytes_max = 128 * 1024;
    })
    .await;
    let addr = running.endpoints.imap;
    let message = {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        m.resize(60_000, b'x');
        m
    };
    let mut a = Client::login(addr, "user1").await;
    let mut b = Client::login(addr, "user1").await;
    // A's literal is announced and granted; while it is on its way, B's finds no room.
    a.send(format!("a1 APPEND INBOX {{{}}}\r\n", message.len()).as_bytes())
        .await;
    assert!(a.line().await.starts_with(b"+ "));
    b.send(format!("b1 APPEND INBOX {{{}}}\r\n", message.len()).as_bytes())
        .await;
    let refused = b.line().await;
    assert!(refused.starts_with(b"b1 NO [INUSE]"), "{}", show(&refused));
    a.send(&message).await;
    a.send(b"\r\n").await;
    let (_, tagged) = a.until("a1").await;
    assert!(tagged.starts_with("a1 OK"), "{tagged}");
    // Given back once A's command ran: B's try again goes through, and the session lived on.
    b.send(format!("b2 APPEND INBOX {{{}}}\r\n", message.len()).as_bytes())
        .await;
    assert!(b.line().await.starts_with(b"+ "));
    b.send(&message).await;
    b.send(b"\r\n").await;
    let (_, tagged) = b.until("b2").await;
    assert!(tagged.starts_with("b2 OK"), "{tagged}");
    let out = b.ok("b3", "SELECT INBOX").await;
    assert!(out.contains("* 2 EXISTS"), "{out}");
    assert_eq!(running.context.buffers.used(), 0);
    running.shutdown().await;
}

#[tokio::test]
async fn folder_edge_cases_get_the_replies_rfc_3501_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let running = node(&dir, |_| {}).await;
    for n in 1..=2 {
        deliver(&running, "user1", message(n)).await;
    }
    let addr = running.endpoints.imap;
    let mut c = Client::login(addr, "user1").await;
    let no = |tagged: &str, code: &str| {
        assert!(
            tagged
                .split_once(' ')
                .is_some_and(|(_, r)| r.starts_with(&format!("NO {code}"))),
            "{tagged}"
        )
    };
    // CREATE makes the superior levels; a trailing delimiter is dropped.
    c.ok("c1", "CREATE a/b/c/").await;
    let list = c.ok("c2", "LIST \"\" \"%\"").await;
    assert_eq!(
        list,
        "* LIST (\\HasNoChildren) \"/\" INBOX\r\n* LIST (\\HasChildren) \"/\" \"a\"\r\n"
    );
    let list = c.ok("c3", "LIST \"a/\" \"%\"").await;
    assert_eq!(list, "* LIST (\\HasChildren) \"/\" \"a/b\"\r\n");
    assert_eq!(
        c.ok("c4", "LIST \"\" \"A*\"").await,
        "",
        "names other than INBOX match exactly"
    );
    assert!(c.ok("c5", "LIST \"\" \"inBOX\"").await.contains("INBOX"));
    for (tag, bad) in [
        ("c6", "CREATE \"a//x\""),
        ("c7", "CREATE \"x*\""),
        ("c8", "CREATE \"\""),
    ] {
        let (_, tagged) = c.cmd(tag, bad).await;
        no(&tagged, "[CANNOT]");
    }
    let (_, tagged) = c.cmd("c9", "CREATE inbox").await;
    no(&tagged, "[ALREADYEXISTS]");
    // Deleting a level with children leaves it \Noselect; it cannot be selected then.
    c.ok("d1", "DELETE a/b").await;
    let list = c.ok("d2", "LIST \"\" \"a/*\"").await;
    assert_eq!(
        list,
        "* LIST (\\Noselect \\HasChildren) \"/\" \"a/b\"\r\n* LIST (\\HasNoChildren) \"/\" \"a/b/c\"\r\n"
    );
    let (_, tagged) = c.cmd("d3", "SELECT a/b").await;
    no(&tagged, "[NONEXISTENT]");
    let (_, tagged) = c.cmd("d4", "DELETE a/b").await;
    no(&tagged, "[NONEXISTENT]");
    let (_, tagged) = c.cmd("d5", "STATUS nowhere (MESSAGES)").await;
    no(&tagged, "[NONEXISTENT]");
    // RENAME: not below itself, not onto a name that exists; children follow.
    let (_, tagged) = c.cmd("r1", "RENAME a a/z").await;
    no(&tagged, "[CANNOT]");
    c.ok("r2", "CREATE z").await;
    let (_, tagged) = c.cmd("r3", "RENAME a z").await;
    no(&tagged, "[ALREADYEXISTS]");
    c.ok("r4", "RENAME a y/a").await;
    let list = c.ok("r5", "LIST \"\" \"*c\"").await;
    assert_eq!(list, "* LIST (\\HasNoChildren) \"/\" \"y/a/b/c\"\r\n");
    // A folder's UIDs, UIDVALIDITY and UIDNEXT are its own; MOVE answers with COPYUID first.
    let status = c.ok("u1", "STATUS z (UIDVALIDITY UIDNEXT MESSAGES)").await;
    let validity: u32 = status
        .split("UIDVALIDITY ")
        .nth(1)
        .and_then(|s| s.split([' ', ')']).next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(validity > 0 && validity != running.context.mail.uid_validity());
    c.ok("u2", "SELECT INBOX").await;
    let (lines, tagged) = c.cmd("u3", "MOVE 1 z").await;
    assert!(tagged.starts_with("u3 OK"), "{tagged}");
    let lines: Vec<String> = lines.iter().map(|l| show(l)).collect();
    assert!(
        lines[0].starts_with(&format!("* OK [COPYUID {validity} "))
            && lines[1] == "* 1 EXPUNGE\r\n",
        "{lines:?}"
    );
    let out = c.ok("u4", "EXAMINE z").await;
    assert!(
        out.contains(&format!("[UIDVALIDITY {validity}]")) && out.contains("* 1 EXISTS"),
        "{out}"
    );
    // Names in modified UTF-7: invalid ones refused, valid ones listed as given.
    let (_, tagged) = c.cmd("m1", "CREATE \"caf&AOk\"").await;
    no(&tagged, "[CANNOT]");
    c.ok("m2", "CREATE \"caf&AOk-\"").await;
    assert_eq!(
        c.ok("m3", "LIST \"\" \"caf*\"").await,
        "* LIST (\\HasNoChildren) \"/\" \"caf&AOk-\"\r\n"
    );
    // Subscriptions: to names that exist; UNSUBSCRIBE of one never made is fine.
    let (_, tagged) = c.cmd("s1", "SUBSCRIBE nowhere").await;
    no(&tagged, "[NONEXISTENT]");
    c.ok("s2", "SUBSCRIBE z").await;
    c.ok("s3", "SUBSCRIBE z").await;
    assert_eq!(
        c.ok("s4", "LSUB \"\" \"*\"").await,
        "* LSUB () \"/\" \"z\"\r\n"
    );
    c.ok("s5", "UNSUBSCRIBE z").await;
    c.ok("s6", "UNSUBSCRIBE z").await;
    assert_eq!(c.ok("s7", "LSUB \"\" \"*\"").await, "");
    running.shutdown().await;
}
