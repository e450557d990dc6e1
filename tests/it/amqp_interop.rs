//! The AMQP message format seen from another client: Python with `pika` publishes and
//! ipc-queue consumes, and the other way round (`crates/ipc-queue/python/ipc_amqp.py`).
//! Skipped with a printed reason without a broker (`IPC_AMQP_URL`, or RabbitMQ on
//! 127.0.0.1:5672) or without `pika`
//! (`pip install pika`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ipc_queue::{ProducerOptions, Queue, QueueConfig};
use ipc_tests::Watchdog;
use ipc_tests::amqp::{TestQueue, amqp_url};
use serde::{Deserialize, Serialize};

/// The message both sides agree on (`interop.Greeting/1` in the Python script).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Greeting {
    id: u32,
    text: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/ipc-queue/python/ipc_amqp.py")
}

fn pika_available(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !found {
        ipc_tests::amqp::skip_unless_optional(
            test,
            "python3 with pika not found (pip install pika)",
        );
    }
    found
}

fn python(args: &[&str]) -> Result<String> {
    let output = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .context("run python3")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or("").to_owned();
    ensure!(
        output.status.success() && last.starts_with("ok "),
        "python {args:?}: {last}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(last)
}

#[test]
fn python_publishes_and_ipc_queue_consumes() -> Result<()> {
    let _watchdog = Watchdog::new("amqp interop in", Duration::from_secs(120));
    let Some(url) = amqp_url("amqp interop in") else {
        return Ok(());
    };
    if !pika_available("amqp interop in") {
        return Ok(());
    }
    let name = TestQueue::new(&url, "ipcq-py-in");
    let queue = Queue::create(name.address(), &QueueConfig::new())?;
    let out = python(&["publish", &url, name.name(), "50"])?;
    ensure!(out == "ok published=50", "{out}");
    let mut consumer = queue.consumer::<Greeting>()?;
    for id in 0..50u32 {
        let delivery = consumer.recv_timeout(Duration::from_secs(30))?;
        assert_eq!(
            delivery.message(),
            &Greeting {
                id,
                text: format!("hello {id}")
            }
        );
        assert_eq!(delivery.seq(), u64::from(id));
        consumer.ack(&delivery)?;
    }
    assert!(consumer.try_recv()?.is_none());
    Ok(())
}

#[test]
fn ipc_queue_publishes_and_python_consumes() -> Result<()> {
    let _watchdog = Watchdog::new("amqp interop out", Duration::from_secs(120));
    let Some(url) = amqp_url("amqp interop out") else {
        return Ok(());
    };
    if !pika_available("amqp interop out") {
        return Ok(());
    }
    let name = TestQueue::new(&url, "ipcq-py-out");
    let queue = Queue::create(name.address(), &QueueConfig::new())?;
    let mut producer = queue.producer::<Greeting>(ProducerOptions::new())?;
    let greetings: Vec<Greeting> = (0..50)
        .map(|id| Greeting {
            id,
            text: format!("hello {id}"),
        })
        .collect();
    producer.send_batch(&greetings)?;
    let out = python(&["consume", &url, name.name(), "50"])?;
    ensure!(out == "ok consumed=50", "{out}");
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}
