//! The bundled reference cluster: a Porcupine-style mail service.
//!
//! Every node runs the SMTP, POP3 and IMAP front ends, its mail store and an admin API. This crate
//! depends on no other crate of the workspace: the load generator reaches it only over its
//! protocols and its admin API.

pub mod admin;
pub mod config;
pub mod conn;
pub mod directory;
pub mod faults;
pub mod imap;
pub mod mail;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peering;
pub mod pop3;
pub mod smtp;
pub mod store;
pub mod transport;
pub mod usermap;
