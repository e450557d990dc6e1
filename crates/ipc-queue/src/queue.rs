//! A queue directory: creating, opening, and looking inside.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ProducerOptions, QueueConfig, StoredConfig};
use crate::consumer::EmbeddedConsumer;
use crate::fsx;
use crate::index::LogIndex;
use crate::producer::EmbeddedProducer;
use crate::record::{self, HEADER_LEN, Kind, Parsed};
use crate::state::{Entry, StateLog, View};

/// The paths inside a queue directory.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: Arc<PathBuf>,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: Arc::new(root.to_path_buf()),
        }
    }
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }
    pub(crate) fn segments(&self) -> PathBuf {
        self.root.join("segments")
    }
    pub(crate) fn append_lock(&self) -> PathBuf {
        self.root.join("append.lock")
    }
    pub(crate) fn sync_lock(&self) -> PathBuf {
        self.root.join("sync.lock")
    }
    pub(crate) fn synced(&self) -> PathBuf {
        self.root.join("synced")
    }
    pub(crate) fn state_lock(&self) -> PathBuf {
        self.root.join("state.lock")
    }
    pub(crate) fn state_log(&self) -> PathBuf {
        self.root.join("state.log")
    }
    pub(crate) fn consumers(&self) -> PathBuf {
        self.root.join("consumers")
    }
    pub(crate) fn dead(&self) -> PathBuf {
        self.root.join("dead")
    }
    pub(crate) fn poisoned(&self) -> PathBuf {
        self.root.join("POISONED")
    }
}

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
    crate::watermark::write(
        &synced,
        crate::watermark::Mark {
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
    ipc_core::encode_to_vec(&config.to_stored(), &mut payload, 4096)?;
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
    let config = QueueConfig::from_stored(&stored)?;
    Ok(EmbeddedQueue {
        layout,
        config,
        is_dead_letter,
    })
}
