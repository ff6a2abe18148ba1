//! The Porcupine-style mail service: every node runs SMTP, POP3 and IMAP front ends, its mailbox
//! fragments (the store), the user map and mail map, placement and replication, over the shared
//! core's membership and transport.
//!
//! - `node.rs` brings a mail node to life; `config.rs` is its configuration.
//! - `smtp.rs`, `pop3.rs`, `imap/` are the protocol front ends; `directory.rs` who the users are.
//! - `service.rs` is the cluster mail service the front ends call (deliver, read, flags,
//!   expunge, replication); `usermap.rs`, `mailmap.rs`, `placement.rs`, `wire.rs` its parts.
//! - `store/` keeps this node's fragments in an fsynced log; `admin.rs` adds the mail routes to
//!   the core admin API; `metrics.rs` the mail node's Prometheus metrics.

pub mod admin;
pub mod config;
pub mod directory;
pub mod imap;
pub mod machine;
pub mod mailmap;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod pop3;
mod service;
pub mod sim;
pub mod smtp;
pub mod store;
pub mod usermap;
pub mod wire;

pub use service::*;
