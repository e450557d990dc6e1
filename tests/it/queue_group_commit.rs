//! Group commit across processes (issue 14): many producer processes share `fdatasync`s
//! through the sync lock and the `synced` watermark; a leader that dies or fails in its sync
//! blocks no one and makes no one else's bytes count as durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ipc_core::ErrorKind;
use ipc_queue::{Durability, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{Peer, TempDir, Watchdog};

use crate::queue_support::{deliveries, read_receipts, spawn_producer};

const WAIT: Duration = Duration::from_secs(120);

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// The watermark as FORMAT.md lays it out: (segment, offset, next_seq).
fn watermark(queue: &Path) -> Result<(u64, u64, u64)> {
    let bytes = std::fs::read(queue.join("synced")).context("read synced")?;
    ensure!(bytes.len() == 32, "synced is {} bytes", bytes.len());
    ensure!(&bytes[..4] == b"IPQW", "synced has a wrong magic");
    let at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok((at(8), at(16), at(24)))
}

/// The newest segment: (first sequence number, where its records end).
fn last_segment(queue: &Path) -> Result<(u64, u64)> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(queue.join("segments"))? {
        let path = entry?.path();
        let Some(first) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(best, _)| first > *best) {
            newest = Some((first, path));
        }
    }
    let (first, path) = newest.context("no segment")?;
    Ok((first, crate::queue_support::records_end(&path)?))
}

#[test]
fn sixteen_producer_processes_sending_one_at_a_time_lose_nothing() -> Result<()> {
    let _watchdog = Watchdog::new("16 producers", WAIT);
    let dir = TempDir::new("ipcq-group")?;
    let path = dir.path().join("q");
    Queue::create(&path, &QueueConfig::new().with_segment_len(64 << 10))?;
    let address = path_arg(&path);
    crate::queue_support::every_receipt_is_delivered(&address, 16, 40, &[], WAIT)
}

#[test]
fn a_leader_killed_in_its_sync_blocks_no_one_and_claims_nothing() -> Result<()> {
    let _watchdog = Watchdog::new("killed leader", WAIT);
    let dir = TempDir::new("ipcq-leader")?;
    let path = dir.path().join("q");
    let queue = Queue::create(&path, &QueueConfig::new())?;
    // Bytes appended but not synced, by another handle.
    let mut lazy =
        queue.producer::<Vec<u8>>(ProducerOptions::new().with_durability(Durability::Never))?;
    lazy.send(&vec![7u8; 500])?;
    let before = watermark(&path)?;

    // A producer process appends, becomes the leader of a sync (nobody else is syncing)
    // and dies holding the sync lock, before its fdatasync.
    let mut leader = Peer::spawn_role(
        "dying leader",
        "queue-produce",
        [
            "--address",
            &path_arg(&path),
            "--producer",
            "1",
            "--count",
            "1",
            "--abort-in-sync",
            "1",
        ],
    )?;
    let status = leader.wait(WAIT)?;
    ensure!(
        !status.success(),
        "the leader should have aborted: {status}"
    );
    let (segment, len) = last_segment(&path)?;
    let after = watermark(&path)?;
    ensure!(
        after == before,
        "the watermark moved from {before:?} to {after:?}"
    );
    ensure!(
        (after.0, after.1) < (segment, len),
        "the watermark {after:?} covers bytes never synced (segment {segment} is {len} bytes)"
    );

    // The kernel released the dead leader's lock: others sync, and their syncs cover it all.
    lazy.flush()?;
    let mut producer = queue.producer::<Vec<u8>>(ProducerOptions::new())?;
    producer.send(&vec![8u8; 500])?;
    let (segment, len) = last_segment(&path)?;
    let after = watermark(&path)?;
    ensure!(
        (after.0, after.1) == (segment, len),
        "after a sync the watermark {after:?} should be at the end, segment {segment} length {len}"
    );
    Ok(())
}

#[test]
fn a_failed_leader_sync_makes_no_follower_durable() -> Result<()> {
    let _watchdog = Watchdog::new("failed leader", WAIT);
    let dir = TempDir::new("ipcq-failsync")?;
    let path = dir.path().join("q");
    let queue = Queue::create(&path, &QueueConfig::new())?;
    let mut lazy =
        queue.producer::<u32>(ProducerOptions::new().with_durability(Durability::Never))?;
    lazy.send(&1)?;
    let before = watermark(&path)?;
    // This handle's sync covers the other handle's bytes too, and fails.
    let mut failing = queue.producer::<u32>(ProducerOptions::new().with_failing_sync_after(1))?;
    let err = failing.send(&2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    ensure!(
        watermark(&path)? == before,
        "a failed sync moved the watermark"
    );
    // The other handle's bytes were in the failed sync: it gets no success for them.
    let err = lazy.flush().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    let err = lazy
        .send(&3)
        .map(|_| ())
        .and_then(|()| lazy.flush())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    ensure!(
        watermark(&path)? == before,
        "the watermark moved on a poisoned queue"
    );
    Ok(())
}

/// With many producers, the ones waiting for a sync sleep until its leader is done
/// (`FORMAT.md`, group commit): a leader killed holding the sync lock, before its
/// `fdatasync`, wakes no one, and the sleepers must find out by themselves. They all
/// finish, and every message receipted to any of them (the killed one included) is
/// delivered; the killed one's last message, appended but never receipted, may be too.
#[test]
fn a_leader_killed_in_its_sync_among_many_producers_blocks_no_one() -> Result<()> {
    let _watchdog = Watchdog::new("killed leader among many", WAIT);
    let dir = TempDir::new("ipcq-leaders")?;
    let path = dir.path().join("q");
    Queue::create(&path, &QueueConfig::new().with_segment_len(256 << 10))?;
    let address = path_arg(&path);
    let mut peers = Vec::new();
    for id in 0..16u32 {
        // Producer 0 dies in the 3rd sync it leads, which it reaches at the latest once
        // it sends alone.
        peers.push(if id == 0 {
            spawn_producer(&address, id, 2000, &["--abort-in-sync", "3"])?
        } else {
            spawn_producer(&address, id, 60, &[])?
        });
    }
    let mut receipted = BTreeMap::new();
    for (id, peer) in peers.iter_mut().enumerate() {
        let finished = read_receipts(peer, &mut receipted, WAIT)?;
        let status = peer.wait(WAIT)?;
        if id == 0 {
            ensure!(
                !finished && !status.success(),
                "producer 0 should have died in a sync"
            );
        } else {
            ensure!(finished && status.success(), "producer {id}: {status}");
        }
    }
    ensure!(
        receipted.len() >= 15 * 60,
        "{} receipts from the 15 that lived",
        receipted.len()
    );
    let (got, _) = deliveries(&address, &["--idle-exit-ms", "2000"], WAIT)?;
    for (seq, receipt) in &receipted {
        ensure!(
            got.get(seq) == Some(receipt),
            "message {seq} was receipted as {receipt:?} and delivered as {:?}",
            got.get(seq)
        );
    }
    let unreceipted: Vec<_> = got
        .keys()
        .filter(|seq| !receipted.contains_key(seq))
        .collect();
    ensure!(
        unreceipted.len() <= 1,
        "delivered without a receipt: {unreceipted:?}"
    );
    Ok(())
}
