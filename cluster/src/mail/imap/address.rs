//! RFC 5322 address lists as IMAP's ENVELOPE wants them (RFC 3501 7.4.2): each address as
//! (name, source route, mailbox, host), and a group as a start marker (NIL NIL "name" NIL), its
//! members, and an end marker (NIL NIL NIL NIL).
//!
//! Lenient the way mail clients are: a display name from a quoted string or the words before
//! `<`, else from a comment after the address (`user@host (Real Name)`); comments anywhere
//! else skipped; an obsolete source route (`<@relay1,@relay2:user@host>`) kept as the route;
//! empty groups (`undisclosed-recipients:;`); an address without a domain given an empty host.
//! Anything unparseable is skipped up to the next comma, never fatal. Bounded: at most
//! [`ADDRESSES_MAX`] addresses and [`COMMENT_DEPTH_MAX`] nested comment levels.

/// Most addresses (group markers included) one header yields.
pub const ADDRESSES_MAX: usize = 1_000;
/// Deepest comment nesting followed; deeper parentheses are taken as text.
pub const COMMENT_DEPTH_MAX: usize = 16;

/// One address, or a group marker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    pub name: Option<String>,
    /// An obsolete source route: `@relay1,@relay2`.
    pub route: Option<String>,
    /// The local part; for a group start, the group's name; `None` for a group end.
    pub mailbox: Option<String>,
    /// The domain; `None` only for group markers.
    pub host: Option<String>,
}

impl Address {
    /// `mailbox@host` (or the mailbox alone), for searching.
    pub fn spec(&self) -> String {
        match (&self.mailbox, &self.host) {
            (Some(m), Some(h)) if !h.is_empty() => format!("{m}@{h}"),
            (Some(m), _) => m.clone(),
            _ => String::new(),
        }
    }

    /// Whether this is a group's start or end marker.
    pub fn is_group_marker(&self) -> bool {
        self.host.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An atom (dots allowed, as in obsolete phrases and dot-atoms).
    Atom(String),
    Quoted(String),
    /// A comment's text, parentheses removed.
    Comment(String),
    /// A domain literal, brackets kept.
    Literal(String),
    Special(char),
}

fn is_special(c: char) -> bool {
    matches!(
        c,
        '<' | '>' | '@' | ',' | ';' | ':' | '"' | '(' | ')' | '[' | ']' | '\\'
    )
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(e) = chars.next() {
                            s.push(e);
                        }
                    }
                    '\r' | '\n' => {}
                    c => s.push(c),
                }
            }
            out.push(Token::Quoted(s));
        } else if c == '(' {
            chars.next();
            let mut depth = 1usize;
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '(' if depth < COMMENT_DEPTH_MAX => {
                        depth += 1;
                        s.push(c);
                    }
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        s.push(c);
                    }
                    '\\' => {
                        if let Some(e) = chars.next() {
                            s.push(e);
                        }
                    }
                    c => s.push(c),
                }
            }
            out.push(Token::Comment(s.trim().to_string()));
        } else if c == '[' {
            let mut s = String::new();
            for c in chars.by_ref() {
                s.push(c);
                if c == ']' {
                    break;
                }
            }
            out.push(Token::Literal(s));
        } else if is_special(c) {
            chars.next();
            out.push(Token::Special(c));
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || is_special(c) {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(Token::Atom(s));
        }
    }
    out
}

/// Parses an address-list header value (unfolded).
pub fn parse_list(value: &str) -> Vec<Address> {
    let tokens = tokenize(value);
    let mut p = Parser {
        tokens: &tokens,
        at: 0,
        out: Vec::new(),
        skipped: Vec::new(),
    };
    p.list(false);
    p.out.truncate(ADDRESSES_MAX);
    p.out
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    out: Vec<Address>,
    /// Comments a domain was read past (`user@host (Real Name)` ends in one).
    skipped: Vec<String>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn special(&self, c: char) -> bool {
        self.peek() == Some(&Token::Special(c))
    }

    /// Addresses and groups separated by commas, to the end (or, in a group, to `;`).
    fn list(&mut self, in_group: bool) {
        while self.peek().is_some() && self.out.len() < ADDRESSES_MAX {
            if self.special(',') {
                self.at += 1;
                continue;
            }
            if in_group && self.special(';') {
                return;
            }
            let start = self.at;
            self.address(in_group);
            if self.at == start {
                // Nothing understood: skip a token so the parse always moves on.
                self.at += 1;
            }
        }
    }

    /// One mailbox or group.
    fn address(&mut self, in_group: bool) {
        self.skipped.clear();
        let mut words: Vec<String> = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut phrase_quoted = false;
        loop {
            match self.peek() {
                Some(Token::Atom(a)) => {
                    words.push(a.clone());
                    self.at += 1;
                }
                Some(Token::Quoted(q)) => {
                    words.push(q.clone());
                    phrase_quoted = true;
                    self.at += 1;
                }
                Some(Token::Comment(c)) => {
                    comments.push(c.clone());
                    self.at += 1;
                }
                Some(Token::Special('<')) => {
                    self.at += 1;
                    let name = (!words.is_empty()).then(|| words.join(" "));
                    let mut a = self.angle_addr();
                    a.name = name.or_else(|| self.trailing_comment(&comments));
                    self.push(a);
                    return;
                }
                Some(Token::Special(':')) if !in_group && !words.is_empty() => {
                    self.at += 1;
                    self.push(Address {
                        mailbox: Some(words.join(" ")),
                        ..Address::default()
                    });
                    self.list(true);
                    if self.special(';') {
                        self.at += 1;
                    }
                    self.push(Address::default());
                    return;
                }
                Some(Token::Special('@')) if !phrase_quoted || words.len() == 1 => {
                    // An addr-spec: the words so far are its local part.
                    self.at += 1;
                    let local = words.join(".");
                    let host = self.domain();
                    let name = self.trailing_comment(&comments);
                    self.push(Address {
                        name,
                        route: None,
                        mailbox: Some(local),
                        host: Some(host),
                    });
                    return;
                }
                _ => break,
            }
        }
        // A bare word (no domain): a mailbox with an empty host.
        if !words.is_empty() {
            let name = self.trailing_comment(&comments);
            self.push(Address {
                name,
                route: None,
                mailbox: Some(words.join(".")),
                host: Some(String::new()),
            });
        }
    }

    /// After `<`: `[@route,@route:]local@domain>`.
    fn angle_addr(&mut self) -> Address {
        let mut route = Vec::new();
        while self.special('@') {
            self.at += 1;
            route.push(format!("@{}", self.domain()));
            if self.special(',') {
                self.at += 1;
            }
        }
        if !route.is_empty() && self.special(':') {
            self.at += 1;
        }
        let mut local = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Atom(a)) => local.push(a.clone()),
                Some(Token::Quoted(q)) => local.push(q.clone()),
                Some(Token::Comment(_)) => {}
                _ => break,
            }
            self.at += 1;
        }
        let host = if self.special('@') {
            self.at += 1;
            self.domain()
        } else {
            String::new()
        };
        // To the closing bracket (anything before it is dropped).
        while let Some(t) = self.next() {
            if *t == Token::Special('>') {
                break;
            }
        }
        Address {
            name: None,
            route: (!route.is_empty()).then(|| route.join(",")),
            mailbox: Some(local.join(".")),
            host: Some(host),
        }
    }

    /// A domain: atoms (dotted) or a literal; comments skipped.
    fn domain(&mut self) -> String {
        let mut parts = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Atom(a)) => parts.push(a.clone()),
                Some(Token::Literal(l)) => parts.push(l.clone()),
                Some(Token::Comment(c)) => self.skipped.push(c.clone()),
                _ => break,
            }
            self.at += 1;
        }
        parts.join("")
    }

    /// A comment right after an address, as its display name; else one seen before it.
    fn trailing_comment(&mut self, before: &[String]) -> Option<String> {
        let mut name = None;
        while let Some(Token::Comment(c)) = self.peek() {
            if name.is_none() && !c.is_empty() {
                name = Some(c.clone());
            }
            self.at += 1;
        }
        name.or_else(|| self.skipped.iter().rev().find(|c| !c.is_empty()).cloned())
            .or_else(|| before.iter().rev().find(|c| !c.is_empty()).cloned())
    }

    fn push(&mut self, a: Address) {
        if self.out.len() < ADDRESSES_MAX {
            self.out.push(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: Option<&str>, mailbox: &str, host: &str) -> Address {
        Address {
            name: name.map(String::from),
            route: None,
            mailbox: Some(mailbox.into()),
            host: Some(host.into()),
        }
    }

    #[test]
    fn names_from_phrases_quotes_and_comments() {
        assert_eq!(
            parse_list("Fred Bloggs <fred@example.com>"),
            [a(Some("Fred Bloggs"), "fred", "example.com")]
        );
        assert_eq!(
            parse_list("\"Bloggs, Fred \\\"Q\\\"\" <fred@example.com>"),
            [a(Some("Bloggs, Fred \"Q\""), "fred", "example.com")]
        );
        assert_eq!(
            parse_list("fred@example.com (Fred Bloggs)"),
            [a(Some("Fred Bloggs"), "fred", "example.com")]
        );
        assert_eq!(
            parse_list("fred@example.com"),
            [a(None, "fred", "example.com")]
        );
        // Comments inside an address are skipped.
        assert_eq!(
            parse_list("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
            [a(Some("Pete"), "pete", "silly.test")]
        );
        assert_eq!(
            parse_list("a@b.c, \"x y\" <d@e.f>,g@h (G (nested) H)"),
            [
                a(None, "a", "b.c"),
                a(Some("x y"), "d", "e.f"),
                a(Some("G (nested) H"), "g", "h")
            ]
        );
    }

    #[test]
    fn groups_and_empty_groups() {
        let list =
            parse_list("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, x@y");
        assert_eq!(list.len(), 6);
        assert_eq!(list[0].mailbox.as_deref(), Some("A Group"));
        assert!(list[0].is_group_marker() && list[4].is_group_marker());
        assert_eq!(list[4], Address::default());
        assert_eq!(list[2], a(None, "joe", "where.test"));
        assert_eq!(list[5], a(None, "x", "y"));
        let empty = parse_list("undisclosed-recipients:;");
        assert_eq!(empty.len(), 2);
        assert_eq!(empty[0].mailbox.as_deref(), Some("undisclosed-recipients"));
        assert_eq!(empty[1], Address::default());
    }

    #[test]
    fn source_routes_literals_and_junk() {
        let list = parse_list("<@relay1.test,@relay2.test:user@host.test>");
        assert_eq!(list[0].route.as_deref(), Some("@relay1.test,@relay2.test"));
        assert_eq!(list[0].spec(), "user@host.test");
        assert_eq!(parse_list("x@[192.0.2.1]"), [a(None, "x", "[192.0.2.1]")]);
        assert_eq!(parse_list("undisclosed"), [a(None, "undisclosed", "")]);
        // Nothing here panics or loops.
        for junk in [
            "<<<>>>",
            "@@@",
            "(((",
            "\"unterminated",
            ":;:;",
            ",,,",
            "a <b",
            "<@x",
            "",
        ] {
            let _ = parse_list(junk);
        }
        assert!(parse_list(&"a@b,".repeat(5_000)).len() <= ADDRESSES_MAX);
        assert!(parse_list(&format!("{}x", "(".repeat(10_000))).len() <= 1);
    }
}
