//! Just enough RFC 5322 / MIME structure for IMAP: where a message's header and body are, its
//! header fields, and its part tree (for BODYSTRUCTURE and sections such as `BODY[1.2]`).
//!
//! Everything here works on byte ranges of the stored message and never copies or decodes a
//! body. Message text is client-controlled (APPEND, SMTP), so the parser accepts any bytes,
//! never panics, bounds its recursion at [`DEPTH_MAX`], and falls back to describing a part as
//! `text/plain` when its structure is broken: a malformed message is still fetchable.

use std::ops::Range;

/// Deepest nesting of multiparts and encapsulated messages that is described; anything deeper is
/// shown as one text/plain part. Bounds stack use and work per message.
pub const DEPTH_MAX: usize = 8;

/// One header field: its name, its value (raw, possibly folded, without the final line break),
/// and the whole field as it appears in the message (with continuation lines and line break).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Splits `msg[range]` into its header (including the blank line that ends it) and its body. A
/// message without a blank line is all header, as RFC 3501 treats it.
pub fn split(msg: &[u8], range: Range<usize>) -> (Range<usize>, Range<usize>) {
    let bytes = &msg[range.clone()];
    let mut pos = 0;
    while pos < bytes.len() {
        let end = line_end(bytes, pos);
        let line = &bytes[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return (range.start..range.start + end, range.start + end..range.end);
        }
        pos = end;
    }
    (range.clone(), range.end..range.end)
}

/// The index just past the line starting at `pos` (past its LF, or the end of `bytes`).
fn line_end(bytes: &[u8], pos: usize) -> usize {
    bytes[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| pos + i + 1)
}

/// The fields of a header block (as returned by [`split`]). Lines that are neither a field nor a
/// continuation are skipped.
pub fn fields(header: &[u8]) -> Vec<Field<'_>> {
    /// Ends the field that started at `start` (name up to `name_end`) where the next line begins.
    fn finish<'a>(
        header: &'a [u8],
        out: &mut Vec<Field<'a>>,
        current: Option<(usize, usize)>,
        end: usize,
    ) {
        if let Some((start, name_end)) = current {
            let value_start = name_end + 1;
            let mut value_end = end;
            while value_end > value_start && matches!(header[value_end - 1], b'\r' | b'\n') {
                value_end -= 1;
            }
            out.push(Field {
                name: trim(&header[start..name_end]),
                value: &header[value_start..value_end],
                raw: &header[start..end],
            });
        }
    }
    let mut out = Vec::new();
    // Start of the field being collected, and where its name ends (the colon).
    let mut current: Option<(usize, usize)> = None;
    let mut pos = 0;
    while pos < header.len() {
        let end = line_end(header, pos);
        let line = &header[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A continuation line extends the current field (or is stray, if there is none).
            pos = end;
            continue;
        }
        finish(header, &mut out, current.take(), pos);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            current = Some((pos, pos + colon));
        }
        pos = end;
    }
    finish(header, &mut out, current, pos);
    out
}

/// The value of the first field called `name` (case-insensitive).
pub fn value<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
}

/// A field value with its folding removed and surrounding white space trimmed.
pub fn unfold(value: &[u8]) -> Vec<u8> {
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    trim(&unfolded).to_vec()
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Runs a third-party parser on client-controlled text, turning a panic in it into `None`: a
/// malformed message must never end the session.
pub fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// A parsed `Content-Type` (or, reused, `Content-Disposition`): lower-case type and subtype,
/// parameters with lower-case names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    pub kind: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
}

impl ContentType {
    fn text_plain() -> ContentType {
        ContentType {
            kind: "text".into(),
            subtype: "plain".into(),
            params: Vec::new(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses a `type/subtype; k=v` value; `None` when it names no valid type.
    fn parse(value: &[u8]) -> Option<ContentType> {
        let text = String::from_utf8_lossy(&unfold(value)).into_owned();
        let parsed = guard(|| mailparse::parse_content_type(&text))?;
        let (kind, subtype) = parsed.mimetype.split_once('/')?;
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if !token(kind) || !token(subtype) {
            return None;
        }
        Some(ContentType {
            kind: kind.to_string(),
            subtype: subtype.to_string(),
            params: parsed.params.into_iter().collect(),
        })
    }

    /// Parses a `Content-Disposition` value: `kind` is the disposition, `subtype` is empty.
    pub fn parse_disposition(value: &[u8]) -> Option<ContentType> {
        let text = String::from_utf8_lossy(&unfold(value)).into_owned();
        let parsed = guard(|| mailparse::parse_content_type(&text))?;
        if parsed.mimetype.is_empty() {
            return None;
        }
        Some(ContentType {
            kind: parsed.mimetype,
            subtype: String::new(),
            params: parsed.params.into_iter().collect(),
        })
    }
}

/// One node of a message's MIME tree. Ranges index the whole stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub header: Range<usize>,
    pub body: Range<usize>,
    pub ctype: ContentType,
    pub children: Children,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Children {
    /// A leaf part.
    None,
    /// The parts of a multipart, in order (never empty).
    Multipart(Vec<Part>),
    /// The message encapsulated in a message/rfc822 part.
    Message(Box<Part>),
}

/// Parses the structure of a whole message.
pub fn parse(msg: &[u8]) -> Part {
    parse_part(msg, 0..msg.len(), false, 0)
}

fn parse_part(msg: &[u8], range: Range<usize>, in_digest: bool, depth: usize) -> Part {
    let (header, body) = split(msg, range);
    let fields = fields(&msg[header.clone()]);
    let default = || {
        if in_digest {
            ContentType {
                kind: "message".into(),
                subtype: "rfc822".into(),
                params: Vec::new(),
            }
        } else {
            ContentType::text_plain()
        }
    };
    let mut ctype = value(&fields, "content-type")
        .and_then(ContentType::parse)
        .unwrap_or_else(default);
    let nested = depth < DEPTH_MAX;
    let mut children = Children::None;
    if ctype.kind == "multipart" {
        let parts = match ctype.param("boundary") {
            Some(b) if nested && !b.is_empty() => split_multipart(msg, body.clone(), b.as_bytes()),
            _ => Vec::new(),
        };
        if parts.is_empty() {
            // No usable boundary: an IMAP multipart needs at least one part, so describe it plainly.
            ctype = ContentType::text_plain();
        } else {
            let digest = ctype.subtype == "digest";
            children = Children::Multipart(
                parts
                    .into_iter()
                    .map(|r| parse_part(msg, r, digest, depth + 1))
                    .collect(),
            );
        }
    } else if ctype.kind == "message" && ctype.subtype == "rfc822" {
        if nested {
            children = Children::Message(Box::new(parse_part(msg, body.clone(), false, depth + 1)));
        } else {
            ctype = ContentType::text_plain();
        }
    }
    Part {
        header,
        body,
        ctype,
        children,
    }
}

/// The ranges of the parts of a multipart body with this boundary. The line break before a
/// delimiter line belongs to the delimiter (RFC 2046 5.1.1); the preamble and epilogue are skipped.
fn split_multipart(msg: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let bytes = &msg[..body.end];
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let end = line_end(bytes, pos);
        let line = &bytes[pos..end];
        if let Some(rest) = line.strip_prefix(delimiter.as_slice()) {
            let rest = trim(rest);
            let close = rest == b"--";
            if rest.is_empty() || close {
                if let Some(start) = current.take() {
                    let mut stop = pos;
                    if stop > start && bytes[stop - 1] == b'\n' {
                        stop -= 1;
                        if stop > start && bytes[stop - 1] == b'\r' {
                            stop -= 1;
                        }
                    }
                    parts.push(start..stop);
                }
                if close {
                    return parts;
                }
                current = Some(end);
            }
        }
        pos = end;
    }
    // No close delimiter: the last part runs to the end of the body.
    if let Some(start) = current {
        parts.push(start..body.end);
    }
    parts
}

/// The number of lines in `bytes` (a final line without a line break counts).
pub fn lines(bytes: &[u8]) -> usize {
    let n = bytes.iter().filter(|&&b| b == b'\n').count();
    if bytes.last().is_some_and(|&b| b != b'\n') {
        n + 1
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_fields() {
        let msg = b"Subject: a\r\n  folded\r\nFrom: x@y\r\nbogus line\r\n\r\nbody\r\n";
        let (h, b) = split(msg, 0..msg.len());
        assert_eq!(&msg[b], b"body\r\n");
        let f = fields(&msg[h]);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, b"Subject");
        assert_eq!(f[0].raw, b"Subject: a\r\n  folded\r\n");
        assert_eq!(unfold(f[0].value), b"a  folded");
        assert_eq!(value(&f, "FROM"), Some(&b" x@y"[..]));
    }

    #[test]
    fn message_without_blank_line_is_all_header() {
        let msg = b"Subject: a\r\n";
        let (h, b) = split(msg, 0..msg.len());
        assert_eq!(h, 0..msg.len());
        assert!(b.is_empty());
    }

    #[test]
    fn multipart_tree() {
        let msg = b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n\r\none\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntwo\r\n--XX--\r\nepilogue\r\n";
        let tree = parse(msg);
        let Children::Multipart(parts) = &tree.children else {
            panic!("not multipart: {tree:?}")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(&msg[parts[0].body.clone()], b"one");
        let Children::Message(inner) = &parts[1].children else {
            panic!("not a message")
        };
        assert_eq!(&msg[inner.body.clone()], b"two");
    }

    #[test]
    fn deep_nesting_is_cut_off() {
        let mut msg = Vec::new();
        for _ in 0..100 {
            msg.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        msg.extend_from_slice(b"body\r\n");
        let mut part = &parse(&msg);
        let mut depth = 0;
        while let Children::Message(inner) = &part.children {
            part = inner;
            depth += 1;
        }
        assert_eq!(depth, DEPTH_MAX);
        assert_eq!(part.ctype.kind, "text");
    }

    #[test]
    fn broken_multipart_is_text() {
        let msg = b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n";
        let tree = parse(msg);
        assert_eq!(tree.children, Children::None);
        assert_eq!(tree.ctype.kind, "text");
    }
}
