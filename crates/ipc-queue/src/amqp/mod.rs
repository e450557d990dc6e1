//! The RabbitMQ backend: the queue API over AMQP 0-9-1 through lapin.
//!
//! The backend is async at its core: every operation is an async fn over lapin's own
//! futures. A queue opened through the async API ([`AsyncQueue`](crate::AsyncQueue)) runs
//! its connections on the caller's tokio runtime and awaits those fns directly. A queue
//! opened through the blocking API owns a small tokio runtime (shared by its handles) and
//! each blocking call is a `block_on` of the same fn there; called inside a tokio runtime
//! (where that `block_on` would panic) it fails with
//! [`InvalidInput`](ErrorKind::InvalidInput) instead. Every await has a deadline; a lost
//! connection is re-established with back-off inside the call that found it lost.
//! `AMQP.md` documents the wire contract and the differences from the embedded backend.

mod consumer;
mod link;
mod producer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use lapin::options::QueueDeleteOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ProducerOptions, QueueConfig};
use crate::stats::Stats;

pub(crate) use self::consumer::{AmqpConsumer, Settle};
pub(crate) use self::producer::AmqpProducer;

use self::link::{Link, deadline_after};

/// The content type of every message body: the ipc-core (postcard) encoding of the message.
pub const CONTENT_TYPE: &str = "application/x-ipc-postcard";
/// The header that names the message type ([`ipc_core::MessageType`] name, a string).
pub const HEADER_TYPE: &str = "ipc-type";
/// The header with the message's sequence number (a signed 64-bit integer).
pub const HEADER_SEQ: &str = "ipc-seq";
/// The header with the send time in milliseconds since the Unix epoch (signed 64-bit).
pub const HEADER_SENT_MS: &str = "ipc-sent-ms";

/// Connection options of a queue on RabbitMQ ([`Queue::create_with`](crate::Queue::create_with),
/// [`Queue::open_with`](crate::Queue::open_with)) and of the handles opened from it.
///
/// ```
/// use std::time::Duration;
/// let options = ipc_queue::AmqpOptions::new().with_timeout(Duration::from_secs(5));
/// assert_eq!(options.timeout(), Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpOptions {
    pub(crate) timeout: Duration,
    pub(crate) prefetch: u16,
    pub(crate) max_backoff: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls: AmqpTls,
}

/// The TLS settings of `amqps://` connections; `Debug` never shows the client key.
#[cfg(feature = "tls")]
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct AmqpTls {
    pub(crate) ca_pem: Option<String>,
    pub(crate) client_chain_pem: Option<Vec<u8>>,
    pub(crate) client_key_pem: Option<Vec<u8>>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTls")
            .field("ca_bundle", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_chain_pem.is_some())
            .finish()
    }
}

#[cfg(feature = "tls")]
impl AmqpTls {
    pub(crate) fn lapin_config(&self) -> lapin::tcp::OwnedTLSConfig {
        let identity = match (&self.client_chain_pem, &self.client_key_pem) {
            (Some(pem), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: pem.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain: self.ca_pem.clone(),
        }
    }
}

impl Default for AmqpOptions {
    fn default() -> AmqpOptions {
        AmqpOptions {
            timeout: Duration::from_secs(30),
            prefetch: 64,
            max_backoff: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: AmqpTls::default(),
        }
    }
}

impl AmqpOptions {
    /// The defaults: 30 s per call, a prefetch of 64, back-off up to 2 s.
    pub fn new() -> AmqpOptions {
        AmqpOptions::default()
    }

    /// The longest any one call may take, reconnections included (a `send` that finds the
    /// broker gone keeps trying this long, then fails with
    /// [`Timeout`](ErrorKind::Timeout)). `recv` without a timeout waits for a message
    /// forever, but each connection attempt is bounded by this.
    pub fn with_timeout(mut self, timeout: Duration) -> AmqpOptions {
        self.timeout = timeout;
        self
    }

    /// How many unacknowledged deliveries the broker may push to one consumer (AMQP
    /// `basic.qos`): the only bound on the consumer's buffer. At least 1.
    pub fn with_prefetch(mut self, prefetch: u16) -> AmqpOptions {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The longest pause between reconnection attempts (the pause doubles from 50 ms).
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> AmqpOptions {
        self.max_backoff = max_backoff;
        self
    }

    /// `amqps://` only: also trusts the certificate authorities in `ca_pem` (PEM, one or
    /// more), besides the platform's root certificates, to verify the broker. The broker's
    /// certificate must name the URL's host.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_ca_pem(mut self, ca_pem: impl Into<String>) -> AmqpOptions {
        self.tls.ca_pem = Some(ca_pem.into());
        self
    }

    /// `amqps://` only: presents this client certificate chain (PEM, leaf first) and private
    /// key (PEM, PKCS#8) to a broker that verifies its peers (`ssl_options.verify =
    /// verify_peer`). The key never appears in `Debug` output or errors.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> AmqpOptions {
        self.tls.client_chain_pem = Some(chain_pem.into());
        self.tls.client_key_pem = Some(key_pem.into());
        self
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The prefetch count.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }
}

/// How a queue's handles run their futures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Blocking calls, each a `block_on` on the queue's own runtime.
    Blocking,
    /// Async calls, awaited on the caller's runtime.
    Async,
}

/// What a queue handle shares with its producers and consumers.
pub(crate) struct Shared {
    /// Where lapin runs its connections: the queue's own runtime (blocking API), or the
    /// runtime the async queue was opened on.
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) mode: Mode,
    /// Owned only to be shut down without blocking when the last handle goes (which may
    /// happen inside an async task, where dropping a runtime would panic).
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) options: AmqpOptions,
    pub(crate) max_message_len: u32,
    pub(crate) bounded: bool,
    /// Set on the handle of a dead-letter queue: its consumers hand out
    /// [`DeadLetter`](crate::DeadLetter)s made from the broker's `x-death` headers.
    pub(crate) is_dead_letter: bool,
    /// A dead-letter queue's handle keeps its main queue's runtime alive.
    _parent: Option<Arc<Shared>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    pub(crate) fn dead_name(&self) -> String {
        dead_letter_name(&self.name)
    }

    /// Runs `future` to completion on the queue's own runtime, for the blocking call
    /// `what`: an error, not a panic, inside a tokio runtime or on an async queue.
    pub(crate) fn block_on<R>(
        &self,
        what: &str,
        future: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        outside_runtime(what)?;
        if self.mode != Mode::Blocking {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the blocking {what} was called on a handle of an async queue; await its async methods"
                ),
            ));
        }
        self.handle.block_on(future)
    }

    /// Closes `link` when its handle is dropped: in the background on a runtime when
    /// blocking is not allowed (inside any tokio runtime, or for an async queue), else
    /// waiting for the close handshake on the queue's own runtime.
    pub(crate) fn close_on_drop(&self, close: impl Future<Output = ()> + Send + 'static) {
        if self.mode == Mode::Async || tokio::runtime::Handle::try_current().is_ok() {
            // Spawning onto a runtime that is shutting down drops the task: the connection
            // then closes without the handshake (the broker requeues what was unacked).
            drop(self.handle.spawn(close));
        } else {
            self.handle.block_on(close);
        }
    }
}

/// [`InvalidInput`](ErrorKind::InvalidInput) if the blocking call `what` is made where a
/// tokio runtime is current: blocking on the queue's runtime there would panic (and would
/// stall the caller's runtime). This includes `spawn_blocking` threads, which tokio cannot
/// tell apart here.
pub(crate) fn outside_runtime(what: &str) -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the blocking queue api ({what}) was called inside a tokio runtime; use the async api there (Queue::create_async, Queue::open_async)"
            ),
        ));
    }
    Ok(())
}

/// A durable queue on a RabbitMQ broker: a quorum queue (replicated, fsynced before it
/// confirms) with a dead-letter queue beside it. Cheap to clone; open producers and
/// consumers from it, in any process on any machine that reaches the broker.
///
/// Its blocking calls fail with [`InvalidInput`](ErrorKind::InvalidInput) inside a tokio
/// runtime; an async queue awaits the same async fns on the caller's runtime.
#[derive(Clone)]
pub(crate) struct AmqpQueue {
    shared: Arc<Shared>,
    config: QueueConfig,
}

/// The name of the dead-letter queue of queue `name`.
pub(crate) fn dead_letter_name(name: &str) -> String {
    format!("{name}.dead")
}

impl AmqpQueue {
    /// Declares a new durable quorum queue `name` on the broker at `url`
    /// (`amqp://user:password@host:port/vhost`) with `config`, and its dead-letter queue
    /// `name.dead`, connecting with `options`.
    pub(crate) fn create_with(
        url: &str,
        name: &str,
        config: &QueueConfig,
        options: &AmqpOptions,
    ) -> Result<AmqpQueue> {
        outside_runtime("create")?;
        config.validate()?;
        let queue = AmqpQueue::new(url, name, config.clone(), options, Mode::Blocking)?;
        queue.shared.block_on("create", queue.declare_new())?;
        Ok(queue)
    }

    /// [`create_with`](AmqpQueue::create_with) for an async queue, on the caller's runtime.
    pub(crate) async fn create_async(
        url: &str,
        name: &str,
        config: &QueueConfig,
        options: &AmqpOptions,
    ) -> Result<AmqpQueue> {
        config.validate()?;
        let queue = AmqpQueue::new(url, name, config.clone(), options, Mode::Async)?;
        queue.declare_new().await?;
        Ok(queue)
    }

    /// Declares the queue and its dead-letter queue: `AlreadyExists` if the queue is there.
    async fn declare_new(&self) -> Result<()> {
        let shared = &*self.shared;
        let name = shared.name.as_str();
        let dead = shared.dead_name();
        let arguments = queue_arguments(&self.config, &dead)?;
        let deadline = deadline_after(shared.options.timeout);
        let mut link = Link::connect_once(shared, deadline, "create").await?;
        match link.declare_passive(name, deadline).await {
            Ok(_) => {
                link.close().await;
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("amqp queue {name} already exists"),
                ));
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        // A failed passive declare closes the channel: declare on a new one.
        let mut link = Link::connect_once(shared, deadline, "create").await?;
        link.declare(&dead, dead_arguments(), deadline).await?;
        link.declare(name, arguments, deadline).await?;
        link.close().await;
        Ok(())
    }

    /// Opens the existing queue `name` on the broker at `url`, connecting with `options`.
    pub(crate) fn open_with(url: &str, name: &str, options: &AmqpOptions) -> Result<AmqpQueue> {
        outside_runtime("open")?;
        let queue = AmqpQueue::new(url, name, opened_config(), options, Mode::Blocking)?;
        queue.stats()?;
        Ok(queue)
    }

    /// [`open_with`](AmqpQueue::open_with) for an async queue, on the caller's runtime.
    pub(crate) async fn open_async(
        url: &str,
        name: &str,
        options: &AmqpOptions,
    ) -> Result<AmqpQueue> {
        let queue = AmqpQueue::new(url, name, opened_config(), options, Mode::Async)?;
        queue.stats_async().await?;
        Ok(queue)
    }

    fn new(
        url: &str,
        name: &str,
        config: QueueConfig,
        options: &AmqpOptions,
        mode: Mode,
    ) -> Result<AmqpQueue> {
        if name.is_empty() || name.len() > 200 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("amqp queue name of {} bytes (1 to 200 allowed)", name.len()),
            ));
        }
        link::check_scheme(url)?;
        let (handle, runtime) = match mode {
            Mode::Blocking => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ipc-queue-amqp")
                    .enable_all()
                    .build()
                    .map_err(|err| Error::io("start the amqp runtime", err))?;
                (runtime.handle().clone(), Some(runtime))
            }
            Mode::Async => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        "the async queue api on rabbitmq needs a tokio runtime (with io and time enabled)",
                    )
                })?;
                (handle, None)
            }
        };
        let bounded = config.max_messages != 0 || config.max_bytes != 0;
        Ok(AmqpQueue {
            shared: Arc::new(Shared {
                handle,
                mode,
                runtime,
                url: url.to_owned(),
                name: name.to_owned(),
                options: options.clone(),
                max_message_len: config.max_message_len,
                bounded,
                is_dead_letter: false,
                _parent: None,
            }),
            config,
        })
    }

    /// The configuration given to [`create_with`](AmqpQueue::create_with) (after
    /// [`open_with`](AmqpQueue::open_with): the defaults with the largest message length, as AMQP
    /// cannot read a queue's arguments back).
    pub(crate) fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Opens a producer of `T` messages (its own connection, with publisher confirms).
    pub(crate) fn producer<T: Serialize + ?Sized>(
        &self,
        options: ProducerOptions,
    ) -> Result<AmqpProducer<T>> {
        self.shared.block_on(
            "producer",
            AmqpProducer::open(Arc::clone(&self.shared), options),
        )
    }

    /// [`producer`](AmqpQueue::producer), awaited.
    pub(crate) async fn producer_async<T: Serialize + ?Sized>(
        &self,
        options: ProducerOptions,
    ) -> Result<AmqpProducer<T>> {
        AmqpProducer::open(Arc::clone(&self.shared), options).await
    }

    /// Opens a consumer of `T` messages, competing with the queue's other consumers.
    pub(crate) fn consumer<T: DeserializeOwned>(&self) -> Result<AmqpConsumer<T>> {
        self.shared.block_on(
            "consumer",
            AmqpConsumer::open(Arc::clone(&self.shared), self.shared.name.clone()),
        )
    }

    /// [`consumer`](AmqpQueue::consumer), awaited.
    pub(crate) async fn consumer_async<T: DeserializeOwned>(&self) -> Result<AmqpConsumer<T>> {
        AmqpConsumer::open(Arc::clone(&self.shared), self.shared.name.clone()).await
    }

    /// The dead-letter queue `NAME.dead`, whose consumers hand out
    /// [`DeadLetter`](crate::DeadLetter)s.
    pub(crate) fn dead_letters(&self) -> Result<AmqpQueue> {
        if self.shared.is_dead_letter {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a dead-letter queue has no dead-letter queue of its own",
            ));
        }
        let shared = &self.shared;
        Ok(AmqpQueue {
            shared: Arc::new(Shared {
                handle: shared.handle.clone(),
                mode: shared.mode,
                runtime: None,
                url: shared.url.clone(),
                name: shared.dead_name(),
                options: shared.options.clone(),
                max_message_len: crate::config::MAX_MESSAGE_LEN_LIMIT,
                bounded: false,
                is_dead_letter: true,
                _parent: Some(Arc::clone(shared)),
            }),
            config: QueueConfig::new()
                .with_max_message_len(crate::config::MAX_MESSAGE_LEN_LIMIT)
                .with_max_deliveries(0),
        })
    }

    /// Counts from the broker: ready messages, consumers, dead letters.
    pub(crate) fn stats(&self) -> Result<Stats> {
        self.shared.block_on("stats", self.stats_async())
    }

    /// [`stats`](AmqpQueue::stats), awaited.
    pub(crate) async fn stats_async(&self) -> Result<Stats> {
        let shared = &*self.shared;
        let deadline = deadline_after(shared.options.timeout);
        let mut link = Link::connect_once(shared, deadline, "stats").await?;
        let main = link.declare_passive(&shared.name, deadline).await?;
        let dead = if shared.is_dead_letter {
            0
        } else {
            match link.declare_passive(&shared.dead_name(), deadline).await {
                Ok(dead) => u64::from(dead.message_count()),
                Err(err) if err.kind() == ErrorKind::NotFound => 0,
                Err(err) => return Err(err),
            }
        };
        link.close().await;
        Ok(Stats {
            depth: u64::from(main.message_count()),
            dead_letters: dead,
            unacked: None,
            delayed: None,
            oldest_age: None,
            consumers: Some(u64::from(main.consumer_count())),
            storage: None,
        })
    }

    /// Deletes the queue and its dead-letter queue from the broker, with their messages.
    pub(crate) fn delete(&self) -> Result<()> {
        self.shared.block_on("delete", self.delete_async())
    }

    /// [`delete`](AmqpQueue::delete), awaited.
    pub(crate) async fn delete_async(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut names = vec![shared.name.clone()];
        if !shared.is_dead_letter {
            names.push(shared.dead_name());
        }
        let deadline = deadline_after(shared.options.timeout);
        let link = Link::connect_once(shared, deadline, "delete").await?;
        for name in names {
            link::with_deadline(
                deadline,
                "delete queue",
                link.channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
            )
            .await?;
        }
        link.close().await;
        Ok(())
    }
}

/// The configuration of an opened queue: AMQP cannot read the queue's configuration back,
/// so accept messages up to the largest length any queue may be created with (the broker
/// bounds them too).
fn opened_config() -> QueueConfig {
    QueueConfig::new().with_max_message_len(crate::config::MAX_MESSAGE_LEN_LIMIT)
}

impl std::fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("name", &self.shared.name)
            .finish()
    }
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn int(value: u64, what: &str) -> Result<AMQPValue> {
    i64::try_from(value)
        .map(AMQPValue::LongLongInt)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("{what} {value} too large")))
}

/// The arguments of the main queue: quorum, at-least-once dead-lettering to `name.dead`
/// through the default exchange, and the configured bounds.
fn queue_arguments(config: &QueueConfig, dead: &str) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    table.insert(ShortString::from("x-queue-type"), long("quorum"));
    table.insert(ShortString::from("x-dead-letter-exchange"), long(""));
    table.insert(ShortString::from("x-dead-letter-routing-key"), long(dead));
    // At-least-once dead-lettering needs reject-publish overflow; it also gives `Full`.
    table.insert(
        ShortString::from("x-dead-letter-strategy"),
        long("at-least-once"),
    );
    table.insert(ShortString::from("x-overflow"), long("reject-publish"));
    if config.max_deliveries != 0 {
        // RabbitMQ dead-letters once the count of returns exceeds the limit, so a limit of
        // N - 1 allows N deliveries, as the embedded backend does.
        table.insert(
            ShortString::from("x-delivery-limit"),
            int(u64::from(config.max_deliveries - 1), "delivery limit")?,
        );
    }
    if config.ttl_ms != 0 {
        table.insert(
            ShortString::from("x-message-ttl"),
            int(config.ttl_ms, "time-to-live")?,
        );
    }
    if config.max_messages != 0 {
        table.insert(
            ShortString::from("x-max-length"),
            int(config.max_messages, "max messages")?,
        );
    }
    if config.max_bytes != 0 {
        table.insert(
            ShortString::from("x-max-length-bytes"),
            int(config.max_bytes, "max bytes")?,
        );
    }
    Ok(table)
}

fn dead_arguments() -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(ShortString::from("x-queue-type"), long("quorum"));
    table
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn int_arg(table: &FieldTable, key: &str) -> Option<i64> {
        match table.inner().get(key)? {
            AMQPValue::LongLongInt(value) => Some(*value),
            _ => None,
        }
    }

    #[test]
    fn queue_arguments_follow_the_config() -> Result<()> {
        let plain = queue_arguments(&QueueConfig::new().with_max_deliveries(0), "q.dead")?;
        assert!(plain.contains_key("x-queue-type"));
        assert!(!plain.contains_key("x-delivery-limit"));
        assert!(!plain.contains_key("x-message-ttl"));
        assert!(!plain.contains_key("x-max-length"));
        let config = QueueConfig::new()
            .with_max_deliveries(3)
            .with_ttl(Some(Duration::from_millis(1500)))
            .with_max_messages(10)
            .with_max_bytes(4096);
        let table = queue_arguments(&config, "q.dead")?;
        assert_eq!(int_arg(&table, "x-delivery-limit"), Some(2));
        assert_eq!(int_arg(&table, "x-message-ttl"), Some(1500));
        assert_eq!(int_arg(&table, "x-max-length"), Some(10));
        assert_eq!(int_arg(&table, "x-max-length-bytes"), Some(4096));
        let err =
            queue_arguments(&QueueConfig::new().with_max_messages(u64::MAX), "q.dead").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        Ok(())
    }

    #[test]
    fn names_are_checked_and_passwords_stay_out_of_messages() {
        let options = AmqpOptions::new();
        let err =
            AmqpQueue::create_with("amqp://127.0.0.1:1/%2f", "", &QueueConfig::new(), &options)
                .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let long = "x".repeat(201);
        let err = AmqpQueue::open_with("amqp://127.0.0.1:1/%2f", &long, &options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
