//! IMAP reading sessions through async-imap over Tokio: log in, select INBOX, fetch the unseen
//! messages (which marks them `\Seen`), verify them, then keep them, flag them `\Deleted` and
//! expunge, or MOVE them to a folder (created on first use), and log out.
//!
//! async-imap does the connection, response parsing, LOGIN and LOGOUT. SELECT, SEARCH, FETCH,
//! STORE and EXPUNGE are sent with [`Session::run_command`] and their responses read here,
//! because async-imap's helpers for them end quietly when the server answers `NO`/`BAD` or hangs
//! up (an empty search result looks just like a failed search, a refused EXPUNGE like a done
//! one), and this driver must never report messages it did not get, or deletions that did not
//! happen. It must also never fetch unboundedly: at most [`SESSION_MESSAGES_MAX`] messages per
//! session, command lines under [`UID_SET_BYTES_MAX`], one message in memory at a time (a
//! message's size is bounded by async-imap's 512 MiB buffer cap), all within [`OP_TIMEOUT`].

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;

use async_imap::error::Error as ImapError;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, Status};
use async_imap::{Client, Session};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::{io_error, quote, OpError, SessionResult, OP_TIMEOUT, SESSION_MESSAGES_MAX};
use crate::message::{verify, Verified};

/// Longest UID set put in one command, so command lines stay well under the 1000 octets RFC 2683
/// (3.2.1.5) advises servers to accept; more UIDs take more commands.
pub const UID_SET_BYTES_MAX: usize = 900;
/// Most UIDs accepted from one SEARCH (the bundled cluster holds at most 100,000 per mailbox).
pub const SEARCH_RESULTS_MAX: usize = 1_000_000;

/// What a session does with the messages it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRead<'a> {
    Keep,
    /// `UID STORE +FLAGS (\Deleted)`, then `EXPUNGE`.
    Expunge,
    /// `UID MOVE` (RFC 6851) to this folder; when the server refuses, `CREATE` it and try once
    /// more.
    MoveTo(&'a str),
}

/// One IMAP session as a mail client runs it: log in as `user`, select INBOX, `UID SEARCH
/// UNSEEN`, `UID FETCH <set> BODY[]` for at most [`SESSION_MESSAGES_MAX`] of them (lowest UIDs
/// first), verify each; if `expunge`, `UID STORE <set> +FLAGS (\Deleted)` and `EXPUNGE` them and
/// report their ids as deleted; log out. Bounded by [`OP_TIMEOUT`] in all.
///
/// LOGOUT's outcome does not change the result: by then everything the session did is committed.
/// A timeout or failure after EXPUNGE was sent but before its `OK` leaves the deletions unknown;
/// they are not reported.
///
/// What the session found is put in `out` as it goes, so a session that fails half way still
/// reports the messages it did fetch.
pub async fn session(
    addr: SocketAddr,
    user: &str,
    password: &str,
    after: AfterRead<'_>,
    out: &mut SessionResult,
) -> Result<(), OpError> {
    let deadline = Instant::now() + OP_TIMEOUT;
    let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(OpError::Connect(format!("{addr}: {e}"))),
        Err(_) => return Err(OpError::Timeout),
    };
    // Commands are small and each waits for its reply, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    session_over(stream, user, password, after, deadline, out).await
}

/// [`session`] over an open connection, finishing by `deadline`.
async fn session_over<T>(
    stream: T,
    user: &str,
    password: &str,
    after: AfterRead<'_>,
    deadline: Instant,
    out: &mut SessionResult,
) -> Result<(), OpError>
where
    T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
{
    let mut session = within(deadline, login(stream, user, password)).await?;
    within(deadline, read_inbox(&mut session, after, out)).await?;
    match timeout_at(deadline, session.logout()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("IMAP LOGOUT failed after a complete session: {e}"),
        Err(_) => tracing::debug!("IMAP LOGOUT timed out after a complete session"),
    }
    Ok(())
}

async fn within<R>(
    deadline: Instant,
    step: impl Future<Output = Result<R, OpError>>,
) -> Result<R, OpError> {
    timeout_at(deadline, step)
        .await
        .unwrap_or(Err(OpError::Timeout))
}

/// Reads the greeting and logs in.
async fn login<T>(stream: T, user: &str, password: &str) -> Result<Session<T>, OpError>
where
    T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
{
    let mut client = Client::new(stream);
    let greeting = match client.read_response().await {
        None => {
            return Err(OpError::Io(
                "the server closed the connection before its greeting".into(),
            ))
        }
        Some(Err(e)) => return Err(io_error(e)),
        Some(Ok(greeting)) => greeting,
    };
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok, ..
        } => {}
        Response::Data {
            status: Status::Bye,
            information,
            ..
        } => {
            let text = information.as_deref().unwrap_or("");
            return Err(OpError::Rejected(format!("BYE {}", quote(text.as_bytes()))));
        }
        other => {
            return Err(OpError::Protocol(format!(
                "unexpected greeting {}",
                quote(format!("{other:?}").as_bytes())
            )))
        }
    }
    client
        .login(user, password)
        .await
        .map_err(|(e, _client)| imap_error(e))
}

/// SELECT INBOX to EXPUNGE.
async fn read_inbox<T>(
    session: &mut Session<T>,
    after: AfterRead<'_>,
    out: &mut SessionResult,
) -> Result<(), OpError>
where
    T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
{
    command(session, "SELECT INBOX", |_| Ok(())).await?;

    let mut unseen: Vec<u32> = Vec::new();
    command(session, "UID SEARCH UNSEEN", |response| {
        if let Response::MailboxData(MailboxDatum::Search(uids)) = response {
            if unseen.len() + uids.len() > SEARCH_RESULTS_MAX {
                return Err(OpError::Protocol(format!(
                    "SEARCH found more than {SEARCH_RESULTS_MAX} messages"
                )));
            }
            unseen.extend_from_slice(uids);
        }
        Ok(())
    })
    .await?;
    unseen.sort_unstable();
    unseen.dedup();
    unseen.truncate(SESSION_MESSAGES_MAX);

    let wanted: HashSet<u32> = unseen.iter().copied().collect();
    let mut fetched: Vec<(u32, Verified)> = Vec::with_capacity(unseen.len());
    let mut got: HashSet<u32> = HashSet::with_capacity(unseen.len());
    for set in uid_sets(&unseen, UID_SET_BYTES_MAX) {
        let before = fetched.len();
        let fetch = command(session, &format!("UID FETCH {set} BODY[]"), |response| {
            let Response::Fetch(_, attributes) = response else {
                return Ok(());
            };
            let (uid, body) = uid_and_body(attributes);
            match (uid, body) {
                // A flag update, or a body we did not ask for: not ours to count.
                (_, None) => {}
                (Some(uid), Some(body)) => {
                    if wanted.contains(&uid) && got.insert(uid) {
                        fetched.push((uid, verify(body)));
                    }
                }
                // It is now \Seen, so it could not be fetched again: better to fail loudly.
                (None, Some(_)) => {
                    return Err(OpError::Protocol(
                        "a FETCH response with a body but no UID".into(),
                    ))
                }
            }
            Ok(())
        })
        .await;
        // Bodies that arrived count as retrieved even if the command then failed.
        out.retrieved
            .extend(fetched[before..].iter().map(|(_, v)| v.clone()));
        fetch?;
    }

    if fetched.is_empty() {
        return Ok(());
    }
    let mut uids: Vec<u32> = fetched.iter().map(|&(uid, _)| uid).collect();
    uids.sort_unstable();
    match after {
        AfterRead::Keep => return Ok(()),
        AfterRead::Expunge => {
            for set in uid_sets(&uids, UID_SET_BYTES_MAX) {
                command(
                    session,
                    &format!("UID STORE {set} +FLAGS (\\Deleted)"),
                    |_| Ok(()),
                )
                .await?;
            }
            command(session, "EXPUNGE", |_| Ok(())).await?;
        }
        AfterRead::MoveTo(folder) => {
            let folder = imap_string(folder);
            let mut created = false;
            for set in uid_sets(&uids, UID_SET_BYTES_MAX) {
                let line = format!("UID MOVE {set} {folder}");
                match command(session, &line, |_| Ok(())).await {
                    Err(OpError::Rejected(_)) if !created => {
                        // Most likely not there yet ([TRYCREATE]); a CREATE that fails
                        // because another session made it first is fine.
                        created = true;
                        let _ = command(session, &format!("CREATE {folder}"), |_| Ok(())).await;
                        command(session, &line, |_| Ok(())).await?;
                    }
                    other => other?,
                }
            }
        }
    }
    // Gone from INBOX (moved or expunged).
    out.deleted = fetched.into_iter().filter_map(|(_, v)| v.id).collect();
    Ok(())
}

/// Sends `line` and reads responses up to its tagged completion, handing every untagged response
/// to `on_data`. `NO`/`BAD`, or an untagged `BYE`, is a refusal; the connection closing first is an
/// I/O error.
async fn command<T>(
    session: &mut Session<T>,
    line: &str,
    mut on_data: impl FnMut(&Response<'_>) -> Result<(), OpError>,
) -> Result<(), OpError>
where
    T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
{
    let verb = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let tag = session.run_command(line).await.map_err(imap_error)?;
    loop {
        let response = match session.read_response().await {
            None => {
                return Err(OpError::Io(format!(
                    "the server closed the connection during {verb}"
                )))
            }
            Some(Err(e)) => return Err(io_error(e)),
            Some(Ok(response)) => response,
        };
        match response.parsed() {
            Response::Done {
                tag: done,
                status,
                information,
                ..
            } if *done == tag => {
                let text = information.as_deref().unwrap_or("");
                return match status {
                    Status::Ok => Ok(()),
                    Status::No | Status::Bad => Err(OpError::Rejected(format!(
                        "{verb}: {status:?} {}",
                        quote(text.as_bytes())
                    ))),
                    _ => Err(OpError::Protocol(format!(
                        "{verb}: completed with {status:?}"
                    ))),
                };
            }
            Response::Done { .. } => {
                return Err(OpError::Protocol(format!(
                    "{verb}: a completion for a command not sent"
                )))
            }
            Response::Data {
                status: Status::Bye,
                information,
                ..
            } => {
                let text = information.as_deref().unwrap_or("");
                return Err(OpError::Rejected(format!(
                    "{verb}: BYE {}",
                    quote(text.as_bytes())
                )));
            }
            Response::Continue { .. } => {
                return Err(OpError::Protocol(format!(
                    "{verb}: an unexpected continuation request"
                )))
            }
            other => on_data(other)?,
        }
    }
}

/// A folder name as an IMAP quoted string.
fn imap_string(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The UID and the full body (`BODY[]`, or `RFC822` from older servers) of a FETCH response.
fn uid_and_body<'a>(attributes: &'a [AttributeValue<'_>]) -> (Option<u32>, Option<&'a [u8]>) {
    let mut uid = None;
    let mut body = None;
    for attribute in attributes {
        match attribute {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::BodySection {
                section: None,
                data: Some(data),
                ..
            }
            | AttributeValue::Rfc822(Some(data)) => body = Some(data.as_ref()),
            _ => {}
        }
    }
    (uid, body)
}

/// `uids` (ascending, no repeats) as IMAP sequence sets (`1:3,5,9:12`), each at most
/// `bytes_max` long (unless a single range is longer).
fn uid_sets(uids: &[u32], bytes_max: usize) -> Vec<String> {
    let mut sets = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && end.checked_add(1) == Some(uids[i + 1]) {
            end = uids[i + 1];
            i += 1;
        }
        i += 1;
        let range = if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        };
        if !current.is_empty() && current.len() + 1 + range.len() > bytes_max {
            sets.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&range);
    }
    if !current.is_empty() {
        sets.push(current);
    }
    sets
}

/// async-imap's error as an [`OpError`].
fn imap_error(e: ImapError) -> OpError {
    match e {
        ImapError::No(text) => OpError::Rejected(format!("NO {}", quote(text.as_bytes()))),
        ImapError::Bad(text) => OpError::Rejected(format!("BAD {}", quote(text.as_bytes()))),
        ImapError::Io(e) => io_error(e),
        ImapError::ConnectionLost => OpError::Io("the server closed the connection".into()),
        ImapError::Validate(e) => OpError::Protocol(format!("cannot send: {e}")),
        other => OpError::Protocol(quote(other.to_string().as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::message::{CHECKSUM_HEADER, ID_HEADER};

    #[test]
    fn uid_sets_compress_ranges_and_stay_short() {
        assert_eq!(uid_sets(&[1, 2, 3, 5, 7, 8], 100), ["1:3,5,7:8"]);
        assert_eq!(uid_sets(&[42], 100), ["42"]);
        assert!(uid_sets(&[], 100).is_empty());
        assert_eq!(
            uid_sets(&[u32::MAX - 1, u32::MAX], 100),
            ["4294967294:4294967295"]
        );

        let scattered: Vec<u32> = (0..1000).map(|i| 1_000_000 + 2 * i).collect();
        let sets = uid_sets(&scattered, UID_SET_BYTES_MAX);
        assert!(sets.len() > 1);
        assert!(sets.iter().all(|s| s.len() <= UID_SET_BYTES_MAX));
        let back: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(back, scattered);
    }

    fn stored(id: &str, body: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "Received: from x\r\n\tby y;\r\n\tdate\r\n{ID_HEADER}: {id}\r\n{CHECKSUM_HEADER}: {:08x}\r\n\r\n",
            crc32fast::hash(body)
        )
        .into_bytes();
        m.extend_from_slice(body);
        m
    }

    fn fetch_reply(seq: u32, uid: u32, message: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "* {seq} FETCH (UID {uid} FLAGS (\\Seen) BODY[] {{{}}}\r\n",
            message.len()
        )
        .into_bytes();
        r.extend_from_slice(message);
        r.extend_from_slice(b")\r\n");
        r
    }

    /// A scripted server: answers each tagged command with the untagged lines `script` gives for
    /// it (without the tag) and then `<tag> <completion>`; records the commands.
    async fn serve(
        mut server: DuplexStream,
        script: impl Fn(&str) -> (Vec<u8>, &'static str) + Send + 'static,
    ) -> Vec<String> {
        let mut commands = Vec::new();
        if server.write_all(b"* OK IMAP4rev1 ready\r\n").await.is_err() {
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
                let (tag, command) = line.split_once(' ').unwrap();
                let (mut reply, completion) = script(command);
                reply.extend_from_slice(format!("{tag} {completion}\r\n").as_bytes());
                commands.push(command.to_string());
                if server.write_all(&reply).await.is_err() {
                    return commands;
                }
            }
        }
    }

    fn mailbox(command: &str) -> (Vec<u8>, &'static str) {
        match command {
            "SELECT INBOX" => (b"* 3 EXISTS\r\n".to_vec(), "OK [READ-WRITE] done"),
            "UID SEARCH UNSEEN" => (b"* SEARCH 7 5 9\r\n".to_vec(), "OK done"),
            "UID FETCH 5,7,9 BODY[]" => {
                let mut r = fetch_reply(1, 5, &stored("m5", b".dot\r\nfive\r\n"));
                r.extend(fetch_reply(2, 7, &stored("m7", b"seven\r\n")));
                // A body for a UID not asked for, and a bare flag update: both ignored.
                r.extend(fetch_reply(4, 11, &stored("m11", b"eleven\r\n")));
                r.extend_from_slice(b"* 3 FETCH (UID 9 FLAGS (\\Seen))\r\n");
                let mut corrupt = stored("m9", b"nine\r\n");
                let last = corrupt.len() - 3;
                corrupt[last] ^= 1;
                r.extend(fetch_reply(3, 9, &corrupt));
                (r, "OK done")
            }
            "LOGOUT" => (b"* BYE logging out\r\n".to_vec(), "OK done"),
            "EXPUNGE" => (
                b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n".to_vec(),
                "OK done",
            ),
            _ => (Vec::new(), "OK done"),
        }
    }

    async fn run_against(
        script: impl Fn(&str) -> (Vec<u8>, &'static str) + Send + 'static,
        after: AfterRead<'static>,
    ) -> (Result<SessionResult, OpError>, Vec<String>) {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(server_end, script));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = SessionResult::default();
        let result = session_over(client_end, "user1", "pw", after, deadline, &mut out)
            .await
            .map(|()| out);
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn fetches_verifies_flags_and_expunges() {
        let (result, commands) = run_against(mailbox, AfterRead::Expunge).await;
        let result = result.unwrap();
        let retrieved: Vec<_> = result
            .retrieved
            .iter()
            .map(|v| (v.id.clone().unwrap(), v.intact))
            .collect();
        assert_eq!(
            retrieved,
            [
                ("m5".to_string(), true),
                ("m7".to_string(), true),
                ("m9".to_string(), false)
            ]
        );
        assert_eq!(result.deleted, ["m5", "m7", "m9"]);
        assert_eq!(
            commands,
            [
                "LOGIN \"user1\" \"pw\"",
                "SELECT INBOX",
                "UID SEARCH UNSEEN",
                "UID FETCH 5,7,9 BODY[]",
                "UID STORE 5,7,9 +FLAGS (\\Deleted)",
                "EXPUNGE",
                "LOGOUT"
            ]
        );
    }

    #[tokio::test]
    async fn without_expunge_nothing_is_flagged_or_deleted() {
        let (result, commands) = run_against(mailbox, AfterRead::Keep).await;
        assert_eq!(result.unwrap().retrieved.len(), 3);
        assert!(!commands
            .iter()
            .any(|c| c.contains("STORE") || c == "EXPUNGE"));
    }

    #[tokio::test]
    async fn moving_creates_the_folder_once_when_the_server_asks_for_it() {
        let (result, commands) = run_against(
            |c| match c {
                // The folder is not there until CREATE: the first MOVE is refused.
                "UID MOVE 5,7,9 \"Read mail\"" => {
                    static CREATED: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if CREATED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        (
                            b"* OK [COPYUID 9 5,7,9 1:3] moved\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n"
                                .to_vec(),
                            "OK done",
                        )
                    } else {
                        (Vec::new(), "NO [TRYCREATE] no such mailbox")
                    }
                }
                c => mailbox(c),
            },
            AfterRead::MoveTo("Read mail"),
        )
        .await;
        assert_eq!(result.unwrap().deleted, ["m5", "m7", "m9"]);
        assert_eq!(
            commands[4..],
            [
                "UID MOVE 5,7,9 \"Read mail\"",
                "CREATE \"Read mail\"",
                "UID MOVE 5,7,9 \"Read mail\"",
                "LOGOUT"
            ]
        );
    }

    #[tokio::test]
    async fn refusals_are_rejections_not_empty_results() {
        for refused in ["UID SEARCH UNSEEN", "UID FETCH 5,7,9 BODY[]", "EXPUNGE"] {
            let (result, _) = run_against(
                move |c| {
                    if c == refused {
                        (Vec::new(), "NO [SERVERUNAVAILABLE] try later")
                    } else {
                        mailbox(c)
                    }
                },
                AfterRead::Expunge,
            )
            .await;
            assert!(
                matches!(&result, Err(OpError::Rejected(text)) if text.contains("try later")),
                "{refused}: {result:?}"
            );
        }
        let (result, _) = run_against(
            |c| match c {
                c if c.starts_with("LOGIN") => (Vec::new(), "NO [AUTHENTICATIONFAILED] bad"),
                c => mailbox(c),
            },
            AfterRead::Expunge,
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), "rejected");
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_is_an_io_error() {
        let (client_end, mut server_end) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            server_end.write_all(b"* OK ready\r\n").await.unwrap();
            let n = server_end.read(&mut buf).await.unwrap();
            let tag = buf[..n].split(|&b| b == b' ').next().unwrap().to_vec();
            server_end.write_all(&tag).await.unwrap();
            server_end.write_all(b" OK logged in\r\n").await.unwrap();
            let _ = server_end.read(&mut buf).await.unwrap();
            server_end.write_all(b"* 1 EXISTS\r\n").await.unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = session_over(
            client_end,
            "u",
            "p",
            AfterRead::Expunge,
            deadline,
            &mut SessionResult::default(),
        )
        .await;
        server.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), "io");
    }

    #[tokio::test]
    async fn a_bye_greeting_is_a_rejection_and_silence_a_timeout() {
        let (client_end, mut server_end) = tokio::io::duplex(4096);
        server_end
            .write_all(b"* BYE too many connections\r\n")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = session_over(
            client_end,
            "u",
            "p",
            AfterRead::Expunge,
            deadline,
            &mut SessionResult::default(),
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), "rejected");

        let (client_end, _server_end) = tokio::io::duplex(4096);
        let deadline = Instant::now() + Duration::from_millis(50);
        let result = session_over(
            client_end,
            "u",
            "p",
            AfterRead::Expunge,
            deadline,
            &mut SessionResult::default(),
        )
        .await;
        assert_eq!(result.unwrap_err(), OpError::Timeout);
    }
}
