//! The async wrappers of the RabbitMQ backend, used from a tokio runtime: sends, receives,
//! a cancelled `recv` that loses nothing, and handles dropped inside async code. Skipped
//! without `IPC_AMQP_URL`.

use std::time::Duration;

use anyhow::Result;
use ipc_core::{AsyncReceiver, AsyncSender};
use ipc_queue::{AmqpQueue, AsyncAmqpConsumer, AsyncAmqpProducer, ProducerOptions, QueueConfig};
use ipc_tests::Watchdog;
use ipc_tests::amqp::{TestQueue, amqp_url};

#[test]
fn async_handles_send_receive_survive_a_cancelled_recv_and_drop_inside_a_runtime() -> Result<()> {
    let _watchdog = Watchdog::new("amqp async", Duration::from_secs(120));
    let Some(url) = amqp_url("amqp async") else {
        return Ok(());
    };
    let name = TestQueue::new(&url, "ipcq-async");
    let queue = AmqpQueue::create(&url, name.name(), &QueueConfig::new())?;
    let mut producer = AsyncAmqpProducer::new(queue.producer::<String>(ProducerOptions::new())?);
    let mut consumer = AsyncAmqpConsumer::new(queue.consumer::<String>()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // A recv cancelled while the queue is empty loses nothing.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        assert!(cancelled.is_err(), "nothing was sent yet");
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(producer.send(&format!("async {i}")).await?.seq());
        }
        AsyncSender::send(&mut producer, &"via the trait".to_owned()).await?;
        for (i, seq) in seqs.iter().enumerate() {
            let delivery = consumer.recv().await?;
            assert_eq!(delivery.message(), &format!("async {i}"));
            assert_eq!(delivery.seq(), *seq);
            consumer.ack(&delivery).await?;
        }
        assert_eq!(AsyncReceiver::recv(&mut consumer).await?, "via the trait");
        // Dropping the handles and the queue inside the runtime must not panic.
        drop(producer);
        drop(consumer);
        assert_eq!(
            tokio::task::spawn_blocking(move || queue.stats())
                .await??
                .depth,
            0
        );
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
