//! [`ChannelConfig`]: how a channel is created or opened.

use std::time::Duration;

use ipc_core::MessageType;

use crate::wait::WaitMode;

/// How many times a blocking wait polls before it yields, by default.
pub(crate) const DEFAULT_SPIN: u32 = 100;
/// How long a blocking wait yields its core before it sleeps on the futex, by default.
pub(crate) const DEFAULT_YIELD: Duration = Duration::from_micros(50);

/// How a channel is created or opened.
///
/// ```
/// use std::time::Duration;
/// use ipc_shm::{ChannelConfig, WaitMode};
///
/// let config = ChannelConfig::new()
///     .with_capacity(1 << 20)
///     .with_max_senders(4)
///     .with_wait_mode(WaitMode::Polling)
///     .with_open_timeout(Duration::from_secs(2));
/// assert_eq!(config.capacity(), 1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub(super) capacity: usize,
    pub(super) max_senders: usize,
    pub(super) wait_mode: WaitMode,
    pub(super) spin: u32,
    pub(super) yield_for: Duration,
    pub(super) open_timeout: Duration,
    pub(super) message_type: Option<MessageType>,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            capacity: 256 * 1024,
            max_senders: 1,
            wait_mode: WaitMode::Blocking,
            spin: DEFAULT_SPIN,
            yield_for: DEFAULT_YIELD,
            open_timeout: Duration::from_secs(5),
            message_type: None,
        }
    }
}

impl ChannelConfig {
    /// The defaults: one sender, a ring of 256 KiB, blocking waits that spin 100 times and
    /// yield for 50 µs before they sleep, 5 s open timeout, the message type named by
    /// `std::any::type_name`.
    pub fn new() -> ChannelConfig {
        ChannelConfig::default()
    }

    /// The size in bytes of each sender's ring when creating: a power of two from
    /// [`MIN_CAPACITY`](crate::MIN_CAPACITY) to [`MAX_CAPACITY`](crate::MAX_CAPACITY). The
    /// largest message is 8 bytes smaller. Ignored by `open`, which takes the creator's.
    pub fn with_capacity(mut self, bytes: usize) -> ChannelConfig {
        self.capacity = bytes;
        self
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many sender processes may be attached at once (1 to
    /// [`MAX_SENDERS`](crate::MAX_SENDERS)), when creating. Each has its own ring of
    /// `capacity` bytes; messages of one sender arrive in order, those of different senders
    /// interleave. Ignored by `open`.
    pub fn with_max_senders(mut self, senders: usize) -> ChannelConfig {
        self.max_senders = senders;
        self
    }

    /// How many sender processes may be attached at once.
    pub fn max_senders(&self) -> usize {
        self.max_senders
    }

    /// How this end waits for its peer.
    pub fn with_wait_mode(mut self, mode: WaitMode) -> ChannelConfig {
        self.wait_mode = mode;
        self
    }

    /// How this end waits for its peer.
    pub fn wait_mode(&self) -> WaitMode {
        self.wait_mode
    }

    /// How many times a blocking wait polls before it sleeps.
    pub fn with_spin_iterations(mut self, spins: u32) -> ChannelConfig {
        self.spin = spins;
        self
    }

    /// How many times a blocking wait polls before it sleeps.
    pub fn spin_iterations(&self) -> u32 {
        self.spin
    }

    /// How long a blocking wait yields its core, after spinning, before it sleeps on the
    /// futex (50 µs by default). Yielding lets a peer on the same core run and spares a
    /// peer that answers soon the cost of a wake; zero sleeps right after the spins.
    pub fn with_yield_duration(mut self, duration: Duration) -> ChannelConfig {
        self.yield_for = duration;
        self
    }

    /// How long a blocking wait yields before it sleeps.
    pub fn yield_duration(&self) -> Duration {
        self.yield_for
    }

    /// How long `open` waits while the file at the name is not (yet) a rendezvous: one
    /// left blank, or written by something else (5 s by default). A name that does not
    /// exist is `NotFound` at once.
    pub fn with_open_timeout(mut self, timeout: Duration) -> ChannelConfig {
        self.open_timeout = timeout;
        self
    }

    /// How long `open` waits for the name to become a rendezvous.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    /// The message type both ends must agree on; by default `MessageType::of::<T>()`.
    /// Name it explicitly when the two ends are built separately.
    pub fn with_message_type(mut self, message_type: MessageType) -> ChannelConfig {
        self.message_type = Some(message_type);
        self
    }

    /// The message type set with [`with_message_type`](ChannelConfig::with_message_type),
    /// `None` for the default (`MessageType::of::<T>()` of the channel's `T`).
    pub fn message_type(&self) -> Option<&MessageType> {
        self.message_type.as_ref()
    }
}
