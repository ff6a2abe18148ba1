//! Wombat membership: which nodes of the cluster are alive, agreed through a ranked leader.
//!
//! Nodes have permanent ranked ids (lower id = higher rank). Each node pings its predecessor in
//! the current view; the best-ranked live node leads and broadcasts ("beacons") its view; joiners
//! say "I'm here", successors report failures, rank-ordered takeover timers replace dead leaders,
//! false leaders are suppressed by broadcasting the union of views, and partitions form their own
//! views and merge on healing.
//!
//! [`Membership`] is a pure state machine: messages and ticks in, messages and view changes out.
//! Nothing in this module may do I/O, read a clock or draw unseeded randomness; the transport and
//! the timer live in the node, and [`sim`] drives the same state machine through a deterministic,
//! seeded network with drops, delays, partitions and crashes.

mod config;
mod machine;
mod message;
pub mod sim;

pub use config::{Config, ConfigError, NODES_MAX};
pub use machine::{Membership, Role, Stats};
pub use message::{Message, View};
