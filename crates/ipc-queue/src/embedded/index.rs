//! The consumer side of the log: an index from sequence number to record position, built
//! by scanning segments, with corruption found on the way reported and quarantined.

use std::collections::BTreeMap;
use std::fs::File;
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};

use super::appender::Appender;
use super::fsx;
use super::fsx::lock;
use super::layout::Layout;
use super::record::{self, HEADER_LEN, Header, Kind, Parsed};
use super::repair::{self, Bad, examine_bad};
use super::state::View;

/// The first read when scanning (segments usually end in zeros written ahead); reads
/// double up to `SCAN_CHUNK`, and take at least one whole record.
const FIRST_SCAN: usize = 64 << 10;
const SCAN_CHUNK: usize = 1 << 20;
const UNSEALED_CHECK: Duration = Duration::from_millis(50);

/// Damage found while scanning: messages `from..to` are lost (possibly none, when only a
/// seal or a torn tail was damaged).
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) from: u64,
    pub(crate) to: u64,
    /// A torn tail (a crash artefact, truncated) rather than corruption.
    pub(crate) torn: bool,
    pub(crate) what: String,
}

struct SegIndex {
    /// Open while it is the segment being scanned; older segments are opened on demand
    /// (one at a time, see `read_cache`), so a long backlog does not hold a descriptor per
    /// segment.
    file: Option<File>,
    /// `(seq, offset)` of every message record, ascending.
    offsets: Vec<(u64, u64)>,
    seal: Option<u64>,
}

pub(crate) struct LogIndex {
    layout: Layout,
    max_payload: usize,
    append_lock: std::sync::Arc<File>,
    segs: BTreeMap<u64, SegIndex>,
    cur: u64,
    end: u64,
    next_seq: u64,
    buf: Vec<u8>,
    unsealed_checked: Option<Instant>,
    read_cache: Option<(u64, File)>,
    /// Whether a log found shorter than the watermark is repaired (a consumer) or only
    /// left for the next consumer or producer to repair and report (`Queue::stats`).
    repairs: bool,
    /// Where (segment, offset) zeros were last found to end the records: a look at one
    /// header there tells whether anything was appended since.
    zeros_at: Option<(u64, u64)>,
}

enum Step {
    /// Read on; the next read must take at least this many bytes.
    Continue(usize),
    /// Zeros written ahead: the end of the records.
    End,
    /// Offset, and whether the record there is whole but misplaced (wrong kind or sequence).
    Bad(u64, bool),
}

impl LogIndex {
    /// Opens the index at the segment holding `floor`. Also returns the segments entirely
    /// below `floor` (safe to delete once the state is durable).
    pub(crate) fn open(
        layout: &Layout,
        max_payload: usize,
        floor: u64,
        findings: &mut Vec<Finding>,
    ) -> Result<(LogIndex, Vec<u64>)> {
        let mut firsts = fsx::list_segments(&layout.segments())?;
        if firsts.is_empty() {
            // Every segment is gone: the log starts again after the last synced message.
            if let Some(note) = Appender::repair_tail(layout, max_payload)? {
                findings.push(Finding {
                    from: floor,
                    to: floor,
                    torn: false,
                    what: note,
                });
            }
            firsts = fsx::list_segments(&layout.segments())?;
        }
        let Some(&oldest) = firsts.first() else {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!("queue {} has no segment files", layout.root().display()),
            ));
        };
        let start = firsts
            .iter()
            .copied()
            .rfind(|&first| first <= floor)
            .unwrap_or(oldest);
        if start > floor {
            findings.push(Finding {
                from: floor,
                to: start,
                torn: false,
                what: format!(
                    "the segment holding message {floor} is missing (the oldest one left starts at {start})"
                ),
            });
        }
        let stale = firsts
            .iter()
            .copied()
            .filter(|&first| first < start)
            .collect();
        let path = layout.segments().join(fsx::segment_name(start));
        let file = fsx::open_existing(&path)
            .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
        let mut segs = BTreeMap::new();
        segs.insert(
            start,
            SegIndex {
                file: Some(file),
                offsets: Vec::new(),
                seal: None,
            },
        );
        let index = LogIndex {
            layout: layout.clone(),
            max_payload,
            append_lock: fsx::open_lock(&layout.append_lock())?,
            segs,
            cur: start,
            end: 0,
            next_seq: start,
            buf: Vec::new(),
            unsealed_checked: None,
            read_cache: None,
            repairs: true,
            zeros_at: None,
        };
        Ok((index, stale))
    }

    /// Leaves the repairs that need a report to consumers (for a look from outside).
    pub(crate) fn without_repairs(mut self) -> LogIndex {
        self.repairs = false;
        self
    }

    /// One past the highest sequence number indexed.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Indexes records appended since the last call.
    pub(crate) fn refresh(&mut self, view: &View, findings: &mut Vec<Finding>) -> Result<()> {
        let mut want = if self.zeros_at == Some((self.cur, self.end)) {
            HEADER_LEN
        } else {
            FIRST_SCAN
        };
        loop {
            let cur = self.cur;
            let Some(seg) = self.segs.get(&cur) else {
                return Err(Error::new(
                    ErrorKind::Other,
                    "segment index lost its current segment",
                ));
            };
            if let Some(next) = seg.seal {
                if !self.advance_to(next, view, findings)? {
                    return Ok(());
                }
                continue;
            }
            let Some(file) = seg.file.as_ref() else {
                return Err(Error::new(ErrorKind::Other, "current segment is not open"));
            };
            let size = fsx::file_len(file)?;
            if self.end < size {
                let len = ((size - self.end) as usize).min(want);
                let mut buf = std::mem::take(&mut self.buf);
                let step = fsx::read_at(file, self.end, len, &mut buf)
                    .map(|n| self.scan(&buf[..n], size, findings));
                self.buf = buf;
                match step? {
                    Step::Continue(need) => {
                        want = (want * 2).clamp(FIRST_SCAN, SCAN_CHUNK).max(need);
                        continue;
                    }
                    Step::Bad(offset, misplaced) => {
                        self.bad(offset, misplaced, view, findings)?;
                        continue;
                    }
                    Step::End => self.zeros_at = Some((self.cur, self.end)),
                }
            }
            if self.check_unsealed_end(view, findings)? {
                continue;
            }
            return Ok(());
        }
    }

    fn scan(&mut self, buf: &[u8], size: u64, findings: &mut Vec<Finding>) -> Step {
        let mut pos = 0;
        let cur = self.cur;
        let more = self.end + (buf.len() as u64) < size;
        let checked = self.zeros_at == Some((cur, self.end));
        let mut step = Step::Continue(0);
        while pos < buf.len() {
            match record::parse(&buf[pos..], self.max_payload) {
                Parsed::Valid(header) if matches!(header.kind, Kind::Message | Kind::Seal) => {
                    // A seal always names a later segment (a sealed segment is never empty).
                    if header.seq < self.next_seq
                        || (header.kind == Kind::Seal && header.seq <= cur)
                    {
                        step = Step::Bad(self.end + pos as u64, true);
                        break;
                    }
                    if header.seq > self.next_seq {
                        findings.push(Finding {
                            from: self.next_seq,
                            to: header.seq,
                            torn: false,
                            what: if header.kind == Kind::Seal {
                                format!(
                                    "segment {cur} is shorter than what was synced: it ends before message {} and was sealed at message {}",
                                    self.next_seq, header.seq
                                )
                            } else {
                                format!(
                                    "segment {cur} skips from message {} to {}",
                                    self.next_seq, header.seq
                                )
                            },
                        });
                    }
                    let Some(seg) = self.segs.get_mut(&cur) else {
                        break;
                    };
                    if header.kind == Kind::Seal {
                        seg.seal = Some(header.seq);
                        self.next_seq = header.seq;
                        pos += header.record_len();
                        break;
                    }
                    seg.offsets.push((header.seq, self.end + pos as u64));
                    self.next_seq = header.seq.saturating_add(1);
                    pos += header.record_len();
                }
                Parsed::Incomplete if more => {
                    step = Step::Continue(record::needed(&buf[pos..]));
                    break;
                }
                Parsed::Zero if pos == 0 && checked => {
                    // The zeros checked last time, still there: nothing was appended.
                    step = Step::End;
                    break;
                }
                Parsed::Zero if more && buf.len() - pos < record::ZERO_CHECK => {
                    // Look at the zeros again with enough bytes after them.
                    step = Step::Continue(record::ZERO_CHECK);
                    break;
                }
                Parsed::Zero => {
                    let check = &buf[pos..buf.len().min(pos + record::ZERO_CHECK)];
                    step = if record::is_zero(check) {
                        Step::End
                    } else {
                        Step::Bad(self.end + pos as u64, false)
                    };
                    break;
                }
                parsed => {
                    let misplaced = matches!(parsed, Parsed::Valid(_));
                    step = Step::Bad(self.end + pos as u64, misplaced);
                    break;
                }
            }
        }
        self.end += pos as u64;
        step
    }

    /// At the end of a segment without a seal: if a later segment exists, this one lost its
    /// end (it was truncated); if none does, the segment must reach the `synced` watermark,
    /// else its synced end was lost. Checked at most every `UNSEALED_CHECK`, as it lists
    /// the directory. Returns whether to scan on (a repair sealed the segment).
    fn check_unsealed_end(&mut self, view: &View, findings: &mut Vec<Finding>) -> Result<bool> {
        if self
            .unsealed_checked
            .is_some_and(|at| at.elapsed() < UNSEALED_CHECK)
        {
            return Ok(false);
        }
        self.unsealed_checked = Some(Instant::now());
        let cur = self.cur;
        // The watermark before the listing and the length: it only grows, and whatever it
        // covers was in the files before it was written.
        let mark = read_mark(&self.layout)?;
        let later = fsx::list_segments(&self.layout.segments())?
            .into_iter()
            .find(|&first| first > cur);
        let Some(later) = later else {
            let Some(file) = self.segs.get(&cur).and_then(|seg| seg.file.as_ref()) else {
                return Ok(false);
            };
            // The records end here, at zeros written ahead or at the file's end.
            let file_len = fsx::file_len(file)?;
            let len = self.end.min(file_len);
            let behind = match mark {
                Ok(mark) => (cur, len) < mark.position(),
                Err(_) => true,
            };
            if !behind || !self.repairs {
                return Ok(false);
            }
            if file_len > self.end && mark.is_ok() {
                // Zeros where the watermark says synced records lie: examined (and the
                // records after them found, or the zeros cut) under the append lock.
                let before = self.end;
                self.bad(self.end, false, view, findings)?;
                let now_len = match self.segs.get(&cur).and_then(|seg| seg.file.as_ref()) {
                    Some(file) => fsx::file_len(file)?,
                    None => 0,
                };
                if self.end != before || now_len != file_len {
                    self.unsealed_checked = None;
                    return Ok(true);
                }
            }
            let Some(file) = self.segs.get(&cur).and_then(|seg| seg.file.as_ref()) else {
                return Ok(false);
            };
            // Shorter than what was synced (or the watermark is damaged): let the log be
            // repaired as a producer would, then scan what the repair wrote.
            if let Some(note) = Appender::repair_tail(&self.layout, self.max_payload)? {
                findings.push(Finding {
                    from: self.next_seq,
                    to: self.next_seq,
                    torn: false,
                    what: note,
                });
                return Ok(false);
            }
            self.unsealed_checked = None;
            return Ok(fsx::file_len(file)? < self.end || repair::data_at(file, self.end)?);
        };
        // A writer seals a segment before it creates the next: if this one grew meanwhile,
        // the seal may be there now.
        if let Some(file) = self.segs.get(&cur).and_then(|seg| seg.file.as_ref())
            && repair::data_at(file, self.end)?
        {
            self.unsealed_checked = None;
            return Ok(true);
        }
        let from = self.next_seq;
        if !view.knows_lost(from, later.max(from.saturating_add(1))) {
            findings.push(Finding {
                from,
                to: later,
                torn: false,
                what: format!(
                    "segment {cur} ends at offset {} without a seal, but segment {later} follows",
                    self.end
                ),
            });
        }
        if let Some(seg) = self.segs.get_mut(&cur) {
            seg.seal = Some(later);
        }
        self.next_seq = later;
        Ok(false)
    }

    /// Moves to segment `next` after a seal. False if it does not exist yet.
    fn advance_to(&mut self, next: u64, view: &View, findings: &mut Vec<Finding>) -> Result<bool> {
        let path = self.layout.segments().join(fsx::segment_name(next));
        let (first, file) = match fsx::open_existing(&path) {
            Ok(file) => (next, file),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let firsts = fsx::list_segments(&self.layout.segments())?;
                if firsts.contains(&next) {
                    // Created (by the writer that sealed, which holds the append lock while
                    // this reader does not) between the open and the listing: try again.
                    return Ok(true);
                }
                let later = firsts.into_iter().find(|&first| first > next);
                let Some(later) = later else {
                    // Not created yet, or deleted with messages that were synced: the
                    // watermark tells. Then the log is repaired as a producer would (it
                    // starts again after the lost messages), and the gap is reported below.
                    let deleted = match read_mark(&self.layout)? {
                        Ok(mark) => mark.next_seq > next,
                        Err(_) => true,
                    };
                    if deleted && self.repairs {
                        if let Some(note) = Appender::repair_tail(&self.layout, self.max_payload)? {
                            findings.push(Finding {
                                from: next,
                                to: next,
                                torn: false,
                                what: note,
                            });
                        }
                        return Ok(fsx::list_segments(&self.layout.segments())?
                            .into_iter()
                            .any(|first| first >= next));
                    }
                    return Ok(false);
                };
                if !view.knows_lost(next, later) {
                    findings.push(Finding {
                        from: next,
                        to: later,
                        torn: false,
                        what: format!("segment {next} is missing"),
                    });
                }
                let path = self.layout.segments().join(fsx::segment_name(later));
                let file = fsx::open_existing(&path)
                    .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
                (later, file)
            }
            Err(err) => return Err(Error::io(format!("open {}", path.display()), err)),
        };
        self.segs.insert(
            first,
            SegIndex {
                file: Some(file),
                offsets: Vec::new(),
                seal: None,
            },
        );
        if let Some(old) = self.segs.get_mut(&self.cur) {
            old.file = None;
        }
        self.cur = first;
        self.end = 0;
        self.next_seq = first;
        Ok(true)
    }

    fn bad(
        &mut self,
        offset: u64,
        misplaced: bool,
        view: &View,
        findings: &mut Vec<Finding>,
    ) -> Result<()> {
        let _guard = lock(&self.append_lock, "queue append lock")?;
        let cur = self.cur;
        let Some(file) = self.segs.get(&cur).and_then(|seg| seg.file.as_ref()) else {
            return Ok(());
        };
        let bad = examine_bad(
            &self.layout,
            file,
            cur,
            offset,
            misplaced,
            self.max_payload,
            &mut self.buf,
        )?;
        let (until, to) = match bad {
            Bad::ValidNow => return Ok(()),
            Bad::TornTail => {
                // The cut bytes may have been synced: compare with the watermark at once.
                self.unsealed_checked = None;
                findings.push(Finding {
                    from: self.next_seq,
                    to: self.next_seq,
                    torn: true,
                    what: format!("torn tail of segment {cur} at offset {offset} truncated"),
                });
                return Ok(());
            }
            Bad::Resync { at, seq } => (at, seq),
            Bad::LaterSegment(later) => (fsx::file_len(file)?, later),
        };
        let from = self.next_seq;
        if !view.knows_lost(from, to.max(from.saturating_add(1))) || to <= from {
            let what = format!(
                "segment {cur}: {} damaged bytes at offset {offset}; messages {from}..{to} missing",
                until - offset
            );
            let path = fsx::quarantine(
                self.layout.root(),
                &format!("corrupt-{cur:020}-{offset}"),
                file,
                offset,
                until,
                &what,
            )?;
            findings.push(Finding {
                from,
                to,
                torn: false,
                what: format!("{what}; damaged bytes copied to {}", path.display()),
            });
        }
        match bad {
            Bad::LaterSegment(later) => {
                if let Some(seg) = self.segs.get_mut(&cur) {
                    seg.seal = Some(later);
                }
                self.end = until;
            }
            _ => {
                self.end = until;
                self.next_seq = to.max(from);
            }
        }
        Ok(())
    }

    /// Reads the message `seq` into `buf` (header and payload). `None` if the index has no
    /// record for it (lost, or not yet scanned).
    pub(crate) fn read(&mut self, seq: u64, buf: &mut Vec<u8>) -> Result<Option<Header>> {
        let Some((&first, seg)) = self.segs.range(..=seq).next_back() else {
            return Ok(None);
        };
        let Ok(i) = seg.offsets.binary_search_by_key(&seq, |&(s, _)| s) else {
            return Ok(None);
        };
        let offset = seg.offsets[i].1;
        let file = match &seg.file {
            Some(file) => file,
            None => {
                if self
                    .read_cache
                    .as_ref()
                    .is_none_or(|(cached, _)| *cached != first)
                {
                    let path = self.layout.segments().join(fsx::segment_name(first));
                    let file = match fsx::open_existing(&path) {
                        Ok(file) => file,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(err) => {
                            return Err(Error::io(format!("open {}", path.display()), err));
                        }
                    };
                    self.read_cache = Some((first, file));
                }
                match &self.read_cache {
                    Some((_, file)) => file,
                    None => return Ok(None),
                }
            }
        };
        let mut want = HEADER_LEN + 1024;
        loop {
            let n = fsx::read_at(file, offset, want, buf)?;
            match record::parse(&buf[..n], self.max_payload) {
                Parsed::Valid(header) if header.kind == Kind::Message && header.seq == seq => {
                    buf.truncate(header.record_len());
                    return Ok(Some(header));
                }
                Parsed::Incomplete if n == want => {
                    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
                    want = HEADER_LEN + len;
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Corrupted,
                        format!(
                            "message {seq} at offset {offset} of segment {first} changed on disk after it was checked: {other:?}"
                        ),
                    ));
                }
            }
        }
    }

    /// Drops sealed segments entirely below `floor` from the index; returns their first
    /// sequence numbers for deletion.
    pub(crate) fn prune(&mut self, floor: u64) -> Vec<u64> {
        let mut done = Vec::new();
        for (&first, seg) in &self.segs {
            match seg.seal {
                Some(next) if next <= floor && first != self.cur => done.push(first),
                _ => break,
            }
        }
        for first in &done {
            self.segs.remove(first);
        }
        done
    }
}

/// Reads the watermark under the sync lock: `Err(why)` if it is damaged.
fn read_mark(layout: &Layout) -> Result<std::result::Result<repair::Mark, String>> {
    let sync_lock = fsx::open_lock(&layout.sync_lock())?;
    let _guard = lock(&sync_lock, "queue sync lock")?;
    let synced = fsx::open_rw(&layout.synced())?;
    repair::read_mark(&synced)
}
