//! A tolerant, streaming reader of web server access logs in the Common and Combined Log Formats.
//!
//! ```text
//! 127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326
//! 127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://x/" "Mozilla/4.08"
//! ```
//!
//! A [`Reader`] turns any [`BufRead`] into [`Entry`]s, one per good line; [`open`] reads a file,
//! plain or gzip-compressed (told by its magic bytes, not its name). Real logs are messy, so a
//! line that does not parse is counted under the first field that is wrong ([`SkipReason`]) and
//! skipped, never fatal; invalid UTF-8 is replaced, not refused; a line longer than
//! [`LINE_BYTES_MAX`] is skipped without ever being held whole. What the reader skipped, and the
//! first line number of each kind of skip, is in [`Reader::stats`].
//!
//! This module must never hold more than one line (of at most [`LINE_BYTES_MAX`] bytes) and the
//! fixed-size [`Stats`], whatever the length of the log; it reads no clock and writes nothing.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// Longest line kept; a longer one is skipped (`line too long`) as it streams past.
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Buffer of the file [`open`] reads.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// One request of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The client (`%h`): an address or a host name.
    pub host: String,
    /// The authenticated user (`%u`), unless the log says `-`.
    pub user: Option<String>,
    /// When the request was received, in Unix milliseconds (the log's zone applied).
    pub time_ms: i64,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as logged: a path (`/a.gif?x=1`) or, in a proxy's log, an absolute URL.
    pub target: String,
    pub status: u16,
    /// Bytes of the response body (`%b`); `None` for `-`.
    pub bytes: Option<u64>,
    /// The Combined Log Format's user agent, unless absent or `-`.
    pub user_agent: Option<String>,
}

/// Why a line was skipped: the first field that is wrong (or missing, when the line is cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Nothing but white space.
    Empty,
    /// Longer than [`LINE_BYTES_MAX`].
    TooLong,
    /// No client host.
    Host,
    /// No ident or authuser field.
    User,
    /// No `[dd/Mon/yyyy:HH:MM:SS +zzzz]`, or an impossible one.
    Date,
    /// No quoted `"METHOD TARGET [PROTOCOL]"` (quotes missing, `"-"`, a bad method, ...).
    Request,
    /// No three-digit status.
    Status,
    /// No byte count (digits or `-`).
    Bytes,
    /// A Combined Log Format referer or user agent whose quotes do not close.
    Trailer,
}

impl SkipReason {
    pub const ALL: [SkipReason; 9] = [
        SkipReason::Empty,
        SkipReason::TooLong,
        SkipReason::Host,
        SkipReason::User,
        SkipReason::Date,
        SkipReason::Request,
        SkipReason::Status,
        SkipReason::Bytes,
        SkipReason::Trailer,
    ];

    /// A short name, for counts and logs.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::Empty => "empty line",
            SkipReason::TooLong => "line too long",
            SkipReason::Host => "bad host",
            SkipReason::User => "bad ident or authuser",
            SkipReason::Date => "bad date",
            SkipReason::Request => "bad request line",
            SkipReason::Status => "bad status",
            SkipReason::Bytes => "bad byte count",
            SkipReason::Trailer => "bad referer or user agent",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a reader has seen: lines, entries, and skipped lines by reason (a fixed-size table, one
/// slot per [`SkipReason`], so it stays small however bad the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines read, good or bad.
    pub lines: u64,
    /// Lines that became entries.
    pub entries: u64,
    skipped: [u64; SkipReason::ALL.len()],
    /// The line number (from 1) of the first skip of each reason, 0 if none.
    first_line: [u64; SkipReason::ALL.len()],
}

impl Stats {
    /// Lines skipped, all reasons together.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Lines skipped for `reason`.
    pub fn skipped(&self, reason: SkipReason) -> u64 {
        self.skipped[reason.slot()]
    }

    /// Every reason with skips: `(reason, lines, line number of the first)`.
    pub fn skips(&self) -> impl Iterator<Item = (SkipReason, u64, u64)> + '_ {
        SkipReason::ALL
            .into_iter()
            .filter(|r| self.skipped[r.slot()] > 0)
            .map(|r| (r, self.skipped[r.slot()], self.first_line[r.slot()]))
    }

    fn skip(&mut self, reason: SkipReason, line: u64) {
        let slot = reason.slot();
        if self.skipped[slot] == 0 {
            self.first_line[slot] = line;
        }
        self.skipped[slot] += 1;
    }
}

impl fmt::Display for Stats {
    /// `1000 lines, 997 entries, 3 skipped (bad date: 2, first at line 17; empty line: 1, ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lines, {} entries, {} skipped",
            self.lines,
            self.entries,
            self.skipped_total()
        )?;
        let mut first = true;
        for (reason, count, line) in self.skips() {
            f.write_str(if first { " (" } else { "; " })?;
            first = false;
            write!(f, "{reason}: {count}, first at line {line}")?;
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The entries of a log, streamed: `Ok(entry)` per good line, bad lines counted and skipped. An
/// I/O error (a truncated gzip stream, say) is yielded once, and then the reader ends.
pub struct Reader<R> {
    input: R,
    line: Vec<u8>,
    stats: Stats,
    done: bool,
}

/// Opens an access log, plain or gzip-compressed (several gzip members, as `cat a.gz b.gz`
/// makes, are read one after the other).
pub fn open(path: &Path) -> io::Result<Reader<Box<dyn BufRead + Send>>> {
    let file = File::open(path)?;
    let mut buffered = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let gzip = loop {
        match buffered.fill_buf() {
            Ok(head) => break head.starts_with(&GZIP_MAGIC),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let input: Box<dyn BufRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            flate2::bufread::MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    };
    Ok(Reader::new(input))
}

/// What reading one line gave.
enum Line {
    /// A line (without its end) is in the buffer.
    Kept,
    /// The line was longer than the limit; its bytes are gone.
    TooLong,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader {
            input,
            line: Vec::new(),
            stats: Stats::default(),
            done: false,
        }
    }

    /// What has been read so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next line into `self.line`, without its `\n` (or `\r\n`); `None` at the end. Never
    /// holds more than [`LINE_BYTES_MAX`] bytes of it.
    fn read_line(&mut self) -> io::Result<Option<Line>> {
        self.line.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let available = match self.input.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let (chunk, used, ended) = match available.iter().position(|b| *b == b'\n') {
                Some(end) => (&available[..end], end + 1, true),
                None => (available, available.len(), false),
            };
            if !too_long {
                if self.line.len() + chunk.len() > LINE_BYTES_MAX + 1 {
                    // One byte of slack for a `\r` before the `\n`, checked below.
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            self.input.consume(used);
            if ended {
                break;
            }
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        if too_long || self.line.len() > LINE_BYTES_MAX {
            self.line.clear();
            return Ok(Some(Line::TooLong));
        }
        Ok(Some(Line::Kept))
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<io::Result<Entry>> {
        while !self.done {
            let read = match self.read_line() {
                Ok(Some(read)) => read,
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.stats.lines += 1;
            let line_no = self.stats.lines;
            let parsed = match read {
                Line::TooLong => Err(SkipReason::TooLong),
                Line::Kept => parse_line(&String::from_utf8_lossy(&self.line)),
            };
            match parsed {
                Ok(entry) => {
                    self.stats.entries += 1;
                    return Some(Ok(entry));
                }
                Err(reason) => self.stats.skip(reason, line_no),
            }
        }
        None
    }
}

/// Parses one line (without its line end) of the Common or Combined Log Format. Fields after the
/// user agent, and unquoted fields after the byte count (some servers add a response time), are
/// ignored.
pub fn parse_line(line: &str) -> Result<Entry, SkipReason> {
    if line.trim().is_empty() {
        return Err(SkipReason::Empty);
    }
    let mut rest = line;
    let host = token(&mut rest).ok_or(SkipReason::Host)?;
    if host.chars().any(char::is_control) {
        return Err(SkipReason::Host);
    }
    // The ident is ignored; the authuser runs to the date (some servers log it unescaped).
    token(&mut rest).ok_or(SkipReason::User)?;
    let open = rest.find('[').ok_or(SkipReason::Date)?;
    let field = &rest[..open];
    let user = field.trim_matches(' ');
    if user.is_empty() || !field.ends_with(' ') || user.chars().any(char::is_control) {
        return Err(SkipReason::User);
    }
    rest = &rest[open + 1..];
    let close = rest.find(']').ok_or(SkipReason::Date)?;
    let time_ms = parse_time(&rest[..close]).ok_or(SkipReason::Date)?;
    rest = rest[close + 1..]
        .strip_prefix(' ')
        .ok_or(SkipReason::Request)?;
    let request = quoted(&mut rest).ok_or(SkipReason::Request)?;
    let (method, target) = parse_request(&request).ok_or(SkipReason::Request)?;
    let status = token(&mut rest).ok_or(SkipReason::Status)?;
    let status: u16 = match status.parse() {
        Ok(s) if status.len() == 3 && (100..=999).contains(&s) => s,
        _ => return Err(SkipReason::Status),
    };
    let bytes = match token(&mut rest).ok_or(SkipReason::Bytes)? {
        "-" => None,
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse().map_err(|_| SkipReason::Bytes)?)
        }
        _ => return Err(SkipReason::Bytes),
    };
    let mut user_agent = None;
    rest = rest.trim_start_matches(' ');
    if rest.starts_with('"') {
        quoted(&mut rest).ok_or(SkipReason::Trailer)?;
        rest = rest.trim_start_matches(' ');
        if rest.starts_with('"') {
            let agent = quoted(&mut rest).ok_or(SkipReason::Trailer)?;
            user_agent = (agent != "-" && !agent.is_empty()).then_some(agent);
        }
    }
    Ok(Entry {
        host: host.to_string(),
        user: (user != "-").then(|| user.to_string()),
        time_ms,
        method,
        target,
        status,
        bytes,
        user_agent,
    })
}

/// The next space-separated field (spaces before it skipped); `None` if there is none.
fn token<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    let (field, after) = s.split_at(end);
    *rest = after;
    Some(field)
}

/// A `"quoted"` field (spaces before it skipped), `\"` and `\\` unescaped (other escapes, such as
/// Apache's `\x16`, kept as written); `None` if it does not start with a quote or never closes.
fn quoted(rest: &mut &str) -> Option<String> {
    let s = rest.trim_start_matches(' ').strip_prefix('"')?;
    // Most fields have no escapes: taken whole.
    let stop = s.find(['"', '\\'])?;
    if s.as_bytes()[stop] == b'"' {
        *rest = &s[stop + 1..];
        return Some(s[..stop].to_string());
    }
    let mut out = String::with_capacity(s.len().min(256));
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                *rest = &s[i + 1..];
                return Some(out);
            }
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, e)) => {
                    out.push('\\');
                    out.push(e);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// `METHOD TARGET [HTTP/x.y]` into the method and target. A target with unescaped spaces (as
/// some servers log it) is kept whole when the line ends with the protocol.
fn parse_request(request: &str) -> Option<(String, String)> {
    // The common shape, `GET /a HTTP/1.0` with single spaces, without collecting the parts.
    let simple = request.split_once(' ').and_then(|(method, rest)| {
        let (target, protocol) = rest.split_once(' ').unwrap_or((rest, ""));
        (!method.is_empty()
            && !target.is_empty()
            && (protocol.is_empty() || (protocol.starts_with("HTTP/") && !protocol.contains(' '))))
        .then_some((method, target))
    });
    if let Some((method, target)) = simple {
        return checked_request(method, target.to_string());
    }
    let parts: Vec<&str> = request.split(' ').filter(|p| !p.is_empty()).collect();
    let (method, target) = match parts.as_slice() {
        [method, target] => (*method, target.to_string()),
        [method, middle @ .., protocol] if protocol.starts_with("HTTP/") => {
            (*method, middle.join(" "))
        }
        _ => return None,
    };
    checked_request(method, target)
}

fn checked_request(method: &str, target: String) -> Option<(String, String)> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return None;
    }
    if target.is_empty() || target.chars().any(char::is_control) {
        return None;
    }
    Some((method.to_string(), target))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `10/Oct/2000:13:55:36 -0700` into Unix milliseconds; `None` unless it is exactly that shape
/// with a real date, a time of day (a leap second's `:60` allowed) and a zone within ±23:59.
fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 26
        || b[2] != b'/'
        || b[6] != b'/'
        || b[11] != b':'
        || b[14] != b':'
        || b[17] != b':'
        || b[20] != b' '
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &b[range];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let day = number(0..2)?;
    let month = MONTHS.iter().position(|m| m.as_bytes() == &b[3..6])? as i64 + 1;
    let year = number(7..11)?;
    let (hour, minute, second) = (number(12..14)?, number(15..17)?, number(18..20)?);
    let sign = match b[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (zone_hours, zone_minutes) = (number(22..24)?, number(24..26)?);
    if !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || zone_hours > 23
        || zone_minutes > 59
    {
        return None;
    }
    let local_s = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let offset_s = sign * (zone_hours * 3600 + zone_minutes * 60);
    Some((local_s - offset_s) * 1000)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day counted from 1970-01-01: `(year, month, day)`.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A Unix time in seconds as a CLF date in UTC: `01/Nov/1996:00:00:00 +0000`.
pub fn format_time(unix_s: i64) -> String {
    format_time_in(unix_s, 0)
}

/// A Unix time in seconds as a CLF date in the zone `offset_s` seconds east of UTC (whole
/// minutes, within ±23:59; others are clamped): `01/Nov/1996:00:00:00 -0800`.
pub fn format_time_in(unix_s: i64, offset_s: i32) -> String {
    let offset_min = (i64::from(offset_s) / 60).clamp(-(23 * 60 + 59), 23 * 60 + 59);
    let local_s = unix_s + offset_min * 60;
    let (year, month, day) = civil_from_days(local_s.div_euclid(86_400));
    let of_day = local_s.rem_euclid(86_400);
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} {}{:02}{:02}",
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        if offset_min < 0 { '-' } else { '+' },
        offset_min.abs() / 60,
        offset_min.abs() % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    const APACHE: &str =
        r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
    const APACHE_COMBINED: &str = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
    /// 10 Oct 2000 20:55:36 UTC.
    const APACHE_MS: i64 = 971_211_336_000;

    fn read_all(text: &[u8]) -> (Vec<Entry>, Stats) {
        let mut reader = Reader::new(text);
        let entries = reader.by_ref().map(Result::unwrap).collect();
        (entries, reader.stats().clone())
    }

    #[test]
    fn clf_reads_the_apache_examples() {
        let entry = parse_line(APACHE).unwrap();
        assert_eq!(
            entry,
            Entry {
                host: "127.0.0.1".into(),
                user: Some("frank".into()),
                time_ms: APACHE_MS,
                method: "GET".into(),
                target: "/apache_pb.gif".into(),
                status: 200,
                bytes: Some(2326),
                user_agent: None,
            }
        );
        let combined = parse_line(APACHE_COMBINED).unwrap();
        assert_eq!(
            combined.user_agent.as_deref(),
            Some("Mozilla/4.08 [en] (Win98; I ;Nav)")
        );
        assert_eq!(
            Entry {
                user_agent: None,
                ..combined
            },
            entry
        );
    }

    #[test]
    fn clf_reads_combined_variants_and_absent_fields() {
        let e = parse_line(
            r#"proxy.example - - [01/Nov/1996:00:00:00 +0000] "GET http://www.cnn.com/ HTTP/1.0" 304 - "-" "-""#,
        )
        .unwrap();
        assert_eq!(e.host, "proxy.example");
        assert_eq!(e.user, None);
        assert_eq!(e.target, "http://www.cnn.com/");
        assert_eq!((e.status, e.bytes, e.user_agent), (304, None, None));
        // Escaped quotes in the user agent, extra fields after it, a CRLF ending.
        let (entries, stats) = read_all(
            b"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] \"POST /form?a=1 HTTP/1.1\" 201 12 \"-\" \"say \\\"hi\\\" \\\\o/\" 0.003 extra\r\n",
        );
        assert_eq!(stats.entries, 1, "{stats}");
        assert_eq!(entries[0].user_agent.as_deref(), Some("say \"hi\" \\o/"));
        assert_eq!(entries[0].method, "POST");
        // An unquoted response time after the bytes (no referer): ignored.
        let e = parse_line(r#"h - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5 1234"#)
            .unwrap();
        assert_eq!(e.bytes, Some(5));
        // HTTP/0.9 has no protocol; a target with unescaped spaces is kept whole.
        let e = parse_line(r#"h - - [01/Jan/2024:00:00:00 +0000] "GET /old" 200 5"#).unwrap();
        assert_eq!(e.target, "/old");
        let e = parse_line(r#"h - - [01/Jan/2024:00:00:00 +0000] "GET /a b.html HTTP/1.1" 404 0"#)
            .unwrap();
        assert_eq!(e.target, "/a b.html");
        // An authuser with a space, as some servers log it unescaped.
        let e = parse_line(r#"h - jo smith [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1"#)
            .unwrap();
        assert_eq!(e.user.as_deref(), Some("jo smith"));
    }

    #[test]
    fn clf_applies_the_zone() {
        let at = |zone: &str| {
            parse_line(&format!(
                r#"h - - [10/Oct/2000:13:55:36 {zone}] "GET / HTTP/1.0" 200 1"#
            ))
            .unwrap()
            .time_ms
        };
        assert_eq!(at("-0700"), APACHE_MS);
        assert_eq!(at("+0000"), APACHE_MS - 7 * 3_600_000);
        assert_eq!(
            at("+0530"),
            APACHE_MS - 7 * 3_600_000 - 5 * 3_600_000 - 30 * 60_000
        );
        // Across a year's end and a leap day.
        let e = parse_line(r#"h - - [31/Dec/1999:23:59:59 -0100] "GET / HTTP/1.0" 200 1"#).unwrap();
        assert_eq!(e.time_ms, 946_688_399_000); // 2000-01-01T00:59:59Z
        let e = parse_line(r#"h - - [29/Feb/2000:12:00:00 +0000] "GET / HTTP/1.0" 200 1"#).unwrap();
        assert_eq!(e.time_ms, 951_825_600_000);
    }

    #[test]
    fn clf_formats_times_it_parses() {
        assert_eq!(format_time(846_806_400), "01/Nov/1996:00:00:00 +0000");
        for unix_s in [0, 951_825_600, 971_236_536, 4_102_444_799, -86_400] {
            let line = format!(r#"h - - [{}] "GET / HTTP/1.0" 200 1"#, format_time(unix_s));
            assert_eq!(parse_line(&line).unwrap().time_ms, unix_s * 1000, "{line}");
            for offset_s in [-8 * 3600, 5 * 3600 + 1800, -(23 * 3600 + 59 * 60)] {
                let line = format!(
                    r#"h - - [{}] "GET / HTTP/1.0" 200 1"#,
                    format_time_in(unix_s, offset_s)
                );
                assert_eq!(parse_line(&line).unwrap().time_ms, unix_s * 1000, "{line}");
            }
        }
        // TranSend's traces began at midnight, Pacific time.
        assert_eq!(
            format_time_in(846_835_200, -8 * 3600),
            "01/Nov/1996:00:00:00 -0800"
        );
    }

    #[test]
    fn clf_counts_and_skips_every_malformed_shape() {
        let good = r#"h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 1"#;
        let cases: &[(&str, SkipReason)] = &[
            ("", SkipReason::Empty),
            ("   \t", SkipReason::Empty),
            (
                " - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::User,
            ),
            ("h", SkipReason::User),
            ("h -", SkipReason::Date),
            (
                "h - - 10/Oct/2000:13:55:36 -0700 \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - -[10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::User,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700 \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [32/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [29/Feb/1900:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [10/Okt/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [10/Oct/2000:24:00:00 -0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 0700] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [10/Oct/2000:13:55:36] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [2000-10-10T13:55:36Z] \"GET / HTTP/1.0\" 200 1",
                SkipReason::Date,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] GET / HTTP/1.0 200 1",
                SkipReason::Request,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0 200 1",
                SkipReason::Request,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"-\" 408 -",
                SkipReason::Request,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET\" 400 -",
                SkipReason::Request,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"\\x16\\x03\\x01\\x02\" 400 -",
                SkipReason::Request,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\"",
                SkipReason::Status,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" OK 1",
                SkipReason::Status,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 2000 1",
                SkipReason::Status,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 099 1",
                SkipReason::Status,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200",
                SkipReason::Bytes,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 12k",
                SkipReason::Bytes,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 99999999999999999999999",
                SkipReason::Bytes,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1 \"http://x/",
                SkipReason::Trailer,
            ),
            (
                "h - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 1 \"-\" \"Mozilla",
                SkipReason::Trailer,
            ),
        ];
        let mut text = String::new();
        for (line, reason) in cases {
            assert_eq!(parse_line(line), Err(*reason), "{line:?}");
            text.push_str(good);
            text.push('\n');
            text.push_str(line);
            text.push('\n');
        }
        let (entries, stats) = read_all(text.as_bytes());
        assert_eq!(entries.len(), cases.len());
        assert_eq!(stats.lines, 2 * cases.len() as u64);
        assert_eq!(stats.skipped_total(), cases.len() as u64);
        assert_eq!(stats.skipped(SkipReason::Date), 10);
        // The first bad date is case 4, on line 10 (each case follows a good line).
        assert!(
            stats.to_string().contains("bad date: 10, first at line 10"),
            "{stats}"
        );
    }

    #[test]
    fn clf_survives_binary_garbage_and_invalid_utf8() {
        let mut text: Vec<u8> = Vec::new();
        text.extend_from_slice(APACHE.as_bytes());
        text.push(b'\n');
        // Noise, NULs and invalid UTF-8, some of it without a line end.
        let mut state = 0x1234_5678_u32;
        for _ in 0..2000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            text.push((state >> 24) as u8);
        }
        text.push(b'\n');
        // A good line with invalid UTF-8 in its user agent survives, lossily.
        text.extend_from_slice(APACHE.as_bytes());
        text.extend_from_slice(b" \"-\" \"agent \xff\xfe\"\n");
        // A truncated last line without its end.
        text.extend_from_slice(&APACHE.as_bytes()[..40]);
        let (entries, stats) = read_all(&text);
        assert_eq!(entries.len(), 2, "{stats}");
        assert_eq!(
            entries[1].user_agent.as_deref(),
            Some("agent \u{fffd}\u{fffd}")
        );
        assert_eq!(stats.entries, 2);
        assert!(stats.skipped_total() >= 2, "{stats}");
        assert_eq!(stats.lines, stats.entries + stats.skipped_total());
    }

    #[test]
    fn clf_skips_a_long_line_without_holding_it() {
        /// Hands out a line of 10 MiB in 4 KiB pieces, then a good line.
        struct Long {
            left: usize,
            tail: &'static [u8],
            chunk: Vec<u8>,
        }
        impl Read for Long {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                unreachable!("read through BufRead")
            }
        }
        impl BufRead for Long {
            fn fill_buf(&mut self) -> io::Result<&[u8]> {
                if self.left > 0 {
                    let n = self.left.min(self.chunk.len());
                    Ok(&self.chunk[..n])
                } else {
                    Ok(self.tail)
                }
            }
            fn consume(&mut self, n: usize) {
                if self.left > 0 {
                    self.left -= n;
                } else {
                    self.tail = &self.tail[n..];
                }
            }
        }
        let tail = format!("\n{APACHE}\n").leak().as_bytes();
        let mut reader = Reader::new(Long {
            left: 10 << 20,
            tail,
            chunk: vec![b'x'; 4096],
        });
        let entries: Vec<Entry> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(reader.stats().skipped(SkipReason::TooLong), 1);
        assert!(reader.line.capacity() <= 2 * LINE_BYTES_MAX);

        // The limit itself is fine, one byte more is not (a CRLF's `\r` does not count).
        let at_limit = |extra: usize, crlf: bool| {
            let mut line = APACHE.as_bytes().to_vec();
            line.resize(LINE_BYTES_MAX + extra, b' ');
            if crlf {
                line.push(b'\r');
            }
            line.push(b'\n');
            read_all(&line).1
        };
        assert_eq!(at_limit(0, false).entries, 1);
        assert_eq!(at_limit(0, true).entries, 1);
        assert_eq!(at_limit(1, false).skipped(SkipReason::TooLong), 1);
        assert_eq!(at_limit(1, true).skipped(SkipReason::TooLong), 1);
    }

    #[test]
    fn clf_opens_plain_and_gzip_files_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!(
                "10.0.0.{} - - [01/Nov/1996:00:{:02}:{:02} +0000] \"GET /obj/{i}.gif HTTP/1.0\" 200 {}\n",
                i % 256,
                i / 60 % 60,
                i % 60,
                i * 7
            ));
        }
        text.push_str("garbage\n");
        let plain = dir.path().join("access.log");
        std::fs::write(&plain, &text).unwrap();
        // Two gzip members, as `cat day1.gz day2.gz` makes.
        let gz = dir.path().join("access.log.gz");
        let (first, second) = text.split_at(text.len() / 2);
        let mut bytes = Vec::new();
        for part in [first, second] {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(part.as_bytes()).unwrap();
            bytes.extend(encoder.finish().unwrap());
        }
        std::fs::write(&gz, &bytes).unwrap();
        // A gzip file under a plain name is still read as gzip (magic bytes, not the name).
        let disguised = dir.path().join("access.txt");
        std::fs::write(&disguised, &bytes).unwrap();
        let mut results = Vec::new();
        for path in [&plain, &gz, &disguised] {
            let mut reader = open(path).unwrap();
            let entries: Vec<Entry> = reader.by_ref().map(Result::unwrap).collect();
            assert_eq!(entries.len(), 1000, "{}", path.display());
            assert_eq!(reader.stats().skipped_total(), 1);
            results.push(entries);
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
        assert_eq!(results[0][999].bytes, Some(6993));

        // A gzip stream cut short is an I/O error, once, after the entries before the cut.
        let cut = dir.path().join("cut.log.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 4]).unwrap();
        let mut reader = open(&cut).unwrap();
        let results: Vec<io::Result<Entry>> = reader.by_ref().collect();
        assert!(results.last().unwrap().is_err());
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert!(reader.next().is_none());
    }

    #[test]
    fn clf_reads_the_fixture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/access-10.log");
        let mut reader = open(&path).unwrap();
        let entries: Vec<Entry> = reader.by_ref().map(Result::unwrap).collect();
        let stats = reader.stats();
        assert_eq!(stats.lines, 10);
        assert_eq!(entries.len(), 7, "{stats}");
        assert_eq!(stats.skipped(SkipReason::Date), 1, "{stats}");
        assert_eq!(stats.skipped(SkipReason::Request), 1, "{stats}");
        assert_eq!(stats.skipped(SkipReason::Status), 1, "{stats}");
        assert_eq!(entries[0].target, "/index.html");
        assert_eq!(entries[1].user.as_deref(), Some("alice"));
        assert!(entries.iter().any(|e| e.user_agent.is_some()));
        assert!(entries.iter().any(|e| e.target.starts_with("http://")));
    }
}
