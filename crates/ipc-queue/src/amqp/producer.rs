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
    pub(crate) fn open(shared: Arc<Shared>, options: ProducerOptions) -> Result<AmqpProducer<T>> {
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
        let shared = Arc::clone(&producer.shared);
        let deadline = deadline_after(shared.options.timeout);
        shared.handle.block_on(producer.ensure_link(deadline))?;
        Ok(producer)
    }

    /// Sends `message` and waits for the broker's confirm. On a full queue (the broker
    /// refuses the message), waits and retries or fails per [`WhenFull`]. Gives up with
    /// [`Timeout`](ErrorKind::Timeout) after the queue's call deadline.
    pub(crate) fn send(&mut self, message: &T) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, None, self.options.when_full, timeout)
    }

    /// Sends `message`: [`Full`](ErrorKind::Full) at once if the broker refuses it.
    pub(crate) fn try_send(&mut self, message: &T) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, None, WhenFull::Fail, timeout)
    }

    /// Sends `message`, waiting at most `timeout` for the confirm (and for room).
    pub(crate) fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<Receipt> {
        self.send_one(message, None, self.options.when_full, timeout)
    }

    /// Sends `message` with its own time-to-live (AMQP `expiration`): undelivered after
    /// `ttl`, it is dead-lettered.
    pub(crate) fn send_with_ttl(&mut self, message: &T, ttl: Duration) -> Result<Receipt> {
        let timeout = self.shared.options.timeout;
        self.send_one(message, Some(ttl), self.options.when_full, timeout)
    }

    /// Sends a batch, pipelined: all published, then all confirms awaited. Returns one
    /// receipt per message, in order, once every message is confirmed. Unlike the embedded
    /// backend the batch is not atomic: on an error some messages may be stored.
    pub(crate) fn send_batch<'a, I>(&mut self, messages: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let mut outbox = Vec::new();
        for message in messages {
            outbox.push(self.encode(message, None)?);
        }
        let receipts = outbox.iter().map(|out| Receipt::new(out.seq)).collect();
        let deadline = deadline_after(self.shared.options.timeout);
        self.publish_all(outbox, self.options.when_full, deadline)?;
        Ok(receipts)
    }

    /// Nothing to do: every send already waited for its confirm.
    pub(crate) fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// How many times this producer has reconnected.
    pub(crate) fn reconnections(&self) -> u64 {
        self.reconnections
    }

    /// Sends an already encoded message (the async wrapper encodes on its own task).
    pub(crate) fn send_encoded(&mut self, body: Vec<u8>) -> Result<Receipt> {
        if body.len() > self.max_message_len() {
            return Err(Error::too_large(
                body.len() as u64,
                self.max_message_len() as u64,
            ));
        }
        let seq = self.next_seq();
        let deadline = deadline_after(self.shared.options.timeout);
        let outgoing = Outgoing {
            seq,
            body,
            expiration: None,
        };
        self.publish_all(vec![outgoing], self.options.when_full, deadline)?;
        Ok(Receipt::new(seq))
    }

    pub(crate) fn max_message_len(&self) -> usize {
        self.shared.max_message_len as usize
    }

    fn next_seq(&mut self) -> u64 {
        let seq = (self.producer_id << 40) | (self.next_count & 0xff_ffff_ffff);
        self.next_count += 1;
        seq
    }

    fn send_one(
        &mut self,
        message: &T,
        ttl: Option<Duration>,
        when_full: WhenFull,
        timeout: Duration,
    ) -> Result<Receipt> {
        let outgoing = self.encode(message, ttl)?;
        let receipt = Receipt::new(outgoing.seq);
        self.publish_all(vec![outgoing], when_full, deadline_after(timeout))?;
        Ok(receipt)
    }

    fn encode(&mut self, message: &T, expiration: Option<Duration>) -> Result<Outgoing> {
        let mut body = Vec::new();
        ipc_core::encode_to_vec(message, &mut body, self.shared.max_message_len as usize)?;
        let seq = self.next_seq();
        Ok(Outgoing {
            seq,
            body,
            expiration,
        })
    }

    fn publish_all(
        &mut self,
        mut outbox: Vec<Outgoing>,
        when_full: WhenFull,
        deadline: Deadline,
    ) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        shared.handle.block_on(async {
            let mut full_pause = Duration::from_millis(10);
            loop {
                self.ensure_link(deadline).await?;
                match self.round(&mut outbox, deadline).await? {
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
        })
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

    /// Publishes every message of `outbox`, then awaits the confirms. Confirmed messages
    /// leave the outbox; refused (nacked) ones stay; returned (unroutable) ones are an
    /// error.
    async fn round(&mut self, outbox: &mut Vec<Outgoing>, deadline: Deadline) -> Result<Round> {
        let Some(link) = self.link.as_ref() else {
            return Ok(Round::Lost);
        };
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(outbox.len());
        for out in outbox.iter() {
            let properties = self.properties(out);
            let publish = link.channel.basic_publish(
                ShortString::from(""),
                ShortString::from(self.shared.name.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &out.body,
                properties,
            );
            match with_deadline(deadline, "publish", publish).await {
                Ok(confirm) => confirms.push(confirm),
                Err(err) if is_connection_trouble(&err) => return Ok(Round::Lost),
                Err(err) => return Err(err),
            }
        }
        let mut keep = vec![false; confirms.len()];
        let mut lost = false;
        for (index, confirm) in confirms.into_iter().enumerate() {
            if lost {
                keep[index] = true;
                continue;
            }
            match with_deadline(deadline, "publisher confirm", confirm).await {
                Ok(Confirmation::Ack(None)) => {}
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
                Ok(Confirmation::Nack(None)) => keep[index] = true,
                Ok(Confirmation::NotRequested) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "amqp channel is not in confirm mode",
                    ));
                }
                Err(err) if is_connection_trouble(&err) => {
                    let _ = err;
                    keep[index] = true;
                    lost = true;
                }
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
            // Politely close; inside an async runtime, blocking is not allowed: close in
            // the background instead.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.shared.handle.spawn(link.close());
            } else {
                self.shared.handle.block_on(link.close());
            }
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
