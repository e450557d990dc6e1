//! The backend-neutral handles: a queue, its producers and consumers, on either backend.

use std::path::Path;
use std::time::Duration;

use ipc_core::{ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::{Address, Target};
#[cfg(feature = "amqp")]
use crate::amqp::{AmqpConsumer, AmqpOptions, AmqpProducer, AmqpQueue};
use crate::config::{ProducerOptions, QueueConfig};
use crate::delivery::{Delivery, Receipt, Ticket};
use crate::embedded::{EmbeddedConsumer, EmbeddedProducer, EmbeddedQueue};
use crate::stats::Stats;

/// Runs `$body` with `$inner` bound to the backend's handle, whichever it is.
macro_rules! dispatch {
    ($value:expr, $enum:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Embedded($inner) => $body,
            #[cfg(feature = "amqp")]
            $enum::Amqp($inner) => $body,
        }
    };
}

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

#[derive(Clone, Debug)]
enum QueueBackend {
    Embedded(EmbeddedQueue),
    #[cfg(feature = "amqp")]
    Amqp(AmqpQueue),
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
        dispatch!(&self.backend, QueueBackend, queue => queue.config())
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
        let backend = match &self.backend {
            QueueBackend::Embedded(queue) => QueueBackend::Embedded(queue.dead_letters()?),
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => QueueBackend::Amqp(queue.dead_letters()?),
        };
        Ok(Queue {
            address: self.address.dead_letters(),
            backend,
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

/// Sends `T` messages to a queue; `send` returns a [`Receipt`] once the message is stored
/// (synced to disk, or confirmed by the broker).
///
/// Embedded: one handle per thread, as many as you like in any number of processes; their
/// appends are serialised by a file lock and their syncs shared. RabbitMQ: each producer
/// has its own connection; a lost connection is re-established inside the call that finds
/// it and every message of that call without a confirm is published again (a duplicate is
/// possible, a loss is not).
///
/// Implements [`ipc_core::Sender`]: `Ok` from `send` means the same as a [`Receipt`].
pub struct Producer<T: ?Sized> {
    backend: ProducerBackend<T>,
}

enum ProducerBackend<T: ?Sized> {
    Embedded(EmbeddedProducer<T>),
    #[cfg(feature = "amqp")]
    Amqp(AmqpProducer<T>),
}

impl<T: Serialize + ?Sized> Producer<T> {
    /// Sends `message`, returning once it is stored. On a full queue, waits or fails per
    /// [`WhenFull`](crate::WhenFull).
    pub fn send(&mut self, message: &T) -> Result<Receipt> {
        dispatch!(&mut self.backend, ProducerBackend, p => p.send(message))
    }

    /// Sends `message` without waiting for room: [`Full`](ErrorKind::Full) on a full queue.
    pub fn try_send(&mut self, message: &T) -> Result<Receipt> {
        dispatch!(&mut self.backend, ProducerBackend, p => p.try_send(message))
    }

    /// Sends `message`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<Receipt> {
        dispatch!(&mut self.backend, ProducerBackend, p => p.send_timeout(message, timeout))
    }

    /// Sends `message` with its own time-to-live: undelivered after `ttl`, it goes to the
    /// dead-letter queue instead (the queue's own TTL, if shorter, still applies).
    pub fn send_with_ttl(&mut self, message: &T, ttl: Duration) -> Result<Receipt> {
        dispatch!(&mut self.backend, ProducerBackend, p => p.send_with_ttl(message, ttl))
    }

    /// Sends a batch: one append and one sync (embedded, all or nothing), or pipelined
    /// publishes confirmed together (RabbitMQ, not atomic). One receipt per message, in
    /// order.
    pub fn send_batch<'a, I>(&mut self, messages: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        dispatch!(&mut self.backend, ProducerBackend, p => p.send_batch(messages))
    }

    /// Makes everything sent durable: syncs (embedded, in every durability mode) or waits
    /// for outstanding confirms (RabbitMQ).
    pub fn flush(&mut self) -> Result<()> {
        dispatch!(&mut self.backend, ProducerBackend, p => p.flush())
    }

    /// How many times this producer re-established its connection to the broker (0 on
    /// the embedded backend).
    pub fn reconnections(&self) -> u64 {
        match &self.backend {
            ProducerBackend::Embedded(_) => 0,
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.reconnections(),
        }
    }
}

impl<T: Serialize + ?Sized> ipc_core::Sender for Producer<T> {
    type Message = T;

    fn send(&mut self, message: &T) -> Result<()> {
        Producer::send(self, message).map(drop)
    }

    fn try_send(&mut self, message: &T) -> Result<()> {
        Producer::try_send(self, message).map(drop)
    }

    fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        Producer::send_timeout(self, message, timeout).map(drop)
    }

    fn flush(&mut self) -> Result<()> {
        Producer::flush(self)
    }
}

impl<T: ?Sized> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        dispatch!(&self.backend, ProducerBackend, p => p.fmt(f))
    }
}

/// Receives `T` messages from a queue, competing with the queue's other consumers (in this
/// and other processes): each message goes to one of them at a time. Delivery is at least
/// once: settle every [`Delivery`] with [`ack`](Consumer::ack), [`nack`](Consumer::nack) or
/// [`reject`](Consumer::reject).
///
/// Implements [`ipc_core::Receiver`], which acknowledges each message as it returns it
/// (at-most-once processing); use [`recv`](Consumer::recv) and [`ack`](Consumer::ack) for
/// at-least-once.
pub struct Consumer<T> {
    backend: ConsumerBackend<T>,
}

enum ConsumerBackend<T> {
    Embedded(EmbeddedConsumer<T>),
    #[cfg(feature = "amqp")]
    Amqp(AmqpConsumer<T>),
}

impl<T: DeserializeOwned> Consumer<T> {
    /// Receives the next message, waiting for one.
    ///
    /// Errors: [`Decode`](ErrorKind::Decode) (or [`TooLarge`](ErrorKind::TooLarge)) for a
    /// message that is not a `T`: it goes to the dead-letter queue, and the next call goes
    /// on. Embedded: [`Corrupted`](ErrorKind::Corrupted) once for each damaged stretch of
    /// the log (its bytes are quarantined and the next call goes on past it).
    pub fn recv(&mut self) -> Result<Delivery<T>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.recv())
    }

    /// Receives the next message if one is ready.
    pub fn try_recv(&mut self) -> Result<Option<Delivery<T>>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.try_recv())
    }

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](ErrorKind::Timeout) if none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery<T>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.recv_timeout(timeout))
    }

    /// Acknowledges a delivery: the message is done and never delivered again.
    ///
    /// Embedded: acking a delivery whose lease ran out still counts. RabbitMQ:
    /// [`PeerClosed`](ErrorKind::PeerClosed) if the connection the delivery came on is gone
    /// (the acknowledgement could not be delivered; the broker delivers the message again).
    pub fn ack(&mut self, delivery: &Delivery<T>) -> Result<()> {
        self.ack_ticket(&delivery.ticket)
    }

    /// Gives a delivery back: it becomes deliverable again (after `delay`, embedded only:
    /// RabbitMQ has no delayed requeue, and a non-zero `delay` there is
    /// [`InvalidInput`](ErrorKind::InvalidInput)). Its delivery count goes up.
    pub fn nack(&mut self, delivery: &Delivery<T>, delay: Option<Duration>) -> Result<()> {
        self.nack_ticket(&delivery.ticket, delay)
    }

    /// Sends a delivery to the dead-letter queue with `reason` (RabbitMQ records only that
    /// it was rejected).
    pub fn reject(&mut self, delivery: &Delivery<T>, reason: &str) -> Result<()> {
        self.reject_ticket(&delivery.ticket, reason)
    }

    pub(crate) fn ack_ticket(&mut self, ticket: &Ticket) -> Result<()> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.ack(ticket))
    }

    pub(crate) fn nack_ticket(&mut self, ticket: &Ticket, delay: Option<Duration>) -> Result<()> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.nack(ticket, delay))
    }

    pub(crate) fn reject_ticket(&mut self, ticket: &Ticket, reason: &str) -> Result<()> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.reject(ticket, reason))
    }
}

impl<T: DeserializeOwned> ipc_core::Receiver for Consumer<T> {
    type Message = T;

    fn recv(&mut self) -> Result<T> {
        let delivery = Consumer::recv(self)?;
        self.ack(&delivery)?;
        Ok(delivery.into_message())
    }

    fn try_recv(&mut self) -> Result<Option<T>> {
        match Consumer::try_recv(self)? {
            Some(delivery) => {
                self.ack(&delivery)?;
                Ok(Some(delivery.into_message()))
            }
            None => Ok(None),
        }
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        let delivery = Consumer::recv_timeout(self, timeout)?;
        self.ack(&delivery)?;
        Ok(delivery.into_message())
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        dispatch!(&self.backend, ConsumerBackend, c => c.fmt(f))
    }
}
