//! Waiting for another process's write to a file without spinning: a producer of many
//! waits for a sync leader to be done (group commit, `FORMAT.md`).
//!
//! On Linux this is inotify (`IN_MODIFY`): every `pwrite` to the watched file wakes every
//! process watching it, at once, and none of them takes a lock to find out. A waiter clears
//! the events, looks, and only then waits, so a write after its look is never missed. Every
//! wait has a timeout: a leader that dies writes nothing, and the waiters must find that out
//! through the sync lock. Elsewhere, or when inotify is not available (its per-user limit on
//! instances), [`FileWatch::new`] gives `None` and the callers wait on the lock.

use std::path::Path;
use std::time::Duration;

/// A watch on one file's writes.
#[cfg(target_os = "linux")]
pub(crate) struct FileWatch {
    fd: std::os::fd::OwnedFd,
}

#[cfg(target_os = "linux")]
impl FileWatch {
    /// A watch with no file yet, or `None` where inotify is not available.
    pub(crate) fn new() -> Option<FileWatch> {
        use rustix::fs::inotify::{CreateFlags, init};
        let fd = init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        Some(FileWatch { fd })
    }

    /// Watches the writes to `path`; false if it cannot be watched.
    pub(crate) fn watch(&mut self, path: &Path) -> bool {
        use rustix::fs::inotify::{WatchFlags, add_watch};
        add_watch(&self.fd, path, WatchFlags::MODIFY).is_ok()
    }

    /// Forgets the writes seen so far: call before looking, then [`wait`] for a write
    /// after the look.
    ///
    /// [`wait`]: FileWatch::wait
    pub(crate) fn clear(&mut self) {
        let mut buf = [0u8; 1024];
        while matches!(rustix::io::read(&self.fd, &mut buf[..]), Ok(n) if n > 0) {}
    }

    /// Waits until the file was written since the last [`clear`], or `timeout` passed;
    /// returns whether it was written.
    ///
    /// [`clear`]: FileWatch::clear
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
    }
}

/// Without inotify there is nothing to wait with: the callers wait on the lock.
#[cfg(not(target_os = "linux"))]
pub(crate) struct FileWatch(std::convert::Infallible);

#[cfg(not(target_os = "linux"))]
impl FileWatch {
    pub(crate) fn new() -> Option<FileWatch> {
        None
    }

    pub(crate) fn watch(&mut self, _path: &Path) -> bool {
        match self.0 {}
    }

    pub(crate) fn clear(&mut self) {
        match self.0 {}
    }

    pub(crate) fn wait(&mut self, _timeout: Duration) -> bool {
        match self.0 {}
    }
}
