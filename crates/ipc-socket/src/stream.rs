//! The byte streams under a connection: one enum over local sockets and TCP, blocking and
//! tokio, and the listeners that produce them. Framing lives above this module.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
use interprocess::local_socket::traits::{Listener as _, Stream as _, StreamCommon as _};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, Name, ToFsName as _};
#[cfg(not(all(unix, not(any(target_os = "linux", target_os = "android")))))]
use interprocess::local_socket::{GenericNamespaced, ToNsName as _};
use ipc_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::address::Address;
use crate::config::ConnectionConfig;
use crate::ws;

type LocalStream = interprocess::local_socket::Stream;
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
        Address::Tcp(_) | Address::WebSocket { .. } => {
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
    Ws(Box<ws::SyncWs>),
}

impl SyncStream {
    pub(crate) fn connect(address: &Address, config: &ConnectionConfig) -> Result<SyncStream> {
        address.validate()?;
        match address {
            Address::WebSocket { host_port, path } => {
                let stream = TcpStream::connect(host_port.as_str())
                    .map_err(|err| connect_error(address, err))?;
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                let ws = ws::connect_sync(
                    stream,
                    &ws::url(host_port, path),
                    config.limits().max_frame_len(),
                    config.handshake_timeout(),
                )?;
                Ok(SyncStream::Ws(Box::new(ws)))
            }
            Address::Tcp(host_port) => {
                let stream = TcpStream::connect(host_port.as_str())
                    .map_err(|err| connect_error(address, err))?;
                // Frames are coalesced above; Nagle's delay would only add latency.
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                Ok(SyncStream::Tcp(stream))
            }
            _ => {
                let stream = LocalStream::connect(local_name(address)?)
                    .map_err(|err| connect_error(address, err))?;
                Ok(SyncStream::Local(stream))
            }
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            SyncStream::Local(stream) => stream.set_recv_timeout(timeout),
            SyncStream::Tcp(stream) => stream.set_read_timeout(timeout),
            SyncStream::Ws(stream) => stream.with_io(|io| io.set_read_timeout(timeout)),
        }
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            SyncStream::Local(stream) => stream.set_send_timeout(timeout),
            SyncStream::Tcp(stream) => stream.set_write_timeout(timeout),
            SyncStream::Ws(stream) => stream.with_io(|io| io.set_write_timeout(timeout)),
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            SyncStream::Local(stream) => stream.set_nonblocking(nonblocking),
            SyncStream::Tcp(stream) => stream.set_nonblocking(nonblocking),
            SyncStream::Ws(stream) => stream.with_io(|io| io.set_nonblocking(nonblocking)),
        }
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Local(stream) => (&*stream).read(buf),
            SyncStream::Tcp(stream) => (&*stream).read(buf),
            SyncStream::Ws(stream) => stream.read(buf),
        }
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Local(stream) => (&*stream).write(buf),
            SyncStream::Tcp(stream) => (&*stream).write(buf),
            SyncStream::Ws(stream) => stream.write(buf),
        }
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
    Ws(std::net::TcpListener, ws::WsListen, u32, Duration),
}

/// Binds a TCP listener for a `ws://` address; returns it and the bound address.
fn ws_listen(address: &Address, http: Arc<ws::HttpSettings>) -> (&str, ws::WsListen) {
    let Address::WebSocket { host_port, path } = address else {
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
    };
    (host_port, listen)
}

impl SyncListener {
    pub(crate) fn bind(
        address: &Address,
        config: &ConnectionConfig,
    ) -> Result<(SyncListener, Address)> {
        address.validate()?;
        match address {
            Address::WebSocket { path, .. } => {
                let (host_port, listen) = ws_listen(address, Arc::default());
                let listener = std::net::TcpListener::bind(host_port)
                    .map_err(|err| bind_error(address, err))?;
                let bound = listener
                    .local_addr()
                    .map_err(|err| Error::io("local address of listener", err))?;
                let max = config.limits().max_frame_len();
                Ok((
                    SyncListener::Ws(listener, listen, max, config.handshake_timeout()),
                    Address::websocket(bound.to_string(), path.clone()),
                ))
            }
            Address::Tcp(host_port) => {
                let listener = std::net::TcpListener::bind(host_port.as_str())
                    .map_err(|err| bind_error(address, err))?;
                let bound = listener
                    .local_addr()
                    .map_err(|err| Error::io("local address of listener", err))?;
                Ok((SyncListener::Tcp(listener), Address::Tcp(bound.to_string())))
            }
            _ => {
                let listener = listener_options(address)?
                    .create_sync()
                    .map_err(|err| bind_error(address, err))?;
                Ok((SyncListener::Local(listener), address.clone()))
            }
        }
    }

    pub(crate) fn accept(&self) -> Result<(SyncStream, Option<u32>)> {
        match self {
            SyncListener::Ws(listener, listen, max_frame_len, timeout) => {
                let (stream, peer) = listener
                    .accept()
                    .map_err(|err| Error::io("accept a tcp connection", err))?;
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                let ws = ws::accept_sync(stream, listen, *max_frame_len, *timeout)
                    .map_err(|err| err.context(format_args!("websocket from {peer}")))?;
                Ok((SyncStream::Ws(Box::new(ws)), None))
            }
            SyncListener::Tcp(listener) => {
                let (stream, _) = listener
                    .accept()
                    .map_err(|err| Error::io("accept a tcp connection", err))?;
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                Ok((SyncStream::Tcp(stream), None))
            }
            SyncListener::Local(listener) => {
                let stream = listener
                    .accept()
                    .map_err(|err| Error::io("accept a local connection", err))?;
                let uid = peer_uid(stream.peer_creds());
                Ok((SyncStream::Local(stream), uid))
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
#[derive(Debug)]
pub(crate) enum AsyncListener {
    Local(interprocess::local_socket::tokio::Listener),
    Tcp(tokio::net::TcpListener),
    Ws(tokio::net::TcpListener, ws::WsListen),
}

impl AsyncListener {
    /// Binds; must run inside a tokio runtime. Returns the bound address (the real port).
    /// A `ws://` listener serves `http`'s files and origin rules.
    pub(crate) async fn bind(
        address: &Address,
        http: Arc<ws::HttpSettings>,
    ) -> Result<(AsyncListener, Address)> {
        address.validate()?;
        match address {
            Address::WebSocket { path, .. } => {
                let (host_port, listen) = ws_listen(address, http);
                let listener = tokio::net::TcpListener::bind(host_port)
                    .await
                    .map_err(|err| bind_error(address, err))?;
                let bound = listener
                    .local_addr()
                    .map_err(|err| Error::io("local address of listener", err))?;
                Ok((
                    AsyncListener::Ws(listener, listen),
                    Address::websocket(bound.to_string(), path.clone()),
                ))
            }
            Address::Tcp(host_port) => {
                let listener = tokio::net::TcpListener::bind(host_port.as_str())
                    .await
                    .map_err(|err| bind_error(address, err))?;
                let bound = listener
                    .local_addr()
                    .map_err(|err| Error::io("local address of listener", err))?;
                Ok((
                    AsyncListener::Tcp(listener),
                    Address::Tcp(bound.to_string()),
                ))
            }
            _ => {
                let listener = listener_options(address)?
                    .create_tokio()
                    .map_err(|err| bind_error(address, err))?;
                Ok((AsyncListener::Local(listener), address.clone()))
            }
        }
    }

    /// Accepts one stream and the peer's user id where the transport tells it.
    pub(crate) async fn accept(&self) -> io::Result<(AsyncStream, Option<u32>, String)> {
        match self {
            AsyncListener::Ws(listener, listen) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let peer = format!("ws {peer}");
                Ok((AsyncStream::Http(stream, listen.clone()), None, peer))
            }
            AsyncListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((AsyncStream::Tcp(stream), None, peer.to_string()))
            }
            AsyncListener::Local(listener) => {
                let stream = listener.accept().await?;
                let uid = peer_uid(stream.peer_creds());
                let who = match uid {
                    Some(uid) => format!("local uid {uid}"),
                    None => "local".to_owned(),
                };
                Ok((AsyncStream::Local(stream), uid, who))
            }
        }
    }
}

/// A tokio byte stream, before it is split.
#[derive(Debug)]
pub(crate) enum AsyncStream {
    Local(TokioLocalStream),
    Tcp(tokio::net::TcpStream),
    /// An accepted connection to a `ws://` listener, before its HTTP request is read
    /// ([`upgrade`](AsyncStream::upgrade)).
    Http(tokio::net::TcpStream, ws::WsListen),
    Ws(ws::AsyncWs),
}

impl AsyncStream {
    /// Runs the HTTP side of an accepted `ws://` connection: `Some` WebSocket stream after
    /// an upgrade, `None` after a file was served. Other streams are returned as they are.
    pub(crate) async fn upgrade(
        self,
        config: &ConnectionConfig,
        peer: &str,
    ) -> Result<Option<AsyncStream>> {
        let AsyncStream::Http(stream, listen) = self else {
            return Ok(Some(self));
        };
        let accepted = ws::accept_async(
            stream,
            &listen,
            config.limits().max_frame_len(),
            config.handshake_timeout(),
            peer.to_owned(),
        )
        .await?;
        Ok(match accepted {
            ws::Accepted::Ws(ws) => Some(AsyncStream::Ws(ws)),
            ws::Accepted::Served => None,
        })
    }

    pub(crate) async fn connect(
        address: &Address,
        config: &ConnectionConfig,
    ) -> Result<AsyncStream> {
        address.validate()?;
        match address {
            Address::WebSocket { host_port, path } => {
                let stream = tokio::net::TcpStream::connect(host_port.as_str())
                    .await
                    .map_err(|err| connect_error(address, err))?;
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                let ws = ws::connect_async(
                    stream,
                    &ws::url(host_port, path),
                    config.limits().max_frame_len(),
                    config.handshake_timeout(),
                )
                .await?;
                Ok(AsyncStream::Ws(ws))
            }
            Address::Tcp(host_port) => {
                let stream = tokio::net::TcpStream::connect(host_port.as_str())
                    .await
                    .map_err(|err| connect_error(address, err))?;
                stream
                    .set_nodelay(true)
                    .map_err(|err| Error::io("set TCP_NODELAY", err))?;
                Ok(AsyncStream::Tcp(stream))
            }
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
        }
    }
}

/// The receiving half of an [`AsyncStream`].
#[derive(Debug)]
pub(crate) enum AsyncReadHalf {
    Local(Arc<TokioLocalStream>),
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Ws(ws::AsyncWsRead),
}

/// The sending half of an [`AsyncStream`].
#[derive(Debug)]
pub(crate) enum AsyncWriteHalf {
    Local(Arc<TokioLocalStream>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Ws(ws::AsyncWsWrite),
}

impl AsyncRead for AsyncReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncReadHalf::Local(stream) => Pin::new(&mut &**stream).poll_read(cx, buf),
            AsyncReadHalf::Tcp(half) => Pin::new(half).poll_read(cx, buf),
            AsyncReadHalf::Ws(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AsyncWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_write(cx, buf),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_flush(cx),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_flush(cx),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncWriteHalf::Local(stream) => Pin::new(&mut &**stream).poll_shutdown(cx),
            AsyncWriteHalf::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            AsyncWriteHalf::Ws(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}
