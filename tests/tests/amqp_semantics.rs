//! ipc-queue's RabbitMQ backend against a real broker (`IPC_AMQP_URL`): the semantics of
//! the embedded backend's `queue_semantics.rs`, where RabbitMQ has them, and the broker's
//! own view of the queues. Without `IPC_AMQP_URL` every test prints that it was skipped.

use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{AmqpOptions, AmqpQueue, ProducerOptions, QueueConfig, WhenFull};
use ipc_tests::Watchdog;
use ipc_tests::amqp::{
    TestQueue, amqp_url, broker_queue, close_connections_of, wait_broker_messages,
};

const WAIT: Duration = Duration::from_secs(30);

fn fresh(test: &str, config: &QueueConfig) -> Result<Option<(TestQueue, AmqpQueue)>> {
    let Some(url) = amqp_url(test) else {
        return Ok(None);
    };
    let name = TestQueue::new(&url, "ipcq-sem");
    let queue = AmqpQueue::create(&url, name.name(), config)?;
    Ok(Some((name, queue)))
}

#[test]
fn messages_come_out_in_order_with_their_receipts_and_the_broker_sees_a_quorum_queue() -> Result<()>
{
    let _watchdog = Watchdog::new("amqp order", Duration::from_secs(120));
    let Some((name, queue)) = fresh("amqp order", &QueueConfig::new())? else {
        return Ok(());
    };
    let err = AmqpQueue::create(name.url(), name.name(), &QueueConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = AmqpQueue::open(name.url(), &format!("{}-missing", name.name())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(producer.send(&format!("message {i}"))?);
    }
    let batch: Vec<String> = (100..150).map(|i| format!("message {i}")).collect();
    receipts.extend(producer.send_batch(&batch)?);
    drop(producer);
    assert!(receipts.windows(2).all(|w| w[0].seq() + 1 == w[1].seq()));

    let (kind, durable, _) = broker_queue(name.name())?.expect("queue listed");
    assert_eq!((kind.as_str(), durable), ("quorum", true));
    // The broker's message counts are statistics, refreshed every few seconds.
    wait_broker_messages(name.name(), 150, WAIT)?;
    let (kind, durable, _) =
        broker_queue(&ipc_queue::dead_letter_name(name.name()))?.expect("dead-letter queue listed");
    assert_eq!((kind.as_str(), durable), ("quorum", true));

    let queue = AmqpQueue::open(name.url(), name.name())?;
    assert_eq!(queue.stats()?.depth, 150);
    let mut consumer = queue.consumer::<String>()?;
    for (i, receipt) in receipts.iter().enumerate() {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.message(), &format!("message {i}"));
        assert_eq!(delivery.seq(), receipt.seq());
        assert_eq!(delivery.deliveries(), 1);
        consumer.ack(&delivery)?;
    }
    let err = consumer
        .recv_timeout(Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(consumer.try_recv()?.is_none());
    drop(consumer);
    assert_eq!(queue.stats()?.depth, 0);
    wait_broker_messages(name.name(), 0, WAIT)?;
    Ok(())
}

#[test]
fn nack_redelivers_with_a_count_and_reject_and_undecodable_go_to_the_dead_letter_queue()
-> Result<()> {
    let _watchdog = Watchdog::new("amqp nack reject", Duration::from_secs(120));
    let Some((_name, queue)) = fresh("amqp nack reject", &QueueConfig::new())? else {
        return Ok(());
    };
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let receipt = producer.send(&"again".to_owned())?;
    let mut consumer = queue.consumer::<String>()?;

    let first = consumer.recv_timeout(WAIT)?;
    assert_eq!((first.seq(), first.deliveries()), (receipt.seq(), 1));
    let err = consumer
        .nack(&first, Some(Duration::from_millis(10)))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    consumer.nack(&first, None)?;
    let second = consumer.recv_timeout(WAIT)?;
    assert_eq!((second.seq(), second.deliveries()), (receipt.seq(), 2));
    consumer.reject(&second, "bad job")?;

    // A message that is not a `u8` (trailing bytes) is dead-lettered, not delivered.
    let mut bytes = queue.producer::<Vec<u8>>(ProducerOptions::new())?;
    bytes.send(&vec![7u8; 300])?;
    let mut small = queue.consumer::<u8>()?;
    drop(consumer);
    let err = small.recv_timeout(WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(small.try_recv()?.is_none());

    let mut dead = queue.dead_letter_consumer::<Vec<u8>>()?;
    let mut dead_strings = 0;
    let mut dead_bytes = 0;
    for _ in 0..2 {
        let delivery = dead.recv_timeout(WAIT)?;
        assert_eq!(delivery.death_reason(), Some("rejected"));
        if delivery.seq() == receipt.seq() {
            dead_strings += 1;
        } else {
            assert_eq!(delivery.message(), &vec![7u8; 300]);
            dead_bytes += 1;
        }
        dead.ack(&delivery)?;
    }
    assert_eq!((dead_strings, dead_bytes), (1, 1));
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}

#[test]
fn too_many_deliveries_and_expired_messages_are_dead_lettered() -> Result<()> {
    let _watchdog = Watchdog::new("amqp limits", Duration::from_secs(120));
    let config = QueueConfig::new().with_max_deliveries(2);
    let Some((_name, queue)) = fresh("amqp delivery limit", &config)? else {
        return Ok(());
    };
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send(&1)?;
    let mut consumer = queue.consumer::<u32>()?;
    for expected in 1..=2 {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.deliveries(), expected);
        consumer.nack(&delivery, None)?;
    }
    let err = consumer
        .recv_timeout(Duration::from_millis(500))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "a third delivery: {err}");
    let mut dead = queue.dead_letter_consumer::<u32>()?;
    let delivery = dead.recv_timeout(WAIT)?;
    assert_eq!(*delivery.message(), 1);
    assert_eq!(delivery.death_reason(), Some("delivery_limit"));
    dead.ack(&delivery)?;

    // Time-to-live of the queue and of one message.
    let config = QueueConfig::new().with_ttl(Some(Duration::from_millis(50)));
    let Some((_name, queue)) = fresh("amqp ttl", &config)? else {
        return Ok(());
    };
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send(&2)?;
    let mut dead = queue.dead_letter_consumer::<u32>()?;
    let delivery = dead.recv_timeout(WAIT)?;
    assert_eq!(
        (*delivery.message(), delivery.death_reason()),
        (2, Some("expired"))
    );
    dead.ack(&delivery)?;

    let Some((_name, queue)) = fresh("amqp message ttl", &QueueConfig::new())? else {
        return Ok(());
    };
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send_with_ttl(&3, Duration::from_millis(20))?;
    let mut dead = queue.dead_letter_consumer::<u32>()?;
    let delivery = dead.recv_timeout(WAIT)?;
    assert_eq!(
        (*delivery.message(), delivery.death_reason()),
        (3, Some("expired"))
    );
    dead.ack(&delivery)?;
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}

#[test]
fn a_bounded_queue_is_full_until_consumers_make_room() -> Result<()> {
    let _watchdog = Watchdog::new("amqp bounded", Duration::from_secs(120));
    let config = QueueConfig::new().with_max_messages(3);
    let Some((_name, queue)) = fresh("amqp bounded", &config)? else {
        return Ok(());
    };
    let mut producer =
        queue.producer::<u32>(ProducerOptions::new().with_when_full(WhenFull::Fail))?;
    // A quorum queue applies its bound after the fact: the message that crosses it is
    // taken, and the producers are told to stop a moment later. So: at least 3 taken, a
    // few more at most, then `Full`.
    let mut accepted = 0u32;
    let err = loop {
        match producer.send(&accepted) {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(
            accepted <= 10,
            "a queue bounded to 3 took {accepted} messages"
        );
    };
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    assert!(accepted >= 3, "only {accepted} messages taken: {err}");
    let err = producer.try_send(&99).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    let mut waiting = queue.producer::<u32>(ProducerOptions::new())?;
    let err = waiting
        .send_timeout(&99, Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

    // Consumers make room; the waiting producer gets in.
    let mut consumer = queue.consumer::<u32>()?;
    for expected in 0..accepted {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(*delivery.message(), expected);
        consumer.ack(&delivery)?;
    }
    waiting.send_timeout(&99, WAIT)?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!(*delivery.message(), 99);
    consumer.ack(&delivery)?;
    Ok(())
}

#[test]
fn a_dead_broker_is_a_timeout_and_a_deleted_queue_is_an_error_not_a_receipt() -> Result<()> {
    let _watchdog = Watchdog::new("amqp dead broker", Duration::from_secs(120));
    // Nobody listens on port 1: connecting fails until the deadline.
    let options = AmqpOptions::new().with_timeout(Duration::from_millis(400));
    let err = AmqpQueue::create_with(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "nobody",
        &QueueConfig::new(),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::PeerDied),
        "{err}"
    );

    let Some((_name, queue)) = fresh("amqp deleted queue", &QueueConfig::new())? else {
        return Ok(());
    };
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send(&1)?;
    queue.delete()?;
    // The message cannot be routed: the broker returns it, and the send must fail.
    let err = producer.send(&2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = AmqpQueue::create(
        "amqp://guest:wrong-password@127.0.0.1:5672/%2f",
        "nobody",
        &QueueConfig::new(),
    )
    .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    Ok(())
}

#[test]
fn an_ack_for_a_lost_connection_is_reported_and_the_message_comes_again() -> Result<()> {
    let _watchdog = Watchdog::new("amqp lost ack", Duration::from_secs(120));
    let Some((name, queue)) = fresh("amqp lost ack", &QueueConfig::new())? else {
        return Ok(());
    };
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let receipt = producer.send(&"once".to_owned())?;
    drop(producer);
    let mut consumer = queue.consumer::<String>()?;
    let first = consumer.recv_timeout(WAIT)?;
    assert_eq!((first.seq(), first.deliveries()), (receipt.seq(), 1));

    // The broker drops the consumer's connection: the delivery goes back to the queue.
    let closed = close_connections_of(name.name())?;
    assert!(closed >= 1, "no connection of {} found", name.name());
    let again = consumer.recv_timeout(WAIT)?;
    assert_eq!((again.seq(), again.deliveries()), (receipt.seq(), 2));
    let err = consumer.ack(&first).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
    consumer.ack(&again)?;
    let err = consumer
        .recv_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    Ok(())
}
