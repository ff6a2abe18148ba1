//! The SMTP front end (RFC 5321): accepts mail for the node's provisioned users and nothing else.
//!
//! Supports EHLO/HELO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP, QUIT and VRFY, and the
//! PIPELINING, 8BITMIME, SIZE and ENHANCEDSTATUSCODES extensions. A message is answered with 250
//! only after the store has made it durable in every recipient's mailbox. It never relays: a
//! recipient outside the node's domain is refused with 550 5.7.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::core::budget::Reservation;
use crate::core::conn::{Conn, Input};
use crate::mail::directory::Recipient;
use crate::mail::metrics::Metrics;
use crate::mail::node::Context;
use crate::mail::store::Flags;

/// Per-process counter that makes queue ids unique together with the node id and start time.
static QUEUE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The envelope of the transaction in progress.
#[derive(Default)]
struct Transaction {
    from: Option<String>,
    /// Canonical mailbox names, without duplicates.
    recipients: Vec<String>,
    /// Node buffer space held for the message a `SIZE=` announced.
    reservation: Option<Reservation>,
}

/// Each byte of a message is held twice at most while it is taken in (the buffer, and the
/// shared copy the store and the replicas get).
const BUFFER_COPIES: usize = 2;
/// The node-wide buffer budget is taken in steps of at least this (fewer atomic operations).
const RESERVE_STEP: usize = 256 * 1024;
/// The answer when the node has no room to buffer a message now (RFC 3463 4.3.1).
const NO_ROOM: &str = "452 4.3.1 Insufficient system storage; try again later\r\n";

struct Session {
    ctx: Arc<Context>,
    peer: SocketAddr,
    /// The name the client gave in HELO/EHLO, once it has.
    helo: Option<String>,
    esmtp: bool,
    tx: Transaction,
    errors: u32,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) -> std::io::Result<()> {
    let mut conn = crate::mail::node::client_conn(stream, &ctx);
    let hostname = ctx.config.hostname.clone();
    conn.write(format!("220 {hostname} ESMTP clusterbench ready\r\n").as_bytes())
        .await?;
    let mut session = Session {
        ctx,
        peer,
        helo: None,
        esmtp: false,
        tx: Transaction::default(),
        errors: 0,
    };
    let label = Metrics::protocol("smtp");
    loop {
        let line = match conn.next_line().await? {
            Input::Line(line) => line,
            Input::TooLong(_) => {
                session
                    .reply_error(&mut conn, "500 5.5.2 Line too long\r\n")
                    .await?;
                if session.too_many_errors() {
                    return session.close_for_errors(&mut conn).await;
                }
                continue;
            }
            Input::Eof => return Ok(()),
            Input::Timeout => {
                conn.write(
                    format!("421 4.4.2 {hostname} Idle timeout, closing connection\r\n").as_bytes(),
                )
                .await?;
                return conn.flush().await;
            }
            Input::Shutdown => {
                conn.write(format!("421 4.3.2 {hostname} Service shutting down\r\n").as_bytes())
                    .await?;
                return conn.flush().await;
            }
        };
        session
            .ctx
            .metrics
            .commands_total
            .get_or_create(&label)
            .inc();
        match session.command(&mut conn, &line).await? {
            Next::Continue => {}
            Next::Close => return conn.flush().await,
        }
        if session.too_many_errors() {
            return session.close_for_errors(&mut conn).await;
        }
    }
}

type SmtpConn = Conn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

impl Session {
    async fn command(&mut self, conn: &mut SmtpConn, line: &[u8]) -> std::io::Result<Next> {
        let Ok(line) = std::str::from_utf8(line) else {
            self.reply_error(conn, "500 5.5.2 Command is not valid UTF-8\r\n")
                .await?;
            return Ok(Next::Continue);
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line.trim(), ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => {
                if arg.is_empty() {
                    self.reply_error(conn, "501 5.5.4 Syntax: EHLO hostname\r\n")
                        .await?;
                    return Ok(Next::Continue);
                }
                self.helo = Some(arg.split_whitespace().next().unwrap_or(arg).to_string());
                self.esmtp = verb.eq_ignore_ascii_case("EHLO");
                self.tx = Transaction::default();
                let host = &self.ctx.config.hostname;
                let reply = if self.esmtp {
                    format!(
                        "250-{host} greets {arg}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE {}\r\n250 ENHANCEDSTATUSCODES\r\n",
                        self.ctx.config.limits.message_bytes_max
                    )
                } else {
                    format!("250 {host} greets {arg}\r\n")
                };
                conn.write(reply.as_bytes()).await?;
            }
            "MAIL" => self.mail(conn, arg).await?,
            "RCPT" => self.rcpt(conn, arg).await?,
            "DATA" => return self.data(conn).await,
            "RSET" => {
                self.tx = Transaction::default();
                conn.write(b"250 2.0.0 Ok\r\n").await?;
            }
            "NOOP" => conn.write(b"250 2.0.0 Ok\r\n").await?,
            "QUIT" => {
                conn.write(b"221 2.0.0 Bye\r\n").await?;
                return Ok(Next::Close);
            }
            "VRFY" => {
                conn.write(
                    b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
                )
                .await?
            }
            "HELP" => {
                conn.write(b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n")
                    .await?
            }
            "EXPN" | "TURN" | "ETRN" | "STARTTLS" | "AUTH" | "BDAT" => {
                self.reply_error(conn, "502 5.5.1 Command not implemented\r\n")
                    .await?
            }
            _ => {
                self.reply_error(conn, "500 5.5.2 Command not recognized\r\n")
                    .await?
            }
        }
        Ok(Next::Continue)
    }

    async fn mail(&mut self, conn: &mut SmtpConn, arg: &str) -> std::io::Result<()> {
        if self.helo.is_none() {
            return self
                .reply_error(conn, "503 5.5.1 Send EHLO or HELO first\r\n")
                .await;
        }
        if self.tx.from.is_some() {
            return self
                .reply_error(conn, "503 5.5.1 Nested MAIL command\r\n")
                .await;
        }
        let Some((path, params)) = parse_path(arg, "FROM:") else {
            return self
                .reply_error(conn, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
                .await;
        };
        let mut reservation = None;
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > self.ctx.config.limits.message_bytes_max as u64 => {
                        return self
                            .reply_error(
                                conn,
                                "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
                            )
                            .await;
                    }
                    Ok(size) => {
                        // Room for the announced message now, or a temporary failure before
                        // the client sends it (RFC 1870 6.1).
                        match self.ctx.buffers.try_reserve(BUFFER_COPIES * size as usize) {
                            Some(r) => reservation = Some(r),
                            None => return conn.write(NO_ROOM.as_bytes()).await,
                        }
                    }
                    Err(_) => {
                        return self
                            .reply_error(conn, "501 5.5.4 Bad SIZE parameter\r\n")
                            .await
                    }
                },
                "BODY"
                    if value.eq_ignore_ascii_case("8BITMIME")
                        || value.eq_ignore_ascii_case("7BIT") => {}
                _ => {
                    return self
                        .reply_error(
                            conn,
                            "555 5.5.4 MAIL parameter not recognized or not implemented\r\n",
                        )
                        .await
                }
            }
        }
        self.tx.from = Some(path.to_string());
        self.tx.reservation = reservation;
        conn.write(b"250 2.1.0 Ok\r\n").await
    }

    async fn rcpt(&mut self, conn: &mut SmtpConn, arg: &str) -> std::io::Result<()> {
        if self.tx.from.is_none() {
            return self
                .reply_error(conn, "503 5.5.1 Need MAIL command first\r\n")
                .await;
        }
        let Some((path, params)) = parse_path(arg, "TO:") else {
            return self
                .reply_error(conn, "501 5.5.4 Syntax: RCPT TO:<address>\r\n")
                .await;
        };
        if !params.trim().is_empty() {
            return self
                .reply_error(
                    conn,
                    "555 5.5.4 RCPT parameters not recognized or not implemented\r\n",
                )
                .await;
        }
        match self.ctx.directory.recipient(path) {
            Recipient::Local(user) => {
                if self.tx.recipients.contains(&user) {
                    return conn.write(b"250 2.1.5 Ok (duplicate recipient)\r\n").await;
                }
                if self.tx.recipients.len() >= self.ctx.config.limits.recipients_max {
                    return self
                        .reply_error(conn, "452 4.5.3 Too many recipients\r\n")
                        .await;
                }
                self.tx.recipients.push(user);
                conn.write(b"250 2.1.5 Ok\r\n").await
            }
            Recipient::UnknownUser => {
                self.reply_error(
                    conn,
                    "550 5.1.1 Recipient address rejected: user unknown\r\n",
                )
                .await
            }
            Recipient::Relay => {
                self.reply_error(conn, "550 5.7.1 Relay access denied\r\n")
                    .await
            }
        }
    }

    async fn data(&mut self, conn: &mut SmtpConn) -> std::io::Result<Next> {
        if self.tx.from.is_none() {
            self.reply_error(conn, "503 5.5.1 Need MAIL command first\r\n")
                .await?;
            return Ok(Next::Continue);
        }
        if self.tx.recipients.is_empty() {
            self.reply_error(conn, "554 5.5.1 No valid recipients\r\n")
                .await?;
            return Ok(Next::Continue);
        }
        conn.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            .await?;
        conn.flush().await?;
        let max = self.ctx.config.limits.message_bytes_max;
        let queue_id = format!(
            "{:X}{:X}N{}",
            chrono::Utc::now().timestamp_micros(),
            QUEUE_SEQ.fetch_add(1, Ordering::Relaxed),
            self.ctx.config.id
        );
        // The message is built in place: the trace header, then the data as it comes.
        let header = self.received_header(&queue_id, &self.tx.recipients);
        let mut message = Vec::with_capacity(header.len() + 8 * 1024);
        message.extend_from_slice(header.as_bytes());
        let mut reservation = self
            .tx
            .reservation
            .take()
            .unwrap_or_else(|| self.ctx.buffers.none());
        let mut too_big = false;
        let mut no_room = false;
        let mut line_too_long = false;
        // The message's size so far, whether or not it is being kept.
        let mut size = 0usize;
        loop {
            match conn.next_data_line().await? {
                Input::Line(line) => {
                    if line == b"." {
                        break;
                    }
                    // Dot-stuffing (RFC 5321 4.5.2): a leading dot was doubled by the client.
                    let line = line.strip_prefix(b".").unwrap_or(&line);
                    size = size.saturating_add(line.len() + 2);
                    if size > max {
                        too_big = true;
                        // Keep reading to the end of the data so the session stays in step.
                        continue;
                    }
                    if too_big || no_room {
                        continue;
                    }
                    // Node-wide: over the budget, the data is read to its end and dropped, and
                    // the client told to try again later.
                    let need = BUFFER_COPIES * (message.len() + line.len() + 2);
                    if !reservation.ensure(need, RESERVE_STEP) {
                        no_room = true;
                        message = Vec::new();
                        reservation.shrink_to(0);
                        continue;
                    }
                    message.extend_from_slice(line);
                    message.extend_from_slice(b"\r\n");
                }
                Input::TooLong(_) => line_too_long = true,
                Input::Eof => return Ok(Next::Close),
                Input::Timeout | Input::Shutdown => {
                    conn.write(b"421 4.4.2 Timeout while receiving data, closing connection\r\n")
                        .await?;
                    return Ok(Next::Close);
                }
            }
        }
        let recipients = std::mem::take(&mut self.tx.recipients);
        self.tx = Transaction::default();
        if too_big {
            self.reply_error(
                conn,
                "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            )
            .await?;
            return Ok(Next::Continue);
        }
        if line_too_long {
            self.reply_error(
                conn,
                "500 5.5.2 Message has a line longer than the limit\r\n",
            )
            .await?;
            return Ok(Next::Continue);
        }
        if no_room {
            tracing::warn!(
                peer = %self.peer,
                buffered = self.ctx.buffers.used(),
                max = self.ctx.buffers.max(),
                "a message refused: the node's buffers are full"
            );
            conn.write(NO_ROOM.as_bytes()).await?;
            return Ok(Next::Continue);
        }
        match self
            .ctx
            .mail
            .deliver(recipients, Arc::from(message), Flags::empty(), None)
            .await
        {
            Ok(_) => {
                conn.write(format!("250 2.0.0 Ok: queued as {queue_id}\r\n").as_bytes())
                    .await?
            }
            // The disk holding the mail is full (here, or on the node that was to store it).
            Err(e) if e.to_string().contains(crate::mail::store::DISK_FULL) => {
                tracing::warn!("delivery refused: {e}");
                conn.write(NO_ROOM.as_bytes()).await?
            }
            Err(e) => {
                tracing::error!("delivery failed: {e}");
                self.reply_error(
                    conn,
                    "451 4.3.0 Local error in processing; try again later\r\n",
                )
                .await?
            }
        }
        Ok(Next::Continue)
    }

    /// The trace header (RFC 5321 4.4) this node prepends to every message it accepts.
    fn received_header(&self, queue_id: &str, recipients: &[String]) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let with = if self.esmtp { "ESMTP" } else { "SMTP" };
        let host = &self.ctx.config.hostname;
        let domain = self.ctx.directory.domain();
        let for_clause = match recipients {
            [one] => format!(" for <{one}@{domain}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{}])\r\n\tby {host} (clusterbench node {}) with {with} id {queue_id}{for_clause};\r\n\t{}\r\n",
            self.peer.ip(),
            self.ctx.config.id,
            chrono::Utc::now().to_rfc2822()
        )
    }

    async fn reply_error(&mut self, conn: &mut SmtpConn, reply: &str) -> std::io::Result<()> {
        self.errors += 1;
        self.ctx
            .metrics
            .command_errors_total
            .get_or_create(&Metrics::protocol("smtp"))
            .inc();
        conn.write(reply.as_bytes()).await
    }

    fn too_many_errors(&self) -> bool {
        self.errors >= self.ctx.config.limits.errors_per_session_max
    }

    async fn close_for_errors(&self, conn: &mut SmtpConn) -> std::io::Result<()> {
        conn.write(b"421 4.7.0 Too many errors, closing connection\r\n")
            .await?;
        conn.flush().await
    }
}

/// Parses `FROM:<path> params` (or `TO:`); returns the address inside the brackets (empty for
/// the null reverse-path `<>`) and the parameters. Tolerates a space after the colon, as many
/// clients send one.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    // `get` rather than indexing: the argument may hold multi-byte characters.
    if !arg.get(..keyword.len())?.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg.get(keyword.len()..)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = &rest[..end];
    // A source route (@a,@b:user@c) is obsolete; take the mailbox after the colon.
    let path = match path.rsplit_once(':') {
        Some((route, mailbox)) if route.starts_with('@') => mailbox,
        _ => path,
    };
    if path.contains(|c: char| c.is_whitespace() || c == '<') {
        return None;
    }
    Some((path, &rest[end + 1..]))
}

/// Fuzzing: `data` as the argument of MAIL and RCPT (a path and its parameters). Must never
/// panic.
#[doc(hidden)]
pub fn fuzz_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for keyword in ["FROM:", "TO:"] {
        if let Some((_, params)) = parse_path(&text, keyword) {
            for param in params.split_whitespace() {
                let _ = param.split_once('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("FROM:<a@b.test>", "FROM:"),
            Some(("a@b.test", ""))
        );
        assert_eq!(
            parse_path("from: <a@b.test> SIZE=10", "FROM:"),
            Some(("a@b.test", " SIZE=10"))
        );
        assert_eq!(parse_path("FROM:<>", "FROM:"), Some(("", "")));
        assert_eq!(
            parse_path("TO:<@r1,@r2:u@d.test>", "TO:"),
            Some(("u@d.test", ""))
        );
        assert_eq!(parse_path("TO:u@d.test", "TO:"), None);
        assert_eq!(parse_path("FROM:<a b>", "FROM:"), None);
        assert_eq!(parse_path("X", "FROM:"), None);
        assert_eq!(parse_path("FRé:<a>", "FROM:"), None);
    }
}
