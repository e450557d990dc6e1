//! What both backends hand out: receipts for sent messages, deliveries to settle, and the
//! dead letters of a dead-letter queue.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipc_core::Result;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Proof that a message is stored: on the embedded backend it is on disk (synced, with
/// [`Durability::Always`](crate::Durability::Always), the default); on RabbitMQ the broker
/// confirmed it. Carries the message's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Receipt {
    seq: u64,
}

impl Receipt {
    pub(crate) fn new(seq: u64) -> Receipt {
        Receipt { seq }
    }

    /// The message's sequence number: on the embedded backend unique in the queue and
    /// increasing in append order; on RabbitMQ unique and increasing per producer.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A message handed to one consumer. Settle it with [`Consumer::ack`](crate::Consumer::ack),
/// [`Consumer::nack`](crate::Consumer::nack) or [`Consumer::reject`](crate::Consumer::reject)
/// on the consumer that received it; one left unsettled comes back (when its lease runs out
/// or its consumer goes away).
#[derive(Debug)]
#[must_use = "a delivery must be acknowledged, or it comes back"]
pub struct Delivery<T> {
    pub(crate) message: T,
    pub(crate) ticket: Ticket,
    pub(crate) enqueued_ms: u64,
}

/// What settling a delivery needs, without the message.
#[derive(Clone, Debug)]
pub(crate) struct Ticket {
    pub(crate) seq: u64,
    pub(crate) deliveries: u32,
    pub(crate) backend: BackendTicket,
}

#[derive(Clone, Debug)]
pub(crate) enum BackendTicket {
    /// The embedded backend settles by sequence number.
    Embedded,
    /// RabbitMQ settles by delivery tag, on the connection the delivery came on.
    #[cfg(feature = "amqp")]
    Amqp {
        acker: lapin::Acker,
        generation: u64,
    },
}

impl<T> Delivery<T> {
    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// The message's sequence number (the same as its [`Receipt`]'s). On RabbitMQ, 0 for a
    /// message from another client that did not set the `ipc-seq` header.
    pub fn seq(&self) -> u64 {
        self.ticket.seq
    }

    /// How many times the message has been delivered, this time included (1 the first time).
    pub fn deliveries(&self) -> u32 {
        self.ticket.deliveries
    }

    /// When the message was sent (the producer's clock; the epoch if unknown).
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.enqueued_ms)
    }

    /// The message, taking it out of the delivery (settle the delivery first).
    pub fn into_message(self) -> T {
        self.message
    }
}

/// A message in the dead-letter queue: the original bytes and why they are there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The sequence number the message had in its queue.
    pub seq: u64,
    /// Why it was dead-lettered (`rejected: ...`, `expired ...`, `does not decode ...`,
    /// `delivered N times ...`).
    pub reason: String,
    /// How many times it had been delivered.
    pub deliveries: u32,
    /// When it was first sent, in milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    /// The original encoded message.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// Decodes the original message as `M`.
    pub fn decode<M: DeserializeOwned>(&self) -> Result<M> {
        ipc_core::decode(&self.payload)
    }
}

/// The borrowed form of [`DeadLetter`], encoded identically (postcard encodes a byte slice
/// and a `Vec<u8>` the same way).
#[derive(Serialize)]
pub(crate) struct DeadLetterRef<'a> {
    pub(crate) seq: u64,
    pub(crate) reason: &'a str,
    pub(crate) deliveries: u32,
    pub(crate) enqueued_ms: u64,
    pub(crate) payload: &'a [u8],
}
