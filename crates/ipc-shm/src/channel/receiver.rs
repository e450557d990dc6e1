//! [`ShmReceiver`]: the receiving end.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipc_core::{Error, ErrorKind, MessageType, Result};
use serde::de::DeserializeOwned;

use super::config::ChannelConfig;
use super::guard::RecvGuard;
use super::layout::{
    DATA_SEQ, END_SLEEPS, RECEIVER_WAITING, RECORD_HEADER, S_SENDER, S_SENDER_WAITING, S_SPACE_SEQ,
    SLEEPS_NEVER, TAG_MESSAGE, TAG_PADDING, next_slot, parse_header, record_len, slot_base,
};
use super::shared::{Channel, Role};
use crate::sys::{Ring, RingPtr, WordPtr};
use crate::wait::Deadline;

/// The receiving end of a shared-memory channel of `T` messages.
///
/// [`recv`](ShmReceiver::recv) decodes an owned `T`; [`recv_ref`](ShmReceiver::recv_ref)
/// hands out the record where it lies in shared memory, to decode in place with borrowed
/// `&str` / `&[u8]` fields.
pub struct ShmReceiver<T> {
    pub(super) channel: Channel,
    /// Per sender slot: our `head` and the last `tail` we validated.
    cursors: Vec<Cursor>,
    /// The slot to look at first, for fairness between senders.
    pub(super) next_slot: usize,
    pub(super) _message: PhantomData<fn() -> T>,
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// The ring, its `head` index and its sender's `END_SLEEPS` word, resolved once for
    /// the hot path (they live as long as `channel`'s mapping).
    ring: RingPtr,
    head_word: WordPtr<AtomicU64>,
    sender_sleeps: WordPtr<AtomicU32>,
    head: u64,
    /// The `tail` last read; it may trail `head` (records are taken on their headers).
    tail: u64,
    /// The sender zeroed the header word at `head` before publishing the record before it.
    cleared: bool,
}

/// A record found: `(slot, ring offset of its payload, length, whether the word after it
/// was zeroed)`.
type Found = (usize, u64, usize, bool);

impl<T> std::fmt::Debug for ShmReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmReceiver")
            .field("channel", &self.channel)
            .field("cursors", &self.cursors)
            .finish()
    }
}

impl<T> ShmReceiver<T> {
    /// Creates channel `name` and attaches as its receiver. The segment is removed again
    /// when this receiver is dropped. Errors as for [`ShmSender::create`](crate::ShmSender::create).
    pub fn create(name: &str, config: &ChannelConfig) -> Result<ShmReceiver<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let channel = Channel::create(name, config, message_type, Role::Receiver)?;
        ShmReceiver::new(channel)
    }

    /// Opens channel `name`, created by its sender, and attaches as its receiver. Errors as
    /// for [`ShmSender::open`](crate::ShmSender::open).
    pub fn open(name: &str, config: &ChannelConfig) -> Result<ShmReceiver<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let channel = Channel::open(name, config, message_type, Role::Receiver)?;
        ShmReceiver::new(channel)
    }

    fn new(channel: Channel) -> Result<ShmReceiver<T>> {
        let mut cursors = Vec::with_capacity(channel.slots);
        for slot in 0..channel.slots {
            let head = channel
                .index(Channel::head_at(slot))
                .load(Ordering::Acquire);
            if !head.is_multiple_of(8) {
                return Err(channel.corrupted(format!("ring {slot} starts at unaligned {head}")));
            }
            let ring = Ring::new(channel.ring_at(slot), channel.capacity as usize)
                .ok_or_else(|| channel.corrupted(format!("ring {slot} misplaced")))?;
            let map = channel.map();
            // SAFETY: the resolved addresses are kept in the receiver beside `channel`,
            // which owns the mapping; they are used only through it and dropped with it
            // (a guard borrows the receiver), never handed out.
            let (ring, head_word, sender_sleeps) = unsafe {
                (
                    map.resolve_ring(ring),
                    map.resolve_u64(Channel::head_at(slot)),
                    map.resolve_u32(slot_base(slot) + S_SENDER + END_SLEEPS),
                )
            };
            // The ring starts zeroed: position 0 holds zero or its record's header.
            cursors.push(Cursor {
                ring,
                head_word,
                sender_sleeps,
                head,
                tail: head,
                cleared: head == 0,
            });
        }
        Ok(ShmReceiver {
            channel,
            cursors,
            next_slot: 0,
            _message: PhantomData,
        })
    }

    /// Each ring's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.channel.capacity as usize
    }

    /// How many senders may be attached at once.
    pub fn max_senders(&self) -> usize {
        self.channel.slots
    }

    /// The next message where it lies in the ring, waiting for one. It is released (its
    /// space given back to the sender) when the guard drops.
    ///
    /// Errors: `PeerClosed` / `PeerDied` once the rings are empty and no sender is left
    /// (one closed or died and none is attached); `Corrupted` when a ring's indices or
    /// record headers are inconsistent.
    #[inline]
    pub fn recv_ref(&mut self) -> Result<RecvGuard<'_, T>> {
        self.recv_ref_until(Deadline::Never)
    }

    /// The next message if one is ready.
    pub fn try_recv_ref(&mut self) -> Result<Option<RecvGuard<'_, T>>> {
        match self.recv_ref_until(Deadline::Now) {
            Ok(guard) => Ok(Some(guard)),
            Err(err) if err.kind() == ErrorKind::Full => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The next message, waiting at most `timeout`.
    pub fn recv_ref_timeout(&mut self, timeout: Duration) -> Result<RecvGuard<'_, T>> {
        self.recv_ref_until(Deadline::after(timeout))
    }

    #[inline(always)]
    fn recv_ref_until(&mut self, deadline: Deadline) -> Result<RecvGuard<'_, T>> {
        if let Some(found) = self.next_on_header() {
            return Ok(self.guard(found));
        }
        self.recv_ref_slow(deadline)
    }

    /// The common case without a loop or a `Result`: the ring after the last one read has a
    /// message record at its `head`, taken on its header alone (the sender zeroed that word
    /// first), that passes the checks of [`next_record`](Self::next_record). Anything else
    /// (padding, `tail` to read, an empty ring, a record that fails a check and must be
    /// reported) is left to the full path.
    #[inline(always)]
    fn next_on_header(&mut self) -> Option<Found> {
        let slot = self.next_slot;
        let Cursor {
            ring,
            head,
            tail,
            cleared,
            ..
        } = *self.cursors.get(slot)?;
        if !cleared {
            return None;
        }
        let capacity = self.channel.capacity;
        let word = ring.word(head).load(Ordering::Acquire);
        let (payload_len, tag, next_cleared) = parse_header(word, head)?;
        let to_end = capacity - (head & (capacity - 1));
        let available = if tail > head { tail - head } else { to_end };
        let len = record_len(payload_len);
        if tag != TAG_MESSAGE || len > to_end || len > available {
            return None;
        }
        self.next_slot = next_slot(slot, self.channel.slots);
        Some((
            slot,
            (head & (capacity - 1)) + RECORD_HEADER,
            payload_len as usize,
            next_cleared,
        ))
    }

    #[inline(never)]
    fn recv_ref_slow(&mut self, deadline: Deadline) -> Result<RecvGuard<'_, T>> {
        let mut look_at_tail = false;
        loop {
            if let Some(found) = self.next_any(look_at_tail)? {
                return Ok(self.guard(found));
            }
            // Empty: a closed or dead sender means nothing more will come, once its last
            // published records are drained (they are re-checked after the status).
            if let Err(err) = self.channel.peer_status(false) {
                if self.next_any(true)?.is_none() {
                    return Err(err);
                }
                continue;
            }
            if let Deadline::Now = deadline {
                return Err(Error::new(ErrorKind::Full, "empty"));
            }
            // Spin on the rings themselves, so that a record is read the moment its header
            // is written, without a detour through the waiting code.
            for _ in 0..self.channel.spin {
                std::hint::spin_loop();
                if let Some(found) = self.next_any(false)? {
                    return Ok(self.guard(found));
                }
            }
            let channel = &self.channel;
            let cursors = &self.cursors;
            let timeout_error = || match deadline {
                // `Full` is the internal "nothing now" signal of `try_recv_ref`.
                Deadline::Now => Error::new(ErrorKind::Full, "empty"),
                _ => Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no message on channel `{}` before the deadline",
                        channel.segment.name()
                    ),
                ),
            };
            // A moved `tail` (a sleeping receiver is woken after the sender stores it), or
            // a header where a zeroed word was.
            let changed = || {
                cursors.iter().enumerate().any(|(slot, cursor)| {
                    cursor.cleared
                        && parse_header(
                            channel
                                .index(channel.header_at(slot, cursor.head))
                                .load(Ordering::Acquire),
                            cursor.head,
                        )
                        .is_some()
                        || channel
                            .index(Channel::tail_at(slot))
                            .load(Ordering::Acquire)
                            != cursor.tail
                })
            };
            if deadline.passed() {
                return Err(timeout_error());
            }
            let waited = channel.wait_until(
                changed,
                DATA_SEQ,
                RECEIVER_WAITING,
                0,
                deadline,
                timeout_error,
            );
            if let Err(err) = waited {
                if err.is_peer_gone() && self.next_any(true)?.is_some() {
                    continue;
                }
                return Err(err);
            }
            look_at_tail = true;
        }
    }

    fn guard(&mut self, (slot, start, len, next_cleared): Found) -> RecvGuard<'_, T> {
        RecvGuard {
            ring: self.cursors[slot].ring,
            receiver: self,
            slot,
            start,
            len,
            next_cleared,
        }
    }

    /// The next published message of any ring, starting with `next_slot`.
    fn next_any(&mut self, look_at_tail: bool) -> Result<Option<Found>> {
        let slots = self.channel.slots;
        let mut slot = self.next_slot;
        for _ in 0..slots {
            if let Some((start, len, next_cleared)) = self.next_record(slot, look_at_tail)? {
                self.next_slot = next_slot(slot, slots);
                return Ok(Some((slot, start, len, next_cleared)));
            }
            slot = next_slot(slot, slots);
        }
        Ok(None)
    }

    /// The next committed message record of ring `slot`, skipping padding:
    /// `(mapping offset, length, whether the word after it was zeroed)`.
    ///
    /// A record is taken on its header alone when the record before said that the sender
    /// zeroed this word first (`cleared`): then the word holds either zero or the header
    /// written for this position. Otherwise (and when `look_at_tail` asks for it) the
    /// sender's `tail` decides, as it always does for the first record a receiver reads.
    fn next_record(
        &mut self,
        slot: usize,
        look_at_tail: bool,
    ) -> Result<Option<(u64, usize, bool)>> {
        let capacity = self.channel.capacity;
        loop {
            let Cursor {
                head,
                tail,
                cleared,
                ..
            } = self.cursors[slot];
            let offset = head & (capacity - 1);
            let to_end = capacity - offset;
            let at = self.channel.header_at(slot, head);
            let word = self.channel.index(at).load(Ordering::Acquire);
            let parsed = parse_header(word, head);
            let published = tail > head;
            if !(published || cleared && parsed.is_some()) {
                if cleared && !look_at_tail {
                    return Ok(None);
                }
                let fresh = self
                    .channel
                    .index(Channel::tail_at(slot))
                    .load(Ordering::Acquire);
                // `tail` may trail our `head` by the record taken on its header alone.
                if fresh.saturating_add(capacity) < head
                    || fresh > head + capacity
                    || !fresh.is_multiple_of(8)
                {
                    return Err(self.channel.corrupted(format!(
                        "sender position {fresh} inconsistent with receiver position {head} in ring {slot} of {capacity} bytes"
                    )));
                }
                self.cursors[slot].tail = fresh;
                if fresh <= head {
                    return Ok(None);
                }
                // Published: the acquire load of `tail` made its header visible.
                continue;
            }
            // Bytes known to be published, or at least the record's own when `tail` is
            // behind.
            let available = if published { tail - head } else { to_end };
            let Some((payload_len, tag, next_cleared)) = parsed else {
                return Err(self.channel.corrupted(format!(
                    "no record header for position {head} at ring offset {offset} (found {word:#018x})"
                )));
            };
            match tag {
                TAG_PADDING => {
                    if to_end > available {
                        return Err(self.channel.corrupted(format!(
                            "padding at ring offset {offset} runs past the {available} published bytes"
                        )));
                    }
                    self.advance(slot, to_end, next_cleared);
                }
                TAG_MESSAGE => {
                    let len = record_len(payload_len);
                    if len > to_end || len > available {
                        return Err(self.channel.corrupted(format!(
                            "record at ring offset {offset} claims {payload_len} bytes, but {} are published before the end",
                            available.min(to_end).saturating_sub(RECORD_HEADER)
                        )));
                    }
                    return Ok(Some((
                        offset + RECORD_HEADER,
                        payload_len as usize,
                        next_cleared,
                    )));
                }
                other => {
                    return Err(self.channel.corrupted(format!(
                        "record at ring offset {offset} has unknown tag {other}"
                    )));
                }
            }
        }
    }

    #[inline(always)]
    pub(super) fn advance(&mut self, slot: usize, bytes: u64, next_cleared: bool) {
        let cursor = &mut self.cursors[slot];
        cursor.head += bytes;
        cursor.cleared = next_cleared;
        cursor.head_word.get().store(cursor.head, Ordering::Release);
        // A polling sender never sleeps: nothing to wake (`notify` looks again).
        if cursor.sender_sleeps.get().load(Ordering::Relaxed) != SLEEPS_NEVER {
            let base = slot_base(slot);
            self.channel
                .notify(base + S_SENDER, base + S_SPACE_SEQ, base + S_SENDER_WAITING);
        }
    }
}

impl<T: DeserializeOwned> ShmReceiver<T> {
    /// Receives the next message, waiting for one. A record that does not decode is skipped
    /// and reported as [`Decode`](ErrorKind::Decode); the channel stays usable.
    pub fn recv(&mut self) -> Result<T> {
        self.recv_ref()?.decode()
    }

    /// Receives a message if one is ready.
    pub fn try_recv(&mut self) -> Result<Option<T>> {
        match self.try_recv_ref()? {
            Some(guard) => guard.decode().map(Some),
            None => Ok(None),
        }
    }

    /// Receives the next message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.recv_ref_timeout(timeout)?.decode()
    }
}

impl<T: DeserializeOwned> ipc_core::Receiver for ShmReceiver<T> {
    type Message = T;

    fn recv(&mut self) -> Result<T> {
        ShmReceiver::recv(self)
    }

    fn try_recv(&mut self) -> Result<Option<T>> {
        ShmReceiver::try_recv(self)
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        ShmReceiver::recv_timeout(self, timeout)
    }
}
