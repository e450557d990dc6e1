//! An output buffer of whole frames, for transports that coalesce small messages into few
//! writes.

use serde::Serialize;

use crate::codec;
use crate::decoder::BATCH_ENTRY_PREFIX;
use crate::error::Result;
use crate::frame::{self, FrameKind, HEADER_LEN, Limits};

/// A buffer this large or smaller is kept by [`FrameBuffer::clear`] whatever its initial
/// capacity.
const KEEP: usize = 256 * 1024;

/// The largest message [`FrameBuffer::push_batched`] puts in a batch; larger ones go in a
/// data frame of their own, where the 16-byte header costs them under half a percent.
pub const MAX_BATCHED_MESSAGE: usize = 4096;

/// The largest batch payload [`FrameBuffer::push_batched`] builds: a receiver hands out a
/// batch's messages only once the whole frame has arrived, so small batches keep the
/// receiver busy while the rest of a write is still on its way, and keep the partial frame
/// it carries over between reads small.
pub const MAX_BATCH_LEN: usize = 8 * 1024;

/// Whole frames waiting to be written, encoded in place.
///
/// Frames are serialised straight into memory that is already allocated and initialised,
/// so that queueing a small message costs about as much as copying its bytes: no length
/// bookkeeping per byte, no capacity check per field. A frame that does not fit in the
/// room left grows the buffer; a buffer that grew past four times its initial capacity (and
/// past 256 KiB) shrinks back when it is [cleared](FrameBuffer::clear), so one huge message
/// does not pin its memory for the rest of a connection.
///
/// ```
/// use ipc_core::{Frame, FrameBuffer, FrameKind, Limits};
///
/// let limits = Limits::default();
/// let mut out = FrameBuffer::with_capacity(4096);
/// out.push(FrameKind::Data, 0, "one", &limits)?;
/// out.push(FrameKind::Data, 0, "two", &limits)?;
/// // Hand `out.as_slice()` to the transport, then:
/// let (first, used) = Frame::parse(out.as_slice(), &limits)?;
/// assert_eq!(first.decode::<&str>()?, "one");
/// assert_eq!(out.len(), 2 * used);
/// out.clear();
/// assert!(out.is_empty());
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct FrameBuffer {
    /// Initialised bytes; `..filled` are frames, the rest is room.
    buf: Vec<u8>,
    filled: usize,
    initial: usize,
    /// Where the batch frame that ends the buffer starts, while messages may still be added
    /// to it; its header's length is written when it is sealed.
    open_batch: Option<usize>,
    /// Where the open batch must end: its header plus the smaller of [`MAX_BATCH_LEN`] and
    /// the limit.
    batch_end: usize,
    /// Where a data frame pushed by `push_batched` starts while it is the last frame in the
    /// buffer and could still become a batch.
    lone_data: Option<usize>,
}

impl FrameBuffer {
    /// A buffer with room for `bytes` bytes of frames before it grows.
    pub fn with_capacity(bytes: usize) -> FrameBuffer {
        FrameBuffer {
            buf: vec![0; bytes],
            filled: 0,
            initial: bytes,
            open_batch: None,
            batch_end: 0,
            lone_data: None,
        }
    }

    /// The frames queued so far, ready to be written: an open batch is sealed first, so
    /// later messages go into a new frame.
    #[inline]
    pub fn as_slice(&mut self) -> &[u8] {
        self.seal();
        &self.buf[..self.filled]
    }

    /// Closes the open batch (if any): writes its length into its header.
    #[inline]
    fn seal(&mut self) {
        self.lone_data = None;
        if let Some(start) = self.open_batch.take() {
            let len = (self.filled - start - HEADER_LEN) as u32;
            self.buf[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
        }
    }

    /// The number of bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.filled
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Appends a frame of `kind` and `id` whose payload is `value`'s postcard encoding;
    /// returns the frame's length. [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) if
    /// the payload exceeds `limits`; on error nothing is appended.
    #[inline]
    pub fn push<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        id: u32,
        value: &T,
        limits: &Limits,
    ) -> Result<usize> {
        self.seal();
        let room = &mut self.buf[self.filled..];
        match frame::try_encode_frame_into(room, kind, id, value, limits)? {
            Some(len) => {
                self.filled += len;
                Ok(len)
            }
            // It did not fit: a growing `Vec` finds out whether the limit is what it exceeded.
            None => self.with_vec(|out| frame::encode_frame(out, kind, id, value, limits)),
        }
    }

    /// Appends `value` for a peer whose hello sets [`FEATURE_BATCH`](crate::FEATURE_BATCH):
    /// as one more message of the batch frame that ends the buffer (two bytes of framing
    /// instead of sixteen). A message alone stays a data frame until a second one follows
    /// it, which turns the pair into a [`FrameKind::Batch`]: a lone request or reply costs
    /// the receiver no batch. A message over [`MAX_BATCHED_MESSAGE`] bytes, or one that would
    /// take a batch past [`MAX_BATCH_LEN`] or `limits`, goes in a data frame of its own.
    /// Returns the bytes appended.
    #[inline(always)]
    pub fn push_batched<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        limits: &Limits,
    ) -> Result<usize> {
        if self.open_batch.is_some()
            && let Some(len) = self.try_push_entry(value)?
        {
            return Ok(len);
        }
        self.push_batched_slow(value, limits)
    }

    /// Adds `value` to the open batch if it fits; `None` (nothing added) if it does not.
    #[inline(always)]
    fn try_push_entry<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<Option<usize>> {
        let at = self.filled + BATCH_ENTRY_PREFIX;
        // The entry may not pass the buffer's end, the batch's end or the entry limit.
        let end = self
            .batch_end
            .min(at + MAX_BATCHED_MESSAGE)
            .min(self.buf.len());
        if at <= end
            && let Some(len) = codec::try_encode_into(value, &mut self.buf[at..end])?
        {
            self.buf[self.filled..at].copy_from_slice(&(len as u16).to_le_bytes());
            self.filled = at + len;
            return Ok(Some(BATCH_ENTRY_PREFIX + len));
        }
        Ok(None)
    }

    /// [`push_batched`](FrameBuffer::push_batched) without an open batch with room: turns a
    /// lone data frame at the end into a batch, or appends a data frame.
    #[cold]
    fn push_batched_slow<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        limits: &Limits,
    ) -> Result<usize> {
        // A lone data frame and an open batch never coexist; `push` seals whichever batch is
        // open (a full one, or one just made from the lone frame that this message outgrew).
        if let Some(start) = self.lone_data.take()
            && self.open_batch_from_data(start, limits.max_frame_len() as usize)
            && let Some(len) = self.try_push_entry(value)?
        {
            return Ok(len);
        }
        let start = self.filled;
        let len = self.push(FrameKind::Data, 0, value, limits)?;
        if len - HEADER_LEN <= MAX_BATCHED_MESSAGE {
            self.lone_data = Some(start);
        }
        Ok(len)
    }

    /// Turns the data frame at `start`, the last in the buffer, into a batch of one entry
    /// that stays open: its payload moves up two bytes for the entry's length. False (and
    /// nothing changed) if such a batch would exceed `limit`.
    fn open_batch_from_data(&mut self, start: usize, limit: usize) -> bool {
        let payload = start + HEADER_LEN;
        let len = self.filled - payload;
        if len > MAX_BATCHED_MESSAGE || BATCH_ENTRY_PREFIX + len > limit {
            return false;
        }
        if self.filled + BATCH_ENTRY_PREFIX > self.buf.len() {
            self.grow_to(self.filled + BATCH_ENTRY_PREFIX);
        }
        self.buf
            .copy_within(payload..self.filled, payload + BATCH_ENTRY_PREFIX);
        self.buf[payload..payload + BATCH_ENTRY_PREFIX]
            .copy_from_slice(&(len as u16).to_le_bytes());
        // The kind byte; the length field is written when the batch is sealed.
        self.buf[start + 3] = FrameKind::Batch.to_byte();
        self.filled += BATCH_ENTRY_PREFIX;
        self.open_batch = Some(start);
        self.batch_end = start + HEADER_LEN + MAX_BATCH_LEN.min(limit);
        true
    }

    /// Appends a frame of `kind` and `id` with an already-encoded `payload`; returns the
    /// frame's length. [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) if the payload
    /// exceeds `limits`.
    pub fn push_raw(
        &mut self,
        kind: FrameKind,
        id: u32,
        payload: &[u8],
        limits: &Limits,
    ) -> Result<usize> {
        let header = frame::raw_header(kind, id, payload, limits)?;
        self.extend_from_slice(&header.to_bytes());
        self.extend_from_slice(payload);
        Ok(header.frame_len())
    }

    /// Appends bytes that are whole frames already (a close frame, another buffer's
    /// frames).
    pub fn extend_from_slice(&mut self, frames: &[u8]) {
        self.seal();
        let end = self.filled + frames.len();
        if end > self.buf.len() {
            self.grow_to(end);
        }
        self.buf[self.filled..end].copy_from_slice(frames);
        self.filled = end;
    }

    /// Moves `other`'s frames behind this buffer's, leaving `other` empty. When this
    /// buffer is empty the two swap memory instead of copying.
    pub fn append(&mut self, other: &mut FrameBuffer) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else {
            other.seal();
            self.extend_from_slice(&other.buf[..other.filled]);
        }
        other.clear();
    }

    /// Runs an encoder that appends to a `Vec` (such as
    /// [`Hello::encode_frame`](crate::Hello::encode_frame)) on the queued bytes.
    #[cold]
    pub fn with_vec<R>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.seal();
        self.buf.truncate(self.filled);
        let outcome = encode(&mut self.buf);
        self.filled = self.buf.len();
        // The room after the frames must be initialised again; the Vec's growth already
        // chose how much room there is.
        let capacity = self.buf.capacity();
        self.buf.resize(capacity, 0);
        outcome
    }

    /// Forgets every queued frame (after they were written), keeping the memory unless it
    /// grew past four times the initial capacity and past 256 KiB.
    #[inline]
    pub fn clear(&mut self) {
        self.filled = 0;
        self.open_batch = None;
        self.lone_data = None;
        if self.buf.len() > (4 * self.initial).max(KEEP) {
            self.buf = vec![0; self.initial];
        }
    }

    #[cold]
    fn grow_to(&mut self, end: usize) {
        let len = end.max(2 * self.buf.len()).max(64);
        self.buf.resize(len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Frame};

    fn frames(bytes: &[u8], limits: &Limits) -> Vec<(FrameKind, u32, Vec<u8>)> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (frame, used) = Frame::parse(rest, limits).unwrap();
            out.push((frame.kind(), frame.id(), frame.payload().to_vec()));
            rest = &rest[used..];
        }
        out
    }

    #[test]
    fn frames_match_encode_frame_across_growth() {
        let limits = Limits::default();
        let mut out = FrameBuffer::with_capacity(40);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let text = "x".repeat((i as usize * 7) % 300);
            out.push(FrameKind::Data, i, &(i, &text), &limits).unwrap();
            frame::encode_frame(&mut expected, FrameKind::Data, i, &(i, &text), &limits).unwrap();
            if i % 50 == 0 {
                out.push_raw(FrameKind::Ping, i, &[], &limits).unwrap();
                frame::encode_raw_frame(&mut expected, FrameKind::Ping, i, &[], &limits).unwrap();
            }
        }
        assert_eq!(out.as_slice(), &expected[..]);
        assert_eq!(frames(out.as_slice(), &limits).len(), 204);
    }

    #[test]
    fn a_lone_message_stays_a_data_frame_until_a_second_joins_it() {
        let limits = Limits::default();
        let mut out = FrameBuffer::with_capacity(64);
        out.push_batched("one", &limits).unwrap();
        let lone = out.as_slice().to_vec();
        assert_eq!(
            frames(&lone, &limits),
            [(FrameKind::Data, 0, b"\x03one".to_vec())]
        );
        // as_slice handed the bytes out (they may be on the wire): the next message may not
        // touch them, and starts a frame of its own.
        out.push_batched("two", &limits).unwrap();
        out.push_batched("three", &limits).unwrap();
        let wire = out.as_slice().to_vec();
        assert_eq!(&wire[..lone.len()], &lone[..]);
        let kinds: Vec<FrameKind> = frames(&wire, &limits).iter().map(|f| f.0).collect();
        assert_eq!(kinds, [FrameKind::Data, FrameKind::Batch]);
        let mut decoder = crate::FrameDecoder::new(limits);
        decoder.push(&wire);
        let mut texts = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            texts.push(frame.decode::<String>().unwrap());
        }
        assert_eq!(texts, ["one", "two", "three"]);
    }

    #[test]
    fn a_frame_over_the_limit_appends_nothing() {
        let limits = Limits::new().with_max_frame_len(8);
        for capacity in [0, 20, 1000] {
            let mut out = FrameBuffer::with_capacity(capacity);
            out.push(FrameKind::Data, 0, "1234567", &limits).unwrap();
            let before = out.as_slice().to_vec();
            let err = out
                .push(FrameKind::Data, 0, "123456789", &limits)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TooLarge, "capacity {capacity}");
            let err = out
                .push_raw(FrameKind::Data, 0, &[0; 9], &limits)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TooLarge);
            assert_eq!(out.as_slice(), &before[..]);
        }
    }

    #[test]
    fn append_moves_frames_and_clear_gives_back_grown_memory() {
        let limits = Limits::default();
        let mut a = FrameBuffer::with_capacity(64);
        let mut b = FrameBuffer::with_capacity(64);
        b.push(FrameKind::Data, 1, "b", &limits).unwrap();
        a.append(&mut b);
        assert!(b.is_empty());
        b.push(FrameKind::Data, 2, "c", &limits).unwrap();
        a.append(&mut b);
        let got: Vec<u32> = frames(a.as_slice(), &limits).iter().map(|f| f.1).collect();
        assert_eq!(got, [1, 2]);

        let mut big = FrameBuffer::with_capacity(64);
        big.push(FrameKind::Data, 0, &"y".repeat(300_000), &limits)
            .unwrap();
        assert!(big.buf.len() > 300_000);
        big.clear();
        assert_eq!(big.buf.len(), 64);
    }

    #[test]
    fn with_vec_appends_and_keeps_room_initialised() {
        let limits = Limits::default();
        let mut out = FrameBuffer::with_capacity(16);
        out.push(FrameKind::Data, 0, &1u8, &limits).unwrap();
        out.with_vec(|vec| vec.extend_from_slice(&[9; 100]));
        assert_eq!(out.len(), HEADER_LEN + 1 + 100);
        assert!(out.buf.len() >= out.len());
        out.push(FrameKind::Data, 0, &2u8, &limits).unwrap();
        assert_eq!(out.len(), 2 * (HEADER_LEN + 1) + 100);
    }
}
