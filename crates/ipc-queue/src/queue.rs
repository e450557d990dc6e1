//! The backend-neutral [`Queue`] handle, on either backend; its producers and consumers
//! are in `producer.rs` and `consumer.rs`.

use std::path::Path;

use ipc_core::{ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::{Address, Target};
#[cfg(feature = "amqp")]
use crate::amqp::{AmqpOptions, AmqpQueue};
use crate::config::{ProducerOptions, QueueConfig};
use crate::consumer::{Consumer, ConsumerBackend};
use crate::embedded::EmbeddedQueue;
use crate::producer::{Producer, ProducerBackend};
use crate::stats::Stats;

/// A durable queue, embedded (a directory) or on RabbitMQ, picked by its [`Address`].
/// Cheap to clone; open producers and consumers from it, in any number of processes.
///
/// Everything here behaves the same on both backends, except where `AMQP.md` lists a
/// difference (what `stats` can count, sequence numbers per producer on RabbitMQ, no delayed
/// `nack` there, ...).
///
/// This is the blocking API. On RabbitMQ its calls (on the queue and on its producers and
/// consumers) fail with [`InvalidInput`](ErrorKind::InvalidInput) where a tokio runtime is
/// current, instead of blocking (or panicking) there: in async code use
/// `AsyncQueue` (`Queue::create_async`, `Queue::open_async`; feature `tokio`).
#[derive(Clone, Debug)]
pub struct Queue {
    address: Address,
    backend: QueueBackend,
}

/// The backend handle behind a [`Queue`] and an `AsyncQueue`.
#[derive(Clone, Debug)]
pub(crate) enum QueueBackend {
    Embedded(EmbeddedQueue),
    #[cfg(feature = "amqp")]
    Amqp(AmqpQueue),
}

impl QueueBackend {
    /// The configuration the queue was created with.
    pub(crate) fn config(&self) -> &QueueConfig {
        dispatch!(self, QueueBackend, queue => queue.config())
    }

    /// The backend of the dead-letter queue.
    pub(crate) fn dead_letters(&self) -> Result<QueueBackend> {
        Ok(match self {
            QueueBackend::Embedded(queue) => QueueBackend::Embedded(queue.dead_letters()?),
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => QueueBackend::Amqp(queue.dead_letters()?),
        })
    }
}

/// The connection options of a broker queue (nothing without the `amqp` feature).
#[cfg(feature = "amqp")]
type Options = AmqpOptions;
#[cfg(not(feature = "amqp"))]
type Options = ();

impl Queue {
    /// Creates the queue at `address`: a new owner-only directory, or a new durable quorum
    /// queue (and its dead-letter queue) on the broker.
    ///
    /// Errors: [`AlreadyExists`](ErrorKind::AlreadyExists) if it exists,
    /// [`InvalidInput`](ErrorKind::InvalidInput) for a configuration that cannot work,
    /// [`Timeout`](ErrorKind::Timeout) if a broker does not answer.
    pub fn create(address: impl Into<Address>, config: &QueueConfig) -> Result<Queue> {
        Queue::create_inner(address.into(), config, &Options::default())
    }

    /// Opens the existing queue at `address`.
    ///
    /// Errors: [`NotFound`](ErrorKind::NotFound) if there is none,
    /// [`Corrupted`](ErrorKind::Corrupted) if an embedded queue's `meta` file is damaged.
    pub fn open(address: impl Into<Address>) -> Result<Queue> {
        Queue::open_inner(address.into(), &Options::default())
    }

    /// Opens the queue at `address`, creating it with `config` if there is none (safe when
    /// several processes race to do it).
    pub fn open_or_create(address: impl Into<Address>, config: &QueueConfig) -> Result<Queue> {
        let address = address.into();
        if let Target::Dir(path) = address.target() {
            let queue = EmbeddedQueue::open_or_create(path, config)?;
            return Ok(Queue {
                backend: QueueBackend::Embedded(queue),
                address,
            });
        }
        match Queue::create(&address, config) {
            Err(err) if err.kind() == ErrorKind::AlreadyExists => Queue::open(address),
            other => other,
        }
    }

    /// [`create`](Queue::create) with connection options for a RabbitMQ address (ignored
    /// for a directory).
    #[cfg(feature = "amqp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
    pub fn create_with(
        address: impl Into<Address>,
        config: &QueueConfig,
        options: &AmqpOptions,
    ) -> Result<Queue> {
        Queue::create_inner(address.into(), config, options)
    }

    /// [`open`](Queue::open) with connection options for a RabbitMQ address (ignored for a
    /// directory).
    #[cfg(feature = "amqp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
    pub fn open_with(address: impl Into<Address>, options: &AmqpOptions) -> Result<Queue> {
        Queue::open_inner(address.into(), options)
    }

    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    fn create_inner(address: Address, config: &QueueConfig, options: &Options) -> Result<Queue> {
        let backend = match address.target() {
            Target::Dir(path) => QueueBackend::Embedded(EmbeddedQueue::create(path, config)?),
            #[cfg(feature = "amqp")]
            Target::Amqp(parts) => {
                let (url, name) = parts?;
                QueueBackend::Amqp(AmqpQueue::create_with(url, name, config, options)?)
            }
            #[cfg(not(feature = "amqp"))]
            Target::Amqp(parts) => return Err(parts.err().unwrap_or_else(|| no_amqp(&address))),
        };
        Ok(Queue { address, backend })
    }

    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    fn open_inner(address: Address, options: &Options) -> Result<Queue> {
        let backend = match address.target() {
            Target::Dir(path) => QueueBackend::Embedded(EmbeddedQueue::open(path)?),
            #[cfg(feature = "amqp")]
            Target::Amqp(parts) => {
                let (url, name) = parts?;
                QueueBackend::Amqp(AmqpQueue::open_with(url, name, options)?)
            }
            #[cfg(not(feature = "amqp"))]
            Target::Amqp(parts) => return Err(parts.err().unwrap_or_else(|| no_amqp(&address))),
        };
        Ok(Queue { address, backend })
    }

    /// Where the queue lives.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The directory of an embedded queue; `None` on RabbitMQ.
    pub fn path(&self) -> Option<&Path> {
        self.address.path()
    }

    /// The configuration. On RabbitMQ after [`open`](Queue::open): the defaults with the
    /// largest message length, as AMQP cannot read a queue's arguments back.
    pub fn config(&self) -> &QueueConfig {
        self.backend.config()
    }

    /// Opens a producer of `T` messages.
    pub fn producer<T: Serialize + ?Sized>(&self, options: ProducerOptions) -> Result<Producer<T>> {
        let backend = match &self.backend {
            QueueBackend::Embedded(queue) => ProducerBackend::Embedded(queue.producer(options)?),
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => ProducerBackend::Amqp(queue.producer(options)?),
        };
        Ok(Producer { backend })
    }

    /// Opens a consumer of `T` messages, competing with the queue's other consumers.
    ///
    /// Embedded: opening scans the log from the oldest message not yet done; damage found
    /// on the way is reported as [`Corrupted`](ErrorKind::Corrupted) once (it is then
    /// quarantined and recorded, and opening again succeeds).
    pub fn consumer<T: DeserializeOwned>(&self) -> Result<Consumer<T>> {
        let backend = match &self.backend {
            QueueBackend::Embedded(queue) => ConsumerBackend::Embedded(queue.consumer()?),
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => ConsumerBackend::Amqp(queue.consumer()?),
        };
        Ok(Consumer { backend })
    }

    /// The dead-letter queue: rejected, undecodable, expired and too-often-delivered
    /// messages, which its consumers receive as [`DeadLetter`](crate::DeadLetter)s.
    pub fn dead_letters(&self) -> Result<Queue> {
        Ok(Queue {
            address: self.address.dead_letters(),
            backend: self.backend.dead_letters()?,
        })
    }

    /// Looks inside: depth, dead letters, and what else the backend can count.
    pub fn stats(&self) -> Result<Stats> {
        dispatch!(&self.backend, QueueBackend, queue => queue.stats())
    }

    /// Deletes the queue, its dead-letter queue and all their messages. Handles still open
    /// on it fail from then on.
    pub fn delete(self) -> Result<()> {
        match self.backend {
            QueueBackend::Embedded(queue) => queue.delete(),
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => queue.delete(),
        }
    }
}

/// Without the `amqp` feature a broker address is an error.
#[cfg(not(feature = "amqp"))]
pub(crate) fn no_amqp(address: &Address) -> ipc_core::Error {
    ipc_core::Error::new(
        ErrorKind::InvalidInput,
        format!("{address}: ipc-queue was built without its `amqp` feature"),
    )
}
