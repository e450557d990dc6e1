//! The blocking API of ipc-queue's RabbitMQ backend called inside a tokio runtime, in a real
//! peer process: every entry point fails with a clear `InvalidInput` error instead of
//! panicking (it used to panic: "Cannot start a runtime from within a runtime"), and
//! dropping the handles there is fine. Without a broker (`IPC_AMQP_URL`, or RabbitMQ on
//! 127.0.0.1:5672) every test prints that it was skipped.

use std::time::Duration;

use anyhow::{Result, ensure};
use ipc_queue::Queue;
use ipc_tests::amqp::{TestQueue, amqp_url};
use ipc_tests::{Peer, Watchdog, field};

/// The role's message (`AmqpItem`), decoded by shape.
#[derive(serde::Deserialize)]
struct Item {
    #[allow(dead_code)]
    index: u64,
    payload: Vec<u8>,
}

const WAIT: Duration = Duration::from_secs(60);

/// The blocking calls the role makes inside the runtime; each must be refused.
const ENTRY_POINTS: &str = "20";

fn refuses_every_blocking_call(flavor: &str) -> Result<()> {
    let test = format!("amqp blocking api inside a {flavor} runtime");
    let _watchdog = Watchdog::new(test.as_str(), Duration::from_secs(180));
    let Some(url) = amqp_url(&test) else {
        return Ok(());
    };
    let name = TestQueue::new(&url, "ipcq-inrt");
    let mut peer = Peer::spawn_role(
        "in-runtime",
        "amqp-blocking-in-runtime",
        [
            "--url",
            url.as_str(),
            "--queue",
            name.name(),
            "--flavor",
            flavor,
        ],
    )?;
    let outcome = peer.expect_prefixed("ok ", WAIT)?;
    peer.wait_success(WAIT)?;
    ensure!(
        field(&outcome, "refused") == Some(ENTRY_POINTS),
        "{outcome}"
    );
    // The refused ack did not settle the message: dropped with its consumer, it comes back.
    let queue = Queue::open(name.address())?;
    let mut consumer = queue.consumer::<Item>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    ensure!(
        Some(delivery.seq().to_string().as_str()) == field(&outcome, "seq"),
        "{outcome}"
    );
    ensure!(delivery.message().payload == [7; 16]);
    ensure!(delivery.deliveries() >= 2, "{}", delivery.deliveries());
    consumer.ack(&delivery)?;
    Ok(())
}

#[test]
fn the_blocking_api_refuses_inside_a_current_thread_runtime_and_never_panics() -> Result<()> {
    refuses_every_blocking_call("current")
}

#[test]
fn the_blocking_api_refuses_inside_a_multi_thread_runtime_and_never_panics() -> Result<()> {
    refuses_every_blocking_call("multi")
}
