//! Shared-memory channels and shared state between processes on one machine.
//!
//! **Status: not yet implemented.** This crate reserves its place in the workspace; the
//! shared-memory issue fills it with typed channels that serialise straight into a ring in
//! shared memory, a zero-copy byte path, and shared state under a cross-process lock, all
//! surviving crashed and hostile peers.
//!
//! Choose it over `ipc-socket` and `ipc-queue` when both processes run on one machine and
//! latency or bandwidth matters most.
//!
//! # Example
//!
//! The channel's message types come from `ipc-core`, re-exported here:
//!
//! ```
//! let limits = ipc_shm::core::Limits::default();
//! assert_eq!(limits.max_frame_len(), 16 * 1024 * 1024);
//! ```
//!
//! # Feature flags
//!
//! None yet.

/// The shared foundation: errors, encoding, traits.
pub use ipc_core as core;
