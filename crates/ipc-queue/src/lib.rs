#![forbid(unsafe_code)]

//! Durable typed message queues: producers and consumers that need not run at the same time,
//! and nothing acknowledged is ever lost.
//!
//! The embedded backend is a directory on disk, shared by any number of producer and
//! consumer processes, with no server: segment files of checksummed records, a consumer
//! state log, and file locks that the kernel releases when a process dies. The byte layout
//! is specified in `FORMAT.md`.
//!
//! Choose this crate over `ipc-shm` and `ipc-socket` when the receiver may not be running
//! when a message is sent, or when a message must survive a crash of either side. It is
//! slower than both: a durable send waits for `fdatasync` (shared by concurrent senders).
//!
//! - [`Producer::send`] returns a [`Receipt`] once the message is on disk
//!   ([`Durability::Always`], the default; see the other modes for what they can lose).
//!   [`Producer::send_batch`] stores many messages with one sync.
//! - [`Consumer::recv`] returns a [`Delivery`] that must be settled: [`Consumer::ack`],
//!   [`Consumer::nack`] (again, optionally after a delay) or [`Consumer::reject`] (to the
//!   dead-letter queue). Unsettled deliveries come back when their lease runs out or their
//!   consumer process dies; after [`QueueConfig::with_max_deliveries`] deliveries they go
//!   to the dead-letter queue. Delivery is at least once.
//! - Time-to-live per queue ([`QueueConfig::with_ttl`]) or per message
//!   ([`Producer::send_with_ttl`]): expired messages are dead-lettered, not delivered.
//! - Several producers and competing consumers, in any processes.
//! - Bounded queues ([`QueueConfig::with_max_messages`], [`QueueConfig::with_max_bytes`]):
//!   `send` waits or fails with [`ErrorKind::Full`](ipc_core::ErrorKind::Full) per [`WhenFull`].
//! - A torn tail (a crash during a write) is truncated on the next access; damage in the
//!   middle of the log is reported as [`ErrorKind::Corrupted`](ipc_core::ErrorKind::Corrupted)
//!   and its bytes copied to `quarantine/`, never delivered. A failed `fdatasync` poisons
//!   the queue. A segment cut short or deleted (the last one too) is found against the
//!   checksummed `synced` watermark and reported the same way; its numbers are never reused.
//! - On a full disk producers fail with a `disk full` error while consumers go on
//!   receiving and acknowledging (from a small reserve), which frees the disk.
//! - [`Queue::stats`]: depth, unacknowledged, dead letters, oldest message age.
//!
//! The API is backend-neutral, and the backend follows from the queue's [`Address`]: a
//! path is an embedded queue, `amqp://user:password@host:port/vhost#queue` a durable quorum
//! queue on a RabbitMQ broker (feature `amqp`), for processes on different machines:
//! publisher confirms, manual acks, reconnection, a deadline on every call. A program
//! switches backend by changing that one string; `AMQP.md` documents the message format
//! and the few differences.
//!
//! # Blocking and async
//!
//! [`Queue`], [`Producer`] and [`Consumer`] are blocking. For async code (feature `tokio`),
//! [`AsyncQueue`] (or [`Queue::create_async`], [`Queue::open_async`]) opens the same queue,
//! on either backend, with [`AsyncProducer`]s and [`AsyncConsumer`]s:
//!
//! - RabbitMQ: the backend is async at its core. The async types await lapin's own futures
//!   on the caller's runtime (no `block_on`, no `spawn_blocking`, no polling: a `recv`
//!   waits for the broker's push; only lapin's connect resolves the broker's address on
//!   tokio's blocking pool). The blocking types run the same async code with
//!   `block_on` on a small runtime each queue owns; called where a tokio runtime is current
//!   (a task, `Runtime::block_on`, `spawn_blocking` too), every blocking call on a RabbitMQ
//!   queue (`create`, `open`, `producer`, `consumer`, `send`, `recv`, `ack`, `stats`,
//!   `delete`, ...) fails with [`ErrorKind::InvalidInput`](ipc_core::ErrorKind::InvalidInput)
//!   ("the blocking queue api (send) was called inside a tokio runtime; use the async
//!   api there ...") instead of panicking; dropping blocking handles there closes their
//!   connections in the background.
//! - Embedded: appends, `fdatasync`, file locks and the consumer's state-log writes are
//!   blocking syscalls, so the async types run each of them on tokio's blocking pool
//!   (`spawn_blocking`) rather than stall a runtime thread; waiting for a message is a
//!   sleep on tokio's timer between looks at the log (50 µs doubling to 5 ms, as the
//!   blocking consumer does), not a blocking call. The hand-off costs: serial durable 1 KiB
//!   sends measured 3 500-5 100 msg/s async against 5 200-6 400 blocking (3 runs of 300
//!   sends, release build, a 2-core VM). The blocking embedded API also
//!   works inside a runtime (it blocks that thread, which is the caller's choice).
//!
//! Cancellation: a dropped `recv` future loses nothing (the next receive returns the
//! message); a dropped `send` future may or may not have sent its message; the handles stay
//! usable either way. See [`AsyncQueue`] for a runnable example.
//!
//! # Example
//!
//! ```
//! use ipc_queue::{ProducerOptions, Queue, QueueConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Job {
//!     id: u32,
//!     name: String,
//! }
//!
//! # let dir = std::env::temp_dir().join(format!("ipc-queue-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! // One process creates the queue and sends; it may exit before anyone reads. With
//! // "amqp://guest:guest@127.0.0.1:5672/%2f#jobs" instead of a directory, the same code
//! // runs on RabbitMQ.
//! let queue = Queue::create(&dir, &QueueConfig::new())?;
//! let mut producer = queue.producer::<Job>(ProducerOptions::new())?;
//! let receipt = producer.send(&Job { id: 1, name: "resize".into() })?;
//!
//! // Another process (later) opens it and consumes.
//! let queue = Queue::open(&dir)?;
//! let mut consumer = queue.consumer::<Job>()?;
//! let delivery = consumer.recv()?;
//! assert_eq!(delivery.message().name, "resize");
//! assert_eq!(delivery.seq(), receipt.seq());
//! consumer.ack(&delivery)?;
//! assert_eq!(queue.stats()?.depth, 0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), ipc_queue::core::Error>(())
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio` | yes | the async API: [`AsyncQueue`] (or [`Queue::create_async`]), [`AsyncProducer`] and [`AsyncConsumer`] (which implement [`ipc_core::AsyncSender`] and [`ipc_core::AsyncReceiver`]), on both backends; pulls in tokio |
//! | `amqp` | yes | the RabbitMQ backend: `amqp://` addresses, [`AmqpOptions`], [`Queue::create_with`] and [`Queue::open_with`], through lapin; implies `tokio` |
//! | `tls` | no | `amqps://` addresses: lapin's rustls with the ring provider (no OpenSSL, no C build), the platform's root certificates, and `AmqpOptions::with_ca_pem` / `with_client_certificate`; implies `amqp`. Without it an `amqps://` address fails at once with [`ErrorKind::InvalidInput`](ipc_core::ErrorKind::InvalidInput) |
//! | `test-hooks` | no | fault injection for this project's own tests (a write limit that fails like a full disk, failing `fdatasync`, early state-log compaction); hidden from these docs and not an API promise |
//!
//! An embedded-only user writes `ipc-durable-queue = { version = "0.1", default-features =
//! false }` and gets the blocking embedded API alone (ipc-core, serde, crc32c and fastrand:
//! no tokio, no lapin). An `amqp://` address then fails with
//! [`ErrorKind::InvalidInput`](ipc_core::ErrorKind::InvalidInput) ("... was built without its
//! `amqp` feature").
//!
// Links to feature-gated items: the item where the feature is on, the table above where
// it is off, so the docs of every feature set build without broken links.
#![cfg_attr(feature = "tokio", doc = "[`AsyncQueue`]: crate::AsyncQueue")]
#![cfg_attr(feature = "tokio", doc = "[`AsyncProducer`]: crate::AsyncProducer")]
#![cfg_attr(feature = "tokio", doc = "[`AsyncConsumer`]: crate::AsyncConsumer")]
#![cfg_attr(
    feature = "tokio",
    doc = "[`Queue::create_async`]: crate::Queue::create_async"
)]
#![cfg_attr(
    feature = "tokio",
    doc = "[`Queue::open_async`]: crate::Queue::open_async"
)]
#![cfg_attr(not(feature = "tokio"), doc = "[`AsyncQueue`]: #feature-flags")]
#![cfg_attr(not(feature = "tokio"), doc = "[`AsyncProducer`]: #feature-flags")]
#![cfg_attr(not(feature = "tokio"), doc = "[`AsyncConsumer`]: #feature-flags")]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[`Queue::create_async`]: #feature-flags"
)]
#![cfg_attr(not(feature = "tokio"), doc = "[`Queue::open_async`]: #feature-flags")]
#![cfg_attr(feature = "amqp", doc = "[`AmqpOptions`]: crate::AmqpOptions")]
#![cfg_attr(
    feature = "amqp",
    doc = "[`Queue::create_with`]: crate::Queue::create_with"
)]
#![cfg_attr(
    feature = "amqp",
    doc = "[`Queue::open_with`]: crate::Queue::open_with"
)]
#![cfg_attr(not(feature = "amqp"), doc = "[`AmqpOptions`]: #feature-flags")]
#![cfg_attr(not(feature = "amqp"), doc = "[`Queue::create_with`]: #feature-flags")]
#![cfg_attr(not(feature = "amqp"), doc = "[`Queue::open_with`]: #feature-flags")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The embedded backend is built on Unix file semantics (positioned reads and writes, inode
// identity, mode 0600 files, `fdatasync`): say so instead of a screen of unresolved imports.
#[cfg(not(unix))]
compile_error!(
    "ipc-durable-queue builds only on Unix (Linux, macOS): its embedded backend uses Unix file \
     semantics (std::os::unix); Windows is not supported yet"
);

/// Runs `$body` with `$inner` bound to the backend's handle, whichever it is (for the
/// handles in `queue.rs`, `producer.rs` and `consumer.rs`; defined before the modules, so in
/// scope in all of them).
macro_rules! dispatch {
    ($value:expr, $enum:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Embedded($inner) => $body,
            #[cfg(feature = "amqp")]
            $enum::Amqp($inner) => $body,
        }
    };
}

mod address;
#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "tokio")]
mod asynchronous;
mod config;
mod consumer;
mod delivery;
mod embedded;
mod producer;
mod queue;
mod stats;

pub use crate::address::Address;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use crate::amqp::{AmqpOptions, CONTENT_TYPE, HEADER_SENT_MS, HEADER_SEQ, HEADER_TYPE};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use crate::asynchronous::{AsyncConsumer, AsyncProducer, AsyncQueue, PendingReceipt};
pub use crate::config::{
    Durability, MAX_MESSAGE_LEN_LIMIT, ProducerOptions, QueueConfig, WhenFull,
};
pub use crate::consumer::Consumer;
pub use crate::delivery::{DeadLetter, Delivery, Receipt};
pub use crate::producer::Producer;
pub use crate::queue::Queue;
pub use crate::stats::{Stats, StorageStats};

/// The shared foundation: encoding, errors, traits.
pub use ipc_core as core;
