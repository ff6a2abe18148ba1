//! IMAP command syntax (RFC 3501 section 9): turns one complete command — the tagged line with
//! any literals already read and spliced in as `{n}\r\n<n bytes>`, exactly as on the wire — into
//! a typed [`Command`].
//!
//! Pure and synchronous: it never does I/O, never looks at the mailbox, and never panics or
//! indexes out of bounds on client input. Every malformed command is a [`ParseError`], which the
//! session answers with `BAD`. Recursion (search keys) is bounded by [`NESTING_MAX`].

use std::borrow::Cow;

use chrono::NaiveDate;

use super::fetch::{FetchAtt, Section, SectionText};
use super::search::SearchKey;
use super::seqset::{Bound, SeqSet};
use crate::mail::store::{FlagMode, Flags};

/// Deepest nesting of parenthesised, NOT and OR search keys; deeper is a syntax error, so a
/// client cannot exhaust the stack with `NOT NOT NOT ...`.
pub const NESTING_MAX: usize = 32;
/// Most field-value pairs an ID command may carry (RFC 2971 3.3 allows 30).
pub const ID_FIELDS_MAX: usize = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    UnknownCommand,
    #[error("syntax error: expected {0}")]
    Expected(&'static str),
    #[error("syntax error: unexpected text after the command")]
    Trailing,
    #[error("syntax error: number out of range")]
    Number,
    #[error("{0}")]
    Invalid(&'static str),
}

pub type Result<T> = std::result::Result<T, ParseError>;

/// Flags one flag list may name (system flags and keywords).
const FLAGS_IN_LIST_MAX: usize = crate::mail::store::KEYWORDS_MAX + 6;

/// Items of STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
}

/// One field of an ID command and its value (NIL: none).
pub type IdField<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// One parsed command (the tag is parsed separately, first).
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Capability,
    /// RFC 2971: the client's identification (field, value) pairs, at most [`ID_FIELDS_MAX`].
    Id(Vec<IdField<'a>>),
    Noop,
    Logout,
    Namespace,
    Login {
        user: Cow<'a, [u8]>,
        password: Cow<'a, [u8]>,
    },
    Authenticate {
        mechanism: &'a [u8],
        /// SASL-IR initial response (base64, `=` for empty).
        initial: Option<&'a [u8]>,
    },
    Select {
        mailbox: Cow<'a, [u8]>,
        read_only: bool,
    },
    Create(Cow<'a, [u8]>),
    Delete(Cow<'a, [u8]>),
    Rename {
        from: Cow<'a, [u8]>,
        to: Cow<'a, [u8]>,
    },
    Subscribe(Cow<'a, [u8]>),
    Unsubscribe(Cow<'a, [u8]>),
    List {
        reference: Cow<'a, [u8]>,
        pattern: Cow<'a, [u8]>,
        lsub: bool,
    },
    Status {
        mailbox: Cow<'a, [u8]>,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: Cow<'a, [u8]>,
        flags: Flags,
        /// The client's date-time for the message (unix seconds), if it gave one.
        date: Option<i64>,
        message: &'a [u8],
    },
    Check,
    Close,
    Unselect,
    /// EXPUNGE, or UID EXPUNGE with its set.
    Expunge {
        uids: Option<SeqSet>,
    },
    Search {
        uid: bool,
        charset: Option<Cow<'a, [u8]>>,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SeqSet,
        atts: Vec<FetchAtt>,
    },
    Store {
        uid: bool,
        set: SeqSet,
        mode: FlagMode,
        silent: bool,
        flags: Flags,
    },
    Copy {
        uid: bool,
        set: SeqSet,
        mailbox: Cow<'a, [u8]>,
    },
    /// MOVE (RFC 6851).
    Move {
        uid: bool,
        set: SeqSet,
        mailbox: Cow<'a, [u8]>,
    },
}

/// ATOM-CHAR: any CHAR except atom-specials.
pub fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// ASTRING-CHAR: ATOM-CHAR or `]`.
pub fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// A cursor over one command.
pub struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    pub fn new(buf: &'a [u8]) -> Parser<'a> {
        Parser { buf, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(ParseError::Expected(what))
        }
    }

    /// One or more spaces (clients that send two are tolerated).
    pub fn sp(&mut self) -> Result<()> {
        self.expect(b' ', "a space")?;
        while self.eat(b' ') {}
        Ok(())
    }

    /// The end of the command; trailing spaces are tolerated.
    pub fn end(&mut self) -> Result<()> {
        while self.eat(b' ') {}
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(ParseError::Trailing)
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    pub fn tag(&mut self) -> Result<&'a str> {
        let tag = self.take_while(|b| is_astring_char(b) && b != b'+');
        if tag.is_empty() {
            return Err(ParseError::Expected("a tag"));
        }
        // Tag characters are all ASCII, so this cannot fail.
        std::str::from_utf8(tag).map_err(|_| ParseError::Expected("a tag"))
    }

    pub fn atom(&mut self) -> Result<&'a [u8]> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() {
            Err(ParseError::Expected("an atom"))
        } else {
            Ok(atom)
        }
    }

    pub fn astring(&mut self) -> Result<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let s = self.take_while(is_astring_char);
                if s.is_empty() {
                    Err(ParseError::Expected("a string"))
                } else {
                    Ok(Cow::Borrowed(s))
                }
            }
        }
    }

    /// A quoted string or a literal.
    pub fn string(&mut self) -> Result<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal().map(Cow::Borrowed),
            _ => Err(ParseError::Expected("a quoted string or literal")),
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, [u8]>> {
        self.expect(b'"', "a quoted string")?;
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let Some(b) = self.peek() else {
                return Err(ParseError::Expected("a closing quote"));
            };
            self.pos += 1;
            match b {
                b'"' => {
                    return Ok(match owned {
                        Some(v) => Cow::Owned(v),
                        None => Cow::Borrowed(&self.buf[start..self.pos - 1]),
                    })
                }
                b'\\' => {
                    let escaped = match self.peek() {
                        Some(e @ (b'"' | b'\\')) => e,
                        _ => {
                            return Err(ParseError::Invalid(
                                "syntax error: bad escape in a quoted string",
                            ))
                        }
                    };
                    self.pos += 1;
                    owned
                        .get_or_insert_with(|| self.buf[start..self.pos - 2].to_vec())
                        .push(escaped);
                }
                b'\r' | b'\n' | 0 => {
                    return Err(ParseError::Invalid(
                        "syntax error: CR, LF or NUL in a quoted string",
                    ))
                }
                _ => {
                    if let Some(v) = owned.as_mut() {
                        v.push(b);
                    }
                }
            }
        }
    }

    /// `{n}` or `{n+}`, CRLF, then n bytes (already read by the session).
    fn literal(&mut self) -> Result<&'a [u8]> {
        self.expect(b'{', "a literal")?;
        let n = self.number64()?;
        self.eat(b'+');
        self.expect(b'}', "'}' ending a literal")?;
        self.expect(b'\r', "CRLF after a literal")?;
        self.expect(b'\n', "CRLF after a literal")?;
        let n = usize::try_from(n).map_err(|_| ParseError::Number)?;
        let end = self.pos.checked_add(n).ok_or(ParseError::Number)?;
        let data = self
            .buf
            .get(self.pos..end)
            .ok_or(ParseError::Expected("the literal's bytes"))?;
        self.pos = end;
        Ok(data)
    }

    fn number64(&mut self) -> Result<u64> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(ParseError::Expected("a number"));
        }
        digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(ParseError::Number)
        })
    }

    pub fn number(&mut self) -> Result<u32> {
        u32::try_from(self.number64()?).map_err(|_| ParseError::Number)
    }

    /// `sequence-set`. Zero is accepted here; it names no message and the session rejects it
    /// where sequence numbers must exist.
    pub fn seq_set(&mut self) -> Result<SeqSet> {
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_bound()?;
            let b = if self.eat(b':') { self.seq_bound()? } else { a };
            ranges.push((a, b));
            if !self.eat(b',') {
                return Ok(SeqSet(ranges));
            }
        }
    }

    fn seq_bound(&mut self) -> Result<Bound> {
        if self.eat(b'*') {
            Ok(Bound::Star)
        } else {
            self.number().map(Bound::Num).map_err(|e| {
                if e == ParseError::Number {
                    e
                } else {
                    ParseError::Expected("a message set")
                }
            })
        }
    }

    /// Case-insensitively consumes `word` if it is next and is not the start of a longer atom.
    fn eat_word(&mut self, word: &str) -> bool {
        let end = self.pos + word.len();
        match self.buf.get(self.pos..end) {
            Some(s)
                if s.eq_ignore_ascii_case(word.as_bytes())
                    && !self.buf.get(end).is_some_and(|&b| is_atom_char(b)) =>
            {
                self.pos = end;
                true
            }
            _ => false,
        }
    }

    /// `flag-list`: `(` [flag *(SP flag)] `)`.
    fn flag_list(&mut self) -> Result<Flags> {
        self.expect(b'(', "'(' starting a flag list")?;
        let mut flags = Flags::empty();
        if self.eat(b')') {
            return Ok(flags);
        }
        for _ in 0..FLAGS_IN_LIST_MAX {
            flags = flags.union(&self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
        Err(ParseError::Invalid("too many flags"))
    }

    /// One flag: a system flag or a keyword. `\Recent` parses but sets nothing (the server
    /// sets it).
    fn flag(&mut self) -> Result<Flags> {
        if self.eat(b'\\') {
            let name = self.atom()?;
            let name = String::from_utf8_lossy(name);
            if name.eq_ignore_ascii_case("Recent") {
                return Ok(Flags::empty());
            }
            Flags::from_name(&format!("\\{name}"))
                .ok_or(ParseError::Invalid("unsupported system flag"))
        } else {
            let name = String::from_utf8_lossy(self.atom()?);
            if name.eq_ignore_ascii_case("NIL") {
                return Err(ParseError::Invalid("NIL is not a flag"));
            }
            Flags::keyword(&name).map_err(|_| ParseError::Invalid("a keyword over 100 bytes"))
        }
    }

    /// `mailbox` (an astring; INBOX is compared case-insensitively by the session).
    fn mailbox(&mut self) -> Result<Cow<'a, [u8]>> {
        self.astring()
    }

    /// `list-mailbox`: list-chars (atom chars plus `%`, `*`, `]`) or a string.
    fn list_mailbox(&mut self) -> Result<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let s = self.take_while(|b| is_atom_char(b) || matches!(b, b'%' | b'*' | b']'));
                if s.is_empty() {
                    Err(ParseError::Expected("a mailbox pattern"))
                } else {
                    Ok(Cow::Borrowed(s))
                }
            }
        }
    }
}

/// Parses everything after `tag SP`.
pub fn command<'a>(p: &mut Parser<'a>) -> Result<Command<'a>> {
    let name = p
        .atom()
        .map_err(|_| ParseError::UnknownCommand)?
        .to_ascii_uppercase();
    let cmd = match name.as_slice() {
        b"CAPABILITY" => Command::Capability,
        b"ID" => {
            p.sp()?;
            Command::Id(id_params(p)?)
        }
        b"NOOP" => Command::Noop,
        b"LOGOUT" => Command::Logout,
        b"NAMESPACE" => Command::Namespace,
        b"CHECK" => Command::Check,
        b"CLOSE" => Command::Close,
        b"UNSELECT" => Command::Unselect,
        b"EXPUNGE" => Command::Expunge { uids: None },
        b"LOGIN" => {
            p.sp()?;
            let user = p.astring()?;
            p.sp()?;
            let password = p.astring()?;
            Command::Login { user, password }
        }
        b"AUTHENTICATE" => {
            p.sp()?;
            let mechanism = p.atom()?;
            let initial = if p.peek() == Some(b' ') {
                p.sp()?;
                let ir =
                    p.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                if ir.is_empty() {
                    return Err(ParseError::Expected("a base64 initial response"));
                }
                Some(ir)
            } else {
                None
            };
            Command::Authenticate { mechanism, initial }
        }
        b"SELECT" | b"EXAMINE" => {
            p.sp()?;
            Command::Select {
                mailbox: p.mailbox()?,
                read_only: name == b"EXAMINE",
            }
        }
        b"CREATE" | b"DELETE" | b"SUBSCRIBE" | b"UNSUBSCRIBE" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            match name.as_slice() {
                b"CREATE" => Command::Create(mailbox),
                b"DELETE" => Command::Delete(mailbox),
                b"SUBSCRIBE" => Command::Subscribe(mailbox),
                _ => Command::Unsubscribe(mailbox),
            }
        }
        b"RENAME" => {
            p.sp()?;
            let from = p.mailbox()?;
            p.sp()?;
            let to = p.mailbox()?;
            Command::Rename { from, to }
        }
        b"LIST" | b"LSUB" => {
            p.sp()?;
            let reference = p.mailbox()?;
            p.sp()?;
            let pattern = p.list_mailbox()?;
            Command::List {
                reference,
                pattern,
                lsub: name == b"LSUB",
            }
        }
        b"STATUS" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            p.sp()?;
            p.expect(b'(', "'(' starting the status items")?;
            let mut items = Vec::new();
            loop {
                let item = p.atom()?.to_ascii_uppercase();
                items.push(match item.as_slice() {
                    b"MESSAGES" => StatusItem::Messages,
                    b"RECENT" => StatusItem::Recent,
                    b"UIDNEXT" => StatusItem::UidNext,
                    b"UIDVALIDITY" => StatusItem::UidValidity,
                    b"UNSEEN" => StatusItem::Unseen,
                    _ => return Err(ParseError::Invalid("unknown status item")),
                });
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
            Command::Status { mailbox, items }
        }
        b"APPEND" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            p.sp()?;
            let mut flags = Flags::empty();
            if p.peek() == Some(b'(') {
                flags = p.flag_list()?;
                p.sp()?;
            }
            let mut date = None;
            if p.peek() == Some(b'"') {
                let text = p.quoted()?;
                date = Some(
                    date_time(&text)
                        .ok_or(ParseError::Invalid("syntax error: bad APPEND date-time"))?,
                );
                p.sp()?;
            }
            let message = p.literal()?;
            Command::Append {
                mailbox,
                flags,
                date,
                message,
            }
        }
        b"SEARCH" => search(p, false)?,
        b"FETCH" => fetch(p, false)?,
        b"STORE" => store(p, false)?,
        b"COPY" => copy(p, false)?,
        b"MOVE" => moving(p, false)?,
        b"UID" => {
            p.sp()?;
            let sub = p.atom()?.to_ascii_uppercase();
            match sub.as_slice() {
                b"SEARCH" => search(p, true)?,
                b"FETCH" => fetch(p, true)?,
                b"STORE" => store(p, true)?,
                b"COPY" => copy(p, true)?,
                b"MOVE" => moving(p, true)?,
                b"EXPUNGE" => {
                    p.sp()?;
                    Command::Expunge {
                        uids: Some(p.seq_set()?),
                    }
                }
                _ => return Err(ParseError::Invalid("unknown UID command")),
            }
        }
        _ => return Err(ParseError::UnknownCommand),
    };
    p.end()?;
    Ok(cmd)
}

/// `NIL` or `(field value ...)`, fields strings, values nstrings.
fn id_params<'a>(p: &mut Parser<'a>) -> Result<Vec<IdField<'a>>> {
    if p.eat_word("NIL") {
        return Ok(Vec::new());
    }
    p.expect(b'(', "NIL or a list of ID fields")?;
    let mut fields = Vec::new();
    while !p.eat(b')') {
        if !fields.is_empty() {
            p.sp()?;
        }
        let field = p.string()?;
        p.sp()?;
        let value = if p.eat_word("NIL") {
            None
        } else {
            Some(p.string()?)
        };
        if fields.len() == ID_FIELDS_MAX {
            return Err(ParseError::Invalid("more than 30 ID fields"));
        }
        fields.push((field, value));
    }
    Ok(fields)
}

fn copy<'a>(p: &mut Parser<'a>, uid: bool) -> Result<Command<'a>> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mailbox = p.mailbox()?;
    Ok(Command::Copy { uid, set, mailbox })
}

fn moving<'a>(p: &mut Parser<'a>, uid: bool) -> Result<Command<'a>> {
    match copy(p, uid)? {
        Command::Copy { uid, set, mailbox } => Ok(Command::Move { uid, set, mailbox }),
        _ => unreachable!("copy parses a COPY"),
    }
}

fn store<'a>(p: &mut Parser<'a>, uid: bool) -> Result<Command<'a>> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mode = if p.eat(b'+') {
        FlagMode::Add
    } else if p.eat(b'-') {
        FlagMode::Remove
    } else {
        FlagMode::Replace
    };
    let item = p.take_while(|b| b.is_ascii_alphabetic() || b == b'.');
    let silent = if item.eq_ignore_ascii_case(b"FLAGS") {
        false
    } else if item.eq_ignore_ascii_case(b"FLAGS.SILENT") {
        true
    } else {
        return Err(ParseError::Expected("FLAGS or FLAGS.SILENT"));
    };
    p.sp()?;
    let flags = if p.peek() == Some(b'(') {
        p.flag_list()?
    } else {
        // RFC 3501 also allows the flags without parentheses.
        let mut flags = p.flag()?;
        for _ in 0..FLAGS_IN_LIST_MAX {
            if p.peek() != Some(b' ') {
                break;
            }
            p.sp()?;
            if p.peek().is_none() {
                break;
            }
            flags = flags.union(&p.flag()?);
        }
        flags
    };
    Ok(Command::Store {
        uid,
        set,
        mode,
        silent,
        flags,
    })
}

fn fetch<'a>(p: &mut Parser<'a>, uid: bool) -> Result<Command<'a>> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut atts = Vec::new();
    if p.eat(b'(') {
        loop {
            fetch_att(p, &mut atts)?;
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else {
        fetch_att(p, &mut atts)?;
    }
    Ok(Command::Fetch { uid, set, atts })
}

/// One fetch item (or macro), appended to `atts`.
fn fetch_att(p: &mut Parser<'_>, atts: &mut Vec<FetchAtt>) -> Result<()> {
    let name = p
        .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
        .to_ascii_uppercase();
    let att = match name.as_slice() {
        b"ALL" | b"FAST" | b"FULL" => {
            atts.extend([
                FetchAtt::Flags,
                FetchAtt::InternalDate,
                FetchAtt::Rfc822Size,
            ]);
            if name != b"FAST" {
                atts.push(FetchAtt::Envelope);
            }
            if name == b"FULL" {
                atts.push(FetchAtt::Body);
            }
            return Ok(());
        }
        b"ENVELOPE" => FetchAtt::Envelope,
        b"FLAGS" => FetchAtt::Flags,
        b"INTERNALDATE" => FetchAtt::InternalDate,
        b"RFC822" => FetchAtt::Rfc822,
        b"RFC822.HEADER" => FetchAtt::Rfc822Header,
        b"RFC822.SIZE" => FetchAtt::Rfc822Size,
        b"RFC822.TEXT" => FetchAtt::Rfc822Text,
        b"BODYSTRUCTURE" => FetchAtt::BodyStructure,
        b"UID" => FetchAtt::Uid,
        b"BODY" if p.peek() != Some(b'[') => FetchAtt::Body,
        b"BODY" | b"BODY.PEEK" => {
            let section = section(p)?;
            let partial = if p.eat(b'<') {
                let start = p.number()?;
                p.expect(b'.', "'.' in a partial range")?;
                let count = p.number()?;
                p.expect(b'>', "'>' ending a partial range")?;
                if count == 0 {
                    return Err(ParseError::Invalid(
                        "syntax error: partial count must be positive",
                    ));
                }
                Some((start, count))
            } else {
                None
            };
            FetchAtt::Section {
                peek: name == b"BODY.PEEK",
                section,
                partial,
            }
        }
        _ => return Err(ParseError::Invalid("unknown or unsupported fetch item")),
    };
    atts.push(att);
    Ok(())
}

/// `"[" [section-spec] "]"`.
fn section(p: &mut Parser<'_>) -> Result<Section> {
    p.expect(b'[', "'[' starting a section")?;
    let mut section = Section::default();
    let mut text_follows = true;
    while p.peek().is_some_and(|b| b.is_ascii_digit()) {
        let n = p.number()?;
        if n == 0 {
            return Err(ParseError::Invalid("syntax error: part numbers start at 1"));
        }
        section.part.push(n);
        text_follows = p.eat(b'.');
        if !text_follows {
            break;
        }
    }
    if text_follows && p.peek() != Some(b']') {
        let word = p
            .take_while(|b| b.is_ascii_alphabetic() || b == b'.')
            .to_ascii_uppercase();
        section.text = Some(match word.as_slice() {
            b"HEADER" => SectionText::Header,
            b"TEXT" => SectionText::Text,
            b"MIME" if !section.part.is_empty() => SectionText::Mime,
            b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
                p.sp()?;
                p.expect(b'(', "'(' starting a header field list")?;
                let mut names = vec![p.astring()?.into_owned()];
                while !p.eat(b')') {
                    p.sp()?;
                    names.push(p.astring()?.into_owned());
                }
                SectionText::Fields {
                    not: word == b"HEADER.FIELDS.NOT",
                    names,
                }
            }
            _ => return Err(ParseError::Invalid("syntax error: unknown section")),
        });
    }
    p.expect(b']', "']' ending a section")?;
    Ok(section)
}

fn search<'a>(p: &mut Parser<'a>, uid: bool) -> Result<Command<'a>> {
    p.sp()?;
    let mut charset = None;
    if p.eat_word("CHARSET") {
        p.sp()?;
        charset = Some(p.astring()?);
        p.sp()?;
    }
    let mut keys = vec![search_key(p, 0)?];
    while p.peek() == Some(b' ') {
        p.sp()?;
        if p.peek().is_none() {
            break;
        }
        keys.push(search_key(p, 0)?);
    }
    let key = if keys.len() == 1 {
        keys.pop().unwrap_or(SearchKey::All)
    } else {
        SearchKey::And(keys)
    };
    Ok(Command::Search { uid, charset, key })
}

fn search_key(p: &mut Parser<'_>, depth: usize) -> Result<SearchKey> {
    if depth > NESTING_MAX {
        return Err(ParseError::Invalid("search criteria nested too deeply"));
    }
    if p.eat(b'(') {
        let mut keys = vec![search_key(p, depth + 1)?];
        while !p.eat(b')') {
            p.sp()?;
            keys.push(search_key(p, depth + 1)?);
        }
        return Ok(SearchKey::And(keys));
    }
    if p.peek().is_some_and(|b| b.is_ascii_digit() || b == b'*') {
        return Ok(SearchKey::Seq(p.seq_set()?));
    }
    let word = p.atom()?.to_ascii_uppercase();
    let string = |p: &mut Parser<'_>| -> Result<Vec<u8>> {
        p.sp()?;
        Ok(p.astring()?.into_owned())
    };
    let date = |p: &mut Parser<'_>| -> Result<NaiveDate> {
        p.sp()?;
        let text = if p.peek() == Some(b'"') {
            p.quoted()?.into_owned()
        } else {
            p.take_while(|b| b.is_ascii_alphanumeric() || b == b'-')
                .to_vec()
        };
        search_date(&text).ok_or(ParseError::Invalid(
            "syntax error: bad date (expected d-Mon-yyyy)",
        ))
    };
    Ok(match word.as_slice() {
        b"ALL" => SearchKey::All,
        b"RECENT" => SearchKey::Recent,
        b"OLD" => SearchKey::Not(Box::new(SearchKey::Recent)),
        b"NEW" => SearchKey::And(vec![SearchKey::Recent, SearchKey::NotFlag(Flags::SEEN)]),
        b"ANSWERED" => SearchKey::Flag(Flags::ANSWERED),
        b"DELETED" => SearchKey::Flag(Flags::DELETED),
        b"DRAFT" => SearchKey::Flag(Flags::DRAFT),
        b"FLAGGED" => SearchKey::Flag(Flags::FLAGGED),
        b"SEEN" => SearchKey::Flag(Flags::SEEN),
        b"UNANSWERED" => SearchKey::NotFlag(Flags::ANSWERED),
        b"UNDELETED" => SearchKey::NotFlag(Flags::DELETED),
        b"UNDRAFT" => SearchKey::NotFlag(Flags::DRAFT),
        b"UNFLAGGED" => SearchKey::NotFlag(Flags::FLAGGED),
        b"UNSEEN" => SearchKey::NotFlag(Flags::SEEN),
        b"KEYWORD" | b"UNKEYWORD" => {
            p.sp()?;
            let name = String::from_utf8_lossy(p.atom()?);
            let keyword = Flags::keyword(&name)
                .map_err(|_| ParseError::Invalid("a keyword over 100 bytes"))?;
            if word == b"KEYWORD" {
                SearchKey::Flag(keyword)
            } else {
                SearchKey::NotFlag(keyword)
            }
        }
        b"BCC" | b"CC" | b"FROM" | b"SUBJECT" | b"TO" => {
            let name = String::from_utf8_lossy(&word).to_ascii_lowercase();
            SearchKey::Header(name, string(p)?)
        }
        b"HEADER" => {
            let name = String::from_utf8_lossy(&string(p)?).to_ascii_lowercase();
            SearchKey::Header(name, string(p)?)
        }
        b"BODY" => SearchKey::Body(string(p)?),
        b"TEXT" => SearchKey::Text(string(p)?),
        b"LARGER" | b"SMALLER" => {
            p.sp()?;
            let n = p.number64()?;
            if word == b"LARGER" {
                SearchKey::Larger(n)
            } else {
                SearchKey::Smaller(n)
            }
        }
        b"BEFORE" => SearchKey::Before(date(p)?),
        b"ON" => SearchKey::On(date(p)?),
        b"SINCE" => SearchKey::Since(date(p)?),
        b"SENTBEFORE" => SearchKey::SentBefore(date(p)?),
        b"SENTON" => SearchKey::SentOn(date(p)?),
        b"SENTSINCE" => SearchKey::SentSince(date(p)?),
        b"NOT" => {
            p.sp()?;
            SearchKey::Not(Box::new(search_key(p, depth + 1)?))
        }
        b"OR" => {
            p.sp()?;
            let a = search_key(p, depth + 1)?;
            p.sp()?;
            let b = search_key(p, depth + 1)?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        b"UID" => {
            p.sp()?;
            SearchKey::Uid(p.seq_set()?)
        }
        _ => return Err(ParseError::Invalid("unknown search criterion")),
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn month(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as u32 + 1)
}

/// `date-text`: `d-Mon-yyyy` or `dd-Mon-yyyy`.
fn search_date(text: &[u8]) -> Option<NaiveDate> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.trim().splitn(3, '-');
    let day: u32 = it.next()?.trim().parse().ok()?;
    let month = month(it.next()?)?;
    let year: i32 = it.next()?.parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// APPEND `date-time` (`dd-Mon-yyyy hh:mm:ss +zzzz`, day possibly space-padded) as Unix seconds.
pub fn date_time(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let (date, rest) = text.trim_start().split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let date = search_date(date.as_bytes())?;
    let mut hms = time.splitn(3, ':').map(|s| s.parse::<u32>().ok());
    let time = date.and_hms_opt(hms.next()??, hms.next()??, hms.next()??)?;
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let minutes: i64 = digits[..2].parse::<i64>().ok()? * 60 + digits[2..].parse::<i64>().ok()?;
    Some(time.and_utc().timestamp() - sign * minutes * 60)
}

/// Decodes standard base64 (SASL responses); `None` if it is not valid base64.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Result<Command<'_>> {
        let mut p = Parser::new(line);
        p.tag()?;
        p.sp()?;
        command(&mut p)
    }

    #[test]
    fn atoms_quoted_and_literals() {
        let cmd = parse(b"a1 LOGIN user1 \"pa ss\\\"w\\\\\"").unwrap();
        assert_eq!(
            cmd,
            Command::Login {
                user: Cow::Borrowed(b"user1"),
                password: Cow::Owned(b"pa ss\"w\\".to_vec())
            }
        );
        let cmd = parse(b"a2 login {5}\r\nuser1 {8+}\r\npassword").unwrap();
        assert_eq!(
            cmd,
            Command::Login {
                user: Cow::Borrowed(b"user1"),
                password: Cow::Borrowed(b"password")
            }
        );
        assert!(parse(b"a3 LOGIN {9}\r\nshort").is_err());
        assert!(parse(b"a4 LOGIN \"unterminated").is_err());
        assert!(parse(b"a5 LOGIN \"bad\\escape\" x").is_err());
        assert_eq!(parse(b"a6 FROB"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"a7 NOOP extra"), Err(ParseError::Trailing));
        let mut p = Parser::new(b"+bad NOOP");
        assert!(p.tag().is_err());
    }

    #[test]
    fn sequence_sets() {
        let Command::Fetch { set, uid, .. } = parse(b"a UID FETCH 1,3:5,7:*,* FLAGS").unwrap()
        else {
            panic!()
        };
        assert!(uid);
        use Bound::*;
        assert_eq!(
            set.0,
            vec![
                (Num(1), Num(1)),
                (Num(3), Num(5)),
                (Num(7), Star),
                (Star, Star)
            ]
        );
        assert!(parse(b"a FETCH 1: FLAGS").is_err());
        assert!(parse(b"a FETCH 99999999999 FLAGS").is_err());
        assert!(parse(b"a FETCH , FLAGS").is_err());
    }

    #[test]
    fn fetch_items_and_sections() {
        let Command::Fetch { atts, .. } = parse(
            b"a FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (From \"To\")] BODY[1.2.MIME] BODY[]<0.100> body[text] RFC822.SIZE)",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            atts,
            vec![
                FetchAtt::Uid,
                FetchAtt::Section {
                    peek: true,
                    section: Section {
                        part: vec![],
                        text: Some(SectionText::Fields {
                            not: false,
                            names: vec![b"From".to_vec(), b"To".to_vec()]
                        })
                    },
                    partial: None
                },
                FetchAtt::Section {
                    peek: false,
                    section: Section {
                        part: vec![1, 2],
                        text: Some(SectionText::Mime)
                    },
                    partial: None
                },
                FetchAtt::Section {
                    peek: false,
                    section: Section::default(),
                    partial: Some((0, 100))
                },
                FetchAtt::Section {
                    peek: false,
                    section: Section {
                        part: vec![],
                        text: Some(SectionText::Text)
                    },
                    partial: None
                },
                FetchAtt::Rfc822Size,
            ]
        );
        let Command::Fetch { atts, .. } = parse(b"a FETCH 1:* ALL").unwrap() else {
            panic!()
        };
        assert_eq!(atts.len(), 4);
        assert!(parse(b"a FETCH 1 (FLAGS").is_err());
        assert!(parse(b"a FETCH 1 BODY[MIME]").is_err());
        assert!(parse(b"a FETCH 1 BODY[0]").is_err());
        assert!(parse(b"a FETCH 1 BOGUS").is_err());
    }

    #[test]
    fn store_and_flag_lists() {
        let cmd = parse(b"a STORE 2 +FLAGS.SILENT (\\Deleted \\seen $Junk)").unwrap();
        assert_eq!(
            cmd,
            Command::Store {
                uid: false,
                set: SeqSet(vec![(Bound::Num(2), Bound::Num(2))]),
                mode: FlagMode::Add,
                silent: true,
                flags: Flags::with_keywords(Flags::DELETED.union(&Flags::SEEN).bits(), &["$Junk"])
                    .unwrap()
            }
        );
        let Command::Store { flags, mode, .. } =
            parse(b"a UID STORE 1:* -FLAGS \\Flagged \\Draft").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (flags, mode),
            (Flags::FLAGGED.union(&Flags::DRAFT), FlagMode::Remove)
        );
        assert!(parse(b"a STORE 1 FLAGS (\\Bogus)").is_err());
        // Keywords: kept, without duplicates (ignoring case); NIL is not one; bounded.
        let Command::Store { flags, .. } =
            parse(b"a STORE 1 +FLAGS ($Forwarded $hello $FORWARDED)").unwrap()
        else {
            panic!()
        };
        assert_eq!(flags.keywords(), ["$Forwarded", "$hello"]);
        assert!(parse(b"a STORE 1 +FLAGS NIL").is_err());
        assert!(parse(b"a STORE 1 +FLAGS (NIL)").is_err());
        let Command::Store { flags, .. } = parse(b"a STORE 1 FLAGS ()").unwrap() else {
            panic!()
        };
        assert!(flags.is_empty());
        let many: Vec<String> = (0..80).map(|i| format!("k{i}")).collect();
        let line = format!("a STORE 1 +FLAGS ({})", many.join(" "));
        assert!(parse(line.as_bytes()).is_err());
        let long = format!("a STORE 1 +FLAGS ({})", "k".repeat(101));
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(b"a STORE 1 LABELS (x)").is_err());
    }

    #[test]
    fn search_keys() {
        let Command::Search { key, charset, .. } =
            parse(b"a SEARCH CHARSET UTF-8 OR (SEEN FLAGGED) NOT 1:3 UID 5:* SINCE 1-Feb-2024 SUBJECT {3}\r\nhi!").unwrap()
        else {
            panic!()
        };
        assert_eq!(charset.as_deref(), Some(&b"UTF-8"[..]));
        let SearchKey::And(keys) = key else { panic!() };
        assert_eq!(keys.len(), 4);
        assert!(matches!(keys[0], SearchKey::Or(..)));
        assert_eq!(
            keys[3],
            SearchKey::Header("subject".into(), b"hi!".to_vec())
        );
        assert!(matches!(
            parse(b"a SEARCH ALL").unwrap(),
            Command::Search {
                key: SearchKey::All,
                ..
            }
        ));
        let deep = format!("a SEARCH {}ALL", "NOT ".repeat(100));
        assert!(parse(deep.as_bytes()).is_err());
        let deep = format!("a SEARCH {}ALL{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(b"a SEARCH BOGUS").is_err());
        assert!(parse(b"a SEARCH ON 31-Feb-2024").is_err());
    }

    #[test]
    fn list_status_append() {
        assert_eq!(
            parse(b"a LIST \"\" *").unwrap(),
            Command::List {
                reference: Cow::Borrowed(b""),
                pattern: Cow::Borrowed(b"*"),
                lsub: false
            }
        );
        let Command::Status { items, .. } =
            parse(b"a STATUS inbox (MESSAGES UNSEEN UIDNEXT)").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            items,
            vec![
                StatusItem::Messages,
                StatusItem::Unseen,
                StatusItem::UidNext
            ]
        );
        let cmd =
            parse(b"a APPEND INBOX (\\Seen) \" 7-Feb-1994 21:52:25 -0800\" {4}\r\nabcd").unwrap();
        assert_eq!(
            cmd,
            Command::Append {
                mailbox: Cow::Borrowed(b"INBOX"),
                flags: Flags::SEEN,
                date: Some(760_686_745),
                message: b"abcd"
            }
        );
        assert!(parse(b"a APPEND INBOX \"bad date\" {1}\r\nx").is_err());
    }

    #[test]
    fn dates_and_base64() {
        assert_eq!(date_time(b"01-Jan-1970 01:00:00 +0100"), Some(0));
        assert_eq!(date_time(b" 1-Jan-1970 00:00:00 -0001"), Some(60));
        assert_eq!(
            base64_decode(b"AHVzZXIxAHBhc3N3b3Jk").unwrap(),
            b"\0user1\0password"
        );
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"****").is_none());
    }
}
