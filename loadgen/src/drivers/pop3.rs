//! A small POP3 client (RFC 1939: USER/PASS, LIST, RETR, DELE, QUIT) over a Tokio TCP stream.
//!
//! Written here rather than taken from crates.io: `pop3` is blocking and pulls in OpenSSL, and
//! `async-pop` (1.1) defaults to async-std and native TLS, returns RETR content without undoing
//! dot-stuffing (a body line starting with '.' would come back changed, and every generated body
//! has such lines), drops the final CRLF, and caps replies only at 20 MiB. A checksum over the
//! body exactly as the server sent it needs none of that, and the client is a few hundred lines.
//!
//! Every read is bounded: a status line by [`STATUS_LINE_BYTES_MAX`], a message line by
//! [`TEXT_LINE_BYTES_MAX`], a message by [`MESSAGE_BYTES_MAX`], a listing by
//! [`LISTING_ENTRIES_MAX`], and each wait for the server by [`OP_TIMEOUT`]. The client must never
//! count a deletion as done before the server's `+OK` to QUIT (RFC 1939 commits deletions only in
//! the UPDATE state), and on any failure it drops the connection without QUIT, so the server
//! deletes nothing.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{io_error, quote, OpError, SessionResult, OP_TIMEOUT, SESSION_MESSAGES_MAX};
use crate::message::{verify, Verified};

/// Longest status line (`+OK ...`/`-ERR ...`) accepted, CRLF included. RFC 2449 caps them at 512
/// octets; this leaves room for servers that say more.
pub const STATUS_LINE_BYTES_MAX: usize = 8 * 1024;
/// Longest line of a multi-line reply accepted, CRLF included. Mail lines should stay under 1000
/// octets (RFC 5322), but servers accept longer ones, so this is generous.
pub const TEXT_LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest message retrieved, after dot-unstuffing.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most entries accepted in a LIST reply (the bundled cluster holds at most 100,000 per mailbox).
pub const LISTING_ENTRIES_MAX: usize = 1_000_000;
/// Bound on [`retrieve_all`], which reads a whole mailbox for the end-of-run check and so may take
/// much longer than one operation; each wait for the server is still bounded by [`OP_TIMEOUT`].
pub const RETRIEVE_ALL_TIMEOUT: Duration = Duration::from_secs(600);

/// One POP3 session as a mail client runs it: log in, list, retrieve (at most
/// [`SESSION_MESSAGES_MAX`] messages, lowest numbers first) and verify every message, delete them
/// if `delete`, quit. Deletions are reported only once the server has said `+OK` to QUIT; a
/// timeout or failure after QUIT was sent but before its reply leaves them unknown, and they are
/// not reported. Bounded by [`OP_TIMEOUT`] in all.
///
/// What the session found is put in `out` as it goes, so a session that fails half way still
/// reports the messages it did retrieve (they reached the client intact, whatever happens next).
pub async fn session(
    addr: SocketAddr,
    user: &str,
    password: &str,
    delete: bool,
    out: &mut SessionResult,
) -> Result<(), OpError> {
    let run = run(addr, user, password, delete, SESSION_MESSAGES_MAX, out);
    tokio::time::timeout(OP_TIMEOUT, run)
        .await
        .unwrap_or(Err(OpError::Timeout))
}

/// Retrieves and verifies every message in the mailbox without deleting any, for the
/// end-of-run correctness check. Bounded by [`RETRIEVE_ALL_TIMEOUT`] in all.
pub async fn retrieve_all(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Vec<Verified>, OpError> {
    let mut out = SessionResult::default();
    let run = run(addr, user, password, false, LISTING_ENTRIES_MAX, &mut out);
    match tokio::time::timeout(RETRIEVE_ALL_TIMEOUT, run).await {
        Ok(result) => result.map(|()| out.retrieved),
        Err(_) => Err(OpError::Timeout),
    }
}

async fn run(
    addr: SocketAddr,
    user: &str,
    password: &str,
    delete: bool,
    messages_max: usize,
    out: &mut SessionResult,
) -> Result<(), OpError> {
    let stream = match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(OpError::Connect(format!("{addr}: {e}"))),
        Err(_) => return Err(OpError::Timeout),
    };
    // Commands are small and each waits for its reply, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    let mut client = Client::new(stream, OP_TIMEOUT);
    client
        .transaction(user, password, delete, messages_max, out)
        .await
}

/// A POP3 connection: a buffered stream and the longest wait for the server.
struct Client<S> {
    stream: BufReader<S>,
    wait_max: Duration,
    line: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S, wait_max: Duration) -> Self {
        Client {
            stream: BufReader::new(stream),
            wait_max,
            line: Vec::with_capacity(1024),
        }
    }

    /// Greeting to QUIT.
    async fn transaction(
        &mut self,
        user: &str,
        password: &str,
        delete: bool,
        messages_max: usize,
        out: &mut SessionResult,
    ) -> Result<(), OpError> {
        if [user, password].iter().any(|s| s.contains(['\r', '\n'])) {
            return Err(OpError::Protocol(
                "user name or password contains a line break".into(),
            ));
        }
        self.status().await?;
        self.command(&format!("USER {user}")).await?;
        self.command(&format!("PASS {password}")).await?;
        let mut numbers = self.list().await?;
        numbers.truncate(messages_max);
        let mut deleted = Vec::new();
        for number in numbers {
            let message = self.retrieve(number).await?;
            let verified = verify(&message);
            out.retrieved.push(verified.clone());
            if delete {
                self.command(&format!("DELE {number}")).await?;
                if let Some(id) = &verified.id {
                    deleted.push(id.clone());
                }
            }
        }
        self.command("QUIT").await?;
        out.deleted = deleted;
        Ok(())
    }

    /// Sends `line` and reads its status reply.
    async fn command(&mut self, line: &str) -> Result<String, OpError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let write = async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.wait_max, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_error(e)),
            Err(_) => return Err(OpError::Timeout),
        }
        self.status().await
    }

    /// Reads a status line: `+OK text` gives the text, `-ERR text` is a refusal.
    async fn status(&mut self) -> Result<String, OpError> {
        self.read_line(STATUS_LINE_BYTES_MAX).await?;
        let line = trim_line_end(&self.line);
        if let Some(text) = line.strip_prefix(b"+OK") {
            Ok(quote(text))
        } else if line.starts_with(b"-ERR") {
            Err(OpError::Rejected(quote(line)))
        } else {
            Err(OpError::Protocol(format!(
                "expected +OK or -ERR, got {:?}",
                quote(line)
            )))
        }
    }

    /// LIST: the numbers of the messages in the maildrop, ascending.
    async fn list(&mut self) -> Result<Vec<usize>, OpError> {
        self.command("LIST").await?;
        let mut numbers = Vec::new();
        loop {
            self.read_line(STATUS_LINE_BYTES_MAX).await?;
            let line = trim_line_end(&self.line);
            if line == b"." {
                break;
            }
            if numbers.len() == LISTING_ENTRIES_MAX {
                return Err(OpError::Protocol(format!(
                    "LIST has more than {LISTING_ENTRIES_MAX} entries"
                )));
            }
            numbers.push(parse_scan_listing(line)?);
        }
        numbers.sort_unstable();
        numbers.dedup();
        Ok(numbers)
    }

    /// RETR: the message as stored, dot-stuffing undone, line endings as sent.
    async fn retrieve(&mut self, number: usize) -> Result<Vec<u8>, OpError> {
        self.command(&format!("RETR {number}")).await?;
        let mut message = Vec::new();
        loop {
            self.read_line(TEXT_LINE_BYTES_MAX).await?;
            let line = self.line.as_slice();
            if trim_line_end(line) == b"." {
                break;
            }
            // Byte-stuffing (RFC 1939 3): a line starting with '.' had one more added.
            let line = line.strip_prefix(b".").unwrap_or(line);
            if message.len() + line.len() > MESSAGE_BYTES_MAX {
                return Err(OpError::Protocol(format!(
                    "message {number} is larger than {MESSAGE_BYTES_MAX} bytes"
                )));
            }
            message.extend_from_slice(line);
        }
        Ok(message)
    }

    /// Reads one line, its LF included, into `self.line`; a line longer than `max` bytes, or the
    /// connection closing first, is an error.
    async fn read_line(&mut self, max: usize) -> Result<(), OpError> {
        self.line.clear();
        loop {
            let available = match tokio::time::timeout(self.wait_max, self.stream.fill_buf()).await
            {
                Ok(Ok(available)) => available,
                Ok(Err(e)) => return Err(io_error(e)),
                Err(_) => return Err(OpError::Timeout),
            };
            if available.is_empty() {
                return Err(OpError::Io("the server closed the connection".into()));
            }
            let (take, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.line.len() + take > max {
                return Err(OpError::Protocol(format!(
                    "reply line longer than {max} bytes"
                )));
            }
            self.line.extend_from_slice(&available[..take]);
            self.stream.consume(take);
            if complete {
                return Ok(());
            }
        }
    }
}

/// `line` without its CRLF (or bare LF).
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The message number of a scan listing (`number size [more]`).
fn parse_scan_listing(line: &[u8]) -> Result<usize, OpError> {
    let number = line
        .split(|&b| b == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0);
    number.ok_or_else(|| OpError::Protocol(format!("bad scan listing {:?}", quote(line))))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::message::{CHECKSUM_HEADER, ID_HEADER};

    /// A scripted server: answers each command line with the reply `script` gives for it, and
    /// records the commands.
    async fn serve(
        mut server: DuplexStream,
        greeting: &'static [u8],
        script: impl Fn(&str) -> Vec<u8> + Send + 'static,
    ) -> Vec<String> {
        let mut commands = Vec::new();
        if server.write_all(greeting).await.is_err() {
            return commands;
        }
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match server.read(&mut buf).await {
                Ok(0) | Err(_) => return commands,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let line = String::from_utf8(line).unwrap().trim_end().to_string();
                let reply = script(&line);
                commands.push(line);
                if server.write_all(&reply).await.is_err() {
                    return commands;
                }
            }
        }
    }

    fn stored(id: &str, body: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "{ID_HEADER}: {id}\r\n{CHECKSUM_HEADER}: {:08x}\r\n\r\n",
            crc32fast::hash(body)
        )
        .into_bytes();
        m.extend_from_slice(body);
        m
    }

    fn stuffed(message: &[u8]) -> Vec<u8> {
        let mut out = b"+OK message follows\r\n".to_vec();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    async fn run_against(
        script: impl Fn(&str) -> Vec<u8> + Send + 'static,
        delete: bool,
    ) -> (Result<SessionResult, OpError>, Vec<String>) {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(server_end, b"+OK ready\r\n", script));
        let mut client = Client::new(client_end, Duration::from_secs(5));
        let mut out = SessionResult::default();
        let result = client
            .transaction("user1", "pw", delete, 10, &mut out)
            .await
            .map(|()| out);
        drop(client);
        (result, server.await.unwrap())
    }

    fn mailbox(command: &str) -> Vec<u8> {
        let one = stored("m1", b".leading dot\r\n..two dots\r\n.\r\nplain\r\n");
        let two = stored("m2", b"second\r\n");
        match command {
            "LIST" => b"+OK 2 messages\r\n1 100\r\n2 50\r\n.\r\n".to_vec(),
            "RETR 1" => stuffed(&one),
            "RETR 2" => stuffed(&two),
            "QUIT" => b"+OK bye\r\n".to_vec(),
            _ => b"+OK\r\n".to_vec(),
        }
    }

    #[tokio::test]
    async fn retrieves_unstuffs_verifies_and_deletes() {
        let (result, commands) = run_against(mailbox, true).await;
        let result = result.unwrap();
        let ids: Vec<_> = result.retrieved.iter().map(|v| v.id.clone()).collect();
        assert_eq!(ids, [Some("m1".to_string()), Some("m2".to_string())]);
        assert!(result.retrieved.iter().all(|v| v.intact), "{result:?}");
        assert_eq!(result.deleted, ["m1", "m2"]);
        assert_eq!(
            commands,
            [
                "USER user1",
                "PASS pw",
                "LIST",
                "RETR 1",
                "DELE 1",
                "RETR 2",
                "DELE 2",
                "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn without_delete_nothing_is_deleted() {
        let (result, commands) = run_against(mailbox, false).await;
        assert!(result.unwrap().deleted.is_empty());
        assert!(!commands.iter().any(|c| c.starts_with("DELE")));
    }

    #[tokio::test]
    async fn deletions_are_not_committed_without_ok_to_quit() {
        let (result, _) = run_against(
            |c| match c {
                "QUIT" => b"-ERR [SYS/TEMP] some deleted messages not removed\r\n".to_vec(),
                c => mailbox(c),
            },
            true,
        )
        .await;
        assert!(matches!(result, Err(OpError::Rejected(_))), "{result:?}");
    }

    #[tokio::test]
    async fn wrong_password_is_rejected() {
        let (result, _) = run_against(
            |c| match c {
                c if c.starts_with("PASS") => b"-ERR [AUTH] invalid login\r\n".to_vec(),
                c => mailbox(c),
            },
            true,
        )
        .await;
        assert_eq!(
            result.unwrap_err(),
            OpError::Rejected("-ERR [AUTH] invalid login".into())
        );
    }

    #[tokio::test]
    async fn malformed_and_oversized_replies_are_protocol_errors() {
        let (result, _) = run_against(|_| b"HELLO\r\n".to_vec(), true).await;
        assert_eq!(result.unwrap_err().kind(), "protocol");
        let (result, _) = run_against(
            |c| match c {
                "LIST" => b"+OK\r\nnot-a-number 5\r\n.\r\n".to_vec(),
                c => mailbox(c),
            },
            true,
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), "protocol");
        let (result, _) = run_against(
            |c| match c {
                "RETR 1" => {
                    let mut r = b"+OK\r\n".to_vec();
                    r.extend(std::iter::repeat_n(b'a', TEXT_LINE_BYTES_MAX + 1));
                    r
                }
                c => mailbox(c),
            },
            true,
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), "protocol");
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_mid_message_is_an_io_error() {
        let (client_end, mut server_end) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            server_end.write_all(b"+OK ready\r\n").await.unwrap();
            for reply in [
                &b"+OK\r\n"[..],
                b"+OK\r\n",
                b"+OK\r\n1 10\r\n.\r\n",
                b"+OK\r\npartial line",
            ] {
                let _ = server_end.read(&mut buf).await.unwrap();
                server_end.write_all(reply).await.unwrap();
            }
        });
        let mut client = Client::new(client_end, Duration::from_secs(5));
        let result = client
            .transaction("u", "p", true, 10, &mut SessionResult::default())
            .await;
        server.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), "io");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let (client_end, _server_end) = tokio::io::duplex(1024);
        let mut client = Client::new(client_end, Duration::from_millis(50));
        let result = client
            .transaction("u", "p", true, 10, &mut SessionResult::default())
            .await;
        assert_eq!(result.unwrap_err(), OpError::Timeout);
    }

    #[tokio::test]
    async fn line_breaks_in_credentials_are_refused_locally() {
        let (client_end, _server_end) = tokio::io::duplex(1024);
        let mut client = Client::new(client_end, Duration::from_secs(5));
        let result = client
            .transaction("u", "p\r\nDELE 1", true, 10, &mut SessionResult::default())
            .await;
        assert_eq!(result.unwrap_err().kind(), "protocol");
    }

    #[test]
    fn scan_listings() {
        assert_eq!(parse_scan_listing(b"3 120").unwrap(), 3);
        assert_eq!(parse_scan_listing(b"7 1 extra").unwrap(), 7);
        assert!(parse_scan_listing(b"0 1").is_err());
        assert!(parse_scan_listing(b"").is_err());
        assert!(parse_scan_listing(b"-1 2").is_err());
    }
}
