//! Typed channels over single-producer, single-consumer byte rings in shared memory: one
//! ring per sender slot, so that several producer processes can feed one consumer without a
//! shared lock (a producer that dies can never block the others).
//!
//! # Layout of a channel segment
//!
//! After the 128-byte segment header, one 64-byte line per writer, so that the ends never
//! write to the same cache line; within a slot, what the sender writes and what the receiver
//! writes lie in different 128-byte blocks, because x86 cores fetch lines in aligned pairs:
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 128 | receiver pid (u32), state (u32), start time (u64), sleeps (u32), slot count `n` (u32) at 152 | receiver |
//! | 192 | `data_seq` futex word (u32), `receiver_waiting` (u32) | both |
//! | 256 + 256·i | slot i: `tail`, bytes ever published (u64) | sender i |
//! | 320 + 256·i | slot i: sender pid (u32), state (u32), start time (u64), sleeps (u32) | sender i |
//! | 384 + 256·i | slot i: `head`, bytes ever released (u64) | receiver |
//! | 448 + 256·i | slot i: `space_seq` futex word (u32), `sender_waiting` (u32) | both |
//! | 256 + 256·n + capacity·i | ring i: `capacity` bytes, a power of two | sender i |
//!
//! A record is an 8-byte header and the payload, padded to a multiple of 8. The header is
//! one little-endian `u64`: the payload length (u32), then a stamp (u32): the low 32 bits
//! of the record's position (bytes ever written before it, a multiple of 8) with the tag in
//! bits 0-1 (1 message, 2 padding) and bit 2 set when the sender zeroed the header word
//! after the record before publishing it. A record never wraps: when it does not fit before
//! the end of the ring, the sender fills the rest with a padding record and starts at
//! offset 0.
//!
//! The sender writes the payload, zeroes the next header word when it is free space, stores
//! the header last (release), then `tail`. The header commits the record: a receiver whose
//! previous record carried bit 2 knows the word at its position holds zero or this
//! position's header, and takes the record on the header alone, polling one line instead of
//! `tail` and then the record. Without bit 2 (the ring was full there, or a new receiver
//! starts mid-ring) the word may hold an earlier lap's bytes, and `tail` decides. `tail`
//! still serves the blocking wake-ups, the sender's restarts and the checks.
//!
//! # Trust
//!
//! Each end keeps its own copy of the index it writes (`tail` for a sender, `head` for the
//! receiver), of the capacity and of the slot count; what it reads of the other's index and
//! of every record header is checked against them before use, so a peer that scribbles over
//! the segment causes [`ErrorKind::Corrupted`] errors, never an access outside the ring.
//! Payloads carry no checksum: scribbled bytes that happen to form a well-framed record come
//! out as a message (with wrong contents, or failing to decode). A
//! record taken on its header alone must fit before the ring's end (and before `tail` when
//! that is known to be ahead); `tail` may trail `head` by at most a ring. A sender that
//! attaches where another died between a header and its `tail` store takes over that
//! committed record (a header stamped for the position, of a length that fits).

mod config;
mod guard;
mod layout;
mod receiver;
mod sender;
mod shared;
mod slot;
#[cfg(test)]
mod tests;

pub use self::config::ChannelConfig;
#[cfg(feature = "baseline")]
pub(crate) use self::config::{DEFAULT_SPIN, DEFAULT_YIELD};
pub use self::guard::RecvGuard;
pub use self::layout::{MAX_CAPACITY, MAX_SENDERS, MIN_CAPACITY};
pub use self::receiver::ShmReceiver;
pub use self::sender::ShmSender;
pub use self::slot::SendSlot;
