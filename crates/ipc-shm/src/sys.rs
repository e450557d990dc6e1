//! The one module with raw pointers and system calls: the mapping of a segment, atomics and
//! byte ranges inside it, futex waits, process liveness, sealed memory files and
//! preallocation.
//!
//! Everything outside this module works with offsets and the safe accessors below; every
//! offset and length that comes from shared memory is validated by the caller before it
//! reaches [`Mapping::bytes`] or [`Mapping::bytes_mut`], and those two check bounds again.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// The seals every segment carries: its size can never change again, and no seal can be
/// added or removed. A shrunk mapping is what makes other processes die of SIGBUS.
pub(crate) const SEGMENT_SEALS: u32 =
    (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) as u32;

/// A shared, read-write mapping of a whole file, owned by this process (unmapped on drop).
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is valid in every thread of the process until it is dropped, and has
// no thread affinity; dropping it on another thread only munmaps.
unsafe impl Send for Mapping {}
// SAFETY: shared access goes through atomics or through byte ranges whose exclusive use the
// callers arrange (the ring protocol, the lock); `&Mapping` itself mutates nothing.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is a mapping this value made and nobody else unmaps;
        // every reference into it borrows `self`, so none outlives this call.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared and read-write.
    ///
    /// The caller makes sure that the file is sealed against shrinking and is at least
    /// `len` bytes long: then no process can make an access inside the mapping fault.
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, so nothing of ours
        // is replaced) of a file descriptor that is valid for the call.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: base.cast(),
            len,
        })
    }

    /// The mapping's length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn check(&self, offset: usize, len: usize, align: usize) {
        // Offsets of atomics are constants of the layout; a failure here is a bug in this
        // crate, never a consequence of what a peer wrote.
        if !(offset.is_multiple_of(align)
            && offset.checked_add(len).is_some_and(|end| end <= self.len))
        {
            outside_mapping(offset, len, self.len);
        }
    }

    /// The atomic `u32` at `offset` (a multiple of 4 inside the mapping).
    #[inline]
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: in bounds and aligned (checked above; the base is page aligned); the memory
        // lives as long as `self`; every process accesses these words only atomically, and
        // any bit pattern is a valid `u32`.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast::<u32>()) }
    }

    /// The atomic `u64` at `offset` (a multiple of 8 inside the mapping).
    #[inline]
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: as for `u32_at`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast::<u64>()) }
    }

    /// The bytes `offset..offset + len`, or `None` if that range is not inside the mapping.
    ///
    /// Another process may write these bytes at any time. The ring protocol makes an honest
    /// peer leave a published record alone until it is released; a hostile peer can change
    /// the bytes under us, which yields wrong values but never an access outside the range.
    #[cfg(any(test, feature = "baseline"))]
    #[inline]
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above), which lives as long as
        // `self`; every bit pattern is a valid `u8`. See the doc comment on concurrent writes.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(offset), len) })
    }

    /// The bytes `offset..offset + len` for writing, or `None` if outside the mapping.
    ///
    /// # Safety
    ///
    /// No other reference into this range may be alive in this process while the returned
    /// slice is (the ring's sender and the lock holder are the only writers of their ranges).
    #[cfg(feature = "baseline")]
    #[allow(clippy::mut_from_ref)] // Exclusivity is the caller's contract, stated above.
    #[inline]
    pub(crate) unsafe fn bytes_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); exclusivity within this process is the caller's
        // promise; other processes are handled as in `bytes`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) })
    }

    /// The `T` at `offset` (checked for bounds and alignment), for reading and writing.
    ///
    /// # Safety
    ///
    /// Every bit pattern must be a valid `T` (another process may write any), and no other
    /// reference to this `T` may be alive in this process while the returned one is.
    #[allow(clippy::mut_from_ref)] // Exclusivity is the caller's contract, stated above.
    pub(crate) unsafe fn value_mut<T>(&self, offset: usize) -> &mut T {
        self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned (checked above; the base is page aligned); any bit
        // pattern is a valid `T` and the reference is exclusive in this process (the
        // caller's promise); the memory lives as long as `self`.
        unsafe { &mut *self.base.add(offset).cast::<T>() }
    }
}

/// A ring of a mapping resolved to its address once, for the hot paths: its words and byte
/// ranges without a look at the mapping, and one bounds check per range.
///
/// Made by [`Mapping::resolve_ring`], which checked that the ring lies inside the mapping;
/// its user keeps the mapping alive for as long as it uses the value (both live in the same
/// channel end and go together).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingPtr {
    base: *mut u8,
    mask: usize,
}

// SAFETY: as for `Mapping`: addresses in a shared mapping, valid in every thread.
unsafe impl Send for RingPtr {}
// SAFETY: as for `Mapping`: shared access goes through atomics or ranges whose exclusive use
// the ring protocol arranges.
unsafe impl Sync for RingPtr {}

/// An atomic word of a mapping resolved to its address once (see [`RingPtr`]).
#[derive(Debug)]
pub(crate) struct WordPtr<T>(*const T);

impl<T> Clone for WordPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for WordPtr<T> {}

// SAFETY: as for `RingPtr`; `T` is an atomic type.
unsafe impl<T: Sync> Send for WordPtr<T> {}
// SAFETY: as for `RingPtr`; `T` is an atomic type.
unsafe impl<T: Sync> Sync for WordPtr<T> {}

impl<T> WordPtr<T> {
    /// The word.
    #[inline(always)]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: made by `Mapping::resolve_u32` / `resolve_u64` from a checked, aligned
        // offset of a mapping that outlives this value (the contract of those functions).
        unsafe { &*self.0 }
    }
}

impl Mapping {
    /// The ring `ring` resolved to its address; panics if it does not lie inside the
    /// mapping (a layout bug, never a consequence of what a peer wrote).
    ///
    /// # Safety
    ///
    /// The returned value, and every reference it hands out, must not be used after this
    /// mapping is dropped.
    pub(crate) unsafe fn resolve_ring(&self, ring: Ring) -> RingPtr {
        if ring.end > self.len {
            ring_outside(ring, self.len);
        }
        RingPtr {
            // SAFETY: `ring.offset < ring.end <= self.len`: inside the mapping.
            base: unsafe { self.base.add(ring.offset) },
            mask: ring.mask,
        }
    }

    /// The atomic `u64` at `offset` resolved to its address (checked as by `u64_at`).
    ///
    /// # Safety
    ///
    /// As for [`resolve_ring`](Self::resolve_ring).
    pub(crate) unsafe fn resolve_u64(&self, offset: usize) -> WordPtr<AtomicU64> {
        WordPtr(self.u64_at(offset))
    }

    /// The atomic `u32` at `offset` resolved to its address (checked as by `u32_at`).
    ///
    /// # Safety
    ///
    /// As for [`resolve_ring`](Self::resolve_ring).
    pub(crate) unsafe fn resolve_u32(&self, offset: usize) -> WordPtr<AtomicU32> {
        WordPtr(self.u32_at(offset))
    }
}

impl RingPtr {
    /// The ring's capacity in bytes.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask as u64 + 1
    }

    /// The word at ring position `position` (its low three bits and everything above the
    /// capacity ignored): in bounds and aligned whatever the position, so hot paths index
    /// the ring without an offset check per access.
    #[inline(always)]
    pub(crate) fn word(&self, position: u64) -> &AtomicU64 {
        let at = position as usize & self.mask & !7;
        // SAFETY: `at + 8 <= capacity` (the capacity is a power of two of at least 8 and
        // `at` a multiple of 8 below it) and the ring lies inside a live mapping
        // (`resolve_ring`'s contract), 8-byte aligned (`Ring::new`); as for `u64_at`.
        unsafe { AtomicU64::from_ptr(self.base.add(at).cast::<u64>()) }
    }

    /// The ring's bytes `offset..offset + len` for writing, `None` unless inside the ring.
    ///
    /// # Safety
    ///
    /// As for [`Mapping::bytes_mut`]: no other reference into this range may be alive in
    /// this process while the returned slice is.
    #[allow(clippy::mut_from_ref)] // Exclusivity is the caller's contract, stated above.
    #[inline(always)]
    pub(crate) unsafe fn bytes_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        if offset > self.capacity() || len > self.capacity() - offset {
            return None;
        }
        // SAFETY: inside the ring (checked above; an empty range may start at its end, at
        // most one past the mapping), which lies inside a live mapping; the caller promises
        // exclusivity in this process, other processes as in `bytes`.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.base.add(offset as usize), len as usize)
        })
    }

    /// The ring's bytes `offset..offset + len`, `None` unless inside the ring (concurrent
    /// writes as for [`Mapping::bytes`]).
    #[inline(always)]
    pub(crate) fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if offset > self.capacity() || len > self.capacity() - offset {
            return None;
        }
        // SAFETY: inside the ring (checked above; an empty range may start at its end, at
        // most one past the mapping), which lies inside a live mapping; every bit pattern is a valid `u8`.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(offset as usize), len as usize) })
    }
}

/// Where a ring of bytes lies in a mapping: an offset that is a multiple of 8 and a
/// power-of-two capacity of at least 8 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring {
    offset: usize,
    mask: usize,
    end: usize,
}

impl Ring {
    /// The ring at `offset` of `capacity` bytes; `None` if the offset is unaligned, the
    /// capacity not a power of two of at least 8, or the end beyond the address space.
    pub(crate) fn new(offset: usize, capacity: usize) -> Option<Ring> {
        if !offset.is_multiple_of(8) || !capacity.is_power_of_two() || capacity < 8 {
            return None;
        }
        Some(Ring {
            offset,
            mask: capacity - 1,
            end: offset.checked_add(capacity)?,
        })
    }
}

#[cold]
#[inline(never)]
fn ring_outside(ring: Ring, len: usize) -> ! {
    // Rings are placed by the layout inside a mapping whose size was checked: a bug in
    // this crate, never a consequence of what a peer wrote.
    panic!(
        "ring at {} of {} bytes outside mapping of {len} bytes",
        ring.offset,
        ring.mask + 1
    )
}

/// What a futex wait ended with. Callers re-check their condition either way.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, the value had already changed, or interrupted by a signal.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, at most `timeout` (a relative timeout, so there is
/// no deadline arithmetic that could lose nanoseconds, unlike raw_sync's timed waits).
///
/// The futex is shared (no `FUTEX_PRIVATE_FLAG`): the word lives in memory mapped by several
/// processes, and the kernel keys it by the underlying page.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Wake {
    let timespec = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; `timespec` is a
    // valid pointer; the unused arguments are ignored by FUTEX_WAIT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timespec as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        return Wake::TimedOut;
    }
    Wake::Woken
}

// membarrier(2) commands (linux/membarrier.h); the libc crate does not name them all.
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier_call(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes two integers (command, flags) and a cpu id ignored without
    // MEMBARRIER_CMD_FLAG_CPU; it touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// Whether this process is registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: then a
/// [`membarrier`] issued by any process runs a full memory barrier on every CPU that is
/// running one of this process's threads. Registers on the first call (once per process;
/// the kernel keeps it for the life of the process); false where the kernel lacks it.
pub(crate) fn membarrier_registered() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let supported = membarrier_call(MEMBARRIER_CMD_QUERY);
        let wanted = (MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
            as libc::c_long;
        supported >= 0
            && supported & wanted == wanted
            && membarrier_call(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0
    })
}

/// The slow half of an asymmetric fence: a full memory barrier here and on every CPU that
/// runs a thread of a process registered with [`membarrier_registered`], so that a
/// registered peer's plain stores before its plain loads are ordered as if it had fenced.
/// False if the system call failed (the caller must then fall back to fences on both sides).
pub(crate) fn membarrier() -> bool {
    membarrier_call(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0
}

/// Wakes up to `n` processes or threads sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    let n = n.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE reads no other argument.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// True if a process with `pid` exists (it may belong to another user).
pub(crate) fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; no signal is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The bytes of memory available to new allocations (`MemAvailable` in `/proc/meminfo`),
/// or `None` if the kernel does not say.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Creates an anonymous memory file (`memfd_create`, close-on-exec, sealable) named
/// `name` in `/proc/<pid>/fd`, of length 0 and with no seals yet.
pub(crate) fn memfd_create(name: &str) -> io::Result<File> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// As [`memfd_create`], with huge pages (`MFD_HUGETLB`).
#[cfg(test)]
pub(crate) fn memfd_create_hugetlb(name: &str) -> io::Result<File> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe {
        libc::memfd_create(
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Adds `seals` (`F_SEAL_*` bits) to the memory file `file`.
pub(crate) fn add_seals(file: &File, seals: u32) -> io::Result<()> {
    // SAFETY: plain fcntl on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals (`F_SEAL_*` bits) of `file`; an error (`EINVAL`) if it is not a memory file.
pub(crate) fn seals(file: &File) -> io::Result<u32> {
    // SAFETY: plain fcntl on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u32)
}

/// True if `file` lives on tmpfs, as plain memfds do (`fstatfs`); false for hugetlbfs
/// memfds and every other file system.
pub(crate) fn is_tmpfs(file: &File) -> io::Result<bool> {
    // SAFETY: all-zero bytes are a valid `statfs` (plain integers).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: plain system call on a file descriptor we own, writing into `stat`.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type == libc::TMPFS_MAGIC)
}

/// Creates an unnamed file in directory `dir` (`O_TMPFILE`), mode 0600: it gets a name only
/// through [`link_as`], so nobody ever sees it half written.
pub(crate) fn unnamed_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
}

/// Gives the unnamed file `file` the name `path`, atomically; `AlreadyExists` if the name
/// is taken (it is never replaced).
pub(crate) fn link_as(file: &File, path: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    // `AT_SYMLINK_FOLLOW` links the file the magic link names (the way open(2) documents
    // for `O_TMPFILE`), which needs no privilege.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Allocates the pages of `file` up to `len` bytes now, so that a lack of memory is an
/// error here instead of a fault on first touch.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds off_t"))?;
    // SAFETY: plain system call on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Frees the pages of `file` in `offset..offset + len` without changing its size
/// (`FALLOC_FL_PUNCH_HOLE`), as a hostile peer may: later reads there see zeros.
#[cfg(test)]
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range exceeds off_t",
        ));
    };
    // SAFETY: plain system call on a file descriptor we own for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn outside_mapping(offset: usize, len: usize, mapping_len: usize) -> ! {
    panic!("offset {offset} + {len} outside mapping of {mapping_len} bytes")
}
