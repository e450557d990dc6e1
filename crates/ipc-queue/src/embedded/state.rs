//! Consumer state: an append-only log of leases, acknowledgements and the like, shared by
//! every consumer process, and the in-memory view each process folds it into.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use ipc_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::fsx;
use super::fsx::{LockGuard, lock};
use super::layout::Layout;
use super::record::{self, HEADER_LEN, Header, Kind, Parsed};

/// The largest state record (a compaction snapshot).
const MAX_STATE_PAYLOAD: usize = 64 << 20;
const READ_CHUNK: usize = 256 << 10;
/// The size past which the state log is compacted while the disk is full (the reserve
/// released): the log and its snapshot must fit in the reserve.
const TIGHT_COMPACT_AT: u64 = 32 << 10;

/// The state of one message at or above the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// Delivered to `owner`, invisible to others until `until` (ms) unless the owner dies.
    Leased { owner: u64, until: u64, count: u32 },
    /// Deliverable again from `not_before` (ms); `count` deliveries so far.
    Waiting { not_before: u64, count: u32 },
    /// Acknowledged or dead-lettered.
    Done,
}

/// What every consumer agrees on, folded from the state log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct View {
    /// Every sequence number below is done.
    pub(crate) floor: u64,
    /// The lowest sequence number never leased; everything from here on is untouched.
    pub(crate) next_fresh: u64,
    pub(crate) entries: BTreeMap<u64, Entry>,
    /// Ranges `from -> to` lost to corruption.
    pub(crate) lost: BTreeMap<u64, u64>,
    pub(crate) done_count: u64,
    pub(crate) lost_pending: u64,
    pub(crate) acked_total: u64,
    pub(crate) dead_total: u64,
    pub(crate) lost_total: u64,
}

impl View {
    pub(crate) fn apply(&mut self, header: &Header, payload: &[u8]) {
        let seq = header.seq;
        match header.kind {
            Kind::Lease => {
                if seq < self.floor {
                    return;
                }
                let count = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(1);
                if let Some(Entry::Done) = self.entries.get(&seq) {
                    return;
                }
                self.entries.insert(
                    seq,
                    Entry::Leased {
                        owner: header.aux,
                        until: header.time,
                        count,
                    },
                );
                self.next_fresh = self.next_fresh.max(seq.saturating_add(1));
            }
            Kind::Ack => {
                self.acked_total += 1;
                self.mark_done(seq);
            }
            Kind::Dead => {
                self.dead_total += 1;
                self.mark_done(seq);
            }
            Kind::Nack => {
                let count = match self.entries.get(&seq) {
                    Some(Entry::Done) => return,
                    Some(Entry::Leased { count, .. } | Entry::Waiting { count, .. }) => *count,
                    None => 0,
                };
                if seq >= self.floor {
                    self.entries.insert(
                        seq,
                        Entry::Waiting {
                            not_before: header.time,
                            count,
                        },
                    );
                }
            }
            Kind::Lost => self.add_lost(seq, header.aux),
            Kind::Snapshot => {
                if let Ok(view) = ipc_core::decode::<View>(payload) {
                    *self = view;
                }
            }
            _ => {}
        }
        self.advance();
    }

    fn mark_done(&mut self, seq: u64) {
        if seq < self.floor {
            return;
        }
        if self.entries.insert(seq, Entry::Done) != Some(Entry::Done) {
            self.done_count += 1;
        }
        self.next_fresh = self.next_fresh.max(seq.saturating_add(1));
    }

    /// Whether `from..to` is already known as lost.
    pub(crate) fn knows_lost(&self, from: u64, to: u64) -> bool {
        to <= self.floor
            || self
                .lost
                .get(&from.max(self.floor))
                .is_some_and(|&end| end >= to)
    }

    /// How many of `from..to` are done (below the floor, or acknowledged or dead-lettered).
    pub(crate) fn done_in(&self, from: u64, to: u64) -> u64 {
        let below = self.floor.min(to).saturating_sub(from);
        let above = self
            .entries
            .range(from.max(self.floor)..to.max(self.floor))
            .filter(|(_, entry)| matches!(entry, Entry::Done))
            .count() as u64;
        below + above
    }

    /// The first `limit` messages of `from..to` not done.
    pub(crate) fn not_done_in(&self, from: u64, to: u64, limit: usize) -> Vec<u64> {
        (from.max(self.floor)..to)
            .filter(|seq| !matches!(self.entries.get(seq), Some(Entry::Done)))
            .take(limit)
            .collect()
    }

    /// The lowest message at or above the floor and below `next_fresh` that has no state
    /// and is not lost: its state records were damaged and skipped.
    pub(crate) fn first_unknown(&self) -> Option<u64> {
        let mut expect = self.skip_lost(self.floor);
        for &seq in self.entries.keys() {
            if expect >= self.next_fresh {
                return None;
            }
            if seq > expect {
                return Some(expect);
            }
            if seq == expect {
                expect = self.skip_lost(seq.saturating_add(1));
            }
        }
        (expect < self.next_fresh).then_some(expect)
    }

    fn add_lost(&mut self, from: u64, to: u64) {
        let from = from.max(self.floor);
        if to <= from || self.knows_lost(from, to) {
            return;
        }
        self.lost_total += to - from - self.done_in(from, to);
        self.lost_pending += to - from;
        self.lost.insert(from, to);
        // Whatever was known about the lost messages no longer matters: none can be
        // delivered again.
        let inside: Vec<u64> = self.entries.range(from..to).map(|(&seq, _)| seq).collect();
        for seq in inside {
            if self.entries.remove(&seq) == Some(Entry::Done) {
                self.done_count = self.done_count.saturating_sub(1);
            }
        }
    }

    /// Moves the floor past done and lost messages.
    fn advance(&mut self) {
        loop {
            if let Some(Entry::Done) = self.entries.get(&self.floor) {
                self.entries.remove(&self.floor);
                self.done_count = self.done_count.saturating_sub(1);
                self.floor = self.floor.saturating_add(1);
            } else if let Some(to) = self.lost.remove(&self.floor) {
                self.lost_pending = self
                    .lost_pending
                    .saturating_sub(to.saturating_sub(self.floor));
                // A damaged snapshot could hold a backwards range: never move back.
                self.floor = to.max(self.floor);
            } else {
                break;
            }
            self.next_fresh = self.next_fresh.max(self.floor);
        }
    }

    /// The first sequence number at or after `seq` that is not in a lost range.
    pub(crate) fn skip_lost(&self, mut seq: u64) -> u64 {
        while let Some((_, &to)) = self
            .lost
            .range(..=seq)
            .next_back()
            .filter(|(_, to)| **to > seq)
        {
            seq = to;
        }
        seq
    }

    /// Messages not yet done, given the log's next sequence number.
    pub(crate) fn depth(&self, log_next: u64) -> u64 {
        log_next
            .saturating_sub(self.floor)
            .saturating_sub(self.done_count)
            .saturating_sub(self.lost_pending)
    }
}

/// The state log file and its lock.
pub(crate) struct StateLog {
    layout: Layout,
    lock_file: std::sync::Arc<File>,
    file: File,
    ino: u64,
    offset: u64,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Damaged state records skipped (safe: at worst a message is delivered again).
    pub(crate) skipped: u64,
    compact_at: u64,
    /// The disk was found full: compact early, so that the log fits in the reserve.
    tight: bool,
}

impl StateLog {
    /// Opens the state log, to be compacted once it grows past `compact_at` bytes.
    pub(crate) fn open(layout: &Layout, compact_at: u64) -> Result<StateLog> {
        let lock_file = fsx::open_lock(&layout.state_lock())?;
        let file = fsx::open_rw(&layout.state_log())?;
        let ino = file
            .metadata()
            .map_err(|err| Error::io("stat state log", err))?
            .ino();
        Ok(StateLog {
            layout: layout.clone(),
            lock_file,
            file,
            ino,
            offset: 0,
            buf: Vec::new(),
            out: Vec::new(),
            skipped: 0,
            compact_at,
            tight: false,
        })
    }

    /// Takes the state lock.
    pub(crate) fn lock(&self) -> Result<LockGuard> {
        lock(&self.lock_file, "queue state lock")
    }

    /// Reads records appended since the last call into `view`. With the lock held
    /// (`locked`), a torn tail is truncated and damage in the middle skipped; without it,
    /// reading stops at the first record that is not whole yet.
    pub(crate) fn catch_up(&mut self, view: &mut View, locked: bool) -> Result<()> {
        {
            let ino = std::fs::metadata(self.layout.state_log())
                .map_err(|err| Error::io("stat state log", err))?
                .ino();
            if ino != self.ino {
                self.file = fsx::open_rw(&self.layout.state_log())?;
                self.ino = ino;
                self.offset = 0;
                *view = View::default();
            }
        }
        let mut want = READ_CHUNK;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let n = fsx::read_at(&self.file, self.offset, want, &mut buf);
            let n = match n {
                Ok(n) => n,
                Err(err) => {
                    self.buf = buf;
                    return Err(err);
                }
            };
            let mut pos = 0;
            let mut stop = None;
            while pos < n {
                match record::parse(&buf[pos..n], MAX_STATE_PAYLOAD) {
                    Parsed::Valid(header) => {
                        view.apply(&header, &buf[pos + HEADER_LEN..pos + header.record_len()]);
                        pos += header.record_len();
                    }
                    Parsed::Incomplete if n == want => {
                        // Possibly a record longer than the chunk: read it whole.
                        if pos == 0 && n >= HEADER_LEN {
                            let len =
                                u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
                            want = want.max(HEADER_LEN + len);
                        }
                        break;
                    }
                    Parsed::Incomplete | Parsed::Invalid(_) | Parsed::Zero => {
                        stop = Some(pos);
                        break;
                    }
                }
            }
            self.offset += pos as u64;
            if let Some(pos) = stop {
                let result = if locked {
                    self.repair(&buf[pos..n])
                } else {
                    // Without the lock only damage with valid records after it is skipped;
                    // the end may be a write in progress.
                    match record::resync(&buf[pos..n], 1, MAX_STATE_PAYLOAD) {
                        Some(at) => {
                            self.offset += at as u64;
                            Ok(true)
                        }
                        None => Ok(false),
                    }
                };
                self.buf = buf;
                if result? {
                    continue;
                }
                return Ok(());
            }
            self.buf = buf;
            if n < want || (pos == 0 && n == 0) {
                return Ok(());
            }
        }
    }

    /// Handles damage at `self.offset` under the lock: skips to the next valid record, or
    /// truncates a torn tail. Returns whether to keep reading.
    fn repair(&mut self, bytes: &[u8]) -> Result<bool> {
        if let Some(at) = record::resync(bytes, 1, MAX_STATE_PAYLOAD) {
            self.skipped += 1;
            self.offset += at as u64;
            return Ok(true);
        }
        if !bytes.is_empty() {
            self.file
                .set_len(self.offset)
                .map_err(|err| Error::io(format!("truncate state log to {}", self.offset), err))?;
        }
        Ok(false)
    }

    /// Appends one record (under the lock, after `catch_up`) and applies it to `view`.
    pub(crate) fn append(
        &mut self,
        view: &mut View,
        kind: Kind,
        seq: u64,
        time: u64,
        aux: u64,
        payload: &[u8],
    ) -> Result<()> {
        self.out.clear();
        record::write(&mut self.out, kind, seq, time, aux, payload);
        self.append_out(view)
    }

    /// Appends records of `kind` without payloads, one per `(seq, time, aux)`, with one
    /// write (under the lock, after `catch_up`), and applies them to `view`.
    pub(crate) fn append_many(
        &mut self,
        view: &mut View,
        kind: Kind,
        records: &[(u64, u64, u64)],
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.out.clear();
        for &(seq, time, aux) in records {
            record::write(&mut self.out, kind, seq, time, aux, &[]);
        }
        self.append_out(view)
    }

    /// Writes the records in `self.out` and applies them to `view`.
    fn append_out(&mut self, view: &mut View) -> Result<()> {
        if let Err(err) = self.write_out() {
            if !fsx::is_disk_full(&err) {
                return Err(Error::io(
                    format!("append {} bytes to the consumer state log", self.out.len()),
                    err,
                ));
            }
            // A full disk: take the room kept in reserve (once, by whichever consumer gets
            // here first), or else make room by compacting; then try once more.
            self.tight = true;
            if !self.release_reserve()? {
                self.compact(view)?;
            }
            self.write_out().map_err(|err| {
                Error::io(
                    format!(
                        "disk full: append {} bytes to the consumer state log (its {} byte reserve is used up)",
                        self.out.len(),
                        fsx::RESERVE_LEN
                    ),
                    err,
                )
            })?;
        }
        self.offset += self.out.len() as u64;
        let mut pos = 0;
        while let Parsed::Valid(header) = record::parse(&self.out[pos..], MAX_STATE_PAYLOAD) {
            let end = pos + header.record_len();
            view.apply(&header, &self.out[pos + HEADER_LEN..end]);
            pos = end;
        }
        Ok(())
    }

    /// Writes `self.out` at the end; on failure removes any partial write.
    fn write_out(&self) -> std::io::Result<()> {
        let result = self.file.write_all_at(&self.out, self.offset);
        if result.is_err() {
            let _ = self.file.set_len(self.offset);
        }
        result
    }

    /// Deletes the reserve file (under the append lock, so that no producer is between
    /// its check of the reserve and its write). Returns whether there was one. Removes
    /// the producers' note of the log's end first: a producer that follows a note takes
    /// it as a sign that the reserve is there (`FORMAT.md`).
    fn release_reserve(&self) -> Result<bool> {
        let append_lock = fsx::open_lock(&self.layout.append_lock())?;
        let _guard = lock(&append_lock, "queue append lock")?;
        // Cutting a file to nothing needs no room on the disk.
        append_lock
            .set_len(0)
            .map_err(|err| Error::io("remove the note in the queue's append lock file", err))?;
        match std::fs::remove_file(self.layout.root().join("reserve")) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(Error::io("remove the queue's reserve file", err)),
        }
    }

    /// Makes the state log durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|err| Error::io("fdatasync the consumer state log", err))
    }

    /// Rewrites the state log as one snapshot once it is large (under the lock).
    pub(crate) fn maybe_compact(&mut self, view: &View) -> Result<()> {
        let limit = if self.tight {
            self.compact_at.min(TIGHT_COMPACT_AT)
        } else {
            self.compact_at
        };
        if self.offset < limit {
            return Ok(());
        }
        self.compact(view)?;
        if self.tight && self.layout.root().join("reserve").exists() {
            self.tight = false;
        }
        Ok(())
    }

    /// Rewrites the state log as one snapshot (under the lock).
    fn compact(&mut self, view: &View) -> Result<()> {
        let mut payload = Vec::new();
        if ipc_core::encode_to_vec(view, &mut payload, MAX_STATE_PAYLOAD).is_err() {
            return Ok(()); // Too many open entries to snapshot; keep appending.
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        record::write(
            &mut out,
            Kind::Snapshot,
            view.floor,
            fsx::now_ms(),
            0,
            &payload,
        );
        let tmp = self.layout.root().join("state.log.tmp");
        let _ = std::fs::remove_file(&tmp);
        let file = fsx::open_rw(&tmp)?;
        if let Err(err) = file.write_all_at(&out, 0).and_then(|()| file.sync_data()) {
            let _ = std::fs::remove_file(&tmp);
            let what = if fsx::is_disk_full(&err) {
                "disk full: "
            } else {
                ""
            };
            return Err(Error::io(
                format!("{what}write a state snapshot of {} bytes", out.len()),
                err,
            ));
        }
        std::fs::rename(&tmp, self.layout.state_log())
            .map_err(|err| Error::io("replace state log", err))?;
        fsx::sync_dir(self.layout.root())?;
        self.ino = file
            .metadata()
            .map_err(|err| Error::io("stat state log", err))?
            .ino();
        self.file = file;
        self.offset = out.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind, seq: u64, time: u64, aux: u64) -> Header {
        Header {
            kind,
            seq,
            time,
            aux,
            payload_len: 0,
        }
    }

    #[test]
    fn the_floor_follows_acks_in_any_order_and_skips_lost_ranges() {
        let mut view = View::default();
        for seq in 0..4 {
            view.apply(&header(Kind::Lease, seq, 100, 7), &1u32.to_le_bytes());
        }
        assert_eq!(view.next_fresh, 4);
        view.apply(&header(Kind::Ack, 1, 0, 7), &[]);
        view.apply(&header(Kind::Ack, 3, 0, 7), &[]);
        assert_eq!((view.floor, view.done_count), (0, 2));
        view.apply(&header(Kind::Ack, 0, 0, 7), &[]);
        assert_eq!((view.floor, view.done_count), (2, 1));
        assert_eq!(view.depth(10), 7);
        // Message 2 (leased) turns out lost, and so do 6..9, not yet delivered.
        view.apply(&header(Kind::Lost, 6, 0, 9), &[]);
        view.apply(&header(Kind::Lost, 2, 0, 3), &[]);
        assert_eq!(view.floor, 4);
        assert!(view.entries.is_empty());
        assert_eq!(view.skip_lost(6), 9);
        assert_eq!(view.depth(10), 3);
        for seq in 4..6 {
            view.apply(&header(Kind::Lease, seq, 100, 7), &1u32.to_le_bytes());
            view.apply(&header(Kind::Ack, seq, 0, 7), &[]);
        }
        assert_eq!((view.floor, view.lost_pending, view.lost_total), (9, 0, 4));
    }

    #[test]
    fn a_message_with_no_state_below_next_fresh_is_unknown_and_done_ones_are_not_lost() {
        let mut view = View::default();
        // Leases and acks of 0..6, but those of 2 were in a damaged stretch (skipped).
        for seq in (0..6).filter(|&seq| seq != 2) {
            view.apply(&header(Kind::Lease, seq, 100, 7), &1u32.to_le_bytes());
            view.apply(&header(Kind::Ack, seq, 0, 7), &[]);
        }
        assert_eq!((view.floor, view.next_fresh), (2, 6));
        assert_eq!(view.first_unknown(), Some(2));
        assert_eq!(view.depth(6), 1);
        assert_eq!(view.done_in(0, 6), 5);
        assert_eq!(view.not_done_in(0, 6, 8), vec![2]);
        // Lost from 2 to 6: only 2 counts, the others were done.
        view.apply(&header(Kind::Lost, 2, 0, 6), &[]);
        assert_eq!((view.floor, view.lost_total), (6, 1));
        assert_eq!(view.first_unknown(), None);
        // A lost range is not unknown either.
        view.apply(&header(Kind::Lost, 6, 0, 8), &[]);
        view.apply(&header(Kind::Lease, 8, 100, 7), &1u32.to_le_bytes());
        assert_eq!(view.first_unknown(), None);
        // But a number above it with no state is.
        view.apply(&header(Kind::Lease, 10, 100, 7), &1u32.to_le_bytes());
        assert_eq!(view.first_unknown(), Some(9));
    }

    #[test]
    fn a_nack_keeps_the_delivery_count_and_a_snapshot_restores_everything() {
        let mut view = View::default();
        view.apply(&header(Kind::Lease, 0, 100, 7), &3u32.to_le_bytes());
        view.apply(&header(Kind::Nack, 0, 500, 7), &[]);
        assert_eq!(
            view.entries.get(&0),
            Some(&Entry::Waiting {
                not_before: 500,
                count: 3
            })
        );
        let mut payload = Vec::new();
        ipc_core::encode_to_vec(&view, &mut payload, 1 << 20).unwrap();
        let mut restored = View::default();
        restored.apply(&header(Kind::Snapshot, 0, 0, 0), &payload);
        assert_eq!(restored.entries, view.entries);
        assert_eq!(restored.next_fresh, 1);
    }
}
