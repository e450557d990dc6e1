//! The byte streams under a connection: one enum over local sockets, TCP, TLS and
//! WebSocket (over TCP or, for `wss://`, over TLS), blocking and tokio, and the listeners
//! that produce them. Framing lives above this module.

use std::io::{self, Read, Write};
use std::net::TcpStream;
#[cfg(feature = "tokio")]
use std::pin::Pin;
use std::sync::Arc;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[cfg(feature = "tokio")]
use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
use interprocess::local_socket::traits::{Listener as _, Stream as _, StreamCommon as _};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, Name, ToFsName as _};
#[cfg(not(all(unix, not(any(target_os = "linux", target_os = "android")))))]
use interprocess::local_socket::{GenericNamespaced, ToNsName as _};
use ipc_core::{Error, ErrorKind, Result};
#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::address::Address;
use crate::config::ConnectionConfig;
#[cfg(all(feature = "tls", feature = "tokio"))]
use crate::tls::AsyncTlsStream;
#[cfg(feature = "tls")]
use crate::tls::{self, PeerCertificate};
use crate::ws;

/// What the server learned about a peer when it accepted it.
#[cfg_attr(
    not(feature = "tokio"),
    expect(
        dead_code,
        reason = "the facts reach users only through the tokio server"
    )
)]
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerFacts {
    pub(crate) uid: Option<u32>,
    #[cfg(feature = "tls")]
    pub(crate) certificate: Option<PeerCertificate>,
}

impl PeerFacts {
    fn with_uid(uid: Option<u32>) -> PeerFacts {
        PeerFacts {
            uid,
            #[cfg(feature = "tls")]
            certificate: None,
        }
    }
}

#[cfg(not(feature = "tls"))]
fn no_tls(address: &Address) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{address}: tls: and wss:// addresses need ipc-socket's `tls` feature"),
    )
}

#[cfg(feature = "tls")]
fn no_tls_server(address: &Address) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "{address}: listening on a tls: or wss:// address needs a certificate (ConnectionConfig::with_tls_server)"
        ),
    )
}

/// An I/O error of any stream as an [`Error`]; a TLS stream's keep rustls's reason (an
/// alert from the peer refusing this side's certificate arrives as a read error).
pub(crate) fn stream_error(what: &'static str, err: io::Error) -> Error {
    // The WebSocket layer carries its protocol errors (a text message, a message that
    // ends inside a frame) through `io::Error`: unwrap them for their close codes.
    if err.kind() == io::ErrorKind::InvalidData
        && err.get_ref().is_some_and(|inner| inner.is::<Error>())
    {
        return ws::unwrap_io(what, err);
    }
    #[cfg(feature = "tls")]
    {
        tls::stream_error(what, err)
    }
    #[cfg(not(feature = "tls"))]
    {
        Error::io(what, err)
    }
}

/// TLS records arrive in pieces: a stream that ends without TLS's close_notify is an end
/// of stream like any other (the frame layer above notices a cut frame).
#[cfg(feature = "tls")]
fn eof_is_end(result: io::Result<usize>) -> io::Result<usize> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

type LocalStream = interprocess::local_socket::Stream;
#[cfg(feature = "tokio")]
type TokioLocalStream = interprocess::local_socket::tokio::Stream;

/// Unix systems other than Linux have no abstract sockets: there `local:NAME` is the
/// socket file `NAME` in the user's temporary directory (`$TMPDIR`, which macOS makes per
/// user and owner-only; `/tmp` without it), created with mode 0600 and reclaimed when
/// stale under the rules of `unix:` paths. A name with a `/` is refused there.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn local_socket_path(name: &str) -> Result<std::path::PathBuf> {
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("local socket name `{name}` must be a plain file name on this system"),
        ));
    }
    Ok(std::env::temp_dir().join(name))
}

fn local_name(address: &Address) -> Result<Name<'_>> {
    let name = match address {
        #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
        Address::Local(name) => local_socket_path(name)?.to_fs_name::<GenericFilePath>(),
        #[cfg(not(all(unix, not(any(target_os = "linux", target_os = "android")))))]
        Address::Local(name) => name.as_str().to_ns_name::<GenericNamespaced>(),
        Address::Path(path) => path.as_path().to_fs_name::<GenericFilePath>(),
        Address::Tcp(_)
        | Address::Tls(_)
        | Address::WebSocket { .. }
        | Address::SecureWebSocket { .. } => {
            unreachable!("local_name is only called for local addresses")
        }
    };
    name.map_err(|err| Error::io(format!("local socket name for `{address}`"), err))
}

fn connect_error(address: &Address, err: io::Error) -> Error {
    // A refused connection and a missing socket file both mean "nobody listens there".
    let kind = match err.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => return Error::io(format!("connect to {address}"), err),
    };
    Error::new(
        kind,
        format!("connect to {address}: nobody listens ({err})"),
    )
    .with_source(err)
}

/// A blocking byte stream.
#[derive(Debug)]
pub(crate) enum SyncStream {
    Local(LocalStream),
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    TlsClient(Box<tls::SyncClientStream>),
    #[cfg(feature = "tls")]
    TlsServer(Box<tls::SyncServerStream>),
    Ws(Box<ws::SyncWs>),
}

fn tcp_connect_sync(address: &Address, host_port: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(host_port).map_err(|err| connect_error(address, err))?;
    // Frames are coalesced above; Nagle's delay would only add latency.
    stream
        .set_nodelay(true)
        .map_err(|err| Error::io("set TCP_NODELAY", err))?;
    Ok(stream)
}

impl SyncStream {
    /// Connects; a TLS handshake, if any, is done by `deadline`.
    pub(crate) fn connect(
        address: &Address,
        config: &ConnectionConfig,
        deadline: Instant,
    ) -> Result<SyncStream> {
        address.validate()?;
        let _ = (config, deadline);
        match address {
            Address::Tcp(host_port) => Ok(SyncStream::Tcp(tcp_connect_sync(address, host_port)?)),
            Address::WebSocket { host_port, path } => {
                let stream = tcp_connect_sync(address, host_port)?;
                let ws = ws::connect_sync(
                    stream,
                    &ws::url(host_port, path),
                    config.limits().max_frame_len(),
                    deadline,
                    config.handshake_timeout(),
                )?;
                Ok(SyncStream::Ws(Box::new(ws)))
            }
            #[cfg(feature = "tls")]
            Address::Tls(host_port) => {
                let stream = tcp_connect_sync(address, host_port)?;
                let stream = tls::connect_sync(
                    stream,
                    host_port,
                    &config.tls_client(),
                    deadline,
                    config.handshake_timeout(),
                )?;
                Ok(SyncStream::TlsClient(Box::new(stream)))
            }
            #[cfg(feature = "tls")]
            Address::SecureWebSocket { host_port, .. } => {
                // TLS first, then the WebSocket upgrade inside it, both by `deadline`.
                let stream = tcp_connect_sync(address, host_port)?;
                let stream = tls::connect_sync(
                    stream,
                    host_port,
                    &config.tls_client(),
                    deadline,
                    config.handshake_timeout(),
                )?;
                let ws = ws::connect_sync(
                    tls::SyncTlsIo(stream),
                    &address.to_string(),
                    config.limits().max_frame_len(),
                    deadline,
                    config.handshake_timeout(),
                )?;
                Ok(SyncStream::Ws(Box::new(ws)))
            }
            #[cfg(not(feature = "tls"))]
            Address::Tls(_) | Address::SecureWebSocket { .. } => Err(no_tls(address)),
            _ => {
                let stream = LocalStream::connect(local_name(address)?)
                    .map_err(|err| connect_error(address, err))?;
                Ok(SyncStream::Local(stream))
            }
        }
    }

    /// The TCP socket under a TCP or TLS stream.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            SyncStream::Local(_) | SyncStream::Ws(_) => None,
            SyncStream::Tcp(stream) => Some(stream),
            #[cfg(feature = "tls")]
            SyncStream::TlsClient(stream) => Some(&stream.sock),
            #[cfg(feature = "tls")]
            SyncStream::TlsServer(stream) => Some(&stream.sock),
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match (self, self.tcp()) {
            (_, Some(tcp)) => tcp.set_read_timeout(timeout),
            (SyncStream::Local(stream), None) => stream.set_recv_timeout(timeout),
            (SyncStream::Ws(stream), None) => stream.with_io(|io| io.set_read_timeout(timeout)),
            _ => Ok(()),
        }
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match (self, self.tcp()) {
            (_, Some(tcp)) => tcp.set_write_timeout(timeout),
            (SyncStream::Local(stream), None) => stream.set_send_timeout(timeout),
            (SyncStream::Ws(stream), None) => stream.with_io(|io| io.set_write_timeout(timeout)),
            _ => Ok(()),
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match (self, self.tcp()) {
            (_, Some(tcp)) => tcp.set_nonblocking(nonblocking),
            (SyncStream::Local(stream), None) => stream.set_nonblocking(nonblocking),
            (SyncStream::Ws(stream), None) => stream.with_io(|io| io.set_nonblocking(nonblocking)),
            _ => Ok(()),
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Local(stream) => (&*stream).read(buf),
            SyncStream::Tcp(stream) => (&*stream).read(buf),
            #[cfg(feature = "tls")]
            SyncStream::TlsClient(stream) => eof_is_end(stream.read(buf)),
            #[cfg(feature = "tls")]
            SyncStream::TlsServer(stream) => eof_is_end(stream.read(buf)),
            SyncStream::Ws(stream) => stream.read(buf),
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Local(stream) => (&*stream).write(buf),
            SyncStream::Tcp(stream) => (&*stream).write(buf),
            #[cfg(feature = "tls")]
            SyncStream::TlsClient(stream) => write_tls(stream.as_mut(), buf),
            #[cfg(feature = "tls")]
            SyncStream::TlsServer(stream) => write_tls(stream.as_mut(), buf),
            SyncStream::Ws(stream) => stream.write(buf),
        }
    }

    /// Pushes out what a TLS stream holds in records the socket did not take yet; a no-op
    /// for the other streams, whose writes reach the socket or fail.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(feature = "tls")]
            SyncStream::TlsClient(stream) => stream.as_mut().flush(),
            #[cfg(feature = "tls")]
            SyncStream::TlsServer(stream) => stream.as_mut().flush(),
            _ => Ok(()),
        }
    }
}

/// Writes through a blocking TLS stream and pushes the records out at once (rustls's
/// `write` sends what it can and keeps the rest for later; a framed connection expects a
/// write to have reached the socket).
#[cfg(feature = "tls")]
fn write_tls<C, S>(stream: &mut rustls::StreamOwned<C, TcpStream>, buf: &[u8]) -> io::Result<usize>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let n = stream.write(buf)?;
    match stream.flush() {
        // The `n` bytes are taken (into TLS records): saying otherwise would have the
        // caller write them again. What the socket did not take yet goes out with the
        // next write or `flush`.
        Err(err)
            if n > 0
                && matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
        {
            Ok(n)
        }
        Err(err) => Err(err),
        Ok(()) => Ok(n),
    }
}

/// Refuses to bind over a live server, and removes a socket file left by a dead one.
///
/// The file is removed only after a connect attempt was refused: a live server's file is
/// never touched (unlike interprocess's `try_overwrite`).
#[cfg(unix)]
fn reclaim_stale_socket_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;

    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io(format!("inspect {}", path.display()), err)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("a server is already listening on {}", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(Error::io(
                    format!("remove stale socket file {}", path.display()),
                    err,
                )),
            }
        }
        Err(err) => Err(Error::io(
            format!("probe existing socket file {}", path.display()),
            err,
        )),
    }
}

#[cfg(not(unix))]
fn reclaim_stale_socket_file(_path: &std::path::Path) -> Result<()> {
    Ok(())
}

fn listener_options(address: &Address) -> Result<ListenerOptions<'_>> {
    let options = ListenerOptions::new()
        .name(local_name(address)?)
        .reclaim_name(true)
        .try_overwrite(false);
    #[cfg(unix)]
    if let Address::Path(path) = address {
        use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
        reclaim_stale_socket_file(path)?;
        // Owner-only: only the write bit matters to connect(); 0600 keeps other users out.
        return Ok(options.mode(0o600));
    }
    #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
    if let Address::Local(name) = address {
        use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
        reclaim_stale_socket_file(&local_socket_path(name)?)?;
        return Ok(options.mode(0o600));
    }
    #[cfg(not(unix))]
    if let Address::Path(path) = address {
        reclaim_stale_socket_file(path)?;
    }
    Ok(options)
}

fn bind_error(address: &Address, err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::AddrInUse {
        return Error::new(
            ErrorKind::AlreadyExists,
            format!("{address} is already in use ({err})"),
        )
        .with_source(err);
    }
    Error::io(format!("listen on {address}"), err)
}

/// A blocking listener.
#[derive(Debug)]
pub(crate) enum SyncListener {
    Local(interprocess::local_socket::Listener),
    Tcp(std::net::TcpListener),
    #[cfg(feature = "tls")]
    Tls(std::net::TcpListener, Arc<rustls::ServerConfig>),
    Ws(std::net::TcpListener, ws::WsListen, u32, Duration),
    #[cfg(feature = "tls")]
    Wss(
        std::net::TcpListener,
        ws::WsListen,
        Arc<rustls::ServerConfig>,
    ),
}

/// What a `ws://` or `wss://` listener needs besides its TCP listener (and TLS config);
/// returns it with the TCP `host:port` to bind.
fn ws_listen(address: &Address, http: Arc<ws::HttpSettings>) -> (&str, ws::WsListen) {
    let (Address::WebSocket { host_port, path } | Address::SecureWebSocket { host_port, path }) =
        address
    else {
        unreachable!("ws_listen is only called for websocket addresses")
    };
    let host = match host_port.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => host_port,
    };
    let listen = ws::WsListen {
        path: path.clone(),
        host: host.to_owned(),
        settings: http,
        secure: matches!(address, Address::SecureWebSocket { .. }),
    };
    (host_port, listen)
}

fn tcp_bind_sync(address: &Address, host_port: &str) -> Result<(std::net::TcpListener, String)> {
    let listener =
        std::net::TcpListener::bind(host_port).map_err(|err| bind_error(address, err))?;
    let bound = listener
        .local_addr()
        .map_err(|err| Error::io("local address of listener", err))?;
    Ok((listener, bound.to_string()))
}

fn tcp_accept_sync(listener: &std::net::TcpListener) -> Result<TcpStream> {
    let (stream, _) = listener
        .accept()
        .map_err(|err| Error::io("accept a tcp connection", err))?;
    stream
        .set_nodelay(true)
        .map_err(|err| Error::io("set TCP_NODELAY", err))?;
    Ok(stream)
}

impl SyncListener {
    pub(crate) fn bind(
        address: &Address,
        config: &ConnectionConfig,
    ) -> Result<(SyncListener, Address)> {
        address.validate()?;
        config.check_bind(address)?;
        match address {
            Address::Tcp(host_port) => {
                let (listener, bound) = tcp_bind_sync(address, host_port)?;
                Ok((SyncListener::Tcp(listener), Address::Tcp(bound)))
            }
            Address::WebSocket { path, .. } => {
                let (host_port, listen) = ws_listen(address, Arc::default());
                let (listener, bound) = tcp_bind_sync(address, host_port)?;
                let max = config.limits().max_frame_len();
                Ok((
                    SyncListener::Ws(listener, listen, max, config.handshake_timeout()),
                    Address::websocket(bound, path.clone()),
                ))
            }
            #[cfg(feature = "tls")]
            Address::Tls(host_port) => {
                let tls = config.tls_server().ok_or_else(|| no_tls_server(address))?;
                let tls = tls.build()?;
                let (listener, bound) = tcp_bind_sync(address, host_port)?;
                Ok((SyncListener::Tls(listener, tls), Address::Tls(bound)))
            }
            #[cfg(feature = "tls")]
            Address::SecureWebSocket { path, .. } => {
                let tls = config.tls_server().ok_or_else(|| no_tls_server(address))?;
                let tls = tls.build()?;
                let (host_port, listen) = ws_listen(address, Arc::default());
                let (listener, bound) = tcp_bind_sync(address, host_port)?;
                Ok((
                    SyncListener::Wss(listener, listen, tls),
                    Address::secure_websocket(bound, path.clone()),
                ))
            }
            #[cfg(not(feature = "tls"))]
            Address::Tls(_) | Address::SecureWebSocket { .. } => Err(no_tls(address)),
            _ => {
                let listener = listener_options(address)?
                    .create_sync()
                    .map_err(|err| bind_error(address, err))?;
                Ok((SyncListener::Local(listener), address.clone()))
            }
        }
    }

    /// Accepts one stream; a TLS handshake and an HTTP upgrade, if any, are done by
    /// `deadline` (asked for once the TCP connection is accepted).
    pub(crate) fn accept(
        &self,
        config: &ConnectionConfig,
        deadline: impl FnOnce() -> Instant,
    ) -> Result<(SyncStream, PeerFacts)> {
        let _ = config;
        match self {
            SyncListener::Tcp(listener) => Ok((
                SyncStream::Tcp(tcp_accept_sync(listener)?),
                PeerFacts::default(),
            )),
            SyncListener::Ws(listener, listen, max_frame_len, timeout) => {
                let stream = tcp_accept_sync(listener)?;
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "an unknown peer".to_owned(), |peer| peer.to_string());
                let ws = ws::accept_sync(stream, listen, *max_frame_len, deadline(), *timeout)
                    .map_err(|err| err.context(format_args!("websocket from {peer}")))?;
                Ok((SyncStream::Ws(Box::new(ws)), PeerFacts::default()))
            }
            #[cfg(feature = "tls")]
            SyncListener::Wss(listener, listen, tls) => {
                let stream = tcp_accept_sync(listener)?;
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "an unknown peer".to_owned(), |peer| peer.to_string());
                let deadline = deadline();
                let timeout = config.handshake_timeout();
                let (stream, certificate) = tls::accept_sync(stream, tls, deadline, timeout)
                    .map_err(|err| err.context(format_args!("wss from {peer}")))?;
                let ws = ws::accept_sync(
                    tls::SyncTlsIo(stream),
                    listen,
                    config.limits().max_frame_len(),
                    deadline,
                    timeout,
                )
                .map_err(|err| err.context(format_args!("websocket from {peer}")))?;
                let facts = PeerFacts {
                    uid: None,
                    certificate,
                };
                Ok((SyncStream::Ws(Box::new(ws)), facts))
            }
            #[cfg(feature = "tls")]
            SyncListener::Tls(listener, tls) => {
                let stream = tcp_accept_sync(listener)?;
                let (stream, certificate) =
                    tls::accept_sync(stream, tls, deadline(), config.handshake_timeout())?;
                let facts = PeerFacts {
                    uid: None,
                    certificate,
                };
                Ok((SyncStream::TlsServer(Box::new(stream)), facts))
            }
            SyncListener::Local(listener) => {
                let _ = deadline;
                let stream = listener
                    .accept()
                    .map_err(|err| Error::io("accept a local connection", err))?;
                let facts = PeerFacts::with_uid(peer_uid(stream.peer_creds()));
                Ok((SyncStream::Local(stream), facts))
            }
        }
    }
}

fn peer_uid(creds: io::Result<interprocess::local_socket::PeerCreds>) -> Option<u32> {
    #[cfg(unix)]
    {
        creds.ok().and_then(|creds| creds.euid())
    }
    #[cfg(not(unix))]
    {
        let _ = creds;
        None
    }
}

/// A tokio listener.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum AsyncListener {
    Local(interprocess::local_socket::tokio::Listener),
    Tcp(tokio::net::TcpListener),
    #[cfg(feature = "tls")]
    Tls(tokio::net::TcpListener, Arc<rustls::ServerConfig>),
    Ws(tokio::net::TcpListener, ws::WsListen),
    #[cfg(feature = "tls")]
    Wss(
        tokio::net::TcpListener,
        ws::WsListen,
        Arc<rustls::ServerConfig>,
    ),
}

#[cfg(feature = "tokio")]
async fn tcp_bind_async(
    address: &Address,
    host_port: &str,
) -> Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(host_port)
        .await
        .map_err(|err| bind_error(address, err))?;
    let bound = listener
        .local_addr()
        .map_err(|err| Error::io("local address of listener", err))?;
    Ok((listener, bound.to_string()))
}

/// A stream just accepted, before its TLS handshake (if any): the accept loop hands it to
/// a task of its own, so that a slow handshake never holds up the next accept.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) struct Pending {
    stream: AsyncStream,
    #[cfg(feature = "tls")]
    acceptor: Option<Arc<rustls::ServerConfig>>,
    facts: PeerFacts,
}

#[cfg(feature = "tokio")]
impl Pending {
    /// Completes the TLS handshake, if any, by `deadline`.
    pub(crate) async fn finish(
        self,
        config: &ConnectionConfig,
        deadline: Instant,
    ) -> Result<(AsyncStream, PeerFacts)> {
        let _ = (config, deadline);
        #[cfg(feature = "tls")]
        if let (Some(acceptor), AsyncStream::Tcp(tcp)) = (&self.acceptor, &self.stream) {
            let _ = tcp;
            let AsyncStream::Tcp(tcp) = self.stream else {
                unreachable!("matched above")
            };
            let (stream, certificate) =
                tls::accept_async(tcp, acceptor, deadline, config.handshake_timeout()).await?;
            let facts = PeerFacts {
                certificate,
                ..self.facts
            };
            return Ok((AsyncStream::Tls(Box::new(stream)), facts));
        }
        // A `wss://` connection: TLS now, its HTTP request after (`upgrade`).
        #[cfg(feature = "tls")]
        if let (Some(acceptor), AsyncStream::Http(..)) = (&self.acceptor, &self.stream) {
            let AsyncStream::Http(tcp, listen) = self.stream else {
                unreachable!("matched above")
            };
            let (stream, certificate) =
                tls::accept_async(tcp, acceptor, deadline, config.handshake_timeout()).await?;
            let facts = PeerFacts {
                certificate,
                ..self.facts
            };
            return Ok((AsyncStream::Https(Box::new(stream), listen), facts));
        }
        Ok((self.stream, self.facts))
    }
}

#[cfg(feature = "tokio")]
impl AsyncListener {
    /// Binds; must run inside a tokio runtime. Returns the bound address (the real port).
    /// A `ws://` listener serves `http`'s files and origin rules.
    pub(crate) async fn bind(
        address: &Address,
        config: &ConnectionConfig,
        http: Arc<ws::HttpSettings>,
    ) -> Result<(AsyncListener, Address)> {
        address.validate()?;
        config.check_bind(address)?;
        match address {
            Address::Tcp(host_port) => {
                let (listener, bound) = tcp_bind_async(address, host_port).await?;
                Ok((AsyncListener::Tcp(listener), Address::Tcp(bound)))
            }
            Address::WebSocket { path, .. } => {
                let (host_port, listen) = ws_listen(address, http);
                let (listener, bound) = tcp_bind_async(address, host_port).await?;
                Ok((
                    AsyncListener::Ws(listener, listen),
                    Address::websocket(bound, path.clone()),
                ))
            }
            #[cfg(feature = "tls")]
            Address::Tls(host_port) => {
                let tls = config.tls_server().ok_or_else(|| no_tls_server(address))?;
                let acceptor = tls.build()?;
                let (listener, bound) = tcp_bind_async(address, host_port).await?;
                Ok((AsyncListener::Tls(listener, acceptor), Address::Tls(bound)))
            }
            #[cfg(feature = "tls")]
            Address::SecureWebSocket { path, .. } => {
                let tls = config.tls_server().ok_or_else(|| no_tls_server(address))?;
                let acceptor = tls.build()?;
                let (host_port, listen) = ws_listen(address, http);
                let (listener, bound) = tcp_bind_async(address, host_port).await?;
                Ok((
                    AsyncListener::Wss(listener, listen, acceptor),
                    Address::secure_websocket(bound, path.clone()),
                ))
            }
            #[cfg(not(feature = "tls"))]
            Address::Tls(_) | Address::SecureWebSocket { .. } => Err(no_tls(address)),
            _ => {
                let listener = listener_options(address)?
                    .create_tokio()
                    .map_err(|err| bind_error(address, err))?;
                Ok((AsyncListener::Local(listener), address.clone()))
            }
        }
    }

    /// Accepts one stream, with the peer's user id where the transport tells it and who
    /// it is for logs.
    pub(crate) async fn accept(&self) -> io::Result<(Pending, String)> {
        match self {
            AsyncListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let pending = Pending {
                    stream: AsyncStream::Tcp(stream),
                    #[cfg(feature = "tls")]
                    acceptor: None,
                    facts: PeerFacts::default(),
                };
                Ok((pending, peer.to_string()))
            }
            AsyncListener::Ws(listener, listen) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let pending = Pending {
                    stream: AsyncStream::Http(stream, listen.clone()),
                    #[cfg(feature = "tls")]
                    acceptor: None,
                    facts: PeerFacts::default(),
                };
                Ok((pending, format!("ws {peer}")))
            }
            #[cfg(feature = "tls")]
            AsyncListener::Wss(listener, listen, acceptor) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let pending = Pending {
                    stream: AsyncStream::Http(stream, listen.clone()),
                    acceptor: Some(Arc::clone(acceptor)),
                    facts: PeerFacts::default(),
                };
                Ok((pending, format!("wss {peer}")))
            }
            #[cfg(feature = "tls")]
            AsyncListener::Tls(listener, acceptor) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let pending = Pending {
                    stream: AsyncStream::Tcp(stream),
                    acceptor: Some(Arc::clone(acceptor)),
                    facts: PeerFacts::default(),
                };
                Ok((pending, peer.to_string()))
            }
            AsyncListener::Local(listener) => {
                let stream = listener.accept().await?;
                let uid = peer_uid(stream.peer_creds());
                let who = match uid {
                    Some(uid) => format!("local uid {uid}"),
                    None => "local".to_owned(),
                };
                let pending = Pending {
                    stream: AsyncStream::Local(stream),
                    #[cfg(feature = "tls")]
                    acceptor: None,
                    facts: PeerFacts::with_uid(uid),
                };
                Ok((pending, who))
            }
        }
    }
}

/// A tokio byte stream, before it is split.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum AsyncStream {
    Local(TokioLocalStream),
    Tcp(tokio::net::TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<AsyncTlsStream>),
    /// An accepted connection to a `ws://` listener, before its HTTP request is read
    /// ([`upgrade`](AsyncStream::upgrade)).
    Http(tokio::net::TcpStream, ws::WsListen),
    /// An accepted connection to a `wss://` listener after its TLS handshake, before its
    /// HTTP request is read.
    #[cfg(feature = "tls")]
    Https(Box<AsyncTlsStream>, ws::WsListen),
    Ws(ws::AsyncWs),
}

/// A TCP connection to `host_port` with the TLS handshake done over it by `deadline` (the
/// stream under `tls:` and `wss://`).
#[cfg(all(feature = "tokio", feature = "tls"))]
async fn tls_connect_async(
    address: &Address,
    host_port: &str,
    config: &ConnectionConfig,
    deadline: Instant,
) -> Result<tls::AsyncTlsStream> {
    let stream = tcp_connect_async(address, host_port).await?;
    tls::connect_async(
        stream,
        host_port,
        &config.tls_client(),
        deadline,
        config.handshake_timeout(),
    )
    .await
}

#[cfg(feature = "tokio")]
async fn tcp_connect_async(address: &Address, host_port: &str) -> Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(host_port)
        .await
        .map_err(|err| connect_error(address, err))?;
    stream
        .set_nodelay(true)
        .map_err(|err| Error::io("set TCP_NODELAY", err))?;
    Ok(stream)
}

#[cfg(feature = "tokio")]
impl AsyncStream {
    /// Runs the HTTP side of an accepted `ws://` or `wss://` connection by `deadline`:
    /// `Some` WebSocket stream after an upgrade, `None` after a file was served. Other
    /// streams are returned as they are.
    pub(crate) async fn upgrade(
        self,
        config: &ConnectionConfig,
        peer: &str,
        deadline: Instant,
    ) -> Result<Option<AsyncStream>> {
        let max_frame_len = config.limits().max_frame_len();
        let timeouts = (deadline, config.handshake_timeout());
        let accepted = match self {
            AsyncStream::Http(stream, listen) => {
                ws::accept_async(stream, &listen, max_frame_len, timeouts, peer.to_owned()).await?
            }
            #[cfg(feature = "tls")]
            AsyncStream::Https(stream, listen) => {
                let stream = tls::AsyncTlsIo(stream);
                ws::accept_async(stream, &listen, max_frame_len, timeouts, peer.to_owned()).await?
            }
            other => return Ok(Some(other)),
        };
        Ok(match accepted {
            ws::Accepted::Ws(ws) => Some(AsyncStream::Ws(ws)),
            ws::Accepted::Served => None,
        })
    }

    /// Connects; a TLS handshake, if any, is done by `deadline`.
    pub(crate) async fn connect(
        address: &Address,
        config: &ConnectionConfig,
        deadline: Instant,
    ) -> Result<AsyncStream> {
        address.validate()?;
        let _ = (config, deadline);
        match address {
            Address::Tcp(host_port) => Ok(AsyncStream::Tcp(
                tcp_connect_async(address, host_port).await?,
            )),
            Address::WebSocket { host_port, path } => {
                let stream = tcp_connect_async(address, host_port).await?;
                let ws = ws::connect_async(
                    stream,
                    &ws::url(host_port, path),
                    config.limits().max_frame_len(),
                    deadline,
                    config.handshake_timeout(),
                )
                .await?;
                Ok(AsyncStream::Ws(ws))
            }
            #[cfg(feature = "tls")]
            Address::SecureWebSocket { host_port, .. } => {
                // TLS first, then the WebSocket upgrade inside it, both by `deadline`.
                let stream = tls_connect_async(address, host_port, config, deadline).await?;
                let ws = ws::connect_async(
                    tls::AsyncTlsIo(Box::new(stream)),
                    &address.to_string(),
                    config.limits().max_frame_len(),
                    deadline,
                    config.handshake_timeout(),
                )
                .await?;
                Ok(AsyncStream::Ws(ws))
            }
            #[cfg(feature = "tls")]
            Address::Tls(host_port) => {
                let stream = tls_connect_async(address, host_port, config, deadline).await?;
                Ok(AsyncStream::Tls(Box::new(stream)))
            }
            #[cfg(not(feature = "tls"))]
            Address::Tls(_) | Address::SecureWebSocket { .. } => Err(no_tls(address)),
            _ => {
                let stream = TokioLocalStream::connect(local_name(address)?)
                    .await
                    .map_err(|err| connect_error(address, err))?;
                Ok(AsyncStream::Local(stream))
            }
        }
    }

    /// Splits into halves that can be used from two tasks. Local streams are shared through
    /// an `Arc` (`&Stream` reads and writes), since interprocess deprecated its `split`.
    pub(crate) fn into_split(self) -> (AsyncReadHalf, AsyncWriteHalf) {
        match self {
            AsyncStream::Local(stream) => {
                let stream = Arc::new(stream);
                (
                    AsyncReadHalf::Local(Arc::clone(&stream)),
                    AsyncWriteHalf::Local(stream),
                )
            }
            AsyncStream::Tcp(stream) | AsyncStream::Http(stream, _) => {
                let (read, write) = stream.into_split();
                (AsyncReadHalf::Tcp(read), AsyncWriteHalf::Tcp(write))
            }
            AsyncStream::Ws(stream) => {
                let (read, write) = stream.into_split();
                (AsyncReadHalf::Ws(read), AsyncWriteHalf::Ws(write))
            }
            #[cfg(feature = "tls")]
            AsyncStream::Tls(stream) | AsyncStream::Https(stream, _) => {
                let (read, write) = tokio::io::split(*stream);
                (AsyncReadHalf::Tls(read), AsyncWriteHalf::Tls(write))
            }
        }
    }
}

/// The receiving half of an [`AsyncStream`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum AsyncReadHalf {
    Local(Arc<TokioLocalStream>),
    Tcp(tokio::net::tcp::OwnedReadHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::io::ReadHalf<AsyncTlsStream>),
    Ws(ws::AsyncWsRead),
}

/// The sending half of an [`AsyncStream`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum AsyncWriteHalf {
    Local(Arc<TokioLocalStream>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::io::WriteHalf<AsyncTlsStream>),
    Ws(ws::AsyncWsWrite),
}

#[cfg(feature = "tokio")]
impl AsyncRead for AsyncReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncReadHalf::Local(stream) => Pin::new(&mut &**stream).poll_read(cx, buf),
            AsyncReadHalf::Tcp(half) => Pin::new(half).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            AsyncReadHalf::Tls(half) => match Pin::new(half).poll_read(cx, buf) {
                // See `eof_is_end`: the end of the stream, not an error.
                Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
            AsyncReadHalf::Ws(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

#[cfg(feature = "tokio")]
impl AsyncWrite for AsyncWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_write(cx, buf),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            AsyncWriteHalf::Tls(half) => Pin::new(half).poll_write(cx, buf),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_flush(cx),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_flush(cx),
            #[cfg(feature = "tls")]
            AsyncWriteHalf::Tls(half) => Pin::new(half).poll_flush(cx),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_shutdown(cx),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            AsyncWriteHalf::Tls(half) => Pin::new(half).poll_shutdown(cx),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}
