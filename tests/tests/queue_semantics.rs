//! ipc-queue's consumer semantics, bounds and space reclamation, through the public API.
//! (Cross-process behaviour is in `queue_processes.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{DeadLetter, Durability, ProducerOptions, Queue, QueueConfig, WhenFull};
use ipc_tests::{TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

fn fresh(config: &QueueConfig) -> Result<(TempDir, Queue)> {
    let dir = TempDir::new("ipcq")?;
    let queue = Queue::create(dir.path().join("q"), config)?;
    Ok((dir, queue))
}

#[test]
fn messages_survive_reopening_and_come_out_in_order_with_their_receipts() -> Result<()> {
    let _watchdog = Watchdog::new("reopen", WAIT);
    let (dir, queue) = fresh(&QueueConfig::new())?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(producer.send(&format!("message {i}"))?);
    }
    let batch: Vec<String> = (100..150).map(|i| format!("message {i}")).collect();
    receipts.extend(producer.send_batch(&batch)?);
    drop(producer);
    assert!(receipts.windows(2).all(|w| w[0].seq() + 1 == w[1].seq()));

    let queue = Queue::open(dir.path().join("q"))?;
    assert_eq!(queue.stats()?.depth, 150);
    let mut consumer = queue.consumer::<String>()?;
    for (i, receipt) in receipts.iter().enumerate() {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.message(), &format!("message {i}"));
        assert_eq!(delivery.seq(), receipt.seq());
        assert_eq!(delivery.deliveries(), 1);
        consumer.ack(&delivery)?;
    }
    assert!(consumer.try_recv()?.is_none());
    let stats = queue.stats()?;
    assert_eq!((stats.depth, stats.unacked, stats.dead_letters), (0, 0, 0));
    assert_eq!(stats.oldest_age, None);
    Ok(())
}

#[test]
fn create_and_open_are_separate_and_directories_are_owner_only() -> Result<()> {
    let (dir, queue) = fresh(&QueueConfig::new())?;
    let err = Queue::create(queue.path(), &QueueConfig::new()).unwrap_err();
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
    let mut stack = vec![queue.path().to_path_buf()];
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
fn nack_redelivers_reject_and_undecodable_go_to_the_dead_letter_queue() -> Result<()> {
    let _watchdog = Watchdog::new("settle", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    producer.send(&"again".to_owned())?;
    producer.send(&"bad".to_owned())?;
    // Not a u64 for the consumer below: 9 bytes of 0xff is an overlong varint.
    let mut raw = queue.producer::<[u8; 9]>(ProducerOptions::new())?;
    raw.send(&[0xff; 9])?;

    let mut consumer = queue.consumer::<String>()?;
    let first = consumer.recv_timeout(WAIT)?;
    assert_eq!(first.message(), "again");
    consumer.nack(&first, None)?;
    let again = consumer.recv_timeout(WAIT)?;
    assert_eq!((again.message().as_str(), again.deliveries()), ("again", 2));
    consumer.ack(&again)?;
    let bad = consumer.recv_timeout(WAIT)?;
    consumer.reject(&bad, "no thanks")?;
    drop(consumer);

    let mut numbers = queue.consumer::<u64>()?;
    let err = numbers.recv_timeout(WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("dead-letter"), "{err}");
    assert!(numbers.try_recv()?.is_none());

    let stats = queue.stats()?;
    assert_eq!((stats.depth, stats.dead_letters), (0, 2));
    let mut dead = queue.dead_letters()?.consumer::<DeadLetter>()?;
    let letter = dead.recv_timeout(WAIT)?;
    assert_eq!(letter.message().reason, "rejected: no thanks");
    assert_eq!(letter.message().decode::<String>()?, "bad");
    dead.ack(&letter)?;
    let letter = dead.recv_timeout(WAIT)?;
    assert!(
        letter.message().reason.starts_with("does not decode"),
        "{}",
        letter.message().reason
    );
    assert_eq!(letter.message().payload, vec![0xff; 9]);
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
    assert_eq!(queue.stats()?.delayed, 1);
    let third = consumer.recv_timeout(WAIT)?;
    assert_eq!(third.deliveries(), 3);
    consumer.ack(&third)?;
    // Acking the stale first delivery again changes nothing.
    consumer.ack(&first)?;
    assert!(consumer.try_recv()?.is_none());
    Ok(())
}

#[test]
fn a_dropped_consumer_gives_its_leases_back_at_once() -> Result<()> {
    let _watchdog = Watchdog::new("dropped consumer", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&7)?;
    let mut first = queue.consumer::<u32>()?;
    let delivery = first.recv_timeout(WAIT)?;
    let mut second = queue.consumer::<u32>()?;
    assert!(second.try_recv()?.is_none(), "leased to the first consumer");
    drop(first);
    let again = second.recv_timeout(WAIT)?;
    assert_eq!((again.seq(), again.deliveries()), (delivery.seq(), 2));
    second.ack(&again)?;
    Ok(())
}

#[test]
fn too_many_deliveries_and_expired_messages_are_dead_lettered() -> Result<()> {
    let _watchdog = Watchdog::new("limits", WAIT);
    let config = QueueConfig::new().with_max_deliveries(2);
    let (_dir, queue) = fresh(&config)?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&1)?;
    let mut consumer = queue.consumer::<u32>()?;
    for _ in 0..2 {
        let delivery = consumer.recv_timeout(WAIT)?;
        consumer.nack(&delivery, None)?;
    }
    assert!(consumer.try_recv()?.is_none());
    let letter = queue
        .dead_letters()?
        .consumer::<DeadLetter>()?
        .recv_timeout(WAIT)?;
    assert_eq!(
        letter.message().reason,
        "delivered 2 times without an acknowledgement"
    );

    // A message's own time-to-live, beside one without.
    let (_dir, queue) = fresh(&QueueConfig::new())?;
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send_with_ttl(&1, Duration::from_millis(1))?;
    producer.send_with_ttl(&2, Duration::from_secs(3600))?;
    std::thread::sleep(Duration::from_millis(5)); // Lets the TTL pass; not a synchronisation.
    let mut consumer = queue.consumer::<u32>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!(*delivery.message(), 2);
    consumer.ack(&delivery)?;
    let letter = queue
        .dead_letters()?
        .consumer::<DeadLetter>()?
        .recv_timeout(WAIT)?;
    assert_eq!(letter.message().decode::<u32>()?, 1);

    let config = QueueConfig::new().with_ttl(Some(Duration::from_millis(1)));
    let (_dir, queue) = fresh(&config)?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&1)?;
    std::thread::sleep(Duration::from_millis(5)); // Lets the TTL pass; not a synchronisation.
    assert!(queue.consumer::<u32>()?.try_recv()?.is_none());
    let letter = queue
        .dead_letters()?
        .consumer::<DeadLetter>()?
        .recv_timeout(WAIT)?;
    assert!(
        letter.message().reason.starts_with("expired"),
        "{}",
        letter.message().reason
    );
    Ok(())
}

#[test]
fn a_bounded_queue_is_full_until_consumers_make_room() -> Result<()> {
    let _watchdog = Watchdog::new("bounds", WAIT);
    let (_dir, queue) = fresh(&QueueConfig::new().with_max_messages(3))?;
    let options = ProducerOptions::new().with_when_full(WhenFull::Fail);
    let mut producer = queue.producer::<u32>(options)?;
    for i in 0..3 {
        producer.send(&i)?;
    }
    assert_eq!(producer.send(&3).unwrap_err().kind(), ErrorKind::Full);
    assert_eq!(producer.try_send(&3).unwrap_err().kind(), ErrorKind::Full);
    let err = producer
        .send_timeout(&3, Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let mut consumer = queue.consumer::<u32>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    consumer.ack(&delivery)?;
    producer.send(&3)?;

    let config = QueueConfig::new()
        .with_segment_len(4096)
        .with_max_bytes(16384);
    let (_dir, queue) = fresh(&config)?;
    let mut producer =
        queue.producer::<Vec<u8>>(ProducerOptions::new().with_when_full(WhenFull::Fail))?;
    let payload = vec![7u8; 1000];
    let mut sent = 0;
    let err = loop {
        match producer.send(&payload) {
            Ok(_) => sent += 1,
            Err(err) => break err,
        }
        assert!(sent < 100, "the byte bound never applied");
    };
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
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
    let before = queue.stats()?.segments;
    assert!(before > 10, "{before} segments");
    let mut consumer = queue.consumer::<Vec<u8>>()?;
    for i in 0..200u32 {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.message()[0], i as u8);
        consumer.ack(&delivery)?;
    }
    let stats = queue.stats()?;
    assert_eq!(stats.depth, 0);
    assert!(
        stats.segments <= 2,
        "{} segments left of {before}",
        stats.segments
    );
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
    std::fs::remove_file(queue.path().join("POISONED"))?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&4)?;
    Ok(())
}
