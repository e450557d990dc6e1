//! ipc-queue on a full disk: a clear error, no partial record visible, and the queue works
//! again once space is freed. Uses a real 1 MiB tmpfs when the test may mount one (root in
//! the CI sandbox), and always also an injected write limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ipc_core::ErrorKind;
use ipc_queue::{Producer, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{Peer, TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

/// Sends 1000-byte messages until the disk is full; returns how many got a receipt and the
/// error.
fn fill(producer: &mut Producer<Vec<u8>>) -> Result<(u64, ipc_core::Error)> {
    let mut sent = 0u64;
    loop {
        match producer.send(&vec![sent as u8; 1000]) {
            Ok(receipt) => {
                ensure!(receipt.seq() == sent);
                sent += 1;
            }
            Err(err) => return Ok((sent, err)),
        }
        ensure!(sent < 100_000, "the disk never filled");
    }
}

/// Every receipted message is there, whole; nothing else is.
fn drain_exactly(queue: &Queue, sent: u64) -> Result<()> {
    let mut consumer = queue.consumer::<Vec<u8>>()?;
    for seq in 0..sent {
        let delivery = consumer.recv_timeout(WAIT)?;
        ensure!(delivery.seq() == seq && delivery.message() == &vec![seq as u8; 1000]);
        consumer.ack(&delivery)?;
    }
    ensure!(
        consumer.try_recv()?.is_none(),
        "more than the receipted messages"
    );
    Ok(())
}

#[test]
fn an_injected_write_limit_fails_cleanly_and_another_handle_goes_on() -> Result<()> {
    let _watchdog = Watchdog::new("write limit", WAIT);
    let dir = TempDir::new("ipcq-limit")?;
    let queue = Queue::create(dir.path().join("q"), &QueueConfig::new())?;
    // 10.5 records fit: the 11th write is cut short, as on a real full disk.
    let options = ProducerOptions::new().with_write_limit(10 * 1042 + 500);
    let mut producer = queue.producer::<Vec<u8>>(options)?;
    let (sent, err) = fill(&mut producer)?;
    assert_eq!(sent, 10);
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().starts_with("disk full"), "{err}");
    let segment = queue
        .path()
        .expect("a directory")
        .join("segments")
        .join(format!("{:020}.seg", 0));
    assert_eq!(
        std::fs::metadata(segment)?.len(),
        10 * 1042,
        "partial record left"
    );
    drain_exactly(&queue, sent)?;
    let mut producer = queue.producer::<Vec<u8>>(ProducerOptions::new())?;
    assert_eq!(producer.send(&vec![0; 1000])?.seq(), sent);
    Ok(())
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` mounted at `mnt` in `dir`, or `None` (saying that `untested` is not
/// tested) where this process may not mount one.
fn tmpfs_in(dir: &TempDir, size: &str, untested: &str) -> Result<Option<(PathBuf, Mount)>> {
    let mount_point = dir.path().join("mnt");
    std::fs::create_dir(&mount_point)?;
    let Some(mount) = mount_tmpfs(&mount_point, size) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?): {untested}");
        return Ok(None);
    };
    Ok(Some((mount_point, mount)))
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| Mount(at.to_path_buf()))
}

/// The fill-drain-refill rounds: a few in CI, more with `IPC_SOAK=1` (or
/// `IPC_QUEUE_DISK_ROUNDS=N`).
fn disk_rounds() -> u64 {
    if let Some(rounds) = std::env::var("IPC_QUEUE_DISK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        return rounds;
    }
    if std::env::var_os("IPC_SOAK").is_some() {
        20
    } else {
        3
    }
}

/// Sends 1000-byte messages from `first` on until the disk is full; returns how many got
/// a receipt and the error.
fn fill_from(producer: &mut Producer<Vec<u8>>, first: u64) -> Result<(u64, ipc_core::Error)> {
    let mut seq = first;
    loop {
        match producer.send(&vec![seq as u8; 1000]) {
            Ok(receipt) => {
                ensure!(receipt.seq() == seq, "receipt {} for {seq}", receipt.seq());
                seq += 1;
            }
            Err(err) => return Ok((seq - first, err)),
        }
        ensure!(seq - first < 100_000, "the disk never filled");
    }
}

/// Every receipted message of `from..to` is there, whole, and nothing else.
fn drain_range(queue: &Queue, from: u64, to: u64) -> Result<()> {
    let mut consumer = queue.consumer::<Vec<u8>>()?;
    for seq in from..to {
        let delivery = consumer.recv_timeout(WAIT)?;
        ensure!(
            delivery.seq() == seq && delivery.message() == &vec![seq as u8; 1000],
            "message {} for {seq}",
            delivery.seq()
        );
        consumer.ack(&delivery)?;
    }
    ensure!(
        consumer.try_recv()?.is_none(),
        "more than the receipted messages"
    );
    Ok(())
}

/// Whether the filesystem at `dir` has no room for 8 KiB more.
fn disk_is_full(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let full = matches!(std::fs::write(&probe, vec![0u8; 8192]), Err(err) if err.raw_os_error() == Some(28));
    let _ = std::fs::remove_file(&probe);
    full
}

#[test]
fn a_real_full_disk_fails_cleanly_and_the_queue_recovers_when_space_is_freed() -> Result<()> {
    let _watchdog = Watchdog::new("tmpfs full", WAIT);
    let dir = TempDir::new("ipcq-tmpfs")?;
    let Some((mount_point, _mount)) = tmpfs_in(
        &dir,
        "1m",
        "the injected write limit test covers a full disk",
    )?
    else {
        return Ok(());
    };
    let config = QueueConfig::new().with_segment_len(64 << 10);
    let queue = Queue::create(mount_point.join("q"), &config)?;
    // Space used by something else, freed later.
    let filler = mount_point.join("filler");
    std::fs::write(&filler, vec![0u8; 128 << 10])?;
    let mut producer = queue.producer::<Vec<u8>>(ProducerOptions::new())?;
    let (sent, err) = fill(&mut producer)?;
    assert!(sent > 100, "only {sent} messages fit");
    assert!(err.to_string().contains("disk full"), "{err}");
    // The same producer keeps failing cleanly, not poisoned.
    let err = producer.send(&vec![0; 1000]).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    std::fs::remove_file(&filler)?;
    drain_exactly(&queue, sent)?;
    // Consumption freed the segments: the same producer works again.
    assert_eq!(producer.send(&vec![0; 1000])?.seq(), sent);
    Ok(())
}

/// Issue 16, item 2: with the disk full, consumers could not record a lease, so the one
/// thing that frees space, draining, was impossible. Now they drain a full disk (from
/// the queue's reserve), producers fail cleanly until space is back, then go on.
#[test]
fn consumers_drain_a_full_disk_and_producers_go_on_after_it_round_after_round() -> Result<()> {
    let rounds = disk_rounds();
    let _watchdog = Watchdog::new("drain a full disk", WAIT + Duration::from_secs(rounds * 5));
    let dir = TempDir::new("ipcq-tmpfs-drain")?;
    let Some((mount_point, _mount)) = tmpfs_in(&dir, "2m", "draining a full disk is NOT tested")?
    else {
        return Ok(());
    };
    let config = QueueConfig::new().with_segment_len(64 << 10);
    let queue = Queue::create(mount_point.join("q"), &config)?;
    let mut producer = queue.producer::<Vec<u8>>(ProducerOptions::new())?;
    let mut next = 0;
    let mut filled = Vec::new();
    for round in 0..rounds {
        let (sent, err) = fill_from(&mut producer, next)?;
        assert!(sent > 100, "round {round}: only {sent} messages fit");
        assert!(
            err.to_string().starts_with("disk full"),
            "round {round}: {err}"
        );
        assert!(
            disk_is_full(&mount_point),
            "round {round}: the disk is not full"
        );
        // Another producer, opened now, fails cleanly too.
        let err = queue
            .producer::<Vec<u8>>(ProducerOptions::new())?
            .send(&vec![0; 1000])
            .unwrap_err();
        assert!(
            err.to_string().starts_with("disk full"),
            "round {round}: {err}"
        );
        drain_range(&queue, next, next + sent).with_context(|| format!("round {round}"))?;
        next += sent;
        // Draining freed the segments: the same producer works again.
        assert_eq!(producer.send(&vec![next as u8; 1000])?.seq(), next);
        drain_range(&queue, next, next + 1)?;
        next += 1;
        filled.push(sent);
    }
    eprintln!(
        "disk full: {rounds} fill-drain-refill rounds on a 2 MiB tmpfs, messages per fill {filled:?}"
    );
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}

/// The same across processes: producer processes fill the disk and fail with `disk full`,
/// a consumer process drains it while it is full, and a producer process sends again.
#[test]
fn consumer_processes_drain_a_full_disk_that_producer_processes_filled() -> Result<()> {
    let rounds = disk_rounds();
    let _watchdog = Watchdog::new(
        "processes on a full disk",
        WAIT + Duration::from_secs(rounds * 5),
    );
    let dir = TempDir::new("ipcq-tmpfs-procs")?;
    let Some((mount_point, _mount)) = tmpfs_in(
        &dir,
        "2m",
        "draining a full disk across processes is NOT tested",
    )?
    else {
        return Ok(());
    };
    let path = mount_point.join("q");
    Queue::create(&path, &QueueConfig::new().with_segment_len(64 << 10))?;
    let address = path.display().to_string();
    for round in 0..rounds {
        let incarnation = round.to_string();
        let mut producer = Peer::spawn_role(
            format!("producer {round}"),
            "queue-produce",
            [
                "--address",
                &address,
                "--incarnation",
                &incarnation,
                "--size",
                "900",
            ],
        )?;
        let mut sent = 0u64;
        let mut failure = String::new();
        while let Ok(line) = producer.expect_line(WAIT) {
            if line.starts_with("error") {
                failure = line;
                continue;
            }
            ensure!(line.starts_with("sent "), "round {round}: {line}");
            sent += 1;
        }
        ensure!(
            !producer.wait(WAIT)?.success(),
            "round {round}: the disk never filled"
        );
        ensure!(failure.contains("disk full"), "round {round}: {failure:?}");
        ensure!(sent > 100, "round {round}: only {sent} messages fit");
        ensure!(
            disk_is_full(&mount_point),
            "round {round}: the disk is not full"
        );
        let expect = sent.to_string();
        let mut consumer = Peer::spawn_role(
            format!("consumer {round}"),
            "queue-consume",
            ["--address", &address, "--expect", &expect, "--quiet", "1"],
        )?;
        let outcome = consumer.expect_prefixed("ok", WAIT)?;
        consumer.wait_success(WAIT)?;
        ensure!(
            outcome.starts_with(&format!("received={sent} duplicates=0 ")),
            "round {round}: {outcome}"
        );
        eprintln!("round {round}: {sent} messages filled the disk and were drained on it");
    }
    let mut producer = Peer::spawn_role(
        "producer after",
        "queue-produce",
        ["--address", &address, "--count", "1", "--quiet", "1"],
    )?;
    producer.wait_success(WAIT)?;
    assert_eq!(Queue::open(&path)?.stats()?.depth, 1);
    Ok(())
}

/// Producers taking turns follow each other's note of the log's end, and a write that
/// follows a note does not look for the reserve (its writer did, and a consumer that
/// deletes the reserve removes the note first). So after consumers drained a full disk
/// from the reserve, a send that could follow a note written before the disk filled must
/// still make the reserve again; and a reserve removed from outside (the note left in
/// place) is made again within 64 sends, in the middle of a segment.
#[test]
fn producers_that_follow_each_others_notes_make_the_reserve_again_after_a_full_disk() -> Result<()>
{
    let rounds = disk_rounds();
    let _watchdog = Watchdog::new("reserve and notes", WAIT + Duration::from_secs(rounds * 5));
    let dir = TempDir::new("ipcq-tmpfs-notes")?;
    let Some((mount_point, _mount)) = tmpfs_in(
        &dir,
        "2m",
        "the reserve after a full disk with notes is NOT tested",
    )?
    else {
        return Ok(());
    };
    let config = QueueConfig::new().with_segment_len(512 << 10);
    let queue = Queue::create(mount_point.join("q"), &config)?;
    let reserve = queue.path().expect("a directory").join("reserve");
    let mut producers = Vec::new();
    for _ in 0..3 {
        producers.push(queue.producer::<Vec<u8>>(ProducerOptions::new())?);
    }
    let mut next = 0u64;
    for round in 0..rounds {
        // Turns until the disk is full.
        let first = next;
        let mut failed = None;
        while failed.is_none() {
            for (i, producer) in producers.iter_mut().enumerate() {
                match producer.send(&vec![next as u8; 1000]) {
                    Ok(receipt) => {
                        ensure!(
                            receipt.seq() == next,
                            "round {round}: receipt {}",
                            receipt.seq()
                        );
                        next += 1;
                    }
                    Err(err) => {
                        ensure!(
                            err.to_string().starts_with("disk full"),
                            "round {round}: {err}"
                        );
                        failed = Some(i);
                        break;
                    }
                }
            }
            ensure!(next - first < 100_000, "the disk never filled");
        }
        ensure!(
            next - first > 100,
            "round {round}: only {} messages fit",
            next - first
        );
        // The consumer takes the reserve to record its acknowledgements.
        drain_range(&queue, first, next).with_context(|| format!("round {round}"))?;
        // The producer after the one that failed last looked before the two others
        // appended: its next send follows the note of the one before the failure.
        let failed = failed.unwrap_or(0);
        for i in [failed + 1, failed + 2, failed].map(|i| i % 3) {
            let receipt = producers[i].send(&vec![next as u8; 1000])?;
            ensure!(
                receipt.seq() == next,
                "round {round}, producer {i}: receipt {}",
                receipt.seq()
            );
            next += 1;
            ensure!(
                reserve.exists(),
                "round {round}: producer {i} sent after a full disk without making the reserve again"
            );
        }
        // Removed from outside, with the note still there.
        std::fs::remove_file(&reserve)?;
        let mut sends = 0;
        while !reserve.exists() {
            ensure!(sends < 70, "round {round}: no reserve after {sends} sends");
            ensure!(producers[sends % 3].send(&vec![next as u8; 1000])?.seq() == next);
            next += 1;
            sends += 1;
        }
        drain_range(&queue, next - sends as u64 - 3, next)?;
    }
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}
