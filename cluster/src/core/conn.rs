//! One client connection's buffered I/O, shared by the SMTP, POP3 and IMAP front ends: bounded
//! line reading, literal reading, the idle timeout, and the node's shutdown signal.
//!
//! A line longer than the limit is reported as [`Input::TooLong`] as soon as the limit is passed,
//! without waiting for its end (a client that sends 2 MB and no CRLF still gets its error reply);
//! the rest of that line is skipped on the next read. Nothing here ever buffers more than the line
//! limit, or a literal the caller has already checked against its limit.

use std::io;
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::watch;

/// What the next read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A line, without its CRLF (or bare LF).
    Line(Vec<u8>),
    /// The line passed the limit; the caller answers with the protocol's error. Carries the
    /// line's first bytes (at most [`TOO_LONG_HEAD_BYTES`]), so IMAP can find the command's tag.
    TooLong(Vec<u8>),
    /// The client closed the connection.
    Eof,
    /// Nothing arrived within the idle timeout.
    Timeout,
    /// The node is shutting down.
    Shutdown,
}

/// How much of an over-long line [`Input::TooLong`] hands back.
pub const TOO_LONG_HEAD_BYTES: usize = 64;

pub struct Conn<R, W> {
    reader: BufReader<R>,
    writer: BufWriter<W>,
    line_bytes_max: usize,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
    /// Inside an over-long line: skip to its end before reading the next line.
    discarding: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    pub fn new(
        reader: R,
        writer: W,
        line_bytes_max: usize,
        idle: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Conn {
            reader: BufReader::with_capacity(16 * 1024, reader),
            writer: BufWriter::with_capacity(16 * 1024, writer),
            line_bytes_max,
            idle,
            shutdown,
            discarding: false,
        }
    }

    /// Reads the next line, honouring the idle timeout and shutdown.
    pub async fn next_line(&mut self) -> io::Result<Input> {
        // Answers are sent before waiting for the client, but not while a whole pipelined
        // command is already buffered: that batches the replies to a pipelined group.
        if !self.reader.buffer().contains(&b'\n') {
            self.writer.flush().await?;
        }
        if *self.shutdown.borrow() {
            return Ok(Input::Shutdown);
        }
        let idle = self.idle;
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = tokio::time::timeout(idle, self.read_line()) => match r {
                Ok(r) => r,
                Err(_) => Ok(Input::Timeout),
            },
            _ = shutdown.wait_for(|stop| *stop) => Ok(Input::Shutdown),
        }
    }

    /// Reads a line for the body of a message (SMTP DATA): only the idle timeout applies, so a
    /// shutdown does not cut a message in half.
    pub async fn next_data_line(&mut self) -> io::Result<Input> {
        match tokio::time::timeout(self.idle, self.read_line()).await {
            Ok(r) => r,
            Err(_) => Ok(Input::Timeout),
        }
    }

    async fn read_line(&mut self) -> io::Result<Input> {
        let mut line = Vec::new();
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(Input::Eof);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |i| i + 1);
            if self.discarding {
                self.reader.consume(take);
                if newline.is_some() {
                    self.discarding = false;
                }
                continue;
            }
            if line.len() + take > self.line_bytes_max {
                let mut head = line;
                head.extend_from_slice(&available[..take.min(TOO_LONG_HEAD_BYTES)]);
                head.truncate(TOO_LONG_HEAD_BYTES);
                self.reader.consume(take);
                self.discarding = newline.is_none();
                return Ok(Input::TooLong(head));
            }
            line.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if newline.is_some() {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Input::Line(line));
            }
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal); `n` must already be within its limit.
    pub async fn read_literal(&mut self, n: usize) -> io::Result<Option<Vec<u8>>> {
        self.writer.flush().await?;
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(self.idle, self.reader.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Ok(Some(buf)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Queues bytes for the client; they are sent at the next read or [`Conn::flush`].
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    /// Whether the client has already sent more input (pipelined commands).
    pub fn has_buffered_input(&self) -> bool {
        !self.reader.buffer().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Input> {
        let (_tx, rx) = watch::channel(false);
        let mut conn = Conn::new(input, tokio::io::sink(), max, Duration::from_secs(5), rx);
        let mut out = Vec::new();
        loop {
            let i = conn.next_line().await.unwrap();
            let end = i == Input::Eof;
            out.push(i);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_crlf_and_bare_lf() {
        let got = lines(b"A\r\nB\nC", 100).await;
        assert_eq!(
            got,
            vec![
                Input::Line(b"A".to_vec()),
                Input::Line(b"B".to_vec()),
                Input::Eof
            ]
        );
    }

    #[tokio::test]
    async fn long_line_is_reported_once_and_skipped() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\nNEXT\r\n");
        let got = lines(&input, 1000).await;
        assert_eq!(
            got,
            vec![
                Input::TooLong(vec![b'x'; TOO_LONG_HEAD_BYTES]),
                Input::Line(b"NEXT".to_vec()),
                Input::Eof
            ]
        );
    }

    #[tokio::test]
    async fn line_at_exact_limit_is_accepted() {
        let mut input = vec![b'y'; 8];
        input.extend_from_slice(b"\r\n");
        let got = lines(&input, 10).await;
        assert_eq!(got, vec![Input::Line(vec![b'y'; 8]), Input::Eof]);
    }
}
