//! FETCH data items and how they are rendered: FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE,
//! BODY / BODYSTRUCTURE, body sections with partial ranges, and the RFC822 forms.
//!
//! Rendering is pure: it gets one message's metadata and (when an item needs it) its bytes, and
//! appends the response to a buffer. It never touches the store or the connection, never changes
//! flags (the session sets `\Seen` before rendering), and never panics on odd message text.

use std::borrow::Cow;

use super::address::{self, Address};
use super::mime::{self, Children, ContentType, Field, Part};
use crate::mail::store::Flags;

/// One requested FETCH item (macros are expanded by the parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAtt {
    Envelope,
    Flags,
    InternalDate,
    Rfc822,
    Rfc822Header,
    Rfc822Size,
    Rfc822Text,
    /// `BODY` without a section: the non-extensible structure.
    Body,
    BodyStructure,
    Uid,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`.
    Section {
        peek: bool,
        section: Section,
        partial: Option<(u32, u32)>,
    },
}

/// A body section specifier: a part path (empty for the whole message) and what of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// `HEADER.FIELDS (..)`, or `HEADER.FIELDS.NOT (..)` when `not`.
    Fields {
        not: bool,
        names: Vec<Vec<u8>>,
    },
    Text,
    Mime,
}

impl FetchAtt {
    /// Whether rendering this item needs the message bytes.
    pub fn needs_body(&self) -> bool {
        !matches!(
            self,
            FetchAtt::Flags | FetchAtt::InternalDate | FetchAtt::Rfc822Size | FetchAtt::Uid
        )
    }

    /// Whether fetching this item sets `\Seen` (RFC 3501 6.4.5).
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchAtt::Rfc822 | FetchAtt::Rfc822Text | FetchAtt::Section { peek: false, .. }
        )
    }
}

/// What is known of one message when its FETCH response is rendered.
pub struct Message<'a> {
    pub seq: u32,
    pub uid: u32,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Flags,
    /// `\Recent` in this session.
    pub recent: bool,
    /// The stored bytes, when an item needs them.
    pub bytes: Option<&'a [u8]>,
}

/// Appends `* seq FETCH (...)\r\n` for `atts`. `UID` is added first when `with_uid` (UID FETCH)
/// and `FLAGS` last when `with_flags` (an implicit `\Seen` changed them), unless requested anyway.
pub fn render(
    out: &mut Vec<u8>,
    m: &Message<'_>,
    atts: &[FetchAtt],
    with_uid: bool,
    with_flags: bool,
) {
    let bytes = m.bytes.unwrap_or_default();
    // The MIME tree is built once per message, only when an item needs it.
    let mut tree: Option<Part> = None;
    out.extend_from_slice(format!("* {} FETCH (", m.seq).as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    if with_uid && !atts.contains(&FetchAtt::Uid) {
        sep(out);
        out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
    }
    for att in atts {
        sep(out);
        match att {
            FetchAtt::Uid => out.extend_from_slice(format!("UID {}", m.uid).as_bytes()),
            FetchAtt::Flags => {
                out.extend_from_slice(b"FLAGS ");
                out.extend_from_slice(flag_list_with(&m.flags, m.recent).as_bytes());
            }
            FetchAtt::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE \"{}\"", internal_date(m.internal_date)).as_bytes(),
            ),
            FetchAtt::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes())
            }
            FetchAtt::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                let (header, _) = mime::split(bytes, 0..bytes.len());
                envelope(out, &mime::fields(&bytes[header]));
            }
            FetchAtt::Body | FetchAtt::BodyStructure => {
                let extensible = *att == FetchAtt::BodyStructure;
                out.extend_from_slice(if extensible {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                body_structure(
                    out,
                    bytes,
                    tree.get_or_insert_with(|| mime::parse(bytes)),
                    extensible,
                );
            }
            FetchAtt::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                push_literal(out, bytes);
            }
            FetchAtt::Rfc822Header | FetchAtt::Rfc822Text => {
                let (header, body) = mime::split(bytes, 0..bytes.len());
                if *att == FetchAtt::Rfc822Header {
                    out.extend_from_slice(b"RFC822.HEADER ");
                    push_literal(out, &bytes[header]);
                } else {
                    out.extend_from_slice(b"RFC822.TEXT ");
                    push_literal(out, &bytes[body]);
                }
            }
            FetchAtt::Section {
                section, partial, ..
            } => {
                out.extend_from_slice(b"BODY");
                push_section_name(out, section);
                if let Some((start, _)) = partial {
                    out.extend_from_slice(format!("<{start}>").as_bytes());
                }
                out.push(b' ');
                let part = if section.part.is_empty() && section.text.is_none() {
                    // The whole message: no need to parse its structure.
                    Some(Cow::Borrowed(bytes))
                } else {
                    section_bytes(
                        bytes,
                        tree.get_or_insert_with(|| mime::parse(bytes)),
                        section,
                    )
                };
                match part {
                    None => out.extend_from_slice(b"NIL"),
                    Some(data) => {
                        let data: &[u8] = &data;
                        let data = match partial {
                            Some((start, count)) => {
                                let start = (*start as usize).min(data.len());
                                let end = start.saturating_add(*count as usize).min(data.len());
                                &data[start..end]
                            }
                            None => data,
                        };
                        push_literal(out, data);
                    }
                }
            }
        }
    }
    if with_flags && !atts.contains(&FetchAtt::Flags) {
        sep(out);
        out.extend_from_slice(b"FLAGS ");
        out.extend_from_slice(flag_list_with(&m.flags, m.recent).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

/// `(\Seen \Recent)`: the flags, and `\Recent` when the message is recent in this session.
pub fn flag_list_with(flags: &Flags, recent: bool) -> String {
    let mut names: Vec<&str> = flags.names().collect();
    if recent {
        names.push("\\Recent");
    }
    format!("({})", names.join(" "))
}

/// RFC 3501 `date-time` without its quotes: `02-Jan-2006 15:04:05 +0000`.
pub fn internal_date(unix_seconds: i64) -> String {
    match chrono::DateTime::from_timestamp(unix_seconds, 0) {
        Some(t) => t.format("%d-%b-%Y %H:%M:%S +0000").to_string(),
        // Out of chrono's range: cannot come from the store's clock, but must not panic.
        None => "01-Jan-1970 00:00:00 +0000".to_string(),
    }
}

/// How a section is named in the response: `[]`, `[1.2]`, `[HEADER.FIELDS (From To)]`, ...
fn push_section_name(out: &mut Vec<u8>, section: &Section) {
    out.push(b'[');
    let parts: Vec<String> = section.part.iter().map(u32::to_string).collect();
    out.extend_from_slice(parts.join(".").as_bytes());
    if let Some(text) = &section.text {
        if !section.part.is_empty() {
            out.push(b'.');
        }
        match text {
            SectionText::Header => out.extend_from_slice(b"HEADER"),
            SectionText::Text => out.extend_from_slice(b"TEXT"),
            SectionText::Mime => out.extend_from_slice(b"MIME"),
            SectionText::Fields { not, names } => {
                out.extend_from_slice(if *not {
                    b"HEADER.FIELDS.NOT ("
                } else {
                    b"HEADER.FIELDS ("
                });
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    push_astring(out, name);
                }
                out.push(b')');
            }
        }
    }
    out.push(b']');
}

/// Part `n` (1-based) of `part`, per RFC 3501 6.4.5: the parts of a multipart, the parts of the
/// message inside a message/rfc822 part, and for a non-multipart its body as part 1.
fn child(part: &Part, n: u32) -> Option<&Part> {
    match &part.children {
        Children::Multipart(parts) => parts.get((n as usize).checked_sub(1)?),
        Children::Message(inner) => child(inner, n),
        Children::None => (n == 1).then_some(part),
    }
}

/// The bytes a section names, or `None` when the message has no such part.
pub fn section_bytes<'m>(msg: &'m [u8], tree: &Part, section: &Section) -> Option<Cow<'m, [u8]>> {
    let mut part = tree;
    for (i, &n) in section.part.iter().enumerate() {
        part = if i == 0 {
            // The message's own part numbers: a multipart's parts, else its body as part 1 (a
            // message/rfc822 message's part 1 is the message it carries, whose parts are 1.1...).
            match &tree.children {
                Children::Multipart(parts) => parts.get((n as usize).checked_sub(1)?)?,
                _ if n == 1 => tree,
                _ => return None,
            }
        } else {
            child(part, n)?
        };
    }
    // HEADER, TEXT and HEADER.FIELDS apply to a message: the whole one, or one inside a part.
    let message = if section.part.is_empty() {
        Some(tree)
    } else if let Children::Message(inner) = &part.children {
        Some(&**inner)
    } else {
        None
    };
    let slice = |r: &std::ops::Range<usize>| msg.get(r.clone()).map(Cow::Borrowed);
    match &section.text {
        None if section.part.is_empty() => Some(Cow::Borrowed(msg)),
        None => slice(&part.body),
        Some(SectionText::Mime) => slice(&part.header),
        Some(SectionText::Header) => slice(&message?.header),
        Some(SectionText::Text) => slice(&message?.body),
        Some(SectionText::Fields { not, names }) => {
            let header = msg.get(message?.header.clone())?;
            let mut out = Vec::new();
            for field in mime::fields(header) {
                let listed = names.iter().any(|n| n.eq_ignore_ascii_case(field.name));
                if listed != *not {
                    out.extend_from_slice(field.raw);
                    if !field.raw.ends_with(b"\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
            Some(Cow::Owned(out))
        }
    }
}

/// `ENVELOPE` data (RFC 3501 7.4.2) from a header's fields. Values are sent as they appear in
/// the header (unfolded; encoded words are left for the client to decode).
pub fn envelope(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    let text = |name: &str| mime::value(fields, name).map(mime::unfold);
    let addresses =
        |name: &str| mime::value(fields, name).and_then(|v| parse_addresses(&mime::unfold(v)));
    let from = addresses("from");
    out.push(b'(');
    push_nstring(out, text("date").as_deref());
    out.push(b' ');
    push_nstring(out, text("subject").as_deref());
    out.push(b' ');
    push_addresses(out, from.as_deref());
    // Sender and Reply-To default to From (RFC 3501 7.4.2).
    for name in ["sender", "reply-to"] {
        out.push(b' ');
        push_addresses(out, addresses(name).or_else(|| from.clone()).as_deref());
    }
    for name in ["to", "cc", "bcc"] {
        out.push(b' ');
        push_addresses(out, addresses(name).as_deref());
    }
    out.push(b' ');
    push_nstring(out, text("in-reply-to").as_deref());
    out.push(b' ');
    push_nstring(out, text("message-id").as_deref());
    out.push(b')');
}

/// Parses an address-list header value; `None` when it holds no address.
fn parse_addresses(value: &[u8]) -> Option<Vec<Address>> {
    let list = address::parse_list(&String::from_utf8_lossy(value));
    (!list.is_empty()).then_some(list)
}

fn push_addresses(out: &mut Vec<u8>, list: Option<&[Address]>) {
    let Some(list) = list else {
        out.extend_from_slice(b"NIL");
        return;
    };
    out.push(b'(');
    for a in list {
        out.push(b'(');
        push_nstring(out, a.name.as_deref().map(str::as_bytes));
        out.push(b' ');
        push_nstring(out, a.route.as_deref().map(str::as_bytes));
        out.push(b' ');
        push_nstring(out, a.mailbox.as_deref().map(str::as_bytes));
        out.push(b' ');
        push_nstring(out, a.host.as_deref().map(str::as_bytes));
        out.push(b')');
    }
    out.push(b')');
}

/// `BODY` (non-extensible) or `BODYSTRUCTURE` (extensible) of a part tree.
pub fn body_structure(out: &mut Vec<u8>, msg: &[u8], part: &Part, extensible: bool) {
    let header = msg.get(part.header.clone()).unwrap_or_default();
    let body = msg.get(part.body.clone()).unwrap_or_default();
    let fields = mime::fields(header);
    out.push(b'(');
    match &part.children {
        Children::Multipart(parts) => {
            for p in parts {
                body_structure(out, msg, p, extensible);
            }
            out.push(b' ');
            push_string(out, part.ctype.subtype.to_ascii_uppercase().as_bytes());
            if extensible {
                out.push(b' ');
                push_params(out, &part.ctype.params);
                out.push(b' ');
                push_disposition(out, &fields);
                out.extend_from_slice(b" NIL NIL");
            }
        }
        children => {
            let ctype = &part.ctype;
            push_string(out, ctype.kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            push_string(out, ctype.subtype.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            let mut params = ctype.params.clone();
            if ctype.kind == "text" && ctype.param("charset").is_none() {
                params.insert(0, ("charset".into(), "US-ASCII".into()));
            }
            push_params(out, &params);
            for name in ["content-id", "content-description"] {
                out.push(b' ');
                push_nstring(out, mime::value(&fields, name).map(mime::unfold).as_deref());
            }
            out.push(b' ');
            let encoding = mime::value(&fields, "content-transfer-encoding")
                .map(|v| mime::unfold(v).to_ascii_uppercase())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| b"7BIT".to_vec());
            push_string(out, &encoding);
            out.extend_from_slice(format!(" {}", body.len()).as_bytes());
            if let Children::Message(inner) = children {
                let inner_header = msg.get(inner.header.clone()).unwrap_or_default();
                out.push(b' ');
                envelope(out, &mime::fields(inner_header));
                out.push(b' ');
                body_structure(out, msg, inner, extensible);
                out.extend_from_slice(format!(" {}", mime::lines(body)).as_bytes());
            } else if ctype.kind == "text" {
                out.extend_from_slice(format!(" {}", mime::lines(body)).as_bytes());
            }
            if extensible {
                // MD5, disposition, language, location.
                out.extend_from_slice(b" NIL ");
                push_disposition(out, &fields);
                out.extend_from_slice(b" NIL NIL");
            }
        }
    }
    out.push(b')');
}

fn push_params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push_string(out, k.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        push_string(out, v.as_bytes());
    }
    out.push(b')');
}

fn push_disposition(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    match mime::value(fields, "content-disposition").and_then(ContentType::parse_disposition) {
        Some(d) => {
            out.push(b'(');
            push_string(out, d.kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            push_params(out, &d.params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A string as a quoted string when that is possible (7-bit, no CR/LF/NUL), else as a literal.
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter()
        .all(|&b| (1..0x80).contains(&b) && b != b'\r' && b != b'\n')
    {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        push_literal(out, s);
    }
}

pub fn push_nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

pub fn push_literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// An atom when the bytes allow it, else a string.
fn push_astring(out: &mut Vec<u8>, s: &[u8]) {
    if !s.is_empty() && s.iter().all(|&b| super::parse::is_astring_char(b)) {
        out.extend_from_slice(s);
    } else {
        push_string(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n\
From: Fred Foobar <foobar@Blurdybloop.example>\r\n\
Subject: afternoon\r\n  meeting \"today\"\r\n\
To: mooch@owatagu.example, \"A \\\"B\\\" C\" <abc@example.test>\r\n\
Cc: team: a@x.test, b@x.test;\r\n\
Message-Id: <B27397-0100000@Blurdybloop.example>\r\n\
\r\n\
Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

    fn envelope_of(msg: &[u8]) -> String {
        let (h, _) = mime::split(msg, 0..msg.len());
        let mut out = Vec::new();
        envelope(&mut out, &mime::fields(&msg[h]));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envelope_of_sample_message() {
        assert_eq!(
            envelope_of(SAMPLE),
            concat!(
                r#"("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "afternoon  meeting \"today\"" "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) "#,
                r#"((NIL NIL "mooch" "owatagu.example")("A \"B\" C" NIL "abc" "example.test")) "#,
                r#"((NIL NIL "team" NIL)(NIL NIL "a" "x.test")(NIL NIL "b" "x.test")(NIL NIL NIL NIL)) "#,
                r#"NIL NIL "<B27397-0100000@Blurdybloop.example>")"#
            )
        );
    }

    #[test]
    fn envelope_addresses_with_comments_routes_and_empty_groups() {
        let msg = b"From: fred@example.test (Fred Bloggs)\r\n\
Sender: <@relay.test:owner@list.test>\r\n\
To: undisclosed-recipients:;\r\n\
Cc: Pete(A nice chap) <pete(his account)@silly.test>\r\n\r\n";
        assert_eq!(
            envelope_of(msg),
            concat!(
                r#"(NIL NIL (("Fred Bloggs" NIL "fred" "example.test")) "#,
                r#"((NIL "@relay.test" "owner" "list.test")) "#,
                r#"(("Fred Bloggs" NIL "fred" "example.test")) "#,
                r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) "#,
                r#"(("Pete" NIL "pete" "silly.test")) NIL NIL NIL)"#
            )
        );
    }

    #[test]
    fn envelope_without_headers_is_all_nil() {
        assert_eq!(
            envelope_of(b"\r\nbody\r\n"),
            "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn eight_bit_subject_is_a_literal() {
        let env = envelope_of("Subject: caf\u{e9}\r\n\r\n".as_bytes());
        assert!(env.starts_with("(NIL {5}\r\ncaf\u{e9} NIL"), "{env}");
    }

    #[test]
    fn internal_date_format() {
        assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(internal_date(1_700_000_000), "14-Nov-2023 22:13:20 +0000");
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        push_string(&mut out, b"a \"q\" \\");
        assert_eq!(out, b"\"a \\\"q\\\" \\\\\"");
        out.clear();
        push_string(&mut out, b"two\r\nlines");
        assert_eq!(out, b"{10}\r\ntwo\r\nlines");
    }

    #[test]
    fn single_part_body_structure() {
        let msg = b"Subject: x\r\n\r\nline one\r\nline two\r\n";
        let mut out = Vec::new();
        body_structure(&mut out, msg, &mime::parse(msg), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 20 2)"#
        );
    }

    #[test]
    fn multipart_body_structure_and_sections() {
        let msg = b"Content-Type: multipart/alternative; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--b1\r\nContent-Type: text/html\r\nContent-Disposition: inline\r\n\r\n<p>x</p>\r\n--b1--\r\n";
        let tree = mime::parse(msg);
        let mut out = Vec::new();
        body_structure(&mut out, msg, &tree, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)"#,
                r#"("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1 NIL ("INLINE" NIL) NIL NIL)"#,
                r#" "ALTERNATIVE" ("BOUNDARY" "b1") NIL NIL NIL)"#
            )
        );
        let sec = |part: Vec<u32>, text| {
            section_bytes(msg, &tree, &Section { part, text }).map(|c| c.into_owned())
        };
        assert_eq!(sec(vec![2], None).unwrap(), b"<p>x</p>");
        assert_eq!(sec(vec![1, 1], None).unwrap(), b"plain");
        assert_eq!(
            sec(vec![1], Some(SectionText::Mime)).unwrap(),
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(sec(vec![3], None), None);
        assert_eq!(
            sec(
                vec![],
                Some(SectionText::Fields {
                    not: false,
                    names: vec![b"content-type".to_vec()]
                })
            )
            .unwrap(),
            b"Content-Type: multipart/alternative; boundary=b1\r\n\r\n"
        );
    }

    #[test]
    fn sections_of_encapsulated_messages() {
        let inner = "Subject: inner\r\nFrom: a@b\r\n\r\ninner body\r\n";
        let sec = |msg: &[u8], part: Vec<u32>, text| {
            let tree = mime::parse(msg);
            section_bytes(msg, &tree, &Section { part, text }).map(|c| c.into_owned())
        };
        // A message that is itself message/rfc822: part 1 is the message it carries.
        let top = format!("Content-Type: message/rfc822\r\nSubject: outer\r\n\r\n{inner}");
        let top = top.as_bytes();
        assert_eq!(sec(top, vec![1], None).unwrap(), inner.as_bytes());
        assert_eq!(
            sec(top, vec![1], Some(SectionText::Header)).unwrap(),
            b"Subject: inner\r\nFrom: a@b\r\n\r\n"
        );
        assert_eq!(
            sec(top, vec![1], Some(SectionText::Text)).unwrap(),
            b"inner body\r\n"
        );
        assert_eq!(sec(top, vec![1, 1], None).unwrap(), b"inner body\r\n");
        assert_eq!(
            sec(
                top,
                vec![1],
                Some(SectionText::Fields {
                    not: false,
                    names: vec![b"subject".to_vec()]
                })
            )
            .unwrap(),
            b"Subject: inner\r\n\r\n"
        );
        assert_eq!(sec(top, vec![2], None), None);
        // A multipart whose first part is message/rfc822.
        let mixed = format!(
            "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--x\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--x--\r\n"
        );
        let mixed = mixed.as_bytes();
        assert_eq!(
            sec(mixed, vec![1], Some(SectionText::Mime)).unwrap(),
            b"Content-Type: message/rfc822\r\n\r\n"
        );
        assert_eq!(
            sec(mixed, vec![1], Some(SectionText::Header)).unwrap(),
            b"Subject: inner\r\nFrom: a@b\r\n\r\n"
        );
        assert_eq!(
            sec(mixed, vec![1], Some(SectionText::Text)).unwrap(),
            b"inner body\r\n"
        );
        assert_eq!(sec(mixed, vec![1], None).unwrap(), inner.as_bytes());
        assert_eq!(sec(mixed, vec![2], None).unwrap(), b"second");
        // A plain message's part 1 is its body.
        assert_eq!(
            sec(b"Subject: s\r\n\r\nhello", vec![1], None).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn fetch_response_with_partial_and_flags() {
        let msg = b"Subject: x\r\n\r\nbody\r\n";
        let m = Message {
            recent: false,
            seq: 3,
            uid: 9,
            size: msg.len() as u64,
            internal_date: 0,
            flags: Flags::SEEN,
            bytes: Some(msg),
        };
        let atts = [
            FetchAtt::Rfc822Size,
            FetchAtt::Section {
                peek: false,
                section: Section::default(),
                partial: Some((2, 5)),
            },
            FetchAtt::Section {
                peek: true,
                section: Section {
                    part: vec![1],
                    text: None,
                },
                partial: None,
            },
        ];
        let mut out = Vec::new();
        render(&mut out, &m, &atts, true, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 3 FETCH (UID 9 RFC822.SIZE 20 BODY[]<2> {5}\r\nbject BODY[1] {6}\r\nbody\r\n FLAGS (\\Seen))\r\n"
        );
    }
}
