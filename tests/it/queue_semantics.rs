//! ipc-queue's consumer semantics, bounds and space reclamation, through the public API.
//! (Cross-process behaviour is in `queue_processes.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{Durability, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

fn fresh(config: &QueueConfig) -> Result<(TempDir, Queue)> {
    let dir = TempDir::new("ipcq")?;
    let queue = Queue::create(dir.path().join("q"), config)?;
    Ok((dir, queue))
}

#[test]
fn create_and_open_are_separate_and_directories_are_owner_only() -> Result<()> {
    let (dir, queue) = fresh(&QueueConfig::new())?;
    let path = queue.path().expect("a directory").to_path_buf();
    let err = Queue::create(&path, &QueueConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = Queue::open(dir.path().join("nothing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = Queue::create(
        dir.path().join("bad"),
        &QueueConfig::new().with_segment_len(10),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    queue.producer::<u32>(ProducerOptions::new())?.send(&1)?;
    let _consumer = queue.consumer::<u32>()?;
    let mut stack = vec![path];
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path)?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    Ok(())
}

#[test]
fn a_delayed_nack_waits_and_leases_run_out() -> Result<()> {
    let _watchdog = Watchdog::new("leases", WAIT);
    let config = QueueConfig::new().with_lease(Duration::from_millis(50));
    let (_dir, queue) = fresh(&config)?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&7)?;
    let mut consumer = queue.consumer::<u32>()?;
    let first = consumer.recv_timeout(WAIT)?;
    // Left unsettled: the lease runs out and the message comes back.
    let second = consumer.recv_timeout(WAIT)?;
    assert_eq!((second.seq(), second.deliveries()), (first.seq(), 2));
    consumer.nack(&second, Some(Duration::from_millis(30)))?;
    assert_eq!(queue.stats()?.delayed, Some(1));
    let third = consumer.recv_timeout(WAIT)?;
    assert_eq!(third.deliveries(), 3);
    consumer.ack(&third)?;
    // Acking the stale first delivery again changes nothing.
    consumer.ack(&first)?;
    assert!(consumer.try_recv()?.is_none());
    Ok(())
}

#[test]
fn fully_acknowledged_segments_are_deleted() -> Result<()> {
    let _watchdog = Watchdog::new("reclaim", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new().with_segment_len(4096))?;
    let mut producer =
        queue.producer::<Vec<u8>>(ProducerOptions::new().with_durability(Durability::Never))?;
    for i in 0..200u32 {
        producer.send(&vec![i as u8; 300])?;
    }
    let segments = |queue: &Queue| -> Result<u64> {
        Ok(queue.stats()?.storage.expect("an embedded queue").segments)
    };
    let before = segments(&queue)?;
    assert!(before > 10, "{before} segments");
    let mut consumer = queue.consumer::<Vec<u8>>()?;
    for i in 0..200u32 {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.message()[0], i as u8);
        consumer.ack(&delivery)?;
    }
    assert_eq!(queue.stats()?.depth, 0);
    let after = segments(&queue)?;
    assert!(after <= 2, "{after} segments left of {before}");
    // Sending and receiving go on after reclamation, in new segments.
    producer.send(&vec![1; 10])?;
    let mut consumer = queue.consumer::<Vec<u8>>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    consumer.ack(&delivery)?;
    Ok(())
}

#[test]
fn every_durability_mode_delivers_and_a_failed_sync_poisons() -> Result<()> {
    let _watchdog = Watchdog::new("durability", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    for durability in [
        Durability::Always,
        Durability::Interval(Duration::from_millis(5)),
        Durability::Never,
    ] {
        let mut producer =
            queue.producer::<u32>(ProducerOptions::new().with_durability(durability))?;
        for i in 0..10 {
            producer.send(&i)?;
        }
        producer.flush()?;
    }
    let mut consumer = queue.consumer::<u32>()?;
    for _ in 0..30 {
        let delivery = consumer.recv_timeout(WAIT)?;
        consumer.ack(&delivery)?;
    }

    let options = ProducerOptions::new().with_failing_sync_after(2);
    let mut producer = queue.producer::<u32>(options)?;
    producer.send(&1)?;
    let err = producer.send(&2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    let err = producer.send(&3).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    // Other handles refuse too, until someone has checked the disk.
    let err = queue.producer::<u32>(ProducerOptions::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    std::fs::remove_file(queue.path().expect("a directory").join("POISONED"))?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&4)?;
    Ok(())
}

#[test]
fn ack_batch_settles_its_deliveries_and_only_those() -> Result<()> {
    let _watchdog = Watchdog::new("ack batch", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    let messages: Vec<u32> = (0..10).collect();
    producer.send_batch(&messages)?;
    let mut consumer = queue.consumer::<u32>()?;
    let mut deliveries = Vec::new();
    for _ in 0..10 {
        deliveries.push(consumer.recv_timeout(WAIT)?);
    }
    // Five of them, one twice, and an empty batch: all fine.
    let (done, left) = deliveries.split_at(5);
    let mut batch: Vec<_> = done.iter().collect();
    batch.push(&done[0]);
    consumer.ack_batch(&batch)?;
    consumer.ack_batch(&[])?;
    let stats = queue.stats()?;
    assert_eq!((stats.depth, stats.unacked), (5, Some(5)), "{stats:?}");
    // The consumer goes without acknowledging the rest: those, and only those, come again.
    drop(consumer);
    let mut again = queue.consumer::<u32>()?;
    let mut redelivered = Vec::new();
    for _ in 0..5 {
        let delivery = again.recv_timeout(WAIT)?;
        redelivered.push(*delivery.message());
        again.ack(&delivery)?;
    }
    redelivered.sort_unstable();
    let expected: Vec<u32> = left.iter().map(|d| *d.message()).collect();
    assert_eq!(redelivered, expected);
    assert_eq!(again.try_recv()?.map(|d| *d.message()), None);
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}

#[test]
fn recv_batch_takes_what_is_ready_and_stops_at_an_undecodable_message() -> Result<()> {
    let _watchdog = Watchdog::new("recv batch", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    let mut strings = queue.producer::<String>(ProducerOptions::new())?;
    let mut numbers = queue.producer::<u32>(ProducerOptions::new())?;
    let mut consumer = queue.consumer::<String>()?;
    let err = consumer
        .recv_batch(8, Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    for text in ["a", "b", "c"] {
        strings.send(&text.to_owned())?;
    }
    // Not a String: a length of 200 with nothing after it.
    numbers.send(&200)?;
    strings.send(&"d".to_owned())?;
    let first = consumer.recv_batch(2, WAIT)?;
    let texts: Vec<&str> = first.iter().map(|d| d.message().as_str()).collect();
    assert_eq!(texts, ["a", "b"]);
    // The batch ends before the undecodable message; the next call reports it.
    let second = consumer.recv_batch(100, WAIT)?;
    let texts: Vec<&str> = second.iter().map(|d| d.message().as_str()).collect();
    assert_eq!(texts, ["c"]);
    let err = consumer.recv_batch(100, WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let third = consumer.recv_batch(100, WAIT)?;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].message(), "d");
    let all: Vec<_> = first.iter().chain(&second).chain(&third).collect();
    consumer.ack_batch(&all)?;
    let stats = queue.stats()?;
    assert_eq!((stats.depth, stats.dead_letters), (0, 1), "{stats:?}");
    Ok(())
}
