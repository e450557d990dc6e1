//! The tokio connection: a handshake, then a send half and a receive half that may live in
//! different tasks.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use ipc_core::{
    AsyncReceiver, AsyncSender, Close, CloseCode, Error, ErrorKind, FEATURE_BATCH, FrameBuffer,
    FrameDecoder, FrameKind, Hello, Limits, Result,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::address::Address;
use crate::config::{Beat, ConnectionConfig, Liveness, close_frame_for};
use crate::protocol::{self, Front, Inbound, READ_ROOM, end_of_stream, take_data, write_buffer};
use crate::stream::{AsyncReadHalf, AsyncStream, AsyncWriteHalf};

/// A stream after a successful handshake.
#[derive(Debug)]
pub(crate) struct Handshaken {
    pub(crate) reader: AsyncReadHalf,
    pub(crate) writer: AsyncWriteHalf,
    pub(crate) decoder: FrameDecoder,
    pub(crate) peer: Hello,
    pub(crate) send_limits: Limits,
}

/// Exchanges hellos on `stream` by `deadline` (the handshake timeout, counted from when
/// the connection was made). On a mismatch the peer is told why with a close frame.
///
/// A side that holds tokens reads the peer's hello and `Auth` frame first and sends its
/// own hello only once the token is accepted: a refused peer gets a close and nothing else.
pub(crate) async fn handshake(
    stream: AsyncStream,
    config: &ConnectionConfig,
    deadline: Instant,
) -> Result<Handshaken> {
    let (mut reader, mut writer) = stream.into_split();
    let ours = config.hello();
    let mut decoder = FrameDecoder::new(*config.limits());
    let holds_tokens = config.accepted_tokens().is_some();
    let exchange = async {
        let mut opening = Vec::new();
        protocol::opening(config, &ours, &mut opening)?;
        // A server that refuses us may close before our hello arrives: its close frame,
        // which says why, is then still ours to read.
        let mut unsent = if holds_tokens {
            None
        } else {
            write_flushed(&mut writer, &opening)
                .await
                .err()
                .map(|err| Error::io("send hello", err))
        };
        let mut opening_frames = protocol::Opening::new(config, &ours);
        let agreed = loop {
            if let Some(frame) = decoder.next_frame()? {
                let step = opening_frames.on_frame(frame)?;
                if let Some(err) = unsent.take() {
                    return Err(err);
                }
                match step {
                    protocol::Step::More => continue,
                    protocol::Step::Done(theirs, send_limits) => break (theirs, send_limits),
                }
            }
            let n = match reader.read(decoder.read_buf()).await {
                Ok(n) => n,
                Err(err) => {
                    return Err(unsent
                        .take()
                        .unwrap_or(crate::stream::stream_error("read hello", err)));
                }
            };
            if n == 0 {
                return Err(unsent.take().unwrap_or(Error::new(
                    ErrorKind::PeerDied,
                    "peer closed the stream during the handshake",
                )));
            }
            decoder.commit(n);
        };
        if holds_tokens {
            write_flushed(&mut writer, &opening)
                .await
                .map_err(|err| Error::io("send hello", err))?;
        }
        Ok(agreed)
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "no hello from peer within {} ms",
                config.handshake_timeout().as_millis()
            ),
        )),
    };
    match outcome {
        Ok((peer, send_limits)) => Ok(Handshaken {
            reader,
            writer,
            decoder,
            peer,
            send_limits,
        }),
        Err(err) => {
            if !matches!(
                err.kind(),
                ErrorKind::PeerClosed | ErrorKind::PeerDied | ErrorKind::Io
            ) {
                let close = close_frame_for(&err);
                // The shutdown ends a WebSocket with its close frame (the verdict's code) and
                // a TLS stream with its close_notify.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    write_flushed(&mut writer, &close).await?;
                    writer.shutdown().await
                })
                .await;
            }
            Err(err)
        }
    }
}

/// Writes all of `bytes` and flushes (a TLS stream may hold records back until then).
async fn write_flushed(writer: &mut AsyncWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// The write side shared by both halves (the receive half answers pings through it).
///
/// A send half encodes into a buffer of its own (no lock per message) and hands whole
/// batches of frames to `pending` under a plain mutex (no await) when the batch reaches the
/// flush threshold, on flush, and when the half is dropped; the receive half queues its
/// control frames there directly. Whoever flushes takes the I/O lock, swaps the pending
/// bytes into the I/O buffer and writes them. Progress is recorded after every write, so a
/// flush future dropped midway never makes a frame go out twice or half.
#[derive(Debug)]
struct Writer {
    pending: std::sync::Mutex<Pending>,
    /// Set (after `pending.failed`) when the connection failed: lets a send refuse
    /// without taking the lock.
    failed: AtomicBool,
    io: Mutex<Io>,
    send_limits: Limits,
}

#[derive(Debug)]
struct Pending {
    out: FrameBuffer,
    failed: Option<ErrorKind>,
}

#[derive(Debug)]
struct Io {
    half: AsyncWriteHalf,
    buf: FrameBuffer,
    pos: usize,
}

impl Writer {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a frame (a control frame or a close) with `encode`; the next flush writes it.
    fn queue(&self, encode: impl FnOnce(&mut FrameBuffer, &Limits) -> Result<usize>) -> Result<()> {
        let mut pending = self.pending();
        if let Some(kind) = pending.failed {
            return Err(Error::new(kind, "connection failed earlier"));
        }
        encode(&mut pending.out, &self.send_limits)?;
        Ok(())
    }

    fn queue_control(&self, kind: FrameKind, id: u32) -> Result<()> {
        self.queue(|out, limits| out.push_raw(kind, id, &[], limits))
    }

    /// Moves a send half's batch of whole frames behind the frames already pending; `batch`
    /// is left empty (with capacity to reuse).
    fn hand_off(&self, batch: &mut FrameBuffer) -> Result<()> {
        if batch.is_empty() {
            return self.check();
        }
        let mut pending = self.pending();
        if let Some(kind) = pending.failed {
            batch.clear();
            return Err(Error::new(kind, "connection failed earlier"));
        }
        pending.out.append(batch);
        Ok(())
    }

    /// An error if the connection failed earlier.
    #[inline(always)]
    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_earlier());
        }
        Ok(())
    }

    #[cold]
    fn failed_earlier(&self) -> Error {
        let kind = self.pending().failed.unwrap_or(ErrorKind::Other);
        Error::new(kind, "connection failed earlier")
    }

    fn fail(&self, err: Error) -> Error {
        self.pending().failed = Some(err.kind());
        self.failed.store(true, Ordering::Release);
        err
    }

    /// Writes everything queued so far.
    async fn flush(&self) -> Result<()> {
        let mut guard = self.io.lock().await;
        let io = &mut *guard;
        loop {
            while io.pos < io.buf.len() {
                match io.half.write(&io.buf.as_slice()[io.pos..]).await {
                    Ok(0) => {
                        let err = Error::new(ErrorKind::PeerClosed, "peer stopped reading");
                        return Err(self.fail(err));
                    }
                    Ok(n) => io.pos += n,
                    Err(err) => return Err(self.fail(Error::io("write to peer", err))),
                }
            }
            // A TLS stream may hold records back until flushed (a no-op on plain sockets).
            if let Err(err) = io.half.flush().await {
                return Err(self.fail(Error::io("write to peer", err)));
            }
            io.buf.clear();
            io.pos = 0;
            let mut pending = self.pending();
            if let Some(kind) = pending.failed {
                return Err(Error::new(kind, "connection failed earlier"));
            }
            if pending.out.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut pending.out, &mut io.buf);
        }
    }
}

/// The sending half of an [`AsyncConnection`]. Cloning it gives another sender on the same
/// connection; frames from one clone are never interleaved with another's.
///
/// Each clone coalesces its frames in a buffer of its own; they go out (after whatever
/// was queued before) when it reaches the flush threshold, on [`flush`](Self::flush), or,
/// if the half is dropped, with the next flush of another half.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct AsyncSendHalf<T> {
    writer: Arc<Writer>,
    /// Whole frames queued by this half and not yet handed to the writer.
    batch: FrameBuffer,
    /// The connection's send settings, held by each half so that a send reads no shared
    /// memory but the failed flag. `batching`: the peer takes batch frames.
    send_limits: Limits,
    flush_threshold: usize,
    batching: bool,
    _message: PhantomData<fn(T)>,
}

impl<T> Clone for AsyncSendHalf<T> {
    fn clone(&self) -> Self {
        AsyncSendHalf {
            writer: Arc::clone(&self.writer),
            batch: FrameBuffer::default(),
            send_limits: self.send_limits,
            flush_threshold: self.flush_threshold,
            batching: self.batching,
            _message: PhantomData,
        }
    }
}

impl<T> Drop for AsyncSendHalf<T> {
    fn drop(&mut self) {
        // Queued frames stay queued: another half's flush writes them.
        let _ = self.writer.hand_off(&mut self.batch);
    }
}

/// The future of [`AsyncSendHalf::send`] and [`AsyncConnection::send`].
///
/// The message was queued when `send` was called; the future only writes the buffer out when
/// that made it reach the flush threshold. Dropping it unpolled or midway loses nothing: the
/// message stays queued and goes out with the next flush, never twice.
///
/// Most sends never write, and their future is one small value: no state machine for the
/// write is built (nor moved) for them.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[must_use = "the message is queued, but a full buffer is written only when this is awaited"]
pub struct SendFuture<'a> {
    /// `None` once the message is queued and nothing needs writing: the common case, a
    /// future of two words. The rare write (or an error) is boxed.
    write: Option<Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>>,
}

impl<'a> SendFuture<'a> {
    #[inline(always)]
    fn new<T: Serialize + Sync>(half: &'a mut AsyncSendHalf<T>, message: &T) -> SendFuture<'a> {
        let write: Option<Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>> =
            match half.queue(message) {
                Ok(false) => None,
                Ok(true) => Some(Box::pin(half.flush())),
                Err(err) => Some(Box::pin(std::future::ready(Err(err)))),
            };
        SendFuture { write }
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<()>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<()>> {
        match &mut self.get_mut().write {
            None => Poll::Ready(Ok(())),
            Some(write) => write.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for SendFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.write {
            None => "queued",
            Some(_) => "writing",
        };
        f.debug_struct("SendFuture").field("state", &state).finish()
    }
}

impl<T: Serialize + Sync> AsyncSendHalf<T> {
    /// Queues `message` at once; the returned future writes the buffer out if it reached the
    /// flush threshold (see [`SendFuture`]).
    #[inline(always)]
    pub fn send(&mut self, message: &T) -> SendFuture<'_> {
        SendFuture::new(self, message)
    }

    /// Encodes `message` into this half's batch, without I/O; true when the batch reached
    /// the flush threshold.
    #[inline(always)]
    fn queue(&mut self, message: &T) -> Result<bool> {
        self.writer.check()?;
        if self.batching {
            self.batch.push_batched(message, &self.send_limits)?;
        } else {
            self.batch
                .push(FrameKind::Data, 0, message, &self.send_limits)?;
        }
        Ok(self.batch.len() >= self.flush_threshold)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.hand_off(&mut self.batch)?;
        self.writer.flush().await
    }

    /// Sends a close frame with `code` and `reason`, flushes, and shuts the stream's write
    /// side down where the transport supports it.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.writer.hand_off(&mut self.batch)?;
        self.writer
            .queue(|out, _| out.with_vec(|out| Close::new(code, reason).encode_frame(out)))?;
        self.writer.flush().await?;
        let _ = self.writer.io.lock().await.half.shutdown().await;
        self.writer.fail(Error::new(ErrorKind::Closed, "closed"));
        Ok(())
    }
}

impl<T: Serialize + Sync> AsyncSender for AsyncSendHalf<T> {
    type Message = T;

    fn send(&mut self, message: &T) -> impl Future<Output = Result<()>> + Send {
        AsyncSendHalf::send(self, message)
    }

    async fn flush(&mut self) -> Result<()> {
        AsyncSendHalf::flush(self).await
    }
}

/// The receiving half of an [`AsyncConnection`]. It answers pings and watches the peer's
/// liveness while a `recv` is pending.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct AsyncRecvHalf<T> {
    reader: AsyncReadHalf,
    decoder: FrameDecoder,
    liveness: Liveness,
    writer: Arc<Writer>,
    failed: Option<ErrorKind>,
    _message: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send> AsyncRecvHalf<T> {
    fn fail(&mut self, err: Error) -> Error {
        self.failed = Some(err.kind());
        err
    }

    /// Receives the next message. Cancel-safe: a dropped future loses nothing.
    pub async fn recv(&mut self) -> Result<T> {
        self.wait_for_data().await?;
        self.take_data()
    }

    /// Receives the next message as `M`, which may borrow from the receive buffer (`&str`,
    /// `&[u8]` fields: no allocation, no copy); `M` must have `T`'s wire format. See
    /// [`Connection::recv_ref`](crate::Connection::recv_ref). Cancel-safe.
    pub async fn recv_ref<'a, M: Deserialize<'a>>(&'a mut self) -> Result<M> {
        self.wait_for_data().await?;
        self.take_data()
    }

    fn take_data<'a, M: Deserialize<'a>>(&'a mut self) -> Result<M> {
        take_data(&mut self.decoder)
    }

    /// Waits until a data frame is at the front of the buffer, answering pings and watching
    /// the peer's liveness meanwhile.
    async fn wait_for_data(&mut self) -> Result<()> {
        if let Some(kind) = self.failed {
            return Err(Error::new(kind, "connection failed earlier"));
        }
        loop {
            let inbound = match protocol::front(&mut self.decoder) {
                Front::Data => return Ok(()),
                Front::More => None,
                Front::Control(inbound) => Some(inbound),
            };
            match inbound {
                Some(Inbound::Ping(id)) => {
                    self.writer.queue_control(FrameKind::Pong, id)?;
                    self.writer.flush().await?;
                    continue;
                }
                Some(Inbound::Ignore) => continue,
                Some(Inbound::Closed(err)) => return Err(self.fail(err)),
                Some(Inbound::Bad(err)) => {
                    let close = close_frame_for(&err);
                    if self
                        .writer
                        .queue(|out, _| {
                            out.extend_from_slice(&close);
                            Ok(close.len())
                        })
                        .is_ok()
                    {
                        let _ = self.writer.flush().await;
                    }
                    return Err(self.fail(err));
                }
                None => {}
            }
            let wait = match self.liveness.check(std::time::Instant::now()) {
                Beat::Wait(wait) => wait,
                Beat::Ping(nonce, wait) => {
                    self.writer.queue_control(FrameKind::Ping, nonce)?;
                    self.writer.flush().await?;
                    wait
                }
            };
            let read = self
                .liveness
                .within(wait, self.reader.read(self.decoder.read_buf()))
                .await;
            match read {
                None => {
                    if let Err(err) = self.liveness.expired(std::time::Instant::now()) {
                        return Err(self.fail(err));
                    }
                }
                Some(Ok(0)) => {
                    let err = end_of_stream(&self.decoder);
                    return Err(self.fail(err));
                }
                Some(Ok(n)) => {
                    self.decoder.commit(n);
                    self.liveness.heard();
                }
                Some(Err(err)) => {
                    let err = crate::stream::stream_error("read from peer", err);
                    return Err(self.fail(err));
                }
            }
        }
    }
}

impl<T: DeserializeOwned + Send> AsyncReceiver for AsyncRecvHalf<T> {
    type Message = T;

    async fn recv(&mut self) -> Result<T> {
        AsyncRecvHalf::recv(self).await
    }
}

/// A tokio connection carrying messages of type `T` both ways.
///
/// Sends are coalesced and written at the flush threshold or on [`flush`](Self::flush).
/// Split it with [`into_split`](Self::into_split) to send and receive from different tasks.
///
/// ```
/// use ipc_socket::{AsyncConnection, ConnectionConfig, Event, Server, ServerConfig};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = ConnectionConfig::new::<u64>();
/// let mut server = Server::<u64>::bind(ServerConfig::new(
///     "tcp:127.0.0.1:0".parse()?,
///     config.clone(),
/// ))
/// .await?;
/// let mut client = AsyncConnection::<u64>::connect(server.address(), config).await?;
/// client.send(&41).await?;
/// client.flush().await?;
/// loop {
///     match server.next_event().await {
///         Some(Event::Message { conn, message }) => {
///             server.handle().send(conn, &(message + 1)).await?;
///             break;
///         }
///         Some(_) => continue,
///         None => unreachable!(),
///     }
/// }
/// assert_eq!(client.recv().await?, 42);
/// # Ok::<(), ipc_core::Error>(())
/// # }).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct AsyncConnection<T> {
    send: AsyncSendHalf<T>,
    recv: AsyncRecvHalf<T>,
    peer: Hello,
}

impl<T: Serialize + DeserializeOwned + Send + Sync> AsyncConnection<T> {
    /// Connects to `address` and performs the handshake; must run inside a tokio runtime.
    pub async fn connect(address: &Address, config: ConnectionConfig) -> Result<Self> {
        let deadline = Instant::now() + config.handshake_timeout();
        let stream = AsyncStream::connect(address, &config, deadline).await?;
        let shaken = handshake(stream, &config, deadline)
            .await
            .map_err(|err| err.context(format_args!("handshake with {address}")))?;
        Ok(AsyncConnection::from_handshaken(shaken, &config))
    }

    pub(crate) fn from_handshaken(shaken: Handshaken, config: &ConnectionConfig) -> Self {
        let writer = Arc::new(Writer {
            pending: std::sync::Mutex::new(Pending {
                out: write_buffer(config),
                failed: None,
            }),
            failed: AtomicBool::new(false),
            io: Mutex::new(Io {
                half: shaken.writer,
                buf: write_buffer(config),
                pos: 0,
            }),
            send_limits: shaken.send_limits,
        });
        AsyncConnection {
            send: AsyncSendHalf {
                send_limits: shaken.send_limits,
                flush_threshold: config.flush_threshold(),
                batching: shaken.peer.features() & FEATURE_BATCH != 0,
                writer: Arc::clone(&writer),
                batch: write_buffer(config),
                _message: PhantomData,
            },
            recv: AsyncRecvHalf {
                reader: shaken.reader,
                decoder: {
                    let mut decoder = shaken.decoder;
                    decoder.reserve(READ_ROOM);
                    decoder
                },
                liveness: Liveness::new(config.heartbeat()),
                writer,
                failed: None,
                _message: PhantomData,
            },
            peer: shaken.peer,
        }
    }

    /// The peer's hello.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer
    }

    /// Queues `message` at once; the returned future writes the buffer out if it reached the
    /// flush threshold (see [`SendFuture`]).
    #[inline(always)]
    pub fn send(&mut self, message: &T) -> SendFuture<'_> {
        self.send.send(message)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        self.send.flush().await
    }

    /// Flushes, then receives the next message.
    pub async fn recv(&mut self) -> Result<T> {
        self.send.flush().await?;
        self.recv.recv().await
    }

    /// Flushes, then receives the next message as `M`, borrowing from the receive buffer
    /// (see [`AsyncRecvHalf::recv_ref`]).
    pub async fn recv_ref<'a, M: Deserialize<'a>>(&'a mut self) -> Result<M> {
        self.send.flush().await?;
        self.recv.recv_ref().await
    }

    /// Sends a normal close frame and flushes.
    pub async fn close(mut self) -> Result<()> {
        self.send.close(CloseCode::NORMAL, "").await
    }

    /// The two halves, to use from different tasks.
    pub fn into_split(self) -> (AsyncSendHalf<T>, AsyncRecvHalf<T>) {
        (self.send, self.recv)
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync> AsyncSender for AsyncConnection<T> {
    type Message = T;

    fn send(&mut self, message: &T) -> impl Future<Output = Result<()>> + Send {
        AsyncConnection::send(self, message)
    }

    async fn flush(&mut self) -> Result<()> {
        AsyncConnection::flush(self).await
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync> AsyncReceiver for AsyncConnection<T> {
    type Message = T;

    async fn recv(&mut self) -> Result<T> {
        AsyncConnection::recv(self).await
    }
}
