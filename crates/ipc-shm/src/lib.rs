//! Shared-memory channels and shared state between processes on one machine (Linux).
//!
//! - [`ShmSender`] / [`ShmReceiver`]: a typed channel. Messages (any serde type) are
//!   serialised with postcard straight into a ring in shared memory, and the receiver can
//!   decode them in place ([`ShmReceiver::recv_ref`]) with borrowed `&str` / `&[u8]` fields.
//!   [`ShmSender::reserve`] gives a zero-copy byte path for large payloads. A full ring blocks
//!   the sender or returns [`Full`](ipc_core::ErrorKind::Full); memory never grows. Up to
//!   [`MAX_SENDERS`] sender processes can feed one receiver
//!   ([`ChannelConfig::with_max_senders`]): each gets its own ring, so no lock is shared and a
//!   sender that dies cannot block the others.
//! - [`ShmState`]: a named plain-old-data value under a cross-process lock with timeouts,
//!   taken over when its holder dies.
//!
//! Choose it over `ipc-socket` and `ipc-durable-queue` when both processes run on one machine and
//! latency or bandwidth matters most. Use `ipc-socket` to talk across machines or languages,
//! `ipc-durable-queue` when messages must outlive the processes.
//!
//! # Guarantees
//!
//! - A peer killed with SIGKILL at any moment yields `PeerDied` (or `PeerClosed` for an
//!   orderly close) within tens of milliseconds, never a hang: waiting ends look at their
//!   peer's pid (and start time, against pid reuse) at least every 20 ms.
//! - No peer can shrink or grow the memory, so none can make another die of SIGBUS: it is
//!   a memfd sealed with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` before anyone else can
//!   reach it, found through a small rendezvous file at the name
//!   ([`segment_path`]) and opened as `/proc/<creator>/fd/<n>` ([`segment_memory_path`]);
//!   `open` refuses memory without those seals. The README's threat model says what a
//!   hostile peer of the same user can and cannot do.
//! - The creator of a name removes it from `/dev/shm` when dropped; a name left by a
//!   process that died is reclaimed by the next `create`, never one whose owner lives.
//! - A name appears only once its segment is ready; `open` checks the creator's liveness,
//!   the seals, the nonce that ties the memory to the name, and the header (magic, version,
//!   layout, message-type fingerprint, capacity, owner).
//! - Everything read from shared memory is validated before use: a peer scribbling over the
//!   segment causes errors or wrong values, never out-of-bounds access, panics, unbounded
//!   allocation or waits beyond their bounds. Messages carry no checksum: a process that
//!   can write the memory can also forge well-formed messages.
//! - Names and memory are mode 0600, and the memory is fully allocated up front, so a
//!   request beyond free memory is an error at `create` instead of a fault later.
//! - Sending and receiving allocate nothing per message.
//!
//! # Waiting, and why not raw_sync
//!
//! A waiting end spins briefly, yields for up to 50 µs, then sleeps on a Linux futex in the
//! segment, in slices of at most 20 ms so that it notices a dead peer. The ring's own
//! atomics carry the data; the futex is only a wake-up hint. raw_sync is not used: its mutex
//! is not robust (a holder killed with SIGKILL blocks everybody forever), its timed waits
//! under one second can fail at once, and its `Event` merges signals. Our futex waits take a
//! relative timeout, which has no such bug; sub-second timeouts are tested.
//! [`WaitMode::Polling`] never sleeps, for the lowest latency.
//!
//! A sleeper and its waker must not miss each other (the waker stores an index, then looks
//! whether the other end sleeps; the sleeper says it sleeps, then looks at the index once
//! more). That takes a full fence on both sides, which would cost the sending end one per
//! message. Where the kernel has `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` (Linux 4.16
//! and later), each process registers for it and a blocking end announces so in its line of
//! the segment: it calls `membarrier` before it sleeps (which runs the fence on the waker's
//! CPU for it), and the waker needs none per message. Without it, both sides fence; so do
//! ends set to sleep at once (no spin, no yield), which sleep on every wait and for which
//! a membarrier per sleep (an interrupt of the peer's CPU) costs more than the fences.
//!
//! # Example
//!
//! ```
//! use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Chat<'a> {
//!     from: &'a str,
//!     text: &'a str,
//! }
//!
//! let name = format!("doc-chat-{}", std::process::id());
//! let config = ChannelConfig::new().with_capacity(64 * 1024);
//! // Usually in two processes; here both ends live in one for the example.
//! let mut receiver = ShmReceiver::<Chat<'static>>::create(&name, &config)?;
//! let mut sender = ShmSender::<Chat<'static>>::open(&name, &config)?;
//!
//! sender.send(&Chat { from: "ann", text: "hi" })?;
//! let message = receiver.recv_ref()?;
//! let chat: Chat<'_> = message.decode()?; // borrows from shared memory
//! assert_eq!(chat, Chat { from: "ann", text: "hi" });
//! # Ok::<(), ipc_shm::core::Error>(())
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `baseline` | no | the module `baseline`: the raw rings and ping-pong that `cargo xtask bench` measures ipc-shm against (plain atomics, no validation, no crash safety); for this project's benchmarks, not an API promise |

#![cfg_attr(docsrs, feature(doc_cfg))]

// memfd seals, futexes and /proc are Linux's: say so instead of a screen of errors.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "ipc-shm builds only on Linux: it needs memfd seals, futex and /proc; on other systems \
     use ipc-socket"
);

#[cfg(feature = "baseline")]
#[cfg_attr(docsrs, doc(cfg(feature = "baseline")))]
pub mod baseline;
mod channel;
mod process;
mod segment;
mod state;
mod sys;
mod wait;

pub use crate::channel::{
    ChannelConfig, MAX_CAPACITY, MAX_SENDERS, MIN_CAPACITY, RecvGuard, SendSlot, ShmReceiver,
    ShmSender,
};
pub use crate::state::{Pod, ShmState, StateConfig, StateGuard};
pub use crate::wait::WaitMode;

/// The name file of the segment named `name`: `/dev/shm/ipc-{name}` on Linux, a small
/// rendezvous (mode 0600) that says where the creator's sealed memory is. It exists while
/// the creator lives (and after it was killed, until the next `create` reclaims it). Useful
/// to check for leftovers; never needed to use a channel.
pub fn segment_path(name: &str) -> std::path::PathBuf {
    segment::shm_path(name)
}

/// Where a process of the same user can open the memory of the segment named `name`:
/// `/proc/<creator pid>/fd/<n>`, read from its rendezvous. That is what `open` does; this
/// is for tools and tests that inspect a segment. The memory is sealed: it can be written,
/// but never shrunk or grown. The path is read from the name file and not checked: once the
/// creator is gone it no longer opens (or, after pid reuse, names something else; `open`
/// checks the creator's start time and the segment's nonce, this function does not).
///
/// Errors: `NotFound` if no segment has that name, `BadMagic` / `UnsupportedVersion` if the
/// file at the name is not a rendezvous of this version, `InvalidInput` for a bad name.
pub fn segment_memory_path(name: &str) -> ipc_core::Result<std::path::PathBuf> {
    segment::memory_path(name)
}

/// The shared foundation: errors, encoding, traits.
pub use ipc_core as core;
