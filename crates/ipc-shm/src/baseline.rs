//! Raw baselines for benchmarks: two processes ping-pong a counter through two atomics in
//! shared memory, spinning, sleeping on a futex, or spinning, yielding and then sleeping as
//! a blocking channel does. No records, no checks, no liveness: the floor that the
//! channel's round trip is compared with. Not part of the stable API.

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};

use crate::channel::{DEFAULT_SPIN, DEFAULT_YIELD};
use crate::segment::{Kind, Segment, Spec};
use crate::sys;

const PING: usize = 128;
/// 1 while the pong side sleeps on `PING` (only in `SpinThenFutex`).
const PING_WAITING: usize = 132;
const PONG: usize = 192;
/// 1 while the ping side sleeps on `PONG`.
const PONG_WAITING: usize = 196;
const STOP: u32 = u32::MAX;
/// A wait longer than this means the other side is gone.
const GIVE_UP: Duration = Duration::from_secs(10);

fn spec() -> Spec<'static> {
    Spec {
        kind: Kind::State,
        layout: ipc_core::wire::fnv1a64(
            b"ipc-shm baseline ping-pong: ping 128, waiting 132, pong 192, waiting 196",
        ),
        fingerprint: 0,
        type_name: "ping-pong",
    }
}

/// How the baseline waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineWait {
    /// Busy-wait on the atomic.
    Spin,
    /// Sleep on a futex at once, wake the other side with a system call every time.
    Futex,
    /// What a blocking channel does, with its default budget: poll 100 times, yield the
    /// core for up to 50 µs, then announce the sleep in a flag and sleep on the futex; the
    /// other side makes the wake system call only when it sees the flag.
    SpinThenFutex,
}

/// Two atomics in a shared segment.
#[derive(Debug)]
pub struct PingPong {
    segment: Segment,
}

impl PingPong {
    /// Creates the segment (the pong side usually).
    pub fn create(name: &str) -> Result<PingPong> {
        let segment = Segment::create(name, spec(), 0, 256, |_| {})?;
        Ok(PingPong { segment })
    }

    /// Opens the segment.
    pub fn open(name: &str) -> Result<PingPong> {
        let segment = Segment::open(name, spec(), Duration::from_secs(5))?;
        Ok(PingPong { segment })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.segment.map().u32_at(offset)
    }

    /// Sends `rounds` pings and waits for each pong; returns the time per round trip.
    /// Can be called again (a warm-up, then the measured run); end with [`stop`](Self::stop).
    pub fn ping(&self, rounds: u32, wait: BaselineWait) -> Result<Duration> {
        let (ping, pong) = (self.word(PING), self.word(PONG));
        let first = ping.load(Ordering::Relaxed);
        if first.checked_add(rounds).is_none_or(|last| last == STOP) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{rounds} more rounds after {first} exceed the counter"),
            ));
        }
        let ping_waiting = self.word(PING_WAITING);
        let pong_waiting = self.word(PONG_WAITING);
        let started = Instant::now();
        for i in first + 1..=first + rounds {
            ping.store(i, Ordering::Release);
            wake(ping, ping_waiting, wait);
            wait_for(pong, pong_waiting, |v| v == i, wait)?;
        }
        Ok(started.elapsed() / rounds.max(1))
    }

    /// Tells the pong side to finish.
    pub fn stop(&self) {
        let ping = self.word(PING);
        ping.store(STOP, Ordering::Release);
        sys::futex_wake(ping, 1);
    }

    /// Answers pings until the pinger says stop; returns the number answered.
    pub fn pong(&self, wait: BaselineWait) -> Result<u64> {
        let (ping, pong) = (self.word(PING), self.word(PONG));
        let ping_waiting = self.word(PING_WAITING);
        let pong_waiting = self.word(PONG_WAITING);
        let mut last = 0;
        let mut answered = 0;
        loop {
            let value = wait_for(ping, ping_waiting, |v| v != last, wait)?;
            if value == STOP {
                return Ok(answered);
            }
            last = value;
            pong.store(value, Ordering::Release);
            wake(pong, pong_waiting, wait);
            answered += 1;
        }
    }
}

/// After a store to `word`: wakes the other side if it may sleep on it.
#[inline]
fn wake(word: &AtomicU32, waiting: &AtomicU32, wait: BaselineWait) {
    match wait {
        BaselineWait::Spin => {}
        BaselineWait::Futex => sys::futex_wake(word, 1),
        BaselineWait::SpinThenFutex => {
            // Pairs with the fence in `wait_for`: either the sleeper sees the new value
            // before it sleeps, or we see its flag here.
            fence(Ordering::SeqCst);
            if waiting.load(Ordering::Relaxed) != 0 {
                sys::futex_wake(word, 1);
            }
        }
    }
}

fn wait_for(
    word: &AtomicU32,
    waiting: &AtomicU32,
    done: impl Fn(u32) -> bool,
    wait: BaselineWait,
) -> Result<u32> {
    let started = Instant::now();
    let mut spins = 0u32;
    let mut yield_started = None;
    loop {
        let value = word.load(Ordering::Acquire);
        if done(value) {
            return Ok(value);
        }
        match wait {
            BaselineWait::Spin => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1 << 16) && started.elapsed() > GIVE_UP {
                    break;
                }
            }
            BaselineWait::Futex => {
                sys::futex_wait(word, value, Duration::from_millis(100));
                if started.elapsed() > GIVE_UP {
                    break;
                }
            }
            BaselineWait::SpinThenFutex => {
                spins = spins.saturating_add(1);
                if spins <= DEFAULT_SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                // The channel's clock for yielding starts after its spins, as does this.
                let yielding = *yield_started.get_or_insert_with(Instant::now);
                if yielding.elapsed() < DEFAULT_YIELD {
                    std::thread::yield_now();
                } else {
                    waiting.store(1, Ordering::Relaxed);
                    fence(Ordering::SeqCst);
                    let value = word.load(Ordering::Acquire);
                    if !done(value) {
                        sys::futex_wait(word, value, Duration::from_millis(100));
                    }
                    waiting.store(0, Ordering::Relaxed);
                    if started.elapsed() > GIVE_UP {
                        break;
                    }
                }
            }
        }
    }
    Err(Error::new(
        ErrorKind::Timeout,
        format!("baseline peer silent for {} s", GIVE_UP.as_secs()),
    ))
}

/// The raw two-process SPSC ring that the stream figures are compared with: fixed slots of
/// one message each, copy in and copy out, `tail` and `head` on their own 128-byte blocks,
/// each end keeping a cached copy of the other's index and reading it only when the cache
/// says full (or empty). No records, headers, validation or liveness: the floor for moving
/// messages of one size between two processes.
#[derive(Debug)]
pub struct RawRing {
    segment: Segment,
    slot_len: usize,
    slots: u64,
}

const RING_TAIL: usize = 128;
const RING_HEAD: usize = 256;
const RING_SLOT_LEN: usize = 384;
const RING_SLOTS: usize = 392;
const RING_DATA: usize = 512;

fn ring_spec() -> Spec<'static> {
    Spec {
        kind: Kind::State,
        layout: ipc_core::wire::fnv1a64(
            b"ipc-shm baseline ring: tail 128, head 256, slot len 384, slots 392, data 512",
        ),
        fingerprint: 0,
        type_name: "raw-ring",
    }
}

impl RawRing {
    /// Creates a ring of `slots` slots of `slot_len` bytes (the consumer side usually).
    pub fn create(name: &str, slot_len: usize, slots: usize) -> Result<RawRing> {
        let len = slot_len
            .checked_mul(slots)
            .and_then(|data| data.checked_add(RING_DATA))
            .filter(|_| slot_len > 0 && slots > 0)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("a ring of {slots} slots of {slot_len} bytes"),
                )
            })?;
        let segment = Segment::create(name, ring_spec(), 0, len, |map| {
            map.u64_at(RING_SLOT_LEN)
                .store(slot_len as u64, Ordering::Relaxed);
            map.u64_at(RING_SLOTS)
                .store(slots as u64, Ordering::Relaxed);
        })?;
        Ok(RawRing {
            segment,
            slot_len,
            slots: slots as u64,
        })
    }

    /// Opens the ring (the producer side usually), checking its geometry against its size.
    pub fn open(name: &str) -> Result<RawRing> {
        let segment = Segment::open(name, ring_spec(), Duration::from_secs(5))?;
        let map = segment.map();
        let slot_len = map.u64_at(RING_SLOT_LEN).load(Ordering::Relaxed);
        let slots = map.u64_at(RING_SLOTS).load(Ordering::Relaxed);
        let fits = slot_len
            .checked_mul(slots)
            .and_then(|data| data.checked_add(RING_DATA as u64))
            == Some(map.len() as u64);
        if !fits || slot_len == 0 || slots == 0 {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "ring claims {slots} slots of {slot_len} bytes in {} bytes",
                    map.len()
                ),
            ));
        }
        Ok(RawRing {
            segment,
            slot_len: slot_len as usize,
            slots,
        })
    }

    /// The size of one message.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    fn slot_offset(&self, position: u64) -> usize {
        RING_DATA + (position % self.slots) as usize * self.slot_len
    }

    /// Copies `count` messages of `message` (one slot long) into the ring, spinning while
    /// it is full.
    pub fn produce(&self, message: &[u8], count: u64) -> Result<()> {
        if message.len() != self.slot_len {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes for slots of {}",
                    message.len(),
                    self.slot_len
                ),
            ));
        }
        let map = self.segment.map();
        let (tail_index, head_index) = (map.u64_at(RING_TAIL), map.u64_at(RING_HEAD));
        let mut tail = tail_index.load(Ordering::Relaxed);
        let mut head = head_index.load(Ordering::Acquire);
        for _ in 0..count {
            let mut stalled = Stall::default();
            while tail - head >= self.slots {
                head = head_index.load(Ordering::Acquire);
                stalled.spin()?;
            }
            // SAFETY: the slot lies between the consumer's `head` and our `tail`, which only
            // this producer writes, and no other reference to it lives in this process.
            let slot = unsafe { map.bytes_mut(self.slot_offset(tail), self.slot_len) };
            slot.ok_or_else(give_up)?.copy_from_slice(message);
            tail += 1;
            tail_index.store(tail, Ordering::Release);
        }
        Ok(())
    }

    /// Copies `count` messages out of the ring into `into` (one slot long), spinning while
    /// it is empty; returns the time from the first message to the last.
    pub fn consume(&self, into: &mut [u8], count: u64) -> Result<Duration> {
        if into.len() != self.slot_len {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "buffer of {} bytes for slots of {}",
                    into.len(),
                    self.slot_len
                ),
            ));
        }
        let map = self.segment.map();
        let (tail_index, head_index) = (map.u64_at(RING_TAIL), map.u64_at(RING_HEAD));
        let mut head = head_index.load(Ordering::Relaxed);
        let mut tail = tail_index.load(Ordering::Acquire);
        let mut started = None;
        for _ in 0..count {
            let mut stalled = Stall::default();
            while tail == head {
                tail = tail_index.load(Ordering::Acquire);
                stalled.spin()?;
            }
            started.get_or_insert_with(Instant::now);
            let slot = map.bytes(self.slot_offset(head), self.slot_len);
            into.copy_from_slice(slot.ok_or_else(give_up)?);
            std::hint::black_box(&mut *into);
            head += 1;
            head_index.store(head, Ordering::Release);
        }
        Ok(started.map_or(Duration::ZERO, |s| s.elapsed()))
    }
}

/// One busy wait of the ring: gives up once it has spun for [`GIVE_UP`], looking at the
/// clock only every 65536 spins.
#[derive(Default)]
struct Stall {
    spins: u32,
    since: Option<Instant>,
}

impl Stall {
    #[inline]
    fn spin(&mut self) -> Result<()> {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(1 << 16)
            && self.since.get_or_insert_with(Instant::now).elapsed() > GIVE_UP
        {
            return Err(give_up());
        }
        Ok(())
    }
}

fn give_up() -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("baseline peer silent for {} s", GIVE_UP.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_ring_carries_messages_in_order_and_refuses_bad_sizes() {
        let name = format!("unit-raw-ring-{}", std::process::id());
        let consumer = RawRing::create(&name, 16, 4).unwrap();
        let producer = RawRing::open(&name).unwrap();
        assert_eq!(producer.slot_len(), 16);
        let mut into = [0u8; 16];
        for round in 0..10u8 {
            producer.produce(&[round; 16], 3).unwrap();
            for _ in 0..3 {
                consumer.consume(&mut into, 1).unwrap();
                assert_eq!(into, [round; 16]);
            }
        }
        let err = producer.produce(&[0; 15], 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.to_string(), "message of 15 bytes for slots of 16");
        let err = consumer.consume(&mut [0; 17], 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        for (slot_len, slots) in [(0, 4), (16, 0), (usize::MAX, 2)] {
            let err = RawRing::create(&format!("{name}-bad"), slot_len, slots).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        }
    }
}
