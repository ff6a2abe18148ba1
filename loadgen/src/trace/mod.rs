//! Web access traces: read them, measure them against TranSend's, synthesize them, replay them.
//!
//! - [`clf`]: a tolerant, streaming reader of Common and Combined Log Format logs (plain or
//!   gzip), counting every skipped line by reason.
//! - [`fit`]: a trace's content mix, mean sizes, Zipf popularity and peak/mean burstiness at
//!   TranSend's three time scales, next to TranSend's figures (Fox et al., SOSP 1997).
//! - [`synth`]: a seeded, deterministic, streaming synthesizer of TranSend-like traces.
//! - [`replay`]: the schedule of a trace's requests, at its own (scaled) timing or a fixed rate.
//!
//! Everything here streams: no module holds a whole trace, only a line, a few counters per kind
//! and (for the fit) one counter per object.

pub mod clf;
pub mod fit;
pub mod replay;
pub mod synth;
