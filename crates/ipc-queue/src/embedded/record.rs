//! The record framing shared by segment files, the consumer-state log and the meta file.
//! Byte layout in `FORMAT.md`.

/// Every record starts with these four bytes.
pub(crate) const MAGIC: [u8; 4] = *b"IPQR";
/// Header length in bytes; the payload follows.
pub(crate) const HEADER_LEN: usize = 40;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message in a segment: `seq`, `time` = enqueue time, `aux` = expiry time (0 = never).
    Message = 1,
    /// The last record of a full segment: `seq` = first sequence number of the next segment.
    Seal = 2,
    /// Consumer state: `seq` leased by consumer `aux` until `time`; payload = delivery count.
    Lease = 10,
    /// Consumer state: `seq` is acknowledged.
    Ack = 11,
    /// Consumer state: `seq` is released, deliverable again from `time`.
    Nack = 12,
    /// Consumer state: `seq` went to the dead-letter queue; payload = reason.
    Dead = 13,
    /// Consumer state: sequence numbers `seq..aux` are lost to corruption (quarantined).
    Lost = 14,
    /// Consumer state: a snapshot written by compaction; payload = postcard `Snapshot`.
    Snapshot = 15,
    /// The queue's configuration; payload = postcard `QueueConfig`.
    Meta = 20,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Message,
            2 => Kind::Seal,
            10 => Kind::Lease,
            11 => Kind::Ack,
            12 => Kind::Nack,
            13 => Kind::Dead,
            14 => Kind::Lost,
            15 => Kind::Snapshot,
            20 => Kind::Meta,
            _ => return None,
        })
    }
}

/// A decoded record header; the payload is `buf[HEADER_LEN..len]` of the parsed slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
    pub(crate) time: u64,
    pub(crate) aux: u64,
    /// Payload length.
    pub(crate) payload_len: usize,
}

impl Header {
    /// Total record length: header plus payload.
    pub(crate) fn record_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }
}

/// The outcome of parsing at one position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole, valid record.
    Valid(Header),
    /// The bytes so far are a plausible start of a record, but it does not end within them.
    Incomplete,
    /// Not a valid record: the reason says why.
    Invalid(&'static str),
    /// Zeros where a record would start (as many as there are, up to a header): a
    /// segment's room written ahead, past the last record (`FORMAT.md`).
    Zero,
}

/// Parses the record at the start of `buf`. Payloads longer than `max_payload` are invalid,
/// checked before anything depends on the length.
pub(crate) fn parse(buf: &[u8], max_payload: usize) -> Parsed {
    let magic_len = buf.len().min(4);
    if !buf.is_empty() && is_zero(&buf[..buf.len().min(HEADER_LEN)]) {
        return Parsed::Zero;
    }
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Parsed::Invalid("bad magic");
    }
    if buf.len() < HEADER_LEN {
        return Parsed::Incomplete;
    }
    let payload_len = u32_at(buf, 8) as usize;
    if payload_len > max_payload {
        return Parsed::Invalid("length exceeds the record limit");
    }
    let total = HEADER_LEN + payload_len;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    if crc32c::crc32c(&buf[8..total]) != u32_at(buf, 4) {
        return Parsed::Invalid("checksum mismatch");
    }
    if buf[13..16] != [0, 0, 0] {
        return Parsed::Invalid("reserved bytes are not zero");
    }
    let Some(kind) = Kind::from_u8(buf[12]) else {
        return Parsed::Invalid("unknown record kind");
    };
    Parsed::Valid(Header {
        kind,
        seq: u64_at(buf, 16),
        time: u64_at(buf, 24),
        aux: u64_at(buf, 32),
        payload_len,
    })
}

/// Zeros where a record would start are the end of a segment's records only if this many
/// bytes from there (or all up to the file's end, if fewer) are zeros: anything else there
/// is damage (a record whose start was zeroed).
pub(crate) const ZERO_CHECK: usize = 4096;

/// How many bytes from the start of `buf` a parse that was [`Parsed::Incomplete`] needs:
/// the header, then the whole record.
pub(crate) fn needed(buf: &[u8]) -> usize {
    if buf.len() < HEADER_LEN {
        return HEADER_LEN;
    }
    HEADER_LEN + u32_at(buf, 8) as usize
}

/// Whether every byte of `buf` is zero (64 bytes at a time, which vectorises).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    chunks.all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Appends a record header with a zero checksum; the caller appends the payload and then
/// calls [`finish`] with the record's start.
pub(crate) fn begin(out: &mut Vec<u8>, kind: Kind, seq: u64, time: u64, aux: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]); // checksum, filled by `finish`
    out.extend_from_slice(&[0; 4]); // length, filled by `finish`
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&aux.to_le_bytes());
    start
}

/// Sets the sequence number of the record at `start` (before [`finish`]).
pub(crate) fn set_seq(out: &mut [u8], start: usize, seq: u64) {
    out[start + 16..start + 24].copy_from_slice(&seq.to_le_bytes());
}

/// Fills in the length and checksum of the record that starts at `start` and runs to the end
/// of `out`.
pub(crate) fn finish(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a whole record.
pub(crate) fn write(out: &mut Vec<u8>, kind: Kind, seq: u64, time: u64, aux: u64, payload: &[u8]) {
    let start = begin(out, kind, seq, time, aux);
    out.extend_from_slice(payload);
    finish(out, start);
}

/// The first position after `from` where a valid record starts, if any.
pub(crate) fn resync(buf: &[u8], from: usize, max_payload: usize) -> Option<usize> {
    let mut pos = from;
    while pos + HEADER_LEN <= buf.len() {
        let found = buf[pos..].windows(4).position(|w| w == MAGIC)?;
        pos += found;
        if let Parsed::Valid(_) = parse(&buf[pos..], max_payload) {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_every_cut_is_incomplete() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Message, 7, 1000, 0, b"hello");
        let header = match parse(&buf, 100) {
            Parsed::Valid(header) => header,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (header.kind, header.seq, header.time),
            (Kind::Message, 7, 1000)
        );
        assert_eq!(header.record_len(), buf.len());
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], 100), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_bit_flip_is_invalid_or_incomplete() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Message, 7, 1000, 3, b"hello world");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse(&bad, 1 << 20), Parsed::Valid(_)),
                "flip of bit {bit} went unnoticed"
            );
        }
        assert_eq!(
            parse(&buf, 4),
            Parsed::Invalid("length exceeds the record limit")
        );
    }

    #[test]
    fn zeros_parse_as_zeros_and_any_other_byte_does_not() {
        assert_eq!(parse(&[0; 100], 100), Parsed::Zero);
        assert_eq!(parse(&[0; 3], 100), Parsed::Zero);
        for at in 0..HEADER_LEN {
            let mut buf = [0u8; 100];
            buf[at] = 1;
            assert!(
                matches!(parse(&buf, 100), Parsed::Invalid(_)),
                "byte {at} set"
            );
        }
        // Only the header's bytes decide; the caller checks what follows.
        let mut buf = [0u8; 100];
        buf[HEADER_LEN] = 1;
        assert_eq!(parse(&buf, 100), Parsed::Zero);
        assert!(is_zero(&[0; 4097]) && !is_zero(&[&[0u8; 4096][..], &[1]].concat()));
        assert!(!is_zero(&[&[0u8; 63][..], &[1]].concat()) && is_zero(&[]));
    }

    #[test]
    fn resync_finds_the_next_valid_record() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Message, 1, 0, 0, b"first");
        let second = buf.len();
        write(&mut buf, Kind::Message, 2, 0, 0, b"second");
        buf[20] ^= 0xff;
        assert_eq!(resync(&buf, 1, 100), Some(second));
        assert_eq!(resync(&buf, second + 1, 100), None);
    }
}
