//! The SNS/TACC-style transforming web proxy (TranSend, Fox et al., SOSP 1997): front ends that
//! take HTTP proxy requests, stateless workers (distillers) picked by lottery over the manager's
//! load hints, a manager that beacons those hints and spawns, restarts and retires processes,
//! cache partitions, a profile database, the node daemons that run it all, and the bundled
//! origin's corpus standing in for the Internet. Nothing here depends on `crate::mail`.
//!
//! Pure parts: `corpus` (the seeded objects the origin serves), `transform` (the distillers'
//! transforms: bytes in, bytes out), `lottery` and `policy` (the front ends' and the manager's
//! decisions). The rest are the processes and what they share.

pub mod cache;
pub mod config;
pub mod corpus;
pub mod front_end;
pub mod http;
pub mod lottery;
pub mod manager;
pub mod node;
pub mod origin;
pub mod policy;
pub mod process;
pub mod profiles;
pub mod proto;
pub mod transform;
pub mod worker;
