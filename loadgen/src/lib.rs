//! The load generator: workload models, protocol drivers, the open-loop engine and metrics.
//!
//! It talks to any target over SMTP, POP3 and IMAP only (and a node's admin API, through the
//! runner); it never reaches into the `cluster` crate. Everything it does is seeded and
//! reproducible, and split-able: a share of users and rate per agent, its own seed, results that
//! merge exactly (HdrHistograms, not averages).

pub mod drivers;
pub mod engine;
pub mod experiment;
pub mod ledger;
pub mod message;
pub mod metrics;
pub mod trace;
pub mod web;
pub mod workload;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The kinds of operation a workload mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Deliver one message (to one or more recipients) over SMTP.
    Smtp,
    /// A POP3 session: login, list, retrieve new messages, delete them, quit.
    Pop3,
    /// An IMAP session: login, select INBOX, fetch new messages, flag, expunge, logout.
    Imap,
    /// An HTTP request for an HTML page (told by the URL's extension).
    Html,
    /// An HTTP request for a GIF image.
    Gif,
    /// An HTTP request for a JPEG image.
    Jpeg,
    /// Any other HTTP request.
    Other,
}

impl OpKind {
    /// Every kind, in the order of the recorder's slots.
    pub const ALL: [OpKind; 7] = [
        OpKind::Smtp,
        OpKind::Pop3,
        OpKind::Imap,
        OpKind::Html,
        OpKind::Gif,
        OpKind::Jpeg,
        OpKind::Other,
    ];
    /// The mail operations a `[workload] mix` mixes.
    pub const MAIL: [OpKind; 3] = [OpKind::Smtp, OpKind::Pop3, OpKind::Imap];
    /// HTTP requests, by the content type their URL names: a web workload's metrics are per
    /// type, and their sum is the HTTP total.
    pub const WEB: [OpKind; 4] = [OpKind::Html, OpKind::Gif, OpKind::Jpeg, OpKind::Other];
    pub const COUNT: usize = OpKind::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Smtp => "smtp",
            OpKind::Pop3 => "pop3",
            OpKind::Imap => "imap",
            OpKind::Html => "html",
            OpKind::Gif => "gif",
            OpKind::Jpeg => "jpeg",
            OpKind::Other => "other",
        }
    }

    /// Whether this is an HTTP request kind.
    pub fn is_web(self) -> bool {
        OpKind::WEB.contains(&self)
    }

    /// The kind of an HTTP request for `url`, by its path's extension (query ignored,
    /// case-insensitive; a path ending in `/` or `.htm` is HTML, `.jpeg` and `.jpe` JPEG).
    pub fn of_url(url: &str) -> OpKind {
        let path = url.split(['?', '#']).next().unwrap_or("");
        let path = match path.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => path,
        };
        if path.ends_with('/') {
            return OpKind::Html;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        let Some((_, extension)) = name.rsplit_once('.') else {
            return OpKind::Other;
        };
        match extension.to_ascii_lowercase().as_str() {
            "gif" => OpKind::Gif,
            "html" | "htm" => OpKind::Html,
            "jpg" | "jpeg" | "jpe" => OpKind::Jpeg,
            _ => OpKind::Other,
        }
    }
}

/// Where the load goes: front ends per protocol (chosen round robin, as DNS would), the mail
/// domain, and the user population's names and password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub smtp: Vec<SocketAddr>,
    pub pop3: Vec<SocketAddr>,
    pub imap: Vec<SocketAddr>,
    pub domain: String,
    /// User names are `pattern` with `{n}` replaced by `first + index`.
    pub user_pattern: String,
    pub user_first: u64,
    pub password: String,
}

impl Target {
    /// The login name of user number `index` of the population.
    pub fn user(&self, index: u64) -> String {
        self.user_pattern
            .replace("{n}", &(self.user_first + index).to_string())
    }

    /// The mail address of user number `index`.
    pub fn address(&self, index: u64) -> String {
        format!("{}@{}", self.user(index), self.domain)
    }
}
