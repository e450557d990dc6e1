//! A broker that blocks publishers (a memory alarm, forced with
//! `rabbitmqctl set_vm_memory_high_watermark 0`) makes `send` fail with a timeout instead
//! of hanging. Its own test binary, because the alarm blocks every publisher on the broker.
//! Skipped (and said so) without a broker: `IPC_AMQP_URL`, or RabbitMQ on 127.0.0.1:5672.

use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{AmqpOptions, ProducerOptions, Queue, QueueConfig};
use ipc_tests::Watchdog;
use ipc_tests::amqp::{TestQueue, amqp_url, rabbitmqctl};

/// Puts RabbitMQ's default memory watermark (0.4) back, even if the test fails.
struct Unblock;

impl Drop for Unblock {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[test]
fn a_blocked_broker_makes_send_time_out_and_sending_resumes_after() -> Result<()> {
    let _watchdog = Watchdog::new("amqp blocked", Duration::from_secs(120));
    let Some(url) = amqp_url("amqp blocked") else {
        return Ok(());
    };
    let name = TestQueue::new(&url, "ipcq-blocked");
    let options = AmqpOptions::new().with_timeout(Duration::from_secs(2));
    let queue = Queue::create_with(name.address(), &QueueConfig::new(), &options)?;
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send(&1)?;

    let unblock = Unblock;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"])?;
    let err = producer.send(&2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    drop(unblock);

    // Once the alarm clears, the same producer sends again (the timed-out message may or
    // may not have been stored: it got no receipt, so a caller would send it again).
    producer.send_timeout(&3, Duration::from_secs(30))?;
    let mut consumer = queue.consumer::<u32>()?;
    let mut got = Vec::new();
    loop {
        let delivery = match consumer.recv_timeout(Duration::from_millis(500)) {
            Ok(delivery) => delivery,
            Err(err) if err.kind() == ErrorKind::Timeout => break,
            Err(err) => return Err(err.into()),
        };
        got.push(*delivery.message());
        consumer.ack(&delivery)?;
    }
    assert!(got == [1, 3] || got == [1, 2, 3], "{got:?}");
    Ok(())
}
