//! What both ends hold: the segment, attaching, liveness, waiting and waking.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, compiler_fence, fence};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, MessageType, Result};

use super::config::ChannelConfig;
use super::layout::{
    DATA_SEQ, END_ATTACHED, END_CLOSED, END_DETACHED, END_PID, END_SLEEPS, END_START, END_STATE,
    MAX_CAPACITY, MAX_SENDERS, MIN_CAPACITY, RX_LINE, RX_SLOT_COUNT, S_HEAD, S_SENDER, S_SPACE_SEQ,
    S_TAIL, SLEEPS_FENCED, SLEEPS_MEMBARRIER, SLEEPS_NEVER, SLOT_LEN, SLOTS, layout_hash,
    segment_len, slot_base,
};
use crate::process::ProcessId;
use crate::segment::{Kind, Segment, Spec};
use crate::sys::{self, Mapping};
use crate::wait::{Deadline, LIVENESS_INTERVAL, WaitMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Sender,
    Receiver,
}

/// What both ends hold: the segment, the validated capacity and slot count, and how to
/// wait. `slot` is the sender's slot (0 for the receiver).
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) segment: Segment,
    pub(super) role: Role,
    /// True once this end holds its slot; only then does dropping it close the slot (an
    /// `open` that failed to attach must not close the end of the process that holds it).
    pub(super) attached: bool,
    pub(super) slot: usize,
    pub(super) slots: usize,
    pub(super) capacity: u64,
    pub(super) wait_mode: WaitMode,
    pub(super) spin: u32,
    pub(super) yield_for: Duration,
    /// This process is registered for global expedited membarriers: waking a peer that
    /// announces [`SLEEPS_MEMBARRIER`] needs no fence here.
    pub(super) registered: bool,
    /// How this end waits (the value of its `END_SLEEPS` word); it falls back from
    /// [`SLEEPS_MEMBARRIER`] to [`SLEEPS_FENCED`] if a membarrier ever fails.
    pub(super) sleeps: AtomicU32,
}

/// The `END_SLEEPS` value of an end with this config in this process.
///
/// A membarrier costs an interrupt of every CPU running the peer (several µs in a VM):
/// worth it for an end that spins or yields before it sleeps, which then sleeps only when
/// the peer is idle, and saves the peer a fence per message. An end set to sleep at once
/// sleeps on every wait, and a fence on each side is the cheaper pair there.
fn sleeps_for(config: &ChannelConfig) -> u32 {
    let sleeps_at_once = config.spin == 0 && config.yield_for.is_zero();
    match config.wait_mode {
        WaitMode::Polling => SLEEPS_NEVER,
        WaitMode::Blocking if !sleeps_at_once && sys::membarrier_registered() => SLEEPS_MEMBARRIER,
        WaitMode::Blocking => SLEEPS_FENCED,
    }
}

impl Channel {
    pub(super) fn spec(message_type: &MessageType) -> Spec<'_> {
        Spec {
            kind: Kind::Channel,
            layout: layout_hash(),
            fingerprint: message_type.fingerprint(),
            type_name: message_type.name(),
        }
    }

    pub(super) fn create(
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
        let sleeps = sleeps_for(config);
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
            registered: sys::membarrier_registered(),
            sleeps: AtomicU32::new(sleeps),
        })
    }

    pub(super) fn open(
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
            registered: sys::membarrier_registered(),
            sleeps: AtomicU32::new(sleeps_for(config)),
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
    pub(super) fn attach(&self, line: usize, what: &str) -> Result<()> {
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
        map.u32_at(line + END_SLEEPS)
            .store(self.sleeps.load(Ordering::Relaxed), Ordering::Relaxed);
        map.u32_at(line + END_STATE)
            .store(END_ATTACHED, Ordering::Release);
        Ok(())
    }

    #[inline]
    pub(super) fn map(&self) -> &Mapping {
        self.segment.map()
    }

    #[inline]
    pub(super) fn word(&self, offset: usize) -> &AtomicU32 {
        self.map().u32_at(offset)
    }

    #[inline]
    pub(super) fn index(&self, offset: usize) -> &AtomicU64 {
        self.map().u64_at(offset)
    }

    #[inline]
    pub(super) fn tail_at(slot: usize) -> usize {
        slot_base(slot) + S_TAIL
    }

    #[inline]
    pub(super) fn head_at(slot: usize) -> usize {
        slot_base(slot) + S_HEAD
    }

    /// The mapping offset of the record header at `position` of ring `slot`.
    #[inline]
    pub(super) fn header_at(&self, slot: usize, position: u64) -> usize {
        self.ring_at(slot) + (position & (self.capacity - 1)) as usize
    }

    /// The mapping offset of ring `slot`.
    #[inline]
    pub(super) fn ring_at(&self, slot: usize) -> usize {
        SLOTS + self.slots * SLOT_LEN + slot * self.capacity as usize
    }

    pub(super) fn process_at(&self, line: usize) -> ProcessId {
        ProcessId {
            pid: self.map().u32_at(line + END_PID).load(Ordering::Relaxed),
            start: self.map().u64_at(line + END_START).load(Ordering::Relaxed),
        }
    }

    /// The state of the end at `line`: `Ok(true)` attached and alive (or not checked),
    /// `Ok(false)` never attached, or the error it ended with.
    pub(super) fn end_status(&self, line: usize, what: &str, check_liveness: bool) -> Result<bool> {
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
    #[inline(always)]
    pub(super) fn peer_status(&self, check_liveness: bool) -> Result<()> {
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
    pub(super) fn peer_status_slow(&self, check_liveness: bool) -> Result<()> {
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
    pub(super) fn wait_until(
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
                    // Pairs with `notify`: either the peer sees `waiting` and bumps `seq`,
                    // or we see its index change here.
                    self.announce_sleep();
                    if changed() {
                        waiting.store(0, Ordering::Relaxed);
                        return Ok(());
                    }
                    // A peer that closed just before `observed` was loaded bumped `seq`
                    // (and woke no one) before it: the sleep would last a whole slice. Its
                    // state store came before that bump, so it is visible here.
                    if let Err(err) = self.peer_status(false) {
                        waiting.store(0, Ordering::Relaxed);
                        return Err(err);
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
                        if spins.is_multiple_of(1024) {
                            // A close is seen within a thousand spins, not a slice.
                            self.peer_status(false)?;
                            if started.elapsed() >= slice {
                                break;
                            }
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

    /// The sleeper's half of the wake-up handshake, between its `waiting` store and its
    /// last look at the indices: a `SeqCst` fence, or, where this end announced
    /// [`SLEEPS_MEMBARRIER`], a membarrier that stands in for the waker's fence too.
    fn announce_sleep(&self) {
        if self.sleeps.load(Ordering::Relaxed) == SLEEPS_MEMBARRIER {
            if sys::membarrier() {
                return;
            }
            // It cannot fail once registered, but if it does: from now on wakers fence.
            // A waker that skipped its fence just before this store may have missed our
            // `waiting`; the sleep below is a slice, so that costs one slice at most.
            self.sleeps.store(SLEEPS_FENCED, Ordering::Relaxed);
            self.word(self.own_line() + END_SLEEPS)
                .store(SLEEPS_FENCED, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// The line of this end: the receiver's, or this sender's slot.
    fn own_line(&self) -> usize {
        match self.role {
            Role::Receiver => RX_LINE,
            Role::Sender => slot_base(self.slot) + S_SENDER,
        }
    }

    /// Tells the peer whose end is at `peer_line`, which may be asleep on `seq_offset`,
    /// that an index moved. A polling peer never sleeps: nothing to do then.
    #[inline(always)]
    pub(super) fn notify(&self, peer_line: usize, seq_offset: usize, waiting_offset: usize) {
        let sleeps = self.word(peer_line + END_SLEEPS).load(Ordering::Relaxed);
        if sleeps == SLEEPS_NEVER {
            return;
        }
        if sleeps == SLEEPS_MEMBARRIER && self.registered {
            // The peer's membarrier orders our index store before this load on our CPU;
            // only the compiler must keep them in program order.
            compiler_fence(Ordering::SeqCst);
            if self.word(waiting_offset).load(Ordering::Relaxed) != 0 {
                self.wake_sleeper(seq_offset);
            }
            return;
        }
        self.notify_sleeper(seq_offset, waiting_offset);
    }

    /// Wakes the sleeper at `seq_offset` if `waiting_offset` says it sleeps, after a fence
    /// (the waker's half of [`SLEEPS_FENCED`]).
    fn notify_sleeper(&self, seq_offset: usize, waiting_offset: usize) {
        fence(Ordering::SeqCst);
        if self.word(waiting_offset).load(Ordering::Relaxed) != 0 {
            self.wake_sleeper(seq_offset);
        }
    }

    #[cold]
    fn wake_sleeper(&self, seq_offset: usize) {
        let seq = self.word(seq_offset);
        seq.fetch_add(1, Ordering::Release);
        sys::futex_wake(seq, 1);
    }

    pub(super) fn wake(&self, seq_offset: usize) {
        let seq = self.word(seq_offset);
        seq.fetch_add(1, Ordering::Release);
        sys::futex_wake(seq, i32::MAX as u32);
    }

    pub(super) fn close(&self) {
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

    #[cold]
    #[inline(never)]
    pub(super) fn outside_ring(&self, offset: u64, len: u64) -> Error {
        self.corrupted(format!(
            "record at ring offset {offset} of {len} bytes outside the ring"
        ))
    }

    pub(super) fn corrupted(&self, what: String) -> Error {
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
