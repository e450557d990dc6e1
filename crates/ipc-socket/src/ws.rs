//! The WebSocket layer (`ws://host:port/path`, and `wss://` over the TLS streams of `tls.rs`):
//! RFC 6455 through tungstenite, generic over the stream below it, presented to the rest of
//! the crate as a byte stream of ipc-core frames.
//!
//! The mapping (PROTOCOL.md, "WebSocket mapping"): every binary message carries one or more
//! whole frames. The writer cuts messages only between frames: bytes of a frame written in
//! pieces are held until the frame is complete. The reader checks that every message ends
//! on a frame boundary, and refuses text messages. Both directions keep messages within
//! [`message_limit`] of the receiver, which tungstenite enforces from the frame header on,
//! before it buffers the payload.
//!
//! The server side does its own HTTP/1.1: one request per TCP connection, a few static files,
//! an `Origin` check before the upgrade (the browser security of the crate README). Every
//! step of a handshake (the request, the upgrade, on a blocking stream each read) runs
//! against the connection's one handshake deadline, which TLS before it and the ipc hello
//! after it share.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
#[cfg(feature = "tokio")]
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "tokio")]
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

#[cfg(feature = "tokio")]
use futures_core::Stream as _;
#[cfg(feature = "tokio")]
use futures_sink::Sink as _;
use ipc_core::{Error, ErrorKind, HEADER_LEN, Result};
#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
#[cfg(feature = "tokio")]
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Message};

/// Small frames are grouped into messages of at most this many bytes; a larger frame travels
/// alone in a message of its own size.
pub(crate) const MESSAGE_GROUP_LEN: usize = 64 * 1024;

/// The longest HTTP request head the server reads (request line and headers).
const MAX_HEAD_LEN: usize = 8 * 1024;

/// The largest message a receiver whose `max_frame_len` is `max_frame_len` accepts: one frame
/// of the largest payload with its header, or a group of small frames.
pub(crate) fn message_limit(max_frame_len: u32) -> usize {
    (max_frame_len as usize)
        .saturating_add(HEADER_LEN)
        .max(MESSAGE_GROUP_LEN)
}

/// tungstenite's settings for a receiver with this `max_frame_len`: a message or a WebSocket
/// frame over [`message_limit`] is refused from its header, before anything is buffered.
pub(crate) fn ws_config(max_frame_len: u32) -> WebSocketConfig {
    let limit = message_limit(max_frame_len);
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Every message is flushed at once (see `poll_write`); no write-side batching.
        .write_buffer_size(0)
}

/// Any stream a WebSocket runs over (TCP, or TLS over TCP).
#[cfg(feature = "tokio")]
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
#[cfg(feature = "tokio")]
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> AsyncIo for S {}

/// Any blocking stream a WebSocket runs over, with the timeouts `Connection` sets.
pub(crate) trait SyncIo: Read + Write + Send + 'static {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

impl SyncIo for std::net::TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        std::net::TcpStream::set_nonblocking(self, nonblocking)
    }
}

#[cfg(feature = "tokio")]
type BoxedIo = Box<dyn AsyncIo>;

/// The time left until `deadline`, or the timeout error `what` (with the configured
/// `timeout` in it) once it has passed.
fn time_left(deadline: Instant, timeout: Duration, what: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::new(
            ErrorKind::Timeout,
            format!("{what} within {} ms", timeout.as_millis()),
        ));
    }
    Ok(left)
}

/// A WebSocket close reason: at most 123 bytes, cut at a character boundary.
fn close_reason(reason: &str) -> tungstenite::Utf8Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].into()
}

/// An error carried through `io::Error` up to the frame reader, which unwraps it
/// ([`unwrap_io`]) so that the peer gets the ipc close code that matches.
fn protocol_io(kind: ErrorKind, message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::new(kind, message))
}

/// The ipc error inside an `io::Error` made by this module, else `Error::io(context, err)`.
pub(crate) fn unwrap_io(context: &'static str, err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::InvalidData
        && let Some(inner) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
    {
        return Error::new(inner.kind(), inner.to_string());
    }
    Error::io(context, err)
}

/// Checks that `message` is a sequence of whole frames (only their lengths are read here: the
/// frame decoder above validates the headers).
fn check_whole_frames(message: &[u8]) -> std::result::Result<(), io::Error> {
    let mut at = 0;
    while at < message.len() {
        let Some(header) = message.get(at..at + HEADER_LEN) else {
            return Err(protocol_io(
                ErrorKind::Protocol,
                format!(
                    "websocket message of {} bytes ends inside a frame header at byte {at} (a message carries whole frames)",
                    message.len()
                ),
            ));
        };
        let payload = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let frame_len = HEADER_LEN as u64 + u64::from(payload);
        if (at as u64) + frame_len > message.len() as u64 {
            return Err(protocol_io(
                ErrorKind::Protocol,
                format!(
                    "websocket message of {} bytes ends inside a frame of {frame_len} bytes starting at byte {at} (a message carries whole frames)",
                    message.len()
                ),
            ));
        }
        at += frame_len as usize;
    }
    Ok(())
}

/// What a received WebSocket item means for the frame reader.
enum Received {
    Bytes(Bytes),
    /// A control message or an empty binary message: nothing for the reader.
    Nothing,
    End,
}

/// Turns a tungstenite read into bytes, the end, or an error (with the close code to send).
fn received(
    item: Option<std::result::Result<Message, tungstenite::Error>>,
) -> std::result::Result<Received, (io::Error, Option<CloseFrame>)> {
    let fail = |kind: ErrorKind, message: String| {
        let close = CloseFrame {
            code: match kind {
                ErrorKind::TooLarge => WsCloseCode::Size,
                ErrorKind::InvalidInput => WsCloseCode::Unsupported,
                _ => WsCloseCode::Protocol,
            },
            reason: close_reason(&message),
        };
        let kind = if kind == ErrorKind::InvalidInput {
            ErrorKind::Protocol
        } else {
            kind
        };
        Err((protocol_io(kind, message), Some(close)))
    };
    match item {
        None => Ok(Received::End),
        Some(Ok(Message::Binary(bytes))) => match check_whole_frames(&bytes) {
            Ok(()) if bytes.is_empty() => Ok(Received::Nothing),
            Ok(()) => Ok(Received::Bytes(bytes)),
            Err(err) => {
                let reason = close_reason(&err.to_string());
                Err((
                    err,
                    Some(CloseFrame {
                        code: WsCloseCode::Protocol,
                        reason,
                    }),
                ))
            }
        },
        Some(Ok(Message::Text(text))) => fail(
            ErrorKind::InvalidInput,
            format!(
                "websocket text message of {} bytes (only binary messages carry frames)",
                text.len()
            ),
        ),
        Some(Ok(Message::Close(_))) => Ok(Received::End),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(Received::Nothing),
        Some(Err(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { size, max_size },
        ))) => fail(
            ErrorKind::TooLarge,
            format!("websocket message of {size} bytes exceeds limit of {max_size}"),
        ),
        Some(Err(tungstenite::Error::Io(err))) => Err((err, None)),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            Ok(Received::End)
        }
        Some(Err(err)) => fail(ErrorKind::Protocol, format!("websocket: {err}")),
    }
}

/// Groups written bytes into messages of whole frames.
#[derive(Debug, Default)]
struct Framer {
    /// Bytes not yet handed to the WebSocket: whole frames, then at most one partial frame.
    pending: Vec<u8>,
    /// How many bytes at the front of `pending` are whole frames.
    whole: usize,
    /// The header of the partial frame, while it is incomplete.
    header: [u8; HEADER_LEN],
    header_have: usize,
    /// Payload bytes of the partial frame still to come (0: between frames or in a header).
    payload_left: u64,
}

impl Framer {
    /// Takes `buf`; pushes onto `out` every message that is complete.
    fn absorb(&mut self, mut buf: &[u8], out: &mut VecDeque<Bytes>) {
        while !buf.is_empty() {
            if self.payload_left == 0 {
                let take = (HEADER_LEN - self.header_have).min(buf.len());
                self.header[self.header_have..self.header_have + take]
                    .copy_from_slice(&buf[..take]);
                self.header_have += take;
                self.pending.extend_from_slice(&buf[..take]);
                buf = &buf[take..];
                if self.header_have < HEADER_LEN {
                    break;
                }
                self.header_have = 0;
                let h = &self.header;
                let payload = u64::from(u32::from_le_bytes([h[8], h[9], h[10], h[11]]));
                let frame_len = HEADER_LEN as u64 + payload;
                if self.whole > 0 && self.whole as u64 + frame_len > MESSAGE_GROUP_LEN as u64 {
                    // The group is full: it leaves as a message, the new frame starts the next.
                    let rest = self.pending.split_off(self.whole);
                    out.push_back(std::mem::replace(&mut self.pending, rest).into());
                    self.whole = 0;
                }
                self.payload_left = payload;
                if payload == 0 {
                    self.whole = self.pending.len();
                }
            } else {
                let take = (self.payload_left.min(buf.len() as u64)) as usize;
                self.pending.extend_from_slice(&buf[..take]);
                self.payload_left -= take as u64;
                buf = &buf[take..];
                if self.payload_left == 0 {
                    self.whole = self.pending.len();
                }
            }
        }
        if self.whole > 0 {
            let rest = self.pending.split_off(self.whole);
            out.push_back(std::mem::replace(&mut self.pending, rest).into());
            self.whole = 0;
        }
    }
}

/// The state both halves of an async WebSocket share. Every poll takes the lock briefly; the
/// WebSocket keeps separate wakers for reading and writing.
#[cfg(feature = "tokio")]
struct AsyncShared {
    ws: WebSocketStream<BoxedIo>,
    /// The close frame to send when the writer shuts down (set by the reader on bad input).
    close: Option<CloseFrame>,
}

fn lock<U>(mutex: &Mutex<U>) -> std::sync::MutexGuard<'_, U> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ws_io(err: tungstenite::Error) -> io::Error {
    match err {
        tungstenite::Error::Io(err) => err,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        err => io::Error::other(err),
    }
}

/// An async WebSocket carrying ipc frames, before it is split.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncWs {
    shared: Arc<Mutex<AsyncShared>>,
    peer: String,
}

#[cfg(feature = "tokio")]
impl fmt::Debug for AsyncWs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWs").field("peer", &self.peer).finish()
    }
}

#[cfg(feature = "tokio")]
impl AsyncWs {
    fn new(ws: WebSocketStream<BoxedIo>, peer: String) -> AsyncWs {
        AsyncWs {
            shared: Arc::new(Mutex::new(AsyncShared { ws, close: None })),
            peer,
        }
    }

    pub(crate) fn into_split(self) -> (AsyncWsRead, AsyncWsWrite) {
        (
            AsyncWsRead {
                shared: Arc::clone(&self.shared),
                current: Bytes::new(),
                ended: false,
            },
            AsyncWsWrite {
                shared: self.shared,
                framer: Framer::default(),
                queue: VecDeque::new(),
                unflushed: false,
                in_flight: None,
                closing: false,
            },
        )
    }
}

/// The receiving half: the bytes of binary messages, checked to be whole frames.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncWsRead {
    shared: Arc<Mutex<AsyncShared>>,
    current: Bytes,
    ended: bool,
}

#[cfg(feature = "tokio")]
impl fmt::Debug for AsyncWsRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWsRead")
            .field("buffered", &self.current.len())
            .finish()
    }
}

#[cfg(feature = "tokio")]
impl AsyncRead for AsyncWsRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut shared = lock(&this.shared);
            let item = ready!(Pin::new(&mut shared.ws).poll_next(cx));
            match received(item) {
                Ok(Received::Bytes(bytes)) => this.current = bytes,
                Ok(Received::Nothing) => {}
                Ok(Received::End) => this.ended = true,
                Err((err, close)) => {
                    if close.is_some() {
                        shared.close = close;
                    }
                    this.ended = true;
                    return Poll::Ready(Err(err));
                }
            }
        }
    }
}

/// The sending half: written bytes leave as binary messages of whole frames.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncWsWrite {
    shared: Arc<Mutex<AsyncShared>>,
    framer: Framer,
    queue: VecDeque<Bytes>,
    unflushed: bool,
    /// The length of the buffer taken by a `poll_write` that returned `Pending` while its
    /// messages were being sent: the retry with the same buffer completes it.
    in_flight: Option<usize>,
    closing: bool,
}

#[cfg(feature = "tokio")]
impl fmt::Debug for AsyncWsWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWsWrite")
            .field("pending", &self.framer.pending.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

#[cfg(feature = "tokio")]
impl AsyncWsWrite {
    /// Hands every queued message to the WebSocket and flushes it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        while let Some(message) = self.queue.front() {
            ready!(Pin::new(&mut shared.ws).poll_ready(cx)).map_err(ws_io)?;
            let message = Message::Binary(message.clone());
            self.queue.pop_front();
            Pin::new(&mut shared.ws)
                .start_send(message)
                .map_err(ws_io)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut shared.ws).poll_flush(cx)).map_err(ws_io)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl AsyncWrite for AsyncWsWrite {
    /// Returns once the messages completed by `buf` are flushed, so that no caller has to
    /// flush (a frame still incomplete waits for the rest of its bytes).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.in_flight.is_none() {
            // What earlier calls left (after an error or a cancelled write) goes first.
            ready!(this.poll_drain(cx))?;
            this.framer.absorb(buf, &mut this.queue);
            this.in_flight = Some(buf.len());
        }
        let drained = ready!(this.poll_drain(cx));
        let n = this.in_flight.take().unwrap_or(0);
        Poll::Ready(drained.map(|()| n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    /// Sends what is queued, then a WebSocket close frame: the reader's verdict on bad
    /// input, else 1000 (normal).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let mut shared = lock(&this.shared);
        if !this.closing {
            let close = shared.close.take().unwrap_or(CloseFrame {
                code: WsCloseCode::Normal,
                reason: "".into(),
            });
            ready!(Pin::new(&mut shared.ws).poll_ready(cx)).map_err(ws_io)?;
            this.closing = true;
            if let Err(err) = Pin::new(&mut shared.ws).start_send(Message::Close(Some(close))) {
                return Poll::Ready(match err {
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                        Ok(())
                    }
                    err => Err(ws_io(err)),
                });
            }
        }
        match ready!(Pin::new(&mut shared.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(err) => Poll::Ready(Err(ws_io(err))),
        }
    }
}

/// The parts of a `ws://host:port/path` address.
pub(crate) fn url(host_port: &str, path: &str) -> String {
    format!("ws://{host_port}{path}")
}

/// The first byte a client's stream received, kept for the upgrade's error: a TLS record
/// (0x15 alert, 0x16 handshake) instead of `HTTP/1.1 101` means a `wss://` or `tls:` port.
#[derive(Clone, Debug, Default)]
struct FirstByte(Arc<AtomicU16>);

impl FirstByte {
    fn note(&self, received: &[u8]) {
        if let Some(&byte) = received.first()
            && self.0.load(Ordering::Relaxed) == 0
        {
            self.0.store(0x100 | u16::from(byte), Ordering::Relaxed);
        }
    }

    fn get(&self) -> Option<u8> {
        let seen = self.0.load(Ordering::Relaxed);
        (seen != 0).then_some((seen & 0xff) as u8)
    }
}

/// A client's stream that notes its first byte ([`FirstByte`]); otherwise the stream.
struct Noted<S> {
    inner: S,
    first: FirstByte,
}

impl<S: Read> Read for Noted<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.first.note(&buf[..n]);
        Ok(n)
    }
}

impl<S: Write> Write for Noted<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: SyncIo> SyncIo for Noted<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }
}

#[cfg(feature = "tokio")]
impl<S: AsyncIo> AsyncRead for Noted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.first.note(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl<S: AsyncIo> AsyncWrite for Noted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn handshake_error(url: &str, err: tungstenite::Error, first: &FirstByte) -> Error {
    if url.starts_with("ws://")
        && matches!(first.get(), Some(0x15 | 0x16))
        && !matches!(err, tungstenite::Error::Http(_))
    {
        return Error::new(
            ErrorKind::Protocol,
            format!(
                "websocket upgrade to {url}: the server speaks TLS (it answered with a TLS record, not http): use a wss:// address ({err})"
            ),
        );
    }
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let kind = match status.as_u16() {
                403 => ErrorKind::PermissionDenied,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::Protocol,
            };
            let body = response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).trim().to_owned())
                .unwrap_or_default();
            Error::new(
                kind,
                format!("websocket upgrade to {url} refused: {status} {body}"),
            )
        }
        // Over TLS, the server's verdict on this side's certificate (TLS 1.3 tells it after
        // the client's handshake is done) arrives as a read error of the upgrade.
        #[cfg(feature = "tls")]
        tungstenite::Error::Io(err)
            if err
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            crate::tls::io_error(&format!("websocket upgrade to {url}"), err)
        }
        tungstenite::Error::Io(err) => Error::io(format!("websocket upgrade to {url}"), err),
        err => Error::new(
            ErrorKind::Protocol,
            format!("websocket upgrade to {url}: {err}"),
        ),
    }
}

/// Opens a WebSocket over `stream` (client side), by `deadline` (the handshake timeout
/// `timeout` counted from the connect).
#[cfg(feature = "tokio")]
pub(crate) async fn connect_async<S: AsyncIo>(
    stream: S,
    url: &str,
    max_frame_len: u32,
    deadline: Instant,
    timeout: Duration,
) -> Result<AsyncWs> {
    let first = FirstByte::default();
    let stream: BoxedIo = Box::new(Noted {
        inner: stream,
        first: first.clone(),
    });
    let upgrade =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(max_frame_len)));
    match tokio::time::timeout_at(deadline.into(), upgrade).await {
        Ok(Ok((ws, _response))) => Ok(AsyncWs::new(ws, url.to_owned())),
        Ok(Err(err)) => Err(handshake_error(url, err, &first)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "websocket upgrade to {url} not answered within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// A static file served over HTTP beside a WebSocket endpoint.
#[derive(Clone, Debug)]
pub(crate) struct HttpFile {
    pub(crate) path: String,
    pub(crate) content_type: String,
    pub(crate) body: Arc<[u8]>,
}

/// What the HTTP side of a `ws://` listener serves and allows.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpSettings {
    /// `Origin`s allowed besides the page's own (exact, ASCII case-insensitive; `*`: any).
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) files: Vec<HttpFile>,
}

/// The verdict on one HTTP request.
#[derive(Debug)]
enum Answer {
    /// Upgrade: the 101 response to write.
    Upgrade(Vec<u8>),
    /// A plain response, after which the connection closes; `Some` error when it refused.
    Respond(Vec<u8>, Option<Error>),
}

fn response(status: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn refuse(status: &str, kind: ErrorKind, message: String) -> Answer {
    let body = format!("{message}\n");
    Answer::Respond(
        response(status, "text/plain; charset=utf-8", body.as_bytes(), false),
        Some(Error::new(kind, message)),
    )
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|value| {
        String::from_utf8_lossy(value)
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// Whether a browser page from `origin` may open the WebSocket: the allow-list, or the
/// page's own origin (its host:port is the `Host` header) when that host is `localhost`, an
/// IP address, or the listen address's host, so that a DNS-rebinding page (a name of the
/// attacker's that resolves to this machine) is refused.
///
/// On a `wss://` listener the page's own origin is `https://` only (no plain page can share
/// the TLS port); a `ws://` listener takes `http://` and `https://` (a TLS proxy in front
/// of it serves `https://` pages).
fn origin_allowed(origin: &str, host: Option<&str>, listen: &WsListen) -> bool {
    if listen
        .settings
        .allowed_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(host) = host else { return false };
    let authority = match origin.strip_prefix("https://") {
        Some(authority) => Some(authority),
        None if listen.secure => None,
        None => origin.strip_prefix("http://"),
    };
    let Some(authority) = authority else {
        return false;
    };
    if !authority.eq_ignore_ascii_case(host) {
        return false;
    }
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case(&listen.host)
}

/// Decides what to do with a complete request head.
fn answer(request: &httparse::Request<'_, '_>, listen: &WsListen) -> Answer {
    let ws_path = listen.path.as_str();
    let settings = &*listen.settings;
    let method = request.method.unwrap_or("");
    let full_path = request.path.unwrap_or("");
    let path = full_path.split('?').next().unwrap_or("");
    let headers = &*request.headers;
    let upgrade = has_token(header(headers, "upgrade"), "websocket");
    if !upgrade {
        if method != "GET" && method != "HEAD" {
            return refuse(
                "405 Method Not Allowed",
                ErrorKind::InvalidInput,
                format!("http method {method} not allowed (only GET and HEAD)"),
            );
        }
        return match settings.files.iter().find(|file| file.path == path) {
            Some(file) => Answer::Respond(
                response("200 OK", &file.content_type, &file.body, method == "HEAD"),
                None,
            ),
            None if path == ws_path => refuse(
                "426 Upgrade Required",
                ErrorKind::Protocol,
                format!("{path} is a websocket endpoint: plain http request refused"),
            ),
            None => refuse(
                "404 Not Found",
                ErrorKind::NotFound,
                format!("nothing is served at {path}"),
            ),
        };
    }
    if path != ws_path {
        return refuse(
            "404 Not Found",
            ErrorKind::NotFound,
            format!("no websocket endpoint at {path} (it is at {ws_path})"),
        );
    }
    if method != "GET" || !has_token(header(headers, "connection"), "upgrade") {
        return refuse(
            "400 Bad Request",
            ErrorKind::Protocol,
            "websocket upgrade must be a GET with Connection: Upgrade".to_owned(),
        );
    }
    if header(headers, "sec-websocket-version") != Some(b"13".as_slice()) {
        return Answer::Respond(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            Some(Error::new(ErrorKind::Protocol, "websocket version is not 13")),
        );
    }
    let Some(key) = header(headers, "sec-websocket-key") else {
        return refuse(
            "400 Bad Request",
            ErrorKind::Protocol,
            "websocket upgrade without Sec-WebSocket-Key".to_owned(),
        );
    };
    if let Some(origin) = header(headers, "origin") {
        let origin = String::from_utf8_lossy(origin);
        let host = header(headers, "host").map(String::from_utf8_lossy);
        if !origin_allowed(&origin, host.as_deref(), listen) {
            return refuse(
                "403 Forbidden",
                ErrorKind::PermissionDenied,
                format!("websocket from origin {origin} is not allowed"),
            );
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    Answer::Upgrade(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// Parses what arrived so far: `Ok(None)` if the head is incomplete, else the answer and
/// how many bytes the head took.
fn parse_head(head: &[u8], listen: &WsListen) -> Option<(Answer, usize)> {
    // A TLS record (a ClientHello) where a request line belongs: a `wss://` or `tls:`
    // client on a plain port. Said at once, without waiting for more of it.
    if head.first() == Some(&0x16) {
        return Some((
            refuse(
                "400 Bad Request",
                ErrorKind::Protocol,
                "the peer speaks TLS: this is a plain ws:// listener (use ws:// on both sides, or a wss:// listener)".to_owned(),
            ),
            head.len(),
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(used)) => Some((answer(&request, listen), used)),
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD_LEN => Some((
            refuse(
                "431 Request Header Fields Too Large",
                ErrorKind::TooLarge,
                format!("http request head over {MAX_HEAD_LEN} bytes"),
            ),
            head.len(),
        )),
        Ok(httparse::Status::Partial) => None,
        Err(err) => Some((
            refuse(
                "400 Bad Request",
                ErrorKind::Protocol,
                format!("malformed http request: {err}"),
            ),
            head.len(),
        )),
    }
}

/// The server side of one TCP connection to a `ws://` or `wss://` listener.
#[derive(Clone, Debug)]
pub(crate) struct WsListen {
    pub(crate) path: String,
    pub(crate) host: String,
    pub(crate) settings: Arc<HttpSettings>,
    /// A `wss://` listener: its pages' own origin is `https://HOST:PORT`.
    pub(crate) secure: bool,
}

/// What came of an HTTP request.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum Accepted {
    /// A WebSocket carrying ipc frames.
    Ws(AsyncWs),
    /// A file was served (the connection is closed).
    Served,
}

/// Reads one HTTP request (by `deadline`, the handshake timeout `timeout` counted from the
/// accept), and upgrades it, serves a file, or refuses it.
#[cfg(feature = "tokio")]
pub(crate) async fn accept_async<S: AsyncIo>(
    mut stream: S,
    listen: &WsListen,
    max_frame_len: u32,
    (deadline, timeout): (Instant, Duration),
    peer: String,
) -> Result<Accepted> {
    let read_head = async {
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream
                .read(&mut chunk[..(MAX_HEAD_LEN - head.len()).clamp(1, 1024)])
                .await
                .map_err(|err| Error::io("read http request", err))?;
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::PeerDied,
                    format!("http request ended after {} bytes", head.len()),
                ));
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some((answer, used)) = parse_head(&head, listen) {
                let rest = head.split_off(used.min(head.len()));
                return Ok((answer, rest));
            }
        }
    };
    let (answer, rest) = match tokio::time::timeout_at(deadline.into(), read_head).await {
        Ok(outcome) => outcome?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("no complete http request within {} ms", timeout.as_millis()),
            ));
        }
    };
    match answer {
        Answer::Upgrade(reply) => {
            stream
                .write_all(&reply)
                .await
                .map_err(|err| Error::io("write http upgrade response", err))?;
            let boxed: BoxedIo = Box::new(stream);
            let ws = WebSocketStream::from_partially_read(
                boxed,
                rest,
                Role::Server,
                Some(ws_config(max_frame_len)),
            )
            .await;
            Ok(Accepted::Ws(AsyncWs::new(ws, peer)))
        }
        Answer::Respond(reply, refusal) => {
            let _ = tokio::time::timeout(timeout, async {
                stream.write_all(&reply).await?;
                stream.shutdown().await
            })
            .await;
            match refusal {
                None => Ok(Accepted::Served),
                Some(err) => Err(err),
            }
        }
    }
}

/// A blocking WebSocket carrying ipc frames (one lock: a `Connection` is used from one
/// thread at a time).
pub(crate) struct SyncWs {
    inner: Mutex<SyncInner>,
}

struct SyncInner {
    ws: tungstenite::WebSocket<Box<dyn SyncIo>>,
    current: Bytes,
    framer: Framer,
    queue: VecDeque<Bytes>,
    ended: bool,
    close: Option<CloseFrame>,
}

impl fmt::Debug for SyncWs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncWs").finish_non_exhaustive()
    }
}

fn is_blocked(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl SyncInner {
    /// Sends the queued messages; a timeout leaves the rest queued for the next call.
    fn drain(&mut self) -> io::Result<()> {
        while let Some(message) = self.queue.pop_front() {
            match self.ws.write(Message::Binary(message)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(err)) if is_blocked(&err) => {
                    // tungstenite took the message into its buffer; `flush` sends it.
                    return Err(err);
                }
                Err(err) => return Err(ws_io(err)),
            }
        }
        self.ws.flush().map_err(ws_io)
    }
}

impl SyncWs {
    fn new(ws: tungstenite::WebSocket<Box<dyn SyncIo>>) -> SyncWs {
        SyncWs {
            inner: Mutex::new(SyncInner {
                ws,
                current: Bytes::new(),
                framer: Framer::default(),
                queue: VecDeque::new(),
                ended: false,
                close: None,
            }),
        }
    }

    pub(crate) fn with_io<R>(&self, f: impl FnOnce(&dyn SyncIo) -> R) -> R {
        let inner = lock(&self.inner);
        f(&**inner.ws.get_ref())
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inner = lock(&self.inner);
        loop {
            if !inner.current.is_empty() {
                let n = inner.current.len().min(buf.len());
                buf[..n].copy_from_slice(&inner.current.split_to(n));
                return Ok(n);
            }
            if inner.ended {
                return Ok(0);
            }
            let item = match inner.ws.read() {
                Err(tungstenite::Error::Io(err)) => return Err(err),
                item => Some(item),
            };
            match received(item) {
                Ok(Received::Bytes(bytes)) => inner.current = bytes,
                Ok(Received::Nothing) => {}
                Ok(Received::End) => inner.ended = true,
                Err((err, close)) => {
                    inner.ended = true;
                    if close.is_some() {
                        inner.close = close;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Takes all of `buf` once what earlier writes queued is sent (else fails, taking
    /// nothing); sends the messages it completes. If the socket's timeout stops that, they
    /// stay queued and leave with the next write or read.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = lock(&self.inner);
        inner.drain()?;
        let inner = &mut *inner;
        inner.framer.absorb(buf, &mut inner.queue);
        match inner.drain() {
            Ok(()) => Ok(buf.len()),
            Err(err) if is_blocked(&err) => Ok(buf.len()),
            Err(err) => Err(err),
        }
    }
}

impl Drop for SyncWs {
    fn drop(&mut self) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // One attempt, never a wait: a peer that does not read must not hang a drop.
        let _ = inner.ws.get_ref().set_nonblocking(true);
        let _ = inner.drain();
        let close = inner.close.take().unwrap_or(CloseFrame {
            code: WsCloseCode::Normal,
            reason: "".into(),
        });
        let _ = inner.ws.close(Some(close));
        let _ = inner.ws.flush();
    }
}

/// Opens a blocking WebSocket over `stream` (client side) by `deadline` (the handshake
/// timeout `timeout` counted from the connect): every read and write of the upgrade waits
/// at most for the time left.
pub(crate) fn connect_sync<S: SyncIo>(
    stream: S,
    url: &str,
    max_frame_len: u32,
    deadline: Instant,
    timeout: Duration,
) -> Result<SyncWs> {
    let what = format!("websocket upgrade to {url} not answered");
    let bound = |io: &dyn SyncIo| -> Result<()> {
        let left = time_left(deadline, timeout, &what)?;
        io.set_read_timeout(Some(left))
            .and_then(|()| io.set_write_timeout(Some(left)))
            .map_err(|err| Error::io("set websocket upgrade timeouts", err))
    };
    bound(&stream)?;
    let first = FirstByte::default();
    let stream: Box<dyn SyncIo> = Box::new(Noted {
        inner: stream,
        first: first.clone(),
    });
    let mut attempt =
        tungstenite::client::client_with_config(url, stream, Some(ws_config(max_frame_len)));
    loop {
        match attempt {
            Ok((ws, _response)) => {
                ws.get_ref()
                    .set_read_timeout(None)
                    .and_then(|()| ws.get_ref().set_write_timeout(None))
                    .map_err(|err| Error::io("clear websocket upgrade timeouts", err))?;
                return Ok(SyncWs::new(ws));
            }
            Err(tungstenite::HandshakeError::Failure(err)) => {
                return Err(handshake_error(url, err, &first));
            }
            // A read or write timed out: go on with the time left, if any.
            Err(tungstenite::HandshakeError::Interrupted(mid)) => {
                bound(&**mid.get_ref().get_ref())?;
                attempt = mid.handshake();
            }
        }
    }
}

/// Accepts one blocking WebSocket on `stream` (server side) by `deadline` (the handshake
/// timeout `timeout` counted from the accept): upgrades it or answers with a refusal (no
/// files: the blocking [`Listener`](crate::Listener) serves only the endpoint).
pub(crate) fn accept_sync<S: SyncIo>(
    mut stream: S,
    listen: &WsListen,
    max_frame_len: u32,
    deadline: Instant,
    timeout: Duration,
) -> Result<SyncWs> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (answer, rest) = loop {
        // Each read waits only for the time left: a request trickled in byte by byte
        // still ends at the deadline.
        let left = time_left(deadline, timeout, "no complete http request")?;
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|err| Error::io("set http timeouts", err))?;
        let n = match stream.read(&mut chunk[..(MAX_HEAD_LEN - head.len()).clamp(1, 1024)]) {
            Ok(n) => n,
            Err(err) if is_blocked(&err) => {
                time_left(deadline, timeout, "no complete http request")?;
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::io("read http request", err)),
        };
        if n == 0 {
            return Err(Error::new(
                ErrorKind::PeerDied,
                format!("http request ended after {} bytes", head.len()),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some((answer, used)) = parse_head(&head, listen) {
            let rest = head.split_off(used.min(head.len()));
            break (answer, rest);
        }
    };
    match answer {
        Answer::Upgrade(reply) => {
            stream
                .write_all(&reply)
                .and_then(|()| stream.flush())
                .map_err(|err| Error::io("write http upgrade response", err))?;
            stream
                .set_read_timeout(None)
                .and_then(|()| stream.set_write_timeout(None))
                .map_err(|err| Error::io("clear http timeouts", err))?;
            let stream: Box<dyn SyncIo> = Box::new(stream);
            Ok(SyncWs::new(tungstenite::WebSocket::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(ws_config(max_frame_len)),
            )))
        }
        Answer::Respond(reply, refusal) => {
            let _ = stream.write_all(&reply).and_then(|()| stream.flush());
            Err(refusal.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    "plain http request on a websocket listener",
                )
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN + payload_len];
        out[..2].copy_from_slice(&[0xa7, 0x1c]);
        out[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
        out
    }

    #[test]
    fn the_framer_cuts_messages_only_between_frames() {
        let frames: Vec<Vec<u8>> = [0, 5, 40_000, 30_000, 200_000, 3, 0]
            .iter()
            .map(|&n| frame(n))
            .collect();
        let wire = frames.concat();
        for piece in [1, 7, 16, 1000, 256 * 1024, wire.len()] {
            let mut framer = Framer::default();
            let mut out = VecDeque::new();
            for chunk in wire.chunks(piece) {
                framer.absorb(chunk, &mut out);
            }
            assert!(framer.pending.is_empty(), "piece {piece}");
            let joined: Vec<u8> = out.iter().flat_map(|m| m.iter().copied()).collect();
            assert_eq!(joined, wire, "piece {piece}");
            for message in &out {
                check_whole_frames(message).unwrap();
                assert!(
                    message.len() <= MESSAGE_GROUP_LEN || message.len() == HEADER_LEN + 200_000,
                    "piece {piece}: message of {}",
                    message.len()
                );
            }
        }
    }

    #[test]
    fn a_message_that_ends_mid_frame_is_refused() {
        let mut message = frame(10);
        message.extend_from_slice(&frame(4)[..9]);
        let err = unwrap_io("read", check_whole_frames(&message).unwrap_err());
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert_eq!(
            err.to_string(),
            "websocket message of 35 bytes ends inside a frame header at byte 26 (a message carries whole frames)"
        );
        let err = unwrap_io("read", check_whole_frames(&frame(10)[..20]).unwrap_err());
        assert!(
            err.to_string().contains("inside a frame of 26 bytes"),
            "{err}"
        );
    }

    fn listen(origins: &[&str], host: &str, secure: bool) -> WsListen {
        WsListen {
            path: "/".to_owned(),
            host: host.to_owned(),
            settings: Arc::new(HttpSettings {
                allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                files: Vec::new(),
            }),
            secure,
        }
    }

    #[test]
    fn origins_are_checked_against_the_host_and_the_allow_list() {
        let none = listen(&[], "0.0.0.0", false);
        let allowed =
            |origin: &str, host: &str, l: &WsListen| origin_allowed(origin, Some(host), l);
        assert!(allowed("http://127.0.0.1:8080", "127.0.0.1:8080", &none));
        assert!(allowed("http://localhost:8080", "localhost:8080", &none));
        // A TLS proxy in front of a ws:// listener serves https:// pages.
        assert!(allowed("https://localhost:8080", "localhost:8080", &none));
        assert!(!allowed(
            "http://evil.example:8080",
            "127.0.0.1:8080",
            &none
        ));
        // DNS rebinding: the attacker's name, resolving here, with a matching Host.
        assert!(!allowed(
            "http://evil.example:8080",
            "evil.example:8080",
            &none
        ));
        assert!(!allowed("null", "127.0.0.1:8080", &none));
        let listed = listen(&["https://app.example"], "0.0.0.0", false);
        assert!(allowed("https://APP.example", "127.0.0.1:8080", &listed));
        assert!(allowed(
            "http://anything",
            "x",
            &listen(&["*"], "0.0.0.0", false)
        ));
        assert!(origin_allowed(
            "http://chat.local:80",
            Some("chat.local:80"),
            &listen(&[], "chat.local", false)
        ));
    }

    #[test]
    fn a_wss_listener_takes_only_https_pages_as_its_own() {
        let secure = listen(&[], "localhost", true);
        let allowed =
            |origin: &str, host: &str, l: &WsListen| origin_allowed(origin, Some(host), l);
        assert!(allowed("https://localhost:8443", "localhost:8443", &secure));
        assert!(allowed("https://127.0.0.1:8443", "127.0.0.1:8443", &secure));
        assert!(!allowed("http://localhost:8443", "localhost:8443", &secure));
        assert!(!allowed(
            "https://evil.example:8443",
            "evil.example:8443",
            &secure
        ));
        let listed = listen(&["http://app.example"], "localhost", true);
        assert!(allowed("http://app.example", "localhost:8443", &listed));
    }

    #[test]
    fn a_tls_client_hello_on_a_plain_listener_is_named_at_once() {
        let (answer, _) = parse_head(&[0x16, 0x03, 0x01], &listen(&[], "localhost", false))
            .expect("answered without more bytes");
        let Answer::Respond(reply, Some(err)) = answer else {
            panic!("expected a refusal, got {answer:?}");
        };
        assert!(reply.starts_with(b"HTTP/1.1 400 "));
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.to_string().contains("the peer speaks TLS"), "{err}");
    }
}
