//! The `synced` watermark: how far the message log is known to be durable. Layout in
//! `FORMAT.md`. Read and written only under `sync.lock`, so a reader never sees half a
//! write.

use std::fs::File;
use std::os::unix::fs::FileExt;

use ipc_core::{Error, Result};

/// The file's length.
pub(crate) const LEN: usize = 32;
/// The length of the format without a checksum (earlier 0.1 builds).
const OLD_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"IPQW";

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
}

/// Reads the watermark: `Ok(Err(why))` if the file is damaged (wrong length, magic or
/// checksum, impossible numbers). A 16-byte file is the format of earlier 0.1 builds,
/// `(segment, offset)` without a checksum: it is read with `next_seq` at the most messages
/// that fit before the offset, so that a loss found against it never reuses a number
/// (it may skip some), and replaced by the current format at the next sync.
pub(crate) fn read(file: &File) -> Result<std::result::Result<Mark, String>> {
    let mut buf = [0u8; LEN + 1];
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
    if n == OLD_LEN {
        let (segment, offset) = (u64_at(0), u64_at(8));
        return Ok(check(Mark {
            segment,
            offset,
            next_seq: segment.saturating_add(offset / crate::record::HEADER_LEN as u64),
        }));
    }
    if n != LEN {
        return Ok(Err(format!("is {n} bytes instead of {LEN}")));
    }
    if buf[..4] != MAGIC {
        return Ok(Err("has a wrong magic".to_owned()));
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let computed = crc32c::crc32c(&buf[8..LEN]);
    if stored != computed {
        return Ok(Err(format!(
            "fails its checksum (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    Ok(check(Mark {
        segment: u64_at(8),
        offset: u64_at(16),
        next_seq: u64_at(24),
    }))
}

/// Every message record is at least a header long: a segment holds at most
/// `offset / HEADER_LEN` of them before `offset`. A mark claiming more is forged.
fn check(mark: Mark) -> std::result::Result<Mark, String> {
    let most = mark
        .segment
        .saturating_add(mark.offset / crate::record::HEADER_LEN as u64);
    if mark.next_seq < mark.segment || mark.next_seq > most || mark.next_seq >= 1 << 62 {
        return Err(format!(
            "claims message {} after offset {} of segment {}, which cannot be",
            mark.next_seq, mark.offset, mark.segment
        ));
    }
    Ok(mark)
}

/// The file's bytes for `mark`.
pub(crate) fn encode(mark: Mark) -> [u8; LEN] {
    let mut buf = [0u8; LEN];
    buf[..4].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&mark.segment.to_le_bytes());
    buf[16..24].copy_from_slice(&mark.offset.to_le_bytes());
    buf[24..32].copy_from_slice(&mark.next_seq.to_le_bytes());
    let crc = crc32c::crc32c(&buf[8..LEN]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Writes the watermark (one `pwrite` of 32 bytes at offset 0).
pub(crate) fn write(file: &File, mark: Mark) -> Result<()> {
    file.write_all_at(&encode(mark), 0)
        .map_err(|err| Error::io("write sync watermark", err))
}

/// Writes the watermark over a damaged file, cutting anything after it.
pub(crate) fn replace(file: &File, mark: Mark) -> Result<()> {
    write(file, mark)?;
    file.set_len(LEN as u64)
        .map_err(|err| Error::io("truncate sync watermark", err))
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
        let bytes = encode(mark);
        let dir = std::env::temp_dir().join(format!("ipcq-mark-{}", fastrand::u64(..)));
        let file = crate::fsx::open_rw(&dir).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        assert_eq!(read(&file).unwrap(), Ok(mark));
        for bit in 0..LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            file.write_all_at(&damaged, 0).unwrap();
            assert!(read(&file).unwrap().is_err(), "bit {bit}");
        }
        // Checksummed but impossible: more messages than fit before the offset.
        let forged = encode(Mark {
            segment: 0,
            offset: 400,
            next_seq: 11,
        });
        file.write_all_at(&forged, 0).unwrap();
        assert!(read(&file).unwrap().unwrap_err().contains("cannot be"));
        // The old format: read with the most messages that fit before the offset.
        file.write_all_at(&[0u8; LEN], 0).unwrap();
        file.write_all_at(&3000u64.to_le_bytes(), 0).unwrap();
        file.write_all_at(&400u64.to_le_bytes(), 8).unwrap();
        file.set_len(16).unwrap();
        assert_eq!(
            read(&file).unwrap(),
            Ok(Mark {
                segment: 3000,
                offset: 400,
                next_seq: 3010
            })
        );
        file.set_len(17).unwrap();
        assert!(read(&file).unwrap().unwrap_err().contains("17 bytes"));
        std::fs::remove_file(&dir).unwrap();
    }
}
