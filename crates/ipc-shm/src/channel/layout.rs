//! The channel segment's layout: offsets, record headers, limits.

use crate::segment::HEADER_LEN;

pub(super) const RX_LINE: usize = 128;
pub(super) const RX_SLOT_COUNT: usize = 152;
pub(super) const DATA_SEQ: usize = 192;
pub(super) const RECEIVER_WAITING: usize = 196;
pub(super) const SLOTS: usize = 256;
pub(super) const SLOT_LEN: usize = 256;
// Offsets inside a slot.
pub(super) const S_TAIL: usize = 0;
pub(super) const S_SENDER: usize = 64;
pub(super) const S_HEAD: usize = 128;
pub(super) const S_SPACE_SEQ: usize = 192;
pub(super) const S_SENDER_WAITING: usize = 196;

// Offsets inside an end's line.
pub(super) const END_PID: usize = 0;
pub(super) const END_STATE: usize = 4;
pub(super) const END_START: usize = 8;
/// How this end waits, so that the other end knows what waking it takes: one of
/// [`SLEEPS_NEVER`], [`SLEEPS_FENCED`], [`SLEEPS_MEMBARRIER`].
pub(super) const END_SLEEPS: usize = 16;

/// The end only polls (`WaitMode::Polling`): it never sleeps, waking it takes nothing.
pub(super) const SLEEPS_NEVER: u32 = 0;
/// The end sleeps on its futex after announcing it with a `SeqCst` fence between the
/// announcement and its last look: a waker fences between its index store and its look at
/// the announcement (Dekker's pattern, a fence on each side).
pub(super) const SLEEPS_FENCED: u32 = 1;
/// The end sleeps on its futex after announcing it with `membarrier(GLOBAL_EXPEDITED)`
/// between the announcement and its last look, which runs a barrier on every CPU running a
/// registered process: a waker whose process is registered needs no fence of its own, only
/// program order (an asymmetric fence: the rare sleep pays, not every message).
pub(super) const SLEEPS_MEMBARRIER: u32 = 2;

pub(super) const END_DETACHED: u32 = 0;
pub(super) const END_ATTACHED: u32 = 1;
pub(super) const END_CLOSED: u32 = 2;

pub(super) const RECORD_HEADER: u64 = 8;
pub(super) const TAG_MESSAGE: u32 = 1;
pub(super) const TAG_PADDING: u32 = 2;
pub(super) const TAG_MASK: u32 = 3;
/// In a record's stamp: the sender zeroed the header word after the record before it
/// published the record, so that word is either zero or the next record's header.
pub(super) const NEXT_CLEARED: u32 = 4;

/// A record header as one little-endian `u64`: the payload length, then the stamp (the low
/// 32 bits of the record's position, which is a multiple of 8, with the tag and
/// [`NEXT_CLEARED`] in the low bits).
#[inline]
pub(super) fn header_word(position: u64, payload_len: u64, tag: u32, next_cleared: bool) -> u64 {
    let stamp = (position as u32 & !7) | tag | if next_cleared { NEXT_CLEARED } else { 0 };
    (payload_len & u64::from(u32::MAX)) | u64::from(stamp) << 32
}

/// The header `word` read at `position`: `(payload length, tag, next cleared)` if its stamp
/// was written for this position, `None` if it holds a zeroed word or an earlier lap's bytes.
#[inline]
pub(super) fn parse_header(word: u64, position: u64) -> Option<(u64, u32, bool)> {
    let stamp = (word >> 32) as u32;
    (stamp & !7 == position as u32 & !7 && stamp & TAG_MASK != 0).then_some((
        word & u64::from(u32::MAX),
        stamp & TAG_MASK,
        stamp & NEXT_CLEARED != 0,
    ))
}

/// The smallest ring.
pub const MIN_CAPACITY: usize = 64;
/// The largest ring (record lengths are 32-bit).
pub const MAX_CAPACITY: usize = 1 << 31;
/// The most sender processes one channel can have attached at once.
pub const MAX_SENDERS: usize = 64;

/// Fingerprint of this layout, stored in the header so that a build with another layout
/// refuses the segment instead of misreading it.
pub(super) fn layout_hash() -> u64 {
    ipc_core::wire::fnv1a64(
        b"ipc-shm channel: header 128, receiver 128 (pid, state, start, sleeps 16: 0 never, 1 fenced, 2 membarrier), slot count 152, data futex 192, \
          slots 256 x 256 (tail 0, sender 64, head 128, space futex 192), rings after slots, \
          record header u64 (len u32, stamp u32: position low bits | tag 1-2 | next zeroed 4), align 8",
    )
}

#[inline]
pub(super) fn record_len(payload_len: u64) -> u64 {
    RECORD_HEADER + payload_len.next_multiple_of(8)
}

/// The slot after `slot` of `slots`, round robin (without a division).
#[inline]
pub(super) fn next_slot(slot: usize, slots: usize) -> usize {
    if slot + 1 >= slots { 0 } else { slot + 1 }
}

#[inline]
pub(super) fn slot_base(slot: usize) -> usize {
    SLOTS + slot * SLOT_LEN
}

pub(super) fn segment_len(slots: usize, capacity: usize) -> Option<usize> {
    let per_slot = capacity.checked_add(SLOT_LEN)?;
    per_slot.checked_mul(slots)?.checked_add(SLOTS)
}

const _: () = assert!(RX_LINE >= HEADER_LEN && SLOTS >= DATA_SEQ + 64);
