//! [`SendSlot`]: space reserved in the ring for a message written in place.

use std::ops::{Deref, DerefMut};

use super::layout::RECORD_HEADER;
use super::sender::ShmSender;

/// Space reserved in the ring by [`ShmSender::reserve`]: write the message into it, then
/// [`commit`](SendSlot::commit). Dropping it without commit publishes nothing.
pub struct SendSlot<'a, T: ?Sized> {
    pub(super) sender: &'a mut ShmSender<T>,
    pub(super) offset: u64,
    pub(super) len: usize,
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
        self.sender.publish(len);
    }
}

impl<T: ?Sized> Deref for SendSlot<'_, T> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.sender
            .ring
            .bytes(self.offset + RECORD_HEADER, self.len as u64)
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
