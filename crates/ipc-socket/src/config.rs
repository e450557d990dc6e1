//! Connection settings shared by every side, and helpers common to the blocking and async code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_core::{
    Close, CloseCode, Error, ErrorKind, FEATURE_BATCH, FEATURE_TOKEN, Hello, Limits, MessageType,
    Result,
};

use crate::address::Address;
#[cfg(feature = "tls")]
use crate::tls::{TlsClientConfig, TlsServerConfig};
use crate::token::Token;

/// How often an idle side probes its peer, and when it gives up on a silent one.
///
/// A side that has heard nothing for `interval` sends a ping; one that has heard nothing
/// (no frame at all, data or pong) for `timeout` fails with [`ErrorKind::PeerDied`].
/// Build one with [`Heartbeat::new`] (or take the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Idle time before a ping is sent.
    pub interval: Duration,
    /// Silence after which the peer counts as dead.
    pub timeout: Duration,
}

impl Heartbeat {
    /// A ping after `interval` of silence; dead after `timeout` of it.
    pub fn new(interval: Duration, timeout: Duration) -> Heartbeat {
        Heartbeat { interval, timeout }
    }
}

impl Default for Heartbeat {
    /// A ping after 1 s of silence, dead after 5 s.
    fn default() -> Heartbeat {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Settings of one connection: the message type, limits, handshake deadline, heartbeats,
/// and how much output is coalesced before it is written.
///
/// ```
/// use std::time::Duration;
/// use ipc_socket::ConnectionConfig;
///
/// let config = ConnectionConfig::new::<String>()
///     .with_handshake_timeout(Duration::from_secs(2))
///     .without_heartbeat();
/// assert!(config.heartbeat().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    message_type: MessageType,
    limits: Limits,
    handshake_timeout: Duration,
    heartbeat: Option<Heartbeat>,
    frame_timeout: Option<Duration>,
    flush_threshold: usize,
    features: u32,
    token: Option<Token>,
    accepted_tokens: Option<Arc<[Token]>>,
    insecure_public_bind: bool,
    #[cfg(feature = "tls")]
    tls_server: Option<TlsServerConfig>,
    #[cfg(feature = "tls")]
    tls_client: Option<TlsClientConfig>,
}

/// `Hello` feature bit 0: this side speaks the messaging patterns of ipc-core's PROTOCOL.md, section 5 (frame
/// kinds 0x06 to 0x0B). [`Server`](crate::Server) and [`Client`](crate::Client) set it.
#[cfg(feature = "tokio")]
pub(crate) const FEATURE_PATTERNS: u32 = 1;

impl ConnectionConfig {
    /// Defaults for messages of type `T`, identified by [`MessageType::of`]; peers built
    /// separately (or in another language) should use
    /// [`with_message_type`](ConnectionConfig::with_message_type) with an explicit name.
    pub fn new<T: ?Sized>() -> ConnectionConfig {
        ConnectionConfig {
            message_type: MessageType::of::<T>(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(5),
            heartbeat: Some(Heartbeat::default()),
            frame_timeout: Some(Duration::from_secs(10)),
            flush_threshold: 64 * 1024,
            // Every receiver here takes batch frames apart (ipc_core::FrameDecoder).
            features: FEATURE_BATCH,
            token: None,
            accepted_tokens: None,
            insecure_public_bind: false,
            #[cfg(feature = "tls")]
            tls_server: None,
            #[cfg(feature = "tls")]
            tls_client: None,
        }
    }

    /// Client side: presents `token` to the server in the handshake (an `Auth` frame right
    /// after the hello, ipc-core's PROTOCOL.md section 3). A server that accepts no tokens
    /// ignores it. The token never appears in `Debug` output, errors or logs.
    pub fn with_token(mut self, token: Token) -> ConnectionConfig {
        self.token = Some(token);
        self
    }

    /// Server side: every client must present one of `tokens` in its handshake; a client
    /// with a missing or wrong token gets a close frame with code 11 (unauthorized) instead
    /// of the server's hello, and nothing else. Tokens are compared in constant time. An
    /// empty list refuses every client.
    pub fn with_accepted_tokens(mut self, tokens: Vec<Token>) -> ConnectionConfig {
        self.accepted_tokens = Some(tokens.into());
        self
    }

    /// Server side: allows listening on a `tcp:` address that is not loopback (such as
    /// `0.0.0.0` or a public interface) although the connection has neither TLS nor
    /// tokens, so that anyone who reaches the port can connect and read everything in the
    /// clear. Without this, such a bind fails with [`ErrorKind::PermissionDenied`]; with
    /// it, the bind logs a warning. Loopback addresses never need it.
    pub fn with_insecure_public_bind(mut self) -> ConnectionConfig {
        self.insecure_public_bind = true;
        self
    }

    /// Server side of `tls:` addresses: the server's certificate, key and (for mutual TLS)
    /// the client certificate authority.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_server(mut self, tls: TlsServerConfig) -> ConnectionConfig {
        self.tls_server = Some(tls);
        self
    }

    /// Client side of `tls:` addresses: whom to trust, and the client certificate for
    /// mutual TLS. Without it, a `tls:` client trusts the platform's root certificates.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_client(mut self, tls: TlsClientConfig) -> ConnectionConfig {
        self.tls_client = Some(tls);
        self
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls_server(&self) -> Option<&TlsServerConfig> {
        self.tls_server.as_ref()
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls_client(&self) -> TlsClientConfig {
        self.tls_client.clone().unwrap_or_default()
    }

    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub(crate) fn accepted_tokens(&self) -> Option<&[Token]> {
        self.accepted_tokens.as_deref()
    }

    /// Refuses (or, when allowed, warns about) a listener that anyone on the network can
    /// reach and that neither encrypts nor authenticates.
    pub(crate) fn check_bind(&self, address: &Address) -> Result<()> {
        let (Address::Tcp(host_port) | Address::WebSocket { host_port, .. }) = address else {
            return Ok(());
        };
        if self.accepted_tokens.is_some() || is_loopback(host_port) {
            return Ok(());
        }
        if self.insecure_public_bind {
            tracing::warn!(
                "listening on {address} without tls or tokens: anyone who reaches the port can connect, and traffic is not encrypted"
            );
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "refusing to listen on non-loopback {address} without tls or tokens (use a tls: address, ConnectionConfig::with_accepted_tokens, or opt in with ConnectionConfig::with_insecure_public_bind)"
            ),
        ))
    }

    /// The message type announced in the handshake.
    pub fn with_message_type(mut self, message_type: MessageType) -> ConnectionConfig {
        self.message_type = message_type;
        self
    }

    /// The largest frame this side accepts (announced to the peer in the handshake).
    pub fn with_limits(mut self, limits: Limits) -> ConnectionConfig {
        self.limits = limits;
        self
    }

    /// How long connecting and the handshake may take.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ConnectionConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// Heartbeat timing.
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> ConnectionConfig {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// No pings; a silent peer is never declared dead (a closed socket still is).
    pub fn without_heartbeat(mut self) -> ConnectionConfig {
        self.heartbeat = None;
        self
    }

    /// Does not offer to receive batch frames: the peer then sends every message in a data
    /// frame of its own (16 bytes of framing apiece instead of 2). For peers whose receiving
    /// code handles only the frame kinds 0x01 to 0x05.
    pub fn without_batches(mut self) -> ConnectionConfig {
        self.features &= !FEATURE_BATCH;
        self
    }

    /// How long a frame may take to arrive once its first byte has (default 10 s). A
    /// [`Server`] closes a client whose frame is not whole by then with
    /// close code 10 (frame timeout): a client that trickles bytes, or sends only fragments,
    /// cannot hold a connection slot.
    ///
    #[cfg_attr(feature = "tokio", doc = "\n[`Server`]: crate::Server")]
    #[cfg_attr(not(feature = "tokio"), doc = "\n[`Server`]: crate#feature-flags")]
    pub fn with_frame_timeout(mut self, timeout: Duration) -> ConnectionConfig {
        self.frame_timeout = Some(timeout);
        self
    }

    /// No frame deadline: a partial frame may take any time to complete.
    pub fn without_frame_timeout(mut self) -> ConnectionConfig {
        self.frame_timeout = None;
        self
    }

    /// The frame deadline, if any.
    pub fn frame_timeout(&self) -> Option<Duration> {
        self.frame_timeout
    }

    /// Output is written once this many bytes are buffered (or on `flush`); default 64 KiB.
    pub fn with_flush_threshold(mut self, bytes: usize) -> ConnectionConfig {
        self.flush_threshold = bytes.max(1);
        self
    }

    /// The message type.
    pub fn message_type(&self) -> &MessageType {
        &self.message_type
    }

    /// The receive limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The heartbeat, if any.
    pub fn heartbeat(&self) -> Option<Heartbeat> {
        self.heartbeat
    }

    /// The flush threshold in bytes.
    pub fn flush_threshold(&self) -> usize {
        self.flush_threshold
    }

    pub(crate) fn hello(&self) -> Hello {
        let token = if self.token.is_some() {
            FEATURE_TOKEN
        } else {
            0
        };
        Hello::new(self.message_type.clone(), &self.limits).with_features(self.features | token)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn with_patterns(mut self) -> ConnectionConfig {
        self.features |= FEATURE_PATTERNS;
        self
    }
}

/// Whether the host of `host:port` is a loopback address (`127.0.0.0/8`, `::1`) or
/// `localhost`; names are not resolved, so any other name counts as public.
fn is_loopback(host_port: &str) -> bool {
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The close code that tells a peer why its input was refused.
pub(crate) fn close_code_for(err: &Error) -> CloseCode {
    match err.kind() {
        ErrorKind::TooLarge => CloseCode::TOO_LARGE,
        ErrorKind::TypeMismatch => CloseCode::TYPE_MISMATCH,
        ErrorKind::Decode => CloseCode::DECODE_ERROR,
        ErrorKind::Full => CloseCode::TOO_SLOW,
        ErrorKind::PermissionDenied if crate::protocol::is_unauthorized(err) => {
            CloseCode::UNAUTHORIZED
        }
        ErrorKind::PermissionDenied => CloseCode::REFUSED,
        _ => CloseCode::PROTOCOL_ERROR,
    }
}

/// The close frame that tells a peer about `err`.
pub(crate) fn close_frame_for(err: &Error) -> Vec<u8> {
    let mut out = Vec::new();
    // A close frame's payload is bounded (reason cut to MAX_NAME_LEN), so encoding succeeds.
    let _ = Close::new(close_code_for(err), err.to_string()).encode_frame(&mut out);
    out
}

/// Liveness bookkeeping for one connection.
#[derive(Debug)]
pub(crate) struct Liveness {
    heartbeat: Option<Heartbeat>,
    last_heard: Instant,
    pinged: bool,
    nonce: u32,
}

/// What the heartbeat wants done now.
#[cfg_attr(
    not(feature = "tokio"),
    expect(
        dead_code,
        reason = "the durations bound the reads of the tokio connections only"
    )
)]
pub(crate) enum Beat {
    /// Nothing; check again within the duration.
    Wait(Duration),
    /// Send a ping with this nonce, then check again within the duration.
    Ping(u32, Duration),
}

impl Liveness {
    pub(crate) fn new(heartbeat: Option<Heartbeat>) -> Liveness {
        Liveness {
            heartbeat,
            last_heard: Instant::now(),
            pinged: false,
            nonce: 0,
        }
    }

    #[inline]
    pub(crate) fn heard(&mut self) {
        // Without heartbeats nobody asks when the peer was last heard: save the clock read.
        if self.heartbeat.is_some() {
            self.last_heard = Instant::now();
            self.pinged = false;
        }
    }

    /// The interval to wait in reads when nothing else bounds the wait.
    pub(crate) fn poll_interval(&self) -> Option<Duration> {
        self.heartbeat.map(|heartbeat| heartbeat.interval)
    }

    /// Awaits `future` for at most `wait` when heartbeats are on (`None` if the time ran
    /// out), or without a timer when they are off: a timer per read costs a round trip
    /// measurable time.
    #[cfg(feature = "tokio")]
    pub(crate) async fn within<F: std::future::Future>(
        &self,
        wait: Duration,
        future: F,
    ) -> Option<F::Output> {
        if self.heartbeat.is_none() {
            return Some(future.await);
        }
        tokio::time::timeout(wait, future).await.ok()
    }

    /// Decides, at `now`, whether to ping, and how long the next read may wait.
    ///
    /// It never declares the peer dead by itself: that is [`expired`](Self::expired)'s job,
    /// asked only after a read timed out, so that bytes that arrived while this side was
    /// busy elsewhere count before a verdict.
    pub(crate) fn check(&mut self, now: Instant) -> Beat {
        let Some(heartbeat) = self.heartbeat else {
            return Beat::Wait(Duration::from_secs(3600));
        };
        let silent = now.saturating_duration_since(self.last_heard);
        let until_timeout = heartbeat.timeout.saturating_sub(silent);
        if silent >= heartbeat.interval && !self.pinged {
            self.pinged = true;
            self.nonce = self.nonce.wrapping_add(1);
            return Beat::Ping(
                self.nonce,
                until_timeout
                    .min(heartbeat.interval)
                    .max(Duration::from_millis(1)),
            );
        }
        let until_ping = heartbeat.interval.saturating_sub(silent);
        let wait = if self.pinged {
            until_timeout
        } else {
            until_ping.min(until_timeout)
        };
        Beat::Wait(wait.max(Duration::from_millis(1)))
    }

    /// After a read timed out: [`ErrorKind::PeerDied`] if the peer has been silent for the
    /// heartbeat timeout.
    pub(crate) fn expired(&self, now: Instant) -> Result<()> {
        let Some(heartbeat) = self.heartbeat else {
            return Ok(());
        };
        let silent = now.saturating_duration_since(self.last_heard);
        if silent < heartbeat.timeout {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PeerDied,
            format!(
                "peer silent for {} ms (heartbeat timeout {} ms)",
                silent.as_millis(),
                heartbeat.timeout.as_millis()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: &ConnectionConfig, address: &str) -> Result<()> {
        config.check_bind(&address.parse()?)
    }

    #[test]
    fn public_binds_need_tls_tokens_or_the_opt_in() {
        let plain = ConnectionConfig::new::<String>();
        for loopback in [
            "tcp:127.0.0.1:0",
            "tcp:127.9.9.9:1",
            "tcp:[::1]:0",
            "tcp:localhost:1",
            "ws://127.0.0.1:0/chat",
            "ws://localhost:1/",
        ] {
            check(&plain, loopback).unwrap();
        }
        check(&plain, "tls:0.0.0.0:0").unwrap();
        check(&plain, "local:x").unwrap();
        for public in [
            "tcp:0.0.0.0:0",
            "tcp:[::]:0",
            "tcp:10.1.2.3:80",
            "tcp:example.org:1",
            "ws://0.0.0.0:0/chat",
            "ws://[::]:8080/",
        ] {
            let err = check(&plain, public).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied);
            assert!(
                err.to_string().starts_with(&format!(
                    "refusing to listen on non-loopback {public} without tls or tokens"
                )),
                "{err}"
            );
            check(&plain.clone().with_insecure_public_bind(), public).unwrap();
            let tokens = vec![crate::Token::new("t").unwrap()];
            check(&plain.clone().with_accepted_tokens(tokens), public).unwrap();
        }
    }

    #[test]
    fn debug_output_hides_tokens() {
        let config = ConnectionConfig::new::<String>()
            .with_token(crate::Token::new("client-secret-1").unwrap())
            .with_accepted_tokens(vec![crate::Token::new("server-secret-2").unwrap()]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("Token(<hidden, 15 bytes>)"), "{shown}");
    }
}
