//! The `synced` watermark: how far the message log is known to be durable. Layout in
//! `FORMAT.md`. Read and written only under `sync.lock`, so a reader never sees half a
//! write.

use std::fs::File;
use std::os::unix::fs::FileExt;

use ipc_core::{Error, Result};

/// The file's length.
pub(crate) const LEN: usize = 32;
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
/// checksum; a 16-byte file is the format before the checksum).
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
    if n == 16 {
        return Ok(Err(
            "is 16 bytes, the format without a checksum or sequence number".to_owned(),
        ));
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
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mark = Mark {
        segment: u64_at(8),
        offset: u64_at(16),
        next_seq: u64_at(24),
    };
    // Every message record is longer than a header: a segment holds at most
    // `offset / HEADER_LEN` of them before `offset`. A mark claiming more is forged.
    let most = mark
        .segment
        .saturating_add(mark.offset / crate::record::HEADER_LEN as u64);
    if mark.next_seq < mark.segment || mark.next_seq > most || mark.next_seq >= 1 << 62 {
        return Ok(Err(format!(
            "claims message {} after offset {} of segment {}, which cannot be",
            mark.next_seq, mark.offset, mark.segment
        )));
    }
    Ok(Ok(mark))
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
        file.set_len(16).unwrap();
        assert!(read(&file).unwrap().unwrap_err().contains("16 bytes"));
        std::fs::remove_file(&dir).unwrap();
    }
}
