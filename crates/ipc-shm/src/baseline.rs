//! Raw baselines for benchmarks: two processes ping-pong a counter through two atomics in
//! shared memory, spinning or sleeping on a futex. No records, no checks, no liveness: the
//! floor that the channel's round trip is compared with. Not part of the stable API.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};

use crate::segment::{Kind, Segment, Spec};
use crate::sys;

const PING: usize = 128;
const PONG: usize = 192;
const STOP: u32 = u32::MAX;
/// A wait longer than this means the other side is gone.
const GIVE_UP: Duration = Duration::from_secs(10);

fn spec() -> Spec<'static> {
    Spec {
        kind: Kind::State,
        layout: ipc_core::fnv1a64(b"ipc-shm baseline ping-pong: ping 128, pong 192"),
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
        let started = Instant::now();
        for i in first + 1..=first + rounds {
            ping.store(i, Ordering::Release);
            if wait == BaselineWait::Futex {
                sys::futex_wake(ping, 1);
            }
            wait_for(pong, |v| v == i, wait)?;
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
        let mut last = 0;
        let mut answered = 0;
        loop {
            let value = wait_for(ping, |v| v != last, wait)?;
            if value == STOP {
                return Ok(answered);
            }
            last = value;
            pong.store(value, Ordering::Release);
            if wait == BaselineWait::Futex {
                sys::futex_wake(pong, 1);
            }
            answered += 1;
        }
    }
}

fn wait_for(word: &AtomicU32, done: impl Fn(u32) -> bool, wait: BaselineWait) -> Result<u32> {
    let started = Instant::now();
    let mut spins = 0u32;
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
        }
    }
    Err(Error::new(
        ErrorKind::Timeout,
        format!("baseline peer silent for {} s", GIVE_UP.as_secs()),
    ))
}
