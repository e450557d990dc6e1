//! The tokio client: requests with correlation ids, subscriptions, and reconnection.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_core::{
    AsyncReceiver, AsyncSender, Close, CloseCode, Error, ErrorKind, FrameDecoder, FrameKind,
    Limits, Result,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::async_conn::{Handshaken, handshake};
use crate::config::{Beat, ConnectionConfig, FEATURE_PATTERNS, Liveness};
use crate::stream::{AsyncReadHalf, AsyncStream, AsyncWriteHalf};
use crate::wire;

/// Jittered exponential back-off between reconnection attempts.
///
/// Attempt `n` (from 0) waits a random time between half and all of
/// `min(initial * 2^n, max)`, so that many clients of a restarted server do not all knock
/// at once.
///
/// ```
/// use std::time::Duration;
/// use ipc_socket::Backoff;
///
/// let quick = Backoff::new(Duration::from_millis(5), Duration::from_millis(50)).with_max_attempts(3);
/// assert_eq!(quick.max_attempts, Some(3));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 50 ms doubling up to 2 s, forever.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// Delays from `initial`, doubling up to `max`, without a limit on attempts.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            max_attempts: None,
        }
    }

    /// Gives up after `attempts` failed attempts in a row.
    pub fn with_max_attempts(mut self, attempts: u32) -> Backoff {
        self.max_attempts = Some(attempts);
        self
    }

    /// The jittered delay before attempt `attempt` (from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Settings of a [`Client`].
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Debug)]
pub struct ClientConfig {
    address: Address,
    connection: ConnectionConfig,
    reconnect: Option<Backoff>,
    inbox_capacity: usize,
    wait_for_server: bool,
}

impl ClientConfig {
    /// Connects to `address`; reconnects with the default [`Backoff`].
    pub fn new(address: Address, connection: ConnectionConfig) -> ClientConfig {
        ClientConfig {
            address,
            connection,
            reconnect: Some(Backoff::default()),
            inbox_capacity: 1024,
            wait_for_server: false,
        }
    }

    /// Reconnection timing.
    pub fn reconnect(mut self, backoff: Backoff) -> ClientConfig {
        self.reconnect = Some(backoff);
        self
    }

    /// Never reconnect: a lost connection ends the client.
    pub fn no_reconnect(mut self) -> ClientConfig {
        self.reconnect = None;
        self
    }

    /// Makes [`Client::connect`] wait for a server that is not up yet, trying again with the
    /// reconnection back-off (until its `max_attempts`), instead of failing at once with
    /// [`ErrorKind::NotFound`].
    pub fn wait_for_server(mut self) -> ClientConfig {
        self.wait_for_server = true;
        self
    }

    /// How many received messages may wait for [`Client::recv`] before the client stops
    /// reading from the socket (and the server's queue policy takes over).
    pub fn inbox_capacity(mut self, messages: usize) -> ClientConfig {
        self.inbox_capacity = messages.max(1);
        self
    }
}

/// What a [`Client`] receives.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming<T> {
    /// A data message from the server.
    Message(T),
    /// A message published on a topic this client subscribed to.
    Publication {
        /// The topic it was published on.
        topic: String,
        /// The message.
        message: T,
    },
    /// The connection was lost; the client is reconnecting (requests in flight failed).
    Disconnected(Error),
    /// The client is connected again and has resubscribed to its topics (their acks may
    /// still be on the way).
    Reconnected,
}

struct ClientWriter {
    half: AsyncWriteHalf,
    out: Vec<u8>,
    out_pos: usize,
    send_limits: Limits,
}

impl ClientWriter {
    /// Writes the buffer out. Cancel-safe: progress is recorded after every write, so a
    /// dropped future never makes a frame go out twice or half.
    async fn write_out(&mut self) -> Result<()> {
        while self.out_pos < self.out.len() {
            match self.half.write(&self.out[self.out_pos..]).await {
                Ok(0) => return Err(Error::new(ErrorKind::PeerClosed, "server stopped reading")),
                Ok(n) => self.out_pos += n,
                Err(err) => return Err(Error::io("write to server", err)),
            }
        }
        // A TLS stream may hold records back until flushed (a no-op on plain sockets).
        self.half
            .flush()
            .await
            .map_err(|err| Error::io("write to server", err))?;
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

type Pending<T> = HashMap<u32, oneshot::Sender<Result<T>>>;

struct Shared<T> {
    writer: tokio::sync::Mutex<Option<ClientWriter>>,
    pending: Mutex<Pending<T>>,
    acks: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    topics: Mutex<Vec<String>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    connections: AtomicU64,
}

fn lock<U>(mutex: &Mutex<U>) -> std::sync::MutexGuard<'_, U> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Shared<T> {
    fn next_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn fail_pending(&self, err: &Error) {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (id, reply) in pending {
            let _ = reply.send(Err(Error::new(
                err.kind(),
                format!("request {id} lost with the connection: {err}"),
            )));
        }
        lock(&self.acks).clear();
    }
}

/// A tokio client of a [`Server`](crate::Server): data messages, requests with correlation
/// ids and deadlines (many in flight), publish/subscribe, and reconnection.
///
/// All methods take `&self`: share a client between tasks with an `Arc`. When the
/// connection is lost, requests in flight fail, [`recv`](Client::recv) reports
/// [`Incoming::Disconnected`], and (unless [`ClientConfig::no_reconnect`]) the client
/// reconnects with jittered exponential back-off, resubscribes to its topics, and reports
/// [`Incoming::Reconnected`]. Sends while disconnected fail with [`ErrorKind::PeerDied`].
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct Client<T> {
    shared: Arc<Shared<T>>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Incoming<T>>>,
    supervisor: JoinHandle<()>,
    request_limits: PhantomData<T>,
}

impl<T> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "connections",
                &self.shared.connections.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Client<T> {
    /// Connects (one attempt, or until a server is up with
    /// [`ClientConfig::wait_for_server`]), performs the handshake, and starts the client's
    /// reader task; must run inside a tokio runtime.
    pub async fn connect(mut config: ClientConfig) -> Result<Client<T>> {
        config.connection = config.connection.with_patterns();
        let first = match (config.wait_for_server, config.reconnect) {
            (true, Some(backoff)) => {
                // Only "nobody listens yet" is worth waiting for.
                let retry = |err: &Error, _| err.kind() == ErrorKind::NotFound;
                match connect_with_backoff(&config, backoff, false, retry, || false).await {
                    Ok(first) => first,
                    Err(Stopped::Fatal(err)) => return Err(err),
                    Err(Stopped::GaveUp(err, attempt)) => {
                        return Err(err.context(format!(
                            "gave up waiting for the server after {attempt} attempts"
                        )));
                    }
                    // Nothing closes a client being built.
                    Err(Stopped::Closed) => {
                        return Err(Error::new(ErrorKind::Closed, "client closed"));
                    }
                }
            }
            _ => connect_once(&config).await?,
        };
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            topics: Mutex::new(Vec::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            connections: AtomicU64::new(0),
        });
        let (inbox_tx, inbox) = mpsc::channel(config.inbox_capacity);
        let (ready_tx, ready) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(
            config,
            first,
            Arc::clone(&shared),
            inbox_tx,
            ready_tx,
        ));
        let _ = ready.await;
        Ok(Client {
            shared,
            inbox: tokio::sync::Mutex::new(inbox),
            supervisor,
            request_limits: PhantomData,
        })
    }

    /// True while a connection is up.
    pub async fn is_connected(&self) -> bool {
        self.shared.writer.lock().await.is_some()
    }

    /// How many connections were established so far (1 + reconnections).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    async fn send_frame(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, &Limits) -> Result<usize>,
    ) -> Result<()> {
        let mut guard = self.shared.writer.lock().await;
        let Some(writer) = guard.as_mut() else {
            return Err(Error::new(
                ErrorKind::PeerDied,
                "not connected to the server (reconnecting)",
            ));
        };
        let limits = writer.send_limits;
        encode(&mut writer.out, &limits)?;
        if let Err(err) = writer.write_out().await {
            // The reader notices the broken stream and reconnects.
            let _ = writer.half.shutdown().await;
            return Err(err);
        }
        Ok(())
    }

    /// Sends a data message (written at once).
    pub async fn send(&self, message: &T) -> Result<()> {
        self.send_frame(|out, limits| {
            ipc_core::encode_frame(out, FrameKind::Data, 0, message, limits)
        })
        .await
    }

    /// Publishes `message` on `topic` through the server to every subscriber of a prefix of
    /// `topic` (this client too, if subscribed).
    pub async fn publish(&self, topic: &str, message: &T) -> Result<()> {
        wire::check_topic_arg(topic)?;
        self.send_frame(|out, limits| wire::encode_publish(out, topic, message, limits))
            .await
    }

    /// Sends a request and waits at most `timeout` for its response. Many requests may be
    /// in flight at once (from concurrent futures); responses are matched by correlation id.
    pub async fn request(&self, message: &T, timeout: Duration) -> Result<T> {
        let id = self.shared.next_id();
        let (reply_tx, reply) = oneshot::channel();
        lock(&self.shared.pending).insert(id, reply_tx);
        let sent = self
            .send_frame(|out, limits| {
                ipc_core::encode_frame(out, FrameKind::Request, id, message, limits)
            })
            .await;
        if let Err(err) = sent {
            lock(&self.shared.pending).remove(&id);
            return Err(err);
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::PeerDied,
                format!("request {id} lost with the connection"),
            )),
            Err(_) => {
                lock(&self.shared.pending).remove(&id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no response to request {id} within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Subscribes to every topic starting with `prefix` and waits (at most 5 s) for the
    /// server's acknowledgement: from then on, everything published on a matching topic
    /// arrives. The subscription is renewed after every reconnection.
    pub async fn subscribe(&self, prefix: &str) -> Result<()> {
        wire::check_topic_arg(prefix)?;
        {
            let mut topics = lock(&self.shared.topics);
            if !topics.iter().any(|t| t == prefix) {
                topics.push(prefix.to_owned());
            }
        }
        let id = self.shared.next_id();
        let (ack_tx, ack) = oneshot::channel();
        lock(&self.shared.acks).insert(id, ack_tx);
        let sent = self
            .send_frame(|out, limits| {
                ipc_core::encode_raw_frame(out, FrameKind::Subscribe, id, prefix.as_bytes(), limits)
            })
            .await;
        if let Err(err) = sent {
            lock(&self.shared.acks).remove(&id);
            return Err(err);
        }
        match tokio::time::timeout(Duration::from_secs(5), ack).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::PeerDied,
                format!("subscription to `{prefix}` lost with the connection"),
            )),
            Err(_) => {
                lock(&self.shared.acks).remove(&id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no acknowledgement of subscription to `{prefix}` within 5000 ms"),
                ))
            }
        }
    }

    /// Cancels a subscription.
    pub async fn unsubscribe(&self, prefix: &str) -> Result<()> {
        lock(&self.shared.topics).retain(|t| t != prefix);
        self.send_frame(|out, limits| {
            ipc_core::encode_raw_frame(out, FrameKind::Unsubscribe, 0, prefix.as_bytes(), limits)
        })
        .await
    }

    /// The next message or connection event. [`ErrorKind::Closed`] once the client stopped
    /// for good (closed, or the connection was lost without reconnection).
    pub async fn recv(&self) -> Result<Incoming<T>> {
        match self.inbox.lock().await.recv().await {
            Some(incoming) => Ok(incoming),
            None => Err(Error::new(ErrorKind::Closed, "client stopped")),
        }
    }

    /// Sends a normal close frame and stops the client.
    pub async fn close(self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let outcome = self
            .send_frame(|out, _| Close::new(CloseCode::NORMAL, "").encode_frame(out))
            .await;
        if let Some(writer) = self.shared.writer.lock().await.as_mut() {
            let _ = writer.half.shutdown().await;
        }
        self.supervisor.abort();
        outcome
    }
}

impl<T> Drop for Client<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.supervisor.abort();
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> AsyncSender for Client<T> {
    type Message = T;

    /// Sends a data message; the client writes at once, so `flush` has nothing to do.
    async fn send(&mut self, message: &T) -> Result<()> {
        Client::send(self, message).await
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> AsyncReceiver for Client<T> {
    type Message = T;

    /// The next data message or publication; connection events are skipped.
    async fn recv(&mut self) -> Result<T> {
        loop {
            match Client::recv(self).await? {
                Incoming::Message(message) | Incoming::Publication { message, .. } => {
                    return Ok(message);
                }
                Incoming::Disconnected(_) | Incoming::Reconnected => {}
            }
        }
    }
}

/// Why [`connect_with_backoff`] ended without a connection.
enum Stopped {
    /// An attempt failed with an error not worth retrying.
    Fatal(Error),
    /// The last allowed attempt failed: its error and the number of attempts.
    GaveUp(Error, u32),
    /// The client was closed.
    Closed,
}

/// The client's one back-off loop (waiting for a server at start-up, reconnecting after a
/// loss): connection attempts paced by `backoff` until one succeeds.
///
/// Pause `n` (from 0) lasts `backoff.delay(n)`; with `pause_first` one comes before the first
/// attempt too, otherwise only between attempts. `retry` sees each failure with the number
/// of failed attempts so far and says whether to go on; `closed` is asked before each
/// attempt. Gives up after `backoff.max_attempts` failed attempts.
async fn connect_with_backoff(
    config: &ClientConfig,
    backoff: Backoff,
    pause_first: bool,
    retry: impl Fn(&Error, u32) -> bool,
    closed: impl Fn() -> bool,
) -> std::result::Result<Handshaken, Stopped> {
    let mut attempt = 0u32;
    let mut pauses = 0u32;
    loop {
        if closed() {
            return Err(Stopped::Closed);
        }
        if pause_first || attempt > 0 {
            tokio::time::sleep(backoff.delay(pauses)).await;
            pauses = pauses.saturating_add(1);
        }
        match connect_once(config).await {
            Ok(shaken) => return Ok(shaken),
            Err(err) => {
                attempt = attempt.saturating_add(1);
                if !retry(&err, attempt) {
                    return Err(Stopped::Fatal(err));
                }
                if backoff.max_attempts.is_some_and(|max| attempt >= max) {
                    return Err(Stopped::GaveUp(err, attempt));
                }
            }
        }
    }
}

async fn connect_once(config: &ClientConfig) -> Result<Handshaken> {
    let deadline = std::time::Instant::now() + config.connection.handshake_timeout();
    let stream = AsyncStream::connect(&config.address, &config.connection, deadline).await?;
    let mut shaken = handshake(stream, &config.connection, deadline)
        .await
        .map_err(|err| err.context(format_args!("handshake with {}", config.address)))?;
    if shaken.peer.features() & FEATURE_PATTERNS == 0 {
        let err = Error::new(
            ErrorKind::Protocol,
            format!(
                "{} does not announce the messaging patterns (hello feature bit 0); is it an ipc_socket::Server?",
                config.address
            ),
        );
        let mut close = Vec::new();
        let _ = Close::new(CloseCode::PROTOCOL_ERROR, err.to_string()).encode_frame(&mut close);
        let _ = shaken.writer.write_all(&close).await;
        let _ = shaken.writer.flush().await;
        return Err(err);
    }
    Ok(shaken)
}

async fn supervise<T: Serialize + DeserializeOwned + Send + Sync + 'static>(
    config: ClientConfig,
    first: Handshaken,
    shared: Arc<Shared<T>>,
    inbox: mpsc::Sender<Incoming<T>>,
    ready: oneshot::Sender<()>,
) {
    let mut next = Some(first);
    let mut ready = Some(ready);
    loop {
        let shaken = match next.take() {
            Some(shaken) => shaken,
            None => {
                let Some(backoff) = config.reconnect else {
                    return;
                };
                let retry = |err: &Error, attempt| {
                    tracing::debug!("reconnect attempt {attempt} failed: {err}");
                    true
                };
                let closed = || shared.closed.load(Ordering::Acquire);
                match connect_with_backoff(&config, backoff, true, retry, closed).await {
                    Ok(shaken) => shaken,
                    Err(Stopped::GaveUp(err, attempt)) => {
                        let err =
                            err.context(format!("gave up reconnecting after {attempt} attempts"));
                        let _ = inbox.send(Incoming::Disconnected(err)).await;
                        return;
                    }
                    Err(Stopped::Fatal(_) | Stopped::Closed) => return,
                }
            }
        };
        let Handshaken {
            reader,
            writer,
            decoder,
            send_limits,
            ..
        } = shaken;
        let mut client_writer = ClientWriter {
            half: writer,
            out: Vec::with_capacity(4096),
            out_pos: 0,
            send_limits,
        };
        // Resubscribe before anyone else may send on the new connection.
        let topics = lock(&shared.topics).clone();
        for topic in &topics {
            let id = shared.next_id();
            let _ = ipc_core::encode_raw_frame(
                &mut client_writer.out,
                FrameKind::Subscribe,
                id,
                topic.as_bytes(),
                &send_limits,
            );
        }
        let resubscribed = client_writer.write_out().await;
        *shared.writer.lock().await = Some(client_writer);
        let generation = shared.connections.fetch_add(1, Ordering::AcqRel);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        if generation > 0 && resubscribed.is_ok() {
            let _ = inbox.send(Incoming::Reconnected).await;
        }
        let err = match resubscribed {
            Err(err) => err,
            Ok(()) => {
                read_loop(
                    reader,
                    decoder,
                    Liveness::new(config.connection.heartbeat()),
                    &shared,
                    &inbox,
                )
                .await
            }
        };
        *shared.writer.lock().await = None;
        shared.fail_pending(&err);
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = inbox.send(Incoming::Disconnected(err)).await;
    }
}

async fn read_loop<T: DeserializeOwned + Send>(
    mut reader: AsyncReadHalf,
    mut decoder: FrameDecoder,
    mut liveness: Liveness,
    shared: &Shared<T>,
    inbox: &mpsc::Sender<Incoming<T>>,
) -> Error {
    match read_frames(&mut reader, &mut decoder, &mut liveness, shared, inbox).await {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

enum Step<T> {
    Deliver(Incoming<T>),
    Reply(u32, Result<T>),
    Pong(u32),
    Nothing,
}

async fn read_frames<T: DeserializeOwned + Send>(
    reader: &mut AsyncReadHalf,
    decoder: &mut FrameDecoder,
    liveness: &mut Liveness,
    shared: &Shared<T>,
    inbox: &mpsc::Sender<Incoming<T>>,
) -> Result<std::convert::Infallible> {
    loop {
        loop {
            let step = match decoder.next_frame()? {
                None => break,
                Some(frame) => match frame.kind() {
                    FrameKind::Data => Step::Deliver(Incoming::Message(frame.decode::<T>()?)),
                    FrameKind::Publish => {
                        let (topic, message) = wire::parse_publish(frame.payload())?;
                        Step::Deliver(Incoming::Publication {
                            topic: topic.to_owned(),
                            message: ipc_core::decode::<T>(message)?,
                        })
                    }
                    FrameKind::Response => Step::Reply(frame.id(), frame.decode::<T>()),
                    FrameKind::SubscribeAck => {
                        if let Some(ack) = lock(&shared.acks).remove(&frame.id()) {
                            let _ = ack.send(());
                        }
                        Step::Nothing
                    }
                    FrameKind::Ping => Step::Pong(frame.id()),
                    FrameKind::Pong => Step::Nothing,
                    FrameKind::Close => {
                        return Err(Close::decode(frame.payload())?.into_error());
                    }
                    kind => {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            format!("unexpected {kind:?} frame from the server"),
                        ));
                    }
                },
            };
            match step {
                Step::Deliver(incoming) => {
                    if inbox.send(incoming).await.is_err() {
                        return Err(Error::new(ErrorKind::Closed, "client dropped"));
                    }
                }
                Step::Reply(id, result) => {
                    // A response nobody waits for any more (timed out) is dropped.
                    if let Some(reply) = lock(&shared.pending).remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Step::Pong(id) => {
                    if let Some(writer) = shared.writer.lock().await.as_mut() {
                        let limits = writer.send_limits;
                        ipc_core::encode_raw_frame(
                            &mut writer.out,
                            FrameKind::Pong,
                            id,
                            &[],
                            &limits,
                        )?;
                        writer.write_out().await?;
                    }
                }
                Step::Nothing => {}
            }
        }
        let wait = match liveness.check(Instant::now()) {
            Beat::Wait(wait) => wait,
            Beat::Ping(nonce, wait) => {
                if let Some(writer) = shared.writer.lock().await.as_mut() {
                    let limits = writer.send_limits;
                    ipc_core::encode_raw_frame(
                        &mut writer.out,
                        FrameKind::Ping,
                        nonce,
                        &[],
                        &limits,
                    )?;
                    writer.write_out().await?;
                }
                wait
            }
        };
        match liveness.within(wait, reader.read(decoder.read_buf())).await {
            None => {
                if let Err(err) = liveness.expired(Instant::now()) {
                    say_heartbeat_timeout(shared, &err).await;
                    return Err(err);
                }
            }
            Some(Ok(0)) => {
                decoder
                    .finish()
                    .map_err(|err| err.context("server vanished"))?;
                return Err(Error::new(
                    ErrorKind::PeerDied,
                    "server closed the stream without a close frame",
                ));
            }
            Some(Ok(n)) => {
                decoder.commit(n);
                liveness.heard();
            }
            Some(Err(err)) => return Err(crate::stream::stream_error("read from server", err)),
        }
    }
}

/// Tells the server why the client gives up on it (close code 8, heartbeat timeout), if the
/// writer is free and the close goes out promptly; the connection is dropped either way.
async fn say_heartbeat_timeout<T>(shared: &Shared<T>, err: &Error) {
    let Ok(mut guard) = shared.writer.try_lock() else {
        return;
    };
    let Some(writer) = guard.as_mut() else {
        return;
    };
    if Close::new(CloseCode::HEARTBEAT_TIMEOUT, err.to_string())
        .encode_frame(&mut writer.out)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_millis(100), writer.write_out()).await;
    }
}
