//! The IMAP4rev1 front end (RFC 3501): INBOX and folders ([`folders`]), with MOVE and UIDPLUS.
//!
//! A session reads one command at a time — the tagged line plus any literals, each checked
//! against its limit before a byte of it is read — parses it ([`parse`]), runs it against the
//! store, and answers. A selected session keeps its own view of the mailbox (sequence number →
//! UID, and the flags it last told the client) and reconciles it with the store after each
//! command ([`Session::sync`]), so concurrent sessions of one user see each other's changes as
//! `EXPUNGE`, `EXISTS` and `FETCH (FLAGS ..)` responses.
//!
//! It must never: send `EXPUNGE` while answering FETCH, STORE or SEARCH (RFC 3501 7.4.1); read a
//! literal over its limit, or buffer more than one message body at a time; trust a sequence
//! number or UID from the client to exist; panic on anything a client sends.

mod address;
mod fetch;
mod folders;
mod mime;
mod mutf7;
mod parse;
mod search;
mod seqset;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::core::conn::{Conn, Input};
use crate::mail::metrics::{Metrics, ProtocolLabel};
use crate::mail::node::Context;
use crate::mail::store::{FlagMode, Flags, MailboxSnapshot, MessageMeta, StoreError};

use fetch::FetchAtt;
pub use folders::EntryCache;
use folders::{FolderError, Open};
use parse::{Command, Parser, StatusItem};
use search::SearchKey;
use seqset::SeqSet;

/// What every state advertises. LITERAL+ is deliberately absent: non-synchronizing literals are
/// accepted but a client cannot know their limit in advance.
const CAPABILITIES: &str = "IMAP4rev1 UIDPLUS MOVE UNSELECT NAMESPACE CHILDREN ID";
/// Advertised before login only.
const AUTH_CAPABILITIES: &str = "AUTH=PLAIN SASL-IR";
const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// Serves one IMAP connection until the client logs out or disconnects, the session times out,
/// makes too many errors, or the node shuts down.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) -> io::Result<()> {
    let conn =
        crate::mail::node::client_conn_with(stream, &ctx, ctx.config.limits.imap_line_bytes_max);
    let mut session = Session {
        ctx: ctx.clone(),
        conn,
        peer,
        user: None,
        selected: None,
        errors: 0,
        label: Metrics::protocol("imap"),
    };
    let result = session.run().await;
    // Whatever ended the session, queued answers (a BYE) go out if the socket still allows.
    let _ = session.conn.flush().await;
    result
}

/// How a command was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    No,
    Bad,
}

/// The tagged completion of a command.
struct Reply {
    status: Status,
    /// Response text, with its `[CODE]` if any.
    text: Cow<'static, str>,
    /// Close the connection after this reply.
    close: bool,
    /// The command was a client error that counts towards `errors_per_session_max`.
    counts_as_error: bool,
}

impl Reply {
    fn new(status: Status, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            status,
            text: text.into(),
            close: false,
            counts_as_error: status == Status::Bad,
        }
    }
    fn ok(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(Status::Ok, text)
    }
    fn no(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(Status::No, text)
    }
    fn bad(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(Status::Bad, text)
    }
    fn store_failed(e: StoreError) -> Reply {
        tracing::warn!("IMAP command failed in the store: {e}");
        if e.to_string().contains(crate::mail::store::DISK_FULL) {
            return Reply::no("[UNAVAILABLE] The server's disk is full; try again later");
        }
        Reply::no("[UNAVAILABLE] The mail store failed; try again later")
    }
}

/// What reading the next command produced.
enum Read {
    /// A command, and the node buffer space its literals hold (given back once it has run).
    Command(Vec<u8>, crate::core::budget::Reservation),
    /// A synchronizing literal the node has no room to buffer now: refused, nothing read.
    NoRoom(String),
    /// A line passed the limit; the tag, if the command had already been started.
    TooLong(Option<String>),
    /// A synchronizing literal over its limit: refused (no continuation sent, nothing read).
    LiteralRefused(String),
    /// A non-synchronizing literal over its limit: its bytes are on the way and cannot be
    /// skipped safely, so the connection is closed.
    Fatal(&'static str),
    End(Input),
}

/// A message as the client last heard of it.
#[derive(Debug, Clone)]
struct Known {
    uid: u32,
    flags: Flags,
    /// `\Recent` in this session: it was the first to learn of the message.
    recent: bool,
}

/// Users whose claims [`RecentClaims`] keeps at most; past it the claims start over (messages
/// may show as recent once more, which RFC 3501 allows).
pub const RECENT_USERS_MAX: usize = 1_000_000;

/// RFC 3501's `\Recent`: a message is recent in the first session told of it. Per user, the
/// highest UID some read-write session of this node has been told of. Kept in memory, per node
/// (after a restart, or on another node, messages may be recent once more).
#[derive(Debug, Default)]
pub struct RecentClaims(std::sync::Mutex<HashMap<String, u32>>);

impl RecentClaims {
    /// The highest UID claimed for `user`.
    pub fn claimed(&self, user: &str) -> u32 {
        self.0.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// Claims every UID up to `uid` for a session of `user`; returns the claim before, so the
    /// session's recent messages are those above it.
    pub fn claim(&self, user: &str, uid: u32) -> u32 {
        let mut claims = self.0.lock().unwrap();
        if claims.len() >= RECENT_USERS_MAX && !claims.contains_key(user) {
            claims.clear();
        }
        let entry = claims.entry(user.to_string()).or_insert(0);
        let before = *entry;
        *entry = before.max(uid);
        before
    }
}

/// The selected-state view of a mailbox: index + 1 is the message sequence number.
struct Selected {
    mailbox: Open,
    read_only: bool,
    /// The keywords the last FLAGS response named (lower case → as shown).
    keywords: BTreeMap<String, String>,
    messages: Vec<Known>,
}

impl Selected {
    /// Adds the keywords of `flags` to those the client was told of; returns the FLAGS response
    /// to send first when one is new to the mailbox (RFC 3501 7.2.6), else nothing.
    fn learn_keywords<'f>(&mut self, flags: impl Iterator<Item = &'f Flags>) -> String {
        let mut grown = false;
        for k in flags.flat_map(Flags::keywords) {
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.keywords.entry(k.to_ascii_lowercase())
            {
                e.insert(k.clone());
                grown = true;
            }
        }
        if grown {
            flags_response(&self.keywords)
        } else {
            String::new()
        }
    }
}

struct Session {
    ctx: Arc<Context>,
    conn: Conn<OwnedReadHalf, OwnedWriteHalf>,
    peer: SocketAddr,
    /// The canonical user name once authenticated.
    user: Option<String>,
    selected: Option<Selected>,
    errors: u32,
    label: ProtocolLabel,
}

/// Which session state a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Any,
    NotAuthenticated,
    Authenticated,
    Selected,
}

fn needs(cmd: &Command<'_>) -> Needs {
    match cmd {
        Command::Capability | Command::Id(_) | Command::Noop | Command::Logout => Needs::Any,
        Command::Login { .. } | Command::Authenticate { .. } => Needs::NotAuthenticated,
        Command::Check
        | Command::Close
        | Command::Unselect
        | Command::Expunge { .. }
        | Command::Search { .. }
        | Command::Fetch { .. }
        | Command::Store { .. }
        | Command::Copy { .. }
        | Command::Move { .. } => Needs::Selected,
        _ => Needs::Authenticated,
    }
}

/// Whether the mailbox view is reconciled (with EXPUNGEs) after this command. FETCH, STORE and
/// SEARCH must not carry EXPUNGE responses; SELECT, CLOSE and UNSELECT replace the view anyway.
fn syncs_after(cmd: &Command<'_>) -> bool {
    !matches!(
        cmd,
        Command::Fetch { .. }
            | Command::Store { .. }
            | Command::Search { .. }
            | Command::Select { .. }
            | Command::Close
            | Command::Unselect
            | Command::Logout
    )
}

/// The snapshot entry for `uid` (snapshots are in UID order).
fn find(snapshot: &MailboxSnapshot, uid: u32) -> Option<&MessageMeta> {
    snapshot
        .messages
        .binary_search_by_key(&uid, |m| m.uid)
        .ok()
        .map(|i| &snapshot.messages[i])
}

impl Session {
    async fn run(&mut self) -> io::Result<()> {
        self.write(&format!(
            "* OK [CAPABILITY {}] clusterbench IMAP ready\r\n",
            self.capabilities()
        ))
        .await?;
        loop {
            let (command, _held) = match self.read_command().await? {
                Read::Command(c, held) => (c, held),
                Read::NoRoom(tag) => {
                    self.count_command();
                    tracing::warn!(
                        peer = %self.peer,
                        buffered = self.ctx.buffers.used(),
                        max = self.ctx.buffers.max(),
                        "a literal refused: the node's buffers are full"
                    );
                    self.write(&format!(
                        "{tag} NO [INUSE] The server is short of buffer space; try again later\r\n"
                    ))
                    .await?;
                    continue;
                }
                Read::End(Input::Timeout) => {
                    return self.write("* BYE Autologout; idle for too long\r\n").await;
                }
                Read::End(Input::Shutdown) => {
                    return self.write("* BYE Server shutting down\r\n").await;
                }
                Read::End(_) => return Ok(()),
                Read::TooLong(tag) => {
                    self.count_command();
                    let tag = tag.as_deref().unwrap_or("*");
                    self.write(&format!("{tag} BAD Line too long\r\n")).await?;
                    self.count_error(true);
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
                Read::LiteralRefused(tag) => {
                    self.count_command();
                    self.write(&format!("{tag} NO [TOOBIG] Literal too large\r\n"))
                        .await?;
                    self.count_error(true);
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
                Read::Fatal(why) => {
                    self.count_command();
                    self.count_error(true);
                    return self.write(&format!("* BYE {why}\r\n")).await;
                }
            };
            self.count_command();
            if self.handle(&command).await? || self.too_many_errors().await? {
                return Ok(());
            }
        }
    }

    /// Reads one command: a line and, while it ends in a literal announcement, the literal and
    /// the line after it. Every literal is checked against its limit before it is read, and the
    /// whole command against a total, so one command never holds more than its limits allow.
    async fn read_command(&mut self) -> io::Result<Read> {
        let limits = &self.ctx.config.limits;
        let (line_max, literal_max, message_max) = (
            limits.imap_line_bytes_max,
            limits.literal_bytes_max,
            limits.message_bytes_max,
        );
        let mut buf = match self.conn.next_line().await? {
            Input::Line(line) => line,
            // Answer with the command's tag when the line's head shows one (a tag followed by a
            // space), so the client is not left waiting for a tagged reply.
            Input::TooLong(head) => {
                let tag = head
                    .iter()
                    .position(|&b| b == b' ')
                    .map(|sp| tag_of(&head[..sp + 1]))
                    .filter(|t| t != "*");
                return Ok(Read::TooLong(tag));
            }
            other => return Ok(Read::End(other)),
        };
        // APPEND's literal is a message, limited as messages are; every other literal by the
        // literal limit.
        let append = command_name(&buf).is_some_and(|n| n.eq_ignore_ascii_case(b"APPEND"));
        let limit = if append { message_max } else { literal_max };
        let total_max = limit.saturating_add(line_max) as u64;
        // An APPEND's literal is held twice at most (the command, and the message's copy).
        let copies = if append { 2 } else { 1 };
        let mut held = self.ctx.buffers.none();
        let mut segment = 0;
        loop {
            let Some((n, sync)) = literal_announced(&buf[segment..]) else {
                return Ok(Read::Command(buf, held));
            };
            let tag = tag_of(&buf);
            if n > limit as u64 || buf.len() as u64 + 2 + n > total_max {
                return Ok(if sync {
                    Read::LiteralRefused(tag)
                } else {
                    Read::Fatal("Literal too large")
                });
            }
            // Node-wide: room for the literal now, or a temporary refusal before it is sent
            // (a non-synchronizing one is already on its way: the session ends).
            if !held.grow(copies * n as usize) {
                return Ok(if sync {
                    Read::NoRoom(tag)
                } else {
                    Read::Fatal("The server is short of buffer space")
                });
            }
            if sync {
                self.write("+ Ready for literal\r\n").await?;
            }
            // `n` is within `limit`, a usize, so this cannot truncate.
            let Some(data) = self.conn.read_literal(n as usize).await? else {
                return Ok(Read::End(Input::Eof));
            };
            buf.reserve(2 + data.len());
            buf.extend_from_slice(b"\r\n");
            buf.extend_from_slice(&data);
            drop(data);
            segment = buf.len();
            match self.conn.next_line().await? {
                Input::Line(line) => {
                    if buf.len() as u64 + line.len() as u64 > total_max {
                        return Ok(Read::TooLong(Some(tag)));
                    }
                    buf.extend_from_slice(&line);
                }
                Input::TooLong(_) => return Ok(Read::TooLong(Some(tag))),
                other => return Ok(Read::End(other)),
            }
        }
    }

    /// Parses and runs one command; returns whether the connection is to be closed.
    async fn handle(&mut self, line: &[u8]) -> io::Result<bool> {
        let mut p = Parser::new(line);
        let tag = match p.tag() {
            Ok(tag) => tag.to_string(),
            Err(_) => {
                let what = if line.is_empty() {
                    "Empty command line"
                } else {
                    "Missing or invalid tag"
                };
                self.write(&format!("* BAD {what}\r\n")).await?;
                self.count_error(true);
                return Ok(false);
            }
        };
        let reply = match p.sp().and_then(|()| parse::command(&mut p)) {
            Err(e) => Reply::bad(e.to_string()),
            Ok(cmd) => {
                let reply = self.execute(&tag, &cmd).await?;
                if self.selected.is_some() && syncs_after(&cmd) {
                    self.sync(true).await?;
                }
                reply
            }
        };
        let code = match reply.status {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
        };
        self.write(&format!("{tag} {code} {}\r\n", reply.text))
            .await?;
        if reply.status != Status::Ok {
            self.count_error(reply.counts_as_error);
        }
        Ok(reply.close)
    }

    async fn execute(&mut self, tag: &str, cmd: &Command<'_>) -> io::Result<Reply> {
        match (needs(cmd), &self.user, &self.selected) {
            (Needs::NotAuthenticated, Some(_), _) => {
                return Ok(Reply::bad("Already authenticated"))
            }
            (Needs::Authenticated | Needs::Selected, None, _) => {
                return Ok(Reply::bad("Log in first"))
            }
            (Needs::Selected, Some(_), None) => return Ok(Reply::bad("No mailbox selected")),
            _ => {}
        }
        Ok(match cmd {
            Command::Capability => {
                self.write(&format!("* CAPABILITY {}\r\n", self.capabilities()))
                    .await?;
                Reply::ok("CAPABILITY completed")
            }
            Command::Id(fields) => {
                let name = |f: &[u8]| {
                    fields
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(f))
                        .and_then(|(_, v)| v.as_deref())
                        .map(|v| {
                            String::from_utf8_lossy(v)
                                .chars()
                                .take(64)
                                .collect::<String>()
                        })
                };
                tracing::debug!(
                    peer = %self.peer,
                    client = ?name(b"name"),
                    version = ?name(b"version"),
                    "IMAP ID"
                );
                self.write(&format!(
                    "* ID (\"name\" \"clusterbench\" \"version\" \"{}\" \"vendor\" \"clusterbench\")\r\n",
                    env!("CARGO_PKG_VERSION")
                ))
                .await?;
                Reply::ok("ID completed")
            }
            Command::Noop => Reply::ok("NOOP completed"),
            Command::Check => Reply::ok("CHECK completed"),
            Command::Logout => {
                self.write("* BYE Logging out\r\n").await?;
                Reply {
                    close: true,
                    ..Reply::ok("LOGOUT completed")
                }
            }
            Command::Login { user, password } => self.login(user, password),
            Command::Authenticate { mechanism, initial } => {
                self.authenticate(tag, mechanism, *initial).await?
            }
            Command::Namespace => {
                self.write("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n").await?;
                Reply::ok("NAMESPACE completed")
            }
            Command::Select { mailbox, read_only } => self.select(mailbox, *read_only).await?,
            Command::Create(name) => match decode_name(name) {
                Ok(name) => done(self.folders().create(&name).await.map(drop), "CREATE"),
                Err(reply) => reply,
            },
            Command::Delete(name) => match decode_name(name) {
                Ok(name) => done(self.folders().delete(&name).await, "DELETE"),
                Err(reply) => reply,
            },
            Command::Rename { from, to } => match (decode_name(from), decode_name(to)) {
                (Ok(from), Ok(to)) if folders::is_inbox(&from) => self.rename_inbox(&to).await,
                (Ok(from), Ok(to)) => done(self.folders().rename(&from, &to).await, "RENAME"),
                (Err(reply), _) | (_, Err(reply)) => reply,
            },
            Command::Subscribe(name) => match decode_name(name) {
                Ok(name) => done(self.folders().subscribe(&name).await, "SUBSCRIBE"),
                Err(reply) => reply,
            },
            Command::Unsubscribe(name) => match decode_name(name) {
                Ok(name) => done(self.folders().unsubscribe(&name).await, "UNSUBSCRIBE"),
                Err(reply) => reply,
            },
            Command::List {
                reference,
                pattern,
                lsub,
            } => self.list(reference, pattern, *lsub).await?,
            Command::Status { mailbox, items } => self.status(mailbox, items).await?,
            Command::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(mailbox, flags.clone(), *date, message).await,
            Command::Close | Command::Unselect => {
                let expunge = matches!(cmd, Command::Close);
                if let Some(selected) = self.selected.take() {
                    if expunge && !selected.read_only {
                        // CLOSE expunges silently (no EXPUNGE responses).
                        let uids: Vec<u32> = selected.messages.iter().map(|m| m.uid).collect();
                        if let Err(e) = self.expunge_deleted(&selected.mailbox.key, uids).await {
                            return Ok(Reply::store_failed(e));
                        }
                    }
                }
                Reply::ok(if expunge {
                    "CLOSE completed"
                } else {
                    "UNSELECT completed"
                })
            }
            Command::Expunge { uids } => self.expunge(uids.as_ref()).await,
            Command::Search { uid, charset, key } => {
                self.search(*uid, charset.as_deref(), key).await?
            }
            Command::Fetch { uid, set, atts } => self.fetch(*uid, set, atts).await?,
            Command::Store {
                uid,
                set,
                mode,
                silent,
                flags,
            } => self.store(*uid, set, *mode, *silent, flags.clone()).await?,
            Command::Copy { uid, set, mailbox } => self.copy(*uid, set, mailbox, false).await?,
            Command::Move { uid, set, mailbox } => self.copy(*uid, set, mailbox, true).await?,
        })
    }

    fn capabilities(&self) -> String {
        if self.user.is_none() {
            format!("{CAPABILITIES} {AUTH_CAPABILITIES}")
        } else {
            CAPABILITIES.to_string()
        }
    }

    fn login(&mut self, user: &[u8], password: &[u8]) -> Reply {
        let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
        else {
            return self.login_failed();
        };
        match self.ctx.directory.authenticate(user, password) {
            Some(canonical) => {
                tracing::debug!(peer = %self.peer, user = canonical, "IMAP login");
                self.user = Some(canonical);
                Reply::ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            None => self.login_failed(),
        }
    }

    fn login_failed(&self) -> Reply {
        tracing::debug!(peer = %self.peer, "IMAP login failed");
        Reply {
            // Failed logins count, so guessing passwords ends the session.
            counts_as_error: true,
            ..Reply::no("[AUTHENTICATIONFAILED] Invalid credentials")
        }
    }

    /// AUTHENTICATE PLAIN (RFC 4616), with or without a SASL-IR initial response.
    async fn authenticate(
        &mut self,
        tag: &str,
        mechanism: &[u8],
        initial: Option<&[u8]>,
    ) -> io::Result<Reply> {
        if !mechanism.eq_ignore_ascii_case(b"PLAIN") {
            return Ok(Reply::no("[CANNOT] Unsupported authentication mechanism"));
        }
        let response = match initial {
            Some(b"=") => Vec::new(),
            Some(ir) => ir.to_vec(),
            None => {
                self.write("+ \r\n").await?;
                match self.conn.next_line().await? {
                    Input::Line(line) => line,
                    Input::TooLong(_) => return Ok(Reply::bad("Authentication response too long")),
                    Input::Eof | Input::Timeout | Input::Shutdown => {
                        tracing::debug!(peer = %self.peer, tag, "connection ended during AUTHENTICATE");
                        return Ok(Reply {
                            close: true,
                            ..Reply::bad("Authentication aborted")
                        });
                    }
                }
            }
        };
        if response == b"*" {
            return Ok(Reply::bad("Authentication cancelled"));
        }
        let Some(decoded) = parse::base64_decode(&response) else {
            return Ok(Reply::bad("Invalid base64 in authentication response"));
        };
        // authzid NUL authcid NUL password; an authzid other than the user is not supported.
        let mut parts = decoded.splitn(3, |&b| b == 0);
        let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(Reply::bad("Malformed PLAIN response"));
        };
        if !authz.is_empty() && authz != user {
            return Ok(self.login_failed());
        }
        Ok(self.login(user, password))
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    /// The mailbox key of the selected mailbox (the user's INBOX when none is).
    fn key(&self) -> &str {
        self.selected
            .as_ref()
            .map_or_else(|| self.user(), |s| s.mailbox.key.as_str())
    }

    fn folders(&self) -> folders::Folders<'_> {
        folders::Folders {
            mail: &self.ctx.mail,
            cache: &self.ctx.folder_entries,
            user: self.user(),
        }
    }

    /// The mailbox a client names, if it exists.
    async fn open(&self, wire: &[u8]) -> Result<Open, Reply> {
        let name = decode_name(wire)?;
        self.folders()
            .open(&name)
            .await
            .map_err(|e| done(Err(e), ""))
    }

    /// Like [`Session::open`], for APPEND, COPY and MOVE: a missing mailbox gets `[TRYCREATE]`.
    async fn open_target(&self, wire: &[u8]) -> Result<Open, Reply> {
        let name = decode_name(wire)?;
        match self.folders().open(&name).await {
            Ok(open) => Ok(open),
            Err(FolderError::Nonexistent) => Err(Reply::no("[TRYCREATE] No such mailbox")),
            Err(e) => Err(done(Err(e), "")),
        }
    }

    /// The view of a snapshot a session shows: its oldest `mailbox_messages_max` messages.
    fn visible<'s>(&self, snapshot: &'s MailboxSnapshot) -> &'s [MessageMeta] {
        let n = snapshot
            .messages
            .len()
            .min(self.ctx.config.limits.mailbox_messages_max);
        &snapshot.messages[..n]
    }

    async fn select(&mut self, mailbox: &[u8], read_only: bool) -> io::Result<Reply> {
        // A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
        self.selected = None;
        let mailbox = match self.open(mailbox).await {
            Ok(open) => open,
            Err(reply) => return Ok(reply),
        };
        let snapshot = self.ctx.mail.snapshot(&mailbox.key).await;
        let visible = self.visible(&snapshot);
        let newest = visible.last().map_or(0, |m| m.uid);
        // EXAMINE shows what is recent without claiming it (RFC 3501 6.3.2).
        let claims = &self.ctx.recent;
        let before = if read_only {
            claims.claimed(&mailbox.key)
        } else {
            claims.claim(&mailbox.key, newest)
        };
        let messages: Vec<Known> = visible
            .iter()
            .map(|m| Known {
                uid: m.uid,
                flags: m.flags.clone(),
                recent: m.uid > before,
            })
            .collect();
        let keywords = keywords_in(visible);
        let mut out = format!(
            "{}* {} EXISTS\r\n* {} RECENT\r\n",
            flags_response(&keywords),
            messages.len(),
            messages.iter().filter(|m| m.recent).count()
        );
        if let Some(i) = messages
            .iter()
            .position(|m| !m.flags.contains(&Flags::SEEN))
        {
            out += &format!("* OK [UNSEEN {}] First unseen message\r\n", i + 1);
        }
        out += &format!(
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n",
            mailbox.uid_validity, snapshot.uid_next
        );
        out += if read_only {
            "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        } else {
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
        };
        self.write(&out).await?;
        self.selected = Some(Selected {
            mailbox,
            keywords,
            read_only,
            messages,
        });
        Ok(Reply::ok(if read_only {
            "[READ-ONLY] EXAMINE completed"
        } else {
            "[READ-WRITE] SELECT completed"
        }))
    }

    async fn list(&mut self, reference: &[u8], pattern: &[u8], lsub: bool) -> io::Result<Reply> {
        let verb = if lsub { "LSUB" } else { "LIST" };
        if pattern.is_empty() && !lsub {
            // The hierarchy delimiter query (RFC 3501 6.3.8).
            self.write("* LIST (\\Noselect) \"/\" \"\"\r\n").await?;
            return Ok(Reply::ok("LIST completed"));
        }
        // A pattern that is not modified UTF-7 matches no name.
        let (Some(reference), Some(pattern)) = (mutf7::decode(reference), mutf7::decode(pattern))
        else {
            return Ok(Reply::ok(format!("{verb} completed")));
        };
        let full = format!("{reference}{pattern}");
        let list = match self.folders().list().await {
            Ok(list) => list,
            Err(e) => return Ok(Reply::store_failed(e)),
        };
        let mut out = String::new();
        if lsub {
            for name in list.subscriptions.keys() {
                if name_matches(&full, name) {
                    out += &format!("* LSUB () \"/\" {}\r\n", quoted_name(name));
                }
            }
        } else {
            let names = list.names();
            let inbox_children = names
                .keys()
                .any(|n| n.len() > 6 && n.as_bytes()[..6].eq_ignore_ascii_case(b"INBOX/"));
            if name_matches(&full, "INBOX") {
                let children = if inbox_children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                };
                out += &format!("* LIST ({children}) \"/\" INBOX\r\n");
            }
            for (name, attributes) in &names {
                if folders::is_inbox(name) || !name_matches(&full, name) {
                    continue;
                }
                let mut flags = Vec::new();
                if attributes.noselect {
                    flags.push("\\Noselect");
                }
                flags.push(if attributes.children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
                out += &format!(
                    "* LIST ({}) \"/\" {}\r\n",
                    flags.join(" "),
                    quoted_name(name)
                );
            }
        }
        self.write(&out).await?;
        Ok(Reply::ok(format!("{verb} completed")))
    }

    async fn status(&mut self, mailbox: &[u8], items: &[StatusItem]) -> io::Result<Reply> {
        let mailbox = match self.open(mailbox).await {
            Ok(open) => open,
            Err(reply) => return Ok(reply),
        };
        let snapshot = self.ctx.mail.snapshot(&mailbox.key).await;
        let visible = self.visible(&snapshot);
        let values: Vec<String> = items
            .iter()
            .map(|item| match item {
                StatusItem::Messages => format!("MESSAGES {}", visible.len()),
                StatusItem::Recent => {
                    let claimed = self.ctx.recent.claimed(&mailbox.key);
                    format!(
                        "RECENT {}",
                        visible.iter().filter(|m| m.uid > claimed).count()
                    )
                }
                StatusItem::UidNext => format!("UIDNEXT {}", snapshot.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mailbox.uid_validity),
                StatusItem::Unseen => format!(
                    "UNSEEN {}",
                    visible
                        .iter()
                        .filter(|m| !m.flags.contains(&Flags::SEEN))
                        .count()
                ),
            })
            .collect();
        self.write(&format!(
            "* STATUS {} ({})\r\n",
            quoted_name(&mailbox.name),
            values.join(" ")
        ))
        .await?;
        Ok(Reply::ok("STATUS completed"))
    }

    async fn append(
        &mut self,
        mailbox: &[u8],
        flags: Flags,
        date: Option<i64>,
        message: &[u8],
    ) -> Reply {
        let mailbox = match self.open_target(mailbox).await {
            Ok(open) => open,
            Err(reply) => return reply,
        };
        let message = crlf(message);
        if message.len() > self.ctx.config.limits.message_bytes_max {
            return Reply::no("[TOOBIG] Message too large");
        }
        match self
            .ctx
            .mail
            .deliver(vec![mailbox.key.clone()], Arc::from(&*message), flags, date)
            .await
        {
            Ok(uids) => match uids.first() {
                Some(uid) => Reply::ok(format!(
                    "[APPENDUID {} {uid}] APPEND completed",
                    mailbox.uid_validity
                )),
                None => Reply::ok("APPEND completed"),
            },
            Err(e) => Reply::store_failed(e),
        }
    }

    async fn expunge(&mut self, uids: Option<&SeqSet>) -> Reply {
        let Some(selected) = &self.selected else {
            return Reply::bad("No mailbox selected");
        };
        if selected.read_only {
            return Reply::no("[READ-ONLY] Mailbox is read-only");
        }
        let star = selected.messages.last().map_or(0, |m| m.uid);
        let ranges = uids.map(|set| set.resolve(star));
        let candidates: Vec<u32> = selected
            .messages
            .iter()
            .map(|m| m.uid)
            .filter(|uid| ranges.as_ref().is_none_or(|r| r.contains(*uid)))
            .collect();
        // The EXPUNGE responses come from the sync that follows every command.
        let key = self.key().to_string();
        match self.expunge_deleted(&key, candidates).await {
            Ok(()) => Reply::ok("EXPUNGE completed"),
            Err(e) => Reply::store_failed(e),
        }
    }

    /// Removes those of `uids` that have `\Deleted` now.
    async fn expunge_deleted(&self, key: &str, uids: Vec<u32>) -> Result<(), StoreError> {
        let snapshot = self.ctx.mail.snapshot(key).await;
        let deleted: Vec<u32> = uids
            .into_iter()
            .filter(|&uid| find(&snapshot, uid).is_some_and(|m| m.flags.contains(&Flags::DELETED)))
            .collect();
        if !deleted.is_empty() {
            self.ctx.mail.expunge(key, deleted).await?;
        }
        Ok(())
    }

    /// A message's bytes when `needed` (`Some(None)` when not); `None` when it has been expunged
    /// meanwhile.
    async fn body_if(
        &self,
        needed: bool,
        meta: &MessageMeta,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        if !needed {
            return Ok(Some(None));
        }
        match self.ctx.mail.read(self.key(), meta).await {
            Ok(bytes) => Ok(Some(Some(bytes))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reconciles the view with the store and tells the client what changed: `EXPUNGE` for
    /// messages gone (only when `expunges`; highest sequence number first, so no response
    /// renumbers one still to come), `FETCH (FLAGS ..)` for changed flags, `EXISTS` for new mail.
    async fn sync(&mut self, expunges: bool) -> io::Result<()> {
        let snapshot = self.ctx.mail.snapshot(self.key()).await;
        let cap = self.ctx.config.limits.mailbox_messages_max;
        let key = self.key().to_string();
        let ctx = self.ctx.clone();
        let Some(selected) = self.selected.as_mut() else {
            return Ok(());
        };
        let mut out = String::new();
        out += &selected.learn_keywords(snapshot.messages.iter().map(|m| &m.flags));
        if expunges {
            let mut gone = vec![false; selected.messages.len()];
            for (i, m) in selected.messages.iter().enumerate().rev() {
                if find(&snapshot, m.uid).is_none() {
                    out += &format!("* {} EXPUNGE\r\n", i + 1);
                    gone[i] = true;
                }
            }
            let mut i = 0;
            selected.messages.retain(|_| {
                i += 1;
                !gone[i - 1]
            });
        }
        for (i, m) in selected.messages.iter_mut().enumerate() {
            if let Some(now) = find(&snapshot, m.uid) {
                if now.flags != m.flags {
                    m.flags = now.flags.clone();
                    out += &format!(
                        "* {} FETCH (FLAGS {})\r\n",
                        i + 1,
                        fetch::flag_list_with(&now.flags, m.recent)
                    );
                }
            }
        }
        // UIDs only grow, so new mail is whatever lies past the newest UID in the view.
        let newest = selected.messages.last().map_or(0, |m| m.uid);
        let start = snapshot.messages.partition_point(|m| m.uid <= newest);
        let before = selected.messages.len();
        let room = cap.saturating_sub(before);
        let new =
            &snapshot.messages[start..][..snapshot.messages.len().saturating_sub(start).min(room)];
        if let Some(last) = new.last() {
            let claimed = if selected.read_only {
                ctx.recent.claimed(&key)
            } else {
                ctx.recent.claim(&key, last.uid)
            };
            for m in new {
                selected.messages.push(Known {
                    uid: m.uid,
                    flags: m.flags.clone(),
                    recent: m.uid > claimed,
                });
            }
            out += &format!(
                "* {} EXISTS\r\n* {} RECENT\r\n",
                selected.messages.len(),
                selected.messages.iter().filter(|m| m.recent).count()
            );
        }
        if !out.is_empty() {
            self.write(&out).await?;
        }
        Ok(())
    }

    /// The messages a set names, as (index in the view, UID), in sequence order. `Err` when a
    /// sequence number does not exist (UID sets simply match what exists).
    fn resolve(&self, set: &SeqSet, uid: bool) -> Result<Vec<(usize, u32)>, Reply> {
        let Some(selected) = &self.selected else {
            return Err(Reply::bad("No mailbox selected"));
        };
        let messages = &selected.messages;
        if uid {
            let ranges = set.resolve(messages.last().map_or(0, |m| m.uid));
            Ok(messages
                .iter()
                .enumerate()
                .filter(|(_, m)| ranges.contains(m.uid))
                .map(|(i, m)| (i, m.uid))
                .collect())
        } else {
            let exists = u32::try_from(messages.len()).unwrap_or(u32::MAX);
            if set.names_missing(exists) {
                return Err(Reply::bad("Invalid message sequence number"));
            }
            let ranges = set.resolve(exists);
            Ok(messages
                .iter()
                .enumerate()
                .filter(|(i, _)| ranges.contains(*i as u32 + 1))
                .map(|(i, m)| (i, m.uid))
                .collect())
        }
    }

    async fn fetch(&mut self, uid: bool, set: &SeqSet, atts: &[FetchAtt]) -> io::Result<Reply> {
        self.sync(false).await?;
        let targets = match self.resolve(set, uid) {
            Ok(t) => t,
            Err(reply) => return Ok(reply),
        };
        let read_only = self.selected.as_ref().is_none_or(|s| s.read_only);
        let snapshot = self.ctx.mail.snapshot(self.key()).await;
        // Fetching a body without PEEK sets \Seen first, in one store change for the whole set.
        let mut seen_now: HashMap<u32, Flags> = HashMap::new();
        if !read_only && atts.iter().any(FetchAtt::sets_seen) {
            let unseen: Vec<u32> = targets
                .iter()
                .filter(|(_, uid)| {
                    find(&snapshot, *uid).is_some_and(|m| !m.flags.contains(&Flags::SEEN))
                })
                .map(|(_, uid)| *uid)
                .collect();
            if !unseen.is_empty() {
                match self
                    .ctx
                    .mail
                    .set_flags(self.key(), unseen, FlagMode::Add, Flags::SEEN)
                    .await
                {
                    Ok(changed) => seen_now = changed.into_iter().collect(),
                    Err(e) => return Ok(Reply::store_failed(e)),
                }
            }
        }
        let needs_body = atts.iter().any(FetchAtt::needs_body);
        let reports_flags = atts.contains(&FetchAtt::Flags);
        let mut out = Vec::new();
        for (index, u) in targets {
            // Expunged by another session since this one last looked: nothing to show.
            let Some(meta) = find(&snapshot, u) else {
                continue;
            };
            let changed = seen_now.get(&u).cloned();
            let flags = changed.clone().unwrap_or_else(|| meta.flags.clone());
            let bytes = match self.body_if(needs_body, meta).await {
                Ok(Some(body)) => body,
                // Expunged by another session meanwhile: nothing to show.
                Ok(None) => continue,
                Err(e) => return Ok(Reply::store_failed(e)),
            };
            let recent = self
                .selected
                .as_ref()
                .and_then(|s| s.messages.get(index))
                .is_some_and(|k| k.recent);
            let message = fetch::Message {
                seq: index as u32 + 1,
                uid: u,
                size: meta.size,
                internal_date: meta.internal_date,
                flags: flags.clone(),
                recent,
                bytes: bytes.as_deref(),
            };
            out.clear();
            // UID FETCH always reports UIDs (RFC 3501 6.4.8).
            fetch::render(&mut out, &message, atts, uid, changed.is_some());
            self.conn.write(&out).await?;
            if reports_flags || changed.is_some() {
                if let Some(known) = self
                    .selected
                    .as_mut()
                    .and_then(|s| s.messages.get_mut(index))
                {
                    known.flags = flags;
                }
            }
        }
        Ok(Reply::ok(if uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        }))
    }

    async fn store(
        &mut self,
        uid: bool,
        set: &SeqSet,
        mode: FlagMode,
        silent: bool,
        flags: Flags,
    ) -> io::Result<Reply> {
        self.sync(false).await?;
        if self.selected.as_ref().is_none_or(|s| s.read_only) {
            return Ok(Reply::no("[READ-ONLY] Mailbox is read-only"));
        }
        let targets = match self.resolve(set, uid) {
            Ok(t) => t,
            Err(reply) => return Ok(reply),
        };
        if targets.is_empty() {
            return Ok(Reply::ok("STORE completed"));
        }
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let changed: HashMap<u32, Flags> =
            match self.ctx.mail.set_flags(self.key(), uids, mode, flags).await {
                Ok(c) => c.into_iter().collect(),
                Err(e) => return Ok(Reply::store_failed(e)),
            };
        let mut out = String::new();
        if let Some(selected) = self.selected.as_mut() {
            out += &selected.learn_keywords(changed.values());
        }
        for (index, u) in targets {
            let Some(new) = changed.get(&u) else {
                continue;
            };
            let mut recent = false;
            if let Some(known) = self
                .selected
                .as_mut()
                .and_then(|s| s.messages.get_mut(index))
            {
                known.flags = new.clone();
                recent = known.recent;
            }
            if !silent {
                let uid_item = if uid {
                    format!("UID {u} ")
                } else {
                    String::new()
                };
                out += &format!(
                    "* {} FETCH ({uid_item}FLAGS {})\r\n",
                    index + 1,
                    fetch::flag_list_with(new, recent)
                );
            }
        }
        self.write(&out).await?;
        Ok(Reply::ok(if uid {
            "UID STORE completed"
        } else {
            "STORE completed"
        }))
    }

    async fn search(
        &mut self,
        uid: bool,
        charset: Option<&[u8]>,
        key: &SearchKey,
    ) -> io::Result<Reply> {
        if let Some(cs) = charset {
            if !(cs.eq_ignore_ascii_case(b"US-ASCII") || cs.eq_ignore_ascii_case(b"UTF-8")) {
                return Ok(Reply::no(
                    "[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                ));
            }
        }
        self.sync(false).await?;
        let snapshot = self.ctx.mail.snapshot(self.key()).await;
        let Some(selected) = &self.selected else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let known: Vec<u32> = selected.messages.iter().map(|m| m.uid).collect();
        let stars = search::Stars {
            max_seq: known.len() as u32,
            max_uid: known.last().copied().unwrap_or(0),
        };
        let needs_body = key.needs_body();
        let mut hits = String::new();
        for (index, &u) in known.iter().enumerate() {
            let Some(meta) = find(&snapshot, u) else {
                continue;
            };
            let bytes = match self.body_if(needs_body, meta).await {
                Ok(Some(body)) => body,
                // Expunged by another session meanwhile: nothing to show.
                Ok(None) => continue,
                Err(e) => return Ok(Reply::store_failed(e)),
            };
            let recent = self
                .selected
                .as_ref()
                .and_then(|s| s.messages.get(index))
                .is_some_and(|k| k.recent);
            let candidate = search::Candidate {
                seq: index as u32 + 1,
                uid: u,
                size: meta.size,
                internal_date: meta.internal_date,
                flags: meta.flags.clone(),
                recent,
                bytes: bytes.as_deref(),
            };
            if key.matches(&candidate, stars) {
                hits += &format!(" {}", if uid { u } else { index as u32 + 1 });
            }
        }
        self.write(&format!("* SEARCH{hits}\r\n")).await?;
        Ok(Reply::ok(if uid {
            "UID SEARCH completed"
        } else {
            "SEARCH completed"
        }))
    }

    /// COPY, or MOVE (RFC 6851): each message is stored again in the target, with its flags
    /// and date; MOVE then expunges the originals (the EXPUNGEs come from the sync after it).
    async fn copy(
        &mut self,
        uid: bool,
        set: &SeqSet,
        mailbox: &[u8],
        moving: bool,
    ) -> io::Result<Reply> {
        if moving && self.selected.as_ref().is_none_or(|s| s.read_only) {
            return Ok(Reply::no("[READ-ONLY] Mailbox is read-only"));
        }
        let target = match self.open_target(mailbox).await {
            Ok(open) => open,
            Err(reply) => return Ok(reply),
        };
        let targets = match self.resolve(set, uid) {
            Ok(t) => t,
            Err(reply) => return Ok(reply),
        };
        let snapshot = self.ctx.mail.snapshot(self.key()).await;
        let metas: Vec<MessageMeta> = targets
            .iter()
            .filter_map(|(_, u)| find(&snapshot, *u).cloned())
            .collect();
        let pairs = match self.transfer(self.key(), metas, &target).await {
            Ok(pairs) => pairs,
            Err(e) => return Ok(Reply::store_failed(e)),
        };
        let verb = match (uid, moving) {
            (false, false) => "COPY",
            (true, false) => "UID COPY",
            (false, true) => "MOVE",
            (true, true) => "UID MOVE",
        };
        let code = if pairs.is_empty() {
            String::new()
        } else {
            let (from, to): (Vec<String>, Vec<String>) = pairs
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .unzip();
            format!(
                "[COPYUID {} {} {}] ",
                target.uid_validity,
                from.join(","),
                to.join(",")
            )
        };
        if !moving {
            return Ok(Reply::ok(format!("{code}{verb} completed")));
        }
        // MOVE: COPYUID goes untagged, before the EXPUNGEs (RFC 6851 4.3).
        if !code.is_empty() {
            self.write(&format!("* OK {code}Moved\r\n")).await?;
        }
        let originals: Vec<u32> = pairs.iter().map(|(f, _)| *f).collect();
        if !originals.is_empty() {
            let key = self.key().to_string();
            if let Err(e) = self.ctx.mail.expunge(&key, originals).await {
                return Ok(Reply::store_failed(e));
            }
        }
        Ok(Reply::ok(format!("{verb} completed")))
    }

    /// Stores a copy of each message of mailbox `from` in `to`; returns (old UID, new UID) of
    /// each copied (one that was expunged meanwhile is skipped). All or nothing: when one
    /// fails, the copies already made are expunged again (RFC 3501 6.4.7).
    async fn transfer(
        &self,
        from: &str,
        metas: Vec<MessageMeta>,
        to: &Open,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        let mut pairs = Vec::with_capacity(metas.len());
        for meta in metas {
            let copied = match self.ctx.mail.read(from, &meta).await {
                Ok(bytes) => {
                    self.ctx
                        .mail
                        .deliver(
                            vec![to.key.clone()],
                            Arc::from(bytes),
                            meta.flags,
                            Some(meta.internal_date),
                        )
                        .await
                }
                Err(StoreError::NotFound) => continue,
                Err(e) => Err(e),
            };
            match copied {
                Ok(uids) => pairs.extend(uids.first().map(|&new| (meta.uid, new))),
                Err(e) => {
                    let made: Vec<u32> = pairs.iter().map(|(_, new)| *new).collect();
                    if !made.is_empty() {
                        if let Err(undo) = self.ctx.mail.expunge(&to.key, made).await {
                            tracing::warn!("a failed COPY could not take back its copies: {undo}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(pairs)
    }

    /// RENAME INBOX (RFC 3501 6.3.5): a new folder takes INBOX's messages; INBOX stays, empty.
    async fn rename_inbox(&mut self, to: &str) -> Reply {
        let target = match self.folders().create(to).await {
            Ok(open) => open,
            Err(e) => return done(Err(e), "RENAME"),
        };
        let inbox = self.folders().inbox();
        let metas = self.ctx.mail.snapshot(&inbox.key).await.messages;
        let pairs = match self.transfer(&inbox.key, metas, &target).await {
            Ok(pairs) => pairs,
            Err(e) => return Reply::store_failed(e),
        };
        let moved: Vec<u32> = pairs.iter().map(|(f, _)| *f).collect();
        if !moved.is_empty() {
            if let Err(e) = self.ctx.mail.expunge(&inbox.key, moved).await {
                return Reply::store_failed(e);
            }
        }
        Reply::ok("RENAME completed")
    }

    async fn write(&mut self, text: &str) -> io::Result<()> {
        self.conn.write(text.as_bytes()).await
    }

    fn count_command(&self) {
        self.ctx
            .metrics
            .commands_total
            .get_or_create(&self.label)
            .inc();
    }

    /// Counts a NO or BAD answer; `client_fault` ones also count towards closing the session.
    fn count_error(&mut self, client_fault: bool) {
        self.ctx
            .metrics
            .command_errors_total
            .get_or_create(&self.label)
            .inc();
        if client_fault {
            self.errors += 1;
        }
    }

    /// Ends a session that has made too many errors; returns whether it did.
    async fn too_many_errors(&mut self) -> io::Result<bool> {
        if self.errors >= self.ctx.config.limits.errors_per_session_max {
            self.write("* BYE Too many errors\r\n").await?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The command name of a command line (`tag SP name ...`), if it has one.
fn command_name(line: &[u8]) -> Option<&[u8]> {
    let mut words = line.splitn(3, |&b| b == b' ');
    words.next()?;
    words.next()
}

/// The tag of a command line, or `*` when it has no usable one.
fn tag_of(line: &[u8]) -> String {
    let mut p = Parser::new(line);
    p.tag().map_or_else(|_| "*".to_string(), str::to_string)
}

/// If `line` ends with a literal announcement `{n}` or `{n+}`: n and whether it is synchronizing.
fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let spec = &inner[open + 1..];
    let (digits, sync) = match spec.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (spec, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, sync))
}

/// Stored messages use CRLF line ends: bare LFs of an APPENDed message become CRLF.
fn crlf(message: &[u8]) -> Cow<'_, [u8]> {
    let bare_lf = message
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || message[i - 1] != b'\r'));
    if !bare_lf {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    Cow::Owned(out)
}

/// The keywords messages of a mailbox have (lower case → as first seen).
fn keywords_in(messages: &[MessageMeta]) -> BTreeMap<String, String> {
    let mut keywords = BTreeMap::new();
    for m in messages {
        for k in m.flags.keywords() {
            keywords
                .entry(k.to_ascii_lowercase())
                .or_insert_with(|| k.clone());
        }
    }
    keywords
}

/// The untagged FLAGS response: the system flags and the keywords in use.
fn flags_response(keywords: &BTreeMap<String, String>) -> String {
    let mut out = format!("* FLAGS ({SYSTEM_FLAGS}");
    for k in keywords.values() {
        out.push(' ');
        out.push_str(k);
    }
    out + ")\r\n"
}

/// A client's mailbox name, decoded from modified UTF-7.
fn decode_name(wire: &[u8]) -> Result<String, Reply> {
    mutf7::decode(wire)
        .ok_or_else(|| Reply::no("[CANNOT] Mailbox name is not valid modified UTF-7"))
}

/// The reply to a folder operation: `{verb} completed`, or why not.
fn done(result: Result<(), FolderError>, verb: &str) -> Reply {
    match result {
        Ok(()) => Reply::ok(format!("{verb} completed")),
        Err(FolderError::Store(e)) => Reply::store_failed(e),
        Err(e) => Reply::no(e.to_string()),
    }
}

/// A mailbox name as a quoted string on the wire (modified UTF-7).
fn quoted_name(name: &str) -> String {
    if name == "INBOX" {
        return name.to_string();
    }
    let wire = mutf7::encode(name);
    format!("\"{}\"", wire.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether LIST pattern `pattern` names `name`: INBOX in any case, other names exactly.
fn name_matches(pattern: &str, name: &str) -> bool {
    wildcard_match(pattern.as_bytes(), name.as_bytes(), folders::is_inbox(name))
}

/// LIST pattern matching: `*` matches anything, `%` anything but the hierarchy delimiter `/`.
fn wildcard_match(pattern: &[u8], name: &[u8], fold_case: bool) -> bool {
    // Dynamic programming over (pattern prefix, name prefix): no exponential backtracking.
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            b'*' | b'%' => {
                let mut reachable = false;
                for j in 0..=name.len() {
                    reachable = reachable || row[j];
                    next[j] = reachable;
                    if p == b'%' && j < name.len() && name[j] == b'/' {
                        reachable = false;
                    }
                }
            }
            _ => {
                for j in 0..name.len() {
                    next[j + 1] =
                        row[j] && (name[j] == p || (fold_case && name[j].eq_ignore_ascii_case(&p)));
                }
            }
        }
        row = next;
    }
    row[name.len()]
}

/// Fuzzing: parses `data` as one IMAP command (tag, command, arguments, literals inlined as the
/// session assembles them) and runs the session's line helpers on it. Must never panic.
#[doc(hidden)]
pub fn fuzz_command(data: &[u8]) {
    let _ = literal_announced(data);
    let _ = tag_of(data);
    let _ = command_name(data);
    let _ = wildcard_match(data, b"INBOX", true);
    let _ = mutf7::decode(data);
    let mut p = Parser::new(data);
    if p.tag().is_ok() && p.sp().is_ok() {
        let _ = parse::command(&mut p).and_then(|_| p.end());
    }
}

/// Fuzzing: `data` as a stored message: its MIME tree, BODYSTRUCTURE, ENVELOPE, every section
/// form of its first parts, a whole FETCH response, and searches over its headers, addresses,
/// dates and text. Must never panic.
#[doc(hidden)]
pub fn fuzz_message(data: &[u8]) {
    use fetch::{FetchAtt, Section, SectionText};
    let tree = mime::parse(data);
    let mut out = Vec::new();
    fetch::body_structure(&mut out, data, &tree, true);
    out.clear();
    fetch::body_structure(&mut out, data, &tree, false);
    let texts = [
        None,
        Some(SectionText::Header),
        Some(SectionText::Text),
        Some(SectionText::Mime),
        Some(SectionText::Fields {
            not: true,
            names: vec![b"subject".to_vec()],
        }),
    ];
    for part in [vec![], vec![1], vec![1, 1], vec![2], vec![1, 2, 1]] {
        for text in &texts {
            let _ = fetch::section_bytes(
                data,
                &tree,
                &Section {
                    part: part.clone(),
                    text: text.clone(),
                },
            );
        }
    }
    let message = fetch::Message {
        seq: 1,
        uid: 1,
        size: data.len() as u64,
        internal_date: 0,
        flags: Flags::SEEN,
        recent: true,
        bytes: Some(data),
    };
    out.clear();
    fetch::render(
        &mut out,
        &message,
        &[
            FetchAtt::Envelope,
            FetchAtt::BodyStructure,
            FetchAtt::Rfc822Header,
            FetchAtt::Section {
                peek: true,
                section: Section::default(),
                partial: Some((3, 100)),
            },
        ],
        true,
        true,
    );
    let candidate = search::Candidate {
        seq: 1,
        uid: 1,
        size: data.len() as u64,
        internal_date: 0,
        flags: Flags::empty(),
        recent: false,
        bytes: Some(data),
    };
    let stars = search::Stars {
        max_seq: 1,
        max_uid: 1,
    };
    let day = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).expect("a date");
    for key in [
        search::SearchKey::Header("from".into(), b"a".to_vec()),
        search::SearchKey::Header("to".into(), b"".to_vec()),
        search::SearchKey::Header("subject".into(), b"x".to_vec()),
        search::SearchKey::Body(b"x".to_vec()),
        search::SearchKey::Text(b"x".to_vec()),
        search::SearchKey::SentOn(day),
    ] {
        let _ = key.matches(&candidate, stars);
    }
    let _ = address::parse_list(&String::from_utf8_lossy(data));
    let _ = search::written_day(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(
            literal_announced(b"a APPEND INBOX {12+}"),
            Some((12, false))
        );
        assert_eq!(literal_announced(b"a LOGIN \"{5}\""), None);
        assert_eq!(literal_announced(b"a X {}"), None);
        assert_eq!(literal_announced(b"a X {99999999999999999999999}"), None);
    }

    #[test]
    fn list_patterns() {
        for yes in [
            &b"*"[..],
            b"%",
            b"INBOX",
            b"inbox",
            b"IN*",
            b"%X",
            b"I*B*X*",
        ] {
            assert!(
                wildcard_match(yes, b"INBOX", true),
                "{}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [&b""[..], b"INBOX/*", b"Sent", b"IN", b"%/%"] {
            assert!(
                !wildcard_match(no, b"INBOX", true),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn bare_lf_becomes_crlf() {
        assert_eq!(&*crlf(b"a\r\nb\nc\n"), b"a\r\nb\r\nc\r\n");
        assert!(matches!(crlf(b"a\r\n"), Cow::Borrowed(_)));
    }
}
