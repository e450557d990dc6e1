//! Producers with publisher confirms and an outbox that survives reconnection.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipc_core::{Error, ErrorKind, MessageType, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use serde::Serialize;

use super::link::{Deadline, Link, deadline_after, is_connection_trouble, with_deadline};
use super::{CONTENT_TYPE, HEADER_SENT_MS, HEADER_SEQ, HEADER_TYPE, Shared};
use crate::config::{ProducerOptions, WhenFull};
use crate::delivery::Receipt;

/// One message waiting for its confirm.
struct Outgoing {
    seq: u64,
    body: Vec<u8>,
    expiration: Option<Duration>,
}

/// Sends `T` messages to an AMQP queue with publisher confirms; one connection per producer.
///
/// A lost connection is re-established (with back-off) inside the call that finds it, and
/// every message of that call without a confirm is published again: after a reconnection
/// the broker may hold a message twice, never zero times.
pub(crate) struct AmqpProducer<T: ?Sized> {
    shared: Arc<Shared>,
    options: ProducerOptions,
    link: Option<Link>,
    producer_id: u64,
    next_count: u64,
    type_name: LongString,
    reconnections: u64,
    _type: PhantomData<fn(&T)>,
}

/// What became of one publish round.
enum Round {
    Done,
    /// The connection failed; the messages not confirmed stay in the outbox.
    Lost,
}

impl<T: Serialize + ?Sized> AmqpProducer<T> {
    /// Connects a producer (awaited on the queue's runtime by the blocking API).
    pub(crate) async fn open(
        shared: Arc<Shared>,
        options: ProducerOptions,
    ) -> Result<AmqpProducer<T>> {
        let mut producer = AmqpProducer {
            shared,
            options,
            link: None,
            producer_id: fastrand::u64(..) & 0x7f_ffff,
            next_count: 0,
            type_name: LongString::from(MessageType::of::<T>().name()),
            reconnections: 0,
            _type: PhantomData,
        };
        let deadline = deadline_after(producer.shared.options.timeout);
        producer.ensure_link(deadline).await?;
        Ok(producer)
    }

    /// Sends `message` and waits for the broker's confirm. On a full queue (the broker
    /// refuses the message), waits and retries or fails per [`WhenFull`]. Gives up with
    /// [`Timeout`](ErrorKind::Timeout) after the queue's call deadline.
    pub(crate) fn send(&mut self, message: &T) -> Result<Receipt> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("send", self.send_async(message))
    }

    /// [`send`](AmqpProducer::send), awaited.
    pub(crate) async fn send_async(&mut self, message: &T) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, None, self.options.when_full, timeout)
            .await
    }

    /// Sends `message`: [`Full`](ErrorKind::Full) at once if the broker refuses it.
    pub(crate) fn try_send(&mut self, message: &T) -> Result<Receipt> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("try_send", self.try_send_async(message))
    }

    /// [`try_send`](AmqpProducer::try_send), awaited.
    pub(crate) async fn try_send_async(&mut self, message: &T) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, None, WhenFull::Fail, timeout).await
    }

    /// Sends `message`, waiting at most `timeout` for the confirm (and for room).
    pub(crate) fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<Receipt> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("send_timeout", self.send_timeout_async(message, timeout))
    }

    /// [`send_timeout`](AmqpProducer::send_timeout), awaited.
    pub(crate) async fn send_timeout_async(
        &mut self,
        message: &T,
        timeout: Duration,
    ) -> Result<Receipt> {
        self.send_one(message, None, self.options.when_full, timeout)
            .await
    }

    /// Sends `message` with its own time-to-live (AMQP `expiration`): undelivered after
    /// `ttl`, it is dead-lettered.
    pub(crate) fn send_with_ttl(&mut self, message: &T, ttl: Duration) -> Result<Receipt> {
        let shared = Arc::clone(&self.shared);
        shared.block_on("send_with_ttl", self.send_with_ttl_async(message, ttl))
    }

    /// [`send_with_ttl`](AmqpProducer::send_with_ttl), awaited.
    pub(crate) async fn send_with_ttl_async(
        &mut self,
        message: &T,
        ttl: Duration,
    ) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, Some(ttl), self.options.when_full, timeout)
            .await
    }

    /// Sends a batch, pipelined: each message published as soon as it is encoded, then all
    /// confirms awaited. Returns one receipt per message, in order, once every message is
    /// confirmed. Unlike the embedded backend the batch is not atomic: on an error (a
    /// message too large to encode included) some messages may be stored.
    pub(crate) fn send_batch<'a, I>(&mut self, messages: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let shared = Arc::clone(&self.shared);
        shared.block_on("send_batch", self.send_batch_async(messages.into_iter()))
    }

    /// [`send_batch`](AmqpProducer::send_batch), awaited.
    pub(crate) async fn send_batch_async<'a, I>(&mut self, messages: I) -> Result<Vec<Receipt>>
    where
        I: Iterator<Item = &'a T>,
        T: 'a,
    {
        let deadline = deadline_after(self.shared.options.timeout);
        let mut fresh = messages;
        let mut outbox = Vec::new();
        let mut receipts = Vec::new();
        self.publish_all(
            &mut outbox,
            &mut fresh,
            &mut receipts,
            self.options.when_full,
            deadline,
        )
        .await?;
        Ok(receipts)
    }

    /// Nothing to do: every send already waited for its confirm. Still refused inside a
    /// tokio runtime, like every blocking call.
    pub(crate) fn flush(&mut self) -> Result<()> {
        super::outside_runtime("flush")
    }

    /// How many times this producer has reconnected.
    pub(crate) fn reconnections(&self) -> u64 {
        self.reconnections
    }

    fn next_seq(&mut self) -> u64 {
        let seq = (self.producer_id << 40) | (self.next_count & 0xff_ffff_ffff);
        self.next_count += 1;
        seq
    }

    async fn send_one(
        &mut self,
        message: &T,
        ttl: Option<Duration>,
        when_full: WhenFull,
        timeout: Duration,
    ) -> Result<Receipt> {
        let mut body = Vec::new();
        ipc_core::encode_to_vec(message, &mut body, self.shared.max_message_len as usize)?;
        let outgoing = Outgoing {
            seq: self.next_seq(),
            body,
            expiration: ttl,
        };
        let receipt = Receipt::new(outgoing.seq);
        self.publish_all(
            &mut vec![outgoing],
            &mut std::iter::empty(),
            &mut Vec::new(),
            when_full,
            deadline_after(timeout),
        )
        .await?;
        Ok(receipt)
    }

    /// Publishes `outbox`, then every message of `fresh` (encoded as it goes, its receipt
    /// pushed to `receipts`), and awaits their confirms; publishes again, on a new
    /// connection, whatever a lost connection left unconfirmed, and what a full queue
    /// refused per `when_full`.
    async fn publish_all<'a, I>(
        &mut self,
        outbox: &mut Vec<Outgoing>,
        fresh: &mut I,
        receipts: &mut Vec<Receipt>,
        when_full: WhenFull,
        deadline: Deadline,
    ) -> Result<()>
    where
        I: Iterator<Item = &'a T>,
        T: 'a,
    {
        let shared = Arc::clone(&self.shared);
        let mut full_pause = Duration::from_millis(10);
        loop {
            self.ensure_link(deadline).await?;
            match self.round(outbox, fresh, receipts, deadline).await? {
                Round::Done if outbox.is_empty() => return Ok(()),
                // Some messages were refused (a full queue): wait or fail.
                Round::Done => {
                    if when_full == WhenFull::Fail {
                        return Err(self.full_error(outbox.len()));
                    }
                    if tokio::time::Instant::now() + full_pause >= deadline {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "amqp queue {} stayed full until the deadline ({} messages refused)",
                                shared.name,
                                outbox.len()
                            ),
                        ));
                    }
                    tokio::time::sleep(full_pause).await;
                    full_pause = (full_pause * 2).min(Duration::from_millis(500));
                }
                Round::Lost => {
                    // The outbox keeps every message without a confirm: publish them
                    // again on a new connection.
                    self.drop_link().await;
                }
            }
        }
    }

    fn full_error(&self, refused: usize) -> Error {
        let why = if self.shared.bounded {
            "the queue is full"
        } else {
            "the queue may be full or the broker could not store them"
        };
        Error::new(
            ErrorKind::Full,
            format!(
                "broker refused {refused} messages for amqp queue {} (nack): {why}",
                self.shared.name
            ),
        )
    }

    /// Publishes every message of `outbox`, then every message of `fresh` as soon as it is
    /// encoded (so the broker starts on the first while the rest are encoded), then awaits
    /// the confirms. Confirmed messages leave the outbox; refused (nacked) ones stay, and so
    /// do the ones a lost connection left unconfirmed; returned (unroutable) ones are an
    /// error.
    async fn round<'a, I>(
        &mut self,
        outbox: &mut Vec<Outgoing>,
        fresh: &mut I,
        receipts: &mut Vec<Receipt>,
        deadline: Deadline,
    ) -> Result<Round>
    where
        I: Iterator<Item = &'a T>,
        T: 'a,
    {
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(outbox.len());
        let mut lost = self.link.is_none();
        let mut index = 0;
        loop {
            if index == outbox.len() {
                let Some(message) = fresh.next() else {
                    break;
                };
                let mut body = Vec::new();
                ipc_core::encode_to_vec(message, &mut body, self.shared.max_message_len as usize)?;
                let seq = self.next_seq();
                receipts.push(Receipt::new(seq));
                outbox.push(Outgoing {
                    seq,
                    body,
                    expiration: None,
                });
            }
            // After a lost connection the rest is only encoded: the next round publishes it.
            if let (false, Some(link)) = (lost, self.link.as_ref()) {
                let out = &outbox[index];
                let publish = link.channel.basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.shared.name.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &out.body,
                    self.properties(out),
                );
                match with_deadline(deadline, "publish", publish).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(err) if is_connection_trouble(&err) => lost = true,
                    Err(err) => return Err(err),
                }
            }
            index += 1;
        }
        // Messages past the published ones are kept for the next round.
        let mut keep = vec![true; outbox.len()];
        for (index, confirm) in confirms.into_iter().enumerate() {
            if lost {
                continue;
            }
            match with_deadline(deadline, "publisher confirm", confirm).await {
                Ok(Confirmation::Ack(None)) => keep[index] = false,
                Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "message {} to amqp queue {} came back unroutable ({} {}): the queue is gone",
                            outbox[index].seq,
                            self.shared.name,
                            returned.reply_code,
                            returned.reply_text
                        ),
                    ));
                }
                Ok(Confirmation::Nack(None)) => {}
                Ok(Confirmation::NotRequested) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "amqp channel is not in confirm mode",
                    ));
                }
                Err(err) if is_connection_trouble(&err) => lost = true,
                Err(err) => return Err(err),
            }
        }
        let mut flags = keep.into_iter();
        outbox.retain(|_| flags.next().unwrap_or(true));
        Ok(if lost { Round::Lost } else { Round::Done })
    }

    fn properties(&self, out: &Outgoing) -> BasicProperties {
        let sent_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(HEADER_TYPE),
            AMQPValue::LongString(self.type_name.clone()),
        );
        headers.insert(
            ShortString::from(HEADER_SEQ),
            AMQPValue::LongLongInt(out.seq as i64),
        );
        headers.insert(
            ShortString::from(HEADER_SENT_MS),
            AMQPValue::LongLongInt(sent_ms),
        );
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("{:016x}", out.seq)))
            .with_timestamp((sent_ms / 1000) as u64)
            .with_headers(headers);
        match out.expiration {
            Some(ttl) => {
                properties.with_expiration(ShortString::from(ttl.as_millis().max(1).to_string()))
            }
            None => properties,
        }
    }

    async fn ensure_link(&mut self, deadline: Deadline) -> Result<()> {
        if let Some(link) = &self.link {
            if link.connection.status().connected() && link.channel.status().connected() {
                return Ok(());
            }
            self.drop_link().await;
        }
        let link = Link::connect(&self.shared, deadline, "producer").await?;
        with_deadline(
            deadline,
            "confirm select",
            link.channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        self.link = Some(link);
        Ok(())
    }

    async fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            self.reconnections += 1;
            link.close().await;
        }
    }
}

impl<T: ?Sized> Drop for AmqpProducer<T> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            // Politely close; in the background where blocking is not allowed.
            self.shared.close_on_drop(link.close());
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for AmqpProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpProducer")
            .field("queue", &self.shared.name)
            .field("producer_id", &format_args!("{:06x}", self.producer_id))
            .finish()
    }
}
