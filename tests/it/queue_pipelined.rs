//! The pipelined async producer (`AsyncProducer::send_pipelined`, issue 14): receipts in
//! order, errors as receipts, other calls after pipelined ones, and pipelined producer
//! processes whose receipts all come out of the queue.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use ipc_core::ErrorKind;
use ipc_queue::{AsyncQueue, ProducerOptions, Queue, QueueConfig};
use ipc_tests::{TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(120);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn pipelined_receipts_come_in_order_and_every_message_arrives() -> Result<()> {
    let _watchdog = Watchdog::new("pipelined order", WAIT);
    let dir = TempDir::new("ipcq-pipe")?;
    let path = dir.path().join("q");
    runtime()?.block_on(async {
        let queue =
            AsyncQueue::create(&path, &QueueConfig::new().with_segment_len(64 << 10)).await?;
        let mut producer = queue
            .producer::<u64>(ProducerOptions::new().with_window(32))
            .await?;
        let mut pending = Vec::new();
        for n in 0..500u64 {
            pending.push(producer.send_pipelined(&n).await?);
        }
        // A plain send after pipelined ones waits for them: its receipt comes after theirs.
        let last = producer.send(&500).await?;
        let mut seqs = Vec::new();
        for receipt in pending {
            seqs.push(receipt.await?.seq());
        }
        ensure!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "receipts out of order or not dense"
        );
        ensure!(
            last.seq() == seqs[seqs.len() - 1] + 1,
            "the send after the pipeline"
        );
        let mut consumer = queue.consumer::<u64>().await?;
        for n in 0..=500u64 {
            let delivery = consumer.recv_timeout(WAIT).await?;
            ensure!(
                *delivery.message() == n,
                "message {n} came as {}",
                delivery.message()
            );
            ensure!(
                n == 500 || delivery.seq() == seqs[n as usize],
                "message {n} has seq {}",
                delivery.seq()
            );
            consumer.ack(&delivery).await?;
        }
        Ok(())
    })
}

#[test]
fn a_pipelined_message_too_large_fails_at_once_and_a_failed_sync_is_every_receipt() -> Result<()> {
    let _watchdog = Watchdog::new("pipelined errors", WAIT);
    let dir = TempDir::new("ipcq-pipe-err")?;
    let path = dir.path().join("q");
    runtime()?.block_on(async {
        let queue =
            AsyncQueue::create(&path, &QueueConfig::new().with_max_message_len(1024)).await?;
        let mut producer = queue
            .producer::<Vec<u8>>(ProducerOptions::new().with_failing_sync_after(2))
            .await?;
        // Checked before it is queued: no receipt to wait for.
        let err = producer.send_pipelined(&vec![0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        let first = producer.send_pipelined(&vec![1u8; 10]).await?;
        first.await?;
        // The second sync fails: those messages have an error for a receipt, never a seq.
        let mut pending = Vec::new();
        for n in 0..20u8 {
            pending.push(producer.send_pipelined(&vec![n; 10]).await?);
        }
        for receipt in pending {
            let err = receipt.await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
        }
        let err = producer.flush().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
        Ok(())
    })
}

#[test]
fn pipelined_producer_processes_lose_no_receipted_message() -> Result<()> {
    let _watchdog = Watchdog::new("pipelined processes", WAIT);
    let dir = TempDir::new("ipcq-pipe-procs")?;
    let path = dir.path().join("q");
    Queue::create(&path, &QueueConfig::new().with_segment_len(256 << 10))?;
    let address = path_arg(&path);
    crate::queue_support::every_receipt_is_delivered(&address, 4, 300, &["--window", "64"], WAIT)
}

#[test]
fn async_recv_batch_and_ack_batch_settle_everything() -> Result<()> {
    let _watchdog = Watchdog::new("async batches", WAIT);
    let dir = TempDir::new("ipcq-async-batch")?;
    let path = dir.path().join("q");
    runtime()?.block_on(async {
        let queue = AsyncQueue::create(&path, &QueueConfig::new()).await?;
        let mut producer = queue.producer::<u32>(ProducerOptions::new()).await?;
        let mut consumer = queue.consumer::<u32>().await?;
        let err = consumer
            .recv_batch(4, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        producer.send_batch(&[&1, &2, &3, &4, &5]).await?;
        let first = consumer.recv_batch(3, WAIT).await?;
        let second = consumer.recv_batch(10, WAIT).await?;
        let got: Vec<u32> = first.iter().chain(&second).map(|d| *d.message()).collect();
        ensure!(got == [1, 2, 3, 4, 5], "got {got:?}");
        let all: Vec<_> = first.iter().chain(&second).collect();
        consumer.ack_batch(&all).await?;
        ensure!(queue.stats().await?.depth == 0, "messages left");
        Ok(())
    })
}
