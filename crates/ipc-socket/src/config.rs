//! Connection settings shared by every side, and helpers common to the blocking and async code.

use std::time::{Duration, Instant};

use ipc_core::{
    Close, CloseCode, Error, ErrorKind, FEATURE_BATCH, Hello, Limits, MessageType, Result,
};

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
}

/// `Hello` feature bit 0: this side speaks the messaging patterns of ipc-core's PROTOCOL.md, section 5 (frame
/// kinds 0x06 to 0x0B). [`Server`](crate::Server) and [`Client`](crate::Client) set it.
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
        }
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
    /// [`Server`](crate::Server) closes a client whose frame is not whole by then with
    /// close code 10 (frame timeout): a client that trickles bytes, or sends only fragments,
    /// cannot hold a connection slot.
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
        Hello::new(self.message_type.clone(), &self.limits).with_features(self.features)
    }

    pub(crate) fn with_patterns(mut self) -> ConnectionConfig {
        self.features |= FEATURE_PATTERNS;
        self
    }
}

/// The close code that tells a peer why its input was refused.
pub(crate) fn close_code_for(err: &Error) -> CloseCode {
    match err.kind() {
        ErrorKind::TooLarge => CloseCode::TOO_LARGE,
        ErrorKind::TypeMismatch => CloseCode::TYPE_MISMATCH,
        ErrorKind::Decode => CloseCode::DECODE_ERROR,
        ErrorKind::Full => CloseCode::TOO_SLOW,
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
