//! A named shared-memory segment with a validated header: create (reclaiming a stale name
//! whose owner died), open (checking seals, identity and header), and removal of the name by
//! the owner on drop.
//!
//! The memory is an anonymous memory file (`memfd_create`) that the creator sizes,
//! preallocates and seals with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` before anyone else
//! can see it: no process can change its size afterwards, so no access inside a mapping of
//! it can ever fault with SIGBUS. The name is a small *rendezvous* file,
//! `/dev/shm/ipc-{name}` (mode 0600), that says where the memory is: the creator's pid and
//! start time, the memfd's number in the creator's `/proc/<pid>/fd`, and a random nonce
//! that the segment header repeats. An opener (same user) opens `/proc/<pid>/fd/<n>`,
//! refuses it unless it carries all three seals, and checks that the header's nonce and
//! owner match the rendezvous (so a reused fd number or pid never passes).
//!
//! The rendezvous is written into an unnamed file (`O_TMPFILE`) and linked under its name
//! only when complete and after the segment is ready: an opener sees no name, or a whole
//! one. Linking fails if the name exists, which is what makes `create` exclusive.
//!
//! Rendezvous layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `IPCRDV\0\x01` |
//! | 8 | 4 | rendezvous version (1) |
//! | 12 | 4 | creator pid |
//! | 16 | 8 | creator start time (clock ticks since boot) |
//! | 24 | 4 | memfd number in the creator |
//! | 28 | 4 | reserved, 0 |
//! | 32 | 8 | nonce |
//! | 40 | 8 | total length of the segment |
//!
//! Header layout of the memory (little-endian words at fixed offsets, all accessed
//! atomically):
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
//! | 64 | 8 | nonce (as in the rendezvous) |

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ipc_core::{Error, ErrorKind, Result};

use crate::process::ProcessId;
use crate::sys::{self, Mapping};

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"IPCSHM\0\x01");
/// Version 2: the memory is a sealed memfd found through a rendezvous file (version 1 was a
/// named `/dev/shm` file that any process with access could shrink).
pub(crate) const VERSION: u32 = 2;
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
const H_NONCE: usize = 64;

const STATE_READY: u32 = 1;
const STATE_CLOSED: u32 = 2;

const RDV_MAGIC: u64 = u64::from_le_bytes(*b"IPCRDV\0\x01");
const RDV_VERSION: u32 = 1;
const RDV_LEN: usize = 48;

/// The directory of the rendezvous files.
const RDV_DIR: &str = "/dev/shm";

/// Longest segment name accepted (the OS limit on Linux is 255 bytes for the whole name).
pub(crate) const MAX_NAME_LEN: usize = 200;

/// A file at a segment's name that is empty or all zeros this long after it was last
/// written is taken to be left by a creator of an older version that died while
/// initialising it (this version never publishes a name before it is complete).
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

/// What the creator holds beyond the mapping.
struct Owned {
    /// The sealed memfd, kept open so that openers find it as `/proc/<pid>/fd/<n>`.
    _memfd: File,
    /// Device and inode of the rendezvous file we linked, so that drop removes only ours.
    rendezvous: (u64, u64),
}

/// An open segment. The creator owns it and removes its name on drop.
pub(crate) struct Segment {
    map: Mapping,
    name: String,
    capacity: u64,
    owned: Option<Owned>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("owner", &self.owned.is_some())
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The rendezvous file of segment `name`.
pub(crate) fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{RDV_DIR}/ipc-{name}"))
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

/// A nonce that tells one segment from every other (not a secret: a same-user peer can
/// read it anyway).
fn new_nonce() -> u64 {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // Never 0, so that a zeroed header never matches.
    hasher.finish() | 1
}

/// What a rendezvous file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rendezvous {
    owner: ProcessId,
    fd: u32,
    nonce: u64,
    total_len: u64,
}

impl Rendezvous {
    fn to_bytes(self) -> [u8; RDV_LEN] {
        let mut bytes = [0u8; RDV_LEN];
        bytes[0..8].copy_from_slice(&RDV_MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&RDV_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.owner.pid.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.owner.start.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.fd.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.nonce.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.total_len.to_le_bytes());
        bytes
    }

    /// The memory's path for a process of the same user.
    fn memory_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", self.owner.pid, self.fd))
    }
}

/// What is found at a segment's name.
#[derive(Debug)]
enum Found {
    Rendezvous(Rendezvous),
    /// A rendezvous of a version this build does not understand.
    OtherVersion(u32),
    /// A version-1 segment (the memory itself under the name), owned by this process.
    OldSegment(ProcessId),
    /// Empty or all zeros.
    Blank,
    /// Anything else; the first word, if there are 8 bytes.
    Foreign(Option<u64>),
}

fn word_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Opens the file at a segment's name for reading without following a symlink and without
/// blocking (a FIFO put there by someone else must not hang us); `NotFound` passes through
/// as an `io::Error`, anything but a regular file is `InvalidData`.
fn open_name_file(path: &Path) -> std::io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// [`open_name_file`] with the errors of `open`: `NotFound`, or `BadMagic` for a file that
/// is not a regular one.
fn open_name(name: &str, path: &Path) -> Result<File> {
    match open_name_file(path) {
        Ok(file) => Ok(file),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            ErrorKind::NotFound,
            format!("no shared-memory segment named `{name}`"),
        )),
        Err(err) if not_regular(&err) => Err(Error::new(
            ErrorKind::BadMagic,
            format!(
                "{} is not a regular file ({err}), not an ipc-shm segment",
                path.display()
            ),
        )),
        Err(err) => Err(Error::io(format!("open {}", path.display()), err)),
    }
}

/// True for the errors of [`open_name_file`] that mean "something else lives there".
fn not_regular(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::InvalidData || err.raw_os_error() == Some(libc::ELOOP)
}

/// True if the name file at `path` still holds `rendezvous`.
fn still_published(path: &Path, rendezvous: Rendezvous) -> bool {
    open_name_file(path)
        .and_then(|file| read_found(&file))
        .is_ok_and(|found| matches!(found, Found::Rendezvous(now) if now == rendezvous))
}

/// Reads what `file` (at a segment's name) holds; reads at most a header's worth.
fn read_found(file: &File) -> std::io::Result<Found> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64).read_to_end(&mut bytes)?;
    if bytes.iter().all(|&b| b == 0) {
        return Ok(Found::Blank);
    }
    if bytes.len() < 8 {
        return Ok(Found::Foreign(None));
    }
    let magic = word_at(&bytes, 0);
    if magic == RDV_MAGIC && bytes.len() >= 12 {
        let version = u32_at(&bytes, 8);
        if version != RDV_VERSION {
            return Ok(Found::OtherVersion(version));
        }
        if bytes.len() < RDV_LEN {
            return Ok(Found::Foreign(Some(magic)));
        }
        return Ok(Found::Rendezvous(Rendezvous {
            owner: ProcessId {
                pid: u32_at(&bytes, 12),
                start: word_at(&bytes, 16),
            },
            fd: u32_at(&bytes, 24),
            nonce: word_at(&bytes, 32),
            total_len: word_at(&bytes, 40),
        }));
    }
    if magic == MAGIC && bytes.len() >= HEADER_LEN {
        return Ok(Found::OldSegment(ProcessId {
            pid: u32_at(&bytes, H_OWNER_PID),
            start: word_at(&bytes, H_OWNER_START),
        }));
    }
    Ok(Found::Foreign(Some(magic)))
}

fn bad_magic(name: &str, magic: u64) -> Error {
    Error::new(
        ErrorKind::BadMagic,
        format!("shared-memory segment `{name}` has magic {magic:#018x}, not an ipc-shm segment"),
    )
}

fn old_segment(name: &str) -> Error {
    Error::new(
        ErrorKind::UnsupportedVersion,
        format!(
            "shared-memory segment `{name}` has layout version 1 (an unsealed /dev/shm file), this build understands {VERSION}"
        ),
    )
}

/// Where the memory of segment `name` can be opened by a process of the same user:
/// `/proc/<creator pid>/fd/<n>`.
pub(crate) fn memory_path(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let path = shm_path(name);
    let file = open_name(name, &path)?;
    match read_found(&file).map_err(|err| Error::io(format!("read {}", path.display()), err))? {
        Found::Rendezvous(rendezvous) => Ok(rendezvous.memory_path()),
        Found::OtherVersion(version) => Err(other_version(name, version)),
        Found::OldSegment(_) => Err(old_segment(name)),
        Found::Blank | Found::Foreign(None) => Err(bad_magic(name, 0)),
        Found::Foreign(Some(magic)) => Err(bad_magic(name, magic)),
    }
}

fn other_version(name: &str, version: u32) -> Error {
    Error::new(
        ErrorKind::UnsupportedVersion,
        format!(
            "shared-memory segment `{name}` has rendezvous version {version}, this build understands {RDV_VERSION}"
        ),
    )
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
        let path = shm_path(name);
        // A request beyond what is free fails here, before allocating any of it.
        if let Some(free) = sys::available_memory()
            && total_len as u64 > free
        {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "shared-memory segment `{name}` needs {total_len} bytes but only {free} bytes of memory are free"
                ),
            ));
        }
        let memfd = sys::memfd_create(&format!("ipc-{name}"))
            .map_err(|err| Error::io(format!("memfd_create for segment `{name}`"), err))?;
        // The memfd's own mode (0777 by default) matters only through /proc/<pid>/fd, which
        // only processes of this user (or privileged ones) can open; make it owner-only too.
        memfd
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|err| Error::io(format!("chmod 0600 memfd of segment `{name}`"), err))?;
        memfd.set_len(total_len as u64).map_err(|err| {
            Error::io(
                format!("size memfd of segment `{name}` to {total_len} bytes"),
                err,
            )
        })?;
        sys::preallocate(&memfd, total_len as u64).map_err(|err| {
            Error::io(
                format!("allocate {total_len} bytes for shared-memory segment `{name}`"),
                err,
            )
        })?;
        sys::add_seals(&memfd, sys::SEGMENT_SEALS)
            .map_err(|err| Error::io(format!("seal memfd of segment `{name}`"), err))?;
        // Another process of this user could have reached the memfd through /proc before
        // the seals and resized it: check the length the seals now fix.
        let sealed_len = memfd
            .metadata()
            .map_err(|err| Error::io(format!("stat memfd of segment `{name}`"), err))?
            .len();
        if sealed_len != total_len as u64 {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "memfd of segment `{name}` is {sealed_len} bytes once sealed, expected {total_len}"
                ),
            ));
        }
        let map = Mapping::new(&memfd, total_len)
            .map_err(|err| Error::io(format!("map {total_len} bytes of segment `{name}`"), err))?;

        let me = ProcessId::current();
        let nonce = new_nonce();
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
        map.u64_at(H_NONCE).store(nonce, Ordering::Relaxed);
        init(&map);
        map.u32_at(H_STATE).store(STATE_READY, Ordering::Release);

        let rendezvous = Rendezvous {
            owner: me,
            fd: memfd.as_raw_fd() as u32,
            nonce,
            total_len: total_len as u64,
        };
        let identity = publish(name, &path, rendezvous)?;
        Ok(Segment {
            map,
            name: name.to_owned(),
            capacity,
            owned: Some(Owned {
                _memfd: memfd,
                rendezvous: identity,
            }),
        })
    }

    /// Opens segment `name`, waiting at most `timeout` while what its name holds is not
    /// (yet) a rendezvous, and checks the memory's seals and header against `spec`. Returns
    /// the segment; its capacity is checked by the caller.
    pub(crate) fn open(name: &str, spec: Spec<'_>, timeout: Duration) -> Result<Segment> {
        check_name(name)?;
        let path = shm_path(name);
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        let mut foreign_magic = None;
        let mut superseded = None;
        loop {
            let file = open_name(name, &path)?;
            let found = read_found(&file)
                .map_err(|err| Error::io(format!("read {}", path.display()), err))?;
            match found {
                Found::Rendezvous(rendezvous) => match Segment::attach(name, rendezvous, spec) {
                    // The creator may have closed the segment while we looked (it removes
                    // the name, then closes the memfd, whose number may then name another
                    // file): if the name changed meanwhile, look again.
                    Err(err)
                        if matches!(
                            err.kind(),
                            ErrorKind::Protocol | ErrorKind::Corrupted | ErrorKind::PeerClosed
                        ) && !still_published(&path, rendezvous) =>
                    {
                        superseded = Some(err);
                    }
                    outcome => return outcome,
                },
                Found::OtherVersion(version) => return Err(other_version(name, version)),
                Found::OldSegment(owner) if !owner.is_alive() => {
                    return Err(Error::new(
                        ErrorKind::PeerDied,
                        format!(
                            "shared-memory segment `{name}` belongs to process {}, which died",
                            owner.pid
                        ),
                    ));
                }
                Found::OldSegment(_) => return Err(old_segment(name)),
                Found::Blank => {}
                Found::Foreign(magic) => foreign_magic = magic,
            }
            if started.elapsed() >= timeout {
                if let Some(err) = superseded {
                    return Err(err);
                }
                if let Some(magic) = foreign_magic {
                    return Err(bad_magic(name, magic));
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

    /// Opens and maps the memory that `rendezvous` names, after checking that it is sealed
    /// and is the segment the rendezvous describes.
    fn attach(name: &str, rendezvous: Rendezvous, spec: Spec<'_>) -> Result<Segment> {
        let owner = rendezvous.owner;
        let died = || {
            Error::new(
                ErrorKind::PeerDied,
                format!(
                    "shared-memory segment `{name}` belongs to process {}, which died",
                    owner.pid
                ),
            )
        };
        // A dead owner first: whatever else the name says, it is a leftover.
        if !owner.is_alive() {
            return Err(died());
        }
        let memory = rendezvous.memory_path();
        // Not blocking, and never taking a terminal: a hostile creator chooses what the fd
        // is, and only a memfd passes the checks below.
        let file = match File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&memory)
        {
            Ok(file) => file,
            // An owner that exited but is not reaped yet has closed its files already.
            Err(_) if !owner.is_alive() || owner.is_zombie() => return Err(died()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::PeerClosed,
                    format!(
                        "shared-memory segment `{name}`: process {} no longer holds its memory at {}",
                        owner.pid,
                        memory.display()
                    ),
                ));
            }
            Err(err) => {
                return Err(Error::io(
                    format!(
                        "open the memory of shared-memory segment `{name}` at {}",
                        memory.display()
                    ),
                    err,
                ));
            }
        };
        // The pid may have been reused between the check and the open: check again, so
        // that the file we hold is the one the owner published.
        if !owner.is_alive() {
            return Err(died());
        }
        // A hostile or buggy creator could hand out memory it can still shrink: refuse it
        // before mapping, as any access to it could then fault.
        let seals = sys::seals(&file).unwrap_or(0);
        if seals & sys::SEGMENT_SEALS != sys::SEGMENT_SEALS {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "shared-memory segment `{name}`: the memory at {} has seals {seals:#x}, not {:#x} (sealed against shrinking and growing); refusing to map it",
                    memory.display(),
                    sys::SEGMENT_SEALS
                ),
            ));
        }
        // A hugetlbfs memfd can be sealed too, but a fault there fails with SIGBUS when the
        // huge-page pool runs dry (after its owner punched a hole, say): plain memfds only.
        if !sys::is_tmpfs(&file).unwrap_or(false) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "shared-memory segment `{name}`: the memory at {} is not a plain memfd (tmpfs); refusing to map it",
                    memory.display()
                ),
            ));
        }
        // Sealed: the length cannot change any more.
        let len = file
            .metadata()
            .map_err(|err| Error::io(format!("stat {}", memory.display()), err))?
            .len();
        if len != rendezvous.total_len || len < HEADER_LEN as u64 || usize::try_from(len).is_err() {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "shared-memory segment `{name}`: the memory is {len} bytes, its rendezvous says {} (at least {HEADER_LEN})",
                    rendezvous.total_len
                ),
            ));
        }
        let map = Mapping::new(&file, len as usize)
            .map_err(|err| Error::io(format!("map {len} bytes of segment `{name}`"), err))?;
        drop(file);
        let nonce = map.u64_at(H_NONCE).load(Ordering::Relaxed);
        let header_owner = owner_of(&map);
        if nonce != rendezvous.nonce || header_owner != owner {
            return Err(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "shared-memory segment `{name}`: the memory at {} is not the one its rendezvous names (nonce {nonce:#018x} of process {}, expected {:#018x} of process {})",
                    memory.display(),
                    header_owner.pid,
                    rendezvous.nonce,
                    owner.pid
                ),
            ));
        }
        match map.u32_at(H_STATE).load(Ordering::Acquire) {
            STATE_READY => Segment::validate(map, name, spec),
            STATE_CLOSED => Err(Error::new(
                ErrorKind::PeerClosed,
                format!("shared-memory segment `{name}` was closed by its owner"),
            )),
            state => Err(Error::new(
                ErrorKind::Corrupted,
                format!("shared-memory segment `{name}` is published in state {state}, not ready"),
            )),
        }
    }

    fn validate(map: Mapping, name: &str, spec: Spec<'_>) -> Result<Segment> {
        let magic = map.u64_at(H_MAGIC).load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(bad_magic(name, magic));
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
            capacity,
            owned: None,
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
        let Some(owned) = &self.owned else {
            return;
        };
        // Openers that still reach the memory see a closed segment.
        self.map
            .u32_at(H_STATE)
            .store(STATE_CLOSED, Ordering::Release);
        // Remove the name only if it is still the file we linked; a failure leaves a
        // rendezvous that names a closed fd (reclaimed once we are gone).
        let path = shm_path(&self.name);
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && (meta.dev(), meta.ino()) == owned.rendezvous
        {
            let _ = std::fs::remove_file(&path);
        }
        // Then the fields: the mapping is unmapped, the memfd closed; the memory itself
        // lives on while an opener still maps it.
    }
}

fn owner_of(map: &Mapping) -> ProcessId {
    ProcessId {
        pid: map.u32_at(H_OWNER_PID).load(Ordering::Relaxed),
        start: map.u64_at(H_OWNER_START).load(Ordering::Relaxed),
    }
}

/// Links the rendezvous `rendezvous` under `path`, reclaiming a stale file there; returns
/// the device and inode of the published file.
fn publish(name: &str, path: &Path, rendezvous: Rendezvous) -> Result<(u64, u64)> {
    let mut file = sys::unnamed_file(Path::new(RDV_DIR))
        .map_err(|err| Error::io(format!("create a rendezvous file in {RDV_DIR}"), err))?;
    // O_TMPFILE asked for 0600 already (less under a strict umask); make owner-only
    // explicit whatever the umask.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|err| Error::io(format!("chmod 0600 the rendezvous of `{name}`"), err))?;
    file.write_all(&rendezvous.to_bytes())
        .map_err(|err| Error::io(format!("write the rendezvous of `{name}`"), err))?;
    let meta = file
        .metadata()
        .map_err(|err| Error::io(format!("stat the rendezvous of `{name}`"), err))?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sys::link_as(&file, path) {
            Ok(()) => return Ok((meta.dev(), meta.ino())),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempts < 4 => {
                reclaim_if_stale(name)?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("create shared-memory segment `{name}`: already exists"),
                ));
            }
            Err(err) => {
                return Err(Error::io(
                    format!(
                        "create shared-memory segment `{name}` at {}",
                        path.display()
                    ),
                    err,
                ));
            }
        }
    }
}

/// Removes the file at segment `name` if its owner is dead, or if it is blank (left by an
/// older version's creator that died before writing its header). Returns `AlreadyExists`
/// when the segment is in use (or is not ours to remove).
///
/// Reclaimers serialise on an `flock` of the file and re-check, under the lock, that the
/// name still refers to the file they examined, so two processes reclaiming at once never
/// remove a segment that a third has just created.
fn reclaim_if_stale(name: &str) -> Result<()> {
    let path = shm_path(name);
    let file = match open_name_file(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) if not_regular(&err) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a regular file ({err}); not removing it",
                    path.display()
                ),
            ));
        }
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
    let found =
        read_found(&file).map_err(|err| Error::io(format!("read {}", path.display()), err))?;
    let owner = match found {
        Found::Rendezvous(rendezvous) => Some(rendezvous.owner),
        Found::OldSegment(owner) => Some(owner),
        Found::Blank => None,
        Found::OtherVersion(_) | Found::Foreign(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not an ipc-shm segment of this version; not removing it",
                    path.display()
                ),
            ));
        }
    };
    match owner {
        Some(owner) if owner.is_alive() => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "shared-memory segment `{name}` exists and its owner, process {}, is alive",
                    owner.pid
                ),
            ));
        }
        Some(_) => {}
        None => {
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
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::io(format!("remove stale {}", path.display()), err)),
    }
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
    fn a_fifo_or_symlink_at_the_name_is_neither_opened_nor_reclaimed_and_hangs_nobody() {
        let fifo = name("fifo");
        let path = shm_path(&fifo);
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        // Opening a FIFO for reading would block until a writer came: it must not (the
        // open runs on a thread so that a hang fails this test instead of stalling it).
        let (done, outcome) = std::sync::mpsc::channel();
        let opener = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(Segment::open(&opener, SPEC, Duration::from_secs(1)).map(|_| ()));
        });
        let err = outcome
            .recv_timeout(Duration::from_secs(30))
            .expect("open of a FIFO hung")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic, "{err}");
        let err = memory_path(&fifo).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic, "{err}");
        let err = Segment::create(&fifo, SPEC, 16, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        std::fs::remove_file(&path).unwrap();

        // A symlink to a live segment's rendezvous is not followed.
        let target = name("symlink-target");
        let _live = Segment::create(&target, SPEC, 16, 4096, |_| {}).unwrap();
        let link = name("symlink");
        std::os::unix::fs::symlink(shm_path(&target), shm_path(&link)).unwrap();
        let err = Segment::open(&link, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic, "{err}");
        let err = Segment::create(&link, SPEC, 16, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        std::fs::remove_file(shm_path(&link)).unwrap();
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

    /// Rewrites the rendezvous of `name` in place with `edit` applied.
    fn forge_rendezvous(name: &str, edit: impl FnOnce(&mut Rendezvous)) {
        let path = shm_path(name);
        let Found::Rendezvous(mut rendezvous) = read_found(&File::open(&path).unwrap()).unwrap()
        else {
            panic!("no rendezvous at {}", path.display());
        };
        edit(&mut rendezvous);
        std::os::unix::fs::FileExt::write_all_at(
            &File::options().write(true).open(&path).unwrap(),
            &rendezvous.to_bytes(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn a_segment_of_a_dead_owner_is_refused_by_open_and_reclaimed_by_create() {
        let name = name("deadowner");
        let mut created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        // Pretend the owner died: a pid that cannot exist.
        forge_rendezvous(&name, |r| r.owner.pid = u32::MAX - 7);
        // Keep the file when this handle goes (as after a SIGKILL).
        created.owned = None;
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
    fn the_memory_cannot_be_shrunk_or_grown_by_anyone() {
        let name = name("sealed");
        let created = Segment::create(&name, SPEC, 16, 8192, |_| {}).unwrap();
        let opened = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap();
        let memory = memory_path(&name).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(&memory)
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8192);
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(sys::seals(&file).unwrap(), sys::SEGMENT_SEALS);
        for len in [0, 100, 4096, 8191, 8193, 1 << 20] {
            let err = file.set_len(len).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EPERM),
                "set_len({len}): {err}"
            );
        }
        // Nor can the seals be changed (F_SEAL_SEAL).
        let err = sys::add_seals(&file, libc::F_SEAL_WRITE as u32).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert_eq!(file.metadata().unwrap().len(), 8192);
        // Both mappings still read the whole segment.
        assert!(opened.map().bytes(0, 8192).is_some());
        assert_eq!(
            created.map().u64_at(H_NONCE).load(Ordering::Relaxed),
            opened.map().u64_at(H_NONCE).load(Ordering::Relaxed)
        );
        // Writing is possible (a peer can write anything) and both ends see it.
        std::os::unix::fs::FileExt::write_all_at(&file, &[7u8; 8], 4096).unwrap();
        assert_eq!(created.map().bytes(4096, 8).unwrap(), &[7u8; 8]);
        assert_eq!(opened.map().bytes(4096, 8).unwrap(), &[7u8; 8]);
        // Punching a hole frees the pages but keeps the size: the ends read zeros, no fault.
        sys::punch_hole(&file, 4096, 4096).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8192);
        assert_eq!(created.map().bytes(4096, 8).unwrap(), &[0u8; 8]);
        assert_eq!(opened.map().bytes(4096, 4096).unwrap(), &[0u8; 4096][..]);
    }

    #[test]
    fn an_unsealed_memfd_from_a_hostile_creator_is_refused() {
        let name = name("unsealed");
        let created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        // A copy of the segment, header and all, in memory that can still be shrunk.
        let copy = sys::memfd_create("unsealed-copy").unwrap();
        copy.set_len(4096).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&copy, created.map().bytes(0, 4096).unwrap(), 0)
            .unwrap();
        forge_rendezvous(&name, |r| r.fd = copy.as_raw_fd() as u32);
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("seals 0x0"), "{err}");
        // Sealed against shrinking only (it could still grow, and seals could be removed
        // later if F_SEAL_SEAL were missing): refused too.
        sys::add_seals(&copy, libc::F_SEAL_SHRINK as u32).unwrap();
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        // A plain /dev/shm file (what version 1 used), which anyone with access can shrink.
        let plain_path = PathBuf::from(format!("{RDV_DIR}/unit-plain-{}", std::process::id()));
        let plain = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&plain_path)
            .unwrap();
        std::fs::remove_file(&plain_path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&plain, created.map().bytes(0, 4096).unwrap(), 0)
            .unwrap();
        forge_rendezvous(&name, |r| r.fd = plain.as_raw_fd() as u32);
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        // A sealed hugetlbfs memfd, whose faults can fail with SIGBUS when huge pages run out.
        let huge = sys::memfd_create_hugetlb("huge").unwrap();
        huge.set_len(2 << 20).unwrap();
        sys::add_seals(&huge, sys::SEGMENT_SEALS).unwrap();
        forge_rendezvous(&name, |r| r.fd = huge.as_raw_fd() as u32);
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("not a plain memfd"), "{err}");
    }

    #[test]
    fn a_rendezvous_naming_other_memory_is_refused() {
        let name_a = name("nonce-a");
        let name_b = name("nonce-b");
        let _a = Segment::create(&name_a, SPEC, 16, 4096, |_| {}).unwrap();
        let b = Segment::create(&name_b, SPEC, 16, 4096, |_| {}).unwrap();
        // As after fd reuse: a's rendezvous names b's memfd, sealed and valid in itself.
        let b_fd = b.owned.as_ref().unwrap()._memfd.as_raw_fd() as u32;
        forge_rendezvous(&name_a, |r| r.fd = b_fd);
        let err = Segment::open(&name_a, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
        assert!(err.to_string().contains("nonce"), "{err}");
        // A wrong length is refused before mapping.
        forge_rendezvous(&name_a, |r| r.total_len = 1 << 30);
        let err = Segment::open(&name_a, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
        // An fd the creator does not hold.
        forge_rendezvous(&name_a, |r| r.fd = 1_000_000);
        let err = Segment::open(&name_a, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
        // An owner that exited but is not reaped yet (a zombie) holds no fds: a dead owner.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = ProcessId::of(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie.is_zombie() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(zombie.is_zombie() && zombie.is_alive());
        let real_fd = b_fd;
        forge_rendezvous(&name_a, |r| {
            r.owner = zombie;
            r.fd = real_fd;
        });
        let err = Segment::open(&name_a, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerDied, "{err}");
        child.wait().unwrap();
        forge_rendezvous(&name_a, |r| r.owner = ProcessId::current());
        // A live pid with another start time (a reused pid) is a dead owner.
        forge_rendezvous(&name_a, |r| r.owner.start += 1);
        let err = Segment::open(&name_a, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerDied, "{err}");
    }

    #[test]
    fn a_version_1_segment_is_refused_by_open_and_reclaimed_once_its_owner_died() {
        let name = name("version1");
        let path = shm_path(&name);
        // What version 1 left at the name: the memory itself, header first.
        let mut header = vec![0u8; 4096];
        header[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        header[H_VERSION..H_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        let me = ProcessId::current();
        header[H_OWNER_PID..H_OWNER_PID + 4].copy_from_slice(&me.pid.to_le_bytes());
        header[H_OWNER_START..H_OWNER_START + 8].copy_from_slice(&me.start.to_le_bytes());
        header[H_STATE..H_STATE + 4].copy_from_slice(&STATE_READY.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        // Its owner lives: not ours to open, nor to take.
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion, "{err}");
        let err = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        // Its owner died: a leftover.
        header[H_OWNER_PID..H_OWNER_PID + 4].copy_from_slice(&(u32::MAX - 7).to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        let err = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerDied, "{err}");
        let created = Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap();
        assert!(matches!(
            read_found(&File::open(&path).unwrap()).unwrap(),
            Found::Rendezvous(_)
        ));
        drop(created);
        assert!(!path.exists());
    }

    #[test]
    fn an_open_racing_a_close_and_re_create_never_reports_corruption() {
        // Each new memfd takes the number the last one freed, so an opener that read the
        // old rendezvous finds the new memory under it: that is a race, not corruption.
        let name = name("recreate");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let creator = {
            let (name, stop) = (name.clone(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    drop(Segment::create(&name, SPEC, 16, 4096, |_| {}).unwrap());
                }
                stop.store(true, Ordering::Relaxed);
            })
        };
        let (mut opened, mut bad) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match Segment::open(&name, SPEC, Duration::from_secs(1)) {
                Ok(_) => opened += 1,
                Err(err) => match err.kind() {
                    ErrorKind::NotFound | ErrorKind::PeerClosed => {}
                    _ => bad.push(err.to_string()),
                },
            }
        }
        creator.join().unwrap();
        assert!(
            bad.is_empty(),
            "{} bad of {opened} opened: {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        );
    }

    #[test]
    fn the_memory_outlives_its_creator_while_mapped() {
        let name = name("outlive");
        let created = Segment::create(&name, SPEC, 16, 4096, |map| {
            map.u64_at(HEADER_LEN).store(42, Ordering::Relaxed);
        })
        .unwrap();
        let opened = Segment::open(&name, SPEC, Duration::from_secs(1)).unwrap();
        drop(created);
        assert!(!shm_path(&name).exists());
        assert_eq!(opened.map().u64_at(HEADER_LEN).load(Ordering::Relaxed), 42);
        assert_eq!(
            opened.map().u32_at(H_STATE).load(Ordering::Relaxed),
            STATE_CLOSED
        );
    }

    #[test]
    fn a_segment_larger_than_the_free_space_is_an_error_at_create() {
        let name = name("huge");
        // 1 TiB: more than any test machine's /dev/shm; refused before allocating.
        let err = Segment::create(&name, SPEC, 1, 1 << 40, |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("free"), "{err}");
        assert!(err.to_string().contains("1099511627776"), "{err}");
        assert!(!shm_path(&name).exists());
    }
}
