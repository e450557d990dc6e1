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
        layout: ipc_core::fnv1a64(
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
