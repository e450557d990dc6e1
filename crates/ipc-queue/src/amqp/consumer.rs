//! Consumers with manual acknowledgements and a bounded prefetch.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use ipc_core::{Error, ErrorKind, Result};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties};
use serde::de::DeserializeOwned;

use super::link::{Deadline, Link, deadline_after, with_deadline};
use super::{CONTENT_TYPE, HEADER_SENT_MS, HEADER_SEQ, Shared};
use crate::delivery::{BackendTicket, Delivery, Ticket};

/// The consuming end of one connection.
struct ConsumerLink {
    link: Link,
    consumer: lapin::Consumer,
}

/// Receives `T` messages from an AMQP queue with manual acknowledgements, competing with
/// the queue's other consumers. The prefetch (`basic.qos`) is set before consuming, so the
/// consumer buffers at most that many deliveries.
///
/// A lost connection is re-established inside `recv`; deliveries received on the old
/// connection can no longer be settled (their `ack` fails) and come back from the broker.
/// Implements [`ipc_core::Receiver`], acknowledging each message as it returns it.
pub(crate) struct AmqpConsumer<T> {
    shared: Arc<Shared>,
    queue: String,
    link: Option<ConsumerLink>,
    generation: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> AmqpConsumer<T> {
    /// Connects a consumer (awaited on the queue's runtime by the blocking API).
    pub(crate) async fn open(shared: Arc<Shared>, queue: String) -> Result<AmqpConsumer<T>> {
        let mut consumer = AmqpConsumer {
            shared,
            queue,
            link: None,
            generation: 0,
            _type: PhantomData,
        };
        let deadline = deadline_after(consumer.shared.options.timeout);
        consumer.ensure_link(deadline).await?;
        Ok(consumer)
    }

    /// Receives the next message, waiting for one (reconnecting as needed).
    ///
    /// Errors: [`Decode`](ErrorKind::Decode) (or [`TooLarge`](ErrorKind::TooLarge)) for a
    /// message that is not a `T` (it is rejected to the dead-letter queue; the next
    /// call goes on).
    pub(crate) fn recv(&mut self) -> Result<Delivery<T>> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("recv", self.recv_until(None))
    }

    /// Receives the next message if one is already buffered.
    pub(crate) fn try_recv(&mut self) -> Result<Option<Delivery<T>>> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("try_recv", self.try_recv_async())
    }

    /// [`try_recv`](AmqpConsumer::try_recv), awaited.
    pub(crate) async fn try_recv_async(&mut self) -> Result<Option<Delivery<T>>> {
        match self.recv_until(Some(deadline_after(Duration::ZERO))).await {
            Ok(delivery) => Ok(Some(delivery)),
            Err(err) if err.kind() == ErrorKind::Timeout => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](ErrorKind::Timeout) if none came.
    pub(crate) fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery<T>> {
        let shared = Arc::clone(&self.shared);
        shared.block_on(
            "recv_timeout",
            self.recv_until(Some(deadline_after(timeout))),
        )
    }

    /// Receives the next message, waiting until `deadline` if given (forever if not).
    /// Cancel-safe: dropped before it returns, it has taken no delivery from lapin's
    /// buffer. (An undecodable delivery whose reject was cut short stays unacknowledged:
    /// the broker delivers it again once this consumer's connection closes.)
    pub(crate) async fn recv_async(&mut self, timeout: Option<Duration>) -> Result<Delivery<T>> {
        self.recv_until(timeout.map(deadline_after)).await
    }

    /// Acknowledges a delivery: the broker forgets the message.
    ///
    /// Errors: [`PeerClosed`](ErrorKind::PeerClosed) if the connection the delivery came on
    /// is gone (the acknowledgement could not be delivered; the broker delivers the message
    /// again).
    pub(crate) fn ack(&mut self, ticket: &Ticket) -> Result<()> {
        self.settle(ticket, Settle::Ack)
    }

    /// Settles a delivery (ack, requeue or reject), awaited.
    pub(crate) async fn settle_async(
        &mut self,
        ticket: &Ticket,
        how: Settle,
        delay: Option<Duration>,
    ) -> Result<()> {
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            return Err(no_delay(delay));
        }
        self.settle_inner(ticket, how).await
    }

    /// Gives a delivery back to the queue (AMQP `basic.nack` with requeue); its delivery
    /// count goes up. RabbitMQ has no delayed requeue: a `delay` is
    /// [`InvalidInput`](ErrorKind::InvalidInput).
    pub(crate) fn nack(&mut self, ticket: &Ticket, delay: Option<Duration>) -> Result<()> {
        super::outside_runtime("nack")?;
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            return Err(no_delay(delay));
        }
        self.settle(ticket, Settle::Requeue)
    }

    /// Sends a delivery to the dead-letter queue (AMQP `basic.reject` without requeue).
    /// RabbitMQ records the reason as `rejected` in the `x-death` header; `reason` is not
    /// carried.
    pub(crate) fn reject(&mut self, ticket: &Ticket, reason: &str) -> Result<()> {
        let _ = reason;
        self.settle(ticket, Settle::Reject)
    }

    fn settle(&mut self, ticket: &Ticket, how: Settle) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        shared.block_on(how.name(), self.settle_inner(ticket, how))
    }

    async fn settle_inner(&mut self, ticket: &Ticket, how: Settle) -> Result<()> {
        let seq = ticket.seq;
        let BackendTicket::Amqp { acker, generation } = &ticket.backend else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} of message {seq}: the delivery did not come from an amqp consumer",
                    how.name()
                ),
            ));
        };
        let generation = *generation;
        if generation != self.generation || self.link.is_none() {
            return Err(Error::new(
                ErrorKind::PeerClosed,
                format!(
                    "{} of message {} could not be delivered: its connection to the broker was lost; the broker will deliver the message again",
                    how.name(),
                    seq
                ),
            ));
        }
        let deadline = deadline_after(self.shared.options.timeout);
        match settle(acker, how, deadline).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::new(
                ErrorKind::PeerClosed,
                format!(
                    "{} of message {} was not delivered (its channel closed or it was settled already); the broker will deliver it again if it was not settled",
                    how.name(),
                    seq
                ),
            )),
            Err(err) => {
                self.drop_link().await;
                Err(err)
            }
        }
    }

    async fn recv_until(&mut self, deadline: Option<Deadline>) -> Result<Delivery<T>> {
        let shared = Arc::clone(&self.shared);
        loop {
            // Connecting is bounded by the call deadline, or by the queue's timeout per
            // attempt when waiting forever.
            let connect_deadline =
                deadline.unwrap_or_else(|| deadline_after(shared.options.timeout));
            match self.ensure_link(connect_deadline).await {
                Ok(()) => {}
                Err(err) if deadline.is_none() && err.kind() == ErrorKind::Timeout => continue,
                Err(err) => return Err(err),
            }
            let Some(link) = self.link.as_mut() else {
                continue;
            };
            let next = poll_fn(|cx| Pin::new(&mut link.consumer).poll_next(cx));
            let item = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                    Ok(item) => item,
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!("no message from amqp queue {} in time", self.queue),
                        ));
                    }
                },
                None => next.await,
            };
            match item {
                Some(Ok(delivery)) => {
                    let generation = self.generation;
                    return self.convert(delivery, generation).await;
                }
                // The consumer ended (connection lost, channel closed, consumer
                // cancelled): start again on a new connection.
                Some(Err(_)) | None => self.drop_link().await,
            }
        }
    }

    async fn convert(
        &mut self,
        delivery: lapin::message::Delivery,
        generation: u64,
    ) -> Result<Delivery<T>> {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let seq = header_u64(&headers, HEADER_SEQ).unwrap_or(0);
        let problem = self.check(&delivery.properties, delivery.data.len());
        let message = match problem {
            Some(err) => Err(err),
            None if self.shared.is_dead_letter => {
                // The dead-letter queue holds the original bodies; hand them out as the
                // embedded backend does, as `DeadLetter`s.
                dead_letter_encoding(&headers, seq, &delivery.data)
                    .and_then(|encoded| ipc_core::decode::<T>(&encoded))
            }
            None => ipc_core::decode::<T>(&delivery.data),
        };
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                // A message that is not a T goes to the dead-letter queue, as in the
                // embedded backend; the caller sees why.
                let deadline = deadline_after(self.shared.options.timeout);
                match settle(&delivery.acker, Settle::Reject, deadline).await {
                    Ok(_) => {}
                    Err(reject_err) => {
                        self.drop_link().await;
                        return Err(reject_err);
                    }
                }
                return Err(Error::new(
                    err.kind(),
                    format!(
                        "message {seq} from amqp queue {} dead-lettered: {err}",
                        self.queue
                    ),
                ));
            }
        };
        let deliveries = header_u64(&headers, "x-delivery-count")
            .unwrap_or(0)
            .saturating_add(1)
            .min(u64::from(u32::MAX)) as u32;
        Ok(Delivery {
            message,
            ticket: Ticket {
                seq,
                deliveries,
                backend: BackendTicket::Amqp {
                    acker: delivery.acker,
                    generation,
                },
            },
            enqueued_ms: header_u64(&headers, HEADER_SENT_MS).unwrap_or(0),
        })
    }

    /// Why a delivery cannot be a `T` before decoding it, if it cannot.
    fn check(&self, properties: &BasicProperties, len: usize) -> Option<Error> {
        if len > self.shared.max_message_len as usize {
            return Some(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "message of {len} bytes exceeds limit of {}",
                    self.shared.max_message_len
                ),
            ));
        }
        if let Some(content_type) = properties.content_type()
            && content_type.as_str() != CONTENT_TYPE
        {
            return Some(Error::new(
                ErrorKind::Decode,
                format!(
                    "content type {} is not {CONTENT_TYPE}",
                    content_type.as_str()
                ),
            ));
        }
        // The `ipc-type` header is informative: like the embedded backend, decoding decides
        // (two differently named types may share an encoding).
        None
    }

    async fn ensure_link(&mut self, deadline: Deadline) -> Result<()> {
        if let Some(link) = &self.link {
            if link.link.connection.status().connected() && link.link.channel.status().connected() {
                return Ok(());
            }
            self.drop_link().await;
        }
        let link = Link::connect(&self.shared, deadline, "consumer").await?;
        // The prefetch first: lapin's buffer is unbounded, the prefetch is its only bound.
        with_deadline(
            deadline,
            "basic qos",
            link.channel
                .basic_qos(self.shared.options.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let tag = format!("ipc-{}-{:08x}", std::process::id(), fastrand::u32(..));
        let consumer = with_deadline(
            deadline,
            "basic consume",
            link.channel.basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        self.generation += 1;
        self.link = Some(ConsumerLink { link, consumer });
        Ok(())
    }

    async fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.link.close().await;
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl Settle {
    fn name(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Requeue => "nack",
            Settle::Reject => "reject",
        }
    }
}

async fn settle(acker: &Acker, how: Settle, deadline: Deadline) -> Result<bool> {
    match how {
        Settle::Ack => with_deadline(deadline, "ack", acker.ack(BasicAckOptions::default())).await,
        Settle::Requeue => {
            with_deadline(
                deadline,
                "nack",
                acker.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                }),
            )
            .await
        }
        Settle::Reject => {
            with_deadline(
                deadline,
                "reject",
                acker.reject(BasicRejectOptions { requeue: false }),
            )
            .await
        }
    }
}

fn no_delay(delay: Duration) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "the amqp backend cannot requeue after a delay ({} ms asked)",
            delay.as_millis()
        ),
    )
}

/// An integer header of any AMQP integer type, if it is there and not negative.
fn header_u64(headers: &FieldTable, key: &str) -> Option<u64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A dead-lettered body as the ipc-core encoding of a [`DeadLetter`](crate::DeadLetter):
/// why (from `x-death`, worded like the embedded backend's reasons), how often it was
/// delivered, when it was sent, and the original bytes.
fn dead_letter_encoding(headers: &FieldTable, seq: u64, body: &[u8]) -> Result<Vec<u8>> {
    let reason = match death_reason(headers).as_deref() {
        Some("rejected") => "rejected (by a consumer)".to_owned(),
        Some("expired") => "expired (time-to-live)".to_owned(),
        Some("delivery_limit") => {
            "delivered too many times without an acknowledgement (delivery_limit)".to_owned()
        }
        Some("maxlen") => "dropped from a full queue (maxlen)".to_owned(),
        Some(other) => format!("dead-lettered by the broker ({other})"),
        None => "dead-lettered by the broker".to_owned(),
    };
    let letter = crate::delivery::DeadLetterRef {
        seq,
        reason: &reason,
        deliveries: header_u64(headers, "x-delivery-count")
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32,
        enqueued_ms: header_u64(headers, HEADER_SENT_MS).unwrap_or(0),
        payload: body,
    };
    let mut encoded = Vec::with_capacity(body.len() + reason.len() + 32);
    ipc_core::encode_to_vec(&letter, &mut encoded, body.len() + reason.len() + 64)?;
    Ok(encoded)
}

/// The `reason` of the newest `x-death` entry.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(reason) => {
            Some(String::from_utf8_lossy(reason.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(reason) => Some(reason.as_str().to_owned()),
        _ => None,
    }
}

impl<T> Drop for AmqpConsumer<T> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            // Politely close; in the background where blocking is not allowed.
            self.shared.close_on_drop(link.link.close());
        }
    }
}

impl<T> std::fmt::Debug for AmqpConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("queue", &self.queue)
            .field("generation", &self.generation)
            .finish()
    }
}
