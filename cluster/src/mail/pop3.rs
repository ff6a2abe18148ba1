//! The POP3 front end (RFC 1939, with CAPA from RFC 2449).
//!
//! A session sees the mailbox as it was when it logged in; messages delivered later appear at the
//! next login. DELE only marks: deletions are committed to the store at QUIT (the UPDATE state),
//! and a session that times out, is cut off, or is shut down deletes nothing. Sessions do not lock
//! the maildrop: a concurrent session's deletions simply make a message disappear at its next
//! login (messages it already listed stay readable until then).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::core::conn::{Conn, Input};
use crate::mail::metrics::Metrics;
use crate::mail::node::Context;
use crate::mail::store::MessageMeta;

type Pop3Conn = Conn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

enum State {
    /// Waiting for USER (None) or PASS (Some(user name as given)).
    Authorization(Option<String>),
    Transaction(Maildrop),
}

/// The session's view of the mailbox: messages numbered from 1 in UID order, and deletion marks.
struct Maildrop {
    user: String,
    uid_validity: u32,
    messages: Vec<MessageMeta>,
    deleted: HashSet<usize>,
}

impl Maildrop {
    /// The message numbered `n` (1-based), unless missing or marked deleted.
    fn get(&self, n: usize) -> Result<(usize, &MessageMeta), &'static [u8]> {
        if n == 0 || n > self.messages.len() {
            return Err(b"-ERR no such message\r\n");
        }
        if self.deleted.contains(&(n - 1)) {
            return Err(b"-ERR message already deleted\r\n");
        }
        Ok((n, &self.messages[n - 1]))
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageMeta)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted.contains(i))
            .map(|(i, m)| (i + 1, m))
    }

    fn uidl(&self, m: &MessageMeta) -> String {
        // Unique and stable per message for as long as the mailbox's UIDVALIDITY holds.
        format!("{}.{}", self.uid_validity, m.uid)
    }
}

/// One POP3 command, parsed (RFC 1939); arguments are checked here, so a bad one gets its
/// `-ERR` before the session does anything.
#[derive(Debug, PartialEq, Eq)]
enum Cmd<'a> {
    Capa,
    Noop,
    Quit,
    Stat,
    Rset,
    User(&'a str),
    Pass(&'a str),
    /// APOP, AUTH, STLS: known, not offered.
    Unsupported,
    /// LIST or UIDL, of one message or all.
    List {
        uidl: bool,
        n: Option<usize>,
    },
    Retr(usize),
    Top(usize, usize),
    Dele(usize),
    Unknown,
}

/// Parses one command line (the verb in any case; a password may hold spaces).
fn parse(line: &str) -> Result<Cmd<'_>, &'static [u8]> {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let number = |s: &str| -> Result<usize, &'static [u8]> {
        s.trim()
            .parse()
            .map_err(|_| &b"-ERR invalid message number\r\n"[..])
    };
    Ok(match verb.to_ascii_uppercase().as_str() {
        "CAPA" => Cmd::Capa,
        "NOOP" => Cmd::Noop,
        "QUIT" => Cmd::Quit,
        "STAT" => Cmd::Stat,
        "RSET" => Cmd::Rset,
        "USER" if arg.is_empty() => return Err(b"-ERR USER needs a name\r\n"),
        "USER" => Cmd::User(arg),
        "PASS" => Cmd::Pass(arg),
        "APOP" | "AUTH" | "STLS" => Cmd::Unsupported,
        v @ ("LIST" | "UIDL") => Cmd::List {
            uidl: v == "UIDL",
            n: if arg.trim().is_empty() {
                None
            } else {
                Some(number(arg)?)
            },
        },
        "RETR" => Cmd::Retr(number(arg)?),
        "DELE" => Cmd::Dele(number(arg)?),
        "TOP" => {
            let mut args = arg.split_whitespace();
            let n = number(args.next().unwrap_or(""))?;
            match (args.next().map(str::parse::<usize>), args.next()) {
                (Some(Ok(lines)), None) => Cmd::Top(n, lines),
                _ => return Err(b"-ERR usage: TOP msg lines\r\n"),
            }
        }
        _ => Cmd::Unknown,
    })
}

const CAPABILITIES: &[u8] = b"+OK Capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nEXPIRE NEVER\r\nIMPLEMENTATION clusterbench\r\n.\r\n";

pub async fn serve(stream: TcpStream, _peer: SocketAddr, ctx: Arc<Context>) -> std::io::Result<()> {
    let mut conn = crate::mail::node::client_conn(stream, &ctx);
    conn.write(b"+OK clusterbench POP3 server ready\r\n")
        .await?;
    let label = Metrics::protocol("pop3");
    let mut state = State::Authorization(None);
    let mut errors = 0u32;
    loop {
        let line = match conn.next_line().await? {
            Input::Line(line) => line,
            Input::TooLong(_) => {
                conn.write(b"-ERR line too long\r\n").await?;
                errors += 1;
                if errors >= ctx.config.limits.errors_per_session_max {
                    conn.write(b"-ERR too many errors, closing connection\r\n")
                        .await?;
                    return conn.flush().await;
                }
                continue;
            }
            Input::Eof => return Ok(()),
            Input::Timeout => {
                conn.write(b"-ERR idle timeout, closing connection (nothing deleted)\r\n")
                    .await?;
                return conn.flush().await;
            }
            Input::Shutdown => {
                conn.write(b"-ERR [SYS/TEMP] server shutting down (nothing deleted)\r\n")
                    .await?;
                return conn.flush().await;
            }
        };
        ctx.metrics.commands_total.get_or_create(&label).inc();
        let line = String::from_utf8_lossy(&line);
        let reply = match parse(&line) {
            Ok(cmd) => command(&ctx, &mut conn, &mut state, cmd).await?,
            Err(text) => Reply::Err(text),
        };
        match reply {
            Reply::Ok => {}
            Reply::Err(text) => {
                conn.write(text).await?;
                errors += 1;
                ctx.metrics.command_errors_total.get_or_create(&label).inc();
                if errors >= ctx.config.limits.errors_per_session_max {
                    conn.write(b"-ERR too many errors, closing connection\r\n")
                        .await?;
                    return conn.flush().await;
                }
            }
            Reply::Quit => return conn.flush().await,
        }
    }
}

enum Reply {
    Ok,
    Err(&'static [u8]),
    Quit,
}

async fn command(
    ctx: &Context,
    conn: &mut Pop3Conn,
    state: &mut State,
    cmd: Cmd<'_>,
) -> std::io::Result<Reply> {
    // Commands valid in any state.
    match cmd {
        Cmd::Capa => {
            conn.write(CAPABILITIES).await?;
            return Ok(Reply::Ok);
        }
        Cmd::Noop if matches!(state, State::Transaction(_)) => {
            conn.write(b"+OK\r\n").await?;
            return Ok(Reply::Ok);
        }
        _ => {}
    }
    match state {
        State::Authorization(pending_user) => match cmd {
            Cmd::User(name) => {
                *pending_user = Some(name.to_string());
                conn.write(b"+OK send PASS\r\n").await?;
                Ok(Reply::Ok)
            }
            Cmd::Pass(password) => {
                let Some(login) = pending_user.take() else {
                    return Ok(Reply::Err(b"-ERR send USER first\r\n"));
                };
                let Some(user) = ctx.directory.authenticate(&login, password) else {
                    return Ok(Reply::Err(b"-ERR [AUTH] invalid user name or password\r\n"));
                };
                let snapshot = ctx.mail.snapshot(&user).await;
                let drop = Maildrop {
                    user,
                    uid_validity: snapshot.uid_validity,
                    messages: snapshot.messages,
                    deleted: HashSet::new(),
                };
                let octets: u64 = drop.messages.iter().map(|m| m.size).sum();
                conn.write(
                    format!(
                        "+OK maildrop has {} messages ({octets} octets)\r\n",
                        drop.messages.len()
                    )
                    .as_bytes(),
                )
                .await?;
                *state = State::Transaction(drop);
                Ok(Reply::Ok)
            }
            Cmd::Unsupported => Ok(Reply::Err(b"-ERR not supported; use USER and PASS\r\n")),
            Cmd::Quit => {
                conn.write(b"+OK bye\r\n").await?;
                Ok(Reply::Quit)
            }
            Cmd::Stat
            | Cmd::List { .. }
            | Cmd::Retr(_)
            | Cmd::Top(..)
            | Cmd::Dele(_)
            | Cmd::Rset
            | Cmd::Noop => Ok(Reply::Err(b"-ERR log in first\r\n")),
            Cmd::Capa | Cmd::Unknown => Ok(Reply::Err(b"-ERR unknown command\r\n")),
        },
        State::Transaction(drop) => match cmd {
            Cmd::Stat => {
                let (n, octets) = drop
                    .live()
                    .fold((0, 0), |(n, o), (_, m)| (n + 1, o + m.size));
                conn.write(format!("+OK {n} {octets}\r\n").as_bytes())
                    .await?;
                Ok(Reply::Ok)
            }
            Cmd::List { uidl, n } => {
                let render = |n: usize, m: &MessageMeta| {
                    if uidl {
                        format!("{n} {}", drop.uidl(m))
                    } else {
                        format!("{n} {}", m.size)
                    }
                };
                match n {
                    None => {
                        let mut out = String::from("+OK\r\n");
                        for (n, m) in drop.live() {
                            out.push_str(&render(n, m));
                            out.push_str("\r\n");
                        }
                        out.push_str(".\r\n");
                        conn.write(out.as_bytes()).await?;
                    }
                    Some(n) => match drop.get(n) {
                        Ok((n, m)) => {
                            conn.write(format!("+OK {}\r\n", render(n, m)).as_bytes())
                                .await?
                        }
                        Err(e) => return Ok(Reply::Err(e)),
                    },
                }
                Ok(Reply::Ok)
            }
            Cmd::Retr(number) | Cmd::Top(number, _) => {
                let lines = match cmd {
                    Cmd::Top(_, lines) => Some(lines),
                    _ => None,
                };
                let meta = match drop.get(number) {
                    Ok((_, m)) => m.clone(),
                    Err(e) => return Ok(Reply::Err(e)),
                };
                let body = match ctx.mail.read(&drop.user, &meta).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(user = %drop.user, uid = meta.uid, "reading a message failed: {e}");
                        return Ok(Reply::Err(b"-ERR [SYS/TEMP] message could not be read\r\n"));
                    }
                };
                let body = match lines {
                    Some(n) => top(&body, n),
                    None => &body[..],
                };
                conn.write(format!("+OK {} octets\r\n", meta.size).as_bytes())
                    .await?;
                conn.write(&dot_stuffed(body)).await?;
                Ok(Reply::Ok)
            }
            Cmd::Dele(n) => match drop.get(n) {
                Ok((n, _)) => {
                    drop.deleted.insert(n - 1);
                    conn.write(format!("+OK message {n} deleted\r\n").as_bytes())
                        .await?;
                    Ok(Reply::Ok)
                }
                Err(e) => Ok(Reply::Err(e)),
            },
            Cmd::Rset => {
                drop.deleted.clear();
                conn.write(b"+OK\r\n").await?;
                Ok(Reply::Ok)
            }
            Cmd::Quit => {
                let uids: Vec<u32> = drop.deleted.iter().map(|&i| drop.messages[i].uid).collect();
                if uids.is_empty() {
                    conn.write(b"+OK bye\r\n").await?;
                    return Ok(Reply::Quit);
                }
                match ctx.mail.expunge(&drop.user, uids).await {
                    Ok(removed) => {
                        conn.write(
                            format!("+OK bye ({} messages deleted)\r\n", removed.len()).as_bytes(),
                        )
                        .await?
                    }
                    Err(e) => {
                        tracing::error!(user = %drop.user, "committing POP3 deletions failed: {e}");
                        conn.write(b"-ERR [SYS/TEMP] some deleted messages not removed\r\n")
                            .await?
                    }
                }
                Ok(Reply::Quit)
            }
            Cmd::User(_) | Cmd::Pass(_) => Ok(Reply::Err(b"-ERR already logged in\r\n")),
            Cmd::Unsupported | Cmd::Capa | Cmd::Noop | Cmd::Unknown => {
                Ok(Reply::Err(b"-ERR unknown command\r\n"))
            }
        },
    }
}

/// The header and the first `lines` lines of the body (POP3 TOP).
fn top(message: &[u8], lines: usize) -> &[u8] {
    let header_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(message.len());
    let mut end = header_end;
    for _ in 0..lines {
        match message[end..].iter().position(|&b| b == b'\n') {
            Some(i) => end += i + 1,
            None => {
                end = message.len();
                break;
            }
        }
    }
    &message[..end]
}

/// A multi-line response body: leading dots doubled, CRLF-terminated, then ".".
fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Fuzzing: one POP3 command line through the parser, and TOP and dot-stuffing over the same
/// bytes as a message. Must never panic.
#[doc(hidden)]
pub fn fuzz_command(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    if let Ok(Cmd::Top(_, lines)) = parse(&line) {
        let _ = top(data, lines);
    }
    let _ = top(data, data.len() % 7);
    let stuffed = dot_stuffed(data);
    assert!(stuffed.ends_with(b".\r\n"));
}

#[cfg(test)]
mod tests {
    use super::{dot_stuffed, parse, top, Cmd};

    #[test]
    fn commands_parse_with_their_arguments_checked() {
        assert_eq!(parse("user alice"), Ok(Cmd::User("alice")));
        assert_eq!(parse("PASS with spaces  "), Ok(Cmd::Pass("with spaces  ")));
        assert_eq!(
            parse("list"),
            Ok(Cmd::List {
                uidl: false,
                n: None
            })
        );
        assert_eq!(
            parse("UIDL 3"),
            Ok(Cmd::List {
                uidl: true,
                n: Some(3)
            })
        );
        assert_eq!(parse("TOP 2 0"), Ok(Cmd::Top(2, 0)));
        assert_eq!(parse("Dele 1"), Ok(Cmd::Dele(1)));
        assert_eq!(parse("XYZZY"), Ok(Cmd::Unknown));
        for bad in [
            "USER",
            "RETR",
            "RETR x",
            "DELE -1",
            "TOP 1",
            "TOP 1 x",
            "TOP 1 2 3",
            "LIST 99999999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_are_dot_stuffed_and_terminated() {
        assert_eq!(dot_stuffed(b".a\r\nb"), b"..a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
    }

    #[test]
    fn top_cuts_after_n_body_lines() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top(m, 0), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(top(m, 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(top(m, 10), &m[..]);
    }
}
