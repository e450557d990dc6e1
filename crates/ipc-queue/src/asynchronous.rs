//! The async API (feature `tokio`): [`AsyncQueue`], [`AsyncProducer`], [`AsyncConsumer`],
//! the same queue on either backend behind the same types.
//!
//! RabbitMQ: the backend is async at its core; these types await its async fns (lapin's
//! own futures, each with its deadline) on the caller's runtime, where the connections run.
//! Nothing here goes through `block_on` or `spawn_blocking` (lapin resolves the broker's
//! address on the blocking pool when it connects), and a `recv` waits for lapin's consumer
//! stream: no polling.
//!
//! Embedded: appends, `fdatasync` and the consumer's file lock and state-log writes are
//! blocking syscalls (a sync takes 0.1 to several ms), so each of those calls runs on
//! tokio's blocking pool (`spawn_blocking`), never on a runtime thread. Waiting for a message
//! is not a blocking call: between non-blocking looks at the log a `recv` sleeps on the
//! runtime's timer, 50 µs doubling to 5 ms, the blocking consumer's back-off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::address::{Address, Target};
#[cfg(feature = "amqp")]
use crate::amqp::{AmqpConsumer, AmqpOptions, AmqpProducer, AmqpQueue, Settle};
use crate::config::{ProducerOptions, QueueConfig};
use crate::delivery::{Delivery, Receipt, Ticket};
use crate::embedded::{EmbeddedConsumer, EmbeddedProducer, EmbeddedQueue};
use crate::queue::{Queue, QueueBackend};
use crate::stats::Stats;

/// The connection options of a broker queue (nothing without the `amqp` feature).
#[cfg(feature = "amqp")]
type Options = AmqpOptions;
#[cfg(not(feature = "amqp"))]
type Options = ();

/// The embedded consumer's back-off between looks at an empty log.
const FIRST_NAP: Duration = Duration::from_micros(50);
const LONGEST_NAP: Duration = Duration::from_millis(5);

/// Runs blocking file work on tokio's blocking pool: an error, not a panic, outside a
/// tokio runtime.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            "the async queue api needs a tokio runtime (with io and time enabled)",
        )
    })?;
    handle.spawn_blocking(work).await.map_err(|err| {
        Error::new(
            ErrorKind::Other,
            format!("blocking queue task failed: {err}"),
        )
    })?
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Queue {
    /// [`AsyncQueue::create`]: creates the queue at `address` for async code.
    pub async fn create_async(
        address: impl Into<Address>,
        config: &QueueConfig,
    ) -> Result<AsyncQueue> {
        AsyncQueue::create(address, config).await
    }

    /// [`AsyncQueue::open`]: opens the queue at `address` for async code.
    pub async fn open_async(address: impl Into<Address>) -> Result<AsyncQueue> {
        AsyncQueue::open(address).await
    }

    /// [`AsyncQueue::open_or_create`]: opens or creates the queue at `address` for async
    /// code.
    pub async fn open_or_create_async(
        address: impl Into<Address>,
        config: &QueueConfig,
    ) -> Result<AsyncQueue> {
        AsyncQueue::open_or_create(address, config).await
    }
}

/// A durable queue for async code (feature `tokio`), embedded or on RabbitMQ, picked by its
/// [`Address`]: the async twin of [`Queue`], with the same behaviour and the same
/// differences between backends. Cheap to clone.
///
/// Use it inside a tokio runtime with its io and time drivers (`#[tokio::main]`,
/// `Builder::enable_all`); outside one, its calls fail with
/// [`InvalidInput`](ErrorKind::InvalidInput). On RabbitMQ its handles' connections run on
/// the runtime the queue was opened on: keep that runtime running while they are in use.
/// (The blocking [`Queue`] refuses to work on RabbitMQ inside a runtime, with the same
/// error kind.)
///
/// # Example
///
/// ```
/// use ipc_queue::{AsyncQueue, ProducerOptions, QueueConfig};
///
/// # let dir = std::env::temp_dir().join(format!("ipc-queue-async-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// // With "amqp://guest:guest@127.0.0.1:5672/%2f#jobs" instead of a directory, the same
/// // code runs on RabbitMQ.
/// let queue = AsyncQueue::create(&dir, &QueueConfig::new()).await?;
/// let mut producer = queue.producer::<String>(ProducerOptions::new()).await?;
/// let mut consumer = queue.consumer::<String>().await?;
/// let receipt = producer.send(&"resize".to_owned()).await?;
///
/// // A recv dropped before it returns loses nothing: the message stays for the next one.
/// let early = tokio::time::timeout(std::time::Duration::ZERO, consumer.recv()).await;
/// let delivery = match early {
///     Ok(delivery) => delivery?,
///     Err(_elapsed) => consumer.recv().await?,
/// };
/// assert_eq!(delivery.message(), "resize");
/// assert_eq!(delivery.seq(), receipt.seq());
/// consumer.ack(&delivery).await?;
/// assert_eq!(queue.stats().await?.depth, 0);
/// queue.delete().await?;
/// # Ok::<(), ipc_queue::core::Error>(())
/// # })?;
/// # Ok::<(), ipc_queue::core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncQueue {
    address: Address,
    backend: QueueBackend,
}

impl AsyncQueue {
    /// Creates the queue at `address`, like [`Queue::create`] (the same errors).
    pub async fn create(address: impl Into<Address>, config: &QueueConfig) -> Result<AsyncQueue> {
        AsyncQueue::create_inner(address.into(), config, &Options::default()).await
    }

    /// Opens the existing queue at `address`, like [`Queue::open`].
    pub async fn open(address: impl Into<Address>) -> Result<AsyncQueue> {
        AsyncQueue::open_inner(address.into(), &Options::default()).await
    }

    /// Opens the queue at `address`, creating it with `config` if there is none, like
    /// [`Queue::open_or_create`].
    pub async fn open_or_create(
        address: impl Into<Address>,
        config: &QueueConfig,
    ) -> Result<AsyncQueue> {
        let address = address.into();
        if let Target::Dir(path) = address.target() {
            let (path, config) = (path.to_owned(), config.clone());
            let queue = blocking(move || EmbeddedQueue::open_or_create(path, &config)).await?;
            return Ok(AsyncQueue {
                backend: QueueBackend::Embedded(queue),
                address,
            });
        }
        match AsyncQueue::create(&address, config).await {
            Err(err) if err.kind() == ErrorKind::AlreadyExists => AsyncQueue::open(address).await,
            other => other,
        }
    }

    /// [`create`](AsyncQueue::create) with connection options for a RabbitMQ address
    /// (ignored for a directory).
    #[cfg(feature = "amqp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
    pub async fn create_with(
        address: impl Into<Address>,
        config: &QueueConfig,
        options: &AmqpOptions,
    ) -> Result<AsyncQueue> {
        AsyncQueue::create_inner(address.into(), config, options).await
    }

    /// [`open`](AsyncQueue::open) with connection options for a RabbitMQ address (ignored
    /// for a directory).
    #[cfg(feature = "amqp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
    pub async fn open_with(
        address: impl Into<Address>,
        options: &AmqpOptions,
    ) -> Result<AsyncQueue> {
        AsyncQueue::open_inner(address.into(), options).await
    }

    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    async fn create_inner(
        address: Address,
        config: &QueueConfig,
        options: &Options,
    ) -> Result<AsyncQueue> {
        let backend = match address.target() {
            Target::Dir(path) => {
                let (path, config) = (path.to_owned(), config.clone());
                QueueBackend::Embedded(
                    blocking(move || EmbeddedQueue::create(path, &config)).await?,
                )
            }
            #[cfg(feature = "amqp")]
            Target::Amqp(parts) => {
                let (url, name) = parts?;
                QueueBackend::Amqp(AmqpQueue::create_async(url, name, config, options).await?)
            }
            #[cfg(not(feature = "amqp"))]
            Target::Amqp(parts) => {
                return Err(parts
                    .err()
                    .unwrap_or_else(|| crate::queue::no_amqp(&address)));
            }
        };
        Ok(AsyncQueue { address, backend })
    }

    #[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
    async fn open_inner(address: Address, options: &Options) -> Result<AsyncQueue> {
        let backend = match address.target() {
            Target::Dir(path) => {
                let path = path.to_owned();
                QueueBackend::Embedded(blocking(move || EmbeddedQueue::open(path)).await?)
            }
            #[cfg(feature = "amqp")]
            Target::Amqp(parts) => {
                let (url, name) = parts?;
                QueueBackend::Amqp(AmqpQueue::open_async(url, name, options).await?)
            }
            #[cfg(not(feature = "amqp"))]
            Target::Amqp(parts) => {
                return Err(parts
                    .err()
                    .unwrap_or_else(|| crate::queue::no_amqp(&address)));
            }
        };
        Ok(AsyncQueue { address, backend })
    }

    /// Where the queue lives.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The directory of an embedded queue; `None` on RabbitMQ.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.address.path()
    }

    /// The configuration, as [`Queue::config`] gives it.
    pub fn config(&self) -> &QueueConfig {
        self.backend.config()
    }

    /// Opens a producer of `T` messages.
    pub async fn producer<T: Serialize + ?Sized + 'static>(
        &self,
        options: ProducerOptions,
    ) -> Result<AsyncProducer<T>> {
        let options_window = options.window;
        let backend = match &self.backend {
            QueueBackend::Embedded(queue) => {
                let queue = queue.clone();
                let producer = blocking(move || queue.producer::<T>(options)).await?;
                let max_len = producer.queue().config().max_message_len() as usize;
                ProducerBackend::Embedded {
                    producer: Arc::new(Mutex::new(producer)),
                    max_len,
                    buf: Vec::new(),
                    pipeline: None,
                }
            }
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => {
                ProducerBackend::Amqp(Box::new(queue.producer_async(options).await?))
            }
        };
        Ok(AsyncProducer {
            backend,
            window: options_window,
        })
    }

    /// Opens a consumer of `T` messages, competing with the queue's other consumers (in
    /// this and other processes), like [`Queue::consumer`].
    pub async fn consumer<T: DeserializeOwned + Send + 'static>(&self) -> Result<AsyncConsumer<T>> {
        let backend = match &self.backend {
            QueueBackend::Embedded(queue) => {
                let queue = queue.clone();
                let consumer = blocking(move || queue.consumer::<T>()).await?;
                ConsumerBackend::Embedded(Arc::new(Mutex::new(EmbeddedSide {
                    consumer,
                    pending: std::collections::VecDeque::new(),
                })))
            }
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => {
                ConsumerBackend::Amqp(Box::new(queue.consumer_async().await?))
            }
        };
        Ok(AsyncConsumer { backend })
    }

    /// The dead-letter queue, like [`Queue::dead_letters`].
    pub fn dead_letters(&self) -> Result<AsyncQueue> {
        Ok(AsyncQueue {
            address: self.address.dead_letters(),
            backend: self.backend.dead_letters()?,
        })
    }

    /// Looks inside, like [`Queue::stats`].
    pub async fn stats(&self) -> Result<Stats> {
        match &self.backend {
            QueueBackend::Embedded(queue) => {
                let queue = queue.clone();
                blocking(move || queue.stats()).await
            }
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => queue.stats_async().await,
        }
    }

    /// Deletes the queue, its dead-letter queue and all their messages, like
    /// [`Queue::delete`].
    pub async fn delete(self) -> Result<()> {
        match self.backend {
            QueueBackend::Embedded(queue) => blocking(move || queue.delete()).await,
            #[cfg(feature = "amqp")]
            QueueBackend::Amqp(queue) => queue.delete_async().await,
        }
    }
}

/// Sends `T` messages to a queue from async code; opened by [`AsyncQueue::producer`].
/// A receipt means what [`Producer::send`](crate::Producer::send)'s does.
///
/// Cancellation: a `send` future dropped before it completes may or may not have sent its
/// message (embedded: the append goes on in the background; RabbitMQ: the publish may have
/// reached the broker); the handle stays usable.
///
/// Embedded: the message is encoded on the calling task, then appended and synced on
/// tokio's blocking pool (dropped inside a runtime, the producer's final sync of what
/// `Durability::Interval` or `Never` left unsynced runs there too). RabbitMQ: published and
/// its confirm awaited on the runtime, with the blocking producer's reconnection and outbox.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncProducer<T: ?Sized + 'static> {
    backend: ProducerBackend<T>,
    /// The most messages [`send_pipelined`](AsyncProducer::send_pipelined) leaves
    /// unconfirmed.
    window: u32,
}

enum ProducerBackend<T: ?Sized> {
    Embedded {
        producer: Arc<Mutex<EmbeddedProducer<T>>>,
        max_len: usize,
        buf: Vec<u8>,
        /// Started by the first pipelined send.
        pipeline: Option<Pipeline>,
    },
    /// Boxed: a connection's state is large beside the embedded variant's pointer.
    #[cfg(feature = "amqp")]
    Amqp(Box<AmqpProducer<T>>),
}

impl<T: Serialize + ?Sized + 'static> AsyncProducer<T> {
    /// Sends `message`, returning once it is stored (on a full queue, waiting or failing
    /// per [`WhenFull`](crate::WhenFull)), like [`Producer::send`](crate::Producer::send).
    pub async fn send(&mut self, message: &T) -> Result<Receipt> {
        self.settle().await;
        match &mut self.backend {
            ProducerBackend::Embedded {
                producer,
                max_len,
                buf,
                ..
            } => {
                buf.clear();
                ipc_core::encode_to_vec(message, buf, *max_len)?;
                let payload = std::mem::take(buf);
                let mut guard = Arc::clone(producer).lock_owned().await;
                let (payload, receipt) = blocking(move || {
                    let receipt = guard.send_encoded(&payload);
                    Ok((payload, receipt))
                })
                .await?;
                *buf = payload;
                receipt
            }
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.send_async(message).await,
        }
    }

    /// Sends `message` without waiting for room: [`Full`](ErrorKind::Full) on a full
    /// queue, like [`Producer::try_send`](crate::Producer::try_send).
    pub async fn try_send(&mut self, message: &T) -> Result<Receipt> {
        self.settle().await;
        match &mut self.backend {
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.try_send_async(message).await,
            ProducerBackend::Embedded {
                producer, max_len, ..
            } => send_embedded(producer, *max_len, &[message], true, None, None)
                .await
                .map(one),
        }
    }

    /// Sends `message`, waiting at most `timeout` for room, like
    /// [`Producer::send_timeout`](crate::Producer::send_timeout).
    pub async fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<Receipt> {
        self.settle().await;
        match &mut self.backend {
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.send_timeout_async(message, timeout).await,
            ProducerBackend::Embedded {
                producer, max_len, ..
            } => send_embedded(producer, *max_len, &[message], false, Some(timeout), None)
                .await
                .map(one),
        }
    }

    /// Sends `message` with its own time-to-live, like
    /// [`Producer::send_with_ttl`](crate::Producer::send_with_ttl).
    pub async fn send_with_ttl(&mut self, message: &T, ttl: Duration) -> Result<Receipt> {
        self.settle().await;
        match &mut self.backend {
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.send_with_ttl_async(message, ttl).await,
            ProducerBackend::Embedded {
                producer, max_len, ..
            } => send_embedded(producer, *max_len, &[message], false, None, Some(ttl))
                .await
                .map(one),
        }
    }

    /// Sends a batch, like [`Producer::send_batch`](crate::Producer::send_batch): one
    /// receipt per message, in order (embedded: one append and one sync, all or nothing;
    /// RabbitMQ: pipelined, not atomic).
    pub async fn send_batch(&mut self, messages: &[&T]) -> Result<Vec<Receipt>> {
        self.settle().await;
        match &mut self.backend {
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => {
                producer.send_batch_async(messages.iter().copied()).await
            }
            ProducerBackend::Embedded {
                producer, max_len, ..
            } => send_embedded(producer, *max_len, messages, false, None, None).await,
        }
    }

    /// Syncs everything sent, like [`Producer::flush`](crate::Producer::flush) (nothing
    /// to do on RabbitMQ, where every send waited for its confirm).
    pub async fn flush(&mut self) -> Result<()> {
        self.settle().await;
        match &mut self.backend {
            ProducerBackend::Embedded { producer, .. } => {
                let mut guard = Arc::clone(producer).lock_owned().await;
                blocking(move || guard.flush()).await
            }
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(_) => Ok(()),
        }
    }

    /// Queues `message` and returns as soon as it is queued, without waiting for it to be
    /// stored: the returned [`PendingReceipt`] resolves to its [`Receipt`] (or the error
    /// that kept it from being stored) once it is, like a RabbitMQ publisher's confirm.
    /// At most the producer's window ([`ProducerOptions::with_window`], 256 by default) of
    /// messages are unconfirmed at a time: beyond that this waits for room. Receipts come
    /// in the order of the sends.
    ///
    /// Embedded: a thread of the producer takes every message queued meanwhile (up to the
    /// window, and 4 MiB) and stores them as one batch, with one append and one sync (per
    /// the producer's [`Durability`](crate::Durability)), while the caller goes on
    /// queueing the next ones; so one producer reaches the rate of
    /// [`send_batch`](AsyncProducer::send_batch) without batching by hand. A batch is
    /// stored whole or not at all: an error (a full queue with
    /// [`WhenFull::Fail`](crate::WhenFull), a poisoned queue) is the receipt of each of its
    /// messages, and messages queued after it are tried again in the next batch. The
    /// message is encoded before this returns ([`TooLarge`](ErrorKind::TooLarge) and
    /// encoding errors come from here, not from the receipt), and the other calls of this
    /// producer first wait until every pipelined message is confirmed, so that receipts
    /// stay in order. Dropping a `PendingReceipt` does not cancel its message; dropping
    /// the producer lets its queued messages be stored all the same.
    ///
    /// RabbitMQ: sends as [`send`](AsyncProducer::send) does, awaiting the confirm, and
    /// returns a receipt that is ready (use [`send_batch`](AsyncProducer::send_batch) to
    /// keep a window of confirms open on the broker).
    pub async fn send_pipelined(&mut self, message: &T) -> Result<PendingReceipt> {
        let window = self.window;
        match &mut self.backend {
            ProducerBackend::Embedded {
                producer,
                max_len,
                pipeline,
                ..
            } => {
                let mut payload = Vec::new();
                ipc_core::encode_to_vec(message, &mut payload, *max_len)?;
                if pipeline.is_none() {
                    *pipeline = Some(Pipeline::start(Arc::clone(producer), window)?);
                }
                let Some(pipeline) = pipeline.as_ref() else {
                    return Err(Error::new(ErrorKind::Other, "no producer pipeline"));
                };
                pipeline.queue(payload).await
            }
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => {
                let result = producer.send_async(message).await;
                let (reply, receipt) = oneshot::channel();
                let _ = reply.send(result);
                Ok(PendingReceipt { receipt })
            }
        }
    }

    /// Waits until every pipelined message of this producer is confirmed, so that other
    /// calls keep the order of receipts.
    async fn settle(&self) {
        if let ProducerBackend::Embedded {
            pipeline: Some(pipeline),
            ..
        } = &self.backend
        {
            pipeline.settle().await;
        }
    }

    /// How many times this producer re-established its connection to the broker (0 on
    /// the embedded backend).
    pub fn reconnections(&self) -> u64 {
        match &self.backend {
            ProducerBackend::Embedded { .. } => 0,
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.reconnections(),
        }
    }
}

/// The receipt of a message sent with [`AsyncProducer::send_pipelined`], still to come:
/// await it for the [`Receipt`] (once the message is stored per the producer's durability)
/// or the error that kept it from being stored. Dropping it does not cancel the message.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
#[must_use = "a pending receipt says whether its message was stored"]
pub struct PendingReceipt {
    receipt: oneshot::Receiver<Result<Receipt>>,
}

impl Future for PendingReceipt {
    type Output = Result<Receipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Receipt>> {
        match Pin::new(&mut self.receipt).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::new(
                ErrorKind::Other,
                "the producer's pipeline stopped before this message was stored",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The most payload bytes one pipelined batch takes (a larger message goes alone).
const PIPELINE_BATCH_BYTES: usize = 4 << 20;

/// An embedded producer's pipeline: a thread that stores what was queued, batch by batch.
struct Pipeline {
    jobs: mpsc::UnboundedSender<Job>,
    window: Arc<Semaphore>,
    size: u32,
}

/// One queued message, with where its receipt goes and its place in the window.
struct Job {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<Receipt>>,
    _permit: OwnedSemaphorePermit,
}

impl Pipeline {
    fn start<T: Serialize + ?Sized + 'static>(
        producer: Arc<Mutex<EmbeddedProducer<T>>>,
        size: u32,
    ) -> Result<Pipeline> {
        let (jobs, mut queued) = mpsc::unbounded_channel::<Job>();
        // A thread of its own rather than tokio's blocking pool: it lives as long as the
        // producer, and a runtime shutting down must not wait for it.
        std::thread::Builder::new()
            .name("ipc-queue-pipeline".to_owned())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::new();
                while let Some(first) = queued.blocking_recv() {
                    let mut bytes = first.payload.len();
                    batch.push(first);
                    while batch.len() < size as usize && bytes < PIPELINE_BATCH_BYTES {
                        match queued.try_recv() {
                            Ok(job) => {
                                bytes += job.payload.len();
                                batch.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    let payloads: Vec<&[u8]> =
                        batch.iter().map(|job| job.payload.as_slice()).collect();
                    let stored = producer.blocking_lock().send_encoded_pipelined(&payloads);
                    match stored {
                        Ok(receipts) => {
                            for (job, receipt) in batch.drain(..).zip(receipts) {
                                let _ = job.reply.send(Ok(receipt));
                            }
                        }
                        Err(err) => {
                            for job in batch.drain(..) {
                                let _ =
                                    job.reply.send(Err(Error::new(err.kind(), err.to_string())));
                            }
                        }
                    }
                    // Any job left (no receipt for it) is answered by its dropped sender.
                    batch.clear();
                }
            })
            .map_err(|err| Error::io("start the producer's pipeline thread", err))?;
        Ok(Pipeline {
            jobs,
            window: Arc::new(Semaphore::new(size as usize)),
            size,
        })
    }

    /// Queues one encoded message, waiting for room in the window.
    async fn queue(&self, payload: Vec<u8>) -> Result<PendingReceipt> {
        let permit = Arc::clone(&self.window)
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Other, "the producer's pipeline is closed"))?;
        let (reply, receipt) = oneshot::channel();
        self.jobs
            .send(Job {
                payload,
                reply,
                _permit: permit,
            })
            .map_err(|_| Error::new(ErrorKind::Other, "the producer's pipeline stopped"))?;
        Ok(PendingReceipt { receipt })
    }

    /// Waits until no message is unconfirmed.
    async fn settle(&self) {
        if let Ok(all) = self.window.acquire_many(self.size).await {
            drop(all);
        }
    }
}

/// Encodes `messages` on the calling task and stores them in one append on the blocking
/// pool.
async fn send_embedded<T: Serialize + ?Sized + 'static>(
    producer: &Arc<Mutex<EmbeddedProducer<T>>>,
    max_len: usize,
    messages: &[&T],
    try_only: bool,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
) -> Result<Vec<Receipt>> {
    let mut payloads = Vec::with_capacity(messages.len());
    for message in messages {
        let mut payload = Vec::new();
        ipc_core::encode_to_vec(*message, &mut payload, max_len)?;
        payloads.push(payload);
    }
    let mut guard = Arc::clone(producer).lock_owned().await;
    blocking(move || guard.send_encoded_with(&payloads, try_only, timeout, ttl)).await
}

/// The one receipt of a one-message batch.
fn one(receipts: Vec<Receipt>) -> Receipt {
    receipts.into_iter().next().unwrap_or(Receipt::new(0))
}

impl<T: Serialize + Sync + ?Sized + 'static> ipc_core::AsyncSender for AsyncProducer<T> {
    type Message = T;

    async fn send(&mut self, message: &T) -> Result<()> {
        AsyncProducer::send(self, message).await.map(drop)
    }

    async fn flush(&mut self) -> Result<()> {
        AsyncProducer::flush(self).await
    }
}

impl<T: ?Sized + 'static> Drop for AsyncProducer<T> {
    fn drop(&mut self) {
        // An embedded producer with unsynced messages (`Durability::Interval`, `Never`)
        // syncs them when it goes: on the blocking pool, not on a runtime thread.
        if let ProducerBackend::Embedded { producer, .. } = &self.backend
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let producer = Arc::clone(producer);
            drop(handle.spawn_blocking(move || drop(producer)));
        }
    }
}

impl<T: ?Sized + 'static> std::fmt::Debug for AsyncProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            ProducerBackend::Embedded { .. } => f.write_str("AsyncProducer(embedded)"),
            #[cfg(feature = "amqp")]
            ProducerBackend::Amqp(producer) => producer.fmt(f),
        }
    }
}

struct EmbeddedSide<T> {
    consumer: EmbeddedConsumer<T>,
    /// A delivery taken from the log by a look whose `recv` future was dropped: the next
    /// `recv` returns it, so cancelling a `recv` loses nothing.
    pending: std::collections::VecDeque<Delivery<T>>,
}

/// Receives `T` messages from a queue in async code; opened by [`AsyncQueue::consumer`].
/// The same delivery semantics as [`Consumer`](crate::Consumer): at least once; settle
/// each [`Delivery`] with [`ack`](AsyncConsumer::ack), [`nack`](AsyncConsumer::nack) or
/// [`reject`](AsyncConsumer::reject).
///
/// Cancellation: a `recv` (or `recv_timeout`, `try_recv`) future dropped before it
/// completes loses no message: the next receive returns it. A settlement future dropped
/// before it completes may or may not have settled (an unsettled delivery comes back).
///
/// Waiting: RabbitMQ awaits the broker's push (lapin's consumer stream, bounded by the
/// prefetch); embedded looks at the log on tokio's blocking pool and sleeps on the
/// runtime's timer between looks (50 µs doubling to 5 ms, so a message that arrives while
/// the queue is idle is seen within about 5 ms).
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncConsumer<T> {
    backend: ConsumerBackend<T>,
}

enum ConsumerBackend<T> {
    Embedded(Arc<Mutex<EmbeddedSide<T>>>),
    /// Boxed: a connection's state is large beside the embedded variant's pointer.
    #[cfg(feature = "amqp")]
    Amqp(Box<AmqpConsumer<T>>),
}

/// How a delivery is settled.
enum How {
    Ack,
    Nack(Option<Duration>),
    Reject(String),
}

impl<T: DeserializeOwned + Send + 'static> AsyncConsumer<T> {
    /// Receives the next message, waiting for one; the same errors as
    /// [`Consumer::recv`](crate::Consumer::recv).
    pub async fn recv(&mut self) -> Result<Delivery<T>> {
        match &mut self.backend {
            ConsumerBackend::Embedded(side) => embedded_recv(side, None).await,
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => consumer.recv_async(None).await,
        }
    }

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](ErrorKind::Timeout) if none came.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery<T>> {
        match &mut self.backend {
            ConsumerBackend::Embedded(side) => embedded_recv(side, Some(timeout)).await,
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => consumer.recv_async(Some(timeout)).await,
        }
    }

    /// Receives the next message if one is ready.
    pub async fn try_recv(&mut self) -> Result<Option<Delivery<T>>> {
        match &mut self.backend {
            ConsumerBackend::Embedded(side) => embedded_look(side).await,
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => consumer.try_recv_async().await,
        }
    }

    /// Receives up to `max` messages, waiting at most `timeout` for the first, like
    /// [`Consumer::recv_batch`](crate::Consumer::recv_batch). A dropped future loses
    /// nothing: what it had taken from the log comes from the next receive.
    pub async fn recv_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery<T>>> {
        match &mut self.backend {
            ConsumerBackend::Embedded(side) => {
                let first = embedded_recv(side, Some(timeout)).await?;
                let mut guard = Arc::clone(side).lock_owned().await;
                // Kept where a dropped caller leaves it: in `pending`.
                guard.pending.push_front(first);
                let more = max.saturating_sub(guard.pending.len());
                let mut guard = blocking(move || {
                    if more > 0 {
                        let batch = guard.consumer.try_batch(more)?;
                        guard.pending.extend(batch);
                    }
                    Ok(guard)
                })
                .await?;
                let take = max.max(1).min(guard.pending.len());
                Ok(guard.pending.drain(..take).collect())
            }
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => {
                let mut out = vec![consumer.recv_async(Some(timeout)).await?];
                while out.len() < max {
                    match consumer.try_recv_async().await {
                        Ok(Some(delivery)) => out.push(delivery),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(out)
            }
        }
    }

    /// Acknowledges a delivery, like [`Consumer::ack`](crate::Consumer::ack).
    pub fn ack<'a>(
        &'a mut self,
        delivery: &Delivery<T>,
    ) -> impl Future<Output = Result<()>> + Send + use<'a, T> {
        self.settle(delivery.ticket.clone(), How::Ack)
    }

    /// Acknowledges deliveries together, like
    /// [`Consumer::ack_batch`](crate::Consumer::ack_batch) (embedded: one write to the
    /// state log for all of them).
    pub fn ack_batch<'a>(
        &'a mut self,
        deliveries: &[&Delivery<T>],
    ) -> impl Future<Output = Result<()>> + Send + use<'a, T> {
        let tickets: Vec<Ticket> = deliveries.iter().map(|d| d.ticket.clone()).collect();
        async move {
            match &mut self.backend {
                ConsumerBackend::Embedded(side) => {
                    let mut guard = Arc::clone(side).lock_owned().await;
                    blocking(move || {
                        let refs: Vec<&Ticket> = tickets.iter().collect();
                        guard.consumer.ack_batch(&refs)
                    })
                    .await
                }
                #[cfg(feature = "amqp")]
                ConsumerBackend::Amqp(consumer) => {
                    for ticket in &tickets {
                        consumer.settle_async(ticket, Settle::Ack, None).await?;
                    }
                    Ok(())
                }
            }
        }
    }

    /// Gives a delivery back, like [`Consumer::nack`](crate::Consumer::nack) (a delay is
    /// embedded only).
    pub fn nack<'a>(
        &'a mut self,
        delivery: &Delivery<T>,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + use<'a, T> {
        self.settle(delivery.ticket.clone(), How::Nack(delay))
    }

    /// Sends a delivery to the dead-letter queue with `reason`, like
    /// [`Consumer::reject`](crate::Consumer::reject).
    pub fn reject<'a>(
        &'a mut self,
        delivery: &Delivery<T>,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send + use<'a, T> {
        self.settle(delivery.ticket.clone(), How::Reject(reason.to_owned()))
    }

    async fn settle(&mut self, ticket: Ticket, how: How) -> Result<()> {
        match &mut self.backend {
            ConsumerBackend::Embedded(side) => {
                let mut guard = Arc::clone(side).lock_owned().await;
                blocking(move || match how {
                    How::Ack => guard.consumer.ack(&ticket),
                    How::Nack(delay) => guard.consumer.nack(&ticket, delay),
                    How::Reject(reason) => guard.consumer.reject(&ticket, &reason),
                })
                .await
            }
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => {
                let (how, delay) = match how {
                    How::Ack => (Settle::Ack, None),
                    How::Nack(delay) => (Settle::Requeue, delay),
                    How::Reject(_) => (Settle::Reject, None),
                };
                consumer.settle_async(&ticket, how, delay).await
            }
        }
    }
}

/// One non-blocking look at the log, on the blocking pool. What it finds is parked in
/// `pending` before the lock is released, so a dropped caller loses nothing.
async fn embedded_look<T: DeserializeOwned + Send + 'static>(
    side: &Arc<Mutex<EmbeddedSide<T>>>,
) -> Result<Option<Delivery<T>>> {
    let mut guard = Arc::clone(side).lock_owned().await;
    if let Some(delivery) = guard.pending.pop_front() {
        return Ok(Some(delivery));
    }
    let mut guard = blocking(move || {
        if let Some(delivery) = guard.consumer.try_recv()? {
            guard.pending.push_back(delivery);
        }
        Ok(guard)
    })
    .await?;
    Ok(guard.pending.pop_front())
}

async fn embedded_recv<T: DeserializeOwned + Send + 'static>(
    side: &Arc<Mutex<EmbeddedSide<T>>>,
    timeout: Option<Duration>,
) -> Result<Delivery<T>> {
    let started = tokio::time::Instant::now();
    let deadline = timeout.map(|timeout| started + timeout);
    let mut nap = FIRST_NAP;
    loop {
        if let Some(delivery) = embedded_look(side).await? {
            return Ok(delivery);
        }
        let mut sleep = nap;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no message within {} ms", started.elapsed().as_millis()),
                ));
            }
            sleep = sleep.min(left);
        }
        tokio::time::sleep(sleep).await;
        nap = (nap * 2).min(LONGEST_NAP);
    }
}

impl<T: DeserializeOwned + Send + 'static> ipc_core::AsyncReceiver for AsyncConsumer<T> {
    type Message = T;

    /// Receives and acknowledges (at-most-once processing, like the blocking
    /// [`ipc_core::Receiver`] implementation).
    async fn recv(&mut self) -> Result<T> {
        let delivery = AsyncConsumer::recv(self).await?;
        let ack = self.ack(&delivery);
        ack.await?;
        Ok(delivery.into_message())
    }
}

impl<T> std::fmt::Debug for AsyncConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            ConsumerBackend::Embedded(_) => f.write_str("AsyncConsumer(embedded)"),
            #[cfg(feature = "amqp")]
            ConsumerBackend::Amqp(consumer) => consumer.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn async_producer_and_consumer_round_trip_on_one_thread() -> Result<()> {
        let dir = std::env::temp_dir().join(format!(
            "ipcq-async-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let queue = AsyncQueue::create(&dir, &QueueConfig::new()).await?;
        let mut producer = queue.producer::<String>(ProducerOptions::new()).await?;
        let mut consumer = queue.consumer::<String>().await?;
        let receiving = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                let delivery = consumer.recv().await?;
                got.push(delivery.message().clone());
                consumer.ack(&delivery).await?;
            }
            Ok::<_, Error>(got)
        });
        for text in ["a", "b", "c"] {
            producer.send(&text.to_owned()).await?;
        }
        let got = receiving
            .await
            .map_err(|err| Error::new(ErrorKind::Other, err.to_string()))??;
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(queue.stats().await?.depth, 0);
        queue.delete().await?;
        Ok(())
    }

    #[test]
    fn handles_dropped_by_a_runtime_shutting_down_do_not_panic() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("ipcq-async-down-{}", fastrand::u64(..)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|err| Error::io("build a runtime", err))?;
        let options = ProducerOptions::new().with_durability(crate::Durability::Never);
        let (producer, consumer) = runtime.block_on(async {
            let queue = AsyncQueue::create(&dir, &QueueConfig::new()).await?;
            let mut producer = queue.producer::<String>(options).await?;
            producer.send(&"unsynced".to_owned()).await?;
            Ok::<_, Error>((producer, queue.consumer::<String>().await?))
        })?;
        // Tasks that own handles, still waiting when the runtime goes.
        runtime.spawn(async move {
            let _owned = (producer, consumer);
            std::future::pending::<()>().await;
        });
        drop(runtime);
        let queue = Queue::open(&dir)?;
        let mut consumer = queue.consumer::<String>()?;
        assert_eq!(
            consumer.recv_timeout(Duration::from_secs(30))?.message(),
            "unsynced"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn outside_a_runtime_the_async_api_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("ipcq-async-none-{}", fastrand::u64(..)));
        let err = futures_lite_block_on(AsyncQueue::create(&dir, &QueueConfig::new())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("tokio runtime"), "{err}");
        assert!(!dir.exists());
    }

    /// Polls `future` to completion on this thread, outside any tokio runtime.
    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            std::thread::yield_now();
        }
    }
}
