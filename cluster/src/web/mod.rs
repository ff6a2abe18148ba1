//! The transforming web proxy: an SNS/TACC-style service after TranSend (Fox et al., SOSP 1997).
//! Front ends take HTTP requests, fetch objects from the origin (or a cache), and hand them to
//! distillers (workers) that shrink images and mark up pages per the user's profile.
//!
//! The parts here are the pure and self-contained ones: `corpus` (the seeded objects the bundled
//! origin serves), `origin` (that origin, an HTTP/1.1 server standing in for the Internet), and
//! `transform` (the distillers' transforms: bytes in, bytes out). Nothing here depends on
//! `crate::mail`.

pub mod corpus;
pub mod origin;
pub mod transform;
