//! TLS under `tls:host:port` and `wss://host:port/path` addresses: rustls (ring provider)
//! over TCP, blocking and tokio.
//!
//! This module turns a connected TCP stream into an encrypted byte stream and back; framing
//! and the ipc handshake run on top exactly as over plain TCP, and for `wss://` the
//! WebSocket of `ws.rs` runs on top first ([`SyncTlsIo`], [`AsyncTlsIo`]). The hooks
//! elsewhere are small: [`Address::Tls`](crate::Address::Tls) and
//! [`Address::SecureWebSocket`](crate::Address::SecureWebSocket), a few variants in the
//! stream enums, and the calls to [`connect_sync`], [`accept_sync`], [`connect_async`] and
//! [`accept_async`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
#[cfg(feature = "tokio")]
use std::pin::Pin;
use std::sync::Arc;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The blocking TLS stream of a client.
pub(crate) type SyncClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
/// The blocking TLS stream of a server.
pub(crate) type SyncServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
/// The tokio TLS stream, either side: a plain byte stream (`AsyncRead + AsyncWrite`).
#[cfg(feature = "tokio")]
pub(crate) type AsyncTlsStream = tokio_rustls::TlsStream<tokio::net::TcpStream>;

/// A blocking TLS stream (either side) under a `wss://` WebSocket. A peer that closes
/// without TLS's close_notify ends the stream, as a closed TCP stream does under `ws://`,
/// so that the WebSocket layer reports the same end either way.
pub(crate) struct SyncTlsIo<C>(pub(crate) rustls::StreamOwned<C, TcpStream>);

impl<C, S> Read for SyncTlsIo<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

impl<C, S> Write for SyncTlsIo<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    /// Takes the bytes into TLS records and tries once to send them; tungstenite's flush
    /// (after every message) pushes out whatever the socket did not take.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<C, S> crate::ws::SyncIo for SyncTlsIo<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>> + Send + 'static,
    S: rustls::SideData,
{
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.sock.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.sock.set_write_timeout(timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.0.sock.set_nonblocking(nonblocking)
    }
}

/// The tokio TLS stream under a `wss://` WebSocket; like [`SyncTlsIo`], a missing
/// close_notify is the end of the stream.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncTlsIo(pub(crate) Box<AsyncTlsStream>);

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for AsyncTlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut *self.get_mut().0).poll_read(cx, buf) {
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for AsyncTlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, err: rustls::Error) -> Error {
    let kind = match &err {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::InvalidCertRevocationList(_) => ErrorKind::PermissionDenied,
        rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{what}: {}", describe(&err))).with_source(err)
}

fn is_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
            | A::DecryptError
    )
}

/// rustls's words, plus what they most likely mean for an ipc peer.
fn describe(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        | rustls::Error::InvalidMessage(rustls::InvalidMessage::UnknownProtocolVersion) => {
            format!("{err} (the peer does not speak TLS: a plaintext tcp: or ws:// peer?)")
        }
        rustls::Error::AlertReceived(_) => {
            format!("{err} (the peer refused this side's certificate or handshake)")
        }
        _ => err.to_string(),
    }
}

/// An I/O error from a TLS stream as an [`Error`]: rustls's own errors (a bad record, an
/// alert from the peer) keep their reason, others are [`Error::io`].
pub(crate) fn stream_error(what: &'static str, err: io::Error) -> Error {
    if err
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return io_error(what, err);
    }
    Error::io(what, err)
}

/// Turns an I/O error from a TLS handshake into an [`Error`], unwrapping rustls's own.
pub(crate) fn io_error(what: &str, err: io::Error) -> Error {
    if err
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        let inner = err
            .into_inner()
            .and_then(|inner| inner.downcast::<rustls::Error>().ok());
        if let Some(tls) = inner {
            return tls_error(what, *tls);
        }
        return Error::new(ErrorKind::Protocol, what.to_owned());
    }
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Error::new(
            ErrorKind::PeerDied,
            format!("{what}: the peer closed the stream during the tls handshake (a plaintext peer, or it refused this side)"),
        )
        .with_source(err);
    }
    if matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return Error::new(ErrorKind::Timeout, format!("{what}: timed out")).with_source(err);
    }
    Error::io(what.to_owned(), err)
}

fn read_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{what}: bad pem certificate ({err})"),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what}: no pem certificate found"),
        ));
    }
    Ok(certs)
}

fn read_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    // The error names the problem, never the key's bytes.
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{what}: no usable pem private key ({err})"),
        )
    })
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| Error::io(format!("read {what} {}", path.display()), err))
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_pem, "ca bundle")? {
        roots.add(cert).map_err(|err| tls_error("ca bundle", err))?;
    }
    Ok(roots)
}

/// A certificate chain and its private key; [`Debug`] shows neither.
#[derive(Clone)]
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity> {
        Ok(Identity {
            chain: read_certs(chain_pem, "certificate chain")?,
            key: Arc::new(read_key(key_pem, "private key")?),
        })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({} certificates, key hidden)", self.chain.len())
    }
}

/// The server side of TLS: its certificate chain and key, and optionally the CA that client
/// certificates must chain to (mutual TLS).
///
/// ```
/// use ipc_socket::{ConnectionConfig, TlsServerConfig};
///
/// # fn build(chain_pem: &[u8], key_pem: &[u8], client_ca_pem: &[u8]) -> ipc_core::Result<()> {
/// let tls = TlsServerConfig::from_pem(chain_pem, key_pem)?
///     .require_client_certificates(client_ca_pem)?; // mutual TLS: optional
/// let config = ConnectionConfig::new::<String>().with_tls_server(tls);
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Debug)]
pub struct TlsServerConfig {
    identity: Identity,
    client_roots: Option<Arc<RootCertStore>>,
}

impl TlsServerConfig {
    /// The server's certificate chain (PEM, leaf first) and private key (PEM: PKCS#8, PKCS#1
    /// or SEC1). [`ErrorKind::InvalidInput`] if either does not parse or they do not match.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<TlsServerConfig> {
        let config = TlsServerConfig {
            identity: Identity::from_pem(chain_pem, key_pem)?,
            client_roots: None,
        };
        config.build()?;
        Ok(config)
    }

    /// [`from_pem`](TlsServerConfig::from_pem) with the PEM read from two files.
    pub fn from_pem_files(
        chain_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<TlsServerConfig> {
        let chain = read_file(chain_path.as_ref(), "certificate chain")?;
        let key = read_file(key_path.as_ref(), "private key")?;
        TlsServerConfig::from_pem(&chain, &key)
    }

    /// Mutual TLS: every client must present a certificate that chains to one in
    /// `ca_pem` (PEM, one or more certificates); others fail the TLS handshake. The
    /// accepted client's identity is in [`ServerHandle::peer`] (a `Server`, feature
    /// `tokio`) or [`Connection::peer_certificate`](crate::Connection::peer_certificate) (a
    /// [`Listener`](crate::Listener)), on `tls:` and `wss://` addresses alike.
    ///
    #[cfg_attr(
        feature = "tokio",
        doc = "\n[`ServerHandle::peer`]: crate::ServerHandle::peer"
    )]
    #[cfg_attr(
        not(feature = "tokio"),
        doc = "\n[`ServerHandle::peer`]: crate#feature-flags"
    )]
    pub fn require_client_certificates(mut self, ca_pem: &[u8]) -> Result<TlsServerConfig> {
        self.client_roots = Some(Arc::new(root_store(ca_pem)?));
        self.build()?;
        Ok(self)
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_roots.is_some()
    }

    pub(crate) fn build(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_error("tls server config", err))?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    provider,
                )
                .build()
                .map_err(|err| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("client certificate authority: {err}"),
                    )
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())
            .map_err(|err| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("server certificate and key: {err}"),
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// How a client decides to trust the server.
#[derive(Clone, Debug)]
enum Trust {
    Platform,
    Roots(Arc<RootCertStore>),
    Pinned(Arc<PinnedVerifier>),
}

/// The client side of TLS: whom to trust (the platform's roots by default, a CA bundle, or
/// one pinned certificate) and, for mutual TLS, the client's own certificate.
///
/// The server name checked against the certificate is the host of the `tls:HOST:PORT` or
/// `wss://HOST:PORT/PATH` address (a DNS name or an IP address).
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Debug)]
pub struct TlsClientConfig {
    trust: Trust,
    identity: Option<Identity>,
}

impl Default for TlsClientConfig {
    fn default() -> TlsClientConfig {
        TlsClientConfig::platform_roots()
    }
}

impl TlsClientConfig {
    /// Trusts the platform's root certificates (the system store, read when connecting;
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` override it).
    pub fn platform_roots() -> TlsClientConfig {
        TlsClientConfig {
            trust: Trust::Platform,
            identity: None,
        }
    }

    /// Trusts exactly the certificate authorities in `ca_pem` (PEM, one or more).
    pub fn with_ca_pem(ca_pem: &[u8]) -> Result<TlsClientConfig> {
        Ok(TlsClientConfig {
            trust: Trust::Roots(Arc::new(root_store(ca_pem)?)),
            identity: None,
        })
    }

    /// [`with_ca_pem`](TlsClientConfig::with_ca_pem) with the PEM read from a file.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<TlsClientConfig> {
        TlsClientConfig::with_ca_pem(&read_file(path.as_ref(), "ca bundle")?)
    }

    /// **Dangerous**: trusts one server certificate, given in DER, and nothing else: no
    /// chain, no certificate authority and no server name are checked, only that the
    /// server presents exactly these bytes, inside their validity period, and holds their
    /// key. For a self-signed certificate whose bytes reached the client by a trusted path;
    /// anyone with that certificate's key can impersonate the server.
    pub fn danger_pin_certificate(certificate_der: impl Into<Vec<u8>>) -> TlsClientConfig {
        TlsClientConfig {
            trust: Trust::Pinned(Arc::new(PinnedVerifier {
                pinned: CertificateDer::from(certificate_der.into()),
                algorithms: provider().signature_verification_algorithms,
            })),
            identity: None,
        }
    }

    /// Presents this certificate chain (PEM, leaf first) and key (PEM) to servers that
    /// require client certificates (mutual TLS).
    pub fn with_client_certificate(
        mut self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsClientConfig> {
        self.identity = Some(Identity::from_pem(chain_pem, key_pem)?);
        self.build()?;
        Ok(self)
    }

    pub(crate) fn build(&self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_error("tls client config", err))?;
        let builder =
            match &self.trust {
                Trust::Platform => builder.with_root_certificates(platform_store()?),
                Trust::Roots(roots) => builder.with_root_certificates(Arc::clone(roots)),
                Trust::Pinned(pinned) => builder.dangerous().with_custom_certificate_verifier(
                    Arc::clone(pinned) as Arc<dyn ServerCertVerifier>,
                ),
            };
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|err| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("client certificate and key: {err}"),
                    )
                })?,
        };
        Ok(Arc::new(config))
    }
}

fn platform_store() -> Result<Arc<RootCertStore>> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        let why = loaded
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no platform root certificates ({why}): give a ca bundle"),
        ));
    }
    Ok(Arc::new(roots))
}

/// Trusts one exact certificate.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.pinned.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch))),
            ));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet,
            ));
        }
        if now > validity.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct PinMismatch;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server's certificate is not the pinned one")
    }
}

impl std::error::Error for PinMismatch {}

/// Who a mutual-TLS client is: its certificate's subject and subject alternative names.
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    subject: String,
    alt_names: Vec<String>,
}

impl PeerCertificate {
    fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject().to_string();
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                use x509_parser::extensions::GeneralName;
                let text = match name {
                    GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                    GeneralName::RFC822Name(email) => format!("email:{email}"),
                    GeneralName::URI(uri) => format!("URI:{uri}"),
                    GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                        Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                        Err(_) => match <[u8; 16]>::try_from(*bytes) {
                            Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                            Err(_) => continue,
                        },
                    },
                    _ => continue,
                };
                alt_names.push(text);
            }
        }
        Some(PeerCertificate { subject, alt_names })
    }

    /// The subject's distinguished name, e.g. `CN=alice, O=example`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject alternative names, each with its type: `DNS:alice.example`,
    /// `IP:127.0.0.1`, `email:alice@example.org`, `URI:spiffe://example/alice`.
    pub fn alt_names(&self) -> &[String] {
        &self.alt_names
    }
}

impl fmt::Display for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate `{}`", self.subject)?;
        if !self.alt_names.is_empty() {
            write!(f, " ({})", self.alt_names.join(", "))?;
        }
        Ok(())
    }
}

fn peer_certificate(certs: Option<&[CertificateDer<'static>]>) -> Option<PeerCertificate> {
    certs
        .and_then(|certs| certs.first())
        .and_then(|leaf| PeerCertificate::from_der(leaf.as_ref()))
}

/// The server name a client checks: the host part of `host:port` (brackets of an IPv6
/// literal removed).
fn server_name(host_port: &str) -> Result<ServerName<'static>> {
    let host = match host_port.rsplit_once(':') {
        Some((host, _port)) => host,
        None => host_port,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|err| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("tls server name `{host}`: {err}"),
        )
    })
}

fn left(deadline: Instant, timeout: Duration) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::new(
            ErrorKind::Timeout,
            format!("tls handshake not done within {} ms", timeout.as_millis()),
        ));
    }
    Ok(left)
}

/// Runs a blocking handshake to its end within `deadline`.
fn complete_sync<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    sock: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    while conn.is_handshaking() {
        let wait = left(deadline, timeout)?;
        sock.set_read_timeout(Some(wait))
            .and_then(|()| sock.set_write_timeout(Some(wait)))
            .map_err(|err| Error::io("set tls handshake timeouts", err))?;
        match conn.complete_io(sock) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                left(deadline, timeout)?;
            }
            Err(err) => {
                // Tell the peer why (an alert), best effort.
                let _ = conn.complete_io(sock);
                return Err(io_error(what, err));
            }
        }
    }
    // Whatever the handshake left to write (a client's last flight) goes out now.
    while conn.wants_write() {
        conn.write_tls(sock).map_err(|err| io_error(what, err))?;
    }
    sock.set_read_timeout(None)
        .and_then(|()| sock.set_write_timeout(None))
        .map_err(|err| Error::io("clear tls handshake timeouts", err))?;
    Ok(())
}

/// Client side, blocking: TLS over a connected TCP stream, done by `deadline`.
pub(crate) fn connect_sync(
    mut sock: TcpStream,
    host_port: &str,
    config: &TlsClientConfig,
    deadline: Instant,
    timeout: Duration,
) -> Result<SyncClientStream> {
    let what = format!("tls handshake with {host_port}");
    let mut conn = rustls::ClientConnection::new(config.build()?, server_name(host_port)?)
        .map_err(|err| tls_error(&what, err))?;
    complete_sync(&mut conn, &mut sock, deadline, timeout, &what)?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Server side, blocking: TLS over an accepted TCP stream, done by `deadline`.
pub(crate) fn accept_sync(
    mut sock: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(SyncServerStream, Option<PeerCertificate>)> {
    let what = "tls handshake with a new client";
    let mut conn =
        rustls::ServerConnection::new(Arc::clone(config)).map_err(|err| tls_error(what, err))?;
    complete_sync(&mut conn, &mut sock, deadline, timeout, what)?;
    let peer = peer_certificate(conn.peer_certificates());
    Ok((rustls::StreamOwned::new(conn, sock), peer))
}

/// Client side, tokio.
#[cfg(feature = "tokio")]
pub(crate) async fn connect_async(
    sock: tokio::net::TcpStream,
    host_port: &str,
    config: &TlsClientConfig,
    deadline: Instant,
    timeout: Duration,
) -> Result<AsyncTlsStream> {
    let what = format!("tls handshake with {host_port}");
    let connector = tokio_rustls::TlsConnector::from(config.build()?);
    let connect = connector.connect(server_name(host_port)?, sock);
    match tokio::time::timeout_at(deadline.into(), connect).await {
        Ok(Ok(stream)) => Ok(stream.into()),
        Ok(Err(err)) => Err(io_error(&what, err)),
        Err(_) => Err(left(Instant::now(), timeout).unwrap_err().context(&what)),
    }
}

/// Server side, tokio.
#[cfg(feature = "tokio")]
pub(crate) async fn accept_async(
    sock: tokio::net::TcpStream,
    config: &Arc<rustls::ServerConfig>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(AsyncTlsStream, Option<PeerCertificate>)> {
    let what = "tls handshake with a new client";
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
    match tokio::time::timeout_at(deadline.into(), acceptor.accept(sock)).await {
        Ok(Ok(stream)) => {
            let peer = peer_certificate(stream.get_ref().1.peer_certificates());
            Ok((stream.into(), peer))
        }
        Ok(Err(err)) => Err(io_error(what, err)),
        Err(_) => Err(left(Instant::now(), timeout).unwrap_err().context(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert_eq!(
            server_name("localhost:443").unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            server_name("bad host:1").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = TlsServerConfig::from_pem(b"nothing", b"nothing").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            "certificate chain: no pem certificate found"
        );
        let err = TlsClientConfig::with_ca_pem(b"-----BEGIN CERTIFICATE-----\n!!\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}
