//! What every service of the reference cluster shares, and that names none of them: Wombat
//! membership (a pure state machine) and the peering that drives it, the peer transport, the fault
//! switch, bounded line I/O for text protocols, the admin API's core (bearer token, `/faults`,
//! `/metrics`), the modelled device behind the modelled disk and CPU, rendezvous hashing, and what the seeded
//! simulations share.
//!
//! Invariant: nothing here depends on `crate::mail` or `crate::web`; a service plugs its own
//! message type into the transport (`PeerMessage<S>`) and its own routes into the admin API.

pub mod admin;
pub mod budget;
pub mod bytes_serde;
pub mod conn;
pub mod device;
pub mod faults;
pub mod hashing;
pub mod membership;
pub mod peering;
pub mod sim;
pub mod transport;
