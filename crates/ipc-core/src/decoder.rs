//! An incremental frame decoder for byte streams.

use crate::error::{Error, ErrorKind, Result};
use crate::frame::{Frame, FrameHeader, FrameKind, HEADER_LEN, Limits, check_prefix};

/// The length prefix of each message in a [`FrameKind::Batch`] payload.
pub(crate) const BATCH_ENTRY_PREFIX: usize = 2;

/// How much spare room [`FrameDecoder::read_buf`] offers at least.
const READ_CHUNK: usize = 16 * 1024;

/// Splits a byte stream into frames. Input may arrive split at any byte.
///
/// Memory stays bounded by what the peer actually sent: a header is validated (magic,
/// version, kind, length against the limit) before any payload byte is buffered, and
/// buffer space grows with received bytes, never with a length the peer merely claims.
///
/// A [`Batch`](FrameKind::Batch) frame is taken apart once it has arrived whole: each of
/// its messages comes out as a [`Data`](FrameKind::Data) frame of its own, with id 0, and
/// its entries must fill its payload exactly.
///
/// After an error the decoder stays failed: a stream that lost sync cannot be trusted again.
///
/// ```
/// use ipc_core::{FrameDecoder, FrameKind, Limits};
///
/// let limits = Limits::default();
/// let mut wire = Vec::new();
/// ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, "one", &limits)?;
/// ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, "two", &limits)?;
///
/// let mut decoder = FrameDecoder::new(limits);
/// let mut seen = Vec::new();
/// for byte in &wire {
///     decoder.push(std::slice::from_ref(byte));
///     while let Some(frame) = decoder.next_frame()? {
///         seen.push(frame.decode::<&str>()?.to_owned());
///     }
/// }
/// assert_eq!(seen, ["one", "two"]);
/// decoder.finish()?; // nothing left half-read
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    /// Received bytes live in `buf[start..end]`; `buf[end..]` is spare room to read into.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes at `start` that are the rest of a batch frame being handed out: whole
    /// entries (length prefix and message), already received.
    batch_left: usize,
    failed: Option<ErrorKind>,
}

impl FrameDecoder {
    /// A decoder that rejects frames over `limits`.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            end: 0,
            batch_left: 0,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits, for example after the handshake agreed on them.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes received but not yet returned as frames.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Copies `bytes` into the decoder.
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Spare room to read into directly, for example `stream.read(decoder.read_buf())`;
    /// follow it with [`commit`](FrameDecoder::commit) of the number of bytes read.
    /// The room is at least 16 KiB. While a large frame arrives it grows with the bytes
    /// already received (doubling), so a peer that claims a large frame and sends nothing
    /// costs 16 KiB, not the claimed length.
    ///
    /// A large frame is buffered once: for it the buffer grows to the frame's length and no
    /// further (never to the next power of two).
    pub fn read_buf(&mut self) -> &mut [u8] {
        let missing = self.missing_for_current_frame();
        let buffered = self.buffered();
        if missing > 0 && buffered + missing > READ_CHUNK {
            let room = missing.min(buffered.max(READ_CHUNK));
            self.make_room_capped(room, buffered + missing);
        } else {
            self.make_room(READ_CHUNK);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`read_buf`](FrameDecoder::read_buf) as received.
    ///
    /// # Panics
    /// If `n` is more than the room `read_buf` offered: that is a bug in the caller.
    #[inline]
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.end,
            "commit of {n} bytes exceeds the read buffer"
        );
        self.end += n;
    }

    /// The next complete frame, `None` if more input is needed, or an error if the input is
    /// not a valid frame stream.
    #[inline(always)]
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.batch_left > 0 {
            return self.next_entry();
        }
        // Fast path: a valid header of a frame that has arrived whole.
        if self.failed.is_none() {
            let available = &self.buf[self.start..self.end];
            if let Some(header_bytes) = available.first_chunk::<HEADER_LEN>()
                && let Some(header) = FrameHeader::parse_valid(header_bytes, &self.limits)
                && available.len() >= header.frame_len()
                && header.kind() != FrameKind::Batch
            {
                let payload_start = self.start + HEADER_LEN;
                self.start += header.frame_len();
                let payload = &self.buf[payload_start..self.start];
                return Ok(Some(Frame::from_parts(header, payload)));
            }
        }
        self.next_frame_slow()
    }

    /// [`next_frame`](FrameDecoder::next_frame) for a failed decoder, a partial frame or a
    /// header that does not validate.
    #[inline(never)]
    fn next_frame_slow(&mut self) -> Result<Option<Frame<'_>>> {
        let Some(header) = self.peek_header_slow()? else {
            return Ok(None);
        };
        if self.batch_left > 0 {
            // peek_header_slow entered a batch frame.
            return self.next_entry();
        }
        let payload_start = self.start + HEADER_LEN;
        self.start += header.frame_len();
        let payload = &self.buf[payload_start..self.start];
        Ok(Some(Frame::from_parts(header, payload)))
    }

    /// The header of the next frame if the whole frame has arrived, without consuming it;
    /// `None` if more input is needed. Lets a caller look at the kind before it decides how
    /// to decode the frame that [`next_frame`](FrameDecoder::next_frame) returns next.
    ///
    /// The header is validated again (it is cheap) rather than remembered: a header kept in
    /// the decoder and read back right after it was stored costs a store-forwarding stall
    /// per frame.
    #[inline]
    pub fn peek_header(&mut self) -> Result<Option<FrameHeader>> {
        if self.batch_left > 0 {
            return self.peek_entry().map(Some);
        }
        // Fast path: a valid header of a frame that has arrived whole.
        if self.failed.is_none() {
            let available = &self.buf[self.start..self.end];
            if let Some(header_bytes) = available.first_chunk::<HEADER_LEN>()
                && let Some(header) = FrameHeader::parse_valid(header_bytes, &self.limits)
                && header.kind() != FrameKind::Batch
            {
                if available.len() < header.frame_len() {
                    return Ok(None);
                }
                return Ok(Some(header));
            }
        }
        self.peek_header_slow()
    }

    /// True when [`next_frame`](FrameDecoder::next_frame) would hand out a data frame now (a
    /// whole one, or the next message of a batch frame); false when a frame of another kind
    /// is at the front, more input is needed, or the input is bad, all of which
    /// [`peek_header`](FrameDecoder::peek_header) tells apart. The check a receive loop runs
    /// per message, kept to a few instructions.
    #[inline(always)]
    pub fn has_data(&self) -> bool {
        if self.batch_left > 0 {
            return self.valid_entry_len().is_some();
        }
        let available = &self.buf[self.start..self.end];
        self.failed.is_none()
            && available
                .first_chunk::<HEADER_LEN>()
                .and_then(|header| FrameHeader::parse_valid(header, &self.limits))
                .is_some_and(|header| {
                    header.kind() == FrameKind::Data && available.len() >= header.frame_len()
                })
    }

    /// [`peek_header`](FrameDecoder::peek_header) for a failed decoder, a partial header or
    /// one that does not validate.
    #[cold]
    fn peek_header_slow(&mut self) -> Result<Option<FrameHeader>> {
        if let Some(kind) = self.failed {
            return Err(Error::new(
                kind,
                "frame decoder stopped after an earlier error",
            ));
        }
        let available = &self.buf[self.start..self.end];
        let Some(header_bytes) = available.first_chunk::<HEADER_LEN>() else {
            if let Err(err) = check_prefix(available) {
                self.failed = Some(err.kind());
                return Err(err);
            }
            return Ok(None);
        };
        match FrameHeader::parse(header_bytes, &self.limits) {
            Ok(header) if available.len() < header.frame_len() => Ok(None),
            Ok(header) if header.kind() == FrameKind::Batch => {
                if (header.len() as usize) < BATCH_ENTRY_PREFIX {
                    return Err(self.fail(Error::new(
                        ErrorKind::Protocol,
                        format!("batch frame of {} bytes holds no message", header.len()),
                    )));
                }
                self.start += HEADER_LEN;
                self.batch_left = header.len() as usize;
                self.peek_entry().map(Some)
            }
            Ok(header) => Ok(Some(header)),
            Err(err) => Err(self.fail(err)),
        }
    }

    #[cold]
    fn fail(&mut self, err: Error) -> Error {
        self.failed = Some(err.kind());
        err
    }

    /// The length of the batch entry at `start`, checked against the rest of its batch.
    #[inline]
    fn entry_len(&mut self) -> Result<usize> {
        match self.valid_entry_len() {
            Some(len) => Ok(len),
            None => Err(self.bad_entry()),
        }
    }

    /// [`entry_len`](Self::entry_len) without failing the decoder: `None` for a bad entry.
    #[inline(always)]
    fn valid_entry_len(&self) -> Option<usize> {
        let entry = &self.buf[self.start..self.start + self.batch_left];
        let (len, rest) = entry.split_first_chunk::<BATCH_ENTRY_PREFIX>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        (len <= rest.len()).then_some(len)
    }

    #[cold]
    fn bad_entry(&mut self) -> Error {
        let entry = &self.buf[self.start..self.start + self.batch_left];
        let err = match entry.first_chunk::<BATCH_ENTRY_PREFIX>() {
            Some(len) => Error::new(
                ErrorKind::Protocol,
                format!(
                    "batch entry declares {} bytes but only {} remain in its frame",
                    u16::from_le_bytes(*len),
                    entry.len() - BATCH_ENTRY_PREFIX
                ),
            ),
            None => Error::new(
                ErrorKind::Protocol,
                format!(
                    "batch frame ends with {} stray byte(s) after its last entry",
                    entry.len()
                ),
            ),
        };
        self.batch_left = 0;
        self.fail(err)
    }

    /// The header of the batch entry at `start`, as a data frame's.
    #[inline]
    fn peek_entry(&mut self) -> Result<FrameHeader> {
        let len = self.entry_len()?;
        Ok(FrameHeader::new(FrameKind::Data, 0, len as u32))
    }

    /// Hands out the batch entry at `start` as a data frame.
    #[inline]
    fn next_entry(&mut self) -> Result<Option<Frame<'_>>> {
        let len = self.entry_len()?;
        let payload_start = self.start + BATCH_ENTRY_PREFIX;
        self.start = payload_start + len;
        self.batch_left -= BATCH_ENTRY_PREFIX + len;
        let header = FrameHeader::new(FrameKind::Data, 0, len as u32);
        Ok(Some(Frame::from_parts(
            header,
            &self.buf[payload_start..self.start],
        )))
    }

    /// Grows the buffer to hold at least `n` bytes, so that [`read_buf`](FrameDecoder::read_buf)
    /// offers up to `n` bytes of room from now on: fewer, larger reads when a stream carries
    /// many small frames. Costs `n` bytes of memory; the buffer never shrinks.
    pub fn reserve(&mut self, n: usize) {
        self.make_room(n);
    }

    /// Call at end of stream: [`ErrorKind::Truncated`] if a frame was only partly received.
    pub fn finish(&self) -> Result<()> {
        // The rest of a batch being handed out arrived whole; only what follows it counts.
        let after_batch = self.start + self.batch_left;
        let buffered = self.end - after_batch;
        if buffered == 0 {
            return Ok(());
        }
        let need = match self.buf[after_batch..self.end].first_chunk::<HEADER_LEN>() {
            Some(header) => match FrameHeader::parse(header, &self.limits) {
                Ok(header) => header.frame_len(),
                Err(err) => return Err(err),
            },
            None => HEADER_LEN,
        };
        Err(Error::truncated(
            "stream ended inside a frame",
            buffered,
            need,
        ))
    }

    /// How many more bytes the frame at the front needs (0 if unknown or complete).
    fn missing_for_current_frame(&self) -> usize {
        if self.batch_left > 0 {
            return 0;
        }
        let available = &self.buf[self.start..self.end];
        match available.first_chunk::<HEADER_LEN>() {
            Some(header) => match FrameHeader::parse(header, &self.limits) {
                Ok(header) => header.frame_len().saturating_sub(available.len()),
                Err(_) => 0,
            },
            None => HEADER_LEN - available.len(),
        }
    }

    /// Ensures `buf[end..]` has at least `n` bytes, moving unread bytes to the front first.
    fn make_room(&mut self, n: usize) {
        self.make_room_capped(n, usize::MAX);
    }

    /// [`make_room`](Self::make_room) that grows the buffer geometrically but not past `cap`
    /// bytes (unless `n` itself needs more).
    fn make_room_capped(&mut self, n: usize, cap: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= n {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < n {
            // Grow at least geometrically so that a large frame arriving in small reads
            // costs amortised linear time.
            let want = (self.end + n).max((self.buf.len() * 2).min(cap));
            self.buf.resize(want, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameKind, encode_frame, encode_raw_frame};

    fn batch(entries: &[&[u8]], extra: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for entry in entries {
            payload.extend_from_slice(&(entry.len() as u16).to_le_bytes());
            payload.extend_from_slice(entry);
        }
        payload.extend_from_slice(extra);
        let mut wire = Vec::new();
        encode_raw_frame(&mut wire, FrameKind::Batch, 0, &payload, &Limits::default()).unwrap();
        wire
    }

    #[test]
    fn a_batch_comes_out_as_data_frames_between_its_neighbours() {
        let limits = Limits::default();
        let mut wire = Vec::new();
        encode_raw_frame(&mut wire, FrameKind::Ping, 7, &[], &limits).unwrap();
        wire.extend(batch(&[b"one", b"", b"three"], &[]));
        encode_raw_frame(&mut wire, FrameKind::Pong, 8, &[], &limits).unwrap();
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(&wire);
        let mut seen = Vec::new();
        while let Some(header) = decoder.peek_header().unwrap() {
            let frame = decoder.next_frame().unwrap().unwrap();
            assert_eq!((frame.kind(), frame.id()), (header.kind(), header.id()));
            seen.push((frame.kind(), frame.id(), frame.payload().to_vec()));
        }
        assert_eq!(
            seen,
            [
                (FrameKind::Ping, 7, vec![]),
                (FrameKind::Data, 0, b"one".to_vec()),
                (FrameKind::Data, 0, vec![]),
                (FrameKind::Data, 0, b"three".to_vec()),
                (FrameKind::Pong, 8, vec![]),
            ]
        );
        decoder.finish().unwrap();
    }

    #[test]
    fn bad_batches_are_protocol_errors_and_the_decoder_stays_failed() {
        let cases: [(Vec<u8>, &str); 3] = [
            (batch(&[], &[]), "batch frame of 0 bytes holds no message"),
            (
                batch(&[b"ab"], &[9, 0, 1]),
                "batch entry declares 9 bytes but only 1 remain in its frame",
            ),
            (
                batch(&[b"ab"], &[5]),
                "batch frame ends with 1 stray byte(s) after its last entry",
            ),
        ];
        for (wire, message) in cases {
            let mut decoder = FrameDecoder::new(Limits::default());
            decoder.push(&wire);
            let mut last = None;
            for _ in 0..3 {
                match decoder.next_frame() {
                    Ok(Some(frame)) => assert_eq!(frame.payload(), b"ab"),
                    Ok(None) => panic!("{message}: ran out of input"),
                    Err(err) => {
                        last = Some(err);
                        break;
                    }
                }
            }
            let err = last.expect("an error");
            assert_eq!(err.kind(), ErrorKind::Protocol, "{message}");
            assert_eq!(err.to_string(), message);
            assert_eq!(
                decoder.next_frame().unwrap_err().to_string(),
                "frame decoder stopped after an earlier error"
            );
        }
    }

    #[test]
    fn garbage_fails_at_its_first_byte_and_stays_failed() {
        let mut decoder = FrameDecoder::new(Limits::default());
        decoder.push(b"G");
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic);
        decoder.push(&[0xA7]);
        assert_eq!(
            decoder.next_frame().unwrap_err().kind(),
            ErrorKind::BadMagic
        );
    }

    #[test]
    fn a_claimed_length_over_the_limit_fails_before_the_payload_arrives() {
        let limits = Limits::new().with_max_frame_len(1024);
        let mut decoder = FrameDecoder::new(limits);
        let header = crate::frame::FrameHeader::new(FrameKind::Data, 0, u32::MAX).to_bytes();
        decoder.push(&header);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(
            err.to_string(),
            "frame of 4294967295 bytes exceeds limit of 1024"
        );
    }

    #[test]
    fn reads_straight_into_its_buffer() {
        let limits = Limits::default();
        let mut wire = Vec::new();
        let big = vec![7u8; 100_000];
        encode_raw_frame(&mut wire, FrameKind::Data, 9, &big, &limits).unwrap();
        encode_frame(&mut wire, FrameKind::Data, 10, &5u8, &limits).unwrap();

        let mut decoder = FrameDecoder::new(limits);
        let mut input = &wire[..];
        let mut frames = Vec::new();
        while !input.is_empty() {
            let room = decoder.read_buf();
            let n = room.len().min(input.len()).min(3000);
            room[..n].copy_from_slice(&input[..n]);
            input = &input[n..];
            decoder.commit(n);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push((frame.id(), frame.payload().len()));
            }
        }
        assert_eq!(frames, [(9, 100_000), (10, 1)]);
        decoder.finish().unwrap();
        // The buffer grew with the data, not beyond one frame plus a read chunk or so.
        assert!(decoder.buf.len() <= 2 * (100_000 + HEADER_LEN + READ_CHUNK));
    }

    #[test]
    fn peek_header_does_not_consume() {
        let limits = Limits::default();
        let mut wire = Vec::new();
        encode_frame(&mut wire, FrameKind::Ping, 4, &(), &limits).unwrap();
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(&wire[..10]);
        assert_eq!(decoder.peek_header().unwrap(), None);
        decoder.push(&wire[10..]);
        let header = decoder.peek_header().unwrap().unwrap();
        assert_eq!((header.kind(), header.id()), (FrameKind::Ping, 4));
        assert_eq!(decoder.next_frame().unwrap().unwrap().id(), 4);
        assert_eq!(decoder.peek_header().unwrap(), None);
        decoder.push(b"x");
        assert_eq!(
            decoder.peek_header().unwrap_err().kind(),
            ErrorKind::BadMagic
        );
    }

    #[test]
    fn finish_reports_a_half_received_frame() {
        let limits = Limits::default();
        let mut wire = Vec::new();
        encode_frame(&mut wire, FrameKind::Data, 0, "abc", &limits).unwrap();
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(&wire[..wire.len() - 1]);
        assert!(decoder.next_frame().unwrap().is_none());
        let err = decoder.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Truncated);
        assert_eq!(
            err.to_string(),
            "stream ended inside a frame: input ended after 19 of 20 bytes"
        );
    }

    #[test]
    fn a_large_frame_is_buffered_once() {
        // Sizes where doubling from 16 KiB overshoots the frame by almost 2x.
        for payload_len in [64 * 1024 + 1, 1024 * 1024 + 17, 3 * 1024 * 1024] {
            let payload = vec![7u8; payload_len];
            let limits = Limits::new().with_max_frame_len(4 * 1024 * 1024);
            let mut wire = Vec::new();
            encode_raw_frame(&mut wire, FrameKind::Ping, 1, &payload, &limits).unwrap();
            let mut decoder = FrameDecoder::new(limits);
            let mut sent = 0;
            // Reads as a socket would deliver them: as much as the room offered.
            while sent < wire.len() {
                let room = decoder.read_buf();
                let n = room.len().min(wire.len() - sent);
                room[..n].copy_from_slice(&wire[sent..sent + n]);
                decoder.commit(n);
                sent += n;
            }
            assert!(
                decoder.buf.len() <= wire.len().max(READ_CHUNK),
                "a frame of {} bytes grew the buffer to {} bytes",
                wire.len(),
                decoder.buf.len()
            );
            let frame = decoder.next_frame().unwrap().unwrap();
            assert_eq!(frame.payload().len(), payload_len);
        }
    }
}
