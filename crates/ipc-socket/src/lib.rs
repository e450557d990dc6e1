#![forbid(unsafe_code)]

//! Typed, framed connections over local sockets (Unix domain sockets, named pipes) and TCP.
//!
//! **Status: not yet implemented.** This crate reserves its place in the workspace; the
//! socket issue fills it with blocking and async connections carrying ipc-core frames, a
//! server for many clients with request/response and publish/subscribe, heartbeats,
//! reconnection and backpressure.
//!
//! Choose it over `ipc-shm` when the processes may run on different machines or are written
//! in other languages (the wire format is documented in ipc-core's `PROTOCOL.md`), and over
//! `ipc-queue` when both sides are running at the same time.
//!
//! # Example
//!
//! The wire format it speaks is ipc-core's, re-exported here:
//!
//! ```
//! assert_eq!(ipc_socket::core::HEADER_LEN, 16);
//! ```
//!
//! # Feature flags
//!
//! None yet.

/// The shared foundation: frames, handshake, errors, traits.
pub use ipc_core as core;
