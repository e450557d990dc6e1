//! [`RecvGuard`]: a received message where it lies in the ring.

use std::ops::Deref;

use ipc_core::Result;
use serde::Deserialize;

use super::layout::record_len;
use super::receiver::ShmReceiver;
use crate::sys::RingPtr;

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
    pub(super) receiver: &'a mut ShmReceiver<T>,
    /// The ring of `slot`, and the ring offset of the payload.
    pub(super) ring: RingPtr,
    pub(super) slot: usize,
    pub(super) start: u64,
    pub(super) len: usize,
    pub(super) next_cleared: bool,
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
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        // In range: `next_record` checked the record against the ring's bounds.
        self.ring.bytes(self.start, self.len as u64).unwrap_or(&[])
    }

    /// Decodes the message in place as `U`; borrowed fields point into shared memory.
    ///
    /// Any `U` can be asked for; the channel's type `T` (or its borrowing twin, such as
    /// `Chat<'a>` for `Chat<'static>`) is what the sender wrote.
    #[inline]
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
    #[inline(always)]
    fn drop(&mut self) {
        self.receiver
            .advance(self.slot, record_len(self.len as u64), self.next_cleared);
    }
}
