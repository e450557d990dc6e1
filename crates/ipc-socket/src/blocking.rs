//! The blocking connection and listener.

use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ipc_core::{
    Close, CloseCode, Error, ErrorKind, FEATURE_BATCH, FrameBuffer, FrameDecoder, FrameKind, Hello,
    Limits, Receiver, Result, Sender,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::config::{Beat, ConnectionConfig, Liveness, close_frame_for};
use crate::protocol::{self, Front, Inbound, end_of_stream, read_decoder, take_data, write_buffer};
use crate::stream::{SyncListener, SyncStream};
#[cfg(feature = "tls")]
use crate::tls::PeerCertificate;

/// A blocking connection carrying messages of type `T` both ways.
///
/// Sends are coalesced in a buffer and written when it reaches the flush threshold, on
/// [`flush`](Sender::flush), or before a receive blocks; small messages travel in batch
/// frames when the peer accepts them (see
/// [`ConnectionConfig::without_batches`](crate::ConnectionConfig::without_batches)). A blocking connection answers
/// pings and checks the peer's liveness only while it is inside a call (`recv` and
/// friends); a side that stays out of `recv` longer than the peer's heartbeat timeout looks
/// dead to the peer. Use [`AsyncConnection`] for an always-live side.
///
/// ```
/// use ipc_socket::{Address, Connection, ConnectionConfig, Listener};
/// use ipc_core::{Receiver, Sender};
///
/// let config = ConnectionConfig::new::<String>();
/// let listener = Listener::<String>::bind(&"tcp:127.0.0.1:0".parse()?, config.clone())?;
/// let address = listener.address().clone();
/// let server = std::thread::spawn(move || -> ipc_core::Result<()> {
///     let mut conn = listener.accept()?;
///     let text = conn.recv()?;
///     conn.send(&text.to_uppercase())?;
///     conn.flush()
/// });
/// let mut client = Connection::<String>::connect(&address, config)?;
/// client.send(&"hello".to_owned())?;
/// assert_eq!(client.recv()?, "HELLO");
/// server.join().unwrap()?;
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[cfg_attr(
    feature = "tokio",
    doc = "\n[`AsyncConnection`]: crate::AsyncConnection"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = "\n[`AsyncConnection`]: crate#feature-flags"
)]
#[derive(Debug)]
pub struct Connection<T> {
    stream: SyncStream,
    decoder: FrameDecoder,
    out: FrameBuffer,
    out_pos: usize,
    send_limits: Limits,
    /// The peer takes batch frames: data messages go out two bytes of framing apiece.
    batching: bool,
    flush_threshold: usize,
    liveness: Liveness,
    read_timeout: Option<Duration>,
    failed: Option<ErrorKind>,
    peer: Hello,
    /// The verified client certificate of a connection a [`Listener`] accepted.
    #[cfg(feature = "tls")]
    certificate: Option<PeerCertificate>,
    _message: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Connects to a server at `address` and performs the handshake within the config's
    /// handshake timeout (a TLS handshake included). [`ErrorKind::NotFound`] if nobody
    /// listens there.
    pub fn connect(address: &Address, config: ConnectionConfig) -> Result<Connection<T>> {
        let deadline = Instant::now() + config.handshake_timeout();
        let stream = SyncStream::connect(address, &config, deadline)?;
        Connection::handshake(stream, &config, deadline)
            .map_err(|err| err.context(format_args!("handshake with {address}")))
    }

    fn handshake(
        stream: SyncStream,
        config: &ConnectionConfig,
        deadline: Instant,
    ) -> Result<Connection<T>> {
        let ours = config.hello();
        let mut conn = Connection {
            stream,
            decoder: read_decoder(config),
            out: write_buffer(config),
            out_pos: 0,
            send_limits: Limits::default(),
            batching: false,
            flush_threshold: config.flush_threshold(),
            liveness: Liveness::new(config.heartbeat()),
            read_timeout: None,
            failed: None,
            peer: ours.clone(),
            #[cfg(feature = "tls")]
            certificate: None,
            _message: PhantomData,
        };
        conn.stream
            .set_write_timeout(Some(config.handshake_timeout()))
            .map_err(|err| Error::io("set write timeout", err))?;
        let holds_tokens = config.accepted_tokens().is_some();
        let mut opening = Vec::new();
        protocol::opening(config, &ours, &mut opening)?;
        // A server that refuses us may close before our hello arrives: its close frame,
        // which says why, is then still ours to read. A side that holds tokens sends its
        // hello only after the peer's token passed.
        let mut unsent = None;
        if !holds_tokens {
            conn.out.extend_from_slice(&opening);
            unsent = conn.write_out().err();
            conn.failed = None;
        }
        let mut opening_frames = protocol::Opening::new(config, &ours);
        let checked = loop {
            let step = match conn.decoder.next_frame() {
                Err(err) => Some(Err(err)),
                Ok(None) => None,
                Ok(Some(frame)) => match opening_frames.on_frame(frame) {
                    Err(err) => Some(Err(err)),
                    Ok(_) if unsent.is_some() => {
                        return Err(unsent.take().expect("checked just above"));
                    }
                    Ok(protocol::Step::More) => continue,
                    Ok(protocol::Step::Done(theirs, send_limits)) => {
                        Some(Ok((theirs, send_limits)))
                    }
                },
            };
            if let Some(step) = step {
                break step;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no hello from peer within {} ms",
                        config.handshake_timeout().as_millis()
                    ),
                ));
            }
            conn.set_read_timeout(Some(left))?;
            if let Err(err) = conn.read_some() {
                return Err(unsent.take().unwrap_or(err));
            }
        };
        let (theirs, send_limits) = match checked {
            Ok(agreed) => agreed,
            Err(err) => {
                if err.kind() != ErrorKind::PeerClosed {
                    conn.out.extend_from_slice(&close_frame_for(&err));
                    let _ = conn.write_out();
                }
                return Err(err);
            }
        };
        if holds_tokens {
            conn.out.extend_from_slice(&opening);
            conn.write_out()?;
        }
        conn.batching = theirs.features() & FEATURE_BATCH != 0;
        conn.peer = theirs;
        conn.send_limits = send_limits;
        conn.stream
            .set_write_timeout(None)
            .map_err(|err| Error::io("clear write timeout", err))?;
        conn.liveness.heard();
        Ok(conn)
    }

    /// The peer's hello: its message type and limits.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer
    }

    /// On a connection a [`Listener`] accepted on a `tls:` or `wss://` address that
    /// requires client certificates
    /// ([`TlsServerConfig::require_client_certificates`](crate::TlsServerConfig::require_client_certificates)):
    /// the certificate the client presented, verified against the client certificate
    /// authority, with its subject and alternative names (the same as
    /// `Peer::certificate` on a `Server`, feature `tokio`).
    /// `None` on other transports, without mutual TLS, and on the connecting side.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.certificate.as_ref()
    }

    /// Sends a close frame with code [`CloseCode::NORMAL`] and flushes; the peer's next
    /// receive fails with [`ErrorKind::PeerClosed`].
    pub fn close(mut self) -> Result<()> {
        let close = Close::new(CloseCode::NORMAL, "");
        self.out.with_vec(|out| close.encode_frame(out))?;
        self.write_out()
    }

    fn check_usable(&self) -> Result<()> {
        match self.failed {
            None => Ok(()),
            Some(kind) => Err(Error::new(
                kind,
                "connection failed earlier and can no longer be used",
            )),
        }
    }

    fn fail(&mut self, err: Error) -> Error {
        self.failed = Some(err.kind());
        err
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    #[inline(always)]
    fn encode(&mut self, message: &T) -> Result<()> {
        if self.batching {
            self.out.push_batched(message, &self.send_limits)?;
        } else {
            self.out
                .push(FrameKind::Data, 0, message, &self.send_limits)?;
        }
        Ok(())
    }

    /// Writes all buffered output, honouring the socket's current write timeout.
    fn write_out(&mut self) -> Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out.as_slice()[self.out_pos..]) {
                Ok(0) => {
                    let err = Error::new(ErrorKind::PeerClosed, "peer stopped reading");
                    return Err(self.fail(err));
                }
                Ok(n) => self.out_pos += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // After a timeout the unwritten rest stays buffered: the stream remains in
                // sync.
                Err(err) => return Err(self.write_failed(err)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // Every byte is taken; a TLS stream may still hold records the socket did not
        // take. A timeout here leaves them there (nothing is written twice): the next
        // write or flush pushes them out.
        loop {
            match self.stream.flush() {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.write_failed(err)),
            }
        }
    }

    /// The error of a failed write: a timeout leaves the connection usable (what was not
    /// written stays buffered), anything else fails it.
    fn write_failed(&mut self, err: io::Error) -> Error {
        let timed_out = matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        let err = Error::io("write to peer", err);
        if timed_out { err } else { self.fail(err) }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        if self.read_timeout != timeout {
            self.stream
                .set_read_timeout(timeout)
                .map_err(|err| Error::io("set read timeout", err))?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// One read into the decoder. `Ok(false)` when the read timed out.
    fn read_some(&mut self) -> Result<bool> {
        loop {
            match self.stream.read(self.decoder.read_buf()) {
                Ok(0) => {
                    let err = end_of_stream(&self.decoder);
                    return Err(self.fail(err));
                }
                Ok(n) => {
                    self.decoder.commit(n);
                    self.liveness.heard();
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(err) => {
                    let err = crate::stream::stream_error("read from peer", err);
                    return Err(self.fail(err));
                }
            }
        }
    }

    /// Handles the control frames at the front of the buffer. True when a data frame is at
    /// the front, false when more input is needed.
    fn front_is_data(&mut self) -> Result<bool> {
        loop {
            let inbound = match protocol::front(&mut self.decoder) {
                Front::Data => return Ok(true),
                Front::More => return Ok(false),
                Front::Control(inbound) => inbound,
            };
            match inbound {
                Inbound::Ping(id) => {
                    self.out
                        .push_raw(FrameKind::Pong, id, &[], &self.send_limits)?;
                }
                Inbound::Ignore => {}
                Inbound::Closed(err) => return Err(self.fail(err)),
                Inbound::Bad(err) => return Err(self.refuse(err)),
            }
        }
    }

    /// Tells the peer why its input is refused (a close frame, best effort) and fails.
    #[cold]
    fn refuse(&mut self, err: Error) -> Error {
        self.out.extend_from_slice(&close_frame_for(&err));
        let _ = self.write_out();
        self.fail(err)
    }

    /// Decodes the data frame that [`front_is_data`](Self::front_is_data) found. A payload
    /// that does not decode is skipped: the error is returned and the connection stays
    /// usable.
    #[inline]
    fn take_data<'a, M: Deserialize<'a>>(&'a mut self) -> Result<M> {
        take_data(&mut self.decoder)
    }

    /// Waits until a data frame is at the front of the buffer, flushing output, answering
    /// pings and watching the peer's liveness meanwhile.
    #[inline(always)]
    fn wait_for_data(&mut self, deadline: Option<Instant>) -> Result<()> {
        // Fast path: a data frame already received whole (one read brings many).
        if self.failed.is_none() && self.decoder.has_data() {
            return Ok(());
        }
        self.wait_for_data_slow(deadline)
    }

    /// [`wait_for_data`](Self::wait_for_data) when no data frame is ready: control frames,
    /// output, liveness, reads. Kept out of line so that the fast path stays small.
    #[inline(never)]
    fn wait_for_data_slow(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.check_usable()?;
        loop {
            if self.front_is_data()? {
                return Ok(());
            }
            if self.pending() > 0 {
                self.write_out()?;
            }
            let now = Instant::now();
            let mut wait = match self.liveness.check(now) {
                Beat::Wait(_) => self.liveness.poll_interval(),
                Beat::Ping(nonce, _) => {
                    self.out
                        .push_raw(FrameKind::Ping, nonce, &[], &self.send_limits)?;
                    self.write_out()?;
                    self.liveness.poll_interval()
                }
            };
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "no message within the timeout",
                    ));
                }
                wait = Some(wait.map_or(left, |wait| wait.min(left)));
            }
            self.set_read_timeout(wait)?;
            if !self.read_some()? {
                self.liveness
                    .expired(Instant::now())
                    .map_err(|err| self.fail(err))?;
            }
        }
    }

    /// Receives the next message as `M`, which may borrow from the connection's receive
    /// buffer: `&str` and `&[u8]` fields point into it, with no allocation and no copy.
    ///
    /// `M` must have `T`'s wire format: typically `T`'s borrowing twin (`struct Msg<'a> {
    /// text: &'a str }` for `struct Msg { text: String }`). The message borrows the
    /// connection, so it must be dropped before the next call.
    pub fn recv_ref<'a, M: Deserialize<'a>>(&'a mut self) -> Result<M> {
        self.wait_for_data(None)?;
        self.take_data()
    }
}

impl<T: Serialize + DeserializeOwned> Sender for Connection<T> {
    type Message = T;

    /// Queues `message` in the write buffer, writing the buffer out once it reaches the flush
    /// threshold. `Ok` means queued; [`flush`](Sender::flush) pushes it to the peer.
    #[inline(always)]
    fn send(&mut self, message: &T) -> Result<()> {
        self.check_usable()?;
        self.encode(message)?;
        if self.pending() >= self.flush_threshold {
            self.write_out()?;
        }
        Ok(())
    }

    /// [`ErrorKind::Full`] if the buffer is at the threshold and the socket takes no more
    /// without waiting.
    fn try_send(&mut self, message: &T) -> Result<()> {
        self.check_usable()?;
        if self.pending() >= self.flush_threshold {
            self.stream
                .set_nonblocking(true)
                .map_err(|err| Error::io("set nonblocking", err))?;
            let written = self.write_out();
            self.stream
                .set_nonblocking(false)
                .map_err(|err| Error::io("set blocking", err))?;
            match written {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::Timeout => {
                    return Err(Error::new(
                        ErrorKind::Full,
                        format!(
                            "{} bytes wait for the peer to read; the socket is full",
                            self.pending()
                        ),
                    ));
                }
                Err(err) => return Err(err),
            }
        }
        self.encode(message)
    }

    fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        self.check_usable()?;
        self.encode(message)?;
        if self.pending() < self.flush_threshold {
            return Ok(());
        }
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_micros(1))))
            .map_err(|err| Error::io("set write timeout", err))?;
        let written = self.write_out();
        self.stream
            .set_write_timeout(None)
            .map_err(|err| Error::io("clear write timeout", err))?;
        written
    }

    fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        self.write_out()
    }
}

impl<T: Serialize + DeserializeOwned> Receiver for Connection<T> {
    type Message = T;

    /// Flushes buffered output, then waits for a message, answering pings and checking the
    /// peer's liveness meanwhile.
    fn recv(&mut self) -> Result<T> {
        self.wait_for_data(None)?;
        self.take_data()
    }

    fn try_recv(&mut self) -> Result<Option<T>> {
        self.check_usable()?;
        if self.front_is_data()? {
            return self.take_data().map(Some);
        }
        if self.pending() > 0 {
            self.write_out()?;
        }
        self.stream
            .set_nonblocking(true)
            .map_err(|err| Error::io("set nonblocking", err))?;
        let read = self.read_some();
        self.stream
            .set_nonblocking(false)
            .map_err(|err| Error::io("set blocking", err))?;
        read?;
        if self.front_is_data()? {
            return self.take_data().map(Some);
        }
        Ok(None)
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.wait_for_data(Some(Instant::now() + timeout))?;
        self.take_data()
    }
}

/// A blocking listener that accepts [`Connection`]s; see [`Server`] for many
/// clients at once.
///
#[cfg_attr(feature = "tokio", doc = "\n[`Server`]: crate::Server")]
#[cfg_attr(not(feature = "tokio"), doc = "\n[`Server`]: crate#feature-flags")]
#[derive(Debug)]
pub struct Listener<T> {
    inner: SyncListener,
    address: Address,
    config: ConnectionConfig,
    _message: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Listener<T> {
    /// Listens on `address`. A socket file left by a crashed server is reclaimed; a live
    /// server's is not ([`ErrorKind::AlreadyExists`]). Socket files get mode 0600.
    pub fn bind(address: &Address, config: ConnectionConfig) -> Result<Listener<T>> {
        let (inner, address) = SyncListener::bind(address, &config)?;
        Ok(Listener {
            inner,
            address,
            config,
            _message: PhantomData,
        })
    }

    /// The address clients connect to (for `tcp:…:0`, the port actually bound).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a client and performs the handshake with it (a TLS handshake first, on a
    /// `tls:` or `wss://` address), all within the config's handshake timeout, counted
    /// from the accept.
    ///
    /// On a `ws://` or `wss://` address the client's HTTP request is read here too (within
    /// the same timeout): a request that is not a WebSocket upgrade of the listener's path
    /// from an allowed `Origin` is answered with an HTTP error and this returns that error;
    /// call `accept` again for the next client. A mutual-TLS client's certificate is in
    /// `Connection::peer_certificate` (feature `tls`).
    pub fn accept(&self) -> Result<Connection<T>> {
        let timeout = self.config.handshake_timeout();
        let mut deadline = None;
        let (stream, facts) = self
            .inner
            .accept(&self.config, || *deadline.insert(Instant::now() + timeout))?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
        let conn = Connection::handshake(stream, &self.config, deadline)
            .map_err(|err| err.context("handshake with a new client"))?;
        #[cfg(feature = "tls")]
        let conn = Connection {
            certificate: facts.certificate,
            ..conn
        };
        #[cfg(not(feature = "tls"))]
        let _ = facts;
        Ok(conn)
    }
}
