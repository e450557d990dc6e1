//! Typed producers.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};
use serde::Serialize;

use super::EmbeddedQueue;
use super::appender::Appender;
use super::fsx;
use super::state::{StateLog, View};
use crate::config::{Durability, ProducerOptions, WhenFull};
use crate::delivery::Receipt;

/// Sends `T` messages to a queue. One handle per thread; open as many as you like, in any
/// number of processes: their appends are serialised by a file lock and their syncs shared
/// (group commit).
///
/// Implements [`ipc_core::Sender`]: `Ok` from `send` means the same as a [`Receipt`].
pub(crate) struct EmbeddedProducer<T: ?Sized> {
    queue: EmbeddedQueue,
    appender: Appender,
    options: ProducerOptions,
    bound: Option<(StateLog, View)>,
    last_sync: Instant,
    unsynced: bool,
    _type: PhantomData<fn(&T)>,
}

#[derive(Clone, Copy)]
enum Wait {
    No,
    Until(Option<Instant>),
}

impl<T: Serialize + ?Sized> EmbeddedProducer<T> {
    pub(crate) fn open(
        queue: &EmbeddedQueue,
        options: ProducerOptions,
    ) -> Result<EmbeddedProducer<T>> {
        let config = &queue.config;
        let appender = Appender::open(
            &queue.layout,
            config.max_message_len as usize,
            config.segment_len,
            options.faults.clone(),
        )?;
        let bound = if config.max_messages != 0 || config.max_bytes != 0 {
            Some((
                StateLog::open(&queue.layout, config.compact_at)?,
                View::default(),
            ))
        } else {
            None
        };
        Ok(EmbeddedProducer {
            queue: queue.clone(),
            appender,
            options,
            bound,
            last_sync: Instant::now(),
            unsynced: false,
            _type: PhantomData,
        })
    }

    /// Sends `message`, returning once it is stored per the durability mode. On a full
    /// queue, waits or fails per [`WhenFull`].
    pub(crate) fn send(&mut self, message: &T) -> Result<Receipt> {
        let wait = match self.options.when_full {
            WhenFull::Wait => Wait::Until(None),
            WhenFull::Fail => Wait::No,
        };
        self.send_one(message, wait)
    }

    /// Sends `message` without waiting: [`Full`](ErrorKind::Full) on a full queue.
    pub(crate) fn try_send(&mut self, message: &T) -> Result<Receipt> {
        self.send_one(message, Wait::No)
    }

    /// Sends `message`, waiting at most `timeout` for room.
    pub(crate) fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<Receipt> {
        self.send_one(message, Wait::Until(Some(Instant::now() + timeout)))
    }

    /// Sends a batch in one append and one sync; returns one receipt per message, in order.
    /// The batch is stored whole or not at all.
    pub(crate) fn send_batch<'a, I>(&mut self, messages: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let wait = match self.options.when_full {
            WhenFull::Wait => Wait::Until(None),
            WhenFull::Fail => Wait::No,
        };
        self.appender.begin_batch();
        for message in messages {
            self.push(message)?;
        }
        let (first, n) = self.commit(wait)?;
        Ok((first..first + n as u64).map(Receipt::new).collect())
    }

    /// Syncs everything this producer sent (in every durability mode).
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.appender.sync_now()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The queue this producer sends to.
    #[cfg(feature = "tokio")]
    pub(crate) fn queue(&self) -> &EmbeddedQueue {
        &self.queue
    }

    /// Sends `message` with its own time-to-live: undelivered after `ttl`, it goes to the
    /// dead-letter queue instead (the queue's own TTL, if shorter, still applies).
    pub(crate) fn send_with_ttl(&mut self, message: &T, ttl: Duration) -> Result<Receipt> {
        let wait = match self.options.when_full {
            WhenFull::Wait => Wait::Until(None),
            WhenFull::Fail => Wait::No,
        };
        self.appender.begin_batch();
        self.push_with_ttl(message, Some(ttl))?;
        let (seq, _) = self.commit(wait)?;
        Ok(Receipt::new(seq))
    }

    fn send_one(&mut self, message: &T, wait: Wait) -> Result<Receipt> {
        self.appender.begin_batch();
        self.push(message)?;
        let (seq, _) = self.commit(wait)?;
        Ok(Receipt::new(seq))
    }

    /// Sends an already encoded message (the async wrapper encodes outside the blocking
    /// pool), waiting for room per [`WhenFull`].
    #[cfg(feature = "tokio")]
    pub(crate) fn send_encoded(&mut self, payload: &[u8]) -> Result<Receipt> {
        let receipts = self.send_encoded_with(&[payload], false, None, None)?;
        receipts
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(ErrorKind::Other, "an append of one message gave no receipt"))
    }

    /// Sends already encoded messages (the async producer encodes on its own task) in one
    /// append and one sync, like [`send_batch`](EmbeddedProducer::send_batch): without
    /// waiting for room (`try_only`), waiting at most `timeout`, or per [`WhenFull`]; each
    /// with the queue's time-to-live, or `ttl` if that is shorter.
    #[cfg(feature = "tokio")]
    pub(crate) fn send_encoded_with<P: AsRef<[u8]>>(
        &mut self,
        payloads: &[P],
        try_only: bool,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Vec<Receipt>> {
        let wait = match (try_only, timeout, self.options.when_full) {
            (true, _, _) | (false, None, WhenFull::Fail) => Wait::No,
            (false, Some(timeout), _) => Wait::Until(Some(Instant::now() + timeout)),
            (false, None, WhenFull::Wait) => Wait::Until(None),
        };
        let now = fsx::now_ms();
        let queue_ttl = (self.queue.config.ttl_ms != 0).then_some(self.queue.config.ttl_ms);
        let own_ttl = ttl.map(|ttl| (ttl.as_millis() as u64).max(1));
        let expires = match (queue_ttl, own_ttl) {
            (None, None) => 0,
            (Some(ttl), None) | (None, Some(ttl)) => now.saturating_add(ttl),
            (Some(a), Some(b)) => now.saturating_add(a.min(b)),
        };
        self.appender.begin_batch();
        for payload in payloads {
            let payload = payload.as_ref();
            self.appender.push(now, expires, |buf, max| {
                if payload.len() > max {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("message of {} bytes exceeds limit of {max}", payload.len()),
                    ));
                }
                buf.extend_from_slice(payload);
                Ok(payload.len())
            })?;
        }
        let (first, n) = self.commit(wait)?;
        Ok((first..first + n as u64).map(Receipt::new).collect())
    }

    /// [`send_encoded_with`](Self::send_encoded_with) for a pipelined producer's batch:
    /// waiting for room per [`WhenFull`], and syncing without a commit delay (the next
    /// batch waits behind this sync).
    #[cfg(feature = "tokio")]
    pub(crate) fn send_encoded_pipelined<P: AsRef<[u8]>>(
        &mut self,
        payloads: &[P],
    ) -> Result<Vec<Receipt>> {
        self.appender.set_eager(true);
        let sent = self.send_encoded_with(payloads, false, None, None);
        self.appender.set_eager(false);
        sent
    }

    fn push(&mut self, message: &T) -> Result<()> {
        self.push_with_ttl(message, None)
    }

    fn push_with_ttl(&mut self, message: &T, ttl: Option<Duration>) -> Result<()> {
        let now = fsx::now_ms();
        let queue_ttl = (self.queue.config.ttl_ms != 0).then_some(self.queue.config.ttl_ms);
        let own_ttl = ttl.map(|ttl| (ttl.as_millis() as u64).max(1));
        let expires = match (queue_ttl, own_ttl) {
            (None, None) => 0,
            (Some(ttl), None) | (None, Some(ttl)) => now.saturating_add(ttl),
            (Some(a), Some(b)) => now.saturating_add(a.min(b)),
        };
        self.appender.push(now, expires, |buf, max| {
            ipc_core::encode_to_vec(message, buf, max)
        })
    }

    fn commit(&mut self, wait: Wait) -> Result<(u64, usize)> {
        let (n, _) = self.appender.batch_size();
        let mut backoff = Duration::from_micros(200);
        let (first, upto) = loop {
            let config = &self.queue.config;
            let layout = &self.queue.layout;
            let bound = &mut self.bound;
            let mut full = None;
            let mut admit = |appender: &Appender, len: usize| -> Result<bool> {
                let Some((state, view)) = bound.as_mut() else {
                    return Ok(true);
                };
                if config.max_messages != 0 {
                    state.catch_up(view, false)?;
                    let depth = view.depth(appender.next_seq());
                    if depth > 0 && depth + n as u64 > config.max_messages {
                        full = Some(format!(
                            "queue holds {depth} messages; {n} more would pass its limit of {}",
                            config.max_messages
                        ));
                        return Ok(false);
                    }
                }
                if config.max_bytes != 0 {
                    let mut bytes = 0;
                    for first in fsx::list_segments(&layout.segments())? {
                        if first == appender.position().0 {
                            // Not by `stat`, which would slow this segment's syncs (`fsx::file_len`).
                            bytes += appender.segment_file_len()?;
                        } else if let Ok(meta) =
                            std::fs::metadata(layout.segments().join(fsx::segment_name(first)))
                        {
                            bytes += meta.len();
                        }
                    }
                    if bytes > 0 && bytes + len as u64 > config.max_bytes {
                        full = Some(format!(
                            "queue holds {bytes} bytes on disk; {len} more would pass its limit of {}",
                            config.max_bytes
                        ));
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            match self.appender.append(&mut admit)? {
                Some(done) => break done,
                None => {
                    let message = full.unwrap_or_else(|| "queue is full".to_owned());
                    match wait {
                        Wait::No => return Err(Error::new(ErrorKind::Full, message)),
                        Wait::Until(Some(deadline)) if Instant::now() >= deadline => {
                            return Err(Error::new(
                                ErrorKind::Timeout,
                                format!("timed out waiting for room: {message}"),
                            ));
                        }
                        Wait::Until(deadline) => {
                            let mut nap = backoff;
                            if let Some(deadline) = deadline {
                                nap = nap.min(deadline.saturating_duration_since(Instant::now()));
                            }
                            std::thread::sleep(nap);
                            backoff = (backoff * 2).min(Duration::from_millis(20));
                        }
                    }
                }
            }
        };
        match self.options.durability {
            Durability::Always => self.appender.sync_upto(upto)?,
            Durability::Interval(interval) => {
                if self.last_sync.elapsed() >= interval {
                    self.appender.sync_upto(upto)?;
                    self.last_sync = Instant::now();
                    self.unsynced = false;
                } else {
                    self.unsynced = true;
                }
            }
            Durability::Never => {}
        }
        Ok((first, n))
    }
}

impl<T: ?Sized> Drop for EmbeddedProducer<T> {
    fn drop(&mut self) {
        if self.unsynced {
            let _ = self.appender.sync_now();
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for EmbeddedProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedProducer")
            .field("queue", &self.queue.path())
            .field("position", &self.appender.position())
            .finish()
    }
}
