//! ipc-queue on a full disk: a clear error, no partial record visible, and the queue works
//! again once space is freed. Uses a real 1 MiB tmpfs when the test may mount one (root in
//! the CI sandbox), and always also an injected write limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use ipc_core::ErrorKind;
use ipc_queue::{Producer, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{TempDir, Watchdog};

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

fn mount_tmpfs(at: &Path) -> Option<Mount> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| Mount(at.to_path_buf()))
}

#[test]
fn a_real_full_disk_fails_cleanly_and_the_queue_recovers_when_space_is_freed() -> Result<()> {
    let _watchdog = Watchdog::new("tmpfs full", WAIT);
    let dir = TempDir::new("ipcq-tmpfs")?;
    let mount_point = dir.path().join("mnt");
    std::fs::create_dir(&mount_point)?;
    let Some(_mount) = mount_tmpfs(&mount_point) else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (not root?); the injected write limit test covers a full disk"
        );
        return Ok(());
    };
    let config = QueueConfig::new().with_segment_len(64 << 10);
    let queue = Queue::create(mount_point.join("q"), &config)?;
    // Room for the consumer's state log once the producer has filled the disk.
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
