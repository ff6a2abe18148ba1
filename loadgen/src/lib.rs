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
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Smtp, OpKind::Pop3, OpKind::Imap];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Smtp => "smtp",
            OpKind::Pop3 => "pop3",
            OpKind::Imap => "imap",
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
