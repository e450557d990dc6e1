//! ipc-queue on damaged disks: every damage gives the outcome documented in
//! `crates/ipc-queue/FORMAT.md`, and nothing damaged is ever delivered.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ipc_core::ErrorKind;
use ipc_queue::{Durability, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(120);
/// Record header plus the postcard encoding of `"m0000"`.
const RECORD_LEN: u64 = 40 + 6;

fn message(i: u64) -> String {
    format!("m{i:04}")
}

/// A queue with `count` messages in 4 KiB segments.
fn template(dir: &Path, count: u64) -> Result<Queue> {
    let queue = Queue::create(dir, &QueueConfig::new().with_segment_len(4096))?;
    let options = ProducerOptions::new().with_durability(Durability::Never);
    let mut producer = queue.producer::<String>(options)?;
    for i in 0..count {
        producer.send(&message(i))?;
    }
    producer.flush()?;
    Ok(queue)
}

/// A scratch directory on tmpfs (`/dev/shm`) when there is one: these tests are about the
/// format, not the disk, and each case costs several syncs that tmpfs makes free. Falls
/// back to the usual temp dir.
struct Scratch {
    path: PathBuf,
    _fallback: Option<TempDir>,
}

impl Scratch {
    fn new(prefix: &str) -> Result<Scratch> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let path = shm.join(ipc_tests::unique_name(prefix));
            if std::fs::create_dir(&path).is_ok() {
                return Ok(Scratch {
                    path,
                    _fallback: None,
                });
            }
        }
        let dir = TempDir::new(prefix)?;
        Ok(Scratch {
            path: dir.path().to_path_buf(),
            _fallback: Some(dir),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self._fallback.is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn segment_paths(queue: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(queue.join("segments"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.sort();
    Ok(paths)
}

/// What draining a queue gave: the sequence numbers delivered (content checked) and the
/// corruption reports.
struct Drained {
    seqs: BTreeSet<u64>,
    reports: Vec<String>,
}

fn drain(path: &Path) -> Result<Drained> {
    let queue = Queue::open(path)?;
    let mut reports = Vec::new();
    let mut consumer = loop {
        match queue.consumer::<String>() {
            Ok(consumer) => break consumer,
            Err(err) if err.kind() == ErrorKind::Corrupted => reports.push(err.to_string()),
            Err(err) => return Err(err.into()),
        }
        ensure!(reports.len() < 10, "endless reports: {reports:?}");
    };
    let mut seqs = BTreeSet::new();
    loop {
        match consumer.try_recv() {
            Ok(Some(delivery)) => {
                ensure!(
                    delivery.message() == &message(delivery.seq()),
                    "message {} delivered as {:?}",
                    delivery.seq(),
                    delivery.message()
                );
                ensure!(
                    seqs.insert(delivery.seq()),
                    "{} delivered twice",
                    delivery.seq()
                );
                consumer.ack(&delivery)?;
            }
            Ok(None) => break,
            Err(err) if err.kind() == ErrorKind::Corrupted => reports.push(err.to_string()),
            Err(err) => return Err(err.into()),
        }
        ensure!(reports.len() < 10, "endless reports: {reports:?}");
    }
    Ok(Drained { seqs, reports })
}

fn quarantined(path: &Path) -> usize {
    std::fs::read_dir(path.join("quarantine"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
                .count()
        })
        .unwrap_or(0)
}

/// The queue keeps working after the damage: a new message is delivered.
fn still_works(path: &Path) -> Result<()> {
    let queue = Queue::open(path)?;
    let receipt = queue
        .producer::<String>(ProducerOptions::new())?
        .send(&"after".to_owned())?;
    let mut consumer = queue.consumer::<String>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    ensure!(delivery.message() == "after" && delivery.seq() == receipt.seq());
    consumer.ack(&delivery)?;
    Ok(())
}

#[test]
fn the_last_record_cut_at_every_byte_is_truncated_and_quarantined() -> Result<()> {
    let _watchdog = Watchdog::new("tail cuts", WAIT);
    let dir = Scratch::new("ipcq-cut")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    let segment = segment_paths(&template_path)?.remove(0);
    let len = std::fs::metadata(&segment)?.len();
    assert_eq!(len, 5 * RECORD_LEN);
    for cut in 4 * RECORD_LEN..len {
        let path = dir.path().join(format!("cut-{cut}"));
        copy_dir(&template_path, &path)?;
        let segment = segment_paths(&path)?.remove(0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)?
            .set_len(cut)?;
        let drained = drain(&path).with_context(|| format!("cut at {cut}"))?;
        assert_eq!(drained.seqs, (0..4).collect(), "cut at {cut}");
        assert!(
            drained.reports.is_empty(),
            "cut at {cut}: {:?}",
            drained.reports
        );
        assert_eq!(
            std::fs::metadata(&segment)?.len(),
            4 * RECORD_LEN,
            "cut at {cut}"
        );
        assert_eq!(
            quarantined(&path),
            usize::from(cut > 4 * RECORD_LEN),
            "cut at {cut}"
        );
        if cut > 4 * RECORD_LEN {
            for entry in std::fs::read_dir(path.join("quarantine"))? {
                let mode = entry?.metadata()?.permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "quarantine files are owner-only");
            }
        }
        still_works(&path).with_context(|| format!("cut at {cut}"))?;
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

#[test]
fn a_bit_flip_anywhere_in_a_sealed_segment_loses_at_most_the_damaged_message_and_is_reported()
-> Result<()> {
    let _watchdog = Watchdog::new("bit flips", WAIT);
    let dir = Scratch::new("ipcq-flip")?;
    let template_path = dir.path().join("template");
    let count = 150;
    template(&template_path, count)?;
    let first = segment_paths(&template_path)?.remove(0);
    let bytes = std::fs::read(&first)?;
    let len = bytes.len();
    // Every byte of the first two records and of the end (last messages and the seal);
    // every 17th byte elsewhere, each with a different bit.
    let offsets: Vec<usize> = (0..len)
        .filter(|&b| {
            b < 2 * RECORD_LEN as usize || b + 3 * RECORD_LEN as usize >= len || b % 17 == 0
        })
        .collect();
    for (case, &offset) in offsets.iter().enumerate() {
        let path = dir.path().join(format!("flip-{offset}"));
        copy_dir(&template_path, &path)?;
        let segment = segment_paths(&path)?.remove(0);
        let mut damaged = bytes.clone();
        damaged[offset] ^= 1 << (case % 8);
        std::fs::write(&segment, &damaged)?;
        let drained = drain(&path).with_context(|| format!("flip at {offset}"))?;
        let lost = count - drained.seqs.len() as u64;
        assert!(lost <= 1, "flip at {offset}: {lost} messages lost");
        assert_eq!(
            drained.reports.len(),
            1,
            "flip at {offset}: {:?}",
            drained.reports
        );
        assert!(
            quarantined(&path) >= 1,
            "flip at {offset}: nothing quarantined"
        );
        if case % 8 == 0 {
            // Sends and receives go on after the damage (checked on a sample: each costs syncs).
            still_works(&path).with_context(|| format!("flip at {offset}"))?;
        }
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

#[test]
fn a_bit_flip_in_the_last_segment_is_reported_unless_it_hits_the_last_record() -> Result<()> {
    let _watchdog = Watchdog::new("last segment flips", WAIT);
    let dir = Scratch::new("ipcq-lastflip")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    let segment = segment_paths(&template_path)?.remove(0);
    let bytes = std::fs::read(&segment)?;
    for offset in (0..bytes.len()).step_by(3) {
        let path = dir.path().join(format!("flip-{offset}"));
        copy_dir(&template_path, &path)?;
        let mut damaged = bytes.clone();
        damaged[offset] ^= 1 << (offset % 8);
        std::fs::write(segment_paths(&path)?.remove(0), &damaged)?;
        let drained = drain(&path).with_context(|| format!("flip at {offset}"))?;
        let hit = offset as u64 / RECORD_LEN;
        let expected: BTreeSet<u64> = (0..5).filter(|&seq| seq != hit).collect();
        assert_eq!(drained.seqs, expected, "flip at {offset}");
        // Damage before valid records is corruption; damage in the last record looks
        // exactly like a torn write: cut (and kept in quarantine), not reported.
        let reports = usize::from(hit < 4);
        assert_eq!(
            drained.reports.len(),
            reports,
            "flip at {offset}: {:?}",
            drained.reports
        );
        assert_eq!(quarantined(&path), 1, "flip at {offset}");
        still_works(&path).with_context(|| format!("flip at {offset}"))?;
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

#[test]
fn whole_records_out_of_sequence_are_damage_too_and_never_hang_anyone() -> Result<()> {
    let _watchdog = Watchdog::new("replayed records", WAIT);
    let dir = Scratch::new("ipcq-replay")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    let bytes = std::fs::read(segment_paths(&template_path)?.remove(0))?;
    let record = |i: u64| &bytes[(i * RECORD_LEN) as usize..((i + 1) * RECORD_LEN) as usize];

    // Record 0 copied over record 2: checksums hold, the sequence goes backwards.
    let path = dir.path().join("middle");
    copy_dir(&template_path, &path)?;
    let mut damaged = bytes.clone();
    damaged[(2 * RECORD_LEN) as usize..(3 * RECORD_LEN) as usize].copy_from_slice(record(0));
    std::fs::write(segment_paths(&path)?.remove(0), &damaged)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, [0, 1, 3, 4].into());
    assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
    still_works(&path)?;

    // Record 1 appended again at the end: cut like a torn tail.
    let path = dir.path().join("tail");
    copy_dir(&template_path, &path)?;
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(record(1));
    std::fs::write(segment_paths(&path)?.remove(0), &damaged)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (0..5).collect());
    assert_eq!(quarantined(&path), 1);
    still_works(&path)?;
    // A producer opening first deals with it the same way.
    let path = dir.path().join("tail-producer");
    copy_dir(&template_path, &path)?;
    std::fs::write(segment_paths(&path)?.remove(0), &damaged)?;
    let receipt = Queue::open(&path)?
        .producer::<String>(ProducerOptions::new())?
        .send(&message(5))?;
    assert_eq!(receipt.seq(), 5);
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (0..6).collect());
    Ok(())
}

fn three_segments(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>, u64)> {
    let path = dir.join("q");
    let count = 250;
    template(&path, count)?;
    let segments = segment_paths(&path)?;
    if segments.len() < 3 {
        bail!("expected 3 segments, got {}", segments.len());
    }
    Ok((path, segments, count))
}

fn first_seq(segment: &Path) -> Result<u64> {
    let name = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .context("segment name")?;
    Ok(name.parse()?)
}

#[test]
fn a_middle_segment_truncated_to_zero_is_reported_and_the_rest_delivered() -> Result<()> {
    let _watchdog = Watchdog::new("zeroed segment", WAIT);
    let dir = Scratch::new("ipcq-zero")?;
    let (path, segments, count) = three_segments(dir.path())?;
    let (from, to) = (first_seq(&segments[1])?, first_seq(&segments[2])?);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[1])?
        .set_len(0)?;
    let drained = drain(&path)?;
    let expected: BTreeSet<u64> = (0..from).chain(to..count).collect();
    assert_eq!(drained.seqs, expected);
    assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
    assert!(
        drained.reports[0].contains("without a seal"),
        "{:?}",
        drained.reports
    );
    let storage = Queue::open(&path)?
        .stats()?
        .storage
        .expect("an embedded queue");
    assert_eq!(storage.lost, to - from);
    still_works(&path)
}

#[test]
fn a_missing_segment_is_reported_and_the_rest_delivered() -> Result<()> {
    let _watchdog = Watchdog::new("missing segment", WAIT);
    let dir = Scratch::new("ipcq-missing")?;
    for victim in [0, 1] {
        let (path, segments, count) =
            three_segments(&dir.path().join(format!("{victim}")).tap_mkdir()?)?;
        let from = first_seq(&segments[victim])?;
        let to = first_seq(&segments[victim + 1])?;
        std::fs::remove_file(&segments[victim])?;
        let drained = drain(&path)?;
        let expected: BTreeSet<u64> = (0..from).chain(to..count).collect();
        assert_eq!(drained.seqs, expected, "segment {victim} missing");
        assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
        assert!(
            drained.reports[0].contains("missing"),
            "{:?}",
            drained.reports
        );
        still_works(&path)?;
    }
    Ok(())
}

trait TapMkdir: Sized {
    fn tap_mkdir(self) -> Result<Self>;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Result<PathBuf> {
        std::fs::create_dir(&self)?;
        Ok(self)
    }
}
