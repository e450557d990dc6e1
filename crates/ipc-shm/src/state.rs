//! Shared state: a fixed-layout value in shared memory under a cross-process lock with
//! timeouts and dead-holder recovery.
//!
//! # Layout of a state segment
//!
//! | offset | field |
//! |---|---|
//! | 0 | segment header (128 bytes) |
//! | 128 | lock word (u32): pid of the holder, 0 when free; also the futex word |
//! | 132 | number of sleeping waiters (u32) |
//! | 136 | pid the start time below belongs to (u32) |
//! | 144 | holder start time (u64) |
//! | 152 | number of times a dead holder's lock was taken over (u64) |
//! | 192 | the value |
//!
//! raw_sync's mutex is not robust (a holder killed with SIGKILL blocks everybody forever),
//! so the lock is our own: the holder's pid in the lock word lets a waiter see that the
//! holder died and take the lock over, and every wait has a deadline.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, MessageType, Result};

use crate::process::ProcessId;
use crate::segment::{Kind, Segment, Spec};
use crate::sys;
use crate::wait::{Deadline, LIVENESS_INTERVAL};

const L_LOCK: usize = 128;
const L_WAITERS: usize = 132;
const L_START_PID: usize = 136;
const L_START: usize = 144;
const L_RECOVERIES: usize = 152;
const VALUE: usize = 192;
const MAX_ALIGN: usize = 64;

/// Plain old data: a `Copy` type for which every bit pattern is a valid value and that holds
/// no pointers, so that it can live in shared memory that another process writes.
///
/// # Safety
///
/// Implement it only for types without padding-dependent invariants, pointers, references,
/// `bool`, `char`, enums or niches: any bytes another process writes must form a valid value.
/// `#[repr(C)]` structs of `Pod` fields qualify.
pub unsafe trait Pod: Copy + Send + 'static {}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: every bit pattern of a primitive integer or float is a valid value.
        unsafe impl Pod for $t {}
    )*};
}
pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);
// SAFETY: an array of `Pod` has no padding between elements and no other invariant.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// How shared state is created or opened.
#[derive(Clone, Debug)]
pub struct StateConfig {
    open_timeout: Duration,
    message_type: Option<MessageType>,
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            open_timeout: Duration::from_secs(5),
            message_type: None,
        }
    }
}

impl StateConfig {
    /// The defaults: 5 s open timeout, the type named by `std::any::type_name`.
    pub fn new() -> StateConfig {
        StateConfig::default()
    }

    /// How long `open` waits for the creator to finish initialising the segment.
    pub fn with_open_timeout(mut self, timeout: Duration) -> StateConfig {
        self.open_timeout = timeout;
        self
    }

    /// How long `open` waits for the creator to finish initialising the segment.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    /// The type both sides must agree on; by default `MessageType::of::<T>()`.
    pub fn with_message_type(mut self, message_type: MessageType) -> StateConfig {
        self.message_type = Some(message_type);
        self
    }

    /// The type set with [`with_message_type`](StateConfig::with_message_type), `None` for
    /// the default (`MessageType::of::<T>()` of the state's `T`).
    pub fn message_type(&self) -> Option<&MessageType> {
        self.message_type.as_ref()
    }
}

/// A named value of type `T` in shared memory, read and updated under a cross-process lock.
///
/// ```
/// use std::time::Duration;
/// use ipc_shm::{ShmState, StateConfig};
///
/// let name = format!("doc-state-{}", std::process::id());
/// let mut counter = ShmState::<u64>::create(&name, 0, &StateConfig::new())?;
/// let mut other = ShmState::<u64>::open(&name, &StateConfig::new())?; // in another process
/// *other.lock(Duration::from_secs(1))? += 5;
/// assert_eq!(counter.load(Duration::from_secs(1))?, 5);
/// # Ok::<(), ipc_shm::core::Error>(())
/// ```
pub struct ShmState<T: Pod> {
    segment: Segment,
    me: ProcessId,
    _value: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for ShmState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmState")
            .field("segment", &self.segment)
            .finish()
    }
}

impl<T: Pod> ShmState<T> {
    fn spec(message_type: &MessageType) -> (Spec<'_>, u64) {
        // Size and alignment belong to the type: a mismatch is a type mismatch.
        let fingerprint = ipc_core::wire::fnv1a64(
            format!(
                "{:016x}:{}:{}",
                message_type.fingerprint(),
                size_of::<T>(),
                align_of::<T>()
            )
            .as_bytes(),
        );
        let spec = Spec {
            kind: Kind::State,
            layout: ipc_core::wire::fnv1a64(
                b"ipc-shm state: lock 128, waiters 132, start pid 136, start 144, recoveries 152, value 192",
            ),
            fingerprint,
            type_name: message_type.name(),
        };
        (spec, size_of::<T>() as u64)
    }

    /// Creates state `name` holding `initial`. The segment is removed when this handle is
    /// dropped. Errors as for [`ShmSender::create`](crate::ShmSender::create).
    pub fn create(name: &str, initial: T, config: &StateConfig) -> Result<ShmState<T>> {
        if align_of::<T>() > MAX_ALIGN {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "shared state needs alignment of {} bytes; at most {MAX_ALIGN} is supported",
                    align_of::<T>()
                ),
            ));
        }
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let (spec, size) = ShmState::<T>::spec(&message_type);
        let segment = Segment::create(name, spec, size, VALUE + size_of::<T>(), |map| {
            // SAFETY: nobody else can see the segment before it is marked ready, and `T` is
            // `Pod`.
            unsafe { *map.value_mut::<T>(VALUE) = initial };
        })?;
        Ok(ShmState {
            segment,
            me: ProcessId::current(),
            _value: PhantomData,
        })
    }

    /// Opens state `name`. Errors as for [`ShmSender::open`](crate::ShmSender::open).
    pub fn open(name: &str, config: &StateConfig) -> Result<ShmState<T>> {
        let message_type = config
            .message_type
            .clone()
            .unwrap_or_else(MessageType::of::<T>);
        let (spec, size) = ShmState::<T>::spec(&message_type);
        let segment = Segment::open(name, spec, config.open_timeout)?;
        let len = segment.map().len() as u64;
        if segment.capacity() != size || len != VALUE as u64 + size {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "shared state `{name}` claims a value of {} bytes in a segment of {len}; expected {size}",
                    segment.capacity()
                ),
            ));
        }
        Ok(ShmState {
            segment,
            me: ProcessId::current(),
            _value: PhantomData,
        })
    }

    /// Takes the lock, waiting at most `timeout`. A lock whose holder died is taken over;
    /// the guard then reports [`recovered`](StateGuard::recovered), since the holder may
    /// have left the value half-updated.
    ///
    /// Errors: [`Timeout`](ErrorKind::Timeout) naming the live holder.
    pub fn lock(&mut self, timeout: Duration) -> Result<StateGuard<'_, T>> {
        self.lock_until(Deadline::after(timeout))
    }

    /// Takes the lock if it is free (or its holder dead); `Timeout` otherwise.
    pub fn try_lock(&mut self) -> Result<StateGuard<'_, T>> {
        self.lock_until(Deadline::Now)
    }

    /// A copy of the value, read under the lock.
    pub fn load(&mut self, timeout: Duration) -> Result<T> {
        Ok(*self.lock(timeout)?)
    }

    /// Replaces the value under the lock.
    pub fn store(&mut self, value: T, timeout: Duration) -> Result<()> {
        *self.lock(timeout)? = value;
        Ok(())
    }

    /// How many times a lock was taken over from a holder that died.
    pub fn recoveries(&self) -> u64 {
        self.segment
            .map()
            .u64_at(L_RECOVERIES)
            .load(Ordering::Relaxed)
    }

    fn lock_until(&mut self, deadline: Deadline) -> Result<StateGuard<'_, T>> {
        let map = self.segment.map();
        let lock = map.u32_at(L_LOCK);
        let me = self.me;
        for _ in 0..200 {
            // Test before test-and-set: a contended line is only read while it is held.
            if lock.load(Ordering::Relaxed) == 0
                && lock
                    .compare_exchange(0, me.pid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(self.acquired(false));
            }
            std::hint::spin_loop();
        }
        let mut last_check: Option<Instant> = None;
        loop {
            let holder = lock.load(Ordering::Acquire);
            if holder == 0 {
                if lock
                    .compare_exchange(0, me.pid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(self.acquired(false));
                }
                continue;
            }
            if last_check.is_none_or(|at| at.elapsed() >= LIVENESS_INTERVAL) {
                last_check = Some(Instant::now());
                let start = if map.u32_at(L_START_PID).load(Ordering::Acquire) == holder {
                    map.u64_at(L_START).load(Ordering::Relaxed)
                } else {
                    0
                };
                let process = ProcessId { pid: holder, start };
                // Our own pid with our start time is alive (another handle in this process
                // holds the lock): we wait. With another start time it was a dead process
                // whose pid we reuse.
                if !process.is_alive() {
                    if lock
                        .compare_exchange(holder, me.pid, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        map.u64_at(L_RECOVERIES).fetch_add(1, Ordering::Relaxed);
                        return Ok(self.acquired(true));
                    }
                    continue;
                }
            }
            if deadline.passed() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "lock of shared state `{}` still held by process {holder} at the deadline",
                        self.segment.name()
                    ),
                ));
            }
            let waiters = map.u32_at(L_WAITERS);
            waiters.fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(lock, holder, deadline.slice());
            waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn acquired(&mut self, recovered: bool) -> StateGuard<'_, T> {
        let map = self.segment.map();
        map.u64_at(L_START).store(self.me.start, Ordering::Relaxed);
        map.u32_at(L_START_PID)
            .store(self.me.pid, Ordering::Release);
        StateGuard {
            state: self,
            recovered,
        }
    }

    fn unlock(&self) {
        let map = self.segment.map();
        let lock = map.u32_at(L_LOCK);
        // Release only our own lock: if a peer scribbled over the word, leave it alone.
        let _ = lock.compare_exchange(self.me.pid, 0, Ordering::Release, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if map.u32_at(L_WAITERS).load(Ordering::Relaxed) != 0 {
            sys::futex_wake(lock, 1);
        }
    }
}

/// The held lock of a [`ShmState`]: dereferences to the value; unlocks on drop.
pub struct StateGuard<'a, T: Pod> {
    state: &'a mut ShmState<T>,
    recovered: bool,
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for StateGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateGuard")
            .field("value", &**self)
            .field("recovered", &self.recovered)
            .finish()
    }
}

impl<T: Pod> StateGuard<'_, T> {
    /// True when the lock was taken over from a holder that died holding it: the value may
    /// be half-updated, and it is the caller's to check or repair.
    pub fn recovered(&self) -> bool {
        self.recovered
    }
}

impl<T: Pod> Deref for StateGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `T: Pod`; the guard borrows the state mutably, so this is the only
        // reference into the value in this process; other processes honour the lock.
        unsafe { self.state.segment.map().value_mut::<T>(VALUE) }
    }
}

impl<T: Pod> DerefMut for StateGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { self.state.segment.map().value_mut::<T>(VALUE) }
    }
}

impl<T: Pod> Drop for StateGuard<'_, T> {
    fn drop(&mut self) {
        self.state.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_times_out_and_takes_over_from_the_dead() {
        let name = format!("unit-state-{}", std::process::id());
        let config = StateConfig::new();
        let mut created = ShmState::<[u64; 4]>::create(&name, [1, 2, 3, 4], &config).unwrap();
        let mut opened = ShmState::<[u64; 4]>::open(&name, &config).unwrap();
        {
            let mut guard = opened.lock(Duration::from_secs(1)).unwrap();
            assert!(!guard.recovered());
            guard[0] = 10;
            // Held: a timed lock elsewhere waits its full (sub-second) timeout, then fails.
            let started = Instant::now();
            let err = created.lock(Duration::from_millis(120)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(started.elapsed() >= Duration::from_millis(120));
            let err = created.try_lock().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        }
        assert_eq!(created.load(Duration::from_secs(1)).unwrap(), [10, 2, 3, 4]);

        // A holder that died: its pid stays in the lock word.
        let map = created.segment.map();
        map.u32_at(L_LOCK).store(u32::MAX - 1, Ordering::Release);
        let guard = created.lock(Duration::from_secs(1)).unwrap();
        assert!(guard.recovered());
        drop(guard);
        assert_eq!(created.recoveries(), 1);

        let err = ShmState::<[u32; 4]>::open(&name, &config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TypeMismatch, "{err}");
    }
}
