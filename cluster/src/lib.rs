//! The bundled reference clusters: a Porcupine-style mail service (`mail`) and an SNS/TACC-style
//! transforming web proxy (`web`), over a shared core (`core`) of membership, transport, faults,
//! admin API and device models.
//!
//! This crate depends on no other crate of the workspace: the load generator reaches it only over
//! its protocols and its admin API. `core` names no service; each service is a room of its own.

pub mod core;
pub mod fuzzing;
pub mod mail;
pub mod web;
