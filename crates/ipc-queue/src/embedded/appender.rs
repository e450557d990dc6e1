//! The producer side of the log: finding and repairing the tail under the append lock,
//! appending batches, rolling segments over, and group commit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};

use super::fsx::{self, LockGuard, lock, open_lock};
use super::layout::Layout;
use super::record::{self, HEADER_LEN, Kind, Parsed};
use super::repair::{self, Bad, Mark, examine_bad};
use super::wake::FileWatch;
use crate::config::Faults;

/// The first read when scanning a segment (a segment usually ends in zeros written ahead,
/// so a scan reads little at first); reads double from there up to [`SCAN_CHUNK`], and
/// are at least one whole record.
const FIRST_SCAN: usize = 16 << 10;
/// The largest read when scanning a segment.
const SCAN_CHUNK: usize = 1 << 20;
/// Zeros written ahead of the log's end (`FORMAT.md`): an append into blocks that hold
/// zeros changes neither the file's size nor its extents, so its `fdatasync` commits no
/// journal transaction (measured 25-40% less time per sync). Written in steps of this
/// many bytes, up to the segment length, once fewer than [`ZERO_AHEAD_LOW`] are left.
const ZERO_AHEAD: u64 = 1 << 20;
const ZERO_AHEAD_LOW: u64 = 512 << 10;

/// One process's appending handle on a queue's log.
pub(crate) struct Appender {
    layout: Layout,
    max_payload: usize,
    segment_len: u64,
    append_lock: Arc<File>,
    sync_lock: Arc<File>,
    synced: File,
    seg: File,
    seg_first: u64,
    seg_end: u64,
    next_seq: u64,
    batch: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    scan: Vec<u8>,
    poisoned: Option<String>,
    faults: Faults,
    written: u64,
    syncs: u64,
    /// The tail may be behind the `synced` watermark (checked at open, and after the
    /// segment was found shorter than this handle saw it or with a torn tail cut).
    suspect: bool,
    /// What this handle learnt about other producers, for the commit delay (boxed: it is
    /// touched once a sync, and keeps the producer types small).
    group: Box<GroupCommit>,
    /// What this handle knows of the zeros ahead of the records (boxed, as `group`).
    ahead: Box<Ahead>,
    /// The watch on the sync lock's file that a producer of many waits for a sync leader
    /// with, made the first time it is needed (a lone producer never waits): `None`
    /// before, `Some(None)` where there is no watch to be had.
    sync_watch: Option<Option<FileWatch>>,
}

/// A sync leader: the exclusive sync lock, the watermark it read under it, and that
/// watermark if its sync starts in this handle's segment.
struct Leading {
    _guard: LockGuard,
    from: Option<Mark>,
    current: std::result::Result<Mark, String>,
}

/// What an appending handle knows of the zeros written ahead of the records.
#[derive(Clone, Copy, Debug, Default)]
struct Ahead {
    /// The end of the log (segment, offset) found at zeros and checked against the
    /// watermark last: zeros found there again need no second check.
    end_checked: Option<(u64, u64)>,
    /// Where this handle's last write ended (segment, offset): zeros found there are the
    /// ones it checked before writing, so they need no second check either.
    own_end: Option<(u64, u64)>,
    /// A length the current segment's file is known to have reached (segment, bytes), so
    /// that appends do not look it up while there are zeros enough ahead.
    known_len: (u64, u64),
    /// The last catch-up found records of other producers: the next one looks at the note
    /// of where the log ends first (see [`Appender::follow_hint`]), and this handle's
    /// appends leave such notes.
    others_appended: bool,
    /// The last catch-up followed a note of the log's end: the reserve was there when
    /// that note was written, and is still (whoever deletes the reserve first removes the
    /// note, under the append lock).
    hint_followed: bool,
    /// Appends since this handle last looked at the reserve file itself.
    since_reserve_look: u32,
}

/// The adaptive commit delay (PostgreSQL's `commit_delay` / `commit_siblings`). With one
/// message in flight per producer, every producer waits for the same sync and then
/// appends its next message while no sync runs: a leader that synced at once would cover
/// only the few that were quickest. So a leader waits for other producers' appends, but
/// only when the syncs of the last [`GROUP_WINDOW`] showed that there are others (its own
/// sync covered their messages, or theirs covered its), and at most until the log holds
/// as many bytes past the watermark as the largest group of that time, while appends keep
/// coming (a quiet spell of about one `fdatasync` time ends it, and so does
/// [`MAX_COMMIT_DELAY`]). A lone producer never waits. Nor does a leader among many
/// producers (its recent syncs covered [`LARGE_GROUP`] messages or more): there, the others
/// append while it syncs, and the next sync covers them (see [`Appender::lead_large`]).
#[derive(Clone, Copy, Debug)]
struct GroupCommit {
    /// When the last sync this handle took part in covered other producers' messages.
    others_seen: Option<Instant>,
    /// The largest group (bytes past the watermark) seen since `window_start`, and in the
    /// window before.
    largest: u64,
    largest_before: u64,
    window_start: Instant,
    /// A moving average of this handle's `fdatasync` times, in nanoseconds.
    sync_nanos: u64,
    /// Messages this handle appended since its last sync.
    own_unsynced: u64,
    /// The most messages a sync this handle led covered since `window_start`, and in the
    /// window before.
    most: u64,
    most_before: u64,
    /// Sync without a commit delay: set while a pipelined producer stores a batch (its
    /// next batch waits behind this sync, so a delay would only hold it up, and what other
    /// producers append meanwhile goes into the next sync).
    eager: bool,
}

impl GroupCommit {
    fn new() -> GroupCommit {
        GroupCommit {
            others_seen: None,
            largest: 0,
            largest_before: 0,
            window_start: Instant::now(),
            sync_nanos: 0,
            own_unsynced: 0,
            most: 0,
            most_before: 0,
            eager: false,
        }
    }

    /// Notes a sync that covered `bytes` past the watermark before it, with messages of
    /// other producers or not.
    fn observe(&mut self, bytes: u64, messages: u64, others: bool) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= GROUP_WINDOW {
            self.largest_before = self.largest;
            self.largest = 0;
            self.most_before = self.most;
            self.most = 0;
            self.window_start = now;
        }
        self.largest = self.largest.max(bytes);
        self.most = self.most.max(messages);
        if others {
            self.others_seen = Some(now);
        }
    }

    /// The most messages one of this handle's recent syncs covered.
    fn most(&self) -> u64 {
        self.most.max(self.most_before)
    }

    /// How many bytes past the watermark a leader waits for, if it waits at all.
    fn target(&self) -> Option<u64> {
        let recent = self
            .others_seen
            .is_some_and(|seen| seen.elapsed() < GROUP_WINDOW);
        let target = self.largest.max(self.largest_before);
        (recent && target > 0).then_some(target)
    }
}

/// How long what a handle saw of other producers counts for the commit delay.
const GROUP_WINDOW: Duration = Duration::from_millis(100);
/// The longest commit delay, whatever the syncs take.
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(2);
/// How long a leader tries to take the append lock (without waiting for it, as the lock
/// order is append before sync) to note what others appended, before it syncs what it
/// knows.
const APPEND_LOCK_PATIENCE: Duration = Duration::from_micros(100);
/// The commit delay gives up after this long without an append (its `fdatasync` time,
/// within these bounds).
const MIN_QUIET: Duration = Duration::from_micros(50);
const MAX_QUIET: Duration = Duration::from_millis(1);
/// A handle whose syncs of the last [`GROUP_WINDOW`] or two covered this many messages
/// or more takes the way of many producers (see [`Appender::lead_large`]).
const LARGE_GROUP: u64 = 6;
/// How many times a producer of few tries the append lock (yielding between tries)
/// before it sleeps on it.
const APPEND_LOCK_TRIES: u32 = 30;
/// How many times a producer of many looks at the watermark (yielding between looks)
/// before it sleeps on the leader.
const FOLLOWER_SPINS: u32 = 100;
/// The longest a producer waits for a sync leader's watermark before it looks at the lock
/// again (the leader may have died).
const LEADER_WAIT: Duration = Duration::from_millis(5);
/// An append that followed a note of the log's end knows the reserve file is there
/// without looking (see [`Ahead::hint_followed`]); it looks all the same once in this
/// many appends, in case someone other than a consumer removed it.
const RESERVE_LOOK_EVERY: u32 = 64;
/// The commit delay of a handle that has not timed an `fdatasync` yet.
const FIRST_COMMIT_DELAY: Duration = Duration::from_micros(200);

impl Appender {
    pub(crate) fn open(
        layout: &Layout,
        max_payload: usize,
        segment_len: u64,
        faults: Faults,
    ) -> Result<Appender> {
        let append_lock = open_lock(&layout.append_lock())?;
        let sync_lock = open_lock(&layout.sync_lock())?;
        let synced = fsx::open_rw(&layout.synced())?;
        let (seg_first, seg) = match open_last_segment(layout) {
            Ok(found) => found,
            Err(err) if err.kind() == ErrorKind::Corrupted => recreate_tail(layout, &sync_lock)?,
            Err(err) => return Err(err),
        };
        let mut appender = Appender {
            layout: layout.clone(),
            max_payload,
            segment_len,
            append_lock,
            sync_lock,
            synced,
            seg,
            seg_first,
            seg_end: 0,
            next_seq: seg_first,
            batch: Vec::new(),
            bounds: Vec::new(),
            scan: Vec::new(),
            poisoned: None,
            faults,
            written: 0,
            syncs: 0,
            suspect: true,
            group: Box::new(GroupCommit::new()),
            ahead: Box::default(),
            sync_watch: None,
        };
        appender.check_poison_file()?;
        let _guard = lock(&appender.append_lock, "queue append lock")?;
        if let Some(note) = appender.catch_up()? {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!("queue {}: {note}", layout.root().display()),
            ));
        }
        Ok(appender)
    }

    /// Brings the log's tail in line with the `synced` watermark, as a producer opening
    /// would (for consumers that find the log shorter than the watermark, or the watermark
    /// damaged). Returns what was damaged, if it was the watermark itself.
    pub(crate) fn repair_tail(layout: &Layout, max_payload: usize) -> Result<Option<String>> {
        match Appender::open(layout, max_payload, u64::MAX, Faults::default()) {
            Ok(_) => Ok(None),
            Err(err) if err.kind() == ErrorKind::Corrupted => Ok(Some(err.to_string())),
            Err(err) => Err(err),
        }
    }

    /// The sequence number the next appended message gets (as of the last catch-up).
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The length of the current segment's file (zeros written ahead included).
    pub(crate) fn segment_file_len(&self) -> Result<u64> {
        fsx::file_len(&self.seg)
    }

    /// Syncs without a commit delay while `eager` (see [`GroupCommit`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn set_eager(&mut self, eager: bool) {
        self.group.eager = eager;
    }

    /// The first sequence number of the current segment and the bytes in it.
    pub(crate) fn position(&self) -> (u64, u64) {
        (self.seg_first, self.seg_end)
    }

    fn check_poison(&self) -> Result<()> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::new(
                ErrorKind::Poisoned,
                format!("queue is poisoned: {reason}"),
            ));
        }
        Ok(())
    }

    /// Also checks for a poisoning by another process (a file read: on open and before
    /// each sync, where it is cheap next to the sync).
    fn check_poison_file(&self) -> Result<()> {
        self.check_poison()?;
        if let Ok(reason) = std::fs::read_to_string(self.layout.poisoned()) {
            return Err(Error::new(
                ErrorKind::Poisoned,
                format!(
                    "queue {} is poisoned: {}; check the disk, then remove the POISONED file",
                    self.layout.root().display(),
                    reason.trim()
                ),
            ));
        }
        Ok(())
    }

    /// Starts a batch.
    pub(crate) fn begin_batch(&mut self) {
        self.batch.clear();
        self.bounds.clear();
    }

    /// Adds one message to the batch; `encode` appends the payload to the buffer (at most
    /// `max_payload` bytes) and returns its length.
    pub(crate) fn push(
        &mut self,
        time: u64,
        expires: u64,
        encode: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize>,
    ) -> Result<()> {
        let start = record::begin(&mut self.batch, Kind::Message, 0, time, expires);
        if let Err(err) = encode(&mut self.batch, self.max_payload) {
            self.batch.truncate(start);
            return Err(err);
        }
        self.bounds.push((start, self.batch.len()));
        Ok(())
    }

    /// The number of messages and bytes in the batch.
    pub(crate) fn batch_size(&self) -> (usize, usize) {
        (self.bounds.len(), self.batch.len())
    }

    /// Appends the batch under the append lock. Returns the first sequence number and the
    /// position (segment, end offset) that must be synced for the batch to be durable.
    /// `admit(next_seq, batch_len)` runs under the lock after catching up and may refuse
    /// the batch (a full queue).
    pub(crate) fn append(
        &mut self,
        admit: &mut dyn FnMut(&Appender, usize) -> Result<bool>,
    ) -> Result<Option<(u64, (u64, u64))>> {
        self.check_poison()?;
        if self.bounds.is_empty() {
            return Ok(Some((self.next_seq, (self.seg_first, self.seg_end))));
        }
        let _guard = self.lock_append()?;
        if let Some(note) = self.catch_up()? {
            return Err(Error::new(ErrorKind::Corrupted, note));
        }
        if !admit(self, self.batch.len())? {
            return Ok(None);
        }
        // Consumers release the reserve when the disk is full, to record acknowledgements
        // and so free segments: no producer writes until it is back.
        if self.ahead.hint_followed && self.ahead.since_reserve_look < RESERVE_LOOK_EVERY {
            self.ahead.since_reserve_look += 1;
        } else {
            fsx::ensure_reserve(self.layout.root())?;
            self.ahead.since_reserve_look = 0;
        }
        if self.seg_end > 0 && self.seg_end + self.batch.len() as u64 > self.segment_len {
            self.roll_over()?;
        }
        let first = self.next_seq;
        for (i, &(start, end)) in self.bounds.iter().enumerate() {
            record::set_seq(&mut self.batch, start, first + i as u64);
            record::finish(&mut self.batch[..end], start);
        }
        let batch = std::mem::take(&mut self.batch);
        let result = self.write_at_end(&batch);
        self.batch = batch;
        result?;
        // The note is for the other producers: a lone one (none seen lately) leaves none.
        let others = self.ahead.others_appended
            || self
                .group
                .others_seen
                .is_some_and(|seen| seen.elapsed() < GROUP_WINDOW);
        if let Some(&(last_start, _)) = self.bounds.last()
            && others
        {
            let last_start = self.seg_end - (self.batch.len() - last_start) as u64;
            write_hint(
                &self.append_lock,
                Hint {
                    segment: self.seg_first,
                    last_start,
                    end: self.seg_end,
                    next_seq: first + self.bounds.len() as u64,
                },
            );
        }
        self.ahead.own_end = Some((self.seg_first, self.seg_end));
        self.zero_ahead();
        self.next_seq += self.bounds.len() as u64;
        self.group.own_unsynced += self.bounds.len() as u64;
        Ok(Some((first, (self.seg_first, self.seg_end))))
    }

    /// Takes the append lock. A handle of few producers tries it a few times, yielding
    /// between tries, before it sleeps in `flock`: a sleeper is woken on the CPU of the
    /// producer that released the lock and waits there for it, while the other CPU may
    /// idle (measured with 4 producers on a 2-vCPU VM: the three appends after the first
    /// of a round took 35-39 µs in all, 24-25 µs with the tries). Among many producers
    /// the CPUs are busy anyway, and tries only take CPU from the others.
    fn lock_append(&self) -> Result<LockGuard> {
        if self.group.most() < LARGE_GROUP {
            for _ in 0..APPEND_LOCK_TRIES {
                match self.append_lock.try_lock() {
                    Ok(()) => return Ok(LockGuard(Arc::clone(&self.append_lock))),
                    Err(std::fs::TryLockError::WouldBlock) => std::thread::yield_now(),
                    Err(std::fs::TryLockError::Error(err)) => {
                        return Err(Error::io("lock queue append lock", err));
                    }
                }
            }
        }
        lock(&self.append_lock, "queue append lock")
    }

    /// Writes `bytes` at the end of the current segment; on failure removes any partial
    /// write, so no partial record stays visible.
    fn write_at_end(&mut self, bytes: &[u8]) -> Result<()> {
        let mut result = Ok(());
        let mut to_write = bytes;
        if let Some(limit) = self.faults.write_limit {
            let room = limit.saturating_sub(self.written) as usize;
            if room < bytes.len() {
                to_write = &bytes[..room];
                result = Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        let written = self.seg.write_all_at(to_write, self.seg_end);
        let result = written.and(result);
        match result {
            Ok(()) => {
                self.seg_end += bytes.len() as u64;
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                if let Err(trunc) = self.seg.set_len(self.seg_end) {
                    self.poison(format!(
                        "cannot remove a partial write at offset {} of segment {}: {trunc}",
                        self.seg_end, self.seg_first
                    ));
                }
                let what = if err.raw_os_error() == Some(28) {
                    "disk full: "
                } else {
                    ""
                };
                Err(Error::io(
                    format!(
                        "{what}append {} bytes at offset {} of segment {}",
                        bytes.len(),
                        self.seg_end,
                        self.seg_first
                    ),
                    err,
                ))
            }
        }
    }

    /// Writes zeros ahead of the log's end when little room written ahead is left (under
    /// the append lock). Best effort: on a full disk the log just grows by appends, and
    /// zeros written in part are as valid as zeros written whole.
    fn zero_ahead(&mut self) {
        if self.faults.write_limit.is_some() {
            // A test's simulated disk limit counts the log's own bytes only.
            return;
        }
        let enough = |len: u64| {
            len >= self.segment_len || len.saturating_sub(self.seg_end) >= ZERO_AHEAD_LOW
        };
        if self.ahead.known_len.0 == self.seg_first && enough(self.ahead.known_len.1) {
            return;
        }
        let Ok(len) = fsx::file_len(&self.seg) else {
            return;
        };
        self.ahead.known_len = (self.seg_first, len);
        if enough(len) {
            return;
        }
        let to = ((self.seg_end + ZERO_AHEAD) & !4095).min(self.segment_len);
        if to <= len {
            return;
        }
        let zeros = vec![0u8; (to - len) as usize];
        // A failure (ENOSPC, EIO) leaves the log as it was or with fewer zeros ahead; the
        // next append reports what is wrong with the disk.
        if self.seg.write_all_at(&zeros, len).is_ok() {
            self.ahead.known_len = (self.seg_first, to);
        }
    }

    fn poison(&mut self, reason: String) {
        let _ = fsx::write_private(&self.layout.poisoned(), format!("{reason}\n").as_bytes());
        self.poisoned = Some(reason);
    }

    fn fail_sync(&mut self) -> bool {
        self.syncs += 1;
        self.faults.fail_sync_after.is_some_and(|n| self.syncs >= n)
    }

    fn sync_segment(&mut self) -> Result<()> {
        let started = Instant::now();
        let result = if self.fail_sync() {
            Err(std::io::Error::from_raw_os_error(5)) // EIO
        } else {
            self.seg.sync_data()
        };
        let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.group.sync_nanos = if self.group.sync_nanos == 0 {
            nanos
        } else {
            (self.group.sync_nanos * 7 + nanos) / 8
        };
        if let Err(err) = result {
            let reason = format!("fdatasync of segment {} failed: {err}", self.seg_first);
            self.poison(reason.clone());
            return Err(Error::new(ErrorKind::Poisoned, reason).with_source(err));
        }
        Ok(())
    }

    /// Seals the current segment and starts the next (under the append lock).
    fn roll_over(&mut self) -> Result<()> {
        self.roll_over_to(self.next_seq)
    }

    /// Seals the current segment with a seal naming `next` (at least `next_seq`; more
    /// when the sequence numbers between are lost) and starts segment `next`.
    fn roll_over_to(&mut self, next: u64) -> Result<()> {
        let mut seal = Vec::with_capacity(HEADER_LEN);
        record::write(&mut seal, Kind::Seal, next, fsx::now_ms(), 0, &[]);
        self.write_at_end(&seal)?;
        self.sync_segment()?;
        self.next_seq = next;
        let path = self.layout.segments().join(fsx::segment_name(next));
        let file = fsx::open_rw(&path)?;
        fsx::sync_dir(&self.layout.segments())?;
        self.seg = file;
        self.seg_first = next;
        self.seg_end = 0;
        Ok(())
    }

    /// Brings this handle's view of the tail up to date (under the append lock): follows
    /// seals into newer segments, truncates a torn tail left by a writer that died, and
    /// (when there is reason to) checks the tail against the watermark. Returns a note if
    /// the watermark itself was damaged (and has been rebuilt).
    ///
    /// The log ends at the file's end or at zeros written ahead (`FORMAT.md`).
    fn catch_up(&mut self) -> Result<Option<String>> {
        // At its own end, a handle looks at one header first: zeros there (nobody appended
        // since) are the usual case.
        let mut want = if self.ahead.own_end == Some((self.seg_first, self.seg_end))
            && !self.ahead.others_appended
        {
            HEADER_LEN
        } else {
            FIRST_SCAN
        };
        let start = (self.seg_first, self.seg_end);
        // Bytes at the end already in `scan`, read with the note's record.
        let mut read_ahead = None;
        if want == FIRST_SCAN && !self.suspect {
            // At the end the last appender noted, checked: what is left to see is the
            // zeros after it, read with that record.
            want = HEADER_LEN + record::ZERO_CHECK;
            read_ahead = self.follow_hint(want);
            if read_ahead.is_none() {
                want = FIRST_SCAN;
            }
        }
        self.ahead.hint_followed = read_ahead.is_some();
        loop {
            let mut scan = std::mem::take(&mut self.scan);
            let read = match read_ahead.take() {
                Some(n) => Ok(n),
                None => fsx::read_at(&self.seg, self.seg_end, want, &mut scan),
            };
            let outcome = match read {
                // At the file's end, or past it.
                Ok(0) => Ok(None),
                Ok(n) => {
                    let trusted = self.ahead.own_end == Some((self.seg_first, self.seg_end));
                    self.scan_chunk(&scan[..n], n == want, trusted).map(Some)
                }
                Err(err) => Err(err),
            };
            self.scan = scan;
            match outcome? {
                None => {
                    if fsx::file_len(&self.seg)? < self.seg_end {
                        // Shorter than what this handle saw: damaged from outside. Rescan.
                        self.seg_end = 0;
                        self.next_seq = self.seg_first;
                        self.suspect = true;
                        want = FIRST_SCAN;
                        continue;
                    }
                }
                Some(Scan::More(need)) => {
                    want = (want * 2).clamp(FIRST_SCAN, SCAN_CHUNK).max(need);
                    continue;
                }
                Some(Scan::Bad(offset, misplaced)) => {
                    self.repair(offset, misplaced)?;
                    continue;
                }
                Some(Scan::Sealed(next)) => {
                    self.follow_seal(next)?;
                    continue;
                }
                Some(Scan::End) if self.zeros_behind_mark() => {
                    // Zeros where the watermark says synced records lie: damage.
                    let before = self.tail();
                    let size = fsx::file_len(&self.seg)?;
                    self.repair(self.seg_end, false)?;
                    if self.tail() != before || fsx::file_len(&self.seg)? != size {
                        continue;
                    }
                    // Judged the end under the lock after all: the watermark check
                    // below settles it.
                    self.suspect = true;
                }
                Some(Scan::End) => {}
            }
            // At the end of the log.
            self.ahead.others_appended = (self.seg_first, self.seg_end) != start;
            if !self.suspect {
                return Ok(None);
            }
            let note = self.check_watermark()?;
            self.suspect = false;
            if !repair::data_at(&self.seg, self.seg_end)? {
                return Ok(note);
            }
            // The check sealed this segment and moved on: scan on.
        }
    }

    /// Moves this handle over the records other producers appended since it last looked,
    /// to the end the last of them noted in `append.lock` (`FORMAT.md`), without reading
    /// them: each was checked whole by the producer that appended after it, as the last
    /// one is checked here (whole, checksummed, numbered one before the noted next number
    /// and ending where the note says). The same read takes up to `after` bytes past the
    /// noted end, left at the start of `scan`. Returns how many of those it got if it
    /// moved, `None` if not: a note that does not check out (torn, stale, damaged) is
    /// ignored, and the records are scanned instead.
    fn follow_hint(&mut self, after: usize) -> Option<usize> {
        let hint = read_hint(&self.append_lock)?;
        if hint.segment != self.seg_first
            || hint.last_start < self.seg_end
            || hint.end <= hint.last_start
            || hint.next_seq <= self.next_seq
        {
            return None;
        }
        let len = (hint.end - hint.last_start) as usize;
        if len > HEADER_LEN + self.max_payload {
            return None;
        }
        let mut scan = std::mem::take(&mut self.scan);
        let read = fsx::read_at(&self.seg, hint.last_start, len + after, &mut scan);
        let ahead = match read {
            Ok(n)
                if n >= len
                    && matches!(
                        record::parse(&scan[..len], self.max_payload),
                        Parsed::Valid(header)
                            if header.kind == Kind::Message
                                && header.seq.checked_add(1) == Some(hint.next_seq)
                                && header.record_len() == len
                    ) =>
            {
                scan.copy_within(len..n, 0);
                Some(n - len)
            }
            _ => None,
        };
        self.scan = scan;
        if ahead.is_some() {
            self.seg_end = hint.end;
            self.next_seq = hint.next_seq;
        }
        ahead
    }

    /// Whether the watermark says synced records lie past the zeros this handle found at
    /// its end (a look without the lock; zeros found at the same place again are not
    /// checked again).
    fn zeros_behind_mark(&mut self) -> bool {
        let here = (self.seg_first, self.seg_end);
        if self.ahead.end_checked == Some(here) || self.ahead.own_end == Some(here) {
            return false;
        }
        let behind = mark_unlocked(&self.synced)
            .is_some_and(|mark| mark.covers_past(self.seg_first, self.seg_end));
        if !behind {
            self.ahead.end_checked = Some(here);
        }
        behind
    }

    /// Scans `buf`, read at the handle's end (`more`: the file may go on after it;
    /// `trusted`: the end is where this handle's own last write ended, so zeros right there
    /// are the ones it checked before that write).
    fn scan_chunk(&mut self, buf: &[u8], more: bool, trusted: bool) -> Result<Scan> {
        let mut pos = 0;
        while pos < buf.len() {
            match record::parse(&buf[pos..], self.max_payload) {
                Parsed::Valid(header)
                    if header.seq < self.next_seq
                        || (header.kind == Kind::Seal && header.seq <= self.seg_first) =>
                {
                    // Whole and checksummed, but out of sequence: damage all the same.
                    self.seg_end += pos as u64;
                    return Ok(Scan::Bad(self.seg_end, true));
                }
                Parsed::Valid(header) if header.kind == Kind::Message => {
                    self.next_seq = header.seq.saturating_add(1);
                    pos += header.record_len();
                }
                Parsed::Valid(header) if header.kind == Kind::Seal => {
                    self.seg_end += pos as u64;
                    return Ok(Scan::Sealed(header.seq));
                }
                Parsed::Incomplete if more => {
                    self.seg_end += pos as u64;
                    return Ok(Scan::More(record::needed(&buf[pos..])));
                }
                Parsed::Zero if pos == 0 && trusted => return Ok(Scan::End),
                Parsed::Zero if more && buf.len() - pos < record::ZERO_CHECK => {
                    // Look at the zeros again with enough bytes after them.
                    self.seg_end += pos as u64;
                    return Ok(Scan::More(record::ZERO_CHECK));
                }
                Parsed::Zero => {
                    self.seg_end += pos as u64;
                    let check = &buf[pos..buf.len().min(pos + record::ZERO_CHECK)];
                    if record::is_zero(check) {
                        return Ok(Scan::End);
                    }
                    return Ok(Scan::Bad(self.seg_end, false));
                }
                parsed => {
                    self.seg_end += pos as u64;
                    let misplaced = matches!(parsed, Parsed::Valid(_));
                    return Ok(Scan::Bad(self.seg_end, misplaced));
                }
            }
        }
        self.seg_end += pos as u64;
        Ok(Scan::More(0))
    }

    fn follow_seal(&mut self, next: u64) -> Result<()> {
        let path = self.layout.segments().join(fsx::segment_name(next));
        match fsx::open_existing(&path) {
            Ok(file) => {
                self.seg = file;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // The writer that sealed died before creating the next segment, or the
                // segment was reclaimed long ago: go to the newest segment there is.
                let firsts = fsx::list_segments(&self.layout.segments())?;
                match firsts.last() {
                    Some(&last) if last > self.seg_first => {
                        let (first, file) = open_last_segment(&self.layout)?;
                        self.seg = file;
                        self.seg_first = first;
                        self.seg_end = 0;
                        self.next_seq = first;
                        return Ok(());
                    }
                    _ => {
                        // Nothing follows. If the watermark says messages from the named
                        // segment were synced, the segment was deleted and they are lost:
                        // start after them, so that no sequence number is given twice.
                        let first = synced_next(&self.layout, &self.sync_lock)?.max(next);
                        let path = self.layout.segments().join(fsx::segment_name(first));
                        self.seg = fsx::open_rw(&path)?;
                        fsx::sync_dir(&self.layout.segments())?;
                        self.seg_first = first;
                        self.seg_end = 0;
                        self.next_seq = first;
                        return Ok(());
                    }
                }
            }
            Err(err) => return Err(Error::io(format!("open {}", path.display()), err)),
        }
        self.seg_first = next;
        self.seg_end = 0;
        self.next_seq = next;
        Ok(())
    }

    /// Handles a record that is not valid at `offset` (under the append lock, so no write
    /// is in progress): corruption before valid records is skipped here (consumers report
    /// and quarantine it); a torn tail is quarantined and truncated.
    fn repair(&mut self, offset: u64, misplaced: bool) -> Result<()> {
        match examine_bad(
            &self.layout,
            &self.seg,
            self.seg_first,
            offset,
            misplaced,
            self.max_payload,
            &mut self.scan,
        )? {
            Bad::ValidNow => Ok(()),
            Bad::Resync { at, .. } => {
                self.seg_end = at;
                Ok(())
            }
            Bad::LaterSegment(_) => {
                let (first, file) = open_last_segment(&self.layout)?;
                self.seg = file;
                self.seg_first = first;
                self.seg_end = 0;
                self.next_seq = first;
                Ok(())
            }
            Bad::TornTail => {
                // The cut bytes may have been synced: compare with the watermark.
                self.suspect = true;
                Ok(())
            }
        }
    }

    /// Compares the tail (this handle is at the end of the newest segment, under the
    /// append lock) with the watermark. A log shorter than what was synced has lost
    /// messages: the segment is sealed with a seal naming the first sequence number after
    /// the lost ones, and the next segment starts there, so no number is given twice and
    /// consumers report the gap. A damaged watermark is rebuilt at the tail (after syncing
    /// it); the returned note says so.
    fn check_watermark(&mut self) -> Result<Option<String>> {
        let _guard = lock(&self.sync_lock, "queue sync lock")?;
        let tail = self.tail();
        let mark = match repair::read_mark(&self.synced)? {
            Ok(mark) => mark,
            Err(why) => {
                self.check_poison_file()?;
                self.sync_segment()?;
                repair::replace_mark(&self.synced, tail)?;
                return Ok(Some(format!(
                    "the sync watermark (file synced) {why}; rebuilt at message {} (segment {}, offset {}): a loss of messages synced before cannot be detected",
                    tail.next_seq, tail.segment, tail.offset
                )));
            }
        };
        if tail.position() >= mark.position() {
            return Ok(None);
        }
        self.check_poison_file()?;
        if mark.next_seq > self.next_seq {
            self.roll_over_to(mark.next_seq)?;
        } else {
            self.sync_segment()?;
        }
        repair::write_mark(&self.synced, self.tail())?;
        Ok(None)
    }

    /// Follows whole messages appended to the current segment since the last catch-up
    /// (under the append lock), stopping at anything else: seals, damage, zeros and
    /// watermark checks are left to `catch_up`, which may take the sync lock.
    fn extend_tail(&mut self) -> Result<()> {
        // The note of the log's end, checked, saves reading the records up to it; what a
        // producer that died before its note appended after it waits for the next sync.
        if !self.suspect && self.follow_hint(0).is_some() {
            return Ok(());
        }
        let mut want = FIRST_SCAN;
        loop {
            let size = fsx::file_len(&self.seg)?;
            if size <= self.seg_end {
                return Ok(());
            }
            let len = ((size - self.seg_end) as usize).min(want);
            let mut scan = std::mem::take(&mut self.scan);
            let read = fsx::read_at(&self.seg, self.seg_end, len, &mut scan);
            let n = match read {
                Ok(n) => n,
                Err(err) => {
                    self.scan = scan;
                    return Err(err);
                }
            };
            let mut pos = 0;
            let stop = loop {
                match record::parse(&scan[pos..n], self.max_payload) {
                    Parsed::Valid(header)
                        if header.kind == Kind::Message && header.seq == self.next_seq =>
                    {
                        self.next_seq += 1;
                        pos += header.record_len();
                    }
                    Parsed::Incomplete if self.seg_end + (n as u64) < size => {
                        break Some(record::needed(&scan[pos..n]));
                    }
                    _ => break None,
                }
            };
            self.seg_end += pos as u64;
            self.scan = scan;
            match stop {
                Some(need) => want = (want * 2).min(SCAN_CHUNK).max(need),
                None => return Ok(()),
            }
        }
    }

    fn tail(&self) -> Mark {
        Mark {
            segment: self.seg_first,
            offset: self.seg_end,
            next_seq: self.next_seq,
        }
    }

    /// Makes everything up to `upto` (segment, offset) durable, sharing the `fdatasync` with
    /// every other process through the sync lock and the `synced` watermark (group commit).
    ///
    /// A *follower* finds its bytes covered: by a look at the watermark without a lock, or
    /// after waiting for the sync running now (with few producers, on the shared lock; with
    /// many, asleep until the leader is done, see [`Appender::lead_large`]). A *leader* holds the
    /// exclusive sync lock, notes the tail (its own end, or further if the append lock is
    /// free: whatever other processes appended meanwhile), `fdatasync`s and only then
    /// writes that tail to the watermark. A leader that dies or fails releases the lock
    /// without moving the watermark, so a follower that wakes up finds its bytes not
    /// covered and leads a sync of its own (or fails on the poisoned queue).
    pub(crate) fn sync_upto(&mut self, upto: (u64, u64)) -> Result<()> {
        self.check_poison()?;
        let seen = mark_unlocked(&self.synced);
        if let Some(mark) = seen
            && mark.position() >= upto
        {
            self.covered_by_another();
            return Ok(());
        }
        let leading = if self.group.most() >= LARGE_GROUP {
            self.lead_large(upto)?
        } else {
            self.lead_small(upto)?
        };
        let Some(Leading {
            _guard,
            from,
            current,
        }) = leading
        else {
            self.covered_by_another();
            return Ok(());
        };
        self.check_poison_file()?;
        let deadline = Instant::now() + APPEND_LOCK_PATIENCE;
        // This handle's own end: every byte before it is whole (appends are serialised by
        // the append lock, each written completely before the lock is released).
        let mut tail = self.tail();
        // Bytes other processes appended while this handle waited can share this sync:
        // note the tail again if the append lock is free. The lock order is append before
        // sync, so this never waits for it: it tries again (until the delay's deadline) and
        // otherwise syncs what it knows.
        loop {
            if self.append_lock.try_lock().is_ok() {
                let _append = LockGuard(Arc::clone(&self.append_lock));
                self.extend_tail()?;
                tail = self.tail();
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            // Not a yield: with many producers runnable, a yielding leader gets its CPU
            // back only after they all had theirs (measured: about 150 µs).
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_micros(1) {
                std::hint::spin_loop();
            }
        }
        if upto.0 < tail.segment {
            // An older segment: sealing synced it.
            return Ok(());
        }
        if self
            .faults
            .abort_in_sync_after
            .is_some_and(|n| self.syncs + 1 >= n)
        {
            // Exits without unwinding or dropping anything (no core file, unlike abort):
            // the kernel releases the locks, as it would for a killed process.
            std::process::exit(70);
        }
        self.sync_segment()?;
        let own = std::mem::take(&mut self.group.own_unsynced);
        if let Some(from) = from
            && tail.segment == from.segment
        {
            // Only this handle's messages in the sync (after any delay): alone for now.
            let others = tail.next_seq.saturating_sub(from.next_seq) > own;
            self.group.observe(
                tail.offset.saturating_sub(from.offset),
                tail.next_seq.saturating_sub(from.next_seq),
                others,
            );
        }
        let written = match current {
            Ok(mark) if mark.position() >= tail.position() => Ok(()),
            Ok(_) => repair::write_mark(&self.synced, tail),
            Err(why) => {
                // Damaged while this handle was running: rebuilt here, and said so where
                // people look for damage.
                note_damage(
                    &self.layout,
                    &format!(
                        "the sync watermark (file synced) {why}; rebuilt at message {} (segment {}, offset {})",
                        tail.next_seq, tail.segment, tail.offset
                    ),
                );
                repair::replace_mark(&self.synced, tail)
            }
        };
        // Wakes the producers waiting for this sync, after the lock is released: a woken
        // producer may take this one's CPU, and must not find the lock still held.
        drop(_guard);
        wake_waiters(&self.sync_lock);
        written
    }

    /// Becomes the sync leader (returns the exclusive sync lock and the watermark its sync
    /// starts from), or returns `None` once another leader's sync covered `upto`: the way
    /// of a handle that saw few producers in its last sync. It waits for a running sync
    /// with the shared lock, runs its commit delay without any lock (so that it holds up
    /// neither the handles the last sync covered, nor the appends it waits for, nor
    /// another candidate done with its delay first: measured with 4 producers, 21 µs from
    /// the last append of a round to its sync with the delay under the shared lock, 9 µs
    /// without), and then only tries the exclusive lock, yielding between tries: with few
    /// producers the CPU is there to poll with, and a leader reacts at once.
    fn lead_small(&mut self, upto: (u64, u64)) -> Result<Option<Leading>> {
        let mut delayed = false;
        loop {
            {
                if self.lock_shared_looking(upto)? {
                    return Ok(None);
                }
                let _shared = LockGuard(Arc::clone(&self.sync_lock));
                let current = repair::read_mark(&self.synced)?;
                if let Ok(mark) = current
                    && mark.position() >= upto
                {
                    return Ok(None);
                }
                if !delayed {
                    delayed = true;
                    let from = match current {
                        Ok(mark) if mark.segment == self.seg_first => Some(mark),
                        _ => None,
                    };
                    // Without the lock: the first candidate done with its delay can take
                    // the exclusive lock at once, and the others find their bytes covered.
                    drop(_shared);
                    if self.commit_delay(from, upto) {
                        return Ok(None);
                    }
                }
            }
            match self.sync_lock.try_lock() {
                Ok(()) => {
                    let guard = LockGuard(Arc::clone(&self.sync_lock));
                    return self.leader_start(guard, upto);
                }
                // Another leader syncs (the shared lock then waits for it), or others look
                // at the watermark or wait in their commit delay.
                Err(std::fs::TryLockError::WouldBlock) => std::thread::yield_now(),
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(Error::io("lock queue sync lock", err));
                }
            }
        }
    }

    /// Takes the shared sync lock, which waits for a leader's sync to end; returns true
    /// instead once the watermark covers `upto`. It tries the lock and looks at the
    /// watermark, yielding between looks, before it sleeps on the lock: a producer asleep
    /// in `flock` is woken on the leader's CPU (measured on a 2-vCPU VM: all four producers
    /// ran on one CPU while the other idled), where it waits for the others in turn, and a
    /// producer that looks notices the end of the sync on its own CPU.
    fn lock_shared_looking(&mut self, upto: (u64, u64)) -> Result<bool> {
        for _ in 0..FOLLOWER_SPINS {
            match self.sync_lock.try_lock_shared() {
                Ok(()) => return Ok(false),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(Error::io("lock queue sync lock (shared)", err));
                }
            }
            if mark_unlocked(&self.synced).is_some_and(|mark| mark.position() >= upto) {
                return Ok(true);
            }
            std::thread::yield_now();
        }
        self.sync_lock
            .lock_shared()
            .map_err(|err| Error::io("lock queue sync lock (shared)", err))?;
        Ok(false)
    }

    /// [`lead_small`](Appender::lead_small) for a handle that saw many producers in its
    /// last sync. Spinning waiters would take the CPU from the producers still appending,
    /// so the others sleep (inotify, see [`FileWatch`]) until a leader is done, and a
    /// leader has no commit delay: while it syncs, the others append, and the next leader
    /// syncs them all (syncs follow one another, each covering what was appended during
    /// the last).
    fn lead_large(&mut self, upto: (u64, u64)) -> Result<Option<Leading>> {
        loop {
            match self.sync_lock.try_lock() {
                Ok(()) => {
                    let guard = LockGuard(Arc::clone(&self.sync_lock));
                    return self.leader_start(guard, upto);
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(Error::io("lock queue sync lock", err));
                }
            }
            if self.wait_for_leader(upto)? {
                return Ok(None);
            }
        }
    }

    /// A leader's first look at the watermark, holding the exclusive sync lock: `None`
    /// if another leader's sync covered `upto` meanwhile, else the lock and the watermark
    /// the sync starts from (in this handle's segment).
    fn leader_start(&mut self, guard: LockGuard, upto: (u64, u64)) -> Result<Option<Leading>> {
        let current = repair::read_mark(&self.synced)?;
        if let Ok(mark) = current
            && mark.position() >= upto
        {
            return Ok(None);
        }
        let from = match current {
            Ok(mark) if mark.segment == self.seg_first => Some(mark),
            _ => None,
        };
        Ok(Some(Leading {
            _guard: guard,
            from,
            current,
        }))
    }

    /// Waits while another process leads a sync (it holds the sync lock) until that leader
    /// is done, at most [`LEADER_WAIT`]; returns whether the watermark covers `upto` now.
    fn wait_for_leader(&mut self, upto: (u64, u64)) -> Result<bool> {
        let covered =
            |synced: &File| mark_unlocked(synced).is_some_and(|mark| mark.position() >= upto);
        let watch = self.sync_watch.get_or_insert_with(|| {
            FileWatch::new()
                .and_then(|mut watch| watch.watch(&self.layout.sync_lock()).then_some(watch))
        });
        if let Some(watch) = watch {
            // A sync takes long enough for a leader to be done soon after others start
            // to wait: a few looks first save most of them a sleep and a wake-up.
            for _ in 0..FOLLOWER_SPINS {
                if covered(&self.synced) {
                    return Ok(true);
                }
                std::thread::yield_now();
            }
            watch.clear();
            if covered(&self.synced) {
                return Ok(true);
            }
            watch.wait(LEADER_WAIT);
            return Ok(covered(&self.synced));
        }
        // Without a watch, a shared lock waits for the leader to finish.
        self.sync_lock
            .lock_shared()
            .map_err(|err| Error::io("lock queue sync lock (shared)", err))?;
        let _shared = LockGuard(Arc::clone(&self.sync_lock));
        if let Ok(mark) = repair::read_mark(&self.synced)?
            && mark.position() >= upto
        {
            return Ok(true);
        }
        drop(_shared);
        // Others that the last sync did not cover either look at the watermark.
        std::thread::yield_now();
        Ok(false)
    }

    /// Another process's sync covered this handle's messages: there are other producers.
    /// (How large that group was is not known here: the watermark may have moved more
    /// than once since this handle looked. Groups are measured by their leaders.)
    fn covered_by_another(&mut self) {
        self.group.own_unsynced = 0;
        self.group.observe(0, 0, true);
    }

    /// The commit delay of a leader whose sync would start from watermark `from` (in this
    /// handle's segment): when there are other producers, waits (yielding the CPU to them)
    /// until the segment has grown past `from` by as much as the last group held, or about
    /// one `fdatasync` time has passed. Returns true if the watermark covered `upto`
    /// meanwhile (another candidate led the sync).
    fn commit_delay(&mut self, from: Option<Mark>, upto: (u64, u64)) -> bool {
        let Some(from) = from else { return false };
        if self.group.eager {
            return false;
        }
        let Some(target) = self.group.target() else {
            return false;
        };
        // Waits while appends keep coming: it gives up after a quiet spell of about one
        // `fdatasync` time without any, and in any case after MAX_COMMIT_DELAY.
        let quiet = match self.group.sync_nanos {
            0 => FIRST_COMMIT_DELAY,
            nanos => Duration::from_nanos(nanos).clamp(MIN_QUIET, MAX_QUIET),
        };
        let started = Instant::now();
        let mut last_growth = started;
        // How far whole records reach past this handle's own end (the log's length is no
        // signal: zeros are written ahead of it).
        let mut reach = self.seg_end;
        let want = from.offset.saturating_add(target);
        while reach < want {
            if self.probe(&mut reach) {
                last_growth = Instant::now();
            }
            if mark_unlocked(&self.synced).is_some_and(|mark| mark.position() >= upto) {
                return true;
            }
            let now = Instant::now();
            if now.duration_since(last_growth) >= quiet
                || now.duration_since(started) >= MAX_COMMIT_DELAY
            {
                break;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Moves `reach` over the records that start there (by their headers alone: this only
    /// paces the commit delay); returns whether it moved.
    fn probe(&self, reach: &mut u64) -> bool {
        let start = *reach;
        let mut header = [0u8; HEADER_LEN];
        for _ in 0..64 {
            match fsx::read_at_into(&self.seg, *reach, &mut header) {
                Ok(HEADER_LEN) if header[..4] == record::MAGIC => {
                    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
                    if len as usize > self.max_payload {
                        break;
                    }
                    *reach += (HEADER_LEN + len as usize) as u64;
                }
                _ => break,
            }
        }
        *reach != start
    }

    /// Syncs whatever this handle appended, per `durability` (`force`: regardless of mode).
    pub(crate) fn sync_now(&mut self) -> Result<()> {
        self.sync_upto((self.seg_first, self.seg_end))
    }
}

enum Scan {
    /// Read on; the next read must take at least this many bytes.
    More(usize),
    /// Zeros written ahead: the end of the records.
    End,
    /// Offset, and whether the record there is whole but misplaced (wrong kind or sequence).
    Bad(u64, bool),
    Sealed(u64),
}

/// Where the log ended after the last append, as its producer noted it in the first
/// [`HINT_LEN`] bytes of `append.lock` (`FORMAT.md`): a shortcut for the next producer to
/// take the lock, which checks it before it relies on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hint {
    segment: u64,
    /// Where the last record starts.
    last_start: u64,
    end: u64,
    next_seq: u64,
}

/// Four little-endian u64 (segment, last record's start, end, next sequence number) and
/// the CRC-32C of those 32 bytes.
const HINT_LEN: usize = 36;

fn write_hint(append_lock: &File, hint: Hint) {
    let mut buf = [0u8; HINT_LEN];
    for (i, value) in [hint.segment, hint.last_start, hint.end, hint.next_seq]
        .into_iter()
        .enumerate()
    {
        buf[i * 8..i * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    let crc = crc32c::crc32c(&buf[..32]);
    buf[32..].copy_from_slice(&crc.to_le_bytes());
    // Only a shortcut: without it the next producer scans.
    let _ = append_lock.write_at(&buf, 0);
}

fn read_hint(append_lock: &File) -> Option<Hint> {
    let mut buf = [0u8; HINT_LEN];
    if !matches!(append_lock.read_at(&mut buf, 0), Ok(HINT_LEN)) {
        return None;
    }
    let crc = u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]);
    if crc32c::crc32c(&buf[..32]) != crc {
        return None;
    }
    let at = |i: usize| {
        let mut value = [0u8; 8];
        value.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        u64::from_le_bytes(value)
    };
    Some(Hint {
        segment: at(0),
        last_start: at(1),
        end: at(2),
        next_seq: at(3),
    })
}

/// Wakes the producers that wait (with a [`FileWatch`]) for a sync leader to finish: one
/// byte written to the sync lock's file, whose contents mean nothing (`FORMAT.md`).
fn wake_waiters(sync_lock: &File) {
    // A failure only leaves the waiters to their timeout.
    let _ = sync_lock.write_at(&[0], 0);
}

/// Opens the newest segment.
///
/// The newest segment is never deleted, but the one a listing shows as newest may be
/// sealed, consumed and deleted before it is opened (consumers delete without the append
/// lock): then list again.
pub(crate) fn open_last_segment(layout: &Layout) -> Result<(u64, File)> {
    let mut attempts = 0;
    loop {
        let firsts = fsx::list_segments(&layout.segments())?;
        let Some(&last) = firsts.last() else {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!("queue {} has no segment files", layout.root().display()),
            ));
        };
        let path = layout.segments().join(fsx::segment_name(last));
        match fsx::open_existing(&path) {
            Ok(file) => return Ok((last, file)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && attempts < 100 => {
                attempts += 1;
            }
            Err(err) => return Err(Error::io(format!("open {}", path.display()), err)),
        }
    }
}

/// The sequence number after the last synced message (0 if the watermark is damaged:
/// then the check at the end of catching up rebuilds it and reports).
fn synced_next(layout: &Layout, sync_lock: &Arc<File>) -> Result<u64> {
    let _guard = lock(sync_lock, "queue sync lock")?;
    let synced = fsx::open_rw(&layout.synced())?;
    Ok(repair::read_mark(&synced)?.map_or(0, |mark| mark.next_seq))
}

/// Every segment file is gone: starts the log again after the last synced message (under
/// the append lock), so that consumers report the missing messages and no sequence
/// number is given twice.
fn recreate_tail(layout: &Layout, sync_lock: &Arc<File>) -> Result<(u64, File)> {
    let append_lock = open_lock(&layout.append_lock())?;
    let _guard = lock(&append_lock, "queue append lock")?;
    if let Some(&last) = fsx::list_segments(&layout.segments())?.last() {
        let path = layout.segments().join(fsx::segment_name(last));
        let file = fsx::open_existing(&path)
            .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
        return Ok((last, file));
    }
    let first = {
        let _guard = lock(sync_lock, "queue sync lock")?;
        let synced = fsx::open_rw(&layout.synced())?;
        match repair::read_mark(&synced)? {
            Ok(mark) => mark.next_seq,
            Err(why) => {
                // Starting again at 0 could give numbers the consumers took as done.
                return Err(Error::new(
                    ErrorKind::Corrupted,
                    format!(
                        "queue {} has no segment files and its sync watermark {why}: where the log ended is unknown",
                        layout.root().display()
                    ),
                ));
            }
        }
    };
    let path = layout.segments().join(fsx::segment_name(first));
    let file = fsx::open_rw(&path)?;
    fsx::sync_dir(&layout.segments())?;
    Ok((first, file))
}

/// The watermark, by a look without the sync lock. It is written with one `pwrite` and
/// checksummed, and only after the sync that covered it: a read that races a write fails
/// the checksum (or sees the old value) and gives `None`, as does the old unchecksummed
/// format, so the caller then takes the lock.
fn mark_unlocked(synced: &File) -> Option<Mark> {
    let mut buf = [0u8; repair::MARK_LEN + 1];
    if !matches!(synced.read_at(&mut buf, 0), Ok(n) if n == repair::MARK_LEN) {
        return None;
    }
    let mut mark = [0u8; repair::MARK_LEN];
    mark.copy_from_slice(&buf[..repair::MARK_LEN]);
    repair::decode_mark(&mark).ok()
}

/// Leaves a note about damage that no caller can be told about in `quarantine/`.
fn note_damage(layout: &Layout, note: &str) {
    let dir = layout.root().join("quarantine");
    if fsx::ensure_dir(&dir).is_ok() {
        let _ = fsx::write_private(
            &dir.join(format!("note-{}.txt", fsx::now_ms())),
            format!("{note}\n").as_bytes(),
        );
    }
}
