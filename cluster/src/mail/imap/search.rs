//! SEARCH criteria (RFC 3501 6.4.4) and their evaluation against one message at a time.
//!
//! Evaluation is pure: the session hands in a message's metadata and, only when some key needs
//! it ([`SearchKey::needs_body`]), its bytes — so a search over a large mailbox reads one message
//! at a time and none at all for flag, size, date and set searches. Text matching is a
//! case-insensitive substring test on header values (with RFC 2047 words decoded) or on the raw
//! body (transfer encodings are not undone); it never panics on odd message text.

use chrono::NaiveDate;

use super::mime;
use super::seqset::SeqSet;
use crate::mail::store::Flags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    /// `\Recent` in this session.
    Recent,
    /// The flag is set.
    Flag(Flags),
    /// The flag is not set.
    NotFlag(Flags),
    Seq(SeqSet),
    Uid(SeqSet),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
    Larger(u64),
    Smaller(u64),
    /// A header field (lower-case name) contains the string; an empty string matches presence.
    Header(String, Vec<u8>),
    Body(Vec<u8>),
    Text(Vec<u8>),
    /// Internal date comparisons (by UTC day).
    Before(NaiveDate),
    On(NaiveDate),
    Since(NaiveDate),
    /// `Date:` header comparisons by the date as written (its time and zone ignored, RFC 3501
    /// 6.4.4); messages without a parseable date never match.
    SentBefore(NaiveDate),
    SentOn(NaiveDate),
    SentSince(NaiveDate),
}

/// One message as a search sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Flags,
    /// `\Recent` in this session.
    pub recent: bool,
    /// The message bytes; present whenever the key needs them.
    pub bytes: Option<&'a [u8]>,
}

/// What `*` means for sets in this search.
#[derive(Debug, Clone, Copy)]
pub struct Stars {
    pub max_seq: u32,
    pub max_uid: u32,
}

impl SearchKey {
    pub fn needs_body(&self) -> bool {
        match self {
            SearchKey::Header(..)
            | SearchKey::Body(_)
            | SearchKey::Text(_)
            | SearchKey::SentBefore(_)
            | SearchKey::SentOn(_)
            | SearchKey::SentSince(_) => true,
            SearchKey::Not(k) => k.needs_body(),
            SearchKey::Or(a, b) => a.needs_body() || b.needs_body(),
            SearchKey::And(keys) => keys.iter().any(SearchKey::needs_body),
            _ => false,
        }
    }

    pub fn matches(&self, m: &Candidate<'_>, stars: Stars) -> bool {
        let bytes = m.bytes.unwrap_or_default();
        match self {
            SearchKey::All => true,
            SearchKey::Recent => m.recent,
            SearchKey::Flag(f) => m.flags.contains(f),
            SearchKey::NotFlag(f) => !m.flags.contains(f),
            SearchKey::Seq(set) => set.resolve(stars.max_seq).contains(m.seq),
            SearchKey::Uid(set) => set.resolve(stars.max_uid).contains(m.uid),
            SearchKey::Not(k) => !k.matches(m, stars),
            SearchKey::Or(a, b) => a.matches(m, stars) || b.matches(m, stars),
            SearchKey::And(keys) => keys.iter().all(|k| k.matches(m, stars)),
            SearchKey::Larger(n) => m.size > *n,
            SearchKey::Smaller(n) => m.size < *n,
            SearchKey::Header(name, needle) => header_contains(bytes, name, needle),
            SearchKey::Body(needle) => {
                let (_, body) = mime::split(bytes, 0..bytes.len());
                contains_ignore_case(&bytes[body], needle)
            }
            SearchKey::Text(needle) => contains_ignore_case(bytes, needle),
            SearchKey::Before(d) => day(m.internal_date).is_some_and(|x| x < *d),
            SearchKey::On(d) => day(m.internal_date) == Some(*d),
            SearchKey::Since(d) => day(m.internal_date).is_some_and(|x| x >= *d),
            SearchKey::SentBefore(d) => sent_day(bytes).is_some_and(|x| x < *d),
            SearchKey::SentOn(d) => sent_day(bytes) == Some(*d),
            SearchKey::SentSince(d) => sent_day(bytes).is_some_and(|x| x >= *d),
        }
    }
}

fn day(unix_seconds: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp(unix_seconds, 0).map(|t| t.date_naive())
}

fn sent_day(msg: &[u8]) -> Option<NaiveDate> {
    let (header, _) = mime::split(msg, 0..msg.len());
    let fields = mime::fields(&msg[header]);
    let value = mime::value(&fields, "date")?;
    written_day(&String::from_utf8_lossy(&mime::unfold(value)))
}

/// The day an RFC 5322 date names as written: `[Day,] D Mon YYYY ...` (the time and zone that
/// follow are ignored; two- and three-digit years as RFC 5322 4.3 says).
pub fn written_day(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    let text = match text.split_once(',') {
        Some((_, rest)) => rest,
        None => text,
    };
    let mut words = text
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty());
    let day: u32 = words.next()?.parse().ok()?;
    let month = words.next()?.get(..3)?.to_ascii_lowercase();
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| *m == month)? as u32
        + 1;
    let year_text = words.next()?;
    let year: i32 = year_text.parse().ok()?;
    let year = match (year_text.len(), year) {
        (2, y) if y < 50 => 2000 + y,
        (2, y) => 1900 + y,
        (3, y) => 1900 + y,
        (_, y) => y,
    };
    NaiveDate::from_ymd_opt(year, month, day)
}

/// Address fields searched by the addresses in them (display names decoded), as ENVELOPE
/// shows them, besides the raw text.
const ADDRESS_FIELDS: [&str; 6] = ["from", "to", "cc", "bcc", "sender", "reply-to"];

fn header_contains(msg: &[u8], name: &str, needle: &[u8]) -> bool {
    let (header, _) = mime::split(msg, 0..msg.len());
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    mime::fields(&msg[header])
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .any(|f| {
            if needle.is_empty() {
                return true;
            }
            if ADDRESS_FIELDS.contains(&name) {
                let unfolded = String::from_utf8_lossy(&mime::unfold(f.value)).into_owned();
                let list = super::address::parse_list(&unfolded);
                let parsed = list.iter().filter(|a| !a.is_group_marker()).any(|a| {
                    let name = a.name.as_deref().map(decode_words).unwrap_or_default();
                    name.to_lowercase().contains(&needle)
                        || a.spec().to_lowercase().contains(&needle)
                });
                if parsed {
                    return true;
                }
            }
            // Match the decoded value (what the user sees) and, failing that, the raw one.
            let raw = String::from_utf8_lossy(&mime::unfold(f.value)).into_owned();
            let decoded =
                mime::guard(|| mailparse::parse_header(f.raw).map(|(h, _)| h.get_value()))
                    .and_then(Result::ok)
                    .unwrap_or_default();
            decoded.to_lowercase().contains(&needle) || raw.to_lowercase().contains(&needle)
        })
}

/// A display name with its RFC 2047 encoded words decoded (as it was written, if not valid).
fn decode_words(name: &str) -> String {
    if !name.contains("=?") {
        return name.to_string();
    }
    let field = format!("X: {name}");
    mime::guard(|| mailparse::parse_header(field.as_bytes()).map(|(h, _)| h.get_value()))
        .and_then(Result::ok)
        .unwrap_or_else(|| name.to_string())
}

/// Substring test ignoring ASCII case (non-ASCII bytes must match exactly).
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::imap::seqset::Bound;

    fn candidate(bytes: &[u8]) -> Candidate<'_> {
        Candidate {
            seq: 2,
            uid: 7,
            size: bytes.len() as u64,
            internal_date: 1_700_000_000,
            flags: Flags::SEEN,
            recent: false,
            bytes: Some(bytes),
        }
    }

    const STARS: Stars = Stars {
        max_seq: 3,
        max_uid: 9,
    };

    #[test]
    fn sent_dates_are_the_dates_written() {
        assert_eq!(
            written_day("Mon, 7 Feb 1994 23:52:25 -0800 (PST)"),
            NaiveDate::from_ymd_opt(1994, 2, 7)
        );
        // Late in the evening west of UTC: still the day written, not the UTC day.
        assert_eq!(
            written_day("1 Jan 2020 23:30:00 -1000"),
            NaiveDate::from_ymd_opt(2020, 1, 1)
        );
        assert_eq!(
            written_day("Thu, 13 Feb 69 23:32 -0330"),
            NaiveDate::from_ymd_opt(1969, 2, 13)
        );
        assert_eq!(
            written_day("5 May 04 10:00 GMT"),
            NaiveDate::from_ymd_opt(2004, 5, 5)
        );
        assert_eq!(written_day("31 Feb 2020"), None);
        assert_eq!(written_day("yesterday"), None);
        let msg = b"Date: Tue, 31 Dec 2024 23:59:00 -1200\r\n\r\nx";
        let c = candidate(msg);
        let d = NaiveDate::from_ymd_opt(2024, 12, 31).unwrap();
        assert!(SearchKey::SentOn(d).matches(&c, STARS));
        assert!(!SearchKey::SentBefore(d).matches(&c, STARS));
        assert!(SearchKey::SentSince(d).matches(&c, STARS));
    }

    #[test]
    fn address_searches_see_names_from_comments_and_encoded_words() {
        let msg = b"From: fred@example.com (Fred Bloggs)\r\nTo: =?utf-8?q?J=C3=BCrgen?= <j@x.test>, list:;\r\n\r\nx";
        let c = candidate(msg);
        let from = |s: &str| SearchKey::Header("from".into(), s.as_bytes().to_vec());
        let to = |s: &str| SearchKey::Header("to".into(), s.as_bytes().to_vec());
        assert!(from("fred bloggs").matches(&c, STARS));
        assert!(from("FRED@EXAMPLE").matches(&c, STARS));
        assert!(!from("wilma").matches(&c, STARS));
        assert!(to("jürgen").matches(&c, STARS));
        assert!(to("j@x.test").matches(&c, STARS));
    }

    #[test]
    fn keys_combine() {
        let msg = b"Subject: =?utf-8?q?Caf=C3=A9_time?=\r\nFrom: a@b.test\r\nDate: Tue, 14 Nov 2023 10:00:00 +0000\r\n\r\nHello World\r\n";
        let m = candidate(msg);
        let yes = |k: SearchKey| assert!(k.matches(&m, STARS), "{k:?}");
        let no = |k: SearchKey| assert!(!k.matches(&m, STARS), "{k:?}");
        yes(SearchKey::Flag(Flags::SEEN));
        no(SearchKey::NotFlag(Flags::SEEN));
        yes(SearchKey::Or(
            Box::new(SearchKey::Flag(Flags::keyword("$Junk").unwrap())),
            Box::new(SearchKey::All),
        ));
        no(SearchKey::Not(Box::new(SearchKey::All)));
        yes(SearchKey::Uid(SeqSet(vec![(Bound::Num(5), Bound::Star)])));
        no(SearchKey::Seq(SeqSet(vec![(Bound::Star, Bound::Star)])));
        yes(SearchKey::Header(
            "subject".into(),
            "CAFÉ".as_bytes().to_vec(),
        ));
        yes(SearchKey::Header("from".into(), Vec::new()));
        no(SearchKey::Header("cc".into(), Vec::new()));
        yes(SearchKey::Body(b"hello world".to_vec()));
        no(SearchKey::Body(b"subject".to_vec()));
        yes(SearchKey::Text(b"SUBJECT".to_vec()));
        let d = NaiveDate::from_ymd_opt(2023, 11, 14).unwrap();
        yes(SearchKey::On(d));
        yes(SearchKey::SentOn(d));
        yes(SearchKey::Since(d));
        no(SearchKey::Before(d));
        yes(SearchKey::Larger(10));
        no(SearchKey::Smaller(10));
    }
}
