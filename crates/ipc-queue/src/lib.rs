#![forbid(unsafe_code)]

//! Durable typed message queues: producers and consumers that need not run at the same time.
//!
//! **Status: not yet implemented.** This crate reserves its place in the workspace; the queue
//! issues fill it with an embedded on-disk queue (no server, nothing acknowledged ever lost)
//! and a RabbitMQ backend behind the same API.
//!
//! Choose it over `ipc-shm` and `ipc-socket` when the receiver may not be running when a
//! message is sent, or when a message must survive a crash of either side.
//!
//! # Example
//!
//! Messages are encoded with ipc-core's postcard encoding, re-exported here:
//!
//! ```
//! let mut buf = [0u8; 8];
//! let n = ipc_queue::core::encode_into(&42u32, &mut buf)?;
//! assert_eq!(ipc_queue::core::decode::<u32>(&buf[..n])?, 42);
//! # Ok::<(), ipc_queue::core::Error>(())
//! ```
//!
//! # Feature flags
//!
//! None yet.

/// The shared foundation: encoding, errors, traits.
pub use ipc_core as core;
