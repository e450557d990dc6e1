//! The backend-neutral [`Producer`] handle.

use std::time::Duration;

use ipc_core::Result;
use serde::Serialize;

#[cfg(feature = "amqp")]
use crate::amqp::AmqpProducer;
use crate::delivery::Receipt;
use crate::embedded::EmbeddedProducer;

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
    pub(crate) backend: ProducerBackend<T>,
}

pub(crate) enum ProducerBackend<T: ?Sized> {
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

    /// Sends `message` without waiting for room: [`Full`](ipc_core::ErrorKind::Full) on a full queue.
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
