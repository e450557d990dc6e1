//! [`ShmSender`]: the sending end.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipc_core::{Error, ErrorKind, MessageType, Result};
use serde::Serialize;

use super::config::ChannelConfig;
use super::layout::{
    DATA_SEQ, END_ATTACHED, END_SLEEPS, END_STATE, RECEIVER_WAITING, RECORD_HEADER, RX_LINE,
    S_SENDER_WAITING, S_SPACE_SEQ, SLEEPS_NEVER, TAG_MESSAGE, TAG_PADDING, header_word,
    parse_header, record_len, slot_base,
};
use super::shared::{Channel, Role};
use super::slot::SendSlot;
use crate::sys::{Ring, RingPtr, WordPtr};
use crate::wait::Deadline;

/// How many looks at the receiver's `head` a full ring's sender takes while it paces.
const PACE_LOOKS: u32 = 64;
/// Spin-loop hints between two of those looks (tens of nanoseconds each).
const PACE_SPINS: u32 = 32;
/// More than the pacing takes (64 x 32 hints of at most about 50 ns each).
const PACE_AT_MOST: Duration = Duration::from_millis(1);

/// The sending end of a shared-memory channel of `T` messages.
///
/// Messages are serialised with postcard straight into the ring. `Ok` from a send means the
/// message is in the ring, visible to the receiver.
///
/// Only one sender may be attached to a channel at a time; the slot frees up when it is
/// dropped or its process dies.
pub struct ShmSender<T: ?Sized> {
    pub(super) channel: Channel,
    pub(super) tail: u64,
    pub(super) head: u64,
    /// Our ring, our `tail` index and the receiver's state and `END_SLEEPS` words,
    /// resolved once for the hot path (they live as long as `channel`'s mapping).
    pub(super) ring: RingPtr,
    tail_word: WordPtr<AtomicU64>,
    rx_state: WordPtr<AtomicU32>,
    rx_sleeps: WordPtr<AtomicU32>,
    pub(super) _message: PhantomData<fn(&T)>,
}

impl<T: ?Sized> std::fmt::Debug for ShmSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmSender")
            .field("channel", &self.channel)
            .field("tail", &self.tail)
            .field("head", &self.head)
            .finish()
    }
}

impl<T: Serialize + ?Sized> ShmSender<T> {
    /// Creates channel `name` and attaches as its sender. The segment is removed again when
    /// this sender is dropped. Messages sent before a receiver opens wait in the ring; a
    /// receiver that opens after this sender was dropped finds no channel.
    ///
    /// Errors: [`AlreadyExists`](ErrorKind::AlreadyExists) when a live process owns the
    /// name (a segment left by a dead one is reclaimed), `InvalidInput` for a bad name or
    /// capacity, `Io` when the memory is not available (more than `MemAvailable`).
    pub fn create(name: &str, config: &ChannelConfig) -> Result<ShmSender<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let channel = Channel::create(name, config, message_type, Role::Sender)?;
        ShmSender::new(channel)
    }

    /// Opens channel `name`, created by its receiver, and attaches as its sender.
    ///
    /// Errors: `NotFound`, `Timeout` (the name file never became a rendezvous),
    /// `TypeMismatch`, `BadMagic`, `UnsupportedVersion`, `PeerDied` (its creator is gone),
    /// `Protocol` (the creator's memory is not sealed against resizing), `Corrupted` (the
    /// memory is not the one the name describes), `PermissionDenied` (the creator's
    /// `/proc/<pid>/fd` is closed to us), `AlreadyExists` (a live sender is attached).
    pub fn open(name: &str, config: &ChannelConfig) -> Result<ShmSender<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let channel = Channel::open(name, config, message_type, Role::Sender)?;
        ShmSender::new(channel)
    }

    /// Sends `message`, waiting while the ring is full.
    #[inline]
    pub fn send(&mut self, message: &T) -> Result<()> {
        self.send_until(message, Deadline::Never)
    }

    /// Sends `message` if it fits now; [`Full`](ErrorKind::Full) otherwise.
    pub fn try_send(&mut self, message: &T) -> Result<()> {
        self.send_until(message, Deadline::Now)
    }

    /// Sends `message`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        self.send_until(message, Deadline::after(timeout))
    }

    /// Sends a value of another type with the same encoding as `T`: typically the
    /// borrowing twin of the channel's type (`Sample<'a>` on a channel of
    /// `Sample<'static>`), so that borrowed data need not be `'static` or copied first.
    /// The type fingerprint cannot tell the difference: keep the two types in step.
    #[inline]
    pub fn send_as<U: Serialize + ?Sized>(&mut self, message: &U) -> Result<()> {
        self.send_until(message, Deadline::Never)
    }

    /// [`send_as`](ShmSender::send_as) without waiting: [`Full`](ErrorKind::Full) if there
    /// is no room now.
    pub fn try_send_as<U: Serialize + ?Sized>(&mut self, message: &U) -> Result<()> {
        self.send_until(message, Deadline::Now)
    }

    /// [`send_as`](ShmSender::send_as), waiting at most `timeout` for room.
    pub fn send_as_timeout<U: Serialize + ?Sized>(
        &mut self,
        message: &U,
        timeout: Duration,
    ) -> Result<()> {
        self.send_until(message, Deadline::after(timeout))
    }

    #[inline(always)]
    fn send_until<U: Serialize + ?Sized>(&mut self, message: &U, deadline: Deadline) -> Result<()> {
        // One load of a line the receiver writes only when it attaches or closes.
        if self.rx_state.get().load(Ordering::Acquire) != END_ATTACHED {
            self.channel.peer_status(false)?;
        }
        // Fast path: encode straight into the contiguous room, without measuring first.
        // `try_encode_into` says "does not fit" with a plain `None`, where an
        // `ipc_core::Error` would allocate its message: this path must not allocate. (It is
        // ipc-core's serializer of postcard's format, with the common cases inlined.)
        if self.try_send_in_room(message)? {
            return Ok(());
        }
        self.send_slow(message, deadline)
    }

    /// Encodes and publishes `message` if it fits the contiguous room our cached `head`
    /// shows; `false` if it does not.
    #[inline(always)]
    fn try_send_in_room<U: Serialize + ?Sized>(&mut self, message: &U) -> Result<bool> {
        let Some(room) = self.contiguous_room() else {
            return Ok(false);
        };
        let offset = self.tail_offset();
        let slot = self.payload_mut(offset, room)?;
        let Some(written) = ipc_core::try_encode_into(message, slot)? else {
            return Ok(false);
        };
        self.publish(written as u64);
        Ok(true)
    }

    /// [`send_until`](Self::send_until) when the message did not fit the room our cached
    /// `head` shows: look at the receiver's `head` once and try again, then measure the
    /// message and wait for room.
    #[inline(never)]
    fn send_slow<U: Serialize + ?Sized>(&mut self, message: &U, deadline: Deadline) -> Result<()> {
        let to_end = self.channel.capacity - self.tail_offset();
        let free = self.channel.capacity - (self.tail - self.head);
        // When the end of the ring was the limit, not the receiver, there is no use looking.
        if free < to_end {
            self.refresh_head()?;
            if self.try_send_in_room(message)? {
                return Ok(());
            }
        }
        // Slow path: the message does not fit now. Measure it, then wait for room.
        let payload_len = ipc_core::encoded_len(message)? as u64;
        let offset = self.make_room(payload_len, deadline)?;
        let slot = self.payload_mut(offset, payload_len)?;
        let written = ipc_core::encode_into(message, slot)?;
        self.publish(written as u64);
        Ok(())
    }
}

impl<T: ?Sized> ShmSender<T> {
    fn new(channel: Channel) -> Result<ShmSender<T>> {
        // The creator starts at 0; an opener continues where a previous sender stopped,
        // after checking what it left.
        let tail_index = channel.index(Channel::tail_at(channel.slot));
        let mut tail = tail_index.load(Ordering::Acquire);
        let head = channel
            .index(Channel::head_at(channel.slot))
            .load(Ordering::Acquire);
        // A sender that died between a record's header and its `tail` store committed that
        // record (the receiver may have taken it already): take it over. At most a padding
        // record and a message can be in that state.
        let capacity = channel.capacity;
        let ring = channel.ring_at(channel.slot);
        for _ in 0..2 {
            if !tail.is_multiple_of(8) {
                break;
            }
            let offset = tail & (capacity - 1);
            let word = channel
                .index(ring + offset as usize)
                .load(Ordering::Acquire);
            let len = match parse_header(word, tail) {
                Some((_, TAG_PADDING, _)) => capacity - offset,
                Some((payload_len, TAG_MESSAGE, _)) => record_len(payload_len),
                _ => break,
            };
            if len > capacity - offset || tail + len > head.saturating_add(capacity) {
                break;
            }
            tail += len;
            tail_index.store(tail, Ordering::Release);
        }
        if head > tail
            || tail - head > channel.capacity
            || !head.is_multiple_of(8)
            || !tail.is_multiple_of(8)
        {
            return Err(channel.corrupted(format!(
                "ring {} has sender position {tail} and receiver position {head}",
                channel.slot
            )));
        }
        let ring = Ring::new(channel.ring_at(channel.slot), channel.capacity as usize)
            .ok_or_else(|| channel.corrupted(format!("ring {} misplaced", channel.slot)))?;
        let map = channel.map();
        // SAFETY: the resolved addresses are kept in the sender beside `channel`, which
        // owns the mapping; they are used only through `&self` / `&mut self` and dropped
        // with it, never handed out.
        let (ring, tail_word, rx_state, rx_sleeps) = unsafe {
            (
                map.resolve_ring(ring),
                map.resolve_u64(Channel::tail_at(channel.slot)),
                map.resolve_u32(RX_LINE + END_STATE),
                map.resolve_u32(RX_LINE + END_SLEEPS),
            )
        };
        Ok(ShmSender {
            channel,
            tail,
            head,
            ring,
            tail_word,
            rx_state,
            rx_sleeps,
            _message: PhantomData,
        })
    }

    /// The ring's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.channel.capacity as usize
    }

    /// The largest payload a record can hold.
    pub fn max_message_len(&self) -> usize {
        (self.channel.capacity - RECORD_HEADER) as usize
    }

    /// Reserves `len` bytes in the ring for a message written in place, waiting while the
    /// ring is full. Write into the slot and [`commit`](SendSlot::commit) it; a slot dropped
    /// without commit publishes nothing.
    pub fn reserve(&mut self, len: usize) -> Result<SendSlot<'_, T>> {
        self.reserve_until(len, Deadline::Never)
    }

    /// Reserves `len` bytes if there is room now; [`Full`](ErrorKind::Full) otherwise.
    pub fn try_reserve(&mut self, len: usize) -> Result<SendSlot<'_, T>> {
        self.reserve_until(len, Deadline::Now)
    }

    /// Reserves `len` bytes, waiting at most `timeout` for room.
    pub fn reserve_timeout(&mut self, len: usize, timeout: Duration) -> Result<SendSlot<'_, T>> {
        self.reserve_until(len, Deadline::after(timeout))
    }

    fn reserve_until(&mut self, len: usize, deadline: Deadline) -> Result<SendSlot<'_, T>> {
        self.channel.peer_status(false)?;
        let offset = self.make_room(len as u64, deadline)?;
        // Check the slice can be formed before handing out the slot.
        self.payload_mut(offset, len as u64)?;
        Ok(SendSlot {
            sender: self,
            offset,
            len,
        })
    }

    #[inline]
    fn tail_offset(&self) -> u64 {
        self.tail & (self.channel.capacity - 1)
    }

    /// Re-reads the receiver's `head` and checks it against our `tail`.
    fn refresh_head(&mut self) -> Result<()> {
        let head = self
            .channel
            .index(Channel::head_at(self.channel.slot))
            .load(Ordering::Acquire);
        if head < self.head || head > self.tail || !head.is_multiple_of(8) {
            return Err(self.channel.corrupted(format!(
                "receiver position {head} outside {}..={} or unaligned",
                self.head, self.tail
            )));
        }
        self.head = head;
        Ok(())
    }

    /// Payload bytes that fit contiguously at the tail now, `None` if not even a header does.
    #[inline]
    fn contiguous_room(&self) -> Option<u64> {
        let free = self.channel.capacity - (self.tail - self.head);
        let to_end = self.channel.capacity - self.tail_offset();
        let contiguous = free.min(to_end);
        (contiguous >= RECORD_HEADER).then(|| contiguous - RECORD_HEADER)
    }

    /// Returns the ring offset at which a record for `payload_len` bytes can be written,
    /// padding to the ring's end when needed, waiting for the receiver until `deadline`.
    fn make_room(&mut self, payload_len: u64, deadline: Deadline) -> Result<u64> {
        let capacity = self.channel.capacity;
        if payload_len > capacity - RECORD_HEADER {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "ring of {capacity} bytes cannot hold a message of {payload_len} (at most {})",
                    capacity - RECORD_HEADER
                ),
            ));
        }
        let needed = record_len(payload_len);
        // The receiver's `head` lives on a line it writes: read it only when our cached copy
        // says there is not enough room, not on every message.
        // (The cached copy is never ahead of the real one, so the room it shows is real.)
        let mut fresh = false;
        let mut paced = false;
        loop {
            let free = capacity - (self.tail - self.head);
            let offset = self.tail_offset();
            let to_end = capacity - offset;
            if needed <= to_end {
                if needed <= free {
                    return Ok(offset);
                }
            } else if free >= to_end {
                // The record cannot fit before the end: fill the rest with padding.
                self.write_record_header(to_end - RECORD_HEADER, TAG_PADDING);
                self.tail += to_end;
                self.channel
                    .index(Channel::tail_at(self.channel.slot))
                    .store(self.tail, Ordering::Release);
                self.channel.notify(RX_LINE, DATA_SEQ, RECEIVER_WAITING);
                if needed <= free - to_end {
                    return Ok(0);
                }
            }
            if !fresh {
                self.refresh_head()?;
                fresh = true;
                continue;
            }
            // (Not with a deadline closer than the pacing can take: it would overshoot.)
            if !paced && deadline.remaining().is_none_or(|left| left >= PACE_AT_MOST) {
                // Full: the receiver is slower than we are. Looking at its `head` after
                // every message it takes would pull that line away from it each time (a
                // cache miss per message on the receiver's side, which is the bottleneck);
                // instead look rarely until a good part of the ring is free, so that the
                // receiver runs through a stretch of records undisturbed and the records
                // we write next find the word after them free to zero.
                paced = true;
                self.pace(needed);
                self.refresh_head()?;
                continue;
            }
            let used = self.tail - self.head;
            let channel = &self.channel;
            let head_index = channel.index(Channel::head_at(channel.slot));
            let head = self.head;
            let timeout_error = || {
                let name = channel.segment.name();
                let (kind, verb) = match deadline {
                    Deadline::Now => (ErrorKind::Full, "is full"),
                    _ => (ErrorKind::Timeout, "stayed full until the deadline"),
                };
                Error::new(
                    kind,
                    format!(
                        "channel `{name}` {verb}: {used} of {capacity} bytes in use, message needs {needed}"
                    ),
                )
            };
            let slot = slot_base(channel.slot);
            channel.wait_until(
                || head_index.load(Ordering::Acquire) != head,
                slot + S_SPACE_SEQ,
                slot + S_SENDER_WAITING,
                channel.spin,
                deadline,
                timeout_error,
            )?;
            self.refresh_head()?;
        }
    }

    /// Waits, spinning with long pauses between looks at the receiver's `head`, until an
    /// eighth of the ring (at least `needed` bytes) is free or [`PACE_LOOKS`] looks have
    /// passed (a few tens of microseconds), whichever comes first. The caller validates
    /// `head` afterwards; the usual wait (spin, yield, sleep) follows if there is still no
    /// room.
    #[cold]
    fn pace(&self, needed: u64) {
        let capacity = self.channel.capacity;
        let target = (capacity / 8).max(needed);
        let head_index = self.channel.index(Channel::head_at(self.channel.slot));
        for _ in 0..PACE_LOOKS {
            for _ in 0..PACE_SPINS {
                std::hint::spin_loop();
            }
            let head = head_index.load(Ordering::Relaxed);
            // A `head` out of range (a hostile receiver) ends the pacing: `refresh_head`
            // reports it.
            if head > self.tail || capacity - (self.tail - head) >= target {
                return;
            }
        }
    }

    #[inline(always)]
    pub(super) fn payload_mut(&mut self, offset: u64, len: u64) -> Result<&mut [u8]> {
        // SAFETY: the range lies between our tail and the receiver's head (`make_room` or
        // `contiguous_room` checked it), which only the sender writes; the returned slice
        // borrows `self` mutably, so no other slice of this process overlaps it.
        let bytes = unsafe { self.ring.bytes_mut(offset + RECORD_HEADER, len) };
        match bytes {
            Some(bytes) => Ok(bytes),
            None => Err(self.channel.outside_ring(offset, len)),
        }
    }

    /// Writes the header of the record at our `tail`, which commits it: the receiver may
    /// take it from then on, before `tail` moves. First zeroes the header word after the
    /// record when that word is free space, and says so in the stamp.
    #[inline(always)]
    fn write_record_header(&mut self, payload_len: u64, tag: u32) {
        let capacity = self.channel.capacity;
        let end = self.tail + record_len(payload_len);
        // The word at `end` is ours when it lies before the receiver's released bytes come
        // round again (`head` is never ahead of the real one, so this errs on the safe side).
        let next_cleared = end + RECORD_HEADER - self.head <= capacity;
        if next_cleared {
            self.ring.word(end).store(0, Ordering::Relaxed);
        }
        // Release: the payload and the zeroed word are visible before the stamp is.
        self.ring.word(self.tail).store(
            header_word(self.tail, payload_len, tag, next_cleared),
            Ordering::Release,
        );
    }

    /// Commits the message record of `payload_len` bytes at our `tail` (whose payload is
    /// written), moves `tail` past it and wakes the receiver if it sleeps.
    #[inline(always)]
    pub(super) fn publish(&mut self, payload_len: u64) {
        self.write_record_header(payload_len, TAG_MESSAGE);
        self.tail += record_len(payload_len);
        self.tail_word.get().store(self.tail, Ordering::Release);
        // A polling receiver never sleeps: nothing to wake (`notify` looks again).
        if self.rx_sleeps.get().load(Ordering::Relaxed) != SLEEPS_NEVER {
            self.channel.notify(RX_LINE, DATA_SEQ, RECEIVER_WAITING);
        }
    }
}

impl<T: Serialize + ?Sized> ipc_core::Sender for ShmSender<T> {
    type Message = T;

    /// `Ok` means the message is in the ring.
    fn send(&mut self, message: &T) -> Result<()> {
        ShmSender::send(self, message)
    }

    fn try_send(&mut self, message: &T) -> Result<()> {
        ShmSender::try_send(self, message)
    }

    fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        ShmSender::send_timeout(self, message, timeout)
    }
}
