//! Queue-wide configuration (stored in the queue) and per-handle options.

use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};

/// The largest message length a queue may be created with: 64 MiB.
pub const MAX_MESSAGE_LEN_LIMIT: u32 = 64 << 20;

/// The configuration of a queue, fixed when it is created and stored in it, so that every
/// process that opens the queue agrees on it.
///
/// ```
/// use std::time::Duration;
/// let config = ipc_queue::QueueConfig::new()
///     .with_lease(Duration::from_secs(10))
///     .with_max_messages(10_000);
/// assert_eq!(config.lease(), Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub(crate) max_message_len: u32,
    pub(crate) segment_len: u64,
    pub(crate) lease_ms: u64,
    pub(crate) max_deliveries: u32,
    pub(crate) ttl_ms: u64,
    pub(crate) max_messages: u64,
    pub(crate) max_bytes: u64,
    pub(crate) compact_at: u64,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            max_message_len: 1 << 20,
            segment_len: 64 << 20,
            lease_ms: 30_000,
            max_deliveries: 20,
            ttl_ms: 0,
            max_messages: 0,
            max_bytes: 0,
            compact_at: 8 << 20,
        }
    }
}

impl QueueConfig {
    /// The defaults: messages up to 1 MiB, 64 MiB segments, 30 s leases, 20 deliveries at
    /// most, no time-to-live, unbounded.
    pub fn new() -> QueueConfig {
        QueueConfig::default()
    }

    /// The largest encoded message, in bytes (at most [`MAX_MESSAGE_LEN_LIMIT`]).
    pub fn with_max_message_len(mut self, bytes: u32) -> QueueConfig {
        self.max_message_len = bytes;
        self
    }

    /// The size at which a segment file is sealed and a new one started (at least 4 KiB,
    /// at most 1 GiB). Space is reclaimed a whole segment at a time.
    pub fn with_segment_len(mut self, bytes: u64) -> QueueConfig {
        self.segment_len = bytes;
        self
    }

    /// How long a delivery stays invisible to other consumers before it comes back if not
    /// acknowledged (the visibility timeout). A consumer that dies loses its leases at once.
    pub fn with_lease(mut self, lease: Duration) -> QueueConfig {
        self.lease_ms = lease.as_millis().max(1) as u64;
        self
    }

    /// After this many deliveries without an acknowledgement, a message goes to the
    /// dead-letter queue. `0` means no limit.
    pub fn with_max_deliveries(mut self, deliveries: u32) -> QueueConfig {
        self.max_deliveries = deliveries;
        self
    }

    /// The time-to-live of every message: older messages go to the dead-letter queue instead
    /// of being delivered. `None` (the default) keeps messages forever.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> QueueConfig {
        self.ttl_ms = ttl.map_or(0, |ttl| ttl.as_millis().max(1) as u64);
        self
    }

    /// At most this many messages waiting or unacknowledged; `0` means no limit.
    pub fn with_max_messages(mut self, messages: u64) -> QueueConfig {
        self.max_messages = messages;
        self
    }

    /// At most this many bytes of segment files on disk; `0` means no limit.
    pub fn with_max_bytes(mut self, bytes: u64) -> QueueConfig {
        self.max_bytes = bytes;
        self
    }

    /// The size past which the consumer-state log is rewritten as one snapshot (default
    /// 8 MiB; at least 4 KiB). Test hook (feature `test-hooks`), for tests of compaction.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn with_state_compaction_at(mut self, bytes: u64) -> QueueConfig {
        self.compact_at = bytes.max(4096);
        self
    }

    /// The largest encoded message, in bytes.
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// The segment size.
    pub fn segment_len(&self) -> u64 {
        self.segment_len
    }

    /// The lease (visibility timeout).
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The delivery limit (`0`: none).
    pub fn max_deliveries(&self) -> u32 {
        self.max_deliveries
    }

    /// The time-to-live.
    pub fn ttl(&self) -> Option<Duration> {
        (self.ttl_ms != 0).then(|| Duration::from_millis(self.ttl_ms))
    }

    /// The bound in messages (`0`: none).
    pub fn max_messages(&self) -> u64 {
        self.max_messages
    }

    /// The bound in bytes (`0`: none).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_message_len == 0 || self.max_message_len > MAX_MESSAGE_LEN_LIMIT {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "max message length {} is outside 1..={MAX_MESSAGE_LEN_LIMIT}",
                    self.max_message_len
                ),
            ));
        }
        if self.max_bytes != 0 && self.max_bytes < 2 * self.segment_len {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a bound of {} bytes cannot work with segments of {}: space is reclaimed a whole segment at a time, so allow at least two",
                    self.max_bytes, self.segment_len
                ),
            ));
        }
        if !(4096..=1 << 30).contains(&self.segment_len) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "segment length {} is outside 4096..={}",
                    self.segment_len,
                    1u64 << 30
                ),
            ));
        }
        Ok(())
    }
}

/// When a producer's `send` returns, and what an operating-system crash or power loss can
/// take with it. A crash of the *process* loses nothing in any mode: written data is in the
/// kernel's page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `send` returns only after `fdatasync` covered the message (group commit shares one
    /// sync among concurrent senders in all processes). Nothing with a receipt is ever lost.
    #[default]
    Always,
    /// Messages are synced when a send finds the last sync older than the interval, and on
    /// [`Producer::flush`](crate::Producer::flush) and drop. A power loss can lose the
    /// receipted messages of the last interval (and of an idle producer's last sends).
    Interval(Duration),
    /// Never synced by the queue (the kernel writes back within about 30 s). A power loss can
    /// lose any receipted message not yet written back. Fastest.
    Never,
}

/// What a `send` does when the queue is at its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait (polling) until consumers make room.
    #[default]
    Wait,
    /// Fail at once with [`ErrorKind::Full`].
    Fail,
}

/// Options of one producer handle.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    pub(crate) durability: Durability,
    pub(crate) when_full: WhenFull,
    pub(crate) window: u32,
    pub(crate) faults: Faults,
}

impl Default for ProducerOptions {
    fn default() -> ProducerOptions {
        ProducerOptions {
            durability: Durability::default(),
            when_full: WhenFull::default(),
            window: DEFAULT_WINDOW,
            faults: Faults::default(),
        }
    }
}

/// The default window of [`ProducerOptions::with_window`].
const DEFAULT_WINDOW: u32 = 256;
/// The largest window of [`ProducerOptions::with_window`].
const MAX_WINDOW: u32 = 65_536;

impl ProducerOptions {
    /// The defaults: [`Durability::Always`], [`WhenFull::Wait`], a window of 256.
    pub fn new() -> ProducerOptions {
        ProducerOptions::default()
    }

    /// Sets how many messages an async producer's `AsyncProducer::send_pipelined` (feature
    /// `tokio`) leaves unconfirmed at most (256 by default; taken as 1 to 65 536).
    pub fn with_window(mut self, window: u32) -> ProducerOptions {
        self.window = window.clamp(1, MAX_WINDOW);
        self
    }

    /// The window of pipelined sends.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Sets the durability mode.
    pub fn with_durability(mut self, durability: Durability) -> ProducerOptions {
        self.durability = durability;
        self
    }

    /// Sets what `send` does on a full queue.
    pub fn with_when_full(mut self, when_full: WhenFull) -> ProducerOptions {
        self.when_full = when_full;
        self
    }

    /// Test hook (feature `test-hooks`): appends fail with "no space left on device" once this handle has written
    /// `bytes` bytes (the failing write is partial, as on a real full disk).
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn with_write_limit(mut self, bytes: u64) -> ProducerOptions {
        self.faults.write_limit = Some(bytes);
        self
    }

    /// Test hook (feature `test-hooks`): the `n`-th and later `fdatasync` calls of this handle fail with EIO.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn with_failing_sync_after(mut self, n: u64) -> ProducerOptions {
        self.faults.fail_sync_after = Some(n);
        self
    }

    /// Test hook (feature `test-hooks`): the process exits at once (status 70) when this handle is about to
    /// run its `n`-th `fdatasync` as the leader of a group commit (holding the sync lock,
    /// before the sync), as a process killed there would.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn with_abort_in_sync_after(mut self, n: u64) -> ProducerOptions {
        self.faults.abort_in_sync_after = Some(n);
        self
    }
}

/// Injected faults for tests (set only through the `test-hooks` feature's methods).
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    pub(crate) write_limit: Option<u64>,
    pub(crate) fail_sync_after: Option<u64>,
    pub(crate) abort_in_sync_after: Option<u64>,
}
