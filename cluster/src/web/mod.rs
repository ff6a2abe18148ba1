//! The SNS/TACC-style transforming web proxy (TranSend, Fox et al., SOSP 1997): front ends that
//! take HTTP proxy requests, stateless workers (distillers) picked by lottery over the manager's
//! load hints, a manager that beacons those hints and spawns, restarts and retires processes,
//! cache partitions, a profile database, and the node daemons that run it all.

pub mod cache;
pub mod config;
pub mod http;
pub mod lottery;
pub mod manager;
pub mod node;
pub mod policy;
pub mod process;
pub mod proto;
