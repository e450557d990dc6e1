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

/// A queue with `count` messages in 4 KiB segments, all synced.
fn template(dir: &Path, count: u64) -> Result<Queue> {
    template_with_unsynced(dir, count, 0)
}

/// A queue with `synced` messages in 4 KiB segments covered by an `fdatasync` (and the
/// watermark), then `unsynced` more that were written but never synced.
fn template_with_unsynced(dir: &Path, synced: u64, unsynced: u64) -> Result<Queue> {
    let queue = Queue::create(dir, &QueueConfig::new().with_segment_len(4096))?;
    let options = ProducerOptions::new().with_durability(Durability::Never);
    let mut producer = queue.producer::<String>(options)?;
    for i in 0..synced {
        producer.send(&message(i))?;
    }
    producer.flush()?;
    for i in synced..synced + unsynced {
        producer.send(&message(i))?;
    }
    drop(producer);
    // These tests damage segments by their lengths, as if the records ran to the end.
    crate::queue_support::strip_zeros(dir)?;
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
    send_after(path).map(|_| ())
}

/// Sends one new message and receives it; returns its sequence number.
fn send_after(path: &Path) -> Result<u64> {
    let queue = Queue::open(path)?;
    let receipt = queue
        .producer::<String>(ProducerOptions::new())?
        .send(&"after".to_owned())?;
    let mut consumer = queue.consumer::<String>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    ensure!(delivery.message() == "after" && delivery.seq() == receipt.seq());
    consumer.ack(&delivery)?;
    Ok(receipt.seq())
}

fn lost(path: &Path) -> Result<u64> {
    let stats = Queue::open(path)?.stats()?;
    Ok(stats.storage.context("an embedded queue")?.lost)
}

/// The `synced` watermark as FORMAT.md lays it out: (segment, offset, next seq), checked.
fn watermark(path: &Path) -> Result<(u64, u64, u64)> {
    let bytes = std::fs::read(path.join("synced"))?;
    ensure!(bytes.len() == 32, "synced is {} bytes", bytes.len());
    ensure!(&bytes[..4] == b"IPQW", "synced magic {:?}", &bytes[..4]);
    let crc = u32::from_le_bytes(bytes[4..8].try_into()?);
    ensure!(crc == crc32c(&bytes[8..32]), "synced checksum");
    let at = |i: usize| -> Result<u64> { Ok(u64::from_le_bytes(bytes[i..i + 8].try_into()?)) };
    Ok((at(8)?, at(16)?, at(24)?))
}

/// crc32c (Castagnoli), bitwise: the test checks the format without the crate's code.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_last_record_cut_at_every_byte_is_truncated_and_quarantined() -> Result<()> {
    let _watchdog = Watchdog::new("tail cuts", WAIT);
    let dir = Scratch::new("ipcq-cut")?;
    let template_path = dir.path().join("template");
    // The last record was written but never synced: cutting it is a torn write.
    template_with_unsynced(&template_path, 4, 1)?;
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
    // The last record was never synced: damage there is indistinguishable from a torn write.
    template_with_unsynced(&template_path, 4, 1)?;
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

#[test]
fn a_synced_last_record_cut_anywhere_is_a_reported_loss_and_its_number_is_never_reused()
-> Result<()> {
    let _watchdog = Watchdog::new("synced tail cuts", WAIT);
    let dir = Scratch::new("ipcq-syncut")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    assert_eq!(watermark(&template_path)?, (0, 5 * RECORD_LEN, 5));
    // Every byte of the last record (the record boundary included), and the whole segment.
    for cut in (4 * RECORD_LEN..5 * RECORD_LEN).chain([2 * RECORD_LEN, 0]) {
        let path = dir.path().join(format!("cut-{cut}"));
        copy_dir(&template_path, &path)?;
        let segment = segment_paths(&path)?.remove(0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)?
            .set_len(cut)?;
        let kept = cut / RECORD_LEN;
        let drained = drain(&path).with_context(|| format!("cut at {cut}"))?;
        assert_eq!(drained.seqs, (0..kept).collect(), "cut at {cut}");
        assert_eq!(
            drained.reports.len(),
            1,
            "cut at {cut}: {:?}",
            drained.reports
        );
        assert!(
            drained.reports[0].contains(&format!("messages {kept}..5 are lost")),
            "cut at {cut}: {:?}",
            drained.reports
        );
        assert_eq!(lost(&path)?, 5 - kept, "cut at {cut}");
        // The report is kept in quarantine/ too.
        let notes: Vec<String> = std::fs::read_dir(path.join("quarantine"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("report-"))
            .map(|e| std::fs::read_to_string(e.path()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(notes.len(), 1, "cut at {cut}: {notes:?}");
        assert_eq!(notes[0].trim_end(), drained.reports[0], "cut at {cut}");
        // The lost numbers are never given again.
        assert_eq!(send_after(&path)?, 5, "cut at {cut}");
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

#[test]
fn a_deleted_last_segment_or_every_segment_is_a_reported_loss() -> Result<()> {
    let _watchdog = Watchdog::new("deleted last segment", WAIT);
    let dir = Scratch::new("ipcq-dellast")?;
    for (case, producer_first) in [
        ("last", false),
        ("all", false),
        ("last", true),
        ("all", true),
    ] {
        let name = format!("{case}-{producer_first}");
        let (path, segments, count) = three_segments(&dir.path().join(&name).tap_mkdir()?)?;
        let from = match case {
            "last" => {
                let last = segments.last().context("a segment")?;
                std::fs::remove_file(last)?;
                first_seq(last)?
            }
            _ => {
                for segment in &segments {
                    std::fs::remove_file(segment)?;
                }
                0
            }
        };
        let mut expected: BTreeSet<u64> = (0..from).collect();
        if producer_first {
            // A producer comes first: it starts after the lost numbers.
            let receipt = Queue::open(&path)?
                .producer::<String>(ProducerOptions::new())?
                .send(&message(count))?;
            assert_eq!(receipt.seq(), count, "{name}");
            expected.insert(count);
        }
        let drained = drain(&path).with_context(|| name.clone())?;
        assert_eq!(drained.seqs, expected, "{name}");
        assert_eq!(drained.reports.len(), 1, "{name}: {:?}", drained.reports);
        assert!(
            drained.reports[0].contains(&format!("messages {from}..{count} are lost")),
            "{name}: {:?}",
            drained.reports
        );
        assert_eq!(lost(&path)?, count - from, "{name}");
        assert!(send_after(&path)? > count - 1, "{name}");
    }
    Ok(())
}

#[test]
fn a_first_or_middle_segment_cut_at_a_record_boundary_is_a_reported_loss() -> Result<()> {
    let _watchdog = Watchdog::new("cut segments", WAIT);
    let dir = Scratch::new("ipcq-cutmid")?;
    for victim in [0, 1] {
        let (path, segments, count) =
            three_segments(&dir.path().join(format!("{victim}")).tap_mkdir()?)?;
        let first = first_seq(&segments[victim])?;
        let next = first_seq(&segments[victim + 1])?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segments[victim])?
            .set_len(10 * RECORD_LEN)?;
        let drained = drain(&path)?;
        let expected: BTreeSet<u64> = (0..first + 10).chain(next..count).collect();
        assert_eq!(drained.seqs, expected, "segment {victim} cut");
        assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
        assert_eq!(lost(&path)?, next - first - 10, "segment {victim} cut");
        assert_eq!(send_after(&path)?, count);
    }
    Ok(())
}

/// The attack of issue 16, item 3: the last segment cut to a record boundary left a
/// watermark claiming the old length, so new messages reused the lost numbers and got
/// receipts without any sync.
#[test]
fn after_a_cut_below_the_watermark_a_receipt_still_needs_a_sync_and_numbers_are_not_reused()
-> Result<()> {
    let _watchdog = Watchdog::new("stale watermark", WAIT);
    let dir = Scratch::new("ipcq-stale")?;
    let path = dir.path().join("q");
    let queue = Queue::create(&path, &QueueConfig::new().with_segment_len(64 << 10))?;
    let options = ProducerOptions::new().with_durability(Durability::Never);
    let mut producer = queue.producer::<String>(options)?;
    let count = 3000;
    for i in 0..count {
        producer.send(&message(i))?;
    }
    producer.flush()?;
    drop(producer);
    let mut consumer = queue.consumer::<String>()?;
    for _ in 0..700 {
        let delivery = consumer.recv_timeout(WAIT)?;
        consumer.ack(&delivery)?;
    }
    drop(consumer);
    let last = segment_paths(&path)?.pop().context("a segment")?;
    let len = crate::queue_support::records_end(&last)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)?
        .set_len(len - 44 * RECORD_LEN)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (700..count - 44).collect());
    assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
    assert!(
        drained.reports[0].contains(&format!("messages {}..{count} are lost (44)", count - 44)),
        "{:?}",
        drained.reports
    );
    assert_eq!(lost(&path)?, 44);
    // A producer whose very first fdatasync fails: a receipt would mean one without a sync.
    let failing = ProducerOptions::new().with_failing_sync_after(1);
    let err = queue
        .producer::<String>(failing)?
        .send(&message(count))
        .expect_err("a receipt without a working fdatasync");
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    std::fs::remove_file(path.join("POISONED"))?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let mut receipted = BTreeSet::new();
    for i in 1..4 {
        let receipt = producer.send(&message(count + i))?;
        // The failed send (no receipt) reached the file before its sync failed: it keeps
        // its number, and the next ones follow it.
        assert_eq!(receipt.seq(), count + i, "a lost number given again");
        let (_, _, synced_next) = watermark(&path)?;
        assert!(
            synced_next > receipt.seq(),
            "receipt {} beyond the watermark {synced_next}",
            receipt.seq()
        );
        receipted.insert(receipt.seq());
    }
    let drained = drain(&path)?;
    assert!(drained.reports.is_empty(), "{:?}", drained.reports);
    assert!(drained.seqs.is_superset(&receipted), "{:?}", drained.seqs);
    assert!(drained.seqs.len() <= 4, "{:?}", drained.seqs);
    Ok(())
}

/// Lease (40 + 4 bytes) and ack (40 bytes) records of one delivery in `state.log`.
const LEASE_LEN: u64 = 44;
const ACK_LEN: u64 = 40;

/// Receives and acknowledges every message, one at a time (a lease then an ack each).
fn consume_all(path: &Path, count: u64) -> Result<()> {
    let queue = Queue::open(path)?;
    let mut consumer = queue.consumer::<String>()?;
    for seq in 0..count {
        let delivery = consumer.recv_timeout(WAIT)?;
        ensure!(delivery.seq() == seq, "got {} for {seq}", delivery.seq());
        consumer.ack(&delivery)?;
    }
    Ok(())
}

fn zero(path: &Path, from: u64, len: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&vec![0u8; len as usize], from)?;
    Ok(())
}

/// The attack of issue 16, item 4: the lease and the ack of one message zeroed (a lost
/// page) left it neither done nor deliverable, and the queue never emptied again.
#[test]
fn a_message_whose_state_records_are_destroyed_is_delivered_again() -> Result<()> {
    let _watchdog = Watchdog::new("zeroed state", WAIT);
    let dir = Scratch::new("ipcq-zstate")?;
    let path = dir.path().join("q");
    template(&path, 5)?;
    consume_all(&path, 5)?;
    let per_message = LEASE_LEN + ACK_LEN;
    assert_eq!(
        std::fs::metadata(path.join("state.log"))?.len(),
        5 * per_message
    );
    zero(&path.join("state.log"), 2 * per_message, per_message)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, [2].into(), "{:?}", drained.reports);
    assert!(drained.reports.is_empty(), "{:?}", drained.reports);
    assert_eq!(Queue::open(&path)?.stats()?.depth, 0);
    // The floor moves on: later messages are delivered and their segments reclaimed.
    let queue = Queue::open(&path)?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let receipts = producer.send_batch(&(5..300).map(message).collect::<Vec<_>>())?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, receipts.iter().map(|r| r.seq()).collect());
    let stats = queue.stats()?;
    assert_eq!(stats.depth, 0);
    assert_eq!(
        stats.storage.as_ref().context("embedded")?.segments,
        1,
        "{stats:?}"
    );
    Ok(())
}

/// Issue 16, smaller point: one damaged ack made a consumer report all the messages from
/// it to the oldest segment left as lost, although every one of them had been acked.
#[test]
fn a_damaged_ack_of_a_reclaimed_message_reports_only_that_message() -> Result<()> {
    let _watchdog = Watchdog::new("damaged ack", WAIT);
    let dir = Scratch::new("ipcq-dack")?;
    let path = dir.path().join("q");
    let count = 300;
    template(&path, count)?;
    consume_all(&path, count)?;
    let segments = segment_paths(&path)?;
    assert_eq!(segments.len(), 1, "acknowledged segments are reclaimed");
    let oldest = first_seq(&segments[0])?;
    let victim = 100;
    let per_message = LEASE_LEN + ACK_LEN;
    zero(
        &path.join("state.log"),
        victim * per_message + LEASE_LEN,
        ACK_LEN,
    )?;
    let drained = drain(&path)?;
    assert!(drained.seqs.is_empty(), "{:?}", drained.seqs);
    assert_eq!(drained.reports.len(), 1, "{:?}", drained.reports);
    let done = oldest - victim - 1;
    assert!(
        drained.reports[0].contains(&format!(
            "; 1 lost ({victim}): the other {done} of {victim}..{oldest} were done"
        )) && !drained.reports[0].contains("are lost"),
        "{:?}",
        drained.reports
    );
    assert_eq!(lost(&path)?, 1);
    assert_eq!(Queue::open(&path)?.stats()?.depth, 0);
    still_works(&path)
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    CutLastAtRecord,
    CutLastMidRecord,
    CutFirstAtRecord,
    DeleteLast,
    DeleteMiddle,
    ZeroStatePage,
    BitFlip,
    TamperSynced,
    /// A run of whole records of the last segment zeroed, up to its end or not: what zeros
    /// written ahead look like, where synced records were.
    ZeroLastRecords,
}

impl Damage {
    const ALL: [Damage; 9] = [
        Damage::CutLastAtRecord,
        Damage::CutLastMidRecord,
        Damage::CutFirstAtRecord,
        Damage::DeleteLast,
        Damage::DeleteMiddle,
        Damage::ZeroStatePage,
        Damage::BitFlip,
        Damage::TamperSynced,
        Damage::ZeroLastRecords,
    ];
}

/// The outcome of one trial, as the figures in the README count them.
#[derive(Default, Debug)]
struct Outcomes {
    trials: u64,
    /// A consumer's open failed with `Corrupted` (once).
    error_on_open: u64,
    /// Messages missing, and reported (`Corrupted`) and counted in `Stats` as lost.
    loss_reported: u64,
    /// Damage reported, nothing missing.
    detected_no_loss: u64,
    /// Nothing reported and nothing missing (e.g. messages delivered again).
    no_loss: u64,
    /// Messages missing without a report or without being counted: must stay 0.
    silent_loss: u64,
}

/// Applies `damage` to the queue at `path` (3 segments of 4 KiB, `acked` messages done).
fn damage(path: &Path, damage: Damage, rng: &mut Rng) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let segments = segment_paths(path)?;
    let cut = |segment: &Path, len: u64| -> Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment)?
            .set_len(len)?;
        Ok(())
    };
    let last = segments.last().context("a segment")?;
    let last_len = std::fs::metadata(last)?.len();
    match damage {
        Damage::CutLastAtRecord => {
            let records = last_len / RECORD_LEN;
            cut(last, rng.below(records) * RECORD_LEN)?;
        }
        Damage::CutLastMidRecord => {
            let records = last_len / RECORD_LEN;
            cut(
                last,
                rng.below(records) * RECORD_LEN + 1 + rng.below(RECORD_LEN - 1),
            )?;
        }
        Damage::CutFirstAtRecord => {
            // The first segment holds unacknowledged messages (from `acked` on).
            let records = std::fs::metadata(&segments[0])?.len() / RECORD_LEN;
            cut(&segments[0], (60 + rng.below(records - 60)) * RECORD_LEN)?;
        }
        Damage::DeleteLast => std::fs::remove_file(last)?,
        Damage::DeleteMiddle => std::fs::remove_file(&segments[1])?,
        Damage::ZeroStatePage => {
            let state = path.join("state.log");
            let len = std::fs::metadata(&state)?.len();
            let page = rng.below(len.div_ceil(4096));
            let file = std::fs::OpenOptions::new().write(true).open(&state)?;
            file.write_all_at(&[0u8; 4096], page * 4096)?;
            file.set_len(len)?;
        }
        Damage::BitFlip => {
            let segment = &segments[rng.below(segments.len() as u64) as usize];
            let mut bytes = std::fs::read(segment)?;
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            std::fs::write(segment, &bytes)?;
        }
        Damage::ZeroLastRecords => {
            let records = last_len / RECORD_LEN;
            let from = rng.below(records);
            let to = from + 1 + rng.below(records - from);
            let zeros = vec![0u8; ((to - from) * RECORD_LEN) as usize];
            std::fs::OpenOptions::new()
                .write(true)
                .open(last)?
                .write_all_at(&zeros, from * RECORD_LEN)?;
        }
        Damage::TamperSynced => {
            let synced = path.join("synced");
            let mut bytes = std::fs::read(&synced)?;
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = bytes[at].wrapping_add(1 + rng.below(255) as u8);
            std::fs::write(&synced, &bytes)?;
        }
    }
    Ok(())
}

/// Damage of every kind the format can detect, at random places, many times: every
/// missing message is reported and counted as lost. Prints the figures of the README
/// (more trials with `IPC_SOAK=1` or `IPC_QUEUE_CORRUPTION_TRIALS=N`).
#[test]
fn corruption_trials_by_damage_kind_never_lose_a_message_silently() -> Result<()> {
    let trials: u64 = std::env::var("IPC_QUEUE_CORRUPTION_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(if std::env::var_os("IPC_SOAK").is_some() {
            200
        } else {
            6
        });
    let _watchdog = Watchdog::new(
        "corruption trials",
        WAIT + Duration::from_millis(trials * 8 * 200),
    );
    let seed = std::env::var("IPC_QUEUE_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("corruption trials: seed {seed} (IPC_QUEUE_CORRUPTION_SEED to repeat)");
    let mut rng = Rng(seed | 1);
    let dir = Scratch::new("ipcq-trials")?;
    let template_path = dir.path().join("template");
    let count = 250;
    let acked = 50;
    template(&template_path, count)?;
    consume_all(&template_path, acked)?;
    ensure!(segment_paths(&template_path)?.len() == 3);
    let mut table = std::collections::BTreeMap::<Damage, Outcomes>::new();
    for trial in 0..trials {
        for kind in Damage::ALL {
            let path = dir.path().join(format!("t{trial}-{kind:?}"));
            copy_dir(&template_path, &path)?;
            damage(&path, kind, &mut rng)?;
            let queue = Queue::open(&path)?;
            let opened = queue.consumer::<String>();
            let error_on_open = matches!(&opened, Err(err) if err.kind() == ErrorKind::Corrupted);
            if let Err(err) = &opened {
                ensure!(error_on_open, "{kind:?}: {err}");
            }
            drop(opened);
            let drained = drain(&path).with_context(|| format!("trial {trial} {kind:?}"))?;
            let missing = (acked..count)
                .filter(|seq| !drained.seqs.contains(seq))
                .count() as u64;
            let lost = lost(&path)?;
            let outcome = table.entry(kind).or_default();
            outcome.trials += 1;
            let reported = error_on_open || !drained.reports.is_empty();
            if missing > 0 && (!reported || lost < missing) {
                eprintln!(
                    "trial {trial} {kind:?}: {missing} missing, {lost} counted lost, reports {:?}",
                    drained.reports
                );
                outcome.silent_loss += 1;
            } else if error_on_open {
                outcome.error_on_open += 1;
            } else if missing > 0 {
                outcome.loss_reported += 1;
            } else if reported {
                outcome.detected_no_loss += 1;
            } else {
                outcome.no_loss += 1;
            }
            // The queue goes on after any of it, without giving a number twice.
            let after = send_after(&path).with_context(|| format!("trial {trial} {kind:?}"))?;
            ensure!(
                after >= count,
                "trial {trial} {kind:?}: new message got {after}"
            );
            std::fs::remove_dir_all(&path)?;
        }
    }
    eprintln!(
        "| damage | trials | error on open | loss reported | detected, nothing lost | no loss | silent loss |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for (kind, o) in &table {
        eprintln!(
            "| {kind:?} | {} | {} | {} | {} | {} | {} |",
            o.trials,
            o.error_on_open,
            o.loss_reported,
            o.detected_no_loss,
            o.no_loss,
            o.silent_loss
        );
    }
    let silent: u64 = table.values().map(|o| o.silent_loss).sum();
    assert_eq!(silent, 0, "silent loss");
    Ok(())
}

/// Issue 16, item 3: tampering with `synced` went unnoticed. Now a damaged or missing
/// watermark is reported once, by whichever handle meets it first, and rebuilt at the tail
/// after a sync.
#[test]
fn a_damaged_or_missing_watermark_is_reported_once_and_rebuilt() -> Result<()> {
    let _watchdog = Watchdog::new("damaged watermark", WAIT);
    let dir = Scratch::new("ipcq-mark")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    let good = std::fs::read(template_path.join("synced"))?;
    let mut flipped = good.clone();
    flipped[17] ^= 0x10; // the offset, without fixing the checksum
    for (case, bytes) in [("flipped", Some(flipped)), ("missing", None)] {
        for producer_first in [true, false] {
            let path = dir.path().join(format!("{case}-{producer_first}"));
            copy_dir(&template_path, &path)?;
            match &bytes {
                Some(bytes) => std::fs::write(path.join("synced"), bytes)?,
                None => std::fs::remove_file(path.join("synced"))?,
            }
            let mut reports = Vec::new();
            if producer_first {
                let queue = Queue::open(&path)?;
                let err = queue
                    .producer::<String>(ProducerOptions::new())
                    .expect_err("a damaged watermark accepted");
                assert_eq!(err.kind(), ErrorKind::Corrupted, "{case}: {err}");
                reports.push(err.to_string());
                queue.producer::<String>(ProducerOptions::new())?;
            }
            let drained = drain(&path)?;
            reports.extend(drained.reports);
            assert_eq!(drained.seqs, (0..5).collect(), "{case}");
            assert_eq!(reports.len(), 1, "{case}: {reports:?}");
            assert!(reports[0].contains("sync watermark"), "{case}: {reports:?}");
            assert_eq!(watermark(&path)?, (0, 5 * RECORD_LEN, 5), "{case}");
            assert_eq!(send_after(&path)?, 5, "{case}");
        }
    }
    Ok(())
}

/// The watermark of earlier 0.1 builds, `(segment, offset)` in 16 bytes, is migrated: read
/// as it was (a cut below it is still a reported loss), replaced at the next sync.
#[test]
fn an_old_format_watermark_is_migrated_and_still_catches_a_cut() -> Result<()> {
    let _watchdog = Watchdog::new("old watermark", WAIT);
    let dir = Scratch::new("ipcq-oldmark")?;
    let template_path = dir.path().join("template");
    template(&template_path, 5)?;
    let old_format = std::fs::read(template_path.join("synced"))?[8..24].to_vec();
    for cut in [false, true] {
        let path = dir.path().join(format!("cut-{cut}"));
        copy_dir(&template_path, &path)?;
        std::fs::write(path.join("synced"), &old_format)?;
        let kept = if cut { 3 } else { 5 };
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment_paths(&path)?.remove(0))?
            .set_len(kept * RECORD_LEN)?;
        let drained = drain(&path)?;
        assert_eq!(drained.seqs, (0..kept).collect(), "cut {cut}");
        assert_eq!(
            drained.reports.len(),
            usize::from(cut),
            "{:?}",
            drained.reports
        );
        if cut {
            assert_eq!(lost(&path)?, 2);
        }
        let after = send_after(&path)?;
        assert!(after >= 5, "cut {cut}: number {after} given again");
        let (_, _, next) = watermark(&path)?;
        assert_eq!(
            next,
            after + 1,
            "cut {cut}: the watermark is in the current format"
        );
    }
    Ok(())
}

/// A queue of `count` synced messages in one 64 KiB segment, with the zeros written ahead
/// of the log left in place (the layout producers leave); returns the segment.
fn template_with_zeros(dir: &Path, count: u64) -> Result<PathBuf> {
    let queue = Queue::create(dir, &QueueConfig::new().with_segment_len(64 << 10))?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    for i in 0..count {
        producer.send(&message(i))?;
    }
    drop(producer);
    let segment = segment_paths(dir)?.remove(0);
    let end = crate::queue_support::records_end(&segment)?;
    ensure!(end == count * RECORD_LEN, "records end at {end}");
    ensure!(
        std::fs::metadata(&segment)?.len() > end + 4096,
        "no zeros written ahead"
    );
    Ok(segment)
}

fn overwrite(segment: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment)?
        .write_all_at(bytes, offset)?;
    Ok(())
}

/// Zeros where a synced record starts are damage, not the end of the log: the records
/// after them are still delivered and the one zeroed is a reported loss.
#[test]
fn zeros_over_a_synced_record_are_damage_not_the_end() -> Result<()> {
    let _watchdog = Watchdog::new("zeroed records", WAIT);
    let dir = Scratch::new("ipcq-zeroed")?;
    for (name, len) in [("header", 40), ("record", RECORD_LEN as usize)] {
        let path = dir.path().join(name);
        let segment = template_with_zeros(&path, 20)?;
        overwrite(&segment, 5 * RECORD_LEN, &vec![0u8; len])?;
        let drained = drain(&path).with_context(|| name.to_owned())?;
        let expected: BTreeSet<u64> = (0..20).filter(|&seq| seq != 5).collect();
        assert_eq!(drained.seqs, expected, "{name}");
        assert_eq!(drained.reports.len(), 1, "{name}: {:?}", drained.reports);
        assert_eq!(lost(&path)?, 1, "{name}");
        assert_eq!(send_after(&path)?, 20, "{name}");
    }
    Ok(())
}

/// The last synced records zeroed (the log seems to end early, in zeros): the watermark
/// says otherwise, so it is a reported loss and the lost numbers are never given again.
#[test]
fn a_synced_tail_zeroed_is_a_reported_loss() -> Result<()> {
    let _watchdog = Watchdog::new("zeroed tail", WAIT);
    let dir = Scratch::new("ipcq-zerotail")?;
    for opener in ["consumer", "producer"] {
        let path = dir.path().join(opener);
        let segment = template_with_zeros(&path, 20)?;
        overwrite(
            &segment,
            17 * RECORD_LEN,
            &vec![0u8; 3 * RECORD_LEN as usize],
        )?;
        let mut reports = Vec::new();
        if opener == "producer" {
            let queue = Queue::open(&path)?;
            match queue.producer::<String>(ProducerOptions::new()) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::Corrupted => reports.push(err.to_string()),
                Err(err) => return Err(err.into()),
            }
        }
        let drained = drain(&path).with_context(|| opener.to_owned())?;
        reports.extend(drained.reports);
        assert_eq!(drained.seqs, (0..17).collect(), "{opener}");
        assert!(
            reports.iter().any(|r| r.contains("17..20")),
            "{opener}: {reports:?}"
        );
        assert_eq!(lost(&path)?, 3, "{opener}");
        assert!(send_after(&path)? >= 20, "{opener}");
    }
    Ok(())
}

/// Bytes written into the zeros ahead of the log are no record of it: a torn record there
/// is cut and kept in quarantine, garbage further on is never delivered, and neither is a
/// reported loss; what comes after is delivered whole, over the garbage too.
#[test]
fn bytes_in_the_zeros_ahead_are_cut_or_overwritten_never_delivered() -> Result<()> {
    let _watchdog = Watchdog::new("zeros ahead", WAIT);
    let dir = Scratch::new("ipcq-ahead")?;
    let count = 20;
    let end = count * RECORD_LEN;
    // A torn record right after the last one: its first 30 bytes.
    let path = dir.path().join("torn");
    let segment = template_with_zeros(&path, count)?;
    let record = std::fs::read(&segment)?[..RECORD_LEN as usize].to_vec();
    overwrite(&segment, end, &record[..30])?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (0..count).collect());
    assert!(drained.reports.is_empty(), "{:?}", drained.reports);
    assert_eq!(quarantined(&path), 1);
    assert_eq!(send_after(&path)?, count);
    // Garbage 8 KiB past the end: ignored until the log comes within 4 KiB of it, then cut
    // as a torn tail would be.
    let path = dir.path().join("garbage");
    let segment = template_with_zeros(&path, count)?;
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
    overwrite(&segment, end + 8192, &garbage)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (0..count).collect());
    assert!(drained.reports.is_empty(), "{:?}", drained.reports);
    // Enough new messages to pass the garbage: all delivered, in order, none lost.
    let queue = Queue::open(&path)?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let more = 400;
    for i in count..count + more {
        assert_eq!(producer.send(&message(i))?.seq(), i);
    }
    drop(producer);
    let mut consumer = queue.consumer::<String>()?;
    for i in count..count + more {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(
            (delivery.seq(), delivery.message().as_str()),
            (i, message(i).as_str())
        );
        consumer.ack(&delivery)?;
    }
    drop(consumer);
    assert_eq!(lost(&path)?, 0);
    assert_eq!(quarantined(&path), 1);
    assert_eq!(send_after(&path)?, count + more);
    Ok(())
}

/// A segment cut inside the zeros ahead loses nothing: the records are all before it.
#[test]
fn a_segment_cut_in_its_zeros_loses_nothing() -> Result<()> {
    let _watchdog = Watchdog::new("cut zeros", WAIT);
    let dir = Scratch::new("ipcq-cutzeros")?;
    let path = dir.path().join("q");
    let segment = template_with_zeros(&path, 20)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(20 * RECORD_LEN + 100)?;
    let drained = drain(&path)?;
    assert_eq!(drained.seqs, (0..20).collect());
    assert!(drained.reports.is_empty(), "{:?}", drained.reports);
    assert_eq!(lost(&path)?, 0);
    assert_eq!(send_after(&path)?, 20);
    Ok(())
}

/// The note of where the log ends in `append.lock` (FORMAT.md, "Writing"): checksum,
/// segment, last record start, end, next sequence number.
fn write_note(path: &Path, segment: u64, last_start: u64, end: u64, next_seq: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut note = Vec::new();
    for value in [segment, last_start, end, next_seq] {
        note.extend_from_slice(&value.to_le_bytes());
    }
    let crc = crc32c(&note);
    note.extend_from_slice(&crc.to_le_bytes());
    std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("append.lock"))?
        .write_all_at(&note, 0)?;
    Ok(())
}

/// The note of where the log ends is a shortcut that producers check before they use it:
/// garbage, a note past the records, one naming the wrong number or the wrong length, or a
/// stale one, and the next send still gets the next number, nothing is lost or reported,
/// and every message is delivered once.
#[test]
fn a_wrong_note_of_the_logs_end_is_checked_and_ignored() -> Result<()> {
    let _watchdog = Watchdog::new("end note", WAIT);
    let dir = Scratch::new("ipcq-note")?;
    const COUNT: u64 = 20;
    let count = COUNT;
    type Spoil = fn(&Path) -> Result<()>;
    let cases: [(&str, Spoil); 5] = [
        ("garbage", |path| {
            let garbage: Vec<u8> = (0..36u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            std::fs::write(path.join("append.lock"), garbage)?;
            Ok(())
        }),
        // Past the records, into the zeros ahead.
        ("past the end", |path| {
            write_note(path, 0, 29 * RECORD_LEN, 30 * RECORD_LEN, 30)
        }),
        // The last record the other handle wrote, with a number it does not have.
        ("wrong number", |path| {
            write_note(
                path,
                0,
                (COUNT + 4) * RECORD_LEN,
                (COUNT + 5) * RECORD_LEN,
                COUNT + 9,
            )
        }),
        // A real record, but not ending where the note says.
        ("wrong length", |path| {
            write_note(
                path,
                0,
                (COUNT + 2) * RECORD_LEN,
                (COUNT + 5) * RECORD_LEN,
                COUNT + 3,
            )
        }),
        // True, but stale: the other handle's later records follow it and are scanned.
        ("stale", |path| {
            write_note(
                path,
                0,
                (COUNT + 1) * RECORD_LEN,
                (COUNT + 2) * RECORD_LEN,
                COUNT + 2,
            )
        }),
    ];
    for (name, spoil) in cases {
        let path = dir.path().join(name);
        template_with_zeros(&path, count)?;
        let queue = Queue::open(&path)?;
        // A handle at the end of the first 20, then another that appends 5 after it: the
        // first one's next append finds records past its own end and reads the note.
        let mut first = queue.producer::<String>(ProducerOptions::new())?;
        let mut other = queue.producer::<String>(ProducerOptions::new())?;
        for i in count..count + 5 {
            assert_eq!(other.send(&message(i))?.seq(), i, "{name}");
        }
        spoil(&path)?;
        assert_eq!(first.send(&message(count + 5))?.seq(), count + 5, "{name}");
        assert_eq!(other.send(&message(count + 6))?.seq(), count + 6, "{name}");
        drop((first, other, queue));
        let drained = drain(&path)?;
        assert_eq!(drained.seqs, (0..count + 7).collect(), "{name}");
        assert!(drained.reports.is_empty(), "{name}: {:?}", drained.reports);
        assert_eq!(lost(&path)?, 0, "{name}");
        assert_eq!(quarantined(&path), 0, "{name}");
        assert_eq!(send_after(&path)?, count + 7, "{name}");
    }
    Ok(())
}
