//! A named shared-memory segment with a validated header: create (reclaiming a stale segment
//! whose owner died), open (waiting, bounded, until the creator marked it ready), and
//! unlink-on-drop by the owner.
//!
//! Header layout (little-endian words at fixed offsets, all accessed atomically):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `IPCSHM\0\x01` |
//! | 8 | 4 | layout version |
//! | 12 | 4 | kind: 1 channel, 2 shared state |
//! | 16 | 8 | layout hash of the kind |
//! | 24 | 8 | message-type fingerprint |
//! | 32 | 8 | capacity: ring bytes, or size of the shared value |
//! | 40 | 8 | total length of the segment |
//! | 48 | 4 | owner pid |
//! | 52 | 4 | state: 0 initialising, 1 ready, 2 closed |
//! | 56 | 8 | owner start time (clock ticks since boot) |

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ipc_core::{Error, ErrorKind, Result};
use shared_memory::{ShmemConf, ShmemError};

use crate::process::ProcessId;
use crate::sys::{self, Mapping};

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"IPCSHM\0\x01");
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 128;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_KIND: usize = 12;
const H_LAYOUT: usize = 16;
const H_FINGERPRINT: usize = 24;
const H_CAPACITY: usize = 32;
const H_TOTAL_LEN: usize = 40;
const H_OWNER_PID: usize = 48;
const H_STATE: usize = 52;
const H_OWNER_START: usize = 56;

const STATE_READY: u32 = 1;
const STATE_CLOSED: u32 = 2;

/// Longest segment name accepted (the OS limit on Linux is 255 bytes for the whole name).
pub(crate) const MAX_NAME_LEN: usize = 200;

/// A segment whose header is still all zeros this long after its creation is taken to be
/// left by a creator that died while initialising it.
const ABANDONED_INIT_AGE: Duration = Duration::from_secs(5);

/// How long `create` waits for another reclaimer's lock on a leftover segment.
const RECLAIM_LOCK_WAIT: Duration = Duration::from_secs(2);

/// What a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Channel = 1,
    State = 2,
}

/// What the creator writes into the header and what an opener expects of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec<'a> {
    pub(crate) kind: Kind,
    pub(crate) layout: u64,
    pub(crate) fingerprint: u64,
    pub(crate) type_name: &'a str,
}

/// An open segment. The creator owns it and unlinks its name on drop.
pub(crate) struct Segment {
    map: Mapping,
    name: String,
    owner: bool,
    capacity: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn os_id(name: &str) -> String {
    format!("/ipc-{name}")
}

/// The file behind the segment on Linux (glibc's `shm_open` works in `/dev/shm`).
pub(crate) fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/ipc-{name}"))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "segment name of {} bytes; expected 1 to {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "segment name `{name}` contains {bad:?}; use ASCII letters, digits, '-', '_', '.'"
            ),
        ));
    }
    Ok(())
}

fn errno_error(context: String, errno: u32) -> Error {
    Error::io(context, std::io::Error::from_raw_os_error(errno as i32))
}

fn shmem_error(context: String, err: ShmemError) -> Error {
    match err {
        ShmemError::MapCreateFailed(errno)
        | ShmemError::MapOpenFailed(errno)
        | ShmemError::UnknownOsError(errno) => errno_error(context, errno),
        ShmemError::MappingIdExists => Error::new(
            ErrorKind::AlreadyExists,
            format!("{context}: already exists"),
        ),
        other => Error::new(ErrorKind::Io, format!("{context}: {other}")).with_source(other),
    }
}

impl Segment {
    /// Creates segment `name` of `total_len` bytes holding `capacity` units, initialises
    /// it with `init` and marks it ready. A segment of that name whose owner died is
    /// reclaimed; one whose owner lives is [`ErrorKind::AlreadyExists`].
    pub(crate) fn create(
        name: &str,
        spec: Spec<'_>,
        capacity: u64,
        total_len: usize,
        init: impl FnOnce(&Mapping),
    ) -> Result<Segment> {
        check_name(name)?;
        let id = os_id(name);
        let path = shm_path(name);
        let mut attempts = 0;
        let shmem = loop {
            attempts += 1;
            match ShmemConf::new().os_id(&id).size(total_len).create() {
                Ok(shmem) => break shmem,
                Err(ShmemError::MappingIdExists) if attempts < 4 => {
                    reclaim_if_stale(name)?;
                }
                Err(err) => {
                    return Err(shmem_error(
                        format!("create shared-memory segment `{name}`"),
                        err,
                    ));
                }
            }
        };
        let map = Mapping::new(shmem);
        // From here, dropping `segment` unlinks the name again (we are the owner).
        let segment = Segment {
            map,
            name: name.to_owned(),
            owner: true,
            capacity,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
        // shm_open asked for 0600 already (less under a strict umask); make owner-only
        // explicit whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|err| Error::io(format!("chmod 0600 {}", path.display()), err))?;
        // A request beyond what is free fails here, before allocating any of it.
        let free = sys::free_space(&file)
            .map_err(|err| Error::io(format!("statvfs {}", path.display()), err))?;
        if total_len as u64 > free {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "shared-memory segment `{name}` needs {total_len} bytes but /dev/shm has {free} free"
                ),
            ));
        }
        sys::preallocate(&file, total_len as u64).map_err(|err| {
            Error::io(
                format!(
                    "allocate {total_len} bytes for shared-memory segment `{name}` in /dev/shm"
                ),
                err,
            )
        })?;
        drop(file);

        let map = &segment.map;
        let me = ProcessId::current();
        map.u64_at(H_MAGIC).store(MAGIC, Ordering::Relaxed);
        map.u32_at(H_VERSION).store(VERSION, Ordering::Relaxed);
        map.u32_at(H_KIND)
            .store(spec.kind as u32, Ordering::Relaxed);
        map.u64_at(H_LAYOUT).store(spec.layout, Ordering::Relaxed);
        map.u64_at(H_FINGERPRINT)
            .store(spec.fingerprint, Ordering::Relaxed);
        map.u64_at(H_CAPACITY).store(capacity, Ordering::Relaxed);
        map.u64_at(H_TOTAL_LEN)
            .store(total_len as u64, Ordering::Relaxed);
        map.u32_at(H_OWNER_PID).store(me.pid, Ordering::Relaxed);
        map.u64_at(H_OWNER_START).store(me.start, Ordering::Relaxed);
        init(map);
        map.u32_at(H_STATE).store(STATE_READY, Ordering::Release);
        Ok(segment)
    }

    /// Opens segment `name`, waiting at most `timeout` for its creator to mark it ready, and
    /// checks its header against `spec`. Returns the segment; its capacity is checked by the
    /// caller.
    pub(crate) fn open(name: &str, spec: Spec<'_>, timeout: Duration) -> Result<Segment> {
        check_name(name)?;
        let id = os_id(name);
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        let mut foreign_magic = None;
        loop {
            match ShmemConf::new().os_id(&id).open() {
                Ok(shmem) => {
                    let mut map = Mapping::new(shmem);
                    map.set_owner(false);
                    if map.len() >= HEADER_LEN {
                        let state = map.u32_at(H_STATE).load(Ordering::Acquire);
                        if state == STATE_READY {
                            return Segment::validate(map, name, spec);
                        }
                        if state == STATE_CLOSED {
                            return Err(Error::new(
                                ErrorKind::PeerClosed,
                                format!("shared-memory segment `{name}` was closed by its owner"),
                            ));
                        }
                        let magic = map.u64_at(H_MAGIC).load(Ordering::Relaxed);
                        foreign_magic = (magic != MAGIC && magic != 0).then_some(magic);
                        let owner = owner_of(&map);
                        if magic == MAGIC && owner.pid != 0 && !owner.is_alive() {
                            return Err(Error::new(
                                ErrorKind::PeerDied,
                                format!(
                                    "shared-memory segment `{name}` was left half-initialised by process {}, which died",
                                    owner.pid
                                ),
                            ));
                        }
                    }
                }
                // Exists but not yet sized by its creator: mmap of 0 bytes fails.
                Err(ShmemError::MapOpenFailed(errno)) if errno == libc::EINVAL as u32 => {}
                Err(ShmemError::MapOpenFailed(errno)) if errno == libc::ENOENT as u32 => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no shared-memory segment named `{name}`"),
                    ));
                }
                Err(err) => {
                    return Err(shmem_error(
                        format!("open shared-memory segment `{name}`"),
                        err,
                    ));
                }
            }
            if started.elapsed() >= timeout {
                if let Some(magic) = foreign_magic {
                    return Err(Error::new(
                        ErrorKind::BadMagic,
                        format!(
                            "shared-memory segment `{name}` has magic {magic:#018x}, not an ipc-shm segment"
                        ),
                    ));
                }
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "shared-memory segment `{name}` not ready after {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    fn validate(map: Mapping, name: &str, spec: Spec<'_>) -> Result<Segment> {
        let magic = map.u64_at(H_MAGIC).load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(Error::new(
                ErrorKind::BadMagic,
                format!(
                    "shared-memory segment `{name}` has magic {magic:#018x}, not an ipc-shm segment"
                ),
            ));
        }
        let version = map.u32_at(H_VERSION).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "shared-memory segment `{name}` has layout version {version}, this build understands {VERSION}"
                ),
            ));
        }
        // A dead owner first: whatever else the segment says, it is a leftover.
        let owner = owner_of(&map);
        if !owner.is_alive() {
            return Err(Error::new(
                ErrorKind::PeerDied,
                format!(
                    "shared-memory segment `{name}` belongs to process {}, which died",
                    owner.pid
                ),
            ));
        }
        let kind = map.u32_at(H_KIND).load(Ordering::Relaxed);
        let layout = map.u64_at(H_LAYOUT).load(Ordering::Relaxed);
        if kind != spec.kind as u32 || layout != spec.layout {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "shared-memory segment `{name}` holds kind {kind} with layout {layout:#018x}, expected kind {} with layout {:#018x}",
                    spec.kind as u32, spec.layout
                ),
            ));
        }
        let fingerprint = map.u64_at(H_FINGERPRINT).load(Ordering::Relaxed);
        if fingerprint != spec.fingerprint {
            return Err(Error::new(
                ErrorKind::TypeMismatch,
                format!(
                    "shared-memory segment `{name}` carries type fingerprint {fingerprint:#018x}, this end expects `{}` ({:#018x})",
                    spec.type_name, spec.fingerprint
                ),
            ));
        }
        let total_len = map.u64_at(H_TOTAL_LEN).load(Ordering::Relaxed);
        if total_len != map.len() as u64 {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "shared-memory segment `{name}` claims {total_len} bytes but maps {}",
                    map.len()
                ),
            ));
        }
        let capacity = map.u64_at(H_CAPACITY).load(Ordering::Relaxed);
        Ok(Segment {
            map,
            name: name.to_owned(),
            owner: false,
            capacity,
        })
    }

    /// The mapping.
    #[inline]
    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// The segment's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The capacity recorded in the header (validated by the caller for its kind).
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The process that created the segment.
    #[cfg(test)]
    pub(crate) fn owner(&self) -> ProcessId {
        owner_of(&self.map)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            // Openers that arrive between now and the unlink see a closed segment.
            self.map
                .u32_at(H_STATE)
                .store(STATE_CLOSED, Ordering::Release);
        }
        // `Shmem`'s own drop munmaps, and shm_unlinks the name if we own it.
    }
}

fn owner_of(map: &Mapping) -> ProcessId {
    ProcessId {
        pid: map.u32_at(H_OWNER_PID).load(Ordering::Relaxed),
        start: map.u64_at(H_OWNER_START).load(Ordering::Relaxed),
    }
}

/// Removes the segment named `name` if its owner is dead, or if it is an ipc-shm segment
/// abandoned before its header was written. Returns `AlreadyExists` when the segment is in
/// use (or is not ours to remove).
///
/// Reclaimers serialise on an `flock` of the segment file and re-check, under the lock, that
/// the name still refers to the file they examined, so two processes reclaiming at once never
/// remove a segment that a third has just created.
fn reclaim_if_stale(name: &str) -> Result<()> {
    let path = shm_path(name);
    let file = match File::options().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io(format!("open {}", path.display()), err)),
    };
    // Reclaimers hold the lock for microseconds; anyone holding it longer is not one of us,
    // and must not make `create` hang.
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < RECLAIM_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} stayed locked for {} ms; not reclaiming it",
                        path.display(),
                        RECLAIM_LOCK_WAIT.as_millis()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(Error::io(format!("lock {}", path.display()), err));
            }
        }
    }
    let meta = file
        .metadata()
        .map_err(|err| Error::io(format!("stat {}", path.display()), err))?;
    match std::fs::metadata(&path) {
        Ok(now) if now.ino() == meta.ino() && now.dev() == meta.dev() => {}
        // Removed or replaced since we opened it: let the caller try to create again.
        _ => return Ok(()),
    }
    let mut header = [0u8; HEADER_LEN];
    let have = if meta.len() >= HEADER_LEN as u64 {
        file.read_exact_at(&mut header, 0)
            .map_err(|err| Error::io(format!("read {}", path.display()), err))?;
        true
    } else {
        false
    };
    let word = |offset: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[offset..offset + 8]);
        u64::from_le_bytes(bytes)
    };
    let stale = if have && word(H_MAGIC) == MAGIC {
        let owner = ProcessId {
            pid: word(H_OWNER_PID) as u32,
            start: word(H_OWNER_START),
        };
        if owner.is_alive() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "shared-memory segment `{name}` exists and its owner, process {}, is alive",
                    owner.pid
                ),
            ));
        }
        true
    } else if !have || header.iter().all(|&b| b == 0) {
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age < ABANDONED_INIT_AGE {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "shared-memory segment `{name}` exists and is being initialised ({} ms old)",
                    age.as_millis()
                ),
            ));
        }
        true
    } else {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not an ipc-shm segment; not removing it",
                path.display()
            ),
        ));
    };
    if stale {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(format!("remove stale {}", path.display()), err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec<'static> = Spec {
        kind: Kind::State,
        layout: 7,
        fingerprint: 9,
        type_name: "test",
    };

    fn name(tag: &str) -> String {
        format!("unit-{tag}-{}", std::process::id())
    }

    #[test]
    fn create_open_validate_and_unlink_on_drop() {
        let name = name("basic");
        let created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        let mode = std::fs::metadata(shm_path(&name)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let opened = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap();
        assert_eq!(opened.capacity(), 16);
        assert_eq!(opened.owner().pid, std::process::id());

        let err = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        let other_type = Spec {
            fingerprint: 10,
            ..SPEC
        };
        let err = Segment::open(&name, other_type, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TypeMismatch, "{err}");
        let other_kind = Spec {
            kind: Kind::Channel,
            ..SPEC
        };
        let err = Segment::open(&name, other_kind, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion, "{err}");

        drop(opened);
        drop(created);
        assert!(!shm_path(&name).exists());
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "a b", &"x".repeat(MAX_NAME_LEN + 1)] {
            let err = Segment::create(bad, SPEC, 1, 4096, |_| {}).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn foreign_files_are_not_reclaimed_and_not_opened() {
        let name = name("foreign");
        let path = shm_path(&name);
        std::fs::write(&path, vec![0xabu8; 4096]).unwrap();
        let err = Segment::create(&name, SPEC, 1, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        // Never ready (its state word is garbage): open waits, then names the bad magic.
        let err = Segment::open(&name, SPEC, Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic, "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_half_initialised_segment_is_waited_for_then_reclaimed_once_abandoned() {
        let name = name("halfinit");
        let path = shm_path(&name);
        // What a creator leaves between sizing the segment and writing its header.
        let file = File::create_new(&path).unwrap();
        file.set_len(4096).unwrap();
        // Open waits for the ready state, bounded.
        let started = Instant::now();
        let err = Segment::open(&name, SPEC, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A young one may still be initialised by a live creator: not reclaimed.
        let err = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        // An old one was abandoned by a creator that died: reclaimed.
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        drop(file);
        let created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        assert_eq!(created.capacity(), 16);
        drop(created);
        assert!(!path.exists());
    }

    #[test]
    fn a_segment_of_a_dead_owner_is_refused_by_open_and_reclaimed_by_create() {
        let name = name("deadowner");
        let created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        // Pretend the owner died: a pid that cannot exist.
        created
            .map()
            .u32_at(H_OWNER_PID)
            .store(u32::MAX - 7, Ordering::Relaxed);
        // Keep the file when this handle goes (as after a SIGKILL).
        let mut created = created;
        created.map.set_owner(false);
        created.owner = false;
        drop(created);
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerDied, "{err}");
        // Someone squatting on the reclaim lock makes `create` fail, not hang.
        let squatter = File::open(shm_path(&name)).unwrap();
        squatter.lock().unwrap();
        let err = Segment::create(&name, SPEC, 32, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        drop(squatter);
        let again = Segment::create(&name, SPEC, 32, 4096, |_| {}).unwrap();
        assert_eq!(again.capacity(), 32);
        drop(again);
        assert!(!shm_path(&name).exists());
    }

    #[test]
    fn a_segment_larger_than_the_free_space_is_an_error_at_create() {
        let name = name("huge");
        // 1 TiB: more than any test machine's /dev/shm; refused before allocating.
        let err = Segment::create(&name, SPEC, 1, 1 << 40, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("free"), "{err}");
        assert!(!shm_path(&name).exists());
    }
}
