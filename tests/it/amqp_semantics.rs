//! ipc-queue's RabbitMQ backend against a real broker (`IPC_AMQP_URL`), where it differs
//! from the embedded one: the broker's own view of the queues, a dead broker, a deleted
//! queue, a lost connection. The semantics both backends share are tested once, on both,
//! in `queue_conformance.rs`. Without a broker (`IPC_AMQP_URL`, or RabbitMQ on 127.0.0.1:5672) every test prints that it was skipped.

use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{Address, AmqpOptions, ProducerOptions, Queue, QueueConfig};
use ipc_tests::Watchdog;
use ipc_tests::amqp::{
    TestQueue, amqp_url, broker_queue, close_connections_of, wait_broker_messages,
};

const WAIT: Duration = Duration::from_secs(30);

fn fresh(test: &str, config: &QueueConfig) -> Result<Option<(TestQueue, Queue)>> {
    let Some(url) = amqp_url(test) else {
        return Ok(None);
    };
    let name = TestQueue::new(&url, "ipcq-sem");
    let queue = Queue::create(name.address(), config)?;
    Ok(Some((name, queue)))
}

#[test]
fn the_broker_sees_durable_quorum_queues_and_their_messages() -> Result<()> {
    let _watchdog = Watchdog::new("amqp broker view", Duration::from_secs(120));
    let Some((name, queue)) = fresh("amqp broker view", &QueueConfig::new())? else {
        return Ok(());
    };
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    for i in 0..100 {
        producer.send(&format!("message {i}"))?;
    }
    let batch: Vec<String> = (100..150).map(|i| format!("message {i}")).collect();
    producer.send_batch(&batch)?;
    drop(producer);

    let (kind, durable, _) = broker_queue(name.name())?.expect("queue listed");
    assert_eq!((kind.as_str(), durable), ("quorum", true));
    // The broker's message counts are statistics, refreshed every few seconds.
    wait_broker_messages(name.name(), 150, WAIT)?;
    let dead = queue.dead_letters()?;
    let dead_name = dead.address().amqp_queue().expect("a broker queue");
    assert_eq!(dead_name, format!("{}.dead", name.name()));
    let (kind, durable, _) = broker_queue(dead_name)?.expect("dead-letter queue listed");
    assert_eq!((kind.as_str(), durable), ("quorum", true));
    let stats = queue.stats()?;
    assert_eq!((stats.depth, stats.consumers), (150, Some(0)), "{stats:?}");

    let mut consumer = queue.consumer::<String>()?;
    for _ in 0..150 {
        let delivery = consumer.recv_timeout(WAIT)?;
        consumer.ack(&delivery)?;
    }
    assert_eq!(queue.stats()?.consumers, Some(1));
    drop(consumer);
    wait_broker_messages(name.name(), 0, WAIT)?;
    Ok(())
}

#[test]
fn a_dead_broker_is_a_timeout_and_a_deleted_queue_is_an_error_not_a_receipt() -> Result<()> {
    let _watchdog = Watchdog::new("amqp dead broker", Duration::from_secs(120));
    // Nobody listens on port 1: connecting fails until the deadline.
    let options = AmqpOptions::new().with_timeout(Duration::from_millis(400));
    let err = Queue::create_with(
        "amqp://guest:guest@127.0.0.1:1/%2f#nobody",
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
    queue.clone().delete()?;
    // The message cannot be routed: the broker returns it, and the send must fail.
    let err = producer.send(&2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = Queue::create(
        Address::amqp("amqp://guest:wrong-password@127.0.0.1:5672/%2f", "nobody"),
        &QueueConfig::new(),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("wrong-password"), "{err}");
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

#[test]
fn the_async_api_on_rabbitmq_sends_and_receives_without_the_blocking_pool() -> Result<()> {
    let test = "amqp async without a blocking pool";
    let _watchdog = Watchdog::new(test, Duration::from_secs(120));
    let Some(url) = amqp_url(test) else {
        return Ok(());
    };
    let name = TestQueue::new(&url, "ipcq-sem-async");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Connecting resolves the broker's address, which lapin does on the blocking pool:
        // connect first.
        let queue = ipc_queue::AsyncQueue::create(name.address(), &QueueConfig::new()).await?;
        let mut first = queue.consumer::<String>().await?;
        let mut second = queue.consumer::<String>().await?;
        let mut producer = queue.producer::<String>(ProducerOptions::new()).await?;
        // Then one task holds the only blocking-pool thread: from here on any
        // `spawn_blocking` (or a blocking wait on the runtime's only thread) would hang,
        // and the watchdog would end the test.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (taken, occupied) = tokio::sync::oneshot::channel::<()>();
        let hog = tokio::task::spawn_blocking(move || {
            let _ = taken.send(());
            let _ = held.recv();
        });
        occupied.await?;
        // A consumer waits before anything is sent.
        let waiting = tokio::spawn(async move {
            let delivery = first.recv().await?;
            first.ack(&delivery).await?;
            Ok::<_, ipc_core::Error>(delivery.into_message())
        });
        producer.send(&"no blocking pool".to_owned()).await?;
        assert_eq!(waiting.await??, "no blocking pool");
        producer
            .send_batch(&[&"a".to_owned(), &"b".to_owned()])
            .await?;
        let mut texts = Vec::new();
        for _ in 0..2 {
            let delivery = second.recv_timeout(WAIT).await?;
            texts.push(delivery.message().clone());
            second.nack(&delivery, None).await?;
        }
        for _ in 0..2 {
            let again = second.recv_timeout(WAIT).await?;
            assert!(again.deliveries() >= 2, "{}", again.deliveries());
            texts.push(again.message().clone());
            second.reject(&again, "done").await?;
        }
        texts.sort();
        assert_eq!(texts, ["a", "a", "b", "b"]);
        assert!(second.try_recv().await?.is_none());
        release.send(())?;
        hog.await?;
        let mut dead = queue
            .dead_letters()?
            .consumer::<ipc_queue::DeadLetter>()
            .await?;
        for _ in 0..2 {
            let letter = dead.recv_timeout(WAIT).await?;
            dead.ack(&letter).await?;
        }
        assert_eq!(queue.stats().await?.depth, 0);
        drop(second);
        queue.delete().await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
