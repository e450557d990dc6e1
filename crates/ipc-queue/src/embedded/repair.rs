//! Tail repair: the `synced` watermark (how far the message log is known to be durable;
//! layout in `FORMAT.md`, written only under `sync.lock` and checksummed, so a reader
//! without the lock that sees half a write knows it), and what a bad record found while catching up with the tail turns out
//! to be ([`examine_bad`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

use ipc_core::{Error, Result};

use super::fsx;
use super::layout::Layout;
use super::record::{self, HEADER_LEN, Parsed};

/// The file's length.
pub(crate) const MARK_LEN: usize = 32;
/// The length of the format without a checksum (earlier 0.1 builds).
const OLD_MARK_LEN: usize = 16;
const MARK_MAGIC: [u8; 4] = *b"IPQW";

/// Everything before `offset` of segment `segment` was covered by an `fdatasync`, and the
/// first message after it would have sequence number `next_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) next_seq: u64,
}

impl Mark {
    /// The position in the log, comparable with `(segment, offset)` tuples.
    pub(crate) fn position(&self) -> (u64, u64) {
        (self.segment, self.offset)
    }

    /// Whether synced bytes of segment `segment` lie past `offset`.
    pub(crate) fn covers_past(&self, segment: u64, offset: u64) -> bool {
        self.segment == segment && self.offset > offset
    }
}

/// Reads the watermark: `Ok(Err(why))` if the file is damaged (wrong length, magic or
/// checksum, impossible numbers). A 16-byte file is the format of earlier 0.1 builds,
/// `(segment, offset)` without a checksum: it is read with `next_seq` at the most messages
/// that fit before the offset, so that a loss found against it never reuses a number
/// (it may skip some), and replaced by the current format at the next sync.
pub(crate) fn read_mark(file: &File) -> Result<std::result::Result<Mark, String>> {
    let mut buf = [0u8; MARK_LEN + 1];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io("read sync watermark", err)),
        }
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    if n == OLD_MARK_LEN {
        let (segment, offset) = (u64_at(0), u64_at(8));
        return Ok(check_mark(Mark {
            segment,
            offset,
            next_seq: segment.saturating_add(offset / HEADER_LEN as u64),
        }));
    }
    if n != MARK_LEN {
        return Ok(Err(format!("is {n} bytes instead of {MARK_LEN}")));
    }
    let mut mark = [0u8; MARK_LEN];
    mark.copy_from_slice(&buf[..MARK_LEN]);
    Ok(decode_mark(&mark))
}

/// Decodes the current (32-byte, checksummed) format: `Err(why)` if it is damaged.
pub(crate) fn decode_mark(buf: &[u8; MARK_LEN]) -> std::result::Result<Mark, String> {
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    if buf[..4] != MARK_MAGIC {
        return Err("has a wrong magic".to_owned());
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let computed = crc32c::crc32c(&buf[8..MARK_LEN]);
    if stored != computed {
        return Err(format!(
            "fails its checksum (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    check_mark(Mark {
        segment: u64_at(8),
        offset: u64_at(16),
        next_seq: u64_at(24),
    })
}

/// Every message record is at least a header long: a segment holds at most
/// `offset / HEADER_LEN` of them before `offset`. A mark claiming more is forged.
fn check_mark(mark: Mark) -> std::result::Result<Mark, String> {
    let most = mark.segment.saturating_add(mark.offset / HEADER_LEN as u64);
    if mark.next_seq < mark.segment || mark.next_seq > most || mark.next_seq >= 1 << 62 {
        return Err(format!(
            "claims message {} after offset {} of segment {}, which cannot be",
            mark.next_seq, mark.offset, mark.segment
        ));
    }
    Ok(mark)
}

/// The file's bytes for `mark`.
pub(crate) fn encode_mark(mark: Mark) -> [u8; MARK_LEN] {
    let mut buf = [0u8; MARK_LEN];
    buf[..4].copy_from_slice(&MARK_MAGIC);
    buf[8..16].copy_from_slice(&mark.segment.to_le_bytes());
    buf[16..24].copy_from_slice(&mark.offset.to_le_bytes());
    buf[24..32].copy_from_slice(&mark.next_seq.to_le_bytes());
    let crc = crc32c::crc32c(&buf[8..MARK_LEN]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Writes the watermark (one `pwrite` of 32 bytes at offset 0).
pub(crate) fn write_mark(file: &File, mark: Mark) -> Result<()> {
    file.write_all_at(&encode_mark(mark), 0)
        .map_err(|err| Error::io("write sync watermark", err))
}

/// Writes the watermark over a damaged file, cutting anything after it.
pub(crate) fn replace_mark(file: &File, mark: Mark) -> Result<()> {
    write_mark(file, mark)?;
    file.set_len(MARK_LEN as u64)
        .map_err(|err| Error::io("truncate sync watermark", err))
}

/// What a bad record turned out to be.
pub(crate) enum Bad {
    /// A write finished meanwhile: the record is valid now.
    ValidNow,
    /// Damaged bytes up to offset `at`, a valid record with sequence number `seq` there:
    /// corruption in the middle.
    Resync { at: u64, seq: u64 },
    /// No valid record after it, but a later segment exists: this segment's end is damaged.
    LaterSegment(u64),
    /// No valid record after it in the last segment: a torn write, now quarantined and
    /// truncated.
    TornTail,
}

/// Examines the invalid (or, with `misplaced`, whole but out-of-place) record at `offset`
/// of segment `seg_first` (the caller holds the
/// append lock, so no write is in progress). Truncates a torn tail, keeping a copy in
/// `quarantine/`.
pub(crate) fn examine_bad(
    layout: &Layout,
    seg: &File,
    seg_first: u64,
    offset: u64,
    misplaced: bool,
    max_payload: usize,
    buf: &mut Vec<u8>,
) -> Result<Bad> {
    let size = fsx::file_len(seg)?;
    if offset >= size {
        return Ok(Bad::ValidNow);
    }
    let n = fsx::read_at(
        seg,
        offset,
        (HEADER_LEN + max_payload).max(record::ZERO_CHECK),
        buf,
    )?;
    // A record that was incomplete or invalid may have been a write in progress; one that
    // is whole but misplaced stays misplaced.
    if !misplaced {
        match record::parse(&buf[..n], max_payload) {
            Parsed::Valid(_) => return Ok(Bad::ValidNow),
            // Zeros written ahead: the end of the records, unless the watermark says synced
            // records lie past them.
            Parsed::Zero
                if record::is_zero(&buf[..n.min(record::ZERO_CHECK)])
                    && !zeros_behind_mark(layout, seg_first, offset)? =>
            {
                return Ok(Bad::ValidNow);
            }
            _ => {}
        }
    }
    if let Some((at, seq)) = find_valid_record(seg, offset + 1, size, max_payload, buf)? {
        return Ok(Bad::Resync { at, seq });
    }
    let later = fsx::list_segments(&layout.segments())?
        .into_iter()
        .find(|&first| first > seg_first);
    if let Some(later) = later {
        return Ok(Bad::LaterSegment(later));
    }
    // The zeros written ahead after the torn bytes are no evidence: not copied.
    let torn_end = data_end(seg, offset, size, buf)?.max(offset + 1);
    fsx::quarantine(
        layout.root(),
        &format!("torn-{seg_first:020}-{offset}"),
        seg,
        offset,
        torn_end,
        &format!(
            "torn tail of segment {seg_first}: {} bytes from offset {offset} did not form a valid record; truncated",
            torn_end - offset
        ),
    )?;
    seg.set_len(offset)
        .map_err(|err| Error::io(format!("truncate segment {seg_first} to {offset}"), err))?;
    // The watermark is left alone: if it claims the cut bytes, they had been synced, and
    // the writer's check against it (`check_watermark`) turns them into a reported loss.
    Ok(Bad::TornTail)
}

/// Whether the watermark says that synced records lie past `offset` of segment
/// `seg_first`, where zeros are (then the zeros are damage, not the end of the records).
/// A damaged watermark says nothing here; the checks against it report it.
pub(crate) fn zeros_behind_mark(layout: &Layout, seg_first: u64, offset: u64) -> Result<bool> {
    let synced = fsx::open_rw(&layout.synced())?;
    Ok(read_mark(&synced)?.is_ok_and(|mark| mark.covers_past(seg_first, offset)))
}

/// Whether anything but zeros (or the file's end) is at `offset` of `seg`: the start of a
/// record rather than zeros written ahead.
pub(crate) fn data_at(seg: &File, offset: u64) -> Result<bool> {
    let mut header = [0u8; HEADER_LEN];
    let n = fsx::read_at_into(seg, offset, &mut header)?;
    Ok(!record::is_zero(&header[..n]))
}

/// The end of the last byte that is not zero in `from..size` of `seg` (`from` if none).
fn data_end(seg: &File, from: u64, size: u64, buf: &mut Vec<u8>) -> Result<u64> {
    const WINDOW: usize = 1 << 16;
    let mut end = from;
    let mut pos = from;
    while pos < size {
        let n = fsx::read_at(seg, pos, WINDOW.min((size - pos) as usize), buf)?;
        if n == 0 {
            break;
        }
        if let Some(last) = buf[..n].iter().rposition(|&b| b != 0) {
            end = pos + last as u64 + 1;
        }
        pos += n as u64;
    }
    Ok(end)
}

/// The first valid record at or after `from` (before `size`) and its sequence number,
/// reading a window at a time so that memory stays bounded by the window plus one record.
fn find_valid_record(
    seg: &File,
    from: u64,
    size: u64,
    max_payload: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<(u64, u64)>> {
    const WINDOW: usize = 1 << 20;
    let mut record = Vec::new();
    let mut pos = from;
    while pos < size {
        let n = fsx::read_at(seg, pos, WINDOW, buf)?;
        let window = &buf[..n];
        let mut start = 0;
        while let Some(found) = window[start..].windows(4).position(|w| w == record::MAGIC) {
            let at = start + found;
            let parsed = match record::parse(&window[at..], max_payload) {
                Parsed::Incomplete if pos + (n as u64) < size => {
                    // The candidate runs past the window: read it whole (bounded by the limit).
                    let m =
                        fsx::read_at(seg, pos + at as u64, HEADER_LEN + max_payload, &mut record)?;
                    record::parse(&record[..m], max_payload)
                }
                parsed => parsed,
            };
            if let Parsed::Valid(header) = parsed {
                return Ok(Some((pos + at as u64, header.seq)));
            }
            start = at + 1;
        }
        if n < WINDOW {
            break;
        }
        // Overlap by three bytes: a magic may straddle the windows.
        pos += (n - 3) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_any_flipped_bit_is_detected() {
        let mark = Mark {
            segment: 3000,
            offset: 65_536,
            next_seq: 4044,
        };
        let bytes = encode_mark(mark);
        let dir = std::env::temp_dir().join(format!("ipcq-mark-{}", fastrand::u64(..)));
        let file = fsx::open_rw(&dir).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        assert_eq!(read_mark(&file).unwrap(), Ok(mark));
        for bit in 0..MARK_LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            file.write_all_at(&damaged, 0).unwrap();
            assert!(read_mark(&file).unwrap().is_err(), "bit {bit}");
        }
        // Checksummed but impossible: more messages than fit before the offset.
        let forged = encode_mark(Mark {
            segment: 0,
            offset: 400,
            next_seq: 11,
        });
        file.write_all_at(&forged, 0).unwrap();
        assert!(read_mark(&file).unwrap().unwrap_err().contains("cannot be"));
        // The old format: read with the most messages that fit before the offset.
        file.write_all_at(&[0u8; MARK_LEN], 0).unwrap();
        file.write_all_at(&3000u64.to_le_bytes(), 0).unwrap();
        file.write_all_at(&400u64.to_le_bytes(), 8).unwrap();
        file.set_len(16).unwrap();
        assert_eq!(
            read_mark(&file).unwrap(),
            Ok(Mark {
                segment: 3000,
                offset: 400,
                next_seq: 3010
            })
        );
        file.set_len(17).unwrap();
        assert!(read_mark(&file).unwrap().unwrap_err().contains("17 bytes"));
        std::fs::remove_file(&dir).unwrap();
    }
}
