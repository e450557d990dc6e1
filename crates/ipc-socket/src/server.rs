//! The tokio server: many clients, bounded outbound queues, duplex messages, request/response
//! and publish/subscribe.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_core::wire::{MAX_BATCH_LEN, MAX_BATCHED_MESSAGE};
use ipc_core::{
    Close, CloseCode, Error, ErrorKind, FEATURE_BATCH, FrameDecoder, FrameKind, HEADER_LEN, Limits,
    Result,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::async_conn::handshake;
use crate::config::{Beat, ConnectionConfig, FEATURE_PATTERNS, Liveness, close_code_for};
use crate::stream::{AsyncListener, AsyncReadHalf, AsyncWriteHalf, PeerFacts};
#[cfg(feature = "tls")]
use crate::tls::PeerCertificate;
use crate::wire;

/// What a full outbound queue does when one more frame is sent to a client.
///
/// Every frame the server sends a client counts against its queue's bounds: data,
/// responses, publications, and the control frames its input causes (pongs, subscription
/// acks). The policy applies to that client alone.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// The sender waits until the client has read enough. Nothing is lost; a slow client
    /// slows down whoever sends to it: an event loop that awaits
    /// [`ServerHandle::respond`] or [`ServerHandle::send`] inline waits for every client
    /// until the slow one reads, so with `Wait` send from a task per client. A client that
    /// reads nothing at all for the heartbeat timeout while a sender waits for room is
    /// closed as too slow, which bounds the wait (without heartbeats, it is unbounded).
    Wait,
    /// The oldest queued frame is dropped to make room. The client misses messages (and
    /// may miss pongs or acks); nobody waits.
    DropOldest,
    /// The default: the client is disconnected with close code 5 (too slow) when its queue
    /// is full. Nobody waits, nothing is silently lost, and the client learns why.
    #[default]
    Disconnect,
}

/// Settings of a [`Server`].
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Debug)]
pub struct ServerConfig {
    address: Address,
    more_addresses: Vec<Address>,
    http: crate::ws::HttpSettings,
    connection: ConnectionConfig,
    max_connections: usize,
    queue_capacity: usize,
    queue_bytes: usize,
    policy: Policy,
    allow_uids: Option<Vec<u32>>,
    event_capacity: usize,
}

impl ServerConfig {
    /// Defaults: 1024 connections, at most 1024 queued frames and 16 MiB per client,
    /// [`Policy::Disconnect`].
    pub fn new(address: Address, connection: ConnectionConfig) -> ServerConfig {
        ServerConfig {
            address,
            more_addresses: Vec::new(),
            http: crate::ws::HttpSettings::default(),
            connection,
            max_connections: 1024,
            queue_capacity: 1024,
            queue_bytes: 16 * 1024 * 1024,
            policy: Policy::Disconnect,
            allow_uids: None,
            event_capacity: 1024,
        }
    }

    /// At most `max` clients at once; more are refused with close code "refused".
    pub fn max_connections(mut self, max: usize) -> ServerConfig {
        self.max_connections = max;
        self
    }

    /// At most `frames` frames waiting to be written to one client.
    pub fn queue_capacity(mut self, frames: usize) -> ServerConfig {
        self.queue_capacity = frames.max(1);
        self
    }

    /// At most `bytes` bytes of frames waiting to be written to one client (default 16 MiB;
    /// a single larger frame is still taken when the queue is empty).
    pub fn queue_bytes(mut self, bytes: usize) -> ServerConfig {
        self.queue_bytes = bytes.max(1);
        self
    }

    /// What a full queue does.
    pub fn policy(mut self, policy: Policy) -> ServerConfig {
        self.policy = policy;
        self
    }

    /// Accept local-socket clients only from these user ids (checked through peer
    /// credentials). TCP clients carry no credentials and are refused when this is set.
    pub fn allow_uids(mut self, uids: Vec<u32>) -> ServerConfig {
        self.allow_uids = Some(uids);
        self
    }

    /// Listens on `address` too: one server, one event stream, for clients of every
    /// transport (say `unix:` for local processes and `ws://` for browsers). Bound in the
    /// order given, after the first address; [`Server::addresses`] tells them all.
    pub fn also_listen(mut self, address: Address) -> ServerConfig {
        self.more_addresses.push(address);
        self
    }

    /// Browser pages from these origins (`http://host:port`, exact and ASCII
    /// case-insensitive; `*` for any) may open the `ws://` and `wss://` endpoints, besides
    /// the page's own origin (`https://` only on `wss://`; see the crate README,
    /// "WebSockets and browsers"). Clients that send no
    /// `Origin` header (non-browser programs) are always let through.
    pub fn with_allowed_origins<S: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> ServerConfig {
        self.http
            .allowed_origins
            .extend(origins.into_iter().map(Into::into));
        self
    }

    /// Serves `body` with `content_type` at `path` (say `/` or `/app.js`) over HTTP on
    /// every `ws://` address of this server, and over HTTPS on every `wss://` one: `GET` and `HEAD` only, one request per
    /// connection, nothing else on the port is served (404). A later file at the same path
    /// replaces the earlier one.
    pub fn with_http_file(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        body: impl Into<Arc<[u8]>>,
    ) -> ServerConfig {
        let path = path.into();
        self.http.files.retain(|file| file.path != path);
        self.http.files.push(crate::ws::HttpFile {
            path,
            content_type: content_type.into(),
            body: body.into(),
        });
        self
    }

    /// How many events may wait for [`Server::next_event`] before clients' readers wait.
    pub fn event_capacity(mut self, events: usize) -> ServerConfig {
        self.event_capacity = events.max(1);
        self
    }
}

/// A client connection's id, unique within one server.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happened on the server.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<T> {
    /// A client completed the handshake.
    Connected {
        /// Its id.
        conn: ConnId,
        /// Who it is, for logs: `127.0.0.1:5555`, `local uid 1000`, or for a mutual-TLS
        /// client `127.0.0.1:5555 (certificate `CN=alice` (DNS:alice.example))`.
        /// [`ServerHandle::peer`] gives the same as fields.
        peer: String,
    },
    /// A client sent a data message (a duplex stream).
    Message {
        /// Who sent it.
        conn: ConnId,
        /// The message.
        message: T,
    },
    /// A client sent a request; answer with [`ServerHandle::respond`] and the same `id`.
    Request {
        /// Who asked.
        conn: ConnId,
        /// The correlation id.
        id: u32,
        /// The request.
        message: T,
    },
    /// A client is gone: `error` is `None` after an orderly close, else why it was closed
    /// (bad input, heartbeat timeout, too slow, its process died).
    Disconnected {
        /// Its id.
        conn: ConnId,
        /// Why, unless it closed normally.
        error: Option<Error>,
    },
    /// A connection was refused before or during the handshake (limits, credentials,
    /// another protocol version or message type, garbage).
    Rejected {
        /// Who it was.
        peer: String,
        /// Why.
        error: Error,
    },
}

/// Who a connected client is, as far as its transport tells: [`ServerHandle::peer`].
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Peer {
    address: String,
    uid: Option<u32>,
    #[cfg(feature = "tls")]
    certificate: Option<PeerCertificate>,
}

impl Peer {
    fn new(address: String, facts: PeerFacts) -> Peer {
        Peer {
            address,
            uid: facts.uid,
            #[cfg(feature = "tls")]
            certificate: facts.certificate,
        }
    }

    /// Its address for logs (`127.0.0.1:5555`, `local uid 1000`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its user id, from the peer credentials of a local socket (Unix only).
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// The certificate a mutual-TLS client presented (verified against the server's client
    /// certificate authority): its subject and alternative names.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn certificate(&self) -> Option<&PeerCertificate> {
        self.certificate.as_ref()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)?;
        #[cfg(feature = "tls")]
        if let Some(certificate) = &self.certificate {
            write!(f, " ({certificate})")?;
        }
        Ok(())
    }
}

/// A frame ready to write, shared between every queue it is in.
type Wire = Arc<[u8]>;

#[derive(Debug, Default)]
struct OutState {
    frames: VecDeque<Wire>,
    /// Frames and bytes held for this client: those queued and those the writer is writing
    /// right now. Every frame counts (data, responses, publications, pongs, acks), so that
    /// a client can make the server hold no more than the queue's bounds, whatever it sends.
    n_held: usize,
    bytes_held: usize,
    closed: bool,
    dropped: u64,
    /// When the writer last finished a write to the client.
    last_write: Option<Instant>,
}

impl OutState {
    /// A frame of `len` bytes fits; an empty queue always takes one frame, however large.
    fn has_room(&self, limits: &QueueLimits, len: usize) -> bool {
        self.n_held == 0 || (self.n_held < limits.frames && self.bytes_held + len <= limits.bytes)
    }

    fn push_held(&mut self, frame: Wire) {
        self.n_held += 1;
        self.bytes_held += frame.len();
        self.frames.push_back(frame);
    }
}

/// The bounds of one client's outbound queue and what happens when they are reached.
#[derive(Clone, Copy, Debug)]
struct QueueLimits {
    frames: usize,
    bytes: usize,
    policy: Policy,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    peer: Peer,
    state: Mutex<OutState>,
    writer_wake: Notify,
    space: Notify,
    shutdown: Notify,
    subscriptions: Mutex<Vec<String>>,
    send_limits: Limits,
    /// The client's hello accepts batch frames (feature bit 1): its writer packs small data
    /// frames into them.
    batches: bool,
    /// Why the server ended the connection (its writer failed, the client was too slow, a
    /// response did not fit): the reader reports it.
    failure: Mutex<Option<Error>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<U>(mutex: &Mutex<U>) -> std::sync::MutexGuard<'_, U> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Conn {
    /// Queues a frame, applying the policy when the queue is full. With [`Policy::Wait`]
    /// the caller waits for room while the client reads; if nothing was written to it for
    /// `wait_limit` (when given) meanwhile, the client is closed as too slow.
    async fn push(
        &self,
        frame: Wire,
        limits: QueueLimits,
        wait_limit: Option<Duration>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut deadline = None;
            let notified = self.space.notified();
            tokio::pin!(notified);
            {
                let mut state = lock(&self.state);
                if state.closed {
                    return Err(Error::new(
                        ErrorKind::Closed,
                        format!("connection {} is closed", self.id),
                    ));
                }
                if state.has_room(&limits, frame.len()) {
                    state.push_held(frame);
                    drop(state);
                    self.writer_wake.notify_one();
                    return Ok(());
                }
                match limits.policy {
                    Policy::DropOldest => {
                        // Drop the oldest queued frames until the new one fits (the ones
                        // being written stay counted until they are out).
                        while !state.has_room(&limits, frame.len()) {
                            let Some(old) = state.frames.pop_front() else {
                                break;
                            };
                            state.n_held -= 1;
                            state.bytes_held -= old.len();
                            state.dropped += 1;
                        }
                        if !state.has_room(&limits, frame.len()) {
                            // Only frames being written are held: the new one is the oldest
                            // that can go.
                            state.dropped += 1;
                            return Ok(());
                        }
                        state.push_held(frame);
                        drop(state);
                        self.writer_wake.notify_one();
                        return Ok(());
                    }
                    Policy::Disconnect => {
                        let err = self.too_slow(&state, &limits, None);
                        drop(state);
                        self.fail(&err, CloseCode::TOO_SLOW);
                        return Err(err);
                    }
                    Policy::Wait => {
                        if let Some(limit) = wait_limit {
                            // Progress is what counts: the last write, or when we began.
                            let since = state.last_write.map_or(started, |at| at.max(started));
                            let until = since + limit;
                            if Instant::now() >= until {
                                let err = self.too_slow(&state, &limits, wait_limit);
                                drop(state);
                                self.fail(&err, CloseCode::TOO_SLOW);
                                return Err(err);
                            }
                            deadline = Some(tokio::time::Instant::from_std(until));
                        }
                        notified.as_mut().enable();
                    }
                }
            }
            match deadline {
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                None => notified.await,
            }
        }
    }

    fn too_slow(&self, state: &OutState, limits: &QueueLimits, waited: Option<Duration>) -> Error {
        let waited = match waited {
            Some(waited) => format!(
                " and nothing was written to it for {} ms",
                waited.as_millis()
            ),
            None => String::new(),
        };
        Error::new(
            ErrorKind::Full,
            format!(
                "client {} too slow: its outbound queue held {} frames of {} bytes{waited} (limits {} frames, {} bytes)",
                self.id, state.n_held, state.bytes_held, limits.frames, limits.bytes
            ),
        )
    }

    /// Ends the connection because of `err`: what is queued is discarded, a close frame with
    /// the matching code is sent, and the reader stops and reports `err`.
    fn fail(&self, err: &Error, code: CloseCode) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let n_discarded = state.frames.len();
        let discarded: usize = state.frames.drain(..).map(|frame| frame.len()).sum();
        state.n_held -= n_discarded;
        state.bytes_held -= discarded;
        // The close frame is the one frame that may go beyond the bounds (it is under 2 KiB).
        let mut close = Vec::new();
        let _ = Close::new(code, err.to_string()).encode_frame(&mut close);
        state.push_held(close.into());
        state.closed = true;
        drop(state);
        *lock(&self.failure) = Some(Error::new(err.kind(), err.to_string()));
        self.writer_wake.notify_one();
        self.shutdown.notify_one();
        self.space.notify_waiters();
    }

    /// Stops accepting frames; queues a final close frame if given.
    fn close(&self, close: Option<Wire>) {
        let mut state = lock(&self.state);
        if !state.closed {
            if let Some(close) = close {
                state.push_held(close);
            }
            state.closed = true;
        }
        drop(state);
        self.writer_wake.notify_one();
        self.space.notify_waiters();
    }

    fn subscribed(&self, topic: &str) -> bool {
        lock(&self.subscriptions)
            .iter()
            .any(|prefix| topic.starts_with(prefix.as_str()))
    }
}

fn close_wire(err: &Error) -> Wire {
    let mut out = Vec::new();
    let _ = Close::new(close_code_for(err), err.to_string()).encode_frame(&mut out);
    out.into()
}

fn control_wire(kind: FrameKind, id: u32) -> Wire {
    let mut out = Vec::with_capacity(HEADER_LEN);
    let _ = ipc_core::encode_raw_frame(&mut out, kind, id, &[], &Limits::default());
    out.into()
}

#[derive(Debug)]
struct Shared {
    conns: Mutex<HashMap<ConnId, Arc<Conn>>>,
    n_conns: AtomicUsize,
    next_id: AtomicU64,
    /// [`RUNNING`], [`SHUT_DOWN`] or [`DROPPED`]; written and read with `conns` held, so a
    /// connection whose handshake ends while the server stops is either among those the
    /// stop closes or sees the stop when it registers, never neither.
    stopped: AtomicU8,
    config: ServerConfig,
}

const RUNNING: u8 = 0;
const SHUT_DOWN: u8 = 1;
const DROPPED: u8 = 2;

/// Ends one connection because the server stops: with a going-away close frame after
/// [`Server::shutdown`], without one when the server is dropped.
fn stop_conn(conn: &Conn, how: u8) {
    if how == SHUT_DOWN {
        let mut out = Vec::new();
        let _ = Close::new(CloseCode::GOING_AWAY, "server shutting down").encode_frame(&mut out);
        conn.close(Some(out.into()));
    } else {
        conn.close(None);
    }
    conn.shutdown.notify_one();
}

impl Shared {
    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.config.queue_capacity,
            bytes: self.config.queue_bytes,
            policy: self.config.policy,
        }
    }

    /// How long a sender waits under [`Policy::Wait`] for a client that reads nothing: its
    /// heartbeat timeout (a client that reads nothing for that long is too slow); without
    /// heartbeats, as long as it takes.
    fn wait_limit(&self) -> Option<Duration> {
        self.config
            .connection
            .heartbeat()
            .map(|heartbeat| heartbeat.timeout)
    }

    fn conn(&self, conn: ConnId) -> Result<Arc<Conn>> {
        lock(&self.conns).get(&conn).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no connection {conn} (it closed)"),
            )
        })
    }

    fn all(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().cloned().collect()
    }

    /// Marks the server stopped and ends every registered connection.
    fn stop(&self, how: u8) {
        let conns: Vec<Arc<Conn>> = {
            let conns = lock(&self.conns);
            if self.stopped.load(Ordering::Relaxed) != RUNNING {
                return;
            }
            self.stopped.store(how, Ordering::Relaxed);
            conns.values().cloned().collect()
        };
        for conn in conns {
            stop_conn(&conn, how);
        }
    }

    async fn publish_wire(&self, topic: &str, frame: Wire) -> usize {
        let mut delivered = 0;
        for conn in self.all() {
            if conn.subscribed(topic)
                && conn
                    .push(Arc::clone(&frame), self.queue_limits(), self.wait_limit())
                    .await
                    .is_ok()
            {
                delivered += 1;
            }
        }
        delivered
    }

    fn any_subscribed(&self, topic: &str) -> bool {
        lock(&self.conns)
            .values()
            .any(|conn| conn.subscribed(topic))
    }
}

/// A cheap, cloneable handle for sending to a [`Server`]'s clients from any task.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct ServerHandle<T> {
    shared: Arc<Shared>,
    _message: PhantomData<fn(T)>,
}

impl<T> Clone for ServerHandle<T> {
    fn clone(&self) -> Self {
        ServerHandle {
            shared: Arc::clone(&self.shared),
            _message: PhantomData,
        }
    }
}

impl<T: Serialize + Sync> ServerHandle<T> {
    fn encode(&self, conn: &Conn, kind: FrameKind, id: u32, message: &T) -> Result<Wire> {
        let mut out = Vec::new();
        ipc_core::encode_frame(&mut out, kind, id, message, &conn.send_limits)?;
        Ok(out.into())
    }

    /// Sends a data message to one client (through its bounded queue and policy: with the
    /// default [`Policy::Disconnect`] this never waits for the client).
    pub async fn send(&self, conn: ConnId, message: &T) -> Result<()> {
        let conn = self.shared.conn(conn)?;
        let frame = self.encode(&conn, FrameKind::Data, 0, message)?;
        conn.push(frame, self.shared.queue_limits(), self.shared.wait_limit())
            .await
    }

    /// Answers request `id` of `conn` (through its bounded queue and policy: with the
    /// default [`Policy::Disconnect`] this never waits for the client, so an event loop
    /// can await it inline).
    ///
    /// A response larger than the `max_frame_len` the client announced cannot be sent: the
    /// client is then closed with close code 9 (response too large) and a reason naming the
    /// request and both sizes, so that its request fails with that reason instead of
    /// waiting for its deadline, and this returns [`ErrorKind::TooLarge`].
    pub async fn respond(&self, conn: ConnId, id: u32, message: &T) -> Result<()> {
        let conn = self.shared.conn(conn)?;
        let frame = match self.encode(&conn, FrameKind::Response, id, message) {
            Ok(frame) => frame,
            Err(err) if err.kind() == ErrorKind::TooLarge => {
                let err = Error::new(
                    ErrorKind::TooLarge,
                    format!("response to request {id}: {err}"),
                );
                conn.fail(&err, CloseCode::RESPONSE_TOO_LARGE);
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        conn.push(frame, self.shared.queue_limits(), self.shared.wait_limit())
            .await
    }

    /// Sends a data message to every client; returns how many queued it. Encoded once.
    pub async fn broadcast(&self, message: &T) -> Result<usize> {
        let mut out = Vec::new();
        let limits = Limits::new().with_max_frame_len(self.min_send_limit());
        ipc_core::encode_frame(&mut out, FrameKind::Data, 0, message, &limits)?;
        let frame: Wire = out.into();
        let mut delivered = 0;
        for conn in self.shared.all() {
            if conn
                .push(
                    Arc::clone(&frame),
                    self.shared.queue_limits(),
                    self.shared.wait_limit(),
                )
                .await
                .is_ok()
            {
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// Publishes `message` on `topic` to every client subscribed to a prefix of it; returns
    /// how many queued it. Encoded once.
    pub async fn publish(&self, topic: &str, message: &T) -> Result<usize> {
        let mut out = Vec::new();
        let limits = Limits::new().with_max_frame_len(self.min_send_limit());
        wire::encode_publish(&mut out, topic, message, &limits)?;
        Ok(self.shared.publish_wire(topic, out.into()).await)
    }

    fn min_send_limit(&self) -> u32 {
        self.shared
            .all()
            .iter()
            .map(|conn| conn.send_limits.max_frame_len())
            .min()
            .unwrap_or(u32::MAX)
    }
}

impl<T> ServerHandle<T> {
    /// Closes one client's connection with `code` and `reason` (after what is queued).
    pub fn disconnect(&self, conn: ConnId, code: CloseCode, reason: &str) -> Result<()> {
        let conn = self.shared.conn(conn)?;
        let mut out = Vec::new();
        Close::new(code, reason).encode_frame(&mut out)?;
        conn.close(Some(out.into()));
        conn.shutdown.notify_one();
        Ok(())
    }

    /// Who `conn` is: its address, its user id (local sockets) and its verified client
    /// certificate (mutual TLS). [`ErrorKind::NotFound`] once it is gone.
    pub fn peer(&self, conn: ConnId) -> Result<Peer> {
        Ok(self.shared.conn(conn)?.peer.clone())
    }

    /// The ids of the connected clients.
    pub fn connections(&self) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = lock(&self.shared.conns).keys().copied().collect();
        ids.sort();
        ids
    }

    /// Frames dropped so far for `conn` by [`Policy::DropOldest`] (of any kind: data,
    /// responses, publications, pongs, acks).
    pub fn dropped(&self, conn: ConnId) -> Result<u64> {
        Ok(lock(&self.shared.conn(conn)?.state).dropped)
    }
}

/// A tokio server for many clients exchanging messages of type `T`.
///
/// Every client gets a reader task and a writer task. The reader validates every frame
/// (a client that sends garbage, an over-limit length, a truncated frame, another protocol
/// version or message type is closed with a close frame saying why, and reported as
/// [`Event::Disconnected`] or [`Event::Rejected`]; the others are not disturbed), answers
/// pings, handles subscriptions and forwards publications to subscribers, and closes a
/// client whose frame does not arrive whole within the frame deadline
/// ([`ConnectionConfig::with_frame_timeout`]) or that stays silent past the heartbeat
/// timeout, with a close frame saying so. The writer drains the client's bounded queue
/// (every frame counts against it, pongs and acks too), coalescing small frames into one
/// write and writing large ones from the queue's copy.
///
/// What clients can make a server hold is bounded by its limits: about
/// `max_connections × (max_frame_len + queue_bytes + 80 KiB + 64 B × queue_capacity)`
/// plus the events waiting for [`next_event`](Server::next_event) (the crate README's
/// "Server memory").
///
/// See [`AsyncConnection`](crate::AsyncConnection) for an example.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct Server<T> {
    handle: ServerHandle<T>,
    events: mpsc::Receiver<Event<T>>,
    addresses: Vec<Address>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Server<T> {
    /// Listens on the config's address; must run inside a tokio runtime. A socket file left
    /// by a crashed server is reclaimed, a live server's is not ([`ErrorKind::AlreadyExists`]).
    ///
    /// With [`ServerConfig::also_listen`] it listens on every address; if one cannot be
    /// bound, none is kept.
    pub async fn bind(mut config: ServerConfig) -> Result<Server<T>> {
        config.connection = config.connection.with_patterns();
        let http = Arc::new(config.http.clone());
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for wanted in std::iter::once(&config.address).chain(&config.more_addresses) {
            let (listener, address) =
                AsyncListener::bind(wanted, &config.connection, Arc::clone(&http)).await?;
            listeners.push(listener);
            addresses.push(address);
        }
        let (events_tx, events) = mpsc::channel(config.event_capacity);
        let shared = Arc::new(Shared {
            conns: Mutex::new(HashMap::new()),
            n_conns: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stopped: AtomicU8::new(RUNNING),
            config,
        });
        let accept_tasks = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(accept_loop::<T>(
                    listener,
                    Arc::clone(&shared),
                    events_tx.clone(),
                ))
            })
            .collect();
        Ok(Server {
            handle: ServerHandle {
                shared,
                _message: PhantomData,
            },
            events,
            addresses,
            accept_tasks,
        })
    }

    /// The address clients connect to (for `tcp:…:0`, the port actually bound): the first
    /// of [`addresses`](Server::addresses).
    pub fn address(&self) -> &Address {
        &self.addresses[0]
    }

    /// Every address the server listens on, in the order of its config (ports as bound).
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// A handle to send from other tasks.
    pub fn handle(&self) -> ServerHandle<T> {
        self.handle.clone()
    }

    /// The next event; `None` only after the server stopped.
    pub async fn next_event(&mut self) -> Option<Event<T>> {
        self.events.recv().await
    }

    /// Stops accepting (the listener is closed, and its socket file removed, when this
    /// returns) and closes every client with code "going away" after what is queued for it.
    pub async fn shutdown(&mut self) {
        for task in &self.accept_tasks {
            task.abort();
        }
        for task in &mut self.accept_tasks {
            let _ = task.await;
        }
        self.handle.shared.stop(SHUT_DOWN);
    }
}

impl<T> Drop for Server<T> {
    fn drop(&mut self) {
        for task in &self.accept_tasks {
            task.abort();
        }
        self.handle.shared.stop(DROPPED);
    }
}

async fn accept_loop<T: Serialize + DeserializeOwned + Send + Sync + 'static>(
    listener: AsyncListener,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event<T>>,
) {
    loop {
        let (pending, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("accept failed: {err}");
                // Out of descriptors and the like: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let events = events.clone();
        tokio::spawn(async move {
            // The handshake deadline counts from the accept and covers TLS too.
            let deadline = Instant::now() + shared.config.connection.handshake_timeout();
            let (stream, facts) = match pending.finish(&shared.config.connection, deadline).await {
                Ok(finished) => finished,
                Err(err) => {
                    tracing::warn!("handshake with {peer} failed: {err}");
                    let _ = events.send(Event::Rejected { peer, error: err }).await;
                    return;
                }
            };
            let refusal = admission(&shared, facts.uid);
            // A `ws://` or `wss://` connection starts with HTTP: a WebSocket upgrade (the
            // refusal, if any, is then sent as over any stream) or a file.
            let upgraded = stream.upgrade(&shared.config.connection, &peer, deadline);
            let stream = match upgraded.await {
                Ok(Some(stream)) => stream,
                outcome => {
                    if refusal.is_none() {
                        shared.n_conns.fetch_sub(1, Ordering::AcqRel);
                    }
                    if let Err(err) = outcome {
                        tracing::warn!("refused {peer}: {err}");
                        let _ = events.send(Event::Rejected { peer, error: err }).await;
                    }
                    return;
                }
            };
            let Some(err) = refusal else {
                serve(stream, Peer::new(peer, facts), deadline, shared, events).await;
                return;
            };
            {
                let (mut reader, mut writer) = stream.into_split();
                let close = close_wire(&err);
                // Say why, then read what the client sent (its hello) until it goes away, so
                // that closing does not reset the connection before the close frame is read.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    writer.write_all(&close).await?;
                    writer.flush().await?;
                    writer.shutdown().await?;
                    let mut sink = [0u8; 1024];
                    while reader.read(&mut sink).await? > 0 {}
                    Ok::<(), std::io::Error>(())
                })
                .await;
                tracing::warn!("refused {peer}: {err}");
                let _ = events.send(Event::Rejected { peer, error: err }).await;
            }
        });
    }
}

fn admission(shared: &Shared, uid: Option<u32>) -> Option<Error> {
    if let Some(allowed) = &shared.config.allow_uids {
        match uid {
            Some(uid) if allowed.contains(&uid) => {}
            Some(uid) => {
                return Some(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("user id {uid} is not allowed"),
                ));
            }
            None => {
                return Some(Error::new(
                    ErrorKind::PermissionDenied,
                    "peer credentials unavailable and an allow-list is set",
                ));
            }
        }
    }
    let max = shared.config.max_connections;
    if shared.n_conns.fetch_add(1, Ordering::AcqRel) >= max {
        shared.n_conns.fetch_sub(1, Ordering::AcqRel);
        return Some(Error::new(
            ErrorKind::PermissionDenied,
            format!("server has reached its maximum of {max} connections"),
        ));
    }
    None
}

async fn serve<T: Serialize + DeserializeOwned + Send + Sync + 'static>(
    stream: crate::stream::AsyncStream,
    peer: Peer,
    deadline: Instant,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event<T>>,
) {
    let config = shared.config.connection.clone();
    let shaken = match handshake(stream, &config, deadline).await {
        Ok(shaken) => shaken,
        Err(err) => {
            shared.n_conns.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("handshake with {peer} failed: {err}");
            let peer = peer.to_string();
            let _ = events.send(Event::Rejected { peer, error: err }).await;
            return;
        }
    };
    let id = ConnId(shared.next_id.fetch_add(1, Ordering::Relaxed));
    let conn = Arc::new(Conn {
        id,
        peer: peer.clone(),
        state: Mutex::new(OutState::default()),
        writer_wake: Notify::new(),
        space: Notify::new(),
        shutdown: Notify::new(),
        subscriptions: Mutex::new(Vec::new()),
        send_limits: shaken.send_limits,
        batches: shaken.peer.features() & FEATURE_BATCH != 0,
        failure: Mutex::new(None),
    });
    {
        let mut conns = lock(&shared.conns);
        conns.insert(id, Arc::clone(&conn));
        // The server stopped while this handshake ran: the stop did not see this
        // connection, so it ends here (the reader sees the shutdown at once).
        let how = shared.stopped.load(Ordering::Relaxed);
        if how != RUNNING {
            stop_conn(&conn, how);
        }
    }
    let writer = tokio::spawn(write_loop(Arc::clone(&conn), shaken.writer));
    let peer = peer.to_string();
    let _ = events.send(Event::Connected { conn: id, peer }).await;

    let mut reader = Reader::<T> {
        patterns: shaken.peer.features() & FEATURE_PATTERNS != 0,
        type_name: config.message_type().name().to_owned(),
        half: shaken.reader,
        decoder: shaken.decoder,
        liveness: Liveness::new(config.heartbeat()),
        frame_timeout: config.frame_timeout(),
        conn: Arc::clone(&conn),
        shared: Arc::clone(&shared),
        events: events.clone(),
        _message: PhantomData,
    };
    // When the server ended the connection (too slow, a response too large, a failed
    // write), that is the reason, whatever the reader stumbled on afterwards.
    let outcome = match reader.run().await {
        Err(err) => Err(lock(&conn.failure).take().unwrap_or(err)),
        Ok(()) => Ok(()),
    };
    lock(&shared.conns).remove(&id);
    shared.n_conns.fetch_sub(1, Ordering::AcqRel);
    let error = match outcome {
        Ok(()) => {
            conn.close(None);
            None
        }
        Err(err) => {
            if !matches!(
                err.kind(),
                ErrorKind::PeerDied | ErrorKind::PeerClosed | ErrorKind::Io
            ) {
                conn.close(Some(close_wire(&err)));
            } else {
                conn.close(None);
            }
            tracing::warn!("connection {id} closed: {err}");
            Some(err)
        }
    };
    // The writer sends what is queued (ending with the close frame); a client that does
    // not read gets a short grace period.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let _ = events.send(Event::Disconnected { conn: id, error }).await;
}

/// Frames up to this size are coalesced into one write; larger ones are written from the
/// queue's own copy, so a large frame is never copied again on its way out.
const COALESCE_LEN: usize = 64 * 1024;
const COALESCE_FRAME: usize = 16 * 1024;

/// Packs the small data frames of one coalesced write into batch frames, as
/// [`ipc_core::FrameBuffer::push_batched`] does for connections: a data frame alone stays
/// one; a second that follows it turns the pair into a batch, which takes further data
/// messages of up to [`MAX_BATCHED_MESSAGE`] bytes while its payload stays within
/// [`MAX_BATCH_LEN`] and the client's `max_frame_len`. Other kinds end the batch, so the
/// order of all frames is kept.
struct Batcher {
    /// The payload limit of a batch for this client.
    limit: usize,
    /// Where the last frame of the write starts, if it is a data frame that may still
    /// become a batch.
    lone_data: Option<usize>,
    /// Where the open batch frame starts (its length is written when it is sealed).
    open_batch: Option<usize>,
}

impl Batcher {
    fn new(conn: &Conn) -> Batcher {
        let limit = if conn.batches {
            MAX_BATCH_LEN.min(conn.send_limits.max_frame_len() as usize)
        } else {
            0
        };
        Batcher {
            limit,
            lone_data: None,
            open_batch: None,
        }
    }

    /// The payload of `frame` if it is a data frame that may go in a batch.
    fn batchable(&self, frame: &[u8]) -> Option<usize> {
        let header: &[u8; HEADER_LEN] = frame.first_chunk()?;
        let len = frame.len() - HEADER_LEN;
        let is_data = header[3] == FrameKind::Data.to_byte() && header[12..16] == [0; 4];
        (self.limit > 0 && is_data && len <= MAX_BATCHED_MESSAGE).then_some(len)
    }

    /// Appends `frame` to `out`, into a batch where it can go.
    fn push(&mut self, out: &mut Vec<u8>, frame: &[u8]) {
        let Some(len) = self.batchable(frame) else {
            self.seal(out);
            self.lone_data = None;
            out.extend_from_slice(frame);
            return;
        };
        let payload = &frame[HEADER_LEN..];
        if let Some(start) = self.lone_data.take() {
            let lone_len = out.len() - start - HEADER_LEN;
            if 2 + lone_len + 2 + len <= self.limit {
                // The lone data frame becomes a batch of one entry, open for more.
                out[start + 3] = FrameKind::Batch.to_byte();
                let at = start + HEADER_LEN;
                out.splice(at..at, (lone_len as u16).to_le_bytes());
                self.open_batch = Some(start);
            }
        }
        if let Some(start) = self.open_batch {
            if out.len() - start - HEADER_LEN + 2 + len <= self.limit {
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(payload);
                return;
            }
            self.seal(out);
        }
        self.lone_data = Some(out.len());
        out.extend_from_slice(frame);
    }

    /// Writes the open batch's length into its header.
    fn seal(&mut self, out: &mut [u8]) {
        if let Some(start) = self.open_batch.take() {
            let len = (out.len() - start - HEADER_LEN) as u32;
            out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Seals the batch at the end of a write.
    fn finish(&mut self, out: &mut [u8]) {
        self.seal(out);
        self.lone_data = None;
    }
}

async fn write_loop(conn: Arc<Conn>, mut half: AsyncWriteHalf) {
    let mut batch: Vec<u8> = Vec::with_capacity(COALESCE_LEN);
    let mut batcher = Batcher::new(&conn);
    loop {
        let mut large: Option<Wire> = None;
        let mut n_taken = 0;
        let mut bytes_taken = 0;
        let done = {
            let mut state = lock(&conn.state);
            while let Some(front) = state.frames.front() {
                if front.len() > COALESCE_FRAME {
                    if batch.is_empty() {
                        large = state.frames.pop_front();
                        n_taken += 1;
                        bytes_taken += large.as_ref().map_or(0, |frame| frame.len());
                    }
                    break;
                }
                if !batch.is_empty() && batch.len() + front.len() > COALESCE_LEN {
                    break;
                }
                if let Some(frame) = state.frames.pop_front() {
                    batcher.push(&mut batch, &frame);
                    n_taken += 1;
                    bytes_taken += frame.len();
                }
            }
            batcher.finish(&mut batch);
            state.closed && state.frames.is_empty()
        };
        if n_taken > 0 {
            let written = match &large {
                Some(frame) => write_large(&conn, &mut half, frame).await,
                None => write_flushed(&mut half, &batch).await,
            };
            drop(large);
            batch.clear();
            {
                // What was written no longer counts against the client's bounds.
                let mut state = lock(&conn.state);
                state.n_held -= n_taken;
                state.bytes_held -= bytes_taken;
                state.last_write = Some(Instant::now());
            }
            conn.space.notify_waiters();
            if let Err(err) = written {
                *lock(&conn.failure) = Some(Error::io("write to client", err));
                conn.close(None);
                conn.shutdown.notify_one();
                return;
            }
            continue;
        }
        if done {
            let _ = half.shutdown().await;
            return;
        }
        conn.writer_wake.notified().await;
    }
}

/// Writes a large frame in pieces, noting progress after each, so that a client reading
/// it slowly but steadily does not look stuck to a sender waiting under [`Policy::Wait`].
async fn write_large(conn: &Conn, half: &mut AsyncWriteHalf, frame: &[u8]) -> std::io::Result<()> {
    for piece in frame.chunks(256 * 1024) {
        write_flushed(half, piece).await?;
        lock(&conn.state).last_write = Some(Instant::now());
    }
    Ok(())
}

/// Writes all of `bytes` and flushes: a TLS stream keeps records it could not write yet
/// until the next write or flush (a no-op on plain sockets).
async fn write_flushed(half: &mut AsyncWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    half.write_all(bytes).await?;
    half.flush().await
}

struct Reader<T> {
    /// The client's hello sets feature bit 0: it may send the pattern kinds (06 to 0b).
    patterns: bool,
    /// The agreed message type's name, for decode errors (and so close reasons).
    type_name: String,
    half: AsyncReadHalf,
    decoder: FrameDecoder,
    liveness: Liveness,
    frame_timeout: Option<Duration>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event<T>>,
    _message: PhantomData<fn() -> T>,
}

/// One received frame, owned, so the decoder's borrow ends before we await.
enum Action<T> {
    Event(Event<T>),
    Control(Wire),
    Publish(String, Wire),
    Closed(Option<Error>),
    None,
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Reader<T> {
    async fn push_control(&self, frame: Wire) -> Result<()> {
        self.conn
            .push(frame, self.shared.queue_limits(), self.shared.wait_limit())
            .await
    }

    /// Closes the connection with `code` after what is queued, and returns `err` for the
    /// reader to report.
    fn close_with(&self, code: CloseCode, err: Error) -> Error {
        let mut close = Vec::new();
        let _ = Close::new(code, err.to_string()).encode_frame(&mut close);
        self.conn.close(Some(close.into()));
        err
    }

    async fn run(&mut self) -> Result<()> {
        let id = self.conn.id;
        // When the partial frame at the front of the decoder started arriving.
        let mut frame_started: Option<Instant> = None;
        // The last read took everything the kernel had (less than the room offered).
        let mut drained = false;
        loop {
            let mut handed_out = false;
            loop {
                let type_name = self.type_name.as_str();
                let action = match self.decoder.next_frame()? {
                    None => break,
                    Some(frame) => match frame.kind() {
                        kind @ (FrameKind::Request
                        | FrameKind::Subscribe
                        | FrameKind::Unsubscribe
                        | FrameKind::Publish)
                            if !self.patterns =>
                        {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!(
                                    "{kind:?} frame from a client whose hello does not set feature bit 0 (messaging patterns)"
                                ),
                            ));
                        }
                        FrameKind::Data => Action::Event(Event::Message {
                            conn: id,
                            message: frame.decode_as::<T>(type_name)?,
                        }),
                        FrameKind::Request if frame.id() == 0 => {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                "request with id 0 (request ids must be non-zero)",
                            ));
                        }
                        FrameKind::Request => Action::Event(Event::Request {
                            conn: id,
                            id: frame.id(),
                            message: frame.decode_as::<T>(type_name)?,
                        }),
                        // A ping's payload, which should be empty, is ignored: the pong is
                        // empty whatever the ping carried (PROTOCOL.md §5).
                        FrameKind::Ping => {
                            Action::Control(control_wire(FrameKind::Pong, frame.id()))
                        }
                        FrameKind::Pong => Action::None,
                        FrameKind::Subscribe => {
                            let topic = wire::parse_topic(frame.payload())?;
                            let mut subs = lock(&self.conn.subscriptions);
                            if subs.len() >= 1024 {
                                return Err(Error::new(
                                    ErrorKind::Protocol,
                                    "more than 1024 subscriptions on one connection",
                                ));
                            }
                            if !subs.iter().any(|s| s == topic) {
                                subs.push(topic.to_owned());
                            }
                            Action::Control(control_wire(FrameKind::SubscribeAck, frame.id()))
                        }
                        FrameKind::Unsubscribe => {
                            let topic = wire::parse_topic(frame.payload())?;
                            lock(&self.conn.subscriptions).retain(|s| s != topic);
                            Action::None
                        }
                        FrameKind::Publish => {
                            let (topic, message) = wire::parse_publish(frame.payload())?;
                            // Only well-typed messages are forwarded.
                            ipc_core::decode_as::<T>(message, type_name)?;
                            if self.shared.any_subscribed(topic) {
                                let mut out = Vec::with_capacity(frame.header().frame_len());
                                out.extend_from_slice(&frame.header().to_bytes());
                                out.extend_from_slice(frame.payload());
                                Action::Publish(topic.to_owned(), out.into())
                            } else {
                                // Nobody to forward to: no copy of the frame.
                                Action::None
                            }
                        }
                        FrameKind::Close => {
                            let close = Close::decode(frame.payload())?;
                            if close.code == CloseCode::NORMAL {
                                Action::Closed(None)
                            } else {
                                Action::Closed(Some(close.into_error()))
                            }
                        }
                        kind => {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!("unexpected {kind:?} frame from a client"),
                            ));
                        }
                    },
                };
                handed_out = true;
                match action {
                    Action::Event(event) => {
                        let _ = self.events.send(event).await;
                    }
                    Action::Control(frame) => self.push_control(frame).await?,
                    Action::Publish(topic, frame) => {
                        self.shared.publish_wire(&topic, frame).await;
                    }
                    Action::Closed(None) => return Ok(()),
                    Action::Closed(Some(err)) => return Err(err),
                    Action::None => {}
                }
            }
            let now = Instant::now();
            if self.decoder.buffered() == 0 {
                frame_started = None;
            } else if handed_out || frame_started.is_none() {
                // What is left is the start of a new frame, received in the last read.
                frame_started = Some(now);
            }
            let mut wait = match self.liveness.check(now) {
                Beat::Wait(wait) => wait,
                Beat::Ping(nonce, wait) => {
                    self.push_control(control_wire(FrameKind::Ping, nonce))
                        .await?;
                    wait
                }
            };
            let frame_deadline = frame_started.zip(self.frame_timeout);
            if let Some((started, timeout)) = frame_deadline {
                // Past the deadline, the verdict comes once what arrived meanwhile has been
                // read (this task may have waited elsewhere): after a read that drained
                // the socket, or one that timed out.
                let left = timeout.saturating_sub(now.saturating_duration_since(started));
                if left.is_zero() && drained {
                    return Err(self.frame_timed_out(timeout));
                }
                wait = wait.min(left).max(Duration::from_millis(1));
            }
            let timed = frame_deadline.is_some() || self.liveness.poll_interval().is_some();
            let room = self.decoder.read_buf();
            let room_len = room.len();
            let read = tokio::select! {
                read = within(timed, wait, self.half.read(room)) => read,
                () = self.conn.shutdown.notified() => {
                    return Err(lock(&self.conn.failure).take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Closed, format!("connection {id} shut down by the server"))
                    }));
                }
            };
            match read {
                None => {
                    let now = Instant::now();
                    if let Some((started, timeout)) = frame_deadline
                        && now.saturating_duration_since(started) >= timeout
                    {
                        return Err(self.frame_timed_out(timeout));
                    }
                    if let Err(err) = self.liveness.expired(now) {
                        return Err(self.close_with(CloseCode::HEARTBEAT_TIMEOUT, err));
                    }
                }
                Some(Ok(0)) => {
                    return Err(match self.decoder.finish() {
                        Err(err) => err.context("client vanished"),
                        Ok(()) => Error::new(
                            ErrorKind::PeerDied,
                            "client closed the stream without a close frame",
                        ),
                    });
                }
                Some(Ok(n)) => {
                    self.decoder.commit(n);
                    self.liveness.heard();
                    drained = n < room_len;
                }
                Some(Err(err)) => {
                    let err = crate::stream::stream_error("read from client", err);
                    return Err(match self.decoder.buffered() {
                        // A WebSocket's verdict on a message (text, too large, cut frame).
                        _ if matches!(err.kind(), ErrorKind::Protocol | ErrorKind::TooLarge) => err,
                        0 => err,
                        n => err.context(format_args!(
                            "client vanished mid-frame ({n} bytes of a frame received)"
                        )),
                    });
                }
            }
        }
    }

    fn frame_timed_out(&self, timeout: Duration) -> Error {
        let err = Error::new(
            ErrorKind::Timeout,
            format!(
                "frame not completed within {} ms ({} bytes of it received)",
                timeout.as_millis(),
                self.decoder.buffered()
            ),
        );
        self.close_with(CloseCode::FRAME_TIMEOUT, err)
    }
}

/// Awaits `future`, for at most `wait` if `timed` (`None` if the time ran out).
async fn within<F: std::future::Future>(
    timed: bool,
    wait: Duration,
    future: F,
) -> Option<F::Output> {
    if !timed {
        return Some(future.await);
    }
    tokio::time::timeout(wait, future).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        ipc_core::encode_frame(&mut out, FrameKind::Data, 0, text, &Limits::default()).unwrap();
        out
    }

    /// What a receiver makes of `wire`: (kind, id, text or empty) per message, and the
    /// number of batch frames.
    fn receive(wire: &[u8]) -> (Vec<(FrameKind, u32, String)>, usize) {
        let mut n_batches = 0;
        let mut rest = wire;
        while !rest.is_empty() {
            let (frame, used) = ipc_core::Frame::parse(rest, &Limits::default()).unwrap();
            n_batches += usize::from(frame.kind() == FrameKind::Batch);
            rest = &rest[used..];
        }
        let mut decoder = FrameDecoder::new(Limits::default());
        let mut messages = Vec::new();
        let mut fed = 0;
        loop {
            while let Some(frame) = decoder.next_frame().unwrap() {
                let text = match frame.kind() {
                    FrameKind::Data => frame.decode::<String>().unwrap(),
                    _ => String::new(),
                };
                messages.push((frame.kind(), frame.id(), text));
            }
            if fed == wire.len() {
                return (messages, n_batches);
            }
            let room = decoder.read_buf();
            let n = room.len().min(wire.len() - fed);
            room[..n].copy_from_slice(&wire[fed..fed + n]);
            decoder.commit(n);
            fed += n;
        }
    }

    fn batcher(limit: usize) -> Batcher {
        Batcher {
            limit,
            lone_data: None,
            open_batch: None,
        }
    }

    #[test]
    fn batches_keep_every_message_and_the_order_of_all_frames() {
        let texts: Vec<String> = (0..40).map(|i| format!("message {i}")).collect();
        let ping = control_wire(FrameKind::Ping, 7);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            frames.push(data(text));
            if i % 15 == 14 {
                frames.push(ping.to_vec());
            }
        }
        frames.push(data(&"x".repeat(MAX_BATCHED_MESSAGE + 1)));
        frames.push(data("last"));
        let expected: Vec<_> = frames.iter().flat_map(|f| receive(f).0).collect();
        // A small limit forces batches to be sealed and new ones opened; 0 means the peer
        // takes no batches.
        for limit in [0, 40, 64, MAX_BATCH_LEN] {
            let mut batcher = batcher(limit);
            let mut out = Vec::new();
            for frame in &frames {
                batcher.push(&mut out, frame);
            }
            batcher.finish(&mut out);
            let (got, n_batches) = receive(&out);
            assert_eq!(got, expected, "limit {limit}");
            if limit == 0 {
                assert_eq!(n_batches, 0);
                assert_eq!(out, frames.concat());
            } else {
                assert!(n_batches > 1, "limit {limit}: {n_batches} batches");
                // Every batch within the limit.
                let mut rest = &out[..];
                while !rest.is_empty() {
                    let (frame, used) = ipc_core::Frame::parse(rest, &Limits::default()).unwrap();
                    if frame.kind() == FrameKind::Batch {
                        assert!(frame.payload().len() <= limit, "limit {limit}");
                    }
                    rest = &rest[used..];
                }
            }
        }
    }
}
