//! What [`Queue::stats`](crate::Queue::stats) reports, for either backend.

use std::time::Duration;

/// A look inside a queue, from [`Queue::stats`](crate::Queue::stats). What a backend
/// cannot tell is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages not yet acknowledged or dead-lettered. Embedded: waiting, leased or delayed.
    /// RabbitMQ: ready for delivery only (the broker does not count unacknowledged ones
    /// here).
    pub depth: u64,
    /// Messages in the dead-letter queue (RabbitMQ: ready ones).
    pub dead_letters: u64,
    /// Deliveries whose lease is running (handed out, not yet acknowledged). Embedded only.
    pub unacked: Option<u64>,
    /// Messages negatively acknowledged with a delay that has not passed yet. Embedded only.
    pub delayed: Option<u64>,
    /// The age of the oldest message not yet done. Embedded only, and `None` when empty.
    pub oldest_age: Option<Duration>,
    /// Consumers attached to the queue. RabbitMQ only.
    pub consumers: Option<u64>,
    /// The files of an embedded queue.
    pub storage: Option<StorageStats>,
}

/// The files of an embedded queue, in [`Stats::storage`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageStats {
    /// The sequence number the next message will get.
    pub next_seq: u64,
    /// Acknowledgements recorded over the queue's life.
    pub acked: u64,
    /// Messages lost to corruption (reported and quarantined).
    pub lost: u64,
    /// Files in `quarantine/` (damaged bytes kept for inspection).
    pub quarantined_files: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes of segment files on disk.
    pub bytes: u64,
}
