//! The backend-neutral [`Consumer`] handle.

use std::time::Duration;

use ipc_core::Result;
use serde::de::DeserializeOwned;

#[cfg(feature = "amqp")]
use crate::amqp::AmqpConsumer;
use crate::delivery::{Delivery, Ticket};
use crate::embedded::EmbeddedConsumer;

/// Receives `T` messages from a queue, competing with the queue's other consumers (in this
/// and other processes): each message goes to one of them at a time. Delivery is at least
/// once: settle every [`Delivery`] with [`ack`](Consumer::ack), [`nack`](Consumer::nack) or
/// [`reject`](Consumer::reject).
///
/// Implements [`ipc_core::Receiver`], which acknowledges each message as it returns it
/// (at-most-once processing); use [`recv`](Consumer::recv) and [`ack`](Consumer::ack) for
/// at-least-once.
pub struct Consumer<T> {
    pub(crate) backend: ConsumerBackend<T>,
}

pub(crate) enum ConsumerBackend<T> {
    Embedded(EmbeddedConsumer<T>),
    #[cfg(feature = "amqp")]
    Amqp(AmqpConsumer<T>),
}

impl<T: DeserializeOwned> Consumer<T> {
    /// Receives the next message, waiting for one.
    ///
    /// Errors: [`Decode`](ipc_core::ErrorKind::Decode) (or [`TooLarge`](ipc_core::ErrorKind::TooLarge)) for a
    /// message that is not a `T`: it goes to the dead-letter queue, and the next call goes
    /// on. Embedded: [`Corrupted`](ipc_core::ErrorKind::Corrupted) once for each damaged stretch of
    /// the log (its bytes are quarantined and the next call goes on past it).
    pub fn recv(&mut self) -> Result<Delivery<T>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.recv())
    }

    /// Receives the next message if one is ready.
    pub fn try_recv(&mut self) -> Result<Option<Delivery<T>>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.try_recv())
    }

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](ipc_core::ErrorKind::Timeout) if none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery<T>> {
        dispatch!(&mut self.backend, ConsumerBackend, c => c.recv_timeout(timeout))
    }

    /// Receives up to `max` messages: waits at most `timeout` for the first
    /// ([`Timeout`](ipc_core::ErrorKind::Timeout) if none came), then takes the others
    /// that are ready, without waiting. Each is a delivery as from
    /// [`recv`](Consumer::recv), to settle one by one or with
    /// [`ack_batch`](Consumer::ack_batch). Embedded: all under one lock and one look at the
    /// log, so it costs little more than one `recv`. An undecodable message is the error of
    /// a call that got nothing before it (as from `recv`), else it ends the batch and the
    /// next call reports it. RabbitMQ: `recv_timeout`, then `try_recv` until `max` or
    /// none is ready (at most the prefetch); an error after the first delivery ends the
    /// batch without being returned (an undecodable message has then been rejected to
    /// the dead-letter queue all the same).
    pub fn recv_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery<T>>> {
        match &mut self.backend {
            ConsumerBackend::Embedded(consumer) => consumer.recv_batch(max, timeout),
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => {
                let mut out = vec![consumer.recv_timeout(timeout)?];
                while out.len() < max {
                    match consumer.try_recv() {
                        Ok(Some(delivery)) => out.push(delivery),
                        Ok(None) => break,
                        Err(err) if out.is_empty() => return Err(err),
                        Err(_) => break,
                    }
                }
                Ok(out)
            }
        }
    }

    /// Acknowledges a delivery: the message is done and never delivered again.
    ///
    /// Embedded: acking a delivery whose lease ran out still counts. RabbitMQ:
    /// [`PeerClosed`](ipc_core::ErrorKind::PeerClosed) if the connection the delivery came on is gone
    /// (the acknowledgement could not be delivered; the broker delivers the message again).
    pub fn ack(&mut self, delivery: &Delivery<T>) -> Result<()> {
        self.ack_ticket(&delivery.ticket)
    }

    /// Acknowledges deliveries together: the same as [`ack`](Consumer::ack) on each, in
    /// one step. Embedded: one lock and one write to the state log for all of them, so a
    /// consumer that acknowledges every 64 messages pays for one acknowledgement instead
    /// of 64. Delivery stays at least once: a consumer that dies before it acknowledges
    /// gets its unacknowledged messages delivered again (to any consumer), never lost.
    /// RabbitMQ: one `basic.ack` per delivery.
    pub fn ack_batch(&mut self, deliveries: &[&Delivery<T>]) -> Result<()> {
        match &mut self.backend {
            ConsumerBackend::Embedded(consumer) => {
                let tickets: Vec<&Ticket> = deliveries.iter().map(|d| &d.ticket).collect();
                consumer.ack_batch(&tickets)
            }
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => {
                for delivery in deliveries {
                    consumer.ack(&delivery.ticket)?;
                }
                Ok(())
            }
        }
    }

    /// Gives a delivery back: it becomes deliverable again (after `delay`, embedded only:
    /// RabbitMQ has no delayed requeue, and a non-zero `delay` there is
    /// [`InvalidInput`](ipc_core::ErrorKind::InvalidInput)). Its delivery count goes up.
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
