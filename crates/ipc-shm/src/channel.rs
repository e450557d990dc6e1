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

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, MessageType, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::process::ProcessId;
use crate::segment::{HEADER_LEN, Kind, Segment, Spec};
use crate::sys::{self, Mapping};
use crate::wait::{Deadline, LIVENESS_INTERVAL, WaitMode};

const RX_LINE: usize = 128;
const RX_SLOT_COUNT: usize = 152;
const DATA_SEQ: usize = 192;
const RECEIVER_WAITING: usize = 196;
const SLOTS: usize = 256;
const SLOT_LEN: usize = 256;
// Offsets inside a slot.
const S_TAIL: usize = 0;
const S_SENDER: usize = 64;
const S_HEAD: usize = 128;
const S_SPACE_SEQ: usize = 192;
const S_SENDER_WAITING: usize = 196;

// Offsets inside an end's line.
const END_PID: usize = 0;
const END_STATE: usize = 4;
const END_START: usize = 8;
/// 1 if this end sleeps on its futex when it waits (blocking mode), 0 if it only polls, so
/// that the other end can skip the fence and the check that waking it would take.
const END_SLEEPS: usize = 16;

const END_DETACHED: u32 = 0;
const END_ATTACHED: u32 = 1;
const END_CLOSED: u32 = 2;

/// How many times a blocking wait polls before it yields, by default.
pub(crate) const DEFAULT_SPIN: u32 = 100;
/// How long a blocking wait yields its core before it sleeps on the futex, by default.
pub(crate) const DEFAULT_YIELD: Duration = Duration::from_micros(50);

const RECORD_HEADER: u64 = 8;
const TAG_MESSAGE: u32 = 1;
const TAG_PADDING: u32 = 2;
const TAG_MASK: u32 = 3;
/// In a record's stamp: the sender zeroed the header word after the record before it
/// published the record, so that word is either zero or the next record's header.
const NEXT_CLEARED: u32 = 4;

/// A record header as one little-endian `u64`: the payload length, then the stamp (the low
/// 32 bits of the record's position, which is a multiple of 8, with the tag and
/// [`NEXT_CLEARED`] in the low bits).
#[inline]
fn header_word(position: u64, payload_len: u64, tag: u32, next_cleared: bool) -> u64 {
    let stamp = (position as u32 & !7) | tag | if next_cleared { NEXT_CLEARED } else { 0 };
    (payload_len & u64::from(u32::MAX)) | u64::from(stamp) << 32
}

/// The header `word` read at `position`: `(payload length, tag, next cleared)` if its stamp
/// was written for this position, `None` if it holds a zeroed word or an earlier lap's bytes.
#[inline]
fn parse_header(word: u64, position: u64) -> Option<(u64, u32, bool)> {
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
fn layout_hash() -> u64 {
    ipc_core::fnv1a64(
        b"ipc-shm channel: header 128, receiver 128 (pid, state, start, sleeps 16), slot count 152, data futex 192, \
          slots 256 x 256 (tail 0, sender 64, head 128, space futex 192), rings after slots, \
          record header u64 (len u32, stamp u32: position low bits | tag 1-2 | next zeroed 4), align 8",
    )
}

#[inline]
fn record_len(payload_len: u64) -> u64 {
    RECORD_HEADER + payload_len.next_multiple_of(8)
}

/// The slot after `slot` of `slots`, round robin (without a division).
#[inline]
fn next_slot(slot: usize, slots: usize) -> usize {
    if slot + 1 >= slots { 0 } else { slot + 1 }
}

#[inline]
fn slot_base(slot: usize) -> usize {
    SLOTS + slot * SLOT_LEN
}

fn segment_len(slots: usize, capacity: usize) -> Option<usize> {
    let per_slot = capacity.checked_add(SLOT_LEN)?;
    per_slot.checked_mul(slots)?.checked_add(SLOTS)
}

/// How a channel is created or opened.
///
/// ```
/// use std::time::Duration;
/// use ipc_shm::{ChannelConfig, WaitMode};
///
/// let config = ChannelConfig::new()
///     .capacity(1 << 20)
///     .max_senders(4)
///     .wait_mode(WaitMode::Polling)
///     .open_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_capacity(), 1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    capacity: usize,
    max_senders: usize,
    wait_mode: WaitMode,
    spin: u32,
    yield_for: Duration,
    open_timeout: Duration,
    message_type: Option<MessageType>,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            capacity: 256 * 1024,
            max_senders: 1,
            wait_mode: WaitMode::Blocking,
            spin: DEFAULT_SPIN,
            yield_for: DEFAULT_YIELD,
            open_timeout: Duration::from_secs(5),
            message_type: None,
        }
    }
}

impl ChannelConfig {
    /// The defaults: one sender, a ring of 256 KiB, blocking waits that spin 100 times and
    /// yield for 50 µs before they sleep, 5 s open timeout, the message type named by
    /// `std::any::type_name`.
    pub fn new() -> ChannelConfig {
        ChannelConfig::default()
    }

    /// The size in bytes of each sender's ring when creating: a power of two from
    /// [`MIN_CAPACITY`] to [`MAX_CAPACITY`]. The largest message is 8 bytes smaller.
    /// Ignored by `open`, which takes the creator's.
    pub fn capacity(mut self, bytes: usize) -> ChannelConfig {
        self.capacity = bytes;
        self
    }

    /// The ring's size in bytes.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }

    /// How many sender processes may be attached at once (1 to [`MAX_SENDERS`]), when
    /// creating. Each has its own ring of `capacity` bytes; messages of one sender arrive in
    /// order, those of different senders interleave. Ignored by `open`.
    pub fn max_senders(mut self, senders: usize) -> ChannelConfig {
        self.max_senders = senders;
        self
    }

    /// How this end waits for its peer.
    pub fn wait_mode(mut self, mode: WaitMode) -> ChannelConfig {
        self.wait_mode = mode;
        self
    }

    /// How many times a blocking wait polls before it sleeps.
    pub fn spin_iterations(mut self, spins: u32) -> ChannelConfig {
        self.spin = spins;
        self
    }

    /// How many times a blocking wait polls before it sleeps.
    pub fn get_spin_iterations(&self) -> u32 {
        self.spin
    }

    /// How long a blocking wait yields its core, after spinning, before it sleeps on the
    /// futex (50 µs by default). Yielding lets a peer on the same core run and spares a
    /// peer that answers soon the cost of a wake; zero sleeps right after the spins.
    pub fn yield_duration(mut self, duration: Duration) -> ChannelConfig {
        self.yield_for = duration;
        self
    }

    /// How long a blocking wait yields before it sleeps.
    pub fn get_yield_duration(&self) -> Duration {
        self.yield_for
    }

    /// How long `open` waits while the file at the name is not (yet) a rendezvous: one
    /// left blank, or written by something else (5 s by default). A name that does not
    /// exist is `NotFound` at once.
    pub fn open_timeout(mut self, timeout: Duration) -> ChannelConfig {
        self.open_timeout = timeout;
        self
    }

    /// The message type both ends must agree on; by default `MessageType::of::<T>()`.
    /// Name it explicitly when the two ends are built separately.
    pub fn message_type(mut self, message_type: MessageType) -> ChannelConfig {
        self.message_type = Some(message_type);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sender,
    Receiver,
}

/// What both ends hold: the segment, the validated capacity and slot count, and how to
/// wait. `slot` is the sender's slot (0 for the receiver).
#[derive(Debug)]
struct Channel {
    segment: Segment,
    role: Role,
    /// True once this end holds its slot; only then does dropping it close the slot (an
    /// `open` that failed to attach must not close the end of the process that holds it).
    attached: bool,
    slot: usize,
    slots: usize,
    capacity: u64,
    wait_mode: WaitMode,
    spin: u32,
    yield_for: Duration,
}

impl Channel {
    fn spec(message_type: &MessageType) -> Spec<'_> {
        Spec {
            kind: Kind::Channel,
            layout: layout_hash(),
            fingerprint: message_type.fingerprint(),
            type_name: message_type.name(),
        }
    }

    fn create(
        name: &str,
        config: &ChannelConfig,
        message_type: MessageType,
        role: Role,
    ) -> Result<Channel> {
        let capacity = config.capacity;
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "ring capacity of {capacity} bytes; expected a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}"
                ),
            ));
        }
        let slots = config.max_senders;
        if !(1..=MAX_SENDERS).contains(&slots) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{slots} senders; expected 1 to {MAX_SENDERS}"),
            ));
        }
        let len = segment_len(slots, capacity).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{slots} rings of {capacity} bytes exceed the address space"),
            )
        })?;
        let me = ProcessId::current();
        let sleeps = u32::from(config.wait_mode == WaitMode::Blocking);
        let line = match role {
            Role::Receiver => RX_LINE,
            Role::Sender => slot_base(0) + S_SENDER,
        };
        let segment = Segment::create(
            name,
            Channel::spec(&message_type),
            capacity as u64,
            len,
            |map| {
                map.u32_at(RX_SLOT_COUNT)
                    .store(slots as u32, Ordering::Relaxed);
                map.u32_at(line + END_PID).store(me.pid, Ordering::Relaxed);
                map.u64_at(line + END_START)
                    .store(me.start, Ordering::Relaxed);
                map.u32_at(line + END_SLEEPS)
                    .store(sleeps, Ordering::Relaxed);
                map.u32_at(line + END_STATE)
                    .store(END_ATTACHED, Ordering::Relaxed);
            },
        )?;
        Ok(Channel {
            segment,
            role,
            attached: true,
            slot: 0,
            slots,
            capacity: capacity as u64,
            wait_mode: config.wait_mode,
            spin: config.spin,
            yield_for: config.yield_for,
        })
    }

    fn open(
        name: &str,
        config: &ChannelConfig,
        message_type: MessageType,
        role: Role,
    ) -> Result<Channel> {
        let segment = Segment::open(name, Channel::spec(&message_type), config.open_timeout)?;
        let capacity = segment.capacity();
        let slots = segment.map().u32_at(RX_SLOT_COUNT).load(Ordering::Relaxed) as usize;
        let len = segment.map().len();
        let valid = capacity.is_power_of_two()
            && (MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&capacity)
            && (1..=MAX_SENDERS).contains(&slots)
            && segment_len(slots, capacity as usize) == Some(len);
        if !valid {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "channel `{name}` claims {slots} rings of {capacity} bytes in a segment of {len}"
                ),
            ));
        }
        let mut channel = Channel {
            segment,
            role,
            attached: false,
            slot: 0,
            slots,
            capacity,
            wait_mode: config.wait_mode,
            spin: config.spin,
            yield_for: config.yield_for,
        };
        match role {
            Role::Receiver => channel.attach(RX_LINE, "receiver")?,
            Role::Sender => {
                let mut last_err = None;
                for slot in 0..slots {
                    match channel.attach(slot_base(slot) + S_SENDER, "sender") {
                        Ok(()) => {
                            channel.slot = slot;
                            last_err = None;
                            break;
                        }
                        Err(err) => last_err = Some(err),
                    }
                }
                if let Some(err) = last_err {
                    return Err(if slots == 1 {
                        err
                    } else {
                        Error::new(
                            ErrorKind::AlreadyExists,
                            format!("channel `{name}` already has its {slots} senders attached"),
                        )
                    });
                }
            }
        }
        channel.attached = true;
        Ok(channel)
    }

    /// Claims the end at `line`: free, closed, or left by a dead process.
    fn attach(&self, line: usize, what: &str) -> Result<()> {
        let map = self.map();
        let me = ProcessId::current();
        let pid = map.u32_at(line + END_PID);
        let current = self.process_at(line);
        let state = map.u32_at(line + END_STATE).load(Ordering::Acquire);
        if state == END_ATTACHED && current.is_alive() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "channel `{}` already has a {what}: process {}",
                    self.segment.name(),
                    current.pid
                ),
            ));
        }
        if pid
            .compare_exchange(current.pid, me.pid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "channel `{}`: another process attached as {what} at the same time",
                    self.segment.name()
                ),
            ));
        }
        map.u64_at(line + END_START)
            .store(me.start, Ordering::Relaxed);
        map.u32_at(line + END_SLEEPS).store(
            u32::from(self.wait_mode == WaitMode::Blocking),
            Ordering::Relaxed,
        );
        map.u32_at(line + END_STATE)
            .store(END_ATTACHED, Ordering::Release);
        Ok(())
    }

    #[inline]
    fn map(&self) -> &Mapping {
        self.segment.map()
    }

    #[inline]
    fn word(&self, offset: usize) -> &AtomicU32 {
        self.map().u32_at(offset)
    }

    #[inline]
    fn index(&self, offset: usize) -> &AtomicU64 {
        self.map().u64_at(offset)
    }

    #[inline]
    fn tail_at(slot: usize) -> usize {
        slot_base(slot) + S_TAIL
    }

    #[inline]
    fn head_at(slot: usize) -> usize {
        slot_base(slot) + S_HEAD
    }

    /// The mapping offset of the record header at `position` of ring `slot`.
    #[inline]
    fn header_at(&self, slot: usize, position: u64) -> usize {
        self.ring_at(slot) + (position & (self.capacity - 1)) as usize
    }

    /// The mapping offset of ring `slot`.
    #[inline]
    fn ring_at(&self, slot: usize) -> usize {
        SLOTS + self.slots * SLOT_LEN + slot * self.capacity as usize
    }

    fn process_at(&self, line: usize) -> ProcessId {
        ProcessId {
            pid: self.map().u32_at(line + END_PID).load(Ordering::Relaxed),
            start: self.map().u64_at(line + END_START).load(Ordering::Relaxed),
        }
    }

    /// The state of the end at `line`: `Ok(true)` attached and alive (or not checked),
    /// `Ok(false)` never attached, or the error it ended with.
    fn end_status(&self, line: usize, what: &str, check_liveness: bool) -> Result<bool> {
        let state = self.word(line + END_STATE).load(Ordering::Acquire);
        match state {
            END_DETACHED => Ok(false),
            END_CLOSED => Err(Error::new(
                ErrorKind::PeerClosed,
                format!("the {what} of channel `{}` closed it", self.segment.name()),
            )),
            END_ATTACHED => {
                if !check_liveness {
                    return Ok(true);
                }
                let process = self.process_at(line);
                if process.is_alive() {
                    return Ok(true);
                }
                Err(Error::new(
                    ErrorKind::PeerDied,
                    format!(
                        "the {what} of channel `{}`, process {}, died",
                        self.segment.name(),
                        process.pid
                    ),
                ))
            }
            other => Err(self.corrupted(format!("{what} state word holds {other}"))),
        }
    }

    /// `Err(PeerClosed)` if the peer closed its end, `Err(PeerDied)` if it was attached and
    /// its process is gone; `Ok` while it lives or has not attached yet. For the receiver
    /// the peer is every sender: it is gone once no sender is attached and alive and at
    /// least one has closed or died.
    #[inline]
    fn peer_status(&self, check_liveness: bool) -> Result<()> {
        // A sender looks before every message: one load of a line the receiver writes only
        // when it attaches or closes.
        if !check_liveness
            && self.role == Role::Sender
            && self.word(RX_LINE + END_STATE).load(Ordering::Acquire) == END_ATTACHED
        {
            return Ok(());
        }
        self.peer_status_slow(check_liveness)
    }

    #[cold]
    fn peer_status_slow(&self, check_liveness: bool) -> Result<()> {
        match self.role {
            Role::Sender => self
                .end_status(RX_LINE, "receiver", check_liveness)
                .map(drop),
            Role::Receiver => {
                let mut gone = None;
                for slot in 0..self.slots {
                    match self.end_status(slot_base(slot) + S_SENDER, "sender", check_liveness) {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(err) if err.kind() == ErrorKind::Corrupted => return Err(err),
                        // A death outranks an orderly close in what we report.
                        Err(err) => {
                            if gone
                                .as_ref()
                                .is_none_or(|g: &Error| g.kind() != ErrorKind::PeerDied)
                            {
                                gone = Some(err);
                            }
                        }
                    }
                }
                gone.map_or(Ok(()), Err)
            }
        }
    }

    /// Waits until `changed()` holds, sleeping on the futex at `seq_offset` after announcing
    /// it in `waiting_offset`. Ends with the peer's death or close, or at the deadline
    /// (`timeout_error` makes the error then). Polls `spins` times first (a caller that
    /// spun already passes 0).
    fn wait_until(
        &self,
        changed: impl Fn() -> bool,
        seq_offset: usize,
        waiting_offset: usize,
        spins: u32,
        deadline: Deadline,
        timeout_error: impl FnOnce() -> Error,
    ) -> Result<()> {
        if let Deadline::Now = deadline {
            return Err(timeout_error());
        }
        for _ in 0..spins {
            if changed() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        if self.wait_mode == WaitMode::Blocking {
            // Before sleeping, yield for a short while: on a busy machine this lets the
            // peer run on our core, and when the peer is just slower than us (a big copy
            // per message) it spares it a futex wake per message.
            let yield_for = deadline
                .remaining()
                .map_or(self.yield_for, |left| left.min(self.yield_for));
            let started = Instant::now();
            while !yield_for.is_zero() && started.elapsed() < yield_for {
                if changed() {
                    return Ok(());
                }
                std::thread::yield_now();
            }
        }
        let seq = self.word(seq_offset);
        let waiting = self.word(waiting_offset);
        // Liveness costs system calls, so it is looked at once per interval, not per wait.
        let mut last_check = Instant::now();
        loop {
            match self.wait_mode {
                WaitMode::Blocking => {
                    let observed = seq.load(Ordering::Acquire);
                    waiting.store(1, Ordering::Relaxed);
                    // Pairs with the fence in `notify`: either the peer sees `waiting` and
                    // bumps `seq`, or we see its index change here.
                    fence(Ordering::SeqCst);
                    if changed() {
                        waiting.store(0, Ordering::Relaxed);
                        return Ok(());
                    }
                    sys::futex_wait(seq, observed, deadline.slice());
                    waiting.store(0, Ordering::Relaxed);
                }
                WaitMode::Polling => {
                    // Look after every pause (as the spin baseline does); the clock only
                    // now and then.
                    let slice = deadline.slice();
                    let started = Instant::now();
                    let mut spins = 0u32;
                    while !changed() {
                        std::hint::spin_loop();
                        spins = spins.wrapping_add(1);
                        if spins.is_multiple_of(1024) && started.elapsed() >= slice {
                            break;
                        }
                    }
                }
            }
            if changed() {
                return Ok(());
            }
            let check_liveness = last_check.elapsed() >= LIVENESS_INTERVAL;
            if check_liveness {
                last_check = Instant::now();
            }
            self.peer_status(check_liveness)?;
            if deadline.passed() {
                return Err(timeout_error());
            }
        }
    }

    /// Tells the peer whose end is at `peer_line`, which may be asleep on `seq_offset`,
    /// that an index moved. A polling peer never sleeps: nothing to do then.
    #[inline]
    fn notify(&self, peer_line: usize, seq_offset: usize, waiting_offset: usize) {
        if self.word(peer_line + END_SLEEPS).load(Ordering::Relaxed) == 0 {
            return;
        }
        self.notify_sleeper(seq_offset, waiting_offset);
    }

    fn notify_sleeper(&self, seq_offset: usize, waiting_offset: usize) {
        fence(Ordering::SeqCst);
        if self.word(waiting_offset).load(Ordering::Relaxed) != 0 {
            let seq = self.word(seq_offset);
            seq.fetch_add(1, Ordering::Release);
            sys::futex_wake(seq, 1);
        }
    }

    fn wake(&self, seq_offset: usize) {
        let seq = self.word(seq_offset);
        seq.fetch_add(1, Ordering::Release);
        sys::futex_wake(seq, i32::MAX as u32);
    }

    fn close(&self) {
        if !self.attached {
            return;
        }
        match self.role {
            Role::Sender => {
                let line = slot_base(self.slot) + S_SENDER;
                self.word(line + END_STATE)
                    .store(END_CLOSED, Ordering::Release);
                self.wake(DATA_SEQ);
            }
            Role::Receiver => {
                self.word(RX_LINE + END_STATE)
                    .store(END_CLOSED, Ordering::Release);
                for slot in 0..self.slots {
                    self.wake(slot_base(slot) + S_SPACE_SEQ);
                }
            }
        }
    }

    fn corrupted(&self, what: String) -> Error {
        Error::new(
            ErrorKind::Corrupted,
            format!("channel `{}`: {what}", self.segment.name()),
        )
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}

/// The sending end of a shared-memory channel of `T` messages.
///
/// Messages are serialised with postcard straight into the ring. `Ok` from a send means the
/// message is in the ring, visible to the receiver.
///
/// Only one sender may be attached to a channel at a time; the slot frees up when it is
/// dropped or its process dies.
pub struct ShmSender<T: ?Sized> {
    channel: Channel,
    tail: u64,
    head: u64,
    _message: PhantomData<fn(&T)>,
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

    fn send_until<U: Serialize + ?Sized>(&mut self, message: &U, deadline: Deadline) -> Result<()> {
        self.channel.peer_status(false)?;
        // Fast path: encode straight into the contiguous room, without measuring first.
        // postcard is called directly here because its "buffer full" is a plain value, where
        // an `ipc_core::Error` would allocate its message: this path must not allocate.
        for refresh in [false, true] {
            if refresh {
                let to_end = self.channel.capacity - self.tail_offset();
                let free = self.channel.capacity - (self.tail - self.head);
                if free >= to_end {
                    // The end of the ring was the limit, not the receiver: no use looking.
                    break;
                }
                self.refresh_head()?;
            }
            if let Some(room) = self.contiguous_room() {
                let offset = self.tail_offset();
                let slot = self.payload_mut(offset, room)?;
                match postcard::to_slice(message, slot) {
                    Ok(written) => {
                        let written = written.len() as u64;
                        self.publish(offset, written);
                        return Ok(());
                    }
                    Err(postcard::Error::SerializeBufferFull) => {}
                    // Any other failure is the value's own, worded as ipc-core does.
                    Err(err) => {
                        return Err(Error::new(
                            ErrorKind::Encode,
                            format!("cannot encode message: {err}"),
                        )
                        .with_source(err));
                    }
                }
            }
        }
        // Slow path: the message does not fit now. Measure it, then wait for room.
        let payload_len = ipc_core::encoded_len(message)? as u64;
        let offset = self.make_room(payload_len, deadline)?;
        let slot = self.payload_mut(offset, payload_len)?;
        let written = ipc_core::encode_into(message, slot)?;
        self.publish(offset, written as u64);
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
        Ok(ShmSender {
            channel,
            tail,
            head,
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
                self.write_record_header(offset, to_end - RECORD_HEADER, TAG_PADDING);
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

    fn payload_mut(&mut self, offset: u64, len: u64) -> Result<&mut [u8]> {
        let start = (self.channel.ring_at(self.channel.slot) as u64) + offset + RECORD_HEADER;
        // SAFETY: the range lies between our tail and the receiver's head (`make_room` or
        // `contiguous_room` checked it), which only the sender writes; the returned slice
        // borrows `self` mutably, so no other slice of this process overlaps it.
        let bytes = unsafe { self.channel.map().bytes_mut(start as usize, len as usize) };
        bytes.ok_or_else(|| {
            self.channel.corrupted(format!(
                "record at ring offset {offset} of {len} bytes outside the ring"
            ))
        })
    }

    /// Writes the header of the record at our `tail` (ring `offset`), which commits it: the
    /// receiver may take it from then on, before `tail` moves. First zeroes the header word
    /// after the record when that word is free space, and says so in the stamp.
    #[inline]
    fn write_record_header(&mut self, offset: u64, payload_len: u64, tag: u32) {
        let capacity = self.channel.capacity;
        let ring = self.channel.ring_at(self.channel.slot);
        let end = self.tail + record_len(payload_len);
        // The word at `end` is ours when it lies before the receiver's released bytes come
        // round again (`head` is never ahead of the real one, so this errs on the safe side).
        let next_cleared = end + RECORD_HEADER - self.head <= capacity;
        if next_cleared {
            self.channel
                .index(ring + (end & (capacity - 1)) as usize)
                .store(0, Ordering::Relaxed);
        }
        // Release: the payload and the zeroed word are visible before the stamp is.
        self.channel.index(ring + offset as usize).store(
            header_word(self.tail, payload_len, tag, next_cleared),
            Ordering::Release,
        );
    }

    fn publish(&mut self, offset: u64, payload_len: u64) {
        self.write_record_header(offset, payload_len, TAG_MESSAGE);
        self.tail += record_len(payload_len);
        self.channel
            .index(Channel::tail_at(self.channel.slot))
            .store(self.tail, Ordering::Release);
        self.channel.notify(RX_LINE, DATA_SEQ, RECEIVER_WAITING);
    }
}

/// Space reserved in the ring by [`ShmSender::reserve`]: write the message into it, then
/// [`commit`](SendSlot::commit). Dropping it without commit publishes nothing.
pub struct SendSlot<'a, T: ?Sized> {
    sender: &'a mut ShmSender<T>,
    offset: u64,
    len: usize,
}

impl<T: ?Sized> std::fmt::Debug for SendSlot<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendSlot")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: ?Sized> SendSlot<'_, T> {
    /// Publishes all reserved bytes as one message.
    pub fn commit(self) {
        let len = self.len;
        self.commit_len(len);
    }

    /// Publishes the first `len` bytes (at most the reserved length) as one message.
    pub fn commit_len(self, len: usize) {
        let len = len.min(self.len) as u64;
        self.sender.publish(self.offset, len);
    }
}

impl<T: ?Sized> Deref for SendSlot<'_, T> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let channel = &self.sender.channel;
        let start = channel.ring_at(channel.slot) + (self.offset + RECORD_HEADER) as usize;
        self.sender
            .channel
            .map()
            .bytes(start, self.len)
            .unwrap_or(&[])
    }
}

impl<T: ?Sized> DerefMut for SendSlot<'_, T> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (offset, len) = (self.offset, self.len as u64);
        // Checked when the slot was made, so this cannot fail.
        self.sender.payload_mut(offset, len).unwrap_or(&mut [])
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

/// The receiving end of a shared-memory channel of `T` messages.
///
/// [`recv`](ShmReceiver::recv) decodes an owned `T`; [`recv_ref`](ShmReceiver::recv_ref)
/// hands out the record where it lies in shared memory, to decode in place with borrowed
/// `&str` / `&[u8]` fields.
pub struct ShmReceiver<T> {
    channel: Channel,
    /// Per sender slot: our `head` and the last `tail` we validated.
    cursors: Vec<Cursor>,
    /// The slot to look at first, for fairness between senders.
    next_slot: usize,
    _message: PhantomData<fn() -> T>,
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    head: u64,
    /// The `tail` last read; it may trail `head` (records are taken on their headers).
    tail: u64,
    /// The sender zeroed the header word at `head` before publishing the record before it.
    cleared: bool,
}

/// A record found: `(slot, mapping offset, length, whether the word after it was zeroed)`.
type Found = (usize, usize, usize, bool);

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
    /// when this receiver is dropped. Errors as for [`ShmSender::create`].
    pub fn create(name: &str, config: &ChannelConfig) -> Result<ShmReceiver<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let channel = Channel::create(name, config, message_type, Role::Receiver)?;
        ShmReceiver::new(channel)
    }

    /// Opens channel `name`, created by its sender, and attaches as its receiver. Errors as
    /// for [`ShmSender::open`].
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
            // The ring starts zeroed: position 0 holds zero or its record's header.
            cursors.push(Cursor {
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

    fn recv_ref_until(&mut self, deadline: Deadline) -> Result<RecvGuard<'_, T>> {
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
    ) -> Result<Option<(usize, usize, bool)>> {
        let capacity = self.channel.capacity;
        loop {
            let Cursor {
                head,
                tail,
                cleared,
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
                        at + RECORD_HEADER as usize,
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

    fn advance(&mut self, slot: usize, bytes: u64, next_cleared: bool) {
        let cursor = &mut self.cursors[slot];
        cursor.head += bytes;
        cursor.cleared = next_cleared;
        self.channel
            .index(Channel::head_at(slot))
            .store(cursor.head, Ordering::Release);
        let base = slot_base(slot);
        self.channel
            .notify(base + S_SENDER, base + S_SPACE_SEQ, base + S_SENDER_WAITING);
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

/// A received message where it lies in shared memory. Dropping it gives its space back to
/// the sender.
///
/// ```no_run
/// # fn demo(receiver: &mut ipc_shm::ShmReceiver<()>) -> ipc_core::Result<()> {
/// let message = receiver.recv_ref()?;
/// let text: &str = message.decode()?; // borrows from the ring, no copy
/// println!("{text} ({} bytes)", message.len());
/// # Ok(()) }
/// ```
pub struct RecvGuard<'a, T> {
    receiver: &'a mut ShmReceiver<T>,
    slot: usize,
    start: usize,
    len: usize,
    next_cleared: bool,
}

impl<T> std::fmt::Debug for RecvGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvGuard")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<T> RecvGuard<'_, T> {
    /// The message's bytes.
    pub fn bytes(&self) -> &[u8] {
        // In range: `next_record` checked the record against the ring's bounds.
        self.receiver
            .channel
            .map()
            .bytes(self.start, self.len)
            .unwrap_or(&[])
    }

    /// Decodes the message in place as `U`; borrowed fields point into shared memory.
    ///
    /// Any `U` can be asked for; the channel's type `T` (or its borrowing twin, such as
    /// `Chat<'a>` for `Chat<'static>`) is what the sender wrote.
    pub fn decode<'b, U: Deserialize<'b>>(&'b self) -> Result<U> {
        ipc_core::decode(self.bytes())
    }
}

impl<T> Deref for RecvGuard<'_, T> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl<T> Drop for RecvGuard<'_, T> {
    fn drop(&mut self) {
        self.receiver
            .advance(self.slot, record_len(self.len as u64), self.next_cleared);
    }
}

const _: () = assert!(RX_LINE >= HEADER_LEN && SLOTS >= DATA_SEQ + 64);

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("unit-ch-{tag}-{}", std::process::id())
    }

    fn pair<T: Serialize + DeserializeOwned>(
        tag: &str,
        capacity: usize,
    ) -> (ShmSender<T>, ShmReceiver<T>) {
        let config = ChannelConfig::new().capacity(capacity);
        let receiver = ShmReceiver::create(&name(tag), &config).unwrap();
        let sender = ShmSender::open(&name(tag), &config).unwrap();
        (sender, receiver)
    }

    #[test]
    fn messages_of_every_size_wrap_around_in_order() {
        let (mut sender, mut receiver) = pair::<Vec<u8>>("wrap", 256);
        let mut expected = std::collections::VecDeque::new();
        for (seq, round) in (0..2_000usize).enumerate() {
            let len = (round * 7) % 200;
            let message: Vec<u8> = (0..len).map(|i| (i + seq) as u8).collect();
            match sender.try_send(&message) {
                Ok(()) => expected.push_back(message),
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
                    while let Some(got) = receiver.try_recv().unwrap() {
                        assert_eq!(got, expected.pop_front().unwrap());
                    }
                    sender.try_send(&message).unwrap();
                    expected.push_back(message);
                }
            }
        }
        while let Some(got) = receiver.try_recv().unwrap() {
            assert_eq!(got, expected.pop_front().unwrap());
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn too_large_full_and_empty_are_distinct_errors() {
        let (mut sender, mut receiver) = pair::<Vec<u8>>("limits", 128);
        let err = sender.try_send(&vec![1u8; 121]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert_eq!(
            err.to_string(),
            "ring of 128 bytes cannot hold a message of 122 (at most 120)"
        );
        // 119 bytes of payload + 1 length byte = the largest message.
        sender.try_send(&vec![2u8; 119]).unwrap();
        let err = sender.try_send(&vec![]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Full, "{err}");
        let err = sender
            .send_timeout(&vec![], Duration::from_millis(30))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert_eq!(receiver.recv().unwrap(), vec![2u8; 119]);
        assert!(receiver.try_recv().unwrap().is_none());
        // A timeout under one second waits (raw_sync's bug made such waits fail at once).
        let started = Instant::now();
        let err = receiver
            .recv_timeout(Duration::from_millis(150))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn zero_copy_slots_and_borrowed_decoding() {
        let (mut sender, mut receiver) = pair::<String>("slots", 1024);
        let mut slot = sender.reserve(10).unwrap();
        slot[..3].copy_from_slice(&[2, b'h', b'i']);
        slot.commit_len(3);
        let _abandoned = sender.try_reserve(100).unwrap(); // publishes nothing
        sender.send(&"second".to_owned()).unwrap();
        {
            let message = receiver.recv_ref().unwrap();
            let text: &str = message.decode().unwrap();
            assert_eq!(text, "hi");
            let range = receiver_range(&message);
            assert!(range.contains(&(text.as_ptr() as usize)));
        }
        assert_eq!(receiver.recv().unwrap(), "second");
        // A record that does not decode is skipped with an error; the channel goes on.
        let mut slot = sender.reserve(1).unwrap();
        slot[0] = 0xff;
        slot.commit();
        sender.send(&"third".to_owned()).unwrap();
        let err = receiver.recv().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
        assert_eq!(receiver.recv().unwrap(), "third");
    }

    fn receiver_range<T>(guard: &RecvGuard<'_, T>) -> std::ops::Range<usize> {
        let start = guard.as_ptr() as usize;
        start..start + guard.len()
    }

    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to be encoded"))
        }
    }

    #[test]
    fn a_value_that_fails_to_encode_is_an_encode_error_and_sends_nothing() {
        let (mut sender, mut receiver) = pair::<u32>("encode", 256);
        let err = sender.send_as(&Unencodable).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        assert!(receiver.try_recv().unwrap().is_none());
        sender.send(&3).unwrap();
        assert_eq!(receiver.recv().unwrap(), 3);
    }

    #[test]
    fn bytes_of_an_earlier_lap_never_pass_for_a_record() {
        let (mut sender, mut receiver) = pair::<Vec<u8>>("stale", 256);
        // Lap 1: a payload that carries, at ring offset 56, a perfect header (length 1, a
        // message, stamped for position 256 + 56) for the position the next lap will reach.
        // The payload starts at ring offset 10 (8-byte header, 2-byte length prefix).
        let mut payload = vec![0u8; 200];
        let at = 56 - 10;
        let forged = header_word(256 + 56, 1, TAG_MESSAGE, true);
        payload[at..at + 8].copy_from_slice(&forged.to_le_bytes());
        sender.send(&payload).unwrap();
        assert_eq!(receiver.recv().unwrap(), payload);
        // Lap 2: padding from 216 to the end, then a record at offset 0 that ends at 56.
        sender.send(&vec![5u8; 40]).unwrap();
        assert_eq!(receiver.recv().unwrap(), vec![5u8; 40]);
        // Offset 56 holds the old bytes, but nothing is published there.
        assert!(receiver.try_recv().unwrap().is_none());
    }

    #[test]
    fn a_sender_that_died_mid_record_is_continued_over_its_unpublished_bytes() {
        let config = ChannelConfig::new().capacity(256);
        let name = name("midrecord");
        let mut receiver = ShmReceiver::<u32>::create(&name, &config).unwrap();
        let mut first = ShmSender::<u32>::open(&name, &config).unwrap();
        first.send(&1).unwrap();
        // As if it died while writing its next record: bytes in the ring, not published.
        first.reserve(4).unwrap().copy_from_slice(&[0xff; 4]);
        first
            .channel
            .word(slot_base(0) + S_SENDER + END_STATE)
            .store(END_CLOSED, Ordering::Release);
        std::mem::forget(first);
        let mut second = ShmSender::<u32>::open(&name, &config).unwrap();
        second.send(&3).unwrap();
        assert_eq!(receiver.recv().unwrap(), 1);
        assert_eq!(receiver.recv().unwrap(), 3);
        assert!(receiver.try_recv().unwrap().is_none());
    }

    #[test]
    fn closing_either_end_is_peer_closed() {
        let (mut sender, mut receiver) = pair::<u32>("close", 256);
        sender.send(&7).unwrap();
        drop(sender);
        assert_eq!(receiver.recv().unwrap(), 7);
        let err = receiver.recv().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");

        let (mut sender, receiver) = pair::<u32>("close2", 256);
        drop(receiver);
        let err = sender.send(&1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
    }

    #[test]
    fn a_second_live_sender_is_refused_and_bad_configs_are_invalid() {
        let (mut sender, mut receiver) = pair::<u32>("second", 256);
        let err = ShmSender::<u32>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        let err = ShmSender::<String>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TypeMismatch, "{err}");
        // The refused openers must not close the ends they failed to take.
        let err = receiver
            .recv_timeout(Duration::from_millis(30))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        let err = ShmReceiver::<u32>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        sender.send(&9).unwrap();
        assert_eq!(receiver.recv().unwrap(), 9);
        drop(sender);
        let err = receiver.recv().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
        for capacity in [0, 100, 32, MAX_CAPACITY * 2] {
            let config = ChannelConfig::new().capacity(capacity);
            let err = ShmSender::<u32>::create(&name("cap"), &config).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{capacity}: {err}");
        }
    }

    #[test]
    fn scribbled_ring_yields_errors_not_panics() {
        let (mut sender, mut receiver) = pair::<Vec<u8>>("scribble", 512);
        let path = crate::segment::memory_path(&name("scribble")).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut errors = 0;
        for round in 0..20_000u64 {
            let _ = sender.try_send(&vec![round as u8; (round % 60) as usize]);
            // Scribble a few bytes anywhere in the segment (header, indices, ring).
            let offset = next() % (SLOTS as u64 + SLOT_LEN as u64 + 512);
            let bytes = next().to_le_bytes();
            // The sealed memory cannot grow: keep the write inside it.
            let n = ((next() % 8) as usize).min(len.saturating_sub(offset) as usize);
            std::os::unix::fs::FileExt::write_at(&file, &bytes[..n], offset).unwrap();
            match receiver.try_recv() {
                Ok(_) => {}
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0);
    }
}

#[cfg(test)]
mod multi_sender_tests {
    use super::*;

    #[test]
    fn senders_get_their_own_rings_and_free_slots_are_reused() {
        let name = format!("unit-mpsc-{}", std::process::id());
        let config = ChannelConfig::new().capacity(256).max_senders(2);
        let mut receiver = ShmReceiver::<u32>::create(&name, &config).unwrap();
        assert_eq!(receiver.max_senders(), 2);
        let mut a = ShmSender::<u32>::open(&name, &config).unwrap();
        let mut b = ShmSender::<u32>::open(&name, &config).unwrap();
        let err = ShmSender::<u32>::open(&name, &config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        for i in 0..10 {
            a.send(&i).unwrap();
            b.send(&(100 + i)).unwrap();
        }
        let mut from_a = Vec::new();
        let mut from_b = Vec::new();
        while let Some(value) = receiver.try_recv().unwrap() {
            if value < 100 {
                from_a.push(value);
            } else {
                from_b.push(value - 100);
            }
        }
        assert_eq!(from_a, (0..10).collect::<Vec<_>>());
        assert_eq!(from_b, (0..10).collect::<Vec<_>>());
        // One sender closing does not end the channel while the other is attached.
        drop(a);
        b.send(&7).unwrap();
        assert_eq!(receiver.recv().unwrap(), 7);
        // Its slot is free again.
        let mut c = ShmSender::<u32>::open(&name, &config).unwrap();
        c.send(&8).unwrap();
        assert_eq!(receiver.recv().unwrap(), 8);
        drop(b);
        drop(c);
        let err = receiver.recv().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
    }
}
