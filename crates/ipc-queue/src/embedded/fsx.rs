//! File-system helpers: owner-only modes, directory fsync, segment names, quarantine.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipc_core::{Error, ErrorKind, Result};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Creates `path` as an owner-only (0700) directory; fails if it exists.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|err| Error::io(format!("create directory {}", path.display()), err))
}

/// Creates `path` as an owner-only directory unless it exists already.
pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(Error::io(
            format!("create directory {}", path.display()),
            err,
        )),
    }
}

/// Opens (creating if needed, mode 0600) `path` for reading and writing.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|err| Error::io(format!("open {}", path.display()), err))
}

/// Opens an existing `path` for reading and writing.
pub(crate) fn open_existing(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Makes the directory entries of `dir` durable (after creating, renaming or removing files).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| Error::io(format!("fsync directory {}", dir.display()), err))
}

/// The file name of the segment whose first sequence number is `first`.
pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The first sequence numbers of the segment files in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let entries =
        fs::read_dir(dir).map_err(|err| Error::io(format!("list {}", dir.display()), err))?;
    let mut firsts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| Error::io(format!("list {}", dir.display()), err))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20
            && let Ok(first) = stem.parse::<u64>()
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Reads `len` bytes at `offset` into the start of `buf` (grown if needed, never shrunk, so
/// that a reused buffer is not zeroed again), returning how many were read (fewer at end of
/// file). The caller uses `buf[..n]`.
pub(crate) fn read_at(file: &File, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<usize> {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    read_at_into(file, offset, &mut buf[..len])
}

/// Reads up to `buf.len()` bytes at `offset` (fewer at the end of the file); returns how
/// many were read.
pub(crate) fn read_at_into(file: &File, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io(format!("read at offset {offset}"), err)),
        }
    }
    Ok(done)
}

/// Length of an open segment file, by `lseek` to its end rather than `fstat`: since Linux 6.13 a
/// `stat` of a file's times makes its next write take a fine-grained time stamp, and on
/// ext4 that made every following `fdatasync` of a segment commit the journal (measured
/// 170-200 µs a sync against 110-130 µs without the `stat`). Only `pread` and `pwrite`
/// are used on these files, so the file offset `lseek` moves is never read.
pub(crate) fn file_len(file: &File) -> Result<u64> {
    use std::io::Seek;
    let mut file = file;
    file.seek(std::io::SeekFrom::End(0))
        .map_err(|err| Error::io("find the length of a queue file", err))
}

/// Copies bytes `from..to` of `source` (damaged) into `quarantine/` of the queue directory,
/// 64 KiB at a time, with a note beside them; returns the copy's path. Quarantine files are
/// never read by the queue again: they are evidence for people.
pub(crate) fn quarantine(
    root: &Path,
    what: &str,
    source: &File,
    from: u64,
    to: u64,
    note: &str,
) -> Result<PathBuf> {
    use std::io::Write;
    let dir = root.join("quarantine");
    ensure_dir(&dir)?;
    let path = dir.join(format!("{what}-{}.bin", now_ms()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|err| Error::io(format!("create {}", path.display()), err))?;
    let mut buf = Vec::new();
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(64 << 10);
        let n = read_at(source, at, want, &mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|err| Error::io(format!("write {}", path.display()), err))?;
        at += n as u64;
    }
    file.sync_data()
        .map_err(|err| Error::io(format!("fdatasync {}", path.display()), err))?;
    let note_path = path.with_extension("txt");
    write_private(&note_path, format!("{note}\n").as_bytes())?;
    sync_dir(&dir)?;
    Ok(path)
}

/// Writes a small owner-only (0600) file, replacing its contents.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|err| Error::io(format!("write {}", path.display()), err))
}

/// Reads a whole small file.
pub(crate) fn read_small(path: &Path, max_len: u64) -> Result<Vec<u8>> {
    let file =
        File::open(path).map_err(|err| Error::io(format!("open {}", path.display()), err))?;
    // `fstat`, not `file_len`: the read below starts at the file offset.
    let len = file
        .metadata()
        .map(|meta| meta.len())
        .map_err(|err| Error::io(format!("stat {}", path.display()), err))?;
    if len > max_len {
        return Err(Error::new(
            ErrorKind::Corrupted,
            format!(
                "{} is {len} bytes, more than the {max_len} allowed",
                path.display()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(max_len)
        .read_to_end(&mut buf)
        .map_err(|err| Error::io(format!("read {}", path.display()), err))?;
    Ok(buf)
}

/// Bytes a queue keeps allocated in its `reserve` file, so that consumers can go on
/// recording leases and acknowledgements (and so free the disk) when it is full.
pub(crate) const RESERVE_LEN: u64 = 128 << 10;

/// Whether `err` is "no space left on device".
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(28) // ENOSPC
}

/// Makes sure the reserve file exists with its bytes allocated (real bytes, not a sparse
/// file). Fails with a `disk full: ...` error if the disk has not that much room.
pub(crate) fn ensure_reserve(root: &Path) -> Result<()> {
    use std::io::Write;
    let path = root.join("reserve");
    if fs::metadata(&path).is_ok_and(|meta| meta.len() >= RESERVE_LEN) {
        return Ok(());
    }
    let tmp = root.join("reserve.tmp");
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            let zeros = vec![0u8; 64 << 10];
            let mut left = RESERVE_LEN as usize;
            while left > 0 {
                let n = left.min(zeros.len());
                file.write_all(&zeros[..n])?;
                left -= n;
            }
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, &path));
    match result {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            let what = if is_disk_full(&err) {
                "disk full: "
            } else {
                ""
            };
            Err(Error::io(
                format!(
                    "{what}the queue keeps {RESERVE_LEN} bytes in reserve for its consumers and cannot allocate them in {}",
                    root.display()
                ),
                err,
            ))
        }
    }
}

/// Releases a `File::lock` when dropped. Shares the lock file through an `Arc`, so that the
/// guard does not borrow its owner.
pub(crate) struct LockGuard(pub(crate) Arc<File>);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Takes the exclusive lock on `file`, waiting for it.
pub(crate) fn lock(file: &Arc<File>, what: &str) -> Result<LockGuard> {
    file.lock()
        .map_err(|err| Error::io(format!("lock {what}"), err))?;
    Ok(LockGuard(Arc::clone(file)))
}

/// Opens a lock file.
pub(crate) fn open_lock(path: &Path) -> Result<Arc<File>> {
    open_rw(path).map(Arc::new)
}
