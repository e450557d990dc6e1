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
//!   the queue.
//! - [`Queue::stats`]: depth, unacknowledged, dead letters, oldest message age.
//!
//! The API is backend-neutral, and the backend follows from the queue's [`Address`]: a
//! path is an embedded queue, `amqp://user:password@host:port/vhost#queue` a durable quorum
//! queue on a RabbitMQ broker (feature `amqp`), for processes on different machines:
//! publisher confirms, manual acks, reconnection, a deadline on every call. A program
//! switches backend by changing that one string; `AMQP.md` documents the message format
//! and the few differences. For async code, [`AsyncProducer`] and [`AsyncConsumer`]
//! (feature `tokio`) run the blocking calls on tokio's blocking pool.
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
//! - `amqp` (default): the RabbitMQ backend (`amqp://` addresses, [`AmqpOptions`]), through
//!   lapin.
//! - `tokio` (default): [`AsyncProducer`] and [`AsyncConsumer`], which implement
//!   [`ipc_core::AsyncSender`] and [`ipc_core::AsyncReceiver`] by running the blocking calls
//!   in `tokio::task::spawn_blocking` (and sleeping on the runtime between polls).

mod address;
#[cfg(feature = "amqp")]
mod amqp;
mod api;
mod appender;
#[cfg(feature = "tokio")]
mod asynchronous;
mod config;
mod consumer;
mod delivery;
mod fsx;
mod index;
mod producer;
mod queue;
mod record;
mod state;

pub use crate::address::Address;
#[cfg(feature = "amqp")]
pub use crate::amqp::{AmqpOptions, CONTENT_TYPE, HEADER_SENT_MS, HEADER_SEQ, HEADER_TYPE};
pub use crate::api::{Consumer, Producer, Queue};
#[cfg(feature = "tokio")]
pub use crate::asynchronous::{AsyncConsumer, AsyncProducer, AsyncQueue};
pub use crate::config::{
    Durability, MAX_MESSAGE_LEN_LIMIT, ProducerOptions, QueueConfig, WhenFull,
};
pub use crate::consumer::DeadLetter;
pub use crate::delivery::{Delivery, Receipt};
pub use crate::queue::{Stats, StorageStats};

/// The shared foundation: encoding, errors, traits.
pub use ipc_core as core;
