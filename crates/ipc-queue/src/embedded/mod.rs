//! The embedded backend: a queue directory on disk shared by producer and consumer
//! processes. This module creates, opens and looks inside one ([`EmbeddedQueue`]); the
//! rest of the backend is in its submodules, the way `amqp/` holds the RabbitMQ one.

mod appender;
mod consumer;
mod fsx;
mod index;
mod layout;
mod producer;
mod record;
mod repair;
mod state;
mod wake;

use std::path::Path;
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) use self::consumer::EmbeddedConsumer;
use self::index::LogIndex;
pub(crate) use self::layout::Layout;
pub(crate) use self::producer::EmbeddedProducer;
use self::record::{HEADER_LEN, Kind, Parsed};
use self::state::{Entry, StateLog, View};
use crate::config::{ProducerOptions, QueueConfig};
use crate::stats::{Stats, StorageStats};

/// An embedded durable queue: a directory on disk shared by any number of producer and
/// consumer processes. Cheap to clone; open producers and consumers from it.
///
/// A queue has a dead-letter queue beside it ([`dead_letters`](EmbeddedQueue::dead_letters)),
/// itself a queue of [`DeadLetter`](crate::DeadLetter) messages.
#[derive(Clone, Debug)]
pub(crate) struct EmbeddedQueue {
    pub(crate) layout: Layout,
    pub(crate) config: QueueConfig,
    pub(crate) is_dead_letter: bool,
}

impl EmbeddedQueue {
    /// Creates a queue at `path` (a new, owner-only directory).
    ///
    /// Errors: [`AlreadyExists`](ErrorKind::AlreadyExists) if `path` exists,
    /// [`InvalidInput`](ErrorKind::InvalidInput) for a configuration that cannot work.
    pub(crate) fn create(path: impl AsRef<Path>, config: &QueueConfig) -> Result<EmbeddedQueue> {
        config.validate()?;
        create_inner(path.as_ref(), config, false)
    }

    /// Opens the queue at `path`.
    ///
    /// Errors: [`NotFound`](ErrorKind::NotFound) if there is no queue there,
    /// [`Corrupted`](ErrorKind::Corrupted) if its `meta` file is damaged.
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<EmbeddedQueue> {
        open_inner(path.as_ref(), false)
    }

    /// Opens the queue at `path`, creating it with `config` if there is none.
    pub(crate) fn open_or_create(
        path: impl AsRef<Path>,
        config: &QueueConfig,
    ) -> Result<EmbeddedQueue> {
        let path = path.as_ref();
        match EmbeddedQueue::create(path, config) {
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                // Another process may be creating it right now: wait (bounded) for its meta.
                let mut last = None;
                for _ in 0..200 {
                    match EmbeddedQueue::open(path) {
                        Ok(queue) => return Ok(queue),
                        Err(err) if err.kind() == ErrorKind::NotFound => last = Some(err),
                        Err(err) => return Err(err),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(last.unwrap_or(err))
            }
            other => other,
        }
    }

    /// The queue's directory.
    pub(crate) fn path(&self) -> &Path {
        self.layout.root()
    }

    /// The configuration the queue was created with.
    pub(crate) fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Opens a producer of `T` messages.
    pub(crate) fn producer<T: Serialize + ?Sized>(
        &self,
        options: ProducerOptions,
    ) -> Result<EmbeddedProducer<T>> {
        EmbeddedProducer::open(self, options)
    }

    /// Opens a consumer of `T` messages, competing with the queue's other consumers.
    ///
    /// Opening scans the log from the oldest message not yet done. Damage found on the way
    /// is reported as [`Corrupted`](ErrorKind::Corrupted) (once; it is then quarantined and
    /// recorded, and opening again succeeds).
    pub(crate) fn consumer<T: DeserializeOwned>(&self) -> Result<EmbeddedConsumer<T>> {
        EmbeddedConsumer::open(self)
    }

    /// The dead-letter queue: rejected, undecodable, expired and too-often-delivered
    /// messages, as [`DeadLetter`](crate::DeadLetter)s.
    pub(crate) fn dead_letters(&self) -> Result<EmbeddedQueue> {
        if self.is_dead_letter {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a dead-letter queue has no dead-letter queue of its own",
            ));
        }
        open_inner(&self.layout.dead(), true)
    }

    /// Deletes the queue directory with everything in it.
    pub(crate) fn delete(&self) -> Result<()> {
        std::fs::remove_dir_all(self.layout.root()).map_err(|err| {
            Error::io(
                format!("delete queue {}", self.layout.root().display()),
                err,
            )
        })
    }

    /// Looks inside: depth, unacknowledged deliveries, dead letters, oldest message age.
    /// Also repairs a torn tail, like any consumer.
    pub(crate) fn stats(&self) -> Result<Stats> {
        let mut state = StateLog::open(&self.layout, self.config.compact_at)?;
        let mut view = View::default();
        let guard = state.lock()?;
        state.catch_up(&mut view, true)?;
        let mut findings = Vec::new();
        let (index, _) = LogIndex::open(
            &self.layout,
            self.config.max_message_len as usize,
            view.floor,
            &mut findings,
        )?;
        let mut index = index.without_repairs();
        index.refresh(&view, &mut findings)?;
        drop(guard);
        let now = fsx::now_ms();
        let mut unacked = 0;
        let mut delayed = 0;
        for entry in view.entries.values() {
            match *entry {
                Entry::Leased { until, .. } if until > now => unacked += 1,
                Entry::Waiting { not_before, .. } if not_before > now => delayed += 1,
                _ => {}
            }
        }
        let mut oldest_age = None;
        let mut buf = Vec::new();
        let mut seq = view.skip_lost(view.floor);
        while seq < index.next_seq() {
            if !matches!(view.entries.get(&seq), Some(Entry::Done))
                && let Some(header) = index.read(seq, &mut buf)?
            {
                oldest_age = Some(Duration::from_millis(now.saturating_sub(header.time)));
                break;
            }
            seq = view.skip_lost(seq + 1);
        }
        let mut bytes = 0;
        let firsts = fsx::list_segments(&self.layout.segments())?;
        for first in &firsts {
            if let Ok(meta) =
                std::fs::metadata(self.layout.segments().join(fsx::segment_name(*first)))
            {
                bytes += meta.len();
            }
        }
        let dead_letters = if self.is_dead_letter {
            0
        } else {
            self.dead_letters()?.stats()?.depth
        };
        let quarantined_files = std::fs::read_dir(self.layout.root().join("quarantine"))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
                    .count() as u64
            })
            .unwrap_or(0);
        Ok(Stats {
            depth: view.depth(index.next_seq()),
            dead_letters,
            unacked: Some(unacked),
            delayed: Some(delayed),
            oldest_age,
            consumers: None,
            storage: Some(StorageStats {
                next_seq: index.next_seq(),
                acked: view.acked_total,
                lost: view.lost_total,
                quarantined_files,
                segments: firsts.len() as u64,
                bytes,
            }),
        })
    }
}

fn create_inner(path: &Path, config: &QueueConfig, is_dead_letter: bool) -> Result<EmbeddedQueue> {
    fsx::create_dir(path).map_err(|err| {
        if err.kind() == ErrorKind::AlreadyExists {
            Error::new(
                ErrorKind::AlreadyExists,
                format!("queue directory {} already exists", path.display()),
            )
        } else {
            err
        }
    })?;
    let layout = Layout::new(path);
    fsx::create_dir(&layout.segments())?;
    fsx::create_dir(&layout.consumers())?;
    fsx::open_rw(&layout.segments().join(fsx::segment_name(0)))?;
    fsx::sync_dir(&layout.segments())?;
    let synced = fsx::open_rw(&layout.synced())?;
    repair::write_mark(
        &synced,
        repair::Mark {
            segment: 0,
            offset: 0,
            next_seq: 0,
        },
    )?;
    synced
        .sync_data()
        .map_err(|err| Error::io("fdatasync the sync watermark", err))?;
    if !is_dead_letter {
        // (A dead-letter queue gets its reserve when it is first written to.)
        fsx::ensure_reserve(path)?;
        let dead_config = config
            .clone()
            .with_max_message_len(
                (config.max_message_len + 2048).min(crate::config::MAX_MESSAGE_LEN_LIMIT),
            )
            .with_max_messages(0)
            .with_max_bytes(0)
            .with_max_deliveries(0)
            .with_ttl(None);
        create_inner(&layout.dead(), &dead_config, true)?;
    }
    // The meta file last, through a rename: a queue without it is not opened.
    let mut payload = Vec::new();
    ipc_core::encode_to_vec(&to_stored(config), &mut payload, 4096)?;
    let mut meta = Vec::new();
    record::write(
        &mut meta,
        Kind::Meta,
        0,
        fsx::now_ms(),
        u64::from(is_dead_letter),
        &payload,
    );
    let tmp = path.join("meta.tmp");
    let file = fsx::open_rw(&tmp)?;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&meta, 0)
        .and_then(|()| file.sync_data())
        .map_err(|err| Error::io(format!("write {}", tmp.display()), err))?;
    std::fs::rename(&tmp, layout.meta())
        .map_err(|err| Error::io(format!("rename {}", tmp.display()), err))?;
    fsx::sync_dir(path)?;
    if let Some(parent) = path.parent() {
        fsx::sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })?;
    }
    Ok(EmbeddedQueue {
        layout,
        config: config.clone(),
        is_dead_letter,
    })
}

fn open_inner(path: &Path, is_dead_letter: bool) -> Result<EmbeddedQueue> {
    let layout = Layout::new(path);
    let bytes = match fsx::read_small(&layout.meta(), 4096) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no queue at {} (no meta file)", path.display()),
            ));
        }
        Err(err) => return Err(err),
    };
    let header = match record::parse(&bytes, 4096 - HEADER_LEN) {
        Parsed::Valid(header) if header.kind == Kind::Meta => header,
        other => {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "meta file of queue {} is damaged: {other:?}",
                    path.display()
                ),
            ));
        }
    };
    let stored: StoredConfig = ipc_core::decode(&bytes[HEADER_LEN..header.record_len()])?;
    let config = from_stored(&stored)?;
    Ok(EmbeddedQueue {
        layout,
        config,
        is_dead_letter,
    })
}

/// The configuration as stored in the `meta` file (postcard).
#[derive(Serialize, Deserialize)]
struct StoredConfig {
    version: u32,
    max_message_len: u32,
    segment_len: u64,
    lease_ms: u64,
    max_deliveries: u32,
    ttl_ms: u64,
    max_messages: u64,
    max_bytes: u64,
    compact_at: u64,
}

/// The stored form of `config`.
fn to_stored(config: &QueueConfig) -> StoredConfig {
    StoredConfig {
        version: 1,
        max_message_len: config.max_message_len,
        segment_len: config.segment_len,
        lease_ms: config.lease_ms,
        max_deliveries: config.max_deliveries,
        ttl_ms: config.ttl_ms,
        max_messages: config.max_messages,
        max_bytes: config.max_bytes,
        compact_at: config.compact_at,
    }
}

/// The configuration a `meta` file holds, checked.
fn from_stored(stored: &StoredConfig) -> Result<QueueConfig> {
    if stored.version != 1 {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!("queue format version {} is not 1", stored.version),
        ));
    }
    let config = QueueConfig {
        max_message_len: stored.max_message_len,
        segment_len: stored.segment_len,
        lease_ms: stored.lease_ms.max(1),
        max_deliveries: stored.max_deliveries,
        ttl_ms: stored.ttl_ms,
        max_messages: stored.max_messages,
        max_bytes: stored.max_bytes,
        compact_at: stored.compact_at.max(4096),
    };
    config.validate()?;
    Ok(config)
}
